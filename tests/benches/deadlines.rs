//! Deadline lateness under load: how long after its deadline a job is killed, or told to
//! clean up, when the workers keep every CPU busy, against GNU `timeout -k` run the same
//! number at a time by `xargs -P`.
//!
//! Run with `cargo bench -p jobsup-tests --bench deadlines` (or `scripts/bench`). It
//! prints numbers and asserts nothing about speed. Every job has a ttl of 1s and a cleanup
//! of 1s. Lateness is read from the records jobsup writes: a killed job's `duration_ms`
//! runs from its hand-off to the moment its worker's exit was seen, so duration − 2000 ms
//! is how late the kill took effect; a job that exits on SIGTERM at once is recorded
//! `timeout` with duration − 1000 ms as the notice's lateness (plus the exit). The
//! baseline's lateness is the wall time of each `timeout -k 1 1 …` minus 2 s, measured
//! by `fx-clock` around it.
//!
//! `JOBSUP_BENCH_FLAGS` adds flags to every jobsup run (say `--nice 0`), and
//! `JOBSUP_BENCH_AS=nobody` runs jobsup as an unprivileged user (through `setpriv`, as
//! root), to see what jobsup gets where raising its own priority is not permitted.
//! `JOBSUP_BENCH_JOBSUP` names another jobsup binary to measure instead of this build's.

use std::process::{Command, Stdio};
use std::time::Duration;

use jobsup_tests::{bin, lines, Jobsup};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A CPU-bound job that ignores SIGTERM, for the baseline (which runs programs, not
/// processors).
const SH_SPIN: &str = "trap '' TERM; while :; do :; done";
/// An exec job that sleeps and ignores SIGTERM.
const SH_SLEEP_IGNORING: &str = "trap '' TERM; exec sleep 30";
/// An exec job that sleeps and exits as soon as SIGTERM arrives.
const SH_SLEEP_TRAPPING: &str = "trap 'exit 0' TERM; sleep 30 & wait";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A jobsup run as the benchmark is told to (`JOBSUP_BENCH_AS`, `JOBSUP_BENCH_FLAGS`).
fn jobsup_run() -> Jobsup {
    let shim = std::env::var("JOBSUP_BENCH_JOBSUP")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jobsup-shim").to_string());
    let j = match std::env::var("JOBSUP_BENCH_AS").as_deref() {
        Ok("nobody") => Jobsup::unprivileged(shim),
        _ => Jobsup::new(shim).arg("run"),
    };
    let extra = std::env::var("JOBSUP_BENCH_FLAGS").unwrap_or_default();
    j.timeout(Duration::from_secs(600))
        .args(extra.split_whitespace())
        .args(["-q", "--ttl", "1s", "--cleanup", "1s"])
}

/// Lateness samples (ms, sorted) of one jobsup run of `jobs` jobs: `late` reads one from
/// a record, or says the record is not the kind the row is about.
fn jobsup_lateness(
    j: Jobsup,
    jobs: usize,
    late: impl Fn(&jobsup_tests::Record) -> Option<f64>,
) -> Result<Vec<f64>, Error> {
    let run = j.stdin(lines(jobs, |i| i.to_string())).run();
    let recs = run.records();
    if recs.len() != jobs {
        return Err(format!(
            "{} records of {jobs} (exit {}): {}",
            recs.len(),
            run.code(),
            run.stderr.trim()
        )
        .into());
    }
    // A record of another kind (a notice never seen before the kill, say) is as late as
    // can be: infinitely, for the percentiles.
    let mut samples: Vec<f64> = recs
        .iter()
        .map(|r| late(r).unwrap_or(f64::INFINITY))
        .collect();
    // A job far out is shown whole, so that a rare one can be looked into (pid, outcome,
    // error): once in about fifty runs of a row, one job has been a second late.
    if let Some((worst, r)) = samples
        .iter()
        .zip(&recs)
        .max_by(|a, b| a.0.total_cmp(b.0))
        .filter(|(worst, _)| **worst > FAR_OUT_MS)
    {
        eprintln!("the latest job, {worst:.1} ms: {}", r.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Lateness past which the bench prints the job's record (to stderr).
const FAR_OUT_MS: f64 = 500.0;

fn killed_after(r: &jobsup_tests::Record, deadline_ms: f64) -> Option<f64> {
    (r.outcome() == "killed").then(|| r.duration_ms().map(|d| d - deadline_ms))?
}

/// `jobs` native `spin` jobs (CPU-bound, deaf to every request) at `-j k`.
fn native_spin(jobs: usize, k: usize) -> Result<Vec<f64>, Error> {
    let j = jobsup_run()
        .args(["-j", &k.to_string()])
        .processor(bin!("jobsup-spin"), [] as [&str; 0]);
    jobsup_lateness(j, jobs, |r| killed_after(r, 2000.0))
}

/// `jobs` exec jobs of `sh -c SCRIPT` at `-j k`, each read by `late`.
fn exec_sh(
    jobs: usize,
    k: usize,
    script: &str,
    late: impl Fn(&jobsup_tests::Record) -> Option<f64>,
) -> Result<Vec<f64>, Error> {
    let j = jobsup_run()
        .args(["--mode", "exec", "-j", &k.to_string()])
        .processor("sh", ["-c", script]);
    jobsup_lateness(j, jobs, late)
}

/// The baseline: `jobs` runs of `timeout -k 1 1 sh -c SH_SPIN`, `k` at a time under
/// `xargs -P k`, each timed by `fx-clock`.
fn timeout_spin(jobs: usize, k: usize) -> Result<Vec<f64>, Error> {
    let input = lines(jobs, |i| i.to_string());
    let mut child = Command::new("xargs")
        .args(["-P", &k.to_string(), "-n", "1", bin!("fx-clock")])
        .args(["timeout", "-k", "1", "1", "sh", "-c", SH_SPIN, "sh"])
        .env_clear()
        .env("PATH", jobsup_tests::PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output()?;
    let mut samples: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|us| us / 1000.0 - 2000.0)
        .collect();
    if samples.len() != jobs {
        return Err(format!("{} timings of {jobs} from xargs", samples.len()).into());
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// One row of the table: `| measure | jobsup | baseline | ratio |`.
fn row(what: &str, sup: &Result<Vec<f64>, Error>, base: Option<&Result<Vec<f64>, Error>>) {
    let fmt = |s: &Result<Vec<f64>, Error>| match s {
        Ok(s) => format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(s, 50.0),
            percentile(s, 99.0),
            percentile(s, 100.0)
        ),
        Err(e) => format!("unavailable: {e}"),
    };
    let (b, ratio) = match base {
        None => ("(none)".to_string(), "p99 target 5 ms".to_string()),
        Some(b) => {
            let ratio = match (sup, b) {
                (Ok(s), Ok(b)) => format!(
                    "p99 {:.3}x the baseline's",
                    percentile(s, 99.0) / percentile(b, 99.0)
                ),
                _ => "-".into(),
            };
            (format!("`timeout -k`: {}", fmt(b)), ratio)
        }
    };
    println!("| {what} | {} | {b} | {ratio} |", fmt(sup));
}

fn main() {
    let flags = std::env::var("JOBSUP_BENCH_FLAGS").unwrap_or_default();
    let who = std::env::var("JOBSUP_BENCH_AS").unwrap_or_else(|_| "the invoker".into());
    println!(
        "deadline lateness: ttl 1s + cleanup 1s, {} CPUs, jobsup run as {who}, extra flags `{flags}`",
        jobsup_tests_cpus()
    );
    println!("| measure | jobsup | baseline in the same run | ratio |");
    println!("|---|---|---|---|");
    for (jobs, k) in [(64, 32), (64, 8), (200, 200)] {
        let sup = native_spin(jobs, k);
        let base = timeout_spin(jobs, k);
        row(
            &format!("hard-kill lateness, {jobs} native jobs spinning on the CPU, `-j {k}`"),
            &sup,
            Some(&base),
        );
    }
    let ignoring = exec_sh(200, 200, SH_SLEEP_IGNORING, |r| killed_after(r, 2000.0));
    row(
        "hard-kill lateness, 200 sleeping exec jobs ignoring TERM, `-j 200`",
        &ignoring,
        None,
    );
    let trapping = exec_sh(200, 200, SH_SLEEP_TRAPPING, |r| {
        (r.outcome() == "timeout").then(|| r.duration_ms().map(|d| d - 1000.0))?
    });
    row(
        "soft-notice lateness, 200 sleeping exec jobs trapping TERM, `-j 200`",
        &trapping,
        None,
    );
    for (jobs, k) in [(64, 32), (200, 200)] {
        let j = jobsup_run()
            .args(["-j", &k.to_string()])
            .processor(bin!("fx-latency"), ["spin"]);
        let soft = jobsup_lateness(j, jobs, |r| {
            let us: f64 = r.output()?.trim().parse().ok()?;
            Some(us / 1000.0 - 1000.0)
        });
        row(
            &format!(
                "soft-notice lateness (seen by the handler), {jobs} native jobs spinning, `-j {k}`"
            ),
            &soft,
            None,
        );
    }
}

/// The number of CPUs online.
fn jobsup_tests_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
