"""Exhaustion and local-user attacks on the daemon's listeners (THREATS.md
A26, A28), with the real nilboxd, `nilbox proxy` and raw sockets:

  * the daemon raises its descriptor soft limit to the hard limit;
  * 2000 idle Unix and 2000 idle token-less TCP connections to the API do
    not lock the owner's CLI (or the token holder on the TCP port) out;
    token-less TCP connections are closed after 5 s;
  * 1100 connections through one `nilbox proxy` listener: the ones over its
    budget get 503 + X-Nilbox-Reason (one audit row per burst), the API and
    a second listener keep working, the daemon's descriptors stay bounded;
  * an idle flood of connections without credentials does not lock the
    owner's proxy clients out;
  * without the token, or with a wrong one, the proxy answers 407 and the
    upstream sees nothing; the token is in no log, audit row or API answer.

Tests run as root, so "another uid" is played by connections without the
token (the TCP port's only defence against other users) and by the idle
flood on the 0600 Unix socket (whose budget and eviction are per peer uid).
The daemon starts with a soft limit of 1024 descriptors (and this process's
hard limit); this process keeps its own limits for its sockets."""
import json
import os
import resource
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import status_of  # noqa: E402
from proxy_env import ProxyEnv, run_suite, with_auth  # noqa: E402

SECRET = "sk-dos-REAL-5b2f0c9e71a4d3e8"
E = None
SOFT = 1024
HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def setup():
    global E
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert HARD >= 6000, "this test needs a hard descriptor limit of 6000 or more (%d)" % HARD
    # The daemon inherits the default 1024 soft limit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))
    try:
        E = ProxyEnv().__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    if old[0] < 6000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (HARD, HARD))
    E.secret("OPENAI_API_KEY", SECRET)
    E.bind("OPENAI_API_KEY", "api.test")
    E.rule("allow", "api.test:443")
    E.rule("allow", "plain.test:80")
    E.px = E.proxy(vm="a")
    E.pb = E.proxy(vm="b")


def daemon_pid():
    return E.d.proc.pid


def daemon_fds():
    return len(os.listdir("/proc/%d/fd" % daemon_pid()))


def timed_cli(*args, limit=5.0):
    t0 = time.time()
    r = E.d.cli(*args, timeout=30)
    dt = time.time() - t0
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    assert dt < limit, ("%s took %.1f s" % (" ".join(args), dt))
    print("  %s: %.2f s" % (" ".join(args), dt))
    return r


def api_tcp(path="/v1/status", token=True):
    a = E.d.api()
    hdr = "Authorization: Bearer %s\r\n" % a["token"] if token else ""
    s = socket.create_connection(("127.0.0.1", a["port"]), timeout=10)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sConnection: close\r\n\r\n" %
                   (path, a["port"], hdr)).encode())
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        return out
    finally:
        s.close()


def is_closed(s, wait=0.0):
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except (ConnectionError, OSError):
        return True


def test_fd_limit_raised():
    with open("/proc/%d/limits" % daemon_pid()) as f:
        line = [l for l in f if l.startswith("Max open files")][0]
    soft, hard = [int(x) for x in line.split()[3:5]]
    assert (soft, hard) == (HARD, HARD), line


def test_api_idle_floods_do_not_lock_out_the_owner():
    a = E.d.api()
    unix, tcp = [], []
    try:
        for _ in range(2000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(E.d.sock)
            unix.append(s)
        for _ in range(2000):
            tcp.append(socket.create_connection(("127.0.0.1", a["port"]), timeout=5))
        time.sleep(0.5)
        # The owner's CLI (Unix socket) and the token holder (TCP) still get
        # answers, quickly.
        timed_cli("daemon", "status")
        timed_cli("vm", "ls")
        timed_cli("--json", "rule", "ls")
        assert status_of(api_tcp()) == 200
        # A token-less request is refused but served.
        assert status_of(api_tcp("/v1/vms", token=False)) == 401
        # The daemon holds a bounded number of them, not 4000.
        n = daemon_fds()
        print("  daemon descriptors with 4000 idle API connections open: %d" % n)
        assert n < 800, n
        # Idle token-less TCP connections are closed after about 5 s.
        time.sleep(6)
        live = [s for s in tcp[-200:] if not is_closed(s)]
        assert not live, "%d token-less connections still open after 6 s" % len(live)
        timed_cli("daemon", "status")
    finally:
        for s in unix + tcp:
            s.close()
    time.sleep(0.3)
    timed_cli("daemon", "status")


def read_head(s, timeout=10):
    s.settimeout(timeout)
    out = b""
    try:
        while b"\r\n\r\n" not in out:
            b = s.recv(4096)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionError, OSError):
        pass
    return out


def test_proxy_connection_flood():
    lim = json.loads(E.d.unix("GET", "/v1/proxies")[2])
    per = [p for p in lim["proxies"] if p["vm"] == "a"][0]["max_connections"]
    assert per < 1100, per  # sized from the descriptor limit
    audit0 = len([r for r in E.audit("refusal")
                  if r["detail"].get("reason") == "too-many-connections"])
    socks, heads = [], []
    req = with_auth(E.px, b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
    try:
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
            try:
                s.sendall(req)
            except OSError:
                pass
            socks.append(s)
        for s in socks:
            heads.append(read_head(s, timeout=5))
        ok = [h for h in heads if status_of(h) == 200]
        full = [h for h in heads if status_of(h) == 503]
        assert len(ok) >= per - 5, (len(ok), per)
        assert len(ok) <= per, (len(ok), per)
        assert len(full) >= 1100 - per - 5, (len(full), [h for h in heads if h not in ok][:3])
        assert all(b"X-Nilbox-Reason: too-many-connections" in h for h in full), full[:2]
        # The API and the other listener still work while the flood holds.
        timed_cli("daemon", "status")
        code, body, r = E.curl(E.pb, "https://api.test/other-listener")
        assert code == 200, (code, body, r.stderr)
        n = daemon_fds()
        print("  1100 proxy connections: %d tunnels, %d refused (503), daemon fds %d" %
              (len(ok), len(full), n))
        assert n < 3 * 1100, n
        # One audit row per burst, not one per refusal.
        rows = E.wait_for(lambda: [r for r in E.audit("refusal")
                                   if r["detail"].get("reason") == "too-many-connections"])
        assert 1 <= len(rows) - audit0 <= 3, rows
    finally:
        for s in socks:
            s.close()
    # Once the flood is gone the listener serves again.
    time.sleep(0.5)
    code, _, r = E.curl(E.px, "https://api.test/after-flood")
    assert code == 200, r.stderr


def test_proxy_idle_flood_without_token():
    # Connections that never send credentials: a flood of them holds at most
    # the unauthenticated budget for long; the owner's client gets in.
    socks = []
    try:
        for _ in range(600):
            socks.append(socket.create_connection(("127.0.0.1", E.pb.port), timeout=10))
        time.sleep(1.3)
        code, _, r = E.curl(E.pb, "https://api.test/through-idle-flood")
        assert code == 200, (code, r.stderr)
        time.sleep(5)
        live = [s for s in socks if not is_closed(s)]
        assert not live, "%d credential-less connections still open" % len(live)
    finally:
        for s in socks:
            s.close()


def test_proxy_needs_token():
    before = len(E.received())
    for hdr in (b"", b"Proxy-Authorization: Basic bmlsYm94Ondyb25n\r\n"):
        for req in (b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n%s\r\n",
                    b"GET http://plain.test/dos-noauth HTTP/1.1\r\nHost: plain.test\r\n%s\r\n"):
            s = socket.create_connection(("127.0.0.1", E.px.port), timeout=10)
            s.sendall(req.replace(b"%s", hdr))
            h = read_head(s)
            s.close()
            assert status_of(h) == 407 and b"Proxy-Authenticate: Basic" in h, h
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                        E.px.bare_url, "http://plain.test/dos-curl"], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout == "407", r
    assert len(E.received()) == before
    code, _, r = E.curl(E.px, "http://plain.test/dos-ok")
    assert code == 200, r.stderr


def unix_exchange(path, data):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(data)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        return out
    except (socket.timeout, ConnectionError):
        return out
    finally:
        s.close()


def test_proxy_unix_socket():
    # `--listen unix:PATH`: a 0600 socket; no token needed, the peer must
    # be the daemon's user (SO_PEERCRED); removed when the command ends.
    import select
    import stat
    from daemon_harness import NILBOX
    path = os.path.join(E.tmp, "px.sock")
    p = subprocess.Popen([NILBOX, "proxy", "--listen", "unix:" + path, "--vm", "a",
                          "--upstream-ca", E.up_ca, "--resolve", ",".join(E.resolve_specs())],
                         env=E.d.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([p.stdout], [], [], 15)
        line = p.stdout.readline() if ready else ""
        assert line.startswith("listening on unix:" + path), (line, p.stderr.read())
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        out = unix_exchange(path, b"GET http://plain.test/unix-ok HTTP/1.1\r\n"
                                  b"Host: plain.test\r\nConnection: close\r\n\r\n")
        assert status_of(out) == 200, out
        # Another user, even if the socket's mode were loosened: refused.
        os.chmod(path, 0o666)
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                out = unix_exchange(path, b"GET http://plain.test/unix-other HTTP/1.1\r\n"
                                          b"Host: plain.test\r\nConnection: close\r\n\r\n")
                code = 0 if out == b"" else 1
            except PermissionError:
                code = 2  # cannot change uid here: nothing to check
            finally:
                os._exit(code)
        _, st = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(st) in (0, 2), os.WEXITSTATUS(st)
        print("  another uid on the Unix proxy socket: %s" %
              ("refused" if os.WEXITSTATUS(st) == 0 else "not checked (cannot change uid)"))
        if os.WEXITSTATUS(st) == 0:
            assert not [r for r in E.received() if r["target"] == "/unix-other"]
        lst = json.loads(E.d.unix("GET", "/v1/proxies")[2])["proxies"]
        assert [x for x in lst if x["listen"] == "unix:" + path and x["auth"]], lst
    finally:
        p.stdin.close()
        p.wait(timeout=10)
    deadline = time.time() + 5
    while os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path), "the socket outlived `nilbox proxy`"


def test_tokens_stay_private():
    tokens = [E.px.token, E.pb.token]
    for path, data in E.all_state_bytes():
        for t in tokens:
            assert t.encode() not in data, ("proxy token in", path)
    answers = [E.d.unix("GET", p)[2] for p in ("/v1/proxies", "/v1/status",
                                                "/v1/events?since=0")]
    answers.append(json.dumps(E.audit()).encode())
    for a in answers:
        for t in tokens:
            assert t.encode() not in a


def test_daemon_exits_cleanly():
    E.stop_clean()


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def low_fd_daemon_flood(limit, cli_during):
    """A daemon whose hard descriptor limit is `limit`, flooded with 300 Unix
    and 300 TCP connections: it must not spin, crash or stop answering once
    the flood is gone; with `cli_during`, its budgets must also keep the
    owner's CLI served during the flood."""
    import daemon_harness
    from daemon_harness import Daemon
    d = Daemon()
    wrapper = os.path.join(d.tmp, "nilboxd-lowfd")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nulimit -Sn %d && ulimit -Hn %d && exec %s \"$@\"\n" %
                (limit, limit, daemon_harness.NILBOXD))
    os.chmod(wrapper, 0o755)
    saved = daemon_harness.NILBOXD
    daemon_harness.NILBOXD = wrapper
    socks = []
    try:
        d.start()
        pid = d.proc.pid
        with open("/proc/%d/limits" % pid) as f:
            line = [l for l in f if l.startswith("Max open files")][0]
            assert line.split()[3] == str(limit), line
        port = d.api()["port"]
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(d.sock)
            socks.append(s)
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        c0 = cpu_seconds(pid)
        time.sleep(3)
        spent = cpu_seconds(pid) - c0
        nfd = len(os.listdir("/proc/%d/fd" % pid))
        print("  limit %d: daemon CPU over 3 s with 600 connections: %.2f s, %d descriptors" %
              (limit, spent, nfd))
        assert spent < 1.0, spent
        assert nfd <= limit
        if cli_during:
            r = d.cli("daemon", "status", timeout=30)
            assert r.returncode == 0, (r.stdout, r.stderr, d.stderr()[-2000:])
        for s in socks:
            s.close()
        socks = []
        time.sleep(0.5)
        r = d.cli("daemon", "status", timeout=30)
        assert r.returncode == 0, (r.stderr, d.stderr()[-2000:])
        assert d.proc.poll() is None
        assert d.terminate(timeout=20) == 0, d.stderr()[-2000:]
    finally:
        daemon_harness.NILBOXD = saved
        for s in socks:
            s.close()
        d.cleanup()


def test_small_fd_limit_budgets_hold():
    # 40 descriptors: the API's budgets (an eighth of the limit per
    # listener, at least 16) keep the daemon below it; the CLI is served.
    low_fd_daemon_flood(40, cli_during=True)


def test_emfile_does_not_spin_or_crash():
    # 26 descriptors: below what the budgets assume, so accepts fail with
    # EMFILE; the loop must not spin and the daemon recovers.
    low_fd_daemon_flood(26, cli_during=False)


if __name__ == "__main__":
    # A daemon that stops accepting blocks Unix connect(): fail with a
    # traceback well before meson's timeout instead of hanging.
    import faulthandler
    faulthandler.dump_traceback_later(170, exit=True)
    run_suite(setup, [test_fd_limit_raised, test_api_idle_floods_do_not_lock_out_the_owner,
                      test_proxy_connection_flood, test_proxy_idle_flood_without_token,
                      test_proxy_needs_token, test_proxy_unix_socket, test_tokens_stay_private,
                      test_daemon_exits_cleanly, test_small_fd_limit_budgets_hold,
                      test_emfile_does_not_spin_or_crash])
