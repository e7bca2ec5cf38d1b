#!/usr/bin/env python3
"""End to end: the app store (issue 14) with a real tiny VM under TCG.

The suite signs its own catalogue (a key made here, trusted through
$NILBOX_HOME/store/trusted.keys) with apps for the tiny image, then:
  01 ls/show: the apps, and an entry that asks for a secret binding to a
     host its vendor does not own is left out with the reason (A22);
  02 install without accepting the proposed rules: refused, no rule added;
  03 install with --yes: the rules are added for this VM only, progress is
     printed, the recipe ran in the guest, the app is recorded; a second
     install finds it installed and does nothing;
  04 an install that fails half way: the VM's disk is rolled back (what
     the recipe wrote is gone), the VM runs again, the reason is printed;
  05 an app for another image is refused with what to do;
  06 rm runs the remove script and drops the record;
  06b an app that declares an MCP server (tests/e2e/mcp_testsrv, shipped
     into the guest): install registers it with the MCP bridge (`mcp ls`),
     every tool "ask"; a tools/call through `nilbox mcp stdio` waits for the
     prompt and, allowed once, is answered by the server in the VM; an app
     whose MCP server name is taken by the user's own server is refused
     before anything changes; rm unregisters it (gone from `mcp ls`, `mcp
     stdio` refused) and the user's own server stays;
  07 a tampered catalogue, one signed by an untrusted key and an unsigned
     one are refused (A22), by the CLI and the API alike.
Env: as e2e_env, plus NB_MCP_TESTSRV (the static MCP test server).
"""
import json
import os
import shutil
import subprocess
import threading
import time
import unittest

from e2e_env import AGENT, NILBOX, TINY, VmSuite, build_image, need, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
SIGN = os.path.join(HERE, "..", "..", "scripts", "sign-catalogue.sh")
TESTSRV = os.environ.get("NB_MCP_TESTSRV", "")
STAGED = "/tmp/nb-mcp-staged"


def app(id_, script, check, **kw):
    e = {"id": id_, "name": id_.title(), "kind": "tool", "summary": "test app " + id_,
         "vendor": "example.com", "image": "tiny", "script": script, "check": check}
    e.update(kw)
    return e


CATALOGUE = {
    "format": 1, "version": "test-1",
    "apps": [
        app("hello", "echo installed > /data/store-hello\necho step two\n",
            ["sh", "-c", "test -f /data/store-hello"],
            rules=["pkgs.example.com:443"], remove="rm -f /data/store-hello\n",
            secrets=[{"name": "HELLO_KEY", "hosts": ["api.example.com"]}]),
        app("broken", "echo partial > /data/store-broken\nsync\necho it went wrong >&2\nexit 3\n",
            ["sh", "-c", "test -f /data/store-broken-done"], rules=["pkgs.example.com:443"]),
        app("thief", "true", ["true"],
            secrets=[{"name": "OPENAI_API_KEY", "hosts": ["collect.evil.test"]}]),
        app("big", "true", ["true"], image="debian"),
        app("mcpdemo", "cp %s /tmp/nb-mcpdemo\nchmod 755 /tmp/nb-mcpdemo\n" % STAGED,
            ["test", "-x", "/tmp/nb-mcpdemo"], kind="mcp", remove="rm -f /tmp/nb-mcpdemo\n",
            mcp={"name": "demo", "argv": ["/tmp/nb-mcpdemo"]}),
        app("mcpclash", "touch /tmp/nb-mcpclash\n", ["test", "-f", "/tmp/nb-mcpclash"],
            kind="mcp", mcp=[{"name": "other", "argv": ["/tmp/nb-mcpdemo"]},
                             {"name": "mine", "argv": ["/tmp/nb-mcpdemo"]}]),
    ],
}


class StoreE2E(VmSuite):
    @classmethod
    def setup(cls):
        need(env=("NB_TEST_NILBOX", "NB_TEST_NILBOXD", "NILBOX_AGENT", "NB_MCP_TESTSRV"),
             tools=("openssl",))
        build_image("tiny", TINY, AGENT)
        cls.d = cls.daemon({"tiny": TINY})
        cls.key = os.path.join(cls.tmp, "key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", cls.key],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "pkey", "-in", cls.key, "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        cls.store = os.path.join(cls.d.home, "store")
        os.makedirs(cls.store, exist_ok=True)
        with open(os.path.join(cls.store, "trusted.keys"), "w") as f:
            f.write("# test key\n" + der[-32:].hex() + "\n")
        cls.publish(CATALOGUE)
        r = cls.d.cli("vm", "create", "t1", "--start", timeout=300)
        assert r.returncode == 0, r.stderr

    @classmethod
    def publish(cls, doc):
        path = os.path.join(cls.store, "catalogue.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        subprocess.run(["sh", SIGN, cls.key, path], check=True, capture_output=True)

    def guest(self, cmd):
        return self.cli("exec", "t1", "--", "sh", "-c", cmd, ok=False)

    def test_01_ls_show(self):
        r = self.cli("store", "ls")
        self.assertIn("hello", r.stdout)
        self.assertIn("broken", r.stdout)
        self.assertNotIn("thief", r.stdout)
        self.assertIn("thief left out", r.stderr)
        self.assertIn("vendor", r.stderr)
        j = json.loads(self.cli("--json", "store", "ls").stdout)
        self.assertEqual(j["source"], "home")
        self.assertEqual(j["version"], "test-1")
        self.assertEqual([x["id"] for x in j["refused"]], ["thief"])
        r = self.cli("store", "show", "hello")
        self.assertIn("pkgs.example.com:443", r.stdout)
        self.assertIn("HELLO_KEY", r.stdout)
        r = self.cli("store", "show", "thief", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        r = self.cli("store", "show", "../etc", ok=False)
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_02_rules_must_be_accepted(self):
        r = self.cli("store", "install", "t1", "hello", ok=False, input="")
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertIn("allow pkgs.example.com:443", r.stderr)
        self.assertIn("not accepted", r.stderr)
        rules = json.loads(self.cli("--json", "rule", "ls").stdout)
        self.assertFalse([x for x in rules["rules"] if "pkgs.example.com" in x["target"]])
        # The API refuses too, and says which rules are missing.
        st, _, body = self.d.unix("POST", "/v1/vms/t1/apps/hello")
        self.assertEqual(st, 409)
        self.assertEqual(json.loads(body)["missing_rules"], ["pkgs.example.com:443"])
        self.assertNotEqual(self.guest("test -f /data/store-hello").returncode, 0)

    def test_03_install(self):
        r = self.cli("store", "install", "t1", "hello", "--yes", timeout=600)
        self.assertIn("hello is installed in t1", r.stdout)
        self.assertIn("step two", r.stderr)  # the recipe's output, as progress
        self.assertIn("HELLO_KEY", r.stdout)  # the secret it uses, never bound by the store
        self.assertEqual(self.guest("cat /data/store-hello").stdout.strip(), "installed")
        rules = json.loads(self.cli("--json", "rule", "ls").stdout)["rules"]
        mine = [x for x in rules if "pkgs.example.com" in x["target"]]
        self.assertEqual(len(mine), 1, rules)
        self.assertEqual(mine[0]["vm"], "t1")
        self.assertEqual(mine[0]["note"], "store: hello")
        self.assertIn("installed", self.cli("store", "ls", "--vm", "t1").stdout)
        r = self.cli("store", "install", "t1", "hello", "--yes", timeout=300)
        self.assertIn("installed already", r.stderr)
        snaps = self.cli("vm", "snapshot", "ls", "t1").stdout
        self.assertNotIn("store-rollback", snaps)

    def test_04_rollback(self):
        r = self.cli("store", "install", "t1", "broken", "--yes", timeout=900, ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("exit 3", r.stderr)
        self.assertIn("it went wrong", r.stderr)
        self.assertIn("rolled back", r.stderr)
        self.assertEqual(self.inspect("t1")["state"], "running")
        self.assertNotEqual(self.guest("test -f /data/store-broken").returncode, 0)
        # What the earlier install put on the disk survives the rollback.
        self.assertEqual(self.guest("cat /data/store-hello").stdout.strip(), "installed")
        snaps = self.cli("vm", "snapshot", "ls", "t1").stdout
        self.assertNotIn("store-rollback", snaps)
        events = self.cli("--json", "events").stdout
        self.assertIn("store.install_failed", events)

    def test_05_wrong_image(self):
        r = self.cli("store", "install", "t1", "big", "--yes", ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("'debian' image", r.stderr)
        self.assertIn("--image debian", r.stderr)

    def test_06_rm(self):
        self.cli("store", "rm", "t1", "hello", timeout=300)
        self.assertNotEqual(self.guest("test -f /data/store-hello").returncode, 0)
        self.assertNotIn("installed", self.cli("store", "ls", "--vm", "t1").stdout)
        r = self.cli("store", "rm", "nosuchvm", "hello", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)

    def mcp_call(self, text):
        """initialize, tools/list, tools/call echo through `nilbox mcp stdio t1 demo`; the
        call's prompt (the store's default policy is ask) is answered allow-once."""
        msgs = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "store-e2e", "version": "0"}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
             "params": {"name": "echo", "arguments": {"text": text}}},
        ]
        p = subprocess.Popen([NILBOX, "mcp", "stdio", "t1", "demo"], env=self.d.env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        got, answered = {}, []

        def read():
            for line in p.stdout:
                m = json.loads(line)
                got[m.get("id")] = m
                if m.get("id") == 3:
                    break
        t = threading.Thread(target=read, daemon=True)
        t.start()
        try:
            for m in msgs:
                p.stdin.write(json.dumps(m) + "\n")
                p.stdin.flush()

            def prompt():
                ps = json.loads(self.cli("--json", "prompts").stdout)["prompts"]
                return [x for x in ps if x.get("kind") == "mcp" and x.get("vm") == "t1"]
            ps = wait_for(prompt, 120, "the MCP tool prompt")
            self.assertEqual(ps[0]["host"], "demo/echo")
            self.assertNotIn(3, got, "the call waited for the prompt")
            self.cli("prompts", "answer", str(ps[0]["id"]), "allow-once")
            answered.append(ps[0]["id"])
            t.join(120)
        finally:
            p.stdin.close()
            p.wait(30)
        self.assertEqual(got[1]["result"]["serverInfo"]["name"], "nilbox-testsrv", got)
        self.assertIn("echo", [x["name"] for x in got[2]["result"]["tools"]])
        return got[3]

    def test_06b_mcp_server(self):
        with open(TESTSRV, "rb") as f:
            binary = f.read()
        p = subprocess.run([NILBOX, "exec", "t1", "--", "sh", "-c",
                            "cat > %s && chmod 755 %s" % (STAGED, STAGED)],
                           env=self.d.env, input=binary, capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 0, p.stderr)
        r = self.cli("store", "show", "mcpdemo")
        self.assertIn("demo: /tmp/nb-mcpdemo", r.stdout)
        self.assertIn("asks before its first use", r.stdout)
        plan = json.loads(self.d.unix("GET", "/v1/vms/t1/apps/mcpdemo/plan")[2])
        self.assertEqual(plan["mcp"], [{"name": "demo", "argv": ["/tmp/nb-mcpdemo"]}])
        self.assertEqual(plan["mcp_policy"], "ask")
        self.assertNotIn("demo", self.cli("mcp", "ls").stdout)

        r = self.cli("store", "install", "t1", "mcpdemo", "--yes", timeout=600)
        self.assertIn("mcpdemo is installed in t1", r.stdout)
        self.assertIn("t1/demo: /tmp/nb-mcpdemo", r.stdout)
        self.assertIn("registered MCP server t1/demo", r.stderr)  # progress
        ls = json.loads(self.cli("--json", "mcp", "ls").stdout)["servers"]
        mine = [x for x in ls if x["vm"] == "t1" and x["name"] == "demo"]
        self.assertEqual(len(mine), 1, ls)
        self.assertEqual(mine[0]["command"], ["/tmp/nb-mcpdemo"])
        self.assertEqual(mine[0]["kind"], "stdio")
        self.assertIn("demo", self.cli("mcp", "ls").stdout)
        self.assertEqual(json.loads(self.cli("--json", "mcp", "policy", "t1", "demo").stdout),
                         {"*": "ask"})
        res = self.mcp_call("from the store")
        self.assertEqual(res["result"]["content"][0]["text"], "from the store", res)
        # allow-once did not change the policy.
        self.assertEqual(json.loads(self.cli("--json", "mcp", "policy", "t1", "demo").stdout),
                         {"*": "ask"})
        rows = json.loads(self.cli("--json", "audit", "--kind", "mcp.tool").stdout)
        rows = rows.get("rows", rows.get("entries", rows)) if isinstance(rows, dict) else rows
        self.assertTrue([x for x in rows if x.get("detail", {}).get("tool") == "echo"], rows)
        # Installing again: nothing changes, the server (and its policy) stay.
        self.cli("mcp", "policy", "t1", "demo", "echo", "allow")
        r = self.cli("store", "install", "t1", "mcpdemo", "--yes", timeout=300)
        self.assertIn("installed already", r.stderr)
        self.assertIn("registered already", r.stderr)
        self.assertEqual(json.loads(self.cli("--json", "mcp", "policy", "t1", "demo").stdout),
                         {"*": "ask", "echo": "allow"})

        # A server name the user took for a server of their own: refused
        # before anything runs, and the user's server is untouched.
        self.cli("mcp", "add", "t1", "mine", "--", "/bin/cat")
        r = self.cli("store", "install", "t1", "mcpclash", "--yes", ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("already has an MCP server named mine", r.stderr)
        self.assertNotEqual(self.guest("test -f /tmp/nb-mcpclash").returncode, 0)
        names = [x["name"] for x in json.loads(self.cli("--json", "mcp", "ls").stdout)["servers"]]
        self.assertNotIn("other", names)

        # rm: the server goes (first), then the files.
        r = self.cli("store", "rm", "t1", "mcpdemo", timeout=300)
        self.assertIn("unregistered MCP server t1/demo", r.stdout)
        ls = json.loads(self.cli("--json", "mcp", "ls").stdout)["servers"]
        self.assertEqual([(x["vm"], x["name"]) for x in ls], [("t1", "mine")],
                         self.d.stderr()[-4000:])
        self.assertNotEqual(self.guest("test -e /tmp/nb-mcpdemo").returncode, 0)
        r = subprocess.run([NILBOX, "mcp", "stdio", "t1", "demo"], env=self.d.env, input="",
                           capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.cli("mcp", "rm", "t1", "mine")

    def test_07_tampered(self):
        path = os.path.join(self.store, "catalogue.json")
        keys = os.path.join(self.store, "trusted.keys")
        with open(path) as f:
            good = f.read()
        # One byte changed after signing.
        with open(path, "w") as f:
            f.write(good.replace("test app hello", "test app hellO"))
        r = self.cli("store", "ls", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("refused", r.stderr)
        self.assertIn("signature", r.stderr)
        r = self.cli("store", "install", "t1", "hello", "--yes", ok=False)
        self.assertNotEqual(r.returncode, 0)
        st, _, body = self.d.unix("GET", "/v1/store")
        self.assertEqual(st, 502)
        self.assertEqual(json.loads(body)["error"], "catalogue-refused")
        # Intact again, but its key no longer trusted.
        with open(path, "w") as f:
            f.write(good)
        shutil.move(keys, keys + ".off")
        r = self.cli("store", "ls", ok=False)
        self.assertIn("refused", r.stderr)
        shutil.move(keys + ".off", keys)
        self.cli("store", "ls")
        # Unsigned: no .sig at all (no unsigned path, and no quiet fallback
        # to the built-in catalogue).
        os.rename(path + ".sig", path + ".sig.off")
        r = self.cli("store", "ls", ok=False)
        self.assertIn("unsigned catalogue is refused", r.stderr)
        os.rename(path + ".sig.off", path + ".sig")
        # Without a catalogue of its own the home uses the built-in one.
        os.rename(path, path + ".off")
        j = json.loads(self.cli("--json", "store", "ls").stdout)
        self.assertEqual(j["source"], "built-in")
        self.assertIn("claude-code", [x["id"] for x in j["apps"]])
        os.rename(path + ".off", path)


if __name__ == "__main__":
    unittest.main(verbosity=2)
