//! `jobsup run ... | head -1`: when the reader of stdout goes away, jobsup stops reading,
//! cancels the running jobs, says so once and exits 141 (as a process killed by SIGPIPE
//! would), and the job log still gets a row for every job read.

use std::collections::BTreeSet;
use std::io::Read;

use jobsup_tests::{bin, jobsup, lines, unread_pipe};

#[test]
fn a_closed_stdout_stops_the_run_once_with_141_and_the_joblog_complete() {
    // The reader takes one line and goes away.
    let first = closed_after(&[], |got| got.ends_with(b"\n"));
    assert!(first.starts_with("{\"seq\":"), "{first:?}");
}

#[test]
fn a_closed_raw_output_is_said_once_too() {
    // Raw outputs carry no newline here (native results as they are): one byte will do.
    let first = closed_after(&["--output-format", "raw"], |got| !got.is_empty());
    // Job 1's or job 2's output, whichever finished first (job 3 sleeps).
    assert!(matches!(first.as_str(), "1" | "2"), "{first:?}");
}

/// Runs 2,000 jobs into a stdout whose reader stops once `enough` says so; checks what
/// every closed output must give, and returns what the reader got.
fn closed_after(flags: &[&str], enough: fn(&[u8]) -> bool) -> String {
    let (mut read, write) = unread_pipe();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut byte = [0u8];
        while read.read(&mut byte).unwrap_or(0) == 1 {
            got.push(byte[0]);
            if enough(&got) {
                break;
            }
        }
        String::from_utf8(got).unwrap()
    });
    // Line 3 would run for ten minutes, ignoring its cleanup request: only the stop of
    // the run ends it.
    let input = lines(2000, |i| match i {
        3 => "sleep:600000".to_string(),
        _ => format!("ok:{i}"),
    });
    let run = jobsup!()
        .args([
            "-j",
            "2",
            "--cleanup",
            "200ms",
            "--summary",
            "json",
            "--joblog",
            "log",
        ])
        .args(flags)
        .stdout_to(write)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(input)
        .run();
    let first = reader.join().unwrap();
    assert_eq!(run.code(), 141, "{run}");
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("stdout"))
        .collect();
    assert_eq!(said.len(), 1, "exactly one line about stdout\n{run}");
    assert!(said[0].contains("stdout was closed"), "{run}");
    // Every job read has its row, once.
    let log = std::fs::read_to_string(run.dir().join("log")).unwrap();
    let rows: Vec<Vec<&str>> = log
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    let jobs = run.json_summary()["jobs"].as_u64().unwrap();
    assert_eq!(rows.len() as u64, jobs, "{log}\n{run}");
    let ids: BTreeSet<&str> = rows.iter().map(|r| r[11]).collect();
    assert_eq!(ids.len(), rows.len(), "each id once\n{log}");
    assert!(jobs < 2000, "reading stopped\n{run}");
    let third = rows.iter().find(|r| r[11] == "3").expect("line 3's row");
    assert_eq!(
        third[9], "cancelled",
        "the running job was cancelled\n{log}"
    );
    assert_ne!(
        third[6], "0",
        "Exitval of a job that did not succeed\n{log}"
    );
    first
}
