//! `depot push` through a real OpenSSH server to `depot-receive` as a forced
//! command: pushes, concurrency, policy, cut connections, killed processes,
//! corruption in transit and hostile raw streams. After every push the
//! server repository must pass `ostree fsck` and every ref must check out.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use depot::protocol::frame::{self, Decoded, Frame};
use depot::protocol::{ErrorCode, Message};

use crate::sshd::{Account, Sshd, shell_quote};
use crate::util::*;

/// A wrapper for `--ssh-command` that sits on the client→server stream: it
/// can log it, cut it after N bytes, flip one byte of it, or replace the
/// remote command. Written into each test's temporary directory.
const PROXY: &str = r#"
import json, os, subprocess, sys, threading, time

def main():
    args = sys.argv[1:]
    split = args.index("--")
    opts, argv = args[:split], args[split + 1:]
    o = dict(zip(opts[0::2], opts[1::2]))
    if "--command" in o:
        argv[-1] = o["--command"]
    ssh = subprocess.Popen(argv, stdin=subprocess.PIPE)
    if "--pidfile" in o:
        with open(o["--pidfile"] + ".tmp", "w") as f:
            f.write("%d\n" % ssh.pid)
        os.rename(o["--pidfile"] + ".tmp", o["--pidfile"])
    # Only ssh holds the client's read side, so the client sees ssh end.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)

    def watch():
        rc = ssh.wait()
        os._exit(rc if rc >= 0 else 128 - rc)

    threading.Thread(target=watch, daemon=True).start()
    log = open(o["--log"], "ab", buffering=0) if "--log" in o else None
    out = ssh.stdin.fileno()

    def send(data):
        if log:
            log.write(data)
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]

    try:
        if "--flip" in o or "--gate" in o:
            framed(o.get("--flip", "none"), o.get("--gate"), send)
        else:
            raw(int(o["--cut"]) if "--cut" in o else None, o.get("--pause"), send)
    except BrokenPipeError:
        pass
    try:
        os.close(out)
    except OSError:
        pass
    os.close(0)
    rc = ssh.wait()
    os._exit(rc if rc >= 0 else 128 - rc)

def raw(cut, pause, send):
    # --pause N:FILE: after N bytes, write FILE.reached, then wait for FILE.
    at, gate = (int(pause.split(":", 1)[0]), pause.split(":", 1)[1]) if pause else (None, None)
    sent = 0
    while cut is None or sent < cut:
        data = os.read(0, 65536)
        if not data:
            return
        if cut is not None:
            data = data[: cut - sent]
        if at is not None and sent < at <= sent + len(data):
            send(data[: at - sent])
            open(gate + ".reached", "w").close()
            deadline = time.time() + 60
            while not os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.005)
            data = data[at - sent:]
            sent = at
        send(data)
        sent += len(data)

def read_exact(n):
    buf = b""
    while len(buf) < n:
        data = os.read(0, n - len(buf))
        if not data:
            break
        buf += data
    return buf

def framed(spec, gate, send):
    # frame:KIND:NTH:POS:MASK  byte POS (header included) of the NTH frame of KIND
    # object:TYPE:NTH:POS:MASK byte POS (negative: from the end) of the NTH object of TYPE
    # msg:TYPE:DELTA:MASK:TEXT byte DELTA from the start of TEXT in the first message of TYPE
    # With a gate directory, the update message waits (after `arrived-PID` is
    # written there) until the file `open` appears in it.
    p = spec.split(":", 4)
    counts, objects, current, done = {}, {}, None, False
    while True:
        header = read_exact(5)
        if len(header) < 5:
            if header:
                send(header)
            return
        kind, length = header[0], int.from_bytes(header[1:5], "big")
        payload = read_exact(length)
        frame = bytearray(header + payload)
        nth = counts.get(kind, 0)
        counts[kind] = nth + 1
        where = None
        if p[0] == "frame" and kind == int(p[1]) and nth == int(p[2]):
            where, mask = int(p[3]), int(p[4], 0)
        if kind == 2 and length == 41:
            t = payload[0]
            current = [t, objects.get(t, 0), int.from_bytes(payload[33:41], "big"), 0]
            objects[t] = current[1] + 1
        elif kind == 3 and current is not None:
            if p[0] == "object" and current[0] == int(p[1]) and current[1] == int(p[2]):
                pos = int(p[3]) + (current[2] if int(p[3]) < 0 else 0)
                if 0 <= pos - current[3] < length:
                    where, mask = 5 + pos - current[3], int(p[4], 0)
            current[3] += length
        elif kind == 1:
            try:
                mtype = json.loads(bytes(payload)).get("type")
            except ValueError:
                mtype = None
            if p[0] == "msg" and mtype == p[1] and payload.find(p[4].encode()) >= 0:
                where, mask = 5 + payload.find(p[4].encode()) + int(p[2]), int(p[3], 0)
            if gate and mtype == "update":
                open(os.path.join(gate, "arrived-%d" % os.getpid()), "w").close()
                deadline = time.time() + 60
                while not os.path.exists(os.path.join(gate, "open")) and time.time() < deadline:
                    time.sleep(0.005)
        if where is not None and not done:
            frame[where] ^= mask
            done = True
            sys.stderr.write("proxy: flipped byte %d of frame %d of kind %d (%s)\n" % (where, nth, kind, spec))
            sys.stderr.flush()
        send(bytes(frame))

main()
"#;

/// One test's world: a temporary directory, a running sshd and the proxy.
struct World {
    // Fields drop in order: sshd stops before its directory goes.
    sshd: Sshd,
    proxy: PathBuf,
    tmp: tempfile::TempDir,
}

fn world() -> World {
    let tmp = tempdir();
    let sshd = Sshd::start(&tmp.path().join("sshd"));
    let proxy = tmp.path().join("proxy.py");
    fs::write(&proxy, PROXY).expect("write proxy");
    World { sshd, proxy, tmp }
}

impl World {
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A new, empty depot repository.
    fn repo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        ok(depot().arg("init").arg(&p));
        p
    }

    /// `--ssh-command` for `account`, through the proxy with `proxy_args`
    /// (none: plain ssh).
    fn ssh_command(&self, account: &Account, proxy_args: &[&str]) -> String {
        if proxy_args.is_empty() {
            return account.ssh_command();
        }
        let quoted: Vec<String> = proxy_args.iter().map(|a| shell_quote(a)).collect();
        format!(
            "exec python3 {} {} -- {}",
            shell_quote(&self.proxy.to_string_lossy()),
            quoted.join(" "),
            account.ssh_command()
        )
    }

    /// `depot push --json --to URL --ssh-command ... ARGS`.
    fn push_cmd(
        &self,
        account: &Account,
        url: &str,
        proxy_args: &[&str],
        args: &[&dyn AsRef<OsStr>],
    ) -> Command {
        let mut c = depot();
        c.args([
            "push",
            "--json",
            "--no-progress",
            "--to",
            url,
            "--ssh-command",
        ])
        .arg(self.ssh_command(account, proxy_args));
        for a in args {
            c.arg(a);
        }
        c
    }

    fn push(
        &self,
        account: &Account,
        url: &str,
        proxy_args: &[&str],
        args: &[&dyn AsRef<OsStr>],
    ) -> Pushed {
        Pushed::from(run(self.push_cmd(account, url, proxy_args, args)))
    }
}

/// What `depot push --json` said.
#[derive(Debug)]
struct Pushed {
    code: i32,
    json: serde_json::Value,
    stderr: String,
}

impl From<Output> for Pushed {
    fn from(out: Output) -> Pushed {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("depot push --json printed no JSON ({e}):\nstdout: {stdout}\nstderr: {stderr}")
        });
        Pushed {
            code: out.status.code().unwrap_or(-1),
            json,
            stderr,
        }
    }
}

impl Pushed {
    /// Asserts success; returns the new commit of the first ref.
    fn ok(&self) -> String {
        assert!(
            self.code == 0 && self.json["ok"] == true,
            "push failed (exit {}): {:#}\nstderr: {}",
            self.code,
            self.json,
            self.stderr
        );
        self.json["refs"][0]["new"]
            .as_str()
            .expect("new commit")
            .to_string()
    }

    fn objects_sent(&self) -> u64 {
        self.json["objects_sent"].as_u64().expect("objects_sent")
    }

    fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or_default()
    }

    /// Asserts a failure with one of `codes`; returns the message.
    fn failed(&self, codes: &[i32]) -> String {
        assert!(
            codes.contains(&self.code) && self.json["ok"] == false,
            "expected exit {codes:?}, got {}: {:#}\nstderr: {}",
            self.code,
            self.json,
            self.stderr
        );
        assert!(!self.message().is_empty(), "no message: {:#}", self.json);
        self.message().to_string()
    }
}

/// Every ref of `repo` and its commit.
fn refs(repo: &Path) -> BTreeMap<String, String> {
    ok(ostree_in(repo).arg("refs"))
        .lines()
        .map(|r| (r.to_string(), read_ref(repo, r)))
        .collect()
}

/// `ostree fsck` passes and every ref checks out with `ostree checkout -U`.
fn assert_sound(repo: &Path) {
    ok(ostree_in(repo).arg("fsck"));
    let scratch = tempdir();
    for (i, (name, _)) in refs(repo).iter().enumerate() {
        ok(ostree_in(repo)
            .args(["checkout", "-U", name])
            .arg(scratch.path().join(i.to_string())));
    }
}

/// Staging directories left under `repo/tmp`.
fn staging_dirs(repo: &Path) -> Vec<String> {
    fs::read_dir(repo.join("tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("depot-staging-") || n.starts_with("depot-new-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `len` bytes no compressor can shrink, different for each `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree of random files: `(relative path, size)`.
fn noise_tree(dir: &Path, seed: u64, files: &[(&str, usize)]) -> PathBuf {
    for (i, (rel, size)) in files.iter().enumerate() {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, noise(seed * 1000 + i as u64, *size)).expect("write");
    }
    dir.to_path_buf()
}

/// A frame of a recorded stream.
#[derive(Debug)]
enum Recorded {
    Message(Result<Message, String>),
    ObjectStart,
    ObjectData,
}

/// Decodes a byte stream into frames, with each frame's offset.
fn decode_stream(mut bytes: &[u8]) -> Vec<(usize, Recorded)> {
    let mut out = Vec::new();
    let mut at = 0;
    while !bytes.is_empty() {
        match frame::decode(bytes) {
            Ok(Decoded::Complete { frame, consumed }) => {
                out.push((
                    at,
                    match frame {
                        Frame::Message(json) => {
                            Recorded::Message(Message::from_json(json).map_err(|e| e.to_string()))
                        }
                        Frame::ObjectStart { .. } => Recorded::ObjectStart,
                        Frame::ObjectData(_) => Recorded::ObjectData,
                    },
                ));
                at += consumed;
                bytes = &bytes[consumed..];
            }
            other => panic!("the stream does not decode at byte {at}: {other:?}"),
        }
    }
    out
}

/// The error frame at the end of what a server sent.
fn server_error(stdout: &[u8]) -> (ErrorCode, String) {
    match decode_stream(stdout).pop() {
        Some((_, Recorded::Message(Ok(Message::Error { code, message })))) => (code, message),
        other => panic!(
            "the server did not end with an error frame: {other:?} (stdout {:?})",
            String::from_utf8_lossy(stdout)
        ),
    }
}

fn hello_frame(min: u32, max: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    frame::encode_message(
        &Message::Hello {
            magic: "depot-push".into(),
            min_version: min,
            max_version: max,
            software: "push_ssh test".into(),
            capabilities: Vec::new(),
        }
        .to_json(),
        &mut buf,
    );
    buf
}

/// Audit records of a state directory.
fn audit(state: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(state.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// Copies a repository (to restore it between rounds).
fn copy_repo(from: &Path, to: &Path) {
    if to.exists() {
        fs::remove_dir_all(to).expect("remove repo");
    }
    ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Waits for a child with a deadline; kills it and fails if it overstays.
fn wait_bounded(child: &mut Child, what: &str, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("poll child") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill9(pid: u32) {
    // The process may have finished on its own meanwhile; that is fine.
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------
// (a) push, unchanged re-push, incremental push, --from-repo

#[test]
fn push_repush_incremental_and_from_repo_through_sshd() {
    let w = world();
    let repo = w.repo("server");
    let state = w.path("state");
    let ci = w
        .sshd
        .account("ci", &repo, &state, &["--allow-ref", "proj/**"]);
    let url = w.sshd.url("");
    let tree = w.path("tree");
    rich_tree(&tree);

    let first = w.push(
        &ci,
        &url,
        &[],
        &[&"--ref", &"proj/app/1", &"-s", &"build 1", &tree],
    );
    let c1 = first.ok();
    assert_eq!(first.json["refs"][0]["name"], "proj/app/1");
    assert!(first.json["refs"][0]["old"].is_null(), "{:#}", first.json);
    assert_eq!(read_ref(&repo, "proj/app/1"), c1);
    assert_eq!(
        first.objects_sent(),
        object_files(&repo).len() as u64,
        "an empty server gets every object once"
    );
    let co = w.path("co1");
    ok(ostree_in(&repo)
        .args(["checkout", "-U", "proj/app/1"])
        .arg(&co));
    assert_same_tree(&tree, &co, OSTREE_USER_MODE);

    // The same tree again: only a new commit travels.
    let second = w.push(&ci, &url, &[], &[&"--ref", &"proj/app/1", &tree]);
    let c2 = second.ok();
    assert_eq!(second.objects_sent(), 1, "{:#}", second.json);
    assert_eq!(second.json["refs"][0]["old"], c1.as_str());
    assert_ne!(c2, c1);

    // One file changed: the file, its directory's tree, the root tree, the commit.
    fs::write(tree.join("many/f100"), b"changed\n").expect("write");
    let third = w.push(&ci, &url, &[], &[&"--ref", &"proj/app/1", &tree]);
    let c3 = third.ok();
    assert_eq!(third.objects_sent(), 4, "{:#}", third.json);
    let diff = ok(ostree_in(&repo).args(["diff", "proj/app/1^", "proj/app/1"]));
    assert_eq!(diff.trim(), "M    /many/f100");
    let log = ok(ostree_in(&repo).args(["log", "proj/app/1"]));
    let history: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("commit "))
        .collect();
    assert_eq!(history, [c3.as_str(), &c2, &c1], "{log}");

    // Commits made by ostree itself, with history, pushed from a local repository;
    // this time the URL names the repository.
    let local = w.path("local");
    ok(ostree_in(&local).args(["init", "--mode=archive"]));
    let src = w.path("src");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("sub/a"), "one").expect("write");
    let o1 = ok(ostree_in(&local)
        .args(["commit", "-b", "proj/ostree/x", "-s", "first"])
        .arg(&src))
    .trim()
    .to_string();
    fs::write(src.join("b"), "two").expect("write");
    let o2 = ok(ostree_in(&local)
        .args(["commit", "-b", "proj/ostree/x", "-s", "second"])
        .arg(&src))
    .trim()
    .to_string();
    let from = w.push(
        &ci,
        &w.sshd.url(&repo.to_string_lossy()),
        &[],
        &[&"--from-repo", &local, &"proj/ostree/x"],
    );
    assert_eq!(from.ok(), o2);
    assert_eq!(read_ref(&repo, "proj/ostree/x"), o2);
    let log = ok(ostree_in(&repo).args(["log", "proj/ostree/x"]));
    assert!(log.contains(&o1) && log.contains(&o2), "{log}");
    assert!(log.contains("first") && log.contains("second"), "{log}");
    let co = w.path("co2");
    ok(ostree_in(&repo)
        .args(["checkout", "-U", "proj/ostree/x"])
        .arg(&co));
    assert_same_tree(&src, &co, OSTREE_USER_MODE);

    assert_sound(&repo);
    let records = audit(&state);
    assert_eq!(records.len(), 4, "{records:#?}");
    for r in &records {
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(r["key_id"], "ci", "{r}");
    }
    assert_eq!(records[1]["objects"], 1);
    assert!(state.join("refs-changed").exists());
    assert!(staging_dirs(&repo).is_empty(), "{:?}", staging_dirs(&repo));
}

// ---------------------------------------------------------------------------
// (b) concurrency

#[test]
fn concurrent_pushes_to_different_refs_all_land() {
    let w = world();
    let repo = w.repo("server");
    let ci = w
        .sshd
        .account("ci", &repo, &w.path("state"), &["--allow-ref", "proj/*"]);
    let url = w.sshd.url("");
    let trees: Vec<PathBuf> = (0..4)
        .map(|i| {
            noise_tree(
                &w.path(&format!("t{i}")),
                i,
                &[("a", 3000), ("d/b", 200_000)],
            )
        })
        .collect();
    let children: Vec<Child> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| {
            w.push_cmd(&ci, &url, &[], &[&"--ref", &format!("proj/c{i}"), t])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn depot push")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let pushed = Pushed::from(child.wait_with_output().expect("wait"));
        let commit = pushed.ok();
        assert_eq!(read_ref(&repo, &format!("proj/c{i}")), commit);
        let co = w.path(&format!("co{i}"));
        ok(ostree_in(&repo)
            .args(["checkout", "-U", &format!("proj/c{i}")])
            .arg(&co));
        assert_same_tree(&trees[i], &co, OSTREE_USER_MODE);
    }
    ci.wait_servers_gone();
    assert_sound(&repo);
    assert!(staging_dirs(&repo).is_empty());
}

/// Four pushes of different trees to `proj/same` at once. With `gate`, each
/// client's update is held until all four have read the ref, so all four
/// race from the same old commit. Returns how many succeeded.
fn race_to_one_ref(
    w: &World,
    ci: &Account,
    repo: &Path,
    round: &str,
    seed: u64,
    gate: Option<&Path>,
) -> usize {
    let base = read_ref(repo, "proj/same");
    let trees: Vec<PathBuf> = (0..4u64)
        .map(|i| {
            noise_tree(
                &w.path(&format!("{round}-{i}")),
                seed + i,
                &[("a", 3000), ("d/b", 300_000)],
            )
        })
        .collect();
    let gate_s = gate.map(|g| g.to_string_lossy().into_owned());
    let proxy: Vec<&str> = gate_s.iter().flat_map(|g| ["--gate", g.as_str()]).collect();
    let mut children: Vec<Child> = trees
        .iter()
        .map(|t| {
            w.push_cmd(ci, &w.sshd.url(""), &proxy, &[&"--ref", &"proj/same", t])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn depot push")
        })
        .collect();
    if let Some(g) = gate {
        wait_until(
            "all four clients at their update",
            Duration::from_secs(60),
            || {
                let arrived = fs::read_dir(g).map_or(0, Iterator::count);
                arrived == 4
                    || children
                        .iter_mut()
                        .any(|c| c.try_wait().ok().flatten().is_some())
            },
        );
        fs::write(g.join("open"), "").expect("open the gate");
    }
    let results: Vec<Pushed> = children
        .into_iter()
        .map(|c| Pushed::from(c.wait_with_output().expect("wait")))
        .collect();
    let mut winners: Vec<(String, &Path)> = Vec::new();
    for (r, tree) in results.iter().zip(&trees) {
        match r.code {
            0 => winners.push((r.ok(), tree)),
            4 => {
                assert_eq!(r.json["code"], "conflict", "{round}: {:#}", r.json);
                assert!(
                    r.message().contains("proj/same") && r.message().contains("moved"),
                    "{round}: a conflict must say the ref moved: {:#}",
                    r.json
                );
            }
            _ => panic!(
                "{round}: exit {} is neither success nor conflict: {:#}\n{}",
                r.code, r.json, r.stderr
            ),
        }
    }
    assert!(
        !winners.is_empty(),
        "{round}: no push succeeded: {results:#?}"
    );
    let last = read_ref(repo, "proj/same");
    let (_, last_tree) = winners.iter().find(|(c, _)| *c == last).unwrap_or_else(|| {
        panic!("{round}: the ref ({last}) is no successful push's commit: {winners:?}")
    });
    let co = w.path(&format!("{round}-co"));
    ok(ostree_in(repo)
        .args(["checkout", "-U", "proj/same"])
        .arg(&co));
    assert_same_tree(last_tree, &co, OSTREE_USER_MODE);
    // The winners form one chain down to the old commit: none was lost.
    let log = ok(ostree_in(repo).args(["log", "proj/same"]));
    let history: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("commit "))
        .collect();
    let mut top: Vec<&str> = history[..winners.len()].to_vec();
    top.sort_unstable();
    let mut won: Vec<&str> = winners.iter().map(|(c, _)| c.as_str()).collect();
    won.sort_unstable();
    assert_eq!(top, won, "{round}: history:\n{log}");
    assert_eq!(history[winners.len()], base, "{round}: history:\n{log}");
    ci.wait_servers_gone();
    assert_sound(repo);
    assert!(
        staging_dirs(repo).is_empty(),
        "{round}: {:?}",
        staging_dirs(repo)
    );
    winners.len()
}

#[test]
fn concurrent_pushes_to_one_ref_serialise_or_conflict() {
    let w = world();
    let repo = w.repo("server");
    let state = w.path("state");
    let ci = w
        .sshd
        .account("ci", &repo, &state, &["--allow-ref", "proj/*"]);
    let base_tree = noise_tree(&w.path("base"), 99, &[("a", 100)]);
    w.push(
        &ci,
        &w.sshd.url(""),
        &[],
        &[&"--ref", &"proj/same", &base_tree],
    )
    .ok();
    let free = race_to_one_ref(&w, &ci, &repo, "free", 10, None);
    let gate = w.path("gate");
    fs::create_dir_all(&gate).expect("mkdir gate");
    let gated = race_to_one_ref(&w, &ci, &repo, "gated", 20, Some(&gate));
    assert_eq!(gated, 1, "from the same old commit only one push can win");
    let outcomes: Vec<String> = audit(&state)
        .iter()
        .skip(1)
        .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
        .collect();
    let count = |o: &str| outcomes.iter().filter(|x| *x == o).count();
    assert_eq!(count("ok"), free + gated, "{outcomes:?}");
    assert_eq!(count("conflict"), 8 - free - gated, "{outcomes:?}");
}

// ---------------------------------------------------------------------------
// (c) policy

#[test]
fn a_key_cannot_write_outside_its_patterns_and_sends_no_object() {
    let w = world();
    let repo = w.repo("server");
    let state = w.path("state");
    let key = w
        .sshd
        .account("proj", &repo, &state, &["--allow-ref", "proj/*"]);
    let url = w.sshd.url("");
    let tree = noise_tree(&w.path("tree"), 1, &[("a", 5000), ("b/c", 70_000)]);
    let stream = w.path("stream");
    let log = stream.to_string_lossy().into_owned();
    let refused = w.push(&key, &url, &["--log", &log], &[&"--ref", &"other/x", &tree]);
    let msg = refused.failed(&[3]);
    assert_eq!(refused.json["code"], "forbidden", "{:#}", refused.json);
    assert!(msg.contains("other/x") && msg.contains("proj/*"), "{msg}");
    let bytes = fs::read(&stream).expect("captured stream");
    let frames = decode_stream(&bytes);
    assert!(
        matches!(
            frames.first(),
            Some((_, Recorded::Message(Ok(Message::Hello { .. }))))
        ),
        "the capture holds the session: {frames:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|(_, f)| matches!(f, Recorded::ObjectStart | Recorded::ObjectData)),
        "objects were sent for a forbidden ref: {frames:?}"
    );
    assert!(object_files(&repo).is_empty());
    assert!(refs(&repo).is_empty());
    // `*` stays within one component.
    let deep = w.push(&key, &url, &[], &[&"--ref", &"proj/a/b", &tree]);
    assert!(deep.failed(&[3]).contains("proj/a/b"));
    assert!(object_files(&repo).is_empty());
    // The key does work where it is allowed.
    let c = w.push(&key, &url, &[], &[&"--ref", &"proj/x", &tree]).ok();
    assert_eq!(refs(&repo), BTreeMap::from([("proj/x".to_string(), c)]));
    assert_sound(&repo);
    key.wait_servers_gone();
    let records = audit(&state);
    assert_eq!(records.len(), 3, "one audit line per push: {records:#?}");
    assert_eq!(records[2]["outcome"], "ok", "{}", records[2]);
    for r in &records[..2] {
        assert_eq!(r["key_id"], "proj", "{r}");
        assert_eq!(r["objects"], 0, "{r}");
        assert_eq!(
            r["outcome"], "forbidden",
            "a refused push must be audited as forbidden: {r}"
        );
    }
}

#[test]
fn client_commands_and_arguments_never_change_the_repo_or_the_policy() {
    let w = world();
    let repo = w.repo("server");
    let victim = w.repo("victim");
    let state = w.path("state");
    let key = w
        .sshd
        .account("proj", &repo, &state, &["--allow-ref", "proj/*"]);
    let tree = noise_tree(&w.path("tree"), 2, &[("a", 5000), ("b/c", 20_000)]);

    // Record what a client sends to push into an empty repository: once a
    // ref this key may write, once one it may not. Replayed over plain ssh,
    // the first would push if the server ran it.
    let scratch = w.repo("scratch");
    let rec = w.sshd.account(
        "rec",
        &scratch,
        &w.path("state-rec"),
        &["--allow-ref", "**"],
    );
    let record = |name: &str| {
        fs::remove_dir_all(&scratch).expect("rm scratch");
        ok(depot().arg("init").arg(&scratch));
        let stream = w.path(&format!("stream-{}", name.replace('/', "-")));
        w.push(
            &rec,
            &w.sshd.url(""),
            &["--log", &stream.to_string_lossy()],
            &[&"--ref", &name, &"--timestamp", &"@1700000000", &tree],
        )
        .ok();
        fs::read(&stream).expect("stream")
    };
    let allowed = record("proj/x");
    let other = record("other/x");

    let unchanged = || {
        (
            object_files(&repo),
            refs(&repo),
            object_files(&victim),
            refs(&victim),
        )
    };
    let before = unchanged();
    let victim_s = victim.to_string_lossy().into_owned();
    let repo_s = repo.to_string_lossy().into_owned();
    // (what the client asks sshd to run, the recorded push to send it)
    let widen = format!("depot-receive --repo {repo_s} --allow-ref '**'");
    let elsewhere = format!(
        "depot-receive --state-dir {}",
        w.path("elsewhere").display()
    );
    let victim_cmd = format!("depot-receive --repo {victim_s}");
    let audited_before = audit(&state).len();
    for (remote, replay) in [
        (victim_cmd.as_str(), &allowed),
        ("depot-receive --repo /some/other/path", &allowed),
        ("depot-receive --allow-ref '**'", &other),
        (widen.as_str(), &other),
        (widen.as_str(), &allowed),
        ("depot-receive --allow-non-fast-forward", &allowed),
        (elsewhere.as_str(), &allowed),
        ("depot-receive --max-object-size 1T", &allowed),
        ("sh -c id", &allowed),
        ("id", &allowed),
        ("depot-receive; id", &allowed),
        ("depot-receive $(id)", &allowed),
    ] {
        let mut c = key.ssh(remote);
        let out = run_with_stdin(&mut c, replay);
        assert!(!out.status.success(), "{remote:?} was run");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("uid="),
            "{remote:?} ran a shell command: {text}"
        );
        let (code, message) = server_error(&out.stdout);
        assert_eq!(code, ErrorCode::Forbidden, "{remote:?}: {message}");
        assert!(
            message.contains("may only push with depot")
                || message.contains("accepts no client arguments")
                || message.contains("pushes only to")
                || message.contains("cannot read the requested command"),
            "{remote:?}: the refusal should explain the command is not allowed: {message}"
        );
        assert_eq!(before, unchanged(), "{remote:?} changed a repository");
    }
    assert!(!w.path("elsewhere").exists());
    key.wait_servers_gone();
    assert!(
        audit(&state).iter().all(|r| r["outcome"] != "ok"),
        "{:?}",
        audit(&state)
    );
    // Each refused command is audited, as a refused push is.
    let refused = &audit(&state)[audited_before..];
    assert_eq!(refused.len(), 12, "{refused:?}");
    for r in refused {
        assert_eq!(r["outcome"], "forbidden", "{r}");
        let error = r["error"].as_str().expect("an error");
        assert!(
            error.contains("depot") || error.contains("cannot read"),
            "{r}"
        );
    }

    // The real client, asking for another repository or smuggling arguments.
    let to_victim = w.push(
        &key,
        &w.sshd.url(&victim_s),
        &[],
        &[&"--ref", &"proj/x", &tree],
    );
    let msg = to_victim.failed(&[3]);
    assert!(msg.contains(&victim_s), "{msg}");
    let smuggled = w.push(
        &key,
        &w.sshd.url(""),
        &["--command", "depot-receive --allow-ref '**'"],
        &[&"--ref", &"proj/x", &tree],
    );
    assert!(
        smuggled
            .failed(&[3])
            .contains("accepts no client arguments")
    );
    assert_eq!(before, unchanged());
    assert_sound(&victim);

    // The recorded streams are real pushes: with the command the key is
    // for, the allowed one lands, the other is refused by policy.
    for (remote, replay, lands) in [
        ("depot-receive", &other, false),
        (&*format!("depot-receive --repo {repo_s}"), &allowed, true),
    ] {
        let mut c = key.ssh(remote);
        let out = run_with_stdin(&mut c, replay);
        assert_eq!(
            out.status.success(),
            lands,
            "{remote}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(refs(&repo).keys().collect::<Vec<_>>(), ["proj/x"]);
    assert_sound(&repo);
}

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // The server may stop reading early; a broken pipe is expected then.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let _ = err_pipe.read_to_end(&mut stderr);
        stderr
    });
    out_pipe.read_to_end(&mut stdout).expect("read stdout");
    let status = wait_bounded(&mut child, "ssh", Duration::from_secs(30));
    let _ = writer.join();
    Output {
        status,
        stdout,
        stderr: err_reader.join().expect("stderr reader"),
    }
}

// ---------------------------------------------------------------------------
// (d) cut connections and killed processes

/// A server with a base commit on `proj/big`, a pristine copy of it, and a
/// recorded full push of `tree` onto it (then undone).
struct Interrupted {
    w: World,
    repo: PathBuf,
    pristine: PathBuf,
    ci: Account,
    base: String,
    tree: PathBuf,
    stream: Vec<u8>,
}

fn interrupted_setup(files: &[(&str, usize)]) -> Interrupted {
    let w = world();
    let repo = w.repo("server");
    let ci = w
        .sshd
        .account("ci", &repo, &w.path("state"), &["--allow-ref", "proj/*"]);
    let base_tree = noise_tree(&w.path("base"), 7, &[("a", 1000)]);
    let base = w
        .push(
            &ci,
            &w.sshd.url(""),
            &[],
            &[&"--ref", &"proj/big", &base_tree],
        )
        .ok();
    let pristine = w.path("pristine");
    copy_repo(&repo, &pristine);
    let tree = noise_tree(&w.path("tree"), 8, files);
    let log = w.path("reference-stream");
    w.push(
        &ci,
        &w.sshd.url(""),
        &["--log", &log.to_string_lossy()],
        &[&"--ref", &"proj/big", &tree],
    )
    .ok();
    let stream = fs::read(&log).expect("stream");
    ci.wait_servers_gone();
    copy_repo(&pristine, &repo);
    Interrupted {
        w,
        repo,
        pristine,
        ci,
        base,
        tree,
        stream,
    }
}

impl Interrupted {
    /// After an interrupted push: the ref is unchanged or at a complete commit
    /// of the tree, fsck passes, a normal push works and leaves no staging
    /// directory; then the pristine repository is restored.
    fn check_and_recover(&self, what: &str, may_have_landed: bool) {
        self.ci.wait_servers_gone();
        let now = read_ref(&self.repo, "proj/big");
        if now == self.base {
            if !may_have_landed {
                assert_eq!(
                    object_files(&self.repo),
                    object_files(&self.pristine),
                    "{what}: objects were published"
                );
            }
        } else {
            assert!(may_have_landed, "{what}: the ref moved to {now}");
            let co = self.w.path("co-landed");
            let _ = fs::remove_dir_all(&co);
            ok(ostree_in(&self.repo)
                .args(["checkout", "-U", "proj/big"])
                .arg(&co));
            assert_same_tree(&self.tree, &co, OSTREE_USER_MODE);
            let parent = ok(ostree_in(&self.repo).args(["rev-parse", "proj/big^"]));
            assert_eq!(parent.trim(), self.base, "{what}");
        }
        let fsck = run(ostree_in(&self.repo).arg("fsck"));
        assert!(
            fsck.status.success(),
            "{what}: ostree fsck fails:\n{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        let again = self.w.push(
            &self.ci,
            &self.w.sshd.url(""),
            &[],
            &[&"--ref", &"proj/big", &self.tree],
        );
        let commit = again.ok();
        assert_eq!(read_ref(&self.repo, "proj/big"), commit, "{what}");
        self.ci.wait_servers_gone();
        assert!(
            staging_dirs(&self.repo).is_empty(),
            "{what}: staging left after the next push: {:?}",
            staging_dirs(&self.repo)
        );
        assert_sound(&self.repo);
        copy_repo(&self.pristine, &self.repo);
    }
}

#[test]
fn a_connection_cut_anywhere_publishes_nothing() {
    let s = interrupted_setup(&[
        ("a", 3000),
        ("d/b", 150_000),
        ("d/c", 150_000),
        ("e", 200_000),
    ]);
    let frames = decode_stream(&s.stream);
    let (done_at, last) = frames.last().expect("frames");
    assert!(
        matches!(last, Recorded::Message(Ok(Message::Done {}))),
        "the stream ends with done: {last:?}"
    );
    let len = s.stream.len();
    assert!(*done_at > 200_000, "the push is large enough: {len} bytes");
    for cut in [0, 20, 200, 2000, 20_000, 200_000, *done_at, len - 1] {
        let what = format!("cut after {cut} of {len} bytes");
        let pushed = s.w.push(
            &s.ci,
            &s.w.sshd.url(""),
            &["--cut", &cut.to_string()],
            &[&"--ref", &"proj/big", &s.tree],
        );
        pushed.failed(&[5]);
        s.check_and_recover(&what, false);
    }
}

/// Which process of a push to kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    SshClient,
    DepotReceive,
}

/// Pushes a few MB and `kill -9`s `victim` once the client has sent a
/// first byte, a third, two thirds or all of its stream (the proxy holds the
/// stream there until the kill); then checks the repository and recovers.
fn kill_mid_push(victim: Victim) {
    let s = interrupted_setup(&[
        ("a", 3000),
        ("d/b", 1_000_000),
        ("d/c", 1_000_000),
        ("e", 1_500_000),
    ]);
    let len = s.stream.len() as u64;
    for at in [1, len / 3, 2 * len / 3, len] {
        let what = format!("{victim:?} killed after {at} of {len} bytes");
        let known = s.ci.server_pids().len();
        let pidfile = s.w.path(&format!("kill-{victim:?}-{at}.pid"));
        let gate = s.w.path(&format!("kill-{victim:?}-{at}.gate"));
        let reached = s.w.path(&format!("kill-{victim:?}-{at}.gate.reached"));
        let mut child =
            s.w.push_cmd(
                &s.ci,
                &s.w.sshd.url(""),
                &[
                    "--pidfile",
                    &pidfile.to_string_lossy(),
                    "--pause",
                    &format!("{at}:{}", gate.display()),
                ],
                &[&"--ref", &"proj/big", &s.tree],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn push");
        wait_until(
            &format!("{what}: progress"),
            Duration::from_secs(60),
            || reached.exists() || child.try_wait().ok().flatten().is_some(),
        );
        assert!(
            reached.exists() || at == len,
            "{what}: the push ended early"
        );
        let pid = match victim {
            Victim::SshClient => fs::read_to_string(&pidfile)
                .expect("ssh pid")
                .trim()
                .parse()
                .expect("pid"),
            Victim::DepotReceive => {
                let mut server = None;
                wait_until(
                    &format!("{what}: depot-receive"),
                    Duration::from_secs(30),
                    || {
                        server = s.ci.server_pids().get(known).copied().filter(|pid| {
                            fs::read_to_string(format!("/proc/{pid}/comm"))
                                .is_ok_and(|c| c.trim() == "depot-receive")
                        });
                        server.is_some() || child.try_wait().ok().flatten().is_some()
                    },
                );
                server.unwrap_or(0)
            }
        };
        if pid != 0 {
            kill9(pid);
        }
        fs::write(&gate, "").expect("open the gate");
        wait_bounded(
            &mut child,
            &format!("depot push after {victim:?} was killed"),
            Duration::from_secs(30),
        );
        let pushed = Pushed::from(child.wait_with_output().expect("output"));
        assert!(
            pushed.code == 5 || (pushed.code == 0 && at == len),
            "{what}: exit {} {:#}\n{}",
            pushed.code,
            pushed.json,
            pushed.stderr
        );
        if victim == Victim::DepotReceive && at > 1 && at < len {
            // Killed mid-push, it cannot clean up: the next push must.
            s.ci.wait_servers_gone();
            assert!(
                !staging_dirs(&s.repo).is_empty(),
                "{what}: expected the killed receiver's staging directory"
            );
        }
        s.check_and_recover(&what, at == len);
    }
}

#[test]
fn killing_the_ssh_client_mid_push_leaves_the_repo_consistent() {
    kill_mid_push(Victim::SshClient);
}

#[test]
fn killing_depot_receive_mid_push_leaves_the_repo_consistent() {
    kill_mid_push(Victim::DepotReceive);
}

// ---------------------------------------------------------------------------
// (e) corruption in transit

#[test]
fn a_flipped_byte_in_transit_publishes_nothing() {
    let w = world();
    let repo = w.repo("server");
    let ci = w
        .sshd
        .account("ci", &repo, &w.path("state"), &["--allow-ref", "proj/*"]);
    let url = w.sshd.url("");
    let base_tree = noise_tree(&w.path("base"), 3, &[("a", 100)]);
    let base = w
        .push(&ci, &url, &[], &[&"--ref", &"proj/c", &base_tree])
        .ok();
    let before = object_files(&repo);
    let tree = noise_tree(
        &w.path("tree"),
        4,
        &[
            ("a", 3000),
            ("b", 40_000),
            ("d/c", 1_300_000),
            ("d/e/f", 500),
        ],
    );
    // A directory mode the base lacks, so a dirmeta travels too.
    fs::set_permissions(tree.join("d/e"), fs::Permissions::from_mode(0o700)).expect("chmod");
    // (where, what the message must mention, the audit outcome)
    let cases: &[(&str, &str, &str)] = &[
        // Inside object data: content, dirtree, dirmeta, commit.
        ("object:1:0:0:0x01", "bad_object", "bad_object"),
        ("object:1:0:12:0x80", "bad_object", "bad_object"),
        ("object:1:1:-1:0x01", "bad_object", "bad_object"),
        ("object:1:2:-2:0x10", "bad_object", "bad_object"),
        ("object:2:0:3:0x01", "bad_object", "bad_object"),
        ("object:3:0:0:0x01", "bad_object", "bad_object"),
        ("object:4:0:-1:0x01", "bad_object", "bad_object"),
        // Frame headers: kind and length bytes, object-start fields.
        ("frame:1:0:0:0x04", "frame", "protocol"),
        ("frame:1:2:1:0x01", "frame", "protocol"),
        ("frame:2:1:0:0x01", "(protocol)", "protocol"),
        ("frame:2:0:4:0x01", "(protocol)", "protocol"),
        ("frame:2:0:5:0x07", "(protocol)", "protocol"),
        ("frame:2:0:20:0x01", "not asked for", "protocol"),
        ("frame:2:1:45:0x01", "(protocol)", "protocol"),
        ("frame:3:0:4:0x01", "(protocol)", "protocol"),
        ("frame:3:2:3:0x01", "(protocol)", "protocol"),
        // JSON: structure, types, names, checksums.
        ("msg:hello:0:0x01:depot-push", "magic", "protocol"),
        ("msg:update:0:0x01:{", "invalid message", "protocol"),
        ("msg:update:0:0x01:update", "invalid message", "protocol"),
        (
            "msg:update:7:0x02:\"new\":\"",
            "commit|invalid message|corrupted in transit",
            "incomplete|protocol",
        ),
        (
            "msg:want:12:0x02:\"objects\":[\"",
            "missing|invalid message",
            "protocol",
        ),
        ("msg:done:0:0x01:done", "invalid message", "protocol"),
    ];
    for (spec, words, _) in cases {
        let pushed = w.push(&ci, &url, &["--flip", spec], &[&"--ref", &"proj/c", &tree]);
        assert!(
            pushed.stderr.contains("proxy: flipped"),
            "{spec}: the byte to flip was not found (exit {}): {}",
            pushed.code,
            pushed.stderr
        );
        let msg = pushed.failed(&[3, 5]);
        assert!(
            words.split('|').any(|w| msg.contains(w)),
            "{spec}: the message should mention {words:?}: {msg}"
        );
        ci.wait_servers_gone();
        assert_eq!(read_ref(&repo, "proj/c"), base, "{spec}: the ref moved");
        assert_eq!(
            object_files(&repo),
            before,
            "{spec}: objects were published"
        );
    }
    ok(ostree_in(&repo).arg("fsck"));
    w.push(&ci, &url, &[], &[&"--ref", &"proj/c", &tree]).ok();
    ci.wait_servers_gone();
    assert!(staging_dirs(&repo).is_empty(), "{:?}", staging_dirs(&repo));
    assert_sound(&repo);
    // Each refused push is audited with its error code.
    let records = audit(&w.path("state"));
    assert_eq!(records.len(), cases.len() + 2, "one line per push");
    for ((spec, _, expected), r) in cases.iter().zip(&records[1..]) {
        let outcome = r["outcome"].as_str().unwrap_or_default();
        assert!(
            expected.split('|').any(|e| e == outcome),
            "{spec}: audited as {outcome:?}, not {expected:?}: {r}"
        );
    }
}

#[test]
fn a_ref_name_corrupted_in_transit_is_not_reported_as_success() {
    // A flipped byte turns the update's proj/x into proj/y: valid JSON, a
    // valid and allowed ref. The server cannot tell; the client can, since
    // the result names the refs the server moved, and must not exit 0 for a
    // push that did not move the ref it asked for.
    let w = world();
    let repo = w.repo("server");
    let ci = w
        .sshd
        .account("ci", &repo, &w.path("state"), &["--allow-ref", "proj/*"]);
    let tree = noise_tree(&w.path("tree"), 4, &[("a", 3000)]);
    let pushed = w.push(
        &ci,
        &w.sshd.url(""),
        &["--flip", "msg:update:5:0x01:proj/x"],
        &[&"--ref", &"proj/x", &tree],
    );
    assert!(
        pushed.stderr.contains("proxy: flipped"),
        "{}",
        pushed.stderr
    );
    assert!(!refs(&repo).contains_key("proj/x"));
    ci.wait_servers_gone();
    assert_sound(&repo);
    let msg = pushed.failed(&[5]);
    assert!(msg.contains("proj/x"), "{msg}");
}

// ---------------------------------------------------------------------------
// (f), (g) hostile raw streams over plain ssh

#[test]
fn a_frame_declaring_4_gib_is_refused_at_once_in_little_memory() {
    assert!(
        Path::new("/usr/bin/time").exists(),
        "/usr/bin/time is missing; scripts/test.sh installs it (apt-get install time)"
    );
    let w = world();
    let repo = w.repo("server");
    let state = w.path("state");
    let rss = w.path("rss");
    let command = format!(
        "/usr/bin/time -f %M -o {} {}",
        shell_quote(&rss.to_string_lossy()),
        Sshd::receive_command(&repo, &state, "big", &["--allow-ref", "**"])
    );
    let key = w.sshd.account_with_command("big", &command);
    let mut child = key
        .ssh("depot-receive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut head = hello_frame(1, 1);
    head.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff]);
    stdin.write_all(&head).expect("write");
    stdin.flush().expect("flush");
    // Keep sending what a buffering server would have to hold, without ever
    // closing the stream: the server must answer on the header alone.
    let started = Instant::now();
    let feeder = std::thread::spawn(move || {
        let chunk = noise(5, 64 * 1024);
        for _ in 0..256 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
        // Hold the stream open until the server is gone.
        let _ = stdin.write_all(&[0; 1]);
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut stdout)
        .expect("read");
    let status = wait_bounded(&mut child, "ssh to depot-receive", Duration::from_secs(20));
    let elapsed = started.elapsed();
    drop(feeder);
    assert!(!status.success());
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let frames = decode_stream(&stdout);
    assert!(
        matches!(
            frames.first(),
            Some((_, Recorded::Message(Ok(Message::Welcome { .. }))))
        ),
        "{frames:?}"
    );
    let (code, message) = server_error(&stdout);
    assert_eq!(code, ErrorCode::Protocol, "{message}");
    assert!(
        message.contains("4294967295") && message.contains("1048576") && message.contains("limit"),
        "{message}"
    );
    key.wait_servers_gone();
    wait_until("/usr/bin/time's report", Duration::from_secs(10), || {
        fs::read_to_string(&rss).is_ok_and(|t| {
            t.lines()
                .last()
                .is_some_and(|l| l.trim().parse::<u64>().is_ok())
        })
    });
    let report = fs::read_to_string(&rss).expect("rss");
    let peak_kib: u64 = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("peak RSS");
    assert!(
        peak_kib < 12 * 1024,
        "depot-receive peaked at {peak_kib} KiB for a refused frame"
    );
    assert!(object_files(&repo).is_empty());
    let records = audit(&state);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["outcome"], "protocol");
}

#[test]
fn an_unknown_protocol_version_is_refused_naming_the_supported_ones() {
    let w = world();
    let repo = w.repo("server");
    let key = w
        .sshd
        .account("v", &repo, &w.path("state"), &["--allow-ref", "**"]);
    let mut c = key.ssh("depot-receive");
    let out = run_with_stdin(&mut c, &hello_frame(99, 99));
    assert!(!out.status.success());
    let frames = decode_stream(&out.stdout);
    assert_eq!(frames.len(), 1, "only the error: {frames:?}");
    let (code, message) = server_error(&out.stdout);
    assert_eq!(code, ErrorCode::UnsupportedVersion, "{message}");
    assert!(
        message.contains("1 to 1") && message.contains("99 to 99"),
        "{message}"
    );
    key.wait_servers_gone();
    let records = audit(&w.path("state"));
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0]["outcome"], "unsupported_version",
        "{}",
        records[0]
    );
}

// ---------------------------------------------------------------------------
// (h) --max-object-size

/// An account allowed `proj/*` with `--max-object-size 64K`.
fn small_objects_server() -> (World, PathBuf, Account) {
    limited_server(&["--max-object-size", "64K"])
}

/// A server whose one key may write `proj/*` under the given limits.
fn limited_server(limits: &[&str]) -> (World, PathBuf, Account) {
    let w = world();
    let repo = w.repo("server");
    let args: Vec<&str> = ["--allow-ref", "proj/*"]
        .iter()
        .chain(limits)
        .copied()
        .collect();
    let key = w.sshd.account("limited", &repo, &w.path("state"), &args);
    (w, repo, key)
}

/// Nothing of a refused push is on the server, and the key still pushes
/// a tree under the limit.
fn assert_nothing_published_then_small_push_works(w: &World, repo: &Path, key: &Account) {
    key.wait_servers_gone();
    assert!(refs(repo).is_empty());
    assert!(object_files(repo).is_empty(), "{:?}", object_files(repo));
    assert!(staging_dirs(repo).is_empty());
    let small = noise_tree(&w.path("small"), 9, &[("ok", 1000), ("d/ok", 60_000)]);
    w.push(
        key,
        &w.sshd.url(""),
        &[],
        &[&"--ref", &"proj/small", &small],
    )
    .ok();
    assert_sound(repo);
}

#[test]
fn a_push_of_more_objects_than_the_server_allows_is_refused_and_nothing_is_published() {
    // The small tree of the check below is 6 objects; this one is 25 (20
    // files, 3 dirtrees, a dirmeta and a commit).
    let (w, repo, key) = limited_server(&["--max-objects", "8"]);
    let names: Vec<String> = (0..20).map(|i| format!("d{}/f{i}", i % 2)).collect();
    let files: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 100)).collect();
    let many = noise_tree(&w.path("many"), 8, &files);
    let pushed = w.push(&key, &w.sshd.url(""), &[], &[&"--ref", &"proj/many", &many]);
    assert_nothing_published_then_small_push_works(&w, &repo, &key);
    let msg = pushed.failed(&[3]);
    assert!(
        msg.contains("--max-objects") && msg.contains("more than 8"),
        "{msg}"
    );
    assert_eq!(pushed.json["code"], "too_large", "{:#}", pushed.json);
}

#[test]
fn an_incompressible_file_over_the_size_limit_is_refused_and_nothing_is_published() {
    let (w, repo, key) = small_objects_server();
    let noisy = noise_tree(&w.path("noisy"), 6, &[("ok", 1000), ("big", 200_000)]);
    let pushed = w.push(&key, &w.sshd.url(""), &[], &[&"--ref", &"proj/a", &noisy]);
    assert_nothing_published_then_small_push_works(&w, &repo, &key);
    let msg = pushed.failed(&[3]);
    assert!(msg.contains("big") && msg.contains("65536"), "{msg}");
    assert_eq!(pushed.json["code"], "too_large", "{:#}", pushed.json);
}

#[test]
fn a_compressible_file_over_the_size_limit_is_refused_and_nothing_is_published() {
    // Small as stored, too large once inflated.
    let (w, repo, key) = small_objects_server();
    let zeros = w.path("zeros");
    fs::create_dir_all(&zeros).expect("mkdir");
    fs::write(zeros.join("z"), vec![0u8; 200_000]).expect("write");
    let pushed = w.push(&key, &w.sshd.url(""), &[], &[&"--ref", &"proj/b", &zeros]);
    assert_nothing_published_then_small_push_works(&w, &repo, &key);
    let msg = pushed.failed(&[3]);
    assert!(msg.contains("65536"), "{msg}");
    assert_eq!(pushed.json["code"], "too_large", "{:#}", pushed.json);
    let records = audit(&w.path("state"));
    assert_eq!(records[0]["outcome"], "too_large", "{}", records[0]);
}
