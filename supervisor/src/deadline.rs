//! The deadline rules of DESIGN.md as a state machine: one job on one worker, from hand-off
//! to verdict.
//!
//! [`JobRun`] takes what happened ([`Input`]) with the instant it is judged at, and says
//! what to do next ([`Act`]). It does no I/O and reads no clock: the worker task around it
//! (`run.rs`) moves bytes, sleeps until [`JobRun::next_timer`], and carries out the acts.
//! So every rule, and every race between them, is unit-tested here with made-up instants.
//!
//! ```text
//!             Taken / grace over           ttl or idle timeout          kill_at
//!   Handed ───────────────────► Running ───────────────────► CleaningUp ───────► Over (killed)
//!     │ (lines mode, first job)   │ result → Over (ok/failed)   │ ack / exit → Over (timeout)
//!     │                           │ exit, closed pipe, garbage  │ result → kept, not obeyed
//!     └───────────────────────────┴──► Over (crashed, or unseen: run elsewhere)
//! ```
//!
//! The rules:
//!
//! - **One rule for the finish-vs-deadline race**: a result counts if it is taken in before
//!   the cleanup request goes out. The shell feeds every message already in the pipe before
//!   a [`Input::Tick`] that passes a deadline ("whatever was in the pipe at the deadline was
//!   sent in time"); after the request, only `timeout` or `killed` are possible, and a late
//!   result is kept for the record.
//! - The clock starts when the worker is ready: at hand-off, except for the first job of a
//!   line worker, whose clock starts when it takes the line off its pipe ([`Input::Taken`]),
//!   or when the start-up grace (`--start-timeout`) ends, whichever comes first.
//! - A ttl of 0 is no deadline (as GNU `timeout`); a cleanup of 0 is SIGKILL at the ttl, with
//!   no cleanup request. The idle timeout is a second running deadline, moved by every
//!   heartbeat or progress report.
//! - The CPU-time budget is a hard limit, in every phase: a job whose worker has used it
//!   up ([`Input::CpuUsed`]) is `killed` at once, with no cleanup request, as at the hard
//!   deadline; it overrides a stopping run's `cancelled` too, since the limit, not the stop,
//!   ended the job. What was in the pipe before the measurement is fed first.
//! - A message about the job that ran before on this worker is stale: ignored, not blamed
//!   on this job. A message about any other job, a hello, or an acknowledgement nobody
//!   asked for is a protocol error: `crashed`.

use std::time::Duration;

use jobsup_protocol::{FromWorker, JobResult};
use tokio::time::Instant;

use crate::link::LinkError;
use crate::live::frame_name;
use crate::reaper::Exit;
use crate::record::Outcome;

/// A job's deadlines, as configured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Time before the cleanup request; `None` (a ttl of 0) is no deadline.
    pub ttl: Option<Duration>,
    /// Time from the cleanup request to the hard kill; zero kills at the ttl.
    pub cleanup: Duration,
    /// No heartbeat or progress for this long counts as the ttl passing.
    pub idle: Option<Duration>,
    /// Warn once when the job has run this long.
    pub slow: Option<Duration>,
    /// The job ends by its process exiting (exec mode) rather than with a message.
    pub ends_by_exit: bool,
    /// Wait up to this long for the worker to take the job before the clock starts (the
    /// first job of a line worker).
    pub start_grace: Option<Duration>,
    /// The job's CPU-time budget (`--cpu-time` in a reused worker), measured by the shell
    /// and reported as [`Input::CpuUsed`]; `None` where there is none, or where an rlimit
    /// holds it (exec mode).
    pub cpu: Option<Duration>,
}

/// What happened to a running job.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    /// The worker said something (lines and exec output are translated to messages).
    Said(FromWorker),
    /// The worker's output ended; `unseen` when it never took the job off its pipe.
    Closed { unseen: bool },
    /// The worker broke the protocol, or wrote more than `--max-output`.
    Broke(LinkError),
    /// The process exited; `unseen` as for [`Input::Closed`].
    Exited { exit: Exit, unseen: bool },
    /// The worker took the job off its pipe (watched only during a start-up grace).
    Taken,
    /// The run is stopping: clean up now, killed after `grace`, recorded `cancelled`.
    Stop { reason: String, grace: Duration },
    /// A timer fired: apply the deadlines that passed.
    Tick,
    /// The worker's tree has used this much CPU time on this job so far.
    CpuUsed(Duration),
}

/// What the worker task does next.
#[derive(Debug)]
pub(crate) enum Act {
    /// Nothing: wait for the next input or [`JobRun::next_timer`].
    Wait,
    /// Ask the worker to clean up; it is killed after `grace`.
    RequestCleanup { grace: Duration },
    /// Warn that the job is still running after `after`.
    WarnSlow { after: Duration },
    /// Log and drop a message about the job that ran before.
    IgnoreStale(&'static str),
    /// The run is over; the worker task settles the process and writes the record.
    Finish { verdict: Verdict, trigger: Trigger },
}

/// How a job's run ended, before the worker process has been dealt with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// A result before the cleanup request.
    Returned(JobResult),
    /// An exec job's process exited before the cleanup request.
    Exited(Exit),
    /// Cleaned up in time (acknowledged, or exited); maybe with a late result.
    TimedOut(Option<JobResult>),
    /// The hard deadline passed (or the cleanup window was 0).
    Killed(Option<JobResult>),
    /// The worker died, or broke the protocol.
    Crashed(Crash),
    /// The output went past `--max-output`.
    Overflow(String),
    /// The worker died without ever taking the job: it can run elsewhere.
    Unseen,
}

impl Verdict {
    /// The outcome DESIGN.md gives this verdict: a stopping run turns the deadline
    /// outcomes into `cancelled`; after the cleanup request only `timeout` and `killed`
    /// are left.
    pub(crate) fn outcome(&self, trigger: &Trigger) -> Outcome {
        match self {
            Verdict::Returned(JobResult::Ok(_)) | Verdict::Exited(Exit::Code(0)) => Outcome::Ok,
            Verdict::Returned(JobResult::Failed(_))
            | Verdict::Exited(Exit::Code(_))
            | Verdict::Overflow(_) => Outcome::Failed,
            Verdict::TimedOut(_) | Verdict::Killed(_) if matches!(trigger, Trigger::Stop(_)) => {
                Outcome::Cancelled
            }
            Verdict::TimedOut(_) => Outcome::Timeout,
            Verdict::Killed(_) => Outcome::Killed,
            // A signal jobsup did not send.
            Verdict::Exited(Exit::Signal(_)) | Verdict::Crashed(_) => Outcome::Crashed,
            // Never recorded: the job is handed to another worker.
            Verdict::Unseen => Outcome::Cancelled,
        }
    }
}

/// What made a job `crashed`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Crash {
    /// The process exited mid-job.
    Died,
    /// It closed its result pipe mid-job (it usually exits a moment later).
    PipeClosed,
    /// It broke the protocol; the text says how.
    Protocol(String),
}

/// What made jobsup ask a job to clean up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Trigger {
    /// Nothing: the job ended on its own.
    None,
    /// Its ttl passed.
    Ttl,
    /// No heartbeat or progress for the idle timeout.
    Idle,
    /// The run is stopping; the text says why.
    Stop(String),
    /// The job used up its CPU-time budget.
    Cpu,
}

/// Where the job stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Handed over; the clock starts when the worker takes it, or at `by`.
    Handed { by: Instant },
    /// The clock runs.
    Running,
    /// The cleanup request went out (or the run is stopping); killed at `kill_at`.
    CleaningUp { kill_at: Instant },
    /// The verdict was given.
    Over,
}

/// One job on one worker: the deadline rules, fed one input at a time.
#[derive(Debug)]
pub(crate) struct JobRun {
    rules: Rules,
    /// The protocol's id for this hand-off.
    job: u64,
    /// The hand-off before it on the same worker: messages about it are stale.
    previous: Option<u64>,
    phase: Phase,
    /// When the clock started (the hand-off, until a start-up grace ends).
    started: Instant,
    /// The last sign of life: start, heartbeat, progress.
    activity: Instant,
    /// When to warn that the job is slow (cleared once warned).
    slow_at: Option<Instant>,
    /// A result that came after the cleanup request.
    late: Option<JobResult>,
    trigger: Trigger,
}

impl JobRun {
    /// A job handed to its worker at `now`.
    pub(crate) fn new(rules: Rules, job: u64, previous: Option<u64>, now: Instant) -> JobRun {
        let mut run = JobRun {
            rules,
            job,
            previous,
            phase: Phase::Running,
            started: now,
            activity: now,
            slow_at: None,
            late: None,
            trigger: Trigger::None,
        };
        match rules.start_grace {
            Some(grace) => run.phase = Phase::Handed { by: now + grace },
            None => run.start_clock(now),
        }
        run
    }

    fn start_clock(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.started = now;
        self.activity = now;
        self.slow_at = self.rules.slow.map(|d| now + d);
    }

    /// The rules it applies.
    pub(crate) fn rules(&self) -> &Rules {
        &self.rules
    }

    /// When the clock started: the job's duration counts from here.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Whether the clock waits for the worker to take the job (the shell then watches the
    /// pipe and says [`Input::Taken`]).
    pub(crate) fn awaits_take(&self) -> bool {
        matches!(self.phase, Phase::Handed { .. })
    }

    /// When the cleanup request was sent, or the run stopped, if it was.
    pub(crate) fn cleaning_up(&self) -> bool {
        matches!(self.phase, Phase::CleaningUp { .. })
    }

    /// The next instant at which a [`Input::Tick`] has something to do, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Handed { by } => return Some(by),
            Phase::Running => self.running_deadline().map(|(at, _)| at),
            Phase::CleaningUp { kill_at } => Some(kill_at),
            Phase::Over => return None,
        };
        match (phase, self.slow_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the running phase ends, and what ends it: the ttl, or the idle timeout counted
    /// from the last sign of life, whichever is first.
    fn running_deadline(&self) -> Option<(Instant, Trigger)> {
        let ttl = self.rules.ttl.map(|d| (self.started + d, Trigger::Ttl));
        let idle = self.rules.idle.map(|d| (self.activity + d, Trigger::Idle));
        match (ttl, idle) {
            (Some(t), Some(i)) if i.0 < t.0 => Some(i),
            (Some(t), _) => Some(t),
            (None, i) => i,
        }
    }

    /// Acts on one input, judged at `now`.
    pub(crate) fn on(&mut self, input: Input, now: Instant) -> Act {
        if self.phase == Phase::Over {
            return Act::Wait;
        }
        match input {
            Input::Tick => self.tick(now),
            Input::Taken => {
                if self.awaits_take() {
                    self.start_clock(now);
                }
                Act::Wait
            }
            Input::Stop { reason, grace } => self.stop(reason, grace, now),
            Input::CpuUsed(used) => match self.rules.cpu {
                Some(budget) if used >= budget => {
                    self.trigger = Trigger::Cpu;
                    let late = self.late.take();
                    self.finish(Verdict::Killed(late))
                }
                _ => Act::Wait,
            },
            Input::Said(msg) => {
                // A worker that answers has certainly taken its job.
                if self.awaits_take() {
                    self.start_clock(now);
                }
                self.said(msg, now)
            }
            Input::Closed { unseen } => {
                // The exit (or the deadline) says what happened; only a worker that goes on
                // running without its result pipe has crashed.
                if self.cleaning_up() || self.rules.ends_by_exit {
                    Act::Wait
                } else if unseen {
                    self.finish(Verdict::Unseen)
                } else {
                    self.finish(Verdict::Crashed(Crash::PipeClosed))
                }
            }
            Input::Broke(LinkError::Protocol(e)) => {
                self.finish(Verdict::Crashed(Crash::Protocol(e)))
            }
            Input::Broke(LinkError::Overflow(e)) => self.finish(Verdict::Overflow(e)),
            Input::Exited { exit, unseen } => {
                let verdict = match self.phase {
                    // Exiting is finishing the cleanup.
                    Phase::CleaningUp { .. } => Verdict::TimedOut(self.late.take()),
                    // An exec job ends by exiting: its status is its result.
                    _ if self.rules.ends_by_exit => Verdict::Exited(exit),
                    _ if unseen => Verdict::Unseen,
                    _ => Verdict::Crashed(Crash::Died),
                };
                self.finish(verdict)
            }
        }
    }

    fn tick(&mut self, now: Instant) -> Act {
        if let Phase::Handed { by } = self.phase {
            if now < by {
                return Act::Wait;
            }
            // The grace is over: the clock runs whether or not the worker took the job.
            self.start_clock(by);
        }
        if let Some(at) = self.slow_at.filter(|at| *at <= now) {
            self.slow_at = None;
            return Act::WarnSlow {
                after: at.saturating_duration_since(self.started),
            };
        }
        match self.phase {
            Phase::Running => match self.running_deadline() {
                Some((at, why)) if at <= now => {
                    self.trigger = why;
                    if self.rules.cleanup.is_zero() {
                        return self.finish(Verdict::Killed(None));
                    }
                    let kill_at = at + self.rules.cleanup;
                    self.phase = Phase::CleaningUp { kill_at };
                    Act::RequestCleanup {
                        grace: kill_at.saturating_duration_since(now),
                    }
                }
                _ => Act::Wait,
            },
            Phase::CleaningUp { kill_at } if kill_at <= now => {
                let late = self.late.take();
                self.finish(Verdict::Killed(late))
            }
            _ => Act::Wait,
        }
    }

    fn stop(&mut self, reason: String, grace: Duration, now: Instant) -> Act {
        let kill_at = now + grace;
        match self.phase {
            // Already cleaning up, and to be killed no later: nothing changes.
            Phase::CleaningUp { kill_at: k } if k <= kill_at => Act::Wait,
            Phase::CleaningUp { .. } => {
                self.phase = Phase::CleaningUp { kill_at };
                self.trigger = Trigger::Stop(reason);
                Act::Wait
            }
            _ => {
                self.trigger = Trigger::Stop(reason);
                if grace.is_zero() {
                    return self.finish(Verdict::Killed(None));
                }
                self.phase = Phase::CleaningUp { kill_at };
                Act::RequestCleanup { grace }
            }
        }
    }

    fn said(&mut self, msg: FromWorker, now: Instant) -> Act {
        let about = match &msg {
            FromWorker::Hello { .. } => None,
            FromWorker::Heartbeat { job }
            | FromWorker::Progress { job, .. }
            | FromWorker::Done { job, .. }
            | FromWorker::CleanupDone { job } => Some(*job),
        };
        if let Some(about) = about.filter(|j| *j != self.job) {
            if Some(about) == self.previous {
                return Act::IgnoreStale(frame_name(&msg));
            }
            let what = match msg {
                FromWorker::Done { .. } => "result",
                FromWorker::CleanupDone { .. } => "cleanup acknowledgement",
                _ => "heartbeat",
            };
            return self.protocol(format!(
                "{what} for job {about}, but job {} is running",
                self.job
            ));
        }
        match msg {
            FromWorker::Heartbeat { .. } | FromWorker::Progress { .. } => {
                self.activity = now;
                Act::Wait
            }
            FromWorker::Done { result, .. } if self.cleaning_up() => {
                self.late = Some(result);
                Act::Wait
            }
            FromWorker::Done { result, .. } => self.finish(Verdict::Returned(result)),
            FromWorker::CleanupDone { .. } if self.cleaning_up() => {
                let late = self.late.take();
                self.finish(Verdict::TimedOut(late))
            }
            FromWorker::CleanupDone { .. } => {
                self.protocol("cleanup acknowledged before any request".into())
            }
            FromWorker::Hello { .. } => self.protocol("hello in the middle of a job".into()),
        }
    }

    fn protocol(&mut self, what: String) -> Act {
        self.finish(Verdict::Crashed(Crash::Protocol(what)))
    }

    fn finish(&mut self, verdict: Verdict) -> Act {
        self.phase = Phase::Over;
        Act::Finish {
            verdict,
            trigger: std::mem::replace(&mut self.trigger, Trigger::None),
        }
    }
}

#[cfg(test)]
mod tests;
