//! Cgroups for workers, where the machine offers them: the kill that nothing escapes, and
//! the limits that count a worker's whole tree.
//!
//! - **Kill**: where cgroup v2 is mounted and writable, each worker runs in a cgroup of its
//!   own and the hard kill writes `cgroup.kill`, which the kernel applies to every process
//!   in it, whatever session, group or environment it has. Without v2, a writable v1 pids
//!   hierarchy does the same in two steps: `pids.max` 0 (no more forks), then SIGKILL to
//!   every listed process.
//! - **Limits**: `--memory` and `--max-procs` go through the `memory` and `pids`
//!   controllers: those of cgroup v2 where they are enabled for jobsup's cgroup, otherwise
//!   those of a writable cgroup v1 hierarchy (the "hybrid" layout many machines still have).
//!   Without a memory controller `--memory` falls back to `RLIMIT_AS`; without a pids
//!   controller `--max-procs` is refused at start.
//!
//! jobsup makes `jobsup-<pid>` under its own cgroup in each hierarchy it uses, and one
//! `w<worker>` under that per worker. A worker is created in its cgroup v2 directory where
//! the kernel can do that (`clone3` with `CLONE_INTO_CGROUP`, see `launch`), and joins the
//! others (and, on older kernels, that one too) between clone and exec.
//! [`Cgroups::detect`] says what was found and why not the rest.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The limits a run asks cgroups for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    /// `--memory`, in bytes.
    pub memory: Option<u64>,
    /// `--max-procs`: processes and threads in a worker's tree.
    pub max_procs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// One directory jobsup made in one hierarchy: `…/jobsup-<pid>`.
#[derive(Debug)]
struct Base {
    dir: PathBuf,
    version: Version,
}

/// jobsup's own part of the cgroup hierarchies, and the limits it sets on every worker.
#[derive(Debug)]
pub struct Cgroups {
    /// Where the kill goes: cgroup v2 (`cgroup.kill`), else a v1 pids hierarchy.
    kill: Option<Base>,
    /// Where the memory limit is set, and its value.
    memory: Option<(Base, u64)>,
    /// Where the process limit is set, and its value.
    pids: Option<(Base, u64)>,
    /// Every directory made (the above may share one), for [`Cgroups::remove_all`] and the
    /// guard.
    bases: Vec<PathBuf>,
    /// The open files of each worker's cgroup v2 kill directory, by worker id, kept while
    /// no kill has reached it: an exec slot's next process goes into the same directory,
    /// and its spawn then makes no directory and opens no file (each an allocation the
    /// kernel charges, on every job). Until [`Cgroups::forget`].
    kept: std::sync::Mutex<std::collections::HashMap<u64, (PathBuf, Arc<DirFiles>)>>,
}

/// A cgroup v2 directory's files that jobsup reads or names at every process of a slot.
#[derive(Debug)]
pub struct DirFiles {
    /// The directory itself (`O_PATH`), where `clone3` can create the process.
    dir: Option<OwnedFd>,
    /// `cgroup.procs`, read again from offset 0 for its members anew.
    procs: Option<fs::File>,
    /// `cgroup.events`, read again from offset 0 for whether anything is left in it.
    events: Option<fs::File>,
}

impl DirFiles {
    fn open(dir: &Path) -> DirFiles {
        use std::os::unix::fs::OpenOptionsExt;
        DirFiles {
            dir: fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(dir)
                .ok()
                .map(OwnedFd::from),
            procs: fs::File::open(dir.join("cgroup.procs")).ok(),
            events: fs::File::open(dir.join("cgroup.events")).ok(),
        }
    }
}

/// What [`Cgroups::detect`] found, in words, for the one start-up log line.
#[derive(Debug, Default)]
pub struct Detected {
    /// How the hard kill reaches a worker's tree, or why no cgroup helps.
    pub kill: String,
    /// How `--memory` is enforced, when asked for.
    pub memory: Option<String>,
    /// Why `--max-procs` cannot be enforced, when asked for and impossible.
    pub max_procs_refused: Option<String>,
    /// How `--max-procs` is enforced, when asked for.
    pub max_procs: Option<String>,
}

/// One worker's cgroups.
#[derive(Debug)]
pub struct WorkerCgroup {
    /// Every directory it joins, with its hierarchy's version.
    dirs: Vec<(PathBuf, Version)>,
    /// `cgroup.procs` of each, ready for the child to join by writing "0".
    procs: Vec<CString>,
    /// Index in `dirs` of the one the kill goes through.
    kill: Option<usize>,
    /// Index in `dirs` of the one with the memory limit, and the limit.
    memory: Option<(usize, u64)>,
    /// Index in `dirs` of the one with the process limit, and the limit.
    pids: Option<(usize, u64)>,
    /// [`WorkerCgroup::counts`] when this process joined (a reused directory keeps its
    /// counts).
    baseline: (u64, u64),
    /// Its cgroup v2 directory was made for it (not left by an earlier process of the
    /// same exec slot): nothing ever killed it.
    fresh_v2: bool,
    /// The open files of its kill directory, where that is cgroup v2 ([`DirFiles`]): its
    /// `cgroup.procs` is read after every job of a kept worker, its `cgroup.events` after
    /// every exit.
    kill_files: Option<Arc<DirFiles>>,
}

/// Which cgroup limits the kernel enforced on a worker (each with its value).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    /// The OOM killer acted under the memory limit (bytes).
    pub memory: Option<u64>,
    /// A fork failed at the process limit.
    pub max_procs: Option<u64>,
}

/// A mounted hierarchy, from `/proc/self/mountinfo`.
struct Mount {
    point: PathBuf,
    /// The mount's root inside the hierarchy (not `/` inside containers).
    root: String,
    fstype: String,
    options: String,
}

fn mounts() -> Result<Vec<Mount>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    // Fields: id parent major:minor root mount-point options ... - fstype source super-options
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split_whitespace().collect();
            let mut right = right.split_whitespace();
            Some(Mount {
                root: left.get(3)?.to_string(),
                point: PathBuf::from(left.get(4)?),
                fstype: right.next()?.to_string(),
                options: right.nth(1).unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// This process's path in the hierarchy whose `/proc/self/cgroup` controller list is
/// `controllers` ("" for cgroup v2).
fn own_path(own: &str, v1_controller: Option<&str>) -> Option<String> {
    own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match v1_controller {
            None => list.is_empty(),
            Some(c) => list.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_string())
    })
}

/// `point` + (`path` relative to the mount's `root`).
fn dir_in(m: &Mount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(m.root.as_str()).unwrap_or(path);
    m.point.join(rel.trim_start_matches('/'))
}

fn make_base(parent: &Path) -> Result<PathBuf, String> {
    let base = parent.join(format!("jobsup-{}", std::process::id()));
    fs::create_dir(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    Ok(base)
}

/// Makes jobsup's directory in the cgroup v2 hierarchy, if it can kill through it.
fn v2_base(mounts: &[Mount], own: &str) -> Result<PathBuf, String> {
    let m = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or("no cgroup v2 hierarchy is mounted")?;
    let path = own_path(own, None).ok_or("this process has no cgroup v2 path")?;
    let base = make_base(&dir_in(m, &path))?;
    if !base.join("cgroup.kill").exists() {
        let _ = fs::remove_dir(&base);
        return Err("the kernel has no cgroup.kill (Linux 5.14 or later needed)".into());
    }
    Ok(base)
}

/// Makes jobsup's directory in the cgroup v1 hierarchy of `controller`.
fn v1_base(mounts: &[Mount], own: &str, controller: &str) -> Result<PathBuf, String> {
    let m = mounts
        .iter()
        .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))
        .ok_or(format!("no {controller} controller in cgroup v2 or v1"))?;
    let path = own_path(own, Some(controller))
        .ok_or(format!("this process has no {controller} cgroup v1 path"))?;
    make_base(&dir_in(m, &path))
}

impl Base {
    fn describe(&self, controller: &str) -> String {
        format!(
            "the {controller} controller (cgroup {:?}) in {}",
            self.version,
            self.dir.display()
        )
    }
}

impl Cgroups {
    /// Finds what the machine offers and makes jobsup's directories. Never fails: what is
    /// missing is said in [`Detected`] and left to the other mechanisms.
    pub fn detect(wanted: Wanted) -> (Option<Cgroups>, Detected) {
        let mut found = Detected::default();
        let mut cg = Cgroups {
            kill: None,
            memory: None,
            pids: None,
            bases: Vec::new(),
            kept: Default::default(),
        };
        let (mounts, own) = match (
            mounts(),
            fs::read_to_string("/proc/self/cgroup")
                .map_err(|e| format!("cannot read /proc/self/cgroup: {e}")),
        ) {
            (Ok(m), Ok(o)) => (m, o),
            (Err(e), _) | (_, Err(e)) => {
                found.kill = format!("no cgroups ({e})");
                found.memory = wanted
                    .memory
                    .map(|_| format!("RLIMIT_AS (no cgroups: {e})"));
                found.max_procs_refused = wanted.max_procs.map(|_| e.clone());
                return (None, found);
            }
        };

        // cgroup v2: the kill, and the controllers where they are enabled for us.
        let v2 = match v2_base(&mounts, &own) {
            Ok(base) => {
                found.kill = format!("cgroup.kill in {}", base.display());
                cg.bases.push(base.clone());
                Some(base)
            }
            Err(why) => {
                found.kill = format!(
                    "the process group, a /proc tree walk and the JOBSUP_* tag (no cgroup v2: {why})"
                );
                None
            }
        };
        let v2_offers = |controller: &str| -> bool {
            let Some(base) = &v2 else { return false };
            let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
            available.split_whitespace().any(|c| c == controller)
                && fs::write(
                    base.join("cgroup.subtree_control"),
                    format!("+{controller}"),
                )
                .is_ok()
        };
        let mut v1_dirs: Vec<PathBuf> = Vec::new();
        let mut controller = |name: &str| -> Result<Base, String> {
            if v2_offers(name) {
                let dir = v2.clone().expect("offered by v2");
                return Ok(Base {
                    dir,
                    version: Version::V2,
                });
            }
            let dir = v1_base(&mounts, &own, name)?;
            v1_dirs.push(dir.clone());
            Ok(Base {
                dir,
                version: Version::V1,
            })
        };
        if let Some(bytes) = wanted.memory {
            match controller("memory") {
                Ok(base) => {
                    found.memory = Some(base.describe("memory"));
                    cg.memory = Some((base, bytes));
                }
                Err(why) => found.memory = Some(format!("RLIMIT_AS ({why})")),
            }
        }
        if let Some(n) = wanted.max_procs {
            match controller("pids") {
                Ok(base) => {
                    found.max_procs = Some(base.describe("pids"));
                    cg.pids = Some((base, n));
                }
                Err(why) => found.max_procs_refused = Some(why),
            }
        }
        // Without cgroup v2, a cgroup v1 pids hierarchy still gives a kill that nothing
        // escapes: forks are stopped (`pids.max` 0), then every listed process is killed.
        let v1_kill = match (&v2, &cg.pids) {
            (Some(_), _) => None,
            (None, Some((base, _))) => Some(base.dir.clone()),
            (None, None) => controller("pids").ok().map(|b| b.dir),
        };
        cg.bases.extend(v1_dirs);
        cg.kill = match (v2, v1_kill) {
            (Some(dir), _) => Some(Base {
                dir,
                version: Version::V2,
            }),
            (None, Some(dir)) => {
                found.kill = format!(
                    "a cgroup v1 pids controller (forks stopped, then SIGKILL to each process) in {}",
                    dir.display()
                );
                Some(Base {
                    dir,
                    version: Version::V1,
                })
            }
            (None, None) => None,
        };
        if cg.bases.is_empty() {
            return (None, found);
        }
        (Some(cg), found)
    }

    /// Whether `--memory` is enforced here rather than through `RLIMIT_AS`.
    pub fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Whether workers' cgroups carry limits (and so are not optional).
    pub fn has_limits(&self) -> bool {
        self.memory.is_some() || self.pids.is_some()
    }

    /// Whether the hard kill goes through a cgroup (`cgroup.kill`, or a v1 pids cgroup).
    pub fn can_kill(&self) -> bool {
        self.kill.is_some()
    }

    /// Whether the hard kill goes through cgroup v2's `cgroup.kill`, which reaches every
    /// process of a worker's cgroup at once.
    pub fn kills_atomically(&self) -> bool {
        self.kill.as_ref().is_some_and(|b| b.version == Version::V2)
    }

    /// Every directory jobsup made (`jobsup-<pid>` in each hierarchy).
    pub fn bases(&self) -> &[PathBuf] {
        &self.bases
    }

    /// The CPU time (user and system) used so far by every process that ran in the
    /// workers' cgroups, counted by the kernel in jobsup's cgroup v2 directory
    /// (`cpu.stat`'s `usage_usec`), which keeps the time of the worker directories it
    /// removed: running, reaped, or killed with their pid namespace's init (which the
    /// kernel then releases without adding their time to anyone's). `None` without a
    /// cgroup v2 directory, or where it cannot be read.
    pub fn cpu_used(&self) -> Option<std::time::Duration> {
        let base = self.kill.as_ref().filter(|b| b.version == Version::V2)?;
        let stat = fs::read_to_string(base.dir.join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .map(std::time::Duration::from_micros)
    }

    /// Makes worker `id`'s cgroups, with the run's limits set.
    pub fn worker(&self, id: u64) -> io::Result<WorkerCgroup> {
        let mut w = WorkerCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
            kill: None,
            memory: None,
            pids: None,
            baseline: (0, 0),
            fresh_v2: false,
            kill_files: None,
        };
        if let Some(base) = &self.kill {
            let i = match base.version {
                Version::V2 => self.join_kept(&mut w, base, id)?,
                Version::V1 => w.join_dir(base, id)?,
            };
            w.kill = Some(i);
        }
        if let Some((base, bytes)) = &self.memory {
            let i = w.join_dir(base, id)?;
            let dir = &w.dirs[i].0;
            match base.version {
                Version::V2 => {
                    fs::write(dir.join("memory.max"), bytes.to_string())?;
                    // Swap would only make a hog slow instead of stopped.
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                Version::V1 => {
                    fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())?;
                    let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
                }
            }
            w.memory = Some((i, *bytes));
        }
        if let Some((base, n)) = &self.pids {
            let i = w.join_dir(base, id)?;
            fs::write(w.dirs[i].0.join("pids.max"), n.to_string())?;
            w.pids = Some((i, *n));
        }
        w.baseline = w.counts();
        Ok(w)
    }

    /// Joins worker `id`'s cgroup v2 kill directory: the one its slot's previous process
    /// left, with its files still open, where no kill has reached it; else as
    /// [`WorkerCgroup::join_dir`] finds or makes it, with its files opened now (so that
    /// every worker holds them from the start).
    fn join_kept(&self, w: &mut WorkerCgroup, base: &Base, id: u64) -> io::Result<usize> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let first = base.dir.join(format!("w{id}"));
        if let Some((dir, files)) = kept
            .get(&id)
            .filter(|(dir, _)| *dir == first && !was_killed(dir))
        {
            // One process of a slot runs at a time, and the last one has ended.
            w.fresh_v2 = true;
            w.kill_files = Some(Arc::clone(files));
            w.add_dir(dir.clone(), Version::V2)?;
            return Ok(w.dirs.len() - 1);
        }
        let i = w.join_dir(base, id)?;
        let files = Arc::new(DirFiles::open(&w.dirs[i].0));
        kept.insert(id, (w.dirs[i].0.clone(), Arc::clone(&files)));
        w.kill_files = Some(files);
        Ok(i)
    }

    /// Worker `id` starts no more processes: the files kept open on its cgroup v2 kill
    /// directory ([`DirFiles`]) close.
    pub fn forget(&self, id: u64) {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Asks `runs` (does a child that `clone3` creates in the cgroup whose `O_PATH` fd it is
    /// given run at all?) about a scratch cgroup v2 directory of jobsup's, first fresh,
    /// then once killed: some kernels kill such a child at once when the cgroup's count of
    /// `cgroup.kill` writes differs from the parent's. Returns the two answers; both false
    /// without a cgroup v2 directory of jobsup's, or when the scratch cannot be made.
    pub fn probe_clone_into(&self, mut runs: impl FnMut(BorrowedFd<'_>) -> bool) -> (bool, bool) {
        let Some(base) = self.kill.as_ref().filter(|b| b.version == Version::V2) else {
            return (false, false);
        };
        let dir = base.dir.join("clone3-probe");
        if fs::create_dir(&dir).is_err() {
            return (false, false);
        }
        let answers = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&dir)
        {
            Ok(fd) => {
                let fresh = runs(fd.as_fd());
                let killed = fs::write(dir.join("cgroup.kill"), "1").is_ok() && runs(fd.as_fd());
                (fresh, killed)
            }
            Err(_) => (false, false),
        };
        remove_when_empty(&dir);
        answers
    }

    /// Kills whatever is left in jobsup's cgroups and removes them (at the end of a run, or
    /// by the guard when jobsup died).
    pub fn remove_all(&self) {
        remove_all(&self.bases);
    }
}

/// Kills whatever is left under each of `bases` and removes them.
pub fn remove_all(bases: &[PathBuf]) {
    for base in bases {
        // Worker cgroups first: a cgroup with children cannot be removed.
        if let Ok(entries) = fs::read_dir(base) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    kill_dir(&e.path());
                    remove_when_empty(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(base);
    }
}

/// The worker directories a `cgroup.kill` may have reached (this process's kills). The
/// kernel counts kills per cgroup and kills a child `clone3` creates in one whose count
/// differs from its parent's (see `CloneInto` in `sandbox`).
static KILLED: std::sync::Mutex<std::collections::BTreeSet<PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn mark_killed(dir: &Path) {
    KILLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dir.to_path_buf());
}

/// A fresh directory for worker `id` under `base`, in place of `killed`: `killed` itself,
/// removed and made again, where it is empty; else the first free `w{id}-{n}`.
fn remake(base: &Path, id: u64, killed: &Path) -> io::Result<PathBuf> {
    if made_again(killed) {
        return Ok(killed.to_path_buf());
    }
    for n in 1..=10_000u32 {
        let dir = base.join(format!("w{id}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // The slot's own from an earlier time, no kill written to it: as good as new
            // (one process of a slot runs at a time, and that one has ended). Killed and
            // still busy: the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !was_killed(&dir) || made_again(&dir) {
                    return Ok(dir);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no fresh cgroup directory for worker {id} in {}",
        base.display()
    )))
}

/// Removes a killed directory and makes it again, fresh, where it has emptied (and nobody
/// took the name meanwhile).
fn made_again(dir: &Path) -> bool {
    if fs::remove_dir(dir).is_err() {
        return false;
    }
    KILLED.lock().unwrap_or_else(|e| e.into_inner()).remove(dir);
    fs::create_dir(dir).is_ok()
}

fn was_killed(dir: &Path) -> bool {
    KILLED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(dir)
}

/// Whether a cgroup v2 directory has a live process in it or below (`cgroup.events`);
/// `None` when that cannot be read. Once false it stays false unless a process is put in:
/// a process outside it cannot fork into it, and one inside it has exited.
fn populated(dir: &Path) -> Option<bool> {
    populated_in(&fs::File::open(dir.join("cgroup.events")).ok()?)
}

/// [`populated`], from its `cgroup.events` open (read from offset 0, it says it anew).
fn populated_in(events: &fs::File) -> Option<bool> {
    use std::os::unix::fs::FileExt;
    // One read into a buffer on the stack: the file is two short lines, made whole at the
    // first read (the reaper asks after every worker's exit).
    let mut buf = [0u8; 256];
    let n = events.read_at(&mut buf, 0).ok()?;
    let events = std::str::from_utf8(&buf[..n]).ok()?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|v| v.trim() != "0")
}

/// SIGKILL to every process in one cgroup: `cgroup.kill` in v2. In v1, forks are stopped
/// first where the pids controller is there (`pids.max` 0), so that the listed processes
/// are all there is, then each is killed.
fn kill_dir(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    let _ = fs::write(dir.join("pids.max"), "0");
    // A fork already past the check may land after the first listing: list again.
    for _ in 0..3 {
        let pids = procs_of(dir);
        if pids.is_empty() {
            return;
        }
        crate::reaper::kill_all(&pids);
    }
}

/// Kills everything in the worker cgroups under `base`; returns how many processes were
/// still listed there (killed ones leave their cgroup as they exit).
pub fn kill_under(base: &Path) -> usize {
    let mut listed = 0;
    let _ = fs::write(base.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(base) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                listed += procs_of(&e.path()).len();
                kill_dir(&e.path());
            }
        }
    }
    listed
}

fn procs_of(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Removes a cgroup, waiting briefly for its killed processes to leave it (a cgroup with
/// processes cannot be removed).
fn remove_when_empty(dir: &Path) {
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                kill_dir(dir);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            _ => return,
        }
    }
}

impl WorkerCgroup {
    /// Makes (or finds) the worker's directory under `base`; returns its index in `dirs`.
    fn join_dir(&mut self, base: &Base, id: u64) -> io::Result<usize> {
        // Several limits may share one hierarchy, and so one directory.
        if let Some(i) = self
            .dirs
            .iter()
            .position(|(d, _)| d.parent() == Some(&*base.dir))
        {
            return Ok(i);
        }
        let mut dir = base.dir.join(format!("w{id}"));
        match fs::create_dir(&dir) {
            Ok(()) => self.fresh_v2 |= base.version == Version::V2,
            // A cgroup v2 directory an earlier process of the slot was killed in: a process
            // cloned into it would be killed at birth where `Cgroups::probe_clone_into`
            // finds so, so it would have to join by a write to `cgroup.procs`. That write waits for an
            // RCU grace period (milliseconds, tens on a busy machine) holding the cgroup
            // mutex, and every `cgroup.kill` of another worker meanwhile waits with it: the
            // kill rows' rare tail of 10-20 ms. So a fresh directory instead: the same one
            // emptied and made again, or, while the killed tree is still leaving it,
            // another name.
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && base.version == Version::V2
                    && was_killed(&dir) =>
            {
                dir = remake(&base.dir, id, &dir)?;
                self.fresh_v2 = true;
            }
            // A leftover from an earlier process of the same exec slot: as good as new
            // where no kill has reached it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.fresh_v2 |= base.version == Version::V2 && !was_killed(&dir);
            }
            Err(e) => return Err(e),
        }
        // A reused directory may keep the `pids.max` 0 of an earlier kill.
        if base.version == Version::V1 {
            let _ = fs::write(dir.join("pids.max"), "max");
        }
        self.add_dir(dir, base.version)?;
        Ok(self.dirs.len() - 1)
    }

    fn add_dir(&mut self, dir: PathBuf, version: Version) -> io::Result<()> {
        self.procs.push(
            CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(io::Error::other)?,
        );
        self.dirs.push((dir, version));
        Ok(())
    }

    /// Joins the calling process to these cgroups, between clone and exec: async-signal-safe
    /// and allocation-free. Returns the first error; the caller decides whether it matters
    /// (not for the kill alone, which other mechanisms back up; yes for a limit).
    ///
    /// # Safety
    /// Only open/write/close on paths prepared before the clone.
    pub unsafe fn join(procs: &[CString]) -> io::Result<()> {
        let mut result = Ok(());
        for path in procs {
            // SAFETY: see above.
            let written = unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    -1
                } else {
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    n
                }
            };
            if written < 0 && result.is_ok() {
                result = Err(io::Error::last_os_error());
            }
        }
        result
    }

    /// The paths the child writes itself into.
    pub fn procs(&self) -> Vec<CString> {
        self.procs.clone()
    }

    /// The paths the child writes itself into when it was created in [`Self::v2_dir`]
    /// already (`clone3` with `CLONE_INTO_CGROUP`): those of its cgroup v1 hierarchies.
    pub fn procs_v1(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .zip(&self.procs)
            .filter(|((_, version), _)| *version == Version::V1)
            .map(|(_, procs)| procs.clone())
            .collect()
    }

    /// Its cgroup v2 kill directory open as `O_PATH`, where it is kept open: where
    /// `clone3` can create the process.
    pub fn v2_dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.kill_files.as_ref()?.dir.as_ref().map(|fd| fd.as_fd())
    }

    /// Its cgroup v2 directory, where it has one (where the kill goes, and the v2
    /// controllers' limits): `clone3` can create the process right there.
    pub fn v2_dir(&self) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(_, version)| *version == Version::V2)
            .map(|(dir, _)| dir.as_path())
    }

    /// Whether no `cgroup.kill` has ever been written to [`Self::v2_dir`]: it was made for
    /// this process, or an earlier process of the slot ended with nothing left in it to
    /// kill (see [`Cgroups::probe_clone_into`]).
    pub fn v2_fresh(&self) -> bool {
        self.fresh_v2
    }

    /// The processes in the worker's cgroups, in every hierarchy (pids listed once).
    pub fn members(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .flat_map(|(dir, _)| procs_of(dir))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether its kill goes through its cgroup v2 directory (`cgroup.kill`, which reaches
    /// every process in it at once).
    pub fn kills_atomically(&self) -> bool {
        self.kill.is_some_and(|i| self.dirs[i].1 == Version::V2)
    }

    /// The threads in its cgroup v2 directory, when that is where its kill goes
    /// (`cgroup.kill`, which reaches every process in it at once): `None` where the kill
    /// lists and signals processes one by one.
    pub fn atomic_kill_threads(&self) -> Option<Vec<i32>> {
        let (dir, version) = &self.dirs[self.kill?];
        (*version == Version::V2).then(|| {
            fs::read_to_string(dir.join("cgroup.threads"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
    }

    /// The processes in its kill directory (the one [`WorkerCgroup::kill`] goes
    /// through first), read from its `cgroup.procs` kept open.
    pub fn kill_dir_members(&self) -> Vec<i32> {
        use std::os::unix::fs::FileExt;
        let Some(i) = self.kill else {
            return Vec::new();
        };
        let Some(file) = self.kill_files.as_ref().and_then(|f| f.procs.as_ref()) else {
            return procs_of(&self.dirs[i].0);
        };
        let mut buf = [0u8; 4096];
        let mut text = Vec::new();
        loop {
            match file.read_at(&mut buf, text.len() as u64) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return procs_of(&self.dirs[i].0),
            }
        }
        String::from_utf8_lossy(&text)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// SIGKILL to every process in the worker's cgroups. A cgroup v2 directory with no
    /// process left in it (the usual case once an exec job's process has exited) is not
    /// written to: nothing could be killed, and a directory no `cgroup.kill` has reached
    /// can have the slot's next process created inside it (see [`Self::v2_fresh`]), rather
    /// than moved in, which costs the kernel a wait for every CPU. Returns whether its
    /// kill cgroup was killed (it was, or may have been, populated).
    pub fn kill(&self) -> bool {
        let mut killed = false;
        if let Some(i) = self.kill {
            let (dir, version) = &self.dirs[i];
            if *version == Version::V1 || self.populated(dir) != Some(false) {
                mark_killed(dir);
                kill_dir(dir);
                killed = true;
            }
        }
        for (i, (dir, _)) in self.dirs.iter().enumerate() {
            if Some(i) != self.kill {
                kill_dir(dir);
            }
        }
        killed
    }

    /// Waits, at most `limit`, until no process is left in its cgroup v2 kill directory
    /// (after a kill: SIGKILL takes effect when each process next runs, which among busy
    /// CPUs may take a while, and one in an uninterruptible sleep waits for its I/O).
    /// Whether it emptied; true at once where the kill is not a v2 directory's. A look
    /// at `cgroup.events` every millisecond: this runs only after a kill that found
    /// processes left, and they are dying already.
    pub async fn emptied(&self, limit: std::time::Duration) -> bool {
        let Some((dir, Version::V2)) = self.kill.map(|i| &self.dirs[i]) else {
            return true;
        };
        let until = std::time::Instant::now() + limit;
        loop {
            if self.populated(dir) != Some(true) {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// [`populated`], through the kill directory's `cgroup.events` kept open.
    fn populated(&self, dir: &Path) -> Option<bool> {
        match self.kill_files.as_ref().and_then(|f| f.events.as_ref()) {
            Some(events) => populated_in(events),
            None => populated(dir),
        }
    }

    /// Whether a memory limit is set on this worker's cgroup.
    pub fn limits_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The cgroup limits the kernel enforced on this worker's tree: the evidence that a
    /// worker died of `--memory` or `--max-procs` rather than of a bug.
    pub fn limits_hit(&self) -> Hits {
        let (oom_kills, fork_failures) = self.counts();
        Hits {
            memory: self
                .memory
                .filter(|_| oom_kills > self.baseline.0)
                .map(|(_, bytes)| bytes),
            max_procs: self
                .pids
                .filter(|_| fork_failures > self.baseline.1)
                .map(|(_, n)| n),
        }
    }

    /// The kernel's counts of OOM kills and failed forks in these cgroups so far (which
    /// an earlier process of the same exec slot may have started).
    fn counts(&self) -> (u64, u64) {
        let count = |i: usize, v1: &str, v2: &str, key: &str| -> u64 {
            let (dir, version) = &self.dirs[i];
            let file = if *version == Version::V1 { v1 } else { v2 };
            fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        (
            self.memory.map_or(0, |(i, _)| {
                count(i, "memory.oom_control", "memory.events", "oom_kill ")
            }),
            self.pids
                .map_or(0, |(i, _)| count(i, "pids.events", "pids.events", "max ")),
        )
    }

    /// Removes the cgroups once empty (left for jobsup's exit if they are not yet).
    pub fn remove(&self) {
        for (dir, _) in &self.dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
32 25 0:28 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 25 0:29 / /proc rw - proc proc rw";

    const OWN: &str = "\
8:pids:/user.slice
4:memory:/docker/abc/job
1:name=systemd:/
0::/user.slice/session-1.scope";

    #[test]
    fn emptied_waits_for_a_killed_member_to_die_and_not_for_a_live_one() {
        // Root with a writable cgroup v2, as CI runs; elsewhere there is nothing to test.
        let (Some(cgroups), _) = Cgroups::detect(Wanted::default()) else {
            return;
        };
        let Ok(worker) = cgroups.worker(1) else {
            return;
        };
        let Some(dir) = worker.v2_dir().map(Path::to_path_buf) else {
            return;
        };
        let mut sleeper = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let short = std::time::Duration::from_millis(20);
        assert!(
            !runtime.block_on(worker.emptied(short)),
            "a live member is waited for"
        );
        assert!(worker.kill(), "a populated cgroup is killed");
        assert!(runtime.block_on(worker.emptied(std::time::Duration::from_secs(30))));
        assert_eq!(populated(&dir), Some(false));
        assert!(!worker.kill(), "an empty cgroup is not written to");
        // Reaped here, unless another test's reaper got to it.
        let _ = sleeper.wait();
        worker.remove();
        cgroups.remove_all();
    }

    #[test]
    fn own_paths_are_found_per_hierarchy() {
        assert_eq!(
            own_path(OWN, None).as_deref(),
            Some("/user.slice/session-1.scope")
        );
        assert_eq!(own_path(OWN, Some("pids")).as_deref(), Some("/user.slice"));
        assert_eq!(
            own_path(OWN, Some("memory")).as_deref(),
            Some("/docker/abc/job")
        );
        assert_eq!(own_path(OWN, Some("cpu")), None);
    }

    #[test]
    fn a_mount_of_a_subtree_is_joined_without_its_root() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let memory = mounts
            .iter()
            .find(|m| m.options.split(',').any(|o| o == "memory"))
            .expect("the memory mount");
        // Inside a container the hierarchy is mounted from /docker/abc: the process's path
        // /docker/abc/job is /job under the mount point.
        assert_eq!(
            dir_in(memory, "/docker/abc/job"),
            PathBuf::from("/sys/fs/cgroup/memory/job")
        );
        let v2 = mounts.iter().find(|m| m.fstype == "cgroup2").expect("v2");
        assert_eq!(
            dir_in(v2, "/user.slice/session-1.scope"),
            PathBuf::from("/sys/fs/cgroup/unified/user.slice/session-1.scope")
        );
    }
}
