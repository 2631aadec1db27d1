//! Content objects: the file header, the checksum prefix and the `.filez`
//! layout.
//!
//! A content checksum is `sha256(BE32(len H) ‖ 0000 ‖ H ‖ payload)` where `H`
//! is the `(uuuusa(ayay))` header; a `.filez` stores `BE32(len Z) ‖ 0000 ‖ Z ‖
//! deflate(payload)` where `Z` is `(tuuuusa(ayay))`, the same header with the
//! payload size in front. ostree stores its integers big-endian.

use std::borrow::Cow;

use crate::gvariant::{self, Type, Value};

use super::{Error, structure};

/// Extended attributes in ostree's canonical form: sorted by name, each name
/// with its trailing NUL (as ostree stores it), empty values dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Xattrs(Vec<(Vec<u8>, Vec<u8>)>);

/// Initialization
impl Xattrs {
    /// Canonicalises `(name without NUL, value)` pairs the way ostree does
    /// (`canonicalize_xattrs`, libglnx): skip empty values, sort by name.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(mut name, value)| {
                name.push(0);
                (name, value)
            })
            .collect();
        v.sort();
        Xattrs(v)
    }

    pub(crate) fn from_value(kind: &'static str, v: &Value<'_>) -> Result<Self, Error> {
        let items = v
            .as_array()
            .ok_or_else(|| structure(kind, "xattrs are not a(ayay)"))?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let pair = item
                .as_tuple()
                .ok_or_else(|| structure(kind, "xattr is not (ayay)"))?;
            match pair {
                [Value::Bytes(name), Value::Bytes(value)] => {
                    out.push((name.to_vec(), value.to_vec()));
                }
                _ => return Err(structure(kind, "xattr is not (ayay)")),
            }
        }
        Ok(Xattrs(out))
    }

    pub(crate) fn to_value(&self) -> Value<'_> {
        Value::Array(
            Type::Tuple(vec![
                Type::Array(Box::new(Type::Byte)),
                Type::Array(Box::new(Type::Byte)),
            ]),
            self.0
                .iter()
                .map(|(n, v)| Value::Tuple(vec![Value::bytes(n), Value::bytes(v)]))
                .collect(),
        )
    }
}

/// Access
impl Xattrs {
    /// `(name without its trailing NUL, value)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0
            .iter()
            .map(|(n, v)| (n.strip_suffix(&[0]).unwrap_or(n), v.as_slice()))
    }

    /// No attributes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// The metadata of a content object: what ostree hashes besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileHeader {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full `st_mode`, file type bits included (`S_IFREG` or `S_IFLNK`).
    pub mode: u32,
    /// The symlink target; empty for regular files.
    pub symlink_target: String,
    /// Extended attributes.
    pub xattrs: Xattrs,
}

/// Access
impl FileHeader {
    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }

    /// Checks ostree's rules for a file header (`ostree_validate_structureof_file_mode`
    /// and friends): regular file or symlink, no stray mode bits, target only
    /// for symlinks.
    pub fn validate(&self) -> Result<(), Error> {
        let kind = "file header";
        let ty = self.mode & S_IFMT;
        if ty != S_IFREG && ty != S_IFLNK {
            return Err(structure(
                kind,
                format!(
                    "mode {:o} is neither a regular file nor a symlink",
                    self.mode
                ),
            ));
        }
        if self.mode & !(S_IFMT | 0o7777) != 0 {
            return Err(structure(
                kind,
                format!("mode {:o} has invalid bits", self.mode),
            ));
        }
        if ty == S_IFREG && !self.symlink_target.is_empty() {
            return Err(structure(kind, "a regular file has a symlink target"));
        }
        if ty == S_IFLNK && self.symlink_target.is_empty() {
            return Err(structure(kind, "a symlink has an empty target"));
        }
        Ok(())
    }

    /// The `(uuuusa(ayay))` header hashed into the content checksum.
    fn checksum_value(&self) -> Value<'_> {
        Value::Tuple(vec![
            Value::Uint32(self.uid.swap_bytes()),
            Value::Uint32(self.gid.swap_bytes()),
            Value::Uint32(self.mode.swap_bytes()),
            Value::Uint32(0),
            Value::Str(Cow::Borrowed(&self.symlink_target)),
            self.xattrs.to_value(),
        ])
    }
}

fn length_prefixed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(body);
    out
}

/// The bytes that precede the payload in a content checksum:
/// `BE32(len H) ‖ 0000 ‖ H`.
pub fn content_checksum_prefix(header: &FileHeader) -> Vec<u8> {
    length_prefixed(&gvariant::to_bytes(&header.checksum_value()))
}

/// The bytes that precede the deflated payload in a `.filez`:
/// `BE32(len Z) ‖ 0000 ‖ Z` with `Z = (tuuuusa(ayay))`.
pub fn filez_header_bytes(header: &FileHeader, size: u64) -> Vec<u8> {
    let z = Value::Tuple(vec![
        Value::Uint64(size.swap_bytes()),
        Value::Uint32(header.uid.swap_bytes()),
        Value::Uint32(header.gid.swap_bytes()),
        Value::Uint32(header.mode.swap_bytes()),
        Value::Uint32(0),
        Value::Str(Cow::Borrowed(&header.symlink_target)),
        header.xattrs.to_value(),
    ]);
    length_prefixed(&gvariant::to_bytes(&z))
}

/// Writes a whole `.filez` to `out`: the header for `size` bytes of
/// payload, then the payload read from `payload`, deflated at `level` (a
/// symlink gets its header alone, as ostree writes it). Returns the content
/// checksum of what was actually read and its length; the caller compares
/// them with what it expects, which catches a source that changed.
pub fn write_filez(
    header: &FileHeader,
    size: u64,
    mut payload: impl std::io::Read,
    level: u32,
    mut out: impl std::io::Write,
) -> std::io::Result<(crate::checksum::Checksum, u64)> {
    use sha2::{Digest, Sha256};
    out.write_all(&filez_header_bytes(header, size))?;
    let mut hasher = Sha256::new();
    hasher.update(content_checksum_prefix(header));
    if header.is_symlink() {
        out.flush()?;
        return Ok((crate::checksum::Checksum::from_hasher(hasher), 0));
    }
    let mut encoder = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(level));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match payload.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        hasher.update(&buf[..n]);
        std::io::Write::write_all(&mut encoder, &buf[..n])?;
    }
    encoder.finish()?.flush()?;
    Ok((crate::checksum::Checksum::from_hasher(hasher), total))
}

/// The longest `.filez` header depot accepts. ostree caps it at 10 MiB
/// (`_ostree_zlib_file_header_parse` reads it whole); so does depot.
pub const MAX_FILEZ_HEADER: u32 = 10 * 1024 * 1024;

/// Parses the header `Z` of a `.filez` (without its 8-byte length prefix):
/// returns the header and the declared uncompressed size.
pub fn parse_filez_header(z: &[u8]) -> Result<(FileHeader, u64), Error> {
    let kind = "file header";
    let v = super::decode_object(kind, "(tuuuusa(ayay))", z)?;
    let Value::Tuple(m) = v else {
        return Err(structure(kind, "not a tuple"));
    };
    let [
        Value::Uint64(size),
        Value::Uint32(uid),
        Value::Uint32(gid),
        Value::Uint32(mode),
        Value::Uint32(rdev),
        Value::Str(target),
        xattrs,
    ] = m.as_slice()
    else {
        return Err(structure(kind, "unexpected members"));
    };
    if *rdev != 0 {
        return Err(structure(kind, "rdev is not 0"));
    }
    let header = FileHeader {
        uid: uid.swap_bytes(),
        gid: gid.swap_bytes(),
        mode: mode.swap_bytes(),
        symlink_target: target.to_string(),
        xattrs: Xattrs::from_value(kind, xattrs)?,
    };
    header.validate()?;
    let size = size.swap_bytes();
    if header.is_symlink() && size != 0 {
        return Err(structure(kind, "a symlink with a nonzero size"));
    }
    Ok((header, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Checksum;
    use sha2::{Digest, Sha256};

    fn checksum(h: &FileHeader, payload: &[u8]) -> String {
        let mut s = Sha256::new();
        s.update(content_checksum_prefix(h));
        s.update(payload);
        Checksum::from_hasher(s).to_hex()
    }

    fn regular(mode: u32) -> FileHeader {
        FileHeader {
            uid: 0,
            gid: 0,
            mode,
            symlink_target: String::new(),
            xattrs: Xattrs::default(),
        }
    }

    #[test]
    fn known_checksums_from_ostree() {
        // From ostree-format.md: hello.txt ("hello\n", 0644), empty file, symlink.
        assert!(checksum(&regular(0o100_644), b"hello\n").starts_with("44f778e5"));
        assert!(checksum(&regular(0o100_644), b"").starts_with("cc700d46"));
        let link = FileHeader {
            mode: 0o120_777,
            symlink_target: "hello.txt".into(),
            ..regular(0)
        };
        assert!(checksum(&link, b"").starts_with("f66efa49"));
    }

    #[test]
    fn filez_header_vector() {
        // "hello\n", 0/0/0100644: header length 0x1a, size BE 6.
        let bytes = filez_header_bytes(&regular(0o100_644), 6);
        assert_eq!(
            hex::encode(&bytes),
            "0000001a 00000000 0000000000000006 00000000 00000000 000081a4 00000000 00 19"
                .replace(' ', "")
        );
        let (h, size) = parse_filez_header(&bytes[8..]).expect("valid");
        assert_eq!((h, size), (regular(0o100_644), 6));
    }

    #[test]
    fn xattrs_are_canonical() {
        let x = Xattrs::from_pairs([
            (b"user.zzz".to_vec(), b"1".to_vec()),
            (b"user.empty".to_vec(), Vec::new()),
            (b"user.aaa".to_vec(), b"hello".to_vec()),
        ]);
        let names: Vec<&[u8]> = x.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [b"user.aaa".as_slice(), b"user.zzz"]);
        let h = FileHeader {
            xattrs: x,
            ..regular(0o100_644)
        };
        let bytes = filez_header_bytes(&h, 0);
        assert_eq!(bytes[3], 0x36, "header length from ostree-format.md");
    }

    #[test]
    fn bad_headers() {
        for (h, size, want) in [
            (regular(0o020_644), 0, "neither a regular file"),
            (regular(0o300_644), 0, "invalid bits"),
            (
                FileHeader {
                    symlink_target: "x".into(),
                    ..regular(0o100_644)
                },
                0,
                "symlink target",
            ),
            (
                FileHeader {
                    symlink_target: "x".into(),
                    ..regular(0o120_777)
                },
                3,
                "nonzero size",
            ),
            (regular(0o120_777), 0, "empty target"),
        ] {
            let bytes = filez_header_bytes(&h, size);
            let err = parse_filez_header(&bytes[8..]).expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
        }
    }
}
