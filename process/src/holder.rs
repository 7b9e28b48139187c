//! A slot's namespaces, held open across its processes (exec mode, as root).
//!
//! By default every process runs in a pid and a mount namespace of its own (see
//! [`crate::isolate`]). Exec mode starts one process per job, and making those namespaces
//! and tearing them down was the largest part of a job's cost beyond the fork and exec
//! themselves: the mount namespace copied, `/proc` mounted in it, the teardown and the RCU
//! grace period it waits for, the init's clone (about 130 µs of kernel time per job,
//! profiled on Linux 6.18). Here, one process per slot holds them instead:
//!
//! - the **holder** is a pid namespace's init that clones no worker ([`Init::hold`]): it
//!   makes the mount namespace with the namespace's own `/proc` and read-only cgroup file
//!   systems as an init does, closes every fd, and waits for good; the kernel discards its
//!   children's exits (orphans of the slot's jobs are handed to it);
//! - each process of the slot is cloned by a spawner thread whose children go into the
//!   holder's pid namespace ([`ChildrenIn`], `setns(CLONE_NEWPID)`, which a thread may do
//!   and which changes only where its children go); the child enters the holder's mount
//!   namespace and makes a cgroup namespace of its own, rooted at the slot's cgroup. It is
//!   jobsup's own child, as without a namespace: the reaper waits for it, the pidfd names
//!   it, nothing translates its status;
//! - what a process leaves behind is killed through the slot's cgroup (`cgroup.kill`, which
//!   the reaper writes when it sees the cgroup still populated after the exit), where the
//!   end of its own namespace killed it before. So holders are used only where that kill
//!   exists, and the holder is outside the slot's cgroup: the kill does not reach it.
//!
//! What a process sees is what it saw behind its own init: `/proc` lists PID 1 (the
//! holder, named `jobsup-init`) and its own tree, nothing of the host's or of other slots';
//! its parent is outside the namespace (`getppid` says 0, as for a process entered into a
//! container). The slot runs one process at a time, so no two jobs share the namespace at
//! once. `--isolate fs` (a private `/tmp` per process) and `net`, and an unprivileged
//! jobsup (a thread cannot enter a user namespace), keep a namespace per process.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::launch::Init;
use crate::reaper::Registration;

/// The namespaces a holder keeps, for a spawn to start its child into.
pub(crate) struct Namespaces {
    /// Its pid namespace.
    pub(crate) pid: OwnedFd,
    /// Its mount namespace, where it made one.
    pub(crate) mnt: Option<OwnedFd>,
}

/// One slot's holder process.
struct Holder {
    exit: Registration,
    pidfd: Option<OwnedFd>,
    namespaces: Arc<Namespaces>,
}

impl Holder {
    /// Whether it still runs (it can be killed from outside, by a user or the OOM killer:
    /// its namespace then ended with it, and the slot needs a new one).
    fn alive(&mut self) -> bool {
        self.exit.try_reaped().is_none()
    }
}

impl Drop for Holder {
    /// A holder ends with its slot: SIGKILL, which ends its namespace (nothing of the
    /// slot's runs there any more when the slot lets it go).
    fn drop(&mut self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = crate::process::pidfd_send_signal(fd.as_fd(), libc::SIGKILL, 0);
            }
            None => {
                let pid = self.exit.pid();
                self.exit.while_unreaped(|_| {
                    // SAFETY: kill on a pid the reaper holds unreaped, so it is the holder.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                });
            }
        }
    }
}

/// Every slot's holder, by worker id. Each slot's entry has a lock of its own, so that a
/// holder being started (a clone and its setup) holds up no other slot's spawn.
#[derive(Default)]
pub(crate) struct Holders {
    by_slot: Mutex<HashMap<u64, Arc<Mutex<Option<Holder>>>>>,
}

/// A holder just started: its registration with the reaper, its pidfd, and its
/// namespaces.
pub(crate) struct Started {
    pub(crate) exit: Registration,
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) namespaces: Namespaces,
}

impl Holders {
    /// Slot `id`'s namespaces, from its holder, started by `start` if it has none (or its
    /// holder is gone).
    pub(crate) fn for_slot(
        &self,
        id: u64,
        start: impl FnOnce() -> io::Result<Started>,
    ) -> io::Result<Arc<Namespaces>> {
        let entry = Arc::clone(
            self.by_slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id)
                .or_default(),
        );
        let mut slot = entry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(holder) = slot.as_mut() {
            if holder.alive() {
                return Ok(Arc::clone(&holder.namespaces));
            }
        }
        // Dead (or never started): a new one, the old one's registration let go.
        *slot = None;
        let started = start()?;
        let namespaces = Arc::new(started.namespaces);
        *slot = Some(Holder {
            exit: started.exit,
            pidfd: started.pidfd,
            namespaces: Arc::clone(&namespaces),
        });
        Ok(namespaces)
    }

    /// Ends slot `id`'s holder, if it has one.
    pub(crate) fn release(&self, id: u64) {
        let entry = self
            .by_slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(entry) = entry {
            entry.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

/// Whether a spawn can use its slot's holder: its containment can be shared
/// ([`crate::isolate::Prepared::holder_init`]), and its cgroup kills whatever a process
/// leaves behind (`cgroup.kill`).
pub(crate) fn holder_init(
    isolation: Option<&crate::isolate::Prepared>,
    cgroup: Option<&crate::cgroup::WorkerCgroup>,
) -> Option<Init> {
    let init = isolation?.holder_init()?;
    cgroup.is_some_and(|c| c.kills_atomically()).then_some(init)
}

/// While it lives, the calling thread's children are born in another pid namespace
/// (`setns(CLONE_NEWPID)` changes only that, and a thread of a multi-threaded process may
/// make it); on drop they are born in the thread's own again.
pub(crate) struct ChildrenIn<'a> {
    own: BorrowedFd<'a>,
}

impl<'a> ChildrenIn<'a> {
    /// Children of this thread are born in `ns` from now on; `own` is this thread's own
    /// pid namespace, to come back to.
    pub(crate) fn enter(ns: BorrowedFd<'_>, own: BorrowedFd<'a>) -> io::Result<ChildrenIn<'a>> {
        setns_pid(ns.as_raw_fd())?;
        Ok(ChildrenIn { own })
    }
}

impl Drop for ChildrenIn<'_> {
    fn drop(&mut self) {
        // Back to a namespace this thread is in: the kernel allows it whatever happened.
        // Were it refused, this thread's next pid namespace would be refused too (EINVAL),
        // and that spawn would say so.
        if let Err(e) = setns_pid(self.own.as_raw_fd()) {
            tracing::error!("a spawner thread cannot return to its own pid namespace: {e}");
        }
    }
}

fn setns_pid(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns on an fd we borrow; it changes this thread's children's namespace.
    if unsafe { libc::setns(fd, libc::CLONE_NEWPID) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This thread's own pid namespace, to come back to after a [`ChildrenIn`].
pub(crate) fn own_pid_namespace() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/thread-self/ns/pid")?.into())
}
