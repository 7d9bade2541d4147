//! Issue #4, "Events that never miss": `container_state_changed` and
//! `container_log_line` against the real engine. Fast flips and engine-side
//! changes go through the daemon, a nats-server and the unmodified Python
//! agent tools; an engine outage, log content, follow lifetimes and
//! backpressure are checked in process (driver and state threads), where the
//! engine's socket can be cut and the process measured.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::relay::Relay;
use common::{docker_ok, Cleanup};
use dcd::engine::{docker::Docker, Engine};
use dcd::events::{EXEC_EXIT, EXEC_OUTPUT, JOB_FINISHED, JOB_PROGRESS, LOG_LINE, STATE_CHANGED};
const WAIT: Duration = Duration::from_secs(20);

/// `docker create` a labelled container named `name` running `cmd`.
fn create(image: &str, name: &str, cmd: &[&str]) {
    let mut args = vec!["create", "--label", "dcd-test=1", "--name", name, image];
    args.extend_from_slice(cmd);
    docker_ok(&args);
}

/// Each container's transitions as `previous>state` (`null` for none), in arrival order.
#[derive(Default)]
struct Chains(HashMap<String, Vec<String>>);

impl Chains {
    fn push(&mut self, params: &Value) {
        let prev = params["previous_state"].as_str().unwrap_or("null");
        let state = params["state"].as_str().unwrap_or("?");
        let name = params["name"].as_str().unwrap_or_default().to_string();
        self.0.entry(name).or_default().push(format!("{prev}>{state}"));
    }

    /// `name`'s transitions once `want` of them arrived (or `within` passed), taking
    /// state-change params from `next` meanwhile.
    fn wait(
        &mut self,
        name: &str,
        want: usize,
        within: Duration,
        mut next: impl FnMut(Instant) -> Option<Value>,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        while self.0.get(name).map_or(0, Vec::len) < want {
            match next(deadline) {
                Some(p) => self.push(&p),
                None => break,
            }
        }
        self.0.get(name).cloned().unwrap_or_default()
    }
}

/// Each element's `previous_state` is the one before's `state`.
fn assert_chained(name: &str, chain: &[String]) {
    for pair in chain.windows(2) {
        let before = pair[0].split('>').nth(1).unwrap();
        assert!(pair[1].starts_with(&format!("{before}>")), "{name}: broken chain {chain:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Through the mesh: daemon + nats-server + the Python agent tools
// ---------------------------------------------------------------------------------------------

/// tests/py/events.py: the events the Python agent tools receive, one JSON object a line.
struct Subscriber {
    child: Child,
    lines: Receiver<Value>,
}

impl Subscriber {
    fn spawn(py: &Path, id: &str, tenant: &str, port: u16, selector: &str) -> Subscriber {
        let mut child = common::python_on_nats(py, "events.py", tenant, port)
            .args([id, "--selector", selector])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("[events.py] {line}"),
                }
            }
        });
        let s = Subscriber { child, lines };
        let deadline = Instant::now() + Duration::from_secs(60);
        let next = || s.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut ready = next();
        while ready.as_ref().is_ok_and(|v| v["subscribed"] == true) {
            ready = next();
        }
        assert!(ready.as_ref().is_ok_and(|v| v["ready"] == true), "events.py not ready: {ready:?}");
        s
    }

    /// The params of the next `method` event before `deadline`.
    fn next(&self, method: &str, deadline: Instant) -> Option<Value> {
        loop {
            let m = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()?;
            if m["method"] == method {
                return Some(m["params"].clone());
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nats-server, the daemon on the real engine and a Python subscriber, all on loopback.
struct Mesh {
    sub: Subscriber,
    port: u16,
    tenant: String,
    id: String,
    _dcd: common::Proc,
    _nats: common::Proc,
    image: String,
    chains: Chains,
}

impl Mesh {
    fn start(tag: &str) -> Option<Mesh> {
        Mesh::start_with(tag, &[], "event(container_state_changed)")
    }

    /// The daemon with `args`; the subscriber listens to `selector`.
    fn start_with(tag: &str, args: &[&str], selector: &str) -> Option<Mesh> {
        common::engine()?;
        let image = common::test_image()?;
        let py = common::python()?;
        if !common::nats_installed() {
            return None;
        }
        let port = common::free_port();
        let nats = common::nats_server(port, &[]);
        let (tenant, id) = (format!("ev-{tag}-{}", std::process::id()), format!("dcd-ev-{tag}"));
        let dcd = common::dcd_on_nats(&id, &tenant, port, args, &[]);
        dcd.expect_line(common::READY, Duration::from_secs(15));
        let sub = Subscriber::spawn(&py, &id, &tenant, port, selector);
        Some(Mesh { sub, port, tenant, id, _dcd: dcd, _nats: nats, image, chains: Chains::default() })
    }

    fn chain(&mut self, name: &str, want: usize) -> Vec<String> {
        self.chain_within(name, want, WAIT)
    }

    /// The event names in the daemon's presence (asked for with a discovery probe).
    fn advertised_events(&self) -> Vec<String> {
        let mut nats = common::Nats::connect(self.port).expect("nats");
        nats.sub(&common::subject(&self.tenant, &self.id, "presence")).unwrap();
        nats.publish(&format!("device-connect.{}.discovery.probe", self.tenant), None, b"{}").unwrap();
        let msg = nats.next(Instant::now() + WAIT).unwrap().expect("presence after a probe");
        let presence: Value = serde_json::from_slice(&msg.payload).unwrap();
        let events = presence["capabilities"]["events"].as_array().expect("events").iter();
        events.map(|e| e["name"].as_str().unwrap().to_string()).collect()
    }

    fn chain_within(&mut self, name: &str, want: usize, within: Duration) -> Vec<String> {
        let sub = &self.sub;
        self.chains.wait(name, want, within, |d| sub.next(STATE_CHANGED, d))
    }
}

/// The transitions the engine itself recorded for `name` since `since` (Unix seconds), as
/// `previous>state`: the ground truth to check ours against.
fn engine_record(name: &str, since: f64) -> Vec<String> {
    let (since, filter) = (format!("{since:.3}"), format!("container={name}"));
    let mut args = vec!["events", "--since", &since, "--filter", &filter, "--format", "{{.Action}}"];
    let actions = if common::engine_kind().podman() {
        // Podman 4.3 answers a query with `until` with nothing: read the stream for a while.
        let mut p = common::docker_cli(&args).stdout(Stdio::piped()).spawn().expect("docker CLI");
        std::thread::sleep(Duration::from_secs(2));
        p.kill().unwrap();
        let mut out = String::new();
        p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        p.wait().unwrap();
        out
    } else {
        let until = format!("{:.3}", dcd::time::now_epoch());
        args.extend(["--until", &until]);
        docker_ok(&args)
    };
    let mut chain = Vec::new();
    let mut state = "null";
    for action in actions.lines() {
        let next = match action {
            "create" => "created",
            "start" => "running",
            "die" => "exited",
            // Podman names it `remove`.
            "destroy" | "remove" => "removed",
            _ => continue,
        };
        if next != state {
            chain.push(format!("{state}>{next}"));
            state = next;
        }
    }
    chain
}

#[test]
fn mesh_fast_flips_arrive_in_order() {
    let Some(mut mesh) = Mesh::start("flips") else {
        return;
    };
    assert_eq!(
        mesh.advertised_events(),
        [STATE_CHANGED, LOG_LINE, JOB_PROGRESS, JOB_FINISHED, EXEC_OUTPUT, EXEC_EXIT],
        "engine_event is opt-in"
    );
    let since = dcd::time::now_epoch() - 1.0;
    let names = ["flip", "burst", "kill50"].map(common::unique);
    let [flip, burst, kill] = &names;
    let _c = Cleanup(names.to_vec());
    create(&mesh.image, flip, &["sh", "-c", "exit 0"]);
    for _ in 0..5 {
        // Waiting for the exit makes each start a new run. Not `start -a`: Podman's attach
        // sometimes fails with a 500 when the process ends before the attach is set up.
        docker_ok(&["start", flip]);
        docker_ok(&["wait", flip]);
    }
    // Back to back: a start may find the last run still going, as the engine will record.
    create(&mesh.image, burst, &["sh", "-c", "exit 0"]);
    for _ in 0..5 {
        docker_ok(&["start", burst]);
    }
    create(&mesh.image, kill, &["sleep", "300"]);
    docker_ok(&["start", kill]);
    std::thread::sleep(Duration::from_millis(50));
    docker_ok(&["kill", kill]);
    // Every run has ended (and been recorded) before the removals.
    docker_ok(&["wait", kill, burst]);
    docker_ok(&["rm", "-f", flip, burst, kill]);

    let mut want = vec!["null>created".to_string(), "created>running".into(), "running>exited".into()];
    for _ in 1..5 {
        want.extend(["exited>running".to_string(), "running>exited".into()]);
    }
    want.push("exited>removed".into());
    assert_eq!(mesh.chain(flip, want.len()), want, "{flip}");
    let want = ["null>created", "created>running", "running>exited", "exited>removed"];
    assert_eq!(mesh.chain(kill, want.len()), want, "{kill}");
    let record = engine_record(burst, since);
    assert!(record.len() >= 5 && record.last().is_some_and(|l| l == "exited>removed"), "{record:?}");
    assert_eq!(mesh.chain(burst, record.len()), record, "{burst}");
    // Nothing after the removals.
    for n in &names {
        let seen = mesh.chains.0[n].len();
        assert_eq!(mesh.chain_within(n, seen + 1, Duration::from_millis(300)).len(), seen, "{n}");
    }
    eprintln!("{burst}: {} transitions from 5 back-to-back starts", record.len());
}

#[test]
fn mesh_engine_side_changes_arrive() {
    let Some(mut mesh) = Mesh::start("cli") else {
        return;
    };
    let names = ["stop", "kill", "rmf"].map(common::unique);
    let _c = Cleanup(names.to_vec());
    for n in &names {
        run_sleeper(&mesh.image, n);
    }
    for n in &names {
        assert_eq!(mesh.chain(n, 2), ["null>created", "created>running"], "{n}");
    }
    docker_ok(&["stop", "-t", "1", &names[0]]);
    docker_ok(&["kill", &names[1]]);
    docker_ok(&["rm", "-f", &names[2]]);
    assert_eq!(mesh.chain(&names[0], 3)[2..], ["running>exited"]);
    assert_eq!(mesh.chain(&names[1], 3)[2..], ["running>exited"]);
    assert_eq!(mesh.chain(&names[2], 4)[2..], ["running>exited", "exited>removed"]);
}

/// `--forward-engine-events`: the engine's container events reach the Python client as
/// `engine_event`, in the engine's order; under `owned_only` only our own containers' do.
#[test]
fn mesh_engine_events_are_forwarded() {
    let dir = std::env::temp_dir().join(common::unique("fwd"));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.json");
    std::fs::write(&policy, r#"{"owned_only": true}"#).unwrap();
    for owned_only in [false, true] {
        let mut args = vec!["--forward-engine-events"];
        if owned_only {
            args.extend(["--policy", policy.to_str().unwrap()]);
        }
        let Some(mesh) = Mesh::start_with(if owned_only { "fwd-own" } else { "fwd" }, &args, "event(engine_event)")
        else {
            return;
        };
        assert_eq!(
            mesh.advertised_events(),
            [STATE_CHANGED, LOG_LINE, JOB_PROGRESS, JOB_FINISHED, EXEC_OUTPUT, EXEC_EXIT, "engine_event"]
        );
        let (foreign, ours) = (common::unique("fwd-foreign"), common::unique("fwd-ours"));
        let _c = Cleanup(vec![foreign.clone(), ours.clone()]);
        // The foreign container's events all come first: the engine sends events in order.
        docker_ok(&["run", "-d", "--name", &foreign, &mesh.image, "sleep", "300"]);
        docker_ok(&["rm", "-f", &foreign]);
        let label = format!("{}=true", dcd::labels::MANAGED_LABEL);
        docker_ok(&["run", "-d", "--label", &label, "--name", &ours, &mesh.image, "sleep", "300"]);
        docker_ok(&["stop", "-t", "0", &ours]);
        docker_ok(&["rm", &ours]);

        // Forwarded as the engine names them: Podman says `remove` for `destroy`, sends no `stop`,
        // adds `init`, `attach` and `cleanup`, and names local images `localhost/...`.
        let podman = common::engine_kind().podman();
        let (removed, image) = match podman {
            true => ("remove", format!("localhost/{}", mesh.image)),
            false => ("destroy", mesh.image.clone()),
        };
        let deadline = Instant::now() + WAIT;
        let mut seen: Vec<(String, String)> = Vec::new();
        while !seen.contains(&(ours.clone(), removed.into())) {
            let p =
                mesh.sub.next("engine_event", deadline).unwrap_or_else(|| panic!("no {removed} of {ours}: {seen:?}"));
            assert_eq!(p["type"], "container", "{p}");
            assert_eq!(p["id"].as_str().map(str::len), Some(64), "{p}");
            assert_eq!(p["attributes"]["name"], p["name"], "{p}");
            assert_eq!(p["attributes"]["image"], image.as_str(), "{p}");
            assert!(p["time_nano"].as_i64().is_some_and(|t| t > 0), "{p}");
            let name = p["name"].as_str().unwrap().to_string();
            if name == ours || name == foreign {
                seen.push((name, p["action"].as_str().unwrap().to_string()));
            }
        }
        let actions =
            |who: &str| -> Vec<&str> { seen.iter().filter(|(n, _)| n == who).map(|(_, a)| a.as_str()).collect() };
        // `docker stop -t 0` kills twice (TERM, then KILL at once): compare without the kills.
        // Podman adds `init`, `attach` and `cleanup`, and reports `stop` only sometimes (and before
        // `die` when it does): compare without them there.
        let aside: &[&str] = if podman {
            &["kill", "init", "attach", "cleanup", "stop"]
        } else {
            &["kill", "init", "attach", "cleanup"]
        };
        let life = |who: &str| -> Vec<&str> { actions(who).into_iter().filter(|a| !aside.contains(a)).collect() };
        assert!(podman || actions(&ours).contains(&"kill"), "Docker reports the kill: {seen:?}");
        let stopped: &[&str] = if podman { &["die"] } else { &["die", "stop"] };
        assert_eq!(life(&ours), [&["create", "start"], stopped, &[removed]].concat(), "{seen:?}");
        if owned_only {
            assert_eq!(actions(&foreign), Vec::<&str>::new(), "a foreign container under owned_only");
        } else {
            assert_eq!(life(&foreign), ["create", "start", "die", removed], "{seen:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// In process: driver and state threads
// ---------------------------------------------------------------------------------------------

/// The shared in-process rig with an event queue of `queue` slots, and the chains of state
/// changes it has shown so far.
struct Rig {
    rig: common::Rig,
    chains: Chains,
}

impl std::ops::Deref for Rig {
    type Target = common::Rig;
    fn deref(&self) -> &common::Rig {
        &self.rig
    }
}

impl Rig {
    fn new(engine: Arc<dyn Engine>, queue: usize, poll_hz: f64) -> Rig {
        Rig { rig: common::Rig::with(engine, false, queue, poll_hz), chains: Chains::default() }
    }

    fn follows(&self) -> Value {
        self.ok("get_status", json!({}))["log_follow_active"].clone()
    }

    /// Wait until no follow is active.
    fn follows_end(&self) {
        let deadline = Instant::now() + WAIT;
        while self.follows() != json!([]) {
            assert!(Instant::now() < deadline, "follows still active: {}", self.follows());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn chain(&mut self, name: &str, want: usize) -> Vec<String> {
        let events = &self.rig.events;
        self.chains.wait(name, want, WAIT, |deadline| loop {
            let e = events.recv_deadline(deadline).ok()?;
            if e.name == STATE_CHANGED {
                return Some(common::params(&e));
            }
        })
    }

    /// Every `container_log_line` of `key`, once all follows have ended by themselves
    /// (their containers exited).
    fn finished_log(&self, key: &str) -> Vec<Value> {
        self.follows_end();
        self.events
            .try_iter()
            .filter(|e| e.name == LOG_LINE)
            .map(|e| common::params(&e))
            .filter(|p| p["container_id"] == key)
            .collect()
    }
}

/// `docker run -d` a labelled `sleep 300` named `name`.
fn run_sleeper(image: &str, name: &str) {
    docker_ok(&["run", "-d", "--label", "dcd-test=1", "--name", name, image, "sleep", "300"]);
}

/// The state thread through a relay that is cut for a while: what changed during the outage
/// is reported once the engine is back, later transitions are reported again, and containers
/// are listed only while the stream is down. With `replay` the engine's record of the outage
/// is replayed in order (with the fallback poll off, so nothing else reports it first);
/// without, nothing is replayed, as by an engine restarted meanwhile, the fallback poll runs,
/// and a list reports the net change.
/// Wait until `relay` has seen no list for 1.5 s (at most 20 s); the count then.
fn quiet_lists(relay: &Relay) -> usize {
    let start = Instant::now();
    let mut lists = relay.lists();
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = relay.lists();
        if now == lists {
            return lists;
        }
        lists = now;
        assert!(start.elapsed() < Duration::from_secs(20), "still listing {:?} on", start.elapsed());
    }
}

fn outage(tag: &str, replay: bool) {
    let Some((_, image)) = common::real_engine() else {
        return;
    };
    let mut relay = Relay::new(tag, replay);
    relay.restore();
    let engine = Arc::new(Docker::connect(Some(&relay.docker_host())).unwrap());
    let mut rig = Rig::new(engine, 10_000, if replay { 0.0 } else { 2.0 });
    let names = ["a", "b", "c"].map(|n| common::unique(&format!("{tag}-{n}")));
    let _c = Cleanup(names.to_vec());
    // Once the stream is connected, these arrive as events. The reconcile that follows the
    // connect may list a moment later: wait until the lists are quiet.
    relay.wait_streams(1, WAIT);
    quiet_lists(&relay);
    for n in &names[..2] {
        run_sleeper(&image, n);
        assert_eq!(rig.chain(n, 2), ["null>created", "created>running"], "{n}");
    }

    // While events flow nothing polls.
    let lists = relay.lists();
    docker_ok(&["restart", "-t", "0", &names[0]]);
    assert_eq!(rig.chain(&names[0], 4)[2..], ["running>exited", "exited>running"]);
    std::thread::sleep(Duration::from_secs(2));
    let flowing = relay.lists() - lists;

    relay.cut();
    docker_ok(&["stop", "-t", "0", &names[0]]);
    docker_ok(&["rm", "-f", &names[1]]);
    run_sleeper(&image, &names[2]);
    std::thread::sleep(Duration::from_secs(1));
    // Polls while down show as requests the broken engine never answers.
    let lists = relay.lists();
    relay.break_engine();
    std::thread::sleep(Duration::from_millis(2000));
    relay.cut();
    let down = relay.lists() - lists;
    relay.restore();

    assert_eq!(rig.chain(&names[0], 5)[4..], ["running>exited"]);
    if replay {
        // The engine's own record of the outage, in order.
        assert_eq!(rig.chain(&names[1], 4)[2..], ["running>exited", "exited>removed"]);
        assert_eq!(rig.chain(&names[2], 2), ["null>created", "created>running"]);
    } else {
        assert_eq!(rig.chain(&names[1], 3)[2..], ["running>removed"]);
        assert_eq!(rig.chain(&names[2], 1), ["null>running"]);
    }
    // Polling stops once the stream is back (the follower may still be in its backoff).
    let back = Instant::now();
    let lists = quiet_lists(&relay);
    let polled_for = back.elapsed().saturating_sub(Duration::from_millis(1500));
    docker_ok(&["start", &names[0]]);
    docker_ok(&["stop", "-t", "0", &names[2]]);
    assert_eq!(rig.chain(&names[0], 6)[5..], ["exited>running"]);
    let n = rig.chain(&names[2], 0).len();
    assert_eq!(rig.chain(&names[2], n + 1)[n..], ["running>exited"]);
    std::thread::sleep(Duration::from_secs(1));
    let after = relay.lists() - lists;
    // Only ours: another container's name may be taken again by a new one meanwhile.
    for n in &names {
        assert_chained(n, &rig.chains.0[n]);
    }
    eprintln!(
        "{tag}: list calls: {flowing} in 2 s of events, {down} in 2 s of a broken engine, \
         {after} in 1 s of events after; polls ended within {polled_for:?} of the restore"
    );
    assert_eq!((flowing, after), (0, 0), "polled while events flowed");
    if replay {
        assert_eq!(down, 0, "polled with the poll off");
    } else {
        assert!(down >= 2, "did not poll during the outage ({down})");
    }
}

#[test]
fn outage_is_replayed_then_reconciled() {
    outage("replay", true);
}

#[test]
fn outage_without_replay_is_reconciled() {
    outage("reconcile", false);
}

/// Start `script` in a labelled container through the driver; returns its 12-char id.
fn provision(rig: &Rig, image: &str, name: &str, script: &str) -> String {
    let c = rig.ok(
        "provision_container",
        json!({"spec": {"image": image, "name": name, "command": ["sh", "-c", script], "labels": {"dcd-test": "1"}}}),
    );
    c["container"]["id"].as_str().unwrap().to_string()
}

/// The in-process rig with an event queue of `queue` slots on the real engine, and the test image.
fn real_rig(queue: usize) -> Option<(Rig, String)> {
    let (engine, image) = common::real_engine()?;
    Some((Rig::new(engine, queue, 2.0), image))
}

#[test]
fn follow_delivers_every_line_once_intact() {
    let Some((rig, image)) = real_rig(10_000) else {
        return;
    };
    let name = common::unique("lines");
    let _c = Cleanup(vec![name.clone()]);
    // The json-file log driver cuts lines at 16 KiB and turns a character it cuts into U+FFFD
    // before we see it, so the long line's two-byte characters start on even offsets; the cuts
    // in our frames and reads fall where they may.
    let script = r"sleep 1
printf 'caf\303'; sleep 0.1; printf '\251 out\n'
printf 'err-\342\202' >&2; sleep 0.1; printf '\254\n' >&2
printf 'part'; echo between >&2; sleep 0.1; echo ial
yes é | head -n 51200 | tr -d '\n'; echo END
echo done >&2";
    provision(&rig, &image, &name, script);
    rig.ok("container_logs", json!({"container_id": name, "follow": true, "tail": -1}));
    // The engine copies stdout and stderr separately: it does not order one against the other.
    let got = rig.finished_log(&name);
    let long = format!("{}END", "é".repeat(51_200));
    let lines: Vec<(&str, &str)> =
        got.iter().map(|p| (p["stream"].as_str().unwrap(), p["line"].as_str().unwrap())).collect();
    let of = |stream| lines.iter().filter(|l| l.0 == stream).map(|l| l.1).collect::<Vec<_>>();
    assert_eq!(of("stderr"), ["err-€", "between", "done"]);
    let stdout = of("stdout");
    assert_eq!(stdout.len(), 3, "{:?}", stdout.iter().map(|l| &l[..l.len().min(40)]).collect::<Vec<_>>());
    assert_eq!(stdout[..2], ["café out", "partial"]);
    assert!(
        stdout[2] == long,
        "long line: {} bytes, {} U+FFFD",
        stdout[2].len(),
        stdout[2].matches('\u{fffd}').count()
    );
}

#[test]
fn stop_is_prompt_and_follows_end_with_their_container() {
    let Some((rig, image)) = real_rig(10_000) else {
        return;
    };
    let (quiet, short) = (common::unique("quiet"), common::unique("short"));
    let _c = Cleanup(vec![quiet.clone(), short.clone()]);
    provision(&rig, &image, &quiet, "exec sleep 300");
    provision(&rig, &image, &short, "echo hello; sleep 1");
    rig.ok("container_logs", json!({"container_id": short, "follow": true}));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        rig.ok("container_logs", json!({"container_id": quiet, "follow": true}));
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(rig.ok("stop_container_logs", json!({"container_id": quiet}))["stopped"], true);
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("stop_container_logs on a silent container: slowest of 5 took {slowest:?}");
    assert!(slowest < Duration::from_millis(100), "stop took {slowest:?}");
    assert_eq!(rig.finished_log(&short)[0]["line"], "hello");
}

/// Runs the calling test alone in a child process of this test binary, so the threads and
/// memory measured are its own. True in the child (run the test), false in the parent.
fn isolated(test: &str) -> bool {
    if std::env::var_os("DCD_EVENTS_ISOLATED").is_some() {
        return true;
    }
    // A Podman service the child started would stop when the child exits, under this process's
    // other tests: start it here, where the child finds it.
    common::engine_host();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("DCD_EVENTS_ISOLATED", "1")
        .output()
        .expect("run the test binary");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test} failed in its own process");
    false
}

fn threads_and_rss() -> (u64, u64) {
    common::threads_and_rss(std::process::id())
}

#[test]
fn follows_do_not_leak() {
    if !isolated("follows_do_not_leak") {
        return;
    }
    let Some((rig, image)) = real_rig(10_000) else {
        return;
    };
    let name = common::unique("leak");
    let _c = Cleanup(vec![name.clone()]);
    let id = docker_ok(&["run", "-d", "--label", "dcd-test=1", "--name", &name, &image, "sleep", "300"]);
    // Ten names for one container (id prefixes), so ten follows run at once.
    let keys: Vec<&str> = (12..22).map(|n| &id[..n]).collect();
    let round = || {
        for k in &keys {
            assert_eq!(rig.ok("container_logs", json!({"container_id": k, "follow": true}))["streaming"], true);
        }
        assert_eq!(rig.follows().as_array().unwrap().len(), keys.len());
        for k in &keys {
            assert_eq!(rig.ok("stop_container_logs", json!({"container_id": k}))["stopped"], true);
        }
    };
    round();
    std::thread::sleep(Duration::from_millis(200));
    let (threads0, rss0) = threads_and_rss();
    for _ in 0..20 {
        round();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (threads, rss) = threads_and_rss();
    eprintln!("200 follows: threads {threads0} -> {threads}, RSS {rss0} KiB -> {rss} KiB");
    assert_eq!(rig.follows(), json!([]));
    assert!(threads <= threads0 + 2, "threads {threads0} -> {threads}");
    assert!(rss <= rss0 + 4096, "RSS {rss0} KiB -> {rss} KiB");
}

#[test]
fn backpressure_waits_then_drops_and_says_so() {
    if !isolated("backpressure_waits_then_drops_and_says_so") {
        return;
    }
    let Some((rig, image)) = real_rig(8) else {
        return;
    };
    let name = common::unique("chatty");
    let _c = Cleanup(vec![name.clone()]);
    // Two bursts of numbered lines, far faster than the consumer below, then "end" once the
    // consumer is back from its stall.
    const BURST: usize = 4_000;
    let pad = "x".repeat(100);
    let script = format!(
        "sleep 1; seq {BURST} | sed 's/$/ {pad}/'; sleep 4; seq {} {} | sed 's/$/ {pad}/'; sleep 6; echo end",
        BURST + 1,
        2 * BURST
    );
    provision(&rig, &image, &name, &script);
    let (_, rss0) = threads_and_rss();
    rig.ok("container_logs", json!({"container_id": name, "follow": true, "tail": -1}));
    // A slow consumer (one event every 0.2 ms) gets every line of the first burst: the follow
    // waits for room instead of dropping. Then the consumer stalls for longer than a follow
    // waits (2 s), as a stuck transport would: lines of the second burst are dropped and counted.
    let (mut numbered, mut notices, mut dropped, mut last) = (0usize, 0usize, 0usize, 0usize);
    let mut peak = rss0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let e = rig.events.recv_deadline(deadline).expect("the end of the chatty log");
        if e.name != LOG_LINE {
            continue;
        }
        let p = common::params(&e);
        let line = p["line"].as_str().unwrap();
        if p["stream"] == "dcd" {
            let n: usize = line.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"));
            notices += 1;
            dropped += n;
        } else if line == "end" {
            break;
        } else {
            let n: usize = line.split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(n > last, "line {n} after {last}");
            if n <= BURST {
                assert_eq!(n, last + 1, "the first burst is delivered whole, in order");
            }
            last = n;
            numbered += 1;
            if n == BURST + 1 {
                std::thread::sleep(Duration::from_secs(3));
            }
        }
        peak = peak.max(threads_and_rss().1);
        std::thread::sleep(Duration::from_micros(200));
    }
    eprintln!(
        "{} lines: {numbered} delivered, {dropped} dropped in {notices} notices; RSS {rss0} KiB, peak {peak} KiB",
        2 * BURST
    );
    assert!(last > BURST, "the second burst arrived");
    assert!(notices > 0, "a stalled consumer makes the follow drop");
    assert_eq!(numbered + dropped, 2 * BURST, "every line is delivered or counted");
    assert!(peak <= rss0 + 8192, "RSS grew from {rss0} KiB to {peak} KiB");
    rig.follows_end();
}
