#!/usr/bin/env python3
"""Opt-in end to end test (meson suite 'e2e-debian'; minutes): the zero-token
path in the debian image (systemd, nilbox-net.service, update-ca-certificates
world), with the same daemon setup as test_egress_vm.py:
  - placeholders in exec, in a login shell (/etc/profile.d) and in
    /etc/environment; the interception CA in the system bundle;
  - curl through the explicit proxy and through the transparent capture:
    the upstream gets the real key, another host the dummy;
  - Python (urllib, system bundle via SSL_CERT_FILE) and Node (fetch, with
    NODE_EXTRA_CA_CERTS; it ignores proxy variables, so the transparent
    capture carries it) reach an allowed host;
  - an IP literal is denied with a readable reason; a blocked name does not
    resolve.
The debian image is built (mmdebstrap) into NB_E2E_CACHE/debian-agent once.
Env as for test_egress_vm.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integ"))
from daemon_harness import NILBOX, NILBOXD, Daemon  # noqa: E402
import fake_upstream  # noqa: E402

AGENT = os.environ.get("NILBOX_AGENT", "")
CACHE = os.environ.get("NB_E2E_CACHE", "")
IMAGES = os.environ.get("NB_IMAGES_SRC", "")
IMG = os.path.join(CACHE, "debian-agent")
TINY = os.path.join(CACHE, "tiny-agent")
VM = "deb1"
REAL = "sk-real-debian-51c2"


class EgressDebian(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        try:
            cls._setup()
        except unittest.SkipTest:
            raise
        except BaseException:
            # unittest skips tearDownClass when setUpClass fails: clean up here.
            cls.tearDownClass()
            raise

    @classmethod
    def _setup(cls):
        if not (NILBOX and NILBOXD and AGENT and CACHE and IMAGES):
            raise unittest.SkipTest("NB_TEST_NILBOX/NILBOXD, NILBOX_AGENT, NB_E2E_CACHE or "
                                    "NB_IMAGES_SRC not set")
        if not shutil.which("qemu-system-x86_64") or not shutil.which("mmdebstrap"):
            raise unittest.SkipTest("qemu-system-x86_64 or mmdebstrap missing")
        t0 = time.time()
        r = subprocess.run(["bash", os.path.join(IMAGES, "debian", "build.sh"), "--out", IMG,
                            "--tiny", TINY, "--cache", os.path.join(CACHE, "debs"), "--agent",
                            AGENT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=3000)
        sys.stderr.write(r.stdout[-1500:] + "\n(debian image: %.0f s)\n" % (time.time() - t0))
        if r.returncode != 0:
            raise RuntimeError("debian image build failed")
        cls.tmp = tempfile.mkdtemp(prefix="nb-egress-deb-")
        cls.procs = []
        cls.up_log = os.path.join(cls.tmp, "upstream.jsonl")
        names = ("api.example.test", "other.example.test", "blocked.example.test")
        ca, cert, key = fake_upstream.make_ca(cls.tmp, names=names)
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "..", "integ", "fake_upstream.py"),
                              "--log", cls.up_log, "--cert", cert, "--key", key],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cls.procs.append(p)
        port = int(p.stdout.readline().split()[1])
        cls.d = Daemon(tmp=os.path.join(cls.tmp, "d"))
        cls.d.env.update({
            "NILBOX_TEST_MODE": "1", "NILBOX_TEST_UPSTREAM_CA": ca,
            "NILBOX_TEST_RESOLVE": ",".join("%s:443:127.0.0.1:%d" % (n, port) for n in names),
            "NILBOX_AGENT": AGENT, "NILBOX_IMAGES_DIR": IMAGES})
        os.makedirs(os.path.join(cls.d.home, "images"), exist_ok=True)
        os.symlink(IMG, os.path.join(cls.d.home, "images", "debian"))
        cls.d.start("--key-file", os.path.join(cls.tmp, "master.key"))
        deadline = time.time() + 20
        while json.loads(cls.d.unix("GET", "/v1/keystore")[2])["state"] != "open":
            assert time.time() < deadline, "secret store"
            time.sleep(0.1)
        for args in (("secret", "set", "OPENAI_API_KEY"),
                     ("secret", "bind", "OPENAI_API_KEY", "--host", "api.example.test"),
                     ("rule", "add", "allow", "api.example.test:443"),
                     ("rule", "add", "allow", "other.example.test:443"),
                     ("rule", "add", "deny", "blocked.example.test"),
                     ("rule", "add", "allow", "127.0.0.1:%d" % port),
                     ("vm", "create", VM, "--image", "debian", "--memory", "1024"),
                     ("vm", "start", VM)):
            r = cls.d.cli(*args, input=REAL if args[1] == "set" else None, timeout=600)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        t0 = time.time()
        while "OPENAI_API_KEY" not in cls.d.cli("exec", VM, "--", "cat", "/etc/environment",
                                                timeout=60).stdout:
            assert time.time() - t0 < 120, "provisioning"
            time.sleep(1)

    @classmethod
    def tearDownClass(cls):
        d = getattr(cls, "d", None)
        if d:
            d.cli("vm", "stop", "--force", VM, timeout=60)
            try:
                os.kill(int(open(os.path.join(d.home, "vms", VM, "qemu.pid")).read()),
                        signal.SIGKILL)
            except (OSError, ValueError):
                pass
            d.cleanup()
        for p in getattr(cls, "procs", []):
            p.kill()
            p.wait()
            p.stdout.close()
        shutil.rmtree(getattr(cls, "tmp", "/nonexistent"), ignore_errors=True)

    def sh(self, script, timeout=180):
        return self.d.cli("exec", VM, "--", "bash", "-c", script, timeout=timeout)

    def auths(self, host):
        with open(self.up_log) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        return [dict((k.lower(), v) for k, v in r["headers"]).get("authorization") for r in rows
                if dict((k.lower(), v) for k, v in r["headers"]).get("host") == host]

    def test_placeholders_and_trust(self):
        self.assertEqual(self.sh('echo "$OPENAI_API_KEY"').stdout.strip(), "OPENAI_API_KEY")
        self.assertEqual(self.sh("env -i bash -lc 'echo $OPENAI_API_KEY'").stdout.strip(),
                         "OPENAI_API_KEY")
        self.assertIn('OPENAI_API_KEY="OPENAI_API_KEY"', self.sh("cat /etc/environment").stdout)
        self.assertIn(self.sh("sed -n 2p /etc/nilbox/ca.pem").stdout.strip(),
                      self.sh("cat /etc/ssl/certs/ca-certificates.crt").stdout)

    def test_clients(self):
        for extra in ("", "--noproxy '*'"):
            r = self.sh('curl -sS -m 60 %s https://api.example.test/echo -H '
                        '"Authorization: Bearer $OPENAI_API_KEY"' % extra)
            self.assertIn("Bearer OPENAI_API_KEY", r.stdout, r.stderr)
            self.assertEqual(self.auths("api.example.test")[-1], "Bearer " + REAL)
        r = self.sh("python3 -c 'import urllib.request as u; print(u.urlopen("
                    "\"https://other.example.test/echo\").status)'")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        r = self.sh("node -e 'fetch(\"https://other.example.test/echo\", {headers: "
                    "{authorization: \"Bearer \" + process.env.OPENAI_API_KEY}})"
                    ".then(r => console.log(r.status))'")
        self.assertEqual(r.stdout.strip(), "200", r.stderr)
        self.assertEqual(self.auths("other.example.test")[-1], "Bearer OPENAI_API_KEY")

    def test_denials(self):
        r = self.sh("curl -sS -i -m 60 http://93.184.216.34/")
        self.assertIn("x-nilbox-reason: no-rule", r.stdout.lower())
        r = self.sh("curl -sS -m 60 --noproxy '*' https://blocked.example.test/")
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertEqual(self.sh("ls /sys/class/net").stdout.split(), ["dummy0", "lo"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
