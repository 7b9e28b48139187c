//! A thousand jobs of every kind: each gets exactly one record, with the right outcome.

use std::time::Duration;

use jobsup_tests::{bin, jobsup, lines, Record};

/// What a payload for `flaky` must end as.
fn check(payload: &str, r: &Record) -> Result<(), String> {
    let (cmd, arg) = match payload.split_once(':') {
        Some((cmd, arg)) => (cmd, Some(arg)),
        None => (payload, None),
    };
    let text = arg.unwrap_or("");
    let error_has = |needle: &str| r.error().is_some_and(|e| e.contains(needle));
    let ok = match cmd {
        // A bare `ok` has no output of its own to check.
        "ok" => r.outcome() == "ok" && (arg.is_none() || r.output() == arg),
        "fail" => r.outcome() == "failed" && error_has(text),
        "panic" => r.outcome() == "failed" && error_has("panicked") && error_has(text),
        "exit" => r.outcome() == "crashed" && r.exit_code() == text.parse().ok(),
        "abort" => r.outcome() == "crashed" && r.signal() == Some(6),
        "sleep" => r.outcome() == "ok" && r.output() == Some(format!("slept {text} ms").as_str()),
        "spin" => r.outcome() == "killed" && r.signal() == Some(9),
        other => unreachable!("no such payload kind {other}"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("payload {payload:?} gave {r}"))
    }
}

fn payload(i: usize) -> String {
    if [100, 400, 700, 950].contains(&i) {
        return "spin".into();
    }
    match i % 10 {
        0..=3 => format!("ok:job {i}"),
        4 => format!("fail:failure {i}"),
        5 => format!("panic:panic {i}"),
        6 => "exit:1".into(),
        7 => "abort".into(),
        8 => "sleep:1".into(),
        _ => "ok".into(),
    }
}

#[test]
fn a_thousand_mixed_jobs_each_get_exactly_one_correct_record() {
    const N: usize = 1000;
    let run = jobsup!()
        .args(["-j", "4", "--ttl", "500ms", "--cleanup", "200ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(lines(N, payload))
        .timeout(Duration::from_secs(180))
        .run();
    let recs = run.records();
    assert_eq!(recs.len(), N, "exactly one record per job\n{}", run.stderr);
    let by_seq = run.by_seq();
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=N as u64).collect::<Vec<_>>(),
        "every seq once"
    );
    let wrong: Vec<String> = by_seq
        .iter()
        .filter_map(|(&seq, r)| check(&payload(seq as usize), r).err())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {N} records have the wrong outcome, e.g.:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(run.code(), 137, "a job was killed\n{}", run.stderr);
}
