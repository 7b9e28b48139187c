//! The messages exchanged on the two protocol pipes.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// The highest protocol version this crate speaks. Bump it on any change to the messages.
///
/// Version 1 had a single version in `Hello` and no `kind` in `Job`; version 2 is the
/// first with a version range, so that later versions can be added without upgrading
/// every processor at once.
pub const PROTOCOL_VERSION: u32 = 2;

/// The lowest protocol version this crate speaks. Raise it only when the code for a
/// version is removed: processors that only speak older versions are then refused.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// One job, as handed to a worker.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The supervisor's sequence number for the job; every message about it carries it.
    pub id: u64,
    /// The job's id as the user gave it (or its line number).
    pub key: String,
    /// The job's input.
    pub payload: Vec<u8>,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// Milliseconds the job may run before the cleanup request (0: no deadline).
    pub ttl_ms: u64,
    /// The job's kind (ndjson `kind`), when it has one.
    pub kind: Option<String>,
}

impl std::fmt::Debug for Job {
    // A payload can be large or secret: show its size, not its bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("attempt", &self.attempt)
            .field("ttl_ms", &self.ttl_ms)
            .field("kind", &self.kind)
            .finish()
    }
}

/// What a worker says a job produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobResult {
    /// The job succeeded with this output.
    Ok(Vec<u8>),
    /// The job failed; the message says why.
    Failed(String),
}

/// Supervisor → worker, on fd 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run this job.
    Job(Job),
    /// The job's ttl has passed: clean up and stop within `grace_ms`.
    Cleanup {
        /// The job to clean up.
        job: u64,
        /// Milliseconds before the whole process group is killed.
        grace_ms: u64,
    },
    /// Exit once idle.
    Shutdown,
}

/// Worker → supervisor, on fd 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first frame a worker sends. Its layout never changes between versions, so
    /// that any two ends can always tell which versions they share.
    Hello {
        /// The lowest protocol version the worker speaks.
        min_version: u32,
        /// The highest protocol version the worker speaks.
        max_version: u32,
        /// The worker's process id.
        pid: u32,
    },
    /// The job is alive (resets an idle timeout).
    Heartbeat {
        /// The job in progress.
        job: u64,
    },
    /// The job made progress (also a heartbeat).
    Progress {
        /// The job in progress.
        job: u64,
        /// Units done so far.
        done: u64,
        /// Units in all, when known.
        total: Option<u64>,
        /// A short human-readable note.
        message: Option<String>,
    },
    /// The job ended.
    Done {
        /// The job that ended.
        job: u64,
        /// What it produced.
        result: JobResult,
    },
    /// The worker finished cleaning up after a cleanup request.
    CleanupDone {
        /// The job that was cleaned up.
        job: u64,
    },
}

/// A peer whose versions do not overlap this crate's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol version mismatch: supervisor speaks {}, processor speaks {}", versions(*.ours.start(), *.ours.end()), versions(*.theirs.start(), *.theirs.end()))]
pub struct VersionMismatch {
    /// The versions this crate speaks.
    pub ours: RangeInclusive<u32>,
    /// The versions the peer announced.
    pub theirs: RangeInclusive<u32>,
}

fn versions(min: u32, max: u32) -> String {
    if min == max {
        format!("version {min}")
    } else {
        format!("versions {min} to {max}")
    }
}

/// The version both ends use: the highest one in both this crate's range and the peer's
/// (`min..=max` from its `Hello`), or why there is none, with both ranges.
///
/// A processor can compute the same answer from `JOBSUP_PROTOCOL` (the supervisor's highest
/// version) before it says hello: `min(JOBSUP_PROTOCOL, its own max)`.
pub fn negotiate(min: u32, max: u32) -> Result<u32, VersionMismatch> {
    let best = max.min(PROTOCOL_VERSION);
    if min <= max && best >= min.max(MIN_PROTOCOL_VERSION) {
        Ok(best)
    } else {
        Err(VersionMismatch {
            ours: MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
            theirs: min..=max,
        })
    }
}
