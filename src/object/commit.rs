//! `.commit`: `(a{sv}aya(say)sstayay)`.

use crate::checksum::Checksum;
use crate::gvariant::{self, Type, Value, VarDict};

use super::{Error, decode_object, structure};

/// The metadata key ostree uses for ref bindings (`as`).
pub const REF_BINDING_KEY: &str = "ostree.ref-binding";

/// The GVariant type of a commit object.
pub(crate) const COMMIT_TYPE: &str = "(a{sv}aya(say)sstayay)";

/// A commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// Metadata, in stored order (the order is part of the checksum).
    pub metadata: VarDict<'static>,
    /// The parent commit.
    pub parent: Option<Checksum>,
    /// Related objects (ostree always writes none).
    pub related: Vec<(String, Checksum)>,
    /// Subject line.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Seconds since the epoch, UTC.
    pub timestamp: u64,
    /// The root `.dirtree`.
    pub root_tree: Checksum,
    /// The root `.dirmeta`.
    pub root_meta: Checksum,
}

impl Commit {
    /// Parses and validates normal-form bytes.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let kind = "commit";
        let v = decode_object(kind, COMMIT_TYPE, data)?;
        let Value::Tuple(m) = v else {
            return Err(structure(kind, "not a tuple"));
        };
        let Ok(
            [
                metadata,
                Value::Bytes(parent),
                Value::Array(_, related),
                Value::Str(subject),
                Value::Str(body),
                Value::Uint64(timestamp),
                Value::Bytes(root_tree),
                Value::Bytes(root_meta),
            ],
        ) = <[Value<'_>; 8]>::try_from(m)
        else {
            return Err(structure(kind, "unexpected members"));
        };
        let metadata = gvariant::dict_from_value(metadata.into_owned())
            .ok_or_else(|| structure(kind, "metadata is not a{sv}"))?;
        if metadata.iter().any(|(k, _)| k.is_empty()) {
            return Err(structure(kind, "empty metadata key"));
        }
        let csum = |what: &str, b: &[u8]| {
            Checksum::from_slice(b).map_err(|e| structure(kind, format!("{what}: {e}")))
        };
        let parent = if parent.is_empty() {
            None
        } else {
            Some(csum("parent", &parent)?)
        };
        let related = related
            .iter()
            .map(|r| match r.as_tuple() {
                Some([Value::Str(name), Value::Bytes(c)]) => {
                    Ok((name.to_string(), csum("related object", c)?))
                }
                _ => Err(structure(kind, "related object is not (say)")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Commit {
            metadata,
            parent,
            related,
            subject: subject.into_owned(),
            body: body.into_owned(),
            timestamp: timestamp.swap_bytes(),
            root_tree: csum("root tree", &root_tree)?,
            root_meta: csum("root dirmeta", &root_meta)?,
        })
    }

    /// The serialised object.
    pub fn to_bytes(&self) -> Vec<u8> {
        let ay = || Type::Array(Box::new(Type::Byte));
        gvariant::to_bytes(&Value::Tuple(vec![
            gvariant::dict_to_value(&self.metadata),
            Value::bytes(self.parent.as_ref().map_or(&[][..], |p| p.as_bytes())),
            Value::Array(
                Type::Tuple(vec![Type::Str, ay()]),
                self.related
                    .iter()
                    .map(|(n, c)| Value::Tuple(vec![Value::str(n), Value::bytes(c.as_bytes())]))
                    .collect(),
            ),
            Value::str(&self.subject),
            Value::str(&self.body),
            Value::Uint64(self.timestamp.swap_bytes()),
            Value::bytes(self.root_tree.as_bytes()),
            Value::bytes(self.root_meta.as_bytes()),
        ]))
    }

    /// A metadata value by key (the first, if repeated).
    pub fn metadata_value(&self, key: &str) -> Option<&Value<'static>> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The `version` metadata string, which ostree copies into the summary.
    pub fn version(&self) -> Option<&str> {
        self.metadata_value("version").and_then(Value::as_str)
    }

    /// The refs this commit is bound to (`ostree.ref-binding`), when it has
    /// that key as an array of strings (of another type, ostree ignores it).
    pub fn ref_bindings(&self) -> Option<Vec<&str>> {
        match self.metadata_value(REF_BINDING_KEY)? {
            Value::Array(Type::Str, items) => {
                Some(items.iter().filter_map(Value::as_str).collect())
            }
            _ => None,
        }
    }

    /// Whether this commit may be what ref `name` points to: as ostree pull
    /// checks, a commit bound to refs must be bound to this one; a commit
    /// without bindings may be under any ref.
    pub fn may_be_under(&self, name: &str) -> bool {
        self.ref_bindings()
            .is_none_or(|bound| bound.contains(&name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let c = Commit {
            metadata: vec![(
                REF_BINDING_KEY.into(),
                Value::str_array(["main".to_string()]),
            )],
            parent: None,
            related: vec![],
            subject: "first".into(),
            body: String::new(),
            timestamp: 1_577_836_800,
            root_tree: Checksum::from_array([1; 32]),
            root_meta: Checksum::from_array([2; 32]),
        };
        let b = c.to_bytes();
        // The annotated 126-byte commit in ostree-format.md has this layout.
        assert_eq!(b.len(), 126);
        assert_eq!(&b[0x30..0x38], &[0, 0, 0, 0, 0x5e, 0x0b, 0xe1, 0]);
        assert_eq!(&b[0x78..], &[0x58, 0x2a, 0x29, 0x23, 0x23, 0x23]);
        assert_eq!(Commit::parse(&b), Ok(c.clone()));
        assert_eq!(c.ref_bindings(), Some(vec!["main"]));
        assert!(c.may_be_under("main"));
        assert!(!c.may_be_under("other"));
        let unbound = Commit {
            metadata: vec![],
            ..c.clone()
        };
        assert!(unbound.may_be_under("other"));
        // A binding of another type than `as` is ignored, as by ostree.
        let odd = Commit {
            metadata: vec![(REF_BINDING_KEY.into(), Value::str("main"))],
            ..c
        };
        assert_eq!(odd.ref_bindings(), None);
        assert!(odd.may_be_under("other"));
    }

    #[test]
    fn rejects_bad_checksum_lengths_and_empty_keys() {
        // Build commits by hand so each field can be wrong on its own.
        let raw =
            |meta: Vec<(String, Value<'static>)>, parent: &[u8], tree: &[u8], dirmeta: &[u8]| {
                let ay = || Type::Array(Box::new(Type::Byte));
                gvariant::to_bytes(&Value::Tuple(vec![
                    gvariant::dict_to_value(&meta),
                    Value::Bytes(parent.to_vec().into()),
                    Value::Array(Type::Tuple(vec![Type::Str, ay()]), vec![]),
                    Value::str("s"),
                    Value::str(""),
                    Value::Uint64(0),
                    Value::Bytes(tree.to_vec().into()),
                    Value::Bytes(dirmeta.to_vec().into()),
                ]))
            };
        let (ok32, short) = ([1u8; 32], [1u8; 31]);
        assert!(Commit::parse(&raw(vec![], &[], &ok32, &ok32)).is_ok());
        assert!(Commit::parse(&raw(vec![], &ok32, &ok32, &ok32)).is_ok());
        for (bytes, want) in [
            (raw(vec![], &short, &ok32, &ok32), "parent"),
            (raw(vec![], &[], &short, &ok32), "root tree"),
            (raw(vec![], &[], &ok32, &short), "root dirmeta"),
            (
                raw(vec![(String::new(), Value::Bool(true))], &[], &ok32, &ok32),
                "empty metadata key",
            ),
        ] {
            let err = Commit::parse(&bytes).expect_err(want);
            assert!(err.to_string().contains(want), "{err}");
        }
    }
}
