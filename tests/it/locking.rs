//! depot's repository lock is ostree's: the same OFD fcntl lock on `.lock`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use depot::repo::{LockMode, Repo};

use crate::util::*;

fn small_repo(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("f"), "f").expect("write");
    let repo = dir.join("repo");
    ok(depot().arg("init").arg(&repo));
    ok(depot_in("commit", &repo).args(["--ref", "main"]).arg(&tree));
    set_core_config(&repo, "lock-timeout-secs=1");
    repo
}

/// Waits until /proc/locks shows an OFD lock of `kind` (READ or WRITE) on `path`.
fn wait_for_ofd_lock(path: &Path, kind: &str) {
    let ino = fs::metadata(path).expect("stat lock").ino();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let locks = fs::read_to_string("/proc/locks").expect("read /proc/locks");
        if locks.lines().any(|l| {
            l.contains("OFDLCK")
                && l.contains(kind)
                && l.split_whitespace()
                    .any(|w| w.ends_with(&format!(":{ino}")))
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no OFD {kind} lock appeared on {}:\n{locks}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ostree_prune_cannot_run_while_depot_writes() {
    let tmp = tempdir();
    let repo_path = small_repo(tmp.path());
    let repo = Repo::open(&repo_path).expect("open");
    let guard = repo.lock(LockMode::Shared).expect("shared lock");
    wait_for_ofd_lock(&repo_path.join(".lock"), "READ");
    let err = fails(ostree_in(&repo_path).args(["prune", "--refs-only"]));
    assert!(err.contains("Locking repo exclusive failed"), "{err}");
    // A shared holder does not stop ostree's own writers.
    ok(ostree_in(&repo_path)
        .args(["commit", "-b", "other"])
        .arg(tmp.path().join("tree")));
    drop(guard);
    ok(ostree_in(&repo_path).args(["prune", "--refs-only"]));
}

#[test]
fn depot_waits_for_ostree_exclusive_lock_then_fails_clearly() {
    let tmp = tempdir();
    let repo_path = small_repo(tmp.path());
    // Make the real ostree prune hold its exclusive lock for 4 s: strace
    // delays the return of its second fcntl call, the one that takes the lock.
    let mut prune = Command::new("strace")
        .args([
            "-o",
            "/dev/null",
            "-e",
            "trace=fcntl",
            "-e",
            "inject=fcntl:delay_exit=4000000:when=2",
            "ostree",
        ])
        .arg(format!("--repo={}", repo_path.display()))
        .args(["prune", "--refs-only"])
        .stdout(Stdio::null())
        .spawn()
        .expect("run strace (apt-get install strace)");
    wait_for_ofd_lock(&repo_path.join(".lock"), "WRITE");
    let started = Instant::now();
    let err = fails(
        depot_in("commit", &repo_path)
            .args(["--ref", "blocked"])
            .arg(tmp.path().join("tree")),
    );
    let waited = started.elapsed();
    assert!(prune.wait().expect("wait").success());
    assert!(
        err.contains(".lock") && err.contains("shared lock") && err.contains("lock-timeout-secs"),
        "{err}"
    );
    assert!(err.contains("ostree"), "the error names the holder: {err}");
    assert!(
        waited >= Duration::from_millis(900),
        "depot gave up after {waited:?}, before the 1 s timeout"
    );
    // Nothing of the failed commit remains; once the lock is free it works.
    assert!(
        Repo::open(&repo_path)
            .expect("open")
            .read_ref(&"blocked".parse().expect("ref"))
            .expect("read")
            .is_none()
    );
    ok(depot_in("commit", &repo_path)
        .args(["--ref", "blocked"])
        .arg(tmp.path().join("tree")));
}

#[test]
fn a_killed_commit_leaves_nothing_and_is_cleaned_up() {
    let tmp = tempdir();
    let repo_path = small_repo(tmp.path());
    let main_before = read_ref(&repo_path, "main");
    // A big tree, killed while it is being written.
    let tree = tmp.path().join("big");
    fs::create_dir_all(&tree).expect("mkdir");
    for i in 0..400 {
        let data: Vec<u8> = (0..50_000u32)
            .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
            .collect();
        fs::write(tree.join(format!("f{i}")), data).expect("write");
    }
    let mut child = depot_in("commit", &repo_path)
        .args(["--ref", "main"])
        .arg(&tree)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let staging = |repo: &Path| -> Vec<String> {
        fs::read_dir(repo.join("tmp"))
            .expect("tmp")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("depot-"))
            .collect()
    };
    while staging(&repo_path).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    // Whatever the moment of the kill: both tools find the repository valid,
    // and the ref is either unchanged or at a complete commit.
    ok(ostree_in(&repo_path).arg("fsck"));
    ok(depot_in("fsck", &repo_path));
    let after = read_ref(&repo_path, "main");
    if after != main_before {
        ok(ostree_in(&repo_path)
            .args(["checkout", "-U", "main"])
            .arg(tmp.path().join("co")));
    }
    // The next transaction removes what the killed one left behind.
    ok(depot_in("commit", &repo_path)
        .args(["--ref", "again"])
        .arg(tmp.path().join("tree")));
    assert!(
        staging(&repo_path).is_empty(),
        "leftovers: {:?}",
        staging(&repo_path)
    );
}
