//! The pool: reads jobs, hands each to an idle worker, writes records, replaces workers.
//!
//! It is a single task reacting to one stream of events at a time (signals, worker events,
//! input), so every decision about which worker runs what is made in one place. It reads a
//! line only when a worker will be free to take it, which keeps memory bounded and means
//! that on an interrupted run, lines not yet read stay in the input.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

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

/// What a pool needs.
pub struct PoolConfig {
    /// How many workers run at once.
    pub workers: usize,
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
            tokio::select! {
                biased;
                (sig, n) = interrupts.recv() => (0..n).for_each(|_| self.on_signal(sig)),
                Some(event) = self.events.recv() => self.on_event(event),
                _ = sleep_until(self.respawn_at.unwrap_or_else(Instant::now)), if self.respawn_at.is_some() => {
                    self.respawn_at = None;
                    self.spawn_missing();
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
            || (self.source.is_done() && self.pending.is_empty());
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
                retiring,
            } => {
                if record.worker.is_some() && record.outcome != Outcome::Cancelled {
                    self.start_failures = 0;
                }
                self.record(*record);
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
        } else {
            tracing::warn!("{name} received again: cancelling the running jobs");
            for slot in self.workers.values().filter(|s| s.busy) {
                let _ = slot
                    .handle
                    .send(Control::Cancel(format!("cancelled by {name}")));
            }
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
    }

    fn on_read_after_stop(&mut self, item: Item) {
        match item {
            Item::Job(job) => self.cancel(*job),
            Item::Rejected(record) => self.record(*record),
            Item::End | Item::Failed(_) => {}
        }
    }

    fn cancel(&mut self, job: JobSpec) {
        let mut record = Record::new(&job, Outcome::Cancelled);
        record.attempts = 0;
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
            let job = self.pending.pop_front().expect("checked non-empty");
            match slot.handle.send(Control::Run(job)) {
                Ok(()) => slot.busy = true,
                // The worker task is gone; its Exited event is on its way.
                Err(Control::Run(job)) => self.pending.push_front(job),
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
        while let Some(item) = self.source.try_next() {
            self.on_read_after_stop(item);
        }
        if let Err(e) = self.sink.finish() {
            self.output_failed(e);
        }
        self.progress.finish();
    }
}
