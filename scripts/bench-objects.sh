#!/usr/bin/env bash
# bench-objects.sh: the memory of a push of very many objects.
#
# What it measures
#   A tree of BENCH_OBJECTS files (default 1,000,000; a dozen bytes each, all
#   different, 1,000 to a directory) is pushed once into a fresh local
#   repository, with depot-receive (the local transport's child) under
#   /usr/bin/time, and committed once by `ostree commit` into a fresh archive
#   repository alongside. It prints the wall time and peak RSS of `depot
#   push`, of `depot-receive` and of `ostree commit`, and what depot-receive
#   holds per object above the base it has for a small push. Goal (issue 3):
#   depot-receive under 64 MiB whatever the push. Memory is not noisy, so one
#   run; the times are one run's and only a guide.
#
#   With BENCH_SHAPE=dirs the objects are mostly dirtrees: BENCH_OBJECTS/2000
#   directories of 999 directories of one file each (a dirtree and a file
#   object per leaf, all different: just under BENCH_OBJECTS objects, half of
#   them dirtrees, which depot-receive also orders for publishing and walks in
#   its closure check).
#
#   It checks that the pushed commit holds the tree's files (counted with
#   `ostree ls -R`) and that `ostree fsck` passes, unless BENCH_FSCK=0 (fsck
#   reads every object: minutes for a million).
#
# How to run
#   scripts/bench-objects.sh                      # about 20 minutes at 1,000,000
#   BENCH_OBJECTS=100000 scripts/bench-objects.sh
#   BENCH_SHAPE=dirs scripts/bench-objects.sh     # half of them dirtrees
#
# The tree is kept in bench-work/objects-N (objects-dirs-N) for the next run;
# the repositories are deleted at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${BENCH_WORK:-$ROOT/bench-work}
OBJECTS=${BENCH_OBJECTS:-1000000}
SHAPE=${BENCH_SHAPE:-files}
WORK=$BASE/objects
case $SHAPE in
# PUSHED: the objects of the push (files, dirtrees, one dirmeta, the commit).
files) TREE=$BASE/objects-$OBJECTS FILES=$OBJECTS PUSHED=$((OBJECTS + OBJECTS / 1000 + 3)) ;;
dirs) TREE=$BASE/objects-dirs-$OBJECTS FILES=$((OBJECTS / 2000 * 999)) PUSHED=$((FILES * 2 + OBJECTS / 2000 + 3)) ;;
*) echo "bench-objects: BENCH_SHAPE is files or dirs, not $SHAPE" >&2; exit 1 ;;
esac
DELETED_STAMP=$BASE/deleted.stamp # shared with the other benchmarks
log() { echo "bench-objects: $*" >&2; }
die() { echo "bench-objects: $*" >&2; exit 1; }
# SETTLE_SECONDS, deleted_many and settle.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

((OBJECTS >= 2000 && OBJECTS % 2000 == 0)) || die "BENCH_OBJECTS must be a multiple of 2000"
command -v ostree >/dev/null || die "ostree is missing (apt-get install ostree)"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
(cd "$ROOT" && cargo build --release --quiet --bin depot --bin depot-receive) || die "cargo build failed"

if [ -e "$WORK" ]; then rm -rf "$WORK" && deleted_many; fi
settle
mkdir -p "$BASE" "$WORK/bin"
if [ ! -f "$TREE.done" ]; then
    rm -rf "$TREE"
    log "creating $FILES files ($SHAPE) in $TREE"
    python3 - "$TREE" "$OBJECTS" "$SHAPE" <<'EOF'
import os, sys
root, n, shape = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if shape == "files":
    for d in range(n // 1000):
        path = os.path.join(root, "%04d" % d)
        os.makedirs(path)
        for i in range(1000):
            with open(os.path.join(path, "%04d" % i), "w") as f:
                f.write("object %d %d\n" % (d, i))
else:
    for d in range(n // 2000):
        for i in range(999):
            path = os.path.join(root, "%04d" % d, "%03d" % i)
            os.makedirs(path)
            with open(os.path.join(path, "f"), "w") as f:
                f.write("object %d %d\n" % (d, i))
EOF
    touch "$TREE.done"
fi

# The local transport runs the depot-receive beside depot: here, a wrapper
# that measures the real one. depot-receive refuses a push of more than
# 1,000,000 new objects unless told otherwise; a million files make a few
# more, so the wrapper raises the limit to the push's size.
LIMIT=$((PUSHED > 1000000 ? PUSHED : 1000000))
cp "$ROOT/target/release/depot" "$WORK/bin/depot"
cat >"$WORK/bin/depot-receive" <<EOF
#!/bin/sh
exec /usr/bin/time -f "%e %M" -o "$WORK/receive.usage" "$ROOT/target/release/depot-receive" --max-objects $LIMIT "\$@"
EOF
chmod +x "$WORK/bin/depot-receive"
trap 'rm -rf "$WORK"; deleted_many' EXIT

# A push of one small file: depot-receive's base.
mkdir -p "$WORK/one" && echo one >"$WORK/one/file"
"$WORK/bin/depot" init "$WORK/base-repo" >/dev/null
"$WORK/bin/depot" push --no-progress --to "$WORK/base-repo" --ref one "$WORK/one" >/dev/null
read -r _ base_kib <"$WORK/receive.usage"

find "$TREE" -type f -exec cat {} + >/dev/null # the page cache, warm for both
"$WORK/bin/depot" init "$WORK/repo" >/dev/null
sync
log "depot push"
/usr/bin/time -f "%e %M" -o "$WORK/push.usage" \
    "$WORK/bin/depot" push --no-progress --to "$WORK/repo" --ref many "$TREE" >/dev/null
read -r push_s push_kib <"$WORK/push.usage"
read -r receive_s receive_kib <"$WORK/receive.usage"

ostree --repo="$WORK/ostree" init --mode=archive
find "$TREE" -type f -exec cat {} + >/dev/null
sync
log "ostree commit"
/usr/bin/time -f "%e %M" -o "$WORK/ostree.usage" \
    ostree --repo="$WORK/ostree" commit --branch=many --tree=dir="$TREE" >/dev/null
read -r ostree_s ostree_kib <"$WORK/ostree.usage"

printf '\n%d files (%s), %d objects pushed (depot-receive --max-objects %d), one run\n' "$FILES" "$SHAPE" "$PUSHED" "$LIMIT"
printf '  %-16s %8.1f s  %8.1f MiB peak RSS\n' \
    "depot push" "$push_s" "$(awk -v k="$push_kib" 'BEGIN { print k / 1024 }')" \
    "depot-receive" "$receive_s" "$(awk -v k="$receive_kib" 'BEGIN { print k / 1024 }')" \
    "ostree commit" "$ostree_s" "$(awk -v k="$ostree_kib" 'BEGIN { print k / 1024 }')"
awk -v r="$receive_kib" -v b="$base_kib" -v n="$PUSHED" 'BEGIN {
    printf "depot-receive: %.1f MiB for a one-file push; %.1f bytes per object above that\n", b / 1024, (r - b) * 1024 / n
    printf "goal: depot-receive < 64 MiB: %s\n", (r < 64 * 1024 ? "met" : "NOT met")
}'

files=$(ostree --repo="$WORK/repo" ls -R many | grep -c '^-' || true)
echo "files in the pushed commit (ostree ls -R): $files (expected $FILES)"
[ "$files" -eq "$FILES" ] || die "the pushed commit does not hold the tree's files"
if [ "${BENCH_FSCK:-1}" != 0 ]; then
    ostree --repo="$WORK/repo" fsck >/dev/null || die "ostree fsck failed on depot's repository"
    echo "ostree fsck: ok"
fi
