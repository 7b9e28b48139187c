//! SIGINT / SIGTERM (and SIGHUP, SIGUSR1, SIGUSR2): the first drains (no new jobs, running ones run to their deadlines),
//! the second cancels what is running. Every job read gets a record; no worker survives.

use std::collections::BTreeSet;

use jobsup_tests::{bin, jobsup, pid_alive, pids, wait_until, WAIT};
use nix::sys::signal::Signal;

fn interrupt_twice(sig: Signal, expected_code: i32) {
    let bg = jobsup!()
        .args(["-j", "2", "--ttl", "60s", "--cleanup", "1s"])
        .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
        .stdin("200\n60000\n60000\n60000\n60000\n60000\n")
        .spawn();
    bg.wait_for_handler(sig);
    // Job 1 (200 ms) finishing means both workers have been up and busy for a while: job 2
    // runs on the other worker, and job 3 follows job 1.
    wait_until(WAIT, "the first job has its record", || {
        !bg.records_so_far().is_empty()
    });
    wait_until(WAIT, "jobsup has two workers", || bg.children().len() >= 2);
    let workers: BTreeSet<i32> = bg.children().into_iter().collect();

    // jobsup counts signals exactly, so two in quick succession are two, not one.
    bg.signal_delivered(sig);
    bg.signal_delivered(sig);
    let run = bg.wait();
    assert_eq!(run.code(), expected_code, "{run}");

    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert!(
        recs.contains_key(&2),
        "the job running when the signals came has a record\n{run}"
    );
    for (seq, r) in recs.iter().filter(|(&seq, _)| seq != 1) {
        assert_eq!(r.outcome(), "cancelled", "job {seq} did not finish: {r}");
        assert!(*seq <= 6, "{run}");
    }

    let all_workers: BTreeSet<i32> = workers.into_iter().chain(pids(&run.records())).collect();
    let alive: Vec<i32> = all_workers.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(
        alive.is_empty(),
        "workers outlived jobsup: {alive:?}\n{run}"
    );
}

#[test]
fn second_sigterm_cancels_running_jobs_and_exits_143() {
    interrupt_twice(Signal::SIGTERM, 143);
}

#[test]
fn second_sigint_cancels_running_jobs_and_exits_130() {
    interrupt_twice(Signal::SIGINT, 130);
}

/// The first `sig` drains: the running job finishes, input that comes later is not read,
/// no worker and no worker directory is left, and the exit code is 128 + the signal.
fn first_signal_drains(sig: Signal, expected_code: i32) {
    let mut bg = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--cleanup", "1s"])
        .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
        .stdin("50\n1000\n")
        .keep_stdin_open()
        .spawn();
    bg.wait_for_handler(sig);
    // With one worker, job 2 is handed over as soon as job 1 is done.
    wait_until(WAIT, "the first job has its record", || {
        !bg.records_so_far().is_empty()
    });
    bg.signal_delivered(sig);
    // Input that arrives after the signal is not read: no record, or at most a cancelled
    // one if a read was already under way. stdin stays open: jobsup must not wait for it.
    bg.write_stdin("5\n");
    let run = bg.wait();
    assert_eq!(run.code(), expected_code, "{sig}\n{run}");
    assert!(
        run.stderr.contains(&format!("{sig} received")),
        "{sig}: jobsup says why it stops\n{run}"
    );
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(
        recs.get(&2).map(|r| r.outcome()),
        Some("ok"),
        "{sig}: the running job is drained, not cancelled\n{run}"
    );
    if let Some(r) = recs.get(&3) {
        assert_eq!(
            r.outcome(),
            "cancelled",
            "input read after the signal ran: {r}"
        );
    }
    let alive: Vec<i32> = pids(&run.records())
        .into_iter()
        .filter(|&p| pid_alive(p))
        .collect();
    assert!(
        alive.is_empty(),
        "{sig}: workers outlived jobsup: {alive:?}\n{run}"
    );
    let left: Vec<String> = std::fs::read_dir(run.dir())
        .expect("the test directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("jobsup-"))
        .collect();
    assert!(
        left.is_empty(),
        "{sig}: worker directories left: {left:?}\n{run}"
    );
}

#[test]
fn first_sigterm_lets_the_running_job_finish_and_reads_no_more_input() {
    first_signal_drains(Signal::SIGTERM, 143);
}

/// A closing terminal must not lose records: SIGHUP drains like SIGTERM.
#[test]
fn sighup_drains_the_run_and_exits_129() {
    first_signal_drains(Signal::SIGHUP, 129);
}

/// SIGUSR1 and SIGUSR2 would end jobsup outright by default: they drain too.
#[test]
fn sigusr1_drains_the_run_and_exits_138() {
    first_signal_drains(Signal::SIGUSR1, 138);
}

#[test]
fn sigusr2_drains_the_run_and_exits_140() {
    first_signal_drains(Signal::SIGUSR2, 140);
}

/// A signal while the workers are still starting (a processor that never says hello, with
/// a start timeout far longer than any test) ends the run at once: the starting workers
/// are killed rather than waited for, and that is the signal's exit code, not a processor
/// that "cannot start".
#[test]
fn a_signal_during_the_workers_start_ends_the_run_without_waiting_for_them() {
    let bg = jobsup!()
        .args(["-j", "2", "--start-timeout", "3600s"])
        .processor("sleep", ["3600"])
        .stdin("1\n2\n")
        .spawn();
    bg.wait_for_handler(Signal::SIGTERM);
    wait_until(WAIT, "jobsup has started two workers", || {
        bg.children().len() >= 2
    });
    let starting = bg.children();
    bg.signal_delivered(Signal::SIGTERM);
    // Without the fix this waits for the hour-long start timeout: `wait` gives up first.
    let run = bg.wait();
    assert_eq!(run.code(), 143, "{run}");
    assert!(
        !run.stderr.contains("handshake"),
        "a stopped start is no failure of the processor\n{run}"
    );
    for r in run.records() {
        assert_eq!(r.outcome(), "cancelled", "{r}");
    }
    let alive: Vec<i32> = starting.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(
        alive.is_empty(),
        "workers outlived jobsup: {alive:?}\n{run}"
    );
}
