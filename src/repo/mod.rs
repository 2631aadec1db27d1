//! The archive repository on disk: layout, config, verified object reads,
//! refs, locks and write transactions.
//!
//! Every read verifies: a metadata object must hash to its name and parse
//! strictly; a content object is hashed while it streams and fails at the end
//! if its checksum or size is wrong. Every write goes through a
//! [`Transaction`], which makes a push or commit land whole or not at all.

mod config;
mod content;
mod incoming;
pub mod lock;
mod locked_dir;
mod transaction;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use config::{INITIAL_CONFIG, KeyFile};
pub use content::ContentReader;
pub use incoming::{IncomingObject, PayloadSink, Rejected, max_pushed_metadata};
pub use lock::{LockGuard, LockMode, Wait};
pub use locked_dir::{LockedDir, clean_abandoned, remove_tree};
pub use transaction::{Expected, RefUpdate, Transaction};

use rayon::prelude::*;

use crate::checksum::Checksum;
use crate::gvariant::VarDict;
use crate::object::{self, Commit, DirMeta, DirTree, MAX_METADATA_SIZE, ObjectName, ObjectType};
use crate::refname::RefName;

/// Directories `ostree init --mode=archive` creates (`repo_create_at_internal`).
const LAYOUT_DIRS: &[&str] = &[
    "objects",
    "tmp",
    "extensions",
    "state",
    "refs",
    "refs/heads",
    "refs/mirrors",
    "refs/remotes",
    "tmp/cache",
];

/// ostree's default `core.lock-timeout-secs`.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// ostree's default `[archive] zlib-level`.
const DEFAULT_ZLIB_LEVEL: u32 = 6;

/// Errors of the repository layer. Each names the path, object or ref involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The path is not an ostree repository, or its config is unreadable.
    #[error("{path} is not an ostree repository: {reason}; create one with `depot init {path}`")]
    NotARepo {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A repository of another mode (bare, bare-user...).
    #[error(
        "{path} is an ostree repository in mode {mode:?}; depot works only with archive repositories (mode=archive-z2)"
    )]
    NotArchive {
        /// The repository.
        path: PathBuf,
        /// The mode found.
        mode: String,
    },
    /// `init` on a directory holding something else.
    #[error("{path} exists and is not empty; pick a new or empty directory")]
    NotEmpty {
        /// The path.
        path: PathBuf,
    },
    /// A lock could not be taken.
    #[error(transparent)]
    Lock(#[from] lock::Error),
    /// An object that should be there is not.
    #[error("object {name} is missing from the repository")]
    MissingObject {
        /// The object.
        name: ObjectName,
    },
    /// An object whose bytes do not match its name or do not parse.
    #[error("object {name} is corrupt: {reason}")]
    CorruptObject {
        /// The object.
        name: ObjectName,
        /// What is wrong.
        reason: String,
    },
    /// No such ref.
    #[error("ref {name} does not exist; `depot ls` lists the refs")]
    RefNotFound {
        /// The ref.
        name: String,
    },
    /// A ref file whose content is not a checksum.
    #[error("ref file {path} is damaged: {reason}")]
    BadRefFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A compare-and-swap ref update found another value.
    #[error("ref {name} moved: expected {expected}, found {found}; fetch the new state and retry")]
    RefMoved {
        /// The ref.
        name: RefName,
        /// What the update expected.
        expected: String,
        /// What the ref holds.
        found: String,
    },
    /// A ref that cannot be written because its path collides with another
    /// ref's: a ref cannot also be a directory of refs.
    #[error("ref {name} cannot be written: {reason}")]
    RefPathConflict {
        /// The ref.
        name: RefName,
        /// Which ref it collides with, and how.
        reason: String,
    },
    /// A pushed object failed verification.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// A commit whose closure is not complete.
    #[error(
        "commit {commit} is incomplete: {missing} (and {more} more) are neither in the repository nor in this push"
    )]
    Incomplete {
        /// The commit.
        commit: Checksum,
        /// The first missing object, with the path that needs it.
        missing: String,
        /// How many more are missing.
        more: usize,
    },
    /// A commit whose tree no checkout could expand (too deep, too many
    /// entries).
    #[error("commit {commit} cannot be checked out: {reason}")]
    UncheckableTree {
        /// The commit.
        commit: Checksum,
        /// What is wrong with its tree.
        reason: String,
    },
    /// Content changed between hashing and storing it.
    #[error("{path} changed while it was being committed; commit again when it is stable")]
    ChangedWhileReading {
        /// The file.
        path: PathBuf,
    },
}

pub(crate) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An open archive repository.
#[derive(Debug, Clone)]
pub struct Repo {
    path: PathBuf,
    mode: String,
    zlib_level: u32,
    lock_timeout: Duration,
}

/// Initialization
impl Repo {
    /// Creates an archive repository at `path` exactly as `ostree init
    /// --mode=archive` does. An existing archive repository is opened as is.
    pub fn init(path: &Path) -> Result<Repo, Error> {
        if path.join("config").exists() {
            return Repo::open(path);
        }
        match crate::destination(path).map_err(io_err("read directory", path))? {
            crate::Destination::NotEmpty => {
                return Err(Error::NotEmpty {
                    path: path.to_path_buf(),
                });
            }
            crate::Destination::Empty => {}
            crate::Destination::Missing => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o775)
                    .create(path)
                    .map_err(io_err("create directory", path))?;
            }
        }
        for d in LAYOUT_DIRS {
            let p = path.join(d);
            fs::DirBuilder::new()
                .mode(0o775)
                .create(&p)
                .map_err(io_err("create directory", &p))?;
        }
        let config = path.join("config");
        write_file_atomic(&path.join("tmp"), &config, INITIAL_CONFIG.as_bytes(), 0o644)?;
        Repo::open(path)
    }

    /// Opens an archive repository; anything else is refused with the reason.
    pub fn open(path: &Path) -> Result<Repo, Error> {
        let config_path = path.join("config");
        let text = fs::read_to_string(&config_path).map_err(|e| Error::NotARepo {
            path: path.to_path_buf(),
            reason: format!("cannot read {}: {e}", config_path.display()),
        })?;
        let config = KeyFile::parse(&text).map_err(|reason| Error::NotARepo {
            path: path.to_path_buf(),
            reason: format!("{}: {reason}", config_path.display()),
        })?;
        if config.get("core", "repo_version") != Some("1") {
            return Err(Error::NotARepo {
                path: path.to_path_buf(),
                reason: "config has no core.repo_version=1".into(),
            });
        }
        let mode = config.get("core", "mode").unwrap_or("bare");
        if mode != "archive-z2" && mode != "archive" {
            return Err(Error::NotArchive {
                path: path.to_path_buf(),
                mode: mode.to_string(),
            });
        }
        let zlib_level = config
            .get("archive", "zlib-level")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|l| (1..=9).contains(l))
            .unwrap_or(DEFAULT_ZLIB_LEVEL);
        let lock_timeout = match config
            .get("core", "lock-timeout-secs")
            .and_then(|v| v.parse::<i64>().ok())
        {
            Some(s) if s >= 0 => Duration::from_secs(s as u64),
            // -1 means "block"; a day is as good as forever for a CLI.
            Some(_) => Duration::from_secs(86_400),
            None => DEFAULT_LOCK_TIMEOUT,
        };
        for d in ["objects", "refs/heads", "tmp"] {
            if !path.join(d).is_dir() {
                return Err(Error::NotARepo {
                    path: path.to_path_buf(),
                    reason: format!("{d}/ is missing"),
                });
            }
        }
        Ok(Repo {
            path: path.to_path_buf(),
            mode: mode.to_string(),
            zlib_level,
            lock_timeout,
        })
    }
}

/// Access
impl Repo {
    /// The repository's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `core.mode` as the config spells it (`archive-z2` or `archive`).
    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// The compression level for new `.filez` objects.
    pub fn zlib_level(&self) -> u32 {
        self.zlib_level
    }

    /// The absolute path of an object.
    pub fn object_path(&self, name: &ObjectName) -> PathBuf {
        self.path.join(name.relative_path())
    }

    /// Whether an object is present (not verified).
    pub fn has_object(&self, name: &ObjectName) -> bool {
        fs::symlink_metadata(self.object_path(name)).is_ok()
    }

    /// Takes the repository lock shared with ostree, waiting as configured.
    pub fn lock(&self, mode: LockMode) -> Result<LockGuard, Error> {
        Ok(lock::lock(
            &self.path.join(".lock"),
            mode,
            Wait::For(self.lock_timeout),
        )?)
    }

    /// Starts a write transaction (takes the shared lock).
    pub fn begin(&self) -> Result<Transaction, Error> {
        Transaction::begin(self, true)
    }

    /// Starts a write transaction that stages without the repository's
    /// lock, and takes it (shared) only for its checks and publishing
    /// ([`Transaction::hold_lock`], or at the latest when it commits): a
    /// receiver's client may take hours, or never finish, and must not
    /// keep a prune waiting meanwhile. Whatever such a transaction found
    /// published before it held the lock, its checks must look at again.
    pub fn begin_unlocked(&self) -> Result<Transaction, Error> {
        Transaction::begin(self, false)
    }

    /// Whether any commit is marked partial (`state/<commit>.commitpartial`,
    /// which ostree pull writes while it fetches a commit's objects).
    pub fn has_partial_commits(&self) -> Result<bool, Error> {
        let state = self.path.join("state");
        let entries = match fs::read_dir(&state) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("list", &state)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list", &state))?;
            if entry
                .file_name()
                .as_encoded_bytes()
                .ends_with(b".commitpartial")
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Reading objects
impl Repo {
    /// Reads a metadata object and checks that it hashes to its name.
    pub fn read_metadata(&self, name: &ObjectName) -> Result<Vec<u8>, Error> {
        let path = self.object_path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingObject { name: *name });
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut data = Vec::new();
        file.take(MAX_METADATA_SIZE + 1)
            .read_to_end(&mut data)
            .map_err(io_err("read", &path))?;
        if data.len() as u64 > MAX_METADATA_SIZE {
            return Err(Error::CorruptObject {
                name: *name,
                reason: "larger than the metadata size limit".into(),
            });
        }
        verify_named(name, &data)?;
        Ok(data)
    }

    fn parsed<T>(
        &self,
        checksum: &Checksum,
        kind: ObjectType,
        parse: impl FnOnce(&[u8]) -> Result<T, object::Error>,
    ) -> Result<T, Error> {
        let name = ObjectName::new(*checksum, kind);
        let data = self.read_metadata(&name)?;
        parse(&data).map_err(|e| Error::CorruptObject {
            name,
            reason: crate::error_chain(&e),
        })
    }

    /// Loads and verifies a commit.
    pub fn load_commit(&self, checksum: &Checksum) -> Result<Commit, Error> {
        self.parsed(checksum, ObjectType::Commit, Commit::parse)
    }

    /// Loads and verifies a dirtree.
    pub fn load_dirtree(&self, checksum: &Checksum) -> Result<DirTree, Error> {
        self.parsed(checksum, ObjectType::DirTree, DirTree::parse)
    }

    /// Loads and verifies a dirmeta.
    pub fn load_dirmeta(&self, checksum: &Checksum) -> Result<DirMeta, Error> {
        self.parsed(checksum, ObjectType::DirMeta, DirMeta::parse)
    }

    /// Loads a commit's detached metadata, if it has any.
    pub fn load_commitmeta(&self, commit: &Checksum) -> Result<Option<VarDict<'static>>, Error> {
        let name = ObjectName::new(*commit, ObjectType::CommitMeta);
        let data = match self.read_metadata(&name) {
            Ok(d) => d,
            Err(Error::MissingObject { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let v = object::decode_object("commitmeta", "a{sv}", &data).map_err(|e| {
            Error::CorruptObject {
                name,
                reason: crate::error_chain(&e),
            }
        })?;
        let dict = crate::gvariant::dict_from_value(v.into_owned()).ok_or_else(|| {
            Error::CorruptObject {
                name,
                reason: "not a{sv}".into(),
            }
        })?;
        Ok(Some(dict))
    }

    /// Opens a content object; its payload is verified as it is read.
    pub fn open_content(&self, checksum: &Checksum) -> Result<ContentReader, Error> {
        ContentReader::open(self, *checksum)
    }

    /// Reads a content object to its end: [`Error::CorruptObject`] when it
    /// is damaged (its reader's `InvalidData`), an I/O error otherwise.
    pub fn verify_content(&self, checksum: &Checksum) -> Result<(), Error> {
        let mut reader = self.open_content(checksum)?;
        reader
            .verify_to_end()
            .map_err(|e| reader.read_error(self, e))
    }
}

/// Refs
impl Repo {
    fn ref_path(&self, name: &RefName) -> PathBuf {
        self.path.join("refs/heads").join(name.as_str())
    }

    /// The commit a ref points at, or `None` if there is no such ref.
    pub fn read_ref(&self, name: &RefName) -> Result<Option<Checksum>, Error> {
        let path = self.ref_path(name);
        match fs::read_to_string(&path) {
            Ok(text) => parse_ref_file(&path, &text).map(Some),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Ok(None),
            Err(e) => Err(io_err("read ref", &path)(e)),
        }
    }

    /// Fails if `name` cannot be created beside the refs there are and the
    /// `others` being written with it: `a/b` cannot exist with `a` (a ref is
    /// a file, and would have to be a directory too), nor `a` with `a/b`.
    /// Checked before anything is written, so that a multi-ref update does
    /// not fail half-way.
    pub fn check_ref_path(&self, name: &RefName, others: &[&RefName]) -> Result<(), Error> {
        let conflict = |reason: String| Error::RefPathConflict {
            name: name.clone(),
            reason,
        };
        let is_under = |inner: &str, outer: &str| {
            inner.len() > outer.len()
                && inner.starts_with(outer)
                && inner.as_bytes()[outer.len()] == b'/'
        };
        for other in others {
            let (n, o) = (name.as_str(), other.as_str());
            if is_under(n, o) || is_under(o, n) {
                return Err(conflict(format!("ref {other} is written with it")));
            }
        }
        let heads = self.path.join("refs/heads");
        let mut prefix = String::new();
        for part in name.as_str().split('/') {
            if !prefix.is_empty() {
                let path = heads.join(&prefix);
                match fs::symlink_metadata(&path) {
                    Ok(m) if !m.is_dir() => {
                        return Err(conflict(format!("ref {prefix} exists")));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(io_err("look at", &path)(e)),
                }
                prefix.push('/');
            }
            prefix.push_str(part);
        }
        let path = heads.join(name.as_str());
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Err(conflict(format!(
                "refs exist under {name}/ (refs/heads/{name} is a directory)"
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("look at", &path)(e)),
        }
    }

    /// Every ref under `refs/heads`, sorted by name.
    pub fn list_refs(&self) -> Result<Vec<(RefName, Checksum)>, Error> {
        let heads = self.path.join("refs/heads");
        let mut out = Vec::new();
        for entry in walkdir::WalkDir::new(&heads).min_depth(1) {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&heads).to_path_buf();
                Error::Io {
                    op: "list refs in",
                    path,
                    source: e.into(),
                }
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(&heads).unwrap_or(entry.path());
            let Some(name) = rel.to_str().and_then(|s| s.parse::<RefName>().ok()) else {
                // Not a name depot could have written (an editor's backup file, say).
                tracing::warn!("skipping {}: not a valid ref name", entry.path().display());
                continue;
            };
            out.push((name, entry.into_path()));
        }
        // Thousands of tiny files: read them on every core, one read each.
        let mut refs = out
            .into_par_iter()
            .map(|(name, path)| read_ref_file(&path).map(|c| (name, c)))
            .collect::<Result<Vec<_>, _>>()?;
        refs.sort_by(|a, b| a.0.as_str().as_bytes().cmp(b.0.as_str().as_bytes()));
        Ok(refs)
    }

    /// Resolves a ref name or a full commit checksum, each `^` after it
    /// stepping to the parent (as ostree's `REF^`).
    pub fn resolve(&self, rev: &str) -> Result<Checksum, Error> {
        let base = rev.trim_end_matches('^');
        let mut c = if let Ok(c) = base.parse::<Checksum>() {
            c
        } else {
            let name: RefName = base.parse().map_err(|e| Error::RefNotFound {
                name: format!("{base:?} ({e})"),
            })?;
            self.read_ref(&name)?.ok_or_else(|| Error::RefNotFound {
                name: base.to_string(),
            })?
        };
        for _ in 0..rev.len() - base.len() {
            c = self
                .load_commit(&c)?
                .parent
                .ok_or_else(|| Error::RefNotFound {
                    name: format!("{rev} (commit {c} has no parent)"),
                })?;
        }
        Ok(c)
    }
}

/// Reads a ref file (64 hex digits and a newline) with a single read.
fn read_ref_file(path: &Path) -> Result<Checksum, Error> {
    let mut buf = [0u8; 128];
    let mut file = File::open(path).map_err(io_err("read ref", path))?;
    let mut len = 0;
    loop {
        let n = file
            .read(&mut buf[len..])
            .map_err(io_err("read ref", path))?;
        if n == 0 || len + n == buf.len() {
            len += n;
            break;
        }
        len += n;
        // A whole ref is 65 bytes; stop without the extra read for EOF.
        if buf[..len].ends_with(b"\n") && len >= 65 {
            break;
        }
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|_| Error::BadRefFile {
        path: path.to_path_buf(),
        reason: "not text".into(),
    })?;
    parse_ref_file(path, text)
}

fn parse_ref_file(path: &Path, text: &str) -> Result<Checksum, Error> {
    text.trim_end()
        .parse()
        .map_err(|e: crate::checksum::ParseError| Error::BadRefFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Checks that a metadata object's bytes hash to its name (detached
/// metadata is named by its commit, so it is exempt).
pub(crate) fn verify_named(name: &ObjectName, data: &[u8]) -> Result<(), Error> {
    let actual = Checksum::of(data);
    if name.kind != ObjectType::CommitMeta && actual != name.checksum {
        return Err(Error::CorruptObject {
            name: *name,
            reason: format!("its content hashes to {actual}"),
        });
    }
    Ok(())
}

/// Writes `data` to `target` atomically: a temp file in `tmp_dir`, fsync, rename.
pub(crate) fn write_file_atomic(
    tmp_dir: &Path,
    target: &Path,
    data: &[u8],
    mode: u32,
) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile_in(tmp_dir)?;
    let (mut file, tmp_path) = tmp;
    let result = (|| {
        file.write_all(data).map_err(io_err("write", &tmp_path))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp_path))?;
        file.sync_all().map_err(io_err("fsync", &tmp_path))?;
        fs::rename(&tmp_path, target).map_err(io_err("rename into place", target))?;
        if let Some(parent) = target.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync", parent))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result
}

/// Creates `path`, which must not exist, for writing (mode 0644 before the umask).
pub(crate) fn create_new_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
}

/// Creates a new, uniquely named file in `dir` (mode 0644 before the umask).
pub(crate) fn tempfile_in(dir: &Path) -> Result<(File, PathBuf), Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(".depot-tmp-{}-{n}-{nanos:x}", process_id()));
        match create_new_file(&path) {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create temporary file in", dir)(e)),
        }
    }
}

/// This process's id, asked of the kernel once.
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}
