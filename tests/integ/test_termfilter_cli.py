#!/usr/bin/env python3
"""THREATS.md A20 through the real `nilbox exec` binary.

A fake nilboxd (unix socket: /v1/status and the /v1/vms/NAME/exec WebSocket)
sends guest output holding an OSC 52 clipboard write on stdout and stderr.
With stdout on a pty, the OSC 52 must not reach it and a one-line notice
goes to stderr; with stdout on a pipe, the output stays byte-exact.
Env: NB_TEST_NILBOX.
"""
import base64
import hashlib
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

NILBOX = os.environ.get("NB_TEST_NILBOX", "")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OUT = b"hello \x1b]52;c;ZXZpbA==\x07world\r\n\x1b[1mbold\x1b[0m \xe2\x80\x9cq\xe2\x80\x9d\r\n"
ERR = b"err \x1b]52;c;eA==\x07\n"


def frame(op, payload):
    n = len(payload)
    head = bytes([0x80 | op])
    if n < 126:
        head += bytes([n])
    else:
        head += bytes([126]) + n.to_bytes(2, "big")
    return head + payload


def serve(conn):
    try:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        line = head.split("\r\n")[0]
        if line.startswith("GET /v1/status"):
            body = b'{"version":"fake"}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            return
        key = ""
        for h in head.split("\r\n")[1:]:
            k, _, v = h.partition(":")
            if k.strip().lower() == "sec-websocket-key":
                key = v.strip()
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        # Split the sequences across frames too.
        conn.sendall(frame(2, b"\x00" + OUT[:9]) + frame(2, b"\x00" + OUT[9:]))
        conn.sendall(frame(2, b"\x01" + ERR))
        conn.sendall(frame(1, b'{"exit":0}'))
        conn.sendall(frame(8, b"\x03\xe8"))
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
    finally:
        conn.close()


def run_exec(env, stdout_tty):
    if stdout_tty:
        master, slave = pty.openpty()
        p = subprocess.Popen([NILBOX, "exec", "vm1", "--", "true"], stdin=subprocess.DEVNULL,
                             stdout=slave, stderr=subprocess.PIPE, env=env)
        os.close(slave)
        out = b""
        while True:
            r, _, _ = select.select([master], [], [], 20)
            if not r:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        err = p.stderr.read()
        p.wait(timeout=20)
        return p.returncode, out, err
    p = subprocess.run([NILBOX, "exec", "vm1", "--", "true"], stdin=subprocess.DEVNULL,
                       capture_output=True, env=env, timeout=30)
    return p.returncode, p.stdout, p.stderr


def main():
    if not NILBOX:
        print("NB_TEST_NILBOX not set")
        return 1
    tmp = tempfile.mkdtemp(prefix="nb-termfilter-")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fails = []
    try:
        rt = os.path.join(tmp, "run")
        os.mkdir(rt, 0o700)
        srv.bind(os.path.join(rt, "nilboxd.sock"))
        srv.listen(8)

        def accept_loop():
            while True:
                try:
                    c, _ = srv.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(c,), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        env = dict(os.environ, NILBOX_HOME=os.path.join(tmp, "home"), NILBOX_RUNTIME_DIR=rt)

        code, out, err = run_exec(env, True)
        print("tty:", code, repr(out), repr(err))
        if code != 0:
            fails.append("tty exit %r" % code)
        if b"\x1b]52" in out:
            fails.append("OSC 52 reached the terminal")
        if b"hello world" not in out or b"\x1b[1mbold\x1b[0m" not in out:
            fails.append("normal output or colours lost")
        if "\u201cq\u201d".encode() not in out:
            fails.append("UTF-8 text lost")
        notice = b"nilbox: blocked 1 terminal escape sequence from the guest (clipboard write)\n"
        if notice not in err:
            fails.append("no notice on stderr")
        if ERR not in err:  # stderr is a pipe here: byte-exact
            fails.append("stderr (a pipe) was altered")

        code, out, err = run_exec(env, False)
        print("pipe:", code, repr(out), repr(err))
        if code != 0:
            fails.append("pipe exit %r" % code)
        if out != OUT:
            fails.append("piped stdout is not byte-exact")
        if err != ERR:
            fails.append("piped stderr is not byte-exact (or a notice was printed)")
    finally:
        srv.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for f in fails:
        print("FAIL:", f)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
