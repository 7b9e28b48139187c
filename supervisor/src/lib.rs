//! jobsup: a supervisor that runs jobs in a pool of reusable, sandboxed worker processes,
//! with deadlines that hold even when a job does not cooperate.
//!
//! # Theory of operation
//!
//! `jobsup run` reads jobs lazily from its input ([`source`]), hands each to an idle worker
//! ([`pool`]), and writes exactly one NDJSON record per job read ([`sink`], [`record`]).
//!
//! Each worker is a process owned by one task ([`worker`]), which alone decides its jobs'
//! outcomes on a monotonic clock: at `ttl` it asks the worker to clean up; at `ttl + cleanup`
//! it kills the worker's whole process group. Only [`sandbox`] spawns processes (from one
//! long-lived thread, so that the parent-death signal holds) and only [`reaper`] calls
//! `waitpid`. A worker that timed out, was killed or crashed is never reused.
//!
//! [`exit`] maps the run's end and its worst outcome to the exit code, in one place.
//!
//! See `ARCHITECTURE.md` at the repository root for the invariants. Every `unsafe` of the
//! supervisor side lives in `jobsup-process`: this crate forbids it.

#![forbid(unsafe_code)]

// The process machinery is its own crate; its modules keep their names here.
pub use jobsup_process::{
    cgroup, guard, isolate, mounts, priority, process, reaper, sandbox, timer,
};

pub mod cli;
pub mod config;
pub mod conn;
pub(crate) mod deadline;
pub mod drain;
pub mod exit;
pub mod halt;
pub mod health;
pub mod help;
pub mod input_fd;
pub mod janitor;
pub mod joblog;
pub mod link;
pub mod live;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod progress;
pub mod queue;
pub mod queue_cli;
pub mod record;
pub mod run;
pub mod serve;
pub mod signals;
pub mod sink;
pub mod source;
pub mod summary;
pub mod units;
pub mod worker;
