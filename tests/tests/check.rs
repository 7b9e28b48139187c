//! Validation: `jobsup check FILE`, every problem of a file at once, commands that cannot
//! be found, and mode-only settings refused alike from flags and config files.

use jobsup_tests::{bin, jobsup, jobsup_check, Run};

/// Asserts a usage or config error (125) with nothing on stdout.
fn assert_refused(run: &Run) {
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stdout.is_empty(), "nothing on stdout\n{run}");
}

/// The stderr line that holds `needle`, from `needle` on.
fn line_with<'a>(run: &'a Run, needle: &str) -> &'a str {
    run.stderr
        .lines()
        .find_map(|l| l.find(needle).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no line holds {needle:?}\n{run}"))
}

const GOOD: &str = "[defaults]\nttl = \"7s\"\n\n[pools.a]\ncommand = \"cat\"\nmode = \"lines\"\n";

#[test]
fn check_takes_the_file_as_an_argument_or_with_config() {
    let check = jobsup_check!();
    let path = check.write_file("good.toml", GOOD);
    let positional = check.arg(&path).run();
    assert_eq!(positional.code(), 0, "{positional}");
    assert!(
        positional.stdout_str().lines().any(|l| l == "pool a")
            && positional.stdout_str().contains("ttl: 7s"),
        "the resolved pool is printed\n{positional}"
    );
    let option = jobsup_check!().arg("--config").arg(&path).run();
    assert_eq!(option.code(), 0, "{option}");
    assert_eq!(
        option.stdout, positional.stdout,
        "the same listing either way"
    );

    // Both at once, or neither: a usage error that says what check takes.
    let both = jobsup_check!().arg(&path).arg("--config").arg(&path).run();
    assert_refused(&both);
    assert!(both.stderr.contains("--config"), "{both}");
    let neither = jobsup_check!().run();
    assert_refused(&neither);
    assert!(neither.stderr.contains("FILE"), "{neither}");
}

#[test]
fn three_errors_in_two_pools_are_reported_at_once() {
    let check = jobsup_check!();
    let path = check.write_file(
        "bad.toml",
        "[pools.a]\ncommand = \"cat\"\nmode = \"lines\"\nttl = \"banana\"\nretires = 2\n\n\
         [pools.b]\ncommand = \"cat\"\nmode = \"exec\"\nconcurrency = 0\n",
    );
    let run = check.arg(&path).run();
    assert_refused(&run);
    let file = path.display().to_string();
    let expected = [
        (format!("{file}:4:7:"), "pool \"a\"", "`ttl`"),
        (format!("{file}:5:1:"), "pool \"a\"", "`retires`"),
        (format!("{file}:10:1:"), "pool \"b\"", "`concurrency`"),
    ];
    for (at, pool, key) in &expected {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(at.as_str()) && l.contains(pool) && l.contains(key)),
            "{at} {pool} {key} is reported on its own line\n{run}"
        );
    }
    // In the file's order.
    let positions: Vec<usize> = expected
        .iter()
        .map(|(at, _, _)| run.stderr.find(at.as_str()).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{run}");

    // A run of the file says every bad key too, not just the first.
    let run = jobsup!()
        .arg("--config")
        .arg(&path)
        .args(["--pool", "a"])
        .stdin("x\n")
        .run();
    assert_refused(&run);
    for (at, _, _) in &expected[..2] {
        assert!(run.stderr.contains(at.as_str()), "{at}\n{run}");
    }
}

#[test]
fn a_command_that_cannot_be_found_or_run_is_reported_by_check() {
    let check = jobsup_check!();
    let not_executable = check.write_file("script.sh", "#!/bin/sh\necho hi\n");
    let text = format!(
        "[pools.found]\ncommand = \"cat\"\nmode = \"lines\"\n\n\
         [pools.missing]\ncommand = \"no-such-processor-on-this-machine\"\nmode = \"exec\"\n\n\
         [pools.plain]\ncommand = \"{}\"\nmode = \"exec\"\nconcurrency = 0\n",
        not_executable.display()
    );
    let path = check.write_file("commands.toml", text);
    let run = check.arg(&path).run();
    assert_refused(&run);
    let missing = line_with(&run, "pool \"missing\"");
    assert!(
        missing.contains("not found") && missing.contains("no-such-processor-on-this-machine"),
        "{run}"
    );
    assert!(
        run.stderr.contains(&format!("{}:6:", path.display())),
        "the missing command is located at its key\n{run}"
    );
    let plain = run
        .stderr
        .lines()
        .filter(|l| l.contains("pool \"plain\""))
        .collect::<Vec<_>>();
    assert!(
        plain.iter().any(|l| l.contains("cannot be run")),
        "a file without the execute bit is named\n{run}"
    );
    assert!(
        plain.iter().any(|l| l.contains("concurrency")),
        "reported with the pool's other problem, at once\n{run}"
    );
    assert!(!run.stderr.contains("pool \"found\""), "{run}");
}

/// A mode-only setting: flag, key, a value as a flag and as TOML, a mode it is refused in
/// and one it is accepted in.
struct Case {
    flag: &'static str,
    key: &'static str,
    value: &'static str,
    toml: &'static str,
    wrong: &'static str,
    right: &'static str,
}

const CASES: &[Case] = &[
    Case {
        flag: "--idle-timeout",
        key: "idle_timeout",
        value: "10s",
        toml: "\"10s\"",
        wrong: "exec",
        right: "native",
    },
    Case {
        flag: "--start-timeout",
        key: "start_timeout",
        value: "10s",
        toml: "\"10s\"",
        wrong: "exec",
        right: "lines",
    },
    Case {
        flag: "--max-jobs-per-worker",
        key: "max_jobs_per_worker",
        value: "5",
        toml: "5",
        wrong: "exec",
        right: "lines",
    },
    Case {
        flag: "--cleanup-signal",
        key: "cleanup_signal",
        value: "INT",
        toml: "\"INT\"",
        wrong: "native",
        right: "exec",
    },
    Case {
        flag: "--max-output",
        key: "max_output",
        value: "1KiB",
        toml: "\"1KiB\"",
        wrong: "native",
        right: "lines",
    },
];

/// The processor for a mode: jobsup's echo for native, cat for the others.
fn processor(mode: &str) -> &'static str {
    if mode == "native" {
        bin!("jobsup-echo")
    } else {
        "cat"
    }
}

#[test]
fn a_mode_only_setting_in_another_mode_is_the_same_error_from_a_flag_and_a_file() {
    for case in CASES {
        let what = format!("{} in --mode {}", case.flag, case.wrong);
        let flagged = jobsup!()
            .args(["--mode", case.wrong, case.flag, case.value])
            .processor(processor(case.wrong), [] as [&str; 0])
            .stdin("x\n")
            .run();
        assert_refused(&flagged);
        let said = line_with(
            &flagged,
            &format!("{} ({}) applies to", case.flag, case.key),
        );
        let applies_to = said
            .split_once("applies to --mode ")
            .and_then(|(_, rest)| rest.split_once(" only;"))
            .map(|(modes, _)| modes)
            .unwrap_or_else(|| panic!("{what}: no list of modes\n{flagged}"));
        assert!(
            said.contains(&format!("this pool runs --mode {}", case.wrong))
                && applies_to.contains(case.right)
                && !applies_to.contains(case.wrong),
            "{what}: names the mode and the modes it applies to\n{flagged}"
        );

        let j = jobsup!();
        let path = j.write_file(
            "pool.toml",
            format!(
                "[pools.p]\ncommand = \"{}\"\nmode = \"{}\"\n{} = {}\n",
                processor(case.wrong),
                case.wrong,
                case.key,
                case.toml
            ),
        );
        let filed = j.arg("--config").arg(&path).stdin("x\n").run();
        assert_refused(&filed);
        assert_eq!(
            line_with(&filed, case.flag),
            said,
            "{what}: the same words from the file\n{filed}"
        );
        assert!(
            filed.stderr.contains(&format!("{}:4:1:", path.display())),
            "{what}: located at the key\n{filed}"
        );
        let checked = jobsup_check!().arg(&path).run();
        assert_refused(&checked);
        assert_eq!(line_with(&checked, case.flag), said, "{what}\n{checked}");
    }
}

#[test]
fn a_mode_only_setting_is_accepted_in_its_own_mode() {
    for case in CASES {
        let run = jobsup!()
            .args(["--mode", case.right, case.flag, case.value])
            .processor(processor(case.right), [] as [&str; 0])
            .stdin("hello\n")
            .run();
        assert_eq!(
            run.code(),
            0,
            "{} in --mode {}\n{run}",
            case.flag,
            case.right
        );
        let records = run.records();
        assert_eq!(records.len(), 1, "{run}");
        assert_eq!(records[0].outcome(), "ok", "{run}");
    }
}
