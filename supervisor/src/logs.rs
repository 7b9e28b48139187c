//! Everything jobsup writes on stderr (log lines, the progress bar, the end-of-run summary)
//! goes through one queue and one thread.
//!
//! A processor that floods its stderr, or a stderr that nobody reads, must never stall the
//! supervisor's single async thread, and must not keep jobsup from exiting: the queue is
//! bounded (lines past it are dropped and counted, never blocked on), and at the end
//! [`Logs::finish`] waits for the queue to drain only while stderr keeps taking lines.
//! Nothing here ever writes on stdout, which carries the records.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The most log lines queued for stderr.
pub const MAX_LINES: usize = 128 * 1024;

/// The most bytes of log lines queued for stderr.
pub const MAX_BYTES: usize = 16 << 20;

/// At the end, how long stderr may take no line at all before jobsup stops waiting for it.
pub const STALL: Duration = Duration::from_secs(1);

/// At the end, the longest jobsup waits for stderr, however slowly it is taking lines.
pub const FINAL_WAIT: Duration = Duration::from_secs(10);

/// How often the progress bar is redrawn.
const TICK: Duration = Duration::from_millis(200);

enum Msg {
    /// A log line: counted in the queue's bounds.
    Line(Vec<u8>),
    /// The last text of the run (the summary): written after the progress bar is cleared.
    Last(String),
}

#[derive(Default)]
struct Shared {
    /// Lines queued and not yet written.
    lines: AtomicUsize,
    /// Their bytes.
    bytes: AtomicUsize,
    /// Lines dropped: the queue was full, or stderr refused them.
    dropped: AtomicU64,
    /// Writes completed, whatever their outcome: how the end tells a slow stderr from a
    /// blocked one.
    writes: AtomicU64,
    /// `finish` is waiting: wake it at each write.
    waiting: AtomicBool,
    /// The last text has been written.
    done: Mutex<bool>,
    wake: Condvar,
}

/// The queue's writing end, for the tracing subscriber (`with_writer`). Never blocks.
pub struct LogWriter {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

/// The handle `main` keeps to end the queue.
pub struct Logs {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

/// Starts the stderr thread.
pub fn start() -> io::Result<(LogWriter, Logs)> {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let theirs = Arc::clone(&shared);
    std::thread::Builder::new()
        .name("jobsup-log".into())
        .spawn(move || serve(&rx, &theirs))?;
    Ok((
        LogWriter {
            tx: tx.clone(),
            shared: Arc::clone(&shared),
        },
        Logs { tx, shared },
    ))
}

impl Logs {
    /// Log lines dropped so far because stderr was not taking them.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues `last` (the summary) after every line queued so far, and waits until it is
    /// written, as long as stderr keeps taking lines: at most [`STALL`] without progress
    /// and [`FINAL_WAIT`] in all. Returns whether everything was written.
    pub fn finish(self, last: String) -> bool {
        if self.tx.send(Msg::Last(last)).is_err() {
            return false;
        }
        self.shared.waiting.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let mut seen = self.shared.writes.load(Ordering::SeqCst);
        let mut progress_at = start;
        let mut done = self.shared.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let now = Instant::now();
            let writes = self.shared.writes.load(Ordering::SeqCst);
            if writes != seen {
                (seen, progress_at) = (writes, now);
            }
            let until = (progress_at + STALL).min(start + FINAL_WAIT);
            if now >= until {
                return false;
            }
            done = self
                .shared
                .wake
                .wait_timeout(done, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

impl io::Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let full = shared.lines.load(Ordering::Relaxed) >= MAX_LINES
            || shared.bytes.load(Ordering::Relaxed) + buf.len() > MAX_BYTES;
        if full {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(buf.len());
        }
        shared.lines.fetch_add(1, Ordering::Relaxed);
        shared.bytes.fetch_add(buf.len(), Ordering::Relaxed);
        if self.tx.send(Msg::Line(buf.to_vec())).is_err() {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> &'a LogWriter {
        self
    }
}

/// The stderr thread: writes lines as they come, redraws the progress bar between them.
fn serve(rx: &mpsc::Receiver<Msg>, shared: &Shared) {
    // Not locked for good: a panic message from another thread must still get through.
    let stderr = io::stderr();
    let mut drawn = Instant::now();
    // On a terminal a bar may appear at any time, with no log line to wake this thread
    // and draw it: there it wakes every tick.
    let terminal = io::IsTerminal::is_terminal(&stderr);
    loop {
        let msg = match terminal || crate::progress::shown() {
            true => match rx.recv_timeout(TICK.saturating_sub(drawn.elapsed())) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
            false => match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            },
        };
        if drawn.elapsed() >= TICK {
            crate::progress::redraw();
            drawn = Instant::now();
        }
        match msg {
            None => {}
            Some(Msg::Line(line)) => {
                let written = crate::progress::around_bar(|| (&stderr).write_all(&line));
                shared.lines.fetch_sub(1, Ordering::Relaxed);
                shared.bytes.fetch_sub(line.len(), Ordering::Relaxed);
                if written.is_err() {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
                shared.writes.fetch_add(1, Ordering::SeqCst);
            }
            Some(Msg::Last(text)) => {
                crate::progress::clear();
                let _ = (&stderr).write_all(text.as_bytes());
                shared.writes.fetch_add(1, Ordering::SeqCst);
                *shared.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
                shared.wake.notify_all();
                return;
            }
        }
        if shared.waiting.load(Ordering::Relaxed) {
            shared.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, _rx) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let writer = LogWriter {
            tx,
            shared: Arc::clone(&shared),
        };
        let line = vec![b'x'; MAX_BYTES / 4];
        for _ in 0..4 {
            (&writer).write_all(&line).unwrap();
        }
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 0);
        (&writer).write_all(b"one more\n").unwrap();
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(shared.lines.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn finish_gives_up_when_nothing_is_written() {
        // A queue whose thread never writes: finish returns after STALL, not never.
        let (tx, _rx) = mpsc::channel();
        let logs = Logs {
            tx,
            shared: Arc::new(Shared::default()),
        };
        assert!(!logs.finish("summary\n".into()));
    }
}
