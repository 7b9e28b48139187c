//! Soak: many jobs drawing misbehaviours at random, then the invariants: one record per
//! job with the outcome its behaviour implies, the exit code, no survivor, and the
//! supervisor's own file descriptors and memory back where they were after warm-up.
//!
//! CI runs a small soak; run a long one with
//! `JOBSUP_SOAK_JOBS=100000 cargo test --release -p jobsup-tests --test soak`.

use std::collections::BTreeSet;

use jobsup_tests::{bin, jobsup, pid_alive, wait_until, WAIT};

/// What each behaviour must end as (flaky's payload language).
const BEHAVIOURS: &[(&str, &str)] = &[
    ("ok:fine", "ok"),
    ("fail:nope", "failed"),
    ("panic:boom", "failed"),
    ("exit:3", "crashed"),
    ("abort", "crashed"),
    ("segv", "crashed"),
    ("sleep:2", "ok"),
    ("log:chatty", "ok"),
    ("spin", "killed"),
];

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn soak_keeps_every_invariant() {
    let jobs: usize = std::env::var("JOBSUP_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let warmup = 40;
    let mut rng = fastrand::Rng::with_seed(7);
    // Spin jobs cost a whole ttl + cleanup each: keep them rare.
    let drawn: Vec<usize> = (0..jobs)
        .map(|_| {
            if rng.u32(0..40) == 0 {
                BEHAVIOURS.len() - 1
            } else {
                rng.usize(0..BEHAVIOURS.len() - 1)
            }
        })
        .collect();

    let mut bg = jobsup!()
        .args(["-q", "-j", "4", "--ttl", "300ms", "--cleanup", "100ms"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .timeout(std::time::Duration::from_secs(600))
        .keep_stdin_open()
        .spawn();
    let pid = bg.pid();

    // Warm-up: plain jobs, so that no worker is being replaced when the baseline is taken.
    bg.write_stdin("ok\n".repeat(warmup));
    wait_until(WAIT, "the warm-up jobs have their records", || {
        bg.records_so_far().len() == warmup
    });
    wait_until(WAIT, "four idle workers", || bg.children().len() == 4);
    let fds_before = fd_count(pid);
    let rss_before = rss_kib(pid);

    let mut input = String::new();
    for &b in &drawn {
        input.push_str(BEHAVIOURS[b].0);
        input.push('\n');
    }
    bg.write_stdin(input);
    let total = warmup + jobs;
    wait_until(
        std::time::Duration::from_secs(600),
        "every job has its record",
        || bg.records_so_far().len() >= total,
    );
    // Replacements of the last crashed or killed workers may still be starting.
    wait_until(
        WAIT,
        "the descriptors are back to the warm-up count",
        || bg.children().len() == 4 && fd_count(pid) == fds_before,
    );
    let rss_after = rss_kib(pid);
    bg.close_stdin();
    let run = bg.wait();

    let records = run.records();
    assert_eq!(records.len(), total, "one record per job read");
    let seqs: BTreeSet<u64> = records.iter().map(|r| r.seq()).collect();
    assert_eq!(seqs.len(), total, "no job has two records");
    for r in &records {
        let seq = r.seq() as usize;
        let want = if seq <= warmup {
            "ok"
        } else {
            BEHAVIOURS[drawn[seq - warmup - 1]].1
        };
        assert_eq!(r.outcome(), want, "{r}");
    }
    let killed = drawn.iter().any(|&b| BEHAVIOURS[b].1 == "killed");
    assert_eq!(run.code(), if killed { 137 } else { 1 }, "{run}");
    let alive: Vec<i32> = records
        .iter()
        .filter_map(|r| r.pid())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|&p| pid_alive(p))
        .collect();
    assert!(alive.is_empty(), "workers outlived jobsup: {alive:?}");
    // Bounded memory: what the run grew past warm-up stays within a fixed margin.
    assert!(
        rss_after <= rss_before + 32 * 1024,
        "supervisor RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
