//! Worker reuse and replacement.

use std::collections::BTreeSet;

use jobsup_tests::{bin, jobsup, lines, pids};

/// Six echo jobs on one worker slot, with extra flags; checks they all ran.
fn six_echo_jobs(flags: &[&str]) -> (jobsup_tests::Run, Vec<jobsup_tests::Record>) {
    let run = jobsup!()
        .args(["-j", "1"])
        .args(flags)
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin(lines(6, |i| format!("job {i}")))
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.records();
    assert_eq!(recs.len(), 6, "{run}");
    (run, recs)
}

#[test]
fn one_worker_serves_every_job_by_default() {
    let (run, recs) = six_echo_jobs(&[]);
    assert_eq!(pids(&recs).len(), 1, "one reused process\n{run}");
}

#[test]
fn max_jobs_per_worker_replaces_the_process() {
    let (run, recs) = six_echo_jobs(&["--max-jobs-per-worker", "2"]);
    assert!(pids(&recs).len() >= 3, "a new process every 2 jobs\n{run}");
    let serials: BTreeSet<i64> = recs.iter().filter_map(|r| r.worker()).collect();
    assert!(
        serials.len() >= 3,
        "each replacement has a new serial\n{run}"
    );
}

#[test]
fn crashed_worker_is_replaced() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("abort\nok:after\n")
        .run();
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "crashed", "{run}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    assert_eq!(recs[&2].output(), Some("after"), "{run}");
    assert_ne!(recs[&1].pid(), recs[&2].pid(), "{run}");
    assert_ne!(recs[&1].worker(), recs[&2].worker(), "{run}");
}

#[test]
fn timed_out_and_killed_workers_are_replaced() {
    let run = jobsup!()
        .args(["-j", "1", "--ttl", "300ms", "--cleanup", "2s"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("sleep:600\nok:a\nspin\nok:b\n")
        .run();
    let recs = run.by_seq();
    assert_eq!(recs.len(), 4, "{run}");
    let outcomes: Vec<&str> = recs.values().map(|r| r.outcome()).collect();
    assert_eq!(outcomes, ["timeout", "ok", "killed", "ok"], "{run}");
    assert_ne!(
        recs[&1].pid(),
        recs[&2].pid(),
        "timed-out worker reused\n{run}"
    );
    assert_ne!(
        recs[&3].pid(),
        recs[&4].pid(),
        "killed worker reused\n{run}"
    );
    assert_eq!(run.code(), 137, "{run}");
}
