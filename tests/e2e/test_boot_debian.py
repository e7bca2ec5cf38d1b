#!/usr/bin/env python3
"""Opt-in end to end test (meson suite 'e2e-debian'; minutes): builds the
debian image (mmdebstrap bookworm, cached under NB_E2E_CACHE) and boots it
under real QEMU with nb_vmrun: root on a qcow2 overlay grown to 6 GiB,
systemd up to the readiness unit, then QMP quit. Prints the build and boot
times. Env as for test_boot_tiny.py.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from e2e_env import CACHE, build_image, kill_qemu, need

VMRUN = os.environ.get("NB_VMRUN", "")


class BootDebian(unittest.TestCase):
    def test_build_and_boot(self):
        need(env=("NB_VMRUN",), tools=("mmdebstrap",))
        img = os.path.join(CACHE, "debian")
        build_s = build_image("debian", img, None, timeout=1800)
        with open(os.path.join(img, "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual(m["root"], "disk")

        d = tempfile.mkdtemp(prefix="nb-e2e-deb-")
        try:
            disk = os.path.join(d, "disk.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            os.path.join(img, "disk.qcow2"), disk, "6G"], check=True)
            # The VM manager boots with "quiet", which hides systemd's status;
            # shown, its welcome line names the OS before any unit starts (the
            # only other mention, getty's /etc/issue, races the readiness
            # unit), and a unit that fails says why.
            p = subprocess.run([VMRUN, "--dir", d, "--kernel", os.path.join(img, "vmlinux"),
                                "--initrd", os.path.join(img, "initramfs.img"), "--disk", disk,
                                "--root-disk", "--memory", "1024", "--cmdline",
                                "systemd.show_status=1", "--wait", "ready", "--stop", "quit",
                                "--timeout", "240"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               timeout=300)
            with open(os.path.join(d, "console.log"), errors="replace") as f:
                con = f.read()
            ev = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
            ready = [e["ready_ms"] for e in ev if "ready_ms" in e]
            self.assertTrue(ready, p.stdout + "".join(  # (with the units that failed)
                l for l in con.splitlines(True) if "TIME" in l or "DEPEND" in l or "FAIL" in l))
            self.assertEqual(p.returncode, 0, p.stdout)
            self.assertIn("Debian GNU/Linux 12", con)
            sys.stderr.write("debian image: build %.0f s (cached if fast), boot to ready %.1f s, "
                             "disk.qcow2 %d MiB\n" % (build_s, ready[0] / 1000.0,
                                                      m["artifacts"]["disk.qcow2"]["size"] >> 20))
        finally:
            kill_qemu(d)
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
