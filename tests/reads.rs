//! The reads (`list_containers`, `list_managed_containers`, `get_container`) answer from the
//! state thread's view: no engine call while the engine's events flow, exact under churn made
//! through dcd and behind its back, and never silently stale while the engine is away.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::counting::Counting;
use common::relay::Relay;
use common::{docker, docker_ok, Cleanup, Rig};
use dcd::engine::{docker::Docker, Engine, EngineError};
use dcd::view::summary;

const WAIT: Duration = Duration::from_secs(10);

/// Retry `f` until it holds, for at most `WAIT`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> =
        list["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    n.sort();
    n
}

fn state_of(rig: &Rig, name: &str) -> Value {
    let all = rig.ok("list_containers", json!({"all_containers": true}));
    all["containers"].as_array().unwrap().iter().find(|c| c["name"] == name).map_or(Value::Null, |c| c["state"].clone())
}

#[test]
fn reads_ask_the_engine_nothing_while_events_flow() {
    let engine = Arc::new(Counting::new());
    let rig = Rig::new(engine.clone(), true);
    for n in ["a", "b", "c"] {
        rig.ok("provision_container", json!({"spec": {"image": "sim/hello", "name": n}}));
    }
    // Served from the view once it is rebuilt after the stream connected.
    eventually("a list that asks the engine nothing", || {
        let before = engine.calls();
        rig.ok("list_containers", json!({"all_containers": true}));
        engine.calls() == before
    });
    let full = engine.sim.inspect_container("a").unwrap()["Id"].as_str().unwrap().to_string();
    let before = engine.calls();
    for _ in 0..20 {
        assert_eq!(names(&rig.ok("list_containers", json!({"all_containers": true}))), ["a", "b", "c"]);
        assert_eq!(names(&rig.ok("list_containers", json!({}))), ["a", "b", "c"]);
        assert_eq!(names(&rig.ok("list_managed_containers", json!({}))), ["a", "b", "c"]);
        for key in ["a", full.as_str(), &full[..5]] {
            assert_eq!(rig.ok("get_container", json!({"container_id": key}))["container"]["name"], "a", "{key}");
        }
    }
    assert_eq!(engine.calls(), before, "the reads asked the engine");

    // Behind dcd's back, the events bring the change.
    engine.sim.stop_container("b", 0).unwrap();
    engine.sim.rename_container("c", "c2").unwrap();
    eventually("the stop and the rename in the view", || {
        state_of(&rig, "b") == "exited" && state_of(&rig, "c2") == "running"
    });
    // Through dcd, the caller reads its own writes at once.
    rig.ok("start_container", json!({"container_id": "b"}));
    assert_eq!(state_of(&rig, "b"), "running");
    rig.ok("stop_container", json!({"container_id": "a", "timeout_s": 0}));
    assert_eq!(state_of(&rig, "a"), "exited");
    assert_eq!(names(&rig.ok("list_containers", json!({}))), ["b", "c2"]);
    rig.ok("remove_container", json!({"container_id": "c2", "force": true}));
    assert_eq!(names(&rig.ok("list_containers", json!({"all_containers": true}))), ["a", "b"]);
    assert!(rig.err("get_container", json!({"container_id": "c2"})).contains("No such container"));
}

/// A seeded xorshift64*, so a failing churn can be replayed (`DCD_CHURN_SEED`).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// A container of the churn, as the test made it.
struct Slot {
    name: String,
    running: bool,
    on_net: bool,
}

/// One random change of `slot` (named `base` when made), through dcd or with the docker CLI.
#[allow(clippy::too_many_arguments)]
fn change(
    rig: &Rig,
    rng: &mut Rng,
    slot: &mut Option<Slot>,
    base: &str,
    image: &str,
    label: &str,
    tag: &str,
    net: &str,
) {
    let by_dcd = rng.below(2) == 0;
    match slot {
        None => {
            let name = base.to_string();
            if by_dcd {
                rig.ok(
                    "provision_container",
                    json!({"spec": {"image": image, "name": name, "command": ["sleep", "3600"],
                                    "labels": {"dcd-churn": tag}}}),
                );
            } else {
                docker_ok(&["create", "--label", label, "--name", &name, image, "sleep", "3600"]);
            }
            *slot = Some(Slot { name, running: by_dcd, on_net: false });
        }
        Some(s) => match rng.below(6) {
            0 if s.running => {
                if by_dcd {
                    rig.ok("stop_container", json!({"container_id": s.name, "timeout_s": 0}));
                } else {
                    docker_ok(&["stop", "-t", "0", &s.name]);
                }
                s.running = false;
            }
            0 => {
                if by_dcd {
                    rig.ok("start_container", json!({"container_id": s.name}));
                } else {
                    docker_ok(&["start", &s.name]);
                }
                s.running = true;
            }
            1 if s.running => {
                docker_ok(&["kill", &s.name]);
                s.running = false;
            }
            1 | 2 => {
                let new = match s.name.strip_suffix("-r") {
                    Some(n) => n.to_string(),
                    None => format!("{}-r", s.name),
                };
                docker_ok(&["rename", &s.name, &new]);
                s.name = new;
            }
            3 if !s.on_net => {
                if by_dcd {
                    rig.ok("connect_network", json!({"network": net, "container_id": s.name}));
                } else {
                    docker_ok(&["network", "connect", net, &s.name]);
                }
                s.on_net = true;
            }
            3 => {
                docker_ok(&["network", "disconnect", net, &s.name]);
                s.on_net = false;
            }
            _ => {
                if by_dcd {
                    rig.ok("remove_container", json!({"container_id": s.name, "force": true}));
                } else {
                    docker_ok(&["rm", "-f", &s.name]);
                }
                *slot = None;
            }
        },
    }
}

/// What the engine shows of the churn's containers now: a fresh list, and an inspect of each.
fn fresh(engine: &dyn Engine, label: &str) -> BTreeMap<String, Value> {
    let (key, value) = label.split_once('=').unwrap();
    let mut out = BTreeMap::new();
    for c in engine.list_containers(true).unwrap() {
        if c["Labels"][key] != value {
            continue;
        }
        match engine.inspect_container(c["Id"].as_str().unwrap()) {
            Ok(i) => {
                let s = summary(&i);
                out.insert(s["id"].as_str().unwrap().to_string(), s);
            }
            Err(EngineError::NotFound(_)) => {}
            Err(e) => panic!("inspect: {e}"),
        }
    }
    out
}

/// dcd's `list_containers(all)` of the churn's containers, and whether it came from the view
/// (the relay saw no list).
fn ours(rig: &Rig, relay: &Relay, label: &str) -> (BTreeMap<String, Value>, bool) {
    let lists = relay.lists();
    let r = rig.ok("list_containers", json!({"all_containers": true, "label": label}));
    let served = relay.lists() == lists;
    let map = r["containers"].as_array().unwrap().iter().map(|c| (c["id"].as_str().unwrap().to_string(), c.clone()));
    (map.collect(), served)
}

/// dcd's list equals the engine's, field by field, and came from the view (once the events of
/// the last change have arrived).
fn exact(rig: &Rig, relay: &Relay, direct: &dyn Engine, label: &str, after: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, served) = ours(rig, relay, label);
        let want = fresh(direct, label);
        if got == want && served {
            return;
        }
        if Instant::now() > deadline {
            assert!(served, "after {after} changes the list was not served from the view");
            for (id, w) in &want {
                let g = got.get(id).unwrap_or(&Value::Null);
                for (field, v) in w.as_object().unwrap() {
                    assert_eq!(&g[field], v, "after {after} changes, {field} of {id}");
                }
            }
            assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "after {after} changes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 500 random changes (`DCD_CHURN_CHANGES`) by four callers at once, half through dcd and half
/// with the docker CLI behind its back; after each tenth of them, `list_containers(all)` equals
/// a fresh list and inspect, field by field, and came from the view. Then the
/// engine goes away: the reads fail rather than answer from the view, and once it is back they
/// show what changed meanwhile.
#[test]
fn list_containers_is_exact_under_churn() {
    let Some((direct, image)) = common::real_engine() else {
        return;
    };
    let changes: usize = std::env::var("DCD_CHURN_CHANGES").ok().and_then(|n| n.parse().ok()).unwrap_or(500);
    let seed = std::env::var("DCD_CHURN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("churn seed {seed} (DCD_CHURN_SEED replays it)");
    let mut relay = Relay::new("churn", true);
    relay.restore();
    let engine = Arc::new(Docker::connect(Some(&relay.docker_host())).unwrap());
    let rig = Rig::new(engine, false);
    relay.wait_streams(1, WAIT);

    let tag = common::unique("churn");
    let label = format!("dcd-churn={tag}");
    let net = format!("{tag}-net");
    docker_ok(&["network", "create", &net]);
    let base: Vec<String> = (0..8).map(|i| format!("{tag}-{i}")).collect();
    let mut all_names = base.clone();
    all_names.extend(base.iter().map(|n| format!("{n}-r")));
    let cleanup = Cleanup(all_names);
    let mut slots: Vec<Option<Slot>> = (0..base.len()).map(|_| None).collect();

    // Four callers at once, each on its own slots, so the engine's events of different
    // containers interleave as they do on a busy host; checked after every round.
    let started = Instant::now();
    let (workers, rounds) = (4, 5);
    let per_call = changes.div_ceil(workers * rounds);
    let mut rngs: Vec<Rng> = (0..workers).map(|w| Rng(seed.wrapping_add(w as u64 * 0x9e37_79b9) | 1)).collect();
    let mut chunks: Vec<&mut [Option<Slot>]> = slots.chunks_mut(base.len() / workers).collect();
    for round in 1..=rounds {
        std::thread::scope(|s| {
            for (w, (rng, chunk)) in rngs.iter_mut().zip(chunks.iter_mut()).enumerate() {
                let (rig, image, label, tag, net) = (&rig, &image, &label, &tag, &net);
                let base = &base[w * 2..w * 2 + 2];
                s.spawn(move || {
                    for _ in 0..per_call {
                        let i = rng.below(chunk.len());
                        change(rig, rng, &mut chunk[i], &base[i], image, label, tag, net);
                    }
                });
            }
        });
        exact(&rig, &relay, direct.as_ref(), &label, round * workers * per_call);
    }
    let changes = rounds * workers * per_call;
    println!("{changes} changes checked in {:?}", started.elapsed());

    // The engine goes away and something changes meanwhile: no read answers from the view.
    let victim = slots.iter().flatten().next().map(|s| s.name.clone());
    relay.cut();
    if let Some(v) = &victim {
        docker_ok(&["rm", "-f", v]);
    }
    let down = rig.err("list_containers", json!({"all_containers": true}));
    assert!(down.contains("unreachable") || down.contains("engine"), "{down}");
    if let Some(v) = &victim {
        assert!(!rig.err("get_container", json!({"container_id": v})).is_empty());
    }
    relay.restore();
    exact(&rig, &relay, direct.as_ref(), &label, changes + 1);

    drop(cleanup);
    docker(&["network", "rm", &net]);
}
