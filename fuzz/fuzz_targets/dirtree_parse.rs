//! `DirTree::parse`, which reads dirtrees straight from their framing, held
//! to the generic GVariant decoder on arbitrary bytes: both must accept the
//! same inputs, as the same tree. The dirtree rules (names, checksum sizes,
//! order) are shared, so this checks the framing and normal-form path.
#![no_main]

use depot::object::DirTree;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = DirTree::parse(data).ok();
    assert_eq!(parsed, DirTree::parse_through_values(data));
    if let Some(tree) = parsed {
        assert_eq!(tree.to_bytes(), data);
    }
});
