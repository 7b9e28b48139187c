//! Property tests: the decoder never panics and never allocates past its limit, whatever
//! bytes it is fed and however they are split.

use bytes::BytesMut;
use jobsup_protocol::{Codec, FromWorker, Job, JobResult, ToWorker};
use proptest::prelude::*;

const LIMIT: u32 = 4096;

fn feed<T: serde::de::DeserializeOwned>(bytes: &[u8], chunk: usize) -> Result<usize, String> {
    let mut dec = Codec::new(LIMIT).decoder::<T>();
    let mut buf = BytesMut::new();
    let mut frames = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
            // A partial frame is only buffered after its length passed the check.
            assert!(buf.capacity() <= LIMIT as usize + 8192 + bytes.len());
        }
    }
    dec.decode_eof(&mut buf).map_err(|e| e.to_string())?;
    Ok(frames)
}

fn arb_from_worker() -> impl Strategy<Value = FromWorker> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(min_version, max_version, pid)| {
            FromWorker::Hello {
                min_version,
                max_version,
                pid,
            }
        }),
        any::<u64>().prop_map(|job| FromWorker::Heartbeat { job }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
            any::<Option<String>>()
        )
            .prop_map(|(job, done, total, message)| FromWorker::Progress {
                job,
                done,
                total,
                message
            }),
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(job, out)| {
            FromWorker::Done {
                job,
                result: JobResult::Ok(out),
            }
        }),
        (any::<u64>(), ".{0,40}").prop_map(|(job, m)| FromWorker::Done {
            job,
            result: JobResult::Failed(m)
        }),
        any::<u64>().prop_map(|job| FromWorker::CleanupDone { job }),
    ]
}

fn arb_to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (
            any::<u64>(),
            ".{0,20}",
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u32>(),
            any::<u64>(),
            any::<Option<String>>(),
        )
            .prop_map(
                |(id, key, payload, attempt, ttl_ms, kind)| ToWorker::Job(Job {
                    id,
                    key,
                    payload,
                    attempt,
                    ttl_ms,
                    kind,
                })
            ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(job, grace_ms)| ToWorker::Cleanup { job, grace_ms }),
        Just(ToWorker::Shutdown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        let _ = feed::<FromWorker>(&bytes, chunk);
        let _ = feed::<ToWorker>(&bytes, chunk);
    }

    #[test]
    fn arbitrary_bytes_behind_a_valid_header_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let _ = feed::<FromWorker>(&bytes, 7);
        let _ = feed::<ToWorker>(&bytes, 7);
    }

    #[test]
    fn messages_round_trip_at_any_chunking(
        msgs in proptest::collection::vec(arb_from_worker(), 1..8),
        back in proptest::collection::vec(arb_to_worker(), 1..8),
        chunk in 1usize..100,
    ) {
        let codec = Codec::new(LIMIT);
        let mut wire = BytesMut::new();
        for m in &msgs { codec.encode(m, &mut wire).unwrap(); }
        let mut dec = codec.decoder::<FromWorker>();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(m) = dec.decode(&mut buf).unwrap() { got.push(m); }
        }
        prop_assert_eq!(got, msgs);

        let mut wire = BytesMut::new();
        for m in &back { codec.encode(m, &mut wire).unwrap(); }
        let mut dec = codec.decoder::<ToWorker>();
        let mut got = Vec::new();
        while let Some(m) = dec.decode(&mut wire).unwrap() { got.push(m); }
        prop_assert_eq!(got, back);
    }
}
