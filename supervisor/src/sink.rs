//! Writing records: as jobs finish, or in input order with `--keep-order`; as NDJSON, or
//! (`--output-format raw`) as each job's own output bytes, with the NDJSON going to
//! `--results FILE` if given.
//!
//! The writing itself happens on a thread of its own: the supervisor's tasks all share one
//! thread, and a slow reader of the results (a full pipe) must never delay a deadline.
//! Ordering is decided here, on the pool's side; the writer thread only writes, in batches,
//! and flushes whenever it has nothing queued, so a record appears within a millisecond of
//! being decided.
//!
//! Records waiting for a slow output are bounded by count and by size ([`has_room`]); the
//! pool stops reading input while there is no room, and [`room`] wakes it when there is.
//! [`finish`] is awaited, never joined: the writer may stay blocked in `write(2)` on an
//! output nobody reads, and the pool must still hear signals and keep its deadlines.
//!
//! [`has_room`]: Sink::has_room
//! [`room`]: Sink::room
//! [`finish`]: Sink::finish

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::joblog::JobLog;
use crate::record::Record;

/// How many records may wait (out of order under `--keep-order`, or queued for a slow
/// output) before the pool stops reading input: memory stays bounded even when whoever
/// reads the results stops reading.
pub const BACKLOG_LIMIT: usize = 10_000;

/// How many bytes of records (as estimated by [`weight`]) may wait before the pool stops
/// reading input: a few large outputs weigh as much as many small ones.
pub const BACKLOG_BYTES: usize = 64 << 20;

/// What a record is reckoned to cost beyond its strings: the struct, the JSON keys and
/// numbers, the queue.
const RECORD_OVERHEAD: usize = 256;

/// A record's estimated size in memory and on the output, for [`BACKLOG_BYTES`].
pub fn weight(r: &Record) -> usize {
    let strings = [&r.output, &r.output_base64, &r.error, &r.kind]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum::<usize>();
    RECORD_OVERHEAD
        + r.id.len()
        + strings
        + r.previous_errors.iter().map(String::len).sum::<usize>()
}

/// What goes to the output for each job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// One JSON record per job (NDJSON).
    #[default]
    Json,
    /// Each job's output bytes as they are, one job's whole output at a time; failures
    /// are said on stderr.
    Raw,
}

/// Where and how the writer thread writes records.
pub struct Outputs {
    /// The records (`--output`, or stdout).
    pub out: Box<dyn Write + Send>,
    /// What is written there.
    pub format: OutputFormat,
    /// Raw output: end each job's output with a newline (lines mode, whose results are
    /// lines with their newline taken off). Exec and native outputs are written exactly.
    pub newline: bool,
    /// A second destination for the JSON records (`--results FILE`).
    pub results: Option<Box<dyn Write + Send>>,
    /// The job log (`--joblog`).
    pub joblog: Option<JobLog>,
}

/// What the pool and the writer thread share.
#[derive(Default)]
struct Shared {
    /// Records sent to the writer thread and not yet written (or never to be: those left
    /// in the queue when the writer stopped).
    records: AtomicUsize,
    /// Their [`weight`].
    bytes: AtomicUsize,
    /// The writer thread has stopped (after an error, or at the end).
    stopped: AtomicBool,
    /// Why it stopped early.
    error: Mutex<Option<io::Error>>,
    /// Woken when records have been written, or the writer stopped.
    progress: Notify,
    /// The output's reader closed it (EPIPE): records go to the job log only since.
    closed: AtomicBool,
    /// Woken when `closed` is set.
    closing: Notify,
}

/// Where records go.
pub struct Sink {
    records: Option<mpsc::Sender<Record>>,
    /// Sent by the writer thread when it has written and flushed everything, or stopped.
    done: Option<oneshot::Receiver<()>>,
    shared: Arc<Shared>,
    keep_order: bool,
    next: u64,
    held: BTreeMap<u64, Record>,
    /// The [`weight`] of the held records.
    held_bytes: usize,
    /// Records the writer could no longer take (it had stopped).
    refused: usize,
    /// Why the output failed, once known.
    failure: Option<String>,
    /// Whether the log has been told that the backlog stopped the input.
    said_full: bool,
    /// What the output is called in messages ("stdout", or the file).
    name: String,
    /// Whether rows go to a job log (which alone shows a job's command line).
    job_log: bool,
}

impl Sink {
    /// Writes NDJSON records to `out` (and rows to the job log, if any), from a thread of
    /// its own.
    pub fn new(
        out: Box<dyn Write + Send>,
        joblog: Option<JobLog>,
        keep_order: bool,
    ) -> io::Result<Sink> {
        let outputs = Outputs {
            out,
            format: OutputFormat::Json,
            newline: false,
            results: None,
            joblog,
        };
        Sink::start(outputs, keep_order)
    }

    /// Writes records to `outputs` as they say, from a thread of its own.
    pub fn start(outputs: Outputs, keep_order: bool) -> io::Result<Sink> {
        let job_log = outputs.joblog.is_some();
        let (tx, rx) = mpsc::channel::<Record>();
        let (done_tx, done) = oneshot::channel();
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("jobsup-output".into())
            .spawn(move || {
                // A bug in the writer must still end in "the output failed", not in a
                // pool that waits for the writer forever.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    write_all(outputs, &rx, &theirs)
                }))
                .unwrap_or_else(|panic| {
                    Err(io::Error::other(format!(
                        "internal error in the output writer: {}",
                        crate::health::panic_message(&*panic)
                    )))
                });
                if let Err(e) = result {
                    *theirs.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                }
                theirs.stopped.store(true, Ordering::SeqCst);
                // Only now may sending fail: whoever sees it fail finds the error set.
                drop(rx);
                theirs.progress.notify_one();
                let _ = done_tx.send(());
            })?;
        Ok(Sink {
            records: Some(tx),
            done: Some(done),
            shared,
            keep_order,
            next: 0,
            held: BTreeMap::new(),
            held_bytes: 0,
            refused: 0,
            failure: None,
            said_full: false,
            name: "stdout".into(),
            job_log,
        })
    }

    /// Names the output for messages (it is "stdout" unless told otherwise).
    pub fn named(mut self, name: String) -> Sink {
        self.name = name;
        self
    }

    /// Whether rows go to a job log: only then is a job's own command line of use.
    pub fn has_job_log(&self) -> bool {
        self.job_log
    }

    /// What the output is called in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the output's reader has closed it (EPIPE). The records taken since are
    /// still written to the job log, and count as written.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the output's reader has closed it; cancel-safe.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + 'static {
        // Not tied to the sink's borrow: the pool awaits it next to `room`.
        let shared = Arc::clone(&self.shared);
        async move {
            while !shared.closed.load(Ordering::SeqCst) {
                shared.closing.notified().await;
            }
        }
    }

    /// Takes a record; queues it (and any it unblocks) for writing unless it must wait its
    /// turn. An error means the output failed (the record is counted in
    /// [`Sink::unwritten`]); it is returned for every record refused, with the same reason.
    pub fn push(&mut self, record: Record) -> io::Result<()> {
        let result = match self.keep_order {
            false => self.write(record),
            true => {
                self.held_bytes += weight(&record);
                self.held.insert(record.ordinal, record);
                let mut result = Ok(());
                while let Some(record) = self.held.remove(&self.next) {
                    self.held_bytes -= weight(&record);
                    result = result.and(self.write(record));
                    self.next += 1;
                }
                result
            }
        };
        if !self.said_full && result.is_ok() && !self.has_room() {
            self.said_full = true;
            tracing::info!(
                "the output is not keeping up: {} records ({} MiB) are waiting; reading no more input until it does",
                self.unwritten(),
                (self.held_bytes + self.shared.bytes.load(Ordering::Relaxed)) >> 20
            );
        }
        result
    }

    /// Whether the pool may read more input: the records waiting, held for their turn or
    /// queued for the output, are under both [`BACKLOG_LIMIT`] and [`BACKLOG_BYTES`], and
    /// the output has not failed.
    pub fn has_room(&self) -> bool {
        let records = self.held.len() + self.shared.records.load(Ordering::Relaxed);
        let bytes = self.held_bytes + self.shared.bytes.load(Ordering::Relaxed);
        records < BACKLOG_LIMIT
            && bytes < BACKLOG_BYTES
            && !self.shared.stopped.load(Ordering::Relaxed)
    }

    /// Resolves when [`Sink::has_room`] holds again, or with the error once the output
    /// has failed (after which it never resolves). For the pool to await while it has
    /// stopped reading because of the backlog; cancel-safe.
    pub async fn room(&mut self) -> io::Result<()> {
        loop {
            if self.shared.stopped.load(Ordering::SeqCst) {
                if self.failure.is_none() {
                    return Err(self.failed());
                }
                return std::future::pending().await;
            }
            if self.has_room() {
                return Ok(());
            }
            self.shared.progress.notified().await;
        }
    }

    /// Records taken and not written: held for their turn, queued, or refused by a writer
    /// that had stopped.
    pub fn unwritten(&self) -> usize {
        self.held.len() + self.shared.records.load(Ordering::SeqCst) + self.refused
    }

    /// Why the output failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Writes the records still held, in order (an interrupted run leaves gaps), and
    /// resolves when everything is written and flushed, or the output has failed.
    ///
    /// Never blocks the thread, and is cancel-safe: await it in a `select!` with signals
    /// and a deadline, and call it again to go on waiting. Giving up is dropping it: the
    /// writer thread may stay blocked in `write(2)`, and is never joined.
    pub async fn finish(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for (_, record) in std::mem::take(&mut self.held) {
            result = result.and(self.write(record));
        }
        self.held_bytes = 0;
        // The writer thread ends when the queue is empty and closed.
        self.records = None;
        if let Some(done) = &mut self.done {
            let _ = done.await;
            self.done = None;
        }
        result?;
        match self.shared.stopped.load(Ordering::SeqCst) && self.has_error() {
            true => Err(self.failed()),
            false => Ok(()),
        }
    }

    fn write(&mut self, record: Record) -> io::Result<()> {
        let Some(tx) = &self.records else {
            self.refused += 1;
            return Err(io::Error::other("the output is closed"));
        };
        if self.shared.stopped.load(Ordering::SeqCst) {
            self.refused += 1;
            return Err(self.failed());
        }
        let w = weight(&record);
        self.shared.records.fetch_add(1, Ordering::Relaxed);
        self.shared.bytes.fetch_add(w, Ordering::Relaxed);
        if tx.send(record).is_ok() {
            return Ok(());
        }
        // The writer thread stopped: it says why.
        self.shared.records.fetch_sub(1, Ordering::Relaxed);
        self.shared.bytes.fetch_sub(w, Ordering::Relaxed);
        self.refused += 1;
        Err(self.failed())
    }

    fn has_error(&self) -> bool {
        self.failure.is_some()
            || self
                .shared
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// The writer's error, as an `io::Error` (again each time), remembered as text.
    fn failed(&mut self) -> io::Error {
        if self.failure.is_none() {
            let error = self
                .shared
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            self.failure = Some(match error {
                Some(e) => e.to_string(),
                None => "the output writer stopped".into(),
            });
        }
        io::Error::other(self.failure.clone().expect("set above"))
    }
}

/// How long the writer rests after a flush before it looks for more records.
///
/// Waking a thread costs more than writing a record: a writer that blocked on the channel
/// again right after each record would be woken once per job. While it rests, sending is
/// just a push onto the queue, so under load it wakes at most once per interval and writes
/// a batch; a record waits at most this long to appear.
const COALESCE: Duration = Duration::from_millis(5);

/// The most records written between two flushes.
const BATCH: usize = 1024;

/// The writer thread's destinations, buffered, and what it writes to each.
struct Writers<'a> {
    /// The output, until its reader closes it.
    out: Option<io::BufWriter<Box<dyn Write + Send>>>,
    format: OutputFormat,
    newline: bool,
    results: Option<io::BufWriter<Box<dyn Write + Send>>>,
    joblog: Option<JobLog>,
    shared: &'a Shared,
}

impl<'a> Writers<'a> {
    fn new(o: Outputs, shared: &'a Shared) -> Writers<'a> {
        let buffered = |w| io::BufWriter::with_capacity(64 * 1024, w);
        Writers {
            out: Some(buffered(o.out)),
            format: o.format,
            newline: o.newline,
            results: o.results.map(buffered),
            joblog: o.joblog,
            shared,
        }
    }

    /// One record, to every destination. In raw mode a job's output is written with one
    /// call into the buffer, so no other job's bytes can come between its bytes.
    fn write(&mut self, record: &Record) -> io::Result<()> {
        let (format, newline) = (self.format, self.newline);
        self.on_output(|out| match format {
            OutputFormat::Json => write_json(out, record),
            OutputFormat::Raw => match record.output_bytes() {
                Some(bytes) => {
                    out.write_all(&bytes)?;
                    if newline {
                        out.write_all(b"\n")?;
                    }
                    Ok(())
                }
                None => Ok(()),
            },
        })?;
        // Once the output is closed its reader is gone: the run's one line about that
        // says why the rest did not run, and the job log and `--results` keep each.
        if format == OutputFormat::Raw && self.out.is_some() {
            say_failure(record);
        }
        if let Some(results) = &mut self.results {
            write_json(results, record).map_err(|e| labelled("results", e))?;
        }
        if let Some(log) = &mut self.joblog {
            log.write(record).map_err(|e| labelled("job log", e))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.on_output(|out| out.flush())?;
        if let Some(results) = &mut self.results {
            results.flush().map_err(|e| labelled("results", e))?;
        }
        match &mut self.joblog {
            Some(log) => log.flush().map_err(|e| labelled("job log", e)),
            None => Ok(()),
        }
    }

    /// Writes to the output with `f`. A closed output (EPIPE) is not an error of
    /// jobsup's: it is said once to the pool, and nothing more is written there; the
    /// results file and the job log go on.
    fn on_output(
        &mut self,
        f: impl FnOnce(&mut io::BufWriter<Box<dyn Write + Send>>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        match f(out) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                // Dropped without the flush that would fail again.
                if let Some(out) = self.out.take() {
                    let _ = out.into_parts();
                }
                self.shared.closed.store(true, Ordering::SeqCst);
                self.shared.closing.notify_one();
                Ok(())
            }
            other => other,
        }
    }
}

fn write_json(out: &mut impl Write, record: &Record) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// An error of a destination other than the output, saying which.
fn labelled(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Raw output carries no outcomes: a job that did not succeed is said on stderr, one line
/// each, at warning level so that `-q` does not hide it (a failure is not log chatter).
fn say_failure(record: &Record) {
    if record.outcome == crate::record::Outcome::Ok {
        return;
    }
    tracing::warn!(
        "job {} (line {}) {}: {}",
        record.id,
        record.seq,
        record.outcome.as_str(),
        record.error.as_deref().unwrap_or("no reason given")
    );
}

fn write_all(
    outputs: Outputs,
    records: &mpsc::Receiver<Record>,
    shared: &Shared,
) -> io::Result<()> {
    let mut out = Writers::new(outputs, shared);
    while let Ok(first) = records.recv() {
        let mut next = Some(first);
        while next.is_some() {
            // A record counts as written once it is flushed; batches are capped so that
            // the count keeps falling while records keep coming.
            let (mut count, mut bytes) = (0, 0);
            while let Some(record) = next.take() {
                crate::health::fault("output");
                out.write(&record)?;
                count += 1;
                bytes += weight(&record);
                if count < BATCH {
                    next = records.try_recv().ok();
                }
            }
            out.flush()?;
            shared.bytes.fetch_sub(bytes, Ordering::Relaxed);
            shared.records.fetch_sub(count, Ordering::Relaxed);
            shared.progress.notify_one();
            next = records.try_recv().ok();
        }
        std::thread::sleep(COALESCE);
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{JobSpec, Outcome};

    /// A writer whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    fn record(seq: u64, outcome: Outcome, output: Option<&[u8]>) -> Record {
        let mut r = Record::new(&JobSpec::sample(seq), outcome);
        if let Some(out) = output {
            r.set_output(out.to_vec());
        }
        r
    }

    fn raw(newline: bool, records: &[Record]) -> (Vec<u8>, Vec<u8>) {
        let (out, results) = (Captured::default(), Captured::default());
        let shared = Shared::default();
        let outputs = Outputs {
            out: Box::new(out.clone()),
            format: OutputFormat::Raw,
            newline,
            results: Some(Box::new(results.clone())),
            joblog: None,
        };
        let mut w = Writers::new(outputs, &shared);
        for r in records {
            w.write(r).unwrap();
        }
        w.flush().unwrap();
        (out.bytes(), results.bytes())
    }

    #[test]
    fn raw_writes_the_output_bytes_and_the_records_beside() {
        let records = [
            record(1, Outcome::Ok, Some(b"a")),
            record(2, Outcome::Failed, None),
            record(3, Outcome::Ok, Some(&[0xff, b'\n'])),
        ];
        let (out, results) = raw(false, &records);
        assert_eq!(
            out, b"a\xff\n",
            "exact bytes, base64 decoded; nothing for no output"
        );
        let lines: Vec<&[u8]> = results
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 3, "one record per job");
        let (out, _) = raw(true, &records[..1]);
        assert_eq!(out, b"a\n", "a line gets its newline back");
    }
}
