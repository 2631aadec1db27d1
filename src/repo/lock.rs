//! The repository lock, shared with ostree.
//!
//! ostree locks `<repo>/.lock` with open-file-description locks
//! (`fcntl(F_OFD_SETLK)`): shared while writing objects, exclusive while
//! deleting. `flock` locks do not conflict with those, so depot uses the very
//! same OFD locks; `ostree prune` then waits for a depot push, and a depot
//! push for a prune.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Many holders at once: writers of objects and refs.
    Shared,
    /// One holder: deleters (prune).
    Exclusive,
}

impl LockMode {
    fn describe(self) -> &'static str {
        match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        }
    }
}

/// How long to wait for a lock held by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once.
    Immediately,
    /// Retry until this much time has passed (ostree's `core.lock-timeout-secs`).
    For(Duration),
}

/// A lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock file could not be opened or locked for a reason other than contention.
    #[error("cannot lock {path}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process kept the lock for the whole wait.
    #[error(
        "could not take a {mode} lock on {path} within {waited:?}: {holders}; \
         wait for it to finish (an `ostree prune` holds it exclusively, \
         commits and pushes hold it shared) or raise core.lock-timeout-secs in the repository config"
    )]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// What was asked for.
        mode: &'static str,
        /// How long depot waited.
        waited: Duration,
        /// Who holds it, as far as /proc tells.
        holders: String,
    },
}

/// A held lock. Dropping it releases the lock (closing the file does).
#[must_use = "the lock is released when this guard is dropped"]
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    mode: LockMode,
}

impl LockGuard {
    /// How the lock is held.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

/// Takes an OFD lock on `path` (created with mode 0660 if missing, as ostree does).
pub fn lock(path: &Path, mode: LockMode, wait: Wait) -> Result<LockGuard, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o660)
        .open(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
    lock_file(file, path, mode, wait)
}

/// Like [`lock`], for a lock file that must already exist: `Ok(None)` if it
/// does not (nobody holds it, and nobody may create it behind its owner's back).
pub fn lock_existing(path: &Path, mode: LockMode, wait: Wait) -> Result<Option<LockGuard>, Error> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => lock_file(file, path, mode, wait).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn lock_file(file: File, path: &Path, mode: LockMode, wait: Wait) -> Result<LockGuard, Error> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        match try_lock(&file, mode) {
            Ok(()) => return Ok(LockGuard { _file: file, mode }),
            Err(Errno::EAGAIN | Errno::EACCES) => {}
            Err(e) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: e.into(),
                });
            }
        }
        let waited = start.elapsed();
        let limit = match wait {
            Wait::Immediately => Duration::ZERO,
            Wait::For(d) => d,
        };
        if waited >= limit {
            // Reading /proc is slow: only worth it when someone waited.
            let holders = if limit.is_zero() {
                "held by another process".into()
            } else {
                describe_holders(path)
            };
            return Err(Error::Busy {
                path: path.to_path_buf(),
                mode: mode.describe(),
                waited,
                holders,
            });
        }
        std::thread::sleep(delay.min(limit.saturating_sub(waited)));
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

fn try_lock(file: &File, mode: LockMode) -> Result<(), Errno> {
    let l_type = match mode {
        LockMode::Shared => libc::F_RDLCK,
        LockMode::Exclusive => libc::F_WRLCK,
    };
    let flock = libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match fcntl(file, FcntlArg::F_OFD_SETLK(&flock)) {
        // ostree falls back to flock() only where OFD locks are unsupported.
        Err(Errno::EINVAL) => Err(Errno::ENOTSUP),
        other => other.map(drop),
    }
}

/// Names the processes that have `path` open, read from /proc (best effort:
/// only processes this user may inspect are seen).
fn describe_holders(path: &Path) -> String {
    let Ok(target) = path.canonicalize() else {
        return "the holder is unknown".into();
    };
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
                continue;
            };
            let holds = fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target));
            if holds {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                found.push(format!("pid {pid} ({})", comm.trim()));
            }
        }
    }
    if found.is_empty() {
        "the holder is unknown".into()
    } else {
        format!("held by {}", found.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_and_exclusive_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".lock");
        let a = lock(&p, LockMode::Shared, Wait::Immediately).expect("first shared");
        let b = lock(&p, LockMode::Shared, Wait::Immediately).expect("second shared");
        let err = lock(
            &p,
            LockMode::Exclusive,
            Wait::For(Duration::from_millis(50)),
        )
        .expect_err("busy");
        let msg = err.to_string();
        assert!(msg.contains(".lock") && msg.contains("exclusive"), "{msg}");
        drop((a, b));
        let _x = lock(&p, LockMode::Exclusive, Wait::Immediately).expect("free now");
    }
}
