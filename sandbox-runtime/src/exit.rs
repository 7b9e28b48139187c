//! How the process ends: the one place that turns an ending into an exit code.

use std::process;

use crate::startup::StartError;

/// Why the runtime ends the process.
#[derive(Debug)]
pub(crate) enum Ending {
    /// Not started by jobsup, or by a jobsup that speaks another protocol version.
    NotStarted(StartError),
    /// `Shutdown`, end of file on fd 3 or SIGTERM while idle, or after the last job.
    Shutdown,
    /// A cleanup request for `job` was handled; `CleanupDone` is still to be written.
    CleanedUp {
        /// The job named in the cleanup request.
        job: u64,
    },
    /// Writing to fd 4 failed: the supervisor is gone and there is nobody left to tell.
    LinkLost,
    /// Something the runtime cannot carry on from, with the reason for stderr.
    Failed(String),
}

impl Ending {
    fn code(&self) -> i32 {
        match self {
            Ending::NotStarted(_) => 2,
            Ending::Shutdown => 0,
            // GNU `timeout`'s code, which jobsup also uses for a job that was cleaned up.
            Ending::CleanedUp { .. } => 124,
            Ending::LinkLost | Ending::Failed(_) => 3,
        }
    }

    /// Says why on stderr when there is something to say, then exits.
    ///
    /// Callers that may race a frame writer call this through
    /// [`Outbox::finish`](crate::outbox::Outbox::finish), which holds the writer's lock, so
    /// the supervisor never sees half a frame.
    pub(crate) fn exit(self) -> ! {
        match &self {
            Ending::NotStarted(e) => eprintln!("{e}"),
            Ending::Failed(why) => eprintln!("jobsup-runtime: {why}"),
            Ending::Shutdown | Ending::CleanedUp { .. } | Ending::LinkLost => {}
        }
        process::exit(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        assert_eq!(Ending::Shutdown.code(), 0);
        assert_eq!(Ending::CleanedUp { job: 1 }.code(), 124);
        assert_eq!(Ending::LinkLost.code(), 3);
        assert_eq!(Ending::Failed("x".into()).code(), 3);
        assert_eq!(
            Ending::NotStarted(StartError::NotUnderJobsup {
                program: "p".into(),
                missing: "x".into()
            })
            .code(),
            2
        );
    }
}
