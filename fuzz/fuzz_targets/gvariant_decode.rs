//! The GVariant decoder on arbitrary bytes and arbitrary type strings: it
//! must never panic, and whatever it accepts must re-encode to the input.
#![no_main]

use depot::gvariant::{Type, from_normal_bytes, to_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says how long the type string is.
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 32).min(rest.len());
    let (ty, bytes) = rest.split_at(n);
    let Ok(ty) = std::str::from_utf8(ty) else { return };
    let Ok(ty) = Type::parse(ty) else { return };
    if let Ok(v) = from_normal_bytes(&ty, bytes) {
        assert_eq!(to_bytes(&v), bytes);
    }
});
