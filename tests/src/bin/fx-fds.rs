//! Test fixture: says which file descriptors it was started with, or which cgroups it
//! started in, or its open-files limit, as the first thing it does.
//!
//! - `fx-fds` (exec mode): prints its open fds (`0 1 2`) and exits;
//! - `fx-fds lines` (lines mode): prints them once per line read;
//! - under the native protocol (`JOBSUP_PROTOCOL` set): returns them as every job's result;
//! - `fx-fds cgroup`: the same with `/proc/self/cgroup` instead of the fds (exec and
//!   native modes);
//! - `fx-fds open-files`: the same with its soft `RLIMIT_NOFILE` instead.
//!
//! The fds are found with `fcntl(F_GETFD)` on every number below the soft `RLIMIT_NOFILE`,
//! which opens nothing (listing `/proc/self/fd` would show the listing's own fd).

use std::io::{BufRead, Write};

fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a live struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit");
    limit.rlim_cur
}

fn open_fds() -> String {
    let end = open_files_limit().min(1 << 20) as i32;
    (0..end)
        // SAFETY: F_GETFD on any number only asks; EBADF for one that is not open.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .map(|fd| fd.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // Before anything else opens a file.
    let fds = open_fds();
    let arg = std::env::args().nth(1);
    let report = match arg.as_deref() {
        Some("cgroup") => std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup"),
        Some("open-files") => open_files_limit().to_string(),
        _ => fds,
    };
    if std::env::var_os(jobsup_protocol::ENV_PROTOCOL).is_some() {
        jobsup_runtime::serve(move |_job, _ctx| {
            Ok::<_, std::convert::Infallible>(report.clone().into_bytes())
        });
    }
    let mut out = std::io::stdout().lock();
    if arg.as_deref() == Some("lines") {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            writeln!(out, "{report}").expect("stdout");
            out.flush().expect("stdout");
        }
    } else {
        writeln!(out, "{}", report.trim_end()).expect("stdout");
    }
}
