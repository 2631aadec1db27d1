//! GVariant type strings: parsing, printing, alignment and fixed sizes.
//!
//! Every serialisation rule in GVariant depends on a type's alignment and on
//! whether it has a fixed size, so both are computed here once.

use std::fmt;

/// Deepest nesting of containers accepted in a type string, as GLib's
/// `G_VARIANT_MAX_RECURSION_DEPTH` (128) bounds it; depot uses less because no
/// ostree type nests deeper than 5.
pub const MAX_DEPTH: usize = 64;

/// A complete GVariant type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Type {
    /// `b`
    Bool,
    /// `y`
    Byte,
    /// `n`
    Int16,
    /// `q`
    Uint16,
    /// `i`
    Int32,
    /// `u`
    Uint32,
    /// `x`
    Int64,
    /// `t`
    Uint64,
    /// `h`
    Handle,
    /// `d`
    Double,
    /// `s`
    Str,
    /// `o`
    ObjectPath,
    /// `g`
    Signature,
    /// `v`
    Variant,
    /// `mT`
    Maybe(Box<Type>),
    /// `aT`
    Array(Box<Type>),
    /// `(T...)`
    Tuple(Vec<Type>),
    /// `{KV}`
    DictEntry(Box<Type>, Box<Type>),
}

/// Why a type string is not one complete, valid type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TypeError {
    /// The string ended inside a type.
    #[error("type string ends early")]
    Truncated,
    /// A character that starts no type.
    #[error("unknown type character {0:?}")]
    UnknownChar(char),
    /// Characters after one complete type.
    #[error("trailing characters after a complete type")]
    Trailing,
    /// A dict entry whose key is not a basic type, or with other than two members.
    #[error("a dict entry needs a basic key type and exactly one value type")]
    BadDictEntry,
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("type nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Initialization
impl Type {
    /// Parses exactly one complete type from `s`.
    pub fn parse(s: &str) -> Result<Type, TypeError> {
        let (ty, rest) = Self::parse_prefix(s.as_bytes(), 0)?;
        if rest.is_empty() {
            Ok(ty)
        } else {
            Err(TypeError::Trailing)
        }
    }

    /// Parses one type from the front of `s`, returning the rest.
    pub(crate) fn parse_prefix(s: &[u8], depth: usize) -> Result<(Type, &[u8]), TypeError> {
        if depth > MAX_DEPTH {
            return Err(TypeError::TooDeep);
        }
        let (&c, rest) = s.split_first().ok_or(TypeError::Truncated)?;
        let basic = match c {
            b'b' => Some(Type::Bool),
            b'y' => Some(Type::Byte),
            b'n' => Some(Type::Int16),
            b'q' => Some(Type::Uint16),
            b'i' => Some(Type::Int32),
            b'u' => Some(Type::Uint32),
            b'x' => Some(Type::Int64),
            b't' => Some(Type::Uint64),
            b'h' => Some(Type::Handle),
            b'd' => Some(Type::Double),
            b's' => Some(Type::Str),
            b'o' => Some(Type::ObjectPath),
            b'g' => Some(Type::Signature),
            b'v' => Some(Type::Variant),
            _ => None,
        };
        if let Some(t) = basic {
            return Ok((t, rest));
        }
        match c {
            b'm' => {
                let (inner, rest) = Self::parse_prefix(rest, depth + 1)?;
                Ok((Type::Maybe(Box::new(inner)), rest))
            }
            b'a' => {
                let (inner, rest) = Self::parse_prefix(rest, depth + 1)?;
                Ok((Type::Array(Box::new(inner)), rest))
            }
            b'(' => {
                let mut members = Vec::new();
                let mut rest = rest;
                loop {
                    match rest.first() {
                        None => return Err(TypeError::Truncated),
                        Some(b')') => return Ok((Type::Tuple(members), &rest[1..])),
                        Some(_) => {
                            let (m, r) = Self::parse_prefix(rest, depth + 1)?;
                            members.push(m);
                            rest = r;
                        }
                    }
                }
            }
            b'{' => {
                let (key, rest) = Self::parse_prefix(rest, depth + 1)?;
                if !key.is_basic() {
                    return Err(TypeError::BadDictEntry);
                }
                let (value, rest) = Self::parse_prefix(rest, depth + 1)?;
                match rest.split_first() {
                    Some((b'}', rest)) => {
                        Ok((Type::DictEntry(Box::new(key), Box::new(value)), rest))
                    }
                    Some(_) => Err(TypeError::BadDictEntry),
                    None => Err(TypeError::Truncated),
                }
            }
            other => Err(TypeError::UnknownChar(char::from(other))),
        }
    }
}

/// Access
impl Type {
    /// A basic type: a number, a boolean or a string-like type (never a container or `v`).
    pub fn is_basic(&self) -> bool {
        !matches!(
            self,
            Type::Variant | Type::Maybe(_) | Type::Array(_) | Type::Tuple(_) | Type::DictEntry(..)
        )
    }

    /// How many nodes the type tree has (what copying it costs).
    pub fn node_count(&self) -> usize {
        match self {
            Type::Maybe(t) | Type::Array(t) => 1 + t.node_count(),
            Type::Tuple(ms) => 1 + ms.iter().map(Type::node_count).sum::<usize>(),
            Type::DictEntry(k, v) => 1 + k.node_count() + v.node_count(),
            _ => 1,
        }
    }

    /// Alignment in bytes: 1, 2, 4 or 8.
    pub fn alignment(&self) -> usize {
        match self {
            Type::Bool | Type::Byte | Type::Str | Type::ObjectPath | Type::Signature => 1,
            Type::Int16 | Type::Uint16 => 2,
            Type::Int32 | Type::Uint32 | Type::Handle => 4,
            Type::Int64 | Type::Uint64 | Type::Double | Type::Variant => 8,
            Type::Maybe(t) | Type::Array(t) => t.alignment(),
            Type::Tuple(ms) => ms.iter().map(Type::alignment).max().unwrap_or(1),
            Type::DictEntry(k, v) => k.alignment().max(v.alignment()),
        }
    }

    /// The size of every value of this type, or `None` for variable-size types.
    pub fn fixed_size(&self) -> Option<usize> {
        match self {
            Type::Bool | Type::Byte => Some(1),
            Type::Int16 | Type::Uint16 => Some(2),
            Type::Int32 | Type::Uint32 | Type::Handle => Some(4),
            Type::Int64 | Type::Uint64 | Type::Double => Some(8),
            Type::Str
            | Type::ObjectPath
            | Type::Signature
            | Type::Variant
            | Type::Maybe(_)
            | Type::Array(_) => None,
            Type::Tuple(ms) => fixed_struct_size(ms.iter()),
            Type::DictEntry(k, v) => fixed_struct_size([k.as_ref(), v.as_ref()].into_iter()),
        }
    }
}

/// The size of a tuple whose members are all fixed: members laid out at their
/// alignments, the total rounded up to the tuple's alignment; `()` is one byte.
fn fixed_struct_size<'a>(members: impl Iterator<Item = &'a Type> + Clone) -> Option<usize> {
    let mut offset = 0usize;
    let mut align = 1usize;
    let mut any = false;
    for m in members {
        any = true;
        let size = m.fixed_size()?;
        let a = m.alignment();
        align = align.max(a);
        offset = offset.next_multiple_of(a) + size;
    }
    if any {
        Some(offset.next_multiple_of(align))
    } else {
        Some(1)
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self {
            Type::Bool => "b",
            Type::Byte => "y",
            Type::Int16 => "n",
            Type::Uint16 => "q",
            Type::Int32 => "i",
            Type::Uint32 => "u",
            Type::Int64 => "x",
            Type::Uint64 => "t",
            Type::Handle => "h",
            Type::Double => "d",
            Type::Str => "s",
            Type::ObjectPath => "o",
            Type::Signature => "g",
            Type::Variant => "v",
            Type::Maybe(t) => return write!(f, "m{t}"),
            Type::Array(t) => return write!(f, "a{t}"),
            Type::Tuple(ms) => {
                f.write_str("(")?;
                for m in ms {
                    write!(f, "{m}")?;
                }
                return f.write_str(")");
            }
            Type::DictEntry(k, v) => return write!(f, "{{{k}{v}}}"),
        };
        f.write_str(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ostree_types() {
        for s in [
            "(a{sv}aya(say)sstayay)",
            "(a(say)a(sayay))",
            "(uuua(ayay))",
            "(tuuuusa(ayay))",
            "(a(s(taya{sv}))a{sv})",
            "a{sa(s(taya{sv}))}",
            "mv",
            "()",
            "aas",
        ] {
            let t = Type::parse(s).expect(s);
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_type_strings() {
        for (s, e) in [
            ("", TypeError::Truncated),
            ("a", TypeError::Truncated),
            ("(s", TypeError::Truncated),
            ("ss", TypeError::Trailing),
            ("z", TypeError::UnknownChar('z')),
            ("{vs}", TypeError::BadDictEntry),
            ("{sss}", TypeError::BadDictEntry),
            (")", TypeError::UnknownChar(')')),
        ] {
            assert_eq!(Type::parse(s), Err(e), "{s:?}");
        }
        let deep = "a".repeat(MAX_DEPTH + 2) + "y";
        assert_eq!(Type::parse(&deep), Err(TypeError::TooDeep));
    }

    #[test]
    fn sizes_and_alignments() {
        let t = |s| Type::parse(s).expect("valid");
        assert_eq!(t("(say)").fixed_size(), None);
        assert_eq!(t("(yu)").fixed_size(), Some(8));
        assert_eq!(t("(uy)").fixed_size(), Some(8));
        assert_eq!(t("(ty)").fixed_size(), Some(16));
        assert_eq!(t("()").fixed_size(), Some(1));
        assert_eq!(t("{yy}").fixed_size(), Some(2));
        assert_eq!(t("(sv)").alignment(), 8);
        assert_eq!(t("a(ayay)").alignment(), 1);
    }
}
