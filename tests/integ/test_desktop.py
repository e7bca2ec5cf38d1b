#!/usr/bin/python3
"""nilbox-desktop under Xvfb against a real nilboxd (issue 15): the window
starts and shows the web UI (screenshot saved as an artifact; the daemon's
debug access log shows the page's files and its token-authenticated API
calls), destination prompts raised by a real curl through `nilbox proxy`
arrive as notifications on the session bus (a small
org.freedesktop.Notifications server, desktop_notifyd.py) whose actions
answer them (Allow once: the waiting curl proceeds; Deny: it gets 403), and
a navigation of the page to another origin is refused in the view and
handed to the system browser (a fake one recording the URL; the other
origin's server never sees a request). `nilbox-desktop --quit` stops it.

Skips (exit 77) when nilbox-desktop was not built (no GTK/WebKit/libnotify
development packages) or Xvfb, dbus-daemon, ImageMagick or python3-gi /
python3-dbus are missing."""
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

DESKTOP = os.environ.get("NB_TEST_DESKTOP", "")
HERE = os.path.dirname(os.path.abspath(__file__))


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


if not DESKTOP or not os.access(DESKTOP, os.X_OK):
    skip("nilbox-desktop was not built (needs libgtk-3-dev, libwebkit2gtk-4.1-dev, libnotify-dev)")
for tool in ("Xvfb", "dbus-daemon", "import", "convert", "curl"):
    if not shutil.which(tool):
        skip("%s is not installed (scripts/install-deps.sh)" % tool)
try:
    import dbus  # noqa: F401
    import gi  # noqa: F401
except ImportError:
    skip("python3-dbus / python3-gi are not installed")

from daemon_harness import NILBOXD, Daemon  # noqa: E402
from proxy_env import ProxyEnv, run_suite  # noqa: E402

ARTIFACTS = os.environ.get("NB_DESKTOP_ARTIFACTS") or "/tmp/nilbox-desktop-artifacts"
E = None
S = {}  # the session: processes, paths
PROCS = []


class Foreign(http.server.BaseHTTPRequestHandler):
    """Another origin the page tries to reach; it must never be asked."""
    hits = []

    def do_GET(self):
        Foreign.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<title>elsewhere</title>elsewhere")

    def log_message(self, *a):
        pass


def spawn(args, env, **kw):
    p = subprocess.Popen(args, env=env, **kw)
    PROCS.append(p)
    return p


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s; desktop stderr:\n%s" % (what, desk_err()))


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def desk_err():
    return read(S.get("desk_err", "/nonexistent"))


def notes():
    return [json.loads(l) for l in read(S["notify_log"]).splitlines() if l.strip()]


def setup():
    global E
    os.makedirs(ARTIFACTS, exist_ok=True)
    E = ProxyEnv(prompt_timeout_ms=60000)
    E.d.env["NILBOX_LOG"] = "debug"  # the daemon logs every API request (tcp/unix)
    E.__enter__()
    E.px = E.proxy(vm="a")
    tmp = E.tmp
    env = dict(E.d.env)

    # The other origin.
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    S["foreign"] = srv
    S["foreign_url"] = "http://127.0.0.1:%d/elsewhere" % srv.server_address[1]

    # X server.
    rfd, wfd = os.pipe()
    x = spawn(["Xvfb", "-displayfd", str(wfd), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
              env, pass_fds=(wfd,), stderr=subprocess.DEVNULL)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        disp = f.readline().strip()
    assert disp.isdigit(), "Xvfb did not start"
    env["DISPLAY"] = ":" + disp
    S["display"] = env["DISPLAY"]

    # Session bus and the notification server on it.
    bus = spawn(["dbus-daemon", "--session", "--nofork", "--print-address=1"], env,
                stdout=subprocess.PIPE, text=True)
    env["DBUS_SESSION_BUS_ADDRESS"] = bus.stdout.readline().strip()
    assert env["DBUS_SESSION_BUS_ADDRESS"], "dbus-daemon did not start"
    S["notify_log"] = os.path.join(tmp, "notify.jsonl")
    spawn([sys.executable, os.path.join(HERE, "desktop_notifyd.py"), S["notify_log"],
           "other.test=allow-once,evil.test=deny-once,api.test=allow-always", "1"], env)
    wait_for(lambda: any(n["event"] == "ready" for n in notes()), 15, "the notification server")

    # A fake system browser: the default handler for http(s) records the URL.
    S["browser_log"] = os.path.join(tmp, "browser.log")
    xdg_data, xdg_conf = os.path.join(tmp, "xdgdata"), os.path.join(tmp, "xdgconf")
    os.makedirs(os.path.join(xdg_data, "applications"))
    os.makedirs(xdg_conf)
    script = os.path.join(tmp, "fakebrowser.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nprintf '%%s\\n' \"$1\" >> %s\n" % S["browser_log"])
    os.chmod(script, 0o755)
    with open(os.path.join(xdg_data, "applications", "nbfakebrowser.desktop"), "w") as f:
        f.write("[Desktop Entry]\nType=Application\nName=Fake browser\nExec=%s %%u\n"
                "MimeType=x-scheme-handler/http;x-scheme-handler/https;\n" % script)
    with open(os.path.join(xdg_conf, "mimeapps.list"), "w") as f:
        f.write("[Default Applications]\nx-scheme-handler/http=nbfakebrowser.desktop\n"
                "x-scheme-handler/https=nbfakebrowser.desktop\n")
    env.update({"XDG_DATA_HOME": xdg_data, "XDG_CONFIG_HOME": xdg_conf,
                "GDK_BACKEND": "x11", "NO_AT_BRIDGE": "1", "LIBGL_ALWAYS_SOFTWARE": "1",
                "NILBOX_TEST_MODE": "1", "NILBOX_DESKTOP_TEST_NAVIGATE": S["foreign_url"]})
    # ASan builds: GTK, fontconfig and WebKit keep caches until exit by
    # design; leak reports would be theirs. Memory errors still abort.
    env["ASAN_OPTIONS"] = ":".join(x for x in [env.get("ASAN_OPTIONS"), "detect_leaks=0"] if x)
    for k in ("BROWSER", "DESKTOP_SESSION", "XDG_CURRENT_DESKTOP"):
        env.pop(k, None)
    S["env"] = env
    S["desk_err"] = os.path.join(ARTIFACTS, "desktop.stderr")
    S["desk"] = spawn([DESKTOP], env, stdout=subprocess.DEVNULL, stderr=open(S["desk_err"], "w"))


def test_window_shows_the_ui():
    wait_for(lambda: "page loaded" in desk_err(), 60, "the page to load")
    log = E.d.stderr()
    # The page's files came from the daemon, and the page called the API
    # with the token from the fragment (no 401 on TCP).
    wait_for(lambda: "GET /ui/app.js (tcp)" in E.d.stderr(), 20, "the UI's script request")
    api = wait_for(lambda: [l for l in E.d.stderr().splitlines()
                            if "(tcp)" in l and "/v1/" in l and "/v1/events" not in l
                            and "/v1/prompts" not in l], 30, "an API call from the page")
    log = E.d.stderr()
    assert "-> 401" not in log, log[-3000:]
    print("   page API call:", api[0].strip())
    time.sleep(2)  # let it paint
    shot = os.path.join(ARTIFACTS, "desktop-window.png")
    r = subprocess.run(["import", "-display", S["display"], "-window", "root", shot],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and os.path.getsize(shot) > 2000, r.stderr
    # Not a blank screen: the rendered UI has contrast.
    r = subprocess.run(["convert", shot, "-format", "%[fx:standard_deviation]", "info:"],
                       capture_output=True, text=True, timeout=60)
    assert float(r.stdout.strip() or 0) > 0.02, ("blank screenshot", r.stdout, r.stderr)
    print("   screenshot:", shot)


def curl_bg(url, out):
    out[url] = E.curl(E.px, url, timeout=90)


def test_notification_allow_once_lets_curl_through():
    wait_for(lambda: "listening for prompts" in desk_err(), 30, "the event stream")
    out = {}
    t = threading.Thread(target=curl_bg, args=("https://other.test/hello", out))
    t.start()
    t.join(60)
    assert not t.is_alive(), "curl still waits: the notification's action answered nothing"
    code, body, r = out["https://other.test/hello"]
    assert code == 200, (code, body, r.stderr, desk_err())
    n = [x for x in notes() if x["event"] == "notify" and "other.test" in x["summary"]]
    assert len(n) == 1, notes()
    n = n[0]
    assert n["summary"] == "Allow other.test:443?", n
    assert "VM a wants to reach other.test port 443" in n["body"], n
    assert n["actions"][0::2] == ["allow-once", "allow-always", "deny-once", "default"], n
    assert n["app"] == "nilbox", n
    assert any(x["event"] == "invoke" and x["id"] == n["id"] for x in notes())
    rows = [r for r in E.audit("prompt.answer") if "other.test" in json.dumps(r)]
    assert rows and "allow-once" in json.dumps(rows[-1]) and '"ui"' in json.dumps(rows[-1]), rows
    # allow-once made no rule: nothing for other.test in the rules.
    rules = json.loads(E.cli("--json", "rule", "ls").stdout)
    assert "other.test" not in json.dumps(rules), rules


def test_notification_deny_refuses():
    code, body, r = E.curl(E.px, "https://evil.test/x", timeout=60)
    assert code == 403, (code, body, desk_err())
    assert b"deny-once" in body or b"denied" in body, body
    assert any(x["event"] == "invoke" and x["action"] == "deny-once" for x in notes()), notes()


def test_prompt_answered_elsewhere_closes_notification():
    # Answered from the CLI: the desktop closes its notification.
    out = {}
    t = threading.Thread(target=curl_bg, args=("https://plain.test/", out))
    t.start()
    p = wait_for(lambda: [x for x in json.loads(E.cli("--json", "prompts").stdout)["prompts"]
                          if x["host"] == "plain.test"], 20, "the plain.test prompt")
    nid = wait_for(lambda: [x["id"] for x in notes() if x["event"] == "notify"
                            and "plain.test" in x["summary"]], 20, "its notification")[0]
    E.cli("prompts", "answer", str(p[0]["id"]), "allow-once")
    t.join(60)
    assert out["https://plain.test/"][0] == 200, out
    wait_for(lambda: any(x["event"] == "close" and x["id"] == nid for x in notes()), 20,
             "CloseNotification for the answered prompt")


def test_foreign_navigation_refused():
    url = S["foreign_url"]
    wait_for(lambda: url in read(S["browser_log"]), 30, "the system browser to get " + url)
    assert "refused navigation to " + url in desk_err(), desk_err()
    time.sleep(1)
    assert Foreign.hits == [], ("the view loaded another origin", Foreign.hits)


def test_quit():
    r = subprocess.run([DESKTOP, "--quit"], env=S["env"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert S["desk"].wait(timeout=30) == 0, desk_err()
    err = desk_err()
    for bad in ("AddressSanitizer", "runtime error:", "CRITICAL"):
        assert bad not in err, err
    assert E.d.proc.poll() is None, "the daemon must outlive the window"


def screen_stddev(name):
    shot = os.path.join(ARTIFACTS, name)
    r = subprocess.run(["import", "-display", S["display"], "-window", "root", shot],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["convert", shot, "-format", "%[fx:standard_deviation]", "info:"],
                       capture_output=True, text=True, timeout=60)
    return float(r.stdout.strip() or 0)


def test_hidden_window_still_answers():
    # Started with --hidden (no window at all): a prompt is still answered
    # from its notification; Allow always becomes a rule.
    env = dict(S["env"])
    env.pop("NILBOX_DESKTOP_TEST_NAVIGATE")
    S["desk_err"] = os.path.join(ARTIFACTS, "desktop-hidden.stderr")
    S["desk"] = spawn([DESKTOP, "--hidden"], env, stdout=subprocess.DEVNULL,
                      stderr=open(S["desk_err"], "w"))
    wait_for(lambda: "listening for prompts" in desk_err(), 30, "the event stream")
    assert screen_stddev("desktop-hidden.png") < 0.01, "a window is showing"
    code, body, r = E.curl(E.px, "https://api.test/always", timeout=60)
    assert code == 200, (code, body, desk_err())
    rules = json.loads(E.cli("--json", "rule", "ls").stdout)
    assert "api.test" in json.dumps(rules), rules
    r = subprocess.run([DESKTOP, "--quit"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert S["desk"].wait(timeout=30) == 0, desk_err()


def test_starts_the_daemon():
    # No daemon for this home: nilbox-desktop starts it (host/daemonctl.c,
    # as the CLI does), then shows its UI; it follows a daemon restart; the
    # daemon outlives the window.
    d2 = Daemon()
    S["d2"] = d2
    env = dict(S["env"])
    env.pop("NILBOX_DESKTOP_TEST_NAVIGATE")
    # A key file: the daemon must not reach for a keyring on the test's bus.
    d2.env["NILBOX_KEY_FILE"] = os.path.join(d2.tmp, "master.key")
    env.update({"NILBOX_HOME": d2.home, "XDG_RUNTIME_DIR": d2.xdg, "NILBOXD": NILBOXD,
                "NILBOX_LOG": "debug", "NILBOX_KEY_FILE": d2.env["NILBOX_KEY_FILE"]})
    S["desk_err"] = os.path.join(ARTIFACTS, "desktop-start.stderr")
    S["desk"] = spawn([DESKTOP], env, stdout=subprocess.DEVNULL, stderr=open(S["desk_err"], "w"))
    wait_for(lambda: "started nilboxd (pid" in desk_err(), 60, "the daemon start")
    wait_for(lambda: "page loaded" in desk_err(), 60, "the page to load")
    wait_for(lambda: "GET /ui/app.js (tcp)" in read(os.path.join(d2.home, "logs", "nilboxd.log")),
             20, "the UI's script request in the started daemon's log")
    # The daemon restarts (new port, new token): the window follows.
    wait_for(lambda: "listening for prompts" in desk_err(), 30, "the event stream")
    r = d2.cli("daemon", "stop")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "event stream closed" in desk_err(), 30, "the stream to notice the stop")
    r = d2.cli("daemon", "start")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: desk_err().count("listening for prompts") >= 2, 30, "a reconnection")
    wait_for(lambda: desk_err().count("page loaded") >= 2, 60, "the page to reload")
    r = subprocess.run([DESKTOP, "--quit"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert S["desk"].wait(timeout=30) == 0, desk_err()
    assert d2.lock_holder(), "the started daemon must outlive the window"


def cleanup():
    for p in reversed(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if "d2" in S:
        S["d2"].cleanup()
    if "foreign" in S:
        S["foreign"].shutdown()


if __name__ == "__main__":
    try:
        run_suite(setup, [test_window_shows_the_ui, test_notification_allow_once_lets_curl_through,
                          test_notification_deny_refuses,
                          test_prompt_answered_elsewhere_closes_notification,
                          test_foreign_navigation_refused, test_quit,
                          test_hidden_window_still_answers, test_starts_the_daemon])
    finally:
        cleanup()
