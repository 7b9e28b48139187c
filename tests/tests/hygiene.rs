//! Process hygiene: processor output never mixes into results, and workers die with the
//! supervisor.

use jobsup_tests::{bin, jobsup, pid_alive, records, wait_until, WAIT};

#[test]
fn processor_stdout_and_stderr_are_logged_with_ids_not_mixed_into_results() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok:first\nlog:hello from the processor\nok:last\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    // Every stdout line is a record: `records` fails on anything else.
    let recs = records(run.stdout_str().as_bytes());
    assert_eq!(recs.len(), 3, "{run}");
    assert!(
        !run.stdout_str().contains("hello from the processor"),
        "{run}"
    );
    for stream in ["stdout", "stderr"] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("hello from the processor ({stream})")))
            .unwrap_or_else(|| panic!("the processor's {stream} line is not logged\n{run}"));
        let pid = recs[1].pid().expect("a pid");
        for field in ["worker=1".to_string(), format!("pid={pid}"), "job=2".into()] {
            assert!(
                line.contains(&field),
                "{field} missing from {line:?}\n{run}"
            );
        }
    }
}

#[test]
fn workers_die_with_a_killed_supervisor() {
    let bg = jobsup!()
        .args(["-j", "2", "--ttl", "60s"])
        .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
        .stdin("60000\n60000\n")
        .spawn();
    wait_until(WAIT, "jobsup has two workers", || bg.children().len() >= 2);
    let workers = bg.children();
    bg.kill_hard();
    // The parent-death signal kills them; nobody is left to reap them but init, so wait
    // for them to be gone (or zombies, which pid_alive counts as dead).
    wait_until(WAIT, "the workers die with jobsup", || {
        workers.iter().all(|&p| !pid_alive(p))
    });
}
