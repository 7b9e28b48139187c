//! Reading jobs lazily from the input.
//!
//! A thread reads one line for each token the pool sends it, so memory stays bounded
//! however long the input is, and a line is only taken from the input when the pool is
//! ready for it: on an interrupted run, jobs not yet read stay unread.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

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
    /// A job to run.
    Job(Box<JobSpec>),
    /// A line that is not a valid job.
    Rejected(Box<Record>),
    /// The input could not be read; the text says why.
    Failed(String),
    /// The end of the input.
    End,
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
    want: std_mpsc::Sender<()>,
    bytes_read: Arc<AtomicU64>,
    items: mpsc::UnboundedReceiver<Item>,
    /// Tokens sent whose item has not been received.
    outstanding: usize,
    done: bool,
}

impl Source {
    /// Starts reading `input` on a thread of its own.
    pub fn start(
        input: Box<dyn Read + Send>,
        format: InputFormat,
        defaults: Defaults,
    ) -> std::io::Result<Source> {
        let (want_tx, want_rx) = std_mpsc::channel::<()>();
        let (item_tx, item_rx) = mpsc::unbounded_channel();
        let bytes_read = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&bytes_read);
        std::thread::Builder::new()
            .name("jobsup-input".into())
            .spawn(move || {
                let mut reader = Reader {
                    input: BufReader::with_capacity(64 * 1024, input),
                    format,
                    defaults,
                    line_no: 0,
                    ordinal: 0,
                    bytes_read: counter,
                };
                for () in want_rx {
                    let item = reader.next_item();
                    let end = matches!(item, Item::End | Item::Failed(_));
                    if item_tx.send(item).is_err() || end {
                        return;
                    }
                }
            })?;
        Ok(Source {
            want: want_tx,
            bytes_read,
            items: item_rx,
            outstanding: 0,
            done: false,
        })
    }

    /// Asks for items until `n` are requested or buffered.
    pub fn request(&mut self, n: usize) {
        while !self.done && self.outstanding < n {
            if self.want.send(()).is_err() {
                return;
            }
            self.outstanding += 1;
        }
    }

    /// Bytes of input read so far (for the progress bar).
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

    /// The next item. Cancel-safe.
    pub async fn next(&mut self) -> Item {
        let item = self.items.recv().await.unwrap_or(Item::End);
        self.received(&item);
        item
    }

    /// Items already read but not yet received, without waiting.
    pub fn try_next(&mut self) -> Option<Item> {
        let item = self.items.try_recv().ok()?;
        self.received(&item);
        Some(item)
    }

    fn received(&mut self, item: &Item) {
        self.outstanding = self.outstanding.saturating_sub(1);
        if matches!(item, Item::End | Item::Failed(_)) {
            self.done = true;
        }
    }

    /// Whether the input has ended.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Stops asking for more.
    pub fn stop(&mut self) {
        self.done = true;
    }
}

struct Reader<R> {
    input: BufReader<R>,
    format: InputFormat,
    defaults: Defaults,
    line_no: u64,
    ordinal: u64,
    bytes_read: Arc<AtomicU64>,
}

impl<R: Read> Reader<R> {
    fn next_item(&mut self) -> Item {
        loop {
            let mut line = Vec::new();
            let (n, complete) =
                match read_line_capped(&mut self.input, &mut line, self.defaults.max_line) {
                    Ok(r) => r,
                    Err(e) => return Item::Failed(format!("cannot read the input: {e}")),
                };
            if n == 0 {
                return Item::End;
            }
            self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
            self.line_no += 1;
            if !complete {
                let ordinal = self.next_ordinal();
                return Item::Rejected(Box::new(Record::rejected(
                    ordinal,
                    self.line_no,
                    self.line_no.to_string(),
                    format!(
                        "line {} is longer than the limit of {} bytes",
                        self.line_no, self.defaults.max_line
                    ),
                )));
            }
            trim_newline(&mut line);
            // Blank lines are spacing, not jobs (as in xargs).
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return match self.format {
                InputFormat::Lines => {
                    let job = JobSpec {
                        ordinal: self.next_ordinal(),
                        seq: self.line_no,
                        id: self.line_no.to_string(),
                        payload: line,
                        ttl: self.defaults.ttl,
                        cleanup: self.defaults.cleanup,
                        kind: None,
                        attempt: 1,
                        run_id: 0,
                        previous_errors: Vec::new(),
                    };
                    Item::Job(Box::new(job))
                }
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
            };
        }
    }

    fn next_ordinal(&mut self) -> u64 {
        self.ordinal += 1;
        self.ordinal - 1
    }
}

/// Reads one line of at most `max` bytes (newline excluded). Returns the bytes consumed and
/// whether the line fit; the rest of a longer line is consumed and dropped.
fn read_line_capped<R: BufRead>(
    input: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut fits = true;
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok((consumed, fits));
        }
        let (chunk, done) = match memchr(buf) {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let len = chunk.len();
        if fits {
            if line.len() + len > max + 2 {
                fits = false;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        input.consume(len);
        consumed += len;
        if done {
            let body = line
                .len()
                .saturating_sub(if line.ends_with(b"\r\n") { 2 } else { 1 });
            if fits && body > max {
                fits = false;
            }
            return Ok((consumed, fits));
        }
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

const NDJSON_KEYS: &[&str] = &["payload", "id", "ttl", "cleanup", "kind"];

/// Why an ndjson line is not a job, with its id and kind where they could be read.
struct Rejection {
    id: Option<String>,
    kind: Option<String>,
    reason: String,
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
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            ttl: Duration::from_secs(30),
            cleanup: Duration::from_secs(5),
            max_line: 64,
        }
    }

    fn items(input: &str, format: InputFormat) -> Vec<Item> {
        let mut r = Reader {
            input: BufReader::new(input.as_bytes()),
            format,
            defaults: defaults(),
            line_no: 0,
            ordinal: 0,
            bytes_read: Arc::default(),
        };
        let mut out = Vec::new();
        loop {
            match r.next_item() {
                Item::End => return out,
                item => out.push(item),
            }
        }
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
