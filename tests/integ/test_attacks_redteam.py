#!/usr/bin/python3
"""Red-team attack suite (h-redteam): shapes the other attack suites do not
try, against the real `nilbox proxy` (VM "a") and a scripted upstream
written here that records every raw request head it gets and answers with
hand-made bytes (TLS for bench.test and other.test, plain HTTP for
plain.test).

  A1   Host steering inside a tunnel: trailing dot, case, ports, IPs,
       userinfo, keep-alive with another Host, HTTP/1.0 without Host,
       absolute-form tricks, tabs and spaces.
  A3/4 placement: duplicate credential headers, placeholder as part of a
       longer token, in Proxy-Authorization, a header name, the target,
       a chunked body, Cookie, other case; the proxy's own credentials.
  A5   reflection in response shapes: reason phrase, 1xx headers, header
       names, chunk extensions, trailers, split pieces, bytes past
       Content-Length, CL+TE, EOF bodies, 101 to other upgrades, stacked
       codings, multipart/byteranges, 304 with a body.
  TLS  ALPN h2 only, HTTP/2 prior knowledge, renegotiation, a second
       ClientHello inside the tunnel.
  A15  smuggling extras.

Every test has a positive control: the real value does reach the bound
host in its placement on the same path, so a missing defence shows."""
import base64
import gzip
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse

import fake_aws
from daemon_harness import status_of
from proxy_env import ProxyEnv, read_all, run_suite, with_auth

# Only tchar bytes: the value can also be written as a header name.
KEY = "sk-RED.team+Key_0123456789abcdefXYZ"
XKEY = "xk-SECOND.value_9876543210zyxwvuABC"  # x-api-key binding on a.api.test
CKEY = "ck-CLEAR.value_1122334455667788ZZ"  # cleartext binding on plain.test
QKEY = "qk-QUERY.value_5566778899aabbccQQ"  # ?key= binding on a.api.test
AWS_AKID, AWS_SECRET = "AKIAREDTEAMKEY0000042", "rEdTeAm/SeCrEt+Key0123456789abcdefABCDEF"
SIGHOST = "meta.test"  # SigV4 binding under /bkt-a only
HOST = "bench.test"
XHOST = "a.api.test"
OTHER = "other.test"
PLAIN = "plain.test"
E = None
UP = None
UPP = None


def spellings(v):
    return [v, urllib.parse.quote(v, safe=""), v.lower(), v.upper(),
            base64.b64encode(v.encode()).decode(), v.encode().hex()]


def assert_clean(blob, what):
    """No spelling of any real value, nor a long piece of one, in blob."""
    if isinstance(blob, str):
        blob = blob.encode("latin-1", "replace")
    low = blob.lower()
    for v in (KEY, XKEY, CKEY, QKEY, AWS_SECRET, AWS_AKID):
        for s in spellings(v):
            assert s.encode().lower() not in low, ("%s: the real value reached the client as %r"
                                                   % (what, s), blob[:600])
        for i in range(0, len(v) - 12):
            assert v[i:i + 12].encode() not in blob, (what, "piece", v[i:i + 12], blob[:600])
        try:
            d = gzip.decompress(blob[blob.index(b"\x1f\x8b"):])
            assert v.encode() not in d, (what, "inside gzip")
        except (ValueError, OSError, EOFError):
            pass


# ---- the scripted upstream ---------------------------------------------------

class Upstream:
    """Threaded HTTP/1.1 server, keep-alive. Records (raw head, body) of
    every request; answers per path, with the credential it got (`tok`)
    written into the answer wherever the route says."""

    def __init__(self, cert, key, tls=True):
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen = []
        self.extra = {}  # path -> bytes that arrived after that request (same connection)
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, raw):
        try:
            c = self.ctx.wrap_socket(raw, server_side=True) if self.ctx else raw
            c.settimeout(10)
            f = c.makefile("rb")
            while True:
                head = b""
                while True:
                    line = f.readline(65536)
                    if not line:
                        return
                    head += line
                    if line in (b"\r\n", b"\n"):
                        break
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hl = []
                for ln in lines[1:]:
                    if ln:
                        k, _, v = ln.partition(":")
                        hl.append((k.strip(), v.strip()))
                hd = {k.lower(): v for k, v in hl}
                body = b""
                if "content-length" in hd:
                    body = f.read(int(hd["content-length"]))
                elif hd.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        n = int(f.readline().split(b";")[0], 16)
                        if n == 0:
                            while f.readline() not in (b"\r\n", b""):
                                pass
                            break
                        body += f.read(n)
                        f.readline()
                with self.lock:
                    self.seen.append({"method": method, "target": target, "head": head,
                                      "headers": hl, "body": body})
                if not self.route(c, f, method, target, hd, body):
                    return
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            try:
                raw.close()
            except OSError:
                pass

    @staticmethod
    def send(c, status, body=b"", extra=b"", reason=b"OK"):
        if isinstance(body, str):
            body = body.encode()
        c.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n"
                  % (status, reason, len(body), extra) + body)
        return True

    def route(self, c, f, method, target, hd, body):
        u = urllib.parse.urlsplit(target)
        p = u.path
        auth = hd.get("authorization", "") or hd.get("x-api-key", "") or hd.get("x-clear", "")
        tok = (auth.split(" ", 1)[1] if " " in auth else auth).encode()
        S = self.send
        if p == "/ok":
            return S(c, 200, "ok")
        if p == "/echo":
            return S(c, 200, b"got=" + tok)
        if p == "/reason":
            return S(c, 200, "ok", reason=b"OK " + tok)
        if p == "/early":
            c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </" + tok + b">; rel=preload\r\nX-E: " +
                      tok + b"\r\n\r\n")
            time.sleep(0.1)
            c.sendall(b"HTTP/1.1 100 Continue\r\nX-C: " + tok + b"\r\n\r\n")
            return S(c, 200, "final")
        if p == "/hname":
            return S(c, 200, "ok", extra=tok + b": 1\r\nX-" + tok + b": 2\r\n")
        if p == "/chunkext":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"2;k=" + tok + b"\r\nok\r\n2;" + tok + b"\r\nok\r\n0\r\n\r\n")
            return True
        if p == "/trailer":
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
                      b"2\r\nok\r\n0\r\nX-T: " + tok + b"\r\n" + tok + b": v\r\n\r\n")
            return True
        if p == "/split-chunks":
            h = len(tok) // 2
            c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
                      b"%x\r\n" % h + tok[:h] + b"\r\n")
            time.sleep(0.2)
            c.sendall(b"%x\r\n" % (len(tok) - h) + tok[h:] + b"\r\n0\r\n\r\n")
            return True
        if p == "/cl-short":
            # Content-Length covers 5 bytes; more follow on the keep-alive connection
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" +
                      b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(tok) + tok)
            time.sleep(0.2)
            c.sendall(b"late " + tok)
            return True
        if p == "/cl-te":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"%x\r\n" % len(tok) + tok + b"\r\n0\r\n\r\n")
            return True
        if p == "/http10":
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nv=" + tok + b"\n")
            time.sleep(0.2)
            return False
        if p == "/up-h2c":
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                      b"Upgrade: h2c\r\n\r\n" + tok)
            time.sleep(0.3)
            c.sendall(b"\x81" + bytes([len(tok)]) + tok)  # and a valid-looking text frame
            time.sleep(0.3)
            return False
        if p.startswith("/ce"):
            ce = urllib.parse.unquote(u.query).encode()
            data = gzip.compress(b"k=" + tok + b"x" * 300)
            return S(c, 200, data, extra=b"Content-Encoding: " + ce + b"\r\n")
        if p == "/ranges":
            b = (b"--SEP\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-9/100\r\n\r\n" +
                 b"v=" + tok[:8] + b"\r\n--SEP\r\nContent-Type: text/plain\r\nContent-Range: "
                 b"bytes 10-99/100\r\n\r\nv=" + tok + b"\r\n--SEP--\r\n")
            c.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Type: multipart/byteranges; "
                      b"boundary=SEP\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
            return True
        if p == "/304":
            c.sendall(b"HTTP/1.1 304 Not Modified\r\nETag: \"" + tok + b"\"\r\nContent-Length: %d"
                      b"\r\n\r\n" % len(tok) + tok)
            time.sleep(0.2)
            return True
        if p == "/304-te":
            c.sendall(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"%x\r\n" % len(tok) + tok + b"\r\n0\r\n\r\n")
            time.sleep(0.2)
            return True
        if p == "/204":
            c.sendall(b"HTTP/1.1 204 No Content\r\n\r\n" + tok)
            time.sleep(0.2)
            return True
        return S(c, 404, "no route")

    def got(self, pred):
        with self.lock:
            return [r for r in self.seen if pred(r)]

    def key_reached(self, path, v=KEY):
        return [r for r in self.got(lambda r: r["target"].startswith(path))
                if v.encode() in r["head"] + r["body"]]


def setup():
    global E, UP, UPP
    E = ProxyEnv(prompt_timeout_ms=1500, names=("evil.test",))
    E.d.env["NILBOX_AUDIT_AGG_WINDOW_MS"] = "200"
    E.__enter__()
    UP = Upstream(E.up_cert, E.up_key)
    UPP = Upstream(None, None, tls=False)
    E.secret("RED_KEY", KEY)
    E.bind("RED_KEY", HOST)
    E.secret("X_KEY", XKEY)
    E.bind("X_KEY", XHOST, "--header", "x-api-key: {secret}")
    E.secret("Q_KEY", QKEY)
    E.bind("Q_KEY", XHOST, "--query", "key")
    E.secret("AWS_RT", "%s\n%s\n" % (AWS_AKID, AWS_SECRET))
    E.cli("secret", "bind-aws", "AWS_RT", "--host", SIGHOST, "--path-prefix", "/bkt-a")
    E.secret("CLEAR_KEY", CKEY)
    E.bind("CLEAR_KEY", PLAIN, "--header", "x-clear: {secret}", "--allow-cleartext")
    E.rule("allow", "127.0.0.1:%d" % UP.port)
    E.rule("allow", "127.0.0.1:%d" % UPP.port)
    for h in (HOST, XHOST, OTHER, SIGHOST):
        E.rule("allow", h + ":443")
    E.rule("allow", HOST + ":8443", "--http")
    E.rule("allow", PLAIN + ":80")
    E.rule("allow", OTHER + ":80")
    res = ["%s:443:127.0.0.1:%d" % (h, UP.port) for h in (HOST, XHOST, OTHER, SIGHOST)]
    res += ["%s:8443:127.0.0.1:%d" % (HOST, UP.port)]
    res += ["%s:80:127.0.0.1:%d" % (h, UPP.port) for h in (PLAIN, OTHER)]
    E.px = E.proxy(vm="a", extra_resolve=res)


# ---- helpers ----------------------------------------------------------------

def tunnel(host=HOST, port=443, alpn=None):
    return E.tunnel(host, port, px=E.px, alpn=alpn)


def tls(raw, host=HOST, port=443, timeout=6):
    s = tunnel(host, port)
    s.sendall(raw)
    return read_all(s, timeout)


def dechunk(body):
    data, rest = b"", body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            break
        data, rest = data + rest[:n], rest[n + 2:]
    return data


def read_response(s, timeout=6):
    """One response with a Content-Length or chunked body off s (kept open)."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            return buf, b""
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    lh = head.lower()
    if b"transfer-encoding: chunked" in lh:
        while not rest.endswith(b"0\r\n\r\n"):
            b = s.recv(65536)
            if not b:
                break
            rest += b
    else:
        n = 0
        for ln in lh.split(b"\r\n"):
            if ln.startswith(b"content-length:"):
                n = int(ln.split(b":")[1])
        while len(rest) < n:
            b = s.recv(65536)
            if not b:
                break
            rest += b
    return head + b"\r\n\r\n", rest


def req(path, host=HOST, extra=b"", method=b"GET", close=True, auth=b"Bearer RED_KEY"):
    return (b"%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n%s%s\r\n"
            % (method, path.encode(), host.encode(), auth, extra,
               b"Connection: close\r\n" if close else b""))


def raw_proxy(data, timeout=6):
    s = socket.create_connection(("127.0.0.1", E.px.port), timeout=timeout)
    s.sendall(data)
    return read_all(s, timeout)


def rows(kind, threat=None, since=0):
    out = [r for r in E.audit(kind) if r["seq"] > since]
    return [r for r in out if threat is None or r["detail"].get("threat") == threat]


def last_id():
    a = E.audit()
    return max([r["seq"] for r in a] or [0])


def n_seen():
    with UP.lock:
        return len(UP.seen)


# ---- A1 host steering -----------------------------------------------------------

def test_A1_host_spellings_in_tunnel():
    ok = {b"bench.test": "exact", b"bench.test.": "trailing dot", b"BENCH.Test": "upper case",
          b"bench.test:443": "explicit port", b"bench.test:0443": "zero-padded port",
          b"bench.test\t": "trailing tab", b"bench.test ": "trailing space"}
    for i, (hv, what) in enumerate(ok.items()):
        path = "/echo?ok=%d" % i
        out = tls(b"GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer RED_KEY\r\n"
                  b"Connection: close\r\n\r\n" % (path.encode(), hv))
        assert status_of(out) == 200, (what, out[:300])
        assert UP.key_reached(path), ("positive control: %s names the approved host" % what)
        assert_clean(out, what)
    before = last_id()
    bad = [b"evil.test", b"bench.test:8443", b"bench.test:444", b"[127.0.0.1]", b"127.0.0.1",
           b"127.0.0.1:%d" % UP.port, b"evil.test@bench.test", b"bench.test@evil.test",
           b"bench.test:443@evil.test", b"bench.test.evil.test", b"bench.test..", b".bench.test",
           b"bench.test:", b"bench.test:65979", b"bench%2etest", b"bench.test\tevil.test",
           b"bench.test evil.test", b"bench.test,evil.test", b"[::ffff:127.0.0.1]",
           b"bench.test:443:443", b"bench.test#@evil.test", b"bench.test/evil.test",
           b"bench.test\\evil.test", b"xn--bench.test", b"bench.test:+443", b"bench.test:-443",
           b"bench.test:4430", b"bench.test:0", b"*.bench.test"]
    for i, hv in enumerate(bad):
        path = "/echo?bad=%d" % i
        out = tls(b"GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer RED_KEY\r\n"
                  b"Connection: close\r\n\r\n" % (path.encode(), hv))
        assert status_of(out) in (400, 403), (hv, out[:300])
        assert not UP.got(lambda r: r["target"] == path), (hv, "went upstream")
    E.wait_for(lambda: len(rows("refusal", "A1", before)) >= 5, timeout=10)


def test_A1_second_request_other_host_keepalive():
    s = tunnel()
    s.sendall(req("/echo?ka=1", close=False))
    head, body = read_response(s)
    assert status_of(head) == 200 and UP.key_reached("/echo?ka=1"), (head, "positive control")
    assert_clean(head + body, "first")
    # the same tunnel, a second and third request naming other hosts
    before = last_id()
    s.sendall(req("/echo?ka=2", host=OTHER, close=False))
    out = read_all(s)
    assert status_of(out) == 403 and b"host-mismatch" in out, out[:300]
    assert not UP.got(lambda r: r["target"] == "/echo?ka=2")
    E.wait_for(lambda: rows("refusal", "A1", before), timeout=10)
    # pipelined: a good request and a bad one in one record
    s = tunnel()
    s.sendall(req("/echo?ka=3", close=False) + req("/echo?ka=4", host=OTHER, close=False) +
              req("/echo?ka=5", close=True))
    out = read_all(s)
    assert status_of(out) == 200, out[:300]
    assert UP.key_reached("/echo?ka=3"), "positive control (pipelined)"
    assert not UP.got(lambda r: r["target"] in ("/echo?ka=4", "/echo?ka=5")), "past the refusal"
    assert b"host-mismatch" in out, out[-400:]
    assert_clean(out, "pipelined")


def test_A1_http10_and_absolute_forms():
    before = last_id()
    out = tls(b"GET /echo?h10 HTTP/1.0\r\nAuthorization: Bearer RED_KEY\r\n\r\n")
    assert status_of(out) == 400, out[:300]
    assert not UP.got(lambda r: r["target"].startswith("/echo?h10"))
    out = tls(b"GET /echo?h10ok HTTP/1.0\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n")
    assert status_of(out) == 200 and UP.key_reached("/echo?h10ok"), ("positive control", out[:300])
    assert_clean(out, "http/1.0")
    good = "https://bench.test/echo?abs-ok"
    out = tls(b"GET %s HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
              b"Connection: close\r\n\r\n" % good.encode())
    assert status_of(out) == 200 and UP.key_reached("/echo?abs-ok"), ("positive control", out[:300])
    assert_clean(out, "absolute ok")
    for i, t in enumerate(("https://bench.test@evil.test/echo", "https://evil.test#@bench.test/echo",
                           "https://evil.test%23@bench.test/echo", "https://bench.test:443@evil.test/",
                           "https://evil.test/echo", "https://bench.test:8443/echo",
                           "http://bench.test/echo", "https://evil.test\\@bench.test/echo",
                           "https://evil.test?@bench.test/echo", "//evil.test/echo",
                           "https:/evil.test/echo", "https://bench.test.evil.test/echo",
                           "https://[::1]/echo", "https://127.0.0.1/echo")):
        out = tls(b"GET %s HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
                  b"X-N: %d\r\nConnection: close\r\n\r\n" % (t.encode(), i))
        sent = UP.got(lambda r: ("X-N", str(i)) in r["headers"])
        assert_clean(out, t)
        if sent:
            # went out: only ever as an origin-form request to the approved name
            r = sent[0]
            assert r["target"].startswith("/"), (t, r["target"])
            assert ("Host", "bench.test") in r["headers"], (t, r["headers"])
        else:
            assert status_of(out) in (400, 403), (t, out[:300])
    E.wait_for(lambda: rows("refusal", None, before), timeout=10)


# ---- A3/A4 placement ------------------------------------------------------------

def test_A4_duplicate_credential_headers():
    before = n_seen()
    out = tls(req("/echo?dup-ok"))
    assert UP.key_reached("/echo?dup-ok"), "positive control"
    assert_clean(out, "dup ok")
    shapes = [b"Authorization: Bearer RED_KEY\r\nAuthorization: Bearer RED_KEY\r\n",
              b"Authorization: Bearer RED_KEY\r\nAuthorization: Bearer other\r\n",
              b"Authorization: Bearer other\r\nAuthorization: Bearer RED_KEY\r\n",
              b"Authorization: Bearer RED_KEY\r\nauthorization: Basic eDp5\r\n"]
    since = last_id()
    for i, hs in enumerate(shapes):
        path = "/echo?dup=%d" % i
        out = tls(b"GET %s HTTP/1.1\r\nHost: bench.test\r\n%sConnection: close\r\n\r\n"
                  % (path.encode(), hs))
        assert_clean(out, "dup %d" % i)
        assert status_of(out) == 400 and b"ambiguous-credentials" in out, (i, out[:300])
        assert not UP.got(lambda r: r["target"] == path), (i, "went upstream")
    E.wait_for(lambda: len(rows("refusal", "A4", since)) >= 1, timeout=10)
    # two fields of a header no value goes into on this host: not our business
    out = tls(req("/echo?dup-x", extra=b"X-Api-Key: X_KEY\r\nX-Api-Key: other\r\n"))
    assert status_of(out) == 200, out[:300]
    # the header a binding of another host uses, sent twice there: refused too
    out = tls(b"GET /echo?dup-y HTTP/1.1\r\nHost: a.api.test\r\nX-Api-Key: X_KEY\r\n"
              b"x-api-key: X_KEY\r\nConnection: close\r\n\r\n", host=XHOST)
    assert status_of(out) == 400 and not UP.got(lambda r: r["target"] == "/echo?dup-y"), out[:300]
    out = tls(b"GET /echo?dup-z HTTP/1.1\r\nHost: a.api.test\r\nX-Api-Key: X_KEY\r\n"
              b"Connection: close\r\n\r\n", host=XHOST)
    assert status_of(out) == 200 and UP.key_reached("/echo?dup-z", XKEY), "positive control"
    assert_clean(out, "x-api-key")
    # a query parameter named twice
    for i, q in enumerate(("key=Q_KEY&key=Q_KEY", "key=Q_KEY&key=mine", "key=mine&a=1&key=Q_KEY")):
        path = "/echo?dq=%d&%s" % (i, q)
        out = tls(b"GET %s HTTP/1.1\r\nHost: a.api.test\r\nConnection: close\r\n\r\n"
                  % path.encode(), host=XHOST)
        assert status_of(out) == 400 and b"ambiguous-credentials" in out, (q, out[:300])
        assert not UP.got(lambda r: r["target"].startswith("/echo?dq=%d&" % i)), q
    out = tls(b"GET /echo?dq=ok&key=Q_KEY HTTP/1.1\r\nHost: a.api.test\r\nConnection: close"
              b"\r\n\r\n", host=XHOST)
    assert status_of(out) == 200, out[:300]
    assert [r for r in UP.got(lambda r: r["target"].startswith("/echo?dq=ok&"))
            if QKEY.replace("+", "%2B") in r["target"]], "positive control: query injected"
    assert_clean(out, "query")
    assert n_seen() > before


def test_A4_placeholder_near_misses():
    out = tls(req("/echo?nm-ok"))
    assert UP.key_reached("/echo?nm-ok"), "positive control"
    shapes = {
        "prefix": b"Authorization: Bearer xRED_KEY\r\n",
        "suffix": b"Authorization: Bearer RED_KEYx\r\n",
        "lower": b"Authorization: Bearer red_key\r\n",
        "upper scheme": b"Authorization: BEARER RED_KEY\r\n",
        "two spaces": b"Authorization: Bearer  RED_KEY\r\n",
        "tab": b"Authorization: Bearer\tRED_KEY\r\n",
        "quoted": b"Authorization: Bearer \"RED_KEY\"\r\n",
        "list": b"Authorization: Bearer RED_KEY, Bearer RED_KEY\r\n",
        "proxy-auth": b"Proxy-Authorization: Bearer RED_KEY\r\n",
        "name": b"RED_KEY: Bearer RED_KEY\r\nBearer-RED_KEY: 1\r\n",
        "cookie": b"Cookie: a=RED_KEY; Authorization=Bearer RED_KEY\r\n",
        "x-api-key": b"X-Api-Key: RED_KEY\r\n",
        "other-secret": b"Authorization: Bearer X_KEY\r\n",
    }
    for i, (what, hs) in enumerate(shapes.items()):
        path = "/echo?nm=%d" % i
        out = tls(b"GET %s HTTP/1.1\r\nHost: bench.test\r\n%sConnection: close\r\n\r\n"
                  % (path.encode(), hs))
        assert_clean(out, what)
        assert not UP.key_reached(path), (what, "substituted outside the placement")
        assert not UP.key_reached(path, XKEY), (what, "another binding's value")
        for r in UP.got(lambda r: r["target"] == path):
            assert not [k for k, _ in r["headers"] if k.lower() == "proxy-authorization"], what
    E.wait_for(lambda: [r for r in E.audit("leak") if r["detail"].get("where") == "header-name"],
               timeout=10)
    # in the target, every part of it
    for i, t in enumerate(("/echo/RED_KEY", "/echo?Authorization=Bearer%20RED_KEY",
                           "/echo?k=RED_KEY", "/echo;RED_KEY", "/echo#RED_KEY")):
        out = tls(b"GET %s HTTP/1.1\r\nHost: bench.test\r\nX-T: %d\r\nConnection: close\r\n\r\n"
                  % (t.encode(), i))
        assert_clean(out, t)
        for r in UP.got(lambda r: ("X-T", str(i)) in r["headers"]):
            assert KEY.encode() not in r["head"], t
    # in a chunked body, split across chunks, and in a plain body
    body = b"5\r\nRED_K\r\n2\r\nEY\r\n10\r\nBearer RED_KEY  \r\n0\r\n\r\n"
    out = tls(b"POST /echo?body HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
              b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + body)
    assert status_of(out) == 200, out[:300]
    r = UP.got(lambda r: r["target"] == "/echo?body")[0]
    assert KEY.encode() in r["head"], "positive control: header injected"
    assert r["body"] == b"RED_KEYBearer RED_KEY  " and KEY.encode() not in r["body"], r["body"]
    assert_clean(out, "chunked body")


def test_A4_proxy_credentials_never_forwarded():
    # plain proxy toward a cleartext binding: the listener's token must not go on
    tok = E.px.token.encode()
    out = raw_proxy(b"GET http://plain.test/echo?pa HTTP/1.1\r\nHost: plain.test\r\n" + E.px.auth +
                    b"x-clear: CLEAR_KEY\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200, out[:300]
    r = UPP.got(lambda r: r["target"] == "/echo?pa")
    assert r and CKEY.encode() in r[0]["head"], "positive control: cleartext binding injected"
    assert tok not in r[0]["head"] and b"roxy-" not in r[0]["head"], r[0]["head"]
    assert_clean(out, "plain")
    # the same with the token also named in Connection, and spelled in lower case
    out = raw_proxy(b"GET http://plain.test/echo?pa2 HTTP/1.1\r\nHost: plain.test\r\n" +
                    E.px.auth.lower().replace(E.px.basic.lower().encode(), E.px.basic.encode()) +
                    b"Connection: keep-alive, Proxy-Authorization\r\nx-clear: CLEAR_KEY\r\n"
                    b"Connection: close\r\n\r\n")
    r = UPP.got(lambda r: r["target"] == "/echo?pa2")
    assert status_of(out) == 200 and r, out[:300]
    assert tok not in r[0]["head"] and b"roxy-" not in r[0]["head"].lower(), r[0]["head"]
    # inside a tunnel, a Proxy-Authorization sent to the upstream is dropped
    out = tls(req("/echo?pa3", extra=E.px.auth))
    r = UP.got(lambda r: r["target"] == "/echo?pa3")
    assert r and KEY.encode() in r[0]["head"], "positive control"
    assert tok not in r[0]["head"] and b"proxy-" not in r[0]["head"].lower(), r[0]["head"]
    # cleartext secret over the plain proxy toward an unbound host: dummy only
    out = raw_proxy(b"GET http://other.test/echo?pa4 HTTP/1.1\r\nHost: other.test\r\n" +
                    E.px.auth + b"x-clear: CLEAR_KEY\r\nConnection: close\r\n\r\n")
    r = UPP.got(lambda r: r["target"] == "/echo?pa4")
    assert r and CKEY.encode() not in r[0]["head"] and tok not in r[0]["head"], r


def sigv4_get(path, service, n):
    """A GET signed with the VM's placeholder credentials, as an AWS SDK would."""
    amzdate = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = "%s/us-east-1/%s/aws4_request" % (amzdate[:8], service)
    headers = [("Host", SIGHOST), ("x-amz-date", amzdate),
               ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"), ("X-N", "sig%d" % n)]
    signed = "host;x-amz-content-sha256;x-amz-date"
    sig, _ = fake_aws.signature("AWS_SECRET_ACCESS_KEY", "GET", path, headers, signed,
                                "UNSIGNED-PAYLOAD", amzdate, scope, False)
    auth = "AWS4-HMAC-SHA256 Credential=AWS_ACCESS_KEY_ID/%s, SignedHeaders=%s, Signature=%s" % (
        scope, signed, sig)
    out = tls(("GET %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % h for h in headers) +
               "Authorization: %s\r\nConnection: close\r\n\r\n" % auth).encode(), host=SIGHOST)
    assert_clean(out, path)
    got = UP.got(lambda r: ("X-N", "sig%d" % n) in r["headers"])
    return out, got[0]["head"] if got else b""


def test_A4_sigv4_path_prefix_dot_segments():
    # positive control: under the prefix, the request is signed again with the real key
    _, head = sigv4_get("/bkt-a/obj", "s3", 0)
    assert b"Credential=" + AWS_AKID.encode() in head, head
    _, head = sigv4_get("/bkt-a", "execute-api", 1)
    assert b"Credential=" + AWS_AKID.encode() in head, head
    # paths an upstream resolves outside the prefix: never signed with the real key
    for i, path in enumerate(("/bkt-a/../bkt-b/obj", "/bkt-a/%2e%2e/bkt-b", "/bkt-a/..%2fbkt-b",
                              "/bkt-a//../bkt-b", "/bkt-a/./../bkt-b", "/bkt-a/..",
                              "/bkt-a;/../bkt-b", "/bkt-a%2F..%2Fbkt-b", "/bkt-ab/obj")):
        for j, service in enumerate(("s3", "execute-api")):
            n = 10 + 2 * i + j
            _, head = sigv4_get(path, service, n)
            assert AWS_AKID.encode() not in head, (path, service, head)


# ---- A5 reflection: response shapes ----------------------------------------------

def test_A5_reflect_response_shapes():
    before = last_id()
    for path in ("/reason", "/early", "/hname", "/chunkext", "/trailer", "/split-chunks",
                 "/http10", "/ranges", "/304", "/304-te", "/204", "/cl-te"):
        out = tls(req(path, method=b"POST", extra=b"Content-Length: 0\r\n"
                      b"Expect: 100-continue\r\n" if path == "/early" else b""))
        assert UP.key_reached(path), ("positive control: injected", path)
        assert_clean(out, path)
        if path in ("/reason", "/hname", "/chunkext", "/split-chunks", "/http10", "/ranges"):
            assert status_of(out) in (200, 206, 502), (path, out[:300])
    E.wait_for(lambda: rows("leak", "A5", before), timeout=10)


def test_A5_bytes_past_content_length():
    s = tunnel()
    s.sendall(req("/cl-short", close=False))
    head, body = read_response(s)
    assert status_of(head) == 200 and dechunk(body) == b"hello", (head, body)
    assert UP.key_reached("/cl-short"), "positive control"
    time.sleep(0.5)
    # the next request on the same tunnel: its answer must be its own
    s.sendall(req("/ok", close=True))
    out = head + body + read_all(s)
    assert_clean(out, "past Content-Length")
    assert out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"\r\n2\r\nok\r\n0\r\n\r\n"), \
        out[-300:]


def test_A5_upgrade_other_protocols():
    before = n_seen()
    for up in (b"h2c", b"websocket, h2c", b"h2c, websocket", b"TLS/1.2", b"foo"):
        out = tls(req("/up-h2c", extra=b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: %s\r\n"
                      b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n" % up, close=False))
        assert_clean(out, b"upgrade " + up)
        assert status_of(out) != 101 or b"websocket" in up, (up, out[:300])
    # a WebSocket request answered with 101 Upgrade: h2c and raw bytes
    key = base64.b64encode(os.urandom(16))
    out = tls(req("/up-h2c", extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n", close=False),
              timeout=3)
    assert UP.key_reached("/up-h2c"), "positive control"
    assert_clean(out, "101 h2c to a websocket request")
    assert n_seen() > before


def test_A5_stacked_codings():
    for i, ce in enumerate(("identity, gzip", "gzip, identity", "identity,gzip", " gzip",
                            "gzip ", "GZip", "x-gzip", "gzip;q=1", "identity", "gzip, gzip",
                            "chunked", "", "identity, identity")):
        path = "/ce?%s" % urllib.parse.quote(ce)
        out = tls(req(path + "&i=%d" % i))
        assert UP.key_reached("/ce"), "positive control"
        assert_clean(out, "Content-Encoding " + repr(ce))
        st = status_of(out)
        assert st in (200, 502), (ce, out[:300])


# ---- TLS / ALPN ------------------------------------------------------------------

def test_A5_alpn_h2_only_and_prior_knowledge():
    s = tunnel(alpn=["h2"])
    assert s.selected_alpn_protocol() in (None, "http/1.1"), s.selected_alpn_protocol()
    s.sendall(req("/echo?alpn"))
    out = read_all(s)
    assert status_of(out) == 200 and UP.key_reached("/echo?alpn"), ("positive control", out[:200])
    assert_clean(out, "alpn h2 only")
    s = tunnel(alpn=["h2", "http/1.1"])
    assert s.selected_alpn_protocol() == "http/1.1", s.selected_alpn_protocol()
    s.close()
    # HTTP/2 prior knowledge: connection preface, SETTINGS, a HEADERS frame
    # that carries the placeholder in a literal (not Huffman) header
    before = n_seen()
    hdr = b"\x00\x0dauthorization\x0eBearer RED_KEY"
    hb = b"\x82\x87\x41\x0abench.test\x84" + hdr
    frames = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" +
              len(hb).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + hb)
    out = tls(frames)
    assert status_of(out) in (0, 400, 505), out[:300]
    assert_clean(out, "h2 prior knowledge")
    assert n_seen() == before, "the h2 bytes reached the upstream"


def test_A5_renegotiation_and_second_clienthello():
    # TLS 1.2, a request, a renegotiation asked by the client (openssl
    # s_client's interactive 'R'), another request
    p = subprocess.Popen(["openssl", "s_client", "-tls1_2", "-crlf", "-proxy",
                          "127.0.0.1:%d" % E.px.port, "-proxy_user", "nilbox", "-proxy_pass",
                          "pass:" + E.px.token, "-connect", "%s:443" % HOST, "-servername", HOST,
                          "-CAfile", E.ca_pem],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for piece, wait in ((b"GET /echo?reneg-before HTTP/1.1\nHost: bench.test\n"
                             b"Authorization: Bearer RED_KEY\n\n", 1.5), (b"R\n", 1.0),
                            (b"GET /echo?reneg-after HTTP/1.1\nHost: bench.test\n"
                             b"Authorization: Bearer RED_KEY\n\n", 1.0)):
            time.sleep(wait)
            try:
                p.stdin.write(piece)
                p.stdin.flush()
            except BrokenPipeError:
                break
        time.sleep(1.0)
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
        out = p.stdout.read()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert UP.key_reached("/echo?reneg-before"), ("positive control", out[-2000:])
    assert b"RED_KEY" in out, out[-2000:]  # the answer, redacted
    assert b"RENEGOTIATING" in out, out[-2000:]
    # refused: the connection ends, the request after it never goes out
    assert b"no renegotiation" in out or b"alert" in out, out[-2000:]
    assert not UP.got(lambda r: r["target"] == "/echo?reneg-after"), "sent after renegotiation"
    assert_clean(out, "renegotiation")
    # a second ClientHello inside the established tunnel
    s = tunnel()
    s.sendall(req("/echo?ch1", close=False))
    head, body = read_response(s)
    assert status_of(head) == 200 and UP.key_reached("/echo?ch1"), "positive control"
    # a ClientHello of a fresh handshake, made with memory BIOs
    ib, ob = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context(cafile=E.ca_pem).wrap_bio(ib, ob, server_hostname=HOST)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    ch = ob.read()
    assert ch[:1] == b"\x16", ch[:10]
    s.sendall(ch + req("/echo?ch2"))
    out = read_all(s)
    assert_clean(head + body + out, "second ClientHello")
    assert not UP.got(lambda r: r["target"] == "/echo?ch2"), "bytes after a ClientHello went out"


# ---- A15 smuggling extras -------------------------------------------------------------

def test_A15_smuggling_extras():
    out = tls(req("/echo?sm-ok"))
    assert status_of(out) == 200 and UP.key_reached("/echo?sm-ok"), "positive control"
    before = last_id()
    n0 = n_seen()
    base = b"POST /echo?sm HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
    shapes = [
        base + b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        base + b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        base + b"Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        base + b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
        base + b"Transfer-Encoding:\tchunked\x0b\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        base + b"Content-Length: +5\r\n\r\nhello",
        base + b"Content-Length: 5, 5\r\n\r\nhello",
        base + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        base + b"Content-Length: 0x5\r\n\r\nhello",
        base + b"Content-Length: 5 5\r\n\r\nhello",
        base + b"Content-Length: 05\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        base + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
        base + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
        base + b"X-A: a\nb\r\nContent-Length: 0\r\n\r\n",
        base + b"X-A: a\x7fb\r\nContent-Length: 0\r\n\r\n",
        b"POST  /echo?sm HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n",
        b"POST /echo?sm  HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n",
        b"POST /echo?sm HTTP/1.1 \r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n",
        b"POST\t/echo?sm HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n",
        b"POST /echo?sm HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
        b" continued\r\n\r\n",
        b"POST /echo?sm HTTP/1.1\nHost: bench.test\nAuthorization: Bearer RED_KEY\n\n",
        b"POST /echo?sm HTTP/1.2\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n",
        b"POST /echo?sm HTTP/1.1\r\nHost: bench.test\r\nHost: evil.test\r\n"
        b"Authorization: Bearer RED_KEY\r\n\r\n",
        base + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        base + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        base + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        base + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n",
    ]
    for i, sh in enumerate(shapes):
        out = tls(sh)
        assert 400 <= status_of(out) < 500 or status_of(out) == 505, (i, sh, out[:300])
        assert_clean(out, "shape %d" % i)
    assert n_seen() == n0, [r["head"] for r in UP.seen[n0:]]
    E.wait_for(lambda: len(rows("refusal", None, before)) >= 10, timeout=10)
    a15 = rows("refusal", "A15", before)
    assert len(a15) >= 10, a15


def test_A15_plain_proxy_url_host_mismatch():
    out = raw_proxy(b"GET http://plain.test/echo?ph HTTP/1.1\r\nHost: plain.test\r\n" + E.px.auth +
                    b"x-clear: CLEAR_KEY\r\nConnection: close\r\n\r\n")
    assert status_of(out) == 200 and UPP.key_reached("/echo?ph", CKEY), "positive control"
    before = last_id()
    for i, (url, host) in enumerate((("http://plain.test/echo?ph1", "other.test"),
                                     ("http://other.test/echo?ph2", "plain.test"),
                                     ("http://plain.test@other.test/echo?ph3", "other.test"),
                                     ("http://other.test#@plain.test/echo?ph4", "plain.test"),
                                     ("http://plain.test:8080/echo?ph5", "plain.test"),
                                     ("http://plain.test/echo?ph6", "plain.test:8080"))):
        out = raw_proxy(b"GET %s HTTP/1.1\r\nHost: %s\r\n" % (url.encode(), host.encode()) +
                        E.px.auth + b"x-clear: CLEAR_KEY\r\nConnection: close\r\n\r\n")
        assert status_of(out) in (400, 403), (url, host, out[:300])
        assert not UPP.got(lambda r: "?ph%d" % (i + 1) in r["target"]), (url, host)
        assert_clean(out, url)
    E.wait_for(lambda: rows("refusal", "A1", before), timeout=10)


def test_A15_expect_continue_pipelined():
    # Expect: 100-continue and the body plus a smuggled request in one segment
    smuggled = b"GET /echo?smuggled HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Bearer RED_KEY\r\n\r\n"
    data = (b"POST /echo?exp HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello" + smuggled)
    out = tls(data)
    assert UP.key_reached("/echo?exp"), ("positive control", out[:300])
    assert not UP.got(lambda r: "smuggled" in r["target"]), "the pipelined request went out"
    assert b"host-mismatch" in out or out.count(b"HTTP/1.1 2") == 1, out[-300:]
    assert_clean(out, "expect pipelined")
    # the body counted short: the rest must be parsed as a request of its own
    data = (b"POST /echo?exp2 HTTP/1.1\r\nHost: bench.test\r\nAuthorization: Bearer RED_KEY\r\n"
            b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n" + smuggled)
    out = tls(data)
    assert UP.key_reached("/echo?exp2"), "positive control"
    assert not UP.got(lambda r: "smuggled" in r["target"]), "the pipelined request went out"
    assert_clean(out, "expect pipelined 2")


if __name__ == "__main__":
    run_suite(setup, [test_A1_host_spellings_in_tunnel, test_A1_second_request_other_host_keepalive,
                      test_A1_http10_and_absolute_forms, test_A4_duplicate_credential_headers,
                      test_A4_placeholder_near_misses, test_A4_proxy_credentials_never_forwarded,
                      test_A4_sigv4_path_prefix_dot_segments,
                      test_A5_reflect_response_shapes,
                      test_A5_bytes_past_content_length, test_A5_upgrade_other_protocols,
                      test_A5_stacked_codings, test_A5_alpn_h2_only_and_prior_knowledge,
                      test_A5_renegotiation_and_second_clienthello, test_A15_smuggling_extras,
                      test_A15_plain_proxy_url_host_mismatch, test_A15_expect_continue_pipelined])
