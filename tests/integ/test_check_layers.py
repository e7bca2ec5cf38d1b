#!/usr/bin/env python3
"""scripts/check-layers.py on tiny fake trees: each kind of finding is
reported, a clean tree and allowed findings pass, stale allow entries are
shown. The object checks (calls, symbol) run on two objects built with cc.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKER = os.path.join(ROOT, "scripts", "check-layers.py")

CLEAN = {
    "src/lib/buf.h": "",
    "src/lib/buf.c": '#include "lib/buf.h"\n',
    "src/lib/http.c": '#include "lib/http_int.h"\n#include "lib/buf.h"\n',
    "src/lib/http_int.h": '#include "lib/http.h"\n',
    "src/lib/http.h": "",
    "src/host/home.h": '#include "lib/buf.h"\n',
    "src/daemon/egress/proxy.c": '#include "host/home.h"\n#include "daemon/secrets/s.h"\n',
    "src/daemon/secrets/s.h": "",
    "src/daemon/daemon.c": '#include "daemon/egress/proxy.h"\n',
    "src/daemon/egress/proxy.h": "",
    "src/cli/cmd.c": '#include "host/home.h"\n#include "cli/cmd.h"\n',
    "src/cli/cmd.h": "",
    "src/agent/main.c": '#include "lib/buf.h"\n',
}


def tree(files):
    d = tempfile.mkdtemp(prefix="layers.")
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "w") as f:
            f.write(text)
    return d


def check(root, *args, allow=""):
    with open(os.path.join(root, "allow.txt"), "w") as f:
        f.write(allow)
    r = subprocess.run([sys.executable, CHECKER, "--root", root, "--allow",
                        os.path.join(root, "allow.txt")] + list(args),
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout.splitlines()


def test_clean_tree_passes():
    d = tree(CLEAN)
    try:
        rc, out = check(d)
        assert rc == 0 and out == [], out
    finally:
        shutil.rmtree(d)


def test_each_finding_reported():
    files = dict(CLEAN)
    files["src/lib/buf.c"] += '#include "daemon/egress/proxy.h"\n'  # upward
    files["src/cli/cmd.c"] += '#include "daemon/secrets/s.h"\n'  # cli -> daemon
    files["src/agent/main.c"] += '#include "host/home.h"\n'  # agent -> host
    files["src/daemon/secrets/s.c"] = '#include "daemon/egress/proxy.h"\n'  # secrets -> egress
    files["src/daemon/egress/gate.h"] = '#include "daemon/egress/rules.h"\n'  # cycle
    files["src/daemon/egress/rules.h"] = '#include "daemon/egress/gate.h"\n'
    files["src/host/home.c"] = '#include "lib/http_int.h"\n'  # internal
    d = tree(files)
    try:
        rc, out = check(d)
        assert rc == 1, out
        keys = [line.split(" -- ")[0] for line in out]
        assert keys == sorted(keys), keys
        want = [
            "cycle: daemon/egress/gate <-> daemon/egress/rules",
            # buf.c's upward include closes a circle through the lower layers.
            "cycle: daemon/egress/proxy <-> daemon/secrets/s <-> host/home <-> lib/buf <-> lib/http",
            "internal: src/host/home.c includes lib/http_int.h",
            "layer: src/agent/main.c includes host/home.h (agent -> host)",
            "layer: src/cli/cmd.c includes daemon/secrets/s.h (cli -> daemon/secrets)",
            "layer: src/daemon/secrets/s.c includes daemon/egress/proxy.h "
            "(daemon/secrets -> daemon/egress)",
            "layer: src/lib/buf.c includes daemon/egress/proxy.h (lib -> daemon/egress)",
        ]
        assert keys == want, keys
        assert all(" -- " in line and len(line.split(" -- ")[1]) > 10 for line in out), out
        # The same findings allowed: passes; an allow entry no longer found is shown.
        allow = "".join(k + " # test\n" for k in want) + "layer: src/gone.c includes x.h # old\n"
        rc, out = check(d, allow=allow)
        assert rc == 0, out
        assert out == ["fixed (remove from allow.txt): layer: src/gone.c includes x.h"], out
        # One allowed, the rest fail.
        rc, out = check(d, allow=want[0] + " # test\n")
        assert rc == 1 and len(out) == len(want) - 1, out
    finally:
        shutil.rmtree(d)


def test_object_checks():
    cc = shutil.which("cc")
    if not cc:
        print("skip: no cc")
        return
    files = dict(CLEAN)
    files["src/lib/a.c"] = "int nb_b(void);\nint nb_a(void) { return nb_b(); }\n"
    files["src/lib/b.c"] = ("int nb_a(void);\nint nb_b(void) { return 1; }\n"
                            "int px_leak(void) { return nb_a(); }\n")
    files["src/lib/c.c"] = ('#include "lib/c_int.h"\nint nb_b(void);\n'
                            "int px_ok(void) { return nb_b(); }\n")
    files["src/lib/c_int.h"] = "int px_ok(void);\n"
    d = tree(files)
    try:
        b = os.path.join(d, "build")
        pdir = os.path.join(b, "src", "lib", "libnb_lib.a.p")
        os.makedirs(pdir)
        cmds = []
        for n in ("a.c", "b.c", "c.c"):
            out = "src/lib/libnb_lib.a.p/%s.o" % n
            subprocess.run([cc, "-c", "-I", os.path.join(d, "src"), "-o", os.path.join(b, out),
                            os.path.join(d, "src/lib", n)], check=True)
            cmds.append({"directory": b, "file": "../src/lib/" + n, "output": out})
        with open(os.path.join(b, "compile_commands.json"), "w") as f:
            json.dump(cmds, f)
        rc, out = check(d, b)
        keys = [line.split(" -- ")[0] for line in out]
        assert rc == 1, out
        assert keys == ["calls in nb_lib: lib/a.c <-> lib/b.c",
                        "symbol: px_leak (src/lib/b.c)"], keys
    finally:
        shutil.rmtree(d)


def main():
    failed = 0
    tests = [test_clean_tree_passes, test_each_finding_reported, test_object_checks]
    for t in tests:
        try:
            t()
            print("ok   %s" % t.__name__, flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__, flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
