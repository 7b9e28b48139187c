//! End-to-end throughput of `jobsup serve`: trivial native jobs (`echo`) from `jobsup
//! enqueue` to their results stored in Redis, with one and with two `serve` processes,
//! beside `jobsup run` on the same jobs from a file, in the same run.
//!
//! Run with `cargo bench -p jobsup-tests --bench serve`. It prints numbers and asserts
//! nothing about speed. `JOBSUP_BENCH_JOBS` sets the jobs per run (default 20000),
//! `JOBSUP_BENCH_WORKERS` the `-j` of each serve (default 2), `JOBSUP_BENCH_FLAGS` adds
//! flags to each `serve` (`--no-realtime`, say).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobsup_tests::redis_server::RedisServer;
use jobsup_tests::{bin, wait_until};

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn jobsup() -> Command {
    let mut cmd = Command::new(bin!("jobsup-shim"));
    cmd.env_clear()
        .env("PATH", jobsup_tests::PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Seconds from the start of `enqueue` until every result is stored, with `serves`
/// serve processes started at the same time.
fn through_redis(jobs: usize, serves: usize, workers: usize, input: &std::path::Path) -> f64 {
    let redis = RedisServer::start();
    let flags = std::env::var("JOBSUP_BENCH_FLAGS").unwrap_or_default();
    let started = Instant::now();
    let mut children: Vec<_> = (0..serves)
        .map(|i| {
            jobsup()
                .args(["-q", "serve", "--redis", &redis.url(), "--stream", "b"])
                .args(["--consumer", &format!("c{i}"), "-j", &workers.to_string()])
                .args(flags.split_whitespace())
                .args(["--summary", "none", "--", bin!("jobsup-echo")])
                .spawn()
                .expect("cannot start serve")
        })
        .collect();
    let status = jobsup()
        .args(["-q", "enqueue", "--redis", &redis.url(), "--stream", "b"])
        .arg("--input")
        .arg(input)
        .status()
        .expect("cannot run enqueue");
    assert!(status.success(), "enqueue failed");
    wait_until(Duration::from_secs(600), "every result is stored", || {
        redis.xlen("b:results") >= jobs as u64
    });
    let secs = started.elapsed().as_secs_f64();
    for c in &mut children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = c.wait();
    }
    secs
}

fn main() {
    let jobs = env_or("JOBSUP_BENCH_JOBS", 20_000);
    let workers = env_or("JOBSUP_BENCH_WORKERS", 2);
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let input = dir.path().join("jobs");
    let lines: String = (0..jobs).map(|i| format!("{i}\n")).collect();
    std::fs::write(&input, lines).expect("cannot write the jobs");

    let started = Instant::now();
    let status = jobsup()
        .args(["-q", "run", "-j", &workers.to_string(), "--summary", "none"])
        .arg("--input")
        .arg(&input)
        .args(["--output", "/dev/null", "--", bin!("jobsup-echo")])
        .status()
        .expect("cannot run jobsup run");
    assert!(status.success(), "jobsup run failed");
    let run = started.elapsed().as_secs_f64();
    println!(
        "run   -j {workers}, stdin to stdout:        {:>8.0} jobs/s",
        jobs as f64 / run
    );
    for serves in [1, 2] {
        let secs = through_redis(jobs, serves, workers, &input);
        println!(
            "serve -j {workers} x {serves}, enqueue to result: {:>8.0} jobs/s",
            jobs as f64 / secs
        );
    }
}
