#!/usr/bin/env bash
# Runs every check and test depot has. On a fresh Debian machine it first
# installs what the tests drive for real: the ostree CLI (the oracle for the
# format), strace (to hold ostree's lock in the lock tests), python3 (a
# static HTTP server for pull tests; the stream-mangling ssh wrapper of the
# push tests), python3-gi (GLib as the oracle for GVariant normal form),
# openssh-server and openssh-client (the push tests run a real sshd),
# time (/usr/bin/time measures depot-receive's peak memory), nginx (the
# deployment test serves a repository with contrib/nginx-depot.conf) and
# rsyslog (the syslog test runs its own rsyslogd on a socket in a temporary
# directory, never /dev/log), logrotate (the deployment test rotates the
# audit log with contrib/depot-audit.logrotate).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ostree >/dev/null || need+=(ostree)
command -v strace >/dev/null || need+=(strace)
command -v python3 >/dev/null || need+=(python3)
# GLib itself, through Debian's Python, judges the GVariant codec.
/usr/bin/python3 -c 'import gi' 2>/dev/null || need+=(python3-gi)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
{ command -v ssh && command -v ssh-keygen; } >/dev/null || need+=(openssh-client)
[ -x /usr/bin/time ] || need+=(time)
# A private CA for the https pull test.
command -v openssl >/dev/null || need+=(openssl)
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/rsyslogd ] || need+=(rsyslog)
[ -x /usr/sbin/logrotate ] || need+=(logrotate)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet
cargo test
cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
