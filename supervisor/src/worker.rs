//! One worker slot, owned by one task: an actor behind a [`WorkerHandle`].
//!
//! The pool talks to a worker only through [`Control`] messages and hears back only through
//! [`Event`]s. The task owns its process (in exec mode, one process per job), its pipes and
//! its private directory, and is the only one that decides its jobs' outcomes (see
//! [`crate::run`]).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use jobsup_protocol::{Codec, FromWorker};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::link::{LinkError, Mode};
use crate::live::{frame_name, Live, StartError};
use crate::record::{JobSpec, Record};
use crate::sandbox::{SpawnSpec, Spawner};

/// What every worker of a pool is started with.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The pool's name, on every log event of its workers.
    pub pool: Arc<str>,
    /// How jobs reach the processor.
    pub mode: Mode,
    /// Warn about a job still running after this long.
    pub slow: Option<Duration>,
    /// Native mode: no heartbeat or progress for this long counts as the ttl passing.
    pub idle_timeout: Option<Duration>,
    /// The processor and its arguments (the worker id is filled in per worker).
    pub spawn: SpawnSpec,
    /// How long a new native worker may take to say hello.
    pub start_timeout: Duration,
    /// Retire a worker after this many jobs.
    pub max_jobs: Option<u64>,
    /// How long a retiring idle worker may take to exit before it is killed.
    pub retire_grace: Duration,
    /// The cleanup request in lines and exec modes.
    pub cleanup_signal: Signal,
    /// The most output a job may return (a line in lines mode, stdout in exec mode).
    pub max_output: usize,
    /// The protocol codec.
    pub codec: Codec,
    /// `--cpu-time` as a per-job budget measured by the worker task (native and lines
    /// modes, whose workers serve many jobs; exec mode sets `RLIMIT_CPU` instead).
    pub cpu_budget: Option<Duration>,
}

/// Pool → worker.
#[derive(Debug)]
pub enum Control {
    /// Run this job: now if the worker is idle, else once its running job is over (an exec
    /// slot is handed its next job while it runs one, so that it starts the next at once
    /// rather than wait for the pool after each record).
    Run(Box<JobSpec>),
    /// Give back the jobs waiting behind the running one ([`Event::Returned`]): another
    /// worker has nothing to do.
    Unqueue,
    /// The run is stopping: ask the running job to clean up now, kill it after `grace`,
    /// and record it `cancelled` with `reason`.
    Stop {
        /// Why, for the record.
        reason: String,
        /// How long cleaning up may take.
        grace: Duration,
    },
    /// Exit when idle.
    Shutdown,
}

/// Worker → pool.
#[derive(Debug)]
pub enum Event {
    /// The worker is ready for a job.
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
        /// The job itself, should it be tried again.
        job: Box<JobSpec>,
        /// Whether the worker is going away.
        retiring: bool,
    },
    /// A job that waited behind the running one, given back untouched (at
    /// [`Control::Unqueue`], or at a stop): run it elsewhere.
    Returned {
        /// Which worker.
        worker: u64,
        /// The job.
        job: Box<JobSpec>,
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
        /// Set when it never became ready (or, in lines mode, died before its first job).
        start_error: Option<StartError>,
    },
}

/// The pool's handle on a worker task.
pub struct WorkerHandle {
    tx: mpsc::UnboundedSender<Control>,
    task: tokio::task::Id,
}

impl WorkerHandle {
    /// Starts worker number `id` of a pool of `size` in a task of its own, owned by
    /// `tasks`: whoever owns the set learns when the task ends, panics included.
    pub fn start(
        id: u64,
        size: usize,
        settings: Arc<WorkerSettings>,
        spawner: Spawner,
        events: mpsc::UnboundedSender<Event>,
        tasks: &mut JoinSet<()>,
    ) -> WorkerHandle {
        let spawner_for_thread = spawner.clone();
        let (tx, mut control) = mpsc::unbounded_channel();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let own_thread = settings.mode == Mode::Exec && size <= cpus;
        let serve = async move {
            let current_job = Arc::new(AtomicU64::new(0));
            // In exec mode the process comes with the job.
            let live = if settings.mode.reuses_processes() {
                let args = settings.spawn.args.clone();
                // Before it is ready, a worker is only ever told to stop (shut down, or
                // stop what it runs): either ends its start at once.
                let stop = async {
                    control.recv().await;
                };
                match Live::start(id, &settings, &spawner, args, &current_job, None, stop).await {
                    Ok(live) => Some(live),
                    Err(e) => {
                        // What the slot holds goes with it, as when a `Worker` drops.
                        spawner.release(id);
                        let start_error = match e {
                            StartError::Stopped { .. } => None,
                            e => Some(e),
                        };
                        let _ = events.send(Event::Exited {
                            worker: id,
                            start_error,
                        });
                        return;
                    }
                }
            } else {
                None
            };
            // A little jitter, so that a pool's workers do not all retire at once.
            let max_jobs = settings
                .max_jobs
                .map(|n| n.saturating_add(fastrand::u64(0..=n / 10)));
            let worker = Worker {
                id,
                max_jobs,
                settings,
                spawner,
                live,
                control,
                events,
                current_job,
                jobs_done: 0,
                queued: std::collections::VecDeque::new(),
                last_job: None,
                spare_workdir: None,
                deadline: crate::timer::DeadlineTimer::new(),
            };
            worker.serve().await;
        };
        let task = if own_thread {
            on_own_thread(id, spawner_for_thread, serve, tasks)
        } else {
            tasks.spawn(serve)
        };
        WorkerHandle {
            tx,
            task: task.id(),
        }
    }

    /// The id of the worker's task in its [`JoinSet`].
    pub fn task(&self) -> tokio::task::Id {
        self.task
    }

    /// Sends a control message; gives it back if the worker is gone.
    pub fn send(&self, msg: Control) -> Result<(), Control> {
        self.tx.send(msg).map_err(|e| e.0)
    }
}

/// How long an exec slot's thread lets the drains of its last process's pipes finish.
const LAST_DRAINS: Duration = Duration::from_millis(500);

/// Runs an exec slot's task on a thread of its own (with a runtime of its own), which
/// spawns the slot's processes itself ([`Spawner::spawn_here`]): a job's process then
/// starts with no hop to a spawner thread and back, and its exit wakes this thread alone.
/// Only where the pool has no more slots than CPUs: each slot's thread then has a CPU to
/// wake on, where more threads than CPUs, woken at once (200 jobs at their ttl), would
/// wait for each other, and the shared runtime, which takes many events in one wakeup,
/// keeps the deadlines better (measured: the lateness rows at `-j 200`).
/// The task in `tasks` ends when the thread's task does, and panics if it did. Where no
/// thread can be made, the task runs in `tasks` as any other.
fn on_own_thread(
    id: u64,
    spawner: Spawner,
    serve: impl std::future::Future<Output = ()> + Send + 'static,
    tasks: &mut JoinSet<()>,
) -> tokio::task::AbortHandle {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::debug!("no runtime of its own for worker slot {id}: {e}");
            return tasks.spawn(serve);
        }
    };
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    // The task goes to the thread once the thread exists, so that it is still here to run
    // on the shared runtime where no thread could be made.
    let (give, take) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name(format!("jobsup-slot-{id}"))
        .spawn(move || {
            let Ok(serve) = take.recv() else {
                return;
            };
            spawner.spawn_here();
            runtime.block_on(async {
                serve.await;
                // The drains of the last process's pipes are on this runtime: they read
                // to the end (the process is gone, so that is a moment), within a bound.
                let until = tokio::time::Instant::now() + LAST_DRAINS;
                let metrics = tokio::runtime::Handle::current().metrics();
                while metrics.num_alive_tasks() > 0 && tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            });
            // Dropped only once the slot's task is over: a panic above drops it unsent.
            let _ = done.send(());
        });
    match started {
        Ok(_) => {
            // The thread waits for it, so it is there to take it.
            let _ = give.send(serve);
            tasks.spawn(async move {
                if ended.await.is_err() {
                    panic!("worker slot {id}'s thread ended abnormally");
                }
            })
        }
        Err(e) => {
            tracing::debug!("no thread of its own for worker slot {id}: {e}");
            tasks.spawn(serve)
        }
    }
}

/// A worker task's state. Its job-running half is in [`crate::run`].
pub(crate) struct Worker {
    pub(crate) id: u64,
    pub(crate) settings: Arc<WorkerSettings>,
    pub(crate) spawner: Spawner,
    /// The process; in exec mode, only while a job runs.
    pub(crate) live: Option<Live>,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// The seq of the running job (0 when idle), for the log lines of its output.
    pub(crate) current_job: Arc<AtomicU64>,
    pub(crate) jobs_done: u64,
    /// Jobs handed to it while it ran one, in order, not started.
    pub(crate) queued: std::collections::VecDeque<Box<JobSpec>>,
    /// Retire after this many jobs (the pool's setting plus jitter).
    pub(crate) max_jobs: Option<u64>,
    /// The job this worker finished last: a late duplicate about it is ignored, not blamed
    /// on the job that runs now.
    pub(crate) last_job: Option<u64>,
    /// Exec mode: the last process's private directory, left empty and as it was made,
    /// for the next one (`Live::into_workdir`).
    pub(crate) spare_workdir: Option<tempfile::TempDir>,
    /// What a running job's deadlines are waited on (`timer`: microseconds, not tokio's
    /// milliseconds).
    pub(crate) deadline: crate::timer::DeadlineTimer,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Removed like every other private directory: off the task, and before jobsup exits.
        if let Some(dir) = self.spare_workdir.take() {
            crate::janitor::dispose(dir);
        }
        // An exec slot's namespaces are held open between its jobs, until the slot ends.
        self.spawner.release(self.id);
    }
}

/// What an idle worker task heard.
enum Idle {
    Control(Option<Control>),
    Said(Result<Option<FromWorker>, LinkError>),
    Exited,
}

/// Waits for an idle worker process to say something or to exit (forever when there is no
/// process, as in exec mode between jobs).
async fn watch_idle(live: Option<&mut Live>) -> Idle {
    let Some(live) = live else {
        return std::future::pending().await;
    };
    let open = !live.link.at_eof();
    tokio::select! {
        biased;
        msg = live.link.next(), if open => Idle::Said(msg),
        _ = live.process.exited() => Idle::Exited,
    }
}

/// Why an idle worker stops serving.
enum Leaving {
    /// Retired (shutdown, max jobs, or not reusable after its job).
    Retired,
    /// Its process died, or broke the protocol, between jobs.
    Lost,
}

impl Worker {
    /// Serves jobs until retired, then ends the process and reports.
    async fn serve(mut self) {
        let _ = self.events.send(Event::Ready { worker: self.id });
        let leaving = loop {
            let heard = match self.queued.pop_front() {
                Some(job) => Idle::Control(Some(Control::Run(job))),
                None => {
                    let control = &mut self.control;
                    let live = self.live.as_mut();
                    tokio::select! {
                        biased;
                        ctl = control.recv() => Idle::Control(ctl),
                        heard = watch_idle(live) => heard,
                    }
                }
            };
            match heard {
                Idle::Control(Some(Control::Run(job))) => {
                    if self.has_died() {
                        let _ = self.events.send(Event::Bounced {
                            worker: self.id,
                            job,
                        });
                        break Leaving::Lost;
                    }
                    let (record, reusable, job) = match self.run_job(*job).await {
                        Ok(done) => done,
                        Err(job) => {
                            // The worker never saw it: run it elsewhere.
                            let _ = self.events.send(Event::Bounced {
                                worker: self.id,
                                job,
                            });
                            break Leaving::Lost;
                        }
                    };
                    self.jobs_done += 1;
                    self.last_job = Some(job.run_id);
                    let retiring =
                        !reusable || self.max_jobs.is_some_and(|max| self.jobs_done >= max);
                    let _ = self.events.send(Event::Finished {
                        worker: self.id,
                        record: Box::new(record),
                        job: Box::new(job),
                        retiring,
                    });
                    if retiring {
                        break Leaving::Retired;
                    }
                }
                // Nothing waits behind a job that is not running.
                Idle::Control(Some(Control::Stop { .. } | Control::Unqueue)) => {}
                Idle::Control(Some(Control::Shutdown) | None) => break Leaving::Retired,
                Idle::Said(msg) => {
                    if self.idle_message_is_fatal(msg) {
                        break Leaving::Lost;
                    }
                }
                Idle::Exited => break Leaving::Lost,
            }
        };
        self.retire(leaving).await;
    }

    /// Gives the pool back every job waiting behind the running one.
    pub(crate) fn return_queued(&mut self) {
        for job in self.queued.drain(..) {
            let _ = self.events.send(Event::Returned {
                worker: self.id,
                job,
            });
        }
    }

    /// Whether `msg` is about the job this worker finished before (a duplicate result, a
    /// late heartbeat): logged, and to be ignored.
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
            self.log_stale(frame_name(msg));
        }
        stale
    }

    /// Says that a message about the job that ended before was ignored.
    pub(crate) fn log_stale(&self, frame: &str) {
        tracing::warn!(
            pool = %self.settings.pool,
            worker = self.id,
            pid = self.live.as_ref().map(|l| l.process.processor_pid()),
            job = self.last_job,
            "ignoring {frame} about a job that already ended"
        );
    }

    /// Whether the process died while idle (checked before handing it a job).
    fn has_died(&mut self) -> bool {
        self.live
            .as_mut()
            .is_some_and(|l| l.process.exit().is_some())
    }

    /// What an idle worker said; true when it must be replaced.
    fn idle_message_is_fatal(&mut self, msg: Result<Option<FromWorker>, LinkError>) -> bool {
        let pid = self.live.as_ref().map(|l| l.process.processor_pid());
        match msg {
            Ok(Some(FromWorker::Heartbeat { .. } | FromWorker::Progress { .. })) => false,
            Ok(Some(msg)) if self.is_stale(&msg) => false,
            Ok(Some(other)) => {
                tracing::warn!(
                    worker = self.id,
                    pid,
                    "worker sent {} while idle; replacing it",
                    frame_name(&other)
                );
                true
            }
            // End of its output: it is exiting; the exit will be seen.
            Ok(None) => false,
            Err(LinkError::Protocol(e) | LinkError::Overflow(e)) => {
                tracing::warn!(
                    worker = self.id,
                    pid,
                    "bad output from an idle worker: {e}; replacing it"
                );
                true
            }
        }
    }

    /// Ends the process (politely if it is still there), bounces any job that arrived in
    /// the meantime, and reports the worker gone.
    async fn retire(mut self, leaving: Leaving) {
        let mut start_error = None;
        if let Some(mut live) = self.live.take() {
            live.link.shut_down();
            let (exit, _) = live.process.end(self.settings.retire_grace).await;
            // A line worker that dies before its first job is a processor that cannot
            // serve, like a native one that never says hello.
            if matches!(leaving, Leaving::Lost)
                && self.settings.mode == Mode::Lines
                && self.jobs_done == 0
            {
                start_error = Some(StartError::ExitedIdle {
                    program: self.settings.spawn.program.display().to_string(),
                    exit,
                    stderr: live.stderr_tail().await,
                });
            } else if matches!(leaving, Leaving::Lost) {
                tracing::warn!(
                    worker = self.id,
                    pid = live.process.processor_pid(),
                    "worker lost between jobs ({exit}); replacing it"
                );
            }
        }
        // What waited behind its last job runs elsewhere, as what arrives from now on.
        for job in self.queued.drain(..) {
            let _ = self.events.send(Event::Bounced {
                worker: self.id,
                job,
            });
        }
        self.control.close();
        while let Some(ctl) = self.control.recv().await {
            if let Control::Run(job) = ctl {
                let _ = self.events.send(Event::Bounced {
                    worker: self.id,
                    job,
                });
            }
        }
        let _ = self.events.send(Event::Exited {
            worker: self.id,
            start_error,
        });
    }
}
