//! Starting one process: clone, set the child up, exec. Used by [`crate::sandbox`] for
//! every worker.
//!
//! `std::process::Command` forks as soon as a `pre_exec` hook is given, and a fork of a
//! multi-threaded supervisor is slow: page tables are copied, every thread's TLB is shot
//! down, and jobsup then takes copy-on-write faults on its own memory. Measured here, a
//! spawn-and-wait of `/bin/true` from a process with 10 MB touched and a few threads takes
//! about 2.0–2.5 ms through fork and 0.9–1.1 ms through `posix_spawn`. So, like
//! `posix_spawn`, the child shares jobsup's memory until it execs (`CLONE_VM |
//! CLONE_VFORK`: the spawning thread waits meanwhile), and runs only async-signal-safe
//! calls on a stack of its own, on data prepared before the clone.
//!
//! The exception is `--isolate pid`: the child forks again and stays behind as the PID-1
//! shim, which a shared-memory child must never do; it gets a copy of jobsup's memory
//! through libc's `fork` (whose fork handlers keep the copy's allocator usable, which
//! that second fork needs) instead.
//!
//! A failure in the child is reported through a close-on-exec pipe: the child writes the
//! stage it was at and its errno, and exits with 127; end-of-file means the exec
//! happened.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// Everything the child needs, as C data made before the clone (the child may not
/// allocate: it shares jobsup's heap).
pub struct Plan {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    stdio: [RawFd; 3],
    /// The child shares jobsup's memory until exec (false under `--isolate pid`).
    share_memory: bool,
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", s.to_string_lossy()),
        )
    })
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl Plan {
    /// `program` (a path: no PATH search happens) with `args`, the environment `env` (later
    /// entries replace earlier ones of the same name), in `cwd`, with `stdio` placed on fds
    /// 0, 1 and 2.
    pub fn new(
        program: &OsStr,
        args: &[OsString],
        env: impl IntoIterator<Item = (OsString, OsString)>,
        cwd: &OsStr,
        stdio: [RawFd; 3],
        share_memory: bool,
    ) -> io::Result<Plan> {
        let program = c_string(program)?;
        let argv = std::iter::once(Ok(program.clone()))
            .chain(args.iter().map(|a| c_string(a)))
            .collect::<io::Result<Vec<_>>>()?;
        let env: BTreeMap<OsString, OsString> = env.into_iter().collect();
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                c_string(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Plan {
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            program,
            _argv: argv,
            _envp: envp,
            cwd: c_string(cwd)?,
            stdio,
            share_memory,
        })
    }
}

/// The child's stack, reused from spawn to spawn (only one thread spawns).
pub struct Stack(Vec<u8>);

impl Default for Stack {
    fn default() -> Stack {
        // Setup and exec need little; namespace entry and the shim a little more.
        Stack(vec![0; 256 * 1024])
    }
}

/// What the clone hands the child.
struct Child<'a, F> {
    plan: &'a Plan,
    setup: &'a F,
    report: RawFd,
}

/// Starts the process. `setup` runs in the child after the standard fds and the working
/// directory are in place, just before exec; it must only make async-signal-safe calls and
/// must not allocate. Returns the new pid once the child has exec'd, or the pid and where
/// and why it failed before (the child then exits with 127); either way the caller
/// registers the pid with the reaper.
pub fn launch<F>(plan: &Plan, stack: &mut Stack, setup: &F) -> io::Result<(i32, Result<(), Failed>)>
where
    F: Fn() -> io::Result<()>,
{
    let (report_r, report_w) = crate::fd::pipe()?;
    let child = Child {
        plan,
        setup,
        report: report_w.as_raw_fd(),
    };
    let top = {
        let end = stack.0.as_mut_ptr_range().end as usize;
        // The ABI wants a 16-byte aligned stack.
        (end & !15) as *mut libc::c_void
    };
    // No signal handler of jobsup's may run in a child that shares its memory: all
    // signals stay blocked across the clone, and the child resets every handler before
    // it unblocks them.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigset manipulation on local values; clone with a valid entry point, a stack
    // that outlives the child's use of it (with CLONE_VFORK this thread waits until the
    // child execs or exits), and an argument that lives as long; or a fork whose child
    // runs the same entry point on its own copy and never returns.
    let arg: *mut libc::c_void = (&child as *const Child<'_, F>).cast_mut().cast();
    let (pid, clone_error) = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = if plan.share_memory {
            let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
            libc::clone(child_main::<F>, top, flags, arg)
        } else {
            // libc's own fork, not a bare clone: its fork handlers leave the child's
            // allocator unlocked, and the `--isolate pid` child forks again (a bare clone
            // copied a malloc lock another thread held, and that second fork hung on it).
            match libc::fork() {
                0 => {
                    child_main::<F>(arg);
                    libc::_exit(127)
                }
                pid => pid,
            }
        };
        let clone_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        (pid, clone_error)
    };
    if pid < 0 {
        return Err(clone_error);
    }
    drop(report_w);
    // End-of-file: the exec happened (every copy of the write end was close-on-exec).
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        // SAFETY: reading into a live buffer from an fd this function owns.
        let n = unsafe {
            libc::read(
                report_r.as_raw_fd(),
                report[got..].as_mut_ptr().cast(),
                report.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => {
                let error = io::Error::last_os_error();
                return Ok((
                    pid,
                    Err(Failed {
                        stage: Stage::Exec,
                        error,
                    }),
                ));
            }
        }
    }
    if got == 0 {
        return Ok((pid, Ok(())));
    }
    // The child has exited with 127; the reaper collects it.
    let word = |i: usize| i32::from_ne_bytes(report[i..i + 4].try_into().expect("4 bytes"));
    let stage = match word(0) {
        0 => Stage::Fds,
        1 => Stage::Directory,
        2 => Stage::Sandbox,
        _ => Stage::Exec,
    };
    let error = io::Error::from_raw_os_error(word(4));
    Ok((pid, Err(Failed { stage, error })))
}

/// Where a child failed before it became the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Placing its standard fds.
    Fds = 0,
    /// Entering its working directory.
    Directory = 1,
    /// Its sandbox: session, limits, cgroups, namespaces.
    Sandbox = 2,
    /// The exec itself: the processor could not be run.
    Exec = 3,
}

impl Stage {
    /// What went wrong, for a message; `None` for the exec, which is the processor's.
    pub fn failed(self) -> Option<&'static str> {
        match self {
            Stage::Fds => Some("placing its standard streams failed"),
            Stage::Directory => Some("entering its working directory failed"),
            Stage::Sandbox => {
                Some("setting up its sandbox (session, limits, cgroups, namespaces) failed")
            }
            Stage::Exec => None,
        }
    }
}

/// A child that did not get to exec.
#[derive(Debug)]
pub struct Failed {
    /// Where.
    pub stage: Stage,
    /// Why.
    pub error: io::Error,
}

/// The child's side, on its own stack.
extern "C" fn child_main<F>(arg: *mut libc::c_void) -> libc::c_int
where
    F: Fn() -> io::Result<()>,
{
    // SAFETY: `arg` is the `Child` the parent keeps alive until this process execs or
    // exits; everything below is an async-signal-safe call on data prepared before clone.
    unsafe {
        let child = &*(arg as *const Child<'_, F>);
        let fail = |stage: Stage, errno: i32| -> ! {
            let mut report = [0u8; 8];
            report[..4].copy_from_slice(&(stage as i32).to_ne_bytes());
            report[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(child.report, report.as_ptr().cast(), report.len());
            libc::_exit(127)
        };
        // Default dispositions (also for what jobsup ignores, such as SIGPIPE), then no
        // blocked signal: a processor starts as from a shell.
        // The system call itself: libc's wrapper refuses the two signals it reserves (32
        // and 33), which an ignoring parent would otherwise pass on.
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &default as *const KernelSigaction,
                    std::ptr::null_mut::<KernelSigaction>(),
                    8usize,
                );
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        let plan = child.plan;
        for (target, &fd) in plan.stdio.iter().enumerate() {
            // dup2 leaves the new descriptor without close-on-exec: the process keeps it.
            if libc::dup2(fd, target as RawFd) < 0 {
                fail(Stage::Fds, *libc::__errno_location());
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            fail(Stage::Directory, *libc::__errno_location());
        }
        if let Err(e) = (child.setup)() {
            fail(Stage::Sandbox, e.raw_os_error().unwrap_or(libc::EINVAL));
        }
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        fail(Stage::Exec, *libc::__errno_location())
    }
}

/// The kernel's `struct sigaction` on x86-64 and aarch64 (not libc's).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}
