//! What an operator sees: systemd's readiness and watchdog (a fake `NOTIFY_SOCKET`), and the
//! daemon's log saying once, with what to check, when the engine or the broker is missing.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{dcd_on_nats, free_port, nats_server, Proc};

/// A fake systemd: the datagrams the daemon sends to `NOTIFY_SOCKET`.
struct FakeSystemd {
    sock: UnixDatagram,
    dir: std::path::PathBuf,
}

impl FakeSystemd {
    fn new(tag: &str) -> FakeSystemd {
        let dir = std::env::temp_dir().join(common::unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = UnixDatagram::bind(dir.join("notify")).unwrap();
        FakeSystemd { sock, dir }
    }

    fn path(&self) -> String {
        self.dir.join("notify").to_string_lossy().into_owned()
    }

    /// The next message within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 256];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The simulated daemon on a fresh nats-server, told about the fake systemd.
fn daemon(systemd: &FakeSystemd, extra: &[(&str, &str)]) -> (Proc, Proc) {
    let port = free_port();
    let nats = nats_server(port, &[]);
    let path = systemd.path();
    let mut env = vec![("NOTIFY_SOCKET", path.as_str()), ("WATCHDOG_USEC", "2000000")];
    env.extend_from_slice(extra);
    let dcd = dcd_on_nats("dcd-notify", &common::unique("notify"), port, &["--sim"], &env);
    (nats, dcd)
}

#[test]
fn ready_then_watchdog_pings_then_stopping() {
    if !common::require(common::nats_installed(), "nats-server") {
        return;
    }
    let systemd = FakeSystemd::new("sd");
    let (_nats, dcd) = daemon(&systemd, &[]);
    assert_eq!(systemd.next(Duration::from_secs(15)).as_deref(), Some("READY=1"));
    // WATCHDOG_USEC is 2 s: a ping every second.
    for _ in 0..3 {
        assert_eq!(systemd.next(Duration::from_secs(3)).as_deref(), Some("WATCHDOG=1"));
    }
    dcd.terminate();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stopping = false;
    while let Some(m) = systemd.next(deadline.saturating_duration_since(Instant::now())) {
        if m == "STOPPING=1" {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1 on SIGTERM");
}

#[test]
fn a_wedged_transport_stops_the_watchdog_pings() {
    if !common::require(common::nats_installed(), "nats-server") {
        return;
    }
    let systemd = FakeSystemd::new("sd-wedge");
    let (_nats, dcd) = daemon(&systemd, &[("DCD_TEST_WEDGE_TRANSPORT_S", "2")]);
    assert_eq!(systemd.next(Duration::from_secs(15)).as_deref(), Some("READY=1"));
    assert_eq!(systemd.next(Duration::from_secs(3)).as_deref(), Some("WATCHDOG=1"), "pings while live");
    dcd.expect_line("transport wedged on purpose", Duration::from_secs(10));
    // The watchdog notices within its stall bound (12 s); after that, silence.
    let deadline = Instant::now() + Duration::from_secs(20);
    while systemd.next(Duration::from_secs(4)).is_some() {
        assert!(Instant::now() < deadline, "still pinging 20 s after the transport wedged");
    }
    dcd.expect_line(
        "not pinging the systemd watchdog: the transport thread has not turned over",
        Duration::from_secs(5),
    );
}

#[test]
fn a_missing_engine_and_a_missing_broker_are_said_once_with_what_to_check() {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dcd"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NATS_URL", format!("nats://127.0.0.1:{port}"))
        .env("DEVICE_CONNECT_ALLOW_INSECURE", "true")
        .args(["--docker-host", "unix:///nonexistent/docker.sock"]);
    let dcd = Proc::spawn("dcd-missing", &mut cmd);
    // One line each, naming the address, the cause and what to check.
    dcd.expect_line(
        "/nonexistent/docker.sock: No such file or directory (os error 2) (is Docker (or Podman) running",
        Duration::from_secs(10),
    );
    dcd.expect_line(&format!("nats://127.0.0.1:{port}: client error"), Duration::from_secs(10));
    // Said once: the engine is asked again every few seconds, the broker retried, and neither
    // repeats itself.
    let later = dcd.lines_for(Duration::from_secs(8));
    for said in ["does not answer", "client error"] {
        assert!(!later.iter().any(|l| l.contains(said)), "{said:?} repeats: {later:?}");
    }
}
