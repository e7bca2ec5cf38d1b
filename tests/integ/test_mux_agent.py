#!/usr/bin/env python3
"""nilbox-agent round trips over nbmux: exec, pty, tcp, ctl, flow control
with 200 streams, and peer restarts. The host side is `muxc`, built on the
same session library as the daemon; the agent runs on the host with
--transport unix:PATH (the host listens, the agent connects).

Env: MUXC, NILBOX_AGENT (set by meson)."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from mux_env import (AGENT, KEY, MUXC, PROCS, TMP,
                     Proc, check, kill_all, passed, write_key)

SOCK = os.path.join(TMP, "chan.sock")
ALLOW = os.path.join(TMP, "allow")


class Agent(Proc):
    def __init__(self, *extra):
        super().__init__("agent-%d" % len(PROCS), [AGENT, "--transport", "unix:" + SOCK,
                                                   "--key-file", KEY, "--ctl-allow", ALLOW + "/",
                                                   *extra],
                         NB_AGENT_ONLY="leak")  # must not reach commands
        # SIGTERM is handled once the start line is logged.
        self.wait_text("nilbox-agent 0.1.0")


def muxc(*args, input=None, timeout=60, sessions=None):
    pre = [MUXC, "--listen", SOCK, "--key-file", KEY]
    if sessions:
        pre += ["--sessions", str(sessions)]
    return subprocess.run(pre + list(args), input=input, capture_output=True, timeout=timeout)


# ---------------------------------------------------------------- exec

def test_exec_exit_code_and_streams():
    r = muxc("exec", "--no-stdin", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    check(r.returncode == 3, r)
    check(r.stdout == b"out\n", r.stdout)
    check(b"err\n" in r.stderr, r.stderr)


def test_exec_stdin_eof():
    data = os.urandom(300000)
    r = muxc("exec", "--", "sh", "-c", "wc -c; echo done", input=data)
    check(r.returncode == 0, r.stderr)
    check(r.stdout.split() == [b"300000", b"done"], r.stdout)


def test_exec_signal_from_child():
    r = muxc("exec", "--no-stdin", "--", "sh", "-c", "kill -TERM $$")
    check(r.returncode == 128 + 15, r)
    check(b"exit signal 15" in r.stderr, r.stderr)


def test_exec_signal_from_host():
    r = muxc("exec", "--no-stdin", "--signal-after", "300:9", "--", "sleep", "30")
    check(r.returncode == 128 + 9, r)


def test_exec_stdin_read():
    # "stdin_read" (the MCP bridge's): the exit notice says how much of stdin the process may
    # have read. The child reads exactly 10 of the 100 bytes (dd, one byte per read) and dies;
    # the other 90 sat in its stdin, or came after its death: never read. (libuv's stdio
    # socketpair would lose them from the count: a socket drops its unread bytes with its
    # reader.) stdin stays open, so no EOF closes it before the exit.
    p = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "exec", "--stdin-read", "--",
                          "sh", "-c", "dd bs=1 count=10 of=/dev/null 2>/dev/null; kill -9 $$"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = b""
    try:
        p.stdin.write(b"x" * 100)
        p.stdin.flush()
        # stdin closes (EOF) only once the exit notice is in.
        while b"muxc: exit" not in err:
            line = p.stderr.readline()
            check(line, err)
            err += line
        p.stdin.close()
        err += p.stderr.read()
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check(p.returncode == 128 + 9, (p.returncode, err))
    check(b"stdin_read 10\n" in err, err)
    # Without the option the notice has no count.
    r = muxc("exec", "--", "sh", "-c", "dd bs=1 count=10 of=/dev/null 2>/dev/null; exit 4",
             input=b"y" * 100)
    check(r.returncode == 4 and b"stdin_read" not in r.stderr, r)


def test_exec_spawn_failure():
    r = muxc("exec", "--no-stdin", "--", "/nonexistent/nilbox-cmd")
    check(r.returncode == 125, r)
    check(b"FAILED" in r.stderr and b"no such file" in r.stderr, r.stderr)


def test_exec_env_and_cwd():
    r = muxc("exec", "--no-stdin", "--env", "NB_FOO=bar baz", "--cwd", TMP, "--",
             "sh", "-c", 'echo "$NB_FOO"; pwd')
    check(r.returncode == 0, r)
    check(r.stdout == b"bar baz\n" + TMP.encode() + b"\n", r.stdout)


def test_exec_login_environment():
    # The command gets a login-like environment of its account, not the
    # agent's own (the agent was started with a marker variable).
    r = muxc("exec", "--no-stdin", "--", "sh", "-c",
             'echo "$HOME|$USER|$LOGNAME|$SHELL|$LANG|${NB_AGENT_ONLY-unset}"; pwd; id -u')
    check(r.returncode == 0, r)
    import pwd
    me = pwd.getpwuid(os.geteuid())
    home = me.pw_dir if os.path.isdir(me.pw_dir) else "/"
    lines = r.stdout.decode().splitlines()
    check(lines[0] == "%s|%s|%s|%s|C.UTF-8|unset" % (me.pw_dir, me.pw_name, me.pw_name,
                                                     me.pw_shell), lines)
    check(lines[1] == os.path.realpath(home) and lines[2] == str(os.geteuid()), lines)
    # clear_env is not reachable from muxc; an explicit --env still wins.
    r = muxc("exec", "--no-stdin", "--env", "LANG=fr_FR.UTF-8", "--", "sh", "-c", 'echo $LANG')
    check(r.stdout == b"fr_FR.UTF-8\n", r.stdout)


def test_exec_as_user():
    if os.geteuid() != 0:
        r = muxc("exec", "--no-stdin", "--user", "root", "--", "true")
        check(r.returncode == 125 and b"not run as root" in r.stderr, r)
        return
    r = muxc("exec", "--no-stdin", "--user", "nobody", "--", "sh", "-c",
             'id -u; id -g; echo "$USER $HOME"')
    check(r.returncode == 0, r)
    import pwd
    nb = pwd.getpwnam("nobody")
    check(r.stdout.decode().split() == [str(nb.pw_uid), str(nb.pw_gid), "nobody", nb.pw_dir],
          r.stdout)
    for bad, why in (("no-such-user-x", b"no account"), ("Root;rm", b"account name"),
                     ("", b"account name")):
        r = muxc("exec", "--no-stdin", "--user", bad, "--", "true")
        check(r.returncode == 125 and why in r.stderr, (bad, r))


def test_exec_bad_args():
    r = muxc("exec", "--cwd", "/nonexistent-dir", "--no-stdin", "--", "true")
    check(r.returncode == 125, r)


def test_exec_large_output_50mib():
    path = os.path.join(TMP, "big")
    with open(path, "wb") as f:
        for _ in range(50):
            f.write(os.urandom(1 << 20))
    want = hashlib.sha256(open(path, "rb").read()).hexdigest()
    r = muxc("exec", "--no-stdin", "--", "cat", path, timeout=120)
    check(r.returncode == 0, r.stderr)
    check(len(r.stdout) == 50 << 20, len(r.stdout))
    check(hashlib.sha256(r.stdout).hexdigest() == want)
    os.unlink(path)


def test_exec_large_input_20mib():
    data = os.urandom(20 << 20)
    r = muxc("exec", "--", "sha256sum", input=data, timeout=120)
    check(r.returncode == 0, r.stderr)
    check(r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), r.stdout)


# ---------------------------------------------------------------- pty

def read_until(stream, needle, timeout=15):
    buf = b""
    end = time.time() + timeout
    os.set_blocking(stream.fileno(), False)
    while needle not in buf and time.time() < end:
        try:
            chunk = stream.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
        else:
            time.sleep(0.02)
    return buf


def test_pty_resize_seen_by_child():
    p = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "pty", "--rows", "24",
                          "--cols", "80", "--resize-on-input", "50x132", "--",
                          "sh", "-c", "stty size; read x; stty size; exit 4"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    PROCS.append(p)
    out = read_until(p.stdout, b"24 80")
    check(b"24 80" in out, out)
    p.stdin.write(b"go\n")  # muxc sends the resize first, then this line
    p.stdin.flush()
    out += read_until(p.stdout, b"50 132")
    p.stdin.close()
    rc = p.wait(timeout=15)
    out += p.stdout.read() or b""
    check(b"50 132" in out, out)
    check(rc == 4, rc)


def test_pty_is_a_terminal():
    r = muxc("pty", "--term", "xterm-nilbox", "--", "sh", "-c",
             'tty; echo "T=$TERM"; test -t 0 && echo isatty', input=b"")
    check(r.returncode == 0, r)
    check(b"/dev/pts/" in r.stdout, r.stdout)
    check(b"T=xterm-nilbox" in r.stdout and b"isatty" in r.stdout, r.stdout)


def test_pty_exit_signal():
    r = muxc("pty", "--", "sh", "-c", "kill -KILL $$", input=b"")
    check(r.returncode == 128 + 9, r)


def test_pty_interactive_shell():
    r = muxc("pty", "--", "/bin/sh", "-i", input=b"echo nb-$((6*7))\nexit 5\n")
    check(r.returncode == 5, r)
    check(b"nb-42" in r.stdout, r.stdout)


# ---------------------------------------------------------------- tcp

def test_tcp_echo_and_refused():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def serve():
        c, _ = srv.accept()
        data = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
        c.sendall(data[::-1])
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    payload = os.urandom(1 << 20)
    r = muxc("tcp", str(port), input=payload)
    check(r.returncode == 0, r.stderr)
    check(r.stdout == payload[::-1], len(r.stdout))
    t.join(5)
    srv.close()
    r = muxc("tcp", str(port))  # nobody listens any more
    check(r.returncode == 125, r)
    check(b"connect" in r.stderr and b"refused" in r.stderr, r.stderr)
    r = muxc("tcp", "0")
    check(r.returncode == 125 and b"BAD_ARGS" in r.stderr, r.stderr)


def test_tcp_small_writes_not_delayed():
    """The agent's leg to the guest port has no Nagle: a client's second
    small write, sent while the server holds back its ACK (it answers only
    once the whole message is there), must not wait for the server's
    delayed ACK (40 ms and more)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    gaps = []

    def serve():
        c, _ = srv.accept()
        # Request/answer rounds until the connection is past TCP's quick-ACK
        # start and in interactive (delayed, piggy-backed ACK) mode.
        for _ in range(40):
            if c.recv(64) != b"ping":
                return
            c.sendall(b"pong")
        for _ in range(3):
            d = c.recv(64)
            t = time.monotonic()
            while d != b"head-tail":
                more = c.recv(64)
                if not more:
                    return
                d += more
            gaps.append(time.monotonic() - t)
            c.sendall(b"done")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    p = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "tcp", str(port)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(40):
            p.stdin.write(b"ping")
            p.stdin.flush()
            check(p.stdout.read(4) == b"pong", "no answer")
        for _ in range(3):
            p.stdin.write(b"head")
            p.stdin.flush()
            time.sleep(0.005)
            p.stdin.write(b"-tail")
            p.stdin.flush()
            check(p.stdout.read(4) == b"done", "no answer")
        p.stdin.close()
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        t.join(5)
        srv.close()
    check(len(gaps) == 3, gaps)
    # Without TCP_NODELAY every round waits for the delayed ACK; with it, only
    # a stalled machine makes all three slow.
    check(min(gaps) < 0.030, ["%.1f ms" % (g * 1000) for g in gaps])


# ---------------------------------------------------------------- ctl

def ctl(obj, data_file=None):
    args = ["ctl", json.dumps(obj)]
    if data_file:
        args += ["--data-file", data_file]
    r = muxc(*args)
    out = r.stdout.strip()
    return r, (json.loads(out) if out else None)


def test_ctl_ping_metrics_hostname():
    r, j = ctl({"call": "ping"})
    check(r.returncode == 0 and j["ok"] and j["version"], r)
    r, j = ctl({"call": "metrics"})
    check(r.returncode == 0 and j["ok"], r)
    check(j["mem"]["total"] > 0 and j["cpu"]["count"] >= 1 and j["uptime"] > 0, j)
    check(j["disk"]["total"] > 0 and len(j["load"]) == 3, j)
    r, j = ctl({"call": "hostname"})
    check(j["hostname"] == socket.gethostname(), j)
    r, j = ctl({"call": "hostname", "set": "evil"})  # only with --vm
    check(r.returncode == 1 and not j["ok"] and "--vm" in j["error"], j)
    r, j = ctl({"call": "poweroff"})
    check(r.returncode == 1 and not j["ok"] and "disabled" in j["error"], j)
    r, j = ctl({"call": "format-disk"})
    check(r.returncode == 125 and b"unknown call" in r.stderr, r.stderr)


def test_ctl_write_file():
    src = os.path.join(TMP, "content")
    with open(src, "wb") as f:
        f.write(b"export NB=1\n" * 1000)
    dest = os.path.join(ALLOW, "sub", "dir", "env.sh")
    r, j = ctl({"call": "write_file", "path": dest, "mode": 0o600, "mkdirs": True}, src)
    check(r.returncode == 0 and j["ok"] and j["bytes"] == 12000, (r, j))
    check(open(dest, "rb").read() == open(src, "rb").read())
    check(os.stat(dest).st_mode & 0o7777 == 0o600, oct(os.stat(dest).st_mode))
    # Replaced atomically; no temporary file left behind.
    with open(src, "wb") as f:
        f.write(b"v2\n")
    r, j = ctl({"call": "write_file", "path": dest, "mode": 0o644}, src)
    check(j["ok"] and open(dest, "rb").read() == b"v2\n", j)
    check(os.listdir(os.path.dirname(dest)) == ["env.sh"], os.listdir(os.path.dirname(dest)))


def test_ctl_write_file_refusals():
    outside = os.path.join(TMP, "outside")
    os.makedirs(outside, exist_ok=True)
    src = os.path.join(TMP, "content")
    for bad in ["/etc/passwd", ALLOW + "/../outside/x", ALLOW + "//x", "relative/path",
                ALLOW + "/"]:
        r, j = ctl({"call": "write_file", "path": bad}, src)
        check(r.returncode == 125 and b"REFUSED" in r.stderr, (bad, r.stderr))
    check(open("/etc/passwd", "rb").read(5) != b"v2\n")
    # A symlink below the prefix must not be followed.
    os.symlink(outside, os.path.join(ALLOW, "link"))
    r, j = ctl({"call": "write_file", "path": ALLOW + "/link/pwned"}, src)
    check(r.returncode == 1 and not j["ok"] and "symlink" in j["error"], j)
    check(not os.path.exists(os.path.join(outside, "pwned")))


# ---------------------------------------------------------------- flow

def test_flow_200_streams_one_never_read(agent):
    before = agent.hwm_kib()
    r = muxc("flow", "200", str(1 << 20), timeout=150)
    check(r.returncode == 0, r.stderr[-2000:])
    line = r.stdout.decode()
    check("streams=200 failed=0" in line, line)
    # The stuck stream holds at most one window at the host.
    stuck = int(line.split("stuck_unconsumed=")[1].split()[0])
    check(stuck <= 256 * 1024, line)
    after = agent.hwm_kib()
    sys.stderr.write("agent VmHWM %d KiB -> %d KiB; %s\n" %
                     (before, after, r.stderr.decode().strip().splitlines()[-3]))
    # 200 x 1 MiB went through; the agent must not have buffered it.
    check(after - before < 64 * 1024, (before, after))


# ---------------------------------------------------------------- transports

def test_serial_transport_over_pty():
    # `serial:` opens a character device, as the agent does with a
    # virtio-serial port. A pty stands in for it; this test relays the pty
    # master to the host's socket, as QEMU's chardev would.
    import pty
    import select
    import tty
    sock2 = os.path.join(TMP, "serial.sock")
    p = subprocess.Popen([MUXC, "--listen", sock2, "--key-file", KEY, "exec", "--no-stdin",
                          "--", "sh", "-c", "echo via-serial; head -c 300000 /dev/zero | wc -c"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    PROCS.append(p)
    master, slave = pty.openpty()
    tty.setraw(slave)  # no echo or line discipline before the agent takes over
    end = time.time() + 10
    while not os.path.exists(sock2) and time.time() < end:
        time.sleep(0.02)
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(sock2)
    stop = threading.Event()

    def relay():
        while not stop.is_set():
            r, _, _ = select.select([master, conn], [], [], 0.1)
            try:
                if master in r:
                    conn.sendall(os.read(master, 65536))
                if conn in r:
                    d = conn.recv(65536)
                    if not d:
                        return
                    os.write(master, d)
            except OSError:
                return

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    log = open(os.path.join(TMP, "agent-serial.log"), "wb")
    a = subprocess.Popen([AGENT, "--transport", "serial:" + os.ttyname(slave), "--key-file", KEY],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    PROCS.append(a)
    try:
        out, err = p.communicate(timeout=30)
    finally:
        a.send_signal(signal.SIGTERM)
        rc = a.wait(timeout=15)
        stop.set()
        t.join(2)
        conn.close()
        os.close(master)
        os.close(slave)
        log.close()
    check(p.returncode == 0, err)
    check(out.split() == [b"via-serial", b"300000"], out)
    check(rc == 0, open(os.path.join(TMP, "agent-serial.log")).read())


# ---------------------------------------------------------------- restarts

def test_host_restart_kills_children_and_reconnects():
    # The host side dies mid-command (SIGKILL): the agent kills the command,
    # reconnects, and the next host session works.
    marker = "%d.125" % (os.getpid() % 1000 + 100)
    p = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "exec", "--no-stdin",
                          "--", "sleep", marker], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    PROCS.append(p)
    end = time.time() + 10
    while time.time() < end and subprocess.run(["pgrep", "-f", "sleep " + marker],
                                               capture_output=True).returncode != 0:
        time.sleep(0.05)
    check(subprocess.run(["pgrep", "-f", "sleep " + marker]).returncode == 0, "not started")
    p.kill()
    p.wait()
    end = time.time() + 10
    while time.time() < end and subprocess.run(["pgrep", "-f", "sleep " + marker],
                                               capture_output=True).returncode == 0:
        time.sleep(0.05)
    check(subprocess.run(["pgrep", "-f", "sleep " + marker],
                         capture_output=True).returncode != 0, "child survived")
    r = muxc("exec", "--no-stdin", "--", "echo", "again")
    check(r.returncode == 0 and r.stdout == b"again\n", r)


def test_agent_restart_host_reconnects():
    # The host keeps listening; the agent is killed in the middle of a
    # command and a new one connects: the host sees the session go down,
    # a fresh handshake follows, and the command runs in the new agent.
    p = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "--sessions", "2", "exec",
                          "--no-stdin", "--", "sh", "-c", "echo pid-$PPID; sleep 1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    PROCS.append(p)
    a1 = Agent()
    out = read_until(p.stdout, b"pid-%d" % a1.p.pid)
    check(b"pid-%d" % a1.p.pid in out, out)
    a1.p.kill()  # no goodbye
    a1.p.wait()
    a1.logf.close()
    a2 = Agent()
    end = time.time() + 30
    while p.poll() is None and time.time() < end:
        out += read_until(p.stdout, b"\n", timeout=0.2)
    err = p.stderr.read()
    a2.stop()
    check(p.returncode == 0, err)
    check(b"pid-%d" % a2.p.pid in out, out)
    check(err.count(b"muxc: session up") == 2, err)
    check(b"the peer closed the connection" in err, err)


def test_exec_held_until_setup_done():
    # --hold-until (the VM image's boot gate): exec waits for the file, ctl
    # does not; a waiting exec whose host goes away is dropped cleanly.
    marker = os.path.join(TMP, "setup-done")
    a = Agent("--hold-until", marker)
    try:
        gone = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "exec", "--no-stdin",
                                 "--", "true"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        PROCS.append(gone)
        time.sleep(1.0)
        check(gone.poll() is None, "exec ran before the setup was done")
        gone.kill()  # the session ends with the stream still waiting
        gone.wait()
        p = subprocess.Popen([MUXC, "--listen", SOCK, "--key-file", KEY, "exec", "--no-stdin",
                              "--", "sh", "-c", "test -e '%s' && echo after-setup" % marker],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        PROCS.append(p)
        time.sleep(1.0)
        check(p.poll() is None, "exec ran before the setup was done")
        # The agent serves one host session at a time: ctl is checked below.
        with open(marker, "w"):
            pass
        out, err = p.communicate(timeout=30)
        check(p.returncode == 0 and out == b"after-setup\n", (p.returncode, out, err))
        r, j = ctl({"call": "ping"})
        check(r.returncode == 0 and j["ok"], r)
    finally:
        text = a.stop()
    check("exec waits for the system setup" in text, text[-2000:])
    check("system setup done" in text, text[-2000:])


def test_ctl_not_held_before_setup_done():
    marker = os.path.join(TMP, "setup-never")
    a = Agent("--hold-until", marker)
    try:
        r, j = ctl({"call": "ping"})
        check(r.returncode == 0 and j["ok"], r)
    finally:
        a.stop()


def main():
    write_key(KEY)
    os.makedirs(ALLOW)
    failed = 0
    agent = Agent()
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_")]  # file order
    try:
        for name, fn in tests:
            if name in ("test_agent_restart_host_reconnects", "test_exec_held_until_setup_done",
                        "test_ctl_not_held_before_setup_done"):
                # This test runs its own agents.
                failed += not passed(name, lambda: (agent.stop(), fn()))
                agent = Agent()
            else:
                failed += not passed(name, (lambda: fn(agent)) if fn.__code__.co_argcount else fn)
        log = agent.stop()
        if failed:
            print(log[-4000:])
    finally:
        kill_all()
    print("%d tests, %d failed" % (len(tests), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
