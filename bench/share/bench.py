#!/usr/bin/env python3
"""bench/share: file I/O in the guest on a host folder shared by `nilbox
share add` versus QEMU's virtio-9p (-virtfs) of the same folder, same VM,
same run.

One nilbox VM (tiny image) whose QEMU gets, for this benchmark only, a 9p
export of the host folder (NILBOX_QEMU points at a wrapper that appends
`-fsdev local,path=DIR,security_model=none` + a virtio-9p device with
mount_tag nbbench; `-virtfs` is the same with a PCI device). The guest
mounts it at /mnt/9p (`trans=virtio,version=9p2000.L,msize=--msize,
cache=--cache`) and the nilbox share at /mnt/nb; each path works in its
own sub-folder of the one host folder:
  nilbox  guest program -> FUSE (agent) -> `fs` stream over nbmux
          (virtio-serial) -> nilboxd's file server -> host file system
  9p      guest program -> v9fs -> virtio-9p -> QEMU's 9p server -> host
The workloads (bench/share/share_io.c, static, timed inside the guest):
sequential write of --size MiB in 1 MiB blocks + fsync; sequential read
of it after dropping the guest's caches; creating --files files of 100
bytes; lstat of each after dropping the caches. Rounds alternate the two
paths (--runs); each figure is the best run. Goal: nilbox >= 1.0x 9p.

usage: bench.py --build BUILD_DIR [--size MiB] [--files N] [--runs N]
                [--msize BYTES] [--cache none|loose|mmap] [--cpu MODEL]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nbbench  # noqa: E402

ROOT = nbbench.ROOT

WRAPPER = """#!/bin/sh
# bench/share only: the nilbox VM's own command line plus a virtio-9p export
# of %(dir)s (probes such as -version pass through).
case " $* " in
*" -kernel "*)
    cpu='%(cpu)s' prev=
    for a do  # --cpu: the guest CPU model instead of nilbox's
        shift
        o=$a
        [ "$prev" = -cpu ] && [ -n "$cpu" ] && a=$cpu
        set -- "$@" "$a"
        prev=$o
    done
    dev=virtio-9p-pci
    case " $* " in *microvm*) dev=virtio-9p-device ;; esac
    exec %(qemu)s "$@" -fsdev local,id=nbbench,path=%(dir)s,security_model=none \\
        -device $dev,fsdev=nbbench,mount_tag=nbbench ;;
esac
exec %(qemu)s "$@"
"""

GUEST_SETUP = """set -e
modprobe -a 9pnet_virtio 9p
mkdir -p /mnt/9p
mount -t 9p -o trans=virtio,version=9p2000.L,msize=%(msize)d,cache=%(cache)s nbbench /mnt/9p
cp /mnt/9p/share_io /tmp/share_io
mkdir -p /mnt/9p/w9p /mnt/nb/wnb
grep -E ' /mnt/(9p|nb) ' /proc/mounts
echo "readahead of /mnt/nb: $(cat /sys/class/bdi/$(awk '$5=="/mnt/nb"{print $3}' /proc/self/mountinfo)/read_ahead_kb) KiB"
echo ready
"""

DROP = "sync; echo 3 > /proc/sys/vm/drop_caches; "


def build_image(build, images, out, agent):
    cache = os.path.join(build, "tests", "e2e-cache")
    r = subprocess.run(["bash", os.path.join(images, "tiny", "build.sh"), "--out", out, "--cache",
                        os.path.join(cache, "debs"), "--agent", agent],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit("image build failed:\n" + r.stdout[-2000:])


def guest(d, script, timeout=1800):
    r = d.cli("exec", "bench", "--", "sh", "-c", script, timeout=timeout)
    if r.returncode != 0:
        sys.exit("guest: %s -> %d\n%s\n%s" % (script, r.returncode, r.stdout, r.stderr))
    return r.stdout


def cpu(pid):
    u, s = nbbench.cpu_s(pid)
    return u + s


def timed(d, script, pids=None, acc=None):
    """(seconds, units) from share_io's last line; adds the CPU seconds of
    pids (QEMU, nilboxd) during the call to acc."""
    c0 = [cpu(p) for p in pids or ()]
    secs, units = guest(d, script).strip().split("\n")[-1].split()
    if acc is not None:
        c1 = [cpu(p) for p in pids]
        acc[0] += c1[0] - c0[0]
        # QEMU is nilboxd's child: cpu_s(nilboxd) includes it
        acc[1] += (c1[1] - c0[1]) - (c1[0] - c0[0])
    return float(secs), int(units)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--size", type=int, default=64, help="MiB written and read")
    ap.add_argument("--files", type=int, default=2000, help="small files created and stat-ed")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--msize", type=int, default=262144, help="9p msize (nilbox: 256 KiB)")
    ap.add_argument("--cache", default="none", help="9p cache mode (none, loose, mmap)")
    ap.add_argument("--cpu", default="", help="QEMU -cpu for the VM instead of nilbox's "
                    "(e.g. max,erms=on to compare)")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    images = os.path.join(ROOT, "images")
    agent = os.path.join(a.build, "src", "agent", "nilbox-agent")
    share_io = os.path.join(a.build, "bench", "share_io")
    if not os.access(share_io, os.X_OK):
        sys.exit("%s is missing: build it first (bench/share/run.sh does)" % share_io)
    image = os.path.join(a.build, "tests", "e2e-cache", "tiny-agent")
    build_image(a.build, images, image, agent)
    qemu = shutil.which(os.environ.get("NILBOX_QEMU", "qemu-system-x86_64"))
    if not qemu:
        sys.exit("qemu-system-x86_64 not found")
    tmp = tempfile.mkdtemp(prefix="nb-bench-share-")
    host = os.path.join(tmp, "shared")
    os.makedirs(host)
    shutil.copy(share_io, os.path.join(host, "share_io"))
    nbbench.use_build(a.build, tmp)
    wrapper = os.path.join(tmp, "qemu-9p")
    with open(wrapper, "w") as f:
        f.write(WRAPPER % {"qemu": qemu, "dir": host, "cpu": a.cpu})
    os.chmod(wrapper, 0o755)
    d = nbbench.start_daemon(tmp, {"NILBOX_QEMU": wrapper, "NILBOX_AGENT": agent,
                                   "NILBOX_IMAGES_DIR": images})
    os.makedirs(os.path.join(d.home, "images"), exist_ok=True)
    os.symlink(image, os.path.join(d.home, "images", "tiny"))
    paths = (("nilbox", "/mnt/nb/wnb"), ("9p", "/mnt/9p/w9p"))
    res = {k: {"write": [], "read": [], "create": [], "stat": []} for k, _ in paths}
    # CPU seconds of [QEMU, nilboxd] per path and workload, over the counted runs
    cpus = {k: {w: [0.0, 0.0] for w in res[k]} for k, _ in paths}
    try:
        nbbench.cli(d, "vm", "create", "bench", "--user", "root", "--memory", "512M")
        nbbench.cli(d, "vm", "start", "bench", timeout=600)
        nbbench.cli(d, "share", "add", "bench", host, "/mnt/nb", timeout=300)
        out = guest(d, GUEST_SETUP % {"msize": a.msize, "cache": a.cache}, timeout=600)
        if "ready" not in out:
            sys.exit("guest setup failed: %s" % out)
        mounts = out.strip().split("\n")[:-1]
        qpid = int(open(os.path.join(d.home, "vms", "bench", "qemu.pid")).read().strip())
        pids = (qpid, d.proc.pid)
        shm = {"write": 0, "read": 0}  # requests through the shared area, last round

        def shm_ops():
            s = json.loads(nbbench.cli(d, "--json", "share", "ls").stdout)["shares"][0]
            return s.get("shm_ops", 0) if s.get("shm") else 0

        for rnd in range(a.runs + 1):  # round 0: warm-up, not counted
            for name, dirp in paths:
                io = "/tmp/share_io %%s %s " % dirp
                cp = cpus[name] if rnd else {w: None for w in cpus[name]}
                o0 = shm_ops()
                s, n = timed(d, io % "write" + str(a.size), pids, cp["write"])
                w = n / s / (1 << 20)
                o1 = shm_ops()
                s, n = timed(d, DROP + io % "read", pids, cp["read"])
                if name == "nilbox":
                    shm = {"write": o1 - o0, "read": shm_ops() - o1}
                if n != a.size << 20:
                    sys.exit("%s: read %d bytes of %d" % (name, n, a.size << 20))
                r = n / s / (1 << 20)
                s, n = timed(d, io % "create" + str(a.files), pids, cp["create"])
                c = n / s
                s, n = timed(d, DROP + io % "stat" + str(a.files), pids, cp["stat"])
                st = n / s
                guest(d, io % "clean" + str(a.files))
                if rnd:
                    for k, v in (("write", w), ("read", r), ("create", c), ("stat", st)):
                        res[name][k].append(v)
        argv = open("/proc/%d/cmdline" % qpid, "rb").read().split(b"\0")
        accel = argv[argv.index(b"-accel") + 1].decode() if b"-accel" in argv else "?"
        cpuarg = argv[argv.index(b"-cpu") + 1].decode() if b"-cpu" in argv else "?"
    finally:
        d.cli("vm", "stop", "--force", "bench", timeout=60)
        nbbench.stop_daemon(d)
        shutil.rmtree(tmp, ignore_errors=True)

    print("bench/share: guest file I/O on a shared host folder, same VM, same run; "
          "accelerator %s, %d runs, %d MiB, %d files" % (accel, a.runs, a.size, a.files))
    print("  QEMU -cpu %s" % cpuarg)
    for m in mounts:
        print("  mount: " + m)
    units = {"write": "MiB/s", "read": "MiB/s", "create": "files/s", "stat": "files/s"}
    for k in ("write", "read", "create", "stat"):
        best = {n: max(res[n][k]) for n, _ in paths}
        print("  %-6s nilbox %9.1f %-7s (runs: %s)   9p %9.1f (runs: %s)   ratio %.2fx" %
              (k, best["nilbox"], units[k], " ".join("%.1f" % x for x in res["nilbox"][k]),
               best["9p"], " ".join("%.1f" % x for x in res["9p"][k]),
               best["nilbox"] / best["9p"]))
    print("  nilbox requests through the shared area in the last round: write %d, read %d "
          "(0: data over the channel)" % (shm["write"], shm["read"]))
    print("  CPU seconds per run (QEMU / nilboxd; the nbmux exec around each workload included):")
    for k in ("write", "read", "create", "stat"):
        print("  %-6s nilbox %6.2f / %5.2f   9p %6.2f / %5.2f" %
              (k, cpus["nilbox"][k][0] / a.runs, cpus["nilbox"][k][1] / a.runs,
               cpus["9p"][k][0] / a.runs, cpus["9p"][k][1] / a.runs))


if __name__ == "__main__":
    main()
