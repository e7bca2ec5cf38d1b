"""Shared helpers for the Python benchmarks (bench/proxy, bench/egress):
a scratch nilboxd from a build directory, ports, processes, CPU time.

    import nbbench
    nbbench.use_build(build)                  # binaries of BUILD/src/...
    d = nbbench.start_daemon(tmp, {"NILBOX_TEST_MODE": "1"})
    nbbench.cli(d, "rule", "add", "allow", "localhost:443")
    ...
    d.cleanup()
"""
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integ"))

import daemon_harness  # noqa: E402  (needs the path above)


def use_build(build, tmp, wrap=None):
    """Points the integration harness at BUILD's nilboxd and nilbox. wrap
    (a command line, e.g. "valgrind --tool=callgrind") runs nilboxd under
    it, through a script in tmp."""
    nilboxd = os.path.join(build, "src", "daemon", "nilboxd")
    daemon_harness.NILBOX = os.path.join(build, "src", "cli", "nilbox")
    for exe in (nilboxd, daemon_harness.NILBOX):
        if not os.access(exe, os.X_OK):
            sys.exit("%s is missing: build it first (see bench/README.md)" % exe)
    daemon_harness.NILBOXD = nilboxd
    if wrap:
        daemon_harness.NILBOXD = os.path.join(tmp, "nilboxd-wrapped")
        with open(daemon_harness.NILBOXD, "w") as f:
            f.write('#!/bin/sh\nexec %s %s "$@"\n' % (wrap, nilboxd))
        os.chmod(daemon_harness.NILBOXD, 0o755)


def start_daemon(tmp, env=None):
    """A foreground nilboxd in tmp/d with its own home, the secret store open."""
    d = daemon_harness.Daemon(tmp=os.path.join(tmp, "d"))
    os.makedirs(d.tmp, exist_ok=True)
    d.env.update({"NILBOX_LOG": "warn"})
    d.env.update(env or {})
    d.start("--key-file", os.path.join(tmp, "master.key"), wait=False)
    d.wait_ready(timeout=120)  # slow under a profiler
    from proxy_env import wait_store_open
    wait_store_open(d, timeout=30)
    return d


def stop_daemon(d):
    """SIGTERM first, so a profiler around nilboxd writes its output."""
    if d.proc and d.proc.poll() is None:
        try:
            d.terminate(timeout=300)
        except subprocess.TimeoutExpired:
            pass
    d.cleanup()


def cli(d, *args, input=None, timeout=300):
    r = d.cli(*args, input=input, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("nilbox %s: %s %s" % (" ".join(args), r.stdout, r.stderr))
    return r


def family(pid):
    """pid and its live children (Squid's helpers, for example)."""
    pids = [pid]
    try:
        for t in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_s(pid):
    """CPU seconds (user, system) used so far by pid and its live children."""
    user = system = 0.0
    for p in family(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                v = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(v[11]) / os.sysconf("SC_CLK_TCK")
        system += int(v[12]) / os.sysconf("SC_CLK_TCK")
    return user, system


def rw_calls(pid):
    """Read- and write-like system calls made so far by pid and its children."""
    n = 0
    for p in family(pid):
        try:
            with open("/proc/%d/io" % p) as f:
                n += sum(int(x.split()[1]) for x in f if x.startswith(("syscr", "syscw")))
        except OSError:
            continue
    return n


def ctx_switches(pid):
    """Context switches (voluntary, involuntary) so far of every thread of pid
    and of its live children. Each switch costs far more than a system call
    on a paravirtualised machine, and the scheduler charges much of it to the
    task switched in."""
    vol = invol = 0
    for p in family(pid):
        try:
            tasks = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tasks:
            try:
                with open("/proc/%d/task/%s/status" % (p, t)) as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
            except OSError:
                continue
    return vol, invol


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on %d" % port)


class Procs:
    """Processes a benchmark started; stop() ends each of them (and only them)."""

    def __init__(self):
        self.procs = []

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is not None:
                continue
            if p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
