//! Writing records: as jobs finish, or in input order with `--keep-order`.
//!
//! The writing itself happens on a thread of its own: the supervisor's tasks all share one
//! thread, and a slow reader of the results (a full pipe) must never delay a deadline.
//! Ordering is decided here, on the pool's side; the writer thread only writes, in batches,
//! and flushes whenever it has nothing queued, so a record appears within a millisecond of
//! being decided.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::joblog::JobLog;
use crate::record::Record;

/// How many records may wait (out of order under `--keep-order`, or queued for a slow
/// output) before the pool stops reading input: memory stays bounded even when whoever
/// reads the results stops reading.
pub const BACKLOG_LIMIT: usize = 10_000;

/// Where records go.
pub struct Sink {
    writer: Option<(mpsc::Sender<Record>, JoinHandle<io::Result<()>>)>,
    /// Records sent to the writer thread and not yet written.
    queued: Arc<AtomicUsize>,
    keep_order: bool,
    next: u64,
    held: BTreeMap<u64, Record>,
}

impl Sink {
    /// Writes NDJSON records to `out` (and rows to the job log, if any), from a thread of
    /// its own.
    pub fn new(
        out: Box<dyn Write + Send>,
        joblog: Option<JobLog>,
        keep_order: bool,
    ) -> io::Result<Sink> {
        let (tx, rx) = mpsc::channel::<Record>();
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&queued);
        let thread = std::thread::Builder::new()
            .name("jobsup-output".into())
            .spawn(move || write_all(out, joblog, rx, &written))?;
        Ok(Sink {
            writer: Some((tx, thread)),
            queued,
            keep_order,
            next: 0,
            held: BTreeMap::new(),
        })
    }

    /// Takes a record; queues it (and any it unblocks) for writing unless it must wait its
    /// turn.
    pub fn push(&mut self, record: Record) -> io::Result<()> {
        if !self.keep_order {
            return self.write(record);
        }
        self.held.insert(record.ordinal, record);
        while let Some(record) = self.held.remove(&self.next) {
            self.write(record)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Whether the pool may read more input.
    pub fn has_room(&self) -> bool {
        self.held.len() + self.queued.load(Ordering::Relaxed) < BACKLOG_LIMIT
    }

    /// Writes records still held, in order (an interrupted run leaves gaps), and waits
    /// until everything is written and flushed.
    pub fn finish(&mut self) -> io::Result<()> {
        for (_, record) in std::mem::take(&mut self.held) {
            self.write(record)?;
        }
        match self.writer.take() {
            Some((tx, thread)) => {
                drop(tx);
                join(thread)
            }
            None => Ok(()),
        }
    }

    fn write(&mut self, record: Record) -> io::Result<()> {
        let Some((tx, _)) = &self.writer else {
            return Err(io::Error::other("the output is closed"));
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        if tx.send(record).is_ok() {
            return Ok(());
        }
        // The writer thread stopped: it says why.
        let (_, thread) = self.writer.take().expect("checked above");
        join(thread).and(Err(io::Error::other("the output writer stopped")))
    }
}

fn join(thread: JoinHandle<io::Result<()>>) -> io::Result<()> {
    thread
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the output writer panicked")))
}

/// How long the writer rests after a flush before it looks for more records.
///
/// Waking a thread costs more than writing a record: a writer that blocked on the channel
/// again right after each record would be woken once per job. While it rests, sending is
/// just a push onto the queue, so under load it wakes at most once per interval and writes
/// a batch; a record waits at most this long to appear.
const COALESCE: Duration = Duration::from_millis(1);

fn write_all(
    out: Box<dyn Write + Send>,
    mut joblog: Option<JobLog>,
    records: mpsc::Receiver<Record>,
    queued: &AtomicUsize,
) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let joblog_failed = |e: io::Error| io::Error::new(e.kind(), format!("job log: {e}"));
    while let Ok(first) = records.recv() {
        let mut next = Some(first);
        while let Some(record) = next {
            serde_json::to_writer(&mut out, &record)?;
            out.write_all(b"\n")?;
            if let Some(log) = &mut joblog {
                log.write(&record).map_err(joblog_failed)?;
            }
            queued.fetch_sub(1, Ordering::Relaxed);
            next = records.try_recv().ok();
        }
        out.flush()?;
        if let Some(log) = &mut joblog {
            log.flush().map_err(joblog_failed)?;
        }
        std::thread::sleep(COALESCE);
    }
    out.flush()?;
    match &mut joblog {
        Some(log) => log.flush().map_err(joblog_failed),
        None => Ok(()),
    }
}
