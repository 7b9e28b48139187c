//! SIGINT and SIGTERM, counted exactly.
//!
//! Signal streams coalesce: two Ctrl-C pressed before the pool looks would read as one, and
//! the second ("stop waiting, cancel now") would be lost. So each signal also bumps a counter
//! from inside the handler, and the pool takes the whole count whenever the stream wakes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The interrupting signals the pool listens to.
pub struct Interrupts {
    int: (Signal, Arc<AtomicUsize>),
    term: (Signal, Arc<AtomicUsize>),
}

impl Interrupts {
    /// Starts listening. From now on SIGINT and SIGTERM no longer end the process.
    pub fn listen() -> std::io::Result<Interrupts> {
        let counted = |kind: SignalKind, sig: i32| -> std::io::Result<(Signal, Arc<AtomicUsize>)> {
            // The tokio stream first, so that the default action is replaced before the
            // counter exists.
            let stream = signal(kind)?;
            let count = Arc::new(AtomicUsize::new(0));
            let c = Arc::clone(&count);
            // SAFETY: the action only does an atomic increment, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    c.fetch_add(1, Ordering::SeqCst);
                })?;
            }
            Ok((stream, count))
        };
        Ok(Interrupts {
            int: counted(SignalKind::interrupt(), libc::SIGINT)?,
            term: counted(SignalKind::terminate(), libc::SIGTERM)?,
        })
    }

    /// Waits for interrupts; returns the signal and how many arrived since the last call
    /// (0 when a wake-up was for a signal already counted). Cancel-safe.
    pub async fn recv(&mut self) -> (i32, usize) {
        let (sig, count) = tokio::select! {
            _ = self.int.0.recv() => (libc::SIGINT, &self.int.1),
            _ = self.term.0.recv() => (libc::SIGTERM, &self.term.1),
        };
        (sig, count.swap(0, Ordering::SeqCst))
    }
}
