#!/usr/bin/python3
"""Master key providers as the daemon chooses them (DESIGN.md section 7):
an explicit key file (refused unless private), a passphrase (file or
unlock call), the fallback from an unavailable OS keyring (headless: no
D-Bus session bus in these tests) and what `nilbox doctor` says about it,
and A24: with the wrong key the store yields nothing and says why."""
import json
import os
import secrets

from daemon_harness import NILBOXD, Daemon, run_tests, wait_for
import subprocess


def keystore(d):
    st, _, body = d.unix("GET", "/v1/keystore")
    assert st == 200, body
    return json.loads(body)


def wait_state(d, timeout=30):
    return wait_for(lambda: (k := keystore(d))["state"] != "starting" and k, timeout,
                    "the store to leave 'starting'")


def doctor_check(d, name="secrets"):
    r = d.cli("--json", "doctor")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    return checks.get(name), r.returncode


def write_private(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, data)
    os.close(fd)
    os.chmod(path, mode)


def test_keyfile_must_be_private():
    with Daemon() as d:
        kf = os.path.join(d.tmp, "open.key")
        write_private(kf, (secrets.token_hex(32) + "\n").encode(), 0o644)
        p = subprocess.run([NILBOXD, "--foreground", "--key-file", kf], env=d.env,
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 1, p
        assert "mode 0644" in p.stderr and "chmod 600" in p.stderr, p.stderr
        # Daemonized start reports the same reason to the caller.
        p = subprocess.run([NILBOXD, "--key-file", kf], env=d.env, capture_output=True,
                           text=True, timeout=20)
        assert p.returncode == 1 and "chmod 600" in p.stderr, p
        # A symlink to a private file is refused too, and so is garbage.
        good = os.path.join(d.tmp, "good.key")
        write_private(good, (secrets.token_hex(32) + "\n").encode())
        link = os.path.join(d.tmp, "link.key")
        os.symlink(good, link)
        p = subprocess.run([NILBOXD, "--foreground", "--key-file", link], env=d.env,
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 1 and "symbolic link" in p.stderr, p
        bad = os.path.join(d.tmp, "bad.key")
        write_private(bad, b"not hex\n")
        p = subprocess.run([NILBOXD, "--foreground", "--key-file", bad], env=d.env,
                           capture_output=True, text=True, timeout=20)
        assert p.returncode == 1 and "64 hex digits" in p.stderr, p
        # A missing key file is created (0600) for a new store, with a loud warning.
        new = os.path.join(d.tmp, "new.key")
        d.start("--key-file", new)
        k = wait_state(d)
        assert k["state"] == "open" and k["provider"] == "keyfile", k
        assert os.stat(new).st_mode & 0o777 == 0o600
        assert "THE MASTER KEY IS IN A FILE" in d.stderr()
        c, _ = doctor_check(d)
        assert c["status"] == "warn" and "KEY FILE" in c["message"], c


def test_passphrase_file():
    with Daemon() as d:
        pf = os.path.join(d.tmp, "pass")
        write_private(pf, b"correct horse battery staple\n")
        d.env["NILBOX_PASSPHRASE_FILE"] = pf
        d.start()
        k = wait_state(d)
        assert k["state"] == "open" and k["provider"] == "passphrase", k
        assert "keyring is not used" in k["note"], k
        r = d.cli("secret", "set", "PASS_KEY", input="value-under-passphrase")
        assert r.returncode == 0, r
        c, _ = doctor_check(d)
        assert c["status"] == "ok" and "passphrase (Argon2id)" in c["message"], c
        assert "keyring is not used" in c["message"], c
        d.terminate()
        d.start()
        assert wait_state(d)["state"] == "open"
        r = d.cli("--json", "secret", "ls")
        assert [s["name"] for s in json.loads(r.stdout)["secrets"]] == ["PASS_KEY"], r
        # The wrong passphrase opens nothing.
        d.terminate()
        write_private(pf, b"wrong horse\n")
        d.start()
        k = wait_state(d)
        assert k["state"] == "error" and "wrong passphrase" in k["message"], k
        r = d.cli("secret", "ls")
        assert r.returncode == 1 and "does not open this secret store" in r.stderr, r
        c, code = doctor_check(d)
        assert c["status"] == "fail" and code == 1, c


def test_headless_falls_back_to_unlock():
    with Daemon() as d:
        assert "DBUS_SESSION_BUS_ADDRESS" not in d.env
        d.start()
        k = wait_state(d)
        assert k["state"] == "locked" and k["provider"] == "", k
        assert "no D-Bus session bus" in k["note"] or "Secret Service" in k["note"], k
        c, _ = doctor_check(d)
        assert c["status"] == "warn" and "keyring is not used" in c["message"], c
        assert "nilbox secret unlock" in c["hint"], c
        r = d.cli("secret", "set", "K", input="v")
        assert r.returncode == 1 and "nilbox secret unlock" in r.stderr, r
        r = d.cli("secret", "status")
        assert r.returncode == 1 and "locked" in r.stdout, r
        r = d.cli("secret", "unlock", input="short\n")
        assert r.returncode == 1 and "at least 8" in r.stderr, r
        r = d.cli("secret", "unlock", input="a long enough passphrase\n")
        assert r.returncode == 0 and "new passphrase set" in r.stdout, r
        assert keystore(d)["provider"] == "passphrase"
        r = d.cli("secret", "set", "K", input="v-123")
        assert r.returncode == 0, r
        c, _ = doctor_check(d)
        assert c["status"] == "ok" and "passphrase" in c["message"], c
        d.terminate()
        d.start()
        assert wait_state(d)["state"] == "locked"
        r = d.cli("secret", "unlock", input="not the passphrase\n")
        assert r.returncode == 5 and "wrong passphrase" in r.stderr, r
        assert keystore(d)["state"] == "locked"
        r = d.cli("secret", "unlock", input="a long enough passphrase\n")
        assert r.returncode == 0 and "unlocked" in r.stdout, r
        r = d.cli("--json", "secret", "ls")
        assert [s["name"] for s in json.loads(r.stdout)["secrets"]] == ["K"]
        r = d.cli("secret", "unlock", input="x\n")
        assert r.returncode == 0 and "already open" in r.stdout, r
        r = d.cli("--json", "audit", "--kind", "secrets.unlock")
        outcomes = [x["detail"]["outcome"] for x in json.loads(r.stdout)["rows"]]
        assert outcomes == ["open", "wrong-key", "open"], outcomes


def test_A24_wrong_key_file():
    value = "sk-A24-" + secrets.token_hex(12)
    with Daemon() as d:
        ka = os.path.join(d.tmp, "a.key")
        d.start("--key-file", ka)
        assert wait_state(d)["state"] == "open"
        r = d.cli("secret", "set", "REAL_KEY", input=value)
        assert r.returncode == 0, r
        d.terminate()
        kb = os.path.join(d.tmp, "b.key")
        write_private(kb, (secrets.token_hex(32) + "\n").encode())
        d.start("--key-file", kb)
        k = wait_state(d)
        assert k["state"] == "error" and "does not open this secret store" in k["message"], k
        outs = []
        for args in (("secret", "ls"), ("secret", "status"), ("ca", "export"),
                     ("secret", "rm", "REAL_KEY"), ("secret", "bind", "REAL_KEY", "--host",
                                                    "a.example")):
            r = d.cli(*args)
            assert r.returncode == 1, (args, r)
            outs.append(r.stdout + r.stderr)
        assert "wrong key file?" in outs[0], outs[0]
        r = d.cli("secret", "set", "OTHER", input="x")
        assert r.returncode == 1, r
        r = d.cli("--json", "audit", "--kind", "secrets.unlock")
        last = json.loads(r.stdout)["rows"][-1]
        assert last["detail"]["outcome"] == "wrong-key", last
        c, code = doctor_check(d)
        assert c["status"] == "fail" and code == 1, c
        d.terminate()
        for text in outs + [d.stderr()]:
            assert value not in text
        # Nothing was destroyed: the right key still opens it, and the key
        # file recorded at first use is found without the flag.
        d.start()
        k = wait_state(d)
        assert k["state"] == "open" and k["key_file"] == ka, k
        r = d.cli("--json", "secret", "ls")
        assert [s["name"] for s in json.loads(r.stdout)["secrets"]] == ["REAL_KEY"], r


if __name__ == "__main__":
    run_tests([test_keyfile_must_be_private, test_passphrase_file,
               test_headless_falls_back_to_unlock, test_A24_wrong_key_file])
