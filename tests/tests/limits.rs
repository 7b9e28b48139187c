//! Resource limits on request: --memory, --cpu-time, --open-files (rlimits).

use jobsup_tests::jobsup;

fn python_job(flags: &[&str], code: &str) -> jobsup_tests::Record {
    let run = jobsup!()
        .args(["--mode", "exec"])
        .args(flags)
        .processor("python3", ["-c", code])
        .stdin("x\n")
        .run();
    let mut records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    records.remove(0)
}

#[test]
fn open_files_limit_holds() {
    let code = "fs = [open('/dev/null') for _ in range(64)]; print('opened', len(fs))";
    assert_eq!(python_job(&[], code).outcome(), "ok");
    let limited = python_job(&["--open-files", "16"], code);
    assert_eq!(limited.outcome(), "failed", "{limited}");
}

#[test]
fn memory_limit_holds() {
    let code = "x = bytearray(400 * 1024 * 1024); print(len(x))";
    assert_eq!(python_job(&[], code).outcome(), "ok");
    let limited = python_job(&["--memory", "100MiB"], code);
    assert_eq!(limited.outcome(), "failed", "{limited}");
}

#[test]
fn cpu_time_limit_is_named_in_the_record() {
    let run = jobsup!()
        .args(["--mode", "exec", "--cpu-time", "1", "--ttl", "60s"])
        .processor("sh", ["-c", "while :; do :; done"])
        .stdin("x\n")
        .run();
    let records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    let r = &records[0];
    assert_eq!(r.outcome(), "crashed", "{r}");
    assert!(
        r.error().unwrap_or_default().contains("cpu time limit"),
        "{r}"
    );
}
