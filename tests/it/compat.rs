use std::fs;
use std::io::Read;

use crate::util::*;

/// Commits the rich tree with both tools and returns (ostree repo, depot repo, commit).
fn commit_both(
    tmp: &std::path::Path,
    extra: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let tree = tmp.join("tree");
    if !tree.exists() {
        rich_tree(&tree);
    }
    let (o, d) = (tmp.join("o"), tmp.join("d"));
    let _ = fs::remove_dir_all(&o);
    let _ = fs::remove_dir_all(&d);
    ok(ostree_in(&o).args(["init", "--mode=archive"]));
    ok(depot().arg("init").arg(&d));
    let mut oc = ostree_in(&o);
    oc.args([
        "commit",
        "-b",
        "main",
        "-s",
        "subject line",
        "--body=the body",
        "--timestamp=@1577836800",
    ]);
    let mut dc = depot_in("commit", &d);
    dc.args([
        "--ref",
        "main",
        "-s",
        "subject line",
        "--body",
        "the body",
        "--timestamp",
        "@1577836800",
    ]);
    for e in extra {
        oc.arg(e);
        dc.arg(match *e {
            "--no-bindings" => "--no-bind",
            other => other,
        });
    }
    let oc_sum = ok(oc.arg(&tree)).trim().to_string();
    let dc_sum = ok(dc.arg(&tree)).trim().to_string();
    assert_eq!(
        dc_sum, oc_sum,
        "depot and ostree commit checksums differ for options {extra:?}"
    );
    (o, d, dc_sum)
}

/// Splits a .filez into (header bytes, inflated payload).
fn filez_parts(path: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let data = fs::read(path).expect("read filez");
    let len = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let header = data[..8 + len].to_vec();
    let mut payload = Vec::new();
    // ostree stores a symlink's .filez as its header alone.
    if data.len() > 8 + len {
        flate2::read::DeflateDecoder::new(&data[8 + len..])
            .read_to_end(&mut payload)
            .expect("inflate");
    }
    (header, payload)
}

#[test]
fn commit_is_byte_identical_to_ostree_commit() {
    let tmp = tempdir();
    for extra in [
        &[][..],
        &[
            "--add-metadata-string=version=1.2.3",
            "--add-metadata-string=ci.job=42",
        ][..],
        &["--no-bindings", "--owner-uid=0", "--owner-gid=0"][..],
        &["--no-xattrs", "--owner-uid=1234", "--owner-gid=5678"][..],
    ] {
        let (o, d, _) = commit_both(tmp.path(), extra);
        let (ofiles, dfiles) = (object_files(&o), object_files(&d));
        assert_eq!(ofiles, dfiles, "object sets differ for {extra:?}");
        for f in &ofiles {
            let (op, dp) = (o.join("objects").join(f), d.join("objects").join(f));
            if f.rsplit_once('.').map(|(_, ext)| ext) == Some("filez") {
                assert_eq!(
                    filez_parts(&op),
                    filez_parts(&dp),
                    "{f}: header or payload differs"
                );
            } else {
                assert_eq!(
                    fs::read(&op).expect("read"),
                    fs::read(&dp).expect("read"),
                    "{f} differs"
                );
            }
            let mode = fs::metadata(&dp).expect("stat").permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o644,
                "{f} is not world-readable"
            );
        }
    }
}

#[test]
fn ostree_fscks_and_checks_out_depot_commits() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    rich_tree(&tree);
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    assert_eq!(
        fs::read_to_string(d.join("config")).expect("config"),
        "[core]\nrepo_version=1\nmode=archive-z2\n"
    );
    ok(depot_in("commit", &d)
        .args(["--ref", "proj/app/1", "-s", "build 1"])
        .arg(&tree));
    ok(ostree_in(&d).args(["fsck", "--verify-bindings"]));
    let co = tmp.path().join("co");
    ok(ostree_in(&d)
        .args(["checkout", "-U", "proj/app/1"])
        .arg(&co));
    assert_same_tree(&tree, &co, OSTREE_USER_MODE);
    // And depot's own checkout and cat agree.
    let co2 = tmp.path().join("co2");
    ok(depot_in("checkout", &d)
        .args(["--full-metadata", "proj/app/1"])
        .arg(&co2));
    assert_same_tree(&tree, &co2, full(tmp.path()));
    let co3 = tmp.path().join("co3");
    ok(depot_in("checkout", &d).arg("proj/app/1").arg(&co3));
    assert_same_tree(&tree, &co3, depot_default(tmp.path()));
    let big = ok(depot_in("cat", &d).args(["proj/app/1", "/names/ünïcode"]));
    assert_eq!(big, "ünïcode");
    let out = tmp.path().join("big.out");
    ok(depot_in("cat", &d)
        .args(["proj/app/1", "data/big.bin", "-o"])
        .arg(&out));
    assert_eq!(
        fs::read(&out).expect("read"),
        fs::read(tree.join("data/big.bin")).expect("read")
    );
    let via_ostree = run(ostree_in(&d).args(["cat", "proj/app/1", "/names/with space"]));
    assert_eq!(
        via_ostree.stdout, b"with space",
        "ostree cat finds names by binary search"
    );
}

#[test]
fn history_forms_and_ostree_log_shows_it() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).expect("mkdir");
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    let mut commits = Vec::new();
    for i in 1..=3 {
        fs::write(tree.join(format!("file{i}")), format!("{i}")).expect("write");
        let c = ok(depot_in("commit", &d)
            .args(["--ref", "main", "-s", &format!("commit {i}")])
            .arg(&tree));
        commits.push(c.trim().to_string());
    }
    let log = ok(ostree_in(&d).args(["log", "main"]));
    for c in &commits {
        assert!(log.contains(c), "ostree log lacks {c}:\n{log}");
    }
    assert_eq!(
        log.lines().filter(|l| l.starts_with("commit ")).count(),
        3,
        "{log}"
    );
    let diff = ok(ostree_in(&d).args(["diff", "main^", "main"]));
    assert_eq!(diff.trim(), "A    /file3");
    let dlog = ok(depot_in("log", &d).arg("main"));
    let positions: Vec<usize> = commits
        .iter()
        .rev()
        .map(|c| dlog.find(c.as_str()).expect("in depot log"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "depot log is newest first:\n{dlog}"
    );
    // --parent none makes a root commit; --parent CHECKSUM a chosen one.
    let orphan = ok(depot_in("commit", &d)
        .args(["--ref", "other", "--parent", "none"])
        .arg(&tree));
    assert!(!ok(ostree_in(&d).args(["log", orphan.trim()])).contains(&commits[2]));
    let chosen = ok(depot_in("commit", &d)
        .args(["--ref", "other2", "--parent", &commits[0]])
        .arg(&tree));
    assert!(ok(ostree_in(&d).args(["log", chosen.trim()])).contains(&commits[0]));
}

#[test]
fn ostree_pulls_depot_repo_over_http_into_bare_user() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    rich_tree(&tree);
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    ok(depot_in("commit", &d)
        .args(["--ref", "main", "-s", "pull me"])
        .arg(&tree));
    let server = HttpServer::serve(&d, tmp.path());
    let client = ostree_client(&tmp.path().join("client"), "bare-user", &server.url);
    ok(ostree_in(&client).args(["pull", "origin", "main"]));
    ok(ostree_in(&client).arg("fsck"));
    // Every request succeeded, or was a 404 that ostree tolerates: no summary
    // yet (depot-summary writes one), no detached metadata, no static deltas.
    let log = server.requests();
    for line in log.lines().filter(|l| l.contains("\"GET ")) {
        let tolerated = ["/summary", "/summary.sig", ".commitmeta", "/superblock"]
            .iter()
            .any(|p| line.contains(&format!("{p} HTTP")));
        assert!(
            line.contains("\" 200 ") || (line.contains("\" 404 ") && tolerated),
            "unexpected request: {line}"
        );
    }
    assert!(log.contains("GET /refs/heads/main HTTP"), "{log}");
    let co = tmp.path().join("co");
    ok(ostree_in(&client)
        .args(["checkout", "-U", "origin:main"])
        .arg(&co));
    assert_same_tree(&tree, &co, OSTREE_USER_MODE);
    // A mirror pull into an archive repository as well.
    let mirror = ostree_client(&tmp.path().join("mirror"), "archive", &server.url);
    ok(ostree_in(&mirror).args(["pull", "--mirror", "origin", "main"]));
    ok(ostree_in(&mirror).arg("fsck"));
}

#[test]
fn compression_level_comes_from_the_repository_config() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).expect("mkdir");
    let text = "a line of a compressible file, with some words in it\n".repeat(20_000);
    fs::write(tree.join("text"), &text).expect("write");
    let mut sizes = Vec::new();
    for level in ["1", "9"] {
        let d = tmp.path().join(format!("d{level}"));
        ok(depot().arg("init").arg(&d));
        let config = fs::read_to_string(d.join("config")).expect("config");
        fs::write(
            d.join("config"),
            format!("{config}[archive]\nzlib-level={level}\n"),
        )
        .expect("config");
        ok(depot_in("commit", &d).args(["--ref", "main"]).arg(&tree));
        ok(ostree_in(&d).arg("fsck"));
        let filez: Vec<String> = object_files(&d)
            .into_iter()
            .filter(|f| f.ends_with("filez"))
            .collect();
        sizes.push(
            fs::metadata(d.join("objects").join(&filez[0]))
                .expect("stat")
                .len(),
        );
    }
    assert!(
        sizes[0] > sizes[1],
        "level 1 ({}) should compress less than level 9 ({})",
        sizes[0],
        sizes[1]
    );
}

#[test]
fn checkout_does_not_grant_privileges_unless_asked() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("tool"), "#!/bin/sh\n").expect("write");
    fs::set_permissions(
        tree.join("tool"),
        std::os::unix::fs::PermissionsExt::from_mode(0o6755),
    )
    .expect("chmod");
    let xattrs = xattrs_supported(tmp.path());
    if xattrs {
        xattr::set(tree.join("tool"), "user.note", b"kept").expect("user xattr");
    }
    // trusted.* needs CAP_SYS_ADMIN: set it where the test runs as root (CI does).
    let trusted = xattr::set(tree.join("tool"), "trusted.depot-test", b"t").is_ok();
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    ok(depot_in("commit", &d).args(["--ref", "main"]).arg(&tree));
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).expect("stat").permissions())
            & 0o7777
    };
    let (plain, full_co) = (tmp.path().join("plain"), tmp.path().join("full"));
    ok(depot_in("checkout", &d).arg("main").arg(&plain));
    ok(depot_in("checkout", &d)
        .args(["main", "--full-metadata"])
        .arg(&full_co));
    assert_eq!(
        mode(&plain.join("tool")),
        0o755,
        "setuid and setgid are cleared by default"
    );
    assert_eq!(
        mode(&full_co.join("tool")),
        0o6755,
        "--full-metadata keeps them"
    );
    if xattrs {
        assert_eq!(
            xattr::get(plain.join("tool"), "user.note").expect("get"),
            Some(b"kept".to_vec())
        );
    }
    if trusted {
        assert_eq!(
            xattr::get(plain.join("tool"), "trusted.depot-test").expect("get"),
            None
        );
        assert_eq!(
            xattr::get(full_co.join("tool"), "trusted.depot-test").expect("get"),
            Some(b"t".to_vec())
        );
    }
}

#[test]
fn commit_refuses_what_ostree_cannot_store() {
    let tmp = tempdir();
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("ok"), "ok").expect("write");
    nix::unistd::mkfifo(
        &tree.join("a-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let err = fails(depot_in("commit", &d).args(["--ref", "main"]).arg(&tree));
    assert!(
        err.contains("a-fifo") && err.contains("named pipe"),
        "{err}"
    );
    fs::remove_file(tree.join("a-fifo")).expect("rm");
    let sock = std::os::unix::net::UnixListener::bind(tree.join("a-socket")).expect("bind");
    let err = fails(depot_in("commit", &d).args(["--ref", "main"]).arg(&tree));
    assert!(err.contains("a-socket") && err.contains("socket"), "{err}");
    drop(sock);
    fs::remove_file(tree.join("a-socket")).expect("rm");
    let bad = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"bad\xffname");
    fs::write(tree.join(bad), "x").expect("write");
    let err = fails(depot_in("commit", &d).args(["--ref", "main"]).arg(&tree));
    assert!(err.contains("not valid UTF-8"), "{err}");
    // Nothing was published by the failed commits.
    assert!(
        object_files(&d).is_empty(),
        "failed commits left objects: {:?}",
        object_files(&d)
    );
    assert!(
        fs::read_dir(d.join("tmp"))
            .expect("tmp")
            .flatten()
            .all(|e| e.file_name() == "cache")
    );
}
