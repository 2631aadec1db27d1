//! Property tests: every object's encoder and strict parser are inverses.

use proptest::prelude::*;

use super::*;
use crate::gvariant::{self, Type, Value};

fn checksum() -> impl Strategy<Value = Checksum> {
    any::<[u8; 32]>().prop_map(Checksum::from_array)
}

fn file_name() -> impl Strategy<Value = FileName> {
    "[^/\u{0}]{1,16}"
        .prop_filter("not . or ..", |s| s != "." && s != "..")
        .prop_map(|s| FileName::new(&s).expect("valid by construction"))
}

fn xattrs() -> impl Strategy<Value = Xattrs> {
    prop::collection::vec(
        (
            "user\\.[a-z]{1,8}",
            prop::collection::vec(any::<u8>(), 0..16),
        ),
        0..4,
    )
    .prop_map(|pairs| Xattrs::from_pairs(pairs.into_iter().map(|(n, v)| (n.into_bytes(), v))))
}

fn dirtree() -> impl Strategy<Value = DirTree> {
    dirtree_of(file_name, 0..6)
}

/// Dirtrees whose entries and arrays cross the 255- and 65,535-byte limits
/// of one- and two-byte framing offsets (a name of 110 to 254 bytes, with
/// its checksums, makes an entry of more than 255).
fn wide_dirtree() -> impl Strategy<Value = DirTree> {
    let long_name =
        || "[a-z\u{e9}]{110,127}".prop_map(|s| FileName::new(&s).expect("valid by construction"));
    dirtree_of(long_name, 0..300)
}

fn dirtree_of<S: Strategy<Value = FileName>>(
    name: impl Fn() -> S,
    entries: std::ops::Range<usize>,
) -> impl Strategy<Value = DirTree> {
    (
        prop::collection::btree_map(name(), checksum(), entries.clone()),
        prop::collection::btree_map(name(), (checksum(), checksum()), entries),
    )
        .prop_map(|(files, dirs)| {
            let dirs = dirs
                .into_iter()
                .filter(|(n, _)| !files.contains_key(n))
                .map(|(name, (tree, meta))| SubdirEntry { name, tree, meta })
                .collect();
            DirTree::new(files.into_iter().collect(), dirs).expect("names are unique")
        })
}

/// A dirtree as the generic codec writes it: what [`DirTree::to_bytes`] must
/// equal.
fn dirtree_value(t: &DirTree) -> Value<'_> {
    let ty = |s| Type::parse(s).expect("type");
    Value::Tuple(vec![
        Value::Array(
            ty("(say)"),
            t.files()
                .iter()
                .map(|(n, c)| {
                    Value::Tuple(vec![Value::str(n.as_str()), Value::bytes(c.as_bytes())])
                })
                .collect(),
        ),
        Value::Array(
            ty("(sayay)"),
            t.dirs()
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
    ])
}

/// Ways to damage bytes: set one, cut the rest, insert one, remove one.
#[derive(Debug, Clone)]
enum Damage {
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Set(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Damage::Remove),
    ]
}

fn apply(bytes: &mut Vec<u8>, damage: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match damage {
        Damage::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Damage::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Damage::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
    }
}

proptest! {
    #[test]
    fn dirtree_encoding_equals_the_generic_codecs(t in dirtree()) {
        prop_assert_eq!(t.to_bytes(), gvariant::to_bytes(&dirtree_value(&t)));
    }

    #[test]
    fn dirtree_parsing_agrees_with_the_generic_codec_on_damaged_bytes(
        t in dirtree(),
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let mut bytes = t.to_bytes();
        for d in &damages {
            apply(&mut bytes, d);
        }
        prop_assert_eq!(DirTree::parse(&bytes).ok(), DirTree::parse_through_values(&bytes));
    }

    #[test]
    fn dirtree_round_trips(
        files in prop::collection::btree_map(file_name(), checksum(), 0..20),
        dirs in prop::collection::btree_map(file_name(), (checksum(), checksum()), 0..20),
    ) {
        let dirs: Vec<SubdirEntry> = dirs
            .into_iter()
            .filter(|(n, _)| !files.contains_key(n))
            .map(|(name, (tree, meta))| SubdirEntry { name, tree, meta })
            .collect();
        let t = DirTree::new(files.into_iter().collect(), dirs).expect("names are unique");
        prop_assert_eq!(DirTree::parse(&t.to_bytes()), Ok(t));
    }

    #[test]
    fn dirmeta_round_trips(uid in any::<u32>(), gid in any::<u32>(), perm in 0u32..0o10000, x in xattrs()) {
        let m = DirMeta { uid, gid, mode: 0o040_000 | perm, xattrs: x };
        prop_assert_eq!(DirMeta::parse(&m.to_bytes()), Ok(m));
    }

    #[test]
    fn commit_round_trips(
        keys in prop::collection::vec(("[a-z.]{1,12}", "[ -~]{0,12}"), 0..5),
        parent in prop::option::of(checksum()),
        subject in ".{0,30}",
        body in ".{0,60}",
        timestamp in any::<u64>(),
        root_tree in checksum(),
        root_meta in checksum(),
    ) {
        let c = Commit {
            metadata: keys.into_iter().map(|(k, v)| (k, Value::string(v))).collect(),
            parent,
            related: vec![],
            subject: subject.replace('\0', ""),
            body: body.replace('\0', ""),
            timestamp,
            root_tree,
            root_meta,
        };
        prop_assert_eq!(Commit::parse(&c.to_bytes()), Ok(c));
    }

    #[test]
    fn filez_header_round_trips(
        uid in any::<u32>(),
        gid in any::<u32>(),
        perm in 0u32..0o10000,
        link in prop::option::of("[^\u{0}]{1,40}"),
        size in any::<u64>(),
        x in xattrs(),
    ) {
        let (mode, target, size) = match link {
            Some(t) => (0o120_000 | perm, t, 0),
            None => (0o100_000 | perm, String::new(), size),
        };
        let h = FileHeader { uid, gid, mode, symlink_target: target, xattrs: x };
        let bytes = filez_header_bytes(&h, size);
        prop_assert_eq!(parse_filez_header(&bytes[8..]), Ok((h, size)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn wide_dirtrees_encode_as_the_generic_codec_and_parse_alike_when_damaged(
        t in wide_dirtree(),
        damages in prop::collection::vec(damage(), 0..3),
    ) {
        let mut bytes = t.to_bytes();
        prop_assert_eq!(&bytes, &gvariant::to_bytes(&dirtree_value(&t)));
        for d in &damages {
            apply(&mut bytes, d);
        }
        prop_assert_eq!(DirTree::parse(&bytes).ok(), DirTree::parse_through_values(&bytes));
    }
}
