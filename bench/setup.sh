#!/bin/sh
# Installs what the benchmarks need from Debian's archive, on top of the
# project's own dependencies (scripts/install-deps.sh): Squid with ssl-bump
# (squid-openssl) and mitmproxy, the peers bench/proxy compares against, and
# valgrind for profiles (bench/README.md), and xterm, the terminal `nilbox
# shell` runs in for bench/ui's echo to the screen. Idempotent: installs only
# what is missing, `apt-get update` first. Benchmarks are opt-in, so this is too.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
missing=""
for p in squid-openssl mitmproxy valgrind xterm; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "bench: installing Debian packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
