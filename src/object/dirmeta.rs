//! `.dirmeta`: a directory's owner, mode and xattrs, `(uuua(ayay))`.

use crate::gvariant::{self, Value};

use super::file::Xattrs;
use super::{Error, decode_object, structure};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;

/// The GVariant type of a dirmeta object.
pub(crate) const DIRMETA_TYPE: &str = "(uuua(ayay))";

/// A directory's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirMeta {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full `st_mode`, `S_IFDIR` included.
    pub mode: u32,
    /// Extended attributes.
    pub xattrs: Xattrs,
}

impl DirMeta {
    /// Parses and validates normal-form bytes.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let kind = "dirmeta";
        let v = decode_object(kind, DIRMETA_TYPE, data)?;
        let Value::Tuple(m) = v else {
            return Err(structure(kind, "not a tuple"));
        };
        let [
            Value::Uint32(uid),
            Value::Uint32(gid),
            Value::Uint32(mode),
            xattrs,
        ] = m.as_slice()
        else {
            return Err(structure(kind, "unexpected members"));
        };
        let meta = DirMeta {
            uid: uid.swap_bytes(),
            gid: gid.swap_bytes(),
            mode: mode.swap_bytes(),
            xattrs: Xattrs::from_value(kind, xattrs)?,
        };
        meta.validate()?;
        Ok(meta)
    }

    /// ostree's rule: a directory mode, and no bits outside `S_IFMT | 07777`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.mode & S_IFMT != S_IFDIR || self.mode & !(S_IFMT | 0o7777) != 0 {
            return Err(structure(
                "dirmeta",
                format!("mode {:o} is not a valid directory mode", self.mode),
            ));
        }
        Ok(())
    }

    /// The serialised object.
    pub fn to_bytes(&self) -> Vec<u8> {
        gvariant::to_bytes(&Value::Tuple(vec![
            Value::Uint32(self.uid.swap_bytes()),
            Value::Uint32(self.gid.swap_bytes()),
            Value::Uint32(self.mode.swap_bytes()),
            self.xattrs.to_value(),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::Checksum;

    #[test]
    fn root_dirmeta_vector() {
        let m = DirMeta {
            uid: 0,
            gid: 0,
            mode: 0o040_755,
            xattrs: Xattrs::default(),
        };
        let bytes = m.to_bytes();
        assert_eq!(
            hex::encode(&bytes),
            "00000000000000000000".to_string() + "41ed"
        );
        assert!(Checksum::of(&bytes).to_hex().starts_with("446a0ef1"));
        assert_eq!(DirMeta::parse(&bytes), Ok(m));
    }

    #[test]
    fn rejects_non_directory_modes() {
        for mode in [0o100_644, 0o040_755 | 0o200_000, 0] {
            let m = DirMeta {
                uid: 0,
                gid: 0,
                mode,
                xattrs: Xattrs::default(),
            };
            assert!(DirMeta::parse(&m.to_bytes()).is_err(), "{mode:o}");
        }
    }
}
