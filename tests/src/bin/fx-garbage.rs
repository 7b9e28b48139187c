//! Test fixture: a hand-written native worker (no runtime) that breaks the protocol on
//! command, to check that jobsup survives whatever a worker writes on fd 4.
//!
//! It says a proper `Hello`, then answers each job by its payload:
//!
//! | payload | reply |
//! |---|---|
//! | `oversize` | a header announcing 4 GiB, some junk, then silence |
//! | `junk` | a 16-byte frame that is not a message, then silence |
//! | `truncated` | a header for 100 bytes, 10 of them, fd 4 closed, then silence |
//! | `wrong-id` | `Done` for a job it was never given, then silence |
//! | `twice` | `Done` twice for the same job, then goes on serving |
//! | `close-fds` | closes fds 3 and 4 and keeps running, silent |
//! | `flood` | 5 MB on stdout and 5 MB on stderr, then a proper `Done` |
//! | `leak` | allocates (and touches) memory until an allocation fails |
//! | `fork-loop` | starts a `sleep` child every 10 ms, forever |
//! | anything else | a proper `Done` with the payload |

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use jobsup_protocol::{
    Codec, FrameError, FromWorker, JobResult, ToWorker, JOB_FD, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, RESULT_FD,
};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fx-garbage: {e}");
            ExitCode::from(3)
        }
    }
}

fn run() -> Result<(), FrameError> {
    // SAFETY: jobsup hands a native worker fds 3 and 4 and nothing else in this process
    // touches them; an unopened fd makes the first read or write fail, which is reported.
    let (mut requests, mut replies) =
        unsafe { (File::from_raw_fd(JOB_FD), File::from_raw_fd(RESULT_FD)) };
    let codec = Codec::default();
    codec.write_frame(
        &mut replies,
        &FromWorker::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
    )?;
    let mut decoder = codec.decoder::<ToWorker>();
    let mut buf = BytesMut::new();
    while let Some(msg) = decoder.read_frame(&mut requests, &mut buf)? {
        let job = match msg {
            ToWorker::Job(job) => job,
            ToWorker::Cleanup { .. } => continue,
            ToWorker::Shutdown => break,
        };
        let done = |result| FromWorker::Done {
            job: job.id,
            result,
        };
        match job.payload.as_slice() {
            b"oversize" => {
                replies.write_all(&[0xFF; 4])?;
                replies.write_all(b"junk after an impossible header")?;
                hang()
            }
            b"junk" => {
                replies.write_all(&16_u32.to_le_bytes())?;
                replies.write_all(&[0xEE; 16])?;
                hang()
            }
            b"truncated" => {
                replies.write_all(&100_u32.to_le_bytes())?;
                replies.write_all(&[0; 10])?;
                drop(replies);
                hang()
            }
            b"wrong-id" => {
                let stray = FromWorker::Done {
                    job: job.id + 1000,
                    result: JobResult::Ok(job.payload.clone()),
                };
                codec.write_frame(&mut replies, &stray)?;
                hang()
            }
            b"close-fds" => {
                drop(requests);
                drop(replies);
                hang()
            }
            b"flood" => {
                let line = [b'x'; 1023];
                let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
                for _ in 0..5 * 1024 {
                    out.write_all(&line)?;
                    out.write_all(b"\n")?;
                    err.write_all(&line)?;
                    err.write_all(b"\n")?;
                }
                codec.write_frame(&mut replies, &done(JobResult::Ok(b"flooded".to_vec())))?;
            }
            b"leak" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch every page, so the memory is really taken.
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            b"fork-loop" => loop {
                let _ = std::process::Command::new("sleep").arg("1000").spawn();
                thread::sleep(Duration::from_millis(10));
            },
            b"twice" => {
                codec.write_frame(&mut replies, &done(JobResult::Ok(job.payload.clone())))?;
                codec.write_frame(&mut replies, &done(JobResult::Ok(job.payload.clone())))?;
            }
            _ => codec.write_frame(&mut replies, &done(JobResult::Ok(job.payload.clone())))?,
        }
    }
    Ok(())
}

/// Stays alive and silent, so that only jobsup's own checks can end the job.
fn hang() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
