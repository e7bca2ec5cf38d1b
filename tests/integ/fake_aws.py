#!/usr/bin/env python3
"""A fake AWS upstream (S3 and a Bedrock-like JSON API) that verifies AWS
Signature Version 4 with the REAL credentials, for the SigV4 re-signing
tests. The verifier below is written from the specification, independently
of src/daemon/egress/sigv4.c.

  PUT  /BUCKET/KEY        store (x-amz-content-sha256 hex, UNSIGNED-PAYLOAD,
                          STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] with every
                          chunk signature and the trailer signature checked, or
                          STREAMING-UNSIGNED-PAYLOAD-TRAILER; a trailing
                          x-amz-checksum-* must match the data); answers {"len", "sha256"}
  GET  /BUCKET/KEY        the object (header signing or a presigned URL)
  POST /model/M/invoke    (service bedrock) the signature covers sha256(body);
                          answers {"len", "sha256", "echo": request headers}
Every answer echoes the request headers it got ("echo") and, on a bad
signature, 403 with the key id and the whole Authorization header (A5: the
guest must see placeholders, never a real value). Each request is logged as
a JSON line: method, target, headers, verified, why.

Usage: fake_aws.py --cert C --key K --log FILE --akid A --secret S [--token T]
prints "PORT <n>".
"""
import argparse
import base64
import hashlib
import hmac
import json
import ssl
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EMPTY = hashlib.sha256(b"").hexdigest()
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"


def _crc32c(data):
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 & -(crc & 1))
    return crc ^ 0xffffffff


def checksum(name, data):
    """The base64 value of trailing header `name` (x-amz-checksum-ALGO) for
    data, or None for an algorithm this fake does not know."""
    alg = name[len("x-amz-checksum-"):] if name.startswith("x-amz-checksum-") else ""
    raw = ((zlib.crc32(data) & 0xffffffff).to_bytes(4, "big") if alg == "crc32" else
           _crc32c(data).to_bytes(4, "big") if alg == "crc32c" else
           hashlib.sha1(data).digest() if alg == "sha1" else
           hashlib.sha256(data).digest() if alg == "sha256" else None)
    return base64.b64encode(raw).decode() if raw is not None else None


def _h(k, m):
    return hmac.new(k, m.encode() if isinstance(m, str) else m, hashlib.sha256).digest()


def signing_key(secret, date, region, service):
    k = _h(("AWS4" + secret).encode(), date)
    return _h(_h(_h(k, region), service), "aws4_request")


def _enc(s):
    return urllib.parse.quote(s, safe="-_.~")


def canonical_query(qs, presigned):
    pairs = []
    for part in qs.split("&") if qs else []:
        if not part:
            continue
        k, _, v = part.partition("=")
        k, v = urllib.parse.unquote(k), urllib.parse.unquote(v)
        if presigned and k == "X-Amz-Signature":
            continue
        pairs.append((_enc(k), _enc(v)))
    return "&".join("%s=%s" % kv for kv in sorted(pairs))


def canonical_uri(path, s3):
    if s3:
        return path
    segs = []
    for s in path.split("/"):
        if s in ("", "."):
            continue
        if s == "..":
            segs and segs.pop()
            continue
        segs.append(s)
    out = "/" + "/".join(urllib.parse.quote(s, safe="-_.~") for s in segs)
    if len(path) > 1 and path.endswith("/") and out != "/":
        out += "/"
    return out


def signature(secret, method, target, headers, signed, payload, amzdate, scope, presigned):
    date, region, service, _ = scope.split("/")
    path, _, qs = target.partition("?")
    ch = ""
    for n in signed.split(";"):
        vals = [" ".join(v.split()) for k, v in headers if k.lower() == n]
        if not vals:
            raise ValueError("signed header %s missing" % n)
        ch += "%s:%s\n" % (n, ",".join(vals))
    creq = "\n".join([method, canonical_uri(path, service == "s3"),
                      canonical_query(qs, presigned), ch, signed, payload])
    sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    key = signing_key(secret, date, region, service)
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest(), key


def chunk_sig(key, amzdate, scope, prev, data):
    sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amzdate, scope, prev, EMPTY,
                     hashlib.sha256(data).hexdigest()])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def trailer_sig(key, amzdate, scope, prev, trailers):
    """trailers: [(name, value)] in the order sent, the signature left out."""
    canon = "".join("%s:%s\n" % (n, v) for n, v in trailers)
    sts = "\n".join(["AWS4-HMAC-SHA256-TRAILER", amzdate, scope, prev,
                     hashlib.sha256(canon.encode()).hexdigest()])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


def decode_chunked(body, payload, key, amzdate, scope, seed, declared):
    """An aws-chunked body (payload: one of the three STREAMING kinds):
    (ok, why, data, nchunks), every signature checked with `key` when the
    kind signs, trailing checksums against the data."""
    signed = payload != UNSIGNED_TRAILER
    with_trailer = payload != STREAMING
    out, prev, pos, n = bytearray(), seed, 0, 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return False, "bad chunk framing (no chunk line)", body, n
        line = body[pos:eol]
        if signed:
            size_s, _, ext = line.partition(b";")
            if not ext.startswith(b"chunk-signature="):
                return False, "bad chunk line %r" % line[:80], body, n
            sig = ext[len(b"chunk-signature="):].decode()
        else:
            size_s, sig = line, None
        try:
            size = int(size_s, 16)
        except ValueError:
            return False, "bad chunk size %r" % size_s[:80], body, n
        data = body[eol + 2:eol + 2 + size]
        if len(data) != size:
            return False, "bad chunk framing (short chunk)", body, n
        if signed:
            if not hmac.compare_digest(chunk_sig(key, amzdate, scope, prev, data), sig):
                return False, "chunk signature does not match at %d" % len(out), body, n
            prev = sig
        n += 1
        if size == 0:
            pos = eol + 2
            break
        if body[eol + 2 + size:eol + 4 + size] != b"\r\n":
            return False, "bad chunk framing", body, n
        pos = eol + 4 + size
        out += data
    trailers, tsig = [], None
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return False, "bad trailer framing", body, n
        line = body[pos:eol].decode("latin-1")
        pos = eol + 2
        if line == "":
            break
        name, colon, value = line.partition(":")
        if not colon or not with_trailer:
            return False, "bad trailer line %r" % line[:80], body, n
        if name == "x-amz-trailer-signature":
            tsig = value.strip()
        elif tsig is not None:
            return False, "trailer after the trailer signature", body, n
        else:
            trailers.append((name, value.strip()))
    if pos != len(body):
        return False, "bytes after the aws-chunked body", body, n
    if signed and with_trailer:
        if tsig is None:
            return False, "no trailer signature", body, n
        if not hmac.compare_digest(trailer_sig(key, amzdate, scope, prev, trailers), tsig):
            return False, "trailer signature does not match", body, n
    names = [t.strip().lower() for t in declared.split(",") if t.strip()]
    got = dict(trailers)
    for name in names:
        if name not in got:
            return False, "declared trailer %s missing" % name, body, n
        want = checksum(name, bytes(out))
        if want is None or want != got[name]:
            return False, "trailing checksum %s does not match" % name, body, n
    return True, "ok (%d chunks%s)" % (n, ", trailer " + ",".join(names) if names else ""), \
        bytes(out), n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    cfg = None
    store = {}
    lock = threading.Lock()

    def log_message(self, *a):
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def answer(self, status, obj, raw=None, ctype="application/json"):
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        # Echoed in response headers too (A5: headers are scanned as well).
        tok = self.headers.get("x-amz-security-token")
        if tok:
            self.send_header("x-echo-token", tok)
        self.send_header("x-echo-authorization", self.headers.get("Authorization", ""))
        if self.command == "PUT" and status == 200:
            self.send_header("ETag", '"%s"' % hashlib.md5(b"").hexdigest())
        self.end_headers()
        self.wfile.write(body)

    def verify(self, body):
        """(ok, why, decoded body)."""
        c = self.cfg
        hl = list(self.headers.items())
        target = self.path
        path, _, qs = target.partition("?")
        q = dict(urllib.parse.parse_qsl(qs, keep_blank_values=True))
        presigned = "X-Amz-Signature" in q
        if presigned:
            cred = q.get("X-Amz-Credential", "")
            signed, got, amzdate = q.get("X-Amz-SignedHeaders", ""), q.get("X-Amz-Signature"), \
                q.get("X-Amz-Date", "")
            token = q.get("X-Amz-Security-Token")
            payload = "UNSIGNED-PAYLOAD"
        else:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("AWS4-HMAC-SHA256 "):
                return False, "no signature", body
            f = dict(p.strip().split("=", 1) for p in auth[17:].split(","))
            cred, signed, got = f["Credential"], f["SignedHeaders"], f["Signature"]
            amzdate = self.headers.get("x-amz-date", "")
            token = self.headers.get("x-amz-security-token")
            payload = self.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
        akid, _, scope = cred.partition("/")
        if akid != c.akid:
            return False, "unknown key id %s" % akid, body
        if (token or None) != (c.token or None):
            return False, "bad session token", body
        if "x-amz-security-token" not in signed.split(";") and token and not presigned:
            return False, "session token not signed", body
        try:
            want, key = signature(c.secret, self.command, target, hl, signed, payload, amzdate,
                                  scope, presigned)
        except (ValueError, KeyError) as e:
            return False, str(e), body
        if not hmac.compare_digest(want, got or ""):
            return False, "signature does not match", body
        if payload in (STREAMING, STREAMING_TRAILER, UNSIGNED_TRAILER):
            ok, why, out, _ = decode_chunked(body, payload, key, amzdate, scope, got,
                                             self.headers.get("x-amz-trailer", ""))
            if not ok:
                return False, why, body
            if len(out) != int(self.headers.get("x-amz-decoded-content-length", "-1")):
                return False, "decoded length", body
            return True, why, out
        if len(payload) == 64 and payload != hashlib.sha256(body).hexdigest():
            return False, "payload hash does not match", body
        return True, "ok", body

    def handle_any(self):
        body = self.read_body()
        ok, why, data = self.verify(body)
        entry = {"method": self.command, "target": self.path, "headers": list(self.headers.items()),
                 "verified": ok, "why": why, "len": len(data),
                 "sha256": hashlib.sha256(data).hexdigest()}
        with self.lock:
            with open(self.cfg.log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        echo = list(self.headers.items())
        s3 = not self.path.startswith("/model/")
        if not ok:
            if s3:  # S3 errors are XML, and name the key id they got
                x = ("<Error><Code>SignatureDoesNotMatch</Code><Message>%s</Message>"
                     "<AWSAccessKeyId>%s</AWSAccessKeyId><Authorization>%s</Authorization>"
                     "</Error>" % (why, self.headers.get("Authorization", "")[17:60],
                                   self.headers.get("Authorization", "")))
                self.answer(403, None, raw=x.encode(), ctype="application/xml")
            else:
                self.answer(403, {"error": "SignatureDoesNotMatch", "why": why, "echo": echo,
                                  "authorization": self.headers.get("Authorization", "")})
            return
        if self.command == "PUT":
            with self.lock:
                self.store[self.path.partition("?")[0]] = data
            self.answer(200, None, raw=b"")
        elif self.command == "GET":
            obj = self.store.get(self.path.partition("?")[0])
            if obj is None:
                self.answer(404, None, raw=b"<Error><Code>NoSuchKey</Code></Error>",
                            ctype="application/xml")
            else:
                self.answer(200, None, raw=obj, ctype="application/octet-stream")
        else:
            self.answer(200, {"len": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                              "echo": echo})

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any


def main():
    ap = argparse.ArgumentParser()
    for a in ("--cert", "--key", "--log", "--akid", "--secret"):
        ap.add_argument(a, required=True)
    ap.add_argument("--token", default="")
    cfg = ap.parse_args()
    Handler.cfg = cfg
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg.cert, cfg.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("PORT %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
