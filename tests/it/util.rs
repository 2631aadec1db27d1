//! Test helpers: temporary directories, the real `depot` and `ostree`
//! binaries, a fixture tree, tree comparison, and a static HTTP server.

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one command of a test may run: far longer than any here takes,
/// so that one that hangs (a fifo opened, a silent server waited on without
/// end) fails its test instead of stalling the whole run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a command, its stdin empty as with [`Command::output`], and returns
/// its output; the test fails if it cannot start or outlasts
/// [`COMMAND_TIMEOUT`] (it is killed then).
pub fn run(mut cmd: impl BorrowMut<Command>) -> Output {
    let cmd = cmd.borrow_mut();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}. The README's test command installs it (apt-get install ostree strace python3).")
        });
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    match finished.recv_timeout(COMMAND_TIMEOUT) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for {program}: {e}")),
        Err(_) => {
            // Not reaped yet, so the pid is still the child's.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}; it was killed");
        }
    }
}

/// Runs a command that must succeed; returns stdout as text.
pub fn ok(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let out = run(&mut *cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns stdout + stderr as text.
pub fn fails(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    let out = run(&mut *cmd);
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `depot` binary under test.
pub fn depot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_depot"));
    c.env_remove("DEPOT_REPO").env_remove("SOURCE_DATE_EPOCH");
    c
}

/// The real `ostree` CLI, the oracle.
pub fn ostree() -> Command {
    let mut c = Command::new("ostree");
    c.env_remove("SOURCE_DATE_EPOCH");
    c
}

/// `ostree --repo=R`.
pub fn ostree_in(repo: &Path) -> Command {
    let mut c = ostree();
    c.arg(format!("--repo={}", repo.display()));
    c
}

/// `depot --repo R` for a subcommand.
pub fn depot_in(sub: &str, repo: &Path) -> Command {
    let mut c = depot();
    c.arg(sub).arg("--repo").arg(repo);
    c
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("depot-it-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Whether the file system under `dir` stores `user.*` xattrs.
pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").expect("write probe");
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    fs::remove_file(&probe).expect("remove probe");
    ok
}

/// Builds the rich fixture tree: every kind of entry ostree can store.
pub fn rich_tree(root: &Path) {
    let w = |p: &str, data: &[u8], mode: u32| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        fs::write(&path, data).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    w("hello.txt", b"hello\n", 0o644);
    w("empty", b"", 0o644);
    w("bin/tool", b"#!/bin/sh\necho tool\n", 0o755);
    w("bin/setuid", b"suid", 0o4755);
    w("bin/setgid", b"sgid", 0o2755);
    w("readonly", b"ro", 0o444);
    // A file over the whole-file limit, to take the streaming path.
    let big: Vec<u8> = (0..3_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    w("data/big.bin", &big, 0o644);
    w("data/zeros", &vec![0u8; 2_000_000], 0o600);
    for name in [
        "B",
        "a",
        "Zdir-not",
        "ünïcode",
        "with space",
        "new\nline",
        "quote\"s",
        "-dash",
        "tab\there",
        "日本語",
    ] {
        w(&format!("names/{name}"), name.as_bytes(), 0o644);
    }
    for i in 0..300 {
        w(&format!("many/f{i:03}"), format!("{i}\n").as_bytes(), 0o644);
    }
    w("deep/a/b/c/d/e/f/g/h/i/j/leaf", b"leaf", 0o644);
    // One content object at three paths (read-only, to check that a checkout
    // copies it before making it so), and a symlink at two.
    for p in ["dup/one", "dup/two", "dup/sub/three"] {
        w(p, b"the same bytes", 0o444);
    }
    symlink("../hello.txt", root.join("dup/link")).expect("symlink");
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    fs::create_dir_all(root.join("sticky")).expect("mkdir");
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    fs::create_dir_all(root.join("private")).expect("mkdir");
    w("private/secret", b"s", 0o600);
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
    symlink("hello.txt", root.join("link-rel")).expect("symlink");
    symlink("/etc/hostname", root.join("link-abs")).expect("symlink");
    symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    symlink("../hello.txt", root.join("bin/link-up")).expect("symlink");
    if xattrs_supported(root) {
        xattr::set(root.join("hello.txt"), "user.zzz", b"1").expect("xattr");
        xattr::set(root.join("hello.txt"), "user.aaa", b"hello").expect("xattr");
        xattr::set(root.join("data"), "user.dir", b"d").expect("xattr");
    }
}

/// How closely two trees must agree.
#[derive(Debug, Clone, Copy)]
pub struct Fidelity {
    /// Permission bits compared.
    pub mode_mask: u32,
    /// Compare the extended attributes whose names start with this
    /// (`""`: all of them); `None`: do not compare them.
    pub xattrs: Option<&'static str>,
}

/// Everything `depot checkout --full-metadata` restores: all permission
/// bits, and every xattr where the file system keeps them.
pub fn full(dir: &Path) -> Fidelity {
    Fidelity {
        mode_mask: 0o7777,
        xattrs: xattrs_supported(dir).then_some(""),
    }
}

/// What a default `depot checkout` restores: no setuid/setgid bits, only
/// `user.*` xattrs.
pub fn depot_default(dir: &Path) -> Fidelity {
    Fidelity {
        mode_mask: 0o1777,
        xattrs: xattrs_supported(dir).then_some("user."),
    }
}

/// What `ostree checkout -U` restores: no setuid/setgid bits, no xattrs.
pub const OSTREE_USER_MODE: Fidelity = Fidelity {
    mode_mask: 0o1777,
    xattrs: None,
};

/// What a tree looks like, path by path: kind, permission bits, content or
/// link target, and (when asked) xattrs.
pub fn snapshot(root: &Path, fidelity: Fidelity) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("prefix")
            .to_string_lossy()
            .into_owned();
        let md = entry.path().symlink_metadata().expect("lstat");
        let ft = md.file_type();
        let mut desc = if ft.is_symlink() {
            format!(
                "link -> {}",
                fs::read_link(entry.path()).expect("readlink").display()
            )
        } else if ft.is_dir() {
            format!("dir {:o}", md.mode() & fidelity.mode_mask)
        } else {
            let mut data = Vec::new();
            fs::File::open(entry.path())
                .expect("open")
                .read_to_end(&mut data)
                .expect("read");
            let digest = depot::checksum::Checksum::of(&data);
            format!(
                "file {:o} {} {digest}",
                md.mode() & fidelity.mode_mask,
                data.len()
            )
        };
        if let Some(prefix) = fidelity.xattrs.filter(|_| !ft.is_symlink()) {
            let mut names: Vec<_> = xattr::list(entry.path())
                .map(Iterator::collect)
                .unwrap_or_default();
            names.sort();
            for n in names
                .into_iter()
                .filter(|n| n.to_string_lossy().starts_with(prefix))
            {
                let v = xattr::get(entry.path(), &n)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let _ = write!(
                    desc,
                    " {}={}",
                    n.to_string_lossy(),
                    String::from_utf8_lossy(&v)
                );
            }
        }
        out.insert(rel, desc);
    }
    out
}

/// Asserts two trees are equal, printing the first differences.
pub fn assert_same_tree(a: &Path, b: &Path, fidelity: Fidelity) {
    let (sa, sb) = (snapshot(a, fidelity), snapshot(b, fidelity));
    if sa != sb {
        let mut diffs = Vec::new();
        for k in sa
            .keys()
            .chain(sb.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if sa.get(k) != sb.get(k) {
                diffs.push(format!("{k:?}: {:?} vs {:?}", sa.get(k), sb.get(k)));
            }
        }
        panic!(
            "{} and {} differ:\n{}",
            a.display(),
            b.display(),
            diffs[..diffs.len().min(20)].join("\n")
        );
    }
}

/// Every file under `repo/objects`, as `xx/rest.ext`, sorted.
pub fn object_files(repo: &Path) -> Vec<String> {
    let objects = repo.join("objects");
    let mut v: Vec<String> = walkdir::WalkDir::new(&objects)
        .min_depth(2)
        .into_iter()
        .map(|e| {
            e.expect("walk")
                .path()
                .strip_prefix(&objects)
                .expect("prefix")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// A static file server (`python3 -m http.server`) on 127.0.0.1, stopped on drop.
pub struct HttpServer {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl HttpServer {
    pub fn serve(dir: &Path, log_dir: &Path) -> HttpServer {
        let port = free_port();
        let log = log_dir.join(format!("http-{port}.log"));
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start python3 -m http.server (apt-get install python3)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "http server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }
}

impl HttpServer {
    /// The request log: one line per request, with its status.
    pub fn requests(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Reads a ref's commit checksum.
pub fn read_ref(repo: &Path, name: &str) -> String {
    fs::read_to_string(repo.join("refs/heads").join(name))
        .expect("read ref")
        .trim()
        .to_string()
}

/// Sets a repository config value in `[core]` by appending to it.
pub fn set_core_config(repo: &Path, line: &str) {
    let path = repo.join("config");
    let mut text = fs::read_to_string(&path).expect("read config");
    text = text.replacen("[core]\n", &format!("[core]\n{line}\n"), 1);
    fs::write(&path, text).expect("write config");
}

/// A new ostree repository of `mode` at `path` with remote `origin` at `url`
/// (no GPG, as depot does not sign yet).
pub fn ostree_client(path: &Path, mode: &str, url: &str) -> PathBuf {
    ok(ostree_in(path).args(["init", &format!("--mode={mode}")]));
    ok(ostree_in(path).args(["remote", "add", "--no-gpg-verify", "origin", url]));
    path.to_path_buf()
}

/// Polls `done` every 10 ms until it holds; fails the test naming `what`
/// after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the tests run as root (CI does).
pub fn is_root() -> bool {
    ok(Command::new("id").arg("-u")).trim() == "0"
}
