//! Where depot's programs log: standard error, or the local syslog socket.
//!
//! `depot-receive` runs as an sshd forced command, so its standard error is
//! the pushing client's and the server's admin sees none of it; its standard
//! output is the protocol and is never written here. With `--log-to syslog`
//! every tracing event becomes one datagram on the local syslog socket
//! (`/dev/log`; on systemd machines journald owns that socket, so the lines
//! reach the journal as well as any syslog daemon), in the RFC 3164 local
//! form that glibc's syslog(3) sends for sshd and sudo:
//!
//! ```text
//! <30>Jan  5 12:00:00 depot-receive[4242]: push ok key=ci refs=["proj/app"] ...
//! ```
//!
//! This module exists because no crate fits: `syslog-tracing` calls libc's
//! syslog(3), which only knows `/dev/log` (no other socket, so nothing to test
//! against); `tracing-journald` speaks journald's native protocol, which
//! syslog daemons do not read; the `syslog` crate feeds the `log` crate, not
//! tracing, passes newlines through, and brings `time` and `hostname` for
//! what is one `format!` and one `send`. Events are still formatted by
//! tracing-subscriber's own fmt layer; [`Syslog`] is only where its bytes go.
//!
//! The choices (docs/deploy.md says the same to admins):
//!
//! - Facility `daemon`, as git-daemon uses: the lines are a server program's
//!   activity (refs, sizes, failures such as a full disk). The authentication
//!   itself is sshd's, logged under `auth`; mixing application errors into
//!   the security log (`auth.log`, often readable by fewer people) would not
//!   help, and nothing logged here is secret.
//! - Severity from the level: ERROR `err`, WARN `warning`, INFO `info`,
//!   DEBUG and TRACE `debug`.
//! - `DEPOT_LOG` (a tracing filter) wins when set. Otherwise standard error
//!   keeps `warn` (over ssh the client reads it) and syslog gets
//!   `warn,depot::audit=info`: warnings, errors, and exactly one line per
//!   push (target [`AUDIT_TARGET`], written beside the audit record) with the
//!   key, refs, objects, bytes and outcome. `DEPOT_LOG=info` adds the timing
//!   lines of each phase.
//! - Newlines and other control characters in a message are escaped (`\n`),
//!   so one event is one line; a datagram is cut at [`MAX_DATAGRAM`].
//! - The timestamp is UTC: the local zone cannot be read without libc calls
//!   (and unsafe code is forbidden here). rsyslog's imuxsock and journald
//!   stamp local messages with their own time of receipt and ignore this one.
//! - A socket that cannot be reached at startup means standard error and one
//!   warning, never a failed push. A later failed send is retried once on a
//!   fresh connection (the daemon may have restarted), then that line goes to
//!   standard error.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The environment variable holding a tracing filter (e.g. `debug`).
pub const FILTER_ENV: &str = "DEPOT_LOG";

/// The target of the one line per push that `depot-receive` logs.
pub const AUDIT_TARGET: &str = "depot::audit";

/// The filter on standard error when `DEPOT_LOG` is unset.
pub const STDERR_FILTER: &str = "warn";

/// The filter on syslog when `DEPOT_LOG` is unset: one line per push, plus
/// warnings and errors.
pub const SYSLOG_FILTER: &str = "warn,depot::audit=info";

/// The local syslog socket (`_PATH_LOG` in glibc's <syslog.h>).
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// Longest datagram sent: rsyslog's default `$MaxMessageSize` (8k) cuts
/// anything longer anyway.
pub const MAX_DATAGRAM: usize = 8192;

/// How long one send may wait on a syslog daemon that is not reading, so a
/// stuck logger delays a push by seconds at most.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// `LOG_DAEMON` (3 << 3) from <syslog.h>.
const FACILITY_DAEMON: u8 = 3 << 3;

/// Where log events go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogTo {
    /// Standard error (over ssh: the pushing client's terminal).
    #[default]
    Stderr,
    /// The local syslog socket (journald's, on systemd machines).
    Syslog,
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default))
}

/// Sets up logging to standard error, filtered by `DEPOT_LOG` (default
/// `warn`). Does nothing if a subscriber is already set.
pub fn init_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(STDERR_FILTER))
        .with_writer(io::stderr)
        // Colour codes only where a person reads them (over ssh, stderr is a pipe).
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .try_init();
}

/// Sets up logging to `to`; for syslog, as `ident` through `socket`. An
/// unreachable socket means standard error and one warning saying so.
pub fn init(to: LogTo, ident: &str, socket: &Path) {
    match to {
        LogTo::Stderr => init_stderr(),
        LogTo::Syslog => match Syslog::connect(ident, socket) {
            Ok(syslog) => {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter(SYSLOG_FILTER))
                    .with_writer(syslog)
                    .with_ansi(false)
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .try_init();
            }
            Err(e) => {
                init_stderr();
                tracing::warn!(
                    "cannot reach syslog at {}: {e}; logging to stderr instead",
                    socket.display()
                );
            }
        },
    }
}

/// A connection to a local syslog socket, and a [`MakeWriter`] whose
/// writers each send one datagram when dropped.
#[derive(Debug)]
pub struct Syslog {
    socket: UnixDatagram,
    path: PathBuf,
    ident: String,
    pid: u32,
}

/// Initialization
impl Syslog {
    /// Connects to the datagram socket at `path`; messages are tagged
    /// `ident[PID]`.
    ///
    /// # Errors
    ///
    /// When nothing listens at `path`.
    pub fn connect(ident: &str, path: &Path) -> io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Syslog {
            socket,
            path: path.to_path_buf(),
            ident: ident.to_string(),
            pid: std::process::id(),
        })
    }
}

/// Sending
impl Syslog {
    fn send(&self, severity: u8, text: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let datagram =
            format_datagram(FACILITY_DAEMON | severity, now, &self.ident, self.pid, text);
        let sent = self.socket.send(datagram.as_bytes()).or_else(|_| {
            // The daemon may have restarted and bound a new socket there.
            self.socket.connect(&self.path)?;
            self.socket.send(datagram.as_bytes())
        });
        if sent.is_err() {
            let line = datagram.split_once("]: ").map_or(&*datagram, |(_, m)| m);
            let _ = writeln!(io::stderr().lock(), "{}: {line}", self.ident);
        }
    }
}

/// The syslog severity of a tracing level (<syslog.h> numbers).
fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Collects one formatted event and sends it as one datagram when dropped.
#[derive(Debug)]
pub struct SyslogWriter<'a> {
    syslog: &'a Syslog,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogWriter<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.syslog
                .send(self.severity, &String::from_utf8_lossy(&self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogWriter<'a>;

    /// A writer for an event of unknown level: `info`.
    fn make_writer(&'a self) -> SyslogWriter<'a> {
        self.writer(severity(Level::INFO))
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogWriter<'a> {
        self.writer(severity(*meta.level()))
    }
}

impl Syslog {
    fn writer(&self, severity: u8) -> SyslogWriter<'_> {
        SyslogWriter {
            syslog: self,
            severity,
            buf: Vec::new(),
        }
    }
}

/// `Mmm dd hh:mm:ss` (RFC 3164: English month, day padded with a space), UTC.
fn timestamp(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = crate::timefmt::format(secs);
    let parsed = (|| {
        let (date, time) = iso.strip_suffix('Z')?.split_once('T')?;
        let mut ymd = date.rsplitn(3, '-');
        let day: u8 = ymd.next()?.parse().ok()?;
        let month: usize = ymd.next()?.parse().ok()?;
        Some(format!(
            "{} {day:>2} {time}",
            MONTHS.get(month.checked_sub(1)?)?
        ))
    })();
    parsed.expect("timefmt::format writes YYYY-MM-DDTHH:MM:SSZ")
}

/// One syslog datagram: `<PRI>TIMESTAMP IDENT[PID]: TEXT`, with the trailing
/// newline dropped, control characters escaped (`\n`, `\u{1b}`) so the
/// text stays one line, and the whole cut to [`MAX_DATAGRAM`] bytes.
fn format_datagram(pri: u8, secs: u64, ident: &str, pid: u32, text: &str) -> String {
    let mut out = format!("<{pri}>{} {ident}[{pid}]: ", timestamp(secs));
    for c in text.trim_end_matches(['\n', '\r']).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.len() > MAX_DATAGRAM {
        let mut end = MAX_DATAGRAM;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        for (secs, want) in [
            (0, "Jan  1 00:00:00"),
            (1_709_210_096, "Feb 29 12:34:56"),
            (1_735_689_599, "Dec 31 23:59:59"),
            (1_700_000_000, "Nov 14 22:13:20"),
        ] {
            assert_eq!(timestamp(secs), want, "{secs}");
        }
    }

    #[test]
    fn datagrams() {
        let d = |text: &str| format_datagram(FACILITY_DAEMON | 6, 0, "depot-receive", 42, text);
        assert_eq!(
            d("push ok key=ci\n"),
            "<30>Jan  1 00:00:00 depot-receive[42]: push ok key=ci"
        );
        assert_eq!(
            d("two\nlines\r\n"),
            "<30>Jan  1 00:00:00 depot-receive[42]: two\\nlines"
        );
        assert_eq!(
            d("tab\there \u{1b}[1m nul\0 ünï"),
            "<30>Jan  1 00:00:00 depot-receive[42]: tab\\there \\u{1b}[1m nul\\u{0} ünï"
        );
        let long = d(&"é".repeat(MAX_DATAGRAM));
        assert!(long.len() <= MAX_DATAGRAM && long.len() > MAX_DATAGRAM - 2);
        assert!(long.ends_with('é'));
        assert_eq!(severity(Level::ERROR), 3);
        assert_eq!(severity(Level::WARN), 4);
        assert_eq!(severity(Level::DEBUG), 7);
        assert_eq!(severity(Level::TRACE), 7);
    }

    /// Events through the fmt layer into a bound socket: one datagram each,
    /// severity from the level, nothing but the formatted event.
    #[test]
    fn one_datagram_per_event() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path)?;
        server.set_read_timeout(Some(Duration::from_secs(5)))?;
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Syslog::connect("depot-test", &path)?)
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(key = "ci", "first\nsecond");
            tracing::error!(bytes = 12, "failed");
        });
        let mut buf = vec![0; MAX_DATAGRAM];
        let mut recv = || -> std::io::Result<String> {
            let n = server.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        let pid = std::process::id();
        let (warn, error) = (recv()?, recv()?);
        assert!(warn.starts_with("<28>"), "{warn}");
        assert!(
            warn.ends_with(&format!(" depot-test[{pid}]: first\\nsecond key=\"ci\"")),
            "{warn}"
        );
        assert!(error.starts_with("<27>"), "{error}");
        assert!(error.ends_with(": failed bytes=12"), "{error}");
        Ok(())
    }
}
