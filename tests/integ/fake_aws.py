#!/usr/bin/env python3
"""A fake AWS upstream (S3 and a Bedrock-like JSON API) that verifies AWS
Signature Version 4 with the REAL credentials, for the SigV4 re-signing
tests. The verifier below is written from the specification, independently
of src/daemon/egress/sigv4.c.

  PUT  /BUCKET/KEY        store (x-amz-content-sha256 hex, UNSIGNED-PAYLOAD or
                          STREAMING-AWS4-HMAC-SHA256-PAYLOAD with every chunk
                          signature checked); answers {"len", "sha256"}
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
import hashlib
import hmac
import json
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EMPTY = hashlib.sha256(b"").hexdigest()
STREAMING = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


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
        if payload == STREAMING:
            out, prev, pos = bytearray(), got, 0
            while True:
                eol = body.index(b"\r\n", pos)
                size_s, _, ext = body[pos:eol].partition(b";")
                size = int(size_s, 16)
                sig = ext.split(b"=", 1)[1].decode()
                data = body[eol + 2:eol + 2 + size]
                if body[eol + 2 + size:eol + 4 + size] != b"\r\n":
                    return False, "bad chunk framing", body
                if not hmac.compare_digest(chunk_sig(key, amzdate, scope, prev, data), sig):
                    return False, "chunk signature does not match at %d" % len(out), body
                prev, pos = sig, eol + 4 + size
                out += data
                if size == 0:
                    break
            if len(out) != int(self.headers.get("x-amz-decoded-content-length", "-1")):
                return False, "decoded length", body
            return True, "ok (%d chunks)" % (body.count(b";chunk-signature=")), bytes(out)
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
