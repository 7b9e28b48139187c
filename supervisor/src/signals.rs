//! The signals that end a run (SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2), counted exactly.
//!
//! Each of them drains the run the same way: no more jobs are read, running ones may finish
//! by their deadlines (or the shutdown timeout), and every job read gets its record; a
//! second one cancels the running jobs. Only the exit code (128 + the signal) tells them
//! apart. SIGHUP is here because a closing terminal must not lose records; SIGUSR1/2
//! because their default action would end jobsup outright, with nothing cleaned up.
//!
//! Signal streams coalesce: two Ctrl-C pressed before the pool looks would read as one, and
//! the second ("stop waiting, cancel now") would be lost. So each signal also bumps a counter
//! from inside the handler, and the pool takes the whole count whenever the stream wakes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals that end a run, gracefully.
pub const ENDING: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// The interrupting signals the pool listens to.
pub struct Interrupts {
    streams: Vec<(i32, Signal, Arc<AtomicUsize>)>,
}

impl Interrupts {
    /// Starts listening. From now on none of [`ENDING`] ends the process by itself.
    pub fn listen() -> std::io::Result<Interrupts> {
        let streams = ENDING
            .iter()
            .map(|&sig| {
                // The tokio stream first, so that the default action is replaced before
                // the counter exists.
                let stream = signal(SignalKind::from_raw(sig))?;
                let count = Arc::new(AtomicUsize::new(0));
                jobsup_process::fd::count_signal(sig, Arc::clone(&count))?;
                Ok((sig, stream, count))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Interrupts { streams })
    }

    /// Waits for interrupts; returns the signal and how many arrived since the last call
    /// (0 when a wake-up was for a signal already counted). Cancel-safe.
    pub async fn recv(&mut self) -> (i32, usize) {
        let woken = std::future::poll_fn(|cx| {
            for (i, (_, stream, _)) in self.streams.iter_mut().enumerate() {
                if stream.poll_recv(cx).is_ready() {
                    return std::task::Poll::Ready(i);
                }
            }
            std::task::Poll::Pending
        })
        .await;
        let (sig, _, count) = &self.streams[woken];
        (*sig, count.swap(0, Ordering::SeqCst))
    }
}
