//! File descriptors as the supervisor uses them: safe wrappers over the few system calls it
//! needs beyond std and nix, so that the supervisor crate itself holds no `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A pipe whose both ends are close-on-exec (a child gets its copies through dup2).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Makes a fresh pipe end non-blocking: `O_NONBLOCK` is then its only status flag, as
/// the other flags `F_SETFL` sets are never on a pipe `pipe` made.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFL sets an open fd's status flags; no memory is passed.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `RLIMIT_NOFILE` jobsup was started with (soft, hard), where
/// [`raise_open_files_limit`] raised its soft limit: what every worker gets back.
static STARTED_WITH: OnceLock<(u64, u64)> = OnceLock::new();

/// The most fds a raised soft limit asks for: the kernel's default `fs.nr_open`, above
/// which `setrlimit` fails whatever the hard limit says.
const OPEN_FILES_MAX: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard one (at most 2^20, `fs.nr_open`), once, at
/// start. Each worker holds about a dozen of jobsup's fds, so the soft limit most
/// sessions start with (1024) runs out at about 80 workers; the hard limit is what the
/// administrator allows, and the soft one only a default for programs that use
/// `select` (which jobsup does not). Workers get the limit jobsup started with back
/// ([`started_with_open_files`]), so a processor sees what it would have seen started
/// by hand. Returns the limits before and after, where it raised them.
pub fn raise_open_files_limit() -> Option<((u64, u64), u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let raised = hard.min(OPEN_FILES_MAX);
    if raised <= soft || setrlimit(Resource::RLIMIT_NOFILE, raised, hard).is_err() {
        return None;
    }
    let _ = STARTED_WITH.set((soft, hard));
    Some(((soft, hard), raised))
}

/// The `RLIMIT_NOFILE` (soft, hard) jobsup started with, where it raised its own.
pub fn started_with_open_files() -> Option<(u64, u64)> {
    STARTED_WITH.get().copied()
}

/// Grows this process's fd table now to hold fds numbered below `fds` (at most the soft
/// `RLIMIT_NOFILE`), by placing one at the top and closing it: the table never shrinks.
/// Call while this is the only thread. Growing a table that threads share waits for an RCU
/// grace period (`expand_fdtable`), milliseconds on a quiet machine, and tens with every
/// CPU busy, and every thread opening an fd meanwhile (the runtime's, arming a deadline)
/// waits with it: with hundreds of workers the table grows while jobs run, and that stall
/// was the hard-kill rows' rare tail.
pub fn reserve_fd_table(fds: usize) {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let top = fds.min(usize::try_from(soft).unwrap_or(usize::MAX));
    let Ok(top) = libc::c_int::try_from(top.saturating_sub(1)) else {
        return;
    };
    if top <= 2 {
        return;
    }
    // SAFETY: duplicating fd 0 (always open: see `open_closed_std_fds`) onto a free number
    // at or above `top`, then closing that new fd, which nothing else knows of.
    unsafe {
        let fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, top);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

/// Keeps the allocator from giving memory back to the kernel, or mapping big blocks of
/// their own, while jobsup runs: each such call takes the memory map's lock for writing,
/// and that lock is shared with every pid namespace's init and every worker until its exec
/// (they run on jobsup's memory, see `launch`), ordinary tasks that on busy CPUs may hold
/// it for milliseconds; whoever takes it after a waiting writer waits too, the exits of
/// killed inits among them. Memory freed is reused for later allocations instead, and the
/// heap grows in steps of [`HEAP_STEP`]: by 128 KiB at a time, the default, a run of 200
/// workers grew it 173 times, and one of those `brk`s held the runtime 11 ms (traced), two
/// deadlines late. Untouched, the step's pages take no memory.
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes plain integers and changes only the allocator's thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TOP_PAD, HEAP_STEP);
    }
}

/// What the allocator adds to each growth of its heap (see [`keep_freed_memory`]).
pub const HEAP_STEP: libc::c_int = 32 << 20;

/// Bytes waiting to be read in a pipe or socket (`FIONREAD`; on a pipe, from either end).
pub fn unread(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid for it; the
    // fd is open for the borrow's lifetime.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The capacity of a pipe (`F_GETPIPE_SZ`).
pub fn pipe_capacity(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ reads an integer property of an open fd; no memory is passed.
    let size = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(size).map_err(|_| io::Error::last_os_error())
}

/// Copies up to `len` bytes from the pipe `from` into the pipe `to` without taking them
/// from `from` (`tee(2)`, non-blocking). Returns how many; 0 at end of file.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: tee takes two open fds and plain integers; it passes no memory.
    let n = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Reads what a stream socket holds into `buf` without taking it (`MSG_PEEK`, without
/// blocking). Returns how many bytes; 0 at end of file.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Whether `fd` is a stream socket.
pub fn is_stream_socket(fd: BorrowedFd<'_>) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one c_int into `kind`; `len` says how big it is, and both
    // pointers are valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_STREAM
}

/// Waits until one of `fds` is ready for what its `events` ask (or has hung up), or until
/// `timeout` (forever with `None`). A signal's interruption is retried.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = match timeout {
        None => -1,
        Some(d) => libc::c_int::try_from(d.as_millis()).unwrap_or(libc::c_int::MAX),
    };
    loop {
        // SAFETY: `fds` is a valid, writable array of `fds.len()` pollfd structs for the
        // duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether the descriptor number `fd` is open in this process.
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of whatever `fd` names, and fails (EBADF) on a
    // number that names nothing; no memory is passed.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Which of fds 0, 1 and 2 were closed when the process started (bit `n` for fd `n`).
///
/// Rust's runtime opens `/dev/null` on a closed standard fd before `main` (so that no
/// later file can take its number), which hides `jobsup run ... >&-`: the records would
/// go to `/dev/null`. So this is seen earlier, by [`CHECK_STD_FDS`].
static CLOSED_AT_START: AtomicU8 = AtomicU8::new(0);

/// Runs before Rust's runtime is set up (an ELF constructor), and only looks.
#[used]
#[link_section = ".init_array"]
static CHECK_STD_FDS: extern "C" fn() = {
    extern "C" fn check() {
        CLOSED_AT_START.store(closed_std_fds(), Ordering::Relaxed);
    }
    check
};

/// The standard fds that are closed now (bit `n` for fd `n`).
fn closed_std_fds() -> u8 {
    (0..3)
        .filter(|&fd| !is_open(fd))
        .fold(0, |closed, fd| closed | 1 << fd)
}

/// Opens `/dev/null` onto every standard fd that is closed (as Rust's runtime already does,
/// unless `main` is reached some other way), so that no file opened later takes fd 0, 1 or
/// 2. Returns the fds that were closed at start, or are now (bit `n` for fd `n`). Call it
/// first thing in `main`.
pub fn open_closed_std_fds() -> u8 {
    // Keeps the constructor linked: its object file is pulled in by this reference.
    std::hint::black_box(&CHECK_STD_FDS);
    let closed = closed_std_fds();
    for fd in (0..3).filter(|fd| closed & 1 << fd != 0) {
        // SAFETY: plain system calls on fds this process owns; the lowest free number is
        // `fd` (the ones below it are open), and dup2 makes sure of it.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if null >= 0 && null != fd {
                libc::dup2(null, fd);
                libc::close(null);
            } else if null == fd {
                // The standard fds must survive exec, for whoever inherits them.
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
        }
    }
    closed | CLOSED_AT_START.load(Ordering::Relaxed)
}

/// Counts every delivery of `sig` into `count`, from inside the signal handler (alongside
/// any other handler registered for it).
pub fn count_signal(
    sig: i32,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> io::Result<()> {
    // SAFETY: the action only does an atomic increment, which is async-signal-safe.
    unsafe {
        signal_hook::low_level::register(sig, move || {
            count.fetch_add(1, Ordering::SeqCst);
        })?;
    }
    Ok(())
}
