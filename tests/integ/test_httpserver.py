#!/usr/bin/python3
"""Integration test for the HTTP/1.1 + WebSocket server (src/lib/httpserver.c).

Starts tests/integ/httpd_echo (path in $HTTPD_ECHO) with short timeouts and
drives it with real clients: curl (keep-alive, --unix-socket, chunked upload,
100-continue), raw Python sockets (pipelining, every THREATS.md A15 shape,
caps, slowloris, idle and connection limits) and websocket-client (echo,
ping, fragments, close codes). After each bad input the server must still
answer. Ends by stopping the server with a request still pending: it must
exit 0 (ASan builds fail on leaks there)."""
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import websocket

ECHO = os.environ.get("HTTPD_ECHO")
IDLE_MS = 1500
REQ_MS = 1000
MAX_BODY = 65536
MAX_CONNS = 20
WS_MAX = 65536

state = {}


def start_server(tmp):
    sock = os.path.join(tmp, "api.sock")
    errlog = open(os.path.join(tmp, "server.log"), "w+")
    p = subprocess.Popen(
        [ECHO, "--unix", sock, "--idle", str(IDLE_MS), "--request-timeout", str(REQ_MS),
         "--max-body", str(MAX_BODY), "--max-conns", str(MAX_CONNS), "--ws-max", str(WS_MAX)],
        stdout=subprocess.PIPE, stderr=errlog, text=True)
    line = p.stdout.readline()
    if not line.startswith("READY "):
        p.kill()
        raise RuntimeError("server did not start: %r" % line)
    return p, int(line.split()[1]), sock, errlog


def connect():
    s = socket.create_connection(("127.0.0.1", state["port"]), timeout=5)
    return s


def read_all(s, timeout=3.0):
    """Reads until EOF; returns (bytes, closed_by_peer)."""
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return out, True
            out += d
    except socket.timeout:
        return out, False
    except ConnectionResetError:
        return out, True


def parse_responses(data):
    """Splits a byte stream into [(status, headers dict, body)] (Content-Length framing)."""
    res = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError("incomplete response: %r" % data[:200])
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode()
        n = int(hdrs.get("content-length", "0"))
        res.append((status, hdrs, rest[:n]))
        data = rest[n:]
    return res


def raw(data, timeout=3.0):
    s = connect()
    try:
        s.sendall(data)
        out, closed = read_all(s, timeout)
    finally:
        s.close()
    return parse_responses(out), closed


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def assert_serving():
    """The server still answers a fresh request on both listeners."""
    (r,), _ = raw(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(r[0] == 200 and r[2] == b"hello\n", "server not serving: %r" % (r,))
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "--unix-socket", state["sock"],
                          "http://localhost/hello"], capture_output=True, text=True)
    check(out.stdout == "hello\n", "unix listener not serving: %r" % out)
    check(state["proc"].poll() is None, "server died")


# --- curl ---

def test_curl_keepalive():
    url = "http://127.0.0.1:%d/hello" % state["port"]
    out = subprocess.run(["curl", "-sv", "--max-time", "5", url, url, url], capture_output=True,
                         text=True)
    check(out.returncode == 0, out.stderr)
    check(out.stdout == "hello\n" * 3, out.stdout)
    check(out.stderr.count("Re-using existing connection") == 2, "no keep-alive:\n" + out.stderr)


def test_curl_unix_socket():
    mode = os.stat(state["sock"]).st_mode & 0o777
    check(mode == 0o600, "socket mode %o" % mode)
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "5", "--unix-socket", state["sock"],
                          "-H", "X-Test: abc", "--data-binary", "payload", "http://localhost/echo"],
                         capture_output=True, text=True)
    check(out.returncode == 0, out.stderr)
    check(out.stdout.endswith("\n\npayload"), out.stdout)
    check("X-Test-Echo: abc" in out.stdout, out.stdout)
    check("X-Content-Type-Options: nosniff" in out.stdout, "default header missing")


def test_curl_chunked_upload():
    body = os.urandom(40000)
    path = os.path.join(state["tmp"], "up.bin")
    with open(path, "wb") as f:
        f.write(body)
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "-H", "Transfer-Encoding: chunked",
                          "-H", "Content-Type: application/octet-stream", "--data-binary", "@" + path,
                          "http://127.0.0.1:%d/echo" % state["port"]], capture_output=True)
    check(out.returncode == 0, out.stderr)
    check(out.stdout == body, "chunked echo differs (%d bytes back)" % len(out.stdout))


def test_curl_expect_continue():
    out = subprocess.run(["curl", "-sS", "-v", "--max-time", "5", "-H", "Expect: 100-continue",
                          "--data-binary", "x" * 1000, "http://127.0.0.1:%d/echo" % state["port"]],
                         capture_output=True, text=True)
    check(out.returncode == 0 and out.stdout == "x" * 1000, out.stderr)
    check("HTTP/1.1 100 Continue" in out.stderr, "no 100 Continue:\n" + out.stderr)


def test_curl_too_big():
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "5", "--data-binary", "y" * (MAX_BODY + 1),
                          "http://127.0.0.1:%d/echo" % state["port"]], capture_output=True, text=True)
    check(" 413 " in out.stdout.split("\r\n")[0], out.stdout[:300])
    check('"error":"body-too-large"' in out.stdout, out.stdout[:300])


# --- raw sockets ---

def test_pipelining_in_order():
    reqs = (b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /slow?ms=10 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    res, closed = raw(reqs)
    bodies = [r[2] for r in res]
    check(bodies == [b"slow 300\n", b"abc", b"slow 10\n", b"hello\n"], bodies)
    check(closed, "connection not closed after Connection: close")


def test_half_close_still_answered():
    s = connect()
    s.sendall(b"GET /slow?ms=100 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    out, closed = read_all(s)
    s.close()
    res = parse_responses(out)
    check([r[2] for r in res] == [b"slow 100\n", b"hello\n"], res)
    check(closed, "not closed after half-close")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_backpressure():
    """A client that pipelines many requests and does not read: the server
    stops reading (responses would pile up otherwise) and memory stays flat;
    once the client reads, every response arrives, in order."""
    n, size = 100, 400000  # 40 MB of responses: far more than kernel buffers absorb
    pid = state["proc"].pid
    before = rss_kib(pid)
    s = connect()
    reqs = b"".join(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\nX-Seq: %d\r\n\r\n" % (size, i) for i in range(n))
    s.setblocking(False)
    sent = 0
    t0 = time.monotonic()
    while sent < len(reqs) and time.monotonic() - t0 < 0.5:  # well under the idle timeout
        try:
            sent += s.send(reqs[sent:])
        except BlockingIOError:
            time.sleep(0.05)
    time.sleep(0.3)
    grown = rss_kib(pid) - before
    check(grown < 12 * 1024, "server memory grew by %d KiB for a non-reading client" % grown)
    s.setblocking(True)
    if sent < len(reqs):
        threading.Thread(target=lambda: s.sendall(reqs[sent:]), daemon=True).start()
    s.settimeout(10)
    got = b""
    want = n * (size + 150)
    while got.count(b"HTTP/1.1 200 OK") < n or len(got) < n * size:
        d = s.recv(1 << 20)
        if not d:
            break
        got += d
        if len(got) > want * 2:
            break
    s.close()
    res = parse_responses(got)
    check(len(res) == n and all(r[0] == 200 and len(r[2]) == size for r in res),
          "got %d responses" % len(res))
    assert_serving()


def test_http10():
    res, closed = raw(b"GET /hello HTTP/1.0\r\n\r\n")
    check(res[0][0] == 200 and closed, res)
    s = connect()
    s.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    time.sleep(0.2)
    s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
    out, closed = read_all(s)
    s.close()
    res = parse_responses(out)
    check(len(res) == 2 and res[0][1].get("connection") == "keep-alive", res)


def test_head():
    s = connect()
    s.sendall(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out, _ = read_all(s)
    s.close()
    check(out.count(b"HTTP/1.1 200") == 2 and out.endswith(b"\r\n\r\nhello\n"), out)
    check(out.split(b"\r\n\r\n")[1].startswith(b"HTTP/1.1 200"), "HEAD response had a body")


SMUGGLING = [
    # (name, request, status, reason)
    ("bare-lf", b"GET /hello HTTP/1.1\nHost: x\r\n\r\n", 400, "bare-lf"),
    ("bare-lf-end", b"GET /hello HTTP/1.1\r\nHost: x\r\n\n", 400, "bare-lf"),
    ("obs-fold", b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n", 400, "obs-fold"),
    ("host-space-colon", b"GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", 400, "space-before-colon"),
    ("dup-host", b"GET /hello HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "duplicate-host"),
    ("no-host", b"GET /hello HTTP/1.1\r\n\r\n", 400, "missing-host"),
    ("cl-te", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400, "content-length-with-transfer-encoding"),
    ("te-cl", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
     400, "content-length-with-transfer-encoding"),
    ("cl-cl", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
     400, "conflicting-content-length"),
    ("cl-list", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400, "invalid-content-length"),
    ("te-gzip", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     400, "unsupported-transfer-encoding"),
    ("te-space", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
     400, "space-before-colon"),
    ("te-dup", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400, "duplicate-transfer-encoding"),
    ("chunk-size", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
     400, "invalid-chunk-size"),
    ("chunk-overflow", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\n",
     400, "invalid-chunk-size"),
    ("chunk-lf", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
     400, "bare-lf"),
    ("trailer-fold", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
     400, "obs-fold"),
    ("ctl-in-value", b"GET /hello HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, "control-char-in-header"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", 400, None),
    ("absolute-form", b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n", 400, "invalid-target"),
    ("connect", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 400, "invalid-target"),
    ("http2", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "invalid-version"),
    ("expect-other", b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx", 417,
     "unsupported-expectation"),
    ("too-long-start", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "start-line-too-long"),
    ("headers-too-big", b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 40000 + b"\r\n\r\n",
     431, "headers-too-large"),
    ("too-many-headers", b"GET /hello HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n",
     431, "too-many-headers"),
    ("body-too-big", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413,
     "body-too-large"),
    ("chunked-too-big", b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"8000\r\n" + b"z" * 0x8000 + b"\r\n" + b"8001\r\n" + b"z" * 0x8001 + b"\r\n0\r\n\r\n", 413, "body-too-large"),
]


def test_smuggling_shapes():
    for name, req, status, reason in SMUGGLING:
        # a valid request first on the same connection: it is answered, the bad one refused
        res, closed = raw(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" + req)
        check(len(res) == 2, "%s: expected 2 responses, got %r" % (name, res))
        check(res[0][0] == 200, "%s: first response %r" % (name, res[0]))
        st, hdrs, body = res[1]
        check(st == status, "%s: status %d, want %d (%r)" % (name, st, status, body))
        check(hdrs.get("content-type") == "application/json", "%s: not JSON" % name)
        if reason:
            check(hdrs.get("x-nilbox-reason") == reason, "%s: reason %r" % (name, hdrs.get("x-nilbox-reason")))
            check(b'"error":"%s"' % reason.encode() in body, "%s: body %r" % (name, body))
        check(hdrs.get("connection") == "close" and closed, "%s: connection not closed" % name)
        assert_serving()


def test_no_ride_along():
    # a request hidden in a body is data, never a second request
    inner = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    res, _ = raw(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(inner)
                 + inner)
    check(len(res) == 1 and res[0][2] == inner, res)
    # and after a refused CL+TE request nothing more is parsed
    res, _ = raw(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + inner)
    check(len(res) == 1 and res[0][0] == 400, res)


def test_slowloris():
    s = connect()
    t0 = time.monotonic()
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
    got = b""
    s.settimeout(0.2)
    while time.monotonic() - t0 < 5:
        try:
            s.sendall(b"X")  # one byte of a header line every 200 ms
        except OSError:
            break
        try:
            d = s.recv(4096)
            if not d:
                break
            got += d
        except socket.timeout:
            pass
        except ConnectionResetError:
            break
    s.close()
    check(got.startswith(b"HTTP/1.1 408 "), "slowloris not cut with 408: %r" % got[:100])
    check(b"request-timeout" in got, got)
    assert_serving()


def test_idle_timeout():
    s = connect()
    s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    out, closed = read_all(s, timeout=IDLE_MS / 1000 + 2)
    s.close()
    check(closed, "idle keep-alive connection not closed")
    check(out.count(b"HTTP/1.1 200") == 1 and b"408" not in out, out)
    # a connection that never sends anything is closed silently
    s = connect()
    out, closed = read_all(s, timeout=IDLE_MS / 1000 + 2)
    s.close()
    check(closed and out == b"", out)


def test_max_conns():
    socks = [connect() for _ in range(MAX_CONNS)]
    try:
        time.sleep(0.2)
        extra = connect()
        out, closed = read_all(extra, timeout=2)
        extra.close()
        check(closed and out == b"", "connection over the limit was not closed")
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert_serving()


# --- WebSocket ---

def ws_url():
    return "ws://127.0.0.1:%d/ws" % state["port"]


def test_ws_echo_ping_fragments():
    ws = websocket.create_connection(ws_url(), timeout=5)
    try:
        ws.send("h\u00e9llo \u20ac")
        check(ws.recv() == "h\u00e9llo \u20ac", "text echo")
        ws.send_binary(b"\x00\xff\x01")
        check(ws.recv() == b"\x00\xff\x01", "binary echo")
        ws.ping(b"are you there")
        op, frame = ws.recv_data_frame(True)
        check(op == websocket.ABNF.OPCODE_PONG and frame.data == b"are you there", "pong")
        # fragments with a ping between them; a UTF-8 character split across fragments
        ws.send_frame(websocket.ABNF.create_frame(b"caf\xc3", websocket.ABNF.OPCODE_TEXT, 0))
        ws.ping(b"mid")
        ws.send_frame(websocket.ABNF.create_frame(b"\xa9 ", websocket.ABNF.OPCODE_CONT, 0))
        ws.send_frame(websocket.ABNF.create_frame(b"ok", websocket.ABNF.OPCODE_CONT, 1))
        op, frame = ws.recv_data_frame(True)
        check(op == websocket.ABNF.OPCODE_PONG and frame.data == b"mid", "pong between fragments")
        check(ws.recv() == "caf\u00e9 ok", "reassembled message")
        big = os.urandom(WS_MAX)
        ws.send_binary(big)
        check(ws.recv() == big, "max-size message echo")
        # server-initiated close handshake
        ws.send("close")
        op, frame = ws.recv_data_frame(True)
        check(op == websocket.ABNF.OPCODE_CLOSE, "no close frame")
        check(struct.unpack("!H", frame.data[:2])[0] == 1000 and frame.data[2:] == b"bye", frame.data)
    finally:
        ws.close()
    assert_serving()


def ws_expect_close(send, code):
    ws = websocket.create_connection(ws_url(), timeout=5)
    try:
        send(ws)
        while True:
            op, frame = ws.recv_data_frame(True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                got = struct.unpack("!H", frame.data[:2])[0]
                check(got == code, "close code %d, want %d" % (got, code))
                return
    finally:
        ws.close()


def test_ws_close_codes():
    ws_expect_close(lambda ws: ws.send_binary(b"x" * (WS_MAX + 1)), 1009)
    ws_expect_close(lambda ws: (ws.send_frame(websocket.ABNF.create_frame(b"a" * 40000, websocket.ABNF.OPCODE_BINARY, 0)),
                                ws.send_frame(websocket.ABNF.create_frame(b"a" * 40000, websocket.ABNF.OPCODE_CONT, 1))),
                    1009)
    ws_expect_close(lambda ws: ws.send_frame(websocket.ABNF.create_frame(b"\xc3\x28", websocket.ABNF.OPCODE_TEXT)), 1007)
    ws_expect_close(lambda ws: ws.send_frame(websocket.ABNF.create_frame(b"x", websocket.ABNF.OPCODE_CONT)), 1002)
    ws_expect_close(lambda ws: ws.sock.sendall(b"\x81\x02hi"), 1002)  # unmasked
    ws_expect_close(lambda ws: ws.sock.sendall(b"\xc1\x80\x00\x00\x00\x00"), 1002)  # RSV1
    ws_expect_close(lambda ws: ws.sock.sendall(b"\x89\xfe\x00\x7e\x00\x00\x00\x00" + b"p" * 126), 1002)
    # client-initiated close: the code is echoed
    ws_expect_close(lambda ws: ws.send_close(3001, b"done"), 3001)
    assert_serving()


def test_ws_bad_handshakes():
    cases = [
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ]
    for c in cases:
        res, closed = raw(c)
        check(len(res) == 1 and res[0][0] == 400, res)
    # the RFC example handshake
    s = connect()
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
              # a masked frame right behind the request
              b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
    s.settimeout(3)
    out = b""
    while b"Hello" not in out:
        d = s.recv(4096)
        if not d:
            break
        out += d
    s.close()
    check(out.startswith(b"HTTP/1.1 101 "), out)
    check(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in out, out)
    check(out.endswith(b"\x81\x05Hello"), out)


def test_ws_keepalive():
    """A quiet WebSocket gets pings; a peer that answers them stays, one that
    sends nothing at all is closed after the idle timeout."""
    ws = websocket.create_connection(ws_url(), timeout=5)
    ws.settimeout(0.3)
    t0 = time.monotonic()
    pings = 0
    while time.monotonic() - t0 < 2.5 * IDLE_MS / 1000:
        try:
            op, frame = ws.recv_data_frame(True)
            if op == websocket.ABNF.OPCODE_PING:
                pings += 1
                ws.pong(frame.data)
        except websocket.WebSocketTimeoutException:
            pass
    ws.settimeout(5)
    ws.send("still here")
    check(ws.recv() == "still here", "live WebSocket was closed")
    check(pings >= 1, "no keep-alive ping")
    ws.close()
    # a silent peer: handshake, then nothing
    s = connect()
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    out, closed = read_all(s, timeout=IDLE_MS / 1000 + 3)
    s.close()
    check(out.startswith(b"HTTP/1.1 101 ") and b"\x89\x00" in out, out)
    check(closed, "silent WebSocket peer not closed")


def test_ws_send_cap():
    ws = websocket.create_connection(ws_url(), timeout=5)
    ws.send("flood")  # the server queues 64 KiB messages until nb_ws_send refuses
    time.sleep(0.5)
    ws.sock.close()
    time.sleep(0.3)
    state["errlog"].seek(0)
    log = state["errlog"].read()
    check("NB_ETOOBIG" in log and "flood" in log, "send cap not hit:\n" + log[-2000:])
    assert_serving()


def test_stop_with_pending_request():
    """nb_httpd_close while a handler still holds a request: the late
    respond() is dropped and the process exits cleanly."""
    result = {}

    def slow():
        try:
            result["res"] = raw(b"GET /slow?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        except Exception as e:  # noqa: BLE001
            result["err"] = e

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    ws = websocket.create_connection(ws_url(), timeout=5)
    res, _ = raw(b"GET /stop HTTP/1.1\r\nHost: x\r\n\r\n")
    check(res[0][2] == b"stopping\n", res)
    # the WebSocket client gets "going away"
    op, frame = ws.recv_data_frame(True)
    check(op == websocket.ABNF.OPCODE_CLOSE and struct.unpack("!H", frame.data[:2])[0] == 1001, frame.data)
    ws.close()
    t.join()
    check("res" in result and result["res"][0] == [], "pending request got %r" % (result,))
    rc = state["proc"].wait(timeout=10)
    check(rc == 0, "server exit code %d" % rc)


TESTS = [
    test_curl_keepalive, test_curl_unix_socket, test_curl_chunked_upload, test_curl_expect_continue,
    test_curl_too_big, test_pipelining_in_order, test_backpressure, test_half_close_still_answered, test_http10, test_head,
    test_smuggling_shapes, test_no_ride_along, test_slowloris, test_idle_timeout, test_max_conns,
    test_ws_echo_ping_fragments, test_ws_close_codes, test_ws_bad_handshakes, test_ws_keepalive, test_ws_send_cap,
    test_stop_with_pending_request,
]


def main():
    if not ECHO:
        print("HTTPD_ECHO not set")
        return 1
    tmp = tempfile.mkdtemp(prefix="nb-httpd-")
    failed = 0
    proc = None
    try:
        proc, port, sock, errlog = start_server(tmp)
        state.update(proc=proc, port=port, sock=sock, tmp=tmp, errlog=errlog)
        only = sys.argv[1:]
        for t in TESTS:
            if only and t.__name__ not in only:
                continue
            try:
                t()
                print("ok", t.__name__)
            except Exception:  # noqa: BLE001
                failed += 1
                print("FAIL", t.__name__)
                traceback.print_exc()
            if proc.poll() is not None and t is not test_stop_with_pending_request:
                print("FAIL server exited with", proc.returncode)
                failed += 1
                break
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        if "errlog" in state:
            state["errlog"].seek(0)
            log = state["errlog"].read()
            if failed or "ERROR: AddressSanitizer" in log or "runtime error" in log:
                print("--- server log (tail) ---")
                print(log[-4000:])
            if "ERROR: AddressSanitizer" in log or "runtime error:" in log:
                failed += 1
            state["errlog"].close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d failed" % failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
