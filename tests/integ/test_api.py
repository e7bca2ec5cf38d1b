#!/usr/bin/python3
"""The API over the Unix socket (curl, http.client) and over TCP (requests,
websocket-client, raw sockets): routes, auth, Host/Origin checks, security
headers, error shapes, bad input, smuggling-shaped requests (A15), DNS
rebinding (A21), and the WebSocket event stream. After every kind of bad
input the daemon must keep serving."""
import json
import socket
import subprocess

import requests
import websocket

from daemon_harness import Daemon, raw_exchange, run_tests, status_of

D = None  # one daemon for the read-only tests


def tcp(method, path, token=True, headers=None, **kw):
    api = D.api()
    h = {}
    if token:
        h["Authorization"] = "Bearer " + (api["token"] if token is True else token)
    h.update(headers or {})
    return requests.request(method, "http://127.0.0.1:%d%s" % (api["port"], path), headers=h,
                            timeout=10, **kw)


def assert_serving():
    st, _, body = D.unix("GET", "/v1/status")
    assert st == 200, (st, body)
    assert tcp("GET", "/v1/status").status_code == 200


def assert_error(r, status, code):
    assert r.status_code == status, (r.status_code, r.text)
    j = r.json()
    assert j["error"] == code, j
    assert len(j["message"]) > 10, j


def test_status_over_unix_with_curl():
    out = subprocess.run(["curl", "-sS", "-i", "--unix-socket", D.sock,
                          "http://localhost/v1/status"], capture_output=True,
                         timeout=10).stdout.decode()
    head, body = out.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200"), head
    assert "application/json" in head
    st = json.loads(body)
    assert st["pid"] == D.proc.pid and st["home"] == D.home
    assert st["version"] and st["uptime_s"] >= 0 and st["socket"] == D.sock
    assert st["api_url"] == D.api()["url"]
    assert {"event_clients", "events", "requests"} <= set(st["counts"])


def test_security_headers():
    for hdrs in (D.unix("GET", "/v1/status")[1],
                 {k.lower(): v for k, v in tcp("GET", "/v1/status").headers.items()},
                 {k.lower(): v for k, v in tcp("GET", "/v1/status", token=False).headers.items()}):
        csp = hdrs["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, csp
        assert hdrs["x-content-type-options"] == "nosniff"
        assert hdrs["x-frame-options"] == "DENY"
        assert hdrs["referrer-policy"] == "no-referrer"
        assert hdrs["cache-control"] == "no-store"


def test_token_required_over_tcp():
    assert_error(tcp("GET", "/v1/status", token=False), 401, "unauthorized")
    assert_error(tcp("GET", "/v1/status", token="0" * 64), 401, "unauthorized")
    assert_error(tcp("GET", "/v1/status", token="short"), 401, "unauthorized")
    assert_error(tcp("GET", "/v1/status", token=D.api()["token"] + "00"), 401, "unauthorized")
    # Routes cannot be probed without the token: unknown paths also say 401.
    assert_error(tcp("GET", "/v1/nope", token=False), 401, "unauthorized")
    r = tcp("GET", "/v1/status")
    assert r.status_code == 200 and r.json()["pid"] == D.proc.pid
    assert_serving()


def test_host_checks_dns_rebinding():
    port = D.api()["port"]
    for host in ("evil.example:%d" % port, "127.0.0.1:%d" % (port + 1), "127.0.0.1",
                 "localhost", "127.0.0.2:%d" % port, "[::1]:%d" % port):
        assert_error(tcp("GET", "/v1/status", headers={"Host": host}), 403, "forbidden-host")
    assert tcp("GET", "/v1/status", headers={"Host": "localhost:%d" % port}).status_code == 200
    # Also without a token: the Host check comes first.
    assert_error(tcp("GET", "/v1/status", token=False,
                     headers={"Host": "evil.example:%d" % port}), 403, "forbidden-host")
    assert_serving()


def test_origin_checks():
    port = D.api()["port"]
    for origin in ("http://evil.example", "http://evil.example:%d" % port, "null",
                   "https://127.0.0.1:%d" % port, "http://127.0.0.1:%d" % (port + 1),
                   "http://localhost:%d" % port):  # Host says 127.0.0.1: not the same origin
        assert_error(tcp("GET", "/v1/status", headers={"Origin": origin}), 403,
                     "forbidden-origin")
    r = tcp("GET", "/v1/status", headers={"Origin": "http://127.0.0.1:%d" % port})
    assert r.status_code == 200
    assert_error(tcp("GET", "/v1/status", headers={"Sec-Fetch-Site": "cross-site"}), 403,
                 "forbidden-origin")
    # The Unix socket takes no Origin at all, and only local Host names.
    st, _, body = D.unix("GET", "/v1/status", headers={"Origin": "http://127.0.0.1:%d" % port})
    assert st == 403 and json.loads(body)["error"] == "forbidden-origin"
    st, _, body = D.unix("GET", "/v1/status", headers={"Host": "evil.example"})
    assert st == 403 and json.loads(body)["error"] == "forbidden-host"
    assert_serving()


def test_not_found_and_method():
    st, _, body = D.unix("GET", "/v1/nope")
    assert st == 404 and json.loads(body)["error"] == "not-found"
    st, hdrs, body = D.unix("DELETE", "/v1/status")
    assert st == 405 and json.loads(body)["error"] == "method-not-allowed"
    assert hdrs["allow"] == "GET"
    assert_error(tcp("PUT", "/v1/status"), 405, "method-not-allowed")


def test_bad_bodies():
    # All aimed at the stop route: if any got through, the daemon would stop.
    j = {"Content-Type": "application/json"}
    st, _, body = D.unix("POST", "/v1/daemon/stop", body=b'{"a":', headers=j)
    assert st == 400 and json.loads(body)["error"] == "bad-json", body
    st, _, body = D.unix("POST", "/v1/daemon/stop", body=b'{"a":1,"a":2}', headers=j)
    assert st == 400 and json.loads(body)["error"] == "bad-json", body
    st, _, body = D.unix("POST", "/v1/daemon/stop", body=b"[1,2]", headers=j)
    assert st == 422 and json.loads(body)["error"] == "invalid", body
    st, _, body = D.unix("POST", "/v1/daemon/stop", body=b"a=b",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert st == 415 and json.loads(body)["error"] == "unsupported-media-type", body
    st, _, body = D.unix("POST", "/v1/daemon/stop", body=b"{}", headers={})
    assert st == 415, body
    assert_error(tcp("POST", "/v1/daemon/stop", data=b"[" * 40 + b"]" * 40, headers=j), 400,
                 "bad-json")  # nesting cap
    assert_error(tcp("POST", "/v1/daemon/stop", data=b"x" * (2 << 20), headers=j), 413,
                 "body-too-large")
    assert_serving()


def test_oversized_over_unix_raw():
    req = (b"POST /v1/daemon/stop HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json"
           b"\r\nContent-Length: %d\r\n\r\n" % (50 << 20))
    out = raw_exchange(D.sock, req + b"{" * 1000, family=socket.AF_UNIX)
    assert status_of(out) == 413, out[:200]
    assert_serving()


SMUGGLING = {
    "cl_and_te": b"POST /v1/daemon/stop HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n",
    "double_cl": b"POST /v1/daemon/stop HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n"
                 b"Content-Length: 10\r\n\r\n{}",
    "obs_fold": b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bare_lf": b"GET /v1/status HTTP/1.1\nHost: {host}\n\n",
    "space_before_colon": b"GET /v1/status HTTP/1.1\r\nHost : {host}\r\n\r\n",
    "double_host": b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n",
    "te_not_chunked": b"POST /v1/daemon/stop HTTP/1.1\r\nHost: {host}\r\n"
                      b"Transfer-Encoding: gzip\r\n\r\n",
    "bad_chunk": b"POST /v1/daemon/stop HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                 b"application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "nul_in_header": b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nX-A: a\x00b\r\n\r\n",
    "huge_header": b"GET /v1/status HTTP/1.1\r\nHost: {host}\r\nX-A: " + b"a" * 70000 +
                   b"\r\n\r\n",
    "http10_no_host": b"GET /v1/status HTTP/1.0\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n",
    "endless_start_line": b"GET /" + b"a" * 20000,
}


def test_smuggling_shapes_tcp():
    api = D.api()
    host = ("127.0.0.1:%d" % api["port"]).encode()
    for name, tmpl in SMUGGLING.items():
        req = tmpl.replace(b"{host}", host)
        # Authorised, so a 4xx comes from the parser, not the token check.
        req = req.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer " +
                          api["token"].encode() + b"\r\n\r\n", 1) if b"\r\n\r\n" in req else req
        out = raw_exchange(("127.0.0.1", api["port"]), req)
        st = status_of(out)
        assert 400 <= st < 500, (name, out[:300])
        assert out.count(b"HTTP/1.1 ") == 1, (name, "a second response was smuggled", out)
        assert_serving()


def test_smuggling_shapes_unix():
    for name, tmpl in SMUGGLING.items():
        out = raw_exchange(D.sock, tmpl.replace(b"{host}", b"localhost"), family=socket.AF_UNIX)
        st = status_of(out)
        assert 400 <= st < 500, (name, out[:300])
        assert out.count(b"HTTP/1.1 ") == 1, (name, out)
    assert_serving()


def test_events_list_and_doctor():
    st, _, body = D.unix("GET", "/v1/events?since=0")
    ev = json.loads(body)
    assert st == 200 and ev["events"][0]["type"] == "daemon.started", ev
    assert ev["events"][0]["id"] == 1 and ev["events"][0]["time"].endswith("Z")
    st, _, body = D.unix("GET", "/v1/events?since=abc")
    assert st == 400
    for path, want in (("/v1/events/1", 200), ("/v1/events/%31", 200), ("/v1/events/999", 404),
                       ("/v1/events/abc", 422), ("/v1/events/1/x", 404), ("/v1/events/", 404),
                       ("/v1/events/%2F", 400), ("/v1/events/%zz", 400)):
        st, _, body = D.unix("GET", path)
        assert st == want, (path, st, body)
        if want == 200:
            assert json.loads(body)["type"] == "daemon.started"
        else:
            assert json.loads(body)["message"], body
    r = tcp("GET", "/v1/doctor")
    assert r.status_code == 200
    names = [c["name"] for c in r.json()["checks"]]
    # Modules append their own checks after "daemon" (e.g. "secrets").
    assert names[:7] == ["qemu", "kvm", "keyring", "disk", "home", "runtime", "daemon"], names
    for c in r.json()["checks"]:
        assert c["status"] in ("ok", "warn", "fail") and c["message"]
        if c["status"] != "ok":
            assert c["hint"], c


def ws_url(path):
    return "ws://127.0.0.1:%d%s" % (D.api()["port"], path)


def recv_json(ws):
    return json.loads(ws.recv())


def test_ws_events_tcp_header_token():
    ws = websocket.create_connection(ws_url("/v1/events?since=0"), timeout=10,
                                     header=["Authorization: Bearer " + D.api()["token"]])
    hello = recv_json(ws)
    assert hello["type"] == "hello" and hello["pid"] == D.proc.pid and "time" in hello
    first = recv_json(ws)
    assert first["type"] == "daemon.started" and first["id"] == 1
    ws.close()


def test_ws_query_and_subprotocol_token():
    tok = D.api()["token"]
    ws = websocket.create_connection(ws_url("/v1/events?token=" + tok), timeout=10)
    assert recv_json(ws)["type"] == "hello"
    ws.close()
    ws = websocket.create_connection(ws_url("/v1/events"), timeout=10,
                                     subprotocols=["nilbox.v1", "nilbox.token." + tok])
    assert ws.getsubprotocol() == "nilbox.v1"
    assert recv_json(ws)["type"] == "hello"
    ws.close()


def test_ws_refusals():
    port = D.api()["port"]
    cases = [
        ({}, 401),
        ({"header": ["Authorization: Bearer " + "1" * 64]}, 401),
        ({"header": ["Authorization: Bearer " + D.api()["token"]],
          "origin": "http://evil.example"}, 403),
        ({"header": ["Authorization: Bearer " + D.api()["token"]],
          "host": "evil.example:%d" % port}, 403),
    ]
    for kw, want in cases:
        try:
            websocket.create_connection(ws_url("/v1/events"), timeout=10, **kw)
            raise AssertionError("upgrade accepted: %r" % kw)
        except websocket.WebSocketBadStatusException as e:
            assert e.status_code == want, (kw, e.status_code)
    assert_serving()


def test_ws_over_unix_sees_live_event():
    s = socket.socket(socket.AF_UNIX)
    s.connect(D.sock)
    ws = websocket.create_connection("ws://localhost/v1/events", socket=s, timeout=10,
                                     suppress_origin=True)
    assert recv_json(ws)["type"] == "hello"
    st, _, _ = D.unix("GET", "/v1/status")
    st, _, body = D.unix("GET", "/v1/status")
    assert json.loads(body)["counts"]["event_clients"] >= 1
    ws.close()


def test_stop_route_ends_daemon_and_stream():
    with Daemon() as d:
        d.start()
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.sock)
        ws = websocket.create_connection("ws://localhost/v1/events", socket=s, timeout=10,
                                         suppress_origin=True)
        assert recv_json(ws)["type"] == "hello"
        st, _, body = d.unix("POST", "/v1/daemon/stop")
        assert st == 202 and json.loads(body)["stopping"] is True
        ev = recv_json(ws)
        assert ev["type"] == "daemon.stopping" and ev["reason"] == "api", ev
        try:
            ws.recv()
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            pass
        assert d.proc.wait(timeout=10) == 0, d.stderr()


def test_public_index_page():
    r = tcp("GET", "/", token=False)
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    assert_error(tcp("GET", "/", token=False, headers={"Host": "evil.example"}), 403,
                 "forbidden-host")


def test_shared_daemon_survived_and_exits_cleanly():
    assert D.proc.poll() is None, D.stderr()
    assert_serving()
    assert D.terminate() == 0, D.stderr()


def main():
    global D
    with Daemon() as d:
        D = d
        d.start()
        tests = [
            test_status_over_unix_with_curl,
            test_security_headers,
            test_token_required_over_tcp,
            test_host_checks_dns_rebinding,
            test_origin_checks,
            test_not_found_and_method,
            test_bad_bodies,
            test_oversized_over_unix_raw,
            test_smuggling_shapes_tcp,
            test_smuggling_shapes_unix,
            test_events_list_and_doctor,
            test_ws_events_tcp_header_token,
            test_ws_query_and_subprotocol_token,
            test_ws_refusals,
            test_ws_over_unix_sees_live_event,
            test_public_index_page,
            test_stop_route_ends_daemon_and_stream,
            test_shared_daemon_survived_and_exits_cleanly,
        ]
        run_tests(tests)


if __name__ == "__main__":
    main()
