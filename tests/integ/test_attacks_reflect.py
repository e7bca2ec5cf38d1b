#!/usr/bin/python3
"""THREATS.md A5 (echo exfiltration), the reflection classes an outside
attack suite found (issue 16): a bound upstream that hands the injected
value back to the guest some other way than a plain echo in the answer to
the injecting request.

Each test drives the real `nilbox proxy` (VM "a") against a reflecting
upstream written here (TLS, the ProxyEnv test CA's leaf, answering as
bench.test), and asserts that the real value never reaches the client, in
any spelling we can think of, and that an A5 audit row was written:

  * WebSocket: the handshake's Authorization echoed in a text frame,
    whole; split across a non-final frame and its continuation; with ping
    frames interleaved (and inside a ping); permessage-deflate refused.
  * stored, then fetched: POST /store (placeholder injected), GET /retrieve
    without any placeholder, on the same keep-alive connection and on a new
    one; also from another bound host of the same VM.
  * compressed: gzip and deflate answers that ignore Accept-Encoding, read
    with `curl --compressed` and Python requests; an encoding the proxy
    cannot decode is refused with a 502 JSON error.
  * spellings: percent-encoded (upper and lower hex), JSON with "\\/" and
    "\\u002f", HTML character references.
  * SSE through a scanned host still arrives incrementally.
"""
import base64
import gzip
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import zlib

from daemon_harness import status_of
from proxy_env import ProxyEnv, read_all, run_suite

# The value holds '/', '+' and '=' so that JSON and percent-encoding
# spell it differently from the original.
KEY = "sk-REAL/reflect+Zq9=Xy/0123456789abcd"
KEY2 = "ghp_REAL/second+key=4242/abcdefgh"
KEYB = "vmb_REAL/only+for=vm-b/998877665544"  # bound for VM b only
HOST = "bench.test"
HOST2 = "a.api.test"
HOST3 = "rebind.test"
E = None
UP = None


def spellings(v):
    """Every spelling the test upstream uses (and a few more)."""
    up = "".join("%%%02X" % ord(c) if not c.isalnum() else c for c in v)
    lo = "".join("%%%02x" % ord(c) if not c.isalnum() else c for c in v)
    return [v, up, lo, v.replace("/", "\\/"), v.replace("/", "\\u002f").replace("+", "\\u002b"),
            v.replace("/", "&#x2F;").replace("+", "&#43;"), base64.b64encode(v.encode()).decode()]


def assert_clean(blob, what):
    if isinstance(blob, str):
        blob = blob.encode("latin-1", "replace")
    for v in (KEY, KEY2, KEYB):
        for s in spellings(v)[:6]:
            assert s.encode() not in blob, ("%s: the real value reached the client as %r"
                                            % (what, s), blob[:400])
        # a long enough piece of the value is a leak too
        assert v[5:20].encode() not in blob, (what, blob[:400])


# ---- the reflecting upstream -------------------------------------------------

class Upstream:
    """Threaded TLS server, keep-alive, HTTP/1.1. Stores what it gets on
    /store and hands it back on /retrieve (any connection)."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stored = {}
        self.seen = []  # (path, headers) for checks
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
            c = self.ctx.wrap_socket(raw, server_side=True)
            f = c.makefile("rb")
            while True:
                line = f.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while True:
                    h = f.readline().decode()
                    if h in ("\r\n", "\n", ""):
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in headers:
                    body = f.read(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        n = int(f.readline().split(b";")[0], 16)
                        if n == 0:
                            f.readline()
                            break
                        body += f.read(n)
                        f.readline()
                with self.lock:
                    self.seen.append((target, dict(headers)))
                if not self.route(c, f, method, target, headers, body):
                    return
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            try:
                raw.close()
            except OSError:
                pass

    def send(self, c, status, body, ctype="application/json", extra=()):
        if isinstance(body, str):
            body = body.encode()
        head = "HTTP/1.1 %d OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status, ctype, len(body))
        for k, v in extra:
            head += "%s: %s\r\n" % (k, v)
        c.sendall(head.encode() + b"\r\n" + body)
        return True

    def route(self, c, f, method, target, headers, body):
        u = urllib.parse.urlsplit(target)
        q = dict(urllib.parse.parse_qsl(u.query))
        auth = headers.get("authorization", "")
        tok = auth.split(" ", 1)[1] if " " in auth else auth
        tok = tok or headers.get("x-vmb", "")
        path = u.path
        if path == "/store":
            with self.lock:
                self.stored[q.get("slot", "x")] = tok
            return self.send(c, 200, '{"stored": true}')
        if path == "/retrieve":
            with self.lock:
                v = self.stored.get(q.get("slot", "x"), "")
            return self.send(c, 200, json.dumps({"value": v}))
        if path == "/coding-echo":
            # the value itself as the coding: it must not come back in the error
            return self.send(c, 200, b"\x00\x01", extra=[("Content-Encoding", tok)])
        if path in ("/gzip", "/deflate", "/rawdeflate", "/zstd"):
            doc = json.dumps({"auth": auth, "padding": "x" * 2000}).encode()
            if path == "/gzip":
                enc, data = "gzip", gzip.compress(doc)
            elif path == "/deflate":
                enc, data = "deflate", zlib.compress(doc)
            elif path == "/rawdeflate":
                co = zlib.compressobj(9, zlib.DEFLATED, -15)
                enc, data = "deflate", co.compress(doc) + co.flush()
            else:
                enc, data = "zstd", b"\x28\xb5\x2f\xfd" + doc  # not decodable here
            return self.send(c, 200, data, extra=[("Content-Encoding", enc),
                                                  ("Vary", "Accept-Encoding")])
        if path == "/pct":
            hexfmt = "%%%02x" if q.get("case") == "lower" else "%%%02X"
            enc = "".join(hexfmt % ord(ch) if not ch.isalnum() else ch for ch in tok)
            return self.send(c, 302, "", extra=[("Location", "https://x.test/cb?token=" + enc)]) \
                if q.get("where") == "header" else \
                self.send(c, 200, "token=" + enc, ctype="application/x-www-form-urlencoded")
        if path == "/encoded":
            # the token re-encoded: base64 (both alphabets, padded or not,
            # the bare value or the whole header value, so at another
            # alignment), hex in either case, the value upper/lower-cased
            m = q.get("mode", "")
            t = tok.encode()
            doc = {"b64": base64.b64encode(t).decode(),
                   "b64url": base64.urlsafe_b64encode(t).decode().rstrip("="),
                   "b64auth": base64.b64encode(auth.encode()).decode(),
                   "b64auth_url": base64.urlsafe_b64encode(b"x" + auth.encode()).decode(),
                   "hex": t.hex(), "HEX": t.hex().upper(), "upper": tok.upper(),
                   "lower": tok.lower()}.get(m, "")
            return self.send(c, 200, json.dumps({"mode": m, "echo": doc}))
        if path == "/json-escaped":
            doc = json.dumps({"auth": auth}).replace("/", "\\/")
            return self.send(c, 200, doc)
        if path == "/json-u":
            doc = json.dumps({"auth": auth}).replace("/", "\\u002f").replace("+", "\\u002B")
            return self.send(c, 200, doc)
        if path == "/html":
            doc = "<p>%s</p>" % auth.replace("/", "&#x2F;").replace("+", "&plus;")
            return self.send(c, 200, doc, ctype="text/html")
        if path == "/sse":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                      b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            for i in range(3):
                c.sendall(b"data: {\"i\": %d, \"t\": %.6f}\n\n" % (i, time.time()))
                time.sleep(0.7)
            c.sendall(b"data: " + tok.encode() + b"\n\n")
            return False
        if path == "/ws":
            return self.websocket(c, f, headers, q.get("mode", "whole"))
        return self.send(c, 404, '{"error": "no route"}')

    @staticmethod
    def frame(op, payload, fin=True):
        n = len(payload)
        b0 = (0x80 if fin else 0) | op
        if n < 126:
            return bytes([b0, n]) + payload
        return bytes([b0, 126]) + struct.pack(">H", n) + payload

    def websocket(self, c, f, headers, mode):
        accept = base64.b64encode(hashlib.sha1(
            headers["sec-websocket-key"].encode() +
            b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
        ext = headers.get("sec-websocket-extensions")
        resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n" % accept)
        if (ext and "permessage-deflate" in ext) or mode == "deflate":
            # a server that claims the extension although nobody offered it
            resp += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        c.sendall(resp.encode() + b"\r\n")
        auth = headers.get("authorization", "").encode()
        F = self.frame
        if mode == "whole":
            out = F(1, b'{"you sent": "' + auth + b'"}')
        elif mode == "split":
            cut = len(auth) // 2
            out = F(1, b"echo: " + auth[:cut], fin=False) + F(0, auth[cut:] + b" end")
        elif mode == "ping":
            cut = len(auth) // 3
            out = (F(1, auth[:cut], fin=False) + F(9, b"p1") +
                   F(0, auth[cut:2 * cut], fin=False) + F(9, auth[-60:]) +
                   F(0, auth[2 * cut:]))
        elif mode == "pct":
            enc = urllib.parse.quote(auth.decode(), safe="").encode()
            out = F(2, enc)
        elif mode == "deflate":
            co = zlib.compressobj(9, zlib.DEFLATED, -15)
            data = co.compress(auth) + co.flush(zlib.Z_SYNC_FLUSH)
            out = bytes([0xC1, len(data[:-4])]) + data[:-4]  # RSV1: compressed message
        else:
            out = b""
        c.sendall(out + F(8, struct.pack(">H", 1000)))
        time.sleep(0.3)
        return False


def setup():
    global E, UP
    E = ProxyEnv(prompt_timeout_ms=1500)
    # Repeated identical audit rows are merged over a window (default 10 s); each
    # test here waits for its own A5 row, so keep the window short.
    E.d.env["NILBOX_AUDIT_AGG_WINDOW_MS"] = "200"
    E.__enter__()
    UP = Upstream(E.up_cert, E.up_key)
    E.secret("REFLECT_KEY", KEY)
    E.secret("SECOND_KEY", KEY2)
    E.bind("REFLECT_KEY", HOST)
    E.bind("SECOND_KEY", HOST2, "--header", "x-second: {secret}")
    E.secret("VMB_KEY", KEYB)
    E.bind("VMB_KEY", HOST3, "--header", "x-vmb: {secret}", "--vm", "b")
    E.rule("allow", "127.0.0.1:%d" % UP.port)
    E.rule("allow", HOST + ":443")
    E.rule("allow", HOST2 + ":443")
    E.rule("allow", HOST3 + ":443")
    # Not an HTTP port: inspected (so scanned) because the rule says --http.
    # Without it the tunnel is raw bytes, which the proxy cannot read at
    # all (docs/security.md A5, out of reach).
    E.rule("allow", HOST + ":8443", "--http")
    res = ["%s:443:127.0.0.1:%d" % (h, UP.port) for h in (HOST, HOST2, HOST3)]
    res.append("%s:8443:127.0.0.1:%d" % (HOST, UP.port))
    E.px = E.proxy(vm="a", extra_resolve=res)
    E.pb = E.proxy(vm="b", extra_resolve=res)


# ---- helpers ----------------------------------------------------------------

AUTH = {"Authorization": "Bearer REFLECT_KEY"}


def conn(host=HOST):
    ctx = ssl.create_default_context(cafile=E.ca_pem)
    c = http.client.HTTPSConnection("127.0.0.1", E.px.port, context=ctx, timeout=15)
    c.set_tunnel(host, 443, headers={"Proxy-Authorization": E.px.basic})
    return c


def get(c, method, path, headers=None, body=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def a5_rows():
    return [r for r in E.audit("leak") if r["detail"].get("threat") == "A5"]


def wait_a5(before, what):
    E.wait_for(lambda: len(a5_rows()) > before, timeout=10)


def upstream_got_key(path_prefix):
    with UP.lock:
        return any(KEY in json.dumps(h) for t, h in UP.seen if t.startswith(path_prefix))


def ws_exchange(mode, extensions=None):
    """WebSocket handshake carrying the placeholder, then every byte the
    client gets until the connection ends: (head, frames bytes)."""
    s = E.tunnel(HOST)
    key = base64.b64encode(os.urandom(16)).decode()
    req = ("GET /ws?mode=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
           "Authorization: Bearer REFLECT_KEY\r\n" % (mode, HOST, key))
    if extensions:
        req += "Sec-WebSocket-Extensions: %s\r\n" % extensions
    s.sendall(req.encode() + b"\r\n")
    head, _, rest = read_all(s, 10).partition(b"\r\n\r\n")
    return head, rest


def ws_messages(data):
    """Strict client-side reading: [(opcode, payload)] for messages and
    control frames; fragments reassembled."""
    out, i, cur, cur_op = [], 0, b"", None
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x70 == 0 and b1 & 0x80 == 0, "RSV or mask bits from the proxy"
        n, h = b1 & 0x7f, 2
        if n == 126:
            n, h = struct.unpack(">H", data[i + 2:i + 4])[0], 4
        elif n == 127:
            n, h = struct.unpack(">Q", data[i + 2:i + 10])[0], 10
        op, fin, payload = b0 & 15, b0 >> 7, data[i + h:i + h + n]
        assert len(payload) == n, "truncated frame"
        i += h + n
        if op >= 8:
            out.append((op, payload))
            continue
        if op != 0:
            assert cur_op is None
            cur_op = op
        cur += payload
        if fin:
            out.append((cur_op, cur))
            cur, cur_op = b"", None
    assert i == len(data), "trailing bytes"
    return out


# ---- WebSocket ----------------------------------------------------------------

def test_A5_ws_whole_frame():
    before = len(a5_rows())
    head, frames = ws_exchange("whole")
    assert status_of(head) == 101, head
    assert_clean(head + frames, "ws whole")
    msgs = ws_messages(frames)
    assert msgs[0] == (1, b'{"you sent": "Bearer REFLECT_KEY"}'), msgs
    assert msgs[-1][0] == 8, msgs
    assert upstream_got_key("/ws?mode=whole"), "the injection itself must still work"
    wait_a5(before, "A5 row for the WebSocket echo")


def test_A5_ws_split_across_continuation():
    before = len(a5_rows())
    head, frames = ws_exchange("split")
    assert status_of(head) == 101, head
    assert_clean(frames, "ws split")
    msgs = ws_messages(frames)
    assert msgs[0] == (1, b"echo: Bearer REFLECT_KEY end"), msgs
    wait_a5(before, "A5 row for the split echo")


def test_A5_ws_ping_interleaved():
    before = len(a5_rows())
    head, frames = ws_exchange("ping")
    assert status_of(head) == 101, head
    assert_clean(frames, "ws ping")
    msgs = ws_messages(frames)
    data = [m for m in msgs if m[0] == 1]
    pings = [m for m in msgs if m[0] == 9]
    assert data == [(1, b"Bearer REFLECT_KEY")], msgs
    assert len(pings) == 2 and pings[0][1] == b"p1", pings
    wait_a5(before, "A5 row for the interleaved echo")


def test_A5_ws_percent_and_deflate_refused():
    head, frames = ws_exchange("pct")
    assert_clean(frames, "ws pct")
    assert (2, b"Bearer%20REFLECT_KEY") in ws_messages(frames), ws_messages(frames)
    # permessage-deflate: the offer is stripped on the way up, so the
    # upstream cannot negotiate it; one that sends compressed frames anyway
    # gets the connection closed without the frame reaching the client.
    with UP.lock:
        n = len(UP.seen)
    head, frames = ws_exchange("deflate", extensions="permessage-deflate; client_max_window_bits")
    with UP.lock:
        hs = [h for t, h in UP.seen[n:] if t.startswith("/ws?mode=deflate")]
    assert hs and "sec-websocket-extensions" not in hs[0], hs
    assert status_of(head) == 101 and b"sec-websocket-extensions" not in head.lower(), head
    assert_clean(frames, "ws deflate")
    assert not frames or all(op != 1 for op, _ in ws_messages(frames)), frames


def test_A5_ws_client_library():
    # A real client (websocket-client) through the proxy reads the
    # re-framed, redacted messages as ordinary ones.
    import websocket
    for mode, want in (("split", "echo: Bearer REFLECT_KEY end"), ("ping", "Bearer REFLECT_KEY")):
        ws = websocket.create_connection(
            "wss://%s/ws?mode=%s" % (HOST, mode), timeout=10, http_proxy_host="127.0.0.1",
            http_proxy_port=E.px.port, proxy_type="http",
            http_proxy_auth=("nilbox", E.px.token), sslopt={"ca_certs": E.ca_pem},
            header=["Authorization: Bearer REFLECT_KEY"])
        try:
            got = ws.recv()
        finally:
            ws.close()
        assert got == want, (mode, got)


# ---- stored, then fetched -------------------------------------------------------

def test_A5_store_then_retrieve_same_connection():
    before = len(a5_rows())
    c = conn()
    st, _, body = get(c, "POST", "/store?slot=same", AUTH, b"{}")
    assert st == 200, body
    st, h, body = get(c, "GET", "/retrieve?slot=same")  # no placeholder at all
    c.close()
    assert st == 200, body
    assert_clean(body, "retrieve, same connection")
    assert json.loads(body) == {"value": "REFLECT_KEY"}, body
    assert UP.stored["same"] == KEY, "the upstream did store the real value"
    wait_a5(before, "A5 row for the stored value")


def test_A5_store_then_retrieve_new_connection():
    before = len(a5_rows())
    c = conn()
    assert get(c, "POST", "/store?slot=new", AUTH, b"{}")[0] == 200
    c.close()
    # curl on a fresh connection, and another bound host of the same VM.
    for host in (HOST, HOST2):
        code, body, r = E.curl(E.px, "https://%s/retrieve?slot=new" % host)
        assert code == 200, (code, body, r.stderr)
        assert_clean(body, "retrieve via " + host)
        assert json.loads(body) == {"value": "REFLECT_KEY"}, body
    wait_a5(before, "A5 row for the stored value")


def test_A5_store_then_retrieve_other_port():
    # Port 8443 is inspected by an --http rule: every response of the bound
    # host is scanned there too, whatever port the value was sent on.
    before = len(a5_rows())
    c = conn()
    assert get(c, "POST", "/store?slot=port", AUTH, b"{}")[0] == 200
    c.close()
    code, body, r = E.curl(E.px, "https://%s:8443/retrieve?slot=port" % HOST)
    assert code == 200, (code, body, r.stderr)
    assert_clean(body, "retrieve via port 8443")
    assert json.loads(body) == {"value": "REFLECT_KEY"}, body
    wait_a5(before, "A5 row for the other port")


def test_A5_store_then_retrieve_other_vm():
    # VM b's key, injected for VM b, stored by the upstream, fetched by VM a
    # (for which that host has no binding at all): VM a gets the name only.
    before = len(a5_rows())
    code, body, r = E.curl(E.pb, "https://%s/store?slot=vmb" % HOST3, "-X", "POST",
                           "-H", "x-vmb: VMB_KEY", "-d", "{}")
    assert code == 200, (code, body, r.stderr)
    assert UP.stored["vmb"] == KEYB, "the injection for VM b must work"
    code, body, r = E.curl(E.px, "https://%s/retrieve?slot=vmb" % HOST3)
    assert code == 200, (code, body, r.stderr)
    assert_clean(body, "VM b's value fetched by VM a")
    assert json.loads(body) == {"value": "VMB_KEY"}, body
    wait_a5(before, "A5 row for the cross-VM fetch")


# ---- compressed ------------------------------------------------------------------

def test_A5_compressed_curl():
    before = len(a5_rows())
    for path in ("/gzip", "/deflate", "/rawdeflate"):
        code, body, r = E.curl(E.px, "https://%s%s" % (HOST, path), "--compressed",
                               "-H", "Authorization: Bearer REFLECT_KEY", "-D", "/dev/stderr")
        assert code == 200, (path, code, body, r.stderr)
        assert_clean(body, "curl --compressed " + path)
        assert_clean(r.stderr, "curl headers " + path)
        doc = json.loads(body)
        assert doc["auth"] == "Bearer REFLECT_KEY", doc["auth"]
        assert b"content-encoding" not in r.stderr.lower(), r.stderr
    # Without --compressed too: the body arrives decoded.
    code, body, _ = E.curl(E.px, "https://%s/gzip" % HOST,
                           "-H", "Authorization: Bearer REFLECT_KEY")
    assert code == 200 and json.loads(body)["auth"] == "Bearer REFLECT_KEY", body
    wait_a5(before, "A5 row for the compressed echo")


def test_A5_compressed_requests():
    import requests
    before = len(a5_rows())
    px = E.px.url
    for path in ("/gzip", "/deflate"):
        r = requests.get("https://%s%s" % (HOST, path), headers=AUTH, timeout=15,
                         proxies={"https": px}, verify=E.ca_pem, stream=True)
        raw = r.raw.read()  # the bytes as they came, before any decoding
        assert r.status_code == 200, raw
        assert_clean(raw, "requests raw " + path)
        assert json.loads(raw)["auth"] == "Bearer REFLECT_KEY"
    wait_a5(before, "A5 row for the compressed echo")


def test_A5_undecodable_encoding_refused():
    code, body, r = E.curl(E.px, "https://%s/zstd" % HOST, "--compressed",
                           "-H", "Authorization: Bearer REFLECT_KEY")
    assert code == 502, (code, body)
    assert_clean(body, "zstd")
    j = json.loads(body)
    assert "zstd" in j["reason"] and j["code"] == "bad-gateway", j
    code, body, r = E.curl(E.px, "https://%s/coding-echo" % HOST, "-D", "/dev/stderr",
                           "-H", "Authorization: Bearer REFLECT_KEY")
    assert code == 502, (code, body)
    assert_clean(body + r.stderr, "coding named in the error")
    E.wait_for(lambda: [x for x in E.audit("refusal")
                        if x["detail"].get("reason") == "undecodable-encoding"
                        and x["detail"].get("threat") == "A5"])


# ---- spellings --------------------------------------------------------------------

def test_A5_percent_encoded_echo():
    before = len(a5_rows())
    for case in ("upper", "lower"):
        code, body, r = E.curl(E.px, "https://%s/pct?case=%s" % (HOST, case),
                               "-H", "Authorization: Bearer REFLECT_KEY")
        assert code == 200, body
        assert_clean(body, "pct body " + case)
        assert body == b"token=REFLECT_KEY", body
        # in a response header (Location), either case
        code, body, r = E.curl(E.px, "https://%s/pct?case=%s&where=header" % (HOST, case),
                               "-H", "Authorization: Bearer REFLECT_KEY", "-D", "/dev/stderr")
        assert code == 302, body
        assert_clean(r.stderr, "pct header " + case)
        assert b"token=REFLECT_KEY" in r.stderr, r.stderr
    wait_a5(before, "A5 row for the percent-encoded echo")


def encoded_forms(v):
    """The runs of base64 (3 alignments, both alphabets) and hex (both
    cases) made of v's bytes only, and v upper- and lower-cased."""
    b = v.encode()
    out = [b.hex(), b.hex().upper(), v.upper(), v.lower()]
    for a in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            e = enc(b"\0" * a + b).decode()
            out.append(e[(8 * a + 5) // 6:8 * (a + len(b)) // 6])
    return out


def test_A5_base64_hex_case_echo():
    before = len(a5_rows())
    for mode in ("b64", "b64url", "b64auth", "b64auth_url", "hex", "HEX", "upper", "lower"):
        code, body, _ = E.curl(E.px, "https://%s/encoded?mode=%s" % (HOST, mode),
                               "-H", "Authorization: Bearer REFLECT_KEY")
        assert code == 200, body
        assert_clean(body, "encoded " + mode)
        for f in encoded_forms(KEY):
            assert f.encode() not in body, ("encoded %s: the value reached the client as %r"
                                            % (mode, f), body)
        doc = json.loads(body)
        assert doc["mode"] == mode and "REFLECT_KEY" in doc["echo"], body
        if mode in ("hex", "HEX", "upper", "lower"):
            assert doc["echo"] == "REFLECT_KEY", body
    wait_a5(before, "A5 row for the encoded echo")


def test_A5_json_and_html_escaped_echo():
    before = len(a5_rows())
    for path in ("/json-escaped", "/json-u"):
        code, body, _ = E.curl(E.px, "https://%s%s" % (HOST, path),
                               "-H", "Authorization: Bearer REFLECT_KEY")
        assert code == 200, body
        assert_clean(body, path)
        assert json.loads(body) == {"auth": "Bearer REFLECT_KEY"}, body
    code, body, _ = E.curl(E.px, "https://%s/html" % HOST, "-H", "Authorization: Bearer REFLECT_KEY")
    assert_clean(body, "html")
    assert body == b"<p>Bearer REFLECT_KEY</p>", body
    wait_a5(before, "A5 row for the escaped echo")


# ---- streaming stays streaming -------------------------------------------------------

def test_A5_sse_still_incremental():
    import requests
    px = E.px.url
    t0 = time.time()
    r = requests.get("https://%s/sse" % HOST, headers=AUTH, timeout=15, stream=True,
                     proxies={"https": px}, verify=E.ca_pem)
    got = []
    for line in r.iter_lines(chunk_size=1):
        if line.startswith(b"data: "):
            got.append((time.time() - t0, line[6:], time.time()))
    assert len(got) == 4, got
    # The first event arrives long before the stream ends (0.7 s apart).
    assert got[0][0] < got[-1][0] - 1.5, got
    # Each event reaches the client promptly after it left the upstream.
    for _, data, wall in got[:3]:
        assert wall - json.loads(data)["t"] < 1.0, (data, wall)  # loaded CI: generous
    assert got[-1][1] == b"REFLECT_KEY", got[-1]


if __name__ == "__main__":
    run_suite(setup, [test_A5_ws_whole_frame, test_A5_ws_split_across_continuation,
                      test_A5_ws_ping_interleaved, test_A5_ws_percent_and_deflate_refused,
                      test_A5_ws_client_library, test_A5_store_then_retrieve_same_connection,
                      test_A5_store_then_retrieve_new_connection,
                      test_A5_store_then_retrieve_other_port, test_A5_store_then_retrieve_other_vm,
                      test_A5_compressed_curl, test_A5_compressed_requests,
                      test_A5_undecodable_encoding_refused, test_A5_percent_encoded_echo,
                      test_A5_base64_hex_case_echo, test_A5_json_and_html_escaped_echo, test_A5_sse_still_incremental])
