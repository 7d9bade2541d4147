#!/usr/bin/env python3
"""The fleet benchmark (issue 16); bench/fleet.sh runs it. See BENCHMARKS.md "Fleet".

    fleet.py --bin after=PATH [--bin before=PATH] [--sizes 50,100,200] [--modes d2d,infra]
             [--idle S] [--json-out FILE]

On loopback: three nats-servers in one cluster (the hub) and a leaf server that dials them, as a
site gateway would. For each mode, size N and binary: N `dcd --sim --workers 1` devices spread
over the three hub members and the leaf (infra mode: plus tests/py/registry.py on the hub), then

- discovery: tests/py/fleet.py (the unmodified agent tools) on hub-0, time until it lists all N,
  then one broadcast of get_status, its time and how many answered;
- idle, over --idle seconds: per device RSS and CPU, and messages (and bytes) a second it sends and receives
  (the servers' /connz), the servers' memory (/varz) and subscriptions (/subsz) per device;
- storm: all three hub members killed and started again; the messages the servers receive and
  deliver (/varz in_msgs, out_msgs, in_bytes, out_bytes, over all four) every half second until quiet, peak
  and total.

The servers take max_payload from DCD_FLEET_MAX_PAYLOAD, 8MB by default as in the reference
deployment (device-connect-server's security_infra/setup_deployment.sh): in infra mode the agent
tools ask the registry for pages of 100 devices, and a page of dcd registrations (about 24 KB each)
is over nats-server's own default of 1 MB.

Prints a table per mode and the growth exponent of each cost over N (log-log slope, first to last
size). Everything listens on 127.0.0.1 only; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(os.environ.get("DCD_PYVENV", os.path.expanduser("~/.cache/dcd-pyvenv")), "bin/python")
MAX_PAYLOAD = os.environ.get("DCD_FLEET_MAX_PAYLOAD", "8MB")
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
procs: list[subprocess.Popen] = []


def free_port() -> int:
    """A free port below Linux's ephemeral range: the servers restart on theirs, and by then an
    ephemeral one may have gone to some client's outgoing connection."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def spawn(args: list[str], env: dict[str, str], log: str) -> subprocess.Popen:
    out = open(log, "ab")
    p = subprocess.Popen(args, env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env},
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append(p)
    return p


def stop(p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in procs:
        procs.remove(p)


class Server:
    def __init__(self, d: str, name: str, body: str):
        self.name, self.port, self.monitor = name, free_port(), free_port()
        self.conf = os.path.join(d, f"{name}.conf")
        self.log = os.path.join(d, f"{name}.log")
        with open(self.conf, "w") as f:
            f.write(f"server_name: {name}\nlisten: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor}\n"
                    f"max_connections: 100000\nmax_payload: {MAX_PAYLOAD}\n{body}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = spawn(["nats-server", "-c", self.conf], {}, self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not listen")
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc:
            stop(self.proc, signal.SIGKILL)
            self.proc = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def page(self, path: str) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}{path}", timeout=5) as r:
                return json.load(r)
        except Exception:  # noqa: BLE001 - a server being restarted
            return {}


class Hub:
    def __init__(self, d: str):
        routes = [free_port() for _ in range(3)]
        leafs = [free_port() for _ in range(3)]
        rurls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        self.members = [Server(d, f"hub-{i}", f"cluster {{ name: hub, listen: 127.0.0.1:{routes[i]}, routes: [{rurls}] }}\n"
                               f"leafnodes {{ listen: 127.0.0.1:{leafs[i]} }}\n") for i in range(3)]
        lurls = ", ".join(f"nats-leaf://127.0.0.1:{p}" for p in leafs)
        self.leaf = Server(d, "leaf", f"leafnodes {{ remotes: [ {{ urls: [{lurls}] }} ] }}\n")
        self.all = self.members + [self.leaf]

    def wait_linked(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(m.page("/routez").get("num_routes", 0) >= 2 for m in self.members) \
                    and self.leaf.page("/leafz").get("leafnodes") == 1:
                return
            time.sleep(0.1)
        raise RuntimeError("hub did not form")

    def dcd_conns(self) -> list[dict]:
        conns = []
        for s in self.all:
            conns += [c for c in s.page("/connz?limit=100000").get("connections", []) if c.get("name") == "dcd"]
        return conns

    def totals(self) -> tuple[int, int]:
        """Messages received and delivered by all four servers so far."""
        pages = [s.page("/varz") for s in self.all]
        return sum(p.get("in_msgs", 0) for p in pages), sum(p.get("out_msgs", 0) for p in pages)


def proc_stat(pid: int) -> tuple[float, int]:
    """CPU seconds so far and RSS in KiB."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE_KB


def run_one(hub: Hub, d: str, binary: str, mode: str, n: int, idle: float) -> dict:
    tenant = f"fleet-{mode}-{n}-{int(time.time())}"
    r: dict = {"mode": mode, "n": n}
    # Fresh servers: a Go server keeps the memory an earlier run made it take.
    for s in hub.all:
        s.kill()
    for s in hub.all:
        s.start()
    hub.wait_linked()
    registry = None
    if mode == "infra":
        registry = spawn([PY, f"{ROOT}/tests/py/registry.py", "nats", hub.members[0].url, tenant], {},
                         os.path.join(d, f"registry-{tenant}.log"))
        time.sleep(3)
    env_of = lambda url: {"NATS_URL": url, "DEVICE_CONNECT_ALLOW_INSECURE": "true", "DCD_LOG_LEVEL": "warn",
                          **({"DEVICE_CONNECT_DISCOVERY_MODE": "d2d"} if mode == "d2d" else {})}
    t0 = time.monotonic()
    devices = [spawn(["nice", "-n", "5", binary, "--sim", "--workers", "1", "--tenant", tenant,
                      "--device-id", f"sim-{i:04d}"], env_of(hub.all[i % 4].url), os.path.join(d, f"dev-{tenant}.log"))
               for i in range(n)]
    while len(hub.dcd_conns()) < n and time.monotonic() - t0 < 120:
        time.sleep(0.5)
    r["connect_s"] = round(time.monotonic() - t0, 1)

    cenv = {"MESSAGING_BACKEND": "nats", "NATS_URL": hub.members[0].url, "TENANT": tenant,
            **({"DEVICE_CONNECT_DISCOVERY_MODE": "d2d"} if mode == "d2d" else {}),
            # The agent tools' registry page (100 devices by default), when the caller sets it.
            **{k: os.environ[k] for k in ("DEVICE_CONNECT_LIST_PAGE_SIZE",) if k in os.environ}}
    out = subprocess.run([PY, f"{ROOT}/tests/py/fleet.py", str(n), "--discover-timeout", "60"],
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **cenv},
                         capture_output=True, text=True, timeout=240)
    try:
        f = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        f = {"discovered": 0, "discover_s": None, "answers": 0, "broadcast_s": None, "error": out.stderr[-300:]}
    r.update({k: f.get(k) for k in ("discovered", "discover_s", "answers", "broadcast_s")})

    # Idle: settle past the start-up bursts, then measure.
    time.sleep(max(0.0, 12 - (time.monotonic() - t0)))
    pids = [p.pid for p in devices if p.poll() is None]
    cpu0 = {p: proc_stat(p)[0] for p in pids}
    c0 = {c["cid"]: c for c in hub.dcd_conns()}
    v0 = hub.totals()
    time.sleep(idle)
    stats = {p: proc_stat(p) for p in pids if os.path.exists(f"/proc/{p}")}
    c1 = {c["cid"]: c for c in hub.dcd_conns()}
    v1 = hub.totals()
    both = [(c0[k], c1[k]) for k in c1 if k in c0]
    # A device's in_msgs are what it sent to its server, out_msgs what the server delivered to it.
    sent = sum(b["in_msgs"] - a["in_msgs"] for a, b in both) / idle / max(len(both), 1)
    recv = sum(b["out_msgs"] - a["out_msgs"] for a, b in both) / idle / max(len(both), 1)
    recv_kb = sum(b["out_bytes"] - a["out_bytes"] for a, b in both) / idle / max(len(both), 1) / 1024
    sent_kb = sum(b["in_bytes"] - a["in_bytes"] for a, b in both) / idle / max(len(both), 1) / 1024
    mem = sum(s.page("/varz").get("mem", 0) for s in hub.all)
    subs = sum(s.page("/subsz").get("num_subscriptions", 0) for s in hub.all)
    r.update({
        "rss_kb": round(sum(v[1] for v in stats.values()) / max(len(stats), 1)),
        "cpu_pct": round(100 * sum(stats[p][0] - cpu0[p] for p in stats) / idle / max(len(stats), 1), 3),
        "dev_sent_s": round(sent, 2), "dev_sent_kb_s": round(sent_kb, 2), "dev_recv_s": round(recv, 2),
        "dev_recv_kb_s": round(recv_kb, 1),
        "fleet_in_s": round((v1[0] - v0[0]) / idle), "fleet_out_s": round((v1[1] - v0[1]) / idle),
        "broker_mem_mb": round(mem / 2**20, 1), "broker_kb_per_dev": round(mem / 1024 / n, 1),
        "subs_per_dev": round(subs / n, 1),
    })

    # Storm: the whole hub restarts; count until four quiet seconds (within 1.5x the idle rate).
    base = max(r["fleet_out_s"], 1)
    for m in hub.members:
        m.kill()
    time.sleep(1)
    for m in hub.members:
        m.start()
    peak, total_in, total_out, in_bytes, out_bytes, quiet, t_storm = 0, 0, 0, 0, 0, 0.0, time.monotonic()
    prev = {s.name: s.page("/varz") for s in hub.all}
    while time.monotonic() - t_storm < 60:
        time.sleep(0.5)
        cur = {s.name: s.page("/varz") for s in hub.all}
        din = sum(max(0, cur[k].get("in_msgs", 0) - prev[k].get("in_msgs", 0)) for k in cur)
        dout = sum(max(0, cur[k].get("out_msgs", 0) - prev[k].get("out_msgs", 0)) for k in cur)
        in_bytes += sum(max(0, cur[k].get("in_bytes", 0) - prev[k].get("in_bytes", 0)) for k in cur)
        out_bytes += sum(max(0, cur[k].get("out_bytes", 0) - prev[k].get("out_bytes", 0)) for k in cur)
        prev = cur
        total_in += din
        total_out += dout
        peak = max(peak, dout * 2)
        quiet = quiet + 0.5 if dout * 2 <= 1.5 * base and len(hub.dcd_conns()) >= n else 0.0
        if quiet >= 4:
            break
    r.update({"storm_peak_out_s": peak, "storm_in": total_in, "storm_out": total_out,
              "storm_in_mb": round(in_bytes / 2**20, 2), "storm_out_mb": round(out_bytes / 2**20, 2),
              "storm_s": round(time.monotonic() - t_storm, 1)})
    hub.wait_linked()
    for p in devices:
        stop(p)
    if registry:
        stop(registry)
    return r


COLS = ["n", "connect_s", "discovered", "discover_s", "answers", "broadcast_s", "rss_kb", "cpu_pct", "dev_sent_s",
        "dev_sent_kb_s", "dev_recv_s", "dev_recv_kb_s", "fleet_out_s", "broker_kb_per_dev", "subs_per_dev", "storm_peak_out_s",
        "storm_out", "storm_in_mb", "storm_out_mb", "storm_s"]
GROWTH = ["discover_s", "broadcast_s", "cpu_pct", "dev_recv_s", "fleet_out_s", "broker_mem_mb", "storm_out",
          "storm_in_mb", "storm_out_mb"]


def table(rows: list[dict]) -> str:
    lines = ["| bin | " + " | ".join(COLS) + " |", "|" + "---|" * (len(COLS) + 1)]
    for r in rows:
        lines.append(f"| {r['bin']} | " + " | ".join(str(r.get(c, "")) for c in COLS) + " |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    out = []
    for b in sorted({r["bin"] for r in rows}):
        rs = sorted((r for r in rows if r["bin"] == b), key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        lo, hi = rs[0], rs[-1]
        ex = []
        for k in GROWTH:
            a, z = lo.get(k), hi.get(k)
            ex.append(f"{k} {math.log(z / a) / math.log(hi['n'] / lo['n']):.2f}" if a and z and a > 0 and z > 0
                      else f"{k} -")
        out.append(f"growth exponents ({b}, N {lo['n']}->{hi['n']}): " + ", ".join(ex))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--sizes", default="50,100,200")
    ap.add_argument("--modes", default="d2d,infra")
    ap.add_argument("--idle", type=float, default=15.0)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    # Stopped from outside: still stop every process started here (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bins = [b.split("=", 1) for b in a.bin]
    d = tempfile.mkdtemp(prefix="dcd-fleet-")
    print(f"fleet: logs and configs in {d}", file=sys.stderr)
    hub = Hub(d)
    rows: list[dict] = []
    try:
        for mode in a.modes.split(","):
            for n in map(int, a.sizes.split(",")):
                for name, path in bins:
                    t = time.monotonic()
                    r = {"bin": name, **run_one(hub, d, path, mode, n, a.idle)}
                    rows.append(r)
                    print(f"fleet: {mode} {name} N={n} ({time.monotonic() - t:.0f} s): {json.dumps(r)}",
                          file=sys.stderr, flush=True)
            mode_rows = [r for r in rows if r["mode"] == mode]
            print(f"\n### {mode}\n\n{table(mode_rows)}\n\n{growth(mode_rows)}\n", flush=True)
    finally:
        for p in list(procs):
            stop(p, signal.SIGKILL)
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
