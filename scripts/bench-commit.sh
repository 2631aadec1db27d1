#!/usr/bin/env bash
# bench-commit.sh: `depot commit` against `ostree commit`, side by side.
#
# What it measures
#   Both tools commit the same test tree (copied from /usr/lib/x86_64-linux-gnu
#   and /usr/share) into an archive-mode repository:
#     cold  a fresh repository: every object is compressed and written.
#     warm  the same tree again into the same repository under another ref:
#           every object already exists, only the commit object is new.
#   For each, /usr/bin/time gives wall seconds, CPU seconds (user + sys) and
#   peak RSS. Within a run the ostree and depot commits are interleaved (and
#   which goes first alternates between runs) so that machine noise hits both.
#   The page cache is not dropped: the source tree is read once before the first
#   run, so both tools read it from a warm cache. The table shows medians over
#   the runs, the depot/ostree ratio of median wall time, and the goals
#   (cold <= 0.5, warm <= 0.1). It also checks once that depot and ostree give
#   the same commit checksum.
#
# How to run (from anywhere; it builds depot itself)
#   scripts/bench-commit.sh
#
# Settings (environment)
#   BENCH_WORK       work directory (default: bench-work/ at the repo root).
#                    The tree, the repositories and the raw results live here;
#                    nothing is written outside it (except cargo's target/).
#   BENCH_RUNS       number of runs (default 5)
#   BENCH_MAX_BYTES  size limit of the test tree in bytes (default 450000000)
#   BENCH_MAX_FILES  entry limit of the test tree (default 14000)
#   The tree is kept between invocations and reused while its limits match;
#   delete BENCH_WORK/tree to rebuild it.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-5}
# MAX_BYTES, MAX_FILES, MAX_FILE_SIZE, SOURCES, make_tree and apt_install.
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
TIMESTAMP=@1577836800
TIME=/usr/bin/time

die() {
    echo "bench-commit: error: $*" >&2
    exit 1
}

log() {
    echo "==> $*" >&2
}

check_settings() {
    local v
    for v in RUNS MAX_BYTES MAX_FILES; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "BENCH_$v must be a positive integer, got '${!v}'"
    done
}

# Sets WORK to the absolute path of the work directory and creates it.
setup_work_dir() {
    local dir=${BENCH_WORK:-$ROOT/bench-work}
    [[ -n $dir ]] || die "BENCH_WORK is empty"
    mkdir -p "$dir"
    WORK=$(cd "$dir" && pwd)
    [[ $WORK != / ]] || die "BENCH_WORK must not be /"
    TREE=$WORK/tree
    REPOS=$WORK/repos
    RESULTS=$WORK/results
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
}

build_depot() {
    log "building depot (release)"
    (cd "$ROOT" && cargo build --release --bin depot) >&2 || die "cargo build failed"
    DEPOT=${CARGO_TARGET_DIR:-$ROOT/target}/release/depot
    [[ $DEPOT == /* ]] || DEPOT=$ROOT/$DEPOT
    [[ -x $DEPOT ]] || die "built depot not found at $DEPOT"
}

describe_tree() {
    local nfiles nlinks ndirs nbytes
    nfiles=$(find "$TREE" -type f | wc -l)
    nlinks=$(find "$TREE" -type l | wc -l)
    ndirs=$(find "$TREE" -type d | wc -l)
    nbytes=$(find "$TREE" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s }')
    echo "Test tree: $TREE"
    printf '  %d regular files, %d symlinks, %d directories\n' "$nfiles" "$nlinks" "$ndirs"
    printf '  %d bytes in regular files (%.1f MiB)\n' "$nbytes" "$(awk -v b="$nbytes" 'BEGIN { print b / 1048576 }')"
}

# Reads every file once so that both tools see a warm page cache.
warm_page_cache() {
    log "reading the tree once to warm the page cache"
    find "$TREE" -type f -exec cat {} + >/dev/null
}

# timed NAME CMD...: runs CMD under /usr/bin/time. Appends "NAME wall cpu rss_kb"
# to RESULTS/times and leaves CMD's stdout in RESULTS/NAME.out.
timed() {
    local name=$1 wall user sys rss
    shift
    if ! $TIME -f '%e %U %S %M' -o "$RESULTS/$name.time" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.err"; then
        echo "bench-commit: '$*' failed; its stderr:" >&2
        cat "$RESULTS/$name.err" >&2
        die "$name failed"
    fi
    read -r wall user sys rss < <(tail -n 1 "$RESULTS/$name.time")
    echo "$name $wall $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') $rss" >>"$RESULTS/times"
}

ostree_init() { ostree init --mode=archive --repo="$1" >/dev/null; }
depot_init() { "$DEPOT" init "$1" >/dev/null; }

ostree_commit() { # REPO REF NAME
    timed "$3" ostree --repo="$1" commit -b "$2" -s s --timestamp="$TIMESTAMP" "$TREE"
}
depot_commit() { # REPO REF NAME
    timed "$3" "$DEPOT" commit --repo "$1" --ref "$2" -s s --timestamp "$TIMESTAMP" "$TREE"
}

# cold_commit TOOL RUN: commit the tree into a fresh repository (ref bench).
cold_commit() {
    local tool=$1 run=$2 repo=$REPOS/$1
    rm -rf "$repo"
    "${tool}_init" "$repo"
    "${tool}_commit" "$repo" bench "cold-$tool-$run"
}
# warm_commit TOOL RUN: commit the same tree again into that repository under
# ref bench2 (a new commit object, because the ref binding differs).
warm_commit() {
    local tool=$1 run=$2
    "${tool}_commit" "$REPOS/$tool" bench2 "warm-$tool-$run"
}

run_benchmarks() {
    rm -rf "$REPOS" "$RESULTS"
    mkdir -p "$REPOS" "$RESULTS"
    local run first second
    for ((run = 1; run <= RUNS; run++)); do
        if ((run % 2)); then first=ostree second=depot; else first=depot second=ostree; fi
        log "run $run/$RUNS ($first first)"
        cold_commit "$first" "$run"
        cold_commit "$second" "$run"
        warm_commit "$first" "$run"
        warm_commit "$second" "$run"
        if ((run == 1)); then check_checksums; fi
        rm -rf "$REPOS/ostree" "$REPOS/depot"
    done
    rm -rf "$REPOS"
}

check_checksums() {
    local kind o d
    for kind in cold warm; do
        o=$(tail -n 1 "$RESULTS/$kind-ostree-1.out")
        d=$(tail -n 1 "$RESULTS/$kind-depot-1.out")
        if [[ $o == "$d" ]]; then
            CHECK[$kind]="MATCH ($o)"
        else
            CHECK[$kind]="MISMATCH (ostree $o, depot $d)"
        fi
    done
}

# median KIND TOOL FIELD: FIELD is 2 (wall s), 3 (CPU s) or 4 (peak RSS KB).
median() {
    awk -v pre="$1-$2-" -v f="$3" 'index($1, pre) == 1 { print $f }' "$RESULTS/times" |
        sort -n |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

report() {
    local kind tool wall cpu rss o d ratio goal met
    echo
    echo "Commit benchmark: $RUNS runs, medians; page cache not dropped (source tree warm for both)."
    describe_tree
    echo
    echo "Commit checksum, cold: ${CHECK[cold]}"
    echo "Commit checksum, warm: ${CHECK[warm]}"
    echo
    printf '%-6s %-7s %10s %10s %14s\n' kind tool "wall s" "CPU s" "peak RSS MiB"
    for kind in cold warm; do
        for tool in ostree depot; do
            wall=$(median "$kind" "$tool" 2)
            cpu=$(median "$kind" "$tool" 3)
            rss=$(median "$kind" "$tool" 4)
            printf '%-6s %-7s %10.2f %10.2f %14.1f\n' "$kind" "$tool" "$wall" "$cpu" \
                "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
        done
    done
    echo
    for kind in cold warm; do
        o=$(median "$kind" ostree 2)
        d=$(median "$kind" depot 2)
        if [[ $kind == cold ]]; then goal=0.5; else goal=0.1; fi
        ratio=$(awk -v o="$o" -v d="$d" 'BEGIN { if (o > 0) printf "%.3f", d / o; else print "inf" }')
        met=$(awk -v r="$ratio" -v g="$goal" 'BEGIN { print (r != "inf" && r + 0 <= g + 0) ? "met" : "NOT met" }')
        printf '%s: depot/ostree median wall = %s (goal <= %s: %s)\n' "$kind" "$ratio" "$goal" "$met"
    done
    echo
    echo "Raw times (name wall_s cpu_s peak_rss_kb): $RESULTS/times"
}

main() {
    check_settings
    setup_work_dir
    ensure_tools
    build_depot
    make_tree
    describe_tree >&2
    warm_page_cache
    declare -gA CHECK=([cold]="not checked" [warm]="not checked")
    run_benchmarks
    report
}

main "$@"
