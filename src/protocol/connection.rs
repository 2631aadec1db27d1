//! Reading and writing frames over any async byte stream.
//!
//! The server reads stdin and writes stdout; the client talks to the pipes
//! of `ssh` or of a local `depot-receive`; tests use `tokio::io::duplex`.
//! Transport failures (a broken pipe) and protocol failures (bytes that are
//! not a valid frame or message) are different errors: only the second is
//! worth reporting back to the peer.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

use super::frame::{self, Decoded, Frame, HEADER_LEN, MAX_PAYLOAD};
use super::message::Message;
use crate::object::ObjectName;

/// What arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A control message.
    Message(Message),
    /// The start of an object.
    ObjectStart {
        /// Which object.
        name: ObjectName,
        /// Its stored size: the bytes the data frames after it carry.
        size: u64,
    },
    /// Bytes of the current object.
    ObjectData(Bytes),
}

/// A connection failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The byte stream failed (the peer went away, a pipe broke).
    #[error("connection failed")]
    Transport(#[source] std::io::Error),
    /// The stream ended in the middle of a frame.
    #[error("the connection closed in the middle of a frame")]
    UnexpectedEof,
    /// Bytes that are not a valid frame.
    #[error("invalid frame")]
    Frame(#[from] frame::DecodeError),
    /// A message frame that is not a valid message.
    #[error("invalid message")]
    Message(#[from] serde_json::Error),
    /// A message this side was about to send is longer than a frame may be.
    #[error(
        "a {kind} message of {len} bytes would pass the {MAX_PAYLOAD}-byte frame limit; \
         ask about fewer refs or objects at a time"
    )]
    TooLong {
        /// The message's type.
        kind: &'static str,
        /// Its length.
        len: usize,
    },
}

impl Error {
    /// Whether the peer broke the protocol (as opposed to the transport failing).
    pub fn is_protocol(&self) -> bool {
        matches!(self, Error::Frame(_) | Error::Message(_))
    }
}

/// Reads frames from `R`.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    /// Bytes read so far, frames and all.
    pub bytes_read: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            bytes_read: 0,
        }
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read(&mut self) -> Result<Option<Incoming>, Error> {
        loop {
            match frame::decode(&self.buf)? {
                Decoded::Complete { frame, consumed } => {
                    let incoming = match frame {
                        Frame::Message(json) => Incoming::Message(Message::from_json(json)?),
                        Frame::ObjectStart { name, size } => Incoming::ObjectStart { name, size },
                        Frame::ObjectData(_) => {
                            let bytes = self.buf.split_to(consumed).freeze();
                            return Ok(Some(Incoming::ObjectData(bytes.slice(HEADER_LEN..))));
                        }
                    };
                    let _ = self.buf.split_to(consumed);
                    return Ok(Some(incoming));
                }
                Decoded::Incomplete { needed } => {
                    debug_assert!(needed <= HEADER_LEN + MAX_PAYLOAD);
                    self.buf
                        .reserve(needed.saturating_sub(self.buf.len()).max(16 * 1024));
                    let n = self
                        .inner
                        .read_buf(&mut self.buf)
                        .await
                        .map_err(Error::Transport)?;
                    if n == 0 {
                        return if self.buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(Error::UnexpectedEof)
                        };
                    }
                    self.bytes_read += n as u64;
                }
            }
        }
    }
}

/// Writes frames to `W`, buffered; call [`flush`](FrameWriter::flush) when a
/// reply is expected.
#[derive(Debug)]
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    scratch: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte stream.
    pub fn new(inner: W) -> Self {
        FrameWriter {
            inner: BufWriter::with_capacity(256 * 1024, inner),
            scratch: Vec::new(),
        }
    }

    async fn put(&mut self) -> Result<(), Error> {
        let r = self
            .inner
            .write_all(&self.scratch)
            .await
            .map_err(Error::Transport);
        self.scratch.clear();
        r
    }

    /// Sends a control message. One too long for a frame is not sent
    /// ([`Error::TooLong`]): the peer would refuse the frame.
    pub async fn send(&mut self, message: &Message) -> Result<(), Error> {
        let json = message.to_json();
        if json.len() > MAX_PAYLOAD {
            return Err(Error::TooLong {
                kind: message.kind(),
                len: json.len(),
            });
        }
        frame::encode_message(&json, &mut self.scratch);
        self.put().await
    }

    /// Sends a whole object: its start frame and its data.
    pub async fn send_object(&mut self, name: &ObjectName, data: &[u8]) -> Result<(), Error> {
        self.send_object_start(name, data.len() as u64).await?;
        self.send_object_data(data).await
    }

    /// Sends an object-start frame; exactly `size` bytes of data must follow.
    pub async fn send_object_start(&mut self, name: &ObjectName, size: u64) -> Result<(), Error> {
        frame::encode_object_start(name, size, &mut self.scratch);
        self.put().await
    }

    /// Sends object data, in as many frames as needed.
    pub async fn send_object_data(&mut self, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            frame::encode_object_data(chunk, &mut self.scratch);
            self.put().await?;
        }
        Ok(())
    }

    /// Pushes buffered frames to the peer.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.inner.flush().await.map_err(Error::Transport)
    }

    /// Flushes and closes the write side.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.inner.shutdown().await.map_err(Error::Transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Checksum;
    use crate::object::ObjectType;

    #[tokio::test]
    async fn frames_cross_a_pipe() {
        let (a, b) = tokio::io::duplex(1024);
        let name = ObjectName::new(Checksum::from_array([3; 32]), ObjectType::File);
        let data = vec![9u8; 3 * MAX_PAYLOAD / 2];
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            let mut w = FrameWriter::new(a);
            w.send(&Message::Done {}).await.expect("send");
            w.send_object(&name, &data).await.expect("send");
            w.shutdown().await.expect("shutdown");
        });
        let mut r = FrameReader::new(b);
        assert_eq!(
            r.read().await.expect("read"),
            Some(Incoming::Message(Message::Done {}))
        );
        assert_eq!(
            r.read().await.expect("read"),
            Some(Incoming::ObjectStart {
                name,
                size: expected.len() as u64
            })
        );
        let mut got = Vec::new();
        while let Some(Incoming::ObjectData(d)) = r.read().await.expect("read") {
            got.extend_from_slice(&d);
        }
        assert_eq!(got, expected);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_message_longer_than_a_frame_is_not_sent() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = FrameWriter::new(a);
        let long = Message::QueryRefs {
            refs: (0..4096)
                .map(|i| format!("x{i:04}/{}", "a".repeat(250)).parse().expect("ref"))
                .collect(),
        };
        match w.send(&long).await {
            Err(Error::TooLong { kind, len }) => {
                assert_eq!(kind, "query_refs");
                assert!(len > MAX_PAYLOAD, "{len}");
            }
            other => panic!("{other:?}"),
        }
        // Nothing of it went out: the next message is the first frame.
        w.send(&Message::Done {}).await.expect("send");
        w.shutdown().await.expect("shutdown");
        let mut r = FrameReader::new(b);
        assert_eq!(
            r.read().await.expect("read"),
            Some(Incoming::Message(Message::Done {}))
        );
    }

    #[tokio::test]
    async fn a_huge_declared_frame_is_refused_without_reading_it() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // 4 GiB - 1 declared; the body never comes.
            a.write_all(&[1, 0xff, 0xff, 0xff, 0xff])
                .await
                .expect("write");
            std::future::pending::<()>().await;
        });
        let mut r = FrameReader::new(b);
        let err = r.read().await.expect_err("refused");
        let text = crate::error_chain(&err);
        assert!(
            err.is_protocol() && text.contains("more than the"),
            "{text}"
        );
        assert!(
            r.buf.capacity() < 1024 * 1024,
            "no buffer was sized from the header"
        );
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error_and_between_frames_is_not() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[1, 0, 0, 0, 9, b'{']).await.expect("write");
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read().await, Err(Error::UnexpectedEof)));
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        assert!(matches!(FrameReader::new(b).read().await, Ok(None)));
    }
}
