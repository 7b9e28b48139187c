//! The only place that spawns processes.
//!
//! Every worker gets, before it runs a single instruction of the processor:
//! - its own session and process group (so the hard kill reaches the whole group);
//! - a parent-death signal (SIGKILL), so it dies with the supervisor. The signal follows the
//!   *thread* that forked the child, so every spawn happens on one of a few dedicated
//!   threads that live as long as the supervisor;
//! - no core dumps;
//! - a cleared environment with a short allowlist plus jobsup's own `JOBSUP_*` variables;
//! - a fresh private working directory (mode 0700), removed when the worker is dropped;
//! - stdin on `/dev/null`, stdout and stderr on pipes that the worker task drains, and the
//!   protocol pipes on fds 3 and 4.
//!
//! The clone itself is `launch`'s. A spawning thread waits while its child sets up
//! and execs, so there are as many spawner threads as cores (up to 4) for workers to start
//! side by side; each registers its child with the reaper, which keeps a status that came
//! first (see [`crate::reaper`]).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use jobsup_protocol::{ENV_MAX_FRAME, ENV_PROTOCOL, JOB_FD, PROTOCOL_VERSION, RESULT_FD};
use tokio::sync::oneshot;

use crate::launch;
use crate::reaper::Reaper;

/// Variables passed through from jobsup's own environment to every worker.
const ENV_ALLOWLIST: &[&str] = &["PATH", "HOME", "LANG", "TZ", "TMPDIR"];

/// What to start.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    /// The processor, already resolved to a path (see [`resolve_program`]).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// The worker's serial number, exported as `JOBSUP_WORKER_ID`.
    pub worker_id: u64,
    /// The frame size limit, exported as `JOBSUP_MAX_FRAME`.
    pub max_frame: u32,
    /// Where private working directories are created (default: the system temp dir).
    pub workdir_parent: Option<PathBuf>,
    /// Where the process runs, when not in its private directory (`--cwd`).
    pub cwd: Option<PathBuf>,
    /// Give the process the protocol pipes on fds 3 and 4 (native mode).
    pub protocol_fds: bool,
    /// Give the process a pipe on stdin (lines and exec modes) instead of `/dev/null`.
    pub stdin_pipe: bool,
    /// Variables set on purpose (`--env`, `--pass-env`), on top of the allowlist.
    pub env: Vec<(OsString, OsString)>,
    /// Resource limits.
    pub limits: Limits,
    /// Namespaces to enter (`--isolate`), prepared before any fork.
    pub isolation: Option<crate::isolate::Prepared>,
}

/// Resource limits set on a worker before it runs: rlimits (inherited by its children), or
/// its cgroups where [`crate::cgroup`] enforces them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Address space, in bytes (`RLIMIT_AS`).
    pub memory: Option<u64>,
    /// CPU seconds (`RLIMIT_CPU`: SIGXCPU at the limit, SIGKILL a second later).
    pub cpu_secs: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes and threads in the worker's tree (cgroup `pids.max`; no rlimit fallback,
    /// as `RLIMIT_NPROC` counts a whole user, not a worker).
    pub max_procs: Option<u64>,
}

/// A started worker process and the supervisor's ends of its pipes.
pub struct Spawned {
    /// Its pid, which is also its process group id.
    pub pid: i32,
    /// Its registration with the reaper, which routes its exit status there.
    pub exit: crate::reaper::Registration,
    /// The pipes a mode may take for its link.
    pub pipes: Pipes,
    /// Its cgroup, where the machine offers them.
    pub cgroup: Option<crate::cgroup::WorkerCgroup>,
    /// Its stderr.
    pub stderr: File,
    /// Its private working directory, removed on drop.
    pub workdir: tempfile::TempDir,
}

/// The supervisor's ends of a worker's pipes, for the mode's link to take.
pub struct Pipes {
    /// The write end of its job pipe (its fd 3), in native mode.
    pub jobs: Option<File>,
    /// The read end of its result pipe (its fd 4), in native mode.
    pub results: Option<File>,
    /// Its stdin, when piped.
    pub stdin: Option<File>,
    /// Its stdout (taken by the link when it carries results).
    pub stdout: Option<File>,
}

/// Why a processor could not be started at all.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No such program.
    #[error("processor not found: {program}")]
    NotFound {
        /// What the user named.
        program: String,
    },
    /// It exists but cannot be executed.
    #[error("processor cannot be run: {program}: {source}")]
    NotExecutable {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// Anything else (pipes, working directory, fork).
    #[error("cannot start processor {program}: {source}")]
    Other {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
}

impl SpawnError {
    fn from_io(path: &Path, source: io::Error) -> Self {
        let program = path.display().to_string();
        match source.raw_os_error() {
            // The file is there: what is missing is the interpreter its `#!` line names.
            Some(libc::ENOENT) if path.is_file() => SpawnError::NotExecutable {
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    match interpreter(path) {
                        Some(i) => format!("its interpreter {i} (from its #! line) was not found"),
                        None => {
                            "a file it needs to start (its interpreter or loader) was not found"
                                .into()
                        }
                    },
                ),
                program,
            },
            Some(libc::ENOENT) => SpawnError::NotFound { program },
            Some(libc::EACCES) | Some(libc::ENOEXEC) | Some(libc::EISDIR) => {
                SpawnError::NotExecutable { program, source }
            }
            _ => SpawnError::Other { program, source },
        }
    }
}

/// The interpreter a script's `#!` line names.
fn interpreter(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = File::open(path).ok()?.read(&mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(line);
    line.split_whitespace().next().map(str::to_string)
}

/// Finds the processor the way a shell would, so that a missing or unusable one is reported
/// before any job is read, and so that a relative path means the same thing in a worker's
/// private working directory.
pub fn resolve_program(name: &Path) -> Result<PathBuf, SpawnError> {
    let candidate = if name.components().count() > 1 || name.is_absolute() {
        std::path::absolute(name).map_err(|e| SpawnError::from_io(name, e))?
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        let found = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| is_executable_file(p));
        match found {
            Some(p) => p,
            None => {
                return Err(SpawnError::NotFound {
                    program: name.display().to_string(),
                })
            }
        }
    };
    let meta = std::fs::metadata(&candidate).map_err(|e| SpawnError::from_io(name, e))?;
    if meta.is_dir() {
        return Err(SpawnError::NotExecutable {
            program: name.display().to_string(),
            source: io::Error::from_raw_os_error(libc::EISDIR),
        });
    }
    if !is_executable_file(&candidate) {
        return Err(SpawnError::NotExecutable {
            program: name.display().to_string(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        });
    }
    Ok(candidate)
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0 && access_x(p),
        Err(_) => false,
    }
}

fn access_x(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

type Request = (SpawnSpec, oneshot::Sender<Result<Spawned, SpawnError>>);

/// A handle on the spawner threads.
#[derive(Clone)]
pub struct Spawner {
    tx: std::sync::mpsc::Sender<Request>,
}

/// What each spawner thread holds.
struct SpawnerState {
    reaper: Reaper,
    cgroups: Option<std::sync::Arc<crate::cgroup::Cgroups>>,
    /// The children's stack (see [`crate::launch`]).
    stack: launch::Stack,
}

impl Spawner {
    /// Starts the spawner threads. They live until the process exits, which is what keeps
    /// the workers' parent-death signal from firing early.
    pub fn start(
        reaper: Reaper,
        cgroups: Option<std::sync::Arc<crate::cgroup::Cgroups>>,
    ) -> io::Result<Spawner> {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let supervisor_pid = std::process::id() as i32;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        for _ in 0..threads {
            let rx = std::sync::Arc::clone(&rx);
            let mut state = SpawnerState {
                reaper: reaper.clone(),
                cgroups: cgroups.clone(),
                stack: launch::Stack::default(),
            };
            std::thread::Builder::new()
                .name("jobsup-spawner".into())
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a request.
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((spec, reply)) = next else { break };
                        // A bug while spawning fails that spawn, not the thread: it must
                        // live on for the parent-death signal of the children it made.
                        let spawned =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                crate::fault::fault("spawner");
                                spawn(&mut state, supervisor_pid, &spec)
                            }))
                            .unwrap_or_else(|panic| {
                                Err(SpawnError::Other {
                                    program: spec.program.display().to_string(),
                                    source: io::Error::other(format!(
                                        "internal error while spawning: {}",
                                        crate::fault::panic_message(&*panic)
                                    )),
                                })
                            });
                        let _ = reply.send(spawned);
                    }
                    // All handles dropped: park rather than return, so that children
                    // spawned from this thread keep their parent-death signal armed.
                    loop {
                        std::thread::park();
                    }
                })?;
        }
        Ok(Spawner { tx })
    }

    /// Starts a worker process.
    pub async fn spawn(&self, spec: SpawnSpec) -> Result<Spawned, SpawnError> {
        let program = spec.program.clone();
        let (reply, rx) = oneshot::channel();
        let gone = || SpawnError::Other {
            program: program.display().to_string(),
            source: io::Error::other("the spawner threads are gone"),
        };
        self.tx.send((spec, reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

fn spawn(
    state: &mut SpawnerState,
    supervisor_pid: i32,
    spec: &SpawnSpec,
) -> Result<Spawned, SpawnError> {
    let reaper = &state.reaper;
    let err = |e: io::Error| SpawnError::from_io(&spec.program, e);
    let other = |e: io::Error| SpawnError::Other {
        program: spec.program.display().to_string(),
        source: e,
    };
    // Both ends are close-on-exec; the child's copies are made by dup2 after fork.
    let protocol = if spec.protocol_fds {
        Some((
            crate::fd::pipe().map_err(other)?,
            crate::fd::pipe().map_err(other)?,
        ))
    } else {
        None
    };
    let mut builder = tempfile::Builder::new();
    // Private: other users must not read or plant files in a worker's directory.
    builder
        .prefix(crate::guard::workdir_prefix())
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let workdir = match &spec.workdir_parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .map_err(other)?;

    // The standard fds: stdin on a pipe or /dev/null, stdout and stderr on pipes. Every
    // end is close-on-exec; the child's copies are placed by dup2.
    let stdin = if spec.stdin_pipe {
        let (r, w) = crate::fd::pipe().map_err(other)?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").map_err(other)?;
        (OwnedFd::from(null), None)
    };
    let (stdout_r, stdout_w) = crate::fd::pipe().map_err(other)?;
    let (stderr_r, stderr_w) = crate::fd::pipe().map_err(other)?;

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| {
            let k = key.to_string_lossy();
            ENV_ALLOWLIST.contains(&k.as_ref()) || k.starts_with("LC_")
        })
        .collect();
    env.extend(spec.env.iter().cloned());
    env.push(("JOBSUP_WORKER_ID".into(), spec.worker_id.to_string().into()));
    env.push((crate::guard::TAG_VAR.into(), crate::guard::tag().into()));
    env.push(("JOBSUP_WORKDIR".into(), workdir.path().into()));
    if spec.protocol_fds {
        // Only a native worker is told it speaks the protocol: the runtime takes the
        // variable as proof that fds 3 and 4 are there.
        env.push((ENV_PROTOCOL.into(), PROTOCOL_VERSION.to_string().into()));
        env.push((ENV_MAX_FRAME.into(), spec.max_frame.to_string().into()));
    }
    let plan = launch::Plan::new(
        spec.program.as_os_str(),
        &spec.args,
        env,
        spec.cwd.as_deref().unwrap_or(workdir.path()).as_os_str(),
        [
            stdin.0.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ],
        // The PID-1 shim of `--isolate pid` needs a memory of its own.
        !spec.isolation.as_ref().is_some_and(|p| p.forks()),
    )
    .map_err(other)?;

    let child_fds = protocol.as_ref().map(|((job_r, _), (_, res_w))| {
        [(job_r.as_raw_fd(), JOB_FD), (res_w.as_raw_fd(), RESULT_FD)]
    });
    let mut limits = spec.limits;
    // Where a memory controller counts the worker's whole tree, the address-space rlimit
    // would only misfire on programs that reserve more than they use.
    if state.cgroups.as_ref().is_some_and(|c| c.limits_memory()) {
        limits.memory = None;
    }
    let isolation = spec.isolation.clone();
    // Best effort for the kill alone (the other means still contain the worker); not when
    // the cgroup carries a limit the worker would otherwise run without.
    let cgroup = match &state.cgroups {
        Some(c) => match c.worker(spec.worker_id) {
            Ok(w) => Some(w),
            Err(e) if c.has_limits() => {
                return Err(other(io::Error::other(format!(
                    "cannot set up the worker's cgroup limits: {e}"
                ))))
            }
            Err(_) => None,
        },
        None => None,
    };
    let cgroup_procs = cgroup.as_ref().map(|c| c.procs()).unwrap_or_default();
    let cgroup_required = state.cgroups.as_ref().is_some_and(|c| c.has_limits());
    // Runs in the child, just before exec: async-signal-safe system calls only (setsid,
    // prctl, getppid, setrlimit, fcntl, dup2, open/write on cgroup files, unshare, fork,
    // waitpid, _exit), on data prepared above.
    let setup = || -> io::Result<()> {
        child_setup(supervisor_pid, child_fds, limits)?;
        // SAFETY: paths prepared before the clone.
        let joined = unsafe { crate::cgroup::WorkerCgroup::join(&cgroup_procs) };
        // A worker must not run without a limit it was given.
        if cgroup_required {
            joined?;
        }
        match &isolation {
            // SAFETY: between clone and exec, in a child with its own memory (see above).
            Some(p) => unsafe { crate::isolate::enter(p) },
            None => Ok(()),
        }
    };
    let since = std::time::Instant::now();
    let (pid, started) = launch::launch(&plan, &mut state.stack, &setup).map_err(other)?;
    // Registered even when the exec failed, so that the reaper's record of it is claimed.
    let exit = reaper.register(pid, since);
    started.map_err(|failed| match failed.stage.failed() {
        None => err(failed.error),
        // Not the processor's fault: say where it went wrong.
        Some(what) => other(io::Error::new(
            failed.error.kind(),
            format!("{what}: {}", failed.error),
        )),
    })?;
    // The child's ends are the child's now.
    drop((stdin.0, stdout_w, stderr_w));
    let stdin = stdin.1.map(File::from);
    // The child's ends are the child's now.
    let (jobs, results) = match protocol {
        Some(((job_r, job_w), (res_r, res_w))) => {
            drop((job_r, res_w));
            (Some(File::from(job_w)), Some(File::from(res_r)))
        }
        None => (None, None),
    };
    Ok(Spawned {
        pid,
        exit,
        cgroup,
        pipes: Pipes {
            jobs,
            results,
            stdin,
            stdout: Some(File::from(stdout_r)),
        },
        stderr: File::from(stderr_r),
        workdir,
    })
}

/// Runs in the child between clone and exec.
fn child_setup(
    supervisor_pid: i32,
    fds: Option<[(RawFd, RawFd); 2]>,
    limits: Limits,
) -> io::Result<()> {
    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }
    // SAFETY: plain system calls on integers and fds this child owns.
    unsafe {
        check(libc::setsid())?;
        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ))?;
        // The supervisor may have died between fork and prctl: then nobody would kill us.
        if libc::getppid() != supervisor_pid {
            libc::_exit(1);
        }
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
        // Nothing a worker runs can gain privileges (setuid binaries, file capabilities).
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        let set = |resource, value: Option<u64>| -> io::Result<()> {
            if let Some(v) = value {
                let limit = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                check(libc::setrlimit(resource, &limit))?;
            }
            Ok(())
        };
        set(libc::RLIMIT_AS, limits.memory)?;
        set(libc::RLIMIT_NOFILE, limits.open_files)?;
        // The hard limit a second later: SIGXCPU first, which a process may catch to
        // clean up; SIGKILL if it does not stop.
        if let Some(secs) = limits.cpu_secs {
            let limit = libc::rlimit {
                rlim_cur: secs as libc::rlim_t,
                rlim_max: (secs + 1) as libc::rlim_t,
            };
            check(libc::setrlimit(libc::RLIMIT_CPU, &limit))?;
        }
        let Some(fds) = fds else {
            return Ok(());
        };
        // Move the pipe ends above the target numbers first, so that placing one cannot
        // overwrite the other (either may currently be fd 3 or 4).
        let mut high = [0; 2];
        for (i, (fd, _)) in fds.iter().enumerate() {
            high[i] = check(libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10))?;
        }
        for (i, (_, target)) in fds.iter().enumerate() {
            // dup2 leaves the new descriptor without close-on-exec: the worker keeps it.
            check(libc::dup2(high[i], *target))?;
        }
    }
    Ok(())
}

/// Sends `sig` to a whole process group. A group that is already gone is success.
pub fn signal_group(pgid: i32, sig: nix::sys::signal::Signal) {
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid, "cannot send {sig} to process group {pgid}: {e}"),
    }
}
