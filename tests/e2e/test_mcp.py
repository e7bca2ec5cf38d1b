#!/usr/bin/env python3
"""End to end: the MCP bridge (docs/internals/mcp.md) with a real MCP client
(@modelcontextprotocol/sdk, tests/integ/mcp_node) and a real MCP stdio server
(tests/e2e/mcp_testsrv.c, static) running in a tiny TCG VM.

  01 registry: add (stdio and --url), ls, bad input, config snippets, persisted
  02 stdio transport (`nilbox mcp stdio`): initialize, tools/list filtered by
     the policy, calls, progress, cancellation, a denied tool, audit rows
  03 Streamable HTTP endpoint: the same client over HTTP with the token;
     server messages outside a request (GET stream), cancellation seen by
     the server
  03b the older HTTP+SSE transport on the same endpoint (SSEClientTransport),
     its admission, raw: malformed/oversized POSTs, a deny on the stream,
     the stream closing ends the session
  04b an HTTP MCP server in the guest (`--url`), reached through `tcp` streams;
     its GET stream (messages outside a request) held by the bridge
  04 wrong token, foreign Origin, foreign Host (DNS rebinding), bad session
  05 server restart: a crashed server answers the next call (initialize replay); 05b-05e
     the server killed between two calls (the next call after the bridge saw the death;
     before, over HTTP, its exit notice delayed by a child; into its pipe, never read);
     05d an HTTP session left without DELETE expires
  06 ask: the call waits for a prompt, answered through `nilbox prompts`
  07 malformed and oversized frames, both directions, raw over stdio; the
     daemon stays up
  08 logs, rm (its sessions end, its endpoint closes)
  09 the daemon stops cleanly with an SSE session open (sanitizer builds)

Env: e2e_env's, plus NB_MCP_TESTSRV (the server binary) and NB_MCP_NODE.
"""
import http.client
import json
import os
import subprocess
import threading
import time
import unittest

from e2e_env import (AGENT, NILBOX, TINY, VmSuite, build_image, need, pause_kill_resume,
                     wait_for)

TESTSRV = os.environ.get("NB_MCP_TESTSRV", "")
NODE_DIR = os.environ.get("NB_MCP_NODE", "")
# Streamable HTTP sessions' idle expiry here (05d): short, yet above any pause between two
# requests of one session in the other cases (SDK clients hold a GET stream meanwhile).
IDLE_S = 20
FRAME_MAX = 65536


def node_ok():
    return NODE_DIR and os.path.isdir(os.path.join(NODE_DIR, "node_modules", "@modelcontextprotocol"))


class McpE2E(VmSuite):
    @classmethod
    def setup(cls):
        need(env=("NB_TEST_NILBOX", "NB_TEST_NILBOXD", "NILBOX_AGENT", "NB_MCP_TESTSRV"),
             tools=("node",))
        if not node_ok():
            raise unittest.SkipTest("npm ci in tests/integ/mcp_node first")
        build_image("tiny", TINY, AGENT)
        cls.d = cls.daemon({"tiny": TINY}, env={"NILBOX_MCP_MAX_FRAME": str(FRAME_MAX),
                                                "NILBOX_MCP_SESSION_IDLE": str(IDLE_S)})
        r = cls.d.cli("vm", "create", "m1", "--start", timeout=300)
        assert r.returncode == 0, r.stderr
        with open(TESTSRV, "rb") as f:
            binary = f.read()
        p = subprocess.run([NILBOX, "exec", "m1", "--", "sh", "-c",
                            "cat > /tmp/mcpsrv && chmod 755 /tmp/mcpsrv"],
                           env=cls.d.env, input=binary, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr

    # -- helpers -------------------------------------------------------------
    def node(self, *args, timeout=180):
        env = dict(self.d.env)
        p = subprocess.run(["node", os.path.join(NODE_DIR, "client.mjs"), *args], env=env,
                           capture_output=True, text=True, timeout=timeout)
        try:
            out = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.fail("client: %r %r\ndaemon: %s" % (p.stdout, p.stderr, self.d.stderr()[-3000:]))
        self.assertNotIn("fatal", out, out.get("fatal"))
        return out

    def node_raw(self, *args, timeout=180):
        p = subprocess.run(["node", os.path.join(NODE_DIR, "client.mjs"), *args], env=dict(self.d.env),
                           capture_output=True, text=True, timeout=timeout)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def info(self, vm, name, token=False):
        return json.loads(self.cli("--json", "mcp", "config", "--client", "vscode", vm, name).stdout) \
            if token else self.get(vm, name)

    def log_count(self, text, name="demo"):
        return self.cli("mcp", "logs", "m1", name).stdout.count(text)

    def check_notify(self, out):
        # notifications/tools/list_changed and the server's own ping, sent
        # after the answer: they travel outside any request.
        self.assertEqual(out["later"], "later")
        self.assertGreaterEqual(out["changed"], 1, out)
        self.assertEqual(out["after"], "after")
        self.assertEqual(out["errors"], [])

    def get(self, vm, name):
        st, _, body = self.d.unix("GET", "/v1/mcp/%s/%s?token=1" % (vm, name))
        self.assertEqual(st, 200, body)
        return json.loads(body)

    def audit_rows(self):
        rows = json.loads(self.cli("--json", "audit", "--kind", "mcp.tool", "--limit", "500").stdout)
        rows = rows.get("rows", rows.get("entries", rows)) if isinstance(rows, dict) else rows
        return sorted([x for x in rows if x.get("kind") == "mcp.tool"], key=lambda x: x["seq"])

    def http(self, port, method, body=None, headers=None, host=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        h = {"Host": host or "127.0.0.1:%d" % port}
        h.update(headers or {})
        c.request(method, "/mcp", body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    # -- 01 ------------------------------------------------------------------
    def test_01_registry(self):
        r = self.cli("mcp", "add", "m1", "demo", "--", "/tmp/mcpsrv")
        self.assertIn("added MCP server m1/demo (stdio)", r.stdout)
        self.cli("mcp", "add", "m1", "web", "--url", "http://127.0.0.1:8931/mcp")
        for bad, msg in ((("m1", "demo", "--", "x"), "already has"),
                         (("m1", "Bad!", "--", "x"), "names are"),
                         (("m1", "x1"), "command"),
                         (("m1", "x2", "--url", "http://example.com/mcp"), "guest's loopback")):
            r = self.cli("mcp", "add", *bad, ok=False)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn(msg, r.stderr, bad)
        ls = json.loads(self.cli("--json", "mcp", "ls").stdout)["servers"]
        self.assertEqual(sorted(s["name"] for s in ls), ["demo", "web"])
        self.assertTrue(all("token" not in s for s in ls), "listings never carry the token")
        self.assertIn("m1", self.cli("mcp", "ls").stdout)
        self.assertIn("mcp stdio", self.cli("mcp", "--help").stdout + self.cli("mcp", "stdio", "--help").stdout)
        cfg = json.loads(self.cli("mcp", "config", "m1", "demo").stdout)["mcpServers"]["m1-demo"]
        self.assertEqual(cfg["args"], ["mcp", "stdio", "m1", "demo"])
        self.assertEqual(cfg["env"]["NILBOX_HOME"], self.d.home)
        tok = self.get("m1", "demo")["token"]
        for client, top in (("claude-code", "mcpServers"), ("cursor", "mcpServers"), ("vscode", "servers")):
            c = json.loads(self.cli("mcp", "config", "--client", client).stdout)[top]["m1-demo"]
            self.assertEqual(c["headers"]["Authorization"], "Bearer " + tok)
        r = self.cli("mcp", "config", "--client", "emacs", ok=False)
        self.assertEqual(r.returncode, 2)
        # Policy: deny `secret`, which tools/list then hides.
        self.cli("mcp", "policy", "m1", "demo", "secret", "deny")
        self.assertEqual(json.loads(self.cli("--json", "mcp", "policy", "m1", "demo").stdout),
                         {"secret": "deny"})
        r = self.cli("mcp", "policy", "m1", "demo", "x", "maybe", ok=False)
        self.assertIn("allow, deny, ask or clear", r.stderr)

    # -- 02 ------------------------------------------------------------------
    def test_02_stdio(self):
        out = self.node("stdio", "basic", NILBOX, "mcp", "stdio", "m1", "demo")
        self.assertEqual(out["server"], "nilbox-testsrv")
        self.assertNotIn("secret", out["tools"])
        self.assertIn("echo", out["tools"])
        self.assertEqual(out["echo"], "héllo")
        self.assertEqual(out["add"], "42")
        self.assertEqual(out["slow"], "slow done")
        self.assertEqual(out["progress"], [1, 2, 3])
        self.assertFalse(out["cancelled"]["ok"], out["cancelled"])
        self.assertFalse(out["denied"]["ok"])
        self.assertEqual(out["denied"]["code"], -32002, out["denied"])
        self.assertIn("denied by the policy", out["denied"]["message"])
        self.assertEqual(out["after"], "still here")
        # The server saw the cancellation (its stderr is the log).
        wait_for(lambda: "slow cancelled" in self.cli("mcp", "logs", "m1", "demo").stdout, 20,
                 "the cancellation in the server's log")
        rows = self.audit_rows()
        tools = [(r["detail"]["tool"], r["detail"]["decision"]) for r in rows]
        self.assertIn(("echo", "allow"), tools)
        self.assertIn(("secret", "deny"), tools)
        # The cancelled call's row closes with the cancellation, not when
        # the session ends (the server never answers it).
        slow = {r["detail"]["reason"]: r["detail"].get("error") for r in rows
                if r["detail"]["tool"] == "slow"}
        self.assertEqual(slow, {"cancelled": None, "policy": False})
        text = json.dumps(rows)
        self.assertNotIn("héllo", text, "arguments never reach the audit log")
        self.assertNotIn("may I", text)
        pongs = self.log_count("got response srv-ping-1 (result)")
        self.check_notify(self.node("stdio", "notify", NILBOX, "mcp", "stdio", "m1", "demo"))
        wait_for(lambda: self.log_count("got response srv-ping-1 (result)") > pongs, 20,
                 "the client's answer to the server's ping")

    # -- 03 ------------------------------------------------------------------
    def test_03_http(self):
        info = self.get("m1", "demo")
        cancels = self.log_count("slow cancelled")
        since = self.audit_rows()[-1]["seq"]
        out = self.node("http", "basic", "http://127.0.0.1:%d/mcp" % info["port"], info["token"])
        self.assertEqual(out["echo"], "héllo")
        self.assertEqual(out["progress"], [1, 2, 3])
        self.assertNotIn("secret", out["tools"])
        self.assertEqual(out["denied"]["code"], -32002, out["denied"])
        self.assertFalse(out["cancelled"]["ok"])
        self.assertEqual(out["after"], "still here")
        wait_for(lambda: self.log_count("slow cancelled") > cancels, 20,
                 "the HTTP client's cancellation in the server's log")
        slow = [r["detail"]["reason"] for r in self.audit_rows()
                if r["seq"] > since and r["detail"]["tool"] == "slow"]
        self.assertEqual(sorted(slow), ["cancelled", "policy"])
        pongs = self.log_count("got response srv-ping-1 (result)")
        self.check_notify(self.node("http", "notify", "http://127.0.0.1:%d/mcp" % info["port"],
                                    info["token"]))
        wait_for(lambda: self.log_count("got response srv-ping-1 (result)") > pongs, 20,
                 "the client's answer to the server's ping (POSTed back)")

    # -- 03b -----------------------------------------------------------------
    def test_03b_sse(self):
        info = self.get("m1", "demo")
        url = "http://127.0.0.1:%d/sse" % info["port"]
        cancels = self.log_count("slow cancelled")
        out = self.node("sse", "basic", url, info["token"])
        self.assertEqual(out["server"], "nilbox-testsrv")
        self.assertNotIn("secret", out["tools"])
        self.assertEqual(out["echo"], "héllo")
        self.assertEqual(out["add"], "42")
        self.assertEqual(out["progress"], [1, 2, 3])
        self.assertFalse(out["cancelled"]["ok"])
        self.assertEqual(out["denied"]["code"], -32002, out["denied"])
        self.assertEqual(out["after"], "still here")
        wait_for(lambda: self.log_count("slow cancelled") > cancels, 20,
                 "the SSE client's cancellation in the server's log")
        pongs = self.log_count("got response srv-ping-1 (result)")
        self.check_notify(self.node("sse", "notify", url, info["token"]))
        wait_for(lambda: self.log_count("got response srv-ping-1 (result)") > pongs, 20,
                 "the SSE client's answer to the server's ping")
        # A wrong token does not connect.
        bad = self.node_raw("sse", "basic", url, "0" * 64)
        self.assertIn("fatal", bad)
        self.assertIn("401", bad["fatal"])

    def sse_open(self, port, headers=None, host=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        h = {"Host": host or "127.0.0.1:%d" % port, "Accept": "text/event-stream"}
        h.update(headers or {})
        c.request("GET", "/sse", headers=h)
        return c, c.getresponse()

    @staticmethod
    def sse_event(r):
        ev = {}
        while True:
            line = r.readline()
            if not line:
                return None
            line = line.decode().rstrip("\n")
            if not line:
                return ev
            k, _, v = line.partition(": ")
            ev[k] = v

    def test_03c_sse_raw(self):
        info = self.get("m1", "demo")
        port, tok = info["port"], info["token"]
        auth = {"Authorization": "Bearer " + tok}
        for hdr, host, want in (({}, None, 401),
                                ({"Authorization": "Bearer " + "0" * 64}, None, 401),
                                (dict(auth, Origin="http://evil.example"), None, 403),
                                (auth, "evil.example:%d" % port, 403),
                                (dict(auth, Accept="application/json"), None, 406)):
            c, r = self.sse_open(port, hdr, host)
            self.assertEqual(r.status, want, (hdr, host))
            c.close()
        c, r = self.sse_open(port, dict(auth, Origin="http://localhost:%d" % port))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.getheader("Content-Type"), "text/event-stream")
        ev = self.sse_event(r)
        self.assertEqual(ev["event"], "endpoint")
        self.assertRegex(ev["data"], r"^/message\?sessionId=[0-9a-f]{32}$")
        path = ev["data"]

        def post(body, headers=auth, p=path, host=None):
            pc = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            pc.request("POST", p, body=body, headers=dict(
                headers, **{"Content-Type": "application/json",
                            "Host": host or "127.0.0.1:%d" % port}))
            pr = pc.getresponse()
            data = pr.read()
            pc.close()
            return pr.status, data

        init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        # The POST side has the same admission.
        self.assertEqual(post(init, {})[0], 401)
        self.assertEqual(post(init, dict(auth, Origin="http://evil.example"))[0], 403)
        self.assertEqual(post(init, auth, host="rebind.example:%d" % port)[0], 403)
        self.assertEqual(post(init, auth, p="/message?sessionId=" + "f" * 32)[0], 404)
        self.assertEqual(post(init, auth, p="/message")[0], 404)
        st, _ = post(init)
        self.assertEqual(st, 202)
        ev = self.sse_event(r)
        self.assertEqual(ev["event"], "message")
        self.assertEqual(json.loads(ev["data"])["result"]["serverInfo"]["name"], "nilbox-testsrv")
        self.assertEqual(post('{"jsonrpc":"2.0","method":"notifications/initialized"}')[0], 202)
        st, body = post("{nope")
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], -32700)
        st, body = post(json.dumps({"jsonrpc": "2.0", "id": 9, "method": "x",
                                    "params": {"p": "y" * FRAME_MAX}}))
        self.assertEqual(st, 413)
        self.assertEqual(json.loads(body)["error"]["code"], -32001)
        # The policy holds here too: a denied tool's error comes on the stream.
        st, _ = post(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                                 "params": {"name": "secret", "arguments": {"text": "x"}}}))
        self.assertEqual(st, 202)
        m = json.loads(self.sse_event(r)["data"])
        self.assertEqual((m["id"], m["error"]["code"]), (2, -32002))
        st, _ = post(json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}))
        m = json.loads(self.sse_event(r)["data"])
        names = [t["name"] for t in m["result"]["tools"]]
        self.assertIn("echo", names)
        self.assertNotIn("secret", names)
        # Closing the stream ends the session: its POST URL is gone.
        r.close()
        c.close()
        wait_for(lambda: post('{"jsonrpc":"2.0","id":4,"method":"ping"}')[0] == 404, 20,
                 "the session to end with its stream")
        self.assertIsNone(self.d.proc.poll(), "the daemon stays up")

    # -- 04 ------------------------------------------------------------------
    def test_04_endpoint_admission(self):
        info = self.get("m1", "demo")
        port, tok = info["port"], info["token"]
        init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}})
        hdr = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        st, h, _ = self.http(port, "POST", init, hdr)
        self.assertEqual(st, 401)
        self.assertIn("Bearer", h.get("www-authenticate", ""))
        st, _, _ = self.http(port, "POST", init, dict(hdr, Authorization="Bearer " + "0" * 64))
        self.assertEqual(st, 401)
        good = dict(hdr, Authorization="Bearer " + tok)
        st, _, body = self.http(port, "POST", init, dict(good, Origin="http://evil.example"))
        self.assertEqual(st, 403, body)
        st, _, body = self.http(port, "POST", init, good, host="evil.example:%d" % port)
        self.assertEqual(st, 403, body)
        # Another server's token does not open this one.
        other = self.get("m1", "web")["token"]
        st, _, _ = self.http(port, "POST", init, dict(hdr, Authorization="Bearer " + other))
        self.assertEqual(st, 401)
        # Right token, loopback Origin: an SSE answer with the session id.
        st, h, body = self.http(port, "POST", init,
                                dict(good, Origin="http://127.0.0.1:%d" % port))
        self.assertEqual(st, 200, body)
        self.assertEqual(h["content-type"], "text/event-stream")
        self.assertRegex(h["mcp-session-id"], r"^[0-9a-f]{32}$")
        self.assertIn(b'"nilbox-testsrv"', body)
        sid = h["mcp-session-id"]
        # JSON mode (no event stream accepted), a bad session, a malformed body.
        js = dict(good, Accept="application/json")
        js["Mcp-Session-Id"] = sid
        st, h, body = self.http(port, "POST", json.dumps(
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"text": "j"}}}), js)
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["result"]["content"][0]["text"], "j")
        st, _, body = self.http(port, "POST", '{"jsonrpc":"2.0","id":3,"method":"ping"}',
                                dict(js, **{"Mcp-Session-Id": "f" * 32}))
        self.assertEqual(st, 404)
        st, _, body = self.http(port, "POST", "{nope", js)
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], -32700)
        st, _, body = self.http(port, "POST", json.dumps(
            {"jsonrpc": "2.0", "id": 4, "method": "x", "params": {"p": "y" * FRAME_MAX}}), js)
        self.assertEqual(st, 413)
        self.assertEqual(json.loads(body)["error"]["code"], -32001)
        st, _, _ = self.http(port, "DELETE", None, js)
        self.assertEqual(st, 200)

    # -- 04b -----------------------------------------------------------------
    def test_04b_guest_http_server(self):
        # The same server, as an HTTP MCP server listening in the guest (`--url`).
        r = subprocess.run([NILBOX, "exec", "m1", "--", "sh", "-c",
                            "/tmp/mcpsrv --http 8931 </dev/null >/dev/null 2>/tmp/http.log &"],
                           env=self.d.env, capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.cli("mcp", "policy", "m1", "web", "secret", "deny")
        out = self.node("stdio", "basic", NILBOX, "mcp", "stdio", "m1", "web")
        self.assertEqual(out["server"], "nilbox-testsrv")
        self.assertNotIn("secret", out["tools"])
        self.assertEqual(out["echo"], "héllo")
        self.assertEqual(out["progress"], [1, 2, 3])
        self.assertEqual(out["denied"]["code"], -32002, out["denied"])
        self.assertEqual(out["after"], "still here")
        rows = [r["detail"] for r in self.audit_rows() if r["detail"]["server"] == "web"]
        self.assertIn(("echo", "allow"), [(r["tool"], r["decision"]) for r in rows])
        # The bridge holds the guest server's GET stream: what it sends outside
        # a request reaches the client, whose answer is POSTed back.
        self.check_notify(self.node("stdio", "notify", NILBOX, "mcp", "stdio", "m1", "web"))

        def guest_log():
            return subprocess.run([NILBOX, "exec", "m1", "--", "cat", "/tmp/http.log"],
                                  env=self.d.env, capture_output=True, text=True, timeout=60).stdout
        wait_for(lambda: "got response srv-ping-1 (result)" in guest_log(), 20,
                 "the client's answer to the guest server's ping")
        self.assertIn("GET stream opened", guest_log())

    # -- 05 ------------------------------------------------------------------
    def test_05_restart(self):
        out = self.node("stdio", "restart", NILBOX, "mcp", "stdio", "m1", "demo")
        self.assertEqual(out["before"], "one")
        self.assertFalse(out["crash"]["ok"])
        self.assertIn("exited", out["crash"]["message"])
        self.assertEqual(out["after"], "two")
        self.assertEqual(out["tools"], 8)
        log = self.cli("mcp", "logs", "m1", "demo").stdout
        self.assertIn("crashing on purpose", log)
        self.assertIn("initialized again", log)

    def server_pids(self):
        """The pids of the test server's processes in the VM."""
        # The tiny image's busybox has no pgrep: read /proc.
        r = subprocess.run([NILBOX, "exec", "m1", "--", "sh", "-c",
                            "for f in /proc/[0-9]*/cmdline; do "
                            "[ \"$(tr -d '\\000' 2>/dev/null < $f)\" = /tmp/mcpsrv ] && "
                            "{ f=${f%/cmdline}; echo ${f#/proc/}; }; done; true"],
                           env=self.d.env, capture_output=True, text=True, timeout=60)
        return set(int(x) for x in r.stdout.split())

    def kill_between_calls(self, *args, name="demo", ends_with_client=True, wait_notice=True,
                           sig="KILL"):
        """The server dies while no call is in flight (killed from outside, between two calls of
        one session): the next call starts it again, replays initialize, and the session goes
        on (found with the real server-everything in e2e_mcp_debian)."""
        def log():
            return self.cli("mcp", "logs", "m1", name).stdout

        def kill(pid):
            subprocess.run([NILBOX, "exec", "m1", "--", "kill", "-" + sig, str(pid)],
                           env=self.d.env, timeout=60)
        pids = self.server_pids
        before = pids()
        starts = log().count("server started")
        try:
            out, status = pause_kill_resume(
                ["node", os.path.join(NODE_DIR, "client.mjs"), *args], self.d.env, pids, kill,
                (lambda: log().count("server killed by signal 9")) if wait_notice else None)
        except AssertionError as e:
            self.fail("%s; bridge log: %s" % (e, log()[-2000:]))
        self.assertNotIn("fatal", out, "%s; bridge log: %s" % (out.get("fatal"), log()[-2000:]))
        self.assertEqual(status, 0)
        self.assertEqual((out["before"], out["after"]), ("one", "two"))
        self.assertGreaterEqual(out["tools"], 8)
        self.assertEqual(out["errors"], [])
        self.assertGreaterEqual(log().count("server started"), starts + 2, log()[-2000:])
        # The session ended with its client: its (restarted) server goes with it. (An HTTP
        # session outlives an SDK client, whose close() sends no DELETE.)
        if ends_with_client:
            wait_for(lambda: not (pids() - before), 60, "the session's server to end with it")
        return log()

    def test_05b_kill_between_calls_stdio(self):
        self.kill_between_calls("stdio", "pause", NILBOX, "mcp", "stdio", "m1", "demo")

    def test_05c_kill_between_calls_http(self):
        # A server whose output outlives it (a child holds its stdout, as Node's servers can):
        # the agent's exit notice comes only when the child ends, long after the death. The
        # next call goes at once, so it reaches the bridge before that notice and is written
        # to the dead server's stdin: the agent says the server never read it (stdin_read),
        # and the bridge gives it to the restarted server instead of failing it with the old
        # one (-32003).
        self.cli("mcp", "add", "m1", "linger", "--", "sh", "-c", "sleep 20 & exec /tmp/mcpsrv")
        try:
            info = self.get("m1", "linger")
            log = self.kill_between_calls(
                "http", "pause", "http://127.0.0.1:%d/mcp" % info["port"], info["token"],
                name="linger", ends_with_client=False, wait_notice=False)
            self.assertIn("request(s) the server never read go to the next one", log)
        finally:
            self.cli("mcp", "rm", "m1", "linger")

    def test_05e_dies_with_call_unread(self):
        # The next call reaches the server's stdin while it still lives, but it dies without
        # reading it (mcp_testsrv on SIGUSR1: stops reading, and kills itself once input
        # waits): the call sat in the dead server's pipe, so it goes to the restarted one.
        # (With libuv's socketpair as stdin the agent lost those bytes from its count.)
        note = "request(s) the server never read go to the next one"
        seen = self.cli("mcp", "logs", "m1", "demo").stdout.count(note)
        log = self.kill_between_calls("stdio", "pause", NILBOX, "mcp", "stdio", "m1", "demo",
                                      wait_notice=False, sig="USR1")
        self.assertIn("input waiting unread, dying", log)
        self.assertEqual(log.count(note), seen + 1, log[-2000:])

    def test_05d_http_session_idle_expiry(self):
        # A Streamable HTTP client that goes without a DELETE: once its session has been idle
        # (no stream open, no request) for NILBOX_MCP_SESSION_IDLE (IDLE_S here), it ends with
        # its server process in the VM, and its id gets 404 (the client initializes again).
        info = self.get("m1", "demo")
        port = info["port"]
        hdr = {"Content-Type": "application/json", "Accept": "application/json",
               "Authorization": "Bearer " + info["token"]}
        before = self.server_pids()
        st, h, body = self.http(port, "POST", json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "leaves", "version": "0"}}}), hdr)
        self.assertEqual(st, 200, body)
        hdr["Mcp-Session-Id"] = h["mcp-session-id"]
        st, _, body = self.http(port, "POST", '{"jsonrpc":"2.0","method":"notifications/initialized"}',
                                hdr)
        self.assertEqual(st, 202, body)
        st, _, body = self.http(port, "POST", json.dumps({
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "still here"}}}), hdr)
        self.assertEqual(st, 200, body)
        self.assertIn("still here", body.decode())
        mine = self.server_pids() - before
        self.assertEqual(len(mine), 1, mine)
        wait_for(lambda: not (self.server_pids() & mine), IDLE_S * 10,
                 "the idle session's server to end")
        st, _, body = self.http(port, "POST", '{"jsonrpc":"2.0","id":3,"method":"tools/list"}', hdr)
        self.assertEqual(st, 404, body)
        self.assertIn("expired", body.decode())

    # -- 06 ------------------------------------------------------------------
    def test_06_ask(self):
        self.cli("mcp", "policy", "m1", "demo", "asked", "ask")
        res = {}
        t = threading.Thread(target=lambda: res.update(
            self.node("stdio", "ask", NILBOX, "mcp", "stdio", "m1", "demo")))
        t.start()
        try:
            def prompt():
                ps = json.loads(self.cli("--json", "prompts").stdout)["prompts"]
                return [p for p in ps if p.get("kind") == "mcp"]
            ps = wait_for(prompt, 90, "the MCP prompt")
            self.assertEqual(ps[0]["host"], "demo/asked")
            self.assertEqual(ps[0]["vm"], "m1")
            self.cli("prompts", "answer", str(ps[0]["id"]), "allow-always")
        finally:
            t.join(120)
        self.assertTrue(res["asked"]["ok"], res)
        self.assertEqual(res["asked"]["value"]["content"][0]["text"], "may I")
        # allow-always became the tool's policy.
        self.assertEqual(json.loads(self.cli("--json", "mcp", "policy", "m1", "demo").stdout)["asked"],
                         "allow")
        rows = [r["detail"] for r in self.audit_rows() if r["detail"]["tool"] == "asked"]
        self.assertEqual(rows[-1]["reason"], "allow-always")

    # -- 07 ------------------------------------------------------------------
    def test_07_malformed(self):
        msgs = [
            '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
            '"capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}',
            '{"jsonrpc":"2.0","method":"notifications/initialized"}',
            "this is not json",
            '[{"jsonrpc":"2.0","id":2,"method":"ping"}]',
            '{"jsonrpc":"2.0","id":3,"method":"ping","result":1}',
            '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","name":"y"}}',
            json.dumps({"jsonrpc": "2.0", "id": 5, "method": "ping", "params": {"p": "z" * FRAME_MAX}}),
            '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"garbage"}}',
            '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"big","arguments":{"bytes":%d}}}'
            % (FRAME_MAX * 2),
            '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"ok"}}}',
        ]
        p = subprocess.Popen([NILBOX, "mcp", "stdio", "m1", "demo"], env=self.d.env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        got = []
        try:
            for m in msgs:
                p.stdin.write(m + "\n")
                p.stdin.flush()
            p.stdin.write("x" * (FRAME_MAX * 3) + "\n")  # over the CLI's own cap
            p.stdin.flush()
            deadline = time.time() + 90
            while time.time() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                got.append(json.loads(line))
                if any(g.get("id") == 8 for g in got) and \
                        sum(1 for g in got if g.get("id") is None) >= 6:
                    break
        finally:
            p.stdin.close()
            p.wait(30)
            p.stdout.close()
        by_id = {g.get("id"): g for g in got if g.get("id") is not None}
        nulls = [g["error"]["code"] for g in got if g.get("id") is None]
        self.assertEqual(by_id[1]["result"]["serverInfo"]["name"], "nilbox-testsrv")
        self.assertIn(-32700, nulls)                      # not JSON; duplicate keys
        self.assertIn(-32600, nulls)                      # a batch
        self.assertEqual(by_id[3]["error"]["code"], -32600)
        self.assertIn(-32001, nulls)                      # over the cap (both sides)
        self.assertIn(-32603, nulls)                      # the server's garbage line, its big answer
        self.assertEqual(by_id[6]["result"]["content"][0]["text"], "after garbage")
        self.assertEqual(by_id[8]["result"]["content"][0]["text"], "ok")
        log = self.cli("mcp", "logs", "m1", "demo").stdout
        self.assertIn("malformed message from the server", log)
        self.assertIsNone(self.d.proc.poll(), "the daemon stays up")

    # -- 08 ------------------------------------------------------------------
    def test_08_rm(self):
        port = self.get("m1", "demo")["port"]
        self.cli("mcp", "rm", "m1", "demo")
        r = self.cli("mcp", "logs", "m1", "demo", ok=False)
        self.assertEqual(r.returncode, 4)
        with self.assertRaises(OSError):
            self.http(port, "GET")
        self.cli("mcp", "rm", "m1", "web")
        self.assertIn("no MCP servers", self.cli("mcp", "ls").stdout)

    # -- 09 ------------------------------------------------------------------
    def test_09_clean_stop(self):
        # A server with an SSE client and a Streamable HTTP session still open
        # when the daemon stops: teardown frees them (sanitizer builds check).
        self.cli("mcp", "add", "m1", "last", "--", "/tmp/mcpsrv")
        info = self.get("m1", "last")
        c, r = self.sse_open(info["port"], {"Authorization": "Bearer " + info["token"]})
        self.assertEqual(self.sse_event(r)["event"], "endpoint")
        self.cli("vm", "stop", "m1", timeout=120)
        rc = self.d.terminate(timeout=30)
        r.close()
        c.close()
        err = self.d.stderr()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, err, err[err.find(bad) - 2000:err.find(bad) + 4000])
        self.assertEqual(rc, 0, err[-3000:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
