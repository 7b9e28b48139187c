//! Help that teaches: every subcommand's `--help` ends with examples, `run --help` holds the
//! exit codes, the placeholders and the record fields; shell completions and the man page.

use jobsup_tests::{Jobsup, Run};

/// `jobsup ARGS...` (no `run` in front).
fn jobsup(args: &[&str]) -> Run {
    Jobsup::new(env!("CARGO_BIN_EXE_jobsup-shim"))
        .args(args)
        .run()
}

/// The subcommands `jobsup --help` lists (clap's own `help` aside).
fn listed_subcommands() -> Vec<String> {
    let run = jobsup(&["--help"]);
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stdout_str();
    let section = out
        .split_once("Commands:\n")
        .unwrap_or_else(|| panic!("no Commands section\n{run}"))
        .1;
    section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Asserts that `text` ends with an `Examples:` section of 2 to 4 `jobsup ...` lines, and
/// nothing after it but the section's own indented lines.
fn assert_ends_with_examples(text: &str, what: &str) {
    let at = text
        .rfind("\nExamples:\n")
        .unwrap_or_else(|| panic!("{what}: no Examples section\n{text}"));
    let section = &text[at + "\nExamples:\n".len()..];
    for line in section.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.starts_with("  "),
            "{what}: the Examples section is not the last one ({line:?})\n{text}"
        );
    }
    let examples = section
        .lines()
        .filter(|l| l.trim_start().starts_with("jobsup "))
        .count();
    assert!(
        (2..=4).contains(&examples),
        "{what}: {examples} example command lines, expected 2 to 4\n{text}"
    );
}

#[test]
fn every_subcommand_help_ends_with_examples() {
    let subcommands = listed_subcommands();
    for expected in [
        "run",
        "report",
        "check",
        "enqueue",
        "serve",
        "status",
        "dead",
        "completions",
        "man",
    ] {
        assert!(
            subcommands.iter().any(|s| s == expected),
            "{expected} is not listed: {subcommands:?}"
        );
    }
    let top = jobsup(&["--help"]);
    assert_ends_with_examples(&top.stdout_str(), "jobsup --help");
    for sub in &subcommands {
        for flag in ["--help", "-h"] {
            let run = jobsup(&[sub, flag]);
            assert_eq!(run.code(), 0, "{run}");
            assert_ends_with_examples(&run.stdout_str(), &format!("jobsup {sub} {flag}"));
        }
    }
}

#[test]
fn run_help_has_every_exit_code_the_placeholders_and_the_fields() {
    let run = jobsup(&["run", "--help"]);
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stdout_str();
    let exit_codes = out
        .split_once("Exit codes")
        .unwrap_or_else(|| panic!("no exit-code table\n{run}"))
        .1;
    let table: Vec<&str> = exit_codes
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    // The codes each row starts with (`125  ...`, `130, 143, 129  ...`).
    let listed: Vec<u8> = table
        .iter()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .flat_map(|l| {
            let head = l.trim_start();
            let head = &head[..head.find(char::is_alphabetic).unwrap_or(head.len())];
            head.split([',', ' '])
                .filter_map(|t| t.parse::<u8>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    use jobsup::exit;
    // Every code of the table, and the interrupting signals' (128 + SIGINT, SIGTERM).
    for code in exit::ALL.into_iter().chain([130, 143]) {
        assert!(
            listed.contains(&code),
            "exit code {code} is not in the table {listed:?}\n{out}"
        );
    }
    assert!(
        exit_codes.contains("141") && exit_codes.contains("SIGPIPE"),
        "141 is explained\n{out}"
    );
    for placeholder in ["{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{id}"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(&format!("{placeholder} "))),
            "placeholder {placeholder} is not explained\n{out}"
        );
    }
    for field in [
        "seq",
        "id",
        "kind",
        "outcome",
        "output",
        "output_base64",
        "error",
        "exit_code",
        "signal",
        "duration_ms",
        "attempts",
        "worker",
        "payload",
        "ttl",
        "cleanup",
    ] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().split([' ', ',']).next() == Some(field)),
            "field {field} is not listed\n{out}"
        );
    }
    // -h stays short: examples, not the reference.
    let short = jobsup(&["run", "-h"]).stdout_str();
    assert!(!short.contains("Exit codes"), "{short}");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let run = jobsup(&["completions", shell]);
        assert_eq!(run.code(), 0, "{run}");
        let script = run.stdout_str();
        assert!(
            script.contains("run") && script.contains("ttl") && script.contains("jobsup"),
            "the {shell} script knows run and --ttl\n{script}"
        );
        assert!(
            script.contains("--ttl") || (shell == "fish" && script.contains("-l ttl")),
            "the {shell} script completes --ttl\n{script}"
        );
        // Where the shell is installed, it must accept the script's syntax.
        let path =
            std::env::temp_dir().join(format!("jobsup-completion-{}.{shell}", std::process::id()));
        std::fs::write(&path, &script).unwrap();
        match std::process::Command::new(shell)
            .arg("-n")
            .arg(&path)
            .output()
        {
            Ok(checked) => assert!(
                checked.status.success(),
                "{shell} -n refuses the script: {}\n{script}",
                String::from_utf8_lossy(&checked.stderr)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot run {shell}: {e}"),
        }
        let _ = std::fs::remove_file(&path);
    }
    let run = jobsup(&["completions", "tcsh"]);
    assert_eq!(run.code(), 125, "an unknown shell is a usage error\n{run}");
}

#[test]
fn man_prints_roff_for_jobsup_and_every_subcommand() {
    let run = jobsup(&["man"]);
    assert_eq!(run.code(), 0, "{run}");
    let roff = run.stdout_str();
    let pages: Vec<&str> = roff.lines().filter(|l| l.starts_with(".TH ")).collect();
    assert!(
        pages.first().is_some_and(|l| l.starts_with(".TH jobsup ")),
        "jobsup's own page first: {pages:?}"
    );
    let subcommands = listed_subcommands();
    assert_eq!(
        pages.len(),
        1 + subcommands.len(),
        "one page for jobsup and one per subcommand: {pages:?}"
    );
    assert!(
        roff.contains("\\-\\-ttl") || roff.contains("--ttl"),
        "the page documents --ttl"
    );
    assert!(roff.contains("Examples:"), "the examples are in the page");

    let run = jobsup(&["man", "run"]);
    assert_eq!(run.code(), 0, "{run}");
    let page = run.stdout_str();
    assert_eq!(
        page.matches("\n.TH ").count() + usize::from(page.starts_with(".TH ")),
        1,
        "{page}"
    );
    assert!(page.contains(".TH jobsup-run "), "{page}");
    assert!(page.contains("ttl"), "{page}");

    let run = jobsup(&["man", "no-such-subcommand"]);
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stderr.contains("no-such-subcommand"), "{run}");
}
