//! Integration tests: the real `depot` binary against the real `ostree` CLI.
#![allow(missing_docs)]

/// The command line: errors, usage.
mod cli;
/// depot commit vs ostree commit: checksums, bytes, fsck, checkout, log, pull.
mod compat;
/// The deployment guide end to end with contrib/ and systemd/'s files: sshd, nginx, pulls.
mod deploy;
/// Lock interoperability with ostree, both ways.
mod locking;
/// Corruptions both tools must reject.
mod negative;
/// Random trees committed by both tools.
mod property;
/// depot ls URL and depot pull over a static HTTP server.
mod pull;
/// depot push through a real sshd: policy, concurrency, cuts, kills, corruption.
mod push_ssh;
/// The receiver's session, frame by frame, in process.
mod receive_session;
/// Repositories that ostree wrote, read by depot.
mod reverse;
/// A real OpenSSH server with forced-command accounts, for the push tests.
mod sshd;
/// depot-summary against ostree summary -u.
mod summary;
/// depot-receive --log-to syslog through a real sshd into a real rsyslogd.
mod syslog;
mod util;
