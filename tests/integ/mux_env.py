"""What the nbmux suites (test_mux_agent.py, test_mux_hostile.py) share: a
temporary folder with the channel key, and processes that log to a file
there, are measured (VmHWM) and must exit cleanly. kill_all() at the end
kills whatever is left and removes the folder.

Env: MUXC, NILBOX_AGENT (set by meson)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

MUXC = os.environ["MUXC"]
AGENT = os.environ["NILBOX_AGENT"]
TMP = tempfile.mkdtemp(prefix="nb-mux-")
KEY = os.path.join(TMP, "key")
PROCS = []  # every process a test started (Popen), for kill_all


def write_key(path=KEY, data=None):
    with open(path, "wb") as f:
        f.write(data if data is not None else os.urandom(32))
    os.chmod(path, 0o600)


def check(cond, msg=""):
    if not cond:
        raise AssertionError(msg)


def asan_env(**extra):
    """This environment and `extra`. Under ASan, freed memory sits in a 256 MB
    quarantine: kept small so that memory bounds measure the program, not ASan."""
    env = dict(os.environ, **extra)
    env["ASAN_OPTIONS"] = ":".join(
        x for x in [os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=4"] if x)
    return env


class Proc:
    """argv (in asan_env(**env)) with its output in TMP/NAME.log."""

    def __init__(self, name, argv, **env):
        self.log = os.path.join(TMP, name + ".log")
        self.logf = open(self.log, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                  stderr=self.logf, env=asan_env(**env))
        PROCS.append(self.p)

    def text(self):
        with open(self.log, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_text(self, needle, timeout=10, count=1):
        end = time.time() + timeout
        while time.time() < end and self.text().count(needle) < count:
            time.sleep(0.01)
        return self.text().count(needle) >= count

    def alive(self):
        return self.p.poll() is None

    def hwm_kib(self):
        with open("/proc/%d/status" % self.p.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return -1

    def stop(self):
        """SIGTERM; it must exit 0 (under ASan: without leaks)."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.logf.close()
        text = self.text()
        check(rc == 0, "exit %s:\n%s" % (rc, text[-3000:]))
        check("Sanitizer" not in text, text[-3000:])
        return text


def passed(name, fn):
    """Runs fn() and says ok, or FAIL with the traceback: whether it passed."""
    t0 = time.time()
    try:
        fn()
        print("ok %s (%.1fs)" % (name, time.time() - t0), flush=True)
        return True
    except Exception:
        print("FAIL %s" % name)
        traceback.print_exc()
        sys.stdout.flush()
        return False


def kill_all():
    for p in PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(TMP, ignore_errors=True)
