"""LLM usage accounting and limits through the real path: the real npm SDKs
(`openai`, `@anthropic-ai/sdk`) -> `nilbox proxy` (TLS interception, key
injection) -> a fake provider speaking the wire formats (fake_llm.py).

Checks: the tokens nilbox records equal what the fake "billed", exactly,
for JSON and streamed responses of both providers; an OpenAI stream that
did not ask for usage gets it asked for upstream and the extra chunk cut
out; the client that asked keeps it; 50 concurrent streams against a token
limit never spend past it, the 80 % warning fires once, the refused ones
get a readable 429; a requests-per-minute limit answers 429 + Retry-After;
`nilbox limit` and `nilbox usage` work; no prompt text is stored."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon_harness  # noqa: E402
import fake_llm  # noqa: E402
import fake_upstream  # noqa: E402
from proxy_env import ProxyEnv, read_all, run_suite  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "usage_node")
LLM_HOSTS = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
             "bedrock-runtime.us-east-1.amazonaws.com")
REAL_AKID = "AKIAUSAGETESTREAL001"
E = {}


class LlmEnv(ProxyEnv):
    def start(self):
        self.up_ca, self.up_cert, self.up_key = fake_upstream.make_ca(
            self.tmp, names=fake_upstream.TEST_NAMES + LLM_HOSTS)
        self.tls_port = self.upstream(tls=True)
        self.plain_port = self.upstream(tls=False)
        self.served = os.path.join(self.tmp, "served.jsonl")
        p, self.llm_port = fake_llm.spawn(self.up_log, self.served, self.up_cert, self.up_key)
        self.ups.append(p)
        self.d.start("--key-file", os.path.join(self.tmp, "master.key"))
        self.wait_open()
        self.ca_pem = os.path.join(self.tmp, "nilbox-ca.pem")
        assert self.d.cli("ca", "export", self.ca_pem).returncode == 0
        for port in (self.tls_port, self.plain_port, self.llm_port):
            self.rule("allow", "127.0.0.1:%d" % port)

    def llm_proxy(self, vm="a"):
        return self.proxy(vm=vm, extra_resolve=["%s:443:127.0.0.1:%d" % (h, self.llm_port)
                                                for h in LLM_HOSTS])

    def served_rows(self):
        try:
            with open(self.served) as f:
                return [json.loads(l) for l in f if l.endswith("\n") and l.strip()]
        except FileNotFoundError:
            return []

    def records(self, vm=None):
        args = ["--json", "usage", "ls", "-n", "1000"] + (["--vm", vm] if vm else [])
        return json.loads(self.cli(*args).stdout)["records"]


def sdk(px, scenario, n=1, delay=0, timeout=120, hold=0):
    r = subprocess.run(["node", os.path.join(NODE_DIR, "sdk.mjs"), px.url, E["e"].ca_pem,
                        scenario, str(n), str(delay), str(hold)], capture_output=True, text=True,
                       timeout=timeout, cwd=NODE_DIR)
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    j = json.loads(r.stdout)
    E["refusals"] = j["refusals"]
    return j["results"]


def setup():
    e = E["e"] = LlmEnv()
    e.start()
    e.secret("OPENAI_API_KEY", "sk-test-openai-0123456789")
    e.secret("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    e.bind("OPENAI_API_KEY", "api.openai.com")
    e.bind("ANTHROPIC_API_KEY", "api.anthropic.com", "--header", "x-api-key: {secret}")
    e.secret("GEMINI_API_KEY", "gm-test-gemini-0123456789")
    e.bind("GEMINI_API_KEY", "generativelanguage.googleapis.com", "--header",
           "x-goog-api-key: {secret}")
    e.secret("AWS_BEDROCK", "%s\nusageTestRealSecret/0123456789abcdefghij\n" % REAL_AKID)
    e.cli("secret", "bind-aws", "AWS_BEDROCK", "--host", "*.amazonaws.com")
    for h in LLM_HOSTS:
        e.rule("allow", h + ":443")
    E["px"] = e.llm_proxy("a")


def settle(e, n, vm=None):
    """The records once there are n (the settle runs when the response ends)."""
    return e.wait_for(lambda: (lambda r: r if len(r) >= n else None)(e.records(vm)),
                      timeout=10, what="%d usage records" % n)


def check_same(rec, served, cache_write=False):
    assert rec["input"] == served["input"], (rec, served)
    assert rec["output"] == served["output"], (rec, served)
    assert rec["cached"] == served["cached"], (rec, served)
    if cache_write:
        assert rec["cache_write"] == served["cache_write"], (rec, served)
    assert rec["estimated"] is False, rec
    assert rec["request_id"] == served["request_id"], (rec, served)


def test_openai_json_exact():
    e = E["e"]
    out = sdk(E["px"], "openai-json")[0]
    assert out["ok"], out
    served = e.served_rows()[-1]
    rec = settle(e, 1)[0]
    check_same(rec, served)
    assert out["usage"]["prompt_tokens"] == served["input"]
    assert rec["provider"] == "openai" and rec["model"] == "gpt-4o-mini-2024-07-18", rec
    assert rec["vm"] == "a" and rec["secret"] == "OPENAI_API_KEY", rec
    # gpt-4o-mini at the catalogue's prices: cached tokens at the cached price.
    want = ((served["input"] - served["cached"]) * 0.15 + served["cached"] * 0.075 +
            served["output"] * 0.60) / 1e6
    assert abs(rec["cost_usd"] - want) < 1e-12, (rec["cost_usd"], want)


def test_openai_stream_usage_added_and_stripped():
    e = E["e"]
    n0 = len(e.records())
    out = sdk(E["px"], "openai-stream")[0]
    assert out["ok"], out
    served = e.served_rows()[-1]
    # nilbox asked upstream for the usage chunk ...
    assert served["stream"] and served["include_usage"], served
    # ... and the client, which did not, never saw it.
    assert out["emptyChoices"] == 0 and out["usage"] is None, out
    assert out["text"] == "tok " * served["output"], out
    rec = settle(e, n0 + 1)[0]
    check_same(rec, served)


def test_openai_stream_client_asked():
    e = E["e"]
    n0 = len(e.records())
    out = sdk(E["px"], "openai-stream-usage")[0]
    assert out["ok"], out
    served = e.served_rows()[-1]
    assert out["emptyChoices"] == 1, out  # its own usage chunk is kept
    assert out["usage"]["prompt_tokens"] == served["input"], (out, served)
    assert out["usage"]["completion_tokens"] == served["output"]
    check_same(settle(e, n0 + 1)[0], served)


def test_anthropic_exact():
    e = E["e"]
    for scen in ("anthropic-json", "anthropic-stream"):
        n0 = len(e.records())
        out = sdk(E["px"], scen)[0]
        assert out["ok"], (scen, out)
        served = e.served_rows()[-1]
        assert out["usage"]["output_tokens"] == served["output"], (out, served)
        rec = settle(e, n0 + 1)[0]
        check_same(rec, served, cache_write=True)
        assert rec["provider"] == "anthropic" and rec["secret"] == "ANTHROPIC_API_KEY", rec
        assert rec["tokens"] == served["input"] + served["cached"] + served["cache_write"] + \
            served["output"], rec


def up_headers(e):
    """The headers of the last request the fake upstream got."""
    with open(e.up_log) as f:
        return {k.lower(): v for k, v in json.loads(f.read().splitlines()[-1])["headers"]}


def test_gemini_exact():
    """@google/genai, generateContent and streamGenerateContent (SSE with
    cumulative usageMetadata): nilbox counts what the fake billed."""
    e = E["e"]
    for scen in ("gemini-json", "gemini-stream"):
        n0 = len(e.records())
        out = sdk(E["px"], scen)[0]
        assert out["ok"], (scen, out)
        served = e.served_rows()[-1]
        assert served["api"] == "gemini" and served["stream"] == (scen == "gemini-stream")
        assert out["usage"]["promptTokenCount"] == served["input"], (out, served)
        assert out["usage"]["candidatesTokenCount"] == served["output"], (out, served)
        assert out["text"] == "tok " * served["output"], out
        assert up_headers(e)["x-goog-api-key"] == "gm-test-gemini-0123456789"
        rec = settle(e, n0 + 1)[0]
        assert rec["provider"] == "gemini" and rec["secret"] == "GEMINI_API_KEY", rec
        assert rec["model"] == served["model"] == out["model"], (rec, served)
        for k in ("input", "output", "cached"):
            assert rec[k] == served[k], (k, rec, served)
        assert rec["estimated"] is False, rec


def test_bedrock_exact():
    """@aws-sdk/client-bedrock-runtime, Converse (JSON) and ConverseStream (AWS
    event-stream frames), signed with the placeholders and re-signed by nilbox
    (bind-aws; the sigv4 tests verify those signatures): counts exact."""
    e = E["e"]
    for scen in ("bedrock-json", "bedrock-stream"):
        n0 = len(e.records())
        out = sdk(E["px"], scen)[0]
        assert out["ok"], (scen, out)
        served = e.served_rows()[-1]
        assert served["api"] == "bedrock" and served["stream"] == (scen == "bedrock-stream")
        assert out["usage"]["inputTokens"] == served["input"], (out, served)
        assert out["usage"]["outputTokens"] == served["output"], (out, served)
        assert out["text"] == "tok " * served["output"], out
        assert "Credential=%s/" % REAL_AKID in up_headers(e)["authorization"]
        rec = settle(e, n0 + 1)[0]
        assert rec["provider"] == "bedrock" and rec["secret"] == "AWS_BEDROCK", rec
        assert rec["model"] == served["model"], (rec, served)
        for k in ("input", "output", "cached", "cache_write"):
            assert rec[k] == served[k], (k, rec, served)
        assert rec["estimated"] is False, rec


def test_summary_and_no_text_stored():
    e = E["e"]
    j = json.loads(e.cli("--json", "usage", "--by", "provider").stdout)
    rows = {r["key"]: r for r in j["rows"]}
    served = e.served_rows()
    assert rows["openai"]["requests"] == sum(1 for s in served if s["api"] == "openai")
    assert rows["openai"]["input"] == sum(s["input"] for s in served if s["api"] == "openai")
    assert rows["anthropic"]["output"] == sum(s["output"] for s in served
                                              if s["api"] == "anthropic")
    assert j["prices_as_of"], j
    r = e.cli("usage")
    assert "openai" in r.stdout and "unverified" in r.stdout, r.stdout
    # Neither prompts, completions nor key values are anywhere in the state.
    for path, data in e.all_state_bytes():
        for needle in (b"Say hello to the usage meter", b"tok tok", b"sk-test-openai",
                       b"Hello from a VM", b"gm-test-gemini", b"usageTestRealSecret"):
            assert needle not in data, (path, needle)


def test_concurrent_streams_never_overshoot():
    e = E["e"]
    px = e.llm_proxy("burst")
    # Each request reserves its body size + max_tokens (10) tokens; the fake
    # bills ~50. 50 concurrent streams against 4000 tokens: some must go.
    lim = json.loads(e.cli("--json", "limit", "set", "--vm", "burst", "--per", "day",
                           "--tokens", "4000").stdout)
    # The fake holds each answer 8 s, so the admitted streams overlap even
    # when a loaded machine takes seconds to open all 50 connections.
    out = sdk(px, "concurrent-openai", n=50, delay=20, timeout=180, hold=8000)
    ok = [o for o in out if o["ok"]]
    refused = [o for o in out if not o["ok"]]
    assert ok and refused, (len(ok), len(refused))
    for o in refused:
        assert o["status"] == 429 and "usage limit reached" in o["error"], o
    assert len(E["refusals"]) == len(refused)
    for f in E["refusals"]:
        err = f["body"]
        assert err["code"] == "usage-limit" and err["limit"]["id"] == lim["id"], err
        assert "usage limit reached" in err["error"], err
        assert err["used"] <= 4000 and err["resets_at"].endswith("Z") and err["hint"], err
    recs = settle(e, len(ok), vm="burst")
    assert len(recs) == len(ok), (len(recs), len(ok))
    spent = sum(r["tokens"] for r in recs)
    assert spent <= 4000, spent
    assert all(not r["estimated"] for r in recs)
    served = [s for s in e.served_rows()][-len(ok):]
    assert spent == sum(s["input"] + s["output"] for s in served), spent
    # The warning fired once for this limit: one audit row, one event.
    rows = [r for r in e.audit("limit") if r.get("vm") in ("burst", "", None)]
    warns = [r for r in rows if r["detail"].get("action") == "warning"
             and r["detail"]["limit"]["id"] == lim["id"]]
    assert len(warns) == 1, rows
    blocked = [r for r in rows if r["detail"].get("action") == "blocked"]
    assert blocked, rows
    evs = [v for v in e.events("proxy.limit") if v.get("detail", {}).get("action") == "warning"]
    assert len(evs) >= 1, evs
    ls = json.loads(e.cli("--json", "limit", "ls").stdout)["limits"]
    mine = [l for l in ls if l["id"] == lim["id"]][0]
    assert mine["used"] == spent and mine["reserved"] == 0, mine
    e.cli("limit", "rm", str(lim["id"]))
    assert not [l for l in json.loads(e.cli("--json", "limit", "ls").stdout)["limits"]
                if l["id"] == lim["id"]]


def test_rate_limit_retry_after():
    e = E["e"]
    px = e.llm_proxy("rate")
    e.cli("limit", "set", "--vm", "rate", "--per", "minute", "--requests", "3")
    out = sdk(px, "many-openai-json", n=5)
    assert [o["ok"] for o in out] == [True, True, True, False, False], out
    assert out[3]["status"] == 429, out
    f = E["refusals"][0]
    assert f["body"]["code"] == "rate-limited" and f["body"]["limit"]["unit"] == "requests", f
    assert 1 <= int(f["retryAfter"]) <= 60, f


def test_limit_cli_errors():
    e = E["e"]
    r = e.cli("limit", "set", "--vm", "x", "--per", "minute", "--tokens", "5", check=False)
    assert r.returncode != 0 and "per minute" in r.stderr, r
    r = e.cli("limit", "set", "--vm", "x", "--per", "day", check=False)
    assert r.returncode == 2, r
    r = e.cli("limit", "rm", "999999", check=False)
    assert r.returncode != 0, r
    r = e.cli("limit", "set", "--global", "--per", "month", "--usd", "-1", check=False)
    assert r.returncode == 2, r


def test_warning_header():
    e = E["e"]
    px = e.llm_proxy("warn")
    # A request reserves R = its body size + max_tokens (8) and spends u: with
    # the limit at (R + u/2) / 0.8 the first stays under 80 %, the second
    # crosses it (warning header); the warning is not repeated in the window.
    assert sdk(px, "openai-json")[0]["ok"]
    R = e.received()[-1]["body_len"] + 8
    u = e.served_rows()[-1]["input"] + e.served_rows()[-1]["output"]
    e.cli("limit", "set", "--vm", "warn2", "--per", "hour", "--tokens", str((R + u / 2) / 0.8))
    px2 = e.llm_proxy("warn2")
    out = sdk(px2, "many-openai-json", n=3)
    assert out[0]["ok"] and not out[0]["warning"], out
    assert out[1]["ok"] and "tokens" in out[1]["warning"] and "warn2" in out[1]["warning"], out
    assert not out[2].get("warning"), out


def raw_post(e, px, body):
    """One chat completion with exactly these body bytes: (status, body)."""
    s = e.tunnel("api.openai.com", px=px)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\n"
              b"Authorization: Bearer OPENAI_API_KEY\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    resp = read_all(s, timeout=10)
    s.close()
    head, _, rest = resp.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def test_request_body_read_as_a_parser_does():
    """The held body is read by a bounded scanner (proxy_usage.c), which must
    reserve what a JSON parser (and so the upstream) reads: a second
    max_tokens that is an object, or one spelled with an escape, is the one
    that counts (here past the limit: 429), never the small one before it."""
    e = E["e"]
    px = e.llm_proxy("rq")
    e.cli("limit", "set", "--vm", "rq", "--per", "day", "--tokens", "2000")
    msgs = b'"messages":[{"role":"user","content":"hi"}]'
    st, _ = raw_post(e, px, b'{"model":"gpt-4o-mini","max_tokens":3,' + msgs + b'}')
    assert st == 200, st  # control: a small cap fits
    for body in (b'{"model":"gpt-4o-mini","max_tokens":3,"max_tokens":{},' + msgs + b'}',
                 b'{"model":"gpt-4o-mini","max_tokens":3,"max_tok\\u0065ns":5000,' + msgs + b'}',
                 b'{"model":"gpt-4o-mini","max_tokens":5000,' + msgs + b'}'):
        n = len(e.served_rows())
        st, out = raw_post(e, px, body)
        assert st == 429 and json.loads(out)["code"] == "usage-limit", (body, st, out)
        assert len(e.served_rows()) == n, body  # never reached the upstream
    # A stream whose stream_options lacks include_usage: merged into it, and
    # the usage chunk the client did not ask for is cut.
    st, out = raw_post(e, px, b'{"model":"gpt-4o-mini","max_tokens":2,"stream":true,'
                              b'"stream_options":{"include_usage":false},' + msgs + b'}')
    served = e.served_rows()[-1]
    assert st == 200 and served["stream"] and served["include_usage"], (st, served)
    assert b'"choices":[]' not in out and b"[DONE]" in out, out


def test_usage_event_while_watched():
    """usage.record is built only while someone watches the events live
    (usage.h emit_wanted): a follower (`nilbox events --follow`, WebSocket)
    gets one per record with its counts; unwatched, none is made (the
    record is in the ledger either way)."""
    e = E["e"]
    px = e.llm_proxy("ev")
    msgs = b'"messages":[{"role":"user","content":"hi"}]'
    body = b'{"model":"gpt-4o-mini","max_tokens":2,' + msgs + b'}'
    assert raw_post(e, px, body)[0] == 200
    settle(e, 1, vm="ev")
    evs = [x for x in e.events("usage.") if x.get("vm") == "ev"]
    assert not evs, evs  # nobody watched
    cmd = [daemon_harness.NILBOX, "--json", "events", "--follow"]
    f = subprocess.Popen(cmd, env=e.d.env, stdout=subprocess.PIPE, text=True)
    try:
        e.wait_for(lambda: json.loads(e.d.unix("GET", "/v1/status")[2])["counts"][
            "event_clients"] == 1, timeout=10, what="the follower attached")
        assert raw_post(e, px, body)[0] == 200
        rec = e.wait_for(lambda: (lambda r: r if len(r) >= 2 else None)(e.records("ev")),
                         timeout=10, what="2 records")[0]
        seen = None
        while seen is None:
            ev = json.loads(f.stdout.readline())
            if ev.get("type") == "usage.record" and ev.get("vm") == "ev":
                seen = ev
        assert seen["request_id"] == rec["request_id"], (seen, rec)
        assert seen["input"] == rec["input"] and seen["output"] == rec["output"], (seen, rec)
    finally:
        f.terminate()
        f.wait(timeout=10)


def test_stop_clean():
    E["e"].stop_clean()


run_suite(setup, [test_openai_json_exact, test_openai_stream_usage_added_and_stripped,
                  test_openai_stream_client_asked, test_anthropic_exact,
                  test_gemini_exact, test_bedrock_exact,
                  test_summary_and_no_text_stored, test_concurrent_streams_never_overshoot,
                  test_rate_limit_retry_after, test_limit_cli_errors, test_warning_header,
                  test_request_body_read_as_a_parser_does, test_usage_event_while_watched,
                  test_stop_clean])
