#!/usr/bin/env python3
"""Opt-in end to end test (meson suite 'e2e-debian'; minutes): the debian
image built by the daemon (`nilbox image build debian`, cached under
NB_E2E_CACHE/debian-agent) and booted by the VM manager with the agent as a
systemd service: exec python3, node and git, then a clean stop. Prints the
build and boot times. Env as for test_vm_lifecycle.py.
"""
import os
import sys
import time
import unittest

from e2e_env import AGENT, CACHE, TINY, VmSuite, build_image, need

DEB = os.path.join(CACHE, "debian-agent")


class VmDebian(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("mmdebstrap",))
        build_image("tiny", TINY, AGENT)
        os.makedirs(DEB, exist_ok=True)  # built by the daemon below
        cls.d = cls.daemon({"tiny": TINY, "debian": DEB})

    def test_build_boot_exec(self):
        d = self.d
        t0 = time.time()
        r = d.cli("image", "build", "debian", timeout=2400)
        build_s = time.time() - t0
        sys.stderr.write(r.stderr[-3000:])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        t0 = time.time()
        r = d.cli("vm", "create", "deb", "--image", "debian", "--memory", "1G", "--start",
                  timeout=400)
        boot_s = time.time() - t0
        self.assertEqual(r.returncode, 0, r.stderr)
        vm = self.inspect("deb")
        self.assertEqual(vm["state"], "running")
        r = d.cli("exec", "deb", "--", "cat", "/etc/os-release")
        self.assertIn("Debian GNU/Linux 12", r.stdout)
        r = d.cli("exec", "deb", "--", "python3", "-c", "print(6 * 7)")
        self.assertEqual(r.stdout.strip(), "42")
        r = d.cli("exec", "deb", "--", "node", "-e", "console.log(process.version)")
        self.assertTrue(r.stdout.startswith("v"), r.stdout + r.stderr)
        # The unprivileged user with bash, its home, passwordless sudo.
        r = d.cli("exec", "deb", "--", "bash", "-c", 'id -un; echo "$HOME $SHELL"; pwd')
        self.assertEqual(r.stdout.split("\n")[:3],
                         ["agent", "/home/agent /bin/bash", "/home/agent"], r.stdout)
        r = d.cli("exec", "deb", "--", "sudo", "-n", "id", "-u")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "0"), r.stderr)
        r = d.cli("exec", "deb", "--", "ls", "/sys/class/net")
        self.assertLessEqual(set(r.stdout.split()), {"lo", "dummy0"}, r.stdout)
        r = d.cli("vm", "stop", "deb", timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        sys.stderr.write("debian via nilboxd: image build %.0f s (cached if a few s), "
                         "vm create --start to ready agent %.1f s (daemon: %.1f s)\n" %
                         (build_s, boot_s, vm.get("boot_secs", 0)))


if __name__ == "__main__":
    unittest.main(verbosity=2)
