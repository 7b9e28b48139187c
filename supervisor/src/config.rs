//! One schema for the command line and the config file, resolved into one pool
//! configuration with real durations and sizes.
//!
//! [`PoolSpec`] is both a set of clap flags and a TOML table (`deny_unknown_fields`), so the
//! two cannot drift apart. A run resolves a pool from, in order of precedence: the command
//! line, the pool's table in the file, the file's `[defaults]`, and the built-in defaults.
//!
//! ```toml
//! [defaults]
//! ttl = "30s"
//!
//! [pools.thumbnailer]
//! command = "convert"
//! args = ["{}", "-resize", "50%", "/srv/thumbs/{#}.png"]
//! mode = "exec"
//! concurrency = 4
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use nix::sys::signal::Signal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::isolate::Isolate;
use crate::link::Mode;
use crate::record::Outcome;

/// A duration: humantime (`30s`, `1m30s`, `250ms`), or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::units::parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => s.parse().map_err(de::Error::custom),
            toml::Value::Integer(n) => crate::units::duration_from_int(n)
                .map(Dur)
                .map_err(|e| de::Error::custom(format!("{n} {e}"))),
            toml::Value::Float(x) => crate::units::duration_from_secs(x)
                .map(Dur)
                .map_err(|e| de::Error::custom(format!("{x} {e}"))),
            other => Err(de::Error::custom(format!(
                "expected a duration such as \"30s\", got {other}"
            ))),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The largest `RLIMIT_NOFILE` a worker can be given: jobsup's own hard limit, which a
/// process with `CAP_SYS_RESOURCE` may raise up to `fs.nr_open`.
fn most_open_files() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(u64::MAX, |(_, hard)| hard);
    let may_raise = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let caps = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(caps.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
    if !may_raise {
        return hard;
    }
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map_or(hard, |nr_open: u64| nr_open.max(hard))
}

/// A size in bytes: a number, or a number with a unit (`64KiB`, `10MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::units::parse_size(s).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(d)? {
            toml::Value::String(s) => s.parse().map_err(de::Error::custom),
            toml::Value::Integer(n) => crate::units::size_from_int(n)
                .map(Size)
                .map_err(|e| de::Error::custom(format!("{n} {e}"))),
            other => Err(de::Error::custom(format!(
                "expected a size such as \"64KiB\", got {other}"
            ))),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}B", self.0))
    }
}

/// A signal by name or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub Signal);

impl FromStr for Sig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::units::parse_signal(s).map(Sig)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

/// `KEY=VALUE` on the command line; a table in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar(pub String, pub String);

impl FromStr for EnvVar {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(EnvVar(k.into(), v.into())),
            _ => Err(format!("{s:?} is not KEY=VALUE")),
        }
    }
}

fn env_table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<EnvVar>>, D::Error> {
    let table = BTreeMap::<String, String>::deserialize(d)?;
    Ok(Some(table.into_iter().map(|(k, v)| EnvVar(k, v)).collect()))
}

fn env_table_out<S: Serializer>(env: &Option<Vec<EnvVar>>, s: S) -> Result<S::Ok, S::Error> {
    let table: BTreeMap<&str, &str> = env
        .iter()
        .flatten()
        .map(|EnvVar(k, v)| (k.as_str(), v.as_str()))
        .collect();
    table.serialize(s)
}

/// The outcomes a job may be retried after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// The processor said the job failed.
    Failed,
    /// The worker died or broke the protocol.
    Crashed,
    /// The job timed out and was cleaned up.
    Timeout,
    /// The job was hard-killed.
    Killed,
}

impl RetryOn {
    /// Whether `outcome` is this one.
    pub fn matches(self, outcome: Outcome) -> bool {
        matches!(
            (self, outcome),
            (RetryOn::Failed, Outcome::Failed)
                | (RetryOn::Crashed, Outcome::Crashed)
                | (RetryOn::Timeout, Outcome::Timeout)
                | (RetryOn::Killed, Outcome::Killed)
        )
    }
}

/// A worker's scheduling class (`--sched`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sched {
    /// SCHED_OTHER, the ordinary class.
    Other,
    /// SCHED_BATCH: taken to be CPU-bound, never preempts another task on waking.
    Batch,
    /// SCHED_IDLE: runs only when nothing else wants the CPU.
    Idle,
}

/// A pool's settings, as flags and as a TOML table; every field is optional so that the
/// sources can be layered.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The processor (config file only; on the command line it follows `--`).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The processor's arguments (config file only).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// How jobs reach the processor: native (a jobsup processor: frames on fds 3 and 4),
    /// lines (one line in on stdin, one line out on stdout, reused), exec (a fresh process
    /// per job: payload on stdin and in `{}` arguments, result on stdout) [default: native].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Time a job may run before its worker is asked to clean up (e.g. 30s, 1m30s, 250ms;
    /// a bare number is seconds; at most 100 years); 0 means no deadline, as in GNU timeout
    /// [default: 30s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Dur>,
    /// Time a worker has to clean up after the ttl before its process group is killed; 0
    /// means no cleanup request: SIGKILL right at the ttl [default: 5s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Dur>,
    /// Workers running at once [default: the number of CPUs].
    #[arg(short = 'j', long = "jobs", value_parser = clap::value_parser!(u32).range(1..=4096))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Set a variable in the workers' environment (repeatable); in the file, a table.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    #[serde(
        default,
        deserialize_with = "env_table",
        serialize_with = "env_table_out",
        skip_serializing_if = "Option::is_none"
    )]
    pub env: Option<Vec<EnvVar>>,
    /// Pass a variable of jobsup's own environment on to the workers (repeatable).
    #[arg(long = "pass-env", value_name = "KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_env: Option<Vec<String>>,
    /// The cleanup request in lines and exec modes: this signal to the worker's process
    /// group at the ttl, followed by SIGCONT. A name (TERM, INT) or a number [default: TERM].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_signal: Option<Sig>,
    /// The most output a job may return in lines and exec modes; past it the job fails
    /// (64KiB, 10MB, 1GiB, or bytes) [default: 16MiB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output: Option<Size>,
    /// Replace a worker after about this many jobs (each worker gets a little more, at
    /// random, so that a pool's workers do not all restart at once).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_jobs_per_worker: Option<u64>,
    /// Run a job again, up to this many more times, when it ends with one of --retry-on
    /// [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Which outcomes are retried (comma-separated) [default: failed,crashed].
    #[arg(long, value_enum, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    /// The first retry's delay; each further one doubles it, with random jitter
    /// [default: 1s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_delay: Option<Dur>,
    /// Time a new worker has to start: a native worker's handshake; in lines mode, the
    /// grace before its first job's clock starts; 0 means no limit [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<Dur>,
    /// Native mode: no heartbeat or progress from a job for this long is treated like its
    /// ttl passing (cleanup request, then kill); the record says which fired; 0 means off.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    /// Log a warning for a job still running after this long, while it runs; 0 means off.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow: Option<Dur>,
    /// Limit each worker's memory, e.g. 512MiB: its whole tree's resident memory through a
    /// memory cgroup where the machine offers one (the OOM killer ends it), otherwise its
    /// address space (RLIMIT_AS: allocations fail).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Limit each job's CPU time, in whole seconds (exec mode: RLIMIT_CPU, SIGXCPU then
    /// SIGKILL a second later; native and lines: measured per job, killed when used up); 0
    /// means no limit.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_time: Option<Dur>,
    /// Limit each worker's open file descriptors (RLIMIT_NOFILE).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Limit the processes and threads of each worker's tree (cgroup pids.max; refused at
    /// start where no pids controller is available).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_procs: Option<u64>,
    /// Namespaces beyond the default containment (comma-separated): net (no network at
    /// all), pid (the pid namespace workers get where the kernel allows, required), none
    /// (no namespace at all, not even the default pid, mount and cgroup ones).
    #[arg(long, value_enum, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolate: Option<Vec<Isolate>>,
    /// Under --isolate fs: a host path the workers see, at DST (default: the same path),
    /// writable unless `:ro` (repeatable).
    #[arg(long, value_name = "SRC[:DST][:ro]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<Vec<String>>,
    /// Run the workers as this user, and its groups or only GROUP (jobsup must be root,
    /// unless it names jobsup's own user).
    #[arg(long, value_name = "USER[:GROUP]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run the workers this many nice levels below the nice value jobsup was started with
    /// (0 to 19): below other work on the machine. Not by default, and not to keep
    /// jobsup's deadlines: a worker being killed must get a CPU to die, and a lower one
    /// waits longer for it [default: 0].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=19))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nice: Option<u8>,
    /// The workers' scheduling class: other, batch (CPU-bound: never preempts on waking)
    /// or idle (only when nothing else runs) [default: other].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sched: Option<Sched>,
    /// `jobsup serve`'s queue, in a config file's `[pools.NAME.source]` table (config file
    /// only; `run` ignores it).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::queue_cli::SourceSpec>,
    /// Where the workers run (config file only; on the command line `--cwd`, which takes
    /// precedence): a directory, relative to where jobsup was started, or `scratch` for
    /// each worker's private directory [default: the directory jobsup was started in].
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

/// Fills every field `self` leaves unset from `under`.
impl PoolSpec {
    fn over(mut self, under: &PoolSpec) -> PoolSpec {
        // Variables add up, key by key, rather than one layer's list hiding the other's.
        let env = merge_env(under.env.as_deref(), self.env.take());
        let pass_env = match (&under.pass_env, self.pass_env.take()) {
            (None, mine) => mine,
            (Some(theirs), None) => Some(theirs.clone()),
            (Some(theirs), Some(mine)) => {
                let mut all = theirs.clone();
                all.extend(mine.into_iter().filter(|k| !theirs.contains(k)));
                Some(all)
            }
        };
        // The queue's keys layer one by one too.
        let source = match (self.source.take(), &under.source) {
            (Some(mine), Some(theirs)) => Some(mine.over(theirs)),
            (mine, theirs) => mine.or_else(|| theirs.clone()),
        };
        macro_rules! layer {
            ($($field:ident),* $(,)?) => {
                PoolSpec { env, pass_env, source, $($field: self.$field.or_else(|| under.$field.clone()),)* }
            };
        }
        layer!(
            command,
            args,
            mode,
            ttl,
            cleanup,
            concurrency,
            cleanup_signal,
            max_output,
            max_jobs_per_worker,
            retries,
            retry_on,
            retry_delay,
            start_timeout,
            idle_timeout,
            slow,
            memory,
            cpu_time,
            open_files,
            max_procs,
            isolate,
            bind,
            user,
            nice,
            sched,
            cwd,
        )
    }
}

/// `under`'s variables, then `mine`, a later one replacing an earlier one of the same key.
fn merge_env(under: Option<&[EnvVar]>, mine: Option<Vec<EnvVar>>) -> Option<Vec<EnvVar>> {
    match (under, mine) {
        (None, mine) => mine,
        (Some(theirs), None) => Some(theirs.to_vec()),
        (Some(theirs), Some(mine)) => {
            let mut all: Vec<EnvVar> = theirs
                .iter()
                .filter(|t| !mine.iter().any(|m| m.0 == t.0))
                .cloned()
                .collect();
            all.extend(mine);
            Some(all)
        }
    }
}

/// The workers' nice levels below jobsup's starting nice value when none is given: none.
/// Measured unprivileged (no real-time class, no way to raise a worker being killed), 10
/// levels down made a killed CPU-bound worker die 5-12 times later (p99) than one at
/// jobsup's own level, which dies about when one under `timeout -k` does (see the README's
/// Performance section).
pub const DEFAULT_NICE: u8 = 0;

/// The workers' scheduling class when none is given.
pub const DEFAULT_SCHED: Sched = Sched::Other;

/// A setting whose value is out of range.
fn out_of_range(key: &str, detail: &str) -> String {
    format!("key `{key}`: {detail}")
}

/// One thing wrong with a pool's settings: its text names the pool (and the key, or the
/// flag and the key); `key` is where a config file says it, for its line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config key the problem is about, when it is about one.
    pub key: Option<&'static str>,
    /// What is wrong, without a location.
    pub text: String,
}

/// A setting that means something in some modes only: given in another, it is refused
/// rather than silently ignored, with the same words for the flag and the key.
#[derive(Debug)]
pub struct ModeOnly {
    /// The flag (`--idle-timeout`).
    pub flag: &'static str,
    /// The config key (`idle_timeout`).
    pub key: &'static str,
    /// The modes it applies to.
    pub modes: &'static [Mode],
    /// Why the others have no use for it.
    pub why: &'static str,
    is_set: fn(&PoolSpec) -> bool,
}

/// Every mode-only setting (DESIGN.md, "Processor modes"), as `link.rs`, `live.rs` and
/// `run.rs` use them.
pub const MODE_ONLY: &[ModeOnly] = &[
    ModeOnly {
        flag: "--idle-timeout",
        key: "idle_timeout",
        modes: &[Mode::Native],
        why: "it is moved by heartbeats, which only native processors send",
        is_set: |s| s.idle_timeout.is_some(),
    },
    ModeOnly {
        flag: "--start-timeout",
        key: "start_timeout",
        modes: &[Mode::Native, Mode::Lines],
        why: "an exec process is started for its job, under the job's own ttl",
        is_set: |s| s.start_timeout.is_some(),
    },
    ModeOnly {
        flag: "--max-jobs-per-worker",
        key: "max_jobs_per_worker",
        modes: &[Mode::Native, Mode::Lines],
        why: "an exec process serves one job only",
        is_set: |s| s.max_jobs_per_worker.is_some(),
    },
    ModeOnly {
        flag: "--cleanup-signal",
        key: "cleanup_signal",
        modes: &[Mode::Lines, Mode::Exec],
        why: "a native worker is asked to clean up with a Cleanup frame",
        is_set: |s| s.cleanup_signal.is_some(),
    },
    ModeOnly {
        flag: "--max-output",
        key: "max_output",
        modes: &[Mode::Lines, Mode::Exec],
        why: "a native result is bounded by the protocol's frame size",
        is_set: |s| s.max_output.is_some(),
    },
];

/// A mode's name, as `--mode` takes it.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Native => "native",
        Mode::Lines => "lines",
        Mode::Exec => "exec",
    }
}

impl ModeOnly {
    /// The error for this setting in a pool of `mode`.
    fn misused_in(&self, mode: Mode) -> String {
        let modes: Vec<&str> = self.modes.iter().map(|m| mode_name(*m)).collect();
        format!(
            "{} ({}) applies to --mode {} only; this pool runs --mode {} ({})",
            self.flag,
            self.key,
            modes.join(" or "),
            mode_name(mode),
            self.why
        )
    }
}

impl PoolSpec {
    /// Without its mode-only settings: for a pool whose mode is itself in error, where
    /// they can be judged neither right nor wrong.
    fn without_mode_only(mut self) -> PoolSpec {
        self.idle_timeout = None;
        self.start_timeout = None;
        self.max_jobs_per_worker = None;
        self.cleanup_signal = None;
        self.max_output = None;
        self
    }

    /// The keys this spec sets (to tell which of a run's settings came from its flags).
    fn keys_set(&self) -> Vec<String> {
        toml::Table::try_from(self)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A pool with every setting decided.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The pool's name.
    pub name: String,
    /// The processor and its arguments.
    pub command: Vec<OsString>,
    /// The mode.
    pub mode: Mode,
    /// The ttl.
    pub ttl: Duration,
    /// The cleanup window.
    pub cleanup: Duration,
    /// Workers at once.
    pub concurrency: usize,
    /// Variables set for the workers.
    pub env: Vec<EnvVar>,
    /// Variables passed through.
    pub pass_env: Vec<String>,
    /// The cleanup signal.
    pub cleanup_signal: Signal,
    /// The output cap.
    pub max_output: usize,
    /// Jobs per worker before replacement (before jitter).
    pub max_jobs_per_worker: Option<u64>,
    /// Extra attempts.
    pub retries: u32,
    /// Outcomes retried.
    pub retry_on: Vec<RetryOn>,
    /// First retry delay.
    pub retry_delay: Duration,
    /// Handshake time.
    pub start_timeout: Duration,
    /// Idle timeout (native mode).
    pub idle_timeout: Option<Duration>,
    /// Slow-job warning mark.
    pub slow: Option<Duration>,
    /// Resource limits for each worker.
    pub limits: crate::sandbox::Limits,
    /// Namespaces each worker gets.
    pub isolate: Vec<Isolate>,
    /// `--bind`, under `--isolate fs`.
    pub binds: Vec<crate::mounts::Bind>,
    /// Who the workers run as (`--user`), when not as jobsup's own user.
    pub user: Option<crate::sandbox::Identity>,
    /// What `user` was given as, for `jobsup check`.
    pub user_name: Option<String>,
    /// The workers' nice levels below jobsup (`None`: [`DEFAULT_NICE`]), and their class.
    pub priority: (Option<u8>, Sched),
    /// The `cwd` key, as written (`--cwd` takes precedence; `cli` resolves it).
    pub cwd: Option<PathBuf>,
    /// The `source` table (`jobsup serve`'s queue), as layered.
    pub source: Option<crate::queue_cli::SourceSpec>,
}

/// Resolves `USER[:GROUP]` for `--user`: `None` when it names jobsup's own user and group
/// (nothing to change), an error naming an unknown user or group, or saying that taking
/// another takes root.
fn resolve_user(given: &str) -> Result<Option<crate::sandbox::Identity>, String> {
    use nix::unistd::{Group, User};
    let (name, group) = match given.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (given, None),
    };
    let key = |detail: String| out_of_range("user", &detail);
    if name.is_empty() || group.is_some_and(str::is_empty) {
        return Err(key(format!("{given:?}: expected USER or USER:GROUP")));
    }
    let user = User::from_name(name)
        .map_err(|e| key(format!("cannot look up user {name:?}: {e}")))?
        .ok_or_else(|| key(format!("no such user: {name:?}")))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| key(format!("cannot look up group {g:?}: {e}")))?
                .ok_or_else(|| key(format!("no such group: {g:?}")))?
                .gid
        }
        None => user.gid,
    };
    if !nix::unistd::geteuid().is_root() {
        if user.uid == nix::unistd::geteuid() && gid == nix::unistd::getegid() {
            return Ok(None);
        }
        return Err(key(format!(
            "{given:?}: running workers as another user or group needs root (jobsup runs as uid {}, gid {})",
            nix::unistd::geteuid(),
            nix::unistd::getegid()
        )));
    }
    // Its own groups, unless a group was named: then that one alone.
    let groups = match group {
        Some(_) => vec![gid],
        None => {
            let c_name = std::ffi::CString::new(name)
                .map_err(|_| key(format!("{given:?}: a name cannot hold a NUL")))?;
            nix::unistd::getgrouplist(&c_name, gid)
                .map_err(|e| key(format!("cannot list the groups of {name:?}: {e}")))?
        }
    };
    Ok(Some(crate::sandbox::Identity {
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
        groups: groups.into_iter().map(|g| g.as_raw()).collect(),
    }))
}

impl Pool {
    /// Applies the built-in defaults to a layered spec; `command` from the command line
    /// (after `--`) wins over the file's. Every problem is said, one per line.
    pub fn resolve(name: &str, spec: PoolSpec, command: Vec<OsString>) -> Result<Pool, String> {
        Pool::resolve_all(name, spec, command).map_err(|problems| {
            problems
                .iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// [`Pool::resolve`], with every problem of the spec rather than the first.
    pub(crate) fn resolve_all(
        name: &str,
        spec: PoolSpec,
        command: Vec<OsString>,
    ) -> Result<Pool, Vec<Problem>> {
        let mut problems = Vec::new();
        let command = if !command.is_empty() {
            command
        } else {
            match &spec.command {
                Some(c) if !c.is_empty() => std::iter::once(c.into())
                    .chain(spec.args.iter().flatten().map(Into::into))
                    .collect(),
                _ => {
                    // Said as before, with the pool first: `pool "x" has no command`.
                    problems.push(Problem {
                        key: None,
                        text: format!(
                            "pool \"{name}\" has no command: give one after -- or as `command = ...` in the config file"
                        ),
                    });
                    Vec::new()
                }
            }
        };
        let mut problem = |key: Option<&'static str>, text: String| {
            problems.push(Problem {
                key,
                text: format!("pool \"{name}\": {text}"),
            })
        };
        let mode = spec.mode.unwrap_or(Mode::Native);
        for setting in MODE_ONLY.iter().filter(|s| (s.is_set)(&spec)) {
            if !setting.modes.contains(&mode) {
                problem(Some(setting.key), setting.misused_in(mode));
            }
        }
        // The same bounds as the flags: the file cannot ask for what the command line refuses.
        if spec.concurrency.is_some_and(|c| !(1..=4096).contains(&c)) {
            problem(
                Some("concurrency"),
                out_of_range("concurrency", "must be from 1 to 4096"),
            );
        }
        if spec.nice.is_some_and(|n| n > 19) {
            problem(Some("nice"), out_of_range("nice", "must be from 0 to 19"));
        }
        if spec.max_jobs_per_worker == Some(0) {
            problem(
                Some("max_jobs_per_worker"),
                out_of_range("max_jobs_per_worker", "must be at least 1"),
            );
        }
        if spec.max_procs == Some(0) {
            problem(
                Some("max_procs"),
                out_of_range("max_procs", "must be at least 1"),
            );
        }
        if spec.open_files == Some(0) {
            problem(
                Some("open_files"),
                out_of_range("open_files", "must be at least 1"),
            );
        }
        if let Some(n) = spec.open_files.filter(|&n| n > 0) {
            let most = most_open_files();
            if n > most {
                problem(
                    Some("open_files"),
                    out_of_range(
                        "open_files",
                        &format!("{n} is more than a worker may be given here ({most}: jobsup's hard limit, or fs.nr_open with CAP_SYS_RESOURCE)"),
                    ),
                );
            }
        }
        let user = match &spec.user {
            Some(given) => resolve_user(given).unwrap_or_else(|e| {
                problem(Some("user"), e);
                None
            }),
            None => None,
        };
        let mut binds = Vec::new();
        for bind in spec.bind.iter().flatten() {
            match bind.parse() {
                Ok(b) => binds.push(b),
                Err(e) => problem(Some("bind"), e),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Pool {
            cwd: spec.cwd.clone(),
            source: spec.source.clone(),
            binds,
            user,
            user_name: spec.user.clone(),
            priority: (spec.nice, spec.sched.unwrap_or(DEFAULT_SCHED)),
            name: name.to_string(),
            command,
            mode,
            ttl: spec.ttl.map_or(Duration::from_secs(30), |d| d.0),
            cleanup: spec.cleanup.map_or(Duration::from_secs(5), |d| d.0),
            concurrency: spec.concurrency.map(|c| c as usize).unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }),
            env: spec.env.unwrap_or_default(),
            pass_env: spec.pass_env.unwrap_or_default(),
            cleanup_signal: spec.cleanup_signal.map_or(Signal::SIGTERM, |s| s.0),
            max_output: spec
                .max_output
                .map_or(16 << 20, |s| usize::try_from(s.0).unwrap_or(usize::MAX)),
            max_jobs_per_worker: spec.max_jobs_per_worker,
            retries: spec.retries.unwrap_or(0),
            retry_on: spec
                .retry_on
                .unwrap_or_else(|| vec![RetryOn::Failed, RetryOn::Crashed]),
            retry_delay: spec.retry_delay.map_or(Duration::from_secs(1), |d| d.0),
            // A limit of 0 is no limit, as GNU timeout's 0 (the ttl's own 0 is the job
            // clock's business).
            start_timeout: match spec.start_timeout {
                None => Duration::from_secs(10),
                Some(Dur(Duration::ZERO)) => crate::units::MAX_DURATION,
                Some(Dur(d)) => d,
            },
            idle_timeout: spec.idle_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
            slow: spec.slow.map(|d| d.0).filter(|d| !d.is_zero()),
            limits: crate::sandbox::Limits {
                memory: spec.memory.map(|s| s.0),
                // RLIMIT_CPU counts whole seconds; round up so that a limit is never 0.
                cpu_secs: spec
                    .cpu_time
                    .filter(|d| !d.0.is_zero())
                    .map(|d| d.0.as_secs_f64().ceil().max(1.0) as u64),
                open_files: spec.open_files,
                max_procs: spec.max_procs,
            },
            isolate: {
                let mut v = spec.isolate.unwrap_or_default();
                v.sort();
                v.dedup();
                v
            },
        })
    }

    /// A human-readable listing of the resolved settings, for `jobsup check`.
    pub fn describe(&self) -> String {
        let command: Vec<String> = self
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let env: Vec<String> = self
            .env
            .iter()
            .map(|EnvVar(k, _)| format!("{k}=<set>"))
            .collect();
        let retry_on: Vec<&str> = self
            .retry_on
            .iter()
            .map(|r| match r {
                RetryOn::Failed => "failed",
                RetryOn::Crashed => "crashed",
                RetryOn::Timeout => "timeout",
                RetryOn::Killed => "killed",
            })
            .collect();
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let o = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                humantime::format_duration(d).to_string()
            })
        };
        format!(
            "pool {}\n  command: {:?}\n  mode: {:?}\n  ttl: {}, cleanup: {}, cleanup signal: {}\n  concurrency: {}\n  env: {}\n  pass env: {}\n  max output: {} bytes\n  max jobs per worker: {}\n  retries: {} on {} (first delay {})\n  start timeout: {}, idle timeout: {}, slow: {}\n  limits: memory {}, cpu time {}, open files {}, processes {}\n  isolate: {:?}\n  user: {}\n  priority: nice +{}, {:?}\n",
            self.name,
            command,
            self.mode,
            d(self.ttl),
            d(self.cleanup),
            self.cleanup_signal,
            self.concurrency,
            if env.is_empty() { "-".into() } else { env.join(" ") },
            if self.pass_env.is_empty() { "-".into() } else { self.pass_env.join(" ") },
            self.max_output,
            self.max_jobs_per_worker.map_or("-".into(), |n| n.to_string()),
            self.retries,
            retry_on.join(","),
            d(self.retry_delay),
            d(self.start_timeout),
            o(self.idle_timeout),
            o(self.slow),
            self.limits.memory.map_or("-".into(), |m| format!("{m} bytes")),
            self.limits.cpu_secs.map_or("-".into(), |s| format!("{s}s")),
            self.limits.open_files.map_or("-".into(), |n| n.to_string()),
            self.limits.max_procs.map_or("-".into(), |n| n.to_string()),
            self.isolate,
            self.user_name.as_deref().unwrap_or("-"),
            self.priority
                .0
                .unwrap_or(DEFAULT_NICE),
            self.priority.1,
        ) + &self.describe_place()
    }

    /// The working directory and the queue, for `jobsup check`.
    fn describe_place(&self) -> String {
        let mut out = format!(
            "  cwd: {}\n",
            self.cwd
                .as_ref()
                .map_or("where jobsup is started".into(), |c| c
                    .display()
                    .to_string())
        );
        if let Some(source) = &self.source {
            out.push_str(&format!("  source: {}\n", source.describe()));
        }
        out
    }
}

/// A config file: `[defaults]` and named `[pools.NAME]` tables.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// Settings every pool starts from.
    pub defaults: PoolSpec,
    /// The pools.
    pub pools: BTreeMap<String, PoolSpec>,
}

/// A config file's shape, each key's value kept with its place in the text, so that every
/// key can be judged on its own and every bad one reported.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawTable,
    #[serde(default)]
    pools: BTreeMap<String, RawTable>,
}

type RawTable = BTreeMap<String, toml::Spanned<toml::Value>>;

/// A config file as read: its specs, without the keys in error, and every problem found,
/// located (`FILE:LINE:COLUMN: ...`), with the line for sorting.
struct Parsed {
    file: ConfigFile,
    problems: Vec<(usize, String)>,
    /// The tables (`defaults`, or a pool's name) whose `mode` is in error.
    bad_mode: Vec<String>,
}

impl Parsed {
    /// The pool's layered spec (over `[defaults]`); mode-only settings are left out when
    /// its mode could not be read.
    fn layered(&self, name: &str, pool: &PoolSpec) -> PoolSpec {
        let spec = pool.clone().over(&self.file.defaults);
        if self.bad_mode.iter().any(|t| t == name || t == "defaults") {
            spec.without_mode_only()
        } else {
            spec
        }
    }
}

/// Reads and parses a config file; errors name the file, line, column and key, all of
/// them at once, one per line.
pub fn load(path: &Path) -> Result<ConfigFile, String> {
    let parsed = parse(path)?;
    if parsed.problems.is_empty() {
        Ok(parsed.file)
    } else {
        Err(join(parsed.problems))
    }
}

/// Problems, in the file's order, one per line.
fn join(mut problems: Vec<(usize, String)>) -> String {
    problems.sort_by_key(|(line, _)| *line);
    problems
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads a config file; a file that cannot be read or is not TOML of the right shape is an
/// error at once, while bad keys and values are collected.
fn parse(path: &Path) -> Result<Parsed, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| locate(path, &text, &e))?;
    if raw.pools.is_empty() {
        return Err(format!(
            "{}: no pools: add a [pools.NAME] table with at least a command",
            path.display()
        ));
    }
    let mut parsed = Parsed {
        file: ConfigFile::default(),
        problems: Vec::new(),
        bad_mode: Vec::new(),
    };
    let mut table = |name: &str, what: &str, raw: RawTable| {
        let (spec, problems) = spec_of(raw);
        for (key, span, message) in problems {
            if key == "mode" {
                parsed.bad_mode.push(name.to_string());
            }
            let (line, column) = key_or_value_at(&text, span, &key, &message);
            parsed.problems.push((
                line,
                format!(
                    "{}:{line}:{column}: {what}: key `{key}`: {message}",
                    path.display()
                ),
            ));
        }
        spec
    };
    let defaults = table("defaults", "[defaults]", raw.defaults);
    let mut pools = BTreeMap::new();
    for (name, raw) in raw.pools {
        let spec = table(&name, &format!("pool \"{name}\""), raw);
        pools.insert(name, spec);
    }
    parsed.file = ConfigFile { defaults, pools };
    Ok(parsed)
}

/// A table's spec, each key read on its own: the keys that could not be read are left out
/// and returned with their value's place in the text and what is wrong.
fn spec_of(raw: RawTable) -> (PoolSpec, Vec<(String, std::ops::Range<usize>, String)>) {
    let mut spec = PoolSpec::default();
    let mut problems = Vec::new();
    for (key, value) in raw {
        let span = value.span();
        let one = toml::Table::from_iter([(key.clone(), value.into_inner())]);
        match toml::Value::Table(one).try_into::<PoolSpec>() {
            Ok(read) => spec = read.over(&spec),
            Err(e) => problems.push((key, span, e.message().trim().to_string())),
        }
    }
    (spec, problems)
}

/// Where to point for a bad key: at the key itself when it is unknown, else at its value.
fn key_or_value_at(
    text: &str,
    value: std::ops::Range<usize>,
    key: &str,
    message: &str,
) -> (usize, usize) {
    let (line, column) = line_column(text, value.start);
    if !message.starts_with("unknown field") {
        return (line, column);
    }
    let line_start = value.start.min(text.len()) - (column - 1);
    let before_value = &text[line_start..value.start.min(text.len())];
    (line, before_value.find(key).map_or(column, |i| i + 1))
}

/// The 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// A TOML error as `FILE:LINE:COLUMN: key KEY: message`.
fn locate(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    let Some(span) = e.span() else {
        return format!("{}: {message}", path.display());
    };
    let (line, column) = line_column(text, span.start);
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    // The key is what stands before `=` on the line the error points at; an unknown key is
    // named in the message already.
    let key = line_text
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match key {
        Some(key) if !message.contains(&format!("`{key}`")) => {
            format!("{}:{line}:{column}: key `{key}`: {message}", path.display())
        }
        _ => format!("{}:{line}:{column}: {message}", path.display()),
    }
}

/// Which pool of the file a run uses: the named one, or the only one.
pub fn select_pool<'a>(
    path: &Path,
    file: &'a ConfigFile,
    name: Option<&str>,
) -> Result<(&'a str, &'a PoolSpec), String> {
    let names = || file.pools.keys().cloned().collect::<Vec<_>>().join(", ");
    match name {
        Some(name) => file
            .pools
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| {
                format!(
                    "{}: no pool named \"{name}\" (pools: {})",
                    path.display(),
                    names()
                )
            }),
        None if file.pools.len() == 1 => {
            let (k, v) = file.pools.iter().next().expect("one pool");
            Ok((k.as_str(), v))
        }
        None => Err(format!(
            "{} has several pools ({}): choose one with --pool NAME",
            path.display(),
            names()
        )),
    }
}

/// The pool a run uses: flags over the file's pool over its defaults over built-ins. Every
/// problem is said at once: the file's bad keys, and whatever is wrong with the pool.
pub fn resolve_run(
    flags: PoolSpec,
    config: Option<(&Path, Option<&str>)>,
    command: Vec<OsString>,
) -> Result<Pool, String> {
    let Some((path, name)) = config else {
        return Pool::resolve("default", flags, command);
    };
    let parsed = parse(path)?;
    let (name, pool) = select_pool(path, &parsed.file, name)?;
    // A setting the flags gave is not the file's: no line of it is pointed at.
    let from_flags = flags.keys_set();
    let spec = flags.over(&parsed.layered(name, pool));
    let mut problems = parsed.problems.clone();
    match Pool::resolve_all(name, spec, command) {
        Ok(pool) if problems.is_empty() => return Ok(pool),
        Ok(_) => {}
        Err(found) => problems.extend(found.into_iter().map(|p| {
            let in_file = p.key.filter(|k| !from_flags.iter().any(|f| f == k));
            located(path, name, in_file, &p.text)
        })),
    }
    Err(join(problems))
}

/// `jobsup check`: every pool of the file, resolved, or every problem of the file at once
/// (commands that cannot be found or run here included).
pub fn check(path: &Path) -> Result<String, String> {
    let parsed = parse(path)?;
    let mut problems = parsed.problems.clone();
    let mut out = String::new();
    for (name, pool) in &parsed.file.pools {
        let spec = parsed.layered(name, pool);
        // Looked up as `run` looks it up, whatever else is wrong with the pool.
        if let Some(program) = spec.command.as_deref().filter(|c| !c.is_empty()) {
            if let Err(e) = crate::sandbox::resolve_program(Path::new(program)) {
                let text = format!("pool \"{name}\": key `command`: {e} (on this machine)");
                problems.push(located(path, name, Some("command"), &text));
            }
        }
        match Pool::resolve_all(name, spec, Vec::new()) {
            Ok(resolved) => out.push_str(&resolved.describe()),
            Err(found) => {
                problems.extend(found.iter().map(|p| located(path, name, p.key, &p.text)))
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(join(problems))
    }
}

/// A pool's problem as `FILE:LINE:COLUMN: text`, at `key` in the pool's table or in
/// `[defaults]`, else at the pool's header; with its line, for sorting.
fn located(path: &Path, pool: &str, key: Option<&str>, text: &str) -> (usize, String) {
    let (line, at) = key_line(path, pool, key);
    (line, format!("{}{at}: {text}", path.display()))
}

/// The line and `:LINE:COLUMN` of `key`, looked up in the pool's table and then in
/// `[defaults]`; else `:LINE` of the pool's header; else nothing (line 0).
fn key_line(path: &Path, pool: &str, key: Option<&str>) -> (usize, String) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (0, String::new());
    };
    let lines: Vec<&str> = text.lines().collect();
    let header = |name: &str| {
        lines.iter().position(|l| {
            let l = l.trim();
            l == format!("[{name}]") || l == format!("[pools.\"{pool}\"]") && name != "defaults"
        })
    };
    let pool_header = header(&format!("pools.{pool}"));
    if let Some(key) = key {
        for start in [pool_header, header("defaults")].into_iter().flatten() {
            let table = lines[start + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with('['));
            for (i, l) in table.enumerate() {
                let t = l.trim_start();
                if t.strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
                {
                    let column = l.len() - t.len() + 1;
                    return (start + i + 2, format!(":{}:{column}", start + i + 2));
                }
            }
        }
    }
    pool_header.map_or((0, String::new()), |i| (i + 1, format!(":{}", i + 1)))
}

/// Where config files are read from in a run (for messages).
pub type ConfigPath = PathBuf;

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobsup.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn layers_flags_over_pool_over_defaults() {
        let (_d, path) = write(
            "[defaults]\nttl = \"1m\"\ncleanup = 2\n\n[pools.a]\ncommand = \"cat\"\nmode = \"lines\"\ncleanup = \"3s\"\nenv = { K = \"v\" }\n",
        );
        let flags = PoolSpec {
            ttl: Some(Dur(Duration::from_secs(5))),
            ..PoolSpec::default()
        };
        let pool = resolve_run(flags, Some((&path, None)), Vec::new()).unwrap();
        assert_eq!(pool.name, "a");
        assert_eq!(pool.ttl, Duration::from_secs(5));
        assert_eq!(pool.cleanup, Duration::from_secs(3));
        assert_eq!(pool.mode, Mode::Lines);
        assert_eq!(pool.env, vec![EnvVar("K".into(), "v".into())]);
        assert_eq!(pool.command, vec![OsString::from("cat")]);
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        let (_d, path) = write("[pools.a]\ncommand = \"cat\"\nttl = \"banana\"\n");
        let e = check(&path).unwrap_err();
        assert!(e.contains("jobsup.toml:3:"), "{e}");
        assert!(e.contains("key `ttl`") && e.contains("banana"), "{e}");

        let (_d, path) = write("[pools.a]\ncommand = \"cat\"\ntll = \"2s\"\n");
        let e = check(&path).unwrap_err();
        assert!(e.contains(":3:") && e.contains("tll"), "{e}");

        let (_d, path) = write("[pools.a]\nmode = \"lines\"\n");
        let e = check(&path).unwrap_err();
        assert!(
            e.contains("jobsup.toml:1") && e.contains("no command"),
            "{e}"
        );

        let (_d, path) = write("[pools.a]\ncommand = \"cat\"\nmax_output = \"12 parsecs\"\n");
        let e = check(&path).unwrap_err();
        assert!(e.contains(":3:") && e.contains("max_output"), "{e}");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_in_the_files_order() {
        let (_d, path) = write(
            "[defaults]\nretires = 1\n[pools.a]\ncommand = \"cat\"\nttl = \"x\"\nmode = \"exec\"\nidle_timeout = \"1s\"\n[pools.b]\nmode = \"lines\"\nopen_files = 0\n",
        );
        let e = check(&path).unwrap_err();
        let lines: Vec<&str> = e.lines().collect();
        let wanted = [
            ":2:1: [defaults]: key `retires`",
            ":5:7: pool \"a\": key `ttl`",
            ":7:1: pool \"a\": --idle-timeout (idle_timeout) applies to --mode native only; this pool runs --mode exec",
            ":8: pool \"b\" has no command",
            ":10:1: pool \"b\": key `open_files`",
        ];
        assert_eq!(lines.len(), wanted.len(), "{e}");
        for (line, want) in lines.iter().zip(wanted) {
            assert!(line.contains(want), "{want:?} in {line:?}\n{e}");
        }
    }

    #[test]
    fn a_nice_value_the_flag_refuses_is_refused_in_a_file_too() {
        let (_d, path) = write("[pools.a]\ncommand = \"cat\"\nnice = 99\n");
        let e = check(&path).unwrap_err();
        assert!(e.contains(":3:1: pool \"a\": key `nice`"), "{e}");
        assert!(e.contains("0 to 19"), "{e}");
        let (_d, path) = write("[pools.a]\ncommand = \"cat\"\nnice = 19\n");
        check(&path).unwrap();
    }

    #[test]
    fn a_pool_whose_mode_is_unreadable_gets_no_mode_only_errors() {
        let (_d, path) =
            write("[pools.a]\ncommand = \"cat\"\nmode = \"lnes\"\ncleanup_signal = \"INT\"\n");
        let e = check(&path).unwrap_err();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains("key `mode`"), "{e}");
    }

    #[test]
    fn mode_only_settings_from_defaults_or_flags_are_judged_in_the_pools_mode() {
        let (_d, path) = write(
            "[defaults]\nmax_output = \"1KiB\"\n[pools.a]\ncommand = \"cat\"\nmode = \"lines\"\n[pools.n]\ncommand = \"cat\"\n",
        );
        let p = resolve_run(PoolSpec::default(), Some((&path, Some("a"))), Vec::new()).unwrap();
        assert_eq!(p.max_output, 1024);
        let e = resolve_run(PoolSpec::default(), Some((&path, Some("n"))), Vec::new()).unwrap_err();
        assert!(
            e.contains(":2:1: pool \"n\": --max-output (max_output)"),
            "{e}"
        );
        // From a flag, the file's line is not pointed at.
        let flags = PoolSpec {
            idle_timeout: Some(Dur(Duration::from_secs(1))),
            ..PoolSpec::default()
        };
        let e = resolve_run(flags, Some((&path, Some("a"))), Vec::new()).unwrap_err();
        assert!(
            e.contains(":3: pool \"a\": --idle-timeout (idle_timeout)"),
            "{e}"
        );
    }

    #[test]
    fn variables_add_up_across_layers() {
        let (_d, path) = write(
            "[defaults]\nenv = { A = \"1\", B = \"1\" }\npass_env = [\"P\"]\n[pools.a]\ncommand = \"x\"\nenv = { B = \"2\" }\n",
        );
        let flags = PoolSpec {
            env: Some(vec![EnvVar("C".into(), "3".into())]),
            pass_env: Some(vec!["Q".into()]),
            ..PoolSpec::default()
        };
        let p = resolve_run(flags, Some((&path, None)), Vec::new()).unwrap();
        let env: Vec<(String, String)> = p.env.into_iter().map(|EnvVar(k, v)| (k, v)).collect();
        assert_eq!(
            env,
            [("A", "1"), ("B", "2"), ("C", "3")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(p.pass_env, ["P", "Q"]);
    }

    #[test]
    fn pool_choice() {
        let (_d, path) = write("[pools.a]\ncommand = \"x\"\n[pools.b]\ncommand = \"y\"\n");
        let e = resolve_run(PoolSpec::default(), Some((&path, None)), Vec::new()).unwrap_err();
        assert!(e.contains("--pool") && e.contains("a, b"), "{e}");
        let p = resolve_run(PoolSpec::default(), Some((&path, Some("b"))), Vec::new()).unwrap();
        assert_eq!(p.command, vec![OsString::from("y")]);
        let e = resolve_run(PoolSpec::default(), Some((&path, Some("c"))), Vec::new()).unwrap_err();
        assert!(e.contains("no pool named \"c\""), "{e}");
    }

    #[test]
    fn user_names_resolve_at_start_or_say_what_is_wrong() {
        for bad in ["", ":", "nobody:", ":root"] {
            let e = resolve_user(bad).unwrap_err();
            assert!(e.contains("expected USER or USER:GROUP"), "{bad:?}: {e}");
        }
        let e = resolve_user("no-such-user-13f").unwrap_err();
        assert!(e.contains("no such user: \"no-such-user-13f\""), "{e}");
        let e = resolve_user("nobody:no-such-group-13f").unwrap_err();
        assert!(e.contains("no such group: \"no-such-group-13f\""), "{e}");
        let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .expect("this process's user has a name");
        if nix::unistd::geteuid().is_root() {
            let id = resolve_user("nobody").unwrap().expect("a change of user");
            assert_eq!((id.uid, id.gid), (65534, 65534));
            assert!(id.groups.contains(&id.gid), "{id:?}");
            let id = resolve_user("nobody:root")
                .unwrap()
                .expect("a change of user");
            assert_eq!((id.uid, id.gid, id.groups), (65534, 0, vec![0]));
            // Root as root: still a change (the groups are set).
            assert!(resolve_user(&me.name).unwrap().is_some());
        } else {
            assert_eq!(resolve_user(&me.name), Ok(None));
            let e = resolve_user("root").unwrap_err();
            assert!(e.contains("needs root"), "{e}");
        }
    }
}
