//! A processor that cooperates with deadlines: it sleeps for as long as the job asks,
//! watching the cleanup flag and sending heartbeats.
//!
//! Demonstrates `Context::cleanup_requested` and `Context::heartbeat`. The payload is a
//! number of milliseconds. A job that outlives its ttl stops at the cleanup request and
//! returns early; the runtime then exits with 124 and jobsup records a timeout:
//!
//! ```text
//! cargo build -p jobsup-tests --bin sleepy
//! printf '100\n5000\n' | jobsup run --ttl 1s --cleanup 2s -- target/debug/jobsup-sleepy
//! ```

use std::thread;
use std::time::{Duration, Instant};

use jobsup_runtime::{Context, Job};

/// Short enough that a cleanup request is answered within a few milliseconds.
const STEP: Duration = Duration::from_millis(5);
const HEARTBEAT_EVERY: Duration = Duration::from_millis(100);

fn main() {
    jobsup_runtime::serve(sleep)
}

fn sleep(job: &Job, ctx: &Context) -> Result<Vec<u8>, &'static str> {
    let ms: u64 = std::str::from_utf8(job.payload())
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or("payload must be a number of milliseconds")?;
    let total = Duration::from_millis(ms);
    let start = Instant::now();
    let mut last_beat = start;
    loop {
        let slept = start.elapsed();
        if slept >= total {
            return Ok(format!("slept {ms} ms").into_bytes());
        }
        if ctx.cleanup_requested() {
            let n = slept.as_millis();
            return Ok(format!("cleaned up after {n} ms of {ms}").into_bytes());
        }
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            ctx.heartbeat();
            last_beat = Instant::now();
        }
        thread::sleep(STEP.min(total - slept));
    }
}
