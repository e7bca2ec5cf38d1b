"""Shared helpers for integration tests that need a real nilboxd.

Each Daemon gets its own temporary NILBOX_HOME and XDG_RUNTIME_DIR, so tests
never touch the user's state and never collide. Binaries come from the
environment set by tests/meson.build: NB_TEST_NILBOXD and NB_TEST_NILBOX.

    with Daemon() as d:
        d.start()                       # nilboxd --foreground, waits for the socket
        st, hdrs, body = d.unix("GET", "/v1/status")
        r = d.cli("daemon", "status")   # CompletedProcess

Everything is cleaned up on exit, even when a test fails: the foreground
process, any daemonized nilboxd holding this home's lock, and the folders.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

NILBOXD = os.environ.get("NB_TEST_NILBOXD", "")
NILBOX = os.environ.get("NB_TEST_NILBOX", "")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Daemon:
    def __init__(self, tmp=None, home=None, xdg=None):
        self.own_tmp = tmp is None
        self.tmp = tmp or tempfile.mkdtemp(prefix="nb-integ-")
        self.home = home or os.path.join(self.tmp, "home")
        self.xdg = xdg or os.path.join(self.tmp, "xdg")
        os.makedirs(self.xdg, mode=0o700, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update({"NILBOX_HOME": self.home, "XDG_RUNTIME_DIR": self.xdg})
        for k in ("NILBOX_RUNTIME_DIR", "NILBOXD", "DBUS_SESSION_BUS_ADDRESS"):
            self.env.pop(k, None)
        self.proc = None
        self.stderr_path = os.path.join(self.tmp, "nilboxd-%d.stderr" % id(self))
        self._paths = None

    # -- lifecycle -------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def paths(self):
        """Runtime paths as the CLI computes them (works without a daemon)."""
        if self._paths is None:
            r = self.cli("--json", "daemon", "status")
            self._paths = json.loads(r.stdout)
        return self._paths

    @property
    def sock(self):
        return self.paths()["socket"]

    @property
    def runtime(self):
        return self.paths()["runtime_dir"]

    def start(self, *args, wait=True):
        if getattr(self, "errf", None):
            self.errf.close()
        self.errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([NILBOXD, "--foreground", *args], env=self.env,
                                     stdout=self.errf, stderr=self.errf)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("nilboxd exited early (%s): %s" %
                                     (self.proc.returncode, self.stderr()))
            try:
                st, _, _ = self.unix("GET", "/v1/status", timeout=2)
                if st == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("nilboxd did not answer within %ss: %s" % (timeout, self.stderr()))

    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def terminate(self, sig=signal.SIGTERM, timeout=10):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def lock_holder(self):
        try:
            with open(os.path.join(self.home, "nilboxd.lock")) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if b"nilboxd" not in f.read():
                    return 0
        except OSError:
            return 0
        return pid

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # A daemonized nilboxd (CLI start, auto-start) for this home.
        for _ in range(50):
            pid = self.lock_holder()
            if not pid:
                break
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        if getattr(self, "errf", None):
            self.errf.close()
        if self.own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- clients ---------------------------------------------------------
    def cli(self, *args, env=None, timeout=60, input=None):
        e = dict(self.env)
        if env:
            e.update(env)
        return subprocess.run([NILBOX, *args], env=e, capture_output=True, text=True,
                              timeout=timeout, input=input)

    def unix(self, method, path, body=None, headers=None, timeout=10):
        c = UnixHTTPConnection(self.sock, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def api(self):
        with open(os.path.join(self.runtime, "api.json")) as f:
            return json.load(f)


def raw_exchange(addr, data, timeout=5, family=socket.AF_INET):
    """Sends raw bytes and returns everything the server answers until it
    closes the connection or goes quiet."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(addr)
    out = b""
    try:
        if data:  # sending nothing to a peer that already closed is EPIPE, not an answer
            s.sendall(data)
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except socket.timeout:
        pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return out


def status_of(raw):
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def wait_for(fn, timeout=10, what="the condition", every=0.05):
    """fn()'s first true value, asked every `every` s for `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def run_tests(tests):
    """Runs test functions in order, prints ok/FAIL per test, exits 1 on
    any failure."""
    failed = 0
    for t in tests:
        t0 = time.time()
        try:
            t()
            print("ok   %s (%.2fs)" % (t.__name__, time.time() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % t.__name__, flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (len(tests) - failed, failed))
    if not NILBOXD or not NILBOX:
        print("NB_TEST_NILBOXD / NB_TEST_NILBOX not set", file=sys.stderr)
    sys.exit(1 if failed else 0)
