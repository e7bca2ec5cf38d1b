#!/usr/bin/env python3
"""End to end: port mappings and host-service grants in a real tiny VM.

One nilboxd (test mode, store open), one VM running busybox httpd on guest
port 8000, in order:
  01 `nilbox port add` + curl on the host reaches the guest's server (a
     4 MiB file arrives intact, checked by hash); `port ls` (text, --json);
  02 errors: a busy host port, the same port twice, a non-loopback bind
     without --public, bad HOSTPORT:GUESTPORT, an unknown VM (exit codes and
     messages); --public with a warning;
  03 A26: a process of another user cannot use a loopback mapping (the
     kernel names the client socket's owner); an audit row says so;
  04 the VM stops: connections are refused, the mapping stays; it starts:
     the same mapping works again;
  05 nilboxd restarts: the mapping is listening again and works;
  06 `port rm` closes the listener and an open connection;
  07 A14: host.nilbox.internal:PORT reaches host 127.0.0.1:PORT only with
     an exact grant (`rule add allow host:PORT --vm`, or a prompt answer);
     an ungranted port, a port-less or wildcard rule, the daemon's API port
     and its own listeners (even granted), and every other spelling of the
     host (loopback names and addresses, [::1], decimal/hex IPs, 0, QEMU's
     10.0.2.2, fake IPs, the metadata address, a name resolved to 127.0.0.1,
     the explicit proxy) never reach it;
  07b the Playwright recipe's transport: a host Chromium's DevTools port,
     granted, driven from the guest over the fake address (a tab opened);
  08 clean stop: no sanitizer reports.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from e2e_env import AGENT, TINY, VmSuite, build_image, need, wait_for
from proxy_env import wait_store_open

VM = "pt1"
GUEST_PORT = 8000
SECRET = "HOST-SERVICE-MARKER-51c2"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class HostService:
    """An HTTP server on host loopback answering SECRET + its port."""

    def __init__(self):
        marker = SECRET

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = ("%s-%d\n" % (marker, self.server.server_port)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_port
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def fetch(port, path="/index.html", timeout=20):
    """(status line or error, body) of GET path on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(("GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path).encode())
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
    except OSError as e:
        return "error: %s" % e, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(errors="replace") if head else "empty", body


class PortsE2E(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("curl",))
        build_image("tiny", TINY, AGENT)
        cls.svc = HostService()
        cls.svc2 = HostService()
        cls.procs_extra = []
        cls.d = cls.daemon({"tiny": TINY}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_PROMPT_TIMEOUT_MS": "3000",
            "NILBOX_TEST_RESOLVE": "rebind.example.test:%d:127.0.0.1:%d" %
                                   (cls.svc.port, cls.svc.port)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        cls.ccli("vm", "create", VM, "--user", "root", timeout=120)
        cls.ccli("vm", "start", VM, timeout=300)
        cls.hp = free_port()

    @classmethod
    def tearDownClass(cls):
        for s in ("svc", "svc2"):
            if getattr(cls, s, None):
                getattr(cls, s).stop()
        super().tearDownClass()

    @classmethod
    def ccli(cls, *args, input=None, timeout=60):
        r = cls.d.cli(*args, input=input, timeout=timeout)
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr, cls.d.stderr()[-2000:])
        return r

    def sh(self, script, timeout=120):
        return self.d.cli("exec", VM, "--", "sh", "-c", script, timeout=timeout)

    def start_httpd(self):
        r = self.sh("mkdir -p /tmp/www && echo hello-from-guest > /tmp/www/index.html && "
                    "[ -f /tmp/www/big ] || dd if=/dev/urandom of=/tmp/www/big bs=1024 "
                    "count=4096 2>/dev/null; busybox httpd -p 127.0.0.1:%d -h /tmp/www && "
                    "sha256sum /tmp/www/big" % GUEST_PORT)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.split()[0]

    def ports(self):
        return json.loads(self.ccli("--json", "port", "ls").stdout)["ports"]

    def audit(self, kind):
        r = self.ccli("--json", "audit", "--kind", kind)
        out = json.loads(r.stdout)
        return out["rows"] if isinstance(out, dict) else out

    # -- cases -------------------------------------------------------------
    def test_01_map(self):
        digest = self.start_httpd()
        r = self.ccli("port", "add", VM, "%d:%d" % (self.hp, GUEST_PORT))
        self.assertIn("127.0.0.1:%d -> vm %s port %d" % (self.hp, VM, GUEST_PORT), r.stdout)
        st, body = fetch(self.hp)
        self.assertIn("200", st)
        self.assertEqual(body, b"hello-from-guest\n")
        # A real client; a bigger body, intact.
        c = subprocess.run(["curl", "-sS", "-m", "120", "http://127.0.0.1:%d/big" % self.hp],
                           capture_output=True, timeout=180)
        self.assertEqual(c.returncode, 0, c.stderr)
        self.assertEqual(len(c.stdout), 4096 * 1024)
        self.assertEqual(hashlib.sha256(c.stdout).hexdigest(), digest)
        # Parallel clients.
        res = []
        ts = [threading.Thread(target=lambda: res.append(fetch(self.hp))) for _ in range(8)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        self.assertEqual([b for _, b in res], [b"hello-from-guest\n"] * 8)
        p = self.ports()
        self.assertEqual(len(p), 1)
        self.assertEqual((p[0]["vm"], p[0]["host_port"], p[0]["guest_port"], p[0]["bind"],
                          p[0]["listening"], p[0]["public"]),
                         (VM, self.hp, GUEST_PORT, "127.0.0.1", True, False))
        txt = self.ccli("port", "ls").stdout
        self.assertIn("listening", txt)
        self.assertIn("127.0.0.1:%d" % self.hp, txt)
        self.assertIn("--public", self.ccli("port", "add", "--help").stdout)

    def test_02_errors(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        bp = busy.getsockname()[1]
        try:
            r = self.d.cli("port", "add", VM, "%d:%d" % (bp, GUEST_PORT))
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("in use", r.stderr)
        finally:
            busy.close()
        r = self.d.cli("port", "add", VM, "%d:81" % self.hp)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already mapped", r.stderr)
        r = self.d.cli("port", "add", VM, "%d:%d" % (free_port(), GUEST_PORT), "--bind", "0.0.0.0")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--public", r.stderr)
        for bad in ("abc", "0:80", "80:0", "70000:80", "80:", ":80", "1:2:3", "-5:80", "080:80"):
            r = self.d.cli("port", "add", VM, bad)
            self.assertEqual(r.returncode, 2, (bad, r.stdout, r.stderr))
        r = self.d.cli("port", "add", "nosuchvm", "%d:80" % free_port())
        self.assertEqual(r.returncode, 4, r.stderr)
        r = self.d.cli("port", "add", VM, "%d:80" % free_port(), "--bind", "not-an-ip")
        self.assertEqual(r.returncode, 1)
        self.assertIn("IP address", r.stderr)
        r = self.d.cli("port", "rm", "999")
        self.assertEqual(r.returncode, 4)
        # --public: allowed, with a warning; reachable through loopback too.
        pp = free_port()
        r = self.ccli("port", "add", VM, "%d:%d" % (pp, GUEST_PORT), "--bind", "0.0.0.0",
                      "--public")
        self.assertIn("warning", r.stderr)
        self.assertIn("0.0.0.0", self.ccli("port", "ls").stdout)
        st, body = fetch(pp)
        self.assertEqual(body, b"hello-from-guest\n")
        self.ccli("port", "rm", VM, str(pp))
        self.assertEqual(len(self.ports()), 1)
        wait_for(lambda: self.audit("port.added"), 20, "port.added rows")

    def test_03_other_user(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to run a client as another user")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "curl", "-sS", "-m", "20", "http://127.0.0.1:%d/index.html" % self.hp],
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertNotIn("hello-from-guest", r.stdout)
        wait_for(lambda: [x for x in self.audit("refusal")
                          if (x.get("detail") or {}).get("threat") == "A26" and
                          (x.get("detail") or {}).get("reason") == "peer-uid"], 20,
                 "an A26 refusal row")
        # Positive control: our own user still gets through.
        self.assertEqual(fetch(self.hp)[1], b"hello-from-guest\n")

    def test_04_vm_restart(self):
        self.ccli("vm", "stop", VM, timeout=120)
        st, body = fetch(self.hp, timeout=10)
        self.assertEqual(body, b"", st)
        self.assertTrue(self.ports()[0]["listening"])
        self.ccli("vm", "start", VM, timeout=300)
        self.start_httpd()
        self.assertEqual(fetch(self.hp)[1], b"hello-from-guest\n")

    def test_05_daemon_restart(self):
        self.assertEqual(self.d.terminate(timeout=30), 0)
        self.assertEqual(fetch(self.hp, timeout=5)[1], b"")  # nobody listens
        self.d.start("--key-file", os.path.join(self.tmp, "master.key"))
        wait_store_open(self.d, 20)
        wait_for(lambda: json.loads(self.ccli("--json", "vm", "inspect", VM).stdout)
                 .get("agent") in (True, "connected", "up") or
                 fetch(self.hp, timeout=5)[1] == b"hello-from-guest\n", 120, "the agent back")
        p = self.ports()
        self.assertEqual((len(p), p[0]["host_port"], p[0]["listening"]), (1, self.hp, True))
        wait_for(lambda: fetch(self.hp, timeout=10)[1] == b"hello-from-guest\n", 60,
                 "the mapping after the restart")

    def test_06_rm(self):
        s = socket.create_connection(("127.0.0.1", self.hp), timeout=20)
        s.sendall(b"GET /index.html HTTP/1.0\r\n")  # incomplete: the server waits
        time.sleep(1)
        self.assertEqual(self.ports()[0]["connections"], 1)
        self.ccli("port", "rm", VM, str(self.hp))
        try:
            self.assertEqual(s.recv(100), b"")
        except ConnectionResetError:
            pass
        s.close()
        self.assertEqual(self.ports(), [])
        self.assertEqual(fetch(self.hp, timeout=5)[1], b"")
        # Mapped again for the next cases (the grant tests need one listener).
        self.ccli("port", "add", VM, "%d:%d" % (self.hp, GUEST_PORT))

    def guest_get(self, url, *extra, m=8):
        """curl in the guest: (exit code, body)."""
        r = self.sh("curl -sS -m %d %s '%s'; echo \"rc=$?\"" % (m, " ".join(extra), url),
                    timeout=120)
        out = r.stdout
        rc = out.rsplit("rc=", 1)[-1].strip() if "rc=" in out else "?"
        return rc, out.rsplit("rc=", 1)[0]

    def prompts(self):
        return json.loads(self.ccli("--json", "prompts").stdout)["prompts"]

    def test_07_host_grants(self):
        P, P2 = self.svc.port, self.svc2.port
        api_port = self.d.api()["port"]
        url = "http://host.nilbox.internal:%d/" % P
        # No grant: a prompt; denied -> nothing.
        t = threading.Thread(target=lambda: setattr(self, "_r", self.guest_get(url, m=20)))
        t.start()
        p = wait_for(lambda: [x for x in self.prompts() if x["host"] == "host.nilbox.internal"],
                     60, "a prompt for host.nilbox.internal")[0]
        self.assertEqual((p["port"], p["vm"]), (P, VM))
        self.ccli("prompts", "answer", str(p["id"]), "deny-once")
        t.join()
        self.assertNotIn(SECRET, self._r[1])
        # allow-once answers work too.
        t = threading.Thread(target=lambda: setattr(self, "_r", self.guest_get(url, m=20)))
        t.start()
        p = wait_for(lambda: [x for x in self.prompts() if x["host"] == "host.nilbox.internal"],
                     60, "a prompt for host.nilbox.internal")[0]
        self.ccli("prompts", "answer", str(p["id"]), "allow-once")
        t.join()
        self.assertIn("%s-%d" % (SECRET, P), self._r[1])
        # A port-less rule and a wildcard are no grant.
        self.ccli("rule", "add", "allow", "host", "--vm", VM)
        self.ccli("rule", "add", "allow", "*.nilbox.internal", "--vm", VM)
        rc, body = self.guest_get(url)
        self.assertNotIn(SECRET, body)
        # The grant: `allow host:PORT --vm VM`, shown as the full name.
        r = self.ccli("rule", "add", "allow", "host:%d" % P, "--vm", VM)
        self.assertIn("host.nilbox.internal", r.stdout)
        rc, body = self.guest_get(url)
        self.assertEqual(body.strip(), "%s-%d" % (SECRET, P))
        # The name's fake address is the same grant (the Playwright recipe:
        # Chromium's DevTools wants an IP literal in Host).
        r = self.sh("curl -s -o /dev/null -w '%%{remote_ip}' %s" % url)
        self.assertTrue(r.stdout.startswith("198.18."), r.stdout)
        rc, body = self.guest_get("http://%s:%d/" % (r.stdout.strip(), P), "--noproxy '*'")
        self.assertEqual(body.strip(), "%s-%d" % (SECRET, P))
        # The guest's environment sends it direct (NO_PROXY) without --noproxy.
        rc, body = self.guest_get(url.replace("host.nilbox", "HOST.nilbox"))
        self.assertEqual(body.strip(), "%s-%d" % (SECRET, P))
        # The daemon's own ports stay closed even when granted.
        for port in (api_port, self.hp):
            self.ccli("rule", "add", "allow", "host:%d" % port, "--vm", VM)
            rc, body = self.guest_get("http://host.nilbox.internal:%d/v1/status" % port)
            self.assertNotIn("version", body)
            self.assertNotIn("hello-from-guest", body)
            self.assertNotEqual(rc, "0", body)
        wait_for(lambda: [x for x in self.audit("refusal")
                          if (x.get("detail") or {}).get("reason") == "daemon-port"], 20,
                 "a daemon-port refusal row")
        # Every other spelling of the host; P2 was never granted.
        self.ccli("rule", "add", "allow", "rebind.example.test:%d" % P, "--vm", VM)
        spellings = []
        for port in (P, P2):
            spellings += ["http://%s:%d/" % (h, port) for h in (
                "127.0.0.1", "localhost", "127.0.0.2", "[::1]", "2130706433", "0x7f000001",
                "0", "0.0.0.0", "10.0.2.2", "198.18.0.1", "198.18.99.99", "169.254.169.254",
                "host", "rebind.example.test", "[::ffff:127.0.0.1]")]
        spellings += ["http://host.nilbox.internal:%d/" % P2,
                      "http://host.nilbox.internal.:%d/" % P2]
        script = "; ".join("echo \"== %s\"; curl -sS -m 6 --noproxy '*' '%s' 2>&1" % (u, u)
                           for u in spellings)
        # The explicit proxy, with and without the grant.
        script += "; " + "; ".join(
            "echo \"== proxy %s\"; env -u NO_PROXY -u no_proxy "
            "curl -sS -m 6 -x http://127.0.0.1:8088 '%s' 2>&1" % (u, u)
            for u in (url, "http://127.0.0.1:%d/" % P, "http://rebind.example.test:%d/" % P))
        r = self.sh(script, timeout=600)
        self.assertNotIn(SECRET, r.stdout, r.stdout)
        self.assertEqual(r.stdout.count("== "), len(spellings) + 3, r.stdout)
        # Positive control after all that: the grant still works.
        rc, body = self.guest_get(url)
        self.assertEqual(body.strip(), "%s-%d" % (SECRET, P))

    def test_07b_devtools_recipe(self):
        """The recipe in docs/internals/ports.md, run: a host Chromium with DevTools on a loopback
        port, granted to the VM, driven from the guest through the name's fake address."""
        if not shutil.which("chromium"):
            self.skipTest("Debian's chromium is not installed")
        port = free_port()
        prof = tempfile.mkdtemp(dir=self.tmp)
        ch = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--no-first-run",
                               "--remote-debugging-port=%d" % port, "--user-data-dir=" + prof,
                               "about:blank"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def host_get(path):  # Host: 127.0.0.1:PORT, which DevTools accepts
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return ""

        try:
            wait_for(lambda: "webSocketDebuggerUrl" in host_get("/json/version"), 60,
                     "chromium's DevTools on the host")
            name = "http://host.nilbox.internal:%d" % port
            # No grant yet: the prompt times out (NILBOX_PROMPT_TIMEOUT_MS), nothing reached.
            rc, body = self.guest_get(name + "/json/version", m=20)
            self.assertNotIn("webSocketDebuggerUrl", body)
            self.ccli("rule", "add", "allow", "host:%d" % port, "--vm", VM)
            # Chromium refuses a Host that is a name (DNS-rebinding protection) ...
            rc, body = self.guest_get(name + "/json/version")
            self.assertIn("not an IP address or localhost", body)
            # ... so the recipe uses the name's fake address: an IP literal, the same grant.
            ip = self.sh("curl -s -o /dev/null -w '%%{remote_ip}' %s/json/version" % name).stdout
            self.assertTrue(ip.startswith("198.18."), ip)
            base = "http://%s:%d" % (ip.strip(), port)
            rc, body = self.guest_get(base + "/json/version", "--noproxy '*'")
            self.assertIn("webSocketDebuggerUrl", body)
            # Control, not just a read: the guest opens a tab the host's browser then has.
            rc, body = self.guest_get(base + "/json/new?about:blank", "--noproxy '*' -X PUT")
            tab = json.loads(body)["id"]
            self.assertIn(tab, host_get("/json/list"))
            # The grant is this port's only: the next port up stays closed.
            rc, body = self.guest_get("http://%s:%d/json/version" % (ip.strip(), port + 1),
                                      "--noproxy '*'")
            self.assertNotIn("webSocketDebuggerUrl", body)
        finally:
            ch.kill()
            ch.wait()

    def test_08_clean_stop(self):
        self.ccli("vm", "stop", VM, timeout=120)
        rc = self.d.terminate(timeout=30)
        err = self.d.stderr()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, err, err[err.find(bad) - 2000:err.find(bad) + 4000])
        self.assertEqual(rc, 0, err[-3000:])


if __name__ == "__main__":
    unittest.main(verbosity=2)
