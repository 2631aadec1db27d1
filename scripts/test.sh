#!/usr/bin/env bash
# Runs every check and test depot has. On a fresh Debian machine it first
# installs what the tests drive for real: the ostree CLI (the oracle for the
# format), strace (to hold ostree's lock in the lock tests) and python3 (a
# static HTTP server for pull tests) and python3-gi (GLib as the oracle
# for GVariant normal form).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ostree >/dev/null || need+=(ostree)
command -v strace >/dev/null || need+=(strace)
command -v python3 >/dev/null || need+=(python3)
# GLib itself, through Debian's Python, judges the GVariant codec.
/usr/bin/python3 -c 'import gi' 2>/dev/null || need+=(python3-gi)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test
