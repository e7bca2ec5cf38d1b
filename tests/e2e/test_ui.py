#!/usr/bin/env python3
"""End to end: the web UI (ui/, served by nilboxd) in Debian's chromium,
driven by playwright-core (tests/ui/ui.test.mjs) against this real nilboxd
and a real tiny VM (TCG unless KVM): token and Origin refusals, create and
start a VM from the form with live state, a terminal (echo, resize + stty
size, OSC 52 / title / HTML inert: A20, A21; copy and paste), a destination
prompt answered in the modal while a guest curl waits, a rule, a secret set
and bound (its value never in the page), audit rows and the chain, keyboard
reach and axe-core (no serious violations); then the screens of the other
features: Usage (a guest request to a fake OpenAI upstream recorded, a limit
set with how close it is, a bad one refused with the API's message), Mappings
(a port mapped and reached, a host folder shared and read in the guest, the
SSH config block), MCP (a server added, a tool policy, the client snippet),
Store (a catalogue signed here: the proposed rules shown and accepted before
the install, progress from the event stream, remove), Settings (doctor, the
accelerator). Screenshots: NB_UI_ARTIFACTS.

Env: as e2e_env, plus NB_UI_TESTS (tests/ui with node_modules) and
NB_UI_ARTIFACTS."""
import json
import os
import shutil
import subprocess
import sys
import unittest

from e2e_env import AGENT, TINY, VmSuite, build_image, need
import fake_llm
import fake_upstream
from proxy_env import wait_store_open

UI_TESTS = os.environ.get("NB_UI_TESTS", "")
ASK = "ask.example.test"
LLM = "api.openai.com"
SIGN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                    "sign-catalogue.sh")
# Apps for the tiny image (as in test_store_vm.py), signed by a key made here.
CATALOGUE = {"format": 1, "version": "ui-test-1", "apps": [
    {"id": "hello", "name": "Hello", "kind": "tool", "summary": "writes /data/store-hello",
     "vendor": "example.com", "image": "tiny",
     "script": "echo installed > /data/store-hello\necho step two\n",
     "check": ["sh", "-c", "test -f /data/store-hello"], "remove": "rm -f /data/store-hello\n",
     "rules": ["pkgs.example.com:443"],
     "secrets": [{"name": "HELLO_KEY", "hosts": ["api.example.com"]}]},
    {"id": "big", "name": "Big", "kind": "tool", "summary": "for the debian image",
     "vendor": "example.com", "image": "debian", "script": "true", "check": ["true"]},
]}


class UiE2E(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("chromium", "node"))
        if not os.path.isdir(os.path.join(UI_TESTS, "node_modules", "playwright-core")):
            raise unittest.SkipTest("tests/ui/node_modules missing: run scripts/install-deps.sh")
        build_image("tiny", TINY, AGENT)
        cls.up_log = os.path.join(cls.tmp, "upstream.jsonl")
        up_ca, cert, key = fake_upstream.make_ca(cls.tmp, names=(ASK, "api.example.test", LLM))
        cls.tls_port = cls.upstream(cls.up_log, "--cert", cert, "--key", key)
        p, cls.llm_port = fake_llm.spawn(cls.up_log, os.path.join(cls.tmp, "served.jsonl"),
                                         cert, key)
        cls.procs.append(p)
        cls.d = cls.daemon({"tiny": TINY}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_PROMPT_TIMEOUT_MS": "90000",
            "NILBOX_TEST_UPSTREAM_CA": up_ca,
            "NILBOX_TEST_RESOLVE": "%s:443:127.0.0.1:%d,%s:443:127.0.0.1:%d" % (
                ASK, cls.tls_port, LLM, cls.llm_port)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        # The fake upstreams live on loopback: only an explicit IP rule admits them (A13).
        for rule in ("127.0.0.1:%d" % cls.tls_port, "127.0.0.1:%d" % cls.llm_port, LLM + ":443"):
            r = cls.d.cli("rule", "add", "allow", rule)
            assert r.returncode == 0, r.stderr
        # The store's catalogue: signed by a key this suite trusts.
        need(tools=("openssl",))
        key = os.path.join(cls.tmp, "store.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        store = os.path.join(cls.d.home, "store")
        os.makedirs(store, exist_ok=True)
        with open(os.path.join(store, "trusted.keys"), "w") as f:
            f.write(der[-32:].hex() + "\n")
        with open(os.path.join(store, "catalogue.json"), "w") as f:
            json.dump(CATALOGUE, f, indent=1)
        subprocess.run(["sh", SIGN, key, os.path.join(store, "catalogue.json")], check=True,
                       capture_output=True)
        # A host folder for the Mappings screen.
        cls.share = os.path.join(cls.tmp, "uishare")
        os.makedirs(cls.share)
        with open(os.path.join(cls.share, "hello.txt"), "w") as f:
            f.write("shared from the host\n")

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
                    "NB_UI_ASK_HOST": ASK, "NB_UI_SHARE_DIR": self.share,
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
