//! The worker's state machine: the one place that decides what the worker does next.
//!
//! Everything that can happen to the worker arrives here as an [`Event`], one at a time
//! under a lock ([`Controller`]): requests read from fd 3 (reader thread), SIGTERM (signal
//! thread), and the handler finishing a job (the handler's thread). Each thread drives the
//! state machine itself instead of handing events to a thread of its own: a job then costs
//! one thread wake-up (reader to handler), not three, which is most of a short job's time.

use std::mem;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobsup_protocol::{FrameError, JobResult, ToWorker};

use crate::exit::Ending;
use crate::outbox::Outbox;
use crate::panic::panic_message;
use crate::Job;

/// A cleanup hook, as registered with [`Runtime::on_cleanup`](crate::Runtime::on_cleanup).
pub(crate) type Hook = Box<dyn FnOnce(&Job) + Send + 'static>;

/// Something that happened, for the state machine to act on.
#[derive(Debug)]
pub(crate) enum Event {
    /// A request from the supervisor, and when it was read.
    Request {
        /// The request.
        msg: ToWorker,
        /// When it was read off fd 3.
        at: Instant,
    },
    /// End of file on fd 3.
    Closed,
    /// fd 3 failed or carried something that is not a frame.
    Unreadable(FrameError),
    /// The process got SIGTERM.
    Terminate,
    /// The handler returned (or panicked) for this job.
    Finished {
        /// The job.
        job: u64,
        /// What it produced.
        result: JobResult,
    },
}

/// A job handed to the handler's thread.
#[derive(Debug)]
pub(crate) struct Assignment {
    /// The job.
    pub(crate) job: Arc<Job>,
    /// When jobsup will ask for a cleanup.
    pub(crate) deadline: Instant,
    /// Set once a cleanup is requested; the handler polls it through its `Context`.
    pub(crate) cleanup: Arc<AtomicBool>,
}

/// Where the worker stands.
#[derive(Debug)]
enum State {
    /// Waiting for a job.
    Idle,
    /// The handler is running `job`.
    Busy {
        job: Arc<Job>,
        cleanup: Arc<AtomicBool>,
    },
    /// A cleanup was requested for `job` and no hook was registered: waiting for the
    /// handler to notice and return.
    CleaningUp { job: u64 },
}

/// Far enough in the future to stand for "no deadline" without overflowing an `Instant`.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The worker's state machine.
pub(crate) struct Control {
    state: State,
    /// The supervisor asked the worker to stop (`Shutdown`, or closed fd 3) while a job
    /// ran: exit once it is done.
    draining: bool,
    hook: Option<Hook>,
    outbox: Arc<Outbox>,
    jobs: Sender<Assignment>,
}

impl Control {
    pub(crate) fn new(hook: Option<Hook>, outbox: Arc<Outbox>, jobs: Sender<Assignment>) -> Self {
        Control {
            state: State::Idle,
            draining: false,
            hook,
            outbox,
            jobs,
        }
    }

    fn on(&mut self, event: Event) -> Option<Ending> {
        match event {
            Event::Request {
                msg: ToWorker::Job(job),
                at,
            } => self.start(Job::new(job), at),
            Event::Request {
                msg: ToWorker::Cleanup { job, .. },
                ..
            } => self.clean_up(Some(job)),
            Event::Terminate => self.clean_up(None),
            Event::Request {
                msg: ToWorker::Shutdown,
                ..
            }
            | Event::Closed => self.drain(),
            Event::Unreadable(e) => Some(Ending::Failed(format!(
                "cannot read a request from jobsup on fd 3: {e}"
            ))),
            Event::Finished { job, result } => self.finished(job, result),
        }
    }

    fn start(&mut self, job: Job, received: Instant) -> Option<Ending> {
        match &self.state {
            State::Idle if !self.draining => {}
            State::Idle => {
                return Some(Ending::Failed(format!(
                    "jobsup sent job {} after asking the worker to shut down",
                    job.id()
                )))
            }
            State::Busy { job: running, .. } => {
                return Some(Ending::Failed(format!(
                    "jobsup sent job {} while job {} was still running",
                    job.id(),
                    running.id()
                )))
            }
            State::CleaningUp { job: running } => {
                return Some(Ending::Failed(format!(
                    "jobsup sent job {} while job {running} was cleaning up",
                    job.id()
                )))
            }
        }
        let job = Arc::new(job);
        let cleanup = Arc::new(AtomicBool::new(false));
        let assignment = Assignment {
            job: Arc::clone(&job),
            deadline: received + job.ttl().min(FOREVER),
            cleanup: Arc::clone(&cleanup),
        };
        if self.jobs.send(assignment).is_err() {
            return Some(Ending::Failed("the handler's thread is gone".into()));
        }
        self.state = State::Busy { job, cleanup };
        None
    }

    /// A cleanup request for `target`, or for whatever runs when `target` is `None`
    /// (SIGTERM).
    fn clean_up(&mut self, target: Option<u64>) -> Option<Ending> {
        match &self.state {
            State::Idle => Some(match target {
                Some(job) => Ending::CleanedUp { job },
                None => Ending::Shutdown,
            }),
            // A repeated request, or SIGTERM on top of one: already on its way out.
            State::CleaningUp { .. } => None,
            // The job it names finished while the request was in flight: there is nothing
            // to clean up, but jobsup has given up on this worker all the same.
            State::Busy { job, .. } if target.is_some_and(|t| t != job.id()) => {
                target.map(|job| Ending::CleanedUp { job })
            }
            State::Busy { job, cleanup } => {
                cleanup.store(true, Ordering::Release);
                let id = job.id();
                match self.hook.take() {
                    Some(hook) => {
                        run_hook(hook, job);
                        Some(Ending::CleanedUp { job: id })
                    }
                    None => {
                        self.state = State::CleaningUp { job: id };
                        None
                    }
                }
            }
        }
    }

    fn drain(&mut self) -> Option<Ending> {
        match self.state {
            State::Idle => Some(Ending::Shutdown),
            State::Busy { .. } | State::CleaningUp { .. } => {
                self.draining = true;
                None
            }
        }
    }

    fn finished(&mut self, id: u64, result: JobResult) -> Option<Ending> {
        let after = match mem::replace(&mut self.state, State::Idle) {
            State::Busy { job, .. } if job.id() == id && self.draining => Some(Ending::Shutdown),
            State::Busy { job, .. } if job.id() == id => None,
            // The result is sent even so: jobsup keeps a result that arrives in the cleanup
            // window in the job's record.
            State::CleaningUp { job } if job == id => Some(Ending::CleanedUp { job }),
            other => {
                return Some(Ending::Failed(format!(
                    "internal error: job {id} finished while the worker was {other:?}"
                )))
            }
        };
        match self.outbox.send_done(id, result) {
            Ok(()) => after,
            Err(_) => Some(Ending::LinkLost),
        }
    }
}

/// The state machine behind a lock, shared by every thread that has something to report.
#[derive(Clone)]
pub(crate) struct Controller {
    control: Arc<Mutex<Control>>,
    outbox: Arc<Outbox>,
}

impl Controller {
    pub(crate) fn new(control: Control, outbox: Arc<Outbox>) -> Self {
        Controller {
            control: Arc::new(Mutex::new(control)),
            outbox,
        }
    }

    /// Acts on one event. When it ends the worker, the process exits here, still holding
    /// the lock, so no other thread can act (or write a frame) after the decision.
    pub(crate) fn send(&self, event: Event) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let ending = catch_unwind(AssertUnwindSafe(|| control.on(event))).unwrap_or_else(|p| {
            Some(Ending::Failed(format!(
                "internal error: the worker's state machine panicked: {}",
                panic_message(&*p)
            )))
        });
        if let Some(ending) = ending {
            self.outbox.finish(ending)
        }
    }
}

/// Runs the cleanup hook; a panic in it is reported and the cleanup counts as done, since
/// the worker exits either way.
fn run_hook(hook: Hook, job: &Job) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| hook(job))) {
        eprintln!(
            "jobsup-runtime: the cleanup hook for job {} panicked: {}",
            job.id(),
            panic_message(&*payload)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::sync::mpsc::{channel, Receiver};

    use bytes::BytesMut;
    use jobsup_protocol::{Codec, FromWorker};

    /// A state machine whose fd 4 is a pipe the test reads.
    struct Rig {
        control: Control,
        jobs: Receiver<Assignment>,
        replies: File,
    }

    fn rig(hook: Option<Hook>) -> Rig {
        let (read, write) = nix::unistd::pipe().unwrap();
        let outbox = Arc::new(Outbox::new(File::from(write), Codec::default()));
        let (tx, jobs) = channel();
        Rig {
            control: Control::new(hook, outbox, tx),
            jobs,
            replies: File::from(read),
        }
    }

    impl Rig {
        fn job(&mut self, id: u64) -> Option<Ending> {
            self.control.on(Event::Request {
                msg: ToWorker::Job(jobsup_protocol::Job {
                    id,
                    key: format!("k{id}"),
                    payload: vec![],
                    attempt: 1,
                    ttl_ms: 1000,
                    kind: None,
                }),
                at: Instant::now(),
            })
        }

        fn cleanup(&mut self, job: u64) -> Option<Ending> {
            self.control.on(Event::Request {
                msg: ToWorker::Cleanup { job, grace_ms: 10 },
                at: Instant::now(),
            })
        }

        fn finish(&mut self, job: u64) -> Option<Ending> {
            self.control.on(Event::Finished {
                job,
                result: JobResult::Ok(b"r".to_vec()),
            })
        }

        /// Every frame written so far (closes the write end by dropping the control).
        fn frames(self) -> Vec<FromWorker> {
            let Rig {
                control,
                mut replies,
                ..
            } = self;
            drop(control);
            let mut decoder = Codec::default().decoder::<FromWorker>();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            while let Some(f) = decoder.read_frame(&mut replies, &mut buf).unwrap() {
                frames.push(f);
            }
            frames
        }
    }

    fn done(job: u64) -> FromWorker {
        FromWorker::Done {
            job,
            result: JobResult::Ok(b"r".to_vec()),
        }
    }

    #[test]
    fn a_job_runs_and_its_result_is_sent() {
        let mut rig = rig(None);
        assert!(rig.job(1).is_none());
        let a = rig.jobs.try_recv().unwrap();
        assert_eq!(a.job.id(), 1);
        assert!(rig.finish(1).is_none());
        assert!(matches!(rig.control.state, State::Idle));
        assert_eq!(rig.frames(), vec![done(1)]);
    }

    #[test]
    fn cleanup_without_hook_waits_for_the_handler() {
        let mut rig = rig(None);
        rig.job(1);
        let a = rig.jobs.try_recv().unwrap();
        assert!(rig.cleanup(1).is_none());
        assert!(a.cleanup.load(Ordering::Acquire));
        assert!(rig.control.on(Event::Terminate).is_none());
        assert!(matches!(rig.finish(1), Some(Ending::CleanedUp { job: 1 })));
        assert_eq!(rig.frames(), vec![done(1)]);
    }

    #[test]
    fn cleanup_with_hook_does_not_wait() {
        let (tx, ran) = channel();
        let mut rig = rig(Some(Box::new(move |job: &Job| tx.send(job.id()).unwrap())));
        rig.job(5);
        assert!(matches!(rig.cleanup(5), Some(Ending::CleanedUp { job: 5 })));
        assert_eq!(ran.try_recv(), Ok(5));
    }

    #[test]
    fn a_panicking_hook_still_ends_the_cleanup() {
        let mut rig = rig(Some(Box::new(|_: &Job| panic!("hook broke"))));
        rig.job(5);
        assert!(matches!(rig.cleanup(5), Some(Ending::CleanedUp { job: 5 })));
    }

    #[test]
    fn cleanup_for_a_finished_job_is_acknowledged() {
        let mut rig = rig(None);
        rig.job(1);
        rig.finish(1);
        assert!(matches!(rig.cleanup(1), Some(Ending::CleanedUp { job: 1 })));
        rig.job(2);
        assert!(matches!(rig.cleanup(1), Some(Ending::CleanedUp { job: 1 })));
    }

    #[test]
    fn sigterm_while_idle_is_a_shutdown() {
        let mut rig = rig(None);
        assert!(matches!(
            rig.control.on(Event::Terminate),
            Some(Ending::Shutdown)
        ));
    }

    #[test]
    fn sigterm_while_busy_is_a_cleanup() {
        let mut rig = rig(None);
        rig.job(3);
        let a = rig.jobs.try_recv().unwrap();
        assert!(rig.control.on(Event::Terminate).is_none());
        assert!(a.cleanup.load(Ordering::Acquire));
        assert!(matches!(rig.finish(3), Some(Ending::CleanedUp { job: 3 })));
    }

    #[test]
    fn shutdown_or_eof_waits_for_the_running_job() {
        for stop in [
            Event::Closed,
            Event::Request {
                msg: ToWorker::Shutdown,
                at: Instant::now(),
            },
        ] {
            let mut rig = rig(None);
            rig.job(1);
            assert!(rig.control.on(stop).is_none());
            assert!(matches!(rig.finish(1), Some(Ending::Shutdown)));
            assert_eq!(rig.frames(), vec![done(1)]);
        }
    }

    #[test]
    fn shutdown_while_idle_exits_at_once() {
        let mut rig = rig(None);
        assert!(matches!(
            rig.control.on(Event::Closed),
            Some(Ending::Shutdown)
        ));
    }

    #[test]
    fn a_second_job_while_busy_is_a_protocol_error() {
        let mut rig = rig(None);
        rig.job(1);
        assert!(matches!(rig.job(2), Some(Ending::Failed(_))));
    }

    #[test]
    fn a_closed_link_is_reported_as_lost() {
        let mut rig = rig(None);
        rig.job(1);
        let Rig {
            mut control,
            replies,
            ..
        } = rig;
        drop(replies);
        let ending = control.on(Event::Finished {
            job: 1,
            result: JobResult::Ok(vec![]),
        });
        assert!(matches!(ending, Some(Ending::LinkLost)));
    }
}
