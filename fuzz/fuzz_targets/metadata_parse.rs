//! The strict parsers of every metadata object and of `.filez` headers, on
//! arbitrary bytes: what a hostile pusher can send. None may panic.
#![no_main]

use depot::object::{Commit, DirMeta, DirTree, ObjectType, parse_filez_header, validate_metadata};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Commit::parse(data);
    let _ = DirTree::parse(data);
    let _ = DirMeta::parse(data);
    let _ = parse_filez_header(data);
    let _ = validate_metadata(ObjectType::CommitMeta, data);
});
