//! Values at and past the edges: out-of-range durations from every entry point, the defined
//! zero values, a line worker's slow start-up, and random ndjson records. Whatever comes
//! in, jobsup never panics, and every line read gets exactly one record.

use jobsup_tests::{bin, jobsup, Run};

/// `jobsup run` in exec mode over `echo`, with `flags`, on ndjson `input`.
fn exec_echo(flags: &[&str], input: &str) -> Run {
    jobsup!()
        .args(["--input-format", "ndjson", "--mode", "exec", "-j", "2"])
        .args(flags)
        .processor("echo", ["{}"])
        .stdin(input)
        .run()
}

fn assert_no_panic(run: &Run) {
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "jobsup panicked\n{run}"
    );
}

#[test]
fn out_of_range_flags_are_usage_errors_naming_the_flag() {
    for (flag, value) in [
        ("--ttl", "1e20"),
        ("--ttl", "-1"),
        ("--ttl", "NaN"),
        ("--cleanup", "1e300"),
        ("--cleanup", "inf"),
        ("--retry-delay", "1e30"),
        ("--shutdown-timeout", "1e19"),
        ("--idle-timeout", "101y"),
        ("--slow", "-0.5"),
        ("--memory", "1e30"),
        ("--max-output", "0"),
        ("--jobs", "0"),
        ("--retries", "-1"),
    ] {
        // A negative value must be glued to its flag, or it reads as a flag itself.
        let run = jobsup!()
            .arg(format!("{flag}={value}"))
            .processor(bin!("jobsup-echo"), [] as [&str; 0])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 125, "{flag} {value}\n{run}");
        assert_no_panic(&run);
        assert!(
            run.stderr.contains(value),
            "{flag} {value}: the error names the value\n{run}"
        );
        assert!(run.records().is_empty(), "nothing ran\n{run}");
    }
}

#[test]
fn out_of_range_config_values_name_file_line_and_key() {
    for (key, value) in [
        ("ttl", "1e20"),
        ("cleanup", "-3"),
        ("retry_delay", "\"1e30\""),
        ("ttl", "nan"),
    ] {
        let j = jobsup!();
        let config = j.write_file(
            "jobs.toml",
            format!("[pools.p]\ncommand = \"echo\"\n{key} = {value}\n"),
        );
        let run = j.arg("--config").arg(&config).stdin("x\n").run();
        assert_eq!(run.code(), 125, "{key} = {value}\n{run}");
        assert_no_panic(&run);
        assert!(
            run.stderr.contains("jobs.toml:3:") && run.stderr.contains(key),
            "{key} = {value}: file, line and key\n{run}"
        );
    }
}

#[test]
fn out_of_range_job_durations_reject_that_job_and_the_run_goes_on() {
    let input = r#"{"payload":"a","ttl":1e20}
{"payload":"b"}
{"payload":"c","ttl":1e19}
{"payload":"d","cleanup":-1}
{"payload":"e","ttl":"NaN"}
{"payload":"f","ttl":1.8446744073709552e19}
{"payload":"g","cleanup":"1e400"}
"#;
    let run = exec_echo(&[], input);
    assert_no_panic(&run);
    let recs = run.by_seq();
    assert_eq!(recs.len(), 7, "one record per line\n{run}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
    for seq in [1, 3, 4, 5, 6, 7] {
        let r = &recs[&seq];
        assert_eq!(r.outcome(), "rejected", "{r}");
        assert!(
            r.error()
                .is_some_and(|e| e.contains("bad \"ttl\"") || e.contains("bad \"cleanup\"")),
            "{r}"
        );
    }
    assert_eq!(run.code(), 1, "rejected jobs make the run's code 1\n{run}");
}

#[test]
fn a_ttl_of_zero_is_no_deadline() {
    // The job outlives a deadline of "0": under the old reading it timed out at once.
    let run = jobsup!()
        .args(["--mode", "exec", "--ttl", "0", "--cleanup", "0"])
        .processor("sh", ["-c", "sleep 0.3; echo done"])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records()[0].outcome(), "ok", "{run}");
    // The same, set per job.
    let run = exec_echo(&["--ttl", "50ms"], "{\"payload\":\"slow\",\"ttl\":0}\n");
    assert_eq!(run.records()[0].outcome(), "ok", "{run}");
}

#[test]
fn a_cleanup_of_zero_kills_at_the_ttl_without_a_cleanup_request() {
    let j = jobsup!().args(["--mode", "exec", "--ttl", "200ms", "--cleanup", "0"]);
    let marker = j.dir().join("got-term");
    let script = format!("trap 'touch {}' TERM; sleep 30 & wait", marker.display());
    let run = j.processor("sh", ["-c", &script]).stdin("x\n").run();
    assert_eq!(run.code(), 137, "{run}");
    let r = &run.records()[0];
    assert_eq!(r.outcome(), "killed", "{r}");
    assert_eq!(r.signal(), Some(9), "{r}");
    assert!(!marker.exists(), "no cleanup signal was sent\n{run}");
}

#[test]
fn a_line_worker_s_start_up_does_not_count_against_its_first_job() {
    // The worker takes 350 ms to start reading, longer than the ttl: the clock starts when
    // it takes its first line.
    let run = jobsup!()
        .args(["--mode", "lines", "-j", "1", "--ttl", "300ms"])
        .processor("sh", ["-c", "sleep 0.35; exec cat"])
        .stdin("a\nb\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&1].output(), Some("a"), "{run}");
    assert_eq!(recs[&2].outcome(), "ok", "{run}");
}

#[test]
fn a_line_worker_that_never_reads_still_meets_its_deadline() {
    // The start-up grace is bounded by --start-timeout; then the ttl runs as usual.
    let run = jobsup!()
        .args([
            "--mode",
            "lines",
            "-j",
            "1",
            "--ttl",
            "100ms",
            "--cleanup",
            "100ms",
        ])
        .args(["--start-timeout", "200ms"])
        .processor("sh", ["-c", "trap '' TERM; sleep 30"])
        .stdin("a\n")
        .run();
    assert_eq!(run.code(), 137, "{run}");
    assert_eq!(run.records()[0].outcome(), "killed", "{run}");
}

/// A random JSON value: every type, with numbers from tiny to huge and negative.
fn random_value(rng: &mut fastrand::Rng, depth: u32) -> serde_json::Value {
    use serde_json::{json, Value};
    let numbers = [
        json!(0),
        json!(-1),
        json!(1e20),
        json!(1e-300),
        json!(-0.0),
        json!(1.7976931348623157e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.25),
        json!(3),
    ];
    match rng.u8(0..8) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 | 3 => numbers[rng.usize(0..numbers.len())].clone(),
        4 => {
            let strings = [
                "", "30s", "1e20", "-5s", "NaN", "100y", "0", "banana", "1m30s", "\u{0}",
            ];
            Value::String(strings[rng.usize(0..strings.len())].into())
        }
        5 if depth < 2 => Value::Array(
            (0..rng.usize(0..3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        6 if depth < 2 => Value::Object(
            (0..rng.usize(0..3))
                .map(|i| (format!("k{i}"), random_value(rng, depth + 1)))
                .collect(),
        ),
        _ => Value::String((0..rng.usize(0..20)).map(|_| rng.alphanumeric()).collect()),
    }
}

#[test]
fn random_ndjson_records_give_exactly_one_record_per_line() {
    let mut rng = fastrand::Rng::with_seed(11);
    let keys = [
        "payload", "id", "ttl", "cleanup", "kind", "tll", "", "payload ",
    ];
    let mut input = String::new();
    let lines = 300;
    for _ in 0..lines {
        let line = match rng.u8(0..10) {
            // Not JSON at all, or truncated.
            0 => "{\"payload\":".to_string(),
            1 => (0..rng.usize(1..40)).map(|_| rng.char(' '..='~')).collect(),
            _ => {
                let mut map = serde_json::Map::new();
                for _ in 0..rng.usize(0..5) {
                    let key = keys[rng.usize(0..keys.len())];
                    // Durations small enough that accepted jobs finish at once.
                    let value = match key {
                        "ttl" | "cleanup" if rng.bool() => serde_json::json!("5s"),
                        _ => random_value(&mut rng, 0),
                    };
                    map.insert(key.into(), value);
                }
                if rng.u8(0..3) > 0 {
                    map.insert("payload".into(), random_value(&mut rng, 0));
                }
                serde_json::Value::Object(map).to_string()
            }
        };
        // A line must stay one line, and not be blank (blank lines are no jobs).
        let line = line.replace(['\n', '\r'], " ");
        input.push_str(if line.trim().is_empty() { "x" } else { &line });
        input.push('\n');
    }
    let run = jobsup!()
        .args([
            "--input-format",
            "ndjson",
            "--mode",
            "exec",
            "-j",
            "2",
            "--ttl",
            "5s",
        ])
        .processor("true", [] as [&str; 0])
        .stdin(&input)
        .run();
    assert_no_panic(&run);
    let recs = run.by_seq();
    assert_eq!(run.records().len(), lines, "records out = lines in\n{run}");
    assert_eq!(recs.len(), lines, "one record per line, none twice\n{run}");
    assert!(
        (1..=lines as u64).all(|seq| recs.contains_key(&seq)),
        "{run}"
    );
    assert!(
        matches!(run.code(), 0 | 1 | 124 | 137),
        "the code says what the jobs did\n{run}"
    );
}

#[test]
fn an_open_files_limit_no_worker_can_get_is_refused_before_any_job() {
    // Above fs.nr_open on every Linux: the kernel would refuse it for every worker.
    let run = jobsup!()
        .args(["--open-files", "999999999999"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains("open_files"), "{run}");
    assert!(run.records().is_empty(), "nothing ran\n{run}");
}
