//! `.dirtree`: the names in one directory, `(a(say)a(sayay))`.
//!
//! Both arrays are sorted bytewise (`strcmp`), which ostree never checks but
//! relies on: `ostree cat` and checkouts of single paths binary-search them.
//! depot sorts when it writes and refuses unsorted trees when it reads.

use std::fmt;

use crate::checksum::Checksum;
use crate::gvariant::{self, Type, Value};

use super::{Error, decode_object_within, structure};

/// A name inside a directory: valid UTF-8, not empty, not `.` or `..`, and
/// without `/` or NUL (`ot_util_filename_validate`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileName(String);

impl FileName {
    /// Checks `name` against ostree's filename rules.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("an empty file name".into());
        }
        if name == "." || name == ".." {
            return Err(format!("the file name {name:?} is reserved"));
        }
        if name.contains('/') || name.contains('\0') {
            return Err(format!("the file name {name:?} contains '/' or NUL"));
        }
        Ok(FileName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subdirectory entry: its name, its dirtree and its dirmeta.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubdirEntry {
    /// The subdirectory's name.
    pub name: FileName,
    /// Checksum of its `.dirtree`.
    pub tree: Checksum,
    /// Checksum of its `.dirmeta`.
    pub meta: Checksum,
}

/// A directory listing. Both lists are sorted by name, bytewise, and no name
/// appears twice across them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DirTree {
    files: Vec<(FileName, Checksum)>,
    dirs: Vec<SubdirEntry>,
}

/// Initialization
impl DirTree {
    /// Builds a tree from entries in any order. Fails on a name used twice.
    pub fn new(
        mut files: Vec<(FileName, Checksum)>,
        mut dirs: Vec<SubdirEntry>,
    ) -> Result<Self, Error> {
        files.sort_by(|a, b| a.0.as_str().as_bytes().cmp(b.0.as_str().as_bytes()));
        dirs.sort_by(|a, b| a.name.as_str().as_bytes().cmp(b.name.as_str().as_bytes()));
        let tree = DirTree { files, dirs };
        tree.check_order()?;
        Ok(tree)
    }

    /// Parses and validates normal-form bytes.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let kind = "dirtree";
        // A valid dirtree has 12 or more bytes per decoded value: an entry
        // is a tuple, a name of at least "x\0", 32 or 64 bytes of checksums
        // and an offset. One value per 8 bytes refuses, before it is built,
        // what would otherwise take up to 48 bytes of memory per byte (a
        // fetched dirtree may be 128 MiB).
        let v = decode_object_within(kind, "(a(say)a(sayay))", data, Some(data.len() / 8 + 1024))?;
        let Value::Tuple(m) = v else {
            return Err(structure(kind, "not a tuple"));
        };
        let [Value::Array(_, file_items), Value::Array(_, dir_items)] = m.as_slice() else {
            return Err(structure(kind, "unexpected members"));
        };
        let name = |v: &Value<'_>| -> Result<FileName, Error> {
            let s = v
                .as_str()
                .ok_or_else(|| structure(kind, "name is not a string"))?;
            FileName::new(s).map_err(|e| structure(kind, e))
        };
        let csum = |v: &Value<'_>| -> Result<Checksum, Error> {
            let b = v
                .as_bytes()
                .ok_or_else(|| structure(kind, "checksum is not bytes"))?;
            Checksum::from_slice(b).map_err(|e| structure(kind, e.to_string()))
        };
        let mut files = Vec::with_capacity(file_items.len());
        for item in file_items {
            match item.as_tuple() {
                Some([n, c]) => files.push((name(n)?, csum(c)?)),
                _ => return Err(structure(kind, "file entry is not (say)")),
            }
        }
        let mut dirs = Vec::with_capacity(dir_items.len());
        for item in dir_items {
            match item.as_tuple() {
                Some([n, t, mm]) => dirs.push(SubdirEntry {
                    name: name(n)?,
                    tree: csum(t)?,
                    meta: csum(mm)?,
                }),
                _ => return Err(structure(kind, "directory entry is not (sayay)")),
            }
        }
        let tree = DirTree { files, dirs };
        tree.check_order()?;
        Ok(tree)
    }

    fn check_order(&self) -> Result<(), Error> {
        let kind = "dirtree";
        for w in self.files.windows(2) {
            if w[0].0.as_str().as_bytes() >= w[1].0.as_str().as_bytes() {
                return Err(structure(
                    kind,
                    format!(
                        "file entries not sorted or repeated at {:?}",
                        w[1].0.as_str()
                    ),
                ));
            }
        }
        for w in self.dirs.windows(2) {
            if w[0].name.as_str().as_bytes() >= w[1].name.as_str().as_bytes() {
                return Err(structure(
                    kind,
                    format!(
                        "directory entries not sorted or repeated at {:?}",
                        w[1].name.as_str()
                    ),
                ));
            }
        }
        for d in &self.dirs {
            if self.file(d.name.as_str()).is_some() {
                return Err(structure(
                    kind,
                    format!("{:?} is both a file and a directory", d.name.as_str()),
                ));
            }
        }
        Ok(())
    }
}

/// Access
impl DirTree {
    /// The files, sorted.
    pub fn files(&self) -> &[(FileName, Checksum)] {
        &self.files
    }

    /// The subdirectories, sorted.
    pub fn dirs(&self) -> &[SubdirEntry] {
        &self.dirs
    }

    /// Finds a file by binary search, as ostree does.
    pub fn file(&self, name: &str) -> Option<&Checksum> {
        self.files
            .binary_search_by(|(n, _)| n.as_str().as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.files[i].1)
    }

    /// Finds a subdirectory by binary search.
    pub fn dir(&self, name: &str) -> Option<&SubdirEntry> {
        self.dirs
            .binary_search_by(|d| d.name.as_str().as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| &self.dirs[i])
    }

    /// The serialised object.
    pub fn to_bytes(&self) -> Vec<u8> {
        let ay = || Type::Array(Box::new(Type::Byte));
        gvariant::to_bytes(&Value::Tuple(vec![
            Value::Array(
                Type::Tuple(vec![Type::Str, ay()]),
                self.files
                    .iter()
                    .map(|(n, c)| {
                        Value::Tuple(vec![Value::str(n.as_str()), Value::bytes(c.as_bytes())])
                    })
                    .collect(),
            ),
            Value::Array(
                Type::Tuple(vec![Type::Str, ay(), ay()]),
                self.dirs
                    .iter()
                    .map(|d| {
                        Value::Tuple(vec![
                            Value::str(d.name.as_str()),
                            Value::bytes(d.tree.as_bytes()),
                            Value::bytes(d.meta.as_bytes()),
                        ])
                    })
                    .collect(),
            ),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(b: u8) -> Checksum {
        Checksum::from_array([b; 32])
    }

    fn n(s: &str) -> FileName {
        FileName::new(s).expect("valid name")
    }

    #[test]
    fn the_densest_valid_dirtree_decodes_and_a_denser_fake_is_refused_unbuilt() {
        // 200,000 files with the shortest distinct names there are.
        let alphabet: Vec<char> = ('0'..='9').chain('A'..='Z').chain('a'..='z').collect();
        let mut names: Vec<String> = Vec::new();
        for len in 1..=3 {
            let mut idx = vec![0usize; len];
            'names: loop {
                names.push(idx.iter().map(|&i| alphabet[i]).collect());
                if names.len() == 200_000 {
                    break 'names;
                }
                let mut k = len;
                loop {
                    if k == 0 {
                        break 'names;
                    }
                    k -= 1;
                    idx[k] += 1;
                    if idx[k] < alphabet.len() {
                        break;
                    }
                    idx[k] = 0;
                }
            }
            if names.len() == 200_000 {
                break;
            }
        }
        names.sort();
        let files = names.iter().map(|s| (n(s), c(1))).collect();
        let dense = DirTree::new(files, vec![]).expect("tree").to_bytes();
        assert_eq!(DirTree::parse(&dense).map(|t| t.files().len()), Ok(200_000));
        // The same type with empty names and checksums: 2 bytes a value.
        let entry = Value::Tuple(vec![Value::str(""), Value::Bytes(Vec::new().into())]);
        let fake = Value::Tuple(vec![
            Value::Array(Type::parse("(say)").expect("type"), vec![entry; 500_000]),
            Value::Array(Type::parse("(sayay)").expect("type"), vec![]),
        ]);
        let fake = crate::gvariant::to_bytes(&fake);
        assert!(matches!(
            DirTree::parse(&fake),
            Err(Error::Variant {
                source: crate::gvariant::DecodeError::TooExpensive,
                ..
            })
        ));
    }

    #[test]
    fn file_name_table() {
        for good in [
            "a",
            "B",
            "ünïcode",
            "with space",
            "new\nline",
            "...",
            ".hidden",
            "x\u{1}",
        ] {
            assert!(FileName::new(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".", "..", "a/b", "/", "nul\0"] {
            assert!(FileName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sorted_bytewise_and_searchable() {
        let names = ["ünïcode", "a", "Zdir", "B", "zero", "empty-dir"];
        let t = DirTree::new(names.iter().map(|s| (n(s), c(1))).collect(), vec![]).expect("valid");
        let order: Vec<&str> = t.files().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["B", "Zdir", "a", "empty-dir", "zero", "ünïcode"]);
        for s in names {
            assert!(t.file(s).is_some());
        }
        assert_eq!(DirTree::parse(&t.to_bytes()), Ok(t));
    }

    #[test]
    fn sub_n_txt_vector() {
        // From ostree-format.md: a dirtree holding only n.txt is 41 bytes.
        let t = DirTree::new(vec![(n("n.txt"), c(0xa4))], vec![]).expect("valid");
        let b = t.to_bytes();
        assert_eq!(b.len(), 41);
        assert_eq!(&b[38..], &[0x06, 0x27, 0x28]);
    }

    #[test]
    fn rejects_unsorted_duplicate_and_clashing() {
        let unsorted = DirTree {
            files: vec![(n("b"), c(1)), (n("a"), c(2))],
            dirs: vec![],
        };
        assert!(
            DirTree::parse(&unsorted.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("not sorted")
        );
        assert!(DirTree::new(vec![(n("a"), c(1)), (n("a"), c(2))], vec![]).is_err());
        let clash = vec![SubdirEntry {
            name: n("a"),
            tree: c(1),
            meta: c(2),
        }];
        assert!(DirTree::new(vec![(n("a"), c(1))], clash).is_err());
    }
}
