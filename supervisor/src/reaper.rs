//! The one component that calls `waitpid`.
//!
//! jobsup is a child subreaper, so it inherits every orphaned descendant of its workers. If
//! two parties called `waitpid(-1)`, one would steal the other's exit statuses, so exactly
//! one thread reaps: it waits for SIGCHLD, collects every status with `WNOHANG`, and routes
//! each worker's status to the task that registered it. Statuses of pids nobody registered
//! (inherited orphans) are reaped and dropped.
//!
//! The registry lock is held across `waitpid` and, by the spawner, across `fork`/`exec` and
//! the registration of the new pid. That closes two races: a child that exits before it is
//! registered, and `std::process::Command::spawn` reaping a child whose `exec` failed (it
//! must not find its status already stolen).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
        }
    }
}

/// The conventional name of a signal number, for messages.
pub fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}

type Registry = HashMap<i32, oneshot::Sender<Exit>>;

/// A handle on the reaper thread's registry.
#[derive(Clone)]
pub struct Reaper {
    registry: Arc<Mutex<Registry>>,
}

/// Proof that the registry is locked: while it lives, no status can be collected, so a
/// child can be spawned and registered atomically.
pub struct Registration<'a> {
    guard: MutexGuard<'a, Registry>,
}

impl Registration<'_> {
    /// Routes `pid`'s exit status to the returned receiver.
    pub fn register(&mut self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        self.guard.insert(pid, tx);
        rx
    }
}

impl Reaper {
    /// Makes this process a child subreaper and starts the reaper thread. Call before any
    /// child is spawned.
    pub fn start() -> std::io::Result<Reaper> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut signals = Signals::new([SIGCHLD])?;
        let reaper = Reaper {
            registry: Arc::new(Mutex::new(HashMap::new())),
        };
        let registry = Arc::clone(&reaper.registry);
        std::thread::Builder::new()
            .name("jobsup-reaper".into())
            .spawn(move || {
                // One pass before the first signal, in case a child already exited.
                reap_all(&registry);
                for _ in signals.forever() {
                    reap_all(&registry);
                }
            })?;
        Ok(reaper)
    }

    /// Locks the registry for a spawn-and-register.
    pub fn lock(&self) -> Registration<'_> {
        Registration {
            guard: self.registry.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

fn reap_all(registry: &Mutex<Registry>) {
    loop {
        let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("waitpid failed: {e}");
                return;
            }
        };
        match map.remove(&pid.as_raw()) {
            // The owner may have gone already; nothing else to tell.
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => tracing::debug!(pid = pid.as_raw(), %exit, "reaped an inherited orphan"),
        }
    }
}

/// Kills every child of this process that is still alive (inherited orphans included), so
/// that jobsup never exits with live children. The reaper collects them.
pub fn kill_remaining_children() {
    for pid in children_of_self() {
        // "Already gone" is success: ESRCH is ignored.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Pids of this process's live children, from `/proc/self/task/*/children`.
pub fn children_of_self() -> Vec<i32> {
    children_of("self")
}

/// Every descendant of `pid` (not `pid` itself), walking `/proc/PID/task/*/children`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for child in children_of(&p.to_string()) {
            // A pid cannot be its own ancestor, but /proc is read without a snapshot.
            if !found.contains(&child) && child != pid {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// The children jobsup adopted (as subreaper) from worker `worker`, with their own
/// descendants: processes whose environment still names the worker.
pub fn adopted_from(worker: u64) -> Vec<i32> {
    let tag = format!("JOBSUP_WORKER_ID={worker}");
    let mut pids = Vec::new();
    for child in children_of_self() {
        let Ok(environ) = std::fs::read(format!("/proc/{child}/environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|var| var == tag.as_bytes()) {
            pids.extend(descendants(child));
            pids.push(child);
        }
    }
    pids
}

/// SIGKILL to each pid; "already gone" is success.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn children_of(pid: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}
