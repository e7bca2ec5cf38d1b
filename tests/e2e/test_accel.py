#!/usr/bin/env python3
"""End to end: accelerator choice on a host whose KVM is present but broken.

Real QEMU (TCG) behind a wrapper (NILBOX_QEMU) that pretends KVM exists
(NILBOX_KVM_DEVICE=/dev/null opens read-write) and misbehaves when asked
for `-accel kvm`, as QEMU does on a bad nested host:
  abort     QEMU's own "error: failed to set MSR 0x10a ..." line, the
            kvm_put_msrs assertion, SIGABRT (probe and VMs alike);
  abort-vm  the KVM probe passes, a real VM aborts as above;
  stall     the KVM probe passes, a real VM starts with its guest stopped
            (QEMU alive, status not "running"), like a KVM emulation failure.
Cases, in order:
  01 doctor says "kvm present but unusable: <QEMU's line>" and that there is
     nothing to do; `auto` picks TCG at once and inspect says why;
  02 usage: --accel bogus (exit 2), --accel kvm where no KVM device opens,
     and --accel kvm where KVM is broken: a clear error quoting QEMU;
  03 abort-vm: auto restarts the VM once under TCG, says so, records the
     host as KVM-unusable; vm logs --qemu shows QEMU's error;
  04 stall: detected from QMP within seconds (not the 180 s boot timeout),
     then the same TCG fallback.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import unittest

from e2e_env import AGENT, NILBOXD, TINY, VmSuite, build_image, need

MSR = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x2000c0ab"

WRAPPER = r"""#!/bin/bash
# A QEMU on a host with broken KVM (tests/e2e/test_accel.py).
ulimit -c 0
REAL=%(real)s
mode=$(cat %(mode)s 2>/dev/null || echo abort)
kvm=0 probe=0
for a in "$@"; do
    [ "$a" = kvm ] && kvm=1
    case "$a" in *nilbox-kvm-probe*) probe=1 ;; esac
done
[ $kvm = 1 ] || exec "$REAL" "$@"
echo "$mode probe=$probe" >>%(calls)s
abort() {
    echo "%(msr)s" >&2
    echo "qemu-system-x86_64: ../target/i386/kvm/kvm.c:3052: kvm_put_msrs: Assertion \`ret == cpu->kvm_msr_buf->nmsrs' failed." >&2
    kill -ABRT $$
}
fake_boot() {
    echo "[    0.412345] Run /init as init process"
    exec sleep 60
}
case "$mode" in
abort) abort ;;
abort-vm) [ $probe = 1 ] && fake_boot; abort ;;
stall)
    [ $probe = 1 ] && fake_boot
    # The same VM under TCG, but its guest never runs: QEMU is up, QMP
    # answers, query-status says "prelaunch", as a stopped KVM guest would.
    args=() prev=""
    for a in "$@"; do
        case "$prev" in
        -accel) a=tcg ;;
        -cpu) a=max ;;
        -machine) a=${a/,pit=off,pic=off/} ;;
        esac
        args+=("$a")
        prev=$a
    done
    exec "$REAL" "${args[@]}" -S ;;
esac
exec "$REAL" "$@"
"""


class AccelE2E(VmSuite):
    @classmethod
    def setup(cls):
        need()
        build_image("tiny", TINY, AGENT)
        cls.mode = os.path.join(cls.tmp, "mode")
        cls.calls_path = os.path.join(cls.tmp, "calls")
        cls.qemu = os.path.join(cls.tmp, "qemu-system-x86_64")
        with open(cls.qemu, "w") as f:
            f.write(WRAPPER % {"real": shutil.which("qemu-system-x86_64"), "mode": cls.mode,
                               "calls": cls.calls_path, "msr": MSR})
        os.chmod(cls.qemu, stat.S_IRWXU)
        cls.set_mode("abort")
        cls.d = cls.new_daemon({"NILBOX_QEMU": cls.qemu, "NILBOX_KVM_DEVICE": "/dev/null"})

    @classmethod
    def new_daemon(cls, env):
        return cls.daemon({"tiny": TINY}, dict({"NILBOX_ACCEL": None}, **env))

    @classmethod
    def set_mode(cls, mode):
        with open(cls.mode, "w") as f:
            f.write(mode)

    def probe_cache(self):
        with open(os.path.join(self.d.home, "kvm-probe.json")) as f:
            return json.load(f)

    def forget_probe(self):
        try:
            os.unlink(os.path.join(self.d.home, "kvm-probe.json"))
        except FileNotFoundError:
            pass

    def calls(self):
        try:
            with open(self.calls_path) as f:
                return f.read().split("\n")[:-1]
        except OSError:
            return []

    # -- 00 ------------------------------------------------------------------
    def test_00_daemon_status_web_ui(self):
        with open(os.path.join(self.d.runtime, "api.json")) as f:
            api = json.load(f)
        want = "%s#token=%s" % (api["url"], api["token"])
        r = self.cli("daemon", "status")
        self.assertIn("web UI:    " + want + "\n", r.stdout)
        st = json.loads(self.cli("--json", "daemon", "status").stdout)
        self.assertEqual(st["web_ui"], want)

    # -- 01 ------------------------------------------------------------------
    def test_01_doctor_and_auto(self):
        r = self.cli("doctor", ok=False)
        line = [x for x in r.stdout.split("\n") if " kvm " in x]
        self.assertTrue(line, r.stdout)
        self.assertIn("kvm present but unusable: " + MSR, line[0])
        self.assertIn("nothing to do: VMs use TCG", r.stdout)
        self.assertEqual(self.calls(), ["abort probe=1"])
        self.assertEqual(self.probe_cache()["state"], "broken")
        rep = json.loads(self.cli("--json", "doctor", ok=False).stdout)
        kvm = [c for c in rep["checks"] if c["name"] == "kvm"][0]
        self.assertEqual(kvm["status"], "warn")
        self.assertIn(MSR, kvm["message"])
        self.assertEqual(self.calls(), ["abort probe=1"])  # cached: no second probe

        t0 = time.time()
        r = self.cli("vm", "create", "a1", "--memory", "256M", "--start", timeout=300)
        self.assertIn("is running", r.stdout)
        self.assertIn("accelerator tcg: auto (default): KVM present but unusable: " + MSR,
                      r.stderr)
        self.assertEqual(self.calls(), ["abort probe=1"])  # no VM ever tried KVM
        vm = self.inspect("a1")
        self.assertEqual((vm["accel"], vm["accel_setting"], vm["accel_setting_from"]),
                         ("tcg", "auto", "default"))
        self.assertIn("KVM present but unusable", vm["accel_reason"])
        self.assertIn("MSR 0x10a", vm["accel_reason"])
        r = self.d.cli("exec", "a1", "--", "echo", "hi", timeout=60)
        self.assertEqual((r.returncode, r.stdout), (0, "hi\n"))
        self.cli("vm", "stop", "a1", timeout=120)
        sys.stderr.write("auto -> TCG boot: %.1f s\n" % (time.time() - t0))

    # -- 02 ------------------------------------------------------------------
    def test_02_usage_and_forced_kvm(self):
        r = self.cli("vm", "create", "b1", "--accel", "bogus", ok=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--accel must be auto, kvm or tcg", r.stderr)
        r = self.cli("vm", "set", "a1", "--accel", "fast", ok=False)
        self.assertEqual(r.returncode, 2, r.stderr)
        # The API refuses it too.
        st, _, body = self.d.unix("PATCH", "/v1/vms/a1", body=json.dumps({"accel": "qemu"}),
                                  headers={"Content-Type": "application/json"})
        self.assertEqual(st, 422, body)

        # No KVM device at all: --accel kvm is refused at create.
        d2 = self.new_daemon({"NILBOX_QEMU": self.qemu, "NILBOX_KVM_DEVICE": "/nonexistent/kvm"})
        r = self.cli("vm", "create", "k1", "--accel", "kvm", d=d2, ok=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("no usable KVM (/nonexistent/kvm: No such file or directory)", r.stderr)
        self.assertIn("--accel auto", r.stderr)
        r = self.cli("doctor", d=d2, ok=False)
        self.assertIn("no kvm: /nonexistent/kvm", r.stdout)
        d2.cleanup()

        # The daemon-wide default: VMs without --accel follow NILBOX_ACCEL;
        # a VM's own setting wins. A bad value stops the daemon at start.
        d3 = self.new_daemon({"NILBOX_QEMU": self.qemu, "NILBOX_ACCEL": "tcg"})
        self.cli("vm", "create", "n1", d=d3)
        self.cli("vm", "create", "n2", "--accel", "auto", d=d3)
        vm = self.inspect("n1", d=d3)
        self.assertEqual((vm["accel_setting"], vm["accel_setting_from"]), ("tcg", "NILBOX_ACCEL"))
        vm = self.inspect("n2", d=d3)
        self.assertEqual((vm["accel_setting"], vm["accel_setting_from"]), ("auto", "vm"))
        d3.cleanup()
        env = dict(d3.env, NILBOX_ACCEL="fast", NILBOX_HOME=os.path.join(self.tmp, "h4"))
        r = subprocess.run([NILBOXD, "--foreground"], env=env, capture_output=True, text=True,
                           timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("NILBOX_ACCEL must be auto, kvm or tcg (it is 'fast')", r.stderr)

        # KVM present but broken (cached from 01): kvm is allowed as a
        # setting, and the start says why it cannot run.
        self.cli("vm", "create", "k2", "--accel", "kvm")
        self.assertEqual(self.inspect("k2")["accel_setting"], "kvm")
        r = self.cli("vm", "start", "k2", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("KVM is present but unusable", r.stderr)
        self.assertIn(MSR, r.stderr)
        self.assertIn("nilbox vm set k2 --accel auto", r.stderr)
        self.cli("vm", "set", "k2", "--accel", "tcg")
        vm = self.inspect("k2")
        self.assertEqual((vm["accel_setting"], vm["accel_setting_from"]), ("tcg", "vm"))

        # Forced kvm where the probe passes but QEMU aborts: no fallback,
        # and the error quotes QEMU and names its log.
        self.forget_probe()
        self.set_mode("abort-vm")
        self.cli("vm", "set", "k2", "--accel", "kvm")
        t0 = time.time()
        r = self.cli("vm", "start", "k2", ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertLess(time.time() - t0, 60)
        self.assertIn("VM k2 did not come up: QEMU killed by signal 6", r.stderr)
        self.assertIn('QEMU said: "%s"' % MSR, r.stderr)
        self.assertIn(os.path.join(self.d.home, "vms", "k2", "qemu.log"), r.stderr)
        self.assertEqual(self.inspect("k2")["state"], "crashed")
        self.cli("vm", "rm", "k2")

    # -- 03 ------------------------------------------------------------------
    def test_03_fallback_after_abort(self):
        self.forget_probe()
        self.set_mode("abort-vm")
        n = len(self.calls())
        t0 = time.time()
        r = self.cli("vm", "create", "c1", "--memory", "256M", "--start", timeout=300)
        took = time.time() - t0
        self.assertIn("is running", r.stdout)
        self.assertEqual(self.calls()[n:], ["abort-vm probe=1", "abort-vm probe=0"])
        self.assertIn("accelerator kvm: auto (default): KVM works here", r.stderr)
        self.assertIn("KVM failed (QEMU killed by signal 6: %s); starting again under TCG" % MSR,
                      r.stderr)
        self.assertIn("accelerator tcg: auto (default): KVM failed on the previous attempt",
                      r.stderr)
        vm = self.inspect("c1")
        self.assertEqual(vm["accel"], "tcg")
        self.assertIn(MSR, vm["accel_reason"])
        self.assertEqual(self.probe_cache()["state"], "broken")
        self.assertEqual(self.probe_cache()["detail"], MSR)
        r = self.d.cli("exec", "c1", "--", "true", timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        # QEMU's own words: in `vm logs` (marked) and alone with --qemu.
        r = self.cli("vm", "logs", "c1", "--qemu")
        self.assertIn(MSR, r.stdout)
        self.assertIn("kvm_put_msrs: Assertion", r.stdout)
        r = self.cli("vm", "logs", "c1")
        self.assertIn("----- QEMU's own output (stderr: ", r.stdout)
        self.assertGreater(r.stdout.index("----- QEMU's own output"), 0)  # the console first
        self.assertIn(MSR, r.stdout.split("----- QEMU's own output")[1])
        # The next start does not try KVM again.
        self.cli("vm", "stop", "c1", timeout=120)
        n = len(self.calls())
        self.cli("vm", "start", "c1", timeout=300)
        self.assertEqual(self.calls()[n:], [])
        self.assertIn("KVM present but unusable", self.inspect("c1")["accel_reason"])
        self.cli("vm", "rm", "--force", "c1", timeout=120)
        sys.stderr.write("abort + TCG fallback: %.1f s\n" % took)

    # -- 04 ------------------------------------------------------------------
    def test_04_fallback_after_stall(self):
        self.forget_probe()
        self.set_mode("stall")
        n = len(self.calls())
        t0 = time.time()
        r = self.cli("vm", "create", "s1", "--memory", "256M", "--start", timeout=300)
        took = time.time() - t0
        self.assertIn("is running", r.stdout)
        self.assertEqual(self.calls()[n:], ["stall probe=1", "stall probe=0"])
        self.assertIn("QEMU stopped the guest (status prelaunch)", r.stderr)
        self.assertIn("starting again under TCG", r.stderr)
        self.assertEqual(self.inspect("s1")["accel"], "tcg")
        self.assertEqual(self.probe_cache()["state"], "broken")
        # Far below the 180 s boot deadline: detected within about a second.
        self.assertLess(took, 90)
        self.cli("vm", "rm", "--force", "s1", timeout=120)
        sys.stderr.write("stall + TCG fallback: %.1f s\n" % took)


if __name__ == "__main__":
    unittest.main(verbosity=2)
