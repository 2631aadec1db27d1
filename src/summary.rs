//! `depot-summary`: regenerates the repository's `summary` (ostree's index,
//! which `ostree pull` and `depot ls URL` read first) and a browsable
//! `index.json` / `index.html` beside it.
//!
//! It writes what `ostree summary -u` (2022.7) writes for the same refs: refs
//! from `refs/heads`, sorted bytewise, each with its commit's exact size
//! (little-endian, as ostree stores it), checksum, timestamp and version, and
//! the same top-level keys. Every file is replaced atomically (temp, fsync,
//! rename); a `summary.sig` is removed before a new summary appears.
//!
//! It is cheap when nothing changed: the refs' directories are fingerprinted
//! by their modification times (every ref update renames a file into its
//! directory), and if the fingerprint equals the last run's it stops there.
//! Facts about commits (size, timestamp, closure) never change, so they are
//! cached in depot's private state directory; a commit whose closure is not
//! complete is left out of every listing.
//!
//! Runs are serialised by `.depot-summary.lock`, and hold the shared
//! repository lock so that a pruner cannot delete objects under them.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::checksum::Checksum;
use crate::gvariant::{self, Type, Value};
use crate::object::{ObjectName, ObjectType, parse_filez_header};
use crate::refname::RefName;
use crate::repo::{self, LockMode, Repo, Wait, lock};

/// How long to wait for another `depot-summary` run.
const SUMMARY_LOCK_WAIT: Duration = Duration::from_secs(300);
/// Bump when the cache's meaning changes, so old caches are ignored.
const CACHE_VERSION: u32 = 1;

/// Errors of the summary updater.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the repository.
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// Another run holds the summary lock.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// A file could not be written or read.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Regenerate even if no ref changed.
    pub force: bool,
    /// depot's private state (the commit cache and the fingerprint).
    pub state_dir: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// Whether files were rewritten (false: nothing had changed).
    pub written: bool,
    /// Refs listed.
    pub refs: usize,
    /// Refs left out, with why.
    pub skipped: Vec<(String, String)>,
}

/// What depot keeps about a commit; commits never change, so neither does this.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CommitInfo {
    /// Exact size of the `.commit` object.
    size: u64,
    timestamp: u64,
    subject: String,
    version: Option<String>,
    /// Bytes of file content in the tree.
    content_size: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Cache {
    version: u32,
    commits: BTreeMap<String, CommitInfo>,
}

/// Regenerates `summary`, `index.json` and `index.html` if any ref changed.
pub fn update(repo: &Repo, opts: &Options) -> Result<Outcome, Error> {
    let _serial = lock::lock(
        &repo.path().join(".depot-summary.lock"),
        LockMode::Exclusive,
        Wait::For(SUMMARY_LOCK_WAIT),
    )?;
    let _shared = repo.lock(LockMode::Shared)?;
    let id = hex::encode(
        &Checksum::of(
            repo.path()
                .canonicalize()
                .unwrap_or_else(|_| repo.path().to_path_buf())
                .as_os_str()
                .as_encoded_bytes(),
        )
        .as_bytes()[..8],
    );
    let fingerprint_path = opts.state_dir.join(format!("summary-{id}.fingerprint"));
    let cache_path = opts.state_dir.join(format!("summary-{id}.cache.json"));
    if !opts.force
        && fs::read_to_string(&fingerprint_path).is_ok_and(|old| unchanged_since(repo, &old))
    {
        return Ok(Outcome {
            written: false,
            refs: 0,
            skipped: Vec::new(),
        });
    }
    // Taken before listing: a ref that moves meanwhile makes the next run's
    // fingerprint differ, so it is picked up then.
    let refs_print = refs_fingerprint(repo)?;
    let mut cache: Cache = fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|c: &Cache| c.version == CACHE_VERSION)
        .unwrap_or_default();
    cache.version = CACHE_VERSION;

    let mut listed: Vec<(RefName, Checksum, CommitInfo)> = Vec::new();
    let mut skipped = Vec::new();
    let mut memo = Memo::default();
    for (name, commit) in repo.list_refs()? {
        let key = commit.to_string();
        let info = match cache.commits.get(&key) {
            Some(info) => info.clone(),
            None => match inspect(repo, &commit, &mut memo) {
                Ok(info) => {
                    cache.commits.insert(key, info.clone());
                    info
                }
                Err(reason) => {
                    tracing::warn!("not listing ref {name}: {reason}");
                    skipped.push((name.to_string(), reason));
                    continue;
                }
            },
        };
        listed.push((name, commit, info));
    }
    let mode = repo.mode().to_string();
    let summary = summary_bytes(&listed, &mode, now_secs());
    let tmp = repo.path().join("tmp");
    // A signature never sits beside a summary it does not sign.
    match fs::remove_file(repo.path().join("summary.sig")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", &repo.path().join("summary.sig"))(e)),
    }
    repo::write_file_atomic(&tmp, &repo.path().join("summary"), &summary, 0o644)?;
    repo::write_file_atomic(
        &tmp,
        &repo.path().join("index.json"),
        &index_json(&listed),
        0o644,
    )?;
    repo::write_file_atomic(
        &tmp,
        &repo.path().join("index.html"),
        index_html(&listed).as_bytes(),
        0o644,
    )?;

    // Forget commits no ref points at any more (they may be pruned).
    let live: HashSet<String> = listed.iter().map(|(_, c, _)| c.to_string()).collect();
    cache.commits.retain(|k, _| live.contains(k));
    let cache_bytes = serde_json::to_vec(&cache)
        .map_err(|e| io_err("encode", &cache_path)(io::Error::other(e)))?;
    write_private(&opts.state_dir, &cache_path, &cache_bytes)?;
    let print = format!(
        "{} {}\n{}",
        FINGERPRINT_VERSION,
        files_fingerprint(repo),
        refs_print.serialise()
    );
    write_private(&opts.state_dir, &fingerprint_path, print.as_bytes())?;
    Ok(Outcome {
        written: true,
        refs: listed.len(),
        skipped,
    })
}

/// Bump when the fingerprint's layout changes.
const FINGERPRINT_VERSION: &str = "v2";

/// Every directory under `refs/heads` with its modification time. A ref
/// update renames a file into its directory, and making or removing a
/// directory changes its parent's time, so comparing these times tells
/// whether any ref changed without reading a single ref or listing a
/// directory.
struct RefsFingerprint(Vec<(PathBuf, i64, i64)>);

impl RefsFingerprint {
    fn serialise(&self) -> String {
        let mut out = String::new();
        for (p, s, ns) in &self.0 {
            let _ = writeln!(
                out,
                "{s} {ns} {}",
                hex::encode(p.as_os_str().as_encoded_bytes())
            );
        }
        out
    }
}

fn refs_fingerprint(repo: &Repo) -> Result<RefsFingerprint, Error> {
    let heads = repo.path().join("refs/heads");
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(&heads).sort_by_file_name() {
        let entry = entry.map_err(|e| Error::Io {
            op: "list",
            path: heads.clone(),
            source: e.into(),
        })?;
        if entry.file_type().is_dir() {
            let md = entry.metadata().map_err(|e| Error::Io {
                op: "stat",
                path: entry.path().to_path_buf(),
                source: e.into(),
            })?;
            dirs.push((entry.into_path(), md.mtime(), md.mtime_nsec()));
        }
    }
    Ok(RefsFingerprint(dirs))
}

/// Whether the saved fingerprint still holds: same published files, and
/// every recorded directory still has its recorded time.
fn unchanged_since(repo: &Repo, saved: &str) -> bool {
    let mut lines = saved.lines();
    let Some(head) = lines.next() else {
        return false;
    };
    if head != format!("{FINGERPRINT_VERSION} {}", files_fingerprint(repo)) {
        return false;
    }
    let mut any = false;
    for line in lines {
        let mut parts = line.split(' ');
        let (Some(s), Some(ns), Some(path), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(bytes) = hex::decode(path) else {
            return false;
        };
        let path =
            PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes));
        match fs::metadata(&path) {
            Ok(md) if md.mtime().to_string() == s && md.mtime_nsec().to_string() == ns => {
                any = true;
            }
            _ => return false,
        }
    }
    any
}

/// Writes a private state file: atomically, but without fsync (losing it
/// only costs a full regeneration next time).
fn write_private(dir: &Path, target: &Path, data: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    crate::create_private_dir(dir).map_err(io_err("create", dir))?;
    let tmp = target.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, target).map_err(io_err("rename", target))
}

/// The published files as they are (someone may have removed or replaced one).
fn files_fingerprint(repo: &Repo) -> String {
    let mut h = Sha256::new();
    for f in ["summary", "index.json", "index.html", "config"] {
        if let Ok(md) = fs::metadata(repo.path().join(f)) {
            h.update(f.as_bytes());
            h.update(md.ino().to_le_bytes());
            h.update(md.mtime().to_le_bytes());
            h.update(md.mtime_nsec().to_le_bytes());
            h.update(md.len().to_le_bytes());
        }
    }
    Checksum::from_hasher(h).to_hex()
}

/// Sizes already known in this run: subtrees and files shared between
/// commits are looked at once.
#[derive(Default)]
struct Memo {
    trees: std::collections::HashMap<Checksum, u64>,
    files: std::collections::HashMap<Checksum, u64>,
}

/// Reads a commit and checks its closure; the error says what is missing.
fn inspect(repo: &Repo, commit: &Checksum, memo: &mut Memo) -> Result<CommitInfo, String> {
    if repo
        .path()
        .join(format!("state/{commit}.commitpartial"))
        .exists()
    {
        return Err(format!("commit {commit} is only partly present"));
    }
    let name = ObjectName::new(*commit, ObjectType::Commit);
    let bytes = repo
        .read_metadata(&name)
        .map_err(|e| crate::error_chain(&e))?;
    let c = repo
        .load_commit(commit)
        .map_err(|e| crate::error_chain(&e))?;
    let content_size = tree_size(repo, &c.root_tree, &c.root_meta, memo, 0)?;
    Ok(CommitInfo {
        size: bytes.len() as u64,
        timestamp: c.timestamp,
        subject: c.subject.clone(),
        version: c.version().map(str::to_string),
        content_size,
    })
}

/// Checks that a tree is complete and returns its content size.
fn tree_size(
    repo: &Repo,
    tree: &Checksum,
    meta: &Checksum,
    memo: &mut Memo,
    depth: usize,
) -> Result<u64, String> {
    let meta_name = ObjectName::new(*meta, ObjectType::DirMeta);
    if !repo.has_object(&meta_name) {
        return Err(format!("object {meta_name} is missing"));
    }
    if let Some(size) = memo.trees.get(tree) {
        return Ok(*size);
    }
    if depth > crate::read::MAX_TREE_DEPTH {
        return Err(format!("tree {tree} nests too deep"));
    }
    let t = repo
        .load_dirtree(tree)
        .map_err(|e| crate::error_chain(&e))?;
    let mut total = 0u64;
    for (_, f) in t.files() {
        let size = match memo.files.get(f) {
            Some(s) => *s,
            None => {
                let obj = ObjectName::new(*f, ObjectType::File);
                let s = filez_size(repo, &obj).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => format!("object {obj} is missing"),
                    _ => format!("object {obj}: {e}"),
                })?;
                memo.files.insert(*f, s);
                s
            }
        };
        total = total.saturating_add(size);
    }
    for d in t.dirs() {
        total = total.saturating_add(tree_size(repo, &d.tree, &d.meta, memo, depth + 1)?);
    }
    memo.trees.insert(*tree, total);
    Ok(total)
}

/// The payload size a `.filez` header declares (without inflating it).
fn filez_size(repo: &Repo, name: &ObjectName) -> io::Result<u64> {
    use std::io::Read;
    let mut f = fs::File::open(repo.object_path(name))?;
    let mut prefix = [0u8; 8];
    f.read_exact(&mut prefix)?;
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if len > crate::object::MAX_FILEZ_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "oversized header",
        ));
    }
    let mut z = vec![0u8; len as usize];
    f.read_exact(&mut z)?;
    parse_filez_header(&z)
        .map(|(_, size)| size)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The summary GVariant, `(a(s(taya{sv}))a{sv})`, keys in the order ostree
/// 2022.7 writes them.
fn summary_bytes(refs: &[(RefName, Checksum, CommitInfo)], mode: &str, now: u64) -> Vec<u8> {
    let entry_ty = Type::parse("(s(taya{sv}))").expect("a valid type string");
    let dict_entry = |k: &str, v: Value<'static>| {
        Value::DictEntry(
            Box::new(Value::string(k.to_string())),
            Box::new(Value::variant(v)),
        )
    };
    let sv = Type::parse("{sv}").expect("a valid type string");
    let entries = refs
        .iter()
        .map(|(name, commit, info)| {
            let mut meta = Vec::new();
            if let Some(v) = &info.version {
                meta.push(dict_entry(
                    "ostree.commit.version",
                    Value::string(v.clone()),
                ));
            }
            meta.push(dict_entry(
                "ostree.commit.timestamp",
                Value::Uint64(info.timestamp.swap_bytes()),
            ));
            Value::Tuple(vec![
                Value::string(name.to_string()),
                Value::Tuple(vec![
                    // The commit size is the one integer ostree does not byteswap.
                    Value::Uint64(info.size),
                    Value::Bytes(commit.as_bytes().to_vec().into()),
                    Value::Array(sv.clone(), meta),
                ]),
            ])
        })
        .collect();
    let extra = vec![
        dict_entry("ostree.summary.mode", Value::string(mode.to_string())),
        dict_entry(
            "ostree.summary.last-modified",
            Value::Uint64(now.swap_bytes()),
        ),
        dict_entry("ostree.summary.tombstone-commits", Value::Bool(false)),
        dict_entry("ostree.summary.indexed-deltas", Value::Bool(true)),
    ];
    gvariant::to_bytes(&Value::Tuple(vec![
        Value::Array(entry_ty, entries),
        Value::Array(sv, extra),
    ]))
}

/// One ref in `index.json`. Serialised straight from borrowed fields (a
/// `serde_json::Value` per ref made this a fifth of an update's time at
/// 10,000 refs); the keys are in alphabetical order, as they always were.
#[derive(serde::Serialize)]
struct IndexRow<'a> {
    commit: &'a Checksum,
    commit_size: u64,
    #[serde(rename = "ref")]
    name: &'a RefName,
    size: u64,
    subject: &'a str,
    time: String,
    timestamp: u64,
    version: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Index<'a> {
    refs: Vec<IndexRow<'a>>,
}

fn index_json(refs: &[(RefName, Checksum, CommitInfo)]) -> Vec<u8> {
    let refs = refs
        .iter()
        .map(|(name, commit, info)| IndexRow {
            commit,
            commit_size: info.size,
            name,
            size: info.content_size,
            subject: &info.subject,
            time: crate::timefmt::format(info.timestamp),
            timestamp: info.timestamp,
            version: info.version.as_deref(),
        })
        .collect();
    let mut out = serde_json::to_vec_pretty(&Index { refs }).expect("the index serialises");
    out.push(b'\n');
    out
}

/// `s` escaped for HTML text and attribute values.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                _ => "&quot;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

fn index_html(refs: &[(RefName, Checksum, CommitInfo)]) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>depot repository</title>\n\
         <style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}code{font-size:90%}</style>\n\
         </head><body>\n<h1>Refs</h1>\n<p>Pull with <code>depot pull URL REF DIR</code> or <code>ostree pull</code>; \
         machine-readable: <a href=\"index.json\">index.json</a>.</p>\n\
         <table>\n<tr><th>ref</th><th>commit</th><th>time (UTC)</th><th>subject</th><th>version</th><th>size</th></tr>\n",
    );
    for (name, commit, info) in refs {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Escaped(name.as_str()),
            &commit.to_string()[..12],
            crate::timefmt::format(info.timestamp),
            Escaped(&info.subject),
            Escaped(info.version.as_deref().unwrap_or("")),
            info.content_size
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_layout() {
        let info = CommitInfo {
            size: 126,
            timestamp: 1_577_836_800,
            subject: "s".into(),
            version: None,
            content_size: 0,
        };
        let refs = vec![(
            "main".parse().expect("ref"),
            Checksum::from_array([0x55; 32]),
            info,
        )];
        let bytes = summary_bytes(&refs, "archive-z2", 0);
        // "main\0", padding to 8, then the commit size little-endian.
        assert_eq!(&bytes[..5], b"main\0");
        assert_eq!(&bytes[8..16], &126u64.to_le_bytes());
        let ty = Type::parse("(a(s(taya{sv}))a{sv})").expect("type");
        assert!(gvariant::from_normal_bytes(&ty, &bytes).is_ok());
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            Escaped("<a href=\"x\">&, and more").to_string(),
            "&lt;a href=&quot;x&quot;&gt;&amp;, and more"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
    }

    #[test]
    fn index_json_has_every_field_in_order() {
        let info = |subject: &str, version: Option<&str>| CommitInfo {
            size: 126,
            timestamp: 1_577_836_800,
            subject: subject.into(),
            version: version.map(String::from),
            content_size: 42,
        };
        let refs = vec![
            (
                "a/b".parse::<RefName>().expect("ref"),
                Checksum::of(b"one"),
                info("quote \" and <tag>", Some("1.0")),
            ),
            (
                "c".parse::<RefName>().expect("ref"),
                Checksum::of(b"two"),
                info("", None),
            ),
        ];
        // What a serde_json::Value per ref gives (keys sorted), written out.
        let rows: Vec<serde_json::Value> = refs
            .iter()
            .map(|(name, commit, info)| {
                serde_json::json!({
                    "ref": name.as_str(), "commit": commit.to_hex(),
                    "timestamp": info.timestamp, "time": "2020-01-01T00:00:00Z",
                    "subject": info.subject, "version": info.version,
                    "size": info.content_size, "commit_size": info.size,
                })
            })
            .collect();
        let mut expected =
            serde_json::to_vec_pretty(&serde_json::json!({ "refs": rows })).expect("json");
        expected.push(b'\n');
        assert_eq!(
            String::from_utf8(index_json(&refs)).expect("utf-8"),
            String::from_utf8(expected).expect("utf-8")
        );
    }
}
