//! A Zenoh router for the tests: the `zenoh` crate dcd already links, in router mode (Debian
//! has no zenohd), run by the test binary itself started again, so a test can kill it like any
//! router. A test binary that uses `start` has a test named `zenoh_router` that calls `serve`.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use zenoh::Wait;

use super::Proc;

/// When this binary was started by `start` (`DCD_TEST_ROUTER=<endpoint>`, and
/// `DCD_TEST_ROUTER_CONNECT=<endpoints, comma-separated>`): the router, until killed. Scouting
/// off: it meets only who dials it and whom it dials. Otherwise returns at once.
pub fn serve() {
    let Some(endpoint) = std::env::var_os("DCD_TEST_ROUTER") else { return };
    let connect: Vec<String> = std::env::var("DCD_TEST_ROUTER_CONNECT")
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    let off = json!({"multicast": {"enabled": false}, "gossip": {"enabled": false}});
    let config = json!({
        "mode": "router",
        "listen": {"endpoints": [endpoint.to_string_lossy()]},
        "connect": {"endpoints": connect, "exit_on_failure": false},
        "scouting": off,
    });
    let config = zenoh::Config::from_json5(&config.to_string()).expect("router config");
    let _router = zenoh::open(config).wait().expect("router session");
    println!("router ready");
    loop {
        std::thread::park();
    }
}

/// The router of `serve` on `endpoint`, dialling the routers at `connect`, listening.
pub fn start(endpoint: &str, connect: &[&str]) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.env_clear().env("DCD_TEST_ROUTER", endpoint).env("DCD_TEST_ROUTER_CONNECT", connect.join(",")).args([
        "zenoh_router",
        "--exact",
        "--nocapture",
    ]);
    let p = Proc::spawn(&format!("router {endpoint}"), &mut cmd);
    p.expect_line("router ready", Duration::from_secs(20));
    p
}
