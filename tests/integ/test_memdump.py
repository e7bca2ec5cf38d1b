#!/usr/bin/python3
"""Secrets in memory images (issue 16): after a real value went the whole
way (`nilbox secret set` -> API (a raw body; a binary value too) -> sealed
store -> unseal at injection ->
TLS to the upstream -> the upstream echoes it -> redaction), a memory
image of the running nilboxd holds no copy of it outside the locked,
MADV_DONTDUMP regions that libsodium allocates (sodium_malloc); and the
daemon is not dumpable with RLIMIT_CORE 0.

Reads the image as root through /proc/PID/maps + /proc/PID/mem (what a
core dump or a same-uid debugger would copy). Skipped when not root."""
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_harness import NILBOX, run_tests  # noqa: E402
from proxy_env import ProxyEnv  # noqa: E402


def regions(pid):
    """(start, end, perms, locked_or_dontdump, name) of every mapping."""
    out = []
    cur = None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$", line)
            if m:
                cur = {"start": int(m.group(1), 16), "end": int(m.group(2), 16),
                       "perms": m.group(3), "name": m.group(4), "locked": 0, "dd": False,
                       "rss": 0}
                out.append(cur)
            elif line.startswith("Rss:"):
                cur["rss"] = int(line.split()[1])
            elif line.startswith("Locked:"):
                cur["locked"] = int(line.split()[1])
            elif line.startswith("VmFlags:"):
                cur["dd"] = "dd" in line.split()[1:]
    return out


def find_copies(pid, needles):
    """Where any of `needles` occurs in readable memory outside the locked
    / don't-dump regions, and how many hits were inside them."""
    outside, inside = [], 0
    with open("/proc/%d/mem" % pid, "rb", 0) as mem:
        for r in regions(pid):
            if "r" not in r["perms"] or r["name"] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            # Nothing resident, nothing to find; and a sanitizer build's
            # terabyte shadow mappings are never read whole.
            if r["rss"] == 0 or r["end"] - r["start"] > (8 << 30):
                continue
            try:
                mem.seek(r["start"])
                data = mem.read(r["end"] - r["start"])
            except (OSError, ValueError, OverflowError):
                continue
            for n in needles:
                i = data.find(n)
                while i >= 0:
                    if r["dd"] or r["locked"] > 0:
                        inside += 1
                    else:
                        ctx = data[max(0, i - int(os.environ.get("NB_MEMDUMP_CTX", "48"))):i + len(n) + 16]
                        outside.append((hex(r["start"] + i), r["name"] or "[anon]", n, ctx))
                    i = data.find(n, i + 1)
    return outside, inside


def dumpable(e):
    """PR_GET_DUMPABLE inside the daemon, as its status reports it (gdb's
    inferior calls, the other way in, fail on some kernels: "Couldn't write
    extended state status")."""
    code, _, body = e.d.unix("GET", "/v1/status")
    assert code == 200, (code, body)
    st = json.loads(body)
    assert isinstance(st.get("dumpable"), bool), st
    return st["dumpable"]


def test_no_secret_copies_in_memory():
    if os.geteuid() != 0:
        print("   skipped: needs root to read /proc/PID/mem")
        return
    value = "sk-memdump-" + secrets.token_hex(20)
    env = ProxyEnv()
    # meson sets MALLOC_PERTURB_, which makes glibc overwrite freed memory
    # and would hide a buffer that was freed without being wiped.
    env.d.env.pop("MALLOC_PERTURB_", None)
    with env as e:
        pid = e.d.proc.pid
        # Limits: not dumpable, no core files.
        with open("/proc/%d/limits" % pid) as f:
            lim = [l for l in f if l.startswith("Max core file size")]
        assert lim and lim[0].split()[4:6] == ["0", "0"], lim
        assert dumpable(e) is False, "nilboxd is dumpable"

        e.secret("OPENAI_API_KEY", value)
        e.bind("OPENAI_API_KEY", "api.test")
        e.rule("allow", "api.test:443")
        px = e.proxy()
        for i in range(3):
            # Injected, then echoed back by the upstream (body and header),
            # redacted by the proxy on the way back.
            code, body, r = e.curl(px, "https://api.test/echo?i=%d" % i,
                                   "-H", "Authorization: Bearer OPENAI_API_KEY",
                                   "-H", "Content-Type: application/json",
                                   "--data", '{"q": "OPENAI_API_KEY"}')
            assert code == 200, r
            assert value.encode() not in body
            code, body, r = e.curl(px, "https://api.test/echo-header?i=%d" % i,
                                   "-H", "Authorization: Bearer OPENAI_API_KEY", "-D", "-")
            assert code == 200 and value.encode() not in r.stdout, r
        # Cleartext too (a binding that allows it): the raw socket path.
        plain = "pk-memdump-" + secrets.token_hex(20)
        e.secret("PLAIN_KEY", plain)
        e.bind("PLAIN_KEY", "plain.test", "--header", "x-token: {secret}", "--allow-cleartext")
        e.rule("allow", "plain.test:80")
        for i in range(2):
            code, body, r = e.curl(px, "http://plain.test/echo?p=%d" % i,
                                   "-H", "x-token: PLAIN_KEY")
            assert code == 200 and plain.encode() not in body, r
        assert [x for x in e.received() if plain in str(x)], "no cleartext injection"
        seen = [x for x in e.received() if value in str(x)]
        assert seen, "the upstream never saw the real value: the session did not inject"
        # A binary value (NUL, 0xff, CR/LF) set with `nilbox secret set`
        # travels as a raw body and is injected byte for byte (Basic
        # placement: base64 of "user:value").
        binval = b"\x00bin\xff\r\n" + secrets.token_bytes(20) + b"\n\x00\xff-end"
        r = subprocess.run([NILBOX, "secret", "set", "BIN_KEY"], env=e.d.env, input=binval,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r
        e.bind("BIN_KEY", "other.test", "--basic", "u")
        e.rule("allow", "other.test:443")
        guest = base64.b64encode(b"u:BIN_KEY").decode()
        code, body, r = e.curl(px, "https://other.test/echo?bin=1",
                               "-H", "Authorization: Basic " + guest)
        assert code == 200, r
        sent = [v for x in e.received() if "bin=1" in x["target"]
                for k, v in x["headers"] if k.lower() == "authorization"]
        assert sent and sent[0].startswith("Basic "), sent
        assert base64.b64decode(sent[0][6:]) == b"u:" + binval, sent
        # A second value set and replaced: the old one must not linger either.
        e.secret("OTHER_KEY", value[::-1])
        e.secret("OTHER_KEY", "replaced-" + secrets.token_hex(8))
        # Last, a large binary value: nothing after it reuses its buffers,
        # so a request buffer left unwiped would still hold it.
        last = b"\xff\x00last" + secrets.token_bytes(3000) + b"\x00\xff"
        r = subprocess.run([NILBOX, "secret", "set", "LAST_KEY"], env=e.d.env, input=last,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r
        time.sleep(0.5)
        needles = [last, value.encode(), value[::-1].encode(), value.encode("utf-16-le"),
                   plain.encode(), binval, base64.b64encode(b"u:" + binval)]
        # Their second halves too: a freed heap chunk's first 16 bytes are
        # overwritten by the allocator, which would hide a copy at its start.
        needles += [n[len(n) // 2:] for n in needles]
        # The scanner itself works: this test process holds the value.
        mine, _ = find_copies(os.getpid(), [value.encode()])
        assert mine, "the memory scanner finds nothing even where the value is"
        outside, inside = find_copies(pid, needles)
        for addr, name, n, ctx in outside[:20]:
            print("   copy at %s in %s: %r" % (addr, name, ctx[:120]))
        assert not outside, "%d copies of the value outside locked memory" % len(outside)
        print("   no copy outside locked memory (%d inside locked/dontdump regions)" % inside)
        e.stop_clean()


if __name__ == "__main__":
    run_tests([test_no_secret_copies_in_memory])
