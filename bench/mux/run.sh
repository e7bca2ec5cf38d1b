#!/bin/sh
# Guest-channel benchmark (issue 3): builds bench_mux in build-bench
# (release) and runs it. Arguments go to bench_mux (e.g. --runs 5).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 bench/bench_mux >/dev/null
exec "$B/bench/bench_mux" "$@"
