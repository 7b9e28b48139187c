//! The sandbox around every worker: private directory, cleared environment, no new
//! privileges, and no process of a worker's tree surviving its hard kill or jobsup's own
//! death, even one that left the process group.
//!
//! Each case runs twice: as the invoking user (root on CI, where jobsup uses cgroups) and as
//! an unprivileged user (nobody, through `setpriv`, where cgroups are not writable and the
//! process group, the tree walk, the environment tag and the guard do the work).

use jobsup_tests::{
    bin, can_make_dir_in, guard_of, is_guard, jobsup, jobsup_as, own_cgroup_dir, pid_alive,
    sleepers, wait_until, Jobsup, Record, Run, User, WAIT,
};

fn only_record(run: &Run) -> Record {
    let mut records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    records.remove(0)
}

/// A `sleep` argument no other test uses at the same time.
fn token(case: u32, user: User) -> String {
    format!("{}.{}{}", 700 + case, std::process::id(), user as u32)
}

#[test]
fn a_secret_in_jobsups_environment_is_invisible_unless_passed() {
    for user in User::BOTH {
        let show =
            r#"echo "secret=[$MY_SECRET] path=[${PATH:+set}] workdir=[${JOBSUP_WORKDIR:+set}]""#;
        let hidden = only_record(
            &jobsup_as!(user)
                .env("MY_SECRET", "hunter2")
                .args(["--mode", "exec"])
                .processor("sh", ["-c", show])
                .stdin("x\n")
                .run(),
        );
        assert_eq!(
            hidden.output(),
            Some("secret=[] path=[set] workdir=[set]\n"),
            "{user:?}: {hidden}"
        );
        let passed = only_record(
            &jobsup_as!(user)
                .env("MY_SECRET", "hunter2")
                .args(["--mode", "exec", "--pass-env", "MY_SECRET"])
                .processor("sh", ["-c", show])
                .stdin("x\n")
                .run(),
        );
        assert_eq!(
            passed.output(),
            Some("secret=[hunter2] path=[set] workdir=[set]\n"),
            "{user:?}: {passed}"
        );
    }
}

#[test]
fn each_worker_gets_a_private_directory_that_is_removed_afterwards() {
    for user in User::BOTH {
        // `--cwd scratch`: the worker runs in it (by default it runs where jobsup started).
        let run = jobsup_as!(user)
            .args(["--mode", "exec", "-j", "2", "--cwd", "scratch"])
            .processor(
                "sh",
                [
                    "-c",
                    r#"printf '%s %s %s %s\n' "$JOBSUP_WORKDIR" "$(stat -c %a "$JOBSUP_WORKDIR")" "$(pwd)" "$(stat -c %u "$JOBSUP_WORKDIR")""#,
                ],
            )
            .stdin("a\nb\n")
            .run();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
        let recs = run.records();
        assert_eq!(recs.len(), 2, "{run}");
        let mut dirs = Vec::new();
        for r in &recs {
            let out = r.output().expect("output");
            let parts: Vec<&str> = out.split_whitespace().collect();
            assert_eq!(parts.len(), 4, "{r}");
            assert_eq!(parts[1], "700", "private: mode 0700 ({user:?}: {r})");
            assert_eq!(parts[0], parts[2], "the worker runs in it ({r})");
            // SAFETY: getuid cannot fail.
            let own_uid = unsafe { libc::getuid() };
            let expected_owner = match user {
                User::Unprivileged if jobsup_tests::running_as_root() => jobsup_tests::NOBODY,
                _ => own_uid,
            };
            assert_eq!(
                parts[3],
                expected_owner.to_string(),
                "owned by the worker's user ({r})"
            );
            dirs.push(parts[0].to_string());
        }
        assert_ne!(dirs[0], dirs[1], "each worker has its own");
        for d in dirs {
            assert!(
                !std::path::Path::new(&d).exists(),
                "{d} outlived its worker"
            );
        }
    }
}

#[test]
fn workers_cannot_gain_privileges_or_dump_core() {
    let run = jobsup!()
        .args(["--mode", "exec"])
        .processor("sh", ["-c", "grep NoNewPrivs /proc/self/status; ulimit -c"])
        .stdin("x\n")
        .run();
    let out = only_record(&run).output().unwrap_or_default().to_string();
    assert_eq!(out, "NoNewPrivs:\t1\n0\n", "{run}");
}

#[test]
fn a_setsid_grandchild_dies_with_its_workers_hard_kill() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let pid_file = j.dir().join("escaped.pid");
        // The worker starts a grandchild in a session of its own (out of the worker's
        // process group), then ignores its cleanup request.
        let script = j.write_file(
            "escape.sh",
            format!(
                "while IFS= read -r line; do\n\
                 ( setsid sh -c 'echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; exec sleep 1000' & )\n\
                 trap '' TERM\n\
                 while :; do :; done\n\
                 done\n",
                pid = pid_file.display()
            ),
        );
        // Without the pid namespace (whose end would take the grandchild anyway): the
        // tree walk and the cgroup alone.
        let bg = j
            .args(["--mode", "lines", "--ttl", "300ms", "--cleanup", "300ms"])
            .args(["--isolate", "none"])
            .processor("sh", [script])
            .stdin("go\n")
            .keep_stdin_open()
            .spawn();
        wait_until(WAIT, "the job is killed", || {
            bg.records_so_far().iter().any(|r| r.outcome() == "killed")
        });
        let escaped: i32 = std::fs::read_to_string(&pid_file)
            .expect("the grandchild wrote its pid")
            .trim()
            .parse()
            .expect("a pid");
        // jobsup is still running (its stdin is open): the kill itself must have reached it.
        wait_until(WAIT, "the escaped grandchild is gone", || {
            !pid_alive(escaped)
        });
        assert!(
            !bg.has_exited(),
            "{user:?}: jobsup must still be running for this to prove anything"
        );
    }
}

/// The one start-up line that says how workers are contained.
fn sandbox_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("sandbox:")).collect();
    assert_eq!(lines.len(), 1, "exactly one sandbox line:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn the_containment_in_use_is_logged_once_at_start() {
    let run = |user: User, flags: &[&str]| {
        let run = jobsup_as!(user)
            .args(["--mode", "exec"])
            .args(flags)
            .processor("true", [] as [&str; 0])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{run}");
        sandbox_line(&run.stderr)
    };
    let default = run(User::Invoker, &[]);
    // As root with cgroup v2, an exec slot's processes share its namespaces.
    let expected = if jobsup_tests::running_as_root() && cgroup_v2_writable() {
        "hard kill through their cgroup (an exec slot's processes share its pid and mount namespaces"
    } else {
        "hard kill through their pid namespace"
    };
    assert!(default.contains(expected), "{default}");
    // A network namespace is not shared: each job gets its own, behind its own init.
    let net = run(User::Invoker, &["--isolate", "net"]);
    assert!(
        net.contains("hard kill through their pid namespace"),
        "{net}"
    );
    let default = run(User::Invoker, &["--isolate", "none"]);
    let expected = if cgroup_v2_writable() {
        "hard kill through their cgroup"
    } else {
        "hard kill through their process group"
    };
    assert!(default.contains(expected), "{default}");
    let isolated = run(User::Unprivileged, &["--isolate", "pid"]);
    assert!(
        isolated.contains("hard kill through their pid namespace"),
        "{isolated}"
    );
    if jobsup_tests::running_as_root() {
        // nobody cannot write root's cgroups.
        let unprivileged = run(User::Unprivileged, &["--isolate", "none"]);
        assert!(
            unprivileged.contains("hard kill through their process group"),
            "{unprivileged}"
        );
    }
}

#[test]
fn isolate_net_denies_a_loopback_listener_outside() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    // The processor says what happened, so that a worker that never started cannot pass
    // for a denied connection.
    let connect = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5)\n    print('connected')\nexcept OSError as e:\n    print('denied')"
    );
    for user in User::BOTH {
        let run_with = |flags: &[&str]| {
            only_record(
                &jobsup_as!(user)
                    .args(["--mode", "exec"])
                    .args(flags)
                    .processor("python3", ["-c", connect.as_str()])
                    .stdin("x\n")
                    .run(),
            )
        };
        let open = run_with(&[]);
        assert_eq!(open.output(), Some("connected\n"), "{user:?}: {open}");
        let isolated = run_with(&["--isolate", "net"]);
        assert_eq!(isolated.output(), Some("denied\n"), "{user:?}: {isolated}");
    }
}

#[test]
fn isolate_pid_puts_the_worker_behind_an_init_for_an_unprivileged_user() {
    let run = jobsup_as!(User::Unprivileged)
        .args(["--mode", "exec", "--isolate", "pid,net"])
        .processor("sh", ["-c", "echo \"uid=$(id -u) pid=$$\""])
        .stdin("x\n")
        .run();
    let out = only_record(&run).output().unwrap_or_default().to_string();
    // PID 1 is jobsup's init; the worker is its first child.
    assert!(out.ends_with("pid=2\n"), "{out:?}\n{run}");
    assert!(!out.starts_with("uid=0 "), "not root: {out:?}");
}

/// A worker whose grandchild leaves by every door (own session, empty environment,
/// parent gone) is killed with its tree at the hard kill, while jobsup runs on.
fn fully_escaped_grandchild_dies_at_the_hard_kill(user: User, flags: &[&str]) {
    fully_escaped_grandchild_dies_under(jobsup_as!(user), token(flags.len() as u32, user), flags);
}

/// The same, for any way of starting jobsup; returns jobsup's stderr so far.
fn fully_escaped_grandchild_dies_under(jobsup: Jobsup, token: String, flags: &[&str]) -> String {
    let script = format!(
        "trap '' TERM; while IFS= read -r l; do ( setsid env -i sleep {token} & ); while :; do :; done; done"
    );
    let bg = jobsup
        .args([
            "--mode",
            "lines",
            "-j",
            "1",
            "--ttl",
            "300ms",
            "--cleanup",
            "200ms",
        ])
        .args(flags)
        .processor("sh", ["-c", script.as_str()])
        .stdin("go\n")
        .keep_stdin_open()
        .spawn();
    wait_until(WAIT, "the escaped grandchild runs", || {
        !sleepers(&token).is_empty()
    });
    wait_until(WAIT, "the job is killed", || {
        bg.records_so_far().iter().any(|r| r.outcome() == "killed")
    });
    wait_until(WAIT, "nothing of the worker's tree survives", || {
        sleepers(&token).is_empty()
    });
    assert!(
        !bg.has_exited(),
        "{flags:?}: jobsup must still run for this to prove anything"
    );
    bg.stderr_so_far()
}

/// Removes a test's cgroup directory however the test ends.
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // After a failure, jobsup's guard may still be emptying it.
        let until = std::time::Instant::now() + WAIT;
        while std::fs::remove_dir(&self.0).is_err() && self.0.exists() {
            if std::time::Instant::now() > until {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn a_delegated_cgroup_v1_pids_hierarchy_contains_an_unprivileged_run() {
    // As root, the test hands nobody a cgroup of its own in the v1 pids hierarchy (as a
    // service manager delegates one) and starts jobsup as nobody inside it. No cgroup v2
    // is writable for nobody, so jobsup must kill through the v1 pids cgroup: stop forks,
    // then kill every listed process, which reaches a grandchild that escaped every other
    // way.
    assert!(
        jobsup_tests::running_as_root(),
        "cannot test a delegated cgroup here: handing one to nobody needs root"
    );
    let Some(parent) = own_cgroup_dir(Some("pids")).filter(|d| can_make_dir_in(d)) else {
        // No cgroup v1 pids hierarchy to delegate from: then an unprivileged jobsup has
        // no cgroup to kill through, and must say that it falls back to the group.
        let run = jobsup_as!(User::Unprivileged)
            .args(["--mode", "exec"])
            .processor("true", [] as [&str; 0])
            .stdin("x\n")
            .run();
        let line = sandbox_line(&run.stderr);
        assert!(
            line.contains("hard kill through their process group"),
            "{line}"
        );
        return;
    };
    let dir = TestCgroup(parent.join(format!("jobsup-test-delegated-{}", std::process::id())));
    std::fs::create_dir(&dir.0).expect("a cgroup for the test");
    for path in [
        dir.0.clone(),
        dir.0.join("cgroup.procs"),
        dir.0.join("tasks"),
    ] {
        std::os::unix::fs::chown(
            &path,
            Some(jobsup_tests::NOBODY),
            Some(jobsup_tests::NOBODY),
        )
        .expect("delegate the cgroup to nobody");
    }
    let jobsup = Jobsup::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#,
            "sh",
        ])
        .arg(&dir.0)
        .arg("setpriv")
        .arg(format!("--reuid={}", jobsup_tests::NOBODY))
        .arg(format!("--regid={}", jobsup_tests::NOBODY))
        .args(["--clear-groups", bin!("jobsup-shim"), "run"]);
    // Its HOME and TMPDIR (where workers' directories go) are the test's directory.
    std::fs::set_permissions(
        jobsup.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("open the test directory to nobody");
    // Without the pid namespace, which would end the grandchild by itself.
    let stderr = fully_escaped_grandchild_dies_under(
        jobsup,
        token(40, User::Unprivileged),
        &["--isolate", "none"],
    );
    let line = sandbox_line(&stderr);
    assert!(line.contains("hard kill through their cgroup"), "{line}");
    assert!(line.contains("cgroup v1 pids controller"), "{line}");
}

#[test]
fn a_fully_escaped_grandchild_dies_at_the_hard_kill() {
    for user in User::BOTH {
        fully_escaped_grandchild_dies_at_the_hard_kill(user, &["--isolate", "pid"]);
    }
    // Without a pid namespace, only a cgroup holds such a process: where a writable cgroup
    // v2 hierarchy exists (CI has one), jobsup must use it.
    if cgroup_v2_writable() {
        fully_escaped_grandchild_dies_at_the_hard_kill(User::Invoker, &[]);
    }
}

/// Voluntary context switches of a process so far (each wait of the guard's loop is one).
fn voluntary_switches(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

fn nothing_survives_a_killed_jobsup(case: u32, user: User, flags: &[&str]) {
    let tokens: Vec<String> = (0..3).map(|i| token(10 + i + 3 * case, user)).collect();
    // One descendant of each kind: in the worker's group, in a session of its own, and in
    // a session of its own with an empty environment (no tag). The job goes on running
    // (waiting for the first): what a finished job leaves behind is killed at its end.
    let script = format!(
        "while IFS= read -r l; do sleep {a} & ( setsid sleep {b} & ); ( setsid env -i sleep {c} & ); wait; echo \"$l\"; done",
        a = tokens[0],
        b = tokens[1],
        c = tokens[2],
    );
    let bg = jobsup_as!(user)
        .args(["--mode", "lines", "-j", "1", "--ttl", "600s"])
        .args(flags)
        .processor("sh", ["-c", script.as_str()])
        .stdin("go\n")
        .keep_stdin_open()
        .spawn();
    let jobsup = bg.pid();
    wait_until(WAIT, "every descendant runs", || {
        tokens.iter().all(|t| !sleepers(t).is_empty())
    });
    // jobsup's children: the worker, its guard, and the escapees it adopted.
    let escapees: Vec<i32> = tokens.iter().flat_map(|t| sleepers(t)).collect();
    let workers: Vec<i32> = bg
        .children()
        .into_iter()
        .filter(|p| !is_guard(*p) && !escapees.contains(p))
        .collect();
    assert_eq!(
        workers.len(),
        1,
        "{user:?} {flags:?}: jobsup's children {workers:?}"
    );
    let worker = workers[0];
    let guard = guard_of(jobsup).expect("jobsup runs a guard");
    // Without cgroups the guard learns of the empty-environment escapee by watching the
    // tree between its waits: let it finish a few rounds after the escapee appeared.
    let switches = voluntary_switches(guard).expect("the guard's status");
    wait_until(WAIT, "the guard has looked at the tree", || {
        voluntary_switches(guard).is_some_and(|n| n >= switches + 3)
    });
    let cgroups = guarded_cgroups(guard);
    bg.kill_hard();
    wait_until(WAIT, "nothing of the worker's tree survives", || {
        !pid_alive(worker) && tokens.iter().all(|t| sleepers(t).is_empty())
    });
    wait_until(WAIT, "the guard is done", || !pid_alive(guard));
    for dir in cgroups {
        assert!(
            !dir.exists(),
            "{user:?}: {} outlived the run",
            dir.display()
        );
    }
}

#[test]
fn killing_jobsup_with_sigkill_leaves_no_worker_or_descendant() {
    for user in User::BOTH {
        nothing_survives_a_killed_jobsup(0, user, &[]);
        nothing_survives_a_killed_jobsup(1, user, &["--isolate", "pid"]);
    }
    // With limits, jobsup may use more hierarchies (cgroup v1 memory and pids here): the
    // guard removes those too.
    nothing_survives_a_killed_jobsup(2, User::Invoker, &["--memory", "1GiB"]);
}

#[test]
fn a_clean_run_leaves_no_cgroup_and_no_guard() {
    let bg = jobsup!()
        .args(["--mode", "exec"])
        .processor("true", [] as [&str; 0])
        .stdin("x\n")
        .keep_stdin_open()
        .spawn();
    let jobsup = bg.pid();
    wait_until(WAIT, "the record", || !bg.records_so_far().is_empty());
    let guard = guard_of(jobsup).expect("jobsup runs a guard");
    let cgroups = guarded_cgroups(guard);
    if cgroup_v2_writable() {
        assert!(!cgroups.is_empty(), "jobsup made no cgroup");
    }
    let mut bg = bg;
    bg.close_stdin();
    let run = bg.wait();
    assert_eq!(run.code(), 0, "{run}");
    wait_until(WAIT, "the guard is gone", || !pid_alive(guard));
    for dir in cgroups {
        assert!(!dir.exists(), "{} outlived the run", dir.display());
    }
}

/// The cgroup directories jobsup made (`jobsup-<pid>` in each hierarchy), as it told its
/// guard on the guard's command line.
fn guarded_cgroups(guard: i32) -> Vec<std::path::PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{guard}/cmdline")).expect("the guard's cmdline");
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .filter(|w| w[0] == b"--cgroup")
        .map(|w| std::path::PathBuf::from(String::from_utf8_lossy(w[1]).into_owned()))
        .collect()
}

/// Whether this process could make a cgroup v2 directory under its own cgroup, as jobsup
/// would.
fn cgroup_v2_writable() -> bool {
    own_cgroup_dir(None).is_some_and(|d| can_make_dir_in(&d))
}

#[test]
fn cwd_runs_workers_where_asked_and_they_keep_their_private_directory() {
    let j = jobsup!();
    // A script given relative to jobsup's own directory, as `python3 -m pkg` users do.
    j.write_file(
        "job.sh",
        r#"printf '%s %s\n' "$(pwd)" "$(stat -c %a "$JOBSUP_WORKDIR")""#,
    );
    let here = j.dir().canonicalize().expect("the test directory");
    let run = j
        .args(["--mode", "exec", "--cwd", "."])
        .processor("sh", ["job.sh"])
        .stdin("x\n")
        .run();
    let r = only_record(&run);
    assert_eq!(r.outcome(), "ok", "{r}\n{run}");
    assert_eq!(
        r.output().unwrap_or_default(),
        format!("{} 700\n", here.display()),
        "{r}"
    );
    let missing = jobsup!()
        .args(["--mode", "exec", "--cwd", "no/such/dir"])
        .processor("true", [] as [&str; 0])
        .stdin("x\n")
        .run();
    assert_eq!(missing.code(), 125, "{missing}");
    assert!(missing.stderr.contains("--cwd no/such/dir"), "{missing}");
    assert!(missing.records().is_empty(), "{missing}");
}

#[test]
fn processors_start_with_default_signal_dispositions_and_nothing_blocked() {
    // jobsup itself ignores SIGPIPE (as every Rust program does) and blocks signals while it
    // starts a child: neither may leak into the processor.
    for flags in [&[][..], &["--isolate", "pid"][..]] {
        let run = jobsup!()
            .args(["--mode", "exec"])
            .args(flags)
            .processor("grep", ["-E", "^Sig(Blk|Ign)", "/proc/self/status"])
            .stdin("x\n")
            .run();
        let r = only_record(&run);
        assert_eq!(
            r.output(),
            Some("SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"),
            "{flags:?}: {r}\n{run}"
        );
    }
}

#[test]
fn signals_jobsup_was_started_ignoring_are_not_ignored_by_processors() {
    // A `nohup` or a shell's `trap ''` hands jobsup ignored signals, a real-time one among
    // them; a processor starts with none ignored, whichever way its clone reset them.
    for flags in [
        &[][..],
        &["--isolate", "pid"][..],
        &["--isolate", "none"][..],
    ] {
        let run = jobsup_tests::Jobsup::new("sh")
            .args(["-c", "trap '' QUIT 34 64; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_jobsup-shim"))
            .args(["run", "--mode", "exec"])
            .args(flags)
            .processor("grep", ["-E", "^SigIgn", "/proc/self/status"])
            .stdin("x\ny\n")
            .run();
        let records = run.records();
        assert_eq!(records.len(), 2, "{flags:?}\n{run}");
        for r in &records {
            assert_eq!(
                r.output(),
                Some("SigIgn:\t0000000000000000\n"),
                "{flags:?}: {r}\n{run}"
            );
        }
    }
}

#[test]
fn a_variable_set_on_purpose_replaces_the_passed_through_one() {
    let run = jobsup!()
        .env("LANG", "C")
        .args(["--mode", "exec", "--env", "LANG=fr_FR.UTF-8"])
        .processor("sh", ["-c", "env | grep ^LANG="])
        .stdin("x\n")
        .run();
    let r = only_record(&run);
    assert_eq!(r.output(), Some("LANG=fr_FR.UTF-8\n"), "{r}\n{run}");
}

#[test]
fn a_process_that_cannot_be_executed_fails_its_job_and_the_run_goes_on() {
    let j = jobsup!();
    // Executable by its mode, but no format the kernel knows: execve itself fails.
    let bad = j.write_file("bad.bin", b"\x00\x01\x02garbage");
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let run = j
        .args(["--mode", "exec"])
        .processor(&bad, [] as [&str; 0])
        .stdin("a\nb\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 2, "one record per job\n{run}");
    for r in &records {
        assert_eq!(r.outcome(), "failed", "{r}");
        assert!(
            r.error().unwrap_or_default().contains("Exec format error"),
            "{r}"
        );
    }
    // A NUL byte cannot be an argument: said, not crashed on.
    let nul = only_record(
        &jobsup!()
            .args(["--mode", "exec"])
            .processor("echo", ["{}"])
            .stdin("a\0b\n")
            .run(),
    );
    assert_eq!(nul.outcome(), "failed", "{nul}");
    assert!(
        nul.error().unwrap_or_default().contains("NUL byte"),
        "{nul}"
    );
}

#[test]
fn many_isolated_workers_start_while_jobsup_is_busy() {
    // An isolated worker's first process forks again (to stay as PID 1's shim). That
    // second fork must not meet a lock another jobsup thread held at the first: start
    // enough of them, with the other threads busy, for such a hang to show.
    let run = jobsup!()
        .args(["--mode", "exec", "-j", "4", "--isolate", "pid"])
        .processor("true", [] as [&str; 0])
        .stdin(jobsup_tests::lines(300, |i| i.to_string()))
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let records = run.records();
    assert_eq!(records.len(), 300, "{run}");
    assert!(records.iter().all(|r| r.outcome() == "ok"), "{run}");
}

#[test]
fn a_working_directory_that_cannot_be_entered_is_said_so() {
    // Before any job: a directory jobsup's user cannot enter.
    if jobsup_tests::running_as_root() {
        let j = jobsup_as!(User::Unprivileged);
        let private = j.dir().join("private");
        std::fs::create_dir(&private).expect("mkdir");
        std::fs::set_permissions(
            &private,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        let run = j
            .args(["--mode", "exec", "--cwd"])
            .arg(&private)
            .processor("true", [] as [&str; 0])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 125, "{run}");
        assert!(run.stderr.contains("Permission denied"), "{run}");
        assert!(run.records().is_empty(), "{run}");
    }
    // During the run: the first job removes it; the second cannot start there, and its
    // record says where starting went wrong (not that the processor is missing).
    let j = jobsup!();
    std::fs::create_dir(j.dir().join("gone")).expect("mkdir");
    let run = j
        .args(["--mode", "exec", "-j", "1", "--cwd", "gone"])
        .processor("sh", ["-c", r#"rmdir "$PWD""#])
        .stdin("a\nb\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 2, "{run}");
    assert_eq!(records[0].outcome(), "ok", "{}", records[0]);
    assert_eq!(records[1].outcome(), "failed", "{}", records[1]);
    assert!(
        records[1]
            .error()
            .unwrap_or_default()
            .contains("entering its working directory failed"),
        "{}",
        records[1]
    );
}
