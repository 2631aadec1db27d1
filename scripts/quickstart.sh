#!/usr/bin/env bash
# depot's main job on a local repository, no server needed: create a
# repository, commit a directory (by default this project's own src/), list
# it, check it out again and verify everything.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-src}"
work="$(mktemp -d -t depot-quickstart.XXXXXX)"

cargo build --release --quiet --bin depot
depot=target/release/depot

$depot init "$work/repo"
$depot commit --repo "$work/repo" --ref demo/main -s "first build" "$src"
echo "a change" > "$work/extra.txt"
cp -r "$src" "$work/tree" && cp "$work/extra.txt" "$work/tree/"
$depot commit --repo "$work/repo" --ref demo/main -s "second build" "$work/tree"
$depot ls --repo "$work/repo"
$depot log --repo "$work/repo" demo/main
$depot checkout --repo "$work/repo" demo/main "$work/checkout"
diff -r "$work/tree" "$work/checkout" && echo "checkout matches the committed tree"
$depot fsck --repo "$work/repo"
if command -v ostree >/dev/null; then
  ostree fsck --repo="$work/repo" | tail -n 1
fi
echo "repository: $work/repo"
