//! `.dirtree`: the names in one directory, `(a(say)a(sayay))`.
//!
//! Both arrays are sorted bytewise (`strcmp`), which ostree never checks but
//! relies on: `ostree cat` and checkouts of single paths binary-search them.
//! depot sorts when it writes and refuses unsorted trees when it reads.

use std::fmt;

use crate::checksum::Checksum;
use crate::gvariant::{self, DecodeError, framing};

use super::{Error, structure, within_metadata_limit};

/// The type of a dirtree.
const DIRTREE_TYPE: &str = "(a(say)a(sayay))";

/// A name inside a directory: valid UTF-8, not empty, not `.` or `..`, and
/// without `/` or NUL (`ot_util_filename_validate`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileName(String);

impl FileName {
    /// Checks `name` against ostree's filename rules, and that a Linux
    /// file system could hold it (at most [`MAX_NAME_LEN`] bytes).
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
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "a file name of {} bytes is longer than the {MAX_NAME_LEN} a checkout can create",
                name.len()
            ));
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
    ///
    /// A fetched dirtree may be 128 MiB, so it is read straight from its
    /// framing (`src/gvariant/framing.rs`) into the entries, never into one
    /// [`Value`](crate::gvariant::Value) per member; normal form is checked
    /// by re-encoding.
    pub fn parse(data: &[u8]) -> Result<Self, Error> {
        let kind = "dirtree";
        within_metadata_limit(kind, data)?;
        let variant = |source| Error::Variant { kind, source };
        let name = |bytes: &[u8]| -> Result<FileName, Error> {
            let s = framing::string(bytes).map_err(variant)?;
            FileName::new(s).map_err(|e| structure(kind, e))
        };
        let csum = |bytes: &[u8]| -> Result<Checksum, Error> {
            Checksum::from_slice(bytes).map_err(|e| structure(kind, e.to_string()))
        };
        let [file_bytes, dir_bytes] =
            framing::tuple_members::<2>(DIRTREE_TYPE, data).map_err(variant)?;
        let file_items = framing::array_elements("a(say)", file_bytes).map_err(variant)?;
        // An untrusted count sizes a vector only as far as the array's bytes
        // could hold valid entries: a file takes at least 36 (a name of two,
        // a checksum, its offset in the tuple and in the array).
        let mut files = Vec::with_capacity(file_items.len().min(file_bytes.len() / 36));
        for item in file_items {
            let [n, c] =
                framing::tuple_members::<2>("(say)", item.map_err(variant)?).map_err(variant)?;
            files.push((name(n)?, csum(c)?));
        }
        let dir_items = framing::array_elements("a(sayay)", dir_bytes).map_err(variant)?;
        // A directory takes at least 69: a name of two, two checksums, two
        // offsets in the tuple and one in the array.
        let mut dirs = Vec::with_capacity(dir_items.len().min(dir_bytes.len() / 69));
        for item in dir_items {
            let [n, t, m] =
                framing::tuple_members::<3>("(sayay)", item.map_err(variant)?).map_err(variant)?;
            dirs.push(SubdirEntry {
                name: name(n)?,
                tree: csum(t)?,
                meta: csum(m)?,
            });
        }
        let tree = DirTree { files, dirs };
        tree.check_order()?;
        let mut again = framing::Matches::new(data);
        tree.write(&mut again);
        if !again.matched() {
            return Err(variant(DecodeError::NotNormalForm));
        }
        Ok(tree)
    }

    /// The same reading through the generic codec, one value per member,
    /// with the same rules (valid names, 32-byte checksums, sorted and
    /// distinct): the reference [`DirTree::parse`] is held to by the
    /// property tests and the `dirtree_parse` fuzz target. It takes several
    /// times the memory; nothing else should call it.
    #[doc(hidden)]
    pub fn parse_through_values(data: &[u8]) -> Option<DirTree> {
        use crate::gvariant::{Type, Value};
        let v = gvariant::from_normal_bytes(&Type::parse(DIRTREE_TYPE).ok()?, data).ok()?;
        let Value::Tuple(members) = v else {
            return None;
        };
        let [Value::Array(_, files), Value::Array(_, dirs)] = members.as_slice() else {
            return None;
        };
        let name = |v: &Value<'_>| FileName::new(v.as_str()?).ok();
        let sum = |v: &Value<'_>| Checksum::from_slice(v.as_bytes()?).ok();
        let files = files
            .iter()
            .map(|e| match e.as_tuple()? {
                [n, c] => Some((name(n)?, sum(c)?)),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let dirs = dirs
            .iter()
            .map(|e| match e.as_tuple()? {
                [n, t, m] => Some(SubdirEntry {
                    name: name(n)?,
                    tree: sum(t)?,
                    meta: sum(m)?,
                }),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let tree = DirTree { files, dirs };
        tree.check_order().ok()?;
        Some(tree)
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

/// The longest file name Linux file systems take (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Deepest directory nesting depot checks out or accepts in a push, the
/// root at depth 0 (the value of ostree's `OSTREE_MAX_RECURSION`). ostree's
/// own tools recurse and crash some thousands of levels down.
pub const MAX_TREE_DEPTH: usize = 256;

/// The most files, symlinks and directories a tree may expand to. A dirtree
/// can name the same subtree many times, so a few small objects can stand
/// for an exponentially large tree. ostree has no such limit.
pub const MAX_TREE_ENTRIES: u64 = 10_000_000;

/// The most bytes its paths may add up to. ostree's checkout streams
/// through a tree and holds no list; depot's holds every path until the
/// files are placed, so repeated subtrees under long names (10 levels of
/// two 250-byte names over 1,000 files: a 444 KB repository) would
/// otherwise take gigabytes. A million files with paths of 250 bytes fit.
pub const MAX_TREE_PATH_BYTES: u64 = 256 * 1024 * 1024;

/// How large a tree is once checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeShape {
    /// Files, symlinks and directories, counting the tree's own directory.
    pub entries: u64,
    /// The lengths of their paths below the tree (`a`, `a/b`), added.
    pub path_bytes: u64,
    /// How many directories deep its deepest one is below it.
    pub height: usize,
}

impl TreeShape {
    /// Whether it is within [`MAX_TREE_ENTRIES`], and its paths, once
    /// under a root whose own path is `root_len` bytes, within
    /// [`MAX_TREE_PATH_BYTES`] (depth is checked as it is measured).
    pub fn fits(&self, root_len: u64) -> bool {
        self.entries <= MAX_TREE_ENTRIES && self.path_bytes_under(root_len) <= MAX_TREE_PATH_BYTES
    }

    /// The bytes of every path, the root's included, under a root whose
    /// path is `root_len` bytes.
    pub fn path_bytes_under(&self, root_len: u64) -> u64 {
        self.entries
            .saturating_sub(1)
            .saturating_mul(root_len + 1)
            .saturating_add(root_len)
            .saturating_add(self.path_bytes)
    }
}

/// Why [`tree_shape`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError<E> {
    /// Directories nested deeper than [`MAX_TREE_DEPTH`] below the root.
    #[error("directories nest deeper than {MAX_TREE_DEPTH} levels (below dirtree {tree})")]
    TooDeep {
        /// The dirtree found too deep.
        tree: Checksum,
    },
    /// Loading a dirtree failed.
    #[error(transparent)]
    Load(E),
}

/// Measures the tree `root` as a checkout would expand it, loading each
/// distinct dirtree once through `load` (so the work grows with the
/// distinct dirtrees, not with the expanded size, which saturates); `known`
/// keeps what was measured, for the next tree that shares subtrees. Fails as
/// soon as a directory is deeper than [`MAX_TREE_DEPTH`], so the recursion
/// is bounded by it.
pub fn tree_shape<E, S: std::hash::BuildHasher>(
    root: &Checksum,
    load: &mut impl FnMut(&Checksum) -> Result<DirTree, E>,
    known: &mut std::collections::HashMap<Checksum, TreeShape, S>,
) -> Result<TreeShape, ShapeError<E>> {
    fn measure<E, S: std::hash::BuildHasher>(
        tree: &Checksum,
        depth: usize,
        load: &mut impl FnMut(&Checksum) -> Result<DirTree, E>,
        known: &mut std::collections::HashMap<Checksum, TreeShape, S>,
    ) -> Result<TreeShape, ShapeError<E>> {
        // A subtree met again is not loaded again, but may sit deeper.
        if let Some(&shape) = known.get(tree) {
            if depth + shape.height > MAX_TREE_DEPTH {
                return Err(ShapeError::TooDeep { tree: *tree });
            }
            return Ok(shape);
        }
        if depth > MAX_TREE_DEPTH {
            return Err(ShapeError::TooDeep { tree: *tree });
        }
        let t = load(tree).map_err(ShapeError::Load)?;
        let mut shape = TreeShape {
            entries: 1 + t.files().len() as u64,
            path_bytes: t.files().iter().map(|(n, _)| n.as_str().len() as u64).sum(),
            height: 0,
        };
        for d in t.dirs() {
            let below = measure(&d.tree, depth + 1, load, known)?;
            // The directory's own path, and its name and a slash before
            // every path below it.
            let name = d.name.as_str().len() as u64;
            shape.path_bytes = shape
                .path_bytes
                .saturating_add(below.path_bytes_under(name));
            shape.entries = shape.entries.saturating_add(below.entries);
            shape.height = shape.height.max(below.height + 1);
        }
        known.insert(*tree, shape);
        Ok(shape)
    }
    measure(root, 0, load, known)
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
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// Writes the serialised object to `out`, which must be at its start.
    fn write(&self, out: &mut impl framing::Output) {
        use framing::Member;
        debug_assert_eq!(out.position(), 0, "the framing is relative to the start");
        framing::write_array(out, self.files.iter(), |out, (n, c)| {
            framing::write_tuple(out, &[Member::Str(n.as_str()), Member::Bytes(c.as_bytes())]);
        });
        let files_end = out.position();
        framing::write_array(out, self.dirs.iter(), |out, d| {
            framing::write_tuple(
                out,
                &[
                    Member::Str(d.name.as_str()),
                    Member::Bytes(d.tree.as_bytes()),
                    Member::Bytes(d.meta.as_bytes()),
                ],
            );
        });
        // The outer tuple: both arrays, then the end of the first.
        framing::write_offsets(out, 0, &[files_end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn c(b: u8) -> Checksum {
        Checksum::from_array([b; 32])
    }

    fn n(s: &str) -> FileName {
        FileName::new(s).expect("valid name")
    }

    #[test]
    fn the_densest_valid_dirtree_decodes_and_a_fake_of_empty_names_is_refused() {
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
        // Half a million entries with empty names and checksums, 2 bytes
        // each: refused at the first name, before anything is built for the
        // rest (the generic decoder would have built a value per member).
        let mut fake = Vec::new();
        framing::write_array(&mut fake, 0..500_000, |out, _| {
            framing::write_tuple(
                out,
                &[framing::Member::Str(""), framing::Member::Bytes(&[])],
            );
        });
        let files_end = fake.len();
        framing::write_offsets(&mut fake, 0, &[files_end]);
        assert!(
            matches!(DirTree::parse(&fake), Err(Error::Structure { ref reason, .. }) if reason == "an empty file name"),
            "{:?}",
            DirTree::parse(&fake)
        );
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
        // NAME_MAX counts bytes: 127 two-byte characters fit, 128 do not.
        assert!(FileName::new(&"n".repeat(MAX_NAME_LEN)).is_ok());
        assert!(FileName::new(&"n".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(FileName::new(&"ü".repeat(127)).is_ok());
        assert!(FileName::new(&"ü".repeat(128)).is_err());
    }

    #[test]
    fn a_tree_is_measured_once_per_distinct_dirtree_and_refused_when_too_deep() {
        let meta = c(0xee);
        let mut trees: HashMap<Checksum, DirTree> = HashMap::new();
        let leaf = DirTree::new(vec![(n("f"), c(1)), (n("g"), c(2))], Vec::new()).expect("leaf");
        trees.insert(c(0), leaf);
        // Tree k names tree k-1 twice: 2^k leaves below tree k.
        for k in 1..=30u8 {
            let sub = |name: &str| SubdirEntry {
                name: n(name),
                tree: c(k - 1),
                meta,
            };
            let t = DirTree::new(Vec::new(), vec![sub("a"), sub("b")]).expect("tree");
            trees.insert(c(k), t);
        }
        let mut loads = 0;
        let mut load = |t: &Checksum| {
            loads += 1;
            trees.get(t).cloned().ok_or(())
        };
        let mut known = HashMap::new();
        let shape = tree_shape(&c(3), &mut load, &mut known).expect("small");
        // 8 leaves of 3 entries, 4 + 2 + 1 directories above them; their
        // paths: 16 like "a/b/a/f", 8 like "a/b/a", 4 like "a/b", 2 like "a".
        assert_eq!(
            shape,
            TreeShape {
                entries: 31,
                path_bytes: 16 * 7 + 8 * 5 + 4 * 3 + 2,
                height: 3
            }
        );
        let shape = tree_shape(&c(30), &mut load, &mut known).expect("measured");
        assert!(
            shape.entries > MAX_TREE_ENTRIES && !shape.fits(0),
            "{shape:?}"
        );
        assert_eq!(shape.height, 30);
        assert_eq!(loads, 31, "each dirtree loaded once");
        // A chain deeper than the limit fails, and so does a known subtree
        // met again too far down.
        let mut chain: HashMap<Checksum, DirTree> = HashMap::new();
        chain.insert(c(0), DirTree::default());
        let mut sums = vec![c(0)];
        for i in 1..=MAX_TREE_DEPTH + 1 {
            let sum = Checksum::of(&i.to_be_bytes());
            let below = sums[i - 1];
            let entry = SubdirEntry {
                name: n("d"),
                tree: below,
                meta,
            };
            chain.insert(sum, DirTree::new(Vec::new(), vec![entry]).expect("link"));
            sums.push(sum);
        }
        let mut load = |t: &Checksum| chain.get(t).cloned().ok_or(());
        let mut known = HashMap::new();
        let top = tree_shape(&sums[MAX_TREE_DEPTH], &mut load, &mut known).expect("at the limit");
        assert_eq!(top.height, MAX_TREE_DEPTH);
        assert!(matches!(
            tree_shape(&sums[MAX_TREE_DEPTH + 1], &mut load, &mut known),
            Err(ShapeError::TooDeep { .. })
        ));
        assert!(matches!(
            tree_shape(&sums[MAX_TREE_DEPTH + 1], &mut load, &mut HashMap::new()),
            Err(ShapeError::TooDeep { .. })
        ));
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
