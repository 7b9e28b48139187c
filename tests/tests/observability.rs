//! Seeing what a run did: the job log (`--joblog`), job kinds, the end-of-run summary (text,
//! JSON or none), `jobsup report`, `--slow` warnings, `--log-format json` and the progress
//! bar on a terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use jobsup_tests::{bin, jobsup, lines, wait_until, Jobsup, Record, Run, WAIT};
use serde_json::Value;

/// The job log's header row, column by column.
const JOBLOG_COLUMNS: [&str; 13] = [
    "Seq",
    "Host",
    "Starttime",
    "JobRuntime",
    "Send",
    "Receive",
    "Exitval",
    "Signal",
    "Command",
    "Outcome",
    "Attempts",
    "Id",
    "Kind",
];

/// The seven outcomes, as the summary names them.
const OUTCOMES: [&str; 7] = [
    "ok",
    "failed",
    "timeout",
    "killed",
    "crashed",
    "rejected",
    "cancelled",
];

/// The kind under which the summary counts jobs that have none.
const NO_KIND: &str = "(none)";

/// One job of a mixed ndjson input: its id, kind and payload.
struct Job {
    id: &'static str,
    kind: Option<&'static str>,
    payload: &'static str,
}

/// A mix of every outcome a quick run can produce, with and without kinds, plus two lines
/// that are rejected (they come last in [`mixed_input`]).
const MIXED: [Job; 8] = [
    Job {
        id: "mail-1",
        kind: Some("send_mail"),
        payload: "ok:héllo",
    },
    Job {
        id: "mail-2",
        kind: Some("send_mail"),
        payload: "fail:x",
    },
    Job {
        id: "csv-1",
        kind: Some("export_csv"),
        payload: "sleep:50",
    },
    Job {
        id: "csv-2",
        kind: Some("export_csv"),
        payload: "ok",
    },
    Job {
        id: "thumb-1",
        kind: Some("resize"),
        payload: "exit:3",
    },
    Job {
        id: "thumb-2",
        kind: Some("resize"),
        payload: "abort",
    },
    Job {
        id: "plain",
        kind: None,
        payload: "ok:plain",
    },
    Job {
        id: "plain-fail",
        kind: None,
        payload: "fail",
    },
];

/// The rejected lines appended to [`MIXED`]: not JSON, and a bad duration.
const REJECTED_LINES: [&str; 2] = [
    "this is not json",
    r#"{"id":"bad-ttl","payload":"ok","ttl":"banana"}"#,
];

/// [`MIXED`] as ndjson, then [`REJECTED_LINES`].
fn mixed_input() -> String {
    let mut s = String::new();
    for job in &MIXED {
        let mut obj = serde_json::json!({"id": job.id, "payload": job.payload});
        if let Some(kind) = job.kind {
            obj["kind"] = kind.into();
        }
        s.push_str(&obj.to_string());
        s.push('\n');
    }
    for line in REJECTED_LINES {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// Runs [`mixed_input`] through flaky on two workers, with extra flags.
fn run_mixed(flags: &[&str]) -> Run {
    jobsup!()
        .args(["-j", "2", "--input-format", "ndjson"])
        .args(flags)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(mixed_input())
        .run()
}

/// The exit code of a mixed run: something failed, crashed or was rejected.
const MIXED_EXIT: i32 = 1;

/// A job log split into its header and its rows (each a column → cell map); fails the test
/// if the header is not the documented one or a row has the wrong number of cells.
fn read_joblog(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the job log {}: {e}", path.display()));
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert_eq!(
        header,
        JOBLOG_COLUMNS.join("\t"),
        "the job log's header\n{text}"
    );
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split('\t').collect();
            assert_eq!(
                cells.len(),
                JOBLOG_COLUMNS.len(),
                "a row with the wrong number of cells: {line:?}\n{text}"
            );
            JOBLOG_COLUMNS
                .iter()
                .zip(cells)
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// The kind a record is counted under in summaries.
fn kind_of(r: &Record) -> String {
    r.0.get("kind")
        .map(|k| k.as_str().expect("kind is a string").to_string())
        .unwrap_or_else(|| NO_KIND.to_string())
}

/// Outcome counts of some records, with every outcome present (zeros included).
fn outcome_counts<'a>(records: impl IntoIterator<Item = &'a Record>) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = OUTCOMES.iter().map(|o| (o.to_string(), 0)).collect();
    for r in records {
        *counts
            .get_mut(r.outcome())
            .unwrap_or_else(|| panic!("unknown outcome in {r}")) += 1;
    }
    counts
}

/// A summary's `outcomes` object as counts; fails the test unless it has exactly the seven
/// outcomes as keys.
fn summary_counts(outcomes: &Value) -> BTreeMap<String, u64> {
    let obj = outcomes
        .as_object()
        .unwrap_or_else(|| panic!("outcomes is not an object: {outcomes}"));
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, OUTCOMES.into_iter().collect(), "{outcomes}");
    obj.iter()
        .map(|(k, v)| {
            let n = v
                .as_u64()
                .unwrap_or_else(|| panic!("count of {k} is not a number: {outcomes}"));
            (k.clone(), n)
        })
        .collect()
}

/// A fresh `jobsup report` command.
fn report() -> Jobsup {
    Jobsup::new(bin!("jobsup-shim")).arg("report")
}

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

#[test]
fn joblog_has_one_row_per_record_matching_it() {
    let run = run_mixed(&["--joblog", "jobs.tsv"]);
    assert_eq!(run.code(), MIXED_EXIT, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), MIXED.len() + REJECTED_LINES.len(), "{run}");
    let rows = read_joblog(&run.dir().join("jobs.tsv"));
    assert_eq!(
        rows.len(),
        recs.len(),
        "one row per record\n{rows:#?}\n{run}"
    );

    let mut seen = BTreeSet::new();
    for row in &rows {
        let seq: u64 = row["Seq"].parse().expect("Seq is a number");
        assert!(seen.insert(seq), "two rows for seq {seq}: {rows:#?}");
        let r = recs
            .get(&seq)
            .unwrap_or_else(|| panic!("a row for seq {seq} without a record: {row:?}\n{run}"));
        let ctx = format!("row {row:?}\nrecord {r}");
        assert_eq!(row["Host"], ":", "{ctx}");
        assert_eq!(row["Command"], bin!("jobsup-flaky"), "{ctx}");
        assert_eq!(row["Outcome"], r.outcome(), "{ctx}");
        assert_eq!(row["Id"], r.id(), "{ctx}");
        assert_eq!(row["Kind"], r.0["kind"].as_str().unwrap_or(""), "{ctx}");
        assert_eq!(
            row["Attempts"],
            r.attempts().expect("attempts").to_string(),
            "{ctx}"
        );
        let duration = r.duration_ms().expect("every record has a duration");
        assert_eq!(
            row["JobRuntime"],
            format!("{:.3}", duration / 1000.0),
            "JobRuntime is the record's duration in seconds\n{ctx}"
        );
        // Non-zero for every job that did not succeed (README, the job log).
        let exitval = match (r.outcome(), r.exit_code(), r.signal()) {
            ("ok", code, _) => code.unwrap_or(0),
            ("timeout", _, _) => 124,
            ("killed", _, _) => 137,
            (_, Some(code), _) if code != 0 => code,
            (_, _, Some(sig)) => 128 + sig,
            _ => 1,
        };
        assert_eq!(row["Exitval"], exitval.to_string(), "{ctx}");
        assert_eq!(row["Signal"], r.signal().unwrap_or(0).to_string(), "{ctx}");
        let received = r.output().map_or(0, str::len);
        assert_eq!(row["Receive"], received.to_string(), "{ctx}");

        match MIXED.get(seq as usize - 1) {
            Some(job) => {
                // A job that ran: what was sent is its payload, in bytes (not characters).
                assert_eq!(row["Send"], job.payload.len().to_string(), "{ctx}");
                let start: f64 = row["Starttime"].parse().expect("Starttime is a number");
                assert!(start > 0.0, "a job that ran has a start time\n{ctx}");
            }
            None => {
                // A rejected line never ran: nothing sent, no start time, no attempt.
                assert_eq!(r.outcome(), "rejected", "{ctx}");
                assert_eq!(row["Send"], "0", "{ctx}");
                assert_eq!(row["Starttime"], "0", "{ctx}");
                assert_eq!(row["Attempts"], "0", "{ctx}");
            }
        }
    }

    // The mix covers what the columns are about: an exit code, a signal, a multi-byte
    // payload, a failure, a rejection.
    let by_id = |id: &str| {
        recs.values()
            .find(|r| r.id() == id)
            .unwrap_or_else(|| panic!("no record for {id}\n{run}"))
            .clone()
    };
    assert_eq!(by_id("thumb-1").outcome(), "crashed", "{run}");
    assert_eq!(by_id("thumb-1").exit_code(), Some(3), "{run}");
    assert_eq!(by_id("thumb-2").signal(), Some(6), "{run}");
    assert_eq!(by_id("mail-1").output(), Some("héllo"), "{run}");
    assert_eq!(by_id("mail-2").outcome(), "failed", "{run}");
    assert_eq!(by_id("bad-ttl").outcome(), "rejected", "{run}");
    assert_eq!(
        recs[&(MIXED.len() as u64 + 1)].outcome(),
        "rejected",
        "{run}"
    );
}

#[test]
fn joblog_rows_of_cancelled_jobs_are_written_too() {
    // One worker: the long job runs, the two after it wait and are cancelled by SIGTERM.
    let bg = jobsup!()
        .args(["-j", "1", "--slow", "100ms", "--joblog", "jobs.tsv"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("sleep:1000\nok\nok\n")
        .spawn();
    // The slow-job warning says the first job is running (and the two behind it, read
    // ahead, are waiting).
    wait_until(WAIT, "the first job is reported slow", || {
        bg.stderr_so_far().contains("slow job")
    });
    bg.signal(nix::sys::signal::Signal::SIGTERM);
    let run = bg.wait();
    assert_eq!(run.code(), 143, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "{run}");
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    let rows = read_joblog(&run.dir().join("jobs.tsv"));
    assert_eq!(rows.len(), 3, "{rows:#?}\n{run}");
    for seq in [2, 3] {
        assert_eq!(recs[&seq].outcome(), "cancelled", "{run}");
        let row = rows
            .iter()
            .find(|row| row["Seq"] == seq.to_string())
            .unwrap_or_else(|| panic!("no row for cancelled job {seq}: {rows:#?}"));
        assert_eq!(row["Outcome"], "cancelled", "{row:?}");
        assert_eq!(row["Attempts"], "0", "{row:?}");
        assert_eq!(row["JobRuntime"], "0.000", "{row:?}");
        assert_eq!(row["Starttime"], "0", "never started: {row:?}");
    }
}

#[test]
fn joblog_plus_file_appends_without_a_second_header_and_file_truncates() {
    let first = jobsup!()
        .args(["-j", "1", "--joblog", "+jobs.tsv"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok:a\nok:b\n")
        .run();
    assert_eq!(first.code(), 0, "{first}");
    let log = first.dir().join("jobs.tsv");
    // Appending to a file that does not exist yet creates it with its header.
    assert_eq!(read_joblog(&log).len(), 2, "{first}");

    let append = format!("+{}", log.display());
    let second = jobsup!()
        .args(["-j", "1", "--joblog", append.as_str()])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok:c\nfail:d\nok:e\n")
        .run();
    assert_eq!(second.code(), 1, "{second}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("Seq\t")).count(),
        1,
        "one header after appending\n{text}"
    );
    let rows = read_joblog(&log);
    let mut seqs: Vec<&str> = rows.iter().map(|r| r["Seq"].as_str()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, ["1", "1", "2", "2", "3"], "{text}");
    assert_eq!(
        rows.iter().filter(|r| r["Outcome"] == "failed").count(),
        1,
        "{text}"
    );

    // Without the +, the log starts over.
    let third = jobsup!()
        .args(["-j", "1", "--joblog"])
        .arg(&log)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok:f\n")
        .run();
    assert_eq!(third.code(), 0, "{third}");
    let rows = read_joblog(&log);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["Receive"], "1", "the new run's row: {rows:#?}");
}

#[test]
fn kind_from_ndjson_is_carried_into_the_record() {
    let run = jobsup!()
        .args(["-j", "1", "--input-format", "ndjson"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(concat!(
            r#"{"id":"m1","kind":"send_mail","payload":"ok"}"#,
            "\n",
            r#"{"id":"m2","payload":"ok"}"#,
            "\n",
            r#"{"id":"m3","kind":7,"payload":"ok"}"#,
            "\n",
            r#"{"id":"m4","kind":"","payload":"ok"}"#,
            "\n",
        ))
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 4, "{run}");
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&1].0["kind"], "send_mail", "{run}");
    assert!(!recs[&2].has("kind"), "no kind, no field: {}", recs[&2]);
    for seq in [3, 4] {
        let r = &recs[&seq];
        assert_eq!(
            r.outcome(),
            "rejected",
            "a kind must be a non-empty string: {r}"
        );
        assert!(r.error().is_some_and(|e| e.contains("kind")), "{r}");
    }
}

#[test]
fn json_summary_counts_add_up_overall_and_per_kind() {
    let run = run_mixed(&["--summary", "json"]);
    assert_eq!(run.code(), MIXED_EXIT, "{run}");
    let recs = run.records();
    assert_eq!(recs.len(), MIXED.len() + REJECTED_LINES.len(), "{run}");
    let s = run.json_summary();

    assert_eq!(s["jobs"].as_u64(), Some(recs.len() as u64), "{s}");
    let counts = summary_counts(&s["outcomes"]);
    assert_eq!(counts.values().sum::<u64>(), recs.len() as u64, "{s}");
    assert_eq!(counts, outcome_counts(&recs), "{s}\n{run}");
    for key in ["elapsed_s", "jobs_per_s", "total_ms"] {
        assert!(number(&s[key], key) >= 0.0, "{s}");
    }
    // CPU time: the supervisor's own, and that of the processes it ran and reaped; both
    // ran, so neither can be zero.
    for key in ["supervisor", "processes"] {
        assert!(number(&s["cpu_s"][key], key) > 0.0, "{s}");
    }
    let p: Vec<f64> = ["p50_ms", "p95_ms", "p99_ms", "max_ms"]
        .iter()
        .map(|k| number(&s[k], k))
        .collect();
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "percentiles: {p:?}");

    // The slowest jobs are real jobs, slowest first, led by the slowest record.
    let slowest = s["slowest"].as_array().expect("slowest is an array");
    assert!(!slowest.is_empty() && slowest.len() <= 5, "{s}");
    let by_seq = run.by_seq();
    for entry in slowest {
        let seq = entry["seq"].as_u64().expect("seq");
        let r = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("{entry}: no such job"));
        assert_eq!(entry["id"].as_str(), Some(r.id()), "{entry} vs {r}");
        assert!(
            r.attempts() > Some(0),
            "a job that never ran is not slow: {r}"
        );
    }
    let ms: Vec<f64> = slowest
        .iter()
        .map(|e| number(&e["duration_ms"], "duration_ms"))
        .collect();
    assert!(ms.windows(2).all(|w| w[0] >= w[1]), "slowest first: {ms:?}");
    let longest = recs
        .iter()
        .max_by(|a, b| a.duration_ms().partial_cmp(&b.duration_ms()).unwrap())
        .unwrap();
    assert_eq!(
        slowest[0]["seq"].as_u64(),
        Some(longest.seq()),
        "{s}\n{run}"
    );

    // Per kind: every record's kind once, the jobs add up, the outcomes match the records.
    let kinds = s["kinds"].as_array().expect("kinds is an array");
    let names: Vec<&str> = kinds
        .iter()
        .map(|k| k["kind"].as_str().expect("kind name"))
        .collect();
    let expected: BTreeSet<String> = recs.iter().map(kind_of).collect();
    assert_eq!(
        names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>(),
        expected,
        "{s}"
    );
    assert_eq!(names.len(), expected.len(), "each kind once: {names:?}");
    let jobs: u64 = kinds
        .iter()
        .map(|k| k["jobs"].as_u64().expect("jobs"))
        .sum();
    assert_eq!(jobs, recs.len() as u64, "{s}");
    for k in kinds {
        let name = k["kind"].as_str().unwrap();
        let mine: Vec<&Record> = recs.iter().filter(|r| kind_of(r) == name).collect();
        assert_eq!(k["jobs"].as_u64(), Some(mine.len() as u64), "{k}");
        assert_eq!(
            summary_counts(&k["outcomes"]),
            outcome_counts(mine.iter().copied()),
            "kind {name}: {k}\n{run}"
        );
    }
    // Most total time first.
    let totals: Vec<f64> = kinds
        .iter()
        .map(|k| number(&k["total_ms"], "total_ms"))
        .collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "{totals:?}\n{s}");
    // Rejected lines never became jobs of a kind.
    let none = kinds.iter().find(|k| k["kind"] == NO_KIND).expect("(none)");
    assert_eq!(
        none["outcomes"]["rejected"].as_u64(),
        Some(REJECTED_LINES.len() as u64),
        "{none}"
    );
}

#[test]
fn text_summary_names_every_kind_and_none_prints_no_summary() {
    let run = run_mixed(&[]);
    assert_eq!(run.code(), MIXED_EXIT, "{run}");
    assert!(run.stderr.contains("jobs in"), "{run}");
    assert!(run.stderr.contains("outcomes:"), "{run}");
    assert!(run.stderr.contains("  cpu: jobsup "), "{run}");
    for kind in ["send_mail", "export_csv", "resize", NO_KIND] {
        assert!(
            run.stderr.contains(kind),
            "the summary names kind {kind}\n{run}"
        );
    }
    // The kind table comes last, after the overall lines.
    let table = run.stderr.find("by kind").expect("a table by kind");
    assert!(run.stderr.find("outcomes:").unwrap() < table, "{run}");
    assert!(run.stderr.find("  cpu: ").unwrap() < table, "{run}");

    let quiet = run_mixed(&["--summary", "none"]);
    assert_eq!(quiet.code(), MIXED_EXIT, "{quiet}");
    assert_eq!(quiet.records().len(), run.records().len(), "{quiet}");
    for marker in ["jobs in", "outcomes", "cpu:", "by kind", "{\"", "send_mail"] {
        assert!(!quiet.stderr.contains(marker), "{marker:?} in\n{quiet}");
    }
}

/// A job log written by hand: kind alpha_kind has 3 jobs of 1s (one failed), bravo_kind one
/// of 10s (timed out) and charlie_kind 10 of 0.1s; in the file, alpha, then charlie, then
/// bravo. By total time the order is bravo (10s), alpha (3s), charlie (1s): neither the
/// file's order, nor alphabetical, nor by number of jobs.
fn handwritten_joblog() -> String {
    let mut s = JOBLOG_COLUMNS.join("\t");
    s.push('\n');
    let mut seq = 0;
    let mut row = |kind: &str, secs: &str, outcome: &str, exit: u32| {
        seq += 1;
        format!(
            "{seq}\t:\t1700000000.{seq:03}\t{secs}\t3\t2\t{exit}\t0\t/bin/proc\t{outcome}\t1\tj{seq}\t{kind}\n"
        )
    };
    s.push_str(&row("alpha_kind", "1.000", "ok", 0));
    s.push_str(&row("alpha_kind", "1.000", "failed", 1));
    s.push_str(&row("alpha_kind", "1.000", "ok", 0));
    for _ in 0..10 {
        s.push_str(&row("charlie_kind", "0.100", "ok", 0));
    }
    s.push_str(&row("bravo_kind", "10.000", "timeout", 124));
    s
}

#[test]
fn report_on_a_joblog_orders_kinds_by_total_time() {
    let cmd = report();
    let log = cmd.write_file("jobs.tsv", handwritten_joblog());
    let run = cmd.arg(&log).run();
    assert_eq!(run.code(), 0, "{run}");
    let text = run.stdout_str();
    assert!(text.contains("14 jobs"), "{run}");
    assert!(text.contains("ok 12, failed 1, timeout 1"), "{run}");
    let at = |kind: &str| {
        text.find(kind)
            .unwrap_or_else(|| panic!("{kind} missing from the report\n{run}"))
    };
    assert!(
        at("bravo_kind") < at("alpha_kind") && at("alpha_kind") < at("charlie_kind"),
        "kinds by total time: bravo, alpha, charlie\n{run}"
    );

    let cmd = report();
    let log = cmd.write_file("jobs.tsv", handwritten_joblog());
    let run = cmd.args(["--summary", "json"]).arg(&log).run();
    assert_eq!(run.code(), 0, "{run}");
    let s: Value = serde_json::from_str(run.stdout_str().trim())
        .unwrap_or_else(|e| panic!("report --summary json is not one JSON object ({e})\n{run}"));
    assert_eq!(s["jobs"], 14, "{s}");
    let kinds = s["kinds"].as_array().expect("kinds");
    let order: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(order, ["bravo_kind", "alpha_kind", "charlie_kind"], "{s}");
    let jobs: Vec<u64> = kinds.iter().map(|k| k["jobs"].as_u64().unwrap()).collect();
    assert_eq!(jobs, [1, 3, 10], "{s}");
    let totals: Vec<f64> = kinds
        .iter()
        .map(|k| number(&k["total_ms"], "total_ms"))
        .collect();
    assert_eq!(totals, [10_000.0, 3_000.0, 1_000.0], "{s}");
    assert_eq!(kinds[0]["outcomes"]["timeout"], 1, "{s}");
    assert_eq!(kinds[1]["outcomes"]["failed"], 1, "{s}");
    assert_eq!(kinds[1]["outcomes"]["ok"], 2, "{s}");
    assert_eq!(kinds[2]["outcomes"]["ok"], 10, "{s}");
    assert_eq!(kinds[0]["slowest"][0]["id"], "j14", "{s}");
    assert!(
        s.get("elapsed_s").is_none(),
        "a report has no run time: {s}"
    );
}

#[test]
fn report_reads_a_gnu_parallel_joblog_by_exit_value() {
    // GNU parallel's own nine columns: no Outcome, Id or Kind.
    let cmd = report();
    let log = cmd.write_file(
        "parallel.log",
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n\
         1\t:\t1700000000.000\t0.500\t0\t3\t0\t0\techo a\n\
         2\t:\t1700000000.100\t0.250\t0\t0\t2\t0\tfalse\n\
         3\t:\t1700000000.200\t1.000\t0\t0\t0\t15\tsleep 9\n",
    );
    let run = cmd.args(["--summary", "json"]).arg(&log).run();
    assert_eq!(run.code(), 0, "{run}");
    let s: Value = serde_json::from_str(run.stdout_str().trim()).expect("JSON");
    assert_eq!(s["jobs"], 3, "{s}");
    assert_eq!(s["outcomes"]["ok"], 1, "{s}");
    assert_eq!(s["outcomes"]["failed"], 2, "{s}");
    assert_eq!(s["kinds"][0]["kind"], NO_KIND, "{s}");
    assert_eq!(s["slowest"][0]["id"], "3", "the id is the seq: {s}");
}

#[test]
fn report_on_a_results_file_matches_the_runs_own_summary() {
    let run = run_mixed(&["--summary", "json", "--joblog", "jobs.tsv"]);
    assert_eq!(run.code(), MIXED_EXIT, "{run}");
    let mut summary = run.json_summary();
    // What only the run itself knows.
    let obj = summary.as_object_mut().unwrap();
    for key in ["elapsed_s", "jobs_per_s", "cpu_s"] {
        assert!(obj.remove(key).is_some(), "{key} is in the run's summary");
    }

    let results = run.dir().join("results.ndjson");
    std::fs::write(&results, &run.stdout).unwrap();
    let rep = report().args(["--summary", "json"]).arg(&results).run();
    assert_eq!(rep.code(), 0, "{rep}");
    let from_results: Value = serde_json::from_str(rep.stdout_str().trim())
        .unwrap_or_else(|e| panic!("not JSON ({e})\n{rep}"));
    assert_eq!(
        from_results, summary,
        "the report of the results equals the run's summary\n{rep}\n{run}"
    );

    // The text report names every kind.
    let text = report().arg(&results).run();
    assert_eq!(text.code(), 0, "{text}");
    for kind in ["send_mail", "export_csv", "resize", NO_KIND] {
        assert!(text.stdout_str().contains(kind), "{kind}\n{text}");
    }

    // The job log of the same run counts the same jobs the same way (its durations are
    // rounded to milliseconds, so only the counts are compared).
    let rep = report()
        .args(["--summary", "json"])
        .arg(run.dir().join("jobs.tsv"))
        .run();
    assert_eq!(rep.code(), 0, "{rep}");
    let from_log: Value = serde_json::from_str(rep.stdout_str().trim()).expect("JSON");
    assert_eq!(from_log["jobs"], summary["jobs"], "{from_log}");
    assert_eq!(from_log["outcomes"], summary["outcomes"], "{from_log}");
    let per_kind = |s: &Value| -> BTreeMap<String, (Value, Value)> {
        s["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["kind"].as_str().unwrap().to_string(),
                    (k["jobs"].clone(), k["outcomes"].clone()),
                )
            })
            .collect()
    };
    assert_eq!(per_kind(&from_log), per_kind(&summary), "{from_log}");
}

#[test]
fn report_on_a_malformed_file_exits_125_naming_file_and_line() {
    let cases = [
        (
            "bad.tsv",
            format!(
                "{}\n1\t:\t0\t0.100\t0\t0\t0\t0\tp\tok\t1\ta\tk\nnot-a-seq\t:\t0\t0.100\t0\t0\t0\t0\tp\tok\t1\tb\tk\n",
                JOBLOG_COLUMNS.join("\t")
            ),
            3,
        ),
        (
            "bad.ndjson",
            "{\"seq\":1,\"id\":\"1\",\"outcome\":\"ok\",\"duration_ms\":1.0,\"attempts\":1}\n\n{\"seq\":2,\n"
                .to_string(),
            3,
        ),
        (
            "bad-outcome.ndjson",
            "{\"seq\":1,\"id\":\"1\",\"outcome\":\"splendid\",\"duration_ms\":1.0}\n".to_string(),
            1,
        ),
        ("headless.tsv", "1\t:\t0\t0.1\n".to_string(), 1),
    ];
    for (name, contents, line) in cases {
        let cmd = report();
        let path = cmd.write_file(name, contents);
        let run = cmd.arg(&path).run();
        assert_eq!(run.code(), 125, "{run}");
        let at = format!("{}:{line}:", path.display());
        assert!(run.stderr.contains(&at), "{at:?} not in the error\n{run}");
        assert!(run.stdout.is_empty(), "no report on a bad file\n{run}");
    }

    let cmd = report();
    let missing = cmd.dir().join("no-such-log.tsv");
    let run = cmd.arg(&missing).run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains(&missing.display().to_string()), "{run}");
}

/// `sh -c` that waits for the file named by its first argument, then prints "released".
const WAIT_FOR_FILE: &str = r#"while [ ! -e "$1" ]; do sleep 0.05; done; echo released"#;

#[test]
fn slow_job_is_reported_while_it_runs_and_fast_ones_are_not() {
    // The slow job waits for a file the test creates, so the warning is seen while it is
    // certainly still running; the fast one's file exists from the start.
    let cmd = jobsup!();
    let present = cmd.write_file("present", "");
    let release = cmd.dir().join("release");
    let input = format!(
        "{}\n{}\n",
        serde_json::json!({"id": "quick", "payload": present.to_str().unwrap()}),
        serde_json::json!({"id": "laggard", "kind": "export", "payload": release.to_str().unwrap()}),
    );
    let bg = cmd
        .args(["-j", "2", "--mode", "exec", "--input-format", "ndjson"])
        .args(["--slow", "500ms", "--ttl", "60s"])
        .processor("/bin/sh", ["-c", WAIT_FOR_FILE, "sh", "{}"])
        .stdin(input)
        .spawn();
    let warned = |stderr: &str, id: &str| {
        stderr
            .lines()
            .filter(|l| l.contains("slow job") && l.contains(id))
            .count()
    };
    wait_until(WAIT, "the slow job is reported", || {
        warned(&bg.stderr_so_far(), "laggard") > 0
    });
    assert!(
        !bg.records_so_far().iter().any(|r| r.id() == "laggard"),
        "the warning comes while the job runs"
    );
    wait_until(WAIT, "the quick job is done", || {
        bg.records_so_far().iter().any(|r| r.id() == "quick")
    });
    std::fs::write(&release, "").unwrap();
    let run = bg.wait();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.records();
    assert_eq!(recs.len(), 2, "{run}");
    for r in &recs {
        assert_eq!(r.outcome(), "ok", "{run}");
        assert_eq!(r.output(), Some("released\n"), "{run}");
    }
    assert_eq!(warned(&run.stderr, "laggard"), 1, "warned once\n{run}");
    assert_eq!(
        warned(&run.stderr, "quick"),
        0,
        "a fast job is not slow\n{run}"
    );
    let line = run.stderr.lines().find(|l| l.contains("slow job")).unwrap();
    assert!(
        line.contains("500ms"),
        "the warning says the threshold: {line}"
    );
}

#[test]
fn json_log_lines_are_objects_and_processor_output_carries_its_origin() {
    let run = jobsup!()
        .args(["-j", "1", "--log-format", "json", "--summary", "none"])
        .args(["--slow", "50ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok\nlog:hello\nexit:3\nsleep:200\nok\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 5, "{run}");
    assert!(!run.stderr.trim().is_empty(), "{run}");
    let events: Vec<Value> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {l:?}\n{run}"));
            assert!(v.is_object(), "not an object: {l}");
            assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
            v
        })
        .collect();

    let logger = &recs[&2];
    for stream in ["stdout", "stderr"] {
        let message = format!("hello ({stream})");
        let e = events
            .iter()
            .find(|e| e["message"] == message.as_str())
            .unwrap_or_else(|| panic!("no event for {message:?}\n{run}"));
        assert_eq!(e["pool"], "default", "{e}");
        assert_eq!(e["worker"].as_i64(), logger.worker(), "{e}\n{logger}");
        assert_eq!(
            e["pid"].as_i64(),
            logger.pid().map(i64::from),
            "{e}\n{logger}"
        );
        assert_eq!(e["job"], 2, "{e}");
        assert_eq!(e["stream"], stream, "{e}");
    }
    // jobsup's own warnings are events with fields too.
    let slow = events
        .iter()
        .find(|e| {
            e["job"] == 4
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("slow job"))
        })
        .unwrap_or_else(|| panic!("no slow-job event for job 4\n{run}"));
    assert_eq!(slow["level"], "WARN", "{slow}");
    assert_eq!(slow["pool"], "default", "{slow}");
    assert_eq!(slow["id"], "4", "{slow}");
    assert_eq!(
        slow["pid"].as_i64(),
        recs[&4].pid().map(i64::from),
        "{slow}"
    );
}

/// Runs its arguments with stderr (and stdout) on a new pseudo-terminal, copies everything
/// written there to its own stdout, and exits with the child's exit code.
const ON_A_PTY: &str = r#"
import os, subprocess, sys
master, slave = os.openpty()
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
os.close(slave)
out = bytearray()
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
sys.stdout.buffer.write(out)
sys.exit(child.wait())
"#;

/// Jobs slow enough for the bar to draw: about a second on two workers.
fn slow_jobs() -> String {
    // Every fifth job also logs a line, which must not land on the bar's line.
    lines(20, |i| {
        if i % 5 == 0 {
            format!("log:hello {i}")
        } else {
            "sleep:100".to_string()
        }
    })
}

/// Runs the slow jobs with stderr on a terminal; records go to a file. Returns the run
/// (whose stdout is what the terminal showed) and the records written.
fn run_on_a_pty(extra: &[&str]) -> (Run, Vec<Record>) {
    let cmd = Jobsup::new("python3");
    let input = cmd.write_file("jobs.txt", slow_jobs());
    let output = cmd.dir().join("records.ndjson");
    let run = cmd
        .env("TERM", "xterm")
        .args(["-c", ON_A_PTY, bin!("jobsup-shim"), "run", "-j", "2"])
        .args(extra)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--", bin!("jobsup-flaky")])
        .run();
    let records = jobsup_tests::records(&std::fs::read(&output).unwrap_or_default());
    (run, records)
}

#[test]
fn progress_bar_is_drawn_on_a_terminal_only() {
    let (run, recs) = run_on_a_pty(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(recs.len(), 20, "{run}");
    let screen = run.stdout_str();
    assert!(screen.contains("jobs done"), "no progress bar\n{run}");
    // Log lines are written around the bar, never onto its line.
    assert!(screen.contains("hello"), "{run}");
    for line in screen.split(['\r', '\n']) {
        assert!(
            !(line.contains("jobs done") && line.contains("hello")),
            "a log line glued to the bar: {line:?}"
        );
    }
    // The summary still follows.
    assert!(screen.contains("20 jobs in"), "{run}");

    // -q: no bar, even on a terminal.
    let (quiet, recs) = run_on_a_pty(&["-q"]);
    assert_eq!(quiet.code(), 0, "{quiet}");
    assert_eq!(recs.len(), 20, "{quiet}");
    assert!(!quiet.stdout_str().contains("jobs done"), "{quiet}");

    // stderr a pipe: no bar either, and no terminal control characters.
    let piped = jobsup!()
        .env("TERM", "xterm")
        .args(["-j", "2"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(slow_jobs())
        .run();
    assert_eq!(piped.code(), 0, "{piped}");
    assert_eq!(piped.records().len(), 20, "{piped}");
    for marker in ["jobs done", "ETA", "\r", "\u{1b}["] {
        assert!(!piped.stderr.contains(marker), "{marker:?}\n{piped}");
    }
    assert!(piped.stderr.contains("20 jobs in"), "{piped}");
}
