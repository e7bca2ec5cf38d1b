#!/usr/bin/python3
"""The egress proxy with real clients: `nilbox proxy` (the daemon's engine)
in front of a fake HTTPS upstream with its own CA. curl, Python requests and
httpx, Node fetch with an undici ProxyAgent; keep-alive on both sides,
chunked uploads, SSE events arriving as sent, WebSocket echo,
100-continue, 100 MiB bodies both ways, plain-HTTP absolute-form requests,
raw tunnels on other ports, and the prompt flow (a destination no rule
covers waits for an answer given with `nilbox prompts answer`)."""
import hashlib
import json
import os
import socket
import subprocess
import threading
import time

from proxy_env import ProxyEnv, run_suite, wait_store_open, with_auth

SECRET = "sk-live-REAL-7c1e9a2b44d0f3e5"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")

E = None  # one environment for the whole file (daemon start + CA once)


def setup():
    global E
    E = ProxyEnv().__enter__()
    E.secret("OPENAI_API_KEY", SECRET)
    E.bind("OPENAI_API_KEY", "api.test")
    for n in ("api.test", "sse.test", "ws.test"):
        E.rule("allow", n + ":443")
    E.rule("allow", "plain.test:80")
    E.rule("allow", "api.test:7000")  # raw tunnel port (not HTTP) of a bound host: refused
    E.rule("allow", "raw.test:7000")  # raw tunnel port of a host no binding names
    E.rule("allow", "unresolvable.test:7001")  # resolved for real: fails or takes a while
    E.px = E.proxy(vm="a", extra_resolve=["api.test:7000:127.0.0.1:%d" % E.plain_port,
                                          "raw.test:7000:127.0.0.1:%d" % E.plain_port])


def last_received(target):
    rows = [r for r in E.received() if r["target"] == target]
    assert rows, "upstream never saw %s" % target
    return rows[-1]


def header(row, name):
    return [v for k, v in row["headers"] if k.lower() == name.lower()]


def test_curl_inject_and_keepalive():
    args = ["-v", "-H", "Authorization: Bearer OPENAI_API_KEY"]
    cmd = ["curl", "-sS", "-x", E.px.url, "--cacert", E.ca_pem, *args,
           "https://api.test/ka/1", "https://api.test/ka/2", "https://api.test/ka/3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('"ok": true') == 3, r.stdout
    assert r.stderr.count("Re-using existing connection") == 2, "client keep-alive"
    for i in (1, 2, 3):
        row = last_received("/ka/%d" % i)
        assert header(row, "Authorization") == ["Bearer " + SECRET], row
    st, _, body = E.d.unix("GET", "/v1/proxies")
    stats = json.loads(body)["stats"]
    assert stats["pool_reused"] >= 2, stats  # upstream keep-alive


def test_python_requests():
    import requests
    proxies = {"https": E.px.url, "http": E.px.url}
    with requests.Session() as s:
        for i in range(3):
            r = s.get("https://api.test/echo/requests%d" % i, proxies=proxies, verify=E.ca_pem,
                      headers={"Authorization": "Bearer OPENAI_API_KEY"}, timeout=20)
            assert r.status_code == 200
            assert SECRET not in r.text and "Bearer OPENAI_API_KEY" in r.text  # A5
        r = s.post("https://api.test/upload", proxies=proxies, verify=E.ca_pem,
                   data=b"x" * 300000, timeout=20)
        assert r.json()["len"] == 300000
    assert header(last_received("/echo/requests2"), "Authorization") == ["Bearer " + SECRET]


def test_python_httpx():
    import httpx
    with httpx.Client(proxies=E.px.url, verify=E.ca_pem, timeout=20) as c:
        for i in range(2):
            r = c.get("https://api.test/echo/httpx%d" % i,
                      headers={"Authorization": "Bearer OPENAI_API_KEY"})
            assert r.status_code == 200 and SECRET not in r.text
        # a streamed (chunked) upload
        def gen():
            for _ in range(20):
                yield b"y" * 10000
        r = c.post("https://api.test/upload", content=gen())
        assert r.json()["len"] == 200000, r.text
    row = last_received("/echo/httpx1")
    assert header(row, "Authorization") == ["Bearer " + SECRET]


def ensure_undici():
    # Installed from the lockfile by scripts/install-deps.sh: tests never fetch.
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "undici")), (
        "undici is not installed in %s: run scripts/install-deps.sh" % NODE_DIR)


def test_node_fetch_undici():
    ensure_undici()
    r = subprocess.run(["node", os.path.join(NODE_DIR, "fetch_proxy.mjs"), E.px.url, E.ca_pem,
                        "https://api.test/echo/node", "authorization", "Bearer OPENAI_API_KEY"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [o["status"] for o in out] == [200, 200], out
    assert all(SECRET not in o["body"] for o in out)
    assert header(last_received("/echo/node"), "authorization") == ["Bearer " + SECRET]


def test_chunked_upload_and_download():
    blob = os.urandom(3 * 1024 * 1024 + 17)
    path = os.path.join(E.tmp, "blob")
    with open(path, "wb") as f:
        f.write(blob)
    for extra in ([], ["-H", "Expect:"]):
        code, body, r = E.curl(E.px, "https://api.test/upload", "-H",
                               "Transfer-Encoding: chunked", *extra, "--data-binary", "@" + path)
        assert code == 200, r.stderr
        j = json.loads(body)
        assert j["len"] == len(blob) and j["sha256"] == hashlib.sha256(blob).hexdigest(), j
    code, body, _ = E.curl(E.px, "https://api.test/chunked?n=50")
    assert code == 200 and body.count(b"piece ") == 50


def test_sse_events_arrive_as_sent():
    import requests
    delay = 0.5
    r = requests.get("https://sse.test/sse?n=4&delay=%s" % delay,
                     proxies={"https": E.px.url}, verify=E.ca_pem, stream=True, timeout=20)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    arrivals = []
    for line in r.iter_lines(chunk_size=1):
        if line.startswith(b"data: "):
            arrivals.append((time.time(), json.loads(line[6:])))
    assert [a[1]["i"] for a in arrivals] == [0, 1, 2, 3]
    # No buffering: each event reached the client before the upstream had
    # even sent the next one (delay apart).
    for k in range(3):
        assert arrivals[k][0] < arrivals[k + 1][1]["t"], (k, arrivals)


def test_websocket_echo():
    import websocket
    ws = websocket.create_connection("wss://ws.test/ws", http_proxy_host="127.0.0.1",
                                     http_proxy_port=E.px.port, proxy_type="http",
                                     http_proxy_auth=("nilbox", E.px.token),
                                     sslopt={"ca_certs": E.ca_pem}, timeout=10)
    try:
        for msg in ("hello", "x" * 70000):
            ws.send(msg)
            assert ws.recv() == msg
        ws.send_binary(b"\x00\x01\x02")
        assert ws.recv() == b"\x00\x01\x02"
    finally:
        ws.close()


def test_expect_100_continue():
    body = b"z" * 2048
    path = os.path.join(E.tmp, "small")
    with open(path, "wb") as f:
        f.write(body)
    code, out, r = E.curl(E.px, "https://api.test/upload", "-H", "Expect: 100-continue",
                          "--data-binary", "@" + path, "-v")
    assert code == 200 and json.loads(out)["len"] == len(body), r.stderr
    assert b"HTTP/1.1 100 Continue" in r.stderr
    # An upstream that refuses the expectation: the client gets the 417
    # instead of sending the body.
    code, out, r = E.curl(E.px, "https://api.test/no-continue", "-H", "Expect: 100-continue",
                          "--data-binary", "@" + path)
    assert code == 417, (code, r.stderr)


def test_100_mib_both_ways():
    size = 100 * 1024 * 1024
    code, out, r = E.curl(E.px, "https://api.test/big?size=%d" % size, timeout=120)
    assert code == 200 and len(out) == size, (code, len(out), r.stderr)
    path = os.path.join(E.tmp, "big")
    with open(path, "wb") as f:
        chunk = os.urandom(1 << 20)
        h = hashlib.sha256()
        for _ in range(100):
            f.write(chunk)
            h.update(chunk)
    code, out, r = E.curl(E.px, "https://api.test/upload", "-H", "Expect:", "--data-binary",
                          "@" + path, timeout=120)
    os.unlink(path)
    assert code == 200, r.stderr
    j = json.loads(out)
    assert j["len"] == size and j["sha256"] == h.hexdigest(), j


def test_plain_http_absolute_form():
    code, out, r = E.curl(E.px, "http://plain.test/echo?x=1",
                          "-H", "Authorization: Bearer OPENAI_API_KEY")
    assert code == 200, r.stderr
    row = last_received("/echo?x=1")
    # origin-form upstream, and no secret over cleartext (the binding is TLS-only)
    assert header(row, "Authorization") == ["Bearer OPENAI_API_KEY"], row
    # keep-alive on the plain proxy connection, two hosts in a row
    cmd = ["curl", "-sS", "-v", "-x", E.px.url, "http://plain.test/a", "http://plain.test/b"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr.count("Re-using existing connection") == 1, r.stderr


def test_raw_tunnel_other_port():
    # CONNECT to a port that is not HTTP: a byte tunnel after the gate, no
    # inspection (and so no injection: the placeholder goes as is).
    s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
    try:
        s.sendall(with_auth(E.px, b"CONNECT raw.test:7000 HTTP/1.1\r\nHost: raw.test:7000\r\n\r\n"))
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        s.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer OPENAI_API_KEY\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        assert b'"path": "/raw"' in data, data
    finally:
        s.close()
    assert header(last_received("/raw"), "Authorization") == ["Bearer OPENAI_API_KEY"]


def test_A5_no_raw_tunnel_to_a_bound_host():
    # A value injected into a request to api.test may be stored there and
    # served back on any connection to it; a raw tunnel cannot be scanned
    # (it may be TLS end to end), so none is opened to a bound host: 403
    # with the reason and the command that makes the port inspected.
    before = len([r for r in E.received() if r["target"] == "/raw-bound"])
    s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
    try:
        s.sendall(with_auth(E.px, b"CONNECT api.test:7000 HTTP/1.1\r\nHost: api.test:7000\r\n\r\n"))
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    assert data.startswith(b"HTTP/1.1 403"), data
    assert b"X-Nilbox-Reason: raw-tunnel-bound-host" in data, data
    assert b"--port 7000 --http" in data, data
    time.sleep(0.3)
    assert len([r for r in E.received() if r["target"] == "/raw-bound"]) == before
    rows = E.audit("refusal")
    assert any(r.get("detail", {}).get("reason") == "raw-tunnel-bound-host" for r in rows), rows


def test_prompt_allow_once_then_again():
    out = {}

    def get(k="r"):
        out[k] = E.curl(E.px, "https://other.test/prompted", timeout=20)
    # Two concurrent connections to the same destination wait on ONE prompt.
    ts = [threading.Thread(target=get, args=(k,)) for k in ("r", "r2")]
    for t in ts:
        t.start()
    prompts = E.wait_for(lambda: [p for p in json.loads(E.cli("--json", "prompts").stdout)
                                  ["prompts"] if p["waiters"] == 2])
    assert len(json.loads(E.cli("--json", "prompts").stdout)["prompts"]) == 1
    p = prompts[0]
    assert p["host"] == "other.test" and p["port"] == 443 and p["vm"] == "a", p
    E.cli("prompts", "answer", str(p["id"]), "allow-once")
    for t in ts:
        t.join(30)
    for k in ("r", "r2"):
        code, body, r = out[k]
        assert code == 200 and b'"/prompted"' in body, (code, body, r.stderr)
    # once: the next connection asks again, and deny-once refuses it with a 403
    t = threading.Thread(target=get)
    t.start()
    p = E.wait_for(lambda: json.loads(E.cli("--json", "prompts").stdout)["prompts"])[0]
    E.cli("prompts", "answer", str(p["id"]), "deny-once")
    t.join(30)
    code, body, r = out["r"]
    assert code == 403 and json.loads(body)["reason"], (code, body)


def test_listener_closes_with_the_command():
    px = E.proxy(vm="b")
    port = px.port
    px.stop()
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the listener outlived `nilbox proxy`")
    st, _, body = E.d.unix("GET", "/v1/proxies")
    assert all(p["vm"] != "b" for p in json.loads(body)["proxies"])


def test_test_options_need_test_mode():
    # A daemon without NILBOX_TEST_MODE refuses --upstream-ca / --resolve.
    from daemon_harness import Daemon
    with Daemon() as d:
        d.start("--key-file", os.path.join(d.tmp, "k"))
        wait_store_open(d)
        r = d.cli("proxy", "--listen", "127.0.0.1:0", "--vm", "a", "--resolve",
                  "api.test:127.0.0.1", timeout=20)
        assert r.returncode == 5 and "NILBOX_TEST_MODE" in r.stderr, r
        r = d.cli("proxy", "--listen", "0.0.0.0:0", "--vm", "a", timeout=20)
        assert r.returncode != 0 and "loopback" in r.stderr, r


def test_eof_delimited_and_redirect_responses():
    # An upstream that ends its body by closing: re-framed as chunked for
    # the HTTP/1.1 client, complete.
    code, body, r = E.curl(E.px, "https://api.test/close")
    assert code == 200 and body == b"until close", (code, body, r.stderr)
    code, body, r = E.curl(E.px, "https://api.test/redirect?to=/elsewhere", "-D", "-")
    assert code == 302 and b"Location: /elsewhere" in r.stdout


def test_hostile_clients_do_not_hurt():
    addr = ("127.0.0.1", E.px.port)

    def raw(data, read=True):
        s = socket.create_connection(addr, timeout=5)
        try:
            s.sendall(with_auth(E.px, data))
            if read:
                s.settimeout(2)
                try:
                    return s.recv(65536)
                except (socket.timeout, ConnectionError):
                    return b""
        finally:
            s.close()
        return b""
    assert raw(os.urandom(3000)).startswith(b"HTTP/1.1 400")
    assert raw(b"GET /not-a-proxy HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"CONNECT api.test HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 400")
    raw(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n", read=False)
    raw(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n\x16\x03\x01\x00\x05hello")
    raw(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n" + os.urandom(5000))
    # Abort in the middle of a big upload and of a big download.
    s = E.tunnel("api.test")
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: api.test\r\nContent-Length: 50000000\r\n\r\n")
    s.sendall(b"a" * 1000000)
    s.close()
    s = E.tunnel("api.test")
    s.sendall(b"GET /big?size=50000000 HTTP/1.1\r\nHost: api.test\r\n\r\n")
    s.recv(100000)
    s.close()
    # Clients that leave while their upstream is still being resolved.
    raw(b"CONNECT unresolvable.test:7001 HTTP/1.1\r\nHost: unresolvable.test:7001\r\n\r\n",
        read=False)
    raw(b"GET http://unresolvable.test:7001/x HTTP/1.1\r\nHost: unresolvable.test:7001\r\n\r\n",
        read=False)
    # Many connections at once, half of them dropped at once.
    socks = []
    for i in range(150):
        c = socket.create_connection(addr, timeout=5)
        c.sendall(with_auth(E.px, b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n"))
        socks.append(c)
    for c in socks[::2]:
        c.close()
    for c in socks[1::2]:
        c.close()
    # Still serving.
    code, body, _ = E.curl(E.px, "https://api.test/still-alive")
    assert code == 200, code
    st, _, _ = E.d.unix("GET", "/v1/status")
    assert st == 200


def test_daemon_exits_cleanly():
    E.stop_clean()


if __name__ == "__main__":
    run_suite(setup, [test_curl_inject_and_keepalive, test_python_requests, test_python_httpx,
                      test_node_fetch_undici, test_chunked_upload_and_download,
                      test_sse_events_arrive_as_sent, test_websocket_echo,
                      test_expect_100_continue, test_100_mib_both_ways,
                      test_plain_http_absolute_form, test_raw_tunnel_other_port,
                      test_A5_no_raw_tunnel_to_a_bound_host, test_prompt_allow_once_then_again,
                      test_listener_closes_with_the_command, test_test_options_need_test_mode,
                      test_eof_delimited_and_redirect_responses, test_hostile_clients_do_not_hurt,
                      test_daemon_exits_cleanly])
