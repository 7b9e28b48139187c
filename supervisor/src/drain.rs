//! Draining a worker's stdout and stderr.
//!
//! Every pipe jobsup creates is read to its end, concurrently with everything else: a full
//! pipe would block the processor forever, and its deadline would then be the only way
//! out. Lines become log events carrying the worker, its pid and the job running when the
//! line arrived; they never mix into the results stream. A line longer than
//! [`MAX_LINE`] is cut into pieces, so a processor that never writes a newline cannot make
//! jobsup's memory grow.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// The longest line logged as one event.
pub const MAX_LINE: usize = 8 * 1024;

/// Stderr lines kept for start-up error messages.
const TAIL_LINES: usize = 10;

/// The last lines a worker wrote on stderr, for error messages.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: String) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == TAIL_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// The kept lines, oldest first, joined by newlines.
    pub fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// Who a stream belongs to, for the log fields.
#[derive(Clone)]
pub struct Origin {
    /// The pool's name.
    pub pool: Arc<str>,
    /// The worker's serial number.
    pub worker: u64,
    /// Its pid.
    pub pid: i32,
    /// The seq of the job it is running, 0 when idle.
    pub job: Arc<AtomicU64>,
}

/// Starts draining one stream in its own task. Must be called inside the runtime.
pub fn spawn(file: File, stream: &'static str, origin: Origin, tail: Option<Tail>) {
    let rx = match pipe::Receiver::from_file(file) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(worker = origin.worker, "cannot drain {stream}: {e}");
            return;
        }
    };
    tokio::spawn(drain(rx, stream, origin, tail));
}

async fn drain(mut rx: pipe::Receiver, stream: &'static str, origin: Origin, tail: Option<Tail>) {
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match rx.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &chunk[..n] {
            if b == b'\n' {
                emit(&mut buf, stream, &origin, tail.as_ref());
            } else {
                buf.push(b);
                if buf.len() >= MAX_LINE {
                    emit(&mut buf, stream, &origin, tail.as_ref());
                }
            }
        }
    }
    if !buf.is_empty() {
        emit(&mut buf, stream, &origin, tail.as_ref());
    }
}

fn emit(buf: &mut Vec<u8>, stream: &'static str, origin: &Origin, tail: Option<&Tail>) {
    let line = String::from_utf8_lossy(buf).into_owned();
    buf.clear();
    // Blank lines carry nothing but noise in a log.
    if line.trim().is_empty() {
        return;
    }
    let job = origin.job.load(Ordering::Relaxed);
    tracing::info!(
        target: "jobsup::processor",
        pool = %origin.pool,
        worker = origin.worker,
        pid = origin.pid,
        job = (job != 0).then_some(job),
        stream,
        "{line}"
    );
    if let Some(tail) = tail {
        tail.push(line);
    }
}
