#!/usr/bin/env bash
# Seeds the fuzz corpora from real data: a captured push session for
# frame_decode, and real objects for gvariant_decode and metadata_parse.
# Run from anywhere; writes fuzz/corpus/<target>/ (not committed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin depot --bin depot-receive
work=$(mktemp -d -t depot-seeds.XXXXXX)
trap 'rm -rf "$work"' EXIT
depot=target/release/depot
$depot init "$work/repo" >/dev/null
mkdir -p fuzz/corpus/{frame_decode,gvariant_decode,metadata_parse,dirtree_parse}

# A push session, captured by a stand-in for ssh that tees the client's bytes.
cat >"$work/fake-ssh" <<FAKE
#!/bin/sh
tee "$root/fuzz/corpus/frame_decode/session" | "$root/target/release/depot-receive" --repo "$work/repo" --allow-ref '**' --state-dir "$work/state" --min-free-space 0
FAKE
chmod +x "$work/fake-ssh"
$depot push --to ssh://seed/repo --ssh-command "$work/fake-ssh" --ref seed -s seed --no-progress src >/dev/null 2>&1

# Objects: metadata as is for metadata_parse; for gvariant_decode, one type-length
# byte, the type string, then the bytes (the target's input layout).
n=0
for f in $(find "$work/repo/objects" -type f | sort | head -200); do
  n=$((n + 1))
  case "$f" in
    *.dirtree) t='(a(say)a(sayay))'; cp "$f" "fuzz/corpus/dirtree_parse/obj-$n" ;;
    *.dirmeta) t='(uuua(ayay))' ;;
    *.commit) t='(a{sv}aya(say)sstayay)' ;;
    *) cp "$f" "fuzz/corpus/metadata_parse/filez-$n"; continue ;;
  esac
  cp "$f" "fuzz/corpus/metadata_parse/obj-$n"
  { printf "\\$(printf '%03o' ${#t})"; printf '%s' "$t"; cat "$f"; } >"fuzz/corpus/gvariant_decode/obj-$n"
done
echo "seeded $(ls fuzz/corpus/* | wc -l) corpus files"
