"""`nilbox vm start` to a ready agent, for bench/boot/boot.py.

A nilboxd in a scratch NILBOX_HOME (its image folder links the tiny image
built with the agent) with one VM. Each run times `nilbox vm start` from the
command's start to its exit, which is when the agent's nbmux handshake
completed; the daemon's own spawn-to-agent time (boot_secs) is reported too.
The VM is stopped (QMP quit) between runs.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time


class NilboxCase:
    def __init__(self, nilbox, image):
        self.nilbox = nilbox
        self.tmp = tempfile.mkdtemp(prefix="nb-bench-vm-")
        home = os.path.join(self.tmp, "home")
        xdg = os.path.join(self.tmp, "xdg")
        self.env = dict(os.environ, NILBOX_HOME=home, XDG_RUNTIME_DIR=xdg)
        self.env.pop("NILBOX_RUNTIME_DIR", None)
        os.makedirs(os.path.join(home, "images"))
        os.makedirs(xdg, mode=0o700)
        os.symlink(os.path.abspath(image), os.path.join(home, "images", "tiny"))
        self.run("daemon", "start")
        self.run("vm", "create", "bench", "--memory", "256M")

    def run(self, *args, timeout=300):
        p = subprocess.run([self.nilbox, *args], env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError("nilbox %s failed: %s" % (" ".join(args), p.stderr[-500:]))
        return p.stdout

    def once(self):
        """(wall ms of `nilbox vm start`, daemon spawn -> agent ms, machine,
        QEMU CPU ms when the command returned, or None)"""
        t0 = time.monotonic()
        self.run("vm", "start", "bench")
        wall = (time.monotonic() - t0) * 1000
        cpu = None
        try:
            with open(os.path.join(self.env["NILBOX_HOME"], "vms", "bench", "qemu.pid")) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/stat" % pid) as f:
                v = f.read().rsplit(")", 1)[1].split()
            cpu = (int(v[11]) + int(v[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        vm = json.loads(self.run("--json", "vm", "inspect", "bench"))
        self.run("vm", "stop", "bench", "--force")
        return wall, vm.get("boot_secs", 0) * 1000, vm.get("machine", "?"), cpu

    def close(self):
        for args in (("vm", "stop", "bench", "--force"), ("daemon", "stop")):
            try:
                self.run(*args)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        try:
            with open(os.path.join(self.env["NILBOX_HOME"], "vms", "bench", "qemu.pid")) as f:
                os.kill(int(f.read().strip()), 9)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)
