//! Test fixture: measures how late a cleanup request reaches a busy handler.
//!
//! Each job polls the cleanup flag every 100 µs and, once it is set, returns the
//! microseconds since the handler started, as decimal text. With a ttl of T, the result
//! minus T is the runtime's delivery latency (plus one polling step).

use std::convert::Infallible;
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    jobsup_runtime::serve(|_job, ctx| {
        let start = Instant::now();
        loop {
            if ctx.cleanup_requested() {
                let micros = start.elapsed().as_micros();
                return Ok::<_, Infallible>(micros.to_string().into_bytes());
            }
            thread::sleep(Duration::from_micros(100));
        }
    })
}
