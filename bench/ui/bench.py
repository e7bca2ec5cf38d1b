#!/usr/bin/env python3
"""bench/ui: the web UI against the issue's numbers (issue 15, Performance).

  bundle  app.js + app.css + index.html as nilboxd serves them (gzip -9, what
          scripts/ui-embed.py embeds); goal: JS <= 400 KiB gzip
  paint   first meaningful paint of the VMs screen with a cold cache: a new
          chromium with an empty profile per run, navigation start to the
          frame after the VM table (one running VM) is in the document;
          goal <= 1 s (median over --runs)
  echo    keystroke echo latency in the same tiny VM (TCG unless KVM):
            ui     keydown in the page -> xterm.js parsed the echo
                   (WebSocket -> nilboxd pty -> nbmux -> guest tty); a
                   real key event (DevTools), released after the echo,
                   with no DevTools traffic in between; legs: keydown ->
                   ws.send, ws.send -> the echo's message event, message
                   -> parsed
            bare   the browser's floor: the same key and WebSocket from a
                   page of the daemon's origin with no React and no
                   xterm.js (a textarea; keydown sends, the echo's message
                   event is the end)
            shell  `nilbox shell VM` under a pty: byte written to the pty ->
                   its echo read back (CLI -> nilboxd -> the same path)
          goal: ui <= 1.2x shell (medians). Rounds alternate ui, bare and shell.
  screen  (--screen) key -> the echo's pixels under Xvfb, no page touched:
          Debian's chromium (--app) and nilbox-desktop (WebKitGTK), the
          latter also with WEBKIT_DISABLE_COMPOSITING_MODE=1, and
          `nilbox shell VM` in Debian's xterm (shell-xterm, the goal's
          like-for-like yardstick: screen_ratio = chromium / shell-xterm)
          (screen.py)

usage: bench/ui/run.sh [BUILD] [--runs N] [--keys N] [--rounds R] [--screen]
"""
import argparse
import gzip
import json
import os
import pty
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))
UI_TESTS = os.path.join(ROOT, "tests", "ui")


def bundle(build):
    """Each file's (bytes, gzip -9 bytes); the JS total; the JS the VMs screen
    loads (app.js and the chunks index.html preloads; the terminal chunk
    comes with the first terminal)."""
    dist = os.path.join(build, "src", "daemon", "ui-dist")
    out = {}
    for name in sorted(os.listdir(dist)):
        with open(os.path.join(dist, name), "rb") as f:
            data = f.read()
        out[name] = (len(data), len(gzip.compress(data, 9, mtime=0)))
    with open(os.path.join(dist, "index.html")) as f:
        index = f.read()
    js = sum(g for n, (_, g) in out.items() if n.endswith(".js"))
    first = sum(g for n, (_, g) in out.items() if n.endswith(".js") and "/ui/" + n in index)
    return out, js, first


def node(env, *args, timeout=900):
    r = subprocess.run(["node", os.path.join(HERE, "ui.mjs"), *args], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        sys.exit("ui.mjs %s: %s" % (args[0], r.stderr[-3000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def read_until(fd, needle, timeout=30):
    buf = b""
    end = time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise TimeoutError("waiting for %r; got %r" % (needle, buf[-200:]))
        r, _, _ = select.select([fd], [], [], left)
        if r:
            buf += os.read(fd, 4096)
    return buf


def drain(fd, quiet=0.3):
    try:
        while select.select([fd], [], [], quiet)[0]:
            if not os.read(fd, 4096):
                return
    except OSError:  # EIO: the shell exited and closed the pty
        return


def shell_echo(nilbox, env, vm, keys):
    """Echo latency of `nilbox shell VM` run on a pty (its terminal)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(nilbox, [nilbox, "shell", vm], env)
    try:
        time.sleep(3)  # the login shell prints its prompt
        drain(fd, 1.0)
        out = []
        for i in range(keys):
            if i % 20 == 0:
                os.write(fd, b"\x15")  # Ctrl-U: an empty line, not measured
                drain(fd)
            t0 = time.perf_counter()
            os.write(fd, b"x")
            read_until(fd, b"x", 30)
            out.append((time.perf_counter() - t0) * 1000)
        os.write(fd, b"\x15exit\r")
        drain(fd, 1.0)
        return out
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)


def load():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build", nargs="?", default=os.path.join(ROOT, "build"))
    ap.add_argument("--runs", type=int, default=5, help="cold-cache page loads (0: none)")
    ap.add_argument("--keys", type=int, default=100, help="keystrokes per echo round")
    ap.add_argument("--rounds", type=int, default=3, help="echo rounds (ui, bare page and shell alternate)")
    ap.add_argument("--screen", action="store_true",
                    help="also key -> pixel in chromium, nilbox-desktop and `nilbox shell` "
                    "in xterm under Xvfb")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    os.environ.update({
        "NB_TEST_NILBOX": os.path.join(build, "src", "cli", "nilbox"),
        "NB_TEST_NILBOXD": os.path.join(build, "src", "daemon", "nilboxd"),
        "NILBOX_AGENT": os.path.join(build, "src", "agent", "nilbox-agent"),
        "NB_E2E_CACHE": os.environ.get("NB_E2E_CACHE", os.path.join(build, "tests", "e2e-cache")),
        "NB_IMAGES_SRC": os.path.join(ROOT, "images"),
        "NB_UI_TESTS": UI_TESTS,
    })
    if not os.path.isdir(os.path.join(UI_TESTS, "node_modules", "playwright-core")):
        sys.exit("run `npm ci` in tests/ui first")
    b, js_gz, first_gz = bundle(build)
    print("bundle (bytes, gzip -9): " + ", ".join(
        "%s %d -> %d (%.1f KiB)" % (n, r, g, g / 1024) for n, (r, g) in b.items()))
    print("JS total %.1f KiB gzip, loaded for the VMs screen %.1f KiB" % (js_gz / 1024,
                                                                       first_gz / 1024))
    sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
    import e2e_env
    e2e_env.build_image("tiny", e2e_env.TINY, e2e_env.AGENT)
    d = e2e_env.vm_daemon({"tiny": e2e_env.TINY})
    try:
        r = subprocess.run([e2e_env.NILBOX, "vm", "create", "bench", "--start"], env=d.env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            sys.exit("vm create: " + r.stderr)
        api = d.api()
        env = dict(d.env, NB_UI_TESTS=UI_TESTS)
        fmp = [float("nan")]
        if a.runs > 0:  # --runs 0: echo only
            pr = node(env, "paint", api["url"], api["token"], str(a.runs))
            fmp = [x["fmp"] for x in pr]
            fcp = [x["fcp"] for x in pr if x["fcp"] is not None]
            dcl = [x["dcl"] for x in pr if x.get("dcl") is not None]
            print("paint (cold cache, %d runs, load %s): first meaningful paint median %.0f ms "
                  "(min %.0f, max %.0f; all %s); first contentful paint median %.0f ms; "
                  "DOMContentLoaded (app compiled and run) median %.0f ms; %d resources from a "
                  "cache" % (len(fmp), load(), statistics.median(fmp), min(fmp), max(fmp),
                             " ".join("%.0f" % x for x in fmp),
                             statistics.median(fcp) if fcp else -1,
                             statistics.median(dcl) if dcl else -1, sum(x["cached"] for x in pr)))
        pages = {"echo": [], "bare": []}  # ui.mjs modes: the UI, the bare page
        sh = []
        for r in range(a.rounds):
            med = {}
            for mode, res in pages.items():
                rr = node(env, mode, api["url"], api["token"], "bench", str(a.keys))
                res += rr
                med[mode] = statistics.median(x["parsed"] for x in rr)
            sh_r = shell_echo(e2e_env.NILBOX, d.env, "bench", a.keys)
            sh += sh_r
            print("  round %d (load %s): %s, shell median %.2f ms"
                  % (r + 1, load(), ", ".join("%s %.2f ms" % kv for kv in med.items()),
                     statistics.median(sh_r)))
        ms = statistics.median(sh)
        for mode, name in (("echo", "ui"), ("bare", "bare page")):
            xs = [x["parsed"] for x in pages[mode]]
            print("echo %s (%d keys): median %.2f ms (p90 %.2f), to the next frame %.2f ms; legs "
                  "(medians): keydown -> ws.send %.2f ms, ws.send -> echo message %.2f ms, "
                  "message -> parsed %.2f ms"
                  % ((name, len(xs), statistics.median(xs), pct(xs, .9),
                      statistics.median(x["frame"] for x in pages[mode]))
                     + tuple(statistics.median(x[k] for x in pages[mode])
                             for k in ("send", "net", "parse"))))
        print("echo nilbox shell (%d keys): median %.2f ms (p90 %.2f)" % (len(sh), ms, pct(sh, .9)))
        mu = statistics.median(x["parsed"] for x in pages["echo"])
        mb = statistics.median(x["parsed"] for x in pages["bare"])
        mf = statistics.median(x["frame"] for x in pages["echo"])
        if a.screen:
            import screen
            desktop = os.path.join(build, "src", "desktop", "nilbox-desktop")
            kinds = (["chromium"] + (["desktop", "desktop-nocomp"] if os.access(desktop, os.X_OK)
                                     else [])
                     + (["shell-xterm"] if shutil.which("xterm") else []))
            scr = {k: [] for k in kinds}
            for r in range(a.rounds):
                med = {}
                for k in kinds:
                    xs = screen.screen_echo(k, desktop, d.env, api, a.keys, e2e_env.NILBOX, "bench")
                    scr[k] += xs
                    med[k] = statistics.median(xs)
                print("  screen round %d (load %s): %s" % (r + 1, load(), ", ".join(
                    "%s %.2f ms" % kv for kv in med.items())))
            for k, xs in scr.items():
                print("echo to the screen, %s (%d keys): median %.2f ms (p90 %.2f)"
                      % (k, len(xs), statistics.median(xs), pct(xs, .9)))
        extra = ""
        if a.screen:
            sm = {k: statistics.median(xs) for k, xs in scr.items()}
            nan = float("nan")
            sh_x = sm.get("shell-xterm", nan)
            extra = (" screen_chromium_ms=%.2f screen_desktop_ms=%.2f screen_shell_ms=%.2f "
                     "screen_ratio=%.2f screen_ratio_desktop=%.2f"
                     % (sm["chromium"], sm.get("desktop", nan), sh_x, sm["chromium"] / sh_x,
                        sm.get("desktop", nan) / sh_x))
        print("RESULT bundle_js_gzip_kib=%.1f fmp_ms=%.0f echo_ui_ms=%.2f echo_bare_ms=%.2f "
              "echo_shell_ms=%.2f ratio=%.2f ratio_bare=%.2f ratio_frame=%.2f%s"
              % (js_gz / 1024, statistics.median(fmp), mu, mb, ms, mu / ms, mb / ms, mf / ms,
                 extra))
    finally:
        e2e_env.teardown(d)


if __name__ == "__main__":
    main()
