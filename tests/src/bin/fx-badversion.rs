//! Test fixture: a native worker that announces a protocol version jobsup does not speak,
//! then waits, so that only the handshake check can end it.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use jobsup_protocol::{Codec, FromWorker, RESULT_FD};

fn main() -> ExitCode {
    // SAFETY: jobsup hands a native worker fd 4 and nothing else in this process touches
    // it; if it is not open the write fails, which is reported.
    let mut replies = unsafe { File::from_raw_fd(RESULT_FD) };
    let hello = FromWorker::Hello {
        min_version: 999,
        max_version: 999,
        pid: std::process::id(),
    };
    if let Err(e) = Codec::default().write_frame(&mut replies, &hello) {
        eprintln!("fx-badversion: cannot write the hello on fd {RESULT_FD}: {e}");
        return ExitCode::from(3);
    }
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
