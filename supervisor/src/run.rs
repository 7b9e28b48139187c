//! Running one job to its outcome: the shell around `deadline::JobRun`, which holds
//! the deadline rules of DESIGN.md. This file only moves bytes and timers: it feeds the
//! state machine what the worker said, did and when, carries out what it answers (the
//! cleanup request, a warning), and turns its verdict into the job's record.
//!
//! A passed deadline is handled before anything else the task could do, so a worker that
//! floods its pipe cannot postpone its own kill; what was already in the pipe when the
//! deadline passed is fed first (a bounded amount of it), since it was sent in time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use jobsup_protocol::FromWorker;
use tokio::time::{sleep, sleep_until, Instant};

use crate::cgroup::Hits;
use crate::deadline::{Act, Crash, Input, JobRun, Rules, Trigger, Verdict};
use crate::link::{substitute, LinkError, Mode};
use crate::live::Live;
use crate::reaper::{signal_name, Exit};
use crate::record::{JobSpec, Outcome, Record};
use crate::worker::{Control, Worker};

/// Messages taken from the pipe at once when a deadline passes or the worker exits.
const READY_BUDGET: usize = 1024;

/// How often a line worker's pipe is looked at while its first job waits to be taken (the
/// interval doubles up to the maximum: a slow start-up is polled less).
const TAKE_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(16));

/// The shortest wait between two measurements of a worker's CPU time.
const CPU_CHECK_FLOOR: Duration = Duration::from_millis(10);

/// How long an ended worker's stderr may take to reach its end before the job's record is
/// written without the rest (a descendant may hold the pipe open).
const STDERR_EOF: Duration = Duration::from_millis(500);

/// How long a worker that closed its result pipe mid-job has to exit before it is killed
/// as one that kept running.
const PIPE_CLOSED_EXIT: Duration = Duration::from_secs(1);

/// The CPU time a reused worker's tree spends on one job, measured against its budget.
struct CpuWatch {
    budget: Duration,
    /// The tree's CPU time at hand-off.
    base: Duration,
    /// When to measure next.
    next: Instant,
}

impl CpuWatch {
    /// Starts measuring at hand-off, if the job has a budget and its worker can be read.
    fn start(budget: Option<Duration>, live: &Live, now: Instant) -> Option<CpuWatch> {
        let budget = budget?;
        let base = live.process.cpu_time()?;
        let mut watch = CpuWatch {
            budget,
            base,
            next: now,
        };
        watch.schedule(Duration::ZERO, now);
        Some(watch)
    }

    /// The CPU time used on this job so far (a tree that lost a process's time may read
    /// less than at hand-off: nothing then).
    fn used(&self, live: &Live) -> Option<Duration> {
        Some(live.process.cpu_time()?.saturating_sub(self.base))
    }

    /// The next measurement: CPU time cannot grow faster than wall time on every CPU, so
    /// the budget cannot run out before `(budget - used) / ncpus`.
    fn schedule(&mut self, used: Duration, now: Instant) {
        let left = self.budget.saturating_sub(used) / crate::reaper::online_cpus();
        self.next = now + left.max(CPU_CHECK_FLOOR);
    }
}

/// Sleeps until `at`, or forever. Lazy: nothing is made until it is first polled, so a
/// branch that cannot fire costs nothing in a `select!` that runs once per message.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sleeps for `d`, or forever (lazy, as [`sleep_until_some`]).
async fn sleep_for_some(d: Option<Duration>) {
    match d {
        Some(d) => sleep(d).await,
        None => std::future::pending().await,
    }
}

impl Worker {
    fn live(&mut self) -> &mut Live {
        self.live
            .as_mut()
            .expect("a job runs only on a live process")
    }

    fn pid(&self) -> Option<i32> {
        self.live.as_ref().map(|l| l.process.processor_pid())
    }

    /// The deadline rules for `job` on this worker.
    fn rules(&self, job: &JobSpec) -> Rules {
        let settings = &self.settings;
        Rules {
            // A ttl of 0 is no deadline, as in GNU timeout.
            ttl: (!job.ttl.is_zero()).then_some(job.ttl),
            cleanup: job.cleanup,
            idle: settings.idle_timeout,
            slow: settings.slow,
            ends_by_exit: settings.mode == Mode::Exec,
            // A line worker proves it has started only by reading its first line.
            start_grace: (settings.mode == Mode::Lines && self.jobs_done == 0)
                .then_some(settings.start_timeout),
            cpu: settings.cpu_budget,
        }
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
                self.spare_workdir.take(),
                // No handshake in exec mode: nothing to stop.
                std::future::pending(),
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
        // A reused worker's stderr from here to the verdict is this job's (an exec
        // process's is all its own).
        if self.settings.mode.reuses_processes() {
            self.live().tail.start_job();
        }
        self.current_job.store(job.seq, Ordering::Relaxed);
        let mut run = JobRun::new(self.rules(&job), job.run_id, self.last_job, Instant::now());
        let sent = self.live().link.send_job(&job);
        crate::health::fault("worker");
        let done = match sent {
            Err(e) => self.carry_out(&job, run.on(Input::Broke(e), Instant::now())),
            Ok(()) if self.live().link.refused_job() => None,
            Ok(()) => Some(self.await_verdict(&job, &mut run).await),
        };
        self.current_job.store(0, Ordering::Relaxed);
        let Some((verdict, trigger)) = done.filter(|(v, _)| *v != Verdict::Unseen) else {
            return Err(Box::new(job));
        };
        self.live().link.job_ended();
        let (record, reusable) = self.settle(&job, run.started(), verdict, trigger).await;
        Ok((record, reusable, job))
    }

    /// Feeds the state machine until it gives its verdict.
    async fn await_verdict(&mut self, job: &JobSpec, run: &mut JobRun) -> (Verdict, Trigger) {
        let mut take_poll = TAKE_POLL.0;
        let mut control_open = true;
        let mut cpu = CpuWatch::start(run.rules().cpu, self.live(), Instant::now());
        loop {
            let timer = run.next_timer();
            if timer.is_some_and(|t| Instant::now() >= t) {
                // Whatever was already in the pipe at the deadline was sent in time.
                if let Some(done) = self.feed_ready(job, run) {
                    return done;
                }
                if let Some(done) = self.carry_out(job, run.on(Input::Tick, Instant::now())) {
                    return done;
                }
                continue;
            }
            enum Heard {
                Control(Option<Control>),
                Timer,
                CpuCheck,
                Writable,
                Said(Result<Option<FromWorker>, LinkError>),
                Exited,
                TakePoll,
            }
            let awaits_take = run.awaits_take();
            let heard = {
                let control = &mut self.control;
                let deadline = &mut self.deadline;
                let live = self
                    .live
                    .as_mut()
                    .expect("a job runs only on a live process");
                let writing = live.link.tx.has_pending();
                let open = !live.link.at_eof();
                let Live { link, process, .. } = live;
                tokio::select! {
                    biased;
                    ctl = control.recv(), if control_open => Heard::Control(ctl),
                    () = deadline.until(timer) => Heard::Timer,
                    () = sleep_until_some(cpu.as_ref().map(|c| c.next)) => Heard::CpuCheck,
                    _ = link.tx.writable(), if writing => Heard::Writable,
                    msg = link.rx.next(), if open => Heard::Said(msg),
                    _ = process.exited() => Heard::Exited,
                    () = sleep_for_some(awaits_take.then_some(take_poll)) => Heard::TakePoll,
                }
            };
            let input = match heard {
                Heard::Control(Some(Control::Stop { reason, grace })) => {
                    // What waits behind the job never starts here.
                    self.return_queued();
                    // A result already in the pipe was sent before the stop: the job
                    // finished, and is not cancelled.
                    if let Some(done) = self.feed_ready(job, run) {
                        return done;
                    }
                    Input::Stop { reason, grace }
                }
                // The next job, handed over early: it starts once this one is over.
                Heard::Control(Some(Control::Run(next))) => {
                    self.queued.push_back(next);
                    continue;
                }
                Heard::Control(Some(Control::Unqueue)) => {
                    self.return_queued();
                    continue;
                }
                // Shutdown waits for the job.
                Heard::Control(Some(Control::Shutdown)) => continue,
                // The pool is gone: the job still runs to its deadlines.
                Heard::Control(None) => {
                    control_open = false;
                    continue;
                }
                Heard::Timer => continue,
                Heard::CpuCheck => {
                    let Some(watch) = cpu.as_mut() else { continue };
                    let Some(used) = watch.used(self.live()) else {
                        // Reaped: its exit says what happened.
                        cpu = None;
                        continue;
                    };
                    watch.schedule(used, Instant::now());
                    // What was in the pipe when the budget ran out was sent in time.
                    if used >= watch.budget {
                        if let Some(done) = self.feed_ready(job, run) {
                            return done;
                        }
                    }
                    Input::CpuUsed(used)
                }
                Heard::Writable => {
                    self.live().link.tx.write_some();
                    continue;
                }
                Heard::Said(msg) => self.input_from(msg),
                Heard::Exited => {
                    // What it wrote before dying is still in the pipe.
                    if let Some(done) = self.feed_ready(job, run) {
                        return done;
                    }
                    let live = self.live();
                    Input::Exited {
                        exit: live.process.exit().unwrap_or(Exit::Signal(libc::SIGKILL)),
                        unseen: live.link.job_unseen(),
                    }
                }
                Heard::TakePoll => {
                    if self.live().link.tx.untaken() != Some(0) {
                        take_poll = (take_poll * 2).min(TAKE_POLL.1);
                        continue;
                    }
                    Input::Taken
                }
            };
            if let Some(done) = self.carry_out(job, run.on(input, Instant::now())) {
                return done;
            }
        }
    }

    /// What a message (or the end of the stream) read from the worker is, for the rules.
    fn input_from(&mut self, msg: Result<Option<FromWorker>, LinkError>) -> Input {
        match msg {
            Ok(Some(msg)) => Input::Said(msg),
            Ok(None) => Input::Closed {
                unseen: self.live().link.job_unseen(),
            },
            Err(e) => Input::Broke(e),
        }
    }

    /// Feeds the messages already in the pipe, a bounded number of them so that a worker
    /// flooding the pipe cannot hold the task.
    fn feed_ready(&mut self, job: &JobSpec, run: &mut JobRun) -> Option<(Verdict, Trigger)> {
        for _ in 0..READY_BUDGET {
            let msg = self.live().link.try_next();
            if matches!(msg, Ok(None)) {
                return None;
            }
            let input = self.input_from(msg);
            if let Some(done) = self.carry_out(job, run.on(input, Instant::now())) {
                return Some(done);
            }
        }
        None
    }

    /// Carries out what the rules said; the verdict once there is one.
    fn carry_out(&mut self, job: &JobSpec, act: Act) -> Option<(Verdict, Trigger)> {
        match act {
            Act::Wait => None,
            Act::RequestCleanup { grace } => {
                tracing::debug!(pool = %self.settings.pool, worker = self.id, job = job.seq,
                    "deadline reached; cleanup requested");
                let signal = self.settings.cleanup_signal;
                let live = self.live();
                let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
                live.link
                    .request_cleanup(job.run_id, grace_ms, &live.process, signal);
                None
            }
            Act::WarnSlow { after } => {
                tracing::warn!(
                    pool = %self.settings.pool,
                    worker = self.id,
                    pid = self.pid(),
                    job = job.seq,
                    id = %job.id,
                    kind = job.kind.as_deref(),
                    "slow job: {} still running after {}",
                    job.id,
                    humantime::format_duration(after)
                );
                None
            }
            Act::IgnoreStale(frame) => {
                self.log_stale(frame);
                None
            }
            Act::Finish { verdict, trigger } => Some((verdict, trigger)),
        }
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
            Trigger::Cpu => format!(
                "cpu time limit of {}s reached (--cpu-time)",
                self.settings.cpu_budget.unwrap_or_default().as_secs()
            ),
            Trigger::Idle => format!(
                "idle timeout of {} reached (no heartbeat or progress)",
                humantime::format_duration(self.settings.idle_timeout.unwrap_or_default())
            ),
            _ => format!("ttl of {} reached", humantime::format_duration(job.ttl)),
        }
    }

    /// The words for a job that met a deadline, or was stopped with the run.
    fn deadline_error(&self, outcome: Outcome, trigger: &Trigger, job: &JobSpec) -> Option<String> {
        let fired = self.what_fired(trigger, job);
        match (outcome, trigger) {
            (_, Trigger::Stop(reason)) => Some(reason.clone()),
            (Outcome::Timeout, _) => Some(format!("{fired}; the worker cleaned up in time")),
            (Outcome::Killed, Trigger::Cpu) => Some(format!("{fired}; process group killed")),
            (Outcome::Killed, _) if job.cleanup.is_zero() => Some(format!(
                "{fired}; process group killed (a cleanup of 0 allows no cleanup window)"
            )),
            (Outcome::Killed, _) => Some(format!(
                "{fired} and cleanup of {} passed; process group killed",
                humantime::format_duration(job.cleanup)
            )),
            _ => None,
        }
    }

    /// Whether a worker that returned a result can take another job: it is alive and, in
    /// lines mode, said nothing more than its one answer.
    fn fit_after_result(&mut self, job: &JobSpec) -> bool {
        let live = self.live();
        let alive = live.process.exit().is_none();
        let in_step = !live.link.has_leftovers();
        if !in_step {
            tracing::warn!(
                pool = %self.settings.pool,
                worker = self.id,
                pid = self.pid(),
                job = job.seq,
                "the worker wrote more than one line for the job; replacing it"
            );
        }
        alive && in_step
    }

    /// Turns a verdict into the job's record, ending the process unless it can serve
    /// again. The one place a job's worker process is ended. Returns the record and
    /// whether the worker slot goes on.
    async fn settle(
        &mut self,
        job: &JobSpec,
        started: Instant,
        verdict: Verdict,
        trigger: Trigger,
    ) -> (Record, bool) {
        let mode = self.settings.mode;
        let outcome = verdict.outcome(&trigger);
        let decided = started.elapsed();
        let mut record = Record::new(job, outcome);
        record.worker = Some(self.id);
        record.pid = self.pid();
        record.started_at = std::time::SystemTime::now().checked_sub(decided);
        if matches!(outcome, Outcome::Timeout | Outcome::Killed) {
            record.deadline = Some(match trigger {
                Trigger::Idle => "idle",
                Trigger::Cpu => "cpu",
                _ => "ttl",
            });
        }
        let mut reusable = false;
        let (mut crash, mut exited) = (None, None);
        match verdict {
            Verdict::Returned(result) => {
                reusable = self.fit_after_result(job);
                record.set_result(result);
            }
            Verdict::Exited(exit) => exited = Some(exit),
            Verdict::TimedOut(late) | Verdict::Killed(late) => {
                if let Some(result) = late {
                    record.set_result(result);
                }
                if let Some(e) = self.deadline_error(outcome, &trigger, job) {
                    record.prefix_error(e);
                }
            }
            Verdict::Crashed(c) => crash = Some(c),
            Verdict::Overflow(e) => record.prefix_error(e),
            Verdict::Unseen => {}
        }
        if reusable && mode.reuses_processes() {
            // The next job starts clean: nothing this one started runs into it.
            let left = self.live().process.kill_leftovers();
            if left > 0 {
                tracing::debug!(pool = %self.settings.pool, worker = self.id, job = job.seq,
                    "killed {left} processes the job left in its worker");
            }
            record.set_duration(decided);
            if keeps_stderr(outcome) {
                let tail = &self.live().tail;
                tail.catch_up().await;
                record.stderr_tail = tail.take_job();
            }
            return (record, true);
        }
        let mut live = self.live.take().expect("a job runs only on a live process");
        // How long the process may still take to go depends on why it is going.
        let grace = match (outcome, &crash) {
            // A clean-up acknowledged: let it exit, but never past the hard deadline.
            (Outcome::Timeout, _) => {
                (started + job.ttl + job.cleanup).saturating_duration_since(Instant::now())
            }
            // A pipe closed mid-job: the exit status is a moment away, though on a busy
            // machine a scheduling delay or two (a pid namespace's init reaps the worker
            // before jobsup can) may make that moment long. Only a worker that really
            // kept running waits the whole of it.
            (Outcome::Crashed, Some(Crash::PipeClosed)) => PIPE_CLOSED_EXIT,
            // Done, or beyond saving.
            _ => Duration::ZERO,
        };
        let (exit, killed_now) = live.process.end(grace).await;
        if keeps_stderr(outcome) {
            live.tail.ended(STDERR_EOF).await;
            record.stderr_tail = live.tail.take_job();
        }
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
            // Until it died: when its pidfd said so, or when it was reaped.
            Outcome::Killed | Outcome::Crashed => {
                record.set_duration(live.process.exited_at().map_or_else(
                    || started.elapsed(),
                    |at| Instant::from_std(at).saturating_duration_since(started),
                ))
            }
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
            record.error = Some(self.crash_error(crash, exit, killed_now));
        }
        self.name_the_limit(&mut record, &live, exit, killed_now)
            .await;
        // An exec worker slot goes on with a new process for its next job, in the same
        // private directory where this one left it empty.
        if mode == Mode::Exec {
            self.spare_workdir = live.into_workdir(self.settings.spawn.user.as_ref());
        }
        (record, mode == Mode::Exec)
    }

    /// Why a job crashed, in words.
    fn crash_error(&self, crash: Crash, exit: Exit, killed_now: bool) -> String {
        match crash {
            Crash::Died => format!("worker exited mid-job: {exit}"),
            Crash::PipeClosed if killed_now => {
                "worker closed its result pipe mid-job and kept running; killed".into()
            }
            Crash::PipeClosed => format!("worker exited mid-job: {exit}"),
            Crash::Protocol(what) => {
                let pid = self.pid().unwrap_or(0);
                let ending = if killed_now {
                    "worker killed".to_string()
                } else {
                    format!("worker ended with {exit}")
                };
                format!(
                    "protocol error from worker {} (pid {pid}): {what}; {ending}",
                    self.id
                )
            }
        }
    }

    /// Adds to a failed or crashed record the resource limit its worker hit, if any.
    async fn name_the_limit(&self, record: &mut Record, live: &Live, exit: Exit, killed_now: bool) {
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
    }
}

/// Whether a job's record carries what its worker wrote on stderr during it: where the
/// job went wrong (an `ok` record's stderr stays in the log only).
fn keeps_stderr(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed | Outcome::Crashed | Outcome::Timeout | Outcome::Killed
    )
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
