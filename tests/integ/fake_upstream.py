#!/usr/bin/env python3
"""A fake HTTPS (or plain HTTP) upstream for proxy tests, with its own test CA.

It records every request it receives (method, target, headers, body size and
hash, the first bytes of the body) as JSON lines, so tests can check what
left the proxy: the real secret only where it belongs, never elsewhere.

Endpoints:
  /echo[...]            JSON with the request line, headers and body (A5: reflection)
  /echo-header          reflects the Authorization/x-api-key headers in response headers
  /sse?n=N&delay=S      text/event-stream, one event every S seconds, each flushed
  /ws                   WebSocket echo (text and binary)
  /redirect?to=URL      302 to URL (A6)
  /big?size=N[&chunked=1]  N bytes of a repeating pattern
  /upload               consumes the body (any framing), answers {"len", "sha256"}
  /chunked?n=N          a chunked response of N pieces
  /status/NNN           an empty response with that status
  /slow?delay=S         answers after S seconds
Expect: 100-continue is honoured (100 before reading the body) except on
/no-continue, which answers 417 at once.

Usage as a program:  fake_upstream.py --cert C --key K [--port 0] [--log FILE] [--plain]
prints "PORT <n>" once listening.
"""
import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


TEST_NAMES = ("api.test", "other.test", "evil.test", "plain.test", "ws.test", "sse.test",
              "a.api.test", "meta.test", "rebind.test", "bench.test", "localhost")


def make_ca(dirpath, names=TEST_NAMES, ips=("127.0.0.1",)):
    """Creates a test CA and a leaf for `names`/`ips` with the openssl CLI.
    Returns (ca_pem, leaf_cert, leaf_key)."""
    ca_key = os.path.join(dirpath, "upstream-ca.key")
    ca_pem = os.path.join(dirpath, "upstream-ca.pem")
    key = os.path.join(dirpath, "upstream.key")
    csr = os.path.join(dirpath, "upstream.csr")
    crt = os.path.join(dirpath, "upstream.pem")
    ext = os.path.join(dirpath, "upstream.ext")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", ca_key, "-out", ca_pem, "-days", "2", "-subj",
        "/CN=nilbox test upstream CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=" + names[0])
    san = ",".join(["DNS:" + n for n in names] + ["IP:" + i for i in ips])
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=" + san + "\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key,
        "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)
    return ca_pem, crt, key


class Upstream:
    def __init__(self, log_path=None, cert=None, key=None):
        self.log_path = log_path
        self.cert = cert
        self.key = key
        self.server = None
        self.port = None
        self.log_file = open(log_path, "a", buffering=1) if log_path else None

    def record(self, entry):
        if self.log_file:
            self.log_file.write(json.dumps(entry) + "\n")

    async def start(self, host="127.0.0.1", port=0):
        ctx = None
        if self.cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.cert, self.key)
            ctx.set_alpn_protocols(["http/1.1"])
        self.server = await asyncio.start_server(self.handle, host, port, ssl=ctx,
                                                 limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def read_body(self, reader, headers, sink):
        te = headers.get("transfer-encoding", "").lower()
        if te == "chunked":
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return
                left = size
                while left:
                    data = await reader.read(min(left, 1 << 16))
                    if not data:
                        raise ConnectionError("eof in chunk")
                    sink(data)
                    left -= len(data)
                if await reader.readexactly(2) != b"\r\n":
                    raise ConnectionError("bad chunk end")
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left:
                data = await reader.read(min(left, 1 << 16))
                if not data:
                    raise ConnectionError("eof in body")
                sink(data)
                left -= len(data)

    async def handle(self, reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                hlist = []
                for ln in lines[1:]:
                    if not ln:
                        continue
                    k, v = ln.split(":", 1)
                    hlist.append([k, v.strip()])
                headers = {k.lower(): v for k, v in hlist}
                url = urllib.parse.urlsplit(target)
                path = url.path
                q = urllib.parse.parse_qs(url.query)
                if headers.get("expect", "").lower() == "100-continue":
                    if path == "/no-continue":
                        writer.write(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                        await writer.drain()
                        return
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                h = hashlib.sha256()
                state = {"len": 0, "prefix": b""}

                def sink(data):
                    h.update(data)
                    state["len"] += len(data)
                    if len(state["prefix"]) < 65536:
                        state["prefix"] += data[:65536 - len(state["prefix"])]
                await self.read_body(reader, headers, sink)
                state["sha"] = h.hexdigest()
                self.record({"time": time.time(), "method": method, "target": target,
                             "headers": hlist, "body_len": state["len"],
                             "body_sha256": h.hexdigest(),
                             "body_prefix": state["prefix"][:4096].decode("latin-1")})
                keep = headers.get("connection", "").lower() != "close"
                if path == "/ws":
                    await self.websocket(reader, writer, headers)
                    return
                if not await self.route(writer, method, target, path, q, hlist, headers, state,
                                        keep):
                    return
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            return
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def send(self, writer, status, body=b"", ctype="application/json", extra=(),
                   keep=True):
        hdrs = ["HTTP/1.1 %d X" % status, "Content-Type: " + ctype,
                "Content-Length: %d" % len(body)]
        hdrs += ["%s: %s" % kv for kv in extra]
        if not keep:
            hdrs.append("Connection: close")
        writer.write(("\r\n".join(hdrs) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()

    async def route(self, writer, method, target, path, q, hlist, headers, state, keep):
        if path.startswith("/echo-header"):
            extra = []
            for k, v in hlist:
                if k.lower() in ("authorization", "x-api-key", "x-token"):
                    extra.append(("X-Echo-" + k, v))
            await self.send(writer, 200, b"{}", extra=extra, keep=keep)
        elif path.startswith("/echo"):
            body = json.dumps({"method": method, "target": target, "headers": hlist,
                               "body": state["prefix"].decode("latin-1"),
                               "body_len": state["len"]}).encode()
            await self.send(writer, 200, body, keep=keep)
        elif path == "/sse":
            n = int(q.get("n", ["5"])[0])
            delay = float(q.get("delay", ["0.1"])[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            for i in range(n):
                ev = ("id: %d\nevent: tick\ndata: {\"i\": %d, \"t\": %.6f}\n\n"
                      % (i, i, time.time())).encode()
                writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await writer.drain()
                if i + 1 < n:
                    await asyncio.sleep(delay)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif path == "/redirect":
            to = q.get("to", ["https://elsewhere.test/"])[0]
            await self.send(writer, 302, b"", extra=[("Location", to)], keep=keep)
        elif path == "/big":
            size = int(q.get("size", ["1048576"])[0])
            chunked = q.get("chunked", ["0"])[0] == "1"
            pattern = (b"0123456789abcdef" * 4096)
            if chunked:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: %d\r\n\r\n" % size)
            left = size
            while left:
                piece = pattern[:min(left, len(pattern))]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                left -= len(piece)
                await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif path == "/upload":
            body = json.dumps({"len": state["len"], "sha256": state["sha"]}).encode()
            await self.send(writer, 200, body, keep=keep)
        elif path == "/chunked":
            n = int(q.get("n", ["3"])[0])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(n):
                piece = b"piece %d\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        elif path.startswith("/status/"):
            await self.send(writer, int(path[8:]), b"", keep=keep)
        elif path == "/slow":
            await asyncio.sleep(float(q.get("delay", ["1"])[0]))
            await self.send(writer, 200, b"{\"slow\": true}", keep=keep)
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
            await writer.drain()
            return False
        else:
            await self.send(writer, 200, json.dumps({"ok": True, "path": path}).encode(),
                            keep=keep)
        return True

    async def websocket(self, reader, writer, headers):
        key = headers.get("sec-websocket-key", "").encode()
        acc = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
        await writer.drain()
        while True:
            hdr = await reader.readexactly(2)
            op = hdr[0] & 0x0F
            ln = hdr[1] & 0x7F
            masked = hdr[1] & 0x80
            if ln == 126:
                ln = int.from_bytes(await reader.readexactly(2), "big")
            elif ln == 127:
                ln = int.from_bytes(await reader.readexactly(8), "big")
            mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
            data = bytearray(await reader.readexactly(ln))
            for i in range(ln):
                data[i] ^= mask[i % 4]
            if op == 8:
                writer.write(b"\x88\x00")
                await writer.drain()
                return
            if op == 9:
                writer.write(bytes([0x8A, len(data)]) + data)
                continue
            out = bytes([0x80 | op])
            if ln < 126:
                out += bytes([ln])
            elif ln < 65536:
                out += bytes([126]) + ln.to_bytes(2, "big")
            else:
                out += bytes([127]) + ln.to_bytes(8, "big")
            writer.write(out + bytes(data))
            await writer.drain()


def spawn(log, *args):
    """This file run as a program logging to `log`: (the process, its port)."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--log", log, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    assert line.startswith("PORT "), line
    return p, int(line.split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--log")
    ap.add_argument("--plain", action="store_true")
    a = ap.parse_args()
    up = Upstream(a.log, None if a.plain else a.cert, None if a.plain else a.key)

    async def run():
        port = await up.start(port=a.port)
        print("PORT %d" % port, flush=True)
        async with up.server:
            await up.server.serve_forever()
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
