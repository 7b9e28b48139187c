//! The input's file descriptor, read so that nothing is taken from it that is not returned.
//!
//! jobsup promises one record per job read. A buffered reader breaks that promise on an
//! interrupted run: the lines it read ahead are gone from the input and never become jobs.
//! [`Input`] takes bytes from the input only as the line reader above it consumes them,
//! and how depends on what the input is (`fstat`):
//!
//! - **A pipe or FIFO** is peeked with `tee(2)` into a private pipe: the peeked bytes are
//!   the window, and a `read(2)` takes exactly the bytes consumed, so a line stays in the
//!   pipe until it is returned. The window is kept between lines, so a short line costs
//!   about one `read`, and the lines consumed together are taken by one.
//! - **A stream socket** is peeked the same way with `recv(MSG_PEEK)`.
//! - **A regular file** is read through a buffer; when the reader is done (end of input,
//!   stop, error or drop) the file offset is set back with `lseek(2)` to just after the
//!   last byte consumed, so whoever reads the file next starts at the first line not taken.
//! - **Anything else** (a terminal, a character device, a datagram socket) is read one
//!   byte at a time: simple, and nothing past the newline is ever taken. Only a line cut
//!   short by a stop has been taken in part, and the reader returns it.
//!
//! A line longer than the window (64 KiB, or whatever a peek can see) is taken in pieces;
//! it is the line being returned anyway. A pipe whose writer stopped in the middle of a
//! line is peeked at again after growing pauses (1 ms up to 50 ms), since `poll` can only
//! wait for a pipe to be non-empty, not for it to grow.
//!
//! Every wait is a `poll(2)` on the input and on the [`Stop`] pipe, so a stop wakes the
//! reader at once. The input's open file description is never changed (no `O_NONBLOCK`):
//! it may be shared with the shell that started jobsup. jobsup must be the input's only
//! reader while it runs; bytes taken that differ from the bytes peeked are an error.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::stat::SFlag;

/// The most bytes looked at beyond what has been taken: a pipe's default capacity.
pub const WINDOW: usize = 64 * 1024;

/// The longest wait between two peeks at a pipe whose writer stopped in the middle of a
/// line (poll cannot wait for a pipe to grow, only for it to be non-empty).
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// A stop request the reader's waits wake up for.
#[derive(Debug)]
pub struct Stop {
    raised: AtomicBool,
    read: OwnedFd,
    write: OwnedFd,
}

impl Stop {
    /// A stop not yet raised.
    pub fn new() -> io::Result<Stop> {
        let (read, write) = jobsup_process::fd::pipe()?;
        Ok(Stop {
            raised: AtomicBool::new(false),
            read,
            write,
        })
    }

    /// Raises the stop: every wait of the reader returns, now and later.
    pub fn raise(&self) {
        if !self.raised.swap(true, Ordering::SeqCst) {
            // One byte leaves the read end readable for good; it cannot fill the pipe.
            let _ = nix::unistd::write(&self.write, b"!");
        }
    }

    /// Whether the stop has been raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }
}

/// What [`Input::fill`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The window grew.
    More,
    /// The window cannot grow until some of it is consumed (a line longer than a peek).
    Full,
    /// No more bytes will come beyond the window.
    Eof,
    /// The stop was raised while waiting.
    Stopped,
}

enum How {
    /// Peek with `tee` into the private pipe `peek_r`/`peek_w`; `full_at`: a peek of at
    /// least this many bytes means the input pipe may be full (see `fill_peeked`).
    Pipe {
        peek_r: File,
        peek_w: OwnedFd,
        full_at: usize,
    },
    /// Peek with `recv(MSG_PEEK)`.
    Socket,
    /// Buffered reads, the offset set back when done.
    File,
    /// One byte per read.
    Bytewise,
}

/// The input, read so that only consumed bytes are taken from it.
///
/// `buf[head..end]` mirrors the input from the first byte not yet taken (for a file or the
/// bytewise kind, from the first byte not yet consumed). Of those, the first `owed` are
/// consumed but not yet taken (peeked kinds only); [`Input::commit`] takes them. The window
/// is what follows.
pub struct Input {
    file: File,
    how: How,
    buf: Vec<u8>,
    head: usize,
    owed: usize,
    end: usize,
    /// The most bytes the window may hold.
    cap: usize,
    eof: bool,
    /// Whether `finish` has set the file offset back.
    finished: bool,
    /// Whether a peek has succeeded (after which tee cannot be given up on).
    peeked: bool,
    scratch: Vec<u8>,
}

impl Input {
    /// Reads `fd`, with a window of at most `window` bytes.
    pub fn new(fd: OwnedFd, window: usize) -> io::Result<Input> {
        let stat = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let mut cap = window.clamp(1, WINDOW);
        let how = if kind == SFlag::S_IFIFO {
            let (peek_r, peek_w) = jobsup_process::fd::pipe()?;
            // A peek sees at most what the private pipe holds (less than 64 KiB for a user
            // past the kernel's pipe-user-pages-soft).
            if let Ok(size) = jobsup_process::fd::pipe_capacity(peek_w.as_fd()) {
                cap = cap.min(size.max(1));
            }
            // A pipe holds its capacity in page-sized slots: once a reader has taken part of
            // the first, a writer may be blocked with up to a page less than that in it.
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()
                .map_or(4096, |p| p.max(1) as usize);
            let full_at = jobsup_process::fd::pipe_capacity(fd.as_fd())
                .map_or(usize::MAX, |size| size.saturating_sub(page).max(1));
            How::Pipe {
                peek_r: File::from(peek_r),
                peek_w,
                full_at,
            }
        } else if kind == SFlag::S_IFSOCK && is_stream_socket(fd.as_fd()) {
            How::Socket
        } else if kind == SFlag::S_IFREG {
            How::File
        } else {
            How::Bytewise
        };
        let scratch = match how {
            How::Pipe { .. } | How::Socket => vec![0; cap],
            How::File | How::Bytewise => Vec::new(),
        };
        Ok(Input {
            file: File::from(fd),
            how,
            buf: vec![0; cap],
            head: 0,
            owed: 0,
            end: 0,
            cap,
            eof: false,
            finished: false,
            peeked: false,
            scratch,
        })
    }

    /// Reads `fd` one byte at a time, whatever it is (to test that way over a pipe).
    #[cfg(test)]
    pub fn bytewise(fd: OwnedFd, window: usize) -> io::Result<Input> {
        let mut input = Input::new(fd, window)?;
        input.how = How::Bytewise;
        Ok(input)
    }

    /// What the input is read as, for messages and tests.
    pub fn kind(&self) -> &'static str {
        match self.how {
            How::Pipe { .. } => "pipe",
            How::Socket => "socket",
            How::File => "file",
            How::Bytewise => "bytewise",
        }
    }

    /// The bytes known to come next, not yet consumed.
    pub fn window(&self) -> &[u8] {
        &self.buf[self.head + self.owed..self.end]
    }

    /// Of the window, how many bytes are already gone from the input (bytewise reads take
    /// each byte as they look at it). A line stopped in the middle must return them.
    pub fn taken_ahead(&self) -> usize {
        match self.how {
            How::Bytewise => self.end - self.head,
            _ => 0,
        }
    }

    /// Consumes the first `n` bytes of the window. For a pipe or a socket they are taken
    /// from the input at the next [`Input::commit`].
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.end - self.head - self.owed);
        match self.how {
            How::Pipe { .. } | How::Socket => self.owed += n,
            How::File | How::Bytewise => self.head += n,
        }
    }

    /// Takes the consumed bytes from the input. An error means the input is not what was
    /// peeked (another reader) or cannot be read.
    pub fn commit(&mut self) -> io::Result<()> {
        if self.owed == 0 {
            return Ok(());
        }
        let (start, n) = (self.head, self.owed);
        let taken = &mut self.scratch[..n];
        read_exact(&self.file, taken)?;
        if taken[..] != self.buf[start..start + n] {
            return Err(io::Error::other(
                "the input changed between peek and read: is another process reading it?",
            ));
        }
        self.head += n;
        self.owed = 0;
        Ok(())
    }

    /// Makes the window grow, waiting for the input if it must; see [`Fill`].
    pub fn fill(&mut self, stop: &Stop) -> io::Result<Fill> {
        if self.eof {
            return Ok(Fill::Eof);
        }
        match self.how {
            How::Pipe { .. } | How::Socket => match self.fill_peeked(stop) {
                Err(e) if self.tee_refused(&e) => {
                    tracing::debug!("cannot peek at the input pipe ({e}): reading it byte by byte");
                    self.how = How::Bytewise;
                    self.fill_bytewise(stop)
                }
                r => r,
            },
            How::File => self.fill_file(),
            How::Bytewise => self.fill_bytewise(stop),
        }
    }

    /// Whether `e` says this kernel (or a seccomp filter) will not let the input pipe be
    /// peeked at, before anything was peeked: then it can still be read byte by byte.
    fn tee_refused(&self, e: &io::Error) -> bool {
        matches!(self.how, How::Pipe { .. })
            && !self.peeked
            && matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)
            )
    }

    fn fill_peeked(&mut self, stop: &Stop) -> io::Result<Fill> {
        let mut known = self.end - self.head;
        let mut backoff = Duration::from_millis(1);
        let mut hung_up = false;
        loop {
            let n = match self.peek()? {
                Some(n) => n,
                None => match wait(self.file.as_fd(), stop, None)? {
                    Ready::Stopped => return Ok(Fill::Stopped),
                    Ready::Input(_) | Ready::Timeout => continue,
                },
            };
            if n == 0 {
                // Empty, and no writer left (or the peer shut its side down).
                self.eof = true;
                return Ok(Fill::Eof);
            }
            if n > known {
                return Ok(Fill::More);
            }
            // Nothing new. Either the window is all a peek can see, or the writer is in the
            // middle of a line, or it has gone.
            // (A pipe that may be full counts as the window being all a peek sees: its
            // writer may be blocked until some of it is read, so waiting would be forever.)
            let pipe_full = matches!(self.how, How::Pipe { full_at, .. } if n >= full_at);
            if n >= self.cap || pipe_full || !matches!(self.queued(), Some(q) if q <= n) {
                if self.owed == 0 {
                    return Ok(Fill::Full);
                }
                // Blank lines consumed before this line take room: take them.
                self.commit()?;
                known = self.end - self.head;
                continue;
            }
            if hung_up {
                // The writers had gone before this peek: what it saw is all there is.
                self.eof = true;
                return Ok(Fill::Eof);
            }
            match wait(self.file.as_fd(), stop, Some(Duration::ZERO))? {
                Ready::Stopped => return Ok(Fill::Stopped),
                Ready::Input(events)
                    if events & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 =>
                {
                    hung_up = true;
                }
                _ => match wait_stop(stop, backoff)? {
                    Ready::Stopped => return Ok(Fill::Stopped),
                    _ => backoff = (backoff * 2).min(MAX_BACKOFF),
                },
            }
        }
    }

    /// Peeks at the input into `buf` (which then mirrors it from its first byte). `None`
    /// when it is empty and a writer is left.
    fn peek(&mut self) -> io::Result<Option<usize>> {
        let n = loop {
            let r = match &self.how {
                How::Pipe { peek_w, .. } => {
                    jobsup_process::fd::tee(self.file.as_fd(), peek_w.as_fd(), self.cap)
                }
                How::Socket => {
                    let cap = self.cap.min(self.buf.len());
                    jobsup_process::fd::peek(self.file.as_fd(), &mut self.buf[..cap])
                }
                How::File | How::Bytewise => return Err(io::ErrorKind::Unsupported.into()),
            };
            match r {
                Ok(n) => break n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(e),
                },
            }
        };
        if let How::Pipe { peek_r, .. } = &self.how {
            // The private pipe was empty; it now holds exactly the n bytes duplicated.
            read_exact(peek_r, &mut self.buf[..n])?;
        }
        // The bytes owed are still the input's first: the mirror starts at them again.
        self.peeked = true;
        self.head = 0;
        self.end = n;
        Ok(Some(n))
    }

    /// Bytes the input holds, when it says (`FIONREAD`).
    fn queued(&self) -> Option<usize> {
        jobsup_process::fd::unread(self.file.as_fd()).ok()
    }

    /// Moves what is left of the window to the front of the buffer when the end is reached,
    /// so that more fits; false when the window is full.
    fn make_room(&mut self) -> bool {
        let pending = self.end - self.head;
        if pending >= self.cap {
            return false;
        }
        if self.end == self.cap {
            self.buf.copy_within(self.head..self.end, 0);
            self.head = 0;
            self.end = pending;
        }
        true
    }

    fn fill_file(&mut self) -> io::Result<Fill> {
        if !self.make_room() {
            return Ok(Fill::Full);
        }
        let n = read_some(&self.file, &mut self.buf[self.end..self.cap])?;
        if n == 0 {
            self.eof = true;
            return Ok(Fill::Eof);
        }
        self.end += n;
        Ok(Fill::More)
    }

    fn fill_bytewise(&mut self, stop: &Stop) -> io::Result<Fill> {
        if !self.make_room() {
            return Ok(Fill::Full);
        }
        loop {
            if let Ready::Stopped = wait(self.file.as_fd(), stop, None)? {
                return Ok(Fill::Stopped);
            }
            let at = self.end;
            match read_some(&self.file, &mut self.buf[at..at + 1]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(Fill::Eof);
                }
                Ok(_) => {
                    self.end += 1;
                    return Ok(Fill::More);
                }
                // Someone else set O_NONBLOCK and the byte went elsewhere: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Leaves a regular file's offset just after the last byte consumed. Once; also on drop.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if let How::File = self.how {
            let unconsumed = self.end - self.head;
            if unconsumed > 0 {
                let back = i64::try_from(unconsumed).map_err(io::Error::other)?;
                self.file.seek(SeekFrom::Current(-back))?;
            }
            self.head = self.end;
        }
        Ok(())
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(
                "cannot set the input file's offset back to the first line not read: {e}"
            );
        }
    }
}

fn is_stream_socket(fd: BorrowedFd<'_>) -> bool {
    jobsup_process::fd::is_stream_socket(fd)
}

/// Reads what comes, retrying on EINTR.
fn read_some(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Reads exactly `buf.len()` bytes that are known to be there.
fn read_exact(mut file: &File, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::other(
                "the input ended before bytes it had shown: is another process reading it?",
            )
        } else {
            e
        }
    })
}

enum Ready {
    /// The input's events.
    Input(libc::c_short),
    Stopped,
    Timeout,
}

/// Waits until `fd` is readable (or hung up), the stop is raised, or `timeout` passes. A
/// raised stop wins over a readable input.
fn wait(fd: BorrowedFd<'_>, stop: &Stop, timeout: Option<Duration>) -> io::Result<Ready> {
    if stop.is_raised() {
        return Ok(Ready::Stopped);
    }
    let mut fds = [
        libc::pollfd {
            fd: stop.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        },
    ];
    poll(&mut fds, timeout)?;
    if fds[0].revents != 0 || stop.is_raised() {
        return Ok(Ready::Stopped);
    }
    if fds[1].revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(if fds[1].revents != 0 {
        Ready::Input(fds[1].revents)
    } else {
        Ready::Timeout
    })
}

/// Waits for the stop alone, at most `timeout`.
fn wait_stop(stop: &Stop, timeout: Duration) -> io::Result<Ready> {
    if stop.is_raised() {
        return Ok(Ready::Stopped);
    }
    let mut fds = [libc::pollfd {
        fd: stop.read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    poll(&mut fds, Some(timeout))?;
    Ok(if fds[0].revents != 0 || stop.is_raised() {
        Ready::Stopped
    } else {
        Ready::Timeout
    })
}

// poll(2), retrying on EINTR (with the whole timeout again: only the backoff and the
// immediate checks have one).
use jobsup_process::fd::poll;

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn queued(file: &File) -> usize {
        jobsup_process::fd::unread(file.as_fd()).expect("FIONREAD")
    }

    /// A writer that stopped in the middle of a line is waited for, and nothing of the line
    /// is taken meanwhile: not when the rest comes, not when a stop does.
    #[test]
    fn half_a_line_in_a_pipe_is_waited_for_and_left_there() {
        let (r, w) = jobsup_process::fd::pipe().unwrap();
        let dup = File::from(r.try_clone().unwrap());
        let mut w = File::from(w);
        let mut input = Input::new(r, WINDOW).unwrap();
        let stop = Stop::new().unwrap();
        w.write_all(b"ab").unwrap();
        assert_eq!(input.fill(&stop).unwrap(), Fill::More);
        assert_eq!(input.window(), b"ab");

        let writer = std::thread::spawn(move || {
            w.write_all(b"cd\n").unwrap();
            w
        });
        while !input.window().contains(&b'\n') {
            assert_eq!(input.fill(&stop).unwrap(), Fill::More);
        }
        assert_eq!(input.window(), b"abcd\n");
        assert_eq!(queued(&dup), 5, "peeking takes nothing");
        input.consume(5);
        input.commit().unwrap();
        assert_eq!(queued(&dup), 0);

        let mut w = writer.join().unwrap();
        w.write_all(b"half").unwrap();
        assert_eq!(input.fill(&stop).unwrap(), Fill::More);
        stop.raise();
        // No growth, and the stop: returns at once, whatever the order.
        assert_eq!(input.fill(&stop).unwrap(), Fill::Stopped);
        assert_eq!(input.taken_ahead(), 0);
        assert_eq!(queued(&dup), 4, "the half line is still in the pipe");
    }

    /// A reader asleep in poll on a pipe that stays empty (and open) wakes at a stop.
    #[test]
    fn a_stop_wakes_a_reader_asleep_on_an_empty_pipe() {
        let (r, w) = jobsup_process::fd::pipe().unwrap();
        let mut input = Input::new(r, WINDOW).unwrap();
        let stop = std::sync::Arc::new(Stop::new().unwrap());
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn({
            let stop = std::sync::Arc::clone(&stop);
            move || {
                tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
                input.fill(&stop).unwrap()
            }
        });
        let tid = tid_rx.recv().unwrap();
        // Nothing it does after sending its id sleeps, except the poll.
        let asleep = || {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|rest| rest.trim_start().starts_with('S'))
                })
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !asleep() {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader never slept"
            );
            std::thread::yield_now();
        }
        stop.raise();
        while !waiter.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the stop did not wake it"
            );
            std::thread::yield_now();
        }
        assert_eq!(waiter.join().unwrap(), Fill::Stopped);
        drop(w);
    }

    /// The end of a pipe with half a line in it is the end of that line.
    #[test]
    fn a_pipe_that_ends_mid_line_ends_the_line() {
        let (r, w) = jobsup_process::fd::pipe().unwrap();
        let mut input = Input::new(r, WINDOW).unwrap();
        let stop = Stop::new().unwrap();
        let mut w = File::from(w);
        w.write_all(b"tail").unwrap();
        drop(w);
        let mut fills = Vec::new();
        loop {
            let fill = input.fill(&stop).unwrap();
            fills.push(fill);
            if fill == Fill::Eof {
                break;
            }
        }
        assert_eq!(input.window(), b"tail", "{fills:?}");
    }

    /// A peek that cannot see the whole line asks for it to be taken in pieces.
    #[test]
    fn a_full_window_asks_to_be_consumed() {
        let (r, w) = jobsup_process::fd::pipe().unwrap();
        let mut input = Input::new(r, 4).unwrap();
        let stop = Stop::new().unwrap();
        File::from(w).write_all(b"abcdefgh").unwrap();
        assert_eq!(input.fill(&stop).unwrap(), Fill::More);
        assert_eq!(input.window(), b"abcd");
        assert_eq!(input.fill(&stop).unwrap(), Fill::Full);
        input.consume(4);
        input.commit().unwrap();
        assert_eq!(input.fill(&stop).unwrap(), Fill::More);
        assert_eq!(input.window(), b"efgh");
    }

    /// A file's offset is left just after the bytes consumed, however far it read ahead.
    #[test]
    fn a_file_is_left_just_after_what_was_consumed() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        file.seek(SeekFrom::Start(2)).unwrap();
        let mut dup = file.try_clone().unwrap();
        let mut input = Input::new(file.into(), WINDOW).unwrap();
        let stop = Stop::new().unwrap();
        assert_eq!(input.fill(&stop).unwrap(), Fill::More);
        assert_eq!(input.window(), b"23456789");
        input.consume(3);
        drop(input);
        assert_eq!(dup.stream_position().unwrap(), 5);
    }
}
