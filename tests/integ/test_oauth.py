#!/usr/bin/env python3
"""Scripted OAuth end to end (docs/internals/oauth.md), through the real
programs: nilboxd, `nilbox proxy`, curl and python requests as the guest's
clients, a fake OAuth provider + API host (fake_oauth.py) that only
accepts the REAL client secret and the REAL tokens.

Checked: client credentials; authorization code with PKCE; refresh with
rotation (the rotated refresh token is what the host keeps); the guest
only ever sees placeholders (every byte it got is grepped for every real
value the provider issued and for the client secrets); scripts that loop,
allocate without bound or fail are stopped with a 502 naming the script
and the daemon carries on; a binding cannot use another's secrets;
`nilbox oauth ls|add|test` (text and --json)."""
import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_env import ProxyEnv, run_suite  # noqa: E402
import fake_oauth  # noqa: E402

import requests  # noqa: E402

AUTH = "other.test"  # the provider's token endpoint host (in the test CA's leaf)
API = "api.test"     # the provider's API host

CS_FAKE = "cs-real-" + secrets.token_hex(12)
CS_OTHER = "cs-other-" + secrets.token_hex(12)

SCRIPT = """
return {
  token_url = "https://%(host)s%(path)s",
  request = "%(fmt)s",
  secrets = { client_secret = "client_secret", refresh_token = "refresh_token" },
  api_hosts = { "%(api)s" },
  api_header = "Authorization: Bearer {secret}",
  %(parse)s
}
"""

PARSES = {
    "std": "",
    "loop": "parse = function(r) while true do end end,",
    "alloc": "parse = function(r) local t = {} local s = 'x' while true do s = s .. s "
             "t[#t + 1] = s end end,",
    "error": "parse = function(r) error('cannot read ' .. tostring(r.access_token)) end,",
    "retry": "parse = function(r) while true do local f = load('while true do end') "
             "f() end end,",
}

S = {}
SEEN = []  # every byte the guest got


def script(name, path, parse="std", fmt="form", host=AUTH, api=API):
    d = os.path.join(S["e"].d.home, "oauth")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name + ".lua"), "w") as f:
        f.write(SCRIPT % {"host": host, "path": path, "fmt": fmt, "api": api,
                          "parse": PARSES[parse]})


def curl(url, *args):
    e = S["e"]
    code, body, r = e.curl(S["px"], url, "-i", "--suppress-connect-headers", *args)
    SEEN.append(body)
    SEEN.append(r.stderr)
    return code, body


def body_of(raw):
    return raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in raw else raw


class session:
    """requests through the proxy with the interception CA (given per call:
    REQUESTS_CA_BUNDLE in the environment would win over Session.verify)."""

    def get(self, url, **kw):
        return requests.get(url, proxies={"https": S["px"].url}, verify=S["e"].ca_pem,
                            timeout=30, **kw)

    def post(self, url, **kw):
        return requests.post(url, proxies={"https": S["px"].url}, verify=S["e"].ca_pem,
                             timeout=30, **kw)


def seen(r):
    raw = b"%d\r\n" % r.status_code
    raw += b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in r.headers.items())
    raw += b"\r\n" + r.content
    SEEN.append(raw)
    return r


def setup():
    e = ProxyEnv(names=("plain.test",))
    e.start()
    S["e"] = e
    srv = fake_oauth.OAuthServer(e.up_cert, e.up_key, {"cid": CS_FAKE, "cid2": CS_OTHER})
    S["srv"] = srv
    e.rule("allow", "127.0.0.1:%d" % srv.port)
    e.rule("allow", AUTH + ":443")
    e.rule("allow", API + ":443")
    e.secret("FAKE_CLIENT_SECRET", CS_FAKE)
    e.secret("OTHER_CLIENT_SECRET", CS_OTHER)
    S["px"] = e.proxy(extra_resolve=["%s:443:127.0.0.1:%d" % (h, srv.port) for h in (AUTH, API)])
    script("fake", "/token")
    r = e.cli("--json", "oauth", "add", "FAKE", "--script", "fake")
    j = json.loads(r.stdout)
    assert j["name"] == "FAKE" and j["source"] == "user", j
    assert j["secrets"]["access_token"] == "FAKE_ACCESS_TOKEN", j


def test_add_ls():
    e = S["e"]
    r = e.cli("--json", "oauth", "ls")
    b = {x["name"]: x for x in json.loads(r.stdout)["bindings"]}
    f = b["FAKE"]
    assert f["token_url"] == "https://%s/token" % AUTH and f["api_hosts"] == [API], f
    assert f["fields"] == {"client_secret": "FAKE_CLIENT_SECRET",
                           "refresh_token": "FAKE_REFRESH_TOKEN"}, f
    r = e.cli("oauth", "ls")
    assert "FAKE script=fake" in r.stdout and "api.test" in r.stdout, r.stdout
    # the access token secret is bound to the API host with the script's header
    r = e.cli("--json", "secret", "ls")
    assert "FAKE_ACCESS_TOKEN" in r.stdout and API in r.stdout, r.stdout
    # refused: unknown script, bad names, a script naming a secret instead of a slot
    r = e.cli("oauth", "add", "FAKE2", "--script", "nope", check=False)
    assert r.returncode == 4 and "no OAuth script 'nope'" in r.stderr, r
    r = e.cli("oauth", "add", "lower", "--script", "fake", check=False)
    assert r.returncode != 0 and "upper-case" in r.stderr, r
    r = e.cli("oauth", "add", "X", "--script", "../etc/passwd", check=False)
    assert r.returncode != 0 and "bad script name" in r.stderr, r
    d = os.path.join(e.d.home, "oauth")
    with open(os.path.join(d, "thief.lua"), "w") as f:
        f.write('return { token_url = "https://%s/token-thief", '
                'secrets = { client_secret = "OTHER_CLIENT_SECRET" } }' % AUTH)
    r = e.cli("oauth", "add", "THIEF", "--script", "thief", check=False)
    assert r.returncode != 0 and "oauth script thief" in r.stderr and "unknown slot" in r.stderr, r
    r = e.cli("oauth", "add", "X", "--help")
    assert "NAME_CLIENT_SECRET" in r.stdout, r.stdout
    # the built-in scripts declare cleanly
    for b in ("github", "google", "client_credentials"):
        r = e.cli("--json", "oauth", "test", "--script", b)
        j = json.loads(r.stdout)
        assert j["ok"] and j["source"] == "builtin" and j["parsed"]["access_token_len"] > 0, j


def test_before_first_exchange():
    # The placeholder only carries the dummy: the API refuses it.
    code, raw = curl("https://%s/user" % API, "-H", "Authorization: Bearer FAKE_ACCESS_TOKEN")
    assert code == 401, raw


def test_client_credentials():
    code, raw = curl("https://%s/token" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid", "-d", "client_secret=FAKE_CLIENT_SECRET")
    assert code == 200, raw
    j = json.loads(body_of(raw))
    assert j["access_token"] == "FAKE_ACCESS_TOKEN" and j["expires_in"] == 3600, j
    # the provider got the real secret
    last = [x for x in S["srv"].log if x["path"] == "/token"][-1]
    assert "client_secret=" + CS_FAKE in last["body"], last
    # the API host gets the real token
    code, raw = curl("https://%s/user" % API, "-H", "Authorization: Bearer FAKE_ACCESS_TOKEN")
    assert code == 200 and b"octocat" in raw, raw
    got = [x for x in S["srv"].log if x["path"] == "/user"][-1]["headers"]["Authorization"]
    assert got == "Bearer " + S["srv"].issued[-1], got
    # an API echo of the real token comes back as the placeholder (A5 redactor)
    code, raw = curl("https://%s/echo-auth" % API, "-H", "Authorization: Bearer FAKE_ACCESS_TOKEN")
    assert code == 200 and b"Bearer FAKE_ACCESS_TOKEN" in raw, raw
    r = S["e"].cli("--json", "oauth", "ls")
    f = json.loads(r.stdout)["bindings"][0]
    assert f["state"] == "valid" and f["exchanges"] >= 1 and f["expires_at"] > time.time(), f


def pkce():
    v = secrets.token_urlsafe(40)
    c = base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()
    return v, c


def test_pkce_and_refresh_rotation():
    s = session()
    v, c = pkce()
    r = seen(s.get("https://%s/authorize" % AUTH, params={
        "client_id": "cid", "code_challenge": c, "code_challenge_method": "S256"}))
    code = r.json()["code"]
    # a wrong verifier is refused by the provider (and forwarded as it is)
    r = seen(s.post("https://%s/token" % AUTH, data={
        "grant_type": "authorization_code", "code": code, "code_verifier": "wrong",
        "client_id": "cid", "client_secret": "FAKE_CLIENT_SECRET"}))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    r = seen(s.get("https://%s/authorize" % AUTH, params={
        "client_id": "cid", "code_challenge": c, "code_challenge_method": "S256"}))
    code = r.json()["code"]
    r = seen(s.post("https://%s/token" % AUTH, data={
        "grant_type": "authorization_code", "code": code, "code_verifier": v,
        "client_id": "cid", "client_secret": "FAKE_CLIENT_SECRET"}))
    assert r.status_code == 200, r.text
    j = r.json()
    assert j == {"access_token": "FAKE_ACCESS_TOKEN", "refresh_token": "FAKE_REFRESH_TOKEN",
                 "token_type": "bearer", "expires_in": 3600}, j
    hdr = {"Authorization": "Bearer FAKE_ACCESS_TOKEN"}
    assert seen(s.get("https://%s/user" % API, headers=hdr)).status_code == 200
    # Three refreshes in a row: each rotates the refresh token; the provider
    # kills the whole chain if an old one is ever reused, so each one working
    # proves the host kept the newest (and the new access token is used).
    for i in range(3):
        before = len(S["srv"].dead_refresh)
        r = seen(s.post("https://%s/token" % AUTH, data={
            "grant_type": "refresh_token", "refresh_token": "FAKE_REFRESH_TOKEN",
            "client_id": "cid", "client_secret": "FAKE_CLIENT_SECRET"}))
        assert r.status_code == 200, (i, r.text)
        assert r.json()["refresh_token"] == "FAKE_REFRESH_TOKEN", r.text
        assert len(S["srv"].dead_refresh) == before + 1
        r = seen(s.get("https://%s/user" % API, headers=hdr))
        assert r.status_code == 200, (i, r.text)
    # the refresh requests carried the real, current refresh token
    sent = [x["body"] for x in S["srv"].log if "grant_type=refresh_token" in x["body"]]
    assert len(sent) == 3 and all("FAKE_REFRESH_TOKEN" not in b for b in sent), sent


def test_json_and_form_and_escaped_answers():
    e = S["e"]
    script("fakejson", "/token-json", fmt="json")
    script("fakeform", "/token-form")
    script("fakeslash", "/token-slash")
    for name in ("FJSON", "FFORM", "FSLASH"):
        pass
    e.cli("oauth", "add", "FJSON", "--script", "fakejson")
    e.cli("oauth", "add", "FFORM", "--script", "fakeform")
    e.cli("oauth", "add", "FSLASH", "--script", "fakeslash")
    e.secret("FJSON_CLIENT_SECRET", CS_FAKE)
    e.secret("FFORM_CLIENT_SECRET", CS_FAKE)
    e.secret("FSLASH_CLIENT_SECRET", CS_FAKE)
    s = session()
    r = seen(s.post("https://%s/token-json" % AUTH, json={
        "grant_type": "client_credentials", "client_id": "cid",
        "client_secret": "FJSON_CLIENT_SECRET"}))
    assert r.status_code == 200 and r.json()["access_token"] == "FJSON_ACCESS_TOKEN", r.text
    r = seen(s.post("https://%s/token-form" % AUTH, data={
        "grant_type": "client_credentials", "client_id": "cid",
        "client_secret": "FFORM_CLIENT_SECRET"}))
    assert r.status_code == 200 and "access_token=FFORM_ACCESS_TOKEN" in r.text, r.text
    v, c = pkce()
    code = seen(s.get("https://%s/authorize" % AUTH, params={
        "client_id": "cid", "code_challenge": c, "code_challenge_method": "S256"})).json()["code"]
    r = seen(s.post("https://%s/token-slash" % AUTH, data={
        "grant_type": "authorization_code", "code": code, "code_verifier": v,
        "client_id": "cid", "client_secret": "FSLASH_CLIENT_SECRET"}))
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] == "FSLASH_ACCESS_TOKEN", r.text
    assert r.json()["refresh_token"] == "FSLASH_REFRESH_TOKEN", r.text
    r = seen(s.get("https://%s/user" % API, headers={"Authorization": "Bearer FSLASH_ACCESS_TOKEN"}))
    assert r.status_code == 200, r.text


def test_echoed_client_secret_scrubbed():
    e = S["e"]
    script("fakeecho", "/token-echo")
    e.cli("oauth", "add", "FECHO", "--script", "fakeecho")
    e.secret("FECHO_CLIENT_SECRET", CS_FAKE)
    code, raw = curl("https://%s/token-echo" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid", "-d", "client_secret=FECHO_CLIENT_SECRET")
    assert code == 200, raw
    j = json.loads(body_of(raw))
    assert j["debug_client_secret"] == "FECHO_CLIENT_SECRET", j
    # an error answer (no token) is scrubbed too
    code, raw = curl("https://%s/token-echo" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid2", "-d", "client_secret=FECHO_CLIENT_SECRET")
    assert code == 401 and b"FECHO_CLIENT_SECRET" in raw, raw


def test_bad_scripts_502_daemon_survives():
    e = S["e"]
    for kind in ("loop", "alloc", "error", "retry"):
        name = "bad" + kind
        script(name, "/token-" + kind, parse=kind)
        bname = "BAD" + kind.upper()
        e.cli("oauth", "add", bname, "--script", name)
        e.secret(bname + "_CLIENT_SECRET", CS_FAKE)
        t0 = time.time()
        code, raw = curl("https://%s/token-%s" % (AUTH, kind), "-d",
                         "grant_type=client_credentials", "-d", "client_id=cid", "-d",
                         "client_secret=%s_CLIENT_SECRET" % bname)
        took = time.time() - t0
        assert code == 502, (kind, raw)
        assert b"X-Nilbox-Reason: oauth-script-error" in raw, (kind, raw)
        assert ("oauth script %s" % name).encode() in raw, (kind, raw)
        want = {"loop": b"instruction budget", "alloc": b"memory limit",
                "error": b"runtime error at " + name.encode(), "retry": b"instruction budget"}
        assert want[kind] in raw, (kind, raw)
        assert took < 10, took
        # the real token the provider issued did not come through
        assert S["srv"].issued[-1].encode() not in raw
    # the daemon carries on: a good exchange and the API still work
    code, raw = curl("https://%s/token" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid", "-d", "client_secret=FAKE_CLIENT_SECRET")
    assert code == 200, raw
    code, raw = curl("https://%s/user" % API, "-H", "Authorization: Bearer FAKE_ACCESS_TOKEN")
    assert code == 200, raw
    r = e.cli("oauth", "test", "BADLOOP", check=False)
    assert r.returncode == 1 and "instruction budget exceeded" in r.stdout, r
    r = e.cli("--json", "oauth", "test", "BADALLOC", check=False)
    j = json.loads(r.stdout)
    assert not j["ok"] and "memory limit" in j["error"], j
    r = e.cli("oauth", "test", "FAKE")
    assert "access token (19 bytes)" in r.stdout, r.stdout
    # audited: the failures name binding and script, the exchanges count swaps
    rows = e.audit("refusal")
    bad = [x for x in rows if (x.get("detail") or {}).get("reason") == "oauth-script-error"]
    assert {x["detail"]["script"] for x in bad} >= {"badloop", "badalloc", "baderror"}, rows
    rows = e.audit("inject")
    ok = [x for x in rows if (x.get("detail") or {}).get("oauth") == "FAKE"]
    assert ok and ok[0]["detail"]["placement"] == "token-request", rows
    assert ok[0]["detail"]["swapped"] == 1, ok


def test_cross_binding_isolation():
    e = S["e"]
    script("other", "/token-other")
    e.cli("oauth", "add", "OTHER", "--script", "other")
    # OTHER's placeholder sent to FAKE's endpoint: not FAKE's to swap, so it
    # goes out as the harmless name and the provider refuses it.
    code, raw = curl("https://%s/token" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid2", "-d", "client_secret=OTHER_CLIENT_SECRET")
    assert code == 401, raw
    last = [x for x in S["srv"].log if x["path"] == "/token"][-1]
    assert "client_secret=OTHER_CLIENT_SECRET" in last["body"], last
    # FAKE's placeholder anywhere but its token endpoint stays a placeholder
    code, raw = curl("https://%s/token-other" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid", "-d", "client_secret=FAKE_CLIENT_SECRET")
    assert code == 401, raw
    code, raw = curl("https://%s/echo-auth" % AUTH, "-d", "client_secret=FAKE_CLIENT_SECRET")
    last = S["srv"].log[-1]
    assert "FAKE_CLIENT_SECRET" in last["body"] and CS_FAKE not in last["body"], last
    # OTHER's own exchange uses OTHER's secret
    code, raw = curl("https://%s/token-other" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid2", "-d", "client_secret=OTHER_CLIENT_SECRET")
    assert code == 200 and b"OTHER_ACCESS_TOKEN" in raw, raw


def test_restart_keeps_bindings_and_tokens():
    e = S["e"]
    S["px"].stop()
    rc = e.d.terminate(timeout=20)
    assert rc == 0, e.d.stderr()[-3000:]
    e.d.start("--key-file", os.path.join(e.tmp, "master.key"))
    e.wait_open()
    S["px"] = e.proxy(extra_resolve=["%s:443:127.0.0.1:%d" % (h, S["srv"].port)
                                     for h in (AUTH, API)])
    r = e.cli("--json", "oauth", "ls")
    names = [x["name"] for x in json.loads(r.stdout)["bindings"]]
    assert "FAKE" in names and "OTHER" in names, names
    # the access token sealed before the restart still works
    code, raw = curl("https://%s/user" % API, "-H", "Authorization: Bearer FAKE_ACCESS_TOKEN")
    assert code == 200, raw
    code, raw = curl("https://%s/token" % AUTH, "-d", "grant_type=client_credentials",
                     "-d", "client_id=cid", "-d", "client_secret=FAKE_CLIENT_SECRET")
    assert code == 200 and b"FAKE_ACCESS_TOKEN" in raw, raw


def test_guest_never_saw_a_real_value():
    real = [t.encode() for t in S["srv"].issued] + [CS_FAKE.encode(), CS_OTHER.encode()]
    assert len(S["srv"].issued) >= 10, S["srv"].issued
    blob = b"\n".join(SEEN)
    for v in real:
        assert v not in blob, v
        # nor their JSON-escaped form
        assert v.replace(b"/", b"\\/") not in blob, v
    # nor in the daemon's files, logs, audit rows (values are sealed)
    for path, data in S["e"].all_state_bytes():
        for v in real:
            assert v not in data, (path, v)
    rows = S["e"].audit()
    assert all(v.decode() not in json.dumps(rows) for v in real)
    S["e"].stop_clean()


TESTS = [test_add_ls, test_before_first_exchange, test_client_credentials,
         test_pkce_and_refresh_rotation, test_json_and_form_and_escaped_answers,
         test_echoed_client_secret_scrubbed, test_bad_scripts_502_daemon_survives,
         test_cross_binding_isolation, test_restart_keeps_bindings_and_tokens,
         test_guest_never_saw_a_real_value]

if __name__ == "__main__":
    try:
        run_suite(setup, TESTS)
    finally:
        if "srv" in S:
            S["srv"].stop()
