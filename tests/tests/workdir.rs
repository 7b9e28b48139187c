//! Where workers run: by default the directory jobsup was started in (in every mode, so
//! that relative paths in jobs work as with xargs and parallel), `--cwd DIR` elsewhere,
//! `--cwd scratch` in the private directory each worker always gets (0700, its `TMPDIR`
//! and `JOBSUP_WORKDIR`, removed afterwards); a directory `--user` cannot enter is an
//! error before any job.

use std::path::{Path, PathBuf};

use jobsup_tests::{interpreter, jobsup, jobsup_as, repo_file, running_as_root, Jobsup, Run, User};

/// The records' outputs, in input order.
fn outputs(run: &Run) -> Vec<String> {
    run.by_seq()
        .values()
        .map(|r| {
            assert_eq!(r.outcome(), "ok", "{run}");
            r.output().unwrap_or_default().to_string()
        })
        .collect()
}

/// The test's directory as the kernel names it (what `pwd` and `getcwd` print).
fn real(dir: &Path) -> PathBuf {
    dir.canonicalize().expect("the directory exists")
}

/// Prints, on one line: the working directory, JOBSUP_WORKDIR, TMPDIR and the scratch
/// directory's mode.
const SHOW: &str = r#"printf '%s|%s|%s|%s' "$(pwd)" "$JOBSUP_WORKDIR" "$TMPDIR" "$(stat -c %a "$JOBSUP_WORKDIR")""#;

fn show(j: Jobsup, args: &[&str]) -> (Vec<String>, Run) {
    let run = j
        .args(["--mode", "exec"])
        .args(args)
        .processor("sh", ["-c", SHOW])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let out = outputs(&run);
    assert_eq!(out.len(), 1, "{run}");
    let fields = out[0].split('|').map(str::to_string).collect();
    (fields, run)
}

#[test]
fn exec_jobs_name_files_relative_to_where_jobsup_was_started() {
    let j = jobsup!();
    j.write_file("a.txt", "alpha\n");
    j.write_file("b.txt", "beta\n");
    let run = j
        .args(["-q", "--mode", "exec", "-j", "2"])
        .processor("cat", ["{}"])
        .stdin("a.txt\nb.txt\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(outputs(&run), ["alpha\n", "beta\n"], "{run}");

    // The README's example: the compressed file lands beside its input.
    let j = jobsup!();
    j.write_file("c.txt", "gamma\n");
    let run = j
        .args(["-q", "--mode", "exec"])
        .processor("gzip", ["-k", "{}"])
        .stdin("c.txt\nmissing.txt\n")
        .run();
    let r = run.by_seq();
    assert_eq!(r[&1].outcome(), "ok", "{run}");
    assert!(run.dir().join("c.txt.gz").is_file(), "no c.txt.gz\n{run}");
    // A file that is not there fails, and the record says why.
    assert_eq!(r[&2].outcome(), "failed", "{run}");
    let why = r[&2].0["stderr_tail"].as_str().unwrap_or_default();
    assert!(why.contains("missing.txt"), "{why}\n{run}");
}

#[test]
fn by_default_exec_lines_and_native_workers_run_where_jobsup_was_started() {
    // exec, with its scratch directory as TMPDIR and JOBSUP_WORKDIR.
    let j = jobsup!();
    let start = real(j.dir());
    let (f, run) = show(j, &[]);
    assert_eq!(Path::new(&f[0]), start, "{run}");
    assert_ne!(f[1], f[0], "{run}");
    assert!(
        Path::new(&f[1]).starts_with(&start),
        "in the temp dir: {run}"
    );
    assert_eq!(f[2], f[1], "TMPDIR is the scratch directory\n{run}");
    assert_eq!(f[3], "700", "{run}");

    // lines
    let j = jobsup!();
    let start = real(j.dir());
    let run = j
        .args(["--mode", "lines", "-j", "1"])
        .processor("sh", ["-c", "while read l; do pwd; done"])
        .stdin("1\n2\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    let want = format!("{}", start.display());
    assert_eq!(outputs(&run), [want.clone(), want.clone()], "{run}");

    // native, through the Python runtime
    let j = jobsup!();
    let start = real(j.dir());
    let processor = j.write_file(
        "cwd.py",
        format!(
            "import os, sys\nsys.path.insert(0, {:?})\nimport jobsup_runtime\njobsup_runtime.serve(lambda job: os.getcwd())\n",
            repo_file("runtimes/python").display().to_string()
        ),
    );
    let run = j
        .args(["-j", "1"])
        .processor(interpreter("python3"), [processor.as_os_str()])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(outputs(&run), [start.display().to_string()], "{run}");
}

#[test]
fn cwd_scratch_runs_in_the_private_directory_which_is_gone_after_the_run() {
    let (f, run) = show(jobsup!(), &["--cwd", "scratch"]);
    assert_eq!(f[0], f[1], "pwd is JOBSUP_WORKDIR\n{run}");
    assert_eq!(f[2], f[1], "TMPDIR is JOBSUP_WORKDIR\n{run}");
    assert_eq!(f[3], "700", "{run}");
    assert!(!Path::new(&f[1]).exists(), "{} is left\n{run}", f[1]);
}

#[test]
fn cwd_dir_and_the_cwd_key_choose_another_directory() {
    let j = jobsup!();
    std::fs::create_dir(j.dir().join("sub")).unwrap();
    let sub = real(&j.dir().join("sub"));
    let (f, run) = show(j, &["--cwd", "sub"]);
    assert_eq!(Path::new(&f[0]), sub, "{run}");

    // In a config file, relative to where jobsup was started; `scratch` there too.
    for (key, want_scratch) in [("sub", false), ("scratch", true)] {
        let j = jobsup!();
        std::fs::create_dir(j.dir().join("sub")).unwrap();
        let sub = real(&j.dir().join("sub"));
        let config = j.write_file(
            "jobs.toml",
            format!(
                "[pools.p]\ncommand = \"sh\"\nargs = [\"-c\", {SHOW:?}]\nmode = \"exec\"\ncwd = {key:?}\n"
            ),
        );
        let run = j.arg("--config").arg(&config).stdin("x\n").run();
        assert_eq!(run.code(), 0, "{run}");
        let out = outputs(&run);
        let f: Vec<&str> = out[0].split('|').collect();
        if want_scratch {
            assert_eq!(f[0], f[1], "{run}");
        } else {
            assert_eq!(Path::new(f[0]), sub, "{run}");
        }
    }
}

#[test]
fn a_start_directory_the_workers_user_cannot_enter_is_an_error_before_any_job() {
    if !running_as_root() {
        eprintln!("cannot test --user here: running workers as another user needs root");
        return;
    }
    // The test's directory, root's, closed to others: nobody cannot enter it.
    let j = jobsup!();
    std::fs::set_permissions(j.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("close the test's directory");
    let marker = j.dir().join("ran");
    let run = j
        .args(["--mode", "exec", "--user", "nobody"])
        .processor("sh", ["-c", &format!("echo > {}", marker.display())])
        .stdin("x\n")
        .run();
    assert_eq!(run.code(), 125, "{run}");
    assert!(run.records().is_empty(), "{run}");
    assert!(!marker.exists(), "a job ran\n{run}");
    assert!(run.stderr.contains("cannot enter"), "{run}");
    assert!(run.stderr.contains("--cwd scratch"), "{run}");

    // Its private directory is its own: that works.
    let (f, run) = show(jobsup!(), &["--user", "nobody", "--cwd", "scratch"]);
    assert_eq!(f[0], f[1], "{run}");
}

#[test]
fn the_start_directory_stays_writable_under_isolate_fs() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        j.write_file("in.txt", "input\n");
        let run = j
            .args(["--mode", "exec", "--isolate", "fs"])
            .processor("sh", ["-c", "cat in.txt && echo made > out.txt"])
            .stdin("x\n")
            .run();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
        assert_eq!(outputs(&run), ["input\n"], "{user:?}: {run}");
        assert_eq!(
            std::fs::read_to_string(run.dir().join("out.txt")).unwrap_or_default(),
            "made\n",
            "{user:?}: {run}"
        );
    }
}

#[test]
fn every_exec_job_starts_in_an_empty_private_directory_of_mode_700() {
    // An exec slot hands the next process the last one's directory only when that left it
    // empty and as it was made; a job that leaves a file, or opens its directory to
    // others, makes the next one get a new directory.
    for user in User::BOTH {
        let script = r#"printf '%s|%s|%s' "$JOBSUP_WORKDIR" "$(stat -c %a "$JOBSUP_WORKDIR")" "$(ls -A "$JOBSUP_WORKDIR" | tr '\n' ' ')"
            case "$1" in
                file) touch "$JOBSUP_WORKDIR/left-behind" ;;
                open) chmod 755 "$JOBSUP_WORKDIR" ;;
            esac"#;
        let jobs = ["clean", "clean", "file", "clean", "open", "clean", "clean"];
        let run = jobsup_as!(user)
            .args(["--mode", "exec", "-j", "1", "--cwd", "scratch"])
            .processor("sh", ["-c", script, "sh", "{}"])
            .stdin(jobs.map(|j| format!("{j}\n")).concat())
            .run();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
        let seen: Vec<Vec<String>> = outputs(&run)
            .iter()
            .map(|o| o.split('|').map(str::to_string).collect())
            .collect();
        assert_eq!(seen.len(), jobs.len(), "{user:?}: {run}");
        for (job, fields) in jobs.iter().zip(&seen) {
            assert_eq!(fields[1], "700", "{user:?}: {job}: {fields:?}\n{run}");
            assert_eq!(
                fields[2], "",
                "{user:?}: {job} saw leftovers: {fields:?}\n{run}"
            );
        }
        let dir = |i: usize| seen[i][0].as_str();
        // Left empty: the same directory again.
        assert_eq!(dir(0), dir(1), "{user:?}\n{run}");
        assert_eq!(dir(1), dir(2), "{user:?}\n{run}");
        // After a file was left, and after the mode was changed: another one.
        assert_ne!(dir(2), dir(3), "{user:?}\n{run}");
        assert_ne!(dir(4), dir(5), "{user:?}\n{run}");
        assert_eq!(dir(5), dir(6), "{user:?}\n{run}");
        // None is left once the run is over.
        for fields in &seen {
            assert!(
                !Path::new(&fields[0]).exists(),
                "{user:?}: {} is left",
                fields[0]
            );
        }
    }
}
