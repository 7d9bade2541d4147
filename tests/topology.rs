//! Issue #14, part 1: every topology delivers every event. One table (`ROWS`), a row per way the
//! device and the unmodified Python tools (agent-tools and -edge 0.2.5) can meet on NATS or
//! Zenoh. Each row runs the same check through tests/py/events.py, which both calls the device
//! and hears it: discovery (presence in D2D, registration in infra), a heartbeat, a state flip
//! (`container_state_changed`) and a followed log with both streams (`container_log_line`).
//!
//! Rows with `outage` then kill what the device connects to (router, listening peer or
//! nats-server), change a container behind the device's back and let the log run on, bring it
//! back on the same port, and check that the change is replayed, the log lines of the outage
//! arrive, and the device publishes again. These need the real engine: during the outage no
//! RPC reaches a simulated one.
//!
//! The router is the `zenoh` crate dcd already links, in router mode (Debian has no zenohd):
//! this test binary started again as `zenoh_router` below, so a row can kill it like any router.
//!
//! Loopback only. Zenoh multicast scouting is off except in the network namespaces made here:
//! the multicast row's, and the client-of-a-peer rows', whose Python peer scouts because the
//! agent tools in peer mode always do (they have no switch for it).

mod common;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use common::client::{Client, IMAGE, WAIT};
use common::{dcd, free_port, nats_server, script, Cleanup, Netns, Proc, READY};

/// Rows at a time: each runs a daemon and two or three Python processes.
const PARALLEL: usize = 4;
/// Both streams, numbered, five lines a second each, until stopped.
const TICKER: &str = "i=0; while :; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.2; done";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Topology {
    /// The device is a peer listening on loopback; the client dials it (in client mode).
    ListeningPeer,
    /// The client is a peer listening on loopback; the device dials it (in client mode).
    ClientOfPeer,
    /// Both are clients of a router, D2D (presence through the router).
    ClientsOfRouter,
    /// Both are clients of a router; the device registers with registry.py, also its client.
    InfraViaRouter,
    /// Both are peers that find each other by multicast scouting, beside a second dcd peer.
    Multicast,
    NatsD2d,
    NatsInfra,
}
use Topology::*;

struct Row {
    name: &'static str,
    topology: Topology,
    /// The real engine instead of `--sim`.
    real: bool,
    /// Kill and restart what the device connects to (needs `real`).
    outage: bool,
}

impl Row {
    /// Whether Zenoh scouts by multicast in this row, so it runs in a namespace of its own.
    fn netns(&self) -> bool {
        matches!(self.topology, ClientOfPeer | Multicast)
    }
}

const ROWS: &[Row] = &[
    Row { name: "zenoh-listening-peer", topology: ListeningPeer, real: false, outage: false },
    Row { name: "zenoh-client-of-peer-sim", topology: ClientOfPeer, real: false, outage: false },
    Row { name: "zenoh-client-of-peer", topology: ClientOfPeer, real: true, outage: true },
    Row { name: "zenoh-clients-of-router", topology: ClientsOfRouter, real: true, outage: true },
    Row { name: "zenoh-infra-via-router", topology: InfraViaRouter, real: true, outage: true },
    Row { name: "zenoh-multicast", topology: Multicast, real: false, outage: false },
    Row { name: "nats-d2d", topology: NatsD2d, real: false, outage: false },
    // The NATS reference for what the Zenoh rows' outages must deliver.
    Row { name: "nats-infra", topology: NatsInfra, real: true, outage: true },
];

#[test]
fn every_topology_delivers_every_event() {
    let Some(py) = common::python() else { return };
    if !common::nats_installed() {
        return;
    }
    let real = common::engine().is_some() && common::test_image().is_some();
    let netns = Netns::create("probe").is_some();
    // DCD_TOPOLOGY_ROW=<part of a name> runs only the rows it names.
    let only = std::env::var("DCD_TOPOLOGY_ROW").unwrap_or_default();
    let queue = Mutex::new(ROWS.iter().filter(|r| r.name.contains(&only)));
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let Some(row) = queue.lock().unwrap().next() else { break };
                let t0 = Instant::now();
                let outcome = if row.real && !real {
                    "skipped: no engine or test image".to_string()
                } else if row.netns() && !netns {
                    "skipped: no network namespaces".to_string()
                } else {
                    match std::panic::catch_unwind(|| run(row, &py)) {
                        Ok(()) => "ok".to_string(),
                        Err(e) => {
                            let why =
                                e.downcast_ref::<String>().cloned().or(e.downcast_ref::<&str>().map(|s| s.to_string()));
                            format!("FAILED: {}", why.unwrap_or_default())
                        }
                    }
                };
                results.lock().unwrap().push((row.name, t0.elapsed(), outcome));
            });
        }
    });
    let results = results.into_inner().unwrap();
    eprintln!("\ntopology matrix:");
    for (name, took, outcome) in &results {
        eprintln!("  {name:26} {:5.1} s  {outcome}", took.as_secs_f64());
    }
    let failed = results.iter().filter(|(_, _, outcome)| outcome.starts_with("FAILED")).count();
    assert!(failed == 0, "{failed} of {} rows failed (see above)", results.len());
}

/// Not a check: the Zenoh router of the router rows, when this binary is started again by
/// `common::router::start`.
#[test]
fn zenoh_router() {
    common::router::serve();
}

/// What the device connects to, started, if anything.
fn start_server(topology: Topology, port: u16) -> Option<Proc> {
    match topology {
        NatsD2d | NatsInfra => Some(nats_server(port, &[])),
        ClientsOfRouter | InfraViaRouter => Some(common::router::start(&format!("tcp/127.0.0.1:{port}"), &[])),
        ListeningPeer | ClientOfPeer | Multicast => None,
    }
}

/// One row, start to end; panics on the first thing that is not as it should be.
fn run(row: &Row, py: &Path) {
    let (tenant, id) = (common::unique(row.name), format!("dcd-{}", row.name));
    let port = free_port();
    let (endpoint, url) = (format!("tcp/127.0.0.1:{port}"), format!("nats://127.0.0.1:{port}"));
    let ns = row.netns().then(|| Netns::create(row.name).expect("a network namespace"));
    let ns = ns.as_ref();
    let server = start_server(row.topology, port);
    let registry = match row.topology {
        InfraViaRouter => Some(script(None, py, "registry.py", &["zenoh", &endpoint, &tenant, "--connect"], &[])),
        NatsInfra => Some(script(None, py, "registry.py", &["nats", &url, &tenant], &[])),
        _ => None,
    };
    if let Some(r) = &registry {
        r.expect_line("registry ready", WAIT);
    }
    let d2d = ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d");
    let insecure = ("DEVICE_CONNECT_ALLOW_INSECURE", "true");
    let device_env: Vec<(&str, &str)> = match row.topology {
        ListeningPeer => vec![("ZENOH_LISTEN", &endpoint), ("DCD_ZENOH_MULTICAST", "false")],
        ClientOfPeer | ClientsOfRouter => vec![("ZENOH_CONNECT", &endpoint), d2d],
        InfraViaRouter => vec![("ZENOH_CONNECT", &endpoint)],
        Multicast => vec![],
        NatsD2d => vec![("NATS_URL", &url), d2d, insecure],
        NatsInfra => vec![("NATS_URL", &url), insecure],
    };
    let mut client_env: Vec<(&str, &str)> = match row.topology {
        ListeningPeer | ClientsOfRouter => vec![("MESSAGING_BACKEND", "zenoh"), ("ZENOH_CONNECT", &endpoint), d2d],
        ClientOfPeer => vec![("MESSAGING_BACKEND", "zenoh"), ("ZENOH_LISTEN", &endpoint), d2d],
        InfraViaRouter => vec![("MESSAGING_BACKEND", "zenoh"), ("ZENOH_CONNECT", &endpoint)],
        Multicast => vec![("MESSAGING_BACKEND", "zenoh")],
        NatsD2d => vec![("MESSAGING_BACKEND", "nats"), ("NATS_URL", &url), d2d],
        NatsInfra => vec![("MESSAGING_BACKEND", "nats"), ("NATS_URL", &url)],
    };
    client_env.push(("TENANT", &tenant));

    // A second dcd peer beside the device, which the client must reach as well.
    let bystander = (row.topology == Multicast).then(|| {
        let b = dcd(ns, &format!("{id}-b"), &tenant, &["--sim"], &[]);
        b.expect_line(READY, WAIT);
        b
    });
    let mut device = dcd(ns, &id, &tenant, if row.real { &[] } else { &["--sim"] }, &device_env);
    // A client of a peer opens its session only once that peer listens: the client first.
    let mut client = Client::start(ns, py, &id, &client_env);
    device.expect_line(READY, WAIT);
    client.ready();
    if bystander.is_some() {
        let mut call = script(ns, py, "call.py", &[&format!("{id}-b"), "get_status"], &client_env);
        common::expect_success(&mut call);
    }
    if let Some(r) = &registry {
        r.expect_line(&format!("\"registered\": \"{id}\""), WAIT);
    }

    // The check of every row.
    client.heartbeat(&id);
    let [sleeper, ticker] = ["sleeper", "ticker"].map(|n| common::unique(&format!("{}-{n}", row.name)));
    let _cleanup = row.real.then(|| Cleanup(vec![sleeper.clone(), ticker.clone()]));
    let sleeper_id = client.provision(&sleeper, &["sleep", "300"]);
    client.state(&sleeper_id, "running");
    client.ok("stop_container", json!({"container_id": sleeper_id, "timeout_s": 1}));
    client.transition(&sleeper_id, "running", "exited");
    let ticker_id = client.provision(&ticker, &["sh", "-c", TICKER]);
    client.ok("container_logs", json!({"container_id": ticker_id, "follow": true}));
    for stream in ["stdout", "stderr"] {
        client.wait(&format!("a {stream} log line"), WAIT, |m| {
            m["method"] == "container_log_line"
                && m["params"]["container_id"] == ticker_id
                && m["params"]["stream"] == stream
        });
    }
    if row.topology == ListeningPeer {
        // This row was the Zenoh interop test: every function, as well.
        common::expect_success(&mut script(None, py, "interop.py", &[&id, IMAGE], &client_env));
    }

    if row.outage {
        assert!(row.real, "{}: an outage needs the real engine", row.name);
        // Down: the client goes too (for a client of a peer, it is the peer).
        drop(client);
        drop(server);
        device.expect_line("mesh connection lost", WAIT);
        // Made while the device knows it is cut off: all of it must reach the next client.
        let first = last_tick(&ticker) + 1;
        common::docker(&["start", &sleeper]);
        std::thread::sleep(Duration::from_millis(1500));
        // The device waits (stopped) until the next client subscribed, so nothing is published
        // before anyone can hear it: the restarted server and a fresh client both come back
        // first, while whether the device or the client reconnects first would otherwise be
        // a race that nothing on the wire settles.
        device.signal(libc::SIGSTOP);
        let last = last_tick(&ticker);
        assert!(last >= first, "{}: the ticker did not tick during the outage", row.name);
        let _server = start_server(row.topology, port);
        client = Client::start(ns, py, &id, &client_env);
        client.wait("the subscriptions", WAIT * 2, |m| m["subscribed"] == true);
        device.signal(libc::SIGCONT);
        device.expect_line("mesh connection back", WAIT * 2);
        client.ready();
        if let Some(r) = &registry {
            r.expect_line(&format!("\"registered\": \"{id}\""), WAIT * 2);
        }
        // Replayed, in order: the state change, and every line of both streams.
        client.transition(&sleeper_id, "exited", "running");
        for stream in ["stdout", "stderr"] {
            let word = if stream == "stdout" { "tick" } else { "tock" };
            for n in first..=last {
                let line = format!("{word} {n}");
                client.wait(&format!("{stream} line {line:?} of the outage"), WAIT, |m| {
                    m["method"] == "container_log_line"
                        && m["params"]["container_id"] == ticker_id
                        && m["params"]["stream"] == stream
                        && m["params"]["line"].as_str().is_some_and(|l| l.trim_end() == line)
                });
            }
        }
        // And publishing again, live.
        client.heartbeat(&id);
        client.ok("stop_container", json!({"container_id": sleeper_id, "timeout_s": 1}));
        client.transition(&sleeper_id, "running", "exited");
        eprintln!("{}: {} lines per stream and a state change replayed after the outage", row.name, last - first + 1);
    }

    drop(client);
    if bystander.is_some() {
        common::stop_daemon(&mut device);
    }
}

/// The highest `tick N` the engine has in `name`'s log so far.
fn last_tick(name: &str) -> u64 {
    let out = common::docker(&["logs", "--tail", "10", name]);
    out.lines().filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok()).max().unwrap_or(0)
}
