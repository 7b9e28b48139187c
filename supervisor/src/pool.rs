//! The pool: reads jobs, hands each to an idle worker, writes records, replaces workers.
//!
//! It is a single task reacting to one stream of events at a time (signals, worker events,
//! input), so every decision about which worker runs what is made in one place. It reads a
//! line only when a worker will be free to take it, which keeps memory bounded and means
//! that on an interrupted run, lines not yet read stay in the input.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::config::RetryOn;
use crate::exit::{RunEnd, CANNOT_RUN, NOT_FOUND};
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
        let exp = self
            .delay
            .saturating_mul(1 << (next.saturating_sub(2)).min(16));
        exp.mul_f64(0.5 + fastrand::f64())
            .min(Duration::from_secs(600))
    }
}

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
}

struct Slot {
    handle: WorkerHandle,
    busy: bool,
}

/// Runs the pool until the input is done (or the run is interrupted) and every worker is
/// gone. Returns how the run ended and its statistics.
pub async fn run(cfg: PoolConfig, spawner: Spawner, source: Source, sink: Sink) -> (RunEnd, Stats) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut pool = Pool {
        settings: cfg.settings,
        size: cfg.workers.max(1),
        spawner,
        events_tx,
        events,
        source,
        sink,
        stats: Stats::default(),
        progress: cfg.progress,
        retry: cfg.retry,
        shutdown_timeout: cfg.shutdown_timeout,
        delayed: BTreeMap::new(),
        stop_at: None,
        next_run_id: 0,
        workers: HashMap::new(),
        idle: VecDeque::new(),
        pending: VecDeque::new(),
        next_worker: 1,
        missing: cfg.workers.max(1),
        respawn_at: None,
        ever_ready: false,
        start_failures: 0,
        interrupted: None,
        fatal: None,
    };
    pool.run().await;
    let end = match (pool.fatal.take(), pool.interrupted) {
        (Some(end), _) => end,
        (None, Some(sig)) => RunEnd::Interrupted(sig),
        (None, None) => RunEnd::Completed,
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
}

impl Pool {
    async fn run(&mut self) {
        let mut interrupts = match Interrupts::listen() {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("cannot listen for signals: {e}");
                self.fatal = Some(RunEnd::Failed);
                return;
            }
        };
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
                Some(event) = self.events.recv() => self.on_event(event),
                _ = sleep_until(self.respawn_at.unwrap_or_else(Instant::now)), if self.respawn_at.is_some() => {
                    self.respawn_at = None;
                    self.spawn_missing();
                }
                _ = sleep_until(next_retry.unwrap_or_else(Instant::now)), if next_retry.is_some() => {
                    self.release_due_retries();
                }
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
            }
        }
        self.shut_down(&mut interrupts).await;
    }

    /// Whether new jobs may be read.
    fn accepting(&self) -> bool {
        self.ever_ready
            && self.interrupted.is_none()
            && self.fatal.is_none()
            && !self.source.is_done()
            && self.sink.has_room()
    }

    /// Whether the main loop is over: nothing more to read or allowed, and no job running.
    fn stopped(&self) -> bool {
        let busy = self.workers.values().any(|s| s.busy);
        let no_more = self.interrupted.is_some()
            || self.fatal.is_some()
            || (self.source.is_done() && self.pending.is_empty() && self.delayed.is_empty());
        no_more && !busy
    }

    fn spawn_missing(&mut self) {
        if self.fatal.is_some() || self.interrupted.is_some() {
            return;
        }
        while self.missing > 0 {
            self.missing -= 1;
            let id = self.next_worker;
            self.next_worker += 1;
            let handle = WorkerHandle::start(
                id,
                Arc::clone(&self.settings),
                self.spawner.clone(),
                self.events_tx.clone(),
            );
            self.workers.insert(
                id,
                Slot {
                    handle,
                    busy: false,
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
            }
            Event::Finished {
                worker,
                record,
                job,
                retiring,
            } => {
                if record.worker.is_some() && record.outcome != Outcome::Cancelled {
                    self.start_failures = 0;
                }
                self.record_or_retry(*record, *job);
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.busy = false;
                    if !retiring {
                        self.idle.push_back(worker);
                    }
                }
                self.dispatch();
            }
            Event::Bounced { worker, job } => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.busy = false;
                }
                self.idle.retain(|w| *w != worker);
                if self.interrupted.is_some() || self.fatal.is_some() {
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
                self.workers.remove(&worker);
                self.idle.retain(|w| *w != worker);
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
        let retry = self.interrupted.is_none()
            && self.fatal.is_none()
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
        for slot in self.workers.values().filter(|s| s.busy) {
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
            let running = self.workers.values().filter(|s| s.busy).count();
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
        record.error = Some(match self.interrupted {
            Some(sig) => format!(
                "not started: the run was interrupted by {}",
                crate::reaper::signal_name(sig)
            ),
            None => "not started: the run was stopped by an error".into(),
        });
        self.record(record);
    }

    fn dispatch(&mut self) {
        while !self.pending.is_empty() {
            let Some(worker) = self.idle.pop_front() else {
                return;
            };
            let Some(slot) = self.workers.get_mut(&worker) else {
                continue;
            };
            let mut job = self.pending.pop_front().expect("checked non-empty");
            self.next_run_id += 1;
            job.run_id = self.next_run_id;
            match slot.handle.send(Control::Run(Box::new(job))) {
                Ok(()) => slot.busy = true,
                // The worker task is gone; its Exited event is on its way.
                Err(Control::Run(job)) => self.pending.push_front(*job),
                Err(_) => {}
            }
        }
    }

    fn record(&mut self, record: Record) {
        self.stats.observe(&record);
        self.progress.update(&self.stats);
        if let Err(e) = self.sink.push(record) {
            self.output_failed(e);
        }
    }

    fn output_failed(&mut self, e: std::io::Error) {
        if self.fatal.is_none() {
            tracing::error!("cannot write results: {e}");
            self.stop_reading();
            self.fatal = Some(RunEnd::Failed);
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
                Some(event) = self.events.recv() => match event {
                    Event::Exited { worker, .. } => {
                        self.workers.remove(&worker);
                    }
                    Event::Finished { record, .. } => self.record(*record),
                    Event::Bounced { job, .. } => self.cancel(*job),
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
        if let Err(e) = self.sink.finish() {
            self.output_failed(e);
        }
        self.progress.finish();
    }
}
