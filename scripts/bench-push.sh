#!/usr/bin/env bash
# bench-push.sh: `depot push` against `rsync -a` over the same sshd, side by side.
#
# What it measures
#   A real OpenSSH server (Debian's /usr/sbin/sshd) runs on a free 127.0.0.1
#   port with its own config, host key and authorized_keys in the work
#   directory. It knows two client keys: one forced to run depot-receive (as an
#   admin would set it up), one plain key for rsync. Both tools go through the
#   system ssh, so they pay for the same cipher, the same sshd and the same
#   loopback. Scenarios:
#     cold       the test tree (copied from /usr/lib/x86_64-linux-gnu and
#                /usr/share, the tree scripts/bench-commit.sh builds) pushed
#                into a fresh repository, vs rsync -a into a fresh directory,
#                vs `ostree commit` of the tree into a fresh local archive
#                repository (no network; the cost of compressing and storing).
#     unchanged  the same tree again into the same repository (a new commit,
#                nothing else to send), vs rsync again into the synced directory.
#     changed    1% of the files changed (a few bytes appended to every 100th
#                regular file, in a copy of the tree made once per invocation),
#                pushed, vs rsync, on top of the unchanged state.
#     small      50,000 small files (1-4 KiB of seeded pseudo-random bytes in
#                250 directories) pushed into a fresh repository, vs rsync -a
#                into a fresh directory.
#   /usr/bin/time gives each client's wall seconds, CPU seconds (user + sys,
#   its ssh child included) and peak RSS; the server side (depot-receive,
#   rsync --server) runs under /usr/bin/time too, for its peak RSS and CPU.
#   Every run has its own fresh repositories and directories and the tools are
#   interleaved within a run (which goes first alternates between runs). The
#   table shows medians over the runs, the depot/rsync ratios of median wall
#   time and the goals (cold <= 1.0, unchanged, changed, small <= 1.5,
#   depot-receive peak RSS < 64 MiB). Once (after run 1) it checks that the
#   server repositories pass `ostree fsck` and that a checkout of each pushed
#   commit equals its source tree, and compares the bytes the cold push and
#   `ostree commit` stored for the same content objects.
#
# Fairness on this machine
#   - The page cache is not dropped: the source trees are read once before the
#     first run, and each tool's source tree again right before its timed
#     command (this VM pages out page cache unread for about a minute), so
#     every tool reads its input from a warm cache.
#   - `sync` runs before every timed command, so that no tool pays (in
#     depot-receive's or ostree's syncfs) for writing back another's data.
#     Note that rsync does not fsync what it writes; depot-receive and
#     ostree make it durable before moving the ref, inside the timed part.
#   - Nothing is deleted between runs: without a journal, ext4 skips inodes
#     deleted in the last minute, so creating files right after deleting many
#     is much slower. Everything is deleted at the very end; a later invocation
#     waits until that deletion is over 6 minutes past before it measures.
#
# How to run (from anywhere; it builds depot and depot-receive itself)
#   scripts/bench-push.sh
#   BENCH_ZLIB_LEVEL=1 scripts/bench-push.sh     # the servers at zlib level 1
#
# Settings (environment)
#   BENCH_WORK         work directory (default: bench-work/ at the repo root).
#                      The trees, keys, sshd files, repositories and raw results
#                      live here; nothing is written outside it (except
#                      cargo's target/, and /run/sshd when root lacks it).
#   BENCH_RUNS         number of runs (default 5)
#   BENCH_ZLIB_LEVEL   when set (1-9), written as [archive] zlib-level into each
#                      fresh server repository (and the ostree repository);
#                      otherwise they use the default, 6
#   BENCH_MAX_BYTES    size limit of the test tree in bytes (default 450000000)
#   BENCH_MAX_FILES    entry limit of the test tree (default 14000)
#   BENCH_SMALL_FILES  number of files in the small-files tree (default 50000)
#   The test tree is the one scripts/bench-commit.sh builds (same place, same
#   marker): it is reused while its limits match. The small-files tree is kept
#   the same way (BENCH_WORK/small); delete it to rebuild it.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-5}
# MAX_BYTES, MAX_FILES, MAX_FILE_SIZE, SOURCES, make_tree and apt_install.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
SMALL_FILES=${BENCH_SMALL_FILES:-50000}
SMALL_DIRS=250  # 10 directories of 25 each
SMALL_SEED=42
ZLIB_LEVEL=${BENCH_ZLIB_LEVEL:-}
TIMESTAMP=@1577836800
TIME=/usr/bin/time
SSHD=/usr/sbin/sshd
REF=bench

die() {
    echo "bench-push: error: $*" >&2
    exit 1
}

log() {
    echo "==> $*" >&2
}

check_settings() {
    local v
    for v in RUNS MAX_BYTES MAX_FILES SMALL_FILES; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer, got '${!v}'"
    done
    if [[ -n $ZLIB_LEVEL && ! $ZLIB_LEVEL =~ ^[1-9]$ ]]; then
        die "BENCH_ZLIB_LEVEL must be a zlib level from 1 to 9, got '$ZLIB_LEVEL'"
    fi
}

# Sets WORK to the absolute path of the work directory and creates it.
setup_work_dir() {
    local dir=${BENCH_WORK:-$ROOT/bench-work}
    [[ -n $dir ]] || die "BENCH_WORK is empty"
    mkdir -p "$dir"
    WORK=$(cd "$dir" && pwd)
    [[ $WORK != / ]] || die "BENCH_WORK must not be /"
    # The path goes into authorized_keys' command="..." and into shell words.
    [[ $WORK != *[\"\'\\]* && $WORK != *$'\n'* ]] || die "BENCH_WORK must not contain quotes, backslashes or newlines: $WORK"
    TREE=$WORK/tree
    SMALL=$WORK/small
    RESULTS=$WORK/push-results
    SERVER=$WORK/push-sshd
    BENCH_DIRS=$WORK/push-runs # every run's repositories and destinations
    CHANGED=$BENCH_DIRS/changed-tree
    DELETED_STAMP=$WORK/deleted.stamp # shared with bench-pull.sh
    mkdir -p "$WORK/tmp"
    export TMPDIR=$WORK/tmp
}


ensure_tools() {
    command -v cargo >/dev/null || die "cargo is not on PATH"
    command -v ostree >/dev/null || apt_install ostree
    command -v ostree >/dev/null || die "ostree is still missing after installing it"
    [[ -x $TIME ]] || apt_install time
    [[ -x $TIME ]] || die "$TIME is still missing after installing the 'time' package"
    $TIME -f '%e' true 2>/dev/null >/dev/null || die "$TIME does not accept -f; need GNU time"
    [[ -x $SSHD ]] || apt_install openssh-server
    [[ -x $SSHD ]] || die "$SSHD is still missing after installing openssh-server"
    { command -v ssh && command -v ssh-keygen; } >/dev/null || apt_install openssh-client
    { command -v ssh && command -v ssh-keygen; } >/dev/null ||
        die "ssh or ssh-keygen is still missing after installing openssh-client"
    command -v rsync >/dev/null || apt_install rsync
    command -v rsync >/dev/null || die "rsync is still missing after installing it"
    command -v perl >/dev/null || apt_install perl-base
    command -v perl >/dev/null || die "perl is still missing after installing perl-base"
}

build_depot() {
    log "building depot and depot-receive (release)"
    (cd "$ROOT" && cargo build --release --bin depot --bin depot-receive) >&2 || die "cargo build failed"
    local target=${CARGO_TARGET_DIR:-$ROOT/target}
    [[ $target == /* ]] || target=$ROOT/$target
    DEPOT=$target/release/depot
    RECEIVE=$target/release/depot-receive
    [[ -x $DEPOT ]] || die "built depot not found at $DEPOT"
    [[ -x $RECEIVE ]] || die "built depot-receive not found at $RECEIVE"
    [[ $RECEIVE != *[\"\'\\]* && $RECEIVE != *$'\n'* ]] || die "the path of depot-receive must not contain quotes or backslashes: $RECEIVE"
}

# Removes what an interrupted invocation left behind.
remove_leftovers() {
    if [[ -e $BENCH_DIRS ]]; then
        log "removing the repositories and directories an earlier invocation left in $BENCH_DIRS"
        rm -rf "$BENCH_DIRS"
        deleted_many
    fi
}

# Builds SMALL: SMALL_FILES files of 1024 to 4096 bytes of pseudo-random
# bytes from Perl's rand (its own drand48 since Perl 5.20, so the same seed
# gives the same tree everywhere), spread over SMALL_DIRS directories.
make_small_tree() {
    local marker=$WORK/small.done want="files=$SMALL_FILES dirs=$SMALL_DIRS sizes=1024-4096 seed=$SMALL_SEED generator=perl-rand"
    if [[ -d $SMALL && -f $marker && $(<"$marker") == "$want" ]]; then
        log "reusing the small-files tree in $SMALL"
        return
    fi
    log "building the small-files tree in $SMALL ($SMALL_FILES files)"
    if [[ -e $SMALL ]]; then
        rm -rf "$SMALL" "$marker"
        deleted_many
    fi
    mkdir -p "$SMALL"
    perl -e '
        use strict;
        my ($root, $files, $dirs, $seed) = @ARGV;
        srand($seed);
        my $per_top = $dirs / 10;
        for my $d (0 .. $dirs - 1) {
            my $top = sprintf("%s/d%02d", $root, int($d / $per_top));
            mkdir $top;
            mkdir sprintf("%s/s%02d", $top, $d % $per_top) or die "mkdir: $!";
        }
        for my $i (0 .. $files - 1) {
            my $d = $i % $dirs;
            my $path = sprintf("%s/d%02d/s%02d/f%05d", $root, int($d / $per_top), $d % $per_top, $i);
            my $n = 1024 + int(rand(3073));
            my $bytes = pack("L*", map { int(rand(4294967296)) } 1 .. (($n + 3) >> 2));
            open(my $fh, ">:raw", $path) or die "$path: $!";
            print $fh substr($bytes, 0, $n);
            close($fh) or die "$path: $!";
        }
    ' "$SMALL" "$SMALL_FILES" "$SMALL_DIRS" "$SMALL_SEED" || die "could not build the small-files tree"
    echo "$want" >"$marker"
}

# Makes CHANGED: a copy of TREE in which 1% of the regular files (every
# 100th in sorted order) have a few bytes appended. Every run pushes it on
# top of its own copy of TREE, so one copy serves all runs.
make_changed_tree() {
    log "copying the test tree and changing 1% of its files in $CHANGED"
    mkdir -p "$BENCH_DIRS"
    cp -a "$TREE" "$CHANGED"
    local files=() count step i f mode
    mapfile -d '' files < <(cd "$CHANGED" && find . -type f -print0 | LC_ALL=C sort -z)
    count=$(((${#files[@]} + 50) / 100))
    ((count > 0)) || count=1
    step=$((${#files[@]} / count))
    for ((i = 0; i < count; i++)); do
        f=$CHANGED/${files[i * step]}
        mode=$(stat -c %a "$f")
        chmod u+w "$f"
        printf 'depot-bench %d\n' "$i" >>"$f"
        chmod "$mode" "$f"
    done
    CHANGED_COUNT=$count
}

describe_dir() { # DIR LABEL
    local nfiles nlinks ndirs nbytes
    nfiles=$(find "$1" -type f | wc -l)
    nlinks=$(find "$1" -type l | wc -l)
    ndirs=$(find "$1" -type d | wc -l)
    nbytes=$(find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }')
    echo "$2: $1"
    printf '  %d regular files, %d symlinks, %d directories\n' "$nfiles" "$nlinks" "$ndirs"
    printf '  %d bytes in regular files (%.1f MiB)\n' "$nbytes" "$(awk -v b="$nbytes" 'BEGIN { print b / 1048576 }')"
}

describe_trees() {
    describe_dir "$TREE" "Test tree (cold, unchanged)"
    echo "  changed: $CHANGED_COUNT regular files (1%) with a few bytes appended, in a copy"
    describe_dir "$SMALL" "Small-files tree"
}

# Reads every file once so that all tools see a warm page cache.
warm_page_cache() {
    log "reading the source trees once to warm the page cache"
    local d
    for d in "$TREE" "$CHANGED" "$SMALL"; do
        warm "$d"
    done
}

# warm DIR: reads DIR's files again right before a timed command: this VM
# pages out page cache that has not been read for about a minute (DAMON
# reclaim), so a tree read once at the start is partly on disk again by the
# time later runs read it.
warm() { find "$1" -type f -exec cat {} + >/dev/null; }

# Single-quotes a word for the shell (and for rsync's -e, which reads quotes).
quote() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

keygen() { ssh-keygen -q -t ed25519 -N '' -C depot-bench -f "$1" >/dev/null; }

# Starts sshd on a free 127.0.0.1 port with its files in SERVER: a host key, a
# key forced to run SERVER/receive.sh (depot-receive under /usr/bin/time, with
# the repository and usage file the benchmark names in SERVER/receive.next)
# and a plain key for rsync. Sets PORT, SSHD_PID, SSH_DEPOT and SSH_RSYNC.
start_sshd() {
    log "starting $SSHD on 127.0.0.1"
    rm -rf "$SERVER"
    mkdir -p "$SERVER/state"
    if [[ $(id -u) -eq 0 && ! -d /run/sshd ]]; then
        # sshd running as root insists on its privilege separation directory.
        mkdir -p /run/sshd
        chmod 755 /run/sshd
    fi
    keygen "$SERVER/host_ed25519"
    keygen "$SERVER/key-depot"
    keygen "$SERVER/key-rsync"
    USER_NAME=$(id -un)
    cat >"$SERVER/receive.sh" <<EOF
#!/bin/sh
# Written by scripts/bench-push.sh; sshd runs it for the depot key. Line 1 of
# receive.next names the repository, line 2 the file /usr/bin/time writes
# depot-receive's peak RSS (KiB), wall, user and system seconds to.
{ read -r repo; read -r usage; } <'$SERVER/receive.next'
exec $TIME -o "\$usage" -f '%M %e %U %S' '$RECEIVE' --repo "\$repo" --allow-ref '**' --key-id bench --state-dir '$SERVER/state' --min-free-space 0
EOF
    chmod +x "$SERVER/receive.sh"
    {
        echo "restrict,command=\"'$SERVER/receive.sh'\" $(<"$SERVER/key-depot.pub")"
        cat "$SERVER/key-rsync.pub"
    } >"$SERVER/authorized_keys"
    local attempt config=$SERVER/sshd_config slog=$SERVER/sshd.log i
    for attempt in 1 2 3 4 5; do
        PORT=$((20000 + RANDOM % 40000))
        cat >"$config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $SERVER/host_ed25519
PidFile $SERVER/sshd.pid
AuthorizedKeysFile $SERVER/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers $USER_NAME
PermitUserEnvironment no
X11Forwarding no
PrintMotd no
EOF
        "$SSHD" -t -f "$config" || die "$SSHD rejects its config $config"
        "$SSHD" -D -e -f "$config" </dev/null >/dev/null 2>"$slog" &
        SSHD_PID=$!
        for ((i = 0; i < 200; i++)); do
            grep -q "Server listening on 127.0.0.1 port $PORT" "$slog" && break
            kill -0 "$SSHD_PID" 2>/dev/null || break
            sleep 0.05
        done
        if grep -q "Server listening on 127.0.0.1 port $PORT" "$slog"; then
            break
        fi
        kill "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
        SSHD_PID=
        log "sshd did not start on port $PORT (attempt $attempt): $(tail -n 3 "$slog" | tr '\n' ' ')"
    done
    [[ -n $SSHD_PID ]] || die "sshd would not start; see $slog"
    echo "[127.0.0.1]:$PORT $(cut -d' ' -f1-2 "$SERVER/host_ed25519.pub")" >"$SERVER/known_hosts"
    local opts="-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile=$(quote "$SERVER/known_hosts") -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR"
    SSH_DEPOT="ssh $opts -i $(quote "$SERVER/key-depot")"
    SSH_RSYNC="ssh $opts -i $(quote "$SERVER/key-rsync") -p $PORT"
    # The plain key logs in and runs commands (and the host key is the one known).
    sh -c "$SSH_RSYNC"' "$@"' ssh "$USER_NAME@127.0.0.1" true ||
        die "ssh with the plain key to 127.0.0.1:$PORT failed; see $slog"
}

stop_sshd() {
    if [[ -n ${SSHD_PID:-} ]]; then
        kill "$SSHD_PID" 2>/dev/null || true
        wait "$SSHD_PID" 2>/dev/null || true
        SSHD_PID=
    fi
}

on_exit() {
    local rc=$?
    stop_sshd
    if ((rc != 0)) && [[ -d ${BENCH_DIRS:-} ]]; then
        echo "bench-push: the repositories and directories are left in $BENCH_DIRS for a look; the next invocation removes them" >&2
    fi
}

# timed NAME CMD...: syncs, then runs CMD under /usr/bin/time. Sets T_WALL,
# T_CPU (user + sys, waited-for children included) and T_RSS (KiB) and leaves
# CMD's stdout in RESULTS/NAME.out.
timed() {
    local name=$1 user sys
    shift
    sync
    if ! $TIME -f '%e %U %S %M' -o "$RESULTS/$name.time" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.err"; then
        echo "bench-push: '$*' failed; its stderr:" >&2
        cat "$RESULTS/$name.err" >&2
        echo "bench-push: its stdout:" >&2
        cat "$RESULTS/$name.out" >&2
        echo "bench-push: the end of the sshd log ($SERVER/sshd.log):" >&2
        tail -n 20 "$SERVER/sshd.log" >&2
        die "$name failed"
    fi
    read -r T_WALL user sys T_RSS < <(tail -n 1 "$RESULTS/$name.time")
    T_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
}

# server_usage FILE: waits for the server side's /usr/bin/time line in FILE
# (written when the server process exits, maybe just after the client did).
# Sets S_RSS (KiB) and S_CPU.
server_usage() {
    local file=$1 i line rss wall user sys
    for ((i = 0; i < 600; i++)); do
        if [[ -s $file ]]; then
            line=$(tail -n 1 "$file")
            read -r rss wall user sys <<<"$line"
            if [[ -n ${sys:-} ]]; then
                S_RSS=$rss
                S_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
                return
            fi
        fi
        sleep 0.05
    done
    die "the server side never wrote its usage to $file; see $SERVER/sshd.log"
}

# record NAME SERVER_RSS SERVER_CPU BYTES_SENT: one line of RESULTS/times.
record() {
    echo "$1 $T_WALL $T_CPU $T_RSS $2 $3 $4" >>"$RESULTS/times"
}

# Writes [archive] zlib-level into a fresh repository's config when asked to.
set_zlib_level() {
    [[ -z $ZLIB_LEVEL ]] || printf '\n[archive]\nzlib-level=%s\n' "$ZLIB_LEVEL" >>"$1/config"
}
depot_init() { "$DEPOT" init "$1" >/dev/null && set_zlib_level "$1"; }
ostree_init() { ostree init --mode=archive --repo="$1" >/dev/null && set_zlib_level "$1"; }

# depot_push NAME REPO DIR: pushes DIR to ref REF of the server repository REPO.
depot_push() {
    local name=$1 repo=$2 dir=$3 usage=$RESULTS/$1.server
    warm "$dir"
    printf '%s\n%s\n' "$repo" "$usage" >"$SERVER/receive.next"
    timed "$name" "$DEPOT" push --to "ssh://$USER_NAME@127.0.0.1:$PORT$repo" --ref "$REF" \
        -s s --timestamp "$TIMESTAMP" --ssh-command "$SSH_DEPOT" --json --no-progress "$dir"
    grep -q '"ok": *true' "$RESULTS/$name.out" || die "$name: depot push did not report ok: $(cat "$RESULTS/$name.out")"
    server_usage "$usage"
    record "$name" "$S_RSS" "$S_CPU" "$(sed -n 's/.*"bytes_sent": *\([0-9]*\).*/\1/p' "$RESULTS/$name.out")"
}

# rsync_push NAME DEST DIR: rsync -a DIR/ to DEST/ through sshd, with the
# server side under /usr/bin/time.
rsync_push() {
    local name=$1 dest=$2 dir=$3 usage=$RESULTS/$1.server
    warm "$dir"
    timed "$name" rsync -a --stats -e "$SSH_RSYNC" \
        --rsync-path="$TIME -o $(quote "$usage") -f '%M %e %U %S' rsync" \
        "$dir/" "$USER_NAME@127.0.0.1:$dest/"
    server_usage "$usage"
    record "$name" "$S_RSS" "$S_CPU" "$(sed -n 's/^Total bytes sent: *\([0-9,]*\).*/\1/p' "$RESULTS/$name.out" | tr -d ,)"
}

# ostree_local NAME REPO DIR: ostree commit of DIR into the local REPO.
ostree_local() {
    local name=$1 repo=$2 dir=$3
    warm "$dir"
    timed "$name" ostree --repo="$repo" commit -b "$REF" -s s --timestamp="$TIMESTAMP" "$dir"
    record "$name" - - -
}

# The scenarios, as TOOL RUN; a run's repositories live in BENCH_DIRS/RUN.
cold_depot() { depot_push "cold-depot-$1" "$BENCH_DIRS/$1/depot" "$TREE"; }
cold_rsync() { rsync_push "cold-rsync-$1" "$BENCH_DIRS/$1/rsync" "$TREE"; }
cold_ostree() { ostree_local "cold-ostree-$1" "$BENCH_DIRS/$1/ostree" "$TREE"; }
unchanged_depot() { depot_push "unchanged-depot-$1" "$BENCH_DIRS/$1/depot" "$TREE"; }
unchanged_rsync() { rsync_push "unchanged-rsync-$1" "$BENCH_DIRS/$1/rsync" "$TREE"; }
changed_depot() { depot_push "changed-depot-$1" "$BENCH_DIRS/$1/depot" "$CHANGED"; }
changed_rsync() { rsync_push "changed-rsync-$1" "$BENCH_DIRS/$1/rsync" "$CHANGED"; }
small_depot() { depot_push "small-depot-$1" "$BENCH_DIRS/$1/small-depot" "$SMALL"; }
small_rsync() { rsync_push "small-rsync-$1" "$BENCH_DIRS/$1/small-rsync" "$SMALL"; }

run_benchmarks() {
    rm -rf "$RESULTS"
    mkdir -p "$RESULTS" "$BENCH_DIRS"
    local run dir pair cold tool
    for ((run = 1; run <= RUNS; run++)); do
        if ((run % 2)); then
            pair=(depot rsync) cold=(depot rsync ostree)
        else
            pair=(rsync depot) cold=(ostree rsync depot)
        fi
        log "run $run/$RUNS (${pair[0]} first)"
        dir=$BENCH_DIRS/$run
        mkdir -p "$dir"
        depot_init "$dir/depot"
        depot_init "$dir/small-depot"
        ostree_init "$dir/ostree"
        for tool in "${cold[@]}"; do "cold_$tool" "$run"; done
        for tool in "${pair[@]}"; do "unchanged_$tool" "$run"; done
        for tool in "${pair[@]}"; do "changed_$tool" "$run"; done
        for tool in "${pair[@]}"; do "small_$tool" "$run"; done
        if ((run == 1)); then verify; fi
    done
}

# The commit a push moved the ref to, from its JSON output.
pushed_commit() { sed -n 's/.*"new": *"\([0-9a-f]*\)".*/\1/p' "$RESULTS/$1.out" | head -n 1; }

# check_checkout REPO COMMIT SOURCE LABEL: checks out COMMIT and compares it
# with SOURCE; sets CHECK[LABEL].
check_checkout() {
    local repo=$1 commit=$2 src=$3 label=$4 out=$BENCH_DIRS/verify/$4 log=$RESULTS/verify-$4.log
    if [[ -z $commit ]]; then
        CHECK[$label]="FAIL (no commit in the push's output)"
    elif ! ostree --repo="$repo" checkout -U "$commit" "$out" >"$log" 2>&1; then
        CHECK[$label]="FAIL (ostree checkout failed; see $log)"
    elif ! diff -r --no-dereference "$src" "$out" >>"$log" 2>&1; then
        CHECK[$label]="FAIL (checkout differs from $src; see $log)"
    else
        CHECK[$label]="OK (commit $commit)"
    fi
}

# After run 1: the server repositories pass ostree fsck, and a checkout of
# each pushed commit equals what was pushed.
verify() {
    log "verifying run 1's server repositories (ostree fsck, checkout and diff)"
    mkdir -p "$BENCH_DIRS/verify"
    local repo
    for repo in depot small-depot; do
        if ostree fsck --repo="$BENCH_DIRS/1/$repo" >"$RESULTS/verify-fsck-$repo.log" 2>&1; then
            CHECK[fsck-$repo]=OK
        else
            CHECK[fsck-$repo]="FAIL (see $RESULTS/verify-fsck-$repo.log)"
        fi
    done
    check_checkout "$BENCH_DIRS/1/depot" "$(pushed_commit cold-depot-1)" "$TREE" cold
    check_checkout "$BENCH_DIRS/1/depot" "$(pushed_commit changed-depot-1)" "$CHANGED" changed
    check_checkout "$BENCH_DIRS/1/small-depot" "$(pushed_commit small-depot-1)" "$SMALL" small
    local o d
    o=$(tail -n 1 "$RESULTS/cold-ostree-1.out")
    d=$(pushed_commit cold-depot-1)
    if [[ $o == "$d" ]]; then
        CHECK[same]="MATCH ($o)"
    else
        CHECK[same]="differs (ostree commit $o, depot push $d)"
    fi
    CHECK[stored]=$(stored_sizes "$BENCH_DIRS/1/ostree" "$BENCH_DIRS/1/depot")
}

# stored_sizes OSTREE_REPO DEPOT_REPO: the bytes of the content objects of
# OSTREE_REPO, and of the same objects in DEPOT_REPO (which may hold more).
stored_sizes() {
    awk 'NR == FNR { o[$1] = $2; next }
         ($1 in o) { d += $2; t += o[$1]; n++ }
         END { printf "depot %.1f MiB, ostree commit %.1f MiB (the same %d objects)", d / 1048576, t / 1048576, n }' \
        <(cd "$1/objects" && find . -name '*.filez' -printf '%P %s\n') \
        <(cd "$2/objects" && find . -name '*.filez' -printf '%P %s\n')
}

# median SCENARIO TOOL FIELD: FIELD is 2 (wall s), 3 (CPU s), 4 (client peak
# RSS KiB), 5 (server peak RSS KiB), 6 (server CPU s) or 7 (bytes sent).
# Prints - when there are no values.
median() {
    awk -v pre="$1-$2-" -v f="$3" 'index($1, pre) == 1 && $f != "-" { print $f }' "$RESULTS/times" |
        sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# fmt VALUE DIVISOR DECIMALS: VALUE / DIVISOR, or - for -.
fmt() {
    awk -v v="$1" -v d="$2" -v n="$3" 'BEGIN { if (v == "-") print "-"; else printf "%.*f", n, v / d }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-") print "-"; else if (b > 0) printf "%.2f", a / b; else print "inf" }'
}

# The zlib level in a repository's config ([archive] zlib-level), else 6.
repo_zlib_level() {
    local level
    level=$(awk -F= '/^\[/ { s = $0 } s == "[archive]" && $1 ~ /^ *zlib-level *$/ { gsub(/ /, "", $2); print $2 }' "$1/config" | tail -n 1)
    if [[ -n $level ]]; then echo "$level (set in the repository's config)"; else echo "6 (the default: no [archive] zlib-level in the repository's config)"; fi
}

report() {
    local scen tool wall cpu rss srss scpu sent d r goal met kib peak
    local -A label=([cold]="cold" [unchanged]="unchanged" [changed]="1% changed" [small]="small files")
    echo
    echo "Push benchmark: $RUNS runs, medians; depot push vs rsync -a over the same sshd (127.0.0.1:$PORT)."
    echo "Page cache not dropped: each tool's source tree is read right before its timed command (warm for every tool)."
    echo "sync ran before every timed command; rsync does not fsync, depot-receive and ostree commit do."
    echo "Server compression (depot-receive's repositories, and ostree commit's): zlib-level $(repo_zlib_level "$BENCH_DIRS/1/depot")"
    describe_trees
    echo
    echo "Correctness (run 1):"
    printf '  ostree fsck of the server repository:              %s\n' "${CHECK[fsck-depot]}"
    printf '  ostree fsck of the small-files server repository:  %s\n' "${CHECK[fsck-small-depot]}"
    printf '  checkout of the cold push == test tree:            %s\n' "${CHECK[cold]}"
    printf '  checkout of the 1%%-changed push == changed copy:   %s\n' "${CHECK[changed]}"
    printf '  checkout of the small-files push == small tree:    %s\n' "${CHECK[small]}"
    printf '  cold push commit vs ostree commit of the tree:     %s\n' "${CHECK[same]}"
    printf '  content stored by the cold push and ostree commit: %s\n' "${CHECK[stored]}"
    echo
    echo "client: depot push / rsync / ostree commit, with their ssh child; server: depot-receive / rsync --server"
    printf '%-11s %-7s %8s %8s %11s %11s %11s %10s\n' scenario tool "wall s" "CPU s" "client RSS" "server RSS" "server CPU" "MiB sent"
    printf '%-11s %-7s %8s %8s %11s %11s %11s %10s\n' "" "" "" "" "MiB" "MiB" "s" ""
    for scen in cold unchanged changed small; do
        for tool in depot rsync ostree; do
            [[ $tool != ostree || $scen == cold ]] || continue
            wall=$(median "$scen" "$tool" 2)
            cpu=$(median "$scen" "$tool" 3)
            rss=$(median "$scen" "$tool" 4)
            srss=$(median "$scen" "$tool" 5)
            scpu=$(median "$scen" "$tool" 6)
            sent=$(median "$scen" "$tool" 7)
            printf '%-11s %-7s %8s %8s %11s %11s %11s %10s\n' "${label[$scen]}" "$tool" \
                "$(fmt "$wall" 1 2)" "$(fmt "$cpu" 1 2)" "$(fmt "$rss" 1024 1)" "$(fmt "$srss" 1024 1)" \
                "$(fmt "$scpu" 1 2)" "$(fmt "$sent" 1048576 1)"
        done
    done
    echo
    for scen in cold unchanged changed small; do
        d=$(median "$scen" depot 2)
        r=$(ratio "$d" "$(median "$scen" rsync 2)")
        if [[ $scen == cold ]]; then goal=1.0; else goal=1.5; fi
        met=$(awk -v r="$r" -v g="$goal" 'BEGIN { print (r != "inf" && r != "-" && r + 0 <= g + 0) ? "met" : "NOT met" }')
        printf '%-12s depot/rsync median wall = %s (goal <= %s: %s); CPU = %s\n' "${label[$scen]}:" "$r" "$goal" "$met" \
            "$(ratio "$(median "$scen" depot 3)" "$(median "$scen" rsync 3)")"
    done
    printf '%-12s depot/ostree-commit median wall = %s; CPU = %s\n' "cold:" \
        "$(ratio "$(median cold depot 2)" "$(median cold ostree 2)")" \
        "$(ratio "$(median cold depot 3)" "$(median cold ostree 3)")"
    kib=$(awk '$1 ~ /-depot-/ && $5 != "-" && $5 > m { m = $5 } END { print m + 0 }' "$RESULTS/times")
    peak=$(fmt "$kib" 1024 1)
    met=$(awk -v k="$kib" 'BEGIN { print (k < 64 * 1024) ? "met" : "NOT met" }')
    echo "depot-receive peak RSS, highest of all pushes = $peak MiB (goal < 64 MiB: $met)"
    echo
    echo "Raw results (name wall_s cpu_s client_rss_kib server_rss_kib server_cpu_s bytes_sent): $RESULTS/times"
}

cleanup() {
    log "deleting the repositories and directories of all runs"
    rm -rf "$BENCH_DIRS"
    deleted_many
}

main() {
    check_settings
    setup_work_dir
    trap on_exit EXIT
    ensure_tools
    build_depot
    remove_leftovers
    make_tree
    make_small_tree
    make_changed_tree
    describe_trees >&2
    start_sshd
    warm_page_cache
    settle
    declare -gA CHECK=([fsck-depot]="not checked" [fsck-small-depot]="not checked" [cold]="not checked"
        [changed]="not checked" [small]="not checked" [same]="not checked")
    run_benchmarks
    stop_sshd
    report
    cleanup
}

main "$@"
