#!/bin/sh
# Sets up and runs the whole nilbox test suite:
#   1. installs missing Debian packages (scripts/install-deps.sh),
#   2. builds with -Werror, runs unit + integration (+ e2e) tests,
#   3. builds again under ASan+UBSan and reruns unit + integration tests,
#   4. runs the style checks (format, banned functions, layers) and short fuzz smoke runs,
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
WHY=$(mktemp)
# record NAME STATUS [LOG]: STATUS 0 passes; a failure keeps the tail of LOG as its reason.
record() {
    if [ "$2" = 0 ]; then
        echo "PASS $1" >>"$RESULTS"
    else
        echo "FAIL $1" >>"$RESULTS"
        { echo "--- $1"; [ -n "${3:-}" ] && [ -f "$3" ] && tail -n 12 "$3" | sed 's/^/    /'; } >>"$WHY"
    fi
}

# Every test's temporary folders (homes, sockets, VM disks) live under one folder, so that a
# process a test left behind can be told from anything else on the machine.
TESTTMP=$(mktemp -d /tmp/nbt.XXXXXX)
export TMPDIR="$TESTTMP"
trap 'rm -f "$RESULTS" "$WHY"; rm -rf "$TESTTMP"' EXIT

# leftovers LABEL: a suite must tear down what it started (daemons, QEMU, fake upstreams), also
# when a test failed. Lists and kills what is left after a grace period; recorded as a test.
leftovers() {
    log=$(mktemp)
    python3 - "$ROOT" "$TESTTMP" "$$" >"$log" <<'PY'
import os, signal, sys, time
root, tmp, me = sys.argv[1], sys.argv[2], sys.argv[3]
def scan():
    left = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid == me:
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (exe.startswith(root + "/build") and exe.endswith("/nilboxd")) or tmp + "/" in cmd:
            left[int(pid)] = cmd[:200]
    return left
for _ in range(10):  # a grace period for processes that are on their way out
    left = scan()
    if not left:
        break
    time.sleep(1)
for pid, cmd in left.items():
    print(f"left running: pid {pid}: {cmd}")
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
PY
    [ ! -s "$log" ]; record "$1:no-leftover-processes" $? "$log"
    rm -f "$log"
}

# build DIR [meson args...]
build() {
    dir=$1; shift
    if [ ! -f "$dir/build.ninja" ]; then
        meson setup "$dir" --werror "$@" >"$dir.setup.log" 2>&1 || { cp "$dir.setup.log" "$dir.build.log"; return 1; }
    fi
    ninja -C "$dir" >"$dir.build.log" 2>&1
}

# suite DIR LABEL SUITES...: runs meson tests and records each one; a failure's reason is the
# part of its output that says why (assertion, error lines), else its last lines.
suite() {
    dir=$1; label=$2; shift 2
    args=""
    for s in "$@"; do args="$args --suite $s"; done
    # shellcheck disable=SC2086
    meson test -C "$dir" --no-rebuild $args >"$dir.test.log" 2>&1
    python3 - "$dir/meson-logs/testlog.json" "$label" "$RESULTS" "$WHY" <<'PY'
import json, re, sys
path, label, results, why = sys.argv[1:5]
res, out = open(results, "a"), open(why, "a")
try:
    lines = open(path).read().splitlines()
except OSError:
    res.write(f"FAIL {label}:no-test-log\n"); sys.exit()
key = re.compile(r"(Error|error:|assert|FAIL|Traceback|Exception|timed out|TIMEOUT|ERROR|"
                 r"AddressSanitizer|runtime error|SUMMARY)")
for l in lines:
    t = json.loads(l)
    name = f"{label}:{t['name']}"
    if t["result"] in ("OK", "EXPECTEDFAIL", "SKIP"):
        res.write(f"PASS {name}\n")
        continue
    res.write(f"FAIL {name}\n")
    text = ((t.get("stdout") or "") + "\n" + (t.get("stderr") or "")).splitlines()
    text = [x for x in text if x.strip()]
    hits = [i for i, x in enumerate(text) if key.search(x)]
    pick = []
    for i in hits[-4:]:
        pick += [j for j in range(max(0, i - 2), min(len(text), i + 3)) if j not in pick]
    shown = [text[j] for j in sorted(pick)][-16:] or text[-12:]
    out.write(f"--- {name} ({t['result']}, {t.get('duration', 0):.0f} s)\n")
    out.write("".join("    " + x[:300] + "\n" for x in shown))
PY
    return 0
}

echo "== normal build (-Werror)"
if build build-test; then
    record build 0
    if [ $E2E = 1 ]; then suite build-test normal unit integ e2e; else suite build-test normal unit integ; fi
    leftovers normal
else
    record build 1 build-test.build.log
fi

if [ $QUICK = 0 ]; then
    echo "== ASan+UBSan build"
    if CC=clang build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug; then
        record build-asan 0
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            suite build-asan asan unit integ
        leftovers asan
    else
        record build-asan 1 build-asan.build.log
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
            record "fuzz:$n" $st "build-fuzz/$n.log"
            rm -rf "$work"
        done
    else
        record build-fuzz 1 build-fuzz.build.log
    fi
fi

echo "== style"
STYLELOG=$(mktemp)
./scripts/check-style.sh format >"$STYLELOG" 2>&1; record style:format $? "$STYLELOG"
./scripts/check-style.sh banned >"$STYLELOG" 2>&1; record style:banned $? "$STYLELOG"
./scripts/check-style.sh layers build >"$STYLELOG" 2>&1; record style:layers $? "$STYLELOG"
rm -f "$STYLELOG"

pass=$(grep -c '^PASS' "$RESULTS")
fail=$(grep -c '^FAIL' "$RESULTS")
if [ "$fail" != 0 ]; then
    echo "== failures (full logs: build*/meson-logs/testlog.txt, build-fuzz/*.log)"
    cat "$WHY"
fi
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
