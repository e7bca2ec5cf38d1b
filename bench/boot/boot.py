#!/usr/bin/env python3
"""Boot time of the tiny image versus a bare boot, measured in one run.

For each machine type, alternating runs of:
  bare   the same kernel + initramfs and the same QEMU command line, booted
         with rdinit=/bench-init: an init that only loads the virtio-serial
         driver, writes one byte to the org.nilbox.mux port and powers off
         (the initramfs of --agent-image when given: the very image that
         `nilbox vm start` boots; else --image's);
  tiny   the real init (busybox init, rcS, rcS.late: modules, ports, data
         disk, egress capture, acpid) up to the readiness marker on the same
         port (the --no-agent image): the whole system setup;
  agent  (with --agent-image and --muxc) the image with nilbox-agent: spawn to
         the first exec (`true`) finished through the real nbmux channel,
         i.e. boot + agent start + authenticated handshake + one stream.
Wall time is from spawning QEMU to the byte/marker arriving on the host
end of the channel, as seen by nb_vmrun (the VM manager's launch code).
Prints the median of --runs runs each and the ratio tiny/bare (goal for
`nilbox vm start` to a ready agent: <= 1.3x bare), and for bare and
`nilbox vm start` also QEMU's CPU time up to ready: under TCG that is the
guest's work, and it stays put when other load on the host stretches the
wall times (compare the two ratios).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def qemu_cpu_ms(pid):
    """CPU time (user + system) QEMU has used so far: under TCG that is the
    guest's work, and unlike wall time it hardly grows with host load."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def run_once(vmrun, image, machine, bare, timeout):
    """(wall ms to ready, QEMU CPU ms to ready, accel). The bare guest powers
    off right after its byte, so QEMU's CPU time is sampled every 5 ms
    until it exits (the last sample before the exit counts)."""
    d = tempfile.mkdtemp(prefix="nb-bench-boot-")
    try:
        argv = [vmrun, "--dir", d, "--kernel", os.path.join(image, "vmlinux"),
                "--initrd", os.path.join(image, "initramfs.img"), "--memory", "256",
                "--machine", machine, "--stop", "quit", "--timeout", str(timeout)]
        if bare:
            argv += ["--cmdline", "rdinit=/bench-init", "--wait", "byte"]
        else:
            argv += ["--wait", "ready"]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        pid, cpu, out = 0, None, ""
        end = time.monotonic() + timeout + 30
        while p.poll() is None and time.monotonic() < end:
            if not pid:
                try:
                    with open(os.path.join(d, "qemu.pid")) as f:
                        pid = int(f.read().strip())
                except (OSError, ValueError):
                    pass
            if pid:
                try:
                    cpu = qemu_cpu_ms(pid)
                except (OSError, ValueError, IndexError):
                    pass
            time.sleep(0.005)
        if p.poll() is None:
            p.kill()
        out = p.communicate()[0]
        info = {}
        for line in out.splitlines():
            if line.startswith("{"):
                info.update(json.loads(line))
        if "ready_ms" not in info:
            raise RuntimeError("%s %s boot failed: %s" % (machine, "bare" if bare else "tiny",
                                                          out[-500:]))
        return info["ready_ms"], cpu, info.get("accel", "?")
    finally:
        try:
            with open(os.path.join(d, "qemu.pid")) as f:
                os.kill(int(f.read().strip()), 9)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)


def run_agent_once(vmrun, muxc, image, machine, timeout):
    """Spawn to the first exec through the agent finishing: boot, agent
    start, nbmux handshake with the fw_cfg key, exec `true`."""
    d = tempfile.mkdtemp(prefix="nb-bench-agent-")
    host = None
    try:
        key = os.urandom(32)
        for name in ("boot.key", "host.key"):
            fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, key)
            os.close(fd)
        host = subprocess.Popen([muxc, "--listen", os.path.join(d, "mux.sock"), "--key-file",
                                 os.path.join(d, "host.key"), "exec", "--", "/bin/true"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists(os.path.join(d, "mux.sock")):
            time.sleep(0.01)
        t0 = time.monotonic()
        subprocess.run([vmrun, "--dir", d, "--kernel", os.path.join(image, "vmlinux"),
                        "--initrd", os.path.join(image, "initramfs.img"), "--memory", "256",
                        "--machine", machine, "--no-mux", "--key-file",
                        os.path.join(d, "boot.key"), "--wait", "qmp", "--stop", "none",
                        "--timeout", str(timeout)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 30)
        rc = host.wait(timeout=timeout)
        ms = (time.monotonic() - t0) * 1000.0
        if rc != 0:
            raise RuntimeError("%s agent exec failed (muxc %d)" % (machine, rc))
        return ms
    finally:
        if host and host.poll() is None:
            host.kill()
            host.wait()
        try:
            with open(os.path.join(d, "qemu.pid")) as f:
                os.kill(int(f.read().strip()), 9)
        except (OSError, ValueError):
            pass
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vmrun", required=True)
    ap.add_argument("--image", required=True, help="tiny image folder (vmlinux, initramfs.img)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--machines", default="microvm,q35")
    ap.add_argument("--timeout", type=int, default=90)
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    ap.add_argument("--agent-image", help="tiny image built with the agent (adds a column)")
    ap.add_argument("--muxc", help="the nbmux host test client (tests/muxc)")
    ap.add_argument("--nilbox", help="nilbox CLI: also time `nilbox vm start` (needs "
                    "--agent-image; microvm only: the machine the daemon picks here)")
    a = ap.parse_args()
    nb = None
    if a.nilbox and a.agent_image:
        from vmstart import NilboxCase  # bench/boot/vmstart.py
        nb = NilboxCase(a.nilbox, a.agent_image)

    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    res = {"runs": a.runs, "loadavg_at_start": float(load), "machines": {}}
    print("boot benchmark: %d runs per case, loadavg %s" % (a.runs, load), file=sys.stderr)
    try:
        run_all(a, res, nb)
    finally:
        if nb:
            nb.close()
    print_results(a, res)


def run_all(a, res, nb):
    for m in a.machines.split(","):
        bare, tiny, agent, nbw, nbb, barec, nbc = [], [], [], [], [], [], []
        accel = "?"
        with_agent = bool(a.agent_image and a.muxc)
        for i in range(a.runs):
            # Alternate so that a change in machine load hits all alike.
            b, bc, accel = run_once(a.vmrun, a.agent_image or a.image, m, True, a.timeout)
            t, _, _ = run_once(a.vmrun, a.image, m, False, a.timeout)
            bare.append(b)
            tiny.append(t)
            if bc is not None:
                barec.append(bc)
            line = "  %-8s run %d: bare %7.0f ms (cpu %5.0f)  tiny %7.0f ms" % (
                m, i + 1, b, bc or 0, t)
            if with_agent:
                # muxc gives up on a handshake after 10 s (counted from QEMU's
                # connect): on a heavily loaded host a run can fail; skip it.
                try:
                    agent.append(run_agent_once(a.vmrun, a.muxc, a.agent_image, m, a.timeout))
                    line += "  agent exec %7.0f ms" % agent[-1]
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    line += "  agent exec failed (%s)" % str(e)[:60]
            if nb and m == "microvm":
                w, bs, _, c = nb.once()
                nbw.append(w)
                nbb.append(bs)
                if c is not None:
                    nbc.append(c)
                line += "  nilbox vm start %7.0f ms (daemon %5.0f ms, cpu %5.0f)" % (w, bs, c or 0)
            print(line, file=sys.stderr)
        mb, mt = statistics.median(bare), statistics.median(tiny)
        r = {"accel": accel, "bare_ms": bare, "tiny_ms": tiny,
             "bare_median_ms": mb, "tiny_median_ms": mt, "ratio": mt / mb}
        if agent:
            r.update({"agent_ms": agent, "agent_median_ms": statistics.median(agent),
                      "agent_ratio": statistics.median(agent) / mb})
        r["bare_mean_ms"] = statistics.mean(bare)
        if nbw:
            r.update({"nilbox_start_ms": nbw, "nilbox_boot_ms": nbb,
                      "nilbox_start_mean_ms": statistics.mean(nbw),
                      "nilbox_ratio_of_means": statistics.mean(nbw) / statistics.mean(bare),
                      "nilbox_start_median_ms": statistics.median(nbw),
                      "nilbox_boot_median_ms": statistics.median(nbb),
                      "nilbox_ratio": statistics.median(nbw) / mb})
        if nbc and barec:
            r.update({"bare_cpu_ms": barec, "nilbox_cpu_ms": nbc,
                      "bare_cpu_median_ms": statistics.median(barec),
                      "nilbox_cpu_median_ms": statistics.median(nbc),
                      "nilbox_cpu_ratio": statistics.median(nbc) / statistics.median(barec)})
        res["machines"][m] = r


def print_results(a, res):
    print("%-8s %-5s %14s %14s %7s %16s %7s" % ("machine", "accel", "bare (median)",
                                              "tiny (median)", "ratio", "agent exec (med)",
                                              "ratio"))
    for m, r in res["machines"].items():
        extra = ""
        if "agent_median_ms" in r:
            extra = " %13.0f ms %6.2fx" % (r["agent_median_ms"], r["agent_ratio"])
        print("%-8s %-5s %11.0f ms %11.0f ms %6.2fx%s" % (m, r["accel"], r["bare_median_ms"],
                                                         r["tiny_median_ms"], r["ratio"], extra))
    measured = False
    for m, r in res["machines"].items():
        if "nilbox_ratio" in r:
            measured = True
            print("nilbox vm start -> ready agent (%s, %s): %.0f ms median (daemon spawn -> agent "
                  "%.0f ms) vs bare %.0f ms: ratio %.2fx (goal <= 1.3x); means %.0f / %.0f ms: "
                  "%.2fx" %
                  (m, r["accel"], r["nilbox_start_median_ms"], r["nilbox_boot_median_ms"],
                   r["bare_median_ms"], r["nilbox_ratio"], r["nilbox_start_mean_ms"],
                   r["bare_mean_ms"], r["nilbox_ratio_of_means"]))
            if "nilbox_cpu_ratio" in r:
                print("  QEMU CPU time to ready (robust to host load): nilbox %.0f ms vs bare "
                      "%.0f ms median: %.2fx" % (r["nilbox_cpu_median_ms"],
                                                 r["bare_cpu_median_ms"], r["nilbox_cpu_ratio"]))
    if not measured:
        print("nilbox vm start -> ready agent: not measured (pass --nilbox and --agent-image)")
    if a.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
