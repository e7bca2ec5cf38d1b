#!/usr/bin/env python3
"""Layer checker for src/ (issue 10; run by scripts/check-style.sh layers).

Usage: check-layers.py [--root DIR] [--allow FILE] [BUILD_DIR]

Checks, each finding on one line ("<finding> -- <what to do>"):
  layer     a file includes a header of a higher layer. Layers, lowest
            first: lib < host < daemon/secrets < daemon/egress < daemon/vm
            < daemon (daemon.c, api_*.c, ...). cli/ may include lib/ and
            host/ only (so may desktop/), agent/ lib/ only.
  cycle     modules (foo.c + foo.h + foo_int.h of one directory) that
            include each other in a circle.
  internal  an internal header (*_int.h, or <dir>int.h such as vm/vmint.h)
            included from outside its directory.
  calls     object files of one static library (BUILD_DIR, nm) that call
            each other in a circle.
  symbol    an exported symbol of src/ without the nb_ prefix (main and
            symbols declared in an internal header of the same directory
            excepted).
The last two need BUILD_DIR (a meson build with compile_commands.json).

A finding whose text (before " -- ") is a line of the allow file (followed
by " # reason") does not fail the check; allow entries no longer found are
printed so that the list can shrink. Exit status 1 on any other finding.
"""

import json
import os
import re
import subprocess
import sys

LAYERS = ["lib", "host", "daemon/base", "daemon/secrets", "daemon/egress", "daemon/vm", "daemon"]
# Programs on top: what each may include besides itself.
APPS = {"cli": ("lib", "host"), "agent": ("lib",), "desktop": ("lib", "host")}
INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of(rel):
    """Layer (or app) name of a path relative to src/."""
    d = os.path.dirname(rel)
    for name in sorted(LAYERS + list(APPS), key=len, reverse=True):
        if d == name or d.startswith(name + "/"):
            return name
    return None


def may_include(src_layer, dst_layer):
    if src_layer == dst_layer or dst_layer is None:
        return True
    if src_layer in APPS:
        return dst_layer in APPS[src_layer]
    if src_layer not in LAYERS or dst_layer in APPS:
        return src_layer is None
    return LAYERS.index(dst_layer) < LAYERS.index(src_layer)


def is_internal(rel):
    d, name = os.path.split(rel)
    return name.endswith("_int.h") or name == os.path.basename(d) + "int.h"


def module_of(rel):
    stem = os.path.splitext(rel)[0]
    return stem[:-4] if stem.endswith("_int") else stem


def scc(nodes, edges):
    """Tarjan's strongly connected components, deterministic (sorted)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        # Iterative: deep include chains must not hit the recursion limit.
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(c for c in out if len(c) > 1)


def source_findings(src):
    files = []
    for d, dirs, names in os.walk(src):
        dirs.sort()
        files += [os.path.relpath(os.path.join(d, n), src) for n in sorted(names)
                  if n.endswith((".c", ".h"))]
    found, edges = [], {}
    for rel in files:
        with open(os.path.join(src, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        for inc in INCLUDE_RE.findall(text):
            if os.path.isfile(os.path.join(src, inc)):
                dst = os.path.normpath(inc)
            else:
                dst = os.path.normpath(os.path.join(os.path.dirname(rel), inc))
                if not os.path.isfile(os.path.join(src, dst)):
                    continue
            sl, dl = layer_of(rel), layer_of(dst)
            if not may_include(sl, dl):
                found.append((f"layer: src/{rel} includes {dst} ({sl} -> {dl})",
                              f"{sl} may not depend on {dl}: move the code down or pass it in "
                              "from above"))
            if is_internal(dst) and os.path.dirname(dst) != os.path.dirname(rel):
                found.append((f"internal: src/{rel} includes {dst}",
                              "internal header of another directory: use its public header"))
            a, b = module_of(rel), module_of(dst)
            if a != b:
                edges.setdefault(a, set()).add(b)
    nodes = set(edges) | {b for v in edges.values() for b in v}
    for comp in scc(nodes, edges):
        found.append(("cycle: " + " <-> ".join(comp),
                      "these modules include each other: move the shared declarations into "
                      "a lower module or invert one dependency"))
    return found


def object_findings(build, src):
    cc_path = os.path.join(build, "compile_commands.json")
    if not os.path.isfile(cc_path):
        return [(f"build: no {cc_path}", "configure the build dir with meson first")]
    with open(cc_path, encoding="utf-8") as f:
        commands = json.load(f)
    objs = {}  # object path -> (group, source path relative to src/)
    for c in commands:
        source = os.path.realpath(os.path.join(c["directory"], c["file"]))
        rel = os.path.relpath(source, src)
        out = os.path.join(c["directory"], c["output"])
        group = os.path.basename(os.path.dirname(out))
        if rel.startswith("..") or not group.endswith(".p") or not os.path.isfile(out):
            continue
        objs[out] = (group[:-2], rel)
    if not objs:
        return []
    res = subprocess.run(["nm", "-A", "-g"] + sorted(objs), capture_output=True, text=True,
                         check=True)
    defined, undefined = {}, {}
    for line in res.stdout.splitlines():
        path, _, rest = line.partition(":")
        parts = rest.split()
        if path not in objs or len(parts) < 2:
            continue
        kind, sym = parts[-2], parts[-1]
        if kind == "U":
            undefined.setdefault(path, set()).add(sym)
        elif kind not in "vw":
            defined.setdefault(objs[path][0], {})[sym] = path
    found = []
    headers = {}
    for path in sorted(objs):
        group, rel = objs[path]
        d = os.path.dirname(rel)
        if d not in headers:
            text = ""
            full = os.path.join(src, d)
            for n in sorted(os.listdir(full)):
                if n.endswith(".h") and is_internal(os.path.join(d, n)):
                    with open(os.path.join(full, n), encoding="utf-8", errors="replace") as f:
                        text += f.read()
            headers[d] = set(re.findall(r"\w+", text))
        for sym, where in sorted(defined.get(group, {}).items()):
            if where != path or sym.startswith(("nb_", "_")) or sym == "main":
                continue
            if sym in headers[d]:
                continue
            found.append((f"symbol: {sym} (src/{rel})",
                          "exported without the nb_ prefix: make it static, rename it nb_..., "
                          "or declare it in the directory's internal header"))
    groups = {}
    for path, (group, _) in objs.items():
        groups.setdefault(group, []).append(path)
    for group in sorted(g for g in groups if g.endswith(".a")):
        edges = {}
        for path in groups[group]:
            for sym in undefined.get(path, ()):
                dst = defined.get(group, {}).get(sym)
                if dst and dst != path:
                    edges.setdefault(objs[path][1], set()).add(objs[dst][1])
        nodes = {objs[p][1] for p in groups[group]}
        for comp in scc(nodes, edges):
            found.append((f"calls in {group[3:-2]}: " + " <-> ".join(comp),
                          "these files call each other: split out what both need, or merge "
                          "them"))
    return found


def main(argv):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    allow_path, build = None, None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--root":
            root = os.path.abspath(args.pop(0))
        elif a == "--allow":
            allow_path = args.pop(0)
        elif a.startswith("-"):
            print(__doc__)
            return 2
        else:
            build = os.path.abspath(a)
    src = os.path.realpath(os.path.join(root, "src"))
    allow_path = allow_path or os.path.join(root, "scripts", "layers-allow.txt")
    allow = {}
    if os.path.isfile(allow_path):
        with open(allow_path, encoding="utf-8") as f:
            for line in f:
                key = line.split(" # ", 1)[0].strip()
                if key and not key.startswith("#"):
                    allow[key] = line.strip()
    found = source_findings(src)
    if build:
        found += object_findings(build, src)
    else:
        allow = {k: v for k, v in allow.items() if not k.startswith(("calls", "symbol"))}
    bad = 0
    seen = set()
    for key, advice in sorted(set(found)):
        seen.add(key)
        if key not in allow:
            print(f"{key} -- {advice}")
            bad += 1
    for key in sorted(set(allow) - seen):
        print(f"fixed (remove from {os.path.relpath(allow_path, root)}): {key}")
    allowed = len(seen & set(allow))
    print(f"layers: {bad} finding(s), {allowed} allowed", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
