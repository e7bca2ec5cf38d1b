#!/bin/sh
# Sets up and runs nilbox on this machine (the README's main command):
#   1. installs missing Debian packages (scripts/install-deps.sh),
#   2. builds into build/,
#   3. starts nilboxd in the background for $NILBOX_HOME (default ~/.local/share/nilbox),
#   4. prints its status and the web UI address.
# Idempotent: when the daemon already runs it only prints the status.
# Stop it with: build/src/cli/nilbox daemon stop
# NILBOX_BUILD_DIR overrides the build folder (default build).
set -eu
cd "$(dirname "$0")/.."

case "${1:-}" in
-h|--help) sed -n '2,9p' "$0"; exit 0 ;;
"") ;;
*) echo "run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac

./scripts/install-deps.sh

B=${NILBOX_BUILD_DIR:-build}
if [ ! -f "$B/build.ninja" ]; then
    echo "nilbox: configuring $B/" >&2
    meson setup "$B" >"$B.setup.log" 2>&1 || { cat "$B.setup.log" >&2; exit 1; }
fi
# The programs the main job needs (other modules add theirs here).
TARGETS="src/daemon/nilboxd src/cli/nilbox"
echo "nilbox: building" >&2
# shellcheck disable=SC2086
ninja -C "$B" $TARGETS >"$B.build.log" 2>&1 || { tail -40 "$B.build.log" >&2; exit 1; }

NILBOX=$B/src/cli/nilbox
if "$NILBOX" daemon status >/dev/null 2>&1; then
    echo "nilbox: nilboxd is already running" >&2
else
    "$NILBOX" daemon start >/dev/null
fi
"$NILBOX" daemon status

# The browser needs the per-start token: hand it over in the URL fragment,
# which never leaves the browser (no server log, no Referer).
api=$("$NILBOX" --json daemon status | /usr/bin/python3 -c '
import json, os, sys
st = json.load(sys.stdin)
try:
    with open(os.path.join(st["runtime_dir"], "api.json")) as f:
        a = json.load(f)
    print("%s#token=%s" % (a["url"], a["token"]))
except (OSError, KeyError, ValueError):
    pass
')
echo
if [ -n "$api" ]; then
    echo "Web UI:  $api"
fi
echo "CLI:     $NILBOX --help     (stop the daemon: $NILBOX daemon stop)"
