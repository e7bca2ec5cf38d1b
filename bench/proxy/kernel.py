#!/usr/bin/python3
"""bench/proxy/kernel.py: what the kernel does for each request through a
proxy of bench/proxy (nilbox by default, or squid), counted rather than
timed, so the figures hold under load:

  * system calls per request, in total and read, write, readv, writev,
    epoll_wait, epoll_ctl, io_uring_enter (nilboxd's batched writes; perf's syscall tracepoints on the proxy's
    process, every thread);
  * context switches per request: voluntary (the proxy slept in
    epoll_wait) and involuntary (a process it woke preempted it), from
    /proc; on a paravirtualised machine a switch costs several times a
    system call, and much of it is charged to the task switched in;
  * TCP segments per request (/proc/net/snmp OutSegs), only when the run
    has a network namespace of its own (--netns, root: unshare -n), so
    that nothing else's traffic is counted. 4 is the minimum for a proxy:
    request in, request out, response in, response out, each ACK riding
    on the next data segment;
  * CPU time (user, system) of the proxy per request, as bench.py.

Separately for 1 connection and for --conns connections, each --secs long.

    python3 bench/proxy/kernel.py --build build-bench [--peer squid] [--netns]

Needs perf (linux-perf) with access to the syscall tracepoints (root, or
kernel.perf_event_paranoid <= -1); without it only the /proc figures are
printed."""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import nbbench  # noqa: E402

CALLS = ["read", "write", "readv", "writev", "epoll_wait", "epoll_ctl", "io_uring_enter"]
EVENTS = ["raw_syscalls:sys_enter"] + ["syscalls:sys_enter_" + c for c in CALLS]


def tcp_out_segs():
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:]))["OutSegs"])


def perf_start(pid):
    if not shutil.which("perf"):
        return None
    p = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-p", str(pid)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # attached before the load starts
    return p


def perf_stop(p):
    """{call: count} from perf stat's CSV; {} when perf could not count."""
    if p is None:
        return {}
    p.send_signal(signal.SIGINT)
    out = {}
    for line in p.communicate()[1].splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].strip().isdigit():
            name = f[2].split(":")[-1].replace("sys_enter_", "")
            out["syscalls" if name == "sys_enter" else name] = int(f[0])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(nbbench.ROOT, "build-bench"))
    ap.add_argument("--peer", default="nilbox", choices=["nilbox", "squid"])
    ap.add_argument("--secs", type=float, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--netns", action="store_true",
                    help="run in a new network namespace (root) and count TCP segments")
    a = ap.parse_args()
    if a.netns and not os.environ.get("NB_BENCH_NETNS"):
        env = dict(os.environ, NB_BENCH_NETNS="1")
        sys.exit(subprocess.call(["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"',
                                  "sh", sys.executable, *sys.argv], env=env))
    b = bench.Bench(argparse.Namespace(build=a.build, secs=a.secs, conns=a.conns, rounds=1,
                                       sse_events=0, only=a.peer, wrap=None))
    nbbench.use_build(a.build, b.tmp)
    try:
        b.setup_upstream()
        if a.peer == "nilbox":
            b.setup_nilbox()
        else:
            b.setup_squid()
        if a.peer not in b.peers:
            sys.exit("%s is not installed (bench/setup.sh)" % a.peer)
        peer = b.peers[a.peer]
        pid = peer["pid"]
        b.rps(peer, 1, secs=0.3)  # warm up: leaf certificates, upstream connections
        print("bench/proxy/kernel: %s, per request, %.0f s per run, load average %.2f" % (
            a.peer, a.secs, os.getloadavg()[0]))
        print("%-6s %8s %8s %8s %6s %6s %5s %5s %6s %6s %7s %7s %6s %6s" % (
            "conns", "req/s", "CPU us", "sys us", "cs vol", "invol", "segs", "calls", "read",
            "write", "readv+w", "ep_wait", "ep_ctl", "uring"))
        for conns in (1, a.conns):
            perf = perf_start(pid)
            segs0, cs0, cpu0 = tcp_out_segs(), nbbench.ctx_switches(pid), nbbench.cpu_s(pid)
            r = b.rps(peer, conns)
            segs1, cs1, cpu1 = tcp_out_segs(), nbbench.ctx_switches(pid), nbbench.cpu_s(pid)
            calls = perf_stop(perf)
            n = max(1, r["reqs"])

            def per(key):
                return "%.2f" % (calls[key] / n) if key in calls else "-"
            print("%-6d %8.0f %8.1f %8.1f %6.2f %6.2f %5s %5s %6s %6s %7s %7s %6s %6s" % (
                conns, r["rps"], (sum(cpu1) - sum(cpu0)) * 1e6 / n, (cpu1[1] - cpu0[1]) * 1e6 / n,
                (cs1[0] - cs0[0]) / n, (cs1[1] - cs0[1]) / n,
                "%.2f" % ((segs1 - segs0) / n) if os.environ.get("NB_BENCH_NETNS") else "-",
                per("syscalls"), per("read"), per("write"),
                "%.2f" % ((calls["readv"] + calls["writev"]) / n) if "readv" in calls else "-",
                per("epoll_wait"), per("epoll_ctl"), per("io_uring_enter")))
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
