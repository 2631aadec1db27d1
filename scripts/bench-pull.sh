#!/usr/bin/env bash
# bench-pull.sh: `depot pull` against `ostree pull`, side by side, over nginx.
#
# What it measures
#   The test tree of scripts/bench-commit.sh (built by it if missing) is
#   pushed into a repository with a summary, served by a real nginx on
#   127.0.0.1. Per run, interleaved, each with a fresh cache/repository:
#     ostree  `ostree pull` into a fresh bare-user repository, then
#             `ostree checkout -U` (what a user does to get the files)
#     depot   `depot pull URL REF DEST` (fetch, verify, check out)
#   Medians of wall time and peak RSS, and the ratio (goal: depot <= 0.3 x).
#   Repositories are deleted only at the end (this ext4 has no journal and
#   slows down creating files right after many were deleted).
#
# How to run
#   scripts/bench-pull.sh            # BENCH_RUNS=5 by default
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${BENCH_WORK:-$ROOT/bench-work}
WORK=$BASE/pull
RUNS=${BENCH_RUNS:-5}
TREE=$BASE/tree
DELETED_STAMP=$BASE/deleted.stamp # shared with bench-push.sh
log() { echo "bench-pull: $*" >&2; }
# make_tree, SETTLE_SECONDS, deleted_many and settle.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

die() { echo "bench-pull: $*" >&2; exit 1; }
for tool in ostree nginx; do command -v $tool >/dev/null || [ -x /usr/sbin/$tool ] || die "$tool is missing (apt-get install $tool)"; done
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
mkdir -p "$BASE"
WORK=$BASE make_tree # the tree of bench-commit.sh and bench-push.sh, built or reused
(cd "$ROOT" && cargo build --release --quiet --bins) || die "cargo build failed"
DEPOT=$ROOT/target/release/depot

if [ -e "$WORK" ]; then rm -rf "$WORK" && deleted_many; fi
settle
mkdir -p "$WORK/nginx"
REPO=$WORK/repo
$DEPOT init "$REPO" >/dev/null
$DEPOT push --no-progress --to "$REPO" --ref bench -s bench "$TREE" >/dev/null 2>&1
"$ROOT/target/release/depot-summary" --repo "$REPO" --state-dir "$WORK/state" >/dev/null 2>&1

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 2;
$( [ "$(id -u)" -eq 0 ] && echo "user root;" )
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 100000;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server { listen 127.0.0.1:$port; root $REPO; location ~ /\. { deny all; } }
}
CONF
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
$NGINX -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
trap 'kill $nginx_pid 2>/dev/null; wait $nginx_pid 2>/dev/null; rm -rf "$WORK"; deleted_many' EXIT
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
URL=http://127.0.0.1:$port

echo "tree: $(find "$TREE" -type f | wc -l) files, $(du -sm "$TREE" | cut -f1) MiB; repository objects: $(du -sm "$REPO/objects" | cut -f1) MiB"
echo "page cache: warm for the served repository (read again before every timed pull)"
# This VM pages out page cache unread for about a minute (DAMON reclaim).
warm() { find "$REPO/objects" -type f -exec cat {} + >/dev/null; }

measure() { warm; sync; /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { tail -5 "$WORK/err" >&2; die "failed: $1 ..."; }; cat "$WORK/t"; }
ostree_pull() {
  local d=$WORK/o-$1
  mkdir -p "$d"
  ostree --repo="$d/repo" init --mode=bare-user
  ostree --repo="$d/repo" remote add --no-gpg-verify origin "$URL"
  ostree --repo="$d/repo" pull origin bench
  ostree --repo="$d/repo" checkout -U origin:bench "$d/co"
}
declare -A wall rss
for run in $(seq 1 "$RUNS"); do
  for tool in $( ((run % 2)) && echo "ostree depot" || echo "depot ostree"); do
    if [ $tool = ostree ]; then
      read -r w m < <(measure bash -c "$(declare -f ostree_pull); WORK='$WORK' URL='$URL' ostree_pull $run")
    else
      read -r w m < <(measure "$DEPOT" pull "$URL" bench "$WORK/d-$run/co" --cache "$WORK/d-$run/cache")
    fi
    wall[$tool]+="$w "; rss[$tool]+="$m "
  done
done
diff -r --no-dereference "$TREE" "$WORK/d-1/co" >/dev/null && same=SAME || same=DIFFERENT
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ow=$(median <<<"${wall[ostree]}"); dw=$(median <<<"${wall[depot]}")
om=$(median <<<"${rss[ostree]}"); dm=$(median <<<"${rss[depot]}")
printf '\n%d runs, medians\n  %-28s %6.2f s  %6.1f MiB\n  %-28s %6.2f s  %6.1f MiB\n' "$RUNS" \
  "ostree pull + checkout -U" "$ow" "$(awk -v k="$om" 'BEGIN{print k/1024}')" \
  "depot pull" "$dw" "$(awk -v k="$dm" 'BEGIN{print k/1024}')"
awk -v d="$dw" -v o="$ow" 'BEGIN { printf "ratio depot/ostree: %.2f (goal <= 0.3: %s)\n", d / o, (d / o <= 0.3 ? "met" : "NOT met") }'
echo "depot's checkout equals the source tree: $same"
