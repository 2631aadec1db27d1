//! Directories that live only while their owner runs: a transaction's
//! staging, a pull's checkout under construction.
//!
//! Each has a sibling `<name>.lock`, created and locked (an OFD lock) before
//! the directory exists and unlocked only after it is gone or renamed away,
//! so anyone can tell an abandoned directory (its lock can be taken) from a
//! live one, whatever pid namespace or host the owner runs in. The cleaner
//! opens lock files without `O_CREAT`: one that vanished belongs to an owner
//! that just finished.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::lock::{self, LockGuard, LockMode, Wait};
use super::{Error, io_err};

const LOCK_SUFFIX: &str = ".lock";
/// A directory without its lock file (something else deleted it) is
/// abandoned once it is this old.
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// A directory named `<prefix><unique>` beside its held lock file. Dropped,
/// it removes the directory, then the lock file.
#[derive(Debug)]
pub struct LockedDir {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: LockGuard,
    /// Renamed away: nothing left to remove but the lock file.
    moved: bool,
}

impl LockedDir {
    /// Creates a new, uniquely named directory `<prefix><unique>` in
    /// `parent`, with `mode`.
    pub fn create(parent: &Path, prefix: &str, mode: u32) -> Result<LockedDir, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = format!(
            "{}-{:x}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = parent.join(format!("{prefix}{unique}"));
        let lock_path = parent.join(format!("{prefix}{unique}{LOCK_SUFFIX}"));
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(io_err("create lock file", &lock_path))?;
        let guard = match lock::lock(&lock_path, LockMode::Exclusive, Wait::Immediately) {
            Ok(g) => g,
            Err(e) => {
                let _ = fs::remove_file(&lock_path);
                return Err(e.into());
            }
        };
        if let Err(e) = fs::DirBuilder::new().mode(mode).create(&path) {
            let _ = fs::remove_file(&lock_path);
            return Err(io_err("create directory", &path)(e));
        }
        Ok(LockedDir {
            path,
            lock_path,
            _lock: guard,
            moved: false,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the directory to `to` (an empty directory there is replaced)
    /// and lets it go.
    pub fn rename_to(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.moved = true;
        Ok(())
    }
}

impl Drop for LockedDir {
    fn drop(&mut self) {
        // The directory first, its lock file last (still locked).
        if !self.moved {
            match remove_tree(&self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("could not remove {}: {e}", self.path.display());
                    return;
                }
            }
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Removes a tree, making its directories writable first if need be (a
/// checkout's may be read-only).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
                }
            }
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// Removes the `<prefix>…` directories in `parent` whose owners are gone:
/// their lock file can be locked, or it is missing and they are old.
pub fn clean_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        if let Some(dir_name) = name.strip_suffix(LOCK_SUFFIX) {
            let lock_path = entry.path();
            if let Ok(Some(_guard)) =
                lock::lock_existing(&lock_path, LockMode::Exclusive, Wait::Immediately)
            {
                let dir = parent.join(dir_name);
                tracing::info!("removing {}, left by a process that died", dir.display());
                match remove_tree(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!("could not remove {}: {e}", dir.display());
                        continue;
                    }
                }
                let _ = fs::remove_file(&lock_path);
            }
        } else if !parent.join(format!("{name}{LOCK_SUFFIX}")).exists() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > ABANDONED_AFTER);
            if old {
                tracing::info!("removing {}: its lock file is gone", entry.path().display());
                let _ = remove_tree(&entry.path());
            }
        }
    }
}
