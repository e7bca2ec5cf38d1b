#!/bin/sh
# Style checks (STYLE.md): clang-format conformance, banned functions and the
# layers of src/ (scripts/check-layers.py; object checks need a build dir).
# Usage: scripts/check-style.sh [format|banned|layers [BUILD_DIR]]
# (default: all; layers with build/ when it exists)
set -u
cd "$(dirname "$0")/.."
what=${1:-all}
rc=0
files=$(git ls-files -co --exclude-standard -- 'src/*.c' 'src/*.h' 'tests/*.c' 'tests/*.h' \
        'fuzz/*.c' 'bench/*.c' 'bench/*.h' | while read -r f; do [ -f "$f" ] && echo "$f"; done)
if [ "$what" = all ] || [ "$what" = format ]; then
    bad=""
    for f in $files; do
        clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad="$bad $f"
    done
    if [ -n "$bad" ]; then
        echo "style: not clang-formatted (run: clang-format -i$bad)"
        rc=1
    fi
fi
if [ "$what" = all ] || [ "$what" = banned ]; then
    hits=$(grep -rnE '\b(strcpy|strcat|sprintf|vsprintf|strncpy|strncat|strtok|gets|atoi|atol)[[:space:]]*\(' src \
           | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(//|/?\*)')
    if [ -n "$hits" ]; then
        echo "style: banned functions (STYLE.md) in src/:"
        echo "$hits"
        rc=1
    fi
fi
if [ "$what" = layers ] || { [ "$what" = all ] && [ -d build ]; }; then
    bdir=${2:-build}
    if [ -d "$bdir" ]; then
        python3 scripts/check-layers.py "$bdir" || rc=1
    else
        python3 scripts/check-layers.py || rc=1
    fi
fi
exit $rc
