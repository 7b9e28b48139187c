//! No privileges by default: a worker starts with every capability set empty, as root or
//! not, with or without namespaces; `--user` runs it as another user (root only); and only
//! an exact list of variables reaches it from jobsup's environment.

use jobsup_tests::{jobsup, jobsup_as, running_as_root, Record, Run, User, NOBODY};

fn only_record(run: &Run) -> Record {
    let mut records = run.records();
    assert_eq!(records.len(), 1, "{run}");
    records.remove(0)
}

/// The value of `key` (such as `CapEff`) in a `/proc/<pid>/status` text.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

const ZERO: &str = "0000000000000000";

#[test]
fn a_worker_holds_no_capability_as_root_or_not_with_or_without_namespaces() {
    let own_status = std::fs::read_to_string("/proc/self/status").expect("own status");
    for user in User::BOTH {
        // The same user as the tests' when they do not run as root.
        let privileged = user == User::Invoker && running_as_root();
        for flags in [
            &["--isolate", "none"][..],
            &[][..],
            &["--isolate", "pid,net"][..],
        ] {
            let run = jobsup_as!(user)
                .args(["--mode", "exec"])
                .args(flags)
                .processor(
                    "sh",
                    ["-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"],
                )
                .stdin("x\n")
                .run();
            assert_eq!(run.code(), 0, "{user:?} {flags:?}: {run}");
            let status = only_record(&run).output().unwrap_or_default().to_string();
            let what = format!("{user:?} {flags:?}: {status}\n{run}");
            for key in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                assert_eq!(status_field(&status, key), Some(ZERO), "{key}: {what}");
            }
            assert_eq!(status_field(&status, "NoNewPrivs"), Some("1"), "{what}");
            if privileged || flags != ["--isolate", "none"] {
                // As root, or in the user namespace an unprivileged jobsup's workers get
                // by default: emptied.
                assert_eq!(status_field(&status, "CapBnd"), Some(ZERO), "{what}");
            } else {
                // Without CAP_SETPCAP (no user namespace, no root) the kernel lets nobody
                // drop its bounding set: it is
                // left as jobsup's (the one `setpriv` left, the tests' own), and
                // no_new_privs keeps exec from granting anything from it.
                assert_eq!(
                    status_field(&status, "CapBnd"),
                    status_field(&own_status, "CapBnd"),
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn user_nobody_runs_workers_as_nobody_in_a_directory_they_own() {
    assert!(
        running_as_root(),
        "cannot test --user here: running workers as another user needs root"
    );
    let show = r#"id -u; id -g; id -G; stat -c %u "$JOBSUP_WORKDIR"; echo hi > "$JOBSUP_WORKDIR/mine" && cat "$JOBSUP_WORKDIR/mine"; grep ^CapEff /proc/self/status"#;
    for flags in [&[][..], &["--isolate", "pid,net"][..]] {
        let run = jobsup!()
            .args(["--mode", "exec", "--user", "nobody"])
            .args(flags)
            .processor("sh", ["-c", show])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{flags:?}: {run}");
        let out = only_record(&run).output().unwrap_or_default().to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 6, "{flags:?}: {out}\n{run}");
        assert_eq!(lines[0], NOBODY.to_string(), "{flags:?}: uid: {out}");
        // nobody's own primary group, and its groups (no root among them).
        assert_ne!(lines[1], "0", "{flags:?}: gid: {out}");
        assert!(
            lines[2].split(' ').all(|g| g != "0"),
            "{flags:?}: groups: {out}"
        );
        assert_eq!(lines[3], NOBODY.to_string(), "{flags:?}: owner: {out}");
        assert_eq!(lines[4], "hi", "{flags:?}: writable: {out}");
        assert_eq!(lines[5], format!("CapEff:\t{ZERO}"), "{flags:?}: {out}");
    }
    // A group named: that one alone.
    let run = jobsup!()
        .args(["--mode", "exec", "--user", "nobody:root"])
        .processor("sh", ["-c", show])
        .stdin("x\n")
        .run();
    let out = only_record(&run).output().unwrap_or_default().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.get(..5),
        Some(&["65534", "0", "0", "65534", "hi"][..]),
        "{out}\n{run}"
    );
}

/// Asserts that a run was refused at start (125) with a message containing `needle`.
fn assert_refused(run: &Run, needle: &str) {
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.stdout.is_empty(), "no record\n{run}");
    assert!(run.stderr.contains(needle), "should say {needle:?}\n{run}");
}

#[test]
fn an_unknown_user_or_group_is_refused_at_start_naming_it() {
    for user in User::BOTH {
        let run = jobsup_as!(user)
            .args(["--mode", "exec", "--user", "no-such-user-13f"])
            .processor("true", [""; 0])
            .stdin("x\n")
            .run();
        assert_refused(&run, "no such user: \"no-such-user-13f\"");
        let run = jobsup_as!(user)
            .args(["--mode", "exec", "--user", "nobody:no-such-group-13f"])
            .processor("true", [""; 0])
            .stdin("x\n")
            .run();
        assert_refused(&run, "no such group: \"no-such-group-13f\"");
    }
    // The same from a config file.
    let j = jobsup!();
    let file = j.write_file(
        "pools.toml",
        "[pools.p]\ncommand = \"true\"\nuser = \"no-such-user-13f\"\nmode = \"exec\"\n",
    );
    let run = j.arg("--config").arg(&file).stdin("x\n").run();
    assert_refused(&run, "no such user: \"no-such-user-13f\"");
}

#[test]
fn another_user_without_root_is_refused_at_start() {
    let run = jobsup_as!(User::Unprivileged)
        .args(["--mode", "exec", "--user", "root"])
        .processor("true", [""; 0])
        .stdin("x\n")
        .run();
    assert_refused(&run, "needs root");
}

#[test]
fn only_the_listed_locale_variables_reach_a_worker() {
    for user in User::BOTH {
        let run = jobsup_as!(user)
            .env("LC_SECRET", "x")
            .env("LC_ALL", "C")
            .env("LANGUAGE", "en")
            .args(["--mode", "exec"])
            .processor(
                "sh",
                ["-c", r#"echo "[${LC_SECRET-unset}] [$LC_ALL] [$LANGUAGE]""#],
            )
            .stdin("x\n")
            .run();
        let out = only_record(&run);
        assert_eq!(out.output(), Some("[unset] [C] [en]\n"), "{user:?}: {run}");
        // Named, it passes.
        let run = jobsup_as!(user)
            .env("LC_SECRET", "x")
            .args(["--mode", "exec", "--pass-env", "LC_SECRET"])
            .processor("sh", ["-c", r#"echo "[${LC_SECRET-unset}]""#])
            .stdin("x\n")
            .run();
        assert_eq!(only_record(&run).output(), Some("[x]\n"), "{user:?}: {run}");
    }
}
