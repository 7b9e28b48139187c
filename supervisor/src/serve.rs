//! `jobsup serve`: the worker pool fed by a Redis Streams consumer group.
//!
//! The same worker tasks, deadline machinery and records as `jobsup run`, with a queue's
//! rules around them: entries are taken only for idle workers, the supervisor renews
//! each in-flight entry's lease, a job whose lease could not be kept is stopped and its
//! result dropped, and an attempt ends only through the fenced finish script
//! ([`crate::queue`]). It is a loop of its own rather than the pool's: the pool reads
//! ahead, retries in memory and cancels what it read on a stop, where a queue must leave
//! jobs in Redis, retry through Redis and give unfinished entries back.
//!
//! Redis is spoken to from three tasks, each with its own connection, so that none
//! waits for another: the reader (the take script, then a blocking `XREADGROUP`), the
//! renewer, and the finisher (which sends the finish scripts in pipelined batches).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::config::RetryOn;
use crate::exit::{RunEnd, CANNOT_RUN, NOT_FOUND};
use crate::live::StartError;
use crate::metrics::Metrics;
use crate::queue::{self, Action, Finish, Keys, Redis, TakeAsk, Taken};
use crate::record::{JobSpec, Outcome, Record};
use crate::sandbox::{SpawnError, Spawner};
use crate::signals::Interrupts;
use crate::source::Defaults;
use crate::summary::Stats;
use crate::worker::{Control, Event, WorkerHandle, WorkerSettings};

/// Where and how a serve consumes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Redis URL.
    pub redis: String,
    /// The queue's keys.
    pub keys: Keys,
    /// The consumer group.
    pub group: String,
    /// This consumer's name in it.
    pub consumer: String,
    /// How long an entry stays this consumer's without a renewal.
    pub lease: Duration,
    /// Deliveries allowed before a job is dead-lettered.
    pub max_attempts: u32,
    /// Which outcomes are tried again.
    pub retry_on: Vec<RetryOn>,
    /// The first retry's delay (doubling per attempt, with jitter).
    pub retry_delay: Duration,
    /// How many workers.
    pub workers: usize,
    /// After SIGTERM, how long running jobs may go on before they are stopped.
    pub shutdown_timeout: Option<Duration>,
    /// Where to serve Prometheus text on `/metrics`.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Counts of what the queue side did, for the log at the end.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Completions refused by the fence: not acked, nothing stored.
    pub stale: u64,
    /// Jobs stopped because their lease could not be kept; their results dropped.
    pub lease_lost: u64,
    /// Entries given back on the stream.
    pub released: u64,
    /// Lease renewals that failed (Redis did not answer).
    pub renewal_failures: u64,
    /// Entries reclaimed from a consumer that lost them.
    pub reclaimed: u64,
}

/// A job on a worker.
struct Flight {
    entry: String,
    deliveries: u64,
    /// The job, without its payload.
    job: JobSpec,
    /// When the lease was last known to be renewed (when that renewal was sent).
    renewed: Instant,
    /// Its lease was lost: the job is being stopped and its result will be dropped.
    lost: bool,
}

/// An entry taken and not yet on a worker (its worker died before taking it, and a new
/// one is starting). Its lease is renewed like a running job's: a processor that takes
/// longer than a lease to start must not let a peer take the entry meanwhile.
struct Waiting {
    entry: String,
    deliveries: u64,
    used: u32,
    job: JobSpec,
    /// When its lease was last known to be renewed (taking it counts).
    renewed: Instant,
}

/// When a renewal was sent, and the `(entry, deliveries)` it renews: those in flight and
/// those waiting for a worker.
type RenewRequest = (Instant, Vec<(String, u64)>);

enum FromRedis {
    Taken(Vec<Taken>),
    Renewed {
        sent: Instant,
        asked: Vec<String>,
        kept: Option<Vec<String>>,
    },
    Finished {
        acked: bool,
        finish: Box<Finish>,
    },
}

/// Runs the serve loop until a signal drains it (or the processor cannot start).
pub async fn run(
    opts: Options,
    settings: Arc<WorkerSettings>,
    spawner: Spawner,
    defaults: Defaults,
) -> (RunEnd, Stats, Counters) {
    let mut stats = Stats::default();
    let mut interrupts = match Interrupts::listen() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("cannot listen for signals: {e}");
            return (RunEnd::Failed, stats, Counters::default());
        }
    };
    // A clear error now beats a retry loop when the URL or the stream is wrong.
    let mut setup = match Redis::open(&opts.redis, Duration::from_secs(5)) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return (RunEnd::Failed, stats, Counters::default());
        }
    };
    if let Err(e) = prepare(&mut setup, &opts).await {
        tracing::error!("{e}");
        return (RunEnd::Failed, stats, Counters::default());
    }
    let metrics = Arc::new(Metrics::new());
    let mut redis_tasks = JoinSet::new();
    if let Some(addr) = opts.metrics {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!("metrics on http://{addr}/metrics");
                redis_tasks.spawn(crate::metrics::serve_http(listener, Arc::clone(&metrics)));
            }
            Err(e) => {
                tracing::error!("--metrics {addr}: {e}");
                return (RunEnd::Failed, stats, Counters::default());
            }
        }
    }
    let (from_redis_tx, from_redis) = mpsc::unbounded_channel();
    let (take_tx, take_rx) = mpsc::unbounded_channel();
    let (renew_tx, renew_rx) = mpsc::unbounded_channel();
    let (finish_tx, finish_rx) = mpsc::unbounded_channel();
    redis_tasks.spawn(reader(opts.clone(), take_rx, from_redis_tx.clone()));
    redis_tasks.spawn(renewer(opts.clone(), renew_rx, from_redis_tx.clone()));
    redis_tasks.spawn(finisher(opts.clone(), finish_rx, from_redis_tx));
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut serve = Serve {
        size: crate::pool::workers_that_fit(opts.workers),
        opts,
        settings,
        spawner,
        defaults,
        events_tx,
        events,
        tasks: JoinSet::new(),
        workers: HashMap::new(),
        idle: VecDeque::new(),
        waiting: VecDeque::new(),
        flights: HashMap::new(),
        next_worker: 1,
        next_run: 0,
        next_seq: 0,
        missing: 0,
        respawn_at: None,
        ever_ready: false,
        start_failures: 0,
        taking: false,
        renewing: false,
        finishing: 0,
        last_claim: None,
        interrupted: None,
        forced: false,
        stop_at: None,
        fatal: None,
        take_tx,
        renew_tx,
        finish_tx,
        from_redis,
        counters: Counters::default(),
        metrics,
        stats: &mut stats,
    };
    serve.missing = serve.size;
    serve.run(&mut interrupts).await;
    let end = match (serve.fatal.take(), serve.interrupted) {
        (Some(end), _) => end,
        (None, Some(sig)) => RunEnd::Interrupted(sig),
        (None, None) => RunEnd::Completed,
    };
    let counters = serve.counters.clone();
    drop(serve);
    redis_tasks.abort_all();
    (end, stats, counters)
}

/// Creates the group (reading the stream from its start) and warns when Redis would not
/// keep what it acknowledged across a restart.
async fn prepare(redis: &mut Redis, opts: &Options) -> Result<(), String> {
    let mut create = redis::cmd("XGROUP");
    create
        .arg("CREATE")
        .arg(&opts.keys.stream)
        .arg(&opts.group)
        .arg("0")
        .arg("MKSTREAM");
    match redis.query::<redis::Value>(&create).await {
        Ok(_) => {}
        Err(e) if e.code() == Some("BUSYGROUP") => {}
        Err(e) => return Err(format!("cannot use Redis at {}: {e}", opts.redis)),
    }
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("appendonly");
    match redis.query::<Vec<String>>(&get).await {
        Ok(v) if v.get(1).map(String::as_str) == Some("yes") => {}
        Ok(_) => tracing::warn!(
            "Redis runs without appendonly: a Redis restart loses what it acknowledged since its last snapshot (jobs may run again, or be lost); see the README on persistence"
        ),
        // Managed Redis often refuses CONFIG: nothing to say then.
        Err(e) => tracing::debug!("cannot read Redis's persistence settings: {e}"),
    }
    Ok(())
}

/// The reader task: for each request of `n`, takes up to `n` entries (retries due, then
/// reclaimed ones, then new ones) and, when there were none, waits a moment on the stream.
async fn reader(
    opts: Options,
    mut asks: mpsc::UnboundedReceiver<TakeAsk>,
    out: mpsc::UnboundedSender<FromRedis>,
) {
    let Ok(mut redis) = Redis::open(&opts.redis, Duration::from_secs(5)) else {
        return;
    };
    let mut failures = 0u32;
    while let Some(ask) = asks.recv().await {
        let n = ask.count;
        let take = queue::take(&opts.keys, &opts.group, &opts.consumer, ask);
        let mut got = match redis.query(&take).await.map_err(|e| e.to_string()) {
            Ok(v) => queue::parse_taken(v),
            Err(e) => Err(e),
        };
        if matches!(&got, Ok(v) if v.is_empty()) {
            // Nothing now: wait on the stream, briefly, so that retries falling due and
            // the reclaim timer are not held up for long.
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&opts.group)
                .arg(&opts.consumer)
                .arg("COUNT")
                .arg(n)
                .arg("BLOCK")
                .arg(500)
                .arg("STREAMS")
                .arg(&opts.keys.stream)
                .arg(">");
            got = match redis.query(&read).await {
                Ok(v) => queue::parse_read(v),
                Err(e) => Err(e.to_string()),
            };
        }
        let taken = match got {
            Ok(t) => {
                if failures > 0 {
                    tracing::info!("Redis reachable again");
                }
                failures = 0;
                t
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!("cannot take jobs from Redis ({e}); retrying with backoff");
                }
                failures += 1;
                tokio::time::sleep(queue::backoff(failures)).await;
                Vec::new()
            }
        };
        if out.send(FromRedis::Taken(taken)).is_err() {
            return;
        }
    }
}

/// The renewer task: one renew script per request; `kept: None` when Redis did not answer.
async fn renewer(
    opts: Options,
    mut asks: mpsc::UnboundedReceiver<RenewRequest>,
    out: mpsc::UnboundedSender<FromRedis>,
) {
    let Ok(mut redis) = Redis::open(&opts.redis, opts.lease / 3) else {
        return;
    };
    while let Some((sent, flights)) = asks.recv().await {
        let cmd = queue::renew(
            &opts.keys,
            &opts.group,
            &opts.consumer,
            flights.iter().map(|(e, d)| (e.as_str(), *d)),
        );
        let kept = match redis.query::<Vec<String>>(&cmd).await {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("cannot renew {} lease(s): {e}", flights.len());
                None
            }
        };
        let asked = flights.into_iter().map(|(entry, _)| entry).collect();
        if out.send(FromRedis::Renewed { sent, asked, kept }).is_err() {
            return;
        }
    }
}

/// The finisher task: sends the finish scripts in batches (one round trip for what has
/// queued up), retrying a batch with backoff while Redis is unreachable.
async fn finisher(
    opts: Options,
    mut asks: mpsc::UnboundedReceiver<Finish>,
    out: mpsc::UnboundedSender<FromRedis>,
) {
    let Ok(mut redis) = Redis::open(&opts.redis, Duration::from_secs(5)) else {
        return;
    };
    let mut failures = 0u32;
    while let Some(first) = asks.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match asks.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let cmds: Vec<_> = batch
            .iter()
            .map(|f| f.command(&opts.keys, &opts.group, &opts.consumer))
            .collect();
        let replies = loop {
            match redis.pipeline(&cmds).await {
                Ok(r) => break r,
                Err(e) => {
                    if failures == 0 {
                        tracing::warn!(
                            "cannot store {} result(s) in Redis ({e}); retrying with backoff",
                            batch.len()
                        );
                    }
                    failures += 1;
                    tokio::time::sleep(queue::backoff(failures)).await;
                }
            }
        };
        if failures > 0 {
            tracing::info!("Redis reachable again; results stored");
        }
        failures = 0;
        for (finish, reply) in batch.into_iter().zip(replies) {
            let (acked, taken) = finish.parse_reply(reply);
            let msg = FromRedis::Finished {
                acked,
                finish: Box::new(finish),
            };
            if out.send(msg).is_err() {
                return;
            }
            // The take that rode along: answered even when it failed, so that the next
            // take (through the reader) can be asked for.
            if let Some(taken) = taken {
                let taken = taken.unwrap_or_else(|e| {
                    tracing::warn!("cannot take jobs from Redis ({e})");
                    Vec::new()
                });
                if out.send(FromRedis::Taken(taken)).is_err() {
                    return;
                }
            }
        }
    }
}

struct Slot {
    handle: WorkerHandle,
    running: Option<u64>,
}

struct Serve<'a> {
    opts: Options,
    size: usize,
    settings: Arc<WorkerSettings>,
    spawner: Spawner,
    defaults: Defaults,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    tasks: JoinSet<()>,
    workers: HashMap<u64, Slot>,
    idle: VecDeque<u64>,
    waiting: VecDeque<Waiting>,
    /// In flight, by hand-off number.
    flights: HashMap<u64, Flight>,
    next_worker: u64,
    next_run: u64,
    next_seq: u64,
    missing: usize,
    respawn_at: Option<Instant>,
    ever_ready: bool,
    start_failures: u32,
    /// A take request is out.
    taking: bool,
    /// A renewal is out.
    renewing: bool,
    /// Finish scripts sent and not answered.
    finishing: usize,
    last_claim: Option<Instant>,
    interrupted: Option<i32>,
    /// A second signal: stop without waiting for Redis.
    forced: bool,
    stop_at: Option<Instant>,
    fatal: Option<RunEnd>,
    take_tx: mpsc::UnboundedSender<TakeAsk>,
    renew_tx: mpsc::UnboundedSender<RenewRequest>,
    finish_tx: mpsc::UnboundedSender<Finish>,
    from_redis: mpsc::UnboundedReceiver<FromRedis>,
    counters: Counters,
    metrics: Arc<Metrics>,
    stats: &'a mut Stats,
}

impl Serve<'_> {
    fn stopping(&self) -> bool {
        self.interrupted.is_some() || self.fatal.is_some()
    }

    fn done(&self) -> bool {
        // After a second signal, answers Redis still owes (it may be down) are not waited
        // for: what they were about stays pending there, and a peer reclaims it.
        self.stopping()
            && self.flights.is_empty()
            && (self.forced || (self.waiting.is_empty() && !self.taking && self.finishing == 0))
    }

    async fn run(&mut self, interrupts: &mut Interrupts) {
        self.spawn_missing();
        let lease = self.opts.lease;
        let mut renew_tick = tokio::time::interval(lease / 3);
        // Checked more often than renewed, so that a lost lease is acted on soon.
        let mut lease_tick = tokio::time::interval(lease / 6);
        while !self.done() {
            self.ask_for_jobs();
            self.metrics.in_flight.set(self.flights.len() as i64);
            self.metrics.workers.set(self.workers.len() as i64);
            let (respawn, stop_at) = (self.respawn_at, self.stop_at);
            tokio::select! {
                biased;
                (sig, n) = interrupts.recv() => (0..n).for_each(|_| self.on_signal(sig)),
                Some(event) = self.events.recv() => self.on_event(event),
                Some(msg) = self.from_redis.recv() => self.on_redis(msg),
                Some(ended) = self.tasks.join_next() => {
                    if let Err(e) = ended {
                        tracing::error!("internal error in a worker task: {e}");
                        self.fail(RunEnd::Failed);
                    }
                }
                _ = renew_tick.tick() => self.renew(),
                _ = lease_tick.tick() => self.check_leases(),
                _ = sleep_until(respawn.unwrap_or_else(Instant::now)), if respawn.is_some() => {
                    self.respawn_at = None;
                    self.spawn_missing();
                }
                _ = sleep_until(stop_at.unwrap_or_else(Instant::now)), if stop_at.is_some() => {
                    self.stop_at = None;
                    tracing::warn!("the shutdown timeout passed: stopping the running jobs");
                    self.stop_running("the supervisor is stopping", self.settings.retire_grace);
                }
            }
        }
        self.shut_down(interrupts).await;
    }

    /// Takes entries for the idle workers through the reader, unless a take is out.
    fn ask_for_jobs(&mut self) {
        let Some(ask) = self.next_take() else {
            return;
        };
        if self.take_tx.send(ask).is_err() {
            self.taking = false;
        }
    }

    /// The next take, if one is due: as many entries as idle workers, never more (no
    /// prefetch beyond free slots), reclaiming lapsed entries every half lease. Counts it
    /// as out: the caller sends it, through the reader or along with a finish.
    fn next_take(&mut self) -> Option<TakeAsk> {
        if self.taking || self.stopping() || !self.ever_ready {
            return None;
        }
        let free = self.idle.len().saturating_sub(self.waiting.len());
        if free == 0 {
            return None;
        }
        let now = Instant::now();
        let claim = match self.last_claim {
            None => true,
            Some(at) => now.duration_since(at) >= self.opts.lease / 2,
        };
        if claim {
            self.last_claim = Some(now);
        }
        self.taking = true;
        Some(TakeAsk {
            count: free,
            claim: claim.then_some(self.opts.lease),
        })
    }

    fn on_redis(&mut self, msg: FromRedis) {
        match msg {
            FromRedis::Taken(taken) => {
                self.taking = false;
                for t in taken {
                    self.on_taken(t);
                }
                self.dispatch();
            }
            FromRedis::Renewed { sent, asked, kept } => {
                self.renewing = false;
                let Some(kept) = kept else {
                    self.counters.renewal_failures += 1;
                    self.metrics.renewal_failures.inc();
                    return;
                };
                self.metrics.renewals.inc_by(kept.len() as u64);
                let kept: std::collections::HashSet<String> = kept.into_iter().collect();
                let why = "another consumer took over its entry";
                for entry in asked {
                    let renewed = kept.contains(&entry);
                    if let Some(w) = self.waiting.iter_mut().find(|w| w.entry == entry) {
                        if renewed {
                            w.renewed = w.renewed.max(sent);
                        } else {
                            self.drop_waiting(&entry, why);
                        }
                        continue;
                    }
                    let Some((&run, flight)) =
                        self.flights.iter_mut().find(|(_, f)| f.entry == entry)
                    else {
                        continue;
                    };
                    if renewed {
                        flight.renewed = flight.renewed.max(sent);
                    } else if !flight.lost {
                        self.lose(run, why);
                    }
                }
            }
            FromRedis::Finished { acked, finish } => {
                self.finishing -= 1;
                if acked {
                    if finish.action == Action::Release {
                        self.counters.released += 1;
                    }
                } else {
                    self.counters.stale += 1;
                    self.metrics.stale.inc();
                    tracing::warn!(
                        entry = %finish.entry,
                        id = %finish.id,
                        "stale completion of job {} (attempt {}): its entry is no longer this consumer's at this delivery; not acknowledged",
                        finish.id,
                        finish.attempt
                    );
                }
            }
        }
    }

    fn on_taken(&mut self, taken: Taken) {
        self.next_seq += 1;
        let seq = self.next_seq;
        if taken.deliveries > 1 {
            self.counters.reclaimed += 1;
            self.metrics.reclaimed.inc();
        }
        let (job, used) = queue::job_of(&taken, seq, &self.defaults);
        let attempt = used.saturating_add(u32::try_from(taken.deliveries).unwrap_or(u32::MAX));
        let mut job = match job {
            Ok(job) => job,
            Err(mut record) => {
                record.attempts = attempt;
                return self.finish(&taken.entry, taken.deliveries, record, Action::Done);
            }
        };
        job.attempt = attempt;
        if self.stopping() {
            // Taken just as the stop came: back on the stream, this delivery not counted.
            return self.release(&taken.entry, taken.deliveries, &job, used);
        }
        if attempt > self.opts.max_attempts {
            // Delivered again after its attempts ran out: each earlier one ended with no
            // result (its supervisor died or lost the lease).
            let mut record = Record::new(&job, Outcome::Crashed);
            record.attempts = attempt - 1;
            record.deadline = Some("lease");
            record.error = Some(format!(
                "lease_expired: delivered {attempt} times, more than --max-attempts {}; the earlier attempts ended without a result (their supervisor died or lost the lease)",
                self.opts.max_attempts
            ));
            return self.finish(&taken.entry, taken.deliveries, record, Action::Dead);
        }
        self.waiting.push_back(Waiting {
            entry: taken.entry,
            deliveries: taken.deliveries,
            used,
            job,
            renewed: Instant::now(),
        });
    }

    fn dispatch(&mut self) {
        while !self.waiting.is_empty() {
            let Some(worker) = self.idle.pop_front() else {
                return;
            };
            let Some(slot) = self.workers.get_mut(&worker) else {
                continue;
            };
            let Some(w) = self.waiting.pop_front() else {
                return;
            };
            self.next_run += 1;
            let mut job = w.job;
            job.run_id = self.next_run;
            let flight = Flight {
                entry: w.entry,
                deliveries: w.deliveries,
                job: job.without_payload(),
                renewed: w.renewed,
                lost: false,
            };
            match slot.handle.send(Control::Run(Box::new(job))) {
                Ok(()) => {
                    slot.running = Some(self.next_run);
                    self.flights.insert(self.next_run, flight);
                }
                Err(Control::Run(job)) => self.waiting.push_front(Waiting {
                    entry: flight.entry,
                    deliveries: flight.deliveries,
                    used: w.used,
                    job: *job,
                    renewed: flight.renewed,
                }),
                Err(_) => {}
            }
        }
    }

    fn renew(&mut self) {
        if self.renewing {
            return;
        }
        let list = self
            .flights
            .values()
            .filter(|f| !f.lost)
            .map(|f| (f.entry.clone(), f.deliveries))
            .chain(self.waiting.iter().map(|w| (w.entry.clone(), w.deliveries)))
            .collect::<Vec<_>>();
        if list.is_empty() {
            return;
        }
        if self.renew_tx.send((Instant::now(), list)).is_ok() {
            self.renewing = true;
        }
    }

    /// A job whose lease has not been renewed for most of a lease is stopped: another
    /// supervisor may take its entry soon, and the same job must not run twice at once.
    fn check_leases(&mut self) {
        let limit = self.opts.lease.mul_f64(2.0 / 3.0);
        let now = Instant::now();
        let late: Vec<u64> = self
            .flights
            .iter()
            .filter(|(_, f)| !f.lost && now.duration_since(f.renewed) > limit)
            .map(|(run, _)| *run)
            .collect();
        for run in late {
            self.lose(run, "its lease could not be renewed");
        }
        let late: Vec<String> = self
            .waiting
            .iter()
            .filter(|w| now.duration_since(w.renewed) > limit)
            .map(|w| w.entry.clone())
            .collect();
        for entry in late {
            self.drop_waiting(&entry, "its lease could not be renewed");
        }
    }

    /// A waiting entry whose lease was lost is not run: another consumer may have it (or
    /// will, once its lease runs out), and nothing of this delivery is stored.
    fn drop_waiting(&mut self, entry: &str, why: &str) {
        let Some(at) = self.waiting.iter().position(|w| w.entry == entry) else {
            return;
        };
        let Some(w) = self.waiting.remove(at) else {
            return;
        };
        self.count_lost_lease();
        tracing::warn!(
            id = %w.job.id,
            entry = %w.entry,
            "job {} lost its lease before a worker took it ({why}): not run here; its entry is left to its new owner",
            w.job.id
        );
    }

    /// One more lease lost, in the end-of-run counts and the metrics.
    fn count_lost_lease(&mut self) {
        self.counters.lease_lost += 1;
        self.metrics.leases_lost.inc();
    }

    fn lose(&mut self, run: u64, why: &str) {
        let Some(flight) = self.flights.get_mut(&run) else {
            return;
        };
        flight.lost = true;
        tracing::warn!(
            id = %flight.job.id,
            entry = %flight.entry,
            "job {} lost its lease ({why}): stopping it; its result will be dropped",
            flight.job.id
        );
        let grace = flight.job.cleanup;
        self.count_lost_lease();
        if let Some(slot) = self.workers.values().find(|s| s.running == Some(run)) {
            let _ = slot.handle.send(Control::Stop {
                reason: format!("lease lost: {why}"),
                grace,
            });
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Ready { worker } => {
                self.ever_ready = true;
                self.start_failures = 0;
                if self.stopping() {
                    if let Some(slot) = self.workers.get(&worker) {
                        let _ = slot.handle.send(Control::Shutdown);
                    }
                    return;
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
                let stopping = self.stopping();
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.running = None;
                    if !retiring && !stopping {
                        self.idle.push_back(worker);
                    } else if !retiring {
                        let _ = slot.handle.send(Control::Shutdown);
                    }
                }
                self.on_finished(*record, *job);
                self.dispatch();
            }
            // `serve` hands a worker one job at a time, so nothing is ever returned; were it,
            // it is run elsewhere as a bounced one is.
            Event::Bounced { worker, job } | Event::Returned { worker, job } => {
                if let Some(slot) = self.workers.get_mut(&worker) {
                    slot.running = None;
                }
                self.idle.retain(|w| *w != worker);
                if let Some(flight) = self.flights.remove(&job.run_id) {
                    let used = job.attempt.saturating_sub(flight.deliveries as u32);
                    self.waiting.push_front(Waiting {
                        entry: flight.entry,
                        deliveries: flight.deliveries,
                        used,
                        job: *job,
                        renewed: flight.renewed,
                    });
                    if self.stopping() {
                        self.release_waiting();
                    } else {
                        self.dispatch();
                    }
                }
            }
            Event::Exited {
                worker,
                start_error,
            } => {
                self.idle.retain(|w| *w != worker);
                if let Some(run) = self.workers.remove(&worker).and_then(|s| s.running) {
                    if let Some(flight) = self.flights.remove(&run) {
                        let mut record = Record::new(&flight.job, Outcome::Crashed);
                        record.worker = Some(worker);
                        record.error =
                            Some("jobsup lost track of this job (internal error)".into());
                        self.finish(&flight.entry, flight.deliveries, record, Action::Done);
                    }
                }
                self.missing += 1;
                match start_error {
                    Some(e) => self.on_start_failure(e),
                    None if self.respawn_at.is_none() => self.spawn_missing(),
                    None => {}
                }
            }
        }
    }

    fn on_finished(&mut self, mut record: Record, job: JobSpec) {
        let Some(flight) = self.flights.remove(&job.run_id) else {
            tracing::error!("internal error: a record for a job not in flight was dropped");
            return;
        };
        if flight.lost {
            tracing::warn!(
                id = %job.id,
                "job {} ended ({}) after losing its lease: result dropped, entry left to its new owner",
                job.id,
                record.outcome.as_str()
            );
            return;
        }
        record.attempts = job.attempt;
        let retried = self.opts.retry_on.iter().any(|r| r.matches(record.outcome));
        let action = if record.outcome == Outcome::Cancelled {
            // Stopped by the drain: a peer takes it at once; this attempt counts.
            Action::Release
        } else if retried && job.attempt < self.opts.max_attempts {
            Action::Retry
        } else if retried {
            Action::Dead
        } else {
            Action::Done
        };
        if action == Action::Retry {
            tracing::info!(
                id = %job.id,
                "job {} {} on attempt {}; retrying",
                job.id,
                record.outcome.as_str(),
                job.attempt
            );
        }
        self.finish(&flight.entry, flight.deliveries, record, action);
    }

    fn finish(&mut self, entry: &str, deliveries: u64, record: Record, action: Action) {
        if matches!(action, Action::Done | Action::Dead) {
            self.stats.observe(&record);
            self.metrics.observe(&record);
        }
        let json = match serde_json::to_string(&record) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("internal error: cannot encode a record: {e}");
                return;
            }
        };
        let delay = if action == Action::Retry {
            backoff(self.opts.retry_delay, record.attempts + 1)
        } else {
            Duration::ZERO
        };
        // The worker that just finished is free: its next entry comes in the same round
        // trip as this result.
        let take = self.next_take();
        let finish = Finish {
            entry: entry.to_string(),
            deliveries,
            id: record.id.clone(),
            attempt: record.attempts,
            action,
            outcome: record.outcome.as_str(),
            record: json,
            delay,
            take,
        };
        match self.finish_tx.send(finish) {
            Ok(()) => self.finishing += 1,
            Err(_) => self.taking &= take.is_none(),
        }
    }

    fn release(&mut self, entry: &str, deliveries: u64, job: &JobSpec, used: u32) {
        let mut record = Record::new(job, Outcome::Cancelled);
        record.attempts = used;
        self.finish(entry, deliveries, record, Action::Release);
    }

    fn release_waiting(&mut self) {
        while let Some(w) = self.waiting.pop_front() {
            self.release(&w.entry, w.deliveries, &w.job, w.used);
        }
    }

    fn on_signal(&mut self, sig: i32) {
        let name = crate::reaper::signal_name(sig);
        if self.interrupted.is_none() {
            self.interrupted = Some(sig);
            tracing::warn!(
                "{name} received: taking no more jobs; {} running job(s) may finish (their leases are still renewed); send it again to stop them now",
                self.flights.len()
            );
            self.release_waiting();
            self.stop_at = self.opts.shutdown_timeout.map(|d| Instant::now() + d);
            for w in std::mem::take(&mut self.idle) {
                if let Some(slot) = self.workers.get(&w) {
                    let _ = slot.handle.send(Control::Shutdown);
                }
            }
        } else {
            tracing::warn!("{name} received again: stopping the running jobs");
            self.forced = true;
            self.stop_at = None;
            self.stop_running("the supervisor was stopped", Duration::ZERO);
        }
    }

    fn stop_running(&mut self, reason: &str, grace: Duration) {
        for slot in self.workers.values().filter(|s| s.running.is_some()) {
            let _ = slot.handle.send(Control::Stop {
                reason: reason.to_string(),
                grace,
            });
        }
    }

    fn fail(&mut self, end: RunEnd) {
        if self.fatal.is_none() {
            self.fatal = Some(end);
            self.release_waiting();
            self.stop_running("the supervisor failed", self.settings.retire_grace);
        }
    }

    fn spawn_missing(&mut self) {
        if self.stopping() {
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
            self.workers.insert(
                id,
                Slot {
                    handle,
                    running: None,
                },
            );
        }
    }

    fn on_start_failure(&mut self, error: StartError) {
        if self.stopping() {
            return;
        }
        let fatal = match &error {
            StartError::Spawn(SpawnError::NotFound { .. }) => Some(RunEnd::CannotStart(NOT_FOUND)),
            StartError::Spawn(SpawnError::NotExecutable { .. }) => {
                Some(RunEnd::CannotStart(CANNOT_RUN))
            }
            StartError::Spawn(SpawnError::Other { .. }) => Some(RunEnd::Failed),
            _ if !self.ever_ready => Some(RunEnd::CannotStart(CANNOT_RUN)),
            _ => {
                self.start_failures += 1;
                (self.start_failures >= 5).then_some(RunEnd::CannotStart(CANNOT_RUN))
            }
        };
        match fatal {
            Some(end) => {
                tracing::error!("{error}");
                self.fail(end);
            }
            None => {
                let wait = Duration::from_millis(100 << self.start_failures.min(6));
                tracing::warn!("{error}; starting a replacement in {wait:?}");
                self.respawn_at = Some(Instant::now() + wait);
            }
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
                Some(ended) = self.tasks.join_next() => {
                    if let Err(e) = ended {
                        tracing::error!("internal error in a worker task: {e}");
                    }
                }
                Some(event) = self.events.recv() => match event {
                    Event::Exited { worker, .. } => { self.workers.remove(&worker); }
                    Event::Ready { worker } => {
                        if let Some(slot) = self.workers.get(&worker) {
                            let _ = slot.handle.send(Control::Shutdown);
                        }
                    }
                    // Nothing runs by now: every job was finished or released.
                    Event::Finished { .. } | Event::Bounced { .. } | Event::Returned { .. } => {}
                },
            }
        }
        let c = &self.counters;
        tracing::info!(
            stale = c.stale,
            lease_lost = c.lease_lost,
            released = c.released,
            renewal_failures = c.renewal_failures,
            reclaimed = c.reclaimed,
            "serve stopped: {} stale completion(s), {} lease(s) lost, {} entr(ies) released, {} reclaimed",
            c.stale,
            c.lease_lost,
            c.released,
            c.reclaimed
        );
    }
}

/// The wait before attempt `next`: the delay doubling per attempt, ±50% jitter, at most
/// 10 minutes.
fn backoff(delay: Duration, next: u32) -> Duration {
    let cap = Duration::from_secs(600);
    let exp = delay
        .saturating_mul(1 << next.saturating_sub(2).min(16))
        .min(cap);
    exp.mul_f64(0.5 + fastrand::f64()).min(cap)
}
