//! A strict GVariant codec for the types ostree stores.
//!
//! depot writes its own codec instead of using the `gvariant` or `zgvariant`
//! crates because every byte it decodes comes from an untrusted pusher or
//! server, and it must reject exactly what `ostree pull` rejects (GLib's
//! `g_variant_is_normal_form`). Neither crate exposes a normal-form check; see
//! `docs/design.md` for the full reasoning.
//!
//! The codec is pure: bytes in, values out, no I/O. It is generic over type
//! strings, so the same code serves commits, dirtrees, summaries and any
//! metadata value a commit carries.

mod decode;
mod encode;
pub(crate) mod framing;
mod ty;
mod value;

pub use decode::{DecodeError, from_normal_bytes, from_normal_bytes_within};
pub use encode::{to_bytes, write};
pub use ty::{MAX_DEPTH, Type, TypeError};
pub use value::Value;

/// A metadata dictionary, `a{sv}`, in the order it was written. Order matters:
/// it is part of the serialised bytes and so of every checksum.
pub type VarDict<'a> = Vec<(String, Value<'a>)>;

/// Builds the `a{sv}` value for `dict`.
pub fn dict_to_value<'a>(dict: &[(String, Value<'a>)]) -> Value<'a> {
    Value::Array(
        Type::DictEntry(Box::new(Type::Str), Box::new(Type::Variant)),
        dict.iter()
            .map(|(k, v)| {
                Value::DictEntry(
                    Box::new(Value::string(k.clone())),
                    Box::new(Value::variant(v.clone())),
                )
            })
            .collect(),
    )
}

/// Reads an `a{sv}` value into key/value pairs (the values unwrapped from
/// their variants), keeping the order. Returns `None` if `v` is not an `a{sv}`.
pub fn dict_from_value(v: Value<'_>) -> Option<VarDict<'_>> {
    let Value::Array(_, items) = v else {
        return None;
    };
    items
        .into_iter()
        .map(|entry| match entry {
            Value::DictEntry(k, v) => match (*k, *v) {
                (Value::Str(k), Value::Variant(v)) => Some((k.into_owned(), *v)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The `a{sv}` type.
pub fn vardict_type() -> Type {
    Type::Array(Box::new(Type::DictEntry(
        Box::new(Type::Str),
        Box::new(Type::Variant),
    )))
}

#[cfg(test)]
mod tests;
