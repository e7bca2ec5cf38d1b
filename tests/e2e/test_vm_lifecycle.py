#!/usr/bin/env python3
"""End to end: nilboxd's VM manager with real QEMU (TCG unless KVM works).

One daemon, a tiny image with the guest agent (built once and cached in
NB_E2E_CACHE), and VMs shared between the cases, in order:
  01 bad input: invalid / duplicate names, missing image, QEMU missing, no
     disk space, VM not running, unknown VM, image in use, rm running;
  02 boot + exec: exit codes, stdout/stderr apart, stdin, 127, signals;
  03 shell through a pseudo-terminal: type, read, resize (stty size);
  04 two VMs at once, each with its own sockets and key; graceful stop;
  05 SIGKILL the daemon: QEMU keeps running, the next daemon re-attaches,
     the channel reconnects and exec works;
  06 kill QEMU: crash detected, on-failure restarts it;
  07 snapshots (live save, restore when stopped) and resize;
  08 restart, stop and remove;
  09 the main job's path: an image nilboxd builds itself, and a VM that runs
     commands as the images' unprivileged default user.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import fcntl
import json
import os
import pty
import select
import signal
import struct
import termios
import time
import unittest

from e2e_env import (AGENT, CACHE, NILBOX, TINY, VmSuite, alive, build_image, need,
                     wait_for)


class VmE2E(VmSuite):
    @classmethod
    def setup(cls):
        need()
        build_image("tiny", TINY, AGENT)
        # The cached build is the home's tiny image ("up to date" for builds).
        cls.d = cls.daemon({"tiny": TINY})

    # -- helpers -----------------------------------------------------------
    def qemu_pid(self, name):
        with open(os.path.join(self.d.home, "vms", name, "qemu.pid")) as f:
            return int(f.read().strip())

    def exec_(self, name, *argv, input=None, timeout=60):
        return self.d.cli("exec", name, "--", *argv, timeout=timeout, input=input)

    def ensure_running(self, name):
        vm = self.inspect(name)
        if vm["state"] != "running":
            self.cli("vm", "start", name, timeout=300)
        wait_for(lambda: self.inspect(name)["agent"], 120, "the agent of " + name)

    def events(self):
        return json.loads(self.cli("--json", "events").stdout)["events"]

    # -- 01 ------------------------------------------------------------------
    def test_01_bad_input(self):
        for bad in ("Bad", "1abc", "a" * 33, "a_b", "a.b"):
            r = self.cli("vm", "create", bad, ok=False)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn("not a valid VM name", r.stderr, bad)
        self.cli("vm", "create", "dup")
        # New VMs run exec/shell as the images' unprivileged user.
        self.assertEqual(self.inspect("dup")["user"], "agent")
        self.assertRegex(self.cli("vm", "ls").stdout, r"\ndup +stopped .* never +agent\n")
        r = self.cli("vm", "create", "nope1", "--image", "nope", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("no image named 'nope'", r.stderr)
        self.assertIn("tiny, ", r.stderr + ", ")
        self.assertNotIn("image build nope", r.stderr)
        r = self.cli("vm", "resize", "dup", "abc", ok=False)
        self.assertIn("'abc' is not a valid disk size", r.stderr)
        # Stopping a stopped VM says so.
        r = self.cli("vm", "stop", "dup")
        self.assertIn("VM dup is already stopped", r.stdout)
        self.assertNotIn("stopping", r.stderr)
        # vm logs: the console's terminal requests and escapes are filtered
        # (as `shell` does), the text stays.
        with open(os.path.join(self.d.home, "vms", "dup", "console.log"), "ab") as f:
            f.write(b"login: \x1b[6n\x1b[c\x1b]0;title\x07\x1b[1;31mred\x1b[0m done\x1b[2J\r\n")
        r = self.cli("vm", "logs", "dup")
        self.assertIn("login: red done", r.stdout)
        for bad in ("\x1b", "[6n", "[c", "title", "[2J", "\r"):
            self.assertNotIn(bad, r.stdout)
        r = self.cli("vm", "create", "dup", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("already exists", r.stderr)
        r = self.cli("vm", "create", "deb", "--image", "debian", ok=False)
        self.assertIn("nilbox image build debian", r.stderr)
        r = self.cli("vm", "start", "nosuch", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("no VM named", r.stderr)
        r = self.exec_("dup", "true")
        self.assertEqual(r.returncode, 125, r.stderr)
        self.assertIn("not running", r.stderr)
        r = self.exec_("nosuch", "true")
        self.assertEqual(r.returncode, 125, r.stderr)
        r = self.cli("vm", "resize", "dup", "512M", ok=False)
        self.assertIn("smaller", r.stderr)
        r = self.cli("vm", "snapshot", "restore", "dup", "nope", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        r = self.cli("vm", "snapshot", "rm", "dup", "nope", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("no snapshot nope in VM dup", r.stderr)
        r = self.cli("vm", "snapshot", "save", "dup", "bad/name", ok=False)
        self.assertNotEqual(r.returncode, 0)
        r = self.cli("image", "rm", "tiny", ok=False)
        self.assertIn("used by VM", r.stderr)
        r = self.cli("image", "build", "nosuchimage", ok=False)
        self.assertIn("no recipe", r.stderr)
        self.cli("vm", "rm", "dup")
        # Building an image that is up to date goes through the daemon fast.
        r = self.cli("image", "build", "tiny", timeout=300)
        self.assertIn("up to date", r.stderr + r.stdout)
        ls = json.loads(self.cli("--json", "image", "ls").stdout)["images"]
        self.assertTrue([i for i in ls if i["name"] == "tiny" and i["built"]], ls)

        # A daemon whose QEMU is missing, and one with no disk space left.
        d2 = self.daemon({"tiny": TINY}, {"NILBOX_QEMU": "/nonexistent/qemu-system-x86_64"})
        self.cli("vm", "create", "q", d=d2)
        r = self.cli("vm", "start", "q", d=d2, ok=False)
        self.assertIn("QEMU is missing", r.stderr)
        self.assertEqual(self.inspect("q", d=d2)["state"], "stopped")
        d2.cleanup()
        d3 = self.daemon({"tiny": TINY}, {"NILBOX_VM_MIN_FREE_MB": str(1 << 40)})
        r = self.cli("vm", "create", "full", d=d3, ok=False)
        self.assertIn("no disk space", r.stderr)
        d3.cleanup()

    # -- 02 ------------------------------------------------------------------
    def test_02_boot_exec(self):
        r = self.cli("vm", "create", "t1", "--memory", "256M", "--disk", "1G", "--start",
                     timeout=300)
        self.assertIn("is running", r.stdout)
        # auto: KVM where it works, else TCG, and the progress says which and why.
        self.assertRegex(r.stderr, r"accelerator (tcg|kvm): auto \((default|NILBOX_ACCEL)\): ")
        self.assertIn(self.inspect("t1")["accel"], ("tcg", "kvm"))
        # boot_secs is printed rounded (no 9.1799999999999997).
        raw = self.cli("--json", "vm", "inspect", "t1").stdout
        self.assertRegex(raw, r'"boot_secs": \d+(\.\d{1,3})?,')
        # A login-like environment as the unprivileged user, in its home;
        # the hostname is the VM's name; --user root overrides.
        r = self.exec_("t1", "sh", "-c", 'id -un; id -u; echo "$HOME $USER $LOGNAME"; pwd')
        self.assertEqual(r.stdout.split("\n")[:4],
                         ["agent", "1000", "/home/agent agent agent", "/home/agent"], r.stdout)
        wait_for(lambda: self.exec_("t1", "hostname").stdout.strip() == "t1", 60,
                 "the hostname t1")
        r = self.d.cli("exec", "--user", "root", "t1", "--", "id", "-u", timeout=60)
        self.assertEqual(r.stdout.strip(), "0", r.stderr)
        # What nilbox provisions is readable by every user.
        wait_for(lambda: self.exec_("t1", "test", "-e", "/etc/nilbox/env").returncode == 0, 60,
                 "the provisioned environment")
        r = self.exec_("t1", "sh", "-c",
                       "for f in /etc/nilbox/env /etc/nilbox/ca.pem /etc/profile.d/nilbox-env.sh "
                       "/etc/environment; do [ ! -e $f ] || [ -r $f ] || echo unreadable $f; "
                       "done; cat /etc/nilbox/env >/dev/null")
        self.assertEqual((r.returncode, r.stdout), (0, ""), r.stderr)
        # This daemon has no key (headless, no passphrase yet): the store is
        # locked, and the guest's proxy answers 503 saying how to unlock it.
        st = json.loads(self.cli("--json", "secret", "status", ok=False).stdout)["state"]
        if st == "locked":
            r = self.exec_("t1", "curl", "-s", "-i", "-x", "http://127.0.0.1:8088",
                           "http://example.test/")
            self.assertIn("503", r.stdout.split("\n")[0], r.stdout)
            self.assertIn("egress-unavailable", r.stdout)
            self.assertIn("the secret store is locked", r.stdout)
            self.assertIn("nilbox secret unlock", r.stdout)
        # The VM's default user: root from now on (the rest writes /data).
        self.cli("vm", "set", "t1", "--user", "root")
        self.assertEqual(self.exec_("t1", "id", "-un").stdout.strip(), "root")
        r = self.exec_("t1", "sh", "-c", "echo out; echo err >&2; exit 7")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (7, "out\n", "err\n"))
        r = self.exec_("t1", "cat", input="hello from stdin\n")
        self.assertEqual((r.returncode, r.stdout), (0, "hello from stdin\n"))
        r = self.d.cli("exec", "-n", "t1", "--", "cat", timeout=60, input="ignored")
        self.assertEqual((r.returncode, r.stdout), (0, ""))
        r = self.exec_("t1", "sh", "-c", "kill -TERM $$")
        self.assertEqual(r.returncode, 128 + 15)
        r = self.exec_("t1", "no-such-command")
        self.assertEqual(r.returncode, 127, r.stderr)
        big = os.urandom(1 << 20).hex()  # 2 MiB of text through stdin and back
        r = self.exec_("t1", "sh", "-c", "cat | wc -c", input=big)
        self.assertEqual(r.stdout.strip(), str(len(big)))
        r = self.exec_("t1", "head", "-c", "5000000", "/dev/zero")
        self.assertEqual(len(r.stdout), 5000000)
        # No network card in the guest: loopback and the egress capture's
        # dummy0 only (-nic none).
        r = self.exec_("t1", "ls", "/sys/class/net")
        self.assertIn("lo", r.stdout.split())
        self.assertLessEqual(set(r.stdout.split()), {"lo", "dummy0"}, r.stdout)

    # -- 03 ------------------------------------------------------------------
    def test_03_shell_pty(self):
        self.ensure_running("t1")
        pid, fd = pty.fork()
        if pid == 0:
            os.environ.update(self.d.env)
            os.environ["TERM"] = "xterm"
            os.execv(NILBOX, [NILBOX, "shell", "t1"])
        out = b""

        def read_until(token, timeout=60):
            nonlocal out
            deadline = time.time() + timeout
            while token not in out:
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("no %r in terminal output: %r" % (token, out[-2000:]))
                r, _, _ = select.select([fd], [], [], left)
                if r:
                    try:
                        b = os.read(fd, 65536)
                    except OSError:
                        b = b""
                    if not b:
                        raise AssertionError("terminal closed; output: %r" % out[-2000:])
                    out += b

        try:
            os.write(fd, b"echo hi-$((6*7))\r")
            read_until(b"hi-42")
            # Resize the terminal: the kernel sends SIGWINCH to nilbox, which
            # forwards the new size; the guest's stty sees it.
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 37, 101, 0, 0))
            time.sleep(0.5)
            os.write(fd, b"stty size\r")
            read_until(b"37 101")
            os.write(fd, b"exit 3\r")
            deadline = time.time() + 30
            status = None
            while time.time() < deadline:
                try:
                    r, _, _ = select.select([fd], [], [], 0.2)
                    if r:
                        out += os.read(fd, 65536)
                except OSError:
                    pass
                wp, st = os.waitpid(pid, os.WNOHANG)
                if wp:
                    status = st
                    break
            self.assertIsNotNone(status, "nilbox shell did not exit")
            self.assertEqual(os.waitstatus_to_exitcode(status), 3)
        finally:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (OSError, ChildProcessError):
                pass
            os.close(fd)

    # -- 04 ------------------------------------------------------------------
    def test_04_two_vms(self):
        self.ensure_running("t1")
        self.cli("vm", "create", "t2", "--memory", "256M", "--user", "root", "--start", timeout=300)
        a, b = self.inspect("t1"), self.inspect("t2")
        self.assertEqual((a["state"], b["state"]), ("running", "running"))
        self.assertNotEqual(a["mux_socket"], b["mux_socket"])
        self.assertNotEqual(a["pid"], b["pid"])
        keys = []
        for vm in (a, b):
            kf = os.path.join(vm["runtime_dir"], "mux.key")
            self.assertEqual(os.stat(kf).st_mode & 0o777, 0o600)
            with open(kf, "rb") as f:
                keys.append(f.read())
            # QEMU's fw_cfg copy is gone once QEMU started.
            self.assertFalse(os.path.exists(os.path.join(vm["runtime_dir"], "boot.key")))
            with open("/proc/%d/cmdline" % vm["pid"], "rb") as f:
                self.assertNotIn(keys[-1].hex().encode(), f.read())
        self.assertNotEqual(keys[0], keys[1])
        self.exec_("t1", "sh", "-c", "echo one > /data/who")
        self.exec_("t2", "sh", "-c", "echo two > /data/who")
        self.assertEqual(self.exec_("t1", "cat", "/data/who").stdout, "one\n")
        self.assertEqual(self.exec_("t2", "cat", "/data/who").stdout, "two\n")
        # Graceful stop: the agent powers the guest off.
        pid = b["pid"]
        self.cli("vm", "stop", "t2", timeout=90)
        self.assertEqual(self.inspect("t2")["state"], "stopped")
        self.assertFalse(alive(pid))
        ev = [e for e in self.events() if e.get("vm") == "t2" and e["type"] == "vm.stopped"]
        self.assertTrue(ev and "guest-shutdown" in ev[-1]["last_exit"], ev)
        self.assertEqual(self.inspect("t1")["state"], "running")
        self.cli("vm", "rm", "t2")
        self.assertFalse(os.path.exists(os.path.join(self.d.home, "vms", "t2")))

    # -- 05 ------------------------------------------------------------------
    def test_05_daemon_sigkill(self):
        self.ensure_running("t1")
        self.exec_("t1", "sh", "-c", "echo before > /tmp/marker")
        qpid = self.qemu_pid("t1")
        self.d.proc.kill()
        self.d.proc.wait()
        time.sleep(1)
        self.assertTrue(alive(qpid), "QEMU died with the daemon")
        self.d.start()
        vm = wait_for(lambda: (lambda v: v if v["agent"] else None)(self.inspect("t1")), 60,
                      "the agent to reconnect")
        self.assertEqual(vm["state"], "running")
        self.assertTrue(vm.get("reattached"))
        self.assertEqual(vm["pid"], qpid)
        # Same guest (RAM state kept), reached through the new daemon.
        r = self.exec_("t1", "cat", "/tmp/marker")
        self.assertEqual((r.returncode, r.stdout), (0, "before\n"))

    # -- 06 ------------------------------------------------------------------
    def test_06_crash_restart(self):
        self.ensure_running("t1")
        self.cli("vm", "set", "t1", "--restart", "on-failure")
        self.exec_("t1", "sh", "-c", "echo survivor > /data/crash; sync")
        old = self.qemu_pid("t1")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: [e for e in self.events()
                          if e.get("vm") == "t1" and e["type"] == "vm.crashed"], 20,
                 "vm.crashed")
        vm = wait_for(lambda: (lambda v: v if v["agent"] and v["pid"] != old else None)(
            self.inspect("t1")), 180, "the restart policy to boot t1 again")
        self.assertEqual(vm["state"], "running")
        self.assertEqual(self.exec_("t1", "cat", "/data/crash").stdout, "survivor\n")
        ev = [e for e in self.events() if e.get("vm") == "t1" and e["type"] == "vm.restarting"]
        self.assertTrue(ev, "no vm.restarting event")
        self.cli("vm", "set", "t1", "--restart", "never")

    # -- 07 ------------------------------------------------------------------
    def test_07_snapshot_resize(self):
        self.ensure_running("t1")
        self.exec_("t1", "sh", "-c", "echo first > /data/state")
        self.cli("vm", "snapshot", "save", "t1", "s1")  # live: sync + QMP
        r = self.cli("vm", "snapshot", "save", "t1", "s1", ok=False)
        self.assertIn("already", r.stderr)
        r = self.cli("vm", "snapshot", "rm", "t1", "nope", ok=False)  # live: QMP
        self.assertEqual(r.returncode, 4, r.stderr)
        self.assertIn("no snapshot nope in VM t1", r.stderr)
        self.assertNotIn("QEMU", r.stderr)
        self.exec_("t1", "sh", "-c", "echo second > /data/state; sync")
        r = self.cli("vm", "snapshot", "restore", "t1", "s1", ok=False)
        self.assertIn("stop it", r.stderr)
        r = self.cli("vm", "resize", "t1", "2G", ok=False)
        self.assertIn("stopped VM", r.stderr)
        self.cli("vm", "stop", "t1", timeout=90)
        snaps = json.loads(self.cli("--json", "vm", "snapshot", "ls", "t1").stdout)
        self.assertEqual([s["name"] for s in snaps["snapshots"]], ["s1"])
        self.cli("vm", "snapshot", "save", "t1", "s2")  # stopped: qemu-img
        self.cli("vm", "snapshot", "restore", "t1", "s1")
        self.cli("vm", "snapshot", "rm", "t1", "s2")
        r = self.cli("vm", "resize", "t1", "512M", ok=False)
        self.assertIn("smaller", r.stderr)
        self.cli("vm", "resize", "t1", "2G")
        self.assertEqual(self.inspect("t1")["disk_bytes"], 2 << 30)
        self.cli("vm", "start", "t1", timeout=300)
        self.assertEqual(self.exec_("t1", "cat", "/data/state").stdout, "first\n")
        r = self.exec_("t1", "df", "-k", "/data")
        size_k = int(r.stdout.splitlines()[1].split()[1])
        self.assertGreater(size_k, 1500 * 1024, r.stdout)  # grown from 1G at boot

    # -- 08 ------------------------------------------------------------------
    def test_08_stop_rm(self):
        self.ensure_running("t1")
        old = self.qemu_pid("t1")
        r = self.cli("vm", "restart", "t1", timeout=300)
        self.assertIn("is running", r.stdout)
        self.assertNotEqual(self.qemu_pid("t1"), old)
        self.assertFalse(alive(old))
        r = self.cli("vm", "rm", "t1", ok=False)
        self.assertIn("--force", r.stderr)
        pid = self.qemu_pid("t1")
        self.cli("vm", "stop", "t1", timeout=90)
        self.assertFalse(alive(pid))
        self.assertEqual(self.inspect("t1")["state"], "stopped")
        logs = self.cli("vm", "logs", "t1").stdout
        self.assertIn("nilbox-init", logs)
        self.cli("vm", "rm", "t1")
        self.assertEqual(json.loads(self.cli("--json", "vm", "ls").stdout)["vms"], [])

    # -- 09 ------------------------------------------------------------------
    def test_09_daemon_built_image(self):
        # The cached image of the cases above is built by this test process; this one is built
        # by nilboxd (umask 077), as `scripts/run.sh` does. Such a build once left the guest's
        # /bin and binaries root-only, and the default user could run nothing.
        d = self.daemon({})
        # The packages the cached build downloaded: nothing is fetched again.
        os.symlink(os.path.join(CACHE, "debs"), os.path.join(d.home, "images", ".cache"))
        r = self.cli("image", "build", "tiny", d=d, timeout=900)
        self.assertNotIn("up to date", r.stdout + r.stderr)
        ls = json.loads(self.cli("--json", "image", "ls", d=d).stdout)["images"]
        self.assertTrue([i for i in ls if i["name"] == "tiny" and i["built"]], ls)
        self.cli("vm", "create", "own", "--start", d=d, timeout=300)
        self.assertEqual(self.inspect("own", d=d)["user"], "agent")
        r = d.cli("exec", "own", "--", "sh", "-c", "id -un; uname -s; ls / >/dev/null && echo ok",
                  timeout=60)
        self.assertEqual((r.returncode, r.stdout), (0, "agent\nLinux\nok\n"), r.stderr)
        self.cli("vm", "stop", "own", d=d, timeout=90)


if __name__ == "__main__":
    unittest.main(verbosity=2)
