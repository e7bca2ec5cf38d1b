#!/usr/bin/python3
"""The audit log through the CLI: query filters, verify, export (checked
by an independent verifier written here from docs/internals/audit.md), the
append-only triggers, and tamper detection after an attacker with file
access drops them."""
import hashlib
import json
import os
import struct
import subprocess
import time

from daemon_harness import Daemon, run_tests


def start(d):
    d.start("--key-file", os.path.join(d.tmp, "master.key"))
    deadline = time.time() + 15
    while time.time() < deadline:
        st, _, body = d.unix("GET", "/v1/keystore")
        if st == 200 and json.loads(body)["state"] == "open":
            return
        time.sleep(0.05)
    raise AssertionError("store not open")


def row_hash(prev_hex, row):
    """SHA-256(prev || "nilbox.audit.v1\\0" || be64 seq || be64 time_ms ||
    lp(kind) || lp(vm) || lp(host) || be64 port || lp(detail)); lp = be64
    length + bytes; vm/host "" when null, port 0 when null."""
    def lp(s):
        b = s.encode()
        return struct.pack(">Q", len(b)) + b
    detail = json.dumps(row["detail"], separators=(",", ":"), sort_keys=True,
                        ensure_ascii=False)
    h = hashlib.sha256()
    h.update(bytes.fromhex(prev_hex))
    h.update(b"nilbox.audit.v1\0")
    h.update(struct.pack(">QQ", row["seq"], row["time_ms"]))
    h.update(lp(row["kind"]) + lp(row["vm"] or "") + lp(row["host"] or ""))
    h.update(struct.pack(">Q", row["port"] or 0))
    h.update(lp(detail))
    return h.hexdigest()


def make_rows(d):
    d.cli("secret", "set", "A_KEY", input="aaaaaaaaaaaa")
    d.cli("secret", "bind", "A_KEY", "--host", "a.example", "--vm", "vm1")
    d.cli("rule", "add", "allow", "a.example", "--port", "443", "--vm", "vm1")
    d.cli("rule", "add", "deny", "*.evil.example")
    d.cli("secret", "rm", "A_KEY")


def sqlite(db, sql):
    return subprocess.run(["sqlite3", db, sql], capture_output=True, text=True, timeout=20)


def test_query_filters():
    with Daemon() as d:
        start(d)
        make_rows(d)
        r = d.cli("--json", "audit")
        assert r.returncode == 0, r
        rows = json.loads(r.stdout)["rows"]
        kinds = [x["kind"] for x in rows]
        assert kinds[0] == "daemon.lifecycle" and "secrets.unlock" in kinds, kinds
        assert [x["seq"] for x in rows] == list(range(1, len(rows) + 1))
        r = d.cli("--json", "audit", "--kind", "rule.add")
        rr = json.loads(r.stdout)["rows"]
        assert [x["host"] for x in rr] == ["a.example", "*.evil.example"], rr
        assert rr[0]["port"] == 443 and rr[0]["vm"] == "vm1"
        r = d.cli("--json", "audit", "--vm", "vm1")
        assert {x["kind"] for x in json.loads(r.stdout)["rows"]} == {"secret.bind", "rule.add"}
        r = d.cli("--json", "audit", "--kind", "secret.*", "--limit", "2")
        rr = json.loads(r.stdout)["rows"]
        assert [x["kind"] for x in rr] == ["secret.bind", "secret.rm"], rr
        r = d.cli("--json", "audit", "--since", "1h")
        assert len(json.loads(r.stdout)["rows"]) == len(rows)
        r = d.cli("--json", "audit", "--since", "2999-01-01")
        assert json.loads(r.stdout)["rows"] == []
        r = d.cli("audit", "--kind", "rule.add")
        assert r.returncode == 0 and "a.example:443" in r.stdout, r
        # Bad filters: clear errors.
        r = d.cli("audit", "--since", "yesterday")
        assert r.returncode == 1 and "'since' is a time" in r.stderr, r
        r = d.cli("audit", "--kind", "DROP TABLE")
        assert r.returncode == 1 and "'kind'" in r.stderr, r
        r = d.cli("audit", "--limit", "0")
        assert r.returncode == 2, r
        r = d.cli("audit", "bogus")
        assert r.returncode == 2, r


def test_export_and_independent_verify():
    with Daemon() as d:
        start(d)
        make_rows(d)
        out = os.path.join(d.tmp, "audit.jsonl")
        r = d.cli("audit", "export", out)
        assert r.returncode == 0 and "exported" in r.stdout, r
        assert os.stat(out).st_mode & 0o777 == 0o600
        with open(out) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) >= 7
        prev = "0" * 64
        for row in rows:
            assert row["prev_hash"] == prev, row
            assert row_hash(prev, row) == row["hash"], row
            prev = row["hash"]
        r = d.cli("--json", "audit", "verify")
        v = json.loads(r.stdout)
        assert r.returncode == 0 and v["ok"] and v["head_hash"] == prev, r
        r = d.cli("audit", "export", "-")
        assert r.returncode == 0 and len(r.stdout.splitlines()) >= len(rows), r


def test_triggers_then_tamper_detected():
    with Daemon() as d:
        start(d)
        make_rows(d)
        r = d.cli("audit", "verify")
        assert r.returncode == 0 and "intact" in r.stdout, r
        d.terminate()
        db = os.path.join(d.home, "state.db")
        # The schema refuses edits...
        r = sqlite(db, "UPDATE audit SET detail = '{}' WHERE seq = 3")
        assert r.returncode != 0 and "append-only" in r.stderr, r
        r = sqlite(db, "DELETE FROM audit WHERE seq = 3")
        assert r.returncode != 0 and "append-only" in r.stderr, r
        r = sqlite(db, "INSERT INTO audit (seq, time_ms, kind, detail, prev_hash, hash)"
                       " VALUES (1000, 0, 'x', '{}', 'x', 'x')")
        assert r.returncode != 0 and "chain" in r.stderr, r
        # ...until someone with the file drops the trigger.
        r = sqlite(db, "DROP TRIGGER audit_no_update; UPDATE audit SET detail ="
                       " '{\"forged\":true}' WHERE seq = 4;")
        assert r.returncode == 0, r
        start(d)
        r = d.cli("audit", "verify")
        assert r.returncode == 1 and "BROKEN at seq 4" in r.stdout, r
        r = d.cli("--json", "audit", "verify")
        v = json.loads(r.stdout)
        assert v["ok"] is False and v["first_bad_seq"] == 4 and v["head_seq"] == 3, v
        # New rows still append (the chain continues from the stored head).
        r = d.cli("rule", "add", "allow", "b.example")
        assert r.returncode == 0, r


def test_deleted_row_detected():
    with Daemon() as d:
        start(d)
        make_rows(d)
        d.terminate()
        db = os.path.join(d.home, "state.db")
        r = sqlite(db, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 2;")
        assert r.returncode == 0, r
        start(d)
        r = d.cli("--json", "audit", "verify")
        v = json.loads(r.stdout)
        assert r.returncode == 1 and v["first_bad_seq"] == 2 and "missing" in v["reason"], v


if __name__ == "__main__":
    run_tests([test_query_filters, test_export_and_independent_verify,
               test_triggers_then_tamper_detected, test_deleted_row_detected])
