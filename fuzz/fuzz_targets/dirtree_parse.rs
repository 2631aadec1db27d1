//! `DirTree::parse`, which reads dirtrees straight from their framing, held
//! to the generic GVariant decoder plus ostree's dirtree rules on arbitrary
//! bytes: both must accept the same inputs, as the same tree.
#![no_main]

use depot::checksum::Checksum;
use depot::gvariant::{Type, Value, from_normal_bytes};
use depot::object::{DirTree, FileName, SubdirEntry};
use libfuzzer_sys::fuzz_target;

/// The generic reading: valid names, 32-byte checksums, sorted and distinct.
fn generic(data: &[u8]) -> Option<DirTree> {
    let ty = Type::parse("(a(say)a(sayay))").ok()?;
    let Value::Tuple(members) = from_normal_bytes(&ty, data).ok()? else {
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
    let tree = DirTree::new(files.clone(), dirs.clone()).ok()?;
    // `new` sorts; a parser refuses what was not sorted already.
    (tree.files() == files.as_slice() && tree.dirs() == dirs.as_slice()).then_some(tree)
}

fuzz_target!(|data: &[u8]| {
    let parsed = DirTree::parse(data).ok();
    assert_eq!(parsed, generic(data));
    if let Some(tree) = parsed {
        assert_eq!(tree.to_bytes(), data);
    }
});
