#!/usr/bin/env python3
"""Opt-in end to end test (meson suite 'e2e-debian-net': builds the debian
image and reaches the npm registry through the egress gate): the MCP bridge
with a real MCP server from the npm registry, @modelcontextprotocol/server-
everything (version pinned by bench/mcp/package-lock.json, installed in the
guest with `npm ci` through nilbox's own egress path once a rule allows
registry.npmjs.org), run by Debian's Node.js in a debian VM, and the real
@modelcontextprotocol/sdk client on the host (tests/integ/mcp_node).

  00 install: npm held and denied without a rule, `npm ci` with it; `mcp add` with the
     package's real entry point (dist/index.js stdio); get-env denied
  01 stdio (`nilbox mcp stdio`): initialize, tools/list without get-env,
     echo, get-sum, trigger-long-running-operation with progress, one
     cancelled (its audit row says so, no late answer), get-env denied
  02 Streamable HTTP endpoint: the same
  03 restart: the server process killed in the guest between two calls of
     one session (stdio and HTTP); the next call works (initialize replay)
  04 ask: get-tiny-image waits for a prompt answered with `nilbox prompts`
  05 malformed and oversized frames from the host (raw stdio and raw HTTP):
     JSON-RPC errors back, the session and the daemon stay up
  06 from the server side: a wrapper writes a malformed and an oversized
     line on the server's stdout before exec'ing the real server

Env: e2e_env's, plus NB_MCP_NODE (the client) and NB_MCP_EVERYTHING (the
folder with the server's package.json and package-lock.json)."""
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest

from e2e_env import (AGENT, CACHE, NILBOX, VmSuite, allow_host, build_image, need,
                     npm_project_to_guest, pause_kill_resume, wait_for)
from proxy_env import wait_store_open

IMG = os.path.join(CACHE, "debian-agent")
VM = "ev1"
NODE_DIR = os.environ.get("NB_MCP_NODE", "")
PKG_DIR = os.environ.get("NB_MCP_EVERYTHING", "")
# Node.js under TCG (on a loaded machine) can take more than the SDK's default
# 60 s to start the server and answer initialize.
CLIENT_ENV = {"NB_MCP_TIMEOUT_MS": "300000"}
WAIT = 360
UNREAD = "request(s) the server never read go to the next one"  # the bridge's log note
FRAME_MAX = 262144  # well above the server's biggest answer (tools/list, ~10 KiB)
ENTRY = "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
# The tools the server registers for any client (others come with client capabilities).
TOOLS = {"echo", "get-sum", "trigger-long-running-operation", "get-tiny-image", "get-env"}


class McpDebian(VmSuite):
    @classmethod
    def setup(cls):
        need(env=("NB_TEST_NILBOX", "NB_TEST_NILBOXD", "NILBOX_AGENT", "NB_MCP_NODE",
                  "NB_MCP_EVERYTHING"), tools=("mmdebstrap", "node"))
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@modelcontextprotocol")):
            raise unittest.SkipTest("npm ci in tests/integ/mcp_node first")
        sys.stderr.write("(debian image: %.0f s)\n" % build_image("debian", IMG, AGENT, 3000))
        cls.d = cls.daemon({"debian": IMG}, {"NILBOX_MCP_MAX_FRAME": str(FRAME_MAX)},
                           ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        r = cls.d.cli("vm", "create", VM, "--image", "debian", "--memory", "2048", "--disk", "8G",
                      "--start", timeout=900)
        # The boot timeout is 180 s; a debian boot under TCG on a loaded
        # machine can miss it once (a second boot finds the disk cached).
        for _ in range(2):
            if r.returncode == 0 or "boot timeout" not in r.stderr:
                break
            sys.stderr.write("(boot timed out, starting again)\n")
            r = cls.d.cli("vm", "start", VM, timeout=900)
        assert r.returncode == 0, r.stderr

    # -- helpers -------------------------------------------------------------
    def sh(self, script, timeout=180, ok=True, input=None):
        return self.cli("exec", VM, "--", "bash", "-c", script, timeout=timeout, ok=ok,
                        input=input)

    def node(self, *args, timeout=900):
        p = subprocess.run(["node", os.path.join(NODE_DIR, "client.mjs"), *args],
                           env=dict(self.d.env, **CLIENT_ENV), capture_output=True, text=True,
                           timeout=timeout)
        try:
            out = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail("client: %r %r\ndaemon: %s" % (p.stdout, p.stderr, self.d.stderr()[-3000:]))
        self.assertNotIn("fatal", out, "%s\nlog: %s" % (out.get("fatal"), self.log()[-3000:]))
        return out

    def stdio(self, scenario, name="everything"):
        return ["stdio", scenario, NILBOX, "mcp", "stdio", VM, name]

    def endpoint(self, scenario, name="everything"):
        st, _, body = self.d.unix("GET", "/v1/mcp/%s/%s?token=1" % (VM, name))
        self.assertEqual(st, 200, body)
        info = json.loads(body)
        return ["http", scenario, "http://127.0.0.1:%d/mcp" % info["port"], info["token"]]

    def log(self, name="everything"):
        return self.cli("mcp", "logs", VM, name).stdout

    def audit_rows(self):
        out = json.loads(self.cli("--json", "audit", "--kind", "mcp.tool", "--limit", "500").stdout)
        rows = out.get("rows", out.get("entries", out)) if isinstance(out, dict) else out
        return sorted([x for x in rows if x.get("kind") == "mcp.tool"], key=lambda x: x["seq"])

    def server_pids(self):
        # [.] keeps the pattern from matching this shell's own command line.
        r = self.sh("pgrep -f 'server-everything/dist/index[.]js' || true", timeout=60)
        return [int(p) for p in r.stdout.split()]

    # -- 00 ------------------------------------------------------------------
    def test_00_install(self):
        McpDebian.dir = npm_project_to_guest(self.d, VM, PKG_DIR, "everything")
        # No rule yet: npm's connection waits for a prompt; denied, npm fails.
        p = subprocess.Popen([NILBOX, "exec", VM, "--", "bash", "-c",
                              "cd ~/everything && npm view --fetch-retries=0 "
                              "@modelcontextprotocol/server-everything version"],
                             env=self.d.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        try:
            seen = []
            deadline = time.time() + 300
            while p.poll() is None and time.time() < deadline:
                ps = json.loads(self.cli("--json", "prompts").stdout)["prompts"]
                for q in ps:
                    seen.append(q["host"])
                    self.cli("prompts", "answer", str(q["id"]), "deny-once", ok=False)
                time.sleep(0.5)
            out = p.communicate(timeout=60)[0]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn("registry.npmjs.org", seen, out)
        allow_host(self.d, "registry.npmjs.org", 443, VM)
        t0 = time.time()
        self.sh("cd ~/everything && npm ci --no-audit --no-fund", timeout=1800)
        sys.stderr.write("(npm ci in the guest: %.0f s)\n" % (time.time() - t0))
        self.sh("test -f ~/everything/" + ENTRY)
        self.assertIn("v18.", self.sh("node --version").stdout, "Debian's Node.js")
        self.cli("mcp", "add", VM, "everything", "--", "node", self.dir + "/" + ENTRY, "stdio")
        self.cli("mcp", "policy", VM, "everything", "get-env", "deny")

    # -- 01, 02 --------------------------------------------------------------
    def check_everything(self, out):
        self.assertEqual(out["server"], "mcp-servers/everything")
        self.assertTrue(TOOLS - {"get-env"} <= set(out["tools"]), out["tools"])
        self.assertNotIn("get-env", out["tools"], "tools/list is filtered by the policy")
        self.assertEqual(out["echo"], "Echo: héllo")
        self.assertEqual(out["add"], "The sum of 2 and 40 is 42.")
        self.assertIn("Steps: 3", out["slow"])
        self.assertEqual(out["progress"], [1, 2, 3])
        self.assertFalse(out["cancelled"]["ok"], out["cancelled"])
        self.assertFalse(out["denied"]["ok"], out["denied"])
        self.assertEqual(out["denied"]["code"], -32002, out["denied"])
        self.assertIn("denied by the policy", out["denied"]["message"])
        self.assertEqual(out["after"], "Echo: still here")
        self.assertEqual(out["late"], "Echo: late")
        # Nothing unexpected reached the client: no answer to the cancelled
        # call, no progress for a token it forgot.
        self.assertEqual(out["errors"], [])

    def check_audit(self, since):
        rows = [r["detail"] for r in self.audit_rows() if r["seq"] > since]
        calls = [(r["tool"], r["decision"], r["reason"]) for r in rows]
        self.assertIn(("echo", "allow", "policy"), calls)
        self.assertIn(("get-env", "deny", "policy"), calls)
        long_ = [r for r in rows if r["tool"] == "trigger-long-running-operation"]
        self.assertEqual(sorted(r["reason"] for r in long_), ["cancelled", "policy"], long_)
        done = [r for r in long_ if r["reason"] == "policy"][0]
        self.assertFalse(done["error"])
        self.assertGreaterEqual(done["duration_ms"], 1400)
        text = json.dumps(rows)
        self.assertNotIn("héllo", text, "arguments never reach the audit log")
        return rows

    def last_seq(self):
        rows = self.audit_rows()
        return rows[-1]["seq"] if rows else 0

    def test_01_stdio(self):
        since = self.last_seq()
        t0 = time.time()
        out = self.node(*self.stdio("everything"))
        sys.stderr.write("(stdio scenario: %.1f s)\n" % (time.time() - t0))
        self.check_everything(out)
        self.check_audit(since)
        self.assertIn("Starting default (STDIO) server", self.log())

    def test_02_http(self):
        since = self.last_seq()
        out = self.node(*self.endpoint("everything"))
        self.check_everything(out)
        self.check_audit(since)

    # -- 03 ------------------------------------------------------------------
    def restart(self, args, wait_notice):
        # Servers of earlier sessions may still run: a Streamable HTTP session
        # lives on after its client went without a DELETE (the SDK's close()).
        starts = self.log().count("server started")
        unread = self.log().count(UNREAD)
        try:
            out, _ = pause_kill_resume(
                ["node", os.path.join(NODE_DIR, "client.mjs"), *args],
                dict(self.d.env, **CLIENT_ENV), lambda: set(self.server_pids()),
                lambda pid: self.sh("kill -KILL %d" % pid, timeout=60),
                (lambda: self.log().count("server killed by signal 9")) if wait_notice else None,
                WAIT)
        except AssertionError as e:
            self.fail("%s; bridge log: %s" % (e, self.log()[-3000:]))
        self.assertNotIn("fatal", out, "%s\nbridge log: %s" % (out.get("fatal"), self.log()[-3000:]))
        self.assertEqual(out["before"], "Echo: one")
        self.assertEqual(out["after"], "Echo: two")
        self.assertGreaterEqual(out["tools"], len(TOOLS) - 1)
        self.assertEqual(out["errors"], [])
        log = self.log()
        self.assertEqual(log.count("server started"), starts + 2, log[-2000:])
        self.assertIn("restarted server initialized again", log)
        # Which ordering this run met (the next call written to the dead server, or not).
        sys.stderr.write("(%s restart: %d request(s) the dead server never read) " %
                         (args[0], log.count(UNREAD) - unread))

    def test_03_restart(self):
        # stdio: the next call after the bridge saw the death; HTTP: at once, racing the
        # agent's exit notice (either way the restarted server answers it).
        self.restart(self.stdio("pause"), True)
        self.restart(self.endpoint("pause"), False)

    # -- 04 ------------------------------------------------------------------
    def test_04_ask(self):
        self.cli("mcp", "policy", VM, "everything", "get-tiny-image", "ask")
        res = {}
        t = threading.Thread(target=lambda: res.update(
            self.node(*self.stdio('call:{"name":"get-tiny-image","arguments":{}}'))))
        t.start()
        try:
            def prompt():
                ps = json.loads(self.cli("--json", "prompts").stdout)["prompts"]
                return [p for p in ps if p.get("kind") == "mcp"]
            ps = wait_for(prompt, WAIT, "the MCP prompt")
            self.assertEqual(ps[0]["host"], "everything/get-tiny-image")
            self.assertEqual(ps[0]["vm"], VM)
            self.cli("prompts", "answer", str(ps[0]["id"]), "allow-once")
        finally:
            t.join(WAIT + 60)
        self.assertTrue(res["call"]["ok"], res)
        kinds = [c["type"] for c in res["call"]["value"]["content"]]
        self.assertIn("image", kinds)
        # allow-once: the policy still asks next time.
        self.assertEqual(json.loads(self.cli("--json", "mcp", "policy", VM,
                                             "everything").stdout)["get-tiny-image"], "ask")
        rows = [r["detail"] for r in self.audit_rows() if r["detail"]["tool"] == "get-tiny-image"]
        self.assertEqual((rows[-1]["decision"], rows[-1]["reason"]), ("allow", "allow-once"))
        self.assertFalse(rows[-1]["error"])

    # -- 05 ------------------------------------------------------------------
    @staticmethod
    def init_msg(i=1):
        return json.dumps({"jsonrpc": "2.0", "id": i, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})

    def raw_stdio(self, name, msgs, want):
        """Writes msgs to `nilbox mcp stdio`, reads until want(got) or WAIT seconds."""
        p = subprocess.Popen([NILBOX, "mcp", "stdio", VM, name], env=self.d.env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        got = []
        try:
            for m in msgs:
                p.stdin.write(m + "\n")
                p.stdin.flush()
            deadline = time.time() + WAIT
            while time.time() < deadline and not want(got):
                line = p.stdout.readline()
                if not line:
                    break
                got.append(json.loads(line))
        finally:
            p.stdin.close()
            p.wait(30)
            p.stdout.close()
        return got

    def test_05_malformed_host(self):
        echo = ('{"jsonrpc":"2.0","id":9,"method":"tools/call",'
                '"params":{"name":"echo","arguments":{"message":"ok"}}}')
        msgs = [self.init_msg(), '{"jsonrpc":"2.0","method":"notifications/initialized"}',
                "this is not json",
                json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping",
                            "params": {"p": "z" * FRAME_MAX}}),
                '{"jsonrpc":"2.0","id":3,"method":"ping","result":1}',
                echo]
        got = self.raw_stdio("everything", msgs, lambda g: any(x.get("id") == 9 for x in g))
        by_id = {g.get("id"): g for g in got if g.get("id") is not None}
        nulls = [g["error"]["code"] for g in got if g.get("id") is None and "error" in g]
        self.assertEqual(by_id[1]["result"]["serverInfo"]["name"], "mcp-servers/everything")
        self.assertIn(-32700, nulls)  # not JSON
        self.assertIn(-32001, nulls)  # over the cap
        self.assertEqual(by_id[3]["error"]["code"], -32600)
        self.assertEqual(by_id[9]["result"]["content"][0]["text"], "Echo: ok", got)
        # The same over the HTTP endpoint (JSON answers: Accept without an event stream).
        _, _, url, tok = self.endpoint("x")
        port = int(url.split(":")[2].split("/")[0])

        def post(body, sid=None):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
            h = {"Host": "127.0.0.1:%d" % port, "Authorization": "Bearer " + tok,
                 "Content-Type": "application/json", "Accept": "application/json"}
            if sid:
                h["Mcp-Session-Id"] = sid
            c.request("POST", "/mcp", body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            c.close()
            return r.status, r.getheader("Mcp-Session-Id"), data
        st, sid, body = post(self.init_msg())
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["result"]["serverInfo"]["name"], "mcp-servers/everything")
        self.assertEqual(post('{"jsonrpc":"2.0","method":"notifications/initialized"}', sid)[0], 202)
        st, _, body = post("{nope", sid)
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], -32700)
        st, _, body = post(json.dumps({"jsonrpc": "2.0", "id": 4, "method": "ping",
                                       "params": {"p": "y" * FRAME_MAX}}), sid)
        self.assertEqual(st, 413)
        self.assertEqual(json.loads(body)["error"]["code"], -32001)
        st, _, body = post(echo, sid)
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"], "Echo: ok")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("DELETE", "/mcp", headers={"Host": "127.0.0.1:%d" % port, "Mcp-Session-Id": sid,
                                             "Authorization": "Bearer " + tok})
        self.assertEqual(c.getresponse().status, 200)
        c.close()
        self.assertIsNone(self.d.proc.poll(), "the daemon stays up")

    # -- 06 ------------------------------------------------------------------
    def test_06_malformed_server(self):
        self.cli("mcp", "add", VM, "noisy", "--", "sh", "-c",
                 "echo 'this is not json'; head -c %d /dev/zero | tr '\\0' x; echo; "
                 "exec node %s/%s stdio" % (FRAME_MAX * 2, self.dir, ENTRY))
        echo = ('{"jsonrpc":"2.0","id":9,"method":"tools/call",'
                '"params":{"name":"echo","arguments":{"message":"ok"}}}')
        got = self.raw_stdio("noisy", [self.init_msg(), echo],
                             lambda g: any(x.get("id") == 9 for x in g))
        by_id = {g.get("id"): g for g in got if g.get("id") is not None}
        nulls = [g["error"] for g in got if g.get("id") is None and "error" in g]
        self.assertEqual([e["code"] for e in nulls], [-32603, -32603], got)
        self.assertIn("over %d bytes" % FRAME_MAX, nulls[1]["message"])
        self.assertEqual(by_id[1]["result"]["serverInfo"]["name"], "mcp-servers/everything")
        self.assertEqual(by_id[9]["result"]["content"][0]["text"], "Echo: ok")
        self.assertEqual(self.log("noisy").count("malformed message from the server dropped"), 2)
        self.cli("mcp", "rm", VM, "noisy")
        self.assertIsNone(self.d.proc.poll(), "the daemon stays up")


if __name__ == "__main__":
    unittest.main(verbosity=2)
