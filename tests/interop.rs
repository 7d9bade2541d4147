//! Interop with the unmodified Python tools (device-connect-agent-tools and -edge 0.2.5) over a
//! real nats-server and a real Zenoh session, loopback only (wire spec §6.1). The daemon runs
//! with `--sim`. Needs nats-server and the venv of tests/setup.sh: without them the tests skip,
//! under CI they fail.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const IMAGE: &str = "dcd-test/busybox:latest";
/// The daemon's readiness line (subscriptions in place).
const READY: &str = "mesh ready";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// A child process whose output is echoed (the harness shows it when a test fails) and can be
/// waited on line by line. Killed and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
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

    /// Wait for an output line containing `needle`; lines before it are consumed.
    fn wait_line(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    fn expect_line(&self, needle: &str, timeout: Duration) {
        assert!(self.wait_line(needle, timeout), "{}: no line with {needle:?} within {timeout:?}", self.name);
    }

    /// Its exit status, or `None` (and it is killed) when it runs longer than `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }

    fn terminate(&self) {
        // SAFETY: signalling our own child, which has not been reaped yet (that happens in drop).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// Names no other test or run shares (tenants keep concurrent tests apart).
fn names(tag: &str) -> (String, String) {
    (format!("it-{tag}-{}", std::process::id()), format!("dcd-{tag}"))
}

/// The venv Python with the agent tools, if present (see `common::require`).
fn python() -> Option<PathBuf> {
    let py = std::env::var_os("DCD_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/dcd-pyvenv/bin/python")
    });
    let ok = Command::new(&py)
        .args(["-c", "import device_connect_agent_tools, device_connect_edge, nats"])
        .output()
        .is_ok_and(|o| o.status.success());
    common::require(ok, &format!("the Python venv with device-connect-agent-tools at {}", py.display())).then_some(py)
}

fn nats_installed() -> bool {
    let ok = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    common::require(ok, "nats-server")
}

/// `nats-server` on 127.0.0.1:`port`, up and accepting connections.
fn nats_server(port: u16) -> Proc {
    let p = Proc::spawn(
        &format!("nats:{port}"),
        Command::new("nats-server").args(["-a", "127.0.0.1", "-p", &port.to_string()]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// The daemon in `--sim` mode with nothing from our environment but `env`.
fn daemon(id: &str, tenant: &str, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcd"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DCD_LOG_LEVEL", "debug")
        .args(["--sim", "--tenant", tenant, "--device-id", id])
        .envs(env.iter().copied());
    Proc::spawn("dcd", &mut cmd)
}

/// A script of tests/py with the venv Python and nothing from our environment but `env`.
fn script(py: &PathBuf, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let path = format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(py);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(path)
        .args(args)
        .envs(env.iter().copied());
    Proc::spawn(name, &mut cmd)
}

fn expect_success(p: &mut Proc) {
    let status = p.wait_exit(SCRIPT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{} failed: {status:?} (its output is above)", p.name);
}

/// Stop the daemon as a service manager would; it must depart and exit cleanly at once.
fn stop_daemon(d: &mut Proc) {
    d.terminate();
    let status = d.wait_exit(Duration::from_secs(3));
    assert!(status.is_some_and(|s| s.success()), "dcd did not exit cleanly within 3 s: {status:?}");
}

fn interop(py: &PathBuf, id: &str, extra: &[&str], env: &[(&str, &str)]) {
    let mut args = vec![id, IMAGE];
    args.extend_from_slice(extra);
    expect_success(&mut script(py, "interop.py", &args, env));
}

#[test]
fn nats_d2d_sim() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-d2d");
    let port = free_port();
    let _nats = nats_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let mut dcd = daemon(
        &id,
        &tenant,
        &[("NATS_URL", &url), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")],
    );
    dcd.expect_line(READY, Duration::from_secs(15));
    let client = [
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", &url),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", &tenant),
    ];
    interop(&py, &id, &[], &client);
    stop_daemon(&mut dcd);
}

#[test]
fn zenoh_d2d_sim() {
    let Some(py) = python() else { return };
    let (tenant, id) = names("zenoh-d2d");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    // A D2D peer listening on loopback, multicast scouting off: nothing leaves this host.
    let mut dcd = daemon(&id, &tenant, &[("ZENOH_LISTEN", &endpoint), ("DCD_ZENOH_MULTICAST", "false")]);
    dcd.expect_line(READY, Duration::from_secs(15));
    // The client connects in client mode, which needs the device to drop each Query at once (§2.7).
    let client = [
        ("MESSAGING_BACKEND", "zenoh"),
        ("ZENOH_CONNECT", &endpoint),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", &tenant),
    ];
    interop(&py, &id, &[], &client);
    stop_daemon(&mut dcd);
}

#[test]
fn nats_infra_sim() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-infra");
    let port = free_port();
    let mut nats = nats_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let registry = script(&py, "registry.py", &["nats", &url, &tenant], &[]);
    registry.expect_line("registry ready", Duration::from_secs(15));
    // No discovery mode with a URL: infra, registration instead of presence (§3.1).
    let mut dcd = daemon(&id, &tenant, &[("NATS_URL", &url), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")]);
    dcd.expect_line(READY, Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(10));
    let client = [("MESSAGING_BACKEND", "nats"), ("NATS_URL", &url), ("TENANT", &tenant)];
    interop(&py, &id, &[], &client);

    // After the server comes back the device registers again.
    drop(nats);
    nats = nats_server(port);
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(20));
    drop(nats);
    stop_daemon(&mut dcd);
}

#[test]
fn zenoh_infra_sim() {
    let Some(py) = python() else { return };
    let (tenant, id) = names("zenoh-infra");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    // The stand-in registry runs the Zenoh router the device connects to as a client.
    let mut registry = script(&py, "registry.py", &["zenoh", &endpoint, &tenant], &[]);
    registry.expect_line("registry ready", Duration::from_secs(15));
    let mut dcd = daemon(&id, &tenant, &[("ZENOH_CONNECT", &endpoint)]);
    dcd.expect_line(READY, Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(10));
    let client = [("MESSAGING_BACKEND", "zenoh"), ("ZENOH_CONNECT", &endpoint), ("TENANT", &tenant)];
    interop(&py, &id, &[], &client);

    // A new router (and registry): the device reconnects and registers again.
    drop(registry);
    dcd.expect_line("mesh connection lost", Duration::from_secs(5));
    registry = script(&py, "registry.py", &["zenoh", &endpoint, &tenant], &[]);
    registry.expect_line("registry ready", Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(20));
    interop(&py, &id, &["--quick"], &client);
    stop_daemon(&mut dcd);
}

#[test]
fn nats_reconnect() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-reconnect");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let client = [
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", &url),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", &tenant),
    ];
    // The daemon starts while the server is down and waits for it.
    let mut dcd = daemon(
        &id,
        &tenant,
        &[("NATS_URL", &url), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")],
    );
    assert!(!dcd.wait_line(READY, Duration::from_secs(2)), "ready without a server");
    assert!(dcd.child.try_wait().unwrap().is_none(), "dcd gave up without a server");
    let nats = nats_server(port);
    dcd.expect_line(READY, Duration::from_secs(15));
    interop(&py, &id, &["--quick"], &client);

    drop(nats);
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    let _nats = nats_server(port);
    dcd.expect_line(READY, Duration::from_secs(15));
    interop(&py, &id, &["--quick"], &client);
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(20), "answering again took {took:?}");
    eprintln!("answering again {took:?} after the server restart");
    stop_daemon(&mut dcd);
}

#[test]
fn nats_wire_rules() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-wire");
    let port = free_port();
    let _nats = nats_server(port);
    let url = format!("nats://127.0.0.1:{port}");
    let mut dcd = daemon(
        &id,
        &tenant,
        &[("NATS_URL", &url), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")],
    );
    dcd.expect_line(READY, Duration::from_secs(15));
    let mut wire = script(&py, "wire.py", &[&url, &tenant, &id], &[]);
    wire.expect_line("await-departure", SCRIPT_TIMEOUT);
    stop_daemon(&mut dcd);
    expect_success(&mut wire);
}
