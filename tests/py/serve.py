#!/usr/bin/env python3
"""Call a device for a test, one request a line, with the unmodified Python agent tools.

    serve.py DEVICE_ID [--discover-timeout S] [--timeout S]

Connects with ``device_connect_agent_tools.connect()``, waits until DEVICE_ID is discovered and
prints ``{"ready": true}``. Then, for each JSON line on stdin, until stdin closes, it prints one
JSON line on stdout carrying the request's ``id``:

    {"id": N, "method": M, "params": {...}}   ->  {"id": N, "result": ...} or {"id": N, "error": {...}}
    {"id": N, "discover": SELECTOR}           ->  {"id": N, "result": <dc.discover(SELECTOR)>}

A call goes out with ``DeviceConnection.invoke``, so a JSON-RPC error comes back as the device
sent it (``code`` and ``message``); an error without a ``code`` is this script's own (a timeout,
a lost connection). The id lets the caller skip a reply it gave up waiting for, and anything
else on the stream.

The backend, tenant and discovery mode come from the environment, as for call.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import find_device, run


def answer(dc, conn, device_id: str, req: dict, timeout: float) -> dict:
    if "discover" in req:
        return {"result": dc.discover(req["discover"])}
    try:
        reply = conn.invoke(device_id, req["method"], params=req.get("params") or {}, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - reported to the caller
        return {"error": {"message": f"serve.py: invoke failed: {type(e).__name__}: {e}"}}
    if "result" in reply:
        return {"result": reply["result"]}
    return {"error": reply.get("error", {"message": f"serve.py: reply without result or error: {reply}"})}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="serve.py")
    ap.add_argument("device_id")
    ap.add_argument("--discover-timeout", type=float, default=20.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection

    dc.connect(request_timeout=args.timeout)
    conn = get_connection()
    find_device(dc, conn, args.device_id, args.discover_timeout)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        reply = answer(dc, conn, args.device_id, req, args.timeout)
        print(json.dumps({"id": req["id"], **reply}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    run(main)
