//! The push protocol's frame and message decoding, on arbitrary bytes: it
//! must never panic, never claim more bytes than it was given, and every
//! message frame must parse or fail cleanly.
#![no_main]

use depot::protocol::frame::{Decoded, Frame, decode};
use depot::protocol::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Decoded::Complete { frame, consumed }) = decode(rest) {
        assert!(consumed <= rest.len() && consumed >= 5);
        if let Frame::Message(json) = frame {
            let _ = Message::from_json(json);
        }
        rest = &rest[consumed..];
    }
});
