//! One test per job outcome: what each one looks like in the record, and which worker
//! behaviour leads to it.

use jobsup_tests::{assert_killed_and_gone, bin, jobsup, Record, Run};

/// Runs `processor` on `input` with extra flags; one worker.
fn run(processor: &str, flags: &[&str], input: &str) -> Run {
    jobsup!()
        .args(["-j", "1"])
        .args(flags)
        .processor(processor, [] as [&str; 0])
        .stdin(input)
        .run()
}

/// The only record of a one-job run.
fn only(run: &Run) -> Record {
    let recs = run.records();
    assert_eq!(recs.len(), 1, "expected exactly one record\n{run}");
    recs.into_iter().next().unwrap()
}

#[test]
fn ok_job_returns_its_output_and_the_full_record() {
    let run = run(bin!("jobsup-echo"), &[], "hello\nworld\n");
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    for (seq, payload) in [(1, "hello"), (2, "world")] {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "ok", "{r}");
        assert_eq!(r.id(), seq.to_string(), "{r}");
        assert_eq!(r.output(), Some(payload), "{r}");
        assert_eq!(r.error(), None, "{r}");
        assert_eq!(r.attempts(), Some(1), "{r}");
        assert!(r.duration_ms().is_some_and(|d| d >= 0.0), "{r}");
        assert_eq!(r.worker(), Some(1), "{r}");
        assert!(r.pid().is_some_and(|p| p > 0), "{r}");
        assert!(!r.has("signal") && !r.has("output_base64"), "{r}");
    }
    assert!(
        run.stderr.contains("ok") && run.stderr.contains('2'),
        "the summary counts the outcomes\n{run}"
    );
}

#[test]
fn failed_job_carries_the_error() {
    let r = only(&run(bin!("jobsup-flaky"), &[], "fail:disk on fire\n"));
    assert_eq!(r.outcome(), "failed", "{r}");
    assert!(r.error().is_some_and(|e| e.contains("disk on fire")), "{r}");
}

#[test]
fn panicking_handler_is_failed_not_crashed() {
    let run = run(bin!("jobsup-flaky"), &[], "panic:oh no\nok:after\n");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    let r = &recs[&1];
    assert_eq!(r.outcome(), "failed", "{r}");
    let err = r.error().unwrap_or_default();
    assert!(err.contains("panicked") && err.contains("oh no"), "{r}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    assert_eq!(recs[&2].output(), Some("after"), "{run}");
}

#[test]
fn job_that_cleans_up_in_time_is_timeout() {
    let run = run(
        bin!("jobsup-sleepy"),
        &["--ttl", "300ms", "--cleanup", "5s"],
        "60000\n",
    );
    let r = only(&run);
    assert_eq!(r.outcome(), "timeout", "{r}");
    assert_eq!(
        r.exit_code(),
        Some(124),
        "the runtime exits 124 after a cleanup: {r}"
    );
    assert!(
        r.output().is_some_and(|o| o.starts_with("cleaned up")),
        "the cleanup's own result is kept: {r}"
    );
    assert_eq!(r.signal(), None, "{r}");
}

#[test]
fn result_inside_the_cleanup_window_is_kept_but_the_job_is_timeout() {
    let run = run(
        bin!("jobsup-flaky"),
        &["--ttl", "300ms", "--cleanup", "5s"],
        "sleep:600\n",
    );
    let r = only(&run);
    assert_eq!(r.outcome(), "timeout", "{r}");
    assert_eq!(r.output(), Some("slept 600 ms"), "{r}");
}

#[test]
fn job_that_ignores_cleanup_is_killed_and_its_worker_is_gone() {
    let run = run(
        bin!("jobsup-spin"),
        &["--ttl", "300ms", "--cleanup", "300ms"],
        "x\n",
    );
    assert_killed_and_gone(&only(&run), &run);
}

#[test]
fn worker_that_aborts_is_crashed_with_signal_6() {
    let r = only(&run(bin!("jobsup-flaky"), &[], "abort\n"));
    assert_eq!(r.outcome(), "crashed", "{r}");
    assert_eq!(r.signal(), Some(6), "{r}");
}

#[test]
fn worker_that_exits_mid_job_is_crashed_with_its_exit_code() {
    let r = only(&run(bin!("jobsup-flaky"), &[], "exit:3\n"));
    assert_eq!(r.outcome(), "crashed", "{r}");
    assert_eq!(r.exit_code(), Some(3), "{r}");
    assert_eq!(r.signal(), None, "{r}");
}

#[test]
fn worker_that_segfaults_is_crashed_with_signal_11() {
    let r = only(&run(bin!("jobsup-flaky"), &[], "segv\n"));
    assert_eq!(r.outcome(), "crashed", "{r}");
    assert_eq!(r.signal(), Some(11), "{r}");
}
