//! Running one job to its outcome: the deadline rules of DESIGN.md, in one place.
//!
//! - a result read before `ttl` → `ok` or `failed` (in exec mode: the process exiting, with
//!   code 0 → `ok`, another code → `failed`, a signal jobsup did not send → `crashed`);
//! - at `ttl` the cleanup request goes out and the outcome can only be `timeout` (the worker
//!   acknowledged, or exited, before `ttl + cleanup`) or `killed` (it did not; its group
//!   gets SIGKILL at `ttl + cleanup`); a result that arrives in between is kept but changes
//!   nothing;
//! - the worker dying or breaking the protocol mid-job → `crashed`; output past
//!   `--max-output` → `failed`.
//!
//! A passed deadline is handled before anything else the task could do, so a worker that
//! floods its pipe cannot postpone its own kill.

use std::sync::atomic::Ordering;
use std::time::Duration;

use jobsup_protocol::{FromWorker, JobResult};
use tokio::time::{sleep_until, Instant};

use crate::cgroup::Hits;
use crate::link::{substitute, LinkError, Mode};
use crate::live::{frame_name, Live};
use crate::reaper::{signal_name, Exit};
use crate::record::{JobSpec, Outcome, Record};
use crate::worker::{Control, Event, Worker};

/// Messages taken from the pipe at once when a deadline passes or the worker exits.
const READY_BUDGET: usize = 1024;

/// How a job's run ended, before the worker process has been dealt with.
enum Verdict {
    /// A result before `ttl`.
    Returned(JobResult),
    /// An exec job's process exited before `ttl`.
    Exited(Exit),
    /// Cleaned up in time (acknowledged or exited); maybe with a late result.
    TimedOut(Option<JobResult>),
    /// The hard deadline passed.
    Killed(Option<JobResult>),
    /// The worker died, or broke the protocol.
    Crashed(Crash),
    /// The output went past `--max-output`.
    Overflow(String),
    /// The worker died without ever taking the job: it can run elsewhere.
    Unseen,
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
    /// Before the cleanup request.
    Running,
    /// The cleanup request went out; the group is killed at `kill_at`.
    CleaningUp { kill_at: Instant },
}

/// What made jobsup ask a job to clean up.
#[derive(Debug, Clone)]
enum Trigger {
    /// Nothing: the job ended on its own.
    None,
    /// Its ttl passed.
    Ttl,
    /// No heartbeat or progress for the idle timeout.
    Idle,
    /// The run is stopping; the text says why.
    Stop(String),
}

/// A job's deadlines on the monotonic clock.
struct Clock {
    ttl_at: Instant,
    cleanup: Duration,
    idle: Option<Duration>,
    slow_at: Option<Instant>,
}

impl Clock {
    /// When the running phase ends, given the job's last sign of life.
    fn running_deadline(&self, activity: Instant) -> (Instant, Trigger) {
        match self.idle.map(|idle| activity + idle) {
            Some(idle_at) if idle_at < self.ttl_at => (idle_at, Trigger::Idle),
            _ => (self.ttl_at, Trigger::Ttl),
        }
    }
}

impl Worker {
    fn live(&mut self) -> &mut Live {
        self.live
            .as_mut()
            .expect("a job runs only on a live process")
    }

    fn pid(&self) -> Option<i32> {
        self.live.as_ref().map(|l| l.process.pid())
    }

    /// Runs one job to its verdict, then settles the process. Returns the record and
    /// whether the worker can take another job, or the job itself when the worker never
    /// saw it (it had closed its input).
    pub(crate) async fn run_job(
        &mut self,
        job: JobSpec,
    ) -> Result<(Record, bool, JobSpec), Box<JobSpec>> {
        if self.live.is_none() {
            // Exec mode: this job's own process, with its arguments.
            let args = substitute(&self.settings.spawn.args, &job);
            match Live::start(
                self.id,
                &self.settings,
                &self.spawner,
                args,
                &self.current_job,
            )
            .await
            {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    let mut record = Record::new(&job, Outcome::Failed);
                    record.worker = Some(self.id);
                    record.error = Some(format!("cannot start the job's process: {e}"));
                    return Ok((record, true, job));
                }
            }
        }
        let started = Instant::now();
        self.current_job.store(job.seq, Ordering::Relaxed);
        let clock = Clock {
            ttl_at: started + job.ttl,
            cleanup: job.cleanup,
            idle: self.settings.idle_timeout,
            slow_at: self.settings.slow.map(|d| started + d),
        };
        let sent = self.live().link.send_job(&job);
        let (verdict, trigger) = match sent {
            Err(LinkError::Protocol(e)) => (Verdict::Crashed(Crash::Protocol(e)), Trigger::None),
            Err(LinkError::Overflow(e)) => (Verdict::Overflow(e), Trigger::None),
            Ok(()) if self.live().link.refused_job() => {
                self.current_job.store(0, Ordering::Relaxed);
                return Err(Box::new(job));
            }
            Ok(()) => self.await_verdict(&job, clock).await,
        };
        self.current_job.store(0, Ordering::Relaxed);
        if let Verdict::Unseen = verdict {
            return Err(Box::new(job));
        }
        self.live().link.job_ended();
        let (record, reusable) = self.settle(&job, started, verdict, trigger).await;
        Ok((record, reusable, job))
    }

    async fn await_verdict(&mut self, job: &JobSpec, mut clock: Clock) -> (Verdict, Trigger) {
        let mut late = None;
        let mut phase = Phase::Running;
        let mut trigger = Trigger::None;
        self.activity = Instant::now();
        loop {
            let (deadline, due) = match phase {
                Phase::Running => clock.running_deadline(self.activity),
                Phase::CleaningUp { kill_at } => (kill_at, Trigger::None),
            };
            if Instant::now() >= deadline {
                // Whatever was already in the pipe at the deadline was sent in time.
                if let Some(v) = self.take_ready(job, phase, &mut late) {
                    return (v, trigger);
                }
                match phase {
                    Phase::Running => {
                        // A heartbeat just read may have moved an idle deadline.
                        if clock.running_deadline(self.activity).0 > deadline {
                            continue;
                        }
                        let kill_at = deadline + clock.cleanup;
                        self.request_cleanup(job, kill_at);
                        phase = Phase::CleaningUp { kill_at };
                        trigger = due;
                    }
                    Phase::CleaningUp { .. } => return (Verdict::Killed(late), trigger),
                }
                continue;
            }
            let slow_at = clock.slow_at;
            enum Heard {
                Control(Option<Control>),
                Deadline,
                Slow,
                Writable,
                Said(Result<Option<FromWorker>, LinkError>),
                Exited,
            }
            let heard = {
                let control = &mut self.control;
                let live = self
                    .live
                    .as_mut()
                    .expect("a job runs only on a live process");
                let writing = live.link.tx.has_pending();
                let open = !live.link.at_eof();
                let Live { link, process, .. } = live;
                tokio::select! {
                    biased;
                    ctl = control.recv() => Heard::Control(ctl),
                    _ = sleep_until(deadline) => Heard::Deadline,
                    _ = sleep_until(slow_at.unwrap_or(deadline)), if slow_at.is_some() => Heard::Slow,
                    _ = link.tx.writable(), if writing => Heard::Writable,
                    msg = link.rx.next(), if open => Heard::Said(msg),
                    _ = process.exited() => Heard::Exited,
                }
            };
            match heard {
                Heard::Control(Some(Control::Stop { reason, grace })) => {
                    // The run is stopping: clean up now, killed after `grace` at most.
                    let kill_at = Instant::now() + grace;
                    match phase {
                        Phase::Running => self.request_cleanup(job, kill_at),
                        Phase::CleaningUp { kill_at: k } if k <= kill_at => continue,
                        Phase::CleaningUp { .. } => {}
                    }
                    phase = Phase::CleaningUp { kill_at };
                    trigger = Trigger::Stop(reason);
                }
                Heard::Control(Some(Control::Run(other))) => {
                    // The pool only hands jobs to idle workers; never lose one anyway.
                    tracing::error!(pool = %self.settings.pool,
                worker = self.id, "job handed to a busy worker; bouncing it");
                    let _ = self.events.send(Event::Bounced {
                        worker: self.id,
                        job: other,
                    });
                }
                // Shutdown waits for the job; a closed channel means the pool is gone.
                Heard::Control(Some(Control::Shutdown) | None) => {}
                Heard::Deadline => {}
                Heard::Slow => {
                    clock.slow_at = None;
                    tracing::warn!(
                        pool = %self.settings.pool,
                        worker = self.id,
                        pid = self.pid(),
                        job = job.seq,
                        id = %job.id,
                        kind = job.kind.as_deref(),
                        "slow job: {} still running after {}",
                        job.id,
                        humantime::format_duration(self.settings.slow.unwrap_or_default())
                    );
                }
                Heard::Writable => self.live().link.tx.write_some(),
                Heard::Said(msg) => {
                    if let Some(v) = self.on_message(msg, job, phase, &mut late) {
                        return (v, trigger);
                    }
                }
                Heard::Exited => {
                    // What it wrote before dying is still in the pipe.
                    if let Some(v) = self.take_ready(job, phase, &mut late) {
                        return (v, trigger);
                    }
                    let exit = self
                        .live()
                        .process
                        .exit()
                        .unwrap_or(Exit::Signal(libc::SIGKILL));
                    let verdict = match phase {
                        // An exec job ends by exiting: its status is its result.
                        Phase::Running if self.settings.mode == Mode::Exec => Verdict::Exited(exit),
                        Phase::Running if self.live().link.job_unseen() => Verdict::Unseen,
                        Phase::Running => Verdict::Crashed(Crash::Died),
                        // Exiting is finishing the cleanup.
                        Phase::CleaningUp { .. } => Verdict::TimedOut(late),
                    };
                    return (verdict, trigger);
                }
            }
        }
    }

    /// Acts on the messages already in the pipe, a bounded number of them so that a worker
    /// flooding the pipe cannot hold the task.
    fn take_ready(
        &mut self,
        job: &JobSpec,
        phase: Phase,
        late: &mut Option<JobResult>,
    ) -> Option<Verdict> {
        for _ in 0..READY_BUDGET {
            match self.live().link.try_next() {
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

    /// One message (or the end of the stream) while a job runs.
    fn on_message(
        &mut self,
        msg: Result<Option<FromWorker>, LinkError>,
        job: &JobSpec,
        phase: Phase,
        late: &mut Option<JobResult>,
    ) -> Option<Verdict> {
        let cleaning = matches!(phase, Phase::CleaningUp { .. });
        let pid = self.pid().unwrap_or(0);
        let worker = self.id;
        let protocol = move |what: String| {
            Some(Verdict::Crashed(Crash::Protocol(format!(
                "protocol error from worker {worker} (pid {pid}): {what}"
            ))))
        };
        let msg = match msg {
            Ok(Some(msg)) => msg,
            // The output closed: the exit (or the deadline) will say what happened. Only a
            // worker that goes on running without its result pipe has crashed.
            Ok(None) if cleaning || self.settings.mode == Mode::Exec => return None,
            // Going away without having taken the job: it can run elsewhere.
            Ok(None) if self.live.as_ref().is_some_and(|l| l.link.job_unseen()) => {
                return Some(Verdict::Unseen)
            }
            Ok(None) => return Some(Verdict::Crashed(Crash::PipeClosed)),
            Err(LinkError::Protocol(e)) => return protocol(e),
            Err(LinkError::Overflow(e)) => return Some(Verdict::Overflow(e)),
        };
        if self.is_stale(&msg) {
            return None;
        }
        let running = job.run_id;
        let wrong = move |what: &str, got: u64| {
            protocol(format!(
                "{what} for job {got}, but job {running} is running"
            ))
        };
        match msg {
            FromWorker::Heartbeat { job: j } | FromWorker::Progress { job: j, .. } => {
                if j != job.run_id {
                    return wrong("heartbeat", j);
                }
                self.activity = Instant::now();
                None
            }
            FromWorker::Done { job: j, result } => {
                if j != job.run_id {
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
                if j != job.run_id {
                    return wrong("cleanup acknowledgement", j);
                }
                if cleaning {
                    Some(Verdict::TimedOut(late.take()))
                } else {
                    protocol("cleanup acknowledged before any request".into())
                }
            }
            FromWorker::Hello { .. } => protocol("hello in the middle of a job".into()),
        }
    }

    /// Whether `msg` is about the job this worker finished before (a duplicate result, a
    /// late heartbeat): logged and ignored.
    pub(crate) fn is_stale(&self, msg: &FromWorker) -> bool {
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
                pool = %self.settings.pool,
                worker = self.id,
                pid = self.pid(),
                job = about,
                "ignoring {} about a job that already ended",
                frame_name(msg)
            );
        }
        stale
    }

    /// Names the resource limit a worker hit, so that a record says "memory limit" rather
    /// than a bare signal number: from the kernel's own account where a cgroup enforced it
    /// (`hits`), otherwise from how a crashed worker died.
    fn limit_hint(&self, exit: Exit, hits: Hits, alloc_failed: bool) -> Option<String> {
        let limits = self.settings.spawn.limits;
        let size = crate::units::format_size;
        if let Some(bytes) = hits.memory {
            return Some(format!(
                "memory limit of {} reached (--memory): the kernel's OOM killer ended a process of the worker",
                size(bytes)
            ));
        }
        if let Some(n) = hits.max_procs {
            return Some(format!(
                "process limit of {n} reached (--max-procs): a fork in the worker failed"
            ));
        }
        if alloc_failed {
            return Some(format!(
                "memory limit of {} reached (--memory, as an address-space limit): the worker's stderr reports a failed allocation",
                size(limits.memory.unwrap_or_default())
            ));
        }
        match exit {
            Exit::Signal(libc::SIGXCPU) | Exit::Signal(libc::SIGKILL)
                if limits.cpu_secs.is_some() =>
            {
                Some(format!(
                    "cpu time limit of {}s reached (--cpu-time)",
                    limits.cpu_secs.unwrap_or_default()
                ))
            }
            // Address-space exhaustion shows as a failed allocation, which ends a process
            // with an abort or a crash (or an error exit, which is left alone here).
            Exit::Signal(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS)
                if limits.memory.is_some() =>
            {
                Some(format!(
                    "it ran under a memory limit of {} (--memory), which a failed allocation ends this way",
                    size(limits.memory.unwrap_or_default())
                ))
            }
            _ => None,
        }
    }

    /// Which deadline a job met, in words.
    fn what_fired(&self, trigger: &Trigger, job: &JobSpec) -> String {
        match trigger {
            Trigger::Idle => format!(
                "idle timeout of {} reached (no heartbeat or progress)",
                humantime::format_duration(self.settings.idle_timeout.unwrap_or_default())
            ),
            _ => format!("ttl of {} reached", humantime::format_duration(job.ttl)),
        }
    }

    /// The soft deadline: ask the worker to clean up.
    fn request_cleanup(&mut self, job: &JobSpec, kill_at: Instant) {
        let grace_ms = kill_at
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        tracing::debug!(
            pool = %self.settings.pool,
                worker = self.id,
            job = job.seq,
            "ttl reached; cleanup requested"
        );
        let signal = self.settings.cleanup_signal;
        let live = self.live();
        live.link
            .request_cleanup(job.run_id, grace_ms, &live.process, signal);
    }

    /// Turns a verdict into the job's record, ending the process unless it can serve
    /// again. The one place a job's worker process is ended.
    async fn settle(
        &mut self,
        job: &JobSpec,
        started: Instant,
        verdict: Verdict,
        trigger: Trigger,
    ) -> (Record, bool) {
        let mode = self.settings.mode;
        let mut record = Record::new(job, Outcome::Ok);
        record.worker = Some(self.id);
        record.pid = self.pid();
        let decided = started.elapsed();
        record.started_at = std::time::SystemTime::now().checked_sub(decided);
        let mut crash = None;
        let mut exited = None;
        let (outcome, result, error, process_reusable) = match verdict {
            Verdict::Returned(result) => {
                let outcome = match result {
                    JobResult::Ok(_) => Outcome::Ok,
                    JobResult::Failed(_) => Outcome::Failed,
                };
                let live = self.live();
                let alive = live.process.exit().is_none();
                let in_step = !live.link.has_leftovers();
                if !in_step {
                    tracing::warn!(
                            pool = %self.settings.pool,
                    worker = self.id,
                            pid = record.pid,
                            job = job.seq,
                            "the worker wrote more than one line for the job; replacing it"
                        );
                }
                (outcome, Some(result), None, alive && in_step)
            }
            Verdict::Exited(exit) => {
                exited = Some(exit);
                let outcome = match exit {
                    Exit::Code(0) => Outcome::Ok,
                    Exit::Code(_) => Outcome::Failed,
                    Exit::Signal(_) => Outcome::Crashed,
                };
                (outcome, None, None, false)
            }
            // A stopping run decides these, not the job's own deadlines.
            Verdict::TimedOut(late) | Verdict::Killed(late)
                if matches!(trigger, Trigger::Stop(_)) =>
            {
                let Trigger::Stop(reason) = &trigger else {
                    unreachable!()
                };
                (Outcome::Cancelled, late, Some(reason.clone()), false)
            }
            Verdict::TimedOut(late) => (
                Outcome::Timeout,
                late,
                Some(format!(
                    "{}; the worker cleaned up in time",
                    self.what_fired(&trigger, job)
                )),
                false,
            ),
            Verdict::Killed(late) => (
                Outcome::Killed,
                late,
                Some(format!(
                    "{} and cleanup of {} passed; process group killed",
                    self.what_fired(&trigger, job),
                    humantime::format_duration(job.cleanup)
                )),
                false,
            ),
            Verdict::Crashed(c) => {
                crash = Some(c);
                (Outcome::Crashed, None, None, false)
            }
            Verdict::Overflow(e) => (Outcome::Failed, None, Some(e), false),
            Verdict::Unseen => unreachable!("run_job hands an unseen job back"),
        };
        record.outcome = outcome;
        if matches!(outcome, Outcome::Timeout | Outcome::Killed) {
            record.deadline = Some(match trigger {
                Trigger::Idle => "idle",
                _ => "ttl",
            });
        }
        match result {
            Some(JobResult::Ok(out)) => record.set_output(out),
            Some(JobResult::Failed(msg)) => record.error = Some(msg),
            None => {}
        }
        if let Some(e) = error {
            record.error = Some(match record.error.take() {
                None => e,
                Some(said) => format!("{e}; the job said: {said}"),
            });
        }
        if process_reusable && mode.reuses_processes() {
            record.set_duration(decided);
            return (record, true);
        }
        let mut live = self.live.take().expect("a job runs only on a live process");
        // How long the process may still take to go depends on why it is going.
        let grace = match outcome {
            // A clean-up acknowledged: let it exit, but never past the hard deadline.
            Outcome::Timeout => {
                (started + job.ttl + job.cleanup).saturating_duration_since(Instant::now())
            }
            // A pipe closed mid-job: the exit status is a moment away.
            Outcome::Crashed if matches!(crash, Some(Crash::PipeClosed)) => {
                self.settings.retire_grace.min(Duration::from_secs(1))
            }
            // Done, or beyond saving.
            _ => Duration::ZERO,
        };
        let (exit, killed_now) = live.process.end(grace).await;
        // A worker retired after a good answer (it wrote too much, say) was killed by
        // jobsup's choice, not the job's doing: its signal would only confuse the record.
        if !(killed_now && matches!(outcome, Outcome::Ok | Outcome::Failed)) {
            record.set_exit(exit);
        }
        if mode == Mode::Exec && record.output.is_none() {
            let out = live.link.take_output();
            if !out.is_empty() {
                record.set_output(out);
            }
        }
        match outcome {
            Outcome::Killed | Outcome::Crashed => record.set_duration(started.elapsed()),
            _ => record.set_duration(decided),
        }
        if let Some(exit) = exited {
            record.error = match exit {
                Exit::Code(0) => None,
                Exit::Code(c) => Some(format!("exited with code {c}")),
                Exit::Signal(s) => Some(format!("killed by signal {s} ({})", signal_name(s))),
            };
        }
        if let Some(crash) = crash {
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
        let hits = live.process.limits_hit();
        let failed = matches!(record.outcome, Outcome::Failed | Outcome::Crashed);
        // Under RLIMIT_AS the kernel keeps no count: a failed allocation is known only from
        // what the processor said about it.
        let alloc_failed = failed
            && self.settings.spawn.limits.memory.is_some()
            && !live.process.memory_in_cgroup()
            && says_out_of_memory(&live.stderr_text().await);
        let hinted = match record.outcome {
            Outcome::Crashed => !killed_now,
            // A worker that reported failure because a child was OOM-killed, a fork failed
            // or an allocation failed.
            Outcome::Failed => hits != Hits::default() || alloc_failed,
            _ => false,
        };
        if hinted {
            if let Some(hint) = self.limit_hint(exit, hits, alloc_failed) {
                record.error = Some(match record.error.take() {
                    Some(e) => format!("{e}; {hint}"),
                    None => hint,
                });
            }
        }
        // An exec worker slot goes on with a new process for its next job.
        (record, mode == Mode::Exec)
    }
}

/// Whether a processor's stderr reports running out of memory, in the words of the common
/// runtimes (Python, C++, Go, Node, Ruby, Java, Rust, libc's strerror).
fn says_out_of_memory(stderr: &str) -> bool {
    const WORDS: &[&str] = &[
        "memoryerror",
        "cannot allocate memory",
        "out of memory",
        "bad_alloc",
        "failed to allocate",
        "outofmemoryerror",
        "nomemoryerror",
        "memory allocation of",
    ];
    let text = stderr.to_lowercase();
    WORDS.iter().any(|w| text.contains(w))
}
