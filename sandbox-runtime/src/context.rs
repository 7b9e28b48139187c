//! What a handler can ask of the runtime while it works.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use jobsup_protocol::FromWorker;

use crate::outbox::Outbox;

/// The handler's view of the running job: the cleanup flag, the deadline, and a way to say
/// it is alive.
pub struct Context {
    job: u64,
    deadline: Instant,
    cleanup: Arc<AtomicBool>,
    outbox: Arc<Outbox>,
}

impl Context {
    pub(crate) fn new(
        job: u64,
        deadline: Instant,
        cleanup: Arc<AtomicBool>,
        outbox: Arc<Outbox>,
    ) -> Self {
        Context {
            job,
            deadline,
            cleanup,
            outbox,
        }
    }

    /// The id of the job being handled (the same as [`Job::id`](crate::Job::id)).
    pub fn job_id(&self) -> u64 {
        self.job
    }

    /// Whether jobsup asked for this job to be cleaned up (its ttl passed, or the worker got
    /// SIGTERM). A handler that sees `true` should stop, release what it holds, and return;
    /// the runtime then exits with code 124.
    ///
    /// Cheap enough to poll in a tight loop: one atomic load.
    pub fn cleanup_requested(&self) -> bool {
        self.cleanup.load(Ordering::Acquire)
    }

    /// Tells jobsup the job is alive, which resets its idle timeout. A failed write is
    /// ignored: a handler has nothing useful to do about it, and a supervisor that is gone
    /// is noticed when the job's result cannot be written.
    pub fn heartbeat(&self) {
        let _ = self.outbox.send(&FromWorker::Heartbeat { job: self.job });
    }

    /// Reports progress (which also counts as a heartbeat): `done` units out of `total`,
    /// when known, with an optional short note. Errors are ignored as for
    /// [`heartbeat`](Self::heartbeat).
    pub fn progress(&self, done: u64, total: Option<u64>, message: Option<&str>) {
        let _ = self.outbox.send(&FromWorker::Progress {
            job: self.job,
            done,
            total,
            message: message.map(str::to_owned),
        });
    }

    /// When jobsup will ask for a cleanup: the moment the job was received plus its ttl.
    /// The hard kill follows after jobsup's cleanup grace period.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("job", &self.job)
            .field("deadline", &self.deadline)
            .field("cleanup_requested", &self.cleanup_requested())
            .finish_non_exhaustive()
    }
}
