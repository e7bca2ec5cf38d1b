#!/bin/sh
# bench/mcp: MCP tool-call round trip through the bridge vs direct (bench.py).
# usage: bench/mcp/run.sh [BUILD] [--calls N] [--rounds R]
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$(dirname "$HERE")")
BUILD=${1:-$ROOT/build}
[ $# -gt 0 ] && shift
ninja -C "$BUILD" src/daemon/nilboxd src/cli/nilbox src/agent/nilbox-agent tests/mcp_testsrv >/dev/null
exec python3 "$HERE/bench.py" "$BUILD" "$@"
