#!/bin/sh
# Sets up and runs nilbox on this machine (the README's main command):
#   1. installs missing Debian packages (scripts/install-deps.sh),
#   2. builds into build/,
#   3. starts nilboxd in the background for $NILBOX_HOME (default ~/.local/share/nilbox),
#   4. prints its status and the web UI address,
#   5. builds the default guest image (tiny) if it is missing or its recipe
#      changed, and creates and boots the default VM ("default"),
#   6. says how to open a shell in it.
# Idempotent: a running daemon and a running VM are left as they are.
# Stop it with: build/src/cli/nilbox daemon stop
# NILBOX_BUILD_DIR overrides the build folder (default build).
set -eu
cd "$(dirname "$0")/.."

case "${1:-}" in
-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
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
TARGETS="src/daemon/nilboxd src/cli/nilbox src/agent/nilbox-agent"
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

# --- the default VM (issue 4) ---
# The image build is a no-op ("up to date") when nothing changed.
echo
"$NILBOX" image build tiny
state=$("$NILBOX" --json vm inspect default 2>/dev/null |
    /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])' 2>/dev/null) ||
    state=none
case $state in
none) "$NILBOX" vm create default --start ;;
stopping) sleep 5; "$NILBOX" vm start default ;;
*) "$NILBOX" vm start default ;;
esac
echo
echo "The default VM is running. Open a shell in it:"
echo "    $NILBOX shell default"
echo "Run a command:   $NILBOX exec default -- uname -a"
echo "Stop it:         $NILBOX vm stop default"
