#!/usr/bin/env python3
"""Invoke one RPC on a Device Connect device with the unmodified Python agent tools.

    call.py DEVICE_ID FUNCTION [PARAMS_JSON]

Connects with ``device_connect_agent_tools.connect()``, waits until DEVICE_ID shows up in
``discover("device(DEVICE_ID)")`` (default 15 s; a discovery probe is re-sent every half second while
waiting), invokes ``device(DEVICE_ID).function(FUNCTION)`` with PARAMS_JSON (a JSON object,
default ``{}``), prints the JSON result on stdout and exits 0. On any failure it prints the reason
(and the agent tools' error envelope, if any) on stderr and exits 1.

The backend is chosen by the environment, exactly as the agent tools read it (wire spec 5.6, 6.1):

    NATS:  MESSAGING_BACKEND=nats NATS_URL=nats://127.0.0.1:P DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT=t
    Zenoh: MESSAGING_BACKEND=zenoh ZENOH_CONNECT=tcp/127.0.0.1:P DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT=t

Options:
  --raw             send the request with DeviceConnection.invoke (no advertised-function check)
                    and print the raw JSON-RPC reply; exit 0 if it has "result", 2 if it has "error"
  --envelope        print the agent tools' whole {"success", "device_id", "function", "result"}
                    envelope instead of just the result
  --discover-timeout S   seconds to wait for the device to appear (default 15)
  --timeout S       RPC timeout in seconds (default 30, the agent tools' default)
  --tenant T        tenant (zone); default: the agent tools' own resolution (creds, TENANT, default)
  -v                log the SDK at DEBUG on stderr
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from common import find_device, run


def _fail(msg: str, detail: object | None = None) -> int:
    print(f"call.py: {msg}", file=sys.stderr)
    if detail is not None:
        print(json.dumps(detail, indent=2, default=str), file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="call.py",
        description="Invoke one RPC on a Device Connect device (env selects the backend).",
    )
    ap.add_argument("device_id")
    ap.add_argument("function")
    ap.add_argument("params", nargs="?", default="{}", help="JSON object (default {})")
    ap.add_argument("--raw", action="store_true")
    ap.add_argument("--envelope", action="store_true")
    ap.add_argument("--discover-timeout", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--tenant", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as e:
        return _fail(f"PARAMS_JSON is not valid JSON: {e}")
    if not isinstance(params, dict):
        return _fail("PARAMS_JSON must be a JSON object")

    if not os.environ.get("MESSAGING_BACKEND") and (
        os.environ.get("NATS_URL") or os.environ.get("NATS_URLS")
    ) and not os.environ.get("ZENOH_CONNECT"):
        # The agent tools default to zenoh even when NATS_URL is set (spec 5.6): say so loudly.
        print(
            "call.py: warning: NATS_URL is set but MESSAGING_BACKEND is not; "
            "the agent tools will use zenoh. Set MESSAGING_BACKEND=nats.",
            file=sys.stderr,
        )

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection

    try:
        dc.connect(zone=args.tenant, request_timeout=args.timeout)
    except Exception as e:  # noqa: BLE001
        return _fail(f"connect() failed: {type(e).__name__}: {e}")

    try:
        conn = get_connection()
        try:
            find_device(dc, conn, args.device_id, args.discover_timeout)
        except LookupError as e:
            return _fail(str(e))

        if args.raw:
            try:
                reply = conn.invoke(args.device_id, args.function, params=params,
                                    timeout=args.timeout)
            except Exception as e:  # noqa: BLE001
                return _fail(f"invoke failed: {type(e).__name__}: {e}")
            print(json.dumps(reply))
            if isinstance(reply, dict) and "result" in reply:
                return 0
            return 2

        res = dc.invoke(f"device({args.device_id}).function({args.function})", params)
        if not res.get("success"):
            return _fail(f"{args.function} failed", res)
        print(json.dumps(res if args.envelope else res.get("result")))
        return 0
    finally:
        try:
            dc.disconnect()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    run(main)
