#!/usr/bin/env python3
"""End to end: AWS SigV4 re-signing for a real tiny VM (TCG unless KVM).

One nilboxd (test mode), one VM, the fake S3 (tests/integ/fake_aws.py) that
verifies signatures with the real credentials:
  01 the guest's environment has the AWS placeholders (and never a value);
  02 curl --aws-sigv4 in the guest, signing with $AWS_ACCESS_KEY_ID /
     $AWS_SECRET_ACCESS_KEY / $AWS_SESSION_TOKEN: PUT then GET through the
     guest's proxy, verified upstream with the real key; the echoed
     Authorization comes back with the placeholder (A5);
  03 signed with another secret: passes unchanged, the fake refuses it;
  04 the VM stops.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import json
import os
import subprocess
import sys
import unittest

from e2e_env import AGENT, TINY, VmSuite, build_image, need
import fake_aws
import fake_upstream
from proxy_env import wait_store_open

VM = "sv1"
S3 = "s3.amazonaws.com"
REAL_AKID = "AKIAE2EREALKEY000001"
REAL_SECRET = "e2eReal/Secret+Key0123456789abcdefghijk"
REAL_TOKEN = "E2E-REAL-SESSION-TOKEN/xyz=="
SIGN = ('curl -sS -m 60 --aws-sigv4 aws:amz:us-east-1:s3 '
        '-u "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" '
        '-H "x-amz-security-token: $AWS_SESSION_TOKEN" '
        '-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" ')


class SigV4E2E(VmSuite):
    @classmethod
    def setup(cls):
        need()
        build_image("tiny", TINY, AGENT)
        ca, cert, key = fake_upstream.make_ca(cls.tmp, names=(S3, "localhost"))
        cls.log = os.path.join(cls.tmp, "aws.jsonl")
        p = subprocess.Popen([sys.executable, fake_aws.__file__, "--cert", cert, "--key", key,
                              "--log", cls.log, "--akid", REAL_AKID, "--secret", REAL_SECRET,
                              "--token", REAL_TOKEN],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cls.procs.append(p)
        port = int(p.stdout.readline().split()[1])
        cls.d = cls.daemon({"tiny": TINY}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_TEST_UPSTREAM_CA": ca,
            "NILBOX_TEST_RESOLVE": "%s:443:127.0.0.1:%d" % (S3, port)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        c = cls.ccli
        c("secret", "set", "AWS", input="%s\n%s\n%s\n" % (REAL_AKID, REAL_SECRET, REAL_TOKEN))
        c("secret", "bind-aws", "AWS", "--host", "*.amazonaws.com", "--region", "us-east-1")
        c("rule", "add", "allow", S3 + ":443")
        c("rule", "add", "allow", "127.0.0.1:%d" % port)
        c("vm", "create", VM, timeout=120)
        c("vm", "start", VM, timeout=300)

    @classmethod
    def ccli(cls, *args, input=None, timeout=60):
        r = cls.d.cli(*args, input=input, timeout=timeout)
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def sh(self, script, timeout=120):
        return self.d.cli("exec", VM, "--", "sh", "-c", script, timeout=timeout)

    def rows(self):
        with open(self.log) as f:
            return [json.loads(l) for l in f if l.endswith("\n") and l.strip()]

    def test_01_env(self):
        r = self.sh('echo "$AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $AWS_SESSION_TOKEN"')
        self.assertEqual(r.stdout.strip(),
                         "AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN", r)
        r = self.sh("env; cat /etc/environment 2>/dev/null")
        for v in (REAL_AKID, REAL_SECRET, REAL_TOKEN):
            self.assertNotIn(v, r.stdout)

    def test_02_put_get(self):
        r = self.sh(SIGN + "-X PUT --data-binary 'hello from the guest' -D - "
                    "https://%s/bkt/e2e" % S3)
        self.assertIn(" 200", r.stdout.splitlines()[0] if r.stdout else "", (r, self.rows()[-1:]))
        row = self.rows()[-1]
        self.assertTrue(row["verified"], row)
        self.assertIn("Credential=%s/" % REAL_AKID, dict(row["headers"])["Authorization"])
        # The echoed (re-signed) Authorization reaches the guest with the placeholder.
        echoed = [l for l in r.stdout.splitlines() if l.lower().startswith("x-echo-authorization")]
        self.assertTrue(echoed and "Credential=AWS_ACCESS_KEY_ID/" in echoed[0], r.stdout)
        self.assertNotIn(REAL_AKID, r.stdout)
        self.assertNotIn(REAL_TOKEN, r.stdout)
        r = self.sh(SIGN + "https://%s/bkt/e2e" % S3)
        self.assertEqual(r.stdout, "hello from the guest", r)

    def test_03_wrong_secret_unchanged(self):
        r = self.sh('curl -sS -m 60 -o /dev/null -w "%%{http_code}" --aws-sigv4 '
                    'aws:amz:us-east-1:s3 -u "$AWS_ACCESS_KEY_ID:guessed" '
                    '-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" https://%s/bkt/e2e' % S3)
        self.assertEqual(r.stdout, "403", r)
        row = self.rows()[-1]
        self.assertFalse(row["verified"])
        self.assertIn("Credential=AWS_ACCESS_KEY_ID/", dict(row["headers"])["Authorization"])

    def test_04_stop(self):
        self.ccli("vm", "stop", VM, timeout=120)


if __name__ == "__main__":
    unittest.main(verbosity=2)
