//! Reading a `.filez` content object, verified as it streams.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use flate2::read::DeflateDecoder;
use sha2::{Digest, Sha256};

use crate::checksum::Checksum;
use crate::object::{
    FileHeader, MAX_FILEZ_HEADER, ObjectName, ObjectType, content_checksum_prefix,
    parse_filez_header,
};

use super::{Error, Repo, io_err};

/// The payload of a content object. Reading it inflates and hashes; the read
/// that reaches the end fails with `InvalidData` if the size or the checksum
/// is wrong, so a caller that reads to the end has verified the object.
pub struct ContentReader {
    header: FileHeader,
    size: u64,
    name: ObjectName,
    inner: DeflateDecoder<BufReader<File>>,
    hasher: Sha256,
    read: u64,
    verified: bool,
}

impl std::fmt::Debug for ContentReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentReader")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl ContentReader {
    pub(super) fn open(repo: &Repo, checksum: Checksum) -> Result<Self, Error> {
        let name = ObjectName::new(checksum, ObjectType::File);
        let path = repo.object_path(&name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingObject { name });
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut reader = BufReader::with_capacity(64 * 1024, file);
        let corrupt = |reason: String| Error::CorruptObject { name, reason };
        let mut prefix = [0u8; 8];
        reader
            .read_exact(&mut prefix)
            .map_err(|e| corrupt(format!("cannot read the header length: {e}")))?;
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len > MAX_FILEZ_HEADER {
            return Err(corrupt(format!("declares a {len}-byte header")));
        }
        let mut z = vec![0u8; len as usize];
        reader
            .read_exact(&mut z)
            .map_err(|e| corrupt(format!("truncated header: {e}")))?;
        let (header, size) = parse_filez_header(&z).map_err(|e| corrupt(crate::error_chain(&e)))?;
        let mut hasher = Sha256::new();
        hasher.update(content_checksum_prefix(&header));
        Ok(ContentReader {
            header,
            size,
            name,
            inner: DeflateDecoder::new(reader),
            hasher,
            read: 0,
            verified: false,
        })
    }

    /// The file's header: mode, owner, symlink target, xattrs.
    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// The declared payload size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads the rest of the payload into a sink, verifying it.
    pub fn verify_to_end(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }

    fn finish(&mut self) -> io::Result<usize> {
        if self.read != self.size {
            return Err(self.invalid(&format!(
                "{} bytes of content, header says {}",
                self.read, self.size
            )));
        }
        let actual = Checksum::from_hasher(std::mem::take(&mut self.hasher));
        if actual != self.name.checksum {
            return Err(self.invalid(&format!("content hashes to {actual}")));
        }
        self.verified = true;
        Ok(0)
    }

    fn invalid(&self, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}{what}", corrupt_prefix(&self.name)),
        )
    }

    /// What an error from reading this object means: its `InvalidData` is
    /// [`Error::CorruptObject`] (the object is damaged), anything else an
    /// I/O error on its file.
    pub fn read_error(&self, repo: &Repo, e: io::Error) -> Error {
        let name = self.name;
        if e.kind() == io::ErrorKind::InvalidData {
            let text = e.to_string();
            let reason = text.strip_prefix(&corrupt_prefix(&name)).unwrap_or(&text);
            Error::CorruptObject {
                name,
                reason: reason.to_string(),
            }
        } else {
            super::io_err("read", &repo.object_path(&name))(e)
        }
    }
}

/// How the reader's own errors begin, so that read errors stand alone when
/// the reader is used as a plain `Read`.
fn corrupt_prefix(name: &ObjectName) -> String {
    format!("object {name} is corrupt: ")
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        // ostree writes no deflate stream at all for symlinks; an empty
        // payload may therefore end right after the header.
        if self.size == 0 && self.read == 0 && self.inner.get_mut().fill_buf()?.is_empty() {
            return self.finish();
        }
        let n = self
            .inner
            .read(buf)
            .map_err(|e| self.invalid(&format!("bad compressed data: {e}")))?;
        if n == 0 {
            return self.finish();
        }
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.invalid(&format!(
                "more content than the {} bytes its header says",
                self.size
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
