//! The Device Connect mesh: one transport thread owns the session (NATS or
//! Zenoh), publishes events, heartbeats and presence, registers with the
//! registry in infra mode, and hands incoming requests to the workers. The
//! rest of the daemon sees only the types below and never knows which
//! backend is in use.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Map, Value};

use crate::events::{Event, LOG_LINE, STATE_CHANGED};
use crate::ids::random_hex;
use crate::time::now_epoch;

/// Which messaging backend carries the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nats,
    Zenoh,
}

/// TLS material. Paths win over inline PEM (spec §5.3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

/// Everything the transport needs, resolved by `config` (flags > env > creds).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub backend: Backend,
    pub device_id: String,
    pub tenant: String,
    /// NATS URLs, or Zenoh endpoints already converted (`tcp/h:p`, spec §5.2).
    /// Empty for Zenoh means a D2D peer with scouting.
    pub urls: Vec<String>,
    /// D2D discovery (presence) instead of the registry.
    pub d2d: bool,
    /// Zenoh: listen endpoints (`ZENOH_LISTEN`).
    pub zenoh_listen: Vec<String>,
    /// Zenoh: multicast scouting (on by default, as in the SDK).
    pub zenoh_multicast: bool,
    /// Zenoh: `scouting.gossip.multihop`.
    pub zenoh_gossip_multihop: bool,
    /// NATS user JWT and nkey seed (decentralised auth).
    pub nats_jwt: Option<String>,
    pub nats_seed: Option<String>,
    pub tls: Tls,
    /// NATS: verify the server certificate's chain but not its hostname (as the SDK does).
    pub tls_skip_hostname: bool,
    /// Lease the registry keeps; heartbeats go every ttl/3.
    pub ttl: Duration,
    /// Tests only (`DCD_TEST_WEDGE_TRANSPORT_S`): the transport thread stops
    /// turning over this long after it starts, so the watchdog can be seen to
    /// stop pinging.
    pub test_wedge_after: Option<Duration>,
}

/// How the transport thread is doing, for the watchdog: when it last went
/// round its loop, and whether its session is up.
#[derive(Clone, Default)]
pub struct Pulse {
    /// Milliseconds since `started`, at the last turn.
    turned_ms: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    started: Arc<OnceInstant>,
}

/// An `Instant` fixed at creation, shared.
struct OnceInstant(Instant);

impl Default for OnceInstant {
    fn default() -> Self {
        OnceInstant(Instant::now())
    }
}

impl Pulse {
    fn turn(&self) {
        self.turned_ms.store(self.started.0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long ago the transport thread last went round its loop.
    pub fn since_turn(&self) -> Duration {
        let now = self.started.0.elapsed();
        now.saturating_sub(Duration::from_millis(self.turned_ms.load(Ordering::Relaxed)))
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// The registration params of this device (spec §3.6): `device_id`,
/// `device_ttl`, `capabilities`, `identity`, `status` with a fresh `ts`.
/// Presence is built from the same object. Called by the transport thread.
pub type Describe = std::sync::Arc<dyn Fn() -> Value + Send + Sync>;

/// A message from the mesh for the workers.
pub enum Inbound {
    /// A JSON-RPC request on `<id>.cmd`; answer through `reply`.
    Request { payload: Vec<u8>, reply: Responder },
    /// A broadcast envelope (spec §4.3); results go out as events.
    Broadcast { payload: Vec<u8> },
}

/// Where a reply goes. NATS: published to the reply inbox by the transport
/// thread. Zenoh: answered on the query by the worker, and the query dropped
/// right after, so clients in client mode get it at once (spec §2.7).
pub struct Responder {
    send: Box<dyn FnOnce(Vec<u8>) + Send>,
    /// The largest payload the server accepts (NATS `max_payload`), if limited.
    pub max_payload: Option<usize>,
}

impl Responder {
    pub fn new(max_payload: Option<usize>, send: impl FnOnce(Vec<u8>) + Send + 'static) -> Self {
        Responder { send: Box::new(send), max_payload }
    }

    pub fn send(self, payload: Vec<u8>) {
        (self.send)(payload)
    }
}

/// Something for the transport thread to publish as it is, on a subject
/// relative to the device (`event.async_reply.<cid>` becomes
/// `device-connect.<tenant>.<device_id>.event.async_reply.<cid>`).
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Responder {
    /// For messages nobody waits on (a NATS publish without a reply inbox, a
    /// Zenoh `put` on `cmd`): the request still runs, its reply goes nowhere.
    fn discard() -> Self {
        Responder::new(None, |_| {})
    }
}

#[cfg(not(any(feature = "nats", feature = "zenoh")))]
compile_error!("dcd needs at least one messaging backend: enable the `nats` or `zenoh` feature");

#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "zenoh")]
mod zenoh;

/// The transport, checked and ready to start. `prepare` must run before the
/// process starts any thread: the Zenoh backend sizes its runtime through the
/// environment, which is only safe to change while nothing else runs.
pub struct Transport {
    cfg: MeshConfig,
    pulse: Pulse,
    run: Box<dyn FnOnce(Core, Links) + Send>,
}

/// Check the configuration (a bad URL or unreadable key fails here, before
/// anything started) and get the backend ready.
pub fn prepare(cfg: MeshConfig) -> io::Result<Transport> {
    let run: Box<dyn FnOnce(Core, Links) + Send> = match cfg.backend {
        #[cfg(feature = "nats")]
        Backend::Nats => Box::new(nats::prepare(&cfg)?),
        #[cfg(feature = "zenoh")]
        Backend::Zenoh => Box::new(zenoh::prepare(&cfg)?),
        #[allow(unreachable_patterns)]
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this dcd was built without the {other:?} backend"),
            ))
        }
    };
    Ok(Transport { cfg, run, pulse: Pulse::default() })
}

impl Transport {
    /// The transport thread's pulse, to watch it from another thread.
    pub fn pulse(&self) -> Pulse {
        self.pulse.clone()
    }

    /// Start the transport thread ("mesh"). It owns the session, serves until
    /// `stop` disconnects, then departs (D2D), flushes and closes within about
    /// a second.
    pub fn spawn(
        self,
        describe: Describe,
        inbound: Sender<Inbound>,
        [events, bulk]: [Receiver<Event>; 2],
        publish: Receiver<Publish>,
        stop: Receiver<()>,
    ) -> io::Result<JoinHandle<()>> {
        let links = Links { events, bulk, publish, stop };
        let mut core = Core::new(&self.cfg, describe, inbound);
        core.pulse = self.pulse;
        let run = self.run;
        thread(move || run(core, links))
    }
}

/// A client's session on the mesh (the `dcd` subcommands): the same
/// connection setup as the daemon's, but blocking calls for one caller,
/// with the backend's async kept behind them.
pub struct Session(Link);

enum Link {
    #[cfg(feature = "nats")]
    Nats(nats::Link),
    #[cfg(feature = "zenoh")]
    Zenoh(zenoh::Link),
}

/// Why a request got no answer.
#[derive(Debug, PartialEq)]
pub enum RequestError {
    /// Nothing listens on the subject.
    NoResponders,
    TimedOut,
    Failed(String),
}

/// What a subscription delivers: the subject in NATS form (dots) and the payload.
pub struct Message {
    pub subject: String,
    pub payload: Vec<u8>,
}

impl Session {
    /// Connect (a broker or router that is not there fails here); as a
    /// scouting Zenoh peer, start looking for peers. Call it before the
    /// process starts any thread (see `prepare`).
    pub fn open(cfg: &MeshConfig) -> io::Result<Session> {
        Ok(Session(match cfg.backend {
            #[cfg(feature = "nats")]
            Backend::Nats => Link::Nats(nats::Link::open(cfg)?),
            #[cfg(feature = "zenoh")]
            Backend::Zenoh => Link::Zenoh(zenoh::Link::open(cfg)?),
            #[allow(unreachable_patterns)]
            other => return Err(io::Error::new(io::ErrorKind::Unsupported, format!("built without {other:?}"))),
        }))
    }

    pub fn request(&self, subject: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RequestError> {
        match &self.0 {
            #[cfg(feature = "nats")]
            Link::Nats(l) => l.request(subject, payload, timeout),
            #[cfg(feature = "zenoh")]
            Link::Zenoh(l) => l.request(subject, payload, timeout),
        }
    }

    pub fn publish(&self, subject: &str, payload: Vec<u8>) -> io::Result<()> {
        match &self.0 {
            #[cfg(feature = "nats")]
            Link::Nats(l) => l.publish(subject, payload),
            #[cfg(feature = "zenoh")]
            Link::Zenoh(l) => l.publish(subject, payload),
        }
    }

    /// Messages on `subject` (NATS wildcards allowed) from now on, until the
    /// session ends or the receiver goes.
    pub fn subscribe(&self, subject: &str) -> io::Result<Receiver<Message>> {
        let (tx, rx) = crossbeam_channel::unbounded();
        match &self.0 {
            #[cfg(feature = "nats")]
            Link::Nats(l) => l.subscribe(subject, tx)?,
            #[cfg(feature = "zenoh")]
            Link::Zenoh(l) => l.subscribe(subject, tx)?,
        }
        Ok(rx)
    }
}

/// `device-connect.<tenant>.<tail>`
pub fn subject(tenant: &str, tail: &str) -> String {
    format!("{SUBJECT_ROOT}.{tenant}.{tail}")
}

fn thread(run: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("mesh".into()).spawn(move || {
        run();
        log::debug!("mesh closed");
    })
}

/// NATS subject to Zenoh key (spec §1.5).
#[cfg(any(feature = "zenoh", test))]
fn zenoh_key(subject: &str) -> String {
    if subject.contains('/') {
        return subject.to_string();
    }
    let key = subject.replace('.', "/").replace("/>/", "/**/");
    match key.strip_suffix("/>") {
        Some(head) => format!("{head}/**"),
        None => key,
    }
}

const SUBJECT_ROOT: &str = "device-connect";
const BURST_INTERVAL: Duration = Duration::from_millis(500);
const BURST_LENGTH: Duration = Duration::from_secs(10);
const STEADY_INTERVAL: Duration = Duration::from_secs(5);
/// How long the registry gets to answer `registerDevice` (spec §2.5).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(15);
/// Registration starts after a random delay below this, so a fleet that
/// boots together does not hit the registry at once.
const REGISTER_JITTER: Duration = Duration::from_secs(2);
const REGISTER_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Events and worker publishes held while the session is down. When it
/// overflows the oldest go first, as in the Python device, but log lines
/// before state changes, and each container's lost lines are reported.
const QUEUE_LIMIT: usize = 10_000;
/// Timers further out than this are not worth waking for.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// The longest the transport thread waits without going round its loop.
const PULSE_EVERY: Duration = Duration::from_secs(5);

/// What a subscription carries; the backend tags each message with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    Cmd,
    Broadcast,
    Probe,
}

/// Something the backend must put on the wire.
#[derive(Debug, PartialEq)]
enum Out {
    Publish {
        subject: String,
        payload: Vec<u8>,
    },
    /// A `registerDevice` request; the backend reports the reply (or why
    /// there is none) through `Core::on_registered(id, …)`.
    Register {
        subject: String,
        payload: Vec<u8>,
        id: String,
    },
}

/// The channels from the rest of the daemon, and the one place that knows
/// a closed channel means "stop listening", not "stop the transport".
struct Links {
    /// State changes, taken before the bulk whenever both wait.
    events: Receiver<Event>,
    /// Log lines and forwarded engine events.
    bulk: Receiver<Event>,
    publish: Receiver<Publish>,
    stop: Receiver<()>,
}

enum Step<T> {
    Event(Event),
    Publish(Publish),
    Other(T),
    Stop,
    Idle,
}

impl Links {
    /// Wait up to `timeout` for the next thing to do. `other` is the
    /// backend's own channel; it must outlive the loop.
    fn next<T>(&mut self, other: &Receiver<T>, timeout: Duration) -> Step<T> {
        if let Ok(ev) = self.events.try_recv() {
            return Step::Event(ev);
        }
        crossbeam_channel::select! {
            recv(self.stop) -> _ => Step::Stop,
            recv(self.events) -> m => match m {
                Ok(ev) => Step::Event(ev),
                Err(_) => {
                    self.events = crossbeam_channel::never();
                    Step::Idle
                }
            },
            recv(self.bulk) -> m => match m {
                Ok(ev) => Step::Event(ev),
                Err(_) => {
                    self.bulk = crossbeam_channel::never();
                    Step::Idle
                }
            },
            recv(self.publish) -> m => match m {
                Ok(p) => Step::Publish(p),
                Err(_) => {
                    self.publish = crossbeam_channel::never();
                    Step::Idle
                }
            },
            recv(other) -> m => m.map_or(Step::Stop, Step::Other),
            default(timeout) => Step::Idle,
        }
    }
}

/// D2D presence (spec §3.5): when to announce next, and until when in the burst.
///
/// A device announces in a burst when its session comes up, then steadily. It does not collect
/// other devices' presence: the Python device restarts its burst on every new peer so that its
/// own collector's peers learn it, but dcd never calls another device, and a client learns a
/// device from the steady beat or at once by a probe. Collecting made N devices receive each
/// other's N presence beats and answer every newcomer with a burst: O(N²) messages (issue 16).
struct Presence {
    next: Instant,
    burst_until: Instant,
}

/// Infra registration (spec §3.6).
#[derive(Debug, PartialEq)]
enum Registration {
    Pending { at: Instant, backoff: Duration },
    InFlight { id: String, backoff: Duration },
    Registered,
}

/// The protocol, free of any transport: what to publish when, what incoming
/// messages mean, and the registration state machine. A backend feeds it
/// messages and connection changes, and puts `due()` on the wire.
struct Core {
    device_id: String,
    tenant: String,
    describe: Describe,
    inbound: Sender<Inbound>,
    heartbeat_every: Duration,
    connected: bool,
    next_heartbeat: Instant,
    /// Some in D2D mode.
    presence: Option<Presence>,
    /// Some in infra mode once the first connection is up.
    registration: Option<Registration>,
    d2d: bool,
    queue: VecDeque<(String, Vec<u8>)>,
    dropped: u64,
    /// Log lines dropped from the queue, by container: told to the
    /// subscribers in a `stream: "dcd"` line each, as a follow tells its own.
    lost_lines: BTreeMap<String, u64>,
    /// `device-connect.<tenant>.<device_id>.event.`
    event_prefix: String,
    /// The broker or endpoints, for the log.
    address: String,
    pulse: Pulse,
    wedge_at: Option<Instant>,
}

impl Core {
    fn new(cfg: &MeshConfig, describe: Describe, inbound: Sender<Inbound>) -> Self {
        let now = Instant::now();
        Core {
            device_id: cfg.device_id.clone(),
            tenant: cfg.tenant.clone(),
            describe,
            inbound,
            heartbeat_every: (cfg.ttl / 3).max(Duration::from_secs(1)),
            connected: false,
            next_heartbeat: now,
            presence: None,
            registration: None,
            d2d: cfg.d2d,
            queue: VecDeque::new(),
            dropped: 0,
            lost_lines: BTreeMap::new(),
            event_prefix: format!("{SUBJECT_ROOT}.{}.{}.event.", cfg.tenant, cfg.device_id),
            address: if cfg.urls.is_empty() { "the LAN (scouting)".into() } else { cfg.urls.join(", ") },
            pulse: Pulse::default(),
            wedge_at: cfg.test_wedge_after.map(|d| now + d),
        }
    }

    /// `device-connect.<tenant>.<tail>`
    fn subject(&self, tail: &str) -> String {
        subject(&self.tenant, tail)
    }

    /// `device-connect.<tenant>.<device_id>.<tail>`
    fn own(&self, tail: &str) -> String {
        self.subject(&format!("{}.{tail}", self.device_id))
    }

    fn subscriptions(&self) -> Vec<(Sub, String)> {
        let mut subs = vec![(Sub::Cmd, self.own("cmd")), (Sub::Broadcast, self.subject("broadcast"))];
        if self.d2d {
            subs.push((Sub::Probe, self.subject("discovery.probe")));
        }
        subs
    }

    /// The session is up (first time or after a drop): heartbeats resume, a
    /// D2D device starts a presence burst, an infra device registers again.
    fn connected(&mut self, now: Instant) {
        if self.connected {
            return;
        }
        self.connected = true;
        self.pulse.connected.store(true, Ordering::Relaxed);
        if self.presence.is_some() || self.registration.is_some() {
            log::info!("mesh connection back (to {})", self.address);
        }
        self.next_heartbeat = now;
        if self.d2d {
            // Random phases, so a fleet that comes up together spreads its beats over the
            // interval instead of sending them at once. Only the first session bursts: after a
            // reconnect, clients that knew the device still do (they forget a device only after
            // 30 s of silence), and a new client probes; so a fleet that comes back after a hub
            // restart sends one beat each, spread over the steady interval, not a burst each.
            self.presence = Some(match self.presence {
                None => {
                    let first = now + jitter(BURST_INTERVAL);
                    Presence { next: first, burst_until: first + BURST_LENGTH }
                }
                Some(_) => Presence { next: now + jitter(STEADY_INTERVAL), burst_until: now },
            });
        } else {
            self.registration =
                Some(Registration::Pending { at: now + jitter(REGISTER_JITTER), backoff: REGISTER_BACKOFF_FIRST });
        }
    }

    fn disconnected(&mut self) {
        if self.connected {
            log::warn!(
                "mesh connection lost (to {}); events wait for it to come back (is the broker or peer up and reachable?)",
                self.address
            );
        }
        self.connected = false;
        self.pulse.connected.store(false, Ordering::Relaxed);
    }

    /// One incoming message. `reply` is how to answer a request, if anyone
    /// waits for the answer.
    fn on_message(&mut self, sub: Sub, payload: Vec<u8>, reply: Option<Responder>) -> Vec<Out> {
        let inbound = match sub {
            Sub::Cmd => Inbound::Request { payload, reply: reply.unwrap_or_else(Responder::discard) },
            Sub::Broadcast => Inbound::Broadcast { payload },
            Sub::Probe => return self.presence_now().into_iter().collect(),
        };
        match self.inbound.try_send(inbound) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                log::warn!("all workers busy and their queue full: dropped a {sub:?} message")
            }
            Err(TrySendError::Disconnected(_)) => {
                log::debug!("workers gone: dropped a {sub:?} message")
            }
        }
        Vec::new()
    }

    /// A probe wants presence at once; the regular schedule is unaffected.
    fn presence_now(&self) -> Option<Out> {
        (self.presence.is_some() && self.connected)
            .then(|| Out::Publish { subject: self.own("presence"), payload: self.presence_payload() })
    }

    fn presence_payload(&self) -> Vec<u8> {
        let mut msg = match (self.describe)() {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        msg.remove("device_ttl");
        msg.insert("ts".into(), json!(now_epoch()));
        msg.insert("d2d".into(), json!(true));
        Value::Object(msg).to_string().into_bytes()
    }

    /// The answer to a `registerDevice` request, or why there is none.
    fn on_registered(&mut self, id: &str, reply: Result<Vec<u8>, String>, now: Instant) {
        let backoff = match &self.registration {
            Some(Registration::InFlight { id: current, backoff }) if current == id => *backoff,
            _ => return, // an attempt from before a reconnect
        };
        match reply.and_then(|body| registration_id(&body)) {
            Ok(uuid) => {
                log::info!("registered with the registry: {uuid}");
                self.registration = Some(Registration::Registered);
            }
            Err(why) => {
                log::warn!("registration failed ({why}); retrying in {}s", backoff.as_secs());
                self.registration =
                    Some(Registration::Pending { at: now + backoff, backoff: (backoff * 2).min(REGISTER_BACKOFF_MAX) });
            }
        }
    }

    /// Queue a driver event (already a JSON-RPC notification) on its subject.
    fn push_event(&mut self, ev: Event) {
        let subject = format!("{}{}", self.event_prefix, ev.name);
        self.enqueue(subject, ev.payload);
    }

    fn push_publish(&mut self, p: Publish) {
        self.enqueue(self.own(&p.topic), p.payload);
    }

    fn enqueue(&mut self, subject: String, payload: Vec<u8>) {
        if self.queue.len() >= QUEUE_LIMIT {
            let state = |subject: &str| subject.strip_prefix(&self.event_prefix) == Some(STATE_CHANGED);
            let at = self.queue.iter().position(|(subject, _)| !state(subject)).unwrap_or(0);
            let (subject, payload) = self.queue.remove(at).expect("a full queue");
            if subject.strip_prefix(&self.event_prefix) == Some(LOG_LINE) {
                let body: Value = serde_json::from_slice(&payload).unwrap_or_default();
                if let Some(id) = body.pointer("/params/container_id").and_then(Value::as_str) {
                    *self.lost_lines.entry(id.to_string()).or_default() += 1;
                }
            }
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                log::warn!("mesh down and outgoing queue full: {} messages dropped so far", self.dropped);
            }
        }
        self.queue.push_back((subject, payload));
    }

    /// Events that went out on a connection which then died, unconfirmed: queued again ahead
    /// of newer ones, by the same rule as any (beyond the bound, log lines go first and are told).
    fn requeue(&mut self, events: impl Iterator<Item = (String, Vec<u8>)>) {
        let newer = std::mem::take(&mut self.queue);
        for (subject, payload) in events.chain(newer) {
            self.enqueue(subject, payload);
        }
    }

    /// Whether `subject` is one of this device's events (which must not be lost on a reconnect;
    /// heartbeats and presence are sent again anyway).
    fn is_event(&self, subject: &str) -> bool {
        subject.starts_with(&self.event_prefix)
    }

    /// Everything due at `now`: queued events, heartbeat, presence, a
    /// registration attempt. Nothing while the session is down.
    fn due(&mut self, now: Instant) -> Vec<Out> {
        if self.wedge_at.is_some_and(|at| now >= at) {
            log::warn!("transport wedged on purpose (DCD_TEST_WEDGE_TRANSPORT_S)");
            loop {
                std::thread::park();
            }
        }
        self.pulse.turn();
        if !self.connected {
            return Vec::new();
        }
        // What was lost comes before what was kept, which is newer.
        let mut out: Vec<Out> = std::mem::take(&mut self.lost_lines)
            .into_iter()
            .map(|(id, n)| {
                let line = format!("dcd: {n} log lines dropped (mesh down, outgoing queue full)");
                let ev = Event::new(LOG_LINE, json!({"container_id": id, "stream": "dcd", "line": line}));
                Out::Publish { subject: format!("{}{LOG_LINE}", self.event_prefix), payload: ev.payload }
            })
            .collect();
        out.extend(self.queue.drain(..).map(|(subject, payload)| Out::Publish { subject, payload }));
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.heartbeat_every;
            let body = json!({"device_id": self.device_id, "ts": now_epoch()});
            out.push(Out::Publish { subject: self.own("heartbeat"), payload: body.to_string().into_bytes() });
        }
        if let Some(p) = self.presence.as_mut() {
            if now >= p.next {
                p.next = now + if now < p.burst_until { BURST_INTERVAL } else { STEADY_INTERVAL };
                out.extend(self.presence_now());
            }
        }
        if let Some(Registration::Pending { at, backoff }) = self.registration {
            if now >= at {
                let id = format!("{}-{}", self.device_id, (now_epoch() * 1000.0) as u64);
                let body = json!({"jsonrpc": "2.0", "id": id, "method": "registerDevice", "params": (self.describe)()});
                out.push(Out::Register {
                    subject: self.subject("registry"),
                    payload: body.to_string().into_bytes(),
                    id: id.clone(),
                });
                self.registration = Some(Registration::InFlight { id, backoff });
            }
        }
        out
    }

    /// When `due` next has something to do (far away while disconnected).
    fn next_deadline(&self, now: Instant) -> Instant {
        // Even with nothing due, turn over now and then: the watchdog reads
        // a thread that has not for long as wedged.
        let mut next = now + PULSE_EVERY;
        if !self.connected {
            return next;
        }
        if !self.queue.is_empty() {
            return now;
        }
        next = next.min(self.next_heartbeat);
        if let Some(p) = &self.presence {
            next = next.min(p.next);
        }
        if let Some(Registration::Pending { at, .. }) = &self.registration {
            next = next.min(*at);
        }
        next
    }

    /// The farewell of a D2D device (spec §3.5).
    fn departure(&self) -> Option<Out> {
        (self.d2d && self.connected).then(|| {
            let body =
                json!({"device_id": self.device_id, "tenant": self.tenant, "departing": true, "ts": now_epoch()});
            Out::Publish { subject: self.own("presence"), payload: body.to_string().into_bytes() }
        })
    }
}

/// The `device_registration_id` of a successful `registerDevice` reply.
fn registration_id(body: &[u8]) -> Result<String, String> {
    let reply: Value = serde_json::from_slice(body).map_err(|e| format!("unreadable reply: {e}"))?;
    if let Some(err) = reply.get("error") {
        return Err(format!("registry error: {err}"));
    }
    match reply.pointer("/result/device_registration_id").and_then(Value::as_str) {
        Some(id) if is_uuid(id) => Ok(id.to_string()),
        _ => Err("reply without a valid device_registration_id".into()),
    }
}

/// 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A random duration in `[0, max)`.
fn jitter(max: Duration) -> Duration {
    let r = u32::from_str_radix(&random_hex(8), 16).unwrap_or(0);
    max.mul_f64(f64::from(r) / (f64::from(u32::MAX) + 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::now_rfc3339;

    /// A NATS device's settings; backends' tests change what they need.
    pub(super) fn cfg(d2d: bool) -> MeshConfig {
        MeshConfig {
            backend: Backend::Nats,
            device_id: "dev-1".into(),
            tenant: "t".into(),
            urls: vec!["nats://127.0.0.1:4222".into()],
            d2d,
            zenoh_listen: Vec::new(),
            zenoh_multicast: false,
            zenoh_gossip_multihop: false,
            nats_jwt: None,
            nats_seed: None,
            tls: Tls::default(),
            tls_skip_hostname: true,
            ttl: Duration::from_secs(15),
            test_wedge_after: None,
        }
    }

    fn core(d2d: bool) -> (Core, Receiver<Inbound>) {
        let describe: Describe = std::sync::Arc::new(
            || json!({"device_id": "dev-1", "device_ttl": 15, "capabilities": {}, "identity": {}, "status": {"ts": now_rfc3339()}}),
        );
        let (tx, rx) = crossbeam_channel::bounded(4);
        (Core::new(&cfg(d2d), describe, tx), rx)
    }

    fn subjects(out: &[Out]) -> Vec<&str> {
        out.iter()
            .map(|o| match o {
                Out::Publish { subject, .. } | Out::Register { subject, .. } => subject.as_str(),
            })
            .collect()
    }

    fn body(out: &Out) -> Value {
        match out {
            Out::Publish { payload, .. } | Out::Register { payload, .. } => serde_json::from_slice(payload).unwrap(),
        }
    }

    /// Step through `secs` seconds in 10 ms ticks; the times (from `t0`) of
    /// each presence publish.
    fn presence_times(core: &mut Core, t0: Instant, from: f64, secs: f64) -> Vec<f64> {
        let (start, end) = ((from * 100.0).round() as u64, ((from + secs) * 100.0).round() as u64);
        let mut times = Vec::new();
        for tick in start..end {
            let out = core.due(t0 + Duration::from_millis(tick * 10));
            let n = subjects(&out).iter().filter(|s| **s == "device-connect.t.dev-1.presence").count();
            times.extend(std::iter::repeat_n(tick as f64 / 100.0, n));
        }
        times
    }

    #[test]
    fn zenoh_keys() {
        assert_eq!(zenoh_key("device-connect.t.dev.cmd"), "device-connect/t/dev/cmd");
        assert_eq!(zenoh_key("device-connect.t.*.presence"), "device-connect/t/*/presence");
        assert_eq!(zenoh_key("device-connect.t.*.event.>"), "device-connect/t/*/event/**");
        assert_eq!(zenoh_key("a.>.b"), "a/**/b");
        assert_eq!(zenoh_key("already/a/key"), "already/a/key");
    }

    #[test]
    fn subscriptions_per_mode() {
        let (d2d, _) = core(true);
        assert_eq!(
            d2d.subscriptions(),
            vec![
                (Sub::Cmd, "device-connect.t.dev-1.cmd".to_string()),
                (Sub::Broadcast, "device-connect.t.broadcast".to_string()),
                (Sub::Probe, "device-connect.t.discovery.probe".to_string()),
            ]
        );
        let (infra, _) = core(false);
        assert_eq!(infra.subscriptions().len(), 2);
    }

    #[test]
    fn presence_bursts_then_settles() {
        let (mut c, _) = core(true);
        let t0 = Instant::now();
        assert!(c.due(t0).is_empty(), "nothing goes out before the session is up");
        c.connected(t0);
        let times = presence_times(&mut c, t0, 0.0, 30.0);
        let first = times[0];
        assert!(first <= 0.5, "the burst starts within one interval (seen on a 10 ms tick): {times:?}");
        // Half a 10 ms tick short of 10 s: the beat due at first + 10 s may round either side.
        let end = first + 10.0 - 0.005;
        let burst: Vec<_> = times.iter().filter(|t| **t < end).collect();
        assert_eq!(burst.len(), 20, "{times:?}");
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            let want = if w[0] < end { 0.5 } else { 5.0 };
            assert!((gap - want).abs() < 0.02, "gap {gap} after {} in {times:?}", w[0]);
        }
        assert!((3..=4).contains(&times.iter().filter(|t| **t >= end).count()), "{times:?}");
    }

    #[test]
    fn bursts_are_spread_over_the_interval() {
        let firsts: Vec<f64> = (0..50)
            .map(|_| {
                let (mut c, _) = core(true);
                let t0 = Instant::now();
                c.connected(t0);
                presence_times(&mut c, t0, 0.0, 0.6)[0]
            })
            .collect();
        assert!(firsts.iter().any(|t| *t >= 0.25), "all in the first half: {firsts:?}");
        assert!(firsts.iter().any(|t| *t < 0.25), "all in the second half: {firsts:?}");
    }

    #[test]
    fn a_reconnect_beats_once_without_a_burst() {
        let (mut c, _) = core(true);
        let t0 = Instant::now();
        c.connected(t0);
        presence_times(&mut c, t0, 0.0, 20.0);
        c.disconnected();
        presence_times(&mut c, t0, 20.0, 10.0);
        c.connected(t0 + Duration::from_secs(30));
        let times = presence_times(&mut c, t0, 30.0, 15.0);
        assert_eq!(times.len(), 3, "steady beats only: {times:?}");
        assert!(times[0] < 35.0, "the first within the steady interval: {times:?}");
    }

    #[test]
    fn presence_payload_and_heartbeat() {
        let (mut c, _) = core(true);
        let t0 = Instant::now();
        c.connected(t0);
        let out = c.due(t0);
        assert_eq!(subjects(&out), ["device-connect.t.dev-1.heartbeat"]);
        let hb = body(&out[0]);
        assert_eq!(hb["device_id"], "dev-1");
        assert!(hb["ts"].is_f64());
        let out = c.due(t0 + BURST_INTERVAL);
        assert_eq!(subjects(&out), ["device-connect.t.dev-1.presence"]);
        let p = body(&out[0]);
        assert_eq!(p["d2d"], true);
        assert!(p["ts"].is_f64());
        assert!(p.get("device_ttl").is_none());
        assert!(p["status"]["ts"].is_string());
        // Heartbeats every ttl/3.
        let beats = (1..=1500)
            .flat_map(|i| c.due(t0 + Duration::from_millis(10 * i)))
            .filter(|o| subjects(std::slice::from_ref(o))[0].ends_with(".heartbeat"))
            .count();
        assert_eq!(beats, 3);
    }

    #[test]
    fn probe_gets_presence_at_once() {
        let (mut c, _) = core(true);
        let t0 = Instant::now();
        c.connected(t0);
        let before = presence_times(&mut c, t0, 0.0, 12.0);
        let out = c.on_message(Sub::Probe, b"{\"probe\":true}".to_vec(), None);
        assert_eq!(subjects(&out), ["device-connect.t.dev-1.presence"]);
        let next = presence_times(&mut c, t0, 12.0, 5.0);
        let want = before.last().unwrap() + 5.0;
        assert!(next.len() == 1 && (next[0] - want).abs() < 0.02, "the schedule goes on as before: {next:?}");
    }

    #[test]
    fn events_wait_for_the_session() {
        let (mut c, _) = core(true);
        c.push_event(Event::new("container_state_changed", json!({"container_id": "abc"})));
        c.push_publish(Publish { topic: "event.async_reply.br-1".into(), payload: b"{}".to_vec() });
        let t0 = Instant::now();
        assert!(c.due(t0).is_empty());
        c.connected(t0);
        assert_eq!(c.next_deadline(t0), t0);
        let out = c.due(t0);
        assert_eq!(
            &subjects(&out)[..2],
            ["device-connect.t.dev-1.event.container_state_changed", "device-connect.t.dev-1.event.async_reply.br-1"]
        );
        assert_eq!(body(&out[0])["params"]["container_id"], "abc");
    }

    #[test]
    fn queue_drops_the_oldest() {
        let (mut c, _) = core(true);
        for i in 0..QUEUE_LIMIT + 5 {
            c.push_publish(Publish { topic: format!("n{i}"), payload: Vec::new() });
        }
        assert_eq!(c.queue.len(), QUEUE_LIMIT);
        assert_eq!(c.dropped, 5);
        assert_eq!(c.queue.front().unwrap().0, "device-connect.t.dev-1.n5");
    }

    #[test]
    fn requeued_events_go_ahead_of_newer_ones() {
        let (mut c, _) = core(true);
        c.push_publish(Publish { topic: "newer".into(), payload: Vec::new() });
        c.requeue([("a".to_string(), Vec::new()), ("b".to_string(), Vec::new())].into_iter());
        let order: Vec<&str> = c.queue.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(order, ["a", "b", "device-connect.t.dev-1.newer"]);
        assert!(c.is_event("device-connect.t.dev-1.event.container_state_changed"));
        assert!(!c.is_event("device-connect.t.dev-1.heartbeat"));
    }

    #[test]
    fn overflow_drops_log_lines_first_and_says_so() {
        let (mut c, _) = core(true);
        let line = |id: &str, n: usize| Event::new(LOG_LINE, json!({"container_id": id, "line": format!("l{n}")}));
        c.push_event(Event::new(STATE_CHANGED, json!({"container_id": "a"})));
        for n in 0..QUEUE_LIMIT - 1 {
            c.push_event(line(if n < 3 { "a" } else { "b" }, n));
        }
        for n in 0..5 {
            c.push_event(line("b", QUEUE_LIMIT + n));
        }
        assert_eq!((c.queue.len(), c.dropped), (QUEUE_LIMIT, 5));
        let t0 = Instant::now();
        c.connected(t0);
        let out = c.due(t0);
        let lines: Vec<Value> = out.iter().map(body).take(3).collect();
        assert_eq!(lines[0]["params"]["container_id"], "a");
        assert_eq!(lines[0]["params"]["line"], "dcd: 3 log lines dropped (mesh down, outgoing queue full)");
        assert_eq!((&lines[1]["params"]["container_id"], &lines[1]["params"]["stream"]), (&json!("b"), &json!("dcd")));
        assert!(lines[1]["params"]["line"].as_str().unwrap().starts_with("dcd: 2 log lines"));
        assert_eq!(lines[2]["method"], STATE_CHANGED, "the state change is kept, and first");
        assert!(c.due(t0).iter().all(|o| !subjects(std::slice::from_ref(o))[0].ends_with(LOG_LINE)), "told once");
    }

    #[test]
    fn requests_reach_the_workers() {
        let (mut c, rx) = core(true);
        c.on_message(Sub::Cmd, b"{}".to_vec(), None);
        c.on_message(Sub::Broadcast, b"[]".to_vec(), None);
        assert!(matches!(rx.try_recv(), Ok(Inbound::Request { payload, .. }) if payload == b"{}"));
        assert!(matches!(rx.try_recv(), Ok(Inbound::Broadcast { payload }) if payload == b"[]"));
    }

    #[test]
    fn infra_registers_with_backoff() {
        let (mut c, _) = core(false);
        let t0 = Instant::now();
        c.connected(t0);
        let out = c.due(t0 + REGISTER_JITTER);
        let reg = out.iter().find(|o| matches!(o, Out::Register { .. })).expect("registers within the jitter");
        let Out::Register { subject, id, .. } = reg else { unreachable!() };
        assert_eq!(subject, "device-connect.t.registry");
        let req = body(reg);
        assert_eq!(req["method"], "registerDevice");
        assert_eq!(req["id"], id.as_str());
        assert_eq!(req["params"]["device_ttl"], 15);
        assert!(
            !out.iter().any(|o| subjects(std::slice::from_ref(o))[0].ends_with(".presence")),
            "no presence in infra"
        );

        // Failures back off 1, 2, 4 … s; a stale reply changes nothing.
        let mut now = t0 + REGISTER_JITTER;
        let mut id = id.clone();
        for want in [1, 2, 4, 8, 16, 30, 30] {
            c.on_registered("stale", Err("x".into()), now);
            c.on_registered(&id, Err("no responders".into()), now);
            assert!(!c
                .due(now + Duration::from_secs(want) - Duration::from_millis(10))
                .iter()
                .any(|o| matches!(o, Out::Register { .. })));
            now += Duration::from_secs(want);
            let out = c.due(now);
            let Some(Out::Register { id: next, .. }) = out.into_iter().find(|o| matches!(o, Out::Register { .. }))
            else {
                panic!("no retry after {want}s");
            };
            id = next;
        }
        let bad =
            json!({"jsonrpc": "2.0", "id": id, "result": {"status": "registered", "device_registration_id": "nope"}});
        c.on_registered(&id, Ok(bad.to_string().into_bytes()), now);
        assert!(matches!(c.registration, Some(Registration::Pending { .. })));
        now += REGISTER_BACKOFF_MAX;
        let Some(Out::Register { id, .. }) = c.due(now).into_iter().find(|o| matches!(o, Out::Register { .. })) else {
            panic!("no retry")
        };
        let ok = json!({"jsonrpc": "2.0", "id": id, "result": {"status": "registered", "device_registration_id": "a563a0c3-4596-41fa-a321-66d27afc9b49"}});
        c.on_registered(&id, Ok(ok.to_string().into_bytes()), now);
        assert_eq!(c.registration, Some(Registration::Registered));

        // A reconnect registers again, with a fresh backoff.
        c.disconnected();
        assert!(c.departure().is_none());
        c.connected(now);
        assert!(
            matches!(c.registration, Some(Registration::Pending { backoff, .. }) if backoff == REGISTER_BACKOFF_FIRST)
        );
    }

    #[test]
    fn registry_errors_are_failures() {
        assert!(registration_id(br#"{"error":{"code":-32602,"message":"bad"}}"#).is_err());
        assert!(registration_id(b"not json").is_err());
        assert!(registration_id(br#"{"result":{"status":"registered"}}"#).is_err());
        assert!(is_uuid("A563A0C3-4596-41fa-a321-66d27afc9b49"));
        assert!(!is_uuid("a563a0c3-4596-41fa-a321-66d27afc9b4"));
        assert!(!is_uuid("a563a0c3x4596-41fa-a321-66d27afc9b49"));
    }

    #[test]
    fn departure_only_in_d2d() {
        let (mut c, _) = core(true);
        c.connected(Instant::now());
        let out = c.departure().unwrap();
        assert_eq!(subjects(std::slice::from_ref(&out)), ["device-connect.t.dev-1.presence"]);
        let b = body(&out);
        assert_eq!(
            (b["device_id"].as_str(), b["tenant"].as_str(), b["departing"].as_bool()),
            (Some("dev-1"), Some("t"), Some(true))
        );
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter(REGISTER_JITTER) < REGISTER_JITTER);
        }
    }
}
