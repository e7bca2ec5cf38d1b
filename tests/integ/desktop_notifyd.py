#!/usr/bin/python3
"""A tiny org.freedesktop.Notifications server for tests/integ/test_desktop.py
(dbus-python on GLib's main loop). Every Notify call is written as one JSON
line to LOG; when a notification offers ACTION, the server invokes it after
DELAY seconds (ActionInvoked, then NotificationClosed reason 2), the way a
user clicking the button would. ACTIONS is "TEXT=ACTION,...": a notification
whose summary contains TEXT gets ACTION.

    desktop_notifyd.py LOG ACTIONS [DELAY]"""
import json
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"


class Server(dbus.service.Object):
    def __init__(self, bus, log, actions, delay):
        super().__init__(bus, PATH)
        self.log, self.actions, self.delay, self.next_id = log, actions, delay, 1

    def record(self, rec):
        with open(self.log, "a") as f:
            f.write(json.dumps(rec) + "\n")

    @dbus.service.method(IFACE, in_signature="", out_signature="as")
    def GetCapabilities(self):
        return ["actions", "body", "body-markup"]

    @dbus.service.method(IFACE, in_signature="", out_signature="ssss")
    def GetServerInformation(self):
        return ("nilbox-test-notifyd", "nilbox", "1", "1.2")

    @dbus.service.method(IFACE, in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):
        nid = int(replaces) or self.next_id
        self.next_id = max(self.next_id, nid) + 1
        acts = [str(a) for a in actions]
        self.record({"event": "notify", "id": nid, "app": str(app), "summary": str(summary),
                     "body": str(body), "actions": acts, "timeout": int(timeout),
                     "urgency": int(hints.get("urgency", -1))})
        for text, action in self.actions:
            if text in summary and action in acts[0::2]:
                GLib.timeout_add(int(self.delay * 1000), self.invoke, nid, action)
                break
        return dbus.UInt32(nid)

    def invoke(self, nid, action):
        self.record({"event": "invoke", "id": nid, "action": action})
        self.ActionInvoked(dbus.UInt32(nid), action)
        self.NotificationClosed(dbus.UInt32(nid), dbus.UInt32(2))
        return False

    @dbus.service.method(IFACE, in_signature="u", out_signature="")
    def CloseNotification(self, nid):
        self.record({"event": "close", "id": int(nid)})
        self.NotificationClosed(nid, dbus.UInt32(3))

    @dbus.service.signal(IFACE, signature="us")
    def ActionInvoked(self, nid, key):
        pass

    @dbus.service.signal(IFACE, signature="uu")
    def NotificationClosed(self, nid, reason):
        pass


def main():
    log = sys.argv[1]
    actions = [tuple(a.split("=", 1)) for a in sys.argv[2].split(",") if "=" in a]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    DBusGMainLoop(set_as_default=True)
    bus = dbus.SessionBus()
    name = dbus.service.BusName(IFACE, bus, do_not_queue=True)
    Server(bus, log, actions, delay)
    with open(log, "a") as f:
        f.write(json.dumps({"event": "ready"}) + "\n")
    GLib.MainLoop().run()
    del name


if __name__ == "__main__":
    main()
