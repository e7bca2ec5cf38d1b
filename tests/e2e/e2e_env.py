"""What every e2e suite needs, once: the images (built and cached under
NB_E2E_CACHE), nilboxd in a temporary NILBOX_HOME that sees them, and a
teardown that always kills the daemon and every QEMU it started.

    class T(VmSuite):
        @classmethod
        def setup(cls):
            need()                              # skips unless the e2e environment is set
            build_image("tiny", TINY, AGENT)    # cached: reruns only check the recipe
            cls.d = cls.daemon({"tiny": TINY})  # daemon_harness.Daemon, started

        def test_01(self):
            self.cli("vm", "create", "t1", "--start")

QEMU runs under TCG unless KVM works (the VM manager's `auto`); suites that
need a particular accelerator set NILBOX_ACCEL or --accel themselves.
Env: NB_TEST_NILBOX, NB_TEST_NILBOXD, NILBOX_AGENT, NB_E2E_CACHE, NB_IMAGES_SRC.
"""
import functools
import glob
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEG = os.path.join(os.path.dirname(HERE), "integ")
sys.path.insert(0, INTEG)
import daemon_harness  # noqa: E402
from daemon_harness import NILBOX, NILBOXD, Daemon  # noqa: E402,F401
import fake_upstream  # noqa: E402

AGENT = os.environ.get("NILBOX_AGENT", "")
CACHE = os.environ.get("NB_E2E_CACHE", "")
IMAGES = os.environ.get("NB_IMAGES_SRC", "")
TINY = os.path.join(CACHE, "tiny-agent")  # the tiny image with the agent, shared by the suites
DAEMON_ENV = ("NB_TEST_NILBOX", "NB_TEST_NILBOXD", "NILBOX_AGENT")
wait_for = functools.partial(daemon_harness.wait_for, every=0.2)  # (each try runs the CLI)


def need(env=DAEMON_ENV, tools=()):
    """Skips the suite unless the e2e environment (and `env`), QEMU and `tools` are there."""
    missing = [n for n in ("NB_E2E_CACHE", "NB_IMAGES_SRC") + env if not os.environ.get(n)]
    missing += [t for t in ("qemu-system-x86_64",) + tools if not shutil.which(t)]
    if missing:
        raise unittest.SkipTest("missing: " + ", ".join(missing))


def build_image(name, out, agent, timeout=900):
    """Builds images/NAME into `out` (agent None: --no-agent); returns the seconds it took.
    A debian image boots with the tiny one's kernel, built next to it."""
    args = ["--out", out, "--cache", os.path.join(CACHE, "debs")]
    if name == "debian":
        args += ["--tiny", os.path.join(CACHE, "tiny-agent" if agent else "tiny")]
    args += ["--agent", agent] if agent else ["--no-agent"]
    t0 = time.time()
    r = subprocess.run(["bash", os.path.join(IMAGES, name, "build.sh")] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout)
    sys.stderr.write(r.stdout[-1500:])
    if r.returncode != 0:
        raise RuntimeError("%s image build failed" % name)
    return time.time() - t0


def qemu_pid(d):
    """The pid in d/qemu.pid, 0 without one."""
    try:
        with open(os.path.join(d, "qemu.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def alive(pid):
    """Whether pid runs (a zombie is gone for our purposes)."""
    try:
        os.kill(pid, 0)
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_qemu(d):
    """SIGKILLs the QEMU whose pid file is in d, if it is still a QEMU, and
    removes the file of its shared data area (folder mappings), which may be
    in /dev/shm rather than in the suite's folders."""
    pid = qemu_pid(d)
    shm = None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        if any(b"qemu" in a for a in argv):
            for a in argv:
                if a.startswith(b"memory-backend-file,id=nbshm,"):
                    # QEMU's escape: a comma inside a value is doubled
                    v = a.split(b"mem-path=", 1)[1].replace(b",,", b"\0").split(b",")[0]
                    shm = v.replace(b"\0", b",").decode()
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass
    if shm:
        try:
            os.unlink(shm)
        except OSError:
            pass


def vm_daemon(images, env=None, args=()):
    """A started nilboxd whose home holds `images` (name -> cached build) and
    which boots VMs with the built agent; `env` adds to its environment (None: unset)."""
    d = Daemon()
    d.env.update({"NILBOX_AGENT": AGENT, "NILBOX_IMAGES_DIR": IMAGES}, **(env or {}))
    d.env = {k: v for k, v in d.env.items() if v is not None}
    os.makedirs(os.path.join(d.home, "images"), exist_ok=True)
    for name, path in images.items():
        os.symlink(path, os.path.join(d.home, "images", name))
    try:
        d.start(*args)
    except BaseException:
        teardown(d)
        raise
    return d


def teardown(*daemons):
    """Kills each daemon, then every QEMU of its home (the daemon first, so
    that no restart policy boots another), then removes its folders."""
    for d in daemons:
        own, d.own_tmp = d.own_tmp, False
        d.cleanup()
        for vm in glob.glob(os.path.join(d.home, "vms", "*")):
            kill_qemu(vm)
        if own:
            shutil.rmtree(d.tmp, ignore_errors=True)


def allow_host(d, host, port, vm):
    """`rule add allow HOST:PORT`; and when HOST resolves to a non-global
    address on this machine (some CI sandboxes map the package hosts to a
    documentation address of their own proxy), also an explicit rule for that
    address, as the gate's refusal says to do (internal addresses are refused
    otherwise: DNS rebinding). Returns the rules' arguments."""
    rules = [(host + ":%d" % port,)]
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(host, port, socket.AF_INET)}
    except OSError:
        addrs = set()
    rules += [(a, "--port", str(port), "--vm", vm) for a in sorted(addrs)
              if not ipaddress.ip_address(a).is_global]
    for r in rules:
        p = d.cli("rule", "add", "allow", *r)
        if p.returncode != 0:
            raise RuntimeError("rule add allow %s: %s" % (" ".join(r), p.stderr))
    if len(rules) > 1:
        sys.stderr.write("(%s resolves to %s here: allowed by address too)\n" %
                         (host, ", ".join(r[0] for r in rules[1:])))
    return rules


def npm_project_to_guest(d, vm, src, name):
    """Copies src/package.json and src/package-lock.json into ~/NAME of the
    VM's default user (for `npm ci` there, which reaches the registry only
    through the gate: the caller adds the rule); returns that folder."""
    home = d.cli("exec", vm, "--", "sh", "-c", "echo $HOME", timeout=120).stdout.strip()
    if not home.startswith("/"):
        raise RuntimeError("no home folder in %s: %r" % (vm, home))
    for f in ("package.json", "package-lock.json"):
        with open(os.path.join(src, f)) as fh:
            r = d.cli("exec", vm, "--", "sh", "-c", 'mkdir -p "$1" && cat > "$1/$2"', "sh",
                      home + "/" + name, f, input=fh.read(), timeout=120)
        if r.returncode != 0:
            raise RuntimeError("cannot copy %s into %s: %s" % (f, vm, r.stderr))
    return home + "/" + name


def check(cond, what):
    """An AssertionError saying `what` unless cond (unlike assert, also under -O)."""
    if not cond:
        raise AssertionError(what)


def pause_kill_resume(client, env, server_pids, kill, notices=None, wait=120):
    """The MCP server dies between two calls of one session, for the 'pause' scenario of
    tests/integ/mcp_node/client.mjs (argv `client`): waits for the client's {"paused": true}
    after its first call, kills (kill(pid)) the one server process that appeared meanwhile
    (server_pids(): the set of server pids in the guest), then lets the client make its second
    call. notices (a function: how many deaths the bridge has noted so far) given: "go" waits
    until the bridge has seen this one (the next call starts a new server); None: "go" at once,
    racing the agent's exit notice (the call may reach the dead server's stdin). Returns the
    client's result line (a dict) and its exit status; an AssertionError when a step fails or
    takes over `wait` s (the bounded wait ends the case rather than hang it)."""
    before = server_pids()
    seen = notices() if notices else 0
    p = subprocess.Popen(client, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        check(select.select([p.stdout], [], [], wait)[0], "the client never paused")
        line = p.stdout.readline()
        check(json.loads(line or "{}") == {"paused": True}, "the client said %r" % line)
        mine = sorted(server_pids() - before)
        check(len(mine) == 1, "server processes of this client: %r" % mine)
        kill(mine[0])
        if notices:
            wait_for(lambda: notices() > seen, wait, "the bridge noting the server's death")
        p.stdin.write("go\n")
        p.stdin.close()  # a Node process with an open stdin pipe never exits
        check(select.select([p.stdout], [], [], wait)[0],
              "no answer from the client %d s after the restart" % wait)
        out = json.loads(p.stdout.readline() or "{}")
        return out, p.wait(wait)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stdout.close()


class VmSuite(unittest.TestCase):
    """Cases in order around what setup() (a classmethod) makes: daemons,
    helper processes, files in cls.tmp. All of it goes after the last case,
    or at once when setup() fails (unittest then skips tearDownClass)."""

    @classmethod
    def setUpClass(cls):
        cls.daemons, cls.procs = [], []
        cls.tmp = tempfile.mkdtemp(prefix="nb-e2e-")
        try:
            cls.setup()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        teardown(*cls.daemons)
        for p in cls.procs:
            p.kill()
            p.wait()
            p.stdout.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def daemon(cls, images, env=None, args=()):
        """vm_daemon(), torn down with the suite."""
        cls.daemons.append(vm_daemon(images, env, args))
        return cls.daemons[-1]

    @classmethod
    def upstream(cls, log, *args):
        """A fake_upstream.py server logging to `log`, stopped with the suite: its port."""
        p, port = fake_upstream.spawn(log, *args)
        cls.procs.append(p)
        return port

    def cli(self, *args, d=None, timeout=120, input=None, ok=True):
        """`nilbox ARGS` with daemon d (self.d); unless it exits 0, the case fails (ok)."""
        d = d or self.d
        r = d.cli(*args, timeout=timeout, input=input)
        if ok and r.returncode != 0:
            self.fail("nilbox %s -> %d\nstdout: %s\nstderr: %s\ndaemon: %s" %
                      (" ".join(args), r.returncode, r.stdout, r.stderr, d.stderr()[-3000:]))
        return r

    def inspect(self, name, d=None):
        return json.loads(self.cli("--json", "vm", "inspect", name, d=d).stdout)
