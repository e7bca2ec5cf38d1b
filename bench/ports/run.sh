#!/bin/sh
# Port mapping benchmark (issue 13): builds nilboxd, nilbox and nilbox-agent
# in build-bench (release), then runs bench/ports/bench.py, which builds (or
# reuses) the tiny image with that agent and compares an HTTP server in the
# VM reached through `nilbox port add` and through QEMU's hostfwd, same VM.
# Arguments go to bench.py (e.g. --size 32 --runs 3 --requests 200).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 src/daemon/nilboxd src/cli/nilbox src/agent/nilbox-agent >/dev/null
exec /usr/bin/python3 bench/ports/bench.py --build "$B" "$@"
