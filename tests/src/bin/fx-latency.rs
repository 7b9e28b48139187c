//! Test fixture: measures how late a cleanup request reaches a busy handler.
//!
//! Each job polls the cleanup flag every 100 µs (with the argument `spin`, without
//! pausing: the handler keeps its CPU busy) and, once it is set, returns the microseconds
//! since the handler started, as decimal text. With a ttl of T, the result minus T is the
//! runtime's delivery latency (plus one polling step).

use std::convert::Infallible;
use std::thread;
use std::time::{Duration, Instant};

fn main() {
    let spin = std::env::args().nth(1).as_deref() == Some("spin");
    jobsup_runtime::serve(move |_job, ctx| {
        let start = Instant::now();
        loop {
            if ctx.cleanup_requested() {
                let micros = start.elapsed().as_micros();
                return Ok::<_, Infallible>(micros.to_string().into_bytes());
            }
            if spin {
                std::hint::spin_loop();
            } else {
                thread::sleep(Duration::from_micros(100));
            }
        }
    })
}
