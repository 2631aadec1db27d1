//! A GVariant value that borrows its strings and byte arrays from the input.

use std::borrow::Cow;

use super::ty::Type;

/// One GVariant value. Strings and `ay` arrays borrow from the decoded bytes
/// (`Cow::Borrowed`) or own their data when built for encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `b`
    Bool(bool),
    /// `y`
    Byte(u8),
    /// `n`
    Int16(i16),
    /// `q`
    Uint16(u16),
    /// `i`
    Int32(i32),
    /// `u`, as stored (ostree's own fields are byteswapped; see `object`)
    Uint32(u32),
    /// `x`
    Int64(i64),
    /// `t`, as stored
    Uint64(u64),
    /// `h`
    Handle(i32),
    /// `d`
    Double(f64),
    /// `s`
    Str(Cow<'a, str>),
    /// `o`
    ObjectPath(Cow<'a, str>),
    /// `g`
    Signature(Cow<'a, str>),
    /// `v`: the value inside carries its own type.
    Variant(Box<Value<'a>>),
    /// `mT`: the element type is kept so that `Nothing` still has a type.
    Maybe(Type, Option<Box<Value<'a>>>),
    /// `ay`, kept as one byte slice rather than a list of bytes.
    Bytes(Cow<'a, [u8]>),
    /// `aT` for every `T` but `y`: the element type is kept so that an empty array has a type.
    Array(Type, Vec<Value<'a>>),
    /// `(T...)`
    Tuple(Vec<Value<'a>>),
    /// `{KV}`
    DictEntry(Box<Value<'a>>, Box<Value<'a>>),
}

/// Initialization
impl<'a> Value<'a> {
    /// A string value borrowing `s`.
    pub fn str(s: &'a str) -> Self {
        Value::Str(Cow::Borrowed(s))
    }

    /// An owned string value.
    pub fn string(s: String) -> Self {
        Value::Str(Cow::Owned(s))
    }

    /// An `ay` value borrowing `b`.
    pub fn bytes(b: &'a [u8]) -> Self {
        Value::Bytes(Cow::Borrowed(b))
    }

    /// An `as` value.
    pub fn str_array<I: IntoIterator<Item = String>>(items: I) -> Self {
        Value::Array(Type::Str, items.into_iter().map(Value::string).collect())
    }

    /// A variant wrapping `v`.
    pub fn variant(v: Value<'a>) -> Self {
        Value::Variant(Box::new(v))
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Value<'static> {
        match self {
            Value::Bool(v) => Value::Bool(v),
            Value::Byte(v) => Value::Byte(v),
            Value::Int16(v) => Value::Int16(v),
            Value::Uint16(v) => Value::Uint16(v),
            Value::Int32(v) => Value::Int32(v),
            Value::Uint32(v) => Value::Uint32(v),
            Value::Int64(v) => Value::Int64(v),
            Value::Uint64(v) => Value::Uint64(v),
            Value::Handle(v) => Value::Handle(v),
            Value::Double(v) => Value::Double(v),
            Value::Str(s) => Value::Str(Cow::Owned(s.into_owned())),
            Value::ObjectPath(s) => Value::ObjectPath(Cow::Owned(s.into_owned())),
            Value::Signature(s) => Value::Signature(Cow::Owned(s.into_owned())),
            Value::Variant(v) => Value::Variant(Box::new(v.into_owned())),
            Value::Maybe(t, v) => Value::Maybe(t, v.map(|v| Box::new(v.into_owned()))),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::Array(t, items) => {
                Value::Array(t, items.into_iter().map(Value::into_owned).collect())
            }
            Value::Tuple(items) => Value::Tuple(items.into_iter().map(Value::into_owned).collect()),
            Value::DictEntry(k, v) => {
                Value::DictEntry(Box::new(k.into_owned()), Box::new(v.into_owned()))
            }
        }
    }
}

/// Access
impl Value<'_> {
    /// The type of this value.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Bool(_) => Type::Bool,
            Value::Byte(_) => Type::Byte,
            Value::Int16(_) => Type::Int16,
            Value::Uint16(_) => Type::Uint16,
            Value::Int32(_) => Type::Int32,
            Value::Uint32(_) => Type::Uint32,
            Value::Int64(_) => Type::Int64,
            Value::Uint64(_) => Type::Uint64,
            Value::Handle(_) => Type::Handle,
            Value::Double(_) => Type::Double,
            Value::Str(_) => Type::Str,
            Value::ObjectPath(_) => Type::ObjectPath,
            Value::Signature(_) => Type::Signature,
            Value::Variant(_) => Type::Variant,
            Value::Maybe(t, _) => Type::Maybe(Box::new(t.clone())),
            Value::Bytes(_) => Type::Array(Box::new(Type::Byte)),
            Value::Array(t, _) => Type::Array(Box::new(t.clone())),
            Value::Tuple(items) => Type::Tuple(items.iter().map(Value::type_of).collect()),
            Value::DictEntry(k, v) => Type::DictEntry(Box::new(k.type_of()), Box::new(v.type_of())),
        }
    }

    /// The string inside an `s`, `o` or `g` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes of an `ay` value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The value inside a `v`.
    pub fn as_variant(&self) -> Option<&Value<'_>> {
        match self {
            Value::Variant(v) => Some(v),
            _ => None,
        }
    }

    /// The members of a tuple.
    pub fn as_tuple(&self) -> Option<&[Value<'_>]> {
        match self {
            Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// The elements of an array other than `ay`.
    pub fn as_array(&self) -> Option<&[Value<'_>]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }

    /// A one-line, GVariant-text-like rendering for people (`depot log`, `ls`).
    pub fn to_display_string(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        out
    }

    fn render(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
            Value::Byte(v) => {
                let _ = write!(out, "0x{v:02x}");
            }
            Value::Int16(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Uint16(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Int32(v) | Value::Handle(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Uint32(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Int64(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Uint64(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Double(v) => {
                let _ = write!(out, "{v}");
            }
            Value::Str(s) | Value::ObjectPath(s) | Value::Signature(s) => {
                let _ = write!(out, "{:?}", s.as_ref());
            }
            Value::Variant(v) => {
                out.push('<');
                v.render(out);
                out.push('>');
            }
            Value::Maybe(_, None) => out.push_str("nothing"),
            Value::Maybe(_, Some(v)) => v.render(out),
            Value::Bytes(b) => {
                let _ = write!(out, "b'{}'", hex::encode(b));
            }
            Value::Array(_, items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.render(out);
                }
                out.push(']');
            }
            Value::Tuple(items) => {
                out.push('(');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    v.render(out);
                }
                out.push(')');
            }
            Value::DictEntry(k, v) => {
                k.render(out);
                out.push_str(": ");
                v.render(out);
            }
        }
    }
}
