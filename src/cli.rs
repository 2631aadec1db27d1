//! The `depot` command line: argument structs and dispatch, kept in the
//! library so the binary stays a few lines and the commands can be tested.
//!
//! Exit codes: 0 success; 1 failure (including `fsck` finding problems);
//! 2 bad usage.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::checksum::Checksum;
use crate::commit::{self, Parent};
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
    /// List the refs: ref, commit, time, subject.
    Ls {
        /// The repository.
        #[command(flatten)]
        repo: RepoArg,
        /// Print JSON instead of a table.
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

/// `depot commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// The ref to move to the new commit.
    #[arg(long = "ref", short = 'b')]
    ref_name: RefName,
    /// Subject line.
    #[arg(short, long, default_value = "")]
    subject: String,
    /// Body.
    #[arg(long, default_value = "")]
    body: String,
    /// Commit time: seconds (@1577836800) or 2020-01-01T00:00:00Z. Default: SOURCE_DATE_EPOCH or now.
    #[arg(long, value_parser = timefmt::parse)]
    timestamp: Option<u64>,
    /// The parent: auto (the ref's current commit), none, or a checksum.
    #[arg(long, default_value = "auto", value_parser = parse_parent)]
    parent: Parent,
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
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The directory to commit.
    dir: PathBuf,
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

/// Sets up logging to stderr. `DEPOT_LOG` takes a tracing filter (e.g. `debug`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEPOT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
            let opts = commit::Options {
                ref_name: Some(args.ref_name),
                subject: args.subject,
                body: args.body,
                timestamp: args.timestamp,
                parent: args.parent,
                metadata: args.metadata,
                owner_uid: args.owner_uid,
                owner_gid: args.owner_gid,
                no_xattrs: args.no_xattrs,
                bind: !args.no_bind,
            };
            let outcome = commit::commit_dir(&repo, &args.dir, &opts)
                .with_context(|| format!("committing {}", args.dir.display()))?;
            if args.json {
                serde_json::to_writer_pretty(&mut stdout, &outcome)?;
                writeln!(stdout)?;
            } else {
                writeln!(stdout, "{}", outcome.commit)?;
            }
        }
        Command::Ls { repo, json } => {
            let repo = repo.open()?;
            let mut rows = Vec::new();
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
                        commit.subject
                    )?;
                }
            }
            if json {
                serde_json::to_writer_pretty(&mut stdout, &rows)?;
                writeln!(stdout)?;
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
                    writeln!(stdout, "Version: {v}")?;
                }
                writeln!(stdout, "\n    {}", e.commit.subject)?;
                if !e.commit.body.is_empty() {
                    writeln!(stdout)?;
                    for line in e.commit.body.lines() {
                        writeln!(stdout, "    {line}")?;
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
                    let mut out = read::output(&o)?;
                    read::cat(&repo, &c, &path, &mut out)?;
                    out.flush()?;
                }
                None => {
                    read::cat(&repo, &c, &path, &mut stdout)?;
                }
            }
        }
        Command::Checkout {
            repo,
            rev,
            dest,
            subpath,
        } => {
            let repo = repo.open()?;
            let c = repo.resolve(&rev)?;
            let stats = read::checkout_subpath(&repo, &c, &subpath, &dest)?;
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
