//! A worker that breaks the protocol loses its job (`crashed`, with an error that says
//! "protocol") and is replaced; the rest of the run is unaffected.

use jobsup_tests::{bin, jobsup, Run};

/// `hello`, then the misbehaving job, then `more`, on one worker. The ttl bounds a
/// misbehaviour that leaves the fixture hanging.
fn garbage_run(kind: &str) -> Run {
    jobsup!()
        .args(["-j", "1", "--ttl", "1s", "--cleanup", "300ms"])
        .processor(bin!("fx-garbage"), [] as [&str; 0])
        .stdin(format!("hello\n{kind}\nmore\n"))
        .run()
}

fn assert_protocol_crash(kind: &str) {
    let run = garbage_run(kind);
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "one record per job\n{run}");
    let bad = &recs[&2];
    assert_eq!(bad.outcome(), "crashed", "{kind}: {bad}\n{run}");
    assert!(
        bad.error().is_some_and(|e| e.contains("protocol")),
        "{kind}: the error mentions the protocol: {bad}"
    );
    for (seq, payload) in [(1, "hello"), (3, "more")] {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
        assert_eq!(recs[&seq].output(), Some(payload), "{run}");
    }
    assert_ne!(
        recs[&2].pid(),
        recs[&3].pid(),
        "the broken worker was replaced\n{run}"
    );
    assert_eq!(run.code(), 1, "{run}");
}

#[test]
fn oversize_frame_is_a_protocol_crash_not_an_allocation() {
    assert_protocol_crash("oversize");
}

#[test]
fn garbage_body_is_a_protocol_crash() {
    assert_protocol_crash("junk");
}

#[test]
fn truncated_frame_is_a_protocol_crash() {
    assert_protocol_crash("truncated");
}

#[test]
fn result_for_an_unknown_job_does_not_stop_the_run() {
    let run = garbage_run("wrong-id");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "one record per job\n{run}");
    let bad = &recs[&2];
    assert!(
        matches!(bad.outcome(), "crashed" | "killed"),
        "a Done for a job never given is not a result for this one: {bad}"
    );
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&3].outcome(), "ok", "{run}");
    assert_eq!(recs[&3].output(), Some("more"), "{run}");
}

#[test]
fn second_result_for_one_job_never_makes_a_second_record() {
    let run = garbage_run("twice");
    let recs = run.records();
    // by_seq fails the test on a duplicate seq.
    let by_seq = run.by_seq();
    assert_eq!(recs.len(), 3, "exactly one record per job\n{run}");
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3],
        "{run}"
    );
    assert_eq!(by_seq[&1].outcome(), "ok", "{run}");
}
