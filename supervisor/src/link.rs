//! How the supervisor talks to a worker process, in each mode of DESIGN.md.
//!
//! | mode | reuse | job in | result out | cleanup request |
//! |---|---|---|---|---|
//! | native | yes | `Job` frame on fd 3 | `Done` frame on fd 4 | `Cleanup` frame |
//! | lines | yes | one line on stdin | the next line on stdout | a signal to the group |
//! | exec | no | payload on stdin, `{}` in arguments | all of stdout; exit status | a signal to the group |
//!
//! Whatever the mode, what a worker says is translated into [`FromWorker`] messages, so the
//! worker task applies one set of deadline rules to all of them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use jobsup_protocol::{Codec, FromWorker, Job, JobResult, ToWorker};
use nix::sys::signal::Signal;

use crate::conn::{Capture, Inbox, LineReader, Writer};
use crate::process::Process;
use crate::record::JobSpec;
use crate::sandbox::Pipes;

/// How jobs reach a processor and how its results come back.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A jobsup processor (built on `jobsup-runtime`): frames on fds 3 and 4.
    Native,
    /// Any program that reads one line per job on stdin and answers one line on stdout.
    Lines,
    /// Any program, started afresh for each job: payload on stdin, result on stdout.
    Exec,
}

impl Mode {
    /// Whether a worker process serves more than one job.
    pub fn reuses_processes(self) -> bool {
        !matches!(self, Mode::Exec)
    }
}

/// What can go wrong on a link, beyond the worker dying.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkError {
    /// The worker broke the protocol: the job is `crashed`.
    Protocol(String),
    /// The worker's output went past `--max-output`: the job is `failed`.
    Overflow(String),
}

/// The supervisor's ends of one worker process's pipes.
///
/// The writing and the reading halves are separate fields so that a task can wait on both
/// at once.
pub struct Link {
    /// Frames to fd 3 (native), or the worker's stdin.
    pub tx: Writer,
    /// What comes back.
    pub rx: Reader,
    codec: Codec,
    /// The size of the running job's message, to tell whether the worker ever took it.
    job_bytes: usize,
}

/// The reading half of a [`Link`].
pub enum Reader {
    /// Frames from fd 4.
    Frames(Inbox),
    /// Lines from stdout; each is the result of the job running when it arrives.
    Lines {
        /// The worker's stdout.
        stdout: LineReader,
        /// The seq of the job it runs, if any.
        job: Option<u64>,
    },
    /// One job's whole stdout.
    Output(Capture),
}

impl Link {
    /// Wraps a spawned process's pipes for `mode`. Must be called inside the runtime.
    pub fn new(
        mode: Mode,
        spawned: &mut Pipes,
        codec: Codec,
        max_output: usize,
    ) -> std::io::Result<Link> {
        let missing = || std::io::Error::other("a pipe the mode needs was not created");
        let (tx, rx) = match mode {
            Mode::Native => (
                spawned.jobs.take().ok_or_else(missing)?,
                Reader::Frames(Inbox::new(
                    spawned.results.take().ok_or_else(missing)?,
                    codec,
                )?),
            ),
            Mode::Lines => (
                spawned.stdin.take().ok_or_else(missing)?,
                Reader::Lines {
                    stdout: LineReader::new(
                        spawned.stdout.take().ok_or_else(missing)?,
                        max_output,
                    )?,
                    job: None,
                },
            ),
            Mode::Exec => (
                spawned.stdin.take().ok_or_else(missing)?,
                Reader::Output(Capture::new(
                    spawned.stdout.take().ok_or_else(missing)?,
                    max_output,
                )?),
            ),
        };
        Ok(Link {
            tx: Writer::new(tx)?,
            rx,
            codec,
            job_bytes: 0,
        })
    }

    /// The next message; `Ok(None)` at the end of the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<FromWorker>, LinkError> {
        self.rx.next().await
    }

    /// A message already in the pipe, without waiting.
    pub fn try_next(&mut self) -> Result<Option<FromWorker>, LinkError> {
        match &mut self.rx {
            Reader::Frames(inbox) => inbox
                .try_next()
                .map_err(|e| LinkError::Protocol(e.to_string())),
            Reader::Lines { stdout, job } => match stdout.try_next() {
                Ok(line) => Ok(line.map(|l| line_result(*job, l))),
                Err(e) => Err(LinkError::Overflow(e.to_string())),
            },
            Reader::Output(capture) => match capture.read_now() {
                Ok(()) => Ok(None),
                Err(e) => Err(LinkError::Overflow(e.to_string())),
            },
        }
    }

    /// Whether the worker's output has ended and everything in it was taken.
    pub fn at_eof(&self) -> bool {
        match &self.rx {
            Reader::Frames(inbox) => inbox.at_eof(),
            Reader::Lines { stdout, .. } => stdout.at_eof(),
            Reader::Output(capture) => capture.at_eof(),
        }
    }

    /// Hands a job over.
    pub fn send_job(&mut self, spec: &JobSpec) -> Result<(), LinkError> {
        match &mut self.rx {
            Reader::Frames(_) => {
                let frame = ToWorker::Job(Job {
                    id: spec.run_id,
                    key: spec.id.clone(),
                    payload: spec.payload.clone(),
                    attempt: spec.attempt,
                    ttl_ms: spec.ttl.as_millis() as u64,
                    kind: spec.kind.clone(),
                });
                self.job_bytes = self
                    .tx
                    .send_frame(&self.codec, &frame)
                    .map_err(|e| LinkError::Protocol(format!("cannot send the job: {e}")))?;
                Ok(())
            }
            Reader::Lines { job, .. } => {
                *job = Some(spec.run_id);
                self.job_bytes = self.tx.send_all(&[&spec.payload, b"\n"]);
                Ok(())
            }
            Reader::Output(_) => {
                // The payload is a line of the input: it goes in as one, newline included,
                // so that line-reading programs (`read`, `wc -l`) see a whole line.
                self.tx.send_all(&[&spec.payload, b"\n"]);
                self.tx.close_when_flushed();
                Ok(())
            }
        }
    }

    /// Whether the job could not be handed over because the worker had already closed its
    /// input: it never saw the job, which can then run elsewhere.
    pub fn refused_job(&self) -> bool {
        !matches!(self.rx, Reader::Output(_)) && self.tx.is_broken()
    }

    /// Whether a reused worker that stopped mid-job never took the job's message off its
    /// pipe: it died before reading it (typically, exiting right after its previous job),
    /// so the job can run elsewhere instead of being blamed on it.
    pub fn job_unseen(&self) -> bool {
        !matches!(self.rx, Reader::Output(_))
            && self.job_bytes > 0
            && self.tx.untaken().is_some_and(|n| n >= self.job_bytes)
    }

    /// The job ended: what the worker says now is about no job.
    pub fn job_ended(&mut self) {
        if let Reader::Lines { job, .. } = &mut self.rx {
            *job = None;
        }
    }

    /// Whether the worker already said more than the job's one answer (lines mode): it is
    /// out of step, and the next job would get this job's leftovers.
    pub fn has_leftovers(&mut self) -> bool {
        match &mut self.rx {
            Reader::Lines { stdout, .. } => stdout.line_waiting(),
            _ => false,
        }
    }

    /// The soft deadline: a `Cleanup` frame, or `signal` to the process group; then
    /// SIGCONT, so that a stopped worker can act on it.
    pub fn request_cleanup(&mut self, job: u64, grace_ms: u64, process: &Process, signal: Signal) {
        match self.rx {
            Reader::Frames(_) => {
                let _ = self
                    .tx
                    .send_frame(&self.codec, &ToWorker::Cleanup { job, grace_ms });
                // A worker that has gone needs no waking (ESRCH, logged by `ask`).
                let _ = process.ask(None);
            }
            Reader::Lines { .. } | Reader::Output(_) => {
                let _ = process.ask(Some(signal));
            }
        }
    }

    /// Asks an idle worker to exit: `Shutdown` and end of file on fd 3, or end of file on
    /// stdin.
    pub fn shut_down(&mut self) {
        if let Reader::Frames(_) = self.rx {
            let _ = self.tx.send_frame(&self.codec, &ToWorker::Shutdown);
        }
        self.tx.close_when_flushed();
    }

    /// The whole output of an exec job.
    pub fn take_output(&mut self) -> Vec<u8> {
        match &mut self.rx {
            Reader::Output(capture) => {
                let _ = capture.read_now();
                capture.take()
            }
            _ => Vec::new(),
        }
    }
}

impl Reader {
    /// The next message; `Ok(None)` at the end of the stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<FromWorker>, LinkError> {
        match self {
            Reader::Frames(inbox) => inbox
                .next()
                .await
                .map_err(|e| LinkError::Protocol(e.to_string())),
            Reader::Lines { stdout, job } => match stdout.next().await {
                Ok(line) => Ok(line.map(|l| line_result(*job, l))),
                Err(e) => Err(LinkError::Overflow(e.to_string())),
            },
            Reader::Output(capture) => match capture.read_to_end().await {
                Ok(()) => Ok(None),
                Err(e) => Err(LinkError::Overflow(e.to_string())),
            },
        }
    }
}

/// A line read from a line worker, as the result of the job it runs (job 0: none, which
/// the worker task treats as output nobody asked for).
fn line_result(job: Option<u64>, line: Vec<u8>) -> FromWorker {
    FromWorker::Done {
        job: job.unwrap_or(0),
        result: JobResult::Ok(line),
    }
}

/// The arguments of an exec job, with GNU parallel's placeholders replaced inside any
/// argument, with no shell and no re-splitting: `{}` the payload, `{.}` it without its
/// extension, `{/}` its last path component, `{//}` its directory (`.` when it has none),
/// `{/.}` the last component without its extension; `{#}` the job's line number and `{id}`
/// its id.
pub fn substitute(args: &[OsString], job: &JobSpec) -> Vec<OsString> {
    let seq = job.seq.to_string();
    let path = PathParts::of(&job.payload);
    // Longest first where one placeholder starts another (`{//}` and `{/.}` before `{/}`).
    let table: [(&[u8], &[u8]); 7] = [
        (b"{}", &job.payload),
        (b"{.}", path.without_extension),
        (b"{//}", path.dir),
        (b"{/.}", path.stem),
        (b"{/}", path.name),
        (b"{#}", seq.as_bytes()),
        (b"{id}", job.id.as_bytes()),
    ];
    args.iter()
        .map(|arg| {
            let bytes = arg.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                let rest = &bytes[i..];
                match table.iter().find(|(p, _)| rest.starts_with(p)) {
                    Some((p, with)) => {
                        out.extend_from_slice(with);
                        i += p.len();
                    }
                    None => {
                        out.push(rest[0]);
                        i += 1;
                    }
                }
            }
            OsStr::from_bytes(&out).to_os_string()
        })
        .collect()
}

/// A payload read as a path, cut as GNU parallel cuts it.
struct PathParts<'a> {
    /// Everything before the last `/` (`/` for a file in the root, `.` with no `/`).
    dir: &'a [u8],
    /// The last component.
    name: &'a [u8],
    /// The last component without its extension.
    stem: &'a [u8],
    /// The whole path without the last component's extension.
    without_extension: &'a [u8],
}

impl<'a> PathParts<'a> {
    fn of(path: &'a [u8]) -> PathParts<'a> {
        let slash = path.iter().rposition(|&b| b == b'/');
        let (dir, name): (&[u8], &[u8]) = match slash {
            None => (b".", path),
            Some(0) => (b"/", &path[1..]),
            Some(i) => (&path[..i], &path[i + 1..]),
        };
        // A leading dot names a hidden file, not an extension (`.bashrc` stays whole).
        let ext = match name.iter().rposition(|&b| b == b'.') {
            Some(dot) if dot > 0 => name.len() - dot,
            _ => 0,
        };
        PathParts {
            dir,
            name,
            stem: &name[..name.len() - ext],
            without_extension: &path[..path.len() - ext],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_inside_arguments_without_splitting() {
        let job = JobSpec {
            id: "img-3".into(),
            payload: b"a b; rm -rf /".to_vec(),
            ..JobSpec::sample(7)
        };
        let args: Vec<OsString> = ["-o", "out-{#}-{id}.png", "{}", "{x}", "{}{}"]
            .iter()
            .map(OsString::from)
            .collect();
        let got = substitute(&args, &job);
        let want: Vec<OsString> = [
            "-o",
            "out-7-img-3.png",
            "a b; rm -rf /",
            "{x}",
            "a b; rm -rf /a b; rm -rf /",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn path_placeholders_cut_the_payload_as_gnu_parallel_does() {
        let cut = |payload: &str, arg: &str| {
            let job = JobSpec {
                payload: payload.as_bytes().to_vec(),
                ..JobSpec::sample(1)
            };
            substitute(&[OsString::from(arg)], &job)[0]
                .to_string_lossy()
                .into_owned()
        };
        let all = "{.}|{/}|{//}|{/.}";
        assert_eq!(
            cut("dir/sub/a.tar.gz", all),
            "dir/sub/a.tar|a.tar.gz|dir/sub|a.tar"
        );
        assert_eq!(cut("a.png", all), "a|a.png|.|a");
        assert_eq!(cut("/a.png", all), "/a|a.png|/|a");
        assert_eq!(cut("dir.d/README", all), "dir.d/README|README|dir.d|README");
        assert_eq!(cut("dir/.bashrc", all), "dir/.bashrc|.bashrc|dir|.bashrc");
        assert_eq!(cut("", all), "||.|");
        // Not placeholders: left as they are.
        assert_eq!(cut("x", "{..}{/x}{"), "{..}{/x}{");
    }
}
