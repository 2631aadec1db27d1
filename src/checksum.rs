//! The SHA-256 checksum that names every ostree object.
//!
//! A [`Checksum`] always holds exactly 32 bytes, so once parsed it can be
//! turned into a path without further checks.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A SHA-256 object checksum. Displays as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Checksum([u8; 32]);

/// Why a string or byte slice is not a checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not 64 characters long.
    #[error("a checksum is 64 hex characters, got {0}")]
    Length(usize),
    /// A character other than `0-9a-f`.
    #[error("a checksum is lowercase hex (0-9, a-f), found {0:?}")]
    NotLowercaseHex(char),
    /// A binary checksum that is not 32 bytes long.
    #[error("a binary checksum is 32 bytes, got {0}")]
    BinaryLength(usize),
}

/// Initialization
impl Checksum {
    /// Wraps 32 raw bytes.
    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Checksum(bytes)
    }

    /// Takes a checksum from a slice that must be exactly 32 bytes (as in a
    /// dirtree or commit).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ParseError> {
        bytes
            .try_into()
            .map(Checksum)
            .map_err(|_| ParseError::BinaryLength(bytes.len()))
    }

    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Checksum(Sha256::digest(data).into())
    }

    /// Finishes a running hash.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Checksum(hasher.finalize().into())
    }
}

/// Access
impl Checksum {
    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Checksum {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(ParseError::Length(s.chars().count()));
        }
        if let Some(c) = s.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(ParseError::NotLowercaseHex(c));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseError::Length(s.len()))?;
        Ok(Checksum(out))
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 64];
        // Cannot fail: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

impl serde::Serialize for Checksum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Checksum {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let good = "554d55e622e1207180cabfe7404b455fd8e574e404315d12d2f8aef6b495249e";
        assert_eq!(good.parse::<Checksum>().expect("valid").to_string(), good);
        for (bad, err) in [
            ("", ParseError::Length(0)),
            (&good[1..], ParseError::Length(63)),
            (
                "554D55E622E1207180CABFE7404B455FD8E574E404315D12D2F8AEF6B495249E",
                ParseError::NotLowercaseHex('D'),
            ),
            (
                "g54d55e622e1207180cabfe7404b455fd8e574e404315d12d2f8aef6b495249e",
                ParseError::NotLowercaseHex('g'),
            ),
        ] {
            assert_eq!(bad.parse::<Checksum>(), Err(err), "{bad:?}");
        }
        assert_eq!(
            Checksum::from_slice(&[0; 31]),
            Err(ParseError::BinaryLength(31))
        );
    }
}
