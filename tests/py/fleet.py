#!/usr/bin/env python3
"""A fleet as the unmodified Python agent tools see it: how long until they discover N devices,
and how many answer one broadcast of get_status.

    fleet.py N [--discover-timeout S] [--answer-timeout S]

Connects with ``device_connect_agent_tools.connect()``, then polls ``discover("device(*)")``
until it lists N devices (re-sending the D2D discovery probe, or dropping the registry cache in
infra mode, every half second as tests/py/common.py's find_device does), then broadcasts
``get_status`` to them all (``fire_at`` 1.5 s ahead, so the reply subscription is in place) and
waits for the replies. Prints one JSON line:

    {"discovered": n, "discover_s": t, "answers": k, "broadcast_s": t, "unanswered": [...]}

``broadcast_s`` runs from ``fire_at`` to the last reply (or the timeout). Exits 0 when all N were
discovered and all N answered, 1 otherwise. The backend comes from the environment, as for call.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import nudge, run


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fleet.py")
    ap.add_argument("n", type=int)
    ap.add_argument("--discover-timeout", type=float, default=60.0)
    ap.add_argument("--answer-timeout", type=float, default=20.0)
    args = ap.parse_args(argv)

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection

    t0 = time.monotonic()
    dc.connect()
    conn = get_connection()
    seen: set[str] = set()
    while True:
        page = dc.discover("device(*)", limit=max(args.n, 1))
        seen = {d.get("device_id") for d in page.get("results", [])}
        if len(seen) >= args.n or time.monotonic() - t0 >= args.discover_timeout:
            break
        nudge(conn)
        time.sleep(0.5)
    discover_s = time.monotonic() - t0

    fire_at = time.time() + 1.5
    b = dc.broadcast("device(*).function(get_status)", {}, fire_at=fire_at)
    replies = dc.await_replies(b.get("correlation_id", ""), timeout=args.answer_timeout, until=len(seen))
    broadcast_s = time.time() - fire_at
    answered = {r.get("device_id") for r in replies if r.get("success") is True}
    print(json.dumps({
        "discovered": len(seen),
        "discover_s": round(discover_s, 2),
        "answers": len(answered),
        "broadcast_s": round(broadcast_s, 2),
        "unanswered": sorted(seen - answered),
        "broadcast": b if not b.get("correlation_id") else None,
    }), flush=True)
    dc.disconnect()
    return 0 if len(seen) >= args.n and len(answered) >= args.n else 1


if __name__ == "__main__":
    run(main)
