//! Random trees, committed by `ostree commit` and `depot commit` side by side:
//! the commit checksums must be identical.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use proptest::prelude::*;

use crate::util::*;

#[derive(Debug, Clone)]
enum Node {
    File { data: Vec<u8>, mode: u32 },
    Link(String),
    Dir(Vec<(String, Node)>),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{1,12}",
        "[a-z]{1,3}[ äöü€\u{1F600}]{0,3}",
        Just("Z".to_string()),
        Just("a".to_string()),
    ]
    .prop_filter("not . or ..", |s| s != "." && s != "..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        4 => (prop::collection::vec(any::<u8>(), 0..3000), prop::sample::select(vec![0o644u32, 0o755, 0o600, 0o4755, 0o2711, 0o444]))
            .prop_map(|(data, mode)| Node::File { data, mode }),
        1 => "[a-z./]{1,20}".prop_map(Node::Link),
    ];
    leaf.prop_recursive(4, 60, 8, |inner| {
        prop::collection::vec((name(), inner), 0..8).prop_map(|mut v| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
            Node::Dir(v)
        })
    })
}

fn materialise(path: &Path, node: &Node) {
    match node {
        Node::File { data, mode } => {
            fs::write(path, data).expect("write");
            fs::set_permissions(path, fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        Node::Link(target) => symlink(target, path).expect("symlink"),
        Node::Dir(children) => {
            fs::create_dir(path).expect("mkdir");
            for (n, c) in children {
                materialise(&path.join(n), c);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_get_the_same_commit_checksum(
        children in prop::collection::vec((name(), node()), 0..10),
        subject in "[ -~]{0,20}",
        ts in 0u64..4_000_000_000,
        bind in any::<bool>(),
        metadata in prop::collection::vec((prop::sample::select(vec!["version", "ci.job", "a", "zz"]), "[a-z0-9 ]{0,6}"), 0..5),
    ) {
        let tmp = tempdir();
        let tree = tmp.path().join("tree");
        let mut children = children;
        children.sort_by(|a, b| a.0.cmp(&b.0));
        children.dedup_by(|a, b| a.0 == b.0);
        materialise(&tree, &Node::Dir(children));
        let (o, d) = (tmp.path().join("o"), tmp.path().join("d"));
        ok(ostree_in(&o).args(["init", "--mode=archive"]));
        ok(depot().arg("init").arg(&d));
        let mut oc = ostree_in(&o);
        oc.args(["commit", "-b", "r/x", &format!("--subject={subject}"), &format!("--timestamp=@{ts}")]);
        let mut dc = depot_in("commit", &d);
        dc.args(["--ref", "r/x", &format!("--subject={subject}"), "--timestamp", &format!("@{ts}")]);
        if !bind {
            oc.arg("--no-bindings");
            dc.arg("--no-bind");
        }
        // Keys may repeat: ostree keeps every pair, in order.
        for (k, v) in &metadata {
            oc.arg(format!("--add-metadata-string={k}={v}"));
            dc.arg("--add-metadata-string").arg(format!("{k}={v}"));
        }
        let a = ok(oc.arg(&tree));
        let b = ok(dc.arg(&tree));
        prop_assert_eq!(a.trim(), b.trim());
        prop_assert_eq!(object_files(&o), object_files(&d));
    }
}
