//! Length-prefixed framing over bincode, without I/O.

use std::io::{self, Read, Write};
use std::marker::PhantomData;

use bincode::Options;
use bytes::{Buf, BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes in a frame header: the body's length as a little-endian `u32`.
pub const HEADER_LEN: usize = 4;

/// The default frame size limit (body bytes): 64 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
///
/// Every decode error is fatal for the stream: framing is lost, so the peer must be
/// treated as broken.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A header announced a body larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or, on encode, the actual) body length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// A body was not a valid message.
    #[error("malformed frame body ({len} bytes): {source}")]
    Malformed {
        /// The body's length.
        len: usize,
        /// What bincode said.
        source: bincode::Error,
    },
    /// A message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(bincode::Error),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The one codec configuration both ends use: a frame size limit and the bincode options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    max_frame: u32,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new(DEFAULT_MAX_FRAME)
    }
}

impl Codec {
    /// A codec that refuses frames with bodies larger than `max_frame` bytes.
    pub fn new(max_frame: u32) -> Self {
        Codec { max_frame }
    }

    /// The frame size limit in bytes.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    // The single place that configures bincode. The limit makes a hostile length inside a
    // body (a Vec claiming 2^60 elements) an error rather than an allocation.
    fn options(&self) -> impl Options + Copy {
        bincode::DefaultOptions::new()
            .with_limit(u64::from(self.max_frame))
            .with_little_endian()
            .with_varint_encoding()
            .reject_trailing_bytes()
    }

    /// Appends one frame holding `msg` to `dst`. Fails, writing nothing, if the body would
    /// exceed the limit.
    pub fn encode<T: Serialize>(&self, msg: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
        let opts = self.options();
        let len = match opts.serialized_size(msg) {
            Ok(len) => len,
            Err(e) => {
                return Err(match *e {
                    bincode::ErrorKind::SizeLimit => FrameError::TooLarge {
                        len: u64::from(self.max_frame) + 1,
                        max: self.max_frame,
                    },
                    _ => FrameError::Encode(e),
                })
            }
        };
        if len > u64::from(self.max_frame) {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        dst.reserve(HEADER_LEN + len as usize);
        dst.put_u32_le(len as u32);
        let start = dst.len();
        if let Err(e) = opts.serialize_into(dst.writer(), msg) {
            dst.truncate(start - HEADER_LEN);
            return Err(FrameError::Encode(e));
        }
        Ok(())
    }

    /// A decoder for a stream of frames of type `T` under this codec's limit.
    pub fn decoder<T: DeserializeOwned>(&self) -> Decoder<T> {
        Decoder {
            codec: *self,
            state: State::Head,
            _msg: PhantomData,
        }
    }

    /// Writes one frame to a blocking writer and flushes it.
    pub fn write_frame<T: Serialize, W: Write>(
        &self,
        writer: &mut W,
        msg: &T,
    ) -> Result<(), FrameError> {
        let mut buf = BytesMut::new();
        self.encode(msg, &mut buf)?;
        writer.write_all(&buf)?;
        writer.flush()?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for the 4 header bytes.
    Head,
    /// The header said this many body bytes follow.
    Body(usize),
}

/// Turns a byte stream into messages; keeps its place between calls.
#[derive(Debug)]
pub struct Decoder<T> {
    codec: Codec,
    state: State,
    _msg: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Decoder<T> {
    /// Takes one whole frame off the front of `src`, if it holds one.
    ///
    /// Returns `Ok(None)` when more bytes are needed; bytes of a partial frame stay in `src`
    /// (a body is only buffered once its length passed the limit check).
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
        let len = match self.state {
            State::Body(len) => len,
            State::Head => {
                if src.len() < HEADER_LEN {
                    return Ok(None);
                }
                let len = src.get_u32_le();
                if len > self.codec.max_frame {
                    return Err(FrameError::TooLarge {
                        len: u64::from(len),
                        max: self.codec.max_frame,
                    });
                }
                let len = len as usize;
                self.state = State::Body(len);
                len
            }
        };
        if src.len() < len {
            src.reserve(len - src.len());
            return Ok(None);
        }
        let body = src.split_to(len);
        self.state = State::Head;
        self.codec
            .options()
            .deserialize(&body)
            .map(Some)
            .map_err(|source| FrameError::Malformed { len, source })
    }

    /// Bytes of an unfinished frame already consumed from earlier buffers (its header).
    fn consumed(&self) -> usize {
        match self.state {
            State::Head => 0,
            State::Body(_) => HEADER_LEN,
        }
    }

    /// Called when the stream has ended: `Ok(None)` at a frame boundary, an error inside a
    /// frame.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<T>, FrameError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() && self.consumed() == 0 => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len() + self.consumed(),
            }),
        }
    }

    /// Reads from a blocking reader until one frame is whole. `Ok(None)` at a clean end of
    /// stream.
    pub fn read_frame<R: Read>(
        &mut self,
        reader: &mut R,
        buf: &mut BytesMut,
    ) -> Result<Option<T>, FrameError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(msg) = self.decode(buf)? {
                return Ok(Some(msg));
            }
            let n = match reader.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return self.decode_eof(buf);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FromWorker, Job, JobResult, ToWorker};

    fn sample() -> Vec<ToWorker> {
        vec![
            ToWorker::Job(Job {
                id: 7,
                key: "line-7".into(),
                payload: b"hello\0world".to_vec(),
                attempt: 1,
                ttl_ms: 30_000,
                kind: Some("mail".into()),
            }),
            ToWorker::Cleanup {
                job: 7,
                grace_ms: 5000,
            },
            ToWorker::Shutdown,
        ]
    }

    fn wire(msgs: &[ToWorker]) -> Vec<u8> {
        let codec = Codec::default();
        let mut buf = BytesMut::new();
        for m in msgs {
            codec.encode(m, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    #[test]
    fn every_split_point_yields_the_same_frames() {
        let msgs = sample();
        let bytes = wire(&msgs);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut dec = Codec::default().decoder::<ToWorker>();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in [&bytes[..a], &bytes[a..b], &bytes[b..]] {
                    buf.extend_from_slice(piece);
                    while let Some(m) = dec.decode(&mut buf).unwrap() {
                        got.push(m);
                    }
                }
                assert_eq!(dec.decode_eof(&mut buf).unwrap(), None);
                assert_eq!(got, msgs, "split at {a} and {b}");
            }
        }
    }

    #[test]
    fn byte_by_byte_decoding_works() {
        let msgs = sample();
        let bytes = wire(&msgs);
        let mut dec = Codec::default().decoder::<ToWorker>();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in bytes {
            buf.put_u8(b);
            if let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn oversize_header_is_refused_before_buffering() {
        let mut dec = Codec::new(1024).decoder::<FromWorker>();
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        let err = dec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max: 1024 } if len == u64::from(u32::MAX)),
            "{err}"
        );
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn oversize_message_is_refused_on_encode() {
        let codec = Codec::new(100);
        let mut buf = BytesMut::new();
        let msg = FromWorker::Done {
            job: 1,
            result: JobResult::Ok(vec![0; 500]),
        };
        let err = codec.encode(&msg, &mut buf).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { max: 100, .. }),
            "{err}"
        );
        assert!(buf.is_empty(), "nothing is written for a refused frame");
    }

    #[test]
    fn hostile_inner_length_is_an_error_not_an_allocation() {
        // A Done frame whose Vec claims u64::MAX bytes inside a 16-byte body.
        // Variant Done, job 1, JobResult::Ok, then the varint marker for a u64 length.
        let mut body = vec![3u8, 1, 0, 0xff];
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut buf = BytesMut::new();
        buf.put_u32_le(body.len() as u32);
        buf.extend_from_slice(&body);
        let err = Codec::default()
            .decoder::<FromWorker>()
            .decode(&mut buf)
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
    }

    #[test]
    fn truncated_stream_is_reported_at_eof() {
        let bytes = wire(&sample());
        let mut dec = Codec::default().decoder::<ToWorker>();
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        while dec.decode(&mut buf).unwrap().is_some() {}
        let err = dec.decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_malformed() {
        let mut body = BytesMut::new();
        Codec::default()
            .encode(&ToWorker::Shutdown, &mut body)
            .unwrap();
        let mut inner = body.split_off(HEADER_LEN).to_vec();
        inner.push(0);
        let mut buf = BytesMut::new();
        buf.put_u32_le(inner.len() as u32);
        buf.extend_from_slice(&inner);
        let err = Codec::default()
            .decoder::<ToWorker>()
            .decode(&mut buf)
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed { .. }), "{err}");
    }

    #[test]
    fn blocking_reader_reads_frames_then_clean_eof() {
        let msgs = sample();
        let bytes = wire(&msgs);
        let mut reader = &bytes[..];
        let mut dec = Codec::default().decoder::<ToWorker>();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        while let Some(m) = dec.read_frame(&mut reader, &mut buf).unwrap() {
            got.push(m);
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn negotiation_takes_the_highest_shared_version_and_names_both_ranges() {
        use crate::{negotiate, MIN_PROTOCOL_VERSION as MIN, PROTOCOL_VERSION as MAX};
        assert_eq!(negotiate(MIN, MAX).unwrap(), MAX);
        assert_eq!(negotiate(1, u32::MAX).unwrap(), MAX, "a newer processor");
        assert_eq!(negotiate(MIN, MIN).unwrap(), MIN, "an older processor");
        let err = negotiate(99, 120).unwrap_err().to_string();
        assert!(
            err.contains("99 to 120") && err.contains(&format!("version {MAX}")),
            "{err}"
        );
        assert!(negotiate(1, MIN - 1).is_err(), "too old");
        assert!(
            negotiate(MAX, MIN.saturating_sub(1)).is_err(),
            "an empty range"
        );
    }
}
