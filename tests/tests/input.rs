//! Reading jobs (lines, ndjson, files) and writing records (stdout, files, order).

use jobsup_tests::{bin, jobsup, lines};

#[test]
fn lines_skip_blanks_and_number_jobs_by_line() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(bin!("echo"), [] as [&str; 0])
        .stdin("a\n\nb\n\n\nc")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.keys().copied().collect::<Vec<_>>(), [1, 3, 6], "{run}");
    for (seq, payload) in [(1, "a"), (3, "b"), (6, "c")] {
        assert_eq!(recs[&seq].id(), seq.to_string(), "{run}");
        assert_eq!(recs[&seq].output(), Some(payload), "{run}");
    }
}

#[test]
fn output_that_is_not_utf8_is_base64() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(bin!("echo"), [] as [&str; 0])
        .stdin(b"\xff\xfe\n")
        .run();
    let recs = run.records();
    assert_eq!(recs.len(), 1, "{run}");
    assert_eq!(recs[0].outcome(), "ok", "{run}");
    assert_eq!(recs[0].output(), None, "{run}");
    assert_eq!(recs[0].output_base64(), Some("//4="), "{run}");
}

#[test]
fn ndjson_ids_and_payloads() {
    let input = concat!(
        r#"{"payload":"plain","id":"job-a"}"#,
        "\n",
        r#"{"payload":"numbered","id":42}"#,
        "\n",
        r#"{"payload":{"a":1}}"#,
        "\n",
        r#"{"payload":7}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "1", "--input-format", "ndjson"])
        .processor(bin!("echo"), [] as [&str; 0])
        .stdin(input)
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 4, "{run}");
    let expect = [
        (1, "job-a", "plain"),
        (2, "42", "numbered"),
        (3, "3", r#"{"a":1}"#),
        (4, "4", "7"),
    ];
    for (seq, id, output) in expect {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
        assert_eq!(recs[&seq].id(), id, "{run}");
        assert_eq!(recs[&seq].output(), Some(output), "{run}");
    }
}

#[test]
fn ndjson_per_job_ttl_overrides_the_flag() {
    let input = concat!(
        r#"{"payload":"10"}"#,
        "\n",
        r#"{"payload":"60000","ttl":"300ms","cleanup":"5s"}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--input-format", "ndjson"])
        .processor(bin!("sleepy"), [] as [&str; 0])
        .stdin(input)
        .run();
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&2].outcome(), "timeout", "{run}");
    assert_eq!(run.code(), 124, "{run}");
}

#[test]
fn malformed_ndjson_lines_are_rejected_and_the_run_goes_on() {
    let input = concat!(
        r#"{"payload":"first"}"#,
        "\n",
        "this is not json\n",
        r#"{"id":"no-payload"}"#,
        "\n",
        r#"{"payload":"x","ttl":"banana"}"#,
        "\n",
        "[1,2,3]\n",
        r#"{"payload":"last"}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "2", "--input-format", "ndjson"])
        .processor(bin!("echo"), [] as [&str; 0])
        .stdin(input)
        .run();
    let recs = run.by_seq();
    assert_eq!(
        recs.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "exactly one record per line\n{run}"
    );
    assert_eq!(recs[&1].output(), Some("first"), "{run}");
    assert_eq!(recs[&6].output(), Some("last"), "{run}");
    for seq in [1, 6] {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
    }
    for seq in 2..=5 {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "rejected", "{r}");
        assert!(r.error().is_some_and(|e| !e.is_empty()), "says why: {r}");
    }
    assert!(
        recs[&4].error().unwrap().contains("banana") || recs[&4].error().unwrap().contains("ttl"),
        "names the bad duration: {}",
        recs[&4]
    );
    assert_eq!(run.code(), 1, "{run}");
}

#[test]
fn input_and_output_files() {
    let j = jobsup!();
    let input = j.write_file("jobs.txt", "one\ntwo\nthree\n");
    let output = j.dir().join("results.ndjson");
    let run = j
        .args(["-j", "2", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .processor(bin!("echo"), [] as [&str; 0])
        .stdin("ignored\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout.is_empty(), "records go to the file only\n{run}");
    let written = std::fs::read(&output).expect("the output file exists");
    let recs = jobsup_tests::by_seq(jobsup_tests::records(&written));
    assert_eq!(recs.len(), 3, "{}", String::from_utf8_lossy(&written));
    for (seq, payload) in [(1, "one"), (2, "two"), (3, "three")] {
        assert_eq!(recs[&seq].output(), Some(payload));
    }
}

#[test]
fn keep_order_writes_records_in_input_order() {
    // The first job is much slower than the rest, so without --keep-order its record would
    // come last; with it, it must come first.
    let input = lines(8, |i| if i == 1 { "300".into() } else { "10".into() });
    let run = jobsup!()
        .args(["-j", "2", "--keep-order"])
        .processor(bin!("sleepy"), [] as [&str; 0])
        .stdin(input)
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let seqs: Vec<u64> = run.records().iter().map(|r| r.seq()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "{run}");
}
