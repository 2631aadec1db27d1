//! Property tests: every object's encoder and strict parser are inverses.

use proptest::prelude::*;

use super::*;
use crate::gvariant::Value;

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

proptest! {
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
