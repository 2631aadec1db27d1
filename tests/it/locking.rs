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
    let suffix = format!(":{ino}");
    wait_until(
        &format!("an OFD {kind} lock on {}", path.display()),
        Duration::from_secs(10),
        || {
            let locks = fs::read_to_string("/proc/locks").expect("read /proc/locks");
            locks.lines().any(|l| {
                l.contains("OFDLCK")
                    && l.contains(kind)
                    && l.split_whitespace().any(|w| w.ends_with(&suffix))
            })
        },
    );
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

/// `depot commit` under strace, killed by SIGKILL when a thread makes its
/// `when`-th call of `syscall` (or never, with `None`). Returns strace's
/// output; its trace of `rename` calls is in the file `trace`.
fn commit_under_strace(
    repo: &Path,
    tree: &Path,
    kill_at: Option<(&str, usize)>,
    trace: &Path,
) -> std::process::Output {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"]).arg(trace);
    match kill_at {
        // strace injects only into the calls it traces.
        Some((syscall, k)) => cmd.args([
            "-e",
            &format!("trace=rename,{syscall}"),
            "-e",
            &format!("inject={syscall}:signal=KILL:when={k}"),
        ]),
        None => cmd.args(["-e", "trace=rename"]),
    };
    cmd.arg(env!("CARGO_BIN_EXE_depot"))
        .args(["commit", "--repo"])
        .arg(repo)
        .args(["--ref", "main"])
        .arg(tree);
    run(cmd)
}

#[test]
fn a_commit_killed_at_any_step_leaves_a_valid_repository() {
    let tmp = tempdir();
    let repo_path = small_repo(tmp.path());
    let tree = tmp.path().join("next");
    fs::create_dir_all(tree.join("sub")).expect("mkdir");
    for i in 0..12 {
        fs::write(tree.join(format!("f{i}")), format!("content {i}")).expect("write");
        fs::write(tree.join("sub").join(format!("g{i}")), format!("more {i}")).expect("write");
    }
    // A dry run on a copy finds the main thread's renames: publishing the
    // metadata objects, and last the ref. (Content objects are published
    // before them on worker threads, each as a link and an unlink.)
    let dry = tmp.path().join("dry");
    ok(Command::new("cp").arg("-a").arg(&repo_path).arg(&dry));
    let trace = tmp.path().join("trace");
    assert!(
        commit_under_strace(&dry, &tree, None, &trace)
            .status
            .success()
    );
    let text = fs::read_to_string(&trace).expect("trace");
    let ref_line = text
        .lines()
        .find(|l| l.contains("refs/heads/main"))
        .expect("the ref is renamed into place");
    let main_pid = ref_line.split_whitespace().next().expect("pid");
    let main_renames: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(main_pid) && l.contains("rename("))
        .collect();
    let n = main_renames.len();
    let publish_start = main_renames
        .iter()
        .position(|l| l.contains("/objects/"))
        .expect("objects are published");
    // Kill: with everything staged (at the syncfs before publishing), at the
    // first content object's link, between a content object's link and the
    // unlink of its staged name (a worker's second unlink: the main thread
    // makes one, of a probe file, before publishing, and its next only after
    // the ref moved), at the first metadata object's publish, mid-way, at the
    // commit object's publish, and at the ref write. strace counts calls per
    // thread.
    let points = [
        ("syncfs", 1),
        ("linkat", 1),
        ("unlink", 2),
        ("rename", publish_start + 1),
        ("rename", (publish_start + 1).midpoint(n)),
        ("rename", n - 1),
        ("rename", n),
    ];
    let before = read_ref(&repo_path, "main");
    let staging = |repo: &Path| -> Vec<String> {
        fs::read_dir(repo.join("tmp"))
            .expect("tmp")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("depot-"))
            .collect()
    };
    for (syscall, k) in points {
        // Every kill starts from the same repository.
        let copy = tmp.path().join(format!("kill-{syscall}-{k}"));
        ok(Command::new("cp").arg("-a").arg(&repo_path).arg(&copy));
        let out = commit_under_strace(&copy, &tree, Some((syscall, k)), &trace);
        assert!(
            !out.status.success(),
            "the commit was not killed at {syscall} {k} (of {n} renames)"
        );
        assert_eq!(
            read_ref(&copy, "main"),
            before,
            "killed at {syscall} {k} (of {n} renames), yet the ref moved"
        );
        ok(ostree_in(&copy).arg("fsck"));
        ok(depot_in("fsck", &copy));
        // What the killed run left goes with the next transaction.
        assert!(
            !staging(&copy).is_empty(),
            "a run killed at {syscall} {k} leaves its staging behind"
        );
        ok(depot_in("commit", &copy).args(["--ref", "main"]).arg(&tree));
        assert!(
            staging(&copy).is_empty(),
            "leftovers after {syscall} {k}: {:?}",
            staging(&copy)
        );
        ok(ostree_in(&copy)
            .args(["checkout", "-U", "main"])
            .arg(tmp.path().join(format!("co-{syscall}-{k}"))));
    }
}

#[test]
fn depot_fsck_holds_off_prune_and_sees_no_problem_in_a_commit_landing_meanwhile() {
    let tmp = tempdir();
    let repo_path = small_repo(tmp.path());
    // strace holds fsck for 5 s when it opens refs/heads to read the refs;
    // a commit lands meanwhile. Had fsck listed the objects before reading
    // the refs, the new ref would name a commit the listing lacked.
    let heads = repo_path.join("refs/heads");
    let trace = tmp.path().join("strace.out");
    let fsck = Command::new("strace")
        .arg("-o")
        .arg(&trace)
        .arg("-P")
        .arg(&heads)
        .args([
            "-e",
            "trace=openat",
            "-e",
            "inject=openat:delay_enter=5000000",
        ])
        .arg(env!("CARGO_BIN_EXE_depot"))
        .args(["fsck", "--repo"])
        .arg(&repo_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run strace (apt-get install strace)");
    wait_until(
        "depot fsck to open refs/heads",
        Duration::from_secs(10),
        || {
            fs::read_to_string(&trace)
                .unwrap_or_default()
                .contains("refs/heads\", O_RDONLY")
        },
    );
    // It holds the shared lock, as pushes do: no prune meanwhile.
    wait_for_ofd_lock(&repo_path.join(".lock"), "READ");
    let err = fails(ostree_in(&repo_path).args(["prune", "--refs-only"]));
    assert!(err.contains("Locking repo exclusive failed"), "{err}");
    let tree = tmp.path().join("tree2");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("new"), "new").expect("write");
    ok(depot_in("commit", &repo_path)
        .args(["--ref", "landed"])
        .arg(&tree));
    let out = fsck.wait_with_output().expect("wait for fsck");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "fsck found problems that are not there:\n{}{said}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        said.contains("2 refs: 0 problems"),
        "fsck read the refs after the commit landed: {said}"
    );
}
