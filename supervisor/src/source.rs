//! Reading jobs lazily from the input.
//!
//! A thread reads one line for each token the pool sends it, so memory stays bounded
//! however long the input is, and a line is only taken from the input when the pool is
//! ready for it. What it takes from the input is exactly the lines it returns as items
//! ([`crate::input_fd`]): on an interrupted run, the lines not returned are still in the
//! pipe, or after the file offset, for whoever reads the input next, and every line
//! returned gets a record from the pool (`cancelled` for jobs read ahead).
//!
//! [`Source::stop`] wakes the thread wherever it waits; [`Source::close`] collects what it
//! produced after that, and says so if it panicked. A reader that ends without reaching
//! the end of the input is an error, never an end of input.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::input_fd::{Fill, Input, Stop, WINDOW};
use crate::record::{JobSpec, Record};

/// How each input line is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Each line is a payload; its id is its line number.
    Lines,
    /// Each line is a JSON object with `payload` and optional `id`, `ttl`, `cleanup`.
    Ndjson,
}

/// What the source produces.
#[derive(Debug)]
pub enum Item {
    /// A job to run. A line cut short by a stop (one longer than the reader's window, taken
    /// in part) is a job too, with the part read as its payload: it was read, so it gets a
    /// record, and after a stop that record is `cancelled`.
    Job(Box<JobSpec>),
    /// A line that is not a valid job.
    Rejected(Box<Record>),
    /// The input could not be read, or the reader failed; the text says why.
    Failed(String),
    /// The end of the input.
    End,
}

impl Item {
    /// Whether the reader says nothing after this item.
    fn is_last(&self) -> bool {
        matches!(self, Item::End | Item::Failed(_))
    }
}

/// Per-job settings a line does not override.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// The run's ttl.
    pub ttl: Duration,
    /// The run's cleanup window.
    pub cleanup: Duration,
    /// The longest line accepted.
    pub max_line: usize,
}

/// The pool's handle on the reader thread.
pub struct Source {
    /// Tokens to the reader; `None` once stopped.
    want: Option<std_mpsc::Sender<()>>,
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
    bytes_read: Arc<AtomicU64>,
    items: mpsc::UnboundedReceiver<Item>,
    /// Tokens sent whose item has not been received.
    outstanding: usize,
    done: bool,
    /// Whether the reader's last item (`End` or `Failed`) has been received.
    ended: bool,
    /// Jobs passed over because the job log has them (`--resume`).
    skipped: Arc<AtomicU64>,
}

impl Source {
    /// Starts reading `input` on a thread of its own.
    pub fn start(
        input: OwnedFd,
        format: InputFormat,
        defaults: Defaults,
    ) -> std::io::Result<Source> {
        Source::start_resuming(input, format, defaults, None)
    }

    /// As [`Source::start`], passing over the jobs `resume` skips: they are not items at
    /// all (no ordinal, no record), only counted, so that a resumed run's records are
    /// those of the jobs it ran.
    pub fn start_resuming(
        input: OwnedFd,
        format: InputFormat,
        defaults: Defaults,
        resume: Option<Arc<crate::joblog::Resume>>,
    ) -> std::io::Result<Source> {
        let stop = Arc::new(Stop::new()?);
        let mut reader = Reader::new(
            Input::new(input, WINDOW)?,
            Arc::clone(&stop),
            format,
            defaults,
        );
        reader.resume = resume;
        Source::spawn(reader)
    }

    /// Jobs passed over so far because the job log has them.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    fn spawn(reader: Reader) -> std::io::Result<Source> {
        let (want_tx, want_rx) = std_mpsc::channel::<()>();
        let (item_tx, item_rx) = mpsc::unbounded_channel();
        let bytes_read = Arc::clone(&reader.bytes_read);
        let skipped = Arc::clone(&reader.skipped);
        let stop = Arc::clone(&reader.stop);
        let thread = std::thread::Builder::new()
            .name("jobsup-input".into())
            .spawn(move || reader.serve(&want_rx, &item_tx))?;
        Ok(Source {
            want: Some(want_tx),
            stop,
            thread: Some(thread),
            bytes_read,
            items: item_rx,
            outstanding: 0,
            done: false,
            ended: false,
            skipped,
        })
    }

    /// Asks for items until `n` are requested or buffered.
    pub fn request(&mut self, n: usize) {
        let Some(want) = &self.want else {
            return;
        };
        while !self.done && self.outstanding < n {
            if want.send(()).is_err() {
                return;
            }
            self.outstanding += 1;
        }
    }

    /// Bytes of input read so far (the progress bar counts jobs instead: see [`Remaining`]).
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_read)
    }

    /// Items requested and not yet received.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Whether an item has been requested and not yet received.
    pub fn waiting(&self) -> bool {
        !self.done && self.outstanding > 0
    }

    /// The next item. Cancel-safe. A reader that ended without saying so (it panicked) is
    /// an [`Item::Failed`] naming the panic.
    pub async fn next(&mut self) -> Item {
        let item = match self.items.recv().await {
            Some(item) => item,
            None => {
                self.reader_finished().await;
                self.reader_gone()
            }
        };
        self.received(&item);
        item
    }

    /// Items already read but not yet received, without waiting.
    pub fn try_next(&mut self) -> Option<Item> {
        let item = match self.items.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => return None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                // A thread still unwinding is left for `next` or `close`, which can wait.
                if self.ended || !self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                    return None;
                }
                match self.reader_gone() {
                    Item::End => return None,
                    failed => failed,
                }
            }
        };
        self.received(&item);
        Some(item)
    }

    fn received(&mut self, item: &Item) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if item.is_last() {
            self.done = true;
            self.ended = true;
        }
    }

    /// Whether the input has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Stops asking for more, and tells the reader: it takes no further line from the
    /// input and returns from any wait. What it read meanwhile comes from [`Source::close`].
    pub fn stop(&mut self) {
        self.done = true;
        self.want = None;
        self.stop.raise();
    }

    /// Stops the reader (as [`Source::stop`]), waits for its thread to end and returns
    /// every item it produced that was not received yet. If the thread panicked, the last
    /// item is an [`Item::Failed`] naming the panic.
    pub async fn close(&mut self) -> Vec<Item> {
        self.stop();
        let mut items = Vec::new();
        while let Some(item) = self.items.recv().await {
            self.received(&item);
            items.push(item);
        }
        self.reader_finished().await;
        if let Some(message) = self.join() {
            self.ended = true;
            items.push(Item::Failed(message));
        }
        items
    }

    /// Waits (without blocking the async thread) until the reader's thread has returned.
    /// Its channel is closed by then, so this is the last moments of its unwinding.
    async fn reader_finished(&self) {
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// What a closed channel means, once the reader's thread has returned.
    fn reader_gone(&mut self) -> Item {
        if self.ended {
            return Item::End;
        }
        match self.join() {
            Some(message) => Item::Failed(message),
            // It stopped because it was told to.
            None if self.stop.is_raised() => Item::End,
            None => Item::Failed("the input reader ended before the end of the input".into()),
        }
    }

    /// Joins a finished reader thread: the panic's message if it panicked.
    fn join(&mut self) -> Option<String> {
        let thread = self.thread.take_if(|t| t.is_finished())?;
        let payload = thread.join().err()?;
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Some(format!("the input reader panicked: {message}"))
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        // A reader left waiting would hold a file's offset past the lines it did not return.
        self.stop.raise();
    }
}

/// The line being read.
#[derive(Debug, Default)]
struct Line {
    /// Its bytes, newline included, while within the limit.
    bytes: Vec<u8>,
    /// Bytes consumed, newline included.
    len: usize,
    /// Longer than the limit: `bytes` was dropped.
    too_long: bool,
    /// Part of it has been taken from the input already (a line longer than the window).
    taken: bool,
}

impl Line {
    fn push(&mut self, chunk: &[u8], max: usize) {
        self.len += chunk.len();
        if !self.too_long {
            // Room for a CRLF beyond the limit; the body is checked when the line ends.
            if self.bytes.len() + chunk.len() > max.saturating_add(2) {
                self.too_long = true;
                self.bytes = Vec::new();
            } else {
                self.bytes.extend_from_slice(chunk);
            }
        }
    }
}

/// How a line read ended.
enum Taken {
    /// At its newline, or at the end of the input.
    Whole,
    /// At a stop, part of it taken already.
    Cut,
    /// There was no line: the end of the input.
    Eof,
}

struct Reader {
    input: Input,
    stop: Arc<Stop>,
    format: InputFormat,
    defaults: Defaults,
    line_no: u64,
    ordinal: u64,
    bytes_read: Arc<AtomicU64>,
    line: Line,
    /// The jobs to pass over (`--resume`), and how many were.
    resume: Option<Arc<crate::joblog::Resume>>,
    skipped: Arc<AtomicU64>,
    /// Panics when it reads this line (to test what a panicking reader does).
    #[cfg(test)]
    panic_at_line: Option<u64>,
}

impl Reader {
    fn new(input: Input, stop: Arc<Stop>, format: InputFormat, defaults: Defaults) -> Reader {
        Reader {
            input,
            stop,
            format,
            defaults,
            line_no: 0,
            ordinal: 0,
            bytes_read: Arc::default(),
            line: Line::default(),
            resume: None,
            skipped: Arc::default(),
            #[cfg(test)]
            panic_at_line: None,
        }
    }

    /// The thread: one item per token, lines taken from the input only once they are
    /// items, and every item sent.
    fn serve(mut self, want: &std_mpsc::Receiver<()>, items: &mpsc::UnboundedSender<Item>) {
        let mut batch = Vec::new();
        'tokens: while want.recv().is_ok() {
            let mut tokens = 1 + want.try_iter().count();
            while tokens > 0 {
                if self.stop.is_raised() {
                    break 'tokens;
                }
                // The lines already in the window are taken with one read, however many.
                while batch.len() < tokens {
                    match self.next_item(false) {
                        Some(item) => batch.push(item),
                        None => break,
                    }
                }
                if batch.is_empty() {
                    match self.next_item(true) {
                        Some(item) => batch.push(item),
                        None => break 'tokens,
                    }
                }
                if let Err(e) = self.input.commit() {
                    batch.clear();
                    batch.push(Item::Failed(format!("cannot read the input: {e}")));
                }
                tokens = tokens.saturating_sub(batch.len());
                let last = batch.last().is_some_and(Item::is_last);
                for item in batch.drain(..) {
                    if items.send(item).is_err() {
                        break 'tokens;
                    }
                }
                if last {
                    break 'tokens;
                }
            }
        }
        if let Err(e) = self.input.finish() {
            tracing::warn!(
                "cannot set the input file's offset back to the first line not read: {e}"
            );
        }
    }

    /// The next item. Without `block`, only from a line already whole in the window (else
    /// `None`); with it, waiting for the input as needed, and `None` only when stopped
    /// before any of a line was taken.
    fn next_item(&mut self, block: bool) -> Option<Item> {
        loop {
            let item = self.read_item(block)?;
            if !self.skips(&item) {
                return Some(item);
            }
        }
    }

    /// Whether `item`, just read, is a job the job log has (`--resume`): then its ordinal
    /// is given back, so that ordinals stay contiguous for `--keep-order`.
    fn skips(&mut self, item: &Item) -> bool {
        let Some(resume) = &self.resume else {
            return false;
        };
        let id = match item {
            Item::Job(job) => &job.id,
            Item::Rejected(record) => &record.id,
            Item::End | Item::Failed(_) => return false,
        };
        if !resume.skips(id) {
            return false;
        }
        self.ordinal -= 1;
        self.skipped.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The next item, skipped or not (as [`Reader::next_item`]).
    fn read_item(&mut self, block: bool) -> Option<Item> {
        loop {
            crate::health::fault("input");
            let taken = match self.next_line(block) {
                Ok(Some(taken)) => taken,
                Ok(None) => return None,
                Err(e) => return Some(Item::Failed(format!("cannot read the input: {e}"))),
            };
            let Line {
                bytes: mut line,
                len,
                too_long,
                ..
            } = std::mem::take(&mut self.line);
            let cut = match taken {
                Taken::Eof => return Some(Item::End),
                Taken::Whole => false,
                Taken::Cut => true,
            };
            self.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
            self.line_no += 1;
            #[cfg(test)]
            if self.panic_at_line == Some(self.line_no) {
                panic!("told to panic at line {}", self.line_no);
            }
            trim_newline(&mut line);
            if too_long || line.len() > self.defaults.max_line {
                let ordinal = self.next_ordinal();
                return Some(Item::Rejected(Box::new(Record::rejected(
                    ordinal,
                    self.line_no,
                    self.line_no.to_string(),
                    format!(
                        "line {} is longer than the limit of {} bytes",
                        self.line_no, self.defaults.max_line
                    ),
                ))));
            }
            // Blank lines are spacing, not jobs (as in xargs).
            if line.iter().all(u8::is_ascii_whitespace) {
                if cut {
                    return None;
                }
                continue;
            }
            if cut {
                // Not a whole job, whatever the format; it is recorded, never run.
                return Some(Item::Job(Box::new(self.job(line))));
            }
            return Some(match self.format {
                InputFormat::Lines => Item::Job(Box::new(self.job(line))),
                InputFormat::Ndjson => match parse_ndjson(&line, self.line_no, &self.defaults) {
                    Ok(mut job) => {
                        job.ordinal = self.next_ordinal();
                        Item::Job(Box::new(job))
                    }
                    Err(Rejection { id, kind, reason }) => {
                        let ordinal = self.next_ordinal();
                        let mut record = Record::rejected(
                            ordinal,
                            self.line_no,
                            id.unwrap_or_else(|| self.line_no.to_string()),
                            format!("line {}: {reason}", self.line_no),
                        );
                        // Counted under its kind in the summary, like the jobs that ran.
                        record.kind = kind;
                        Item::Rejected(Box::new(record))
                    }
                },
            });
        }
    }

    /// A job of the line just read, with `payload`.
    fn job(&mut self, payload: Vec<u8>) -> JobSpec {
        JobSpec {
            ordinal: self.next_ordinal(),
            seq: self.line_no,
            id: self.line_no.to_string(),
            payload,
            ttl: self.defaults.ttl,
            cleanup: self.defaults.cleanup,
            kind: None,
            attempt: 1,
            run_id: 0,
            previous_errors: Vec::new(),
        }
    }

    /// Reads one line into `self.line`, consuming it (a pipe's bytes are taken at the next
    /// commit; a piece of a long line at once). `None`: without `block`, no whole line in
    /// the window; with it, stopped before any of the line was taken.
    fn next_line(&mut self, block: bool) -> std::io::Result<Option<Taken>> {
        let max = self.defaults.max_line;
        loop {
            let window = self.input.window();
            if let Some(i) = memchr(window) {
                self.line.push(&window[..=i], max);
                self.input.consume(i + 1);
                return Ok(Some(Taken::Whole));
            }
            if !block {
                return Ok(None);
            }
            match self.input.fill(&self.stop)? {
                Fill::More => {}
                Fill::Full => {
                    // Longer than the window: it is the line being returned, take it in
                    // pieces so that the window can move on.
                    let window = self.input.window();
                    let n = window.len();
                    self.line.push(window, max);
                    self.input.consume(n);
                    self.input.commit()?;
                    self.line.taken = true;
                    // A file or a busy pipe may never make the reader wait: a stop still
                    // ends a long line here.
                    if self.stop.is_raised() {
                        return Ok(Some(Taken::Cut));
                    }
                }
                Fill::Eof => {
                    let window = self.input.window();
                    if window.is_empty() && self.line.len == 0 {
                        return Ok(Some(Taken::Eof));
                    }
                    let n = window.len();
                    self.line.push(window, max);
                    self.input.consume(n);
                    return Ok(Some(Taken::Whole));
                }
                Fill::Stopped => {
                    let ahead = self.input.taken_ahead();
                    if !self.line.taken && ahead == 0 {
                        self.line = Line::default();
                        return Ok(None);
                    }
                    self.line.push(&self.input.window()[..ahead], max);
                    self.input.consume(ahead);
                    return Ok(Some(Taken::Cut));
                }
            }
        }
    }

    fn next_ordinal(&mut self) -> u64 {
        self.ordinal += 1;
        self.ordinal - 1
    }
}

/// The part of a regular-file input still to be read, for the progress bar to count its
/// jobs up front, beside the reader and without disturbing it.
pub struct Remaining {
    file: std::fs::File,
    from: u64,
}

impl Remaining {
    /// The input from its current offset on, when it is a regular file (a pipe cannot be
    /// read twice). Taken before the reader starts: its reads move the offset it shares
    /// with `input`.
    pub fn of(input: &std::fs::File) -> Option<Remaining> {
        use std::io::Seek;
        if !input.metadata().ok()?.is_file() {
            return None;
        }
        let mut file = input.try_clone().ok()?;
        let from = file.stream_position().ok()?;
        Some(Remaining { file, from })
    }

    /// The jobs in it: its lines that are not blank, as the reader counts them (a line
    /// rejected as too long or malformed still gets a record). Read with `pread`, which
    /// leaves the shared offset where the reader has it.
    pub fn count_jobs(&self) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 256 * 1024];
        let (mut at, mut jobs, mut in_job) = (self.from, 0, false);
        loop {
            let n = match self.file.read_at(&mut buf, at) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            at += n as u64;
            for &b in &buf[..n] {
                if b == b'\n' {
                    jobs += u64::from(in_job);
                    in_job = false;
                } else if !b.is_ascii_whitespace() {
                    in_job = true;
                }
            }
        }
        // A last line without its newline is a job too.
        Ok(jobs + u64::from(in_job))
    }
}

fn memchr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

fn trim_newline(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

pub(crate) const NDJSON_KEYS: &[&str] = &["payload", "id", "ttl", "cleanup", "kind"];

/// Why an ndjson line is not a job, with its id and kind where they could be read.
struct Rejection {
    id: Option<String>,
    kind: Option<String>,
    reason: String,
}

/// Parses one ndjson job for another reader of jobs (`jobsup serve`'s stream entries):
/// the job, or the kind it names (when readable) and why it is not a job.
pub(crate) fn parse_job(
    line: &[u8],
    line_no: u64,
    defaults: &Defaults,
) -> Result<JobSpec, (Option<String>, String)> {
    parse_ndjson(line, line_no, defaults).map_err(|r| (r.kind, r.reason))
}

/// Parses one ndjson job.
fn parse_ndjson(line: &[u8], line_no: u64, defaults: &Defaults) -> Result<JobSpec, Rejection> {
    let bare = |reason: String| Rejection {
        id: None,
        kind: None,
        reason,
    };
    let value: Value =
        serde_json::from_slice(line).map_err(|e| bare(format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(bare(
            "a job must be a JSON object with a \"payload\"".into(),
        ));
    };
    let id = match map.get("id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(bare("\"id\" must be a string or a number".into())),
    };
    let readable_kind = match map.get("kind") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let fail = |reason: String| Rejection {
        id: id.clone(),
        kind: readable_kind.clone(),
        reason,
    };
    if let Some(key) = map.keys().find(|k| !NDJSON_KEYS.contains(&k.as_str())) {
        return Err(fail(format!(
            "unknown key \"{key}\" (known keys: {})",
            NDJSON_KEYS.join(", ")
        )));
    }
    let payload = match map.get("payload") {
        None => return Err(fail("missing \"payload\"".into())),
        Some(Value::String(s)) => s.clone().into_bytes(),
        // Structured payloads are handed over as their JSON text.
        Some(other) => other.to_string().into_bytes(),
    };
    let duration = |key: &str, default: Duration| -> Result<Duration, Rejection> {
        match map.get(key) {
            None => Ok(default),
            Some(Value::String(s)) => {
                crate::units::parse_duration(s).map_err(|e| fail(format!("bad \"{key}\": {e}")))
            }
            // The same bounds as a string: `1e20` is as out of range as "1e20".
            Some(Value::Number(n)) => match n.as_f64() {
                Some(secs) => crate::units::duration_from_secs(secs)
                    .map_err(|e| fail(format!("bad \"{key}\": {n} {e}"))),
                None => Err(fail(format!(
                    "bad \"{key}\": {n} is not a number of seconds"
                ))),
            },
            Some(_) => Err(fail(format!(
                "bad \"{key}\": expected a duration such as \"30s\""
            ))),
        }
    };
    let kind = match map.get("kind") {
        Some(_) if readable_kind.is_none() => {
            return Err(fail("\"kind\" must be a non-empty string".into()))
        }
        _ => readable_kind.clone(),
    };
    Ok(JobSpec {
        ordinal: 0,
        seq: line_no,
        id: id.clone().unwrap_or_else(|| line_no.to_string()),
        kind,
        attempt: 1,
        run_id: 0,
        previous_errors: Vec::new(),
        payload,
        ttl: duration("ttl", defaults.ttl)?,
        cleanup: duration("cleanup", defaults.cleanup)?,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            ttl: Duration::from_secs(30),
            cleanup: Duration::from_secs(5),
            max_line: 64,
        }
    }

    /// How a test feeds a reader.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Pipe,
        File,
        Socket,
        Bytewise,
    }

    const KINDS: [Kind; 4] = [Kind::Pipe, Kind::File, Kind::Socket, Kind::Bytewise];

    /// Writes `bytes` into a fresh pipe from a thread (so that more than a pipe's capacity
    /// can be written), closing it after unless `keep_open`; returns the read end and the
    /// writer.
    fn pipe_with(
        bytes: &[u8],
        keep_open: bool,
    ) -> (OwnedFd, std::thread::JoinHandle<Option<File>>) {
        let (r, w) = jobsup_process::fd::pipe().unwrap();
        let bytes = bytes.to_vec();
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            w.write_all(&bytes).unwrap();
            keep_open.then_some(w)
        });
        (r, writer)
    }

    /// A temporary file holding `bytes`, open at offset 0.
    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.rewind().unwrap();
        file
    }

    /// An input of `kind` holding `bytes` (at most a few KiB: all written before this
    /// returns) and then its end, with a `window`; and a duplicate of it to see what is
    /// left.
    fn input_with(kind: Kind, bytes: &[u8], window: usize) -> (Input, File) {
        let fd: OwnedFd = match kind {
            Kind::Pipe | Kind::Bytewise => {
                let (r, writer) = pipe_with(bytes, false);
                writer.join().unwrap();
                r
            }
            Kind::File => file_with(bytes).into(),
            Kind::Socket => {
                let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
                b.write_all(bytes).unwrap();
                b.shutdown(std::net::Shutdown::Write).unwrap();
                // Held open until the reader is done, so that the end is a shutdown.
                std::thread::spawn(move || {
                    let _ = b.read(&mut [0]);
                });
                a.into()
            }
        };
        let dup = File::from(fd.try_clone().unwrap());
        let input = match kind {
            Kind::Bytewise => Input::bytewise(fd, window).unwrap(),
            _ => Input::new(fd, window).unwrap(),
        };
        let expected = match kind {
            Kind::Pipe => "pipe",
            Kind::File => "file",
            Kind::Socket => "socket",
            Kind::Bytewise => "bytewise",
        };
        assert_eq!(input.kind(), expected);
        (input, dup)
    }

    fn reader(input: Input, format: InputFormat) -> Reader {
        Reader::new(input, Arc::new(Stop::new().unwrap()), format, defaults())
    }

    /// Reads items one at a time, as the thread does for one token each.
    fn take(r: &mut Reader, n: usize) -> Vec<Item> {
        let mut out = Vec::new();
        while out.len() < n {
            let item = r.next_item(true).expect("not stopped");
            r.input.commit().unwrap();
            let last = item.is_last();
            out.push(item);
            if last {
                break;
            }
        }
        out
    }

    fn items_of(kind: Kind, input: &[u8], window: usize, format: InputFormat) -> Vec<Item> {
        let (input, _dup) = input_with(kind, input, window);
        let mut r = reader(input, format);
        let mut out = take(&mut r, usize::MAX);
        assert!(matches!(out.pop(), Some(Item::End)), "{out:?}");
        out
    }

    fn items(input: &str, format: InputFormat) -> Vec<Item> {
        items_of(Kind::Pipe, input.as_bytes(), WINDOW, format)
    }

    /// (seq, payload) of each job; panics on anything else.
    fn jobs(items: &[Item]) -> Vec<(u64, String)> {
        items
            .iter()
            .map(|i| match i {
                Item::Job(j) => (j.seq, String::from_utf8_lossy(&j.payload).into_owned()),
                other => panic!("not a job: {other:?}"),
            })
            .collect()
    }

    /// What is left to read from `dup` (to its end, or what is there now for a pipe whose
    /// writer is still open).
    fn rest(mut dup: File) -> Vec<u8> {
        let mut out = Vec::new();
        dup.read_to_end(&mut out).unwrap();
        out
    }

    /// Every kind and window size gives the same lines: split across windows, longer than
    /// the window, CRLF, blank lines, and a last line without a newline.
    #[test]
    fn lines_come_out_the_same_whatever_the_window() {
        let input = b"alpha\n\nbe\r\n  \n\r\na line longer than most windows\nz\n\n\nlast";
        let expected: Vec<(u64, String)> = [
            (1, "alpha"),
            (3, "be"),
            (6, "a line longer than most windows"),
            (7, "z"),
            (10, "last"),
        ]
        .iter()
        .map(|&(seq, p)| (seq, p.to_owned()))
        .collect();
        for kind in KINDS {
            for window in [1, 2, 3, 5, 7, 8, 13, 64, WINDOW] {
                let got = items_of(kind, input, window, InputFormat::Lines);
                assert_eq!(jobs(&got), expected, "{kind:?}, window {window}");
            }
        }
    }

    #[test]
    fn a_line_far_longer_than_the_window_is_whole_or_rejected() {
        let long = "y".repeat(60);
        let too_long = "n".repeat(200);
        let input = format!("{long}\n{too_long}\nafter\n{too_long}");
        for kind in KINDS {
            for window in [1, 7, 16, 64, WINDOW] {
                let got = items_of(kind, input.as_bytes(), window, InputFormat::Lines);
                assert_eq!(got.len(), 4, "{kind:?}, window {window}: {got:?}");
                assert_eq!(jobs(&got[..1]), [(1, long.clone())], "{kind:?}, {window}");
                assert_eq!(
                    jobs(&got[2..3]),
                    [(3, "after".into())],
                    "{kind:?}, {window}"
                );
                for (i, seq) in [(1, 2), (3, 4)] {
                    assert!(
                        matches!(&got[i], Item::Rejected(r) if r.seq == seq
                            && r.error.as_deref().unwrap().contains("longer than")),
                        "{kind:?}, window {window}: {:?}",
                        got[i]
                    );
                }
            }
        }
    }

    /// After any number of lines, the input holds exactly the lines not returned: in the
    /// pipe, on the socket, or after the file's offset once the reader is done.
    #[test]
    fn only_the_lines_returned_are_taken() {
        let input = b"one\n\ntwo\r\nthree is longer\n\n\nfour\nfive";
        // Where the input stands after each job: just past its line.
        let ends = [4, 10, 26, 33, 37];
        for kind in KINDS {
            for window in [1, 4, 8, 64, WINDOW] {
                for n in 0..ends.len() {
                    let (input_fd, dup) = input_with(kind, input, window);
                    let mut r = reader(input_fd, InputFormat::Lines);
                    let got = take(&mut r, n);
                    assert_eq!(got.len(), n, "{kind:?}, window {window}: {got:?}");
                    drop(r);
                    let at = if n == 0 { 0 } else { ends[n - 1] };
                    if kind == Kind::File {
                        let mut dup = dup;
                        assert_eq!(dup.stream_position().unwrap(), at as u64, "window {window}");
                        assert_eq!(rest(dup), &input[at..], "window {window}, {n} lines");
                    } else {
                        assert_eq!(
                            rest(dup),
                            &input[at..],
                            "{kind:?}, window {window}, {n} lines"
                        );
                    }
                }
            }
        }
    }

    /// The thread takes the lines of several tokens with one read, and still leaves the
    /// rest; a file's offset is set back when it stops.
    #[tokio::test]
    async fn a_source_takes_what_it_returns_and_leaves_the_rest() {
        let input = lines_text(1000);
        for kind in [Kind::Pipe, Kind::File, Kind::Socket] {
            let (input_fd, dup) = input_with(kind, input.as_bytes(), WINDOW);
            let mut source = Source::spawn(reader(input_fd, InputFormat::Lines)).unwrap();
            let mut got = Vec::new();
            while got.len() < 700 {
                // Batches of every size up to 40.
                source.request(1 + got.len() % 40);
                match source.next().await {
                    Item::Job(j) => got.push(j.seq),
                    other => panic!("{kind:?}: {other:?}"),
                }
            }
            source.stop();
            for item in source.close().await {
                match item {
                    Item::Job(j) => got.push(j.seq),
                    other => panic!("{kind:?}: {other:?}"),
                }
            }
            let n = got.len();
            assert_eq!(got, (1..=n as u64).collect::<Vec<_>>(), "{kind:?}");
            let left = String::from_utf8(rest(dup)).unwrap();
            let expected: String = input.lines().skip(n).map(|l| format!("{l}\n")).collect();
            assert_eq!(left, expected, "{kind:?}: {n} lines taken");
        }
    }

    fn lines_text(n: usize) -> String {
        (1..=n).map(|i| format!("{i}\n")).collect()
    }

    /// A reader waiting for a pipe that stays open returns at a stop, having taken nothing.
    #[tokio::test]
    async fn stop_wakes_a_reader_waiting_for_input() {
        let (fd, writer) = pipe_with(b"", true);
        let dup = File::from(fd.try_clone().unwrap());
        let mut source = Source::start(fd, InputFormat::Lines, defaults()).unwrap();
        source.request(4);
        source.stop();
        let items = source.close().await;
        assert!(items.is_empty(), "{items:?}");
        // What comes after is not read.
        let mut w = writer.join().unwrap().unwrap();
        w.write_all(b"late\n").unwrap();
        drop(w);
        assert_eq!(rest(dup), b"late\n");
    }

    /// A line longer than the window, taken in part when the stop came, is still returned.
    #[tokio::test]
    async fn a_line_cut_by_a_stop_is_returned() {
        let (fd, writer) = pipe_with(b"0123456789abcdef", true);
        // Written before the reader starts, and the pipe left open.
        let mut w = writer.join().unwrap().unwrap();
        let dup = File::from(fd.try_clone().unwrap());
        let mut source =
            Source::spawn(reader(Input::new(fd, 8).unwrap(), InputFormat::Lines)).unwrap();
        source.request(1);
        let mut queued: usize = 1;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while queued > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader took nothing"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
            queued = jobsup_process::fd::unread(dup.as_fd()).expect("FIONREAD");
        }
        source.stop();
        let items = source.close().await;
        assert_eq!(jobs(&items), [(1, "0123456789abcdef".to_owned())]);
        w.write_all(b"tail\nnext\n").unwrap();
        drop(w);
        assert_eq!(rest(dup), b"tail\nnext\n");
    }

    /// A stop ends a line longer than the window after the piece in hand, even where the
    /// reader never waits (a file): the piece is returned and the rest left.
    #[test]
    fn a_stop_ends_a_long_line_after_the_piece_in_hand() {
        let input = b"0123456789abcdefghij\nnext\n";
        for kind in [Kind::Pipe, Kind::File, Kind::Socket] {
            let (input_fd, dup) = input_with(kind, input, 8);
            let mut r = reader(input_fd, InputFormat::Lines);
            r.stop.raise();
            let item = r.next_item(true);
            assert_eq!(
                jobs(&[item.unwrap()]),
                [(1, "01234567".to_owned())],
                "{kind:?}"
            );
            drop(r);
            assert_eq!(rest(dup), &input[8..], "{kind:?}");
        }
    }

    /// A panicking reader is a failure naming the panic, never an end of input; `close`
    /// says so too.
    #[tokio::test]
    async fn a_panicking_reader_is_a_failure() {
        let start = || {
            let (fd, _) = pipe_with(b"a\nb\nc\n", false);
            let mut r = reader(Input::new(fd, WINDOW).unwrap(), InputFormat::Lines);
            r.panic_at_line = Some(2);
            Source::spawn(r).unwrap()
        };
        let mut source = start();
        source.request(1);
        assert_eq!(jobs(&[source.next().await]), [(1, "a".to_owned())]);
        source.request(1);
        match source.next().await {
            Item::Failed(e) => assert_eq!(e, "the input reader panicked: told to panic at line 2"),
            other => panic!("{other:?}"),
        }
        assert!(source.is_done());
        assert!(source.close().await.is_empty(), "said once");

        let mut source = start();
        source.request(1);
        assert_eq!(jobs(&[source.next().await]), [(1, "a".to_owned())]);
        source.request(1);
        // Not stopped before it gets to line 2.
        while !source.thread.as_ref().unwrap().is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let items = source.close().await;
        assert!(
            matches!(items.last(), Some(Item::Failed(e)) if e.contains("panicked: told to panic")),
            "{items:?}"
        );

        let mut source = start();
        source.request(2);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // Line 1 comes first or not at all (when both tokens made one batch).
        let item = loop {
            match source.try_next() {
                Some(Item::Job(j)) if j.seq == 1 => {}
                Some(item) => break item,
                None => {
                    assert!(std::time::Instant::now() < deadline, "no failure");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        assert!(
            matches!(&item, Item::Failed(e) if e.contains("panicked")),
            "{item:?}"
        );
    }

    #[test]
    fn remaining_counts_the_jobs_after_the_offset_and_leaves_it() {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"skipped\na\n\n  \nb\r\nc").unwrap();
        file.seek(SeekFrom::Start(8)).unwrap();
        let remaining = Remaining::of(&file).unwrap();
        assert_eq!(remaining.count_jobs().unwrap(), 3, "a, b and c");
        assert_eq!(file.stream_position().unwrap(), 8);
        let (pipe, _w) = nix::unistd::pipe().unwrap();
        assert!(Remaining::of(&std::fs::File::from(pipe)).is_none());
    }

    #[test]
    fn lines_skip_blanks_and_keep_line_numbers() {
        let got = items("a\n\n  \nb\r\nc", InputFormat::Lines);
        let jobs: Vec<_> = got
            .iter()
            .map(|i| match i {
                Item::Job(j) => (j.seq, j.ordinal, j.payload.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            jobs,
            vec![
                (1, 0, b"a".to_vec()),
                (4, 1, b"b".to_vec()),
                (5, 2, b"c".to_vec())
            ]
        );
    }

    #[test]
    fn overlong_line_is_rejected_and_the_next_one_read() {
        let long = "x".repeat(65);
        let got = items(&format!("{long}\nok\n"), InputFormat::Lines);
        assert!(
            matches!(&got[0], Item::Rejected(r) if r.error.as_deref().unwrap().contains("longer than"))
        );
        assert!(matches!(&got[1], Item::Job(j) if j.payload == b"ok" && j.seq == 2));
    }

    #[test]
    fn ndjson_fields_and_errors() {
        let input = r#"{"payload":"x","id":7,"ttl":"2s","cleanup":1.5}
{"payload":{"a":1}}
not json
{"id":"k"}
{"payload":"x","ttl":"banana"}
{"payload":"x","tll":"2s"}
[1]
"#;
        let got = items(input, InputFormat::Ndjson);
        let Item::Job(j) = &got[0] else { panic!() };
        assert_eq!(
            (j.id.as_str(), j.ttl, j.cleanup),
            ("7", Duration::from_secs(2), Duration::from_millis(1500))
        );
        let Item::Job(j) = &got[1] else { panic!() };
        assert_eq!(j.payload, br#"{"a":1}"#);
        let reasons: Vec<String> = got[2..]
            .iter()
            .map(|i| match i {
                Item::Rejected(r) => r.error.clone().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(reasons[0].contains("not valid JSON"), "{}", reasons[0]);
        assert!(reasons[1].contains("missing \"payload\""), "{}", reasons[1]);
        assert!(reasons[2].contains("bad \"ttl\""), "{}", reasons[2]);
        assert!(reasons[3].contains("unknown key \"tll\""), "{}", reasons[3]);
        assert!(reasons[4].contains("JSON object"), "{}", reasons[4]);
        let Item::Rejected(r) = &got[3] else { panic!() };
        assert_eq!(r.id, "k", "the id of a rejected job is kept when readable");
    }

    #[test]
    fn a_rejected_job_keeps_its_kind_for_the_summary() {
        let input = r#"{"payload":"x","kind":"resize","ttl":"banana"}
{"payload":"x","kind":""}
"#;
        let got = items(input, InputFormat::Ndjson);
        let kinds: Vec<Option<&str>> = got
            .iter()
            .map(|i| match i {
                Item::Rejected(r) => r.kind.as_deref(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, [Some("resize"), None]);
    }
}
