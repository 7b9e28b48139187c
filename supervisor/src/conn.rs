//! The supervisor's side of a native worker's protocol pipes.
//!
//! Reading is cancel-safe (bytes are moved into the buffer synchronously after readiness),
//! so [`Inbox::next`] can sit in a `select!`. Writing never blocks the worker task: frames
//! are queued and written as far as the pipe takes them; the rest is flushed when the pipe
//! becomes writable again. A worker that stops reading can therefore never stall the
//! supervisor's deadlines.

use std::fs::File;
use std::io;

use bytes::{Buf, BytesMut};
use jobsup_protocol::{Codec, Decoder, FrameError, FromWorker, ToWorker};
use tokio::net::unix::pipe;

/// How much to read from the result pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// Frames from the worker (its fd 4).
pub struct Inbox {
    rx: pipe::Receiver,
    buf: BytesMut,
    decoder: Decoder<FromWorker>,
    eof: bool,
}

impl Inbox {
    /// Wraps the read end of a result pipe. Must be called inside the runtime.
    pub fn new(file: File, codec: Codec) -> io::Result<Inbox> {
        Ok(Inbox {
            rx: pipe::Receiver::from_file(file)?,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: codec.decoder(),
            eof: false,
        })
    }

    /// Whether the worker's end is closed and every frame has been taken.
    pub fn at_eof(&self) -> bool {
        self.eof && self.buf.is_empty()
    }

    /// The next frame; `Ok(None)` at end of stream.
    pub async fn next(&mut self) -> Result<Option<FromWorker>, FrameError> {
        loop {
            if let Some(msg) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(msg));
            }
            if self.eof {
                return self.decoder.decode_eof(&mut self.buf);
            }
            self.rx.readable().await?;
            self.buf.reserve(READ_CHUNK);
            // Moves bytes into the buffer synchronously: nothing is lost if the caller's
            // select drops this future at the await above.
            match self.rx.try_read_buf(&mut self.buf) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A frame that is already in the pipe, without waiting.
    ///
    /// Reads the pipe directly rather than through the reactor, whose notion of readiness
    /// can lag behind: when the reaper reports a worker's exit, or a deadline fires, the
    /// frames it wrote just before are in the kernel's buffer even if the reactor has not
    /// polled yet, and they must count.
    pub fn try_next(&mut self) -> Result<Option<FromWorker>, FrameError> {
        if let Some(msg) = self.decoder.decode(&mut self.buf)? {
            return Ok(Some(msg));
        }
        if !self.eof {
            let mut chunk = [0u8; 16 * 1024];
            match nix::unistd::read(&self.rx, &mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        if self.eof {
            self.decoder.decode_eof(&mut self.buf)
        } else {
            self.decoder.decode(&mut self.buf)
        }
    }
}

/// Frames to the worker (its fd 3).
pub struct Outbox {
    tx: Option<pipe::Sender>,
    pending: BytesMut,
    codec: Codec,
}

impl Outbox {
    /// Wraps the write end of a job pipe. Must be called inside the runtime.
    pub fn new(file: File, codec: Codec) -> io::Result<Outbox> {
        Ok(Outbox {
            tx: Some(pipe::Sender::from_file(file)?),
            pending: BytesMut::new(),
            codec,
        })
    }

    /// Queues a frame and writes as much as the pipe takes now.
    pub fn send(&mut self, msg: &ToWorker) -> Result<(), FrameError> {
        self.codec.encode(msg, &mut self.pending)?;
        self.write_some();
        Ok(())
    }

    /// Whether queued bytes are waiting for the pipe.
    pub fn has_pending(&self) -> bool {
        self.tx.is_some() && !self.pending.is_empty()
    }

    /// Resolves when the pipe can take more; then call [`Outbox::write_some`].
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
            match tx.try_write(&self.pending) {
                Ok(n) => self.pending.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pending.clear();
                    self.tx = None;
                    return;
                }
            }
        }
    }

    /// Closes the pipe: the worker reads end of file.
    pub fn close(&mut self) {
        self.tx = None;
        self.pending.clear();
    }
}
