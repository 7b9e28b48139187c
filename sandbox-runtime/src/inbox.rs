//! The reading end of the link: requests from the supervisor on fd 3.

use std::fs::File;
use std::sync::mpsc::Sender;
use std::time::Instant;

use bytes::BytesMut;
use jobsup_protocol::{Codec, ToWorker};

use crate::control::Event;

/// Turns fd 3 into events for the control thread until the stream ends or breaks.
///
/// A thread of its own because a read blocks: the control thread must stay free to hear
/// of a finished job or a SIGTERM while no request is coming.
pub(crate) fn pump(mut requests: File, codec: Codec, events: Sender<Event>) {
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
        if events.send(event).is_err() || !more {
            return;
        }
    }
}
