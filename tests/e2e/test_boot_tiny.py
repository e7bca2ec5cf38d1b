#!/usr/bin/env python3
"""End to end: the tiny image under real QEMU (TCG unless /dev/kvm works).

Builds the tiny image (cached under NB_E2E_CACHE, so reruns only check the
recipe hash), then with nb_vmrun (the VM manager's argv builder, detached
spawn, key file, QMP client and mux socket):
  1. boots it, waits for the readiness marker on the nbmux virtio-serial
     port, powers off with QMP quit; the guest saw no NIC, the key file was
     removed once QMP was up, and no QEMU is left behind;
  2. boots it on q35 and powers it off through ACPI (QMP system_powerdown):
     the guest shuts down cleanly;
  3. boots it, SIGKILLs the launcher (as a crashing daemon): QEMU keeps
     running in its own session; a new launcher finds it by pidfile + QMP,
     QEMU's chardev reconnects to the new mux socket, and quit stops it;
  4. (with nilbox-agent and muxc built) the image with the agent and a data
     disk: an exec sent at once is held by the agent until the rest of the
     setup (data disk, egress capture) is done, then sees both.

Env: NB_VMRUN (binary), NB_E2E_CACHE (image cache dir), NB_IMAGES_SRC.
The image is built with --no-agent until nilbox-agent exists: its init then
writes NILBOX-READY on the port itself.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from e2e_env import CACHE, alive, build_image, kill_qemu, need, qemu_pid

VMRUN = os.environ.get("NB_VMRUN", "")
AGENT = os.environ.get("NB_AGENT", "")
MUXC = os.environ.get("NB_MUXC", "")
IMG = os.path.join(CACHE, "tiny")


def lines(out):
    res = []
    for l in out.splitlines():
        l = l.strip()
        if l.startswith("{"):
            res.append(json.loads(l))
    return res


def first(objs, key):
    for o in objs:
        if key in o:
            return o
    return None


class BootTiny(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        need(env=("NB_VMRUN",))
        build_image("tiny", IMG, None)

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="nb-e2e-")
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        kill_qemu(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def vmrun(self, *args, timeout=90):
        argv = [VMRUN, "--dir", self.dir] + list(args)
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        sys.stderr.write(err[-3000:])
        return p.returncode, lines(out)

    def boot_args(self, *extra):
        return ["--kernel", os.path.join(IMG, "vmlinux"), "--initrd",
                os.path.join(IMG, "initramfs.img"), "--memory", "256", "--timeout", "80"] + list(extra)

    def console(self):
        with open(os.path.join(self.dir, "console.log"), errors="replace") as f:
            return f.read()

    def test_1_boot_ready_quit(self):
        # The VM's data disk: a qcow2 overlay on the image's empty ext4,
        # grown to 2 GiB before boot; the guest grows its file system.
        disk = os.path.join(self.dir, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        os.path.join(IMG, "disk.qcow2"), disk, "2G"], check=True)
        rc, ev = self.vmrun(*self.boot_args("--disk", disk, "--wait", "ready", "--stop", "quit"))
        sp = first(ev, "spawned")
        self.assertTrue(sp and sp["spawned"], ev)
        sys.stderr.write("boot: %s\n" % json.dumps(ev))
        self.assertIn(sp["accel"], ("tcg", "kvm"))
        self.assertIsNotNone(first(ev, "ready_ms"), ev)
        self.assertTrue(first(ev, "key_file_removed"), ev)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "boot.key")))
        ex = first(ev, "exited")
        self.assertEqual(ex["exited"], 0, ev)
        self.assertEqual(rc, 0, ev)
        self.assertFalse(alive(qemu_pid(self.dir)), "QEMU still running after quit")
        con = self.console()
        # The guest's view of its network (A10): loopback and the capture-only
        # dummy0 (no NIC: dummy0 has no peer; its traffic goes to the agent).
        netline = [l for l in con.splitlines() if l.startswith("nilbox-init: net:")]
        self.assertEqual(len(netline), 1, con[-2000:])
        self.assertEqual(sorted(netline[0].split(":", 2)[2].split()), ["dummy0", "lo"])
        # (Later console lines may still be in the UART when QEMU quits.)
        mounted = [l for l in con.splitlines() if "data disk mounted on /data" in l]
        self.assertEqual(len(mounted), 1, con[-2000:])
        self.assertRegex(mounted[0], r"\((1\.9|2\.0)G\)")
        self.assertNotIn("virtio_net", con)

    def test_2_acpi_powerdown_q35(self):
        rc, ev = self.vmrun(*self.boot_args("--machine", "q35", "--wait", "ready",
                                            "--stop", "powerdown"))
        sys.stderr.write("powerdown: %s\n" % json.dumps(ev))
        self.assertEqual(first(ev, "spawned")["machine"], "q35")
        self.assertIsNotNone(first(ev, "ready_ms"), ev)
        self.assertEqual(first(ev, "stop_sent")["r"], 0, ev)
        shutdown = [e for e in ev if e.get("event") == "SHUTDOWN"]
        self.assertTrue(shutdown, ev)
        self.assertEqual(shutdown[0]["reason"], "guest-shutdown", ev)
        self.assertEqual(rc, 0, ev)
        self.assertIn("nilbox-init: shutting down", self.console())

    def test_3_launcher_killed_qemu_survives_and_reattaches(self):
        rc, ev = self.vmrun(*self.boot_args("--wait", "ready", "--stop", "die"))
        self.assertEqual(rc, -signal.SIGKILL, ev)
        self.assertTrue(first(ev, "dying"), ev)
        pid = qemu_pid(self.dir)
        time.sleep(0.5)
        self.assertTrue(alive(pid), "QEMU died with its launcher")
        # Not in the launcher's session or process group.
        self.assertNotEqual(os.getsid(pid), os.getsid(0))
        self.assertNotEqual(os.getpgid(pid), os.getpgid(0))
        rc, ev = self.vmrun("--attach", "--wait", "mux", "--stop", "quit", "--timeout", "30")
        sys.stderr.write("attach: %s\n" % json.dumps(ev))
        self.assertEqual(first(ev, "attach")["attach"], "OK", ev)
        self.assertEqual(first(ev, "attach")["pid"], pid)
        self.assertEqual(first(ev, "mux")["mux"], "connected", ev)
        self.assertEqual(first(ev, "qmp")["qmp"], "ready", ev)
        self.assertEqual(rc, 0, ev)
        for _ in range(50):
            if not alive(pid):
                break
            time.sleep(0.1)
        self.assertFalse(alive(pid), "QEMU still running after quit")

    def test_4_agent_exec_over_the_channel(self):
        """The whole chain: the image with nilbox-agent, QEMU's chardev
        connecting to a real nbmux host (muxc, on the daemon's session
        library), the key through fw_cfg, an exec stream and its exit code."""
        if not (AGENT and MUXC and os.path.exists(AGENT) and os.path.exists(MUXC)):
            self.skipTest("NB_AGENT / NB_MUXC not built")
        img = os.path.join(CACHE, "tiny-agent")
        build_image("tiny", img, AGENT)
        key = os.urandom(32)
        for name in ("boot.key", "host.key"):
            fd = os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, key)
            os.close(fd)
        t0 = time.time()
        host = subprocess.Popen(
            [MUXC, "--listen", os.path.join(self.dir, "mux.sock"), "--key-file",
             os.path.join(self.dir, "host.key"), "exec", "--", "/bin/sh", "-c",
             "echo net: $(ls /sys/class/net); cat /proc/cmdline; "
             "grep -c ' /data ext4 ' /proc/mounts | sed 's/^/data mounts: /'; exit 7"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(host)
        for _ in range(100):
            if os.path.exists(os.path.join(self.dir, "mux.sock")):
                break
            time.sleep(0.05)
        # With a data disk: the agent comes up before rcS.late has mounted
        # it, and holds the exec until the setup is done.
        disk = os.path.join(self.dir, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        os.path.join(img, "disk.qcow2"), disk], check=True)
        rc, ev = self.vmrun("--kernel", os.path.join(img, "vmlinux"), "--initrd",
                            os.path.join(img, "initramfs.img"), "--memory", "256",
                            "--disk", disk, "--no-mux", "--key-file", os.path.join(self.dir, "boot.key"),
                            "--wait", "qmp", "--stop", "none", "--timeout", "30")
        self.assertEqual(rc, 0, ev)
        self.assertTrue(first(ev, "key_file_removed"), ev)
        try:
            out, err = host.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            host.kill()
            out, err = host.communicate()
        sys.stderr.write("agent exec done after %.1f s\n%s" % (time.time() - t0, err[-1500:]))
        self.assertEqual(host.returncode, 7, out + err)
        # The exec ran only once the egress capture and /data were set up,
        # although it reached the agent before (the agent starts first).
        self.assertIn("net: dummy0 lo\n", out)
        self.assertIn("data mounts: 1\n", out)
        self.assertIn("console=ttyS0", out)
        con = self.console()
        self.assertIn("system setup done", con)
        self.assertLess(con.index("nilbox-agent 0.1.0 on serial"),
                        con.index("data disk mounted on /data"), con[-2000:])
        # The key is nowhere the guest or the host shows it.
        self.assertNotIn(key.hex(), out)
        self.assertNotIn(key.hex(), self.console())
        with open("/proc/%d/cmdline" % qemu_pid(self.dir), "rb") as f:
            self.assertNotIn(key, f.read().replace(b"\0", b" "))
        rc, ev = self.vmrun("--attach", "--no-mux", "--wait", "qmp", "--stop", "quit",
                            "--timeout", "30")
        self.assertEqual(rc, 0, ev)


if __name__ == "__main__":
    unittest.main(verbosity=2)
