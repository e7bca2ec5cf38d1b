# Shared helpers for the image build scripts (sourced by bash).
#
# Nothing here needs root: the kernel comes from `apt-get download` (the
# package is unpacked with dpkg-deb, never installed), archives are written
# by mkcpio.py, file systems by `mke2fs -d`.

NB_STEP=0
NB_STEPS=1

nb_say() { printf '%s\n' "$*" >&2; }
nb_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
# nb_step MESSAGE: numbered progress line "[3/8] MESSAGE".
nb_step() {
    NB_STEP=$((NB_STEP + 1))
    printf '[%d/%d] %s\n' "$NB_STEP" "$NB_STEPS" "$*" >&2
}
nb_need() {
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || nb_die "'$c' not found (run scripts/install-deps.sh)"
    done
}
nb_sha256() { sha256sum "$1" | cut -d' ' -f1; }
nb_pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# nb_apt_update: refreshes apt's package lists once per build, when we are
# root (a normal user is told to do it instead). 0 if it ran.
NB_APT_UPDATED=0
nb_apt_update() {
    [ "$NB_APT_UPDATED" = 0 ] && [ "$(id -u)" = 0 ] || return 1
    NB_APT_UPDATED=1
    nb_say "refreshing apt package lists (apt-get update)"
    apt-get update -qq >&2 || return 1
}

# nb_kernel_resolve [DEB]: sets NB_KPKG (package name), NB_KDEB_VERSION and
# NB_KID (a string that changes whenever the kernel bits change). With DEB
# given, uses that file instead of asking apt.
nb_kernel_resolve() {
    if [ -n "${1:-}" ]; then
        [ -f "$1" ] || nb_die "kernel package $1 not found"
        NB_KPKG=$(dpkg-deb -f "$1" Package)
        NB_KDEB_VERSION=$(dpkg-deb -f "$1" Version)
        NB_KID="$NB_KPKG $NB_KDEB_VERSION $(nb_sha256 "$1")"
        return
    fi
    nb_need apt-cache apt-get dpkg-deb
    # linux-image-amd64 is a metapackage: its dependency names the real
    # package (linux-image-6.1.0-NN-amd64).
    NB_KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    if [ -z "$NB_KPKG" ] && nb_apt_update; then
        NB_KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$NB_KPKG" ] || nb_die "apt does not know linux-image-amd64: run 'apt-get update' (as root) first"
    NB_KDEB_VERSION=$(apt-cache policy "$NB_KPKG" | awk '/Candidate:/ { print $2; exit }')
    [ -n "$NB_KDEB_VERSION" ] && [ "$NB_KDEB_VERSION" != "(none)" ] ||
        nb_die "no candidate version for $NB_KPKG"
    NB_KID="$NB_KPKG $NB_KDEB_VERSION"
}

# nb_kernel_fetch CACHE_DIR [DEB]: prints the path of the kernel .deb,
# downloading it into CACHE_DIR when not there yet.
nb_kernel_fetch() {
    local cache=$1 deb
    if [ -n "${2:-}" ]; then
        printf '%s\n' "$2"
        return
    fi
    mkdir -p "$cache"
    deb=$(ls "$cache/${NB_KPKG}_${NB_KDEB_VERSION//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$deb" ]; then
        # apt-get download writes into the current folder; as root it warns
        # that the _apt user cannot write there, which is harmless.
        (cd "$cache" && apt-get download -q "$NB_KPKG=$NB_KDEB_VERSION" 2>&1 |
            grep -v -e 'unsandboxed' -e '^Get:' >&2) || true
        deb=$(ls "$cache/${NB_KPKG}_${NB_KDEB_VERSION//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
        if [ -z "$deb" ] && nb_apt_update; then
            # Stale package lists name a version the archive no longer has.
            nb_kernel_resolve
            (cd "$cache" && apt-get download -q "$NB_KPKG=$NB_KDEB_VERSION" 2>&1 |
                grep -v -e 'unsandboxed' -e '^Get:' >&2) || true
            deb=$(ls "$cache/${NB_KPKG}_${NB_KDEB_VERSION//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
        fi
        [ -n "$deb" ] || nb_die "could not download $NB_KPKG $NB_KDEB_VERSION (is the apt archive reachable?)"
    fi
    printf '%s\n' "$deb"
}

# nb_tree_hash DIR...: one hash over the paths, modes and contents of every
# file below the given folders (or of the given files).
nb_tree_hash() {
    local f
    find "$@" \( -type f -o -type l \) -print | LC_ALL=C sort | while read -r f; do
        printf '%s %s ' "$f" "$(stat -c %a "$f")"
        if [ -L "$f" ]; then readlink "$f"; else nb_sha256 "$f"; fi
    done | sha256sum | cut -d' ' -f1
}
