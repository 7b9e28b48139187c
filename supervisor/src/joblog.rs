//! The job log (`--joblog FILE`): one tab-separated row per finished job, with the columns
//! GNU parallel's users know, then jobsup's own; and reading it back for `jobsup report`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::record::{Outcome, Record};

/// The header row. The first nine columns are GNU parallel's.
pub const COLUMNS: [&str; 13] = [
    "Seq",
    "Host",
    "Starttime",
    "JobRuntime",
    "Send",
    "Receive",
    "Exitval",
    "Signal",
    "Command",
    "Outcome",
    "Attempts",
    "Id",
    "Kind",
];

/// Where `--joblog` writes, parsed from its argument: `FILE` truncates, `+FILE` appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLogPath {
    /// The file.
    pub path: PathBuf,
    /// Whether to append to it.
    pub append: bool,
}

impl std::str::FromStr for JobLogPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (path, append) = match s.strip_prefix('+') {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        if path.is_empty() {
            return Err("the job log needs a file name (FILE, or +FILE to append)".into());
        }
        Ok(JobLogPath {
            path: PathBuf::from(path),
            append,
        })
    }
}

/// An open job log.
pub struct JobLog {
    out: BufWriter<File>,
    command: String,
}

impl JobLog {
    /// Opens the log; writes the header unless appending to a file that has one.
    pub fn open(at: &JobLogPath, command: String) -> io::Result<JobLog> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(at.append)
            .truncate(!at.append)
            .open(&at.path)?;
        let empty = file.metadata()?.len() == 0;
        let mut log = JobLog {
            out: BufWriter::new(file),
            command: clean(&command),
        };
        if empty {
            writeln!(log.out, "{}", COLUMNS.join("\t"))?;
        }
        Ok(log)
    }

    /// Writes a finished job's row.
    pub fn write(&mut self, r: &Record) -> io::Result<()> {
        let start = r
            .started_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .unwrap_or_else(|| "0".into());
        writeln!(
            self.out,
            "{}\t:\t{}\t{:.3}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.seq,
            start,
            r.duration_ms / 1000.0,
            // A job that never started sent nothing.
            if r.attempts == 0 { 0 } else { r.sent },
            r.received(),
            exitval(r),
            r.signal.unwrap_or(0),
            r.command
                .as_deref()
                .map(clean)
                .as_deref()
                .unwrap_or(&self.command),
            r.outcome.as_str(),
            r.attempts,
            clean(&r.id),
            r.kind.as_deref().map(clean).unwrap_or_default(),
        )
    }

    /// Writes buffered rows through.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Tabs and newlines would break the columns.
fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

/// The `Exitval` column: non-zero for every job that did not succeed, whatever the mode.
/// The process's own exit code when it gave a non-zero one; else 128 + the signal that
/// ended a `failed` or `crashed` job; else the code DESIGN.md's table gives the outcome
/// (`timeout` 124, `killed` 137, any other failure 1). A deadline outcome keeps its own
/// code even when the process exited: jobsup's signal ended it.
pub fn exitval(r: &Record) -> i32 {
    use crate::exit::{FAILED, KILLED, TIMEOUT};
    match r.outcome {
        Outcome::Ok => r.exit_code.unwrap_or(0),
        Outcome::Timeout => TIMEOUT.into(),
        Outcome::Killed => KILLED.into(),
        _ => match (r.exit_code, r.signal) {
            (Some(code), _) if code != 0 => code,
            (_, Some(sig)) => 128 + sig,
            _ => FAILED.into(),
        },
    }
}

/// The jobs a resumed run skips (`--resume`, `--resume-failed`), read from the job log
/// of the earlier runs: only its `Id` and `Outcome` columns, the latest row of an id
/// winning. A `cancelled` row is a job an interrupted or halted run did not finish: it is
/// never skipped, so that resuming such a run runs exactly what is missing.
#[derive(Debug, Default)]
pub struct Resume {
    /// Each id's latest outcome (`None`: one this jobsup does not know).
    latest: std::collections::HashMap<String, Option<Outcome>>,
    /// Skip only the ids whose latest row is `ok`.
    failed_only: bool,
}

impl Resume {
    /// Reads `path`; a job log that does not exist yet is an empty one (the first run). A
    /// file that is not a jobsup job log is an error: resuming from it would run or skip
    /// the wrong jobs.
    pub fn read(path: &Path, failed_only: bool) -> Result<Resume, String> {
        let mut resume = Resume {
            failed_only,
            ..Resume::default()
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(resume),
            Err(e) => return Err(format!("cannot read the job log {}: {e}", path.display())),
        };
        let mut columns: Option<(usize, usize)> = None;
        for (i, line) in io::BufReader::new(file).lines().enumerate() {
            let at = |what: &str| format!("{}:{}: {what}", path.display(), i + 1);
            let line = line.map_err(|e| at(&e.to_string()))?;
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split('\t').collect();
            let Some((id, outcome)) = columns else {
                let find = |name| cells.iter().position(|c| *c == name);
                match (cells.first() == Some(&"Seq"), find("Id"), find("Outcome")) {
                    (true, Some(id), Some(outcome)) => columns = Some((id, outcome)),
                    _ => {
                        return Err(at(
                            "not a job log written by jobsup (its header has no Id and Outcome columns): --resume needs the --joblog of an earlier jobsup run",
                        ))
                    }
                }
                continue;
            };
            // A row cut short (a run that was killed mid-write) did not finish its job.
            if let (Some(id), Some(outcome)) = (cells.get(id), cells.get(outcome)) {
                resume
                    .latest
                    .insert(id.to_string(), self::outcome(outcome).ok());
            }
        }
        Ok(resume)
    }

    /// Whether the job with this id is skipped.
    pub fn skips(&self, id: &str) -> bool {
        match self.latest.get(&clean(id)).copied().flatten() {
            Some(Outcome::Ok) => true,
            Some(Outcome::Cancelled) | None => false,
            Some(_) => !self.failed_only,
        }
    }

    /// How many ids the job log holds.
    pub fn ids(&self) -> usize {
        self.latest.len()
    }
}

/// Reads a job log, or a results file (one JSON record per line), back into records with
/// what statistics need: seq, id, kind, outcome, duration, attempts. Says which line is
/// wrong when one is.
pub fn read_records(path: &Path) -> Result<Vec<Record>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut records = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for (i, line) in io::BufReader::new(file).lines().enumerate() {
        let at = |what: String| format!("{}:{}: {what}", path.display(), i + 1);
        let line = line.map_err(|e| at(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with('{') {
            records.push(from_json(&line).map_err(at)?);
        } else if line.starts_with("Seq\t") {
            header = Some(line.split('\t').map(str::to_string).collect());
        } else {
            let header = header.as_ref().ok_or_else(|| {
                at("neither a JSON record nor a job log row after its header".into())
            })?;
            records.push(from_row(header, &line).map_err(at)?);
        }
    }
    Ok(records)
}

fn blank(
    seq: u64,
    id: String,
    kind: Option<String>,
    outcome: Outcome,
    ms: f64,
    attempts: u32,
) -> Record {
    let mut r = Record::rejected(seq, seq, id, String::new());
    r.error = None;
    r.kind = kind.filter(|k| !k.is_empty());
    r.outcome = outcome;
    r.duration_ms = ms;
    r.attempts = attempts;
    r
}

fn outcome(name: &str) -> Result<Outcome, String> {
    Outcome::ALL
        .into_iter()
        .find(|o| o.as_str() == name)
        .ok_or_else(|| format!("unknown outcome {name:?}"))
}

fn from_json(line: &str) -> Result<Record, String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a JSON record: {e}"))?;
    let seq = v["seq"].as_u64().ok_or("a record without \"seq\"")?;
    let id = v["id"]
        .as_str()
        .ok_or("a record without \"id\"")?
        .to_string();
    let kind = v["kind"].as_str().map(str::to_string);
    let outcome = outcome(
        v["outcome"]
            .as_str()
            .ok_or("a record without \"outcome\"")?,
    )?;
    let ms = v["duration_ms"].as_f64().unwrap_or(0.0);
    let attempts = v["attempts"].as_u64().unwrap_or(1) as u32;
    Ok(blank(seq, id, kind, outcome, ms, attempts))
}

fn from_row(header: &[String], line: &str) -> Result<Record, String> {
    let cells: Vec<&str> = line.split('\t').collect();
    let cell = |name: &str| -> Result<&str, String> {
        let i = header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("the header has no {name} column"))?;
        cells
            .get(i)
            .copied()
            .ok_or_else(|| format!("the row has no {name} column"))
    };
    let number = |name: &str| -> Result<f64, String> {
        cell(name)?
            .parse::<f64>()
            .map_err(|_| format!("{name} is not a number"))
    };
    let seq = number("Seq")? as u64;
    let ms = number("JobRuntime")? * 1000.0;
    // A GNU parallel log has no Outcome column: its exit value decides.
    let outcome = match cell("Outcome") {
        Ok(name) => outcome(name)?,
        Err(_) if number("Exitval")? == 0.0 && number("Signal")? == 0.0 => Outcome::Ok,
        Err(_) => Outcome::Failed,
    };
    let attempts = cell("Attempts")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let id = cell("Id")
        .map(str::to_string)
        .unwrap_or_else(|_| seq.to_string());
    let kind = cell("Kind").ok().map(str::to_string);
    Ok(blank(seq, id, kind, outcome, ms, attempts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::JobSpec;
    use std::time::{Duration, SystemTime};

    #[test]
    fn rows_round_trip_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let at: JobLogPath = format!("+{}", dir.path().join("log").display())
            .parse()
            .unwrap();
        assert!(at.append);
        let job = JobSpec {
            id: "a	b".into(),
            payload: b"12345".to_vec(),
            kind: Some("send_mail".into()),
            ..JobSpec::sample(3)
        };
        let mut r = Record::new(&job, Outcome::Timeout);
        r.set_duration(Duration::from_millis(1500));
        r.started_at = Some(SystemTime::now());
        r.set_output(b"out".to_vec());
        r.exit_code = Some(124);
        for _ in 0..2 {
            // Appending twice writes one header.
            let mut log = JobLog::open(&at, "proc --flag".into()).unwrap();
            log.write(&r).unwrap();
            log.flush().unwrap();
        }
        let text = std::fs::read_to_string(&at.path).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("Seq\t")).count(),
            1,
            "{text}"
        );
        let row: Vec<&str> = text.lines().nth(1).unwrap().split('\t').collect();
        assert_eq!(row.len(), COLUMNS.len());
        assert_eq!(
            (row[0], row[3], row[4], row[5], row[6]),
            ("3", "1.500", "5", "3", "124")
        );
        assert_eq!((row[9], row[11], row[12]), ("timeout", "a b", "send_mail"));
        let back = read_records(&at.path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].outcome, Outcome::Timeout);
        assert_eq!(back[0].kind.as_deref(), Some("send_mail"));
        assert_eq!(back[0].duration_ms, 1500.0);
    }

    #[test]
    fn exitval_is_non_zero_for_every_job_that_did_not_succeed() {
        let job = JobSpec::sample(1);
        let with = |o, code: Option<i32>, sig: Option<i32>| {
            let mut r = Record::new(&job, o);
            r.exit_code = code;
            r.signal = sig;
            exitval(&r)
        };
        assert_eq!(with(Outcome::Ok, None, None), 0);
        // A native failure has no exit code: the worker lives on.
        assert_eq!(with(Outcome::Failed, None, None), 1);
        assert_eq!(with(Outcome::Failed, Some(3), None), 3);
        assert_eq!(with(Outcome::Crashed, None, Some(11)), 139);
        assert_eq!(with(Outcome::Timeout, Some(0), None), 124);
        assert_eq!(with(Outcome::Killed, None, Some(9)), 137);
        for o in [Outcome::Rejected, Outcome::Cancelled] {
            assert_eq!(with(o, None, None), 1);
        }
    }

    #[test]
    fn resume_reads_the_latest_outcome_of_each_id() {
        let dir = tempfile::tempdir().unwrap();
        let at = JobLogPath {
            path: dir.path().join("log"),
            append: true,
        };
        assert_eq!(
            Resume::read(&at.path, false).unwrap().ids(),
            0,
            "no log yet"
        );
        let mut log = JobLog::open(&at, "proc".into()).unwrap();
        for (id, o) in [
            ("a", Outcome::Failed),
            ("b", Outcome::Ok),
            ("a", Outcome::Ok),
            ("x", Outcome::Cancelled),
        ] {
            log.write(&Record::new(
                &JobSpec {
                    id: id.into(),
                    ..JobSpec::sample(1)
                },
                o,
            ))
            .unwrap();
        }
        log.write(&Record::new(
            &JobSpec {
                id: "c\td".into(),
                ..JobSpec::sample(2)
            },
            Outcome::Killed,
        ))
        .unwrap();
        log.flush().unwrap();
        let all = Resume::read(&at.path, false).unwrap();
        assert!(all.skips("a") && all.skips("b") && all.skips("c\td") && !all.skips("e"));
        assert!(!all.skips("x"), "a cancelled job did not finish: run it");
        let failed = Resume::read(&at.path, true).unwrap();
        assert!(failed.skips("a"), "its latest row is ok");
        assert!(!failed.skips("c\td"), "killed: run again");
        std::fs::write(&at.path, "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n1\t:\t0\t0\t0\t0\t0\t0\tx\n").unwrap();
        let e = Resume::read(&at.path, false).unwrap_err();
        assert!(e.contains("not a job log written by jobsup"), "{e}");
    }
}
