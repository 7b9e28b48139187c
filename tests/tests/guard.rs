//! The guard (`jobsup-guard`): what it leaves after a killed jobsup (no worker directory of
//! the run, nothing of anyone else's), how it ends after a normal run (by itself, told to),
//! and what it holds (its pipe and stdio, none of the caller's stray descriptors).
//!
//! Each case runs as the invoking user (root on CI) and as an unprivileged user (nobody,
//! through `setpriv`), where the guard has no more rights than the workers whose
//! directories it removes.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use jobsup_tests::{guard_arg, guard_of, is_guard, jobsup_as, pid_alive, wait_until, User, WAIT};

/// The entries of `parent` named like worker directories (`jobsup-worker-*`).
fn worker_dirs(parent: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(parent)
        .expect("the parent directory")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("jobsup-worker-")
        })
        .map(|e| e.path())
        .collect()
}

/// A worker directory of another run (by its name), with a file in it.
fn another_runs_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("jobsup-worker-othertag-x");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("keep"), "not this run's").expect("write");
    dir
}

/// A lines-mode processor that, for each job, fills its private directory with what a
/// plain `rm -r` by its owner would trip on (a read-only tree, an unreadable directory) and
/// a link to `outside`, then answers.
fn messy_worker(outside: &Path) -> String {
    format!(
        r#"while IFS= read -r l; do
W="$JOBSUP_WORKDIR"
mkdir -p "$W/ro/deep" "$W/locked" && echo x > "$W/ro/deep/f" && echo x > "$W/locked/f"
ln -s '{}' "$W/link"
chmod 555 "$W/ro/deep" "$W/ro" && chmod 000 "$W/locked"
echo "$l"
done"#,
        outside.display()
    )
}

fn killed_jobsup_leaves_no_worker_directory(user: User, own_workdir: bool) {
    let j = jobsup_as!(user);
    let outside = j.dir().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("keep"), "x").expect("write");
    // The parent: `--workdir`, or the temp dir (TMPDIR is the test's directory).
    let parent = if own_workdir {
        let dir = j.dir().join("wd");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("open it to nobody");
        dir
    } else {
        j.dir().to_path_buf()
    };
    let other = another_runs_dir(&parent);
    let mut j = j.args(["--mode", "lines", "-j", "2"]);
    if own_workdir {
        j = j.arg("--workdir").arg(&parent);
    }
    let bg = j
        .processor("sh", ["-c", messy_worker(&outside).as_str()])
        .stdin("a\nb\n")
        .keep_stdin_open()
        .spawn();
    let what = format!("{user:?}, --workdir: {own_workdir}");
    wait_until(WAIT, "both jobs' records", || {
        bg.records_so_far().len() == 2
    });
    let guard = guard_of(bg.pid()).expect("jobsup runs a guard");
    let tag = guard_arg(guard, "--tag").expect("the guard's --tag");
    let ours: BTreeSet<PathBuf> = worker_dirs(&parent)
        .into_iter()
        .filter(|d| d != &other)
        .collect();
    assert_eq!(ours.len(), 2, "{what}: one directory per worker: {ours:?}");
    for dir in &ours {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        assert!(
            name.starts_with(&format!("jobsup-worker-{tag}-")),
            "{what}: {name} is not named after the run"
        );
    }
    assert!(
        ours.iter().any(|d| d.join("ro/deep/f").exists()),
        "{what}: no worker wrote its files: {ours:?}"
    );

    // Kept until the end: the test's directory (the parent, or the parent's parent) goes
    // with it.
    let _run = bg.kill_hard();
    wait_until(WAIT, "the run's worker directories are removed", || {
        ours.iter().all(|d| d.symlink_metadata().is_err())
    });
    wait_until(WAIT, "the guard is done", || !pid_alive(guard));
    assert_eq!(
        worker_dirs(&parent),
        BTreeSet::from([other.clone()]),
        "{what}: only the other run's directory is left"
    );
    assert!(other.join("keep").exists(), "{what}: the other run's file");
    assert!(outside.join("keep").exists(), "{what}: a link was followed");
}

#[test]
fn a_killed_jobsups_guard_removes_the_runs_worker_directories_and_nothing_else() {
    for user in User::BOTH {
        killed_jobsup_leaves_no_worker_directory(user, false);
        killed_jobsup_leaves_no_worker_directory(user, true);
    }
}

#[test]
fn after_a_normal_run_the_guard_finishes_by_itself() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let outside = j.dir().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        let other = another_runs_dir(j.dir());
        let mut bg = j
            .args(["-v", "--mode", "lines", "-j", "1"])
            .processor("sh", ["-c", messy_worker(&outside).as_str()])
            .stdin("a\n")
            .keep_stdin_open()
            .spawn();
        wait_until(WAIT, "the record", || !bg.records_so_far().is_empty());
        let guard = guard_of(bg.pid()).expect("jobsup runs a guard");
        bg.close_stdin();
        let run = bg.wait();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
        assert!(
            run.stderr.contains("guard finished"),
            "{user:?}: the guard was not told to finish, or did not\n{run}"
        );
        assert!(!run.stderr.contains("did not finish"), "{user:?}: {run}");
        // jobsup waited for it: no waiting here.
        assert!(
            !pid_alive(guard) || !is_guard(guard),
            "{user:?}: the guard outlived jobsup"
        );
        // What the worker's owner could not simply delete, the guard's final pass did.
        assert_eq!(
            worker_dirs(run.dir()),
            BTreeSet::from([other.clone()]),
            "{user:?}: {run}"
        );
        assert!(other.join("keep").exists(), "{user:?}");
    }
}

/// The fds `pid` has open, by number.
fn open_fds(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_guard_holds_only_its_pipe_and_stdio_not_the_callers_stray_fds() {
    for user in User::BOTH {
        let j = jobsup_as!(user);
        let stray = j.dir().join("stray");
        // A caller that leaves fd 7 open (no close-on-exec) when it starts jobsup: `sh -c
        // SCRIPT STRAY JOBSUP...` opens the file ($0) on fd 7 and execs jobsup ("$@").
        let mut bg = j
            .through(
                "sh",
                [
                    OsStr::new("-c"),
                    OsStr::new(r#"exec 7>>"$0"; exec "$@""#),
                    stray.as_os_str(),
                ],
            )
            .args(["--mode", "lines"])
            .processor("cat", [] as [&str; 0])
            .stdin("x\n")
            .keep_stdin_open()
            .spawn();
        let jobsup = bg.pid();
        wait_until(WAIT, "the record", || !bg.records_so_far().is_empty());
        assert_eq!(
            std::fs::read_link(format!("/proc/{jobsup}/fd/7")).ok(),
            Some(stray.clone()),
            "{user:?}: jobsup itself must have the stray fd for this to prove anything"
        );
        let guard = guard_of(jobsup).expect("jobsup runs a guard");
        let pipe: i32 = guard_arg(guard, "--pipe-fd")
            .and_then(|fd| fd.parse().ok())
            .expect("the guard's --pipe-fd");
        assert!(
            !open_fds(guard).contains(&7),
            "{user:?}: the guard has the caller's fd 7: {:?}",
            open_fds(guard)
        );
        for fd in 0..3 {
            assert_eq!(
                std::fs::read_link(format!("/proc/{guard}/fd/{fd}")).ok(),
                Some(PathBuf::from("/dev/null")),
                "{user:?}: the guard's fd {fd}"
            );
        }
        assert!(
            std::fs::read_link(format!("/proc/{guard}/fd/{pipe}"))
                .is_ok_and(|to| to.to_string_lossy().starts_with("pipe:")),
            "{user:?}: the guard's pipe is fd {pipe}"
        );
        // The guard opens files of /proc for a moment as it watches the tree: the table is
        // exactly this between those moments.
        wait_until(WAIT, "the guard's fds are its pipe and stdio", || {
            open_fds(guard) == BTreeSet::from([0, 1, 2, pipe])
        });
        bg.close_stdin();
        let run = bg.wait();
        assert_eq!(run.code(), 0, "{user:?}: {run}");
    }
}
