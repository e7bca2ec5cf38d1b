#!/usr/bin/python3
"""Red-team pass 2 (h-red2): revocation on open connections and VM scoping,
through the real `nilbox proxy` for VM "a" and one for VM "b", against the
scripted TLS upstream of test_attacks_redteam.py (it records raw heads).

  A27  on a keep-alive tunnel that already carried an injected request: the
       secret's value changed, the binding removed, the secret removed, the
       allow rule removed, a deny rule added: the next request on the SAME
       connection gets the new value / no value / is refused.
  A9   bindings scoped to VM "a" (header, query, SigV4) used through VM
       "b"'s proxy; a value of "a"'s secret the upstream stored and hands
       to "b" is redacted.
  A2   SigV4 signed with a key id that names another secret, or with the
       secret-key placeholder in the body: never re-signed, never sent.

Every test has a positive control: the real value does reach the bound
host in its placement on the same path."""
import json
import os
import socket
import ssl
import time
import urllib.parse

import fake_aws
import fake_oauth
from daemon_harness import status_of
from proxy_env import ProxyEnv, run_suite, with_auth
from test_attacks_redteam import Upstream, dechunk, read_response

V1 = "rv-FIRST.value_0123456789abcdefAAA"
V2 = "rv-SECOND.value_9876543210fedcbaBBB"
VA = "va-ONLY.for.vm.a_55443322110099ZZ"
QA = "qa-QUERY.vm.a_66778899aabbccddQQ"
AKID, ASEC = "AKIAREDTWOKEY0000077", "rEdTwO/SeCrEt+Key0123456789abcdefGHIJKL"
RHOST, DHOST, VHOST, SHOST = "api.test", "other.test", "a.api.test", "meta.test"
OAUTH_HOST, OAPI_HOST = "rebind.test", "bench.test"  # token endpoint, API (test CA names)
CS = "cs-REAL.client.secret_0099887766AA"
OAUTH_LUA = """
return {
  token_url = "https://%s/token",
  request = "form",
  secrets = { client_secret = "client_secret", refresh_token = "refresh_token" },
  api_hosts = { "%s" },
  api_header = "Authorization: Bearer {secret}",
}
""" % (OAUTH_HOST, OAPI_HOST)
E = None
UP = None
SRV = None


class StoreUpstream(Upstream):
    """Also /stored: answers with the last credential any request carried
    (an upstream that stores what one VM sent and shows it to another)."""
    last = b""

    def route(self, c, f, method, target, hd, body):
        auth = hd.get("authorization", "")
        tok = (auth.split(" ", 1)[1] if " " in auth else auth).encode()
        if target.startswith("/keep"):
            StoreUpstream.last = tok
            return self.send(c, 200, "kept")
        if target.startswith("/stored"):
            return self.send(c, 200, b"stored=" + StoreUpstream.last)
        return super().route(c, f, method, target, hd, body)


def setup():
    global E, UP, SRV
    E = ProxyEnv(prompt_timeout_ms=1000, names=("evil.test",))
    E.__enter__()
    UP = StoreUpstream(E.up_cert, E.up_key)
    E.rule("allow", "127.0.0.1:%d" % UP.port)
    hosts = (RHOST, DHOST, VHOST, SHOST)
    res = ["%s:443:127.0.0.1:%d" % (h, UP.port) for h in hosts]
    res += ["%s:443:127.0.0.1:%d" % (h, E.tls_port) for h in ("sse.test", "ws.test")]
    res += ["evil.test:8443:127.0.0.1:%d" % UP.port]
    SRV = fake_oauth.OAuthServer(E.up_cert, E.up_key, {"cid": CS})
    E.rule("allow", "127.0.0.1:%d" % SRV.port)
    res += ["%s:443:127.0.0.1:%d" % (h, SRV.port) for h in (OAUTH_HOST, OAPI_HOST)]
    E.pa = E.proxy(vm="a", extra_resolve=res)
    E.pb = E.proxy(vm="b", extra_resolve=res)


def tunnel(host, px):
    return E.tunnel(host, px=px)


def ask(s, host, path, auth=b"Bearer R_KEY", extra=b"", body=b""):
    """One keep-alive request on s: (response head, body), ("", "") if closed."""
    try:
        a = b"Authorization: %s\r\n" % auth if auth is not None else b""
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\n%s%s\r\n"
                  % (path.encode(), host.encode(), a, extra) + body)
        return read_response(s)
    except (OSError, ssl.SSLError):
        return b"", b""


def seen(path):
    got = UP.got(lambda r: r["target"] == path)
    return got[0]["head"] + got[0]["body"] if got else None


def test_A27_revocation_on_open_tunnel():
    E.secret("R_KEY", V1)
    bid = E.bind("R_KEY", RHOST)["id"]
    rid = E.rule("allow", RHOST + ":443")["id"]
    s = tunnel(RHOST, E.pa)
    # positive control: injected on the tunnel
    h, b = ask(s, RHOST, "/echo?r1")
    assert status_of(h) == 200 and V1.encode() in seen("/echo?r1"), (h, seen("/echo?r1"))
    assert V1.encode() not in h + b, (h, b)
    # (d) the value changes: the next request on the same connection gets the new one
    E.secret("R_KEY", V2)
    h, b = ask(s, RHOST, "/echo?r2")
    got = seen("/echo?r2")
    assert got and V2.encode() in got and V1.encode() not in got, got
    # (a) the binding goes: no value at all on the same connection
    E.cli("secret", "unbind", str(bid))
    h, b = ask(s, RHOST, "/echo?r3")
    got = seen("/echo?r3") or b""
    assert V1.encode() not in got and V2.encode() not in got, got
    # bound again: injected again (the connection is still usable)
    E.bind("R_KEY", RHOST)
    s.close()
    s = tunnel(RHOST, E.pa)
    h, b = ask(s, RHOST, "/echo?r4")
    assert V2.encode() in (seen("/echo?r4") or b""), seen("/echo?r4")
    # (b) the secret goes
    E.cli("secret", "rm", "R_KEY")
    h, b = ask(s, RHOST, "/echo?r5")
    got = seen("/echo?r5") or b""
    assert V2.encode() not in got, got
    s.close()
    # (c) the allow rule goes: the next request on the open tunnel is not sent
    E.secret("R_KEY", V1)
    E.bind("R_KEY", RHOST)
    s = tunnel(RHOST, E.pa)
    h, b = ask(s, RHOST, "/echo?r6")
    assert V1.encode() in (seen("/echo?r6") or b""), seen("/echo?r6")
    E.cli("rule", "rm", str(rid))
    h, b = ask(s, RHOST, "/echo?r7")
    assert seen("/echo?r7") is None, seen("/echo?r7")
    assert status_of(h) != 200 if h else True, h
    s.close()


def test_A27_deny_rule_on_open_tunnel():
    E.secret("D_KEY", V1)
    E.bind("D_KEY", DHOST)
    E.rule("allow", DHOST + ":443")
    s = tunnel(DHOST, E.pa)
    h, b = ask(s, DHOST, "/echo?d1", auth=b"Bearer D_KEY")
    assert V1.encode() in (seen("/echo?d1") or b""), (h, seen("/echo?d1"))
    E.rule("deny", DHOST + ":443")
    h, b = ask(s, DHOST, "/echo?d2", auth=b"Bearer D_KEY")
    assert seen("/echo?d2") is None, seen("/echo?d2")
    assert status_of(h) != 200 if h else True, h
    s.close()


def read_for(s, secs):
    """Whatever s yields within `secs` (until it closes)."""
    out = b""
    deadline = time.time() + secs
    s.settimeout(0.2)
    while time.time() < deadline:
        try:
            b = s.recv(65536)
        except socket.timeout:
            continue
        except (OSError, ssl.SSLError):
            break
        if not b:
            break
        out += b
    return out


def test_A27_deny_mid_sse_stream():
    E.rule("allow", "sse.test:443")
    s = tunnel("sse.test", E.pa)
    s.sendall(b"GET /sse?n=40&delay=0.2 HTTP/1.1\r\nHost: sse.test\r\n\r\n")
    # positive control: events arrive
    before = read_for(s, 1.0)
    assert before.count(b"event: tick") >= 2, before
    E.rule("deny", "sse.test:443")
    after = read_for(s, 4.0)
    s.close()
    # the deny rule cuts the stream: at most what was in flight, not 4 more seconds of it
    assert after.count(b"event: tick") <= 3, after.count(b"event: tick")


def upload_rule_goes(tag, change):
    """A chunked upload to ws.test: a piece, then `change()`, then more
    pieces and the end. The upstream's record of it, or None."""
    s = tunnel("ws.test", E.pa)
    s.sendall(b"POST /upload?%s HTTP/1.1\r\nHost: ws.test\r\nTransfer-Encoding: chunked\r\n"
              b"\r\n5\r\nhello\r\n" % tag.encode())
    time.sleep(0.5)
    change()
    time.sleep(0.5)
    try:
        for i in range(20):
            s.sendall(b"6\r\nleak%02d\r\n" % i)
            time.sleep(0.05)
        s.sendall(b"0\r\n\r\n")
    except (OSError, ssl.SSLError):
        pass
    out = read_for(s, 2.0)
    s.close()
    got = [r for r in E.received() if r.get("target", "").endswith("?" + tag)]
    return got, out


def test_A27_deny_mid_chunked_upload():
    rid = E.rule("allow", "ws.test:443")["id"]
    # positive control: nothing changes, the whole upload arrives
    got, out = upload_rule_goes("u0", lambda: None)
    assert got, (out, E.received()[-2:])
    # a deny rule mid-upload: the rest never reaches the denied host
    got, out = upload_rule_goes("u1", lambda: E.rule("deny", "ws.test:443"))
    assert not got, got
    E.cli("rule", "rm", str(rid))


def sigv4_head(host, path, akid="AWS_ACCESS_KEY_ID", n=0, body=b""):
    amzdate = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = "%s/us-east-1/s3/aws4_request" % amzdate[:8]
    headers = [("Host", host), ("x-amz-date", amzdate),
               ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")]
    signed = "host;x-amz-content-sha256;x-amz-date"
    sig, _ = fake_aws.signature("AWS_SECRET_ACCESS_KEY", "GET", path, headers, signed,
                                "UNSIGNED-PAYLOAD", amzdate, scope, False)
    auth = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        akid, scope, signed, sig)
    extra = "".join("%s: %s\r\n" % h for h in headers[1:]).encode()
    if body:
        extra += b"Content-Length: %d\r\n" % len(body)
    return auth.encode(), extra


def test_A9_cross_vm_header_query_sigv4():
    E.secret("VA_KEY", VA)
    E.bind("VA_KEY", VHOST, "--vm", "a")
    E.secret("QA_KEY", QA)
    E.bind("QA_KEY", VHOST, "--query", "key", "--vm", "a")
    E.secret("AWS_A", "%s\n%s\n" % (AKID, ASEC))
    E.cli("secret", "bind-aws", "AWS_A", "--host", SHOST, "--vm", "a")
    E.rule("allow", VHOST + ":443")
    E.rule("allow", SHOST + ":443")
    for px, tag in ((E.pa, "a"), (E.pb, "b")):
        s = tunnel(VHOST, px)
        ask(s, VHOST, "/echo?h" + tag, auth=b"Bearer VA_KEY")
        ask(s, VHOST, "/echo?key=QA_KEY&q" + tag, auth=b"Bearer x")
        s.close()
        s = tunnel(SHOST, px)
        auth, extra = sigv4_head(SHOST, "/obj-" + tag)
        ask(s, SHOST, "/obj-" + tag, auth=auth, extra=extra)
        s.close()
    # positive controls: VM a gets its values in their placements
    assert VA.encode() in seen("/echo?ha"), seen("/echo?ha")
    assert UP.got(lambda r: r["target"] == "/echo?key=%s&qa" % QA), "query for a"
    assert b"Credential=" + AKID.encode() in seen("/obj-a"), seen("/obj-a")
    # VM b: none of them
    for p in ("/echo?hb", "/obj-b"):
        got = seen(p) or b""
        for v in (VA, QA, AKID, ASEC):
            assert v.encode() not in got, (p, v, got)
    for r in UP.got(lambda r: r["target"].endswith("&qb")):
        assert QA not in r["target"], r["target"]


def test_A9_stored_value_reflected_to_other_vm():
    # VM a's value reaches the upstream (positive control), which hands it to VM b
    s = tunnel(VHOST, E.pa)
    ask(s, VHOST, "/keep", auth=b"Bearer VA_KEY")
    s.close()
    assert StoreUpstream.last == VA.encode(), StoreUpstream.last
    s = tunnel(VHOST, E.pb)
    h, b = ask(s, VHOST, "/stored", auth=b"Bearer nothing")
    s.close()
    assert status_of(h) == 200 and b"stored=" in b, (h, b)
    assert VA.encode() not in h + b and b"VA_KEY" in dechunk(b), (h, b)


def test_A2_sigv4_foreign_key_id_and_body_placeholder():
    # positive control on the same host and VM
    s = tunnel(SHOST, E.pa)
    auth, extra = sigv4_head(SHOST, "/obj-p1")
    ask(s, SHOST, "/obj-p1", auth=auth, extra=extra)
    assert b"Credential=" + AKID.encode() in (seen("/obj-p1") or b""), seen("/obj-p1")
    # a key id naming the secret (or its value, or another placeholder): not re-signed
    for i, akid in enumerate(("AWS_A", AKID, "R_KEY", "aws_access_key_id")):
        auth, extra = sigv4_head(SHOST, "/obj-f%d" % i, akid=akid)
        ask(s, SHOST, "/obj-f%d" % i, auth=auth, extra=extra)
        got = seen("/obj-f%d" % i) or b""
        assert ASEC.encode() not in got, got
        if akid != AKID:
            assert AKID.encode() not in got, (akid, got)
    # the secret-key placeholder in the body: never replaced by the real key
    pb = b"AWS_SECRET_ACCESS_KEY AWS_ACCESS_KEY_ID"
    auth, extra = sigv4_head(SHOST, "/obj-b1", body=pb)
    ask(s, SHOST, "/obj-b1", auth=auth, extra=extra, body=pb)
    got = seen("/obj-b1") or b""
    assert ASEC.encode() not in got, got
    s.close()


def presigned(path, akid="AWS_ACCESS_KEY_ID"):
    """A presigned-URL target (query auth) signed with the placeholder key."""
    amzdate = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    scope = "%s/us-east-1/s3/aws4_request" % amzdate[:8]
    q = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%s&X-Amz-Date=%s"
         "&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
         % (urllib.parse.quote("%s/%s" % (akid, scope), safe=""), amzdate))
    sig, _ = fake_aws.signature("AWS_SECRET_ACCESS_KEY", "GET", path + "?" + q,
                                [("Host", SHOST)], "host", "UNSIGNED-PAYLOAD", amzdate, scope,
                                True)
    return path + "?" + q + "&X-Amz-Signature=" + sig


def test_A2_A9_sigv4_presigned_query_and_host():
    # positive control: VM a's presigned URL is signed again with the real key id
    for px, tag in ((E.pa, "a"), (E.pb, "b")):
        s = tunnel(SHOST, px)
        ask(s, SHOST, presigned("/pre-" + tag), auth=None)
        ask(s, SHOST, presigned("/pre-f" + tag, akid="AWS_A"), auth=None)
        s.close()
    got = UP.got(lambda r: r["target"].startswith("/pre-a?"))
    assert got and AKID in urllib.parse.unquote(got[0]["target"]), got
    for p in ("/pre-b?", "/pre-fa?", "/pre-fb?"):
        for r in UP.got(lambda r: r["target"].startswith(p)):
            blob = urllib.parse.unquote(r["target"]).encode() + r["head"]
            assert AKID.encode() not in blob and ASEC.encode() not in blob, (p, blob)
    # Host spelled in another case or with the port: the bound host still (signed once);
    # another host inside the tunnel: refused, never signed with the real key
    s = tunnel(SHOST, E.pa)
    for i, host in enumerate(("META.TEST", "meta.test:443", "other.test", "meta.test.evil.test")):
        auth, extra = sigv4_head(host, "/hc%d" % i)
        s2 = tunnel(SHOST, E.pa)
        ask(s2, host, "/hc%d" % i, auth=auth, extra=extra)
        s2.close()
        got = seen("/hc%d" % i) or b""
        if i < 2:
            assert b"Credential=" + AKID.encode() in got, (host, got)
        else:
            assert AKID.encode() not in got and ASEC.encode() not in got, (host, got)
    s.close()


def test_A9_oauth_binding_scoped_to_vm_a():
    E.secret("RT_CLIENT_SECRET", CS)
    d = os.path.join(E.d.home, "oauth")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "rt.lua"), "w") as f:
        f.write(OAUTH_LUA)
    E.cli("oauth", "add", "RT", "--script", "rt", "--vm", "a")
    E.rule("allow", OAUTH_HOST + ":443")
    E.rule("allow", OAPI_HOST + ":443")
    tok = ("https://%s/token" % OAUTH_HOST, "-d", "grant_type=client_credentials",
           "-d", "client_id=cid", "-d", "client_secret=RT_CLIENT_SECRET")
    # positive control: VM a's exchange carries the real client secret, its API call the token
    code, raw, _ = E.curl(E.pa, tok[0], *tok[1:])
    assert code == 200 and b"RT_ACCESS_TOKEN" in raw, raw
    last = [x for x in SRV.log if x["path"] == "/token"][-1]
    assert "client_secret=" + CS in last["body"], last
    assert CS.encode() not in raw and all(t.encode() not in raw for t in SRV.issued), raw
    code, raw, _ = E.curl(E.pa, "https://%s/user" % OAPI_HOST,
                          "-H", "Authorization: Bearer RT_ACCESS_TOKEN")
    got = [x for x in SRV.log if x["path"] == "/user"][-1]["headers"]["Authorization"]
    assert code == 200 and got == "Bearer " + SRV.issued[-1], (code, got)
    # VM b: the same exchange and API call carry neither
    n = len(SRV.log)
    code, raw, _ = E.curl(E.pb, tok[0], *tok[1:])
    assert CS.encode() not in raw and all(t.encode() not in raw for t in SRV.issued), raw
    code, raw, _ = E.curl(E.pb, "https://%s/user" % OAPI_HOST,
                          "-H", "Authorization: Bearer RT_ACCESS_TOKEN")
    assert code != 200, raw
    for x in SRV.log[n:]:
        blob = json.dumps(x)
        assert CS not in blob and all(t not in blob for t in SRV.issued), x


def test_A27_sigv4_revocation_on_open_tunnel():
    akid2, asec2 = "AKIAREDTWOKEY0000099", "sEcOnD/SeCrEt+Key0123456789abcdefGHIJKL"
    s = tunnel(SHOST, E.pa)
    auth, extra = sigv4_head(SHOST, "/sr1")
    ask(s, SHOST, "/sr1", auth=auth, extra=extra)
    assert b"Credential=" + AKID.encode() in (seen("/sr1") or b""), seen("/sr1")
    # (d) the key pair changes: the same connection's next request is signed with the new one
    E.secret("AWS_A", "%s\n%s\n" % (akid2, asec2))
    auth, extra = sigv4_head(SHOST, "/sr2")
    ask(s, SHOST, "/sr2", auth=auth, extra=extra)
    got = seen("/sr2") or b""
    assert b"Credential=" + akid2.encode() in got and AKID.encode() not in got, got
    # (b) the secret (and its binding) goes: not signed with any real key
    E.cli("secret", "rm", "AWS_A")
    auth, extra = sigv4_head(SHOST, "/sr3")
    ask(s, SHOST, "/sr3", auth=auth, extra=extra)
    got = seen("/sr3") or b""
    for v in (AKID, ASEC, akid2, asec2):
        assert v.encode() not in got, (v, got)
    s.close()


def test_A27_A5_raw_tunnel_open_when_its_host_gets_bound():
    """A raw tunnel (end-to-end TLS, never scanned) is refused to a bound
    host; one opened before the binding must not outlive it."""
    E.rule("allow", "evil.test:8443")

    def raw_tls():
        s = socket.create_connection(("127.0.0.1", E.pa.port), timeout=10)
        s.sendall(with_auth(E.pa, b"CONNECT evil.test:8443 HTTP/1.1\r\nHost: evil.test:8443"
                                  b"\r\n\r\n"))
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            if not b:
                break
            head += b
        if status_of(head) != 200:
            s.close()
            return None, head
        ctx = ssl.create_default_context(cafile=E.up_ca)  # the upstream's own CA: raw
        return ctx.wrap_socket(s, server_hostname="evil.test"), head

    s, head = raw_tls()
    assert s, head
    # positive control: the raw tunnel works, end to end with the upstream
    h, b = ask(s, "evil.test", "/ok", auth=b"x")
    assert status_of(h) == 200 and b == b"ok", (h, b)
    E.secret("EVIL_KEY", V1)
    E.bind("EVIL_KEY", "evil.test")
    time.sleep(0.3)
    # a value sent to evil.test (and stored there) is now reachable through it:
    h, b = ask(s, "evil.test", "/ok", auth=b"x")
    s.close()
    assert not h, ("the raw tunnel to a now bound host still carries bytes", h, b)
    # and a new raw tunnel is refused, as before
    s, head = raw_tls()
    assert s is None and status_of(head) == 403, head


def test_daemon_stops_clean():
    """After connections closed under it by rule and binding changes,
    nilboxd stops with exit 0 and no sanitizer report."""
    SRV.stop()
    E.stop_clean()


if __name__ == "__main__":
    run_suite(setup, [test_A27_revocation_on_open_tunnel, test_A27_deny_rule_on_open_tunnel,
                      test_A27_deny_mid_sse_stream, test_A27_deny_mid_chunked_upload,
                      test_A9_cross_vm_header_query_sigv4,
                      test_A9_stored_value_reflected_to_other_vm,
                      test_A2_sigv4_foreign_key_id_and_body_placeholder,
                      test_A2_A9_sigv4_presigned_query_and_host,
                      test_A9_oauth_binding_scoped_to_vm_a,
                      test_A27_sigv4_revocation_on_open_tunnel,
                      test_A27_A5_raw_tunnel_open_when_its_host_gets_bound,
                      test_daemon_stops_clean])
