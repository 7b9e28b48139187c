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
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// The longest line logged as one event.
pub const MAX_LINE: usize = 8 * 1024;

/// Stderr lines kept for start-up error messages.
const TAIL_LINES: usize = 10;

/// The most of a job's stderr its record keeps (`stderr_tail`).
pub const JOB_TAIL_BYTES: usize = 2048;

/// How many times the drain is let run to empty a live worker's stderr pipe before a
/// verdict is recorded (a worker that never stops writing would otherwise hold it).
const CATCH_UP_ROUNDS: usize = 64;

/// What a worker wrote on stderr: its last lines, for error messages, and the bytes of the
/// job it runs, for that job's record. Shared by the drain (which fills it as it reads)
/// and the worker task (which takes a job's part at its verdict).
#[derive(Clone, Default)]
pub struct Tail(Arc<Shared>);

#[derive(Default)]
struct Shared {
    kept: Mutex<Kept>,
    /// Woken when the drain reaches the end of the pipe.
    ended: Notify,
}

#[derive(Default)]
struct Kept {
    lines: VecDeque<String>,
    /// The last bytes since the job's hand-off (at most twice the bound, then cut back).
    job: Vec<u8>,
    /// Whether earlier bytes of the job were dropped.
    job_cut: bool,
    /// The drain has read the pipe to its end.
    eof: bool,
    /// The read end, duplicated, to see whether the drain has read everything written.
    pipe: Option<File>,
}

impl Tail {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: String) {
        let mut k = self.kept();
        if k.lines.len() == TAIL_LINES {
            k.lines.pop_front();
        }
        k.lines.push_back(line);
    }

    /// Bytes as read, for the running job; bounded, the oldest dropped first.
    fn push_bytes(&self, bytes: &[u8]) {
        let mut k = self.kept();
        k.job.extend_from_slice(bytes);
        if k.job.len() > 2 * JOB_TAIL_BYTES {
            let cut = k.job.len() - JOB_TAIL_BYTES;
            k.job.drain(..cut);
            k.job_cut = true;
        }
    }

    fn end(&self) {
        self.kept().eof = true;
        self.0.ended.notify_waiters();
    }

    /// The kept lines, oldest first, joined by newlines.
    pub fn text(&self) -> String {
        self.kept()
            .lines
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Watches `stderr` (a duplicate of the pipe the drain reads) for what is still unread.
    pub fn watch(&self, stderr: File) {
        self.kept().pipe = Some(stderr);
    }

    /// A job is handed to a reused worker: what it wrote before is not this job's.
    pub fn start_job(&self) {
        let mut k = self.kept();
        k.job.clear();
        k.job_cut = false;
    }

    /// Lets the drain read what a live worker wrote up to now: until its pipe is empty
    /// (what the drain read it has kept, as it keeps a read at once), within a bound.
    pub async fn catch_up(&self) {
        for _ in 0..CATCH_UP_ROUNDS {
            let unread = {
                let k = self.kept();
                match &k.pipe {
                    Some(f) if !k.eof => jobsup_process::fd::unread(f.as_fd()).unwrap_or(0),
                    _ => 0,
                }
            };
            if unread == 0 {
                return;
            }
            // Tokio runs a yielded task after polling for I/O, so the drain reads meanwhile.
            tokio::task::yield_now().await;
        }
    }

    /// Waits (at most `bound`) for the drain to read an ended worker's stderr to its end,
    /// so that its last line is not lost to a race; a descendant that still holds the pipe
    /// open does not hold the record longer than that.
    pub async fn ended(&self, bound: Duration) {
        let wait = async {
            loop {
                let ended = self.0.ended.notified();
                if self.kept().eof {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(bound, wait).await;
    }

    /// What the worker wrote on stderr during the job (since [`Tail::start_job`], or since
    /// it started), for its record: the last [`JOB_TAIL_BYTES`] at most, from the start of
    /// a line where one starts in them, lossily decoded; `None` when there is nothing.
    pub fn take_job(&self) -> Option<String> {
        let mut k = self.kept();
        let text = job_text(&k.job, k.job_cut);
        k.job.clear();
        k.job_cut = false;
        text
    }
}

/// The part of a job's stderr bytes a record keeps (see [`Tail::take_job`]).
fn job_text(bytes: &[u8], cut: bool) -> Option<String> {
    let mut b = bytes;
    let mut cut = cut;
    if b.len() > JOB_TAIL_BYTES {
        b = &b[b.len() - JOB_TAIL_BYTES..];
        cut = true;
    }
    // The trailing newline ends the last line; it is not part of the text.
    while let Some(rest) = b.strip_suffix(b"\n") {
        b = rest;
    }
    if cut {
        // A line cut at its start is dropped where a whole line follows it; else (one
        // long line) at least no character is cut in two.
        match b.iter().position(|&c| c == b'\n') {
            Some(i) => b = &b[i + 1..],
            None => {
                let skip = b.iter().take_while(|&&c| c & 0xC0 == 0x80).count();
                b = &b[skip..];
            }
        }
    }
    // Blank lines before the first word say nothing.
    while let Some(rest) = b.strip_prefix(b"\n") {
        b = rest;
    }
    let text = String::from_utf8_lossy(b);
    (!text.trim().is_empty()).then(|| text.into_owned())
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

/// Starts draining one stream, a pipe's read end from the spawner (non-blocking already,
/// [`crate::sandbox::Pipes`]), in its own task. Must be called inside the runtime.
pub fn spawn(file: File, stream: &'static str, origin: Origin, tail: Option<Tail>) {
    let rx = match pipe::Receiver::from_file_unchecked(file) {
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
        // Kept before this task can yield again, which `Tail::catch_up` relies on.
        if let Some(tail) = &tail {
            tail.push_bytes(&chunk[..n]);
        }
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
    if let Some(tail) = &tail {
        tail.end();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_tail_is_bounded_and_starts_at_a_line() {
        assert_eq!(job_text(b"", false), None);
        assert_eq!(job_text(b"\n \n", false), None);
        assert_eq!(job_text(b"one\ntwo\n", false).as_deref(), Some("one\ntwo"));
        // More than the bound: the last lines that fit, the first of them whole.
        let mut many = Vec::new();
        for i in 0..1000 {
            many.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        let text = job_text(&many, false).unwrap();
        assert!(text.len() <= JOB_TAIL_BYTES, "{}", text.len());
        assert!(text.ends_with("line 999"), "{text}");
        assert!(text.starts_with("line "), "{text}");
        // One long line: its end, no character cut in two.
        let long = "é".repeat(3000);
        let text = job_text(long.as_bytes(), false).unwrap();
        assert!(text.len() <= JOB_TAIL_BYTES);
        assert!(text.chars().all(|c| c == 'é'), "{text}");
    }

    #[test]
    fn a_tail_keeps_only_the_bytes_since_hand_off() {
        let tail = Tail::default();
        tail.push_bytes(b"start-up noise\n");
        tail.start_job();
        tail.push_bytes(b"mine\n");
        assert_eq!(tail.take_job().as_deref(), Some("mine"));
        assert_eq!(tail.take_job(), None);
        for _ in 0..10_000 {
            tail.push_bytes(b"flood\n");
        }
        let text = tail.take_job().unwrap();
        assert!(
            text.len() <= JOB_TAIL_BYTES && text.starts_with("flood"),
            "{text}"
        );
    }

    #[test]
    fn a_job_tail_starts_at_its_first_line_with_words() {
        assert_eq!(
            job_text(b"\n\nthread panicked\nnote\n", false).as_deref(),
            Some("thread panicked\nnote")
        );
        assert_eq!(job_text(b"\n\n", false), None);
    }
}
