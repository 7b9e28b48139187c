//! The pool: reads jobs, hands each to an idle worker, writes records, replaces workers.
//!
//! It is a single task reacting to one stream of events at a time (signals, worker events,
//! input), so every decision about which worker runs what is made in one place. It reads a
//! line only when a worker will be free to take it, which keeps memory bounded and means
//! that on an interrupted run, lines not yet read stay in the input.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::config::RetryOn;
use crate::exit::{RunEnd, CANNOT_RUN, NOT_FOUND};
use crate::halt::{Halt, HaltCounter, HaltRule, When};
use crate::link::Mode;
use crate::live::StartError;
use crate::progress::Progress;
use crate::record::{JobSpec, Outcome, Record};
use crate::sandbox::{SpawnError, Spawner};
use crate::signals::Interrupts;
use crate::sink::Sink;
use crate::source::{Item, Source};
use crate::summary::Stats;
use crate::worker::{Control, Event, WorkerHandle, WorkerSettings};

/// Jobs read ahead of the free workers.
const LOOKAHEAD: usize = 32;

/// Start failures in a row, after the first success, that end the run.
const MAX_START_FAILURES: u32 = 5;

/// After a signal, how long the output may take to accept the last records when there is
/// no `--shutdown-timeout`.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// How long the last records may take to be written before jobsup says it is waiting.
const STALLED_OUTPUT: Duration = Duration::from_secs(1);

/// When a job is run again.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Extra attempts allowed.
    pub retries: u32,
    /// The outcomes that are retried.
    pub on: Vec<RetryOn>,
    /// The first retry's delay; it doubles with each attempt, with jitter.
    pub delay: Duration,
}

impl RetryPolicy {
    /// How long to wait before attempt `next` (2, 3, ...): exponential, with jitter of
    /// ±50% so that jobs that failed together do not all come back together.
    fn backoff(&self, next: u32) -> Duration {
        let cap = Duration::from_secs(600);
        let exp = self
            .delay
            .saturating_mul(1 << (next.saturating_sub(2)).min(16))
            .min(cap);
        // Capped before the jitter, so the multiplication cannot overflow.
        exp.mul_f64(0.5 + fastrand::f64()).min(cap)
    }
}

/// jobsup's own fds per worker, about (its slot's deadline timer, its pipes' ends, pidfds,
/// cgroup files, its holder's namespaces, and an exec slot's own runtime: 18 counted in
/// `/proc/PID/fd` per exec slot, 8 to 10 per native worker).
const FDS_PER_WORKER: u64 = 20;

/// How many of `workers` fit in the open-files limit jobsup has (already raised to the
/// hard one, see `fd::raise_open_files_limit`), said at start when that is fewer: the
/// workers past it would fail to start with EMFILE (in exec mode a job at a time; in
/// native and lines modes ending the run). As GNU parallel does, the run goes on with the
/// workers that fit.
pub(crate) fn workers_that_fit(workers: usize) -> usize {
    let workers = workers.max(1);
    let Ok((limit, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return workers;
    };
    let fit = fitting(workers, limit);
    if fit < workers {
        let needed = (workers as u64)
            .saturating_mul(FDS_PER_WORKER)
            .saturating_add(FDS_OF_ITS_OWN);
        tracing::warn!(
            "{workers} workers need about {needed} open files, and the limit is {limit} \
             (`ulimit -n`): running {fit} at a time; raise the hard limit (`ulimit -Hn`, \
             or `LimitNOFILE=` in a systemd unit) for more"
        );
    }
    fit
}

/// The workers, of `workers`, whose fds fit in `limit` besides jobsup's own (at least one).
fn fitting(workers: usize, limit: u64) -> usize {
    let room = limit.saturating_sub(FDS_OF_ITS_OWN) / FDS_PER_WORKER;
    workers
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// jobsup's fds that are no worker's (standard streams, the runtime's, the reader's and
/// writer's, the reaper's, logs), with room to spare.
const FDS_OF_ITS_OWN: u64 = 64;

/// What a pool needs.
pub struct PoolConfig {
    /// How many workers run at once.
    pub workers: usize,
    /// When failed jobs are run again.
    pub retry: RetryPolicy,
    /// After a first interrupt, how long running jobs may go on before they are stopped.
    pub shutdown_timeout: Option<Duration>,
    /// How each is started.
    pub settings: Arc<WorkerSettings>,
    /// The progress bar (drawn only on a terminal).
    pub progress: Progress,
    /// The counts `--metrics` serves, fed from every record written.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// When the run stops early (`--halt`).
    pub halt: Halt,
}

/// Why the run stops before its input is done, other than a signal or a failure of
/// jobsup's own: read no more, cancel what was read, and (for some) the running jobs.
#[derive(Debug, Clone)]
enum StopCause {
    /// A `--halt` rule triggered, on the record of the job with this id.
    Halt { rule: HaltRule, by: String },
    /// The output's reader closed it (EPIPE): nothing more can be written there.
    OutputClosed { output: String },
}

impl StopCause {
    /// Why, for the records' errors and the log.
    fn why(&self) -> String {
        match self {
            StopCause::Halt { rule, by } => format!("--halt {rule} triggered by job {by}"),
            StopCause::OutputClosed { output } => format!("{output} was closed"),
        }
    }

    /// Whether the running jobs are stopped too, or may finish.
    fn stops_running(&self) -> bool {
        match self {
            StopCause::Halt { rule, .. } => rule.when == When::Now,
            StopCause::OutputClosed { .. } => true,
        }
    }
}

struct Slot {
    handle: WorkerHandle,
    /// The job it runs, then those it was handed to run next, in order (without their
    /// payloads), to record them should the task fail.
    running: VecDeque<JobSpec>,
}

impl Slot {
    fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// Forgets the job with hand-off `run_id` (ended, or given back).
    fn done_with(&mut self, run_id: u64) {
        self.running.retain(|job| job.run_id != run_id);
    }
}

/// How many jobs an exec slot holds at once: the running one and the next, handed over
/// early so that the slot starts it as soon as the first is over instead of waiting for
/// the pool after every record. Other workers hold one (a native or line worker's next
/// job costs it no start-up).
const EXEC_SLOT_JOBS: usize = 2;

/// Runs the pool until the input is done (or the run is interrupted) and every worker is
/// gone. Returns how the run ended and its statistics.
pub async fn run(cfg: PoolConfig, spawner: Spawner, source: Source, sink: Sink) -> (RunEnd, Stats) {
    let workers = workers_that_fit(cfg.workers);
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut pool = Pool {
        settings: cfg.settings,
        size: workers,
        spawner,
        events_tx,
        events,
        source,
        sink,
        stats: Stats::default(),
        progress: cfg.progress,
        metrics: cfg.metrics,
        retry: cfg.retry,
        shutdown_timeout: cfg.shutdown_timeout,
        delayed: BTreeMap::new(),
        stop_at: None,
        next_run_id: 0,
        workers: HashMap::new(),
        idle: VecDeque::new(),
        pending: VecDeque::new(),
        next_worker: 1,
        missing: workers,
        respawn_at: None,
        ever_ready: false,
        start_failures: 0,
        interrupted: None,
        fatal: None,
        broken: None,
        tasks: JoinSet::new(),
        task_workers: HashMap::new(),
        ledger: Ledger::default(),
        halt: HaltCounter::new(cfg.halt),
        stopping: None,
        halt_cancelled: 0,
        commands: HashMap::new(),
    };
    let mut interrupts = match Interrupts::listen() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("cannot listen for signals: {e}");
            return (RunEnd::Failed, pool.stats);
        }
    };
    // A bug in the pool itself must not lose the records of the jobs it had read: its
    // state is still there to stop the workers and record every job.
    if let Err(what) = catching(pool.run(&mut interrupts)).await {
        pool.on_internal_failure(&format!("internal error in the pool: {what}"));
        if let Err(again) = catching(pool.shut_down(&mut interrupts)).await {
            tracing::error!("internal error while stopping the run: {again}");
        }
    }
    let end = match (pool.fatal.take(), &pool.stopping, pool.interrupted) {
        (Some(end), _, _) => end,
        (None, Some(StopCause::OutputClosed { .. }), _) => RunEnd::OutputClosed,
        (None, _, Some(sig)) => RunEnd::Interrupted(sig),
        (None, Some(StopCause::Halt { .. }), None) => RunEnd::Halted {
            cancelled: pool.halt_cancelled,
        },
        (None, None, None) => RunEnd::Completed,
    };
    (end, pool.stats)
}

struct Pool {
    settings: Arc<WorkerSettings>,
    size: usize,
    spawner: Spawner,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    source: Source,
    sink: Sink,
    stats: Stats,
    progress: Progress,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    retry: RetryPolicy,
    shutdown_timeout: Option<Duration>,
    /// Jobs waiting for their next attempt, by when it is due.
    delayed: BTreeMap<(Instant, u64), JobSpec>,
    /// When running jobs are stopped after a first interrupt.
    stop_at: Option<Instant>,
    /// The last hand-off number given out.
    next_run_id: u64,
    workers: HashMap<u64, Slot>,
    idle: VecDeque<u64>,
    /// Jobs read (or bounced) and not yet handed to a worker.
    pending: VecDeque<JobSpec>,
    next_worker: u64,
    /// Workers to start (now, or at `respawn_at`).
    missing: usize,
    respawn_at: Option<Instant>,
    ever_ready: bool,
    start_failures: u32,
    interrupted: Option<i32>,
    fatal: Option<RunEnd>,
    /// What broke inside jobsup, if anything did.
    broken: Option<String>,
    /// Every worker task: the pool learns of each one's end, panics included.
    tasks: JoinSet<()>,
    /// Which worker each task serves.
    task_workers: HashMap<tokio::task::Id, u64>,
    /// Which jobs have their record: the one place "exactly one record per job" is kept.
    ledger: Ledger,
    /// Counts finished jobs against `--halt`.
    halt: HaltCounter,
    /// Why the run is stopping early, if it is (`--halt`, a closed output).
    stopping: Option<StopCause>,
    /// Records `cancelled` because of a halt: they do not raise the exit code.
    halt_cancelled: u64,
    /// Exec mode: each running job's command line after substitution, for the job log.
    commands: HashMap<u64, String>,
}

/// Which jobs have their record: every ordinal below `floor`, and those in `above`. Jobs
/// finish out of order, but only the ones in flight or waiting for a retry are ever open,
/// so this stays small however long the input is.
#[derive(Default)]
struct Ledger {
    floor: u64,
    above: std::collections::BTreeSet<u64>,
}

impl Ledger {
    /// Notes that `ordinal` has its record; false if it already had one.
    fn mark(&mut self, ordinal: u64) -> bool {
        if ordinal != self.floor {
            // Out of order: remembered until the ones below it are in.
            return ordinal > self.floor && self.above.insert(ordinal);
        }
        self.floor += 1;
        while self.above.first() == Some(&self.floor) {
            self.above.pop_first();
            self.floor += 1;
        }
        true
    }
}

/// In exec mode, the job's command line as it is run (after `{}`, `{#}`, `{id}`), for
/// the job log; in the other modes every job has the same one, which the log knows.
fn command_line(settings: &WorkerSettings, sink: &Sink, job: &JobSpec) -> Option<String> {
    // Substituted again only for the job log: without one it would be work for nothing.
    if settings.mode != Mode::Exec || !sink.has_job_log() {
        return None;
    }
    let spawn = &settings.spawn;
    let args = crate::link::substitute(&spawn.args, job);
    Some(
        std::iter::once(spawn.program.as_os_str())
            .chain(args.iter().map(|a| a.as_os_str()))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Polls `fut` to its end, turning a panic into its message.
async fn catching<F: Future>(fut: F) -> Result<F::Output, String> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(crate::health::panic_message(&*panic))),
        }
    })
    .await
}

impl Pool {
    async fn run(&mut self, interrupts: &mut Interrupts) {
        // Made once: a fresh wait on the failure signal in every turn of the loop would
        // register and unregister a waiter each time.
        let broken = crate::health::broken();
        tokio::pin!(broken);
        self.spawn_missing();
        while !self.stopped() {
            if self.accepting() {
                // Read ahead so that a finishing worker finds its next job already read, and
                // ask in batches so that the reader thread is not woken once per line.
                let target = self.idle.len() + self.size + LOOKAHEAD;
                if self.source.outstanding() + self.pending.len() <= target / 2 {
                    self.source
                        .request(target.saturating_sub(self.pending.len()));
                }
            }
            let (next_retry, stop_at) = (self.next_retry(), self.stop_at);
            tokio::select! {
                biased;
                (sig, n) = interrupts.recv() => (0..n).for_each(|_| self.on_signal(sig)),
                what = &mut broken, if self.broken.is_none() => self.on_internal_failure(what),
                Some(event) = self.events.recv() => self.on_event(event),
                Some(ended) = self.tasks.join_next_with_id() => self.on_task_end(ended),
                _ = sleep_until(self.respawn_at.unwrap_or_else(Instant::now)), if self.respawn_at.is_some() => {
                    self.respawn_at = None;
                    self.spawn_missing();
                }
                _ = sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                    self.release_due_retries();
                }
                () = self.sink.closed(), if !self.output_closed() => self.on_output_closed(),
                _ = sleep_until(stop_at.unwrap_or_else(Instant::now)), if stop_at.is_some() => {
                    self.stop_at = None;
                    let sig = crate::reaper::signal_name(self.interrupted.unwrap_or(libc::SIGTERM));
                    let reason = format!(
                        "the run was interrupted by {sig} and the shutdown timeout passed"
                    );
                    tracing::warn!("{reason}: asking the running jobs to clean up");
                    self.stop_running(reason, self.settings.retire_grace);
                }
                item = self.source.next(), if self.accepting() && self.source.waiting() => self.on_item(item),
                // Reading stopped for the backlog: resume when the output catches up.
                room = self.sink.room(), if !self.sink.has_room() => if let Err(e) = room {
                    self.output_failed(e);
                },
            }
        }
        self.shut_down(interrupts).await;
    }

    /// Whether new jobs may be read.
    fn accepting(&self) -> bool {
        self.ever_ready && !self.winding_down() && !self.source.is_done() && self.sink.has_room()
    }

    /// Whether the main loop is over: nothing more to read or allowed, and no job running.
    fn stopped(&self) -> bool {
        let busy = self.workers.values().any(Slot::busy);
        let no_more = self.winding_down()
            || (self.source.is_done() && self.pending.is_empty() && self.delayed.is_empty());
        no_more && !busy
    }

    /// Whether the run is stopping: interrupted, failed, halted or its output closed.
    fn winding_down(&self) -> bool {
        self.interrupted.is_some() || self.fatal.is_some() || self.stopping.is_some()
    }

    fn spawn_missing(&mut self) {
        if self.winding_down() {
            return;
        }
        while self.missing > 0 {
            self.missing -= 1;
            let id = self.next_worker;
            self.next_worker += 1;
            let handle = WorkerHandle::start(
                id,
                self.size,
                Arc::clone(&self.settings),
                self.spawner.clone(),
                self.events_tx.clone(),
                &mut self.tasks,
            );
            self.task_workers.insert(handle.task(), id);
            self.workers.insert(
                id,
                Slot {
                    handle,
                    running: VecDeque::new(),
                },
            );
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready { worker } => {
                self.ever_ready = true;
                // A native worker that said hello has proved the processor starts; a line
                // or exec worker proves it only by finishing a job (below).
                if self.settings.mode == Mode::Native {
                    self.start_failures = 0;
                }
                self.idle.push_back(worker);
                self.dispatch();
                self.unqueue_for_an_idle_worker();
            }
            Event::Finished {
                worker,
                record,
                job,
                retiring,
            } => {
                crate::health::fault("pool");
                if record.worker.is_some() && record.outcome != Outcome::Cancelled {
                    self.start_failures = 0;
                }
                let run_id = job.run_id;
                self.record_or_retry(*record, *job);
                let mut emptied = false;
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.done_with(run_id);
                    emptied = slot.running.is_empty();
                    if retiring {
                        // What it held next comes back bounced.
                        self.idle.retain(|w| *w != worker);
                    } else if !self.idle.contains(&worker) {
                        self.idle.push_back(worker);
                    }
                }
                self.dispatch();
                if emptied && !retiring {
                    self.unqueue_for_an_idle_worker();
                }
            }
            Event::Returned { worker, job } => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.done_with(job.run_id);
                    if !self.idle.contains(&worker) {
                        self.idle.push_back(worker);
                    }
                }
                if self.winding_down() {
                    self.cancel(*job);
                } else {
                    self.pending.push_front(*job);
                    self.dispatch();
                }
            }
            Event::Bounced { worker, job } => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.done_with(job.run_id);
                }
                self.idle.retain(|w| *w != worker);
                if self.winding_down() {
                    self.cancel(*job);
                } else {
                    self.pending.push_front(*job);
                    self.dispatch();
                }
            }
            Event::Exited {
                worker,
                start_error,
            } => {
                self.worker_gone(worker);
                match start_error {
                    Some(e) => self.on_start_failure(e),
                    None => {
                        self.missing += 1;
                        if self.respawn_at.is_none() {
                            self.spawn_missing();
                        }
                    }
                }
            }
        }
    }

    /// Records a finished job, or schedules its next attempt when the policy says so. A
    /// retried job still yields one record: its final outcome, with the earlier errors.
    fn record_or_retry(&mut self, record: Record, mut job: JobSpec) {
        let retry = !self.winding_down()
            && job.attempt <= self.retry.retries
            && self.retry.on.iter().any(|r| r.matches(record.outcome));
        if !retry {
            return self.record(record);
        }
        job.previous_errors.push(format!(
            "attempt {}: {}{}",
            job.attempt,
            record.outcome.as_str(),
            record
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        job.attempt += 1;
        let due = Instant::now() + self.retry.backoff(job.attempt);
        tracing::info!(
            pool = %self.settings.pool,
            job = job.seq,
            id = %job.id,
            "job {} {}; attempt {} in {:?}",
            job.id,
            record.outcome.as_str(),
            job.attempt,
            due - Instant::now()
        );
        self.delayed.insert((due, job.ordinal), job);
    }

    fn next_retry(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(due, _)| *due)
    }

    fn release_due_retries(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let job = entry.remove();
            self.pending.push_back(job);
        }
        self.dispatch();
    }

    /// Asks every busy worker to stop its job: cleanup request now, kill after `grace`.
    fn stop_running(&mut self, reason: String, grace: Duration) {
        for slot in self.workers.values().filter(|s| s.busy()) {
            let _ = slot.handle.send(Control::Stop {
                reason: reason.clone(),
                grace,
            });
        }
    }

    fn on_start_failure(&mut self, error: StartError) {
        self.missing += 1;
        if self.fatal.is_some() {
            return;
        }
        let fatal = match &error {
            StartError::Spawn(SpawnError::NotFound { .. }) => Some(RunEnd::CannotStart(NOT_FOUND)),
            StartError::Spawn(SpawnError::NotExecutable { .. }) => {
                Some(RunEnd::CannotStart(CANNOT_RUN))
            }
            StartError::Spawn(SpawnError::Other { .. }) => Some(RunEnd::Failed),
            // A processor that has never started will not start by retrying.
            _ if !self.ever_ready => Some(RunEnd::CannotStart(CANNOT_RUN)),
            _ => {
                self.start_failures += 1;
                (self.start_failures >= MAX_START_FAILURES)
                    .then_some(RunEnd::CannotStart(CANNOT_RUN))
            }
        };
        match fatal {
            Some(end) => {
                tracing::error!(pool = %self.settings.pool, "{error}");
                self.stop_reading();
                self.fatal = Some(end);
            }
            None => {
                let backoff = Duration::from_millis(100 << self.start_failures.min(6));
                tracing::warn!("{error}; starting a replacement in {backoff:?}");
                self.respawn_at = Some(Instant::now() + backoff);
            }
        }
    }

    fn on_item(&mut self, item: Item) {
        match item {
            // One line per job: a newline inside a payload would become two jobs.
            Item::Job(job) if self.settings.mode == Mode::Lines && job.payload.contains(&b'\n') => {
                self.record(Record::rejected(
                    job.ordinal,
                    job.seq,
                    job.id,
                    format!(
                        "line {}: the payload contains a newline, and in --mode lines each job is exactly one line",
                        job.seq
                    ),
                ));
            }
            Item::Job(job) => {
                self.pending.push_back(*job);
                self.dispatch();
            }
            Item::Rejected(record) => self.record(*record),
            Item::End => {}
            Item::Failed(e) => {
                tracing::error!("{e}");
                self.stop_reading();
                self.fatal = Some(RunEnd::Failed);
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        let name = crate::reaper::signal_name(sig);
        if self.interrupted.is_none() {
            self.interrupted = Some(sig);
            let running = self.workers.values().filter(|s| s.busy()).count();
            tracing::warn!(
                "{name} received: reading no more jobs; {running} running job(s) may finish by their deadlines (send it again to cancel them now)"
            );
            self.stop_reading();
            self.stop_at = self.shutdown_timeout.map(|d| Instant::now() + d);
        } else {
            tracing::warn!("{name} received again: cancelling the running jobs");
            self.stop_at = None;
            self.stop_running(format!("cancelled by {name}"), Duration::ZERO);
        }
    }

    /// Stops reading, and records every job read but not started as cancelled.
    fn stop_reading(&mut self) {
        self.source.stop();
        // A job handed to an exec slot to run next has not started: it comes back, to be
        // cancelled with the rest.
        for slot in self.workers.values().filter(|s| s.running.len() > 1) {
            let _ = slot.handle.send(Control::Unqueue);
        }
        while let Some(job) = self.pending.pop_front() {
            self.cancel(job);
        }
        while let Some(item) = self.source.try_next() {
            self.on_read_after_stop(item);
        }
        for (_, job) in std::mem::take(&mut self.delayed) {
            self.cancel(job);
        }
    }

    fn on_read_after_stop(&mut self, item: Item) {
        match item {
            Item::Job(job) => self.cancel(*job),
            Item::Rejected(record) => self.record(*record),
            Item::Failed(e) => tracing::error!("{e}"),
            Item::End => {}
        }
    }

    fn cancel(&mut self, job: JobSpec) {
        let mut record = Record::new(&job, Outcome::Cancelled);
        record.attempts = job.attempt - 1;
        record.command = command_line(&self.settings, &self.sink, &job);
        record.error = Some(match (self.interrupted, &self.broken) {
            _ if self.stopping.is_some() => format!(
                "not started: {}",
                self.stopping
                    .as_ref()
                    .map(StopCause::why)
                    .unwrap_or_default()
            ),
            (Some(sig), _) => format!(
                "not started: the run was interrupted by {}",
                crate::reaper::signal_name(sig)
            ),
            (None, Some(what)) => format!("not started: jobsup failed ({what})"),
            (None, None) => "not started: the run was stopped by an error".into(),
        });
        self.record(record);
    }

    fn dispatch(&mut self) {
        while !self.pending.is_empty() {
            // A worker with nothing to run first: a job goes to wait behind another only
            // when every worker has one.
            let empty = self.idle.iter().position(|w| {
                self.workers
                    .get(w)
                    .is_some_and(|slot| slot.running.is_empty())
            });
            let Some(worker) = self.idle.remove(empty.unwrap_or(0)) else {
                return;
            };
            let Some(slot) = self.workers.get_mut(&worker) else {
                continue;
            };
            let Some(mut job) = self.pending.pop_front() else {
                return;
            };
            self.next_run_id += 1;
            job.run_id = self.next_run_id;
            if let Some(command) = command_line(&self.settings, &self.sink, &job) {
                self.commands.insert(job.ordinal, command);
            }
            let running = job.without_payload();
            match slot.handle.send(Control::Run(Box::new(job))) {
                Ok(()) => {
                    slot.running.push_back(running);
                    // Still room for the job after this one: at the back of the line,
                    // so that every idle worker gets one before any gets two.
                    let holds = match self.settings.mode {
                        Mode::Exec => EXEC_SLOT_JOBS,
                        _ => 1,
                    };
                    if slot.running.len() < holds {
                        self.idle.push_back(worker);
                    }
                }
                // The worker task is gone; its Exited event is on its way.
                Err(Control::Run(job)) => self.pending.push_front(*job),
                Err(_) => {}
            }
        }
    }

    /// A worker has nothing to run and nothing waits to be run: a job waiting behind
    /// another worker's running one comes back, to run on this one instead of after a job
    /// that may take long.
    fn unqueue_for_an_idle_worker(&mut self) {
        if !self.pending.is_empty() || self.winding_down() {
            return;
        }
        if let Some(slot) = self.workers.values().find(|s| s.running.len() > 1) {
            let _ = slot.handle.send(Control::Unqueue);
        }
    }

    /// Forgets a worker whose task has ended. A job it was running and never reported (its
    /// report was lost to an internal error) still gets a record; those it held to run
    /// next, which it never started, run elsewhere.
    fn worker_gone(&mut self, worker: u64) {
        self.idle.retain(|w| *w != worker);
        let mut held = self
            .workers
            .remove(&worker)
            .map(|slot| slot.running)
            .unwrap_or_default();
        if let Some(job) = held.pop_front() {
            let mut record = Record::new(&job, Outcome::Crashed);
            record.worker = Some(worker);
            record.error =
                Some("jobsup lost track of this job (internal error); its worker is gone".into());
            self.record(record);
        }
        for job in held.into_iter().rev() {
            if self.winding_down() {
                self.cancel(job);
            } else {
                self.pending.push_front(job);
            }
        }
    }

    /// A worker task ended. Normally it said so first (`Event::Exited`); a task that
    /// panicked did not: its job is recorded `crashed` and the run stops.
    fn on_task_end(&mut self, ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (task, failure) = match ended {
            Ok((task, ())) => (task, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(worker) = self.task_workers.remove(&task) else {
            return;
        };
        let Some(failure) = failure else { return };
        let what = match failure.try_into_panic() {
            Ok(panic) => crate::health::panic_message(&*panic),
            Err(e) => e.to_string(),
        };
        let what = format!("internal error in the task of worker {worker}: {what}");
        if let Some(job) = self
            .workers
            .get_mut(&worker)
            .and_then(|s| s.running.pop_front())
        {
            let mut record = Record::new(&job, Outcome::Crashed);
            record.worker = Some(worker);
            record.error = Some(format!(
                "jobsup failed while running this job ({what}); its worker was killed"
            ));
            self.record(record);
        }
        self.worker_gone(worker);
        self.on_internal_failure(&what);
    }

    /// Some part of jobsup broke: read no more, stop the running jobs (cleanup request
    /// now, killed after the cleanup window), record every job read, and exit 125.
    fn on_internal_failure(&mut self, what: &str) {
        if self.broken.is_some() {
            return;
        }
        tracing::error!("jobsup cannot go on ({what}): stopping the running jobs; every job read gets its record");
        self.broken = Some(what.to_string());
        self.fatal = Some(RunEnd::Failed);
        self.respawn_at = None;
        self.stop_reading();
        self.stop_running(
            format!("cancelled: jobsup failed ({what})"),
            self.settings.retire_grace,
        );
    }

    fn record(&mut self, mut record: Record) {
        let command = self.commands.remove(&record.ordinal);
        if !self.ledger.mark(record.ordinal) {
            tracing::error!(
                "internal error: a second record for line {} ({}) was dropped",
                record.seq,
                record.outcome.as_str()
            );
            return;
        }
        record.command = record.command.take().or(command);
        self.stats.observe(&record);
        if let Some(metrics) = &self.metrics {
            metrics.observe(&record);
        }
        self.progress.update(&self.stats);
        let (outcome, id) = (record.outcome, record.id.clone());
        if let Err(e) = self.sink.push(record) {
            self.output_failed(e);
        }
        self.count_for_halt(outcome, id);
    }

    /// Counts a final outcome against `--halt` (only while the run goes on: the records
    /// of a stopping run are its consequence), and halts when the rule triggers.
    fn count_for_halt(&mut self, outcome: Outcome, id: String) {
        if matches!(self.stopping, Some(StopCause::Halt { .. })) && outcome == Outcome::Cancelled {
            self.halt_cancelled += 1;
        }
        if self.winding_down() {
            return;
        }
        if let Some(rule) = self.halt.observe(outcome) {
            self.stop(StopCause::Halt { rule, by: id });
        }
    }

    /// The one transition of an early stop: said once, then no more jobs are read, those
    /// read are cancelled, and the running ones stopped when the cause says so (through
    /// the same path as a second signal: cleanup request, then the kill).
    fn stop(&mut self, cause: StopCause) {
        let running = self.workers.values().filter(|s| s.busy()).count();
        match &cause {
            StopCause::Halt { .. } if cause.stops_running() => tracing::warn!(
                "{}: starting no more jobs, cancelling {running} running job(s)",
                cause.why()
            ),
            StopCause::Halt { .. } => tracing::warn!(
                "{}: starting no more jobs; {running} running job(s) may finish",
                cause.why()
            ),
            StopCause::OutputClosed { .. } => tracing::warn!(
                "{}; {running} running job(s) cancelled, stopping (the job log still gets every row)",
                cause.why()
            ),
        }
        let (reason, now) = (format!("cancelled: {}", cause.why()), cause.stops_running());
        self.stopping = Some(cause);
        self.stop_at = None;
        self.stop_reading();
        if now {
            self.stop_running(reason, self.settings.retire_grace);
        }
    }

    /// Says how many jobs `--resume` passed over, and counts them in the summary.
    fn note_skipped(&mut self) {
        let skipped = self.source.skipped();
        if skipped > 0 {
            tracing::info!("{skipped} job(s) skipped: the job log already has them (--resume)");
        }
        self.stats.set_skipped(skipped);
    }

    /// Whether the output is known to be closed.
    fn output_closed(&self) -> bool {
        matches!(self.stopping, Some(StopCause::OutputClosed { .. }))
    }

    /// The output's reader went away: every job read still gets its job log row, but the
    /// run stops (a closed output wins over a halt already under way).
    fn on_output_closed(&mut self) {
        let output = self.sink.name().to_string();
        self.stop(StopCause::OutputClosed { output });
    }

    /// The output failed: no more jobs are read, and those read but not started are
    /// cancelled (their records cannot be written either). The error is said once, at the
    /// end, with the count of records lost (`shut_down`).
    fn output_failed(&mut self, _: std::io::Error) {
        if self.sink.is_closed() {
            if !self.output_closed() {
                self.on_output_closed();
            }
            return;
        }
        if self.fatal.is_none() {
            // Before stop_reading, whose cancelled records fail too.
            self.fatal = Some(RunEnd::Failed);
            self.stop_reading();
        }
    }

    /// Retires every worker and waits until all are gone.
    async fn shut_down(&mut self, interrupts: &mut Interrupts) {
        self.respawn_at = None;
        for slot in self.workers.values() {
            let _ = slot.handle.send(Control::Shutdown);
        }
        while !self.workers.is_empty() {
            tokio::select! {
                biased;
                (sig, n) = interrupts.recv() => (0..n).for_each(|_| self.on_signal(sig)),
                what = crate::health::broken(), if self.broken.is_none() => self.on_internal_failure(what),
                Some(ended) = self.tasks.join_next_with_id() => self.on_task_end(ended),
                Some(event) = self.events.recv() => match event {
                    Event::Exited { worker, .. } => self.worker_gone(worker),
                    Event::Finished { record, .. } => self.record(*record),
                    Event::Bounced { job, .. } | Event::Returned { job, .. } => self.cancel(*job),
                    Event::Ready { worker } => {
                        if let Some(slot) = self.workers.get(&worker) {
                            let _ = slot.handle.send(Control::Shutdown);
                        }
                    }
                },
            }
        }
        // A line the reader finished just as the run stopped was still read: record it.
        for item in self.source.close().await {
            self.on_read_after_stop(item);
        }
        self.note_skipped();
        self.progress.finish();
        self.finish_output(interrupts).await;
    }

    /// Waits until every record is written, however long a slow reader takes, unless the
    /// run is interrupted: then the output gets the shutdown timeout (or [`OUTPUT_GRACE`]),
    /// and a further signal ends the wait at once. Records still unwritten then are lost,
    /// and the run has failed; the writer thread is left blocked, not joined.
    async fn finish_output(&mut self, interrupts: &mut Interrupts) {
        let grace = self.shutdown_timeout.unwrap_or(OUTPUT_GRACE);
        let mut give_up_at = self.interrupted.map(|_| Instant::now() + grace);
        // Said once, if the output is slow to take the last records.
        let mut notice_at = Some(Instant::now() + STALLED_OUTPUT);
        let finished = loop {
            let (notice, give_up) = (notice_at, give_up_at);
            tokio::select! {
                biased;
                done = self.sink.finish() => break done,
                (sig, n) = interrupts.recv() => {
                    if n == 0 {
                        continue;
                    }
                    let name = crate::reaper::signal_name(sig);
                    if self.interrupted.is_some() || n > 1 {
                        self.interrupted.get_or_insert(sig);
                        tracing::warn!("{name} received: giving up on the output");
                        break Err(std::io::Error::other("the output is not being read"));
                    }
                    self.interrupted = Some(sig);
                    give_up_at = Some(Instant::now() + grace);
                    tracing::warn!(
                        "{name} received: {} records are waiting for the output; giving up on it in {grace:?} (send {name} again to give up now)",
                        self.sink.unwritten()
                    );
                    notice_at = None;
                }
                _ = sleep_until(notice.unwrap_or_else(Instant::now)), if notice.is_some() => {
                    notice_at = None;
                    let n = self.sink.unwritten();
                    match give_up {
                        Some(at) => tracing::warn!(
                            "the output is not being read: {n} records are waiting for it; giving up on it in {:?} (send the signal again to give up now)",
                            Duration::from_millis(at.saturating_duration_since(Instant::now()).as_millis() as u64)
                        ),
                        None => tracing::info!(
                            "waiting for the output to take the last {n} records (SIGTERM gives up after {grace:?})"
                        ),
                    }
                }
                _ = sleep_until(give_up.unwrap_or_else(Instant::now)), if give_up.is_some() => {
                    break Err(std::io::Error::other("the output is not being read"));
                }
            }
        };
        if let Err(e) = finished {
            self.output_failed(e);
        }
        // Closed while the last records were written: said, and exit 141, all the same.
        if self.sink.is_closed() && !self.output_closed() {
            self.on_output_closed();
        }
        let lost = self.sink.unwritten();
        if self.fatal == Some(RunEnd::Failed) && lost > 0 {
            let why = self
                .sink
                .failure()
                .map(|f| format!("the output failed: {f}"))
                .unwrap_or_else(|| "the output is not being read".into());
            tracing::error!(
                "{lost} of {} records could not be written: {why}",
                self.stats.total()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_cut_to_what_the_open_files_limit_holds_but_never_to_none() {
        assert_eq!(fitting(100, 300), 11);
        assert_eq!(fitting(100, 20_000), 100);
        assert_eq!(fitting(4096, 20_000), 996);
        // A limit too low for even one worker still runs one (its start then says why).
        assert_eq!(fitting(8, 16), 1);
        assert_eq!(fitting(1, u64::MAX), 1);
    }

    #[test]
    fn the_ledger_takes_each_job_once_and_stays_small() {
        let mut ledger = Ledger::default();
        assert!(ledger.mark(2));
        assert!(ledger.mark(0));
        assert!(!ledger.mark(2), "a second record for a job is refused");
        assert!(!ledger.mark(0));
        assert!(ledger.mark(1));
        assert_eq!((ledger.floor, ledger.above.len()), (3, 0));
        for n in (3..10_000).rev() {
            assert!(ledger.mark(n));
        }
        assert_eq!((ledger.floor, ledger.above.len()), (10_000, 0));
        assert!(!ledger.mark(5));
    }
}
