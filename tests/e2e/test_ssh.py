#!/usr/bin/env python3
"""End to end: the SSH gateway (docs/internals/ssh.md) with stock OpenSSH
clients against a real tiny VM (TCG unless KVM works).

  01 ssh-config / ssh status; a wrong key is refused, a garbage client and
     a half-open client do not hurt the daemon;
  02 commands: output, stdin, exit codes (`false`, `exit 7`), stderr apart;
  03 an interactive shell through a pty: type `echo hi`, resize (stty size);
  03b A20: a guest printing OSC 52 (clipboard write) and a title report
     request on a pty channel: dropped, the rest of the line arrives, a
     notice on stderr; the same bytes over a non-pty exec stay byte-exact;
  04 sftp and scp (SFTP mode) of a 20 MiB file both ways, checked by sha256;
  04b rsync over ssh (the tiny image ships Debian's rsync): a tree up,
     checked by sha256 in the guest, a changed file sent again (delta),
     --delete, and the tree back down;
  05 -L forwarding to a server in the guest;
  06 40 idle connections come and go, then a login works; the generated
     ~/.ssh/config block (`ssh nilbox-VM`);
  07 stopping the VM ends an open session (A27); a stopped VM is refused.

Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE,
NB_IMAGES_SRC (e2e_env).
"""
import hashlib
import json
import os
import shlex
import pty
import select
import socket
import subprocess
import time
import unittest

from e2e_env import AGENT, TINY, VmSuite, build_image, need, wait_for

VM = "sshvm"


class SshE2E(VmSuite):
    @classmethod
    def setup(cls):
        need(tools=("ssh", "ssh-keygen", "sftp", "scp"))
        build_image("tiny", TINY, AGENT)
        cls.d = cls.daemon({"tiny": TINY})
        cls.key = os.path.join(cls.tmp, "id_ed25519")
        cls.bad = os.path.join(cls.tmp, "bad_ed25519")
        for k in (cls.key, cls.bad):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
        os.makedirs(os.path.join(cls.d.home, "ssh"), exist_ok=True)
        r = cls.d.cli("ssh", "keys", "add", cls.key + ".pub")
        assert r.returncode == 0, r.stderr
        st = json.loads(cls.d.cli("--json", "ssh", "status").stdout)
        cls.port = st["port"]
        cls.known = os.path.join(cls.tmp, "known_hosts")
        with open(cls.known, "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (cls.port, st["host_key"]))
        r = cls.d.cli("vm", "create", VM, "--start", timeout=300)
        assert r.returncode == 0, r.stderr

    # -- helpers -----------------------------------------------------------
    def opts(self, key=None):
        return ["-F", "/dev/null", "-i", key or self.key, "-o", "IdentitiesOnly=yes",
                "-o", "UserKnownHostsFile=" + self.known, "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"]

    def ssh(self, *cmd, key=None, input=None, timeout=180, extra=()):
        return subprocess.run(["ssh"] + self.opts(key) + list(extra) +
                              ["-p", str(self.port), VM + "@127.0.0.1", "--"] + list(cmd),
                              input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)

    def status(self):
        return json.loads(self.cli("--json", "ssh", "status").stdout)

    # -- 01 ------------------------------------------------------------------
    def test_01_config_keys_garbage(self):
        out = self.cli("ssh-config").stdout
        self.assertIn("Port %d" % self.port, out)
        self.assertIn("HostName 127.0.0.1", out)
        st = self.status()
        self.assertTrue(st["enabled"])
        self.assertTrue(st["fingerprint"].startswith("SHA256:"))
        with open(os.path.join(self.d.home, "ssh", "host_ed25519_key")) as f:
            self.assertIn("PRIVATE KEY", f.read())
        self.assertEqual(os.stat(os.path.join(self.d.home, "ssh",
                                              "host_ed25519_key")).st_mode & 0o777, 0o600)
        # A key that is not listed: refused, no password prompt (BatchMode).
        r = self.ssh("true", key=self.bad)
        self.assertEqual(r.returncode, 255)
        self.assertIn(b"Permission denied (publickey)", r.stderr)
        # Garbage instead of an SSH version line, then a client that hangs
        # mid-handshake, then one that closes at once.
        for payload in (b"GET / HTTP/1.1\r\n\r\n" + os.urandom(4096),
                        b"SSH-2.0-x\r\n" + os.urandom(70000), b""):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            try:
                s.sendall(payload)
                s.settimeout(10)
                try:
                    while s.recv(4096):
                        pass
                except (socket.timeout, ConnectionResetError):
                    pass
            finally:
                s.close()
        hang = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(hang.close)
        self.assertTrue(self.status()["enabled"])
        # Not a VM: a clear message on stderr, exit 255.
        r = subprocess.run(["ssh"] + self.opts() + ["-p", str(self.port), "novm@127.0.0.1", "true"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(r.returncode, 255)
        self.assertIn(b"no VM named 'novm'", r.stderr)

    # -- 02 ------------------------------------------------------------------
    def test_02_commands_exit_codes(self):
        wait_for(lambda: self.inspect(VM)["agent"], 180, "the agent")
        r = self.ssh("echo", "hello", "from", "ssh")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"hello from ssh\n")
        self.assertEqual(self.ssh("false").returncode, 1)
        self.assertEqual(self.ssh("exit 7").returncode, 7)
        r = self.ssh("echo out; echo err >&2; exit 3")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (3, b"out\n", b"err\n"))
        r = self.ssh("tr a-z A-Z", input=b"piped input\n")
        self.assertEqual(r.stdout, b"PIPED INPUT\n")
        self.assertEqual(self.ssh("id -un").stdout.strip(), b"agent")

    # -- 03 ------------------------------------------------------------------
    def test_03_interactive_pty(self):
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp("ssh", ["ssh"] + self.opts() + ["-tt", "-p", str(self.port),
                                                       VM + "@127.0.0.1"])
        buf = b""

        def read_until(needle, t=90):
            nonlocal buf
            end = time.time() + t
            while needle not in buf and time.time() < end:
                r, _, _ = select.select([fd], [], [], 1)
                if r:
                    try:
                        buf += os.read(fd, 4096)
                    except OSError:
                        break
            return needle in buf
        try:
            os.write(fd, b"echo h''i\r")
            self.assertTrue(read_until(b"\nhi"), buf[-500:])
            import fcntl
            import struct
            import termios
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
            os.kill(pid, 28)  # SIGWINCH: ssh sends window-change
            time.sleep(1)
            os.write(fd, b"stty size\r")
            self.assertTrue(read_until(b"33 101"), buf[-500:])
            os.write(fd, b"exit 5\r")
            read_until(b"\x00never", 15)
        finally:
            _, status = os.waitpid(pid, 0)
            os.close(fd)
        self.assertEqual(os.waitstatus_to_exitcode(status), 5)

    # -- 03b -----------------------------------------------------------------
    def test_03b_pty_escape_filter(self):
        # OSC 52 would set the host clipboard; CSI 21 t would make the
        # terminal type the window title back into the session (A20).
        guest = r"printf 'A\033]52;c;aGFja2Vk\007B\033[21tC\033]0;ok-title\007D\n'"
        r = self.ssh(guest, extra=["-tt"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"AB", r.stdout)
        self.assertIn(b"D", r.stdout)
        self.assertNotIn(b"]52;", r.stdout)
        self.assertNotIn(b"aGFja2Vk", r.stdout)
        self.assertNotIn(b"\x1b[21t", r.stdout)
        # A window title is harmless and kept, as in `nilbox shell`.
        self.assertIn(b"\x1b]0;ok-title", r.stdout)
        self.assertIn(b"blocked 2 terminal escape sequences", r.stderr)
        self.assertIn(b"clipboard", r.stderr)
        # An interactive login shell: same filter.
        pid, fd = pty.fork()
        if pid == 0:
            os.execvp("ssh", ["ssh"] + self.opts() + ["-tt", "-p", str(self.port),
                                                       VM + "@127.0.0.1"])
        buf = b""
        try:
            os.write(fd, b"printf 'X\\033]52;c;aGFja2Vk\\007Y-%s\\n' done\r")
            end = time.time() + 90
            while b"XY-done" not in buf and time.time() < end:
                rd, _, _ = select.select([fd], [], [], 1)
                if rd:
                    try:
                        buf += os.read(fd, 4096)
                    except OSError:
                        break
            self.assertIn(b"XY-done", buf)
            os.write(fd, b"exit\r")
        finally:
            os.waitpid(pid, 0)
            os.close(fd)
        self.assertNotIn(b"\x1b]52;c;aGFja2Vk", buf)
        # Without a pty the channel is a byte pipe (scp, rsync, `ssh vm cat f
        # > f`): nothing is changed.
        r = self.ssh(guest)
        self.assertEqual(r.stdout, b"A\x1b]52;c;aGFja2Vk\x07B\x1b[21tC\x1b]0;ok-title\x07D\n")
        self.assertNotIn(b"blocked", r.stderr)

    # -- 04 ------------------------------------------------------------------
    def test_04_sftp_scp_large(self):
        src = os.path.join(self.tmp, "big.bin")
        data = os.urandom(20 << 20)
        with open(src, "wb") as f:
            f.write(data)
        want = hashlib.sha256(data).hexdigest()
        base = ["-P", str(self.port)] + self.opts()
        r = subprocess.run(["scp"] + base + [src, VM + "@127.0.0.1:/tmp/up.bin"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ssh("sha256sum /tmp/up.bin")
        self.assertEqual(r.stdout.split()[0].decode(), want)
        back = os.path.join(self.tmp, "back.bin")
        r = subprocess.run(["scp"] + base + [VM + "@127.0.0.1:/tmp/up.bin", back],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(back, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want)
        # sftp in batch mode: mkdir, put, ls, rename, get, rm.
        back2 = os.path.join(self.tmp, "back2.bin")
        batch = os.path.join(self.tmp, "batch")
        with open(batch, "w") as f:
            f.write("mkdir /tmp/d\ncd /tmp/d\nput %s x.bin\nls -l\nrename x.bin y.bin\n"
                    "get y.bin %s\nrm y.bin\nrmdir /tmp/d\n" % (src, back2))
        r = subprocess.run(["sftp", "-b", batch] + base + [VM + "@127.0.0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"x.bin", r.stdout)
        with open(back2, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), want)
        self.assertEqual(self.ssh("test -e /tmp/d").returncode, 1)
        # A missing file is an error, not a hang.
        r = subprocess.run(["scp"] + base + [VM + "@127.0.0.1:/nonexistent", back],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        self.assertNotEqual(r.returncode, 0)

    # -- 04b -----------------------------------------------------------------
    def test_04b_rsync(self):
        need(tools=("rsync",))
        self.assertEqual(self.ssh("command -v rsync").returncode, 0, "rsync in the tiny image")
        tree = os.path.join(self.tmp, "tree")
        os.makedirs(os.path.join(tree, "sub"), exist_ok=True)
        files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(3 << 20), "sub/c.txt": b"gamma\n" * 999}
        for name, data in files.items():
            with open(os.path.join(tree, name), "wb") as f:
                f.write(data)
        rsh = shlex.join(["ssh"] + self.opts() + ["-p", str(self.port)])
        dest = VM + "@127.0.0.1:/tmp/rs/"

        def rsync(*args):
            r = subprocess.run(["rsync", "-a", "--stats", "-e", rsh] + list(args),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr)
            return r.stdout.decode()

        def guest_sums():
            r = self.ssh("cd /tmp/rs && find . -type f | sort | xargs sha256sum")
            self.assertEqual(r.returncode, 0, r.stderr)
            return {l.split()[1][2:]: l.split()[0] for l in r.stdout.decode().splitlines()}

        def want():
            out = {}
            for root, _, names in os.walk(tree):
                for n in names:
                    p = os.path.join(root, n)
                    with open(p, "rb") as f:
                        out[os.path.relpath(p, tree)] = hashlib.sha256(f.read()).hexdigest()
            return out

        rsync(tree + "/", dest)
        self.assertEqual(guest_sums(), want())
        # A small change in the big file goes as a delta, not the whole file.
        with open(os.path.join(tree, "sub/b.bin"), "r+b") as f:
            f.seek(1 << 20)
            f.write(b"changed!")
        # Same size: rsync's quick check would skip the file if this change landed in the same
        # second as the first copy's mtime. Move the mtime on so the delta path always runs.
        st = os.stat(os.path.join(tree, "sub/b.bin"))
        os.utime(os.path.join(tree, "sub/b.bin"), (st.st_atime + 10, st.st_mtime + 10))
        os.remove(os.path.join(tree, "a.txt"))
        stats = rsync("--delete", "--no-whole-file", tree + "/", dest)
        self.assertEqual(guest_sums(), want())
        literal = int(stats.split("Literal data: ")[1].split()[0].replace(",", ""))
        self.assertLess(literal, 1 << 20, stats)
        # And back down.
        back = os.path.join(self.tmp, "tree-back")
        rsync(dest, back + "/")
        got = {}
        for root, _, names in os.walk(back):
            for n in names:
                p = os.path.join(root, n)
                with open(p, "rb") as f:
                    got[os.path.relpath(p, back)] = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(got, want())

    # -- 05 ------------------------------------------------------------------
    def test_05_local_forward(self):
        # A one-shot server in the guest on 127.0.0.1:7000.
        srv = subprocess.Popen(["ssh"] + self.opts() + ["-p", str(self.port), VM + "@127.0.0.1",
                               "echo guest-says-hello | nc -l -p 7000 127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(srv)
        time.sleep(3)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            lport = s.getsockname()[1]
        fwd = subprocess.Popen(["ssh"] + self.opts() + ["-N", "-L", "%d:localhost:7000" % lport,
                               "-p", str(self.port), VM + "@127.0.0.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(fwd)
        got = b""
        end = time.time() + 60
        while b"guest-says-hello" not in got and time.time() < end:
            try:
                with socket.create_connection(("127.0.0.1", lport), timeout=10) as c:
                    c.settimeout(20)
                    while True:
                        b = c.recv(4096)
                        if not b:
                            break
                        got += b
            except OSError:
                time.sleep(0.5)
        self.assertIn(b"guest-says-hello", got)
        # A destination other than the guest's loopback is refused.
        r = self.ssh("true", extra=["-o", "ExitOnForwardFailure=yes", "-W", "10.0.0.1:80"])
        self.assertNotEqual(r.returncode, 0)

    # -- 06 ------------------------------------------------------------------
    def test_06_still_fine(self):
        # A28: many idle connections at once (beyond the 32 session threads) and
        # gone again: the daemon serves logins afterwards.
        socks = []
        for _ in range(40):
            try:
                socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))
            except OSError:
                pass
        self.assertTrue(self.status()["enabled"])
        for s in socks:
            s.close()
        wait_for(lambda: self.status()["sessions"] <= 1, 60, "idle sessions to end")
        self.assertEqual(self.ssh("echo", "ok").stdout, b"ok\n")
        # The generated ~/.ssh/config block: `ssh nilbox-VM`, host key pinned.
        cfg = os.path.join(self.tmp, "ssh_config")
        with open(cfg, "w") as f:
            f.write(self.cli("ssh-config").stdout)
            f.write("    IdentityFile %s\n    IdentitiesOnly yes\n    BatchMode yes\n" % self.key)
        r = subprocess.run(["ssh", "-F", cfg, "nilbox-" + VM, "hostname"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        self.assertEqual((r.returncode, r.stdout), (0, (VM + "\n").encode()), r.stderr)

    # -- 07 ------------------------------------------------------------------
    def test_07_vm_stop_ends_sessions(self):
        # A27: stopping the VM ends the sessions already open, with a reason.
        p = subprocess.Popen(["ssh"] + self.opts() + ["-p", str(self.port), VM + "@127.0.0.1",
                                                      "sleep 600"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        time.sleep(3)
        self.cli("vm", "stop", VM, "--force", timeout=180)
        _, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 255, err)
        self.assertIn(b"nilbox:", err)
        r = self.ssh("true")
        self.assertEqual(r.returncode, 255)
        self.assertIn(b"not ready", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
