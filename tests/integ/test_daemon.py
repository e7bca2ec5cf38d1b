#!/usr/bin/python3
"""nilboxd lifecycle: folders and permissions, the one-daemon-per-home lock,
clean shutdown on SIGTERM/SIGINT, daemonizing, restarts, stale sockets."""
import json
import os
import signal
import sqlite3
import stat
import subprocess
import time

from daemon_harness import NILBOXD, Daemon, run_tests


def mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_folders_and_permissions():
    with Daemon() as d:
        d.start()
        rt = d.runtime
        assert rt.startswith(d.xdg + "/nilbox-"), rt  # non-default home: hashed name
        assert mode(d.home) == 0o700 and mode(rt) == 0o700
        assert mode(os.path.join(d.home, "logs")) == 0o700
        assert stat.S_ISSOCK(os.lstat(d.sock).st_mode) and mode(d.sock) == 0o600
        api = d.api()
        assert mode(os.path.join(rt, "api.json")) == 0o600
        assert len(api["token"]) == 64 and int(api["token"], 16) >= 0
        assert api["url"] == "http://127.0.0.1:%d/" % api["port"] and api["port"] > 0
        assert api["pid"] == d.proc.pid
        with open(os.path.join(rt, "nilboxd.pid")) as f:
            assert int(f.read()) == d.proc.pid
        assert mode(os.path.join(d.home, "state.db")) == 0o600
        assert d.lock_holder() == d.proc.pid


def test_token_changes_per_start():
    with Daemon() as d:
        d.start()
        t1 = d.api()["token"]
        assert d.terminate() == 0
        d.start()
        assert d.api()["token"] != t1


def test_second_daemon_refused():
    with Daemon() as d:
        d.start()
        r = subprocess.run([NILBOXD, "--foreground"], env=d.env, capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 1, r
        assert "already running" in r.stderr and str(d.proc.pid) in r.stderr, r.stderr
        assert d.home in r.stderr
        # The refused one must not have touched the running daemon.
        st, _, _ = d.unix("GET", "/v1/status")
        assert st == 200


def check_clean_exit(sig):
    with Daemon() as d:
        d.start()
        sock, rt = d.sock, d.runtime
        assert d.terminate(sig) == 0, d.stderr()
        assert not os.path.exists(sock), "socket left behind"
        assert not os.path.exists(os.path.join(rt, "api.json"))
        assert not os.path.exists(os.path.join(rt, "nilboxd.pid"))
        assert "stopped" in d.stderr()
        assert d.lock_holder() == 0


def test_sigterm_clean_shutdown():
    check_clean_exit(signal.SIGTERM)


def test_sigint_clean_shutdown():
    check_clean_exit(signal.SIGINT)


def test_restart_keeps_state_and_events():
    with Daemon() as d:
        d.start()
        assert d.terminate() == 0
        d.start()
        st, _, body = d.unix("GET", "/v1/status")
        assert json.loads(body)["schema_version"] >= 1
        assert d.terminate() == 0
        db = sqlite3.connect(os.path.join(d.home, "state.db"))
        types = [r[0] for r in db.execute("SELECT type FROM events ORDER BY id")]
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        db.close()
        # Other modules emit their own events (e.g. secrets.state) in between.
        types = [t for t in types if t.startswith("daemon.")]
        assert types == ["daemon.started", "daemon.stopping"] * 2, types
        assert versions == list(range(1, len(versions) + 1))
        assert "migrated" in d.stderr()  # only the first start migrates
        assert d.stderr().count("migrated") == 1


def test_daemonize_and_log():
    with Daemon() as d:
        r = subprocess.run([NILBOXD], env=d.env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r
        pid = d.lock_holder()
        assert pid and ("pid %d" % pid) in r.stdout, (pid, r.stdout)
        # Detached: its own session, not our child.
        assert os.getsid(pid) == pid or os.getsid(pid) != os.getsid(0)
        st, _, _ = d.unix("GET", "/v1/status")
        assert st == 200
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not d.lock_holder():
                break
            time.sleep(0.05)
        assert not d.lock_holder()
        with open(os.path.join(d.home, "logs", "nilboxd.log")) as f:
            log = f.read()
        assert "started" in log and "stopped" in log, log
        assert mode(os.path.join(d.home, "logs", "nilboxd.log")) == 0o600


def test_two_homes_share_runtime_parent():
    with Daemon() as a:
        with Daemon(xdg=a.xdg) as b:
            a.start()
            b.start()
            assert a.sock != b.sock
            for d in (a, b):
                st, _, body = d.unix("GET", "/v1/status")
                assert st == 200 and json.loads(body)["home"] == d.home


def test_stale_socket_after_sigkill():
    with Daemon() as d:
        d.start()
        d.proc.kill()
        d.proc.wait()
        assert os.path.exists(d.sock)  # left behind by SIGKILL
        d.start()  # replaces it
        st, _, _ = d.unix("GET", "/v1/status")
        assert st == 200


def test_socket_path_too_long():
    with Daemon() as d:
        env = dict(d.env, NILBOX_RUNTIME_DIR="/tmp/" + "x" * 120)
        r = subprocess.run([NILBOXD, "--foreground"], env=env, capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 1
        assert "NILBOX_RUNTIME_DIR" in r.stderr, r.stderr


def test_usage_errors():
    r = subprocess.run([NILBOXD, "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "--help" in r.stderr
    r = subprocess.run([NILBOXD, "--api-port", "99999"], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([NILBOXD, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--foreground" in r.stdout


if __name__ == "__main__":
    run_tests([
        test_folders_and_permissions,
        test_token_changes_per_start,
        test_second_daemon_refused,
        test_sigterm_clean_shutdown,
        test_sigint_clean_shutdown,
        test_restart_keeps_state_and_events,
        test_daemonize_and_log,
        test_two_homes_share_runtime_parent,
        test_stale_socket_after_sigkill,
        test_socket_path_too_long,
        test_usage_errors,
    ])
