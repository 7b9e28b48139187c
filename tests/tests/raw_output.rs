//! `--output-format raw`: each job's output bytes on stdout as they are, one job's whole
//! output at a time (never interleaved with another's), in completion order or input order
//! with `--keep-order`; failures on stderr (one line each, `-q` or not) and in the job log;
//! `--results FILE` keeps the JSON records, one per job.

use jobsup_tests::{bin, jobsup, records, Jobsup, Record, Run};

/// `jobsup run --output-format raw --mode exec` with extra flags; each job runs `script`
/// through `sh -c`, with its payload as `$0`.
fn raw_exec(flags: &[&str], script: &str) -> Jobsup {
    jobsup!()
        .args(["--output-format", "raw", "--mode", "exec"])
        .args(flags)
        .processor("sh", ["-c", script, "{}"])
}

/// The JSON records of `--results FILE`.
fn results(run: &Run, name: &str) -> Vec<Record> {
    let path = run.dir().join(name);
    records(&std::fs::read(&path).unwrap_or_else(|e| panic!("no {}: {e}\n{run}", path.display())))
}

/// The lines of stderr that say a job did not succeed.
fn failure_lines(run: &Run) -> Vec<&str> {
    run.stderr
        .lines()
        .filter(|l| l.contains(") failed:") || l.contains(") timeout:"))
        .collect()
}

#[test]
fn exec_output_is_written_exactly_as_the_process_wrote_it() {
    // No newline at the ends: exec output gets none added.
    let run = raw_exec(&["--keep-order", "-j", "2"], r#"printf '<%s>' "$0""#)
        .stdin("a\nb\nc\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.stdout_str(), "<a><b><c>", "{run}");
}

#[test]
fn big_outputs_of_concurrent_jobs_are_never_interleaved() {
    const MIB: usize = 1 << 20;
    let letters = ["a", "b", "c", "d", "e", "f"];
    let run = raw_exec(&["-j", "6"], r#"head -c 1048576 /dev/zero | tr '\0' "$0""#)
        .stdin(letters.join("\n") + "\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.stdout.len(), letters.len() * MIB, "{run}");
    // Each job's mebibyte is one run of its letter: split into runs of equal bytes.
    let mut runs: Vec<(u8, usize)> = Vec::new();
    for &b in &run.stdout {
        match runs.last_mut() {
            Some((letter, n)) if *letter == b => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let mut seen: Vec<String> = runs
        .iter()
        .map(|&(letter, n)| {
            assert_eq!(
                n, MIB,
                "a job's output was cut by another's ({})",
                letter as char
            );
            (letter as char).to_string()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, letters, "each job's output once");
}

#[test]
fn keep_order_writes_outputs_in_input_order() {
    let j = jobsup!().args([
        "--output-format",
        "raw",
        "--mode",
        "exec",
        "--keep-order",
        "-j",
        "3",
    ]);
    let marks = j.dir().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // The first job finishes last: it waits for the third to have left its mark.
    let script = format!(
        r#"[ "$0" = 1 ] && while [ ! -e {m}/3 ]; do sleep 0.01; done; printf '%s\n' "$0"; touch {m}/"$0""#,
        m = marks.display()
    );
    let run = j
        .processor("sh", ["-c", &script, "{}"])
        .stdin("1\n2\n3\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.stdout_str(), "1\n2\n3\n", "{run}");
}

#[test]
fn failures_go_to_stderr_the_joblog_and_the_results_file() {
    // A failed job's output is written too (as GNU parallel does); its failure is one
    // line on stderr even with -q, and its record is in --results and --joblog.
    let run = raw_exec(
        &[
            "-q",
            "--keep-order",
            "--results",
            "res.ndjson",
            "--joblog",
            "jobs.log",
        ],
        r#"case "$0" in bad) printf partial; exit 3;; esac; printf '%s\n' "$0""#,
    )
    .stdin("one\nbad\n\nthree\n")
    .run();
    assert_eq!(run.code(), 1, "a failed job fails the run\n{run}");
    // Exec output is written exactly: "partial" has no newline of its own.
    assert_eq!(run.stdout_str(), "one\npartialthree\n", "{run}");
    let failures = failure_lines(&run);
    assert_eq!(failures.len(), 1, "one line for the failed job\n{run}");
    assert!(failures[0].contains("job 2 (line 2) failed:"), "{run}");
    let recs = results(&run, "res.ndjson");
    let outcomes: Vec<(u64, &str)> = recs.iter().map(|r| (r.seq(), r.outcome())).collect();
    assert_eq!(
        outcomes,
        [(1, "ok"), (2, "failed"), (4, "ok")],
        "one record per job\n{run}"
    );
    assert_eq!(recs[1].output(), Some("partial"), "{}", recs[1]);
    assert_eq!(recs[1].exit_code(), Some(3), "{}", recs[1]);
    let log = std::fs::read_to_string(run.dir().join("jobs.log")).unwrap();
    let rows: Vec<&str> = log.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "a row per job\n{log}");
    assert_eq!(
        rows.iter().filter(|r| r.contains("failed")).count(),
        1,
        "the failure is in the job log\n{log}"
    );
}

#[test]
fn a_timeout_is_said_on_stderr_and_recorded_in_the_results() {
    let run = raw_exec(
        &[
            "--ttl",
            "300ms",
            "--cleanup",
            "2s",
            "--results",
            "res.ndjson",
        ],
        r#"[ "$0" = slow ] && exec sleep 60; printf '%s\n' "$0""#,
    )
    .stdin("fast\nslow\n")
    .run();
    assert_eq!(run.stdout_str(), "fast\n", "{run}");
    let failures = failure_lines(&run);
    assert_eq!(failures.len(), 1, "{run}");
    assert!(failures[0].contains("job 2 (line 2) timeout:"), "{run}");
    let recs = jobsup_tests::by_seq(results(&run, "res.ndjson"));
    assert_eq!(recs.len(), 2, "{run}");
    assert_eq!(recs[&2].outcome(), "timeout", "{}", recs[&2]);
}

#[test]
fn non_utf8_output_bytes_are_passed_through_exactly() {
    let run = raw_exec(&["--results", "res.ndjson"], r"printf '\377\000\200\n'")
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.stdout, b"\xff\x00\x80\n", "{run}");
    // The JSON beside it carries the same bytes, in base64.
    let recs = results(&run, "res.ndjson");
    assert_eq!(recs.len(), 1, "{run}");
    assert_eq!(recs[0].output_base64(), Some("/wCACg=="), "{}", recs[0]);
}

#[test]
fn lines_mode_outputs_get_their_newline_back() {
    // A lines-mode result is the line without its newline: raw ends each with one.
    let run = jobsup!()
        .args(["--output-format", "raw", "--mode", "lines", "--keep-order"])
        .processor(
            "sh",
            ["-c", r#"while read -r l; do printf '%s!\n' "$l"; done"#],
        )
        .stdin("a\nb\nc\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.stdout_str(), "a!\nb!\nc!\n", "{run}");
}

#[test]
fn native_results_are_written_as_they_are() {
    // jobsup-echo returns the payload: nothing is added between results.
    let run = jobsup!()
        .args(["--output-format", "raw", "--keep-order", "-j", "2"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin("ab\ncd\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.stdout_str(), "abcd", "{run}");
}

#[test]
fn results_into_the_output_itself_is_refused() {
    let run = raw_exec(&["--output", "out", "--results", "./out"], "true")
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains("--results"), "{run}");
}

#[test]
fn results_beside_json_output_is_a_second_copy() {
    let run = jobsup!()
        .args(["--mode", "exec", "--results", "res.ndjson", "--keep-order"])
        .processor("sh", ["-c", r#"printf '%s' "$0""#, "{}"])
        .stdin("a\nb\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let on_stdout: Vec<String> = run.records().iter().map(|r| r.to_string()).collect();
    let in_file: Vec<String> = results(&run, "res.ndjson")
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(on_stdout.len(), 2, "{run}");
    assert_eq!(on_stdout, in_file, "{run}");
}
