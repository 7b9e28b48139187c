//! The sandbox around every worker: private directory, no new privileges, and no process
//! of a worker's tree surviving its hard kill, even one that left the process group.

use jobsup_tests::{jobsup, pid_alive, wait_until, WAIT};

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
