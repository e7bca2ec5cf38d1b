#!/usr/bin/python3
"""Secrets through the CLI and the API: set/ls/rm/bind/unbind round trips
with values on stdin or typed at a hidden prompt, the refusal of values on
the command line, bad input, and A23: a value never shows up in an API
answer, the daemon log, the audit table, the events, or any file under
NILBOX_HOME except as ciphertext."""
import json
import os
import pty
import secrets
import select
import subprocess
import time

from daemon_harness import NILBOX, Daemon, run_tests


def start_with_keyfile(d):
    kf = os.path.join(d.tmp, "master.key")
    d.start("--key-file", kf)
    wait_open(d)
    return kf


def wait_open(d, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st, _, body = d.unix("GET", "/v1/keystore")
        if st == 200 and json.loads(body)["state"] != "starting":
            return json.loads(body)
        time.sleep(0.05)
    raise AssertionError("the secret store did not open")


def all_bytes_under(root):
    for base, _, files in os.walk(root):
        for f in files:
            p = os.path.join(base, f)
            try:
                with open(p, "rb") as fh:
                    yield p, fh.read()
            except OSError:
                pass


def test_roundtrip_stdin():
    with Daemon() as d:
        start_with_keyfile(d)
        r = d.cli("secret", "set", "OPENAI_API_KEY", input="sk-test-value-1\n")
        assert r.returncode == 0 and "created OPENAI_API_KEY (version 1)" in r.stdout, r
        r = d.cli("secret", "set", "OPENAI_API_KEY", input="sk-test-value-2")
        assert r.returncode == 0 and "updated OPENAI_API_KEY (version 2)" in r.stdout, r
        r = d.cli("secret", "bind", "OPENAI_API_KEY", "--host", "api.openai.com",
                  "--path-prefix", "/v1")
        assert r.returncode == 0 and "Authorization: Bearer {secret}" in r.stdout, r
        r = d.cli("secret", "set", "GH_TOKEN", input="ghp_xyz")
        assert r.returncode == 0, r
        r = d.cli("--json", "secret", "bind", "GH_TOKEN", "--host", "*.github.com", "--basic",
                  "x-access-token", "--vm", "dev")
        assert r.returncode == 0, r
        b = json.loads(r.stdout)
        assert b["placement"] == "basic" and b["user"] == "x-access-token" and b["vm"] == "dev"
        r = d.cli("--json", "secret", "bind", "GH_TOKEN", "--host", "maps.example.com",
                  "--query", "key", "--allow-cleartext")
        assert r.returncode == 0, r
        qid = json.loads(r.stdout)["id"]
        assert json.loads(r.stdout)["allow_cleartext"] is True
        r = d.cli("--json", "secret", "ls")
        assert r.returncode == 0, r
        ls = json.loads(r.stdout)["secrets"]
        names = [s["name"] for s in ls]
        assert names == ["GH_TOKEN", "OPENAI_API_KEY"], names
        oa = [s for s in ls if s["name"] == "OPENAI_API_KEY"][0]
        assert oa["version"] == 2 and len(oa["bindings"]) == 1
        assert oa["bindings"][0]["path_prefix"] == "/v1"
        assert "value" not in json.dumps(ls)
        r = d.cli("secret", "ls")
        assert "OPENAI_API_KEY" in r.stdout and "api.openai.com/v1" in r.stdout, r
        # Duplicate binding: a clear conflict.
        r = d.cli("secret", "bind", "OPENAI_API_KEY", "--host", "api.openai.com",
                  "--path-prefix", "/v1")
        assert r.returncode == 1 and "exists already" in r.stderr, r
        r = d.cli("secret", "unbind", str(qid))
        assert r.returncode == 0, r
        r = d.cli("secret", "unbind", str(qid))
        assert r.returncode == 4, r
        r = d.cli("secret", "rm", "GH_TOKEN")
        assert r.returncode == 0 and "removed GH_TOKEN" in r.stdout, r
        r = d.cli("secret", "rm", "GH_TOKEN")
        assert r.returncode == 4, r
        r = d.cli("--json", "secret", "ls")
        assert [s["name"] for s in json.loads(r.stdout)["secrets"]] == ["OPENAI_API_KEY"]
        # Every change left an audit row with the name only.
        r = d.cli("--json", "audit", "--kind", "secret.*")
        kinds = [row["kind"] for row in json.loads(r.stdout)["rows"]]
        assert kinds.count("secret.set") == 3 and "secret.rm" in kinds, kinds
        assert "secret.bind" in kinds and "secret.unbind" in kinds, kinds


def test_binary_value():
    """Any bytes are a value (NUL, 0xff, CR, LF inside): the CLI sends them
    raw, the daemon stores them as they are."""
    value = b"\x00bin\xff\r\n" + secrets.token_bytes(24) + b"\n\x00\xfe\xff-end"
    with Daemon() as d:
        start_with_keyfile(d)
        r = subprocess.run([NILBOX, "--json", "secret", "set", "BIN_KEY"], env=d.env,
                           input=value, capture_output=True, timeout=60)
        assert r.returncode == 0 and json.loads(r.stdout)["created"], r
        # One trailing newline is dropped (a value piped from `echo`), no more.
        r = subprocess.run([NILBOX, "secret", "set", "NL_KEY"], env=d.env,
                           input=b"a\nb\n\n", capture_output=True, timeout=60)
        assert r.returncode == 0, r
        st, _, body = d.unix("GET", "/v1/secrets")
        assert st == 200 and value not in body
        names = {s["name"] for s in json.loads(body)["secrets"]}
        assert names == {"BIN_KEY", "NL_KEY"}, body


def test_value_never_from_argv():
    with Daemon() as d:
        start_with_keyfile(d)
        r = d.cli("secret", "set", "MY_KEY", "sk-on-the-command-line")
        assert r.returncode == 2, r
        assert "never put a secret value on the command line" in r.stderr, r
        r = d.cli("--json", "secret", "ls")
        assert json.loads(r.stdout)["secrets"] == [], r.stdout
        # No option takes a value either.
        r = d.cli("secret", "set", "MY_KEY", "--value", "x")
        assert r.returncode == 2 and "unknown option" in r.stderr, r


def test_bad_input():
    with Daemon() as d:
        start_with_keyfile(d)
        for bad in ("bad-name", "1ABC", "a b", "x" * 129, "nilbox.ca.key"):
            r = d.cli("secret", "set", bad, input="v")
            assert r.returncode == 2 and "not a secret name" in r.stderr, (bad, r)
        r = d.cli("secret", "set", "EMPTY", input="")
        assert r.returncode == 1 and "empty" in r.stderr, r
        r = d.cli("secret", "set", "HUGE", input="x" * 70000)
        assert r.returncode == 1 and "longer than" in r.stderr, r
        r = d.cli("secret", "bind", "NOPE", "--host", "a.example")
        assert r.returncode == 4 and "no secret named" in r.stderr, r
        d.cli("secret", "set", "K", input="v")
        r = d.cli("secret", "bind", "K")
        assert r.returncode == 2 and "--host" in r.stderr, r
        r = d.cli("secret", "bind", "K", "--host", "a.example", "--header", "Host: {secret}")
        assert r.returncode == 1 and "header" in r.stderr, r
        r = d.cli("secret", "bind", "K", "--host", "a.example", "--header", "X-Key: nope")
        assert r.returncode == 1, r
        r = d.cli("secret", "bind", "K", "--host", "bad..host")
        assert r.returncode == 1 and "not valid" in r.stderr, r
        r = d.cli("secret", "bind", "K", "--host", "a.example", "--path-prefix", "/v1/../x")
        assert r.returncode == 1, r
        r = d.cli("secret", "bind", "K", "--host", "a.example", "--basic", "u", "--query", "q")
        assert r.returncode == 2 and "one placement" in r.stderr, r
        r = d.cli("secret", "unbind", "zero")
        assert r.returncode == 2, r
        # Unknown names and ids: named, with where to look (exit 4).
        r = d.cli("secret", "rm", "NO_SUCH_KEY")
        assert r.returncode == 4 and "no secret named 'NO_SUCH_KEY'" in r.stderr, r
        assert "nilbox secret ls" in r.stderr, r
        r = d.cli("secret", "unbind", "4242")
        assert r.returncode == 4 and "no binding #4242" in r.stderr, r
        assert "nilbox secret ls" in r.stderr, r
        # Straight to the API: the value is the raw body, never JSON.
        octet = {"Content-Type": "application/octet-stream"}
        st, _, body = d.unix("PUT", "/v1/secrets/K", body=b'{"value": "x"}',
                             headers={"Content-Type": "application/json"})
        assert st == 415 and b"application/octet-stream" in body, body
        st, _, body = d.unix("PUT", "/v1/secrets/K", body=b"x")
        assert st == 415, body
        st, _, body = d.unix("PUT", "/v1/secrets/K", body=b"", headers=octet)
        assert st == 400 and b"empty" in body, body
        st, _, body = d.unix("PUT", "/v1/secrets/K", body=b"x" * 65537, headers=octet)
        assert st == 413 and b"65536" in body, body
        st, _, body = d.unix("PUT", "/v1/secrets/K", body=b"x" * 65536, headers=octet)
        assert st == 200 and json.loads(body)["name"] == "K", body
        st, _, body = d.unix("PUT", "/v1/secrets/bad-name", body=b"x", headers=octet)
        assert st == 422 and b"placeholder name" in body, body
        st, _, body = d.unix("POST", "/v1/keystore/unlock", body=b'{"passphrase": "x"}',
                             headers={"Content-Type": "application/json"})
        assert st == 415, body
        st, _, body = d.unix("POST", "/v1/keystore/unlock", body=b"p" * 20, headers=octet)
        assert st == 409 and b"not waiting for a passphrase" in body, body


def test_hidden_prompt_on_a_tty():
    """On a terminal the value is asked for with echo off."""
    with Daemon() as d:
        start_with_keyfile(d)
        value = "typed-" + secrets.token_hex(8)
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(NILBOX, [NILBOX, "secret", "set", "TYPED_KEY"], d.env)
        out = b""
        deadline = time.time() + 15
        while b"not shown" not in out and time.time() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                out += os.read(fd, 4096)
        assert b"Value for TYPED_KEY" in out, out
        os.write(fd, (value + "\n").encode())
        while time.time() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if b"created" in out:
                break
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        assert os.WEXITSTATUS(status) == 0, out
        assert b"created TYPED_KEY" in out, out
        assert value.encode() not in out, "the value was echoed: %r" % out


def pty_run(argv, env, steps, timeout=20):
    """Runs argv on a pty; for each (needle, reply) waits for needle in the
    output and types reply. Returns (exit status, all output)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    out = b""
    deadline = time.time() + timeout
    try:
        for needle, reply in steps:
            while needle not in out and time.time() < deadline:
                if select.select([fd], [], [], 0.5)[0]:
                    try:
                        out += os.read(fd, 4096)
                    except OSError:
                        break
            assert needle in out, out
            if reply is not None:
                os.write(fd, reply)
        while time.time() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.WEXITSTATUS(status), out


def test_locked_store_is_visible():
    """With the passphrase provider every restart leaves the store locked:
    daemon status (text and JSON), doctor and the event stream say so, and
    `daemon start` on a terminal offers to unlock it (hidden input)."""
    pw = "a long enough passphrase"
    with Daemon() as d:
        assert "DBUS_SESSION_BUS_ADDRESS" not in d.env
        d.start()
        wait_open(d)
        r = d.cli("secret", "unlock", input=pw + "\n")
        assert r.returncode == 0 and "new passphrase set" in r.stdout, r
        d.terminate()
        d.start()
        assert wait_open(d)["state"] == "locked"
        r = d.cli("--json", "daemon", "status")
        sec = json.loads(r.stdout)["secrets"]
        assert sec["state"] == "locked" and sec["provider"] == "passphrase", sec
        assert "nilbox secret unlock" in sec["hint"] and "503" in sec["hint"], sec
        r = d.cli("daemon", "status")
        assert r.returncode == 0 and "secrets:   LOCKED" in r.stdout, r
        assert "nilbox secret unlock" in r.stdout, r
        r = d.cli("--json", "doctor")
        c = {x["name"]: x for x in json.loads(r.stdout)["checks"]}["secrets"]
        assert c["status"] == "warn" and "LOCKED" in c["message"], c
        assert "nilbox secret unlock" in c["hint"], c
        st, _, body = d.unix("GET", "/v1/events?since=0")
        ev = [e for e in json.loads(body)["events"] if e["type"] == "secrets.state"]
        assert ev and ev[-1]["state"] == "locked" and ev[-1]["locked"] is True, ev
        assert "nilbox secret unlock" in ev[-1]["hint"], ev
        # Not on a terminal: no question, nothing read from stdin.
        r = d.cli("daemon", "start", input=pw + "\n")
        assert r.returncode == 0 and "Passphrase" not in r.stderr, r
        assert json.loads(d.cli("--json", "secret", "status").stdout)["state"] == "locked"
        # On a terminal: an empty line skips...
        code, out = pty_run([NILBOX, "daemon", "start"], d.env,
                            [(b"unlock it now (empty: not now): ", b"\n")])
        assert code == 0 and b"not unlocked" in out, out
        # ...and the passphrase unlocks, without echo.
        code, out = pty_run([NILBOX, "daemon", "start"], d.env,
                            [(b"the secret store is locked", None),
                             (b"unlock it now (empty: not now): ", (pw + "\n").encode())])
        assert code == 0 and b"the secret store is open (unlocked)" in out, out
        assert pw.encode() not in out, out
        r = d.cli("--json", "daemon", "status")
        assert json.loads(r.stdout)["secrets"]["state"] == "open", r
        r = d.cli("daemon", "status")
        assert "secrets:   open (passphrase)" in r.stdout, r
        st, _, body = d.unix("GET", "/v1/events?since=0")
        ev = [e for e in json.loads(body)["events"] if e["type"] == "secrets.state"]
        assert ev[-1]["state"] == "open" and ev[-1]["locked"] is False, ev
        # Open already: daemon start asks nothing.
        code, out = pty_run([NILBOX, "daemon", "start"], d.env, [(b"already running", None)])
        assert code == 0 and b"Passphrase" not in out, out


def test_A23_value_nowhere_in_clear():
    value = "sk-A23-" + secrets.token_hex(16)
    with Daemon() as d:
        start_with_keyfile(d)
        seen = []
        for args, inp in (
            (("secret", "set", "LEAKY_KEY"), value + "\n"),
            (("secret", "bind", "LEAKY_KEY", "--host", "api.example.com"), None),
            (("--json", "secret", "ls"), None),
            (("secret", "ls"), None),
            (("--json", "secret", "status"), None),
            (("--json", "audit"), None),
            (("--json", "events"), None),
            (("--json", "doctor"), None),
            (("audit", "export", "-"), None),
            (("secret", "rm", "LEAKY_KEY"), None),
            (("secret", "set", "LEAKY_KEY"), value),
        ):
            r = d.cli(*args, input=inp)
            assert r.returncode in (0, 1), (args, r)
            seen.append(r.stdout + r.stderr)
        for path in ("/v1/secrets", "/v1/keystore", "/v1/audit?limit=1000", "/v1/events",
                     "/v1/bindings", "/v1/status"):
            st, _, body = d.unix("GET", path)
            seen.append(body.decode(errors="replace"))
        for text in seen:
            assert value not in text, text
        # The audit guard knows the value: a row that carried it would be redacted.
        d.terminate()
        assert d.proc.returncode == 0
        hits = [p for p, data in all_bytes_under(d.tmp) if value.encode() in data]
        assert hits == [], hits
        # The secret is there, sealed: a restart with the same key reads it.
        d.start("--key-file", os.path.join(d.tmp, "master.key"))
        wait_open(d)
        r = d.cli("--json", "secret", "ls")
        assert [s["name"] for s in json.loads(r.stdout)["secrets"]] == ["LEAKY_KEY"]


if __name__ == "__main__":
    run_tests([test_roundtrip_stdin, test_binary_value, test_value_never_from_argv, test_bad_input,
               test_locked_store_is_visible,
               test_hidden_prompt_on_a_tty, test_A23_value_nowhere_in_clear])
