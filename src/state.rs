//! The state thread: the one owner of "what state is each container in", and
//! the one emitter of `container_state_changed`. It is fed by a bounded channel
//! from three sources: the engine's `/events` stream (followed by its own
//! thread, so transitions arrive within milliseconds and none is lost between
//! polls), the driver (what it just provisioned), and its own poll timer, which
//! lists all containers only while the event stream is down and once after
//! every reconnect, so nothing changes silently.
//!
//! Extension: a container that disappears is reported with `state: "removed"`.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};
use serde_json::{json, Value};

use crate::driver::{Events, STATE_CHANGED};
use crate::engine::stream::JsonLines;
use crate::engine::{Canceller, Engine};

const REMOVED: &str = "removed";
const BACKOFF_MAX: Duration = Duration::from_secs(10);

enum Msg {
    /// A container summary (driver shape) seen by the driver.
    Observed(Value),
    /// One engine event (`Type: container`).
    Engine(Value),
    /// The event stream is (re)connected: reconcile with a full list.
    Connected,
    /// The event stream broke: poll until it is back.
    Disconnected,
}

#[derive(Clone, PartialEq, Debug)]
struct Known {
    name: String,
    image: String,
    state: String,
}

/// What the driver holds to tell the state thread about containers it touched.
#[derive(Clone)]
pub struct StateHandle {
    tx: Sender<Msg>,
}

impl StateHandle {
    pub fn observed(&self, summary: &Value) {
        let _ = self.tx.try_send(Msg::Observed(summary.clone()));
    }
}

/// The running state and engine-events threads.
pub struct State {
    /// Dropping it tells both threads to stop, waking them from any wait.
    stop: Sender<()>,
    events_cancel: Arc<Mutex<Option<Canceller>>>,
    threads: Vec<JoinHandle<()>>,
    tx: Sender<Msg>,
}

impl State {
    /// Start the threads. `poll_hz` 0 turns the fallback poll off.
    pub fn start(engine: Arc<dyn Engine>, poll_hz: f64, events: Events) -> State {
        let (tx, rx) = bounded(4096);
        let (stop, stop_rx) = bounded::<()>(0);
        let events_cancel = Arc::new(Mutex::new(None));
        let poll = (poll_hz > 0.0).then(|| Duration::from_secs_f64((1.0 / poll_hz).max(0.1)));
        let owner = {
            let (engine, stop) = (engine.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .name("state".into())
                .spawn(move || Owner::new(engine, events).run(rx, poll, &stop))
                .expect("spawn state thread")
        };
        let follower = {
            let (tx, stop, cancel) = (tx.clone(), stop_rx, events_cancel.clone());
            std::thread::Builder::new()
                .name("engine-events".into())
                .spawn(move || follow_events(engine, tx, stop, &cancel))
                .expect("spawn engine-events thread")
        };
        State { stop, events_cancel, threads: vec![owner, follower], tx }
    }

    pub fn handle(&self) -> StateHandle {
        StateHandle { tx: self.tx.clone() }
    }

    pub fn shutdown(self) {
        drop(self.stop);
        if let Some(c) = self.events_cancel.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.cancel();
        }
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

struct Owner {
    engine: Arc<dyn Engine>,
    events: Events,
    known: HashMap<String, Known>,
    /// Ids the engine reported destroyed, so a late `Observed` cannot revive them.
    gone: HashSet<String>,
    stream_up: bool,
    seeded: bool,
}

impl Owner {
    fn new(engine: Arc<dyn Engine>, events: Events) -> Self {
        Owner { engine, events, known: HashMap::new(), gone: HashSet::new(), stream_up: false, seeded: false }
    }

    fn run(mut self, rx: Receiver<Msg>, poll: Option<Duration>, stop: &Receiver<()>) {
        let mut next_poll = Instant::now();
        loop {
            // Poll only while the event stream cannot be trusted to tell us.
            let polling = poll.filter(|_| !self.stream_up || !self.seeded);
            let wait = polling.map_or(Duration::from_secs(3600), |_| next_poll.saturating_duration_since(Instant::now()));
            select! {
                recv(rx) -> m => match m {
                    Ok(Msg::Observed(s)) => self.observed(&s),
                    Ok(Msg::Engine(e)) => self.engine_event(&e),
                    Ok(Msg::Connected) => {
                        self.stream_up = true;
                        self.reconcile();
                    }
                    Ok(Msg::Disconnected) => self.stream_up = false,
                    Err(_) => return,
                },
                recv(stop) -> _ => return,
                default(wait) => {
                    if let Some(p) = polling {
                        self.reconcile();
                        next_poll = Instant::now() + p;
                    }
                }
            }
        }
    }

    /// Record `state` for `id` and emit the transition, if it is one.
    fn set(&mut self, id: &str, name: &str, image: &str, state: &str) {
        let id: String = id.chars().take(12).collect();
        let previous = self.known.get(&id).map(|k| k.state.clone());
        if previous.as_deref() == Some(state) {
            return;
        }
        if state == REMOVED {
            self.known.remove(&id);
            self.gone.insert(id.clone());
        } else {
            self.gone.remove(&id);
            self.known.insert(id.clone(), Known { name: name.into(), image: image.into(), state: state.into() });
        }
        self.events.emit(
            STATE_CHANGED,
            json!({"container_id": id, "name": name, "previous_state": previous,
                   "state": state, "image": image}),
        );
    }

    fn observed(&mut self, s: &Value) {
        let id = s["id"].as_str().unwrap_or_default();
        if id.is_empty() || self.gone.contains(id) {
            return;
        }
        let (name, image, state) = (str_of(&s["name"]), str_of(&s["image"]), str_of(&s["state"]));
        self.set(id, &name, &image, &state);
    }

    fn engine_event(&mut self, e: &Value) {
        let id = e["Actor"]["ID"].as_str().or(e["id"].as_str()).unwrap_or_default().to_string();
        if id.is_empty() {
            return;
        }
        let action = e["Action"].as_str().or(e["status"].as_str()).unwrap_or_default();
        // `health_status: healthy` and `exec_start: sh` carry a suffix.
        let action = action.split(':').next().unwrap_or_default();
        let attrs = &e["Actor"]["Attributes"];
        let short: String = id.chars().take(12).collect();
        let known = self.known.get(&short).cloned();
        let name = attrs["name"].as_str().map(String::from).or(known.as_ref().map(|k| k.name.clone()));
        let image = attrs["image"].as_str().map(String::from).or(known.as_ref().map(|k| k.image.clone()));
        let state = match action {
            "create" => "created",
            "start" | "restart" | "unpause" => "running",
            "die" | "stop" => "exited",
            "pause" => "paused",
            "destroy" => REMOVED,
            // kill, oom and health changes do not name the resulting state: ask.
            "kill" | "oom" | "health_status" => match self.engine.inspect_container(&id) {
                Ok(i) => return self.set(&id, &str_of(&i["Name"]).trim_start_matches('/').to_string(),
                                          &str_of(&i["Config"]["Image"]), &str_of(&i["State"]["Status"])),
                Err(_) => return,
            },
            _ => return,
        };
        self.set(&id, &name.unwrap_or_default(), &image.unwrap_or_default(), state);
    }

    /// List every container and emit whatever differs from what we know.
    fn reconcile(&mut self) {
        let list = match self.engine.list_containers(true) {
            Ok(l) => l,
            Err(e) => {
                log::debug!("state poll: {e}");
                return;
            }
        };
        let first = !self.seeded;
        self.seeded = true;
        let mut seen = HashSet::new();
        for c in &list {
            let id: String = str_of(&c["Id"]).chars().take(12).collect();
            let name = c["Names"][0].as_str().unwrap_or_default().trim_start_matches('/').to_string();
            let (image, state) = (str_of(&c["Image"]), str_of(&c["State"]));
            seen.insert(id.clone());
            if first {
                // What exists at start-up is the baseline, not news.
                self.known.insert(id, Known { name, image, state });
            } else {
                self.set(&id, &name, &image, &state);
            }
        }
        let vanished: Vec<(String, Known)> =
            self.known.iter().filter(|(id, _)| !seen.contains(*id)).map(|(i, k)| (i.clone(), k.clone())).collect();
        for (id, k) in vanished {
            self.set(&id, &k.name, &k.image, REMOVED);
        }
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Follow the engine's `/events`, reconnecting with backoff. After a
/// reconnect it asks again from shortly before the last event seen and drops
/// what it already delivered (by `timeNano`).
fn follow_events(engine: Arc<dyn Engine>, tx: Sender<Msg>, stop: Receiver<()>, cancel: &Mutex<Option<Canceller>>) {
    let stopped = || matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
    let mut last_nano: i64 = 0;
    let mut backoff = Duration::from_millis(250);
    while !stopped() {
        let since = (last_nano > 0).then(|| last_nano as f64 / 1e9 - 1.0);
        match engine.events(since) {
            Ok(mut stream) => {
                *cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream.cancel.clone());
                if stopped() {
                    break;
                }
                backoff = Duration::from_millis(250);
                if tx.send(Msg::Connected).is_err() {
                    return;
                }
                let mut lines = JsonLines::default();
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match stream.body.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut out = Vec::new();
                    lines.push(&buf[..n], &mut |v| out.push(v));
                    for ev in out {
                        let t = ev["timeNano"].as_i64().unwrap_or(0);
                        if t != 0 && t <= last_nano {
                            continue;
                        }
                        last_nano = last_nano.max(t);
                        if tx.send(Msg::Engine(ev)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send(Msg::Disconnected);
            }
            Err(e) => log::debug!("engine events: {e}"),
        }
        // Sleeps the backoff, or returns at once when told to stop.
        if stop.recv_timeout(backoff).is_err() && stopped() {
            break;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
