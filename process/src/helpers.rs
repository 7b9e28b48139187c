//! A few long-lived threads that run what they are handed, one queue for all of them: the
//! janitor's (drops nothing waits for) and the cgroup writes' ([`crate::offload`]).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// A piece of work handed to the threads.
pub type Work = Box<dyn FnOnce() + Send>;

/// The threads' queue.
pub struct Helpers(mpsc::Sender<Work>);

impl Helpers {
    /// Starts `count` threads named `name`, each running `at_start` first (say, to leave
    /// the real-time class it inherited); `None` if none could be started. They live
    /// until the process exits; a panic in a piece of work is reported by the panic hook
    /// and the thread goes on with the next.
    pub fn start(name: &str, count: usize, at_start: fn()) -> Option<Helpers> {
        let (tx, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let started = (0..count)
            .filter(|_| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || {
                        at_start();
                        loop {
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                            let Ok(work) = next else { return };
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                        }
                    })
                    .is_ok()
            })
            .count();
        (started > 0).then_some(Helpers(tx))
    }

    /// Hands `work` to a thread; gives it back if none is there to take it.
    pub fn hand(&self, work: Work) -> Result<(), Work> {
        self.0.send(work).map_err(|mpsc::SendError(work)| work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn work_runs_on_the_threads_and_a_panic_does_not_end_them() {
        let helpers = Helpers::start("test-helper", 1, || {}).expect("a thread");
        let (tx, rx) = mpsc::channel();
        let ran = Arc::new(AtomicUsize::new(0));
        helpers
            .hand(Box::new(|| panic!("work that panics")))
            .map_err(|_| "not handed")
            .unwrap();
        let count = Arc::clone(&ran);
        helpers
            .hand(Box::new(move || {
                count.fetch_add(1, Ordering::SeqCst);
                tx.send(std::thread::current().name().map(String::from))
                    .unwrap();
            }))
            .map_err(|_| "not handed")
            .unwrap();
        let name = rx.recv().expect("the second piece ran");
        assert_eq!(name.as_deref(), Some("test-helper"));
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
