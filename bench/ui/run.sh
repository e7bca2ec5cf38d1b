#!/bin/sh
# bench/ui: the web UI's first meaningful paint (cold cache), bundle size, and
# terminal keystroke echo latency through the UI against `nilbox shell` in the
# same VM (bench.py, ui.mjs).
# usage: bench/ui/run.sh [BUILD] [--runs N] [--keys N] [--rounds R] [--screen]
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$(dirname "$HERE")")
BUILD=${1:-$ROOT/build}
[ $# -gt 0 ] && shift
ninja -C "$BUILD" src/daemon/nilboxd src/cli/nilbox src/agent/nilbox-agent >/dev/null
exec python3 "$HERE/bench.py" "$BUILD" "$@"
