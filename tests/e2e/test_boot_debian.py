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
import signal
import subprocess
import sys
import tempfile
import time
import unittest

VMRUN = os.environ.get("NB_VMRUN", "")
CACHE = os.environ.get("NB_E2E_CACHE", "")
IMAGES = os.environ.get("NB_IMAGES_SRC", "")


class BootDebian(unittest.TestCase):
    def test_build_and_boot(self):
        if not (VMRUN and CACHE and IMAGES) or not shutil.which("mmdebstrap"):
            self.skipTest("needs NB_VMRUN, NB_E2E_CACHE, NB_IMAGES_SRC and mmdebstrap")
        img = os.path.join(CACHE, "debian")
        t0 = time.time()
        r = subprocess.run(["bash", os.path.join(IMAGES, "debian", "build.sh"), "--out", img,
                            "--tiny", os.path.join(CACHE, "tiny"), "--cache",
                            os.path.join(CACHE, "debs"), "--no-agent"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=1800)
        build_s = time.time() - t0
        sys.stderr.write(r.stdout[-1500:])
        self.assertEqual(r.returncode, 0, "debian image build failed")
        with open(os.path.join(img, "manifest.json")) as f:
            m = json.load(f)
        self.assertEqual(m["root"], "disk")

        d = tempfile.mkdtemp(prefix="nb-e2e-deb-")
        try:
            disk = os.path.join(d, "disk.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            os.path.join(img, "disk.qcow2"), disk, "6G"], check=True)
            p = subprocess.run([VMRUN, "--dir", d, "--kernel", os.path.join(img, "vmlinux"),
                                "--initrd", os.path.join(img, "initramfs.img"), "--disk", disk,
                                "--root-disk", "--memory", "1024", "--wait", "ready",
                                "--stop", "quit", "--timeout", "240"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               timeout=300)
            ev = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
            ready = [e["ready_ms"] for e in ev if "ready_ms" in e]
            self.assertTrue(ready, p.stdout)
            self.assertEqual(p.returncode, 0, p.stdout)
            with open(os.path.join(d, "console.log"), errors="replace") as f:
                con = f.read()
            self.assertIn("Debian GNU/Linux 12", con)
            sys.stderr.write("debian image: build %.0f s (cached if fast), boot to ready %.1f s, "
                             "disk.qcow2 %d MiB\n" % (build_s, ready[0] / 1000.0,
                                                      m["artifacts"]["disk.qcow2"]["size"] >> 20))
        finally:
            try:
                with open(os.path.join(d, "qemu.pid")) as f:
                    os.kill(int(f.read().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
