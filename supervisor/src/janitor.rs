//! Removing workers' private directories on a thread of its own.
//!
//! An exec slot starts its next process as soon as the last one's record is decided; a
//! directory walk and `rmdir` on a journaling filesystem (a few hundred microseconds) in
//! between would be paid by every job. The directory goes to this thread instead, which
//! removes it a moment later, and [`finish`] waits (bounded) for the queue to empty before
//! jobsup exits, so that a run leaves no directory of its own behind. Should jobsup be
//! killed first, the guard removes what is left, as it does for a killed run's workers.

use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Directories handed over and not yet removed.
struct Pending {
    count: Mutex<usize>,
    done: Condvar,
}

static PENDING: Pending = Pending {
    count: Mutex::new(0),
    done: Condvar::new(),
};

static QUEUE: OnceLock<Option<Mutex<mpsc::Sender<tempfile::TempDir>>>> = OnceLock::new();

fn queue() -> Option<&'static Mutex<mpsc::Sender<tempfile::TempDir>>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<tempfile::TempDir>();
            std::thread::Builder::new()
                .name("jobsup-janitor".into())
                .spawn(move || {
                    for dir in rx {
                        // Dropping a TempDir removes it, whatever is inside.
                        drop(dir);
                        let mut n = PENDING.count.lock().unwrap_or_else(|e| e.into_inner());
                        *n = n.saturating_sub(1);
                        PENDING.done.notify_all();
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Removes `dir` soon, on the janitor's thread (or now, should that thread be missing).
pub fn remove(dir: tempfile::TempDir) {
    let Some(queue) = queue() else {
        drop(dir);
        return;
    };
    *PENDING.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    let sent = queue.lock().unwrap_or_else(|e| e.into_inner()).send(dir);
    if let Err(mpsc::SendError(dir)) = sent {
        drop(dir);
        let mut n = PENDING.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
    }
}

/// Waits until every directory handed over is removed, for at most `limit`; returns
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
            remove(d);
        }
        assert!(finish(Duration::from_secs(30)));
        for p in paths {
            assert!(!p.exists(), "{} is still there", p.display());
        }
    }
}
