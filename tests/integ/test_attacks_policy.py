#!/usr/bin/python3
"""Issue 16, "Policy changes do not reach open connections" and "Sharp
edges", through the real `nilbox proxy` and nilboxd against a fake upstream
that records what it receives:

- a rule change reaches the next request of an open keep-alive TLS tunnel
  (deny rule added, allow rule removed) and the upstream sees nothing;
- a secret unbound or removed mid-connection is not injected into the next
  request on the same connection;
- a raw (non-HTTP port) tunnel, or a WebSocket after its 101, is closed at once when a deny rule covers it
  or the allow rule that admitted it goes; an allow-once tunnel survives an
  unrelated change;
- 0.0.0.0/0 (and other broad CIDRs) do not open loopback (A13), a narrow
  127.0.0.0/8 does, and broad rules get a warning;
- bindings over public suffixes (*.com) and into hop-by-hop or framing
  headers (Proxy-Authorization, Connection, ...) are refused with the
  reason; allow rules over public suffixes too;
- a request naming Host in Connection keeps Host (the proxy owns it)."""
import http.client
import json
import socket
import ssl
import threading
import time

from proxy_env import ProxyEnv, run_suite

POLKEY = "sk-pol-REALVALUE-8d1e77"
E = None
PX = None
JSON = {"Content-Type": "application/json"}
# Names the fake upstream's certificate carries; 2 resolve entries each (max 16).
NAMES = ("api.test", "other.test", "evil.test", "ws.test", "sse.test")


def setup():
    global E, PX
    E = ProxyEnv(prompt_timeout_ms=4000, names=NAMES).__enter__()
    E.secret("POL_KEY", POLKEY)
    PX = E.proxy(vm="a", extra_resolve=["%s:7000:127.0.0.1:%d" % (n, E.plain_port)
                                        for n in ("raw.test", "raw2.test", "once.test")])


def tunnel(host):
    """A keep-alive HTTPS connection through a CONNECT tunnel of the proxy."""
    ctx = ssl.create_default_context(cafile=E.ca_pem)
    c = http.client.HTTPSConnection("127.0.0.1", PX.port, context=ctx, timeout=15)
    c.set_tunnel(host, 443, headers={"Proxy-Authorization": PX.basic})
    return c


def get(c, path, headers=None):
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def seen(target):
    return [r for r in E.received() if r["target"] == target]


def header(row, name):
    return [v for k, v in row["headers"] if k.lower() == name.lower()]


def rule_rm(rid):
    E.cli("rule", "rm", str(rid))


def test_rule_change_reaches_open_tunnel():
    allow = E.rule("allow", "api.test:443")
    c = tunnel("api.test")
    try:
        st, _, _ = get(c, "/echo/pol-1")
        assert st == 200, st
        sock = c.sock
        assert sock is not None and len(seen("/echo/pol-1")) == 1
        # The sequence: the allow rule goes, a deny rule comes.
        rule_rm(allow["id"])
        E.rule("deny", "api.test")
        assert c.sock is sock, "the client still holds the same tunnel"
        st, h, body = get(c, "/echo/pol-2")
        assert st == 403, (st, body)
        assert h.get("x-nilbox-reason") == "deny-rule", h
        assert seen("/echo/pol-2") == [], "the upstream must see nothing"
    finally:
        c.close()
    rows = [r for r in E.audit("gate.decision") if r.get("host") == "api.test"]
    assert any((r.get("detail") or {}).get("decision") == "deny" for r in rows), rows


def test_deny_rule_wins_over_existing_allow():
    E.rule("allow", "other.test:443")
    c = tunnel("other.test")
    try:
        assert get(c, "/echo/pol2-1")[0] == 200
        sock = c.sock
        deny = E.rule("deny", "other.test:443")
        st, h, _ = get(c, "/echo/pol2-2")
        assert c.sock is None or c.sock is not sock or st == 403
        assert st == 403 and h.get("x-nilbox-reason") == "deny-rule", (st, h)
        assert seen("/echo/pol2-2") == []
    finally:
        c.close()
    # Once the deny rule is gone again, a new tunnel works.
    rule_rm(deny["id"])
    c = tunnel("other.test")
    try:
        assert get(c, "/echo/pol2-3")[0] == 200
    finally:
        c.close()


def pending_prompt(host, timeout=10):
    def find():
        st, _, body = E.d.unix("GET", "/v1/prompts")
        for p in json.loads(body)["prompts"]:
            if p["host"] == host:
                return p
        return None
    return E.wait_for(find, timeout)


def test_allow_rule_removed_asks_again():
    """Without any deny rule: the admission by a removed rule does not hold;
    the next request waits on a prompt, and a deny-once refuses it."""
    allow = E.rule("allow", "evil.test:443")
    c = tunnel("evil.test")
    try:
        assert get(c, "/echo/pol3-1")[0] == 200
        rule_rm(allow["id"])
        out = {}

        def second():
            try:
                out["r"] = get(c, "/echo/pol3-2")
            except Exception as e:  # noqa: BLE001 - reported below
                out["e"] = e
        t = threading.Thread(target=second)
        t.start()
        p = pending_prompt("evil.test")
        st, _, body = E.d.unix("POST", "/v1/prompts/%d/answer" % p["id"],
                               json.dumps({"answer": "deny-once"}), JSON)
        assert st == 200, body
        t.join(15)
        assert "r" in out, out
        assert out["r"][0] == 403, out
        assert seen("/echo/pol3-2") == []
    finally:
        c.close()


def test_unbind_mid_connection():
    E.rule("allow", "ws.test:443")
    b = E.bind("POL_KEY", "ws.test")
    bid = b.get("id") or b.get("binding", {}).get("id")
    assert bid, b
    auth = {"Authorization": "Bearer POL_KEY"}
    c = tunnel("ws.test")
    try:
        assert get(c, "/echo/pol4-1", auth)[0] == 200
        assert header(seen("/echo/pol4-1")[0], "Authorization") == ["Bearer " + POLKEY]
        sock = c.sock
        E.cli("secret", "unbind", str(bid))
        st, _, body = get(c, "/echo/pol4-2", auth)
        assert st == 200 and c.sock is sock, st
        row = seen("/echo/pol4-2")[0]
        assert header(row, "Authorization") == ["Bearer POL_KEY"], row
        assert POLKEY.encode() not in body
        # Bound again, then the secret itself removed: same thing.
        E.bind("POL_KEY", "ws.test")
        assert get(c, "/echo/pol4-3", auth)[0] == 200
        assert header(seen("/echo/pol4-3")[0], "Authorization") == ["Bearer " + POLKEY]
        E.cli("secret", "rm", "POL_KEY")
        assert get(c, "/echo/pol4-4", auth)[0] == 200 and c.sock is sock
        assert header(seen("/echo/pol4-4")[0], "Authorization") == ["Bearer POL_KEY"]
    finally:
        c.close()
        E.secret("POL_KEY", POLKEY)


def raw_tunnel(host):
    s = socket.create_connection(("127.0.0.1", PX.port), timeout=10)
    s.sendall(b"CONNECT %s:7000 HTTP/1.1\r\nProxy-Authorization: %s\r\nHost: %s:7000\r\n\r\n"
              % (host.encode(), PX.basic.encode(), host.encode()))
    head = s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    # The upstream on the other end speaks HTTP: one keep-alive exchange.
    s.sendall(b"GET /echo/raw HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode())
    got = b""
    deadline = time.time() + 10
    while b"\r\n\r\n" not in got and time.time() < deadline:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200"), got
    time.sleep(0.2)  # the rest of the body
    s.setblocking(False)
    try:
        s.recv(65536)
    except BlockingIOError:
        pass
    s.setblocking(True)
    return s


def closed_within(s, seconds):
    """True when the peer closes `s` (EOF or reset) within `seconds`,
    without our sending anything."""
    s.settimeout(seconds)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_raw_tunnel_closed_at_once_on_deny():
    E.rule("allow", "raw.test:7000")
    s = raw_tunnel("raw.test")
    try:
        assert not closed_within(s, 0.3), "an unrelated moment: the tunnel stays"
        E.rule("deny", "raw.test")
        assert closed_within(s, 3), "a deny rule closes the raw tunnel at once"
    finally:
        s.close()
    rows = [r for r in E.audit("gate.decision") if r.get("host") == "raw.test"]
    assert any((r.get("detail") or {}).get("via") == "policy-change" for r in rows), rows


def test_raw_tunnel_closed_when_allow_goes():
    allow = E.rule("allow", "raw2.test:7000")
    other = E.rule("allow", "unrelated.test:7000")
    s = raw_tunnel("raw2.test")
    try:
        rule_rm(other["id"])  # a change that does not concern this tunnel
        assert not closed_within(s, 0.5)
        rule_rm(allow["id"])
        assert closed_within(s, 3), "the rule that admitted the tunnel is gone"
    finally:
        s.close()


def test_allow_once_tunnel_survives_unrelated_change_but_not_deny():
    out = {}

    def connect():
        try:
            out["s"] = raw_tunnel("once.test")
        except Exception as e:  # noqa: BLE001 - reported below
            out["e"] = e
    t = threading.Thread(target=connect)
    t.start()
    p = pending_prompt("once.test")
    st, _, body = E.d.unix("POST", "/v1/prompts/%d/answer" % p["id"],
                           json.dumps({"answer": "allow-once"}), JSON)
    assert st == 200, body
    t.join(15)
    assert "s" in out, out
    s = out["s"]
    try:
        tmp = E.rule("allow", "elsewhere.test:7000")
        assert not closed_within(s, 0.5), "allow-once holds for this connection"
        rule_rm(tmp["id"])
        E.rule("deny", "once.test:7000")
        assert closed_within(s, 3), "a later deny rule still wins"
    finally:
        s.close()


def test_allow_once_inspected_tunnel():
    """allow-once admits this tunnel for its lifetime: its later requests
    pass without a new prompt, also across unrelated rule changes (and a
    rule that covers it for a while); a later deny rule still wins."""
    c = tunnel("sse.test")
    out = {}

    def first():
        try:
            out["r"] = get(c, "/echo/once-1")
        except Exception as e:  # noqa: BLE001 - reported below
            out["e"] = e
    t = threading.Thread(target=first)
    t.start()
    try:
        p = pending_prompt("sse.test")
        st, _, body = E.d.unix("POST", "/v1/prompts/%d/answer" % p["id"],
                               json.dumps({"answer": "allow-once"}), JSON)
        assert st == 200, body
        t.join(15)
        assert out.get("r", (0,))[0] == 200, out
        tmp = E.rule("allow", "unrelated-once.test:443")
        assert get(c, "/echo/once-2")[0] == 200
        cover = E.rule("allow", "sse.test:443")
        assert get(c, "/echo/once-3")[0] == 200
        rule_rm(cover["id"])
        rule_rm(tmp["id"])
        assert get(c, "/echo/once-4")[0] == 200, "no new prompt: allow-once holds"
        st, _, body = E.d.unix("GET", "/v1/prompts")
        assert not [q for q in json.loads(body)["prompts"] if q["host"] == "sse.test"]
        E.rule("deny", "sse.test")
        st, h, _ = get(c, "/echo/once-5")
        assert st == 403 and h.get("x-nilbox-reason") == "deny-rule", (st, h)
        assert seen("/echo/once-5") == []
    finally:
        c.close()


def test_websocket_closed_on_deny():
    """A WebSocket after its 101 is a byte pipe: a deny rule closes it at once."""
    import websocket
    E.cli("rule", "add", "allow", "evil.test:443", check=False)
    ws = websocket.create_connection("wss://evil.test/ws", http_proxy_host="127.0.0.1",
                                     http_proxy_port=PX.port, proxy_type="http",
                                     http_proxy_auth=("nilbox", PX.token),
                                     sslopt={"ca_certs": E.ca_pem}, timeout=10)
    try:
        ws.send("hello")
        assert ws.recv() == "hello"
        E.rule("deny", "evil.test:443")
        ws.settimeout(3)
        t0 = time.time()
        try:
            ws.recv()
            closed = False
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            closed = True
        except websocket.WebSocketTimeoutException:
            closed = False
        assert closed and time.time() - t0 < 3, "the WebSocket must be closed at once"
    finally:
        ws.close()


def test_A13_broad_cidr_does_not_open_loopback():
    port = E.upstream(tls=False)
    url = "http://127.0.0.1:%d/echo/a13-broad" % port
    r = E.cli("rule", "add", "allow", "0.0.0.0/0")
    assert "warning" in r.stderr and "loopback" in r.stderr, r.stderr
    j = E.rule("allow", "::/0")
    assert j.get("warnings") and "loopback" in j["warnings"][0], j
    code, body, _ = E.curl(PX, url)
    assert code == 502 and b"loopback" in body, (code, body)
    assert seen("/echo/a13-broad") == []
    for broad in ("0.0.0.0/1", "64.0.0.0/2", "126.0.0.0/7"):
        E.rule("allow", broad)
    code, body, _ = E.curl(PX, url)
    assert code == 502 and seen("/echo/a13-broad") == [], (code, body)
    # Named narrowly: opens.
    j = E.rule("allow", "127.0.0.0/8")
    assert not j.get("warnings"), j
    code, body, _ = E.curl(PX, "http://127.0.0.1:%d/echo/a13-narrow" % port)
    assert code == 200, (code, body)
    assert len(seen("/echo/a13-narrow")) == 1


def test_public_suffix_binding_and_rule_refused():
    for host in ("*.com", "*.co.uk", "*.COM.", "*.io", "*"):
        r = E.cli("secret", "bind", "POL_KEY", "--host", host, check=False)
        assert r.returncode != 0, (host, r.stdout)
        assert "public suffix" in r.stderr, r.stderr
    r = E.cli("rule", "add", "allow", "*.com", check=False)
    assert r.returncode != 0 and "public suffix" in r.stderr, r.stderr
    for spec in ("*", "*:443", "*.co.uk:443"):
        r = E.cli("rule", "add", "allow", spec, check=False)
        assert r.returncode != 0, r.stdout
        assert "every destination" in r.stderr or "public suffix" in r.stderr, r.stderr
    # Denying a whole suffix is fine; an ordinary wildcard binding too.
    E.rule("deny", "*.zzz-deny-test.com")
    E.rule("deny", "*.info")
    E.bind("POL_KEY", "*.example.com")


def test_hop_by_hop_binding_refused():
    for h in ("Proxy-Authorization", "proxy-authorization", "Connection", "Keep-Alive", "TE",
              "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Host",
              "Proxy-Connection"):
        r = E.cli("secret", "bind", "POL_KEY", "--host", "api.test", "--header",
                  "%s: Bearer {secret}" % h, check=False)
        assert r.returncode != 0, (h, r.stdout)
        assert "cannot go into header" in r.stderr, (h, r.stderr)
    r = E.cli("secret", "bind", "POL_KEY", "--host", "api.test", "--header",
              "Proxy-Authorization: Bearer {secret}", check=False)
    assert "hop-by-hop" in r.stderr, r.stderr


def test_connection_host_keeps_host():
    E.cli("rule", "add", "allow", "ws.test:443", check=False)  # may exist already
    E.cli("secret", "bind", "POL_KEY", "--host", "ws.test", check=False)
    c = tunnel("ws.test")
    try:
        for i, conn_hdr in enumerate(("Host", "host, keep-alive", "HOST")):
            path = "/echo/connhost-%d" % i
            st, _, body = get(c, path, {"Connection": conn_hdr,
                                        "Authorization": "Bearer POL_KEY"})
            if st == 400:
                assert seen(path) == []
                continue
            assert st == 200, (st, body)
            row = seen(path)[0]
            assert header(row, "Host") == ["ws.test"], row
            assert header(row, "Authorization") == ["Bearer " + POLKEY], row
    finally:
        c.close()


def test_daemon_stops_clean():
    """After all of the above (connections closed under it by rule changes),
    nilboxd stops with exit 0 and no sanitizer report."""
    E.stop_clean()


if __name__ == "__main__":
    run_suite(setup, [test_rule_change_reaches_open_tunnel,
                      test_deny_rule_wins_over_existing_allow, test_allow_rule_removed_asks_again,
                      test_unbind_mid_connection, test_raw_tunnel_closed_at_once_on_deny,
                      test_raw_tunnel_closed_when_allow_goes,
                      test_allow_once_tunnel_survives_unrelated_change_but_not_deny,
                      test_allow_once_inspected_tunnel, test_websocket_closed_on_deny,
                      test_A13_broad_cidr_does_not_open_loopback,
                      test_public_suffix_binding_and_rule_refused, test_hop_by_hop_binding_refused,
                      test_connection_host_keeps_host, test_daemon_stops_clean])
