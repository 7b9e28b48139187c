//! A hostile processor against the default containment (a pid namespace behind jobsup's
//! init, its own `/proc`, read-only cgroup file systems, a cgroup namespace, a user
//! namespace when unprivileged; no capabilities). Each case tries one way out, as root and
//! as nobody, and checks that nothing was reachable and nothing is left.
//!
//! Escapees are found from outside by their command line (`sleep <token>`, unique to the
//! case), never by a pid they report: inside their namespace, pids are not the host's.

use jobsup_tests::{
    guard_of, jobsup_as, pid_alive, sleepers, wait_until, Background, Jobsup, User, WAIT,
};

fn token(case: u32, user: User) -> String {
    format!("{}.{}{}", 900 + case, std::process::id(), user as u32)
}

/// A lines-mode jobsup running `script` (with `sh -c`) on one worker, stdin kept open.
fn lines(user: User, script: &str, extra: &[&str]) -> Jobsup {
    jobsup_as!(user)
        .args([
            "--mode",
            "lines",
            "-j",
            "1",
            "--ttl",
            "5s",
            "--cleanup",
            "1s",
        ])
        .args(extra)
        .processor("sh", ["-c", script])
        .keep_stdin_open()
}

fn first_record(bg: &Background, what: &str) -> jobsup_tests::Record {
    wait_until(WAIT, what, || !bg.records_so_far().is_empty());
    bg.records_so_far().remove(0)
}

#[test]
fn a_worker_can_neither_see_nor_signal_jobsup_or_its_guard() {
    for user in User::BOTH {
        // Given jobsup's and the guard's pids, the job kills them, then everything else it
        // can find through /proc, then every process it may signal (`kill -1`).
        let script = r#"while IFS= read -r pids; do
            for p in $pids; do kill -9 "$p" 2>/dev/null && echo "killed $p"; done
            seen=""
            for d in /proc/[0-9]*; do
                p=${d#/proc/}
                [ "$p" = "$$" ] && continue
                seen="$seen $p:$(cat $d/comm 2>/dev/null)"
                kill -9 "$p" 2>/dev/null
            done
            kill -9 -1 2>/dev/null
            echo "seen$seen"
        done"#;
        let mut bg = lines(user, script, &[]).spawn();
        let jobsup = bg.pid();
        wait_until(WAIT, "the guard runs", || guard_of(jobsup).is_some());
        let guard = guard_of(jobsup).expect("a guard");
        bg.write_stdin(format!("{jobsup} {guard}\n"));
        let record = first_record(&bg, "the job's record");
        let out = record.output().unwrap_or_default().to_string();
        let case = format!("{user:?}: {record}");
        assert_eq!(record.outcome(), "ok", "{case}");
        assert!(!out.contains("killed"), "{case}");
        // Only its own namespace: jobsup's init (PID 1), nothing else of jobsup's.
        assert!(out.contains(" 1:jobsup-init"), "{case}");
        assert!(!out.contains("jobsup-guard"), "{case}");
        assert!(!out.contains("jobsup-shim"), "{case}");
        assert!(pid_alive(jobsup) && pid_alive(guard), "{case}");
        bg.close_stdin();
        let run = bg.wait();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
    }
}

#[test]
fn a_worker_cannot_move_itself_out_of_its_cgroup() {
    for user in User::BOTH {
        // Every cgroup file system's top-level cgroup.procs, as listed in mountinfo: the
        // way out of a cgroup.kill a root job would take.
        let script = r#"while IFS= read -r l; do
            for m in $(awk '$9 ~ /^cgroup/ {print $5}' /proc/self/mountinfo); do
                if echo $$ > "$m/cgroup.procs" 2>/dev/null; then echo "moved to $m"; fi
            done
            echo tried
        done"#;
        let mut bg = lines(user, script, &[]).spawn();
        bg.write_stdin("go\n");
        let record = first_record(&bg, "the job's record");
        let case = format!("{user:?}: {record}");
        assert_eq!(record.output(), Some("tried"), "{case}");
        bg.close_stdin();
        let run = bg.wait();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
    }
}

#[test]
fn a_double_forked_daemon_with_a_cleared_environment_ends_with_its_job() {
    for user in User::BOTH {
        let token = token(1, user);
        // Its own session, no JOBSUP_* variable, reparented away from the worker.
        let script = format!(
            "while IFS= read -r l; do ( setsid env -i sleep {token} & ); echo started; done"
        );
        let mut bg = lines(user, &script, &[]).spawn();
        bg.write_stdin("go\n");
        let record = first_record(&bg, "the job's record");
        assert_eq!(record.outcome(), "ok", "{user:?}: {record}");
        // Leftovers die at the end of their job, while jobsup and the worker go on.
        wait_until(WAIT, "the daemon is gone", || sleepers(&token).is_empty());
        assert!(!bg.has_exited(), "{user:?}: jobsup must still run");
        bg.close_stdin();
        let run = bg.wait();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
    }
}

/// Live processes whose command line has `arg` as an argument.
fn running_with_arg(arg: &std::path::Path) -> Vec<i32> {
    let arg = arg.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg))
                && pid_alive(pid)
        })
        .collect()
}

#[test]
fn a_fork_hopper_dies_with_a_killed_jobsup() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        // Each generation starts the next and exits: none lives long enough to be listed
        // and killed by pid, and none is ever jobsup's child.
        // Each one clears its environment too: no JOBSUP_* tag finds it.
        let hop = j.write_file("hop.sh", "sleep 0.05\nenv -i /bin/sh \"$0\" &\nexit 0\n");
        // The job goes on meanwhile: at its end, its leftovers would be killed anyway.
        let script = format!(
            "while IFS= read -r l; do setsid env -i /bin/sh {} & while :; do sleep 1; done; done",
            hop.display()
        );
        let mut bg = j
            .args(["--mode", "lines", "-j", "1"])
            .processor("sh", ["-c", &script])
            .keep_stdin_open()
            .spawn();
        bg.write_stdin("go\n");
        wait_until(WAIT, "a hopper runs", || !running_with_arg(&hop).is_empty());
        let run = bg.kill_hard();
        // One generation lives 50 ms and starts the next before it exits, so a listing
        // that finds none three polls in a row (over more than that) finds them all gone.
        let mut empty_since = None;
        wait_until(WAIT, "no hopper is left", || {
            if !running_with_arg(&hop).is_empty() {
                empty_since = None;
                return false;
            }
            let since = *empty_since.get_or_insert_with(std::time::Instant::now);
            since.elapsed() > std::time::Duration::from_millis(200)
        });
        drop(run);
    }
}

#[test]
fn a_worker_holds_no_capability_and_sees_no_host_process() {
    for user in User::BOTH {
        let run = jobsup_as!(user)
            .args(["--mode", "exec"])
            .processor(
                "sh",
                [
                    "-c",
                    "grep ^CapEff /proc/self/status; ls /proc | grep -c '^[0-9]'; cat /proc/self/cgroup | tail -1",
                ],
            )
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
        let records = run.records();
        let out = records[0].output().unwrap_or_default().to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "CapEff:\t0000000000000000", "{user:?}: {out}");
        // The init, the shell, and `ls` (and perhaps `grep`): nothing of the host's.
        let visible: usize = lines[1].parse().expect("a count");
        assert!(visible <= 4, "{user:?}: sees {visible} processes: {out}");
        // Its cgroup namespace is rooted at its own cgroup.
        assert!(lines[2].ends_with(":/"), "{user:?}: {out}");
    }
}

/// Lets nobody (one of the two users each case runs as) use `path`.
fn open_to_nobody(path: &std::path::Path) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap_or_else(|e| panic!("cannot open {} to nobody: {e}", path.display()));
}

/// A working directory under the test's directory, open to nobody.
fn work_dir(j: &Jobsup) -> std::path::PathBuf {
    let cwd = j.dir().join("work");
    std::fs::create_dir_all(&cwd).expect("a working directory");
    open_to_nobody(&cwd);
    cwd
}

/// One exec-mode job of `script` under `--isolate fs` (and `extra`), run in `cwd`: its
/// output, and the run (which keeps the test's directory).
fn under_fs(
    j: Jobsup,
    cwd: &std::path::Path,
    extra: &[&str],
    script: &str,
) -> (String, jobsup_tests::Run) {
    let run = j
        .args(["--mode", "exec", "--isolate", "fs", "--cwd"])
        .arg(cwd)
        .args(extra)
        .processor("sh", ["-c", script])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    assert_eq!(records[0].outcome(), "ok", "{run}");
    (records[0].output().unwrap_or_default().to_string(), run)
}

#[test]
fn isolate_fs_leaves_the_host_read_only_but_the_working_and_scratch_directories() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let cwd = work_dir(&j);
        // A file of the host's in /tmp (the test's directory is there), and one beside the
        // working directory.
        let host_tmp = j.write_file("host-file", "host\n");
        // Another worker's scratch directory, beside this one's (`--workdir`).
        let workdirs = j.dir().join("workdirs");
        std::fs::create_dir(&workdirs).expect("a workdir parent");
        open_to_nobody(&workdirs);
        let decoy = workdirs.join("jobsup-worker-other");
        std::fs::create_dir(&decoy).expect("a decoy");
        std::fs::write(decoy.join("secret"), "s3cret\n").expect("a secret");
        let workdir_flag = workdirs.display().to_string();
        let script = format!(
            "echo a > ./mine && echo cwd-writable; \
             echo b > \"$JOBSUP_WORKDIR/mine\" && echo scratch-writable; \
             echo c > /etc/jobsup-test 2>/dev/null || echo etc-read-only; \
             echo d > {outside} 2>/dev/null; \
             cat {host_tmp} 2>/dev/null || echo host-tmp-invisible; \
             cat {secret} 2>/dev/null || echo decoy-invisible; \
             ls \"$(dirname \"$JOBSUP_WORKDIR\")\" | wc -l; \
             ls /dev | tr '\\n' ' '",
            outside = cwd.parent().expect("a parent").join("outside").display(),
            host_tmp = host_tmp.display(),
            secret = decoy.join("secret").display(),
        );
        let outside = cwd.parent().expect("a parent").join("outside");
        let (out, _run) = under_fs(j, &cwd, &["--workdir", &workdir_flag], &script);
        let case = format!("{user:?}: {out}");
        for want in [
            "cwd-writable",
            "scratch-writable",
            "etc-read-only",
            "host-tmp-invisible",
            "decoy-invisible",
        ] {
            assert!(out.contains(want), "{want}: {case}");
        }
        assert_eq!(
            std::fs::read_to_string(cwd.join("mine")).ok().as_deref(),
            Some("a\n"),
            "{case}"
        );
        // Beside the working directory it wrote into a private /tmp, not the host's.
        assert!(!outside.exists(), "{case}");
        // Its own scratch directory and no other worker's.
        assert!(out.lines().any(|l| l.trim() == "1"), "{case}");
        assert!(out.contains("null ") && out.contains("urandom "), "{case}");
        assert!(!out.contains("sda") && !out.contains("kmsg"), "{case}");
    }
}

#[test]
fn isolate_fs_and_net_reach_no_host_socket() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let cwd = work_dir(&j);
        // Listeners of the host's: on the file system in /tmp and in the working directory
        // itself, an abstract one, and TCP on the loopback.
        let in_tmp = j.dir().join("host.sock");
        let in_cwd = cwd.join("host.sock");
        let listeners: Vec<std::os::unix::net::UnixListener> = [&in_tmp, &in_cwd]
            .iter()
            .map(|p| std::os::unix::net::UnixListener::bind(p).expect("a listener"))
            .collect();
        for p in [&in_tmp, &in_cwd] {
            open_to_nobody(p);
        }
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP listener");
        let port = tcp.local_addr().expect("an address").port();
        let abstract_name = format!("jobsup-test-{}-{user:?}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name)
                .expect("an abstract address");
            std::os::unix::net::UnixListener::bind_addr(&addr).expect("an abstract listener")
        };
        let script = format!(
            r#"python3 -c '
import socket
def try_(what, connect):
    try:
        connect(); print(what, "reached")
    except OSError:
        print(what, "unreachable")
for p in ["{in_tmp}", "{in_cwd}"]:
    try_(p, lambda: socket.socket(socket.AF_UNIX).connect(p))
try_("abstract", lambda: socket.socket(socket.AF_UNIX).connect("\0{abstract_name}"))
try_("tcp", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5))
'"#,
            in_tmp = in_tmp.display(),
            in_cwd = in_cwd.display(),
        );
        let (out, _run) = under_fs(j, &cwd, &["--isolate", "fs,net"], &script);
        assert_eq!(out.matches("unreachable").count(), 4, "{user:?}: {out}");
        assert!(!out.contains(" reached"), "{user:?}: {out}");
        drop((listeners, tcp, abstract_listener));
    }
}

#[test]
fn a_bind_adds_a_host_directory_read_only_or_writable() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let cwd = work_dir(&j);
        let data = j.dir().join("data");
        std::fs::create_dir(&data).expect("a data directory");
        std::fs::write(data.join("input"), "42\n").expect("a file");
        let out_dir = j.dir().join("out");
        std::fs::create_dir(&out_dir).expect("an output directory");
        open_to_nobody(&out_dir);
        let ro = format!("{}:/tmp/data:ro", data.display());
        let rw = format!("{}:/tmp/out", out_dir.display());
        let (out, _run) = under_fs(
            j,
            &cwd,
            &["--bind", &ro, "--bind", &rw],
            "cat /tmp/data/input; echo x > /tmp/data/new 2>/dev/null || echo data-read-only; echo y > /tmp/out/result && echo out-writable",
        );
        let case = format!("{user:?}: {out}");
        assert!(out.starts_with("42\n"), "{case}");
        assert!(
            out.contains("data-read-only") && out.contains("out-writable"),
            "{case}"
        );
        assert_eq!(
            std::fs::read_to_string(out_dir.join("result"))
                .ok()
                .as_deref(),
            Some("y\n"),
            "{case}"
        );
        assert!(!data.join("new").exists(), "{case}");
    }
}

#[test]
fn a_bad_bind_is_refused_at_start() {
    for (flags, says) in [
        (
            &["--isolate", "fs", "--bind", "/no/such/dir"][..],
            "/no/such/dir",
        ),
        (
            &["--isolate", "fs", "--bind", "/tmp:relative"][..],
            "absolute",
        ),
        (&["--bind", "/tmp"][..], "--bind needs --isolate fs"),
    ] {
        let run = jobsup_tests::jobsup!()
            .args(["--mode", "exec"])
            .args(flags)
            .processor("true", [] as [&str; 0])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 125, "{flags:?}: {run}");
        assert!(run.stderr.contains(says), "{flags:?}: {run}");
    }
}

#[test]
fn a_refused_namespace_is_said_once_and_the_rest_still_contains() {
    // A kernel that refuses a /proc mount (played by the test-only JOBSUP_FAULT): jobsup
    // warns once, at start, and its workers still get their pid namespace.
    let run = jobsup_tests::jobsup!()
        .env("JOBSUP_FAULT", "proc-mount")
        .args(["--mode", "exec"])
        .processor("sh", ["-c", "echo pid=$$"])
        .stdin("a\nb\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("workers are contained less than they could be"))
        .collect();
    assert_eq!(warnings.len(), 1, "{run}");
    assert!(
        warnings[0].contains("they get: pid, mount (cgroups read-only), cgroup"),
        "{run}"
    );
    for r in run.records() {
        assert_eq!(r.output(), Some("pid=2\n"), "{run}");
    }
    // And a pid namespace that cannot be had at all, when required, is exit 125.
    let run = jobsup_tests::jobsup!()
        .args(["--mode", "exec", "--isolate", "pid,fs"])
        .env("JOBSUP_FAULT", "proc-mount")
        .processor("true", [] as [&str; 0])
        .stdin("a\n")
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(
        run.stderr.contains("--isolate fs,pid") || run.stderr.contains("--isolate pid,fs"),
        "{run}"
    );
}

#[test]
fn a_processor_in_a_private_directory_still_runs_under_isolate_fs() {
    // A build or a script in /tmp: its directory stays visible, read-only.
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let cwd = work_dir(&j);
        let script = j.write_file(
            "processor.sh",
            "#!/bin/sh\necho ran; echo x > \"$(dirname \"$0\")/new\" 2>/dev/null || echo its-dir-read-only\n",
        );
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("make it executable");
        let run = j
            .args(["--mode", "exec", "--isolate", "fs", "--cwd"])
            .arg(&cwd)
            .processor(&script, [] as [&str; 0])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
        let records = run.records();
        assert_eq!(
            records[0].output(),
            Some("ran\nits-dir-read-only\n"),
            "{user:?}: {run}"
        );
    }
}

/// The mount namespaces jobsup (`pid`) holds open, as `mnt:[inode]`.
fn mount_namespaces_held_by(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| l.starts_with("mnt:["))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn jobsup_holds_a_workers_mount_namespace_so_that_its_exit_skips_the_teardown() {
    // The last process of a mount namespace to exit tears it down in its exit, which waits
    // for an RCU grace period (tens of milliseconds when the CPUs are busy); the record of
    // a hard kill would wait with it. jobsup keeps the namespace open until the exit has
    // been seen, then lets it go.
    for user in User::BOTH {
        let script =
            "while IFS= read -r l; do [ \"$l\" = quit ] && exit 3; readlink /proc/self/ns/mnt; done";
        let mut bg = lines(user, script, &[]).spawn();
        let jobsup = bg.pid();
        bg.write_stdin("one\n");
        let record = first_record(&bg, "the job's record");
        let ns = record.output().unwrap_or_default().trim().to_string();
        assert!(ns.starts_with("mnt:["), "{user:?}: {record}");
        assert_ne!(
            std::fs::read_link("/proc/self/ns/mnt")
                .unwrap()
                .to_string_lossy(),
            ns,
            "{user:?}: the worker has a mount namespace of its own"
        );
        assert!(
            mount_namespaces_held_by(jobsup).contains(&ns),
            "{user:?}: jobsup holds {:?}, not the worker's {ns}",
            mount_namespaces_held_by(jobsup)
        );
        // Once that worker has gone (its job crashed), its namespace is let go; the next
        // worker's is held instead.
        bg.write_stdin("quit\nthree\n");
        wait_until(WAIT, "three records", || bg.records_so_far().len() == 3);
        let records = bg.records_so_far();
        assert_eq!(records[1].outcome(), "crashed", "{user:?}: {}", records[1]);
        let next = records[2].output().unwrap_or_default().trim().to_string();
        // (Not necessarily another number: a freed namespace's inode number is reused.)
        assert!(next.starts_with("mnt:["), "{user:?}: {}", records[2]);
        wait_until(WAIT, "only the new worker's namespace held", || {
            mount_namespaces_held_by(jobsup) == [next.clone()]
        });
        bg.close_stdin();
        let run = bg.wait();
        // A crashed job makes it 1 (DESIGN's exit codes).
        assert_eq!(run.code(), 1, "{user:?}: {run}");
    }
}

#[test]
fn a_record_names_the_worker_by_its_host_pid_not_the_one_its_namespace_gives_it() {
    for user in User::BOTH {
        let token = token(12, user);
        // Its answer, then it becomes `sleep TOKEN` under the same pid.
        let script = format!("read -r l; echo \"$$\"; exec sleep {token}");
        let mut bg = lines(user, &script, &[]).spawn();
        bg.write_stdin("one\n");
        let record = first_record(&bg, "the job's record");
        // Inside, it is its init's first child.
        assert_eq!(record.output(), Some("2"), "{user:?}: {record}");
        wait_until(WAIT, "the sleeper", || !sleepers(&token).is_empty());
        assert_eq!(
            record.pid(),
            sleepers(&token).first().copied(),
            "{user:?}: {record}"
        );
        bg.close_stdin();
        bg.signal(nix::sys::signal::Signal::SIGTERM);
        bg.wait();
    }
}

/// The processes named `comm` among `pid`'s children.
fn children_named(pid: i32, comm: &str) -> Vec<i32> {
    jobsup_tests::children_of(pid)
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == comm)
        })
        .collect()
}

#[test]
fn an_exec_slots_jobs_share_its_namespaces_but_none_meets_what_another_left() {
    for user in User::BOTH {
        let token = token(13, user);
        // Each job names its pid namespace and lists what else it sees; then it tries to
        // kill PID 1 and everything else, and leaves a daemon behind. Line `hang` ignores
        // the cleanup request and is killed at the hard deadline, its daemon with it.
        let script = format!(
            r#"read -r line
            readlink /proc/self/ns/pid
            for d in /proc/[0-9]*; do
                p=${{d#/proc/}}; [ "$p" = "$$" ] && continue
                echo "seen $(cat "$d/comm" 2>/dev/null)"
            done
            kill -9 1 2>/dev/null; kill -9 -1 2>/dev/null
            ( setsid env -i sleep {token} & )
            if [ "$line" = hang ]; then trap '' TERM; while :; do sleep 1; done; fi"#
        );
        let input = "one\ntwo\nhang\nfour\nfive\nsix\n";
        let mut bg = jobsup_as!(user)
            .args([
                "--mode",
                "exec",
                "-j",
                "2",
                "--ttl",
                "2s",
                "--cleanup",
                "100ms",
            ])
            .processor("sh", ["-c", &script])
            .keep_stdin_open()
            .spawn();
        bg.write_stdin(input);
        wait_until(WAIT, "six records", || bg.records_so_far().len() == 6);
        let holders = children_named(bg.pid(), "jobsup-init");
        bg.close_stdin();
        let run = bg.wait();
        let records = run.records();
        assert_eq!(records.len(), 6, "{user:?}: {run}");
        let mut namespaces: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for r in &records {
            let out = r.output().unwrap_or_default();
            let mut lines = out.lines();
            let ns = lines.next().unwrap_or_default().to_string();
            assert!(ns.starts_with("pid:["), "{user:?}: {r}");
            // Only its PID 1: nothing of another job's, this slot's or another's, even
            // the daemons every job before it left, and the one a killed job left.
            let seen: Vec<&str> = lines.collect();
            assert_eq!(seen, ["seen jobsup-init"], "{user:?}: {r}");
            let expected = if r.seq() == 3 { "killed" } else { "ok" };
            assert_eq!(r.outcome(), expected, "{user:?}: {r}");
            namespaces
                .entry(r.worker().expect("a worker"))
                .or_default()
                .push(ns);
        }
        // Nothing left behind anywhere, and every slot's holder ended with the run.
        wait_until(WAIT, "every daemon is gone", || sleepers(&token).is_empty());
        for holder in &holders {
            wait_until(WAIT, "the holder ended with the run", || {
                !pid_alive(*holder)
            });
        }
        if user == User::Invoker && nix::unistd::geteuid().is_root() {
            // Root: each slot keeps one pid namespace for all its jobs (a job cannot kill
            // its PID 1, nor does a hard kill through the slot's cgroup reach it), and two
            // slots never share one.
            assert!(
                !holders.is_empty(),
                "no holder among jobsup's children: {run}"
            );
            let per_slot: Vec<&String> = namespaces
                .values()
                .map(|all| {
                    assert!(all.iter().all(|ns| ns == &all[0]), "{all:?}: {run}");
                    &all[0]
                })
                .collect();
            if let [a, b] = per_slot.as_slice() {
                assert_ne!(a, b, "two slots share a pid namespace: {run}");
            }
        }
    }
}

#[test]
fn an_exec_slot_whose_holder_was_killed_from_outside_gets_a_new_one() {
    if !jobsup_tests::running_as_root() {
        // Unprivileged, every job has namespaces of its own: there is no holder.
        return;
    }
    let mut bg = jobsup_as!(User::Invoker)
        .args(["--mode", "exec", "-j", "1"])
        .processor(
            "sh",
            [
                "-c",
                "readlink /proc/self/ns/pid; ls /proc | grep -c '^[0-9]'",
            ],
        )
        .keep_stdin_open()
        .spawn();
    bg.write_stdin("one\n");
    wait_until(WAIT, "the first record", || bg.records_so_far().len() == 1);
    let holders = children_named(bg.pid(), "jobsup-init");
    assert_eq!(holders.len(), 1, "one slot, one holder: {holders:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holders[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the holder");
    wait_until(WAIT, "the holder is gone", || !pid_alive(holders[0]));
    bg.write_stdin("two\n");
    wait_until(WAIT, "the second record", || bg.records_so_far().len() == 2);
    let now = children_named(bg.pid(), "jobsup-init");
    bg.close_stdin();
    let run = bg.wait();
    assert_eq!(run.code(), 0, "{run}");
    for r in run.records() {
        assert_eq!(r.outcome(), "ok", "{r}");
        let out = r.output().unwrap_or_default().to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("pid:["), "{r}");
        // Still in a pid namespace of its own: its PID 1, the shell, `ls` and `grep`.
        let visible: usize = lines[1].parse().expect("a count");
        assert!(visible <= 4, "sees {visible} processes: {r}");
    }
    assert_eq!(now.len(), 1, "a new holder: {now:?}");
    assert_ne!(now, holders, "the dead holder is not reused");
}
