#!/bin/sh
# Boot-time benchmark (issue 4): builds nb_vmrun and the tiny image (both
# cached under build-bench/), then runs bench/boot/boot.py, which prints the
# boot-to-ready times, the bare-boot baseline measured in the same run, and
# their ratio (and boot -> first exec through the agent when nilbox-agent and
# tests/muxc build, and `nilbox vm start` -> ready agent through nilboxd).
# Arguments are passed to boot.py (e.g. --runs 5).
set -eu
cd "$(dirname "$0")/../.."
B=build-bench
[ -f "$B/build.ninja" ] || meson setup "$B" -Dbuildtype=release >/dev/null
ninja -C "$B" -j2 tests/nb_vmrun >/dev/null
bash images/tiny/build.sh --out "$B/bench-images/tiny" --cache "$B/bench-images/debs" --no-agent >&2
set -- --vmrun "$B/tests/nb_vmrun" --image "$B/bench-images/tiny" "$@"
# With the agent and the nbmux host client, also time boot -> first exec.
if ninja -C "$B" -j2 src/agent/nilbox-agent tests/muxc >/dev/null 2>&1; then
    bash images/tiny/build.sh --out "$B/bench-images/tiny-agent" --cache "$B/bench-images/debs" \
        --agent "$B/src/agent/nilbox-agent" >&2
    set -- "$@" --agent-image "$B/bench-images/tiny-agent" --muxc "$B/tests/muxc"
    # And `nilbox vm start` through the daemon's VM manager, same image.
    if ninja -C "$B" -j2 src/daemon/nilboxd src/cli/nilbox >/dev/null 2>&1; then
        set -- "$@" --nilbox "$B/src/cli/nilbox"
    fi
fi
exec python3 bench/boot/boot.py "$@"
