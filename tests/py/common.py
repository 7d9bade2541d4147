"""What our agent-tools scripts share: finding a device once connect() is done."""

from __future__ import annotations

import time


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
        collector = getattr(conn, "_d2d_collector", None)
        if collector is not None:
            conn._run(collector.send_discovery_probe())
        else:
            conn.invalidate_cache()
        time.sleep(0.5)
