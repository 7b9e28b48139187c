//! Scheduling: jobsup runs above its workers. Where it is permitted (root, CAP_SYS_NICE)
//! jobsup's threads take the real-time class (`--no-realtime` keeps them ordinary), and
//! the workers never inherit it; `--nice` and `--sched` set the workers' nice value and
//! class, for every user.

use jobsup_tests::{jobsup_as, running_as_root, Run, User};

/// What of a `/proc/PID/stat` line matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sched {
    nice: i64,
    rt_priority: i64,
    policy: i64,
}

fn parse_stat(line: &str) -> Sched {
    // The command name is in parentheses and may hold spaces: count after its end.
    let after = &line[line.rfind(')').expect("a stat line has a command name") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // proc(5) numbers from 1, the state being field 3: nice is 19, rt_priority 40,
    // policy 41.
    let field = |n: usize| -> i64 {
        fields[n - 3]
            .parse()
            .unwrap_or_else(|e| panic!("field {n} of {line:?}: {e}"))
    };
    Sched {
        nice: field(19),
        rt_priority: field(40),
        policy: field(41),
    }
}

const SCHED_OTHER: i64 = 0;
const SCHED_RR: i64 = 2;
const SCHED_BATCH: i64 = 3;
const SCHED_IDLE: i64 = 5;

/// One exec job that shows its own scheduling (`cat`'s, which it inherits) and that of
/// every thread of jobsup (its parent): the worker's line first.
fn show(user: User, flags: &[&str]) -> (Sched, Vec<Sched>, Run) {
    // Without the pid namespace, so that the worker's parent is jobsup itself (behind
    // one, it is the namespace's init: see below).
    let run = jobsup_as!(user)
        .args(["--mode", "exec", "--isolate", "none"])
        .args(flags)
        .processor(
            "sh",
            ["-c", "cat /proc/self/stat && cat /proc/$PPID/task/*/stat"],
        )
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    let out = records[0].output().unwrap_or_default().to_string();
    let mut lines = out.lines().map(parse_stat);
    let worker = lines.next().unwrap_or_else(|| panic!("no output: {run}"));
    let threads: Vec<Sched> = lines.collect();
    assert!(!threads.is_empty(), "no thread of jobsup listed: {run}");
    (worker, threads, run)
}

/// The tests' own nice value, which jobsup starts with.
fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("own stat");
    parse_stat(&stat).nice
}

#[test]
fn workers_take_the_nice_value_and_class_asked_for_as_any_user() {
    for user in User::BOTH {
        for (flags, policy, nice) in [
            (&["--nice", "7", "--sched", "batch"][..], SCHED_BATCH, 7),
            (&["--nice", "0", "--sched", "other"][..], SCHED_OTHER, 0),
            (&["--nice", "19", "--sched", "idle"][..], SCHED_IDLE, 19),
        ] {
            let (worker, _, run) = show(user, flags);
            let what = format!("{user:?} {flags:?}: {worker:?}\n{run}");
            assert_eq!(worker.policy, policy, "{what}");
            assert_eq!(worker.nice, (own_nice() + nice).min(19), "{what}");
            assert_eq!(worker.rt_priority, 0, "{what}");
        }
    }
}

#[test]
fn jobsup_is_real_time_where_permitted_and_its_workers_never_are() {
    for user in User::BOTH {
        let (worker, threads, run) = show(user, &[]);
        let what = format!("{user:?}: worker {worker:?}, jobsup {threads:?}\n{run}");
        // The workers leave the real-time class they would inherit.
        assert_ne!(worker.policy, SCHED_RR, "{what}");
        assert_eq!(worker.rt_priority, 0, "{what}");
        let real_time = threads.iter().filter(|t| t.policy == SCHED_RR).count();
        if user == User::Invoker && running_as_root() {
            // The threads that keep the deadlines: the runtime's, the reaper, the spawners.
            assert!(real_time >= 3, "{what}");
            assert!(threads.iter().all(|t| t.rt_priority <= 2), "{what}");
        } else {
            assert_eq!(real_time, 0, "{what}");
        }
        // Either way the workers keep the nice value jobsup was started with: a lower one
        // would make a CPU-bound worker being killed wait longer for the CPU it dies on.
        assert_eq!(worker.nice, own_nice(), "{what}");
    }
}

#[test]
fn neither_a_worker_nor_its_init_is_real_time_in_a_pid_namespace() {
    for user in User::BOTH {
        let run = jobsup_as!(user)
            .args(["--mode", "exec"])
            .processor("sh", ["-c", "cat /proc/self/stat /proc/1/stat"])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{run}");
        let out = run.records()[0].output().unwrap_or_default().to_string();
        let all: Vec<Sched> = out.lines().map(parse_stat).collect();
        assert_eq!(all.len(), 2, "{run}");
        for s in &all {
            assert_ne!(s.policy, SCHED_RR, "{user:?}: {all:?}\n{run}");
            assert_eq!(s.rt_priority, 0, "{user:?}: {all:?}\n{run}");
        }
    }
}

#[test]
fn no_realtime_keeps_every_thread_of_jobsup_ordinary() {
    let (_, threads, run) = show(User::Invoker, &["--no-realtime"]);
    assert!(
        threads
            .iter()
            .all(|t| t.policy == SCHED_OTHER && t.rt_priority == 0),
        "{threads:?}\n{run}"
    );
}
