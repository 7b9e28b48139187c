//! Chaos: processors that misbehave in every way we know of. For each scenario, the
//! invariants: one record per job read, with the outcome the scenario implies; the run
//! goes on (a plain job after it is ok); the run's exit code; jobsup's process tree back
//! to one worker and its own file descriptors back to their count before the scenario;
//! and, after exit, no process of any worker's tree alive (checked through /proc).

use std::collections::BTreeSet;

use jobsup_tests::{bin, is_namespace_init, jobsup, pid_alive, process_tree, wait_until, WAIT};

struct Scenario {
    name: &'static str,
    processor: &'static str,
    args: &'static [&'static str],
    /// A job that is fine, before and after the chaos.
    plain: &'static str,
    chaos: &'static str,
    outcome: &'static str,
    /// Words the record's error must contain.
    error: &'static str,
    flags: &'static [&'static str],
}

const DEADLINES: &[&str] = &["--ttl", "400ms", "--cleanup", "200ms"];

/// A line worker that ignores SIGTERM (its cleanup request in lines mode) and spins on
/// `spin`.
const IGNORES_TERM: &str = r#"trap '' TERM
while IFS= read -r l; do
  if [ "$l" = spin ]; then while :; do :; done; fi
  echo "$l"
done"#;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "spins in a CPU loop",
        processor: "flaky",
        args: &[],
        plain: "ok",
        chaos: "spin",
        outcome: "killed",
        error: "process group killed",
        flags: DEADLINES,
    },
    Scenario {
        name: "ignores SIGTERM and every cleanup request",
        processor: "sh",
        args: &["-c", IGNORES_TERM],
        plain: "hello",
        chaos: "spin",
        outcome: "killed",
        error: "process group killed",
        flags: &["--mode", "lines", "--ttl", "400ms", "--cleanup", "200ms"],
    },
    Scenario {
        name: "segfaults",
        processor: "flaky",
        args: &[],
        plain: "ok",
        chaos: "segv",
        outcome: "crashed",
        error: "SIGSEGV",
        flags: DEADLINES,
    },
    Scenario {
        name: "aborts",
        processor: "flaky",
        args: &[],
        plain: "ok",
        chaos: "abort",
        outcome: "crashed",
        error: "SIGABRT",
        flags: DEADLINES,
    },
    Scenario {
        name: "exits 0 mid-job without a result",
        processor: "flaky",
        args: &[],
        plain: "ok",
        chaos: "exit:0",
        outcome: "crashed",
        error: "exit code 0",
        flags: DEADLINES,
    },
    Scenario {
        name: "writes random bytes on the protocol pipe",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "junk",
        outcome: "crashed",
        error: "protocol error",
        flags: DEADLINES,
    },
    Scenario {
        name: "writes a truncated frame",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "truncated",
        outcome: "crashed",
        error: "protocol error",
        flags: DEADLINES,
    },
    Scenario {
        name: "claims a 4 GiB frame",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "oversize",
        outcome: "crashed",
        error: "exceeds the limit",
        flags: DEADLINES,
    },
    Scenario {
        name: "closes its protocol fds and keeps running",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "close-fds",
        outcome: "crashed",
        error: "kept running",
        flags: DEADLINES,
    },
    Scenario {
        name: "floods stdout and stderr",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "flood",
        outcome: "ok",
        error: "",
        flags: &["--ttl", "20s"],
    },
    Scenario {
        name: "leaks memory until its limit",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "leak",
        outcome: "crashed",
        error: "memory limit",
        flags: &["--ttl", "20s", "--memory", "200MiB"],
    },
    Scenario {
        name: "forks children in a loop",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "fork-loop",
        outcome: "killed",
        error: "process group killed",
        flags: DEADLINES,
    },
    Scenario {
        name: "answers for a job id it was never given",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "wrong-id",
        outcome: "crashed",
        error: "is running",
        flags: DEADLINES,
    },
    Scenario {
        name: "sends two results for one job",
        processor: "fx-garbage",
        args: &[],
        plain: "hello",
        chaos: "twice",
        outcome: "ok",
        error: "",
        flags: DEADLINES,
    },
];

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn processor_path(name: &str) -> &'static str {
    match name {
        "flaky" => bin!("jobsup-flaky"),
        "fx-garbage" => bin!("fx-garbage"),
        "sh" => "sh",
        other => panic!("no processor {other}"),
    }
}

fn run_scenario(s: &Scenario) {
    let mut bg = jobsup!()
        .args(["-q", "-j", "1"])
        .args(s.flags)
        .processor(processor_path(s.processor), s.args)
        .keep_stdin_open()
        .spawn();
    let pid = bg.pid();
    let mut seen: BTreeSet<i32> = BTreeSet::new();
    // A plain job first: once it has its record, the worker is up and idle, and the
    // supervisor's descriptors are at rest.
    bg.write_stdin(format!("{}\n", s.plain));
    let mut expected = 1;
    wait_until(WAIT, "the first plain job's record", || {
        bg.records_so_far().len() == expected
    });
    let fds_before = fd_count(pid);

    bg.write_stdin(format!("{}\n", s.chaos));
    expected += 1;
    wait_until(WAIT, &format!("{}: the chaos job's record", s.name), || {
        seen.extend(process_tree(pid));
        bg.records_so_far().len() == expected
    });
    let chaos = bg.records_so_far().pop().expect("a record");
    assert_eq!(chaos.outcome(), s.outcome, "{}: {chaos}", s.name);
    assert!(
        chaos.error().unwrap_or_default().contains(s.error),
        "{}: the error should mention {:?}: {chaos}",
        s.name,
        s.error
    );

    bg.write_stdin(format!("{}\n", s.plain));
    expected += 1;
    wait_until(WAIT, &format!("{}: the run goes on", s.name), || {
        bg.records_so_far().len() == expected
    });
    let after = bg.records_so_far().pop().expect("a record");
    assert_eq!(after.outcome(), "ok", "{}: {after}", s.name);
    // Back to one worker and to the same descriptors: nothing leaked by the replacement.
    wait_until(
        WAIT,
        &format!("{}: one worker and no leaked fd", s.name),
        || {
            seen.extend(process_tree(pid));
            let tree = process_tree(pid);
            tree.iter().filter(|&&p| !is_namespace_init(p)).count() == 2
                && fd_count(pid) == fds_before
        },
    );

    bg.close_stdin();
    let run = bg.wait();
    let records = run.records();
    assert_eq!(
        records.len(),
        expected,
        "{}: one record per job\n{run}",
        s.name
    );
    let want = match s.outcome {
        "killed" => 137,
        "crashed" | "failed" => 1,
        _ => 0,
    };
    assert_eq!(run.code(), want, "{}\n{run}", s.name);
    seen.remove(&pid);
    seen.extend(records.iter().filter_map(|r| r.pid()));
    let alive: Vec<i32> = seen.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(alive.is_empty(), "{}: survivors {alive:?}", s.name);
}

#[test]
fn every_chaos_scenario_keeps_every_invariant() {
    for s in SCENARIOS {
        run_scenario(s);
    }
}
