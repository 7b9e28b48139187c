//! jobsup's exit code: the worst outcome of the run, or what went wrong with the run itself.

use std::os::unix::fs::PermissionsExt;

use jobsup_tests::{bin, jobsup, Run};

fn run(processor: &str, flags: &[&str], input: &str) -> Run {
    jobsup!()
        .args(flags)
        .processor(processor, [] as [&str; 0])
        .stdin(input)
        .run()
}

#[test]
fn zero_when_every_job_is_ok() {
    let run = run(bin!("jobsup-flaky"), &["-j", "2"], "ok\nok:a\nsleep:1\n");
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records().len(), 3, "{run}");
}

#[test]
fn one_when_a_job_failed() {
    let run = run(bin!("jobsup-flaky"), &["-j", "1"], "ok\nfail:x\nok\n");
    assert_eq!(run.code(), 1, "{run}");
}

#[test]
fn one_when_a_job_crashed() {
    let run = run(bin!("jobsup-flaky"), &["-j", "1"], "ok\nexit:2\nok\n");
    assert_eq!(run.code(), 1, "{run}");
}

#[test]
fn one_when_a_line_is_rejected() {
    let run = run(
        bin!("jobsup-echo"),
        &["--input-format", "ndjson"],
        "{\"payload\":\"a\"}\nnot json\n",
    );
    assert_eq!(run.code(), 1, "{run}");
}

#[test]
fn timeout_beats_failed() {
    let run = run(
        bin!("jobsup-flaky"),
        &["-j", "1", "--ttl", "300ms", "--cleanup", "5s"],
        "fail:x\nsleep:600\nok\n",
    );
    assert_eq!(run.code(), 124, "{run}");
}

#[test]
fn killed_beats_timeout_and_failed() {
    let run = run(
        bin!("jobsup-flaky"),
        &["-j", "2", "--ttl", "300ms", "--cleanup", "2s"],
        "spin\nsleep:400\nfail:x\n",
    );
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "killed", "{run}");
    assert_eq!(recs[&2].outcome(), "timeout", "{run}");
    assert_eq!(run.code(), 137, "{run}");
}

#[test]
fn bad_duration_is_a_usage_error() {
    let run = run(bin!("jobsup-echo"), &["--ttl", "banana"], "a\n");
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.records().is_empty(), "nothing ran\n{run}");
    assert!(
        run.stderr.contains("banana"),
        "the error names the bad value\n{run}"
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let run = run(bin!("jobsup-echo"), &["--no-such-flag"], "a\n");
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.records().is_empty(), "nothing ran\n{run}");
    assert!(!run.stderr.trim().is_empty(), "{run}");
}

#[test]
fn processor_that_exits_without_a_handshake_is_126() {
    let run = run("true", &["-j", "1"], "a\n");
    assert_eq!(run.code(), 126, "{run}");
    assert!(!run.stderr.trim().is_empty(), "{run}");
}

#[test]
fn processor_that_never_says_hello_is_126_after_the_start_timeout() {
    let run = jobsup!()
        .args(["-j", "1", "--start-timeout", "1s"])
        .processor("sleep", ["100"])
        .stdin("a\n")
        .run();
    assert_eq!(run.code(), 126, "{run}");
    assert!(!run.stderr.trim().is_empty(), "{run}");
}

#[test]
fn non_executable_processor_is_126() {
    let j = jobsup!();
    let path = j.write_file("not-executable", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = j
        .args(["-j", "1"])
        .processor(&path, [] as [&str; 0])
        .stdin("a\n")
        .run();
    assert_eq!(run.code(), 126, "{run}");
    assert!(
        run.stderr.contains("not-executable"),
        "the error names the file\n{run}"
    );
}

#[test]
fn script_whose_interpreter_is_missing_is_126_and_names_the_interpreter() {
    let j = jobsup!();
    let path = j.write_file("script", "#!/no/such/interpreter -x\nexit 0\n");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = j
        .args(["-j", "1", "--mode", "lines"])
        .processor(&path, [] as [&str; 0])
        .stdin("a\n")
        .run();
    // Not "not found": the script is there, as a shell would say too (126).
    assert_eq!(run.code(), 126, "{run}");
    assert!(
        run.stderr
            .contains("its interpreter /no/such/interpreter (from its #! line) was not found"),
        "{run}"
    );
}

#[test]
fn processor_speaking_another_protocol_version_is_126() {
    let run = run(bin!("fx-badversion"), &["-j", "1"], "a\n");
    assert_eq!(run.code(), 126, "{run}");
    assert!(
        run.stderr.contains("999"),
        "the error names the processor's version\n{run}"
    );
}

#[test]
fn missing_processor_is_127() {
    let j = jobsup!();
    let missing = j.dir().join("no-such-processor");
    let run = j
        .args(["-j", "1"])
        .processor(&missing, [] as [&str; 0])
        .stdin("a\n")
        .run();
    assert_eq!(run.code(), 127, "{run}");
    assert!(
        run.stderr.contains("no-such-processor"),
        "the error names it\n{run}"
    );
}
