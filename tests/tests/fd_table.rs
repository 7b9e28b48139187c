//! What a worker starts with: an fd table of exactly its standard streams (plus the
//! protocol pipes on 3 and 4 in native mode), whatever jobsup inherited or has open; its
//! cgroup from its first instruction; limits applied after the fd table; a pid shim that
//! holds nothing of jobsup's; and a failed start reported with the step it failed at.
//!
//! Every case runs as the invoking user (root on CI) and as an unprivileged user (nobody,
//! through `setpriv`), and again with `JOBSUP_FALLBACK` making jobsup take the paths of
//! older kernels (no `close_range`, no `/proc`, no `clone3`).

use jobsup_tests::{
    bin, can_make_dir_in, jobsup_as, own_cgroup_dir, wait_until, Jobsup, Record, User, WAIT,
};

/// `jobsup run` as `user`, holding a file on fd 7 without close-on-exec, as after
/// `jobsup run ... 7>seven` in a shell.
fn with_fd_7(user: User) -> Jobsup {
    let j = jobsup_as!(user);
    let seven = std::fs::File::create(j.dir().join("seven")).expect("a file for fd 7");
    j.inherit_fd(seven, 7)
}

/// The fds a worker of `mode` must have: the standard streams, and the protocol pipes in
/// native mode.
fn expected_fds(mode: &str) -> &'static str {
    if mode == "native" {
        "0 1 2 3 4"
    } else {
        "0 1 2"
    }
}

/// The ways of going over the fd table that each case is run with: the kernel's
/// (`close_range`), then as without it (a `/proc/self/fd` walk), then as without `/proc`
/// either (every number below `RLIMIT_NOFILE`).
const FALLBACKS: [Option<&str>; 3] = [None, Some("close-range"), Some("proc")];

/// Runs `fx-fds` in `mode` (three jobs, two workers) under a jobsup that holds fd 7, and
/// checks that jobsup really held it while its workers ran (or the test would prove
/// nothing) and that each worker had exactly its own fds.
fn workers_have_only_their_own_fds(user: User, mode: &str, flags: &[&str], fallback: Option<&str>) {
    let mut j = with_fd_7(user)
        .args(["--mode", mode, "-j", "2"])
        .args(flags);
    if let Some(f) = fallback {
        j = j.env("JOBSUP_FALLBACK", f);
    }
    let args: &[&str] = if mode == "lines" { &["lines"] } else { &[] };
    let mut bg = j
        .processor(bin!("fx-fds"), args)
        .stdin("a\nb\nc\n")
        .keep_stdin_open()
        .spawn();
    let case = format!("{user:?} --mode {mode} {flags:?} JOBSUP_FALLBACK={fallback:?}");
    wait_until(WAIT, &format!("{case}: three records"), || {
        bg.records_so_far().len() == 3
    });
    let seven = std::fs::read_link(format!("/proc/{}/fd/7", bg.pid()));
    assert!(
        seven.as_ref().is_ok_and(|p| p.ends_with("seven")),
        "{case}: jobsup does not hold the inherited fd 7 ({seven:?}): the test proves nothing"
    );
    bg.close_stdin();
    let run = bg.wait();
    assert_eq!(run.code(), 0, "{case}\n{run}");
    let records = run.records();
    assert_eq!(records.len(), 3, "{case}\n{run}");
    for r in &records {
        assert_eq!(
            r.output().map(str::trim_end),
            Some(expected_fds(mode)),
            "{case}: {r}\n{run}"
        );
    }
}

#[test]
fn an_inherited_fd_reaches_no_worker_in_any_mode() {
    for user in User::BOTH {
        for mode in ["exec", "lines", "native"] {
            workers_have_only_their_own_fds(user, mode, &[], None);
        }
    }
}

#[test]
fn an_inherited_fd_reaches_no_isolated_worker() {
    // No namespace (the plain shared-memory clone), and the init's clone with each set of
    // namespaces on top of the default ones.
    for user in User::BOTH {
        for mode in ["exec", "lines", "native"] {
            for isolate in ["none", "net", "pid,net", "fs"] {
                workers_have_only_their_own_fds(user, mode, &["--isolate", isolate], None);
            }
        }
    }
}

#[test]
fn the_fd_table_is_the_same_on_the_paths_of_older_kernels() {
    for fallback in FALLBACKS.into_iter().flatten() {
        for user in User::BOTH {
            for mode in ["exec", "lines", "native"] {
                for flags in [
                    &[][..],
                    &["--isolate", "none"][..],
                    &["--isolate", "pid,net"][..],
                ] {
                    workers_have_only_their_own_fds(user, mode, flags, Some(fallback));
                }
            }
        }
    }
    // Without clone3 the spawn takes the plain clone, and joins the cgroup in the child.
    workers_have_only_their_own_fds(User::Invoker, "exec", &[], Some("clone3"));
    workers_have_only_their_own_fds(
        User::Invoker,
        "exec",
        &["--isolate", "none"],
        Some("clone3"),
    );
}

#[test]
fn open_files_limits_as_low_as_the_worker_needs_work() {
    // The limit is set after the fd table, so that it cannot starve the child's own moves
    // of its pipes (it did, for any limit below the numbers jobsup's fds have).
    for user in User::BOTH {
        for (limit, workers) in [("16", "8"), ("32", "2")] {
            for mode in ["native", "exec"] {
                let run = jobsup_as!(user)
                    .args(["--mode", mode, "--open-files", limit, "-j", workers])
                    .processor(bin!("fx-fds"), [] as [&str; 0])
                    .stdin(jobsup_tests::lines(16, |i| i.to_string()))
                    .run();
                let case = format!("{user:?} --mode {mode} --open-files {limit} -j {workers}");
                assert_eq!(run.code(), 0, "{case}\n{run}");
                let records = run.records();
                assert_eq!(records.len(), 16, "{case}\n{run}");
                for r in &records {
                    assert_eq!(r.outcome(), "ok", "{case}: {r}");
                    assert_eq!(
                        r.output().map(str::trim_end),
                        Some(expected_fds(mode)),
                        "{case}: {r}"
                    );
                }
            }
        }
    }
}

/// The cgroup v2 line of a worker's `/proc/self/cgroup`, as `fx-fds cgroup` printed it.
fn v2_line(r: &Record) -> String {
    let out = r.output().unwrap_or_default();
    out.lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in {r}"))
        .to_string()
}

/// What the spawner says once about `clone3` and `CLONE_INTO_CGROUP` (with `-v`).
const CREATED_IN: &str = "workers are created in their cgroup (clone3 with CLONE_INTO_CGROUP)";

#[test]
fn a_worker_is_in_its_cgroup_from_its_first_instruction() {
    let writable = own_cgroup_dir(None).is_some_and(|d| can_make_dir_in(&d));
    if !(jobsup_tests::running_as_root() && writable) {
        // No cgroup v2 jobsup could use: workers run where jobsup runs, and it says so.
        let run = jobsup_as!(User::Invoker)
            // Its cgroup namespace would show its own cgroup as the root.
            .args(["--mode", "exec", "-v", "--isolate", "none"])
            .processor(bin!("fx-fds"), ["cgroup"])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{run}");
        assert!(
            run.stderr.contains("hard kill through their process group"),
            "cgroup v2 is not writable here, yet jobsup claims another kill: {run}"
        );
        panic!(
            "cannot test cgroup placement here: it needs root and a writable cgroup v2 hierarchy"
        );
    }
    // Exec mode: each job a new process in the slot's cgroup, which the last job's
    // process has left (and which the reaper killed where something of its tree was still
    // in it). Native mode: workers in
    // fresh cgroups of their own. With JOBSUP_FALLBACK=clone3: all joined in the child.
    for (mode, fallback) in [
        ("exec", None),
        ("native", None),
        ("exec", Some("clone3")),
        ("native", Some("clone3")),
    ] {
        let mut j =
            jobsup_as!(User::Invoker).args(["--mode", mode, "-j", "1", "-v", "--isolate", "none"]);
        if let Some(f) = fallback {
            j = j.env("JOBSUP_FALLBACK", f);
        }
        let run = j
            .processor(bin!("fx-fds"), ["cgroup"])
            .stdin("a\nb\nc\n")
            .run();
        let case = format!("--mode {mode} JOBSUP_FALLBACK={fallback:?}");
        assert_eq!(run.code(), 0, "{case}\n{run}");
        let records = run.records();
        assert_eq!(records.len(), 3, "{case}\n{run}");
        for r in &records {
            assert_eq!(r.outcome(), "ok", "{case}: {r}");
            let line = v2_line(r);
            let worker = r.worker().expect("a worker");
            assert!(
                line.contains("/jobsup-") && line.ends_with(&format!("/w{worker}")),
                "{case}: not in its worker's cgroup: {line:?}\n{r}"
            );
        }
        match fallback {
            // x86-64 is where jobsup has clone3; a kernel without it (before 5.7) fails
            // this with the line that says so instead.
            None if cfg!(target_arch = "x86_64") => assert!(
                run.stderr.contains(CREATED_IN),
                "{case}: workers were not created in their cgroup\n{run}"
            ),
            _ => assert!(!run.stderr.contains(CREATED_IN), "{case}\n{run}"),
        }
    }
    // Unprivileged, nobody can write root's cgroups: the worker stays where jobsup is.
    let run = jobsup_as!(User::Unprivileged)
        .args(["--mode", "exec"])
        .processor(bin!("fx-fds"), ["cgroup"])
        .stdin("x\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    assert!(!v2_line(&records[0]).contains("/jobsup-"), "{run}");
}

#[test]
fn after_a_kill_the_slots_next_process_starts_alive_in_a_cgroup_of_its_own() {
    let writable = own_cgroup_dir(None).is_some_and(|d| can_make_dir_in(&d));
    assert!(
        jobsup_tests::running_as_root() && writable,
        "cannot test cgroup placement here: it needs root and a writable cgroup v2 hierarchy"
    );
    // Jobs 1 and 3 outlive their ttl and are killed through the cgroup; a process created
    // in a killed cgroup is killed at birth by this kernel, so the next ones must each get
    // a fresh directory (the same name made again, or `w1-N` while the old one empties).
    let script = r#"if [ "$1" = hang ]; then exec sleep 30; fi; cat /proc/self/cgroup"#;
    let run = jobsup_as!(User::Invoker)
        .args(["--mode", "exec", "-j", "1", "--isolate", "none"])
        .args(["--ttl", "300ms", "--cleanup", "0"])
        .processor("sh", ["-c", script, "sh", "{}"])
        .stdin("hang\na\nhang\nb\nc\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 5, "{run}");
    for r in &records {
        if ["1", "3"].contains(&r.id()) {
            assert_eq!(r.outcome(), "killed", "{r}\n{run}");
            continue;
        }
        assert_eq!(r.outcome(), "ok", "{r}\n{run}");
        let line = v2_line(r);
        let dir = line.rsplit('/').next().unwrap_or_default();
        assert!(
            line.contains("/jobsup-") && (dir == "w1" || dir.starts_with("w1-")),
            "not in its slot's cgroup: {line:?}\n{r}"
        );
    }
}

#[test]
fn the_pid_namespace_init_holds_nothing_of_jobsups() {
    // If the init kept the report pipe, jobsup would take the worker's start for
    // unfinished until the worker exited: the first job would never be handed over while
    // the worker waits for it. If it kept other fds, other workers' pipes would stay open.
    for fallback in FALLBACKS {
        for user in User::BOTH {
            let mut j = with_fd_7(user).args(["--mode", "lines", "-j", "1", "--isolate", "pid"]);
            if let Some(f) = fallback {
                j = j.env("JOBSUP_FALLBACK", f);
            }
            let mut bg = j
                .processor(bin!("fx-fds"), ["lines"])
                .stdin("a\n")
                .keep_stdin_open()
                .spawn();
            let case = format!("{user:?} JOBSUP_FALLBACK={fallback:?}");
            wait_until(WAIT, &format!("{case}: the first record"), || {
                !bg.records_so_far().is_empty()
            });
            let first = bg.records_so_far().remove(0);
            assert_eq!(first.output(), Some("0 1 2"), "{case}: {first}");
            // The record names the processor; its parent is the namespace's init, which
            // holds no fd at all.
            let worker = first.pid().expect("a pid");
            let init = jobsup_tests::proc_ppid(worker).expect("the worker's parent");
            assert!(jobsup_tests::is_namespace_init(init), "{case}: {init}");
            let fds: Vec<String> = std::fs::read_dir(format!("/proc/{init}/fd"))
                .expect("the init's fds")
                .flatten()
                .map(|e| {
                    std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                })
                .collect();
            assert!(fds.is_empty(), "{case}: the init holds {fds:?}");
            bg.close_stdin();
            let run = bg.wait();
            assert_eq!(run.code(), 0, "{case}\n{run}");
        }
    }
}

#[test]
fn a_failed_start_is_reported_with_the_step_it_failed_at() {
    for user in User::BOTH {
        for flags in [&[][..], &["--isolate", "pid"][..]] {
            let case = format!("{user:?} {flags:?}");
            // The exec itself: executable by its mode, but no format the kernel knows.
            let j = jobsup_as!(user);
            let bad = j.write_file("bad.bin", b"\x00\x01\x02garbage");
            std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
            let run = j
                .args(["--mode", "exec"])
                .args(flags)
                .processor(&bad, [] as [&str; 0])
                .stdin("x\n")
                .run();
            let records = run.records();
            assert_eq!(records.len(), 1, "{case}\n{run}");
            assert_eq!(records[0].outcome(), "failed", "{case}: {}", records[0]);
            assert!(
                records[0]
                    .error()
                    .unwrap_or_default()
                    .contains("Exec format error"),
                "{case}: {}",
                records[0]
            );
            // A limit no worker could be given (more open files than fs.nr_open) is refused
            // before any spawn, rather than failing each job at its rlimit step.
            let run = jobsup_as!(user)
                .args(["--mode", "exec", "--open-files", "2000000000"])
                .args(flags)
                .processor(bin!("fx-fds"), [] as [&str; 0])
                .stdin("x\n")
                .run();
            assert_eq!(run.code(), 125, "{case}\n{run}");
            assert!(run.records().is_empty(), "{case}\n{run}");
            assert!(
                run.stderr.contains("open_files") && run.stderr.contains("2000000000"),
                "{case}\n{run}"
            );
        }
    }
}

#[test]
fn a_low_soft_open_files_limit_is_raised_for_jobsup_and_given_back_to_each_job() {
    // 40 workers hold some 400 of jobsup's fds (and 40 deadline timers from the start):
    // far past a soft limit of 64, which jobsup raises to the hard one. Each job must see
    // the 64 it would have had, started by hand.
    for user in User::BOTH {
        for mode in ["exec", "native"] {
            let j = jobsup_as!(user).through("sh", ["-c", "ulimit -Sn 64 && exec \"$@\"", "sh"]);
            let j = if mode == "exec" {
                j.args(["--mode", "exec", "-j", "40"])
                    .processor("sh", ["-c", "ulimit -Sn; sleep 0.2", "sh", "{}"])
            } else {
                j.args(["-j", "40"])
                    .processor(bin!("fx-fds"), ["open-files"])
            };
            let run = j.stdin(jobsup_tests::lines(80, |i| i.to_string())).run();
            let case = format!("{user:?} --mode {mode}");
            assert_eq!(run.code(), 0, "{case}\n{run}");
            let records = run.records();
            assert_eq!(records.len(), 80, "{case}\n{run}");
            for r in &records {
                assert_eq!(r.outcome(), "ok", "{case}: {r}");
                assert_eq!(r.output().map(str::trim_end), Some("64"), "{case}: {r}");
            }
        }
    }
}

#[test]
fn workers_past_the_hard_open_files_limit_are_not_started_and_every_job_runs() {
    // 100 workers need about 2064 fds; a hard limit of 300 holds 11 of them. Started
    // anyway, the 12th would fail with EMFILE: a native run would end there (exit 125)
    // and an exec run would fail jobs. Cut to what fits, every job runs.
    for user in User::BOTH {
        for mode in ["exec", "native"] {
            let j = jobsup_as!(user).through("sh", ["-c", "ulimit -n 300 && exec \"$@\"", "sh"]);
            let j = if mode == "exec" {
                j.args(["--mode", "exec", "-j", "100"])
                    .processor("sh", ["-c", "sleep 0.05", "sh", "{}"])
            } else {
                j.args(["-j", "100"])
                    .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
            };
            let run = j.stdin(jobsup_tests::lines(200, |_| "50".into())).run();
            let case = format!("{user:?} --mode {mode}");
            assert_eq!(run.code(), 0, "{case}\n{run}");
            assert!(run.stderr.contains("running 11 at a time"), "{case}\n{run}");
            let records = run.records();
            assert_eq!(records.len(), 200, "{case}\n{run}");
            for r in &records {
                assert_eq!(r.outcome(), "ok", "{case}: {r}");
            }
            let slots: std::collections::BTreeSet<u64> = records
                .iter()
                .filter_map(|r| r.0["worker"].as_u64())
                .collect();
            assert!(
                slots.len() <= 23,
                "{case}: {} workers: {slots:?}",
                slots.len()
            );
        }
    }
}
