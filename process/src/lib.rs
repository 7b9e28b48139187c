//! jobsup-process: the Linux process machinery of the jobsup supervisor, behind a small safe
//! API. Every `unsafe` block of the supervisor side lives in this crate.
//!
//! # Theory of operation
//!
//! A [`sandbox::Spawner`] starts worker processes from a few long-lived threads (a child's
//! parent-death signal follows the thread that spawned it, so those threads never exit).
//! Each child is set up between clone and exec in one ordered routine
//! (`sandbox::child_setup`, run by `launch`): session, parent-death signal, cgroups,
//! namespaces ([`isolate`]), the fd table (exactly 0, 1, 2, and 3, 4 in native mode),
//! the directory, resource limits, `no_new_privs`, the parent-death signal again after a
//! namespace change, then exec. A failure before exec comes back as an error naming the
//! stage, never as a processor that "exited 127". The clone hands back a pidfd
//! (`CLONE_PIDFD`) and, where the kernel allows, creates the child straight in its cgroup
//! (`clone3` with `CLONE_INTO_CGROUP`).
//!
//! A started worker is a [`process::Process`]: its pid (which is also its process group),
//! its cgroup where the machine offers one ([`cgroup`]), and its exit status, which the one
//! [`reaper`] thread collects (jobsup is a child subreaper; exactly one party may call
//! `waitpid`). [`process::Process::end`] is the one kill-wait-reap sequence. A `Process`
//! dropped without being ended is killed.
//!
//! No signal reaches a reused pid: the reaper kills a registered worker's group and cgroup
//! just before it reaps the worker (the zombie keeps the group's id its own); other
//! signals go through the worker's pidfd, or by number only while the reaper is held off
//! and the worker unreaped ([`reaper::Registration::while_unreaped`]).
//!
//! The [`guard`] is a small process that outlives a killed supervisor just long enough to
//! kill what its workers left behind and remove their directories; after a normal end the
//! supervisor tells it to make that final pass and waits for it.
//!
//! # Guarantees
//!
//! - No worker outlives the supervisor: parent-death signal for the worker itself, the
//!   guard for its descendants, `--isolate pid` for everything.
//! - A limit a worker is started with is never silently dropped: a worker whose cgroup
//!   limits cannot be set is not started.
//! - Between clone and exec the child (which may share the supervisor's memory) runs no
//!   code that allocates or takes a lock.
//! - The reaper and spawner threads survive a bug in one spawn or reap: a panic there is
//!   an error for that spawn, or answers every waiter that its process is gone, never a
//!   hang.
//! - A worker's fd table is exactly its stdio (and its two protocol fds in native mode).

pub mod cgroup;
pub mod fault;
pub mod fd;
pub mod guard;
pub mod helpers;
pub(crate) mod holder;
pub mod isolate;
pub(crate) mod launch;
pub mod mounts;
pub mod offload;
pub mod priority;
pub mod process;
pub mod reaper;
pub mod sandbox;
pub mod timer;
