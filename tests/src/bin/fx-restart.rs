//! Test fixture: a native worker whose first process dies just before taking its first
//! job, and whose later processes are slow to start (a model loading, a cold cache).
//!
//! `fx-restart MARKER DELAY_MS PROGRAM [ARGS...]`: without MARKER, it creates it, says
//! hello, waits until a job is on its pipe and exits without reading it (so jobsup hands
//! the job to another worker). With MARKER, it sleeps DELAY_MS and then becomes PROGRAM
//! (a real processor, which says its own hello on the same fds).

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::Duration;

use jobsup_protocol::{
    Codec, FromWorker, JOB_FD, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, RESULT_FD,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, marker, delay, program, rest @ ..] = &args[..] else {
        eprintln!("usage: fx-restart MARKER DELAY_MS PROGRAM [ARGS...]");
        return ExitCode::from(2);
    };
    let marker = std::path::Path::new(marker);
    if marker.exists() {
        let Ok(ms) = delay.parse::<u64>() else {
            eprintln!("fx-restart: DELAY_MS must be a number");
            return ExitCode::from(2);
        };
        std::thread::sleep(Duration::from_millis(ms));
        let e = std::process::Command::new(program).args(rest).exec();
        eprintln!("fx-restart: cannot run {program}: {e}");
        return ExitCode::from(3);
    }
    if let Err(e) = File::create(marker) {
        eprintln!("fx-restart: cannot create {}: {e}", marker.display());
        return ExitCode::from(3);
    }
    // SAFETY: jobsup hands a native worker fd 4 and nothing else in this process uses it.
    let mut replies = unsafe { File::from_raw_fd(RESULT_FD) };
    let hello = FromWorker::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    if let Err(e) = Codec::default().write_frame(&mut replies, &hello) {
        eprintln!("fx-restart: cannot write the hello: {e}");
        return ExitCode::from(3);
    }
    // The job's frame arrives: leave it unread.
    let mut fds = [libc::pollfd {
        fd: JOB_FD,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, its length given.
    while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } < 0 {}
    ExitCode::SUCCESS
}
