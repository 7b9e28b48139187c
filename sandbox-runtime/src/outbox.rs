//! The writing end of the link: frames to the supervisor on fd 4.

use std::fs::File;
use std::sync::{Mutex, MutexGuard, PoisonError};

use jobsup_protocol::{Codec, FrameError, FromWorker, JobResult};

use crate::exit::Ending;

/// fd 4, shared by the handler's thread (heartbeats, progress, results) and the reader thread
/// (everything else). The lock keeps frames whole; it is also held across the final
/// `exit`, so nothing can follow the last frame.
#[derive(Debug)]
pub(crate) struct Outbox {
    codec: Codec,
    out: Mutex<File>,
}

impl Outbox {
    pub(crate) fn new(out: File, codec: Codec) -> Self {
        Outbox {
            codec,
            out: Mutex::new(out),
        }
    }

    // A panic while holding the lock cannot leave half a frame behind a later writer's
    // frame any more than an I/O error can, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, File> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one frame.
    pub(crate) fn send(&self, msg: &FromWorker) -> Result<(), FrameError> {
        self.codec.write_frame(&mut *self.lock(), msg)
    }

    /// Writes a job's `Done`. A result too large for a frame becomes a failure that says
    /// so, rather than a broken link; under a frame limit too small even for that message,
    /// a terse one.
    pub(crate) fn send_done(&self, job: u64, result: JobResult) -> Result<(), FrameError> {
        let e = match self.send(&FromWorker::Done { job, result }) {
            Err(e @ FrameError::TooLarge { .. }) => e,
            other => return other,
        };
        let explained = format!("the job's result does not fit in a frame: {e}");
        match self.send(&FromWorker::Done {
            job,
            result: JobResult::Failed(explained),
        }) {
            Err(FrameError::TooLarge { .. }) => self.send(&FromWorker::Done {
                job,
                result: JobResult::Failed("result too large".into()),
            }),
            other => other,
        }
    }

    /// Writes the last frame this worker will send, if the ending has one, and exits.
    pub(crate) fn finish(&self, ending: Ending) -> ! {
        let mut out = self.lock();
        let ending = match ending {
            Ending::CleanedUp { job } => {
                match self
                    .codec
                    .write_frame(&mut *out, &FromWorker::CleanupDone { job })
                {
                    Ok(()) => Ending::CleanedUp { job },
                    Err(_) => Ending::LinkLost,
                }
            }
            other => other,
        };
        ending.exit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn done_after_too_large_a_result(max_frame: u32) -> String {
        let (read, write) = nix::unistd::pipe().unwrap();
        let outbox = Outbox::new(File::from(write), Codec::new(max_frame));
        outbox.send_done(1, JobResult::Ok(vec![7; 300])).unwrap();
        drop(outbox);
        let mut decoder = Codec::new(max_frame).decoder::<FromWorker>();
        let frame = decoder
            .read_frame(&mut File::from(read), &mut BytesMut::new())
            .unwrap();
        match frame {
            Some(FromWorker::Done {
                job: 1,
                result: JobResult::Failed(why),
            }) => why,
            other => panic!("expected a failed Done, got {other:?}"),
        }
    }

    #[test]
    fn a_result_too_large_for_a_frame_fails_the_job_instead() {
        let why = done_after_too_large_a_result(200);
        assert!(why.contains("does not fit in a frame"), "{why}");
        assert_eq!(done_after_too_large_a_result(32), "result too large");
    }
}
