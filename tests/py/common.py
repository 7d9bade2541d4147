"""What our agent-tools scripts share: finding a device once connect() is done, reporting
checks, and exiting."""

from __future__ import annotations

import json
import os
import sys
import time

failures: list[str] = []


def report(check: str, ok: bool, **detail) -> bool:
    """One JSON line per check on stdout; a failed check is remembered in `failures`."""
    print(json.dumps({"check": check, "ok": bool(ok), **detail}, default=str), flush=True)
    if not ok:
        failures.append(check)
    return bool(ok)


def run(main) -> None:
    """Exit with main(argv)'s code at once after flushing: the messaging clients may leave
    non-daemon threads behind, and the script must not hang on them."""
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def nudge(conn) -> None:
    """Ask again: re-send the D2D discovery probe, or drop the registry client's cached answer."""
    collector = getattr(conn, "_d2d_collector", None)
    if collector is not None:
        conn._run(collector.send_discovery_probe())
    else:
        conn.invalidate_cache()


def find_device(dc, conn, device_id: str, timeout: float) -> dict:
    """DEVICE_ID's flattened record (functions, events, identity, ...) as the agent tools see it,
    once discover() lists it. Raises LookupError after `timeout` seconds.

    The agent tools probe D2D presence only once, in connect(), and a device that starts later
    is only heard at its next presence beat: so the probe is re-sent while waiting. In infra mode
    the registry client caches its answer for 30 s: so the cache is dropped instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = dc.discover(f"device({device_id})")
        if any(d.get("device_id") == device_id for d in last.get("results", [])):
            return conn.get_device(device_id)
        if time.monotonic() >= deadline:
            raise LookupError(f"device {device_id!r} not discovered within {timeout:g} s "
                              f"(tenant {conn.zone!r}): {last}")
        nudge(conn)
        time.sleep(0.5)
