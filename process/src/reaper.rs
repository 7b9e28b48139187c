//! The one component that calls `waitpid`.
//!
//! jobsup is a child subreaper, so it inherits every orphaned descendant of its workers. If
//! two parties called `waitpid(-1)`, one would steal the other's exit statuses, so exactly
//! one thread reaps: it waits for SIGCHLD, collects every status with `WNOHANG`, and routes
//! each worker's status to the task that registered it.
//!
//! A child may exit before its spawner has registered it. Its status is then parked,
//! stamped with when it was reaped, and handed over at registration. The spawner takes a
//! timestamp before it clones; a parked status reaped before that cannot be the new
//! child's, since a pid is only reused once its zombie has been reaped. So the lock is
//! never held across a clone, and several threads can spawn at once. Statuses nobody
//! claims (inherited orphans) are dropped after a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Who waits for which pid, and the statuses that came before their owner.
#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    parked: HashMap<i32, (Exit, Instant)>,
    /// The reaper thread failed: registrations are answered with a closed channel.
    dead: bool,
}

/// How long an unclaimed status is kept: far longer than a spawn takes to register.
const PARKED_FOR: Duration = Duration::from_secs(30);

/// A handle on the reaper thread's registry.
#[derive(Clone)]
pub struct Reaper {
    registry: Arc<Mutex<Registry>>,
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
            registry: Arc::new(Mutex::new(Registry::default())),
        };
        let registry = Arc::clone(&reaper.registry);
        std::thread::Builder::new()
            .name("jobsup-reaper".into())
            .spawn(move || {
                let reaping = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    // One pass before the first signal, in case a child already exited.
                    reap_all(&registry);
                    for _ in signals.forever() {
                        reap_all(&registry);
                    }
                }));
                if reaping.is_err() {
                    // The panic hook has told the pool. Nobody may wait for a status that
                    // will never come: dropping the senders tells every waiter its process
                    // is gone.
                    let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
                    registry.dead = true;
                    registry.waiting.clear();
                }
            })?;
        Ok(reaper)
    }

    /// Routes the exit status of `pid`, a child cloned after `since`, to the returned
    /// receiver, even if it has already been reaped.
    pub fn register(&self, pid: i32, since: Instant) -> oneshot::Receiver<Exit> {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(pid, since)
    }
}

impl Registry {
    fn register(&mut self, pid: i32, since: Instant) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        if self.dead {
            return rx;
        }
        match self.parked.remove(&pid) {
            Some((exit, reaped)) if reaped >= since => {
                let _ = tx.send(exit);
            }
            // None yet, or an earlier process's with the same pid.
            _ => {
                self.waiting.insert(pid, tx);
            }
        }
        rx
    }

    /// Hands a collected status to its owner, or parks it until one registers.
    fn reaped(&mut self, pid: i32, exit: Exit, now: Instant) {
        match self.waiting.remove(&pid) {
            // The owner may have gone already; nothing else to tell.
            Some(tx) => {
                let _ = tx.send(exit);
            }
            None => {
                tracing::trace!(pid, %exit, "reaped a process nobody has registered (yet)");
                if self.parked.len() >= 64 {
                    self.parked
                        .retain(|_, (_, at)| now.duration_since(*at) < PARKED_FOR);
                }
                self.parked.insert(pid, (exit, now));
            }
        }
    }
}

fn reap_all(registry: &Mutex<Registry>) {
    crate::fault::fault("reaper");
    loop {
        let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("waitpid failed: {e}");
                return;
            }
        };
        registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reaped(pid, exit, Instant::now());
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
        if environ_has(child, tag.as_bytes()) {
            pids.extend(descendants(child));
            pids.push(child);
        }
    }
    pids
}

/// Whether `pid`'s environment holds exactly `var` (`NAME=value`). A zombie's (or another
/// user's) environment cannot be read: false.
pub fn environ_has(pid: i32, var: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|&b| b == 0).any(|v| v == var))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reaped_before_registration_is_handed_over() {
        let mut r = Registry::default();
        let since = Instant::now();
        r.reaped(42, Exit::Code(3), Instant::now());
        let mut rx = r.register(42, since);
        assert_eq!(rx.try_recv(), Ok(Exit::Code(3)));
        assert!(r.parked.is_empty() && r.waiting.is_empty());
    }

    #[test]
    fn a_status_reaped_before_the_clone_belongs_to_an_earlier_process() {
        let mut r = Registry::default();
        // An orphan with pid 42 was reaped; then a new child got the recycled pid.
        r.reaped(42, Exit::Signal(9), Instant::now());
        let since = Instant::now() + Duration::from_millis(1);
        let mut rx = r.register(42, since);
        assert!(
            rx.try_recv().is_err(),
            "the orphan's status is not the child's"
        );
        r.reaped(42, Exit::Code(0), since + Duration::from_millis(1));
        assert_eq!(rx.try_recv(), Ok(Exit::Code(0)));
    }

    #[test]
    fn unclaimed_statuses_do_not_pile_up() {
        let mut r = Registry::default();
        let start = Instant::now();
        for pid in 0..1000 {
            r.reaped(pid, Exit::Code(0), start + PARKED_FOR * pid as u32 / 100);
        }
        assert!(r.parked.len() < 200, "{} parked", r.parked.len());
    }
}
