#!/usr/bin/env python3
"""Check a D2D dcd's wire behaviour on NATS with a raw client (nats-py), below the agent tools.

    wire.py NATS_URL TENANT DEVICE_ID

Checks the request envelope rules (spec 2.1-2.4), requestRegistration (3.6), heartbeat (3.4),
presence and the probe (3.5), and the event envelope (4.1). Last, it prints a line
{"check": "await-departure", ...} and waits up to 5 s for the departing presence (3.5): whoever
runs it stops the device on reading that line.

Prints one JSON line per check on stdout; exits 0 when every check passed.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time

import nats
from nats.errors import TimeoutError as NatsTimeout
from device_connect_edge.types import DeviceCapabilities
from pydantic import ValidationError

from interop import FUNCTIONS, failures, report

HEX = re.compile(r"^[0-9a-f]+$")
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
# The device's presence schedule is a 2 Hz burst for 10 s after start; the probe check runs
# after it, when presence otherwise comes only every 5 s.
BURST = 10.5


async def main(url: str, tenant: str, dev: str) -> int:
    t0 = time.monotonic()
    nc = await nats.connect(url, name="wire-check")
    root = f"device-connect.{tenant}"
    seen: list[tuple[float, str, dict]] = []

    async def on_msg(msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = {"raw": msg.data.decode(errors="replace")}
        seen.append((time.monotonic(), msg.subject, body))

    await nc.subscribe(f"{root}.{dev}.>", cb=on_msg)
    await nc.flush()

    async def request(payload: bytes | dict, timeout: float = 5.0) -> dict | None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            msg = await nc.request(f"{root}.{dev}.cmd", data, timeout=timeout)
        except NatsTimeout:
            return None
        return json.loads(msg.data)

    def rpc(method: str, params, rid="w-1") -> dict:
        return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}

    r = await request(rpc("list_containers", {}, 42))
    report("number_id_echoed", r is not None and r.get("id") == 42 and type(r.get("id")) is int
           and r.get("result", {}).get("status") == "success", reply=r)
    r = await request(rpc("list_containers", {}, "abc-1"))
    report("string_id_echoed", r is not None and r.get("id") == "abc-1" and r.get("jsonrpc") == "2.0", reply=r)
    r = await request({"jsonrpc": "2.0", "method": "list_containers", "params": {}}, 1.5)
    report("no_id_no_reply", r is None, reply=r)
    r = await request(b"{not json", 1.5)
    report("malformed_no_reply", r is None, reply=r)
    r = await request(json.dumps([rpc("list_containers", {})]).encode(), 1.5)
    report("batch_no_reply", r is None, reply=r)
    meta = {"_dc_meta": {"source_device": "robot-1", "source_type": "device", "trace_id": "9b1e4c2d7a3f0e11"},
            "source_device": "robot-1", "all_containers": True}
    r = await request(rpc("list_containers", meta))
    report("reserved_params_stripped", r is not None and r.get("result", {}).get("status") == "success", reply=r)
    r = await request(rpc("list_containers", [True]))
    report("array_params_error", r is not None and (r.get("error") or {}).get("code") == -32000, reply=r)
    r = await request(rpc("no_such_method", {}))
    err = (r or {}).get("error") or {}
    report("unknown_method", err.get("code") == -32601 and err.get("message") == "Unknown method: no_such_method"
           and set(err) == {"code", "message"}, reply=r)
    r = await request(rpc("requestRegistration", {}))
    res = (r or {}).get("result") or {}
    names = {f.get("name") for f in (res.get("capabilities") or {}).get("functions", [])}
    report("request_registration", res.get("device_id") == dev and res.get("device_ttl") == 15
           and set(FUNCTIONS) <= names and isinstance((res.get("status") or {}).get("ts"), str), result_keys=sorted(res))
    # The capabilities leave out what the models default (labels, tags): the models the
    # registry validates them with still take them.
    try:
        DeviceCapabilities.model_validate(res.get("capabilities"))
        invalid = None
    except ValidationError as e:
        invalid = str(e)[:300]
    report("capabilities_validate", invalid is None, error=invalid)

    # Event envelope, from a provision.
    r = await request(rpc("provision_container", {"spec": {"image": "dcd-test/busybox:latest", "name": "wire-1"}}))
    cid = ((r or {}).get("result") or {}).get("container", {}).get("id")
    ev = await wait_seen(seen, lambda s, b: s == f"{root}.{dev}.event.container_state_changed"
                         and (b.get("params") or {}).get("container_id") == cid, 5.0)
    p = (ev or {}).get("params") or {}
    report("event_envelope", ev is not None and ev.get("jsonrpc") == "2.0" and ev.get("method") == "container_state_changed"
           and "id" not in ev and p.get("previous_state", "x") is None
           and len(p.get("event_id", "")) == 8 and HEX.match(p.get("event_id", ""))
           and len(p.get("_trace_id", "")) == 16 and HEX.match(p.get("_trace_id", ""))
           and RFC3339_Z.match(str(p.get("ts"))), event=ev)
    await request(rpc("remove_container", {"container_id": cid or "wire-1", "force": True}))

    # Heartbeats: two, about 5 s apart.
    beats = [(t, b) for t, s, b in seen if s == f"{root}.{dev}.heartbeat"]
    deadline = time.monotonic() + 12
    while len(beats) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        beats = [(t, b) for t, s, b in seen if s == f"{root}.{dev}.heartbeat"]
    gap = beats[1][0] - beats[0][0] if len(beats) >= 2 else None
    report("heartbeat", gap is not None and 4.0 < gap < 6.0 and set(beats[0][1]) == {"device_id", "ts"}
           and beats[0][1]["device_id"] == dev and isinstance(beats[0][1]["ts"], float), gap=gap,
           beat=beats[0][1] if beats else None)

    # Presence: its shape, then the probe answer once the burst is over.
    pres = next((b for _, s, b in seen if s == f"{root}.{dev}.presence"), None)
    report("presence", pres is not None and pres.get("d2d") is True and isinstance(pres.get("ts"), float)
           and "device_ttl" not in pres and pres.get("device_id") == dev
           and RFC3339_Z.match(str((pres.get("status") or {}).get("ts")))
           and (pres.get("identity") or {}).get("device_type") == "docker_host", keys=sorted(pres or {}))
    await asyncio.sleep(max(0.0, BURST - (time.monotonic() - t0)))
    await asyncio.sleep(0.6)
    probe_at = time.monotonic()
    await nc.publish(f"{root}.discovery.probe", json.dumps({"probe": True, "ts": time.time()}).encode())
    answer = await wait_seen(seen, lambda s, b: s == f"{root}.{dev}.presence", 2.0, after=probe_at)
    latency = (answer_time(seen, probe_at) or 99) - probe_at
    report("probe_answered", answer is not None and latency < 0.3, latency=round(latency, 3))

    report("await-departure", True)
    bye = await wait_seen(seen, lambda s, b: s == f"{root}.{dev}.presence" and b.get("departing") is True, 5.0)
    report("departure", bye is not None and bye.get("tenant") == tenant and bye.get("device_id") == dev
           and isinstance(bye.get("ts"), float), message=bye)
    await nc.close()
    report("done", not failures, failed=failures)
    return 0 if not failures else 1


async def wait_seen(seen, pred, timeout: float, after: float = 0.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, s, b in list(seen):
            if t >= after and pred(s, b):
                return b
        await asyncio.sleep(0.02)
    return None


def answer_time(seen, after: float) -> float | None:
    return next((t for t, s, b in seen if t >= after and s.endswith(".presence")), None)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:4])))
