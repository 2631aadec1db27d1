//! The ostree object model: object kinds and names, and the typed form of
//! every metadata object. Pure: bytes in, values out.
//!
//! Parsing is strict. A parsed [`DirTree`], [`DirMeta`] or [`Commit`] came
//! from normal-form bytes that pass ostree's own structure checks
//! (`ostree_validate_structureof_*`), plus the sorting that ostree's binary
//! searches rely on but never check.

mod commit;
mod dirmeta;
mod dirtree;
mod file;
mod map;

use std::fmt;
use std::str::FromStr;

pub(crate) use commit::COMMIT_TYPE;
pub use commit::{Commit, REF_BINDING_KEY};
pub(crate) use dirmeta::DIRMETA_TYPE;
pub use dirmeta::DirMeta;
pub use dirtree::{
    DirTree, FileName, MAX_NAME_LEN, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_PATH_BYTES,
    ShapeError, SubdirEntry, TreeShape, tree_shape,
};
pub use file::{
    FileHeader, MAX_FILEZ_HEADER, Xattrs, content_checksum_prefix, filez_header_bytes,
    parse_filez_header, write_filez, write_filez_unhashed,
};
pub use map::ObjectMap;

use crate::checksum::{self, Checksum};
use crate::gvariant::{self, DecodeError};

/// Largest metadata object ostree accepts (`OSTREE_MAX_METADATA_SIZE`,
/// `src/libostree/ostree-core.h`, 128 MiB in 2022.7).
pub const MAX_METADATA_SIZE: u64 = 128 * 1024 * 1024;

/// The kinds of object an archive repository holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectType {
    /// `.filez`: file content (regular file or symlink) with its header.
    File,
    /// `.dirtree`: the names in a directory.
    DirTree,
    /// `.dirmeta`: a directory's owner, mode and xattrs.
    DirMeta,
    /// `.commit`
    Commit,
    /// `.tombstone-commit`
    TombstoneCommit,
    /// `.commitmeta`: detached metadata, named by its commit's checksum.
    CommitMeta,
}

/// Access
impl ObjectType {
    /// The file extension in an archive repository.
    pub fn extension(self) -> &'static str {
        match self {
            ObjectType::File => "filez",
            ObjectType::DirTree => "dirtree",
            ObjectType::DirMeta => "dirmeta",
            ObjectType::Commit => "commit",
            ObjectType::TombstoneCommit => "tombstone-commit",
            ObjectType::CommitMeta => "commitmeta",
        }
    }

    /// The kind an extension names, if any.
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext {
            "filez" => ObjectType::File,
            "dirtree" => ObjectType::DirTree,
            "dirmeta" => ObjectType::DirMeta,
            "commit" => ObjectType::Commit,
            "tombstone-commit" => ObjectType::TombstoneCommit,
            "commitmeta" => ObjectType::CommitMeta,
            _ => return None,
        })
    }

    /// Metadata objects are GVariants checksummed as stored.
    pub fn is_metadata(self) -> bool {
        !matches!(self, ObjectType::File)
    }
}

/// An object's full name: checksum plus kind, as in `<hex>.dirtree`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    /// The checksum.
    pub checksum: Checksum,
    /// The kind.
    pub kind: ObjectType,
}

/// Why a string is not an object name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// No `.` between checksum and extension.
    #[error("an object name is <64 hex>.<kind>")]
    NoExtension,
    /// An extension that names no object kind.
    #[error("unknown object kind {0:?}")]
    UnknownKind(String),
    /// A bad checksum part.
    #[error(transparent)]
    Checksum(#[from] checksum::ParseError),
}

/// Initialization
impl ObjectName {
    /// Names an object.
    pub fn new(checksum: Checksum, kind: ObjectType) -> Self {
        ObjectName { checksum, kind }
    }
}

/// Access
impl ObjectName {
    /// The path relative to the repository: `objects/XX/<62 hex>.<ext>`.
    pub fn relative_path(&self) -> String {
        let hex = self.checksum.to_hex();
        format!(
            "objects/{}/{}.{}",
            &hex[..2],
            &hex[2..],
            self.kind.extension()
        )
    }
}

impl FromStr for ObjectName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hex, ext) = s.split_once('.').ok_or(NameError::NoExtension)?;
        let kind = ObjectType::from_extension(ext)
            .ok_or_else(|| NameError::UnknownKind(ext.to_string()))?;
        Ok(ObjectName {
            checksum: hex.parse()?,
            kind,
        })
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.checksum, self.kind.extension())
    }
}

impl serde::Serialize for ObjectName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("object {s:?}: {e}")))
    }
}

/// Why bytes are not a valid metadata object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a normal-form GVariant of the object's type.
    #[error("{kind} is not a valid GVariant")]
    Variant {
        /// The object kind being parsed.
        kind: &'static str,
        /// The codec's reason.
        source: DecodeError,
    },
    /// A rule from `ostree_validate_structureof_*` or depot's sorting rule.
    #[error("{kind}: {reason}")]
    Structure {
        /// The object kind being parsed.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A metadata object larger than [`MAX_METADATA_SIZE`].
    #[error("{kind} is {size} bytes, more than the {MAX_METADATA_SIZE}-byte limit for metadata")]
    TooLarge {
        /// The object kind.
        kind: &'static str,
        /// Its size.
        size: u64,
    },
}

pub(crate) fn structure(kind: &'static str, reason: impl Into<String>) -> Error {
    Error::Structure {
        kind,
        reason: reason.into(),
    }
}

/// Refuses metadata over [`MAX_METADATA_SIZE`].
pub(crate) fn within_metadata_limit(kind: &'static str, data: &[u8]) -> Result<(), Error> {
    if data.len() as u64 > MAX_METADATA_SIZE {
        return Err(Error::TooLarge {
            kind,
            size: data.len() as u64,
        });
    }
    Ok(())
}

/// Decodes normal-form `data` of type `ty_str`, mapping errors to object errors.
pub(crate) fn decode_object<'a>(
    kind: &'static str,
    ty_str: &str,
    data: &'a [u8],
) -> Result<gvariant::Value<'a>, Error> {
    within_metadata_limit(kind, data)?;
    let ty = gvariant::Type::parse(ty_str).map_err(|e| structure(kind, e.to_string()))?;
    gvariant::from_normal_bytes(&ty, data).map_err(|source| Error::Variant { kind, source })
}

/// Checks a metadata object's bytes fully: normal form, structure, sorting.
/// Detached metadata (`.commitmeta`) only needs to be a normal-form `a{sv}`.
pub fn validate_metadata(kind: ObjectType, data: &[u8]) -> Result<(), Error> {
    match kind {
        ObjectType::DirTree => DirTree::parse(data).map(drop),
        ObjectType::DirMeta => DirMeta::parse(data).map(drop),
        ObjectType::Commit => Commit::parse(data).map(drop),
        ObjectType::TombstoneCommit | ObjectType::CommitMeta => {
            decode_object("commitmeta", "a{sv}", data).map(drop)
        }
        ObjectType::File => Err(structure("file", "content objects are not metadata")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        let hex = "554d55e622e1207180cabfe7404b455fd8e574e404315d12d2f8aef6b495249e";
        let n: ObjectName = format!("{hex}.commit").parse().expect("valid");
        assert_eq!(n.kind, ObjectType::Commit);
        assert_eq!(
            n.relative_path(),
            format!("objects/55/{}.commit", &hex[2..])
        );
        for bad in [
            hex.to_string(),
            format!("{hex}.exe"),
            format!("{hex}.Commit"),
            format!("../{hex}.commit"),
            format!("{}.commit", &hex[..63]),
            format!("{hex}.commit/x"),
        ] {
            assert!(bad.parse::<ObjectName>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod proptests;
