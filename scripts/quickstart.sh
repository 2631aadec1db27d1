#!/usr/bin/env bash
# depot's main job on a local repository, no server needed: create a
# repository, push a directory into it (by default this project's own src/)
# through the same receiver sshd would run, push a changed copy (only the
# change travels), list, show the history, update the summary, pull it the way
# a client pulls from a static server (here through a file:// URL, verifying
# every object), check out and verify everything.
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
target/release/depot-summary --repo "$work/repo" --state-dir "$work/summary-state"
$depot ls "file://$work/repo"
$depot pull --cache "$work/pull-cache" "file://$work/repo" demo/main "$work/pulled"
diff -r "$work/tree" "$work/pulled" && echo "pull matches the pushed tree"
$depot checkout --repo "$work/repo" demo/main "$work/checkout"
diff -r "$work/tree" "$work/checkout" && echo "checkout matches the pushed tree"
$depot fsck --repo "$work/repo"
if command -v ostree >/dev/null; then
  ostree fsck --repo="$work/repo" | tail -n 1
fi
echo "repository: $work/repo"
