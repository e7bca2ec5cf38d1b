#!/usr/bin/env python3
"""bench/mcp: tool-call round trip through the MCP bridge against the same
MCP server run directly on the host over stdio (goal: added p50 <= 2 ms).

The server is tests/e2e/mcp_testsrv (static) in a tiny VM, or with
--server everything the real @modelcontextprotocol/server-everything from
the npm registry (this folder's lockfile: `npm ci` here for the host, and in
a debian VM through the gate, which needs a rule for registry.npmjs.org:443
that the benchmark adds), run by Node.js on both sides. The client is the
real @modelcontextprotocol/sdk (tests/integ/mcp_node/client.mjs, scenario
bench:N: N sequential `echo` calls after 5 warm-up calls). Four ways:
  direct   the client spawns the server on the host (stdio)
  exec     the client runs `nilbox exec VM -- server`: the same VM path
           without the bridge (what the VM itself costs, under TCG most of it)
  stdio    the client runs `nilbox mcp stdio VM demo`: CLI -> daemon
           WebSocket -> nbmux exec stream -> the server in a tiny VM
  http     the client speaks Streamable HTTP to the server's loopback endpoint
  http-raw the same endpoint from a minimal keep-alive client (Python's
           http.client, the SSE answer read whole): what the bridge's HTTP side
           costs without the SDK's client (undici fetch, SSE stream parsing)
Rounds alternate between the ways; each figure is the median over rounds
of each round's p50 / p90.

usage: bench/mcp/run.sh [BUILD] [--calls N] [--rounds R] [--server testsrv|everything]
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE = os.path.join(ROOT, "tests", "integ", "mcp_node")
HERE = os.path.dirname(os.path.abspath(__file__))


def raw_http(port, token, calls):
    """Round trips (ms) of `calls` echo calls over one keep-alive connection."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    hdr = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
           "Accept": "application/json, text/event-stream"}

    def post(msg):
        c.request("POST", "/mcp", json.dumps(msg), hdr)
        r = c.getresponse()
        body = r.read()
        if r.status not in (200, 202):
            sys.exit("http-raw: %d %r" % (r.status, body[:200]))
        return r
    r = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {},
        "clientInfo": {"name": "bench-raw", "version": "1"}}})
    hdr["Mcp-Session-Id"] = r.getheader("Mcp-Session-Id")
    post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    ms = []
    for i in range(calls + 5):  # 5 warm-up calls, as client.mjs makes
        t = time.perf_counter()
        post({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
              "params": {"name": "echo", "arguments": {"text": "ping", "message": "ping"}}})
        if i >= 5:
            ms.append((time.perf_counter() - t) * 1000)
    c.request("DELETE", "/mcp", headers=hdr)
    c.getresponse().read()
    c.close()
    return ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default=os.path.join(ROOT, "build"))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", choices=("testsrv", "everything"), default="testsrv")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    os.environ.update({
        "NB_TEST_NILBOX": os.path.join(build, "src", "cli", "nilbox"),
        "NB_TEST_NILBOXD": os.path.join(build, "src", "daemon", "nilboxd"),
        "NILBOX_AGENT": os.path.join(build, "src", "agent", "nilbox-agent"),
        "NB_E2E_CACHE": os.environ.get("NB_E2E_CACHE", os.path.join(build, "tests", "e2e-cache")),
        "NB_IMAGES_SRC": os.path.join(ROOT, "images"),
    })
    srv = os.path.join(build, "tests", "mcp_testsrv")
    entry = os.path.join(HERE, "node_modules", "@modelcontextprotocol", "server-everything",
                         "dist", "index.js")
    if a.server == "testsrv" and not os.access(srv, os.X_OK):
        sys.exit("%s is missing: ninja -C %s tests/mcp_testsrv" % (srv, build))
    if a.server == "everything" and not os.path.isfile(entry):
        sys.exit("run `npm ci` in %s first" % HERE)
    if not os.path.isdir(os.path.join(NODE, "node_modules")):
        sys.exit("run `npm ci` in tests/integ/mcp_node first")
    sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
    import e2e_env
    keydir = None
    if a.server == "testsrv":
        e2e_env.build_image("tiny", e2e_env.TINY, e2e_env.AGENT)
        d = e2e_env.vm_daemon({"tiny": e2e_env.TINY})
    else:
        img = os.path.join(e2e_env.CACHE, "debian-agent")  # the e2e-debian suites' image
        e2e_env.build_image("debian", img, e2e_env.AGENT, 3000)
        # The secret store (rules live there) opens with a key file of its own.
        keydir = tempfile.mkdtemp(prefix="nb-bench-mcp-")
        d = e2e_env.vm_daemon({"debian": img}, None,
                              ["--key-file", os.path.join(keydir, "master.key")])
    try:
        def cli(*args, **kw):
            r = subprocess.run([e2e_env.NILBOX, *args], env=d.env, capture_output=True, **kw)
            if r.returncode:
                sys.exit("nilbox %s: %s" % (" ".join(args), r.stderr))
            return r.stdout
        if a.server == "testsrv":
            cli("vm", "create", "bench", "--start", timeout=300)
            with open(srv, "rb") as f:
                cli("exec", "bench", "--", "sh", "-c", "cat > /tmp/mcpsrv && chmod 755 /tmp/mcpsrv",
                    input=f.read(), timeout=120)
            host_cmd, guest_cmd = [srv], ["/tmp/mcpsrv"]
        else:
            from proxy_env import wait_store_open
            wait_store_open(d, 20)
            cli("vm", "create", "bench", "--image", "debian", "--memory", "2048", "--disk", "8G",
                "--start", timeout=900)
            e2e_env.allow_host(d, "registry.npmjs.org", 443, "bench")
            gdir = e2e_env.npm_project_to_guest(d, "bench", HERE, "everything")
            cli("exec", "bench", "--", "sh", "-c", 'cd "$1" && npm ci --no-audit --no-fund', "sh",
                gdir, timeout=1800)
            host_cmd = ["node", entry, "stdio"]
            guest_cmd = ["node", gdir + "/node_modules/@modelcontextprotocol/server-everything/"
                         "dist/index.js", "stdio"]
        cli("mcp", "add", "bench", "demo", "--", *guest_cmd)
        info = json.loads(d.unix("GET", "/v1/mcp/bench/demo?token=1")[2])
        ways = {
            "direct": ["stdio", *host_cmd],
            "exec": ["stdio", e2e_env.NILBOX, "exec", "bench", "--", *guest_cmd],
            "stdio": ["stdio", e2e_env.NILBOX, "mcp", "stdio", "bench", "demo"],
            "http": ["http", "http://127.0.0.1:%d/mcp" % info["port"], info["token"]],
            "http-raw": None,
        }
        res = {w: [] for w in ways}
        for _ in range(a.rounds):
            for w, args in ways.items():
                if args is None:
                    ms = sorted(raw_http(info["port"], info["token"], a.calls))
                    res[w].append((ms[len(ms) // 2], ms[int(len(ms) * 0.9)]))
                    continue
                p = subprocess.run(["node", os.path.join(NODE, "client.mjs"), args[0],
                                    "bench:%d" % a.calls, *args[1:]],
                                   env=d.env, capture_output=True, text=True, timeout=600)
                out = json.loads(p.stdout.strip().splitlines()[-1])
                if "ms" not in out:
                    sys.exit("%s: %s %s" % (w, out, p.stderr))
                ms = sorted(out["ms"])
                res[w].append((ms[len(ms) // 2], ms[int(len(ms) * 0.9)]))
        accel = json.loads(cli("--json", "vm", "inspect", "bench")).get("accel", "?")
        base = statistics.median(r[0] for r in res["direct"])
        vm = statistics.median(r[0] for r in res["exec"])
        print("MCP tool call (echo) round trip, server %s, %d calls x %d rounds, VM accel %s" %
              (a.server, a.calls, a.rounds, accel))
        print("%-8s %10s %10s %12s %14s" % ("way", "p50 ms", "p90 ms", "added p50", "over exec p50"))
        for w in ways:
            p50 = statistics.median(r[0] for r in res[w])
            p90 = statistics.median(r[1] for r in res[w])
            print("%-8s %10.3f %10.3f %12s %14s" % (
                w, p50, p90, "-" if w == "direct" else "%+.3f ms" % (p50 - base),
                "%+.3f ms" % (p50 - vm) if w in ("stdio", "http", "http-raw") else "-"))
    finally:
        e2e_env.teardown(d)
        if keydir:
            shutil.rmtree(keydir, ignore_errors=True)


if __name__ == "__main__":
    main()
