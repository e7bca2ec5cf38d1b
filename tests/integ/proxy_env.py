"""A complete egress setup for proxy tests, through the real programs:

  nilboxd (test mode, key file, short prompt timeout)
  fake HTTPS upstream (fake_upstream.py, own test CA) recording what it gets
  `nilbox proxy --listen 127.0.0.1:0 --vm VM --upstream-ca ... --resolve ...`
  secrets, bindings and rules set with the nilbox CLI

    with ProxyEnv() as e:
        e.secret("OPENAI_API_KEY", "sk-real-...")
        e.bind("OPENAI_API_KEY", "api.test")
        e.rule("allow", "api.test:443")
        p = e.proxy()                 # -> Proxy: .url (with the token), .port, .token
        r = e.curl(p, "https://api.test/echo", "-H", "Authorization: Bearer OPENAI_API_KEY")
        e.received()                  # what the upstream saw (list of dicts)

Every name in *.test resolves (test-only --resolve) to the fake upstream on
127.0.0.1, which an explicit IP rule allows (A13 needs one for loopback).
Everything is cleaned up on exit, even when a test fails."""
import base64
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import NILBOX, Daemon, run_tests, status_of, wait_for  # noqa: E402
import fake_upstream  # noqa: E402



ENVS = []  # every ProxyEnv made, for run_suite


def run_suite(setup, tests):
    """setup() (which makes the suite's ProxyEnv), then the tests in order;
    every ProxyEnv is cleaned up however that ends."""
    try:
        setup()
        run_tests(tests)
    finally:
        for e in ENVS:
            e.cleanup()


def with_auth(px, data):
    """`data` (a raw request head to the proxy) with the proxy's
    Proxy-Authorization line after its request line."""
    i = data.find(b"\r\n")
    if i < 0 or not data[:1].isalpha():
        return data
    return data[:i + 2] + px.auth + data[i + 2:]


def read_all(s, timeout=6):
    """Every byte until the peer closes or goes quiet for `timeout` s; closes s."""
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except OSError:  # (timeouts, TLS and connection errors)
        pass
    s.close()
    return out


def wait_store_open(d, timeout=15, state="open"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, _, body = d.unix("GET", "/v1/keystore")
        if st == 200 and json.loads(body)["state"] == state:
            return
        time.sleep(0.05)
    raise AssertionError("the secret store did not reach '%s': %s" % (state, d.stderr()))


class Proxy:
    """A running `nilbox proxy`. `url` carries the listener's token as
    userinfo (http://nilbox:TOKEN@127.0.0.1:PORT), which curl, requests,
    httpx and undici turn into Proxy-Authorization; `bare_url` has none.
    Raw-socket tests put `auth` (a whole header line) into their heads."""

    def __init__(self, proc, port, token):
        self.proc = proc
        self.port = port
        self.token = token
        self.bare_url = "http://127.0.0.1:%d" % port
        self.url = "http://nilbox:%s@127.0.0.1:%d" % (token, port)
        self.basic = "Basic " + base64.b64encode(("nilbox:" + token).encode()).decode()
        self.auth = b"Proxy-Authorization: " + self.basic.encode() + b"\r\n"

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # end of input ends `nilbox proxy`
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ProxyEnv:
    def __init__(self, prompt_timeout_ms=3000, names=("api.test", "other.test", "evil.test",
                                                        "plain.test", "ws.test", "sse.test")):
        ENVS.append(self)
        self.d = Daemon()
        self.tmp = self.d.tmp
        self.d.env.update({"NILBOX_TEST_MODE": "1",
                           "NILBOX_PROMPT_TIMEOUT_MS": str(prompt_timeout_ms)})
        self.names = names
        self.proxies = []
        self.ups = []
        self.up_log = os.path.join(self.tmp, "upstream.jsonl")
        self.ca_pem = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    # -- setup -----------------------------------------------------------
    def start(self):
        self.up_ca, self.up_cert, self.up_key = fake_upstream.make_ca(self.tmp)
        self.tls_port = self.upstream(tls=True)
        self.plain_port = self.upstream(tls=False)
        self.d.start("--key-file", os.path.join(self.tmp, "master.key"))
        self.wait_open()
        self.ca_pem = os.path.join(self.tmp, "nilbox-ca.pem")
        r = self.d.cli("ca", "export", self.ca_pem)
        assert r.returncode == 0, r
        # The upstreams live on loopback: only an explicit IP rule admits them (A13).
        self.rule("allow", "127.0.0.1:%d" % self.tls_port)
        self.rule("allow", "127.0.0.1:%d" % self.plain_port)

    def upstream(self, tls=True, log=None):
        p, port = fake_upstream.spawn(log or self.up_log, *(
            ["--cert", self.up_cert, "--key", self.up_key] if tls else ["--plain"]))
        self.ups.append(p)
        return port

    def wait_open(self, timeout=15):
        wait_store_open(self.d, timeout)

    def cli(self, *args, input=None, check=True):
        r = self.d.cli(*args, input=input)
        if check:
            assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def secret(self, name, value):
        self.cli("secret", "set", name, input=value)

    def bind(self, name, host, *extra):
        r = self.cli("--json", "secret", "bind", name, "--host", host, *extra)
        return json.loads(r.stdout)

    def rule(self, action, target, *extra):
        r = self.cli("--json", "rule", "add", action, target, *extra)
        return json.loads(r.stdout)

    def resolve_specs(self):
        out = []
        for n in self.names:
            out.append("%s:443:127.0.0.1:%d" % (n, self.tls_port))
            out.append("%s:80:127.0.0.1:%d" % (n, self.plain_port))
        return out

    def proxy(self, vm="a", extra_resolve=()):
        args = ["proxy", "--listen", "127.0.0.1:0", "--vm", vm, "--upstream-ca", self.up_ca,
                "--resolve", ",".join(self.resolve_specs() + list(extra_resolve))]
        p = subprocess.Popen([NILBOX, *args], env=self.d.env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([p.stdout], [], [], 15)
        line = p.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            p.kill()
            raise AssertionError("nilbox proxy did not start: %r %r" % (line, p.stderr.read()))
        port = int(line.split()[2].rsplit(":", 1)[1])
        url = p.stdout.readline()
        if not url.startswith("proxy URL: http://nilbox:"):
            p.kill()
            raise AssertionError("nilbox proxy printed no proxy URL: %r" % url)
        token = url.split("http://nilbox:", 1)[1].split("@", 1)[0]
        px = Proxy(p, port, token)
        self.proxies.append(px)
        return px

    # -- clients ---------------------------------------------------------
    def tunnel(self, host, port=443, sni=None, px=None, alpn=None):
        """CONNECT through px (the first proxy) and TLS with the interception
        CA (the name checked unless sni is another one; ALPN protocols if
        given): the TLS socket."""
        px = px or self.proxies[0]
        s = socket.create_connection(("127.0.0.1", px.port), timeout=10)
        s.sendall(with_auth(px, b"CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" %
                            (host.encode(), port, host.encode(), port)))
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            if not b:
                raise ConnectionError("closed during CONNECT")
            head += b
        assert status_of(head) == 200, head
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        ctx.check_hostname = sni in (None, host)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx.wrap_socket(s, server_hostname=sni or host)

    def curl(self, px, url, *args, timeout=30):
        cmd = ["curl", "-sS", "--max-time", str(timeout), "-x", px.url, "--cacert", self.ca_pem,
               "-o", "-", "-w", "\n%{http_code}", *args, url]
        r = subprocess.run(cmd, capture_output=True, timeout=timeout + 5)
        body, _, code = r.stdout.rpartition(b"\n")
        return int(code or 0), body, r

    def received(self):
        try:
            with open(self.up_log) as f:
                return [json.loads(l) for l in f if l.endswith("\n") and l.strip()]
        except FileNotFoundError:
            return []

    def audit(self, kind=None):
        args = ["--json", "audit"]
        if kind:
            args += ["--kind", kind]
        r = self.cli(*args)
        j = json.loads(r.stdout)
        return j["rows"] if isinstance(j, dict) else j

    def events(self, prefix=""):
        st, _, body = self.d.unix("GET", "/v1/events?since=0")
        return [e for e in json.loads(body)["events"] if e["type"].startswith(prefix)]

    wait_for = staticmethod(wait_for)

    def all_state_bytes(self):
        """Every file under NILBOX_HOME, the daemon's log and stderr (A23)."""
        out = []
        for base, _, files in os.walk(self.d.home):
            for f in files:
                try:
                    with open(os.path.join(base, f), "rb") as fh:
                        out.append((os.path.join(base, f), fh.read()))
                except OSError:
                    pass
        out.append(("stderr", self.d.stderr().encode()))
        return out

    def stop_clean(self):
        """Stops the proxies and the daemon (SIGTERM) and checks that it
        exits 0 without sanitizer reports (ASan/UBSan builds)."""
        for px in self.proxies:
            px.stop()
        rc = self.d.terminate(timeout=20)
        err = self.d.stderr()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:", "Assertion"):
            assert bad not in err, err[err.find(bad) - 2000:err.find(bad) + 3000]
        assert rc == 0, (rc, err[-3000:])

    def cleanup(self):
        for px in self.proxies:
            try:
                px.stop()
            except Exception:
                pass
        for p in self.ups:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.d.cleanup()
