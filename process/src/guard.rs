//! The guard: a small process that outlives a killed jobsup just long enough to kill what
//! its workers left behind.
//!
//! Workers die with jobsup through their parent-death signal, but a worker's descendants
//! do not: a child in the worker's group, or one that called `setsid`, would be handed to
//! init and run on. So at start jobsup re-executes itself as `jobsup-guard` (a hidden
//! subcommand), in a session of its own, with the read end of a pipe whose write end only
//! jobsup holds. When jobsup ends, however it ends (`kill -9` included), the pipe reads
//! end-of-file and the guard sweeps:
//!
//! - every process in jobsup's cgroups (`cgroup.kill`, which nothing escapes);
//! - every process whose environment carries this run's [`TAG_VAR`] (which every worker
//!   gets, and its descendants inherit unless they clear their environment);
//! - where there are no cgroups, every process it last saw in jobsup's tree: while jobsup
//!   runs, the guard walks that tree every [`WATCH_EVERY`] and remembers each pid with its
//!   start time (jobsup is a subreaper, so escaped descendants are in its tree too);
//!
//! and then removes the cgroups. After a normal end there is nothing left to find, and the
//! sweep is one quick pass.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The variable that marks every process of this run's workers.
pub const TAG_VAR: &str = "JOBSUP_SUPERVISOR";

/// How often the guard walks jobsup's process tree when there are no cgroups.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The name the guard runs under (its `argv[0]`), by which it is told from the workers.
pub const NAME: &str = "jobsup-guard";

/// What the hidden `__guard` subcommand takes.
#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// The pid of the jobsup it guards.
    #[arg(long)]
    pub parent: i32,
    /// The value of [`TAG_VAR`] in that jobsup's workers.
    #[arg(long)]
    pub tag: String,
    /// jobsup's cgroup directories.
    #[arg(long)]
    pub cgroup: Vec<PathBuf>,
}

/// This run's tag: jobsup's pid and start time, which no other process ever shares.
pub fn tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let me = std::process::id();
        let start = start_time(me as i32).map_or(String::new(), |t| t.to_string());
        format!("{me}.{start}")
    })
}

/// jobsup's end of the pipe. Dropping it (or jobsup dying) sets the guard off.
pub struct Guard {
    _pipe: std::process::ChildStdin,
}

/// Starts the guard for this run. `cgroups` are the directories it removes at the end.
pub fn start(cgroups: &[PathBuf]) -> io::Result<Guard> {
    // The running binary itself, even if its file was replaced or removed since.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(NAME)
        .arg("__guard")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--tag")
        .arg(tag());
    for c in cgroups {
        cmd.arg(OsString::from("--cgroup")).arg(c);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe. A session of its own keeps the guard out of the
    // terminal's signals (a Ctrl-C is for jobsup, which then ends normally).
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pipe = child.stdin.take().expect("stdin is piped");
    // The reaper (started after this) collects its exit status.
    drop(child);
    Ok(Guard { _pipe: pipe })
}

/// The guard's life: wait for jobsup to end, then sweep.
pub fn serve(args: &GuardArgs) -> u8 {
    // Its own name in `ps`, `top` and for `killall jobsup`, which should leave it be.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"jobsup-guard".as_ptr(), 0, 0, 0);
    }
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        // SAFETY: setting a signal's disposition to SIG_IGN.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    // With cgroups, the cgroup kill finds every process; without, the guard keeps watch.
    let mut seen = Seen::default();
    let watch = args.cgroup.is_empty().then_some(&mut seen);
    wait_for_end(args.parent, watch);
    sweep(&args.tag, &args.cgroup, &seen);
    0
}

/// Processes seen in jobsup's tree, with their start times (so that a recycled pid is not
/// mistaken for one of them).
#[derive(Default)]
struct Seen {
    pids: std::collections::HashMap<i32, u64>,
    rounds: u32,
}

impl Seen {
    fn watch(&mut self, parent: i32) {
        // Forget the dead now and then, so that a long run of short-lived processes does
        // not grow the map; between times only new pids cost a read.
        self.rounds = self.rounds.wrapping_add(1);
        if self.rounds.is_multiple_of(64) {
            self.pids
                .retain(|&pid, start| start_time(pid) == Some(*start));
        }
        let me = std::process::id() as i32;
        for pid in crate::reaper::descendants(parent) {
            if pid == me || self.pids.contains_key(&pid) {
                continue;
            }
            if let Some(start) = start_time(pid) {
                self.pids.insert(pid, start);
            }
        }
    }

    /// Those still running as the same process.
    fn alive(&self) -> Vec<i32> {
        self.pids
            .iter()
            .filter(|(&pid, &start)| start_time(pid) == Some(start))
            .map(|(&pid, _)| pid)
            .collect()
    }
}

/// A process's start time (clock ticks since boot), from `/proc/PID/stat`; `None` once it
/// is gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` begins at field 3 (state); starttime is field 22.
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Returns once jobsup has gone: its pipe reads end-of-file, or (should some process hold a
/// copy of the write end) the guard has a new parent.
fn wait_for_end(parent: i32, mut watch: Option<&mut Seen>) {
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        let mut fds = [libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(seen) = watch.as_deref_mut() {
            seen.watch(parent);
        }
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, WATCH_EVERY.as_millis() as i32) };
        if ready > 0 && !matches!(stdin.read(&mut buf), Ok(n) if n > 0) {
            return;
        }
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != parent {
            return;
        }
    }
}

/// Kills every process of the run until none is left (or a bound is reached), then
/// removes the cgroups.
fn sweep(tag: &str, cgroups: &[PathBuf], seen: &Seen) {
    let needle = format!("{TAG_VAR}={tag}");
    for _ in 0..100 {
        let in_cgroups: usize = cgroups.iter().map(|b| crate::cgroup::kill_under(b)).sum();
        let mut left = tagged_processes(needle.as_bytes());
        left.extend(seen.alive());
        if left.is_empty() && in_cgroups == 0 {
            break;
        }
        crate::reaper::kill_all(&left);
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::cgroup::remove_all(cgroups);
}

/// Live processes whose environment contains `needle` (`NAME=value`). Zombies have no
/// readable environment, so a killed process is not found twice.
pub fn tagged_processes(needle: &[u8]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| crate::reaper::environ_has(pid, needle))
        .collect()
}
