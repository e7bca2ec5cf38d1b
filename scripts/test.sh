#!/bin/sh
# Sets up and runs the whole nilbox test suite:
#   1. installs missing Debian packages (scripts/install-deps.sh),
#   2. builds with -Werror, runs unit + integration (+ e2e) tests,
#   3. builds again under ASan+UBSan and reruns unit + integration tests,
#   4. runs the style checks and short fuzz smoke runs,
# and ends with one line "N passed, N failed".
# Options: --quick (skip the sanitizer build and fuzz smoke), --no-e2e.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=0
E2E=1
for a in "$@"; do
    case "$a" in
    --quick) QUICK=1 ;;
    --no-e2e) E2E=0 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $a (try --help)" >&2; exit 2 ;;
    esac
done

./scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }

RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT
record() { # name status(0=pass)
    if [ "$2" = 0 ]; then echo "PASS $1" >>"$RESULTS"; else echo "FAIL $1" >>"$RESULTS"; echo "FAILED: $1"; fi
}

# build DIR [meson args...]
build() {
    dir=$1; shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" --werror "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; return 1; }
    fi
    ninja -C "$dir" >"$dir.build.log" 2>&1 || { tail -50 "$dir.build.log"; return 1; }
}

# suite DIR LABEL SUITES...: runs meson tests and records each one.
suite() {
    dir=$1; label=$2; shift 2
    args=""
    for s in "$@"; do args="$args --suite $s"; done
    # shellcheck disable=SC2086
    meson test -C "$dir" --no-rebuild --print-errorlogs $args >"$dir.test.log" 2>&1
    python3 - "$dir/meson-logs/testlog.json" "$label" >>"$RESULTS" <<'PY'
import json, sys
path, label = sys.argv[1], sys.argv[2]
try:
    lines = open(path).read().splitlines()
except OSError:
    print(f"FAIL {label}:no-test-log"); sys.exit()
for l in lines:
    t = json.loads(l)
    ok = t["result"] in ("OK", "EXPECTEDFAIL", "SKIP")
    print(("PASS " if ok else "FAIL ") + f"{label}:{t['name']}")
PY
    grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT|ERROR)' "$dir.test.log" && sed -n '/^=\+ [0-9]*\/[0-9]* =\+$/,$p' "$dir.test.log" | head -200
    return 0
}

echo "== normal build (-Werror)"
if build build-test; then
    record build 0
    if [ $E2E = 1 ]; then suite build-test normal unit integ e2e; else suite build-test normal unit integ; fi
else
    record build 1
fi

if [ $QUICK = 0 ]; then
    echo "== ASan+UBSan build"
    if CC=clang build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug; then
        record build-asan 0
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            suite build-asan asan unit integ
    else
        record build-asan 1
    fi
    echo "== fuzz smoke"
    if CC=clang build build-fuzz -Dfuzz=true -Db_lundef=false -Dbuildtype=debug; then
        record build-fuzz 0
        for t in build-fuzz/fuzz/fuzz_*; do
            [ -f "$t" ] && [ -x "$t" ] || continue
            n=$(basename "$t")
            corpus="fuzz/corpus/${n#fuzz_}"
            work=$(mktemp -d)
            [ -d "$corpus" ] && cp -r "$corpus/." "$work/"
            "$t" -max_total_time=10 -timeout=5 -rss_limit_mb=2048 "$work" >"build-fuzz/$n.log" 2>&1
            st=$?
            [ $st = 0 ] || tail -30 "build-fuzz/$n.log"
            record "fuzz:$n" $st
            rm -rf "$work"
        done
    else
        record build-fuzz 1
    fi
fi

echo "== style"
./scripts/check-style.sh format; record style:format $?
./scripts/check-style.sh banned; record style:banned $?

pass=$(grep -c '^PASS' "$RESULTS")
fail=$(grep -c '^FAIL' "$RESULTS")
grep '^FAIL' "$RESULTS" | sed 's/^/  /'
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
