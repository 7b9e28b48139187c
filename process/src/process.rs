//! A worker process as its owner task sees it: a process group to signal and an exit
//! status to await. [`Process::end`] is the one kill-wait-reap sequence of jobsup.
//!
//! # Signalling the right process
//!
//! A pid names a process only until that process is reaped; then the number may be given to
//! anyone. A worker leads its own process group, whose id is its pid, so the same holds for
//! the group. jobsup signals a worker's group one of two ways, chosen once at start
//! ([`handles`], logged at debug level as `process handles: ...`):
//!
//! - **pidfd**: through a pidfd opened while the worker was certainly unreaped
//!   (`pidfd_open`), with `pidfd_send_signal(.., PIDFD_SIGNAL_PROCESS_GROUP)` (Linux 6.9).
//!   The kernel resolves the group from its own reference to the worker, not from a number:
//!   what is left of the group is reached even after the leader is reaped, and once nothing
//!   is left the answer is ESRCH, never a signal to a successor.
//! - **pid**, where the kernel lacks either call: `kill(-pgid)`, but only with the reaper
//!   held off while the leader is known unreaped ([`Registration::while_unreaped`]); a
//!   zombie's pid, and so its group's id, cannot be reused. After that, nothing is sent.
//!
//! The group kill that matters most, for members a leader leaves behind when it exits, is
//! not made here at all: the reaper sends it, just before it reaps the leader (see
//! [`crate::reaper`]).

use std::ffi::{c_int, c_uint};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::cgroup::{Hits, WorkerCgroup};
use crate::offload::{offload, Offloaded};
use crate::reaper::{Exit, Registration, Unreaped};

/// How workers are named when they are signalled, on this machine (see the module's
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handles {
    /// pidfds, through which whole groups are signalled.
    Pidfd,
    /// Plain pids, each signalled only while it is known unreaped.
    Pid {
        /// Why not pidfds.
        why: String,
    },
}

impl std::fmt::Display for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Handles::Pidfd => write!(f, "pidfd"),
            Handles::Pid { why } => write!(f, "pid ({why})"),
        }
    }
}

/// What this kernel offers, found on first use (by [`crate::reaper::Reaper::start`], which
/// logs it).
pub fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(probe_handles)
}

fn probe_handles() -> Handles {
    let pid = |why: &str| Handles::Pid { why: why.into() };
    if crate::fault::refused("pidfd_open") {
        return pid("no pidfd_open: refused by JOBSUP_FAULT");
    }
    let own = match pidfd_open(std::process::id() as i32) {
        Ok(fd) => fd,
        Err(e) => return pid(&format!("no pidfd_open: {e}")),
    };
    if crate::fault::refused("pidfd_group") {
        return pid("no pidfd_send_signal to a process group: refused by JOBSUP_FAULT");
    }
    // Signal 0 makes the checks and sends nothing. Ok, or ESRCH when jobsup leads no group
    // of its own: the flag is known. EINVAL: a kernel before 6.9.
    match pidfd_send_signal(own.as_fd(), 0, libc::PIDFD_SIGNAL_PROCESS_GROUP) {
        Ok(()) | Err(Errno::ESRCH) => Handles::Pidfd,
        Err(e) => pid(&format!("no pidfd_send_signal to a process group: {e}")),
    }
}

/// `pidfd_open(pid, 0)`: a handle on whoever is `pid` now. Only meaningful while `pid` is
/// known not to have been reaped; otherwise it may name a successor.
pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new descriptor (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, flags)`.
pub(crate) fn pidfd_send_signal(
    pidfd: BorrowedFd<'_>,
    sig: c_int,
    flags: c_uint,
) -> Result<(), Errno> {
    // SAFETY: a descriptor borrowed for the call, a signal number, no siginfo (a null
    // pointer: the kernel fills it in as for kill(2)) and flags; nothing of ours is written.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// How long [`Process::end`] waits for what a worker left in its cgroup to die, once
/// killed (see [`crate::cgroup::WorkerCgroup::emptied`]).
const LEFTOVERS_DIE: Duration = Duration::from_secs(2);

/// How a [`Process`] is named when it is signalled.
enum Handle {
    /// The kernel's reference to it: its group is signalled through this, whatever becomes
    /// of the number.
    Pidfd(OwnedFd),
    /// The number, used only while it is known unreaped.
    Pid,
}

/// A spawned worker process, which leads its own process group.
pub struct Process {
    /// Its pid, its status to come, and the hold on the reaper.
    exit: Registration,
    handle: Handle,
    /// The worker serial its environment carries (`JOBSUP_WORKER_ID`), by which escaped
    /// descendants are recognised.
    worker: u64,
    /// Its cgroup, where the machine offers them: the kill that nothing escapes. Shared with
    /// the reaper, which kills it just before it reaps the process.
    cgroup: Option<Arc<WorkerCgroup>>,
    /// Leave the cgroup directories for the next process of the same worker slot (exec
    /// mode starts one per job; making and removing them each time costs ~0.2 ms).
    keep_cgroup: bool,
    /// The cgroup limits the kernel enforced on its tree (known once [`Process::end`] has
    /// run).
    limits_hit: Hits,
    /// It is the init of a pid namespace, and the worker its first child.
    shim: bool,
    /// The processor's pid: the init's worker, or this process.
    processor: i32,
    /// It was seen in its cgroup v2 directory, whose `cgroup.kill` kills its whole tree at
    /// once: whatever it starts is there too (a process without privileges cannot move
    /// out), so no tree walk is needed to find what it left.
    contained: bool,
    /// When a process [`Process::end`] killed was seen to exit, through its pidfd: before
    /// the reaper gets to it, which may be busy reaping others.
    exited_at: Option<std::time::Instant>,
    /// The hard kill's `cgroup.kill`, made off the runtime (see [`crate::offload`]).
    cgroup_kill: Option<Offloaded>,
}

impl Process {
    /// Wraps a process, right after its spawn, whose exit status the reaper routes to
    /// `exit`. `pidfd` is the spawner's own handle on it, if it has one (`CLONE_PIDFD`);
    /// otherwise one is opened here, with the reaper held off while the process is known
    /// unreaped, so that it cannot name a successor (or, if it was reaped already, the one
    /// the reaper opened on its zombie is taken). Where [`handles`] says pids, none is
    /// kept.
    pub fn new(
        mut exit: Registration,
        pidfd: Option<OwnedFd>,
        worker: u64,
        cgroup: Option<WorkerCgroup>,
        keep_cgroup: bool,
        born_in_cgroup: bool,
    ) -> Process {
        let handle = match (handles(), pidfd.or_else(|| exit.take_pidfd())) {
            (Handles::Pid { .. }, _) => Handle::Pid,
            (Handles::Pidfd, Some(fd)) => Handle::Pidfd(fd),
            (Handles::Pidfd, None) => match exit.while_unreaped(|_| pidfd_open(exit.pid())) {
                Some(Ok(fd)) => Handle::Pidfd(fd),
                Some(Err(e)) => {
                    tracing::debug!(pid = exit.pid(), "no pidfd for the worker: {e}");
                    Handle::Pid
                }
                // Already reaped: there is nothing left to name.
                None => Handle::Pid,
            },
        };
        Process::with_handle(exit, handle, worker, cgroup, keep_cgroup, born_in_cgroup)
    }

    fn with_handle(
        exit: Registration,
        handle: Handle,
        worker: u64,
        cgroup: Option<WorkerCgroup>,
        keep_cgroup: bool,
        born_in_cgroup: bool,
    ) -> Process {
        let cgroup = cgroup.map(Arc::new);
        if let Some(cgroup) = &cgroup {
            exit.kill_cgroup_first(cgroup);
        }
        // Born in the cgroup v2 directory its kill goes to, it is there (nothing of jobsup's
        // moves it); else it joined between clone and exec, where that worked, and its
        // directory says so.
        let contained = cgroup.as_ref().is_some_and(|c| {
            (born_in_cgroup && c.kills_atomically())
                || c.atomic_kill_threads()
                    .is_some_and(|threads| threads.contains(&exit.pid()))
        });
        Process {
            contained,
            exit,
            handle,
            worker,
            cgroup,
            keep_cgroup,
            limits_hit: Hits::default(),
            shim: false,
            processor: 0,
            exited_at: None,
            cgroup_kill: None,
        }
    }

    /// Says that it is the init of a pid namespace, whose first child is the worker, the
    /// processor `processor`: [`Process::kill_leftovers`] spares that child too.
    pub fn behind_init(&mut self, processor: i32) {
        self.shim = true;
        self.processor = processor;
    }

    /// The processor's pid, for records and logs: the worker behind an init, or
    /// [`Process::pid`].
    pub fn processor_pid(&self) -> i32 {
        if self.shim {
            self.processor
        } else {
            self.pid()
        }
    }

    /// Whether its whole tree has certainly ended with it: once it has exited, where it was
    /// a pid namespace's init (the kernel ends the namespace with it) or held in its cgroup
    /// v2 (which `end` kills whole).
    pub fn tree_ended(&mut self) -> bool {
        (self.shim || self.contained) && self.exit().is_some()
    }

    /// Its pid (and process group id).
    pub fn pid(&self) -> i32 {
        self.exit.pid()
    }

    /// How it ended, once the reaper has said so.
    pub fn exit(&mut self) -> Option<Exit> {
        self.exit.try_reaped().map(|r| r.exit)
    }

    /// Resolves once the process has exited and been reaped. Cancel-safe.
    pub async fn exited(&mut self) -> Exit {
        self.exit.reaped().await.exit
    }

    /// A polite signal (if any) to the whole group, followed by SIGCONT so that a stopped
    /// process can act on it. Once the group cannot be named any more (nothing of it is
    /// left; or, by pid, its leader has been reaped), nothing is sent to anyone: ESRCH.
    pub fn ask(&self, sig: Option<Signal>) -> Result<(), Errno> {
        let asked = match sig {
            Some(sig) => self.signal_group(sig),
            None => Ok(()),
        };
        // SIGCONT lets a stopped process act on the request. A group the request itself
        // already ended (and that was reaped meanwhile) answers ESRCH: no failure of the ask.
        let cont = asked.and_then(|()| self.signal_group(Signal::SIGCONT));
        let asked = match (sig, cont) {
            (Some(_), Err(Errno::ESRCH)) if asked.is_ok() => Ok(()),
            (_, cont) => cont,
        };
        if let Err(e) = asked {
            tracing::debug!(pid = self.pid(), "the worker was not signalled: {e}");
        }
        asked
    }

    /// SIGKILL to the whole group, to its cgroup, and to every descendant that left the
    /// group (a `setsid` daemon, say): found by walking the process tree while the worker
    /// is certainly still there, unreaped. Once it has been reaped, the reaper has already
    /// killed its group and cgroup, and the tree under its old pid is someone else's.
    pub fn kill(&mut self) {
        // Where the cgroup holds the worker and `cgroup.kill` kills it, that reaches its
        // whole tree at once and names nobody else, reaped or not, and so does the pidfd
        // its group: no need to wait for the reaper's hold, which a reap in progress keeps
        // for as long as the kernel takes (milliseconds, when many workers die together).
        if self.contained {
            if let Some(cgroup) = &self.cgroup {
                // First, so that they die as soon as the kill lands, however busy the CPUs.
                if let Some(threads) = cgroup.atomic_kill_threads() {
                    crate::priority::hasten_threads(&threads);
                }
            }
            // The group at once, through the pidfd, which takes no lock that anyone can
            // hold for long; the rest of the tree by `cgroup.kill`, which waits for the
            // cgroup lock, off this thread: `end` awaits it before it looks at the cgroup.
            if matches!(self.handle, Handle::Pidfd(_)) {
                let _ = self.send(Signal::SIGKILL, None);
            }
            self.cgroup_kill = self.cgroup.as_ref().map(kill_off_thread);
            return;
        }
        let walked = self.exit.while_unreaped(|unreaped| {
            // First, so that it dies as soon as the kill lands, however busy the CPUs are.
            crate::priority::hasten_group(self.pid());
            let escaped = crate::reaper::descendants(self.pid());
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill();
            }
            let _ = self.signal_unreaped_group(unreaped, Signal::SIGKILL);
            crate::reaper::kill_all(&escaped);
        });
        if walked.is_none() {
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill();
            }
            // A pidfd still names what is left of the group.
            let _ = self.signal_group(Signal::SIGKILL);
        }
    }

    /// SIGKILL to every process of the worker's tree but the worker itself (and, behind a
    /// pid namespace's init, the init's first child, the worker proper): what a job left
    /// behind in a worker that is kept for the next one. Its cgroup's members where it has
    /// a cgroup, its descendants by the `/proc` walk, the members of its process group,
    /// and the descendants that escaped to jobsup (the subreaper) still carrying the
    /// worker's serial; all listed and killed while the worker is certainly unreaped, with
    /// the reaper held off (so neither its group's id nor an adopted child's pid can name
    /// a successor meanwhile). Returns how many processes were sent the kill; 0, sending
    /// nothing, once the worker has been reaped (the reaper has killed its tree then).
    pub fn kill_leftovers(&self) -> usize {
        let leader = self.pid();
        self.exit
            .while_unreaped(|unreaped| {
                // Behind a pid namespace's init nothing can leave the namespace (orphans
                // go to the init, not to jobsup): what is left is the init's tree, or its
                // kill cgroup's members, but the init and the worker.
                if self.shim {
                    let mut pids = match (&self.cgroup, self.contained) {
                        (Some(c), true) => c.kill_dir_members(),
                        _ => crate::reaper::descendants(leader),
                    };
                    // The worker as named at its spawn (its init's first child then).
                    let worker = match self.processor {
                        p if p != leader => Some(p),
                        _ => crate::reaper::children(leader).first().copied(),
                    };
                    pids.retain(|&p| p != leader && Some(p) != worker);
                    crate::reaper::kill_all(&pids);
                    return pids.len();
                }
                // Contained, everything it started is in its kill cgroup.
                if self.contained {
                    let mut pids = self
                        .cgroup
                        .as_ref()
                        .map(|c| c.kill_dir_members())
                        .unwrap_or_default();
                    pids.retain(|&p| p != leader);
                    crate::reaper::kill_all(&pids);
                    return pids.len();
                }
                let mut pids = Vec::new();
                if let Some(cgroup) = &self.cgroup {
                    pids.extend(cgroup.members());
                }
                pids.extend(crate::reaper::descendants(leader));
                // Group members and tagged processes that left the tree were adopted by
                // jobsup (see `orphans_of`): found from its strays, not a walk of /proc,
                // which would cost more than the job (this runs after every job).
                pids.extend(crate::reaper::orphans_of(
                    &unreaped.strays(),
                    leader,
                    self.worker,
                ));
                pids.retain(|&p| p != leader);
                pids.sort_unstable();
                pids.dedup();
                crate::reaper::kill_all(&pids);
                pids.len()
            })
            .unwrap_or(0)
    }

    /// The CPU time the worker's tree has used so far (see
    /// [`crate::reaper::tree_cpu_time`]), read while the worker is certainly unreaped, so
    /// that its pid names it. `None` once it has been reaped.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.exit
            .while_unreaped(|_| crate::reaper::tree_cpu_time(self.pid()))
            .flatten()
    }

    /// Lets the process exit by itself for up to `grace`, then kills it, and waits for it
    /// to be reaped (the reaper kills its group and cgroup just before). Returns how it
    /// ended and whether jobsup had to kill it.
    pub async fn end(&mut self, grace: Duration) -> (Exit, bool) {
        let mut killed = false;
        if self.exit().is_none() {
            // A pidfd is readable once the process has exited: that is when it ended,
            // however long the reaper takes to come to it (it may be reaping many others).
            let exit = self.exit_readiness();
            // No grace: one look, not a timer (tokio's rounds up to its next millisecond,
            // which a hard kill would wait for). The look is the pidfd's own readiness,
            // asked of the kernel: a freshly registered `AsyncFd` says "not yet" until the
            // runtime's next turn, and a process that has exited must not count as killed.
            let in_time = if grace.is_zero() {
                exit.as_ref().is_some_and(|fd| has_exited(fd.get_ref()))
            } else {
                let registration = &mut self.exit;
                let gone = async {
                    match &exit {
                        Some(exit) => tokio::select! {
                            biased;
                            _ = exit.readable() => {}
                            _ = registration.reaped() => {}
                        },
                        None => {
                            registration.reaped().await;
                        }
                    }
                };
                tokio::time::timeout(grace, gone).await.is_ok()
            };
            if !in_time {
                self.kill();
                killed = true;
                if let Some(exit) = &exit {
                    tokio::select! {
                        biased;
                        _ = exit.readable() => self.exited_at = Some(std::time::Instant::now()),
                        _ = self.exit.reaped() => {}
                    }
                }
            }
        }
        let reaped = self.exit.reaped().await;
        // Group members the leader left behind died at the reaper's SIGKILL, sent while the
        // leader was an unreaped zombie: the last moment the group's id was certainly the
        // worker's. A process reaped before it was registered missed that; a pidfd (or the
        // number, if it was never reaped: the reaper failed) still reaches its group.
        if !reaped.group_killed {
            let _ = self.signal_group(Signal::SIGKILL);
        }
        // Descendants that escaped the group and were handed to jobsup (the subreaper) when
        // their parent died still carry the worker's serial in their environment. They are
        // jobsup's children: with the reaper held off, none is reaped (and its pid reused)
        // between the listing and the kill. (The tree is not walked from the reaped pid: it
        // may already name someone else.)
        let worker = self.worker;
        if !self.contained {
            self.exit.holding_reaper_with_strays(|strays| {
                crate::reaper::kill_all(&crate::reaper::adopted_from(strays, worker));
            });
        }
        if let Some(kill) = self.cgroup_kill.take() {
            kill.done().await;
        }
        if let Some(cgroup) = &self.cgroup {
            if !reaped.cgroup_killed {
                kill_off_thread(cgroup).done().await;
            }
            // What the tree left behind dies before the job is over, as it would have
            // with its own pid namespace: the slot's next process must not meet it (an
            // exec slot's processes share their cgroup, and maybe their namespaces).
            if reaped.left_behind && self.contained && !cgroup.emptied(LEFTOVERS_DIE).await {
                tracing::warn!(
                    pid = self.pid(),
                    "what the worker left behind was killed but has not died in {LEFTOVERS_DIE:?}"
                );
            }
            self.limits_hit = cgroup.limits_hit();
            // Kept ones go at the end of the run. Nothing waits for the removal: the
            // directory is this worker's alone, and the run's end removes what is left.
            if !self.keep_cgroup {
                let cgroup = Arc::clone(cgroup);
                drop(offload(move || cgroup.remove()));
            }
        }
        (reaped.exit, killed)
    }

    /// When a process [`Process::end`] had to kill was seen to exit (before it was
    /// reaped), where a pidfd shows it.
    pub fn exited_at(&self) -> Option<std::time::Instant> {
        self.exited_at
    }

    /// A copy of its pidfd registered with the runtime, to await its exit by.
    fn exit_readiness(&self) -> Option<tokio::io::unix::AsyncFd<OwnedFd>> {
        let Handle::Pidfd(fd) = &self.handle else {
            return None;
        };
        let copy = fd.try_clone().ok()?;
        // SAFETY: the AsyncFd owns `copy`, which stays open, and the same file, for as long
        // as it lives.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(copy, tokio::io::Interest::READABLE)
        }
        .ok()
    }

    /// Whether its memory limit is a cgroup's (rather than `RLIMIT_AS`).
    pub fn memory_in_cgroup(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.limits_memory())
    }

    /// The cgroup limits the kernel enforced on its tree. Known after [`Process::end`].
    pub fn limits_hit(&self) -> Hits {
        self.limits_hit
    }

    /// `sig` to the whole group: through the pidfd, or by number while the leader is known
    /// unreaped. ESRCH when the group cannot be named any more.
    fn signal_group(&self, sig: Signal) -> Result<(), Errno> {
        match &self.handle {
            Handle::Pidfd(_) => self.send(sig, None),
            Handle::Pid => self
                .exit
                .while_unreaped(|unreaped| self.signal_unreaped_group(unreaped, sig))
                .unwrap_or(Err(Errno::ESRCH)),
        }
    }

    /// [`Process::signal_group`], for a caller that holds the reaper off with the leader
    /// unreaped.
    fn signal_unreaped_group(&self, unreaped: &Unreaped<'_>, sig: Signal) -> Result<(), Errno> {
        self.send(sig, Some(unreaped))
    }

    fn send(&self, sig: Signal, unreaped: Option<&Unreaped<'_>>) -> Result<(), Errno> {
        let sent = match (&self.handle, unreaped) {
            (Handle::Pidfd(fd), _) => {
                pidfd_send_signal(fd.as_fd(), sig as c_int, libc::PIDFD_SIGNAL_PROCESS_GROUP)
            }
            // Safe by number: the unreaped leader keeps the group's id from being reused.
            (Handle::Pid, Some(_)) => nix::sys::signal::killpg(Pid::from_raw(self.pid()), sig),
            (Handle::Pid, None) => Err(Errno::ESRCH),
        };
        match sent {
            Err(e) if e != Errno::ESRCH => {
                tracing::warn!(pid = self.pid(), "cannot send {sig} to process group: {e}");
            }
            _ => {}
        }
        sent
    }
}

impl Drop for Process {
    /// Kill-on-drop: a process whose owner went away without ending it (a task that
    /// failed, say) dies with its group rather than running on unsupervised.
    fn drop(&mut self) {
        if self.exit().is_none() {
            self.kill();
        }
    }
}

/// `cgroup.kill` for `cgroup`, made on an offload thread: the write waits for the kernel's
/// cgroup mutex (see [`crate::offload`]).
fn kill_off_thread(cgroup: &Arc<WorkerCgroup>) -> Offloaded {
    let cgroup = Arc::clone(cgroup);
    offload(move || {
        cgroup.kill();
    })
}

/// Whether the process `pidfd` names has exited: its pidfd polls readable.
fn has_exited(pidfd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    crate::fd::poll(&mut fds, Some(Duration::ZERO)).is_ok() && fds[0].revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::reaper::testing::*;

    /// The handles a test can use on this kernel.
    fn kinds() -> Vec<&'static str> {
        match handles() {
            Handles::Pidfd => vec!["pidfd", "pid"],
            Handles::Pid { .. } => vec!["pid"],
        }
    }

    /// A [`Process`] for `registration`, named the way `kind` says.
    fn process(registration: Registration, kind: &str) -> Process {
        let handle = match kind {
            "pidfd" => Handle::Pidfd(
                registration
                    .while_unreaped(|_| pidfd_open(registration.pid()))
                    .expect("not reaped yet")
                    .expect("a pidfd"),
            ),
            _ => Handle::Pid,
        };
        Process::with_handle(registration, handle, 0, None, false, false)
    }

    #[test]
    fn a_pidfd_is_used_where_the_kernel_offers_one() {
        let mut leader = Leader::start("read go");
        let mut p = Process::new(leader.register(), None, 0, None, false, false);
        assert_eq!(
            matches!(p.handle, Handle::Pidfd(_)),
            *handles() == Handles::Pidfd,
            "{}",
            handles()
        );
        leader.go();
        block_on(p.exited());
    }

    #[test]
    fn asking_a_live_worker_reaches_its_whole_group() {
        for kind in kinds() {
            let mut leader = Leader::start("sleep 1000 >/dev/null 2>&1 & echo $!; read go");
            let mut p = process(leader.register(), kind);
            let mut member = reaper().register(leader.read_pid(), leader.since);
            assert_eq!(p.ask(Some(Signal::SIGTERM)), Ok(()), "{kind}");
            assert_eq!(block_on(p.exited()), Exit::Signal(libc::SIGTERM), "{kind}");
            assert_eq!(
                reaped(&mut member).exit,
                Exit::Signal(libc::SIGTERM),
                "{kind}"
            );
        }
    }

    #[test]
    fn asking_a_reaped_worker_is_esrch_and_signals_nobody() {
        for kind in kinds() {
            let mut leader = Leader::start("read go");
            let mut p = process(leader.register(), kind);
            leader.go();
            assert_eq!(block_on(p.exited()), Exit::Code(0));
            assert_eq!(p.ask(Some(Signal::SIGTERM)), Err(Errno::ESRCH), "{kind}");
            assert_eq!(p.ask(None), Err(Errno::ESRCH), "{kind}");
            // The hard kill has nothing left to do either, and says nothing.
            p.kill();
        }
    }

    /// The number a reaped worker had is someone else's now (here: a process that is
    /// really alive under it). Nothing of the worker's may reach that process.
    #[test]
    fn a_reused_number_is_never_signalled() {
        for kind in kinds() {
            // The successor: alive, leading its own group, under the very number the
            // worker's registration names.
            let successor = Leader::start("read go");
            let mut successor_status = successor.register();
            let registry = Pretend::new();
            let handle = match kind {
                // The worker's own pidfd, of a worker that has exited and been reaped.
                "pidfd" => {
                    let mut worker = Leader::start("read go");
                    let mut status = worker.register();
                    let fd = status
                        .while_unreaped(|_| pidfd_open(worker.pid()))
                        .expect("not reaped yet")
                        .expect("a pidfd");
                    worker.go();
                    reaped(&mut status);
                    Handle::Pidfd(fd)
                }
                _ => Handle::Pid,
            };
            // The registry's word: registered with the successor's number, then reaped.
            let registration = registry.register(successor.pid(), Instant::now());
            if kind == "pid" {
                registry.reaped(successor.pid());
            }
            let mut p = Process::with_handle(registration, handle, 0, None, false, false);
            assert_eq!(p.ask(Some(Signal::SIGTERM)), Err(Errno::ESRCH), "{kind}");
            p.kill();
            drop(p);
            // The successor got nothing: it dies of the signal sent to it now (a fatal
            // signal sent earlier would have set its status first).
            nix::sys::signal::kill(Pid::from_raw(successor.pid()), Signal::SIGUSR1)
                .expect("the successor is there");
            assert_eq!(
                reaped(&mut successor_status).exit,
                Exit::Signal(libc::SIGUSR1),
                "{kind}"
            );
        }
    }

    #[test]
    fn end_leaves_no_group_member_behind() {
        for kind in kinds() {
            let mut leader = Leader::start("sleep 1000 >/dev/null 2>&1 & echo $!; read go");
            let mut p = process(leader.register(), kind);
            let mut member = reaper().register(leader.read_pid(), leader.since);
            leader.go();
            assert_eq!(
                block_on(p.end(Duration::from_secs(30))),
                (Exit::Code(0), false)
            );
            assert_eq!(
                reaped(&mut member).exit,
                Exit::Signal(libc::SIGKILL),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_worker_reaped_before_its_registration_has_its_group_killed_through_a_pidfd() {
        // A worker that exits (leaving a member in its group) before its spawner could
        // register it: the reaper reaps it as it would an orphan, killing nothing.
        let mut leader = Leader::start("sleep 1000 >/dev/null 2>&1 & echo $!; read go; exit 5");
        let member = leader.read_pid();
        reaper();
        leader.go();
        let pid = leader.pid();
        wait_until("the leader is reaped", || !exists(pid));
        let registration = leader.register();
        let mut member_status = reaper().register(member, leader.since);
        let mut p = Process::new(registration, None, 0, None, false, false);
        assert_eq!(p.exit(), Some(Exit::Code(5)));
        match handles() {
            // The pidfd the reaper opened on the zombie names its group still.
            Handles::Pidfd => {
                assert!(matches!(p.handle, Handle::Pidfd(_)));
                assert_eq!(block_on(p.end(Duration::ZERO)), (Exit::Code(5), false));
                assert_eq!(reaped(&mut member_status).exit, Exit::Signal(libc::SIGKILL));
            }
            // By number nothing can be sent safely: the group is left to the cgroup and
            // the environment tag.
            Handles::Pid { .. } => {
                assert!(matches!(p.handle, Handle::Pid));
                block_on(p.end(Duration::ZERO));
                nix::sys::signal::kill(Pid::from_raw(member), Signal::SIGUSR1)
                    .expect("the member is left");
                assert_eq!(reaped(&mut member_status).exit, Exit::Signal(libc::SIGUSR1));
            }
        }
    }

    /// Dead: gone, or a zombie its parent has not waited for yet.
    fn dead(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s[s.rfind(')')? + 1..].trim_start().starts_with('Z')))
            .unwrap_or(true)
    }

    #[test]
    fn kill_leftovers_kills_the_tree_but_not_the_worker() {
        for kind in kinds() {
            // A group member, and a descendant in a session of its own.
            let mut leader = Leader::start(
                "sleep 1000 >/dev/null 2>&1 & echo $!; setsid sleep 1000 >/dev/null 2>&1 & echo $!; read go",
            );
            let mut p = process(leader.register(), kind);
            let member = leader.read_pid();
            let escaped = leader.read_pid();
            wait_until("the escaped sleeper has a session of its own", || {
                crate::reaper::group_members(leader.pid()) == [member]
                    && crate::reaper::descendants(leader.pid()).contains(&escaped)
            });
            assert_eq!(p.kill_leftovers(), 2, "{kind}");
            wait_until("both sleepers are dead", || dead(member) && dead(escaped));
            // The worker goes on.
            assert!(!dead(leader.pid()), "{kind}");
            assert_eq!(p.exit(), None, "{kind}");
            leader.go();
            assert_eq!(block_on(p.exited()), Exit::Code(0), "{kind}");
            // Reaped: nothing is sent to anyone.
            assert_eq!(p.kill_leftovers(), 0, "{kind}");
        }
    }

    #[test]
    fn cpu_time_counts_the_tree_and_its_waited_for_children() {
        let mut leader = Leader::start(
            "python3 -c 'import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass'; echo done; read go",
        );
        let mut p = process(leader.register(), "pid");
        assert_eq!(leader.read_line(), "done");
        // The child burned 0.2 s and was waited for by the shell: its time is the shell's
        // cutime now.
        let used = p.cpu_time().expect("the worker is there");
        assert!(used >= Duration::from_millis(150), "{used:?}");
        leader.go();
        assert_eq!(block_on(p.exited()), Exit::Code(0));
        assert_eq!(p.cpu_time(), None);
    }

    #[test]
    fn end_kills_a_worker_that_does_not_exit_in_time() {
        for kind in kinds() {
            let leader = Leader::start("sleep 1000 >/dev/null 2>&1 & echo $!; read go");
            let mut p = process(leader.register(), kind);
            assert_eq!(
                block_on(p.end(Duration::ZERO)),
                (Exit::Signal(libc::SIGKILL), true),
                "{kind}"
            );
        }
    }
}
