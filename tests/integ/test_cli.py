#!/usr/bin/python3
"""The nilbox CLI: help at every level, usage errors and exit codes,
daemon start/stop/status, auto-start, doctor, events, --json."""
import fcntl
import json
import os
import shutil
import signal
import subprocess

from daemon_harness import NILBOX, Daemon, run_tests


def test_help_everywhere():
    with Daemon() as d:
        for args in (["--help"], ["-h"], ["help"]):
            r = d.cli(*args)
            assert r.returncode == 0 and "daemon" in r.stdout and "doctor" in r.stdout, r
            assert "Exit codes" in r.stdout
        r = d.cli("daemon", "--help")
        assert r.returncode == 0 and "start" in r.stdout and "status" in r.stdout, r
        for verb in ("start", "stop", "status"):
            r = d.cli("daemon", verb, "--help")
            assert r.returncode == 0 and ("usage: nilbox daemon " + verb) in r.stdout, r
        r = d.cli("daemon", "start", "-h")
        assert r.returncode == 0 and "--timeout" in r.stdout
        r = d.cli("doctor", "--help")
        assert r.returncode == 0 and "usage: nilbox doctor" in r.stdout
        r = d.cli("events", "-h")
        assert r.returncode == 0 and "--follow" in r.stdout
        # Help never starts anything.
        assert not d.lock_holder()


def test_version():
    r = subprocess.run([NILBOX, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("nilbox 0."), r
    r = subprocess.run([NILBOX, "--json", "--version"], capture_output=True, text=True)
    assert json.loads(r.stdout)["version"]


def test_usage_errors_exit_2():
    with Daemon() as d:
        cases = [
            ([], "usage:"),
            (["frobnicate"], "unknown command 'frobnicate'"),
            (["deamon"], "did you mean 'daemon'"),
            (["daemon"], "needs a verb"),
            (["daemon", "strat"], "did you mean 'start'"),
            (["daemon", "start", "--bogus"], "unknown option '--bogus'"),
            (["daemon", "start", "--timeout"], "needs a value"),
            (["daemon", "start", "--timeout", "soon"], "whole number"),
            (["daemon", "status", "extra"], "unexpected argument 'extra'"),
            (["doctor", "now"], "unexpected argument"),
            (["--bogus"], "unknown option"),
            (["--home"], "--home needs"),
        ]
        for args, needle in cases:
            r = d.cli(*args)
            assert r.returncode == 2, (args, r)
            assert needle in r.stderr, (args, r.stderr)
            if args and needle != "needs a verb" and needle != "usage:":
                assert "--help" in r.stderr, (args, r.stderr)
        assert not d.lock_holder()


def test_status_not_running_exit_3():
    with Daemon() as d:
        r = d.cli("daemon", "status")
        assert r.returncode == 3 and "not running" in r.stderr, r
        r = d.cli("daemon", "status", "--json")
        assert r.returncode == 3
        j = json.loads(r.stdout)
        assert j["running"] is False and j["home"] == d.home and j["socket"].endswith(".sock")


def test_start_status_stop():
    with Daemon() as d:
        r = d.cli("daemon", "start")
        assert r.returncode == 0, r
        pid = d.lock_holder()
        assert pid and ("pid %d" % pid) in r.stdout and "web UI:" in r.stdout, r.stdout
        r = d.cli("daemon", "start")
        assert r.returncode == 0 and "already running" in r.stdout
        assert d.lock_holder() == pid
        r = d.cli("--json", "daemon", "status")
        assert r.returncode == 0
        j = json.loads(r.stdout)
        assert j["running"] is True and j["pid"] == pid and j["api_url"].startswith("http://127.")
        r = d.cli("daemon", "status")
        assert r.returncode == 0 and "is running" in r.stdout
        r = d.cli("daemon", "stop")
        assert r.returncode == 0 and "stopped" in r.stdout, r
        assert not d.lock_holder()
        assert not os.path.exists(j["socket"])
        r = d.cli("daemon", "stop")
        assert r.returncode == 0 and "not running" in r.stdout
        r = d.cli("daemon", "status")
        assert r.returncode == 3


def test_stop_unresponsive_daemon_by_signal():
    with Daemon() as d:
        d.start()
        os.unlink(d.sock)  # it still holds the lock but cannot be reached
        r = d.cli("daemon", "status")
        assert r.returncode == 3 and "does not answer" in r.stderr, r
        r = d.cli("daemon", "stop")
        assert r.returncode == 0, r
        assert d.proc.wait(timeout=10) == 0


def test_autostart():
    with Daemon() as d:
        # No NILBOXD in the environment: found next to nilbox (build tree).
        r = d.cli("events")
        assert r.returncode == 0, r
        assert "started nilboxd" in r.stderr, r.stderr
        assert "daemon.started" in r.stdout, r.stdout
        pid = d.lock_holder()
        assert pid
        r = d.cli("events", "--json")
        assert r.returncode == 0 and "started" not in r.stderr
        evs = json.loads(r.stdout)["events"]
        assert evs[0]["type"] == "daemon.started" and evs[0]["pid"] == pid
        assert d.lock_holder() == pid  # the second command reused it
        assert d.cli("daemon", "stop").returncode == 0


def test_autostart_failure_is_clear():
    with Daemon() as d:
        r = d.cli("events", env={"NILBOXD": "/bin/false"})
        assert r.returncode == 3, r
        assert "could not start nilboxd" in r.stderr, r.stderr
        r = d.cli("events", env={"NILBOXD": "/nonexistent/nilboxd"})
        assert r.returncode == 3 and "NILBOXD" in r.stderr, r.stderr


def test_lock_held_by_someone_else():
    with Daemon() as d:
        os.makedirs(d.home, mode=0o700)
        with open(os.path.join(d.home, "nilboxd.lock"), "w") as f:
            f.write("%d\n" % os.getpid())
            f.flush()
            # A POSIX record lock conflicts with nilboxd's OFD lock.
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            r = d.cli("daemon", "start")
            assert r.returncode == 3, r
            assert "already running" in r.stderr and str(os.getpid()) in r.stderr, r.stderr


def test_doctor():
    with Daemon() as d:
        r = d.cli("doctor")
        assert r.returncode == 0, r
        for name in ("qemu", "kvm", "keyring", "disk", "home", "runtime", "daemon"):
            assert name in r.stdout, (name, r.stdout)
        assert "not running" in r.stdout  # computed locally, no auto-start
        assert not d.lock_holder()
        r = d.cli("--json", "doctor")
        j = json.loads(r.stdout)
        assert j["ok"] is True and len(j["checks"]) == 7
        # Without QEMU on PATH the doctor fails and says what to install.
        empty = os.path.join(d.tmp, "empty-bin")
        os.makedirs(empty)
        r = d.cli("doctor", env={"PATH": empty})
        assert r.returncode == 1, r
        assert "fail  qemu" in r.stdout and "apt-get install qemu-system-x86" in r.stdout
        # With the daemon up, the answer comes from the daemon.
        d.start()
        r = d.cli("--json", "doctor")
        daemon = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "daemon"][0]
        assert daemon["status"] == "ok" and str(d.proc.pid) in daemon["message"], daemon


def test_doctor_keyring_probe():
    with Daemon() as d:
        r = d.cli("--json", "doctor")
        k = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "keyring"][0]
        assert k["status"] == "warn" and "no D-Bus session bus" in k["message"], k
        assert "passphrase" in k["message"]
        if not shutil.which("dbus-run-session"):
            return
        # A private session bus: the probe must talk D-Bus and answer either way.
        r = subprocess.run(["dbus-run-session", "--", NILBOX, "--json", "doctor"], env=d.env,
                           capture_output=True, text=True, timeout=30)
        k = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "keyring"][0]
        assert "no D-Bus session bus" not in k["message"], k
        assert "Secret Service" in k["message"], k


def test_events_follow():
    with Daemon() as d:
        d.start()
        p = subprocess.Popen([NILBOX, "--json", "events", "--follow", "--since", "0"], env=d.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = json.loads(p.stdout.readline())
            assert first["type"] == "daemon.started", first
            d.proc.send_signal(signal.SIGTERM)
            second = json.loads(p.stdout.readline())
            while not second["type"].startswith("daemon."):  # other modules' events
                second = json.loads(p.stdout.readline())
            assert second["type"] == "daemon.stopping" and second["reason"] == "SIGTERM"
            assert p.wait(timeout=10) == 3  # the stream ended because the daemon went away
            assert "stopping" in p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_daemon_error_printed():
    with Daemon() as d:
        d.start()
        r = d.cli("events", "show", "1")
        assert r.returncode == 0 and "daemon.started" in r.stdout, r
        r = d.cli("events", "show", "999")
        assert r.returncode == 4, r  # the daemon's 404
        assert r.stderr.startswith("nilbox: event 999 is not buffered"), r.stderr
        r = d.cli("--json", "events", "show", "999")
        assert r.returncode == 4 and json.loads(r.stdout)["error"] == "not-found"
        r = d.cli("events", "show")
        assert r.returncode == 2 and "needs ID" in r.stderr, r
        r = d.cli("events", "--since", "x")
        assert r.returncode == 2, r  # caught by the CLI itself
        r = d.cli("--json", "events", "--since", "5")
        assert r.returncode == 0 and json.loads(r.stdout)["events"] == []


def test_bad_ids_are_usage_errors():
    """Every verb that takes an id refuses the same way: exit 2, the noun, where to look, and
    the argument escaped and cut (it is the user's, but may be pasted from anywhere)."""
    with Daemon() as d:
        d.start()
        cases = [
            (["rule", "rm"], "rule", "rule ls"), (["limit", "rm"], "limit", "limit ls"),
            (["share", "rm"], "share", "share ls"), (["secret", "unbind"], "binding", "secret ls"),
            (["events", "show"], "event", "events"),
        ]
        for verb, what, see in cases:
            for bad in ["x", "0", "-3", "+4", " 5", "1a", "", "99999999999999999999999",
                        "\x1b[31m" + "9" * 200]:
                r = d.cli(*verb, "--", bad) if bad.startswith("-") else d.cli(*verb, bad)
                assert r.returncode == 2, (verb, bad, r)
                assert f"id is a number >= 1 (see 'nilbox {see}')" in r.stderr, (verb, bad, r.stderr)
                assert (" an " if what[0] in "aeiou" else " a ") + what + " id" in r.stderr, r.stderr
                assert "\x1b" not in r.stderr and len(r.stderr) < 200, r.stderr
        r = d.cli("prompts", "answer", "0", "allow-once")
        assert r.returncode == 2 and "prompt id is a number" in r.stderr, r
        r = d.cli("rule", "add", "allow", "example.com")
        assert r.returncode == 0, r
        r = d.cli("rule", "rm", "1")
        assert r.returncode == 0 and r.stdout.strip() == "removed rule 1", r
        r = d.cli("rule", "rm", "1")
        assert r.returncode == 4, r


def test_vm_input_errors_say_what_to_do():
    """Bad VM input names the thing and what to do (issue 17), without a VM
    image: sizes, image names, guest users; reals print rounded."""
    import re
    with Daemon() as d:
        d.start()
        r = d.cli("vm", "resize", "default", "abc")
        assert r.returncode == 1 and "'abc' is not a valid disk size" in r.stderr, r
        assert "4G" in r.stderr and "required" not in r.stderr, r
        r = d.cli("vm", "create", "x1", "--image", "nope")
        assert r.returncode == 4, r
        assert "no image named 'nope'" in r.stderr and "image build nope" not in r.stderr, r
        assert "tiny" in r.stderr and "debian" in r.stderr, r
        r = d.cli("vm", "create", "x1", "--user", "Bad!")
        assert r.returncode == 1 and "guest account name" in r.stderr, r
        r = d.cli("vm", "set", "x1", "--user", "bad user")
        assert r.returncode == 1 and "guest account name" in r.stderr, r
        r = d.cli("vm", "set", "nosuch", "--user", "agent")
        assert r.returncode == 4 and "no VM named 'nosuch'" in r.stderr, r
        r = d.cli("vm", "set", "nosuch")
        assert r.returncode == 2 and "--user NAME" in r.stderr, r
        # Reals are printed with 15 significant digits at most (no
        # 9.1799999999999997), in API answers and in the CLI's JSON.
        st, _, body = d.unix("GET", "/v1/status")
        m = re.search(rb'"uptime_s":([0-9.e+-]+)', body)
        assert m and len(m.group(1).replace(b".", b"").lstrip(b"0")) <= 15, body
        r = d.cli("--json", "daemon", "status")
        m = re.search(r'"uptime_s": ([0-9.e+-]+)', r.stdout)
        assert m and len(m.group(1).replace(".", "").lstrip("0")) <= 15, r.stdout


if __name__ == "__main__":
    run_tests([
        test_help_everywhere,
        test_version,
        test_usage_errors_exit_2,
        test_status_not_running_exit_3,
        test_start_status_stop,
        test_stop_unresponsive_daemon_by_signal,
        test_autostart,
        test_autostart_failure_is_clear,
        test_lock_held_by_someone_else,
        test_doctor,
        test_doctor_keyring_probe,
        test_events_follow,
        test_daemon_error_printed,
        test_vm_input_errors_say_what_to_do,
    ])
