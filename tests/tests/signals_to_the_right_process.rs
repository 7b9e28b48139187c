//! Signals reach the worker they are meant for, and what a worker leaves behind in its
//! process group dies with it.
//!
//! jobsup kills a worker's process group just before it reaps the leader, while the group's
//! id is still certainly the worker's; afterwards it signals nothing by that number. The
//! members here scrub their environment (`env -i`), so the environment tag does not find
//! them: the group kill (and, as root with cgroups, the cgroup kill) must. The workers run
//! without their pid namespace (`--isolate none`), which would kill the members anyway
//! and is tests/tests/containment.rs's to test.
//!
//! Each case runs as the invoking user and as nobody, and with each way of naming
//! processes: pidfds where this kernel has them, and plain pids (the fallback for kernels
//! without pidfds, forced with the test-only `JOBSUP_FAULT`).

use std::path::{Path, PathBuf};

use jobsup_tests::{jobsup_as, pid_alive, wait_until, Background, Jobsup, User, WAIT};

/// How processes are named: `JOBSUP_FAULT` (none: what the kernel offers), and what the
/// debug line at start says.
const HANDLES: [(Option<&str>, &str); 3] = [
    (None, "process handles: "),
    (
        Some("pidfd_group"),
        "process handles: pid (no pidfd_send_signal to a process group",
    ),
    (Some("pidfd_open"), "process handles: pid (no pidfd_open"),
];

fn each_case(mut case: impl FnMut(Jobsup, &str)) {
    for user in User::BOTH {
        for (fault, says) in HANDLES {
            let j = jobsup_as!(user).arg("-v");
            let j = match fault {
                Some(point) => j.env("JOBSUP_FAULT", point),
                None => j,
            };
            case(j, &format!("{user:?}, {fault:?}: {says}"));
        }
    }
}

/// The debug line naming the handles in use, said once.
fn assert_handles_said(bg: &Background, case: &str) {
    let says = case.split_once(": ").map_or("", |(_, says)| says);
    let stderr = bg.stderr_so_far();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("process handles: "))
        .collect();
    assert_eq!(lines.len(), 1, "{case}: said once\n{stderr}");
    assert!(lines[0].contains(says), "{case}\n{stderr}");
}

/// Waits for the first record, then for the member (whose pid is in `member_file`) to be
/// gone, with jobsup still running: the run's own end must not be what killed it.
fn member_dies_with_the_job(mut bg: Background, member_file: &Path, outcome: &str, case: &str) {
    wait_until(WAIT, "the job's record", || !bg.records_so_far().is_empty());
    let record = bg.records_so_far().remove(0);
    assert_eq!(record.outcome(), outcome, "{case}: {record}");
    let member: i32 = std::fs::read_to_string(member_file)
        .expect("the member wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    wait_until(
        WAIT,
        &format!("the member the worker left in its group is gone ({case})"),
        || !pid_alive(member),
    );
    assert!(!bg.has_exited(), "{case}: jobsup must still be running");
    assert_handles_said(&bg, case);
    bg.close_stdin();
    let run = bg.wait();
    let code = match outcome {
        "ok" => 0,
        "killed" => 137,
        _ => 1,
    };
    assert_eq!(run.code(), code, "{case}\n{run}");
}

/// A shell command that starts a member in the worker's group, with an empty environment,
/// and writes its pid to the returned file.
fn start_member(j: &Jobsup) -> (String, PathBuf) {
    let file = j.dir().join("member.pid");
    let command = format!(
        "env -i sleep 1000 >/dev/null 2>&1 </dev/null & echo $! > {pid}.tmp; mv {pid}.tmp {pid}",
        pid = file.display()
    );
    (command, file)
}

#[test]
fn a_member_left_in_the_group_dies_when_its_exec_leader_exits() {
    each_case(|j, case| {
        let (start, member) = start_member(&j);
        // The leader lives a moment after its exec: one that exits before its spawner has
        // registered it (microseconds, unless the spawner thread is preempted, as on a
        // loaded machine without the real-time class) is the gap ARCHITECTURE names, where
        // only a pidfd, the cgroup or the environment tag reach the group, and an
        // unprivileged jobsup on the pid fallback has none of them.
        let script = format!("{start}; sleep 0.2");
        let bg = j
            .args(["--mode", "exec", "--isolate", "none"])
            .processor("sh", ["-c", &script])
            .stdin("x\n")
            .keep_stdin_open()
            .spawn();
        member_dies_with_the_job(bg, &member, "ok", case);
    });
}

#[test]
fn a_member_left_in_the_group_dies_when_its_line_worker_crashes() {
    each_case(|j, case| {
        let (start, member) = start_member(&j);
        let script = j.write_file("worker.sh", format!("read -r line\n{start}\nexit 3\n"));
        let bg = j
            .args(["--mode", "lines", "--isolate", "none"])
            .processor("sh", [script])
            .stdin("x\n")
            .keep_stdin_open()
            .spawn();
        member_dies_with_the_job(bg, &member, "crashed", case);
    });
}

#[test]
fn a_member_that_ignores_the_cleanup_signal_dies_at_the_hard_kill() {
    each_case(|j, case| {
        let (start, member) = start_member(&j);
        // The member inherits the ignored SIGTERM.
        let script = j.write_file(
            "worker.sh",
            format!("trap '' TERM\nread -r line\n{start}\nwhile :; do sleep 1; done\n"),
        );
        let bg = j
            .args([
                "--mode",
                "lines",
                "--ttl",
                "200ms",
                "--cleanup",
                "200ms",
                "--isolate",
                "none",
            ])
            .processor("sh", [script])
            .stdin("x\n")
            .keep_stdin_open()
            .spawn();
        member_dies_with_the_job(bg, &member, "killed", case);
    });
}
