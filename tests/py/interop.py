#!/usr/bin/env python3
"""Drive a running dcd with the unmodified Python agent tools (wire spec 6.1).

    interop.py DEVICE_ID IMAGE [--quick] [--discover-timeout S]

The backend, tenant and discovery mode come from the environment, exactly as the agent tools
read them (spec 5.6), for example

    MESSAGING_BACKEND=nats NATS_URL=nats://127.0.0.1:P DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT=t
    MESSAGING_BACKEND=zenoh ZENOH_CONNECT=tcp/127.0.0.1:P DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT=t
    MESSAGING_BACKEND=nats NATS_URL=nats://127.0.0.1:P TENANT=t          (infra: needs a registry)

It discovers the device, checks what it advertises, subscribes to its events, then calls every
one of the 17 functions and checks the outcomes and the events they cause. IMAGE is used for
provision_container, pull_image and compose_up (any name works with --sim). With --quick it only
discovers the device and calls list_containers.

Prints one JSON line per check ({"check", "ok", ...}) on stdout; exits 0 when every check passed.
"""

from __future__ import annotations

import argparse
import time
import uuid

from common import failures, find_device, report, run

FUNCTIONS = [
    "get_status", "ping_docker", "list_containers", "get_container", "provision_container",
    "start_container", "stop_container", "restart_container", "remove_container",
    "container_logs", "stop_container_logs", "exec_in_container", "pull_image", "list_images",
    "compose_up", "compose_down", "list_managed_containers",
]
EVENTS = ["container_state_changed", "container_log_line"]

# A container that keeps running and keeps logging on a real engine (the simulator ignores it).
TICKER = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]

def wait_for(sub, pred, timeout: float) -> dict | None:
    """The first message of `sub` matching `pred` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in sub.read():
            if pred(msg):
                return msg
        time.sleep(0.05)
    return None


def params_of(msg: dict) -> dict:
    p = msg.get("params")
    return p if isinstance(p, dict) else {}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="interop.py")
    ap.add_argument("device_id")
    ap.add_argument("image")
    ap.add_argument("--quick", action="store_true", help="discover and call list_containers only")
    ap.add_argument("--discover-timeout", type=float, default=15.0)
    args = ap.parse_args(argv)
    dev = args.device_id

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection

    t0 = time.monotonic()
    dc.connect()
    conn = get_connection()
    report("connect", True, tenant=conn.zone, d2d=conn._d2d_mode)

    try:
        found = find_device(dc, conn, dev, args.discover_timeout)
    except LookupError as e:
        report("discover", False, reason=str(e))
        return 1
    report("discover", True, seconds=round(time.monotonic() - t0, 2))

    def invoke(fn: str, params: dict | None = None) -> dict:
        return dc.invoke(f"device({dev}).function({fn})", params or {})

    def call_ok(fn: str, params: dict | None = None, check: str | None = None) -> dict:
        res = invoke(fn, params)
        result = res.get("result") if res.get("success") else None
        ok = isinstance(result, dict) and result.get("status") == "success"
        report(check or fn, ok, **({} if ok else {"response": res}))
        return result if isinstance(result, dict) else {}

    if args.quick:
        call_ok("list_containers")
        return 0 if not failures else 1

    report("device_type", found.get("device_type") == "docker_host", device_type=found.get("device_type"))
    fns = dc.discover(f"device({dev}).function(*)")
    names = {r.get("name") for r in fns.get("results", [])}
    report("functions", set(FUNCTIONS) <= names, missing=sorted(set(FUNCTIONS) - names))
    evs = dc.discover(f"device({dev}).event(*)")
    ev_names = {r.get("name") for r in evs.get("results", [])}
    report("events", set(EVENTS) <= ev_names, missing=sorted(set(EVENTS) - ev_names))

    states = dc.subscribe("event(container_state_changed)")
    device_events = dc.subscribe(f"device({dev}).event(*)")

    # The sequence of spec 6.1.
    call_ok("list_containers")
    name = f"interop-{uuid.uuid4().hex[:8]}"
    spec = {"image": args.image, "name": name, "command": TICKER}
    c = call_ok("provision_container", {"spec": spec}).get("container") or {}
    cid = c.get("id")
    ev = wait_for(states, lambda m: params_of(m).get("container_id") == cid, 10.0)
    p = params_of(ev or {})
    report(
        "event_provisioned",
        ev is not None and "previous_state" in p and p["previous_state"] is None and p.get("name") == name
        and isinstance(p.get("event_id"), str) and len(p["event_id"]) == 8 and str(p.get("ts", "")).endswith("Z"),
        event=ev,
    )

    raw = conn.invoke(dev, "no_such_method", params={})
    report("unknown_method", (raw.get("error") or {}).get("code") == -32601, reply=raw)
    res = invoke("get_container", {"container_id": "nope"})
    report("get_container_missing", not res.get("success") and (res.get("error") or {}).get("code") == "-32000",
           response=res)

    r = call_ok("container_logs", {"container_id": cid, "follow": True, "tail": 5}, "container_logs_follow")
    report("container_logs_streaming", r.get("streaming") is True, result=r)
    line = wait_for(device_events, lambda m: m.get("method") == "container_log_line"
                    and params_of(m).get("container_id") == cid and isinstance(params_of(m).get("line"), str), 10.0)
    report("event_log_line", line is not None, event=line)
    r = call_ok("stop_container_logs", {"container_id": cid})
    report("stop_container_logs_stopped", r.get("stopped") is True, result=r)
    call_ok("remove_container", {"container_id": cid, "force": True}, "remove_first")

    # Every function at least once, with sensible params.
    st = call_ok("get_status")
    report("get_status_fields", st.get("device_type") == "docker_host" and "connected" in st, result=st)
    call_ok("ping_docker")
    call_ok("list_containers", {"all_containers": True}, "list_containers_all")
    name2 = f"interop-{uuid.uuid4().hex[:8]}"
    c2 = (call_ok("provision_container", {"spec": {"image": args.image, "name": name2, "command": TICKER,
                                                   "labels": {"interop": "yes"}}}, "provision_second")
          .get("container") or {})
    cid2 = c2.get("id")
    got = call_ok("get_container", {"container_id": name2}).get("container") or {}
    report("get_container_by_name", got.get("id") == cid2 and got.get("managed_by_dcd") is True, container=got)
    call_ok("stop_container", {"container_id": cid2, "timeout_s": 1})
    call_ok("start_container", {"container_id": cid2})
    call_ok("restart_container", {"container_id": cid2, "timeout_s": 1})
    logs = call_ok("container_logs", {"container_id": cid2, "tail": 5})
    report("container_logs_text", isinstance(logs.get("logs"), str), result=logs)
    ex = call_ok("exec_in_container", {"container_id": cid2, "command": ["echo", "hello"]})
    report("exec_output", ex.get("exit_code") == 0 and "hello" in ex.get("stdout", ""), result=ex)
    managed = call_ok("list_managed_containers")
    report("managed_lists_it", cid2 in {x.get("id") for x in managed.get("containers", [])}, result=managed)
    call_ok("pull_image", {"image": args.image})
    imgs = call_ok("list_images")
    report("list_images_count", imgs.get("count") == len(imgs.get("images", [])), result=imgs)
    yaml = f"services:\n  app:\n    image: {args.image}\n    command: [\"sleep\", \"60\"]\n"
    up = call_ok("compose_up", {"spec": {"compose_yaml": yaml}})
    project = up.get("project_dir")
    report("compose_project_dir", isinstance(project, str) and project.startswith("/"), result=up)
    if project:
        call_ok("compose_down", {"project_dir": project})
    call_ok("remove_container", {"container_id": cid2, "force": True})

    # Fleet fan-out (spec 4.3): the reply comes back as an async_reply event. fire_at leaves
    # time to subscribe to the replies after the broadcast has gone out.
    b = dc.broadcast(f"device({dev}).function(get_status)", {}, fire_at=time.time() + 1.5)
    replies = dc.await_replies(b.get("correlation_id", ""), timeout=10.0, until=1)
    report("broadcast", any(r.get("device_id") == dev and r.get("success") is True for r in replies),
           broadcast=b, replies=replies)

    states.close()
    device_events.close()
    dc.disconnect()
    report("done", not failures, failed=failures, seconds=round(time.monotonic() - t0, 2))
    return 0 if not failures else 1


def main_reporting(argv: list[str]) -> int:
    try:
        return main(argv)
    except Exception as e:  # noqa: BLE001 - report, never hang
        report("exception", False, error=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    run(main_reporting)
