#!/usr/bin/python3
"""bench/proxy: the egress proxy against a direct connection, Squid and
mitmproxy, in one run, against the same local HTTPS upstream
(bench_upstream, C) with the same load generator (bench_client, C).

Every proxy intercepts TLS with its own CA (which the client trusts) and
replaces the client's placeholder header "Authorization: Bearer BENCH_KEY"
with the real value on every request:
  nilbox    `nilbox proxy` (the daemon's engine, an injection rule, gate
            and audit as for a VM);
  squid     Debian's squid-openssl, ssl-bump (peek, then bump), cache and
            logs off, request_header_access + request_header_replace;
  mitmdump  Debian's mitmproxy, a --modify-headers rule.
Measured, each figure the best of --rounds rounds (the peers alternate
within a round, so load from other processes hits all of them):
  * keep-alive requests/s over 1 connection and over --conns connections;
  * latency p50/p99 on 1 connection, and what each proxy adds over direct;
  * CPU time of the proxy process (and its children) per request, over
    both request runs (for direct: the upstream's, for reference);
  * SSE: time from an event leaving the upstream to reaching the client.
Prints a table, the ratios and the goals of issue 10 (nilbox >= 3x Squid
and >= 0.5x direct at --conns connections, <= 30 us CPU per request,
added p50 <= 0.1 ms) and issue 5 (SSE forwarded within 1 ms).

Run through bench/proxy/run.sh (builds the binaries; bench/setup.sh
installs Squid and mitmproxy). The machine's load matters: compare ratios,
not absolutes."""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nbbench  # noqa: E402

PLACEHOLDER = "Authorization: Bearer BENCH_KEY"
SECRET = "sk-bench-REAL-0123456789abcdef"

SQUID_CONF = """\
http_port 127.0.0.1:{port} ssl-bump generate-host-certificates=on \
dynamic_cert_mem_cache_size=4MB tls-cert={dir}/ca.pem tls-key={dir}/ca.key
sslcrtd_program {certgen} -s {dir}/ssldb -M 4MB
sslcrtd_children 1 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={dir}/upstream-ca.pem
acl lo src 127.0.0.0/8
http_access allow lo
http_access deny all
request_header_access Authorization deny all
request_header_replace Authorization Bearer {secret}
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
pinger_enable off
shutdown_lifetime 0 seconds
"""


def make_ca(d, name):
    """A P-256 CA (name.pem, name.key) for a proxy to sign its leaves with."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", os.path.join(d, name + ".key"),
                    "-out", os.path.join(d, name + ".pem"), "-days", "2", "-subj",
                    "/CN=bench " + name, "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)
    return os.path.join(d, name + ".pem")


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="nb-bench-proxy-")
        self.procs = nbbench.Procs()
        self.client = os.path.join(a.build, "bench", "bench_proxy_client")
        self.upstream_bin = os.path.join(a.build, "bench", "bench_proxy_upstream")
        self.d = None
        # name -> {"port", "ca", "pid", "auth"}; port 0 = no proxy
        self.peers = {}

    def run_client(self, peer, *args, secs=None):
        env = dict(os.environ)
        if peer.get("auth"):
            env["NB_PROXY_AUTH"] = peer["auth"]  # the proxy's token: environment, never argv
        r = subprocess.run([self.client, *[str(x) for x in args]], capture_output=True,
                           text=True, timeout=(secs or self.a.secs) * 4 + 60, env=env)
        if r.returncode != 0 or not r.stdout.strip():
            raise RuntimeError("bench_client %s failed: %s" % (args, r.stderr[-500:]))
        return json.loads(r.stdout.strip().splitlines()[-1])

    def rps(self, peer, conns, secs=None):
        return self.run_client(peer, "rps", "localhost", self.port, peer["ca"],
                               secs or self.a.secs, conns, peer["port"], PLACEHOLDER, secs=secs)

    def sse(self, peer):
        return self.run_client(peer, "sse", "localhost", self.port, peer["ca"],
                               self.a.sse_events, 5, peer["port"])

    def measure(self, peer):
        pid = peer["pid"]
        (u0, s0), io0 = nbbench.cpu_s(pid), nbbench.rw_calls(pid)
        (v0, i0) = nbbench.ctx_switches(pid)
        one = self.rps(peer, 1)
        many = self.rps(peer, self.a.conns)
        (u1, s1), io1 = nbbench.cpu_s(pid), nbbench.rw_calls(pid)
        (v1, i1) = nbbench.ctx_switches(pid)
        n = max(1, one["reqs"] + many["reqs"])
        return {"one": one, "many": many, "cpu_us": (u1 + s1 - u0 - s0) * 1e6 / n,
                "sys_us": (s1 - s0) * 1e6 / n, "rw_calls": (io1 - io0) / n,
                "cs_vol": (v1 - v0) / n, "cs_invol": (i1 - i0) / n, "sse": self.sse(peer)}

    def setup_upstream(self):
        import fake_upstream
        self.up_ca, cert, key = fake_upstream.make_ca(self.tmp)
        p = self.procs.spawn([self.upstream_bin, cert, key], stdout=subprocess.PIPE, text=True)
        self.port = int(p.stdout.readline().split()[1])
        self.peers["direct"] = {"port": 0, "ca": self.up_ca, "pid": p.pid}

    def setup_nilbox(self):
        d = self.d = nbbench.start_daemon(self.tmp, {"NILBOX_TEST_MODE": "1"})
        nbbench.cli(d, "secret", "set", "BENCH_KEY", input=SECRET)
        nbbench.cli(d, "secret", "bind", "BENCH_KEY", "--host", "localhost")
        nbbench.cli(d, "rule", "add", "allow", "localhost:%d" % self.port, "--http")
        nbbench.cli(d, "rule", "add", "allow", "127.0.0.1:%d" % self.port)
        ca = os.path.join(self.tmp, "nilbox-ca.pem")
        nbbench.cli(d, "ca", "export", ca)
        for _ in range(3):  # the daemon answers within 15 s, or the CLI gives up
            p = self.procs.spawn([nbbench.daemon_harness.NILBOX, "proxy", "--listen",
                                  "127.0.0.1:0", "--vm", "bench", "--upstream-ca", self.up_ca],
                                 env=d.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            line = p.stdout.readline().split()
            if len(line) > 2:
                break
        port = int(line[2].rsplit(":", 1)[1])
        url = p.stdout.readline()  # proxy URL: http://nilbox:TOKEN@127.0.0.1:PORT
        token = url.split("http://nilbox:", 1)[1].split("@", 1)[0]
        auth = "Basic " + base64.b64encode(("nilbox:" + token).encode()).decode()
        self.peers["nilbox"] = {"port": port, "ca": ca, "pid": d.proc.pid, "auth": auth}

    def setup_squid(self):
        exe = shutil.which("squid") or "/usr/sbin/squid"
        certgen = "/usr/lib/squid/security_file_certgen"
        if not os.access(exe, os.X_OK) or not os.access(certgen, os.X_OK):
            return
        sq = os.path.join(self.tmp, "squid")
        os.makedirs(sq)
        ca = make_ca(sq, "ca")
        shutil.copy(self.up_ca, os.path.join(sq, "upstream-ca.pem"))
        subprocess.run([certgen, "-c", "-s", os.path.join(sq, "ssldb"), "-M", "4MB"],
                       check=True, capture_output=True)
        if os.geteuid() == 0:  # Squid drops to its user (proxy) after start
            os.chmod(self.tmp, 0o711)
            subprocess.run(["chown", "-R", "proxy:proxy", sq], check=True)
        port = nbbench.free_port()
        conf = os.path.join(sq, "squid.conf")
        with open(conf, "w") as f:
            f.write(SQUID_CONF.format(port=port, dir=sq, certgen=certgen, secret=SECRET))
        p = self.procs.spawn([exe, "-N", "-f", conf], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        nbbench.wait_port(port)
        self.peers["squid"] = {"port": port, "ca": ca, "pid": p.pid}

    def setup_mitm(self):
        exe = shutil.which("mitmdump")
        if not exe:
            return
        conf = os.path.join(self.tmp, "mitm")
        os.makedirs(conf)
        port = nbbench.free_port()
        p = self.procs.spawn([exe, "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
                              "--set", "confdir=" + conf, "--set",
                              "ssl_verify_upstream_trusted_ca=" + self.up_ca, "--modify-headers",
                              "/~q/Authorization/Bearer " + SECRET],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nbbench.wait_port(port, timeout=60)
        ca = os.path.join(conf, "mitmproxy-ca-cert.pem")
        for _ in range(100):
            if os.path.exists(ca):
                break
            time.sleep(0.1)
        self.peers["mitmdump"] = {"port": port, "ca": ca, "pid": p.pid}

    def injected(self):
        st, _, body = self.d.unix("GET", "/v1/proxies")
        return json.loads(body)["stats"]["injected"]

    def cleanup(self):
        self.procs.stop()
        if self.d:
            nbbench.stop_daemon(self.d)
        shutil.rmtree(self.tmp, ignore_errors=True)


def best(runs):
    """Per figure, the best of the rounds: highest req/s, lowest times."""
    r = runs[0]
    out = {k: min(x[k] for x in runs) for k in ("cpu_us", "sys_us", "rw_calls",
                                                     "cs_vol", "cs_invol")}
    for k in ("one", "many", "sse"):
        out[k] = {f: (max if f == "rps" else min)(x[k][f] for x in runs)
                  for f in r[k] if f in ("rps", "p50_us", "p90_us", "p99_us")}
    return out


def report(a, res, injected, load):
    print("bench/proxy: keep-alive HTTPS GETs to a local upstream, %.0f s per run, best of %d "
          "rounds, load average %.2f-%.2f" % (a.secs, a.rounds, min(load), max(load)))
    print("%-9s %9s %9s %7s %7s %8s %8s %7s %7s %6s %6s %8s %8s" % (
        "", "req/s 1c", "req/s %dc" % a.conns, "p50 us", "p99 us", "+p50 ms", "CPU us", "sys us",
        "r/w", "cs vol", "invol", "SSE p50", "SSE p99"))
    d = res["direct"]
    for k in ("direct", "nilbox", "squid", "mitmdump"):
        if k not in res:
            print("%-9s (not run%s)" % (k, "" if a.only else ": bench/setup.sh installs it"))
            continue
        r = res[k]
        print("%-9s %9.0f %9.0f %7d %7d %8.3f %8.1f %7.1f %7.1f %6.2f %6.2f %8d %8d" % (
            k, r["one"]["rps"], r["many"]["rps"], r["one"]["p50_us"], r["one"]["p99_us"],
            (r["one"]["p50_us"] - d["one"]["p50_us"]) / 1000.0, r["cpu_us"], r["sys_us"],
            r["rw_calls"], r["cs_vol"], r["cs_invol"], r["sse"]["p50_us"], r["sse"]["p99_us"]))
    print("(per request: CPU (user + system) and system CPU in us, read/write system calls, "
          "voluntary and involuntary context switches, of the proxy process and its children; "
          "for direct, of the upstream. SSE: us from the upstream to the client.)")
    if "nilbox" not in res:
        print(json.dumps(res))
        return
    n = res["nilbox"]
    print("injections during the nilbox runs: %d (every request carried the placeholder)" %
          injected)

    def goal(ok):
        return "ok" if ok else "MISSED"

    def ratios(peer, want):
        p = res[peer]
        many, one = n["many"]["rps"] / p["many"]["rps"], n["one"]["rps"] / p["one"]["rps"]
        print("ratio nilbox/%s req/s: %.2f (%d conns), %.2f (1 conn)%s" % (
            peer, many, a.conns, one, "   goal >= %g: %s" % (want, goal(many >= want))
            if want else ""))
    ratios("direct", 0.5)
    if "squid" in res:
        ratios("squid", 3)
    if "mitmdump" in res:
        ratios("mitmdump", 0)
    added = (n["one"]["p50_us"] - d["one"]["p50_us"]) / 1000.0
    print("nilbox: CPU per request %.1f us   goal <= 30: %s; added p50 %.3f ms   goal <= 0.1: %s;"
          " SSE p50 %.3f ms   goal <= 1: %s" % (
              n["cpu_us"], goal(n["cpu_us"] <= 30), added, goal(added <= 0.1),
              n["sse"]["p50_us"] / 1000.0, goal(n["sse"]["p50_us"] <= 1000)))
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(nbbench.ROOT, "build-bench"))
    ap.add_argument("--secs", type=float, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sse-events", type=int, default=200)
    ap.add_argument("--only", help="comma-separated peers to run (e.g. nilbox, for a profile)")
    ap.add_argument("--wrap", metavar="CMD", help="run nilboxd under CMD (a profiler, "
                    "bench/README.md); callgrind with --instr-atstart=no collects only "
                    "during the nilbox runs")
    a = ap.parse_args()
    b = Bench(a)
    nbbench.use_build(a.build, b.tmp, a.wrap)
    toggle = a.wrap and "--instr-atstart=no" in a.wrap
    runs, load = {}, []
    try:
        b.setup_upstream()
        b.setup_nilbox()
        want = a.only.split(",") if a.only else ["squid", "mitmdump"]
        if "squid" in want:
            b.setup_squid()
        if "mitmdump" in want:
            b.setup_mitm()
        peers = [k for k in b.peers if not a.only or k in want + ["direct"]]
        for k in peers:  # warm up: leaf certificates, upstream connections
            b.rps(b.peers[k], 1, secs=0.3)
        before = b.injected()
        nilbox_reqs = 0
        for _ in range(a.rounds):
            load.append(os.getloadavg()[0])
            for k in peers:
                if k == "nilbox" and toggle:
                    subprocess.run(["callgrind_control", "-i", "on", str(b.d.proc.pid)])
                m = b.measure(b.peers[k])
                if k == "nilbox" and toggle:
                    subprocess.run(["callgrind_control", "-i", "off", str(b.d.proc.pid)])
                runs.setdefault(k, []).append(m)
                if k == "nilbox":
                    nilbox_reqs += m["one"]["reqs"] + m["many"]["reqs"]
        injected = b.injected() - before
    finally:
        b.cleanup()
    report(a, {k: best(v) for k, v in runs.items()}, injected, load)
    if injected < nilbox_reqs:
        sys.exit("only %d of %d nilbox requests had the secret injected" % (injected, nilbox_reqs))


if __name__ == "__main__":
    main()
