#!/usr/bin/python3
"""Gate rules and prompts through the CLI: rule add/ls/rm with bad input,
prompts listed and answered (once, always, deny), `nilbox prompts --watch`
driven through a pseudo-terminal, and A16: an unanswered prompt denies on
its deadline, audited, and names are shown escaped and cut from the front.

Prompts are created with the test-only route POST /v1/test/prompts, which
judges a destination exactly as a proxy connection would (NILBOX_TEST_MODE=1
in the daemon's environment)."""
import json
import os
import pty
import select
import time

from daemon_harness import NILBOX, Daemon, run_tests, wait_for

TIMEOUT_MS = 2500


def daemon(timeout_ms=TIMEOUT_MS):
    d = Daemon()
    d.env.update({"NILBOX_TEST_MODE": "1", "NILBOX_PROMPT_TIMEOUT_MS": str(timeout_ms)})
    d.start("--key-file", os.path.join(d.tmp, "master.key"))
    return d


def post_json(d, path, obj):
    st, _, body = d.unix("POST", path, body=json.dumps(obj).encode(),
                         headers={"Content-Type": "application/json"})
    return st, json.loads(body) if body else None


def ask(d, host, port=443, vm="dev"):
    return post_json(d, "/v1/test/prompts", {"vm": vm, "host": host, "port": port})


def events(d, type_):
    st, _, body = d.unix("GET", "/v1/events?since=0")
    return [e for e in json.loads(body)["events"] if e["type"] == type_]


def pending(d):
    r = d.cli("--json", "prompts")
    assert r.returncode == 0, r
    return json.loads(r.stdout)["prompts"]


def test_rules_add_ls_rm():
    with daemon() as d:
        r = d.cli("rule", "add", "allow", "api.openai.com", "--port", "443")
        assert r.returncode == 0 and "rule 1: allow api.openai.com port 443" in r.stdout, r
        r = d.cli("--json", "rule", "add", "deny", "*.evil.example", "--vm", "dev", "--note",
                  "no trackers")
        assert r.returncode == 0, r
        assert json.loads(r.stdout)["vm"] == "dev"
        r = d.cli("--json", "rule", "add", "allow", "10.1.2.3/8:8080", "--http")
        assert r.returncode == 0, r
        j = json.loads(r.stdout)
        assert j["target"] == "10.0.0.0/8" and j["port"] == 8080 and j["http"] is True, j
        r = d.cli("--json", "rule", "ls")
        rules = json.loads(r.stdout)["rules"]
        assert [x["target"] for x in rules] == ["api.openai.com", "*.evil.example", "10.0.0.0/8"]
        r = d.cli("rule", "ls")
        assert "no trackers" in r.stdout and "any" in r.stdout, r
        # Bad input: a clear message and exit 2 (usage) or 1 (refused by the daemon).
        cases = [
            (["rule", "add", "allow", "10.0.0.0/33"], 1, "not a valid target"),
            (["rule", "add", "allow", "300.1.2.3/8"], 1, "not a valid target"),
            (["rule", "add", "allow", "bad..name"], 1, "not a valid target"),
            (["rule", "add", "allow", "*"], 1, "not a valid target"),
            (["rule", "add", "allow", "a.*.example"], 1, "not a valid target"),
            (["rule", "add", "allow", "x.example:70000"], 1, "not a valid target"),
            (["rule", "add", "allow", "x.example", "--port", "0"], 2, "1 to 65535"),
            (["rule", "add", "allow", "x.example", "--port", "70000"], 2, "1 to 65535"),
            (["rule", "add", "allow", "x.example", "--port", "https"], 2, "1 to 65535"),
            (["rule", "add", "allow", "x.example:443", "--port", "80"], 1, "names port 443"),
            (["rule", "add", "allow", "x.example", "--vm", "bad vm!"], 1, "VM name"),
            (["rule", "add", "maybe", "x.example"], 2, "'allow' or 'deny'"),
            (["rule", "add", "allow"], 2, "needs"),
            (["rule", "add", "allow", "api.openai.com", "--port", "443"], 1, "exists already"),
            (["rule", "rm", "abc"], 2, "rule id"),
            (["rule", "rm", "999"], 4, "no rule with id 999"),
        ]
        for args, code, needle in cases:
            r = d.cli(*args)
            assert r.returncode == code and needle in r.stderr, (args, r)
        r = d.cli("rule", "rm", "2")
        assert r.returncode == 0, r
        r = d.cli("--json", "rule", "ls")
        assert [x["id"] for x in json.loads(r.stdout)["rules"]] == [1, 3]
        # Rules survive a restart (they are in the database).
        d.terminate()
        d.start("--key-file", os.path.join(d.tmp, "master.key"))
        r = d.cli("--json", "rule", "ls")
        assert [x["id"] for x in json.loads(r.stdout)["rules"]] == [1, 3]
        # Rules decide at once, without a prompt.
        st, v = ask(d, "api.openai.com")
        assert st == 200 and v["allowed"] is True and v["reason"] == "allow-rule", v


def test_rule_ids_never_reused():
    """A removed rule's id never names another rule: not after `rule rm`
    of the newest rule, not after a restart, not on a database made before
    ids were AUTOINCREMENT (store migration 5 keeps the old ids)."""
    import sqlite3
    with daemon() as d:
        def add(target):
            r = d.cli("--json", "rule", "add", "allow", target)
            assert r.returncode == 0, r
            return json.loads(r.stdout)["id"]
        a, b = add("a.example"), add("b.example")
        assert d.cli("rule", "rm", str(b)).returncode == 0
        c = add("c.example")
        assert c > b, (b, c)
        assert d.cli("rule", "rm", str(c)).returncode == 0
        d.terminate()
        d.start("--key-file", os.path.join(d.tmp, "master.key"))
        e = add("e.example")
        assert e > c, (c, e)
        assert d.cli("rule", "rm", str(e)).returncode == 0
        r = d.cli("rule", "rm", str(e))
        assert r.returncode == 4 and "no rule with id %d" % e in r.stderr, r
        d.terminate()
        # The table as it was before migration 5: ids 1 and 3 in use, 4 was
        # removed (a plain INTEGER PRIMARY KEY would hand out 4 again).
        db = sqlite3.connect(os.path.join(d.home, "state.db"))
        db.executescript("""
            DROP TABLE egress_rules;
            CREATE TABLE egress_rules (id INTEGER PRIMARY KEY,
              action TEXT NOT NULL CHECK (action IN ('allow', 'deny')), dest TEXT NOT NULL,
              port INTEGER NOT NULL DEFAULT 0 CHECK (port BETWEEN 0 AND 65535),
              vm TEXT NOT NULL DEFAULT '', http INTEGER NOT NULL DEFAULT 0,
              note TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL,
              UNIQUE (action, dest, port, vm));
            INSERT INTO egress_rules (id, action, dest, created_at)
              VALUES (1, 'allow', 'one.example', 1), (3, 'deny', 'three.example', 1);
            DELETE FROM sqlite_sequence WHERE name = 'egress_rules';
            ALTER TABLE vms DROP COLUMN user;
            DELETE FROM schema_migrations WHERE version >= 5;
        """)
        db.commit()
        db.close()
        d.start("--key-file", os.path.join(d.tmp, "master.key"))
        r = d.cli("--json", "rule", "ls")
        rules = json.loads(r.stdout)["rules"]
        assert [(x["id"], x["target"]) for x in rules] == \
            [(1, "one.example"), (3, "three.example")], rules
        f = add("f.example")
        assert f == 4, f
        assert d.cli("rule", "rm", str(f)).returncode == 0
        assert add("g.example") == 5


def test_prompts_list_and_answer():
    with daemon(timeout_ms=20000) as d:
        st, v = ask(d, "new.example.com")
        assert st == 202 and v["pending"], v
        # Concurrent requests for the same VM+name+port share one prompt.
        ask(d, "new.example.com")
        ps = pending(d)
        assert len(ps) == 1 and ps[0]["host"] == "new.example.com" and ps[0]["waiters"] == 2
        r = d.cli("prompts")
        assert "VM 'dev' wants to connect to new.example.com port 443" in r.stdout, r
        pid = ps[0]["id"]
        r = d.cli("prompts", "answer", str(pid), "allow-once")
        assert r.returncode == 0 and "allow-once" in r.stdout, r
        verdicts = wait_for(lambda: events(d, "test.verdict"))
        assert len(verdicts) == 2 and all(x["allowed"] for x in verdicts), verdicts
        assert pending(d) == []
        # allow-once is not remembered: the next connection asks again.
        ask(d, "new.example.com")
        pid = pending(d)[0]["id"]
        r = d.cli("prompts", "answer", str(pid), "allow-always")
        assert r.returncode == 0, r
        r = d.cli("--json", "rule", "ls")
        rules = json.loads(r.stdout)["rules"]
        assert any(x["target"] == "new.example.com" and x["action"] == "allow" and
                   x["vm"] == "dev" and x["port"] == 443 for x in rules), rules
        st, v = ask(d, "new.example.com")
        assert st == 200 and v["allowed"], v
        # deny-always for another name.
        ask(d, "bad.example.com", vm="other")
        pid = pending(d)[0]["id"]
        r = d.cli("prompts", "answer", str(pid), "deny-always")
        assert r.returncode == 0, r
        st, v = ask(d, "bad.example.com", vm="other")
        assert st == 200 and v["allowed"] is False and v["reason"] == "deny-rule", v
        # The rule is scoped to that VM (A9): another VM still gets a prompt.
        st, v = ask(d, "bad.example.com", vm="dev")
        assert st == 202, v
        pid = pending(d)[0]["id"]
        r = d.cli("prompts", "answer", str(pid), "deny-once")
        assert r.returncode == 0, r
        # Gone prompts and bad answers.
        r = d.cli("prompts", "answer", str(pid), "allow-once")
        assert r.returncode == 4 and "no pending prompt" in r.stderr, r
        r = d.cli("prompts", "answer", "1", "maybe")
        assert r.returncode == 2 and "allow-once" in r.stderr, r
        r = d.cli("prompts", "answer", "x", "allow-once")
        assert r.returncode == 2, r
        # Every answer is audited.
        r = d.cli("--json", "audit", "--kind", "prompt.answer")
        answers = [x["detail"]["answer"] for x in json.loads(r.stdout)["rows"]]
        assert answers == ["allow-once", "allow-always", "deny-always", "deny-once"], answers
        r = d.cli("--json", "audit", "--kind", "rule.add")
        assert len(json.loads(r.stdout)["rows"]) == 2


def test_A16_unanswered_prompt_denies():
    with daemon(timeout_ms=800) as d:
        st, v = ask(d, "nobody-answers.example", port=8443)
        assert st == 202, v
        assert len(pending(d)) == 1
        verdict = wait_for(lambda: events(d, "test.verdict"), timeout=10)[0]
        assert verdict["allowed"] is False and verdict["reason"] == "prompt-timeout", verdict
        assert pending(d) == []
        resolved = events(d, "prompt.resolved")
        assert resolved and resolved[0]["reason"] == "prompt-timeout", resolved
        r = d.cli("--json", "audit", "--kind", "gate.decision")
        rows = json.loads(r.stdout)["rows"]
        assert rows and rows[-1]["detail"]["decision"] == "deny", rows
        assert rows[-1]["detail"]["reason"] == "prompt-timeout"
        assert rows[-1]["host"] == "nobody-answers.example" and rows[-1]["port"] == 8443
        r = d.cli("prompts", "answer", str(verdict["prompt_id"]), "allow-once")
        assert r.returncode == 4, r


def test_A16_names_shown_exactly_and_cut():
    with daemon(timeout_ms=20000) as d:
        # A long name that starts like a trusted host: the display keeps the
        # end (the domain that matters) and says what was cut.
        long = ".".join(["api", "openai", "com"] + ["x" * 60] * 3 + ["evil", "example"])
        st, v = ask(d, long)
        assert st == 202, v
        shown = pending(d)[0]["host"]
        assert shown.endswith("evil.example") and "bytes cut]" in shown, shown
        assert not shown.startswith("api.openai.com"), shown
        r = d.cli("prompts")
        assert "evil.example port 443" in r.stdout, r
        # Names that are not names never become prompts.
        for bad in ("api.openai.com\x1b[2K", "a\nb.example", "evil.example\x00.com"):
            st, v = ask(d, bad)
            assert st in (400, 422), (bad, v)


def read_until(fd, needle, timeout=15):
    out = b""
    deadline = time.time() + timeout
    while needle not in out and time.time() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_watch_through_a_pty():
    with daemon(timeout_ms=20000) as d:
        ask(d, "first.example")  # pending before the watcher starts
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(NILBOX, [NILBOX, "prompts", "--watch"], d.env)
        try:
            out = read_until(fd, b"[s]kip?")
            assert b"first.example port 443" in out, out
            assert b"answer with one key" in out, out
            os.write(fd, b"o")  # one key, no Enter
            out = read_until(fd, b"allow-once")
            assert b"allow-once" in out, out
            v = wait_for(lambda: events(d, "test.verdict"))
            assert v[0]["allowed"] is True and v[0]["reason"] == "allow-once", v
            # A prompt that arrives while watching.
            ask(d, "second.example", port=8080, vm="other")
            out = read_until(fd, b"[s]kip?")
            assert b"VM 'other' wants to connect to second.example port 8080" in out, out
            os.write(fd, b"w")
            out = read_until(fd, b"answer o, a, d, n or s")
            assert b"answer o, a, d, n or s" in out, out
            os.write(fd, b"\n")  # blanks are ignored
            os.write(fd, b"n")
            out = read_until(fd, b"deny-always")
            assert b"deny-always" in out, out
            st, v = ask(d, "second.example", port=8080, vm="other")
            assert st == 200 and v["allowed"] is False, v
            # A prompt answered elsewhere while on screen.
            ask(d, "third.example")
            out = read_until(fd, b"[s]kip?")
            assert b"third.example" in out, out
            p = pending(d)[0]
            r = d.cli("prompts", "answer", str(p["id"]), "deny-once")
            assert r.returncode == 0, r
            out = read_until(fd, b"is gone")
            assert b"is gone (denied: deny-once)" in out, out
        finally:
            os.kill(pid, 2)
            _, status = os.waitpid(pid, 0)
            os.close(fd)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


if __name__ == "__main__":
    run_tests([test_rules_add_ls_rm, test_rule_ids_never_reused, test_prompts_list_and_answer,
               test_A16_unanswered_prompt_denies, test_A16_names_shown_exactly_and_cut,
               test_watch_through_a_pty])
