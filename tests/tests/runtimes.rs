//! The Python and Node runtimes against the real jobsup, with real `python3` and `node`
//! processes (`tests/fixtures/runtime_fixture.{py,js}`), and the runtimes' own unit tests
//! (the golden frames). Without the interpreter these tests fail; they never skip.

use std::process::Command;

use jobsup_tests::{interpreter, jobsup, lines, repo_file, Run};

/// One runtime under test: its interpreter and its fixture.
#[derive(Clone, Copy)]
struct Lang {
    program: &'static str,
    fixture: &'static str,
}

const PYTHON: Lang = Lang {
    program: "python3",
    fixture: "tests/fixtures/runtime_fixture.py",
};

const NODE: Lang = Lang {
    program: "node",
    fixture: "tests/fixtures/runtime_fixture.js",
};

fn run(lang: Lang, args: &[&str], input: &str) -> Run {
    jobsup!()
        .args(args)
        .processor(
            interpreter(lang.program),
            [repo_file(lang.fixture).as_os_str()],
        )
        .stdin(input)
        .run()
}

fn results_and_failures(lang: Lang) {
    let input = concat!(
        r#"{"id":"a","payload":"echo:hello"}"#,
        "\n",
        r#"{"id":"b","payload":"fail:the disk is full"}"#,
        "\n",
        r#"{"id":"c","payload":"meta","kind":"send_mail"}"#,
        "\n",
        r#"{"id":"d","payload":"echo:"}"#,
        "\n",
        r#"{"id":"e","payload":"echo:\u00e9t\u00e9"}"#,
        "\n",
    );
    let run = run(lang, &["-j", "1", "--input-format", "ndjson"], input);
    let recs = run.by_seq();
    assert_eq!(recs.len(), 5, "{run}");
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&1].output(), Some("hello"), "{run}");
    assert_eq!(recs[&2].outcome(), "failed", "{run}");
    assert_eq!(
        recs[&2].error(),
        Some("the disk is full"),
        "the exception's message is the error\n{run}"
    );
    // The key, the attempt and the kind arrive as sent; the id is jobsup's hand-off number.
    let meta = recs[&3].output().unwrap_or_default();
    assert!(
        meta.starts_with("id=") && meta.ends_with(" key=c attempt=1 kind=send_mail len=4"),
        "{meta}\n{run}"
    );
    assert_eq!(recs[&4].output(), Some(""), "an empty result is ok\n{run}");
    assert_eq!(recs[&5].output(), Some("\u{e9}t\u{e9}"), "{run}");
    assert_eq!(
        recs.values()
            .filter_map(|r| r.pid())
            .collect::<Vec<_>>()
            .len(),
        5,
        "{run}"
    );
    assert_eq!(
        jobsup_tests::pids(&run.records()).len(),
        1,
        "a failed job does not cost the worker\n{run}"
    );
    assert_eq!(run.code(), 1, "a failed job makes the run exit 1\n{run}");
}

#[test]
fn python_jobs_succeed_and_fail_with_the_exceptions_message() {
    results_and_failures(PYTHON);
}

#[test]
fn node_jobs_succeed_and_fail_with_the_rejections_message() {
    results_and_failures(NODE);
}

/// A job in `payload` past its ttl with a long cleanup window: it must clean up and the
/// worker exit 124, which is `timeout`; `evidence` is what its handler says on stderr.
fn cleanup_is_a_timeout(lang: Lang, payload: &str, evidence: &str) {
    let run = run(
        lang,
        &["-j", "1", "--ttl", "300ms", "--cleanup", "20s"],
        &format!("{payload}\n"),
    );
    let recs = run.records();
    assert_eq!(recs.len(), 1, "{run}");
    assert_eq!(recs[0].outcome(), "timeout", "{run}");
    assert_eq!(recs[0].exit_code(), Some(124), "{run}");
    assert!(
        run.stderr.contains(evidence),
        "the request reached the handler ({evidence:?})\n{run}"
    );
    assert_eq!(run.code(), 124, "{run}");
}

#[test]
fn python_cleanup_request_raises_inside_time_sleep() {
    cleanup_is_a_timeout(PYTHON, "sleep:60000", "cleanup reached job 1 in time.sleep");
}

#[test]
fn python_cleanup_request_raises_inside_a_pure_python_loop() {
    cleanup_is_a_timeout(PYTHON, "loop", "cleanup reached job 1 in a Python loop");
}

#[test]
fn node_cleanup_request_aborts_job_signal() {
    cleanup_is_a_timeout(NODE, "sleep:60000", "cleanup reached job 1 in a timer");
}

fn spin_is_killed(lang: Lang) {
    let run = run(
        lang,
        &["-j", "1", "--ttl", "300ms", "--cleanup", "300ms"],
        "spin\n",
    );
    let recs = run.records();
    assert_eq!(recs.len(), 1, "{run}");
    assert_eq!(recs[0].outcome(), "killed", "{run}");
    assert_eq!(recs[0].signal(), Some(9), "{run}");
    assert_eq!(run.code(), 137, "{run}");
}

#[test]
fn python_job_that_ignores_the_request_is_killed() {
    spin_is_killed(PYTHON);
}

#[test]
fn node_job_that_never_yields_is_killed() {
    spin_is_killed(NODE);
}

fn heartbeats_and_silence(lang: Lang) {
    let input = concat!(
        r#"{"id":"beating","payload":"beat:1500"}"#,
        "\n",
        r#"{"id":"silent","payload":"silent:60000"}"#,
        "\n",
    );
    let run = run(
        lang,
        &[
            "-j",
            "2",
            "--input-format",
            "ndjson",
            "--idle-timeout",
            "500ms",
            "--cleanup",
            "300ms",
        ],
        input,
    );
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    let beating = &recs[&1];
    assert_eq!(
        beating.outcome(),
        "ok",
        "heartbeats keep it alive: {beating}\n{run}"
    );
    assert_eq!(beating.output(), Some("worked 1500 ms"), "{run}");
    let silent = &recs[&2];
    assert!(
        matches!(silent.outcome(), "timeout" | "killed"),
        "silence trips the idle timeout: {silent}\n{run}"
    );
    assert_eq!(silent.deadline(), Some("idle"), "{silent}\n{run}");
}

#[test]
fn python_heartbeats_keep_a_job_alive_and_silence_trips_the_idle_timeout() {
    heartbeats_and_silence(PYTHON);
}

#[test]
fn node_heartbeats_keep_a_job_alive_and_silence_trips_the_idle_timeout() {
    heartbeats_and_silence(NODE);
}

fn a_thousand_jobs(lang: Lang) {
    let run = run(
        lang,
        &["-j", "2"],
        &lines(1000, |i| format!("echo:job {i}")),
    );
    let recs = run.by_seq();
    assert_eq!(recs.len(), 1000, "one record per job\n{}", run.stderr);
    for (seq, rec) in &recs {
        assert_eq!(rec.outcome(), "ok", "{rec}");
        assert_eq!(rec.output(), Some(format!("job {seq}").as_str()), "{rec}");
    }
    let pids = jobsup_tests::pids(&run.records());
    assert!(
        pids.len() <= 2,
        "two workers served every job: {pids:?}\n{}",
        run.stderr
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
}

#[test]
fn python_runtime_serves_a_thousand_jobs_on_two_workers() {
    a_thousand_jobs(PYTHON);
}

#[test]
fn node_runtime_serves_a_thousand_jobs_on_two_workers() {
    a_thousand_jobs(NODE);
}

fn refuses_to_run_alone(lang: Lang) {
    let out = Command::new(interpreter(lang.program))
        .arg(repo_file(lang.fixture))
        .env_clear()
        .output()
        .expect("the interpreter starts");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("JOBSUP_PROTOCOL is not set") && stderr.contains("jobsup run --"),
        "says why and how to run it: {stderr}"
    );
}

#[test]
fn python_processor_run_alone_says_how_to_run_it() {
    refuses_to_run_alone(PYTHON);
}

#[test]
fn node_processor_run_alone_says_how_to_run_it() {
    refuses_to_run_alone(NODE);
}

/// Runs a runtime's own test suite (the golden frames among them) in its directory.
fn unit_tests(program: &str, dir: &str, args: &[&str]) {
    let out = Command::new(interpreter(program))
        .args(args)
        .current_dir(repo_file(dir))
        .env_clear()
        .env("PATH", jobsup_tests::PATH)
        .output()
        .expect("the interpreter starts");
    assert!(
        out.status.success(),
        "{program} {args:?} in {dir} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_runtime_unit_tests_pass() {
    unit_tests(
        "python3",
        "runtimes/python",
        &["-B", "-m", "unittest", "discover", "-s", "tests"],
    );
}

#[test]
fn node_runtime_unit_tests_pass() {
    unit_tests("node", "runtimes/node", &["--test", "test/"]);
}

/// A Python processor whose runtime claims the version range `min..=max`.
fn python_speaking(min: u32, max: u32) -> Vec<std::ffi::OsString> {
    let code = format!(
        "import sys\nsys.path.insert(0, {runtime:?})\nimport jobsup_runtime as jr\n\
         jr.MIN_VERSION, jr.MAX_VERSION = {min}, {max}\njr.serve(lambda job: job.payload)\n",
        runtime = repo_file("runtimes/python").display().to_string(),
    );
    vec!["-c".into(), code.into()]
}

#[test]
fn a_processor_speaking_a_wider_version_range_is_served_at_the_shared_version() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(interpreter("python3"), python_speaking(1, 7))
        .stdin("hi\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records()[0].output(), Some("hi"), "{run}");
}

#[test]
fn a_processor_whose_versions_jobsup_does_not_speak_is_refused_naming_them() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(interpreter("python3"), python_speaking(900, 999))
        .stdin("hi\n")
        .run();
    assert_eq!(run.code(), 126, "{run}");
    assert!(
        run.stderr.contains("900"),
        "names the processor's versions\n{run}"
    );
}
