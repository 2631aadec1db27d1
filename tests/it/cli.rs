use std::fs;

use crate::util::*;

#[test]
fn errors_name_the_thing_and_what_to_do() {
    let tmp = tempdir();
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    let err = fails(depot_in("log", &d).arg("nope"));
    assert!(
        err.contains("ref nope does not exist") && err.contains("depot ls"),
        "{err}"
    );
    let err = fails(
        depot_in("commit", &d)
            .args(["--ref", "../evil"])
            .arg(tmp.path()),
    );
    assert!(err.contains("must start with a letter"), "{err}");
    let err = fails(
        depot_in("commit", &d)
            .args(["--ref", "x", "--timestamp", "yesterday"])
            .arg(tmp.path()),
    );
    assert!(err.contains("seconds since 1970"), "{err}");
    let err = fails(
        depot_in("commit", &d)
            .args(["--ref", "x"])
            .arg(tmp.path().join("missing")),
    );
    assert!(err.contains("missing"), "{err}");
    fs::create_dir_all(tmp.path().join("t/sub")).expect("mkdir");
    fs::write(tmp.path().join("t/f"), "f").expect("write");
    ok(depot_in("commit", &d)
        .args(["--ref", "x"])
        .arg(tmp.path().join("t")));
    let err = fails(depot_in("cat", &d).args(["x", "/sub"]));
    assert!(err.contains("a directory"), "{err}");
    let err = fails(depot_in("cat", &d).args(["x", "/nope"]));
    assert!(err.contains("/nope is not in commit"), "{err}");
    let err = fails(depot_in("checkout", &d).arg("x").arg(tmp.path().join("t")));
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn ls_lists_refs_with_commit_time_and_subject() {
    let tmp = tempdir();
    let d = tmp.path().join("d");
    ok(depot().arg("init").arg(&d));
    fs::create_dir_all(tmp.path().join("t")).expect("mkdir");
    for r in ["b/2", "a", "b/1"] {
        ok(depot_in("commit", &d)
            .args([
                "--ref",
                r,
                "-s",
                &format!("subject {r}"),
                "--timestamp",
                "2021-03-04T05:06:07Z",
            ])
            .arg(tmp.path().join("t")));
    }
    let table = ok(depot_in("ls", &d));
    let names: Vec<&str> = table
        .lines()
        .map(|l| l.split('\t').next().unwrap_or(""))
        .collect();
    assert_eq!(names, ["a", "b/1", "b/2"]);
    assert!(
        table.contains("2021-03-04T05:06:07Z\tsubject b/1"),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(depot_in("ls", &d).arg("--json"))).expect("json");
    assert_eq!(json[1]["ref"], "b/1");
    assert_eq!(json[1]["timestamp"], 1_614_834_367);
    assert_eq!(json[1]["commit"].as_str().map(str::len), Some(64));
}

#[test]
fn a_restrictive_umask_leaves_the_repository_servable_and_the_state_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempdir();
    let repo = tmp.path().join("repo");
    ok(depot().arg("init").arg(&repo));
    fs::create_dir_all(tmp.path().join("t")).expect("mkdir");
    fs::write(tmp.path().join("t/f"), "x").expect("write");
    let state = tmp.path().join("state");
    ok(std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_depot"))
        .args(["push", "--no-progress", "--to"])
        .arg(&repo)
        .args(["--ref", "proj/a/1"])
        .arg(tmp.path().join("t"))
        .env("XDG_STATE_HOME", &state));
    let mode = |p: &std::path::Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    for entry in walkdir::WalkDir::new(repo.join("objects"))
        .into_iter()
        .chain(walkdir::WalkDir::new(repo.join("refs/heads")))
    {
        let entry = entry.expect("walk");
        let want = if entry.file_type().is_dir() {
            0o755
        } else {
            0o644
        };
        if entry.depth() > 0 {
            assert_eq!(
                mode(entry.path()),
                want,
                "{} is not readable by a web server",
                entry.path().display()
            );
        }
    }
    assert_eq!(mode(&state.join("depot")), 0o700);
    assert_eq!(mode(&state.join("depot/audit.jsonl")), 0o600);
}
