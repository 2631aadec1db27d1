//! Reading commits out of a repository: history, single files, checkouts,
//! and the full consistency check (`fsck`).
//!
//! Everything read is verified on the way (see [`crate::repo`]), so a
//! checkout or `cat` of a corrupt object fails instead of producing wrong
//! bytes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::checksum::Checksum;
use crate::object::{
    self, Commit, DirMeta, FileHeader, ObjectName, ObjectType, ShapeError, TreeShape, Xattrs,
};
use crate::repo::{self, ContentReader, PayloadSink, Repo};

/// Errors of reading commits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the repository.
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// Writing the output failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A path not in the commit.
    #[error("{path} is not in commit {commit}")]
    NoSuchPath {
        /// The path asked for.
        path: String,
        /// The commit.
        commit: Checksum,
    },
    /// A path that is not a regular file.
    #[error("{path} in commit {commit} is {what}, not a regular file")]
    NotAFile {
        /// The path asked for.
        path: String,
        /// The commit.
        commit: Checksum,
        /// What it is instead.
        what: String,
    },
    /// A tree nested deeper than [`MAX_TREE_DEPTH`].
    #[error("{path} is nested deeper than {MAX_TREE_DEPTH} directories; refusing to go on")]
    TooDeep {
        /// Where the limit was reached.
        path: String,
    },
    /// A tree whose dirtrees repeat subtrees until it is too large to check
    /// out.
    #[error(
        "tree {tree} expands to more than {MAX_TREE_ENTRIES} files and directories, \
         the limit for one checkout (its dirtrees repeat subtrees); nothing was written"
    )]
    TooManyEntries {
        /// The root dirtree.
        tree: Checksum,
        /// Its entries, once expanded.
        entries: u64,
    },
    /// A tree whose paths, all held while it is checked out, are too long.
    #[error(
        "the paths of the files and directories of tree {tree} come to more than {} MiB \
         ({bytes} bytes), the limit for one checkout, which holds every path \
         in memory; nothing was written",
        MAX_TREE_PATH_BYTES >> 20
    )]
    PathsTooLong {
        /// The root dirtree.
        tree: Checksum,
        /// The bytes of its paths.
        bytes: u64,
    },
    /// Checkout into a directory that is not empty.
    #[error("{path} already exists and is not empty; check out into a new directory")]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
}

pub use crate::object::{MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_PATH_BYTES};

/// How large the tree `tree` is once checked out ([`object::tree_shape`]):
/// each distinct dirtree is read once, and a tree nested deeper than
/// [`MAX_TREE_DEPTH`] fails here, before a checkout creates anything.
pub fn expanded_size(repo: &Repo, tree: &Checksum) -> Result<TreeShape, Error> {
    let mut load = |t: &Checksum| repo.load_dirtree(t);
    object::tree_shape(tree, &mut load, &mut HashMap::new()).map_err(|e| match e {
        ShapeError::TooDeep { tree } => Error::TooDeep {
            path: format!("a path below dirtree {tree}"),
        },
        ShapeError::Load(e) => e.into(),
    })
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One commit in a history listing.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Its checksum.
    pub checksum: Checksum,
    /// The commit.
    pub commit: Commit,
}

/// The history from `start` back through parents, newest first. The second
/// value is true when it stops at a parent the repository does not have.
pub fn log(repo: &Repo, start: &Checksum) -> Result<(Vec<LogEntry>, bool), Error> {
    let mut out = Vec::new();
    let mut next = Some(*start);
    let mut seen = HashSet::new();
    while let Some(c) = next {
        if !seen.insert(c) {
            break;
        }
        let commit = match repo.load_commit(&c) {
            Ok(commit) => commit,
            Err(repo::Error::MissingObject { .. }) if !out.is_empty() => return Ok((out, true)),
            Err(e) => return Err(e.into()),
        };
        next = commit.parent;
        out.push(LogEntry {
            checksum: c,
            commit,
        });
    }
    Ok((out, false))
}

/// What a path inside a commit names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory: its dirtree and dirmeta.
    Dir {
        /// Its `.dirtree`.
        tree: Checksum,
        /// Its `.dirmeta`.
        meta: Checksum,
    },
    /// A regular file or symlink: its content object.
    File(Checksum),
}

/// Finds `path` (`/a/b`, or `a/b`) inside a commit by binary search through
/// the sorted dirtrees, loading only the trees on the way.
pub fn lookup(repo: &Repo, commit: &Checksum, path: &str) -> Result<Entry, Error> {
    let c = repo.load_commit(commit)?;
    let mut current = Entry::Dir {
        tree: c.root_tree,
        meta: c.root_meta,
    };
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for part in &parts {
        let Entry::Dir { tree, .. } = current else {
            return Err(Error::NoSuchPath {
                path: path.to_string(),
                commit: *commit,
            });
        };
        let t = repo.load_dirtree(&tree)?;
        current = if let Some(f) = t.file(part) {
            Entry::File(*f)
        } else if let Some(d) = t.dir(part) {
            Entry::Dir {
                tree: d.tree,
                meta: d.meta,
            }
        } else {
            return Err(Error::NoSuchPath {
                path: path.to_string(),
                commit: *commit,
            });
        };
    }
    Ok(current)
}

/// Writes the content of the regular file at `path` in `commit` to `out`
/// (named `out_name` in errors), verified: the object is checked when its
/// end is read, so `out` has had every byte by then (see [`Output`]).
/// Returns the number of bytes written.
pub fn cat(
    repo: &Repo,
    commit: &Checksum,
    path: &str,
    out: &mut impl Write,
    out_name: &Path,
) -> Result<u64, Error> {
    match lookup(repo, commit, path)? {
        Entry::Dir { .. } => Err(Error::NotAFile {
            path: path.into(),
            commit: *commit,
            what: "a directory".into(),
        }),
        Entry::File(c) => {
            let mut reader = repo.open_content(&c)?;
            if reader.header().is_symlink() {
                return Err(Error::NotAFile {
                    path: path.into(),
                    commit: *commit,
                    what: format!("a symlink to {:?}", reader.header().symlink_target),
                });
            }
            copy_content(repo, &mut reader, |data| {
                out.write_all(data).map_err(io_err("write", out_name))
            })
        }
    }
}

/// Passes a content object's payload from `reader` (of `repo`) to `write`,
/// a chunk at a time; fails with [`repo::Error::CorruptObject`] when the
/// object turns out damaged (the read that reaches its end verifies it).
/// Returns the bytes passed.
fn copy_content(
    repo: &Repo,
    reader: &mut ContentReader,
    mut write: impl FnMut(&[u8]) -> Result<(), Error>,
) -> Result<u64, Error> {
    let mut buf =
        vec![0u8; usize::try_from(reader.size()).map_or(COPY_CHUNK, |n| n.clamp(1, COPY_CHUNK))];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The reader's verdict on the object itself, or an I/O error.
            Err(e) => return Err(Error::Repo(reader.read_error(repo, e))),
        };
        write(&buf[..n])?;
        copied += n as u64;
    }
}

/// What a checkout did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckoutStats {
    /// Regular files written.
    pub files: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Directories made.
    pub dirs: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Extended attributes that could not be set (no permission, no support).
    pub xattrs_skipped: u64,
}

/// How much of the recorded metadata a checkout restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckoutOptions {
    /// Restore setuid and setgid bits and every extended attribute
    /// (`security.*`, `trusted.*` too). Off by default: a checkout of content
    /// someone else pushed, run as root, must not produce setuid-root files or
    /// file capabilities. Without it, like `ostree checkout --user-mode`, those
    /// bits are cleared and only `user.*` attributes are set.
    pub full_metadata: bool,
}

impl CheckoutOptions {
    fn mode(self, mode: u32) -> u32 {
        if self.full_metadata {
            mode & 0o7777
        } else {
            mode & 0o1777
        }
    }

    fn wants_xattr(self, name: &[u8]) -> bool {
        self.full_metadata || name.starts_with(b"user.")
    }
}

/// Checks out `commit` into `dest`, which must not exist or be empty. Files
/// are written in parallel; modes, symlinks and, where the file system and
/// permissions allow, xattrs are restored as [`CheckoutOptions`] says.
/// Ownership is not (as `ostree checkout --user-mode`).
pub fn checkout(
    repo: &Repo,
    commit: &Checksum,
    dest: &Path,
    opts: CheckoutOptions,
) -> Result<CheckoutStats, Error> {
    checkout_subpath(repo, commit, "/", dest, opts)
}

/// Like [`checkout`], for the directory at `subpath` in the commit.
pub fn checkout_subpath(
    repo: &Repo,
    commit: &Checksum,
    subpath: &str,
    dest: &Path,
    opts: CheckoutOptions,
) -> Result<CheckoutStats, Error> {
    let Entry::Dir { tree, meta } = lookup(repo, commit, subpath)? else {
        return Err(Error::NotAFile {
            path: subpath.into(),
            commit: *commit,
            what: "a file".into(),
        });
    };
    let checkout = Checkout::prepare(repo, tree, meta, dest, opts)?;
    checkout
        .files()
        .par_iter()
        .try_for_each(|(checksum, paths)| checkout.write_from_repo(repo, checksum, paths))?;
    checkout.finish()
}

/// A checkout in progress: its directories are made, its files are placed
/// one content object at a time (from a repository, or by whoever fetches
/// the objects), and [`Checkout::finish`] gives the directories their modes.
#[derive(Debug)]
pub struct Checkout {
    opts: CheckoutOptions,
    /// Pre-order, so that reversed, children come before parents.
    dirs: Vec<(PathBuf, DirMeta)>,
    /// The paths of every content object, in the order first met.
    files: Vec<(Checksum, Vec<PathBuf>)>,
    /// The root existed before: someone's directory, whose mode and xattrs
    /// are left as they are (as `ostree checkout --union` leaves them).
    keep_root: bool,
    stats: Counters,
}

impl Checkout {
    /// Makes the directories of the tree `tree`/`meta` under `dest` (which
    /// must not exist or be empty; they stay private until
    /// [`finish`](Checkout::finish)) and lists its files. Every dirtree and
    /// dirmeta must be in `repo`.
    pub fn prepare(
        repo: &Repo,
        tree: Checksum,
        meta: Checksum,
        dest: &Path,
        opts: CheckoutOptions,
    ) -> Result<Checkout, Error> {
        let size = expanded_size(repo, &tree)?;
        if size.entries > MAX_TREE_ENTRIES {
            return Err(Error::TooManyEntries {
                tree,
                entries: size.entries,
            });
        }
        let bytes = size.path_bytes_under(dest.as_os_str().len() as u64);
        if bytes > MAX_TREE_PATH_BYTES {
            return Err(Error::PathsTooLong { tree, bytes });
        }
        let keep_root = match crate::destination(dest).map_err(io_err("read", dest))? {
            crate::Destination::NotEmpty => {
                return Err(Error::DestinationExists {
                    path: dest.to_path_buf(),
                });
            }
            crate::Destination::Empty => true,
            crate::Destination::Missing => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dest)
                    .map_err(io_err("create directory", dest))?;
                false
            }
        };
        let mut dirs: Vec<(PathBuf, DirMeta)> = Vec::new();
        let mut files: Vec<(Checksum, Vec<PathBuf>)> = Vec::new();
        let mut index: HashMap<Checksum, usize> = HashMap::new();
        let mut stack = vec![(dest.to_path_buf(), tree, meta, 0usize)];
        while let Some((path, tree, meta, depth)) = stack.pop() {
            if depth > MAX_TREE_DEPTH {
                return Err(Error::TooDeep {
                    path: path
                        .strip_prefix(dest)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                });
            }
            let t = repo.load_dirtree(&tree)?;
            let m = repo.load_dirmeta(&meta)?;
            if path != dest {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io_err("create directory", &path))?;
            }
            for (name, c) in t.files() {
                let at = *index.entry(*c).or_insert_with(|| {
                    files.push((*c, Vec::new()));
                    files.len() - 1
                });
                files[at].1.push(child(&path, name.as_str()));
            }
            for d in t.dirs() {
                stack.push((child(&path, d.name.as_str()), d.tree, d.meta, depth + 1));
            }
            dirs.push((path, m));
        }
        Ok(Checkout {
            opts,
            dirs,
            files,
            keep_root,
            stats: Counters::default(),
        })
    }

    /// Has [`finish`](Checkout::finish) give the root the tree's mode and
    /// xattrs although it existed before [`prepare`](Checkout::prepare):
    /// for a directory the caller made for this checkout alone.
    pub fn made_root(&mut self) {
        self.keep_root = false;
    }

    /// Every content object and the paths it goes to.
    pub fn files(&self) -> &[(Checksum, Vec<PathBuf>)] {
        &self.files
    }

    /// Places the content object `checksum` at `paths`, read from `repo`.
    pub fn write_from_repo(
        &self,
        repo: &Repo,
        checksum: &Checksum,
        paths: &[PathBuf],
    ) -> Result<(), Error> {
        let mut reader = repo.open_content(checksum)?;
        let mut sink = self.sink(paths);
        sink.start(reader.header(), reader.size())?;
        copy_content(repo, &mut reader, |data| Ok(sink.write(data)?))?;
        sink.finish()
    }

    /// A sink that places one content object's payload at `paths`; call
    /// [`FileSink::finish`] once the object is verified.
    pub fn sink<'c>(&'c self, paths: &'c [PathBuf]) -> FileSink<'c> {
        FileSink {
            checkout: self,
            paths,
            header: None,
            out: None,
            done: false,
        }
    }

    /// Gives the directories their modes and xattrs, deepest first, so that
    /// a read-only directory is made read-only only after it is filled; the
    /// root only when the checkout made it.
    pub fn finish(self) -> Result<CheckoutStats, Error> {
        // The root comes first in `dirs`.
        let skip = usize::from(self.keep_root);
        for (path, meta) in self.dirs.iter().skip(skip).rev() {
            set_xattrs(path, &meta.xattrs, &self.stats, self.opts);
            fs::set_permissions(path, fs::Permissions::from_mode(self.opts.mode(meta.mode)))
                .map_err(io_err("chmod", path))?;
        }
        Ok(CheckoutStats {
            files: self.stats.files.into_inner(),
            symlinks: self.stats.symlinks.into_inner(),
            dirs: self.dirs.len() as u64,
            bytes: self.stats.bytes.into_inner(),
            xattrs_skipped: self.stats.xattrs_skipped.into_inner(),
        })
    }
}

/// `parent/name`, allocated once at its length: a checkout holds every
/// path, and `Path::join` may leave up to twice the room.
fn child(parent: &Path, name: &str) -> PathBuf {
    let mut path = PathBuf::with_capacity(parent.as_os_str().len() + 1 + name.len());
    path.push(parent);
    path.push(name);
    path
}

/// The most written to a checked-out file at once.
const COPY_CHUNK: usize = 256 * 1024;

/// Content from this size on is checked against the free space before it
/// is written.
const CHECK_SPACE_FROM: u64 = 64 * 1024 * 1024;

/// Places one content object in a [`Checkout`]: the payload goes to the
/// first path as it arrives, [`finish`](FileSink::finish) (once the object
/// is verified) gives it its mode and xattrs and copies it to the other
/// paths. Dropped unfinished, it removes what it wrote.
#[derive(Debug)]
pub struct FileSink<'c> {
    checkout: &'c Checkout,
    paths: &'c [PathBuf],
    header: Option<FileHeader>,
    out: Option<io::BufWriter<File>>,
    done: bool,
}

impl FileSink<'_> {
    fn first(&self) -> &Path {
        &self.paths[0]
    }

    /// Completes the placement of a verified object.
    pub fn finish(mut self) -> Result<(), Error> {
        let header = self.header.take().ok_or_else(|| Error::Io {
            op: "write",
            path: self.first().to_path_buf(),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "no content arrived"),
        })?;
        let (opts, stats) = (self.checkout.opts, &self.checkout.stats);
        if header.is_symlink() {
            for path in self.paths {
                std::os::unix::fs::symlink(&header.symlink_target, path)
                    .map_err(io_err("create symlink", path))?;
                set_xattrs(path, &header.xattrs, stats, opts);
                stats.symlinks.fetch_add(1, Ordering::Relaxed);
            }
            self.done = true;
            return Ok(());
        }
        let first = self.first().to_path_buf();
        let file = self
            .out
            .take()
            .ok_or_else(|| io_err("write", &first)(io::ErrorKind::NotFound.into()))?
            .into_inner()
            .map_err(|e| io_err("write", &first)(e.into_error()))?;
        let mode = fs::Permissions::from_mode(opts.mode(header.mode));
        let size = file.metadata().map_err(io_err("stat", &first))?.len();
        // Copies first, while the first file is still private and readable;
        // each into a new file (a symlink already there is not followed).
        for path in &self.paths[1..] {
            let mut from = File::open(&first).map_err(io_err("read", &first))?;
            let mut to = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err("create", path))?;
            io::copy(&mut from, &mut to).map_err(io_err("copy into", path))?;
        }
        for path in self.paths {
            set_xattrs(path, &header.xattrs, stats, opts);
            fs::set_permissions(path, mode.clone()).map_err(io_err("chmod", path))?;
            stats.files.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(size, Ordering::Relaxed);
        }
        self.done = true;
        Ok(())
    }
}

impl repo::PayloadSink for FileSink<'_> {
    fn start(&mut self, header: &FileHeader, size: u64) -> Result<(), repo::Error> {
        self.header = Some(header.clone());
        if header.is_symlink() {
            return Ok(());
        }
        let first = self.first();
        // Private until verified and given its mode.
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(first)
            .map_err(repo::io_err("create", first))?;
        // The size comes from the object's header, which a server wrote:
        // a file the disk cannot hold is refused before it fills the disk.
        let needed = size.saturating_mul(self.paths.len() as u64);
        if needed >= CHECK_SPACE_FROM {
            let stat = nix::sys::statvfs::fstatvfs(&file)
                .map_err(|e| repo::io_err("statvfs", first)(e.into()))?;
            let free = stat.blocks_available().saturating_mul(stat.fragment_size());
            if needed > free {
                let _ = fs::remove_file(first);
                return Err(repo::io_err("write", first)(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "{size} bytes to write{}, and its file system has {free} bytes free; \
                         make room or check out elsewhere",
                        match self.paths.len() {
                            1 => String::new(),
                            n => format!(" {n} times"),
                        }
                    ),
                )));
            }
        }
        let capacity = usize::try_from(size).map_or(COPY_CHUNK, |n| n.clamp(1, COPY_CHUNK));
        self.out = Some(io::BufWriter::with_capacity(capacity, file));
        Ok(())
    }

    fn write(&mut self, data: &[u8]) -> Result<(), repo::Error> {
        let first = &self.paths[0];
        if data.is_empty() {
            // Also for a symlink, whose object may hold an empty stream.
            return Ok(());
        }
        match self.out.as_mut() {
            Some(out) => out.write_all(data).map_err(repo::io_err("write", first)),
            None => Err(repo::io_err("write", first)(io::Error::new(
                io::ErrorKind::InvalidData,
                "content for a symlink",
            ))),
        }
    }
}

impl Drop for FileSink<'_> {
    fn drop(&mut self) {
        if !self.done && self.out.take().is_some() {
            let _ = fs::remove_file(&self.paths[0]);
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    files: AtomicU64,
    symlinks: AtomicU64,
    bytes: AtomicU64,
    xattrs_skipped: AtomicU64,
}

fn set_xattrs(path: &Path, xattrs: &Xattrs, stats: &Counters, opts: CheckoutOptions) {
    for (name, value) in xattrs.iter().filter(|(n, _)| opts.wants_xattr(n)) {
        let name = std::ffi::OsStr::new(std::str::from_utf8(name).unwrap_or_default());
        if let Err(e) = xattr::set(path, name, value) {
            tracing::debug!("not setting xattr {name:?} on {}: {e}", path.display());
            stats.xattrs_skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One problem `fsck` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object, ref or file concerned.
    pub subject: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

/// What `fsck` checked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Objects verified.
    pub objects: u64,
    /// Commits whose closure was walked.
    pub commits: u64,
    /// Refs checked.
    pub refs: u64,
    /// Everything wrong, one entry per problem.
    pub problems: Vec<Problem>,
}

/// Verifies every object (checksum, normal form, structure, sorting, content
/// size) and the closure of every complete commit and every ref.
pub fn fsck(repo: &Repo) -> Result<FsckReport, Error> {
    // Held shared, as pushes hold it: a prune cannot delete objects while
    // they are checked. Whoever may not write the lock file (a monitoring
    // account with read access) checks without it.
    let _lock = match repo.lock(repo::LockMode::Shared) {
        Ok(guard) => Some(guard),
        Err(repo::Error::Lock(repo::lock::Error::Io { source, .. }))
            if matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    // Refs before objects: a ref moves only once its commit's closure is
    // published, so a push landing during the check cannot make a ref name
    // a commit the listing below missed.
    let refs = repo.list_refs()?;
    let objects_dir = repo.path().join("objects");
    let mut names = Vec::new();
    let mut problems = Vec::new();
    for entry in walkdir::WalkDir::new(&objects_dir)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| Error::Io {
            op: "list",
            path: e.path().unwrap_or(&objects_dir).to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(repo.path())
            .unwrap_or(entry.path());
        let name = entry
            .path()
            .parent()
            .and_then(Path::file_name)
            .and_then(|d| d.to_str())
            .zip(entry.file_name().to_str())
            .and_then(|(d, f)| format!("{d}{f}").parse::<ObjectName>().ok());
        match name {
            Some(n) if Path::new(&n.relative_path()) == rel => names.push(n),
            _ => problems.push(Problem {
                subject: rel.display().to_string(),
                reason: "not an object name; remove the file".into(),
            }),
        }
    }
    let verified: Vec<Option<Problem>> = names
        .par_iter()
        .map(|name| {
            let result = if name.kind.is_metadata() {
                repo.read_metadata(name).and_then(|data| {
                    crate::object::validate_metadata(name.kind, &data).map_err(|e| {
                        repo::Error::CorruptObject {
                            name: *name,
                            reason: crate::error_chain(&e),
                        }
                    })
                })
            } else {
                repo.verify_content(&name.checksum)
            };
            result.err().map(|e| Problem {
                subject: name.relative_path(),
                reason: strip_name(&crate::error_chain(&e), name),
            })
        })
        .collect();
    problems.extend(verified.into_iter().flatten());
    let bad: HashSet<String> = problems.iter().map(|p| p.subject.clone()).collect();
    let name_set: HashSet<ObjectName> = names.iter().copied().collect();

    // Closure of every commit that is not marked partial, and of every ref.
    let mut report = FsckReport {
        objects: names.len() as u64,
        ..FsckReport::default()
    };
    let mut walked_trees = HashSet::new();
    let mut commits: Vec<Checksum> = names
        .iter()
        .filter(|n| n.kind == ObjectType::Commit)
        .map(|n| n.checksum)
        .filter(|c| {
            !repo
                .path()
                .join(format!("state/{c}.commitpartial"))
                .exists()
        })
        .collect();
    for (name, target) in refs {
        report.refs += 1;
        if !name_set.contains(&ObjectName::new(target, ObjectType::Commit)) {
            problems.push(Problem {
                subject: format!("ref {name}"),
                reason: format!("points at commit {target}, which is missing"),
            });
        } else if repo
            .path()
            .join(format!("state/{target}.commitpartial"))
            .exists()
        {
            problems.push(Problem {
                subject: format!("ref {name}"),
                reason: format!("points at commit {target}, which is only partly present"),
            });
        }
        commits.push(target);
    }
    commits.sort();
    commits.dedup();
    for c in commits {
        let name = ObjectName::new(c, ObjectType::Commit);
        if bad.contains(&name.relative_path()) {
            continue;
        }
        let Ok(commit) = repo.load_commit(&c) else {
            continue;
        };
        report.commits += 1;
        let mut missing = Vec::new();
        walk_closure(repo, &commit, &mut walked_trees, &mut missing);
        for (obj, path) in missing {
            if !bad.contains(&obj.relative_path()) {
                problems.push(Problem {
                    subject: format!("commit {c}"),
                    reason: format!("{} ({path}) is missing", obj.relative_path()),
                });
            }
        }
    }
    problems.sort_by(|a, b| a.subject.cmp(&b.subject).then(a.reason.cmp(&b.reason)));
    problems.dedup();
    report.problems = problems;
    Ok(report)
}

fn strip_name(msg: &str, name: &ObjectName) -> String {
    let prefix = format!("object {name} is corrupt: ");
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}

/// Collects the objects a commit needs that are absent, with the path that
/// needs them. Trees already walked (shared between commits) are skipped.
fn walk_closure(
    repo: &Repo,
    commit: &Commit,
    walked: &mut HashSet<Checksum>,
    missing: &mut Vec<(ObjectName, String)>,
) {
    let mut stack = vec![("/".to_string(), commit.root_tree, commit.root_meta)];
    while let Some((path, tree, meta)) = stack.pop() {
        let meta_name = ObjectName::new(meta, ObjectType::DirMeta);
        if !repo.has_object(&meta_name) {
            missing.push((meta_name, path.clone()));
        }
        if !walked.insert(tree) {
            continue;
        }
        let tree_name = ObjectName::new(tree, ObjectType::DirTree);
        let t = match repo.load_dirtree(&tree) {
            Ok(t) => t,
            Err(repo::Error::MissingObject { .. }) => {
                missing.push((tree_name, path));
                continue;
            }
            // Reported by the object pass.
            Err(_) => continue,
        };
        for (name, c) in t.files() {
            let obj = ObjectName::new(*c, ObjectType::File);
            if !repo.has_object(&obj) {
                missing.push((obj, format!("{path}{name}")));
            }
        }
        for d in t.dirs() {
            stack.push((format!("{path}{}/", d.name), d.tree, d.meta));
        }
    }
}

/// Where `-o OUT` output goes. `-` is standard output, which has whatever
/// was written when a failure is found. A file is written beside OUT under a
/// hidden temporary name and takes OUT's place only in [`Output::finish`],
/// so a failure leaves an existing OUT as it was and no partial file. The
/// new file keeps the permissions (not set-id bits) and group of an old OUT
/// this user owns (see `keep_mode`); other hard links to the old OUT keep
/// the old bytes.
/// What is not a regular file (`/dev/null`, a fifo, a symlink), and a file
/// in a directory that cannot be written, is written to in place. A path
/// through an entry another user made in a shared directory like `/tmp`
/// is refused (see `entry_of_another_user`).
pub struct Output {
    path: PathBuf,
    to: OutputTo,
}

enum OutputTo {
    Stdout(io::StdoutLock<'static>),
    InPlace(File),
    Replacing(tempfile::NamedTempFile),
}

impl Output {
    /// Opens `path` for output.
    pub fn create(path: &Path) -> Result<Output, Error> {
        if path == Path::new("-") {
            return Ok(Output {
                path: path.to_path_buf(),
                to: OutputTo::Stdout(io::stdout().lock()),
            });
        }
        // The way is decided once, from what the walk saw: looking again
        // would let a symlink planted meanwhile be followed.
        let to = match walk_to_output(path).map_err(io_err("look up", path))? {
            Walked::Through(entry) => {
                return Err(io_err("write to", path)(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "its path goes through {}, which another user made in a shared sticky \
                         directory and could swap for a link to anywhere (what \
                         fs.protected_symlinks guards against); write elsewhere",
                        entry.display()
                    ),
                )));
            }
            // A device, a fifo, or a symlink to anything: nobody else can
            // swap it, so it is opened, and followed, as it is.
            Walked::Special => {
                OutputTo::InPlace(File::create(path).map_err(io_err("create", path))?)
            }
            Walked::NewAt(target) => OutputTo::InPlace(
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_err("create", &target))?,
            ),
            Walked::RegularOrMissing(old) => {
                let dir = crate::parent_dir(path);
                let prefix = format!(
                    ".{}.depot-",
                    path.file_name().unwrap_or_default().to_string_lossy()
                );
                // A directory that cannot be written to may still hold a
                // writable OUT: then OUT is written in place, as before, but
                // not through a symlink, which it was not when looked at.
                match tempfile::Builder::new()
                    .prefix(&prefix)
                    .permissions(fs::Permissions::from_mode(0o666))
                    .tempfile_in(dir)
                {
                    Ok(temp) => {
                        if let Some(old) = old {
                            keep_mode(&old, temp.as_file())
                                .map_err(io_err("give the new file the mode of", path))?;
                        }
                        OutputTo::Replacing(temp)
                    }
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => OutputTo::InPlace(
                        fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .custom_flags(nix::libc::O_NOFOLLOW)
                            .open(path)
                            .map_err(io_err("create", path))?,
                    ),
                    Err(e) => return Err(io_err("create a temporary file in", dir)(e)),
                }
            }
        };
        Ok(Output {
            path: path.to_path_buf(),
            to,
        })
    }

    /// Where output goes, for messages.
    pub fn path(&self) -> &Path {
        if matches!(self.to, OutputTo::Stdout(_)) {
            Path::new("standard output")
        } else {
            &self.path
        }
    }

    /// Flushes, and puts a file in OUT's place.
    pub fn finish(mut self) -> Result<(), Error> {
        let name = self.path().to_path_buf();
        self.flush().map_err(io_err("write", &name))?;
        if let OutputTo::Replacing(temp) = self.to {
            temp.persist(&self.path)
                .map_err(|e| io_err("rename a temporary file to", &self.path)(e.error))?;
        }
        Ok(())
    }
}

/// What [`walk_to_output`] found.
enum Walked {
    /// The way goes through this entry, which another user could swap.
    Through(PathBuf),
    /// OUT is a regular file (with its metadata), or not there: written by
    /// a rename, which follows nothing, in a directory nobody else can swap.
    RegularOrMissing(Option<fs::Metadata>),
    /// OUT is something else (a device, a fifo, a symlink), which nobody
    /// else can swap: written in place.
    Special,
    /// OUT is a symlink to nothing: the file it names is created there,
    /// exclusively and without following anything, since another user may
    /// be able to put something at that name first.
    NewAt(PathBuf),
}

/// Walks the way to `path` from `/` (through the working directory for a
/// relative one), following symlinks as opening it would, and refuses any
/// entry that sits in a sticky, world-writable directory such as `/tmp` and
/// belongs to neither this user nor the directory's owner: that user can
/// rename it away and put a symlink to anywhere in its place at any moment.
/// The kernel refuses to follow such symlinks under `fs.protected_symlinks`,
/// which not every system sets; the check also relies on
/// `fs.protected_hardlinks`, without which another user can link someone
/// else's symlink into such a directory. OUT itself may be another user's
/// regular file, since a rename replaces it without following anything.
fn walk_to_output(path: &Path) -> io::Result<Walked> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    let push_reversed = |todo: &mut Vec<std::ffi::OsString>, p: &Path| {
        todo.extend(p.components().rev().map(|c| c.as_os_str().to_owned()));
    };
    push_reversed(&mut todo, &std::env::current_dir()?.join(path));
    // A directory reached without a symlink in its path.
    let mut dir = PathBuf::from("/");
    let mut links = 0;
    // Whether the last entry still to come is OUT's own name, not the
    // target of a symlink that OUT is.
    let mut own_name = true;
    while let Some(name) = todo.pop() {
        let last = todo.is_empty();
        match name.to_str() {
            Some("/") => dir = PathBuf::from("/"),
            Some(".") => {}
            Some("..") => {
                dir.pop();
            }
            _ => {
                let entry = dir.join(&name);
                let meta = match fs::symlink_metadata(&entry) {
                    Ok(meta) => meta,
                    // Created by the rename; or, for a symlink to nothing,
                    // created where it points, only if nothing got there first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && last => {
                        return Ok(if own_name {
                            Walked::RegularOrMissing(None)
                        } else {
                            Walked::NewAt(entry)
                        });
                    }
                    Err(e) => return Err(e),
                };
                let parent = fs::symlink_metadata(&dir)?;
                let shared = parent.mode() & 0o1002 == 0o1002;
                let others = meta.uid() != me && meta.uid() != parent.uid();
                let replaced = last && own_name && meta.file_type().is_file();
                if shared && others && !replaced {
                    return Ok(Walked::Through(entry));
                }
                if meta.file_type().is_symlink() {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                    }
                    own_name &= !last;
                    push_reversed(&mut todo, &fs::read_link(&entry)?);
                } else if last {
                    return Ok(if replaced {
                        Walked::RegularOrMissing(Some(meta))
                    } else {
                        Walked::Special
                    });
                } else {
                    dir = entry;
                }
            }
        }
    }
    // The path ends in `/`, `.` or `..`: a directory, which the open refuses.
    Ok(Walked::Special)
}

/// Gives `new`, which is to replace the regular file `old` (its metadata
/// as the walk saw it), the old file's permission bits, without set-id and
/// sticky bits (fetched bytes do not inherit a privilege), when the old file
/// is this user's and linked nowhere else. A file someone else owns, or a
/// hard link to one, says nothing about how this user's output should be
/// shared: `new` keeps the umask's mode. The group bits go with the old
/// file's group, which `new` is given where this user may; where not, only
/// the owner's bits are kept.
fn keep_mode(old: &fs::Metadata, new: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mine = new.metadata()?;
    if old.uid() != mine.uid() || old.nlink() != 1 {
        return Ok(());
    }
    let mut mode = old.mode() & 0o777;
    if old.gid() != mine.gid() && std::os::unix::fs::fchown(new, None, Some(old.gid())).is_err() {
        // The bits were for that group and the others apart from it.
        mode &= 0o700;
    }
    new.set_permissions(fs::Permissions::from_mode(mode))
}

impl Output {
    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.to {
            OutputTo::Stdout(w) => w,
            OutputTo::InPlace(w) => w,
            OutputTo::Replacing(w) => w,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer().flush()
    }
}
