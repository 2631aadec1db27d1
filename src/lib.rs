//! depot: an artifact repository for CI, stored as an OSTree archive repository.
//!
//! CI machines push directory trees over ssh; anyone pulls over https from a
//! static file server, with depot or with the real `ostree pull`. The on-disk
//! format is byte-compatible with OSTree (see `docs/design.md`).
//!
//! # Layout
//!
//! Dependencies point one way, from the pure modules at the bottom to the
//! programs at the top:
//!
//! - [`gvariant`]: a strict GVariant codec (pure).
//! - [`checksum`], [`refname`], [`object`]: checksums, ref names and the
//!   ostree object model (pure).
//! - [`repo`]: the archive repository on disk: config, objects, refs, locks,
//!   transactions.
//! - [`commit`]: turns a directory into objects and a commit.
//! - [`read`]: walks commits: `ls`, `log`, `cat`, `checkout`, `fsck`.
//! - [`cli`]: the `depot` command line, over the modules above.
#![deny(missing_docs)]

pub mod checksum;
pub mod cli;
pub mod commit;
pub mod gvariant;
pub mod logging;
pub mod object;
pub mod protocol;
pub mod pull;
pub mod push;
pub mod read;
pub mod receive;
pub mod refname;
pub mod repo;
pub mod summary;
pub mod timefmt;

/// Creates depot's private state directory (and missing parents) readable by
/// its owner only: it holds the audit log.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `text` cut to at most `max` bytes, at a character boundary, saying how
/// much was cut: for what a client or server sent that is written down
/// (the audit log), where its length is theirs to choose.
pub fn clipped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end).into()
}

/// `text` (a subject, a version, a ref binding: whatever a pusher or a
/// server wrote) with control characters, line separators and bidi
/// direction marks escaped, so that it cannot move the cursor, retitle the
/// terminal, reorder what is shown or add rows and columns to tab-separated
/// output. Joiners (U+200C, U+200D) stay: emoji and many scripts need them.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{061c}'
                    | '\u{200e}'
                    | '\u{200f}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}'
            )
    }
    if !text.chars().any(hidden) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Renders an error with its causes, `outer: inner: innermost`, for places
/// that keep an error as text (fsck reports, protocol error frames).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// What is at a path a command is to fill: nothing, an empty directory, or
/// something it must not touch (a non-empty directory, or anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Nothing is there.
    Missing,
    /// An empty directory.
    Empty,
    /// A directory with entries in it.
    NotEmpty,
}

/// The directory `path` is in: its parent, or `.` for a bare name.
pub(crate) fn parent_dir(path: &std::path::Path) -> &std::path::Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

/// Looks at `path` for [`Destination`].
pub(crate) fn destination(path: &std::path::Path) -> std::io::Result<Destination> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => Ok(if entries.next().is_some() {
            Destination::NotEmpty
        } else {
            Destination::Empty
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Destination::Missing),
        Err(e) => Err(e),
    }
}
