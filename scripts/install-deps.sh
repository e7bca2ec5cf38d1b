#!/bin/sh
# Installs the Debian 12 packages nilbox needs to build, test and run.
# Idempotent: installs only what is missing; runs `apt-get update` only when needed.
set -eu

PKGS="build-essential pkg-config meson ninja-build clang llvm libclang-rt-14-dev clang-format
libuv1-dev libssl-dev node-llhttp libjansson-dev libsqlite3-dev sqlite3 libsodium-dev zlib1g-dev
libbrotli-dev libsecret-1-dev curl ca-certificates openssl python3 python3-requests python3-httpx
python3-websocket publicsuffix nodejs openssh-client qemu-system-x86 qemu-utils busybox-static nftables
cpio xz-utils zstd kmod e2fsprogs file mmdebstrap dbus-daemon gnome-keyring"
PKGS="$PKGS python3-boto3 awscli"
PKGS="$PKGS liblua5.4-dev"
PKGS="$PKGS libssh-dev"
PKGS="$PKGS chromium"
PKGS="$PKGS libfuse3-dev fuse3"
PKGS="$PKGS liburing-dev"
PKGS="$PKGS rsync"
PKGS="$PKGS libgtk-3-dev libwebkit2gtk-4.1-dev libnotify-dev xvfb xauth imagemagick python3-gi python3-dbus"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
# npm (for the Node client tests) comes with some Node.js builds; Debian packs it apart.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "nilbox: need root or sudo to install:$missing" >&2; exit 1; }
        SUDO="sudo"
    fi
    echo "nilbox: installing Debian packages:$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has empty lists; a stale one may 404. Update first, once.
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# npm packages the tests use, exactly as locked: installed here, at setup, so that the test suite
# itself never reaches a network. `npm ci` runs again only when the lockfile changed. Every
# folder with a package-lock.json (tests, bench, the web UI) is one such set.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for dir in $(cd "$ROOT" && find tests bench ui -name package-lock.json -not -path '*/node_modules/*' \
    2>/dev/null | xargs -r -n1 dirname | sort); do
    lock="$ROOT/$dir/package-lock.json"
    stamp="$ROOT/$dir/node_modules/.package-lock.json"
    if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
        echo "nilbox: installing npm packages for $dir (from its lockfile)" >&2
        (cd "$ROOT/$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
            { echo "nilbox: npm ci failed in $dir (is the npm registry reachable?)" >&2; exit 1; }
    fi
done
