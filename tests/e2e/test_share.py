#!/usr/bin/env python3
"""End to end: folder mapping (`nilbox share`) in a real tiny VM (TCG unless KVM works).

One daemon, one VM, host folders in the suite's temporary folder, in order:
  01 bad input: unknown VM, bad guest paths, a host path that is no folder;
  02 add a read-write share while the VM runs: mounted at once; `share ls`;
  03 the POSIX suite (tests/e2e/share_posix.c, static) run in the guest on the
     share, from the share: files, appends, truncate, rename over existing,
     directories, unlinked open files, symlinks, hard links and devices
     refused, chmod/utimes, owner mapping, fsync, statfs, mmap, 5 GiB offsets;
  04 host-side changes (new file, rewritten file) seen by the guest;
  04b large files both ways, three readers and three writers at once, hashed;
  04c the shared data area: large files both ways through it (hashed, its
      request counter moves), then a share mounted without it (its file
      gone on the host) moves the same data over the channel;
  05 A19 from the guest: symlinks and hard links to host files outside the
     share lead nowhere; `..` stays in the guest;
  06 read-only share: reads work, every write is refused, the host folder is
     unchanged;
  07 a directory of 100 000 entries listed in the guest, then `ls -l` of it
     twice (every entry looked up: more nodes than the daemon may hold
     descriptors, and the guest forgets them in big batches);
  08 persistence: the VM restarts and the shares are mounted again; `share
     rm` unmounts.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE, NB_IMAGES_SRC,
NB_SHARE_POSIX (the static share_posix binary).
"""
import hashlib
import json
import os
import shutil
import time
import unittest

from e2e_env import AGENT, TINY, VmSuite, build_image, need, wait_for

POSIX = os.environ.get("NB_SHARE_POSIX", "")
VM = "sh1"


class ShareE2E(VmSuite):
    @classmethod
    def setup(cls):
        need()
        if not POSIX:
            raise unittest.SkipTest("missing: NB_SHARE_POSIX")
        build_image("tiny", TINY, AGENT)
        cls.d = cls.daemon({"tiny": TINY})
        cls.host = os.path.join(cls.tmp, "host")
        cls.rodir = os.path.join(cls.tmp, "ro")
        cls.outside = os.path.join(cls.tmp, "outside")
        for p in (cls.host, cls.rodir, cls.outside):
            os.makedirs(p)
        with open(os.path.join(cls.outside, "secret"), "w") as f:
            f.write("TOP SECRET\n")
        with open(os.path.join(cls.rodir, "f"), "w") as f:
            f.write("keep\n")
        r = cls.d.cli("vm", "create", VM, "--image", "tiny", "--start", timeout=300)
        if r.returncode != 0:
            raise RuntimeError("vm create: %s %s" % (r.stdout, r.stderr))

    # -- helpers -------------------------------------------------------------
    def sh(self, script, ok=True, timeout=300):
        r = self.d.cli("exec", VM, "--", "sh", "-c", script, timeout=timeout)
        if ok and r.returncode != 0:
            self.fail("guest: %s -> %d\nstdout: %s\nstderr: %s\ndaemon: %s" %
                      (script, r.returncode, r.stdout, r.stderr, self.d.stderr()[-3000:]))
        return r

    def shares(self):
        return json.loads(self.cli("--json", "share", "ls").stdout)["shares"]

    def wait_agent(self):
        wait_for(lambda: self.inspect(VM)["agent"], 300, "the agent of " + VM)

    def mounted(self, guest):
        return guest in self.sh("cat /proc/mounts").stdout

    # -- 01 --------------------------------------------------------------------
    def test_01_bad_input(self):
        self.wait_agent()
        r = self.cli("share", "add", "nope", self.host, "/mnt/x", ok=False)
        self.assertEqual(r.returncode, 4, r.stderr)
        for g in ("/", "relative", "/mnt/../etc", "/proc/x", "/mnt/a,b", "/mnt/x/"):
            r = self.cli("share", "add", VM, self.host, g, ok=False)
            self.assertNotEqual(r.returncode, 0, g)
            self.assertIn("guest folder", r.stderr)
        r = self.cli("share", "add", VM, os.path.join(self.outside, "secret"), "/mnt/x", ok=False)
        self.assertNotEqual(r.returncode, 0)
        r = self.cli("share", "rm", "999", ok=False)
        self.assertEqual(r.returncode, 4)
        self.assertEqual(self.shares(), [])

    # -- 02 --------------------------------------------------------------------
    def test_02_add(self):
        r = self.cli("share", "add", VM, self.host, "/mnt/host", timeout=180)
        self.assertIn("mounted", r.stdout)
        s = self.shares()
        self.assertEqual(len(s), 1)
        self.assertEqual(s[0]["state"], "mounted")
        self.assertEqual(s[0]["host"], os.path.realpath(self.host))
        self.assertTrue(self.mounted("/mnt/host"))
        r = self.cli("share", "add", VM, self.rodir, "/mnt/host/sub", ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("nested", r.stderr)

    # -- 03 --------------------------------------------------------------------
    def test_03_posix(self):
        shutil.copy(POSIX, os.path.join(self.host, "share_posix"))
        os.chmod(os.path.join(self.host, "share_posix"), 0o755)
        os.mkdir(os.path.join(self.host, "posix"))
        r = self.sh("/mnt/host/share_posix check /mnt/host/posix", ok=False, timeout=600)
        print(r.stdout)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("FAIL", r.stdout)
        self.assertIn("ok mmap_shared_write", r.stdout)
        self.assertIn("ok bigfile_5GiB_offset", r.stdout)
        # What the guest did is what the host has.
        with open(os.path.join(self.host, "posix", "a")) as f:
            self.assertEqual(f.read(), "bee")
        self.assertEqual(os.readlink(os.path.join(self.host, "posix", "ln")), "a")
        with open(os.path.join(self.host, "posix", "m"), "rb") as f:
            f.seek(4096)
            self.assertEqual(f.read(6), b"mapped")
        # A file past 4 GiB written on the host, read in the guest.
        big = os.path.join(self.host, "hostbig")
        with open(big, "wb") as f:
            f.seek((6 << 30) + 1)
            f.write(b"HOSTFAR")
        r = self.sh("dd if=/mnt/host/hostbig bs=1 skip=%d count=7 2>/dev/null" % ((6 << 30) + 1))
        self.assertEqual(r.stdout, "HOSTFAR")
        os.unlink(big)

    # -- 04 --------------------------------------------------------------------
    def test_04_host_changes(self):
        p = os.path.join(self.host, "fromhost.txt")
        with open(p, "w") as f:
            f.write("one\n")
        self.assertEqual(self.sh("cat /mnt/host/fromhost.txt").stdout, "one\n")
        with open(p, "w") as f:
            f.write("two, longer\n")
        time.sleep(1.5)  # the guest caches attributes for 1 s
        wait_for(lambda: self.sh("cat /mnt/host/fromhost.txt").stdout == "two, longer\n", 30,
                 "the host's change in the guest")
        os.unlink(p)
        wait_for(lambda: self.sh("test -e /mnt/host/fromhost.txt", ok=False).returncode != 0, 30,
                 "the host's unlink in the guest")

    # -- 04b -------------------------------------------------------------------
    def test_04b_bulk_concurrent(self):
        """Large files both ways with several readers and writers at once
        (full-size requests, several in flight, the write buffers handed to
        the stream): every byte arrives, and a write is on the host once the
        guest's fsync returned."""
        data = os.urandom(13 * 1024 * 1024 + 12345)  # not a multiple of any request size
        with open(os.path.join(self.host, "bulk.bin"), "wb") as f:
            f.write(data)
        want = hashlib.sha256(data).hexdigest()
        r = self.sh("head -c 11000000 /dev/urandom > /tmp/src && sha256sum /tmp/src && "
                    "cd /mnt/host && "
                    "for i in 1 2 3; do sha256sum bulk.bin > /tmp/r$i & done; "
                    "dd if=/tmp/src of=w1 bs=3M conv=fsync 2>/dev/null & "
                    "dd if=/tmp/src of=w2 bs=4096 conv=fsync 2>/dev/null & "
                    "dd if=/tmp/src of=w3 bs=1000000 conv=fsync 2>/dev/null & "
                    "wait; cat /tmp/r1 /tmp/r2 /tmp/r3; rm /tmp/src /tmp/r1 /tmp/r2 /tmp/r3",
                    timeout=900)
        lines = r.stdout.split()
        src = lines[0]
        self.assertEqual(lines[2::2], [want] * 3, r.stdout)
        for i in (1, 2, 3):
            with open(os.path.join(self.host, "w%d" % i), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), src, "w%d" % i)
            os.unlink(os.path.join(self.host, "w%d" % i))
        os.unlink(os.path.join(self.host, "bulk.bin"))

    # -- 04c -------------------------------------------------------------------
    def share(self, guest):
        return [s for s in self.shares() if s["guest"] == guest][0]

    def big_both_ways(self, hostdir, guestdir):
        """A 9 MiB host file read in the guest and a 7 MiB guest file written
        to the host, both hashed on the other side."""
        data = os.urandom(9 * 1024 * 1024 + 4321)
        with open(os.path.join(hostdir, "big.in"), "wb") as f:
            f.write(data)
        r = self.sh("sha256sum %s/big.in && head -c 7340033 /dev/urandom > /tmp/big && "
                    "sha256sum /tmp/big && dd if=/tmp/big of=%s/big.out bs=1M conv=fsync 2>/dev/null && "
                    "rm /tmp/big" %
                    (guestdir, guestdir), timeout=600)
        lines = r.stdout.split()
        self.assertEqual(lines[0], hashlib.sha256(data).hexdigest(), r.stdout)
        with open(os.path.join(hostdir, "big.out"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), lines[2], "big.out")
        os.unlink(os.path.join(hostdir, "big.in"))
        os.unlink(os.path.join(hostdir, "big.out"))

    def test_04c_shared_area(self):
        s = self.share("/mnt/host")
        self.assertTrue(s["shm"], s)
        before = s["shm_ops"]
        self.big_both_ways(self.host, "/mnt/host")
        # 9 MiB read and 7 MiB written in requests of at most 1 MiB.
        self.assertGreaterEqual(self.share("/mnt/host")["shm_ops"] - before, 16)
        # Fallback: the area's file is gone on the host (as for a VM booted
        # by an older daemon): a new mount moves its data over the channel.
        shm = self.inspect(VM)["share_shm"]
        self.assertTrue(os.path.exists(shm), shm)
        self.assertEqual(os.stat(shm).st_mode & 0o777, 0o600)
        os.unlink(shm)
        fb = os.path.join(self.tmp, "fallback")
        os.makedirs(fb)
        self.cli("share", "add", VM, fb, "/mnt/fb", timeout=180)
        s = self.share("/mnt/fb")
        self.assertFalse(s["shm"], s)
        self.big_both_ways(fb, "/mnt/fb")
        self.assertEqual(self.share("/mnt/fb")["shm_ops"], 0)
        # The first mount keeps its area.
        self.big_both_ways(self.host, "/mnt/host")
        self.cli("share", "rm", str(self.share("/mnt/fb")["id"]))
        wait_for(lambda: not self.mounted("/mnt/fb"), 60, "the guest unmounted /mnt/fb")

    # -- 05 --------------------------------------------------------------------
    def test_05_escapes(self):
        os.symlink(self.outside, os.path.join(self.host, "out_abs"))
        os.symlink("../outside", os.path.join(self.host, "out_rel"))
        os.link(os.path.join(self.outside, "secret"), os.path.join(self.host, "hard"))
        r = self.sh("cat /mnt/host/out_abs/secret /mnt/host/out_rel/secret /mnt/host/hard "
                    "/mnt/host/../outside/secret 2>&1; echo; "
                    "echo x > /mnt/host/out_abs/new; echo x > /mnt/host/hard; "
                    "ln /mnt/host/share_posix /mnt/host/hl; true")
        self.assertNotIn("TOP SECRET", r.stdout)
        self.assertEqual(os.listdir(self.outside), ["secret"])
        with open(os.path.join(self.outside, "secret")) as f:
            self.assertEqual(f.read(), "TOP SECRET\n")
        self.assertFalse(os.path.exists(os.path.join(self.host, "hl")))
        # The guest sees the symlink as a symlink with its text.
        self.assertEqual(self.sh("readlink /mnt/host/out_rel").stdout.strip(), "../outside")
        for n in ("out_abs", "out_rel", "hard"):
            os.unlink(os.path.join(self.host, n))

    # -- 06 --------------------------------------------------------------------
    def test_06_readonly(self):
        r = self.cli("share", "add", VM, self.rodir, "/mnt/ro", "--ro", timeout=180)
        self.assertIn("read-only", r.stdout)
        self.assertEqual(self.sh("cat /mnt/ro/f").stdout, "keep\n")
        for cmd in ("echo x > /mnt/ro/f", "echo x >> /mnt/ro/f", "echo x > /mnt/ro/new",
                    "rm /mnt/ro/f", "mkdir /mnt/ro/d", "mv /mnt/ro/f /mnt/ro/g",
                    "ln -s f /mnt/ro/l", "chmod 777 /mnt/ro/f", "touch /mnt/ro/f",
                    ": > /mnt/ro/f"):
            r = self.sh(cmd, ok=False)
            self.assertNotEqual(r.returncode, 0, cmd)
        self.assertEqual(sorted(os.listdir(self.rodir)), ["f"])
        with open(os.path.join(self.rodir, "f")) as f:
            self.assertEqual(f.read(), "keep\n")

    # -- 07 --------------------------------------------------------------------
    def test_07_big_readdir(self):
        big = os.path.join(self.host, "many")
        os.mkdir(big)
        for i in range(100000):
            os.close(os.open(os.path.join(big, "f%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
        t0 = time.time()
        r = self.sh("/mnt/host/share_posix count /mnt/host/many", timeout=900)
        print("readdir of 100000 entries in the guest: %.1f s" % (time.time() - t0))
        self.assertEqual(r.stdout.strip(), "100000")
        # `ls` stats every entry: 100 000 lookups, far more nodes than the
        # daemon may hold descriptors (its limit here is often 20 000), and
        # the guest kernel forgets them in large batches.
        for rnd in range(2):
            t0 = time.time()
            r = self.sh("ls -l /mnt/host/many > /tmp/ls.out; echo rc=$?; wc -l < /tmp/ls.out; "
                        "sed -n '2p;$p' /tmp/ls.out; rm /tmp/ls.out", timeout=1800)
            print("ls -l of 100000 entries, round %d: %.1f s" % (rnd, time.time() - t0))
            out = r.stdout.split("\n")
            self.assertEqual(out[0], "rc=0", r.stdout + r.stderr[-2000:])
            self.assertEqual(r.stderr, "")
            self.assertEqual(out[1].strip(), "100001")  # "total" + one line per entry
            self.assertTrue(out[2].endswith(" f000000"), out[2])
            self.assertTrue(out[3].endswith(" f099999"), out[3])
        self.assertEqual(self.sh("stat -c %s /mnt/host/many/f054321").stdout.strip(), "0")
        shutil.rmtree(big)

    # -- 08 --------------------------------------------------------------------
    def test_08_persist_and_rm(self):
        self.cli("vm", "stop", VM, timeout=300)
        self.assertEqual({s["state"] for s in self.shares()}, {"waiting"})
        self.cli("vm", "start", VM, timeout=300)
        self.wait_agent()
        wait_for(lambda: {s["state"] for s in self.shares()} == {"mounted"}, 120,
                 "the shares mounted again")
        # A new boot has a new shared area (test 04c removed the old file).
        self.assertTrue(self.share("/mnt/host")["shm"])
        with open(os.path.join(self.host, "after"), "w") as f:
            f.write("restart\n")
        self.assertEqual(self.sh("cat /mnt/host/after").stdout, "restart\n")
        for s in self.shares():
            self.cli("share", "rm", str(s["id"]))
        self.assertEqual(self.shares(), [])
        wait_for(lambda: not self.mounted("/mnt/host") and not self.mounted("/mnt/ro"), 60,
                 "the guest unmounted")


if __name__ == "__main__":
    unittest.main(verbosity=2)
