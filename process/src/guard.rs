//! The guard: a small process that outlives a killed jobsup just long enough to kill what
//! its workers left behind.
//!
//! Workers die with jobsup through their parent-death signal, but a worker's descendants
//! do not: a child in the worker's group, or one that called `setsid`, would be handed to
//! init and run on. So at start jobsup re-executes itself as `jobsup-guard` (a hidden
//! subcommand), in a session of its own, with the read end of a pipe whose write end only
//! jobsup holds. When jobsup dies, however it dies (`kill -9` included), the pipe reads
//! end-of-file; when it ends normally, it writes [`DONE`] on the pipe first and waits for
//! the guard ([`Guard::finish`]). Either way the guard then makes one final pass. It kills
//!
//! - every process in jobsup's cgroups (`cgroup.kill`, which nothing escapes);
//! - every process whose environment carries this run's [`TAG_VAR`] (which every worker
//!   gets, and its descendants inherit unless they clear their environment);
//! - where there are no cgroups, every process it last saw in jobsup's tree: while jobsup
//!   runs, the guard walks that tree every [`WATCH_EVERY`] and remembers each pid with its
//!   start time (jobsup is a subreaper, so escaped descendants are in its tree too);
//!
//! and then, with nothing of the run left to write in them, it removes the cgroups and the
//! run's worker directories (`<parent>/jobsup-worker-<tag>-*`, see [`workdir_prefix`]), and
//! exits 0. After a normal end there is nothing left to find (unless a worker left a
//! directory its owner cannot simply delete), and the pass is quick.
//!
//! The guard holds nothing of jobsup's but its end of the pipe: every other descriptor
//! jobsup had (a caller's stray `7>file` included) is closed when it execs, and its standard
//! streams are `/dev/null`.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::reaper::{Exit, Reaper};

/// The variable that marks every process of this run's workers.
pub const TAG_VAR: &str = "JOBSUP_SUPERVISOR";

/// How often the guard walks jobsup's process tree when there are no cgroups.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The name the guard runs under (its `argv[0]`), by which it is told from the workers.
pub const NAME: &str = "jobsup-guard";

/// The byte jobsup writes on the pipe when it ends normally: "done, make your final pass
/// and exit". It reaches the guard even if some process still holds a copy of the pipe's
/// write end (so that no end-of-file would come).
pub const DONE: u8 = b'd';

/// What the hidden `__guard` subcommand takes.
#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// The pid of the jobsup it guards.
    #[arg(long)]
    pub parent: i32,
    /// The value of [`TAG_VAR`] in that jobsup's workers.
    #[arg(long)]
    pub tag: String,
    /// jobsup's cgroup directories.
    #[arg(long)]
    pub cgroup: Vec<PathBuf>,
    /// The guard's end of jobsup's pipe: the one descriptor it has besides 0, 1 and 2.
    #[arg(long)]
    pub pipe_fd: RawFd,
    /// The directory the workers' private directories are made in (`--workdir`, or the temp
    /// dir): those of this run (named by [`workdir_prefix`]) are removed at the end.
    #[arg(long)]
    pub workdirs: Option<PathBuf>,
}

/// This run's tag: jobsup's pid and start time, which no other process ever shares.
pub fn tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let me = std::process::id();
        let start = start_time(me as i32).map_or(String::new(), |t| t.to_string());
        format!("{me}.{start}")
    })
}

/// The prefix of this run's worker directories: `jobsup-worker-<tag>-`, the [`tag`] made
/// safe for a file name. No other run's directories start with it (tags are unique, and
/// the prefix ends where the tag does).
pub fn workdir_prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| prefix_for(tag()))
}

/// The worker directory prefix of the run tagged `tag`.
fn prefix_for(tag: &str) -> String {
    let safe: String = tag
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' => c,
            _ => '_',
        })
        .collect();
    format!("jobsup-worker-{safe}-")
}

/// jobsup's side of the guard: the write end of its pipe, and its pid. Dropping it closes
/// the pipe, which the guard takes for jobsup's death; [`Guard::finish`] is the normal end.
pub struct Guard {
    pipe: File,
    pid: i32,
    /// Taken before the guard was cloned (see [`Reaper::register`]).
    since: Instant,
    exit: Option<crate::reaper::Registration>,
}

/// How a guard told to finish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// It exited by itself, with this status (`None`: the reaper could not say).
    Exited(Option<Exit>),
    /// It had not exited in time and was killed.
    Killed,
}

/// Starts the guard for this run. `cgroups` are the cgroup directories it removes at the
/// end, `workdirs` the directory the workers' private directories are made in.
pub fn start(cgroups: &[PathBuf], workdirs: &Path) -> io::Result<Guard> {
    let (read, write) = crate::fd::pipe()?;
    // fds 0 to 2 are open (jobsup's main sees to it), so a new fd is above them; make sure
    // anyway, since the guard's stdio is set up over them.
    let read = if read.as_raw_fd() <= 2 {
        nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd, owned by nothing else.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })?
    } else {
        read
    };
    // The guard's end keeps its number: it is open in jobsup all through the spawn, so
    // nothing `Command` sets up in the child can land on it.
    let keep = read.as_raw_fd();
    // The running binary itself, even if its file was replaced or removed since.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(NAME)
        .arg("__guard")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--tag")
        .arg(tag())
        .arg("--pipe-fd")
        .arg(keep.to_string())
        .arg("--workdirs")
        .arg(workdirs);
    for c in cgroups {
        cmd.arg(OsString::from("--cgroup")).arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec, in a copy of a process
    // that may have other threads: it makes only async-signal-safe system calls (setsid,
    // fcntl, close_range, getrlimit) on integers, and neither allocates nor takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            // A session of its own keeps the guard out of the terminal's signals (a Ctrl-C
            // is for jobsup, which then ends normally).
            libc::setsid();
            // Its end of the pipe survives the exec; nothing else above stdio does.
            if libc::fcntl(keep, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            cloexec_all_but(keep);
            Ok(())
        });
    }
    let since = Instant::now();
    let child = cmd.spawn()?;
    // The reaper (started after this) collects its exit status: see `Guard::register`.
    let pid = child.id() as i32;
    drop(child);
    drop(read);
    Ok(Guard {
        pipe: File::from(write),
        pid,
        since,
        exit: None,
    })
}

/// Marks every fd from 3 up close-on-exec, except `keep` (which must be 3 or more), so that
/// an exec leaves only stdio and `keep`. Not closed here: `Command` reports a failed exec
/// through a close-on-exec pipe of its own. Async-signal-safe.
fn cloexec_all_but(keep: RawFd) {
    // SAFETY: close_range and fcntl take integers; on fds that are not open they fail, and
    // nothing else is affected.
    unsafe {
        let range = |first: RawFd, last: libc::c_uint| {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                last,
                libc::CLOSE_RANGE_CLOEXEC,
            ) == 0
        };
        let below = keep <= 3 || range(3, (keep - 1) as libc::c_uint);
        if below && range(keep + 1, libc::c_uint::MAX) {
            return;
        }
    }
    // Before Linux 5.11 (no close_range, or no CLOSE_RANGE_CLOEXEC).
    cloexec_one_by_one(keep);
}

/// [`cloexec_all_but`] one fd at a time, up to the soft limit on open files (every fd is
/// below it, unless it was lowered after the fd was opened). Async-signal-safe.
fn cloexec_one_by_one(keep: RawFd) {
    // SAFETY: getrlimit writes the struct it is given; fcntl takes integers, and fails on
    // an fd that is not open.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as RawFd
        } else {
            1 << 16
        };
        for fd in (3..top).filter(|&fd| fd != keep) {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

impl Guard {
    /// The guard's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Has `reaper` keep the guard's exit status for [`Guard::finish`]. Call it as soon as
    /// the reaper runs (the guard is started before it).
    pub fn register(&mut self, reaper: &Reaper) {
        self.exit = Some(reaper.register(self.pid, self.since));
    }

    /// The normal end of a run: tells the guard so ([`DONE`], then the pipe closes) and
    /// waits up to `limit` for it to make its final pass and exit; kills it if it does not.
    /// Call it before killing jobsup's remaining children, which would kill the guard too.
    pub fn finish(self, limit: Duration) -> Finished {
        let Guard {
            mut pipe,
            pid,
            exit,
            ..
        } = self;
        // A guard that is gone already cannot read it; its status says so below.
        let _ = pipe.write_all(&[DONE]);
        drop(pipe);
        let Some(mut exit) = exit else {
            // Not registered: nothing to wait on. Closing the pipe has set it off.
            return Finished::Exited(None);
        };
        let until = Instant::now() + limit;
        loop {
            // (A failed reaper answers too: jobsup's remaining children are killed next.)
            if let Some(reaped) = exit.try_reaped() {
                return Finished::Exited(Some(reaped.exit));
            }
            if Instant::now() >= until {
                // Only while it is unreaped is the pid certainly still the guard's.
                exit.while_unreaped(|_| crate::reaper::kill_all(&[pid]));
                return Finished::Killed;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The guard's life: wait for jobsup to end, then sweep.
pub fn serve(args: &GuardArgs) -> u8 {
    // Out of the workers' reach through /proc (see `isolate::undumpable`).
    crate::isolate::undumpable();
    // Its own name in `ps`, `top` and for `killall jobsup`, which should leave it be.
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"jobsup-guard".as_ptr(), 0, 0, 0);
    }
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGPIPE,
    ] {
        // SAFETY: setting a signal's disposition to SIG_IGN.
        unsafe {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    // jobsup placed it for the guard; nothing else here has opened a file yet.
    // SAFETY: F_GETFD only reads the flags of an fd.
    if args.pipe_fd <= 2 || unsafe { libc::fcntl(args.pipe_fd, libc::F_GETFD) } == -1 {
        // Without the pipe there is no telling when jobsup ends: a bug, which jobsup sees in
        // the guard's exit status.
        return 2;
    }
    // SAFETY: the fd is open (checked above) and owned by nothing else in this process.
    let pipe = File::from(unsafe { OwnedFd::from_raw_fd(args.pipe_fd) });
    // With cgroups, the cgroup kill finds every process; without, the guard keeps watch.
    let mut seen = Seen::default();
    let watch = args.cgroup.is_empty().then_some(&mut seen);
    wait_for_end(pipe, args.parent, watch);
    sweep(&args.tag, &args.cgroup, &seen);
    // Only now: nothing of the run is left to make files in them.
    if let Some(parent) = &args.workdirs {
        remove_workdirs(parent, &prefix_for(&args.tag));
    }
    0
}

/// Processes seen in jobsup's tree, with their start times (so that a recycled pid is not
/// mistaken for one of them).
#[derive(Default)]
struct Seen {
    pids: std::collections::HashMap<i32, u64>,
    rounds: u32,
}

impl Seen {
    fn watch(&mut self, parent: i32) {
        // Forget the dead now and then, so that a long run of short-lived processes does
        // not grow the map; between times only new pids cost a read.
        self.rounds = self.rounds.wrapping_add(1);
        if self.rounds.is_multiple_of(64) {
            self.pids
                .retain(|&pid, start| start_time(pid) == Some(*start));
        }
        let me = std::process::id() as i32;
        for pid in crate::reaper::descendants(parent) {
            if pid == me || self.pids.contains_key(&pid) {
                continue;
            }
            if let Some(start) = start_time(pid) {
                self.pids.insert(pid, start);
            }
        }
    }

    /// Those still running as the same process.
    fn alive(&self) -> Vec<i32> {
        self.pids
            .iter()
            .filter(|(&pid, &start)| start_time(pid) == Some(start))
            .map(|(&pid, _)| pid)
            .collect()
    }
}

/// A process's start time (clock ticks since boot), from `/proc/PID/stat`; `None` once it
/// is gone or a zombie.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` begins at field 3 (state); starttime is field 22.
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Returns once jobsup has ended: it wrote [`DONE`], its pipe reads end-of-file, or
/// (should some process hold a copy of the write end) the guard has a new parent.
fn wait_for_end(mut pipe: File, parent: i32, mut watch: Option<&mut Seen>) {
    let mut buf = [0u8; 64];
    loop {
        let mut fds = [libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(seen) = watch.as_deref_mut() {
            seen.watch(parent);
        }
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, WATCH_EVERY.as_millis() as i32) };
        if ready > 0 {
            match pipe.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // DONE (the only byte ever written), end-of-file (jobsup died), or an error.
                _ => return,
            }
        }
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != parent {
            return;
        }
    }
}

/// Kills every process of the run until none is left (or a bound is reached), then
/// removes the cgroups.
fn sweep(tag: &str, cgroups: &[PathBuf], seen: &Seen) {
    let needle = format!("{TAG_VAR}={tag}");
    for _ in 0..100 {
        let in_cgroups: usize = cgroups.iter().map(|b| crate::cgroup::kill_under(b)).sum();
        let mut left = tagged_processes(needle.as_bytes());
        left.extend(seen.alive());
        if left.is_empty() && in_cgroups == 0 {
            break;
        }
        crate::reaper::kill_all(&left);
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::cgroup::remove_all(cgroups);
}

/// Live processes whose environment contains `needle` (`NAME=value`). Zombies have no
/// readable environment, so a killed process is not found twice.
pub fn tagged_processes(needle: &[u8]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| crate::reaper::environ_has(pid, needle))
        .collect()
}

/// How deep [`remove_workdirs`] goes into a worker's directory (each level holds an fd).
const MAX_DEPTH: u32 = 512;

/// Removes every directory `<parent>/<prefix>*` that belongs to this user, with all it
/// holds. Symbolic links are removed, never followed; directories a worker made read-only
/// or unreadable are given back to their owner (mode 0700) first. Best effort: what cannot
/// be removed stays.
pub fn remove_workdirs(parent: &Path, prefix: &str) {
    let Ok(mut dir) = Dir::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let names = names_in(&mut dir, |name| name.starts_with(prefix.as_bytes()));
    // SAFETY: geteuid takes nothing and cannot fail.
    let me = unsafe { libc::geteuid() };
    for name in names {
        // jobsup made them, as this user; anything else so named is not this run's.
        match nix::sys::stat::fstatat(&dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR && st.st_uid == me => {
                let _ = remove_tree(&dir, &name, 0);
            }
            _ => {}
        }
    }
}

/// The names in `dir` (but `.` and `..`) that `pick` accepts, read before any is removed.
fn names_in(dir: &mut Dir, pick: impl Fn(&[u8]) -> bool) -> Vec<CString> {
    dir.iter()
        .flatten()
        .map(|e| e.file_name().to_owned())
        .filter(|n| !matches!(n.to_bytes(), b"." | b".."))
        .filter(|n| pick(n.to_bytes()))
        .collect()
}

/// Removes the directory `name` in `parent` and everything in it.
fn remove_tree(parent: &Dir, name: &CStr, depth: u32) -> nix::Result<()> {
    if depth >= MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    let mut dir = open_for_removal(parent, name)?;
    for entry in names_in(&mut dir, |_| true) {
        // Whatever it is (a symlink included), unlinked; a directory says EISDIR.
        let unlinked = nix::unistd::unlinkat(&dir, entry.as_c_str(), UnlinkatFlags::NoRemoveDir);
        if unlinked == Err(Errno::EISDIR) {
            let _ = remove_tree(&dir, &entry, depth + 1);
        }
    }
    drop(dir);
    match nix::unistd::unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the directory `name` in `parent` (never through a symlink), made readable,
/// writable and searchable by its owner so that its entries can be listed and removed.
fn open_for_removal(parent: &Dir, name: &CStr) -> nix::Result<Dir> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::openat(parent, name, flags | OFlag::O_RDONLY, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::EACCES) => {
            // Unreadable: an O_PATH handle needs no permission. Its mode is changed through
            // /proc (fchmod refuses an O_PATH fd), which names this very directory.
            let handle = nix::fcntl::openat(parent, name, flags | OFlag::O_PATH, Mode::empty())?;
            let path = format!("/proc/self/fd/{}", handle.as_raw_fd());
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path.as_str(),
                Mode::S_IRWXU,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
            nix::fcntl::openat(&handle, ".", flags | OFlag::O_RDONLY, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    let st = nix::sys::stat::fstat(&fd)?;
    if st.st_mode & 0o700 != 0o700 {
        nix::sys::stat::fchmod(&fd, Mode::S_IRWXU)?;
    }
    Dir::from_fd(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_workdir_prefix_is_the_tag_made_safe_for_a_file_name() {
        assert_eq!(prefix_for("123.456"), "jobsup-worker-123.456-");
        assert_eq!(prefix_for("1/2 3-4"), "jobsup-worker-1_2_3_4-");
        assert!(workdir_prefix().starts_with(&format!("jobsup-worker-{}.", std::process::id())));
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn remove_workdirs_takes_exactly_the_runs_directories_and_follows_no_link() {
        let parent = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let prefix = prefix_for("42.4242");
        let ours = parent.path().join(format!("{prefix}aaaaaa"));
        std::fs::create_dir_all(ours.join("ro/deep")).unwrap();
        std::fs::write(ours.join("ro/deep/f"), "x").unwrap();
        std::fs::create_dir(ours.join("locked")).unwrap();
        std::fs::write(ours.join("locked/f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), ours.join("link")).unwrap();
        chmod(&ours.join("ro/deep"), 0o555);
        chmod(&ours.join("ro"), 0o555);
        chmod(&ours.join("locked"), 0o000);
        chmod(&ours, 0o500);
        // Named like this run's, but not a directory: not jobsup's.
        let link = parent.path().join(format!("{prefix}link"));
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let file = parent.path().join(format!("{prefix}file"));
        std::fs::write(&file, "x").unwrap();
        // Another run's, and one whose tag merely starts like this one's.
        let other = parent.path().join("jobsup-worker-othertag-x");
        let longer = parent
            .path()
            .join(format!("{}5-x", prefix.trim_end_matches('-')));
        for dir in [&other, &longer] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("f"), "x").unwrap();
        }

        remove_workdirs(parent.path(), &prefix);

        assert!(!ours.exists(), "{} is left", ours.display());
        assert!(outside.path().join("keep").exists(), "a link was followed");
        assert!(link.symlink_metadata().is_ok() && file.exists());
        assert!(other.join("f").exists() && longer.join("f").exists());
    }

    /// Which fds a shell started with, after `setup` ran in the child before its exec,
    /// given two files made inheritable there at high numbers (`stray` and `keep`).
    fn fds_after(setup: fn(RawFd)) -> (Vec<RawFd>, RawFd, RawFd) {
        let high =
            |f: File| nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(200)).unwrap();
        let stray = high(File::open("/dev/null").unwrap());
        let keep = high(File::open("/dev/null").unwrap());
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "ls /proc/$$/fd"]);
        // SAFETY: fcntl and the functions under test are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                libc::fcntl(stray, libc::F_SETFD, 0);
                libc::fcntl(keep, libc::F_SETFD, 0);
                setup(keep);
                Ok(())
            });
        }
        // Not `output()`: this test binary has a reaper that may collect the child's status
        // first, and then std's own wait fails. The listing is all that is needed.
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .expect("piped")
            .read_to_string(&mut out)
            .unwrap();
        let _ = child.wait();
        // SAFETY: both were made above, owned by nothing else, and are closed once, here.
        unsafe {
            libc::close(stray);
            libc::close(keep);
        }
        let fds = out
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        (fds, stray, keep)
    }

    #[test]
    fn only_the_kept_fd_and_stdio_survive_the_exec() {
        let (fds, stray, keep) = fds_after(|_| {});
        assert!(fds.contains(&stray) && fds.contains(&keep), "{fds:?}");
        for setup in [cloexec_all_but as fn(RawFd), cloexec_one_by_one] {
            let (fds, _, keep) = fds_after(setup);
            assert_eq!(fds, [0, 1, 2, keep], "{fds:?}");
        }
    }
}
