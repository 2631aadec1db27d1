//! `depot-summary` against `ostree summary -u`, and the real ostree reading
//! what it writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use depot::gvariant::{self, Type, Value};

use crate::util::*;

fn depot_summary(repo: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_depot-summary"));
    c.arg("--repo").arg(repo).arg("--state-dir").arg(state);
    c
}

/// A repository with nested refs, versions and shared trees, made by depot.
fn repo_with_refs(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("sub")).expect("mkdir");
    fs::write(tree.join("a"), "a").expect("write");
    let repo = dir.join("repo");
    ok(depot().arg("init").arg(&repo));
    for (r, version) in [
        ("main", Some("1.0")),
        ("proj/linux/1", None),
        ("proj/linux/2", Some("2.0-rc")),
        ("B", None),
        ("a-b.c_d", None),
    ] {
        fs::write(tree.join("sub/n"), r).expect("write");
        let mut c = depot_in("commit", &repo);
        c.args(["--ref", r, "-s", &format!("subject {r}")]);
        if let Some(v) = version {
            c.args(["--add-metadata-string", &format!("version={v}")]);
        }
        ok(c.arg(&tree));
    }
    repo
}

/// The summary as a value, with last-modified (a clock reading) blanked.
fn decoded(path: &Path) -> Value<'static> {
    let bytes = fs::read(path).expect("read summary");
    let ty = Type::parse("(a(s(taya{sv}))a{sv})").expect("type");
    let v = gvariant::from_normal_bytes(&ty, &bytes)
        .expect("normal form")
        .into_owned();
    let Value::Tuple(mut parts) = v else {
        panic!("tuple")
    };
    let extra = gvariant::dict_from_value(parts.pop().expect("extra")).expect("a{sv}");
    let extra: Vec<(String, Value<'static>)> = extra
        .into_iter()
        .map(|(k, v)| {
            if k == "ostree.summary.last-modified" {
                (k, Value::Uint64(0))
            } else {
                (k, v)
            }
        })
        .collect();
    parts.push(gvariant::dict_to_value(&extra));
    Value::Tuple(parts)
}

#[test]
fn summary_matches_ostree_summary_u() {
    let tmp = tempdir();
    let repo = repo_with_refs(tmp.path());
    let theirs = tmp.path().join("theirs");
    ok(Command::new("cp").arg("-a").arg(&repo).arg(&theirs));
    ok(ostree_in(&theirs).args(["summary", "-u"]));
    ok(depot_summary(&repo, &tmp.path().join("state")));
    assert_eq!(
        decoded(&repo.join("summary")),
        decoded(&theirs.join("summary"))
    );
    // Same length too: only the last-modified bytes can differ.
    assert_eq!(
        fs::metadata(repo.join("summary")).expect("stat").len(),
        fs::metadata(theirs.join("summary")).expect("stat").len()
    );
    let view = ok(ostree_in(&repo).args(["summary", "--view"]));
    assert!(
        view.contains("* proj/linux/2") && view.contains("Version (ostree.commit.version): 2.0-rc"),
        "{view}"
    );
}

#[test]
fn ostree_pulls_and_lists_through_the_summary() {
    let tmp = tempdir();
    let repo = repo_with_refs(tmp.path());
    ok(depot_summary(&repo, &tmp.path().join("state")));
    let server = HttpServer::serve(&repo, tmp.path());
    let mirror = ostree_client(&tmp.path().join("mirror"), "archive", &server.url);
    let refs = ok(ostree_in(&mirror).args(["remote", "refs", "origin"]));
    let mut listed: Vec<&str> = refs.lines().collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "origin:B",
            "origin:a-b.c_d",
            "origin:main",
            "origin:proj/linux/1",
            "origin:proj/linux/2"
        ]
    );
    ok(ostree_in(&mirror).args(["pull", "--mirror", "origin"]));
    ok(ostree_in(&mirror).arg("fsck"));
    let client = ostree_client(&tmp.path().join("client"), "bare-user", &server.url);
    ok(ostree_in(&client).args(["pull", "origin", "proj/linux/2"]));
    ok(ostree_in(&client).arg("fsck"));
}

#[test]
fn nothing_changed_means_nothing_written() {
    let tmp = tempdir();
    let repo = repo_with_refs(tmp.path());
    let state = tmp.path().join("state");
    let first = ok(depot_summary(&repo, &state).arg("--json"));
    assert!(first.contains("\"written\":true"), "{first}");
    let before = fs::metadata(repo.join("summary")).expect("stat");
    let again = ok(depot_summary(&repo, &state).arg("--json"));
    assert!(again.contains("\"written\":false"), "{again}");
    let after = fs::metadata(repo.join("summary")).expect("stat");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::ino(&before),
            before.modified().ok()
        ),
        (
            std::os::unix::fs::MetadataExt::ino(&after),
            after.modified().ok()
        )
    );
    // --force rewrites; a new ref is noticed; a deleted summary is rewritten.
    assert!(
        ok(depot_summary(&repo, &state).args(["--force", "--json"])).contains("\"written\":true")
    );
    ok(depot_in("commit", &repo)
        .args(["--ref", "proj/new"])
        .arg(tmp.path().join("tree")));
    assert!(ok(depot_summary(&repo, &state).arg("--json")).contains("\"refs\":6"));
    fs::remove_file(repo.join("summary")).expect("rm");
    assert!(ok(depot_summary(&repo, &state).arg("--json")).contains("\"written\":true"));
    assert!(repo.join("summary").exists());
}

#[test]
fn incomplete_commits_are_not_listed_and_stale_signatures_go() {
    let tmp = tempdir();
    let repo = repo_with_refs(tmp.path());
    // Break proj/linux/1: remove its commit's root dirtree.
    let commit = read_ref(&repo, "proj/linux/1");
    let r = depot::repo::Repo::open(&repo).expect("open");
    let c = r
        .load_commit(&commit.parse().expect("checksum"))
        .expect("commit");
    let tree = r.object_path(&depot::object::ObjectName::new(
        c.root_tree,
        depot::object::ObjectType::DirTree,
    ));
    fs::remove_file(tree).expect("rm");
    fs::write(repo.join("summary.sig"), "stale").expect("sig");
    let out = run(depot_summary(&repo, &tmp.path().join("state")));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proj/linux/1") && err.contains("missing"),
        "{err}"
    );
    assert!(
        !repo.join("summary.sig").exists(),
        "a stale signature was left beside the new summary"
    );
    let view = ok(ostree_in(&repo).args(["summary", "--view"]));
    assert!(
        !view.contains("proj/linux/1") && view.contains("proj/linux/2"),
        "{view}"
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("index.json")).expect("index")).expect("json");
    let names: Vec<&str> = index["refs"]
        .as_array()
        .expect("refs")
        .iter()
        .map(|r| r["ref"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["B", "a-b.c_d", "main", "proj/linux/2"]);
    assert_eq!(index["refs"][2]["version"], "1.0");
    assert_eq!(
        index["refs"][2]["size"], 5,
        "content bytes: a (1) and sub/n (\"main\", 4)"
    );
    let html = fs::read_to_string(repo.join("index.html")).expect("html");
    assert!(
        html.contains("proj/linux/2") && html.contains("subject main"),
        "{html}"
    );
}

#[test]
fn concurrent_runs_serialise_and_agree() {
    let tmp = tempdir();
    let repo = repo_with_refs(tmp.path());
    let children: Vec<_> = (0..4)
        .map(|i| {
            depot_summary(&repo, &tmp.path().join(format!("state{i}")))
                .arg("--force")
                .spawn()
                .expect("spawn depot-summary")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success());
    }
    let theirs = tmp.path().join("theirs");
    ok(Command::new("cp").arg("-a").arg(&repo).arg(&theirs));
    ok(ostree_in(&theirs).args(["summary", "-u"]));
    assert_eq!(
        decoded(&repo.join("summary")),
        decoded(&theirs.join("summary"))
    );
}
