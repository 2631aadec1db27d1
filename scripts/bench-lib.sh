# bench-lib.sh: what the benchmarks share, sourced by them: the test tree,
# waiting out mass deletions, and installing a missing tool.
#
# Builds $TREE (set by the caller, with $WORK, log and optionally
# DELETED_STAMP) from SOURCES: regular files under MAX_FILE_SIZE and symlinks
# (kept as symlinks), in sorted order, until MAX_FILES entries; a file that
# would take the total past MAX_BYTES is skipped, so that the tree has both
# (the issues ask for about 450 MB in 14,000 files). A source's layout is
# kept: /usr/share/doc/x/y becomes TREE/usr/share/doc/x/y. A marker file lets
# later runs reuse it.

MAX_BYTES=${BENCH_MAX_BYTES:-450000000}
MAX_FILES=${BENCH_MAX_FILES:-14000}
MAX_FILE_SIZE=$((8 * 1024 * 1024)) # copy only files under 8 MiB
SOURCES=(/usr/lib/x86_64-linux-gnu /usr/share)

make_tree() {
    local marker=$WORK/tree.done want="skip-past-max-bytes sources=${SOURCES[*]} max_bytes=$MAX_BYTES max_files=$MAX_FILES max_file_size=$MAX_FILE_SIZE"
    if [[ -d $TREE && -f $marker && $(<"$marker") == "$want" ]]; then
        log "reusing the test tree in $TREE"
        return
    fi
    log "building the test tree in $TREE"
    if [[ -e $TREE ]]; then
        rm -rf "$TREE" "$marker"
        # A caller that tracks mass deletions (see bench-push.sh) is told.
        if [[ -n ${DELETED_STAMP:-} ]]; then deleted_many; fi
    fi
    mkdir -p "$TREE"
    local src list size type path files=0 bytes=0 full=0
    for src in "${SOURCES[@]}"; do
        [[ -d $src ]] || { log "skipping missing source $src"; continue; }
        list=$WORK/tree.list
        : >"$list"
        while IFS=$'\t' read -r -d '' size type path; do
            [[ $type == l || $size -lt $MAX_FILE_SIZE ]] || continue
            [[ $type == l ]] && size=0 # a symlink adds an entry, not bytes
            if ((files + 1 > MAX_FILES)); then
                full=1
                break
            fi
            ((bytes + size <= MAX_BYTES)) || continue
            files=$((files + 1))
            bytes=$((bytes + size))
            printf '%s\0' "$path" >>"$list"
        done < <(find "$src" \( -type l -o \( -type f -readable \) \) -printf '%s\t%y\t%P\0' | LC_ALL=C sort -z -t $'\t' -k3)
        mkdir -p "$TREE$src"
        tar -C "$src" --null --no-recursion -T "$list" -cf - | tar -C "$TREE$src" -xf -
        rm -f "$list"
        ((full == 0)) || break
    done
    if ((full == 0)); then
        log "note: the sources ran out before the limits ($MAX_FILES entries, $MAX_BYTES bytes)"
    fi
    echo "$want" >"$marker"
}

# Installs a Debian package with apt-get (as root, or through sudo -n).
apt_install() {
    local pkg=$1 sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "'$pkg' is missing and I am not root; install it with: apt-get install $pkg"
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null || die "'$pkg' is missing and apt-get is not available; install it by hand"
    log "installing $pkg with apt-get"
    if ! "${sudo[@]}" apt-get install -y -q "$pkg" >&2; then
        "${sudo[@]}" apt-get update -q >&2 || true
        "${sudo[@]}" apt-get install -y -q "$pkg" >&2 ||
            die "could not install '$pkg'; install it with: apt-get install $pkg"
    fi
}

# ext4 without a journal skips inodes deleted in the last 60 s (360 s while
# their inode table block is dirty).
SETTLE_SECONDS=370

# Notes in DELETED_STAMP (set by the caller) that many files were just
# deleted (see settle).
deleted_many() {
    sync
    date +%s >"$DELETED_STAMP"
}

# Waits until the last mass deletion (this invocation's or an earlier one's)
# is SETTLE_SECONDS past: ext4 without a journal will not reuse an inode
# deleted in the last 60 s (360 s when its inode table block is dirty, as it
# is while files are being created) and scans past them, which makes creating
# many files right after deleting many much slower.
settle() {
    [[ -f $DELETED_STAMP ]] || return 0
    local then now wait
    then=$(<"$DELETED_STAMP")
    now=$(date +%s)
    wait=$((then + SETTLE_SECONDS - now))
    if ((wait > 0)); then
        log "waiting ${wait}s: many files were deleted at $(date -d "@$then" +%T), and ext4 without a journal does not reuse recently deleted inodes"
        sleep "$wait"
    fi
}

