//! Resource limits on request: --memory, --cpu-time, --open-files, --max-procs. Each holds,
//! and a job that hits one gets a record that names it. The memory and process limits are
//! tried as the invoking user (root on CI: cgroup controllers) and as an unprivileged user
//! (nobody: no writable cgroups, so `RLIMIT_AS` for memory and a refusal for processes).

use jobsup_tests::{
    can_make_dir_in, jobsup, jobsup_as, own_cgroup_dir, sleepers, wait_until, Jobsup, Record, Run,
    User, WAIT,
};

fn only_record(run: &Run) -> Record {
    let mut records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    records.remove(0)
}

fn job(builder: Jobsup, flags: &[&str], program: &str, code: &str) -> (Record, Run) {
    let run = builder
        .args(["--mode", "exec"])
        .args(flags)
        .processor(program, ["-c", code])
        .stdin("x\n")
        .run();
    (only_record(&run), run)
}

#[test]
fn open_files_limit_holds() {
    // The processor says how far it got, so that a worker that never started cannot pass
    // for a limit that held.
    let code = "import errno\nfs = []\ntry:\n    fs = [open('/dev/null') for _ in range(64)]\n    print('opened 64')\nexcept OSError as e:\n    print('refused', errno.errorcode[e.errno])";
    for who in User::BOTH {
        let (free, _) = job(jobsup_as!(who), &[], "python3", code);
        assert_eq!(free.output(), Some("opened 64\n"), "{who:?}: {free}");
        let (limited, _) = job(jobsup_as!(who), &["--open-files", "16"], "python3", code);
        assert_eq!(
            limited.output(),
            Some("refused EMFILE\n"),
            "{who:?}: {limited}"
        );
    }
}

#[test]
fn a_memory_hog_gets_a_record_that_names_the_limit() {
    // Touches every byte, so that resident memory (what a cgroup counts) really grows.
    let code = "x = b'x' * (400 * 1024 * 1024); print(len(x))";
    for who in User::BOTH {
        assert_eq!(
            job(jobsup_as!(who), &[], "python3", code).0.outcome(),
            "ok",
            "{who:?}"
        );
        let (r, run) = job(jobsup_as!(who), &["--memory", "100MiB"], "python3", code);
        assert!(
            matches!(r.outcome(), "failed" | "crashed"),
            "{who:?}: {r}\n{run}"
        );
        let error = r.error().unwrap_or_default();
        assert!(
            error.contains("memory limit of 100 MiB reached"),
            "{who:?}: {r}\n{run}"
        );
        // Which mechanism held is said at start, and the record agrees with it.
        if run.stderr.contains("memory=\"the memory controller") {
            assert!(error.contains("OOM killer"), "{who:?}: {r}");
        } else {
            assert!(error.contains("address-space limit"), "{who:?}: {r}\n{run}");
        }
    }
}

#[test]
fn max_procs_holds_or_is_refused_before_any_job() {
    // Eight background processes at once, where four are allowed.
    let code = "for i in 1 2 3 4 5 6 7 8; do sleep 0 & done; wait; echo done";
    for who in User::BOTH {
        assert_eq!(
            job(jobsup_as!(who), &[], "sh", code).0.output(),
            Some("done\n"),
            "{who:?}"
        );
        let run = jobsup_as!(who)
            .args(["--mode", "exec", "--max-procs", "4"])
            .processor("sh", ["-c", code])
            .stdin("x\n")
            .run();
        if run.code() == 125 {
            // No usable pids controller: said clearly, and no job was run.
            assert!(
                run.stderr
                    .contains("--max-procs needs a pids cgroup controller"),
                "{who:?}: {run}"
            );
            assert!(run.records().is_empty(), "{who:?}: {run}");
            assert!(
                who == User::Unprivileged || !pids_controller_writable(),
                "a pids controller is writable here, yet jobsup refused: {run}"
            );
        } else {
            let r = only_record(&run);
            assert_eq!(r.outcome(), "failed", "{who:?}: {r}");
            assert!(
                r.error()
                    .unwrap_or_default()
                    .contains("process limit of 4 reached (--max-procs)"),
                "{who:?}: {r}"
            );
        }
    }
}

/// Whether this process could make a cgroup with a pids controller, in cgroup v2 (where
/// the controller is available) or v1, as jobsup would.
fn pids_controller_writable() -> bool {
    let v2 = own_cgroup_dir(None).filter(|d| {
        std::fs::read_to_string(d.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "pids")
    });
    [v2, own_cgroup_dir(Some("pids"))]
        .into_iter()
        .flatten()
        .any(|d| can_make_dir_in(&d))
}

#[test]
fn cpu_time_limit_is_named_in_the_record() {
    let run = jobsup!()
        .args(["--mode", "exec", "--cpu-time", "1", "--ttl", "60s"])
        .processor("sh", ["-c", "while :; do :; done"])
        .stdin("x\n")
        .run();
    let r = only_record(&run);
    assert_eq!(r.outcome(), "crashed", "{r}");
    assert!(
        r.error().unwrap_or_default().contains("cpu time limit"),
        "{r}"
    );
}

#[test]
fn a_fork_bomb_under_max_procs_is_contained_and_cleaned_up() {
    // Each call starts a sleeper and two more calls, without end; at the limit, forks fail
    // and the shell goes on to wait for its sleepers until the hard kill.
    let token = format!("{}.{}", 600 + std::process::id() % 97, std::process::id());
    let bomb = format!("b() {{ sleep {token} & b & b; }}; b; wait");
    let run = jobsup!()
        .args([
            "--mode",
            "exec",
            "--max-procs",
            "32",
            "--ttl",
            "1s",
            "--cleanup",
            "200ms",
        ])
        .processor("sh", ["-c", bomb.as_str()])
        .stdin("x\n")
        .run();
    if run.code() == 125 {
        assert!(!pids_controller_writable(), "{run}");
        return;
    }
    let r = only_record(&run);
    // A shell that gives up at the first failed fork ends the job itself, and the record
    // says why; one that carries on is killed at its deadline.
    match r.outcome() {
        "killed" => {}
        "failed" | "crashed" => assert!(
            r.error()
                .unwrap_or_default()
                .contains("process limit of 32 reached"),
            "{r}"
        ),
        other => panic!("unexpected outcome {other}: {r}\n{run}"),
    }
    let survivors = sleepers(&token);
    assert!(survivors.is_empty(), "the bomb left {survivors:?}\n{run}");
}

#[test]
fn a_limit_hit_is_not_blamed_on_the_next_job_of_the_same_worker() {
    // One exec slot runs both jobs, in the same cgroup: the second fails for a reason of
    // its own, and its record must not inherit the first one's limit.
    let code = r#"if [ "$1" = fork ]; then for i in 1 2 3 4 5 6 7 8; do sleep 0 & done; wait; else exit 3; fi"#;
    let run = jobsup!()
        .args(["--mode", "exec", "-j", "1", "--max-procs", "4"])
        .processor("sh", ["-c", code, "sh", "{}"])
        .stdin("fork\nplain\n")
        .run();
    if run.code() == 125 {
        assert!(!pids_controller_writable(), "{run}");
        return;
    }
    let records = run.records();
    assert_eq!(records.len(), 2, "{run}");
    assert!(
        records[0]
            .error()
            .unwrap_or_default()
            .contains("process limit of 4 reached"),
        "{}",
        records[0]
    );
    assert_eq!(records[1].exit_code(), Some(3), "{}", records[1]);
    assert!(
        !records[1].error().unwrap_or_default().contains("limit"),
        "{}",
        records[1]
    );
}

/// A line worker that burns 0.7 s of CPU for each job, by its own clock.
const BURN: &str = "import sys, time\nfor line in sys.stdin:\n    t = time.process_time()\n    while time.process_time() - t < 0.7:\n        pass\n    print('burned', flush=True)\n";

#[test]
fn cpu_time_is_a_budget_per_job_in_a_reused_worker() {
    // RLIMIT_CPU would add the two jobs up (1.4 s) and kill the second at 1 s.
    let run = jobsup!()
        .args([
            "--mode",
            "lines",
            "-j",
            "1",
            "--cpu-time",
            "1",
            "--ttl",
            "60s",
        ])
        .processor("python3", ["-c", BURN])
        .stdin("a\nb\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 2, "{run}");
    for r in &records {
        assert_eq!(r.outcome(), "ok", "{r}\n{run}");
        assert_eq!(r.output(), Some("burned"), "{r}");
    }
    assert_eq!(
        records[0].pid(),
        records[1].pid(),
        "one worker ran both\n{run}"
    );
}

fn assert_killed_for_cpu(run: &Run) {
    let r = only_record(run);
    assert_eq!(r.outcome(), "killed", "{r}\n{run}");
    assert_eq!(r.deadline(), Some("cpu"), "{r}");
    assert!(
        r.error()
            .unwrap_or_default()
            .contains("cpu time limit of 1s reached (--cpu-time)"),
        "{r}"
    );
}

#[test]
fn a_line_job_that_spins_is_killed_at_its_cpu_budget() {
    let run = jobsup!()
        .args(["--mode", "lines", "--cpu-time", "1", "--ttl", "300s"])
        .processor("sh", ["-c", "while read l; do while :; do :; done; done"])
        .stdin("x\n")
        .run();
    assert_killed_for_cpu(&run);
}

#[test]
fn a_native_job_that_spins_is_killed_at_its_cpu_budget() {
    let run = jobsup!()
        .args(["--mode", "native", "--cpu-time", "1", "--ttl", "300s"])
        .processor(jobsup_tests::bin!("jobsup-spin"), [] as [&str; 0])
        .stdin("x\n")
        .run();
    assert_killed_for_cpu(&run);
}

#[test]
fn a_job_leaves_no_process_behind_for_the_next_job_of_its_worker() {
    // Plain, and behind a pid namespace's shim (where the worker is the shim's child).
    for flags in [&[][..], &["--isolate", "pid"][..]] {
        let token = format!("{}.{}", 800 + flags.len(), std::process::id());
        let script = format!(
            r#"while read l; do
  case "$l" in
    bg) sleep {token} >/dev/null 2>&1 & echo started ;;
    *) echo next ;;
  esac
done"#
        );
        let mut bg = jobsup!()
            .args(["--mode", "lines", "-j", "1"])
            .args(flags)
            .processor("sh", ["-c", script.as_str()])
            .stdin("bg\n")
            .keep_stdin_open()
            .spawn();
        wait_until(WAIT, "the first record", || !bg.records_so_far().is_empty());
        let first = bg.records_so_far().remove(0);
        assert_eq!(first.outcome(), "ok", "{flags:?}: {first}");
        assert_eq!(first.output(), Some("started"), "{flags:?}: {first}");
        wait_until(WAIT, "the job's background child is gone", || {
            sleepers(&token).is_empty()
        });
        bg.write_stdin("next\n");
        bg.close_stdin();
        let run = bg.wait();
        let records = run.records();
        assert_eq!(records.len(), 2, "{flags:?}\n{run}");
        assert_eq!(records[1].outcome(), "ok", "{flags:?}\n{run}");
        assert_eq!(records[1].output(), Some("next"), "{flags:?}\n{run}");
        assert_eq!(
            records[0].pid(),
            records[1].pid(),
            "{flags:?}: the worker itself serves the next job\n{run}"
        );
    }
}
