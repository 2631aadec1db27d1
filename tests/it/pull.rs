//! `depot ls URL` and `depot pull` against a static HTTP server, from
//! repositories depot and ostree wrote, honest and hostile.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// A depot repository with one pushed ref and a summary, and its tree.
fn served_repo(dir: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("tree");
    rich_tree(&tree);
    let repo = dir.join("repo");
    ok(depot().arg("init").arg(&repo));
    ok(depot()
        .args(["push", "--no-progress", "--to"])
        .arg(&repo)
        .args(["--ref", "proj/x", "-s", "build"])
        .arg(&tree));
    ok(Command::new(env!("CARGO_BIN_EXE_depot-summary"))
        .arg("--repo")
        .arg(&repo)
        .arg("--state-dir")
        .arg(dir.join("state")));
    (repo, tree)
}

fn pull(url: &str, r: &str, cache: &Path) -> Command {
    let mut c = depot();
    c.args(["pull", url, r]).arg("--cache").arg(cache);
    c
}

/// Flips a bit near the end of a content object of `repo` (one over 200
/// bytes, so the flip lands in its compressed payload). Returns its path and
/// its bytes as they were.
fn damage_a_content_object(repo: &Path) -> (PathBuf, Vec<u8>) {
    let path = walkdir::WalkDir::new(repo.join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| {
            e.path().extension().is_some_and(|x| x == "filez")
                && e.metadata().is_ok_and(|m| m.len() > 200)
        })
        .expect("a content object")
        .into_path();
    let good = fs::read(&path).expect("read");
    let mut bytes = good.clone();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).expect("write");
    (path, good)
}

/// The object paths requested from the server.
fn object_requests(server: &HttpServer) -> Vec<String> {
    server
        .requests()
        .lines()
        .filter_map(|l| l.split("\"GET /").nth(1))
        .filter_map(|l| l.split(' ').next())
        .filter(|p| p.starts_with("objects/"))
        .map(str::to_string)
        .collect()
}

#[test]
fn pull_checks_out_what_was_pushed_and_resumes_from_its_cache() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let server = HttpServer::serve(&repo, tmp.path());
    let listed = ok(depot().args(["ls", &server.url, "--json"]));
    let rows: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(rows[0]["ref"], "proj/x");
    assert_eq!(rows[0]["commit"], read_ref(&repo, "proj/x"));
    let cache = tmp.path().join("cache");
    // What a killed pull into co left (its lock file is free), and what a
    // running one is building (its lock is held): only the first goes.
    let abandoned = tmp.path().join(".co.depot-pull-killed");
    let running = tmp.path().join(".co.depot-pull-running");
    let lock_of = |dir: &Path| tmp.path().join(format!("{}.lock", dir.display()));
    for dir in [&abandoned, &running] {
        fs::create_dir_all(dir.join("half")).expect("mkdir");
        fs::write(dir.join("half/file"), "partial").expect("write");
        fs::write(lock_of(dir), "").expect("lock file");
    }
    let held = depot::repo::lock::lock(
        &lock_of(&running),
        depot::repo::LockMode::Exclusive,
        depot::repo::Wait::Immediately,
    )
    .expect("lock");
    let out = ok(pull(&server.url, "proj/x", &cache)
        .arg(tmp.path().join("co"))
        .arg("--json"));
    assert!(!abandoned.exists() && !lock_of(&abandoned).exists());
    assert!(running.exists(), "a live pull's checkout was removed");
    drop(held);
    assert_same_tree(&tree, &tmp.path().join("co"), depot_default(tmp.path()));
    let outcome: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(outcome["commit"], read_ref(&repo, "proj/x"));
    let first = object_requests(&server).len();
    assert!(first > 300, "{first} objects fetched");
    // Everything is in the cache now: a second pull fetches no object.
    ok(pull(&server.url, "proj/x", &cache).arg(tmp.path().join("co2")));
    assert_eq!(
        object_requests(&server).len(),
        first,
        "objects were fetched again"
    );
    assert_same_tree(&tree, &tmp.path().join("co2"), depot_default(tmp.path()));
    ok(ostree_in(&cache).arg("fsck"));
    // A damaged object in the cache is fetched again, not a dead end.
    let (damaged, _) = damage_a_content_object(&cache);
    ok(pull(&server.url, "proj/x", &cache).arg(tmp.path().join("co3")));
    assert_same_tree(&tree, &tmp.path().join("co3"), depot_default(tmp.path()));
    let again = object_requests(&server).split_off(first);
    let name = damaged
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        again.len() == 1 && again[0].ends_with(&name),
        "fetched again: {again:?}"
    );
    ok(ostree_in(&cache).arg("fsck"));
}

#[test]
fn one_file_fetches_only_its_path() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let server = HttpServer::serve(&repo, tmp.path());
    let out = tmp.path().join("leaf");
    ok(pull(&server.url, "proj/x", &tmp.path().join("cache"))
        .args(["--path", "/deep/a/b/c/d/e/f/g/h/i/j/leaf", "-o"])
        .arg(&out));
    assert_eq!(
        fs::read(&out).expect("read"),
        fs::read(tree.join("deep/a/b/c/d/e/f/g/h/i/j/leaf")).expect("read")
    );
    // The commit, the 12 dirtrees on the way (root, deep, a to j), and the file.
    let fetched = object_requests(&server);
    let count = |kind: &str| {
        fetched
            .iter()
            .filter(|p| p.rsplit_once('.').is_some_and(|(_, ext)| ext == kind))
            .count()
    };
    assert_eq!(
        (count("commit"), count("dirtree"), count("filez")),
        (1, 12, 1),
        "{fetched:?}"
    );
    assert_eq!(fetched.len(), 14, "{fetched:?}");
}

#[test]
fn pulls_what_ostree_wrote_and_agrees_with_ostree() {
    let tmp = tempdir();
    let tree = tmp.path().join("tree");
    rich_tree(&tree);
    let repo = tmp.path().join("o");
    ok(ostree_in(&repo).args(["init", "--mode=archive"]));
    ok(ostree_in(&repo)
        .args(["commit", "-b", "main", "--add-metadata-string=version=3"])
        .arg(&tree));
    ok(ostree_in(&repo).args(["summary", "-u"]));
    let server = HttpServer::serve(&repo, tmp.path());
    let listed = ok(depot().args(["ls", &server.url]));
    assert!(
        listed.starts_with(&format!("main\t{}", read_ref(&repo, "main")))
            && listed.trim_end().ends_with('3'),
        "{listed}"
    );
    ok(pull(&server.url, "main", &tmp.path().join("cache")).arg(tmp.path().join("co")));
    let oco = tmp.path().join("oco");
    ok(ostree_in(&repo).args(["checkout", "-U", "main"]).arg(&oco));
    assert_same_tree(&oco, &tmp.path().join("co"), OSTREE_USER_MODE);
}

#[test]
fn without_a_summary_refs_come_from_refs_heads() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    fs::remove_file(repo.join("summary")).expect("rm");
    // A ref listed but gone when asked for (here a dangling link) is left out.
    std::os::unix::fs::symlink("deleted", repo.join("refs/heads/gone")).expect("symlink");
    let server = HttpServer::serve(&repo, tmp.path());
    let listed = ok(depot().args(["ls", &server.url]));
    assert!(listed.starts_with("proj/x\t"), "{listed}");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    ok(pull(&server.url, "proj/x", &tmp.path().join("cache")).arg(tmp.path().join("co")));
    assert_same_tree(&tree, &tmp.path().join("co"), depot_default(tmp.path()));
    let err = fails(
        pull(&server.url, "proj/none", &tmp.path().join("cache")).arg(tmp.path().join("co2")),
    );
    assert!(
        err.contains("proj/none") && err.contains("depot ls"),
        "{err}"
    );
}

#[test]
fn a_lying_server_is_caught_nothing_is_checked_out_and_the_pull_resumes() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let server = HttpServer::serve(&repo, tmp.path());
    // One content object changed on the server.
    let (victim, good) = damage_a_content_object(&repo);
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let dest = tmp.path().join("co");
    let err = fails(pull(&server.url, "proj/x", &tmp.path().join("cache")).arg(&dest));
    assert!(
        err.contains(&name[..20]) && err.contains(&server.url),
        "{err}"
    );
    assert!(!dest.exists(), "a partial checkout was left at {dest:?}");
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("depot-pull"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // An existing empty directory is replaced by the finished checkout, so a
    // failure leaves it empty.
    let in_place = tmp.path().join("mounted");
    fs::create_dir(&in_place).expect("mkdir");
    fails(pull(&server.url, "proj/x", &tmp.path().join("cache3")).arg(&in_place));
    assert_eq!(fs::read_dir(&in_place).expect("list").count(), 0);
    // The server mended, the same pull resumes: what was verified before the
    // failure is not fetched again.
    fs::write(&victim, &good).expect("write");
    let before = object_requests(&server).len();
    ok(pull(&server.url, "proj/x", &tmp.path().join("cache")).arg(&dest));
    assert_same_tree(&tree, &dest, depot_default(tmp.path()));
    let again = object_requests(&server).split_off(before);
    let files_in_commit = walkdir::WalkDir::new(repo.join("objects"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "filez"))
        .count();
    assert!(
        again
            .iter()
            .all(|p| p.rsplit_once('.').is_some_and(|(_, ext)| ext == "filez")),
        "metadata fetched again: {again:?}"
    );
    assert!(again.iter().any(|p| p.ends_with(&name)), "{again:?}");
    assert!(
        again.len() < files_in_commit,
        "{} of {files_in_commit} content objects fetched again",
        again.len()
    );
    // A summary that understates the commit's size (the check ostree makes).
    let summary = repo.join("summary");
    let mut s = fs::read(&summary).expect("summary");
    // "proj/x\0" then padding to 8, then the little-endian commit size.
    assert_eq!(&s[..7], b"proj/x\0");
    s[8..16].copy_from_slice(&10u64.to_le_bytes());
    fs::write(&summary, &s).expect("write");
    let cache2 = tmp.path().join("cache2");
    let err = fails(pull(&server.url, "proj/x", &cache2).arg(tmp.path().join("co2")));
    assert!(err.contains(".commit") && err.contains("10"), "{err}");
    // The commit was never stored, so it is not marked partial either.
    assert_eq!(names_in(&cache2.join("state")), Vec::<String>::new());
    // A summary that is not in normal form.
    s[7] = 1;
    fs::write(&summary, &s).expect("write");
    let err = fails(depot().args(["ls", &server.url]));
    assert!(
        err.contains("summary") && err.contains("normal form"),
        "{err}"
    );
}

/// Runs openssl with `args`, failing the test with the output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    ok(Command::new("openssl").args(args).current_dir(dir));
}

#[test]
fn https_with_a_private_ca_works_only_when_given_its_certificate() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let tls = tmp.path().join("tls");
    fs::create_dir_all(&tls).expect("mkdir");
    // A private CA, and a server certificate it signs for 127.0.0.1.
    openssl(
        &tls,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=depot test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        &tls,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    fs::write(
        tls.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        &tls,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "server.pem",
        ],
    );
    let port = free_port();
    // The same repository over plain http, where /to-http/ redirects.
    let plain = HttpServer::serve(&repo, tmp.path());
    let root = ok(Command::new("id").arg("-u")).trim() == "0";
    let conf = format!(
        "{user}\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {dir}/b; proxy_temp_path {dir}/p; fastcgi_temp_path {dir}/f; \
         uwsgi_temp_path {dir}/u; scgi_temp_path {dir}/s;\n  server {{ listen 127.0.0.1:{port} ssl; \
         ssl_certificate {dir}/server.pem; ssl_certificate_key {dir}/server.key; root {repo}; \
         location ~ ^/to-http/(.*)$ {{ return 302 {plain}/$1; }} }} }}\n",
        plain = plain.url,
        user = if root { "user root;" } else { "" },
        dir = tls.display(),
        repo = repo.display(),
    );
    fs::write(tls.join("nginx.conf"), conf).expect("conf");
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let mut server = Command::new(nginx)
        .arg("-c")
        .arg(tls.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx (scripts/test.sh installs it)");
    wait_until(
        "nginx listening",
        std::time::Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let url = format!("https://127.0.0.1:{port}");
    let ca = tls.join("ca.pem");
    // Not trusted without the CA: refused, and the error says why.
    let err = fails(depot().args(["ls", &url]));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Trusted with it.
    assert!(ok(depot().args(["ls", &url, "--cacert"]).arg(&ca)).starts_with("proj/x\t"));
    ok(pull(&url, "proj/x", &tmp.path().join("cache"))
        .arg(tmp.path().join("co"))
        .arg("--cacert")
        .arg(&ca));
    assert_same_tree(&tree, &tmp.path().join("co"), depot_default(tmp.path()));
    // A redirect from https to plain http is not followed, though the
    // repository is there.
    assert!(ok(depot().args(["ls", &plain.url])).starts_with("proj/x\t"));
    let err = fails(
        depot()
            .args(["ls", &format!("{url}/to-http"), "--cacert"])
            .arg(&ca),
    );
    assert!(err.contains("refusing to leave https"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_file_url_reads_a_local_repository_as_a_server_would_serve_it() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let url = format!("file://{}", repo.display());
    assert!(
        ok(depot().args(["ls", &url]))
            .starts_with(&format!("proj/x\t{}", read_ref(&repo, "proj/x")))
    );
    let co = tmp.path().join("co");
    ok(pull(&url, "proj/x", &tmp.path().join("cache")).arg(&co));
    assert_same_tree(&tree, &co, depot_default(tmp.path()));
    // ostree, pulling the same repository through its own file:// remote,
    // checks out the same tree.
    let mirror = tmp.path().join("mirror");
    ok(ostree_in(&mirror).args(["init", "--mode=bare-user"]));
    ok(ostree_in(&mirror).args(["remote", "add", "--no-gpg-verify", "origin", &url]));
    ok(ostree_in(&mirror).args(["pull", "origin", "proj/x"]));
    let oco = tmp.path().join("oco");
    ok(ostree_in(&mirror)
        .args(["checkout", "-U", "origin:proj/x"])
        .arg(&oco));
    assert_same_tree(&oco, &co, OSTREE_USER_MODE);
    // Without a summary, the refs come from the directories; a fifo in its
    // place is not a summary either (and is not opened: that would block).
    fs::remove_file(repo.join("summary")).expect("rm");
    assert!(ok(depot().args(["ls", &url])).starts_with("proj/x\t"));
    ok(Command::new("mkfifo").arg(repo.join("summary")));
    assert!(ok(depot().args(["ls", &url])).starts_with("proj/x\t"));
    fs::remove_file(repo.join("summary")).expect("rm");
    // Every object is verified, as from a server: a damaged one names its
    // path, and nothing is checked out.
    let (victim, _) = damage_a_content_object(&repo);
    let name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let dest = tmp.path().join("co2");
    let err = fails(pull(&url, "proj/x", &tmp.path().join("cache2")).arg(&dest));
    assert!(err.contains(&name[..20]) && err.contains(&url), "{err}");
    assert!(!dest.exists(), "a partial checkout was left at {dest:?}");
    // A relative path is refused, saying what to write.
    let err = fails(pull("file://repo", "proj/x", &tmp.path().join("cache3")).arg(&dest));
    assert!(
        err.contains("absolute") && err.contains("file:///"),
        "{err}"
    );
}

#[test]
fn a_server_that_accepts_and_never_answers_fails_after_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    // Accepts connections and holds them open, silent.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let started = std::time::Instant::now();
    let err = fails(depot().args(["ls", &url, "--timeout", "2"]));
    let took = started.elapsed();
    assert!(err.contains(&format!("{url}/summary")), "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "gave up only after {took:?}"
    );
}

#[test]
fn a_ref_moved_to_a_commit_bound_to_another_ref_is_refused_as_ostree_refuses_it() {
    let tmp = tempdir();
    let (repo, _) = served_repo(tmp.path());
    let old_tree = tmp.path().join("old-tree");
    fs::create_dir_all(&old_tree).expect("mkdir");
    fs::write(old_tree.join("app"), "old, vulnerable\n").expect("write");
    ok(depot()
        .args(["push", "--no-progress", "--to"])
        .arg(&repo)
        .args(["--ref", "proj/old", "-s", "old"])
        .arg(&old_tree));
    // Someone who can move refs on the server, but not sign or make
    // commits, points proj/x at the old commit (bound to proj/old).
    let old = read_ref(&repo, "proj/old");
    fs::write(repo.join("refs/heads/proj/x"), format!("{old}\n")).expect("swap");
    ok(Command::new(env!("CARGO_BIN_EXE_depot-summary"))
        .args(["--force", "--repo"])
        .arg(&repo)
        .arg("--state-dir")
        .arg(tmp.path().join("state")));
    let server = HttpServer::serve(&repo, tmp.path());
    let cache = tmp.path().join("cache");

    let err = fails(pull(&server.url, "proj/x", &cache).arg(tmp.path().join("co")));
    assert!(
        err.contains("bound to other refs (proj/old)") && err.contains(&old),
        "{err}"
    );
    assert!(!tmp.path().join("co").exists());
    let err = fails(
        pull(&server.url, "proj/x", &cache)
            .args(["--path", "/app", "-o"])
            .arg(tmp.path().join("app")),
    );
    assert!(err.contains("bound to other refs"), "{err}");
    assert!(!tmp.path().join("app").exists());

    // The real ostree refuses the same pull; the unmoved ref pulls.
    let client = ostree_client(&tmp.path().join("ostree"), "bare-user", &server.url);
    let err = fails(ostree_in(&client).args(["pull", "origin", "proj/x"]));
    assert!(err.contains("ref binding"), "{err}");
    ok(pull(&server.url, "proj/old", &cache).arg(tmp.path().join("old")));
    assert_eq!(
        fs::read_to_string(tmp.path().join("old/app")).expect("read"),
        "old, vulnerable\n"
    );
}

/// The names in `dir`.
/// Asserts that `depot checkout` of `name` from the repository at `repo`
/// fails saying `why`, and leaves no `dest`.
fn checkout_is_refused(repo: &Path, name: &str, dest: &Path, why: &str) {
    let err = fails(depot_in("checkout", repo).arg(name).arg(dest));
    assert!(err.contains(why), "{name}: {err}");
    assert!(!dest.exists(), "{name}: {} was made", dest.display());
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn one_file_replaces_out_only_when_verified_and_a_damaged_cached_copy_is_fetched_again() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let server = HttpServer::serve(&repo, tmp.path());
    let cache = tmp.path().join("cache");
    let outs = tmp.path().join("outs");
    fs::create_dir_all(&outs).expect("mkdir");
    let out = outs.join("big.bin");
    fs::write(&out, "precious\n").expect("write");
    let get_to = |path: &str, to: &Path| {
        let mut c = pull(&server.url, "proj/x", &cache);
        c.args(["--path", path, "-o"]).arg(to);
        c
    };
    let get = |path: &str| get_to(path, &out);
    let big_to = |to: &Path| get_to("/data/big.bin", to);

    // Not a regular file: refused, and OUT is as it was.
    let err = fails(get("/link-rel"));
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(fs::read_to_string(&out).expect("read"), "precious\n");
    assert_eq!(names_in(&outs), ["big.bin"]);

    // Replaced, OUT keeps its permissions, but not a set-id bit.
    fs::set_permissions(&out, fs::Permissions::from_mode(0o4751)).expect("chmod");
    ok(get("/data/big.bin"));
    let want = fs::read(tree.join("data/big.bin")).expect("read");
    assert!(fs::read(&out).expect("read") == want);
    assert_eq!(names_in(&outs), ["big.bin"]);
    let mode = fs::metadata(&out).expect("stat").permissions().mode();
    assert_eq!(mode & 0o7777, 0o751, "{mode:o}");
    // One someone else owns (a root runner can make one) says nothing about
    // the new file: it is the puller's, with the mode a new OUT gets. One of
    // the puller's own keeps its group and the group's bits. A symlink that
    // another user planted in a shared sticky directory is not written
    // through; the puller's own is.
    if is_root() {
        use std::os::unix::fs::{MetadataExt, chown, lchown, symlink};
        let fresh = outs.join("fresh.bin");
        ok(big_to(&fresh));
        let fresh_mode = fs::metadata(&fresh).expect("stat").mode();
        fs::remove_file(&fresh).expect("rm");
        chown(&out, Some(65534), Some(65534)).expect("chown");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o606)).expect("chmod");
        ok(get("/data/big.bin"));
        let meta = fs::metadata(&out).expect("stat");
        let owner = (meta.uid(), meta.gid(), meta.mode());
        assert_eq!(owner, (0, 0, fresh_mode), "{:o}", meta.mode());

        chown(&out, Some(0), Some(65534)).expect("chown");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o640)).expect("chmod");
        ok(get("/data/big.bin"));
        let meta = fs::metadata(&out).expect("stat");
        assert_eq!((meta.gid(), meta.mode() & 0o7777), (65534, 0o640));

        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        let victim = tmp.path().join("victim");
        fs::write(&victim, "root's\n").expect("write");
        let planted = shared.join("out");
        symlink(&victim, &planted).expect("symlink");
        lchown(&planted, Some(65534), Some(65534)).expect("lchown");
        let err = fails(big_to(&planted));
        assert!(err.contains("another user made"), "{err}");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "root's\n");
        // Nor through a directory of theirs there, or a symlink of theirs to
        // a directory of theirs, which they could swap at any moment.
        let theirs = tmp.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        symlink(&victim, theirs.join("out")).expect("symlink");
        let their_dir = shared.join("dir");
        fs::create_dir(&their_dir).expect("mkdir");
        symlink(&victim, their_dir.join("out")).expect("symlink");
        symlink(&theirs, shared.join("work")).expect("symlink");
        for p in [
            &theirs,
            &theirs.join("out"),
            &their_dir,
            &their_dir.join("out"),
            &shared.join("work"),
        ] {
            lchown(p, Some(65534), Some(65534)).expect("lchown");
        }
        for out in [
            their_dir.join("out"),
            shared.join("work/out"),
            shared.join("work/../out"),
        ] {
            let err = fails(big_to(&out));
            assert!(
                err.contains("another user made"),
                "{}: {err}",
                out.display()
            );
            assert_eq!(fs::read_to_string(&victim).expect("read"), "root's\n");
        }
        // Also when the working directory is theirs and OUT relative.
        let err = fails(big_to(Path::new("out")).current_dir(&their_dir));
        assert!(err.contains("another user made"), "{err}");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "root's\n");
        lchown(&planted, Some(0), Some(0)).expect("lchown");
        ok(big_to(&planted));
        assert!(fs::read(&victim).expect("read") == want);
        ok(big_to(Path::new("/dev/null")));
        // A symlink of root's to nothing there: what it names is created,
        // but only where nothing is yet.
        let dangling = shared.join("dangling");
        symlink(shared.join("made"), &dangling).expect("symlink");
        ok(big_to(&dangling));
        assert!(fs::read(shared.join("made")).expect("read") == want);
    }

    // The cached copy damaged: `depot cat` of it from the cache fails and
    // leaves no file; the pull fetches it again.
    let (damaged, _) = damage_a_content_object(&cache);
    let rel = damaged
        .strip_prefix(cache.join("objects"))
        .expect("in objects");
    let hex = format!(
        "{}{}",
        rel.parent().expect("dir").display(),
        rel.file_stem().expect("stem").to_string_lossy()
    );
    let cat_out = outs.join("cat.bin");
    let err = fails(
        depot()
            .args(["cat", "--repo"])
            .arg(&cache)
            .args([&read_ref(&repo, "proj/x"), "/data/big.bin", "-o"])
            .arg(&cat_out),
    );
    assert!(err.contains("corrupt") && err.contains(&hex), "{err}");
    assert_eq!(names_in(&outs), ["big.bin"]);
    fs::write(&out, "precious\n").expect("write");
    ok(get("/data/big.bin"));
    assert!(fs::read(&out).expect("read") == want);
    assert_eq!(names_in(&outs), ["big.bin"]);
    // The cache holds the good copy now, and marks the commit partial, as
    // ostree does, so that fsck does not look for the rest of its tree.
    let commit = read_ref(&repo, "proj/x");
    ok(depot()
        .args(["cat", "--repo"])
        .arg(&cache)
        .args([&commit, "/data/big.bin", "-o"])
        .arg(&cat_out));
    assert!(fs::read(&cat_out).expect("read") == want);
    assert!(cache.join(format!("state/{commit}.commitpartial")).exists());
    ok(ostree_in(&cache).arg("fsck"));
    ok(depot_in("fsck", &cache));
    // A whole pull completes the commit.
    ok(pull(&server.url, "proj/x", &cache).arg(tmp.path().join("co")));
    assert!(!cache.join(format!("state/{commit}.commitpartial")).exists());
    ok(ostree_in(&cache).arg("fsck"));
}

/// Stages a dirmeta of a root-owned 0755 directory; returns its checksum.
fn stage_plain_dirmeta(tx: &depot::repo::Transaction) -> depot::checksum::Checksum {
    let meta = depot::object::DirMeta {
        uid: 0,
        gid: 0,
        mode: 0o40755,
        xattrs: depot::object::Xattrs::default(),
    };
    tx.write_metadata(depot::object::ObjectType::DirMeta, &meta.to_bytes())
        .expect("stage")
}

/// Commits the staged tree `root` (with dirmeta `meta`), publishes what `tx`
/// staged into the repository at `path` and points ref `name` at the commit.
/// Any summary is removed, so that clients read refs from `refs/heads/`.
fn publish_as_ref(
    tx: depot::repo::Transaction,
    path: &Path,
    name: &str,
    root: depot::checksum::Checksum,
    meta: depot::checksum::Checksum,
) {
    publish_commit_as_ref(tx, path, name, &crafted_commit(name, root, meta));
}

/// [`publish_as_ref`] for a root directory holding only `files` (name,
/// content checksum).
fn publish_files_as_ref(
    tx: depot::repo::Transaction,
    path: &Path,
    name: &str,
    files: &[(&str, depot::checksum::Checksum)],
    meta: depot::checksum::Checksum,
) {
    let files = files
        .iter()
        .map(|(n, c)| (depot::object::FileName::new(n).expect("name"), *c))
        .collect();
    let tree = depot::object::DirTree::new(files, vec![])
        .expect("tree")
        .to_bytes();
    let tree = tx
        .write_metadata(depot::object::ObjectType::DirTree, &tree)
        .expect("stage");
    publish_as_ref(tx, path, name, tree, meta);
}

/// A commit of the tree `root` (with dirmeta `meta`) without metadata.
fn crafted_commit(
    name: &str,
    root: depot::checksum::Checksum,
    meta: depot::checksum::Checksum,
) -> depot::object::Commit {
    depot::object::Commit {
        metadata: Vec::new(),
        parent: None,
        related: Vec::new(),
        subject: format!("crafted for {name}"),
        body: String::new(),
        timestamp: 1,
        root_tree: root,
        root_meta: meta,
    }
}

/// [`publish_as_ref`] for a commit made by the caller; returns its checksum.
fn publish_commit_as_ref(
    tx: depot::repo::Transaction,
    path: &Path,
    name: &str,
    commit: &depot::object::Commit,
) -> String {
    let commit = tx
        .write_metadata(depot::object::ObjectType::Commit, &commit.to_bytes())
        .expect("stage");
    tx.publish_unsynced().expect("publish");
    fs::write(path.join("refs/heads").join(name), format!("{commit}\n")).expect("ref");
    let _ = fs::remove_file(path.join("summary"));
    commit.to_string()
}

/// Writes a content object into the repository at `path`: `payload` with
/// `header`, then `after` (bytes the object's name does not cover).
/// Returns its checksum.
fn put_content(
    path: &Path,
    header: &depot::object::FileHeader,
    payload: &[u8],
    after: &[u8],
) -> depot::checksum::Checksum {
    let mut bytes = Vec::new();
    let (sum, _) = depot::object::write_filez(header, payload.len() as u64, payload, 6, &mut bytes)
        .expect("in memory");
    bytes.extend_from_slice(after);
    let name = depot::object::ObjectName::new(sum, depot::object::ObjectType::File);
    let file = path.join(name.relative_path());
    fs::create_dir_all(file.parent().expect("a shard")).expect("mkdir");
    fs::write(&file, bytes).expect("write");
    sum
}

/// The header of a regular file, mode 0644, root's.
fn regular_file() -> depot::object::FileHeader {
    depot::object::FileHeader {
        uid: 0,
        gid: 0,
        mode: 0o100_644,
        symlink_target: String::new(),
        xattrs: depot::object::Xattrs::default(),
    }
}

/// `depot` under `/usr/bin/time`, which writes its peak RSS (KiB) to `rss`
/// (see [`peak_kib`]).
fn depot_timed(rss: &Path) -> Command {
    assert!(
        Path::new("/usr/bin/time").exists(),
        "/usr/bin/time is missing; scripts/test.sh installs it (apt-get install time)"
    );
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "%M", "-o"])
        .arg(rss)
        .arg(env!("CARGO_BIN_EXE_depot"))
        .env_remove("DEPOT_REPO")
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

/// The peak RSS in KiB that [`depot_timed`] wrote (its last line; a
/// failed command's report starts with its exit status).
fn peak_kib(rss: &Path) -> u64 {
    let report = fs::read_to_string(rss).expect("time's report");
    report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {report:?}"))
}

#[test]
fn a_tree_that_repeats_subtrees_into_billions_of_entries_is_refused_before_anything_is_written() {
    use depot::object::{DirTree, FileName, ObjectType, SubdirEntry};
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    let tx = repo.begin().expect("begin");
    let put = |kind, bytes: Vec<u8>| tx.write_metadata(kind, &bytes).expect("stage");
    let name = |s: &str| FileName::new(s).expect("name");
    let meta = stage_plain_dirmeta(&tx);
    // Each level names the one below twice: 40 levels, 2^40 files, in 41
    // dirtrees of a few hundred bytes.
    let file = depot::checksum::Checksum::of(b"never fetched");
    let mut tree = put(
        ObjectType::DirTree,
        DirTree::new(vec![(name("f"), file)], vec![])
            .expect("tree")
            .to_bytes(),
    );
    for _ in 0..40 {
        let dirs = ["a", "b"]
            .into_iter()
            .map(|n| SubdirEntry {
                name: name(n),
                tree,
                meta,
            })
            .collect();
        tree = put(
            ObjectType::DirTree,
            DirTree::new(vec![], dirs).expect("tree").to_bytes(),
        );
    }
    publish_as_ref(tx, &path, "bomb", tree, meta);

    let url = format!("file://{}", path.display());
    let dest = tmp.path().join("co");
    let err = fails(pull(&url, "bomb", &tmp.path().join("cache")).arg(&dest));
    assert!(
        err.contains("expands to more than 10000000 files")
            && err.contains(&format!("{url}/objects/")),
        "{err}"
    );
    assert!(!dest.exists());
    assert_eq!(names_in(tmp.path()), ["cache", "repo"]);
    checkout_is_refused(&path, "bomb", &dest, "expands to more than 10000000 files");
}

#[test]
fn a_tree_nested_deeper_than_256_directories_is_refused_naming_the_commit() {
    use depot::object::{DirTree, FileName, ObjectType, SubdirEntry};
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    let tx = repo.begin().expect("begin");
    let meta = stage_plain_dirmeta(&tx);
    let put = |tree: &DirTree| tx.write_metadata(ObjectType::DirTree, &tree.to_bytes());
    // `levels` directories named `name`, each in the one before, above `bottom`.
    let nest = |name: &str, levels: usize, bottom| {
        (0..levels).fold(bottom, |tree, _| {
            let dirs = vec![SubdirEntry {
                name: FileName::new(name).expect("name"),
                tree,
                meta,
            }];
            put(&DirTree::new(vec![], dirs).expect("tree")).expect("stage")
        })
    };
    let empty = put(&DirTree::default()).expect("stage");
    // The root and 256 directories below it: the deepest that is checked out.
    let deepest = nest("d", 256, empty);
    let too_deep = nest("d", 1, deepest);
    // A subtree 200 deep, also reached 100 directories further down.
    let shared = nest("a", 199, empty);
    let root = DirTree::new(
        vec![],
        vec![
            SubdirEntry {
                name: FileName::new("a").expect("name"),
                tree: shared,
                meta,
            },
            SubdirEntry {
                name: FileName::new("c").expect("name"),
                tree: nest("c", 100, shared),
                meta,
            },
        ],
    )
    .expect("tree");
    let shared_twice = put(&root).expect("stage");
    tx.publish_unsynced().expect("publish");
    for (name, tree) in [
        ("deepest", deepest),
        ("too-deep", too_deep),
        ("shared", shared_twice),
    ] {
        let tx = repo.begin().expect("begin");
        publish_as_ref(tx, &path, name, tree, meta);
    }

    let url = format!("file://{}", path.display());
    let cache = tmp.path().join("cache");
    ok(pull(&url, "deepest", &cache).arg(tmp.path().join("co")));
    let mut deepest_dir = tmp.path().join("co");
    for _ in 0..256 {
        deepest_dir.push("d");
    }
    assert!(deepest_dir.is_dir());
    ok(depot_in("checkout", &path)
        .args(["deepest"])
        .arg(tmp.path().join("co2")));

    let dest = tmp.path().join("refused");
    for name in ["too-deep", "shared"] {
        let commit = read_ref(&path, name);
        let err = fails(pull(&url, name, &cache).arg(&dest));
        assert!(
            err.contains(&format!("{url}/objects/{}/", &commit[..2]))
                && err.contains(&format!("in the tree of commit {commit}, "))
                && err.contains("nested deeper than 256 directories"),
            "{name}: {err}"
        );
        assert!(!dest.exists());
        checkout_is_refused(&path, name, &dest, "nested deeper than 256 directories");
    }
}

#[test]
fn damaged_metadata_in_the_cache_is_fetched_again() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let server = HttpServer::serve(&repo, tmp.path());
    let cache = tmp.path().join("cache");
    ok(pull(&server.url, "proj/x", &cache).arg(tmp.path().join("co1")));
    // One byte flipped in one object of each metadata kind.
    let mut damaged = Vec::new();
    for ext in ["commit", "dirtree", "dirmeta"] {
        let path = walkdir::WalkDir::new(cache.join("objects"))
            .into_iter()
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == ext))
            .expect("a metadata object")
            .into_path();
        let mut bytes = fs::read(&path).expect("read");
        bytes[0] ^= 0x01;
        fs::write(&path, &bytes).expect("write");
        damaged.push(path);
    }
    ok(pull(&server.url, "proj/x", &cache).arg(tmp.path().join("co2")));
    assert_same_tree(&tree, &tmp.path().join("co2"), depot_default(tmp.path()));
    ok(ostree_in(&cache).arg("fsck"));
    let requested = object_requests(&server);
    for path in &damaged {
        let rel = path.strip_prefix(&cache).expect("in the cache");
        let rel = rel.to_string_lossy();
        assert_eq!(
            requested.iter().filter(|r| **r == rel).count(),
            2,
            "{rel} fetched once by each pull"
        );
    }
}

/// Starts `python3 SCRIPT PORT ARGS...` (an HTTP server on 127.0.0.1:PORT)
/// with its stderr in a log beside the script; returns it, the port and the
/// log once it accepts connections.
fn python_server(script: &Path, args: &[&std::ffi::OsStr]) -> (std::process::Child, u16, PathBuf) {
    let port = free_port();
    let log = script.with_extension("log");
    let server = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("python3");
    wait_until(
        "the test's HTTP server",
        std::time::Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    (server, port, log)
}

#[test]
fn a_server_listing_endless_ref_directories_is_given_up_on() {
    let tmp = tempdir();
    // No summary; every listing shows two more directories (and one that
    // climbs out), forever.
    let script = tmp.path().join("endless.py");
    fs::write(
        &script,
        r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if not self.path.startswith("/refs/heads/"):
            self.send_error(404); return
        body = b'<a href="a/">a/</a> <a href="b/">b/</a> <a href="a/../../x/">up</a>'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        sys.stderr.write(self.path + "\n")
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
    )
    .expect("script");
    let (mut server, port, log) = python_server(&script, &[]);
    let err = fails(depot().args(["ls", &format!("http://127.0.0.1:{port}")]));
    let _ = server.kill();
    let _ = server.wait();
    assert!(err.contains("more than 1000 directories of refs"), "{err}");
    let requests = fs::read_to_string(&log).expect("log");
    assert!(
        requests.lines().count() <= 1_001 + 1,
        "{}",
        requests.lines().count()
    );
    // Nothing outside refs/heads/: `a/../../x/` would have been refs/x/.
    let outside: Vec<&str> = requests
        .lines()
        .filter(|p| *p != "/summary" && !p.starts_with("/refs/heads/"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
fn a_pull_killed_midway_leaves_an_existing_empty_destination_empty() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    // Serves the repository, but holds back the one large object.
    let script = tmp.path().join("slow.py");
    fs::write(
        &script,
        r#"
import http.server, os, sys, time, functools
class H(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = self.translate_path(self.path)
        if path.endswith(".filez") and os.path.getsize(path) > 1000000:
            sys.stderr.write("holding " + self.path + "\n"); sys.stderr.flush()
            time.sleep(120)
        return super().send_head()
    def log_message(self, *a):
        pass
h = functools.partial(H, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), h).serve_forever()
"#,
    )
    .expect("script");
    let (mut server, port, log) = python_server(&script, &[repo.as_os_str()]);
    let dest = tmp.path().join("out");
    fs::create_dir(&dest).expect("mkdir");
    let cache = tmp.path().join("cache");
    let mut puller = pull(&format!("http://127.0.0.1:{port}"), "proj/x", &cache)
        .arg(&dest)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("depot pull");
    wait_until(
        "the pull to reach the large object",
        std::time::Duration::from_secs(60),
        || fs::read_to_string(&log).is_ok_and(|l| l.contains("holding")),
    );
    // Other files have been written by now; none of them into DEST.
    std::thread::sleep(std::time::Duration::from_millis(300));
    puller.kill().expect("kill");
    let _ = puller.wait();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(names_in(&dest), Vec::<String>::new());

    // The next pull (from an honest server) fills it and clears what the
    // killed one left beside it.
    let honest = HttpServer::serve(&repo, tmp.path());
    ok(pull(&honest.url, "proj/x", &cache).arg(&dest));
    assert_same_tree(&tree, &dest, depot_default(tmp.path()));
    assert!(
        !names_in(tmp.path())
            .iter()
            .any(|n| n.contains("depot-pull")),
        "{:?}",
        names_in(tmp.path())
    );
}

#[test]
fn a_directory_too_large_for_a_push_but_not_for_ostree_still_pulls() {
    use depot::object::{DirTree, FileName, ObjectType, SubdirEntry};
    let tmp = tempdir();
    // One real content object, from a pushed tree.
    let (path, _) = served_repo(tmp.path());
    let repo = depot::repo::Repo::open(&path).expect("open");
    let shown = repo
        .load_commit(&read_ref(&path, "proj/x").parse().expect("checksum"))
        .expect("commit");
    let shown = repo.load_dirtree(&shown.root_tree).expect("tree");
    let (_, hello) = shown
        .files()
        .iter()
        .find(|(n, _)| n.as_str() == "hello.txt")
        .expect("hello.txt");
    // A directory of 300,000 names for it: a dirtree of about 13 MiB, over
    // what depot-receive takes (10 MiB) and under ostree's 128 MiB.
    let tx = repo.begin().expect("begin");
    let put = |kind, bytes: Vec<u8>| tx.write_metadata(kind, &bytes).expect("stage");
    let files: Vec<(FileName, depot::checksum::Checksum)> = (0..300_000)
        .map(|i| (FileName::new(&format!("f{i:06}")).expect("name"), *hello))
        .collect();
    let big = DirTree::new(files, vec![]).expect("tree").to_bytes();
    assert!(big.len() > 10 << 20, "{}", big.len());
    let big = put(ObjectType::DirTree, big);
    let meta = stage_plain_dirmeta(&tx);
    let root = DirTree::new(
        vec![],
        vec![SubdirEntry {
            name: FileName::new("big").expect("name"),
            tree: big,
            meta,
        }],
    )
    .expect("tree");
    let root = put(ObjectType::DirTree, root.to_bytes());
    publish_as_ref(tx, &path, "wide", root, meta);

    let url = format!("file://{}", path.display());
    let out = tmp.path().join("one");
    ok(pull(&url, "wide", &tmp.path().join("cache"))
        .args(["--path", "/big/f299999", "-o"])
        .arg(&out));
    assert_eq!(fs::read_to_string(&out).expect("read"), "hello\n");
}

#[test]
fn an_empty_current_directory_or_a_symlink_to_an_empty_directory_is_filled() {
    let tmp = tempdir();
    let (repo, tree) = served_repo(tmp.path());
    let url = format!("file://{}", repo.display());
    let cache = tmp.path().join("cache");
    let here = tmp.path().join("here");
    fs::create_dir(&here).expect("mkdir");
    ok(pull(&url, "proj/x", &cache).arg(".").current_dir(&here));
    assert_same_tree(&tree, &here, depot_default(tmp.path()));
    // The working directory by its full name is filled, not replaced.
    let cwd = tmp.path().join("cwd");
    fs::create_dir(&cwd).expect("mkdir");
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&cwd).expect("stat"));
    ok(pull(&url, "proj/x", &cache).arg(&cwd).current_dir(&cwd));
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(&cwd).expect("stat")),
        inode
    );
    assert_same_tree(&tree, &cwd, depot_default(tmp.path()));
    // The link stays a link, to the filled directory, also when named with a
    // trailing slash.
    for (i, slash) in ["", "/"].into_iter().enumerate() {
        let target = tmp.path().join(format!("target{i}"));
        fs::create_dir(&target).expect("mkdir");
        let link = tmp.path().join(format!("link{i}"));
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        ok(pull(&url, "proj/x", &cache).arg(format!("{}{slash}", link.display())));
        let lstat = fs::symlink_metadata(&link).expect("lstat");
        assert!(lstat.file_type().is_symlink());
        assert_same_tree(&tree, &target, depot_default(tmp.path()));
    }
    // A link to nothing is refused once the commit is read, before its tree
    // is fetched (it used to fail at the final rename).
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).expect("symlink");
    let fresh = tmp.path().join("cache2");
    let err = fails(pull(&url, "proj/x", &fresh).arg(&dangling));
    assert!(err.contains("is a symlink to nothing"), "{err}");
    assert_eq!(object_files(&fresh).len(), 1, "only the commit");
}

#[test]
fn a_tree_whose_paths_would_take_hundreds_of_megabytes_is_refused_before_anything_is_written() {
    use depot::object::{DirTree, FileName, ObjectType, SubdirEntry};
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    let empty = put_content(&path, &regular_file(), b"", &[]);
    let tx = repo.begin().expect("begin");
    let put = |tree: DirTree| {
        tx.write_metadata(ObjectType::DirTree, &tree.to_bytes())
            .expect("stage")
    };
    let meta = stage_plain_dirmeta(&tx);
    let long = |c: &str, i: usize| FileName::new(&format!("{i}{}", c.repeat(249))).expect("name");
    // Six files of 250-byte names under 14 levels of two 250-byte directory
    // names: 98,304 files whose paths of some 3,800 bytes come to 370 MB,
    // in 15 dirtrees.
    let files = (0..6).map(|i| (long("f", i), empty)).collect();
    let mut tree = put(DirTree::new(files, vec![]).expect("tree"));
    for _ in 0..14 {
        let dirs = (0..2)
            .map(|i| SubdirEntry {
                name: long("d", i),
                tree,
                meta,
            })
            .collect();
        tree = put(DirTree::new(vec![], dirs).expect("tree"));
    }
    publish_as_ref(tx, &path, "long", tree, meta);
    let commit = read_ref(&path, "long");

    let url = format!("file://{}", path.display());
    let dest = tmp.path().join("co");
    let rss = tmp.path().join("rss");
    let err = fails(
        depot_timed(&rss)
            .args(["pull", &url, "long", "--cache"])
            .arg(tmp.path().join("cache"))
            .arg(&dest),
    );
    assert!(
        err.contains(&format!("{url}/objects/{}/", &commit[..2]))
            && err.contains(&format!("commit {commit}: "))
            && err.contains("more than 256 MiB"),
        "{err}"
    );
    let peak = peak_kib(&rss);
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
    assert!(!dest.exists());
    assert_eq!(names_in(tmp.path()), ["cache", "repo", "rss"]);
    checkout_is_refused(&path, "long", &dest, "more than 256 MiB");
}

#[test]
fn listing_pages_full_of_what_cannot_be_refs_take_little_memory() {
    let tmp = tempdir();
    // No summary. refs/heads/ holds the ref `main` and a directory three
    // 250-byte names deep, whose listing is 16 MiB of links that cannot be
    // ref names: each used to be kept under its 750-byte directory name.
    let script = tmp.path().join("junk.py");
    fs::write(
        &script,
        r#"
import http.server, sys
a, b, c = "a" * 250, "b" * 250, "c" * 250
junk, i = [], 0
while len(junk) * 12 < 16 * 1024 * 1024 - 64:
    junk.append(b'href="%%%x"' % i); i += 1
pages = {
    "/refs/heads/": ('<a href="main">main</a> <a href="%s/">%s/</a>' % (a, a)).encode(),
    "/refs/heads/%s/" % a: ('<a href="%s/">x</a>' % b).encode(),
    "/refs/heads/%s/%s/" % (a, b): ('<a href="%s/">x</a>' % c).encode(),
    "/refs/heads/%s/%s/%s/" % (a, b, c): b"".join(junk)[: 16 * 1024 * 1024],
    "/refs/heads/main": b"a" * 64 + b"\n",
}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = pages.get(self.path)
        if body is None:
            self.send_error(404); return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
    )
    .expect("script");
    let (mut server, port, _) = python_server(&script, &[]);
    let rss = tmp.path().join("rss");
    let listed = ok(depot_timed(&rss).args(["ls", &format!("http://127.0.0.1:{port}")]));
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        listed.starts_with(&format!("main\t{}\t", "a".repeat(64))) && listed.lines().count() == 1,
        "{listed}"
    );
    let peak = peak_kib(&rss);
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn an_existing_destination_keeps_its_mode_and_xattrs_as_with_ostree_checkout_union() {
    use depot::object::{DirMeta, ObjectType, Xattrs};
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    let hello = put_content(&path, &regular_file(), b"hello\n", &[]);
    let tx = repo.begin().expect("begin");
    // A world-writable, sticky root with an xattr: what no existing
    // directory of the user's should become.
    let root_meta = DirMeta {
        uid: 0,
        gid: 0,
        mode: 0o41777,
        xattrs: Xattrs::from_pairs([(b"user.server".to_vec(), b"was here".to_vec())]),
    };
    let meta = tx
        .write_metadata(ObjectType::DirMeta, &root_meta.to_bytes())
        .expect("stage");
    publish_files_as_ref(tx, &path, "main", &[("f", hello)], meta);

    let url = format!("file://{}", path.display());
    let cache = tmp.path().join("cache");
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    let mkdir = |name: &str| {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).expect("chmod");
        dir
    };
    // Filled in place: the working directory, and one behind a symlink.
    let cwd = mkdir("cwd");
    ok(pull(&url, "main", &cache).arg(".").current_dir(&cwd));
    let linked = mkdir("linked");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&linked, &link).expect("symlink");
    ok(pull(&url, "main", &cache).arg(&link));
    // Replaced by the finished checkout.
    let empty = mkdir("empty");
    ok(pull(&url, "main", &cache).arg(&empty));
    // ostree's checkout into an existing directory.
    let client = ostree_client(&tmp.path().join("client"), "archive", &url);
    ok(ostree_in(&client).args(["pull", "origin", "main"]));
    let union = mkdir("union");
    ok(ostree_in(&client)
        .args(["checkout", "-U", "--union", "origin:main"])
        .arg(&union));
    let xattrs = xattrs_supported(tmp.path());
    for dir in [&cwd, &linked, &empty, &union] {
        assert_eq!(mode(dir), 0o750, "{}", dir.display());
        assert_eq!(fs::read(dir.join("f")).expect("read"), b"hello\n");
        if xattrs {
            let got = xattr::get(dir, "user.server").expect("getxattr");
            assert_eq!(got, None, "{}", dir.display());
        }
    }
    // A directory the pull makes has the tree's mode, as ostree's has.
    let new = tmp.path().join("new");
    ok(pull(&url, "main", &cache).arg(&new));
    let ostree_new = tmp.path().join("ostree-new");
    ok(ostree_in(&client)
        .args(["checkout", "-U", "origin:main"])
        .arg(&ostree_new));
    assert_eq!(mode(&new), 0o1777);
    assert_eq!(mode(&new), mode(&ostree_new));
}

#[test]
fn a_symlink_object_with_an_empty_compressed_stream_is_checked_out_as_ostree_does() {
    use depot::object::FileHeader;
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    let hello = put_content(&path, &regular_file(), b"hello\n", &[]);
    let link = FileHeader {
        mode: 0o120_777,
        symlink_target: "f".into(),
        ..regular_file()
    };
    // One empty final block: a whole deflate stream of nothing, which
    // ostree leaves out of a symlink's object and another writer may not.
    let link = put_content(&path, &link, b"", &[0x03, 0x00]);
    let tx = repo.begin().expect("begin");
    let meta = stage_plain_dirmeta(&tx);
    publish_files_as_ref(tx, &path, "main", &[("f", hello), ("link", link)], meta);

    let url = format!("file://{}", path.display());
    let dest = tmp.path().join("co");
    ok(pull(&url, "main", &tmp.path().join("cache")).arg(&dest));
    assert_eq!(
        fs::read_link(dest.join("link")).expect("readlink"),
        Path::new("f")
    );
    let client = ostree_client(&tmp.path().join("client"), "archive", &url);
    ok(ostree_in(&client).args(["pull", "origin", "main"]));
    let ostree_co = tmp.path().join("ostree-co");
    ok(ostree_in(&client)
        .args(["checkout", "-U", "origin:main"])
        .arg(&ostree_co));
    assert_same_tree(&ostree_co, &dest, OSTREE_USER_MODE);
}

#[test]
fn metadata_as_large_as_ostree_pulls_is_pulled_and_a_summary_size_of_zero_means_unknown() {
    use depot::gvariant::{Type, Value};
    use depot::object::{DirMeta, DirTree, FileName, ObjectType, SubdirEntry, Xattrs};
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    let hello = put_content(&path, &regular_file(), b"hello\n", &[]);
    // A dirmeta of 100 KiB (two xattrs) and a commit of 1.5 MiB (one string
    // of metadata): over what depot-receive takes from a pusher (64 KiB and
    // 1 MiB), under ostree's 128 MiB.
    let tx = repo.begin().expect("begin");
    let meta = stage_plain_dirmeta(&tx);
    let big_meta = DirMeta {
        uid: 0,
        gid: 0,
        mode: 0o40755,
        xattrs: Xattrs::from_pairs(
            ["user.big1", "user.big2"].map(|n| (n.as_bytes().to_vec(), vec![b'x'; 50 * 1024])),
        ),
    };
    let big_meta = tx
        .write_metadata(ObjectType::DirMeta, &big_meta.to_bytes())
        .expect("stage");
    let put = |tree: DirTree| {
        tx.write_metadata(ObjectType::DirTree, &tree.to_bytes())
            .expect("stage")
    };
    let sub =
        put(DirTree::new(vec![(FileName::new("f").expect("name"), hello)], vec![]).expect("tree"));
    let dirs = vec![SubdirEntry {
        name: FileName::new("d").expect("name"),
        tree: sub,
        meta: big_meta,
    }];
    let root = put(DirTree::new(vec![], dirs).expect("tree"));
    let mut commit = crafted_commit("big", root, meta);
    commit.metadata = vec![("big".into(), Value::string("x".repeat(1536 * 1024)))];
    let big = publish_commit_as_ref(tx, &path, "big", &commit);
    // Two million booleans: more values than depot decodes for their size.
    let tx = repo.begin().expect("begin");
    let mut commit = crafted_commit("dense", root, meta);
    commit.metadata = vec![(
        "dense".into(),
        Value::Array(Type::Bool, vec![Value::Bool(false); 2 << 20]),
    )];
    let dense = publish_commit_as_ref(tx, &path, "dense", &commit);

    // Without a summary, and so without the commit's size.
    let url = format!("file://{}", path.display());
    let dest = tmp.path().join("co");
    ok(pull(&url, "big", &tmp.path().join("cache")).arg(&dest));
    assert_eq!(fs::read(dest.join("d/f")).expect("read"), b"hello\n");
    let client = ostree_client(&tmp.path().join("client"), "archive", &url);
    ok(ostree_in(&client).args(["pull", "origin", "big"]));
    let pulled = fs::read_to_string(client.join("refs/remotes/origin/big")).expect("ref");
    assert_eq!(pulled.trim(), big);
    let err = fails(pull(&url, "dense", &tmp.path().join("cache")).arg(tmp.path().join("co2")));
    assert!(
        err.contains(&format!(
            "{url}/objects/{}/{}.commit",
            &dense[..2],
            &dense[2..]
        )) && err.contains("more than one value per 8 bytes"),
        "{err}"
    );

    // A summary giving the commit's size as 0, which ostree takes as
    // unknown: "big\0", padding to 8, then the size.
    ok(Command::new(env!("CARGO_BIN_EXE_depot-summary"))
        .arg("--repo")
        .arg(&path)
        .arg("--state-dir")
        .arg(tmp.path().join("state")));
    let summary = path.join("summary");
    let mut s = fs::read(&summary).expect("summary");
    assert_eq!(&s[..4], b"big\0");
    s[8..16].copy_from_slice(&0u64.to_le_bytes());
    fs::write(&summary, &s).expect("write");
    let dest = tmp.path().join("co3");
    ok(pull(&url, "big", &tmp.path().join("cache3")).arg(&dest));
    assert_eq!(fs::read(dest.join("d/f")).expect("read"), b"hello\n");
    let client = ostree_client(&tmp.path().join("client3"), "archive", &url);
    ok(ostree_in(&client).args(["pull", "origin", "big"]));
}

#[test]
fn responses_without_a_length_are_taken_and_held_to_the_same_limits() {
    use depot::object::{DirTree, FileName, ObjectType, SubdirEntry};
    let tmp = tempdir();
    let (path, tree) = served_repo(tmp.path());
    // A directory of 40,000 names for one file: a dirtree of 1.7 MB, which
    // is fetched only with its share of the budget for large metadata.
    let repo = depot::repo::Repo::open(&path).expect("open");
    let hello = put_content(&path, &regular_file(), b"hello\n", &[]);
    let tx = repo.begin().expect("begin");
    let files = (0..40_000)
        .map(|i| (FileName::new(&format!("f{i:05}")).expect("name"), hello))
        .collect();
    let wide = DirTree::new(files, vec![]).expect("tree").to_bytes();
    assert!(wide.len() > 1 << 20, "{}", wide.len());
    let wide = tx
        .write_metadata(ObjectType::DirTree, &wide)
        .expect("stage");
    let meta = stage_plain_dirmeta(&tx);
    let dirs = vec![SubdirEntry {
        name: FileName::new("big").expect("name"),
        tree: wide,
        meta,
    }];
    let root = DirTree::new(vec![], dirs).expect("tree").to_bytes();
    let root = tx
        .write_metadata(ObjectType::DirTree, &root)
        .expect("stage");
    publish_as_ref(tx, &path, "wide", root, meta);
    ok(Command::new(env!("CARGO_BIN_EXE_depot-summary"))
        .arg("--repo")
        .arg(&path)
        .arg("--state-dir")
        .arg(tmp.path().join("state")));
    // Serves the repository, every object chunked, without Content-Length.
    let script = tmp.path().join("chunked.py");
    fs::write(
        &script,
        r#"
import http.server, os, sys, functools
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        path = self.translate_path(self.path)
        if not self.path.startswith("/objects/") or not os.path.isfile(path):
            return super().do_GET()
        data = open(path, "rb").read()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(0, len(data), 65536):
            chunk = data[i : i + 65536]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")
    def log_message(self, *a):
        pass
h = functools.partial(H, directory=sys.argv[2])
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), h).serve_forever()
"#,
    )
    .expect("script");
    let (mut server, port, _) = python_server(&script, &[path.as_os_str()]);
    let url = format!("http://127.0.0.1:{port}");
    let cache = tmp.path().join("cache");
    let dest = tmp.path().join("co");
    let pulled = run(pull(&url, "proj/x", &cache).arg(&dest));
    let out = tmp.path().join("one");
    let one = run(pull(&url, "wide", &cache)
        .args(["--path", "/big/f39999", "-o"])
        .arg(&out));
    // A summary that understates the commit's size: the commit, sent
    // without a length, is refused once more than that has arrived.
    let summary = path.join("summary");
    let mut s = fs::read(&summary).expect("summary");
    assert_eq!(&s[..7], b"proj/x\0");
    s[8..16].copy_from_slice(&10u64.to_le_bytes());
    fs::write(&summary, &s).expect("write");
    let refused = run(pull(&url, "proj/x", &tmp.path().join("cache2")).arg(tmp.path().join("co2")));
    let _ = server.kill();
    let _ = server.wait();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert_same_tree(&tree, &dest, depot_default(tmp.path()));
    assert!(one.status.success(), "{}", text(&one));
    assert_eq!(fs::read(&out).expect("read"), b"hello\n");
    let err = text(&refused);
    let commit = read_ref(&path, "proj/x");
    assert!(
        !refused.status.success()
            && err.contains(&format!(
                "{url}/objects/{}/{}.commit",
                &commit[..2],
                &commit[2..]
            ))
            && err.contains("more than the 10-byte limit arrived"),
        "{err}"
    );
}

#[test]
fn a_file_larger_than_the_free_space_is_refused_before_it_is_written() {
    use depot::object::{ObjectName, ObjectType};
    let tmp = tempdir();
    let path = tmp.path().join("repo");
    let repo = depot::repo::Repo::init(&path).expect("init");
    // An object whose header claims a petabyte, then a little content: the
    // size is all a server needs to say, long before the checksum fails.
    let claimed: u64 = 1 << 50;
    let mut bytes = depot::object::filez_header_bytes(&regular_file(), claimed);
    let mut deflated = Vec::new();
    depot::object::write_filez(&regular_file(), 5, &b"hello"[..], 6, &mut deflated)
        .expect("in memory");
    let header_len = 8 + u32::from_be_bytes(deflated[..4].try_into().expect("4")) as usize;
    bytes.extend_from_slice(&deflated[header_len..]);
    let huge = depot::checksum::Checksum::of(b"a name for the huge object");
    let object = path.join(ObjectName::new(huge, ObjectType::File).relative_path());
    fs::create_dir_all(object.parent().expect("a shard")).expect("mkdir");
    fs::write(&object, bytes).expect("write");
    let tx = repo.begin().expect("begin");
    let meta = stage_plain_dirmeta(&tx);
    publish_files_as_ref(tx, &path, "main", &[("huge", huge)], meta);

    let url = format!("file://{}", path.display());
    let dest = tmp.path().join("co");
    let err = fails(pull(&url, "main", &tmp.path().join("cache")).arg(&dest));
    assert!(
        err.contains(&format!("{claimed} bytes to write, and")) && err.contains("bytes free"),
        "{err}"
    );
    assert!(!dest.exists(), "nothing checked out");
    assert_eq!(
        names_in(tmp.path()),
        ["cache", "repo"],
        "no checkout left beside it"
    );
}
