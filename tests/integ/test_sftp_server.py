#!/usr/bin/env python3
"""The agent's SFTP server (`nilbox-agent sftp-server`, src/agent/sftp.c)
driven by the stock OpenSSH sftp client on this host (`sftp -D`, no SSH in
between), and by hand-made bad packets.

Env: NILBOX_AGENT (the built agent).
"""
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

AGENT = os.environ.get("NILBOX_AGENT", "")


def pkt(t, body):
    b = bytes([t]) + body
    return struct.pack(">I", len(b)) + b


def s(x):
    return struct.pack(">I", len(x)) + x


class SftpServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not AGENT or not shutil.which("sftp"):
            raise unittest.SkipTest("needs NILBOX_AGENT and sftp")
        cls.tmp = tempfile.mkdtemp(prefix="nb-sftp-")
        cls.wrap = os.path.join(cls.tmp, "server.sh")
        with open(cls.wrap, "w") as f:
            f.write("#!/bin/sh\nexec '%s' sftp-server\n" % AGENT)
        os.chmod(cls.wrap, 0o755)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def sftp(self, batch, ok=True):
        r = subprocess.run(["sftp", "-D", self.wrap, "-b", "-"], input=batch.encode(),
                           cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120)
        if ok:
            self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def test_roundtrip_large(self):
        src = os.path.join(self.tmp, "src.bin")
        data = os.urandom(9 << 20)
        with open(src, "wb") as f:
            f.write(data)
        d = os.path.join(self.tmp, "dir")
        r = self.sftp("mkdir %s\ncd %s\nput %s a.bin\nls -l\nrename a.bin b.bin\n"
                      "chmod 600 b.bin\nsymlink b.bin link\nget link %s/back.bin\n"
                      % (d, d, src, self.tmp))
        self.assertIn(b"a.bin", r.stdout)
        with open(os.path.join(self.tmp, "back.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).digest(), hashlib.sha256(data).digest())
        self.assertEqual(os.stat(os.path.join(d, "b.bin")).st_mode & 0o777, 0o600)
        self.assertEqual(os.readlink(os.path.join(d, "link")), "b.bin")
        # v3 rename does not replace; rm, rmdir.
        open(os.path.join(d, "c.bin"), "w").close()
        r = self.sftp("rename %s/c.bin %s/b.bin\n" % (d, d), ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.sftp("rm %s/b.bin\nrm %s/c.bin\nrm %s/link\nrmdir %s\n" % (d, d, d, d))
        self.assertFalse(os.path.exists(d))

    def test_errors(self):
        r = self.sftp("get /nonexistent/x %s/y\n" % self.tmp, ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"not found", r.stderr + r.stdout)

    def raw(self, data):
        return subprocess.run([AGENT, "sftp-server"], input=data, stdout=subprocess.PIPE,
                              timeout=30)

    def test_bad_packets(self):
        init = pkt(1, struct.pack(">I", 3))
        # No INIT first, a zero length, a length past the cap: the server ends.
        for bad in (pkt(17, struct.pack(">I", 1) + s(b"/")), b"\0\0\0\0",
                    struct.pack(">I", 1 << 30) + b"x" * 100):
            self.assertEqual(self.raw(bad).returncode, 1)
        # Truncated and unknown requests get BAD_MESSAGE / OP_UNSUPPORTED, and the
        # server keeps going (the STAT after them is answered with ATTRS).
        out = self.raw(init + pkt(3, struct.pack(">I", 7) + b"\0\0") +
                       pkt(99, struct.pack(">I", 8)) +
                       pkt(5, struct.pack(">I", 9) + s(b"zzzz") + struct.pack(">QI", 0, 10)) +
                       pkt(17, struct.pack(">I", 10) + s(b"/"))).stdout
        replies = []
        while out:
            n = struct.unpack(">I", out[:4])[0]
            replies.append(out[4:4 + n])
            out = out[4 + n:]
        self.assertEqual(replies[0][0], 2)  # VERSION
        self.assertEqual([r[0] for r in replies[1:]], [101, 101, 101, 105])
        code = [struct.unpack(">I", r[5:9])[0] for r in replies[1:4]]
        self.assertEqual(code, [5, 8, 4])  # bad message, unsupported, invalid handle
        self.assertEqual(self.raw(init + b"\0\0\0\x05\x01").returncode, 0)  # EOF mid-packet


if __name__ == "__main__":
    unittest.main(verbosity=2)
