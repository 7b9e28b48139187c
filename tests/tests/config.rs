//! Config files: `jobsup check`, the errors it reports, runs from a file (flags over the
//! pool over `[defaults]`), and what reaches the workers' environment.

use std::path::PathBuf;

use jobsup_tests::{bin, example, jobsup, jobsup_check, Jobsup, Run};

/// The `[pools.NAME]` tables of a config file, in file order.
fn pool_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let name = l.strip_prefix("[pools.")?.strip_suffix(']')?;
            Some(name.trim_matches('"').to_string())
        })
        .collect()
}

/// Runs `jobsup check` on a file with these contents.
fn check_text(name: &str, text: &str) -> (PathBuf, Run) {
    let check = jobsup_check!();
    let path = check.write_file(name, text);
    let run = check.arg("--config").arg(&path).run();
    (path, run)
}

/// Asserts that a run failed as a usage error (125) before running anything, with a
/// message containing every one of `needles`; returns the message.
fn assert_config_error(run: &Run, needles: &[&str]) -> String {
    assert_eq!(run.code(), 125, "{run}");
    assert!(
        run.stdout.is_empty(),
        "nothing is printed on stdout (no pool, no record)\n{run}"
    );
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "the error should mention {needle:?}\n{run}"
        );
    }
    run.stderr.clone()
}

/// A TOML string literal for a path (paths here have no quotes or backslashes).
fn toml_str(path: &str) -> String {
    assert!(!path.contains(['"', '\\']), "{path}");
    format!("\"{path}\"")
}

#[test]
fn every_example_config_passes_check_and_lists_its_pools() {
    let dir = example("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["thumbnailer.toml", "python-lines.toml", "exec-wrapper.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is missing from {}: {names:?}",
            dir.display()
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let pools = pool_names(&text);
        assert!(!pools.is_empty(), "{} has no pool", file.display());
        let run = jobsup_check!().arg("--config").arg(file).run();
        assert_eq!(run.code(), 0, "{}\n{run}", file.display());
        let out = run.stdout_str();
        for pool in &pools {
            assert!(
                out.lines().any(|l| l == format!("pool {pool}")),
                "`pool {pool}` is not listed for {}\n{run}",
                file.display()
            );
        }
        assert_eq!(
            out.lines().filter(|l| l.starts_with("pool ")).count(),
            pools.len(),
            "one listing per pool of {}\n{run}",
            file.display()
        );
    }
}

#[test]
fn check_prints_the_resolved_pools_and_runs_nothing() {
    let check = jobsup_check!();
    let marker = check.dir().join("ran");
    let text = format!(
        "[defaults]\nttl = \"7s\"\ncleanup = 3\n\n\
         [pools.inherits]\ncommand = \"sh\"\nargs = [\"-c\", \"touch {m}\"]\nmode = \"exec\"\n\n\
         [pools.overrides]\ncommand = \"sh\"\nargs = [\"-c\", \"touch {m}\"]\nmode = \"lines\"\nttl = \"2m\"\n\n\
         [pools.elsewhere]\ncommand = \"no-such-processor-on-this-machine\"\n",
        m = marker.display()
    );
    let path = check.write_file("pools.toml", text);
    let run = check.arg("--config").arg(&path).run();
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stdout_str();

    // Each pool's block: from its `pool NAME` line to the next one.
    let block = |name: &str| -> String {
        let start = out
            .find(&format!("pool {name}\n"))
            .unwrap_or_else(|| panic!("pool {name} is not listed\n{run}"));
        let rest = &out[start + 1..];
        let end = rest.find("\npool ").map_or(out.len(), |i| start + 1 + i);
        out[start..end].to_string()
    };
    let inherits = block("inherits");
    assert!(
        inherits.contains("ttl: 7s") && inherits.contains("cleanup: 3s"),
        "[defaults] apply to a pool that does not set the key\n{inherits}"
    );
    let overrides = block("overrides");
    assert!(
        overrides.contains("ttl: 2m") && overrides.contains("cleanup: 3s"),
        "the pool's key wins over [defaults], the rest is inherited\n{overrides}"
    );
    let elsewhere = block("elsewhere");
    assert!(
        elsewhere
            .lines()
            .any(|l| l.contains("warning:") && l.contains("no-such-processor-on-this-machine")),
        "a command not found here is a warning, not an error\n{elsewhere}"
    );
    assert!(
        !inherits.contains("warning:") && !overrides.contains("warning:"),
        "sh is found: no warning\n{run}"
    );
    assert!(
        !marker.exists(),
        "check ran a pool's command ({} exists)",
        marker.display()
    );
}

#[test]
fn unknown_key_is_named_with_its_file_and_line() {
    let (path, run) = check_text(
        "typo.toml",
        "[pools.a]\ncommand = \"cat\"\nmode = \"lines\"\ntll = \"2s\"\n",
    );
    let err = assert_config_error(&run, &["`tll`"]);
    let located = format!("{}:4:1:", path.display());
    assert!(err.contains(&located), "expected {located:?} in\n{run}");
}

#[test]
fn unknown_key_in_defaults_is_an_error_too() {
    let (path, run) = check_text(
        "typo.toml",
        "[defaults]\nretires = 2\n\n[pools.a]\ncommand = \"cat\"\n",
    );
    let err = assert_config_error(&run, &["`retires`"]);
    let located = format!("{}:2:", path.display());
    assert!(err.contains(&located), "expected {located:?} in\n{run}");
}

#[test]
fn bad_duration_names_the_key_and_the_value() {
    let (path, run) = check_text(
        "dur.toml",
        "[pools.a]\ncommand = \"cat\"\n\nttl = \"banana\"\n",
    );
    let err = assert_config_error(&run, &["`ttl`", "\"banana\"", "not a duration"]);
    // The column is the bad value's.
    let located = format!("{}:4:7:", path.display());
    assert!(err.contains(&located), "expected {located:?} in\n{run}");
}

#[test]
fn bad_size_names_max_output_and_the_value() {
    let (path, run) = check_text(
        "size.toml",
        "[pools.a]\ncommand = \"cat\"\nmax_output = \"12 parsecs\"\n",
    );
    let err = assert_config_error(&run, &["`max_output`", "12 parsecs"]);
    let located = format!("{}:3:14:", path.display());
    assert!(err.contains(&located), "expected {located:?} in\n{run}");
    assert!(!err.contains("not a duration"), "{run}");
}

#[test]
fn pool_without_a_command_is_named() {
    let (path, run) = check_text(
        "nocmd.toml",
        "[defaults]\nttl = \"1s\"\n\n[pools.good]\ncommand = \"cat\"\n\n[pools.headless]\nmode = \"lines\"\n",
    );
    assert_config_error(
        &run,
        &[&path.display().to_string(), "\"headless\"", "no command"],
    );
    assert!(!run.stderr.contains("\"good\""), "{run}");
}

#[test]
fn unknown_pool_is_named_and_the_pools_are_listed() {
    let run = jobsup!();
    let path = run.write_file(
        "two.toml",
        "[pools.alpha]\ncommand = \"cat\"\nmode = \"lines\"\n\n[pools.beta]\ncommand = \"cat\"\nmode = \"lines\"\n",
    );
    let run = run
        .arg("--config")
        .arg(&path)
        .args(["--pool", "gamma"])
        .stdin("x\n")
        .run();
    assert_config_error(&run, &["\"gamma\"", "alpha", "beta"]);
}

#[test]
fn several_pools_without_pool_say_to_use_pool() {
    let run = jobsup!();
    let path = run.write_file(
        "two.toml",
        "[pools.alpha]\ncommand = \"cat\"\nmode = \"lines\"\n\n[pools.beta]\ncommand = \"cat\"\nmode = \"lines\"\n",
    );
    let run = run.arg("--config").arg(&path).stdin("x\n").run();
    assert_config_error(&run, &["--pool", "alpha", "beta"]);
}

#[test]
fn idle_timeout_outside_native_mode_is_an_error() {
    let (path, run) = check_text(
        "idle.toml",
        "[pools.upper]\ncommand = \"cat\"\nmode = \"lines\"\nidle_timeout = \"1s\"\n",
    );
    assert_config_error(
        &run,
        &[
            &path.display().to_string(),
            "\"upper\"",
            "idle_timeout",
            "native",
        ],
    );

    // The same from [defaults], and from the command line.
    let (_, run) = check_text(
        "idle.toml",
        "[defaults]\nidle_timeout = \"1s\"\n\n[pools.wrapper]\ncommand = \"cat\"\nmode = \"exec\"\n",
    );
    assert_config_error(&run, &["idle_timeout", "\"wrapper\""]);
    let run = jobsup!()
        .args(["--mode", "lines", "--idle-timeout", "1s"])
        .processor("cat", [] as [&str; 0])
        .stdin("x\n")
        .run();
    assert_config_error(&run, &["idle_timeout"]);
}

#[test]
fn file_that_is_not_toml_is_located() {
    let (path, run) = check_text("notes.toml", "ttl: 30s\n");
    let located = format!("{}:1:", path.display());
    assert_config_error(&run, &[&located]);
}

#[test]
fn missing_file_is_named() {
    let check = jobsup_check!();
    let path = check.dir().join("nowhere.toml");
    let run = check.arg("--config").arg(&path).run();
    assert_config_error(&run, &[&path.display().to_string(), "cannot read"]);

    let run = jobsup!().arg("--config").arg(&path).stdin("x\n").run();
    assert_config_error(&run, &[&path.display().to_string(), "cannot read"]);
}

/// A config file with a `flaky` pool, an `echo` pool and a `sleepy` pool.
fn processors_toml(extra_defaults: &str) -> String {
    format!(
        "[defaults]\ncleanup = \"5s\"\n{extra_defaults}\n\
         [pools.flaky]\ncommand = {flaky}\nconcurrency = 1\n\n\
         [pools.echo]\ncommand = {echo}\nconcurrency = 1\n\n\
         [pools.sleepy]\ncommand = {sleepy}\nconcurrency = 1\nttl = \"60s\"\n",
        flaky = toml_str(bin!("jobsup-flaky")),
        echo = toml_str(bin!("jobsup-echo")),
        sleepy = toml_str(bin!("jobsup-sleepy")),
    )
}

fn run_pool(toml: &str, pool: &str, flags: &[&str], input: &str) -> Run {
    let run = jobsup!();
    let path = run.write_file("pools.toml", toml);
    run.arg("--config")
        .arg(&path)
        .args(["--pool", pool])
        .args(flags)
        .stdin(input)
        .run()
}

#[test]
fn run_with_a_config_uses_the_chosen_pool() {
    let toml = processors_toml("");
    let run = run_pool(&toml, "flaky", &[], "ok:from the file\nfail:on purpose\n");
    assert_eq!(run.code(), 1, "{run}");
    let recs = run.by_seq();
    assert_eq!(recs.len(), 2, "{run}");
    assert_eq!(recs[&1].outcome(), "ok", "{run}");
    assert_eq!(recs[&1].output(), Some("from the file"), "{run}");
    assert_eq!(recs[&2].outcome(), "failed", "flaky ran this job\n{run}");

    let run = run_pool(&toml, "echo", &[], "fail:on purpose\n");
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.records()[0].output(),
        Some("fail:on purpose"),
        "echo ran this job\n{run}"
    );
}

#[test]
fn single_pool_needs_no_pool_flag() {
    let run = jobsup!();
    let path = run.write_file(
        "one.toml",
        format!("[pools.only]\ncommand = {}\n", toml_str(bin!("jobsup-echo"))),
    );
    let run = run.arg("--config").arg(&path).stdin("hello\n").run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records()[0].output(), Some("hello"), "{run}");
}

#[test]
fn flags_override_the_pool() {
    // The pool says 60s: only the flag's 300ms can make this 5-second job a timeout.
    let run = run_pool(
        &processors_toml(""),
        "sleepy",
        &["--ttl", "300ms"],
        "5000\n",
    );
    assert_eq!(run.code(), 124, "{run}");
    let r = &run.records()[0];
    assert_eq!(r.outcome(), "timeout", "{r}");
    assert!(r.error().is_some_and(|e| e.contains("300ms")), "{r}");
}

#[test]
fn defaults_apply_where_the_pool_is_silent_and_the_pool_wins_where_it_is_not() {
    let toml = processors_toml("ttl = \"300ms\"\n");
    // The flaky pool sets no ttl: [defaults]' 300ms applies.
    let run = run_pool(&toml, "flaky", &[], "sleep:1000\n");
    let r = &run.records()[0];
    assert_eq!(
        r.outcome(),
        "timeout",
        "the ttl of [defaults] applies: {r}\n{run}"
    );
    assert!(r.error().is_some_and(|e| e.contains("300ms")), "{r}");
    assert_eq!(
        r.output(),
        Some("slept 1000 ms"),
        "the result came in the cleanup window of [defaults] (5s): {r}"
    );

    // The sleepy pool sets ttl = 60s, which wins over [defaults]' 300ms.
    let run = run_pool(&toml, "sleepy", &[], "1000\n");
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.records()[0].outcome(), "ok", "{run}");
}

#[test]
fn command_after_double_dash_overrides_the_files_command() {
    let run = jobsup!();
    let path = run.write_file("pools.toml", processors_toml(""));
    let run = run
        .arg("--config")
        .arg(&path)
        .args(["--pool", "flaky"])
        .processor(bin!("jobsup-echo"), [] as [&str; 0])
        .stdin("fail:would fail under flaky\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let r = &run.records()[0];
    assert_eq!(r.outcome(), "ok", "{r}");
    assert_eq!(r.output(), Some("fail:would fail under flaky"), "{r}");
}

const SHOW_ENV: &str = r#"echo "$A|$B|$SECRET""#;

fn env_run(builder: Jobsup) -> Run {
    builder.env("B", "2").env("SECRET", "s").stdin("x\n").run()
}

fn assert_env_output(run: &Run) {
    assert_eq!(run.code(), 0, "{run}");
    let recs = run.records();
    assert_eq!(recs.len(), 1, "{run}");
    assert_eq!(
        recs[0].output(),
        Some("1|2|\n"),
        "A is set, B is passed, SECRET is not visible\n{run}"
    );
}

#[test]
fn env_and_pass_env_flags_reach_the_worker_and_nothing_else_does() {
    let run = env_run(
        jobsup!()
            .args(["--mode", "exec", "--env", "A=1", "--pass-env", "B"])
            .processor("sh", ["-c", SHOW_ENV]),
    );
    assert_env_output(&run);
}

#[test]
fn env_and_pass_env_from_a_config_file() {
    let builder = jobsup!();
    let path = builder.write_file(
        "env.toml",
        format!(
            "[pools.show]\ncommand = \"sh\"\nargs = [\"-c\", {}]\nmode = \"exec\"\nenv = {{ A = \"1\" }}\npass_env = [\"B\"]\n",
            toml_string(SHOW_ENV)
        ),
    );
    assert_env_output(&env_run(builder.arg("--config").arg(&path)));
}

/// A TOML literal string ('...') for text without single quotes.
fn toml_string(text: &str) -> String {
    assert!(!text.contains('\''), "{text}");
    format!("'{text}'")
}

#[test]
fn limits_are_set_per_pool_and_max_procs_is_checked() {
    let toml = format!(
        "[pools.forks]\ncommand = \"sh\"\nargs = [\"-c\", {}]\nmode = \"exec\"\nmax_procs = 4\n\n\
         [pools.free]\ncommand = \"sh\"\nargs = [\"-c\", {}]\nmode = \"exec\"\n",
        toml_string(FORK_EIGHT),
        toml_string(FORK_EIGHT),
    );
    let free = run_pool(&toml, "free", &[], "x\n");
    assert_eq!(free.code(), 0, "{free}");
    let limited = run_pool(&toml, "forks", &[], "x\n");
    // Enforced where a pids controller is usable, refused before any job elsewhere: never
    // silently ignored.
    match limited.code() {
        125 => assert_config_error(&limited, &["--max-procs needs a pids cgroup controller"]),
        _ => {
            let records = limited.records();
            assert_eq!(records.len(), 1, "{limited}");
            assert!(
                records[0]
                    .error()
                    .unwrap_or_default()
                    .contains("process limit of 4 reached"),
                "{limited}"
            );
            String::new()
        }
    };
    let (_, zero) = check_text(
        "zero.toml",
        "[pools.p]\ncommand = \"true\"\nmax_procs = 0\n",
    );
    assert_config_error(&zero, &["max_procs", "at least 1"]);
}

/// Eight background processes at once.
const FORK_EIGHT: &str = "for i in 1 2 3 4 5 6 7 8; do sleep 0 & done; wait; echo done";
