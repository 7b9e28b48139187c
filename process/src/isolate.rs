//! Stronger isolation on request (`--isolate net,pid`), through Linux namespaces.
//!
//! - `net`: the worker gets a network namespace of its own, with no interface up: it
//!   cannot reach anything, not even a listener on the host's loopback.
//! - `pid`: the worker runs as PID 1 of a pid namespace of its own. When it dies the kernel
//!   kills everything in the namespace, so no descendant can outlive it, however it
//!   daemonized (`setsid`, double fork, a cleared environment). As PID 1 must be a child of
//!   the process that created the namespace, the process jobsup starts stays behind as a
//!   small shim: it ignores soft signals (the worker gets them through the process group),
//!   waits for the worker and exits the same way; it and the worker both die with jobsup.
//!
//! Without root, a user namespace (mapping the caller's own uid and gid) grants the right
//! to create the others. Whether the kernel allows all this is probed once at start
//! ([`probe`]), so that a refusal is a clear error before any job is read.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// What to isolate.
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
    /// No network at all.
    Net,
    /// A pid namespace: nothing the worker starts can outlive it.
    Pid,
}

/// Everything the child needs, prepared before fork (nothing may be allocated after it).
#[derive(Debug, Clone)]
pub struct Prepared {
    user_ns: bool,
    flags: libc::c_int,
    pid: bool,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    setgroups: CString,
    uid_map_path: CString,
    gid_map_path: CString,
}

impl Prepared {
    /// Whether entering forks (a pid namespace: the started process stays as the shim).
    pub fn forks(&self) -> bool {
        self.pid
    }
}

/// Prepares `what` for the spawner; `None` when there is nothing to isolate.
pub fn prepare(what: &[Isolate]) -> Option<Prepared> {
    if what.is_empty() {
        return None;
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut flags = 0;
    if what.contains(&Isolate::Net) {
        flags |= libc::CLONE_NEWNET;
    }
    if what.contains(&Isolate::Pid) {
        flags |= libc::CLONE_NEWPID;
    }
    Some(Prepared {
        user_ns: uid != 0,
        flags,
        pid: what.contains(&Isolate::Pid),
        uid_map: format!("{uid} {uid} 1\n").into_bytes(),
        gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        setgroups: CString::new("/proc/self/setgroups").expect("no NUL"),
        uid_map_path: CString::new("/proc/self/uid_map").expect("no NUL"),
        gid_map_path: CString::new("/proc/self/gid_map").expect("no NUL"),
    })
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Writes `data` to the file at `path`. Async-signal-safe.
unsafe fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
    // SAFETY (for the caller): open/write/close on a NUL-terminated path and a live slice.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Enters the namespaces, in the child between fork and exec. With `pid`, forks once more:
/// the caller returns in the new PID 1, while this process stays behind as the shim and
/// never returns.
///
/// # Safety
/// Only between fork and exec, in a single-threaded child: it uses async-signal-safe calls
/// only.
pub unsafe fn enter(p: &Prepared) -> io::Result<()> {
    // SAFETY: plain system calls; the buffers were prepared before fork.
    unsafe {
        if p.user_ns {
            check(libc::unshare(libc::CLONE_NEWUSER))?;
            // An unprivileged process must give up setgroups before it may map its gid.
            let _ = write_file(&p.setgroups, b"deny");
            write_file(&p.uid_map_path, &p.uid_map)?;
            write_file(&p.gid_map_path, &p.gid_map)?;
        }
        check(libc::unshare(p.flags))?;
        if !p.pid {
            return Ok(());
        }
        let child = check(libc::fork())?;
        if child == 0 {
            // PID 1 of the new namespace: the worker. The parent-death signal does not
            // survive fork: arm it again, towards the shim.
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            return Ok(());
        }
        shim(child)
    }
}

/// The process jobsup started, once the worker runs in its pid namespace: holds nothing
/// open, ignores soft signals, and ends the way the worker ends.
unsafe fn shim(child: libc::pid_t) -> ! {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        // It never execs, so close-on-exec does not apply: close everything it inherited,
        // or it would hold other workers' pipes open.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP && sig != libc::SIGCHLD {
                libc::signal(sig, libc::SIG_IGN);
            }
        }
        let mut status = 0;
        loop {
            let rc = libc::waitpid(child, &mut status, 0);
            if rc == child {
                break;
            }
            if rc < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(126);
            }
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// Checks once, at start, that the kernel lets this process isolate workers this way.
/// Must run before the reaper starts (it waits for its own probe child).
pub fn probe(what: &[Isolate]) -> Result<(), String> {
    let Some(prepared) = prepare(what) else {
        return Ok(());
    };
    let mut cmd = Command::new("/bin/true");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: `enter` only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || enter(&prepared));
    }
    let names: Vec<&str> = what
        .iter()
        .map(|w| match w {
            Isolate::Net => "net",
            Isolate::Pid => "pid",
        })
        .collect();
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "--isolate {}: the kernel refused it (probe ended with {status})",
            names.join(",")
        )),
        Err(e) => Err(format!(
            "--isolate {}: the kernel refused it: {e} (user namespaces may be disabled: see /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone)",
            names.join(",")
        )),
    }
}
