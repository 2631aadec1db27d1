#!/usr/bin/env bash
# depot's main job on a local repository, no server needed: create a
# repository, push a directory into it (by default this project's own src/)
# through the same receiver sshd would run, push a changed copy (only the
# change travels), list, show the history, check out and verify everything.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-src}"
work="$(mktemp -d -t depot-quickstart.XXXXXX)"

cargo build --release --quiet --bins
depot=target/release/depot

$depot init "$work/repo"
$depot push --to "$work/repo" --ref demo/main -s "first build" "$src"
cp -r "$src" "$work/tree" && echo "a change" > "$work/tree/extra.txt"
$depot push --to "$work/repo" --ref demo/main -s "second build" "$work/tree"
$depot ls --repo "$work/repo"
$depot log --repo "$work/repo" demo/main
$depot checkout --repo "$work/repo" demo/main "$work/checkout"
diff -r "$work/tree" "$work/checkout" && echo "checkout matches the pushed tree"
$depot fsck --repo "$work/repo"
if command -v ostree >/dev/null; then
  ostree fsck --repo="$work/repo" | tail -n 1
fi
echo "repository: $work/repo"
