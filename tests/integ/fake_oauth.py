"""A fake OAuth 2.0 provider and API host for the scripted OAuth tests,
in-process (a thread), over HTTPS with the proxy tests' upstream CA.

Token endpoint (POST /token and /token-<anything>, form or JSON body,
client_secret in the body or Basic auth):
  grant_type=authorization_code  code from GET /authorize (PKCE S256 checked)
  grant_type=client_credentials
  grant_type=refresh_token       rotation: the old refresh token dies; reusing
                                 it is invalid_grant and kills the new one too
  /token-echo  also echoes the client secret it got (a careless provider)
  /token-slash tokens hold '/', written JSON-escaped as '\\/'
  /token-form  answers application/x-www-form-urlencoded (GitHub's default)
API host (any other path): GET /user needs "Authorization: Bearer <a live
access token>" (401 otherwise); /echo-auth reflects the Authorization header.

Every real value it issues is in .issued (the tests grep guest output for
them); every request it got is in .log."""
import base64
import hashlib
import http.server
import json
import secrets
import ssl
import threading
import urllib.parse


class OAuthServer:
    def __init__(self, cert, key, clients):
        self.clients = dict(clients)  # client_id -> real client secret
        self.codes = {}               # code -> (challenge, client_id)
        self.access = set()           # live access tokens
        self.refresh = {}             # live refresh token -> (client_id, its access token)
        self.dead_refresh = set()
        self.issued = []              # every real token value ever issued
        self.log = []
        self.lock = threading.Lock()
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                srv.handle(self, "GET")

            def do_POST(self):
                srv.handle(self, "POST")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- helpers ---------------------------------------------------------
    def token(self, prefix, slash=False):
        t = prefix + secrets.token_urlsafe(24)
        if slash:
            t = prefix + "/" + secrets.token_urlsafe(12) + "/" + secrets.token_urlsafe(12)
        self.issued.append(t)
        return t

    def reply(self, h, status, obj, form=False, escape_slash=False):
        if form:
            body = urllib.parse.urlencode(obj).encode()
            ctype = "application/x-www-form-urlencoded; charset=utf-8"
        else:
            body = json.dumps(obj)
            if escape_slash:
                body = body.replace("/", "\\/")
            body = body.encode()
            ctype = "application/json"
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h, method):
        n = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(n) if n else b""
        url = urllib.parse.urlsplit(h.path)
        host = (h.headers.get("Host") or "").split(":")[0]
        with self.lock:
            self.log.append({"method": method, "host": host, "path": url.path,
                             "headers": dict(h.headers), "body": raw.decode("latin-1")})
            if method == "GET" and url.path == "/authorize":
                q = dict(urllib.parse.parse_qsl(url.query))
                if q.get("code_challenge_method") != "S256" or q.get("client_id") not in self.clients:
                    return self.reply(h, 400, {"error": "invalid_request"})
                code = "code_" + secrets.token_urlsafe(8)
                self.codes[code] = (q["code_challenge"], q["client_id"])
                return self.reply(h, 200, {"code": code})
            if method == "POST" and url.path.startswith("/token"):
                return self.token_endpoint(h, url.path, raw)
            if url.path == "/user":
                auth = h.headers.get("Authorization", "")
                tok = auth[7:] if auth.startswith("Bearer ") else ""
                if tok in self.access:
                    return self.reply(h, 200, {"login": "octocat"})
                return self.reply(h, 401, {"error": "bad_token"})
            if url.path == "/echo-auth":
                return self.reply(h, 200, {"authorization": h.headers.get("Authorization", "")})
            return self.reply(h, 404, {"error": "not_found"})

    def token_endpoint(self, h, path, raw):
        ctype = h.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            f = json.loads(raw or b"{}")
        else:
            f = dict(urllib.parse.parse_qsl(raw.decode()))
        cid, csec = f.get("client_id"), f.get("client_secret")
        auth = h.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            cid, _, csec = base64.b64decode(auth[6:]).decode().partition(":")
        extra = {"debug_client_secret": csec} if path == "/token-echo" else {}
        if cid not in self.clients or self.clients[cid] != csec:
            return self.reply(h, 401, dict(error="invalid_client", **extra))
        gt = f.get("grant_type")
        slash = path == "/token-slash"
        form = path == "/token-form"
        if gt == "authorization_code":
            c = self.codes.pop(f.get("code", ""), None)
            v = f.get("code_verifier", "")
            want = base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=")
            if not c or c[1] != cid or want.decode() != c[0]:
                return self.reply(h, 400, {"error": "invalid_grant"})
        elif gt == "refresh_token":
            rt = f.get("refresh_token", "")
            if rt in self.dead_refresh:
                # Reuse of a rotated token: the whole chain dies (RFC 9700 4.14.2).
                for k, (c2, at) in list(self.refresh.items()):
                    self.access.discard(at)
                    del self.refresh[k]
                return self.reply(h, 400, {"error": "invalid_grant", "reason": "reused"})
            if rt not in self.refresh:
                return self.reply(h, 400, {"error": "invalid_grant"})
            _, old_at = self.refresh.pop(rt)
            self.access.discard(old_at)
            self.dead_refresh.add(rt)
        elif gt != "client_credentials":
            return self.reply(h, 400, {"error": "unsupported_grant_type"})
        at = self.token("at_", slash)
        self.access.add(at)
        resp = {"access_token": at, "token_type": "bearer", "expires_in": 3600}
        if gt != "client_credentials":
            rt = self.token("rt_", slash)
            self.refresh[rt] = (cid, at)
            resp["refresh_token"] = rt
        resp.update(extra)
        return self.reply(h, 200, resp, form=form, escape_slash=slash)
