//! The golden frames (`protocol/golden/frames.json`) pin the wire format byte for byte:
//! every message encodes to exactly its frame and decodes back, longer integer forms are
//! read, and malformed frames are refused. The Python and Node runtimes check the same
//! file, so the three implementations cannot drift apart. A change to the messages that
//! moves a byte fails here; it needs a new protocol version, not new golden bytes.

use std::collections::BTreeSet;

use bytes::BytesMut;
use jobsup_protocol::{
    Codec, FromWorker, Job, JobResult, ToWorker, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use serde_json::Value;

const GOLDEN: &str = include_str!("../golden/frames.json");

#[derive(Debug, PartialEq)]
enum Msg {
    To(ToWorker),
    From(FromWorker),
}

fn golden() -> Value {
    serde_json::from_str(GOLDEN).expect("frames.json is valid JSON")
}

fn unhex(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).expect("hex is ASCII");
            assert_eq!(digits.len(), 2, "odd hex length");
            u8::from_str_radix(digits, 16).expect("hex digits")
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(m: &Value, field: &str) -> String {
    m[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is a string in {m}"))
        .to_owned()
}

fn int<T: std::str::FromStr>(m: &Value, field: &str) -> T {
    text(m, field)
        .parse()
        .unwrap_or_else(|_| panic!("{field} is a decimal integer of the right width in {m}"))
}

fn opt_text(m: &Value, field: &str) -> Option<String> {
    (!m[field].is_null()).then(|| text(m, field))
}

/// The message a golden entry describes, built without the codec.
fn message(entry: &Value) -> Msg {
    let m = &entry["message"];
    match (entry["direction"].as_str(), m["type"].as_str()) {
        (Some("to_worker"), Some("Job")) => Msg::To(ToWorker::Job(Job {
            id: int(m, "id"),
            key: text(m, "key"),
            payload: unhex(&text(m, "payload")),
            attempt: int(m, "attempt"),
            ttl_ms: int(m, "ttl_ms"),
            kind: opt_text(m, "kind"),
        })),
        (Some("to_worker"), Some("Cleanup")) => Msg::To(ToWorker::Cleanup {
            job: int(m, "job"),
            grace_ms: int(m, "grace_ms"),
        }),
        (Some("to_worker"), Some("Shutdown")) => Msg::To(ToWorker::Shutdown),
        (Some("from_worker"), Some("Hello")) => Msg::From(FromWorker::Hello {
            min_version: int(m, "min_version"),
            max_version: int(m, "max_version"),
            pid: int(m, "pid"),
        }),
        (Some("from_worker"), Some("Heartbeat")) => {
            Msg::From(FromWorker::Heartbeat { job: int(m, "job") })
        }
        (Some("from_worker"), Some("Progress")) => Msg::From(FromWorker::Progress {
            job: int(m, "job"),
            done: int(m, "done"),
            total: (!m["total"].is_null()).then(|| int(m, "total")),
            message: opt_text(m, "message"),
        }),
        (Some("from_worker"), Some("Done")) => Msg::From(FromWorker::Done {
            job: int(m, "job"),
            result: match (m.get("ok"), m.get("failed")) {
                (Some(_), None) => JobResult::Ok(unhex(&text(m, "ok"))),
                (None, Some(_)) => JobResult::Failed(text(m, "failed")),
                _ => panic!("a Done has exactly one of ok and failed: {m}"),
            },
        }),
        (Some("from_worker"), Some("CleanupDone")) => {
            Msg::From(FromWorker::CleanupDone { job: int(m, "job") })
        }
        other => panic!("unknown golden message {other:?}"),
    }
}

fn encode(msg: &Msg) -> Vec<u8> {
    let mut buf = BytesMut::new();
    match msg {
        Msg::To(m) => Codec::default().encode(m, &mut buf),
        Msg::From(m) => Codec::default().encode(m, &mut buf),
    }
    .expect("a golden message encodes");
    buf.to_vec()
}

/// Decodes exactly one frame, which must use up all of `frame`.
fn decode(direction: &str, frame: &[u8]) -> Result<Msg, String> {
    let mut buf = BytesMut::from(frame);
    let msg = match direction {
        "to_worker" => Codec::default()
            .decoder::<ToWorker>()
            .decode_eof(&mut buf)
            .map(|m| m.map(Msg::To)),
        "from_worker" => Codec::default()
            .decoder::<FromWorker>()
            .decode_eof(&mut buf)
            .map(|m| m.map(Msg::From)),
        other => panic!("unknown direction {other}"),
    };
    match msg {
        Ok(Some(m)) if buf.is_empty() => Ok(m),
        Ok(Some(_)) => Err("bytes after the frame".into()),
        Ok(None) => Err("no frame".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn entries<'a>(doc: &'a Value, section: &str) -> &'a [Value] {
    doc[section]
        .as_array()
        .unwrap_or_else(|| panic!("{section} is a list"))
}

#[test]
fn the_golden_file_is_for_the_version_this_crate_speaks() {
    let doc = golden();
    assert_eq!(
        doc["protocol_version"].as_u64(),
        Some(PROTOCOL_VERSION.into())
    );
    assert_eq!(
        MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
        "add golden frames per version"
    );
}

#[test]
fn every_golden_message_encodes_to_its_exact_bytes_and_back() {
    let doc = golden();
    for entry in entries(&doc, "valid") {
        let name = &entry["name"];
        let msg = message(entry);
        let frame = unhex(entry["frame"].as_str().expect("frame is hex"));
        assert_eq!(hex(&encode(&msg)), hex(&frame), "encoding {name}");
        let direction = entry["direction"].as_str().unwrap();
        assert_eq!(decode(direction, &frame), Ok(msg), "decoding {name}");
    }
}

#[test]
fn longer_integer_forms_are_read() {
    let doc = golden();
    for entry in entries(&doc, "decode_only") {
        let frame = unhex(entry["frame"].as_str().unwrap());
        let msg = message(entry);
        assert_ne!(
            encode(&msg),
            frame,
            "{}: not the canonical form",
            entry["name"]
        );
        let direction = entry["direction"].as_str().unwrap();
        assert_eq!(decode(direction, &frame), Ok(msg), "{}", entry["name"]);
    }
}

#[test]
fn malformed_golden_frames_are_refused() {
    let doc = golden();
    for entry in entries(&doc, "invalid") {
        let frame = unhex(entry["frame"].as_str().unwrap());
        let direction = entry["direction"].as_str().unwrap();
        let got = decode(direction, &frame);
        assert!(
            got.is_err(),
            "{} must be refused, got {got:?}",
            entry["name"]
        );
    }
}

#[test]
fn the_golden_file_covers_every_message_and_the_edge_values() {
    let doc = golden();
    let valid = entries(&doc, "valid");
    let names: BTreeSet<String> = valid
        .iter()
        .map(|e| {
            let m = message(e);
            let variant = match &m {
                Msg::To(ToWorker::Job(_)) => "Job",
                Msg::To(ToWorker::Cleanup { .. }) => "Cleanup",
                Msg::To(ToWorker::Shutdown) => "Shutdown",
                Msg::From(FromWorker::Hello { .. }) => "Hello",
                Msg::From(FromWorker::Heartbeat { .. }) => "Heartbeat",
                Msg::From(FromWorker::Progress { .. }) => "Progress",
                Msg::From(FromWorker::Done {
                    result: JobResult::Ok(_),
                    ..
                }) => "Done/Ok",
                Msg::From(FromWorker::Done {
                    result: JobResult::Failed(_),
                    ..
                }) => "Done/Failed",
                Msg::From(FromWorker::CleanupDone { .. }) => "CleanupDone",
            };
            variant.to_owned()
        })
        .collect();
    let every = [
        "Job",
        "Cleanup",
        "Shutdown",
        "Hello",
        "Heartbeat",
        "Progress",
        "Done/Ok",
        "Done/Failed",
        "CleanupDone",
    ];
    assert_eq!(names, every.iter().map(|s| s.to_string()).collect());

    // Each varint length form appears, in integers and in lengths.
    let frames: Vec<Vec<u8>> = valid
        .iter()
        .map(|e| unhex(e["frame"].as_str().unwrap()))
        .collect();
    let jobs: Vec<Job> = valid
        .iter()
        .filter_map(|e| match message(e) {
            Msg::To(ToWorker::Job(job)) => Some(job),
            _ => None,
        })
        .collect();
    for bound in [250, 251, 65_535, 65_536, u64::from(u32::MAX), u64::MAX] {
        assert!(jobs.iter().any(|j| j.id == bound), "a job id of {bound}");
    }
    for len in [0, 250, 251, 65_536] {
        assert!(
            jobs.iter()
                .any(|j| j.payload.len() == len || j.key.len() == len),
            "a key or payload of {len} bytes"
        );
    }
    assert!(jobs.iter().any(|j| j.kind.is_none()));
    assert!(jobs.iter().any(|j| j.kind.as_deref() == Some("")));
    assert!(
        frames.iter().all(|f| f.len() >= 5),
        "every frame has a header and a body"
    );
}
