//! The wire protocol between the jobsup supervisor and a native processor.
//!
//! # Theory of operation
//!
//! A native worker is started with two pipes besides its standard streams: it reads
//! [`ToWorker`] frames on fd 3 ([`JOB_FD`]) and writes [`FromWorker`] frames on fd 4
//! ([`RESULT_FD`]). Its stdout and stderr stay free for its own logs.
//!
//! 1. The worker speaks first: [`FromWorker::Hello`] with the range of versions it speaks
//!    and its pid. Both ends use the highest version in both ranges; the supervisor refuses
//!    a processor whose range does not overlap its own, naming both (see [`negotiate`]).
//! 2. The supervisor sends one [`ToWorker::Job`] at a time. The worker may send
//!    [`FromWorker::Heartbeat`] and [`FromWorker::Progress`] while it works, and ends the job
//!    with exactly one [`FromWorker::Done`].
//! 3. When the job's `ttl` passes, the supervisor sends [`ToWorker::Cleanup`]. The worker
//!    answers [`FromWorker::CleanupDone`] (or exits) once it has cleaned up; a worker that
//!    cleaned up is never given another job.
//! 4. [`ToWorker::Shutdown`], or end of file on fd 3, asks an idle worker to exit.
//!
//! # Framing
//!
//! Each frame is a 4-byte little-endian length followed by that many bytes of body, encoded
//! with bincode 1.3.3 through one shared set of options ([`Codec`]). The codec is sans-IO:
//! it turns bytes into messages and back, and the same code serves the async supervisor and
//! the blocking runtime. A length above the codec's limit is an error before a single byte of
//! the body is buffered or allocated, on decode *and* on encode; any byte string fed to the
//! decoder yields frames or an error, never a panic.
//!
//! The byte-level specification, for processors in other languages, is `PROTOCOL.md` at the
//! repository root; `protocol/golden/frames.json` pins every message's bytes, and this
//! crate's tests, the Python runtime's and the Node runtime's all check against it.
//!
//! Only this crate knows the encoding, so it can be replaced without touching the
//! supervisor or the runtime.
//!
//! ```
//! use bytes::BytesMut;
//! use jobsup_protocol::{Codec, FromWorker, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
//!
//! let codec = Codec::default();
//! let mut wire = BytesMut::new();
//! let hello = FromWorker::Hello {
//!     min_version: MIN_PROTOCOL_VERSION,
//!     max_version: PROTOCOL_VERSION,
//!     pid: 42,
//! };
//! codec.encode(&hello, &mut wire)?;
//!
//! // The bytes may arrive in any number of pieces.
//! let mut decoder = codec.decoder::<FromWorker>();
//! let mut inbox = BytesMut::new();
//! inbox.extend_from_slice(&wire[..3]);
//! assert!(decoder.decode(&mut inbox)?.is_none());
//! inbox.extend_from_slice(&wire[3..]);
//! assert_eq!(decoder.decode(&mut inbox)?, Some(hello));
//! # Ok::<(), jobsup_protocol::FrameError>(())
//! ```
#![deny(missing_docs)]

mod codec;
mod messages;

pub use codec::{Codec, Decoder, FrameError, DEFAULT_MAX_FRAME, HEADER_LEN};
pub use messages::{
    negotiate, FromWorker, Job, JobResult, ToWorker, VersionMismatch, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};

/// The file descriptor on which a native worker reads [`ToWorker`] frames.
pub const JOB_FD: i32 = 3;

/// The file descriptor on which a native worker writes [`FromWorker`] frames.
pub const RESULT_FD: i32 = 4;

/// Environment variable the supervisor sets for a native worker: the highest protocol
/// version it speaks (a decimal number). Its presence also tells the runtime that it was
/// started by jobsup.
pub const ENV_PROTOCOL: &str = "JOBSUP_PROTOCOL";

/// Environment variable the supervisor sets for every worker: the largest frame it accepts.
pub const ENV_MAX_FRAME: &str = "JOBSUP_MAX_FRAME";
