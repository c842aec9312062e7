"""A stand-in desktop notification server for tests: owns
org.freedesktop.Notifications on the session bus (dbus-python, the GLib main
loop driven through ctypes: no PyGObject needed) and appends each Notify call
to OUTFILE as a JSON line. Usage: python notify_sink.py OUTFILE"""

from __future__ import annotations

import ctypes
import json
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop

IFACE = "org.freedesktop.Notifications"


class Sink(dbus.service.Object):  # type: ignore[misc]
    def __init__(self, bus: dbus.Bus, out: str) -> None:
        super().__init__(bus, "/org/freedesktop/Notifications")
        self.out = out
        self.n = 0

    @dbus.service.method(IFACE, in_signature="susssasa{sv}i", out_signature="u")  # type: ignore[misc]
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):  # type: ignore[no-untyped-def]  # noqa: N802
        self.n += 1
        with open(self.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"app": str(app), "summary": str(summary), "body": str(body)}) + "\n")
        return dbus.UInt32(self.n)

    @dbus.service.method(IFACE, out_signature="as")  # type: ignore[misc]
    def GetCapabilities(self):  # type: ignore[no-untyped-def]  # noqa: N802
        return ["body"]

    @dbus.service.method(IFACE, out_signature="ssss")  # type: ignore[misc]
    def GetServerInformation(self):  # type: ignore[no-untyped-def]  # noqa: N802
        return ("notify-sink", "egresswatch-tests", "1", "1.2")


def main() -> None:
    DBusGMainLoop(set_as_default=True)
    bus = dbus.SessionBus()
    name = dbus.service.BusName(IFACE, bus, do_not_queue=True)
    sink = Sink(bus, sys.argv[1])
    print("ready", flush=True)
    glib = ctypes.CDLL("libglib-2.0.so.0")
    glib.g_main_context_iteration.argtypes = [ctypes.c_void_p, ctypes.c_int]
    while name and sink:
        glib.g_main_context_iteration(None, 1)


if __name__ == "__main__":
    main()
