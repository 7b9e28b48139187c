//! A processor that never cooperates: it burns CPU forever and ignores every request to
//! stop.
//!
//! Demonstrates what jobsup's hard deadline is for: the cleanup request and SIGTERM both go
//! unheeded, so the job ends only when jobsup kills the worker's process group at
//! `ttl + cleanup`, and is recorded as `killed` (exit code 137):
//!
//! ```text
//! cargo build -p jobsup-tests --bin spin
//! echo go | jobsup run --ttl 1s --cleanup 1s -- target/debug/jobsup-spin
//! ```

use std::convert::Infallible;
use std::hint::black_box;

use nix::sys::signal::{signal, SigHandler, Signal};

fn main() {
    // SAFETY: installs SIG_IGN, which runs no code in the handler, before any other thread
    // exists.
    if let Err(e) = unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) } {
        eprintln!("spin: cannot ignore SIGTERM: {e}");
        std::process::exit(1);
    }
    jobsup_runtime::serve(|_job, _ctx| -> Result<Vec<u8>, Infallible> {
        let mut n = 0_u64;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    })
}
