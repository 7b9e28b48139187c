//! `stderr_tail`: a `failed`, `crashed`, `timeout` or `killed` record carries the end of
//! what its worker wrote on stderr during that job (bounded at 2 KiB), in every mode, with
//! `-q` too; an `ok` record does not; a reused worker's jobs each get only their own lines.

use jobsup_tests::{bin, interpreter, jobsup, repo_file, Record, Run};

/// The most of a job's stderr a record keeps.
const BOUND: usize = 2048;

fn tail(r: &Record) -> Option<&str> {
    r.0.get("stderr_tail").map(|v| {
        v.as_str()
            .unwrap_or_else(|| panic!("stderr_tail is not a string in {r}"))
    })
}

/// The record of the job whose id is `id`.
fn by_id<'a>(run: &'a Run, records: &'a [Record], id: &str) -> &'a Record {
    records
        .iter()
        .find(|r| r.id() == id)
        .unwrap_or_else(|| panic!("no record for {id}\n{run}"))
}

#[test]
fn exec_failed_and_crashed_records_carry_their_stderr_also_with_q_and_ok_ones_do_not() {
    let script = r#"case "$1" in
        ok) echo "all fine" >&2; echo done ;;
        fail) echo "first line" >&2; echo "cannot open $1.txt" >&2; exit 1 ;;
        crash) printf 'about to crash, no newline' >&2; kill -SEGV $$ ;;
    esac"#;
    for quiet in [true, false] {
        let mut j = jobsup!();
        if quiet {
            j = j.arg("-q");
        }
        let run = j
            .args(["--mode", "exec", "-j", "2", "--input-format", "ndjson"])
            .processor("sh", ["-c", script, "sh", "{}"])
            .stdin(concat!(
                r#"{"id":"ok","payload":"ok"}"#,
                "\n",
                r#"{"id":"fail","payload":"fail"}"#,
                "\n",
                r#"{"id":"crash","payload":"crash"}"#,
                "\n",
            ))
            .run();
        let records = run.records();
        assert_eq!(records.len(), 3, "{run}");
        let ok = by_id(&run, &records, "ok");
        assert_eq!(ok.outcome(), "ok", "{run}");
        assert_eq!(tail(ok), None, "an ok record has no stderr_tail\n{run}");
        let fail = by_id(&run, &records, "fail");
        assert_eq!(fail.outcome(), "failed", "{run}");
        assert_eq!(
            tail(fail),
            Some("first line\ncannot open fail.txt"),
            "{run}"
        );
        let crash = by_id(&run, &records, "crash");
        assert_eq!(crash.outcome(), "crashed", "{run}");
        // The last line is kept even without its newline, read to the end of the pipe.
        assert_eq!(tail(crash), Some("about to crash, no newline"), "{run}");
        // The lines still go to the log (which -q silences).
        assert_eq!(
            run.stderr.contains("cannot open fail.txt"),
            !quiet,
            "quiet: {quiet}\n{run}"
        );
    }
}

#[test]
fn lines_mode_crashed_timeout_and_killed_records_carry_only_that_jobs_stderr() {
    // One worker at a time; each job that ends its worker gets a fresh one.
    let script = r#"trap 'echo "cleaning up $job" >&2; exit 0' TERM
        while read job; do
            echo "got $job" >&2
            case $job in
                hang) sleep 60 & wait $! ;;
                stubborn) trap '' TERM; echo "ignoring TERM" >&2; sleep 60 ;;
                crash) echo "dying on $job" >&2; exit 3 ;;
                *) echo "$job" ;;
            esac
        done"#;
    let run = jobsup!()
        .args([
            "-q",
            "--mode",
            "lines",
            "-j",
            "1",
            "--ttl",
            "2s",
            "--cleanup",
            "2s",
        ])
        .processor("sh", ["-c", script])
        .stdin("first\nhang\nagain\nstubborn\ncrash\n")
        .run();
    let r = run.by_seq();
    assert_eq!(r.len(), 5, "{run}");
    assert_eq!(r[&1].outcome(), "ok", "{run}");
    assert_eq!(tail(&r[&1]), None, "{run}");
    assert_eq!(r[&2].outcome(), "timeout", "{run}");
    // (sh may say between them that its sleep was terminated.)
    let t = tail(&r[&2]).unwrap_or_default();
    assert!(
        t.starts_with("got hang\n") && t.ends_with("\ncleaning up hang"),
        "{t}\n{run}"
    );
    assert_eq!(r[&3].outcome(), "ok", "{run}");
    assert_eq!(r[&4].outcome(), "killed", "{run}");
    assert_eq!(tail(&r[&4]), Some("got stubborn\nignoring TERM"), "{run}");
    assert_eq!(r[&5].outcome(), "crashed", "{run}");
    assert_eq!(tail(&r[&5]), Some("got crash\ndying on crash"), "{run}");
}

#[test]
fn a_reused_native_worker_gives_each_failed_job_only_its_own_lines() {
    let run = jobsup!()
        .args(["-q", "-j", "1"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("log:before\npanic:first-problem\nlog:between\npanic:second-problem\nok\n")
        .run();
    let r = run.by_seq();
    assert_eq!(r.len(), 5, "{run}");
    // The same process ran both failing jobs.
    assert_eq!(r[&2].pid(), r[&4].pid(), "{run}");
    for (seq, mine, theirs) in [
        (2, "first-problem", "second-problem"),
        (4, "second-problem", "first-problem"),
    ] {
        assert_eq!(r[&seq].outcome(), "failed", "{run}");
        let t = tail(&r[&seq]).unwrap_or_else(|| panic!("job {seq} has no stderr_tail\n{run}"));
        assert!(t.contains(mine), "job {seq}: {t}\n{run}");
        assert!(!t.contains(theirs), "job {seq}: {t}\n{run}");
        assert!(
            !t.contains("(stderr)"),
            "another job's line in {seq}: {t}\n{run}"
        );
    }
    for seq in [1, 3, 5] {
        assert_eq!(r[&seq].outcome(), "ok", "{run}");
        assert_eq!(tail(&r[&seq]), None, "{run}");
    }
}

#[test]
fn native_timeout_and_killed_records_carry_what_the_cleanup_said() {
    let run = jobsup!()
        .args(["-q", "-j", "2", "--ttl", "2s", "--cleanup", "2s"])
        .processor(
            interpreter("python3"),
            [repo_file("tests/fixtures/runtime_fixture.py").as_os_str()],
        )
        .stdin("sleep:60000\nspin\n")
        .run();
    let r = run.by_seq();
    assert_eq!(r.len(), 2, "{run}");
    assert_eq!(r[&1].outcome(), "timeout", "{run}");
    let t = tail(&r[&1]).unwrap_or_default();
    assert!(t.contains("in time.sleep"), "{t}\n{run}");
    assert_eq!(r[&2].outcome(), "killed", "{run}");
    let t = tail(&r[&2]).unwrap_or_default();
    assert!(t.contains("ignores the cleanup request"), "{t}\n{run}");
}

#[test]
fn a_flood_of_stderr_is_cut_to_its_last_two_kib_from_a_line_start() {
    let script = r#"i=0
        while [ $i -lt 5000 ]; do echo "noise line $i" >&2; i=$((i+1)); done
        echo "the real reason" >&2
        exit 2"#;
    let run = jobsup!()
        .args(["-q", "--mode", "exec"])
        .processor("sh", ["-c", script])
        .stdin("x\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    assert_eq!(records[0].outcome(), "failed", "{run}");
    let t = tail(&records[0]).unwrap_or_else(|| panic!("no stderr_tail\n{run}"));
    assert!(t.len() <= BOUND, "{} bytes\n{run}", t.len());
    // Close to the bound: it keeps as much as fits, not a few lines.
    assert!(t.len() > BOUND - 100, "{} bytes\n{run}", t.len());
    assert!(t.ends_with("noise line 4999\nthe real reason"), "{t}");
    assert!(t.starts_with("noise line "), "not from a line's start: {t}");
}
