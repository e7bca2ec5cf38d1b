#!/bin/sh
# Egress proxy benchmark (issues 5 and 10): builds nilboxd, nilbox and the
# bench programs in build-bench (release), then runs bench/proxy/bench.py,
# which measures direct vs `nilbox proxy` vs Squid (ssl-bump) vs mitmdump
# against one local HTTPS upstream and prints the ratios. bench/setup.sh
# installs Squid and mitmproxy (a peer that is missing is skipped).
# Arguments go to bench.py (e.g. --secs 10 --conns 8 --rounds 5).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 src/daemon/nilboxd src/cli/nilbox bench/bench_proxy_upstream \
    bench/bench_proxy_client >/dev/null
exec /usr/bin/python3 bench/proxy/bench.py --build "$B" "$@"
