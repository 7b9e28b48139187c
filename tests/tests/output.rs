//! Where the records and the logs go when nobody takes them: a closed, full, broken or
//! unread stdout, and an unread stderr. Records are never lost silently, memory stays
//! bounded, signals still end the run, and nothing of the logs reaches the records.

use std::io::Read;

use jobsup_tests::{bin, jobsup, lines, unread_pipe, vm_rss_kib, wait_until, Jobsup, Run, WAIT};
use nix::sys::signal::Signal;

/// The lines of stderr that are errors.
fn error_lines(run: &Run) -> Vec<&str> {
    run.stderr.lines().filter(|l| l.contains("ERROR")).collect()
}

/// The `N` and `M` of the one "N of M records could not be written" line.
fn lost_of_total(run: &Run) -> (u64, u64) {
    let errors = error_lines(run);
    assert_eq!(errors.len(), 1, "exactly one error line\n{run}");
    let line = errors[0];
    let at = line
        .find(" records could not be written")
        .unwrap_or_else(|| panic!("the error does not say how many records were lost\n{run}"));
    let words: Vec<&str> = line[..at].split_whitespace().rev().take(3).collect();
    match words[..] {
        [total, "of", lost] => (
            lost.parse().expect("a count of records"),
            total.parse().expect("a count of records"),
        ),
        _ => panic!("not 'N of M records could not be written': {line}"),
    }
}

/// The jobs counted by the JSON summary on stderr.
fn summary_jobs(run: &Run) -> u64 {
    run.json_summary()["jobs"].as_u64().expect("a job count")
}

/// `jobsup run ARGS` through `sh -c 'exec "$@" REDIRECTION'`: jobsup itself starts with
/// that redirection (`>&-`: stdout closed).
fn jobsup_redirected(redirection: &str) -> Jobsup {
    Jobsup::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec \"$@\" {redirection}"))
        .args(["sh", bin!("jobsup-shim"), "run"])
}

/// `jobsup check` and `jobsup report` print on stdout: closed, it is an error too.
#[test]
fn check_and_report_with_a_closed_stdout_are_errors() {
    let j = jobsup_redirected(">&-");
    let config = j.write_file("jobs.toml", "[pools.p]\ncommand = \"echo\"\n");
    let log = j.write_file(
        "results.ndjson",
        "{\"seq\":1,\"id\":\"1\",\"outcome\":\"ok\",\"duration_ms\":1.0,\"attempts\":1}\n",
    );
    let shim = bin!("jobsup-shim");
    let runs = [
        Jobsup::new("/bin/sh")
            .arg("-c")
            .arg("exec \"$@\" >&-")
            .args(["sh", shim, "check", "--config"])
            .arg(&config),
        Jobsup::new("/bin/sh")
            .arg("-c")
            .arg("exec \"$@\" >&-")
            .args(["sh", shim, "report"])
            .arg(&log),
    ];
    for cmd in runs {
        let run = cmd.run();
        assert_eq!(run.code(), 125, "{run}");
        assert!(run.stderr.contains("stdout is closed"), "{run}");
    }
}

#[test]
fn closed_stdout_without_output_is_an_error_before_any_job() {
    let cmd = jobsup_redirected(">&-");
    let marker = cmd.dir().join("ran");
    let script = format!("echo ran >> {}", marker.display());
    let run = cmd
        .args(["--mode", "exec", "-j", "2"])
        .processor("/bin/sh", ["-c", script.as_str()])
        .stdin("a\nb\nc\n")
        .run();
    assert_eq!(run.code(), 125, "{run}");
    let stderr: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(stderr.len(), 1, "one line on stderr\n{run}");
    assert!(
        stderr[0].contains("stdout is closed") && stderr[0].contains("--output"),
        "{run}"
    );
    assert!(run.stdout.is_empty(), "{run}");
    assert!(
        !marker.exists(),
        "a job ran with nowhere to record it\n{run}"
    );
    let names: Vec<String> = std::fs::read_dir(run.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "no file was written: {names:?}\n{run}");
}

#[test]
fn closed_stdout_with_output_writes_the_records_there() {
    let cmd = jobsup_redirected(">&-");
    let output = cmd.dir().join("records.ndjson");
    let run = cmd
        .args(["-j", "2", "--output"])
        .arg(&output)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin("ok:a\nok:b\nok:c\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = jobsup_tests::records(&std::fs::read(&output).unwrap());
    assert_eq!(recs.len(), 3, "{run}");
    assert!(recs.iter().all(|r| r.outcome() == "ok"), "{run}");
}

/// Runs 20 quick jobs with stdout sent to `out`; every record is lost.
fn run_with_stdout(out: std::fs::File) -> Run {
    jobsup!()
        .args(["-j", "2", "--summary", "json"])
        .stdout_to(out)
        .processor(bin!("jobsup-flaky"), [] as [&str; 0])
        .stdin(lines(20, |i| format!("ok:{i}")))
        .run()
}

#[test]
fn full_stdout_is_one_error_line_and_exit_125() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let run = run_with_stdout(full);
    assert_eq!(run.code(), 125, "{run}");
    let (lost, total) = lost_of_total(&run);
    assert_eq!(lost, total, "nothing can be written to /dev/full\n{run}");
    assert_eq!(total, summary_jobs(&run), "{run}");
    assert!(
        error_lines(&run)[0].contains("No space left on device"),
        "{run}"
    );
}

#[test]
fn stdout_open_for_reading_only_is_one_error_line_and_exit_125() {
    let read_only = std::fs::File::open("/dev/null").unwrap();
    let run = run_with_stdout(read_only);
    assert_eq!(run.code(), 125, "{run}");
    let (lost, total) = lost_of_total(&run);
    assert_eq!(lost, total, "{run}");
    assert!(
        error_lines(&run)[0].contains("Bad file descriptor"),
        "{run}"
    );
}

// A stdout closed by its reader (`| head -1`) stops the run with 141: closed_output.rs.

/// A file of `size` bytes of `x` in the test's directory, for `cat` to output.
fn big_output(cmd: &Jobsup, size: usize) -> String {
    let path = cmd.write_file("output.txt", vec![b'x'; size]);
    path.to_str().unwrap().to_string()
}

/// What a job outputs in the backlog tests, and how many jobs: together far more than the
/// 64 MiB backlog.
const OUTPUT_SIZE: usize = 200_000;
const JOBS: usize = 1500;

/// The backlog bound (64 MiB of records) plus room for jobsup itself (a debug build) and
/// the records of the jobs running when the input stopped.
const RSS_BOUND_KIB: u64 = (64 + 96) * 1024;

/// The most jobs read before the backlog stops the input: the 64 MiB in records, plus
/// those read ahead and running.
const JOBS_BOUND: u64 = (64 << 20) / OUTPUT_SIZE as u64 + 100;

#[test]
fn unread_stdout_bounds_the_backlog_and_two_signals_end_the_run() {
    let (unread, write) = unread_pipe();
    let cmd = jobsup!();
    let output = big_output(&cmd, OUTPUT_SIZE);
    let bg = cmd
        .args(["--mode", "exec", "-j", "2", "--summary", "json"])
        // Long enough that only the second signal can end the wait within the test.
        .args(["--shutdown-timeout", "10m"])
        .stdout_to(write)
        .processor("cat", [output.as_str()])
        .stdin(lines(JOBS, |i| i.to_string()))
        .spawn();
    bg.wait_for_handler(Signal::SIGTERM);
    wait_until(WAIT, "the backlog stops the input", || {
        bg.stderr_so_far().contains("reading no more input")
    });
    let rss = vm_rss_kib(bg.pid()).expect("jobsup's VmRSS");
    assert!(
        rss < RSS_BOUND_KIB,
        "jobsup holds {rss} KiB with its input stopped by the backlog"
    );

    // A first signal: the wait for the output is now bounded by the shutdown timeout,
    // and jobsup says that it is waiting.
    bg.signal_delivered(Signal::SIGTERM);
    wait_until(WAIT, "jobsup says it is waiting for the output", || {
        bg.stderr_so_far().contains("records are waiting")
    });
    // A second one: it gives up on the output at once.
    bg.signal_delivered(Signal::SIGTERM);
    let run = bg.wait();
    drop(unread);
    // Records were lost: a failed run (125), which outranks the interruption (143).
    assert_eq!(run.code(), 125, "{run}");
    let (lost, total) = lost_of_total(&run);
    assert!(lost > 0 && lost <= total, "{run}");
    assert!(
        error_lines(&run)[0].contains("the output is not being read"),
        "{run}"
    );
    let read = summary_jobs(&run);
    assert!(
        read <= JOBS_BOUND,
        "{read} jobs read: the input did not stop\n{run}"
    );
    assert!(children_running(&output).is_empty(), "{run}");
}

#[test]
fn slow_stdout_gets_every_record_once_it_reads() {
    let (mut late, write) = unread_pipe();
    let cmd = jobsup!();
    let output = big_output(&cmd, OUTPUT_SIZE);
    let bg = cmd
        .args(["--mode", "exec", "-j", "2"])
        .stdout_to(write)
        .processor("cat", [output.as_str()])
        .stdin(lines(JOBS / 3, |i| i.to_string()))
        .spawn();
    wait_until(WAIT, "the backlog stops the input", || {
        bg.stderr_so_far().contains("reading no more input")
    });
    // Now the reader catches up: the input resumes, every record arrives.
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        late.read_to_end(&mut all).unwrap();
        all
    });
    let run = bg.wait();
    let stdout = reader.join().unwrap();
    assert_eq!(run.code(), 0, "{run}");
    let recs = jobsup_tests::by_seq(jobsup_tests::records(&stdout));
    assert_eq!(recs.len(), JOBS / 3, "{run}");
    assert!(
        recs.values()
            .all(|r| r.outcome() == "ok" && r.output().is_some_and(|o| o.len() == OUTPUT_SIZE)),
        "{run}"
    );
}

/// Live processes whose command line is `cat <output>`: workers of these tests.
fn children_running(output: &str) -> Vec<i32> {
    let argv = format!("cat\0{output}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == argv.as_bytes())
                && jobsup_tests::pid_alive(pid)
        })
        .collect()
}

#[test]
fn unread_stderr_neither_hangs_jobsup_nor_reaches_the_records() {
    // Each job floods its stderr with 20 MB of long lines: far more than a pipe and the
    // log queue hold, with stderr never read.
    let (unread, write) = unread_pipe();
    let flood = "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 8000 >&2; echo done";
    let jobs = 4;
    let run = jobsup!()
        .args(["--mode", "exec", "-j", "2"])
        .stderr_to(write)
        .processor("/bin/sh", ["-c", flood])
        .stdin(lines(jobs, |i| i.to_string()))
        .run();
    drop(unread);
    assert_eq!(run.code(), 0, "{run}");
    // Every line of stdout is a record (records() fails the test on any other line), one
    // per job.
    let recs = run.by_seq();
    assert_eq!(recs.len(), jobs, "{run}");
    assert!(
        recs.values()
            .all(|r| r.outcome() == "ok" && r.output() == Some("done\n")),
        "{run}"
    );
}
