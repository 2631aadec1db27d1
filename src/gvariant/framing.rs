//! Direct access to the framing of containers whose members are all strings
//! or byte arrays, for objects too large to decode into [`Value`]s.
//!
//! A dirtree, `(a(say)a(sayay))`, may be 128 MiB and holds millions of
//! entries. Decoded generically, each entry is a tuple of values (about 240
//! bytes of memory per entry of 40 bytes); read through these functions it
//! is a few slices of the input. Every member here has alignment 1 and no
//! fixed size, so a container is its members back to back, then the framing
//! offsets: no padding, and positions relative to the container equal
//! positions in the buffer. Callers check normal form by re-encoding what
//! they parsed with the writers here and comparing, as
//! [`from_normal_bytes`](super::from_normal_bytes) does.
//!
//! [`Value`]: super::Value

use super::decode::{DecodeError, offset_width, read_offset};
/// Appends the framing offsets of a container that began at `start`, given
/// the ends (relative to `start`) that its framing records.
pub(crate) use super::encode::write_offsets;

fn bad_offset(ty: &str) -> DecodeError {
    DecodeError::BadOffset { ty: ty.into() }
}

/// The `N` members of a tuple of type `ty` whose members are all strings or
/// byte arrays, as slices of `data`. Strings keep their NUL: see
/// [`string`].
pub(crate) fn tuple_members<'a, const N: usize>(
    ty: &str,
    data: &'a [u8],
) -> Result<[&'a [u8]; N], DecodeError> {
    const { assert!(N > 0) };
    let len = data.len();
    let width = offset_width(len);
    // The end of each member but the last, in reverse order at the end.
    let limit = (N - 1)
        .checked_mul(width)
        .and_then(|table| len.checked_sub(table))
        .ok_or_else(|| bad_offset(ty))?;
    let mut members = [&data[..0]; N];
    let mut start = 0;
    for (i, member) in members.iter_mut().enumerate() {
        let end = if i + 1 == N {
            limit
        } else {
            read_offset(data, len - (i + 1) * width, width).ok_or_else(|| bad_offset(ty))?
        };
        if start > end || end > limit {
            return Err(bad_offset(ty));
        }
        *member = &data[start..end];
        start = end;
    }
    Ok(members)
}

/// The elements of an array of type `ty` whose elements have alignment 1 and
/// no fixed size (strings, byte arrays, tuples of those), as slices of
/// `data`, read as they are iterated.
pub(crate) fn array_elements<'a>(
    ty: &'a str,
    data: &'a [u8],
) -> Result<ArrayElements<'a>, DecodeError> {
    let mut elements = ArrayElements {
        ty,
        data,
        width: 1,
        table: 0,
        count: 0,
        next: 0,
        start: 0,
    };
    if data.is_empty() {
        return Ok(elements);
    }
    let len = data.len();
    let width = offset_width(len);
    // The last offset is the end of the last element: where the table starts.
    let table = len
        .checked_sub(width)
        .and_then(|at| read_offset(data, at, width))
        .filter(|&t| t < len && (len - t) % width == 0)
        .ok_or_else(|| bad_offset(ty))?;
    elements.width = width;
    elements.table = table;
    elements.count = (len - table) / width;
    Ok(elements)
}

/// The elements of an array, from [`array_elements`].
pub(crate) struct ArrayElements<'a> {
    ty: &'a str,
    data: &'a [u8],
    width: usize,
    table: usize,
    count: usize,
    next: usize,
    start: usize,
}

impl ArrayElements<'_> {
    /// How many elements the array's framing declares.
    pub(crate) fn len(&self) -> usize {
        self.count
    }
}

impl<'a> Iterator for ArrayElements<'a> {
    type Item = Result<&'a [u8], DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.count {
            return None;
        }
        let at = self.table + self.next * self.width;
        self.next += 1;
        let element = read_offset(self.data, at, self.width)
            .filter(|&end| self.start <= end && end <= self.table)
            .map(|end| &self.data[std::mem::replace(&mut self.start, end)..end]);
        if element.is_none() {
            // Nothing after a framing error.
            self.next = self.count;
        }
        Some(element.ok_or_else(|| bad_offset(self.ty)))
    }
}

/// A string member: its bytes end with the NUL, which is the only NUL, and
/// the rest is UTF-8.
pub(crate) fn string(data: &[u8]) -> Result<&str, DecodeError> {
    super::decode::string(data)
}

/// A member for [`write_tuple`].
pub(crate) enum Member<'a> {
    /// Written with its NUL.
    Str(&'a str),
    /// Written as is.
    Bytes(&'a [u8]),
}

/// Appends a tuple of strings and byte arrays in normal form.
pub(crate) fn write_tuple<const N: usize>(out: &mut Vec<u8>, members: &[Member<'_>; N]) {
    let start = out.len();
    let mut ends = [0usize; N];
    for (member, end) in members.iter().zip(&mut ends) {
        match member {
            Member::Str(s) => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Member::Bytes(b) => out.extend_from_slice(b),
        }
        *end = out.len() - start;
    }
    // The ends of all members but the last, in reverse order.
    let framed = &mut ends[..N.saturating_sub(1)];
    framed.reverse();
    write_offsets(out, start, framed);
}

/// Appends an array whose elements have alignment 1 and no fixed size, each
/// written by `write_element`, in normal form.
pub(crate) fn write_array<T>(
    out: &mut Vec<u8>,
    elements: impl ExactSizeIterator<Item = T>,
    mut write_element: impl FnMut(&mut Vec<u8>, T),
) {
    let start = out.len();
    let mut ends = Vec::with_capacity(elements.len());
    for element in elements {
        write_element(out, element);
        ends.push(out.len() - start);
    }
    write_offsets(out, start, &ends);
}
