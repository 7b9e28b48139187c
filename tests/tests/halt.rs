//! `--halt`: the run stops early as GNU parallel's would. `soon` lets the running jobs
//! finish, `now` cancels them; counts, percentages and successes trigger it; every job
//! read still gets its one record, and the exit code follows the jobs that really ran.

use jobsup_tests::{bin, jobsup, Run};

/// Runs jobsup-flaky on `payloads` (one job each) with `--halt rule` and `-j workers`.
fn halted(rule: &str, workers: &str, payloads: &[&str]) -> Run {
    let mut input = payloads.join("\n");
    input.push('\n');
    jobsup!()
        // A job that ignores its cleanup request is killed 200 ms after it.
        .args(["-j", workers, "--halt", rule, "--cleanup", "200ms"])
        .args(["--retry-delay", "10ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(input)
        .run()
}

/// The outcome of each record, by line.
fn outcomes(run: &Run) -> Vec<String> {
    run.by_seq()
        .values()
        .map(|r| r.outcome().to_string())
        .collect()
}

/// Asserts that lines `from..=to` were cancelled, not started, because of `why`.
fn not_started(run: &Run, from: u64, to: u64, why: &str) {
    let recs = run.by_seq();
    for seq in from..=to {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "cancelled", "line {seq}\n{run}");
        let error = r.error().unwrap_or_default();
        assert!(
            error.starts_with("not started: ") && error.contains(why),
            "line {seq}: {error}\n{run}"
        );
    }
}

/// The warning said when the halt triggers: exactly one.
fn one_halt_warning(run: &Run, rule: &str) {
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains(&format!("--halt {rule} triggered")))
        .collect();
    assert_eq!(said.len(), 1, "{run}");
}

#[test]
fn soon_lets_the_running_job_finish_and_starts_no_more() {
    let mut payloads = vec!["sleep:1500", "fail"];
    payloads.extend(["ok"; 8]);
    let run = halted("soon,fail=1", "2", &payloads);
    // The failing job's class.
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.records().len(), 10, "one record per line\n{run}");
    let recs = run.by_seq();
    assert_eq!(
        recs[&1].outcome(),
        "ok",
        "soon: the running job finishes\n{run}"
    );
    assert_eq!(recs[&2].outcome(), "failed", "{run}");
    not_started(&run, 3, 10, "--halt soon,fail=1 triggered by job 2");
    one_halt_warning(&run, "soon,fail=1");
}

#[test]
fn now_cancels_the_running_job_which_never_finishes() {
    // The long job ignores the cleanup request: only the halt ends it.
    let mut payloads = vec!["sleep:600000", "fail"];
    payloads.extend(["ok"; 8]);
    let run = halted("now,fail=1", "2", &payloads);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.records().len(), 10, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "cancelled", "{run}");
    assert!(
        recs[&1]
            .error()
            .unwrap_or_default()
            .contains("--halt now,fail=1 triggered by job 2"),
        "{run}"
    );
    assert!(recs[&1].worker().is_some(), "it was running\n{run}");
    assert_eq!(recs[&2].outcome(), "failed", "{run}");
    not_started(&run, 3, 10, "--halt now,fail=1 triggered by job 2");
    one_halt_warning(&run, "now,fail=1");
}

#[test]
fn fail_n_counts_failures_and_exits_with_the_failures_class() {
    let run = halted(
        "soon,fail=3",
        "1",
        &["fail", "ok", "fail", "ok", "exit:3", "ok", "ok", "ok"],
    );
    // The third failure is a crash (exit 3 mid-job): its class is 1 as well.
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(
        outcomes(&run)[..5],
        ["failed", "ok", "failed", "ok", "crashed"],
        "{run}"
    );
    not_started(&run, 6, 8, "--halt soon,fail=3 triggered by job 5");
}

#[test]
fn fail_percent_counts_the_jobs_finished_so_far_from_the_third() {
    // 1/1 and 1/2 are too few jobs, 1/3 is under 50%, 2/4 is 50%.
    let run = halted(
        "soon,fail=50%",
        "1",
        &["fail", "ok", "ok", "fail", "ok", "ok", "ok"],
    );
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(
        outcomes(&run)[..4],
        ["failed", "ok", "ok", "failed"],
        "{run}"
    );
    not_started(&run, 5, 7, "--halt soon,fail=50% triggered by job 4");
}

#[test]
fn now_success_1_exits_0_after_cancelling_the_rest() {
    let mut payloads = vec!["sleep:600000", "ok"];
    payloads.extend(["ok"; 6]);
    let run = halted("now,success=1", "2", &payloads);
    // The cancelled jobs were cancelled by the halt itself: they do not raise the code.
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records().len(), 8, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "cancelled", "{run}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    not_started(&run, 3, 8, "--halt now,success=1 triggered by job 2");
}

#[test]
fn a_retried_job_counts_only_on_its_final_attempt() {
    let run = jobsup!()
        .args(["-j", "1", "--halt", "soon,fail=1"])
        .args(["--retries", "2", "--retry-delay", "10ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok-on:2\nok\nfail\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    // Its first attempt failed, but its final one did not: no halt, line 2 runs.
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&1].attempts(), Some(2), "{run}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    // Failed on each of its 3 attempts: the halt comes after the last.
    assert_eq!(recs[&3].outcome(), "failed", "{run}");
    assert_eq!(recs[&3].attempts(), Some(3), "{run}");
    one_halt_warning(&run, "soon,fail=1");
    assert!(run.stderr.contains("triggered by job 3"), "{run}");
}

#[test]
fn a_rejected_line_is_a_failed_job() {
    let run = jobsup!()
        .args(["-j", "1", "--halt", "1", "--input-format", "ndjson"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("{\"payload\":\"ok\"}\nnot json\n{\"payload\":\"ok\"}\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(outcomes(&run)[..2], ["ok", "rejected"], "{run}");
    not_started(&run, 3, 3, "--halt soon,fail=1 triggered by job 2");
}

#[test]
fn a_bad_rule_is_a_usage_error() {
    for rule in ["sometimes", "now,fail=0", "soon,fail=101%", "now,oops=1"] {
        let run = jobsup!()
            .args(["--halt", rule])
            .processor(bin!("jobsup-flaky"), [] as [&str; 0])
            .stdin("ok\n")
            .run();
        assert_eq!(run.code(), 125, "{rule}\n{run}");
        assert!(run.stderr.contains("--halt"), "{rule}\n{run}");
        assert!(run.records().is_empty(), "nothing ran\n{run}");
    }
}
