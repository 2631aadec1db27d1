//! Every corruption that ostree rejects is rejected by depot's reader and
//! reported by `depot fsck` (non-zero exit, one line naming the object).

use std::fs;
use std::path::{Path, PathBuf};

use depot::checksum::Checksum;
use depot::gvariant::{self, Type, Value};
use depot::object::{Commit, ObjectName, ObjectType};
use depot::repo::Repo;

use crate::util::*;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    commit: Checksum,
}

/// A depot repository holding `main` with a few files, a subdirectory and a
/// file large enough to truncate meaningfully.
fn fixture() -> Fixture {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("sub")).expect("mkdir");
    fs::write(tree.join("a"), "aaa").expect("write");
    fs::write(tree.join("b"), "bbb").expect("write");
    fs::write(tree.join("sub/c"), vec![7u8; 100_000]).expect("write");
    let repo = dir.join("repo");
    ok(depot().arg("init").arg(&repo));
    let commit = ok(depot_in("commit", &repo)
        .args(["--ref", "main", "-s", "fixture"])
        .arg(&tree));
    Fixture {
        _tmp: tmp,
        dir,
        repo,
        commit: commit.trim().parse().expect("checksum"),
    }
}

fn path_of(repo: &Path, checksum: &Checksum, kind: ObjectType) -> PathBuf {
    repo.join(ObjectName::new(*checksum, kind).relative_path())
}

/// Writes raw bytes as a metadata object under their own checksum.
fn put_object(repo: &Path, kind: ObjectType, bytes: &[u8]) -> Checksum {
    let c = Checksum::of(bytes);
    let p = path_of(repo, &c, kind);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(&p, bytes).expect("write object");
    c
}

fn set_ref(repo: &Path, name: &str, c: &Checksum) {
    fs::write(repo.join("refs/heads").join(name), format!("{c}\n")).expect("write ref");
}

/// Runs `depot fsck`, which must fail and name `needle` and `why` on one line.
fn fsck_reports(repo: &Path, needle: &str, why: &str) {
    let out = run(depot_in("fsck", repo));
    assert!(
        !out.status.success(),
        "depot fsck passed on a corrupt repository"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains(needle) && l.contains(why)),
        "depot fsck did not report {needle:?} with {why:?}:\n{text}"
    );
}

fn content_of(repo: &Repo, commit: &Checksum, name: &str) -> Checksum {
    let c = repo.load_commit(commit).expect("commit");
    *repo
        .load_dirtree(&c.root_tree)
        .expect("tree")
        .file(name)
        .expect("file")
}

#[test]
fn flipped_padding_byte_is_not_normal_form() {
    let f = fixture();
    let bytes = fs::read(path_of(&f.repo, &f.commit, ObjectType::Commit)).expect("read");
    // "ostree.ref-binding\0" is 19 bytes; bytes 19..24 pad the variant to 8.
    assert_eq!(&bytes[..19], b"ostree.ref-binding\0");
    let mut bad = bytes.clone();
    bad[20] = 1;
    let c = put_object(&f.repo, ObjectType::Commit, &bad);
    set_ref(&f.repo, "main", &c);
    // ostree's pull checks normal form (its fsck does not).
    let server = HttpServer::serve(&f.repo, &f.dir);
    let client = ostree_client(&f.dir.join("client"), "archive", &server.url);
    let err = fails(ostree_in(&client).args(["pull", "origin", "main"]));
    assert!(err.contains("Not normal form"), "{err}");
    // depot's reader refuses it too.
    assert!(Commit::parse(&bad).is_err());
    let err = fails(
        depot_in("checkout", &f.repo)
            .arg("main")
            .arg(f.dir.join("co")),
    );
    assert!(
        err.contains("not in normal form") && err.contains(&c.to_string()),
        "{err}"
    );
    fsck_reports(&f.repo, &c.to_string()[2..], "not in normal form");
}

#[test]
fn wrong_checksum_is_reported() {
    let f = fixture();
    let repo = Repo::open(&f.repo).expect("open");
    let root = repo.load_commit(&f.commit).expect("commit").root_tree;
    let p = path_of(&f.repo, &root, ObjectType::DirTree);
    let mut bytes = fs::read(&p).expect("read");
    // Rename file "a" to "0": still sorted, still valid, but not what the name says.
    assert_eq!(bytes[0], b'a');
    bytes[0] = b'0';
    fs::write(&p, &bytes).expect("write");
    let err = fails(ostree_in(&f.repo).arg("fsck"));
    assert!(
        err.contains("Corrupted") || err.contains("corrupted"),
        "{err}"
    );
    let err = fails(
        depot_in("checkout", &f.repo)
            .arg("main")
            .arg(f.dir.join("co")),
    );
    assert!(err.contains("hashes to"), "{err}");
    fsck_reports(&f.repo, &root.to_string()[2..], "hashes to");
}

#[test]
fn truncated_object_is_reported() {
    let f = fixture();
    let repo = Repo::open(&f.repo).expect("open");
    let c = repo.load_commit(&f.commit).expect("commit");
    let sub = repo
        .load_dirtree(&c.root_tree)
        .expect("tree")
        .dir("sub")
        .expect("sub")
        .tree;
    let file = *repo
        .load_dirtree(&sub)
        .expect("sub tree")
        .file("c")
        .expect("c");
    let p = path_of(&f.repo, &file, ObjectType::File);
    let len = fs::metadata(&p).expect("stat").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    fails(ostree_in(&f.repo).arg("fsck"));
    let err = fails(depot_in("cat", &f.repo).args(["main", "/sub/c"]));
    assert!(err.contains(&file.to_string()), "{err}");
    fsck_reports(&f.repo, &file.to_string()[2..], "incomplete deflate stream");
}

#[test]
fn unsorted_dirtree_is_refused() {
    let f = fixture();
    let repo = Repo::open(&f.repo).expect("open");
    let commit = repo.load_commit(&f.commit).expect("commit");
    let (a, b) = (
        content_of(&repo, &f.commit, "a"),
        content_of(&repo, &f.commit, "b"),
    );
    // (a(say)a(sayay)) with "b" before "a": valid GVariant, wrong order.
    let entry = |n: &'static str, c: &Checksum| {
        Value::Tuple(vec![
            Value::str(n),
            Value::Bytes(c.as_bytes().to_vec().into()),
        ])
    };
    let unsorted = Value::Tuple(vec![
        Value::Array(
            Type::parse("(say)").expect("type"),
            vec![entry("b", &b), entry("a", &a)],
        ),
        Value::Array(Type::parse("(sayay)").expect("type"), vec![]),
    ]);
    let tree = put_object(&f.repo, ObjectType::DirTree, &gvariant::to_bytes(&unsorted));
    let bad = Commit {
        root_tree: tree,
        parent: None,
        ..commit
    };
    let c = put_object(&f.repo, ObjectType::Commit, &bad.to_bytes());
    set_ref(&f.repo, "main", &c);
    // ostree's fsck passes it, but its binary search cannot find "a".
    ok(ostree_in(&f.repo).arg("fsck"));
    let err = fails(ostree_in(&f.repo).args(["cat", "main", "/a"]));
    assert!(err.contains("No such file"), "{err}");
    let err = fails(depot_in("cat", &f.repo).args(["main", "/a"]));
    assert!(err.contains("not sorted"), "{err}");
    fsck_reports(&f.repo, &tree.to_string()[2..], "not sorted");
}

#[test]
fn wrong_filez_size_is_reported() {
    let f = fixture();
    let repo = Repo::open(&f.repo).expect("open");
    let file = content_of(&repo, &f.commit, "a");
    let p = path_of(&f.repo, &file, ObjectType::File);
    let mut bytes = fs::read(&p).expect("read");
    // The payload size is the header's first member, big-endian, at byte 8.
    assert_eq!(
        u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
        3
    );
    bytes[15] = 4;
    fs::write(&p, &bytes).expect("write");
    // Only a pull into a bare-user repository catches this in ostree.
    let server = HttpServer::serve(&f.repo, &f.dir);
    let client = ostree_client(&f.dir.join("client"), "bare-user", &server.url);
    let err = fails(ostree_in(&client).args(["pull", "origin", "main"]));
    assert!(err.contains("Unexpected EOF"), "{err}");
    let err = fails(depot_in("cat", &f.repo).args(["main", "/a"]));
    assert!(err.contains("header says 4"), "{err}");
    fsck_reports(&f.repo, &file.to_string()[2..], "header says 4");
}

#[test]
fn missing_object_is_reported_with_its_path() {
    let f = fixture();
    let repo = Repo::open(&f.repo).expect("open");
    let file = content_of(&repo, &f.commit, "b");
    fs::remove_file(path_of(&f.repo, &file, ObjectType::File)).expect("rm");
    fails(ostree_in(&f.repo).arg("fsck"));
    let err = fails(
        depot_in("checkout", &f.repo)
            .arg("main")
            .arg(f.dir.join("co")),
    );
    assert!(err.contains("missing"), "{err}");
    fsck_reports(&f.repo, &file.to_string()[2..], "/b) is missing");
    // A ref to a commit that is not there at all.
    set_ref(&f.repo, "ghost", &Checksum::of(b"nothing"));
    fsck_reports(&f.repo, "ref ghost", "missing");
}
