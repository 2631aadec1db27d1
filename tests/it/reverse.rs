use std::fs;

use depot::repo::Repo;

use crate::util::*;

#[test]
fn depot_reads_what_ostree_wrote() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    rich_tree(&tree);
    let o = tmp.path().join("o");
    ok(ostree_in(&o).args(["init", "--mode=archive"]));
    ok(ostree_in(&o)
        .args([
            "commit",
            "-b",
            "release/v1",
            "-s",
            "from ostree",
            "--add-metadata-string=version=7.1",
            "--add-detached-metadata-string=signed-by=ci",
        ])
        .arg(&tree));
    fs::write(tree.join("hello.txt"), "changed\n").expect("write");
    ok(ostree_in(&o)
        .args(["commit", "-b", "release/v1", "-s", "second"])
        .arg(&tree));
    ok(ostree_in(&o).args(["summary", "-u"]));

    let fsck = run(depot_in("fsck", &o));
    assert!(
        fsck.status.success(),
        "depot fsck of an ostree repo: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let ls = ok(depot_in("ls", &o).arg("--json"));
    let rows: serde_json::Value = serde_json::from_str(&ls).expect("json");
    assert_eq!(rows[0]["ref"], "release/v1");
    assert_eq!(rows[0]["subject"], "second");
    let log = ok(depot_in("log", &o).arg("release/v1"));
    assert!(
        log.contains("Version: 7.1") && log.contains("second") && log.contains("from ostree"),
        "{log}"
    );
    assert_eq!(
        ok(depot_in("cat", &o).args(["release/v1", "/hello.txt"])),
        "changed\n"
    );
    assert_eq!(
        ok(depot_in("cat", &o).args(["release/v1^", "/hello.txt"])),
        "hello\n"
    );

    // Checkouts agree with ostree's own (which sets no xattrs and no setuid
    // bits), and --full-metadata restores everything the source had.
    let (dco, oco) = (tmp.path().join("dco"), tmp.path().join("oco"));
    ok(depot_in("checkout", &o)
        .args(["--full-metadata", "release/v1"])
        .arg(&dco));
    ok(ostree_in(&o)
        .args(["checkout", "-U", "release/v1"])
        .arg(&oco));
    assert_same_tree(&oco, &dco, OSTREE_USER_MODE);
    assert_same_tree(&tree, &dco, full(tmp.path()));

    // Bindings, version and detached metadata, through the library.
    let repo = Repo::open(&o).expect("open");
    let head = repo.resolve("release/v1").expect("resolve");
    let first = repo.resolve("release/v1^").expect("resolve parent");
    let commit = repo.load_commit(&first).expect("load");
    assert_eq!(commit.version(), Some("7.1"));
    assert_eq!(commit.ref_bindings(), Some(vec!["release/v1"]));
    let detached = repo
        .load_commitmeta(&first)
        .expect("commitmeta")
        .expect("present");
    assert_eq!(detached[0].0, "signed-by");
    assert_eq!(detached[0].1.as_str(), Some("ci"));
    assert!(repo.load_commitmeta(&head).expect("commitmeta").is_none());
}

#[test]
fn depot_decodes_the_summary_ostree_writes() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("f"), "f").expect("write");
    let o = tmp.path().join("o");
    ok(ostree_in(&o).args(["init", "--mode=archive"]));
    for r in ["b", "a/x", "c"] {
        ok(ostree_in(&o)
            .args(["commit", "-b", r, "--add-metadata-string=version=3"])
            .arg(&tree));
    }
    ok(ostree_in(&o).args(["summary", "-u", "-m", "extra='value'"]));
    let bytes = fs::read(o.join("summary")).expect("summary");
    let ty = depot::gvariant::Type::parse("(a(s(taya{sv}))a{sv})").expect("type");
    let v =
        depot::gvariant::from_normal_bytes(&ty, &bytes).expect("ostree's summary is normal form");
    // Re-encoding gives back ostree's exact bytes.
    assert_eq!(depot::gvariant::to_bytes(&v), bytes);
    let parts = v.as_tuple().expect("tuple");
    let refs = parts[0].as_array().expect("refs");
    let names: Vec<&str> = refs
        .iter()
        .map(|r| r.as_tuple().expect("entry")[0].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["a/x", "b", "c"]);
    for r in refs {
        let entry = r.as_tuple().expect("entry");
        let data = entry[1].as_tuple().expect("(taya{sv})");
        let depot::gvariant::Value::Uint64(size) = data[0] else {
            panic!("size is t")
        };
        let commit = read_ref(&o, entry[0].as_str().expect("name"));
        assert_eq!(data[1].as_bytes().map(hex::encode), Some(commit.clone()));
        // The commit size is little-endian, exact (ostree-format.md, finding 1).
        let on_disk =
            fs::metadata(o.join(format!("objects/{}/{}.commit", &commit[..2], &commit[2..])))
                .expect("stat")
                .len();
        assert_eq!(size, on_disk);
    }
    let extra = depot::gvariant::dict_from_value(parts[1].clone()).expect("a{sv}");
    assert!(
        extra
            .iter()
            .any(|(k, v)| k == "extra" && v.as_str() == Some("value"))
    );
    assert!(
        extra
            .iter()
            .any(|(k, v)| k == "ostree.summary.mode" && v.as_str() == Some("archive-z2"))
    );
}

#[test]
fn depot_refuses_repositories_it_cannot_serve() {
    let tmp = tempdir();
    let bare = tmp.path().join("bare");
    ok(ostree_in(&bare).args(["init", "--mode=bare-user"]));
    let err = fails(depot_in("ls", &bare));
    assert!(
        err.contains("bare-user") && err.contains("archive"),
        "{err}"
    );
    let err = fails(depot_in("ls", &tmp.path().join("nothing-here")));
    assert!(
        err.contains("not an ostree repository") && err.contains("depot init"),
        "{err}"
    );
    fs::create_dir_all(tmp.path().join("full")).expect("mkdir");
    fs::write(tmp.path().join("full/file"), "x").expect("write");
    let err = fails(depot().arg("init").arg(tmp.path().join("full")));
    assert!(err.contains("not empty"), "{err}");
}
