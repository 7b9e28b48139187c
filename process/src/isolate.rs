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
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::launch::{close_all_but, FdMethod, PLACED_FDS};

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

    /// Whether entering makes a user namespace (jobsup is not root): the child then holds
    /// every capability there.
    pub fn user_namespace(&self) -> bool {
        self.user_ns
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

/// Who a worker's parent-death signal comes from, once its namespaces are entered: what
/// the last step of its setup checks is still alive after arming the signal again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parent {
    /// jobsup itself (no pid namespace): its pid is what `getppid` must say.
    Supervisor,
    /// The pid shim, which `getppid` cannot name (it is outside the worker's pid
    /// namespace): the read end of a pipe whose only write end the shim holds, so that
    /// its end-of-file means the shim is gone.
    Shim(RawFd),
}

impl Parent {
    /// Whether the parent is gone, checked after arming the parent-death signal: a parent
    /// that died before could not have sent it.
    ///
    /// # Safety
    /// Between fork and exec: async-signal-safe calls only.
    pub unsafe fn gone(self, supervisor_pid: i32) -> bool {
        match self {
            // SAFETY: getppid cannot fail.
            Parent::Supervisor => (unsafe { libc::getppid() }) != supervisor_pid,
            Parent::Shim(life) => {
                let mut poll = libc::pollfd {
                    fd: life,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll on a live struct, without waiting; then our own fd.
                unsafe {
                    let rc = libc::poll(&mut poll, 1, 0);
                    libc::close(life);
                    rc != 0
                }
            }
        }
    }
}

/// Enters the namespaces, in the child between fork and exec. With `pid`, forks once more:
/// the caller returns in the new PID 1 ([`Parent::Shim`]), while this process stays
/// behind as the shim and never returns. `supervisor_pid` is jobsup's, which the shim
/// checks is still its parent once its parent-death signal is armed again.
///
/// # Safety
/// Only between fork and exec, in a single-threaded child that does not share the
/// caller's memory when `pid` is asked for: it uses async-signal-safe calls only, and the
/// shim closes every fd it inherited.
pub(crate) unsafe fn enter(
    p: &Prepared,
    supervisor_pid: i32,
    fd_method: FdMethod,
) -> io::Result<Parent> {
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
            return Ok(Parent::Supervisor);
        }
        // The worker learns of the shim's death through this pipe: it cannot see the
        // shim's pid from inside its namespace.
        let mut life = [0; 2];
        check(libc::pipe2(life.as_mut_ptr(), libc::O_CLOEXEC))?;
        // The worker's end must survive the placing of its fds 0 to 4.
        if life[0] < PLACED_FDS {
            let high = check(libc::fcntl(life[0], libc::F_DUPFD_CLOEXEC, PLACED_FDS))?;
            libc::close(life[0]);
            life[0] = high;
        }
        let child = check(libc::fork())?;
        if child == 0 {
            // PID 1 of the new namespace: the worker. The parent-death signal does not
            // survive fork: the last step of its setup arms it again, towards the shim.
            libc::close(life[1]);
            return Ok(Parent::Shim(life[0]));
        }
        shim(child, life[1], supervisor_pid, fd_method)
    }
}

/// The process jobsup started, once the worker runs in its pid namespace: holds nothing
/// open but its end of the worker's life pipe, ignores soft signals, and ends the way the
/// worker ends.
unsafe fn shim(child: libc::pid_t, life: RawFd, supervisor_pid: i32, fd_method: FdMethod) -> ! {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        // Its credentials may have changed with the user namespace: arm the parent-death
        // signal again, then make sure jobsup did not die before.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != supervisor_pid {
            libc::kill(child, libc::SIGKILL);
            libc::_exit(1);
        }
        // It never execs, so close-on-exec does not apply: close everything it inherited,
        // or it would hold other workers' pipes open, and the report pipe, whose end of
        // file tells jobsup that the worker has exec'd. A shim that cannot must not stay.
        if close_all_but(life, fd_method).is_err() {
            libc::kill(child, libc::SIGKILL);
            libc::_exit(126);
        }
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
    let supervisor_pid = std::process::id() as i32;
    // SAFETY: `enter` only makes async-signal-safe calls, in the child of a fork.
    unsafe {
        cmd.pre_exec(move || enter(&prepared, supervisor_pid, FdMethod::CloseRange).map(|_| ()));
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
