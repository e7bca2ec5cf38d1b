#!/bin/sh
# bench/blocklist: the DNS blocklist filter at 1 million names (issue 12).
#   bench/blocklist/run.sh [BUILD_DIR] [--names N] [--runs R]
# Builds bench_blocklist if needed and runs it under nice (the machine is
# shared). See bench/README.md for what it measures and the last results.
set -eu
build=${1:-build}
[ $# -gt 0 ] && shift
ninja -C "$build" bench/bench_blocklist >/dev/null
exec nice "$build/bench/bench_blocklist" "$@"
