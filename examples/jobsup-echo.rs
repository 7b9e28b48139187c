//! The smallest jobsup processor: every job's result is its payload.
//!
//! Demonstrates the bare `jobsup_runtime::serve` loop. Run it with jobsup, one job per
//! input line:
//!
//! ```text
//! cargo build -p jobsup-tests --bin echo
//! printf 'hello\nworld\n' | jobsup run -- target/debug/jobsup-echo
//! ```

use std::convert::Infallible;

fn main() {
    jobsup_runtime::serve(|job, _ctx| Ok::<_, Infallible>(job.payload().to_vec()))
}
