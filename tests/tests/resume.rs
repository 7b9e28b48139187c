//! `--resume` and `--resume-failed` with `--joblog`, and what the job log says of each job:
//! a resumed run runs only what is missing (or failed), appends to the same log, and the
//! log's `Exitval` and `Command` columns are parallel's.

use std::collections::BTreeMap;
use std::path::Path;

use jobsup_tests::{bin, jobsup, wait_until, Run, WAIT};
use nix::sys::signal::Signal;

/// The job log's rows (without the header), as column name → cell.
fn rows(log: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(log).expect("the job log");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split('\t').collect();
    assert!(
        lines.clone().all(|l| !l.starts_with("Seq\t")),
        "one header\n{text}"
    );
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split('\t'))
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect()
        })
        .collect()
}

/// The ids of `rows` with outcome `outcome`, in order.
fn ids_with(rows: &[BTreeMap<String, String>], outcome: &str) -> Vec<String> {
    rows.iter()
        .filter(|r| r["Outcome"] == outcome)
        .map(|r| r["Id"].clone())
        .collect()
}

/// The only row of the job log in `run`'s directory.
fn only_row(run: &Run) -> BTreeMap<String, String> {
    let mut rows = rows(&run.dir().join("log"));
    assert_eq!(rows.len(), 1, "{run}");
    rows.remove(0)
}

fn ids(run: &Run) -> Vec<String> {
    run.by_seq().values().map(|r| r.id().to_string()).collect()
}

#[test]
fn resume_after_a_halted_run_runs_only_the_missing_ids() {
    let input = "ok\nok\nfail\nok\nok\n";
    let first = jobsup!()
        .args(["-j", "1", "--halt", "soon,fail=1", "--joblog", "log"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(input)
        .run();
    assert_eq!(first.code(), 1, "{first}");
    let log = first.dir().join("log");
    assert_eq!(ids_with(&rows(&log), "cancelled"), ["4", "5"], "{first}");
    // The same input, the same log (no +: resuming appends).
    let second = jobsup!()
        .args(["-j", "1", "--resume", "--joblog"])
        .arg(&log)
        .args(["--summary", "json"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(input)
        .run();
    assert_eq!(second.code(), 0, "{second}");
    // Failed is done for --resume; the cancelled ones had not run.
    assert_eq!(ids(&second), ["4", "5"], "{second}");
    assert_eq!(second.json_summary()["skipped"], 3, "{second}");
    let rows = rows(&log);
    let mut finished: Vec<String> = rows
        .iter()
        .filter(|r| r["Outcome"] != "cancelled")
        .map(|r| r["Id"].clone())
        .collect();
    finished.sort();
    assert_eq!(finished, ["1", "2", "3", "4", "5"], "each id finished once");
    // Both runs' results concatenated: one finished record per job.
    let mut all: Vec<String> = first
        .records()
        .iter()
        .chain(second.records().iter())
        .filter(|r| r.outcome() != "cancelled")
        .map(|r| r.id().to_string())
        .collect();
    all.sort();
    assert_eq!(all, finished);
}

#[test]
fn resume_after_an_interrupted_run_skips_what_it_finished() {
    let log = tempfile::tempdir().unwrap();
    let log = log.path().join("log");
    // The first run has read three lines when SIGTERM interrupts it.
    let first = jobsup!()
        .args(["-j", "2", "--joblog"])
        .arg(&log)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok\nok\nok\n")
        .keep_stdin_open()
        .spawn();
    wait_until(WAIT, "three records", || first.records_so_far().len() == 3);
    first.signal(Signal::SIGTERM);
    let first = first.wait();
    assert_eq!(first.code(), 143, "{first}");
    let second = jobsup!()
        .args(["-j", "2", "--resume", "--joblog"])
        .arg(&log)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok\nok\nok\nok\nok\n")
        .run();
    assert_eq!(second.code(), 0, "{second}");
    assert_eq!(ids(&second), ["4", "5"], "{second}");
    assert!(
        second.stderr.contains("3 job(s) skipped"),
        "one info line says how many\n{second}"
    );
    let mut logged = ids_with(&rows(&log), "ok");
    logged.sort();
    assert_eq!(logged, ["1", "2", "3", "4", "5"]);
}

/// An exec job that succeeds when the file named by its payload exists in `dir`, and
/// otherwise exits 3.
fn exists_job(dir: &Path) -> [String; 4] {
    [
        "-c".into(),
        "[ -e \"$1\" ] || exit 3".into(),
        "sh".into(),
        format!("{}/{{}}", dir.display()),
    ]
}

#[test]
fn resume_failed_reruns_the_failed_ones_with_the_substituted_command_logged() {
    let first = jobsup!()
        .args(["-j", "2", "--mode", "exec", "--joblog", "log"])
        .processor("/bin/sh", [] as [&str; 0]);
    let marks = first.dir().join("marks");
    std::fs::create_dir(&marks).unwrap();
    for name in ["a", "c"] {
        std::fs::write(marks.join(name), "").unwrap();
    }
    let first = first.args(exists_job(&marks)).stdin("a\nb\nc\n").run();
    assert_eq!(first.code(), 1, "{first}");
    let log = first.dir().join("log");
    let before = rows(&log);
    let b = before.iter().find(|r| r["Id"] == "2").expect("b's row");
    assert_eq!(b["Outcome"], "failed");
    assert_eq!(b["Exitval"], "3", "the job's own exit code");
    assert_eq!(
        b["Command"],
        format!(
            "/bin/sh -c [ -e \"$1\" ] || exit 3 sh {}/b",
            marks.display()
        ),
        "the command as run, {{}} substituted"
    );
    std::fs::write(marks.join("b"), "").unwrap();
    let second = jobsup!()
        .args(["-j", "2", "--mode", "exec", "--resume-failed", "--joblog"])
        .arg(&log)
        .processor("/bin/sh", [] as [&str; 0])
        .args(exists_job(&marks))
        .stdin("a\nb\nc\n")
        .run();
    assert_eq!(second.code(), 0, "{second}");
    assert_eq!(
        ids(&second),
        ["2"],
        "only the failed one runs again\n{second}"
    );
    let after = rows(&log);
    assert_eq!(after.len(), 4, "appended, not truncated");
    assert_eq!(after[3]["Id"], "2");
    assert_eq!(
        (after[3]["Outcome"].as_str(), after[3]["Exitval"].as_str()),
        ("ok", "0")
    );
}

#[test]
fn exitval_is_non_zero_for_failures_in_every_mode() {
    // Native: the processor says it failed, and goes on (no exit code of its own).
    let native = jobsup!()
        .args(["--joblog", "log"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("fail\n")
        .run();
    assert_eq!(native.code(), 1, "{native}");
    let row = only_row(&native);
    assert_eq!(
        (row["Outcome"].as_str(), row["Exitval"].as_str()),
        ("failed", "1")
    );
    // Lines: the processor exits 5 in the middle of the job.
    let lines = jobsup!()
        .args(["--mode", "lines", "--joblog", "log"])
        .processor("/bin/sh", ["-c", "read line; exit 5"])
        .stdin("x\n")
        .run();
    assert_eq!(lines.code(), 1, "{lines}");
    let row = only_row(&lines);
    assert_eq!(
        (row["Outcome"].as_str(), row["Exitval"].as_str()),
        ("crashed", "5")
    );
    // A timeout is 124 whatever the process exited with.
    let timeout = jobsup!()
        .args(["--ttl", "100ms", "--cleanup", "5s", "--joblog", "log"])
        .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
        .stdin("60000\n")
        .run();
    assert_eq!(timeout.code(), 124, "{timeout}");
    let row = only_row(&timeout);
    assert_eq!(
        (row["Outcome"].as_str(), row["Exitval"].as_str()),
        ("timeout", "124")
    );
}

#[test]
fn resume_needs_a_joblog_of_jobsups() {
    let without = jobsup!()
        .arg("--resume")
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok\n")
        .run();
    assert_eq!(without.code(), 125, "{without}");
    assert!(without.stderr.contains("--joblog"), "{without}");
    assert!(without.records().is_empty(), "{without}");
    let foreign = jobsup!()
        .args(["--resume-failed", "--joblog", "parallel.log"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok\n");
    let parallels = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n1\t:\t1.0\t0.1\t0\t0\t0\t0\techo\n";
    let log = foreign.write_file("parallel.log", parallels);
    let foreign = foreign.run();
    assert_eq!(foreign.code(), 125, "{foreign}");
    assert!(
        foreign.stderr.contains("not a job log written by jobsup"),
        "{foreign}"
    );
    assert!(foreign.records().is_empty(), "{foreign}");
    assert_eq!(
        std::fs::read_to_string(log).unwrap(),
        parallels,
        "left as it was"
    );
}
