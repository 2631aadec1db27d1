//! Write transactions: stage objects, then publish them and move refs.
//!
//! Objects are written, unsynced, into a per-transaction staging directory
//! under `tmp/` (same file system as `objects/`). [`Transaction::commit`]
//! then makes them durable with one `syncfs`, moves them into `objects/` in
//! dependency order (content objects first, on every core, then dirmeta,
//! dirtree, commitmeta, commit), syncs again, and only then
//! compares-and-swaps the refs. A crash at any point
//! leaves complete objects or none, and refs that point only at complete
//! commits. A staging directory whose owner died is removed by the next
//! transaction: each holds a lock on its own `.lock` for its lifetime.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::checksum::Checksum;
use crate::object::{
    Commit, DirTree, FileHeader, FileName, MAX_TREE_ENTRIES, MAX_TREE_PATH_BYTES, ObjectMap,
    ObjectName, ObjectType, ShapeError, TreeShape, tree_shape, write_filez,
};
use crate::refname::RefName;

use super::incoming::IncomingObject;
use super::lock::{self, LockGuard, LockMode, Wait};
use super::locked_dir::{LockedDir, clean_abandoned};
use super::{Error, Repo, io_err, tempfile_in, write_file_atomic};

const STAGING_PREFIX: &str = "depot-staging-";

/// A file in staging that an object is being written to. Dropped before
/// [`Transaction::finish_staging_file`] accepts it (the object failed, or
/// its writer gave up), it removes itself.
#[derive(Debug)]
pub(super) struct StagingFile {
    file: File,
    pub(super) path: PathBuf,
    name: ObjectName,
    /// Whether `path` is the object's staged name already.
    named: bool,
    kept: bool,
    objects: Arc<Objects>,
}

/// Where an object of a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// Asked for from a pusher ([`Transaction::request_objects`]).
    Requested,
    /// Asked for, and its data has begun to arrive.
    Arriving,
    /// Staged, complete and verified.
    Staged,
    /// Staged, and a dirtree a closure check has queued: each is read once.
    /// Only a check that passes leaves the mark (its whole subtree is then
    /// present), so a later check in the same transaction may skip it.
    Walked,
}

impl Standing {
    fn is_staged(self) -> bool {
        matches!(self, Standing::Staged | Standing::Walked)
    }
}

/// The objects a transaction has asked for or staged.
type Objects = Mutex<ObjectMap<Standing>>;

fn lock_objects(objects: &Objects) -> std::sync::MutexGuard<'_, ObjectMap<Standing>> {
    // A thread that panicked holding it cannot have left it half-changed.
    objects
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Write for StagingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Under the object's name, another writer's complete copy may have
        // replaced this file. That happens only under this lock, and puts
        // the name in the map: then the file at the name is not this one.
        let objects = lock_objects(&self.objects);
        if !self.named || !objects.get(&self.name).is_some_and(Standing::is_staged) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A closure check's walk of the staged dirtrees, depth first: those left
/// to read, each with its depth and its name in its parent, and the names
/// from the root down to the one being read. A path is built only to
/// describe a missing object, so a chain of nested dirtrees costs time in
/// proportion to its length, not to the square of its depth, and what the
/// walk holds is the dirtrees still to read, not every one it has read
/// (which dirtrees were queued is marked in the transaction's record).
#[derive(Default)]
struct Walk {
    to_read: Vec<(usize, Option<FileName>, Checksum)>,
    path: Vec<FileName>,
    /// Whether published dirtrees are read too, instead of standing for
    /// their subtrees: an ostree pull writes a dirtree before its children
    /// (marking its commit partial until it is done), so while any commit
    /// is partial a published dirtree proves nothing.
    published_too: bool,
    /// The published dirtrees queued, each once.
    published_read: std::collections::HashSet<Checksum>,
}

impl Walk {
    /// The path of the directory being read, or of its subdirectory `name`,
    /// ending in `/`.
    fn path(&self, name: Option<&FileName>) -> String {
        let mut path = String::from("/");
        for n in self.path.iter().chain(name) {
            path.push_str(n.as_str());
            path.push('/');
        }
        path
    }
}

/// The first missing object a closure check found, described, and how many
/// more it found.
#[derive(Default)]
struct Missing {
    first: Option<String>,
    more: usize,
}

impl Missing {
    fn note(&mut self, describe: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(describe());
        } else {
            self.more += 1;
        }
    }
}

/// What a ref must hold for an update to apply (compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Whatever it holds.
    Any,
    /// The ref must not exist.
    Absent,
    /// The ref must point at this commit.
    Is(Checksum),
}

/// One ref change, applied only if the ref still holds what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The ref.
    pub name: RefName,
    /// Its expected current value.
    pub expected: Expected,
    /// The new value; `None` deletes the ref.
    pub new: Option<Checksum>,
}

/// A write transaction. Dropping it without [`commit`](Transaction::commit)
/// discards everything staged.
#[must_use = "nothing is published until commit() is called"]
#[derive(Debug)]
pub struct Transaction {
    repo: Repo,
    /// What is asked for and what is staged, kept in memory: staging is
    /// private to this transaction, so this is the truth, and asking it
    /// costs no system call (a push of 50,000 files asks about each object
    /// twice). One record per object, whatever its standing: a push of a
    /// million objects holds a million.
    objects: Arc<Objects>,
    /// The staging directory, removed when the transaction ends.
    staging_dir: LockedDir,
    /// Files created in staging get mode 0644 as asked (no umask or default
    /// ACL takes bits away), so finishing one needs no `fchmod`.
    creates_0644: bool,
    /// The repository's lock, shared: from the start, or (for a receiver,
    /// whose client may be slow) only from [`hold_lock`](Transaction::hold_lock)
    /// on, around its checks and publishing.
    repo_lock: Mutex<Option<LockGuard>>,
}

impl Transaction {
    pub(super) fn begin(repo: &Repo, locked: bool) -> Result<Self, Error> {
        let repo_lock = if locked {
            Some(repo.lock(LockMode::Shared)?)
        } else {
            None
        };
        let tmp = repo.path.join("tmp");
        clean_abandoned(&tmp, STAGING_PREFIX);
        let dir = LockedDir::create(&tmp, STAGING_PREFIX, 0o755)?;
        let creates_0644 = creates_mode_0644(dir.path())?;
        Ok(Transaction {
            repo: repo.clone(),
            objects: Arc::default(),
            staging_dir: dir,
            creates_0644,
            repo_lock: Mutex::new(repo_lock),
        })
    }

    /// Takes the repository's shared lock, unless held already. Whatever
    /// the checks that follow find in `objects/` then stays there (a prune
    /// needs the lock exclusively) until this transaction ends.
    pub fn hold_lock(&self) -> Result<(), Error> {
        let mut held = self
            .repo_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_none() {
            *held = Some(self.repo.lock(LockMode::Shared)?);
        }
        Ok(())
    }

    /// This transaction's staging directory.
    pub(super) fn staging(&self) -> &Path {
        self.staging_dir.path()
    }

    /// The repository.
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    fn staged_path(&self, name: &ObjectName) -> PathBuf {
        self.staging().join(name.to_string())
    }

    /// Whether the object is in the repository or already staged here.
    pub fn has_object(&self, name: &ObjectName) -> bool {
        self.staged(name) || self.repo.has_object(name)
    }

    /// Stages a metadata object unless it is present; returns its checksum.
    pub fn write_metadata(&self, kind: ObjectType, bytes: &[u8]) -> Result<Checksum, Error> {
        let checksum = Checksum::of(bytes);
        let name = ObjectName::new(checksum, kind);
        if self.has_object(&name) {
            return Ok(checksum);
        }
        self.stage_bytes(&name, bytes).map(|()| checksum)
    }

    fn stage_bytes(&self, name: &ObjectName, bytes: &[u8]) -> Result<(), Error> {
        let mut staging = self.create_staging_file(name)?;
        staging
            .write_all(bytes)
            .map_err(io_err("write", &staging.path))?;
        self.finish_staging_file(staging, name)
    }

    /// Stages a content object from its payload, compressing it at the
    /// repository's level. The payload is hashed again while it is
    /// compressed; if it does not match `expected` and `size` (the source
    /// changed since it was hashed), nothing is staged and
    /// [`Error::ChangedWhileReading`] names `source`.
    pub fn write_content(
        &self,
        expected: &Checksum,
        header: &FileHeader,
        size: u64,
        payload: impl Read,
        source: &Path,
    ) -> Result<(), Error> {
        let name = ObjectName::new(*expected, ObjectType::File);
        let mut staging = self.create_staging_file(&name)?;
        let out = BufWriter::with_capacity(64 * 1024, &mut staging);
        let (actual, total) = write_filez(header, size, payload, self.repo.zlib_level, out)
            .map_err(io_err("read and store", source))?;
        if total != size || actual != *expected {
            return Err(Error::ChangedWhileReading {
                path: source.to_path_buf(),
            });
        }
        self.finish_staging_file(staging, &name)
    }

    /// Starts receiving a pushed object whose stored form is `size` bytes.
    pub fn begin_object(
        &self,
        name: ObjectName,
        size: u64,
        max_size: u64,
    ) -> Result<IncomingObject<'_>, Error> {
        IncomingObject::begin(self, name, size, max_size, super::max_pushed_metadata)
    }

    pub(super) fn stage_verified_metadata(
        &self,
        name: &ObjectName,
        bytes: &[u8],
    ) -> Result<(), Error> {
        if name.kind == ObjectType::CommitMeta {
            // Named by its commit, not by its own hash.
            return self.stage_bytes(name, bytes);
        }
        self.write_metadata(name.kind, bytes).map(drop)
    }

    /// Creates the file an object is staged in: under the object's own name
    /// when that is free, so that publishing moves it once; else (the object
    /// is staged already, or is being written by another thread) under a
    /// temporary name that replaces the staged one once complete. Either way
    /// an incomplete file is never published: publishing happens only after
    /// every writer has finished, and a failed writer discards its file or
    /// the whole transaction.
    pub(super) fn create_staging_file(&self, name: &ObjectName) -> Result<StagingFile, Error> {
        let path = self.staged_path(name);
        match super::create_new_file(&path) {
            Ok(file) => Ok(StagingFile {
                file,
                path,
                name: *name,
                named: true,
                kept: false,
                objects: Arc::clone(&self.objects),
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let (file, path) = tempfile_in(self.staging())?;
                Ok(StagingFile {
                    file,
                    path,
                    name: *name,
                    named: false,
                    kept: false,
                    objects: Arc::clone(&self.objects),
                })
            }
            Err(e) => Err(io_err("create", &path)(e)),
        }
    }

    /// Completes a staging file whose content is verified: objects are
    /// 0644 whatever the umask, and a temporary name replaces the object's.
    pub(super) fn finish_staging_file(
        &self,
        mut staging: StagingFile,
        name: &ObjectName,
    ) -> Result<(), Error> {
        if !self.creates_0644 {
            staging
                .file
                .set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod", &staging.path))?;
        }
        let mut objects = lock_objects(&self.objects);
        if !staging.named
            && let Err(e) = fs::rename(&staging.path, self.staged_path(name))
        {
            // Dropping the staging file takes the lock.
            drop(objects);
            return Err(io_err("stage", &staging.path)(e));
        }
        staging.kept = true;
        objects.insert(*name, Standing::Staged);
        Ok(())
    }

    /// Reads a metadata object from this transaction's staging or from the
    /// repository, verified.
    pub fn read_metadata(&self, name: &ObjectName) -> Result<Vec<u8>, Error> {
        if self.staged(name) {
            self.read_staged_metadata(name)
        } else {
            self.repo.read_metadata(name)
        }
    }

    /// Reads a metadata object known to be staged here, verified.
    fn read_staged_metadata(&self, name: &ObjectName) -> Result<Vec<u8>, Error> {
        let path = self.staged_path(name);
        let data = fs::read(&path).map_err(io_err("read", &path))?;
        super::verify_named(name, &data)?;
        Ok(data)
    }

    /// Whether the object is staged here and complete.
    fn staged(&self, name: &ObjectName) -> bool {
        lock_objects(&self.objects)
            .get(name)
            .is_some_and(Standing::is_staged)
    }

    /// Records that a pusher is asked for these objects, keeping in `names`
    /// only those not asked for before (or staged) in this transaction. Each
    /// may then arrive once ([`take_requested`](Transaction::take_requested)).
    /// Returns how many objects the transaction now records.
    pub fn request_objects(&self, names: &mut Vec<ObjectName>) -> usize {
        let mut objects = lock_objects(&self.objects);
        names.retain(|name| objects.insert_if_absent(*name, Standing::Requested));
        objects.len()
    }

    /// The commits staged here.
    pub fn staged_commits(&self) -> Vec<Checksum> {
        lock_objects(&self.objects)
            .iter()
            .filter(|(name, standing)| name.kind == ObjectType::Commit && standing.is_staged())
            .map(|(name, _)| name.checksum)
            .collect()
    }

    /// A staged dirtree that no passing closure check has reached: once the
    /// closures of every staged commit are checked, one that is in no
    /// commit's tree. Published, it would vouch for a subtree nobody checked.
    pub fn unreached_dirtree(&self) -> Option<ObjectName> {
        lock_objects(&self.objects)
            .iter()
            .find(|(name, standing)| {
                name.kind == ObjectType::DirTree && **standing == Standing::Staged
            })
            .map(|(name, _)| *name)
    }

    /// A staged detached metadata object whose commit is not staged here:
    /// one that would be attached to a commit this push did not bring.
    pub fn commitmeta_without_commit(&self) -> Option<ObjectName> {
        let objects = lock_objects(&self.objects);
        objects
            .iter()
            .find(|(name, standing)| {
                name.kind == ObjectType::CommitMeta
                    && standing.is_staged()
                    && !objects
                        .get(&ObjectName::new(name.checksum, ObjectType::Commit))
                        .is_some_and(Standing::is_staged)
            })
            .map(|(name, _)| *name)
    }

    /// Whether this transaction has asked for, is receiving or has staged
    /// the object.
    pub fn in_this_push(&self, name: &ObjectName) -> bool {
        lock_objects(&self.objects).get(name).is_some()
    }

    /// Whether an arriving object was asked for and has not arrived before;
    /// true only once per object.
    pub fn take_requested(&self, name: &ObjectName) -> bool {
        let mut objects = lock_objects(&self.objects);
        match objects.get_mut(name) {
            Some(standing @ Standing::Requested) => {
                *standing = Standing::Arriving;
                true
            }
            _ => false,
        }
    }

    /// Loads a commit from staging or the repository.
    pub fn load_commit(&self, checksum: &Checksum) -> Result<Commit, Error> {
        let name = ObjectName::new(*checksum, ObjectType::Commit);
        let data = self.read_metadata(&name)?;
        Commit::parse(&data).map_err(|e| Error::CorruptObject {
            name,
            reason: crate::error_chain(&e),
        })
    }

    /// Loads a dirtree from staging or the repository.
    fn load_dirtree(&self, checksum: &Checksum) -> Result<DirTree, Error> {
        let name = ObjectName::new(*checksum, ObjectType::DirTree);
        let data = self.read_metadata(&name)?;
        DirTree::parse(&data).map_err(|e| Error::CorruptObject {
            name,
            reason: crate::error_chain(&e),
        })
    }

    /// Checks that everything `commit` references is in the repository or
    /// staged here. A dirtree already published in the repository vouches
    /// for its whole subtree: depot and ostree publish children before
    /// parents, and `fsck` checks that this holds. What it keeps is the
    /// staged dirtrees still to read and the names down to the one being
    /// read, whatever the pushed dirtrees name: only the first missing object
    /// is described, the rest counted. Checks of one transaction run one at
    /// a time (a receiver checks its refs in turn): a check marks the staged
    /// dirtrees it reads, and a later one skips those a passing check marked.
    pub fn check_closure(&self, commit: &Checksum) -> Result<(), Error> {
        let checked = self.walk_closure(commit);
        if checked.is_err() {
            // A walked dirtree's subtree may be incomplete, or unread.
            for standing in lock_objects(&self.objects).values_mut() {
                if *standing == Standing::Walked {
                    *standing = Standing::Staged;
                }
            }
        }
        checked
    }

    /// [`check_closure`](Transaction::check_closure)'s walk: one at a time
    /// in a transaction, since it marks what it queues.
    fn walk_closure(&self, commit: &Checksum) -> Result<(), Error> {
        let c = self.load_commit(commit)?;
        let mut missing = Missing::default();
        let mut walk = Walk {
            published_too: self.repo.has_partial_commits()?,
            ..Walk::default()
        };
        self.check_dir(&mut walk, &mut missing, 0, None, c.root_tree, c.root_meta);
        while let Some((depth, name, tree)) = walk.to_read.pop() {
            // Depth first: the names kept above this one are its parent's.
            walk.path.truncate(depth.saturating_sub(1));
            walk.path.extend(name);
            let t = self.load_dirtree(&tree)?;
            for (file, sum) in t.files() {
                let obj = ObjectName::new(*sum, ObjectType::File);
                if !self.has_object(&obj) {
                    missing.note(|| format!("{obj} ({}{file})", walk.path(None)));
                }
            }
            for d in t.dirs() {
                self.check_dir(
                    &mut walk,
                    &mut missing,
                    depth + 1,
                    Some(&d.name),
                    d.tree,
                    d.meta,
                );
            }
        }
        match missing.first {
            None => Ok(()),
            Some(first) => Err(Error::Incomplete {
                commit: *commit,
                missing: first,
                more: missing.more,
            }),
        }
    }

    /// Checks one directory of a closure: its dirmeta, and its dirtree,
    /// queued to be read if it is staged here (once). The directory is
    /// `name` in the one being read, at `depth` (the root: 0, no name).
    fn check_dir(
        &self,
        walk: &mut Walk,
        missing: &mut Missing,
        depth: usize,
        name: Option<&FileName>,
        tree: Checksum,
        meta: Checksum,
    ) {
        let meta_name = ObjectName::new(meta, ObjectType::DirMeta);
        if !self.has_object(&meta_name) {
            missing.note(|| format!("{meta_name} ({})", walk.path(name)));
        }
        let tree_name = ObjectName::new(tree, ObjectType::DirTree);
        match self.mark_walked(&tree_name) {
            Some(true) => walk.to_read.push((depth, name.cloned(), tree)),
            Some(false) => {}
            None => {
                if !self.repo.has_object(&tree_name) {
                    missing.note(|| format!("{tree_name} ({})", walk.path(name)));
                } else if walk.published_too && walk.published_read.insert(tree) {
                    walk.to_read.push((depth, name.cloned(), tree));
                }
            }
        }
    }

    /// Refuses a staged commit whose tree checkouts refuse: directories
    /// nested deeper than [`MAX_TREE_DEPTH`](crate::object::MAX_TREE_DEPTH),
    /// more than [`MAX_TREE_ENTRIES`] entries or paths of more than
    /// [`MAX_TREE_PATH_BYTES`] once expanded (see [`tree_shape`]). ostree's fsck, prune
    /// and checkout recurse, and crash on trees some thousands of levels
    /// deep; a few dirtrees naming one subtree many times stand for
    /// billions of files. A root tree already published was measured when
    /// it was pushed (or the repository's owner made it); a staged one is
    /// measured with every subtree it names, published ones too, since a
    /// push could stack its tree on an earlier one. `known` carries what
    /// was measured to the next commit of the push.
    pub fn check_tree_shape(
        &self,
        commit: &Checksum,
        known: &mut std::collections::HashMap<Checksum, TreeShape>,
    ) -> Result<(), Error> {
        let c = self.load_commit(commit)?;
        if !self.staged(&ObjectName::new(c.root_tree, ObjectType::DirTree)) {
            return Ok(());
        }
        let mut load = |tree: &Checksum| self.load_dirtree(tree);
        let reason = match tree_shape(&c.root_tree, &mut load, known) {
            Ok(shape) if shape.fits(0) => return Ok(()),
            Ok(shape) if shape.entries > MAX_TREE_ENTRIES => format!(
                "its tree expands to more than {MAX_TREE_ENTRIES} files and directories \
                 (its dirtrees name the same subtrees over and over)"
            ),
            Ok(_) => format!(
                "the paths of its tree add up to more than {} MiB",
                MAX_TREE_PATH_BYTES >> 20
            ),
            Err(ShapeError::Load(e)) => return Err(e),
            Err(e @ ShapeError::TooDeep { .. }) => format!("in its tree {e}"),
        };
        Err(Error::UncheckableTree {
            commit: *commit,
            reason,
        })
    }

    /// For a staged object: marks it walked, and says whether it was not
    /// before. None if it is not staged.
    fn mark_walked(&self, name: &ObjectName) -> Option<bool> {
        match lock_objects(&self.objects).get_mut(name) {
            Some(standing @ Standing::Staged) => {
                *standing = Standing::Walked;
                Some(true)
            }
            Some(Standing::Walked) => Some(false),
            _ => None,
        }
    }

    /// Whether `ancestor` is `descendant` or reachable from it through
    /// parents that are present.
    pub fn is_ancestor(&self, ancestor: &Checksum, descendant: &Checksum) -> Result<bool, Error> {
        let mut next = Some(*descendant);
        let mut steps = 0usize;
        while let Some(c) = next {
            if c == *ancestor {
                return Ok(true);
            }
            steps += 1;
            if steps > 1_000_000 {
                return Ok(false);
            }
            next = match self.load_commit(&c) {
                Ok(commit) => commit.parent,
                Err(Error::MissingObject { .. }) => None,
                Err(e) => return Err(e),
            };
        }
        Ok(false)
    }

    /// Puts staged objects in the order to publish them, so that whatever
    /// an object points at is published before it (what
    /// [`check_closure`](Transaction::check_closure) relies on after a
    /// crash): content, dirmetas, dirtrees from the leaves up, detached
    /// metadata, commits. Within a kind, name order: consecutive moves
    /// land in the same `objects/XX/` (content objects, moved on every
    /// core, in runs). In place, since a push may stage millions of objects.
    fn publish_order(&self, staged: &mut [ObjectName]) -> Result<(), Error> {
        staged.sort_unstable_by_key(|n| (publish_rank(n.kind), *n));
        let tree_rank = publish_rank(ObjectType::DirTree);
        let start = staged.partition_point(|n| publish_rank(n.kind) < tree_rank);
        let end = staged.partition_point(|n| publish_rank(n.kind) <= tree_rank);
        self.dirtrees_leaves_first(&mut staged[start..end])
    }

    /// Orders staged dirtrees so that each comes after its staged subtrees:
    /// first those with none, then those whose subtrees are all placed.
    /// `trees` arrives in name order, so a subtree is found by binary search;
    /// the graph is an edge list of 4-byte indices: a push may stage
    /// hundreds of thousands of dirtrees, and this runs at its peak memory.
    fn dirtrees_leaves_first(&self, trees: &mut [ObjectName]) -> Result<(), Error> {
        debug_assert!(trees.is_sorted(), "dirtrees come in name order");
        let index = |i: usize| u32::try_from(i).expect("fewer than 2^32 staged objects");
        let position = |sum: &Checksum| trees.binary_search_by(|t| t.checksum.cmp(sum)).ok();
        // (subtree, parent), and how many staged subtrees each tree waits on.
        let mut edges: Vec<(u32, u32)> = Vec::new();
        let mut waiting_on: Vec<u32> = vec![0; trees.len()];
        let mut children: Vec<usize> = Vec::new();
        for (i, name) in trees.iter().enumerate() {
            let data = self.read_staged_metadata(name)?;
            let tree = DirTree::parse(&data).map_err(|e| Error::CorruptObject {
                name: *name,
                reason: crate::error_chain(&e),
            })?;
            children.clear();
            children.extend(tree.dirs().iter().filter_map(|d| position(&d.tree)));
            children.sort_unstable();
            children.dedup();
            waiting_on[i] = index(children.len());
            edges.extend(children.iter().map(|&c| (index(c), index(i))));
        }
        // The parents of tree c are edges[first[c]..first[c + 1]].
        edges.sort_unstable();
        let mut first: Vec<u32> = vec![0; trees.len() + 1];
        for &(c, _) in &edges {
            first[c as usize + 1] += 1;
        }
        for c in 0..trees.len() {
            first[c + 1] += first[c];
        }
        let mut order: Vec<u32> = (0..trees.len())
            .filter(|&i| waiting_on[i] == 0)
            .map(index)
            .collect();
        let mut next = 0;
        while next < order.len() {
            let c = order[next] as usize;
            for &(_, p) in &edges[first[c] as usize..first[c + 1] as usize] {
                waiting_on[p as usize] -= 1;
                if waiting_on[p as usize] == 0 {
                    order.push(p);
                }
            }
            next += 1;
        }
        // Checksums make a cycle impossible; had one slipped in, its trees
        // still go out, last.
        if order.len() < trees.len() {
            order.extend((0..trees.len()).filter(|&i| waiting_on[i] > 0).map(index));
        }
        drop((edges, first, waiting_on));
        permute_in_place(trees, &mut order);
        Ok(())
    }

    /// Moves a staged object into `objects/` as a hard link and an unlink,
    /// keeping an object published there meanwhile by another writer (for
    /// content, the same bytes).
    fn link_into_place(&self, name: &ObjectName) -> Result<(), Error> {
        let staged = self.staged_path(name);
        let target = self.repo.object_path(name);
        match fs::hard_link(&staged, &target) {
            Ok(()) => fs::remove_file(&staged).map_err(io_err("remove", &staged)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&staged).map_err(io_err("remove", &staged))
            }
            // A file system without hard links (some FUSE or SMB mounts).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                fs::rename(&staged, &target).map_err(io_err("publish object", &target))
            }
            Err(e) => Err(io_err("publish object", &target)(e)),
        }
    }

    /// Makes what is staged so far durable, so that [`commit`](Transaction::commit)
    /// has less to wait for; a receiver calls it now and then while objects
    /// still arrive.
    pub fn sync_staged(&self) -> Result<(), Error> {
        sync_fs(self.staging())
    }

    /// Publishes every staged object, then applies `updates` atomically with
    /// respect to other depot writers: all of them or, if any expectation
    /// fails, none ([`Error::RefMoved`]). The objects stay published either way.
    pub fn commit(self, updates: &[RefUpdate]) -> Result<(), Error> {
        self.publish(updates, true)
    }

    /// Publishes the staged objects without waiting for them to reach the
    /// disk, and moves no ref. Only for a cache whose every object is
    /// verified again when it is read (a pull's): after a crash it may hold a
    /// damaged object, which a read then refuses.
    pub fn publish_unsynced(self) -> Result<(), Error> {
        self.publish(&[], false)
    }

    fn publish(self, updates: &[RefUpdate], durable: bool) -> Result<(), Error> {
        self.hold_lock()?;
        // Every writer has finished: the record is complete, and its table
        // is no longer needed.
        let mut staged =
            std::mem::take(&mut *lock_objects(&self.objects)).into_names_where(Standing::is_staged);
        self.publish_order(&mut staged)?;
        let started = std::time::Instant::now();
        if durable {
            sync_fs(self.staging())?;
            tracing::debug!("staged objects on disk after {:.2?}", started.elapsed());
        }
        let objects = self.repo.path.join("objects");
        let prefixes: std::collections::BTreeSet<u8> =
            staged.iter().map(|n| n.checksum.as_bytes()[0]).collect();
        for prefix in prefixes {
            make_served_dir(&objects.join(format!("{prefix:02x}")))?;
        }
        // Content objects on every core: as a hard link and an unlink, since
        // renames from one directory into another serialise on a
        // file-system-wide lock (s_vfs_rename_mutex). The rest in order.
        let content = staged.partition_point(|n| n.kind == ObjectType::File);
        staged[..content]
            .par_iter()
            .try_for_each(|name| self.link_into_place(name))?;
        for name in &staged[content..] {
            if name.kind == ObjectType::CommitMeta {
                // Named by its commit, not its bytes: one that appeared
                // meanwhile (a signing job's) is kept, not replaced.
                self.link_into_place(name)?;
                continue;
            }
            let target = self.repo.object_path(name);
            fs::rename(self.staged_path(name), &target)
                .map_err(io_err("publish object", &target))?;
        }
        tracing::debug!(
            "{} objects moved into objects/ after {:.2?}",
            staged.len(),
            started.elapsed()
        );
        if durable && !staged.is_empty() {
            sync_fs(&objects)?;
            tracing::debug!("published objects on disk after {:.2?}", started.elapsed());
        }
        if !updates.is_empty() {
            self.apply_ref_updates(updates)?;
        }
        Ok(())
    }

    fn apply_ref_updates(&self, updates: &[RefUpdate]) -> Result<(), Error> {
        let repo = &self.repo;
        // depot's own lock serialises compare-and-swap among depot writers; the
        // shared ostree lock, held already, keeps deleters out.
        let _refs_lock = lock::lock(
            &repo.path.join(".depot-refs.lock"),
            LockMode::Exclusive,
            Wait::For(repo.lock_timeout),
        )?;
        for u in updates {
            if u.new.is_some() {
                let others: Vec<&RefName> = updates
                    .iter()
                    .filter(|o| o.name != u.name && o.new.is_some())
                    .map(|o| &o.name)
                    .collect();
                repo.check_ref_path(&u.name, &others)?;
            }
            let current = repo.read_ref(&u.name)?;
            let ok = match u.expected {
                Expected::Any => true,
                Expected::Absent => current.is_none(),
                Expected::Is(c) => current == Some(c),
            };
            if !ok {
                return Err(Error::RefMoved {
                    name: u.name.clone(),
                    expected: match u.expected {
                        Expected::Any => "anything".into(),
                        Expected::Absent => "no ref".into(),
                        Expected::Is(c) => c.to_string(),
                    },
                    found: current.map_or_else(|| "no ref".into(), |c| c.to_string()),
                });
            }
            if let Some(new) = u.new {
                let name = ObjectName::new(new, ObjectType::Commit);
                if !repo.has_object(&name) {
                    return Err(Error::MissingObject { name });
                }
            }
        }
        let tmp = repo.path.join("tmp");
        for u in updates {
            let path = repo.ref_path(&u.name);
            match u.new {
                Some(c) => {
                    if let Some(parent) = path.parent() {
                        let heads = repo.path.join("refs/heads");
                        let mut dir = heads.clone();
                        for part in parent
                            .strip_prefix(&heads)
                            .unwrap_or(Path::new(""))
                            .components()
                        {
                            dir.push(part);
                            make_served_dir(&dir)?;
                        }
                    }
                    write_file_atomic(&tmp, &path, format!("{c}\n").as_bytes(), 0o644)?;
                }
                None => match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("delete ref", &path)(e)),
                },
            }
        }
        // New ref directories and deletions are durable too before we say so.
        sync_fs(&repo.path.join("refs"))
    }
}

/// Creates a directory a static server must read: mode 0755 whatever the
/// umask (a web server runs as another user). An existing one is left alone.
fn make_served_dir(dir: &Path) -> Result<(), Error> {
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create directory", dir)(e)),
    }
}

/// Whether a file created in `dir` with mode 0644 gets exactly that: a
/// umask or a default ACL may take bits away, and a static server run as
/// another user must read every object.
fn creates_mode_0644(dir: &Path) -> Result<bool, Error> {
    let probe = dir.join(".mode-probe");
    let file = super::create_new_file(&probe).map_err(io_err("create", &probe))?;
    let mode = file.metadata().map(|m| m.permissions().mode() & 0o7777);
    let _ = fs::remove_file(&probe);
    Ok(mode.map_err(io_err("stat", &probe))? == 0o644)
}

/// Puts `items[order[k]]` at position `k`, for every `k`, following each
/// cycle of the permutation `order` (which it uses up): no second copy of
/// `items`, which for a push of half a million dirtrees would be 16 MiB at
/// the receiver's peak.
fn permute_in_place<T: Copy>(items: &mut [T], order: &mut [u32]) {
    const DONE: u32 = u32::MAX;
    debug_assert_eq!(items.len(), order.len());
    for start in 0..items.len() {
        if order[start] == DONE {
            continue;
        }
        let first = items[start];
        let mut k = start;
        loop {
            let from = order[k] as usize;
            order[k] = DONE;
            if from == start {
                items[k] = first;
                break;
            }
            items[k] = items[from];
            k = from;
        }
    }
}

/// Objects are published so that whatever points at an object lands after it.
fn publish_rank(kind: ObjectType) -> u8 {
    match kind {
        ObjectType::File => 0,
        ObjectType::DirMeta => 1,
        ObjectType::DirTree => 2,
        ObjectType::CommitMeta => 3,
        ObjectType::Commit | ObjectType::TombstoneCommit => 4,
    }
}

fn sync_fs(dir: &Path) -> Result<(), Error> {
    let f = File::open(dir).map_err(io_err("open", dir))?;
    nix::unistd::syncfs(&f).map_err(|e| io_err("syncfs", dir)(e.into()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy};

    use super::*;
    use crate::object::{DirTree, FileName, SubdirEntry};

    /// Stages a dirtree with the given subtrees; returns its checksum.
    fn stage_tree(tx: &Transaction, label: &str, children: &[Checksum]) -> Checksum {
        let meta = Checksum::of(b"any dirmeta");
        let file = Checksum::of(label.as_bytes());
        let dirs = children
            .iter()
            .enumerate()
            .map(|(i, c)| SubdirEntry {
                name: FileName::new(&format!("d{i}")).expect("name"),
                tree: *c,
                meta,
            })
            .collect();
        let tree =
            DirTree::new(vec![(FileName::new(label).expect("name"), file)], dirs).expect("tree");
        tx.write_metadata(ObjectType::DirTree, &tree.to_bytes())
            .expect("stage")
    }

    /// Stages a plain dirmeta; returns its checksum.
    fn stage_dirmeta(tx: &Transaction) -> Checksum {
        let meta = crate::object::DirMeta {
            uid: 0,
            gid: 0,
            mode: 0o40755,
            xattrs: crate::object::Xattrs::default(),
        };
        tx.write_metadata(ObjectType::DirMeta, &meta.to_bytes())
            .expect("stage")
    }

    /// Stages a commit of the tree; returns its checksum.
    fn stage_commit(tx: &Transaction, root_tree: Checksum, root_meta: Checksum) -> Checksum {
        let commit = Commit {
            metadata: Vec::new(),
            parent: None,
            related: Vec::new(),
            subject: "s".into(),
            body: String::new(),
            timestamp: 1,
            root_tree,
            root_meta,
        };
        tx.write_metadata(ObjectType::Commit, &commit.to_bytes())
            .expect("stage")
    }

    /// Stages a dirtree of these files and subdirectories (each with
    /// dirmeta `meta`); returns its checksum.
    fn stage_dirtree(
        tx: &Transaction,
        files: &[(&str, Checksum)],
        dirs: &[(&str, Checksum)],
        meta: Checksum,
    ) -> Checksum {
        let name = |s: &str| FileName::new(s).expect("name");
        let files = files.iter().map(|&(n, c)| (name(n), c)).collect();
        let dirs = dirs
            .iter()
            .map(|&(n, tree)| SubdirEntry {
                name: name(n),
                tree,
                meta,
            })
            .collect();
        let tree = DirTree::new(files, dirs).expect("tree");
        tx.write_metadata(ObjectType::DirTree, &tree.to_bytes())
            .expect("stage")
    }

    /// What the closure check of `commit` describes as missing first, and
    /// how many more it counts; it must find the commit incomplete.
    fn incomplete(tx: &Transaction, commit: &Checksum) -> (String, usize) {
        match tx.check_closure(commit) {
            Err(Error::Incomplete { missing, more, .. }) => (missing, more),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_closure_check_names_the_first_missing_object_and_counts_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        let meta = stage_dirmeta(&tx);
        let names: Vec<String> = (0..1000).map(|i| format!("f{i:04}")).collect();
        let files: Vec<(&str, Checksum)> = names
            .iter()
            .map(|n| (n.as_str(), Checksum::of(format!("absent {n}").as_bytes())))
            .collect();
        let root = stage_dirtree(&tx, &files, &[], meta);
        let (missing, more) = incomplete(&tx, &stage_commit(&tx, root, meta));
        assert!(missing.ends_with("(/f0000)"), "{missing}");
        assert_eq!(more, 999);
    }

    #[test]
    fn a_closure_check_names_a_missing_object_deep_in_a_chain_by_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        let meta = stage_dirmeta(&tx);
        // Staged dirtrees nested 3,000 deep; the deepest names an absent
        // file and an absent dirtree.
        let depth = 3000;
        let absent_file = Checksum::of(b"an absent file");
        let mut tree = stage_dirtree(
            &tx,
            &[("leaf", absent_file)],
            &[("bottom", Checksum::of(b"an absent dirtree"))],
            meta,
        );
        for _ in 1..depth {
            tree = stage_dirtree(&tx, &[], &[("d", tree)], meta);
        }
        let (missing, more) = incomplete(&tx, &stage_commit(&tx, tree, meta));
        // A directory's files are checked before its subdirectories.
        let path = format!("/{}leaf", "d/".repeat(depth - 1));
        let absent_file = ObjectName::new(absent_file, ObjectType::File);
        assert_eq!(missing, format!("{absent_file} ({path})"));
        assert_eq!(more, 1, "the absent dirtree is counted");
    }

    #[test]
    fn a_closure_check_names_a_missing_file_by_its_path_after_walking_back_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        let meta = stage_dirmeta(&tx);
        // /a/x/g is absent; /b/y is complete. The walk reads /b and /b/y
        // first (the last subdirectory first), then goes back up to /a.
        let absent = Checksum::of(b"an absent file");
        let tree_x = stage_dirtree(&tx, &[("g", absent)], &[], meta);
        let tree_a = stage_dirtree(&tx, &[], &[("x", tree_x)], meta);
        let tree_y = stage_dirtree(&tx, &[], &[], meta);
        let tree_b = stage_dirtree(&tx, &[], &[("y", tree_y)], meta);
        let root = stage_dirtree(&tx, &[], &[("a", tree_a), ("b", tree_b)], meta);
        let (missing, more) = incomplete(&tx, &stage_commit(&tx, root, meta));
        let absent = ObjectName::new(absent, ObjectType::File);
        assert_eq!(missing, format!("{absent} (/a/x/g)"));
        assert_eq!(more, 0);
    }

    proptest::proptest! {
        #[test]
        fn a_permutation_applied_in_place_matches_a_copy(
            order in (0u32..300).prop_flat_map(|n| Just((0..n).collect::<Vec<u32>>()).prop_shuffle())
        ) {
            let items: Vec<u64> = (0..order.len() as u64).map(|i| i * 10).collect();
            let want: Vec<u64> = order.iter().map(|&i| items[i as usize]).collect();
            let mut got = items.clone();
            permute_in_place(&mut got, &mut order.clone());
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn a_failed_closure_check_leaves_no_dirtree_vouched_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        let meta = stage_dirmeta(&tx);
        // Two commits share a staged subtree whose one file is absent;
        // nothing else is missing.
        let shared = stage_dirtree(&tx, &[("f", Checksum::of(b"absent"))], &[], meta);
        for under in ["first", "second"] {
            let root = stage_dirtree(&tx, &[], &[(under, shared)], meta);
            let (missing, _) = incomplete(&tx, &stage_commit(&tx, root, meta));
            assert!(missing.ends_with(&format!("(/{under}/f)")), "{missing}");
        }
    }

    #[test]
    fn two_transactions_publishing_the_same_content_both_succeed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let header = FileHeader {
            uid: 0,
            gid: 0,
            mode: 0o100_644,
            symlink_target: String::new(),
            xattrs: crate::object::Xattrs::default(),
        };
        let payload = b"the same content, staged twice";
        let mut filez = Vec::new();
        let (sum, _) = write_filez(&header, payload.len() as u64, &payload[..], 6, &mut filez)
            .expect("in memory");
        let name = ObjectName::new(sum, ObjectType::File);
        // Both stage it while it is absent; the second publishes onto the
        // first one's copy.
        let (first, second) = (repo.begin().expect("begin"), repo.begin().expect("begin"));
        for tx in [&first, &second] {
            tx.write_content(
                &sum,
                &header,
                payload.len() as u64,
                &payload[..],
                Path::new("p"),
            )
            .expect("stage");
        }
        let staging = [
            first.staging().to_path_buf(),
            second.staging().to_path_buf(),
        ];
        first.commit(&[]).expect("first publishes");
        second
            .commit(&[])
            .expect("second publishes onto the same object");
        assert_eq!(fs::read(repo.object_path(&name)).expect("published"), filez);
        for dir in staging {
            assert!(!dir.exists(), "{} is left behind", dir.display());
        }
        let objects: Vec<_> = fs::read_dir(repo.path.join("objects").join(&sum.to_hex()[..2]))
            .expect("list")
            .collect();
        assert_eq!(objects.len(), 1, "{objects:?}");
    }

    #[test]
    fn dirtrees_are_published_from_the_leaves_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(&dir.path().join("repo")).expect("init");
        let tx = repo.begin().expect("begin");
        // A chain eight deep, a shared subtree used twice by one parent and
        // by another, and a tree already in the repository.
        let published = {
            let early = repo.begin().expect("begin");
            let c = stage_tree(&early, "published", &[]);
            early.publish_unsynced().expect("publish");
            c
        };
        let mut chain = stage_tree(&tx, "leaf", &[published]);
        let mut edges = vec![];
        for i in 0..8 {
            let parent = stage_tree(&tx, &format!("level{i}"), &[chain]);
            edges.push((parent, chain));
            chain = parent;
        }
        let shared = stage_tree(&tx, "shared", &[]);
        let both = stage_tree(&tx, "both", &[shared, shared, chain]);
        edges.extend([(both, shared), (both, chain)]);
        let root = stage_tree(&tx, "root", &[both, shared, published]);
        edges.extend([(root, both), (root, shared)]);

        let staged: Vec<ObjectName> = fs::read_dir(tx.staging())
            .expect("list")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        assert_eq!(staged.len(), 12);
        let mut order = staged;
        tx.publish_order(&mut order).expect("order");
        let position = |c: Checksum| order.iter().position(|n| n.checksum == c).expect("placed");
        assert_eq!(order.len(), 12);
        for (parent, child) in edges {
            assert!(
                position(child) < position(parent),
                "a dirtree is published before its subtree"
            );
        }
    }
}
