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

/// The longest xattr name Linux takes, without its NUL (`XATTR_NAME_MAX`).
const MAX_XATTR_NAME: usize = 255;
/// The largest xattr value Linux takes (`XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// The longest symlink target Linux takes (`PATH_MAX`, less its NUL).
pub const MAX_SYMLINK_TARGET: usize = 4095;

/// Refuses an xattr no checkout could set: ostree passes the stored name to
/// `fsetxattr` as a C string, so it must end in its one NUL.
fn check_xattr(kind: &'static str, name: &[u8], value: &[u8]) -> Result<(), Error> {
    let Some((&0, bare)) = name.split_last() else {
        return Err(structure(kind, "an xattr name does not end in NUL"));
    };
    if bare.is_empty() || bare.contains(&0) {
        return Err(structure(kind, "an xattr name is empty or holds a NUL"));
    }
    if bare.len() > MAX_XATTR_NAME {
        return Err(structure(
            kind,
            format!("an xattr name is longer than {MAX_XATTR_NAME} bytes"),
        ));
    }
    if value.len() > MAX_XATTR_VALUE {
        return Err(structure(
            kind,
            format!("an xattr value is larger than {MAX_XATTR_VALUE} bytes"),
        ));
    }
    Ok(())
}

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
                    check_xattr(kind, name, value)?;
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
        if self.symlink_target.len() > MAX_SYMLINK_TARGET {
            return Err(structure(
                kind,
                format!(
                    "a symlink target of {} bytes is longer than the {MAX_SYMLINK_TARGET} \
                     a checkout can create",
                    self.symlink_target.len()
                ),
            ));
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

/// Payloads up to this size are deflated whole, by libdeflate: at the same
/// level it takes about half zlib's CPU and its output is a little smaller.
/// Longer ones stream through zlib in bounded memory. Either way the result
/// is one raw deflate stream, which is all an inflater needs.
pub const WHOLE_DEFLATE_LIMIT: u64 = 16 * 1024 * 1024;

/// Writes a whole `.filez` to `out`: the header for `size` bytes of
/// payload, then the payload read from `payload`, deflated at `level` (a
/// symlink gets its header alone, as ostree writes it). At most one byte
/// past `size` is read. Returns the content checksum of what was actually
/// read and its length; the caller compares them with what it expects,
/// which catches a source that changed, grew or shrank.
pub fn write_filez(
    header: &FileHeader,
    size: u64,
    payload: impl std::io::Read,
    level: u32,
    out: impl std::io::Write,
) -> std::io::Result<(crate::checksum::Checksum, u64)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new_with_prefix(content_checksum_prefix(header));
    let n = write_filez_with(header, size, payload, level, out, Some(&mut hasher))?;
    Ok((crate::checksum::Checksum::from_hasher(hasher), n))
}

/// [`write_filez`] without hashing the payload again: for a caller that
/// hashed it already and whose reader hashes the stored form anyway (a
/// push: `depot-receive` checks every object), and that notices a changed
/// source another way. Returns the length of what was read.
pub fn write_filez_unhashed(
    header: &FileHeader,
    size: u64,
    payload: impl std::io::Read,
    level: u32,
    out: impl std::io::Write,
) -> std::io::Result<u64> {
    write_filez_with(header, size, payload, level, out, None)
}

fn write_filez_with(
    header: &FileHeader,
    size: u64,
    payload: impl std::io::Read,
    level: u32,
    mut out: impl std::io::Write,
    mut hasher: Option<&mut sha2::Sha256>,
) -> std::io::Result<u64> {
    use sha2::Digest;
    out.write_all(&filez_header_bytes(header, size))?;
    if header.is_symlink() {
        out.flush()?;
        return Ok(0);
    }
    // One byte past `size` is enough to show a source that grew.
    let mut payload = std::io::Read::take(payload, size.saturating_add(1));
    if level > 0 && size <= WHOLE_DEFLATE_LIMIT {
        return WHOLE_DEFLATE.with_borrow_mut(|scratch| {
            let result = scratch.write_body(&mut payload, size, hasher, level, &mut out);
            scratch.release_if_large();
            result
        });
    }
    let mut buf = vec![0u8; SAMPLE_LEN];
    let mut n = read_some(&mut payload, &mut buf)?;
    // The first chunk decides: data deflate cannot shrink is stored.
    let level = if level > 0 && looks_incompressible(&buf[..n]) {
        0
    } else {
        level
    };
    let mut encoder = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(level));
    let mut total = 0u64;
    while n > 0 {
        total += n as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        std::io::Write::write_all(&mut encoder, &buf[..n])?;
        n = read_some(&mut payload, &mut buf)?;
    }
    encoder.finish()?.flush()?;
    Ok(total)
}

/// How much of a payload [`looks_incompressible`] is shown, and the chunk a
/// streamed payload is read in.
const SAMPLE_LEN: usize = 64 * 1024;

fn read_some(payload: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match payload.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// A thread's buffers and compressors for whole-payload deflate, kept
/// between files: a compressor's tables cost more to set up (and zero) than
/// a small file costs to deflate, even one that is only stored.
#[derive(Default)]
struct WholeDeflate {
    input: Vec<u8>,
    output: Vec<u8>,
    compressor: Option<(u32, libdeflater::Compressor)>,
    /// Level 0, for what [`looks_incompressible`].
    storer: Option<libdeflater::Compressor>,
}

impl WholeDeflate {
    /// What a thread keeps between files: a large file's buffers are freed.
    const KEEP: usize = 1024 * 1024;

    fn release_if_large(&mut self) {
        if self.input.capacity() > Self::KEEP {
            self.input = Vec::new();
        }
        if self.output.capacity() > Self::KEEP {
            self.output = Vec::new();
        }
    }

    /// Reads the payload whole, hashes it (given a hasher), and writes it
    /// deflated at `level`, or stored if it looks incompressible.
    fn write_body(
        &mut self,
        payload: &mut impl std::io::Read,
        size: u64,
        hasher: Option<&mut sha2::Sha256>,
        level: u32,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<u64> {
        use sha2::Digest;
        self.input.clear();
        self.input.reserve_exact(size as usize + 1);
        payload.read_to_end(&mut self.input)?;
        if let Some(h) = hasher {
            h.update(&self.input);
        }
        let sample = &self.input[..self.input.len().min(SAMPLE_LEN)];
        let level = if looks_incompressible(sample) {
            0
        } else {
            level
        };
        let deflated = self.deflate(level)?;
        out.write_all(deflated)?;
        out.flush()?;
        Ok(self.input.len() as u64)
    }

    /// Deflates `self.input` at `level` (0, stored, to 12; above 12 is 12).
    fn deflate(&mut self, level: u32) -> std::io::Result<&[u8]> {
        let level = level.min(12);
        let new_compressor = || {
            libdeflater::CompressionLvl::new(level as i32)
                .map(libdeflater::Compressor::new)
                .map_err(|e| std::io::Error::other(format!("deflate level {level}: {e:?}")))
        };
        let compressor = if level == 0 {
            match &mut self.storer {
                Some(c) => c,
                slot => slot.insert(new_compressor()?),
            }
        } else {
            match &mut self.compressor {
                Some((l, c)) if *l == level => c,
                slot => &mut slot.insert((level, new_compressor()?)).1,
            }
        };
        // Grown (and zeroed) only past the largest bound so far, not per file.
        let bound = compressor.deflate_compress_bound(self.input.len());
        if self.output.len() < bound {
            self.output.resize(bound, 0);
        }
        let n = compressor
            .deflate_compress(&self.input, &mut self.output[..bound])
            .map_err(|e| std::io::Error::other(format!("deflate: {e}")))?;
        Ok(&self.output[..n])
    }
}

thread_local! {
    static WHOLE_DEFLATE: std::cell::RefCell<WholeDeflate> = std::cell::RefCell::default();
}

/// Whether `sample`, the start of a file, looks like data deflate cannot
/// shrink (compressed archives, images, encrypted or random bytes): its
/// bytes spread over all 256 values almost as evenly as random bytes do.
/// Deflating such data costs most of a push's CPU for nothing, so it is
/// stored (deflate level 0, which every inflater reads); btrfs's
/// compression heuristic makes the same call from a sample. The bar is the
/// entropy random bytes show in a sample of this size (a little under 8 bits
/// a byte in a short one) less 0.05 bits: text, code and executables sit
/// at 4 to 6.5. Under 1 KiB there is too little to tell, and the sample is
/// compressed.
pub fn looks_incompressible(sample: &[u8]) -> bool {
    if sample.len() < 1024 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    // The expected shortfall of a random sample's entropy from 8 bits.
    let random_shortfall = 255.0 / (2.0 * n * std::f64::consts::LN_2);
    entropy > 8.0 - random_shortfall - 0.05
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
    fn headers_no_checkout_could_create_do_not_parse() {
        let parses = |h: &FileHeader| parse_filez_header(&filez_header_bytes(h, 0)[8..]);
        let with_xattr = |name: &[u8]| FileHeader {
            xattrs: Xattrs(vec![(name.to_vec(), b"v".to_vec())]),
            ..regular(0o100_644)
        };
        assert!(parses(&with_xattr(b"user.a\0")).is_ok());
        for name in [&b"user.a"[..], b"\0", b"user\0.a\0", b""] {
            assert!(parses(&with_xattr(name)).is_err(), "{name:?}");
        }
        let mut long = vec![b'u'; MAX_XATTR_NAME + 1];
        long.push(0);
        assert!(parses(&with_xattr(&long)).is_err());
        let link = |len: usize| FileHeader {
            mode: 0o120_777,
            symlink_target: "t".repeat(len),
            ..regular(0)
        };
        assert!(parses(&link(MAX_SYMLINK_TARGET)).is_ok());
        let err = parses(&link(MAX_SYMLINK_TARGET + 1)).expect_err("too long");
        assert!(err.to_string().contains("4096 bytes"), "{err}");
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

    /// Bytes that look random: a SHA-256 chain.
    fn random_bytes(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = Sha256::digest(b"seed").to_vec();
        while out.len() < len {
            out.extend_from_slice(&block);
            block = Sha256::digest(&block).to_vec();
        }
        out.truncate(len);
        out
    }

    #[test]
    fn random_and_compressed_data_is_stored_text_is_compressed() {
        for len in [1024, 1500, 4096, 65536] {
            assert!(
                looks_incompressible(&random_bytes(len)),
                "{len} random bytes"
            );
        }
        let text = include_bytes!("file.rs");
        assert!(!looks_incompressible(text));
        assert!(!looks_incompressible(&text[..1024]));
        // Deflated text, as a .gz or .zip holds it: the first 64 KiB, as
        // write_filez samples it.
        let words = [
            "object", "commit", "ref", "the", "of", "a", "summary", "push",
        ];
        let prose: Vec<u8> = random_bytes(400_000)
            .iter()
            .flat_map(|b| [words[(b % 8) as usize].as_bytes(), b" "].concat())
            .collect();
        let mut deflated =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut deflated, &prose).expect("in memory");
        let deflated = deflated.finish().expect("in memory");
        assert!(deflated.len() > 65536, "{} deflated bytes", deflated.len());
        assert!(looks_incompressible(&deflated[..65536]));
        // Too short to tell.
        assert!(!looks_incompressible(&random_bytes(1000)));
        // Skewed toward some values, as in executables: compressed.
        let skewed: Vec<u8> = random_bytes(65536).iter().map(|b| b & 0x7f).collect();
        assert!(!looks_incompressible(&skewed));
    }

    #[test]
    fn stored_content_reads_back_and_hashes_the_same() {
        let header = regular(0o100_644);
        for payload in [random_bytes(200_000), b"compressible ".repeat(20_000)] {
            let mut out = Vec::new();
            let (sum, n) = write_filez(&header, payload.len() as u64, &payload[..], 6, &mut out)
                .expect("write");
            assert_eq!(n, payload.len() as u64);
            assert_eq!(sum.to_hex(), checksum(&header, &payload));
            let header_len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
            let body = &out[8 + header_len..];
            assert_eq!(inflate_body(&out), payload);
            let stored = body.len() >= payload.len();
            assert_eq!(
                stored,
                looks_incompressible(&payload[..65536.min(payload.len())])
            );
        }
    }

    /// Inflates the body of a `.filez` written by write_filez.
    fn inflate_body(filez: &[u8]) -> Vec<u8> {
        let header_len = u32::from_be_bytes([filez[0], filez[1], filez[2], filez[3]]) as usize;
        let mut inflated = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::DeflateDecoder::new(&filez[8 + header_len..]),
            &mut inflated,
        )
        .expect("inflate");
        inflated
    }

    #[test]
    fn whole_and_streamed_deflate_both_round_trip() {
        let header = regular(0o100_644);
        let text = include_bytes!("file.rs");
        let long = text.repeat((WHOLE_DEFLATE_LIMIT as usize / text.len()) + 1);
        assert!(long.len() as u64 > WHOLE_DEFLATE_LIMIT);
        for (payload, level) in [(&text[..], 9), (&text[..], 12), (&long[..], 1)] {
            let mut out = Vec::new();
            let (sum, n) = write_filez(&header, payload.len() as u64, payload, level, &mut out)
                .expect("write");
            assert_eq!(
                (sum.to_hex(), n),
                (checksum(&header, payload), payload.len() as u64)
            );
            assert!(out.len() < payload.len() / 2, "level {level} compressed");
            assert_eq!(inflate_body(&out), payload);
        }
    }

    #[test]
    fn a_payload_longer_than_declared_reads_one_byte_more() {
        let header = regular(0o100_644);
        let payload = b"compressible ".repeat(1000);
        let declared = payload.len() as u64 - 100;
        let read = &payload[..=declared as usize];
        // Level 6 deflates whole; level 0 streams.
        for level in [6, 0] {
            let mut out = Vec::new();
            let (sum, n) =
                write_filez(&header, declared, &payload[..], level, &mut out).expect("write");
            assert_eq!((n, sum.to_hex()), (declared + 1, checksum(&header, read)));
        }
    }

    #[test]
    fn empty_and_limit_sized_payloads_round_trip() {
        let header = regular(0o100_644);
        let limit_sized = b"0123456789abcdef".repeat(WHOLE_DEFLATE_LIMIT as usize / 16);
        for payload in [&b""[..], &limit_sized[..]] {
            let mut out = Vec::new();
            let (sum, n) =
                write_filez(&header, payload.len() as u64, payload, 6, &mut out).expect("write");
            assert_eq!(
                (n, sum.to_hex()),
                (payload.len() as u64, checksum(&header, payload))
            );
            assert_eq!(inflate_body(&out), payload);
        }
    }
}
