#!/usr/bin/python3
"""Reasons that tools print (issue 17): for a nilbox denial (403) and a
refused upstream (502 internal-address), what curl, Python requests, Node
fetch, npm, pip and git print by default names the reason and, where there
is one, the exact command that allows the destination. That command is then
run as printed and the request goes through.

Where each tool looks: the status line's reason phrase (requests and pip
`raise_for_status`, Node `res.statusText`, npm), the JSON `error` (npm,
SDKs) and `message`, a text/plain body for git (shown as `remote:` lines).
The stable token stays in X-Nilbox-Reason and the JSON `code`."""
import json
import os
import shlex
import subprocess
import tempfile

import requests

from proxy_env import ProxyEnv, run_suite

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "node")
E = None


def setup():
    global E
    E = ProxyEnv(prompt_timeout_ms=1000, names=("api.test",)).__enter__()
    E.rule("allow", "rebind.test:443")
    E.deny_id = E.rule("deny", "evil.test")["id"]
    # The upstream is on loopback: without ProxyEnv's IP rule for it, a name
    # that resolves there is refused (A13: 502 internal-address).
    rules = json.loads(E.cli("--json", "rule", "ls").stdout)
    rules = rules["rules"] if isinstance(rules, dict) else rules
    for r in rules:
        if r["target"] in ("127.0.0.1", "127.0.0.1/32") and r["port"] == E.tls_port:
            E.cli("rule", "rm", str(r["id"]))
    E.px = E.proxy(vm="dev", extra_resolve=[
        "other.test:443:127.0.0.1:%d" % E.tls_port,
        "rebind.test:443:127.0.0.1:%d" % E.tls_port])


def clean_env(home):
    """The tool's own defaults: no CA or index settings from this machine."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "GIT_", "npm_", "NPM_")) and k not in (
               "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
               "NODE_EXTRA_CA_CERTS", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy",
               "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")}
    env.update(HOME=home, PIP_CONFIG_FILE="/dev/null", GIT_CONFIG_NOSYSTEM="1",
               GIT_TERMINAL_PROMPT="0")
    return env


def allow_cmd(host, port=443):
    return "nilbox rule add allow %s --port %d --vm dev" % (host, port)


def run_printed(cmd):
    """Runs a command exactly as a reply printed it (with the test's CLI)."""
    argv = shlex.split(cmd)
    assert argv[0] == "nilbox", cmd
    r = E.d.cli(*argv[1:])
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)


def check_phrase(reason):
    assert reason.isascii() and "\r" not in reason and "\n" not in reason, reason
    assert len(reason) <= 300, len(reason)


def test_curl_403_and_502():
    r = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", "-x", E.px.url, "--cacert",
                        E.ca_pem, "https://ws.test/curl"], capture_output=True, text=True)
    head, _, body = r.stdout.replace("\r\n", "\n").rpartition("\n\n")
    status = [ln for ln in head.splitlines() if ln.startswith("HTTP/1.1 403")]
    assert status, r.stdout
    assert "nilbox denied ws.test:443: nobody answered the prompt in time" in status[0], status
    assert allow_cmd("ws.test") in status[0], status
    check_phrase(status[0].split(" ", 2)[2])
    assert "x-nilbox-reason: prompt-timeout" in head.lower(), head
    j = json.loads(body)
    assert j["code"] == "denied" and j["allow"] == allow_cmd("ws.test"), j
    assert j["error"] == j["message"] and allow_cmd("ws.test") in j["error"], j
    # 502: the name resolves to a reserved address; the narrow IP rule is named.
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "-x", E.px.url, "--cacert", E.ca_pem,
                        "https://rebind.test/curl"], capture_output=True, text=True)
    j = json.loads(r.stdout)
    assert j["code"] == "bad-gateway" and "127.0.0.1" in j["error"], j
    assert j["allow"] == allow_cmd("127.0.0.1", E.tls_port), j
    # A plain (absolute-form) request is answered the same way.
    r = subprocess.run(["curl", "-sS", "-i", "--max-time", "20", "-x", E.px.url,
                        "http://plainhost.test/x"], capture_output=True, text=True)
    assert r.stdout.startswith("HTTP/1.1 403 nilbox denied plainhost.test:80"), r.stdout[:300]
    assert allow_cmd("plainhost.test", 80) in r.stdout.splitlines()[0], r.stdout[:300]


def test_python_requests():
    px = {"https": E.px.url, "http": E.px.url}
    r = requests.get("https://sse.test/py", proxies=px, verify=E.ca_pem, timeout=20)
    check_phrase(r.reason)
    try:
        r.raise_for_status()
        raise AssertionError("no error raised")
    except requests.HTTPError as e:
        msg = str(e)
    assert msg.startswith("403 Client Error: nilbox denied sse.test:443"), msg
    assert allow_cmd("sse.test") in msg, msg
    assert r.json()["code"] == "denied" and r.headers["x-nilbox-reason"] == "prompt-timeout"
    r = requests.get("https://rebind.test/py", proxies=px, verify=E.ca_pem, timeout=20)
    try:
        r.raise_for_status()
        raise AssertionError("no error raised")
    except requests.HTTPError as e:
        msg = str(e)
    assert msg.startswith("502 Server Error: nilbox could not reach rebind.test:443"), msg
    assert allow_cmd("127.0.0.1", E.tls_port) in msg, msg
    assert r.headers["x-nilbox-reason"] == "internal-address"
    # A deny rule: no `rule add` (it would not win), but how to lift it.
    r = requests.get("https://evil.test/py", proxies=px, verify=E.ca_pem, timeout=20)
    assert r.status_code == 403 and "a deny rule covers it" in r.reason, r.reason
    assert "to lift the deny rule: nilbox rule rm %d" % E.deny_id in r.reason, r.reason
    assert r.json()["code"] == "denied" and r.json()["allow"] == "nilbox rule rm %d" % E.deny_id


def test_node_fetch():
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "undici")), (
        "undici is not installed in %s: run scripts/install-deps.sh" % NODE_DIR)
    r = subprocess.run(["node", os.path.join(NODE_DIR, "fetch_once.mjs"), E.px.url, E.ca_pem,
                        "https://plain.test/node"], capture_output=True, text=True, timeout=60)
    j = json.loads(r.stdout)
    assert j["status"] == 403, j
    assert j["statusText"].startswith("nilbox denied plain.test:443"), j
    assert allow_cmd("plain.test") in j["statusText"], j
    assert json.loads(j["body"])["code"] == "denied", j


def test_npm():
    # npm prints "<status> <statusText> - GET <url> - <body.error>".
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(clean_env(tmp), npm_config_cache=os.path.join(tmp, "cache"),
                   npm_config_update_notifier="false", npm_config_audit="false",
                   npm_config_fund="false")
        r = subprocess.run(["npm", "view", "openai", "--registry", "https://a.api.test/",
                            "--https-proxy", E.px.url, "--proxy", E.px.url, "--cafile", E.ca_pem,
                            "--fetch-retries", "0"], capture_output=True, text=True, timeout=90,
                           env=env, cwd=tmp)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    line = [ln for ln in out.splitlines() if "GET https://a.api.test/" in ln]
    assert line and "403 Forbidden - GET https://a.api.test/openai - nilbox denied a.api.test:443" \
        in line[0], out
    assert line[0].count(allow_cmd("a.api.test")) == 1, line  # once, not twice


def test_pip():
    with tempfile.TemporaryDirectory() as tmp:
        # (pip logs index-page errors only with -v; a file download shows them)
        r = subprocess.run(["/usr/bin/python3", "-m", "pip", "download", "--no-deps",
                            "--disable-pip-version-check", "--retries", "0", "--proxy", E.px.url,
                            "--cert", E.ca_pem, "-d", tmp,
                            "https://meta.test/nilbox_test_pkg-1.0-py3-none-any.whl"],
                           capture_output=True, text=True, timeout=90,
                           env=clean_env(tmp))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "403 Client Error: nilbox denied meta.test:443" in out, out
    assert allow_cmd("meta.test") in out, out


def test_git():
    with tempfile.TemporaryDirectory() as tmp:
        env = clean_env(tmp)
        r = subprocess.run(["git", "-c", "http.proxy=" + E.px.url, "-c",
                            "http.sslCAInfo=" + E.ca_pem, "ls-remote",
                            "https://bench.test/repo.git"], capture_output=True, text=True,
                           timeout=60, env=env, cwd=tmp)
    assert r.returncode != 0, r
    assert "remote: nilbox denied bench.test:443: nobody answered the prompt in time" in r.stderr, \
        r.stderr
    assert allow_cmd("bench.test") in r.stderr, r.stderr
    assert "returned error: 403" in r.stderr, r.stderr


def test_printed_commands_allow():
    """The commands replies print are exact: run as printed, the same
    request goes through - first the name rule, then (the name resolves to
    loopback) the narrow IP rule of A13."""
    px = {"https": E.px.url}
    r = requests.get("https://other.test/allow-me", proxies=px, verify=E.ca_pem, timeout=20)
    assert r.status_code == 403, r.status_code
    run_printed(r.json()["allow"])
    r = requests.get("https://other.test/allow-me", proxies=px, verify=E.ca_pem, timeout=20)
    assert r.status_code == 502 and r.headers["x-nilbox-reason"] == "internal-address", r.text
    run_printed(r.json()["allow"])
    r = requests.get("https://other.test/allow-me", proxies=px, verify=E.ca_pem, timeout=20)
    assert r.status_code == 200 and "/allow-me" in r.text, (r.status_code, r.text[:300])
    # The deny rule's own command lifts exactly it: the name is asked about again.
    r = requests.get("https://evil.test/lift", proxies=px, verify=E.ca_pem, timeout=20)
    assert r.headers["x-nilbox-reason"] == "deny-rule", r.headers
    run_printed(r.json()["allow"])
    r = requests.get("https://evil.test/lift", proxies=px, verify=E.ca_pem, timeout=20)
    assert r.headers["x-nilbox-reason"] == "prompt-timeout", r.headers


def test_long_name_phrase_bounded():
    name = ".".join(["x" * 60] * 3) + ".long.test"
    r = requests.get("https://%s/p" % name, proxies={"https": E.px.url}, verify=E.ca_pem,
                     timeout=20)
    assert r.status_code == 403, r.status_code
    check_phrase(r.reason)
    assert r.headers["x-nilbox-reason"] == "prompt-timeout"
    assert r.json()["host"] == name


if __name__ == "__main__":
    run_suite(setup, [test_curl_403_and_502, test_python_requests, test_node_fetch, test_npm,
                      test_pip, test_git, test_printed_commands_allow,
                      test_long_name_phrase_bounded])
