//! Dropping what a finished worker leaves behind, on threads of their own.
//!
//! An exec slot starts its next process as soon as the last one's record is decided; a
//! directory walk and `rmdir` on a journaling filesystem (a few hundred microseconds) in
//! between would be paid by every job. So would a worker's mount namespace, whose teardown
//! waits for an RCU grace period (see `isolate::hold_mount_namespace`), which under CPU load
//! can take tens of milliseconds. What a worker leaves goes to these threads instead,
//! which drop it a moment later, and [`finish`] waits (bounded) for the queue to empty
//! before jobsup exits, so that a run leaves no directory of its own behind. Should jobsup
//! be killed first, the guard removes what is left, as it does for a killed run's workers
//! (and the kernel closes the namespaces' fds).

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jobsup_process::helpers::Helpers;

/// Items handed over and not yet dropped.
struct Pending {
    count: Mutex<usize>,
    done: Condvar,
}

static PENDING: Pending = Pending {
    count: Mutex::new(0),
    done: Condvar::new(),
};

/// One item fewer pending, when dropped: after its item's drop, even one that panicked.
struct Dropped;

impl Drop for Dropped {
    fn drop(&mut self) {
        let mut n = PENDING.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        PENDING.done.notify_all();
    }
}

/// The threads that drop leftovers: several, because a namespace's drop sleeps in the
/// kernel for a grace period, and grace periods asked for at once are shared.
const THREADS: usize = 4;

static QUEUE: OnceLock<Option<Helpers>> = OnceLock::new();

fn queue() -> Option<&'static Helpers> {
    QUEUE
        .get_or_init(|| {
            // Nothing waits for them: they must not compete with the threads that keep the
            // deadlines.
            Helpers::start("jobsup-janitor", THREADS, crate::priority::leave_real_time)
        })
        .as_ref()
}

/// Starts the threads now, from the thread that should make them (once jobsup's priority
/// is set; they leave the real-time class themselves): a thread's stack is a new mapping,
/// which is best made before any worker shares jobsup's memory (see
/// `fd::keep_freed_memory`). [`dispose`] starts them if this was not called.
pub fn start() {
    let _ = queue();
}

/// Drops `item` soon, on a janitor thread (or now, should there be none): a worker's
/// private directory (a `TempDir` removes itself), its mount namespace's fd.
pub fn dispose<T: Send + 'static>(item: T) {
    let Some(queue) = queue() else {
        drop(item);
        return;
    };
    *PENDING.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let work = Box::new(move || {
        let _counted = Dropped;
        drop(item);
    });
    if let Err(work) = queue.hand(work) {
        work();
    }
}

/// Waits until everything handed over is dropped, for at most `limit`; returns
/// whether it was.
pub fn finish(limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let mut n = PENDING.count.lock().unwrap_or_else(|e| e.into_inner());
    while *n > 0 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        n = PENDING
            .done
            .wait_timeout(n, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_over_directories_are_gone_once_finish_returns() {
        let dirs: Vec<tempfile::TempDir> = (0..20).map(|_| tempfile::tempdir().unwrap()).collect();
        let paths: Vec<_> = dirs.iter().map(|d| d.path().to_path_buf()).collect();
        for (i, d) in dirs.into_iter().enumerate() {
            std::fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
            dispose(d);
        }
        assert!(finish(Duration::from_secs(30)));
        for p in paths {
            assert!(!p.exists(), "{} is still there", p.display());
        }
    }
}
