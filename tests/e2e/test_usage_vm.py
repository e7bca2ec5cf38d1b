#!/usr/bin/env python3
"""End to end: LLM usage accounting and limits for a real tiny VM (TCG unless KVM).

One nilboxd (test mode), one VM, the fake OpenAI upstream (tests/integ/fake_llm.py)
reached as api.openai.com through the gate, OPENAI_API_KEY bound to it:
  01 the guest's curl posts a chat completion (JSON) with the placeholder key:
     the answer's usage is the upstream's, the usage record names this VM,
     the model and exactly the billed tokens; the upstream got the real key;
  02 the same streamed (SSE, no stream_options): every chunk reaches the
     guest, the usage chunk nilbox asked for is not among them, and the
     record is exact;
  03 `nilbox limit set --vm` just above what was spent: the guest's next
     request gets 429 with the JSON body (error, code, limit, used,
     resets_at, hint) and never reaches the upstream; after `limit rm` it
     goes through again;
  04 the real key never reached the guest: not in its environment, files
     or any answer it got;
  05 the VM stops.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import json
import os
import unittest

from e2e_env import AGENT, TINY, VmSuite, build_image, need, wait_for
import fake_llm
import fake_upstream
from proxy_env import wait_store_open

VM = "us1"
HOST = "api.openai.com"
REAL = "sk-real-usage-e2e-5b8d2f"
URL = "https://%s/v1/chat/completions" % HOST
CURL = ('curl -sS -m 60 %s -H "Authorization: Bearer $OPENAI_API_KEY" '
        '-H "Content-Type: application/json" ' + URL)


def body(stream, max_tokens=8):
    b = {"model": "gpt-4o-mini", "max_tokens": max_tokens,
         "messages": [{"role": "user", "content": "Count the tokens of this VM, please."}]}
    if stream:
        b["stream"] = True
    return "-d '%s'" % json.dumps(b)


class UsageE2E(VmSuite):
    seen = []  # everything the guest printed, for case 04

    @classmethod
    def setup(cls):
        need()
        build_image("tiny", TINY, AGENT)
        ca, cert, key = fake_upstream.make_ca(cls.tmp, names=(HOST, "localhost"))
        cls.log = os.path.join(cls.tmp, "up.jsonl")
        cls.served = os.path.join(cls.tmp, "served.jsonl")
        p, port = fake_llm.spawn(cls.log, cls.served, cert, key)
        cls.procs.append(p)
        cls.d = cls.daemon({"tiny": TINY}, {
            "NILBOX_TEST_MODE": "1", "NILBOX_TEST_UPSTREAM_CA": ca,
            "NILBOX_TEST_RESOLVE": "%s:443:127.0.0.1:%d" % (HOST, port)},
            ["--key-file", os.path.join(cls.tmp, "master.key")])
        wait_store_open(cls.d, 20)
        c = cls.ccli
        c("secret", "set", "OPENAI_API_KEY", input=REAL)
        c("secret", "bind", "OPENAI_API_KEY", "--host", HOST)
        c("rule", "add", "allow", HOST + ":443")
        c("rule", "add", "allow", "127.0.0.1:%d" % port)
        c("vm", "create", VM, timeout=120)
        c("vm", "start", VM, timeout=300)

    @classmethod
    def ccli(cls, *args, input=None, timeout=60):
        r = cls.d.cli(*args, input=input, timeout=timeout)
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def sh(self, script, timeout=120):
        r = self.d.cli("exec", VM, "--", "sh", "-c", script, timeout=timeout)
        self.seen.append(r.stdout + r.stderr)
        return r

    def rows(self, path):
        with open(path) as f:
            return [json.loads(l) for l in f if l.endswith("\n") and l.strip()]

    def records(self):
        r = self.ccli("--json", "usage", "ls", "--vm", VM, "-n", "100")
        return json.loads(r.stdout)["records"]

    def settled(self, n):
        """The VM's records once there are n (settled when the response ends)."""
        return wait_for(lambda: (lambda r: r if len(r) >= n else None)(self.records()),
                        timeout=20, what="%d usage records" % n)

    def check_record(self, rec, served):
        self.assertEqual(rec["vm"], VM, rec)
        self.assertEqual(rec["provider"], "openai", rec)
        self.assertEqual(rec["model"], "gpt-4o-mini-2024-07-18", rec)
        self.assertEqual(rec["secret"], "OPENAI_API_KEY", rec)
        for k in ("input", "output", "cached"):
            self.assertEqual(rec[k], served[k], (k, rec, served))
        self.assertEqual(rec["tokens"], served["input"] + served["output"], rec)
        self.assertIs(rec["estimated"], False, rec)
        self.assertEqual(rec["request_id"], served["request_id"], rec)

    def test_01_json(self):
        r = self.sh(CURL % body(False))
        self.assertEqual(r.returncode, 0, r)
        out = json.loads(r.stdout)
        served = self.rows(self.served)[-1]
        self.assertFalse(served["stream"], served)
        self.assertEqual(out["usage"]["prompt_tokens"], served["input"], out)
        self.assertEqual(out["usage"]["completion_tokens"], served["output"], out)
        self.check_record(self.settled(1)[0], served)
        # The upstream got the real key, injected on the way out.
        hdrs = dict((k.lower(), v) for k, v in self.rows(self.log)[-1]["headers"])
        self.assertEqual(hdrs["authorization"], "Bearer " + REAL)

    def test_02_stream(self):
        r = self.sh(CURL % ("-N " + body(True)))
        self.assertEqual(r.returncode, 0, r)
        events = [l[6:] for l in r.stdout.splitlines() if l.startswith("data: ")]
        served = self.rows(self.served)[-1]
        # nilbox asked upstream for usage; the guest, which did not, never sees it.
        self.assertTrue(served["stream"] and served["include_usage"], served)
        self.assertEqual(events[-1], "[DONE]", r.stdout)
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertEqual(len(chunks), served["output"] + 2, r.stdout)  # role, tokens, stop
        self.assertTrue(all(c["choices"] for c in chunks), r.stdout)
        self.assertFalse([c for c in chunks if c.get("usage")], r.stdout)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        self.assertEqual(text, "tok " * served["output"])
        recs = self.settled(2)
        self.check_record(recs[0], served)  # newest first

    def test_03_limit_blocks_with_readable_429(self):
        used = sum(r["tokens"] for r in self.records())
        # The next request's worst case (body bytes + max_tokens) does not fit.
        lim = json.loads(self.ccli("--json", "limit", "set", "--vm", VM, "--per", "day",
                                   "--tokens", str(used + 10)).stdout)
        n_up = len(self.rows(self.log))
        r = self.sh((CURL % body(False)).replace(
            "curl -sS", "curl -sS -o /tmp/b -D /tmp/h -w '%{http_code}'"))
        self.assertEqual((r.returncode, r.stdout), (0, "429"), r)
        err = json.loads(self.sh("cat /tmp/b").stdout)  # what the agent reads
        head = self.sh("cat /tmp/h").stdout.lower()
        self.assertIn("content-type: application/json", head)
        self.assertEqual(err["code"], "usage-limit", err)
        self.assertIn("usage limit reached", err["error"])
        self.assertEqual(err["limit"]["id"], lim["id"], err)
        self.assertEqual(err["limit"]["unit"], "tokens", err)
        self.assertEqual(err["used"], used, err)
        self.assertTrue(err["resets_at"].endswith("Z") and err["hint"], err)
        self.assertEqual(len(self.rows(self.log)), n_up, "the refused request went upstream")
        self.assertEqual(len(self.records()), 2)
        self.ccli("limit", "rm", str(lim["id"]))
        r = self.sh(CURL % body(False))
        self.assertEqual(json.loads(r.stdout)["usage"]["completion_tokens"], 8, r)
        self.check_record(self.settled(3)[0], self.rows(self.served)[-1])

    def test_04_real_key_never_in_guest(self):
        r = self.sh('echo "$OPENAI_API_KEY"; env; cat /etc/environment /etc/profile.d/* '
                    '2>/dev/null')
        self.assertEqual(r.stdout.splitlines()[0], "OPENAI_API_KEY", r)
        self.assertGreaterEqual(len(self.seen), 5)
        for out in self.seen:
            self.assertNotIn(REAL, out)
        # Nor in the usage records or the CLI's answers about them.
        self.assertNotIn(REAL, json.dumps(self.records()))

    def test_05_stop(self):
        self.ccli("vm", "stop", VM, timeout=120)


if __name__ == "__main__":
    unittest.main(verbosity=2)
