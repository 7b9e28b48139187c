//! SIGHUP (a closing terminal), SIGUSR1 and SIGUSR2 end a run the way SIGTERM does: no more
//! input is read, the running job finishes, every job read gets its record, the workers'
//! directories are removed, and the exit code is 128 + the signal.

use jobsup_tests::{bin, jobsup, pid_alive, pids, wait_until, WAIT};
use nix::sys::signal::Signal;

fn drains_like_sigterm(sig: Signal, code: i32) {
    let mut bg = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--cleanup", "1s"])
        .processor(bin!("sleepy"), [] as [&str; 0])
        .stdin("50\n1000\n")
        .keep_stdin_open()
        .spawn();
    bg.wait_for_handler(sig);
    wait_until(WAIT, "the first job has its record", || {
        !bg.records_so_far().is_empty()
    });
    bg.signal_delivered(sig);
    bg.write_stdin("5\n");
    let run = bg.wait();
    assert_eq!(run.code(), code, "{sig}\n{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(
        recs.get(&2).map(|r| r.outcome()),
        Some("ok"),
        "{sig}: the running job is drained, not lost\n{run}"
    );
    assert!(
        run.stderr.contains(&format!("{sig} received")),
        "{sig}: jobsup says why it stops\n{run}"
    );
    let alive: Vec<i32> = pids(&run.records())
        .into_iter()
        .filter(|&p| pid_alive(p))
        .collect();
    assert!(
        alive.is_empty(),
        "{sig}: workers outlived jobsup: {alive:?}\n{run}"
    );
    let left: Vec<String> = std::fs::read_dir(run.dir())
        .expect("the test directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("jobsup-"))
        .collect();
    assert!(
        left.is_empty(),
        "{sig}: worker directories left: {left:?}\n{run}"
    );
}

#[test]
fn sighup_drains_the_run_and_exits_129() {
    drains_like_sigterm(Signal::SIGHUP, 129);
}

#[test]
fn sigusr1_drains_the_run_and_exits_138() {
    drains_like_sigterm(Signal::SIGUSR1, 138);
}

#[test]
fn sigusr2_drains_the_run_and_exits_140() {
    drains_like_sigterm(Signal::SIGUSR2, 140);
}
