//! Pulling from a repository served by any static HTTP(S) server.
//!
//! `depot ls URL` reads the summary (or, without one, a directory listing of
//! `refs/heads/`); `depot pull URL REF DEST` fetches what the ref's commit
//! needs and checks it out; `--path` fetches only the objects on one file's
//! path. Everything fetched is verified as `ostree pull` verifies it: the
//! summary and every metadata object must be normal-form GVariants, the
//! commit no larger than the summary says, every object must hash to its
//! name, and content must inflate to exactly its declared size. Objects go
//! through the same streaming verifier as pushed objects
//! ([`crate::repo::IncomingObject`]) into a local cache, which is itself an
//! archive repository; what is already there is not fetched again, so an
//! interrupted pull resumes. Requests run in parallel over a pool of
//! kept-alive connections. HTTP 403, 404 and 410 mean "absent", as in ostree.
//!
//! A checkout is written while its objects stream in: each file is inflated
//! once, into the cache's verifier and its place in the checkout together,
//! and the checkout is built beside DEST and renamed into place only when
//! every object in it has been verified.

use std::collections::HashSet;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rayon::prelude::*;

use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::JoinSet;

use crate::checksum::Checksum;
use crate::gvariant::{self, Type, Value};
use crate::object::{Commit, DirTree, MAX_METADATA_SIZE, ObjectName, ObjectType};
use crate::read::{self, Checkout, CheckoutOptions, CheckoutStats};
use crate::refname::{MAX_REF_LEN, RefName};
use crate::repo::{self, PayloadSink, Repo, Transaction};

/// Requests in flight at once (ostree uses 8).
const PARALLEL_REQUESTS: usize = 16;
/// Objects published from the cache's transaction at a time, so that an
/// interrupted pull keeps what it fetched.
const PUBLISH_EVERY: usize = 512;
/// A metadata object is held in memory while it is verified, and checking
/// a dirtree takes about three times its size (ostree allows 128 MiB): the
/// large ones (over [`SMALL_METADATA`]) are fetched only while the sizes in
/// flight stay within this many KiB. A server sending many large dirtrees at
/// once then takes about half a gigabyte at most: three times this budget,
/// and what 16 smaller objects hold (0.39 GB measured). A response that
/// would have to wait for its share is dropped and asked for again once the
/// share is held, so no connection waits unread.
const LARGE_METADATA_KIB: u32 = 128 * 1024;
/// Metadata up to this size is fetched without counting.
const SMALL_METADATA: u64 = 1024 * 1024;
/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, by default, the server may send nothing (in an answer or in
/// the middle of a body) before the request fails.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Redirects followed per request (as reqwest's default policy).
const MAX_REDIRECTS: usize = 10;
/// Directories of `refs/heads/` listed, at most, when there is no summary.
const MAX_REF_LISTINGS: usize = 1_000;
/// Refs read, at most, from `refs/heads/` listings when there is no summary.
const MAX_LISTED_REFS: usize = 100_000;
/// Bytes of ref and directory names kept, at most, from `refs/heads/`
/// listings: 100,000 refs of 160 bytes.
const MAX_LISTED_REF_BYTES: usize = 16 * 1024 * 1024;
/// The largest `refs/heads/` listing page read. Only one is held at a time,
/// and only what in it could be a ref is kept.
const MAX_LISTING_PAGE: u64 = 16 * 1024 * 1024;
/// The largest summary read (ostree reads up to its metadata limit).
const MAX_SUMMARY_SIZE: u64 = MAX_METADATA_SIZE;

/// Errors of pulling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request failed or returned an unexpected status.
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// Something fetched is not what it should be.
    #[error("{url}: {reason}")]
    Invalid {
        /// The URL it came from.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The ref is not on the server.
    #[error("ref {name} is not in {url}; `depot ls {url}` lists the refs")]
    NoSuchRef {
        /// The ref.
        name: String,
        /// The repository URL.
        url: String,
    },
    /// From the local cache or checkout.
    #[error(transparent)]
    Repo(#[from] repo::Error),
    /// From the checkout.
    #[error(transparent)]
    Read(#[from] read::Error),
    /// Anything local.
    #[error("{0}")]
    Local(String),
}

/// A ref as the server lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemoteRef {
    /// The ref.
    #[serde(rename = "ref")]
    pub name: RefName,
    /// Its commit.
    pub commit: Checksum,
    /// The commit's size, when the summary gives it.
    pub commit_size: Option<u64>,
    /// The commit time, when the summary gives it.
    pub timestamp: Option<u64>,
    /// The `version` metadata, when the summary gives it.
    pub version: Option<String>,
}

/// A repository at a URL.
#[derive(Debug, Clone)]
pub struct Remote {
    base: String,
    transport: Transport,
}

/// Where a remote's files come from.
#[derive(Debug, Clone)]
enum Transport {
    Http(reqwest::Client),
    /// A `file://` URL: a repository on a local or mounted file system, read
    /// and verified exactly as one served over http.
    File(PathBuf),
}

/// How much of a local file one chunk of a `file://` fetch holds.
const FILE_CHUNK: usize = 256 * 1024;

/// A file being fetched.
enum Body {
    Http(reqwest::Response),
    /// A local file, its length when opened, and how much of it is left.
    File {
        file: std::fs::File,
        len: u64,
        left: u64,
    },
}

impl Body {
    fn content_length(&self) -> Option<u64> {
        match self {
            Body::Http(resp) => resp.content_length(),
            Body::File { len, .. } => Some(*len),
        }
    }

    /// The next bytes, `None` at the end; an error says why.
    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        match self {
            Body::Http(resp) => resp.chunk().await.map_err(|e| crate::error_chain(&e)),
            Body::File { file, left, .. } => {
                // Its length is what a server would have sent as
                // Content-Length: no more is read (a file that shrank ends
                // early, and the verifier says so).
                if *left == 0 {
                    return Ok(None);
                }
                let mut buf =
                    vec![0; usize::try_from(*left).map_or(FILE_CHUNK, |n| n.min(FILE_CHUNK))];
                let n = loop {
                    match std::io::Read::read(file, &mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        r => break r.map_err(|e| e.to_string())?,
                    }
                };
                if n == 0 {
                    return Ok(None);
                }
                *left -= n as u64;
                buf.truncate(n);
                Ok(Some(buf.into()))
            }
        }
    }
}

impl Remote {
    /// Prepares requests to `url` (http, https, or file with an absolute
    /// path); `cacert` adds a trusted certificate (PEM) to the system's
    /// roots for https. A request fails after `timeout` without a byte
    /// from the server (zero: never).
    pub fn new(url: &str, cacert: Option<&Path>, timeout: Duration) -> Result<Remote, Error> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::Local(format!(
                    "{url:?}: a file:// URL needs an absolute path, as in file:///srv/repo"
                )));
            }
            return Ok(Remote {
                base: url.trim_end_matches('/').to_string(),
                transport: Transport::File(PathBuf::from(path)),
            });
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::Local(format!(
                "{url:?} is not an http://, https:// or file:// URL"
            )));
        }
        let mut builder = reqwest::Client::builder();
        if !timeout.is_zero() {
            builder = builder.read_timeout(timeout);
        }
        let mut builder = builder
            .pool_max_idle_per_host(PARALLEL_REQUESTS)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
                if from_https && attempt.url().scheme() != "https" {
                    let to = attempt.url().to_string();
                    attempt.error(format!(
                        "redirected from https to {to}; refusing to leave https"
                    ))
                } else if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("depot/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = cacert {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Local(format!("read {}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Local(format!("{} is not a PEM certificate: {e}", path.display()))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Local(format!("cannot set up HTTP: {e}")))?;
        Ok(Remote {
            base: url.trim_end_matches('/').to_string(),
            transport: Transport::Http(client),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Starts a GET; `Ok(None)` for 403/404/410 (a missing file for
    /// `file://`).
    async fn get(&self, path: &str) -> Result<Option<Body>, Error> {
        let url = self.url(path);
        let client = match &self.transport {
            Transport::Http(client) => client,
            Transport::File(root) => {
                let file = root.join(path);
                // Only regular files: opening a fifo would block, a device
                // could do anything. O_NONBLOCK covers a swap after the check.
                if std::fs::metadata(&file).is_ok_and(|m| !m.is_file()) {
                    return Ok(None);
                }
                let open = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&file)
                    .and_then(|f| f.metadata().map(|m| (f, m.is_file(), m.len())));
                return match open {
                    Ok((file, true, len)) => Ok(Some(Body::File {
                        file,
                        len,
                        left: len,
                    })),
                    Ok((_, false, _)) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::Http {
                        url,
                        reason: e.to_string(),
                    }),
                };
            }
        };
        let resp = client.get(&url).send().await.map_err(|e| Error::Http {
            url: url.clone(),
            reason: crate::error_chain(&e),
        })?;
        match resp.status().as_u16() {
            200 => Ok(Some(Body::Http(resp))),
            403 | 404 | 410 => Ok(None),
            s => Err(Error::Http {
                url,
                reason: format!("HTTP status {s}"),
            }),
        }
    }

    /// Fetches a whole small file, refusing more than `max` bytes.
    async fn get_small(&self, path: &str, max: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some(mut resp) = self.get(path).await? else {
            return Ok(None);
        };
        let url = self.url(path);
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(Error::Invalid {
                url,
                reason: format!("larger than the {max}-byte limit"),
            });
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|reason| Error::Http {
            url: url.clone(),
            reason,
        })? {
            if out.len() as u64 + chunk.len() as u64 > max {
                return Err(Error::Invalid {
                    url,
                    reason: format!("larger than the {max}-byte limit"),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// Lists the refs: from the summary, else from a directory listing.
    pub async fn refs(&self) -> Result<Vec<RemoteRef>, Error> {
        if let Some(refs) = self.summary_refs().await? {
            return Ok(refs);
        }
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        let mut listed = 0usize;
        let mut asked = 0usize;
        // Bytes of names held in `dirs` and `out`.
        let mut held = 0usize;
        let too_many = |what: String| Error::Invalid {
            url: self.url("refs/heads/"),
            reason: format!(
                "more than {what}; run depot-summary on the server so that clients read its summary"
            ),
        };
        while let Some(dir) = dirs.pop() {
            listed += 1;
            if listed > MAX_REF_LISTINGS {
                return Err(too_many(format!("{MAX_REF_LISTINGS} directories of refs")));
            }
            let path = format!("refs/heads/{dir}");
            let Some(listing) = self.list(&path).await? else {
                if dir.is_empty() {
                    return Err(Error::Invalid {
                        url: self.base.clone(),
                        reason:
                            "no summary and no refs/heads/ listing; run depot-summary on the server"
                                .into(),
                    });
                }
                continue;
            };
            // A listing may name an entry twice; each is asked for once. A
            // directory is met only in its parent's listing, so entries
            // cannot recur across listings. Only what could be part of a
            // ref name is kept, counted as it is: the rest of a page, however
            // much, is passed over.
            let mut seen = HashSet::new();
            for href in listing.entries() {
                let (entry, is_dir) = match href.strip_suffix('/') {
                    // Only what could be part of a ref name, one level down.
                    Some(sub) if sub.contains('/') => continue,
                    Some(sub) => (sub, true),
                    None => (href, false),
                };
                if dir.len() + entry.len() > MAX_REF_LEN {
                    continue;
                }
                let Ok(name) = format!("{dir}{entry}").parse::<RefName>() else {
                    continue;
                };
                if !seen.insert(href) {
                    continue;
                }
                held += name.as_str().len();
                if held > MAX_LISTED_REF_BYTES {
                    return Err(too_many(format!(
                        "{} MiB of ref names",
                        MAX_LISTED_REF_BYTES >> 20
                    )));
                }
                if is_dir {
                    // Each is listed in turn: counted now, not once it is.
                    if listed + dirs.len() + 1 > MAX_REF_LISTINGS {
                        return Err(too_many(format!("{MAX_REF_LISTINGS} directories of refs")));
                    }
                    dirs.push(format!("{name}/"));
                    continue;
                }
                // Counted when asked for, found or not.
                asked += 1;
                if asked > MAX_LISTED_REFS {
                    return Err(too_many(format!("{MAX_LISTED_REFS} refs")));
                }
                // Listed but gone: deleted since the listing was made.
                let Some(commit) = self.ref_file(&name).await? else {
                    tracing::warn!("ref {name} was listed but is not there; leaving it out");
                    continue;
                };
                out.push(RemoteRef {
                    name,
                    commit,
                    commit_size: None,
                    timestamp: None,
                    version: None,
                });
            }
        }
        out.sort_by(|a, b| a.name.as_str().as_bytes().cmp(b.name.as_str().as_bytes()));
        Ok(out)
    }

    /// The entries of the directory at `path`, a directory's with a
    /// trailing `/`: from the server's listing page, or read from the file
    /// system for `file://`. `None` when there is no listing.
    async fn list(&self, path: &str) -> Result<Option<Listing>, Error> {
        let root = match &self.transport {
            Transport::File(root) => root,
            Transport::Http(_) => {
                let page = self.get_small(path, MAX_LISTING_PAGE).await?;
                return Ok(page.map(|p| {
                    Listing::Page(
                        String::from_utf8(p)
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    )
                }));
            }
        };
        let failed = |e: std::io::Error| Error::Http {
            url: self.url(path),
            reason: e.to_string(),
        };
        let entries = match std::fs::read_dir(root.join(path)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(failed(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(failed)?;
            // A name ostree could not have written is not a ref.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if entry.file_type().map_err(failed)?.is_dir() {
                out.push(format!("{name}/"));
            } else {
                out.push(name);
            }
        }
        Ok(Some(Listing::Names(out)))
    }

    async fn ref_file(&self, name: &RefName) -> Result<Option<Checksum>, Error> {
        let path = format!("refs/heads/{name}");
        let Some(bytes) = self.get_small(&path, 1024).await? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim().parse().map(Some).map_err(|e| Error::Invalid {
            url: self.url(&path),
            reason: format!("not a commit checksum: {e}"),
        })
    }

    /// The refs of the summary, verified; `None` if there is no summary.
    async fn summary_refs(&self) -> Result<Option<Vec<RemoteRef>>, Error> {
        let Some(bytes) = self.get_small("summary", MAX_SUMMARY_SIZE).await? else {
            return Ok(None);
        };
        let url = self.url("summary");
        let invalid = |reason: String| Error::Invalid {
            url: url.clone(),
            reason,
        };
        let ty = Type::parse("(a(s(taya{sv}))a{sv})").expect("a valid type string");
        let units = bytes.len() / 2 + 1024;
        let v = gvariant::from_normal_bytes_within(&ty, &bytes, units)
            .map_err(|e| invalid(format!("not a valid summary: {e}")))?;
        let refs = v
            .as_tuple()
            .and_then(|t| t.first())
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("no ref list".into()))?;
        let mut out = Vec::with_capacity(refs.len());
        for entry in refs {
            let Some([name, data]) = entry.as_tuple() else {
                return Err(invalid("bad ref entry".into()));
            };
            let name: RefName = name
                .as_str()
                .ok_or_else(|| invalid("bad ref name".into()))?
                .parse()
                .map_err(|e| invalid(format!("bad ref name: {e}")))?;
            let Some([Value::Uint64(size), Value::Bytes(csum), meta]) = data.as_tuple() else {
                return Err(invalid(format!("bad entry for {name}")));
            };
            let commit = Checksum::from_slice(csum).map_err(|e| invalid(format!("{name}: {e}")))?;
            let meta = gvariant::dict_from_value(meta.clone()).unwrap_or_default();
            let timestamp = meta.iter().find_map(|(k, v)| match (k.as_str(), v) {
                ("ostree.commit.timestamp", Value::Uint64(t)) => Some(t.swap_bytes()),
                _ => None,
            });
            let version = meta
                .iter()
                .find(|(k, _)| k == "ostree.commit.version")
                .and_then(|(_, v)| v.as_str().map(str::to_string));
            out.push(RemoteRef {
                name,
                commit,
                commit_size: Some(*size),
                timestamp,
                version,
            });
        }
        Ok(Some(out))
    }

    /// The commit a ref points at, and its size when a summary says it.
    pub async fn resolve(&self, name: &RefName) -> Result<(Checksum, Option<u64>), Error> {
        if let Some(refs) = self.summary_refs().await? {
            return refs
                .into_iter()
                .find(|r| &r.name == name)
                .map(|r| (r.commit, r.commit_size))
                .ok_or_else(|| Error::NoSuchRef {
                    name: name.to_string(),
                    url: self.base.clone(),
                });
        }
        let commit = self.ref_file(name).await?.ok_or_else(|| Error::NoSuchRef {
            name: name.to_string(),
            url: self.base.clone(),
        })?;
        Ok((commit, None))
    }
}

/// A directory's entries, a directory's with a trailing `/`.
enum Listing {
    /// A server's listing page, read through as it is used.
    Page(String),
    /// Names read from a local file system.
    Names(Vec<String>),
}

impl Listing {
    fn entries(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Listing::Page(html) => Box::new(listing_hrefs(html)),
            Listing::Names(names) => Box::new(names.iter().map(String::as_str)),
        }
    }
}

/// The `href`s of a directory listing page, relative ones only.
fn listing_hrefs(html: &str) -> impl Iterator<Item = &str> {
    html.split("href=\"").skip(1).filter_map(|part| {
        let href = &part[..part.find('"')?];
        let skip = href.starts_with('/')
            || href.starts_with('.')
            || href.contains("://")
            || href.contains('?')
            || href.is_empty();
        (!skip).then_some(href)
    })
}

/// Fetches objects into the cache transaction, in parallel, verified.
struct Fetcher {
    remote: Remote,
    tx: Arc<Transaction>,
    permits: Arc<Semaphore>,
    /// KiB of large metadata in flight: see [`LARGE_METADATA_KIB`].
    large_metadata: Arc<Semaphore>,
    max_object_size: u64,
    fetched: Arc<AtomicU64>,
}

impl Fetcher {
    /// Fetches every name in `names` the cache lacks; each object is verified
    /// as it streams and staged.
    async fn fetch_all(&self, names: Vec<(ObjectName, Option<u64>)>) -> Result<(), Error> {
        // A damaged metadata object in the cache is dropped and fetched
        // again, as damaged content is, instead of failing every pull.
        let cache = self.tx.repo();
        for (name, _) in &names {
            if name.kind.is_metadata()
                && cache.has_object(name)
                && let Err(e @ repo::Error::CorruptObject { .. }) = cache.read_metadata(name)
            {
                drop_damaged(cache, name, &e);
            }
        }
        let mut asked = HashSet::new();
        let jobs = names
            .into_iter()
            .filter(|(name, _)| asked.insert(*name) && !self.tx.has_object(name))
            .map(|(name, max)| {
                let (remote, tx) = (self.remote.clone(), Arc::clone(&self.tx));
                let large_metadata = Arc::clone(&self.large_metadata);
                let limit = max.unwrap_or(self.max_object_size);
                async move { fetch_one(&remote, &tx, name, limit, &large_metadata, None).await }
            });
        self.run(jobs).await
    }

    /// Fetches the content objects `files` (indices into
    /// [`Checkout::files`]) straight into their places in `checkout` while
    /// they are staged in the cache.
    async fn fetch_into(&self, files: &[usize], checkout: &Arc<Checkout>) -> Result<(), Error> {
        let jobs = files.iter().map(|&i| {
            let (remote, tx) = (self.remote.clone(), Arc::clone(&self.tx));
            let large_metadata = Arc::clone(&self.large_metadata);
            // The paths stay in the checkout: one object may have millions.
            let checkout = Arc::clone(checkout);
            let name = ObjectName::new(checkout.files()[i].0, ObjectType::File);
            let limit = self.max_object_size;
            async move {
                let mut sink = checkout.sink(&checkout.files()[i].1);
                let also_to = Some(&mut sink as &mut (dyn PayloadSink + Send));
                fetch_one(&remote, &tx, name, limit, &large_metadata, also_to).await?;
                Ok(sink.finish()?)
            }
        });
        self.run(jobs).await
    }

    /// Runs `jobs` with at most [`PARALLEL_REQUESTS`] at once, stopping at
    /// the first error.
    async fn run<F>(&self, jobs: impl IntoIterator<Item = F>) -> Result<(), Error>
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let mut set = JoinSet::new();
        for job in jobs {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|e| Error::Local(e.to_string()))?;
            let fetched = Arc::clone(&self.fetched);
            set.spawn(async move {
                let r = job.await;
                drop(permit);
                fetched.fetch_add(1, Ordering::Relaxed);
                r
            });
            while let Some(done) = set.try_join_next() {
                if let Err(e) = flatten(done) {
                    set.shutdown().await;
                    return Err(e);
                }
            }
        }
        while let Some(done) = set.join_next().await {
            if let Err(e) = flatten(done) {
                // Every other fetch is stopped and has removed its partial
                // files before the caller keeps what was verified.
                set.shutdown().await;
                return Err(e);
            }
        }
        Ok(())
    }
}

fn flatten(done: Result<Result<(), Error>, tokio::task::JoinError>) -> Result<(), Error> {
    done.map_err(|e| Error::Local(e.to_string()))?
}

/// Fetches one object into `tx`, verifying it as it streams; a content
/// object's payload also goes to `sink`. The CPU work (inflating, hashing,
/// writing) runs right in the task, a chunk at a time: every task on this
/// runtime is a fetch, and handing each chunk to another thread cost more
/// than it saved. A metadata object over [`SMALL_METADATA`] is read only
/// with its share of `large_metadata`. A response without a length
/// (chunked, or HTTP/2 without one) is taken as `ostree pull` takes it, its
/// limits kept as it streams.
async fn fetch_one(
    remote: &Remote,
    tx: &Transaction,
    name: ObjectName,
    limit: u64,
    large_metadata: &Semaphore,
    mut sink: Option<&mut (dyn PayloadSink + Send)>,
) -> Result<(), Error> {
    let path = name.relative_path();
    let url = remote.url(&path);
    // What is wrong with the object names the URL; a local failure (the
    // cache's or the checkout's disk) is reported as it is.
    let bad = |e: repo::Error| match e {
        repo::Error::Io { .. } => Error::Repo(e),
        e => Error::Invalid {
            url: url.clone(),
            reason: crate::error_chain(&e),
        },
    };
    let large = |size: u64| name.kind.is_metadata() && size > SMALL_METADATA;
    // A dirtree takes about three times its size to check; other metadata
    // over the push limits, which must decode to at most one value per 8
    // bytes, up to twice that.
    let weight = if name.kind == ObjectType::DirTree {
        1
    } else {
        2
    };
    let kib = |size: u64| {
        u32::try_from(size.div_ceil(1024).saturating_mul(weight))
            .unwrap_or(u32::MAX)
            .min(LARGE_METADATA_KIB)
    };
    // Without a length, large metadata takes the share of the most it may
    // be, once it proves large.
    let most = limit.min(MAX_METADATA_SIZE);
    // Declared first so that it is released last.
    let mut share: Option<tokio::sync::SemaphorePermit<'_>> = None;
    let mut asked = 0;
    'ask: loop {
        asked += 1;
        if asked > 3 {
            return Err(Error::Invalid {
                url,
                reason: "a larger size at every request; giving up".into(),
            });
        }
        let Some(mut resp) = remote.get(&path).await? else {
            return Err(Error::Http {
                url,
                reason: "not found (the server lacks an object its commit needs)".into(),
            });
        };
        let size = resp.content_length();
        if let Some(size) = size.filter(|&size| size > limit) {
            return Err(Error::Invalid {
                url,
                reason: format!("{size} bytes, more than the {limit} allowed"),
            });
        }
        // The limits of the object's kind first: one too large for them is
        // refused at once, not after waiting for the budget.
        let mut obj = tx.begin_pulled_object(name, size, limit).map_err(bad)?;
        if let Some(size) = size.filter(|&size| large(size))
            && !take_share(large_metadata, kib(size), &mut share)?
        {
            // Not waiting with the response unread, which a server may
            // time out (nginx's send_timeout): asked again once the
            // budget allows.
            drop((resp, obj));
            share = Some(wait_for_share(large_metadata, kib(size)).await?);
            continue;
        }
        let mut received = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|reason| Error::Http {
            url: url.clone(),
            reason,
        })? {
            received += chunk.len() as u64;
            if size.is_none()
                && large(received)
                && !take_share(large_metadata, kib(most), &mut share)?
            {
                drop((resp, obj));
                share = Some(wait_for_share(large_metadata, kib(most)).await?);
                continue 'ask;
            }
            obj.feed_to(
                &chunk,
                sink.as_deref_mut().map(|s| s as &mut dyn PayloadSink),
            )
            .map_err(bad)?;
        }
        return obj.finish().map_err(bad);
    }
}

/// Makes `share` at least `kib` of `budget` if that is free now; false if
/// it is not (then `share` holds nothing).
fn take_share<'b>(
    budget: &'b Semaphore,
    kib: u32,
    share: &mut Option<tokio::sync::SemaphorePermit<'b>>,
) -> Result<bool, Error> {
    if share
        .as_ref()
        .is_some_and(|s| s.num_permits() >= kib as usize)
    {
        return Ok(true);
    }
    drop(share.take());
    match budget.try_acquire_many(kib) {
        Ok(permit) => {
            *share = Some(permit);
            Ok(true)
        }
        Err(TryAcquireError::NoPermits) => Ok(false),
        Err(TryAcquireError::Closed) => Err(Error::Local("the fetch budget was closed".into())),
    }
}

async fn wait_for_share(
    budget: &Semaphore,
    kib: u32,
) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
    budget
        .acquire_many(kib)
        .await
        .map_err(|e| Error::Local(e.to_string()))
}

/// Where pulled objects are kept: `$XDG_CACHE_HOME/depot/<url hash>`.
pub fn default_cache(url: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    let id = hex::encode(&Checksum::of(url.trim_end_matches('/').as_bytes()).as_bytes()[..8]);
    Some(base.join("depot").join(id))
}

/// What to pull.
#[derive(Debug, Clone)]
pub enum Target {
    /// The whole tree, checked out into a directory.
    Checkout(PathBuf),
    /// One file, written to a path (`-` for standard output).
    File {
        /// The path inside the commit.
        path: String,
        /// Where to write it.
        out: PathBuf,
    },
}

/// What a pull did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The commit pulled.
    pub commit: Checksum,
    /// Objects the cache did not have before.
    pub fetched: u64,
    /// The checkout, for a whole-tree pull.
    pub checkout: Option<CheckoutStats>,
}

/// Pulls `name` from `url` through the cache at `cache`.
pub fn pull(
    url: &str,
    name: &RefName,
    cache: &Path,
    target: &Target,
    cacert: Option<&Path>,
    timeout: Duration,
) -> Result<Outcome, Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Local(format!("cannot start the async runtime: {e}")))?;
    let repo = if cache.join("config").exists() {
        Repo::open(cache)?
    } else {
        Repo::init(cache)?
    };
    let remote = Remote::new(url, cacert, timeout)?;
    rt.block_on(async {
        let started = std::time::Instant::now();
        let (commit, commit_size) = remote.resolve(name).await?;
        let mut fetcher = Fetcher {
            remote: remote.clone(),
            tx: Arc::new(repo.begin()?),
            permits: Arc::new(Semaphore::new(PARALLEL_REQUESTS)),
            large_metadata: Arc::new(Semaphore::new(LARGE_METADATA_KIB as usize)),
            max_object_size: u64::MAX,
            fetched: Arc::new(AtomicU64::new(0)),
        };
        let commit_name = ObjectName::new(commit, ObjectType::Commit);
        // As ostree pull does, the cache marks a commit partial until all
        // it needs is there, so that `ostree fsck` of the cache (and depot
        // fsck) skip a commit that a --path pull or a killed pull left.
        // The mark is made once the commit is staged (a failed fetch leaves
        // none) and before anything is published.
        let partial = repo.path().join(format!("state/{commit}.commitpartial"));
        let complete = repo.has_object(&commit_name) && !partial.exists();
        // A size of 0 in the summary means unknown, as to ostree.
        let commit_limit = commit_size
            .filter(|&size| size != 0)
            .unwrap_or(MAX_METADATA_SIZE);
        fetcher
            .fetch_all(vec![(commit_name, Some(commit_limit))])
            .await?;
        if !complete {
            std::fs::File::create(&partial)
                .map_err(|e| Error::Local(format!("create {}: {e}", partial.display())))?;
        }
        let c = fetcher.tx.load_commit(&commit)?;
        if !c.may_be_under(name.as_str()) {
            let bound =
                crate::printable(&c.ref_bindings().unwrap_or_default().join(", ")).into_owned();
            return Err(Error::Invalid {
                url: remote.url(&commit_name.relative_path()),
                reason: format!(
                    "ref {name} points to commit {commit}, which is bound to other refs ({bound}) \
                     by its ostree.ref-binding: the server's refs were moved or swapped; \
                     nothing was checked out",
                    bound = if bound.is_empty() { "none" } else { &bound },
                ),
            });
        }
        let checkout = match target {
            Target::Checkout(dest) => pull_checkout(&mut fetcher, &repo, commit, &c, dest).await,
            Target::File { path, .. } => fetch_path(&mut fetcher, &repo, &c, path)
                .await
                .map(|()| None),
        };
        // What was verified stays in the cache even when the pull failed, so
        // that the next one resumes.
        let fetched = fetcher.fetched.load(Ordering::Relaxed);
        let published = publish(fetcher);
        let checkout = checkout?;
        published?;
        if checkout.is_some() && !complete {
            // Another pull of the same commit may have removed it first.
            match std::fs::remove_file(&partial) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Local(format!("remove {}: {e}", partial.display())));
                }
                _ => {}
            }
        }
        if let Target::File { path, out } = target {
            let mut w = read::Output::create(out)?;
            let name = w.path().to_path_buf();
            read::cat(&repo, &commit, path, &mut w, &name)?;
            w.finish()?;
        }
        tracing::info!("pulled in {:.2?}", started.elapsed());
        Ok(Outcome {
            commit,
            fetched,
            checkout,
        })
    })
}

/// Publishes what the fetcher staged, keeping the cache's files.
fn publish(fetcher: Fetcher) -> Result<(), Error> {
    let tx = Arc::try_unwrap(fetcher.tx)
        .map_err(|_| Error::Local("the cache transaction is still in use".into()))?;
    tx.publish_unsynced()?;
    Ok(())
}

/// Starts a new cache transaction after publishing the current one, so an
/// interrupted pull keeps what it has.
fn checkpoint(fetcher: &mut Fetcher, repo: &Repo) -> Result<(), Error> {
    let next = Arc::new(repo.begin()?);
    let old = std::mem::replace(&mut fetcher.tx, next);
    let old = Arc::try_unwrap(old)
        .map_err(|_| Error::Local("the cache transaction is still in use".into()))?;
    let t = std::time::Instant::now();
    old.publish_unsynced()?;
    tracing::debug!("checkpoint in {:.2?}", t.elapsed());
    Ok(())
}

/// Fetches a whole tree and checks it out into `dest`: dirtrees and
/// dirmetas level by level, then the directories are made, then the files
/// the cache has are written from it and the others fetched straight into
/// place, [`PUBLISH_EVERY`] at a time.
///
/// A `dest` that does not exist is built as a hidden, locked sibling and
/// renamed into place once complete, so it appears whole or not at all. An
/// existing empty `dest` (perhaps a mount point, or a symlink to a
/// directory) is filled in place and emptied again after a failure.
async fn pull_checkout(
    fetcher: &mut Fetcher,
    repo: &Repo,
    commit_id: Checksum,
    commit: &Commit,
    dest: &Path,
) -> Result<Option<CheckoutStats>, Error> {
    // Nesting past the limit is the server's doing: the error names the
    // commit, wherever it is found (a subtree shared at two depths is
    // fetched once, at the shallower, and found too deep only when the
    // checkout is planned).
    let commit_url = fetcher
        .remote
        .url(&ObjectName::new(commit_id, ObjectType::Commit).relative_path());
    let too_deep = |path: &str| Error::Invalid {
        url: commit_url.clone(),
        reason: format!(
            "in the tree of commit {commit_id}, {path} is nested deeper than {} directories, \
             which depot does not check out; nothing was checked out",
            read::MAX_TREE_DEPTH
        ),
    };
    let building = checkout_target(dest)?;
    let (root_tree, root_meta) = (commit.root_tree, commit.root_meta);
    let mut level = vec![(root_tree, root_meta)];
    let mut seen = HashSet::new();
    // The root is at depth 0, as in `read::Checkout`.
    let mut depth = 0usize;
    while !level.is_empty() {
        if depth > read::MAX_TREE_DEPTH {
            return Err(too_deep(&format!("a directory {depth} levels down")));
        }
        let names: Vec<(ObjectName, Option<u64>)> = level
            .iter()
            .flat_map(|(t, m)| {
                [
                    ObjectName::new(*t, ObjectType::DirTree),
                    ObjectName::new(*m, ObjectType::DirMeta),
                ]
            })
            .map(|n| (n, Some(MAX_METADATA_SIZE)))
            .collect();
        fetcher.fetch_all(names).await?;
        let mut next = Vec::new();
        for (t, _) in &level {
            if seen.insert(*t) {
                let tree = load_tree(fetcher, t)?;
                next.extend(tree.dirs().iter().map(|d| (d.tree, d.meta)));
            }
        }
        level = next;
        depth += 1;
    }
    checkpoint(fetcher, repo)?;
    tracing::debug!("directories fetched");
    // An existing DEST keeps its mode and xattrs, as `ostree checkout
    // --union` leaves them: the server's root dirmeta is for a directory
    // the pull makes.
    let (dir, made_root) = match &building {
        Building::Beside(locked, _, old_mode) => (locked.path(), old_mode.is_none()),
        Building::InPlace => (dest, false),
    };
    let filled = match fill_checkout(fetcher, repo, root_tree, root_meta, dir, made_root).await {
        Err(Error::Read(read::Error::TooDeep { path })) => Err(too_deep(&path)),
        Err(Error::Read(
            e @ (read::Error::TooManyEntries { .. } | read::Error::PathsTooLong { .. }),
        )) => Err(Error::Invalid {
            url: commit_url.clone(),
            reason: format!("commit {commit_id}: {e}"),
        }),
        filled => filled,
    };
    match filled {
        Ok(stats) => {
            if let Building::Beside(locked, target, old_mode) = building {
                if let Some(mode) = old_mode {
                    std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(mode))
                        .map_err(|e| {
                            Error::Local(format!(
                                "give the checkout the mode of {}: {e}",
                                dest.display()
                            ))
                        })?;
                }
                locked.rename_to(&target).map_err(|e| {
                    Error::Local(format!(
                        "move the finished checkout to {}: {e}",
                        dest.display()
                    ))
                })?;
            }
            Ok(Some(stats))
        }
        Err(e) => {
            if let Building::InPlace = building {
                empty_again(dest);
            }
            Err(e)
        }
    }
}

/// Where a checkout is built.
enum Building {
    /// In a hidden sibling of the destination, removed unless renamed to
    /// it (the path given: replacing it when it is an empty directory,
    /// whose permission bits, given last, the sibling takes).
    Beside(repo::LockedDir, PathBuf, Option<u32>),
    /// In the destination, an empty directory that is a mount point, a
    /// symlink, `.` or `..`, or whose parent cannot be written: where a
    /// killed pull leaves files.
    InPlace,
}

/// Checks that `dest` does not exist or is an empty directory and decides
/// where the checkout is built. Hidden siblings that killed pulls into the
/// same destination left are removed first.
fn checkout_target(dest: &Path) -> Result<Building, Error> {
    use std::os::unix::fs::MetadataExt;
    let state = crate::destination(dest)
        .map_err(|e| Error::Local(format!("read {}: {e}", dest.display())))?;
    if let crate::Destination::NotEmpty = state {
        return Err(Error::Read(read::Error::DestinationExists {
            path: dest.to_path_buf(),
        }));
    }
    let parent = crate::parent_dir(dest);
    if !parent.is_dir() {
        return Err(Error::Local(format!(
            "{} is not a directory; create it first",
            parent.display()
        )));
    }
    let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let name = match (dest.file_name(), &state) {
        (Some(name), _) => name,
        // `.` or `..`: an existing directory, whose name cannot be replaced.
        (None, crate::Destination::Empty) => return Ok(Building::InPlace),
        (None, _) => {
            return Err(Error::Local(format!(
                "{} names no directory",
                dest.display()
            )));
        }
    };
    // The name as rename(2) sees it: `link/` or `out/.` would resolve
    // through the link or fail, where `link` and `out` are what is meant.
    let target = parent.join(name);
    let is_symlink = std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink());
    if is_symlink && !target.exists() {
        return Err(Error::Local(format!(
            "{} is a symlink to nothing; create the directory it points to, or remove the link",
            dest.display()
        )));
    }
    let prefix = format!(".{}.depot-pull-", name.to_string_lossy());
    match state {
        // A mount point, a symlink (rename would replace the link), or the
        // working directory under another name (it would be replaced under
        // the caller's feet).
        crate::Destination::Empty
            if is_symlink
                || id(&target).map(|(dev, _)| dev) != id(parent).map(|(dev, _)| dev)
                || id(&target) == id(Path::new(".")) =>
        {
            Ok(Building::InPlace)
        }
        crate::Destination::Empty => {
            let mode = std::fs::metadata(&target)
                .map_err(|e| Error::Local(format!("read {}: {e}", dest.display())))?
                .mode()
                & 0o7777;
            repo::clean_abandoned(parent, &prefix);
            Ok(
                repo::LockedDir::create(parent, &prefix, 0o700).map_or(Building::InPlace, |dir| {
                    Building::Beside(dir, target, Some(mode))
                }),
            )
        }
        _ => {
            repo::clean_abandoned(parent, &prefix);
            let dir = repo::LockedDir::create(parent, &prefix, 0o700)?;
            Ok(Building::Beside(dir, target, None))
        }
    }
}

/// Removes what a failed pull wrote into a destination that was empty.
fn empty_again(dest: &Path) {
    let Ok(entries) = std::fs::read_dir(dest) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            repo::remove_tree(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!("could not remove {}: {e}", path.display());
        }
    }
}

/// Checks out the tree into `dir`, which exists; `made_root` when the pull
/// made it (then it gets the tree's mode and xattrs; else it keeps its own).
async fn fill_checkout(
    fetcher: &mut Fetcher,
    repo: &Repo,
    root_tree: Checksum,
    root_meta: Checksum,
    dir: &Path,
    made_root: bool,
) -> Result<CheckoutStats, Error> {
    let mut checkout =
        Checkout::prepare(repo, root_tree, root_meta, dir, CheckoutOptions::default())?;
    if made_root {
        checkout.made_root();
    }
    // Indices, not copies: the paths can take hundreds of megabytes.
    let (cached, mut missing): (Vec<usize>, Vec<usize>) = (0..checkout.files().len())
        .partition(|&i| repo.has_object(&ObjectName::new(checkout.files()[i].0, ObjectType::File)));
    // A cached object that fails verification is dropped and fetched again,
    // so a damaged cache mends itself instead of failing every pull.
    let damaged = std::sync::Mutex::new(Vec::new());
    cached.par_iter().try_for_each(|&i| {
        let (c, paths) = &checkout.files()[i];
        match checkout.write_from_repo(repo, c, paths) {
            Err(read::Error::Repo(e @ repo::Error::CorruptObject { name, .. })) => {
                drop_damaged(repo, &name, &e);
                damaged
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(i);
                Ok(())
            }
            other => other,
        }
    })?;
    missing.extend(
        damaged
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    tracing::debug!("directories made, {} files from the cache", cached.len());
    let checkout = Arc::new(checkout);
    for batch in missing.chunks(PUBLISH_EVERY) {
        fetcher.fetch_into(batch, &checkout).await?;
        checkpoint(fetcher, repo)?;
    }
    tracing::debug!("{} files fetched", missing.len());
    let checkout = Arc::try_unwrap(checkout)
        .map_err(|_| Error::Local("the checkout is still in use".into()))?;
    Ok(checkout.finish()?)
}

fn load_tree(fetcher: &Fetcher, tree: &Checksum) -> Result<DirTree, Error> {
    let name = ObjectName::new(*tree, ObjectType::DirTree);
    let data = fetcher.tx.read_metadata(&name)?;
    DirTree::parse(&data).map_err(|e| {
        Error::Repo(repo::Error::CorruptObject {
            name,
            reason: crate::error_chain(&e),
        })
    })
}

/// Removes a damaged object `name` from the cache `cache`, so that it is
/// fetched again: a damaged cache mends itself instead of failing every pull.
fn drop_damaged(cache: &Repo, name: &ObjectName, damage: &repo::Error) {
    let path = cache.object_path(name);
    tracing::warn!(
        "{} in the cache: {}; fetching it again",
        path.display(),
        crate::error_chain(damage)
    );
    let _ = std::fs::remove_file(path);
}

/// Fetches only what lies on `path`: the dirtrees down to it and the file.
async fn fetch_path(
    fetcher: &mut Fetcher,
    repo: &Repo,
    commit: &crate::object::Commit,
    path: &str,
) -> Result<(), Error> {
    let mut tree = commit.root_tree;
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        fetcher
            .fetch_all(vec![(
                ObjectName::new(tree, ObjectType::DirTree),
                Some(MAX_METADATA_SIZE),
            )])
            .await?;
        let t = load_tree(fetcher, &tree)?;
        if let Some(f) = t.file(part).filter(|_| i + 1 == parts.len()) {
            let name = ObjectName::new(*f, ObjectType::File);
            // As in a checkout, a damaged cached object is fetched again.
            if repo.has_object(&name)
                && let Err(e @ repo::Error::CorruptObject { .. }) = repo.verify_content(f)
            {
                drop_damaged(repo, &name, &e);
            }
            return fetcher.fetch_all(vec![(name, None)]).await;
        }
        let Some(d) = t.dir(part) else {
            return Err(Error::Local(format!(
                "{path} is not in commit {}",
                Checksum::of(&commit.to_bytes())
            )));
        };
        tree = d.tree;
    }
    Err(Error::Local(format!(
        "{path} is a directory; pull it whole, or name a file"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings() {
        let html = r#"<a href="../">..</a><a href="main">main</a><a href="proj/">proj/</a>
            <a href="/abs">x</a><a href="http://evil/x">y</a><a href="?C=N;O=D">sort</a>"#;
        assert_eq!(listing_hrefs(html).collect::<Vec<_>>(), ["main", "proj/"]);
    }
}
