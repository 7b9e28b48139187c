//! Reading jobs (lines, ndjson, files) and writing records (stdout, files, order).

use std::io::{Read, Seek, Write};

use jobsup_tests::{bin, jobsup, lines, wait_until, Background, Run, WAIT};
use nix::sys::signal::Signal;

#[test]
fn lines_skip_blanks_and_number_jobs_by_line() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin("a\n\nb\n\n\nc")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.keys().copied().collect::<Vec<_>>(), [1, 3, 6], "{run}");
    for (seq, payload) in [(1, "a"), (3, "b"), (6, "c")] {
        assert_eq!(recs[&seq].id(), seq.to_string(), "{run}");
        assert_eq!(recs[&seq].output(), Some(payload), "{run}");
    }
}

#[test]
fn output_that_is_not_utf8_is_base64() {
    let run = jobsup!()
        .args(["-j", "1"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin(b"\xff\xfe\n")
        .run();
    let recs = run.records();
    assert_eq!(recs.len(), 1, "{run}");
    assert_eq!(recs[0].outcome(), "ok", "{run}");
    assert_eq!(recs[0].output(), None, "{run}");
    assert_eq!(recs[0].output_base64(), Some("//4="), "{run}");
}

#[test]
fn ndjson_ids_and_payloads() {
    let input = concat!(
        r#"{"payload":"plain","id":"job-a"}"#,
        "\n",
        r#"{"payload":"numbered","id":42}"#,
        "\n",
        r#"{"payload":{"a":1}}"#,
        "\n",
        r#"{"payload":7}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "1", "--input-format", "ndjson"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin(input)
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 4, "{run}");
    let expect = [
        (1, "job-a", "plain"),
        (2, "42", "numbered"),
        (3, "3", r#"{"a":1}"#),
        (4, "4", "7"),
    ];
    for (seq, id, output) in expect {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
        assert_eq!(recs[&seq].id(), id, "{run}");
        assert_eq!(recs[&seq].output(), Some(output), "{run}");
    }
}

#[test]
fn ndjson_per_job_ttl_overrides_the_flag() {
    let input = concat!(
        r#"{"payload":"10"}"#,
        "\n",
        r#"{"payload":"60000","ttl":"300ms","cleanup":"5s"}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "1", "--ttl", "60s", "--input-format", "ndjson"])
        .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
        .stdin(input)
        .run();
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&2].outcome(), "timeout", "{run}");
    assert_eq!(run.code(), 124, "{run}");
}

#[test]
fn malformed_ndjson_lines_are_rejected_and_the_run_goes_on() {
    let input = concat!(
        r#"{"payload":"first"}"#,
        "\n",
        "this is not json\n",
        r#"{"id":"no-payload"}"#,
        "\n",
        r#"{"payload":"x","ttl":"banana"}"#,
        "\n",
        "[1,2,3]\n",
        r#"{"payload":"last"}"#,
        "\n",
    );
    let run = jobsup!()
        .args(["-j", "2", "--input-format", "ndjson"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin(input)
        .run();
    let recs = run.by_seq();
    assert_eq!(
        recs.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6],
        "exactly one record per line\n{run}"
    );
    assert_eq!(recs[&1].output(), Some("first"), "{run}");
    assert_eq!(recs[&6].output(), Some("last"), "{run}");
    for seq in [1, 6] {
        assert_eq!(recs[&seq].outcome(), "ok", "{run}");
    }
    for seq in 2..=5 {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "rejected", "{r}");
        assert!(r.error().is_some_and(|e| !e.is_empty()), "says why: {r}");
    }
    assert!(
        recs[&4].error().unwrap().contains("banana") || recs[&4].error().unwrap().contains("ttl"),
        "names the bad duration: {}",
        recs[&4]
    );
    assert_eq!(run.code(), 1, "{run}");
}

#[test]
fn input_and_output_files() {
    let j = jobsup!();
    let input = j.write_file("jobs.txt", "one\ntwo\nthree\n");
    let output = j.dir().join("results.ndjson");
    let run = j
        .args(["-j", "2", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin("ignored\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert!(run.stdout.is_empty(), "records go to the file only\n{run}");
    let written = std::fs::read(&output).expect("the output file exists");
    let recs = jobsup_tests::by_seq(jobsup_tests::records(&written));
    assert_eq!(recs.len(), 3, "{}", String::from_utf8_lossy(&written));
    for (seq, payload) in [(1, "one"), (2, "two"), (3, "three")] {
        assert_eq!(recs[&seq].output(), Some(payload));
    }
}

#[test]
fn keep_order_writes_records_in_input_order() {
    // The first job is much slower than the rest, so without --keep-order its record would
    // come last; with it, it must come first.
    let input = lines(8, |i| if i == 1 { "300".into() } else { "10".into() });
    let run = jobsup!()
        .args(["-j", "2", "--keep-order"])
        .processor(bin!("jobsup-sleepy"), [] as [&str; 0])
        .stdin(input)
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let seqs: Vec<u64> = run.records().iter().map(|r| r.seq()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>(), "{run}");
}

/// A close-on-exec pipe (so that no other test's child holds an end): read end, write end.
fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array, which is valid for them; each is then
    // owned by exactly one File.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    }
}

/// `1\n2\n...n\n`: each line is its own line number.
fn numbered(n: u64) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// Children of jobsup running `sleep 30`: its exec-mode jobs.
fn running_sleeps(bg: &Background) -> usize {
    bg.children()
        .into_iter()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let argv: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                argv.len() >= 2 && argv[0].ends_with(b"sleep") && argv[1] == b"30"
            })
        })
        .count()
}

/// jobsup on `stdin`, two slow exec-mode jobs at a time, interrupted by one SIGTERM once
/// both run (the shutdown timeout then ends them).
fn interrupted_run(stdin: impl Into<std::process::Stdio>) -> Run {
    let bg = jobsup!()
        .args([
            "-j",
            "2",
            "--mode",
            "exec",
            "--ttl",
            "60s",
            "--cleanup",
            "1s",
        ])
        .args(["--shutdown-timeout", "100ms", "-q", "--summary", "none"])
        .processor("sleep", ["30"])
        .stdin_from(stdin)
        .spawn();
    bg.wait_for_handler(Signal::SIGTERM);
    wait_until(WAIT, "two jobs are running", || running_sleeps(&bg) == 2);
    bg.signal(Signal::SIGTERM);
    let run = bg.wait();
    assert_eq!(run.code(), 143, "{run}");
    run
}

/// The line numbers that got a record, in order; every record is `cancelled`.
fn cancelled_seqs(run: &Run) -> Vec<u64> {
    let recs = run.by_seq();
    for r in recs.values() {
        assert_eq!(r.outcome(), "cancelled", "{r}\n{run}");
        assert_eq!(r.id(), r.seq().to_string(), "{r}");
    }
    recs.keys().copied().collect()
}

/// Issue 11: 1,000 jobs in a pipe and a SIGTERM. Every line is either a record or still
/// in the pipe, exactly once; none is lost in a read-ahead buffer.
#[test]
fn an_interrupted_run_leaves_the_lines_it_did_not_take_in_the_pipe() {
    let (reader, mut writer) = pipe();
    writer.write_all(numbered(1000).as_bytes()).unwrap();
    drop(writer);
    let mut ours = reader.try_clone().unwrap();
    let run = interrupted_run(reader);

    let mut left = String::new();
    ours.read_to_string(&mut left).unwrap();
    let left: Vec<u64> = left
        .lines()
        .map(|l| {
            l.parse()
                .unwrap_or_else(|_| panic!("not a line of ours: {l:?}"))
        })
        .collect();
    let recorded = cancelled_seqs(&run);
    let mut seen: Vec<u64> = recorded.iter().chain(&left).copied().collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<_>>(),
        "every line exactly once, as a record or left in the pipe\nrecords: {recorded:?}\nleft: {} lines\n{run}",
        left.len()
    );
    let k = recorded.len() as u64;
    assert_eq!(recorded, (1..=k).collect::<Vec<_>>(), "{run}");
    assert!(!left.is_empty(), "input is read lazily\n{run}");
    assert_eq!(
        left[0],
        k + 1,
        "the pipe resumes at the first line not taken"
    );
}

/// The same with stdin redirected from a file: the shared offset is left just after the
/// last line that got a record, so `(jobsup run ...; cat) < jobs.txt` sees the others.
#[test]
fn an_interrupted_run_leaves_a_file_offset_after_the_last_line_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.txt");
    let text = numbered(1000);
    std::fs::write(&path, &text).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut ours = file.try_clone().unwrap();
    let run = interrupted_run(file);

    let recorded = cancelled_seqs(&run);
    let k = recorded.len();
    assert!(k > 0 && k < 1000, "{run}");
    assert_eq!(recorded, (1..=k as u64).collect::<Vec<_>>(), "{run}");
    let taken: usize = text.lines().take(k).map(|l| l.len() + 1).sum();
    assert_eq!(
        ours.stream_position().unwrap(),
        taken as u64,
        "the offset is just after line {k}\n{run}"
    );
    let mut left = String::new();
    ours.read_to_string(&mut left).unwrap();
    assert_eq!(
        left,
        text[taken..],
        "the rest is exactly the lines without a record"
    );
}

/// Regression: a pipe that is closed ends the run normally, with a record for every line
/// (the last one without a newline too), and nothing is left in it.
#[test]
fn a_closed_pipe_ends_the_run_with_every_record() {
    let (reader, mut writer) = pipe();
    let mut text = numbered(300);
    text.push_str("301");
    writer.write_all(text.as_bytes()).unwrap();
    drop(writer);
    let mut ours = reader.try_clone().unwrap();
    let run = jobsup!()
        .args(["-j", "2", "--mode", "lines"])
        .processor("cat", [] as [&str; 0])
        .stdin_from(reader)
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 301, "{run}");
    for (seq, r) in &recs {
        assert_eq!(r.outcome(), "ok", "{r}");
        assert_eq!(r.output(), Some(seq.to_string().as_str()), "{r}");
    }
    let mut left = Vec::new();
    ours.read_to_end(&mut left).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Regression: input that arrives a little at a time, lines split across writes, and then
/// the end of the pipe, still gives one record per line.
#[test]
fn a_pipe_written_in_pieces_ends_the_run_with_every_record() {
    let mut bg = jobsup!()
        .args(["-j", "2", "--mode", "lines"])
        .processor("cat", [] as [&str; 0])
        .keep_stdin_open()
        .spawn();
    // Each piece, and how many records the lines complete by then have.
    let pieces = [
        ("1\n2", 1),
        ("\n3\n", 3),
        ("", 3),
        ("4", 3),
        ("4\n5", 4),
        ("5\n\n6", 5),
    ];
    for (piece, complete) in pieces {
        bg.write_stdin(piece);
        wait_until(WAIT, "the complete lines have records", || {
            bg.records_so_far().len() >= complete
        });
    }
    bg.close_stdin();
    let run = bg.wait();
    assert_eq!(run.code(), 0, "{run}");
    let outputs: Vec<(u64, String)> = run
        .by_seq()
        .into_iter()
        .map(|(seq, r)| (seq, r.output().unwrap_or_default().to_owned()))
        .collect();
    let expected: Vec<(u64, String)> =
        [(1, "1"), (2, "2"), (3, "3"), (4, "44"), (5, "55"), (7, "6")]
            .iter()
            .map(|&(s, o)| (s, o.to_owned()))
            .collect();
    assert_eq!(outputs, expected, "{run}");
}

#[test]
fn a_line_longer_than_a_pipe_holds_comes_through_a_pipe_between_short_ones() {
    // Once a short line is taken from a full pipe, its writer stays blocked with up to a
    // page less than the pipe's size in it: the reader must read on, not wait for more.
    for len in [65_000, 100_000, 1_000_000] {
        let long = "x".repeat(len);
        let run = jobsup!()
            .processor(bin!("jobsup-echo"), [] as [&str; 0])
            .stdin(format!("a\n{long}\nb\n"))
            .run();
        assert_eq!(run.code(), 0, "{len}: {run}");
        let by_seq = run.by_seq();
        assert_eq!(by_seq.len(), 3, "{len}: {run}");
        assert_eq!(by_seq[&2].output(), Some(long.as_str()), "{len}");
        assert_eq!(by_seq[&3].output(), Some("b"), "{len}");
    }
}
