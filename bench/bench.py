#!/usr/bin/env python3
"""Whole-process benchmark of dcd: the real binary, over a real (loopback) NATS server or a
Zenoh session, against the real Docker Engine, compared with the same work done directly.

Run it through bench/run.sh, which starts the loopback nats-server and builds what is missing:

    bash bench/run.sh            # full run (several minutes), the numbers in BENCHMARKS.md
    bash bench/run.sh --quick    # < 60 s, compared against bench/baseline.json (CI)

Direct use (nats-server already running on 127.0.0.1:P):

    python3 bench/bench.py --nats-url nats://127.0.0.1:P --run-id benchXYZ [--quick]

Everything stays on 127.0.0.1; Zenoh multicast scouting is off in the daemon and the client.
Every container it creates carries the labels dcd-bench=1 and dcd-bench-run=<run id> and is
removed at the end, on failure too. Exit status: 0, or 1 when --quick finds a regression of more
than 2x against bench/baseline.json (or the daemon does not answer at all), 3 on a setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import http.client
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.environ.get("DCD_BENCH_IMAGE", "dcd-test/busybox:latest")
DEVICE_ID = "bench-1"
TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

try:
    import nats  # noqa: E402
    from nats.errors import NoRespondersError, TimeoutError as NatsTimeout  # noqa: E402
except ImportError:  # reported by main()
    nats = None


class SetupError(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# statistics and formatting
# ---------------------------------------------------------------------------------------------

def pct(xs, p):
    """Percentile with linear interpolation between closest ranks."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


class Agg:
    """One figure over repeated runs: median, min, max."""

    def __init__(self, values=None):
        self.v = [x for x in (values or []) if x is not None and not (isinstance(x, float) and math.isnan(x))]

    def add(self, x):
        if x is not None and not (isinstance(x, float) and math.isnan(x)):
            self.v.append(x)

    @property
    def med(self):
        return statistics.median(self.v) if self.v else float("nan")

    @property
    def lo(self):
        return min(self.v) if self.v else float("nan")

    @property
    def hi(self):
        return max(self.v) if self.v else float("nan")

    def fmt(self, f="{:.2f}", unit=""):
        if not self.v:
            return "n/a"
        if len(self.v) == 1:
            return f.format(self.med) + unit
        return f"{f.format(self.med)}{unit} [{f.format(self.lo)}–{f.format(self.hi)}]"

    def to_json(self):
        return {"median": self.med, "min": self.lo, "max": self.hi, "n": len(self.v), "values": self.v}


def ms(ns):
    return ns / 1e6


# ---------------------------------------------------------------------------------------------
# the engine, directly (the floor)
# ---------------------------------------------------------------------------------------------

def docker_socket() -> str:
    h = os.environ.get("DOCKER_HOST", "")
    if h.startswith("unix://"):
        return h[len("unix://"):]
    if h:
        raise SetupError(f"DOCKER_HOST={h}: the benchmark needs the engine on a unix socket")
    return "/var/run/docker.sock"


class UnixHTTP(http.client.HTTPConnection):
    """HTTP/1.1 with keep-alive over the engine's unix socket."""

    def __init__(self, path: str, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._unix_path)
        self.sock = s


class Engine:
    def __init__(self, path: str):
        self.path = path
        self.conn = UnixHTTP(path)

    def call(self, method: str, url: str, body=None) -> tuple[int, bytes]:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                self.conn.request(method, url, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = UnixHTTP(self.path)
                if attempt:
                    raise
        raise AssertionError

    def get_json(self, url: str):
        st, b = self.call("GET", url)
        if st != 200:
            raise RuntimeError(f"engine GET {url}: {st} {b[:200]!r}")
        return json.loads(b)

    def close(self):
        self.conn.close()


def raw_get(path: str, url: str, timeout: float = 120.0) -> bytes:
    """One HTTP/1.0 GET (no chunking: the body runs to EOF)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(f"GET {url} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    chunks = []
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        chunks.append(b)
    s.close()
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"engine GET {url}: {head[:200]!r}")
    return body


def demux_frames(body: bytes):
    """Split the engine's multiplexed log format into (stream, payload) frames."""
    i, n = 0, len(body)
    while i + 8 <= n:
        st = body[i]
        (size,) = struct.unpack(">I", body[i + 4:i + 8])
        yield st, body[i + 8:i + 8 + size]
        i += 8 + size


class EngineEvents(threading.Thread):
    """Follows the engine's /events (container events of this run) and timestamps each arrival."""

    def __init__(self, path: str, run_id: str):
        super().__init__(daemon=True, name="engine-events")
        filt = json.dumps({"type": ["container"], "label": [f"dcd-bench-run={run_id}"]})
        self.url = "/events?filters=" + urllib.parse.quote(filt)
        self.path = path
        self.events = []  # (arrival_ns, event dict)
        self.lock = threading.Lock()
        self.sock = None
        self.ready = threading.Event()

    def run(self):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.path)
            self.sock = s
            s.sendall(f"GET {self.url} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            f = s.makefile("rb", buffering=0)
            # headers
            while True:
                line = f.readline()
                if not line or line in (b"\r\n", b"\n"):
                    break
            self.ready.set()
            buf = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                now = time.time_ns()
                buf += b
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        try:
                            ev = json.loads(line)
                        except ValueError:
                            continue
                        with self.lock:
                            self.events.append((now, ev))
        except OSError:
            pass
        finally:
            self.ready.set()

    def find(self, cid: str, action: str, after_ns: int):
        with self.lock:
            for arr, ev in self.events:
                if ev.get("id") == cid and ev.get("Action") == action and ev.get("timeNano", 0) >= after_ns:
                    return arr, ev
        return None

    def close(self):
        try:
            if self.sock:
                self.sock.shutdown(socket.SHUT_RDWR)
                self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# docker CLI, containers of this run
# ---------------------------------------------------------------------------------------------

def docker(*args, timeout=120, check=True) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


async def adocker(*args, timeout=60) -> str:
    p = await asyncio.create_subprocess_exec("docker", *args, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout)
    except asyncio.TimeoutError:
        p.kill()
        raise RuntimeError(f"docker {' '.join(args)}: timed out")
    if p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {err.decode().strip()}")
    return out.decode().strip()


def labels(run_id):
    return ["--label", "dcd-bench=1", "--label", f"dcd-bench-run={run_id}"]


def create_containers(run_id: str, prefix: str, n: int, cmd=("sleep", "600"), parallel=4) -> list[str]:
    """`docker run -d` n labelled containers, a few at a time. Returns their full ids."""
    names = [f"dcd-bench-{run_id}-{prefix}{i:02d}" for i in range(n)]
    ids = []
    for i in range(0, n, parallel):
        procs = [subprocess.Popen(["docker", "run", "-d", *labels(run_id), "--name", nm, IMAGE, *cmd],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for nm in names[i:i + parallel]]
        for p in procs:
            out, err = p.communicate(timeout=120)
            if p.returncode != 0:
                raise RuntimeError(f"docker run: {err.strip()}")
            ids.append(out.strip())
    return ids


def remove_run_containers(run_id: str) -> int:
    try:
        ids = docker("ps", "-aq", "--filter", f"label=dcd-bench-run={run_id}", check=False, timeout=60).split()
        if ids:
            docker("rm", "-f", *ids, check=False, timeout=300)
        return len(ids)
    except Exception as e:  # noqa: BLE001
        log(f"cleanup of containers failed: {e}")
        return 0


def remove_containers(ids) -> None:
    if ids:
        docker("rm", "-f", *ids, check=False, timeout=300)


# ---------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------

PROCS: list[subprocess.Popen] = []
PIDFILE = [None]  # run.sh kills what is listed here if this program itself is killed
STRIP_ENV_PREFIXES = ("MESSAGING_", "NATS_", "ZENOH_", "DEVICE_CONNECT_", "DCD_", "PORTAL_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    count = 0

    def __init__(self, binary: str, kind: str, tenant: str, logdir: str, nats_url: str | None = None,
                 device_id: str = DEVICE_ID):
        self.kind = kind
        self.tenant = tenant
        self.device_id = device_id
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(STRIP_ENV_PREFIXES) and k not in ("TENANT", "DEVICE_ID", "RUST_LOG")}
        if kind == "nats":
            env.update(NATS_URL=nats_url, DEVICE_CONNECT_DISCOVERY_MODE="d2d",
                       DEVICE_CONNECT_ALLOW_INSECURE="true")
            self.zport = None
        else:
            self.zport = free_port()
            env.update(ZENOH_LISTEN=f"tcp/127.0.0.1:{self.zport}", DCD_ZENOH_MULTICAST="false")
        os.makedirs(logdir, exist_ok=True)
        Daemon.count += 1
        self.logpath = os.path.join(logdir, f"dcd-{kind}-{Daemon.count}.log")
        self.logf = open(self.logpath, "wb")
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen([binary, "--device-id", device_id, "--tenant", tenant], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        PROCS.append(self.proc)
        self.pid = self.proc.pid
        if PIDFILE[0]:
            with open(PIDFILE[0], "a") as f:
                f.write(f"{self.pid}\n")

    @property
    def subject(self):
        return f"device-connect.{self.tenant}.{self.device_id}.cmd"

    @property
    def zkey(self):
        return f"device-connect/{self.tenant}/{self.device_id}/cmd"

    def alive(self):
        return self.proc.poll() is None

    def status(self) -> dict:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmData"):
                    out[k] = int(v.split()[0])
                elif k == "Threads":
                    out[k] = int(v)
        return out

    def cpu_ticks(self) -> int:
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime, stime (fields 14, 15)

    def thread_ticks(self) -> dict:
        out = {}
        for t in glob.glob(f"/proc/{self.pid}/task/*"):
            try:
                with open(f"{t}/stat") as f:
                    raw = f.read()
                comm = raw[raw.index("(") + 1:raw.rindex(")")]
                rest = raw.rsplit(")", 1)[1].split()
                out[f"{comm}/{os.path.basename(t)}"] = int(rest[11]) + int(rest[12])
            except (OSError, ValueError):
                pass
        return out

    def thread_names(self) -> dict:
        names = {}
        for t in glob.glob(f"/proc/{self.pid}/task/*/comm"):
            try:
                with open(t) as f:
                    n = f.read().strip()
                n = re.sub(r"[-_]?\d+$", "", n) or n
                names[n] = names.get(n, 0) + 1
            except OSError:
                pass
        return names

    def stop(self, timeout=5.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()
        if self.proc in PROCS:
            PROCS.remove(self.proc)
        return self.proc.returncode

    def tail_log(self, n=15) -> str:
        try:
            with open(self.logpath, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


def thread_group(comm: str) -> str:
    """Thread name without its per-instance suffix: logs-<id> -> logs, worker-3 -> worker."""
    if comm.startswith("logs-"):
        return "logs"
    return re.sub(r"-\d+$", "", comm)


def pids_named(comm: str) -> list[int]:
    """Pids whose /proc/<pid>/comm is exactly `comm` (read only; never used to signal anything)."""
    out = []
    for p in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(p) as f:
                if f.read().strip() == comm:
                    out.append(int(p.split("/")[2]))
        except (OSError, ValueError):
            pass
    return out


def proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def kill_all():
    for p in list(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + 3
    for p in list(PROCS):
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
    PROCS.clear()


# ---------------------------------------------------------------------------------------------
# RPC clients
# ---------------------------------------------------------------------------------------------

class RpcError(Exception):
    pass


_ID = [0]


def req(method: str, params=None) -> bytes:
    _ID[0] += 1
    return json.dumps({"jsonrpc": "2.0", "id": _ID[0], "method": method, "params": params or {}}).encode()


def result_of(data: bytes):
    r = json.loads(data)
    if "error" in r:
        raise RpcError(r["error"].get("message"))
    return r["result"]


async def nrpc(nc, d: Daemon, method: str, params=None, timeout=30.0):
    msg = await nc.request(d.subject, req(method, params), timeout=timeout)
    return result_of(msg.data)


async def wait_answer_nats(nc, d: Daemon, limit=15.0) -> float:
    """Poll get_status until the daemon answers; returns seconds since spawn."""
    payload = req("get_status")
    while True:
        if not d.alive():
            raise RuntimeError(f"dcd exited with {d.proc.returncode}:\n{d.tail_log()}")
        try:
            msg = await nc.request(d.subject, payload, timeout=0.1)
            t = time.perf_counter() - d.t_spawn
            result_of(msg.data)
            return t
        except NoRespondersError:
            await asyncio.sleep(0.001)
        except NatsTimeout:
            pass
        if time.perf_counter() - d.t_spawn > limit:
            raise RuntimeError(f"dcd did not answer over NATS within {limit} s:\n{d.tail_log()}")


def zenoh_session(port: int, limit=15.0):
    import zenoh
    deadline = time.time() + limit
    while True:  # the daemon listens once it is up; connect only then
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {limit} s")
            time.sleep(0.01)
    conf = zenoh.Config()
    conf.insert_json5("mode", '"client"')
    conf.insert_json5("connect/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    conf.insert_json5("scouting/gossip/enabled", "false")
    return zenoh.open(conf)


def zrpc_raw(session, key: str, payload: bytes, timeout=10.0) -> bytes:
    for reply in session.get(key, payload=payload, timeout=timeout):
        if reply.ok is not None:
            return reply.ok.payload.to_bytes()
    raise TimeoutError(f"no reply from {key}")


def zrpc(session, d: Daemon, method: str, params=None, timeout=10.0):
    return result_of(zrpc_raw(session, d.zkey, req(method, params), timeout))


def wait_answer_zenoh(d: Daemon, limit=15.0):
    s = zenoh_session(d.zport, limit)
    deadline = time.time() + limit
    while True:
        if not d.alive():
            raise RuntimeError(f"dcd exited with {d.proc.returncode}:\n{d.tail_log()}")
        try:
            zrpc(s, d, "get_status", timeout=1.0)
            return s
        except TimeoutError:
            if time.time() > deadline:
                s.close()
                raise RuntimeError(f"dcd did not answer over Zenoh within {limit} s:\n{d.tail_log()}")


# ---------------------------------------------------------------------------------------------
# measurement loops (all bounded in count and time)
# ---------------------------------------------------------------------------------------------

async def lat_nats(nc, d: Daemon, method, params, n, conc=1, limit=120.0):
    """n requests spread over `conc` sequential callers; returns (latencies ns, wall s)."""
    payload = req(method, params)
    lats = []
    left = [n]
    deadline = time.perf_counter() + limit

    async def caller():
        while left[0] > 0 and time.perf_counter() < deadline:
            left[0] -= 1
            t0 = time.perf_counter_ns()
            msg = await nc.request(d.subject, payload, timeout=30)
            lats.append(time.perf_counter_ns() - t0)
            if b'"error"' in msg.data[:40]:
                result_of(msg.data)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(conc)))
    return lats, time.perf_counter() - t0


def threaded_calls(n, conc, limit, open_caller):
    """n calls spread over `conc` threads, until `limit` s; `open_caller()` gives each thread its
    (call, close). Returns (latencies ns, wall s); the first error ends its thread and is raised."""
    lats, err = [], []
    lock = threading.Lock()
    left = [n]
    deadline = time.perf_counter() + limit

    def caller():
        call, close = open_caller()
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter_ns()
                call()
                dt = time.perf_counter_ns() - t0
                with lock:
                    lats.append(dt)
        except Exception as e:  # noqa: BLE001 - raised below, in the caller's thread
            err.append(e)
        finally:
            close()

    t0 = time.perf_counter()
    ths = [threading.Thread(target=caller) for _ in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    if err:
        raise err[0]
    return lats, time.perf_counter() - t0


def lat_zenoh(session, d: Daemon, method, params, n, conc=1, limit=120.0):
    payload = req(method, params)
    return threaded_calls(n, conc, limit, lambda: (lambda: zrpc_raw(session, d.zkey, payload, 30), lambda: None))


def lat_engine(sock_path, urls_fn, n, conc=1, limit=120.0):
    """The floor: the same engine calls made directly; urls_fn(engine) does one logical call."""
    def open_caller():
        e = Engine(sock_path)
        return (lambda: urls_fn(e)), e.close
    return threaded_calls(n, conc, limit, open_caller)


def floor_list(e: Engine):
    e.get_json("/containers/json?all=1")


def floor_list_inspect(e: Engine):
    for c in e.get_json("/containers/json?all=1"):
        st, _ = e.call("GET", f"/containers/{c['Id']}/json")
        # a container removed between list and inspect (another test) is simply gone


def floor_info(e: Engine):
    e.get_json("/info")


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.a = args
        self.quick = args.quick
        self.run_id = args.run_id
        self.bin = args.bin
        self.sock = docker_socket()
        self.logdir = args.logdir
        self.res = {}      # name -> Agg or value, for JSON output
        self.rows = []     # table rows
        self.notes = []
        self.rounds = 1 if self.quick else args.rounds
        self.ids_big: list[str] = []
        self.trace: list[dict] = []  # per-transition event latencies (in the JSON output)

    def tenant(self, tag=""):
        return f"{self.run_id}{tag}"

    def row(self, section, metric, value, floor="", ratio="", overhead="", goal="", verdict=""):
        self.rows.append((section, metric, value, floor, ratio, overhead, goal, verdict))
        print(f"  {section:<10} {metric:<44} {value:<34} {floor:<28} {ratio:<18} {overhead:<18} {goal} {verdict}",
              flush=True)

    def put(self, key, agg):
        self.res[key] = agg.to_json() if isinstance(agg, Agg) else agg

    # --- binary sizes ----------------------------------------------------------------------
    def sizes(self):
        variants = [
            ("x86_64 musl, nats+zenoh", "target/bench-all/x86_64-unknown-linux-musl/release/dcd"),
            ("x86_64 musl, nats only", "target/bench-nats/x86_64-unknown-linux-musl/release/dcd"),
            ("x86_64 musl, zenoh only", "target/bench-zenoh/x86_64-unknown-linux-musl/release/dcd"),
            ("aarch64 musl (cross/build-aarch64.sh)", "target/aarch64-unknown-linux-musl/release/dcd"),
(f"{os.path.relpath(self.bin, ROOT) if os.path.isabs(self.bin) else self.bin} (benchmarked)",
             os.path.relpath(self.bin, ROOT) if os.path.isabs(self.bin) else self.bin),
        ]
        sizes = {}
        for label, rel in variants:
            p = os.path.join(ROOT, rel)
            if not os.path.exists(p):
                self.row("size", label, "not built")
                continue
            sz = os.path.getsize(p)
            try:
                kind = subprocess.run(["file", "-L", p], capture_output=True, text=True).stdout
                static = "static" if ("statically linked" in kind or "static-pie" in kind) else "dynamic"
            except OSError:
                static = "?"
            age = time.time() - os.path.getmtime(p)
            sizes[label] = sz
            self.row("size", label, f"{sz / 1048576:.2f} MiB ({sz} B, {static})", "", "", "",
                     "", f"built {age / 60:.0f} min ago" if age > 3600 else "")
        self.put("sizes_bytes", sizes)

    # --- start-up ----------------------------------------------------------------------------
    async def startup(self, nc, against=None, n=None):
        """Start-up of `--bin`; with `against`, of both binaries, starts interleaved so that both
        see the same load."""
        n = n or (5 if self.quick else 10)
        bins = [self.bin] + ([against] if against else [])
        times = {b: [] for b in bins}
        for i in range(n):
            for b in bins:
                d = Daemon(b, "nats", self.tenant("s"), self.logdir, self.a.nats_url)
                try:
                    times[b].append(await wait_answer_nats(nc, d) * 1000)
                finally:
                    d.stop()
        agg = Agg(times[self.bin])
        self.put("startup_ms", agg)
        self.row("start-up", f"spawn → first get_status answer (NATS, n={n})", agg.fmt("{:.1f}", " ms"),
                 "", "", "", "≤ 20 ms", verdict(agg.med <= 20))
        if against:
            other = Agg(times[against])
            self.put("startup_against_ms", other)
            self.row("start-up", f"the same, {against}", other.fmt("{:.1f}", " ms"), "", "", "", "≤ 20 ms",
                     verdict(other.med <= 20))
        return agg

    # --- memory and threads ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def answering(self, nc, binary, kind, tag):
        """A daemon of `binary` on `kind`, once it answers; with a Zenoh session to it for zenoh.
        Both are closed on the way out, whatever happens."""
        d = Daemon(binary, kind, self.tenant(tag), self.logdir, self.a.nats_url)
        zs = None
        try:
            if kind == "nats":
                await wait_answer_nats(nc, d)
            else:
                zs = wait_answer_zenoh(d)
            yield d, zs
        finally:
            if zs is not None:
                zs.close()
            d.stop()

    async def memory(self, nc, kind, n_rpcs):
        """Idle RSS and threads, then two bursts of n_rpcs get_status from 8 callers: growth over the
        first burst is warm-up (allocator caches, buffers reaching their working size); growth over
        the second is what a leak would show."""
        idle_rss, idle_thr, after_rss, after_thr, warm, delta, hwm, anon, filed = (Agg() for _ in range(9))
        names = {}
        for r in range(self.rounds):
            async with self.answering(nc, self.bin, kind, f"m{kind[0]}{r}") as (d, zs):
                await asyncio.sleep(3.0)
                s0 = d.status()
                names = d.thread_names()
                snaps = []
                for _ in range(2):
                    if kind == "nats":
                        lats, _ = await lat_nats(nc, d, "get_status", {}, n_rpcs, conc=8, limit=120)
                    else:
                        lats, _ = lat_zenoh(zs, d, "get_status", {}, n_rpcs, conc=8, limit=120)
                    if len(lats) < n_rpcs:
                        self.notes.append(f"{kind}: only {len(lats)} of {n_rpcs} RPCs within the time limit")
                    await asyncio.sleep(1.0)
                    snaps.append(d.status())
                s1, s2 = snaps
                idle_rss.add(s0["VmRSS"] / 1024)
                anon.add(s0.get("RssAnon", 0) / 1024)
                filed.add(s0.get("RssFile", 0) / 1024)
                idle_thr.add(s0["Threads"])
                after_rss.add(s2["VmRSS"] / 1024)
                after_thr.add(s2["Threads"])
                warm.add(s1["VmRSS"] - s0["VmRSS"])
                delta.add(s2["VmRSS"] - s1["VmRSS"])
                hwm.add(s2["VmHWM"] / 1024)
        K = kind.upper() if kind == "nats" else "Zenoh"
        self.row("memory", f"{K}: idle RSS (3 s after first answer)", idle_rss.fmt("{:.2f}", " MiB"),
                 "", "", "", "≤ 8 MiB", verdict(idle_rss.med <= 8)
                 + f" anon {anon.fmt('{:.2f}')} + file-backed {filed.fmt('{:.2f}')} MiB")
        self.row("memory", f"{K}: threads idle / after", f"{idle_thr.fmt('{:.0f}')} / {after_thr.fmt('{:.0f}')}",
                 "", "", "", "", " ".join(f"{k}×{v}" if v > 1 else k for k, v in sorted(names.items())))
        self.row("memory", f"{K}: RSS after 2×{n_rpcs} get_status (8 callers)", after_rss.fmt("{:.2f}", " MiB"),
                 "", "", f"Δ1 {warm.fmt('{:+.0f}', ' KiB')}", "", "first burst (warm-up)")
        self.row("memory", f"{K}: RSS growth over the second {n_rpcs}", f"{delta.fmt('{:+.0f}', ' KiB')}",
                 "", "", "", "no growth", "ok" if delta.hi <= 64 else "GREW")
        self.row("memory", f"{K}: peak RSS (VmHWM)", hwm.fmt("{:.2f}", " MiB"))
        self.put(f"rss_idle_mib_{kind}", idle_rss)
        self.put(f"rss_idle_anon_mib_{kind}", anon)
        self.put(f"rss_idle_file_mib_{kind}", filed)
        self.put(f"rss_after_mib_{kind}", after_rss)
        self.put(f"rss_warmup_kib_{kind}", warm)
        self.put(f"rss_delta_kib_{kind}", delta)
        self.put(f"rss_peak_mib_{kind}", hwm)
        self.put(f"threads_idle_{kind}", idle_thr)
        self.put(f"threads_after_{kind}", after_thr)
        self.put(f"thread_names_{kind}", names)
        return idle_rss, delta

    async def memory_variants(self, nc):
        """Idle RSS of the static musl builds (the deployed form), one sample each."""
        variants = [("musl nats+zenoh", "target/bench-all", ("nats", "zenoh")),
                    ("musl nats only", "target/bench-nats", ("nats",)),
                    ("musl zenoh only", "target/bench-zenoh", ("zenoh",))]
        out = {}
        for label, tdir, kinds in variants:
            binary = os.path.join(ROOT, tdir, "x86_64-unknown-linux-musl/release/dcd")
            if not os.access(binary, os.X_OK):
                continue
            for kind in kinds:
                async with self.answering(nc, binary, kind, f"v{kind[0]}") as (d, _):
                    await asyncio.sleep(3.0)
                    st = d.status()
                K = "NATS" if kind == "nats" else "Zenoh"
                self.row("memory", f"{label}: {K} idle RSS", f"{st['VmRSS'] / 1024:.2f} MiB", "", "", "",
                         "≤ 8 MiB",
                         f"anon {st.get('RssAnon', 0) / 1024:.2f} + file-backed {st.get('RssFile', 0) / 1024:.2f} MiB,"
                         f" {st['Threads']} threads")
                out[f"{label}/{kind}"] = st
        self.put("rss_idle_musl_kib", out)

    # --- RPC latency ----------------------------------------------------------------------------
    def lat_rows(self, name, rpc_rounds, floor_rounds, conc, floor_name, goal_overhead=None):
        p50, p99, f50, f99, ratio, over, thr = Agg(), Agg(), Agg(), Agg(), Agg(), Agg(), Agg()
        for (l, w), (fl, fw) in zip(rpc_rounds, floor_rounds):
            a50, a99 = ms(pct(l, 50)), ms(pct(l, 99))
            p50.add(a50)
            p99.add(a99)
            thr.add(len(l) / w)
            if fl:
                b50, b99 = ms(pct(fl, 50)), ms(pct(fl, 99))
                f50.add(b50)
                f99.add(b99)
                ratio.add(a50 / b50)
                over.add(a50 - b50)
        n = len(rpc_rounds[0][0]) if rpc_rounds else 0
        who = f"{conc} callers" if conc > 1 else "sequential"
        ok = ""
        if goal_overhead is not None and over.v:
            ok = verdict(over.med <= goal_overhead)
        self.row("latency", f"{name} p50 ({who}, n={n})", p50.fmt("{:.3f}", " ms"),
                 f"{floor_name} {f50.fmt('{:.3f}', ' ms')}" if f50.v else "",
                 f"×{ratio.fmt('{:.2f}')}" if ratio.v else "",
                 f"+{over.fmt('{:.3f}', ' ms')}" if over.v else "",
                 f"≤ +{goal_overhead} ms" if goal_overhead is not None else "", ok)
        self.row("latency", f"{name} p99 ({who})", p99.fmt("{:.3f}", " ms"),
                 f"{floor_name} {f99.fmt('{:.3f}', ' ms')}" if f99.v else "")
        if conc > 1:
            self.row("latency", f"{name} throughput ({who})", thr.fmt("{:.0f}", " req/s"))
        key = re.sub(r"[^a-z0-9]+", "_", f"{name}_{who}".lower()).strip("_")
        self.put(f"lat_{key}_p50_ms", p50)
        self.put(f"lat_{key}_p99_ms", p99)
        self.put(f"lat_{key}_floor_p50_ms", f50)
        self.put(f"lat_{key}_floor_p99_ms", f99)
        self.put(f"lat_{key}_ratio", ratio)
        self.put(f"lat_{key}_overhead_ms", over)
        return p50

    async def echo_rounds(self, nc, n, conc):
        """The transport floor: a NATS responder inside this client process answering the same
        request bytes (client + server round trip, no dcd)."""
        subj = f"{self.tenant('echo')}.echo"

        async def echo(m):
            await m.respond(m.data)

        sub = await nc.subscribe(subj, cb=echo)
        await nc.flush()
        fake = type("D", (), {"subject": subj})()
        await lat_nats(nc, fake, "get_status", {}, 100)
        out = [await lat_nats(nc, fake, "get_status", {}, n, conc=conc) for _ in range(self.rounds)]
        await sub.unsubscribe()
        return out

    async def latency_get_status(self, nc, d, zs, zd):
        n_seq = 500 if self.quick else 2000
        n_conc = 4000
        rpc_s, rpc_c, z_s = [], [], []
        await lat_nats(nc, d, "get_status", {}, 100)  # warm-up
        for _ in range(self.rounds):
            rpc_s.append(await lat_nats(nc, d, "get_status", {}, n_seq))
            if not self.quick:
                rpc_c.append(await lat_nats(nc, d, "get_status", {}, n_conc, conc=8))
                if zs is not None:
                    z_s.append(lat_zenoh(zs, zd, "get_status", {}, n_seq))
        # get_status answers from the driver's cached engine info (one /info per 5 s), so its
        # floor is the transport round trip itself: a NATS echo responder in this client.
        echo_s = await self.echo_rounds(nc, n_seq, 1)
        p50 = self.lat_rows("NATS get_status", rpc_s, echo_s, 1, "echo", goal_overhead=1)
        if rpc_c:
            echo_c = await self.echo_rounds(nc, n_conc, 8)
            self.lat_rows("NATS get_status", rpc_c, echo_c, 8, "echo")
        if z_s:
            self.lat_rows("Zenoh get_status", z_s, [([], 0)] * len(z_s), 1, "")
        return p50

    def client_call(self, d: Daemon, zd):
        """`dcd call` as a user runs it (issue 15): a fresh process opens its own session, asks
        get_status, prints the answer and exits. Spawn to exit bounds its first answer from above."""
        n = 10 if self.quick else 50
        base = {k: v for k, v in os.environ.items() if not k.startswith(STRIP_ENV_PREFIXES) and k != "TENANT"}
        targets = [("NATS", "nats", d, {"MESSAGING_BACKEND": "nats", "NATS_URL": self.a.nats_url})]
        if zd is not None:
            targets.append(("Zenoh", "zenoh", zd, {"MESSAGING_BACKEND": "zenoh",
                                                   "ZENOH_CONNECT": f"tcp/127.0.0.1:{zd.zport}"}))
        for label, kind, daemon, env in targets:
            env = {**base, **env, "TENANT": daemon.tenant, "DEVICE_CONNECT_DISCOVERY_MODE": "d2d"}
            times = Agg()
            for _ in range(n):
                t0 = time.perf_counter()
                r = subprocess.run([self.bin, "call", daemon.device_id, "get_status"], env=env,
                                   capture_output=True, timeout=30)
                elapsed = (time.perf_counter() - t0) * 1000
                if r.returncode != 0:
                    raise RuntimeError(f"dcd call failed: {r.stderr.decode(errors='replace')}")
                times.add(elapsed)
            self.row("client", f"{label}: dcd call get_status, spawn to exit", times.fmt("{:.1f}", " ms"),
                     "", "", "", "≤ 50 ms", verdict(times.med <= 50))
            self.put(f"client_call_ms_{kind}", times)

    async def latency_list(self, nc, d, zs, zd, n_containers):
        n_seq = 100
        n_conc = 200
        params = {"all_containers": True}
        await lat_nats(nc, d, "list_containers", params, 5)
        lat_engine(self.sock, floor_list_inspect, 5)
        r_s, r_c, f_s, f_c, fi_s, fi_c, z_s, zf_s = [], [], [], [], [], [], [], []
        e = Engine(self.sock)
        for _ in range(self.rounds):
            # sequential: the RPC and its floors interleaved call by call, so engine drift
            # (other load, its caches) hits both alike
            rl, fl, fil = [], [], []
            t0 = time.perf_counter()
            for _ in range(n_seq):
                a = time.perf_counter_ns()
                await nrpc(nc, d, "list_containers", params)
                b = time.perf_counter_ns()
                floor_list(e)
                c = time.perf_counter_ns()
                floor_list_inspect(e)
                rl.append(b - a)
                fl.append(c - b)
                fil.append(time.perf_counter_ns() - c)
            w = time.perf_counter() - t0
            r_s.append((rl, w))
            f_s.append((fl, w))
            fi_s.append((fil, w))
            r_c.append(await lat_nats(nc, d, "list_containers", params, n_conc, conc=8))
            f_c.append(lat_engine(self.sock, floor_list, n_conc, conc=8))
            fi_c.append(lat_engine(self.sock, floor_list_inspect, n_conc, conc=8))
            if zs is not None:
                zl, zf = [], []
                payload = req("list_containers", params)
                for _ in range(n_seq):
                    a = time.perf_counter_ns()
                    result_of(zrpc_raw(zs, zd.zkey, payload, 30))
                    b = time.perf_counter_ns()
                    floor_list_inspect(e)
                    zl.append(b - a)
                    zf.append(time.perf_counter_ns() - b)
                z_s.append((zl, 1.0))
                zf_s.append((zf, 1.0))
        e.close()
        nm = f"NATS list_containers ({n_containers} ctrs)"
        self.lat_rows(nm, r_s, f_s, 1, "list")
        self.lat_rows(nm, r_s, fi_s, 1, "list+inspects", goal_overhead=1)
        self.lat_rows(nm, r_c, f_c, 8, "list")
        self.lat_rows(nm, r_c, fi_c, 8, "list+inspects")
        if z_s:
            self.lat_rows(f"Zenoh list_containers ({n_containers} ctrs)", z_s, zf_s, 1, "list+inspects",
                          goal_overhead=1)

    # --- reads from the state thread's view (issue 14) -------------------------------------------
    async def reads(self, nc, d):
        """list_containers (all, this run's label) beside get_status, call by call in one run, with
        20 and then 200 containers of this run: p50 sequential, and calls/s from 8 callers."""
        params = {"all_containers": True, "label": f"dcd-bench-run={self.run_id}"}
        ids = []
        try:
            for n, over_goal in ((20, 0.3), (200, 1.0)):
                log(f"reads: creating {n - len(ids)} containers")
                ids += create_containers(self.run_id, f"r{n}-", n - len(ids), parallel=8)
                deadline = time.perf_counter() + 60
                while (await nrpc(nc, d, "list_containers", params))["count"] != n:
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"dcd did not list the {n} containers within 60 s")
                    await asyncio.sleep(0.1)
                n_total = len(Engine(self.sock).get_json("/containers/json?all=1"))
                await lat_nats(nc, d, "list_containers", params, 50)  # warm-up
                g50, l50, over, g8, l8 = Agg(), Agg(), Agg(), Agg(), Agg()
                for _ in range(self.rounds):
                    g, l = [], []
                    for _ in range(200):
                        a = time.perf_counter_ns()
                        await nrpc(nc, d, "get_status")
                        b = time.perf_counter_ns()
                        await nrpc(nc, d, "list_containers", params)
                        g.append(b - a)
                        l.append(time.perf_counter_ns() - b)
                    g50.add(ms(pct(g, 50)))
                    l50.add(ms(pct(l, 50)))
                    over.add(ms(pct(l, 50)) - ms(pct(g, 50)))
                    lats, w = await lat_nats(nc, d, "get_status", {}, 2000, conc=8)
                    g8.add(len(lats) / w)
                    lats, w = await lat_nats(nc, d, "list_containers", params, 2000, conc=8)
                    l8.add(len(lats) / w)
                ok = over.med <= over_goal
                self.row("reads", f"list_containers p50 ({n} ctrs; {n_total} on the engine)", l50.fmt(unit=" ms"),
                         f"get_status {g50.fmt(unit=' ms')}", "", f"+{over.fmt(unit=' ms')}",
                         f"≤ get_status + {over_goal} ms", verdict(ok))
                goal8 = "≥ 3000 calls/s" if n == 20 else ""
                self.row("reads", f"list_containers, 8 callers ({n} ctrs)", l8.fmt("{:.0f}", " calls/s"),
                         f"get_status {g8.fmt('{:.0f}', ' calls/s')}", "", "", goal8,
                         verdict(l8.med >= 3000) if n == 20 else "")
                self.put(f"list_p50_ms_{n}", l50)
                self.put(f"list_get_status_p50_ms_{n}", g50)
                self.put(f"list_calls_per_s_8_{n}", l8)
                self.put(f"list_get_status_calls_per_s_8_{n}", g8)
        finally:
            remove_containers(ids)

    # --- provision cycle -----------------------------------------------------------------------
    async def provision(self, nc, d):
        n = 10
        rpc, cli, api = Agg(), Agg(), Agg()
        e = Engine(self.sock)
        for r in range(self.rounds):
            t_rpc, t_cli, t_api = [], [], []
            for i in range(n):
                name = f"dcd-bench-{self.run_id}-p{r}{i:02d}"
                spec = {"image": IMAGE, "name": name, "command": ["sleep", "600"],
                        "labels": {"dcd-bench": "1", "dcd-bench-run": self.run_id}}
                t0 = time.perf_counter()
                await nrpc(nc, d, "provision_container", {"spec": spec}, timeout=60)
                await nrpc(nc, d, "remove_container", {"container_id": name, "force": True}, timeout=60)
                t_rpc.append(time.perf_counter() - t0)

                name = f"dcd-bench-{self.run_id}-c{r}{i:02d}"
                t0 = time.perf_counter()
                await adocker("run", "-d", *labels(self.run_id), "--name", name, IMAGE, "sleep", "600")
                await adocker("rm", "-f", name)
                t_cli.append(time.perf_counter() - t0)

                name = f"dcd-bench-{self.run_id}-a{r}{i:02d}"
                body = {"Image": IMAGE, "Cmd": ["sleep", "600"],
                        "Labels": {"dcd-bench": "1", "dcd-bench-run": self.run_id}}
                t0 = time.perf_counter()
                st, b = e.call("POST", f"/containers/create?name={name}", body)
                if st != 201:
                    raise RuntimeError(f"engine create: {st} {b[:200]!r}")
                cid = json.loads(b)["Id"]
                st, b = e.call("POST", f"/containers/{cid}/start")
                if st not in (204, 304):
                    raise RuntimeError(f"engine start: {st} {b[:200]!r}")
                e.get_json(f"/containers/{cid}/json")
                st, b = e.call("DELETE", f"/containers/{cid}?force=1")
                if st != 204:
                    raise RuntimeError(f"engine delete: {st} {b[:200]!r}")
                t_api.append(time.perf_counter() - t0)
            rpc.add(statistics.median(t_rpc) * 1000)
            cli.add(statistics.median(t_cli) * 1000)
            api.add(statistics.median(t_api) * 1000)
        e.close()
        ratio = Agg([a / b for a, b in zip(rpc.v, cli.v)])
        ratio_api = Agg([a / b for a, b in zip(rpc.v, api.v)])
        self.row("provision", f"provision_container+remove_container (n={n}/round)", rpc.fmt("{:.1f}", " ms"),
                 f"docker run -d + rm -f {cli.fmt('{:.1f}', ' ms')}", f"×{ratio.fmt('{:.2f}')}",
                 f"{rpc.med - cli.med:+.1f} ms", "≤ ×1.2 of CLI", verdict(ratio.med <= 1.2))
        self.row("provision", "  same vs the engine API directly", "",
                 f"create+start+inspect+delete {api.fmt('{:.1f}', ' ms')}", f"×{ratio_api.fmt('{:.2f}')}",
                 f"{rpc.med - api.med:+.1f} ms")
        self.put("provision_rpc_ms", rpc)
        self.put("provision_cli_ms", cli)
        self.put("provision_api_ms", api)
        self.put("provision_ratio_cli", ratio)
        self.put("provision_ratio_api", ratio_api)

    # --- idle CPU --------------------------------------------------------------------------------
    async def idle_cpu(self, daemons, n_present):
        window = 10.0 if self.quick else 60.0
        parts = 1 if self.quick else 3
        per = {d.kind: Agg() for d in daemons}
        engine_pids = pids_named("dockerd")
        e0 = sum(proc_ticks(p) for p in engine_pids)
        start_threads = {d.kind: d.thread_ticks() for d in daemons}
        total0 = {d.kind: d.cpu_ticks() for d in daemons}
        t_all = time.perf_counter()
        for _ in range(parts):
            c0 = {d.kind: d.cpu_ticks() for d in daemons}
            t0 = time.perf_counter()
            await asyncio.sleep(window / parts)
            dt = time.perf_counter() - t0
            for d in daemons:
                per[d.kind].add((d.cpu_ticks() - c0[d.kind]) / TICK / dt * 100)
        dt_all = time.perf_counter() - t_all
        for d in daemons:
            K = "NATS" if d.kind == "nats" else "Zenoh"
            tot = (d.cpu_ticks() - total0[d.kind]) / TICK
            t1 = d.thread_ticks()
            busy = sorted(((t1[k] - start_threads[d.kind].get(k, 0), k) for k in t1), reverse=True)
            busy = [f"{k.split('/')[0]} {v * 1000 // TICK} ms" for v, k in busy if v > 0][:4]
            a = per[d.kind]
            self.row("idle CPU", f"{K}: {window:.0f} s idle, {n_present} containers"
                     + (f" ({parts}×{window / parts:.0f} s)" if parts > 1 else ""),
                     a.fmt("{:.3f}", " %") if parts > 1 else f"{tot / dt_all * 100:.3f} %",
                     "", "", f"{tot * 1000:.0f} ms CPU", "< 0.5 % core" if d.kind == "nats" else "",
                     (verdict(a.med < 0.5) if d.kind == "nats" else "") + (f" busiest: {', '.join(busy)}" if busy else ""))
            self.put(f"idle_cpu_pct_{d.kind}", a)
            self.put(f"idle_cpu_ms_total_{d.kind}", tot * 1000)
        if engine_pids:
            e1 = sum(proc_ticks(p) for p in engine_pids)
            pc = (e1 - e0) / TICK / dt_all * 100
            self.row("idle CPU", "  dockerd over the same window", f"{pc:.3f} %", "", "", "", "",
                     "(the whole engine: includes anything else using it)")
            self.put("idle_cpu_pct_dockerd", pc)
        return per.get("nats")

    # --- event latency --------------------------------------------------------------------------
    async def event_latency(self, nc, d):
        n = 50
        name = f"dcd-bench-{self.run_id}-ev"
        cid = await adocker("run", "-d", *labels(self.run_id), "--name", name, IMAGE, "sleep", "600")
        short = cid[:12]
        got = []  # (arrival_ns, params)
        wake = asyncio.Event()

        async def on_event(m):
            now = time.time_ns()
            try:
                p = json.loads(m.data)["params"]
            except (ValueError, KeyError):
                return
            got.append((now, p))
            wake.set()

        subj = f"device-connect.{d.tenant}.{d.device_id}.event.container_state_changed"
        sub = await nc.subscribe(subj, cb=on_event)
        await nc.flush()
        lat, floor = Agg(), Agg()
        p50s, p99s, f50s, f99s = Agg(), Agg(), Agg(), Agg()
        missing = 0
        for r in range(self.rounds):
            ev = EngineEvents(self.sock, self.run_id)
            ev.start()
            ev.ready.wait(5)
            await asyncio.sleep(0.3)
            lats, floors = [], []
            for i in range(n):
                # container is running at the start: even steps stop it, odd steps start it
                want, action = ("exited", "die") if i % 2 == 0 else ("running", "start")
                t_cmd = time.time_ns()
                if want == "exited":
                    await adocker("stop", "-t", "0", name)
                else:
                    await adocker("start", name)
                hit = None
                deadline = time.time() + 5
                while hit is None and time.time() < deadline:
                    for arr, p in got:
                        if arr >= t_cmd and p.get("container_id") == short and p.get("state") == want:
                            hit = arr
                            break
                    if hit is None:
                        wake.clear()
                        try:
                            await asyncio.wait_for(wake.wait(), 0.25)
                        except asyncio.TimeoutError:
                            pass
                eng = None
                for _ in range(50):
                    eng = ev.find(cid, action, t_cmd)
                    if eng:
                        break
                    await asyncio.sleep(0.02)
                got.clear()
                if hit is None or eng is None:
                    missing += 1
                    continue
                tn = eng[1]["timeNano"]
                lats.append(hit - tn)
                floors.append(eng[0] - tn)
                self.trace.append({"round": r, "step": i, "state": want, "dcd_ms": ms(hit - tn),
                                   "engine_reader_ms": ms(eng[0] - tn)})
            ev.close()
            if lats:
                p50s.add(ms(pct(lats, 50)))
                p99s.add(ms(pct(lats, 99)))
                f50s.add(ms(pct(floors, 50)))
                f99s.add(ms(pct(floors, 99)))
        await sub.unsubscribe()
        await adocker("rm", "-f", name)
        self.row("events", f"engine timeNano → container_state_changed p50 (n={n})", p50s.fmt("{:.2f}", " ms"),
                 f"engine /events reader {f50s.fmt('{:.2f}', ' ms')}", "",
                 f"+{Agg([a - b for a, b in zip(p50s.v, f50s.v)]).fmt('{:.2f}', ' ms')}", "p50 ≤ 50 ms",
                 verdict(p50s.med <= 50))
        self.row("events", "  p99", p99s.fmt("{:.2f}", " ms"), f"engine /events reader {f99s.fmt('{:.2f}', ' ms')}",
                 "", "", "", f"{missing} transitions missed" if missing else "")
        by = {}
        for t in self.trace:
            by.setdefault(t["state"], []).append(t["dcd_ms"])
        for st, xs in sorted(by.items()):
            self.row("events", f"  → {st}: p50 / p99 / max (all rounds, n={len(xs)})",
                     f"{pct(xs, 50):.2f} / {pct(xs, 99):.2f} / {max(xs):.2f} ms")
        self.put("event_p50_ms", p50s)
        self.put("event_p99_ms", p99s)
        self.put("event_floor_p50_ms", f50s)
        self.put("event_floor_p99_ms", f99s)
        self.put("event_trace", self.trace)
        self.put("event_missed", missing)

    # --- log follow -----------------------------------------------------------------------------
    async def client_ceiling(self, nc, n=200000):
        """How fast the log-counting subscriber takes log events at all, fed by nats-py in this
        process (a lower bound): the harness must be faster than what it measures."""
        subj = f"{self.tenant('ceil')}.x"
        st = LogCount(n, b"")
        sub = RawSub(self.a.nats_url, subj, st)
        sub.start()
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            body = ('{"jsonrpc":"2.0","method":"container_log_line","params":{"_trace_id":"0123456789abcdef",'
                    f'"container_id":"ceil","event_id":"01234567","line":"{i:060d}","stream":"stdout",'
                    '"ts":"2026-11-22T07:00:00Z"}}').encode()
            await nc.publish(subj, body)
        await nc.flush()
        t_pub = time.perf_counter() - t0
        deadline = time.time() + 30
        while st.unique < n and time.time() < deadline:
            await asyncio.sleep(0.05)
        sub.close()
        return st.rate(), st.unique, n / t_pub

    def engine_follow(self, cid: str, n: int, limit=60.0) -> "LogCount":
        """The floor for a live follow: the engine's own follow stream, read directly."""
        st = LogCount(n, b"")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        s.settimeout(5.0)
        s.sendall(f"GET /containers/{cid}/logs?stdout=1&stderr=1&follow=1 HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        buf, head = b"", True
        t_end = time.time() + limit
        try:
            while time.time() < t_end and st.unique < n:
                try:
                    data = s.recv(1 << 20)
                except socket.timeout:
                    break  # 5 s without a byte: it is over
                if not data:
                    break
                now = time.perf_counter()
                buf += data
                if head:
                    if b"\r\n\r\n" not in buf:
                        continue
                    buf = buf.split(b"\r\n\r\n", 1)[1]
                    head = False
                cut = buf.rfind(b"\n") + 1
                nums = LINE_NUM.findall(buf, 0, cut)
                buf = buf[cut:]
                st.add_many(nums, now)
        finally:
            s.close()
        return st

    async def log_follow(self, nc, d):
        """container_logs follow=true on a container writing 200,000 numbered lines of 60 characters
        as fast as it can (busybox awk), counted exactly at the subscriber: unique lines, duplicates
        and lines dcd reported dropped. The container stays up after writing, so the follow does not
        end with it. Floors: the engine's own follow of an identical container read directly (live),
        and the engine's own read of a finished log (replay: dcd reads it at full speed)."""
        n_lines = 200000
        batch, pause_us = 2500, 100000  # paced: at most 25,000 lines/s offered
        awk = f'BEGIN{{for(i=1;i<={n_lines};i++) printf "%060d\\n", i}}'
        paced = (f"i=0; while [ $i -lt {n_lines // batch} ]; do awk -v b=$((i*{batch})) "
                 f"'BEGIN{{for(j=1;j<={batch};j++) printf \"%060d\\n\", b+j}}'; usleep {pause_us}; i=$((i+1)); done")
        scripts = {
            # starts writing 2 s after start (the follow is in place by then); stays up after writing
            "live": f"sleep 2; awk '{awk}'; exec sleep 600",
            "paced": f"sleep 2; {paced}; exec sleep 600",
            # writes everything and exits before the follow starts
            "replay": f"awk '{awk}'",
        }
        st = LogCount(n_lines, b"")
        subj = f"device-connect.{d.tenant}.{d.device_id}.event.container_log_line"
        sub = RawSub(self.a.nats_url, subj, st)
        sub.start()
        keys = ("rate", "lost", "reported", "dups", "cpu_us", "rss", "floor_rate", "floor_lost", "floor_dups",
                "producer")
        modes = ("live", "paced", "replay")
        res = {m: {k: Agg() for k in keys} for m in modes}
        threads_cpu: dict = {}
        for r in range(self.rounds):
            for mode in modes:
                x = res[mode]
                script = scripts[mode]
                # dcd
                name = f"dcd-bench-{self.run_id}-log{r}{mode[0]}"
                with sub.lock:
                    st.reset(n_lines, f'"{name}"'.encode())
                cid = await adocker("run", "-d", *labels(self.run_id), "--name", name, IMAGE, "sh", "-c", script)
                if mode == "replay":
                    await adocker("wait", name, timeout=120)
                cpu0 = d.cpu_ticks()
                thr0 = d.thread_ticks()
                # tail -1 (all): every line from the start, so nothing depends on when the follow begins
                await nrpc(nc, d, "container_logs", {"container_id": name, "tail": -1, "follow": True})
                deadline = time.time() + 120
                last_seen, last_change = -1, time.time()
                while time.time() < deadline:
                    await asyncio.sleep(0.2)
                    total = st.unique + st.dropped
                    if total >= n_lines:
                        break
                    if total != last_seen:
                        last_seen, last_change = total, time.time()
                    elif time.time() - last_change > 5:
                        break  # nothing more for 5 s: whatever is missing is lost
                await asyncio.sleep(0.5)  # stragglers, and a last drop notice
                cpu1 = d.cpu_ticks()
                thr1 = d.thread_ticks()
                for k, v in thr1.items():
                    nm = thread_group(k.split("/")[0])
                    threads_cpu.setdefault(mode, {}).setdefault(nm, []).append((v - thr0.get(k, 0)) / TICK)
                try:
                    await nrpc(nc, d, "stop_container_logs", {"container_id": name})
                except RpcError:
                    pass
                x["rate"].add(st.rate())
                x["lost"].add(n_lines - st.unique)
                x["reported"].add(st.dropped)
                x["dups"].add(st.dups)
                x["cpu_us"].add((cpu1 - cpu0) / TICK * 1e6 / max(1, st.count + st.dropped))
                x["rss"].add(d.status()["VmRSS"] / 1024)
                if mode != "replay":  # the producer's own pace, from the engine's timestamps
                    body = await asyncio.to_thread(
                        raw_get, self.sock, f"/containers/{cid}/logs?stdout=1&stderr=1&timestamps=1", 120.0)
                    frames = [p for _, p in demux_frames(body)]
                    if len(frames) > 1:
                        t_a = parse_ts(frames[0].split(b" ", 1)[0].decode())
                        t_b = parse_ts(frames[-1].split(b" ", 1)[0].decode())
                        if t_b > t_a:
                            x["producer"].add(len(frames) / (t_b - t_a))
                await adocker("rm", "-f", name)
                # the floor: the engine directly
                name = f"dcd-bench-{self.run_id}-log{r}{mode[0]}f"
                cid = await adocker("run", "-d", *labels(self.run_id), "--name", name, IMAGE, "sh", "-c", script)
                if mode != "replay":
                    fl = await asyncio.to_thread(self.engine_follow, cid, n_lines)
                    x["floor_rate"].add(fl.rate())
                    x["floor_lost"].add(n_lines - fl.unique)
                    x["floor_dups"].add(fl.dups)
                else:
                    await adocker("wait", name, timeout=120)
                    t0 = time.perf_counter()
                    body = await asyncio.to_thread(raw_get, self.sock, f"/containers/{cid}/logs?stdout=1&stderr=1")
                    nums = set(LINE_NUM.findall(body))
                    x["floor_rate"].add(len(nums) / (time.perf_counter() - t0))
                    x["floor_lost"].add(n_lines - len(nums))
                await adocker("rm", "-f", name)
        sub.close()
        lv, rp, pc = res["live"], res["replay"], res["paced"]
        f0 = "{:.0f}"
        self.row("logs", f"live follow, {n_lines} lines of 60 chars", lv["rate"].fmt(f0, " lines/s"),
                 f"engine follow {lv['floor_rate'].fmt(f0, '/s')}",
                 f"×{Agg([a / b for a, b in zip(lv['rate'].v, lv['floor_rate'].v)]).fmt('{:.2f}')}", "",
                 "≥ 20000 lines/s", verdict(lv["rate"].med >= 20000) + f" (producer {lv['producer'].fmt(f0, '/s')})")
        self.row("logs", "  live: lines lost (of them reported dropped)",
                 f"{lv['lost'].fmt(f0)} ({lv['reported'].fmt(f0)})",
                 f"engine follow lost {lv['floor_lost'].fmt(f0)}", "", "", "none dropped by dcd",
                 verdict(lv["reported"].hi == 0)
                 + f" (the engine's follow loses lines at this rate); duplicates: dcd {lv['dups'].fmt(f0)},"
                 f" engine {lv['floor_dups'].fmt(f0)}")
        self.row("logs", "  live: dcd CPU per line", lv["cpu_us"].fmt("{:.1f}", " µs"), "", "", "", "",
                 f"RSS after {lv['rss'].fmt('{:.1f}', ' MiB')}")
        self.row("logs", f"paced follow, {batch} lines per {pause_us // 1000} ms", pc["rate"].fmt(f0, " lines/s"),
                 f"engine follow {pc['floor_rate'].fmt(f0, '/s')}", "", "", "none lost",
                 verdict(pc["lost"].hi == 0) + f" (the producer sets the rate: {pc['producer'].fmt(f0, '/s')})")
        self.row("logs", "  paced: lines lost (of them reported dropped)",
                 f"{pc['lost'].fmt(f0)} ({pc['reported'].fmt(f0)})",
                 f"engine follow lost {pc['floor_lost'].fmt(f0)}", "", "", "", f"duplicates: dcd {pc['dups'].fmt(f0)}, "
                 f"engine {pc['floor_dups'].fmt(f0)}; {pc['cpu_us'].fmt('{:.1f}', ' µs')} CPU/line")
        self.row("logs", "  replay of a finished log (tail=all)", rp["rate"].fmt(f0, " lines/s"),
                 f"engine read {rp['floor_rate'].fmt(f0, '/s')}",
                 f"×{Agg([a / b for a, b in zip(rp['rate'].v, rp['floor_rate'].v)]).fmt('{:.2f}')}", "",
                 "≥ 20000 lines/s, none lost", verdict(rp["rate"].med >= 20000 and rp["lost"].hi == 0)
                 + f"; lost {rp['lost'].fmt(f0)} (reported {rp['reported'].fmt(f0)}),"
                 f" {rp['cpu_us'].fmt('{:.1f}', ' µs')} CPU/line")
        for mode in modes:
            for k, v in res[mode].items():
                self.put(f"log_{mode}_{k}", v)
        for mode, per in threads_cpu.items():
            tot = {k: sum(v) / self.rounds for k, v in per.items()}
            top = sorted(((v, k) for k, v in tot.items() if v > 0), reverse=True)[:4]
            self.row("logs", f"  {mode}: dcd CPU by thread, per follow", ", ".join(f"{k} {v:.2f} s" for v, k in top))
            self.put(f"log_{mode}_thread_cpu_s", tot)

    # --- the whole run --------------------------------------------------------------------------
    async def run(self):
        nc = await nats.connect(self.a.nats_url, connect_timeout=3, max_reconnect_attempts=3,
                                pending_size=64 << 20, error_cb=nats_error)
        try:
            return await self._run(nc)
        finally:
            await nc.close()

    async def _run(self, nc):
        print(f"  {'section':<10} {'metric':<44} {'value: median [min–max]':<34} {'floor':<28} "
              f"{'ratio':<18} {'overhead':<18} goal", flush=True)
        # A single section: one daemon, measured alone.
        single = {"compose": ("c", self.compose_updown), "exec": ("x", self.exec_session), "reads": ("r", self.reads)}
        section = "reads" if self.a.reads else self.a.only
        if self.a.startup_against:
            await self.startup(nc, self.a.startup_against, n=25)
            return {}
        if section:
            tag, measure = single[section]
            async with self.answering(nc, self.bin, "nats", tag) as (d, _):
                await measure(nc, d)
            return {}
        self.sizes()
        startup = await self.startup(nc)
        rss_n, delta_n = await self.memory(nc, "nats", 2000 if self.quick else 10000)
        rss_z, delta_z = await self.memory(nc, "zenoh", 2000 if self.quick else 10000)
        if not self.quick:
            await self.memory_variants(nc)

        d = Daemon(self.bin, "nats", self.tenant("l"), self.logdir, self.a.nats_url)
        zd = None
        zs = None
        try:
            await wait_answer_nats(nc, d)
            if not self.quick:
                zd = Daemon(self.bin, "zenoh", self.tenant("z"), self.logdir)
                zs = wait_answer_zenoh(zd)
            p50 = await self.latency_get_status(nc, d, zs, zd)
            self.client_call(d, zd)
            n_present = len(Engine(self.sock).get_json("/containers/json?all=1"))
            if not self.quick:
                log("creating 50 containers")
                self.ids_big = create_containers(self.run_id, "n", 50)
                n_total = len(Engine(self.sock).get_json("/containers/json?all=1"))
                if n_total != 50:
                    self.notes.append(f"the engine held {n_total} containers during the list_containers "
                                      f"measurements (50 of this run, the rest from elsewhere)")
                await self.latency_list(nc, d, zs, zd, n_total)
                await self.provision(nc, d)
                await self.reads(nc, d)
                remove_containers(self.ids_big[20:])
                self.ids_big = self.ids_big[:20]
                n_present = len(Engine(self.sock).get_json("/containers/json?all=1"))
                log(f"idle CPU: 60 s with {n_present} containers present")
            await asyncio.sleep(2.0)
            cpu = await self.idle_cpu([x for x in (d, zd) if x is not None], n_present)
            if not self.quick:
                await self.event_latency(nc, d)
                rate, cnt, pub = await self.client_ceiling(nc)
                self.row("logs", "  harness ceiling: the counting subscriber", f"{rate:.0f} msgs/s",
                         "", "", "", "", f"({cnt} received; fed by nats-py at {pub:.0f}/s, so a lower bound)")
                self.put("log_client_ceiling_msgs_per_s", rate)
                await self.log_follow(nc, d)
                await self.job_pull(nc, d)
                await self.compose_updown(nc, d)
                await self.exec_session(nc, d)
                s = d.status()
                self.row("memory", "NATS: RSS at the end of the full run", f"{s['VmRSS'] / 1024:.2f} MiB",
                         "", "", "", "", f"peak {s['VmHWM'] / 1024:.2f} MiB, {s['Threads']} threads")
                self.put("rss_end_mib_nats", s["VmRSS"] / 1024)
                self.put("rss_peak_mib_nats", s["VmHWM"] / 1024)
                if zd is not None:
                    s = zd.status()
                    self.row("memory", "Zenoh: RSS at the end of the full run", f"{s['VmRSS'] / 1024:.2f} MiB",
                             "", "", "", "", f"peak {s['VmHWM'] / 1024:.2f} MiB, {s['Threads']} threads")
        finally:
            if zs is not None:
                zs.close()
            if zd is not None:
                zd.stop()
            d.stop()
        return {"startup": startup, "rss_nats": rss_n, "rss_zenoh": rss_z, "p50": p50, "cpu": cpu,
                "delta_nats": delta_n, "delta_zenoh": delta_z}


    async def exec_session(self, nc, d: Daemon):
        """Interactive exec sessions (issue 15): keystroke echo latency through a TTY session, from
        the exec_write request to the exec_output event that carries the echo, beside a NATS echo
        round trip in the same client; and bulk output throughput read with exec_read."""
        n = 100 if self.quick else 400
        cid = create_containers(self.run_id, "exec", 1)[0]
        echo_subject = f"{self.run_id}.echo"

        async def echo(msg):
            await msg.respond(msg.data)

        esub = await nc.subscribe(echo_subject, cb=echo)
        nats_rtt = []
        for _ in range(n):
            t = time.perf_counter()
            await nc.request(echo_subject, b"x", timeout=5)
            nats_rtt.append((time.perf_counter() - t) * 1000)
        await esub.unsubscribe()

        got: asyncio.Queue = asyncio.Queue()

        async def on_output(msg):
            p = json.loads(msg.data)["params"]
            await got.put((time.perf_counter(), p))

        osub = await nc.subscribe(f"device-connect.{d.tenant}.{d.device_id}.event.exec_output", cb=on_output)
        s = await nrpc(nc, d, "exec_open", {"container_id": cid, "cmd": ["cat"]})
        sid = s["session_id"]
        lat, last_seq = [], 0
        for i in range(n):
            ch = chr(ord("a") + i % 26)
            t = time.perf_counter()
            await nrpc(nc, d, "exec_write", {"session_id": sid, "data": ch})
            while True:
                at, p = await asyncio.wait_for(got.get(), 10)
                last_seq = max(last_seq, p["seq"])
                if p["session_id"] == sid and ch in p.get("data", ""):
                    lat.append((at - t) * 1000)
                    break
            if i % 50 == 49:  # a line for cat, and an acknowledgement of what the events brought
                await nrpc(nc, d, "exec_write", {"session_id": sid, "data": "\n"})
                await nrpc(nc, d, "exec_read", {"session_id": sid, "after_seq": last_seq})
        await osub.unsubscribe()
        await nrpc(nc, d, "exec_close", {"session_id": sid, "signal": "KILL"})
        p50, p99, n50, n99 = pct(lat, 50), pct(lat, 99), pct(nats_rtt, 50), pct(nats_rtt, 99)
        self.row("exec", f"keystroke → echo event p50 (TTY session, n={n})", f"{p50:.3f} ms",
                 f"NATS echo round trip {n50:.3f} ms", "", f"{p50 - n50:+.3f} ms", "≤ +2 ms",
                 verdict(p50 - n50 <= 2))
        self.row("exec", "  p99", f"{p99:.3f} ms", f"NATS echo round trip {n99:.3f} ms", "", f"{p99 - n99:+.3f} ms")
        self.put("exec_echo_p50_ms", p50)
        self.put("exec_echo_p99_ms", p99)
        self.put("exec_nats_echo_p50_ms", n50)

        mb = 20 if self.quick else 100
        cmd = ["sh", "-c", f"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV | head -c {mb * 1000000}"]
        s = await nrpc(nc, d, "exec_open", {"container_id": cid, "cmd": cmd, "tty": False})
        sid, after, total, t0 = s["session_id"], 0, 0, time.perf_counter()
        while True:
            r = await nrpc(nc, d, "exec_read", {"session_id": sid, "after_seq": after, "wait_ms": 2000})
            for c in r["chunks"]:
                total += len(c.get("data", ""))
            after = r["next_seq"]
            if r["exit_code"] is not None:
                break
        secs = time.perf_counter() - t0
        rate = total / secs / 1e6
        self.row("exec", f"bulk output through exec_read ({mb} MB, no TTY)", f"{rate:.1f} MB/s", "", "", "",
                 "≥ 20 MB/s", verdict(rate >= 20 and total == mb * 1000000))
        self.put("exec_bulk_mb_per_s", rate)
        await nrpc(nc, d, "exec_close", {"session_id": sid})
        remove_containers([cid])

    async def job_pull(self, nc, d: Daemon):
        """A pull through a rate-limited proxy to the loopback registry, as a job (issue 18): the
        time from the proxy's last byte to job_finished at the client, and job_progress events per
        second while bytes flow."""
        registry = os.environ.get("DCD_TEST_REGISTRY", "127.0.0.1:5000")
        host, port = registry.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError:
            self.notes.append(f"jobs: no registry at {registry}; the pull job was not measured")
            return
        repo, mib, rate = "dcd-test/slow-bench", 8, 2 << 20
        pushed = f"{registry}/{repo}:v1"
        log(f"jobs: {mib} MiB image pulled through a {rate >> 20} MiB/s proxy")
        if subprocess.run(["docker", "manifest", "inspect", "--insecure", pushed], capture_output=True).returncode:
            box = f"dcd-bench-slow-{self.run_id}"
            blob = os.path.join(self.logdir, "random.bin")
            with open(blob, "wb") as f:
                f.write(os.urandom(mib << 20))
            docker("create", "--name", box, IMAGE)
            try:
                docker("cp", blob, f"{box}:/random.bin")
                subprocess.run(f"docker export {box} | docker import - {pushed}", shell=True, check=True,
                               capture_output=True)
                docker("push", pushed, timeout=300)
            finally:
                docker("rm", "-f", box, check=False)
                os.remove(blob)
        def forget():
            for tag in docker("images", "--format", "{{.Repository}}:{{.Tag}}").splitlines():
                if repo in tag:
                    docker("rmi", "-f", tag, check=False)

        # The floor: the docker CLI pulling the same through the same link, last byte to its exit.
        proxy = SlowProxy(registry, rate)
        forget()
        await adocker("pull", "-q", f"127.0.0.1:{proxy.port}/{repo}:v1", timeout=120)
        floor_ms = (time.perf_counter() - proxy.last_byte) * 1000
        proxy.close()
        forget()
        proxy = SlowProxy(registry, rate)
        image = f"127.0.0.1:{proxy.port}/{repo}:v1"
        seen, done = [], asyncio.get_running_loop().create_future()

        async def on_event(msg):
            body = json.loads(msg.data)
            seen.append((time.perf_counter(), body["method"], body["params"]))
            if body["method"] == "job_finished" and not done.done():
                done.set_result(time.perf_counter())

        sub = await nc.subscribe(f"device-connect.{d.tenant}.{d.device_id}.event.*", cb=on_event)
        try:
            pending = await nrpc(nc, d, "pull_image", {"image": image, "wait": 0})
            finished = await asyncio.wait_for(done, 120)
        finally:
            await sub.unsubscribe()
            proxy.close()
            forget()
        moving = [t for t, m, p in seen if m == "job_progress" and p["job_id"] == pending["job_id"]
                  and p["bytes_done"] > 0]
        tail_ms = (finished - proxy.last_byte) * 1000
        # Steady progress: the paced events, without the last (sent when the pull ends).
        steady = moving[:-1]
        rate_ev = (len(steady) - 1) / max(steady[-1] - steady[0], 1e-3) if len(steady) > 1 else 0.0
        self.row("jobs", f"pull_image of {mib} MiB at {rate >> 20} MiB/s: last proxy byte → job_finished",
                 f"{tail_ms:.0f} ms", f"docker pull: {floor_ms:.0f} ms", "", f"{tail_ms - floor_ms:+.0f} ms",
                 "≤ 50 ms over the CLI", verdict(tail_ms - floor_ms <= 50)
                 + " (the engine extracts and tags the layer after its last byte)")
        self.row("jobs", "  job_progress events per second per job", f"{rate_ev:.2f}/s", "", "", "", "≤ 2",
                 verdict(rate_ev <= 2) + f" ({len(moving)} events while bytes flowed)")
        self.put("job_pull_cli_floor_ms", floor_ms)
        self.put("job_last_byte_to_finished_ms", tail_ms)
        self.put("job_progress_events_per_s", rate_ev)


    async def compose_updown(self, nc, d: Daemon):
        """compose_up and compose_down of the three-service project of tests/compose.rs (images
        present), against Debian's docker-compose up -d / down of the same file (issue 13)."""
        if shutil.which("docker-compose") is None:
            self.notes.append("compose: no docker-compose; compose_up/down were not measured")
            return
        project = f"{self.run_id}cmp".lower()
        with open(COMPOSE_APP) as f:
            yaml = f.read()
        variables = {"IMAGE": IMAGE, "PORT": str(free_port()), "GREETING": "bench"}
        log(f"compose: {self.rounds} rounds of up/down, dcd and docker-compose")
        cli = ["docker-compose", "-p", project, "-f", COMPOSE_APP]
        ours = {"up": Agg(), "down": Agg()}
        theirs = {"up": Agg(), "down": Agg()}
        for _ in range(self.rounds):
            for what, args in (("up", ["up", "-d"]), ("down", ["down", "-v"])):
                t = time.perf_counter()
                subprocess.run(cli + args, check=True, capture_output=True, timeout=180,
                               env={**os.environ, **variables})
                theirs[what].add((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            spec = {"compose_yaml": yaml, "project": project, "environment": variables}
            up = await nrpc(nc, d, "compose_up", {"spec": spec, "wait": 120}, timeout=150)
            ours["up"].add((time.perf_counter() - t) * 1000)
            if up.get("status") != "success":
                raise RuntimeError(f"compose_up: {up}")
            t = time.perf_counter()
            await nrpc(nc, d, "compose_down", {"project": project, "volumes": True}, timeout=60)
            ours["down"].add((time.perf_counter() - t) * 1000)
        for what in ("up", "down"):
            ratio = ours[what].med / theirs[what].med
            self.row("compose", f"compose_{what} of 3 services (healthcheck, init)", ours[what].fmt("{:.0f}", " ms"),
                     f"docker-compose {what}: {theirs[what].med:.0f} ms", f"{ratio:.2f}×", "", "≤ 1.1×",
                     verdict(ratio <= 1.1))
            self.put(f"compose_{what}_ms", ours[what])
            self.put(f"compose_cli_{what}_ms", theirs[what])


# The three-service project of tests/compose.rs (init fills a volume, api with a healthcheck waits
# for it, web waits for api to be healthy); IMAGE, PORT and GREETING are its variables.
COMPOSE_APP = os.path.join(ROOT, "tests/data/three-services.yaml")


class SlowProxy:
    """A TCP proxy on 127.0.0.1 to `upstream` passing what comes back at most `rate` bytes/s
    (one slow link for all connections); remembers when the last byte went back."""

    def __init__(self, upstream: str, rate: int):
        host, port = upstream.rsplit(":", 1)
        self.upstream, self.rate, self.last_byte = (host, int(port)), rate, 0.0
        self.next_send, self.lock, self.closed = time.perf_counter(), threading.Lock(), False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, True), daemon=True).start()

    def _pipe(self, src, dst, paced):
        chunk = max(1024, self.rate // 20)
        try:
            while data := src.recv(chunk):
                if paced:
                    with self.lock:
                        at = max(self.next_send, time.perf_counter())
                        self.next_send = at + len(data) / self.rate
                    time.sleep(max(0.0, at - time.perf_counter()))
                dst.sendall(data)
                if paced:
                    self.last_byte = time.perf_counter()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self):
        self.closed = True
        self.server.close()


LINE_NUM = re.compile(rb"(\d{60})")
LINE_FIELD = re.compile(rb'"line":"(\d{60})"')
DROPPED = re.compile(r"(\d+) log lines? dropped")
NOTICE = re.compile(rb'"line":"dcd: (\d+) log lines? dropped')


class LogCount:
    """Exact accounting of numbered log lines (1..n): unique, duplicates, reported drops, pace."""

    def __init__(self, n: int, tag: bytes):
        self.reset(n, tag)

    def reset(self, n: int, tag: bytes):
        self.n, self.tag = n, tag
        self.seen = bytearray(n + 1)
        self.unique = self.count = self.dups = self.dropped = self.notices = 0
        self.first = self.last = 0.0

    def _one(self, num: int, now: float):
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if 0 < num <= self.n:
            if self.seen[num]:
                self.dups += 1
            else:
                self.seen[num] = 1
                self.unique += 1

    def feed(self, data: bytes):
        """One container_log_line event body."""
        if self.tag and self.tag not in data:
            return
        m = LINE_FIELD.search(data)
        if m:
            self._one(int(m.group(1)), time.perf_counter())
            return
        if b'"dcd"' in data:
            try:
                p = json.loads(data)["params"]
            except (ValueError, KeyError):
                return
            if p.get("stream") == "dcd":
                self.notices += 1
                mm = DROPPED.search(p.get("line", ""))
                if mm:
                    self.dropped += int(mm.group(1))

    def add_many(self, nums, now: float):
        for x in nums:
            self._one(int(x), now)

    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first) if self.count > 1 and self.last > self.first else 0.0


class RawSub(threading.Thread):
    """A minimal NATS subscriber on a plain socket, for the log-follow count: it takes whole
    receive buffers and splits them in C, so it keeps up with far more messages per second than
    a nats-py callback (about 50,000/s here) and the harness is not what gets measured."""

    def __init__(self, url: str, subject: str, count: "LogCount"):
        super().__init__(daemon=True, name="raw-sub")
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 4222), timeout=5)
        self.count = count
        self.lock = threading.Lock()
        self.stop_flag = False
        f = self.sock.makefile("rb")
        if not f.readline().startswith(b"INFO "):
            raise RuntimeError("NATS: no INFO from the server")
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"echo":false,"name":"dcd-bench"}\r\n'
                          + f"SUB {subject} 1\r\nPING\r\n".encode())
        line = f.readline()
        if line.strip() != b"PONG":
            raise RuntimeError(f"NATS: {line!r}")
        self.rest = f.read1(1 << 20) if f.peek(1) else b""
        self.sock.settimeout(0.2)

    def run(self):
        buf = self.rest
        while not self.stop_flag:
            try:
                data = self.sock.recv(4 << 20)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            now = time.perf_counter()
            buf += data
            cut = buf.rfind(b"\r\n") + 2
            if cut < 2:
                continue
            chunk, buf = buf[:cut], buf[cut:]
            if b"PING\r\n" in chunk:
                self.sock.sendall(b"PONG\r\n")
            with self.lock:
                c = self.count
                for piece in chunk.split(b"\r\nMSG "):
                    if c.tag and c.tag not in piece:
                        continue
                    m = LINE_FIELD.search(piece)
                    if m:
                        c._one(int(m.group(1)), now)
                    elif b'"dcd"' in piece:
                        mm = NOTICE.search(piece)
                        if mm:
                            c.notices += 1
                            c.dropped += int(mm.group(1))

    def close(self):
        self.stop_flag = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.join(2)


async def nats_error(e):
    log(f"NATS client: {type(e).__name__}: {e}")


def parse_ts(s: str) -> float:
    # RFC3339Nano, e.g. 2026-11-22T07:30:01.123456789Z
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z", s)
    if not m:
        return 0.0
    import calendar
    y, mo, d, h, mi, se, frac = m.groups()
    t = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(se)))
    return t + (float("0." + frac) if frac else 0.0)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def machine() -> dict:
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Architecture"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    info["kernel"] = platform.release()
    try:
        info["docker"] = docker("version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})")
    except Exception:  # noqa: BLE001
        info["docker"] = "?"
    try:
        info["nats-server"] = subprocess.run(["nats-server", "--version"], capture_output=True,
                                             text=True).stdout.strip()
    except OSError:
        pass
    return info


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def check_baseline(path: str, got: dict) -> list[str]:
    """Regressions of more than 2x against the stored baseline, with absolute floors so that
    timing noise on a busy machine cannot fail the run."""
    with open(path) as f:
        base = json.load(f)
    bad = []

    def check(name, value, key, floor, unit):
        b = base.get(key)
        if b is None or value is None or math.isnan(value):
            return
        limit = max(2 * b, floor)
        status = "REGRESSION" if value > limit else "ok"
        print(f"bench: check {name}: {value:.2f} {unit} (baseline {b} {unit}, fail above {limit:.2f} {unit})"
              f" {status}")
        if value > limit:
            why = f"2× baseline {b} {unit}" if limit == 2 * b else f"absolute floor; baseline {b} {unit}"
            bad.append(f"{name} {value:.2f} {unit} > {limit:.2f} {unit} ({why})")

    check("idle RSS NATS", got["rss_nats"].med, "rss_idle_mib_nats", 0, "MiB")
    check("idle RSS Zenoh", got["rss_zenoh"].med, "rss_idle_mib_zenoh", 0, "MiB")
    check("start-up", got["startup"].med, "startup_ms", base.get("startup_floor_ms", 200), "ms")
    check("get_status p50", got["p50"].med, "get_status_p50_ms", base.get("latency_floor_ms", 5), "ms")
    for kind in ("nats", "zenoh"):
        dlt = got[f"delta_{kind}"].med
        if dlt is not None and not math.isnan(dlt) and dlt > base.get("rss_growth_warn_kib", 1024):
            print(f"bench: WARNING: {kind} RSS grew by {dlt:.0f} KiB over the RPC burst (not a failure)")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI mode: < 60 s, compare with the baseline")
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--run-id", default=f"bench{os.getpid()}")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/dcd"))
    ap.add_argument("--rounds", type=int, default=3, help="repeated runs of each figure (full mode)")
    ap.add_argument("--baseline", default=os.path.join(ROOT, "bench/baseline.json"))
    ap.add_argument("--logdir", default=os.path.join(ROOT, "target/bench/logs"))
    ap.add_argument("--json-out", default=None, help="write every figure here as JSON")
    ap.add_argument("--pidfile", default=None, help="append the pid of every daemon started here")
    ap.add_argument("--only", choices=["compose", "exec"], default=None,
                    help="only this section (compose: compose_up/down against docker-compose; exec: exec sessions)")
    ap.add_argument("--reads", action="store_true",
                    help="only list_containers beside get_status at 20 and 200 containers (about 3 minutes)")
    ap.add_argument("--startup-against", metavar="BIN", default=None,
                    help="only start-up, of --bin and of BIN, 25 starts each, interleaved")
    args = ap.parse_args()
    PIDFILE[0] = args.pidfile

    if nats is None:
        raise SetupError("nats-py is not importable (use the venv from tests/setup.sh)")
    if not os.access(args.bin, os.X_OK):
        raise SetupError(f"no binary at {args.bin}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.run_id):
        raise SetupError("--run-id must be [A-Za-z0-9_-]+")
    e = Engine(docker_socket())
    try:
        e.get_json("/version")
        if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
            raise SetupError(f"image {IMAGE} missing (tests/setup.sh builds it)")
    except OSError as ex:
        raise SetupError(f"the Docker Engine does not answer: {ex}")
    finally:
        e.close()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    mach = machine()
    load0 = loadavg()
    t_start = time.time()
    mode = "quick" if args.quick else "full"
    print(f"dcd benchmark ({mode}), run id {args.run_id}")
    print(f"machine: {mach.get('Model name', '?')}, {mach.get('CPU(s)', '?')} CPUs, kernel {mach['kernel']}, "
          f"docker {mach.get('docker')}, {mach.get('nats-server', 'nats-server ?')}")
    print(f"binary: {args.bin}; load average at start: {load0}")
    b = Bench(args)
    got = None
    try:
        got = asyncio.run(b.run())
    except KeyboardInterrupt as ex:
        log(f"interrupted ({ex}); cleaning up")
        return 130
    except Exception as ex:  # noqa: BLE001 - any failure ends the run with a clear line
        print(f"bench: FAILED: {type(ex).__name__}: {ex}")
        if args.quick:
            print("bench: REGRESSION: the daemon could not be measured (see above)")
        return 1
    finally:
        kill_all()
        n = remove_run_containers(args.run_id)
        if n:
            log(f"removed {n} containers of this run")
    load1 = loadavg()
    print(f"load average at end: {load1}; took {time.time() - t_start:.0f} s")
    for n in b.notes:
        print(f"note: {n}")
    out = {"mode": mode, "machine": mach, "load_start": load0, "load_end": load1, "binary": args.bin,
           "results": b.res, "notes": b.notes, "rows": b.rows, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
    jpath = args.json_out or os.path.join(ROOT, f"target/bench/last-{mode}.json")
    os.makedirs(os.path.dirname(jpath), exist_ok=True)
    with open(jpath, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"figures written to {os.path.relpath(jpath, ROOT)}")
    if args.quick:
        bad = check_baseline(args.baseline, got)
        if bad:
            print("bench: REGRESSION: " + "; ".join(bad))
            return 1
        print(f"bench: PASS (no regression beyond 2× of {os.path.relpath(args.baseline, ROOT)})")
    else:
        print("bench: done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SetupError as ex:
        print(f"bench: SETUP ERROR: {ex}")
        kill_all()
        sys.exit(3)
