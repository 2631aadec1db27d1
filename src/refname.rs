//! Ref names, parsed once: a [`RefName`] is always safe to join to
//! `refs/heads/`.
//!
//! The grammar is ostree's `OSTREE_REF_REGEXP`,
//! `(?:[\w\d][-._\w\d]*/)*[\w\d][-._\w\d]*`, restricted to ASCII (a strict
//! subset of what ostree accepts, so every depot ref is a valid ostree ref),
//! with length caps so a name always fits a file system path.

use std::fmt;
use std::str::FromStr;

/// Longest ref name accepted, in bytes.
pub const MAX_REF_LEN: usize = 1024;
/// Longest component (between slashes): a file name on Linux (`NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// A valid ref name such as `proj/linux/123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName(String);

/// Why a string is not a ref name. One variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefNameError {
    /// Nothing at all.
    #[error("a ref name cannot be empty")]
    Empty,
    /// Longer than [`MAX_REF_LEN`].
    #[error("a ref name is at most {MAX_REF_LEN} bytes, this one is {0}")]
    TooLong(usize),
    /// A component longer than [`MAX_COMPONENT_LEN`].
    #[error("each part of a ref name is at most {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
    /// `a//b`, a leading or a trailing `/`.
    #[error("a ref name cannot start or end with '/' or contain '//'")]
    EmptyComponent,
    /// A component starting with `-` or `.`.
    #[error("each part of a ref name must start with a letter, digit or '_', not {0:?}")]
    BadStart(char),
    /// A character outside `[A-Za-z0-9_.-]` and `/`.
    #[error("a ref name may contain only letters, digits, '_', '-', '.' and '/', not {0:?}")]
    BadChar(char),
}

impl RefName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `self` equals `prefix` or lies below it (`proj` covers `proj/x`
    /// but not `project`).
    pub fn is_under(&self, prefix: &str) -> bool {
        self.0 == prefix
            || (self.0.starts_with(prefix) && self.0.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

impl FromStr for RefName {
    type Err = RefNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(RefNameError::Empty);
        }
        if s.len() > MAX_REF_LEN {
            return Err(RefNameError::TooLong(s.len()));
        }
        for component in s.split('/') {
            let first = component
                .chars()
                .next()
                .ok_or(RefNameError::EmptyComponent)?;
            if component.len() > MAX_COMPONENT_LEN {
                return Err(RefNameError::ComponentTooLong);
            }
            if let Some(c) = component
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            {
                return Err(RefNameError::BadChar(c));
            }
            if !(first.is_ascii_alphanumeric() || first == '_') {
                return Err(RefNameError::BadStart(first));
            }
        }
        Ok(RefName(s.to_string()))
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RefName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RefName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("ref {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        for good in [
            "main",
            "proj/linux/123",
            "a",
            "_x",
            "v1.2-rc_3",
            "0/1/2",
            "a.lock",
        ] {
            assert_eq!(
                good.parse::<RefName>().map(|r| r.to_string()),
                Ok(good.to_string())
            );
        }
        let cases = [
            ("", RefNameError::Empty),
            ("/a", RefNameError::EmptyComponent),
            ("a/", RefNameError::EmptyComponent),
            ("a//b", RefNameError::EmptyComponent),
            ("../x", RefNameError::BadStart('.')),
            ("a/..", RefNameError::BadStart('.')),
            ("-x", RefNameError::BadStart('-')),
            ("a b", RefNameError::BadChar(' ')),
            ("a:b", RefNameError::BadChar(':')),
            ("ü", RefNameError::BadChar('ü')),
            ("a\0", RefNameError::BadChar('\0')),
        ];
        for (bad, err) in cases {
            assert_eq!(bad.parse::<RefName>(), Err(err), "{bad:?}");
        }
        assert_eq!(
            "a".repeat(256).parse::<RefName>(),
            Err(RefNameError::ComponentTooLong)
        );
        assert!(matches!(
            "a/".repeat(600).trim_end_matches('/').parse::<RefName>(),
            Err(RefNameError::TooLong(_))
        ));
    }

    #[test]
    fn prefixes() {
        let r: RefName = "proj/x".parse().expect("valid");
        assert!(r.is_under("proj"));
        assert!(r.is_under("proj/x"));
        assert!(!r.is_under("pro"));
        assert!(!r.is_under("proj/x/y"));
    }

    proptest! {
        #[test]
        fn valid_names_round_trip(s in "([a-zA-Z0-9_][-._a-zA-Z0-9]{0,8}/){0,3}[a-zA-Z0-9_][-._a-zA-Z0-9]{0,8}") {
            prop_assert_eq!(s.parse::<RefName>().map(|r| r.to_string()), Ok(s));
        }

        #[test]
        fn accepted_names_never_escape(s in "[-./a-z_\\\\ ]{0,12}") {
            if let Ok(r) = s.parse::<RefName>() {
                prop_assert!(!r.as_str().split('/').any(|c| c == ".." || c == "." || c.is_empty()));
            }
        }
    }
}
