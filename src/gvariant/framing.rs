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
//! they parsed and comparing, as [`from_normal_bytes`](super::from_normal_bytes)
//! does; the writers here can compare as they go ([`Matches`]) instead of
//! building a second copy.
//!
//! [`Value`]: super::Value

use super::decode::{DecodeError, offset_width, read_offset};
use super::encode::offset_width_for_body;

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
        .filter(|&t| t < len && (len - t).is_multiple_of(width))
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
pub(crate) use super::decode::string;

/// Where the writers put bytes.
pub(crate) trait Output {
    /// Bytes written so far.
    fn position(&self) -> usize;
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
}

impl Output for Vec<u8> {
    fn position(&self) -> usize {
        self.len()
    }

    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Compares what is written with bytes already there, keeping nothing.
pub(crate) struct Matches<'a> {
    expected: &'a [u8],
    position: usize,
    equal: bool,
}

impl<'a> Matches<'a> {
    /// Compares with `expected`.
    pub(crate) fn new(expected: &'a [u8]) -> Self {
        Matches {
            expected,
            position: 0,
            equal: true,
        }
    }

    /// Whether everything written equals all of the expected bytes.
    pub(crate) fn matched(&self) -> bool {
        self.equal && self.position == self.expected.len()
    }
}

impl Output for Matches<'_> {
    fn position(&self) -> usize {
        self.position
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = self.position.saturating_add(bytes.len());
        self.equal = self.equal && self.expected.get(self.position..end) == Some(bytes);
        self.position = end;
    }
}

/// Appends the framing offsets of a container that began at `start`: the
/// ends (relative to `start`) that its framing records, in the smallest
/// width that addresses the whole container.
pub(crate) fn write_offsets(out: &mut impl Output, start: usize, ends: &[usize]) {
    let width = offset_width_for_body(out.position() - start, ends.len());
    for &end in ends {
        out.put(&end.to_le_bytes()[..width]);
    }
}

/// A member for [`write_tuple`].
pub(crate) enum Member<'a> {
    /// Written with its NUL.
    Str(&'a str),
    /// Written as is.
    Bytes(&'a [u8]),
}

/// Appends a tuple of strings and byte arrays in normal form.
pub(crate) fn write_tuple<const N: usize>(out: &mut impl Output, members: &[Member<'_>; N]) {
    let start = out.position();
    let mut ends = [0usize; N];
    for (member, end) in members.iter().zip(&mut ends) {
        match member {
            Member::Str(s) => {
                out.put(s.as_bytes());
                out.put(&[0]);
            }
            Member::Bytes(b) => out.put(b),
        }
        *end = out.position() - start;
    }
    // The ends of all members but the last, in reverse order.
    let framed = &mut ends[..N.saturating_sub(1)];
    framed.reverse();
    write_offsets(out, start, framed);
}

/// Appends an array whose elements have alignment 1 and no fixed size, each
/// written by `write_element`, in normal form.
pub(crate) fn write_array<O: Output, T>(
    out: &mut O,
    elements: impl ExactSizeIterator<Item = T>,
    mut write_element: impl FnMut(&mut O, T),
) {
    let start = out.position();
    let mut ends = Vec::with_capacity(elements.len());
    for element in elements {
        write_element(out, element);
        ends.push(out.position() - start);
    }
    write_offsets(out, start, &ends);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_same_bytes_all_of_them() {
        let matched = |expected: &[u8], pieces: &[&[u8]]| {
            let mut m = Matches::new(expected);
            for p in pieces {
                m.put(p);
            }
            m.matched()
        };
        assert!(matched(b"abc", &[b"a", b"", b"bc"]));
        assert!(matched(b"", &[]));
        assert!(!matched(b"abc", &[b"ab"]), "shorter");
        assert!(!matched(b"abc", &[b"abc", b"d"]), "longer");
        assert!(!matched(b"abc", &[b"abd"]), "different");
        assert!(!matched(b"abc", &[b"x", b"bc"]), "a difference stays");
    }

    #[test]
    fn writers_and_readers_agree_on_a_tuple_and_an_array() {
        let mut out = Vec::new();
        write_array(&mut out, ["x", "yz"].into_iter(), |out, s| {
            write_tuple(out, &[Member::Str(s), Member::Bytes(b"\x01\x02")]);
        });
        // ("x\0", [1, 2]) and ("yz\0", [1, 2]): each tuple's one offset is
        // the end of its string; the array's, the end of each tuple.
        assert_eq!(out, b"x\0\x01\x02\x02yz\0\x01\x02\x03\x05\x0b");
        let elements: Vec<&[u8]> = array_elements("a(say)", &out)
            .expect("array")
            .collect::<Result<_, _>>()
            .expect("elements");
        assert_eq!(
            elements,
            [&b"x\0\x01\x02\x02"[..], &b"yz\0\x01\x02\x03"[..]]
        );
        let [s, b] = tuple_members::<2>("(say)", elements[1]).expect("tuple");
        assert_eq!((string(s), b), (Ok("yz"), &b"\x01\x02"[..]));
    }
}
