#!/usr/bin/env python3
"""End to end: the web UI (ui/, served by nilboxd) in Debian's chromium,
driven by playwright-core (tests/ui/ui.test.mjs) against this real nilboxd
and a real tiny VM (TCG unless KVM): token and Origin refusals, create and
start a VM from the form with live state, a terminal (echo, resize + stty
size, OSC 52 / title / HTML inert: A20, A21; copy and paste), a destination
prompt answered in the modal while a guest curl waits, a rule, a secret set
and bound (its value never in the page), audit rows and the chain, keyboard
reach and axe-core (no serious violations). Screenshots: NB_UI_ARTIFACTS.

Env: as e2e_env, plus NB_UI_TESTS (tests/ui with node_modules) and
NB_UI_ARTIFACTS."""
import json
import os
import shutil
import subprocess
import sys
import unittest

from e2e_env import AGENT, TINY, VmSuite, build_image, need
import fake_upstream
from proxy_env import wait_store_open

UI_TESTS = os.environ.get("NB_UI_TESTS", "")
ASK = "ask.example.test"


class UiE2E(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("chromium", "node"))
        if not os.path.isdir(os.path.join(UI_TESTS, "node_modules", "playwright-core")):
            raise unittest.SkipTest("tests/ui/node_modules missing: run scripts/install-deps.sh")
        build_image("tiny", TINY, AGENT)
        cls.up_log = os.path.join(cls.tmp, "upstream.jsonl")
        up_ca, cert, key = fake_upstream.make_ca(cls.tmp, names=(ASK, "api.example.test"))
        cls.tls_port = cls.upstream(cls.up_log, "--cert", cert, "--key", key)
        cls.d = cls.daemon({"tiny": TINY}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_PROMPT_TIMEOUT_MS": "90000",
            "NILBOX_TEST_UPSTREAM_CA": up_ca,
            "NILBOX_TEST_RESOLVE": "%s:443:127.0.0.1:%d" % (ASK, cls.tls_port)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        # The fake upstream lives on loopback: only an explicit IP rule admits it (A13).
        r = cls.d.cli("rule", "add", "allow", "127.0.0.1:%d" % cls.tls_port)
        assert r.returncode == 0, r.stderr

    def test_01_cli_url(self):
        api = self.d.api()
        r = self.cli("ui")
        self.assertEqual(r.stdout.strip(), api["url"] + "#token=" + api["token"])
        self.assertEqual(json.loads(self.cli("--json", "ui").stdout)["url"],
                         api["url"] + "#token=" + api["token"])

    def test_02_ui(self):
        api = self.d.api()
        env = dict(self.d.env)
        env.update({"NB_UI_URL": api["url"], "NB_UI_TOKEN": api["token"], "NB_UI_VM": "ui1",
                    "NB_UI_ASK_HOST": ASK,
                    "NB_UI_ARTIFACTS": os.environ.get("NB_UI_ARTIFACTS",
                                                      os.path.join(self.tmp, "artifacts"))})
        r = subprocess.run(["node", os.path.join(UI_TESTS, "ui.test.mjs")], env=env, cwd=UI_TESTS,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=1500)
        sys.stderr.write(r.stdout)
        if r.returncode != 0:
            self.fail("the UI test failed (see above); daemon:\n" + self.d.stderr()[-3000:])
        # The token never went anywhere but the daemon: not in its log.
        self.assertNotIn(api["token"], self.d.stderr())


if __name__ == "__main__":
    unittest.main(verbosity=2)
