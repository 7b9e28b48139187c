//! One worker process, owned by one task: an actor behind a [`WorkerHandle`].
//!
//! The pool talks to a worker only through [`Control`] messages and hears back only through
//! [`Event`]s. The task owns the process, its pipes and its private directory, and is the
//! only one that decides a job's outcome, by the one rule of DESIGN.md:
//!
//! - a result read before `ttl` → `ok` or `failed`;
//! - at `ttl` the cleanup request goes out and the outcome can only be `timeout` (the worker
//!   acknowledged, or exited, before `ttl + cleanup`) or `killed` (it did not; its group gets
//!   SIGKILL at `ttl + cleanup`); a result that arrives in between is kept but changes
//!   nothing;
//! - the worker dying or breaking the protocol mid-job → `crashed`.
//!
//! A passed deadline is handled before anything else the task could do, so a worker that
//! floods the protocol pipe cannot postpone its own kill.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobsup_protocol::{check_version, Codec, FrameError, FromWorker, Job, JobResult, ToWorker};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::conn::{Inbox, Outbox};
use crate::drain::{self, Origin, Tail};
use crate::process::Process;
use crate::reaper::Exit;
use crate::record::{JobSpec, Outcome, Record};
use crate::sandbox::{SpawnError, SpawnSpec, Spawner};

/// Frames taken from the pipe at once when a deadline passes or the worker exits.
const READY_BUDGET: usize = 1024;

/// What every worker of a pool is started with.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The processor and its arguments (the worker id is filled in per worker).
    pub spawn: SpawnSpec,
    /// How long a new worker may take to say hello.
    pub start_timeout: Duration,
    /// Retire a worker after this many jobs.
    pub max_jobs: Option<u64>,
    /// How long a retiring idle worker may take to exit before it is killed.
    pub retire_grace: Duration,
    /// The protocol codec.
    pub codec: Codec,
}

/// Pool → worker.
#[derive(Debug)]
pub enum Control {
    /// Run this job (the worker is idle).
    Run(JobSpec),
    /// Abandon the running job at once: cleanup request and kill together.
    Cancel(String),
    /// Exit when idle.
    Shutdown,
}

/// Worker → pool.
#[derive(Debug)]
pub enum Event {
    /// The worker completed its handshake and is idle.
    Ready {
        /// Which worker.
        worker: u64,
    },
    /// A job ended; `retiring` says the worker will not take another one.
    Finished {
        /// Which worker.
        worker: u64,
        /// The job's record.
        record: Box<Record>,
        /// Whether the worker is going away.
        retiring: bool,
    },
    /// A job was handed to a worker that had already died: run it elsewhere.
    Bounced {
        /// Which worker.
        worker: u64,
        /// The job, untouched.
        job: Box<JobSpec>,
    },
    /// The worker's process is gone and the task has ended.
    Exited {
        /// Which worker.
        worker: u64,
        /// Set when it never completed its handshake.
        start_error: Option<StartError>,
    },
}

/// Why a worker never became ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be started at all.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// It exited before saying hello.
    #[error("processor {program} exited during its handshake ({exit}); is it a jobsup processor? For other programs use --mode lines or --mode exec{stderr}")]
    ExitedEarly {
        /// The program.
        program: String,
        /// How it ended.
        exit: Exit,
        /// The last lines of its stderr, formatted for the message.
        stderr: String,
    },
    /// It did not say hello in time.
    #[error("processor {program} did not complete its handshake within {timeout:?}; is it a jobsup processor? For other programs use --mode lines or --mode exec{stderr}")]
    NoHello {
        /// The program.
        program: String,
        /// The start timeout.
        timeout: Duration,
        /// The last lines of its stderr, formatted for the message.
        stderr: String,
    },
    /// It said something other than a valid hello.
    #[error("processor {program} broke the handshake: {reason}")]
    Handshake {
        /// The program.
        program: String,
        /// What was wrong.
        reason: String,
    },
}

/// The pool's handle on a worker task.
pub struct WorkerHandle {
    tx: mpsc::UnboundedSender<Control>,
}

impl WorkerHandle {
    /// Starts worker number `id` in a task of its own.
    pub fn start(
        id: u64,
        settings: Arc<WorkerSettings>,
        spawner: Spawner,
        events: mpsc::UnboundedSender<Event>,
    ) -> WorkerHandle {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            match Worker::start(id, settings, &spawner, rx, events.clone()).await {
                Ok(worker) => worker.serve().await,
                Err(e) => {
                    let _ = events.send(Event::Exited {
                        worker: id,
                        start_error: Some(e),
                    });
                }
            }
        });
        WorkerHandle { tx }
    }

    /// Sends a control message; gives it back if the worker is gone.
    pub fn send(&self, msg: Control) -> Result<(), Control> {
        self.tx.send(msg).map_err(|e| e.0)
    }
}

/// How a job's run ended, before the worker process has been dealt with.
enum Verdict {
    /// A result before `ttl`.
    Returned(JobResult),
    /// Cleaned up in time (acknowledged or exited); maybe with a late result.
    TimedOut(Option<JobResult>),
    /// The hard deadline passed.
    Killed(Option<JobResult>),
    /// The worker died, or broke the protocol.
    Crashed(Crash),
    /// The run was interrupted.
    Cancelled(String),
}

/// What made a job `crashed`.
enum Crash {
    /// The process exited mid-job.
    Died,
    /// It closed its result pipe mid-job (it usually exits a moment later).
    PipeClosed,
    /// It broke the protocol; the text says how.
    Protocol(String),
}

/// Where a job stands on its clock.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Before `ttl`.
    Running { ttl_at: Instant, kill_at: Instant },
    /// The cleanup request went out.
    CleaningUp { kill_at: Instant },
}

impl Phase {
    fn deadline(&self) -> Instant {
        match *self {
            Phase::Running { ttl_at, .. } => ttl_at,
            Phase::CleaningUp { kill_at } => kill_at,
        }
    }
}

struct Worker {
    id: u64,
    settings: Arc<WorkerSettings>,
    process: Process,
    inbox: Inbox,
    outbox: Outbox,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::UnboundedSender<Event>,
    current_job: Arc<AtomicU64>,
    jobs_done: u64,
    /// The job this worker finished last: a late duplicate about it is ignored, not blamed
    /// on the job that runs now.
    last_job: Option<u64>,
    // Removed when the worker is dropped, after its process is gone.
    _workdir: tempfile::TempDir,
}

impl Worker {
    async fn start(
        id: u64,
        settings: Arc<WorkerSettings>,
        spawner: &Spawner,
        control: mpsc::UnboundedReceiver<Control>,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Worker, StartError> {
        let mut spec = settings.spawn.clone();
        spec.worker_id = id;
        let program = spec.program.display().to_string();
        let spawned = spawner.spawn(spec).await?;
        let pid = spawned.pid;
        let mut process = Process::new(pid, spawned.exit);
        let io = |e: std::io::Error| {
            StartError::Spawn(SpawnError::Other {
                program: program.clone(),
                source: e,
            })
        };
        let pipes = Inbox::new(spawned.results, settings.codec)
            .and_then(|i| Ok((i, Outbox::new(spawned.jobs, settings.codec)?)));
        let (mut inbox, outbox) = match pipes {
            Ok(p) => p,
            Err(e) => {
                process.end(Duration::ZERO).await;
                return Err(io(e));
            }
        };
        let current_job = Arc::new(AtomicU64::new(0));
        let origin = Origin {
            worker: id,
            pid,
            job: Arc::clone(&current_job),
        };
        let tail = Tail::default();
        drain::spawn(spawned.stdout, "stdout", origin.clone(), None);
        drain::spawn(spawned.stderr, "stderr", origin, Some(tail.clone()));

        enum Greeting {
            Frame(Result<Option<FromWorker>, FrameError>),
            Exited,
            Silent,
        }
        let greeting = tokio::select! {
            biased;
            msg = inbox.next() => Greeting::Frame(msg),
            _ = process.exited() => Greeting::Exited,
            _ = tokio::time::sleep(settings.start_timeout) => Greeting::Silent,
        };
        let handshake = |reason: String| StartError::Handshake {
            program: program.clone(),
            reason,
        };
        let closed_pipe = matches!(greeting, Greeting::Frame(Ok(None)));
        let failure = match greeting {
            Greeting::Frame(Ok(Some(FromWorker::Hello { version, .. }))) => {
                match check_version(version) {
                    Ok(()) => {
                        tracing::debug!(worker = id, pid, "worker ready");
                        return Ok(Worker {
                            id,
                            settings,
                            process,
                            inbox,
                            outbox,
                            control,
                            events,
                            current_job,
                            jobs_done: 0,
                            last_job: None,
                            _workdir: spawned.workdir,
                        });
                    }
                    Err(e) => Some(handshake(e.to_string())),
                }
            }
            Greeting::Frame(Ok(Some(other))) => Some(handshake(format!(
                "expected a hello frame first, got {}",
                frame_name(&other)
            ))),
            Greeting::Frame(Err(e)) => Some(handshake(format!("protocol error: {e}"))),
            // It closed its pipe or exited: the exit status and stderr tell the rest.
            Greeting::Frame(Ok(None)) | Greeting::Exited => None,
            Greeting::Silent => None,
        };
        // A process that closed its pipe has usually exited; give it a moment to say how.
        let grace = if failure.is_none() && closed_pipe {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let (exit, killed) = process.end(grace).await;
        if let Some(failure) = failure {
            return Err(failure);
        }
        // Let the stderr drain catch up with what the process wrote before it ended.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let stderr = match tail.text() {
            t if t.is_empty() => String::new(),
            t => format!("\nits stderr ends with:\n{t}"),
        };
        Err(if killed {
            StartError::NoHello {
                program,
                timeout: settings.start_timeout,
                stderr,
            }
        } else {
            StartError::ExitedEarly {
                program,
                exit,
                stderr,
            }
        })
    }

    /// Serves jobs until retired, then ends the process and reports.
    async fn serve(mut self) {
        let _ = self.events.send(Event::Ready { worker: self.id });
        loop {
            tokio::select! {
                biased;
                ctl = self.control.recv() => match ctl {
                    Some(Control::Run(job)) => {
                        if self.process.exit().is_some() {
                            let _ = self.events.send(Event::Bounced { worker: self.id, job: Box::new(job) });
                            break;
                        }
                        let (record, reusable) = self.run_job(job).await;
                        self.jobs_done += 1;
                        self.last_job = Some(record.seq);
                        let retiring = !reusable
                            || self.settings.max_jobs.is_some_and(|max| self.jobs_done >= max);
                        let _ = self.events.send(Event::Finished {
                            worker: self.id,
                            record: Box::new(record),
                            retiring,
                        });
                        if retiring {
                            break;
                        }
                    }
                    Some(Control::Cancel(_)) => {}
                    Some(Control::Shutdown) | None => break,
                },
                msg = self.inbox.next(), if !self.inbox.at_eof() => match msg {
                    Ok(Some(FromWorker::Heartbeat { .. } | FromWorker::Progress { .. })) => {}
                    Ok(Some(msg)) if self.is_stale(&msg) => {}
                    Ok(Some(other)) => {
                        tracing::warn!(worker = self.id, pid = self.process.pid(),
                            "worker sent {} while idle; replacing it", frame_name(&other));
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(worker = self.id, pid = self.process.pid(),
                            "protocol error from an idle worker: {e}; replacing it");
                        break;
                    }
                },
                exit = self.process.exited() => {
                    tracing::warn!(worker = self.id, pid = self.process.pid(),
                        "worker exited while idle ({exit}); replacing it");
                    break;
                }
            }
        }
        self.retire().await;
    }

    /// Ends the process (politely if it is still there), bounces any job that arrived in
    /// the meantime, and reports the worker gone.
    async fn retire(mut self) {
        let _ = self.outbox.send(&ToWorker::Shutdown);
        self.outbox.close();
        self.process.end(self.settings.retire_grace).await;
        self.control.close();
        while let Some(ctl) = self.control.recv().await {
            if let Control::Run(job) = ctl {
                let _ = self.events.send(Event::Bounced {
                    worker: self.id,
                    job: Box::new(job),
                });
            }
        }
        let _ = self.events.send(Event::Exited {
            worker: self.id,
            start_error: None,
        });
    }

    /// Runs one job to its verdict, then settles the process. Returns the record and
    /// whether the worker can take another job.
    async fn run_job(&mut self, job: JobSpec) -> (Record, bool) {
        let started = Instant::now();
        self.current_job.store(job.seq, Ordering::Relaxed);
        let ttl_at = started + job.ttl;
        let mut phase = Phase::Running {
            ttl_at,
            kill_at: ttl_at + job.cleanup,
        };
        let frame = ToWorker::Job(Job {
            id: job.seq,
            key: job.id.clone(),
            payload: job.payload.clone(),
            attempt: 1,
            ttl_ms: job.ttl.as_millis() as u64,
        });
        let verdict = match self.outbox.send(&frame) {
            Err(e) => Verdict::Crashed(Crash::Protocol(format!("cannot send the job: {e}"))),
            Ok(()) => self.await_verdict(&job, &mut phase).await,
        };
        self.current_job.store(0, Ordering::Relaxed);
        self.settle(&job, started, verdict).await
    }

    async fn await_verdict(&mut self, job: &JobSpec, phase: &mut Phase) -> Verdict {
        let mut late = None;
        loop {
            if Instant::now() >= phase.deadline() {
                // A frame already sitting in the pipe at the deadline was sent in time.
                if let Some(v) = self.take_ready(job, *phase, &mut late) {
                    return v;
                }
                match *phase {
                    Phase::Running { kill_at, .. } => {
                        self.request_cleanup(job, kill_at);
                        *phase = Phase::CleaningUp { kill_at };
                    }
                    Phase::CleaningUp { .. } => return Verdict::Killed(late),
                }
                continue;
            }
            tokio::select! {
                biased;
                ctl = self.control.recv() => match ctl {
                    Some(Control::Cancel(reason)) => return Verdict::Cancelled(reason),
                    Some(Control::Run(other)) => {
                        // The pool only hands jobs to idle workers; never lose one anyway.
                        tracing::error!(worker = self.id, "job handed to a busy worker; bouncing it");
                        let _ = self.events.send(Event::Bounced { worker: self.id, job: Box::new(other) });
                    }
                    // Shutdown waits for the job; a closed channel means the pool is gone.
                    Some(Control::Shutdown) | None => {}
                },
                _ = sleep_until(phase.deadline()) => {}
                _ = self.outbox.writable(), if self.outbox.has_pending() => self.outbox.write_some(),
                msg = self.inbox.next(), if !self.inbox.at_eof() => {
                    if let Some(v) = self.on_message(msg, job, *phase, &mut late) {
                        return v;
                    }
                }
                _ = self.process.exited() => {
                    // Frames it wrote before dying are still in the pipe.
                    if let Some(v) = self.take_ready(job, *phase, &mut late) {
                        return v;
                    }
                    return match phase {
                        Phase::Running { .. } => Verdict::Crashed(Crash::Died),
                        // Exiting is finishing the cleanup.
                        Phase::CleaningUp { .. } => Verdict::TimedOut(late),
                    };
                }
            }
        }
    }

    /// Acts on the frames already in the pipe, a bounded number of them so that a worker
    /// flooding the pipe cannot hold the task.
    fn take_ready(
        &mut self,
        job: &JobSpec,
        phase: Phase,
        late: &mut Option<JobResult>,
    ) -> Option<Verdict> {
        for _ in 0..READY_BUDGET {
            match self.inbox.try_next() {
                Ok(None) => return None,
                msg => {
                    if let Some(v) = self.on_message(msg, job, phase, late) {
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    /// One frame (or the end of the stream) while a job runs.
    fn on_message(
        &mut self,
        msg: Result<Option<FromWorker>, FrameError>,
        job: &JobSpec,
        phase: Phase,
        late: &mut Option<JobResult>,
    ) -> Option<Verdict> {
        let cleaning = matches!(phase, Phase::CleaningUp { .. });
        let msg = match msg {
            Ok(Some(msg)) => msg,
            // The pipe closed: the exit (or the deadline) will say what happened, unless
            // the worker keeps running without it, which is a crash.
            Ok(None) if cleaning => return None,
            Ok(None) => return Some(Verdict::Crashed(Crash::PipeClosed)),
            Err(e) => {
                return Some(Verdict::Crashed(Crash::Protocol(format!(
                    "protocol error from worker {} (pid {}): {e}",
                    self.id,
                    self.process.pid()
                ))))
            }
        };
        if self.is_stale(&msg) {
            return None;
        }
        let wrong = |what: &str, got: u64| {
            Some(Verdict::Crashed(Crash::Protocol(format!(
                "protocol error from worker {} (pid {}): {what} for job {got}, but job {} is running",
                self.id,
                self.process.pid(),
                job.seq
            ))))
        };
        match msg {
            FromWorker::Heartbeat { job: j } | FromWorker::Progress { job: j, .. } => {
                if j != job.seq {
                    return wrong("heartbeat", j);
                }
                None
            }
            FromWorker::Done { job: j, result } => {
                if j != job.seq {
                    return wrong("result", j);
                }
                if cleaning {
                    *late = Some(result);
                    None
                } else {
                    Some(Verdict::Returned(result))
                }
            }
            FromWorker::CleanupDone { job: j } => {
                if j != job.seq {
                    return wrong("cleanup acknowledgement", j);
                }
                if cleaning {
                    Some(Verdict::TimedOut(late.take()))
                } else {
                    Some(Verdict::Crashed(Crash::Protocol(format!(
                        "protocol error from worker {} (pid {}): cleanup acknowledged before any request",
                        self.id,
                        self.process.pid()
                    ))))
                }
            }
            FromWorker::Hello { .. } => Some(Verdict::Crashed(Crash::Protocol(format!(
                "protocol error from worker {} (pid {}): hello in the middle of a job",
                self.id,
                self.process.pid()
            )))),
        }
    }

    /// Whether `msg` is about the job this worker finished before (a duplicate result, a
    /// late heartbeat): logged and ignored.
    fn is_stale(&self, msg: &FromWorker) -> bool {
        let about = match msg {
            FromWorker::Hello { .. } => return false,
            FromWorker::Heartbeat { job }
            | FromWorker::Progress { job, .. }
            | FromWorker::Done { job, .. }
            | FromWorker::CleanupDone { job } => *job,
        };
        let stale = self.last_job == Some(about);
        if stale {
            tracing::warn!(
                worker = self.id,
                pid = self.process.pid(),
                job = about,
                "ignoring {} about a job that already ended",
                frame_name(msg)
            );
        }
        stale
    }

    /// The soft deadline: ask the worker to clean up.
    fn request_cleanup(&mut self, job: &JobSpec, kill_at: Instant) {
        let grace_ms = kill_at
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        tracing::debug!(
            worker = self.id,
            job = job.seq,
            "ttl reached; cleanup requested"
        );
        let _ = self.outbox.send(&ToWorker::Cleanup {
            job: job.seq,
            grace_ms,
        });
        // A stopped worker could not read the request.
        signal_cont(self.process.pid());
    }

    /// Turns a verdict into the job's record, ending the process where the verdict says
    /// it cannot be reused.
    async fn settle(
        &mut self,
        job: &JobSpec,
        started: Instant,
        verdict: Verdict,
    ) -> (Record, bool) {
        let mut record = Record::new(job, Outcome::Ok);
        record.worker = Some(self.id);
        record.pid = Some(self.process.pid());
        let decided = started.elapsed();
        let mut crash_cause = None;
        let (outcome, result, error, reusable) = match verdict {
            Verdict::Returned(result) => {
                let alive = self.process.exit().is_none();
                let outcome = match result {
                    JobResult::Ok(_) => Outcome::Ok,
                    JobResult::Failed(_) => Outcome::Failed,
                };
                (outcome, Some(result), None, alive)
            }
            Verdict::TimedOut(late) => (
                Outcome::Timeout,
                late,
                Some(format!(
                    "ttl of {} reached; the worker cleaned up in time",
                    humantime::format_duration(job.ttl)
                )),
                false,
            ),
            Verdict::Killed(late) => (
                Outcome::Killed,
                late,
                Some(format!(
                    "ttl of {} and cleanup of {} passed; process group killed",
                    humantime::format_duration(job.ttl),
                    humantime::format_duration(job.cleanup)
                )),
                false,
            ),
            Verdict::Crashed(crash) => {
                crash_cause = Some(crash);
                (Outcome::Crashed, None, None, false)
            }
            Verdict::Cancelled(reason) => (Outcome::Cancelled, None, Some(reason), false),
        };
        record.outcome = outcome;
        match result {
            Some(JobResult::Ok(out)) => record.set_output(out),
            Some(JobResult::Failed(msg)) => {
                record.error = Some(match record.error.take() {
                    None => msg,
                    Some(e) => format!("{e}; the job said: {msg}"),
                })
            }
            None => {}
        }
        if let Some(e) = error {
            record.error = Some(match record.error.take() {
                None => e,
                Some(prev) => format!("{e}; {prev}"),
            });
        }
        if reusable {
            record.set_duration(decided);
            return (record, true);
        }
        // The one place a job's worker is ended: how long it may still take depends on
        // why it is ending.
        let grace = match outcome {
            // A clean-up acknowledged: let it exit, but never past the hard deadline.
            Outcome::Timeout => {
                (started + job.ttl + job.cleanup).saturating_duration_since(Instant::now())
            }
            // It returned a result but died doing so, or is gone already.
            Outcome::Ok | Outcome::Failed => Duration::ZERO,
            // A pipe closed mid-job: the exit status is a moment away.
            Outcome::Crashed if matches!(crash_cause, Some(Crash::PipeClosed)) => {
                self.settings.retire_grace.min(Duration::from_secs(1))
            }
            _ => Duration::ZERO,
        };
        let (exit, killed_now) = self.process.end(grace).await;
        record.set_exit(exit);
        match outcome {
            Outcome::Killed | Outcome::Crashed => record.set_duration(started.elapsed()),
            _ => record.set_duration(decided),
        }
        if let Some(crash) = crash_cause {
            record.error = Some(match crash {
                Crash::Died => format!("worker exited mid-job: {exit}"),
                Crash::PipeClosed if killed_now => {
                    "worker closed its result pipe mid-job and kept running; killed".into()
                }
                Crash::PipeClosed => format!("worker exited mid-job: {exit}"),
                Crash::Protocol(msg) if killed_now => format!("{msg}; worker killed"),
                Crash::Protocol(msg) => format!("{msg}; worker ended with {exit}"),
            });
        }
        (record, false)
    }
}

fn signal_cont(pid: i32) {
    crate::sandbox::signal_group(pid, nix::sys::signal::Signal::SIGCONT);
}

fn frame_name(msg: &FromWorker) -> &'static str {
    match msg {
        FromWorker::Hello { .. } => "a hello",
        FromWorker::Heartbeat { .. } => "a heartbeat",
        FromWorker::Progress { .. } => "a progress report",
        FromWorker::Done { .. } => "a result",
        FromWorker::CleanupDone { .. } => "a cleanup acknowledgement",
    }
}
