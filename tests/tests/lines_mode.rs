//! `--mode lines`: any program that reads one job per line on stdin and answers one line on
//! stdout, reused from job to job; the cleanup request is a signal to its process group.
//!
//! Workers run in a private working directory, so every script path handed to a
//! processor is absolute (an example's, or a file written into the test's directory).

use std::time::Duration;

use jobsup_tests::{
    example, jobsup, pid_alive, pids, read_pids, wait_until, Jobsup, Record, Run, WAIT,
};

/// `jobsup run --mode lines -j 1` with extra flags, before the processor is named.
fn lines_mode(flags: &[&str]) -> Jobsup {
    jobsup!().args(["--mode", "lines", "-j", "1"]).args(flags)
}

/// The only record of a one-job run.
fn only(run: &Run) -> Record {
    let recs = run.records();
    assert_eq!(recs.len(), 1, "expected exactly one record\n{run}");
    recs.into_iter().next().unwrap()
}

/// Checks that the two jobs `hello` and `world` came back upper-cased from one process.
fn assert_upper_cased_by_one_worker(run: &Run) {
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    for (seq, want) in [(1, "HELLO"), (2, "WORLD")] {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "ok", "{r}");
        assert_eq!(r.output(), Some(want), "{r}");
        assert_eq!(r.error(), None, "{r}");
        assert!(
            !r.has("exit_code") && !r.has("signal"),
            "a reused worker did not end with the job: {r}"
        );
    }
    assert_eq!(
        pids(&run.records()).len(),
        1,
        "both jobs on one reused process\n{run}"
    );
}

/// Runs two jobs through an example line processor started by `interpreter`.
fn upper_case_with(interpreter: &str, flags: &[&str], example_file: &str) {
    let mut args: Vec<std::ffi::OsString> = flags.iter().map(Into::into).collect();
    args.push(example(example_file).into());
    let run = lines_mode(&[])
        .processor(interpreter, args)
        .stdin("hello\nworld\n")
        .run();
    assert_upper_cased_by_one_worker(&run);
}

#[test]
fn python_line_processor_upper_cases_each_job_on_one_reused_worker() {
    upper_case_with("python3", &["-u"], "upper.py");
}

#[test]
fn node_line_processor_upper_cases_each_job() {
    upper_case_with("node", &[], "upper.js");
}

#[test]
fn shell_line_processor_upper_cases_each_job() {
    upper_case_with("sh", &[], "upper.sh");
}

#[test]
fn processor_that_traps_the_cleanup_signal_and_exits_is_timeout_and_replaced() {
    let j = lines_mode(&["--ttl", "500ms", "--cleanup", "5s"]);
    let marker = j.dir().join("cleaned-up");
    // `slow` waits on a child (which the group signal reaches too); anything else is
    // answered at once.
    let script = j.write_file(
        "trap.sh",
        format!(
            r#"trap 'echo "trap.sh: cleaning up" >&2; echo done > "{}"; exit 5' TERM
while IFS= read -r line; do
  if [ "$line" = slow ]; then sleep 1000 & wait $!; fi
  printf '%s\n' "$line"
done
"#,
            marker.display()
        ),
    );
    let run = j.processor("sh", [&script]).stdin("slow\nfast\n").run();
    assert_eq!(run.code(), 124, "{run}");
    let recs = run.by_seq();
    let slow = &recs[&1];
    assert_eq!(slow.outcome(), "timeout", "{slow}");
    assert_eq!(slow.exit_code(), Some(5), "the trap's exit status: {slow}");
    assert_eq!(slow.signal(), None, "{slow}");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("done\n"),
        "the trap ran its cleanup\n{run}"
    );
    assert!(
        run.stderr.contains("trap.sh: cleaning up"),
        "the cleanup's log line is logged\n{run}"
    );
    let fast = &recs[&2];
    assert_eq!(fast.outcome(), "ok", "{fast}");
    assert_eq!(fast.output(), Some("fast"), "{fast}");
    assert_ne!(
        slow.pid(),
        fast.pid(),
        "a timed-out worker is replaced\n{run}"
    );
}

#[test]
fn processor_that_ignores_the_cleanup_signal_is_killed_and_its_group_is_gone() {
    let j = lines_mode(&["--ttl", "1s", "--cleanup", "300ms"]);
    let script = j.write_file(
        "ignore.py",
        "import signal, sys, time\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         for line in sys.stdin:\n    time.sleep(1000)\n",
    );
    let run = j.processor("python3", [&script]).stdin("x\n").run();
    assert_eq!(run.code(), 137, "{run}");
    let r = only(&run);
    assert_eq!(r.outcome(), "killed", "{r}");
    assert_eq!(r.signal(), Some(9), "{r}");
    assert!(
        r.error().is_some_and(|e| e.contains("killed")),
        "the error says the group was killed: {r}"
    );
    let pid = r.pid().expect("a killed job names its worker");
    assert!(!pid_alive(pid), "worker {pid} outlived jobsup\n{run}");
}

#[test]
fn cleanup_signal_can_be_sigint() {
    let j = lines_mode(&["--cleanup-signal", "INT", "--ttl", "1s", "--cleanup", "5s"]);
    let marker = j.dir().join("cleaned-up");
    // It ignores SIGTERM: only a SIGINT can make it clean up in time.
    let script = j.write_file(
        "int.py",
        "import signal, sys, time\n\
         def on_int(signum, frame):\n    \
             open(sys.argv[1], 'w').write('done')\n    \
             print('int.py: cleaning up', file=sys.stderr, flush=True)\n    \
             sys.exit(4)\n\
         signal.signal(signal.SIGINT, on_int)\n\
         signal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
         for line in sys.stdin:\n    time.sleep(1000)\n",
    );
    let run = j
        .processor("python3", [script.as_os_str(), marker.as_os_str()])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 124, "{run}");
    let r = only(&run);
    assert_eq!(r.outcome(), "timeout", "{r}");
    assert_eq!(r.exit_code(), Some(4), "{r}");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("done"),
        "the SIGINT handler ran\n{run}"
    );
}

#[test]
fn no_descendant_outlives_jobsup_in_or_out_of_the_workers_group() {
    // Without the pid namespace (tests/tests/containment.rs's), which would end these
    // anyway: the process group and the tree walk alone.
    let j = lines_mode(&["--isolate", "none"]);
    let pidfile = j.dir().join("pids");
    // Each job leaves a sleeper in the worker's group and one in a session of its own;
    // both hold the worker's stdout open.
    let script = j.write_file(
        "leaky.sh",
        format!(
            r#"while IFS= read -r line; do
  sleep 1000 & echo $! >> "{p}"
  setsid sleep 1000 & echo $! >> "{p}"
  printf '%s\n' "$line"
done
"#,
            p = pidfile.display()
        ),
    );
    let run = j.processor("sh", [&script]).stdin("a\nb\n").run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].output(), Some("a"), "{run}");
    assert_eq!(recs[&2].output(), Some("b"), "{run}");
    let leaked = read_pids(&pidfile);
    assert_eq!(leaked.len(), 4, "two sleepers per job\n{run}");
    for p in leaked {
        assert!(!pid_alive(p), "descendant {p} outlived jobsup\n{run}");
    }
}

#[test]
fn no_descendant_outlives_a_timed_out_job() {
    // As above: the group and the tree walk alone.
    let j = lines_mode(&["--ttl", "300ms", "--cleanup", "2s", "--isolate", "none"]);
    let pidfile = j.dir().join("pids");
    let script = j.write_file(
        "leaky.sh",
        format!(
            r#"while IFS= read -r line; do
  sleep 1000 & echo $! >> "{p}"
  setsid sleep 1000 & echo $! >> "{p}"
  wait
done
"#,
            p = pidfile.display()
        ),
    );
    let run = j.processor("sh", [&script]).stdin("x\n").run();
    assert_eq!(run.code(), 124, "{run}");
    let r = only(&run);
    assert_eq!(r.outcome(), "timeout", "{r}");
    assert_eq!(r.signal(), Some(15), "the shell died of the SIGTERM: {r}");
    let leaked = read_pids(&pidfile);
    assert_eq!(leaked.len(), 2, "{run}");
    for p in leaked.into_iter().chain(r.pid()) {
        assert!(!pid_alive(p), "process {p} outlived jobsup\n{run}");
    }
}

#[test]
fn ten_megabytes_of_stderr_per_job_do_not_block_the_worker() {
    let j = lines_mode(&[]);
    let script = j.write_file(
        "chatty.py",
        "import sys\n\
         for line in sys.stdin:\n    \
             sys.stderr.write('x' * 10_000_000 + '\\n')\n    \
             sys.stderr.flush()\n    \
             sys.stdout.write(line.upper())\n    \
             sys.stdout.flush()\n",
    );
    let run = j.processor("python3", [&script]).stdin("a\nb\nc\n").run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "{run}");
    for (seq, want) in [(1, "A"), (2, "B"), (3, "C")] {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
        assert_eq!(recs[&seq].output(), Some(want), "{run}");
    }
}

#[test]
fn extra_line_written_with_the_result_replaces_the_worker() {
    let j = lines_mode(&[]);
    // Both lines in one write: the extra one is in the pipe when the result is read.
    let script = j.write_file(
        "two.py",
        "import sys\n\
         for line in sys.stdin:\n    \
             sys.stdout.write(line.rstrip('\\n').upper() + '\\nextra\\n')\n    \
             sys.stdout.flush()\n",
    );
    let run = j.processor("python3", [&script]).stdin("a\nb\n").run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    for (seq, want) in [(1, "A"), (2, "B")] {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
        assert_eq!(
            recs[&seq].output(),
            Some(want),
            "the job keeps its first line, never a leftover\n{run}"
        );
    }
    assert_ne!(
        recs[&1].pid(),
        recs[&2].pid(),
        "an out-of-step worker is replaced\n{run}"
    );
    assert!(run.stderr.contains("more than one line"), "{run}");
}

#[test]
fn line_written_while_idle_replaces_the_worker() {
    let j = lines_mode(&[]);
    let script = j.write_file(
        "late.py",
        "import sys, time\n\
         for line in sys.stdin:\n    \
             print(line.rstrip('\\n').upper(), flush=True)\n    \
             time.sleep(0.1)\n    \
             print('late extra', flush=True)\n",
    );
    let mut bg = j
        .processor("python3", [&script])
        .stdin("a\n")
        .keep_stdin_open()
        .spawn();
    wait_until(WAIT, "the idle worker is replaced", || {
        bg.stderr_so_far().contains("while idle")
    });
    bg.write_stdin("b\n");
    bg.close_stdin();
    let run = bg.wait();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].output(), Some("A"), "{run}");
    assert_eq!(
        recs[&2].output(),
        Some("B"),
        "not the previous job's leftover\n{run}"
    );
    assert_ne!(recs[&1].pid(), recs[&2].pid(), "{run}");
}

#[test]
fn worker_that_exits_mid_job_is_crashed_and_replaced() {
    let j = lines_mode(&[]);
    let script = j.write_file(
        "die.py",
        "import sys\n\
         for line in sys.stdin:\n    \
             if line.strip() == 'die':\n        sys.exit(3)\n    \
             print(line.strip().upper(), flush=True)\n",
    );
    let run = j.processor("python3", [&script]).stdin("a\ndie\nb\n").run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 3, "{run}");
    assert_eq!(recs[&1].output(), Some("A"), "{run}");
    let died = &recs[&2];
    assert_eq!(died.outcome(), "crashed", "{died}");
    assert_eq!(died.exit_code(), Some(3), "{died}");
    assert_eq!(died.signal(), None, "{died}");
    assert!(died.error().is_some_and(|e| e.contains('3')), "{died}");
    assert_eq!(recs[&3].outcome(), "ok", "{run}");
    assert_eq!(recs[&3].output(), Some("B"), "{run}");
    assert_eq!(recs[&1].pid(), died.pid(), "reused until it died\n{run}");
    assert_ne!(died.pid(), recs[&3].pid(), "{run}");
}

/// A processor that answers one job and exits: every job must still run (on a fresh
/// worker), none may be blamed for the previous worker's exit.
fn one_job_per_process(processor: &str, args: &[&str], jobs: usize) {
    let input = jobsup_tests::lines(jobs, |i| format!("job {i}"));
    let run = lines_mode(&[])
        .processor(processor, args)
        .stdin(input)
        .run();
    let recs = run.by_seq();
    assert_eq!(recs.len(), jobs, "one record per job\n{run}");
    for (seq, r) in &recs {
        assert_eq!(r.outcome(), "ok", "{r}\n{run}");
        assert_eq!(r.output(), Some(format!("job {seq}").as_str()), "{run}");
    }
    assert_eq!(run.code(), 0, "{run}");
}

#[test]
fn shell_worker_that_exits_between_jobs_loses_no_job() {
    one_job_per_process("sh", &["-c", r#"IFS= read -r l; printf '%s\n' "$l""#], 40);
}

#[test]
fn python_worker_that_exits_between_jobs_loses_no_job() {
    // Python takes a while to exit after its answer: the next job is handed over before
    // the exit is seen, which must not make that job `crashed`.
    one_job_per_process(
        "python3",
        &[
            "-c",
            "import sys; sys.stdout.write(sys.stdin.readline()); sys.stdout.flush()",
        ],
        4,
    );
}

#[test]
fn payload_with_a_newline_is_rejected_and_the_others_run() {
    let run = lines_mode(&["--input-format", "ndjson"])
        .processor("python3", ["-u".as_ref(), example("upper.py").as_os_str()])
        .stdin("{\"payload\":\"a\\nb\"}\n{\"payload\":\"c\"}\n")
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    let r = &recs[&1];
    assert_eq!(r.outcome(), "rejected", "{r}");
    assert!(r.error().is_some_and(|e| e.contains("newline")), "{r}");
    assert_eq!(r.attempts(), Some(0), "{r}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    assert_eq!(recs[&2].output(), Some("C"), "{run}");
}

#[test]
fn result_line_past_max_output_fails_the_job_and_replaces_the_worker() {
    let long = "x".repeat(3000);
    let run = lines_mode(&["--max-output", "1KiB"])
        .processor("python3", ["-u".as_ref(), example("upper.py").as_os_str()])
        .stdin(format!("short\n{long}\nafter\n"))
        .run();
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].output(), Some("SHORT"), "{run}");
    let r = &recs[&2];
    assert_eq!(r.outcome(), "failed", "{r}");
    assert!(r.error().is_some_and(|e| e.contains("1024")), "{r}");
    assert!(!r.has("output"), "the long line is not the output: {r}");
    assert_eq!(recs[&3].output(), Some("AFTER"), "{run}");
    assert_ne!(r.pid(), recs[&3].pid(), "{run}");
}

#[test]
fn processor_that_exits_at_once_ends_the_run_with_126() {
    let run = lines_mode(&[])
        .processor("false", [] as [&str; 0])
        .stdin("a\nb\n")
        .timeout(Duration::from_secs(30))
        .run();
    assert_eq!(run.code(), 126, "{run}");
    assert!(
        run.stderr.contains("false"),
        "the message names the processor\n{run}"
    );
    // Whatever was read has its record, once.
    let recs = run.by_seq();
    assert!(recs.keys().all(|s| [1, 2].contains(s)), "{run}");
}

#[test]
fn processor_that_exits_at_once_while_no_job_is_waiting_ends_the_run_with_126() {
    // No input yet: every replacement exits before it is given a job, which is exactly a
    // processor that can never start; jobsup must back off and give up on its own.
    let bg = lines_mode(&[])
        .processor("false", [] as [&str; 0])
        .keep_stdin_open()
        .timeout(Duration::from_secs(20))
        .spawn();
    let run = bg.wait();
    assert_eq!(run.code(), 126, "{run}");
    assert!(run.stderr.contains("false"), "{run}");
    assert!(run.records().is_empty(), "no job was read\n{run}");
}
