//! The receiver's session, driven frame by frame from a raw client over an
//! in-memory pipe: the cases an end-to-end test can only hit by luck (a ref
//! moving between `accepted` and `done`) become deterministic here.

use std::fs;
use std::path::{Path, PathBuf};

use depot::checksum::Checksum;
use depot::commit;
use depot::object::{ObjectName, ObjectType, parse_filez_header};
use depot::protocol::{ErrorCode, FrameReader, FrameWriter, Incoming, Message, RefChange};
use depot::receive::{Policy, serve};
use depot::refname::RefName;
use depot::repo::{Expected, RefUpdate, Repo};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

use crate::util::*;

struct Client {
    r: FrameReader<ReadHalf<DuplexStream>>,
    w: FrameWriter<WriteHalf<DuplexStream>>,
    server: tokio::task::JoinHandle<Result<depot::receive::Report, depot::receive::Failure>>,
}

fn policy(repo: &Path, state: &Path, allow: &[&str]) -> Policy {
    Policy {
        repo: repo.to_path_buf(),
        allow_refs: allow.iter().map(|p| p.parse().expect("pattern")).collect(),
        key_id: "test".into(),
        max_object_size: 1 << 30,
        max_push_size: 1 << 32,
        max_objects: 1 << 20,
        min_free_space: 0,
        allow_non_fast_forward: false,
        state_dir: state.to_path_buf(),
        idle_timeout: std::time::Duration::from_secs(60),
    }
}

impl Client {
    fn start(policy: Policy) -> Client {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server);
        let server = tokio::spawn(async move { serve(&policy, sr, sw).await });
        let (cr, cw) = tokio::io::split(client);
        Client {
            r: FrameReader::new(cr),
            w: FrameWriter::new(cw),
            server,
        }
    }

    async fn send(&mut self, m: Message) {
        self.w.send(&m).await.expect("send");
        self.w.flush().await.expect("flush");
    }

    async fn recv(&mut self) -> Message {
        match self.r.read().await.expect("read") {
            Some(Incoming::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn hello(&mut self, min: u32, max: u32) -> Message {
        self.send(Message::Hello {
            magic: "depot-push".into(),
            min_version: min,
            max_version: max,
            software: "test".into(),
            capabilities: vec![],
        })
        .await;
        self.recv().await
    }

    /// Says hello (version 1), then asks for the ref changes `(name, old,
    /// new)`; returns the changes as sent.
    async fn update(&mut self, changes: &[(&str, Option<Checksum>, Checksum)]) -> Vec<RefChange> {
        assert!(matches!(
            self.hello(1, 1).await,
            Message::Welcome { version: 1, .. }
        ));
        let updates: Vec<RefChange> = changes
            .iter()
            .map(|&(name, old, new)| RefChange {
                name: r(name),
                old,
                new,
            })
            .collect();
        self.send(Message::Update {
            updates: updates.clone(),
        })
        .await;
        updates
    }

    async fn send_object(&mut self, name: &ObjectName, data: &[u8]) {
        self.w.send_object(name, data).await.expect("send object");
    }

    /// The error the server ends with.
    async fn error(&mut self) -> (ErrorCode, String) {
        match self.recv().await {
            Message::Error { code, message } => (code, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

/// A server repository plus a scratch repository where the test builds
/// commits whose objects it then sends by hand.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    server: PathBuf,
    scratch: Repo,
}

fn setup() -> Setup {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let server = dir.join("server");
    Repo::init(&server).expect("init server");
    let scratch = Repo::init(&dir.join("scratch")).expect("init scratch");
    Setup {
        _tmp: tmp,
        dir,
        server,
        scratch,
    }
}

impl Setup {
    /// Commits a tree of `files` into the scratch repo with `parent`; returns the commit.
    fn commit(&self, files: &[(&str, &str)], parent: Option<Checksum>) -> Checksum {
        let tree = self.dir.join(format!("tree-{}", rand_suffix()));
        fs::create_dir_all(&tree).expect("mkdir");
        for (n, c) in files {
            fs::write(tree.join(n), c).expect("write");
        }
        let opts = commit::Options {
            ref_name: None,
            subject: "s".into(),
            timestamp: Some(1_600_000_000),
            parent: parent.map_or(commit::Parent::None, commit::Parent::Commit),
            ..commit::Options::default()
        };
        commit::commit_dir(&self.scratch, &tree, &opts)
            .expect("commit")
            .commit
    }

    /// Every object of `commit` in the scratch repo, commit last.
    fn objects(&self, commit: &Checksum) -> Vec<(ObjectName, Vec<u8>)> {
        let c = self.scratch.load_commit(commit).expect("load");
        let mut out = Vec::new();
        let mut stack = vec![(c.root_tree, c.root_meta)];
        while let Some((t, m)) = stack.pop() {
            let tree = self.scratch.load_dirtree(&t).expect("tree");
            for (_, f) in tree.files() {
                out.push(ObjectName::new(*f, ObjectType::File));
            }
            for d in tree.dirs() {
                stack.push((d.tree, d.meta));
            }
            out.push(ObjectName::new(t, ObjectType::DirTree));
            out.push(ObjectName::new(m, ObjectType::DirMeta));
        }
        out.push(ObjectName::new(*commit, ObjectType::Commit));
        out.sort();
        out.dedup();
        out.sort_by_key(|n| n.kind == ObjectType::Commit);
        out.into_iter()
            .map(|n| {
                (
                    n,
                    fs::read(self.scratch.object_path(&n)).expect("read object"),
                )
            })
            .collect()
    }

    fn set_server_ref(&self, name: &str, commit: &Checksum) {
        // Publish the commit's objects on the server, then move the ref.
        let repo = Repo::open(&self.server).expect("open");
        let tx = repo.begin().expect("begin");
        for (n, data) in self.objects(commit) {
            let p = repo.object_path(&n);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, data).expect("write");
        }
        tx.commit(&[RefUpdate {
            name: name.parse().expect("ref"),
            expected: Expected::Any,
            new: Some(*commit),
        }])
        .expect("set ref");
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn r(s: &str) -> RefName {
    s.parse().expect("ref")
}

/// Runs the whole happy path for `commit` up to `accepted` and the
/// negotiation; returns the missing objects.
async fn accept_and_negotiate(
    c: &mut Client,
    s: &Setup,
    name: &str,
    old: Option<Checksum>,
    commit: Checksum,
) -> Vec<(ObjectName, Vec<u8>)> {
    let updates = c.update(&[(name, old, commit)]).await;
    assert_eq!(c.recv().await, Message::Accepted { updates });
    let objects = s.objects(&commit);
    c.send(Message::Want {
        objects: objects.iter().map(|(n, _)| *n).collect(),
    })
    .await;
    let Message::Missing { objects: missing } = c.recv().await else {
        panic!("missing")
    };
    objects
        .into_iter()
        .filter(|(n, _)| missing.contains(n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_moving_during_the_push_is_a_conflict_and_nothing_changes() {
    let s = setup();
    let base = s.commit(&[("a", "1")], None);
    s.set_server_ref("main", &base);
    let mine = s.commit(&[("a", "2")], Some(base));
    let theirs = s.commit(&[("a", "3")], Some(base));
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", Some(base), mine).await;
    // Someone else moves the ref after our update was accepted.
    s.set_server_ref("main", &theirs);
    send_all(&mut c, &missing).await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Conflict, "{msg}");
    assert!(
        msg.contains("moved") && msg.contains(&theirs.to_string()),
        "{msg}"
    );
    assert_eq!(read_ref(&s.server, "main"), theirs.to_string());
    assert!(c.server.await.expect("join").is_err());
    ok(ostree_in(&s.server).arg("fsck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_old_value_is_refused_before_any_object() {
    let s = setup();
    let base = s.commit(&[("a", "1")], None);
    s.set_server_ref("main", &base);
    let mine = s.commit(&[("a", "2")], None);
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    c.hello(1, 1).await;
    c.send(Message::Update {
        updates: vec![RefChange {
            name: r("main"),
            old: None,
            new: mine,
        }],
    })
    .await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Conflict);
    assert!(
        msg.contains("main") && msg.contains(&base.to_string()),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_checked_before_any_object_is_taken() {
    let s = setup();
    let commit = s.commit(&[("a", "1")], None);
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["proj/*"]));
    c.hello(1, 1).await;
    c.send(Message::QueryRefs {
        refs: vec![r("proj/x"), r("other/x"), r("proj/a/b")],
    })
    .await;
    let Message::Refs { refs } = c.recv().await else {
        panic!("refs")
    };
    assert_eq!(
        refs.iter().map(|s| s.writable).collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(
        refs[1]
            .reason
            .as_deref()
            .is_some_and(|m| m.contains("other/x") && m.contains("proj/*"))
    );
    c.send(Message::Update {
        updates: vec![RefChange {
            name: r("other/x"),
            old: None,
            new: commit,
        }],
    })
    .await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Forbidden, "{msg}");
    // An object before `accepted` is refused too.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["proj/*"]));
    c.hello(1, 1).await;
    let (n, d) = s.objects(&commit).remove(0);
    c.send_object(&n, &d).await;
    c.w.flush().await.expect("flush");
    assert_eq!(c.error().await.0, ErrorCode::Forbidden);
    assert!(object_files(&s.server).is_empty());
    // No --allow-ref at all: nothing may be written, and the message says so.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &[]));
    c.hello(1, 1).await;
    c.send(Message::Update {
        updates: vec![RefChange {
            name: r("main"),
            old: None,
            new: commit,
        }],
    })
    .await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(msg.contains("no --allow-ref"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_and_protocol_errors_publish_nothing() {
    // What to do to the missing objects, the code expected, words expected.
    type Tamper = fn(&mut Vec<(ObjectName, Vec<u8>)>);
    let s = setup();
    let commit = s.commit(&[("a", "1"), ("b", "2")], None);
    let cases: Vec<(&str, Tamper, ErrorCode, &str)> = vec![
        (
            "flipped dirtree byte",
            |o| {
                o.iter_mut()
                    .find(|(n, _)| n.kind == ObjectType::DirTree)
                    .expect("tree")
                    .1[0] ^= 1;
            },
            ErrorCode::BadObject,
            "hashes to",
        ),
        (
            "flipped content byte",
            |o| {
                let d = &mut o
                    .iter_mut()
                    .find(|(n, _)| n.kind == ObjectType::File)
                    .expect("file")
                    .1;
                let last = d.len() - 1;
                d[last] ^= 0x55;
            },
            ErrorCode::BadObject,
            "object",
        ),
        (
            "truncated content",
            |o| {
                o.iter_mut()
                    .find(|(n, _)| n.kind == ObjectType::File)
                    .expect("file")
                    .1
                    .pop();
            },
            ErrorCode::BadObject,
            "object",
        ),
        (
            "unrequested object",
            |o| {
                o.push((
                    ObjectName::new(Checksum::from_array([7; 32]), ObjectType::DirMeta),
                    vec![0; 12],
                ));
            },
            ErrorCode::Protocol,
            "not asked for",
        ),
        (
            "commit without its tree",
            |o| o.retain(|(n, _)| n.kind != ObjectType::DirTree),
            ErrorCode::Incomplete,
            "incomplete",
        ),
        (
            "object sent twice",
            |o| {
                let first = o[0].clone();
                o.push(first);
            },
            ErrorCode::Protocol,
            "sent twice",
        ),
    ];
    for (what, tamper, code, words) in cases {
        let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
        let mut missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
        tamper(&mut missing);
        for (n, d) in &missing {
            if c.w.send_object(n, d).await.is_err() {
                break;
            }
        }
        let _ = c.w.send(&Message::Done {}).await;
        let _ = c.w.flush().await;
        let (got, msg) = c.error().await;
        assert_eq!(got, code, "{what}: {msg}");
        assert!(msg.contains(words), "{what}: {msg}");
        assert!(
            object_files(&s.server).is_empty(),
            "{what}: objects were published"
        );
        assert!(
            Repo::open(&s.server)
                .expect("open")
                .read_ref(&r("main"))
                .expect("read")
                .is_none()
        );
    }
    // The same objects, untampered, go through.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    send_all(&mut c, &missing).await;
    assert!(matches!(c.recv().await, Message::Result { .. }));
    assert_eq!(read_ref(&s.server, "main"), commit.to_string());
    ok(ostree_in(&s.server).arg("fsck"));
}

/// The hex of a hash chain: deflate shrinks it only by half, so its object
/// stays large.
fn noise(seed: u8, len: usize) -> String {
    use sha2::{Digest, Sha256};
    let mut out = String::with_capacity(len);
    let mut block = Sha256::digest([seed]);
    while out.len() < len {
        out.push_str(&hex::encode(block));
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// Content objects in an order that puts each large one (streamed to a
/// verifier) between small ones (gathered into batches), metadata last;
/// each object split into frames of 1,000 bytes at most.
async fn send_interleaved(c: &mut Client, missing: &[(ObjectName, Vec<u8>)]) {
    let small_limit = 64 * 1024;
    let (content, metadata): (Vec<_>, Vec<_>) = missing
        .iter()
        .partition(|(n, _)| n.kind == ObjectType::File);
    let (mut small, mut large): (Vec<_>, Vec<_>) = content
        .into_iter()
        .partition(|(_, d)| d.len() <= small_limit);
    let mut order = Vec::new();
    while !small.is_empty() || !large.is_empty() {
        order.extend(small.drain(..small.len().min(3)));
        order.extend(large.pop());
    }
    order.extend(metadata);
    for (n, d) in order {
        let sent = async {
            c.w.send_object_start(n, d.len() as u64).await?;
            for chunk in d.chunks(1000) {
                c.w.send_object_data(chunk).await?;
            }
            Ok::<(), depot::protocol::connection::Error>(())
        };
        if sent.await.is_err() {
            break;
        }
    }
    let _ = c.w.send(&Message::Done {}).await;
    let _ = c.w.flush().await;
}

/// Sends `missing` as [`send_interleaved`] does, with one object damaged,
/// and checks that the push is refused naming it and nothing is published.
async fn refused_for_damage(
    c: &mut Client,
    s: &Setup,
    missing: &[(ObjectName, Vec<u8>)],
    damaged: ObjectName,
) {
    send_interleaved(c, missing).await;
    let (code, message) = c.error().await;
    assert_eq!(code, ErrorCode::BadObject, "{message}");
    assert!(message.contains(&damaged.to_string()), "{message}");
    assert!(object_files(&s.server).is_empty(), "objects were published");
}

/// Sends `missing` as [`send_interleaved`] does and checks that `commit`
/// lands under `main`, that ostree finds the repository sound and checks the
/// commit out; returns the checkout.
async fn lands_and_checks_out(
    c: &mut Client,
    s: &Setup,
    missing: &[(ObjectName, Vec<u8>)],
    commit: Checksum,
) -> PathBuf {
    send_interleaved(c, missing).await;
    assert!(matches!(c.recv().await, Message::Result { .. }));
    assert_eq!(read_ref(&s.server, "main"), commit.to_string());
    ok(ostree_in(&s.server).arg("fsck"));
    let checkout = s.dir.join("checkout");
    ok(ostree_in(&s.server)
        .arg("checkout")
        .arg(commit.to_string())
        .arg(&checkout));
    checkout
}

/// Sends every object in `missing`, then `done`.
async fn send_all(c: &mut Client, missing: &[(ObjectName, Vec<u8>)]) {
    for (n, d) in missing {
        c.send_object(n, d).await;
    }
    c.send(Message::Done {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_split_over_frames_among_large_ones_arrive_whole_or_not_at_all() {
    // The receiver gathers objects of 64 KiB or less whole and hands them to
    // its verifiers in batches; larger ones stream.
    let s = setup();
    let mut files: Vec<(String, String)> = (0..60)
        .map(|i| {
            (
                format!("text-{i:02}"),
                format!("small file {i}\n").repeat(90),
            )
        })
        .collect();
    // Hex deflates to about half: objects from about 40 to 80 KiB, on both
    // sides of the limit.
    for (i, len) in (80_000..=160_000).step_by(5_000).enumerate() {
        files.push((format!("hex-{i:02}"), noise(i as u8, len)));
    }
    let listed: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let commit = s.commit(&listed, None);
    let sizes: Vec<usize> = s.objects(&commit).iter().map(|(_, d)| d.len()).collect();
    let near = |lo: usize, hi: usize| sizes.iter().any(|&n| lo < n && n <= hi);
    assert!(
        near(56 * 1024, 64 * 1024) && near(64 * 1024, 72 * 1024),
        "objects just under and just over 64 KiB: {sizes:?}"
    );

    // A small object that spans many frames is damaged.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let mut missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    let (damaged, data) = missing
        .iter_mut()
        .find(|(n, d)| n.kind == ObjectType::File && (30 * 1024..=64 * 1024).contains(&d.len()))
        .expect("a small object of several frames");
    data[20_000] ^= 0x55;
    let damaged = *damaged;
    refused_for_damage(&mut c, &s, &missing, damaged).await;

    // Undamaged, the same frames land the commit.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    let checkout = lands_and_checks_out(&mut c, &s, &missing, commit).await;
    for (name, content) in &files {
        assert_eq!(
            &fs::read_to_string(checkout.join(name)).expect("read"),
            content,
            "{name}"
        );
    }
}

/// `filez` with its deflate stream replaced by one stored block of its
/// payload: the same object, re-encoded to a size the test chooses.
fn stored_block_filez(filez: &[u8], payload: &[u8]) -> Vec<u8> {
    let header_len = u32::from_be_bytes(filez[..4].try_into().expect("4 bytes")) as usize;
    let len = u16::try_from(payload.len()).expect("one stored block holds 65,535 bytes");
    let mut out = filez[..8 + header_len].to_vec();
    // BFINAL = 1, BTYPE = 00 (stored), then LEN and its complement.
    out.push(0x01);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_exactly_64_kib_and_one_byte_more_take_both_paths_and_are_verified() {
    // 65,536 bytes is the largest object the receiver gathers whole; one
    // byte more streams. Both must be verified alike.
    const LIMIT: usize = 64 * 1024;
    let s = setup();
    let probe = s.commit(&[("probe", "x")], None);
    let (_, probe_filez) = s
        .objects(&probe)
        .into_iter()
        .find(|(n, _)| n.kind == ObjectType::File)
        .expect("a content object");
    let header_len = u32::from_be_bytes(probe_filez[..4].try_into().expect("4 bytes")) as usize;
    // 8-byte prefix, header, 5-byte stored-block header, payload.
    let at_limit = noise(1, LIMIT - 8 - header_len - 5);
    let over_limit = noise(2, LIMIT + 1 - 8 - header_len - 5);
    let commit = s.commit(&[("at", &at_limit), ("over", &over_limit)], None);

    let reencode = |missing: &mut Vec<(ObjectName, Vec<u8>)>| {
        let mut sizes = Vec::new();
        for (_, d) in missing
            .iter_mut()
            .filter(|(n, _)| n.kind == ObjectType::File)
        {
            let header_len = u32::from_be_bytes(d[..4].try_into().expect("4 bytes")) as usize;
            let (_, size) = parse_filez_header(&d[8..8 + header_len]).expect("header");
            let payload = [&at_limit, &over_limit]
                .into_iter()
                .find(|p| p.len() as u64 == size)
                .expect("the object of one of the two files");
            *d = stored_block_filez(d, payload.as_bytes());
            sizes.push(d.len());
        }
        sizes.sort_unstable();
        assert_eq!(sizes, [LIMIT, LIMIT + 1]);
    };

    // The object of exactly 64 KiB, damaged in its last byte, is refused.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let mut missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    reencode(&mut missing);
    let (damaged, data) = missing
        .iter_mut()
        .find(|(_, d)| d.len() == LIMIT)
        .expect("the 64 KiB object");
    *data.last_mut().expect("bytes") ^= 0x01;
    let damaged = *damaged;
    refused_for_damage(&mut c, &s, &missing, damaged).await;

    // Intact, both land, stored as they were sent.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let mut missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    reencode(&mut missing);
    let checkout = lands_and_checks_out(&mut c, &s, &missing, commit).await;
    assert_eq!(
        fs::read_to_string(checkout.join("at")).expect("read"),
        at_limit
    );
    assert_eq!(
        fs::read_to_string(checkout.join("over")).expect("read"),
        over_limit
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_asked_about_again_is_not_missing_again_and_arrives_once() {
    let s = setup();
    let commit = s.commit(&[("a", "1"), ("b", "2")], None);
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    assert!(missing.len() > 2, "{missing:?}");
    // One object arrives; then every name is asked about again, one twice.
    c.send_object(&missing[0].0, &missing[0].1).await;
    let mut again: Vec<ObjectName> = missing.iter().map(|(n, _)| *n).collect();
    again.push(again[1]);
    c.send(Message::Want { objects: again }).await;
    assert_eq!(c.recv().await, Message::Missing { objects: vec![] });
    for (n, d) in &missing[1..] {
        c.send_object(n, d).await;
    }
    c.send(Message::Done {}).await;
    assert!(matches!(c.recv().await, Message::Result { .. }));
    assert!(c.server.await.expect("join").is_ok());
    assert_eq!(read_ref(&s.server, "main"), commit.to_string());
    ok(ostree_in(&s.server).arg("fsck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_fast_forward_is_refused_unless_allowed() {
    let s = setup();
    let base = s.commit(&[("a", "1")], None);
    s.set_server_ref("main", &base);
    let unrelated = s.commit(&[("a", "9")], None);
    for allow in [false, true] {
        let mut p = policy(&s.server, &s.dir.join("state"), &["**"]);
        p.allow_non_fast_forward = allow;
        let mut c = Client::start(p);
        let old = Repo::open(&s.server)
            .expect("open")
            .read_ref(&r("main"))
            .expect("read");
        let missing = accept_and_negotiate(&mut c, &s, "main", old, unrelated).await;
        send_all(&mut c, &missing).await;
        let reply = c.recv().await;
        if allow {
            assert!(matches!(reply, Message::Result { .. }), "{reply:?}");
            assert_eq!(read_ref(&s.server, "main"), unrelated.to_string());
        } else {
            let Message::Error { code, message } = reply else {
                panic!("{reply:?}")
            };
            assert_eq!(code, ErrorCode::NonFastForward, "{message}");
            assert_eq!(read_ref(&s.server, "main"), base.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_negotiated() {
    let s = setup();
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let Message::Error { code, message } = c.hello(99, 99).await else {
        panic!("error")
    };
    assert_eq!(code, ErrorCode::UnsupportedVersion);
    assert!(
        message.contains("1 to 1") && message.contains("99 to 99"),
        "{message}"
    );
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    assert!(
        matches!(c.hello(1, 7).await, Message::Welcome { version: 1, .. }),
        "the highest common version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_leaves_an_audit_record() {
    let s = setup();
    let commit = s.commit(&[("a", "1")], None);
    let state = s.dir.join("state");
    let mut c = Client::start(policy(&s.server, &state, &["proj/**"]));
    c.hello(1, 1).await;
    c.send(Message::Update {
        updates: vec![RefChange {
            name: r("nope"),
            old: None,
            new: commit,
        }],
    })
    .await;
    c.error().await;
    let _ = c.server.await;
    let mut c = Client::start(policy(&s.server, &state, &["proj/**"]));
    let missing = accept_and_negotiate(&mut c, &s, "proj/a/b", None, commit).await;
    send_all(&mut c, &missing).await;
    assert!(matches!(c.recv().await, Message::Result { .. }));
    let _ = c.server.await;
    let lines: Vec<serde_json::Value> = fs::read_to_string(state.join("audit.jsonl"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["outcome"], "forbidden");
    assert_eq!(lines[0]["objects"], 0);
    assert_eq!(lines[1]["outcome"], "ok");
    assert_eq!(lines[1]["key_id"], "test");
    assert_eq!(lines[1]["refs"][0]["ref"], "proj/a/b");
    assert_eq!(lines[1]["refs"][0]["new"], commit.to_string());
    assert_eq!(lines[1]["objects"], missing.len() as u64);
    assert!(state.join("refs-changed").exists());

    // What a client chooses the length of (its software name, a magic the
    // error quotes) is cut short in the log: a key that may write nothing
    // must not fill the state directory's disk a megabyte at a time.
    let mut c = Client::start(policy(&s.server, &state, &[]));
    let long = "x".repeat(500_000);
    c.send(Message::Hello {
        magic: long.clone(),
        min_version: 1,
        max_version: 1,
        software: long,
        capabilities: Vec::new(),
    })
    .await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.len() > 500_000, "the client is told in full");
    let _ = c.server.await;
    let log = fs::read_to_string(state.join("audit.jsonl")).expect("audit log");
    let last = log.lines().last().expect("a third record");
    assert!(last.len() < 8192, "{} bytes", last.len());
    let record: serde_json::Value = serde_json::from_str(last).expect("json");
    assert!(
        record["client"]
            .as_str()
            .expect("client")
            .ends_with("(499744 more bytes)"),
        "{record}"
    );
    assert!(
        record["error"]
            .as_str()
            .expect("error")
            .contains("more bytes)"),
        "{record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_bound_to_another_ref_is_refused_and_nothing_is_published() {
    let s = setup();
    let tree = s.dir.join("bound-tree");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("a"), "1").expect("write");
    let opts = commit::Options {
        ref_name: Some(r("release/1")),
        bind: true,
        subject: "s".into(),
        timestamp: Some(1_600_000_000),
        ..commit::Options::default()
    };
    let bound = commit::commit_dir(&s.scratch, &tree, &opts)
        .expect("commit")
        .commit;

    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", None, bound).await;
    send_all(&mut c, &missing).await;
    let (code, message) = c.error().await;
    assert_eq!(code, ErrorCode::Forbidden, "{message}");
    assert!(
        message.contains("bound to ref(s) release/1") && message.contains("not main"),
        "{message}"
    );
    assert!(object_files(&s.server).is_empty(), "objects were published");
    assert!(!s.server.join("refs/heads/main").exists());

    // Under the ref it is bound to, it lands, and ostree pulls it from there.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "release/1", None, bound).await;
    send_all(&mut c, &missing).await;
    assert!(matches!(c.recv().await, Message::Result { .. }));
    assert_eq!(read_ref(&s.server, "release/1"), bound.to_string());
    ok(ostree_in(&s.server).arg("fsck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_silent_is_given_up_on_and_the_lock_released() {
    let s = setup();
    let commit = s.commit(&[("a", "1")], None);
    let mut p = policy(&s.server, &s.dir.join("state"), &["**"]);
    p.idle_timeout = std::time::Duration::from_secs(1);
    let mut c = Client::start(p);
    let missing = accept_and_negotiate(&mut c, &s, "main", None, commit).await;
    assert!(!missing.is_empty());
    // Accepted, and the shared lock taken; then nothing more arrives while
    // the connection stays open.
    let (code, msg) = tokio::time::timeout(std::time::Duration::from_secs(30), c.error())
        .await
        .expect("the server gave up within 30 s");
    assert_eq!(code, ErrorCode::Protocol, "{msg}");
    assert!(msg.contains("sent nothing for 1 s"), "{msg}");
    assert!(c.server.await.expect("join").is_err());
    // The lock is free for a deleter while the client still holds the
    // connection, and the ref never moved.
    ok(ostree_in(&s.server).args(["prune", "--refs-only"]));
    assert!(!s.server.join("refs/heads/main").exists());
    ok(ostree_in(&s.server).arg("fsck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_refused_when_its_bytes_would_eat_into_the_free_space_reserve() {
    let s = setup();
    let commit = s.commit(&[("a", "1")], None);
    let stat = nix::sys::statvfs::statvfs(&s.server).expect("statvfs");
    let free = stat.blocks_available() * stat.fragment_size();
    // The reserve alone is met, with 32 MiB to spare; the reserve plus the
    // first 64 MiB that may arrive before the next check is not.
    let mut p = policy(&s.server, &s.dir.join("state"), &["**"]);
    p.min_free_space = free - 32 * 1024 * 1024;
    let mut c = Client::start(p);
    c.update(&[("main", None, commit)]).await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::NoSpace, "{msg}");
    assert!(msg.contains("too few for the next"), "{msg}");
    assert!(c.server.await.expect("join").is_err());
    assert!(!s.server.join("refs/heads/main").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refs_whose_paths_collide_are_refused_before_any_is_written() {
    let s = setup();
    let commit = s.commit(&[("a", "1")], None);
    s.set_server_ref("proj/y", &commit);
    s.set_server_ref("proj/dir/leaf", &commit);
    for (names, culprit, why) in [
        // proj/y is a ref, so proj/y/z would need it to be a directory.
        (
            vec!["proj/new", "proj/y/z"],
            "proj/y/z",
            "ref proj/y exists",
        ),
        // proj/dir holds refs, so it cannot be one.
        (vec!["proj/new", "proj/dir"], "proj/dir", "is a directory"),
        // Two refs of one update that collide with each other.
        (
            vec!["proj/a", "proj/a/b"],
            "proj/a",
            "proj/a/b is written with it",
        ),
    ] {
        let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
        let changes: Vec<_> = names.iter().map(|&n| (n, None, commit)).collect();
        c.update(&changes).await;
        let (code, msg) = c.error().await;
        assert_eq!(code, ErrorCode::Forbidden, "{names:?}: {msg}");
        assert!(
            msg.contains(&format!("ref {culprit} cannot be written")) && msg.contains(why),
            "{names:?}: {msg}"
        );
        assert!(c.server.await.expect("join").is_err());
        for n in ["proj/new", "proj/a"] {
            assert!(!s.server.join("refs/heads").join(n).exists(), "{n} written");
        }
    }
    // A deeper ref beside them is fine.
    let depot_repo = Repo::open(&s.server).expect("open");
    depot_repo
        .check_ref_path(&r("proj/dir/other"), &[&r("proj/new")])
        .expect("no collision");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_metadata_is_taken_only_for_the_pushed_commits() {
    let s = setup();
    let theirs = s.commit(&[("a", "release")], None);
    s.set_server_ref("release/main", &theirs);
    let mine = s.commit(&[("a", "mine")], None);
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["proj/**"]));
    let updates = c.update(&[("proj/a", None, mine)]).await;
    assert_eq!(c.recv().await, Message::Accepted { updates });
    let their_meta = ObjectName::new(theirs, ObjectType::CommitMeta);
    let my_commit = ObjectName::new(mine, ObjectType::Commit);
    let my_meta = ObjectName::new(mine, ObjectType::CommitMeta);
    c.send(Message::Want {
        objects: vec![my_commit, their_meta, my_meta],
    })
    .await;
    let Message::Missing { objects: missing } = c.recv().await else {
        panic!("missing")
    };
    assert_eq!(
        missing,
        [my_commit, my_meta],
        "only the pushed commit's is asked for"
    );
    // Sent anyway, the other commit's is refused, and nothing lands.
    c.send_object(&their_meta, b"not asked for").await;
    c.w.flush().await.expect("flush");
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Protocol, "{msg}");
    assert!(msg.contains("was not asked for"), "{msg}");
    assert!(c.server.await.expect("join").is_err());
    assert!(!Repo::open(&s.server).expect("open").has_object(&their_meta));
    assert!(!s.server.join("refs/heads/proj/a").exists());

    // Moving a ref of its own to the other key's commit does not make that
    // commit's detached metadata this key's to attach: it belongs to the
    // commit, whatever refs name it.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["proj/**"]));
    let updates = c.update(&[("proj/steal", None, theirs)]).await;
    assert_eq!(c.recv().await, Message::Accepted { updates });
    c.send(Message::Want {
        objects: vec![ObjectName::new(theirs, ObjectType::Commit), their_meta],
    })
    .await;
    assert_eq!(c.recv().await, Message::Missing { objects: vec![] });

    // Nor does asking for a commit it then never sends: a commitmeta that
    // arrives without its commit is refused, and nothing lands. (Had it
    // landed, the real commit pushed later by its own key would have found
    // "its" signature already there, and kept it.)
    let unsent = s.commit(&[("a", "to be pushed by someone else")], None);
    let unsent_meta = ObjectName::new(unsent, ObjectType::CommitMeta);
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["proj/**"]));
    let mut missing = accept_and_negotiate(&mut c, &s, "proj/b", None, mine).await;
    c.send(Message::Want {
        objects: vec![ObjectName::new(unsent, ObjectType::Commit), unsent_meta],
    })
    .await;
    assert_eq!(
        c.recv().await,
        Message::Missing {
            objects: vec![ObjectName::new(unsent, ObjectType::Commit), unsent_meta]
        }
    );
    missing.push((unsent_meta, commitmeta_bytes()));
    send_all(&mut c, &missing).await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Protocol, "{msg}");
    assert!(
        msg.contains(&unsent_meta.to_string()) && msg.contains("without its commit"),
        "{msg}"
    );
    assert!(c.server.await.expect("join").is_err());
    let server = Repo::open(&s.server).expect("open");
    assert!(!server.has_object(&unsent_meta));
    assert!(!server.has_object(&my_commit));
    assert!(!s.server.join("refs/heads/proj/b").exists());
    ok(ostree_in(&s.server).arg("fsck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dirtree_outside_every_pushed_commit_is_refused_and_nothing_lands() {
    let s = setup();
    let mine = s.commit(&[("a", "mine")], None);
    let other = s.commit(&[("b", "never sent")], None);
    let orphan = ObjectName::new(
        s.scratch.load_commit(&other).expect("load").root_tree,
        ObjectType::DirTree,
    );
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let mut missing = accept_and_negotiate(&mut c, &s, "main", None, mine).await;
    // The other commit's root dirtree, slipped in without its file: had it
    // landed, a later push of that commit would have passed its closure
    // check on the strength of it.
    c.send(Message::Want {
        objects: vec![orphan],
    })
    .await;
    assert_eq!(
        c.recv().await,
        Message::Missing {
            objects: vec![orphan]
        }
    );
    let bytes = s
        .scratch
        .read_metadata(&orphan)
        .expect("the dirtree's bytes");
    missing.push((orphan, bytes));
    send_all(&mut c, &missing).await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Protocol, "{msg}");
    assert!(
        msg.contains(&orphan.to_string()) && msg.contains("no commit of this push"),
        "{msg}"
    );
    assert!(c.server.await.expect("join").is_err());
    let server = Repo::open(&s.server).expect("open");
    assert!(!server.has_object(&orphan));
    assert!(!server.has_object(&ObjectName::new(mine, ObjectType::Commit)));
    assert!(!s.server.join("refs/heads/main").exists());
    ok(ostree_in(&s.server).arg("fsck"));
}

/// A detached metadata object: `a{sv}` holding one string.
fn commitmeta_bytes() -> Vec<u8> {
    use depot::gvariant::{Type, Value, to_bytes};
    to_bytes(&Value::Array(
        Type::parse("{sv}").expect("type"),
        vec![Value::DictEntry(
            Box::new(Value::str("note")),
            Box::new(Value::variant(Value::str("planted"))),
        )],
    ))
}

/// Metadata objects of crafted trees, and the commit over them.
#[derive(Default)]
struct Crafted {
    objects: Vec<(ObjectName, Vec<u8>)>,
}

impl Crafted {
    fn add(&mut self, kind: ObjectType, bytes: Vec<u8>) -> Checksum {
        let sum = Checksum::of(&bytes);
        let name = ObjectName::new(sum, kind);
        if !self.objects.iter().any(|(n, _)| *n == name) {
            self.objects.push((name, bytes));
        }
        sum
    }

    /// A directory holding `width` subdirectories named d0, d1..., each `tree`.
    fn dir_of(&mut self, tree: Checksum, meta: Checksum, width: usize) -> Checksum {
        self.dir_named(tree, meta, width, "d")
    }

    /// Like `dir_of`, its subdirectories named `prefix` then a number.
    fn dir_named(
        &mut self,
        tree: Checksum,
        meta: Checksum,
        width: usize,
        prefix: &str,
    ) -> Checksum {
        let dirs = (0..width)
            .map(|i| depot::object::SubdirEntry {
                name: depot::object::FileName::new(&format!("{prefix}{i}")).expect("name"),
                tree,
                meta,
            })
            .collect();
        let t = depot::object::DirTree::new(Vec::new(), dirs).expect("dirtree");
        self.add(ObjectType::DirTree, t.to_bytes())
    }

    fn commit(&mut self, root_tree: Checksum, root_meta: Checksum) -> Checksum {
        let c = depot::object::Commit {
            metadata: Vec::new(),
            parent: None,
            related: Vec::new(),
            subject: "crafted".into(),
            body: String::new(),
            timestamp: 1,
            root_tree,
            root_meta,
        };
        self.add(ObjectType::Commit, c.to_bytes())
    }
}

/// Pushes the crafted objects as `name` -> `commit`; returns the server's answer.
async fn push_crafted(s: &Setup, name: &str, commit: Checksum, crafted: &Crafted) -> Message {
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let updates = c.update(&[(name, None, commit)]).await;
    assert_eq!(c.recv().await, Message::Accepted { updates });
    c.send(Message::Want {
        objects: crafted.objects.iter().map(|(n, _)| *n).collect(),
    })
    .await;
    let Message::Missing { objects: missing } = c.recv().await else {
        panic!("missing")
    };
    let to_send: Vec<_> = crafted
        .objects
        .iter()
        .filter(|(n, _)| missing.contains(n))
        .cloned()
        .collect();
    send_all(&mut c, &to_send).await;
    c.recv().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_no_checkout_could_expand_are_refused_even_stacked_on_published_ones() {
    // ostree fsck, prune and checkout recurse, and crash (SIGSEGV) on a tree
    // some thousands of directories deep; a few dirtrees that name one
    // subtree many times stand for billions of files.
    let s = setup();
    let base = s.commit(&[("a", "1")], None);
    let meta = s.scratch.load_commit(&base).expect("load").root_meta;
    let meta_bytes = s
        .scratch
        .read_metadata(&ObjectName::new(meta, ObjectType::DirMeta))
        .expect("dirmeta");
    let empty = depot::object::DirTree::new(Vec::new(), Vec::new()).expect("empty");
    let chain = |crafted: &mut Crafted, from: Checksum, levels: usize| {
        (0..levels).fold(from, |t, _| crafted.dir_of(t, meta, 1))
    };
    let refused = |answer: Message, what: &str| match answer {
        Message::Error { code, message } => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            assert!(message.contains(what), "{message}");
        }
        other => panic!("accepted: {other:?}"),
    };

    // 300 directories deep: refused; 256 deep is the most a checkout takes.
    let mut deep = Crafted::default();
    deep.add(ObjectType::DirMeta, meta_bytes.clone());
    let leaf = deep.add(ObjectType::DirTree, empty.to_bytes());
    let top = chain(&mut deep, leaf, 300);
    let commit = deep.commit(top, meta);
    refused(
        push_crafted(&s, "deep", commit, &deep).await,
        "nest deeper than 256",
    );
    assert!(!s.server.join("refs/heads/deep").exists());
    assert!(
        !Repo::open(&s.server)
            .expect("open")
            .has_object(&ObjectName::new(top, ObjectType::DirTree))
    );

    // 40 levels of two subdirectories each: 44 objects, 2^41 directories.
    let mut wide = Crafted::default();
    wide.add(ObjectType::DirMeta, meta_bytes.clone());
    let leaf = wide.add(ObjectType::DirTree, empty.to_bytes());
    let top = (0..40).fold(leaf, |t, _| wide.dir_of(t, meta, 2));
    let commit = wide.commit(top, meta);
    refused(
        push_crafted(&s, "wide", commit, &wide).await,
        "more than 10000000 files and directories",
    );

    // 16 levels of two 250-byte names: 131,071 directories, whose paths
    // (up to 4 KB each) add up to more than depot's checkout holds.
    let mut long = Crafted::default();
    long.add(ObjectType::DirMeta, meta_bytes.clone());
    let leaf = long.add(ObjectType::DirTree, empty.to_bytes());
    let top = (0..16).fold(leaf, |t, _| long.dir_named(t, meta, 2, &"n".repeat(249)));
    let commit = long.commit(top, meta);
    refused(
        push_crafted(&s, "long", commit, &long).await,
        "the paths of its tree add up to more than 256 MiB",
    );

    // 200 deep is fine, and lands; 200 more stacked on it is not.
    let mut first = Crafted::default();
    first.add(ObjectType::DirMeta, meta_bytes.clone());
    let leaf = first.add(ObjectType::DirTree, empty.to_bytes());
    let lower = chain(&mut first, leaf, 200);
    let commit = first.commit(lower, meta);
    assert!(
        matches!(
            push_crafted(&s, "lower", commit, &first).await,
            Message::Result { .. }
        ),
        "a tree 200 deep is taken"
    );
    let mut stacked = Crafted::default();
    let top = chain(&mut stacked, lower, 200);
    let commit = stacked.commit(top, meta);
    refused(
        push_crafted(&s, "stacked", commit, &stacked).await,
        "nest deeper than 256",
    );
    assert!(!s.server.join("refs/heads/stacked").exists());
    ok(ostree_in(&s.server).arg("fsck"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_pulled_commit_s_dirtrees_do_not_vouch_for_their_files() {
    // What an interrupted (or --subpath) `ostree pull` into the server's
    // repository leaves: a commit marked partial, its dirtree and dirmeta
    // published, a file of it not.
    let s = setup();
    let pulled = s.commit(&[("a", "never fetched")], None);
    let c = s.scratch.load_commit(&pulled).expect("load");
    let tree = ObjectName::new(c.root_tree, ObjectType::DirTree);
    let meta = ObjectName::new(c.root_meta, ObjectType::DirMeta);
    let server = Repo::open(&s.server).expect("open");
    for name in [tree, meta] {
        let path = server.object_path(&name);
        fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        fs::write(&path, s.scratch.read_metadata(&name).expect("read")).expect("write");
    }
    fs::write(s.server.join(format!("state/{pulled}.commitpartial")), "").expect("mark partial");
    // A new commit over that very tree, sent alone.
    let mut crafted = Crafted::default();
    let commit = crafted.commit(c.root_tree, c.root_meta);
    match push_crafted(&s, "main", commit, &crafted).await {
        Message::Error { code, message } => {
            assert_eq!(code, ErrorCode::Incomplete, "{message}");
            assert!(
                message.contains("(/a)"),
                "names the missing file: {message}"
            );
        }
        other => panic!("accepted: {other:?}"),
    }
    assert!(!s.server.join("refs/heads/main").exists());
    assert!(!server.has_object(&ObjectName::new(commit, ObjectType::Commit)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_runs_while_objects_arrive_and_what_it_took_is_asked_of_the_closure_check() {
    // The receiver holds the repository's lock only for its checks and
    // publishing: a client that takes its time (or trickles a byte a
    // minute) does not hold off a prune.
    let s = setup();
    let old = s.commit(&[("a", "shared"), ("b", "old")], None);
    s.set_server_ref("scratch", &old);
    fs::remove_file(s.server.join("refs/heads/scratch")).expect("drop the ref");
    let new = s.commit(&[("a", "shared"), ("c", "new")], None);
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", None, new).await;
    assert!(
        !missing.is_empty() && missing.len() < s.objects(&new).len(),
        "the server has the shared file and dirmeta, so they are not asked for"
    );
    // Accepted and negotiated: the prune takes the lock at once, and
    // deletes what no ref reaches, the shared objects among it.
    ok(ostree_in(&s.server).args(["prune", "--refs-only"]));
    send_all(&mut c, &missing).await;
    let (code, msg) = c.error().await;
    assert_eq!(code, ErrorCode::Incomplete, "{msg}");
    assert!(
        msg.contains("neither in the repository nor in this push"),
        "{msg}"
    );
    assert!(c.server.await.expect("join").is_err());
    assert!(!s.server.join("refs/heads/main").exists());
    ok(ostree_in(&s.server).arg("fsck"));
    // Pushed again, everything it lacks is sent, and it lands.
    let mut c = Client::start(policy(&s.server, &s.dir.join("state"), &["**"]));
    let missing = accept_and_negotiate(&mut c, &s, "main", None, new).await;
    send_all(&mut c, &missing).await;
    assert!(matches!(c.recv().await, Message::Result { .. }));
    ok(ostree_in(&s.server).arg("fsck"));
}
