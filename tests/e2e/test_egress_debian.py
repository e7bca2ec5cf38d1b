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
import sys
import unittest

from e2e_env import AGENT, CACHE, VmSuite, build_image, need, wait_for
import fake_upstream
from proxy_env import wait_store_open

IMG = os.path.join(CACHE, "debian-agent")
VM = "deb1"
REAL = "sk-real-debian-51c2"


class EgressDebian(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("mmdebstrap",))
        sys.stderr.write("(debian image: %.0f s)\n" % build_image("debian", IMG, AGENT, 3000))
        cls.up_log = os.path.join(cls.tmp, "upstream.jsonl")
        names = ("api.example.test", "other.example.test", "blocked.example.test")
        ca, cert, key = fake_upstream.make_ca(cls.tmp, names=names)
        port = cls.upstream(cls.up_log, "--cert", cert, "--key", key)
        cls.d = cls.daemon({"debian": IMG}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_TEST_UPSTREAM_CA": ca,
            "NILBOX_TEST_RESOLVE": ",".join("%s:443:127.0.0.1:%d" % (n, port) for n in names)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
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
        wait_for(lambda: "OPENAI_API_KEY" in cls.d.cli("exec", VM, "--", "cat", "/etc/environment",
                                                       timeout=60).stdout, 120, "provisioning")

    def sh(self, script, timeout=180):
        return self.d.cli("exec", VM, "--", "bash", "-c", script, timeout=timeout)

    def auths(self, host):
        with open(self.up_log) as f:
            rows = [json.loads(l) for l in f if l.endswith("\n") and l.strip()]
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
