#!/bin/sh
# Egress benchmark (issue 6): builds nilboxd, nilbox and nilbox-agent in
# build-bench (release), then runs bench/egress/bench.py, which builds (or
# reuses) the tiny image with that agent and times a download inside the VM
# through nilbox and through QEMU user-mode networking. Arguments go to
# bench.py (e.g. --size 64 --runs 3).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 src/daemon/nilboxd src/cli/nilbox src/agent/nilbox-agent >/dev/null
exec /usr/bin/python3 bench/egress/bench.py --build "$B" "$@"
