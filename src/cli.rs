//! The `depot` command line: argument structs and dispatch, kept in the
//! library so the binary stays a few lines and the commands can be tested.
//!
//! Exit codes: 0 success; 1 failure (including `fsck` finding problems);
//! 2 bad usage.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::checksum::Checksum;
use crate::commit::{self, Parent};
use crate::push;
use crate::read;
use crate::refname::RefName;
use crate::repo::Repo;
use crate::timefmt;

/// depot: an artifact repository for CI, stored as an OSTree archive repository.
#[derive(Debug, Parser)]
#[command(name = "depot", version, about, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty archive repository (as `ostree init --mode=archive`).
    Init {
        /// Where to create it.
        repo: PathBuf,
    },
    /// Commit a directory and move a ref to the new commit.
    Commit(CommitArgs),
    /// Push a directory (as a new commit) or a local repository's commits to a server.
    Push(PushArgs),
    /// List the refs: ref, commit, time, subject (of --repo, or of a URL).
    Ls {
        /// A local repository (or set DEPOT_REPO).
        #[arg(long, env = "DEPOT_REPO", conflicts_with = "url")]
        repo: Option<PathBuf>,
        /// A repository served over http(s), or a local one as file:///PATH.
        url: Option<String>,
        /// Add this certificate (PEM) to the trusted roots for https.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Give up on a server that sends nothing for this long (0: never).
        #[arg(long, value_name = "SECONDS", default_value_t = crate::pull::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a ref from a repository served over http(s) (or read through a
    /// file:// URL), verified, and check it out (or write one file of it).
    Pull {
        /// The repository's URL: http://, https://, or file:///PATH.
        url: String,
        /// The ref.
        #[arg(value_name = "REF")]
        ref_name: RefName,
        /// Where to check the tree out (must not exist or be empty).
        dest: Option<PathBuf>,
        /// Fetch only this file of the commit...
        #[arg(long, requires = "output", conflicts_with = "dest")]
        path: Option<String>,
        /// ...and write it here (`-`: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Keep fetched objects here (an archive repository; reused, so an
        /// interrupted pull resumes). Default: $XDG_CACHE_HOME/depot/URL-HASH (16 hex digits).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Add this certificate (PEM) to the trusted roots for https.
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Give up on a server that sends nothing for this long (0: never).
        #[arg(long, value_name = "SECONDS", default_value_t = crate::pull::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the history of a ref or commit, following parents.
    Log {
        /// The repository.
        #[command(flatten)]
        repo: RepoArg,
        /// A ref or a commit checksum.
        rev: String,
    },
    /// Write one file of a commit to standard output (or -o FILE).
    Cat {
        /// The repository.
        #[command(flatten)]
        repo: RepoArg,
        /// A ref or a commit checksum.
        rev: String,
        /// The path inside the commit, e.g. /bin/tool.
        path: String,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check a commit out into a new directory.
    Checkout {
        /// The repository.
        #[command(flatten)]
        repo: RepoArg,
        /// A ref or a commit checksum.
        rev: String,
        /// The destination, which must not exist or be empty.
        dest: PathBuf,
        /// Check out only this directory of the commit.
        #[arg(long, default_value = "/")]
        subpath: String,
        /// Also restore setuid/setgid bits and every extended attribute
        /// (security.*, trusted.*): only for content you trust.
        #[arg(long)]
        full_metadata: bool,
    },
    /// Verify every object and the closure of every commit and ref.
    Fsck {
        /// The repository.
        #[command(flatten)]
        repo: RepoArg,
        /// Print JSON instead of one line per problem.
        #[arg(long)]
        json: bool,
    },
}

/// The repository to work on.
#[derive(Debug, Args)]
pub struct RepoArg {
    /// The repository (or set DEPOT_REPO).
    #[arg(long, env = "DEPOT_REPO")]
    pub repo: PathBuf,
}

impl RepoArg {
    fn open(&self) -> Result<Repo> {
        Ok(Repo::open(&self.repo)?)
    }
}

/// How a new commit is described: shared by `commit` and `push`.
#[derive(Debug, Args)]
pub struct CommitFlags {
    /// Subject line.
    #[arg(short, long, default_value = "")]
    subject: String,
    /// Body.
    #[arg(long, default_value = "")]
    body: String,
    /// Commit time: seconds (@1577836800) or 2020-01-01T00:00:00Z. Default: SOURCE_DATE_EPOCH or now.
    #[arg(long, value_parser = timefmt::parse)]
    timestamp: Option<u64>,
    /// Add KEY=VALUE string metadata (repeatable, kept in order).
    #[arg(long = "add-metadata-string", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
    /// Record this owner for every file and directory.
    #[arg(long)]
    owner_uid: Option<u32>,
    /// Record this group for every file and directory.
    #[arg(long)]
    owner_gid: Option<u32>,
    /// Do not record extended attributes.
    #[arg(long)]
    no_xattrs: bool,
    /// Record the ref binding `ostree.ref-binding` (the default, as ostree does).
    #[arg(long, overrides_with = "no_bind")]
    bind: bool,
    /// Do not record a ref binding (as `ostree commit --no-bindings`).
    #[arg(long = "no-bind", alias = "no-bindings")]
    no_bind: bool,
}

impl CommitFlags {
    fn options(self, ref_name: RefName, parent: Parent) -> commit::Options {
        commit::Options {
            ref_name: Some(ref_name),
            subject: self.subject,
            body: self.body,
            timestamp: self.timestamp,
            parent,
            metadata: self.metadata,
            owner_uid: self.owner_uid,
            owner_gid: self.owner_gid,
            no_xattrs: self.no_xattrs,
            bind: !self.no_bind,
        }
    }
}

/// `depot commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The repository.
    #[command(flatten)]
    repo: RepoArg,
    /// The ref to move to the new commit.
    #[arg(long = "ref", short = 'b')]
    ref_name: RefName,
    /// The parent: auto (the ref's current commit), none, or a checksum.
    #[arg(long, default_value = "auto", value_parser = parse_parent)]
    parent: Parent,
    /// How to describe the commit.
    #[command(flatten)]
    flags: CommitFlags,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The directory to commit.
    dir: PathBuf,
}

/// `depot push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Where: ssh://USER@HOST:PORT/PATH (USER, PORT and PATH optional), or a local repository path.
    #[arg(long, value_parser = |s: &str| s.parse::<push::Destination>())]
    to: push::Destination,
    /// The ref to move to a new commit of DIR (its parent: the ref's commit on the server).
    #[arg(long = "ref", short = 'b', conflicts_with = "from_repo")]
    ref_name: Option<RefName>,
    /// Push existing commits of this local archive repository: the REFs given.
    #[arg(long)]
    from_repo: Option<PathBuf>,
    /// How to describe the new commit (with DIR).
    #[command(flatten)]
    flags: CommitFlags,
    /// A command to use instead of `ssh` (run by sh -c; arguments appended).
    #[arg(long, env = "DEPOT_SSH")]
    ssh_command: Option<String>,
    /// Print the result as JSON on standard output.
    #[arg(long)]
    json: bool,
    /// Do not show progress, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// DIR to commit and push, or with --from-repo the REFs to push.
    #[arg(required = true, value_name = "DIR|REF")]
    args: Vec<String>,
}

fn parse_parent(s: &str) -> Result<Parent, String> {
    match s {
        "auto" => Ok(Parent::Auto),
        "none" => Ok(Parent::None),
        _ => s
            .parse::<Checksum>()
            .map(Parent::Commit)
            .map_err(|e| format!("{e}; or use auto or none")),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "expected KEY=VALUE with a non-empty KEY, got {s:?}"
        )),
    }
}

/// Sets up logging to stderr. `DEPOT_LOG` takes a tracing filter (e.g.
/// `debug`; default `warn`). `depot-receive` may log to syslog instead: see
/// [`crate::logging`].
pub fn init_tracing() {
    crate::logging::init_stderr();
}

/// Runs a parsed command line. Returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Init { repo } => {
            Repo::init(&repo)?;
            writeln!(
                stdout,
                "initialised an archive repository at {}",
                repo.display()
            )?;
        }
        Command::Commit(args) => {
            let repo = args.repo.open()?;
            let opts = args.flags.options(args.ref_name, args.parent);
            let outcome = commit::commit_dir(&repo, &args.dir, &opts)
                .with_context(|| format!("committing {}", args.dir.display()))?;
            if args.json {
                serde_json::to_writer_pretty(&mut stdout, &outcome)?;
                writeln!(stdout)?;
            } else {
                writeln!(stdout, "{}", outcome.commit)?;
            }
        }
        Command::Push(args) => return run_push(args, &mut stdout),
        Command::Ls {
            repo,
            url,
            cacert,
            timeout,
            json,
        } => {
            let mut rows = Vec::new();
            if let Some(url) = url {
                let remote = crate::pull::Remote::new(
                    &url,
                    cacert.as_deref(),
                    Duration::from_secs(timeout),
                )?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                for r in rt.block_on(remote.refs())? {
                    rows.push(serde_json::json!({
                        "ref": r.name,
                        "commit": r.commit,
                        "timestamp": r.timestamp,
                        "time": r.timestamp.map(timefmt::format),
                        "version": r.version,
                        "commit_size": r.commit_size,
                    }));
                    if !json {
                        let time = r.timestamp.map(timefmt::format).unwrap_or_default();
                        writeln!(
                            stdout,
                            "{}\t{}\t{time}\t{}",
                            r.name,
                            r.commit,
                            crate::printable(&r.version.unwrap_or_default())
                        )?;
                    }
                }
            } else {
                let repo = Repo::open(&repo.context("give --repo REPO or a URL")?)?;
                for (name, c) in repo.list_refs()? {
                    let commit = repo
                        .load_commit(&c)
                        .with_context(|| format!("ref {name}"))?;
                    rows.push(serde_json::json!({
                        "ref": name,
                        "commit": c,
                        "timestamp": commit.timestamp,
                        "time": timefmt::format(commit.timestamp),
                        "subject": commit.subject,
                        "version": commit.version(),
                    }));
                    if !json {
                        writeln!(
                            stdout,
                            "{name}\t{c}\t{}\t{}",
                            timefmt::format(commit.timestamp),
                            crate::printable(&commit.subject)
                        )?;
                    }
                }
            }
            if json {
                serde_json::to_writer_pretty(&mut stdout, &rows)?;
                writeln!(stdout)?;
            }
        }
        Command::Pull {
            url,
            ref_name,
            dest,
            path,
            output,
            cache,
            cacert,
            timeout,
            json,
        } => {
            let target = match (dest, path, output) {
                (Some(dest), None, _) => crate::pull::Target::Checkout(dest),
                (None, Some(path), Some(out)) => crate::pull::Target::File { path, out },
                _ => anyhow::bail!(
                    "give DEST to check the tree out, or --path FILE -o OUT for one file"
                ),
            };
            let cache = cache
                .or_else(|| crate::pull::default_cache(&url))
                .context("no --cache given and neither XDG_CACHE_HOME nor HOME is set")?;
            let outcome = crate::pull::pull(
                &url,
                &ref_name,
                &cache,
                &target,
                cacert.as_deref(),
                Duration::from_secs(timeout),
            )
            .with_context(|| format!("pulling {ref_name} from {url}"))?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &outcome)?;
                writeln!(stdout)?;
            } else if let crate::pull::Target::Checkout(dest) = &target {
                eprintln!(
                    "{ref_name} ({}) checked out into {}; {} objects fetched",
                    outcome.commit,
                    dest.display(),
                    outcome.fetched
                );
            }
        }
        Command::Log { repo, rev } => {
            let repo = repo.open()?;
            let start = repo.resolve(&rev)?;
            let (entries, truncated) = read::log(&repo, &start)?;
            for e in entries {
                writeln!(stdout, "commit {}", e.checksum)?;
                if let Some(p) = e.commit.parent {
                    writeln!(stdout, "Parent:  {p}")?;
                }
                writeln!(stdout, "Date:    {}", timefmt::format(e.commit.timestamp))?;
                if let Some(v) = e.commit.version() {
                    writeln!(stdout, "Version: {}", crate::printable(v))?;
                }
                writeln!(stdout, "\n    {}", crate::printable(&e.commit.subject))?;
                if !e.commit.body.is_empty() {
                    writeln!(stdout)?;
                    for line in e.commit.body.lines() {
                        writeln!(stdout, "    {}", crate::printable(line))?;
                    }
                }
                writeln!(stdout)?;
            }
            if truncated {
                writeln!(stdout, "(older history is not in this repository)")?;
            }
        }
        Command::Cat {
            repo,
            rev,
            path,
            output,
        } => {
            let repo = repo.open()?;
            let c = repo.resolve(&rev)?;
            match output {
                Some(o) => {
                    let mut out = read::Output::create(&o)?;
                    let name = out.path().to_path_buf();
                    read::cat(&repo, &c, &path, &mut out, &name)?;
                    out.finish()?;
                }
                None => {
                    read::cat(&repo, &c, &path, &mut stdout, Path::new("standard output"))?;
                }
            }
        }
        Command::Checkout {
            repo,
            rev,
            dest,
            subpath,
            full_metadata,
        } => {
            let repo = repo.open()?;
            let c = repo.resolve(&rev)?;
            let opts = read::CheckoutOptions { full_metadata };
            let stats = read::checkout_subpath(&repo, &c, &subpath, &dest, opts)?;
            if stats.xattrs_skipped > 0 {
                tracing::warn!(
                    "{} extended attributes could not be set (no permission or no support in {})",
                    stats.xattrs_skipped,
                    dest.display()
                );
            }
        }
        Command::Fsck { repo, json } => {
            let repo = repo.open()?;
            let report = read::fsck(&repo)?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &report)?;
                writeln!(stdout)?;
            } else {
                for p in &report.problems {
                    writeln!(stdout, "{p}")?;
                }
            }
            eprintln!(
                "checked {} objects, {} commits, {} refs: {} problems",
                report.objects,
                report.commits,
                report.refs,
                report.problems.len()
            );
            if !report.problems.is_empty() {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Parses arguments and runs; the whole of `main`.
pub fn main_from_args() -> i32 {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return 0;
            }
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn run_push(args: PushArgs, stdout: &mut impl Write) -> Result<i32> {
    let source = match args.from_repo {
        Some(repo) => {
            let refs = args
                .args
                .iter()
                .map(|r| {
                    r.parse::<RefName>()
                        .map_err(|e| anyhow::anyhow!("ref {r:?}: {e}"))
                })
                .collect::<Result<Vec<_>>>()?;
            push::Source::Repo { repo, refs }
        }
        None => {
            let [dir] = args.args.as_slice() else {
                anyhow::bail!("push one directory (or use --from-repo REPO REF...)");
            };
            let ref_name = args
                .ref_name
                .context("pushing a directory needs --ref REF")?;
            push::Source::Dir {
                dir: PathBuf::from(dir),
                options: args.flags.options(ref_name, Parent::Auto),
            }
        }
    };
    let opts = push::Options {
        dest: args.to,
        ssh_command: args.ssh_command,
        source,
        progress: !args.no_progress,
    };
    match push::push(&opts) {
        Ok(outcome) => {
            if args.json {
                let mut v = serde_json::to_value(&outcome)?;
                v["ok"] = serde_json::Value::Bool(true);
                serde_json::to_writer_pretty(&mut *stdout, &v)?;
                writeln!(stdout)?;
            } else {
                for r in &outcome.refs {
                    let old = r.old.map_or_else(|| "(new)".to_string(), |c| c.to_string());
                    eprintln!("{}: {old} -> {}", r.name, r.new);
                }
                eprintln!(
                    "sent {} objects, {:.1} MiB, in {:.1} s",
                    outcome.objects_sent,
                    outcome.bytes_sent as f64 / 1_048_576.0,
                    outcome.duration_ms as f64 / 1000.0
                );
            }
            Ok(0)
        }
        Err(e) => {
            if args.json {
                let v = serde_json::json!({"ok": false, "code": e.code(), "message": crate::error_chain(&e)});
                serde_json::to_writer_pretty(&mut *stdout, &v)?;
                writeln!(stdout)?;
            }
            eprintln!("error: {}", crate::error_chain(&e));
            Ok(e.exit_code())
        }
    }
}

/// depot-receive: the server side of `depot push`, run by sshd as a forced
/// command. Its policy comes from these arguments only; standard output
/// carries the protocol. Exit codes: 0 pushed; 1 refused or failed (the
/// client was told why); 2 bad arguments.
#[derive(Debug, Parser)]
#[command(name = "depot-receive", version, max_term_width = 100)]
pub struct ReceiveCli {
    /// The repository to receive into.
    #[arg(long)]
    pub repo: PathBuf,
    /// A ref pattern this key may write (repeatable): `*` within one path
    /// component, `**` across components (proj/** allows proj/a/b). None: nothing.
    #[arg(long = "allow-ref", value_name = "PATTERN")]
    pub allow_refs: Vec<crate::receive::RefPattern>,
    /// Who this key is, for the audit log.
    #[arg(long, default_value = "unnamed")]
    pub key_id: String,
    /// Largest object accepted, stored or uncompressed (e.g. 2G, 512M).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub max_object_size: u64,
    /// Most bytes of objects accepted in one push.
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    pub max_push_size: u64,
    /// Most new objects accepted in one push. depot-receive keeps about 45
    /// bytes for each: the default keeps it under 64 MiB.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_objects: u64,
    /// Refuse pushes when less than this is free on the repository's disk.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub min_free_space: u64,
    /// Let a ref move to a commit that does not descend from its current commit.
    #[arg(long)]
    pub allow_non_fast_forward: bool,
    /// Give up on a client that sends nothing for this many seconds (it
    /// keeps a process and its staged objects). A client sends its ref
    /// update only once it has hashed its tree: raise this for trees that
    /// take longer.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub idle_timeout: u64,
    /// Private state (audit log, refs-changed stamp); never inside the
    /// repository. Default: $XDG_STATE_HOME/depot or ~/.local/state/depot.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where logs go. Under sshd, stderr is the pushing client's, so the
    /// server's admin sees nothing; syslog sends each line (facility daemon)
    /// to --syslog-socket, one line per push by default (DEPOT_LOG takes a
    /// tracing filter, e.g. info). If the socket cannot be reached, logs go to
    /// stderr with one warning and the push goes on.
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = crate::logging::LogTo::Stderr)]
    pub log_to: crate::logging::LogTo,
    /// The syslog socket for --log-to syslog. On systemd machines journald
    /// owns /dev/log, so the lines reach the journal (journalctl -t
    /// depot-receive) as well as any syslog daemon.
    #[arg(long, value_name = "PATH", default_value = crate::logging::DEFAULT_SYSLOG_SOCKET)]
    pub syslog_socket: PathBuf,
}

/// Parses `123`, `4K`, `512M`, `2G`, `1T` (powers of 1024; `KiB`, `MB`... also read).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn default_state_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("depot"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/depot"))
}

impl ReceiveCli {
    /// Turns the arguments into a policy, refusing a state directory inside the repository.
    pub fn policy(self) -> Result<crate::receive::Policy> {
        let state_dir = self
            .state_dir
            .or_else(default_state_dir)
            .context("no --state-dir given and neither XDG_STATE_HOME nor HOME is set")?;
        let repo_abs = std::path::absolute(&self.repo)?;
        let state_abs = std::path::absolute(&state_dir)?;
        let canon = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        if canon(&state_abs).starts_with(canon(&repo_abs)) {
            anyhow::bail!(
                "--state-dir {} is inside the repository {}, which a web server publishes; put it elsewhere",
                state_dir.display(),
                self.repo.display()
            );
        }
        Ok(crate::receive::Policy {
            repo: self.repo,
            allow_refs: self.allow_refs,
            key_id: self.key_id,
            max_object_size: self.max_object_size,
            max_push_size: self.max_push_size,
            max_objects: self.max_objects,
            min_free_space: self.min_free_space,
            allow_non_fast_forward: self.allow_non_fast_forward,
            state_dir,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
        })
    }
}

/// Splits a command line the way a POSIX shell would for plain words and
/// single quotes; anything a shell would interpret otherwise is refused.
fn split_command(cmd: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => w.push(ch),
                        None => return Err("unclosed quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(ch) => word.get_or_insert_with(String::new).push(ch),
                None => return Err("trailing backslash".into()),
            },
            c if c.is_ascii_alphanumeric() || "-_./:=@+,%~".contains(c) => {
                word.get_or_insert_with(String::new).push(c);
            }
            c => return Err(format!("{c:?} is not allowed")),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Checks what the client asked sshd to run (`SSH_ORIGINAL_COMMAND`): it may
/// only be `depot-receive [--repo PATH]`, and PATH must name the repository
/// this key is pinned to. It never changes the policy.
pub fn check_original_command(cmd: &str, repo: &std::path::Path) -> Result<(), String> {
    let words = split_command(cmd)
        .map_err(|e| format!("cannot read the requested command {cmd:?}: {e}"))?;
    let mut it = words.iter();
    match it.next() {
        Some(w) if w == "depot-receive" || w.ends_with("/depot-receive") => {}
        _ => {
            return Err(format!(
                "this key may only push with depot (it runs depot-receive), not {cmd:?}"
            ));
        }
    }
    let rest: Vec<&String> = it.collect();
    match rest.as_slice() {
        [] => Ok(()),
        [flag, path] if flag.as_str() == "--repo" => {
            let asked = std::path::Path::new(path.as_str());
            // A bare name (`ssh://host/repo`) may name the repository by its
            // last component; a longer path must be the repository itself.
            let bare_name = asked.components().count() == 1
                && matches!(
                    asked.components().next(),
                    Some(std::path::Component::Normal(_))
                );
            let same = asked == repo
                || (bare_name && asked.file_name() == repo.file_name())
                || asked
                    .canonicalize()
                    .ok()
                    .zip(repo.canonicalize().ok())
                    .is_some_and(|(a, b)| a == b);
            if same {
                Ok(())
            } else {
                Err(format!(
                    "this key pushes only to {}, not {path}",
                    repo.display()
                ))
            }
        }
        _ => Err(format!(
            "depot-receive accepts no client arguments but --repo PATH; got {cmd:?}"
        )),
    }
}

/// The whole of `depot-receive`'s `main`.
pub fn receive_main() -> i32 {
    let args = ReceiveCli::parse();
    crate::logging::init(args.log_to, "depot-receive", &args.syslog_socket);
    let policy = match args.policy() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e:#}");
            send_early_error(
                crate::protocol::ErrorCode::Internal,
                "the server is misconfigured; its admin can see why in its logs",
            );
            return 2;
        }
    };
    // Present but not UTF-8 is refused too: it cannot be `depot-receive`.
    if let Some(cmd) = std::env::var_os("SSH_ORIGINAL_COMMAND")
        && let Err(m) = cmd
            .to_str()
            .ok_or_else(|| {
                format!(
                    "this key may only push with depot (it runs depot-receive), not {:?}",
                    cmd.to_string_lossy()
                )
            })
            .and_then(|cmd| check_original_command(cmd, &policy.repo))
    {
        tracing::warn!(key = %policy.key_id, "refused command: {m}");
        crate::receive::audit_refused_command(&policy, &m);
        send_early_error(crate::protocol::ErrorCode::Forbidden, &m);
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(crate::receive::serve(
        &policy,
        tokio::io::stdin(),
        tokio::io::stdout(),
    )) {
        // The outcome was logged with the audit record (target depot::audit).
        Ok(_) => 0,
        Err(_) => 1,
    }
}

/// Writes one error frame to standard output, for refusals before a session starts.
fn send_early_error(code: crate::protocol::ErrorCode, message: &str) {
    let mut buf = Vec::new();
    crate::protocol::frame::encode_message(
        &crate::protocol::Message::Error {
            code,
            message: message.to_string(),
        }
        .to_json(),
        &mut buf,
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&buf).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_others_is_printed_without_control_characters() {
        assert_eq!(
            crate::printable("release 1.2 \u{e9}t\u{e9}"),
            "release 1.2 \u{e9}t\u{e9}"
        );
        assert_eq!(
            crate::printable("1.0\n\tfake\u{1b}]0;title\u{7}"),
            "1.0\\n\\tfake\\u{1b}]0;title\\u{7}"
        );
        assert_eq!(crate::printable("v1\u{202e}txt.exe"), "v1\\u{202e}txt.exe");
        // Joiners are text: an emoji sequence and a Persian word stay as they are.
        for text in [
            "\u{1f469}\u{200d}\u{1f4bb}",
            "\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}",
        ] {
            assert_eq!(crate::printable(text), text);
        }
    }

    #[test]
    fn sizes() {
        for (s, n) in [
            ("0", 0),
            ("512", 512),
            ("4K", 4096),
            ("2G", 2 << 30),
            ("1MiB", 1 << 20),
            ("3 GB", 3 << 30),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "G", "1X", "-1", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn original_commands() {
        let repo = std::path::Path::new("/srv/artifacts");
        for ok in [
            "depot-receive",
            "depot-receive --repo /srv/artifacts",
            "depot-receive --repo 'artifacts'",
            "/usr/bin/depot-receive",
        ] {
            assert_eq!(check_original_command(ok, repo), Ok(()), "{ok}");
        }
        for bad in [
            "sh -c id",
            "depot-receive --repo /srv/other",
            "depot-receive --repo /srv/other/artifacts",
            "depot-receive --repo other/artifacts",
            "depot-receive --repo ../artifacts",
            "depot-receive --allow-ref '**'",
            "depot-receive --repo /srv/artifacts --allow-non-fast-forward",
            "depot-receive; id",
            "depot-receive $(id)",
            "depot-receive --repo '/srv/artifacts",
            "",
        ] {
            assert!(check_original_command(bad, repo).is_err(), "{bad}");
        }
    }
}

/// depot-summary: regenerates the repository's `summary`, `index.json` and
/// `index.html` when a ref changed (run it from cron, a systemd timer or a
/// path unit). Exit codes: 0 done or nothing to do; 1 failure.
#[derive(Debug, Parser)]
#[command(name = "depot-summary", version, max_term_width = 100)]
pub struct SummaryCli {
    /// The repository.
    #[arg(long)]
    pub repo: PathBuf,
    /// Regenerate even if no ref changed.
    #[arg(long)]
    pub force: bool,
    /// Private state (commit cache, fingerprint); never inside the repository.
    /// Default: $XDG_STATE_HOME/depot or ~/.local/state/depot.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The whole of `depot-summary`'s `main`.
pub fn summary_main() -> i32 {
    init_tracing();
    let args = SummaryCli::parse();
    let run = || -> Result<crate::summary::Outcome> {
        let state_dir = args
            .state_dir
            .clone()
            .or_else(default_state_dir)
            .context("no --state-dir given and neither XDG_STATE_HOME nor HOME is set")?;
        let repo = Repo::open(&args.repo)?;
        Ok(crate::summary::update(
            &repo,
            &crate::summary::Options {
                force: args.force,
                state_dir,
            },
        )?)
    };
    match run() {
        Ok(outcome) => {
            if args.json {
                println!("{}", serde_json::to_string(&outcome).unwrap_or_default());
            } else if outcome.written {
                eprintln!("summary written: {} refs", outcome.refs);
                for (r, why) in &outcome.skipped {
                    eprintln!("left out {r}: {why}");
                }
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
