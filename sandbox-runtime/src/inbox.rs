//! The reading end of the link: requests from the supervisor on fd 3.

use std::fs::File;
use std::time::Instant;

use bytes::BytesMut;
use jobsup_protocol::{Codec, ToWorker};

use crate::control::{Controller, Event};

/// Turns fd 3 into events for the state machine until the stream ends or breaks.
///
/// A thread of its own because a read blocks, and a cleanup request must be heard while the
/// handler keeps the main thread busy.
pub(crate) fn pump(mut requests: File, codec: Codec, events: Controller) {
    let mut decoder = codec.decoder::<ToWorker>();
    let mut buf = BytesMut::new();
    loop {
        let (event, more) = match decoder.read_frame(&mut requests, &mut buf) {
            Ok(Some(msg)) => (
                Event::Request {
                    msg,
                    at: Instant::now(),
                },
                true,
            ),
            Ok(None) => (Event::Closed, false),
            Err(e) => (Event::Unreadable(e), false),
        };
        events.send(event);
        if !more {
            return;
        }
    }
}
