#!/bin/sh
# LLM usage accounting benchmark (issue 11): builds nilboxd, nilbox and
# bench_usage in build-bench (release), then runs bench/usage/bench.py:
# accounting on vs off through one `nilbox proxy`, same fake OpenAI
# upstream, same run (SSE and JSON throughput, added latency, CPU).
# Arguments go to bench.py (e.g. --secs 5 --rounds 5 --events 100).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 src/daemon/nilboxd src/cli/nilbox bench/bench_usage >/dev/null
exec /usr/bin/python3 bench/usage/bench.py --build "$B" "$@"
