//! The frame codec: bytes in, frames out. No I/O, so it can be fuzzed.
//!
//! A frame is a 5-byte header, `kind: u8` then `length: u32` big-endian,
//! followed by `length` bytes of payload. The length is checked against the
//! maximum before any payload is buffered, so a peer that declares 4 GiB gets
//! an error, not an allocation.
//!
//! | kind | name | payload |
//! |---|---|---|
//! | `0x01` | message | one JSON object (UTF-8), see `message` |
//! | `0x02` | object start | object kind `u8`, checksum `[u8; 32]`, stored size `u64` BE |
//! | `0x03` | object data | the next bytes of the current object's stored form |

use crate::checksum::Checksum;
use crate::object::{ObjectName, ObjectType};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 5;
/// The largest payload a frame may declare. Large enough for a batch of a
/// few thousand object names; object bytes travel in as many data frames as
/// they need.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Payload size of an object-start frame.
const OBJECT_START_LEN: usize = 1 + 32 + 8;

const KIND_MESSAGE: u8 = 0x01;
const KIND_OBJECT_START: u8 = 0x02;
const KIND_OBJECT_DATA: u8 = 0x03;

/// A decoded frame, borrowing from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A control message: JSON text, not yet parsed.
    Message(&'a [u8]),
    /// The start of an object: what it is and how many bytes of its stored
    /// form follow in data frames.
    ObjectStart {
        /// The object.
        name: ObjectName,
        /// Its size as stored (a `.filez` compressed, metadata as is).
        size: u64,
    },
    /// The next bytes of the current object.
    ObjectData(&'a [u8]),
}

/// The result of looking at a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and how many bytes of the buffer it used.
    Complete {
        /// The frame.
        frame: Frame<'a>,
        /// Bytes consumed from the front of the buffer.
        consumed: usize,
    },
    /// More bytes are needed: at least this many in total.
    Incomplete {
        /// The total buffer length needed to make progress.
        needed: usize,
    },
}

/// Why bytes are not a valid frame. Sent back to the peer as a protocol error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// An unknown frame kind.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A declared length over the limit.
    #[error("a frame declares {declared} bytes, more than the {max}-byte limit")]
    TooLong {
        /// What the header says.
        declared: u64,
        /// The limit.
        max: usize,
    },
    /// An object-start frame of the wrong size.
    #[error("an object-start frame has {0} bytes of payload, not {OBJECT_START_LEN}")]
    BadObjectStart(usize),
    /// An object kind code that names no object type.
    #[error("unknown object type code {0}")]
    UnknownObjectType(u8),
    /// A frame with an empty payload where one is required.
    #[error("an empty {0} frame")]
    Empty(&'static str),
}

/// ostree's numeric object type codes (`OstreeObjectType`).
pub fn object_type_code(kind: ObjectType) -> u8 {
    match kind {
        ObjectType::File => 1,
        ObjectType::DirTree => 2,
        ObjectType::DirMeta => 3,
        ObjectType::Commit => 4,
        ObjectType::TombstoneCommit => 5,
        ObjectType::CommitMeta => 6,
    }
}

fn object_type_from_code(code: u8) -> Option<ObjectType> {
    Some(match code {
        1 => ObjectType::File,
        2 => ObjectType::DirTree,
        3 => ObjectType::DirMeta,
        4 => ObjectType::Commit,
        5 => ObjectType::TombstoneCommit,
        6 => ObjectType::CommitMeta,
        _ => return None,
    })
}

/// Looks for one frame at the front of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(Decoded::Incomplete { needed: HEADER_LEN });
    };
    let kind = header[0];
    if !matches!(kind, KIND_MESSAGE | KIND_OBJECT_START | KIND_OBJECT_DATA) {
        return Err(DecodeError::UnknownKind(kind));
    }
    let declared = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(declared).map_err(|_| DecodeError::TooLong {
        declared: declared.into(),
        max: MAX_PAYLOAD,
    })?;
    if len > MAX_PAYLOAD {
        return Err(DecodeError::TooLong {
            declared: declared.into(),
            max: MAX_PAYLOAD,
        });
    }
    let total = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..total) else {
        return Ok(Decoded::Incomplete { needed: total });
    };
    let frame = match kind {
        KIND_MESSAGE => {
            if payload.is_empty() {
                return Err(DecodeError::Empty("message"));
            }
            Frame::Message(payload)
        }
        KIND_OBJECT_START => {
            let p: &[u8; OBJECT_START_LEN] = payload
                .try_into()
                .map_err(|_| DecodeError::BadObjectStart(payload.len()))?;
            let kind = object_type_from_code(p[0]).ok_or(DecodeError::UnknownObjectType(p[0]))?;
            let mut sum = [0u8; 32];
            sum.copy_from_slice(&p[1..33]);
            let mut size = [0u8; 8];
            size.copy_from_slice(&p[33..41]);
            Frame::ObjectStart {
                name: ObjectName::new(Checksum::from_array(sum), kind),
                size: u64::from_be_bytes(size),
            }
        }
        _ => {
            if payload.is_empty() {
                return Err(DecodeError::Empty("object data"));
            }
            Frame::ObjectData(payload)
        }
    };
    Ok(Decoded::Complete {
        frame,
        consumed: total,
    })
}

fn header(kind: u8, len: usize, out: &mut Vec<u8>) {
    debug_assert!(len <= MAX_PAYLOAD, "callers split payloads to the limit");
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a message frame. `json` must be at most [`MAX_PAYLOAD`] bytes.
pub fn encode_message(json: &[u8], out: &mut Vec<u8>) {
    header(KIND_MESSAGE, json.len(), out);
    out.extend_from_slice(json);
}

/// Appends an object-start frame.
pub fn encode_object_start(name: &ObjectName, size: u64, out: &mut Vec<u8>) {
    header(KIND_OBJECT_START, OBJECT_START_LEN, out);
    out.push(object_type_code(name.kind));
    out.extend_from_slice(name.checksum.as_bytes());
    out.extend_from_slice(&size.to_be_bytes());
}

/// Appends object data, split into as many frames as the limit requires.
pub fn encode_object_data(mut data: &[u8], out: &mut Vec<u8>) {
    while !data.is_empty() {
        let n = data.len().min(MAX_PAYLOAD);
        header(KIND_OBJECT_DATA, n, out);
        out.extend_from_slice(&data[..n]);
        data = &data[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        let name: ObjectName = format!("{}.dirtree", "ab".repeat(32))
            .parse()
            .expect("valid");
        let mut buf = Vec::new();
        encode_message(br#"{"type":"done"}"#, &mut buf);
        encode_object_start(&name, 7, &mut buf);
        encode_object_data(b"1234567", &mut buf);
        let Decoded::Complete { frame, consumed } = decode(&buf).expect("ok") else {
            panic!("complete")
        };
        assert_eq!(frame, Frame::Message(br#"{"type":"done"}"#));
        let rest = &buf[consumed..];
        let Decoded::Complete { frame, consumed } = decode(rest).expect("ok") else {
            panic!("complete")
        };
        assert_eq!(frame, Frame::ObjectStart { name, size: 7 });
        let Decoded::Complete { frame, .. } = decode(&rest[consumed..]).expect("ok") else {
            panic!("complete")
        };
        assert_eq!(frame, Frame::ObjectData(b"1234567"));

        let bad: &[(&[u8], DecodeError)] = &[
            (&[9, 0, 0, 0, 0], DecodeError::UnknownKind(9)),
            (
                &[1, 0xff, 0xff, 0xff, 0xff],
                DecodeError::TooLong {
                    declared: 0xffff_ffff,
                    max: MAX_PAYLOAD,
                },
            ),
            (
                &[1, 0, 0x10, 0, 1],
                DecodeError::TooLong {
                    declared: 0x0010_0001,
                    max: MAX_PAYLOAD,
                },
            ),
            (&[1, 0, 0, 0, 0], DecodeError::Empty("message")),
            (&[3, 0, 0, 0, 0], DecodeError::Empty("object data")),
            (&[2, 0, 0, 0, 1, 1], DecodeError::BadObjectStart(1)),
        ];
        for (bytes, err) in bad {
            assert_eq!(
                decode(bytes).as_ref().map_err(Clone::clone),
                Err(err.clone()),
                "{bytes:?}"
            );
        }
        let mut start = vec![2, 0, 0, 0, 41, 9];
        start.extend_from_slice(&[0; 40]);
        assert_eq!(decode(&start), Err(DecodeError::UnknownObjectType(9)));
        assert_eq!(decode(&[1, 0, 0]), Ok(Decoded::Incomplete { needed: 5 }));
        assert_eq!(
            decode(&[1, 0, 0, 0, 9, b'{']),
            Ok(Decoded::Incomplete { needed: 14 })
        );
    }

    #[test]
    fn large_data_is_split() {
        let data = vec![5u8; MAX_PAYLOAD * 2 + 3];
        let mut buf = Vec::new();
        encode_object_data(&data, &mut buf);
        let mut got = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let Decoded::Complete {
                frame: Frame::ObjectData(d),
                consumed,
            } = decode(rest).expect("ok")
            else {
                panic!("data frame")
            };
            got.extend_from_slice(d);
            rest = &rest[consumed..];
        }
        assert_eq!(got, data);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Decoded::Complete { consumed, .. }) = decode(&bytes) {
                prop_assert!(consumed <= bytes.len());
            }
        }

        #[test]
        fn encode_decode_round_trip(json in "[ -~]{1,100}", data in prop::collection::vec(any::<u8>(), 1..100), size: u64, sum: [u8; 32], code in 1u8..=6) {
            let name = ObjectName::new(Checksum::from_array(sum), object_type_from_code(code).expect("valid code"));
            let mut buf = Vec::new();
            encode_message(json.as_bytes(), &mut buf);
            encode_object_start(&name, size, &mut buf);
            encode_object_data(&data, &mut buf);
            let mut frames = Vec::new();
            let mut rest = &buf[..];
            while let Ok(Decoded::Complete { frame, consumed }) = decode(rest) {
                frames.push(frame);
                rest = &rest[consumed..];
            }
            prop_assert!(rest.is_empty());
            prop_assert_eq!(frames, vec![Frame::Message(json.as_bytes()), Frame::ObjectStart { name, size }, Frame::ObjectData(&data)]);
        }
    }
}
