#!/usr/bin/env python3
"""bench/egress: a 64 MiB download from a local upstream, inside the tiny VM.

In one run, with the same tiny image (kernel + initramfs) and the same QEMU
machine, accelerator, CPU model, CPU count and memory:
  nilbox     a nilbox VM (no NIC): guest curl -> the agent's explicit proxy
             -> nbmux over virtio-serial -> nilboxd's proxy engine (HTTP
             inspected, the gate, the same engine as for `nilbox proxy`) ->
             the upstream; also the transparent path (curl --noproxy '*':
             nftables redirect, fake-IP DNS).
  user-net   the conventional path: the same kernel and initramfs booted by
             a separate QEMU with user-mode networking (-nic user,
             virtio-net) and no proxy; its init (/bench-egress-init) runs
             the same curl against the host through slirp (10.0.2.2).
Both sides are timed by curl inside the guest (time_total). --runs rounds
alternate, so load from other processes hits both sides: one download per
nilbox path, then one boot of the user-net VM with one download (the nilbox
VM idles meanwhile). Each figure is the best of --runs downloads. Prints both throughputs and the ratio
(goal: nilbox >= 1.0x user-mode networking).

usage: bench.py --build BUILD_DIR [--size MiB] [--runs N] [--keep]
(builds/reuses the tiny image in BUILD_DIR/tests/e2e-cache/tiny-agent, like
the e2e tests).
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nbbench  # noqa: E402

ROOT = nbbench.ROOT


class Upstream:
    """Plain HTTP: every request gets `size` bytes (Content-Length)."""

    def __init__(self, size):
        self.size = size
        self.block = bytes(range(256)) * 4096  # 1 MiB
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        with c:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n" % self.size)
            left = self.size
            while left > 0:
                n = min(left, len(self.block))
                c.sendall(self.block[:n])
                left -= n


def build_image(build, images, out, agent):
    cache = os.path.join(build, "tests", "e2e-cache")
    r = subprocess.run(["bash", os.path.join(images, "tiny", "build.sh"), "--out", out, "--cache",
                        os.path.join(cache, "debs"), "--agent", agent],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("image build failed:\n" + r.stdout[-2000:])


def parse_runs(text):
    res = []
    for m in re.finditer(r"NB-BENCH (\d+) ([0-9.]+)", text):
        n, t = int(m.group(1)), float(m.group(2))
        if t > 0:
            res.append((n, t))
    return res


def mibs(n, t):
    return n / t / (1 << 20)


def nilbox_runs(a, tmp, up, image, baseline):
    """--runs rounds of one download per path, each round followed by
    baseline(QEMU argv of the nilbox VM): under changing load from other
    processes, alternating keeps the comparison fair."""
    d = nbbench.start_daemon(tmp, {
        "NILBOX_TEST_MODE": "1",
        "NILBOX_TEST_RESOLVE": "bench.example.test:80:127.0.0.1:%d" % up.port,
        "NILBOX_AGENT": a.agent, "NILBOX_IMAGES_DIR": a.images})
    os.makedirs(os.path.join(d.home, "images"), exist_ok=True)
    os.symlink(image, os.path.join(d.home, "images", "tiny"))
    qemu_argv = None
    try:
        for args in (("rule", "add", "allow", "bench.example.test:80"),
                     ("rule", "add", "allow", "127.0.0.1:%d" % up.port),
                     ("vm", "create", "bench"), ("vm", "start", "bench")):
            nbbench.cli(d, *args)
        pid = int(open(os.path.join(d.home, "vms", "bench", "qemu.pid")).read().strip())
        qemu_argv = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[:-1]
        qemu_argv = [x.decode() for x in qemu_argv]
        url = "http://bench.example.test/big"
        out = {"explicit": [], "transparent": []}
        for _ in range(a.runs):
            for name, extra in (("explicit", ""), ("transparent", "--noproxy '*'")):
                script = ("curl -s %s -o /dev/null -w 'NB-BENCH %%{size_download} "
                          "%%{time_total}\\n' %s" % (extra, url))
                r = d.cli("exec", "bench", "--", "sh", "-c", script, timeout=3600)
                got = parse_runs(r.stdout)
                if not got:
                    sys.exit("no nilbox result (%s): %s %s" % (name, r.stdout, r.stderr))
                out[name] += got
            baseline(qemu_argv)
        return out, qemu_argv
    finally:
        d.cli("vm", "stop", "--force", "bench", timeout=60)
        nbbench.stop_daemon(d)


def baseline_argv(nilbox_argv, up, runs, console):
    """The nilbox VM's QEMU command line with its channel, key, QMP and
    console devices removed and user-mode networking added."""
    drop_pair = {"-name", "-nic", "-chardev", "-serial", "-device", "-fw_cfg", "-mon",
                 "-pidfile", "-sandbox", "-drive", "-blockdev", "-msg", "-append", "-qmp"}
    out, i, append, machine = [], 0, "", ""
    while i < len(nilbox_argv):
        x = nilbox_argv[i]
        if x in drop_pair and i + 1 < len(nilbox_argv):
            if x == "-append":
                append = nilbox_argv[i + 1]
            i += 2
            continue
        if x in ("-daemonize",):
            i += 1
            continue
        if x == "-machine":
            machine = nilbox_argv[i + 1]
        out.append(x)
        i += 1
    append = " ".join(w for w in append.split() if not w.startswith("nilbox."))
    nic = "virtio-net-device" if machine.startswith("microvm") else "virtio-net-pci"
    out += ["-append", append + " rdinit=/bench-egress-init nb.bench.n=%d "
            "nb.bench.url=http://10.0.2.2:%d/big" % (runs, up.port),
            "-netdev", "user,id=n0", "-device", nic + ",netdev=n0",
            "-chardev", "file,id=con0,path=" + console, "-serial", "chardev:con0"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--size", type=int, default=64, help="MiB per download")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    a.images = os.path.join(ROOT, "images")
    a.agent = os.path.join(a.build, "src", "agent", "nilbox-agent")
    image = os.path.join(a.build, "tests", "e2e-cache", "tiny-agent")
    build_image(a.build, a.images, image, a.agent)
    tmp = tempfile.mkdtemp(prefix="nb-bench-egress-")
    nbbench.use_build(a.build, tmp)
    up = Upstream(a.size << 20)
    try:
        base = []

        def baseline(qargv):  # one boot of the user-networking VM, one download
            console = os.path.join(tmp, "baseline-console-%d.log" % len(base))
            t0 = time.time()
            p = subprocess.run(baseline_argv(qargv, up, 1, console), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, timeout=3600)
            got = parse_runs(open(console, errors="replace").read())
            if not got:
                sys.exit("no baseline result (QEMU exit %d, %.0f s): %s\n%s" %
                         (p.returncode, time.time() - t0, p.stdout[-2000:],
                          open(console, errors="replace").read()[-3000:]))
            base.extend(got)
        nb, qargv = nilbox_runs(a, tmp, up, image, baseline)
        best = lambda runs: max(mibs(n, t) for n, t in runs)
        b = best(base)
        accel = qargv[qargv.index("-accel") + 1] if "-accel" in qargv else "?"
        machine = qargv[qargv.index("-machine") + 1] if "-machine" in qargv else "?"
        print("bench/egress: %d MiB download inside the tiny VM (%s, %s), best of %d" %
              (a.size, accel, machine.split(",")[0], a.runs))
        print("  %-34s %8.1f MiB/s   (runs: %s)" % ("QEMU user-mode networking (-nic user)", b,
              ", ".join("%.1f" % mibs(n, t) for n, t in base)))
        for name in ("explicit", "transparent"):
            v = best(nb[name])
            print("  %-34s %8.1f MiB/s   (runs: %s)   ratio %.2fx" % (
                "nilbox, " + name + " proxy path", v,
                ", ".join("%.1f" % mibs(n, t) for n, t in nb[name]), v / b))
        print("ratio (nilbox explicit / user-mode): %.2fx (goal >= 1.0x)" %
              (best(nb["explicit"]) / b))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
