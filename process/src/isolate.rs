//! Containment through Linux namespaces: by default, and more on request (`--isolate`).
//!
//! By default (wherever the kernel allows it) every worker runs in
//! - a **pid namespace** of its own, behind an init that jobsup starts as its PID 1 (see
//!   `launch`): the worker cannot see or signal anything outside it (not jobsup, not the
//!   guard, not other workers), and when it ends, the kernel kills everything left in the
//!   namespace, however it daemonized (`setsid`, double fork, a cleared environment, a
//!   process that keeps forking);
//! - a **mount namespace** whose only changes are a `/proc` of that pid namespace (the
//!   host's processes are not even listed) and every cgroup file system read-only, so that
//!   no worker, root or not, can move itself out of its cgroup by writing `cgroup.procs`;
//! - a **cgroup namespace** rooted at its own cgroup, so that `/proc/self/cgroup` names
//!   nothing above it;
//! - and, when jobsup is not root, a **user namespace** that maps only jobsup's own user
//!   and group, which is what grants the right to make the others.
//!
//! Where one of these is refused (a kernel or a container that forbids user namespaces,
//! a `/proc` that cannot be mounted), [`resolve`] falls back to what works and says once
//! what is missing. `--isolate none` opts out of all of it.
//!
//! On request:
//! - `net`: a network namespace with no interface up: the worker cannot reach anything,
//!   not even a listener on the host's loopback or an abstract Unix socket;
//! - `pid`: the pid namespace, required: jobsup refuses to start without it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::launch::{Init, Part};

/// What to isolate, beyond the default.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Isolate {
    /// Nothing at all, not even the default containment.
    None,
    /// No network at all.
    Net,
    /// A pid namespace, required rather than best effort.
    Pid,
    /// The host's file system read-only, private `/tmp`, `/run` and `/dev`, no host socket
    /// (see [`crate::mounts`]).
    Fs,
}

/// Everything the child needs, prepared before the clone (nothing may be allocated after
/// it).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The pid namespace and its init, with what the clone makes with it.
    init: Option<Init>,
    /// What a child without an init unshares itself (user, net).
    unshare: libc::c_int,
    /// What the init unshares once it is in its cgroups (mount, cgroup).
    after_cgroups: libc::c_int,
    user_ns: bool,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    setgroups: CString,
    uid_map_path: CString,
    gid_map_path: CString,
    /// Mount the pid namespace's own `/proc`.
    proc: bool,
    /// The cgroup file systems, made read-only, each with the flags it is mounted with
    /// (which a remount must keep).
    cgroup_mounts: Vec<(CString, libc::c_ulong)>,
    /// The one mount that holds every cgroup file system (`/sys/fs/cgroup`, where it is a
    /// tmpfs of them or the one cgroup2), made read-only with all below in one call where
    /// the kernel has `mount_setattr`.
    cgroup_top: Option<CString>,
    /// `--isolate fs`.
    fs: Option<crate::mounts::Layout>,
}

impl Prepared {
    /// The pid namespace's init, if workers get one.
    pub fn init(&self) -> Option<Init> {
        self.init
    }

    /// The init of a slot's namespaces' holder (`crate::sandbox`'s `Holder`), where a
    /// slot's processes can share them: jobsup is root (a thread may enter a pid
    /// namespace, not a user namespace), and neither `--isolate fs` (a private `/tmp`
    /// per process) nor `net` is asked for. `None` otherwise: each process then gets
    /// namespaces of its own, behind its own init.
    pub(crate) fn holder_init(&self) -> Option<Init> {
        let init = self.init?;
        let shareable = !self.user_ns && self.fs.is_none() && init.flags == libc::CLONE_NEWPID;
        shareable.then_some(Init { hold: true, ..init })
    }

    /// Whether a slot's processes may share its namespaces (a holder's, see `holder_init`),
    /// where its cgroup can kill what each leaves behind.
    pub fn shareable(&self) -> bool {
        self.holder_init().is_some()
    }

    /// Whether the child makes a user namespace (jobsup is not root): it then holds
    /// every capability there.
    pub fn user_namespace(&self) -> bool {
        self.user_ns
    }

    /// Whether each worker gets a mount namespace of its own (its init makes it).
    pub fn mount_namespace(&self) -> bool {
        self.after_cgroups & libc::CLONE_NEWNS != 0
    }

    /// `--isolate fs`'s layout, which each spawn makes its plan from.
    pub(crate) fn fs(&self) -> Option<&crate::mounts::Layout> {
        self.fs.as_ref()
    }

    /// What the workers get, for a log line.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.init.is_some() {
            parts.push("pid");
        }
        if self.fs.is_some() {
            parts.push("fs (host read-only, private /tmp, /run and /dev)");
        }
        if self.after_cgroups & libc::CLONE_NEWNS != 0 {
            parts.push(if self.proc {
                "mount (own /proc, cgroups read-only)"
            } else {
                "mount (cgroups read-only)"
            });
        }
        if self.after_cgroups & libc::CLONE_NEWCGROUP != 0 {
            parts.push("cgroup");
        }
        let flags = self.init.map_or(0, |i| i.flags) | self.unshare;
        if flags & libc::CLONE_NEWNET != 0 {
            parts.push("net");
        }
        if self.user_ns {
            parts.push("user");
        }
        parts.join(", ")
    }
}

/// `ioctl(pidfd, PIDFD_GET_MNT_NAMESPACE)` (Linux 6.11): an fd for the mount namespace
/// of the process the pidfd names.
const PIDFD_GET_MNT_NAMESPACE: libc::c_ulong = 0xff03;

/// A reference to the mount namespace of a just-spawned init (`pid`, `pidfd`), for jobsup
/// to keep until the worker's exit has been seen, and then to drop off the critical path.
///
/// Why: the last process of a mount namespace to exit tears it down inside its own exit
/// (`free_nsproxy` → `namespace_unlock`), which waits for an expedited RCU grace period.
/// The kernel thread driving that grace period is an ordinary task: with every CPU busy
/// with spinning workers it waited 8 to 44 ms for a CPU (traced on Linux 6.18), and the
/// worker's exit, so the record of a hard kill, waited with it. With a reference held
/// here, the exit skips the teardown, which happens when this fd is closed.
///
/// Through the pidfd where the kernel has the ioctl (no race: it names the init even once
/// reaped, and then fails); else through `/proc/<pid>/ns/mnt` while the reaper holds off,
/// so that the pid is still the init's. `None` when neither works, or the init is gone
/// already: the exit then tears the namespace down itself, as without this.
pub fn hold_mount_namespace(
    pid: i32,
    pidfd: Option<BorrowedFd<'_>>,
    exit: &crate::reaper::Registration,
) -> Option<OwnedFd> {
    namespace_fd(pid, pidfd, exit, PIDFD_GET_MNT_NAMESPACE, "mnt").ok()
}

/// An fd for namespace `name` (`mnt`, `pid`) of the just-spawned process `pid`: through
/// its pidfd by `request` where the kernel has the ioctl (no race: it names the process
/// even once reaped, and then fails with ESRCH, which is the answer), else through
/// `/proc/<pid>/ns/<name>` while the reaper holds off, so that the pid is still its own.
fn namespace_fd(
    pid: i32,
    pidfd: Option<BorrowedFd<'_>>,
    exit: &crate::reaper::Registration,
    request: libc::c_ulong,
    name: &str,
) -> io::Result<OwnedFd> {
    if let Some(pidfd) = pidfd {
        match namespace_of(pidfd, request) {
            Ok(fd) => return Ok(fd),
            // Gone already: nothing to take.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(e),
            // An older kernel: the /proc path below.
            Err(_) => {}
        }
    }
    exit.while_unreaped(|_| std::fs::File::open(format!("/proc/{pid}/ns/{name}")))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?
        .map(OwnedFd::from)
}

/// The pid namespace (and the mount namespace, with `mount`) of a holder just started
/// (see [`crate::holder`]).
pub(crate) fn holder_namespaces(
    pid: i32,
    pidfd: Option<BorrowedFd<'_>>,
    exit: &crate::reaper::Registration,
    mount: bool,
) -> io::Result<crate::holder::Namespaces> {
    let of = |request, name| namespace_fd(pid, pidfd, exit, request, name);
    Ok(crate::holder::Namespaces {
        pid: of(PIDFD_GET_PID_NAMESPACE, "pid")?,
        mnt: match mount {
            true => Some(of(PIDFD_GET_MNT_NAMESPACE, "mnt")?),
            false => None,
        },
    })
}

/// `ioctl(pidfd, PIDFD_GET_PID_NAMESPACE)` (Linux 6.11): an fd for the pid namespace of
/// the process the pidfd names.
const PIDFD_GET_PID_NAMESPACE: libc::c_ulong = 0xff05;

/// `ioctl(nsfd, NS_GET_PID_FROM_PIDNS, pid)` (Linux 6.10): a pid of that namespace as the
/// caller's namespace numbers it (`_IOR(0xb7, 6, int)`).
const NS_GET_PID_FROM_PIDNS: libc::c_ulong = 0x8004_b706;

/// The host pid of the worker behind the init `init` names: pid 2 of the init's
/// namespace, its first (and only) child, as the namespace is new and its init starts
/// nothing before it. `None` where the kernel lacks these ioctls, or the worker is gone;
/// the caller then reads the init's children in `/proc`, which costs a path walk, an open
/// and a read per spawn.
pub fn worker_behind_init(init: BorrowedFd<'_>) -> Option<i32> {
    let ns = namespace_of(init, PIDFD_GET_PID_NAMESPACE).ok()?;
    // SAFETY: an ioctl with an integer argument on an fd we own.
    let pid = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_PID_FROM_PIDNS as _, 2) };
    (pid > 0).then_some(pid)
}

/// An fd for a namespace of the process `pidfd` names, by the pidfd ioctl `request`
/// (`PIDFD_GET_*_NAMESPACE`). The kernel makes it close-on-exec; a worker never sees it
/// either way, since every spawn closes all fds but those it places.
fn namespace_of(pidfd: BorrowedFd<'_>, request: libc::c_ulong) -> io::Result<OwnedFd> {
    // SAFETY: an ioctl without an argument on an fd we borrow; a non-negative result is a
    // new fd that nothing else owns.
    let fd = unsafe { libc::ioctl(pidfd.as_raw_fd(), request as _, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How much of the default containment is asked of the kernel, most first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Pid, mount and cgroup namespaces.
    Full,
    /// The pid namespace with a mount namespace that leaves `/proc` as it is.
    NoProc,
    /// The pid namespace alone.
    PidOnly,
    /// No namespace but those asked for.
    Nothing,
}

fn prepare(what: &[Isolate], level: Level, fs: Option<&crate::mounts::Layout>) -> Option<Prepared> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let user_ns = uid != 0;
    let net = what.contains(&Isolate::Net);
    let pid = level != Level::Nothing;
    if !pid && !net {
        return None;
    }
    let user = if user_ns { libc::CLONE_NEWUSER } else { 0 };
    let net_flag = if net { libc::CLONE_NEWNET } else { 0 };
    let (init, unshare) = if pid {
        (
            Some(Init {
                flags: libc::CLONE_NEWPID | user | net_flag,
                hold: false,
            }),
            0,
        )
    } else {
        (None, user | net_flag)
    };
    let mounts = matches!(level, Level::Full | Level::NoProc);
    let after_cgroups = if mounts {
        libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP
    } else {
        0
    };
    let c = |s: &str| CString::new(s).expect("no NUL");
    Some(Prepared {
        init,
        unshare,
        after_cgroups,
        user_ns,
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        setgroups: c("/proc/self/setgroups"),
        uid_map_path: c("/proc/self/uid_map"),
        gid_map_path: c("/proc/self/gid_map"),
        proc: level == Level::Full,
        cgroup_mounts: if mounts { cgroup_mounts() } else { Vec::new() },
        cgroup_top: if mounts { cgroup_top() } else { None },
        fs: fs.filter(|_| level == Level::Full).cloned(),
    })
}

/// The mount points of every cgroup file system this process sees, with their flags,
/// from `/proc/self/mountinfo`.
fn cgroup_mounts() -> Vec<(CString, libc::c_ulong)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            let fields: Vec<&str> = before.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            for opt in fields.get(5)?.split(',') {
                flags |= match opt {
                    "nosuid" => libc::MS_NOSUID,
                    "nodev" => libc::MS_NODEV,
                    "noexec" => libc::MS_NOEXEC,
                    "noatime" => libc::MS_NOATIME,
                    "nodiratime" => libc::MS_NODIRATIME,
                    "relatime" => libc::MS_RELATIME,
                    _ => 0,
                };
            }
            Some((CString::new(point).ok()?, flags))
        })
        .collect()
}

/// The mount point of the one mount every cgroup file system is on or under, unless that
/// is `/` (or there is none).
fn cgroup_top() -> Option<CString> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // ID -> (PARENT, MOUNTPOINT, FSTYPE)
    let mounts: Vec<(&str, &str, Vec<u8>, &str)> = info
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            Some((
                *fields.first()?,
                *fields.get(1)?,
                unescape(fields.get(4)?),
                after.split(' ').next()?,
            ))
        })
        .collect();
    let cgroups: Vec<_> = mounts
        .iter()
        .filter(|m| m.3 == "cgroup" || m.3 == "cgroup2")
        .collect();
    let top = match cgroups.as_slice() {
        [] => return None,
        [only] => only.2.clone(),
        [first, rest @ ..] => {
            // All on one parent mount, which is then the top.
            if rest.iter().any(|m| m.1 != first.1) {
                return None;
            }
            mounts.iter().find(|m| m.0 == first.1)?.2.clone()
        }
    };
    (top != b"/").then(|| CString::new(top).ok()).flatten()
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Writes `data` to the file at `path`. Async-signal-safe and allocation-free, for the
/// child between clone and exec.
fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
    // SAFETY: open on a NUL-terminated path.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: write from a live slice to our own fd.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let error = io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(error);
    }
    Ok(())
}

/// Maps jobsup's own user and group in the user namespace just made: an unprivileged
/// process may map exactly those, once it has given up `setgroups`.
fn map_user(p: &Prepared) -> io::Result<()> {
    let _ = write_file(&p.setgroups, b"deny");
    write_file(&p.uid_map_path, &p.uid_map)?;
    write_file(&p.gid_map_path, &p.gid_map)
}

/// The namespaces' part of the child's setup, between clone and exec: in the init
/// ([`Part::Init`]), once it is in its cgroups, the user mapping, then the mount and
/// cgroup namespaces and their mounts; in a child without an init ([`Part::Whole`]), the
/// namespaces it unshares itself. The worker of an init ([`Part::Worker`]) has nothing to
/// do: it was born in them.
///
/// A child started into a holder's pid namespace (`joined`: the holder's mount namespace,
/// if it made one) enters its mount namespace and makes a cgroup namespace of its own,
/// rooted at the cgroup it is in by now, as an init does for its worker.
///
/// # Safety
/// Only between clone and exec: async-signal-safe calls on data prepared before.
pub(crate) unsafe fn enter(
    p: &Prepared,
    part: Part,
    fs: Option<&crate::mounts::Plan>,
    joined: Option<Option<std::os::fd::RawFd>>,
) -> io::Result<()> {
    // SAFETY: plain system calls on buffers prepared before the clone.
    unsafe {
        match part {
            Part::Worker => Ok(()),
            Part::Whole if joined.is_some() => {
                if let Some(Some(mnt)) = joined {
                    check(libc::setns(mnt, libc::CLONE_NEWNS))?;
                }
                if p.after_cgroups & libc::CLONE_NEWCGROUP != 0 {
                    check(libc::unshare(libc::CLONE_NEWCGROUP))?;
                }
                Ok(())
            }
            Part::Whole => {
                if p.user_ns {
                    check(libc::unshare(libc::CLONE_NEWUSER))?;
                    map_user(p)?;
                }
                check(libc::unshare(p.unshare & !libc::CLONE_NEWUSER))?;
                Ok(())
            }
            Part::Init => {
                if p.user_ns {
                    map_user(p)?;
                }
                if p.after_cgroups == 0 {
                    return Ok(());
                }
                check(libc::unshare(p.after_cgroups))?;
                // Nothing done here may reach the host's mounts. A mount propagates
                // through the mount it is made on, and remounts do not propagate at all:
                // by default only `/proc` is mounted on, so only it need stop sending;
                // `--isolate fs` mounts all over the tree.
                let (at, flags) = match fs {
                    Some(_) => (c"/", libc::MS_REC | libc::MS_SLAVE),
                    None => (c"/proc", libc::MS_SLAVE),
                };
                if p.proc || fs.is_some() {
                    check(libc::mount(
                        std::ptr::null(),
                        at.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    ))?;
                }
                if p.proc {
                    check(libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ))?;
                }
                // One call where it can be; one remount per cgroup file system where the
                // kernel has no `mount_setattr` (before 5.12).
                let all_at_once = match &p.cgroup_top {
                    Some(top) => crate::mounts::read_only(top, true, true).is_ok(),
                    None => false,
                };
                if !all_at_once {
                    for (point, flags) in &p.cgroup_mounts {
                        check(libc::mount(
                            std::ptr::null(),
                            point.as_ptr(),
                            std::ptr::null(),
                            *flags,
                            std::ptr::null(),
                        ))?;
                    }
                }
                match fs {
                    Some(plan) => crate::mounts::enter(plan),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Makes this process not dumpable: no process of the same user without capabilities (a
/// worker, a worker's descendant) may then read or write its memory or take its fds
/// through `/proc` or `ptrace`. A pid namespace's init shares jobsup's memory, and a
/// worker sees it as its `/proc/1`; without a pid namespace, jobsup and the guard are
/// reachable by pid.
pub fn undumpable() {
    // SAFETY: PR_SET_DUMPABLE takes an integer and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc < 0 {
        tracing::debug!(
            "cannot make jobsup undumpable: {}",
            io::Error::last_os_error()
        );
    }
}

/// What workers get: the namespaces of `what` (each required) and as much of the default
/// containment as this kernel allows, found by starting `/bin/true` that way once, at
/// start. Says once (a warning) what it fell back to, and why. Must run before the reaper
/// starts (it waits for its own probe children).
pub fn resolve(
    what: &[Isolate],
    binds: &[crate::mounts::Bind],
) -> Result<Option<Prepared>, String> {
    if !binds.is_empty() && !what.contains(&Isolate::Fs) {
        return Err("--bind needs --isolate fs".into());
    }
    if what.contains(&Isolate::None) {
        if what.len() > 1 {
            return Err("--isolate none cannot be combined with other namespaces".into());
        }
        return Ok(None);
    }
    let layout = match what.contains(&Isolate::Fs) {
        true => Some(crate::mounts::Layout::new(binds)?),
        false => None,
    };
    let names = |w: &[Isolate]| {
        w.iter()
            .map(|i| match i {
                Isolate::None => "none",
                Isolate::Net => "net",
                Isolate::Pid => "pid",
                Isolate::Fs => "fs",
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut first_refusal: Option<(Level, io::Error)> = None;
    for level in [Level::Full, Level::NoProc, Level::PidOnly, Level::Nothing] {
        if level == Level::Nothing && what.contains(&Isolate::Pid) {
            break;
        }
        // The file system view needs all of the default containment.
        if level != Level::Full && layout.is_some() {
            break;
        }
        let Some(prepared) = prepare(what, level, layout.as_ref()) else {
            break;
        };
        // Test builds: `JOBSUP_FAULT=proc-mount` plays a kernel (or container) that will
        // not mount a /proc, so that the fallback and its warning run for real.
        let probed = if level == Level::Full && crate::fault::refused("proc-mount") {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        } else {
            probe(&prepared)
        };
        match probed {
            Ok(()) => {
                if let Some((_, e)) = &first_refusal {
                    tracing::warn!(
                        "workers are contained less than they could be: {}; they get: {}",
                        fallback_reason(level, e),
                        match prepared.describe() {
                            d if d.is_empty() => "no namespace".to_string(),
                            d => format!("{d} namespaces"),
                        }
                    );
                }
                return Ok(Some(prepared));
            }
            Err(e) => {
                tracing::debug!(?level, "namespaces refused: {e}");
                if first_refusal.is_none() {
                    first_refusal = Some((level, e));
                }
            }
        }
    }
    match first_refusal {
        // Nothing was needed and nothing could be had.
        None => Ok(None),
        Some((_, e)) if !what.is_empty() => Err(format!(
            "--isolate {}: the kernel refused it: {e} (user namespaces may be disabled: see /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone)",
            names(what)
        )),
        Some((level, e)) => {
            tracing::warn!(
                "workers get no namespace: {}; a daemon a job starts can outlive it, and a worker can see and signal jobsup",
                fallback_reason(level, &e)
            );
            Ok(None)
        }
    }
}

/// Why the first level tried was refused, for the warning.
fn fallback_reason(first: Level, e: &io::Error) -> String {
    let what = match first {
        Level::Full => {
            "the kernel refused a pid namespace with its own /proc and read-only cgroups"
        }
        Level::NoProc => "the kernel refused a mount namespace",
        Level::PidOnly => "the kernel refused a pid namespace",
        Level::Nothing => "the kernel refused the namespaces asked for",
    };
    let hint = if e.raw_os_error() == Some(libc::EPERM) || e.raw_os_error() == Some(libc::ENOSPC) {
        " (user namespaces may be disabled: see /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone; --isolate none silences this)"
    } else {
        " (--isolate none silences this)"
    };
    format!("{what} ({e}){hint}")
}

/// Starts `/bin/true` with `prepared`'s namespaces and waits for it.
fn probe(prepared: &Prepared) -> io::Result<()> {
    let plan = crate::launch::Plan::new(std::ffi::OsStr::new("/bin/true"), &[], [])?;
    let mut stack = crate::launch::Stack::default();
    let fs = match &prepared.fs {
        Some(layout) => Some(layout.plan(
            std::path::Path::new("/bin/true"),
            &std::env::current_dir()?,
            &std::env::temp_dir(),
        )?),
        None => None,
    };
    let setup = |_born, part| {
        // SAFETY: between clone and exec, as `enter` requires.
        unsafe { enter(prepared, part, fs.as_ref(), None) }
            .map_err(|e| crate::launch::StageError::of(crate::launch::Stage::Namespaces, &e))
    };
    // SAFETY: `setup` only makes `enter`'s async-signal-safe calls.
    let launched = unsafe {
        crate::launch::launch(
            &plan,
            &mut stack,
            None,
            crate::launch::Fallbacks::default(),
            prepared.init(),
            &setup,
        )
    }?;
    let mut status = 0;
    // SAFETY: waiting for our own child into a live int (no reaper runs yet).
    let rc = loop {
        let rc = unsafe { libc::waitpid(launched.pid, &mut status, 0) };
        if rc >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break rc;
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let exit = if libc::WIFSIGNALED(status) {
        crate::reaper::Exit::Signal(libc::WTERMSIG(status))
    } else {
        crate::reaper::Exit::Code(libc::WEXITSTATUS(status))
    };
    let exit = crate::launch::init_ended(launched.pid, exit);
    launched.started.map_err(|f| f.error)?;
    match exit {
        crate::reaper::Exit::Code(0) => Ok(()),
        other => Err(io::Error::other(format!("the probe ended with {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/cgroup"), b"/sys/fs/cgroup");
        assert_eq!(unescape(r"/a\040b"), b"/a b");
        assert_eq!(unescape(r"/a\134b"), b"/a\\b");
        assert_eq!(unescape(r"/a\9"), b"/a\\9");
    }

    #[test]
    fn none_stands_alone() {
        assert!(resolve(&[Isolate::None], &[]).expect("none").is_none());
        assert!(resolve(&[Isolate::None, Isolate::Net], &[]).is_err());
    }
}
