//! Objects arriving from an untrusted pusher, verified as they stream.
//!
//! A metadata object is buffered (capped by [`max_pushed_metadata`], or
//! [`max_fetched_metadata`] for a pull),
//! hashed, and parsed strictly (normal form, structure, sorting). A `.filez`
//! is written to staging as it arrives while its header is parsed and its
//! deflate stream inflated and hashed; at the end its size, its checksum and
//! the end of its deflate stream must all be exact, or its file is removed.
//! Staging is published only after every object in it has passed. Nothing about the object's name is used to build a
//! path except through [`ObjectName`], which is 64 hex digits and a known kind.

use std::io::{BufWriter, Write};

use flate2::{Decompress, FlushDecompress, Status};
use sha2::{Digest, Sha256};

use crate::checksum::Checksum;
use crate::gvariant;
use crate::object::{
    self, FileHeader, MAX_FILEZ_HEADER, ObjectName, ObjectType, content_checksum_prefix,
    parse_filez_header,
};

use super::transaction::StagingFile;
use super::{Error, Transaction, io_err};

/// The largest metadata object of each kind accepted from a pusher. ostree
/// reads up to 128 MiB of any kind; depot's receiver must keep its memory
/// small, and decoding costs a few times an object's size. A real dirtree of
/// 100,000 entries is under 5 MiB; a dirmeta holds a directory's xattrs; a
/// commit or its detached metadata holds a subject, a body and some keys.
pub fn max_pushed_metadata(kind: ObjectType) -> u64 {
    match kind {
        ObjectType::DirTree => 10 * 1024 * 1024,
        ObjectType::DirMeta => 64 * 1024,
        _ => 1024 * 1024,
    }
}

/// The largest metadata object of each kind a pull fetches: what `ostree
/// pull` reads (`OSTREE_MAX_METADATA_SIZE`, ostree-core.h), as a repository
/// ostree wrote may hold directories of hundreds of thousands of entries or
/// a commit with megabytes of metadata (`ostree.sizes`). A dirtree decodes
/// to a few values per entry of 34 bytes or more; the other kinds, which
/// can hold arbitrary values, are checked for that over the push limits
/// (see [`FETCHED_BYTES_PER_VALUE`]).
pub fn max_fetched_metadata(_kind: ObjectType) -> u64 {
    object::MAX_METADATA_SIZE
}

/// Fetched metadata that can hold arbitrary values (a commit, a dirmeta),
/// when larger than [`max_pushed_metadata`] allows, must decode to at most
/// one value per this many bytes. Each value takes 48 bytes decoded, so such
/// an object costs at most about 6 times its size to check (an array of a
/// million booleans would take 48 times). Real large metadata is far
/// sparser: `ostree.sizes` holds one value per 40 bytes or so; rpm-ostree's
/// package list, denser (one per 6.5 bytes), stays far below the 1 MiB over
/// which this applies.
pub const FETCHED_BYTES_PER_VALUE: usize = 8;

/// Why a pushed object was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// More bytes than the object-start frame declared, or fewer.
    #[error("object {name}: {actual} bytes arrived, {declared} were declared")]
    SizeMismatch {
        /// The object.
        name: ObjectName,
        /// The declared stored size.
        declared: u64,
        /// What arrived.
        actual: u64,
    },
    /// The content does not hash to the name.
    #[error("object {name} does not match its name: its content hashes to {actual}")]
    ChecksumMismatch {
        /// The object.
        name: ObjectName,
        /// What it hashes to.
        actual: Checksum,
    },
    /// Anything else about its bytes.
    #[error("object {name} is invalid: {reason}")]
    Invalid {
        /// The object.
        name: ObjectName,
        /// What is wrong.
        reason: String,
    },
    /// Over a size limit.
    #[error("object {name} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The object.
        name: ObjectName,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// Where the payload of a content object goes as well, as it is inflated:
/// a pull writes it straight into a checkout, so that each file is inflated
/// once. Nothing given to a sink is verified until
/// [`IncomingObject::finish`] succeeds; after a failure the sink's owner
/// must throw away what it wrote.
pub trait PayloadSink {
    /// The object's header (from the stream, not yet verified), before any
    /// payload.
    fn start(&mut self, header: &FileHeader, size: u64) -> Result<(), Error>;
    /// The next inflated bytes.
    fn write(&mut self, data: &[u8]) -> Result<(), Error>;
}

/// The most a content object inflates into memory at a time.
const INFLATE_CHUNK: usize = 64 * 1024;

/// The most compressed bytes taken for `payload_size` bytes of content.
/// Deflate's worst case is about one part in 5,000 over the content (stored
/// blocks), and a literal's code is at most 15 bits; twice the content
/// plus 64 KiB is beyond any encoder's output. Without a bound, a server or
/// pusher could stream empty deflate blocks for a one-byte file until the
/// disk is full (a push is also held to its size limits; a pull is not).
fn max_deflated(payload_size: u64) -> u64 {
    payload_size.saturating_mul(2).saturating_add(64 * 1024)
}

enum State {
    Metadata(Vec<u8>),
    Content(Box<Content>),
}

struct Content {
    out: BufWriter<StagingFile>,
    /// The 8-byte length prefix and the header, until the header is complete.
    head: Vec<u8>,
    header_len: Option<usize>,
    /// Set once the header is parsed.
    body: Option<Body>,
}

struct Body {
    payload_size: u64,
    inflater: Decompress,
    hasher: Sha256,
    inflated: u64,
    ended: bool,
    saw_deflate_bytes: bool,
    /// A symlink's object may end after its header, as ostree writes it; a
    /// regular file's needs a deflate stream even when empty (ostree's
    /// reader fails without one).
    symlink: bool,
}

/// One object being received into a transaction.
pub struct IncomingObject<'t> {
    tx: &'t Transaction,
    name: ObjectName,
    /// The stored size announced, if any (a response without a length).
    declared: Option<u64>,
    /// The most stored bytes taken when no size was announced.
    limit: u64,
    /// Fetched, not pushed: see [`FETCHED_BYTES_PER_VALUE`].
    fetched: bool,
    received: u64,
    max_content: u64,
    state: State,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for IncomingObject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingObject")
            .field("name", &self.name)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

fn invalid(name: ObjectName, reason: impl Into<String>) -> Error {
    Error::Rejected(Rejected::Invalid {
        name,
        reason: reason.into(),
    })
}

impl Transaction {
    /// Like [`Transaction::begin_object`] for an object a pull fetches from
    /// a repository: metadata may be as large as ostree reads it (128 MiB,
    /// with a check of how many values it holds), and `size` is `None` when
    /// the server sent no length (chunked, or HTTP/2 without one): then the
    /// object is refused once more than its limit has arrived.
    pub fn begin_pulled_object(
        &self,
        name: ObjectName,
        size: Option<u64>,
        max_size: u64,
    ) -> Result<IncomingObject<'_>, Error> {
        IncomingObject::start(self, name, size, max_size, max_fetched_metadata, true)
    }
}

impl<'t> IncomingObject<'t> {
    /// Starts receiving `name`, whose stored form is `declared` bytes; its
    /// stored and content sizes may not exceed `max_size`, nor a metadata
    /// object's `metadata_limit(kind)`.
    pub(super) fn begin(
        tx: &'t Transaction,
        name: ObjectName,
        declared: u64,
        max_size: u64,
        metadata_limit: fn(ObjectType) -> u64,
    ) -> Result<Self, Error> {
        Self::start(tx, name, Some(declared), max_size, metadata_limit, false)
    }

    fn start(
        tx: &'t Transaction,
        name: ObjectName,
        declared: Option<u64>,
        max_size: u64,
        metadata_limit: fn(ObjectType) -> u64,
        fetched: bool,
    ) -> Result<Self, Error> {
        let limit = match name.kind {
            ObjectType::File => max_size,
            ObjectType::TombstoneCommit => {
                return Err(invalid(name, "tombstone commits cannot be pushed"));
            }
            kind => max_size.min(metadata_limit(kind)),
        };
        if let Some(size) = declared.filter(|&size| size > limit) {
            return Err(Error::Rejected(Rejected::TooLarge { name, size, limit }));
        }
        let state = if name.kind == ObjectType::File {
            let staging = tx.create_staging_file(&name)?;
            State::Content(Box::new(Content {
                out: BufWriter::with_capacity(64 * 1024, staging),
                head: Vec::new(),
                header_len: None,
                body: None,
            }))
        } else {
            State::Metadata(Vec::with_capacity(
                usize::try_from(declared.unwrap_or(0).min(64 * 1024)).unwrap_or(0),
            ))
        };
        Ok(IncomingObject {
            tx,
            name,
            declared,
            limit,
            fetched,
            received: 0,
            max_content: max_size,
            state,
            scratch: Vec::new(),
        })
    }

    /// Feeds the next bytes of the stored form.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Error> {
        self.feed_to(data, None)
    }

    /// Feeds the next bytes of the stored form, passing a content object's
    /// payload on to `sink` as it is inflated. Give the same sink on every
    /// call.
    pub fn feed_to(
        &mut self,
        data: &[u8],
        sink: Option<&mut dyn PayloadSink>,
    ) -> Result<(), Error> {
        self.received += data.len() as u64;
        match self.declared {
            Some(declared) if self.received > declared => {
                return Err(Error::Rejected(Rejected::SizeMismatch {
                    name: self.name,
                    declared,
                    actual: self.received,
                }));
            }
            None if self.received > self.limit => {
                return Err(invalid(
                    self.name,
                    format!(
                        "more than the {}-byte limit arrived (sent without a length)",
                        self.limit
                    ),
                ));
            }
            _ => {}
        }
        let name = self.name;
        let max_content = self.max_content;
        match &mut self.state {
            State::Metadata(buf) => {
                buf.extend_from_slice(data);
                Ok(())
            }
            State::Content(c) => {
                c.out
                    .write_all(data)
                    .map_err(io_err("write", &c.out.get_ref().path))?;
                feed_content(name, c, data, max_content, &mut self.scratch, sink)
            }
        }
    }

    /// Checks the object whole and stages it under its name.
    pub fn finish(self) -> Result<(), Error> {
        let name = self.name;
        if let Some(declared) = self.declared.filter(|&d| d != self.received) {
            return Err(Error::Rejected(Rejected::SizeMismatch {
                name,
                declared,
                actual: self.received,
            }));
        }
        match self.state {
            State::Metadata(buf) => {
                if name.kind != ObjectType::CommitMeta {
                    let actual = Checksum::of(&buf);
                    if actual != name.checksum {
                        return Err(Error::Rejected(Rejected::ChecksumMismatch { name, actual }));
                    }
                }
                if self.fetched
                    && name.kind != ObjectType::DirTree
                    && buf.len() as u64 > max_pushed_metadata(name.kind)
                {
                    sparse_enough(name, &buf)?;
                }
                object::validate_metadata(name.kind, &buf)
                    .map_err(|e| invalid(name, crate::error_chain(&e)))?;
                self.tx.stage_verified_metadata(&name, &buf)
            }
            State::Content(c) => {
                let Content { out, body, .. } = *c;
                {
                    let body =
                        body.ok_or_else(|| invalid(name, "the object ends inside its header"))?;
                    if !body.ended && !body.saw_deflate_bytes && !body.symlink {
                        return Err(invalid(
                            name,
                            "a regular file's object ends after its header, with no compressed \
                             content (only a symlink's may)",
                        ));
                    }
                    if !body.ended && (body.saw_deflate_bytes || body.payload_size != 0) {
                        return Err(invalid(name, "the compressed content ends early"));
                    }
                    if body.inflated != body.payload_size {
                        return Err(invalid(
                            name,
                            format!(
                                "{} bytes of content, its header says {}",
                                body.inflated, body.payload_size
                            ),
                        ));
                    }
                    let actual = Checksum::from_hasher(body.hasher);
                    if actual != name.checksum {
                        return Err(Error::Rejected(Rejected::ChecksumMismatch { name, actual }));
                    }
                    let staging = out.into_inner().map_err(|e| {
                        let (e, staging) = e.into_parts();
                        io_err("write", &staging.get_ref().path)(e)
                    })?;
                    self.tx.finish_staging_file(staging, &name)
                }
            }
        }
    }
}

/// Checks that fetched metadata `buf` of `name` decodes within one value per
/// [`FETCHED_BYTES_PER_VALUE`] bytes, before it is decoded in full.
fn sparse_enough(name: ObjectName, buf: &[u8]) -> Result<(), Error> {
    // The types of `object`'s parsers.
    let ty = match name.kind {
        ObjectType::Commit => object::COMMIT_TYPE,
        ObjectType::DirMeta => object::DIRMETA_TYPE,
        _ => "a{sv}",
    };
    let ty = gvariant::Type::parse(ty).expect("a valid type string");
    let units = buf.len() / FETCHED_BYTES_PER_VALUE + 1024;
    match gvariant::from_normal_bytes_within(&ty, buf, units) {
        Err(gvariant::DecodeError::TooExpensive) => Err(invalid(
            name,
            format!(
                "it holds more than one value per {FETCHED_BYTES_PER_VALUE} bytes, more than \
                 depot decodes in a {} larger than {} bytes",
                name.kind.extension(),
                max_pushed_metadata(name.kind)
            ),
        )),
        // Anything else wrong is for the full check to say.
        _ => Ok(()),
    }
}

fn feed_content(
    name: ObjectName,
    c: &mut Content,
    mut data: &[u8],
    max_content: u64,
    scratch: &mut Vec<u8>,
    mut sink: Option<&mut dyn PayloadSink>,
) -> Result<(), Error> {
    if c.body.is_none() {
        // Gather the 8-byte prefix, then the header it announces.
        let want = c.header_len.map_or(8, |l| 8 + l);
        let take = (want - c.head.len()).min(data.len());
        c.head.extend_from_slice(&data[..take]);
        data = &data[take..];
        if c.head.len() < want {
            return Ok(());
        }
        if c.header_len.is_none() {
            let len = u32::from_be_bytes([c.head[0], c.head[1], c.head[2], c.head[3]]);
            if len > MAX_FILEZ_HEADER {
                return Err(invalid(name, format!("declares a {len}-byte header")));
            }
            if c.head[4..8] != [0, 0, 0, 0] {
                return Err(invalid(name, "nonzero padding after the header length"));
            }
            c.header_len = Some(len as usize);
            return feed_content(name, c, data, max_content, scratch, sink);
        }
        let (header, payload_size) =
            parse_filez_header(&c.head[8..]).map_err(|e| invalid(name, crate::error_chain(&e)))?;
        if payload_size > max_content {
            return Err(Error::Rejected(Rejected::TooLarge {
                name,
                size: payload_size,
                limit: max_content,
            }));
        }
        let mut hasher = Sha256::new();
        hasher.update(content_checksum_prefix(&header));
        if let Some(sink) = sink.as_deref_mut() {
            sink.start(&header, payload_size)?;
        }
        // Room for one inflate step: the whole payload when it is small.
        scratch.resize(
            usize::try_from(payload_size).map_or(INFLATE_CHUNK, |n| n.clamp(1024, INFLATE_CHUNK)),
            0,
        );
        c.body = Some(Body {
            payload_size,
            inflater: Decompress::new(false),
            hasher,
            inflated: 0,
            ended: false,
            saw_deflate_bytes: false,
            symlink: header.is_symlink(),
        });
        c.head = Vec::new();
    }
    let Some(body) = c.body.as_mut() else {
        return Ok(());
    };
    if data.is_empty() {
        return Ok(());
    }
    if body.ended {
        return Err(invalid(
            name,
            "bytes after the end of the compressed content",
        ));
    }
    body.saw_deflate_bytes = true;
    while !data.is_empty() || !body.ended {
        let before_in = body.inflater.total_in();
        let before_out = body.inflater.total_out();
        let status = body
            .inflater
            .decompress(data, scratch, FlushDecompress::None)
            .map_err(|e| invalid(name, format!("bad compressed data: {e}")))?;
        let used = (body.inflater.total_in() - before_in) as usize;
        let produced = (body.inflater.total_out() - before_out) as usize;
        data = &data[used..];
        body.inflated += produced as u64;
        if body.inflater.total_in() > max_deflated(body.payload_size) {
            return Err(invalid(
                name,
                format!(
                    "more than {} compressed bytes for content of {} bytes \
                     (no deflate encoder writes that many)",
                    max_deflated(body.payload_size),
                    body.payload_size
                ),
            ));
        }
        if body.inflated > body.payload_size {
            return Err(invalid(
                name,
                format!(
                    "more content than the {} bytes its header says",
                    body.payload_size
                ),
            ));
        }
        body.hasher.update(&scratch[..produced]);
        // An empty stream (a symlink's may be one) gives the sink nothing.
        if let Some(sink) = sink.as_deref_mut().filter(|_| produced > 0) {
            sink.write(&scratch[..produced])?;
        }
        if status == Status::StreamEnd {
            body.ended = true;
            if !data.is_empty() {
                return Err(invalid(
                    name,
                    "bytes after the end of the compressed content",
                ));
            }
            break;
        }
        if used == 0 && produced == 0 {
            // Needs more input.
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::object::{FileHeader, Xattrs, write_filez};
    use crate::repo::Repo;

    fn filez(payload: &[u8]) -> (ObjectName, Vec<u8>) {
        let header = FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o100_644,
            symlink_target: String::new(),
            xattrs: Xattrs::default(),
        };
        let mut out = Vec::new();
        let (sum, _) =
            write_filez(&header, payload.len() as u64, payload, 6, &mut out).expect("in memory");
        (ObjectName::new(sum, ObjectType::File), out)
    }

    fn staging_entries(tx: &Transaction) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(tx.staging())
            .expect("staging")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn receive(tx: &Transaction, name: ObjectName, bytes: &[u8]) -> Result<(), Error> {
        let mut obj = tx.begin_object(name, bytes.len() as u64, u64::MAX)?;
        for chunk in bytes.chunks(7) {
            obj.feed(chunk)?;
        }
        obj.finish()
    }

    #[test]
    fn failed_and_abandoned_objects_leave_nothing_staged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        let (name, mut bytes) = filez(b"hello, world");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(receive(&tx, name, &bytes).is_err());
        assert_eq!(staging_entries(&tx), Vec::<String>::new());

        let mut obj = tx
            .begin_object(name, bytes.len() as u64, u64::MAX)
            .expect("begin");
        obj.feed(&bytes[..10]).expect("feed");
        assert_eq!(staging_entries(&tx).len(), 1, "written while it streams");
        assert!(!tx.has_object(&name), "not staged until verified");
        drop(obj);
        assert_eq!(staging_entries(&tx), Vec::<String>::new());
        assert!(!tx.has_object(&name));
    }

    #[test]
    fn only_a_symlink_may_end_after_its_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        // The object of every empty file, as ostree names it.
        let (empty, whole) = filez(b"");
        let header_len = 8 + u32::from_be_bytes(whole[..4].try_into().expect("4")) as usize;
        assert!(whole.len() > header_len, "an empty deflate stream follows");
        match receive(&tx, empty, &whole[..header_len]) {
            Err(Error::Rejected(Rejected::Invalid { reason, .. })) => {
                assert!(reason.contains("only a symlink"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!tx.has_object(&empty));
        receive(&tx, empty, &whole).expect("with its stream");
        let link = FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o120_777,
            symlink_target: "target".into(),
            xattrs: Xattrs::default(),
        };
        let mut out = Vec::new();
        let (sum, _) = write_filez(&link, 0, &b""[..], 6, &mut out).expect("in memory");
        let link_name = ObjectName::new(sum, ObjectType::File);
        receive(&tx, link_name, &out).expect("a symlink's header alone");
    }

    /// Deflate's empty, non-final stored block: header bits 000, then
    /// LEN 0 and NLEN 0xffff.
    const EMPTY_STORED_BLOCK: [u8; 5] = [0, 0, 0, 0xff, 0xff];

    /// The object of `content`, its deflate stream preceded by `padding`
    /// empty stored blocks.
    fn padded_filez(content: &[u8], padding: usize) -> (ObjectName, Vec<u8>) {
        let (name, plain) = filez(content);
        let header_len = 8 + u32::from_be_bytes(plain[..4].try_into().expect("4")) as usize;
        let mut bytes = plain[..header_len].to_vec();
        for _ in 0..padding {
            bytes.extend_from_slice(&EMPTY_STORED_BLOCK);
        }
        // A final stored block holding the content.
        let len = u16::try_from(content.len()).expect("small");
        bytes.push(1);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&(!len).to_le_bytes());
        bytes.extend_from_slice(content);
        (name, bytes)
    }

    #[test]
    fn compressed_bytes_are_bounded_by_the_content_they_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        // Empty blocks are valid deflate: a few are taken.
        let (name, bytes) = padded_filez(b"x", 100);
        receive(&tx, name, &bytes).expect("a little padding");
        // An endless run of them for a one-byte file is not.
        let (name, bytes) = padded_filez(b"y", 20_000);
        match receive(&tx, name, &bytes) {
            Err(Error::Rejected(Rejected::Invalid { reason, .. })) => {
                assert!(
                    reason.contains("compressed bytes for content of 1 bytes"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!tx.has_object(&name));
    }

    #[test]
    fn an_object_received_twice_is_staged_once_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        let (name, bytes) = filez(b"the same bytes twice");
        // The second copy arrives while the first is still streaming.
        let mut first = tx
            .begin_object(name, bytes.len() as u64, u64::MAX)
            .expect("begin");
        first.feed(&bytes).expect("feed");
        receive(&tx, name, &bytes).expect("the second copy");
        first.finish().expect("the first copy");
        assert_eq!(staging_entries(&tx), [name.to_string()]);
        // A copy that fails does not take the good one with it.
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(receive(&tx, name, &bad).is_err());
        assert_eq!(staging_entries(&tx), [name.to_string()]);
        // Nor does a copy under the object's name that fails after a good
        // copy replaced it.
        let (other, other_bytes) = filez(b"another object");
        let mut doomed = tx
            .begin_object(other, other_bytes.len() as u64 + 1, u64::MAX)
            .expect("begin");
        doomed.feed(&other_bytes).expect("feed");
        receive(&tx, other, &other_bytes).expect("a good copy");
        assert!(doomed.finish().is_err(), "one byte short");
        assert_eq!(staging_entries(&tx).len(), 2);
        assert!(tx.has_object(&name) && tx.has_object(&other));
        tx.publish_unsynced().expect("publish");
        assert_eq!(fs::read(repo.object_path(&name)).expect("published"), bytes);
        assert_eq!(
            fs::read(repo.object_path(&other)).expect("published"),
            other_bytes
        );
    }
}
