#!/usr/bin/python3
"""bench/usage: what LLM usage accounting (issue 11) costs in `nilbox proxy`.

One `nilbox proxy`, one local fake OpenAI upstream (bench_usage upstream,
C), one load generator (bench_usage client, C), two host names resolved to
the same upstream and bound to the same secret:
  on    api.openai.com: a catalogue host, so every POST is held until its
        body is complete, parsed for model and max_tokens, reserved against
        a (never reached) global token limit, the response metered (JSON
        scanner / SSE events) and a usage record written to sqlite;
  off   llm.bench.test: not in the catalogue, forwarded as any HTTPS
        request (injection, gate, redaction, audit as for "on").
The client asks for include_usage itself, so both get the same bytes. Per
round the two alternate (load from other processes hits both) and each
figure is the best of --rounds:
  * SSE throughput: --conns connections of back-to-back streams of
    --events chunks each (events/s), and nilboxd's CPU per event;
  * JSON throughput: --conns connections of chat completions (req/s) and
    CPU per request;
  * SSE latency: 1 connection, events spaced --pace-ms apart: time from an
    event leaving the upstream to reaching the client (p50/p99);
  * JSON latency: 1 connection, request to complete response (p50/p99).
Prints a table and the ratios against the goals of issue 11 (<= 5 %
throughput loss, <= 0.05 ms added p50 per event). Checks that "on" wrote a
usage record for its requests (exact, not estimated) and "off" none.

Run through bench/usage/run.sh (builds the binaries in build-bench)."""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import nbbench  # noqa: E402

SECRET = "sk-bench-REAL-0123456789abcdef"
HOSTS = {"on": "api.openai.com", "off": "llm.bench.test"}


class Bench:
    def __init__(self, a):
        self.a = a
        self.tmp = tempfile.mkdtemp(prefix="nb-bench-usage-")
        self.procs = nbbench.Procs()
        self.exe = os.path.join(a.build, "bench", "bench_usage")
        self.d = None

    def setup(self):
        import fake_upstream
        _, cert, key = fake_upstream.make_ca(self.tmp, names=tuple(HOSTS.values()))
        p = self.procs.spawn([self.exe, "upstream", cert, key], stdout=subprocess.PIPE,
                             text=True)
        self.port = int(p.stdout.readline().split()[1])
        up_ca = os.path.join(self.tmp, "upstream-ca.pem")
        d = self.d = nbbench.start_daemon(self.tmp, {"NILBOX_TEST_MODE": "1"})
        nbbench.cli(d, "secret", "set", "BENCH_KEY", input=SECRET)
        for h in HOSTS.values():
            nbbench.cli(d, "secret", "bind", "BENCH_KEY", "--host", h)
            nbbench.cli(d, "rule", "add", "allow", h + ":443")
        nbbench.cli(d, "rule", "add", "allow", "127.0.0.1:%d" % self.port)
        # A limit far out of reach: "on" pays for the reservation and settlement too.
        nbbench.cli(d, "limit", "set", "--global", "--per", "month", "--tokens", "100000000000")
        self.ca = os.path.join(self.tmp, "nilbox-ca.pem")
        nbbench.cli(d, "ca", "export", self.ca)
        resolve = ",".join("%s:443:127.0.0.1:%d" % (h, self.port) for h in HOSTS.values())
        for _ in range(3):  # the daemon answers within 15 s, or the CLI gives up
            p = self.procs.spawn([nbbench.daemon_harness.NILBOX, "proxy", "--listen",
                                  "127.0.0.1:0", "--vm", "bench", "--upstream-ca", up_ca,
                                  "--resolve", resolve], env=d.env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline().split()
            if len(line) > 2:
                break
        self.pport = int(line[2].rsplit(":", 1)[1])
        url = p.stdout.readline()  # proxy URL: http://nilbox:TOKEN@127.0.0.1:PORT
        token = url.split("http://nilbox:", 1)[1].split("@", 1)[0]
        self.auth = "Basic " + base64.b64encode(("nilbox:" + token).encode()).decode()

    def client(self, host, secs, conns, mode, events, ms):
        env = dict(os.environ, NB_PROXY_AUTH=self.auth)  # environment, never argv
        r = subprocess.run([self.exe, "client", host, str(self.pport), self.ca, str(secs),
                            str(conns), mode, str(events), str(ms)], capture_output=True,
                           text=True, timeout=secs * 4 + 60, env=env)
        if r.returncode != 0 or not r.stdout.strip():
            raise RuntimeError("bench_usage client %s %s failed: %s" % (host, mode,
                                                                       r.stderr[-500:]))
        out = json.loads(r.stdout.strip().splitlines()[-1])
        if out["failed"]:
            raise RuntimeError("bench_usage client %s %s: a request failed: %s" % (
                host, mode, r.stderr[-500:]))
        return out

    def cpu(self):
        u, s = nbbench.cpu_s(self.d.proc.pid)
        return u + s

    def measure(self, side):
        a, h = self.a, HOSTS[side]
        none = {"reqs": 0, "events": 0, "rps": 0, "eps": 0, "ev_p50_us": 0, "ev_p99_us": 0,
                "req_p50_us": 0, "req_p99_us": 0}
        c0 = self.cpu()
        sse = self.client(h, a.secs, a.conns, "sse", a.events, 0) if a.phase != "json" else none
        c1 = self.cpu()
        js = self.client(h, a.secs, a.conns, "json", 0, 0) if a.phase != "sse" else none
        c2 = self.cpu()
        lat = self.client(h, a.secs, 1, "sse", a.events, a.pace_ms) if not a.phase else none
        jl = self.client(h, a.secs, 1, "json", 0, 0) if not a.phase else none
        return {"sse_eps": sse["eps"], "sse_rps": sse["rps"], "json_rps": js["rps"],
                "cpu_us_event": (c1 - c0) * 1e6 / max(1, sse["events"]),
                "cpu_us_req": (c2 - c1) * 1e6 / max(1, js["reqs"]),
                "ev_p50_us": lat["ev_p50_us"], "ev_p99_us": lat["ev_p99_us"],
                "json_p50_us": jl["req_p50_us"], "json_p99_us": jl["req_p99_us"],
                "reqs": sse["reqs"] + js["reqs"] + lat["reqs"] + jl["reqs"]}

    def records(self):
        r = nbbench.cli(self.d, "--json", "usage", "summary", "--by", "model")
        return json.loads(r.stdout)

    def cleanup(self):
        self.procs.stop()
        if self.d:
            nbbench.stop_daemon(self.d)
        shutil.rmtree(self.tmp, ignore_errors=True)


def best(runs):
    hi = ("sse_eps", "sse_rps", "json_rps")
    return {k: (max if k in hi else min)(r[k] for r in runs) for k in runs[0] if k != "reqs"}


def report(a, res, load, check):
    on, off = res["on"], res["off"]
    print("bench/usage: OpenAI chat completions through `nilbox proxy`, accounting on "
          "(api.openai.com) vs off (llm.bench.test), same upstream and run; %g s per run, "
          "%d conns, %d events per stream, best of %d rounds, load average %.2f-%.2f" % (
              a.secs, a.conns, a.events, a.rounds, min(load), max(load)))
    print("%-4s %10s %9s %9s %9s %9s %9s %9s %10s %10s" % (
        "", "SSE ev/s", "SSE rq/s", "JSON rq/s", "CPU us/ev", "CPU us/rq", "ev p50us",
        "ev p99us", "JSON p50us", "JSON p99us"))
    for k in ("off", "on"):
        r = res[k]
        print("%-4s %10.0f %9.1f %9.0f %9.2f %9.1f %9d %9d %10d %10d" % (
            k, r["sse_eps"], r["sse_rps"], r["json_rps"], r["cpu_us_event"], r["cpu_us_req"],
            r["ev_p50_us"], r["ev_p99_us"], r["json_p50_us"], r["json_p99_us"]))

    def goal(ok):
        return "ok" if ok else "MISSED"
    sse_ratio, json_ratio = on["sse_eps"] / off["sse_eps"], on["json_rps"] / off["json_rps"]
    added_ev = (on["ev_p50_us"] - off["ev_p50_us"]) / 1000.0
    added_req = (on["json_p50_us"] - off["json_p50_us"]) / 1000.0
    print("throughput on/off: SSE %.3f (loss %.1f %%), JSON %.3f (loss %.1f %%)   goal loss <= "
          "5 %%: %s" % (sse_ratio, (1 - sse_ratio) * 100, json_ratio, (1 - json_ratio) * 100,
                       goal(sse_ratio >= 0.95 and json_ratio >= 0.95)))
    print("added p50: per event %.3f ms   goal <= 0.05: %s; per JSON request %.3f ms" % (
        added_ev, goal(added_ev <= 0.05), added_req))
    print("added CPU: %.2f us per event, %.1f us per JSON request (nilboxd, user + system)" % (
        on["cpu_us_event"] - off["cpu_us_event"], on["cpu_us_req"] - off["cpu_us_req"]))
    print(check)
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(nbbench.ROOT, "build-bench"))
    ap.add_argument("--secs", type=float, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=50, help="content chunks per stream")
    ap.add_argument("--pace-ms", type=int, default=2, help="event spacing in the latency run")
    ap.add_argument("--only", choices=("on", "off"), help="one side only (for a profile: "
                    "perf record -p PID meanwhile, with the nilboxd pid printed on stderr)")
    ap.add_argument("--phase", choices=("sse", "json"), help="only that throughput run (for a "
                    "profile; no latency runs)")
    ap.add_argument("--wrap", help="run nilboxd under this command (for a profile, e.g. "
                    "'valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%%p'; with --only)")
    a = ap.parse_args()
    b = Bench(a)
    nbbench.use_build(a.build, b.tmp, a.wrap)
    runs, load, reqs = {}, [], {"on": 0, "off": 0}
    try:
        b.setup()
        print("nilboxd pid %d" % b.d.proc.pid, file=sys.stderr, flush=True)
        for side in HOSTS:  # warm up: leaf certificates, upstream connections
            b.client(HOSTS[side], 0.3, 1, "json", 0, 0)
        base = b.records()
        cg = a.wrap and "callgrind" in a.wrap
        if cg:  # count the measured runs only: zero now, dump after them
            subprocess.run(["callgrind_control", "-z", str(b.d.proc.pid)], check=True,
                           capture_output=True)
        for i in range(a.rounds):
            load.append(os.getloadavg()[0])
            for side in [a.only] if a.only else (("on", "off") if i % 2 else ("off", "on")):
                m = b.measure(side)
                runs.setdefault(side, []).append(m)
                reqs[side] += m["reqs"]
        if cg:
            subprocess.run(["callgrind_control", "-d", "measured", str(b.d.proc.pid)],
                           check=True, capture_output=True)
        after = b.records()
    finally:
        b.cleanup()
    if a.only:
        print(json.dumps({k: dict(best(v), reqs_total=reqs[k]) for k, v in runs.items()}))
        return

    def count(summary):
        rows = summary.get("rows") or summary.get("groups") or []
        return sum(r.get("requests", 0) for r in rows), sum(r.get("estimated", 0) or 0
                                                            for r in rows)
    n0, _ = count(base)
    n1, est = count(after)
    check = ("usage records written during the runs: %d for %d requests with accounting on "
             "(%d estimated); accounting off writes none" % (n1 - n0, reqs["on"], est))
    report(a, {k: best(v) for k, v in runs.items()}, load, check)
    if n1 - n0 != reqs["on"] or est:  # more would mean "off" was metered too
        sys.exit("accounting on recorded %d of %d requests" % (n1 - n0, reqs["on"]))


if __name__ == "__main__":
    main()
