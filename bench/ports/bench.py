#!/usr/bin/env python3
"""bench/ports: an HTTP server in the guest reached from the host through
`nilbox port add` versus QEMU user networking's hostfwd, same VM, same run.

One nilbox VM (tiny image) whose QEMU gets, for this benchmark only, a
user-mode NIC with a hostfwd (NILBOX_QEMU points at a wrapper that appends
`-netdev user,restrict=on,hostfwd=tcp:127.0.0.1:F-10.0.2.15:8000` and a
virtio-net device). In the guest, busybox httpd serves /big (--size MiB)
and /small (100 bytes) on port 8000 (all addresses), so:
  nilbox    host client -> 127.0.0.1:M (nilboxd) -> tcp stream over the
            nbmux channel (virtio-serial) -> the agent -> guest 127.0.0.1:8000
  hostfwd   host client -> 127.0.0.1:F (QEMU slirp) -> virtio-net -> guest
            eth0 10.0.2.15:8000
Throughput: one GET of /big (curl, time_total). Latency: --requests
sequential GETs of /small, each on a new connection (busybox httpd closes
after one response), median and p90 of the wall time per request. Rounds
alternate the two paths (--runs); each throughput figure is the best run,
each latency figure the median over all requests. Prints both and the
ratios (goal: nilbox >= 1.0x hostfwd throughput, <= 1.0x latency).

usage: bench.py --build BUILD_DIR [--size MiB] [--runs N] [--requests N]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nbbench  # noqa: E402

ROOT = nbbench.ROOT
GUEST_PORT = 8000

WRAPPER = """#!/bin/sh
# bench/ports only: the nilbox VM's own command line plus a user-mode NIC
# with a hostfwd to the guest's port %(gp)d (probes such as -version pass through).
case " $* " in
*" -kernel "*)
    dev=virtio-net-pci
    case " $* " in *microvm*) dev=virtio-net-device ;; esac
    exec %(qemu)s "$@" -netdev user,id=nbbench,restrict=on,hostfwd=tcp:127.0.0.1:%(fp)d-10.0.2.15:%(gp)d \\
        -device $dev,netdev=nbbench ;;
esac
exec %(qemu)s "$@"
"""

GUEST_SETUP = """set -e
modprobe virtio_net 2>/dev/null || true
i=0; while ! ip link show eth0 >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 50 ] || exit 3; sleep 0.1; done
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0 2>/dev/null || true
# Replies of the server leave through eth0: let them (nilbox VMs have no NIC, so
# the egress rules reject every TCP packet that would leave another way).
nft insert rule inet nilbox leaks oifname eth0 accept
mkdir -p /tmp/www
dd if=/dev/urandom of=/tmp/www/big bs=1M count=%(size)d 2>/dev/null
head -c 100 /dev/urandom > /tmp/www/small
busybox httpd -p %(gp)d -h /tmp/www
echo ready
"""


def build_image(build, images, out, agent):
    cache = os.path.join(build, "tests", "e2e-cache")
    r = subprocess.run(["bash", os.path.join(images, "tiny", "build.sh"), "--out", out, "--cache",
                        os.path.join(cache, "debs"), "--agent", agent],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("image build failed:\n" + r.stdout[-2000:])


def download(port, size):
    """Seconds for one GET of /big through 127.0.0.1:port (curl's time_total)."""
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}",
                        "http://127.0.0.1:%d/big" % port], capture_output=True, text=True,
                       timeout=3600)
    n, t = r.stdout.split()
    if int(n) != size:
        sys.exit("short download through port %d: %s of %d bytes" % (port, n, size))
    return float(t)


def request_times(port, n):
    """Wall seconds of n sequential GET /small, each on a new connection."""
    out = []
    req = b"GET /small HTTP/1.0\r\nHost: bench\r\n\r\n"
    for _ in range(n):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(req)
            got = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        out.append(time.perf_counter() - t0)
        if not got.startswith(b"HTTP/1.") or not got.endswith(b"\n") and len(got) < 100:
            sys.exit("bad answer through port %d: %r" % (port, got[:200]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--size", type=int, default=32, help="MiB of /big")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200, help="latency requests per round")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    images = os.path.join(ROOT, "images")
    agent = os.path.join(a.build, "src", "agent", "nilbox-agent")
    image = os.path.join(a.build, "tests", "e2e-cache", "tiny-agent")
    build_image(a.build, images, image, agent)
    qemu = shutil.which(os.environ.get("NILBOX_QEMU", "qemu-system-x86_64"))
    if not qemu:
        sys.exit("qemu-system-x86_64 not found")
    tmp = tempfile.mkdtemp(prefix="nb-bench-ports-")
    nbbench.use_build(a.build, tmp)
    fwd, mapped = nbbench.free_port(), nbbench.free_port()
    wrapper = os.path.join(tmp, "qemu-hostfwd")
    with open(wrapper, "w") as f:
        f.write(WRAPPER % {"qemu": qemu, "fp": fwd, "gp": GUEST_PORT})
    os.chmod(wrapper, 0o755)
    d = nbbench.start_daemon(tmp, {"NILBOX_QEMU": wrapper, "NILBOX_AGENT": agent,
                                   "NILBOX_IMAGES_DIR": images})
    os.makedirs(os.path.join(d.home, "images"), exist_ok=True)
    os.symlink(image, os.path.join(d.home, "images", "tiny"))
    try:
        nbbench.cli(d, "vm", "create", "bench", "--user", "root", "--memory", "512M")
        nbbench.cli(d, "vm", "start", "bench", timeout=600)
        r = nbbench.cli(d, "exec", "bench", "--", "sh", "-c",
                        GUEST_SETUP % {"size": a.size, "gp": GUEST_PORT}, timeout=600)
        if "ready" not in r.stdout:
            sys.exit("guest setup failed: %s %s" % (r.stdout, r.stderr))
        nbbench.cli(d, "port", "add", "bench", "%d:%d" % (mapped, GUEST_PORT))
        size = a.size << 20
        paths = (("nilbox", mapped), ("hostfwd", fwd))
        tput = {k: [] for k, _ in paths}
        lat = {k: [] for k, _ in paths}
        for name, port in paths:  # warm-up (page cache, connections)
            request_times(port, 5)
            download(port, size)
        for _ in range(a.runs):
            for name, port in paths:
                tput[name].append(size / download(port, size) / (1 << 20))
                lat[name] += request_times(port, a.requests)
        qpid = int(open(os.path.join(d.home, "vms", "bench", "qemu.pid")).read().strip())
        argv = open("/proc/%d/cmdline" % qpid, "rb").read().split(b"\0")
        accel = argv[argv.index(b"-accel") + 1].decode() if b"-accel" in argv else "?"
    finally:
        d.cli("vm", "stop", "--force", "bench", timeout=60)
        nbbench.stop_daemon(d)
        shutil.rmtree(tmp, ignore_errors=True)

    def q(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(len(v) * p))]

    print("bench/ports: HTTP server in the guest (busybox httpd), same VM, same run; "
          "accelerator %s, %d runs, %d MiB, %d requests per run" %
          (accel, a.runs, a.size, a.requests))
    for name, _ in paths:
        print("  %-8s throughput %8.1f MiB/s (best; runs: %s)   latency median %6.2f ms, "
              "p90 %6.2f ms" % (name, max(tput[name]),
                                 " ".join("%.1f" % x for x in tput[name]),
                                 statistics.median(lat[name]) * 1000, q(lat[name], 0.9) * 1000))
    print("  ratio nilbox/hostfwd: throughput %.2fx (goal >= 1.0), median latency %.2fx "
          "(goal <= 1.0), p90 latency %.2fx" %
          (max(tput["nilbox"]) / max(tput["hostfwd"]),
           statistics.median(lat["nilbox"]) / statistics.median(lat["hostfwd"]),
           q(lat["nilbox"], 0.9) / q(lat["hostfwd"], 0.9)))


if __name__ == "__main__":
    main()
