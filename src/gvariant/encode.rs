//! Serialising values in GVariant normal form.
//!
//! Values are written straight into one output buffer. Every container starts
//! at a position aligned to its own alignment, so aligning on the absolute
//! position in the buffer equals aligning relative to the container, provided
//! the buffer itself starts the top-level value (it always does here).

use super::ty::Type;
use super::value::Value;

/// Serialises `value` in normal form.
pub fn to_bytes(value: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// Appends the normal-form serialisation of `value` to `out`, which must be
/// empty or end at a position aligned for the value.
pub fn write(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::Byte(v) => out.push(*v),
        Value::Int16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Uint16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Int32(v) | Value::Handle(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Uint32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Int64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Uint64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Double(v) => out.extend_from_slice(&v.to_bits().to_le_bytes()),
        Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        Value::Variant(inner) => {
            write(inner, out);
            out.push(0);
            out.extend_from_slice(inner.type_of().to_string().as_bytes());
        }
        Value::Maybe(ty, inner) => {
            if let Some(inner) = inner {
                write(inner, out);
                if ty.fixed_size().is_none() {
                    out.push(0);
                }
            }
        }
        Value::Bytes(b) => out.extend_from_slice(b),
        Value::Array(elem, items) => write_array(elem, items, out),
        Value::Tuple(items) => write_struct(items.iter(), out),
        Value::DictEntry(k, v) => write_struct([k.as_ref(), v.as_ref()].into_iter(), out),
    }
}

fn pad_to(out: &mut Vec<u8>, align: usize) {
    let target = out.len().next_multiple_of(align);
    out.resize(target, 0);
}

fn write_array(elem: &Type, items: &[Value<'_>], out: &mut Vec<u8>) {
    let start = out.len();
    let align = elem.alignment();
    if elem.fixed_size().is_some() {
        for item in items {
            pad_to(out, align);
            write(item, out);
        }
        return;
    }
    let mut ends = Vec::with_capacity(items.len());
    for item in items {
        pad_to(out, align);
        write(item, out);
        ends.push(out.len() - start);
    }
    write_offsets(out, start, &ends);
}

/// Writes a tuple or dict entry: members at their alignments, then the end
/// offsets of the variable-size members but the last, in reverse order.
fn write_struct<'v, 'a: 'v>(
    members: impl ExactSizeIterator<Item = &'v Value<'a>>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    let count = members.len();
    if count == 0 {
        out.push(0);
        return;
    }
    let mut ends = Vec::new();
    let mut fixed = true;
    let mut struct_align = 1;
    for (i, m) in members.enumerate() {
        let (align, member_fixed) = layout(m);
        struct_align = struct_align.max(align);
        pad_to(out, align);
        write(m, out);
        if !member_fixed {
            fixed = false;
            if i + 1 < count {
                ends.push(out.len() - start);
            }
        }
    }
    if fixed {
        pad_to(out, struct_align);
        return;
    }
    ends.reverse();
    write_offsets(out, start, &ends);
}

/// A value's alignment and whether its type has a fixed size, without
/// building its [`Type`] (this runs for every member of every tuple).
fn layout(v: &Value<'_>) -> (usize, bool) {
    match v {
        Value::Bool(_) | Value::Byte(_) => (1, true),
        Value::Int16(_) | Value::Uint16(_) => (2, true),
        Value::Int32(_) | Value::Uint32(_) | Value::Handle(_) => (4, true),
        Value::Int64(_) | Value::Uint64(_) | Value::Double(_) => (8, true),
        Value::Str(_) | Value::ObjectPath(_) | Value::Signature(_) | Value::Bytes(_) => (1, false),
        Value::Variant(_) => (8, false),
        Value::Maybe(t, _) | Value::Array(t, _) => (t.alignment(), false),
        Value::Tuple(items) => items.iter().fold((1, true), |(a, f), m| {
            let (ma, mf) = layout(m);
            (a.max(ma), f && mf)
        }),
        Value::DictEntry(k, v) => {
            let (ka, kf) = layout(k);
            let (va, vf) = layout(v);
            (ka.max(va), kf && vf)
        }
    }
}

/// Appends framing offsets for a container that began at `start`, choosing the
/// smallest width that can address the whole container (GLib's
/// `gvs_calculate_total_size`).
fn write_offsets(out: &mut Vec<u8>, start: usize, ends: &[usize]) {
    let body = out.len() - start;
    let width = offset_width_for_body(body, ends.len());
    for &end in ends {
        out.extend_from_slice(&end.to_le_bytes()[..width]);
    }
}

/// The framing-offset width a writer uses for a body of `body` bytes with `n`
/// offsets.
pub(crate) fn offset_width_for_body(body: usize, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    for width in [1usize, 2, 4] {
        let total = body.saturating_add(n.saturating_mul(width));
        if total < (1usize << (8 * width)) {
            return width;
        }
    }
    8
}
