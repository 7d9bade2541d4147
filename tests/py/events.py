#!/usr/bin/env python3
"""Print a device's events as the unmodified Python agent tools receive them.

    events.py DEVICE_ID [--selector SEL]... [--heartbeat] [--duration S] [--discover-timeout S]

Connects with ``device_connect_agent_tools.connect()``, subscribes with ``subscribe(SEL)`` for
each SEL (default ``event(container_state_changed)``; ``device(DEVICE_ID).event(*)`` works too),
and with ``--heartbeat`` to the device's heartbeat subject as well, and prints
``{"subscribed": true}``. Then it makes sure the subscriptions are in place on the server: it
waits until DEVICE_ID is discovered and calls its ``get_status`` (the server handles a
connection's messages in order, so once that reply is back the subscription is live). Then it
prints ``{"ready": true}`` and, until killed or for ``--duration`` seconds, one JSON line per
message received: as the agent tools return it (``method``, ``params``, ``_subject``, ...; a
heartbeat has ``device_id``, ``ts`` and ``_subject``). Messages that came before ``ready`` follow it.

Meanwhile it answers requests on stdin as serve.py does (one JSON line each, the reply carrying
the request's ``id``), so one process can both call the device and hear what follows.

The backend comes from the environment, as for call.py:

    MESSAGING_BACKEND=nats NATS_URL=nats://127.0.0.1:P DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT=t

Exits 1 (with the reason on stderr) if it cannot connect, subscribe or reach the device.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from common import find_device, run
from serve import answer

_out = threading.Lock()


def emit(msg: dict) -> None:
    """One JSON line, whole: replies and events come from two threads."""
    line = json.dumps(msg, default=str) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


def serve_stdin(dc, conn, device_id: str) -> None:
    for line in sys.stdin:
        req = json.loads(line)
        emit({"id": req["id"], **answer(dc, conn, device_id, req, 30.0)})


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="events.py")
    ap.add_argument("device_id")
    ap.add_argument("--selector", action="append")
    ap.add_argument("--heartbeat", action="store_true")
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--discover-timeout", type=float, default=20.0)
    args = ap.parse_args(argv)

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection
    from device_connect_agent_tools.tools import Subscription

    try:
        dc.connect()
    except Exception as e:  # noqa: BLE001
        print(f"events.py: connect() failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    conn = get_connection()
    selectors = args.selector or ["event(container_state_changed)"]
    subs = [dc.subscribe(sel.replace("DEVICE_ID", args.device_id)) for sel in selectors]
    if args.heartbeat:
        subject = f"device-connect.{conn.zone}.{args.device_id}.heartbeat"
        subs.append(Subscription(conn, inbox_names=[conn.subscribe_buffered(subject)]))
    emit({"subscribed": True})

    try:
        find_device(dc, conn, args.device_id, args.discover_timeout)
    except LookupError as e:
        print(f"events.py: {e}", file=sys.stderr)
        return 1
    # A registry lists a device that is still reconnecting (NATS then has no responders): retry.
    deadline = time.monotonic() + args.discover_timeout
    while not (res := dc.invoke(f"device({args.device_id}).function(get_status)", {})).get("success"):
        if time.monotonic() >= deadline:
            print(f"events.py: get_status failed: {res}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    emit({"ready": True})
    threading.Thread(target=serve_stdin, args=(dc, conn, args.device_id), daemon=True).start()

    # read() drains often: the agent tools' buffer keeps only the newest 500 of 1000.
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        for sub in subs:
            for msg in sub.read():
                emit(msg)
        time.sleep(0.01)
    return 0


if __name__ == "__main__":
    run(main)
