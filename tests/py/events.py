#!/usr/bin/env python3
"""Print a device's events as the unmodified Python agent tools receive them.

    events.py DEVICE_ID [--selector SEL] [--duration S] [--discover-timeout S]

Connects with ``device_connect_agent_tools.connect()``, subscribes with ``subscribe(SEL)``
(default ``event(container_state_changed)``; ``device(DEVICE_ID).event(*)`` works too), then makes
sure the subscription is in place on the server: it waits until DEVICE_ID is discovered and
calls its ``get_status`` (the server handles a connection's messages in order, so once that reply
is back the subscription is live). Then it prints ``{"ready": true}`` and, until killed or for
``--duration`` seconds, one JSON line per event received: the message as the agent tools return
it (``method``, ``params``, ``_subject``, ...).

The backend comes from the environment, as for call.py:

    MESSAGING_BACKEND=nats NATS_URL=nats://127.0.0.1:P DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT=t

Exits 1 (with the reason on stderr) if it cannot connect, subscribe or reach the device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import find_device, run


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="events.py")
    ap.add_argument("device_id")
    ap.add_argument("--selector", default="event(container_state_changed)")
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--discover-timeout", type=float, default=20.0)
    args = ap.parse_args(argv)

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection

    try:
        dc.connect()
    except Exception as e:  # noqa: BLE001
        print(f"events.py: connect() failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sub = dc.subscribe(args.selector.replace("DEVICE_ID", args.device_id))

    try:
        find_device(dc, get_connection(), args.device_id, args.discover_timeout)
    except LookupError as e:
        print(f"events.py: {e}", file=sys.stderr)
        return 1
    res = dc.invoke(f"device({args.device_id}).function(get_status)", {})
    if not res.get("success"):
        print(f"events.py: get_status failed: {res}", file=sys.stderr)
        return 1
    print(json.dumps({"ready": True}), flush=True)

    # read() drains often: the agent tools' buffer keeps only the newest 500 of 1000.
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        for msg in sub.read():
            print(json.dumps(msg, default=str), flush=True)
        time.sleep(0.01)
    return 0


if __name__ == "__main__":
    run(main)
