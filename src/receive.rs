//! `depot-receive`: the server side of a push, one session per process.
//!
//! sshd starts it as a forced command; its policy comes from the arguments
//! the admin wrote, never from the client. The session, in order:
//!
//! 1. `hello` → `welcome`: agree on a protocol version, announce limits.
//! 2. `query_refs` → `refs` (any number): current values and writability.
//! 3. `update` → `accepted`: every ref is authorized and its expected old
//!    value checked *before any object is accepted*.
//! 4. `want` → `missing` (any number): the server says what it lacks.
//! 5. Objects, verified on blocking threads while the session keeps reading
//!    (see [`crate::repo::IncomingObject`]): a large one as it streams, small
//!    ones (64 KiB or less) gathered whole and handed over in batches.
//! 6. `done` → `result`: closure and fast-forward checks, publication in
//!    dependency order, compare-and-swap of the refs, an audit record.
//!
//! Any failure sends an `error` frame (code and message) before the process
//! exits non-zero; the transaction is dropped, so nothing is published.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::checksum::Checksum;
use crate::object::{ObjectName, ObjectType};
use crate::protocol::message::{MAGIC, MAX_BATCH, MAX_VERSION, MIN_VERSION};
use crate::protocol::{
    ErrorCode, FrameReader, FrameWriter, Incoming, Limits, Message, RefChange, RefState,
};
use crate::refname::RefName;
use crate::repo::{self, Expected, RefUpdate, Repo, Transaction};

/// A ref pattern from `--allow-ref`: `*` matches within one path component,
/// `**` matches anything, slashes included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefPattern(String);

impl std::str::FromStr for RefPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return Err(format!(
                "{s:?} is not a ref pattern (e.g. proj/*, proj/**, main)"
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '*')))
        {
            return Err(format!("{s:?}: {c:?} cannot appear in a ref pattern"));
        }
        Ok(RefPattern(s.to_string()))
    }
}

impl std::fmt::Display for RefPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RefPattern {
    /// Whether `name` matches.
    pub fn matches(&self, name: &RefName) -> bool {
        glob(self.0.as_bytes(), name.as_str().as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let limit = s.iter().position(|&b| b == b'/').unwrap_or(s.len());
            (0..=limit).any(|i| glob(rest, &s[i..]))
        }
        [c, rest @ ..] => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// What the admin allows this key to do.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The repository.
    pub repo: PathBuf,
    /// Refs this key may write; empty means none.
    pub allow_refs: Vec<RefPattern>,
    /// Who this key is, for the audit log.
    pub key_id: String,
    /// Largest object accepted (stored and content size).
    pub max_object_size: u64,
    /// Most bytes of objects accepted in one push.
    pub max_push_size: u64,
    /// Most objects one push may ask to send: the receiver keeps about 45
    /// bytes for each.
    pub max_objects: u64,
    /// Refuse to go on when less than this is free on the repository's disk.
    pub min_free_space: u64,
    /// Let a ref move to a commit that does not descend from its current one.
    pub allow_non_fast_forward: bool,
    /// Private state: the audit log and the refs-changed stamp.
    pub state_dir: PathBuf,
    /// The longest wait for the client's next frame: a client that goes
    /// silent must not hold a receiver, and its staged objects, forever.
    pub idle_timeout: std::time::Duration,
}

impl Policy {
    fn authorize(&self, name: &RefName) -> Result<(), String> {
        if self.allow_refs.is_empty() {
            return Err(format!(
                "this key may not write any ref: the server gives it no --allow-ref; ask the admin to allow {name}"
            ));
        }
        if self.allow_refs.iter().any(|p| p.matches(name)) {
            Ok(())
        } else {
            let allowed: Vec<String> = self.allow_refs.iter().map(ToString::to_string).collect();
            Err(format!(
                "this key may not write {name}; it may write {}",
                allowed.join(", ")
            ))
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_object_size: self.max_object_size,
            max_push_size: self.max_push_size,
            max_objects: Some(self.max_objects),
            max_frame: crate::protocol::frame::MAX_PAYLOAD as u64,
            max_batch: MAX_BATCH as u64,
        }
    }
}

/// A failure that ends the session, with the code sent to the client.
#[derive(Debug)]
pub struct Failure {
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn protocol(message: impl Into<String>) -> Self {
        Failure::new(ErrorCode::Protocol, message)
    }
}

impl From<repo::Error> for Failure {
    fn from(e: repo::Error) -> Self {
        let code = match &e {
            repo::Error::RefMoved { .. } => ErrorCode::Conflict,
            repo::Error::RefPathConflict { .. } => ErrorCode::Forbidden,
            repo::Error::Rejected(repo::Rejected::TooLarge { .. })
            | repo::Error::UncheckableTree { .. } => ErrorCode::TooLarge,
            repo::Error::Rejected(_) => ErrorCode::BadObject,
            repo::Error::Incomplete { .. } => ErrorCode::Incomplete,
            repo::Error::Lock(_) => ErrorCode::Busy,
            repo::Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                ErrorCode::NoSpace
            }
            _ => ErrorCode::Internal,
        };
        Failure::new(code, crate::error_chain(&e))
    }
}

impl From<crate::protocol::connection::Error> for Failure {
    fn from(e: crate::protocol::connection::Error) -> Self {
        Failure::protocol(crate::error_chain(&e))
    }
}

/// What a finished session did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Client software, from its hello.
    pub client: Option<String>,
    /// The updates the client asked for.
    pub refs: Vec<RefChange>,
    /// Objects received.
    pub objects: u64,
    /// Bytes of objects received.
    pub bytes: u64,
}

/// Bytes received between writebacks of what is staged.
const WRITEBACK_EVERY: u64 = 32 * 1024 * 1024;

/// Threads verifying and staging received objects.
const VERIFIERS: usize = 2;

/// An object at most this large is gathered whole before it goes to a
/// verifier, in a batch with others.
const SMALL_OBJECT: u64 = 64 * 1024;
/// A batch of small objects goes to a verifier once it holds this many
/// objects or bytes: one hand-off (and one wake-up) per batch, not per
/// object, where a push of small files spends as much on hand-offs as on
/// hashing.
const BATCH_OBJECTS: usize = 32;
const BATCH_BYTES: usize = 256 * 1024;

/// Messages to a blocking verifier.
enum SinkMsg {
    /// Complete small objects, each whole.
    Batch(Vec<(ObjectName, Bytes)>),
    Start {
        name: ObjectName,
        size: u64,
    },
    Data(Bytes),
    /// Every object was sent: finish the last one. A verifier whose channel
    /// closes without this drops its unfinished object (the session failed
    /// elsewhere and reports why).
    End,
}

/// Small objects gathered for one verifier.
#[derive(Default)]
struct Batch {
    objects: Vec<(ObjectName, Bytes)>,
    bytes: usize,
}

impl Batch {
    /// Adds a complete object; sends the batch on once it is full. False if
    /// the verifier it went to has stopped.
    async fn add(
        &mut self,
        name: ObjectName,
        data: Bytes,
        sinks: &[mpsc::Sender<SinkMsg>],
        next_sink: &mut usize,
    ) -> bool {
        self.bytes += data.len();
        self.objects.push((name, data));
        if self.objects.len() < BATCH_OBJECTS && self.bytes < BATCH_BYTES {
            return true;
        }
        self.flush(sinks, next_sink).await
    }

    /// Sends what is gathered to the next verifier in turn.
    async fn flush(&mut self, sinks: &[mpsc::Sender<SinkMsg>], next_sink: &mut usize) -> bool {
        if self.objects.is_empty() {
            return true;
        }
        self.bytes = 0;
        let objects = std::mem::take(&mut self.objects);
        let sink = &sinks[*next_sink % sinks.len()];
        *next_sink += 1;
        sink.send(SinkMsg::Batch(objects)).await.is_ok()
    }
}

/// Verifies and stages the objects it is given on a blocking thread, one
/// at a time.
fn run_sink(
    tx: &Transaction,
    max_object_size: u64,
    mut rx: mpsc::Receiver<SinkMsg>,
) -> Result<(), repo::Error> {
    let mut current = None;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            SinkMsg::Batch(objects) => {
                if let Some(obj) = current.take() {
                    repo::IncomingObject::finish(obj)?;
                }
                for (name, bytes) in objects {
                    let mut obj = tx.begin_object(name, bytes.len() as u64, max_object_size)?;
                    obj.feed(&bytes)?;
                    obj.finish()?;
                }
            }
            SinkMsg::Start { name, size } => {
                if let Some(obj) = current.take() {
                    repo::IncomingObject::finish(obj)?;
                }
                current = Some(tx.begin_object(name, size, max_object_size)?);
            }
            SinkMsg::Data(bytes) => match current.as_mut() {
                Some(obj) => obj.feed(&bytes)?,
                None => unreachable_data(),
            },
            SinkMsg::End => {
                if let Some(obj) = current.take() {
                    obj.finish()?;
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

fn unreachable_data() {
    // The session only forwards data after a start frame.
    debug_assert!(false, "object data before any object start");
}

/// Runs one session over `reader`/`writer`. Returns the report on success;
/// on failure the error has already been sent to the client.
pub async fn serve<R, W>(policy: &Policy, reader: R, writer: W) -> Result<Report, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut reader = FrameReader::new(reader);
    let mut writer = FrameWriter::new(writer);
    let mut report = Report::default();
    let result = session(policy, &mut reader, &mut writer, &mut report).await;
    let outcome = match &result {
        Ok(()) if report.refs.is_empty() => "no_update".to_string(),
        Ok(()) => "ok".to_string(),
        Err(f) => f.code.as_str().to_string(),
    };
    if let Err(f) = &result {
        let _ = writer
            .send(&Message::Error {
                code: f.code,
                message: f.message.clone(),
            })
            .await;
        let _ = writer.flush().await;
        // The client was told; over ssh this stderr is the client's too.
        tracing::info!(code = f.code.as_str(), "push refused: {}", f.message);
    }
    audit(
        policy,
        &report,
        &outcome,
        result.as_ref().err().map(|f| f.message.as_str()),
        started,
    );
    result.map(|()| report)
}

/// The client's next frame, or a failure once it has sent nothing for the
/// policy's idle timeout.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    policy: &Policy,
) -> Result<Option<Incoming>, Failure> {
    match tokio::time::timeout(policy.idle_timeout, reader.read()).await {
        Ok(frame) => Ok(frame?),
        Err(_) => Err(Failure::protocol(format!(
            "the client sent nothing for {} s, so the server gave up (its --idle-timeout)",
            policy.idle_timeout.as_secs()
        ))),
    }
}

async fn session<R, W>(
    policy: &Policy,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    report: &mut Report,
) -> Result<(), Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // 1. Hello.
    let Some(Incoming::Message(Message::Hello {
        magic,
        min_version,
        max_version,
        software,
        ..
    })) = read_frame(reader, policy).await?
    else {
        return Err(Failure::protocol("expected a hello message first"));
    };
    report.client = Some(crate::clipped(&software, MAX_SOFTWARE_LEN).into_owned());
    if magic != MAGIC {
        return Err(Failure::protocol(format!(
            "this is depot-receive; expected magic {MAGIC:?}, got {magic:?}"
        )));
    }
    let version = max_version.min(MAX_VERSION);
    if version < min_version.max(MIN_VERSION) {
        return Err(Failure::new(
            ErrorCode::UnsupportedVersion,
            format!(
                "this server speaks protocol versions {MIN_VERSION} to {MAX_VERSION}, the client {min_version} to {max_version}; \
                 upgrade the older side"
            ),
        ));
    }
    let repo = Repo::open(&policy.repo)
        .map_err(|e| Failure::new(ErrorCode::Internal, crate::error_chain(&e)))?;
    writer
        .send(&Message::Welcome {
            version,
            software: format!("depot-receive {}", env!("CARGO_PKG_VERSION")),
            capabilities: Vec::new(),
            limits: policy.limits(),
            zlib_level: Some(repo.zlib_level()),
        })
        .await?;
    writer.flush().await?;

    // 2-3. Ref queries, then the update.
    let mut refused: Option<String> = None;
    let updates = loop {
        match read_frame(reader, policy).await? {
            Some(Incoming::Message(Message::QueryRefs { refs })) => {
                if refs.len() > MAX_BATCH {
                    return Err(Failure::protocol(format!(
                        "at most {MAX_BATCH} refs per query"
                    )));
                }
                let mut states = Vec::with_capacity(refs.len());
                for name in refs {
                    let commit = repo.read_ref(&name)?;
                    let auth = policy.authorize(&name);
                    if let Err(m) = &auth {
                        refused.get_or_insert_with(|| m.clone());
                    }
                    states.push(RefState {
                        name,
                        commit,
                        writable: auth.is_ok(),
                        reason: auth.err(),
                    });
                }
                writer.send(&Message::Refs { refs: states }).await?;
                writer.flush().await?;
            }
            Some(Incoming::Message(Message::Update { updates })) => break updates,
            Some(Incoming::Message(m)) => {
                return Err(Failure::protocol(format!(
                    "unexpected {} before update",
                    m.kind()
                )));
            }
            Some(_) => {
                return Err(Failure::new(
                    ErrorCode::Forbidden,
                    "objects sent before the update was accepted",
                ));
            }
            // The client left without an update: because it was told no, or
            // because it only asked.
            None => return refused.map_or(Ok(()), |m| Err(Failure::new(ErrorCode::Forbidden, m))),
        }
    };
    report.refs.clone_from(&updates);
    if updates.is_empty() || updates.len() > MAX_BATCH {
        return Err(Failure::protocol(format!(
            "an update names 1 to {MAX_BATCH} refs"
        )));
    }
    let mut names = HashSet::new();
    for u in &updates {
        if !names.insert(&u.name) {
            return Err(Failure::protocol(format!(
                "ref {} appears twice in the update",
                u.name
            )));
        }
        policy
            .authorize(&u.name)
            .map_err(|m| Failure::new(ErrorCode::Forbidden, m))?;
        let others: Vec<&RefName> = updates
            .iter()
            .filter(|o| o.name != u.name)
            .map(|o| &o.name)
            .collect();
        repo.check_ref_path(&u.name, &others)?;
        let current = repo.read_ref(&u.name)?;
        if current != u.old {
            return Err(Failure::new(
                ErrorCode::Conflict,
                format!(
                    "ref {} is at {}, not {}; it moved since the client looked: fetch and push again",
                    u.name,
                    current.map_or_else(|| "nothing".into(), |c| c.to_string()),
                    u.old.map_or_else(|| "nothing".into(), |c| c.to_string())
                ),
            ));
        }
    }
    // Room for the first window of objects (see the checks as they arrive).
    check_free_space(policy, SPACE_CHECK_EVERY)?;
    // The repository's lock only from the checks on: a slow client must not
    // keep a prune waiting.
    let tx = Arc::new(repo.begin_unlocked()?);
    writer
        .send(&Message::Accepted {
            updates: updates.clone(),
        })
        .await?;
    writer.flush().await?;

    // 4-5. Negotiation and objects, verified on blocking threads: whole
    // objects (small ones gathered in batches) go to the verifiers in turn,
    // so that small objects (each a file to create) are staged in parallel.
    let mut verifiers = Vec::with_capacity(VERIFIERS);
    let mut sinks = Vec::with_capacity(VERIFIERS);
    for _ in 0..VERIFIERS {
        let (sink_tx, sink_rx) = mpsc::channel::<SinkMsg>(8);
        let tx = Arc::clone(&tx);
        let max = policy.max_object_size;
        verifiers.push(tokio::task::spawn_blocking(move || {
            run_sink(&tx, max, sink_rx)
        }));
        sinks.push(sink_tx);
    }
    let mut sink_tx = sinks[0].clone();
    let mut next_sink = 0usize;
    // The small object being gathered, and the batch it will join.
    let mut gathering: Option<(ObjectName, BytesMut)> = None;
    let mut batch = Batch::default();
    let mut remaining: u64 = 0;
    let mut next_space_check = SPACE_CHECK_EVERY;
    // Writing back while objects still arrive leaves the final sync, with
    // the push waiting on it, little to do.
    let mut writeback: Option<tokio::task::JoinHandle<Result<(), repo::Error>>> = None;
    let mut next_writeback = WRITEBACK_EVERY;
    let receiving = Instant::now();
    let received = loop {
        let frame = read_frame(reader, policy).await?;
        let forwarded = match frame {
            Some(Incoming::Message(Message::Want { objects })) => {
                if objects.len() > MAX_BATCH {
                    return Err(Failure::protocol(format!(
                        "at most {MAX_BATCH} names per want"
                    )));
                }
                let mut missing: Vec<ObjectName> =
                    objects.into_iter().filter(|n| !tx.has_object(n)).collect();
                // Detached metadata (signatures) only for the commits this
                // push brings: it belongs to the commit, whatever refs name
                // it, so a key must not attach any to a commit already here.
                // Others are not asked for.
                let batch_commits: HashSet<Checksum> = missing
                    .iter()
                    .filter(|n| n.kind == ObjectType::Commit)
                    .map(|n| n.checksum)
                    .collect();
                missing.retain(|n| {
                    n.kind != ObjectType::CommitMeta
                        || batch_commits.contains(&n.checksum)
                        || tx.in_this_push(&ObjectName::new(n.checksum, ObjectType::Commit))
                });
                // A name already asked for in this push is not missing again.
                let recorded = tx.request_objects(&mut missing);
                if recorded as u64 > policy.max_objects {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the push needs more than {} new objects, this server's limit \
                             (depot-receive --max-objects); push a smaller tree or ask the admin to raise it",
                            policy.max_objects
                        ),
                    ));
                }
                writer.send(&Message::Missing { objects: missing }).await?;
                writer.flush().await?;
                true
            }
            Some(Incoming::Message(Message::Done {})) => {
                if remaining != 0 {
                    return Err(Failure::protocol("done in the middle of an object"));
                }
                break true;
            }
            Some(Incoming::Message(m)) => {
                return Err(Failure::protocol(format!(
                    "unexpected {} during the push",
                    m.kind()
                )));
            }
            Some(Incoming::ObjectStart { name, size }) => {
                if remaining != 0 {
                    return Err(Failure::protocol(
                        "an object started before the previous one ended",
                    ));
                }
                if !tx.take_requested(&name) {
                    return Err(Failure::protocol(format!(
                        "object {name} was not asked for (or was sent twice)"
                    )));
                }
                if size > policy.max_object_size {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!(
                            "object {name} is {size} bytes, over this server's {}-byte limit",
                            policy.max_object_size
                        ),
                    ));
                }
                report.objects += 1;
                report.bytes += size;
                if report.bytes > policy.max_push_size {
                    return Err(Failure::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the push is over this server's {}-byte limit",
                            policy.max_push_size
                        ),
                    ));
                }
                if report.bytes >= next_space_check {
                    // Until the next check: this object, and up to one
                    // window of smaller ones (a larger one checks again).
                    check_free_space(policy, size.saturating_add(SPACE_CHECK_EVERY))?;
                    next_space_check = report.bytes + SPACE_CHECK_EVERY;
                }
                if report.bytes >= next_writeback
                    && writeback
                        .as_ref()
                        .is_none_or(tokio::task::JoinHandle::is_finished)
                {
                    let tx = Arc::clone(&tx);
                    writeback = Some(tokio::task::spawn_blocking(move || tx.sync_staged()));
                    next_writeback = report.bytes + WRITEBACK_EVERY;
                }
                remaining = size;
                if size <= SMALL_OBJECT {
                    if size == 0 {
                        batch.add(name, Bytes::new(), &sinks, &mut next_sink).await
                    } else {
                        gathering = Some((name, BytesMut::with_capacity(size as usize)));
                        true
                    }
                } else {
                    sink_tx = sinks[next_sink % VERIFIERS].clone();
                    next_sink += 1;
                    batch.flush(&sinks, &mut next_sink).await
                        && sink_tx.send(SinkMsg::Start { name, size }).await.is_ok()
                }
            }
            Some(Incoming::ObjectData(data)) => {
                let n = data.len() as u64;
                if n > remaining {
                    return Err(Failure::protocol(
                        "more object data than the object declared",
                    ));
                }
                remaining -= n;
                match gathering.take() {
                    Some((name, mut gathered)) => {
                        // Copied, even an object in one frame: a slice of
                        // the frame would keep the reader's whole buffer
                        // (up to a frame's maximum) alive while it waits.
                        gathered.extend_from_slice(&data);
                        if remaining > 0 {
                            gathering = Some((name, gathered));
                            true
                        } else {
                            batch
                                .add(name, gathered.freeze(), &sinks, &mut next_sink)
                                .await
                        }
                    }
                    None => sink_tx.send(SinkMsg::Data(data)).await.is_ok(),
                }
            }
            None => return Err(Failure::protocol("the client went away before done")),
        };
        if !forwarded {
            break false;
        }
    };
    let received = received && batch.flush(&sinks, &mut next_sink).await && {
        let mut sent = true;
        for sink in &sinks {
            sent &= sink.send(SinkMsg::End).await.is_ok();
        }
        sent
    };
    drop(sink_tx);
    drop(sinks);
    let verify_wait = Instant::now();
    for verifier in verifiers {
        verifier
            .await
            .map_err(|e| Failure::new(ErrorCode::Internal, format!("verifier failed: {e}")))??;
    }
    tracing::info!(
        objects = report.objects,
        bytes = report.bytes,
        "received and verified in {:.2?} (waited {:.2?} for the verifier after done)",
        receiving.elapsed(),
        verify_wait.elapsed()
    );
    if !received {
        return Err(Failure::new(
            ErrorCode::Internal,
            "the verifier stopped early",
        ));
    }

    if let Some(w) = writeback
        && let Ok(Err(e)) = w.await
    {
        // The sync before publishing reports it if it persists.
        tracing::warn!("early writeback: {}", crate::error_chain(&e));
    }

    // 6. Closure, fast-forward, publish, compare-and-swap.
    let policy_ff = policy.allow_non_fast_forward;
    let updates_for_commit = updates.clone();
    let tx = Arc::try_unwrap(tx)
        .map_err(|_| Failure::new(ErrorCode::Internal, "transaction still shared"))?;
    tokio::task::spawn_blocking(move || apply(tx, &updates_for_commit, policy_ff))
        .await
        .map_err(|e| Failure::new(ErrorCode::Internal, format!("commit failed: {e}")))??;
    touch_stamp(policy);
    writer
        .send(&Message::Result {
            refs: updates,
            objects: report.objects,
            bytes: report.bytes,
        })
        .await?;
    writer.flush().await?;
    Ok(())
}

fn apply(tx: Transaction, updates: &[RefChange], allow_non_ff: bool) -> Result<(), Failure> {
    // From here on nothing the checks find in objects/ can be pruned away
    // before it is published; what the negotiation found there earlier is
    // looked at again below.
    tx.hold_lock()?;
    for u in updates {
        let commit = tx.load_commit(&u.new).map_err(|e| match e {
            repo::Error::MissingObject { .. } => Failure::new(
                ErrorCode::Incomplete,
                format!(
                    "commit {} for ref {} was neither sent nor present",
                    u.new, u.name
                ),
            ),
            other => other.into(),
        })?;
        if !commit.may_be_under(u.name.as_str()) {
            return Err(Failure::new(
                ErrorCode::Forbidden,
                format!(
                    "commit {} is bound to ref(s) {} by its ostree.ref-binding, not {}: \
                     ostree pull would refuse it under that name; push it to a ref it is bound to",
                    u.new,
                    crate::printable(&commit.ref_bindings().unwrap_or_default().join(", ")),
                    u.name
                ),
            ));
        }
        let closure = Instant::now();
        tx.check_closure(&u.new)?;
        tracing::info!("closure of {} checked in {:.2?}", u.new, closure.elapsed());
        if let Some(old) = u.old
            && !allow_non_ff
            && !tx.is_ancestor(&old, &u.new)?
        {
            return Err(Failure::new(
                ErrorCode::NonFastForward,
                format!(
                    "ref {}: commit {} does not descend from the current {old}; this server refuses non-fast-forward updates",
                    u.name, u.new
                ),
            ));
        }
        tracing::debug!("ref {} -> {} ({})", u.name, u.new, commit.subject);
    }
    // The history sent with them is complete too, and nothing else is
    // published: a dirtree in the repository vouches for its whole subtree
    // in later closure checks, so one outside every checked tree must not
    // land (it could list files that were never sent).
    let new_commits: HashSet<Checksum> = updates.iter().map(|u| u.new).collect();
    for c in tx.staged_commits() {
        if !new_commits.contains(&c) {
            tx.check_closure(&c)?;
        }
    }
    if let Some(orphan) = tx.unreached_dirtree() {
        return Err(Failure::protocol(format!(
            "{orphan} is in the tree of no commit of this push; nothing was published"
        )));
    }
    if let Some(orphan) = tx.commitmeta_without_commit() {
        return Err(Failure::protocol(format!(
            "{orphan} arrived without its commit: detached metadata is accepted only \
             with the commit it belongs to; nothing was published"
        )));
    }
    let shapes = Instant::now();
    let mut measured = HashMap::new();
    for c in tx.staged_commits() {
        tx.check_tree_shape(&c, &mut measured)?;
    }
    tracing::info!(
        "{} dirtrees measured in {:.2?}",
        measured.len(),
        shapes.elapsed()
    );
    let ref_updates: Vec<RefUpdate> = updates
        .iter()
        .map(|u| RefUpdate {
            name: u.name.clone(),
            expected: u.old.map_or(Expected::Absent, Expected::Is),
            new: Some(u.new),
        })
        .collect();
    let publish = Instant::now();
    tx.commit(&ref_updates)?;
    tracing::info!("published and refs moved in {:.2?}", publish.elapsed());
    Ok(())
}

/// The longest client `software` string kept (for the audit log).
const MAX_SOFTWARE_LEN: usize = 256;
/// The longest error message written to the audit log.
const MAX_AUDITED_ERROR_LEN: usize = 4096;

/// How many declared bytes may arrive between two checks of the free space.
const SPACE_CHECK_EVERY: u64 = 64 * 1024 * 1024;

/// Fails unless the repository's disk has room for `coming` more bytes and
/// the policy's reserve besides.
fn check_free_space(policy: &Policy, coming: u64) -> Result<(), Failure> {
    if policy.min_free_space == 0 {
        return Ok(());
    }
    let stat = nix::sys::statvfs::statvfs(&policy.repo).map_err(|e| {
        Failure::new(
            ErrorCode::Internal,
            format!("statvfs {}: {e}", policy.repo.display()),
        )
    })?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    if free < policy.min_free_space.saturating_add(coming) {
        return Err(Failure::new(
            ErrorCode::NoSpace,
            format!(
                "the server has {free} bytes free, too few for the next {coming} bytes of this \
                 push and its {}-byte reserve; ask the admin to prune",
                policy.min_free_space
            ),
        ));
    }
    Ok(())
}

fn touch_stamp(policy: &Policy) {
    let path = policy.state_dir.join("refs-changed");
    if let Err(e) = crate::create_private_dir(&policy.state_dir)
        .and_then(|()| fs::write(&path, now_secs().to_string()))
    {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Audits a connection refused before its session began (its command
/// asked for another repository, or was not depot's), as a refused push.
pub fn audit_refused_command(policy: &Policy, message: &str) {
    audit(
        policy,
        &Report::default(),
        ErrorCode::Forbidden.as_str(),
        Some(message),
        Instant::now(),
    );
}

/// Appends one JSON line to `<state_dir>/audit.jsonl`.
fn audit(policy: &Policy, report: &Report, outcome: &str, error: Option<&str>, started: Instant) {
    // Messages may quote what the client sent.
    let error = error.map(|e| crate::clipped(e, MAX_AUDITED_ERROR_LEN));
    let error = error.as_deref();
    tracing::info!(target: crate::logging::AUDIT_TARGET, key = %policy.key_id, repo = %policy.repo.display(), refs = ?report.refs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), objects = report.objects, bytes = report.bytes, ms = started.elapsed().as_millis() as u64, error, "push {outcome}");
    let record = serde_json::json!({
        "time": crate::timefmt::format(now_secs()),
        "key_id": policy.key_id,
        "repo": policy.repo,
        "client": report.client,
        "refs": report.refs.iter().map(|r| serde_json::json!({"ref": r.name, "old": r.old, "new": r.new})).collect::<Vec<_>>(),
        "objects": report.objects,
        "bytes": report.bytes,
        "duration_ms": started.elapsed().as_millis() as u64,
        "outcome": outcome,
        "error": error,
    });
    let mut line = record.to_string();
    line.push('\n');
    let path = policy.state_dir.join("audit.jsonl");
    let written = crate::create_private_dir(&policy.state_dir).and_then(|()| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?
            .write_all(line.as_bytes())
    });
    if let Err(e) = written {
        tracing::error!("cannot append to the audit log {}: {e}", path.display());
    }
}

/// The checksum of every commit this session moved a ref to.
pub fn new_commits(report: &Report) -> Vec<Checksum> {
    report.refs.iter().map(|r| r.new).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &str| s.parse::<RefPattern>().expect("pattern");
        let r = |s: &str| s.parse::<RefName>().expect("ref");
        assert!(p("proj/*").matches(&r("proj/x")));
        assert!(!p("proj/*").matches(&r("proj/linux/123")));
        assert!(!p("proj/*").matches(&r("other/x")));
        assert!(!p("proj/*").matches(&r("project/x")));
        assert!(p("proj/**").matches(&r("proj/linux/123")));
        assert!(!p("proj/**").matches(&r("projx/1")));
        assert!(p("**").matches(&r("a/b/c")));
        assert!(p("main").matches(&r("main")));
        assert!(!p("main").matches(&r("main2")));
        assert!(p("rel-*").matches(&r("rel-1.2")));
        assert!(p("*/nightly").matches(&r("x/nightly")));
        for bad in ["", "/a", "a/", "a//b", "a b", "a?", "../x"] {
            assert!(bad.parse::<RefPattern>().is_err() || bad == "../x", "{bad}");
        }
    }
}
