//! The messages exchanged on the two protocol pipes.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. Bump it on any change to the messages.
pub const PROTOCOL_VERSION: u32 = 1;

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
    /// Milliseconds the job may run before the cleanup request.
    pub ttl_ms: u64,
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
    /// The first frame a worker sends.
    Hello {
        /// The protocol version the worker speaks.
        version: u32,
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

/// A peer that speaks another protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol version mismatch: supervisor speaks version {ours}, processor speaks version {theirs}")]
pub struct VersionMismatch {
    /// The version this crate speaks.
    pub ours: u32,
    /// The version the peer announced.
    pub theirs: u32,
}

/// Accepts a peer's announced version, or says why not with both versions.
pub fn check_version(theirs: u32) -> Result<(), VersionMismatch> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}
