//! Shared by the integration tests: the rule that a missing real part fails
//! under CI and skips elsewhere, and the real engine and test image.
//!
//! The real engine is Docker unless `DCD_TEST_ENGINE` says `podman` (rootful) or
//! `podman-rootless`: then the same tests run against a Podman API service that
//! this process starts as a board would (`podman_host`), and the docker CLI the
//! tests check with talks to it. tests/run.sh runs the suite once per engine.
#![allow(dead_code)] // each test crate uses its own subset

pub mod client;
pub mod counting;
pub mod relay;
pub mod router;

use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

use dcd::driver::Driver;
use dcd::engine::{docker::Docker, Engine};
use dcd::error::Error;
use dcd::events::{Event, Events};
use dcd::jobs::Body;
use dcd::policy::Policy;
use dcd::state::{Forward, State};

/// `false` (skip) when `ok` is false outside CI; a failure under CI. A skip is said on stderr
/// and recorded in `skips_file()`, so tests/run.sh can count it: a run that skipped is not green.
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required under CI (run tests/setup.sh)");
        }
        // libtest runs each test on a thread named after it.
        let test = format!("{}::{}", env!("CARGO_CRATE_NAME"), std::thread::current().name().unwrap_or("?"));
        eprintln!("SKIP: {test}: {what} is not available (run tests/setup.sh)");
        record_skip(&test, what);
    }
    ok
}

/// Where skips are recorded, one `<test>\t<what was missing>` line each; tests/run.sh empties it
/// before `cargo test` and summarises it after.
pub fn skips_file() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-skips.txt")
}

fn record_skip(test: &str, what: &str) {
    // One write of one line with O_APPEND: lines from test threads and test binaries running at
    // once do not interleave, and no lock is needed.
    let line = format!("{test}\t{}\n", what.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skips_file())
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("SKIP not recorded in {}: {e}", skips_file().display());
    }
}

/// The engine the real-engine tests drive (`DCD_TEST_ENGINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
    PodmanRootless,
}

impl EngineKind {
    pub fn podman(self) -> bool {
        self != EngineKind::Docker
    }
}

pub fn engine_kind() -> EngineKind {
    match std::env::var("DCD_TEST_ENGINE").as_deref() {
        Err(_) | Ok("" | "docker") => EngineKind::Docker,
        Ok("podman") => EngineKind::Podman,
        Ok("podman-rootless") => EngineKind::PodmanRootless,
        Ok(other) => panic!("DCD_TEST_ENGINE={other}: expected docker, podman or podman-rootless"),
    }
}

/// The real engine's DOCKER_HOST: `DOCKER_HOST` or Docker's socket for Docker, else the Podman
/// service of `podman_host`.
pub fn engine_host() -> Option<String> {
    match engine_kind() {
        EngineKind::Docker => {
            Some(std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()))
        }
        kind => podman_host(kind == EngineKind::PodmanRootless),
    }
}

/// The real engine, if it answers (see `require`).
pub fn engine() -> Option<Arc<dyn Engine>> {
    let host = engine_host()?;
    let d = Docker::connect(Some(&host)).ok()?;
    let ok = d.info().is_ok();
    require(ok, &format!("a {:?} engine on {host}", engine_kind())).then(|| Arc::new(d) as Arc<dyn Engine>)
}

/// The busybox test image made by tests/setup.sh.
pub fn test_image() -> Option<String> {
    let image = std::env::var("DCD_TEST_IMAGE").unwrap_or_else(|_| "dcd-test/busybox:latest".into());
    let ok = docker_cli(&["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    require(ok, &format!("the test image {image}")).then_some(image)
}

/// Rootless Podman on a cgroup v1 host: it can neither limit nor measure a container, and dcd
/// refuses what asks it to.
pub fn podman_without_cgroups() -> bool {
    engine_kind() == EngineKind::PodmanRootless && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Podman's test configuration and rootless user, made by tests/setup.sh.
const PODMAN_CONF: &str = "/etc/dcd-test/podman";
const PODMAN_USER: &str = "dcd-podman";

/// `unix://` of a Podman API service for this test process: one that already answers on the
/// socket a board's unit would use, else `podman system service --time=0` started as a board
/// starts it (rootful on /run/podman/podman.sock; rootless as the test user, with an explicit
/// XDG_RUNTIME_DIR, on its default socket). It is stopped when the process exits.
pub fn podman_host(rootless: bool) -> Option<String> {
    static HOSTS: std::sync::Mutex<Vec<(bool, Option<String>)>> = std::sync::Mutex::new(Vec::new());
    let mut hosts = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, host)) = hosts.iter().find(|(r, _)| *r == rootless) {
        return host.clone();
    }
    let host = start_podman(rootless);
    hosts.push((rootless, host.clone()));
    host
}

fn start_podman(rootless: bool) -> Option<String> {
    let conf = Path::new(PODMAN_CONF);
    let user = if rootless { users_entry(PODMAN_USER) } else { Some((0, 0, PathBuf::from("/root"))) };
    let installed = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    let Some((uid, gid, home)) = user.filter(|_| installed && conf.join("containers.conf").exists()) else {
        require(false, &format!("podman, {PODMAN_CONF} and the user {PODMAN_USER}"));
        return None;
    };
    let runtime_dir = PathBuf::from(format!("/run/user/{uid}"));
    let socket =
        if rootless { runtime_dir.join("podman/podman.sock") } else { PathBuf::from("/run/podman/podman.sock") };
    let host = format!("unix://{}", socket.display());
    if !podman_answers(&socket) {
        // As a board's podman.socket unit makes its runtime directory: podman does not.
        if let Some(dir) = socket.parent().filter(|_| !rootless) {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        }
        let mut cmd = Command::new("podman");
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &home)
            .env("CONTAINERS_CONF", conf.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", conf.join("registries.conf"))
            .args(["system", "service", "--time=0"]);
        if rootless {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid).env("XDG_RUNTIME_DIR", &runtime_dir);
        } else {
            cmd.arg(&host);
        }
        spawn_for_process_lifetime(cmd);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !podman_answers(&socket) {
            assert!(Instant::now() < deadline, "podman system service did not answer on {host} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Some(host)
}

/// Whether a Podman API service answers on `socket` (Docker would not say `Libpod`).
fn podman_answers(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    let asked = s.write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n").is_ok();
    asked && s.read_to_string(&mut reply).is_ok() && reply.contains("Libpod-Api-Version")
}

/// uid, gid and home of `user`, from /etc/passwd.
fn users_entry(user: &str) -> Option<(u32, u32, PathBuf)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let fields: Vec<&str> = passwd.lines().find(|l| l.starts_with(&format!("{user}:")))?.split(':').collect();
    Some((fields[2].parse().ok()?, fields[3].parse().ok()?, PathBuf::from(fields[5])))
}

/// Starts `cmd` for as long as this process runs. The test harness has no hook for its end, so
/// the C library's `atexit` stops it, and waits, before the next test binary may look for a
/// service; should the process die instead, the kernel sends SIGTERM (a death signal goes when
/// the thread that started the child ends: this one waits on it).
fn spawn_for_process_lifetime(mut cmd: Command) {
    use std::os::unix::process::CommandExt;
    static STARTED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    extern "C" fn stop_all() {
        for pid in STARTED.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            // SAFETY: signalling and probing a child of ours; its waiting thread reaps it.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    // SAFETY: prctl is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let name = format!("{:?}", cmd.get_program());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut p = Proc::spawn(&name, &mut cmd);
        let _ = tx.send(p.pid());
        let status = p.child.wait();
        eprintln!("{name} ended: {status:?}");
    });
    let mut started = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    if started.is_empty() {
        // SAFETY: registers a function without arguments, once.
        unsafe { libc::atexit(stop_all) };
    }
    started.push(rx.recv().expect("the service's thread"));
}

/// The docker CLI on the real engine.
pub fn docker_cli(args: &[&str]) -> Command {
    engine_cli("docker", args)
}

/// Debian's docker-compose (v1) on the real engine.
pub fn docker_compose_cli(args: &[&str]) -> Command {
    engine_cli("docker-compose", args)
}

/// `program` with the real engine as its DOCKER_HOST (a shell pipes docker CLIs with it).
pub fn engine_cli(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    if let (true, Some(host)) = (engine_kind().podman(), engine_host()) {
        cmd.env("DOCKER_HOST", host);
    }
    cmd.args(args);
    cmd
}

/// A name unique to this process and `tag`, for things a test creates.
pub fn unique(tag: &str) -> String {
    format!("dcd-test-{tag}-{}", std::process::id())
}

/// `docker` CLI output (the engine's own view, to check ours against); empty when it failed.
pub fn docker(args: &[&str]) -> String {
    docker_run(args).1
}

/// `docker` CLI output, which must succeed: the engine's own hand, not ours.
pub fn docker_ok(args: &[&str]) -> String {
    let (o, out) = docker_run(args);
    assert!(o.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    out
}

fn docker_run(args: &[&str]) -> (std::process::Output, String) {
    let o = docker_cli(args).output().expect("docker CLI");
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o, out)
}

// Processes, nats-server, the daemon and a raw NATS client, shared by the tests that run the
// binary (faults, policy). Everything listens on loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The daemon's readiness line (subscriptions in place).
pub const READY: &str = "mesh ready";

/// A child process whose output is echoed (the harness shows it when a test fails) and can be
/// waited on line by line. Killed and reaped on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: Receiver<String>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        Proc::start(name, cmd.stdin(Stdio::null()))
    }

    /// `spawn`, with a pipe to its stdin.
    pub fn spawn_piped(name: &str, cmd: &mut Command) -> (Proc, ChildStdin) {
        let mut p = Proc::start(name, cmd.stdin(Stdio::piped()));
        let stdin = p.child.stdin.take().unwrap();
        (p, stdin)
    }

    fn start(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = channel();
        let outputs: [Box<dyn Read + Send>; 2] =
            [Box::new(child.stdout.take().unwrap()), Box::new(child.stderr.take().unwrap())];
        for out in outputs {
            let (tx, name) = (tx.clone(), name.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    eprintln!("[{name}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Proc { name: name.to_string(), child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for an output line containing `needle`; lines before it are consumed.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line.contains(needle) {
                return true;
            }
        }
        false
    }

    /// The next output line before `deadline`.
    pub fn next_line(&self, deadline: Instant) -> Option<String> {
        self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
    }

    /// Every output line within `d`.
    pub fn lines_for(&self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        std::iter::from_fn(|| self.next_line(deadline)).collect()
    }

    pub fn expect_line(&self, needle: &str, timeout: Duration) {
        assert!(self.wait_line(needle, timeout), "{}: no line with {needle:?} within {timeout:?}", self.name);
    }

    pub fn terminate(&self) {
        // SAFETY: signalling our own child, which has not been reaped yet (that happens in drop).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    /// Its exit status, or `None` (and it is killed) when it runs longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        None
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child, which has not been reaped yet (that happens in drop).
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now, from below the kernel's range for outgoing connections: a port
/// the kernel hands out (bind to 0) comes from that range, and can become a connection's source
/// port before the server that was given it binds it ("address already in use"). Each port is
/// handed out once per test process.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const LOW: u32 = 10_000;
    let outgoing = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = outgoing.saturating_sub(LOW).max(1_000);
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        assert!(n < span, "no free loopback port below {outgoing}");
        let port = (LOW + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn nats_installed() -> bool {
    let ok = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    require(ok, "nats-server")
}

/// `nats-server` on 127.0.0.1:`port` (plus `extra` arguments), up and accepting connections.
pub fn nats_server(port: u16, extra: &[&str]) -> Proc {
    nats_server_at("127.0.0.1", port, extra)
}

/// `nats_server` on another of this host's addresses.
pub fn nats_server_at(host: &str, port: u16, extra: &[&str]) -> Proc {
    let p = Proc::spawn(
        &format!("nats:{port}"),
        Command::new("nats-server").args(["-a", host, "-p", &port.to_string()]).args(extra),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((host, port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// The venv Python with the agent tools (`DCD_TEST_PYTHON`, else the venv of tests/setup.sh).
pub fn python() -> Option<PathBuf> {
    let py = std::env::var_os("DCD_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let venv = std::env::var_os("DCD_PYVENV").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/dcd-pyvenv")
        });
        venv.join("bin/python")
    });
    let ok =
        Command::new(&py).args(["-c", "import device_connect_agent_tools"]).output().is_ok_and(|o| o.status.success());
    require(ok, &format!("the Python venv with device-connect-agent-tools at {}", py.display())).then_some(py)
}

/// One of our Python scripts (`tests/py/<script>`) as an agent-tools client of the NATS server
/// at `port` in `tenant`, with nothing from our environment but PATH and HOME.
pub fn python_on_nats(py: &Path, script: &str, tenant: &str, port: u16) -> Command {
    let url = format!("nats://127.0.0.1:{port}");
    let env = [("MESSAGING_BACKEND", "nats"), ("NATS_URL", &url), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d")];
    script_command(None, py, script, &[], &[&env[..], &[("TENANT", tenant)]].concat())
}

/// The daemon as a D2D device on the NATS server at `port`, with nothing from our environment
/// but PATH and `env`; `args` come after `--device-id` and `--tenant`.
pub fn dcd_on_nats(id: &str, tenant: &str, port: u16, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let url = format!("nats://127.0.0.1:{port}");
    let nats = [
        ("NATS_URL", url.as_str()),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("DEVICE_CONNECT_ALLOW_INSECURE", "true"),
    ];
    // The real engine under test, unless `env` names another.
    let host = engine_kind().podman().then(engine_host).flatten();
    let engine: Vec<(&str, &str)> = host.iter().map(|h| ("DOCKER_HOST", h.as_str())).collect();
    dcd(None, id, tenant, args, &[&nats[..], &engine, env].concat())
}

/// A network namespace of its own with only loopback, multicast-capable: Zenoh scouting inside
/// it reaches nothing else. Deleted on drop.
pub struct Netns(String);

impl Netns {
    pub fn create(tag: &str) -> Option<Netns> {
        let name = format!("dcd-it-{tag}-{}", std::process::id());
        let ip = |args: &[&str]| Command::new("ip").args(args).output().is_ok_and(|o| o.status.success());
        if !require(ip(&["netns", "add", &name]), "root and `ip netns` (iproute2)") {
            return None;
        }
        let ns = Netns(name);
        for args in [&["link", "set", "lo", "up", "multicast", "on"][..], &["route", "add", "224.0.0.0/4", "dev", "lo"]]
        {
            let ok = ip(&[&["netns", "exec", &ns.0, "ip"][..], args].concat());
            assert!(ok, "ip {args:?} in {}", ns.0);
        }
        Some(ns)
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `program` (in `ns` if given) with nothing from our environment but `PATH`.
pub fn command(program: impl AsRef<std::ffi::OsStr>, ns: Option<&Netns>) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.0]).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

/// The daemon (in `ns` if given) with `args` after its id and tenant, configured by `env` only.
pub fn dcd(ns: Option<&Netns>, id: &str, tenant: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = command(env!("CARGO_BIN_EXE_dcd"), ns);
    cmd.env("DCD_LOG_LEVEL", "debug")
        .args(["--tenant", tenant, "--device-id", id])
        .args(args)
        .envs(env.iter().copied());
    Proc::spawn(&format!("dcd {id}"), &mut cmd)
}

/// A script of tests/py with the venv Python (in `ns` if given), configured by `env` only.
pub fn script_command(ns: Option<&Netns>, py: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = command(py, ns);
    cmd.env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .envs(env.iter().copied());
    cmd
}

/// `script_command`, started.
pub fn script(ns: Option<&Netns>, py: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    Proc::spawn(name, &mut script_command(ns, py, name, args, env))
}

/// How long a script of tests/py may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// Wait for a script to end; it must succeed.
pub fn expect_success(p: &mut Proc) {
    let status = p.wait_exit(SCRIPT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{} failed: {status:?} (its output is above)", p.name);
}

/// Stop the daemon as a service manager would; it must depart and exit cleanly at once.
pub fn stop_daemon(d: &mut Proc) {
    d.terminate();
    let status = d.wait_exit(Duration::from_secs(3));
    assert!(status.is_some_and(|s| s.success()), "dcd did not exit cleanly within 3 s: {status:?}");
}

/// Threads and resident memory (KiB) of a process, from /proc.
pub fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

/// One message received by `Nats`.
pub struct NatsMsg {
    pub subject: String,
    pub payload: Vec<u8>,
}

/// The NATS client protocol, just enough for tests: publish, subscribe, request. Requests use one
/// wildcard inbox per connection, as nats-py does.
pub struct Nats {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// A line read only in part when a read timed out.
    pending: Vec<u8>,
    inbox: String,
    sids: u64,
    requests: u64,
}

impl Nats {
    pub fn connect(port: u16) -> std::io::Result<Nats> {
        Nats::connect_at("127.0.0.1", port)
    }

    /// `connect` to another of this host's addresses.
    pub fn connect_at(host: &str, port: u16) -> std::io::Result<Nats> {
        let writer = TcpStream::connect((host, port))?;
        writer.set_nodelay(true)?;
        let reader = BufReader::new(writer.try_clone()?);
        let inbox = format!("_INBOX.{}", dcd::ids::random_hex(16));
        let mut n = Nats { reader, writer, pending: Vec::new(), inbox, sids: 0, requests: 0 };
        n.writer.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":true}\r\nPING\r\n")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match n.line(deadline)? {
                Some(l) if l == "PONG" => break,
                Some(l) if l.starts_with("-ERR") => return Err(std::io::Error::other(l)),
                Some(_) => {}
                None => return Err(std::io::ErrorKind::TimedOut.into()),
            }
        }
        let inbox = format!("{}.*", n.inbox);
        n.sub(&inbox)?;
        Ok(n)
    }

    pub fn sub(&mut self, subject: &str) -> std::io::Result<()> {
        self.sids += 1;
        write!(self.writer, "SUB {subject} {}\r\n", self.sids)
    }

    pub fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) -> std::io::Result<()> {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut buf = head.into_bytes();
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.writer.write_all(&buf)
    }

    /// Send a request and return the inbox its reply will come to.
    pub fn send_request(&mut self, subject: &str, payload: &[u8]) -> std::io::Result<String> {
        self.requests += 1;
        let inbox = format!("{}.{}", self.inbox, self.requests);
        self.publish(subject, Some(&inbox), payload)?;
        Ok(inbox)
    }

    /// A request and its reply; `None` when no reply came within `timeout`. Messages for other
    /// subjects (late replies, subscriptions) that arrive meanwhile are skipped.
    pub fn request(&mut self, subject: &str, payload: &[u8], timeout: Duration) -> std::io::Result<Option<Vec<u8>>> {
        let inbox = self.send_request(subject, payload)?;
        let deadline = Instant::now() + timeout;
        while let Some(m) = self.next(deadline)? {
            if m.subject == inbox {
                return Ok(Some(m.payload));
            }
        }
        Ok(None)
    }

    /// The next message before `deadline`.
    pub fn next(&mut self, deadline: Instant) -> std::io::Result<Option<NatsMsg>> {
        while let Some(line) = self.line(deadline)? {
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n")?;
                continue;
            }
            if line.starts_with("-ERR") {
                return Err(std::io::Error::other(line));
            }
            let Some(rest) = line.strip_prefix("MSG ") else {
                continue;
            };
            let parts: Vec<&str> = rest.split(' ').collect();
            let len: usize =
                parts.last().and_then(|l| l.parse().ok()).ok_or_else(|| std::io::Error::other(line.clone()))?;
            // The payload follows its header at once.
            self.reader.get_ref().set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut payload = vec![0; len + 2];
            self.reader.read_exact(&mut payload)?;
            payload.truncate(len);
            return Ok(Some(NatsMsg { subject: parts[0].to_string(), payload }));
        }
        Ok(None)
    }

    fn line(&mut self, deadline: Instant) -> std::io::Result<Option<String>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            match self.reader.read_until(b'\n', &mut self.pending) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) if self.pending.ends_with(b"\n") => {
                    let line = String::from_utf8_lossy(&self.pending).trim_end().to_string();
                    self.pending.clear();
                    return Ok(Some(line));
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `device-connect.<tenant>.<id>.<tail>`
pub fn subject(tenant: &str, id: &str, tail: &str) -> String {
    format!("device-connect.{tenant}.{id}.{tail}")
}

/// A JSON-RPC request payload with a fresh string id.
pub fn rpc_request(method: &str, params: serde_json::Value) -> (String, Vec<u8>) {
    let id = format!("t-{}", dcd::ids::random_hex(12));
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    (id, body.to_string().into_bytes())
}

/// A driver with its state thread, called in-process.
pub struct Rig {
    pub driver: Driver,
    pub events: crossbeam_channel::Receiver<Event>,
    state: Option<State>,
}

impl Rig {
    pub fn new(engine: Arc<dyn Engine>, simulate: bool) -> Rig {
        Rig::with(engine, simulate, 10_000, 2.0)
    }

    /// One queue of `queue` slots for both kinds of events; the state poll at `poll_hz`.
    pub fn with(engine: Arc<dyn Engine>, simulate: bool, queue: usize, poll_hz: f64) -> Rig {
        Rig::under(engine, simulate, queue, poll_hz, Policy::default())
    }

    /// `with`, under the operator's `policy`.
    pub fn under(engine: Arc<dyn Engine>, simulate: bool, queue: usize, poll_hz: f64, policy: Policy) -> Rig {
        let (tx, events) = crossbeam_channel::bounded(queue);
        let ev = Events::new(tx.clone(), tx);
        let state = State::start(engine.clone(), poll_hz, ev.clone(), Forward::Off);
        let driver = Driver::new(engine, simulate, poll_hz, state.handle(), ev, policy);
        Rig { driver, events, state: Some(state) }
    }

    /// The reply, which a function that runs as a job sends from its thread.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Error> {
        let Value::Object(p) = params else { panic!("params must be an object") };
        let (tx, rx) = std::sync::mpsc::channel();
        self.driver.call(
            method,
            p,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        // A result given as JSON text must parse: it reaches callers unchecked.
        rx.recv().expect("every call is answered").map(|b| match b {
            Body::Value(v) => v,
            Body::Json(text) => serde_json::from_str(&text).expect("the result is valid JSON"),
        })
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        match self.call(method, params.clone()) {
            Ok(v) => v,
            Err(e) => panic!("{method} {params}: {e}"),
        }
    }

    pub fn err(&self, method: &str, params: Value) -> String {
        match self.call(method, params.clone()) {
            Ok(v) => panic!("{method} {params} succeeded: {v}"),
            Err(e) => e.to_string(),
        }
    }

    /// Wait for an event matching `f`.
    pub fn event(&self, what: &str, f: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(e) = self.events.recv_deadline(deadline) {
            if f(&e) {
                return e;
            }
        }
        panic!("no {what} event within 10 s");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.driver.shutdown();
        if let Some(s) = self.state.take() {
            s.shutdown();
        }
    }
}

/// The params of an event's JSON-RPC notification.
pub fn params(e: &Event) -> Value {
    let mut body: Value = serde_json::from_slice(&e.payload).expect("an event is JSON");
    body["params"].take()
}

/// A labelled container name for the real-engine test, removed on drop.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            docker(&["rm", "-f", n]);
        }
    }
}

/// What carries compose project `project`'s label (containers, networks, volumes), by id, as the
/// docker CLI lists it: empty when nothing does.
pub fn compose_objects(project: &str) -> String {
    let label = format!("label=com.docker.compose.project={project}");
    let mut all = vec![docker(&["ps", "-aq", "--filter", &label])];
    for kind in ["network", "volume"] {
        all.push(docker(&[kind, "ls", "-q", "--filter", &label]));
    }
    all.join(" ").trim().to_string()
}

/// Removes on drop everything labelled with a compose project.
pub struct ComposeCleanup(pub String);

impl Drop for ComposeCleanup {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.0);
        for id in docker(&["ps", "-aq", "--filter", &label]).lines() {
            docker(&["rm", "-f", id]);
        }
        for kind in ["network", "volume"] {
            for id in docker(&[kind, "ls", "-q", "--filter", &label]).lines() {
                docker(&[kind, "rm", id]);
            }
        }
    }
}

/// The real engine and the test image (see `require`).
pub fn real_engine() -> Option<(Arc<dyn Engine>, String)> {
    let engine = engine()?;
    Some((engine, test_image()?))
}

/// A rig on the real engine, and the test image.
pub fn real_rig() -> Option<(Rig, String)> {
    let (engine, image) = real_engine()?;
    Some((Rig::new(engine, false), image))
}

/// What a test through the mesh needs: the engine, the test image, nats-server and the Python
/// agent tools (see `require`).
pub fn mesh_parts() -> Option<(PathBuf, String)> {
    engine()?;
    let image = test_image()?;
    if !nats_installed() {
        return None;
    }
    Some((python()?, image))
}

/// How long one call through the mesh may take; serve.py's own timeout (30 s) comes first, so a
/// lost reply shows as its error rather than as this.
const MESH_CALL: Duration = Duration::from_secs(40);

/// The daemon on a loopback nats-server, called by the unmodified Python agent tools
/// (tests/py/serve.py) as an agent on another host would call it. `ok` and `err` mean what
/// `Rig`'s do. Everything is killed on drop, the client first.
pub struct MeshRig {
    pub id: String,
    pub tenant: String,
    /// The NATS server's port, for raw clients beside the Python one.
    pub port: u16,
    client: Proc,
    /// serve.py's stdin and the last request id; one call at a time.
    requests: std::sync::Mutex<(ChildStdin, u64)>,
    pub dcd: Proc,
    _nats: Proc,
}

impl MeshRig {
    /// The daemon started with `args` and `env` besides its NATS settings, once the Python
    /// client has discovered it.
    pub fn start(py: &Path, args: &[&str], env: &[(&str, &str)]) -> MeshRig {
        let (id, tenant, port) = ("dcd-mesh".to_string(), unique("mesh"), free_port());
        let nats = nats_server(port, &[]);
        let dcd = dcd_on_nats(&id, &tenant, port, args, env);
        dcd.expect_line(READY, Duration::from_secs(15));
        let (client, stdin) = Proc::spawn_piped("serve.py", python_on_nats(py, "serve.py", &tenant, port).arg(&id));
        client.expect_line(r#"{"ready": true}"#, Duration::from_secs(30));
        MeshRig { id, tenant, port, client, requests: std::sync::Mutex::new((stdin, 0)), dcd, _nats: nats }
    }

    /// serve.py's reply to `request` (which gets an id).
    fn send(&self, mut request: Value) -> Value {
        let mut guard = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let (stdin, last) = &mut *guard;
        *last += 1;
        request["id"] = (*last).into();
        writeln!(stdin, "{request}").expect("serve.py's stdin");
        let deadline = Instant::now() + MESH_CALL;
        while let Ok(line) = self.client.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            // Its stderr comes on the same channel, and so would a reply given up on earlier.
            match serde_json::from_str::<Value>(&line) {
                Ok(reply) if reply["id"] == request["id"] => return reply,
                _ => {}
            }
        }
        panic!("serve.py did not answer {request} within {MESH_CALL:?}");
    }

    /// The JSON-RPC result, or the error object.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let mut reply = self.send(serde_json::json!({"method": method, "params": params}));
        match reply.get_mut("result") {
            Some(result) => Ok(result.take()),
            None => Err(reply["error"].take()),
        }
    }

    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params.clone()).unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    }

    /// The device's refusal (-32000) with the "Error invoking <method>: " of the wire stripped,
    /// so it reads as `Rig::err`'s.
    pub fn err(&self, method: &str, params: Value) -> String {
        let e = match self.call(method, params.clone()) {
            Ok(v) => panic!("{method} {params} succeeded: {v}"),
            Err(e) => e,
        };
        let message = e["message"].as_str().and_then(|m| m.strip_prefix(&format!("Error invoking {method}: ")));
        match message {
            Some(m) if e["code"] == -32000 => m.to_string(),
            _ => panic!("{method} {params}: not a refusal by the device: {e}"),
        }
    }

    /// What `discover(selector)` of the agent tools answers.
    pub fn discover(&self, selector: &str) -> Value {
        self.send(serde_json::json!({"discover": selector}))["result"].take()
    }
}

/// A mesh rig on the real engine with the default policy, and the test image.
pub fn real_mesh_rig() -> Option<(MeshRig, String)> {
    let (py, image) = mesh_parts()?;
    Some((MeshRig::start(&py, &[], &[]), image))
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (a registry) that passes
/// what comes back at most `rate` bytes a second, as a slow site link does.
/// With `cut_after`, the link goes down once a connection has carried that
/// many bytes back: that connection is closed, and every later one is
/// answered `403 DENIED`, which the engine does not retry. Stops on drop.
pub struct SlowProxy {
    pub port: u16,
    stats: Arc<ProxyStats>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct ProxyStats {
    /// Bytes passed back to the client.
    down: std::sync::atomic::AtomicU64,
    /// Connections the client closed before the upstream had sent all.
    abandoned: std::sync::atomic::AtomicUsize,
    /// The link is down (`cut_after` reached).
    cut: std::sync::atomic::AtomicBool,
    last_byte: std::sync::Mutex<Option<Instant>>,
    /// When the next chunk may go, across all connections: one link.
    next_send: std::sync::Mutex<Option<Instant>>,
}

impl SlowProxy {
    pub fn start(upstream: &str, rate: u64, cut_after: Option<u64>) -> SlowProxy {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the proxy");
        let port = listener.local_addr().unwrap().port();
        let (stats, stop) = (Arc::new(ProxyStats::default()), Arc::new(AtomicBool::new(false)));
        let (s, st, upstream) = (stats.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let (s, upstream) = (s.clone(), upstream.clone());
                std::thread::spawn(move || proxy_one(client, &upstream, rate, cut_after, &s));
            }
        });
        SlowProxy { port, stats, stop }
    }

    /// Bytes passed back so far.
    pub fn bytes(&self) -> u64 {
        self.stats.down.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections the client gave up on mid-transfer.
    pub fn abandoned(&self) -> usize {
        self.stats.abandoned.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When the last byte went back to the client.
    pub fn last_byte(&self) -> Option<Instant> {
        *self.stats.last_byte.lock().unwrap()
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn proxy_one(mut client: TcpStream, upstream: &str, rate: u64, cut_after: Option<u64>, stats: &ProxyStats) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    if stats.cut.load(SeqCst) {
        let body = r#"{"errors":[{"code":"DENIED","message":"the link is down"}]}"#;
        let _ = write!(
            client,
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    let Ok(up) = TcpStream::connect(upstream) else { return };
    let (mut up_w, mut client_r) = (up.try_clone().unwrap(), client.try_clone().unwrap());
    let client_gone = Arc::new(AtomicBool::new(false));
    let gone = client_gone.clone();
    // Client to registry, unpaced; the client's end of it is its close.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut up_w);
        gone.store(true, SeqCst);
        let _ = up_w.shutdown(std::net::Shutdown::Write);
    });
    let chunk = (rate / 20).clamp(1024, 64 * 1024) as usize;
    let mut buf = vec![0; chunk];
    let (mut up_r, mut carried) = (up, 0u64);
    loop {
        let n = match up_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // One link for all connections: each chunk waits its turn.
        let at = {
            let mut next = stats.next_send.lock().unwrap();
            let at = next.map_or_else(Instant::now, |t| t.max(Instant::now()));
            *next = Some(at + Duration::from_secs_f64(n as f64 / rate as f64));
            at
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        if client.write_all(&buf[..n]).is_err() || client_gone.load(SeqCst) {
            stats.abandoned.fetch_add(1, SeqCst);
            break;
        }
        carried += n as u64;
        stats.down.fetch_add(n as u64, SeqCst);
        *stats.last_byte.lock().unwrap() = Some(Instant::now());
        if cut_after.is_some_and(|c| carried >= c) {
            stats.cut.store(true, SeqCst);
            break;
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = up_r.shutdown(std::net::Shutdown::Both);
}
