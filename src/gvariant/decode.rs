//! Decoding untrusted bytes, and the normal-form check.
//!
//! The decoder checks every bound and every offset and fails instead of
//! substituting defaults (which is what GLib does with non-normal data). A
//! value in normal form is, by GLib's own definition, one whose bytes equal
//! the serialisation of the value they decode to; [`from_normal_bytes`]
//! checks exactly that by re-encoding. Padding, offset widths, unused bytes
//! and framing all fall out of that one comparison.

use super::encode;
use super::ty::{MAX_DEPTH, Type, TypeError};
use super::value::Value;

/// Why bytes are not a valid, normal-form value of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A fixed-size value whose byte count is wrong.
    #[error("a value of type {ty} must be {expected} bytes, found {actual}")]
    WrongSize {
        /// The type string.
        ty: String,
        /// The size the type dictates.
        expected: usize,
        /// The size found.
        actual: usize,
    },
    /// A framing offset that points outside its container or backwards.
    #[error("framing offset out of range in a value of type {ty}")]
    BadOffset {
        /// The container's type string.
        ty: String,
    },
    /// A string without its terminating NUL, with an embedded NUL, or not UTF-8.
    #[error("invalid string: {0}")]
    BadString(&'static str),
    /// A boolean byte other than 0 or 1.
    #[error("boolean byte is {0}, not 0 or 1")]
    BadBool(u8),
    /// A variant whose embedded type string is invalid.
    #[error("variant has an invalid type string: {0}")]
    BadVariantType(TypeError),
    /// Values nested more deeply than [`MAX_DEPTH`].
    #[error("values nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Decoding would build far more than the input's size justifies (for
    /// instance many empty arrays of a very wide element type).
    #[error("the value is too expensive to decode for its size")]
    TooExpensive,
    /// Decodable, but the bytes are not the normal-form serialisation of the value.
    #[error("not in normal form")]
    NotNormalForm,
}

/// Decodes `data` as a value of type `ty` and requires normal form.
pub fn from_normal_bytes<'a>(ty: &Type, data: &'a [u8]) -> Result<Value<'a>, DecodeError> {
    // Every value decoded and every type node copied costs one unit; a
    // well-formed value needs far fewer units than it has bytes.
    from_normal_bytes_within(ty, data, data.len().saturating_mul(4).saturating_add(1024))
}

/// [`from_normal_bytes`] with a budget of `units` values and copied type
/// nodes (each value takes 48 bytes in memory), for input whose shape is
/// known to be sparse: a summary has 10 or more bytes per value, so one unit
/// per 2 bytes bounds what a hostile one costs at 24 times its size, where
/// an array of a million booleans would take 48 bytes per byte.
pub fn from_normal_bytes_within<'a>(
    ty: &Type,
    data: &'a [u8],
    units: usize,
) -> Result<Value<'a>, DecodeError> {
    let mut budget = units;
    let value = decode(ty, data, 0, &mut budget)?;
    // The re-encoding is at most as long as the input when it matches, so cap
    // the comparison cost by the input length.
    let again = encode::to_bytes(&value);
    if again == data {
        Ok(value)
    } else {
        Err(DecodeError::NotNormalForm)
    }
}

/// The framing-offset width a reader derives from a container's total size
/// (GLib's `gvs_get_offset_size`).
pub(crate) fn offset_width(len: usize) -> usize {
    if len <= 0xff {
        1
    } else if len <= 0xffff {
        2
    } else if len <= 0xffff_ffff {
        4
    } else {
        8
    }
}

pub(crate) fn read_offset(data: &[u8], at: usize, width: usize) -> Option<usize> {
    let bytes = data.get(at..at.checked_add(width)?)?;
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(bytes);
    usize::try_from(u64::from_le_bytes(buf)).ok()
}

fn fixed<const N: usize>(ty: &Type, data: &[u8]) -> Result<[u8; N], DecodeError> {
    data.try_into().map_err(|_| DecodeError::WrongSize {
        ty: ty.to_string(),
        expected: N,
        actual: data.len(),
    })
}

pub(crate) fn string(data: &[u8]) -> Result<&str, DecodeError> {
    let (&last, body) = data
        .split_last()
        .ok_or(DecodeError::BadString("empty, no terminating NUL"))?;
    if last != 0 {
        return Err(DecodeError::BadString("no terminating NUL"));
    }
    if body.contains(&0) {
        return Err(DecodeError::BadString("embedded NUL"));
    }
    std::str::from_utf8(body).map_err(|_| DecodeError::BadString("not valid UTF-8"))
}

fn is_object_path(s: &str) -> bool {
    if s == "/" {
        return true;
    }
    let Some(rest) = s.strip_prefix('/') else {
        return false;
    };
    rest.split('/')
        .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// GLib's `g_variant_serialiser_is_signature`: a sequence of complete types
/// using only `ybnqiuxthdvasog(){}` (no maybe types), of any length.
fn is_signature(s: &str) -> bool {
    if !s.bytes().all(|b| b"ybnqiuxthdvasog(){}".contains(&b)) {
        return false;
    }
    let mut rest = s.as_bytes();
    while !rest.is_empty() {
        match Type::parse_prefix(rest, 0) {
            Ok((_, r)) => rest = r,
            Err(_) => return false,
        }
    }
    true
}

fn bad_offset(ty: &Type) -> DecodeError {
    DecodeError::BadOffset { ty: ty.to_string() }
}

/// Decodes without the normal-form comparison; every bound is still checked.
pub(crate) fn decode<'a>(
    ty: &Type,
    data: &'a [u8],
    depth: usize,
    budget: &mut usize,
) -> Result<Value<'a>, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    spend(budget, 1)?;
    Ok(match ty {
        Type::Bool => match fixed::<1>(ty, data)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(DecodeError::BadBool(b)),
        },
        Type::Byte => Value::Byte(fixed::<1>(ty, data)?[0]),
        Type::Int16 => Value::Int16(i16::from_le_bytes(fixed(ty, data)?)),
        Type::Uint16 => Value::Uint16(u16::from_le_bytes(fixed(ty, data)?)),
        Type::Int32 => Value::Int32(i32::from_le_bytes(fixed(ty, data)?)),
        Type::Handle => Value::Handle(i32::from_le_bytes(fixed(ty, data)?)),
        Type::Uint32 => Value::Uint32(u32::from_le_bytes(fixed(ty, data)?)),
        Type::Int64 => Value::Int64(i64::from_le_bytes(fixed(ty, data)?)),
        Type::Uint64 => Value::Uint64(u64::from_le_bytes(fixed(ty, data)?)),
        Type::Double => Value::Double(f64::from_bits(u64::from_le_bytes(fixed(ty, data)?))),
        Type::Str => Value::str(string(data)?),
        Type::ObjectPath => {
            let s = string(data)?;
            if !is_object_path(s) {
                return Err(DecodeError::BadString("not a valid object path"));
            }
            Value::ObjectPath(s.into())
        }
        Type::Signature => {
            let s = string(data)?;
            if !is_signature(s) {
                return Err(DecodeError::BadString("not a valid signature"));
            }
            Value::Signature(s.into())
        }
        Type::Variant => {
            let zero = data
                .iter()
                .rposition(|&b| b == 0)
                .ok_or(DecodeError::BadVariantType(TypeError::Truncated))?;
            let (child_ty, rest) = Type::parse_prefix(&data[zero + 1..], depth)
                .map_err(DecodeError::BadVariantType)?;
            if !rest.is_empty() {
                return Err(DecodeError::BadVariantType(TypeError::Trailing));
            }
            Value::Variant(Box::new(decode(
                &child_ty,
                &data[..zero],
                depth + 1,
                budget,
            )?))
        }
        Type::Maybe(elem) => {
            if data.is_empty() {
                Value::Maybe(copy_type(elem, budget)?, None)
            } else if elem.fixed_size().is_some() {
                let v = decode(elem, data, depth + 1, budget)?;
                Value::Maybe(copy_type(elem, budget)?, Some(Box::new(v)))
            } else {
                let (&last, body) = data.split_last().ok_or_else(|| bad_offset(ty))?;
                if last != 0 {
                    return Err(DecodeError::NotNormalForm);
                }
                let v = decode(elem, body, depth + 1, budget)?;
                Value::Maybe(copy_type(elem, budget)?, Some(Box::new(v)))
            }
        }
        Type::Array(elem) if **elem == Type::Byte => Value::bytes(data),
        Type::Array(elem) => Value::Array(
            copy_type(elem, budget)?,
            decode_array(ty, elem, data, depth, budget)?,
        ),
        Type::Tuple(members) => {
            Value::Tuple(decode_struct(ty, members.iter(), data, depth, budget)?)
        }
        Type::DictEntry(k, v) => {
            let mut members = decode_struct(
                ty,
                [k.as_ref(), v.as_ref()].into_iter(),
                data,
                depth,
                budget,
            )?;
            let v = members.pop().ok_or_else(|| bad_offset(ty))?;
            let k = members.pop().ok_or_else(|| bad_offset(ty))?;
            Value::DictEntry(Box::new(k), Box::new(v))
        }
    })
}

fn decode_array<'a>(
    ty: &Type,
    elem: &Type,
    data: &'a [u8],
    depth: usize,
    budget: &mut usize,
) -> Result<Vec<Value<'a>>, DecodeError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(size) = elem.fixed_size() {
        if !data.len().is_multiple_of(size) {
            return Err(DecodeError::WrongSize {
                ty: ty.to_string(),
                expected: data.len().next_multiple_of(size),
                actual: data.len(),
            });
        }
        return data
            .chunks_exact(size)
            .map(|chunk| decode(elem, chunk, depth + 1, budget))
            .collect();
    }
    let len = data.len();
    let width = offset_width(len);
    let last_end = len
        .checked_sub(width)
        .and_then(|at| read_offset(data, at, width))
        .ok_or_else(|| bad_offset(ty))?;
    if last_end > len || !(len - last_end).is_multiple_of(width) || last_end == len {
        return Err(bad_offset(ty));
    }
    let count = (len - last_end) / width;
    let align = elem.alignment();
    // No capacity from the untrusted count: the vector grows only as elements
    // actually decode.
    let mut items = Vec::new();
    let mut prev_end = 0usize;
    for i in 0..count {
        let end = read_offset(data, last_end + i * width, width).ok_or_else(|| bad_offset(ty))?;
        let start = prev_end.next_multiple_of(align);
        if start > end || end > last_end {
            return Err(bad_offset(ty));
        }
        items.push(decode(elem, &data[start..end], depth + 1, budget)?);
        prev_end = end;
    }
    Ok(items)
}

fn decode_struct<'a, 't>(
    ty: &Type,
    members: impl ExactSizeIterator<Item = &'t Type>,
    data: &'a [u8],
    depth: usize,
    budget: &mut usize,
) -> Result<Vec<Value<'a>>, DecodeError> {
    if let Some(size) = ty.fixed_size()
        && data.len() != size
    {
        return Err(DecodeError::WrongSize {
            ty: ty.to_string(),
            expected: size,
            actual: data.len(),
        });
    }
    let len = data.len();
    let width = offset_width(len);
    let count = members.len();
    let mut values = Vec::with_capacity(count);
    let mut pos = 0usize;
    let mut offsets_used = 0usize;
    for (i, m) in members.enumerate() {
        pos = pos.next_multiple_of(m.alignment());
        let end = if let Some(size) = m.fixed_size() {
            pos.checked_add(size).ok_or_else(|| bad_offset(ty))?
        } else if i + 1 == count {
            len.checked_sub(offsets_used * width)
                .ok_or_else(|| bad_offset(ty))?
        } else {
            offsets_used += 1;
            let at = len
                .checked_sub(offsets_used * width)
                .ok_or_else(|| bad_offset(ty))?;
            read_offset(data, at, width).ok_or_else(|| bad_offset(ty))?
        };
        let limit = len
            .checked_sub(offsets_used * width)
            .ok_or_else(|| bad_offset(ty))?;
        if pos > end || end > limit {
            return Err(bad_offset(ty));
        }
        values.push(decode(m, &data[pos..end], depth + 1, budget)?);
        pos = end;
    }
    Ok(values)
}

fn spend(budget: &mut usize, units: usize) -> Result<(), DecodeError> {
    *budget = budget.checked_sub(units).ok_or(DecodeError::TooExpensive)?;
    Ok(())
}

/// Copies an element type into a value, paying for its size.
fn copy_type(ty: &Type, budget: &mut usize) -> Result<Type, DecodeError> {
    spend(budget, ty.node_count())?;
    Ok(ty.clone())
}
