//! `depot push`: the client side of the push protocol.
//!
//! The client does the expensive work so that one receiver can serve many
//! runners: it hashes the tree on every core, learns what the server lacks
//! by walking the tree level by level (a dirtree the server has stands for
//! its whole subtree, so the cost follows what changed), and compresses only
//! the objects that must travel, in parallel, while one writer streams them.
//! Memory stays bounded: small objects are compressed in memory, large ones
//! spooled to a temporary file, and at most a few objects wait in the queue.
//!
//! The transport is the system `ssh` (no ssh library) or, for a local path,
//! a `depot-receive` child process speaking the same protocol over pipes.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use crate::checksum::Checksum;
use crate::commit::{self, FileEntry, Scan};
use crate::object::{
    Commit, DirTree, FileHeader, ObjectMap, ObjectName, ObjectType, write_filez,
    write_filez_unhashed,
};
use crate::protocol::frame::MAX_PAYLOAD;
use crate::protocol::message::{MAGIC, MAX_BATCH, MAX_VERSION, MIN_VERSION};
use crate::protocol::{
    ErrorCode, FrameReader, FrameWriter, Incoming, Message, RefChange, RefState,
};
use crate::refname::RefName;
use crate::repo::{self, Repo};

/// Files up to this size are compressed in memory; larger ones are spooled
/// to a temporary file so memory stays bounded.
const IN_MEMORY_LIMIT: u64 = 4 * 1024 * 1024;
/// Objects compressed ahead of the writer.
const QUEUE_DEPTH: usize = 8;
/// A file whose ctime is this close to the scan (or after it) is hashed
/// again when it is compressed: its ctime may not show a write.
const RACY_NANOS: i64 = 2_000_000_000;
/// Compression level when the server does not say (ostree's default).
const DEFAULT_ZLIB_LEVEL: u32 = 6;

/// Where to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `ssh://[user@]host[:port][/path]`.
    Ssh {
        /// Login name.
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// Port.
        port: Option<u16>,
        /// Repository path asked for (the server's forced command decides).
        path: Option<String>,
    },
    /// A repository on this machine.
    Local(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix("ssh://") else {
            if s.contains("://") {
                return Err(format!(
                    "{s:?}: only ssh:// destinations and local paths are supported"
                ));
            }
            return Ok(Destination::Local(PathBuf::from(s)));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: {p:?} is not a port number"))
            })
            .transpose()?;
        let bad = |c: char| c.is_whitespace() || c.is_control();
        if host.is_empty() || host.starts_with('-') || host.chars().any(bad) {
            return Err(format!("{s:?}: no valid host name"));
        }
        if user
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.starts_with('-') || u.chars().any(bad))
        {
            return Err(format!("{s:?}: invalid user name"));
        }
        let path = path.filter(|p| p != "/");
        Ok(Destination::Ssh {
            user,
            host,
            port,
            path,
        })
    }
}

/// What to push.
#[derive(Debug, Clone)]
pub enum Source {
    /// Commit a directory on the fly; the parent is the ref's commit on the server.
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Ref, subject, metadata... (`parent` is ignored: the server's ref decides).
        options: commit::Options,
    },
    /// Push existing commits of a local archive repository, with as much
    /// history as the server lacks.
    Repo {
        /// The repository.
        repo: PathBuf,
        /// The refs to push, at their local commits.
        refs: Vec<RefName>,
    },
}

/// How to push.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where.
    pub dest: Destination,
    /// A command line that replaces `ssh` (run by `sh -c`, as git's `GIT_SSH_COMMAND`).
    pub ssh_command: Option<String>,
    /// What.
    pub source: Source,
    /// Show progress on standard error.
    pub progress: bool,
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The refs as they now are on the server.
    pub refs: Vec<RefChange>,
    /// Objects the server lacked and received.
    pub objects_sent: u64,
    /// Bytes of objects sent.
    pub bytes_sent: u64,
    /// Wall time.
    pub duration_ms: u64,
}

/// Why a push failed. Each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server's policy refused the push (exit 3).
    #[error("refused by the server ({}): {message}", code.as_str())]
    Refused {
        /// The server's code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// A ref moved meanwhile (exit 4).
    #[error("conflict: {message}")]
    Conflict {
        /// The server's message.
        message: String,
    },
    /// The connection, the transport or the server failed (exit 5).
    #[error("{message}")]
    Transport {
        /// What happened.
        message: String,
        /// The server's code, when the server said why.
        server_code: Option<ErrorCode>,
    },
    /// Reading the local tree or repository failed (exit 1).
    #[error(transparent)]
    Commit(#[from] commit::Error),
    /// Reading the local repository failed (exit 1).
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// Anything else local (exit 1).
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused { .. } => 3,
            Error::Conflict { .. } => 4,
            Error::Transport { .. } => 5,
            Error::Commit(_) | Error::Repo(_) | Error::Local(_) => 1,
        }
    }

    /// A machine-readable name for `--json`.
    pub fn code(&self) -> String {
        match self {
            Error::Refused { code, .. } => code.as_str().to_string(),
            Error::Conflict { .. } => "conflict".into(),
            Error::Transport { .. } => "transport".into(),
            _ => "local".into(),
        }
    }

    fn from_server(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::Forbidden
            | ErrorCode::TooLarge
            | ErrorCode::NoSpace
            | ErrorCode::NonFastForward
            | ErrorCode::UnsupportedVersion => Error::Refused { code, message },
            ErrorCode::Conflict => Error::Conflict { message },
            _ => Error::Transport {
                message: format!("the server failed ({}): {message}", code.as_str()),
                server_code: Some(code),
            },
        }
    }
}

/// A failed send, with its cause (the transport's error is in its source).
#[allow(clippy::needless_pass_by_value)] // shaped for map_err
fn connection_failed(e: crate::protocol::connection::Error) -> Error {
    transport(crate::error_chain(&e))
}

fn transport(e: impl std::fmt::Display) -> Error {
    Error::Transport {
        message: e.to_string(),
        server_code: None,
    }
}

/// Single-quotes `s` for a POSIX shell (the remote side of ssh runs one).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn spawn_transport(opts: &Options) -> Result<Child, Error> {
    let mut cmd = match &opts.dest {
        Destination::Ssh {
            user,
            host,
            port,
            path,
        } => {
            let mut args: Vec<String> = Vec::new();
            if let Some(p) = port {
                args.extend(["-p".into(), p.to_string()]);
            }
            args.push(match user {
                Some(u) => format!("{u}@{host}"),
                None => host.clone(),
            });
            let mut remote = "depot-receive".to_string();
            if let Some(p) = path {
                remote.push_str(" --repo ");
                remote.push_str(&shell_quote(p));
            }
            args.push(remote);
            let custom = opts
                .ssh_command
                .clone()
                .or_else(|| std::env::var("DEPOT_SSH").ok())
                .filter(|s| !s.trim().is_empty());
            match custom {
                Some(c) => {
                    let mut cmd = tokio::process::Command::new("sh");
                    cmd.arg("-c")
                        .arg(format!("{c} \"$@\""))
                        .arg("depot-ssh")
                        .args(&args);
                    cmd
                }
                None => {
                    let mut cmd = tokio::process::Command::new("ssh");
                    cmd.args(&args);
                    cmd
                }
            }
        }
        Destination::Local(path) => {
            let exe = std::env::current_exe()
                .ok()
                .map(|p| p.with_file_name("depot-receive"))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("depot-receive"));
            let mut cmd = tokio::process::Command::new(exe);
            let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
            cmd.arg("--repo")
                .arg(path)
                .args(["--allow-ref", "**", "--key-id"])
                .arg(format!("local:{user}"));
            cmd
        }
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().map_err(|e| {
        let what = match &opts.dest {
            Destination::Ssh { .. } => "ssh",
            Destination::Local(_) => "depot-receive (install it next to depot or on PATH)",
        };
        transport(format!("cannot start {what}: {e}"))
    })
}

/// The objects of a tree committed on the fly, held in memory until sent.
struct TreeObjects {
    scan: Scan,
    metadata: HashMap<ObjectName, Vec<u8>>,
    /// Content object → index of a file with that content.
    content: ObjectMap<usize>,
    /// Per file: whether hashing found extended attributes (never, under
    /// --no-xattrs). Those without are not asked again when their content
    /// is sent.
    has_xattrs: Vec<bool>,
}

/// Where objects to send come from.
enum Local {
    Tree(TreeObjects),
    Repo(Repo),
}

impl Local {
    fn metadata(&self, name: &ObjectName) -> Result<Vec<u8>, Error> {
        match self {
            Local::Tree(t) => t
                .metadata
                .get(name)
                .cloned()
                .ok_or_else(|| Error::Local(format!("object {name} is not in the tree"))),
            Local::Repo(r) => Ok(r.read_metadata(name)?),
        }
    }

    /// What the server needs too if it lacks `name`.
    fn children(&self, name: &ObjectName) -> Result<Vec<ObjectName>, Error> {
        Ok(match name.kind {
            ObjectType::Commit => {
                let c = Commit::parse(&self.metadata(name)?)
                    .map_err(|e| Error::Local(crate::error_chain(&e)))?;
                let mut v = vec![
                    ObjectName::new(c.root_tree, ObjectType::DirTree),
                    ObjectName::new(c.root_meta, ObjectType::DirMeta),
                ];
                if let (Local::Repo(r), Some(parent)) = (self, c.parent) {
                    let p = ObjectName::new(parent, ObjectType::Commit);
                    if r.has_object(&p) {
                        v.push(p);
                        let meta = ObjectName::new(parent, ObjectType::CommitMeta);
                        if r.has_object(&meta) {
                            v.push(meta);
                        }
                    }
                }
                v
            }
            ObjectType::DirTree => {
                let t = DirTree::parse(&self.metadata(name)?)
                    .map_err(|e| Error::Local(crate::error_chain(&e)))?;
                let mut v: Vec<ObjectName> = t
                    .files()
                    .iter()
                    .map(|(_, c)| ObjectName::new(*c, ObjectType::File))
                    .collect();
                for d in t.dirs() {
                    v.push(ObjectName::new(d.tree, ObjectType::DirTree));
                    v.push(ObjectName::new(d.meta, ObjectType::DirMeta));
                }
                v
            }
            _ => Vec::new(),
        })
    }
}

/// Hashes the tree and builds its dirtree/dirmeta objects in memory.
fn hash_tree(
    dir: &Path,
    options: &commit::Options,
) -> Result<(TreeObjects, Checksum, Checksum), Error> {
    let started = Instant::now();
    let scan = commit::scan(dir, options)?;
    tracing::debug!(
        "scanned {} files in {:.2?}",
        scan.files.len(),
        started.elapsed()
    );
    let (sums, has_xattrs): (Vec<Checksum>, Vec<bool>) = scan
        .files
        .par_iter()
        .map_init(Vec::new, |buf, entry| {
            commit::hash_entry(entry, &scan.path(entry), options.no_xattrs, buf)
                .map(|h| (h.checksum, !h.header.xattrs.is_empty()))
        })
        .collect::<Result<_, _>>()?;
    let mut metadata = HashMap::new();
    let (root_tree, root_meta) = commit::build_trees(&scan, &sums, &mut |kind, bytes| {
        let c = Checksum::of(&bytes);
        metadata.insert(ObjectName::new(c, kind), bytes);
        Ok(c)
    })?;
    tracing::debug!("scanned and hashed the tree in {:.2?}", started.elapsed());
    let mut content = ObjectMap::new();
    for (i, c) in sums.iter().enumerate() {
        content.insert_if_absent(ObjectName::new(*c, ObjectType::File), i);
    }
    Ok((
        TreeObjects {
            scan,
            metadata,
            content,
            has_xattrs,
        },
        root_tree,
        root_meta,
    ))
}

type Reader = FrameReader<ChildStdout>;
type Writer = FrameWriter<ChildStdin>;

async fn expect_reply(reader: &mut Reader) -> Result<Message, Error> {
    match reader.read().await {
        Ok(Some(Incoming::Message(Message::Error { code, message }))) => {
            Err(Error::from_server(code, message))
        }
        Ok(Some(Incoming::Message(m))) => Ok(m),
        Ok(Some(_)) => Err(transport("the server sent object data; it should not")),
        Ok(None) => Err(transport("the server closed the connection")),
        Err(e) => Err(transport(format!(
            "reading from the server: {}",
            crate::error_chain(&e)
        ))),
    }
}

/// After a write failed, the server may have said why before closing.
async fn reason_for_hangup(reader: &mut Reader, write_error: String) -> Error {
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read().await {
                Ok(Some(Incoming::Message(Message::Error { code, message }))) => {
                    return Some(Error::from_server(code, message));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    })
    .await;
    read.ok()
        .flatten()
        .unwrap_or_else(|| transport(format!("sending to the server failed: {write_error}")))
}

fn unexpected(m: &Message, wanted: &str) -> Error {
    transport(format!(
        "the server sent {} where {wanted} was expected",
        m.kind()
    ))
}

/// Pushes. Blocks until the server answered; runs its own small runtime.
pub fn push(opts: &Options) -> Result<Outcome, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Local(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(push_async(opts))
}

async fn push_async(opts: &Options) -> Result<Outcome, Error> {
    let started = Instant::now();
    let mut child = spawn_transport(opts)?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| transport("no stdin pipe"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| transport("no stdout pipe"))?;
    let mut reader = FrameReader::new(stdout);
    let mut writer = FrameWriter::new(stdin);
    let result = session(opts, &mut reader, &mut writer, started).await;
    let result = match result {
        Err(Error::Transport {
            message,
            server_code,
        }) => {
            // Say how the transport ended: ssh's status tells auth failures.
            drop(writer);
            let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            let how = match status {
                Ok(Ok(s)) if !s.success() => {
                    format!(" ({} exited with {s})", transport_name(&opts.dest))
                }
                _ => String::new(),
            };
            Err(Error::Transport {
                message: format!("{message}{how}"),
                server_code,
            })
        }
        Err(e) => Err(e),
        Ok(outcome) => {
            let _ = writer.shutdown().await;
            drop(writer);
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
            Ok(outcome)
        }
    };
    let _ = child.start_kill();
    result
}

fn transport_name(dest: &Destination) -> &'static str {
    match dest {
        Destination::Ssh { .. } => "ssh",
        Destination::Local(_) => "depot-receive",
    }
}

async fn session(
    opts: &Options,
    reader: &mut Reader,
    writer: &mut Writer,
    started: Instant,
) -> Result<Outcome, Error> {
    // Hash while ssh connects: start the local work first.
    let prepare = {
        let source = opts.source.clone();
        tokio::task::spawn_blocking(
            move || -> Result<(Local, Vec<(RefName, PreparedCommit)>), Error> {
                match source {
                    Source::Dir { dir, options } => {
                        let name = options
                            .ref_name
                            .clone()
                            .ok_or_else(|| Error::Local("a ref is needed".into()))?;
                        let (tree, root_tree, root_meta) = hash_tree(&dir, &options)?;
                        Ok((
                            Local::Tree(tree),
                            vec![(
                                name,
                                PreparedCommit::Build {
                                    options,
                                    root_tree,
                                    root_meta,
                                },
                            )],
                        ))
                    }
                    Source::Repo { repo, refs } => {
                        let r = Repo::open(&repo)?;
                        let mut v = Vec::new();
                        for name in refs {
                            let c = r.read_ref(&name)?.ok_or_else(|| {
                                Error::Local(format!(
                                    "ref {name} does not exist in {}",
                                    repo.display()
                                ))
                            })?;
                            v.push((name, PreparedCommit::Existing(c)));
                        }
                        Ok((Local::Repo(r), v))
                    }
                }
            },
        )
    };

    writer
        .send(&Message::Hello {
            magic: MAGIC.into(),
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            software: format!("depot {}", env!("CARGO_PKG_VERSION")),
            capabilities: Vec::new(),
        })
        .await
        .map_err(connection_failed)?;
    let names: Vec<RefName> = match &opts.source {
        Source::Dir { options, .. } => options.ref_name.iter().cloned().collect(),
        Source::Repo { refs, .. } => refs.clone(),
    };
    writer
        .send(&Message::QueryRefs {
            refs: names.clone(),
        })
        .await
        .map_err(connection_failed)?;
    if let Err(e) = writer.flush().await {
        return Err(reason_for_hangup(reader, e.to_string()).await);
    }
    let (limits, zlib_level) = match expect_reply(reader).await? {
        Message::Welcome {
            limits, zlib_level, ..
        } => (
            limits,
            zlib_level
                .filter(|l| (1..=9).contains(l))
                .unwrap_or(DEFAULT_ZLIB_LEVEL),
        ),
        m => return Err(unexpected(&m, "welcome")),
    };
    let states: Vec<RefState> = match expect_reply(reader).await? {
        Message::Refs { refs } => refs,
        m => return Err(unexpected(&m, "refs")),
    };
    if states.len() != names.len() || states.iter().zip(&names).any(|(s, n)| s.name != *n) {
        return Err(transport("the server answered about other refs than asked"));
    }
    if let Some(denied) = states.iter().find(|s| !s.writable) {
        return Err(Error::Refused {
            code: ErrorCode::Forbidden,
            message: denied
                .reason
                .clone()
                .unwrap_or_else(|| format!("ref {} is not writable", denied.name)),
        });
    }

    let (mut local, prepared) = prepare
        .await
        .map_err(|e| Error::Local(format!("hashing failed: {e}")))??;
    tracing::debug!("local objects ready at {:.2?}", started.elapsed());
    let mut updates = Vec::new();
    for ((name, p), state) in prepared.into_iter().zip(&states) {
        let new = match p {
            PreparedCommit::Existing(c) => c,
            PreparedCommit::Build {
                options,
                root_tree,
                root_meta,
            } => {
                let timestamp = match options.timestamp {
                    Some(t) => t,
                    None => commit::default_timestamp()?,
                };
                let c = Commit {
                    metadata: commit::commit_metadata(&options),
                    parent: state.commit,
                    related: Vec::new(),
                    subject: options.subject.clone(),
                    body: options.body.clone(),
                    timestamp,
                    root_tree,
                    root_meta,
                };
                let bytes = c.to_bytes();
                let sum = Checksum::of(&bytes);
                if let Local::Tree(t) = &mut local {
                    t.metadata
                        .insert(ObjectName::new(sum, ObjectType::Commit), bytes);
                }
                sum
            }
        };
        updates.push(RefChange {
            name,
            old: state.commit,
            new,
        });
    }
    writer
        .send(&Message::Update {
            updates: updates.clone(),
        })
        .await
        .map_err(connection_failed)?;
    if let Err(e) = writer.flush().await {
        return Err(reason_for_hangup(reader, e.to_string()).await);
    }
    match expect_reply(reader).await? {
        // An empty echo comes from a server that predates it.
        Message::Accepted { updates: echoed } if echoed.is_empty() || echoed == updates => {}
        Message::Accepted { updates: echoed } => {
            let show = |v: &[RefChange]| {
                v.iter()
                    .map(|r| format!("{} -> {}", r.name, r.new))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(transport(format!(
                "the server understood {} where {} was sent (corrupted in transit?); nothing was pushed",
                show(&echoed),
                show(&updates)
            )));
        }
        m => return Err(unexpected(&m, "accepted")),
    }

    let local = Arc::new(local);
    let sent = async {
        let to_send = negotiate(&local, &updates, reader, writer).await?;
        tracing::debug!(
            "negotiated at {:.2?}: {} objects to send",
            started.elapsed(),
            to_send.len()
        );
        let (objects_sent, bytes_sent) = match send_objects(
            &local,
            to_send,
            limits.max_object_size,
            zlib_level,
            writer,
            opts.progress,
        )
        .await
        {
            Ok(v) => v,
            Err(Error::Transport { message, .. }) => {
                return Err(reason_for_hangup(reader, message).await);
            }
            Err(e) => return Err(e),
        };
        tracing::debug!("sent at {:.2?}", started.elapsed());
        writer
            .send(&Message::Done {})
            .await
            .map_err(connection_failed)?;
        if let Err(e) = writer.flush().await {
            return Err(reason_for_hangup(reader, e.to_string()).await);
        }
        match expect_reply(reader).await? {
            Message::Result { refs, .. } if refs != updates => Err(transport(format!(
                "the server reports other ref changes than were asked for: {}",
                refs.iter()
                    .map(|r| format!("{} -> {}", r.name, r.new))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Message::Result { refs, .. } => Ok(Outcome {
                refs,
                objects_sent,
                bytes_sent,
                duration_ms: started.elapsed().as_millis() as u64,
            }),
            m => Err(unexpected(&m, "result")),
        }
    }
    .await;
    match sent {
        // The receiver found an object that does not match its name: a file
        // changed in a way its ctime did not show, or the bytes were damaged
        // on the way. Which one, hashing the files again tells.
        Err(
            e @ Error::Transport {
                server_code: Some(ErrorCode::BadObject),
                ..
            },
        ) => {
            let local = Arc::clone(&local);
            match tokio::task::spawn_blocking(move || changed_file(&local)).await {
                Ok(Some(path)) => Err(repo::Error::ChangedWhileReading { path }.into()),
                _ => Err(e),
            }
        }
        sent => sent,
    }
}

/// The first file of a pushed tree that no longer has the content it was
/// named by (or cannot be read again), if any.
fn changed_file(local: &Local) -> Option<PathBuf> {
    let Local::Tree(t) = local else {
        return None;
    };
    let files: Vec<(ObjectName, usize)> = t.content.iter().map(|(n, &i)| (*n, i)).collect();
    files.par_iter().find_map_any(|(name, i)| {
        let entry = &t.scan.files[*i];
        let path = t.scan.path(entry);
        let hashed = commit::hash_entry(entry, &path, !t.has_xattrs[*i], &mut Vec::new());
        match hashed {
            Ok(h) if h.checksum == name.checksum => None,
            _ => Some(path),
        }
    })
}

enum PreparedCommit {
    Existing(Checksum),
    Build {
        options: commit::Options,
        root_tree: Checksum,
        root_meta: Checksum,
    },
}

/// Asks the server, level by level, which objects it lacks. A present
/// dirtree or commit stands for everything below it.
async fn negotiate(
    local: &Local,
    updates: &[RefChange],
    reader: &mut Reader,
    writer: &mut Writer,
) -> Result<Vec<ObjectName>, Error> {
    let mut asked: ObjectMap<()> = ObjectMap::new();
    let mut to_send = Vec::new();
    let mut level: Vec<ObjectName> = Vec::new();
    for u in updates {
        level.push(ObjectName::new(u.new, ObjectType::Commit));
        let meta = ObjectName::new(u.new, ObjectType::CommitMeta);
        if let Local::Repo(r) = local
            && r.has_object(&meta)
        {
            level.push(meta);
        }
    }
    while !level.is_empty() {
        level.retain(|n| asked.insert_if_absent(*n, ()));
        let mut next = Vec::new();
        // One batch in flight: the reply to a big batch can fill the pipe,
        // and a client still writing its next batch would never read it.
        for batch in level.chunks(MAX_BATCH) {
            writer
                .send(&Message::Want {
                    objects: batch.to_vec(),
                })
                .await
                .map_err(connection_failed)?;
            if let Err(e) = writer.flush().await {
                return Err(reason_for_hangup(reader, e.to_string()).await);
            }
            let missing = match expect_reply(reader).await? {
                Message::Missing { objects } => objects,
                m => return Err(unexpected(&m, "missing")),
            };
            let in_batch: HashSet<&ObjectName> = batch.iter().collect();
            if missing.iter().any(|m| !in_batch.contains(m)) {
                return Err(transport(
                    "the server reported objects missing that were not asked about",
                ));
            }
            for m in missing {
                next.extend(local.children(&m)?);
                to_send.push(m);
            }
        }
        level = next;
    }
    Ok(to_send)
}

/// One object's bytes, ready for the wire.
enum Payload {
    Memory(Vec<u8>),
    Spool(File, u64),
}

struct Ready {
    name: ObjectName,
    payload: Payload,
}

/// Produces the stored form of a content object: compressed from the tree,
/// or the `.filez` as the local repository has it.
fn produce(
    local: &Local,
    name: &ObjectName,
    max_object_size: u64,
    zlib_level: u32,
    buf: &mut Vec<u8>,
) -> Result<Payload, Error> {
    match local {
        Local::Repo(r) => {
            let path = r.object_path(name);
            let mut f = File::open(&path)
                .map_err(|e| Error::Local(format!("open {}: {e}", path.display())))?;
            let size = f
                .metadata()
                .map_err(|e| Error::Local(format!("stat {}: {e}", path.display())))?
                .len();
            if size <= IN_MEMORY_LIMIT {
                let mut v = Vec::with_capacity(size as usize);
                f.read_to_end(&mut v)
                    .map_err(|e| Error::Local(format!("read {}: {e}", path.display())))?;
                Ok(Payload::Memory(v))
            } else {
                Ok(Payload::Spool(f, size))
            }
        }
        Local::Tree(t) => {
            let index = t
                .content
                .get(name)
                .ok_or_else(|| Error::Local(format!("object {name} is not in the tree")))?;
            let entry: &FileEntry = &t.scan.files[index];
            let path = t.scan.path(entry);
            // A file that had no extended attributes when hashed is not
            // asked again.
            let (file, header) = entry.open(&path, t.has_xattrs[index])?;
            let changed = || Error::from(repo::Error::ChangedWhileReading { path: path.clone() });
            let local_err =
                |e: std::io::Error| Error::Local(format!("compress {}: {e}", path.display()));
            // Compressed without hashing it again: depot-receive hashes every
            // object anyway. A status change time and size as the scan saw
            // them (before the content was hashed) usually show that nothing
            // wrote to the file since; otherwise it is read again, hashed,
            // and must still have the content it was named by. As git does
            // for its index, a file changed shortly before the scan is
            // hashed again regardless: a write in the same clock tick, or
            // one still under way, need not move the ctime. What slips
            // through (a store through a shared mapping) the receiver
            // refuses, and `changed_file` then names the file.
            let file = file.as_ref();
            let racy = entry.changed_at > t.scan.started_at.saturating_sub(RACY_NANOS);
            let fast = match file {
                Some(f) if !racy => {
                    let (payload, _, n) =
                        compress(&header, entry.size, file, zlib_level, false, buf)
                            .map_err(local_err)?;
                    let md = f.metadata().map_err(local_err)?;
                    let unchanged = n == entry.size
                        && md.len() == entry.size
                        && commit::ctime_ns(&md) == entry.changed_at;
                    if unchanged {
                        Some(payload)
                    } else {
                        let mut reader = f;
                        reader.rewind().map_err(local_err)?;
                        None
                    }
                }
                // A symlink's header is all there is to hash.
                _ => None,
            };
            let payload = match fast {
                Some(payload) => payload,
                None => {
                    let (payload, sum, n) =
                        compress(&header, entry.size, file, zlib_level, true, buf)
                            .map_err(local_err)?;
                    if sum != Some(name.checksum) || n != entry.size {
                        return Err(changed());
                    }
                    payload
                }
            };
            let size = match &payload {
                Payload::Memory(v) => v.len() as u64,
                Payload::Spool(_, s) => *s,
            };
            if size > max_object_size {
                return Err(Error::Refused {
                    code: ErrorCode::TooLarge,
                    message: format!(
                        "{} compresses to {size} bytes, over the server's {max_object_size}-byte limit",
                        path.display()
                    ),
                });
            }
            Ok(payload)
        }
    }
}

/// Writes the `.filez` of `file` (none for a symlink) into memory, or a
/// spool file when large; hashes the payload when asked. Returns the
/// payload, the content checksum if hashed, and the bytes read (at most one
/// past `size`).
fn compress(
    header: &FileHeader,
    size: u64,
    file: Option<&File>,
    zlib_level: u32,
    hashed: bool,
    buf: &mut Vec<u8>,
) -> std::io::Result<(Payload, Option<Checksum>, u64)> {
    let source: Box<dyn Read + '_> = match file {
        Some(f) => Box::new(f.take(size + 1)),
        None => Box::new(std::io::empty()),
    };
    let write = |out: &mut dyn std::io::Write| {
        if hashed {
            write_filez(header, size, source, zlib_level, out).map(|(sum, n)| (Some(sum), n))
        } else {
            write_filez_unhashed(header, size, source, zlib_level, out).map(|n| (None, n))
        }
    };
    if size <= IN_MEMORY_LIMIT {
        buf.clear();
        let (sum, n) = write(&mut *buf)?;
        Ok((Payload::Memory(std::mem::take(buf)), sum, n))
    } else {
        let mut spool = tempfile::tempfile()?;
        let (sum, n) = write(&mut std::io::BufWriter::new(&mut spool))?;
        let stored = spool.stream_position()?;
        spool.rewind()?;
        Ok((Payload::Spool(spool, stored), sum, n))
    }
}

/// Streams the objects: metadata at once, content compressed on every core
/// ahead of one writer.
async fn send_objects(
    local: &Arc<Local>,
    to_send: Vec<ObjectName>,
    max_object_size: u64,
    zlib_level: u32,
    writer: &mut Writer,
    show_progress: bool,
) -> Result<(u64, u64), Error> {
    let mut progress = Progress::new(show_progress, to_send.len() as u64);
    for name in to_send.iter().filter(|n| n.kind != ObjectType::File) {
        let data = local.metadata(name)?;
        writer
            .send_object(name, &data)
            .await
            .map_err(connection_failed)?;
        progress.add(data.len() as u64);
    }
    let (tx, mut rx) = mpsc::channel::<Result<Ready, Error>>(QUEUE_DEPTH);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let local = Arc::clone(local);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let content = to_send.par_iter().filter(|n| n.kind == ObjectType::File);
            content.for_each_init(Vec::new, |buf, name| {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let item =
                    produce(&local, name, max_object_size, zlib_level, buf).map(|payload| Ready {
                        name: *name,
                        payload,
                    });
                // A failure is queued like a result, so the writer reports it
                // instead of sending `done` without the object.
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    stop.store(true, Ordering::Relaxed);
                }
            });
        })
    };
    let mut result = Ok(());
    while let Some(item) = rx.recv().await {
        let written = match item {
            Ok(Ready { name, payload }) => write_payload(writer, &name, payload).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(n) => progress.add(n),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || producer.join()).await;
    progress.finish();
    result.map(|()| (progress.objects, progress.bytes))
}

async fn write_payload(
    writer: &mut Writer,
    name: &ObjectName,
    payload: Payload,
) -> Result<u64, Error> {
    match payload {
        Payload::Memory(data) => {
            writer
                .send_object(name, &data)
                .await
                .map_err(connection_failed)?;
            Ok(data.len() as u64)
        }
        Payload::Spool(mut file, size) => {
            writer
                .send_object_start(name, size)
                .await
                .map_err(connection_failed)?;
            let mut buf = vec![0u8; MAX_PAYLOAD];
            let mut left = size;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let n = file
                    .read(&mut buf[..want])
                    .map_err(|e| Error::Local(format!("reading a spooled object: {e}")))?;
                if n == 0 {
                    return Err(Error::Local(format!("spooled object {name} ended early")));
                }
                writer
                    .send_object_data(&buf[..n])
                    .await
                    .map_err(connection_failed)?;
                left -= n as u64;
            }
            Ok(size)
        }
    }
}

/// Progress on standard error, when it is a terminal: objects, bytes, rate, ETA.
struct Progress {
    enabled: bool,
    total: u64,
    objects: u64,
    bytes: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(wanted: bool, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            total,
            objects: 0,
            bytes: 0,
            started: now,
            last: now,
        }
    }

    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            self.print();
        }
    }

    fn print(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.bytes as f64 / secs;
        let eta = if self.objects > 0 && self.total > self.objects {
            let per = secs / self.objects as f64;
            format!(", ETA {:.0}s", per * (self.total - self.objects) as f64)
        } else {
            String::new()
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rpushing: {}/{} objects, {:.1} MiB, {:.1} MiB/s{eta}   ",
            self.objects,
            self.total,
            self.bytes as f64 / 1_048_576.0,
            rate / 1_048_576.0
        );
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.enabled {
            self.print();
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The payload `produce` makes for the file at `name` in `dir`, inflated.
    fn produced(
        tree: &Local,
        sums: &HashMap<String, ObjectName>,
        name: &str,
    ) -> Result<Vec<u8>, Error> {
        produced_whole(tree, sums, name).map(|(_, content)| content)
    }

    /// [`produced`], with the header the payload declares.
    fn produced_whole(
        tree: &Local,
        sums: &HashMap<String, ObjectName>,
        name: &str,
    ) -> Result<(FileHeader, Vec<u8>), Error> {
        let filez = match produce(tree, &sums[name], u64::MAX, 1, &mut Vec::new())? {
            Payload::Memory(filez) => filez,
            Payload::Spool(mut spool, size) => {
                let mut filez = Vec::new();
                spool.read_to_end(&mut filez).expect("read the spool");
                assert_eq!(filez.len() as u64, size, "the spool's declared size");
                filez
            }
        };
        let header_len = u32::from_be_bytes(filez[..4].try_into().expect("4 bytes")) as usize;
        let (header, size) =
            crate::object::parse_filez_header(&filez[8..8 + header_len]).expect("header");
        let mut content = Vec::new();
        if !header.is_symlink() {
            flate2::read::DeflateDecoder::new(&filez[8 + header_len..])
                .read_to_end(&mut content)
                .expect("inflates");
        }
        assert_eq!(content.len() as u64, size, "{name}: the declared size");
        Ok((header, content))
    }

    /// `len` bytes of numbered lines that start with `name`: compressible,
    /// and different for each name.
    fn lines(name: &str, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("{name} line {i}\n").as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    /// Hashes `dir` as if its files were written long before the scan (so
    /// that only a moved ctime gets one hashed again), waits past the
    /// coarse clock's tick so that a later write moves the ctime, and maps
    /// each file's name to its object (every file here has its own content).
    fn hashed_long_after_written(dir: &Path) -> (TreeObjects, HashMap<String, ObjectName>) {
        let (mut tree, _, _) = hash_tree(dir, &commit::Options::default()).expect("hashes");
        tree.scan.started_at = i64::MAX;
        let sums = tree
            .content
            .iter()
            .map(|(name, &i)| (tree.scan.files[i].name.as_str().to_string(), *name))
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(30));
        (tree, sums)
    }

    #[test]
    fn a_spooled_file_is_caught_when_changed_and_a_symlink_is_sent_as_scanned() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Over IN_MEMORY_LIMIT: compressed into a spool file.
        let big_len = IN_MEMORY_LIMIT as usize + 1024 * 1024;
        for name in ["big", "big-rewritten"] {
            fs::write(dir.path().join(name), lines(name, big_len)).expect("write");
        }
        for (name, target) in [("link", "target-a"), ("link-moved", "target-b")] {
            std::os::unix::fs::symlink(target, dir.path().join(name)).expect("symlink");
        }
        let (tree, sums) = hashed_long_after_written(dir.path());
        // The same size: only the content differs from what was hashed.
        let mut rewritten = lines("big-rewritten", big_len);
        rewritten[big_len / 2] ^= 1;
        fs::write(dir.path().join("big-rewritten"), rewritten).expect("write");
        fs::remove_file(dir.path().join("link-moved")).expect("rm");
        std::os::unix::fs::symlink("target-c", dir.path().join("link-moved")).expect("symlink");
        let tree = Local::Tree(tree);

        let (header, content) = produced_whole(&tree, &sums, "big").expect("sent");
        assert!(!header.is_symlink());
        assert!(content == lines("big", big_len), "big: other content sent");
        // A symlink is sent as the scan read it, which is what it was
        // named by, even when it has been pointed elsewhere since.
        for (name, target) in [("link", "target-a"), ("link-moved", "target-b")] {
            let (header, content) = produced_whole(&tree, &sums, name).expect("sent");
            assert_eq!((header.symlink_target.as_str(), content.len()), (target, 0));
        }
        match produced(&tree, &sums, "big-rewritten") {
            Err(Error::Repo(repo::Error::ChangedWhileReading { path })) => {
                assert_eq!(path, dir.path().join("big-rewritten"));
            }
            other => panic!("{:?}", other.map(|c| c.len())),
        }
    }

    #[test]
    fn a_file_written_after_it_was_hashed_is_not_sent_under_the_old_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["kept", "touched", "rewritten", "grown"] {
            fs::write(dir.path().join(name), format!("{name} as hashed")).expect("write");
        }
        let (tree, sums) = hashed_long_after_written(dir.path());
        let touched = dir.path().join("touched");
        fs::set_permissions(
            &touched,
            fs::metadata(&touched).expect("stat").permissions(),
        )
        .expect("chmod");
        // The same size: only the ctime shows it.
        fs::write(dir.path().join("rewritten"), "REWRITTEN AS HASHED").expect("write");
        fs::write(dir.path().join("grown"), "grown as hashed, and more").expect("write");
        let tree = Local::Tree(tree);

        assert_eq!(
            produced(&tree, &sums, "kept").expect("sent"),
            b"kept as hashed"
        );
        // The ctime moved, the content did not: read again, hashed, sent.
        assert_eq!(
            produced(&tree, &sums, "touched").expect("sent"),
            b"touched as hashed"
        );
        for name in ["rewritten", "grown"] {
            match produced(&tree, &sums, name) {
                Err(Error::Repo(repo::Error::ChangedWhileReading { path })) => {
                    assert_eq!(path, dir.path().join(name));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_file_changed_just_before_the_scan_is_hashed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("racy");
        fs::write(&path, "as hashed").expect("write");
        let (mut tree, _, _) = hash_tree(dir.path(), &commit::Options::default()).expect("hashes");
        fs::write(&path, "AS HASHED").expect("write");
        // A write whose ctime looks like the scan's: a coarse clock, or a
        // write still under way while the scan looked.
        let md = fs::metadata(&path).expect("stat");
        tree.scan.files[0].changed_at = commit::ctime_ns(&md);
        let name = *tree.content.iter().next().expect("one object").0;
        let sums = HashMap::from([("racy".to_string(), name)]);
        match produced(&Local::Tree(tree), &sums, "racy") {
            Err(Error::Repo(repo::Error::ChangedWhileReading { path: p })) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changed_file_names_the_file_that_no_longer_matches_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a", "b"] {
            fs::write(dir.path().join(name), format!("{name} as hashed")).expect("write");
        }
        let (tree, _, _) = hash_tree(dir.path(), &commit::Options::default()).expect("hashes");
        let tree = Local::Tree(tree);
        assert_eq!(changed_file(&tree), None);
        fs::write(dir.path().join("b"), "B AS HASHED").expect("write");
        assert_eq!(changed_file(&tree), Some(dir.path().join("b")));
    }
}
