//! `--mode exec`: a fresh process per job, with the payload (and a newline) on stdin and in
//! place of `{}` in the arguments (`{#}`: the line number, `{id}`: the job id), no shell.
//! Its stdout bytes are the result and its exit status decides ok or failed; the cleanup
//! request is a signal to its process group.

use std::io::Write;
use std::process::{Command, Stdio};

use jobsup_tests::{
    assert_killed_and_gone, jobsup, pid_alive, pids, read_pids, wait_until, Jobsup, Record, Run,
    WAIT,
};

/// `jobsup run --mode exec` with extra flags, before the processor is named.
fn exec_mode(flags: &[&str]) -> Jobsup {
    jobsup!().args(["--mode", "exec"]).args(flags)
}

/// The only record of a one-job run.
fn only(run: &Run) -> Record {
    let recs = run.records();
    assert_eq!(recs.len(), 1, "expected exactly one record\n{run}");
    recs.into_iter().next().unwrap()
}

/// Runs `script` through `sh -c` on stdin `input`; returns its stdout.
fn shell_filter(script: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run sh");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("sh failed");
    writer.join().unwrap().expect("cannot write to sh");
    assert!(out.status.success(), "`{script}` failed: {:?}", out.status);
    out.stdout
}

#[test]
fn binary_output_is_base64_and_decodes_to_what_the_program_wrote() {
    let run = exec_mode(&["-j", "2"])
        .processor("gzip", ["-c"])
        .stdin("hello\nworld\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    for (seq, payload) in [(1, "hello"), (2, "world")] {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "ok", "{r}");
        assert!(!r.has("output"), "gzip output is not UTF-8: {r}");
        assert_eq!(r.exit_code(), Some(0), "{r}");
        let b64 = r
            .output_base64()
            .unwrap_or_else(|| panic!("no output: {r}"));
        let plain = shell_filter("base64 -d | gzip -dc", b64.as_bytes());
        assert_eq!(
            plain,
            format!("{payload}\n").as_bytes(),
            "the payload and a newline went in on stdin: {r}"
        );
    }
}

#[test]
fn each_job_gets_a_fresh_process_and_its_raw_stdout() {
    let run = exec_mode(&["-j", "1"])
        .processor("cat", [] as [&str; 0])
        .stdin(jobsup_tests::lines(5, |i| format!("job {i}")))
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 5, "{run}");
    for (seq, r) in &recs {
        assert_eq!(r.outcome(), "ok", "{r}");
        assert_eq!(
            r.output(),
            Some(format!("job {seq}\n").as_str()),
            "stdout kept as is, newline included: {r}"
        );
    }
    assert_eq!(pids(&run.records()).len(), 5, "one process per job\n{run}");
}

#[test]
fn job_that_dies_of_the_cleanup_signal_is_timeout_and_a_quick_one_is_ok() {
    let run = exec_mode(&["-j", "2", "--ttl", "300ms", "--cleanup", "2s"])
        .processor("sleep", ["{}"])
        .stdin("10\n0\n")
        .run();
    assert_eq!(run.code(), 124, "{run}");
    let recs = run.by_seq();
    let slow = &recs[&1];
    assert_eq!(slow.outcome(), "timeout", "{slow}");
    assert_eq!(slow.signal(), Some(15), "{slow}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    assert_eq!(recs[&2].exit_code(), Some(0), "{run}");
}

#[test]
fn job_that_ignores_the_cleanup_signal_is_killed() {
    let run = exec_mode(&["--ttl", "300ms", "--cleanup", "300ms"])
        .processor("sh", ["-c", "trap '' TERM; while :; do :; done"])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 137, "{run}");
    assert_killed_and_gone(&only(&run), &run);
}

#[test]
fn cleanup_signal_can_be_sigint() {
    // TERM is ignored: only a SIGINT makes it exit in time.
    let run = exec_mode(&[
        "--cleanup-signal",
        "INT",
        "--ttl",
        "300ms",
        "--cleanup",
        "5s",
    ])
    .processor(
        "sh",
        [
            "-c",
            "trap 'exit 7' INT; trap '' TERM; while :; do sleep 0.05; done",
        ],
    )
    .stdin("x\n")
    .run();
    assert_eq!(run.code(), 124, "{run}");
    let r = only(&run);
    assert_eq!(r.outcome(), "timeout", "{r}");
    assert_eq!(r.exit_code(), Some(7), "{r}");
}

#[test]
fn nonzero_exit_is_failed_with_its_code() {
    let run = exec_mode(&[])
        .processor("sh", ["-c", "echo partial; exit 3"])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let r = only(&run);
    assert_eq!(r.outcome(), "failed", "{r}");
    assert_eq!(r.exit_code(), Some(3), "{r}");
    assert_eq!(r.error(), Some("exited with code 3"), "{r}");
    assert_eq!(r.output(), Some("partial\n"), "what it wrote is kept: {r}");
}

#[test]
fn death_by_a_signal_jobsup_did_not_send_is_crashed() {
    let run = exec_mode(&[])
        .processor("sh", ["-c", "kill -SEGV $$"])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let r = only(&run);
    assert_eq!(r.outcome(), "crashed", "{r}");
    assert_eq!(r.signal(), Some(11), "{r}");
    assert!(r.error().is_some_and(|e| e.contains("SIGSEGV")), "{r}");
}

#[test]
fn placeholders_are_replaced_without_a_shell_or_splitting() {
    let run = exec_mode(&["--input-format", "ndjson"])
        .processor("echo", ["{}", "{#}", "{id}"])
        .stdin("{\"id\":\"x1\",\"payload\":\"a b; rm -rf /\"}\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let r = only(&run);
    assert_eq!(r.id(), "x1", "{r}");
    assert_eq!(r.output(), Some("a b; rm -rf / 1 x1\n"), "{r}");
}

#[test]
fn payload_is_one_argument_even_with_spaces_and_newlines() {
    let run = exec_mode(&["--input-format", "ndjson", "-j", "1"])
        .processor("printf", ["%s|", "{}"])
        .stdin("{\"payload\":\"a b\"}\n{\"payload\":\"c\\nd\"}\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].output(), Some("a b|"), "{run}");
    assert_eq!(
        recs[&2].output(),
        Some("c\nd|"),
        "a newline is fine in exec mode\n{run}"
    );
}

#[test]
fn output_past_max_output_fails_the_job() {
    let run = exec_mode(&["--max-output", "1KiB", "-j", "1"])
        .processor("head", ["-c", "{}", "/dev/zero"])
        .stdin("100000\n1000\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    let big = &recs[&1];
    assert_eq!(big.outcome(), "failed", "{big}");
    assert!(
        big.error().is_some_and(|e| e.contains("max-output")),
        "{big}"
    );
    let small = &recs[&2];
    assert_eq!(small.outcome(), "ok", "{small}");
    assert_eq!(small.output().map(str::len), Some(1000), "{small}");
}

#[test]
fn output_past_max_output_is_not_kept_beyond_the_limit() {
    // Random bytes, so the output shows up base64-encoded; either way, a record never
    // carries more than --max-output of it.
    let run = exec_mode(&["--max-output", "1KiB"])
        .processor("head", ["-c", "100000", "/dev/urandom"])
        .stdin("x\n")
        .run();
    let r = only(&run);
    assert_eq!(r.outcome(), "failed", "{r}");
    // Four base64 characters carry three bytes, less one per padding `=`.
    let decoded = |b: &str| b.len() / 4 * 3 - b.bytes().rev().take_while(|&c| c == b'=').count();
    let kept = r.output().map_or(0, str::len) + r.output_base64().map_or(0, decoded);
    assert!(
        kept <= 1024,
        "{kept} bytes of output kept with --max-output 1KiB: {}",
        r.error().unwrap_or_default()
    );
}

#[test]
fn ten_megabytes_of_stderr_do_not_block_the_job() {
    let run = exec_mode(&["-j", "2"])
        .processor("sh", ["-c", "head -c 10000000 /dev/zero >&2; echo done"])
        .stdin("a\nb\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    for r in recs.values() {
        assert_eq!(r.outcome(), "ok", "{r}");
        assert_eq!(r.output(), Some("done\n"), "{r}");
    }
}

#[test]
fn no_descendant_outlives_jobsup() {
    // The process group and the tree walk alone: the pid namespace, which would end these
    // anyway, is tests/tests/containment.rs's.
    let j = exec_mode(&["-j", "1", "--isolate", "none"]);
    let pidfile = j.dir().join("pids");
    let script = format!(
        r#"sleep 1000 & echo $! >> "{p}"; setsid sleep 1000 & echo $! >> "{p}"; echo started"#,
        p = pidfile.display()
    );
    let run = j.processor("sh", ["-c", &script]).stdin("a\nb\n").run();
    assert_eq!(run.code(), 0, "{run}");
    for r in run.records() {
        assert_eq!(r.outcome(), "ok", "{r}");
        assert_eq!(r.output(), Some("started\n"), "{r}");
    }
    let leaked = read_pids(&pidfile);
    assert_eq!(leaked.len(), 4, "{run}");
    for p in leaked {
        assert!(!pid_alive(p), "descendant {p} outlived jobsup\n{run}");
    }
}

#[test]
fn missing_program_exits_127_and_names_it() {
    let run = exec_mode(&[])
        .processor("no-such-program-jobsup-test", ["{}"])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 127, "{run}");
    assert!(run.stderr.contains("no-such-program-jobsup-test"), "{run}");
    assert!(run.records().is_empty(), "nothing ran\n{run}");
}

#[test]
fn non_executable_program_exits_126_and_names_it() {
    let j = exec_mode(&[]);
    let script = j.write_file("not-executable.sh", "#!/bin/sh\necho hi\n");
    let run = j.processor(&script, [] as [&str; 0]).stdin("x\n").run();
    assert_eq!(run.code(), 126, "{run}");
    assert!(run.stderr.contains("not-executable.sh"), "{run}");
    assert!(run.records().is_empty(), "nothing ran\n{run}");
}

/// The children of one thread of `pid`'s (the kernel lists them apart from its other
/// threads').
fn thread_children(pid: i32, tid: &str) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` runs `sleep`.
fn runs_sleep(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|&b| b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"sleep"))
    })
}

#[test]
fn an_exec_slot_spawns_its_jobs_from_a_thread_of_its_own() {
    // One slot, so no more slots than CPUs on any machine: the slot has its own thread.
    let bg = exec_mode(&["-j", "1", "--ttl", "60s"])
        .processor("sleep", ["30"])
        .stdin("a\n")
        .spawn();
    let pid = bg.pid();
    // The threads named for an exec slot that have a job's process as their own child.
    let spawning = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks
                    .flatten()
                    .filter_map(|t| t.file_name().into_string().ok())
                    .filter(|tid| {
                        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                            .is_ok_and(|c| c.starts_with("jobsup-slot-"))
                    })
                    .filter(|tid| thread_children(pid, tid).into_iter().any(runs_sleep))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until(WAIT, "the slot's thread runs the job", || {
        spawning().len() == 1
    });
    bg.kill_hard();
}

#[test]
fn a_job_waiting_behind_a_long_one_runs_on_a_worker_that_is_free() {
    // `-j 2`: `wait` runs until `b` has run, and `b` is read while both workers are busy,
    // so it is handed to the one running `wait` to run next. When the other finishes
    // `a` with nothing left to read, `b` comes back and runs there: `wait` ends `ok`.
    // Were `b` left behind `wait`, `wait` would only end at its ttl, `killed`.
    let script = r#"case "$1" in
        wait) while [ ! -e b ]; do sleep 0.01; done ;;
        a) sleep 0.3 ;;
        *) touch "$1" ;;
    esac"#;
    let j = exec_mode(&["-j", "2", "--ttl", "20s", "--cleanup", "0"]);
    let dir = j.dir().to_path_buf();
    let run = j
        .args(["--cwd", dir.to_str().expect("a UTF-8 path")])
        .processor("sh", ["-c", script, "sh", "{}"])
        .stdin("wait\na\nb\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "{run}");
    for r in recs.values() {
        assert_eq!(r.outcome(), "ok", "{r}");
    }
}
