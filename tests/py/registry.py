#!/usr/bin/env python3
"""A stand-in Device Connect registry, just enough for infra-mode tests (spec 3.6, 6).

    registry.py nats URL TENANT
    registry.py zenoh ENDPOINT TENANT     (also runs a Zenoh router listening on ENDPOINT)
    registry.py zenoh ENDPOINT TENANT --connect    (a client of the router on ENDPOINT instead)

For a tls/ ENDPOINT the router takes its certificate and key from ROUTER_TLS_CERT and
ROUTER_TLS_KEY, and the registry trusts MESSAGING_TLS_CA_FILE.

It talks through device-connect-edge's own messaging adapters, so requests and replies take the
same path as the real registry's. Answers on device-connect.<TENANT>.registry:
    registerDevice           -> {"status": "registered", "device_registration_id": <uuid4>}
and on device-connect.<TENANT>.discovery:
    discovery/listDevices    -> {"devices": [...], "next_offset": null|int, "total_matched": n}
    discovery/getDevice      -> {"device": {...} | null}
Devices are stored as registered (device_id, capabilities, identity, status), the raw form the
agent tools flatten. Anything else gets a -32601 error. Prints "registry ready" once subscribed,
then one JSON line per registration; runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

from device_connect_edge.messaging import create_client

devices: dict[str, dict] = {}


def handle(req: dict) -> dict:
    method, params = req.get("method"), req.get("params") or {}
    if method == "registerDevice":
        missing = [k for k in ("device_id", "device_ttl", "capabilities", "identity", "status") if k not in params]
        if missing or not isinstance(params.get("status", {}).get("ts"), str):
            return {"error": {"code": -32602, "message": f"invalid registration: missing {missing} or status.ts"}}
        reg_id = str(uuid.uuid4())
        devices[params["device_id"]] = {k: params[k] for k in ("device_id", "capabilities", "identity", "status")}
        print(json.dumps({"registered": params["device_id"], "device_registration_id": reg_id}), flush=True)
        return {"result": {"status": "registered", "device_registration_id": reg_id}}
    if method == "discovery/listDevices":
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 100))
        rows = list(devices.values())
        nxt = offset + limit if offset + limit < len(rows) else None
        return {"result": {"devices": rows[offset:offset + limit], "next_offset": nxt, "total_matched": len(rows)}}
    if method == "discovery/getDevice":
        return {"result": {"device": devices.get(params.get("device_id"))}}
    return {"error": {"code": -32601, "message": f"Unknown method: {method}"}}


async def main(backend: str, url: str, tenant: str, connect: bool) -> None:
    router = None
    tls = None
    if backend == "zenoh" and not connect:
        import zenoh

        conf: dict = {"mode": "router", "listen": {"endpoints": [url]},
                      "scouting": {"multicast": {"enabled": False}, "gossip": {"enabled": False}}}
        if url.startswith("tls/"):
            conf["transport"] = {"link": {"tls": {"listen_certificate": os.environ["ROUTER_TLS_CERT"],
                                                  "listen_private_key": os.environ["ROUTER_TLS_KEY"]}}}
            tls = {"ca_file": os.environ["MESSAGING_TLS_CA_FILE"]}
        router = zenoh.open(zenoh.Config.from_json5(json.dumps(conf)))
    client = create_client(backend)
    await client.connect(servers=[url], tls_config=tls)

    async def on_request(data: bytes, reply: str | None) -> None:
        try:
            req = json.loads(data)
        except ValueError:
            return
        if not isinstance(req, dict) or "id" not in req or not reply:
            return
        await client.publish(reply, json.dumps({"jsonrpc": "2.0", "id": req["id"], **handle(req)}).encode())

    await client.subscribe(f"device-connect.{tenant}.registry", on_request)
    await client.subscribe(f"device-connect.{tenant}.discovery", on_request)
    await client.flush()
    print("registry ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        if router is not None:
            router.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4], connect="--connect" in sys.argv[4:]))
