//! Scheduling priority: the supervisor above its workers, so that a deadline fires on
//! time when the workers keep every CPU busy.
//!
//! jobsup's deadlines are only as punctual as its own threads are scheduled. When the
//! workers saturate the CPUs, an ordinary supervisor competes with them as one task among
//! many and its timers fire tens to hundreds of milliseconds late. Two things keep it
//! ahead:
//!
//! - [`raise_supervisor`]: the calling thread, and every thread it starts afterwards (the
//!   reaper, the spawners, the async runtime), runs under `SCHED_RR` at real-time
//!   priority 2 (1 is for workers being killed), where the kernel permits it (root, `CAP_SYS_NICE`, or an
//!   `RLIMIT_RTPRIO` of at least 1). A real-time thread that wakes preempts every
//!   ordinary task at once; at priority 2 it still yields to nearly every other real-time task
//!   (interrupt threads, watchdogs), and the kernel's real-time throttling
//!   (`sched_rt_runtime_us`) keeps a runaway from taking every cycle. Where that is not
//!   permitted, it lowers the thread's nice value as far as `RLIMIT_NICE` allows (down
//!   to -10), and failing that leaves it as it is. Its timer slack is set to the minimum
//!   either way.
//! - [`WorkerPriority`], applied in each worker between clone and exec
//!   (`WorkerPriority::apply`, the `Priority` step of the child's setup): the worker leaves the real-time class it would inherit,
//!   takes the policy asked for (`SCHED_OTHER`, `SCHED_BATCH`, `SCHED_IDLE`) and a nice
//!   value `nice` levels above jobsup's own (`--nice`). Lowering one's own priority is
//!   always permitted, so this works for every user.

use std::io;

/// How much the supervisor's own threads got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// `SCHED_RR` at this priority.
    RealTime(i32),
    /// No real-time class; this nice value instead.
    Nice(i32),
    /// Nothing: the thread keeps its class and nice value (not permitted, or not asked).
    Unchanged,
}

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Raised::RealTime(p) => write!(f, "real-time (SCHED_RR, priority {p})"),
            Raised::Nice(n) => write!(f, "nice {n} (no real-time class permitted)"),
            Raised::Unchanged => f.write_str("unchanged (no higher priority permitted)"),
        }
    }
}

/// The real-time priority the supervisor takes: just above the lowest, which is what a
/// hard-killed worker gets for its last moments ([`hasten_threads`]), so that jobsup is
/// never queued behind its dying workers; below almost every other real-time task.
const RT_PRIORITY: i32 = 2;

/// The real-time priority of a worker being hard-killed: above every ordinary task, so
/// that it runs (and dies) at once, and below jobsup.
const DYING_PRIORITY: i32 = 1;

/// The lowest nice value the supervisor asks for when it has no real-time class.
const NICE_FLOOR: i32 = -10;

/// Raises the calling thread's scheduling priority, for it and every thread it starts
/// from now on (see the module documentation); `realtime: false` skips the real-time
/// class and tries only the nice value. Call it after starting any process that should
/// not inherit it, and before the threads that should.
pub fn raise_supervisor(realtime: bool) -> Raised {
    // SAFETY: prctl with an integer argument; 1 ns is the smallest slack there is (0
    // would mean "the default").
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    if realtime {
        let param = libc::sched_param {
            sched_priority: RT_PRIORITY,
        };
        // SAFETY: `param` is a valid sched_param; 0 is the calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) } == 0 {
            return Raised::RealTime(RT_PRIORITY);
        }
    }
    let own = own_nice();
    // RLIMIT_NICE allows a nice value down to 20 - rlim_cur without privilege.
    let allowed = rlimit_nice().map_or(own, |lim| 20 - lim);
    let target = NICE_FLOOR.max(allowed.min(own));
    if target < own && set_nice(target).is_ok() {
        return Raised::Nice(target);
    }
    // CAP_SYS_NICE without a real-time class asked for: nice may go lower than the limit.
    if !realtime && set_nice(NICE_FLOOR).is_ok() {
        return Raised::Nice(NICE_FLOOR);
    }
    Raised::Unchanged
}

/// Lets a process group that is being killed die promptly: every thread of every process
/// in group `pgid` goes to nice -20, where jobsup may raise a priority (`CAP_SYS_NICE`;
/// elsewhere this fails and changes nothing).
///
/// A SIGKILL takes effect only when its target next runs. A CPU-bound worker waiting its
/// turn among many others at its own nice value may not run for hundreds of milliseconds
/// (each of N tasks on a CPU gets a slice in turn); at nice -20 it runs next, and exits.
/// Only for a group whose leader is known unreaped (the caller holds the reaper off), so
/// that the number names the worker's group and nobody else's.
pub fn hasten_group(pgid: i32) {
    // SAFETY: setpriority on integers; PRIO_PGRP takes every thread of the group.
    let _ = unsafe { libc::setpriority(libc::PRIO_PGRP, pgid as libc::id_t, -20) };
}

/// [`hasten_group`] for threads named by their ids, as `cgroup.threads` lists them: each
/// was alive when listed, and a thread id is only reused after its process is reaped and
/// the kernel has gone round every other id, so a number read a moment ago names its
/// thread (at worst, a priority is raised for the moment that process lives).
pub fn hasten_threads(tids: &[i32]) {
    let param = libc::sched_param {
        sched_priority: DYING_PRIORITY,
    };
    for &tid in tids {
        // SAFETY: system calls on integers and a valid sched_param.
        unsafe {
            if libc::sched_setscheduler(tid, libc::SCHED_RR, &param) != 0 {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -20);
            }
        }
    }
}

/// Makes every child the calling thread clones from now on start in the ordinary class
/// (`SCHED_RESET_ON_FORK`), where the thread is real-time; whether its children are
/// ordinary, so that a pid namespace's init need not leave the class itself (a
/// `sched_setscheduler` per spawn, about 12 µs of the init's CPU). For the spawner threads,
/// which start no threads of their own (a thread would be reset too).
pub fn children_start_ordinary() -> bool {
    // SAFETY: sched_getscheduler and sched_getparam on the calling thread, into a local.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy < 0 {
            return false;
        }
        if policy & libc::SCHED_RESET_ON_FORK != 0 {
            return true;
        }
        if policy != libc::SCHED_RR && policy != libc::SCHED_FIFO {
            return true;
        }
        let mut param = libc::sched_param { sched_priority: 0 };
        libc::sched_getparam(0, &mut param) == 0
            && libc::sched_setscheduler(0, policy | libc::SCHED_RESET_ON_FORK, &param) == 0
    }
}

/// Puts the calling thread back in the ordinary class (`SCHED_OTHER`, its nice value
/// unchanged), for a jobsup thread whose work nothing waits for: removing a tree a job
/// left behind, at jobsup's real-time priority, would hold a CPU against the threads
/// that keep the deadlines (round robin among equals gives each 100 ms slices).
pub fn leave_real_time() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a valid sched_param; 0 is the calling thread. Leaving a class always works.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

/// The calling thread's nice value.
pub fn own_nice() -> i32 {
    // SAFETY: getpriority on the calling thread; -1 is a valid answer, so errno is cleared
    // first and read after.
    unsafe {
        *libc::__errno_location() = 0;
        let n = libc::getpriority(libc::PRIO_PROCESS, 0);
        if n == -1 && *libc::__errno_location() != 0 {
            return 0;
        }
        n
    }
}

fn set_nice(n: i32) -> io::Result<()> {
    // SAFETY: setpriority on the calling thread.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn rlimit_nice() -> Option<i32> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut lim) } != 0 {
        return None;
    }
    i32::try_from(lim.rlim_cur.min(40)).ok()
}

/// A worker's scheduling class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// `SCHED_OTHER`, the ordinary class.
    Other,
    /// `SCHED_BATCH`: an ordinary task that is taken to be CPU-bound, so it never preempts
    /// another on waking.
    #[default]
    Batch,
    /// `SCHED_IDLE`: runs only when nothing else wants the CPU.
    Idle,
}

impl Policy {
    fn raw(self) -> libc::c_int {
        match self {
            Policy::Other => libc::SCHED_OTHER,
            Policy::Batch => libc::SCHED_BATCH,
            Policy::Idle => libc::SCHED_IDLE,
        }
    }
}

/// How a worker is scheduled: a class, and a nice value, resolved before any spawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPriority {
    /// Its scheduling class.
    pub policy: Policy,
    /// Its nice value (absolute: jobsup's own plus `--nice`, at most 19).
    pub nice: i32,
}

impl WorkerPriority {
    /// `nice` levels below jobsup's main thread, under `policy`.
    pub fn below_supervisor(policy: Policy, nice: u8) -> WorkerPriority {
        WorkerPriority {
            policy,
            nice: (own_nice() + i32::from(nice)).min(19),
        }
    }

    /// Puts the calling process in its class at its nice value: 0, or -1 with errno set.
    ///
    /// Async-signal-safe (two system calls on integers, no allocation), for the child
    /// between clone and exec, which may share the supervisor's memory.
    pub(crate) fn apply(&self) -> libc::c_int {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: system calls on integers and a stack value; 0 is the calling process.
        unsafe {
            if libc::sched_setscheduler(0, self.policy.raw(), &param) != 0 {
                return -1;
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, self.nice)
        }
    }
}

impl Default for WorkerPriority {
    /// An ordinary worker at jobsup's own nice value (what it had before `--nice`).
    fn default() -> Self {
        WorkerPriority {
            policy: Policy::Other,
            nice: own_nice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own, so that nothing it changes reaches other tests.
    fn on_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().unwrap()
    }

    /// Whether this process has `CAP_SYS_NICE` (23) in its effective set.
    fn has_cap_sys_nice() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap();
        eff & (1 << 23) != 0
    }

    #[test]
    fn raising_gives_a_real_time_class_or_says_what_it_gave() {
        let (raised, policy, nice) = on_thread(|| {
            let before = own_nice();
            let raised = raise_supervisor(true);
            // SAFETY: sched_getscheduler on the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            (raised, policy, own_nice() - before)
        });
        match raised {
            Raised::RealTime(_) => assert_eq!(policy, libc::SCHED_RR),
            Raised::Nice(_) => assert!(nice < 0, "nice moved by {nice}"),
            Raised::Unchanged => assert_eq!(nice, 0),
        }
        if has_cap_sys_nice() {
            assert_eq!(raised, Raised::RealTime(RT_PRIORITY));
        }
    }

    #[test]
    fn without_real_time_the_class_stays_ordinary() {
        let (raised, policy) = on_thread(|| {
            let raised = raise_supervisor(false);
            // SAFETY: sched_getscheduler on the calling thread.
            (raised, unsafe { libc::sched_getscheduler(0) })
        });
        assert_eq!(policy, libc::SCHED_OTHER, "{raised}");
        assert!(!matches!(raised, Raised::RealTime(_)));
    }

    #[test]
    fn a_worker_priority_is_clamped_to_the_lowest_nice_value() {
        let p = WorkerPriority::below_supervisor(Policy::Idle, 200);
        assert_eq!(p.nice, 19);
        assert_eq!(p.policy, Policy::Idle);
    }
}
