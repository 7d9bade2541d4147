#!/usr/bin/env python3
"""Try to escape a dcd's policy with the unmodified Python agent tools (wire spec 6.1).

    policy.py MODE DEVICE_ID IMAGE PREFIX [--container NAME] [--dir DIR]

MODE is what the device was started with:

  escapes     the default policy: every host escape reachable through provision_container's
              advertised spec fields is refused with a "policy:" error naming it, and so is a
              compose service asking for one; a plain container with a named volume still works
  read-only   --read-only: mutating functions are not advertised, and calling them anyway is
              refused by the policy
  no-exec     {"exec": "deny"}: exec_in_container is not advertised and is refused
  owned-only  {"owned_only": true}: the container --container (made by the docker CLI, without
              our label) cannot be stopped, restarted, removed, exec'd into, read or replaced;
              containers we provision can
  binds       {"bind_prefixes": [DIR]}: DIR/data may be mounted; symlinks and ".." out of DIR
              may not

Containers this script asks for are named PREFIX-<something> and labelled dcd-test=1; the escape
attempts are named PREFIX-esc-<n>, so the caller can check with the docker CLI that none exists.
The backend, tenant and discovery mode come from the environment, as the agent tools read them.

Prints one JSON line per check ({"check", "ok", ...}) on stdout; exits 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os

from common import failures, find_device, report, run

MUTATING = [
    "provision_container", "start_container", "stop_container", "restart_container",
    "remove_container", "exec_in_container", "pull_image", "compose_up", "compose_down",
]
READING = [
    "get_status", "ping_docker", "list_containers", "get_container", "container_logs",
    "stop_container_logs", "list_images", "list_managed_containers",
]
LABELS = {"dcd-test": "1"}
SLEEPER = ["sleep", "300"]

class Device:
    def __init__(self, dc, conn, device_id: str, record: dict):
        self.dc, self.conn, self.id = dc, conn, device_id
        self.functions = {f.get("name"): f for f in record.get("functions") or []}

    def spec_fields(self) -> set[str]:
        fn = self.functions.get("provision_container") or {}
        spec = ((fn.get("parameters") or {}).get("properties") or {}).get("spec") or {}
        return set((spec.get("properties") or {}).keys())

    def invoke(self, fn: str, params: dict) -> dict:
        """Through the agent tools' selector path, as an agent would call it."""
        return self.dc.invoke(f"device({self.id}).function({fn})", params)

    def raw(self, fn: str, params: dict) -> dict:
        """Straight to the device, advertised or not: what a hostile client would do."""
        return self.conn.invoke(self.id, fn, params=params)


def error_message(res: dict) -> str:
    """The error text of an agent-tools envelope or of a raw JSON-RPC reply."""
    return str((res.get("error") or {}).get("message") or "")


def expect_refused(check: str, res: dict, *words: str) -> bool:
    """Refused by the policy, the message naming what was refused."""
    msg = error_message(res)
    ok = "result" not in res or res.get("success") is False
    ok = ok and "policy:" in msg and all(w in msg for w in words)
    return report(check, ok, expected=list(words), response=res)


def expect_success(check: str, res: dict) -> dict:
    result = res.get("result") if res.get("success") else None
    ok = isinstance(result, dict) and result.get("status") == "success"
    report(check, ok, **({} if ok else {"response": res}))
    return result if isinstance(result, dict) else {}


def spec(image: str, name: str, **extra) -> dict:
    return {"image": image, "name": name, "command": SLEEPER, "labels": LABELS, **extra}


def escapes(dev: Device, image: str, prefix: str) -> None:
    fields = dev.spec_fields()
    report("spec_fields", {"image", "volumes", "network"} <= fields, fields=sorted(fields))
    vol = lambda src: {"volumes": [{"source": src, "target": "/host"}]}  # noqa: E731
    # (what, field the spec must advertise, spec fields, words the refusal must contain)
    attempts = [
        ("bind_root", "volumes", vol("/"), ["bind mount of /"]),
        ("bind_etc", "volumes", vol("/etc"), ["bind mount of /etc"]),
        ("bind_docker_sock", "volumes", vol("/var/run/docker.sock"), ["docker.sock"]),
        ("bind_traversal", "volumes", vol("/tmp/../etc"), ["bind mount of /etc"]),
        ("bind_dot_slash", "volumes", vol("/./etc/"), ["bind mount of /etc"]),
        ("bind_double_slash", "volumes", vol("//etc"), ["bind mount of /etc"]),
        ("bind_proc", "volumes", vol("/proc"), ["bind mount of /proc"]),
        ("bind_home", "volumes", vol("/root"), ["bind mount of /root"]),
        ("bind_relative_traversal", "volumes", vol("../../etc"), ["bind mount", "../../etc"]),
        ("bind_relative_dot", "volumes", vol("./etc"), ["bind mount", "./etc"]),
        ("bind_tilde", "volumes", vol("~/.ssh"), ["bind mount", "~/.ssh"]),
        ("network_host", "network", {"network": "host"}, ["network mode host"]),
        ("network_container", "network", {"network": "container:dcd-nonexistent"}, ["network mode container:"]),
        ("privileged", "privileged", {"privileged": True}, ["privileged"]),
        ("cap_add_sys_admin", "cap_add", {"cap_add": ["SYS_ADMIN"]}, ["cap_add SYS_ADMIN"]),
        ("cap_add_all", "cap_add", {"cap_add": ["ALL"]}, ["cap_add ALL"]),
        ("seccomp_unconfined", "security_opt", {"security_opt": ["seccomp=unconfined"]}, ["security_opt"]),
        ("apparmor_unconfined", "security_opt", {"security_opt": ["apparmor=unconfined"]}, ["security_opt"]),
        ("selinux_spc", "security_opt", {"security_opt": ["label=type:spc_t"]}, ["security_opt"]),
        ("seccomp_profile", "security_opt", {"security_opt": ["seccomp=/etc/passwd"]}, ["security_opt"]),
        ("device_mem", "devices", {"devices": ["/dev/mem"]}, ["device /dev/mem"]),
        ("device_object", "devices", {"devices": [{"path_on_host": "/dev/kmsg"}]}, ["device /dev/kmsg"]),
        ("device_traversal", "devices", {"devices": ["/dev/null/../mem"]}, ["device"]),
    ]
    for n, (what, field, extra, words) in enumerate(attempts):
        if field not in fields:
            report(f"escape_{what}", True, skipped=f"the spec has no {field} field")
            continue
        res = dev.invoke("provision_container", {"spec": spec(image, f"{prefix}-esc-{n}", **extra)})
        expect_refused(f"escape_{what}", res, *words)

    names = set(dev.functions)
    report("compose_advertised", {"compose_up", "compose_down"} <= names)
    yaml = f"services: {{x: {{image: {image}, privileged: true}}}}"
    res = dev.invoke("compose_up", {"spec": {"compose_yaml": yaml, "project": f"{prefix}-esc-compose"}})
    expect_refused("compose_privileged_refused", res, "service x", "privileged")

    # What stays allowed: a plain container with a named volume.
    res = dev.invoke("provision_container", {"spec": spec(image, f"{prefix}-ok", volumes=[
        {"source": f"{prefix}-vol", "target": "/data"}])})
    if expect_success("named_volume_allowed", res):
        expect_success("cleanup", dev.invoke("remove_container", {"container_id": f"{prefix}-ok", "force": True}))


def read_only(dev: Device, image: str, prefix: str) -> None:
    names = set(dev.functions)
    report("reads_advertised", set(READING) <= names, missing=sorted(set(READING) - names))
    report("mutations_hidden", not set(MUTATING) & names, advertised=sorted(set(MUTATING) & names))
    res = dev.raw("provision_container", {"spec": spec(image, f"{prefix}-esc-ro")})
    expect_refused("provision_refused", res, "read_only")
    for fn, params in [("stop_container", {"container_id": f"{prefix}-any"}),
                       ("pull_image", {"image": image}),
                       ("exec_in_container", {"container_id": f"{prefix}-any", "command": ["id"]})]:
        expect_refused(f"{fn}_refused", dev.raw(fn, params), fn, "read_only")
    expect_success("reads_work", dev.invoke("list_containers", {"all_containers": True}))


def no_exec(dev: Device, image: str, prefix: str) -> None:
    names = set(dev.functions)
    report("exec_hidden", "exec_in_container" not in names)
    report("others_advertised", "provision_container" in names and "get_status" in names)
    res = dev.raw("exec_in_container", {"container_id": f"{prefix}-any", "command": ["id"]})
    expect_refused("exec_refused", res, "exec")


def owned_only(dev: Device, image: str, prefix: str, foreign: str) -> None:
    for fn, params in [
        ("stop_container", {"container_id": foreign, "timeout_s": 1}),
        ("restart_container", {"container_id": foreign, "timeout_s": 1}),
        ("remove_container", {"container_id": foreign, "force": True}),
        ("exec_in_container", {"container_id": foreign, "command": ["id"]}),
        ("container_logs", {"container_id": foreign}),
    ]:
        expect_refused(f"{fn}_foreign", dev.invoke(fn, params), "not managed")
    if "replace" in dev.spec_fields():
        # Replacing removes whatever holds the name: that must not reach a foreign container.
        res = dev.invoke("provision_container", {"spec": spec(image, foreign, replace=True)})
        expect_refused("replace_foreign", res, "not managed")
    own = f"{prefix}-own"
    expect_success("provision_own", dev.invoke("provision_container", {"spec": spec(image, own)}))
    expect_success("stop_own", dev.invoke("stop_container", {"container_id": own, "timeout_s": 1}))
    expect_success("remove_own", dev.invoke("remove_container", {"container_id": own, "force": True}))


def binds(dev: Device, image: str, prefix: str, allowed: str) -> None:
    vol = lambda src: {"volumes": [{"source": src, "target": "/host"}]}  # noqa: E731
    ok_name = f"{prefix}-bind-ok"
    res = dev.invoke("provision_container", {"spec": spec(image, ok_name, **vol(f"{allowed}/data"))})
    if expect_success("allowed_bind", res):
        expect_success("cleanup", dev.invoke("remove_container", {"container_id": ok_name, "force": True}))
    base = os.path.basename(allowed)
    for n, (what, src, words) in enumerate([
        ("symlink_to_etc", f"{allowed}/link", ["bind mount of /etc"]),
        ("symlink_missing_child", f"{allowed}/link/dcd-not-there", ["bind mount of /etc/dcd-not-there"]),
        ("symlink_dotdot", f"{allowed}/link/../dcd-not-there", ["without .."]),
        ("dotdot_out", allowed + "/.." * 12 + "/etc", ["bind mount of /etc"]),
        ("dotdot_deep", f"{allowed}/data" + "/.." * 12 + "/etc/shadow", ["bind mount of /etc/shadow"]),
        ("sibling_prefix", f"{allowed}/../{base}-sibling", [f"{base}-sibling"]),
        ("docker_sock", "/var/run/docker.sock", ["docker.sock"]),
    ]):
        res = dev.invoke("provision_container", {"spec": spec(image, f"{prefix}-esc-{n}", **vol(src))})
        expect_refused(f"escape_{what}", res, *words)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="policy.py")
    ap.add_argument("mode", choices=["escapes", "read-only", "no-exec", "owned-only", "binds"])
    ap.add_argument("device_id")
    ap.add_argument("image")
    ap.add_argument("prefix")
    ap.add_argument("--container", help="owned-only: a container the docker CLI made")
    ap.add_argument("--dir", help="binds: the directory the policy allows")
    args = ap.parse_args(argv)

    import device_connect_agent_tools as dc
    from device_connect_agent_tools.connection import get_connection

    dc.connect()
    conn = get_connection()
    try:
        try:
            record = find_device(dc, conn, args.device_id, 15.0)
        except LookupError as e:
            report("discover", False, reason=str(e))
            return 1
        dev = Device(dc, conn, args.device_id, record)
        if args.mode == "escapes":
            escapes(dev, args.image, args.prefix)
        elif args.mode == "read-only":
            read_only(dev, args.image, args.prefix)
        elif args.mode == "no-exec":
            no_exec(dev, args.image, args.prefix)
        elif args.mode == "owned-only":
            owned_only(dev, args.image, args.prefix, args.container)
        else:
            binds(dev, args.image, args.prefix, args.dir)
    finally:
        try:
            dc.disconnect()
        except Exception:  # noqa: BLE001
            pass
    print(json.dumps({"failures": failures}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    run(main)
