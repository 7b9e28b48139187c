//! Shared helpers for the end-to-end tests.
//!
//! Every test runs the real `jobsup` binary (the `jobsup-shim` binary of this package)
//! against real processors (the examples and the `fx-*` fixtures), found through
//! `CARGO_BIN_EXE_<name>`. Cargo only sets those variables while it compiles an integration
//! test or a benchmark, so the paths are taken with the [`bin!`] and [`jobsup!`] macros,
//! which expand inside the test crate.
//!
//! # Hermetic runs
//!
//! A [`Jobsup`] owns a fresh temporary directory that is the process's working directory,
//! `HOME` and `TMPDIR`, and runs with a cleared environment plus a fixed `PATH`. Nothing of
//! the developer's environment (a `RUST_LOG`, a `JOBSUP_*` variable) leaks in.
//!
//! # Never hang, never leak
//!
//! Every run has a global deadline ([`DEFAULT_RUN_TIMEOUT`] unless [`Jobsup::timeout`] says
//! otherwise). A jobsup still running at its deadline is killed together with every
//! descendant it has, and the test fails with a message that says so and shows what jobsup
//! printed. A [`Background`] run that a test drops without waiting for (a failed
//! assertion, a panic) is killed the same way.
//!
//! Conditions are awaited with [`wait_until`], which polls under a timeout; no helper
//! sleeps for a fixed time to let something happen.
//!
//! In a test (where the macros can see Cargo's variables):
//!
//! ```text
//! let run = jobsup!()
//!     .args(["-j", "1"])
//!     .processor(bin!("jobsup-echo"), [] as [&str; 0])
//!     .stdin("hello\n")
//!     .run();
//! assert_eq!(run.code(), 0, "{run}");
//! assert_eq!(run.records()[0].output(), Some("hello"));
//! ```
//!
//! The same builder runs any program, which is how the helpers test themselves:
//!
//! ```
//! use jobsup_tests::Jobsup;
//!
//! let run = Jobsup::new("/bin/sh")
//!     .args(["-c", r#"read line; echo "{\"seq\":1,\"id\":\"1\",\"outcome\":\"ok\",\"output\":\"$line\"}""#])
//!     .stdin("hello\n")
//!     .run();
//! assert_eq!(run.code(), 0, "{run}");
//! assert_eq!(run.records()[0].output(), Some("hello"));
//! ```

pub mod redis_server;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

/// How long a jobsup run may take before it is killed and the test fails.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A generous bound for [`wait_until`] conditions that should hold within milliseconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `PATH` every run gets: the system directories, nothing from the caller.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The absolute path of one of this package's binaries, as a `&'static str`.
///
/// Only usable from integration tests and benchmarks (where Cargo sets
/// `CARGO_BIN_EXE_<name>`); a misspelt name is a compile error.
#[macro_export]
macro_rules! bin {
    ($name:literal) => {
        env!(concat!("CARGO_BIN_EXE_", $name))
    };
}

/// A fresh [`Jobsup`] builder for the `jobsup` binary under test, already given `run`.
#[macro_export]
macro_rules! jobsup {
    () => {
        $crate::Jobsup::new(env!("CARGO_BIN_EXE_jobsup-shim")).arg("run")
    };
}

/// A fresh [`Jobsup`] builder for the binary under test, already given `run`, run by
/// `user` (a [`User`]).
#[macro_export]
macro_rules! jobsup_as {
    ($user:expr) => {
        $user.jobsup(env!("CARGO_BIN_EXE_jobsup-shim"))
    };
}

/// Who runs jobsup in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// The user running the tests (root on CI).
    Invoker,
    /// An unprivileged user: see [`Jobsup::unprivileged`].
    Unprivileged,
}

impl User {
    /// Both, for cases that must hold either way.
    pub const BOTH: [User; 2] = [User::Invoker, User::Unprivileged];

    /// `shim run`, as this user.
    pub fn jobsup(self, shim: &str) -> Jobsup {
        match self {
            User::Invoker => Jobsup::new(shim).arg("run"),
            User::Unprivileged => Jobsup::unprivileged(shim),
        }
    }
}

/// The middle value of a benchmark's samples (the upper one of an even count); NaN for none.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU time (user and system, in microseconds) used so far by this process's waited-for
/// descendants: a benchmark's jobsup or runner, and through it every process it reaped.
/// Taken before and after a run, the difference is that run's whole tree.
pub fn children_cpu() -> f64 {
    // SAFETY: getrusage fills a live struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Whether the tests run as root (so that an unprivileged run means dropping to nobody).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The user an unprivileged run drops to when the tests run as root.
pub const NOBODY: u32 = 65534;

/// A jobsup command line to run, hermetically, in its own temporary directory.
#[derive(Debug)]
pub struct Jobsup {
    dir: TempDir,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Vec<u8>,
    keep_stdin_open: bool,
    stdin_from: Option<Stdio>,
    timeout: Duration,
    stdout_to: Option<Stdio>,
    stderr_to: Option<Stdio>,
    inherited: Vec<(std::os::fd::OwnedFd, std::os::fd::RawFd)>,
}

impl Jobsup {
    /// A command running `program` (the jobsup binary) with no arguments yet.
    pub fn new(program: impl AsRef<Path>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jobsup-test-")
            .tempdir()
            .expect("cannot create a temporary directory for the test");
        Jobsup {
            dir,
            program: program.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            keep_stdin_open: false,
            stdin_from: None,
            timeout: DEFAULT_RUN_TIMEOUT,
            stdout_to: None,
            stderr_to: None,
            inherited: Vec::new(),
        }
    }

    /// `jobsup run` as an unprivileged user: as root, through `setpriv` to nobody (with the
    /// test's directory opened to it, so that scripts written there can be run and files
    /// written); as anyone else, as is.
    pub fn unprivileged(shim: impl AsRef<Path>) -> Self {
        if !running_as_root() {
            return Jobsup::new(shim).arg("run");
        }
        // nobody must be able to reach the binaries under test: a checkout in a directory
        // others cannot enter (`mktemp -d` makes one 0700) would fail every such test
        // obscurely.
        for dir in shim.as_ref().ancestors().skip(1) {
            let mode = std::fs::metadata(dir).map_or(0o755, |m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions())
            });
            assert!(
                mode & 0o001 != 0,
                "the tests run jobsup as nobody too, who cannot enter {} (mode {:o}): \
                 check the repository out where others may enter (chmod o+x {})",
                dir.display(),
                mode & 0o777,
                dir.display()
            );
        }
        let j = Jobsup::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(shim.as_ref())
            .arg("run");
        std::fs::set_permissions(j.dir(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("cannot open the test directory to nobody");
        j
    }

    /// The test's own temporary directory (jobsup's working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` inside the test's directory and returns its path.
    pub fn write_file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Appends `-- PROCESSOR ARGS...`: call it last.
    pub fn processor<I, S>(self, processor: impl AsRef<OsStr>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.arg("--").arg(processor).args(args)
    }

    /// Runs the command built so far through `wrapper args...`, which must end by
    /// exec'ing the arguments that follow its own (as `sh -c '...; exec "$@"' sh` does):
    /// for setting up what jobsup inherits. Arguments added later are still jobsup's.
    pub fn through<I, S>(mut self, wrapper: impl AsRef<OsStr>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        all.push(std::mem::take(&mut self.program).into_os_string());
        all.append(&mut self.args);
        self.program = PathBuf::from(wrapper.as_ref());
        self.args = all;
        self
    }

    /// Sets one environment variable on top of the scrubbed environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// The bytes jobsup reads on its standard input (default: none).
    pub fn stdin(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.stdin = bytes.as_ref().to_vec();
        self
    }

    /// For [`Jobsup::spawn`]: leave standard input open after the initial bytes, so the
    /// test can write more ([`Background::write_stdin`]) or close it later.
    pub fn keep_stdin_open(mut self) -> Self {
        self.keep_stdin_open = true;
        self
    }

    /// Sends jobsup's stdout to `to` (a file, [`unread_pipe`]...) instead of capturing
    /// it: the run's stdout is then empty.
    pub fn stdout_to(mut self, to: impl Into<Stdio>) -> Self {
        self.stdout_to = Some(to.into());
        self
    }

    /// Sends jobsup's stderr to `to` instead of capturing it: the run's stderr is then
    /// empty.
    pub fn stderr_to(mut self, to: impl Into<Stdio>) -> Self {
        self.stderr_to = Some(to.into());
        self
    }

    /// Gives jobsup this standard input (a pipe or file the test made, of which it may keep
    /// a duplicate) instead of a pipe from the test; [`Jobsup::stdin`] is then ignored.
    pub fn stdin_from(mut self, stdin: impl Into<Stdio>) -> Self {
        self.stdin_from = Some(stdin.into());
        self
    }

    /// Starts jobsup with `file` open on fd `target` and not close-on-exec, as a shell's
    /// `7>file` would: an fd jobsup inherited and must keep from its workers.
    pub fn inherit_fd(mut self, file: std::fs::File, target: std::os::fd::RawFd) -> Self {
        self.inherited.push((file.into(), target));
        self
    }

    /// Overrides the global deadline of this run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .current_dir(self.dir())
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", self.dir())
            .env("TMPDIR", self.dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn describe(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs jobsup to completion (or to its deadline, which fails the test).
    pub fn run(self) -> Run {
        self.spawn().wait()
    }

    /// Starts jobsup in the background: for tests that signal it or watch it run.
    ///
    /// With [`Jobsup::keep_stdin_open`] the initial standard input is written before this
    /// returns, so keep it small (under a pipe buffer, 64 KiB); otherwise a thread writes it
    /// and closes the pipe.
    pub fn spawn(mut self) -> Background {
        let mut cmd = self.command();
        if !self.inherited.is_empty() {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fds: Vec<(std::os::fd::RawFd, std::os::fd::RawFd)> = self
                .inherited
                .iter()
                .map(|(fd, target)| (fd.as_raw_fd(), *target))
                .collect();
            // SAFETY: dup2 is async-signal-safe, and `fds` was made before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    for &(fd, target) in &fds {
                        // dup2 leaves the new fd without close-on-exec: jobsup gets it
                        // (onto itself it does nothing, so the flag is cleared then).
                        let rc = if fd == target {
                            libc::fcntl(fd, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(fd, target)
                        };
                        if rc < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        if let Some(to) = self.stdout_to.take() {
            cmd.stdout(to);
        }
        if let Some(to) = self.stderr_to.take() {
            cmd.stderr(to);
        }
        if let Some(stdin) = self.stdin_from.take() {
            cmd.stdin(stdin);
        }
        let command_line = self.describe();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{command_line}`: {e}"));
        let deadline = Instant::now() + self.timeout;
        // Both output pipes are drained concurrently from the start: a jobsup blocked on a
        // full stderr pipe would otherwise look like a hung jobsup.
        let stdout = Captured::start(child.stdout.take());
        let stderr = Captured::start(child.stderr.take());
        // jobsup may exit without reading its input (a usage error): a broken pipe here is
        // not the test's concern, the exit code is.
        let mut stdin = child.stdin.take();
        if self.keep_stdin_open {
            if let Some(pipe) = stdin.as_mut() {
                let _ = pipe.write_all(&self.stdin);
            }
        } else if let Some(mut pipe) = stdin.take() {
            // From a thread, so that a jobsup that never reads cannot block the test before
            // the run's deadline is being watched.
            let bytes = self.stdin;
            thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        Background {
            child: Some(child),
            stdin,
            stdout,
            stderr,
            deadline,
            timeout: self.timeout,
            command_line,
            dir: Some(self.dir),
        }
    }
}

/// A pipe read to its end by a thread into a shared buffer.
#[derive(Debug)]
struct Captured {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Captured {
    /// Reads `pipe` to its end; nothing to read when there is none (not captured).
    fn start(pipe: Option<impl Read + Send + 'static>) -> Captured {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let Some(mut pipe) = pipe else {
            return Captured { buf, thread: None };
        };
        let sink = Arc::clone(&buf);
        let thread = thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        });
        Captured {
            buf,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.buf.lock().unwrap().clone()
    }

    /// Waits for the end of the pipe, which can outlive jobsup if a descendant still holds
    /// it; never longer than `until`.
    fn finish(&mut self, until: Instant) -> Vec<u8> {
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        self.snapshot()
    }
}

/// A jobsup running in the background. Dropping it kills jobsup and its descendants.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Captured,
    stderr: Captured,
    deadline: Instant,
    timeout: Duration,
    command_line: String,
    dir: Option<TempDir>,
}

impl Background {
    /// Waits until jobsup has installed its handler for `sig`, so that the signal cannot
    /// hit the default action (which would kill jobsup instead of testing it).
    pub fn wait_for_handler(&self, sig: Signal) {
        let pid = self.pid();
        wait_until(WAIT, &format!("jobsup (pid {pid}) catches {sig}"), || {
            catches_signal(pid, sig)
        });
    }

    /// Sends `sig` and waits until the kernel has delivered it, so that a second one sent
    /// after this is not merged with it into a single pending signal.
    pub fn signal_delivered(&self, sig: Signal) {
        let pid = self.pid();
        self.signal(sig);
        wait_until(WAIT, &format!("{sig} is delivered to jobsup"), || {
            self.has_exited() || !signal_pending(pid, sig)
        });
    }

    /// jobsup's process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("jobsup was waited for").id() as i32
    }

    /// Sends `signal` to jobsup (only to it, not to its process group).
    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to jobsup: {e}"));
    }

    /// Writes more standard input (after [`Jobsup::keep_stdin_open`]).
    pub fn write_stdin(&mut self, bytes: impl AsRef<[u8]>) {
        let pipe = self
            .stdin
            .as_mut()
            .expect("stdin is closed: use Jobsup::keep_stdin_open");
        // A jobsup that stopped reading may have closed its end: not an error here.
        let _ = pipe.write_all(bytes.as_ref());
        let _ = pipe.flush();
    }

    /// Closes jobsup's standard input (end of jobs).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// What jobsup has written to stdout so far.
    pub fn stdout_so_far(&self) -> Vec<u8> {
        self.stdout.snapshot()
    }

    /// The complete records jobsup has written to stdout so far.
    pub fn records_so_far(&self) -> Vec<Record> {
        let out = self.stdout_so_far();
        // Only complete lines: the last one may still be being written.
        let end = out.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        records(&out[..end])
    }

    /// What jobsup has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.snapshot()).into_owned()
    }

    /// The processes jobsup started that run right now (its workers, mostly), looking
    /// through a pid namespace's init to its worker (its first child).
    pub fn children(&self) -> Vec<i32> {
        children_of(self.pid())
            .into_iter()
            // A zombie (a probe's child, say, until the reaper's next sweep) runs no more.
            .filter(|&pid| pid_alive(pid))
            // The init's first child is the worker, pid 2 of the namespace: not the lowest
            // host pid (pids wrap, and orphans of the namespace become the init's children).
            .map(|pid| match is_namespace_init(pid) {
                true => children_of(pid)
                    .into_iter()
                    .find(|&child| innermost_pid(child) == Some(2))
                    .unwrap_or(pid),
                false => pid,
            })
            .collect()
    }

    /// Whether jobsup has exited (without reaping it: [`Background::wait`] still works).
    pub fn has_exited(&self) -> bool {
        let pid = self.pid();
        !pid_alive(pid)
    }

    /// Kills jobsup with SIGKILL (no chance to clean up) and waits for it, asserting that
    /// this is how it died.
    pub fn kill_hard(self) -> Run {
        self.signal(Signal::SIGKILL);
        let run = self.wait();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&run.status),
            Some(libc::SIGKILL),
            "jobsup should have died of SIGKILL\n{run}"
        );
        run
    }

    /// Waits for jobsup to exit, within the run's global deadline.
    pub fn wait(mut self) -> Run {
        let mut child = self.child.take().expect("jobsup was waited for");
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < self.deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let pid = child.id() as i32;
                    let killed = kill_tree(pid);
                    let _ = child.wait();
                    let grace = Instant::now() + Duration::from_secs(2);
                    let stdout = self.stdout.finish(grace);
                    let stderr = self.stderr.finish(grace);
                    panic!(
                        "jobsup did not exit within {:?}: killed it (pid {pid}) and {} \
                         descendant(s) {:?}\ncommand: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        self.timeout,
                        killed.len().saturating_sub(1),
                        &killed[1.min(killed.len())..],
                        self.command_line,
                        String::from_utf8_lossy(&stdout),
                        String::from_utf8_lossy(&stderr),
                    );
                }
                Err(e) => panic!("cannot wait for jobsup: {e}"),
            }
        };
        self.stdin = None;
        // A worker that outlived jobsup could hold the pipes open; do not wait on it for
        // longer than the run's deadline allows (plus a little for the readers to catch up).
        let until = self.deadline.max(Instant::now()) + Duration::from_secs(1);
        let stdout = self.stdout.finish(until);
        let stderr = self.stderr.finish(until);
        Run {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            command_line: std::mem::take(&mut self.command_line),
            dir: self.dir.take().expect("the directory is still owned"),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Not waited for: the test failed or gave up. Never leave jobsup or its workers
            // behind.
            kill_tree(child.id() as i32);
            let _ = child.wait();
        }
    }
}

/// A finished jobsup run: its exit status and everything it printed.
pub struct Run {
    /// How jobsup ended.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr, lossily decoded.
    pub stderr: String,
    command_line: String,
    dir: TempDir,
}

impl Run {
    /// The JSON summary (`--summary json`) in jobsup's stderr: the last line that starts a
    /// JSON object. Fails the test when there is none.
    pub fn json_summary(&self) -> Value {
        let line = self
            .stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("{\""))
            .unwrap_or_else(|| panic!("no JSON summary on stderr\n{self}"));
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("the summary is not JSON ({e}): {line}"))
    }

    /// jobsup's exit code; fails the test if jobsup was killed by a signal.
    pub fn code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match self.status.code() {
            Some(code) => code,
            None => panic!(
                "jobsup was killed by signal {:?} instead of exiting\n{self}",
                self.status.signal()
            ),
        }
    }

    /// stdout as text.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The records on stdout, in the order they were written.
    pub fn records(&self) -> Vec<Record> {
        records(&self.stdout)
    }

    /// The records by `seq`; fails the test if a `seq` appears twice.
    pub fn by_seq(&self) -> BTreeMap<u64, Record> {
        by_seq(self.records())
    }

    /// The test's temporary directory (jobsup's working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command_line,
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One result record: a JSON object with typed accessors.
///
/// Parsing checks what every record must satisfy: an object with a positive integer `seq`,
/// a string `id` and a string `outcome`, and no `null` field (absent fields are omitted).
#[derive(Clone, PartialEq)]
pub struct Record(pub Value);

impl Record {
    fn parse(line: &str) -> Record {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        let obj = value
            .as_object()
            .unwrap_or_else(|| panic!("record is not a JSON object: {line}"));
        for (k, v) in obj {
            assert!(
                !v.is_null(),
                "field `{k}` is null; absent fields must be omitted: {line}"
            );
        }
        let rec = Record(value);
        assert!(
            rec.0["seq"].as_u64().is_some_and(|s| s >= 1),
            "bad seq: {line}"
        );
        assert!(rec.0["id"].is_string(), "id is not a string: {line}");
        assert!(
            rec.0["outcome"].is_string(),
            "outcome is not a string: {line}"
        );
        rec
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("`{key}` is not a string in {self}"))
        })
    }

    fn int_field(&self, key: &str) -> Option<i64> {
        self.0.get(key).map(|v| {
            v.as_i64()
                .unwrap_or_else(|| panic!("`{key}` is not an integer in {self}"))
        })
    }

    /// The 1-based line number of the job in the input.
    pub fn seq(&self) -> u64 {
        self.0["seq"].as_u64().expect("checked on parse")
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        self.0["id"].as_str().expect("checked on parse")
    }

    /// ok, failed, timeout, killed, crashed, rejected or cancelled.
    pub fn outcome(&self) -> &str {
        self.0["outcome"].as_str().expect("checked on parse")
    }

    /// The job's output, when it was UTF-8.
    pub fn output(&self) -> Option<&str> {
        self.str_field("output")
    }

    /// The job's output, when it was not UTF-8 (base64).
    pub fn output_base64(&self) -> Option<&str> {
        self.str_field("output_base64")
    }

    /// The error text.
    pub fn error(&self) -> Option<&str> {
        self.str_field("error")
    }

    /// The worker's exit code, when it exited.
    pub fn exit_code(&self) -> Option<i64> {
        self.int_field("exit_code")
    }

    /// The signal that ended the worker, when one did.
    pub fn signal(&self) -> Option<i64> {
        self.int_field("signal")
    }

    /// The worker's pid.
    pub fn pid(&self) -> Option<i32> {
        self.int_field("pid")
            .map(|p| i32::try_from(p).unwrap_or_else(|_| panic!("pid out of range in {self}")))
    }

    /// The worker's 1-based serial number.
    pub fn worker(&self) -> Option<i64> {
        self.int_field("worker")
    }

    /// How many attempts the job took.
    pub fn attempts(&self) -> Option<i64> {
        self.int_field("attempts")
    }

    /// The job's duration in milliseconds.
    pub fn duration_ms(&self) -> Option<f64> {
        self.0.get("duration_ms").map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("`duration_ms` is not a number in {self}"))
        })
    }

    /// Whether the record has this field at all.
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some()
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parses jobsup's stdout: one record per non-empty line.
pub fn records(stdout: &[u8]) -> Vec<Record> {
    let text = std::str::from_utf8(stdout).expect("jobsup's stdout is UTF-8");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(Record::parse)
        .collect()
}

/// Indexes records by `seq`; fails the test if a `seq` appears twice.
pub fn by_seq(records: Vec<Record>) -> BTreeMap<u64, Record> {
    let mut map = BTreeMap::new();
    for rec in records {
        if let Some(prev) = map.insert(rec.seq(), rec.clone()) {
            panic!("two records for seq {}:\n{prev}\n{rec}", rec.seq());
        }
    }
    map
}

/// The distinct worker pids named by `records`.
pub fn pids(records: &[Record]) -> BTreeSet<i32> {
    records.iter().filter_map(Record::pid).collect()
}

/// Polls `cond` every few milliseconds until it holds; fails the test, naming `what`, if
/// it does not within `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The process's state letter from `/proc/<pid>/stat` (R, S, D, Z, ...), if it exists.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// The process's parent pid, if it exists.
pub fn proc_ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The process's pid in its innermost pid namespace (the last of `NSpid`).
pub fn innermost_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Whether `pid` is a jobsup guard process (started by every `jobsup run`, named by its
/// `argv[0]`): jobsup's own helper, not a worker.
pub fn is_guard(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"jobsup-guard\0"))
}

/// The guard process of the jobsup with this pid, if it has one.
pub fn guard_of(jobsup: i32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| proc_ppid(p) == Some(jobsup) && is_guard(p))
}

/// The value a guard process was given for `--flag` on its command line (e.g. `--tag`),
/// if any: the first, when it was given several times.
pub fn guard_arg(guard: i32, flag: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{guard}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == flag.as_bytes())
        .map(|w| String::from_utf8_lossy(w[1]).into_owned())
}

/// The processes whose parent is `pid`, from `/proc/<pid>/task/*/children` (or, where the
/// kernel lacks that file, by scanning `/proc`). jobsup's guard is left out: tests count
/// workers and their descendants.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = BTreeSet::new();
    let tasks = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(tasks) => tasks,
        Err(_) => return Vec::new(),
    };
    let mut have_children_file = false;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            have_children_file = true;
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    if !have_children_file {
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for entry in procs.flatten() {
                if let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                    if proc_ppid(child) == Some(pid) {
                        out.insert(child);
                    }
                }
            }
        }
    }
    out.into_iter().filter(|&p| !is_guard(p)).collect()
}

/// Whether `pid` is PID 1 of a pid namespace below this one (the init jobsup gives a
/// worker), from the last entry of its `NSpid`.
pub fn is_namespace_init(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                ids.len() > 1 && ids.last() == Some(&"1")
            })
    })
}

/// `pid` and all its descendants, parents before children.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children_of(all[i]);
        for k in kids {
            if !all.contains(&k) {
                all.push(k);
            }
        }
        i += 1;
    }
    all
}

/// SIGKILLs `pid` and every descendant (collected first, since killing the parent reparents
/// the children). Returns the pids signalled, `pid` first.
pub fn kill_tree(pid: i32) -> Vec<i32> {
    let tree = process_tree(pid);
    for &p in &tree {
        // Already gone is fine.
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    tree
}

fn status_mask(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    u64::from_str_radix(line[field.len()..].trim_start_matches(':').trim(), 16).ok()
}

/// Whether `pid` has installed a handler for `signal` (from `SigCgt` in its status).
pub fn catches_signal(pid: i32, signal: Signal) -> bool {
    status_mask(pid, "SigCgt").is_some_and(|m| m & (1u64 << (signal as i32 - 1)) != 0)
}

/// Whether `signal` is still pending for `pid` (sent but not yet delivered to a thread).
pub fn signal_pending(pid: i32, signal: Signal) -> bool {
    let bit = 1u64 << (signal as i32 - 1);
    if status_mask(pid, "ShdPnd").is_some_and(|m| m & bit != 0) {
        return true;
    }
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                let tid = t.file_name().to_string_lossy().parse::<i32>().ok();
                tid.and_then(|tid| {
                    let s =
                        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
                    let line = s.lines().find(|l| l.starts_with("SigPnd"))?;
                    u64::from_str_radix(line["SigPnd".len()..].trim_start_matches(':').trim(), 16)
                        .ok()
                })
                .is_some_and(|m| m & bit != 0)
            })
        })
        .unwrap_or(false)
}

/// A pipe whose reading end the test holds and never reads (or reads when it chooses):
/// give the writing end to [`Jobsup::stdout_to`] or [`Jobsup::stderr_to`]. Both ends are
/// close-on-exec, so jobsup's children do not inherit the reading end.
pub fn unread_pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array, which are then owned here.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are new and owned by nothing else.
    unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// The resident memory of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`), if it exists.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `n` lines of input, each `line(i)` for `i` in `1..=n`, newline-terminated.
pub fn lines(n: usize, mut line: impl FnMut(usize) -> String) -> String {
    let mut s = String::new();
    for i in 1..=n {
        s.push_str(&line(i));
        s.push('\n');
    }
    s
}

/// The absolute path of a file in the repository's `examples/` folder (workers run in a
/// private working directory, so processors' script arguments must be absolute).
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// The pids a processor wrote to `path`, one per line (none if the file does not exist).
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A fresh [`Jobsup`] builder for the `jobsup` binary under test, already given `check`.
#[macro_export]
macro_rules! jobsup_check {
    () => {
        $crate::Jobsup::new(env!("CARGO_BIN_EXE_jobsup-shim")).arg("check")
    };
}

/// Asserts that `r` was hard-killed (signal 9) and that its worker is gone from /proc.
pub fn assert_killed_and_gone(r: &Record, run: &Run) {
    assert_eq!(r.outcome(), "killed", "{r}");
    assert_eq!(r.signal(), Some(9), "{r}");
    let pid = r.pid().expect("a killed job names its worker's pid");
    assert!(!pid_alive(pid), "worker {pid} outlived jobsup\n{run}");
}

impl Record {
    /// The errors of the earlier attempts of a retried job (`previous_errors`), if any.
    pub fn previous_errors(&self) -> Option<Vec<&str>> {
        self.0.get("previous_errors").map(|v| {
            v.as_array()
                .unwrap_or_else(|| panic!("`previous_errors` is not an array in {self}"))
                .iter()
                .map(|e| {
                    e.as_str()
                        .unwrap_or_else(|| panic!("a previous error is not a string in {self}"))
                })
                .collect()
        })
    }

    /// Which deadline ended a `timeout` or `killed` job: `ttl` or `idle`.
    pub fn deadline(&self) -> Option<&str> {
        self.str_field("deadline")
    }
}

/// The CPU time `pid` has used so far (user + system), in clock ticks, if it exists.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name: state is field 3, utime field 14 and stime field 15.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Live processes whose argument list is exactly `sleep <duration>`, from /proc.
pub fn sleepers(duration: &str) -> Vec<i32> {
    let argv = format!("sleep\0{duration}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline == argv.as_bytes() && pid_alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

/// This process's own directory in a cgroup hierarchy: cgroup v2 for `None`, else the v1
/// hierarchy of `controller`; found as jobsup finds it (mountinfo plus /proc/self/cgroup,
/// minus the mount's root inside containers).
pub fn own_cgroup_dir(controller: Option<&str>) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (root, point) = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let matches = match controller {
            None => *right.first()? == "cgroup2",
            Some(c) => *right.first()? == "cgroup" && right.get(2)?.split(',').any(|o| o == c),
        };
        matches.then(|| (left.get(3).copied(), left.get(4).copied()))
    })?;
    let (root, point) = (root?, point?);
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => list.is_empty(),
            Some(c) => list.split(',').any(|x| x == c),
        };
        matches.then_some(path)
    })?;
    let rel = path.strip_prefix(root).unwrap_or(path);
    Some(Path::new(point).join(rel.trim_start_matches('/')))
}

/// Whether this process can make a directory in `dir` (a cgroup, as jobsup would).
pub fn can_make_dir_in(dir: &Path) -> bool {
    let probe = dir.join(format!("jobsup-test-probe-{}", std::process::id()));
    let ok = std::fs::create_dir(&probe).is_ok();
    let _ = std::fs::remove_dir(&probe);
    ok
}

/// The path of `program` (`python3`, `node`) on the [`PATH`] every run gets.
///
/// # Panics
///
/// When it is not installed: the tests that need a language's interpreter fail, with a
/// message that says how to get it, rather than pass without running.
pub fn interpreter(program: &str) -> PathBuf {
    PATH.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed (looked in {PATH}); the runtime tests run real \
                 {program} processors: install it (`.ci/run` does: apt-get install nodejs \
                 python3)"
            )
        })
}

/// The absolute path of a file in the repository (workers run in a private working
/// directory, so paths handed to them must be absolute).
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub mod raw;

#[cfg(test)]
mod tests {
    //! The helpers themselves, against ordinary programs (no jobsup needed).

    use super::*;

    fn sh(script: &str) -> Jobsup {
        Jobsup::new("/bin/sh").args(["-c", script])
    }

    #[test]
    fn run_captures_exit_code_stdout_stderr_and_stdin() {
        let run = sh("cat; echo oops >&2; exit 3").stdin("in\n").run();
        assert_eq!(run.code(), 3);
        assert_eq!(run.stdout_str(), "in\n");
        assert_eq!(run.stderr, "oops\n");
    }

    #[test]
    fn environment_is_scrubbed_and_cwd_is_the_temp_dir() {
        let run = sh("env | sort; pwd").env("EXTRA", "1").run();
        let out = run.stdout_str();
        let dir = run.dir().to_str().unwrap().to_owned();
        assert!(out.contains(&format!("PATH={PATH}\n")), "{out}");
        assert!(out.contains("EXTRA=1\n"), "{out}");
        assert!(out.contains(&format!("HOME={dir}\n")), "{out}");
        assert!(out.lines().last() == Some(dir.as_str()), "{out}");
        assert!(!out.contains("CARGO"), "{out}");
    }

    #[test]
    fn hung_run_is_killed_with_its_descendants_and_fails_clearly() {
        let marker = tempfile::NamedTempFile::new().unwrap();
        let pidfile = marker.path().to_owned();
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let result = std::panic::catch_unwind(|| {
            sh(&script).timeout(Duration::from_millis(500)).run();
        });
        let err = result.expect_err("a hung run fails the test");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("did not exit within"), "{msg}");
        assert!(msg.contains("started"), "shows what it printed: {msg}");
        let sleeper: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_until(WAIT, "the descendant is gone", || !pid_alive(sleeper));
    }

    #[test]
    fn dropped_background_run_kills_its_tree() {
        let bg = sh("sleep 300 & wait").spawn();
        wait_until(WAIT, "the shell has a child", || !bg.children().is_empty());
        let tree = process_tree(bg.pid());
        assert!(tree.len() >= 2, "{tree:?}");
        drop(bg);
        for p in tree {
            wait_until(WAIT, "the tree is gone", || !pid_alive(p));
        }
    }

    #[test]
    fn signal_helpers_see_handlers_and_exit() {
        let bg = sh("trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done").spawn();
        let pid = bg.pid();
        wait_until(WAIT, "the trap is installed", || {
            !bg.stdout_so_far().is_empty() && catches_signal(pid, Signal::SIGTERM)
        });
        assert!(!signal_pending(pid, Signal::SIGTERM));
        bg.signal(Signal::SIGTERM);
        wait_until(WAIT, "the shell exits", || bg.has_exited());
        assert_eq!(bg.wait().code(), 7);
    }

    #[test]
    fn records_parse_and_check_their_shape() {
        let recs =
            records(b"{\"seq\":2,\"id\":\"2\",\"outcome\":\"ok\",\"output\":\"x\",\"pid\":5}\n\n");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].seq(), 2);
        assert_eq!(recs[0].output(), Some("x"));
        assert_eq!(recs[0].pid(), Some(5));
        assert_eq!(recs[0].error(), None);
        let null = std::panic::catch_unwind(|| {
            records(b"{\"seq\":1,\"id\":\"1\",\"outcome\":\"ok\",\"error\":null}\n")
        });
        assert!(null.is_err(), "a null field is refused");
        let dup = std::panic::catch_unwind(|| {
            by_seq(records(
                b"{\"seq\":1,\"id\":\"1\",\"outcome\":\"ok\"}\n{\"seq\":1,\"id\":\"1\",\"outcome\":\"ok\"}\n",
            ))
        });
        assert!(dup.is_err(), "a duplicate seq is refused");
    }

    #[test]
    fn pid_alive_is_false_for_zombies_and_missing_pids() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        wait_until(WAIT, "the child is a zombie", || {
            proc_state(pid) == Some('Z')
        });
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(pid_alive(std::process::id() as i32));
    }
}
