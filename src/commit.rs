//! Committing a directory: scan it, hash every file on every core, store only
//! what the repository lacks, and write the dirmeta, dirtree and commit
//! objects exactly as `ostree commit` would.
//!
//! Hashing comes first and compression only for objects that are missing, so
//! re-committing an unchanged tree costs a read and a hash per file. Files are
//! streamed in fixed-size chunks; memory does not grow with file size.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::checksum::Checksum;
use crate::gvariant::{Value, VarDict};
use crate::object::{
    Commit, DirMeta, DirTree, FileHeader, FileName, ObjectName, ObjectType, SubdirEntry, Xattrs,
    content_checksum_prefix,
};
use crate::refname::RefName;
use crate::repo::{self, Expected, RefUpdate, Repo, Transaction};

/// Files up to this size are read once into memory and hashed and compressed
/// from there; larger files are streamed twice (hash, then compress if new).
const WHOLE_FILE_LIMIT: u64 = 1024 * 1024;
/// Read size when streaming a large file.
const CHUNK: usize = 256 * 1024;

/// Which commit becomes the new commit's parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Parent {
    /// The ref's current commit, if the ref exists.
    #[default]
    Auto,
    /// No parent.
    None,
    /// This commit.
    Commit(Checksum),
}

/// What to commit and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The ref to move to the new commit (and to bind it to).
    pub ref_name: Option<RefName>,
    /// Subject line.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Seconds since the epoch; `None` uses `SOURCE_DATE_EPOCH` or the clock.
    pub timestamp: Option<u64>,
    /// The parent.
    pub parent: Parent,
    /// `--add-metadata-string` pairs, in order (duplicates kept, as ostree does).
    pub metadata: Vec<(String, String)>,
    /// Owner to record instead of each file's.
    pub owner_uid: Option<u32>,
    /// Group to record instead of each file's.
    pub owner_gid: Option<u32>,
    /// Leave extended attributes out.
    pub no_xattrs: bool,
    /// Record `ostree.ref-binding` (ostree's default when a ref is given).
    pub bind: bool,
}

/// Errors of committing a directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the repository.
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// Reading the source tree failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file type ostree cannot store.
    #[error(
        "{path} is a {kind}; an ostree commit can hold only regular files, symlinks and directories; remove it or move it out of the tree"
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A name ostree cannot store (not UTF-8, for instance).
    #[error("{path}: {reason}; rename it")]
    BadName {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The source is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// A bad option value.
    #[error("{0}")]
    Invalid(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a commit did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The new commit.
    pub commit: Checksum,
    /// Its parent.
    pub parent: Option<Checksum>,
    /// The ref moved, if any.
    #[serde(rename = "ref")]
    pub ref_name: Option<RefName>,
    /// Regular files and symlinks in the tree.
    pub files: u64,
    /// Directories in the tree.
    pub dirs: u64,
    /// Bytes of file content in the tree.
    pub content_bytes: u64,
    /// Content objects the repository did not have.
    pub new_content_objects: u64,
}

/// One regular file or symlink found by the scan. Its path is its
/// directory's joined with its name ([`Scan::path`]): a push of a million
/// files keeps a million entries.
#[derive(Debug)]
pub(crate) struct FileEntry {
    /// Its directory, an index into [`Scan::dirs`].
    pub(crate) dir: usize,
    pub(crate) name: FileName,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) symlink_target: Option<String>,
    /// Its status change time (ctime) at the scan, in nanoseconds. A push
    /// compares it once more after compressing instead of hashing the
    /// content a second time: a write or chmod usually moves it (what it
    /// misses, depot-receive refuses).
    pub(crate) changed_at: i64,
}

/// One directory found by the scan; children refer to indices.
#[derive(Debug)]
pub(crate) struct DirNode {
    pub(crate) path: PathBuf,
    pub(crate) meta: DirMeta,
    /// Indices into [`Scan::files`].
    pub(crate) files: Vec<usize>,
    pub(crate) dirs: Vec<(FileName, usize)>,
}

/// A scanned tree: directories in pre-order (the root first, every child after
/// its parent) and files.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) dirs: Vec<DirNode>,
    pub(crate) files: Vec<FileEntry>,
    /// The clock when the scan began, in nanoseconds since the epoch.
    pub(crate) started_at: i64,
}

impl Scan {
    /// Where a file of the scan is.
    pub(crate) fn path(&self, file: &FileEntry) -> PathBuf {
        self.dirs[file.dir].path.join(file.name.as_str())
    }
}

fn kind_name(ft: fs::FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "named pipe (fifo)"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "file of an unknown type"
    }
}

/// The extended attributes at `path` (a symlink's own).
fn read_xattrs(path: &Path) -> Result<Xattrs, Error> {
    collect_xattrs(xattr::list(path), |name| xattr::get(path, name), path)
}

/// The extended attributes of an open file: no second path lookup.
fn read_xattrs_of(file: &File, path: &Path) -> Result<Xattrs, Error> {
    use xattr::FileExt;
    collect_xattrs(file.list_xattr(), |name| file.get_xattr(name), path)
}

fn collect_xattrs(
    names: std::io::Result<xattr::XAttrs>,
    get: impl Fn(&std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>>,
    path: &Path,
) -> Result<Xattrs, Error> {
    let names = match names {
        Ok(names) => names,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) => return Ok(Xattrs::default()),
        Err(e) => return Err(io_err("list extended attributes of", path)(e)),
    };
    let mut pairs = Vec::new();
    for name in names {
        let value = get(&name).map_err(io_err("read extended attributes of", path))?;
        pairs.push((name.into_encoded_bytes(), value.unwrap_or_default()));
    }
    Ok(Xattrs::from_pairs(pairs))
}

/// Walks `root` without following symlinks and records what to commit.
pub(crate) fn scan(root: &Path, opts: &Options) -> Result<Scan, Error> {
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let md = fs::symlink_metadata(root).map_err(io_err("read", root))?;
    if !md.is_dir() {
        return Err(Error::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mut dirs: Vec<DirNode> = Vec::new();
    let mut files: Vec<FileEntry> = Vec::new();
    let mut stack: Vec<usize> = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::Io {
                op: "read",
                path,
                source: e.into(),
            }
        })?;
        let depth = entry.depth();
        stack.truncate(depth);
        let path = entry.path();
        let md = entry.metadata().map_err(|e| Error::Io {
            op: "stat",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let name = if depth == 0 {
            None
        } else {
            let raw = entry.file_name();
            let s = raw.to_str().ok_or_else(|| Error::BadName {
                path: path.to_path_buf(),
                reason: "the name is not valid UTF-8, which ostree requires".into(),
            })?;
            Some(FileName::new(s).map_err(|reason| Error::BadName {
                path: path.to_path_buf(),
                reason,
            })?)
        };
        let uid = opts.owner_uid.unwrap_or(md.uid());
        let gid = opts.owner_gid.unwrap_or(md.gid());
        let ft = md.file_type();
        if ft.is_dir() {
            let xattrs = if opts.no_xattrs {
                Xattrs::default()
            } else {
                read_xattrs(path)?
            };
            let idx = dirs.len();
            dirs.push(DirNode {
                path: path.to_path_buf(),
                meta: DirMeta {
                    uid,
                    gid,
                    mode: md.mode(),
                    xattrs,
                },
                files: Vec::new(),
                dirs: Vec::new(),
            });
            if let (Some(name), Some(&parent)) = (name, stack.last()) {
                dirs[parent].dirs.push((name, idx));
            }
            stack.push(idx);
        } else if ft.is_file() || ft.is_symlink() {
            let symlink_target = if ft.is_symlink() {
                let t = fs::read_link(path).map_err(io_err("read symlink", path))?;
                Some(
                    t.into_os_string()
                        .into_string()
                        .map_err(|_| Error::BadName {
                            path: path.to_path_buf(),
                            reason: "the symlink target is not valid UTF-8, which ostree requires"
                                .into(),
                        })?,
                )
            } else {
                None
            };
            let (Some(name), Some(&parent)) = (name, stack.last()) else {
                return Err(Error::NotADirectory {
                    path: path.to_path_buf(),
                });
            };
            dirs[parent].files.push(files.len());
            files.push(FileEntry {
                dir: parent,
                name,
                mode: md.mode(),
                uid,
                gid,
                size: if ft.is_symlink() { 0 } else { md.len() },
                symlink_target,
                changed_at: ctime_ns(&md),
            });
        } else {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                kind: kind_name(ft),
            });
        }
    }
    Ok(Scan {
        dirs,
        files,
        started_at,
    })
}

/// A file's status change time in nanoseconds (wrapping in 2262).
pub(crate) fn ctime_ns(md: &fs::Metadata) -> i64 {
    md.ctime()
        .wrapping_mul(1_000_000_000)
        .wrapping_add(md.ctime_nsec())
}

impl FileEntry {
    /// Its content object's header; `path` is where it is.
    pub(crate) fn header(&self, path: &Path, no_xattrs: bool) -> Result<FileHeader, Error> {
        let xattrs = if no_xattrs {
            Xattrs::default()
        } else {
            read_xattrs(path)?
        };
        Ok(self.header_with(xattrs))
    }

    /// Opens it (a regular file; a symlink has nothing to open) and builds
    /// its content object's header, reading the extended attributes (when
    /// `with_xattrs`) through the open file: from the inode that is read.
    pub(crate) fn open(
        &self,
        path: &Path,
        with_xattrs: bool,
    ) -> Result<(Option<File>, FileHeader), Error> {
        if self.symlink_target.is_some() {
            return Ok((None, self.header(path, !with_xattrs)?));
        }
        let file = File::open(path).map_err(io_err("open", path))?;
        let xattrs = if with_xattrs {
            read_xattrs_of(&file, path)?
        } else {
            Xattrs::default()
        };
        Ok((Some(file), self.header_with(xattrs)))
    }

    /// Its content object's header, with these extended attributes.
    pub(crate) fn header_with(&self, xattrs: Xattrs) -> FileHeader {
        FileHeader {
            uid: self.uid,
            gid: self.gid,
            mode: self.mode,
            symlink_target: self.symlink_target.clone().unwrap_or_default(),
            xattrs,
        }
    }
}

/// Hashes a file's content stream; reads at most `size` bytes plus one to
/// notice growth.
fn hash_stream(
    prefix: &[u8],
    reader: &mut impl Read,
    size: u64,
    path: &Path,
    buf: &mut [u8],
) -> Result<Checksum, Error> {
    let mut hasher = Sha256::new();
    hasher.update(prefix);
    let mut total = 0u64;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        total += n as u64;
        if total > size {
            return Err(repo::Error::ChangedWhileReading {
                path: path.to_path_buf(),
            }
            .into());
        }
        hasher.update(&buf[..n]);
    }
    if total != size {
        return Err(repo::Error::ChangedWhileReading {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(Checksum::from_hasher(hasher))
}

/// What hashing a file left behind.
pub(crate) struct Hashed {
    pub(crate) checksum: Checksum,
    pub(crate) header: FileHeader,
    /// The whole payload is in the caller's buffer (small files).
    pub(crate) in_buffer: bool,
}

/// Hashes one file's content object; `path` is where it is. A small file is
/// read whole into `buf` (and stays there for the caller); a large one is
/// streamed.
pub(crate) fn hash_entry(
    entry: &FileEntry,
    path: &Path,
    no_xattrs: bool,
    buf: &mut Vec<u8>,
) -> Result<Hashed, Error> {
    let (file, header) = entry.open(path, !no_xattrs)?;
    let prefix = content_checksum_prefix(&header);
    let Some(mut file) = file else {
        // A symlink: its header is its content.
        buf.clear();
        return Ok(Hashed {
            checksum: Checksum::from_hasher(Sha256::new_with_prefix(&prefix)),
            header,
            in_buffer: true,
        });
    };
    if entry.size <= WHOLE_FILE_LIMIT {
        buf.clear();
        (&mut file)
            .take(entry.size + 1)
            .read_to_end(buf)
            .map_err(io_err("read", path))?;
        if buf.len() as u64 != entry.size {
            return Err(repo::Error::ChangedWhileReading {
                path: path.to_path_buf(),
            }
            .into());
        }
        let mut hasher = Sha256::new_with_prefix(&prefix);
        hasher.update(&buf[..]);
        return Ok(Hashed {
            checksum: Checksum::from_hasher(hasher),
            header,
            in_buffer: true,
        });
    }
    buf.resize(CHUNK, 0);
    let checksum = hash_stream(&prefix, &mut file, entry.size, path, buf)?;
    Ok(Hashed {
        checksum,
        header,
        in_buffer: false,
    })
}

/// Hashes one file and stores it if the repository lacks it. Returns the
/// checksum and whether it was newly stored.
fn store_file(
    tx: &Transaction,
    claimed: &Mutex<HashSet<Checksum>>,
    entry: &FileEntry,
    path: &Path,
    no_xattrs: bool,
    buf: &mut Vec<u8>,
) -> Result<(Checksum, bool), Error> {
    let Hashed {
        checksum,
        header,
        in_buffer,
    } = hash_entry(entry, path, no_xattrs, buf)?;
    let new = !tx.has_object(&ObjectName::new(checksum, ObjectType::File))
        && claimed.lock().is_ok_and(|mut set| set.insert(checksum));
    if new {
        if in_buffer {
            tx.write_content(&checksum, &header, entry.size, &buf[..], path)?;
        } else {
            let file = File::open(path).map_err(io_err("open", path))?;
            tx.write_content(&checksum, &header, entry.size, file, path)?;
        }
    }
    Ok((checksum, new))
}

/// Seconds since the epoch for a new commit: `SOURCE_DATE_EPOCH` if set (as
/// ostree honours it), else the clock.
pub(crate) fn default_timestamp() -> Result<u64, Error> {
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "SOURCE_DATE_EPOCH={s:?} is not a number of seconds"
            ))
        });
    }
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// Builds the commit metadata as the ostree CLI does: the given pairs in
/// order, then `ostree.ref-binding` with the bound refs sorted.
pub(crate) fn commit_metadata(opts: &Options) -> VarDict<'static> {
    let mut metadata: VarDict<'static> = opts
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::string(v.clone())))
        .collect();
    if opts.bind
        && let Some(r) = &opts.ref_name
    {
        metadata.push((
            crate::object::REF_BINDING_KEY.to_string(),
            Value::str_array([r.to_string()]),
        ));
    }
    metadata
}

/// Builds the dirmeta and dirtree objects bottom-up, handing each to `put`
/// (which stores or keeps it); returns the root's (dirtree, dirmeta).
pub(crate) fn build_trees(
    scan: &Scan,
    file_sums: &[Checksum],
    put: &mut dyn FnMut(ObjectType, Vec<u8>) -> Result<Checksum, Error>,
) -> Result<(Checksum, Checksum), Error> {
    let mut done: Vec<Option<(Checksum, Checksum)>> = vec![None; scan.dirs.len()];
    // Pre-order means every child has a larger index than its parent.
    for (i, node) in scan.dirs.iter().enumerate().rev() {
        let files = node
            .files
            .iter()
            .map(|&f| (scan.files[f].name.clone(), file_sums[f]))
            .collect();
        let dirs = node
            .dirs
            .iter()
            .map(|(n, d)| {
                let (tree, meta) = done[*d].expect("children are written before their parent");
                SubdirEntry {
                    name: n.clone(),
                    tree,
                    meta,
                }
            })
            .collect();
        let tree = DirTree::new(files, dirs).map_err(|e| Error::Invalid(e.to_string()))?;
        let tree_sum = put(ObjectType::DirTree, tree.to_bytes())?;
        let meta_sum = put(ObjectType::DirMeta, node.meta.to_bytes())?;
        done[i] = Some((tree_sum, meta_sum));
    }
    Ok(done
        .first()
        .copied()
        .flatten()
        .expect("a scan has a root directory"))
}

/// Commits `dir` into `repo` and moves `opts.ref_name` to the new commit
/// (compare-and-swap against the value it had when the commit started).
pub fn commit_dir(repo: &Repo, dir: &Path, opts: &Options) -> Result<Outcome, Error> {
    let timestamp = match opts.timestamp {
        Some(t) => t,
        None => default_timestamp()?,
    };
    let old = match &opts.ref_name {
        Some(r) => repo.read_ref(r)?,
        None => None,
    };
    let parent = match opts.parent {
        Parent::Auto => old,
        Parent::None => None,
        Parent::Commit(c) => {
            repo.load_commit(&c)?;
            Some(c)
        }
    };
    let scan = scan(dir, opts)?;
    let tx = repo.begin()?;
    let claimed = Mutex::new(HashSet::new());
    let results: Vec<(Checksum, bool)> = scan
        .files
        .par_iter()
        .map_init(Vec::new, |buf, entry| {
            store_file(&tx, &claimed, entry, &scan.path(entry), opts.no_xattrs, buf)
        })
        .collect::<Result<_, _>>()?;
    let file_sums: Vec<Checksum> = results.iter().map(|(c, _)| *c).collect();
    let (root_tree, root_meta) = build_trees(&scan, &file_sums, &mut |kind, bytes| {
        Ok(tx.write_metadata(kind, &bytes)?)
    })?;
    let commit = Commit {
        metadata: commit_metadata(opts),
        parent,
        related: Vec::new(),
        subject: opts.subject.clone(),
        body: opts.body.clone(),
        timestamp,
        root_tree,
        root_meta,
    };
    let commit_sum = tx.write_metadata(ObjectType::Commit, &commit.to_bytes())?;
    let updates: Vec<RefUpdate> = opts
        .ref_name
        .iter()
        .map(|r| RefUpdate {
            name: r.clone(),
            expected: old.map_or(Expected::Absent, Expected::Is),
            new: Some(commit_sum),
        })
        .collect();
    tx.commit(&updates)?;
    Ok(Outcome {
        commit: commit_sum,
        parent,
        ref_name: opts.ref_name.clone(),
        files: scan.files.len() as u64,
        dirs: scan.dirs.len() as u64,
        content_bytes: scan.files.iter().map(|f| f.size).sum(),
        new_content_objects: results.iter().filter(|(_, new)| *new).count() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_order_matches_the_ostree_cli() {
        let opts = Options {
            ref_name: Some("main".parse().expect("valid")),
            metadata: vec![
                ("zz".into(), "1".into()),
                ("aa".into(), "2".into()),
                ("aa".into(), "3".into()),
            ],
            bind: true,
            ..Options::default()
        };
        let keys: Vec<String> = commit_metadata(&opts).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["zz", "aa", "aa", "ostree.ref-binding"]);
    }
}
