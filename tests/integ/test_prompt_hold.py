#!/usr/bin/python3
"""Prompts that clients survive (issue 17): a CONNECT whose destination
waits on a prompt is answered at once and its TLS handshake completes (a
leaf minted for the CONNECT name), then the first request (or, on a raw
port, the first bytes) waits for the decision. Real `nilbox proxy`, real
clients: Node's fetch (undici ProxyAgent, 10 s connect timeout) and Python
requests (5 s connect timeout) against prompts answered after 20 s.

Before the answer the fake upstream saw nothing and no upstream name was
resolved (the proxy's `resolves` counter; the names resolve only through the
test-mode override). A client that goes away leaves the prompt's waiters; a
prompt nobody waits on still takes an answer and an *-always answer still
becomes a rule."""
import json
import os
import queue
import socket
import ssl
import subprocess
import threading
import time

import requests

from daemon_harness import status_of
from proxy_env import ProxyEnv, run_suite

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
HELD = ("other.test", "evil.test", "ws.test", "sse.test")  # in the fake upstream's certificate
E = None


def setup():
    global E
    E = ProxyEnv(prompt_timeout_ms=45000, names=("api.test",)).__enter__()
    extra = ["%s:443:127.0.0.1:%d" % (n, E.tls_port) for n in HELD]
    extra += ["raw.test:7000:127.0.0.1:%d" % E.plain_port,
              "rawdeny.test:7001:127.0.0.1:%d" % E.plain_port]
    E.px = E.proxy(vm="a", extra_resolve=extra)


def proxy_auth():
    """The Proxy-Authorization header line raw sockets send, where the
    proxy has a token (b"" where it has none)."""
    return getattr(E.px, "auth", b"")


def stats():
    st, _, body = E.d.unix("GET", "/v1/proxies")
    assert st == 200, body
    return json.loads(body)["stats"]


def prompts(host=None):
    ps = json.loads(E.cli("--json", "prompts").stdout)["prompts"]
    return [p for p in ps if host is None or p["host"] == host]


def answer(p, a):
    E.cli("prompts", "answer", str(p["id"]), a)


def upstream_saw(prefix):
    return [r for r in E.received() if r["target"].startswith(prefix)]


def node_fetch(url, out):
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "undici")), (
        "undici is not installed in %s: run scripts/install-deps.sh" % NODE_DIR)
    r = subprocess.run(["node", os.path.join(NODE_DIR, "fetch_once.mjs"), E.px.url, E.ca_pem,
                        url], capture_output=True, text=True, timeout=120)
    out["node"] = (r.returncode, r.stdout, r.stderr)


def py_get(url, out, key):
    try:
        r = requests.get(url, proxies={"https": E.px.url, "http": E.px.url}, verify=E.ca_pem,
                         timeout=(5, 90))
        out[key] = (r.status_code, r.reason, r.text, r.headers.get("content-type"),
                    r.headers.get("x-nilbox-reason"))
    except Exception as e:  # noqa: BLE001 - reported by the assertion below
        out[key] = ("error", repr(e))


def test_clients_survive_prompts_answered_after_20s():
    base = stats()["resolves"]
    out = {}
    ts = [threading.Thread(target=node_fetch, args=("https://other.test/held/node", out)),
          threading.Thread(target=py_get, args=("https://evil.test/held/py", out, "py")),
          threading.Thread(target=py_get, args=("https://ws.test/held/deny", out, "deny"))]
    for t in ts:
        t.start()
    ps = {}
    for n in ("other.test", "evil.test", "ws.test"):
        ps[n] = E.wait_for(lambda: prompts(n), timeout=15)[0]
    t0 = time.time()
    # Each client's request is in and waits: one waiter per prompt.
    for n in ps:
        E.wait_for(lambda: prompts(n) and prompts(n)[0]["waiters"] == 1, timeout=10)
    while time.time() - t0 < 20:
        time.sleep(0.5)
        assert not upstream_saw("/held/"), "a held request reached the upstream"
        assert stats()["resolves"] == base, "a name was resolved before the decision"
    for t in ts:
        assert t.is_alive(), ("a client gave up while its prompt was pending", out)
    answer(ps["other.test"], "allow-once")
    answer(ps["evil.test"], "allow-always")
    answer(ps["ws.test"], "deny-once")
    for t in ts:
        t.join(60)
    rc, so, se = out["node"]
    j = json.loads(so)
    assert j.get("status") == 200 and "/held/node" in j["body"], (so, se)
    assert out["py"][0] == 200 and "/held/py" in out["py"][2], out["py"]
    # Denied after 20 s: the 403 JSON arrives inside the TLS tunnel.
    st, _reason, body, ctype, why = out["deny"]
    assert st == 403 and ctype.startswith("application/json"), out["deny"]
    assert json.loads(body)["code"] == "denied" and why == "deny-once", out["deny"]
    assert [r["target"] for r in upstream_saw("/held/")] in (["/held/node", "/held/py"],
                                                              ["/held/py", "/held/node"])
    assert stats()["resolves"] == base + 2  # resolved after the allows, never for the denial
    # allow-always became a rule; one gate row per CONNECT with its prompt.
    rules = json.loads(E.cli("--json", "rule", "ls").stdout)
    rules = rules["rules"] if isinstance(rules, dict) else rules
    assert [r for r in rules if r["target"] == "evil.test" and r["action"] == "allow"], rules
    for n, why in (("other.test", "allow-once"), ("evil.test", "allow-always"),
                   ("ws.test", "deny-once")):
        rows = [r for r in E.audit("gate.decision") if r.get("host") == n]
        assert len(rows) == 1 and rows[0]["detail"]["reason"] == why, rows
        assert rows[0]["detail"]["via"] == "connect" and rows[0]["detail"]["prompt"], rows


def tls_request_then_wait(host):
    """CONNECT, TLS and one request; returns the socket (its request
    waits on the prompt)."""
    s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
    s.sendall(b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n%s\r\n" % (
        host.encode(), host.encode(), proxy_auth()))
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        assert b, "closed during CONNECT"
        head += b
    assert status_of(head) == 200, head
    ctx = ssl.create_default_context(cafile=E.ca_pem)
    t = ctx.wrap_socket(s, server_hostname=host)  # the handshake completes before any answer
    t.sendall(b"GET /gone/1 HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
    return t


def test_client_that_leaves_leaves_the_waiters():
    a = tls_request_then_wait("sse.test")
    p = E.wait_for(lambda: prompts("sse.test"), timeout=10)[0]
    b = tls_request_then_wait("sse.test")
    E.wait_for(lambda: prompts("sse.test")[0]["waiters"] == 2, timeout=10)
    assert p["id"] == prompts("sse.test")[0]["id"], "one prompt for both"
    a.close()
    E.wait_for(lambda: prompts("sse.test")[0]["waiters"] == 1, timeout=10)
    b.close()
    E.wait_for(lambda: prompts("sse.test")[0]["waiters"] == 0, timeout=10)
    ups = [e for e in E.events("prompt.updated") if e["prompt"]["id"] == p["id"]]
    assert [e["prompt"]["waiters"] for e in ups][-2:] == [1, 0], ups
    r = E.cli("prompts")
    line = [ln for ln in r.stdout.splitlines() if "sse.test" in ln]
    assert line and "nobody waiting" in line[0], r.stdout
    # Nobody waits, yet the answer is taken and becomes a rule.
    r = E.cli("prompts", "answer", str(p["id"]), "allow-always")
    assert "nobody was waiting" in r.stdout, r.stdout
    rules = json.loads(E.cli("--json", "rule", "ls").stdout)
    rules = rules["rules"] if isinstance(rules, dict) else rules
    assert [x for x in rules if x["target"] == "sse.test"], rules
    assert not upstream_saw("/gone/"), "a request of a client that left went upstream"
    # A plain proxy request and a raw tunnel that wait leave the same way.
    for host, head in (("plainwait.test", b"GET http://plainwait.test/gone/2 HTTP/1.1\r\n"
                                           b"Host: plainwait.test\r\n%s\r\n"),
                       ("rawwait.test", b"CONNECT rawwait.test:7002 HTTP/1.1\r\n"
                                        b"Host: rawwait.test:7002\r\n%s\r\n")):
        c = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
        c.sendall(head % proxy_auth())
        E.wait_for(lambda: prompts(host) and prompts(host)[0]["waiters"] == 1, timeout=10)
        c.close()
        E.wait_for(lambda: prompts(host)[0]["waiters"] == 0, timeout=10)


def raw_connect(host, port):
    s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
    s.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
        host.encode(), port, host.encode(), port, proxy_auth()))
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        assert b, "closed during CONNECT"
        head += b
    return s, head


def test_raw_tunnel_held_then_allowed_or_denied():
    base = stats()["resolves"]
    # Answered at once although nobody decided yet; the first bytes wait.
    s, head = raw_connect("raw.test", 7000)
    assert status_of(head) == 200, head
    s.sendall(b"GET /raw/held HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n")
    p = E.wait_for(lambda: prompts("raw.test"), timeout=10)[0]
    d, dhead = raw_connect("rawdeny.test", 7001)
    assert status_of(dhead) == 200, dhead
    d.sendall(b"GET /raw/denied HTTP/1.1\r\nHost: rawdeny.test\r\n\r\n")
    pd = E.wait_for(lambda: prompts("rawdeny.test"), timeout=10)[0]
    time.sleep(3)
    assert not upstream_saw("/raw/"), "held raw bytes reached the upstream"
    assert stats()["resolves"] == base, "a name was resolved before the decision"
    answer(p, "allow-once")
    s.settimeout(15)
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    assert status_of(got) == 200 and b"/raw/held" in got, got[:300]
    answer(pd, "deny-once")
    d.settimeout(10)
    assert d.recv(100) == b"", "a denied raw tunnel is closed, with nothing written"
    assert [r["target"] for r in upstream_saw("/raw/")] == ["/raw/held"]
    assert stats()["resolves"] == base + 1
    rows = [r for r in E.audit("gate.decision") if r.get("host") == "rawdeny.test"]
    assert rows and rows[0]["detail"]["decision"] == "deny", rows


class Harness:
    """proxy_harness (the engine without the daemon) with transparent
    listeners: their connections are adopted by a channel listener with a
    fixed destination, as guestsvc does for a guest's connections."""

    def __init__(self, transparent):
        path = os.environ.get("NB_PROXY_HARNESS", "")
        assert path, "NB_PROXY_HARNESS is not set (meson sets it)"
        self.ca = os.path.join(E.tmp, "harness-ca.pem")
        cfg = {"vm": "g", "listen": 0, "upstream_ca": E.up_ca, "prompt_timeout_ms": 30000,
               "ca_out": self.ca,
               "resolve": ["other.test:443:127.0.0.1:%d" % E.tls_port,
                           "raw.test:7000:127.0.0.1:%d" % E.plain_port],
               "rules": [{"action": "allow", "dest": "127.0.0.1:%d" % E.tls_port},
                         {"action": "allow", "dest": "127.0.0.1:%d" % E.plain_port}],
               "transparent": [{"host": h, "port": p} for h, p in transparent]}
        cf = os.path.join(E.tmp, "harness.json")
        with open(cf, "w") as f:
            json.dump(cfg, f)
        self.p = subprocess.Popen([path, cf], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        self.ports = {}
        while True:
            line = self.p.stdout.readline()
            assert line, "proxy_harness did not start"
            if line.startswith("TRANSPARENT "):
                _, dest, port = line.split()
                self.ports[dest] = int(port)
            if line.startswith("LISTEN "):
                break
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line)

    def prompt(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("PROMPT "):
                return json.loads(line.split(" ", 1)[1])
        raise AssertionError("no prompt")

    def answer(self, pid, a):
        self.p.stdin.write("answer %d %s\n" % (pid, a))
        self.p.stdin.flush()

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.p.kill()


def read_all(s, timeout=15):
    s.settimeout(timeout)
    got = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionError, ssl.SSLError):
            break
        if not b:
            break
        got += b
    return got


def test_transparent_connections_held():
    h = Harness([("other.test", 443), ("raw.test", 7000)])
    try:
        # TLS: the handshake completes while the prompt is pending (a leaf
        # for the destination's name), the request waits, nothing upstream.
        s = socket.create_connection(("127.0.0.1", h.ports["other.test:443"]), timeout=10)
        ctx = ssl.create_default_context(cafile=h.ca)
        t = ctx.wrap_socket(s, server_hostname="other.test")
        t.sendall(b"GET /transparent/tls HTTP/1.1\r\nHost: other.test\r\n"
                  b"Connection: close\r\n\r\n")
        p = h.prompt()
        assert p["host"] == "other.test" and p["waiters"] == 1, p
        time.sleep(2)
        assert not upstream_saw("/transparent/"), "a held request reached the upstream"
        h.answer(p["id"], "allow-once")
        got = read_all(t)
        assert status_of(got) == 200 and b"/transparent/tls" in got, got[:300]
        # Raw port: the first bytes wait; deny closes, allow pipes them.
        r = socket.create_connection(("127.0.0.1", h.ports["raw.test:7000"]), timeout=10)
        r.sendall(b"GET /transparent/raw-denied HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        p = h.prompt()
        time.sleep(1)
        h.answer(p["id"], "deny-once")
        assert read_all(r) == b"", "a denied raw connection is closed with nothing written"
        r = socket.create_connection(("127.0.0.1", h.ports["raw.test:7000"]), timeout=10)
        r.sendall(b"GET /transparent/raw HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n")
        p = h.prompt()
        time.sleep(1)
        assert [x["target"] for x in upstream_saw("/transparent/")] == ["/transparent/tls"]
        h.answer(p["id"], "allow-once")
        got = read_all(r)
        assert status_of(got) == 200 and b"/transparent/raw" in got, got[:300]
        assert [x["target"] for x in upstream_saw("/transparent/")] == [
            "/transparent/tls", "/transparent/raw"]
    finally:
        h.close()


if __name__ == "__main__":
    run_suite(setup, [test_clients_survive_prompts_answered_after_20s,
                      test_client_that_leaves_leaves_the_waiters,
                      test_raw_tunnel_held_then_allowed_or_denied,
                      test_transparent_connections_held])
