//! The supervisor's ends of a worker's pipes: what it reads (frames, lines, or a whole
//! output) and what it writes.
//!
//! Reading is cancel-safe (bytes move into a buffer synchronously once the pipe is
//! readable), so every reader can sit in a `select!`. Writing never blocks the worker task:
//! bytes are queued and written as far as the pipe takes them, and the rest is flushed when
//! the pipe becomes writable again. A worker that stops reading can therefore never stall
//! the supervisor's deadlines.

use std::fs::File;
use std::io;

use bytes::{Buf, BytesMut};
use jobsup_protocol::{Codec, Decoder, FrameError, FromWorker, ToWorker};
use tokio::net::unix::pipe;

/// How much to read from a pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// A pipe read into a buffer.
struct PipeReader {
    rx: pipe::Receiver,
    buf: BytesMut,
    eof: bool,
}

impl PipeReader {
    /// `file` is a pipe's read end from the spawner, non-blocking already
    /// ([`crate::sandbox::Pipes`]).
    fn new(file: File) -> io::Result<PipeReader> {
        Ok(PipeReader {
            rx: pipe::Receiver::from_file_unchecked(file)?,
            buf: BytesMut::with_capacity(READ_CHUNK),
            eof: false,
        })
    }

    /// Waits until the pipe is readable and moves what it holds into the buffer.
    async fn fill(&mut self) -> io::Result<()> {
        self.rx.readable().await?;
        self.buf.reserve(READ_CHUNK);
        // Synchronous after the await: nothing is lost if the caller's select drops this
        // future while it waits.
        match self.rx.try_read_buf(&mut self.buf) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Moves what the pipe holds now into the buffer, without waiting; returns whether
    /// anything (or the end of the stream) came.
    ///
    /// Reads the pipe directly rather than through the reactor, whose notion of readiness
    /// can lag behind: when the reaper reports a worker's exit, or a deadline fires, what
    /// the worker wrote just before is in the kernel's buffer even if the reactor has not
    /// polled yet, and it must count.
    fn fill_now(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut chunk = [0u8; 16 * 1024];
        match nix::unistd::read(&self.rx, &mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(nix::errno::Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Frames from a native worker (its fd 4).
pub struct Inbox {
    pipe: PipeReader,
    decoder: Decoder<FromWorker>,
}

impl Inbox {
    /// Wraps the read end of a result pipe. Must be called inside the runtime.
    pub fn new(file: File, codec: Codec) -> io::Result<Inbox> {
        Ok(Inbox {
            pipe: PipeReader::new(file)?,
            decoder: codec.decoder(),
        })
    }

    /// Whether the worker's end is closed and every frame has been taken.
    pub fn at_eof(&self) -> bool {
        self.pipe.eof && self.pipe.buf.is_empty()
    }

    /// The next frame; `Ok(None)` at end of stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<FromWorker>, FrameError> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.pipe.buf)? {
                return Ok(Some(msg));
            }
            if self.pipe.eof {
                return self.decoder.decode_eof(&mut self.pipe.buf);
            }
            self.pipe.fill().await?;
        }
    }

    /// A frame that is already in the pipe, without waiting.
    pub fn try_next(&mut self) -> Result<Option<FromWorker>, FrameError> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.pipe.buf)? {
                return Ok(Some(msg));
            }
            if self.pipe.eof {
                return self.decoder.decode_eof(&mut self.pipe.buf);
            }
            if !self.pipe.fill_now()? {
                return Ok(None);
            }
        }
    }
}

/// A line longer than the limit.
#[derive(Debug, thiserror::Error)]
#[error("a result line longer than {max} bytes (--max-output)")]
pub struct LineTooLong {
    /// The limit.
    pub max: usize,
}

/// Lines from a line worker's stdout.
pub struct LineReader {
    pipe: PipeReader,
    max: usize,
}

impl LineReader {
    /// Wraps the read end of a worker's stdout. Must be called inside the runtime.
    pub fn new(file: File, max: usize) -> io::Result<LineReader> {
        Ok(LineReader {
            pipe: PipeReader::new(file)?,
            max,
        })
    }

    /// Whether the stream has ended and every line has been taken.
    pub fn at_eof(&self) -> bool {
        self.pipe.eof && self.pipe.buf.is_empty()
    }

    /// Whether a whole line is already in the pipe, without taking it.
    pub fn line_waiting(&mut self) -> bool {
        let _ = self.pipe.fill_now();
        self.pipe.buf.contains(&b'\n') || (self.pipe.eof && !self.pipe.buf.is_empty())
    }

    /// The next line, without its newline; `Ok(None)` at end of stream. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        loop {
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
            if self.pipe.eof {
                return Ok(None);
            }
            if self.pipe.fill().await.is_err() {
                self.pipe.eof = true;
            }
        }
    }

    /// A line that is already in the pipe, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        loop {
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
            match self.pipe.fill_now() {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(_) => self.pipe.eof = true,
            }
        }
    }

    fn take_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        let buf = &mut self.pipe.buf;
        let line = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let mut line = buf.split_to(i + 1);
                line.truncate(i);
                line
            }
            // A last line without a newline still counts.
            None if self.pipe.eof && !buf.is_empty() => buf.split(),
            None if buf.len() > self.max => return Err(LineTooLong { max: self.max }),
            None => return Ok(None),
        };
        let mut line = line.to_vec();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max {
            return Err(LineTooLong { max: self.max });
        }
        Ok(Some(line))
    }
}

/// The whole stdout of a one-job process, up to a limit.
pub struct Capture {
    pipe: PipeReader,
    max: usize,
}

/// Output past the limit.
#[derive(Debug, thiserror::Error)]
#[error("the output exceeds the limit of {max} bytes (--max-output)")]
pub struct TooMuchOutput {
    /// The limit.
    pub max: usize,
}

impl Capture {
    /// Wraps the read end of a process's stdout. Must be called inside the runtime.
    pub fn new(file: File, max: usize) -> io::Result<Capture> {
        Ok(Capture {
            pipe: PipeReader::new(file)?,
            max,
        })
    }

    /// Whether the stream has ended.
    pub fn at_eof(&self) -> bool {
        self.pipe.eof
    }

    /// Reads until the end of the stream. Cancel-safe.
    pub async fn read_to_end(&mut self) -> Result<(), TooMuchOutput> {
        while !self.pipe.eof {
            if self.pipe.fill().await.is_err() {
                self.pipe.eof = true;
            }
            self.check()?;
        }
        Ok(())
    }

    /// Takes what is in the pipe now, without waiting.
    pub fn read_now(&mut self) -> Result<(), TooMuchOutput> {
        while let Ok(true) = self.pipe.fill_now() {
            self.check()?;
        }
        self.check()
    }

    fn check(&self) -> Result<(), TooMuchOutput> {
        if self.pipe.buf.len() > self.max {
            Err(TooMuchOutput { max: self.max })
        } else {
            Ok(())
        }
    }

    /// The output so far, at most the limit of it.
    pub fn take(&mut self) -> Vec<u8> {
        let mut out = self.pipe.buf.split().to_vec();
        out.truncate(self.max);
        out
    }
}

/// Bytes to a worker: frames on its fd 3, or lines and payloads on its stdin.
pub struct Writer {
    tx: Option<pipe::Sender>,
    pending: BytesMut,
    close_when_flushed: bool,
}

impl Writer {
    /// Wraps the write end of a pipe from the spawner, non-blocking already
    /// ([`crate::sandbox::Pipes`]). Must be called inside the runtime.
    pub fn new(file: File) -> io::Result<Writer> {
        Ok(Writer {
            tx: Some(pipe::Sender::from_file_unchecked(file)?),
            pending: BytesMut::new(),
            close_when_flushed: false,
        })
    }

    /// Queues a frame and writes as much as the pipe takes now; returns the frame's size.
    pub fn send_frame(&mut self, codec: &Codec, msg: &ToWorker) -> Result<usize, FrameError> {
        let before = self.pending.len();
        codec.encode(msg, &mut self.pending)?;
        let len = self.pending.len() - before;
        self.write_some();
        Ok(len)
    }

    /// Queues several pieces as one message and writes as much as the pipe takes now.
    pub fn send_all(&mut self, pieces: &[&[u8]]) -> usize {
        let len = pieces.iter().map(|p| p.len()).sum();
        for piece in pieces {
            self.pending.extend_from_slice(piece);
        }
        self.write_some();
        len
    }

    /// Whether the reading end has gone away (a write failed with a broken pipe).
    pub fn is_broken(&self) -> bool {
        self.tx.is_none() && !self.close_when_flushed
    }

    /// Bytes written and not yet read by the other side, plus bytes still queued here:
    /// what the worker has not taken. `None` when it cannot be known.
    pub fn untaken(&self) -> Option<usize> {
        let queued = self.pending.len();
        let Some(tx) = &self.tx else {
            // The reader went away (a broken pipe): it takes nothing more.
            return (!self.close_when_flushed).then_some(usize::MAX);
        };
        // On a pipe it counts the unread bytes, from either end.
        let in_pipe = jobsup_process::fd::unread(std::os::fd::AsFd::as_fd(tx)).ok()?;
        Some(queued + in_pipe)
    }

    /// Whether queued bytes are waiting for the pipe.
    pub fn has_pending(&self) -> bool {
        self.tx.is_some() && !self.pending.is_empty()
    }

    /// Resolves when the pipe can take more; then call [`Writer::write_some`].
    pub async fn writable(&self) {
        match &self.tx {
            Some(tx) => {
                let _ = tx.writable().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Writes queued bytes until the pipe is full. A worker that closed its end is noticed
    /// through its exit; here the queue is just dropped.
    pub fn write_some(&mut self) {
        let Some(tx) = &self.tx else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            // tokio writes only once its reactor has seen the pipe writable, a turn after a
            // fresh pipe (an exec job's stdin) is registered: such a pipe takes the bytes
            // now, so the write is tried anyway.
            let wrote = match tx.try_write(&self.pending) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    nix::unistd::write(tx, &self.pending).map_err(io::Error::from)
                }
                wrote => wrote,
            };
            match wrote {
                Ok(n) => self.pending.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pending.clear();
                    self.tx = None;
                    return;
                }
            }
        }
        if self.close_when_flushed {
            self.tx = None;
        }
    }

    /// Closes the pipe once everything queued is written: the worker then reads end of
    /// file.
    pub fn close_when_flushed(&mut self) {
        self.close_when_flushed = true;
        self.write_some();
    }

    /// Closes the pipe now, dropping anything queued.
    pub fn close(&mut self) {
        self.close_when_flushed = true;
        self.tx = None;
        self.pending.clear();
    }
}
