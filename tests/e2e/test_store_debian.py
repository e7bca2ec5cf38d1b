#!/usr/bin/env python3
"""Opt-in end to end test (meson suite 'e2e-debian-net': builds the debian
image and reaches Debian's archive and the npm registry through the egress
gate): the shipped, signed catalogue installs an MCP server and an npm CLI
agent into a debian VM, their check commands pass, `store rm` removes the
npm packages; nothing reaches the network before the user accepted the
proposed rules (without them the install is refused and no rule exists).
Env as for test_egress_debian.py."""
import json
import os
import sys
import unittest

from e2e_env import AGENT, CACHE, VmSuite, build_image, need
from proxy_env import wait_store_open

IMG = os.path.join(CACHE, "debian-agent")
VM = "store1"


class StoreDebian(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("mmdebstrap",))
        sys.stderr.write("(debian image: %.0f s)\n" % build_image("debian", IMG, AGENT, 3000))
        cls.d = cls.daemon({"debian": IMG}, None,
                           ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        r = cls.d.cli("vm", "create", VM, "--image", "debian", "--memory", "2048", "--disk", "8G",
                      "--start", timeout=900)
        assert r.returncode == 0, r.stderr

    def test_01_refused_without_rules(self):
        r = self.cli("store", "install", VM, "mcp-everything", ok=False, input="")
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertIn("registry.npmjs.org:443", r.stderr)
        rules = json.loads(self.cli("--json", "rule", "ls").stdout)["rules"]
        self.assertEqual(rules, [])

    def test_02_mcp_server(self):
        self.cli("store", "install", VM, "mcp-everything", "--yes", timeout=1800)
        r = self.cli("exec", VM, "--", "sh", "-c", "command -v mcp-server-everything")
        self.assertIn("mcp-server-everything", r.stdout)

    def test_03_agent_cli(self):
        r = self.cli("store", "install", VM, "claude-code", "--yes", timeout=1800)
        self.assertIn("ANTHROPIC_API_KEY", r.stdout)
        self.cli("exec", VM, "--", "claude", "--version")
        self.cli("store", "rm", VM, "claude-code", timeout=600)
        r = self.cli("exec", VM, "--", "sh", "-c", "command -v claude", ok=False)
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
