//! Starting one process: clone, set the child up, exec. Used by [`crate::sandbox`] for
//! every worker.
//!
//! `std::process::Command` forks as soon as a `pre_exec` hook is given, and a fork of a
//! multi-threaded supervisor is slow: page tables are copied, every thread's TLB is shot
//! down, and jobsup then takes copy-on-write faults on its own memory. Measured here, a
//! spawn-and-wait of `/bin/true` from a process with 10 MB touched and a few threads takes
//! about 2.0–2.5 ms through fork and 0.9–1.1 ms through `posix_spawn`. So, like
//! `posix_spawn`, the child shares jobsup's memory until it execs (`CLONE_VM |
//! CLONE_VFORK`: the spawning thread waits meanwhile), and runs only async-signal-safe
//! calls on a stack of its own, on data prepared before the clone.
//!
//! Where the caller names a cgroup v2 directory, the clone is a `clone3` with
//! `CLONE_INTO_CGROUP`: the kernel creates the child inside that cgroup, so not one
//! instruction of it runs outside. Kernels without it (`clone3` before 5.7: `ENOSYS`,
//! `E2BIG` or `EINVAL`) and refusals (a cgroup that cannot take the process) fall back to
//! the plain `clone`, and the child is told to join the cgroup itself ([`Born`]).
//! `clone3` has no libc wrapper, and a child that shares the parent's memory must start on
//! its own stack, so it is a few lines of assembly (x86-64 only; other architectures
//! always take the fallback).
//!
//! Either clone asks for a pidfd (`CLONE_PIDFD`, Linux 5.2): a handle on exactly this
//! child that a pid, once reaped and reused, cannot be mistaken for. It is created
//! close-on-exec in jobsup after the child's fd table was copied, so the child never has
//! it.
//!
//! A pid namespace (the default containment, see [`crate::isolate`]) needs an init: PID 1,
//! which must not be the processor (PID 1 gets from outside only the signals it handles,
//! so a processor's default SIGTERM would be ignored, and orphans would pile up as its
//! zombies). The clone then makes the namespaces and the init, still sharing jobsup's
//! memory but not waiting for it (it never execs), on a stack of its own; the init clones
//! the worker (on the spawning thread's stack, which waits for its exec), closes every fd, and reaps
//! until the worker ends. A fork would have given the init a memory of its own, at the
//! price of copying jobsup's (about 1 ms a spawn, measured here); sharing it costs
//! nothing, and jobsup is not dumpable, so that no worker can read or write it through
//! the init's `/proc/1/mem`.
//!
//! A failure in the child is reported through a close-on-exec pipe: the child writes the
//! stage it was at and its errno, and exits with 127; end-of-file means the exec
//! happened. A `CLONE_VFORK` child has written its report, if any, by the time the clone
//! returns, so that pipe is read once without waiting; an init's is read to its end.
//!
//! With the `fault-injection` feature, `JOBSUP_FALLBACK` (a comma-separated list of
//! `clone3`, `close-range`, `proc`) makes jobsup behave as on a kernel without that, so
//! that the tests run every fallback for real.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The fds a child's setup may place (0, 1, 2 and the protocol's 3 and 4): the report
/// pipe is never one of them, so placing them cannot close it.
pub(crate) const PLACED_FDS: RawFd = 5;

/// Everything the child needs for its exec, as C data made before the clone (the child may
/// not allocate: it shares jobsup's heap).
pub struct Plan {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
}

pub(crate) fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} contains a NUL byte", s.to_string_lossy()),
        )
    })
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl Plan {
    /// `program` (a path: no PATH search happens) with `args` and the environment `env`
    /// (later entries replace earlier ones of the same name).
    pub fn new(
        program: &OsStr,
        args: &[OsString],
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> io::Result<Plan> {
        let program = c_string(program)?;
        let argv = std::iter::once(Ok(program.clone()))
            .chain(args.iter().map(|a| c_string(a)))
            .collect::<io::Result<Vec<_>>>()?;
        let env: BTreeMap<OsString, OsString> = env.into_iter().collect();
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                c_string(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Plan {
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            program,
            _argv: argv,
            _envp: envp,
        })
    }
}

/// The child's stack, reused from spawn to spawn (only one thread spawns with it).
pub struct Stack(Vec<u8>);

impl Default for Stack {
    fn default() -> Stack {
        // Setup and exec need little; namespace entry and the shim a little more.
        Stack(vec![0; 256 * 1024])
    }
}

impl Stack {
    /// The lowest address and the usable size, ending 16-byte aligned (as the ABI wants
    /// the stack pointer to start).
    fn bounds(&mut self) -> (*mut libc::c_void, usize) {
        let range = self.0.as_mut_ptr_range();
        let base = range.start as usize;
        let top = range.end as usize & !15;
        (range.start.cast(), top - base)
    }
}

/// Test-only switches that make jobsup behave as on an older or stricter kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fallbacks {
    /// As without `clone3` (or `CLONE_INTO_CGROUP`): the child joins its cgroup itself.
    pub clone3: bool,
    /// As without `close_range`: the fd table is walked in `/proc/self/fd`.
    pub close_range: bool,
    /// As without `close_range` and `/proc`: every fd up to the soft `RLIMIT_NOFILE`.
    pub proc: bool,
}

impl Fallbacks {
    /// From `JOBSUP_FALLBACK`, with the `fault-injection` feature; none otherwise.
    pub(crate) fn from_env() -> Fallbacks {
        #[cfg(feature = "fault-injection")]
        if let Some(list) = std::env::var_os("JOBSUP_FALLBACK") {
            let list = list.to_string_lossy();
            let has = |name: &str| list.split(',').any(|x| x.trim() == name);
            return Fallbacks {
                clone3: has("clone3"),
                close_range: has("close-range"),
                proc: has("proc"),
            };
        }
        Fallbacks::default()
    }

    /// The first way of going over the fd table to try.
    pub(crate) fn fd_method(self) -> FdMethod {
        if self.proc {
            FdMethod::Rlimit
        } else if self.close_range {
            FdMethod::Proc
        } else {
            FdMethod::CloseRange
        }
    }
}

/// How the child learns how it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Born {
    /// `clone3` created it inside the cgroup given to [`launch`] (`CLONE_INTO_CGROUP`): it
    /// is there already and must not join it again.
    pub in_cgroup: bool,
}

/// Where a child failed before exec, as the child reports it: plain data, made without
/// allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageError {
    /// The step it was at.
    pub stage: Stage,
    /// The errno.
    pub errno: i32,
}

impl StageError {
    /// The calling thread's errno, at `stage`.
    pub fn last(stage: Stage) -> StageError {
        StageError {
            stage,
            errno: errno(),
        }
    }

    /// `error`'s errno (`EINVAL` for one without), at `stage`.
    pub fn of(stage: Stage, error: &io::Error) -> StageError {
        StageError {
            stage,
            errno: error.raw_os_error().unwrap_or(libc::EINVAL),
        }
    }
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    // SAFETY: errno is thread-local and always readable.
    unsafe { *libc::__errno_location() }
}

/// A started (or not quite started) child.
#[derive(Debug)]
pub struct Launched {
    /// Its pid; the caller registers it with the reaper whatever `started` says.
    pub pid: i32,
    /// A pidfd for it, where the kernel makes one (close-on-exec, jobsup's only).
    pub pidfd: Option<OwnedFd>,
    /// Whether it reached exec: else where and why not (it then exits with 127).
    pub started: Result<(), Failed>,
    /// `clone3` created it inside the cgroup given to [`launch`] (`CLONE_INTO_CGROUP`).
    pub in_cgroup: bool,
}

/// Where a child says why it could not exec.
#[derive(Clone, Copy)]
enum Report {
    /// The report pipe's write end: for a pid namespace's init and its worker, whose exec
    /// comes after the clone has returned.
    Pipe(RawFd),
    /// A word of the spawning thread's, which a `CLONE_VFORK` child shares until its exec
    /// or its exit, and so has written by the time the clone returns: no pipe to make,
    /// read and close per spawn.
    Memory(*const AtomicU64),
}

/// Set in [`Report::Memory`]'s word once a child wrote its failure there.
const REPORTED: u64 = 1 << 63;

impl Report {
    /// The pipe's fd (-1, which no call accepts, for a report in memory).
    fn fd(self) -> RawFd {
        match self {
            Report::Pipe(fd) => fd,
            Report::Memory(_) => -1,
        }
    }
}

/// What the clone hands the child.
struct Child<'a, F> {
    plan: &'a Plan,
    setup: &'a F,
    report: Report,
    born: Born,
    /// For a pid namespace's init: the top of the stack its worker is cloned on (the
    /// spawning thread's, which waits until the worker has exec'd or exited), where the
    /// init leaves the worker's status, and the fds to close once the worker has exec'd.
    init: Option<InitArgs>,
}

/// See [`Child::init`].
#[derive(Clone, Copy)]
struct InitArgs {
    worker_stack: *mut libc::c_void,
    status: *const AtomicU64,
    fd_method: FdMethod,
    /// The init starts in the ordinary class already ([`children_start_ordinary_here`]).
    ordinary: bool,
    /// [`Init::hold`]: no worker; the init holds its namespaces open.
    hold: bool,
}

std::thread_local! {
    /// This thread's children start in the ordinary class ([`children_start_ordinary_here`]).
    static CHILDREN_ORDINARY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes the calling thread's children start outside the real-time class
/// ([`crate::priority::children_start_ordinary`]) and remembers it, so that the inits it
/// clones skip that step. For a thread that starts no threads (the spawners).
pub(crate) fn children_start_ordinary_here() {
    let ordinary = crate::priority::children_start_ordinary();
    CHILDREN_ORDINARY.with(|c| c.set(ordinary));
}

/// Which part of the setup a child runs (see [`launch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of it: the child execs the processor.
    Whole,
    /// What comes before the worker of a pid namespace is cloned: this child is the
    /// namespace's init, which stays behind.
    Init,
    /// The rest, in the init's one child, which execs the processor.
    Worker,
}

/// A pid namespace for the child (see the module's doc).
#[derive(Debug, Clone, Copy)]
pub struct Init {
    /// The namespaces the clone creates: `CLONE_NEWPID` and those that must come with it
    /// (`CLONE_NEWUSER` for an unprivileged jobsup, `CLONE_NEWNET`).
    pub flags: libc::c_int,
    /// The init clones no worker: once set up it closes every fd and waits for good,
    /// the namespaces' holder, into which later children are started (see
    /// `crate::sandbox`'s `Holder`). Orphans it is handed are reaped by the kernel
    /// (SIGCHLD ignored). It ends by SIGKILL only, or with the namespace's parent.
    pub hold: bool,
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` may work here: false once the kernel said it
/// does not know it.
static CLONE3: AtomicBool = AtomicBool::new(cfg!(target_arch = "x86_64"));

/// `CLONE_INTO_CGROUP` (Linux 5.7), a `clone3`-only flag.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The memory a pid namespace's init runs on: it shares jobsup's, so its stack is its own
/// mapping, kept (with the word where it leaves its worker's status) until the reaper has
/// collected it: only then is it certain that the init runs no more.
struct InitMemory {
    stack: *mut libc::c_void,
    len: usize,
    status: Box<AtomicU64>,
}

// SAFETY: the mapping is only ever unmapped, by whoever holds the value.
unsafe impl Send for InitMemory {}

/// The init's stack: little is done on it (the first part of the setup and a wait loop).
const INIT_STACK: usize = 128 * 1024;

/// The bit that says the init has left a status in [`InitMemory::status`].
const STATUS_SET: u64 = 1 << 32;

/// Inits' memory kept for the next ones (their inits reaped): a spawn then maps nothing,
/// and a reap unmaps nothing. That matters beyond the calls themselves: every init runs
/// on jobsup's memory map, and so does every worker until its exec, which takes the map's
/// lock to leave it; an unmap by the reaper waits for such a worker (an ordinary task,
/// which among busy CPUs may wait long for its turn), and every init's exit, which takes
/// the lock too, waits behind the unmap. With hundreds of killed workers that chain held
/// single kills back by 10-100 ms.
static SPARE_INITS: Mutex<Vec<InitMemory>> = Mutex::new(Vec::new());

/// How many [`SPARE_INITS`] are kept at most: more than the workers of any run that has
/// room in its fd table for them (each is 132 KiB of address space, a page or two of it
/// ever touched).
const SPARE_INITS_MAX: usize = 8192;

impl InitMemory {
    fn new() -> io::Result<InitMemory> {
        if let Some(spare) = SPARE_INITS.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            spare.status.store(0, Ordering::Relaxed);
            return Ok(spare);
        }
        let page = 4096;
        // SAFETY: a fresh anonymous mapping, owned by the value made here.
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                INIT_STACK + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // The lowest page is a guard: an overflow faults instead of writing over jobsup.
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(stack, page, libc::PROT_NONE) } < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: the mapping made above, used by nobody yet.
            unsafe { libc::munmap(stack, INIT_STACK + page) };
            return Err(e);
        }
        Ok(InitMemory {
            stack,
            len: INIT_STACK + page,
            status: Box::new(AtomicU64::new(0)),
        })
    }
}

impl Drop for InitMemory {
    fn drop(&mut self) {
        // SAFETY: our own mapping; its init has been reaped (see [`init_ended`]).
        unsafe { libc::munmap(self.stack, self.len) };
    }
}

/// The memory of every init not yet reaped, by pid. Held across an init's clone until its
/// entry is in, so that the reaper (which asks [`init_ended`] after each reap) cannot miss
/// it however soon the init ends.
static INITS: Mutex<BTreeMap<i32, InitMemory>> = Mutex::new(BTreeMap::new());

/// Whether `pid`, a child not yet reaped, is a pid namespace's init: once it has exited,
/// nothing it started is left anywhere (the kernel ended the namespace, waiting for every
/// member, before the init became a zombie), so neither its group nor its cgroup needs a
/// kill. (An init's entry is in before its clone's lock is let go, see [`INITS`].)
pub(crate) fn is_init(pid: i32) -> bool {
    INITS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&pid)
}

/// How a reaped child ended, for its owner: for a pid namespace's init, how its worker
/// ended (which the init left in its memory before it exited: as PID 1 it cannot die of
/// the same signal), unless the init itself was killed first. Frees an init's memory.
/// Called by whoever reaped `pid`, after the reap.
pub(crate) fn init_ended(pid: i32, exit: crate::reaper::Exit) -> crate::reaper::Exit {
    let memory = INITS.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    let Some(memory) = memory else {
        return exit;
    };
    let word = memory.status.load(Ordering::Acquire);
    let mut spare = SPARE_INITS.lock().unwrap_or_else(|e| e.into_inner());
    if spare.len() < SPARE_INITS_MAX {
        spare.push(memory);
    }
    drop(spare);
    if word & STATUS_SET == 0 {
        // Killed before its worker ended (or failed on its own): its own exit stands.
        return exit;
    }
    let status = word as u32 as libc::c_int;
    if libc::WIFSIGNALED(status) {
        crate::reaper::Exit::Signal(libc::WTERMSIG(status))
    } else {
        crate::reaper::Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// Starts the process: a clone that shares this process's memory until the exec (see the
/// module's doc), then, in the child, the default signal dispositions, `setup`, and the
/// exec of `plan`. `cgroup`, an `O_PATH` fd of a cgroup v2 directory, is where the child
/// is created where the kernel allows it (`setup` is told through [`Born`]).
///
/// With `init`, the child is the init of a new pid namespace: it runs `setup`'s
/// [`Part::Init`], clones the worker (which runs [`Part::Worker`] and execs), closes every
/// fd, and waits, reaping whatever the namespace leaves to it, until the worker has ended;
/// then it exits, which ends everything left in the namespace, and the reaper reports the
/// worker's status as the init's ([`init_ended`]). Otherwise the child runs [`Part::Whole`].
///
/// Returns the pid once the child has exec'd, or the pid and where and why it failed
/// before (the child then exits with 127); either way the caller registers the pid with
/// the reaper. `Err` only when no child was made.
///
/// # Safety
///
/// `setup` runs in the child between clone and exec, where the child shares this
/// process's memory (and so its heap, its locks and its thread-local data) and is the only
/// thread of its process. It must:
/// - make async-signal-safe calls only (no allocation, no lock, no `std` I/O, no logging);
/// - not panic (an unwinding panic there would run this process's panic machinery in the
///   child) and not return into this function's caller in any other way;
/// - not write to memory other than its own locals (the parent's data is shared);
/// - keep fds at and above [`PLACED_FDS`] open, or at least the report pipe (the one fd it
///   did not make), which it only knows to be at or above that number.
///
/// This is the contract of `std`'s `CommandExt::pre_exec`, plus the shared memory.
pub unsafe fn launch<F>(
    plan: &Plan,
    stack: &mut Stack,
    cgroup: Option<BorrowedFd<'_>>,
    fallbacks: Fallbacks,
    init: Option<Init>,
    setup: &F,
) -> io::Result<Launched>
where
    F: Fn(Born, Part) -> Result<(), StageError>,
{
    // A child that shares this thread's wait (`CLONE_VFORK`) has written whatever it had
    // to report by the time the clone returns, into this thread's memory; an init's
    // worker execs later, and its report is waited for on a pipe.
    let reported = AtomicU64::new(0);
    let pipe = init.map(|_| report_pipe()).transpose()?;
    let report = match &pipe {
        Some((_, w)) => Report::Pipe(w.as_raw_fd()),
        None => Report::Memory(&reported),
    };
    let (stack_base, stack_size) = stack.bounds();
    let top = stack_base.wrapping_byte_add(stack_size);
    let memory = init.map(|_| InitMemory::new()).transpose()?;
    let init_args = memory.as_ref().map(|m| InitArgs {
        worker_stack: top,
        status: &*m.status as *const AtomicU64,
        fd_method: fallbacks.fd_method(),
        ordinary: CHILDREN_ORDINARY.with(|c| c.get()),
        hold: init.is_some_and(|i| i.hold),
    });
    // The init runs on its own stack, the others on the spawning thread's.
    let (entry, base, size): (Entry, _, _) = match &memory {
        Some(m) => (init_main::<F>, m.stack, m.len),
        None => (child_main::<F>, stack_base, stack_size),
    };
    let child_top = base.wrapping_byte_add(size);
    // A child that shares this memory and never execs must not make this thread wait.
    let sharing = match init {
        Some(i) => libc::CLONE_VM | i.flags,
        None => libc::CLONE_VM | libc::CLONE_VFORK,
    };
    // No signal handler of jobsup's may run in a child that shares its memory: all
    // signals stay blocked across the clone, and the child resets every handler before
    // it unblocks them. Under an init they stay blocked here until the report's end of
    // file: the init then makes calls of libc that may set errno, which is this thread's
    // (the init runs with its thread pointer), while this thread only waits on a read
    // that no handler can interrupt.
    // SAFETY: zeroed sigsets are valid values, filled and used by the calls below.
    let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: sigset manipulation on local values.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let mut pidfd: libc::c_int = -1;
    let mut clone3_refused = None;
    // Until the init's memory is registered, the reaper cannot translate its status.
    let inits = memory
        .as_ref()
        .map(|_| INITS.lock().unwrap_or_else(|e| e.into_inner()));
    let child_born = |in_cgroup| Child {
        plan,
        setup,
        report,
        born: Born { in_cgroup },
        init: init_args,
    };
    if let Some(cgroup) = cgroup.filter(|_| !fallbacks.clone3 && CLONE3.load(Ordering::Relaxed)) {
        let child = child_born(true);
        let arg: *mut libc::c_void = (&child as *const Child<'_, F>).cast_mut().cast();
        // SAFETY: `entry` runs `setup` under this function's contract; `child` and the
        // stack outlive the child's use of them (this thread waits for the report's end
        // of file below, and with CLONE_VFORK already here, before `child` goes); `pidfd`
        // is a live int; signals are blocked.
        match unsafe { clone3_with(sharing as u64, entry, arg, base, size, cgroup, &mut pidfd) } {
            Ok(pid) => {
                // `child` is kept alive until the end of file, which comes after the
                // child's last use of it.
                let started = after_clone(pipe, &reported, inits, memory, pid, &old);
                return Ok(launched(pid, pidfd, started, true));
            }
            Err(e) => {
                // Not known to this kernel: remembered, and said once. Any other
                // refusal (a cgroup that cannot take the process) is this spawn's.
                if matches!(e, libc::ENOSYS | libc::E2BIG | libc::EINVAL)
                    && CLONE3.swap(false, Ordering::Relaxed)
                {
                    clone3_refused = Some(e);
                }
                pidfd = -1;
            }
        }
    }
    let child = child_born(false);
    let arg: *mut libc::c_void = (&child as *const Child<'_, F>).cast_mut().cast();
    let flags = sharing | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: a valid entry point, a stack that outlives the child's use of it (this
    // thread waits for the report's end of file, and with CLONE_VFORK already here), an
    // argument that lives as long, and `pidfd` for the kernel's CLONE_PIDFD answer (a
    // kernel before 5.2 ignores the flag and leaves it at -1).
    let pid = unsafe {
        libc::clone(
            entry,
            child_top,
            flags,
            arg,
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
        )
    };
    let clone_error = io::Error::last_os_error();
    if pid < 0 {
        drop(inits);
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return Err(clone_error);
    }
    let started = after_clone(pipe, &reported, inits, memory, pid, &old);
    if let Some(e) = clone3_refused {
        tracing::debug!(
            "clone3 with CLONE_INTO_CGROUP refused ({}): workers join their cgroup between clone and exec",
            io::Error::from_raw_os_error(e)
        );
    }
    Ok(launched(pid, pidfd, started, false))
}

fn launched(
    pid: i32,
    pidfd: libc::c_int,
    started: Result<(), Failed>,
    in_cgroup: bool,
) -> Launched {
    Launched {
        pid,
        // SAFETY: a pidfd the kernel just made for this process alone.
        pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        started,
        in_cgroup,
    }
}

/// After a clone that made `pid`: registers an init's memory (from then on the reaper may
/// collect it), reads the child's report with signals still blocked (see [`launch`] and
/// [`read_report`]), then restores the signal mask.
fn after_clone(
    pipe: Option<(OwnedFd, OwnedFd)>,
    reported: &AtomicU64,
    inits: Option<MutexGuard<'_, BTreeMap<i32, InitMemory>>>,
    memory: Option<InitMemory>,
    pid: i32,
    old: &libc::sigset_t,
) -> Result<(), Failed> {
    if let (Some(mut inits), Some(memory)) = (inits, memory) {
        inits.insert(pid, memory);
    }
    let started = match pipe {
        Some((report_r, report_w)) => {
            drop(report_w);
            read_report(&report_r)
        }
        None => memory_report(reported.load(Ordering::Acquire)),
    };
    // SAFETY: restores the mask the caller saved.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
    started
}

/// The report pipe, close-on-exec, its write end at or above [`PLACED_FDS`] so that the
/// child's setup cannot place an fd over it.
fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    if w.as_raw_fd() >= PLACED_FDS {
        return Ok((r, w));
    }
    // SAFETY: duplicating an fd this function owns.
    let high = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, PLACED_FDS) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nothing else.
    Ok((r, unsafe { OwnedFd::from_raw_fd(high) }))
}

/// Reads what the child said: nothing (it exec'd) or its stage and errno. The report is
/// read to its end of file: only then has an init's worker, which was given the spawning
/// thread's stack, stopped using it.
fn read_report(report_r: &OwnedFd) -> Result<(), Failed> {
    let mut report = [0u8; 8];
    let mut got = 0;
    let mut rest = [0u8; 8];
    loop {
        // A report is one 8-byte record; anything after it is not read into it.
        let into: &mut [u8] = if got < report.len() {
            &mut report[got..]
        } else {
            &mut rest
        };
        // SAFETY: reading into a live buffer from an fd this function borrows.
        let n = unsafe { libc::read(report_r.as_raw_fd(), into.as_mut_ptr().cast(), into.len()) };
        match n {
            0 => break,
            n if n > 0 => got = (got + n as usize).min(report.len()),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => {
                return Err(Failed {
                    stage: Stage::Exec,
                    error: io::Error::last_os_error(),
                })
            }
        }
    }
    if got < report.len() && got > 0 {
        return Err(Failed {
            stage: Stage::Exec,
            error: io::Error::other("a child's report was cut short"),
        });
    }
    if got == 0 {
        return Ok(());
    }
    // The child has exited with 127; the reaper collects it.
    let word = |i: usize| i32::from_ne_bytes(report[i..i + 4].try_into().expect("4 bytes"));
    Err(Failed {
        stage: Stage::from_code(word(0)),
        error: io::Error::from_raw_os_error(word(4)),
    })
}

/// What a `CLONE_VFORK` child left in [`Report::Memory`]'s word: nothing (it exec'd, or
/// was killed before it could say) or its stage and errno.
fn memory_report(word: u64) -> Result<(), Failed> {
    if word & REPORTED == 0 {
        return Ok(());
    }
    // The child has exited with 127; the reaper collects it.
    Err(Failed {
        stage: Stage::from_code((word >> 32) as u32 as i32 & i32::MAX),
        error: io::Error::from_raw_os_error(word as u32 as i32),
    })
}

/// The entry point of a child that shares this process's memory, and its argument.
type Entry = extern "C" fn(*mut libc::c_void) -> libc::c_int;

/// `clone3(flags | CLONE_PIDFD | CLONE_INTO_CGROUP)`, `flags` sharing this memory
/// (`CLONE_VM`, with `CLONE_VFORK` or the namespaces of an init), the child running
/// `entry(arg)` on the given stack and exiting with what it returns. Returns the pid, or
/// the errno (no child was made).
///
/// # Safety
/// `entry` must keep `launch`'s contract for `setup` (the child shares this memory);
/// `arg` and the stack must stay valid for as long as the child uses them (until it has
/// exec'd or exited with `CLONE_VFORK`, which makes this thread wait for it); signals must
/// be blocked.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_with(
    flags: u64,
    entry: Entry,
    arg: *mut libc::c_void,
    stack_base: *mut libc::c_void,
    stack_size: usize,
    cgroup: BorrowedFd<'_>,
    pidfd: &mut libc::c_int,
) -> Result<i32, i32> {
    // SAFETY: clone_args is plain integers; zero is "not asked for".
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags | libc::CLONE_PIDFD as u64 | CLONE_INTO_CGROUP;
    args.pidfd = pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    args.stack = stack_base as u64;
    args.stack_size = stack_size as u64;
    args.cgroup = cgroup.as_raw_fd() as u64;
    let ret: i64;
    // SAFETY: the system call reads `args` (alive here) and, in the parent, returns the
    // pid or -errno, clobbering rcx and r11 as every syscall does. The child starts at the
    // same instruction on the new stack (the kernel sets rsp to stack + stack_size) with
    // rax 0 and this thread's other registers: it calls `entry(arg)` (in r12 and r13,
    // which the kernel preserves) and exits with what it returns. It never comes back
    // into this function, so what it does to rbp and its stack is its own.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60", // SYS_exit
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &args as *const libc::clone_args,
            in("rsi") std::mem::size_of::<libc::clone_args>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        Err(-ret as i32)
    } else {
        Ok(ret as i32)
    }
}

/// Elsewhere: as a kernel without `clone3`.
///
/// # Safety
/// None: it makes no child.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_with(
    _flags: u64,
    _entry: Entry,
    _arg: *mut libc::c_void,
    _stack_base: *mut libc::c_void,
    _stack_size: usize,
    _cgroup: BorrowedFd<'_>,
    _pidfd: &mut libc::c_int,
) -> Result<i32, i32> {
    Err(libc::ENOSYS)
}

/// Whether a child that `clone3` creates in `cgroup` (an `O_PATH` fd of a cgroup v2
/// directory) gets to run: it writes a byte to a pipe and exits. Some kernels kill such a
/// child before its first instruction (see `sandbox`), so this is asked before relying on
/// it. Returns the child's pid, for the reaper (`None`: no child was made), and the
/// answer.
pub(crate) fn child_runs_in(cgroup: BorrowedFd<'_>, stack: &mut Stack) -> (Option<i32>, bool) {
    extern "C" fn say_so(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: a write of a static byte to the fd passed as the argument.
        unsafe { libc::write(arg as usize as RawFd, b"1".as_ptr().cast(), 1) };
        0
    }
    if !cfg!(target_arch = "x86_64") {
        return (None, false);
    }
    let Ok((r, w)) = crate::fd::pipe() else {
        return (None, false);
    };
    let (stack_base, stack_size) = stack.bounds();
    let mut pidfd = -1;
    // SAFETY: zeroed sigsets are valid values, filled and used by the calls below.
    let (mut all, mut old): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: signals blocked across the clone as in `launch` (no handler may run in the
    // child); `say_so` makes one async-signal-safe call; the stack and the fd outlive the
    // child, which this thread waits for (CLONE_VFORK).
    let pid = unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = clone3_with(
            (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
            say_so,
            w.as_raw_fd() as usize as *mut libc::c_void,
            stack_base,
            stack_size,
            cgroup,
            &mut pidfd,
        );
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pid
    };
    if pidfd >= 0 {
        // SAFETY: the kernel's new fd, ours alone.
        drop(unsafe { OwnedFd::from_raw_fd(pidfd) });
    }
    let Ok(pid) = pid else {
        return (None, false);
    };
    drop(w);
    let mut byte = 0u8;
    // SAFETY: a one-byte read into a live local from our own pipe; the child has exited
    // (CLONE_VFORK), so it is there or never will be.
    let n = unsafe { libc::read(r.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
    (Some(pid), n == 1)
}

/// Where a child failed before it became the processor, in the order of the child's setup
/// (see `sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Its session and process group.
    Session = 0,
    /// Its parent-death signal.
    ParentDeath = 1,
    /// Joining its cgroups.
    Cgroup = 2,
    /// Entering its namespaces (`--isolate`).
    Namespaces = 3,
    /// Its fd table: the standard fds, the protocol pipes, close-on-exec for the rest.
    Fds = 4,
    /// Entering its working directory.
    Directory = 5,
    /// Its resource limits.
    Limits = 6,
    /// `no_new_privs`.
    Privileges = 7,
    /// Dropping its capabilities (bounding set, ambient, effective, permitted,
    /// inheritable).
    Capabilities = 8,
    /// Taking its user and groups (`--user`).
    Identity = 9,
    /// The exec itself: the processor could not be run.
    Exec = 10,
    /// Its scheduling class and nice value (`--nice`, `--sched`).
    Priority = 11,
}

impl Stage {
    fn from_code(code: i32) -> Stage {
        match code {
            0 => Stage::Session,
            1 => Stage::ParentDeath,
            2 => Stage::Cgroup,
            3 => Stage::Namespaces,
            4 => Stage::Fds,
            5 => Stage::Directory,
            6 => Stage::Limits,
            7 => Stage::Privileges,
            8 => Stage::Capabilities,
            9 => Stage::Identity,
            11 => Stage::Priority,
            _ => Stage::Exec,
        }
    }

    /// What went wrong, for a message; `None` for the exec, which is the processor's.
    pub fn failed(self) -> Option<&'static str> {
        match self {
            Stage::Session => Some("starting its session failed"),
            Stage::ParentDeath => Some("arming its parent-death signal failed"),
            Stage::Cgroup => Some("joining its cgroup failed"),
            Stage::Namespaces => Some("entering its namespaces (--isolate) failed"),
            Stage::Fds => Some("setting up its file descriptors failed"),
            Stage::Directory => Some("entering its working directory failed"),
            Stage::Limits => Some("setting its resource limits failed"),
            Stage::Privileges => Some("setting no_new_privs failed"),
            Stage::Capabilities => Some("dropping its capabilities failed"),
            Stage::Identity => Some("taking its user and groups (--user) failed"),
            Stage::Priority => Some("setting its scheduling class and nice value failed"),
            Stage::Exec => None,
        }
    }
}

/// A child that did not get to exec.
#[derive(Debug)]
pub struct Failed {
    /// Where.
    pub stage: Stage,
    /// Why.
    pub error: io::Error,
}

/// Says where the child failed, on the report pipe or in the spawning thread's word, and
/// exits with 127.
///
/// # Safety
/// In a child before exec: async-signal-safe calls, and a store to the word of
/// [`Report::Memory`], which the spawning thread keeps alive until the clone returns.
unsafe fn fail(report: Report, e: StageError) -> ! {
    // SAFETY: a write from a live local to the report pipe, or an atomic store to a live
    // word, then the exit.
    unsafe {
        match report {
            Report::Pipe(fd) => {
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&(e.stage as i32).to_ne_bytes());
                bytes[4..].copy_from_slice(&e.errno.to_ne_bytes());
                libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            }
            Report::Memory(word) => {
                let code = (e.stage as i32 as u32 as u64) << 32 | e.errno as u32 as u64;
                (*word).store(REPORTED | code, Ordering::Release);
            }
        }
        libc::_exit(127)
    }
}

/// Default dispositions (also for what jobsup ignores, such as SIGPIPE), then no blocked
/// signal: a processor starts as from a shell. First in a child, because until then one
/// of jobsup's handlers could run there, on memory it shares with jobsup. The system call
/// itself: libc's wrapper refuses the two signals it reserves (32 and 33), which an
/// ignoring parent would otherwise pass on.
///
/// # Safety
/// In a child before exec: async-signal-safe calls on locals.
unsafe fn reset_signals() {
    // SAFETY: rt_sigaction and sigprocmask on live locals.
    unsafe {
        for sig in 1..=64 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                set_disposition(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// `part` of the setup, then the exec of the plan; never returns.
///
/// # Safety
/// `child` is the parent's `Child`, alive until this process execs or exits; `setup`
/// keeps the contract of `launch`.
unsafe fn setup_and_exec<F>(child: &Child<'_, F>, part: Part) -> !
where
    F: Fn(Born, Part) -> Result<(), StageError>,
{
    // SAFETY: the caller's contract; async-signal-safe calls on data prepared before the
    // clone.
    unsafe {
        if let Err(e) = (child.setup)(child.born, part) {
            fail(child.report, e);
        }
        let plan = child.plan;
        libc::execve(
            plan.program.as_ptr(),
            plan.argv_ptrs.as_ptr(),
            plan.envp_ptrs.as_ptr(),
        );
        fail(child.report, StageError::last(Stage::Exec))
    }
}

/// The child's side, on the spawning thread's stack (which it shares until it execs).
extern "C" fn child_main<F>(arg: *mut libc::c_void) -> libc::c_int
where
    F: Fn(Born, Part) -> Result<(), StageError>,
{
    // SAFETY: `arg` is the `Child` the parent keeps alive until this process execs or
    // exits (CLONE_VFORK).
    unsafe {
        reset_signals();
        setup_and_exec(&*(arg as *const Child<'_, F>), Part::Whole)
    }
}

/// The worker of a pid namespace's init, on the spawning thread's stack: the spawning
/// thread waits until the report's end of file, which comes at its exec or its exit.
extern "C" fn worker_main<F>(arg: *mut libc::c_void) -> libc::c_int
where
    F: Fn(Born, Part) -> Result<(), StageError>,
{
    // SAFETY: as for `child_main`; the init left the signals as `reset_signals` does.
    unsafe { setup_and_exec(&*(arg as *const Child<'_, F>), Part::Worker) }
}

/// A pid namespace's init, on a stack of its own ([`InitMemory`]): the first part of the
/// setup, the worker's clone, then, holding nothing open, the reaping of every process
/// the namespace leaves to it until the worker has ended. It leaves the worker's status
/// where [`init_ended`] reads it, and exits: the kernel then kills whatever is left in the
/// namespace. A soft signal never reaches it (PID 1 gets from outside only the signals it
/// handles, and it handles none), so it ends only this way or by SIGKILL.
///
/// Once the worker is cloned, this process touches neither the parent's `Child` nor the
/// spawning thread's stack, and makes only calls that do not fail (so that errno, which
/// is that thread's, and the worker's until it execs, is not written).
extern "C" fn init_main<F>(arg: *mut libc::c_void) -> libc::c_int
where
    F: Fn(Born, Part) -> Result<(), StageError>,
{
    // SAFETY: `arg` is the `Child` the parent keeps alive until the report's end of file;
    // async-signal-safe calls only.
    unsafe {
        reset_signals();
        let child = &*(arg as *const Child<'_, F>);
        let report = child.report.fd();
        let Some(args) = child.init else {
            fail(
                child.report,
                StageError::of(Stage::Namespaces, &io::Error::other("no init")),
            )
        };
        if let Err(e) = (child.setup)(child.born, Part::Init) {
            fail(child.report, e);
        }
        // The setup armed the parent-death signal; had jobsup died before, nobody would
        // send it, and `getppid` cannot tell (the parent is outside the namespace: 0).
        // The report pipe can: its read end is jobsup's, and a pipe without a reader
        // polls as an error.
        let mut poll = libc::pollfd {
            fd: report,
            events: libc::POLLOUT,
            revents: 0,
        };
        if libc::poll(&mut poll, 1, 0) < 0 || poll.revents & libc::POLLERR != 0 {
            libc::_exit(1);
        }
        // What a worker sees as its PID 1, and `ps` as the worker's parent.
        libc::prctl(libc::PR_SET_NAME, c"jobsup-init".as_ptr(), 0, 0, 0);
        // Out of the real-time class the spawning thread may be in (see
        // `crate::priority`): nothing of a worker's, its init included, competes with
        // jobsup. (The worker makes its own step, with `--nice` and `--sched`.) Where the
        // spawning thread has its children reset at the clone, that is done already.
        if !args.ordinary {
            let ordinary = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &ordinary);
        }
        if args.hold {
            hold(report, args.fd_method);
        }
        // Not CLONE_VFORK: nothing here waits for the worker's exec (which would cost this
        // process a wakeup, and the spawn a scheduling delay on a busy machine). The
        // worker has its own copy of the fd table, and uses the spawning thread's stack,
        // which this process never touches; the spawning thread waits for the report's
        // end of file, which comes at the worker's exec once this process has closed its
        // own copy. (The one thing both share is errno, the spawning thread's: from here
        // on this process makes only calls that succeed, where `close_range` exists.)
        let worker = libc::clone(
            worker_main::<F>,
            args.worker_stack,
            libc::CLONE_VM | libc::SIGCHLD,
            arg,
        );
        if worker < 0 {
            fail(child.report, StageError::last(Stage::Namespaces));
        }
        // Every fd goes, the report pipe last.
        if close_all_but(report, args.fd_method).is_err() {
            libc::_exit(126);
        }
        libc::close(report);
        let mut status: libc::c_int = 0;
        loop {
            // Nothing can interrupt it (no signal is delivered here but SIGKILL), and
            // there is a child to wait for until the worker has been reaped.
            let reaped = libc::wait4(-1, &mut status, libc::__WALL, std::ptr::null_mut());
            if reaped == worker {
                (*args.status).store(STATUS_SET | status as u32 as u64, Ordering::Release);
                libc::_exit(0);
            }
            if reaped < 0 {
                libc::_exit(126);
            }
        }
    }
}

/// A holder's life ([`Init::hold`]): its children's exits are discarded by the kernel
/// (SIGCHLD ignored: no zombie is left for anybody to reap), every fd goes, the report
/// pipe last (its end of file tells the spawning thread the holder is ready), and it waits
/// for good. No signal from inside the namespace reaches a PID 1 that handles none, and
/// `pause` returns only after a handler ran: only SIGKILL from outside, or the
/// parent-death signal, ends it.
///
/// # Safety
/// In a pid namespace's init, after its setup, with `report` its report pipe.
unsafe fn hold(report: RawFd, method: FdMethod) -> ! {
    // SAFETY: system calls on this process's own dispositions and fds.
    unsafe {
        set_disposition(libc::SIGCHLD, libc::SIG_IGN);
        if close_all_but(report, method).is_err() {
            libc::_exit(126);
        }
        libc::close(report);
        loop {
            libc::pause();
        }
    }
}

/// `sig`'s disposition set to `handler` (`SIG_DFL` or `SIG_IGN`), through the system call
/// itself (see [`reset_signals`]), with no flag and no mask.
///
/// # Safety
/// In a child before exec, or an init: async-signal-safe.
unsafe fn set_disposition(sig: libc::c_int, handler: libc::sighandler_t) {
    let action = KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction on a live local; the old action is not asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        );
    }
}

/// The kernel's `struct sigaction` on x86-64 and aarch64 (not libc's).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// How the fd table is gone over, best first; each falls back to the next where the
/// kernel or the machine lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdMethod {
    /// `close_range` (Linux 5.9; `CLOSE_RANGE_CLOEXEC` 5.11).
    CloseRange,
    /// The entries of `/proc/self/fd`.
    Proc,
    /// Every number below the soft `RLIMIT_NOFILE`.
    Rlimit,
}

/// What is done to each fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdOp {
    /// Mark it close-on-exec (it stays usable until the exec).
    Cloexec,
    /// Close it now.
    Close,
}

/// Marks every fd from `first` up close-on-exec, in the child before exec: the exec then
/// closes them all, while the report pipe stays usable until it. Async-signal-safe and
/// allocation-free.
///
/// # Safety
/// Only in a child between clone and exec (it changes fds it does not own).
pub(crate) unsafe fn cloexec_from(first: RawFd, method: FdMethod) -> io::Result<()> {
    // SAFETY: the caller's contract.
    unsafe { over_fds(first, None, method, FdOp::Cloexec) }
}

/// Closes every fd but `keep`, in a child that will never exec (a pid namespace's init), so
/// that it holds nothing of jobsup's open (other workers' pipes, the report pipe).
/// Async-signal-safe and allocation-free.
///
/// # Safety
/// Only in a child that owns nothing but `keep` (it closes fds it does not own).
pub(crate) unsafe fn close_all_but(keep: RawFd, method: FdMethod) -> io::Result<()> {
    // SAFETY: the caller's contract.
    unsafe { over_fds(0, Some(keep), method, FdOp::Close) }
}

/// `op` on every open fd from `first` up, except `keep`: through `close_range` where the
/// kernel has it, else the entries of `/proc/self/fd`, else every number below the soft
/// `RLIMIT_NOFILE`.
///
/// # Safety
/// The fds concerned must be the caller's to change or close: in a child before exec.
unsafe fn over_fds(
    first: RawFd,
    keep: Option<RawFd>,
    method: FdMethod,
    op: FdOp,
) -> io::Result<()> {
    if method == FdMethod::CloseRange {
        let flags = match op {
            FdOp::Cloexec => libc::CLOSE_RANGE_CLOEXEC,
            FdOp::Close => 0,
        };
        let range = |lo: RawFd, hi: u32| -> io::Result<()> {
            // SAFETY: close_range takes plain integers.
            let rc = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi, flags) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        let result = match keep {
            Some(k) if k >= first => {
                let below = if k > first {
                    range(first, (k - 1) as u32)
                } else {
                    Ok(())
                };
                below.and_then(|()| range(k + 1, u32::MAX))
            }
            _ => range(first, u32::MAX),
        };
        match result {
            // ENOSYS before 5.9, EINVAL for CLOSE_RANGE_CLOEXEC before 5.11.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) => {}
            other => return other,
        }
    }
    if method != FdMethod::Rlimit {
        // SAFETY: the caller's contract.
        // Else no /proc (or no fd left to read it with): every number, then.
        // SAFETY: the caller's contract.
        if unsafe { over_proc_fds(first, keep, op) }.is_ok() {
            return Ok(());
        }
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = limit.rlim_cur.min(libc::c_int::MAX as libc::rlim_t) as RawFd;
    for fd in first.max(0)..end {
        if Some(fd) != keep {
            // SAFETY: the caller's contract; a number that is no fd is EBADF, ignored.
            unsafe { apply(fd, op)? };
        }
    }
    Ok(())
}

/// `op` on one fd; an fd that is not open is no error.
///
/// # Safety
/// `fd` must be the caller's to change or close.
unsafe fn apply(fd: RawFd, op: FdOp) -> io::Result<()> {
    // SAFETY: the caller's contract.
    let rc = unsafe {
        match op {
            FdOp::Cloexec => libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC),
            // Even when close fails (EINTR, EIO), the fd is gone.
            FdOp::Close => {
                libc::close(fd);
                0
            }
        }
    };
    if rc < 0 && errno() != libc::EBADF {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `op` on every fd listed in `/proc/self/fd` from `first` up, except `keep`, read with
/// `getdents64` into a buffer on the stack.
///
/// # Safety
/// As [`over_fds`].
unsafe fn over_proc_fds(first: RawFd, keep: Option<RawFd>, op: FdOp) -> io::Result<()> {
    // SAFETY: a NUL-terminated literal path.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(io::Error::last_os_error());
    }
    // u64 words: linux_dirent64 records are 8-byte aligned.
    let mut buf = [0u64; 256];
    let result = loop {
        // SAFETY: getdents64 writes at most the buffer's size into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                std::mem::size_of_val(&buf),
            )
        };
        if n < 0 {
            break Err(io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        let bytes = buf.as_ptr().cast::<u8>();
        let mut at = 0usize;
        let mut failed = None;
        while at < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type;
            // char d_name[]; }
            // SAFETY: the kernel wrote whole records within the n bytes.
            let (reclen, name) = unsafe {
                let rec = bytes.add(at);
                let reclen = std::ptr::read_unaligned(rec.add(16).cast::<u16>()) as usize;
                (reclen, rec.add(19))
            };
            at += reclen;
            // SAFETY: d_name is NUL-terminated within the record.
            let Some(fd) = (unsafe { parse_fd(name) }) else {
                continue; // "." and ".."
            };
            if fd < first || fd == dir || Some(fd) == keep {
                continue;
            }
            // SAFETY: the caller's contract.
            if let Err(e) = unsafe { apply(fd, op) } {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
    };
    // SAFETY: our own fd.
    unsafe { libc::close(dir) };
    result
}

/// The decimal number a NUL-terminated name spells, if it is one.
///
/// # Safety
/// `name` must point to a NUL-terminated string.
unsafe fn parse_fd(mut name: *const u8) -> Option<RawFd> {
    let mut fd: RawFd = 0;
    let mut digits = 0;
    loop {
        // SAFETY: the caller's: NUL-terminated.
        let c = unsafe { *name };
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() || digits == 9 {
            return None;
        }
        fd = fd * 10 + (c - b'0') as RawFd;
        digits += 1;
        // SAFETY: not past the NUL.
        name = unsafe { name.add(1) };
    }
    (digits > 0).then_some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exit code of the child `pid`, cloned after `since`. This test binary has a
    /// reaper (the reaper's own tests start it), which may reap any child first: so the
    /// status is taken from it, never from a `waitpid` of our own.
    fn exit_code_of(pid: i32, since: std::time::Instant) -> i32 {
        let mut registration = crate::reaper::testing::reaper().register(pid, since);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(reaped) = registration.try_reaped() {
                match reaped.exit {
                    crate::reaper::Exit::Code(code) => return code,
                    other => panic!("child {pid} ended with {other}"),
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Runs `f` in a forked child and returns its exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // Started before the fork, so that the child's status has somewhere to go.
        crate::reaper::testing::reaper();
        let since = std::time::Instant::now();
        // SAFETY: the child only makes system calls and exits.
        match unsafe { libc::fork() } {
            0 => {
                let code = f();
                // SAFETY: leaving the forked copy without running anything of the parent's.
                unsafe { libc::_exit(code) }
            }
            pid => {
                assert!(pid > 0, "fork: {}", io::Error::last_os_error());
                exit_code_of(pid, since)
            }
        }
    }

    /// Opens fds without close-on-exec, in the child, one in each slot of `fds` (on the
    /// stack: a forked child may not allocate). They need not be contiguous: the test
    /// process's other threads may have held fds at the fork, and closed ones leave holes.
    fn open_plain(fds: &mut [RawFd]) {
        for fd in fds.iter_mut() {
            // SAFETY: a literal path; the fd is the child's.
            *fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        }
    }

    fn flags(fd: RawFd) -> libc::c_int {
        // SAFETY: F_GETFD on any number.
        unsafe { libc::fcntl(fd, libc::F_GETFD) }
    }

    fn every_method_marks_the_rest_close_on_exec(method: FdMethod) {
        let code = in_child(|| {
            let stdin = flags(0);
            let mut ours = [0; 40];
            open_plain(&mut ours);
            let low = ours.iter().copied().min().unwrap_or(3);
            if ours.iter().any(|&fd| flags(fd) != 0) {
                return 10;
            }
            // SAFETY: in a forked child that will exit without exec.
            if unsafe { cloexec_from(low, method) }.is_err() {
                return 11;
            }
            if ours.iter().any(|&fd| flags(fd) != libc::FD_CLOEXEC) {
                return 12;
            }
            // Below `first`: untouched.
            if flags(0) != stdin {
                return 13;
            }
            0
        });
        assert_eq!(code, 0, "{method:?}");
    }

    #[test]
    fn close_range_marks_the_rest_close_on_exec() {
        every_method_marks_the_rest_close_on_exec(FdMethod::CloseRange);
    }

    #[test]
    fn the_proc_walk_marks_the_rest_close_on_exec() {
        every_method_marks_the_rest_close_on_exec(FdMethod::Proc);
        // The walk itself, not what it falls back to.
        let code = in_child(|| {
            let mut ours = [0; 300];
            open_plain(&mut ours);
            // SAFETY: in a forked child that will exit without exec.
            if unsafe { over_proc_fds(3, None, FdOp::Cloexec) }.is_err() {
                return 11;
            }
            // Every open fd from 3 up, ours and any the fork copied.
            let high = ours.iter().copied().max().unwrap_or(3);
            if (3..=high).any(|fd| flags(fd) >= 0 && flags(fd) != libc::FD_CLOEXEC) {
                return 12;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn the_rlimit_loop_marks_the_rest_close_on_exec() {
        every_method_marks_the_rest_close_on_exec(FdMethod::Rlimit);
    }

    #[test]
    fn every_method_closes_all_but_the_one_kept() {
        for method in [FdMethod::CloseRange, FdMethod::Proc, FdMethod::Rlimit] {
            let code = in_child(|| {
                let mut ours = [0; 300];
                open_plain(&mut ours);
                let keep = ours[150];
                // SAFETY: in a forked child that will exit without exec.
                if unsafe { close_all_but(keep, method) }.is_err() {
                    return 11;
                }
                // No allocation in a forked child: count instead.
                let open = (0..1024).filter(|&fd| flags(fd) >= 0).count();
                if open != 1 || flags(keep) < 0 {
                    return 12;
                }
                0
            });
            assert_eq!(code, 0, "{method:?}");
        }
    }

    /// Waits through `pidfd` for the process it names to end (a pidfd becomes readable
    /// when its process exits: one naming another process would never be), and returns
    /// that process's exit code, which the reaper collects.
    fn wait_pidfd(pidfd: &OwnedFd, pid: i32, since: std::time::Instant) -> i32 {
        let mut fds = [libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 30_000) };
        assert_eq!(rc, 1, "the pidfd of {pid} never became readable");
        exit_code_of(pid, since)
    }

    fn plan(program: &str) -> Plan {
        Plan::new(OsStr::new(program), &[], std::iter::empty()).expect("a plan")
    }

    /// Both ways a child is made: a plain clone, and a pid namespace's init (where the
    /// test runs as root: elsewhere that takes a user namespace, which the isolation
    /// tests cover).
    fn ways() -> Vec<Option<Init>> {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut ways = vec![None];
        if root {
            ways.push(Some(Init {
                hold: false,
                flags: libc::CLONE_NEWPID,
            }));
        }
        ways
    }

    /// Launches `program` with a `setup` that makes no call of its own (so the contract
    /// of [`launch`] holds), and waits through the child's pidfd for its exit code.
    fn launch_and_wait<F>(program: &str, init: Option<Init>, setup: &F) -> (Launched, i32)
    where
        F: Fn(Born, Part) -> Result<(), StageError>,
    {
        crate::reaper::testing::reaper();
        let since = std::time::Instant::now();
        let mut stack = Stack::default();
        // SAFETY: `setup` makes no system call and does not allocate.
        let mut launched = unsafe {
            launch(
                &plan(program),
                &mut stack,
                None,
                Fallbacks::default(),
                init,
                setup,
            )
        }
        .expect("launch");
        let pidfd = launched
            .pidfd
            .take()
            .expect("no pidfd: this needs Linux 5.2 (CLONE_PIDFD) or 5.3 (pidfd_open)");
        // SAFETY: F_GETFD on our own fd.
        let flags = unsafe { libc::fcntl(pidfd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags, libc::FD_CLOEXEC, "{init:?}: close-on-exec");
        let code = wait_pidfd(&pidfd, launched.pid, since);
        (launched, code)
    }

    #[test]
    fn a_child_comes_with_a_close_on_exec_pidfd_that_names_it() {
        for init in ways() {
            let (launched, code) = launch_and_wait("/bin/true", init, &|_, _| Ok(()));
            assert!(launched.started.is_ok(), "{launched:?}");
            assert_eq!(code, 0, "{init:?}");
            let (_, code) = launch_and_wait("/bin/false", init, &|_, _| Ok(()));
            assert_eq!(code, 1, "{init:?}: the worker's status, not the init's");
        }
    }

    #[test]
    fn a_failure_before_exec_is_reported_with_its_stage() {
        for init in ways() {
            for failing in [Part::Whole, Part::Init, Part::Worker] {
                let refuse = |_: Born, part: Part| {
                    if part == failing {
                        Err(StageError {
                            stage: Stage::Limits,
                            errno: libc::EPERM,
                        })
                    } else {
                        Ok(())
                    }
                };
                let (launched, code) = launch_and_wait("/bin/true", init, &refuse);
                let runs = match init {
                    None => failing == Part::Whole,
                    Some(_) => failing != Part::Whole,
                };
                if !runs {
                    assert!(launched.started.is_ok(), "{init:?} {failing:?}");
                    continue;
                }
                let failed = launched.started.expect_err("the setup failed");
                assert_eq!(failed.stage, Stage::Limits);
                assert_eq!(failed.error.raw_os_error(), Some(libc::EPERM));
                assert_eq!(code, 127, "{init:?} {failing:?}");
            }
            let (launched, code) = launch_and_wait("/no/such/program", init, &|_, _| Ok(()));
            let failed = launched.started.expect_err("no such program");
            assert_eq!(failed.stage, Stage::Exec);
            assert_eq!(failed.error.raw_os_error(), Some(libc::ENOENT));
            assert_eq!(code, 127);
        }
    }

    #[test]
    fn every_stage_survives_the_report_pipe_by_its_code() {
        let all = [
            Stage::Session,
            Stage::ParentDeath,
            Stage::Cgroup,
            Stage::Namespaces,
            Stage::Fds,
            Stage::Directory,
            Stage::Limits,
            Stage::Privileges,
            Stage::Capabilities,
            Stage::Identity,
            Stage::Exec,
            Stage::Priority,
        ];
        for stage in all {
            assert_eq!(Stage::from_code(stage as i32), stage);
            assert_eq!(stage.failed().is_none(), stage == Stage::Exec, "{stage:?}");
        }
    }

    #[test]
    fn fd_names_parse_as_numbers_only() {
        // SAFETY: NUL-terminated literals.
        unsafe {
            assert_eq!(parse_fd(c"0".as_ptr().cast()), Some(0));
            assert_eq!(parse_fd(c"1234".as_ptr().cast()), Some(1234));
            assert_eq!(parse_fd(c".".as_ptr().cast()), None);
            assert_eq!(parse_fd(c"..".as_ptr().cast()), None);
            assert_eq!(parse_fd(c"".as_ptr().cast()), None);
            assert_eq!(parse_fd(c"9999999999".as_ptr().cast()), None);
        }
    }
}
