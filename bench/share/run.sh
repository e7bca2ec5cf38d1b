#!/bin/sh
# Folder mapping benchmark (issue 13): builds nilboxd, nilbox, nilbox-agent
# and the guest workload share_io in build-bench (release), then runs
# bench/share/bench.py: sequential read/write and small-file create/stat in
# the guest through `nilbox share` versus QEMU's virtio-9p, same VM.
# Arguments go to bench.py (e.g. --size 64 --files 2000 --runs 3).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 src/daemon/nilboxd src/cli/nilbox src/agent/nilbox-agent bench/share_io >/dev/null
exec /usr/bin/python3 bench/share/bench.py --build "$B" "$@"
