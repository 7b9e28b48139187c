//! A job's and a worker's life: retries, the idle timeout, the shutdown timeout, a second
//! signal, a processor that cannot start, and worker recycling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jobsup_tests::{
    bin, cpu_ticks, jobsup, lines, pid_alive, pids, wait_until, Background, Record, Run, WAIT,
};
use nix::sys::signal::Signal;

/// How long a run that should end on its own within seconds may take before the test
/// fails (rather than the default minute).
const SHORT_RUN: Duration = Duration::from_secs(30);

/// Runs flaky with `flags` on `input`, one worker, and checks that every job has exactly
/// one record.
fn flaky(flags: &[&str], input: &str) -> (Run, BTreeMap<u64, Record>) {
    let run = jobsup!()
        .args(["-j", "1"])
        .args(flags)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(input)
        .run();
    let recs = run.by_seq();
    assert_eq!(
        recs.len(),
        input.lines().count(),
        "exactly one record per job\n{run}"
    );
    (run, recs)
}

#[test]
fn job_that_succeeds_on_its_third_attempt_is_ok_with_two_previous_errors() {
    let (run, recs) = flaky(&["--retries", "2", "--retry-delay", "10ms"], "ok-on:3\n");
    assert_eq!(run.code(), 0, "{run}");
    let r = &recs[&1];
    assert_eq!(r.outcome(), "ok", "{r}");
    assert_eq!(r.output(), Some("ok on attempt 3"), "{r}");
    assert_eq!(r.attempts(), Some(3), "{r}");
    let previous = r.previous_errors().unwrap_or_default();
    assert_eq!(previous.len(), 2, "{r}");
    for (i, e) in previous.iter().enumerate() {
        let attempt = i + 1;
        assert!(
            e.contains(&format!("attempt {attempt}")) && e.contains("failed"),
            "entry {i} is about attempt {attempt}: {r}"
        );
    }
}

#[test]
fn job_that_runs_out_of_retries_keeps_its_last_failure() {
    let (run, recs) = flaky(&["--retries", "1", "--retry-delay", "10ms"], "ok-on:3\n");
    assert_eq!(run.code(), 1, "{run}");
    let r = &recs[&1];
    assert_eq!(r.outcome(), "failed", "{r}");
    assert_eq!(r.attempts(), Some(2), "{r}");
    assert!(
        r.error().is_some_and(|e| e.contains("attempt 2")),
        "the final error is the last attempt's: {r}"
    );
    let previous = r.previous_errors().unwrap_or_default();
    assert_eq!(previous.len(), 1, "{r}");
    assert!(previous[0].contains("attempt 1"), "{r}");
}

#[test]
fn only_the_outcomes_of_retry_on_are_retried() {
    let (run, recs) = flaky(
        &[
            "--retries",
            "2",
            "--retry-on",
            "crashed",
            "--retry-delay",
            "10ms",
        ],
        "fail:not retried\nexit:3\nok:fine\n",
    );
    assert_eq!(run.code(), 1, "{run}");
    let failed = &recs[&1];
    assert_eq!(failed.outcome(), "failed", "{failed}");
    assert_eq!(
        failed.attempts(),
        Some(1),
        "failed is not in --retry-on: {failed}"
    );
    assert!(
        failed.previous_errors().unwrap_or_default().is_empty(),
        "{failed}"
    );
    let crashed = &recs[&2];
    assert_eq!(crashed.outcome(), "crashed", "{crashed}");
    assert_eq!(crashed.attempts(), Some(3), "retries + 1: {crashed}");
    let previous = crashed.previous_errors().unwrap_or_default();
    assert_eq!(previous.len(), 2, "{crashed}");
    assert!(previous.iter().all(|e| e.contains("crashed")), "{crashed}");
    let ok = &recs[&3];
    assert_eq!((ok.outcome(), ok.attempts()), ("ok", Some(1)), "{ok}");
}

#[test]
fn idle_timeout_spares_a_job_that_beats_and_stops_one_that_goes_silent() {
    // One run, three jobs side by side; the third has its own short ttl and beats, so it
    // is its ttl, not the idle timeout, that stops it.
    let input = concat!(
        r#"{"id":"beating","payload":"beat:1500"}"#,
        "\n",
        r#"{"id":"silent","payload":"silent:1500"}"#,
        "\n",
        r#"{"id":"long","payload":"beat:60000","ttl":"300ms"}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "3", "--input-format", "ndjson"])
        .args(["--idle-timeout", "500ms", "--cleanup", "300ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(input)
        .timeout(SHORT_RUN)
        .run();
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "{run}");

    let beating = &recs[&1];
    assert_eq!(
        beating.outcome(),
        "ok",
        "heartbeats keep a job alive: {beating}"
    );
    assert_eq!(
        beating.output(),
        Some("worked 1500 ms with heartbeats"),
        "{beating}"
    );
    assert_eq!(beating.deadline(), None, "{beating}");

    let silent = &recs[&2];
    assert!(
        matches!(silent.outcome(), "timeout" | "killed"),
        "a silent job is stopped: {silent}"
    );
    assert_eq!(silent.deadline(), Some("idle"), "{silent}");

    let long = &recs[&3];
    assert!(
        matches!(long.outcome(), "timeout" | "killed"),
        "heartbeats do not extend the ttl: {long}"
    );
    assert_eq!(long.deadline(), Some("ttl"), "{long}");
    assert!(matches!(run.code(), 124 | 137), "{run}");
}

/// With `-j 1` and `ok:first` as the first job, waits until the first job is done and the
/// second (`spin`) is burning CPU on the same worker; returns that worker's pid.
fn wait_for_spin(bg: &Background) -> i32 {
    wait_until(WAIT, "the first job has its record", || {
        !bg.records_so_far().is_empty()
    });
    let first = bg.records_so_far().remove(0);
    assert_eq!(first.outcome(), "ok", "{first}");
    let worker = first.pid().expect("an ok record names its worker");
    // A worker that starts and echoes uses a few ticks at most; 200 ms of CPU is spin.
    let start = cpu_ticks(worker).unwrap_or(0);
    wait_until(WAIT, "the spin job burns CPU", || {
        cpu_ticks(worker).is_some_and(|t| t >= start + 20)
    });
    worker
}

fn assert_no_live_worker(seen: impl IntoIterator<Item = i32>, run: &Run) {
    let all: BTreeSet<i32> = seen.into_iter().chain(pids(&run.records())).collect();
    assert!(!all.is_empty(), "{run}");
    let alive: Vec<i32> = all.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(
        alive.is_empty(),
        "workers outlived jobsup: {alive:?}\n{run}"
    );
}

#[test]
fn the_summary_counts_the_cpu_of_a_worker_killed_with_its_namespace() {
    // A native worker behind its pid namespace's init, killed while it spins: the kernel
    // releases it without adding its time to anyone's, so only its cgroup has it.
    let bg = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--cleanup", "300ms"])
        .args(["--shutdown-timeout", "300ms", "--summary", "json"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(lines(3, |i| match i {
            1 => "ok:first".into(),
            2 => "spin".into(),
            _ => "ok:never run".into(),
        }))
        .timeout(SHORT_RUN)
        .spawn();
    bg.wait_for_handler(Signal::SIGTERM);
    let worker = wait_for_spin(&bg);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let seen = cpu_ticks(worker).expect("the spinning worker is alive") as f64 / hz;
    bg.signal_delivered(Signal::SIGTERM);
    let run = bg.wait();
    let by_seq = run.by_seq();
    assert_eq!(by_seq[&2].outcome(), "cancelled", "{run}");
    let processes = run.json_summary()["cpu_s"]["processes"]
        .as_f64()
        .unwrap_or_else(|| panic!("no cpu_s.processes\n{run}"));
    let v2 = jobsup_tests::own_cgroup_dir(None).is_some_and(|d| jobsup_tests::can_make_dir_in(&d));
    if jobsup_tests::running_as_root() && v2 {
        assert!(
            processes >= seen,
            "the spin job alone had used {seen}s, the summary counts {processes}s\n{run}"
        );
    } else {
        // Without a cgroup v2 of jobsup's, the count is what the kernel gave jobsup's
        // reaped children, which may miss the killed worker.
        assert!(processes >= 0.0, "{run}");
    }
}

#[test]
fn shutdown_timeout_cancels_a_job_that_would_run_on_after_a_single_sigterm() {
    let bg = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--cleanup", "300ms"])
        .args(["--shutdown-timeout", "300ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(lines(10, |i| match i {
            1 => "ok:first".into(),
            2 => "spin".into(),
            _ => format!("ok:queued {i}"),
        }))
        .timeout(SHORT_RUN)
        .spawn();
    bg.wait_for_handler(Signal::SIGTERM);
    let worker = wait_for_spin(&bg);
    let seen = bg.children();
    // One signal only: the shutdown timeout, not a second signal, ends the spin job.
    bg.signal_delivered(Signal::SIGTERM);
    let run = bg.wait();
    assert_eq!(run.code(), 143, "{run}");

    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    let spin = &recs[&2];
    assert_eq!(spin.outcome(), "cancelled", "{spin}");
    assert_eq!(spin.attempts(), Some(1), "it had started: {spin}");
    assert_eq!(spin.pid(), Some(worker), "{spin}");
    assert!(
        spin.error().is_some_and(|e| e.contains("shutdown timeout")),
        "{spin}"
    );
    for (seq, r) in recs.iter().filter(|(&seq, _)| seq > 2) {
        assert!(*seq <= 10, "{run}");
        assert_eq!(r.outcome(), "cancelled", "job {seq} was queued: {r}");
        assert_eq!(r.attempts(), Some(0), "job {seq} never started: {r}");
    }
    assert_no_live_worker(seen.into_iter().chain([worker]), &run);
}

#[test]
fn second_sigint_kills_a_job_that_ignores_its_cleanup_request() {
    let bg = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--cleanup", "60s"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok:first\nspin\nok:queued\n")
        .timeout(SHORT_RUN)
        .spawn();
    bg.wait_for_handler(Signal::SIGINT);
    let worker = wait_for_spin(&bg);
    let seen = bg.children();

    bg.signal_delivered(Signal::SIGINT);
    // The first signal lets the running job go on (until its 60 s ttl).
    wait_until(WAIT, "jobsup logs the first SIGINT", || {
        bg.stderr_so_far().contains("SIGINT")
    });
    assert!(
        pid_alive(worker),
        "the first SIGINT must not kill the worker"
    );
    assert!(
        bg.records_so_far().iter().all(|r| r.seq() != 2),
        "the running job was ended by the first SIGINT: {:?}",
        bg.records_so_far()
    );

    bg.signal_delivered(Signal::SIGINT);
    let run = bg.wait();
    assert_eq!(run.code(), 130, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    let spin = &recs[&2];
    assert_eq!(spin.outcome(), "cancelled", "{spin}");
    assert_eq!(spin.attempts(), Some(1), "{spin}");
    assert_eq!(
        spin.signal(),
        Some(9),
        "it ignored the cleanup request: {spin}"
    );
    if let Some(r) = recs.get(&3) {
        assert_eq!(r.outcome(), "cancelled", "{r}");
    }
    assert_no_live_worker(seen.into_iter().chain([worker]), &run);
}

#[test]
fn processor_that_exits_at_start_ends_the_run_with_126_and_its_stderr() {
    let run = jobsup!()
        .args(["-q", "-j", "2"])
        .processor("/bin/sh", ["-c", "echo boom-at-start >&2; exit 3"])
        .stdin("a\nb\nc\n")
        .timeout(SHORT_RUN)
        .run();
    assert_eq!(run.code(), 126, "{run}");
    // -q hides the processor's own log lines: what is left is jobsup's error.
    assert!(run.stderr.contains("/bin/sh"), "names the processor\n{run}");
    assert!(
        run.stderr.contains("boom-at-start"),
        "quotes the end of its stderr\n{run}"
    );
    let recs = run.by_seq();
    assert!(recs.len() <= 3, "{run}");
    for r in recs.values() {
        assert_eq!(r.outcome(), "cancelled", "no job could run: {r}");
    }
}

#[test]
fn processor_that_never_completes_its_handshake_ends_the_run_with_126() {
    let run = jobsup!()
        .args(["-q", "-j", "1", "--start-timeout", "300ms"])
        .processor("/bin/sh", ["-c", "exec sleep 30"])
        .stdin("a\n")
        .timeout(SHORT_RUN)
        .run();
    assert_eq!(run.code(), 126, "{run}");
    assert!(
        run.stderr.contains("/bin/sh") && run.stderr.contains("300ms"),
        "names the processor and the start timeout\n{run}"
    );
    for r in run.records() {
        assert_eq!(r.outcome(), "cancelled", "{r}");
    }
}

#[test]
fn max_jobs_per_worker_replaces_workers_with_a_little_jitter() {
    let run = jobsup!()
        .args(["-q", "-j", "1", "--max-jobs-per-worker", "10"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin(lines(100, |i| i.to_string()))
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 100, "{run}");
    assert!(recs.values().all(|r| r.outcome() == "ok"), "{run}");

    let mut per_worker: BTreeMap<i64, usize> = BTreeMap::new();
    for r in recs.values() {
        *per_worker
            .entry(r.worker().expect("an ok record names its worker"))
            .or_default() += 1;
    }
    let distinct_pids = pids(&run.records()).len();
    assert_eq!(distinct_pids, per_worker.len(), "{per_worker:?}");
    // Each worker runs 10 + random(0..=1) jobs; only the last one may run fewer.
    assert!(
        (100 / 11..=100 / 10 + 1).contains(&per_worker.len()),
        "{} workers: {per_worker:?}",
        per_worker.len()
    );
    let last = *per_worker.keys().last().unwrap();
    for (&worker, &n) in &per_worker {
        let allowed = if worker == last { 1..=11 } else { 10..=11 };
        assert!(
            allowed.contains(&n),
            "worker {worker} ran {n} jobs: {per_worker:?}"
        );
    }
}
