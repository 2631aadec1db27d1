#!/usr/bin/env bash
# bench-summary.sh: `depot-summary` against `ostree summary -u`, side by side.
#
# What it measures
#   A repository with BENCH_REFS refs (default 10,000), each pointing at its
#   own commit (all sharing one small tree; the commits are built with GLib's
#   GVariant through python3-gi, so generating them takes seconds). Per run,
#   interleaved:
#     ostree     `ostree summary -u` (it always regenerates)
#     cold       `depot-summary --force` with an empty cache (every commit read)
#     changed    one ref moved, then `depot-summary` (the cron/path-unit case)
#     unchanged  `depot-summary` when nothing changed
#   Medians of wall time over BENCH_RUNS runs (default 5) and the ratios.
#   Goals: changed <= 0.5 x ostree; unchanged < 10 ms.
#
# How to run
#   scripts/bench-summary.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${BENCH_WORK:-$ROOT/bench-work}/summary
RUNS=${BENCH_RUNS:-5}
REFS=${BENCH_REFS:-10000}

die() { echo "bench-summary: $*" >&2; exit 1; }
command -v ostree >/dev/null || die "ostree is missing (apt-get install ostree)"
/usr/bin/python3 -c 'import gi' 2>/dev/null || die "python3-gi is missing (apt-get install python3-gi)"
(cd "$ROOT" && cargo build --release --quiet --bins) || die "cargo build failed"
DEPOT=$ROOT/target/release/depot
SUMMARY=$ROOT/target/release/depot-summary

rm -rf "$WORK" && mkdir -p "$WORK/tree"
echo hello >"$WORK/tree/file"
REPO=$WORK/repo
$DEPOT init "$REPO" >/dev/null
base=$($DEPOT commit --repo "$REPO" --ref base --timestamp @1600000000 -s base "$WORK/tree")

# BENCH_REFS commits "build N" with the base commit's trees, one ref each.
/usr/bin/python3 - "$REPO" "$base" "$REFS" <<'PY'
import hashlib, os, sys
from gi.repository import GLib
repo, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(f"{repo}/objects/{base[:2]}/{base[2:]}.commit", "rb").read()
c = GLib.Variant.new_from_bytes(GLib.VariantType.new("(a{sv}aya(say)sstayay)"), GLib.Bytes.new(data), False)
meta, parent, related, subject, body, ts, tree, dirmeta = c.unpack()
ty = GLib.VariantType.new("(a{sv}aya(say)sstayay)")
for i in range(n):
    v = GLib.Variant("(a{sv}aya(say)sstayay)", ({"version": GLib.Variant("s", str(i))}, b"", [], f"build {i}", "", ts, tree, dirmeta))
    raw = bytes(v.get_data_as_bytes().get_data())
    h = hashlib.sha256(raw).hexdigest()
    d = f"{repo}/objects/{h[:2]}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/{h[2:]}.commit", "wb") as f:
        f.write(raw)
    os.makedirs(f"{repo}/refs/heads/proj/{i % 100}", exist_ok=True)
    with open(f"{repo}/refs/heads/proj/{i % 100}/build-{i}", "w") as f:
        f.write(h + "\n")
PY
echo "repository: $(find "$REPO/refs/heads" -type f | wc -l) refs"

t() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || die "failed: $*"; e=$(date +%s%N); echo $(((e - s) / 1000)); }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
declare -A times
for run in $(seq 1 "$RUNS"); do
  state=$WORK/state-$run
  times[ostree]+="$(t ostree --repo="$REPO" summary -u) "
  times[cold]+="$(t "$SUMMARY" --repo "$REPO" --state-dir "$state" --force) "
  # One ref moves (as after a push): point it at the base commit.
  echo "$base" >"$REPO/refs/heads/proj/$run/build-$run.tmp" && mv "$REPO/refs/heads/proj/$run/build-$run.tmp" "$REPO/refs/heads/proj/$run/build-$run"
  times[changed]+="$(t "$SUMMARY" --repo "$REPO" --state-dir "$state") "
  times[unchanged]+="$(t "$SUMMARY" --repo "$REPO" --state-dir "$state") "
done
# The summaries agree (last-modified aside): depot's listing equals ostree's.
ostree --repo="$REPO" summary -u
ostree --repo="$REPO" summary --view | grep -v 'Last-Modified' >"$WORK/ostree.view"
"$SUMMARY" --repo "$REPO" --state-dir "$WORK/state-check" --force
ostree --repo="$REPO" summary --view | grep -v 'Last-Modified' >"$WORK/depot.view"
if cmp -s "$WORK/ostree.view" "$WORK/depot.view"; then agree=SAME; else agree=DIFFERENT; fi

printf '\n%d refs, %d runs, medians (ms)\n' "$REFS" "$RUNS"
for k in ostree cold changed unchanged; do
  m=$(tr ' ' '\n' <<<"${times[$k]}" | grep . | median)
  printf '  %-10s %8.1f\n' "$k" "$(awk -v m="$m" 'BEGIN { print m / 1000 }')"
  declare "med_$k=$m"
done
awk -v o="$med_ostree" -v c="$med_cold" -v ch="$med_changed" -v u="$med_unchanged" 'BEGIN {
  printf "ratios to ostree: cold %.2f, changed %.2f (goal <= 0.5: %s); unchanged %.1f ms (goal < 10: %s)\n",
    c / o, ch / o, (ch / o <= 0.5 ? "met" : "NOT met"), u / 1000, (u / 1000 < 10 ? "met" : "NOT met") }'
echo "summary --view of depot's and ostree's summaries: $agree"
