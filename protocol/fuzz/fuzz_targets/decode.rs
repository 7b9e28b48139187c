//! Any bytes, split at a fuzzer-chosen point, into both decoders: frames or an error,
//! never a panic, never a buffer grown past the limit.
#![no_main]

use bytes::BytesMut;
use jobsup_protocol::{Codec, FromWorker, ToWorker};
use libfuzzer_sys::fuzz_target;

const LIMIT: u32 = 1 << 16;

fn feed<T: serde::de::DeserializeOwned>(data: &[u8], split: usize) {
    let mut decoder = Codec::new(LIMIT).decoder::<T>();
    let mut buf = BytesMut::new();
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.capacity() <= LIMIT as usize + data.len() + 8192);
    }
    let _ = decoder.decode_eof(&mut buf);
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    feed::<FromWorker>(data, split);
    feed::<ToWorker>(data, split);
});
