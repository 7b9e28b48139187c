//! The only place that spawns processes.
//!
//! Every worker gets, before it runs a single instruction of the processor:
//! - its own session and process group (so the hard kill reaches the whole group);
//! - a parent-death signal (SIGKILL), so it dies with the supervisor. The signal follows the
//!   *thread* that forked the child, so every spawn happens on one of a few dedicated
//!   threads that live as long as the supervisor;
//! - its cgroups, from its creation where the kernel can do it (see `launch`);
//! - an fd table of exactly stdin on `/dev/null` or a pipe, stdout and stderr on pipes that
//!   the worker task drains, and in native mode the protocol pipes on fds 3 and 4: nothing
//!   jobsup inherited or opened reaches it;
//! - its resource limits, no core dumps and `no_new_privs`;
//! - the user and groups of `--user`, if given;
//! - no capabilities at all: bounding set, ambient, effective, permitted and inheritable
//!   all empty (the bounding set only where jobsup may drop it: as root, or in the user
//!   namespace of `--isolate`; elsewhere `no_new_privs` keeps exec from using it);
//! - a cleared environment with an exact allowlist plus jobsup's own `JOBSUP_*` variables;
//! - a fresh private scratch directory (mode 0700), its `TMPDIR` and `JOBSUP_WORKDIR`,
//!   removed when the worker is dropped; it runs in the directory it is given (`cwd`: by
//!   default the one jobsup was started in), or in the scratch directory.
//!
//! The order in which the child sets this up is `child_setup`'s, which says why each
//! step is where it is. The clone itself is `launch`'s. A spawning thread waits while its
//! child sets up and execs, so there are as many spawner threads as cores (up to 4) for
//! workers to start side by side; each registers its child with the reaper, which keeps a
//! status that came first (see [`crate::reaper`]).

use std::ffi::CString;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use jobsup_protocol::{ENV_MAX_FRAME, ENV_PROTOCOL, JOB_FD, PROTOCOL_VERSION, RESULT_FD};
use tokio::sync::oneshot;

use crate::launch::{self, Born, FdMethod, Part, Stage, StageError};
use crate::reaper::Reaper;

/// Variables passed through from jobsup's own environment to every worker: exactly these
/// (the locale ones are those glibc defines); anything else only when asked for. `TMPDIR`
/// is not among them: it is the worker's own scratch directory.
const ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "HOME",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "LC_MESSAGES",
    "LC_PAPER",
    "LC_NAME",
    "LC_ADDRESS",
    "LC_TELEPHONE",
    "LC_MEASUREMENT",
    "LC_IDENTIFICATION",
];

/// The user and groups a worker runs as (`--user`), resolved before any spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its uid.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its supplementary groups (`setgroups`).
    pub groups: Vec<u32>,
}

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
    /// Where the process runs: the directory jobsup was started in, or `--cwd`'s (made
    /// absolute and checked by the caller); `None` runs it in its private scratch
    /// directory (`--cwd scratch`).
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
    /// Who the worker runs as (`--user`); `None` keeps jobsup's own user.
    pub user: Option<Identity>,
    /// Its scheduling class and nice value (`--nice`, `--sched`).
    pub priority: crate::priority::WorkerPriority,
    /// The slot's processes share its namespaces, held open between them (exec mode, where
    /// a slot starts one per job; see the `holder` module), where the containment allows it.
    pub share_namespaces: bool,
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
    /// Its pid, which is also its process group id: a pid namespace's init, where workers
    /// get one.
    pub pid: i32,
    /// The processor's own pid: the init's worker, or `pid`. What records and logs name.
    pub processor_pid: i32,
    /// A pidfd for it, made by the clone itself where the kernel can (`CLONE_PIDFD`, Linux
    /// 5.2), so that it names
    /// this process even once its pid is reaped and reused. Close-on-exec, and never in
    /// the child's fd table.
    pub pidfd: Option<OwnedFd>,
    /// Its registration with the reaper, which routes its exit status there.
    pub exit: crate::reaper::Registration,
    /// The pipes a mode may take for its link.
    pub pipes: Pipes,
    /// Its cgroup, where the machine offers them.
    pub cgroup: Option<crate::cgroup::WorkerCgroup>,
    /// The clone created it inside its cgroup v2 directory (`CLONE_INTO_CGROUP`), where
    /// its kill goes: it is known to be there without reading the directory.
    pub born_in_cgroup: bool,
    /// Its stderr.
    pub stderr: File,
    /// Its private working directory, removed on drop.
    pub workdir: tempfile::TempDir,
    /// `pid` is a pid namespace's init, whose first child is the processor
    /// (`processor_pid`); false for a process started into its slot's namespaces.
    pub behind_init: bool,
    /// A hold on its mount namespace ([`crate::isolate::hold_mount_namespace`]), to be
    /// dropped once its exit has been seen, where nothing waits for the teardown.
    pub mount_namespace: Option<OwnedFd>,
}

/// The supervisor's ends of a worker's pipes, for the mode's link to take; like
/// [`Spawned::stderr`], each is non-blocking and close-on-exec.
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

/// Whether a worker running as `id` can enter `dir` (absolute), judged from the mode bits
/// of `dir` and of each directory above it, as the kernel would for a process with no
/// capabilities (which a worker of `--user` is): the first one it cannot search, with
/// its owner and mode, so that the error names it before any job runs. ACLs are not
/// read: they can only be reported by the worker's start itself.
pub fn first_unenterable(dir: &Path, id: &Identity) -> Option<(PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    // Root still holds its capabilities when it changes directory (they go after).
    if id.uid == 0 {
        return None;
    }
    let mut at = PathBuf::new();
    for part in dir.components() {
        at.push(part);
        let Ok(meta) = std::fs::metadata(&at) else {
            // What cannot be read is the start's to report, with its own error.
            return None;
        };
        let mode = meta.mode();
        let bit = if meta.uid() == id.uid {
            0o100
        } else if meta.gid() == id.gid || id.groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Some((at, meta.uid(), mode & 0o7777));
        }
    }
    None
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

type Request = (
    SpawnSpec,
    Option<tempfile::TempDir>,
    oneshot::Sender<Result<Spawned, SpawnError>>,
);

/// A handle on the spawner threads.
#[derive(Clone)]
pub struct Spawner {
    requests: std::sync::Arc<Requests>,
    holders: std::sync::Arc<crate::holder::Holders>,
    /// What a thread that spawns needs, to make its own [`SpawnerState`].
    base: std::sync::Arc<SpawnerBase>,
}

/// The requests waiting for a spawner thread. A request wakes one idle thread, not
/// all of them (as threads taking turns at one channel's receiver behind a lock would:
/// each request then woke the next thread in line too, a wakeup and a futex round trip
/// per spawn for nothing).
#[derive(Default)]
struct Requests {
    queue: std::sync::Mutex<std::collections::VecDeque<Request>>,
    ready: std::sync::Condvar,
}

impl Requests {
    fn push(&self, request: Request) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(request);
        self.ready.notify_one();
    }

    /// The next request, once there is one.
    fn pop(&self) -> Request {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(request) = queue.pop_front() {
                return request;
            }
            queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What every spawning thread's state is made from.
struct SpawnerBase {
    reaper: Reaper,
    cgroups: Option<std::sync::Arc<crate::cgroup::Cgroups>>,
    fallbacks: launch::Fallbacks,
    supervisor_pid: i32,
}

/// What each spawning thread holds.
struct SpawnerState {
    reaper: Reaper,
    cgroups: Option<std::sync::Arc<crate::cgroup::Cgroups>>,
    /// The children's stack (see [`crate::launch`]).
    stack: launch::Stack,
    /// What the tests make jobsup do as on an older kernel.
    fallbacks: launch::Fallbacks,
    /// This thread's own capability bounding set is empty ([`empty_own_bounding_set`]), so
    /// a child that makes no user namespace inherits it so.
    bounding_empty: bool,
    /// The slots' namespaces ([`crate::holder`]), shared by the spawning threads.
    holders: std::sync::Arc<crate::holder::Holders>,
    /// This thread's own pid namespace, to come back to after starting a child in a
    /// holder's; `None` where it cannot be opened (no holder is used then).
    own_pid_ns: Option<OwnedFd>,
    /// jobsup's pid, what a child's `getppid` must say (unless born in a holder's pid
    /// namespace).
    supervisor_pid: i32,
}

impl SpawnerState {
    /// The state of the calling thread, which spawns from now on: its bounding set
    /// emptied and its children made to start outside jobsup's scheduling class.
    fn here(base: &SpawnerBase, holders: &std::sync::Arc<crate::holder::Holders>) -> Self {
        let bounding_empty = empty_own_bounding_set();
        launch::children_start_ordinary_here();
        let own_pid_ns = crate::holder::own_pid_namespace()
            .map_err(|e| {
                tracing::debug!("no holders of namespaces: {e}");
            })
            .ok();
        SpawnerState {
            reaper: base.reaper.clone(),
            cgroups: base.cgroups.clone(),
            stack: launch::Stack::default(),
            fallbacks: base.fallbacks,
            bounding_empty,
            holders: std::sync::Arc::clone(holders),
            own_pid_ns,
            supervisor_pid: base.supervisor_pid,
        }
    }

    /// Spawns, turning a bug into that spawn's failure.
    fn spawn(
        &mut self,
        spec: &SpawnSpec,
        reuse: Option<tempfile::TempDir>,
    ) -> Result<Spawned, SpawnError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::fault::fault("spawner");
            spawn(self, spec, reuse)
        }))
        .unwrap_or_else(|panic| {
            Err(SpawnError::Other {
                program: spec.program.display().to_string(),
                source: io::Error::other(format!(
                    "internal error while spawning: {}",
                    crate::fault::panic_message(&*panic)
                )),
            })
        })
    }
}

thread_local! {
    /// The calling thread's own spawning state, on a thread that spawns its own processes
    /// ([`Spawner::spawn_here`]).
    static HERE: std::cell::RefCell<Option<SpawnerState>> = const { std::cell::RefCell::new(None) };
}

impl Spawner {
    /// Starts the spawner threads. They live until the process exits, which is what keeps
    /// the workers' parent-death signal from firing early.
    pub fn start(
        reaper: Reaper,
        cgroups: Option<std::sync::Arc<crate::cgroup::Cgroups>>,
    ) -> io::Result<Spawner> {
        let requests = std::sync::Arc::new(Requests::default());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let base = std::sync::Arc::new(SpawnerBase {
            reaper,
            cgroups,
            fallbacks: launch::Fallbacks::from_env(),
            supervisor_pid: std::process::id() as i32,
        });
        let holders = std::sync::Arc::new(crate::holder::Holders::default());
        for _ in 0..threads {
            let requests = std::sync::Arc::clone(&requests);
            let (base, holders) = (
                std::sync::Arc::clone(&base),
                std::sync::Arc::clone(&holders),
            );
            std::thread::Builder::new()
                .name("jobsup-spawner".into())
                .spawn(move || {
                    let mut state = SpawnerState::here(&base, &holders);
                    // Once every handle is gone, it waits here for good rather than
                    // return, so that children spawned from this thread keep their
                    // parent-death signal armed. A bug while spawning fails that spawn,
                    // not the thread.
                    loop {
                        let (spec, reuse, reply) = requests.pop();
                        let _ = reply.send(state.spawn(&spec, reuse));
                    }
                })?;
        }
        Ok(Spawner {
            requests,
            holders,
            base,
        })
    }

    /// From now on the calling thread spawns the processes it asks for itself, with no
    /// hop to a spawner thread and back: for a thread that serves one worker slot and
    /// has nothing else to do while its next process starts (an exec slot). The thread
    /// must outlive every process it spawns, whose parent-death signal follows it.
    pub fn spawn_here(&self) {
        HERE.with(|here| {
            let mut here = here.borrow_mut();
            if here.is_none() {
                *here = Some(SpawnerState::here(&self.base, &self.holders));
            }
        });
    }

    /// Slot `worker_id` starts no more processes: the holder of its namespaces, if it has
    /// one, ends ([`SpawnSpec::share_namespaces`]), and the files kept open on its cgroup
    /// close.
    pub fn release(&self, worker_id: u64) {
        self.holders.release(worker_id);
        if let Some(cgroups) = &self.base.cgroups {
            cgroups.forget(worker_id);
        }
    }

    /// Starts a worker process; in `reuse`'s private directory, where given (one that
    /// [`reusable_workdir`] let through), else in a new one. On a thread that
    /// [`spawns_here`](Spawner::spawn_here), right there.
    pub async fn spawn(
        &self,
        spec: SpawnSpec,
        mut reuse: Option<tempfile::TempDir>,
    ) -> Result<Spawned, SpawnError> {
        let here = HERE.with(|here| {
            here.borrow_mut()
                .as_mut()
                .map(|state| state.spawn(&spec, reuse.take()))
        });
        if let Some(spawned) = here {
            return spawned;
        }
        let program = spec.program.clone();
        let (reply, rx) = oneshot::channel();
        let gone = || SpawnError::Other {
            program: program.display().to_string(),
            source: io::Error::other("the spawner threads are gone"),
        };
        self.requests.push((spec, reuse, reply));
        rx.await.map_err(|_| gone())?
    }
}

fn spawn(
    state: &mut SpawnerState,
    spec: &SpawnSpec,
    reuse: Option<tempfile::TempDir>,
) -> Result<Spawned, SpawnError> {
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
    let workdir = match reuse {
        Some(dir) => dir,
        None => new_workdir(spec).map_err(other)?,
    };

    // The standard fds: stdin on a pipe or /dev/null, stdout and stderr on pipes. Every
    // end is close-on-exec; the child's copies are placed by dup2.
    let stdin = if spec.stdin_pipe {
        let (r, w) = crate::fd::pipe().map_err(other)?;
        (Some(r), Some(w))
    } else {
        (None, None)
    };
    let stdin_fd = match &stdin.0 {
        Some(r) => r.as_raw_fd(),
        None => dev_null().map_err(other)?.as_raw_fd(),
    };
    let (stdout_r, stdout_w) = crate::fd::pipe().map_err(other)?;
    let (stderr_r, stderr_w) = crate::fd::pipe().map_err(other)?;

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| key.to_str().is_some_and(|k| ENV_ALLOWLIST.contains(&k)))
        .collect();
    // Temporary files go to the worker's own directory, removed with it, unless `--env`
    // says otherwise on purpose.
    if !spec.env.iter().any(|(k, _)| k == "TMPDIR") {
        env.push(("TMPDIR".into(), workdir.path().into()));
    }
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
    let plan = launch::Plan::new(spec.program.as_os_str(), &spec.args, env).map_err(other)?;

    let mut limits = spec.limits;
    // Where a memory controller counts the worker's whole tree, the address-space rlimit
    // would only misfire on programs that reserve more than they use.
    if state.cgroups.as_ref().is_some_and(|c| c.limits_memory()) {
        limits.memory = None;
    }
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
    // Where the clone can create the child: its cgroup v2 directory, where this kernel
    // lets the child run there. Failing to open it only means the child joins it itself.
    let clone_into = match (&state.cgroups, &cgroup) {
        (Some(all), Some(c)) if c.v2_dir().is_some() && !state.fallbacks.clone3 => {
            clone_into(all, &state.reaper, &mut state.stack).allows(c)
        }
        _ => false,
    };
    let into_cgroup = cgroup
        .as_ref()
        .filter(|_| clone_into)
        .and_then(|c| c.v2_dir_fd());
    // The slot's namespaces, where its processes share them (see `crate::holder`); else
    // each gets its own, behind its own init. A holder that cannot be started, or
    // entered, costs only that: the spawn goes on that way.
    let shared = match (
        spec.share_namespaces,
        crate::holder::holder_init(spec.isolation.as_ref(), cgroup.as_ref()),
        state.own_pid_ns.is_some(),
    ) {
        (true, Some(init), true) => {
            let holders = std::sync::Arc::clone(&state.holders);
            let started = holders.for_slot(spec.worker_id, || start_holder(state, spec, init));
            started.map_err(|e| say_once_no_holder(&e)).ok()
        }
        _ => None,
    };
    let children_in = match (&shared, &state.own_pid_ns) {
        (Some(ns), Some(own)) => crate::holder::ChildrenIn::enter(ns.pid.as_fd(), own.as_fd())
            .map_err(|e| say_once_no_holder(&e))
            .ok(),
        _ => None,
    };
    let shared = shared.filter(|_| children_in.is_some());
    let mut fds = [-1; 5];
    fds[..3].copy_from_slice(&[stdin_fd, stdout_w.as_raw_fd(), stderr_w.as_raw_fd()]);
    if let Some(((job_r, _), (_, res_w))) = &protocol {
        debug_assert_eq!((JOB_FD, RESULT_FD), (3, 4));
        fds[3] = job_r.as_raw_fd();
        fds[4] = res_w.as_raw_fd();
    }
    let child = ChildPlan {
        // A child born in a holder's pid namespace sees its parent, outside, as 0.
        parent: if shared.is_some() {
            0
        } else {
            state.supervisor_pid
        },
        joined: shared
            .as_ref()
            .map(|ns| ns.mnt.as_ref().map(|fd| fd.as_raw_fd())),
        fds,
        placed: if protocol.is_some() { 5 } else { 3 },
        cwd: launch::c_string(spec.cwd.as_deref().unwrap_or(workdir.path()).as_os_str())
            .map_err(other)?,
        limits,
        started_with_open_files: crate::fd::started_with_open_files(),
        cgroup_procs: cgroup.as_ref().map(|c| c.procs()).unwrap_or_default(),
        cgroup_procs_v1: cgroup.as_ref().map(|c| c.procs_v1()).unwrap_or_default(),
        cgroup_required: state.cgroups.as_ref().is_some_and(|c| c.has_limits()),
        isolation: spec.isolation.clone(),
        fs: match spec.isolation.as_ref().and_then(|p| p.fs()) {
            Some(layout) => Some(
                layout
                    .plan(
                        &spec.program,
                        spec.cwd.as_deref().unwrap_or(workdir.path()),
                        workdir.path(),
                    )
                    .map_err(other)?,
            ),
            None => None,
        },
        fd_method: state.fallbacks.fd_method(),
        identity: spec.user.clone(),
        priority: spec.priority,
        cap_last: cap_last().map_err(other)?,
        // A user namespace gives its first process a full bounding set again.
        drop_bounding: (may_set_pcap() && !state.bounding_empty)
            || spec.isolation.as_ref().is_some_and(|p| p.user_namespace()),
    };
    // SAFETY: runs in the child between clone and exec; `child_setup` makes only
    // async-signal-safe calls on `child`, prepared above, and never allocates or panics,
    // which is `launch`'s contract.
    let setup = |born: Born, part: Part| unsafe { child_setup(&child, born, part) };
    let since = std::time::Instant::now();
    // SAFETY: `setup` keeps the contract (see above).
    let launched = unsafe {
        launch::launch(
            &plan,
            &mut state.stack,
            into_cgroup,
            state.fallbacks,
            spec.isolation
                .as_ref()
                .and_then(|p| p.init())
                .filter(|_| shared.is_none()),
            &setup,
        )
    };
    drop(children_in);
    let launched = launched.map_err(other)?;
    let pid = launched.pid;
    let behind_init =
        shared.is_none() && spec.isolation.as_ref().is_some_and(|p| p.init().is_some());
    // Registered even when the exec failed, so that the reaper's record of it is claimed.
    let exit = state.reaper.register(pid, since);
    launched
        .started
        .map_err(|failed| match failed.stage.failed() {
            None => err(failed.error),
            // Not the processor's fault: say where it went wrong.
            Some(what) => other(io::Error::new(
                failed.error.kind(),
                format!("{what}: {}", failed.error),
            )),
        })?;
    // The child's ends are the child's now.
    drop((stdin.0, stdout_w, stderr_w));
    // jobsup's ends are read and written on its runtime.
    let mut ours = vec![stdout_r.as_fd(), stderr_r.as_fd()];
    ours.extend(stdin.1.as_ref().map(|w| w.as_fd()));
    if let Some(((_, job_w), (res_r, _))) = &protocol {
        ours.extend([job_w.as_fd(), res_r.as_fd()]);
    }
    for fd in ours {
        crate::fd::set_nonblocking(fd).map_err(other)?;
    }
    let stdin = stdin.1.map(File::from);
    // The child's ends are the child's now.
    let (jobs, results) = match protocol {
        Some(((job_r, job_w), (res_r, res_w))) => {
            drop((job_r, res_w));
            (Some(File::from(job_w)), Some(File::from(res_r)))
        }
        None => (None, None),
    };
    // An init's first child is its worker, which has exec'd by now (or has exited, and then
    // nothing is to be named by it).
    let processor_pid = if behind_init {
        launched
            .pidfd
            .as_ref()
            .and_then(|fd| crate::isolate::worker_behind_init(fd.as_fd()))
            .or_else(|| crate::reaper::children(pid).first().copied())
            .unwrap_or(pid)
    } else {
        pid
    };
    let mount_namespace = if behind_init
        && spec.isolation.as_ref().is_some_and(|p| p.mount_namespace())
    {
        crate::isolate::hold_mount_namespace(pid, launched.pidfd.as_ref().map(|f| f.as_fd()), &exit)
    } else {
        None
    };
    Ok(Spawned {
        pid,
        processor_pid,
        mount_namespace,
        pidfd: launched.pidfd,
        exit,
        born_in_cgroup: launched.in_cgroup,
        cgroup,
        pipes: Pipes {
            jobs,
            results,
            stdin,
            stdout: Some(File::from(stdout_r)),
        },
        stderr: File::from(stderr_r),
        workdir,
        behind_init,
    })
}

/// `/dev/null` for reading, opened once: the stdin of every process without a pipe there
/// (the child's fd 0 is its own copy, made by `dup2`).
fn dev_null() -> io::Result<&'static OwnedFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd);
    }
    let fd = OwnedFd::from(File::open("/dev/null")?);
    Ok(NULL.get_or_init(|| fd))
}

/// Starts slot `spec.worker_id`'s holder ([`crate::holder`]): a pid namespace's init that
/// makes the mount namespace as every init does, in jobsup's own cgroup (outside the
/// slot's, whose kill must not reach it), and waits there.
fn start_holder(
    state: &mut SpawnerState,
    spec: &SpawnSpec,
    init: launch::Init,
) -> io::Result<crate::holder::Started> {
    let isolation = spec
        .isolation
        .as_ref()
        .ok_or_else(|| io::Error::other("no namespaces to hold"))?;
    // Never exec'd: the holder stops after its setup.
    let plan = launch::Plan::new(std::ffi::OsStr::new("/"), &[], [])?;
    // SAFETY: async-signal-safe calls on data prepared before the clone (see
    // `holder_setup`), which is `launch`'s contract.
    let setup = |_born: Born, part: Part| unsafe { holder_setup(isolation, part) };
    let since = std::time::Instant::now();
    // SAFETY: `setup` keeps the contract (see above).
    let launched = unsafe {
        launch::launch(
            &plan,
            &mut state.stack,
            None,
            state.fallbacks,
            Some(init),
            &setup,
        )
    }?;
    let exit = state.reaper.register(launched.pid, since);
    if let Err(failed) = launched.started {
        let what = failed.stage.failed().unwrap_or("setting up");
        return Err(io::Error::new(
            failed.error.kind(),
            format!("the slot's namespaces: {what}: {}", failed.error),
        ));
    }
    let namespaces = crate::isolate::holder_namespaces(
        launched.pid,
        launched.pidfd.as_ref().map(|f| f.as_fd()),
        &exit,
        isolation.mount_namespace(),
    )?;
    tracing::debug!(
        worker = spec.worker_id,
        pid = launched.pid,
        "namespaces' holder started"
    );
    Ok(crate::holder::Started {
        exit,
        pidfd: launched.pidfd,
        namespaces,
    })
}

/// A holder's setup, steps 1, 2 and 4 of [`child_setup`]'s (it joins no cgroup): its own
/// session, the parent-death signal (`launch` checks that jobsup is still there), and the
/// namespaces an init makes.
///
/// # Safety
/// As [`child_setup`].
unsafe fn holder_setup(isolation: &crate::isolate::Prepared, part: Part) -> Result<(), StageError> {
    // SAFETY: the caller's contract.
    unsafe {
        at(Stage::Session, libc::setsid())?;
        arm_parent_death()?;
        crate::isolate::enter(isolation, part, None, None)
            .map_err(|e| StageError::of(Stage::Namespaces, &e))
    }
}

/// Says, once per run, why a slot's processes get namespaces of their own after all.
fn say_once_no_holder(e: &io::Error) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!("exec slots keep no namespaces open, each job gets its own: {e}");
    }
}

/// A worker's private directory, made for it: 0700, in `--workdirs` (else the temporary
/// directory), owned by `--user` where one is given.
fn new_workdir(spec: &SpawnSpec) -> io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    // Private: other users must not read or plant files in a worker's directory.
    builder
        .prefix(crate::guard::workdir_prefix())
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    let workdir = match &spec.workdir_parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }?;
    // The worker's own: it runs as `--user`'s uid and must be able to use it.
    if let Some(id) = &spec.user {
        std::os::unix::fs::chown(workdir.path(), Some(id.uid), Some(id.gid))?;
    }
    Ok(workdir)
}

/// `dir` back, for the next process of the same exec slot, if it is as `new_workdir`
/// made it: a directory (not a link), mode 0700, owned by the workers' uid (`user`'s, or
/// jobsup's own), and empty. Otherwise `Err(dir)`, to be removed. Only for a directory whose processes are
/// all gone, so that nothing changes it after the look.
///
/// Why: making and removing a directory costs an exec job more than the rest of its
/// setup's file system work together (on ext4, a journal entry each, and a block freed,
/// with a discard where the file system is mounted so); most jobs leave theirs empty.
pub fn reusable_workdir(
    dir: tempfile::TempDir,
    user: Option<&Identity>,
) -> Result<tempfile::TempDir, tempfile::TempDir> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let owner = user.map_or_else(|| nix::unistd::getuid().as_raw(), |id| id.uid);
    // One open that refuses a link in its place, then questions to that fd: no second
    // walk of the path, no allocation (this runs on the runtime's thread after every job).
    let reusable = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir.path())
        .is_ok_and(|opened| {
            opened
                .metadata()
                .is_ok_and(|m| m.is_dir() && m.mode() & 0o7777 == 0o700 && m.uid() == owner)
                && holds_nothing(opened.as_fd())
        });
    if reusable {
        Ok(dir)
    } else {
        Err(dir)
    }
}

/// Whether the directory open at `dir` lists nothing but `.` and `..` (read to its end:
/// one batch of entries need not be all of them). False where it cannot be read.
fn holds_nothing(dir: BorrowedFd<'_>) -> bool {
    // `struct linux_dirent64`: inode (8 bytes), offset (8), record length (2), type (1),
    // then the name, NUL-terminated.
    const NAME_AT: usize = 19;
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into the live buffer.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let Ok(n) = usize::try_from(n) else {
            return false;
        };
        if n == 0 {
            return true;
        }
        let mut at = 0;
        while at + NAME_AT < n {
            let len = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            // A record too short to hold a name is not one the kernel writes: not empty,
            // rather than a slice out of bounds or a loop that never advances.
            if len <= NAME_AT {
                return false;
            }
            let name = &buf[at + NAME_AT..(at + len).min(n)];
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if name != b"." && name != b".." {
                return false;
            }
            at += len;
        }
    }
}

/// Where `clone3` may create a worker inside its cgroup v2 directory (`CLONE_INTO_CGROUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloneInto {
    /// Every directory.
    Any,
    /// Only one no `cgroup.kill` has been written to. The kernel this was written on
    /// (6.18) compares, for a child created in a cgroup, the target cgroup's count of
    /// kills with the one it read *from the parent's cgroup* before it resolved the
    /// target (`cgroup_css_set_fork` reads `kill_seq` while `kargs->cgrp` is not yet
    /// set), and kills the child before its first instruction when they differ. An exec
    /// slot's directory is killed after every job, so its later processes join it between
    /// clone and exec instead, as on kernels without `clone3`.
    Fresh,
    /// None (the kernel kills even a child created in a fresh cgroup, or the probe could
    /// not be made).
    Never,
}

impl CloneInto {
    fn allows(self, cgroup: &crate::cgroup::WorkerCgroup) -> bool {
        match self {
            CloneInto::Any => true,
            CloneInto::Fresh => cgroup.v2_fresh(),
            CloneInto::Never => false,
        }
    }
}

/// What this kernel does with a child `clone3` creates in a cgroup, probed once (on the
/// first spawn that could use it) in a scratch cgroup, fresh and then killed.
fn clone_into(
    cgroups: &crate::cgroup::Cgroups,
    reaper: &Reaper,
    stack: &mut launch::Stack,
) -> CloneInto {
    static PROBED: std::sync::OnceLock<CloneInto> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let (fresh, killed) = cgroups.probe_clone_into(|fd| {
            let since = std::time::Instant::now();
            let (pid, runs) = launch::child_runs_in(fd, stack);
            if let Some(pid) = pid {
                // Its exit status is the reaper's to collect, and nobody's to wait for.
                drop(reaper.register(pid, since));
            }
            runs
        });
        let verdict = match (fresh, killed) {
            (true, true) => CloneInto::Any,
            (true, false) => CloneInto::Fresh,
            _ => CloneInto::Never,
        };
        match verdict {
            CloneInto::Any => tracing::debug!(
                "workers are created in their cgroup (clone3 with CLONE_INTO_CGROUP)"
            ),
            CloneInto::Fresh => tracing::debug!(
                "workers are created in their cgroup (clone3 with CLONE_INTO_CGROUP), a fresh one after a kill: this kernel kills a child created in a cgroup that was killed"
            ),
            CloneInto::Never => tracing::debug!(
                "workers join their cgroup between clone and exec (clone3 with CLONE_INTO_CGROUP does not work here)"
            ),
        }
        verdict
    })
}

/// Everything the child's setup needs, made before the clone: the child may share
/// jobsup's memory and must not allocate.
struct ChildPlan {
    /// What `getppid` must say while jobsup is there: its pid, or 0 for a child born in
    /// a holder's pid namespace (its parent is outside).
    parent: i32,
    /// A child born in its slot's holder's pid namespace, with the holder's mount
    /// namespace where it made one (see `crate::holder`).
    joined: Option<Option<RawFd>>,
    /// What goes on fds 0, 1 and 2 and, in native mode, 3 and 4 (the protocol pipes).
    fds: [RawFd; 5],
    /// How many of `fds` are placed: 3, or 5 in native mode.
    placed: usize,
    cwd: CString,
    limits: Limits,
    /// The `RLIMIT_NOFILE` jobsup started with, where it raised its own: the worker's,
    /// unless `--open-files` sets one.
    started_with_open_files: Option<(u64, u64)>,
    /// `cgroup.procs` of every cgroup the child joins...
    cgroup_procs: Vec<CString>,
    /// ...or only those of its cgroup v1 hierarchies, when it was created in its v2 one.
    cgroup_procs_v1: Vec<CString>,
    /// A cgroup carries a limit: not joining it is an error.
    cgroup_required: bool,
    /// Namespaces to enter (`--isolate`).
    isolation: Option<crate::isolate::Prepared>,
    /// This worker's mounts under `--isolate fs`.
    fs: Option<crate::mounts::Plan>,
    /// How the fd table is gone over (all but the tests: `close_range` first).
    fd_method: FdMethod,
    /// Who the worker becomes (`--user`).
    identity: Option<Identity>,
    /// Its scheduling class and nice value.
    priority: crate::priority::WorkerPriority,
    /// The highest capability this kernel knows.
    cap_last: libc::c_int,
    /// Whether the child may empty its bounding set (it has `CAP_SETPCAP` there).
    drop_bounding: bool,
}

/// The highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`), read
/// once.
/// Empties the calling (spawner) thread's capability bounding set, where it may
/// (`CAP_SETPCAP`); whether it did. The bounding set only limits what an exec can grant,
/// and a spawner thread never execs: it keeps every capability it has, and each child it
/// clones starts with the set empty, as step 6 of `child_setup` would leave it. Done once
/// here, that step is skipped for children that make no user namespace: per spawn it was
/// one `prctl` per capability, each replacing the credentials (about 3% of an exec job's
/// CPU time, measured).
fn empty_own_bounding_set() -> bool {
    let Ok(last) = cap_last() else { return false };
    may_set_pcap() && empty_bounding_set(last) == 0
}

/// Drops every capability up to `last` from the calling thread's bounding set: 0, or -1
/// (errno set) at the first refusal. Async-signal-safe, for `child_setup` too.
fn empty_bounding_set(last: libc::c_int) -> libc::c_int {
    for cap in 0..=last {
        // SAFETY: prctl on integers, for the calling thread only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return -1;
        }
    }
    0
}

fn cap_last() -> io::Result<libc::c_int> {
    static LAST: std::sync::OnceLock<Result<libc::c_int, String>> = std::sync::OnceLock::new();
    LAST.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .map_err(|e| format!("cannot read /proc/sys/kernel/cap_last_cap: {e}"))?;
        text.trim()
            .parse()
            .map_err(|e| format!("/proc/sys/kernel/cap_last_cap: {e}: {text:?}"))
    })
    .clone()
    .map_err(io::Error::other)
}

/// Whether jobsup itself has `CAP_SETPCAP`, which emptying a bounding set takes (a child
/// that enters a user namespace has it there, whoever jobsup is).
fn may_set_pcap() -> bool {
    const CAP_SETPCAP: u32 = 8;
    static MAY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MAY.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(caps.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << CAP_SETPCAP) != 0)
    })
}

/// `capset`'s header (`struct __user_cap_header_struct`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One of `capset`'s two data words (`struct __user_cap_data_struct`).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, in two data words.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The return code of a system call, or its errno at `stage`.
fn at(stage: Stage, rc: libc::c_int) -> Result<libc::c_int, StageError> {
    if rc < 0 {
        Err(StageError::last(stage))
    } else {
        Ok(rc)
    }
}

/// SIGKILL when the parent dies (see steps 2 and 9 of [`child_setup`]).
fn arm_parent_death() -> Result<(), StageError> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; async-signal-safe, no memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    at(Stage::ParentDeath, rc).map(|_| ())
}

/// The worker's setup between clone and exec: one routine, in this order, each step where
/// it is for the reason given. Before it, `launch` reset every signal to its default
/// disposition and unblocked them all; after it, `launch` execs the processor (which
/// closes every fd the fd table step marked). A failure ends the child with 127 and is
/// reported to jobsup with its [`Stage`].
///
/// Under a pid namespace the routine is split at step 4 ([`Part`]): its init (PID 1, the
/// process jobsup cloned) runs steps 1 to 4 and stays behind; its worker, which the init
/// clones, runs the rest and execs. Otherwise one child runs it all ([`Part::Whole`]).
///
/// The order follows nsjail's (`containProc`): namespaces, then the fd table, then the
/// user and the capabilities, then the limits, then `no_new_privs`, then the parent-death
/// signal again, then exec.
///
/// # Safety
/// Only in the child, between clone and exec (`launch::launch`'s contract: it may share
/// jobsup's memory, so it makes async-signal-safe calls only and never allocates).
unsafe fn child_setup(plan: &ChildPlan, born: Born, part: Part) -> Result<(), StageError> {
    // SAFETY: system calls on integers, on C strings and buffers prepared before the
    // clone, and on fds this child owns (its own copy of the table).
    unsafe {
        if part != Part::Worker {
            // 1. Session. A session and process group of its own, which it leads: the
            //    hard kill (SIGKILL to the group) reaches whatever it starts there, and
            //    the signals of jobsup's terminal do not. An init's worker is in its group.
            at(Stage::Session, libc::setsid())?;

            // 2. Parent-death signal, armed at once: a jobsup that dies while the child
            //    sets up must not leave it behind. jobsup may have died before it was
            //    armed, and then nobody would send it: check. (An init's parent is outside
            //    its namespace, where `getppid` says 0: `launch` checks it another way.)
            arm_parent_death()?;
            if part == Part::Whole && libc::getppid() != plan.parent {
                libc::_exit(1);
            }

            // 3. Cgroups, other than the one `clone3` created the child in. Before the
            //    namespaces, as a user namespace takes the right to write them away, a
            //    cgroup namespace is rooted where the child is when it makes one, and the
            //    init and its worker must both be inside. A kill-only cgroup is best
            //    effort (the process group, the tree walk and the guard back it up); one
            //    that carries a limit is not.
            let procs = if born.in_cgroup {
                &plan.cgroup_procs_v1
            } else {
                &plan.cgroup_procs
            };
            let joined = crate::cgroup::WorkerCgroup::join(procs);
            if plan.cgroup_required {
                joined.map_err(|e| StageError::of(Stage::Cgroup, &e))?;
            }
        }

        // 4. Namespaces. An init was cloned into its pid (and user, net) namespace: it maps
        //    the user, and makes its mount and cgroup namespaces. A child without an init
        //    unshares its own (`--isolate net` where no pid namespace can be had). Early,
        //    so that every later step applies inside them.
        if let Some(p) = &plan.isolation {
            crate::isolate::enter(p, part, plan.fs.as_ref(), plan.joined)
                .map_err(|e| StageError::of(Stage::Namespaces, &e))?;
        }
        if part == Part::Init {
            return Ok(());
        }

        // 5. The fd table: exactly 0, 1, 2 (and 3, 4 in native mode), nothing else. Every
        //    other fd (what jobsup inherited from its own parent, other workers' pipes,
        //    this spawn's copies) is marked close-on-exec, not closed: the report pipe
        //    must keep working until the exec, which then closes them all. After the
        //    namespaces (the shim has its own copy of the table to close); before the
        //    limits, as an `RLIMIT_NOFILE` below the numbers jobsup uses would make these
        //    moves fail.
        let n = plan.placed;
        let mut from = plan.fds;
        for fd in &mut from[..n] {
            // A source below `n` could be overwritten by another's placing: move it up.
            if *fd < n as RawFd {
                *fd = at(
                    Stage::Fds,
                    libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, n as RawFd),
                )?;
            }
        }
        for (target, &fd) in from[..n].iter().enumerate() {
            // dup2 leaves the new descriptor without close-on-exec: the process keeps it.
            at(Stage::Fds, libc::dup2(fd, target as RawFd))?;
        }
        launch::cloexec_from(n as RawFd, plan.fd_method)
            .map_err(|e| StageError::of(Stage::Fds, &e))?;

        // 6. The capability bounding set, emptied: no exec can ever grant one again.
        //    Before the change of user, as it takes CAP_SETPCAP, which a setuid from root
        //    clears; after the namespaces, as a user namespace is where an unprivileged
        //    jobsup's child has it. Where it has it nowhere (an unprivileged jobsup
        //    without `--isolate`) the set cannot be dropped, and `no_new_privs` (step 11)
        //    keeps exec from granting from it.
        if plan.drop_bounding {
            at(Stage::Capabilities, empty_bounding_set(plan.cap_last))?;
        }

        // 7. The user and groups of `--user`: supplementary groups, then the group, then
        //    the user, as each but the last needs the privilege the last gives up. After
        //    the cgroups and namespaces, which need root; before the directory, so that it
        //    is entered as the processor.
        if let Some(id) = &plan.identity {
            at(
                Stage::Identity,
                libc::setgroups(id.groups.len(), id.groups.as_ptr()),
            )?;
            at(Stage::Identity, libc::setgid(id.gid))?;
            at(Stage::Identity, libc::setuid(id.uid))?;
        }

        // 8. Its working directory. After the namespaces and the user, so that the check
        //    is made with the credentials the processor will have.
        at(Stage::Directory, libc::chdir(plan.cwd.as_ptr()))?;

        // 9. Resource limits, inherited by everything the worker starts. After the fd
        //    table (`RLIMIT_NOFILE`, see above) and after the cgroups and namespaces, which
        //    open files and fork; no core dumps, as a core would take the worker's
        //    memory (and maybe secrets) to disk.
        let set = |resource, cur: u64, max: u64| -> Result<(), StageError> {
            let limit = libc::rlimit {
                rlim_cur: cur as libc::rlim_t,
                rlim_max: max as libc::rlim_t,
            };
            at(Stage::Limits, libc::setrlimit(resource, &limit)).map(|_| ())
        };
        set(libc::RLIMIT_CORE, 0, 0)?;
        if let Some(bytes) = plan.limits.memory {
            set(libc::RLIMIT_AS, bytes, bytes)?;
        }
        if let Some(n) = plan.limits.open_files {
            set(libc::RLIMIT_NOFILE, n, n)?;
        } else if let Some((soft, hard)) = plan.started_with_open_files {
            set(libc::RLIMIT_NOFILE, soft, hard)?;
        }
        // The hard limit a second later: SIGXCPU first, which a process may catch to
        // clean up; SIGKILL if it does not stop.
        if let Some(secs) = plan.limits.cpu_secs {
            set(libc::RLIMIT_CPU, secs, secs + 1)?;
        }

        // 9a. Its scheduling class and nice value (`crate::priority`): below jobsup's.
        at(Stage::Priority, plan.priority.apply())?;

        // 10. Every other capability set emptied: ambient, then effective, permitted and
        //     inheritable. The processor starts with no privilege at all, root or not,
        //     in a user namespace or not (a setuid from root has cleared them already;
        //     this holds without `--user` too). After the limits, the last step that may
        //     have used one. A kernel without ambient capabilities (before 4.3) has none
        //     to clear.
        let rc = libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        if rc < 0 && *libc::__errno_location() != libc::EINVAL {
            return Err(StageError::last(Stage::Capabilities));
        }
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        at(
            Stage::Capabilities,
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ) as libc::c_int,
        )?;

        // 11. no_new_privs: nothing the worker runs can gain privileges (setuid binaries,
        //     file capabilities). Last of the restrictions, as nothing above needs it and
        //     all that follows is the exec, where it takes effect.
        at(
            Stage::Privileges,
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;

        // 12. The parent-death signal again, after `--isolate` or `--user` changed who
        //     this is: a change of credentials (a user namespace, setuid) clears it. Then
        //     the check again: jobsup may have died before it was armed. Otherwise nothing
        //     changed since step 2, which still holds. An init's worker needs neither:
        //     when its init dies, the kernel kills everything in the namespace.
        if part == Part::Whole && (plan.isolation.is_some() || plan.identity.is_some()) {
            arm_parent_death()?;
            if libc::getppid() != plan.parent {
                libc::_exit(1);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .expect("a temporary directory")
    }

    #[test]
    fn an_empty_private_directory_is_reused() {
        assert!(reusable_workdir(private_dir(), None).is_ok());
    }

    #[test]
    fn a_directory_with_anything_in_it_is_not_reused() {
        let dir = private_dir();
        std::fs::write(dir.path().join("left"), "x").unwrap();
        assert!(reusable_workdir(dir, None).is_err());
        let dir = private_dir();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(reusable_workdir(dir, None).is_err());
        // More entries than one read of the listing returns, the last one not removed.
        let dir = private_dir();
        for i in 0..200 {
            let name = dir.path().join(format!("{i:0>100}"));
            std::fs::write(&name, "").unwrap();
            if i < 199 {
                std::fs::remove_file(&name).unwrap();
            }
        }
        assert!(reusable_workdir(dir, None).is_err());
    }

    #[test]
    fn a_directory_not_as_made_is_not_reused() {
        let dir = private_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(reusable_workdir(dir, None).is_err());
        // A link in the directory's place, to an empty private directory.
        let elsewhere = private_dir();
        let dir = private_dir();
        std::fs::remove_dir(dir.path()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path()).unwrap();
        let refused = reusable_workdir(dir, None).expect_err("a link is not the directory");
        std::fs::remove_file(refused.path()).unwrap();
        let _ = refused.keep();
    }
}
