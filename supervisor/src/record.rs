//! Jobs as read, and the one record each of them yields.

use std::time::Duration;

use base64::Engine;
use serde::Serialize;

use crate::reaper::Exit;

/// One job read from the input.
#[derive(Clone)]
pub struct JobSpec {
    /// Position among the jobs read (0-based, contiguous): the order of `--keep-order`.
    pub ordinal: u64,
    /// The input line it came from (1-based).
    pub seq: u64,
    /// The user's id for it (its line number when none was given).
    pub id: String,
    /// Its input.
    pub payload: Vec<u8>,
    /// How long it may run before the cleanup request.
    pub ttl: Duration,
    /// How long cleaning up may take before the hard kill.
    pub cleanup: Duration,
    /// What sort of job it is (ndjson `kind`), for per-kind statistics.
    pub kind: Option<String>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// This hand-off's number, unique in the run: the id the protocol uses, so that
    /// nothing about one attempt can be taken for another.
    pub run_id: u64,
    /// The errors of earlier attempts.
    pub previous_errors: Vec<String>,
}

impl JobSpec {
    /// The job without its input: enough to write its record.
    pub fn without_payload(&self) -> JobSpec {
        JobSpec {
            ordinal: self.ordinal,
            seq: self.seq,
            id: self.id.clone(),
            payload: Vec::new(),
            ttl: self.ttl,
            cleanup: self.cleanup,
            kind: self.kind.clone(),
            attempt: self.attempt,
            run_id: self.run_id,
            previous_errors: Vec::new(),
        }
    }
}

#[cfg(test)]
impl JobSpec {
    /// A plain job on line `seq`, for unit tests to adjust.
    pub(crate) fn sample(seq: u64) -> JobSpec {
        JobSpec {
            ordinal: seq.saturating_sub(1),
            seq,
            id: seq.to_string(),
            payload: Vec::new(),
            ttl: Duration::ZERO,
            cleanup: Duration::ZERO,
            kind: None,
            attempt: 1,
            run_id: 0,
            previous_errors: Vec::new(),
        }
    }
}

impl std::fmt::Debug for JobSpec {
    // Payloads can be large or secret: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("seq", &self.seq)
            .field("id", &self.id)
            .field("payload_len", &self.payload.len())
            .field("ttl", &self.ttl)
            .field("cleanup", &self.cleanup)
            .field("kind", &self.kind)
            .finish()
    }
}

/// How a job ended. The names are the contract of DESIGN.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The processor returned a result in time.
    Ok,
    /// The processor said the job failed, in time.
    Failed,
    /// The ttl passed and the worker cleaned up before the hard deadline.
    Timeout,
    /// The worker had to be killed at the hard deadline.
    Killed,
    /// The worker died, or broke the protocol, mid-job.
    Crashed,
    /// The job was malformed and never ran.
    Rejected,
    /// The run was interrupted before the job could finish.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in the order summaries list them.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Killed,
        Outcome::Crashed,
        Outcome::Rejected,
        Outcome::Cancelled,
    ];

    /// The outcome's name as it appears in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Killed => "killed",
            Outcome::Crashed => "crashed",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The one result record of a job, written as one NDJSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// See [`JobSpec::ordinal`]; not written.
    #[serde(skip)]
    pub ordinal: u64,
    /// The input line.
    pub seq: u64,
    /// The job's id.
    pub id: String,
    /// The job's kind, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Its output, when UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Its output in base64, when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_base64: Option<String>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The worker's exit code, when it exited with this job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the worker, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// From hand-off to the worker to the decision (milliseconds, microsecond precision).
    pub duration_ms: f64,
    /// Attempts made.
    pub attempts: u32,
    /// The errors of earlier attempts, oldest first, when the job was retried.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_errors: Vec<String>,
    /// The end of what the worker wrote on stderr during the job (at most 2 KiB, from a
    /// line's start), in `failed`, `crashed`, `timeout` and `killed` records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_tail: Option<String>,
    /// Which deadline ended a `timeout` or `killed` job: `ttl` or `idle`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<&'static str>,
    /// The worker's serial number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<u64>,
    /// The worker's pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// When the job was handed to its worker (wall clock), for the job log.
    #[serde(skip)]
    pub started_at: Option<std::time::SystemTime>,
    /// Payload bytes sent, for the job log.
    #[serde(skip)]
    pub sent: u64,
    /// The command line as run, when it differs per job (exec mode), for the job log.
    #[serde(skip)]
    pub command: Option<String>,
}

impl Record {
    /// A record for `job` with the given outcome and nothing else yet.
    pub fn new(job: &JobSpec, outcome: Outcome) -> Record {
        let mut record = Record::blank(job.ordinal, job.seq, job.id.clone(), outcome, job.attempt);
        record.kind = job.kind.clone();
        record.previous_errors = job.previous_errors.clone();
        record.sent = job.payload.len() as u64;
        record
    }

    /// A record for a line that never became a job.
    pub fn rejected(ordinal: u64, seq: u64, id: String, reason: String) -> Record {
        let mut record = Record::blank(ordinal, seq, id, Outcome::Rejected, 0);
        record.error = Some(reason);
        record
    }

    fn blank(ordinal: u64, seq: u64, id: String, outcome: Outcome, attempts: u32) -> Record {
        Record {
            ordinal,
            seq,
            id,
            kind: None,
            outcome,
            output: None,
            output_base64: None,
            error: None,
            exit_code: None,
            signal: None,
            duration_ms: 0.0,
            attempts,
            previous_errors: Vec::new(),
            stderr_tail: None,
            deadline: None,
            worker: None,
            pid: None,
            started_at: None,
            sent: 0,
            command: None,
        }
    }

    /// Output bytes received, for the job log.
    pub fn received(&self) -> u64 {
        match (&self.output, &self.output_base64) {
            (Some(s), _) => s.len() as u64,
            // Four base64 characters carry three bytes.
            (None, Some(b)) => {
                (b.len() / 4 * 3) as u64 - b.bytes().rev().take_while(|&c| c == b'=').count() as u64
            }
            (None, None) => 0,
        }
    }

    /// The output's bytes as the job produced them (base64 decoded), for raw output.
    pub fn output_bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match (&self.output, &self.output_base64) {
            (Some(s), _) => Some(s.as_bytes().into()),
            // Encoded by `set_output`, so it decodes.
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .ok()
                .map(Into::into),
            (None, None) => None,
        }
    }

    /// Sets the output, as text when it is UTF-8 and as base64 otherwise.
    pub fn set_output(&mut self, bytes: Vec<u8>) {
        match String::from_utf8(bytes) {
            Ok(s) => self.output = Some(s),
            Err(e) => {
                self.output_base64 =
                    Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))
            }
        }
    }

    /// What the worker returned: its output, or its failure message as the error.
    pub fn set_result(&mut self, result: jobsup_protocol::JobResult) {
        match result {
            jobsup_protocol::JobResult::Ok(out) => self.set_output(out),
            jobsup_protocol::JobResult::Failed(msg) => self.error = Some(msg),
        }
    }

    /// Puts jobsup's own words first in the error, before what the job said.
    pub fn prefix_error(&mut self, ours: String) {
        self.error = Some(match self.error.take() {
            None => ours,
            Some(said) => format!("{ours}; the job said: {said}"),
        });
    }

    /// Notes how the worker process ended.
    pub fn set_exit(&mut self, exit: Exit) {
        match exit {
            Exit::Code(c) => self.exit_code = Some(c),
            Exit::Signal(s) => self.signal = Some(s),
        }
    }

    /// The job's duration.
    pub fn set_duration(&mut self, d: Duration) {
        self.duration_ms = (d.as_secs_f64() * 1e6).round() / 1e3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobSpec {
        JobSpec {
            ttl: Duration::from_secs(1),
            cleanup: Duration::from_secs(1),
            ..JobSpec::sample(1)
        }
    }

    #[test]
    fn absent_fields_are_omitted_and_binary_output_is_base64() {
        let mut r = Record::new(&job(), Outcome::Ok);
        r.set_output(vec![0xff, 0x00]);
        r.set_duration(Duration::from_micros(1500));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["outcome"], "ok");
        assert_eq!(v["output_base64"], "/wA=");
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v.get("output").is_none());
        assert!(v.get("error").is_none());
        assert!(v.get("ordinal").is_none());
        assert_eq!(r.output_bytes().as_deref(), Some(&[0xff, 0x00][..]));
    }
}
