//! What a Rust processor links to in order to serve jobs from the jobsup supervisor.
//!
//! # Theory of operation
//!
//! A processor is a handler from a [`Job`] to a result. [`serve`] (or
//! [`Runtime::serve`], to register a cleanup hook first) turns the process into a jobsup
//! worker and never returns:
//!
//! 1. It checks that jobsup started the process: the `JOBSUP_PROTOCOL` environment
//!    variable is set and fds 3 and 4 are open. Run by hand, it prints how to run the
//!    program under jobsup and exits with code 2; started by a jobsup that speaks another
//!    protocol version, it names both versions and exits with code 2.
//! 2. It takes over fd 3 (requests) and fd 4 (replies), marks them close-on-exec so that
//!    programs the handler starts do not inherit them, and sends `Hello` with the protocol
//!    version and its pid.
//! 3. One state machine, behind a lock, owns the worker's state. A reader thread feeds it
//!    what arrives on fd 3, so a cleanup request is seen at once even while a CPU-bound
//!    handler keeps the main thread busy; a signal thread feeds it SIGTERM. Jobs go to the
//!    thread that called `serve`, which runs the handler, one job at a time, and reports
//!    each result to the state machine itself (one thread wake-up per job, not three).
//!
//! # Cleanup
//!
//! When a job's ttl passes, jobsup sends a cleanup request; SIGTERM while a job runs
//! counts as one too. The runtime sets the flag that
//! [`Context::cleanup_requested`] reads, then:
//!
//! - with a hook ([`Runtime::on_cleanup`]): runs it at once on the thread that heard the
//!   request (not the handler's), acknowledges the
//!   cleanup and exits with code 124, without waiting for the handler;
//! - without one: waits for the handler to return, sends its result (jobsup keeps it in
//!   the job's record), acknowledges the cleanup and exits with code 124.
//!
//! A handler that ignores the flag and has no hook is killed when jobsup's grace period
//! ends. A worker that cleaned up is never given another job, and a cleanup request for a
//! job that has just finished is acknowledged the same way.
//!
//! # Ordering guarantees
//!
//! `Hello` is the first frame. A job's heartbeats and progress reports come before its
//! `Done`; `Done`, when there is one, comes before `CleanupDone`; nothing follows
//! `CleanupDone`. Frames are written whole: one lock guards fd 4, and the process exits
//! while holding it.
//!
//! # Failure modes and exit codes
//!
//! | what happened | exit code |
//! |---|---|
//! | `Shutdown`, end of file on fd 3 or SIGTERM while idle; after the running job when one runs | 0 |
//! | a cleanup request was handled | 124 |
//! | run outside jobsup, or under another protocol version | 2 |
//! | fd 3 carried something that is not a request (message on stderr), or fd 4 failed (silently: nobody is left to read it) | 3 |
//!
//! An error returned by the handler fails the job with its `Display` text; a panic in the
//! handler fails the job with `handler panicked: <message>`, and the worker goes on
//! serving. A process that ignores SIGTERM before calling `serve` keeps ignoring it.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! fn main() {
//!     jobsup_runtime::Runtime::new()
//!         .on_cleanup(|job| eprintln!("giving up on job {}", job.key()))
//!         .serve(|job, ctx| {
//!             let text = std::str::from_utf8(job.payload()).map_err(|e| e.to_string())?;
//!             for (done, word) in text.split_whitespace().enumerate() {
//!                 if ctx.cleanup_requested() {
//!                     return Err(format!("stopped after {done} words"));
//!                 }
//!                 ctx.progress(done as u64, None, Some(word));
//!                 std::thread::sleep(Duration::from_millis(10));
//!             }
//!             Ok(text.to_uppercase().into_bytes())
//!         })
//! }
//! ```
//!
//! A handler that cannot fail still names an error type, since Rust cannot infer one:
//! `Ok::<_, std::convert::Infallible>(bytes)`.
#![deny(missing_docs)]

mod context;
mod control;
mod exit;
mod inbox;
mod job;
mod outbox;
mod panic;
mod runtime;
mod signals;
mod startup;

use std::fmt::Display;

pub use context::Context;
pub use job::Job;
pub use runtime::Runtime;

/// Serves jobs from jobsup with `handler` until jobsup says stop; never returns.
///
/// The same as `Runtime::new().serve(handler)`: see [`Runtime::serve`].
pub fn serve<F, E>(handler: F) -> !
where
    F: FnMut(&Job, &Context) -> Result<Vec<u8>, E>,
    E: Display,
{
    Runtime::new().serve(handler)
}
