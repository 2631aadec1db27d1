//! The push protocol between `depot push` and `depot-receive`.
//!
//! Two layers, as in `docs/protocol.md`: [`frame`] turns bytes into frames
//! (pure, fuzzable), [`message`] gives control frames their typed meaning,
//! and [`connection`] moves frames over an async byte stream.

pub mod connection;
pub mod frame;
pub mod message;

pub use connection::{FrameReader, FrameWriter, Incoming};
pub use message::{ErrorCode, Limits, Message, RefChange, RefState};
