//! Faults the daemon must survive without losing anything: an engine that is missing at start,
//! disappears or hangs mid-run; a NATS server restarted over and over; SIGTERM and SIGINT; and a
//! soak of concurrent callers. The daemon runs as a process on a loopback nats-server and is
//! driven with the NATS client protocol from here; the engine is reached through a unix-socket
//! relay this test can cut and restore.

mod common;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::relay::Relay;
use common::{dcd_on_nats, free_port, nats_server, rpc_request, subject, threads_and_rss, Cleanup, Nats, Proc, READY};
/// The driver caches engine info this long; status may lag the engine by as much.
const INFO_TTL: Duration = Duration::from_secs(5);

/// A unix socket that accepts connections and never answers: a hung engine.
struct Stall {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stall {
    fn new() -> Stall {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("{}-{n}.sock", common::unique("stall")));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the stall socket");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((c, _)) => held.push(c),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Stall { path, stop, thread: Some(thread) }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A daemon on its own nats-server, and a client connection to that server.
struct Rig {
    tenant: String,
    id: String,
    port: u16,
    // Dropped before the server, so the daemon does not log the server going away.
    dcd: Proc,
    nats: Option<Proc>,
    client: Nats,
}

impl Rig {
    /// `tag` names the tenant and device; `args` and `env` go to the daemon.
    fn start(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Rig {
        let rig = Rig::spawn(tag, args, env);
        rig.dcd.expect_line(READY, Duration::from_secs(15));
        rig
    }

    /// `start` without waiting for the daemon to be ready.
    fn spawn(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Rig {
        let (tenant, id) = (format!("fault-{tag}-{}", std::process::id()), format!("dcd-{tag}"));
        let port = free_port();
        let nats = nats_server(port, &[]);
        let dcd = dcd_on_nats(&id, &tenant, port, args, env);
        let client = Nats::connect(port).expect("connect to nats-server");
        Rig { tenant, id, port, dcd, nats: Some(nats), client }
    }

    /// A worker stuck on a request to a hung engine: shutdown cannot finish on its own for a while.
    fn get_stuck(&mut self) {
        let (_, payload) = rpc_request("get_container", json!({"container_id": "x"}));
        let cmd = self.subject("cmd");
        self.client.send_request(&cmd, &payload).unwrap();
        // Logged by the worker as it takes the request, just before it asks the engine.
        self.dcd.expect_line("rpc get_container from", Duration::from_secs(30));
    }

    fn subject(&self, tail: &str) -> String {
        subject(&self.tenant, &self.id, tail)
    }

    /// One RPC: its result, or its error message; a panic if no reply comes within `timeout`.
    fn call(&mut self, method: &str, params: Value, timeout: Duration) -> Result<Value, String> {
        self.try_call(method, params, timeout).unwrap_or_else(|| panic!("no reply to {method} within {timeout:?}"))
    }

    fn try_call(&mut self, method: &str, params: Value, timeout: Duration) -> Option<Result<Value, String>> {
        let (id, payload) = rpc_request(method, params);
        let subject = self.subject("cmd");
        let bytes = self.client.request(&subject, &payload, timeout).ok()??;
        Some(parse_reply(&bytes, &id))
    }

    /// The next presence message matching `f` within `timeout` (a probe asks for one at once).
    fn presence(&mut self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Option<Value> {
        let probe = format!("device-connect.{}.discovery.probe", self.tenant);
        self.client.publish(&probe, None, br#"{"probe": true}"#).unwrap();
        let (subject, deadline) = (self.subject("presence"), Instant::now() + timeout);
        while let Some(m) = self.client.next(deadline).ok()? {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            if m.subject == subject && f(&v) {
                return Some(v);
            }
        }
        None
    }
}

fn parse_reply(bytes: &[u8], id: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("reply is not JSON ({e})"));
    assert_eq!(v["id"], id, "reply to another request: {v}");
    match v.get("error") {
        Some(e) => Err(e["message"].as_str().unwrap_or_default().to_string()),
        None => Ok(v["result"].clone()),
    }
}

/// The soak loads a 2-CPU machine enough to make a daemon beside it answer late: the tests that
/// time the daemon hold this for reading, the soak for writing, so they never run together.
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn timed() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|p| p.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().unwrap_or_else(|p| p.into_inner())
}

fn engine_parts() -> bool {
    common::engine().is_some() && common::nats_installed()
}

#[test]
fn engine_missing_at_start_then_appears() {
    let _timed = timed();
    if !engine_parts() {
        return;
    }
    // Down until restored.
    let mut relay = Relay::new("late", true);
    let mut rig = Rig::start("late", &[], &[("DOCKER_HOST", &relay.docker_host())]);
    let presence_subject = rig.subject("presence");
    rig.client.sub(&presence_subject).unwrap();
    let st = rig.call("get_status", json!({}), Duration::from_secs(10)).expect("get_status answers without an engine");
    assert_eq!(st["connected"], false, "{st}");
    assert!(st["docker"]["error"].as_str().is_some_and(|e| e.contains("unreachable")), "{st}");
    let offline = rig
        .presence(Duration::from_secs(10), |p| p["status"]["availability"] == "offline")
        .expect("presence says offline");
    assert!(offline["status"]["error_state"].as_str().is_some_and(|e| !e.is_empty()), "{offline}");

    relay.restore();
    let appeared = Instant::now();
    let deadline = appeared + INFO_TTL + Duration::from_secs(5);
    loop {
        let st = rig.call("get_status", json!({}), Duration::from_secs(10)).unwrap();
        if st["connected"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not connected {:?} after the engine appeared: {st}",
            appeared.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("connected {:?} after the engine appeared", appeared.elapsed());
    rig.presence(Duration::from_secs(10), |p| {
        p["status"]["availability"] == "idle" && p["status"].get("error_state").is_none()
    })
    .expect("presence says idle again");
    rig.call("list_containers", json!({}), Duration::from_secs(10)).expect("the engine is used");
}

#[test]
fn engine_lost_mid_run_fails_fast_and_recovers_without_losing_events() {
    let _timed = timed();
    if !engine_parts() {
        return;
    }
    let Some(image) = common::test_image() else { return };
    let mut relay = Relay::new("cut", true);
    relay.restore();
    let mut rig = Rig::start("cut", &[], &[("DOCKER_HOST", &relay.docker_host())]);
    rig.call("list_containers", json!({}), Duration::from_secs(10)).expect("the engine answers through the relay");
    // Its own connection: `call` skips whatever else arrives while it waits for a reply.
    let events = rig.subject("event.container_state_changed");
    let mut watcher = Nats::connect(rig.port).unwrap();
    watcher.sub(&events).unwrap();

    relay.cut();
    let calls = [
        ("list_containers", json!({"all_containers": true})),
        ("get_container", json!({"container_id": "anything"})),
        ("ping_docker", json!({})),
        ("container_logs", json!({"container_id": "anything"})),
        ("provision_container", json!({"spec": {"image": image, "name": common::unique("cut-never")}})),
    ];
    for (method, params) in calls {
        let t = Instant::now();
        let e = rig.call(method, params, Duration::from_secs(10)).expect_err(method);
        assert!(t.elapsed() < Duration::from_secs(5), "{method} took {:?} to fail", t.elapsed());
        assert!(e.contains("unreachable"), "{method}: {e}");
        eprintln!("{method} failed in {:?}: {e}", t.elapsed());
    }

    // What happens on the engine meanwhile must still be reported once it is back.
    let name = common::unique("cut-meanwhile");
    let _cleanup = Cleanup(vec![name.clone()]);
    assert!(
        !common::docker(&["run", "-d", "--name", &name, "--label", "dcd-test=1", &image, "sleep", "300"]).is_empty()
    );

    relay.restore();
    let back = Instant::now();
    while rig.call("list_containers", json!({}), Duration::from_secs(10)).is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "RPCs still fail 10 s after the engine came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("RPCs work again {:?} after the engine came back", back.elapsed());
    // Replayed from the engine's event log (created, then running) or seen by a poll (running).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut states = Vec::new();
    while let Some(m) = watcher.next(deadline).unwrap() {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if v["params"]["name"] == name.as_str() {
            states.push(v["params"]["state"].as_str().unwrap_or_default().to_string());
            if states.last().is_some_and(|s| s == "running") {
                break;
            }
        }
    }
    assert_eq!(
        states.last().map(String::as_str),
        Some("running"),
        "{name}, created while the engine was out of reach: {states:?}"
    );
    eprintln!("state change during the outage reported {:?} after the engine came back", back.elapsed());
}

#[test]
fn engine_hung_mesh_still_answers() {
    let _timed = timed();
    if !common::nats_installed() {
        return;
    }
    let stall = Stall::new();
    let host = format!("unix://{}", stall.path.display());
    let mut rig = Rig::spawn("hung", &[], &[("DOCKER_HOST", &host)]);
    assert!(rig.dcd.wait_line(READY, Duration::from_secs(15)), "a hung engine keeps the mesh from starting");
    // The workers start once the baseline list is in, or after at most 3 s
    // (`BASELINE_WAIT`) of an engine that does not answer; the mesh connects meanwhile.
    let t = Instant::now();
    let r = rig.call("stop_container_logs", json!({"container_id": "x"}), Duration::from_secs(10));
    assert!(r.is_ok() && t.elapsed() < Duration::from_secs(5), "first answer after {:?}: {r:?}", t.elapsed());
    // From then on a call that needs no engine does not wait for one that does not answer.
    for _ in 0..3 {
        let t = Instant::now();
        let r = rig.call("stop_container_logs", json!({"container_id": "x"}), Duration::from_secs(10));
        assert!(r.is_ok() && t.elapsed() < Duration::from_secs(2), "stop_container_logs took {:?}: {r:?}", t.elapsed());
    }
    let heartbeat = rig.subject("heartbeat");
    rig.client.sub(&heartbeat).unwrap();
    // Two beats are due within 10 s; the margin is for a machine loaded by the tests beside this one.
    let deadline = Instant::now() + Duration::from_secs(16);
    let mut beats = 0;
    while let Some(m) = rig.client.next(deadline).unwrap() {
        beats += usize::from(m.subject == heartbeat);
    }
    assert!(beats >= 2, "{beats} heartbeats in 16 s (every 5 s expected)");
}

/// Counts requests sent and replies received across threads, and per method calls and errors.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    replies: AtomicU64,
    errors: AtomicU64,
    methods: Mutex<std::collections::BTreeMap<&'static str, (u64, u64)>>,
    /// The last error each method got, to tell expected refusals from faults.
    last_error: Mutex<std::collections::BTreeMap<&'static str, String>>,
}

#[test]
fn nats_server_restarts() {
    let _timed = timed();
    if !common::nats_installed() {
        return;
    }
    const CYCLES: usize = 20;
    let started = Instant::now();
    let mut rig = Rig::start("restart", &["--sim"], &[("DCD_LOG_LEVEL", "info")]);
    rig.call("get_status", json!({}), Duration::from_secs(10)).unwrap();
    let (mut after_first, mut recoveries) = (None, Vec::new());
    for cycle in 1..=CYCLES {
        drop(rig.nats.take());
        rig.nats = Some(nats_server(rig.port, &[]));
        let restarted = Instant::now();
        let deadline = restarted + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "cycle {cycle}: no answer within 10 s of the restart");
            let Ok(client) = Nats::connect(rig.port) else { continue };
            rig.client = client;
            if rig.try_call("get_status", json!({}), Duration::from_millis(500)).is_some_and(|r| r.is_ok()) {
                break;
            }
        }
        recoveries.push(restarted.elapsed());
        if cycle == 1 {
            std::thread::sleep(Duration::from_millis(500));
            after_first = Some(threads_and_rss(rig.dcd.pid()));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (threads0, rss0) = after_first.unwrap();
    let (threads, rss) = threads_and_rss(rig.dcd.pid());
    let slowest = recoveries.iter().max().unwrap();
    let mean = recoveries.iter().sum::<Duration>() / CYCLES as u32;
    eprintln!(
        "{CYCLES} restarts in {:?}: answering again after {mean:?} on average, {slowest:?} at worst; \
         threads {threads0} -> {threads}, RSS {rss0} -> {rss} KiB",
        started.elapsed()
    );
    assert!(threads <= threads0 + 2, "threads grew from {threads0} to {threads}");
    assert!(rss <= rss0 + 4096, "RSS grew from {rss0} to {rss} KiB");
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
}

/// SIGTERM or SIGINT: a departure on presence, then exit 0 within 2 s.
fn clean_exit_on(sig: i32) {
    let mut rig = Rig::start(&format!("sig{sig}"), &["--sim"], &[]);
    let presence = rig.subject("presence");
    rig.client.sub(&presence).unwrap();
    // The reply proves the server holds our subscription.
    rig.call("get_status", json!({}), Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    rig.dcd.signal(sig);
    let status = rig.dcd.wait_exit(Duration::from_secs(2));
    assert!(status.is_some_and(|s| s.code() == Some(0)), "signal {sig}: {status:?} after {:?}", t.elapsed());
    eprintln!("signal {sig}: exit 0 after {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(m) = rig.client.next(deadline).unwrap() {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
        if m.subject == presence && v["departing"] == true {
            assert_eq!(v["device_id"], rig.id.as_str());
            return;
        }
    }
    panic!("signal {sig}: no departing presence");
}

#[test]
fn sigterm_departs_and_exits_cleanly() {
    let _timed = timed();
    if common::nats_installed() {
        clean_exit_on(libc::SIGTERM);
    }
}

#[test]
fn sigint_departs_and_exits_cleanly() {
    let _timed = timed();
    if common::nats_installed() {
        clean_exit_on(libc::SIGINT);
    }
}

/// A daemon on a hung engine with a worker stuck on it, so shutdown cannot finish on its own.
fn stuck_rig(tag: &str) -> Option<(Stall, Rig)> {
    if !common::nats_installed() {
        return None;
    }
    let stall = Stall::new();
    let host = format!("unix://{}", stall.path.display());
    let mut rig = Rig::start(tag, &[], &[("DOCKER_HOST", &host)]);
    rig.get_stuck();
    Some((stall, rig))
}

#[test]
fn second_signal_during_shutdown_exits_at_once() {
    let _timed = timed();
    let Some((_stall, mut rig)) = stuck_rig("second") else {
        return;
    };
    rig.dcd.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert!(rig.dcd.running(), "shutdown finished although a worker is stuck");
    let t = Instant::now();
    rig.dcd.signal(libc::SIGINT);
    let code = rig.dcd.wait_exit(Duration::from_millis(500)).map(|s| s.code());
    assert_eq!(code, Some(Some(130)), "second signal: exit code after {:?}", t.elapsed());
    eprintln!("second signal: exit 130 after {:?}", t.elapsed());
}

#[test]
fn stuck_shutdown_is_bounded() {
    let _timed = timed();
    let Some((_stall, mut rig)) = stuck_rig("stuck") else {
        return;
    };
    let t = Instant::now();
    rig.dcd.signal(libc::SIGTERM);
    let status = rig.dcd.wait_exit(Duration::from_secs(3)).expect("still running 3 s after SIGTERM");
    eprintln!("stuck shutdown: exit {:?} after {:?}", status.code(), t.elapsed());
}

/// What the soak callers ask for: their containers' names start with `prefix`; `image` runs,
/// `pull` is pulled. `every` adds the functions the simulated engine does not model.
struct Mix {
    prefix: String,
    image: String,
    pull: String,
    every: bool,
}

impl Mix {
    fn sim() -> Mix {
        Mix { prefix: "soak".into(), image: "sim/hello".into(), pull: "sim/soak:1".into(), every: false }
    }

    fn own(&self, caller: usize, k: u64) -> String {
        format!("{}-{caller}-{k}", self.prefix)
    }

    fn project(&self, caller: usize) -> String {
        format!("{}{caller}", self.prefix.replace('-', ""))
    }
}

/// One soak caller's next request: every function, on containers of its own.
fn soak_request(n: u64, caller: usize, step: u64, mix: &Mix) -> (&'static str, Value) {
    let own = mix.own(caller, step % 3);
    let id = json!({"container_id": own});
    let (project, image) = (mix.project(caller), mix.image.as_str());
    let kinds = if mix.every { 27 } else { 20 };
    match (n ^ step.wrapping_mul(0x9e37_79b9)) % kinds {
        0 => ("get_status", json!({})),
        1 => ("ping_docker", json!({})),
        2 => ("list_containers", json!({"all_containers": true})),
        3 => ("get_container", id),
        4 | 5 => ("provision_container", json!({"spec": {"image": image, "name": own, "command": ["sleep", "3600"]}})),
        6 => ("start_container", id),
        7 => ("stop_container", json!({"container_id": own, "timeout_s": 0})),
        8 => ("restart_container", json!({"container_id": own, "timeout_s": 0})),
        9 => ("remove_container", json!({"container_id": own, "force": true})),
        10 => ("container_logs", json!({"container_id": own, "tail": 5})),
        11 => ("container_logs", json!({"container_id": own, "follow": true})),
        12 => ("stop_container_logs", id),
        13 => ("exec_in_container", json!({"container_id": own, "command": ["echo", "soak"]})),
        14 => ("pull_image", json!({"image": mix.pull})),
        15 => ("list_images", json!({})),
        16 => (
            "compose_up",
            // `init`: sleep, not PID 1, dies at the SIGTERM of compose_down. As PID 1 it ignored it and
            // each down waited the 10 s stop timeout: the callers' 8 final downs on 4 workers then
            // outlasted their 15 s timeout (a late reply, seen as lost).
            json!({"spec": {"compose_yaml": format!("services: {{app: {{image: {image}, init: true, command: [sleep, '3600']}}}}"), "project": project}}),
        ),
        17 => ("list_managed_containers", json!({})),
        18 => ("compose_down", json!({"project": project})),
        19 => ("no_such_method", json!({})),
        20 => ("container_stats", id),
        21 => ("list_jobs", json!({})),
        22 => ("compose_ps", json!({"project": project})),
        23 => ("compose_logs", json!({"project": project, "tail": 5})),
        24 => ("list_networks", json!({})),
        25 => ("list_volumes", json!({})),
        _ => ("get_job", json!({"job_id": "no-such-job"})),
    }
}

/// Callers mixing every RPC until `until`; then each stops its follows and removes its containers.
fn soak(port: u16, tenant: &str, id: &str, callers: usize, until: Instant, tally: &Arc<Tally>, mix: &Arc<Mix>) {
    let threads: Vec<_> = (0..callers)
        .map(|caller| {
            let (tally, cmd, mix) = (tally.clone(), subject(tenant, id, "cmd"), mix.clone());
            std::thread::spawn(move || {
                let mut client = Nats::connect(port).expect("connect");
                let mut step = 0u64;
                let seed = caller as u64 * 7919 + 1;
                let mut finish = (0..3)
                    .flat_map(|k| {
                        let own = mix.own(caller, k);
                        [
                            ("stop_container_logs", json!({"container_id": own})),
                            ("remove_container", json!({"container_id": own, "force": true})),
                        ]
                    })
                    .chain([("compose_down", json!({"project": mix.project(caller)}))])
                    .collect::<Vec<_>>()
                    .into_iter();
                loop {
                    let (method, params) = if Instant::now() < until {
                        step += 1;
                        soak_request(seed, caller, step, &mix)
                    } else {
                        match finish.next() {
                            Some(call) => call,
                            None => break,
                        }
                    };
                    let (rid, payload) = rpc_request(method, params);
                    tally.sent.fetch_add(1, Ordering::SeqCst);
                    let Some(bytes) = client.request(&cmd, &payload, Duration::from_secs(15)).expect("NATS") else {
                        eprintln!("caller {caller}: no reply to {method}");
                        continue;
                    };
                    tally.replies.fetch_add(1, Ordering::SeqCst);
                    let reply = parse_reply(&bytes, &rid);
                    let failed = reply.is_err();
                    if let Err(e) = reply {
                        tally.last_error.lock().unwrap().insert(method, e);
                    }
                    tally.errors.fetch_add(u64::from(failed), Ordering::SeqCst);
                    let mut methods = tally.methods.lock().unwrap();
                    let m = methods.entry(method).or_default();
                    *m = (m.0 + 1, m.1 + u64::from(failed));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a soak caller panicked");
    }
}

#[test]
fn soak_mixed_callers() {
    let _alone = alone();
    if !common::nats_installed() {
        return;
    }
    let secs: u64 = std::env::var("DCD_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    // Quiet, but for the readiness line.
    let rig = Rig::start("soak", &["--sim"], &[("RUST_LOG", "dcd=warn,dcd::mesh=info")]);
    let (port, tenant, id, pid) = (rig.port, rig.tenant.clone(), rig.id.clone(), rig.dcd.pid());

    let events = Arc::new(AtomicU64::new(0));
    let stop_events = Arc::new(AtomicBool::new(false));
    let listener = {
        let (events, stop, subject) = (events.clone(), stop_events.clone(), subject(&tenant, &id, "event.>"));
        let mut client = Nats::connect(port).unwrap();
        client.sub(&subject).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(Some(_)) = client.next(Instant::now() + Duration::from_millis(200)) {
                    events.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };

    // The same load for a short while first, so lazily grown pools and arenas are in the baseline.
    let (warmup, mix) = (Arc::new(Tally::default()), Arc::new(Mix::sim()));
    soak(port, &tenant, &id, 8, Instant::now() + Duration::from_secs(5), &warmup, &mix);
    std::thread::sleep(Duration::from_secs(1));
    let (threads0, rss0) = threads_and_rss(pid);

    let tally = Arc::new(Tally::default());
    let t = Instant::now();
    soak(port, &tenant, &id, 8, t + Duration::from_secs(secs), &tally, &mix);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (threads, rss) = threads_and_rss(pid);
    stop_events.store(true, Ordering::SeqCst);
    listener.join().unwrap();

    let (sent, replies, errors) =
        (tally.sent.load(Ordering::SeqCst), tally.replies.load(Ordering::SeqCst), tally.errors.load(Ordering::SeqCst));
    eprintln!(
        "soak {secs} s: {sent} requests in {took:?} ({:.0}/s), {replies} replies ({errors} errors), {} events; \
         threads {threads0} -> {threads}, RSS {rss0} -> {rss} KiB",
        sent as f64 / took.as_secs_f64(),
        events.load(Ordering::SeqCst)
    );
    let methods = tally.methods.lock().unwrap();
    eprintln!("calls and errors by method: {methods:?}");
    assert_eq!(replies, sent, "lost replies");
    for (method, (calls, errors)) in methods.iter() {
        assert!(*method == "no_such_method" || errors < calls, "{method} never succeeded");
    }
    assert!(events.load(Ordering::SeqCst) > 0, "no events during the soak");
    assert!(threads <= threads0 + 2, "threads grew from {threads0} to {threads}");
    assert!(rss <= rss0 + 8192, "RSS grew from {rss0} to {rss} KiB");
}

/// Resident memory of `pid` that is not file pages (KiB): the heap, stacks and arenas. The rest
/// of RSS is mostly the binary's own pages, about 21 MiB of a debug build.
fn anonymous_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kib = status.lines().find_map(|l| l.strip_prefix("RssAnon:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|v| v.parse().ok()).expect("RssAnon in /proc/<pid>/status")
}

/// The long soak of bench/soak.sh, not run in CI: 8 callers mixing every function on the real
/// engine for `DCD_SOAK_SECS` (600), while a flipper stops, starts and kills their containers
/// behind the daemon's back and the engine is cut through the relay `DCD_SOAK_CUTS` (20) times,
/// 3 s each. RSS and threads are printed every 10 s; at the end, with the callers done, they
/// must be within 10 % of the baseline taken after a warm-up with one cut, and no reply may be lost.
#[test]
#[ignore = "minutes long: run by bench/soak.sh"]
fn long_soak_real_engine() {
    let _alone = alone();
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (secs, cuts) = (env("DCD_SOAK_SECS", 600), env("DCD_SOAK_CUTS", 20));
    let Some(image) = common::test_image() else { return };
    if !engine_parts() {
        return;
    }
    let registry = std::env::var("DCD_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let prefix = common::unique("soak");
    let mix = Arc::new(Mix {
        prefix: prefix.clone(),
        image,
        pull: format!("{registry}/dcd-test/busybox:latest"),
        every: true,
    });
    let mut relay = Relay::new("soak", true);
    relay.restore();
    let mut env = vec![("DOCKER_HOST", relay.docker_host()), ("RUST_LOG", "dcd=warn,dcd::mesh=info".into())];
    // To compare allocator settings (src/heap.rs): glibc's own knob, passed on when set.
    if let Ok(arenas) = std::env::var("MALLOC_ARENA_MAX") {
        env.push(("MALLOC_ARENA_MAX", arenas));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rig = Rig::start("longsoak", &[], &env);
    let (port, tenant, id, pid) = (rig.port, rig.tenant.clone(), rig.id.clone(), rig.dcd.pid());

    // The warm-up does all the soak does, an engine cut included (the relisting after it is the
    // largest burst), so that the baseline is the daemon's working size, not its start-up size.
    let warmup = {
        let (mix, tenant, id) = (mix.clone(), tenant.clone(), id.clone());
        let until = Instant::now() + Duration::from_secs(20);
        std::thread::spawn(move || soak(port, &tenant, &id, 8, until, &Arc::new(Tally::default()), &mix))
    };
    std::thread::sleep(Duration::from_secs(8));
    relay.cut();
    std::thread::sleep(Duration::from_secs(3));
    relay.restore();
    warmup.join().expect("a warm-up caller panicked");
    // Both readings come 5 s after the callers stop, when the idle workers have given free memory back.
    std::thread::sleep(Duration::from_secs(5));
    let (threads0, rss0) = threads_and_rss(pid);
    eprintln!("SOAK baseline: threads {threads0}, RSS {rss0} KiB (anonymous {} KiB)", anonymous_rss(pid));

    let (tally, t) = (Arc::new(Tally::default()), Instant::now());
    let until = t + Duration::from_secs(secs);
    let callers = {
        let (tally, mix, tenant, id) = (tally.clone(), mix.clone(), tenant.clone(), id.clone());
        std::thread::spawn(move || soak(port, &tenant, &id, 8, until, &tally, &mix))
    };
    let (mut flips, mut cut_count, mut next_sample) = (0u64, 0u64, t);
    let cut_every = Duration::from_secs(secs) / (cuts as u32 + 1);
    let mut next_cut = t + cut_every;
    while Instant::now() < until {
        let now = Instant::now();
        if now >= next_sample {
            let (threads, rss) = threads_and_rss(pid);
            eprintln!(
                "SOAK t={:>4}s threads {threads} RSS {rss} KiB (anonymous {})",
                t.elapsed().as_secs(),
                anonymous_rss(pid)
            );
            next_sample += Duration::from_secs(10);
        }
        if now >= next_cut && cut_count < cuts {
            relay.cut();
            std::thread::sleep(Duration::from_secs(3));
            relay.restore();
            cut_count += 1;
            next_cut += cut_every;
            continue;
        }
        // Behind the daemon's back: a container of some caller stopped, started or killed.
        let name = mix.own((flips % 8) as usize, flips / 8 % 3);
        let verb = ["stop", "start", "kill"][(flips % 3) as usize];
        common::docker(&[verb, &name]);
        flips += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    callers.join().expect("a soak caller panicked");
    std::thread::sleep(Duration::from_secs(5));
    let (threads, rss) = threads_and_rss(pid);
    eprintln!("SOAK end: threads {threads}, RSS {rss} KiB (anonymous {} KiB)", anonymous_rss(pid));
    let (sent, replies, errors) =
        (tally.sent.load(Ordering::SeqCst), tally.replies.load(Ordering::SeqCst), tally.errors.load(Ordering::SeqCst));
    eprintln!(
        "SOAK {secs} s: {sent} requests ({:.0}/s), {replies} replies ({errors} errors), {flips} flips behind its back, \
         {cut_count} engine cuts; threads {threads0} -> {threads}, RSS {rss0} -> {rss} KiB ({:+.1} %)",
        sent as f64 / secs as f64,
        (rss as f64 / rss0 as f64 - 1.0) * 100.0
    );
    eprintln!("SOAK calls and errors by method: {:?}", tally.methods.lock().unwrap());
    eprintln!("SOAK last error by method: {:?}", tally.last_error.lock().unwrap());
    for k in 0..8 {
        for n in 0..3 {
            common::docker(&["rm", "-f", &mix.own(k, n)]);
        }
    }
    assert_eq!(replies, sent, "lost replies");
    assert!(threads * 10 <= threads0 * 11, "threads grew from {threads0} to {threads}");
    assert!(rss * 10 <= rss0 * 11, "RSS grew from {rss0} to {rss} KiB");
}
