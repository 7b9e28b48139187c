//! A bug inside jobsup (forced with the test-only `JOBSUP_FAULT` hook of the
//! `fault-injection` feature) must not cost a record or hang the run: every job read gets
//! exactly one record, the summary says what broke, jobsup exits 125 and leaves no worker.

use std::collections::BTreeMap;

use jobsup_tests::{bin, jobsup, lines, pid_alive, Record, Run};

const JOBS: usize = 12;

/// Twelve jobs at -j 2 through `flaky` (each sleeps a little, so several are in flight),
/// with a panic injected at `fault`.
fn run_with_fault(fault: &str, flags: &[&str]) -> Run {
    jobsup!()
        .env("JOBSUP_FAULT", fault)
        .args(["-j", "2"])
        .args(flags)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(lines(JOBS, |_| "sleep:30".to_string()))
        .run()
}

/// Checks what holds whatever broke: no line twice, the exit code, the summary line, and no
/// worker left running.
fn assert_recorded_and_ended(run: &Run, what: &str) -> BTreeMap<u64, Record> {
    assert_eq!(
        run.code(),
        125,
        "{what}: a run in which jobsup broke fails\n{run}"
    );
    let records = run.records();
    let by_seq = run.by_seq();
    assert_eq!(
        records.len(),
        by_seq.len(),
        "{what}: a line recorded twice\n{run}"
    );
    assert!(
        by_seq.keys().all(|seq| (1..=JOBS as u64).contains(seq)),
        "{what}\n{run}"
    );
    assert!(
        run.stderr.contains("jobsup failed: internal error"),
        "{what}: the summary says what broke\n{run}"
    );
    for r in &records {
        if let Some(pid) = r.pid() {
            assert!(
                !pid_alive(pid),
                "{what}: worker {pid} outlived jobsup\n{run}"
            );
        }
    }
    by_seq
}

#[test]
fn a_panicking_worker_task_crashes_its_job_and_cancels_the_rest() {
    let run = run_with_fault("worker:3", &[]);
    let recs = assert_recorded_and_ended(&run, "worker");
    let crashed: Vec<_> = recs.values().filter(|r| r.outcome() == "crashed").collect();
    assert_eq!(crashed.len(), 1, "the job in the failed task\n{run}");
    assert!(
        crashed[0]
            .error()
            .is_some_and(|e| e.contains("internal error in the task of worker")),
        "{}",
        crashed[0]
    );
    // Jobs read but not started are cancelled; none is left without a record.
    assert!(
        recs.values()
            .all(|r| ["ok", "crashed", "cancelled"].contains(&r.outcome())),
        "{run}"
    );
}

#[test]
fn a_panic_in_the_pool_still_records_every_job_it_had_read() {
    let run = run_with_fault("pool:2", &[]);
    let recs = assert_recorded_and_ended(&run, "pool");
    assert!(!recs.is_empty(), "{run}");
    assert!(
        run.stderr.contains("internal error in the pool"),
        "the pool's own panic is named\n{run}"
    );
}

#[test]
fn a_panicking_reaper_does_not_hang_the_run() {
    let run = run_with_fault("reaper:3", &[]);
    assert_recorded_and_ended(&run, "reaper");
}

#[test]
fn a_panic_while_spawning_fails_the_start_and_ends_the_run() {
    // The first worker starts; the second spawn fails inside jobsup.
    let run = run_with_fault("spawner:2", &[]);
    assert_recorded_and_ended(&run, "spawner");
    assert!(run.stderr.contains("fault injected at spawner"), "{run}");
}

#[test]
fn the_json_summary_names_the_failure_too() {
    let run = run_with_fault("worker:1", &["--summary", "json", "-q"]);
    assert_eq!(run.code(), 125, "{run}");
    let summary = run.json_summary();
    assert!(
        summary["internal_error"]
            .as_str()
            .is_some_and(|e| e.contains("internal error")),
        "{summary}"
    );
}

#[test]
fn a_panicking_output_writer_ends_the_run_with_125_and_says_so() {
    let run = run_with_fault("output:3", &[]);
    assert_eq!(run.code(), 125, "{run}");
    assert!(
        run.stderr.contains("internal error in the output writer"),
        "the lost records are blamed on the writer\n{run}"
    );
    assert!(
        run.records().len() <= 2,
        "records after the failure are not written\n{run}"
    );
    assert!(
        run.stderr.contains("could not be written"),
        "how many records were lost is said\n{run}"
    );
}

#[test]
fn a_panicking_input_reader_is_an_error_not_the_end_of_the_input() {
    let run = run_with_fault("input:4", &[]);
    let recs = assert_recorded_and_ended(&run, "input");
    assert!(
        run.stderr.contains("the input reader panicked"),
        "the reader's end is not taken for the end of the input\n{run}"
    );
    assert!(recs.len() < JOBS, "the run stopped reading\n{run}");
}
