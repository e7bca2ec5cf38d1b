#!/usr/bin/python3
"""bench/proxy: the egress proxy against a direct connection and mitmproxy,
in one run, against the same local HTTPS upstream (bench_upstream, C).

Measured:
  * keep-alive requests/s over 1 connection and over --conns connections:
    directly, through `nilbox proxy` (the daemon's engine, TLS intercepted,
    an injection rule replacing the Authorization placeholder on every
    request, audited), and through mitmdump;
  * latency p50/p99 on 1 connection, and what the proxy adds over direct;
  * SSE: time from an event leaving the upstream to reaching the client.
Prints a table and the ratios the issue sets goals for (>= 50x mitmdump,
>= 0.5x direct, added p50 <= 0.3 ms, SSE forwarded within 1 ms).

Run through bench/proxy/run.sh (builds the binaries). The machine's load
matters: run it on a quiet machine and compare ratios, not absolutes."""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "integ"))


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on %d" % port)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="nb-bench-proxy-")
        self.procs = []
        self.client = os.path.join(a.build, "bench", "bench_proxy_client")
        self.upstream_bin = os.path.join(a.build, "bench", "bench_proxy_upstream")
        os.environ["NB_TEST_NILBOXD"] = os.path.join(a.build, "src", "daemon", "nilboxd")
        os.environ["NB_TEST_NILBOX"] = os.path.join(a.build, "src", "cli", "nilbox")
        self.d = None

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, **kw)
        self.procs.append(p)
        return p

    def run_client(self, *args, auth=None):
        env = dict(os.environ)
        if auth:
            env["NB_PROXY_AUTH"] = auth  # the proxy's token: environment, never argv
        r = subprocess.run([self.client, *[str(x) for x in args]], capture_output=True,
                           text=True, timeout=self.a.secs * 4 + 60, env=env)
        if r.returncode != 0 or not r.stdout.strip():
            raise RuntimeError("bench_client %s failed: %s" % (args, r.stderr[-500:]))
        return json.loads(r.stdout.strip().splitlines()[-1])

    def auth_for(self, proxy):
        return self.nb_auth if proxy and proxy == getattr(self, "nb_port", None) else None

    def rps(self, ca, proxy=0, header="", conns=1):
        return self.run_client("rps", "localhost", self.port, ca, self.a.secs, conns, proxy,
                               header, auth=self.auth_for(proxy))

    def sse(self, ca, proxy=0):
        return self.run_client("sse", "localhost", self.port, ca, self.a.sse_events, 5, proxy,
                               auth=self.auth_for(proxy))

    def setup_upstream(self):
        import fake_upstream
        self.up_ca, cert, key = fake_upstream.make_ca(self.tmp)
        p = self.spawn([self.upstream_bin, cert, key], stdout=subprocess.PIPE, text=True)
        self.port = int(p.stdout.readline().split()[1])

    def setup_nilbox(self):
        from daemon_harness import Daemon
        from proxy_env import wait_store_open
        d = self.d = Daemon(tmp=os.path.join(self.tmp, "nb"))
        os.makedirs(d.tmp, exist_ok=True)
        d.env.update({"NILBOX_TEST_MODE": "1", "NILBOX_LOG": "warn"})
        d.start("--key-file", os.path.join(self.tmp, "master.key"))
        wait_store_open(d)

        def cli(*args, input=None):
            r = d.cli(*args, input=input)
            if r.returncode != 0:
                raise RuntimeError("nilbox %s: %s" % (" ".join(args), r.stderr))
            return r
        cli("secret", "set", "BENCH_KEY", input="sk-bench-REAL-0123456789abcdef")
        cli("secret", "bind", "BENCH_KEY", "--host", "localhost")
        cli("rule", "add", "allow", "localhost:%d" % self.port, "--http")
        cli("rule", "add", "allow", "127.0.0.1:%d" % self.port)
        self.nb_ca = os.path.join(self.tmp, "nilbox-ca.pem")
        cli("ca", "export", self.nb_ca)
        p = self.spawn([os.environ["NB_TEST_NILBOX"], "proxy", "--listen", "127.0.0.1:0",
                        "--vm", "bench", "--upstream-ca", self.up_ca], env=d.env,
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        self.nb_port = int(line.split()[2].rsplit(":", 1)[1])
        url = p.stdout.readline()  # proxy URL: http://nilbox:TOKEN@127.0.0.1:PORT
        token = url.split("http://nilbox:", 1)[1].split("@", 1)[0]
        import base64
        self.nb_auth = "Basic " + base64.b64encode(("nilbox:" + token).encode()).decode()

    def setup_mitm(self):
        exe = shutil.which("mitmdump")
        if not exe and os.geteuid() == 0 and not self.a.no_install:
            print("installing Debian's mitmproxy for the comparison ...", file=sys.stderr)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            "mitmproxy"], stdout=subprocess.DEVNULL,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            exe = shutil.which("mitmdump")
        if not exe:
            return False
        conf = os.path.join(self.tmp, "mitm")
        os.makedirs(conf)
        self.mitm_port = free_port()
        self.spawn([exe, "-q", "--listen-host", "127.0.0.1", "--listen-port",
                    str(self.mitm_port), "--set", "confdir=" + conf, "--set",
                    "ssl_verify_upstream_trusted_ca=" + self.up_ca],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.mitm_port, timeout=60)
        self.mitm_ca = os.path.join(conf, "mitmproxy-ca-cert.pem")
        for _ in range(100):
            if os.path.exists(self.mitm_ca):
                break
            time.sleep(0.1)
        return True

    def cpu_s(self):
        """CPU seconds used by nilboxd so far (user + system)."""
        with open("/proc/%d/stat" % self.d.proc.pid) as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")

    def injected(self):
        st, _, body = self.d.unix("GET", "/v1/proxies")
        return json.loads(body)["stats"]["injected"]

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                if p.stdin:
                    try:
                        p.stdin.close()
                    except OSError:
                        pass
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if self.d:
            self.d.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--sse-events", type=int, default=200)
    ap.add_argument("--no-install", action="store_true", help="do not apt-get mitmproxy")
    a = ap.parse_args()
    b = Bench(a)
    res = {}
    try:
        b.setup_upstream()
        b.setup_nilbox()
        have_mitm = b.setup_mitm()
        hdr = "Authorization: Bearer BENCH_KEY"
        before = b.injected()
        res["direct"] = {"one": b.rps(b.up_ca), "many": b.rps(b.up_ca, conns=a.conns),
                         "sse": b.sse(b.up_ca)}
        c0 = b.cpu_s()
        one = b.rps(b.nb_ca, b.nb_port, hdr)
        many = b.rps(b.nb_ca, b.nb_port, hdr, conns=a.conns)
        cpu_us = (b.cpu_s() - c0) * 1e6 / max(1, one["reqs"] + many["reqs"])
        res["nilbox"] = {"one": one, "many": many, "sse": b.sse(b.nb_ca, b.nb_port),
                         "cpu_us_per_req": round(cpu_us, 1)}
        injected = b.injected() - before
        if have_mitm:
            res["mitmdump"] = {"one": b.rps(b.mitm_ca, b.mitm_port, hdr),
                               "many": b.rps(b.mitm_ca, b.mitm_port, hdr, conns=a.conns),
                               "sse": b.sse(b.mitm_ca, b.mitm_port)}
    finally:
        b.cleanup()

    print("bench/proxy: keep-alive HTTPS GETs to a local upstream, %.0f s per run, "
          "load average %.2f" % (a.secs, os.getloadavg()[0]))
    print("%-10s %12s %12s %10s %10s %12s %12s" % ("", "req/s 1 conn", "req/s %d conns" %
                                                    a.conns, "p50 us", "p99 us", "SSE p50 us",
                                                    "SSE p99 us"))
    for k in ("direct", "nilbox", "mitmdump"):
        if k not in res:
            print("%-10s (not available)" % k)
            continue
        r = res[k]
        print("%-10s %12.0f %12.0f %10d %10d %12d %12d" % (
            k, r["one"]["rps"], r["many"]["rps"], r["one"]["p50_us"], r["one"]["p99_us"],
            r["sse"]["p50_us"], r["sse"]["p99_us"]))
    d, n = res["direct"], res["nilbox"]
    print("injections during the nilbox runs: %d (every request carried the placeholder); "
          "nilboxd CPU per request: %.0f us" % (injected, n["cpu_us_per_req"]))
    ratio_direct = n["many"]["rps"] / d["many"]["rps"]
    ratio_direct1 = n["one"]["rps"] / d["one"]["rps"]
    added_p50 = (n["one"]["p50_us"] - d["one"]["p50_us"]) / 1000.0
    added_p99 = (n["one"]["p99_us"] - d["one"]["p99_us"]) / 1000.0
    sse_added = (n["sse"]["p50_us"] - d["sse"]["p50_us"]) / 1000.0

    def goal(ok):
        return "ok" if ok else "MISSED"
    print("ratio nilbox/direct req/s: %.2f (%d conns), %.2f (1 conn)   goal >= 0.5: %s" %
          (ratio_direct, a.conns, ratio_direct1, goal(ratio_direct >= 0.5)))
    print("added latency over direct: p50 %.3f ms, p99 %.3f ms   goal p50 <= 0.3 ms: %s" %
          (added_p50, added_p99, goal(added_p50 <= 0.3)))
    print("SSE event upstream -> client through nilbox: p50 %.3f ms, p99 %.3f ms "
          "(direct p50 %.3f ms; added %.3f ms)   goal <= 1 ms: %s" %
          (n["sse"]["p50_us"] / 1000.0, n["sse"]["p99_us"] / 1000.0,
           d["sse"]["p50_us"] / 1000.0, sse_added, goal(n["sse"]["p50_us"] <= 1000)))
    if "mitmdump" in res:
        m = res["mitmdump"]
        ratio_m = n["many"]["rps"] / m["many"]["rps"]
        print("ratio nilbox/mitmdump req/s: %.1f (%d conns), %.1f (1 conn)   goal >= 50: %s" %
              (ratio_m, a.conns, n["one"]["rps"] / m["one"]["rps"], goal(ratio_m >= 50)))
    else:
        print("ratio nilbox/mitmdump: not measured (mitmdump unavailable; "
              "apt-get install mitmproxy)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
