//! The one component that reaps children (`waitid`/`waitpid`).
//!
//! jobsup is a child subreaper, so it inherits every orphaned descendant of its workers. If
//! two parties waited for any child, one would steal the other's exit statuses, so every
//! reap happens here, with the registry locked, in one of two ways:
//!
//! - **By the owner.** A registered child's pidfd, opened at registration, becomes readable
//!   when the child exits; its owner (the task awaiting [`Registration::reaped`], or any
//!   caller of [`Registration::try_reaped`]) then collects it itself, exactly as the reaper
//!   thread would (`Registry::collect`). So an exit wakes only the task waiting for it:
//!   before, it woke the reaper thread, which then woke the runtime, two thread wakeups per
//!   exec job that cost about 5% of exec mode's throughput on a 2-CPU machine.
//! - **By the reaper thread**, everything else: orphans it adopted, probes, children whose
//!   owner never waited. Where owners reap (`owners_reap`: pidfds can be opened), it
//!   sweeps every `SWEEP` (20 ms) and no exit wakes it; such a zombie meanwhile holds only
//!   its pid. Where they cannot, it sleeps in a blocking `waitid` until some child has exited
//!   (a SIGCHLD only where it has no child to wait for) and collects every exited child
//!   with `WNOHANG`, routing each worker's status to the task that registered it.
//!
//! # Kill, then reap
//!
//! A pid, and so the id of the process group it leads, can only be reused once its zombie
//! has been reaped. So the reaper does not reap first and ask later: it *peeks* at the next
//! exited child (`waitid(P_ALL, .., WEXITED | WNOHANG | WNOWAIT)`, which leaves it a
//! zombie), and if that child is a registered worker it sends SIGKILL to the worker's
//! process group, and kills its cgroup when it has one, *before* it reaps it
//! (`waitid(P_PID, pid, ..)`, in the same pass: a peek would otherwise see the same zombie
//! again). Group members the worker left behind therefore die while the group's id is still
//! certainly theirs, and nobody needs to signal the group by number after the exit.
//! An owner peeks the same way, at its own child (`waitid(P_PID, pid, .. WNOWAIT)`), and
//! goes on as the reaper would. Inherited orphans (pids nobody registered) are reaped as
//! they come, or at the next sweep.
//!
//! Every reap, an owner's too, happens with the registry locked. Whoever holds the lock
//! therefore sees no child of jobsup reaped meanwhile: a pid still registered is still its
//! worker's, and so is the process group it leads. [`Registration::while_unreaped`] is how
//! the rest of jobsup signals a group by number safely (where a pidfd cannot do it, see
//! [`crate::process::handles`]), and [`Registration::holding_reaper`] how it kills children
//! of jobsup by pid.
//!
//! # Early statuses
//!
//! A child may exit before its spawner has registered it. Its status is then parked,
//! stamped with when it was reaped, and handed over at registration. The spawner takes a
//! timestamp before it clones; a parked status reaped before that cannot be the new
//! child's, since a pid is only reused once its zombie has been reaped. So the lock is
//! never held across a clone, and several threads can spawn at once. Statuses nobody
//! claims (inherited orphans) are dropped after a while. Such a child was reaped before
//! anyone told the reaper it was a worker, so its group was not killed first
//! ([`Reaped::group_killed`] says so): an orphan's group is not jobsup's to kill. But if it
//! led a process group, the reaper opens a pidfd on its zombie first (where pidfds can
//! signal groups) and parks it with the status ([`Registration::take_pidfd`]): through it
//! the owner still reaches what is left of the group, and nothing else.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::unistd::Pid;
use signal_hook::consts::SIGCHLD;
use signal_hook::iterator::Signals;
use tokio::sync::oneshot;

use crate::cgroup::WorkerCgroup;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "signal {s} ({})", signal_name(*s)),
        }
    }
}

/// The conventional name of a signal number, for messages.
pub fn signal_name(sig: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str())
        .unwrap_or("unknown signal")
}

/// A registered child's end, as the reaper saw to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// How it ended.
    pub exit: Exit,
    /// SIGKILL went to its process group while it was still an unreaped zombie. False when
    /// it was reaped before it was registered (or the reaper failed).
    pub group_killed: bool,
    /// Nothing of its tree is left in its cgroup: the cgroup was killed at that moment too,
    /// or it was a pid namespace's init, whose namespace the kernel ended with it.
    pub cgroup_killed: bool,
    /// Its cgroup still held processes of its tree when it was reaped (which the cgroup's
    /// kill then reached): they may still be dying.
    pub left_behind: bool,
}

impl Reaped {
    /// A status collected before its pid was registered: nothing was killed first.
    fn early(exit: Exit) -> Reaped {
        Reaped {
            exit,
            group_killed: false,
            cgroup_killed: false,
            left_behind: false,
        }
    }
}

/// A registered child that has not been reaped yet.
struct Entry {
    /// Which registration this is: a pid registered again (after this child was reaped and
    /// its number reused) is another entry, which the first registration must not take for
    /// its own.
    serial: u64,
    /// Where its status goes; `None` once the reaper thread has failed (the pid is then
    /// never reaped, and stays the child's).
    tx: Option<oneshot::Sender<Reaped>>,
    /// Killed with the child's group, just before the child is reaped. Set through the
    /// registration without the registry's lock (`kill_cgroup_first`), so that the
    /// worker's task never waits for a reap in progress just to name it.
    cgroup: Arc<OnceLock<Arc<WorkerCgroup>>>,
}

/// Who waits for which pid, and the statuses that came before their owner.
#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, Entry>,
    parked: HashMap<i32, (Exit, Instant)>,
    /// pidfds of parked children that led a process group, opened while they were zombies
    /// and handed over with their status: the only way left to name a group whose leader
    /// was reaped before it was registered (a worker that exited at once).
    leaders: HashMap<i32, (OwnedFd, Instant)>,
    /// The reaper thread failed: registrations are answered with a closed channel.
    dead: bool,
    /// The last [`Entry::serial`] given.
    serial: u64,
    /// The reaper thread, where it sweeps: woken early for a registration dropped before
    /// its child was reaped.
    sweeper: Option<std::thread::Thread>,
}

/// How long an unclaimed status is kept: far longer than a spawn takes to register.
const PARKED_FOR: Duration = Duration::from_secs(30);

/// How many [`Registry::leaders`] are kept at most, and for how long: a worker registers
/// within milliseconds; an orphan's pidfd only holds a descriptor.
const LEADERS_MAX: usize = 16;
const LEADER_FOR: Duration = Duration::from_secs(1);

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

/// A handle on the reaper thread's registry.
#[derive(Clone)]
pub struct Reaper {
    registry: Arc<Mutex<Registry>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts the reaper thread. Call before any
    /// child is spawned, and once.
    pub fn start() -> std::io::Result<Reaper> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes plain integers.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Said once, at start: how workers are named when they are signalled.
        tracing::debug!("process handles: {}", crate::process::handles());
        let mut signals = Signals::new([SIGCHLD])?;
        leave_sigchld_to_the_reaper();
        let reaper = Reaper {
            registry: Arc::new(Mutex::new(Registry::default())),
        };
        let registry = Arc::clone(&reaper.registry);
        let thread = std::thread::Builder::new()
            .name("jobsup-reaper".into())
            .spawn(move || {
                let reaping = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    reap_forever(&registry, &mut signals)
                }));
                if reaping.is_err() {
                    // The panic hook has told the pool. Nobody may wait for a status that
                    // will never come: dropping the senders tells every waiter its process
                    // is gone. The entries stay: those pids are never reaped now, so they
                    // (and their groups) stay their workers'.
                    let mut registry = lock(&registry);
                    registry.dead = true;
                    for entry in registry.waiting.values_mut() {
                        entry.tx = None;
                    }
                }
            })?;
        if owners_reap() {
            lock(&reaper.registry).sweeper = Some(thread.thread().clone());
        }
        Ok(reaper)
    }

    /// Routes the exit status of `pid`, a child cloned after `since`, to the returned
    /// registration, even if it has already been reaped.
    pub fn register(&self, pid: i32, since: Instant) -> Registration {
        Registration::new(&self.registry, pid, since)
    }

    /// Kills every child of this process that is still alive (inherited orphans included), so
    /// that jobsup never exits with live children. The reaper collects them. The reaper is
    /// held off meanwhile, so no pid listed is reaped (and reused) before it is signalled.
    pub fn kill_remaining_children(&self) {
        let _held = lock(&self.registry);
        kill_all(&children_of_self());
    }
}

fn sigchld() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGCHLD);
    set
}

/// Blocks SIGCHLD in the calling thread, and so in every thread started from it from now
/// on: the reaper wakes from its `waitid` at an exit, and unblocks SIGCHLD only to wait for
/// one where it has no child to wait for. Else each exit woke whichever thread the kernel
/// picked (the runtime's, a spawner), out of its wait, to run the handler there. Call
/// first thing, before threads start; [`Reaper::start`] calls it too. (Children start with
/// no signal blocked.)
pub fn leave_sigchld_to_the_reaper() {
    let _ = sigchld().thread_block();
}

/// A registered child: the status the reaper routes to it, and the means to act on its pid
/// while that pid is certainly still the child's.
pub struct Registration {
    pid: i32,
    /// Its [`Entry::serial`] (none if its status was there at registration).
    serial: Option<u64>,
    /// The pidfd the reaper opened on it, when it was reaped before it was registered.
    pidfd: Option<OwnedFd>,
    rx: Option<oneshot::Receiver<Reaped>>,
    reaped: Option<Reaped>,
    registry: Arc<Mutex<Registry>>,
    /// Its entry's cgroup slot.
    cgroup: Arc<OnceLock<Arc<WorkerCgroup>>>,
    /// Its pidfd, opened at registration, by which its owner learns of its exit and then
    /// reaps it (see the module's documentation); `None` where [`owners_reap`] says no,
    /// or where its status was already there.
    own: Option<OwnPidfd>,
}

/// A registered child's pidfd, readable once the child has exited: registered with the
/// runtime at the first wait.
enum OwnPidfd {
    Open(OwnedFd),
    Registered(Arc<tokio::io::unix::AsyncFd<OwnedFd>>),
    /// The runtime would not take it: the reaper's sweep brings the status.
    Refused,
}

impl OwnPidfd {
    /// The registered pidfd, registered now if it was not yet: `None` outside a runtime
    /// (then nothing is registered), or where the runtime refused it.
    fn readiness(&mut self) -> Option<Arc<tokio::io::unix::AsyncFd<OwnedFd>>> {
        if tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        match std::mem::replace(self, OwnPidfd::Refused) {
            OwnPidfd::Open(fd) => {
                // SAFETY: the AsyncFd owns `fd`, which stays open, and the same file, for
                // as long as it lives.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(ready) => *self = OwnPidfd::Registered(Arc::new(ready)),
                    Err(e) => tracing::debug!("a child's pidfd cannot be awaited: {e}"),
                }
            }
            other => *self = other,
        }
        match self {
            OwnPidfd::Registered(ready) => Some(Arc::clone(ready)),
            _ => None,
        }
    }
}

/// Whether owners reap their own children, told by a pidfd ([`Registration::reaped`]):
/// where pidfds can be opened. Else every exit is the reaper thread's, awaited as it
/// happens.
pub(crate) fn owners_reap() -> bool {
    static OWNERS: OnceLock<bool> = OnceLock::new();
    *OWNERS.get_or_init(|| {
        !crate::fault::refused("pidfd_open")
            && crate::process::pidfd_open(std::process::id() as i32).is_ok()
    })
}

/// How often the reaper thread sweeps where owners reap their own children: for the
/// statuses nobody registered (orphans it adopted, probes), and any an owner did not wait
/// for. Until then such a child stays a zombie, which holds nothing but its pid.
const SWEEP: Duration = Duration::from_millis(20);

/// Proof, inside [`Registration::while_unreaped`], that the child is not reaped: its pid,
/// and the id of the group it leads, name it and nobody else.
pub struct Unreaped<'r> {
    registry: &'r Registry,
}

impl Unreaped<'_> {
    /// jobsup's own children that nobody registered: the orphans it adopted as subreaper.
    /// Listed with the reaper held off, so each pid stays that child's until the hold ends.
    pub fn strays(&self) -> Vec<i32> {
        let mut kids = children_of_self();
        kids.retain(|p| !self.registry.waiting.contains_key(p));
        kids
    }
}

impl Registration {
    fn new(registry: &Arc<Mutex<Registry>>, pid: i32, since: Instant) -> Registration {
        let cgroup = Arc::new(OnceLock::new());
        let (rx, serial, pidfd, own) = lock(registry).register(pid, since, &cgroup);
        Registration {
            pid,
            serial,
            pidfd,
            rx: Some(rx),
            reaped: None,
            registry: Arc::clone(registry),
            cgroup,
            own,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// How it ended, once the reaper has said so.
    pub fn try_reaped(&mut self) -> Option<Reaped> {
        if self.reaped.is_none() && self.own.is_some() {
            self.collect_own();
        }
        if self.reaped.is_none() {
            if let Some(rx) = &mut self.rx {
                match rx.try_recv() {
                    Ok(reaped) => self.got(reaped),
                    Err(oneshot::error::TryRecvError::Closed) => self.got(Reaper::failed()),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
        }
        self.reaped
    }

    /// Resolves once the child has exited and been reaped. Cancel-safe.
    pub async fn reaped(&mut self) -> Reaped {
        if let Some(reaped) = self.reaped {
            return reaped;
        }
        if let Some(ready) = self.own.as_mut().and_then(OwnPidfd::readiness) {
            if let Some(reaped) = self.reaped_by_owner(&ready).await {
                return reaped;
            }
            // Not to be told: the sweep brings the status.
            self.own = Some(OwnPidfd::Refused);
        }
        let reaped = match self.rx.as_mut() {
            // The reaper only drops a sender after sending, or when its thread failed.
            Some(rx) => rx.await.unwrap_or_else(|_| Reaper::failed()),
            None => Reaper::failed(),
        };
        self.got(reaped);
        reaped
    }

    /// [`Registration::reaped`] by the owner: awaits the pidfd's readiness, then reaps the
    /// child here (unless the reaper's sweep came first: its status is then in the
    /// channel). `None` if the readiness cannot be awaited. Cancel-safe: the registered
    /// pidfd stays.
    async fn reaped_by_owner(
        &mut self,
        ready: &tokio::io::unix::AsyncFd<OwnedFd>,
    ) -> Option<Reaped> {
        loop {
            // A pidfd that was readable at its registration is reported at the runtime's
            // next turn: no look before the wait.
            match ready.readable().await {
                Ok(mut guard) => {
                    if let Some(reaped) = self.try_reaped() {
                        return Some(reaped);
                    }
                    // Readable before the exit: not for a pidfd, but never spin on it.
                    guard.clear_ready();
                }
                Err(_) => return None,
            }
        }
    }

    /// Reaps the child if it has exited, as the reaper thread would ([`Registry::collect`]:
    /// its group and cgroup killed, then the reap), with the registry locked; its status is
    /// then in the channel. Peeked at first (`WNOWAIT`): only an exited child is collected.
    fn collect_own(&mut self) {
        let mut registry = lock(&self.registry);
        if self.entry(&registry).is_none() {
            return;
        }
        // `__WALL` as in `collect`.
        let exited = wait_exited(
            libc::P_PID,
            self.pid as libc::id_t,
            libc::WNOHANG | libc::WNOWAIT | libc::__WALL,
        );
        if matches!(exited, Ok(Some(_))) {
            registry.collect(self.pid, Instant::now);
        }
    }

    fn got(&mut self, reaped: Reaped) {
        self.reaped = Some(reaped);
        self.rx = None;
    }

    /// Runs `f` while the child is certainly not reaped, with the reaper held off: its pid,
    /// and the id of the process group it leads, then name it and nobody else (a zombie's
    /// pid cannot be reused). `None`, without running `f`, once it has been reaped.
    ///
    /// `f` must not call back into the registry (registering, holding the reaper): it runs
    /// with it locked.
    pub fn while_unreaped<R>(&self, f: impl FnOnce(&Unreaped<'_>) -> R) -> Option<R> {
        let registry = lock(&self.registry);
        let unreaped = self.entry(&registry).is_some();
        let result = unreaped.then(|| {
            f(&Unreaped {
                registry: &registry,
            })
        });
        drop(registry);
        result
    }

    /// Runs `f` with the reaper held off: no child of this process is reaped meanwhile, so a
    /// pid `f` finds among them stays that child's until `f` returns. The same rule as for
    /// [`Registration::while_unreaped`] applies to `f`.
    pub fn holding_reaper<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = lock(&self.registry);
        f()
    }

    /// [`Registration::holding_reaper`], given jobsup's own children that nobody
    /// registered (the orphans it adopted, see [`Unreaped::strays`]), listed under the
    /// hold: what to look at for a worker's escaped descendants, rather than every
    /// child of jobsup (every other worker among them).
    pub fn holding_reaper_with_strays<R>(&self, f: impl FnOnce(&[i32]) -> R) -> R {
        let registry = lock(&self.registry);
        let strays = Unreaped {
            registry: &registry,
        }
        .strays();
        f(&strays)
    }

    /// The pidfd the reaper opened on the child while it was a zombie, if it was reaped
    /// before it was registered and led a process group: through it, what is left of that
    /// group can still be signalled (see [`crate::process`]).
    pub fn take_pidfd(&mut self) -> Option<OwnedFd> {
        self.pidfd.take()
    }

    /// Has the reaper kill `cgroup` too, just before it reaps the child (if it has not yet:
    /// [`Reaped::cgroup_killed`] says).
    pub fn kill_cgroup_first(&self, cgroup: &Arc<WorkerCgroup>) {
        let _ = self.cgroup.set(Arc::clone(cgroup));
    }

    /// Its entry, while it is registered and unreaped.
    fn entry<'r>(&self, registry: &'r Registry) -> Option<&'r Entry> {
        let serial = self.serial?;
        registry
            .waiting
            .get(&self.pid)
            .filter(|e| e.serial == serial)
    }
}

impl Drop for Registration {
    /// A child whose owner goes before reaping it is left to the reaper thread's sweep,
    /// which is asked to come now: a probe's child, or a worker whose spawn was abandoned,
    /// is not left a zombie for longer than it takes to exit.
    fn drop(&mut self) {
        if self.own.is_some() && self.try_reaped().is_none() {
            if let Some(sweeper) = &lock(&self.registry).sweeper {
                sweeper.unpark();
            }
        }
    }
}

impl Reaper {
    /// What a waiter is told when the reaper thread failed: its process is certainly not
    /// jobsup's to wait for any more.
    fn failed() -> Reaped {
        Reaped::early(Exit::Signal(libc::SIGKILL))
    }
}

impl Registry {
    /// The channel for `pid`'s status, the serial of its entry if it is waited for, and
    /// the pidfd parked with its status if it had already been reaped.
    fn register(
        &mut self,
        pid: i32,
        since: Instant,
        cgroup: &Arc<OnceLock<Arc<WorkerCgroup>>>,
    ) -> (
        oneshot::Receiver<Reaped>,
        Option<u64>,
        Option<OwnedFd>,
        Option<OwnPidfd>,
    ) {
        let (tx, rx) = oneshot::channel();
        let leader = self.leaders.remove(&pid);
        match self.parked.remove(&pid) {
            Some((exit, reaped)) if reaped >= since => {
                let _ = tx.send(Reaped::early(exit));
                let pidfd = leader.filter(|(_, at)| *at >= since).map(|(fd, _)| fd);
                (rx, None, pidfd, None)
            }
            // None yet, or an earlier process's with the same pid.
            _ => {
                // After a failure nothing is reaped any more: the pid stays the child's, and
                // the closed channel says its status will not come.
                let tx = (!self.dead).then_some(tx);
                self.serial += 1;
                let serial = self.serial;
                self.waiting.insert(
                    pid,
                    Entry {
                        serial,
                        tx,
                        cgroup: Arc::clone(cgroup),
                    },
                );
                // Unreaped (the registry is locked, and every reap happens under it), so
                // the pid is still the child's.
                let own = owners_reap()
                    .then(|| crate::process::pidfd_open(pid).ok())
                    .flatten()
                    .map(OwnPidfd::Open);
                (rx, Some(serial), None, own)
            }
        }
    }

    /// Collects `pid`, which has exited and is still a zombie: for a registered child, first
    /// SIGKILL to its group and its cgroup (while the zombie keeps the group's id from being
    /// reused), then the reap, then the status to its owner; an unregistered one's status is
    /// parked. Called with the registry locked. False if the child could not be reaped.
    fn collect(&mut self, pid: i32, now: impl FnOnce() -> Instant) -> bool {
        let entry = self.waiting.remove(&pid);
        let mut cgroup_killed = false;
        let mut left_behind = false;
        let mut leader = None;
        match &entry {
            // Nothing of a pid namespace's init is left to kill (`launch::is_init`): no
            // `cgroup.events` to open, no kill to send, after each exec job.
            Some(_) if crate::launch::is_init(pid) => cgroup_killed = true,
            Some(entry) => {
                crate::sandbox::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                if let Some(cgroup) = entry.cgroup.get() {
                    left_behind = cgroup.kill();
                    cgroup_killed = true;
                }
            }
            // Perhaps a worker whose spawner has not registered it yet: its group is not
            // killed on a guess (an inherited orphan's is not jobsup's to kill), but while
            // it is a zombie a pidfd still names it, and so its group, for its owner.
            None => leader = self.leader_pidfd(pid),
        }
        // `__WALL`: a child cloned with no exit signal too (none of jobsup's is, once it
        // has exec'd: the kernel then gives it SIGCHLD; but a test's may be).
        let exit = match wait_exited(libc::P_PID, pid as libc::id_t, libc::WNOHANG | libc::__WALL) {
            // A pid namespace's init ends the way its worker did.
            Ok(Some((_, exit))) => crate::launch::init_ended(pid, exit),
            failed => {
                // Only this thread reaps, and it saw the zombie: unreachable in practice.
                tracing::error!(pid, "cannot reap an exited child: {failed:?}");
                if let Some(entry) = entry {
                    self.waiting.insert(pid, entry);
                }
                return false;
            }
        };
        match entry {
            Some(Entry { tx, .. }) => {
                // The owner may have gone already; nothing else to tell.
                if let Some(tx) = tx {
                    let _ = tx.send(Reaped {
                        exit,
                        group_killed: true,
                        cgroup_killed,
                        left_behind,
                    });
                }
            }
            None => {
                let now = now();
                if let Some(fd) = leader {
                    self.leaders.insert(pid, (fd, now));
                }
                self.park(pid, exit, now);
            }
        }
        true
    }

    /// A pidfd on the unregistered zombie `pid`, if it leads a process group, pidfds can
    /// signal groups here, and there is room (see [`LEADERS_MAX`]).
    fn leader_pidfd(&mut self, pid: i32) -> Option<OwnedFd> {
        if *crate::process::handles() != crate::process::Handles::Pidfd {
            return None;
        }
        // A zombie's group is still its own; a worker leads one.
        if nix::unistd::getpgid(Some(Pid::from_raw(pid))) != Ok(Pid::from_raw(pid)) {
            return None;
        }
        if self.leaders.len() >= LEADERS_MAX {
            let now = Instant::now();
            self.leaders
                .retain(|_, (_, at)| now.duration_since(*at) < LEADER_FOR);
            if self.leaders.len() >= LEADERS_MAX {
                return None;
            }
        }
        // The zombie is not reaped (only this thread reaps), so the pid is still its own.
        crate::process::pidfd_open(pid).ok()
    }

    /// Keeps an unclaimed status until its owner registers (or for [`PARKED_FOR`]).
    fn park(&mut self, pid: i32, exit: Exit, now: Instant) {
        tracing::trace!(pid, %exit, "reaped a process nobody has registered (yet)");
        if self.parked.len() >= 64 {
            self.parked
                .retain(|_, (_, at)| now.duration_since(*at) < PARKED_FOR);
        }
        self.parked.insert(pid, (exit, now));
    }
}

/// One exited child, from `waitid(idtype, id, WEXITED | flags)`: its pid and how it ended,
/// or, with `WNOHANG` in `flags`, `None` if no child (of those named) has exited yet
/// (without it, the call waits for one). With `WNOWAIT` the child is left a zombie.
///
/// Read from the raw `siginfo_t`: a child killed by a real-time signal is a status like
/// any other (a conversion to a known `Signal` would fail on it, and lose it).
fn wait_exited(
    idtype: libc::idtype_t,
    id: libc::id_t,
    flags: libc::c_int,
) -> Result<Option<(i32, Exit)>, Errno> {
    loop {
        // SAFETY: siginfo_t is plain C data, for which all zeroes is a valid value (and
        // si_pid 0 is how WNOHANG says "none").
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable siginfo_t for the duration of the call.
        let rc = unsafe { libc::waitid(idtype, id, &mut info, libc::WEXITED | flags) };
        if rc < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
        // SAFETY: waitid either left `info` zeroed or filled in a SIGCHLD siginfo, whose
        // si_pid and si_status are the fields these accessors read.
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return Ok(None);
        }
        let exit = match info.si_code {
            libc::CLD_EXITED => Exit::Code(status),
            // CLD_KILLED, CLD_DUMPED: the only others WEXITED reports.
            _ => Exit::Signal(status),
        };
        return Ok(Some((pid, exit)));
    }
}

/// The reaper thread's loop. It sleeps in a blocking `waitid` (`WNOWAIT`: the child stays
/// a zombie for [`reap_all`]), which the kernel ends at the exit itself: no signal handler
/// runs (SIGCHLD stays blocked in this thread as in every other) and no relay wakes it.
/// With no child at all `waitid` cannot wait, and neither can it for a zombie it failed to
/// reap: then, and only then, the next exit is awaited as a SIGCHLD, unblocked here for
/// that wait alone (a child that exited meanwhile left its signal pending, delivered at
/// the unblock).
fn reap_forever(registry: &Mutex<Registry>, signals: &mut Signals) {
    // One pass first, in case a child already exited.
    let mut stuck = !reap_all(registry);
    // Owners reap what they registered, told by its pidfd: a sweep now and then collects
    // the rest, and no exit wakes this thread.
    if owners_reap() {
        loop {
            std::thread::park_timeout(SWEEP);
            reap_all(registry);
        }
    }
    loop {
        if stuck || !wait_for_an_exit() {
            let _ = sigchld().thread_unblock();
            let _ = signals.wait();
            let _ = sigchld().thread_block();
        }
        stuck = !reap_all(registry);
    }
}

/// Blocks until a child has exited (and leaves it unreaped); false where there is none to
/// wait for (or the wait failed).
fn wait_for_an_exit() -> bool {
    match wait_exited(libc::P_ALL, 0, libc::WNOWAIT) {
        Ok(found) => found.is_some(),
        Err(Errno::ECHILD) => false,
        Err(e) => {
            tracing::error!("waitid failed: {e}");
            false
        }
    }
}

/// Reaps every exited child; false if one could not be (it is still a zombie).
fn reap_all(registry: &Mutex<Registry>) -> bool {
    crate::fault::fault("reaper");
    loop {
        // Peeked with the registry locked: an owner may reap its own child at any other
        // moment, and the zombie seen must still be there when it is collected.
        let mut registry = lock(registry);
        // Which child has exited, leaving it a zombie: until it is reaped its pid is its own.
        let pid = match wait_exited(libc::P_ALL, 0, libc::WNOHANG | libc::WNOWAIT) {
            Ok(Some((pid, _))) => pid,
            Ok(None) | Err(Errno::ECHILD) => return true,
            Err(e) => {
                tracing::error!("waitid failed: {e}");
                return false;
            }
        };
        if !registry.collect(pid, Instant::now) {
            return false;
        }
    }
}
/// Pids of this process's live children, from `/proc/self/task/*/children`.
pub fn children_of_self() -> Vec<i32> {
    children_of("self")
}

/// Pids of `pid`'s live children, from `/proc/PID/task/*/children`.
pub fn children(pid: i32) -> Vec<i32> {
    children_of(&pid.to_string())
}

/// Every descendant of `pid` (not `pid` itself), walking `/proc/PID/task/*/children`.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for child in children_of(&p.to_string()) {
            // A pid cannot be its own ancestor, but /proc is read without a snapshot.
            if !found.contains(&child) && child != pid {
                found.push(child);
                todo.push(child);
            }
        }
    }
    found
}

/// The children jobsup adopted (as subreaper) from worker `worker`, with their own
/// descendants: those of `strays` (jobsup's unregistered children, see
/// [`Registration::holding_reaper_with_strays`]) whose environment still names the worker.
pub fn adopted_from(strays: &[i32], worker: u64) -> Vec<i32> {
    let tag = format!("JOBSUP_WORKER_ID={worker}");
    let mut pids = Vec::new();
    for &child in strays {
        if environ_has(child, tag.as_bytes()) {
            pids.extend(descendants(child));
            pids.push(child);
        }
    }
    pids
}

/// What of worker `worker`'s tree (led by `leader`) was orphaned and adopted by jobsup:
/// the processes under `strays` (jobsup's unregistered children, see [`Unreaped::strays`])
/// that are in `leader`'s process group, and the trees of those whose environment still
/// names the worker.
///
/// Together with `descendants(leader)` this finds every member of the group without a
/// walk of all of `/proc`: a group's members are all in the leader's session, so all were
/// forked inside the leader's tree; one that is no longer the leader's descendant lost an
/// ancestor and was handed to the nearest subreaper above it, which is jobsup.
pub fn orphans_of(strays: &[i32], leader: i32, worker: u64) -> Vec<i32> {
    let tag = format!("JOBSUP_WORKER_ID={worker}");
    let mut found = Vec::new();
    for &stray in strays {
        if environ_has(stray, tag.as_bytes()) {
            found.push(stray);
            found.extend(descendants(stray));
            continue;
        }
        let mut tree = descendants(stray);
        tree.push(stray);
        found.extend(
            tree.into_iter()
                .filter(|&p| stat_fields(p).and_then(|f| f.get(2)?.parse().ok()) == Some(leader)),
        );
    }
    found
}

/// Whether `pid`'s environment holds exactly `var` (`NAME=value`). A zombie's (or another
/// user's) environment cannot be read: false.
pub fn environ_has(pid: i32, var: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|environ| environ.split(|&b| b == 0).any(|v| v == var))
}

/// The members of process group `pgid` other than its leader, from the `pgrp` field of
/// every `/proc/PID/stat`. Only meaningful while the leader is known unreaped (its group's
/// id cannot be reused then).
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            pid != pgid && stat_fields(pid).and_then(|f| f.get(2)?.parse().ok()) == Some(pgid)
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name (the first is the state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// The CPU time (user and system) `pid` has used, with that of its children it has
/// waited for, from `/proc/PID/stat`, in clock ticks. `None` once it is gone.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // utime, stime, cutime, cstime: fields 14 to 17 of proc(5), the state being 3.
    let ticks = fields.get(11..15)?;
    ticks
        .iter()
        .map(|t| t.parse::<u64>().ok())
        .sum::<Option<u64>>()
}

/// The CPU time the process tree under `pid` has used: `pid`'s and each live descendant's
/// own time, plus that of the children each of them has waited for (their `cutime` and
/// `cstime`, which hold nothing of a process still in the tree, so nothing is counted
/// twice). Time of a descendant reaped by someone outside the tree is not seen. `None`
/// once `pid` is gone.
pub fn tree_cpu_time(pid: i32) -> Option<Duration> {
    let mut ticks = cpu_ticks(pid)?;
    for p in descendants(pid) {
        ticks += cpu_ticks(p).unwrap_or(0);
    }
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    Some(Duration::from_micros(ticks.saturating_mul(1_000_000) / hz))
}

/// The number of CPUs online: how many CPU-seconds a process tree can use per second at
/// most.
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// SIGKILL to each pid; "already gone" is success.
pub fn kill_all(pids: &[i32]) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn children_of(pid: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[cfg(test)]
pub(crate) mod testing {
    //! Real processes for the tests of this crate.

    use std::future::Future;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, ChildStdout, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use std::sync::{Arc, Mutex};

    use super::{lock, Exit, Reaped, Reaper, Registration, Registry};

    /// A generous bound for what should take milliseconds.
    pub(crate) const WAIT: Duration = Duration::from_secs(30);

    /// The test binary's one reaper (two would steal each other's statuses).
    pub(crate) fn reaper() -> &'static Reaper {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        REAPER.get_or_init(|| Reaper::start().expect("the reaper starts"))
    }

    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    /// The child's status, within [`WAIT`].
    pub(crate) fn reaped(registration: &mut Registration) -> Reaped {
        block_on(async { tokio::time::timeout(WAIT, registration.reaped()).await })
            .expect("the reaper routes the status")
    }

    /// Polls `cond` every few milliseconds, for at most [`WAIT`].
    pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A registry that no reaper thread reads: what it says is up to the test.
    pub(crate) struct Pretend(Arc<Mutex<Registry>>);

    impl Pretend {
        pub(crate) fn new() -> Pretend {
            Pretend(Arc::new(Mutex::new(Registry::default())))
        }

        pub(crate) fn register(&self, pid: i32, since: Instant) -> Registration {
            Registration::new(&self.0, pid, since)
        }

        /// Says that `pid` has been reaped, as the reaper would.
        pub(crate) fn reaped(&self, pid: i32) {
            let mut registry = lock(&self.0);
            if let Some(super::Entry { tx: Some(tx), .. }) = registry.waiting.remove(&pid) {
                let _ = tx.send(Reaped::early(Exit::Code(0)));
            }
        }
    }

    /// Whether `/proc` has the pid at all (a zombie included).
    pub(crate) fn exists(pid: i32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// A `sh -c script` that leads its own process group and waits for a line on its stdin
    /// (`read go`) where its script says so.
    pub(crate) struct Leader {
        pub(crate) child: Child,
        out: BufReader<ChildStdout>,
        /// Taken before the spawn.
        pub(crate) since: Instant,
    }

    impl Leader {
        pub(crate) fn start(script: &str) -> Leader {
            let since = Instant::now();
            let mut child = Command::new("/bin/sh")
                .args(["-c", script])
                .process_group(0)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("sh starts");
            let out = BufReader::new(child.stdout.take().expect("piped"));
            Leader { child, out, since }
        }

        pub(crate) fn pid(&self) -> i32 {
            self.child.id() as i32
        }

        /// Registered with the test binary's reaper.
        pub(crate) fn register(&self) -> Registration {
            reaper().register(self.pid(), self.since)
        }

        /// The next line it prints, as a pid.
        pub(crate) fn read_pid(&mut self) -> i32 {
            let mut line = String::new();
            self.out.read_line(&mut line).expect("read its output");
            line.trim().parse().expect("a pid")
        }

        /// The next line it prints.
        pub(crate) fn read_line(&mut self) -> String {
            let mut line = String::new();
            self.out.read_line(&mut line).expect("read its output");
            line.trim_end().to_owned()
        }

        /// Lets its `read go` return.
        pub(crate) fn go(&mut self) {
            let stdin = self.child.stdin.as_mut().expect("piped");
            stdin.write_all(b"go\n").expect("write its stdin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    /// A child that exits with `code` at once, cloned with no exit signal: a `waitid(P_ALL)`
    /// without `__WALL` never sees it, and so neither does the test binary's reaper thread.
    fn quiet_child(code: i32) -> i32 {
        extern "C" fn exit_with(code: *mut libc::c_void) -> libc::c_int {
            // SAFETY: the exit system call, in a child that shares this memory and touches
            // none of it.
            unsafe { libc::syscall(libc::SYS_exit, code as usize as libc::c_long) };
            0
        }
        let mut stack = vec![0u8; 64 * 1024];
        let top = stack.as_mut_ptr().wrapping_add(stack.len() - 64);
        // SAFETY: the child runs on `stack`, which outlives it (CLONE_VFORK: this thread
        // waits until it has exited), and makes one system call.
        let pid = unsafe {
            libc::clone(
                exit_with,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK,
                code as usize as *mut libc::c_void,
            )
        };
        assert!(pid > 0, "clone: {}", std::io::Error::last_os_error());
        pid
    }

    #[test]
    fn an_owner_reaps_its_child_itself() {
        // No thread reads this registry, and no thread but the owner's reaps the child.
        let registry = Pretend::new();
        let since = Instant::now();
        let awaited = quiet_child(7);
        let mut registration = registry.register(awaited, since);
        let reaped = block_on(async { tokio::time::timeout(WAIT, registration.reaped()).await })
            .expect("its owner reaps it when its pidfd says it exited");
        assert_eq!(reaped.exit, Exit::Code(7));
        assert!(reaped.group_killed, "killed its group before the reap");
        assert!(!exists(awaited), "reaped, not left a zombie");
        // A look without a wait collects it too.
        let looked_at = quiet_child(9);
        let mut registration = registry.register(looked_at, since);
        wait_until("a look collects the child", || {
            registration.try_reaped().is_some()
        });
        assert_eq!(
            registration.try_reaped().map(|r| r.exit),
            Some(Exit::Code(9))
        );
        assert!(!exists(looked_at));
    }

    #[test]
    fn a_status_reaped_before_registration_is_handed_over() {
        let mut r = Registry::default();
        let since = Instant::now();
        r.park(42, Exit::Code(3), Instant::now());
        let (mut rx, serial, _, _) = r.register(42, since, &Arc::default());
        assert_eq!(rx.try_recv(), Ok(Reaped::early(Exit::Code(3))));
        assert_eq!(serial, None);
        assert!(r.parked.is_empty() && r.waiting.is_empty());
    }

    #[test]
    fn a_status_reaped_before_the_clone_belongs_to_an_earlier_process() {
        let mut r = Registry::default();
        // An orphan with pid 42 was reaped; then a new child got the recycled pid.
        r.park(42, Exit::Signal(9), Instant::now());
        let since = Instant::now() + Duration::from_millis(1);
        let (mut rx, _, _, _) = r.register(42, since, &Arc::default());
        assert!(
            rx.try_recv().is_err(),
            "the orphan's status is not the child's"
        );
        assert!(r.waiting.contains_key(&42), "the child is waited for");
    }

    #[test]
    fn unclaimed_statuses_do_not_pile_up() {
        let mut r = Registry::default();
        let start = Instant::now();
        for pid in 0..1000 {
            r.park(pid, Exit::Code(0), start + PARKED_FOR * pid as u32 / 100);
        }
        assert!(r.parked.len() < 200, "{} parked", r.parked.len());
    }

    #[test]
    fn a_registration_does_not_take_its_successors_for_itself() {
        let registry = Pretend::new();
        let first = registry.register(42, Instant::now());
        registry.reaped(42);
        // The number is reused, and its new holder registered.
        let second = registry.register(42, Instant::now());
        assert_eq!(first.while_unreaped(|_| ()), None);
        assert_eq!(second.while_unreaped(|_| ()), Some(()));
    }

    #[test]
    fn a_group_member_left_behind_is_killed_before_its_leader_is_reaped() {
        let mut leader = Leader::start("sleep 1000 >/dev/null 2>&1 & echo $!; read go; exit 3");
        let mut registration = leader.register();
        let member = leader.read_pid();
        leader.go();
        let reaped = reaped(&mut registration);
        assert_eq!(reaped.exit, Exit::Code(3));
        assert!(reaped.group_killed, "{reaped:?}");
        // Nothing else signals the member: if it dies of SIGKILL, the reaper sent it, and
        // it did so before it reaped the leader (the leader's status came only after).
        // Orphaned to this subreaper, the member is then reaped by the same reaper.
        let mut member = reaper().register(member, leader.since);
        assert_eq!(
            super::testing::reaped(&mut member).exit,
            Exit::Signal(libc::SIGKILL)
        );
    }

    #[test]
    fn an_unregistered_child_is_reaped_without_its_group_being_killed() {
        // An inherited orphan, or a worker that exited before its spawner registered it.
        let mut orphan = Leader::start("sleep 1000 >/dev/null 2>&1 & echo $!; read go; exit 4");
        let member = orphan.read_pid();
        orphan.go();
        let pid = orphan.pid();
        wait_until("the orphan is reaped", || !exists(pid));
        // Its parked status is handed over at registration, marked: nothing was killed.
        let mut registration = orphan.register();
        assert_eq!(
            registration.try_reaped(),
            Some(Reaped::early(Exit::Code(4)))
        );
        // Its group lives on: the member dies of the signal sent to it now, not of a
        // SIGKILL the reaper would have sent before.
        let mut member_registration = reaper().register(member, orphan.since);
        nix::sys::signal::kill(Pid::from_raw(member), nix::sys::signal::Signal::SIGTERM)
            .expect("the member is there");
        assert_eq!(
            reaped(&mut member_registration).exit,
            Exit::Signal(libc::SIGTERM)
        );
    }

    #[test]
    fn a_child_killed_by_a_real_time_signal_is_reported_as_such() {
        let leader = Leader::start("read go");
        let mut registration = leader.register();
        let sig = libc::SIGRTMIN() + 1;
        // SAFETY: kill takes plain integers. The child waits on its stdin, alive and
        // unreaped, so the pid is its own.
        assert_eq!(unsafe { libc::kill(leader.pid(), sig) }, 0);
        assert_eq!(reaped(&mut registration).exit, Exit::Signal(sig));
    }

    #[test]
    fn while_unreaped_runs_only_until_the_child_is_reaped() {
        let mut leader = Leader::start("read go");
        let mut registration = leader.register();
        assert_eq!(registration.while_unreaped(|_| 7), Some(7));
        leader.go();
        reaped(&mut registration);
        assert_eq!(registration.while_unreaped(|_| 7), None);
    }
}
