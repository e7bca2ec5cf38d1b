"""bench/ui screen phase (bench.py --screen): keystroke echo from a key
injected into an X server to the echo's pixels on its screen, for the two
windows issue 15 has: Debian's chromium (--app, the web UI) and
nilbox-desktop (WebKitGTK, the same UI), and for the goal's yardstick,
`nilbox shell VM` in Debian's xterm (the like-for-like "shell" figure:
xterm's own key handling, pty, CLI, and its drawing of the echo are in it as
the browser's are in the UI's). No page is touched: the key is
an XTest event and the end is the first change of the screen rows where the
echo lands, read from Xvfb's own framebuffer (-fbdir, an XWD file mapped
into this process), polled every 0.3 ms. It measures more than the page's
"parsed" (bench.py echo): layout, paint and the window's compositing too.

Each run: Xvfb, a session bus, the window on the scratch daemon's UI; a click
on the VM row's Terminal button (found on the screen by its colour) (xterm:
`nilbox shell VM` started in it, the pointer on its window for the focus), a first
key to find the rows that change, then one key at a time as in bench.py (a
Ctrl-U every 20 keys, not measured). Everything started is stopped after."""
import ctypes
import mmap
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time

ACCENT = bytes((0xad, 0x5c, 0x0b))  # the UI's button colour (app.css --accent), as B, G, R


class Screen:
    def __init__(self, fbdir, display):
        self.f = open(os.path.join(fbdir, "Xvfb_screen0"), "rb")
        self.mm = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        word = lambda i: struct.unpack(">I", self.mm[4 * i:4 * i + 4])[0]  # XWD header
        self.width, self.height, self.bpl = word(4), word(5), word(12)
        self.off = word(0) + word(19) * 12
        self.x = ctypes.CDLL("libX11.so.6")
        self.t = ctypes.CDLL("libXtst.so.6")
        self.x.XOpenDisplay.restype = ctypes.c_void_p
        self.x.XFlush.argtypes = [ctypes.c_void_p]
        self.x.XStringToKeysym.restype = ctypes.c_ulong
        self.x.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        self.t.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                             ctypes.c_ulong]
        self.t.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                                ctypes.c_int, ctypes.c_ulong]
        self.t.XTestFakeButtonEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                                ctypes.c_ulong]
        self.x.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self.dpy = self.x.XOpenDisplay(display.encode())
        if not self.dpy:
            raise RuntimeError("cannot open X display " + display)

    def close(self):
        self.x.XCloseDisplay(self.dpy)
        self.mm.close()
        self.f.close()

    def row(self, y):
        return self.mm[self.off + y * self.bpl:self.off + (y + 1) * self.bpl]

    def key(self, name, down):
        code = self.x.XKeysymToKeycode(self.dpy, self.x.XStringToKeysym(name.encode()))
        self.t.XTestFakeKeyEvent(self.dpy, code, 1 if down else 0, 0)
        self.x.XFlush(self.dpy)

    def tap(self, name):
        self.key(name, True)
        self.key(name, False)

    def ctrl_u(self):
        self.key("Control_L", True)
        self.tap("u")
        self.key("Control_L", False)

    def click(self, x, y):
        self.t.XTestFakeMotionEvent(self.dpy, -1, x, y, 0)
        self.x.XFlush(self.dpy)
        time.sleep(0.2)
        for down in (1, 0):
            self.t.XTestFakeButtonEvent(self.dpy, 1, down, 0)
            self.x.XFlush(self.dpy)
            time.sleep(0.05)
        self.t.XTestFakeMotionEvent(self.dpy, -1, self.width - 1, self.height - 1, 0)  # off the page
        self.x.XFlush(self.dpy)

    def terminal_button(self):
        """The VM row's third button (Stop, Restart, Terminal, Logs): the first
        screen row with four runs of the accent colour is the buttons' top edge."""
        for y in range(self.height):
            r = self.row(y)
            runs, x = [], 0
            while True:
                x = r.find(ACCENT, x)
                if x < 0:
                    break
                if x % 4:
                    x += 1
                    continue
                e = x
                while r[e:e + 3] == ACCENT:
                    e += 4
                if e - x >= 80:
                    runs.append((x // 4 + (e - x) // 8))
                x = e
            if len(runs) >= 4:
                return runs[2], y + 8
        return None


def spawn(procs, argv, env, **kw):
    p = subprocess.Popen(argv, env=env, start_new_session=True, **kw)
    procs.append(p)
    return p


def stop(procs):
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in reversed(procs):
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


# xterm's settings, plain: DejaVu Sans Mono 11 through Xft, no blinking
# cursor (+bc), 150x45 cells at the top left (about chromium's 1200x800 window),
# no utmp entry; otherwise Debian's defaults (jump scroll, no scrollbar, no
# window manager: the focus follows the pointer).
XTERM = ["xterm", "-fa", "DejaVu Sans Mono", "-fs", "11", "+bc", "-geometry", "150x45+0+0",
         "-ut", "-title", "nilbox shell"]


def screen_echo(kind, desktop, daemon_env, api, keys, nilbox=None, vm="bench"):
    """Key-to-pixel echo times (ms) in `kind`: "chromium", "desktop",
    "desktop-nocomp" (nilbox-desktop with WEBKIT_DISABLE_COMPOSITING_MODE=1),
    or "shell-xterm" (`nilbox shell vm` in xterm, XTERM)."""
    procs = []
    tmp = tempfile.mkdtemp(prefix="nb-bench-screen-")
    scr = None
    try:
        env = dict(daemon_env)
        rfd, wfd = os.pipe()
        spawn(procs, ["Xvfb", "-displayfd", str(wfd), "-screen", "0", "1280x900x24",
                      "-nolisten", "tcp", "-fbdir", tmp], env, pass_fds=(wfd,),
              stderr=subprocess.DEVNULL)
        os.close(wfd)
        with os.fdopen(rfd) as f:
            env["DISPLAY"] = ":" + f.readline().strip()
        bus = spawn(procs, ["dbus-daemon", "--session", "--nofork", "--print-address=1"], env,
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        env["DBUS_SESSION_BUS_ADDRESS"] = bus.stdout.readline().strip()
        env.update({"GDK_BACKEND": "x11", "NO_AT_BRIDGE": "1", "LIBGL_ALWAYS_SOFTWARE": "1"})
        err = open(os.path.join(tmp, "window.stderr"), "w")
        if kind == "chromium":
            spawn(procs, [os.environ.get("NB_CHROMIUM", "/usr/bin/chromium"), "--no-sandbox",
                          "--test-type", "--disable-gpu", "--no-first-run",
                          "--password-store=basic", "--user-data-dir=" + os.path.join(tmp, "p"),
                          "--window-position=0,0", "--window-size=1200,800",
                          "--app=%s#token=%s" % (api["url"], api["token"])],
                  env, stdout=subprocess.DEVNULL, stderr=err)
        elif kind == "shell-xterm":
            spawn(procs, XTERM + ["-e", nilbox, "shell", vm], env, stdout=subprocess.DEVNULL,
                  stderr=err)
        else:
            if kind == "desktop-nocomp":
                env["WEBKIT_DISABLE_COMPOSITING_MODE"] = "1"
            spawn(procs, [desktop], env, stdout=subprocess.DEVNULL, stderr=err)
        scr = Screen(tmp, env["DISPLAY"])
        if kind == "shell-xterm":
            time.sleep(2)  # the window maps
            # The pointer on the window: with no window manager the focus is PointerRoot.
            scr.t.XTestFakeMotionEvent(scr.dpy, -1, 300, 200, 0)
            scr.x.XFlush(scr.dpy)
            time.sleep(5)  # the shell connects, the guest prints its prompt
        end = time.monotonic() + 60
        while kind != "shell-xterm" and scr.terminal_button() is None:
            if time.monotonic() > end:
                raise RuntimeError("%s: no VM row with a Terminal button on the screen" % kind)
            time.sleep(0.5)
        if kind != "shell-xterm":
            time.sleep(2)  # settled (fonts, the event stream): found again
            scr.click(*scr.terminal_button())
            time.sleep(5)  # the tab connects, the guest prints its prompt
        # The rows the echo changes: one key, the whole screen compared.
        scr.ctrl_u()
        time.sleep(0.5)
        before = [scr.row(y) for y in range(scr.height)]
        scr.tap("x")
        time.sleep(0.5)
        rows = [y for y in range(scr.height) if scr.row(y) != before[y]]
        if not rows:
            raise RuntimeError("%s: no echo on the screen (did the terminal open?)" % kind)
        a = scr.off + rows[0] * scr.bpl
        b = scr.off + min(rows[0] + 40, scr.height) * scr.bpl
        out = []
        for i in range(keys):
            if i % 20 == 0:
                scr.ctrl_u()
                time.sleep(0.3)
            ref = scr.mm[a:b]
            t0 = time.perf_counter()
            scr.key("x", True)
            while scr.mm[a:b] == ref:
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError("%s: no echo within 10 s" % kind)
                time.sleep(0.0003)  # a busy loop would take a core from the window and QEMU
            out.append((time.perf_counter() - t0) * 1000)
            scr.key("x", False)
            time.sleep(0.15)
        scr.ctrl_u()
        return out
    finally:
        if scr:
            scr.close()
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
