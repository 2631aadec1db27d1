# bench-lib.sh: what the benchmarks share, sourced by them: the test tree
# and installing a missing tool.
#
# Builds $TREE (set by the caller, with $WORK, log and optionally
# deleted_many) from SOURCES: regular files under MAX_FILE_SIZE and symlinks
# (kept as symlinks), in sorted order, until MAX_FILES entries or MAX_BYTES
# bytes would be exceeded. A source's layout is kept: /usr/share/doc/x/y
# becomes TREE/usr/share/doc/x/y. A marker file lets later runs reuse it.

MAX_BYTES=${BENCH_MAX_BYTES:-400000000}
MAX_FILES=${BENCH_MAX_FILES:-14000}
MAX_FILE_SIZE=$((4 * 1024 * 1024)) # copy only files under 4 MiB
SOURCES=(/usr/lib/x86_64-linux-gnu /usr/share)

make_tree() {
    local marker=$WORK/tree.done want="sources=${SOURCES[*]} max_bytes=$MAX_BYTES max_files=$MAX_FILES max_file_size=$MAX_FILE_SIZE"
    if [[ -d $TREE && -f $marker && $(<"$marker") == "$want" ]]; then
        log "reusing the test tree in $TREE"
        return
    fi
    log "building the test tree in $TREE"
    if [[ -e $TREE ]]; then
        rm -rf "$TREE" "$marker"
        # A caller that tracks mass deletions (see bench-push.sh) is told.
        if declare -F deleted_many >/dev/null; then deleted_many; fi
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
            if ((files + 1 > MAX_FILES || bytes + size > MAX_BYTES)); then
                full=1
                break
            fi
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
