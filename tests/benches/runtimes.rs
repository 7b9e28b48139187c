//! Trivial-job throughput of the language runtimes, in one run.
//!
//! Run with `cargo bench -p jobsup-tests --bench runtimes`. It prints numbers and asserts
//! nothing about speed (a run whose jobs do not all succeed is an error). Each contender
//! is `jobsup run -j K --input FILE --output /dev/null -- PROCESSOR` on the same echo jobs,
//! timed end to end (start-up and shutdown included):
//!
//! - the Python runtime (`examples/python/echo.py`) and the same echo as a `--mode lines`
//!   loop in Python;
//! - the Node runtime (`examples/node/echo.js`) and the same echo as a `--mode lines`
//!   `readline` loop in Node;
//! - the Rust runtime (`examples/jobsup-echo.rs`).
//!
//! Each native runtime is also driven directly, without jobsup: K threads doing
//! sequential round trips (`Job` frame out, `Done` frame back) over its two pipes, as the
//! `throughput` bench's baseline does for the Rust `echo`. That is the runtime's own
//! ceiling; the gap to the jobsup column is the supervisor's share.
//!
//! `JOBSUP_BENCH_JOBS` sets the jobs per run (default 20000), `JOBSUP_BENCH_ROUNDS` the
//! rounds (default 3), `JOBSUP_BENCH_WORKERS` K (default 2). Rounds alternate between the
//! contenders, so a slow moment of the machine is spread over all of them; each column is
//! the median of its rounds. The targets printed are the issue's: the Python runtime at 15x
//! Celery prefork (614 jobs/s), the Node runtime at 3x BullMQ sandboxed processors
//! (2.9k jobs/s), both measured with 2 workers.

use std::ffi::OsString;
use std::thread;
use std::time::{Duration, Instant};

use jobsup_tests::{bin, interpreter, jobsup, lines, median, repo_file};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Contender {
    name: &'static str,
    mode: &'static str,
    argv: Vec<OsString>,
    target: Option<f64>,
}

const PY_LINES: &str = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n";
const NODE_LINES: &str = "require('readline').createInterface({ input: process.stdin })\
    .on('line', (l) => process.stdout.write(l + '\\n'));";

fn contenders() -> Vec<Contender> {
    let python = interpreter("python3").into_os_string();
    let node = interpreter("node").into_os_string();
    vec![
        Contender {
            name: "python runtime",
            mode: "native",
            argv: vec![python.clone(), repo_file("examples/python/echo.py").into()],
            target: Some(15.0 * 614.0),
        },
        Contender {
            name: "python --mode lines",
            mode: "lines",
            argv: vec![python, "-u".into(), "-c".into(), PY_LINES.into()],
            target: None,
        },
        Contender {
            name: "node runtime",
            mode: "native",
            argv: vec![node.clone(), repo_file("examples/node/echo.js").into()],
            target: Some(3.0 * 2900.0),
        },
        Contender {
            name: "node --mode lines",
            mode: "lines",
            argv: vec![node, "-e".into(), NODE_LINES.into()],
            target: None,
        },
        Contender {
            name: "rust runtime",
            mode: "native",
            argv: vec![bin!("jobsup-echo").into()],
            target: None,
        },
    ]
}

/// Jobs per second of one contender on `n` jobs with `k` workers.
fn throughput(c: &Contender, n: usize, k: usize) -> Result<f64, Error> {
    let j = jobsup!().timeout(Duration::from_secs(600));
    let input = j.write_file("jobs.txt", lines(n, |i| format!("payload {i}")));
    let j = j
        .args(["--mode", c.mode, "-q", "-j", &k.to_string(), "--input"])
        .arg(&input)
        .args(["--output", "/dev/null"])
        .processor(&c.argv[0], &c.argv[1..]);
    let start = Instant::now();
    let run = j.run();
    let elapsed = start.elapsed();
    if run.code() != 0 {
        return Err(format!(
            "{}: jobsup exited {}: {}",
            c.name,
            run.code(),
            run.stderr.trim()
        )
        .into());
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// `n` round trips through one directly spawned native processor.
fn direct_worker(argv: &[OsString], n: usize, first_id: u64) -> Result<(), Error> {
    jobsup_tests::raw::echo_round_trips(argv, n, first_id)
}

/// Jobs per second through `k` directly driven processors.
fn direct(argv: &[OsString], n: usize, k: usize) -> Result<f64, Error> {
    let start = Instant::now();
    let per = n / k;
    let handles: Vec<_> = (0..k)
        .map(|w| {
            let argv = argv.to_vec();
            thread::spawn(move || direct_worker(&argv, per, (w * per) as u64 + 1))
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "driver thread panicked")??;
    }
    Ok((per * k) as f64 / start.elapsed().as_secs_f64())
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Error> {
    let n = env_or("JOBSUP_BENCH_JOBS", 20_000);
    let rounds = env_or("JOBSUP_BENCH_ROUNDS", 3).max(1);
    let k = env_or("JOBSUP_BENCH_WORKERS", 2).max(1);
    let contenders = contenders();
    println!("runtimes: {n} echo jobs, -j {k}, median of {rounds} alternating rounds");
    let mut samples = vec![Vec::new(); contenders.len()];
    let mut direct_samples = vec![Vec::new(); contenders.len()];
    for _ in 0..rounds {
        for (i, c) in contenders.iter().enumerate() {
            samples[i].push(throughput(c, n, k)?);
            if c.mode == "native" {
                direct_samples[i].push(direct(&c.argv, n, k)?);
            }
        }
    }
    println!(
        "{:<22} {:>10} {:>14} {:>14}  target",
        "processor", "jobs/s", "us/job/worker", "direct jobs/s"
    );
    for ((c, s), d) in contenders.iter().zip(samples).zip(direct_samples) {
        let rate = median(s);
        let per_job = 1e6 * k as f64 / rate;
        let direct = if d.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0}", median(d))
        };
        let verdict = match c.target {
            Some(t) if rate >= t => format!("  met ({t:.0}/s)"),
            Some(t) => format!("  missed ({t:.0}/s)"),
            None => String::new(),
        };
        println!(
            "{:<22} {rate:>10.0} {per_job:>14.1} {direct:>14}{verdict}",
            c.name
        );
    }
    Ok(())
}
