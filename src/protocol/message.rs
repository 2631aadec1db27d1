//! Control messages: one JSON object per message frame, tagged by `type`.
//!
//! Compatibility rules (see `docs/protocol.md`): a receiver ignores object
//! fields it does not know, so either side may add optional fields without a
//! version change; a new message type or a changed meaning needs a new
//! protocol version or a capability both sides announced.

use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::object::ObjectName;
use crate::refname::RefName;

/// The value of `magic` in a client's hello.
pub const MAGIC: &str = "depot-push";
/// Protocol versions this build speaks.
pub const MIN_VERSION: u32 = 1;
/// Protocol versions this build speaks.
pub const MAX_VERSION: u32 = 1;
/// Most object names in one `want` or `missing` message.
pub const MAX_BATCH: usize = 4096;

/// Limits the server announces in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest stored object accepted, in bytes.
    pub max_object_size: u64,
    /// Most bytes of objects accepted in one push.
    pub max_push_size: u64,
    /// Most objects one push may send (absent from servers before it was
    /// announced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_objects: Option<u64>,
    /// Largest frame payload, in bytes.
    pub max_frame: u64,
    /// Most names in one `want`.
    pub max_batch: u64,
}

/// A ref as the server sees it, with whether this client may write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefState {
    /// The ref.
    pub name: RefName,
    /// Its commit, `null` if it does not exist.
    pub commit: Option<Checksum>,
    /// Whether this key may move it.
    pub writable: bool,
    /// Why not, when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A requested ref change: compare-and-swap from `old` to `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefChange {
    /// The ref.
    pub name: RefName,
    /// What the client believes it holds now (`null`: absent).
    pub old: Option<Checksum>,
    /// The commit it should point at.
    pub new: Checksum,
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not allowed by the server's policy (ref patterns).
    Forbidden,
    /// A ref is not at the expected commit.
    Conflict,
    /// The new commit does not descend from the ref's current commit.
    NonFastForward,
    /// An object failed verification.
    BadObject,
    /// A commit's closure is incomplete.
    Incomplete,
    /// An object or the push exceeds a limit.
    TooLarge,
    /// The server's disk is too full.
    NoSpace,
    /// No common protocol version.
    UnsupportedVersion,
    /// The peer broke the protocol.
    Protocol,
    /// The repository lock could not be taken in time.
    Busy,
    /// Anything else on the server's side.
    Internal,
    /// A code this build does not know (from a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire (`too_large`, `bad_object`...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NonFastForward => "non_fast_forward",
            ErrorCode::BadObject => "bad_object",
            ErrorCode::Incomplete => "incomplete",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// Every control message. Direction: C = client (pusher), S = server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// C→S, first: who is speaking and which versions it speaks.
    Hello {
        /// Always [`MAGIC`].
        magic: String,
        /// Lowest version the client speaks.
        min_version: u32,
        /// Highest version the client speaks.
        max_version: u32,
        /// Client software, for logs.
        software: String,
        /// Optional features the client offers.
        #[serde(default)]
        capabilities: Vec<String>,
    },
    /// S→C, answer to `hello`: the chosen version and the server's limits.
    Welcome {
        /// The version both speak from now on.
        version: u32,
        /// Server software, for logs.
        software: String,
        /// Optional features the server offers.
        #[serde(default)]
        capabilities: Vec<String>,
        /// The server's limits.
        limits: Limits,
        /// The zlib level the repository stores content at (its `[archive]
        /// zlib-level`); clients compress what they send at this level.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zlib_level: Option<u32>,
    },
    /// C→S: the current state of these refs, and whether they may be written.
    QueryRefs {
        /// The refs.
        refs: Vec<RefName>,
    },
    /// S→C: answer to `query_refs`, same order.
    Refs {
        /// One per queried ref.
        refs: Vec<RefState>,
    },
    /// C→S: the ref changes this push makes. Authorized before any object moves.
    Update {
        /// The changes.
        updates: Vec<RefChange>,
    },
    /// S→C: the updates are allowed; objects may follow. The updates are
    /// echoed so that the client can check the server read what it sent.
    Accepted {
        /// The updates as the server understood them.
        #[serde(default)]
        updates: Vec<RefChange>,
    },
    /// C→S: which of these objects does the server lack?
    Want {
        /// At most [`MAX_BATCH`] names.
        objects: Vec<ObjectName>,
    },
    /// S→C: answer to one `want`: the subset the server lacks, same order.
    Missing {
        /// The names the server lacks.
        objects: Vec<ObjectName>,
    },
    /// C→S: every object has been sent; apply the updates.
    Done {},
    /// S→C: the push is durable and the refs have moved.
    Result {
        /// The refs as they now are.
        refs: Vec<RefChange>,
        /// Objects received and stored.
        objects: u64,
        /// Bytes of objects received.
        bytes: u64,
    },
    /// Either way: a failure, sent before closing.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// For people: names the ref or object and what to do.
        message: String,
    },
}

impl Message {
    /// The JSON text of this message.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("messages always serialise")
    }

    /// Parses one message.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The message's `type`, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::QueryRefs { .. } => "query_refs",
            Message::Refs { .. } => "refs",
            Message::Update { .. } => "update",
            Message::Accepted { .. } => "accepted",
            Message::Want { .. } => "want",
            Message::Missing { .. } => "missing",
            Message::Done {} => "done",
            Message::Result { .. } => "result",
            Message::Error { .. } => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_and_validation() {
        let m = Message::Update {
            updates: vec![RefChange {
                name: "proj/x".parse().expect("ref"),
                old: None,
                new: Checksum::from_array([1; 32]),
            }],
        };
        let json = String::from_utf8(m.to_json()).expect("utf8");
        assert!(
            json.starts_with(
                r#"{"type":"update","updates":[{"name":"proj/x","old":null,"new":"0101"#
            ),
            "{json}"
        );
        assert_eq!(Message::from_json(json.as_bytes()).expect("parse"), m);
        // Unknown fields are ignored (forward compatibility).
        let with_extra = json.replacen(r#""type":"update","#, r#""type":"update","future":1,"#, 1);
        assert_eq!(Message::from_json(with_extra.as_bytes()).expect("parse"), m);
        assert_eq!(
            Message::from_json(br#"{"type":"accepted"}"#).expect("parse"),
            Message::Accepted { updates: vec![] }
        );
        for bad in [
            r#"{"type":"update","updates":[{"name":"../x","old":null,"new":"00"}]}"#,
            r#"{"type":"want","objects":["../../etc/passwd"]}"#,
            r#"{"type":"want","objects":["0000.commit"]}"#,
            r#"{"type":"nonsense"}"#,
            r#"{"updates":[]}"#,
            "[1,2]",
            "not json",
        ] {
            assert!(Message::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        // The wire names and as_str agree, code by code.
        for code in [
            ErrorCode::Forbidden,
            ErrorCode::Conflict,
            ErrorCode::NonFastForward,
            ErrorCode::BadObject,
            ErrorCode::Incomplete,
            ErrorCode::TooLarge,
            ErrorCode::NoSpace,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Protocol,
            ErrorCode::Busy,
            ErrorCode::Internal,
        ] {
            assert_eq!(serde_json::to_value(code).expect("json"), code.as_str());
        }
        let e = Message::from_json(br#"{"type":"error","code":"from_the_future","message":"m"}"#)
            .expect("parse");
        assert_eq!(
            e,
            Message::Error {
                code: ErrorCode::Unknown,
                message: "m".into()
            }
        );
    }
}
