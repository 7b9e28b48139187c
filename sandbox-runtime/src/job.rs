//! A job as the handler sees it.

use std::time::Duration;

use jobsup_protocol as protocol;

/// One job handed to the handler: its ids, its input and its time budget.
///
/// Its `Debug` output shows the payload's size, never its bytes, since a payload can be large
/// or secret.
#[derive(Debug, Clone)]
pub struct Job {
    inner: protocol::Job,
}

impl Job {
    pub(crate) fn new(inner: protocol::Job) -> Self {
        Job { inner }
    }

    /// The supervisor's sequence number for this job, unique within a run.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The job's id as the user gave it (or its input line number).
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The job's input.
    pub fn payload(&self) -> &[u8] {
        &self.inner.payload
    }

    /// Which attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The job's kind (the ndjson `kind`), when it has one.
    pub fn kind(&self) -> Option<&str> {
        self.inner.kind.as_deref()
    }

    /// How long the job may run before jobsup asks for a cleanup.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.inner.ttl_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_and_debug_hide_the_payload() {
        let job = Job::new(protocol::Job {
            id: 9,
            key: "line-9".into(),
            payload: b"secret".to_vec(),
            attempt: 2,
            ttl_ms: 1500,
            kind: Some("mail".into()),
        });
        assert_eq!(job.id(), 9);
        assert_eq!(job.key(), "line-9");
        assert_eq!(job.payload(), b"secret");
        assert_eq!(job.attempt(), 2);
        assert_eq!(job.kind(), Some("mail"));
        assert_eq!(job.ttl(), Duration::from_millis(1500));
        assert!(!format!("{job:?}").contains("secret"));
    }
}
