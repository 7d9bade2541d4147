//! The state thread: the one owner of "what state is each container in", and
//! the one emitter of `container_state_changed`. It is fed by a bounded channel
//! from three sources: the engine's `/events` stream (followed by its own
//! thread, so transitions arrive within milliseconds and none is lost between
//! polls), the driver (what it just provisioned), and its own poll timer, which
//! lists all containers only while the event stream is down and once after
//! every reconnect, so nothing changes silently.
//!
//! While the stream is up it is the one source for every container it speaks
//! of: a list taken then waits for the stream to pass it, so the events it
//! raced come first, in order, and it reports only what the stream left out.
//!
//! It also keeps the `View` the reads answer from: an inspect of a container
//! whenever an event concerns it (network `connect` and `disconnect` too),
//! and a full list and inspect after every reconnect, before it is served.
//!
//! Extensions: a container that disappears is reported with `state:
//! "removed"`; with `--forward-engine-events` the engine's container events
//! also go out as they are, as `engine_event`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError};
use serde_json::{json, Value};

use crate::engine::stream::JsonLines;
use crate::engine::{Canceller, Engine, EngineError};
use crate::events::{Events, ENGINE_EVENT, STATE_CHANGED};
use crate::ids::short_id;
use crate::labels::is_managed;
use crate::sync::lock;
use crate::view::{Gone, View};

const REMOVED: &str = "removed";
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How far before the last event a reconnect asks the engine to replay from:
/// the engine rounds `since`, and stamps events before it sends them.
const OVERLAP_NANOS: i64 = 1_000_000_000;
/// After a reconnect the engine first replays what it buffered during the
/// outage, all at once; the reconcile waits for that burst to go quiet (or for
/// `SETTLE_MAX`), so transitions are reported in the order they happened and a
/// replayed event is never older than the list it follows.
const SETTLE: Duration = Duration::from_millis(100);
const SETTLE_MAX: Duration = Duration::from_secs(1);
/// How long a list taken while the stream is up waits for the stream to pass
/// it before its differences are reported. Podman's stream trails its event
/// log (by 40 to 220 ms, measured), so a list can show a container running
/// whose `create` and `start` have not arrived yet; reported at once, the list
/// would say "running" first and the late events would then undo it.
const TRAIL: Duration = Duration::from_secs(1);
/// How long `State::baseline` waits for the baseline list. An engine that is
/// down fails at once; only a hung one makes startup wait this long.
const BASELINE_WAIT: Duration = Duration::from_secs(3);

/// A container as the driver just saw it, after changing it.
#[derive(Clone, PartialEq, Debug)]
pub struct Seen {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
}

impl Seen {
    /// From the engine's container inspect.
    pub fn from_inspect(i: &Value) -> Seen {
        Seen {
            id: short_id(i["Id"].as_str().unwrap_or_default()).to_string(),
            name: i["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string(),
            image: str_of(&i["Config"]["Image"]),
            state: str_of(&i["State"]["Status"]),
        }
    }
}

/// Boxed payloads: the 4096-slot channel writes every slot when it is made, so its resident
/// size is 4096 times the largest variant (416 KiB with a `Seen` inline, 96 KiB boxed).
enum Msg {
    Observed(Box<Seen>),
    /// One engine event (`Type: container`).
    Engine(Box<Value>),
    /// The event stream is (re)connected: reconcile with a full list.
    /// `replay`: it starts at the last list or event, so a burst of what
    /// happened since may come first.
    Connected {
        replay: bool,
    },
    /// The event stream broke: poll until it is back.
    Disconnected,
}

#[derive(Clone, PartialEq, Debug)]
struct Known {
    name: String,
    image: String,
    state: String,
}

/// A list taken while the stream is up, held until the stream has passed it.
struct Listed {
    /// When the list was asked for (Unix nanoseconds).
    taken: i64,
    /// When it is reported even if no event has passed it.
    due: Instant,
    containers: Vec<(String, Known)>,
    /// The containers the stream spoke of meanwhile: what it said is newer
    /// than the list, or will be followed by what is.
    heard: HashSet<String>,
}

/// Which engine events go out as `engine_event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    Off,
    All,
    /// Only events of containers with our managed label (under `owned_only`,
    /// other containers are none of the mesh's business).
    Managed,
}

/// What the driver holds to tell the state thread about containers it touched.
#[derive(Clone)]
pub struct StateHandle {
    tx: Sender<Msg>,
    forward: Forward,
    view: Arc<View>,
}

impl StateHandle {
    pub fn observed(&self, seen: Seen) {
        let _ = self.tx.try_send(Msg::Observed(Box::new(seen)));
    }

    /// The containers as the reads see them.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether `engine_event` is emitted (and so advertised).
    pub fn forwards_engine_events(&self) -> bool {
        self.forward != Forward::Off
    }
}

/// The running state and engine-events threads.
pub struct State {
    /// Dropping it tells both threads to stop, waking them from any wait.
    stop: Sender<()>,
    events_cancel: Arc<Mutex<Option<Canceller>>>,
    threads: Vec<JoinHandle<()>>,
    tx: Sender<Msg>,
    forward: Forward,
    view: Arc<View>,
    /// Disconnected once the baseline is known.
    baseline: Receiver<()>,
}

impl State {
    /// `spawn`, then `baseline`.
    pub fn start(engine: Arc<dyn Engine>, poll_hz: f64, events: Events, forward: Forward) -> State {
        let state = State::spawn(engine, poll_hz, events, forward);
        state.baseline();
        state
    }

    /// Start the threads, without waiting. `poll_hz` 0 turns the fallback poll off.
    pub fn spawn(engine: Arc<dyn Engine>, poll_hz: f64, events: Events, forward: Forward) -> State {
        let (tx, rx) = bounded(4096);
        let (stop, stop_rx) = bounded::<()>(0);
        let events_cancel = Arc::new(Mutex::new(None));
        let poll = (poll_hz > 0.0).then(|| Duration::from_secs_f64((1.0 / poll_hz).max(0.1)));
        let reconciled = Arc::new(AtomicI64::new(0));
        let (baseline_tx, baseline) = bounded::<()>(0);
        let view = Arc::new(View::default());
        let owner = {
            let (engine, stop, reconciled, view) = (engine.clone(), stop_rx.clone(), reconciled.clone(), view.clone());
            std::thread::Builder::new()
                .name("state".into())
                .spawn(move || {
                    let mut owner = Owner::new(engine, events, forward, reconciled, view);
                    owner.reconcile();
                    drop(baseline_tx);
                    owner.run(rx, poll, &stop)
                })
                .expect("spawn state thread")
        };
        // Following from the baseline, the stream replays from it: nothing
        // falls between the two.
        let follower = {
            let (tx, stop, cancel, baseline, view) =
                (tx.clone(), stop_rx, events_cancel.clone(), baseline.clone(), view.clone());
            std::thread::Builder::new()
                .name("engine-events".into())
                .spawn(move || {
                    let _ = baseline.recv_timeout(BASELINE_WAIT);
                    follow_events(engine, tx, stop, &cancel, &reconciled, &view)
                })
                .expect("spawn engine-events thread")
        };
        State { stop, events_cancel, threads: vec![owner, follower], tx, forward, view, baseline }
    }

    /// Wait until the containers that exist now are known (or the engine did
    /// not answer within `BASELINE_WAIT`): they are the silent baseline, and
    /// whatever the caller does next is news.
    pub fn baseline(&self) {
        let _ = self.baseline.recv_timeout(BASELINE_WAIT);
    }

    pub fn handle(&self) -> StateHandle {
        StateHandle { tx: self.tx.clone(), forward: self.forward, view: self.view.clone() }
    }

    pub fn shutdown(self) {
        drop(self.stop);
        if let Some(c) = lock(&self.events_cancel).take() {
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
    forward: Forward,
    known: HashMap<String, Known>,
    /// Ids the engine reported destroyed.
    gone: Gone,
    view: Arc<View>,
    stream_up: bool,
    seeded: bool,
    /// When the reconcile after a replaying reconnect is due, and its latest time.
    settle: Option<(Instant, Instant)>,
    /// The last list, while it waits for the stream to pass it.
    pending: Option<Listed>,
    /// When the last successful list started (Unix nanoseconds): what happened
    /// before it needs no replay.
    reconciled: Arc<AtomicI64>,
}

impl Owner {
    fn new(
        engine: Arc<dyn Engine>,
        events: Events,
        forward: Forward,
        reconciled: Arc<AtomicI64>,
        view: Arc<View>,
    ) -> Self {
        Owner {
            engine,
            events,
            forward,
            known: HashMap::new(),
            gone: Gone::default(),
            view,
            stream_up: false,
            seeded: false,
            settle: None,
            pending: None,
            reconciled,
        }
    }

    fn run(mut self, rx: Receiver<Msg>, poll: Option<Duration>, stop: &Receiver<()>) {
        let mut next_poll = Instant::now() + poll.unwrap_or_default();
        loop {
            // Poll only while the event stream cannot be trusted to tell us.
            let polling = poll.filter(|_| !self.stream_up || !self.seeded);
            let due = [polling.map(|_| next_poll), self.settle.map(|(at, _)| at), self.pending.as_ref().map(|l| l.due)]
                .into_iter()
                .flatten()
                .min();
            let wait = due.map_or(Duration::from_secs(3600), |d| d.saturating_duration_since(Instant::now()));
            select! {
                recv(rx) -> m => match m {
                    // While the stream is up it is the only source: a summary
                    // the driver read a moment ago may already be stale.
                    Ok(Msg::Observed(s)) => if !self.stream_up {
                        self.observed(&s)
                    },
                    Ok(Msg::Engine(e)) => {
                        self.engine_event(&e);
                        if let Some((at, latest)) = &mut self.settle {
                            *at = (Instant::now() + SETTLE).min(*latest);
                        }
                        // Events that keep coming (each now costs an inspect) must not
                        // put the reconcile off past its latest time.
                        if self.stream_up && self.settle.is_some_and(|(_, latest)| latest <= Instant::now()) {
                            self.settle = None;
                            self.reconcile();
                        }
                    }
                    Ok(Msg::Connected { replay }) => {
                        self.stream_up = true;
                        if replay {
                            let now = Instant::now();
                            self.settle = Some((now + SETTLE, now + SETTLE_MAX));
                        } else {
                            self.reconcile();
                        }
                    }
                    Ok(Msg::Disconnected) => {
                        self.stream_up = false;
                        self.view.set_current(false);
                        // The stream will not pass it now.
                        self.report_pending();
                    }
                    Err(_) => return,
                },
                recv(stop) -> _ => return,
                default(wait) => {
                    let now = Instant::now();
                    if self.pending.as_ref().is_some_and(|l| l.due <= now) {
                        self.report_pending();
                    }
                    // A rebuild due after a failed inspect waits for the stream
                    // to come back if it broke meanwhile (the reconnect rebuilds).
                    if self.settle.is_some_and(|(at, _)| at <= now) {
                        self.settle = None;
                        if self.stream_up {
                            self.reconcile();
                        }
                    }
                    if let Some(p) = polling.filter(|_| next_poll <= now) {
                        self.reconcile();
                        next_poll = Instant::now() + p;
                    }
                }
            }
        }
    }

    /// Record `state` for `id` and emit the transition, if it is one.
    fn set(&mut self, id: &str, name: &str, image: &str, state: &str) {
        let id = short_id(id).to_string();
        if self.gone.contains(&id) {
            return;
        }
        let previous = self.known.get(&id).map(|k| k.state.clone());
        if previous.as_deref() == Some(state) {
            return;
        }
        if state == REMOVED {
            if previous.is_none() {
                return;
            }
            self.known.remove(&id);
            self.gone.insert(id.clone());
        } else {
            self.known.insert(id.clone(), Known { name: name.into(), image: image.into(), state: state.into() });
        }
        self.events.emit(
            STATE_CHANGED,
            json!({"container_id": id, "name": name, "previous_state": previous,
                   "state": state, "image": image}),
        );
    }

    fn observed(&mut self, s: &Seen) {
        if !s.id.is_empty() {
            self.set(&s.id, &s.name, &s.image, &s.state);
        }
    }

    fn engine_event(&mut self, e: &Value) {
        // An event from after the pending list: the stream has passed it.
        if self.pending.as_ref().is_some_and(|l| event_time(e) >= l.taken) {
            self.report_pending();
        }
        let action = e["Action"].as_str().or(e["status"].as_str()).unwrap_or_default();
        if e["Type"] == "network" {
            // A container joined or left a network: its addresses changed.
            if let (Some(id), "connect" | "disconnect") = (e["Actor"]["Attributes"]["container"].as_str(), action) {
                self.refresh(id);
            }
            return;
        }
        let id = e["Actor"]["ID"].as_str().or(e["id"].as_str()).unwrap_or_default();
        if id.is_empty() {
            return;
        }
        self.forward(e, id);
        self.transition(e, id);
        // Execs and health checks, the busy ones, change nothing a summary shows.
        if !action.starts_with("exec_") && !action.starts_with("health_status") {
            self.refresh(id);
        }
    }

    /// Emit the state change `e` leads to, if it names one.
    fn transition(&mut self, e: &Value, id: &str) {
        // Only these name the state they lead to. `kill`, `oom` and health
        // changes do not change it by themselves: a `die` follows if the
        // container ends.
        let state = match e["Action"].as_str().or(e["status"].as_str()) {
            Some("create") => "created",
            Some("start" | "restart" | "unpause") => "running",
            Some("die" | "stop") => "exited",
            Some("pause") => "paused",
            // Podman names it `remove`.
            Some("destroy" | "remove") => REMOVED,
            _ => return,
        };
        let short = short_id(id).to_string();
        if let Some(listed) = &mut self.pending {
            listed.heard.insert(short.clone());
        }
        let known = self.known.get(&short);
        let attrs = &e["Actor"]["Attributes"];
        let pick = |key: &str, of: fn(&Known) -> &String| {
            attrs[key].as_str().map(String::from).or_else(|| known.map(|k| of(k).clone())).unwrap_or_default()
        };
        let (name, image) = (pick("name", |k| &k.name), pick("image", |k| &k.image));
        self.set(&short, &name, &image, state);
    }

    /// Pass an engine event on as it came (without waiting: a flood of them
    /// is dropped and counted rather than delay a state change).
    fn forward(&self, e: &Value, id: &str) {
        let attributes = &e["Actor"]["Attributes"];
        let wanted = match self.forward {
            Forward::Off => false,
            Forward::All => true,
            Forward::Managed => is_managed(attributes),
        };
        if wanted {
            self.events.emit(
                ENGINE_EVENT,
                json!({"type": e["Type"], "action": e["Action"], "id": id, "name": attributes["name"],
                       "attributes": attributes, "time_nano": e["timeNano"]}),
            );
        }
    }

    /// Put container `id` in the view as the engine shows it now; false when
    /// the engine did not say, and the view is then not served until a
    /// rebuild, due shortly.
    fn refresh(&mut self, id: &str) -> bool {
        let ticket = self.view.ticket();
        match self.engine.inspect_container(id) {
            Ok(i) => {
                self.view.put(ticket, &i);
            }
            Err(EngineError::NotFound(_)) => self.view.remove(id),
            Err(e) => {
                log::debug!("state: inspect {id}: {e}");
                self.view.set_current(false);
                let due = Instant::now() + SETTLE_MAX;
                self.settle = Some((due, due));
                return false;
            }
        }
        true
    }

    /// List every container and emit whatever differs from what we know;
    /// while the stream is up, rebuild the view from it and serve it.
    fn reconcile(&mut self) {
        let started = now_nanos();
        let ticket = self.view.ticket();
        let list = match self.engine.list_containers(true) {
            Ok(l) => l,
            Err(e) => {
                log::debug!("state poll: {e}");
                return;
            }
        };
        self.reconciled.store(started, Ordering::Relaxed);
        let containers: Vec<(String, Known)> = list
            .iter()
            .map(|c| {
                let id = short_id(c["Id"].as_str().unwrap_or_default()).to_string();
                let name = c["Names"][0].as_str().unwrap_or_default().trim_start_matches('/').to_string();
                let (image, state) = (str_of(&c["Image"]), str_of(&c["State"]));
                (id, Known { name, image, state })
            })
            .collect();
        let seen: HashSet<String> = containers.iter().map(|(id, _)| id.clone()).collect();
        let listed = Listed { taken: started, due: Instant::now() + TRAIL, containers, heard: HashSet::new() };
        if !self.seeded {
            // What exists at start-up is the baseline, not news.
            self.seeded = true;
            self.known = listed.containers.into_iter().collect();
        } else if self.stream_up {
            // A newer list stands for an older one still waiting.
            self.pending = Some(listed);
        } else {
            self.report(listed);
        }
        if self.stream_up {
            for c in &list {
                if !self.refresh(c["Id"].as_str().unwrap_or_default()) {
                    return;
                }
            }
            self.view.keep_listed(ticket, &seen);
            self.view.set_current(true);
        }
    }

    fn report_pending(&mut self) {
        if let Some(listed) = self.pending.take() {
            self.report(listed);
        }
    }

    /// Emit whatever `listed` shows that differs from what we know, but of
    /// the containers the stream spoke of since.
    fn report(&mut self, listed: Listed) {
        let seen: HashSet<&String> = listed.containers.iter().map(|(id, _)| id).collect();
        let vanished: Vec<(String, Known)> = (self.known.iter())
            .filter(|(id, _)| !seen.contains(id) && !listed.heard.contains(*id))
            .map(|(i, k)| (i.clone(), k.clone()))
            .collect();
        for (id, k) in listed.containers.iter().filter(|(id, _)| !listed.heard.contains(id)) {
            self.set(id, &k.name, &k.image, &k.state);
        }
        for (id, k) in vanished {
            self.set(&id, &k.name, &k.image, REMOVED);
        }
    }
}

/// An engine event's time (Unix nanoseconds), or now for one that has none.
/// Compared with our own clock only to tell whether the stream has passed a
/// list: an engine whose clock is behind makes the list wait its `TRAIL`, one
/// ahead makes it report at once, as it did before it waited.
fn event_time(e: &Value) -> i64 {
    e["timeNano"].as_i64().unwrap_or_else(now_nanos)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn now_nanos() -> i64 {
    (crate::time::now_epoch() * 1e9) as i64
}

/// What the stream has delivered, so the replay after a reconnect starts
/// where it is needed and skips what was already sent. Events are keyed by
/// time, container and action, not by time alone: the engine stamps events
/// before it orders them, so two containers' events can arrive with their
/// `timeNano`s out of order.
#[derive(Default)]
struct Delivered {
    /// The newest `timeNano` delivered.
    newest: i64,
    /// The keys of events delivered in the last `2 * OVERLAP_NANOS`.
    keys: HashSet<(i64, String)>,
    order: VecDeque<(i64, String)>,
}

impl Delivered {
    /// Where a reconnect asks the engine to replay from, in Unix seconds:
    /// shortly before the newest event delivered, but not before the last
    /// list, which already reported what happened before it (the engine's
    /// clock is assumed to be ours: if not, a little is replayed twice, or
    /// left to the reconcile).
    fn since(&self, reconciled: i64) -> Option<f64> {
        let from = (self.newest - OVERLAP_NANOS).max(reconciled);
        (from > 0).then(|| from as f64 / 1e9)
    }

    /// False when `ev` was delivered already.
    fn first_time(&mut self, ev: &Value) -> bool {
        let t = ev["timeNano"].as_i64().unwrap_or(0);
        if t == 0 {
            return true;
        }
        let key = (t, format!("{}/{}", ev["Actor"]["ID"], ev["Action"].as_str().unwrap_or_default()));
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        self.newest = self.newest.max(t);
        while let Some(old) = self.order.front() {
            if old.0 >= self.newest - 2 * OVERLAP_NANOS {
                break;
            }
            self.keys.remove(old);
            self.order.pop_front();
        }
        true
    }
}

/// Follow the engine's `/events`, reconnecting with backoff. A reconnect asks
/// for what happened while the stream was down and drops what it already
/// delivered. The view stops being served the moment the stream breaks, not
/// once the state thread has caught up.
fn follow_events(
    engine: Arc<dyn Engine>,
    tx: Sender<Msg>,
    stop: Receiver<()>,
    cancel: &Mutex<Option<Canceller>>,
    reconciled: &AtomicI64,
    view: &View,
) {
    let stopped = || matches!(stop.try_recv(), Err(TryRecvError::Disconnected));
    let mut delivered = Delivered::default();
    let mut backoff = Duration::from_millis(250);
    while !stopped() {
        let since = delivered.since(reconciled.load(Ordering::Relaxed));
        match engine.events(since) {
            Ok(mut stream) => {
                *lock(cancel) = Some(stream.cancel.clone());
                if stopped() {
                    break;
                }
                backoff = Duration::from_millis(250);
                let replay = since.is_some();
                if tx.send(Msg::Connected { replay }).is_err() {
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
                        if delivered.first_time(&ev) && tx.send(Msg::Engine(Box::new(ev))).is_err() {
                            return;
                        }
                    }
                }
                view.set_current(false);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sim::scripted::Scripted;
    use crate::engine::sim::Sim;
    use crate::events::Event;

    /// A state owner on `engine`, not running: the tests call its steps one by one.
    fn owner(engine: Arc<dyn Engine>) -> (Owner, Receiver<Event>) {
        let (tx, rx) = bounded(1000);
        let owner = Owner::new(engine, Events::new(tx.clone(), tx), Forward::Off, Arc::default(), Arc::default());
        (owner, rx)
    }

    /// The state changes emitted so far, as `name:previous>state` (`null` for none).
    fn changes(rx: &Receiver<Event>) -> Vec<String> {
        rx.try_iter().filter(|e| e.name == STATE_CHANGED).map(|e| change(&e)).collect()
    }

    fn change(e: &Event) -> String {
        let body: Value = serde_json::from_slice(&e.payload).unwrap();
        let p = &body["params"];
        format!("{}:{}>{}", p["name"].as_str().unwrap(), p["previous_state"].as_str().unwrap_or("null"), p["state"])
            .replace('"', "")
    }

    /// An engine event as `/events` sends it.
    fn event(id: &str, action: &str, name: &str, time_nano: i64) -> Value {
        json!({"Type": "container", "Action": action, "timeNano": time_nano,
               "Actor": {"ID": id, "Attributes": {"name": name, "image": "img:1"}}})
    }

    /// A running container `name` on the sim; its full id.
    fn run(sim: &dyn Engine, name: &str) -> String {
        let id = sim.create_container(Some(name), &json!({"Image": "img:1"})).unwrap();
        sim.start_container(&id).unwrap();
        id
    }

    #[test]
    fn the_baseline_is_silent() {
        let sim = Arc::new(Sim::new());
        run(&*sim, "a");
        sim.create_container(Some("b"), &json!({"Image": "img:1"})).unwrap();
        let (mut owner, rx) = owner(sim.clone());
        owner.reconcile();
        assert_eq!(changes(&rx), Vec::<String>::new(), "what exists at start is not news");
        assert_eq!(owner.known.len(), 2);
        owner.reconcile();
        assert_eq!(changes(&rx), Vec::<String>::new(), "nothing changed");
        sim.stop_container("a", 0).unwrap();
        owner.reconcile();
        assert_eq!(changes(&rx), ["a:running>exited"], "news after the baseline");
    }

    #[test]
    fn a_lifecycle_emits_each_transition_in_order() {
        let (mut owner, rx) = owner(Arc::new(Sim::new()));
        owner.reconcile();
        let id = "0123456789abcdef0123456789abcdef";
        for (t, action) in ["create", "start", "kill", "oom", "die", "start", "pause", "unpause", "stop", "destroy"]
            .into_iter()
            .enumerate()
        {
            owner.engine_event(&event(id, action, "c", t as i64 + 1));
        }
        assert_eq!(
            changes(&rx),
            [
                "c:null>created",
                "c:created>running",
                "c:running>exited",
                "c:exited>running",
                "c:running>paused",
                "c:paused>running",
                "c:running>exited",
                "c:exited>removed"
            ],
            "kill and oom change no state by themselves; stop after die is no news"
        );
        // The fields of one, with the short id.
        owner.engine_event(&event("fedcba9876543210", "create", "d", 99));
        let e: Value = serde_json::from_slice(&rx.try_recv().unwrap().payload).unwrap();
        let p = &e["params"];
        assert_eq!(
            (&p["container_id"], &p["name"], &p["image"], &p["previous_state"], &p["state"]),
            (&json!("fedcba987654"), &json!("d"), &json!("img:1"), &Value::Null, &json!("created"))
        );
    }

    #[test]
    fn a_replayed_event_emits_nothing() {
        let (mut owner, rx) = owner(Arc::new(Sim::new()));
        owner.reconcile();
        let start = event("aaaaaaaaaaaa", "start", "a", 5);
        owner.engine_event(&start);
        owner.engine_event(&start);
        assert_eq!(changes(&rx), ["a:null>running"]);

        // The follower drops what it delivered before a reconnect, and only that.
        let mut delivered = Delivered::default();
        assert!(delivered.first_time(&start));
        assert!(!delivered.first_time(&start), "the same event again");
        assert!(delivered.first_time(&event("aaaaaaaaaaaa", "die", "a", 5)), "another action at the same time");
        assert!(delivered.first_time(&event("bbbbbbbbbbbb", "start", "b", 5)), "another container at the same time");
        assert!(delivered.first_time(&json!({"Action": "start"})), "no time: cannot tell, so delivered");
        // A reconnect replays from a second before the newest, but not from before the last list.
        let newest = 100 * OVERLAP_NANOS;
        delivered.first_time(&event("aaaaaaaaaaaa", "stop", "a", newest));
        assert_eq!(delivered.since(0), Some(99.0));
        assert_eq!(delivered.since(newest), Some(100.0));
        assert_eq!(Delivered::default().since(0), None, "nothing to replay from");
    }

    #[test]
    fn a_destroyed_container_never_comes_back_from_stale_news() {
        let sim = Arc::new(Sim::new());
        let (mut owner, rx) = owner(sim.clone());
        owner.reconcile();
        let id = run(&*sim, "gone");
        owner.engine_event(&event(&id, "start", "gone", 1));
        owner.engine_event(&event(&id, "destroy", "gone", 2));
        assert_eq!(changes(&rx), ["gone:null>running", "gone:running>removed"]);
        // A late event, and the driver's own view from before the removal.
        owner.engine_event(&event(&id, "start", "gone", 1));
        owner.engine_event(&event(&id, "die", "gone", 3));
        let seen =
            Seen { id: short_id(&id).into(), name: "gone".into(), image: "img:1".into(), state: "running".into() };
        owner.observed(&seen);
        // A list that still shows it (taken as it was being removed).
        owner.reconcile();
        assert_eq!(changes(&rx), Vec::<String>::new());
        // A container never seen that is said removed is no news either.
        owner.engine_event(&event("cccccccccccc", "destroy", "never", 4));
        assert_eq!(changes(&rx), Vec::<String>::new());
    }

    #[test]
    fn a_reconcile_after_an_outage_emits_the_net_change() {
        let sim = Arc::new(Sim::new());
        for n in ["stopped", "removed", "kept"] {
            run(&*sim, n);
        }
        let (mut owner, rx) = owner(sim.clone());
        owner.reconcile();
        // Meanwhile, with no event seen:
        sim.stop_container("stopped", 0).unwrap();
        sim.remove_container("removed", true).unwrap();
        run(&*sim, "new");
        sim.create_container(Some("created"), &json!({"Image": "img:1"})).unwrap();
        owner.reconcile();
        let mut got = changes(&rx);
        got.sort();
        assert_eq!(
            got,
            ["created:null>created", "new:null>running", "removed:running>removed", "stopped:running>exited"]
        );
        owner.reconcile();
        assert_eq!(changes(&rx), Vec::<String>::new(), "reported once");
    }

    /// A list taken while the stream trails the engine (as Podman's does) waits for the stream:
    /// the events from before it come first, in order, and it reports only what the stream did
    /// not speak of meanwhile.
    #[test]
    fn a_list_waits_for_the_stream_it_raced() {
        let sim = Arc::new(Sim::new());
        run(&*sim, "old");
        let (mut owner, rx) = owner(sim.clone());
        owner.reconcile();
        owner.stream_up = true;
        let before = now_nanos();
        let id = run(&*sim, "new");
        sim.stop_container("old", 0).unwrap();
        owner.reconcile();
        assert_eq!(changes(&rx), Vec::<String>::new(), "the list waits");
        owner.engine_event(&event(&id, "create", "new", before + 1));
        owner.engine_event(&event(&id, "start", "new", before + 2));
        assert_eq!(changes(&rx), ["new:null>created", "new:created>running"]);
        // An event from after the list: the stream has passed it, and "old" was stopped unseen.
        owner.engine_event(&event("cccccccccccc", "create", "later", now_nanos() + 1));
        assert_eq!(changes(&rx), ["old:running>exited", "later:null>created"]);
        assert!(owner.pending.is_none());

        // Without an event to pass it, the list is reported when due (or when the stream breaks).
        // The stream's news of "new" came after the list showed it exited: the list does not
        // undo it. "later" is not in the list: removed, unheard.
        sim.stop_container(&id, 0).unwrap();
        owner.reconcile();
        owner.engine_event(&event(&id, "die", "new", before + 3));
        owner.engine_event(&event(&id, "start", "new", before + 4));
        assert_eq!(changes(&rx), ["new:running>exited", "new:exited>running"]);
        owner.report_pending();
        assert_eq!(changes(&rx), ["later:created>removed"]);
    }

    /// The next state change within 5 s.
    fn next_change(rx: &Receiver<Event>) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let e = rx.recv_deadline(deadline).expect("a state change within 5 s");
            if e.name == STATE_CHANGED {
                return change(&e);
            }
        }
    }

    /// Waits until `f` holds, for at most 5 s.
    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what} within 5 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The view's `name:state` of every container, or `None` while it is not served.
    fn viewed(state: &State) -> Option<Vec<String>> {
        let list = state.handle().view().list(true, |_| true)?;
        let mut l: Vec<String> = list
            .iter()
            .map(|s| serde_json::from_str::<Value>(s).unwrap())
            .map(|s| format!("{}:{}", s["name"], s["state"]).replace('"', ""))
            .collect();
        l.sort();
        Some(l)
    }

    /// The threads: events arrive as the engine sends them; while the stream is cut the poll
    /// reports what changed, and nothing is reported twice once it is back. The view is served
    /// while the stream is up, follows it, and is not served while it is cut.
    #[test]
    fn the_threads_follow_the_stream_and_poll_while_it_is_cut() {
        let engine = Arc::new(Scripted::new());
        run(&engine.sim, "old");
        let (tx, rx) = bounded(1000);
        let state = State::start(engine.clone(), 10.0, Events::new(tx.clone(), tx), Forward::Off);
        // The stream is connected once the follower has subscribed: wait for that, not a while.
        let deadline = Instant::now() + Duration::from_secs(5);
        while engine.event_streams() == 0 {
            assert!(Instant::now() < deadline, "the follower did not connect");
            std::thread::sleep(Duration::from_millis(5));
        }
        let id = engine.sim.create_container(Some("c"), &json!({"Image": "img:1"})).unwrap();
        engine.sim.start_container(&id).unwrap();
        assert_eq!([next_change(&rx), next_change(&rx)], ["c:null>created", "c:created>running"]);
        until("the view", || viewed(&state) == Some(vec!["c:running".into(), "old:running".into()]));

        engine.cut_events();
        until("the view withdrawn", || viewed(&state).is_none());
        engine.sim.stop_container(&id, 0).unwrap();
        engine.sim.remove_container("old", true).unwrap();
        let mut got = [next_change(&rx), next_change(&rx)];
        got.sort();
        assert_eq!(got, ["c:running>exited", "old:running>removed"], "the poll reports the outage");

        engine.restore_events();
        engine.sim.start_container(&id).unwrap();
        assert_eq!(next_change(&rx), "c:exited>running");
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing twice");
        until("the view rebuilt", || viewed(&state) == Some(vec!["c:running".into()]));
        state.shutdown();
    }
}
