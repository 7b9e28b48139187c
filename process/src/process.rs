//! A worker process as its owner task sees it: a process group to signal and an exit
//! status to await. [`Process::end`] is the one kill-wait-reap sequence of jobsup.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::cgroup::{Hits, WorkerCgroup};
use crate::reaper::Exit;
use crate::sandbox::signal_group;

/// A spawned worker process, which leads its own process group.
pub struct Process {
    pid: i32,
    /// The worker serial its environment carries (`JOBSUP_WORKER_ID`), by which escaped
    /// descendants are recognised.
    worker: u64,
    /// Its cgroup, where the machine offers them: the kill that nothing escapes.
    cgroup: Option<WorkerCgroup>,
    /// Leave the cgroup directories for the next process of the same worker slot (exec
    /// mode starts one per job; making and removing them each time costs ~0.2 ms).
    keep_cgroup: bool,
    exit_rx: Option<oneshot::Receiver<Exit>>,
    exit: Option<Exit>,
    /// The cgroup limits the kernel enforced on its tree (known once [`Process::end`] has
    /// run).
    limits_hit: Hits,
}

impl Process {
    /// Wraps a process whose exit status the reaper routes to `exit_rx`.
    pub fn new(
        pid: i32,
        worker: u64,
        cgroup: Option<WorkerCgroup>,
        exit_rx: oneshot::Receiver<Exit>,
        keep_cgroup: bool,
    ) -> Process {
        Process {
            pid,
            worker,
            cgroup,
            keep_cgroup,
            exit_rx: Some(exit_rx),
            exit: None,
            limits_hit: Hits::default(),
        }
    }

    /// Its pid (and process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How it ended, once the reaper has said so.
    pub fn exit(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            if let Some(rx) = &mut self.exit_rx {
                if let Ok(exit) = rx.try_recv() {
                    self.exit = Some(exit);
                    self.exit_rx = None;
                }
            }
        }
        self.exit
    }

    /// Resolves once the process has exited and been reaped. Cancel-safe.
    pub async fn exited(&mut self) -> Exit {
        if let Some(exit) = self.exit {
            return exit;
        }
        let exit = match self.exit_rx.as_mut() {
            // The reaper only drops a sender after sending; a closed channel is unreachable
            // in practice, and the process is then certainly not ours any more.
            Some(rx) => rx.await.unwrap_or(Exit::Signal(libc::SIGKILL)),
            None => Exit::Signal(libc::SIGKILL),
        };
        self.exit = Some(exit);
        self.exit_rx = None;
        exit
    }

    /// A polite signal (if any) to the whole group, followed by SIGCONT so that a stopped
    /// process can act on it.
    pub fn ask(&self, sig: Option<Signal>) {
        if let Some(sig) = sig {
            signal_group(self.pid, sig);
        }
        signal_group(self.pid, Signal::SIGCONT);
    }

    /// SIGKILL to the whole group, and to every descendant that left it (a `setsid`
    /// daemon, say): found by walking the process tree while the worker is still there.
    pub fn kill(&self) {
        let escaped = crate::reaper::descendants(self.pid);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        signal_group(self.pid, Signal::SIGKILL);
        crate::reaper::kill_all(&escaped);
    }

    /// Lets the process exit by itself for up to `grace`, then kills its group, waits for
    /// it to be reaped, and kills whatever is left of the group. Returns how it ended and
    /// whether jobsup had to kill it.
    pub async fn end(&mut self, grace: Duration) -> (Exit, bool) {
        let mut killed = false;
        if self.exit().is_none() && tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.kill();
            killed = true;
        }
        let exit = self.exited().await;
        // Group members the leader left behind die with it, and so do descendants that
        // escaped the group and were handed to jobsup (the subreaper) when their parent
        // died: they still carry the worker's serial in their environment.
        // (The tree is not walked from the reaped pid: it may already name someone else.)
        signal_group(self.pid, Signal::SIGKILL);
        crate::reaper::kill_all(&crate::reaper::adopted_from(self.worker));
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
            self.limits_hit = cgroup.limits_hit();
            // Kept ones go at the end of the run.
            if !self.keep_cgroup {
                cgroup.remove();
            }
        }
        (exit, killed)
    }

    /// Whether its memory limit is a cgroup's (rather than `RLIMIT_AS`).
    pub fn memory_in_cgroup(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.limits_memory())
    }

    /// The cgroup limits the kernel enforced on its tree. Known after [`Process::end`].
    pub fn limits_hit(&self) -> Hits {
        self.limits_hit
    }
}

impl Drop for Process {
    /// Kill-on-drop: a process whose owner went away without ending it (a task that
    /// failed, say) dies with its group rather than running on unsupervised.
    fn drop(&mut self) {
        if self.exit().is_none() {
            self.kill();
        }
    }
}
