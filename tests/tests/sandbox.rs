//! The sandbox around every worker: private directory, no new privileges, and no process
//! of a worker's tree surviving its hard kill, even one that left the process group.

use jobsup_tests::{bin, jobsup, pid_alive, wait_until, WAIT};

#[test]
fn a_setsid_grandchild_dies_with_its_workers_hard_kill() {
    let j = jobsup!();
    let pid_file = j.dir().join("escaped.pid");
    // The worker starts a grandchild in a session of its own (out of the worker's process
    // group), then ignores its cleanup request.
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
    let bg = j
        .args(["--mode", "lines", "--ttl", "300ms", "--cleanup", "300ms"])
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
        "jobsup must still be running for this to prove anything"
    );
}

#[test]
fn each_worker_gets_a_private_directory_that_is_removed_afterwards() {
    let run = jobsup!()
        .args(["--mode", "exec", "-j", "2"])
        .processor(
            "sh",
            [
                "-c",
                r#"printf '%s %s %s\n' "$JOBSUP_WORKDIR" "$(stat -c %a "$JOBSUP_WORKDIR")" "$(pwd)""#,
            ],
        )
        .stdin("a\nb\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.records();
    assert_eq!(recs.len(), 2, "{run}");
    let mut dirs = Vec::new();
    for r in &recs {
        let out = r.output().expect("output");
        let parts: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "{r}");
        assert_eq!(parts[1], "700", "private: mode 0700 ({r})");
        assert_eq!(parts[0], parts[2], "the worker runs in it ({r})");
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

#[test]
fn workers_cannot_gain_privileges() {
    let run = jobsup!()
        .args(["--mode", "exec"])
        .processor("sh", ["-c", "grep NoNewPrivs /proc/self/status"])
        .stdin("x\n")
        .run();
    let recs = run.records();
    assert_eq!(recs.len(), 1, "{run}");
    let out = recs[0].output().unwrap_or_default().to_string();
    assert!(out.contains("NoNewPrivs:\t1"), "{out:?}");
}

/// Live processes whose argument list is exactly `sleep <duration>`, from /proc.
fn sleepers(duration: &str) -> Vec<i32> {
    let argv = format!("sleep\0{duration}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline == argv.as_bytes() && pid_alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

#[test]
fn isolate_net_denies_a_loopback_listener_outside() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let port = listener.local_addr().expect("its address").port();
    let connect = format!(
        "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
    );
    let run_with = |flags: &[&str]| {
        let run = jobsup!()
            .args(["--mode", "exec"])
            .args(flags)
            .processor("python3", ["-c", connect.as_str()])
            .stdin("x\n")
            .run();
        let mut records = run.records();
        assert_eq!(records.len(), 1, "{run}");
        records.remove(0)
    };
    let open = run_with(&[]);
    assert_eq!(open.output(), Some("connected\n"), "{open}");
    let isolated = run_with(&["--isolate", "net"]);
    assert_eq!(isolated.outcome(), "failed", "{isolated}");
}

#[test]
fn isolate_pid_leaves_no_descendant_even_when_jobsup_is_killed() {
    // A grandchild that escapes every other way: its own session, an empty environment
    // (so no worker tag), and a parent that has already exited.
    let token = format!("{}.{}", 900 + std::process::id() % 97, std::process::id());
    let script =
        format!("while IFS= read -r l; do ( setsid env -i sleep {token} & ); echo \"$l\"; done");
    let bg = jobsup!()
        .args(["--mode", "lines", "-j", "1", "--isolate", "pid"])
        .processor("sh", ["-c", script.as_str()])
        .stdin("go\n")
        .keep_stdin_open()
        .spawn();
    wait_until(WAIT, "the job's record", || !bg.records_so_far().is_empty());
    wait_until(WAIT, "the escaped grandchild runs", || {
        !sleepers(&token).is_empty()
    });
    bg.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = bg.wait();
    wait_until(WAIT, "nothing of the worker's tree survives", || {
        sleepers(&token).is_empty()
    });
}

#[test]
fn isolation_works_for_an_unprivileged_user() {
    // As root, drop to nobody for this run; as anyone else, run as is.
    // SAFETY: geteuid cannot fail.
    let unprivileged = unsafe { libc::geteuid() } != 0;
    let builder = if unprivileged {
        jobsup!()
    } else {
        jobsup_tests::Jobsup::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin!("jobsup-shim"))
            .arg("run")
    };
    let run = builder
        .args([
            "--mode",
            "exec",
            "--isolate",
            "pid,net",
            "--workdir",
            "/tmp",
        ])
        .processor("sh", ["-c", "echo \"uid=$(id -u) pid=$$\""])
        .stdin("x\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    let out = records[0].output().unwrap_or_default().to_string();
    assert!(out.ends_with("pid=1\n"), "{out:?}\n{run}");
    assert!(!out.starts_with("uid=0 "), "not root: {out:?}");
}

/// A worker whose grandchild leaves by every door (own session, empty environment,
/// parent gone) is killed with its tree at the hard kill, while jobsup runs on: through
/// the worker's cgroup where the machine offers cgroup v2, and always under
/// `--isolate pid`.
fn fully_escaped_grandchild_dies_at_the_hard_kill(flags: &[&str]) -> bool {
    let token = format!("{}.{}", 800 + std::process::id() % 97, flags.len());
    let script = format!(
        "trap '' TERM; while IFS= read -r l; do ( setsid env -i sleep {token} & ); while :; do :; done; done"
    );
    let bg = jobsup!()
        .args([
            "-v",
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
    let uses_cgroups = bg.stderr_so_far().contains("each worker gets a cgroup");
    if uses_cgroups || !flags.is_empty() {
        wait_until(WAIT, "nothing of the worker's tree survives", || {
            sleepers(&token).is_empty()
        });
        assert!(
            !bg.has_exited(),
            "jobsup must still run for this to prove anything"
        );
    }
    uses_cgroups
}

#[test]
fn a_fully_escaped_grandchild_dies_at_the_hard_kill() {
    fully_escaped_grandchild_dies_at_the_hard_kill(&["--isolate", "pid"]);
    let uses_cgroups = fully_escaped_grandchild_dies_at_the_hard_kill(&[]);
    // Where a writable cgroup v2 hierarchy exists (this machine has one), it is used.
    if cgroup_v2_writable() {
        assert!(
            uses_cgroups,
            "a writable cgroup v2 hierarchy exists but jobsup did not use it"
        );
    }
}

/// Whether this process could make a cgroup v2 directory under its own cgroup, as jobsup
/// would.
fn cgroup_v2_writable() -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(mount) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
    }) else {
        return false;
    };
    let Some(own) = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
    else {
        return false;
    };
    let probe = std::path::Path::new(mount)
        .join(own.trim_start_matches('/'))
        .join(format!("jobsup-test-probe-{}", std::process::id()));
    let writable = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    writable
}
