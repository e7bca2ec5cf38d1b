#!/usr/bin/env python3
"""THREATS.md A17 (frame abuse) and A18 (unauthenticated peer) against both
honest ends of nbmux:

- host side: `muxc serve` (the daemon's session library, listening like the
  daemon does) attacked by a hostile guest that connects;
- guest side: `nilbox-agent` attacked by a hostile host it connects to.

After every attack the honest side must still be up and serving, must have
told the peer why (GOAWAY with a reason) or hung up, must not have let an
unauthenticated peer do or learn anything, must keep its memory bounded,
and must exit cleanly (no leaks under ASan) at the end.

Env: MUXC, MUX_HOSTILE, NILBOX_AGENT (set by meson)."""
import json
import os
import subprocess
import sys
import time

from mux_env import (AGENT, KEY, MUXC, TMP,
                     Proc, asan_env, check, kill_all, passed, write_key)

HOSTILE = os.environ["MUX_HOSTILE"]


def hostile(scenario, sock, role, listen=False, timeout_ms=4000, key=KEY):
    argv = [HOSTILE, "--listen" if listen else "--connect", sock if listen else "unix:" + sock,
            "--role", role, "--key-file", key, "--scenario", scenario,
            "--timeout-ms", str(timeout_ms)]
    r = subprocess.run(argv, capture_output=True, timeout=60)
    lines = [l for l in r.stdout.decode().splitlines() if l.startswith('{"scenario"')]
    check(lines, "no report from mux_hostile %s: rc %d\n%s\n%s" %
          (scenario, r.returncode, r.stdout.decode(), r.stderr.decode()))
    rep = json.loads(lines[-1])
    rep["rc"] = r.returncode
    return rep


# ------------------------------------------------------------ host side
# A hostile guest connects to the host's channel socket.

HOST_SOCK = os.path.join(TMP, "host.sock")
host = None


def host_expect_goaway(rep, code, text):
    check(rep["closed"], rep)
    check(rep["goaway_code"] == code, rep)
    check(text in rep["goaway_msg"], rep)


def test_A18_host_garbage_before_handshake():
    rep = hostile("garbage", HOST_SOCK, "guest")
    # It learns the version and a nonce (the HELLO) and is told why it is
    # dropped; never an AUTH (a MAC over anything).
    check(rep["frames"].get("HELLO") == 1 and not rep["auth_received"], rep)
    host_expect_goaway(rep, "PROTOCOL", "before authentication")
    check(host.wait_text("garbage or unexpected frame before authentication"))


def test_A18_host_wrong_key():
    bad = os.path.join(TMP, "badkey")
    write_key(bad)
    rep = hostile("wrong-key", HOST_SOCK, "guest", key=bad)
    check(not rep["auth_received"], rep)
    host_expect_goaway(rep, "AUTH", "authentication failed")
    check(set(rep["frames"]) == {"HELLO", "GOAWAY"}, rep)
    check(host.wait_text("the peer does not know the key"))


def test_A18_host_silent_peer_times_out():
    rep = hostile("silent", HOST_SOCK, "guest", timeout_ms=5000)
    host_expect_goaway(rep, "TIMEOUT", "handshake not completed")


def test_A18_host_reflection():
    rep = hostile("reflect", HOST_SOCK, "guest")
    check(not rep["auth_received"], rep)
    host_expect_goaway(rep, "AUTH", "claims role")


def test_A18_host_open_before_auth():
    rep = hostile("open-before-auth", HOST_SOCK, "guest")
    check(not rep["auth_received"] and "OPEN_OK" not in rep["frames"] and
          "OPEN_ERR" not in rep["frames"], rep)
    host_expect_goaway(rep, "PROTOCOL", "not allowed")


def test_A17_host_oversized_length():
    rep = hostile("oversized", HOST_SOCK, "guest")
    host_expect_goaway(rep, "PROTOCOL", "maximum payload")


def test_A17_host_unknown_type():
    rep = hostile("unknown-type", HOST_SOCK, "guest")
    host_expect_goaway(rep, "PROTOCOL", "unknown frame type")


def test_A17_host_stream_id_reuse():
    rep = hostile("reuse", HOST_SOCK, "guest")
    check(rep["frames"].get("OPEN_ERR") == 1, rep)  # NO_SERVICE for the first OPEN
    host_expect_goaway(rep, "PROTOCOL", "stream id reuse")


def test_A17_host_wrong_parity():
    rep = hostile("wrong-parity", HOST_SOCK, "guest")
    host_expect_goaway(rep, "PROTOCOL", "wrong parity")


def test_A17_host_frame_for_unopened_stream():
    rep = hostile("unopened", HOST_SOCK, "guest")
    host_expect_goaway(rep, "PROTOCOL", "never opened")


def test_A17_host_open_flood_100k():
    before = host.hwm_kib()
    rep = hostile("flood", HOST_SOCK, "guest", timeout_ms=8000)
    host_expect_goaway(rep, "FLOOD", "OPEN flood")
    check(rep["frames"].get("OPEN_ERR", 0) < 10000, rep)  # the burst, then cut off
    grew = host.hwm_kib() - before
    check(grew < 32 * 1024, "host grew %d KiB" % grew)


def test_A17_host_ping_flood_never_reading():
    before = host.hwm_kib()
    rep = hostile("ping-flood", HOST_SOCK, "guest", timeout_ms=6000)
    check(rep["closed"], rep)
    check(host.alive(), "host died")
    grew = host.hwm_kib() - before
    check(grew < 32 * 1024, "host grew %d KiB" % grew)
    check(host.wait_text("nothing received from the peer"), host.text()[-2000:])


def test_A17_A18_host_still_serves_honest_peer():
    rep = hostile("legit", HOST_SOCK, "guest")
    check(rep["rc"] == 0 and rep["frames"].get("PONG") == 1 and rep["auth_received"], rep)


# ----------------------------------------------------------- guest side
# The agent connects to a hostile host.

GUEST_SOCK = os.path.join(TMP, "guest.sock")
agent = None


def guest_attack(scenario, timeout_ms=4000, key=KEY):
    rep = hostile(scenario, GUEST_SOCK, "host", listen=True, timeout_ms=timeout_ms, key=key)
    check(agent.alive(), "agent died:\n" + agent.text()[-3000:])
    return rep


def test_A17_agent_garbage_from_host():
    rep = guest_attack("garbage")
    check(rep["closed"] and rep["goaway_code"] == "PROTOCOL", rep)
    check(not rep["auth_received"] and "HELLO" not in rep["frames"], rep)


def test_A18_agent_wrong_key_host():
    bad = os.path.join(TMP, "badkey2")
    write_key(bad)
    rep = guest_attack("wrong-key", key=bad)
    check(rep["closed"] and rep["goaway_code"] == "AUTH", rep)
    check("the peer does not know the key" in rep["goaway_msg"], rep)


def test_A18_agent_open_before_auth():
    rep = guest_attack("open-before-auth")
    check(rep["closed"] and rep["goaway_code"] == "PROTOCOL", rep)
    check("OPEN_OK" not in rep["frames"] and "OPEN_ERR" not in rep["frames"], rep)


def test_A17_agent_oversized_length():
    rep = guest_attack("oversized")
    check(rep["goaway_code"] == "PROTOCOL" and "maximum payload" in rep["goaway_msg"], rep)


def test_A17_agent_unknown_type():
    rep = guest_attack("unknown-type")
    check(rep["goaway_code"] == "PROTOCOL" and "unknown frame type" in rep["goaway_msg"], rep)


def test_A17_agent_stream_id_reuse():
    rep = guest_attack("reuse")
    check(rep["goaway_code"] == "PROTOCOL" and "stream id reuse" in rep["goaway_msg"], rep)


def test_A17_agent_open_flood_100k():
    before = agent.hwm_kib()
    rep = guest_attack("flood", timeout_ms=8000)
    check(rep["goaway_code"] == "FLOOD", rep)
    grew = agent.hwm_kib() - before
    check(grew < 32 * 1024, "agent grew %d KiB" % grew)


def pgrep(pattern):
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_A17_agent_credit_exceeded():
    rep = guest_attack("credit")
    check(rep["goaway_code"] == "FLOW" and "exceeds its credit" in rep["goaway_msg"], rep)
    time.sleep(0.5)
    check(not pgrep("^sleep 31.4159$"), "the stream's command survived the teardown")


def test_A17_agent_window_overflow():
    rep = guest_attack("window-overflow")
    check(rep["goaway_code"] == "FLOW" and "credit above" in rep["goaway_msg"], rep)


def test_A17_agent_never_read_stream():
    before = agent.hwm_kib()
    rep = guest_attack("never-read-stream", timeout_ms=3000)
    # One window and not a byte more, however long `cat /dev/zero` runs.
    data = rep["received"]
    check(256 * 1024 <= data < 256 * 1024 + 64 * 1024, rep)
    grew = agent.hwm_kib() - before
    check(grew < 32 * 1024, "agent grew %d KiB" % grew)
    time.sleep(0.3)
    check(not pgrep("^cat /dev/zero /dev/null$"), "cat survived")


def test_A17_agent_never_read_transport():
    before = agent.hwm_kib()
    guest_attack("never-read-transport", timeout_ms=4000)  # agent idle timeout: 1500 ms
    check(agent.wait_text("nothing received from the peer"), agent.text()[-2000:])
    grew = agent.hwm_kib() - before
    check(grew < 32 * 1024, "agent grew %d KiB" % grew)


def test_A17_A18_agent_still_serves_honest_host():
    r = subprocess.run([MUXC, "--listen", GUEST_SOCK, "--key-file", KEY, "exec", "--no-stdin",
                        "--", "echo", "still here"], capture_output=True, timeout=30,
                       env=asan_env())
    check(r.returncode == 0 and r.stdout == b"still here\n", r)


def main():
    global host, agent
    write_key()
    failed = 0
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_")]
    try:
        host = Proc("host", [MUXC, "--listen", HOST_SOCK, "--key-file", KEY,
                             "--handshake-timeout", "1000", "--idle-timeout", "2000", "serve"])
        check(host.wait_text("listening"), host.text())
        agent = Proc("agent", [AGENT, "--transport", "unix:" + GUEST_SOCK, "--key-file", KEY,
                               "--handshake-timeout", "1500", "--idle-timeout", "1500"])
        check(agent.wait_text("nilbox-agent 0.1.0"), agent.text())
        for name, fn in tests:
            failed += not passed(name, fn)
        for who in (host, agent):
            failed += not passed("clean exit of " + who.log, who.stop)
    finally:
        if failed:
            for name in ("host", "agent"):
                try:
                    print("---- %s log (tail)" % name)
                    print(open(os.path.join(TMP, name + ".log")).read()[-4000:])
                except OSError:
                    pass
        kill_all()
    print("%d tests, %d failed" % (len(tests), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
