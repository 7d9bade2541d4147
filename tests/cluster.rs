//! Issue #16: dcd on a hub of three clustered nats-servers with a leaf node that dials it, as a
//! site gateway would, and on two Zenoh routers. The devices fail over, the leaf's devices are
//! reached from the hub, and a small fleet is discovered and answers a broadcast, all through
//! the unmodified Python agent tools. Loopback only; each test builds its own servers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::client::{Client, WAIT};
use common::{dcd, free_port, nats_server, rpc_request, script, subject, threads_and_rss, Cleanup, Nats, Proc, READY};

/// How long a device may take to be back on another server (issue #16).
const FAILOVER: Duration = Duration::from_secs(5);

/// Not a check: the Zenoh routers of `zenoh_device_fails_over_to_the_other_router`, when this
/// binary is started again by `common::router::start`.
#[test]
fn zenoh_router() {
    common::router::serve();
}

/// One nats-server from a config file, which can be killed and started again on its ports.
struct Server {
    port: u16,
    /// The monitoring endpoint (`/varz`, `/connz`, `/routez`, `/leafz`).
    monitor: u16,
    conf: PathBuf,
    proc: Option<Proc>,
}

impl Server {
    fn new(dir: &Path, name: &str, body: &str) -> Server {
        let (port, monitor) = (free_port(), free_port());
        let conf = dir.join(format!("{name}.conf"));
        let text = format!("server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n{body}");
        std::fs::write(&conf, text).expect("nats-server config");
        Server { port, monitor, conf, proc: None }
    }

    fn start(&mut self) {
        self.proc = Some(nats_server(self.port, &["-c", self.conf.to_str().unwrap()]));
    }

    fn kill(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A monitoring page, as JSON (null while the server is not there).
    fn page(&self, path: &str) -> Value {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.monitor)) else { return Value::Null };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut text = String::new();
        if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() || s.read_to_string(&mut text).is_err()
        {
            return Value::Null;
        }
        text.split_once("\r\n\r\n").and_then(|(_, body)| serde_json::from_str(body).ok()).unwrap_or(Value::Null)
    }

    /// How many clients named `name` are connected.
    fn clients(&self, name: &str) -> usize {
        let page = self.page("/connz?limit=10000");
        page["connections"].as_array().map_or(0, |c| c.iter().filter(|c| c["name"] == name).count())
    }
}

/// Three hub servers in one cluster, each also listening for leaf nodes, and a leaf server that
/// dials all three, as a site gateway does (deploy/nats-leaf.conf is the same shape).
struct Hub {
    dir: PathBuf,
    members: Vec<Server>,
    leaf: Server,
}

impl Hub {
    fn start(tag: &str) -> Hub {
        let dir = std::env::temp_dir().join(common::unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        let (routes, leafs): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
        let route_urls: Vec<String> = routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let members: Vec<Server> = (0..3)
            .map(|i| {
                let body = format!(
                    "cluster {{\n  name: hub\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\nleafnodes {{ listen: 127.0.0.1:{} }}\n",
                    routes[i],
                    route_urls.join(", "),
                    leafs[i]
                );
                Server::new(&dir, &format!("hub-{i}"), &body)
            })
            .collect();
        let remotes: Vec<String> = leafs.iter().map(|p| format!("nats-leaf://127.0.0.1:{p}")).collect();
        let leaf =
            Server::new(&dir, "leaf", &format!("leafnodes {{ remotes: [{{ urls: [{}] }}] }}\n", remotes.join(", ")));
        let mut hub = Hub { dir, members, leaf };
        for s in hub.members.iter_mut().chain([&mut hub.leaf]) {
            s.start();
        }
        hub.wait_linked();
        hub
    }

    /// Until every member routes to the two others and the leaf is linked to the hub.
    fn wait_linked(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let routed = self.members.iter().all(|m| m.page("/routez")["num_routes"].as_u64() >= Some(2));
            let leafed = self.leaf.page("/leafz")["leafnodes"].as_u64() == Some(1);
            if routed && leafed {
                return;
            }
            assert!(Instant::now() < deadline, "the hub did not form within {WAIT:?} (routed {routed}, leaf {leafed})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// All three members' URLs, for a device.
    fn urls(&self) -> String {
        self.members.iter().map(Server::url).collect::<Vec<_>>().join(",")
    }

    /// Which member a dcd is connected to (there must be exactly one dcd on the hub).
    fn serving_dcd(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let on: Vec<usize> = (0..3).filter(|&i| self.members[i].clients("dcd") > 0).collect();
            if let [i] = on[..] {
                return i;
            }
            assert!(Instant::now() < deadline, "no single member serves the device: {on:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent tools' environment for a D2D client (or device) on `urls` in `tenant`.
fn nats_env<'a>(urls: &'a str, tenant: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", urls),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("DEVICE_CONNECT_ALLOW_INSECURE", "true"),
        ("TENANT", tenant),
    ]
}

/// The device's server goes away: the device is on another member within `FAILOVER`, what
/// changed on the engine meanwhile reaches the client on a third, and RPCs and live events go on.
#[test]
fn nats_device_fails_over_to_another_member() {
    let Some(py) = common::python() else { return };
    if !common::nats_installed() || common::engine().is_none() || common::test_image().is_none() {
        return;
    }
    let mut hub = Hub::start("failover");
    let (tenant, id) = (common::unique("failover"), "dcd-failover".to_string());
    let urls = hub.urls();
    let device = dcd(None, &id, &tenant, &[], &nats_env(&urls, &tenant));
    device.expect_line(READY, WAIT);
    let on = hub.serving_dcd();
    let other = hub.members[(on + 1) % 3].url();
    let mut client = Client::start(None, &py, &id, &nats_env(&other, &tenant));
    client.ready();

    let sleeper = common::unique("failover-sleeper");
    let _cleanup = Cleanup(vec![sleeper.clone()]);
    let cid = client.provision(&sleeper, &["sleep", "300"]);
    client.state(&cid, "running");

    let down = Instant::now();
    hub.members[on].kill();
    device.expect_line("mesh connection lost", WAIT);
    // Made behind the device's back while it reconnects: it must reach the client afterwards.
    common::docker(&["stop", "-t", "0", &sleeper]);
    device.expect_line("mesh connection back", WAIT);
    let took = down.elapsed();
    let now_on = hub.serving_dcd();
    assert_ne!(now_on, on, "the device is back on the server that was killed");
    assert!(took < FAILOVER, "the device took {took:?} to fail over (want < {FAILOVER:?})");
    eprintln!("failover: hub-{on} killed, device on hub-{now_on} after {took:?}");

    client.transition(&cid, "running", "exited");
    client.ok("get_status", json!({}));
    client.heartbeat(&id);
    common::docker(&["start", &sleeper]);
    client.transition(&cid, "exited", "running");
}

/// Bench, not CI (bash bench/soak.sh; issue 20): the member a device is on is killed ten times,
/// and started again after each kill. The device lists all three members; a caller on another
/// member times how long until it answers again.
#[test]
#[ignore = "bench: bash bench/soak.sh"]
fn nats_member_killed_ten_times() {
    if !common::nats_installed() {
        return;
    }
    const KILLS: usize = 10;
    let mut hub = Hub::start("kills");
    let (tenant, id) = (common::unique("kills"), "dcd-kills".to_string());
    let device = dcd(None, &id, &tenant, &["--sim"], &nats_env(&hub.urls(), &tenant));
    device.expect_line(READY, WAIT);
    let cmd = subject(&tenant, &id, "cmd");
    let (mut took, mut first) = (Vec::new(), None);
    for kill in 1..=KILLS {
        let on = hub.serving_dcd();
        let via = (on + 1) % 3;
        let mut caller = Nats::connect(hub.members[via].port).expect("connect to a surviving member");
        let down = Instant::now();
        hub.members[on].kill();
        loop {
            assert!(down.elapsed() < WAIT, "kill {kill}: no answer through hub-{via} within {WAIT:?}");
            let (rid, payload) = rpc_request("get_status", json!({}));
            let reply = caller.request(&cmd, &payload, Duration::from_millis(100)).expect("the caller's member");
            let answered = reply.and_then(|r| serde_json::from_slice::<Value>(&r).ok());
            if answered.is_some_and(|v| v["id"] == rid.as_str() && v.get("result").is_some()) {
                break;
            }
        }
        took.push(down.elapsed());
        eprintln!("KILL {kill}: hub-{on} killed, answering through hub-{via} after {:?}", took[kill - 1]);
        hub.members[on].start();
        hub.wait_linked();
        if kill == 1 {
            first = Some(threads_and_rss(device.pid()));
        }
    }
    let ((threads0, rss0), (threads, rss)) = (first.unwrap(), threads_and_rss(device.pid()));
    let mean = took.iter().sum::<Duration>() / KILLS as u32;
    eprintln!(
        "KILL {KILLS} member kills: answering again after {mean:?} on average, {:?} at best, {:?} at worst; \
         threads {threads0} -> {threads}, RSS {rss0} -> {rss} KiB",
        took.iter().min().unwrap(),
        took.iter().max().unwrap()
    );
    assert!(threads <= threads0 + 2, "threads grew from {threads0} to {threads}");
}

/// A device behind the leaf node is reached from a client on the hub, before and after the leaf
/// restarts.
#[test]
fn nats_device_behind_a_leaf_survives_its_restart() {
    let Some(py) = common::python() else { return };
    if !common::nats_installed() {
        return;
    }
    let mut hub = Hub::start("leaf");
    let (tenant, id) = (common::unique("leaf"), "dcd-leaf".to_string());
    let leaf = hub.leaf.url();
    let device = dcd(None, &id, &tenant, &["--sim"], &nats_env(&leaf, &tenant));
    device.expect_line(READY, WAIT);
    let on_hub = hub.members[1].url();
    let mut client = Client::start(None, &py, &id, &nats_env(&on_hub, &tenant));
    client.ready();

    hub.leaf.kill();
    device.expect_line("mesh connection lost", WAIT);
    hub.leaf.start();
    device.expect_line("mesh connection back", WAIT);
    hub.wait_linked();
    client.ok("get_status", json!({}));
    client.heartbeat(&id);
    // And a client that comes after the restart discovers it.
    let mut late = script(None, &py, "call.py", &[&id, "get_status"], &nats_env(&on_hub, &tenant));
    common::expect_success(&mut late);
}

/// Zenoh: two routers linked to each other; the device lists both, the client is on the one the
/// device is not on. The device's router goes away: the device moves to the other, and RPCs and
/// events go on.
#[test]
fn zenoh_device_fails_over_to_the_other_router() {
    let Some(py) = common::python() else { return };
    let ports = [free_port(), free_port()];
    let endpoints = ports.map(|p| format!("tcp/127.0.0.1:{p}"));
    let mut routers = vec![Some(common::router::start(&endpoints[0], &[]))];
    routers.push(Some(common::router::start(&endpoints[1], &[&endpoints[0]])));
    let (tenant, id) = (common::unique("zfailover"), "dcd-zfailover".to_string());
    let both = endpoints.join(",");
    let d2d = ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d");
    let device = dcd(None, &id, &tenant, &["--sim"], &[("ZENOH_CONNECT", &both), d2d]);
    device.expect_line(READY, WAIT);
    let on = connected_to(device.pid(), &ports);
    let other = &endpoints[1 - on];
    let env = [("MESSAGING_BACKEND", "zenoh"), ("ZENOH_CONNECT", other.as_str()), d2d, ("TENANT", &tenant)];
    let mut client = Client::start(None, &py, &id, &env);
    client.ready();

    let down = Instant::now();
    routers[on] = None;
    // Zenoh reopens the link itself, often before dcd's once-a-second link check sees it gone:
    // the device's own socket says where it is.
    while connected(device.pid(), &ports) != Some(1 - on) {
        assert!(down.elapsed() < FAILOVER, "the device is not on the other router after {FAILOVER:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("zenoh failover: router {on} killed, device on the other after {:?}", down.elapsed());
    client.ok("get_status", json!({}));
    client.heartbeat(&id);
}

/// Which of `ports` the process `pid` has an established TCP connection to, once it has one.
fn connected_to(pid: u32, ports: &[u16]) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = connected(pid, ports) {
            return i;
        }
        assert!(Instant::now() < deadline, "pid {pid} is not connected to exactly one of {ports:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which of `ports` the process `pid` has an established TCP connection to, if exactly one.
fn connected(pid: u32, ports: &[u16]) -> Option<usize> {
    let out = std::process::Command::new("ss").args(["-tnpH", "state", "established"]).output().expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let peers: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    let on: Vec<usize> =
        (0..ports.len()).filter(|&i| peers.iter().any(|p| p.ends_with(&format!(":{}", ports[i])))).collect();
    match on[..] {
        [i] => Some(i),
        _ => None,
    }
}

/// A small fleet on the hub and the leaf: the Python tools discover all of it and every device
/// answers one broadcast (bench/fleet.sh runs the same at larger sizes and measures it).
#[test]
fn fleet_smoke_on_the_hub_and_the_leaf() {
    let Some(py) = common::python() else { return };
    if !common::nats_installed() {
        return;
    }
    const N: usize = 20;
    let hub = Hub::start("fleet-smoke");
    let tenant = common::unique("fleet-smoke");
    let servers: Vec<String> = hub.members.iter().chain([&hub.leaf]).map(Server::url).collect();
    let devices: Vec<Proc> = (0..N)
        .map(|i| {
            let url = &servers[i % servers.len()];
            dcd(None, &format!("sim-{i:03}"), &tenant, &["--sim", "--workers", "1"], &nats_env(url, &tenant))
        })
        .collect();
    for d in &devices {
        d.expect_line(READY, WAIT);
    }
    let n = N.to_string();
    let mut fleet = script(None, &py, "fleet.py", &[&n, "--discover-timeout", "40"], &nats_env(&servers[0], &tenant));
    common::expect_success(&mut fleet);
}
