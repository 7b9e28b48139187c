//! Cgroup writes kept off the thread that keeps the deadlines.
//!
//! Every change to a cgroup (`cgroup.kill`, `mkdir`, `rmdir`) takes the kernel's one
//! `cgroup_mutex`. The kernel's own workers take it too, to release the cgroups that were
//! removed, and they run in the ordinary scheduling class: when jobsup's workers keep every
//! CPU busy, such a kernel worker waits its turn among them while it holds the lock, and
//! whoever asks for the lock meanwhile waits as long, whatever its own priority (a mutex
//! lends none). Traced with 200 native workers spinning on 2 CPUs: jobsup's runtime thread
//! spent 9 ms in one `rmdir` of a killed worker's cgroup, woken twice by kernel workers
//! handing the lock on, and the two deadlines that came due meanwhile were served 7 and
//! 9.6 ms late; the timers themselves had fired within 0.5 ms.
//!
//! So a task on the runtime hands such a write to one of a few threads kept for them
//! ([`offload`]), which are real-time like the runtime (started after it was raised, see
//! [`start`]) and so go on as soon as the lock is free, and awaits it
//! ([`Offloaded::done`]) only where what comes next depends on it. The threads are made at
//! start rather than when first needed: a thread's stack is a new mapping, and every change
//! to the memory map waits, like a `brk`, for the processes that share jobsup's memory
//! until their exec (see `fd::keep_freed_memory`).

use std::sync::OnceLock;

use tokio::sync::oneshot;

use crate::helpers::{Helpers, Work};

/// The threads that make the writes: more than one, so that a removal nothing waits for
/// does not hold up a kill behind it while the lock is free.
const THREADS: usize = 2;

static WRITERS: OnceLock<Option<Helpers>> = OnceLock::new();

fn writers() -> Option<&'static Helpers> {
    WRITERS
        .get_or_init(|| Helpers::start("jobsup-cgroups", THREADS, || {}))
        .as_ref()
}

/// Starts the threads, from the thread whose scheduling they should inherit (jobsup's,
/// once raised). Later calls do nothing; [`offload`] starts them if this was not called.
pub fn start() {
    let _ = writers();
}

/// A write handed to a thread of its own, or already made.
#[must_use = "dropping it leaves the write to finish on its own; await `done` where it must be over"]
pub struct Offloaded(oneshot::Receiver<()>);

/// Has `write` made on one of the threads kept for it; where none could be started, here
/// and now. It is never skipped.
pub fn offload(write: impl FnOnce() + Send + 'static) -> Offloaded {
    let (made, seen) = oneshot::channel();
    let write: Work = Box::new(move || {
        write();
        let _ = made.send(());
    });
    match writers() {
        Some(helpers) => {
            if let Err(write) = helpers.hand(write) {
                write();
            }
        }
        None => write(),
    }
    Offloaded(seen)
}

impl Offloaded {
    /// Resolves once the write has been made (or has panicked, which the panic hook
    /// reports).
    pub async fn done(self) {
        let _ = self.0.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_write_is_made_on_another_thread_and_awaited() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let here = std::thread::current().id();
        let seen = Arc::new(Mutex::new(None));
        let on = Arc::clone(&seen);
        rt.block_on(async {
            offload(move || *on.lock().unwrap() = Some(std::thread::current().id()))
                .done()
                .await;
        });
        let there = seen.lock().unwrap().expect("the write was made");
        assert_ne!(there, here);
    }

    #[test]
    fn a_write_that_panics_still_ends_its_wait_and_the_next_one_is_made() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let made = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&made);
        rt.block_on(async {
            for _ in 0..THREADS {
                offload(|| panic!("a write that panics")).done().await;
            }
            offload(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .done()
            .await;
        });
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
