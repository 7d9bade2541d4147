//! The `docker_host` driver: the 17 RPCs of the Python dcd (spec §7), each one
//! a row in `FUNCTIONS` that holds its name, its advertised description and
//! parameter schema, and its handler, so what is advertised cannot drift from
//! what is served.

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::compose::{Compose, ComposeSpec};
use crate::engine::stream::Demux;
use crate::engine::{Engine, EngineError, LogOptions};
use crate::logs::Follows;
use crate::policy::{ExecRule, Kind, Policy};
use crate::rpc::random_hex;
use crate::spec::ContainerSpec;
use crate::state::StateHandle;

pub const MANAGED_LABEL: &str = "deviceconnect.dev/managed";
pub const DRIVER_LABEL: &str = "deviceconnect.dev/driver";

/// How long a cached `EngineInfo` (`get_status`), or whether the engine
/// answers at all (presence), is reused before the engine is asked again.
const INFO_TTL: Duration = Duration::from_secs(5);
/// Non-follow `container_logs` returns at most this much text (the newest part),
/// so a reply stays under the NATS server's default 1 MiB `max_payload`.
const LOGS_MAX_BYTES: usize = 768 * 1024;

/// Why a call failed. `rpc` turns each into a JSON-RPC error in one place.
#[derive(Debug)]
pub enum Error {
    /// No such function (JSON-RPC -32601).
    UnknownMethod,
    /// Unknown, missing or mistyped parameter.
    Params(String),
    /// The engine refused or could not be reached.
    Engine(EngineError),
    /// The compose CLI failed or is missing.
    Compose(String),
    /// The operator's policy refuses the call.
    Policy(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownMethod => f.write_str("unknown method"),
            Error::Params(m) => write!(f, "invalid params: {m}"),
            Error::Engine(e) => e.fmt(f),
            Error::Compose(m) => write!(f, "compose: {m}"),
            Error::Policy(m) => write!(f, "policy: {m}"),
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        Error::Engine(e)
    }
}

type Result<T> = std::result::Result<T, Error>;

/// An event for the mesh: its name (the last token of its subject) and the
/// whole JSON-RPC notification (spec §4.1). The emitting thread builds it, so
/// the transport thread only puts bytes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub payload: Vec<u8>,
}

impl Event {
    pub fn new(name: &'static str, params: Value) -> Event {
        let mut params = match params {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        params.insert("event_id".into(), json!(random_hex(8)));
        params.insert("ts".into(), json!(crate::time::now_rfc3339()));
        params.insert("_trace_id".into(), json!(random_hex(16)));
        let body = json!({"jsonrpc": "2.0", "method": name, "params": params});
        Event { name, payload: body.to_string().into_bytes() }
    }
}

/// How long a log follow waits for room in its queue before it drops lines.
/// The engine keeps the log, so waiting loses nothing; only a transport stuck
/// this long makes a follow drop (and say so).
const LOG_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting follow checks whether it was stopped.
const LOG_WAIT_SLICE: Duration = Duration::from_millis(20);

/// The sending side of the two bounded event queues to the transport: one
/// for state changes, one for the bulk (log lines, forwarded engine events),
/// so a chatty container can crowd out only bulk, never a
/// `container_state_changed`.
#[derive(Clone)]
pub struct Events {
    state: Sender<Event>,
    bulk: Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    pub fn new(state: Sender<Event>, bulk: Sender<Event>) -> Self {
        Events { state, bulk, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queue an event without waiting; false when its queue is full and it
    /// was dropped. The state thread must never wait on the transport.
    pub fn emit(&self, name: &'static str, params: Value) -> bool {
        let queue = if name == STATE_CHANGED { &self.state } else { &self.bulk };
        match queue.try_send(Event::new(name, params)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.count_drop();
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Queue a log line, waiting up to `LOG_WAIT` for room unless `stopped`
    /// is set; false when it was dropped.
    pub fn emit_line(&self, params: Value, stopped: &AtomicBool) -> bool {
        let mut ev = Event::new(LOG_LINE, params);
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            match self.bulk.send_timeout(ev, LOG_WAIT_SLICE) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => {
                    if stopped.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        self.count_drop();
                        return false;
                    }
                    ev = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    fn count_drop(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::warn!("event queue full: {n} events dropped so far");
        }
    }
}

/// An answer of the engine, reused for `INFO_TTL`. The lock is not held
/// while the engine is asked, so a hung engine stalls only the caller asking.
struct Cached<T>(Mutex<Option<(Instant, T)>>);

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached(Mutex::new(None))
    }
}

impl<T: Clone> Cached<T> {
    fn get(&self, refresh: bool, ask: impl FnOnce() -> T) -> T {
        if let Some((at, v)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if !refresh && at.elapsed() < INFO_TTL {
                return v.clone();
            }
        }
        let v = ask();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), v.clone()));
        v
    }
}

pub struct Driver {
    pub(crate) engine: Arc<dyn Engine>,
    simulate: bool,
    state_poll_hz: f64,
    state: StateHandle,
    follows: Follows,
    compose: Compose,
    pub(crate) policy: Policy,
    info: Cached<std::result::Result<Value, EngineError>>,
    alive: Cached<std::result::Result<(), String>>,
}

impl Driver {
    pub fn new(
        engine: Arc<dyn Engine>,
        simulate: bool,
        state_poll_hz: f64,
        state: StateHandle,
        events: Events,
        policy: Policy,
    ) -> Self {
        Driver {
            policy,
            follows: Follows::new(engine.clone(), events),
            compose: Compose::new(simulate),
            engine,
            simulate,
            state_poll_hz,
            state,
            info: Cached::default(),
            alive: Cached::default(),
        }
    }

    /// Run `method` with keyword `params` (`_dc_meta` and `source_device`
    /// already removed).
    pub fn call(&self, method: &str, params: Map<String, Value>) -> Result<Value> {
        let f = functions().find(|f| f.name == method).ok_or(Error::UnknownMethod)?;
        if !self.policy.serves(f.kind, self.simulate) {
            let how = match f.kind {
                _ if self.policy.read_only => "read_only is set",
                Kind::Exec => "allow with \"exec\": \"allow\"",
                _ => "allow with \"compose\": true",
            };
            return Err(Error::Policy(format!("{method} is disabled on this host ({how})")));
        }
        (f.call)(self, params)
    }

    /// `capabilities` of presence and registration (spec §3.2).
    pub fn capabilities(&self) -> Value {
        let functions: Vec<Value> = functions()
            .filter(|f| self.policy.serves(f.kind, self.simulate))
            .map(|f| {
                json!({"name": f.name, "description": f.description,
                       "parameters": (f.schema)(), "labels": null, "tags": []})
            })
            .collect();
        json!({
            "description": DESCRIPTION,
            "functions": functions,
            "events": events_advertised(self.state.forwards_engine_events()),
            "labels": null,
        })
    }

    /// `identity` of presence and registration (spec §7.1).
    pub fn identity(&self, device_id: &str) -> Value {
        let model =
            if self.simulate { format!("simulated ({device_id})") } else { format!("Docker Engine ({device_id})") };
        json!({"device_type": "docker_host", "manufacturer": "Docker", "model": model,
               "description": "Docker host \u{2014} provision and control containers via Device Connect"})
    }

    /// `status` of presence and registration: "idle" while the engine answers,
    /// "offline" with `error_state` when it does not. Asked every few seconds
    /// for as long as the daemon runs, so it only pings the engine.
    pub fn status(&self) -> Value {
        let alive = self.alive.get(false, || self.engine.ping().map_err(|e| e.to_string()));
        let mut s = json!({"ts": crate::time::now_rfc3339(), "availability": "idle",
                           "busy_score": 0.0, "online": true});
        if let Err(e) = alive {
            s["availability"] = json!("offline");
            s["error_state"] = json!(e);
        }
        s
    }

    /// Stop every log follow (shutdown).
    pub fn shutdown(&self) {
        self.follows.stop_all();
    }

    /// `EngineInfo` plus `connected` (and `error` when not), from the cache
    /// unless stale.
    fn engine_info(&self) -> Value {
        match self.cached_info(false) {
            Ok(v) => v,
            Err(e) => json!({"connected": false, "error": e.to_string()}),
        }
    }

    fn cached_info(&self, refresh: bool) -> std::result::Result<Value, EngineError> {
        self.info.get(refresh, || {
            self.engine.info().map(|mut v| {
                v["connected"] = json!(true);
                if self.simulate {
                    v["simulated"] = json!(true);
                }
                v
            })
        })
    }

    /// Refuse to touch a container the policy keeps us away from: with
    /// `owned_only`, any container without our managed label; for exec with
    /// `exec: managed`, likewise.
    pub(crate) fn guard(&self, id: &str, kind: Kind) -> Result<()> {
        let managed_only = self.policy.owned_only || (kind == Kind::Exec && self.policy.exec == ExecRule::Managed);
        if managed_only && self.engine.inspect_container(id)?["Config"]["Labels"][MANAGED_LABEL] != "true" {
            return Err(Error::Policy(format!("container {id} is not managed by dcd (owned_only)")));
        }
        Ok(())
    }

    /// Tell the state thread what we just did to a container.
    pub(crate) fn state_observed(&self, summary: &Value) {
        self.state.observed(summary);
    }

    pub(crate) fn summary_of(&self, id: &str) -> Result<Value> {
        Ok(summary(&self.engine.inspect_container(id)?))
    }

    fn summaries(&self, all: bool, keep: impl Fn(&Value) -> bool) -> Result<Value> {
        let mut containers = Vec::new();
        for c in self.engine.list_containers(all)? {
            let Some(id) = c["Id"].as_str() else { continue };
            match self.engine.inspect_container(id) {
                Ok(i) => {
                    let s = summary(&i);
                    if keep(&s) {
                        containers.push(s);
                    }
                }
                // Removed between list and inspect: it is simply gone.
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(json!({"status": "success", "count": containers.len(), "containers": containers}))
    }
}

/// Parse keyword params into a handler's argument struct. Unknown, missing and
/// mistyped params all fail here, with serde's message naming the field.
pub(crate) fn args<T: DeserializeOwned>(params: Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(params)).map_err(|e| Error::Params(e.to_string()))
}

/// `ContainerSummary` (spec §7.2) from inspect data.
pub fn summary(i: &Value) -> Value {
    let id = i["Id"].as_str().unwrap_or_default();
    let labels = match &i["Config"]["Labels"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let ports = match &i["NetworkSettings"]["Ports"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let state = i["State"]["Status"].clone();
    let endpoints = endpoints(&ports, &i["NetworkSettings"]["Networks"]);
    json!({
        "endpoints": endpoints,
        "id": id.get(..12).unwrap_or(id),
        "name": i["Name"].as_str().unwrap_or_default().trim_start_matches('/'),
        "image": i["Config"]["Image"],
        "status": state,
        "state": state,
        "managed_by_dcd": labels[MANAGED_LABEL] == "true",
        "labels": labels,
        "ports": ports,
        "created": i["Created"],
    })
}

/// Extension: for each exposed port, the addresses it is reached at from
/// the container's networks and from the host.
fn endpoints(ports: &Value, networks: &Value) -> Value {
    let ips: Vec<&str> = networks
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|n| n["IPAddress"].as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    let list: Vec<Value> = ports
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, bindings)| {
            let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
            let scheme = if proto == "udp" { "udp" } else { "tcp" };
            let host: Vec<String> = bindings
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| {
                    let hp = b["HostPort"].as_str().filter(|p| !p.is_empty())?;
                    let ip = b["HostIp"].as_str().filter(|ip| !ip.is_empty() && *ip != "0.0.0.0" && *ip != "::").unwrap_or("localhost");
                    Some(format!("{scheme}://{ip}:{hp}"))
                })
                .collect();
            json!({"port": key, "network_urls": ips.iter().map(|ip| format!("{scheme}://{ip}:{port}")).collect::<Vec<_>>(),
                   "host_urls": host})
        })
        .collect();
    Value::Array(list)
}

const DESCRIPTION: &str = "Device Connect driver for provisioning and controlling Docker containers. \
Exposes container CRUD, logs, exec, image pull, and compose up/down over the Device Connect mesh \
(D2D LAN or Portal-backed NATS). Interactive attach/TTY sessions are out of scope; use \
``exec_in_container`` for one-shot commands or follow logs via ``container_logs`` + events.";

pub const STATE_CHANGED: &str = "container_state_changed";
pub const LOG_LINE: &str = "container_log_line";
/// Extension, opt-in: the engine's container events as they come.
pub const ENGINE_EVENT: &str = "engine_event";

fn events_advertised(engine_events: bool) -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    let mut events = json!([
        {"name": STATE_CHANGED, "description": "Emitted when a container transitions state.",
         "payload_schema": {"type": "object", "properties": {
             "container_id": string("12-character container id."),
             "name": string("Container name."),
             "previous_state": {"type": ["string", "null"],
                                "description": "State before the transition; null for a new container."},
             "state": string("New state; \"removed\" when the container is gone."),
             "image": string("Image the container was created from.")},
           "required": ["container_id", "name", "previous_state", "state", "image"]},
         "labels": null, "tags": []},
        {"name": LOG_LINE,
         "description": "Emitted for each log line when ``container_logs`` is called with ``follow=true``.",
         "payload_schema": {"type": "object", "properties": {
             "container_id": string("Container id or name as passed to container_logs."),
             "line": string("One log line without its newline."),
             "stream": {"type": "string", "default": "stdout",
                        "description": "\"stdout\" or \"stderr\"; \"dcd\" for a notice that lines were dropped."},
             "ts_engine": string("The engine's RFC3339Nano time of the line, when the follow asked for timestamps.")},
           "required": ["container_id", "line"]},
         "labels": null, "tags": []}
    ]);
    if engine_events {
        events.as_array_mut().expect("a list").push(json!(
            {"name": ENGINE_EVENT,
             "description": "The Docker Engine's container events as they come (create, start, die, exec_start, ...).",
             "payload_schema": {"type": "object", "properties": {
                 "type": string("Engine object type: \"container\"."),
                 "action": string("Engine action, e.g. \"start\", \"die\", \"health_status: healthy\"."),
                 "id": string("Full container id."),
                 "name": string("Container name."),
                 "attributes": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "The engine's attributes: labels, image, name, exitCode, ..."},
                 "time_nano": {"type": "integer", "description": "The engine's event time, Unix nanoseconds."}},
               "required": ["type", "action", "id", "name", "attributes"]},
             "labels": null, "tags": []}));
    }
    events
}

pub(crate) struct Function {
    pub name: &'static str,
    pub kind: Kind,
    pub description: &'static str,
    pub schema: fn() -> Value,
    pub call: fn(&Driver, Map<String, Value>) -> Result<Value>,
}

pub(crate) fn no_params() -> Value {
    json!({"type": "object", "properties": {}, "required": []})
}

fn container_id_schema() -> Value {
    json!({"type": "string", "description": "Container ID or name."})
}

fn id_and_timeout_schema() -> Value {
    json!({"type": "object", "properties": {
        "container_id": container_id_schema(),
        "timeout_s": {"type": "integer", "default": 10, "description": "Seconds to wait before killing."}},
      "required": ["container_id"]})
}

pub(crate) fn id_only_schema() -> Value {
    json!({"type": "object", "properties": {"container_id": container_id_schema()},
           "required": ["container_id"]})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdArgs {
    pub container_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdTimeoutArgs {
    container_id: String,
    #[serde(default = "ten")]
    timeout_s: i64,
}

fn ten() -> i64 {
    10
}

/// The Python dcd's functions, then ours.
fn functions() -> impl Iterator<Item = &'static Function> {
    FUNCTIONS.iter().chain(crate::fleet::FUNCTIONS)
}

const FUNCTIONS: &[Function] = &[
    Function {
        name: "get_status",
        kind: Kind::Read,
        description: "Return driver and Docker Engine connectivity status.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            let docker = d.engine_info();
            Ok(json!({
                "status": "success",
                "connected": docker["connected"],
                "device_type": "docker_host",
                "simulate": d.simulate,
                "docker_host": d.engine.host(),
                "state_poll_hz": d.state_poll_hz,
                "log_follow_active": d.follows.active(),
                "docker": docker,
            }))
        },
    },
    Function {
        name: "ping_docker",
        kind: Kind::Read,
        description: "Ping the Docker Engine and refresh cached engine metadata.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            let mut info = d.cached_info(true)?;
            info["status"] = json!("success");
            Ok(info)
        },
    },
    Function {
        name: "list_containers",
        kind: Kind::Read,
        description: "List containers on this Docker host.",
        schema: || {
            json!({"type": "object", "properties": {
                "all_containers": {"type": "boolean", "default": false,
                                   "description": "Include stopped containers when true."},
                "label": {"type": ["string", "null"], "default": null,
                          "description": "Only containers with this label, \"key\" or \"key=value\"."},
                "state": {"type": ["string", "null"], "default": null,
                          "description": "Only containers in this state (running, exited, ...)."}},
              "required": []})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                #[serde(default)]
                all_containers: bool,
                #[serde(default)]
                label: Option<String>,
                #[serde(default)]
                state: Option<String>,
            }
            let a: A = args(p)?;
            // A state filter other than running implies looking at all containers.
            let all = a.all_containers || a.state.as_deref().is_some_and(|s| s != "running");
            let label = a.label.as_deref().map(|l| l.split_once('=').map_or((l, None), |(k, v)| (k, Some(v))));
            d.summaries(all, |c| {
                let state_ok = a.state.as_deref().is_none_or(|s| c["state"] == s);
                let label_ok = label.is_none_or(|(k, v)| match v {
                    Some(v) => c["labels"][k] == v,
                    None => c["labels"].get(k).is_some(),
                });
                state_ok && label_ok
            })
        },
    },
    Function {
        name: "get_container",
        kind: Kind::Read,
        description: "Inspect a single container by ID or name.",
        schema: id_only_schema,
        call: |d, p| {
            let a: IdArgs = args(p)?;
            Ok(json!({"status": "success", "container": d.summary_of(&a.container_id)?}))
        },
    },
    Function {
        name: "provision_container",
        kind: Kind::Mutate,
        description: "Create (provision) a container from a JSON specification.",
        schema: || json!({"type": "object", "properties": {"spec": crate::spec::schema()}, "required": ["spec"]}),
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                spec: ContainerSpec,
            }
            let a: A = args(p)?;
            let body = a.spec.create_body()?;
            d.policy.check_create(&body).map_err(Error::Policy)?;
            if let (true, Some(name)) = (a.spec.replace, &a.spec.name) {
                match d.guard(name, Kind::Mutate) {
                    Ok(()) | Err(Error::Engine(EngineError::NotFound(_))) => {}
                    Err(e) => return Err(e),
                }
                match d.engine.remove_container(name, true) {
                    Ok(()) | Err(EngineError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let id = d.engine.create_container(a.spec.name.as_deref(), &body)?;
            d.state_observed(&summary(&d.engine.inspect_container(&id)?));
            d.engine.start_container(&id)?;
            let container = d.summary_of(&id)?;
            d.state_observed(&container);
            Ok(json!({"status": "success", "container": container}))
        },
    },
    Function {
        name: "start_container",
        kind: Kind::Mutate,
        description: "Start a stopped container.",
        schema: id_only_schema,
        call: |d, p| {
            let a: IdArgs = args(p)?;
            d.guard(&a.container_id, Kind::Mutate)?;
            d.engine.start_container(&a.container_id)?;
            Ok(json!({"status": "success", "container": d.summary_of(&a.container_id)?}))
        },
    },
    Function {
        name: "stop_container",
        kind: Kind::Mutate,
        description: "Stop a running container.",
        schema: id_and_timeout_schema,
        call: |d, p| {
            let a: IdTimeoutArgs = args(p)?;
            d.guard(&a.container_id, Kind::Mutate)?;
            d.engine.stop_container(&a.container_id, a.timeout_s)?;
            Ok(json!({"status": "success", "container": d.summary_of(&a.container_id)?}))
        },
    },
    Function {
        name: "restart_container",
        kind: Kind::Mutate,
        description: "Restart a container.",
        schema: id_and_timeout_schema,
        call: |d, p| {
            let a: IdTimeoutArgs = args(p)?;
            d.guard(&a.container_id, Kind::Mutate)?;
            d.engine.restart_container(&a.container_id, a.timeout_s)?;
            Ok(json!({"status": "success", "container": d.summary_of(&a.container_id)?}))
        },
    },
    Function {
        name: "remove_container",
        kind: Kind::Mutate,
        description: "Remove a container.",
        schema: || {
            json!({"type": "object", "properties": {
                "container_id": container_id_schema(),
                "force": {"type": "boolean", "default": false,
                          "description": "Kill a running container before removing it."}},
              "required": ["container_id"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                container_id: String,
                #[serde(default)]
                force: bool,
            }
            let a: A = args(p)?;
            d.guard(&a.container_id, Kind::Mutate)?;
            d.engine.remove_container(&a.container_id, a.force)?;
            Ok(json!({"status": "success", "container_id": a.container_id, "force": a.force}))
        },
    },
    Function {
        name: "container_logs",
        kind: Kind::Read,
        description: "Fetch container logs, or start streaming via ``container_log_line`` events.",
        schema: || {
            json!({"type": "object", "properties": {
                "container_id": container_id_schema(),
                "tail": {"type": "integer", "default": 100,
                         "description": "Number of lines to return or seed a follow stream."},
                "since": {"type": ["string", "null"], "default": null,
                          "description": "Optional RFC3339 timestamp for log start."},
                "follow": {"type": "boolean", "default": false,
                           "description": "When true, emit ``container_log_line`` events until ``stop_container_logs`` is called."},
                "timestamps": {"type": ["boolean", "null"], "default": null,
                               "description": "Engine timestamps: a prefix on each returned line (default true, as before), or ``ts_engine`` on each follow event (default false)."}},
              "required": ["container_id"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                container_id: String,
                #[serde(default = "hundred")]
                tail: i64,
                #[serde(default)]
                since: Option<String>,
                #[serde(default)]
                follow: bool,
                #[serde(default)]
                timestamps: Option<bool>,
            }
            fn hundred() -> i64 {
                100
            }
            let a: A = args(p)?;
            d.guard(&a.container_id, Kind::Read)?;
            let since = match a.since.as_deref() {
                None | Some("") => None,
                Some(s) => Some(
                    crate::time::parse_rfc3339(s)
                        .ok_or_else(|| Error::Params(format!("since: {s:?} is not an RFC3339 timestamp")))?,
                ),
            };
            let opts = LogOptions {
                // Negative means all lines, as the engine's "all".
                tail: u64::try_from(a.tail).ok(),
                since,
                timestamps: a.timestamps.unwrap_or(!a.follow),
                follow: a.follow,
            };
            if a.follow {
                let already = d.follows.start(&a.container_id, opts)?;
                let mut r = json!({"status": "success", "streaming": true, "container_id": a.container_id});
                if already {
                    r["already_following"] = json!(true);
                }
                return Ok(r);
            }
            let logs = read_logs(d.engine.as_ref(), &a.container_id, &opts)?;
            Ok(json!({"status": "success", "container_id": a.container_id, "logs": logs}))
        },
    },
    Function {
        name: "stop_container_logs",
        kind: Kind::Read,
        description: "Stop a log follow stream started by ``container_logs(..., follow=true)``.",
        schema: id_only_schema,
        call: |d, p| {
            let a: IdArgs = args(p)?;
            let stopped = d.follows.stop(&a.container_id);
            Ok(json!({"status": "success", "container_id": a.container_id, "stopped": stopped}))
        },
    },
    Function {
        name: "exec_in_container",
        kind: Kind::Exec,
        description: "Run a command inside a running container.",
        schema: || {
            json!({"type": "object", "properties": {
                "container_id": container_id_schema(),
                "command": {"type": "array", "items": {"type": "string"},
                            "description": "Program and arguments, e.g. [\"ls\", \"-l\"]."},
                "environment": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                                "default": null, "description": "Extra environment variables."},
                "workdir": {"type": ["string", "null"], "default": null,
                            "description": "Working directory inside the container."}},
              "required": ["container_id", "command"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                container_id: String,
                command: Vec<String>,
                #[serde(default)]
                environment: Option<std::collections::BTreeMap<String, String>>,
                #[serde(default)]
                workdir: Option<String>,
            }
            let a: A = args(p)?;
            if a.command.is_empty() {
                return Err(Error::Params("command must not be empty".into()));
            }
            d.guard(&a.container_id, Kind::Exec)?;
            let env: Vec<String> =
                a.environment.unwrap_or_default().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            let out = d.engine.exec(&a.container_id, &a.command, &env, a.workdir.as_deref())?;
            Ok(json!({
                "status": if out.exit_code == 0 { "success" } else { "error" },
                "exit_code": out.exit_code,
                "stdout": out.stdout,
                "stderr": out.stderr,
            }))
        },
    },
    Function {
        name: "pull_image",
        kind: Kind::Mutate,
        description: "Pull an image from a registry.",
        schema: || {
            json!({"type": "object", "properties": {
                "image": {"type": "string", "description": "Image reference, e.g. alpine:3.20."},
                "auth": {"type": ["object", "null"], "default": null,
                         "description": "Registry credentials for this pull, instead of those the host's \
                                         docker config.json holds for the image's registry. Never logged.",
                         "properties": {"username": {"type": "string"}, "password": {"type": "string"},
                                        "serveraddress": {"type": "string"}},
                         "required": ["username", "password"], "additionalProperties": false}},
              "required": ["image"]})
        },
        call: |d, mut p| {
            use crate::engine::docker::auth::{self, Credentials};
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                image: String,
            }
            // Parsed apart from `args`: serde's errors quote the value they reject.
            let creds = match p.remove("auth") {
                Some(v) => Credentials::from_param(&v).map_err(Error::Params)?,
                None => None,
            };
            let a: A = args(p)?;
            if !crate::spec::valid_image(&a.image) {
                return Err(Error::Params(format!("image {:?} is not an image reference", a.image)));
            }
            let mut progress = match creds {
                Some(c) => auth::with_credentials(c, || d.engine.pull_image(&a.image))?,
                None => d.engine.pull_image(&a.image)?,
            };
            let keep = progress.len().saturating_sub(5);
            progress.drain(..keep);
            Ok(json!({"status": "success", "image": a.image, "progress": progress}))
        },
    },
    Function {
        name: "list_images",
        kind: Kind::Read,
        description: "List images available on this host.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            let images: Vec<Value> = d
                .engine
                .list_images()?
                .iter()
                .map(|i| {
                    let id = i["Id"].as_str().unwrap_or_default();
                    let short = id.strip_prefix("sha256:").unwrap_or(id);
                    let created = i["Created"].as_i64().map(crate::time::format_rfc3339);
                    json!({"id": format!("sha256:{}", short.get(..12).unwrap_or(short)),
                           "tags": match &i["RepoTags"] { Value::Array(t) => Value::Array(t.clone()), _ => json!([]) },
                           "size": i["Size"], "created": created})
                })
                .collect();
            Ok(json!({"status": "success", "count": images.len(), "images": images}))
        },
    },
    Function {
        name: "compose_up",
        kind: Kind::Compose,
        description: "Start services with docker compose up.",
        schema: || {
            json!({"type": "object", "properties": {"spec": crate::compose::spec_schema()},
                   "required": ["spec"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                spec: ComposeSpec,
            }
            let a: A = args(p)?;
            if d.simulate {
                return d.sim_compose_up(&a.spec);
            }
            let out = d.compose.up(&a.spec)?;
            Ok(json!({"status": "success", "stdout": out.stdout, "stderr": out.stderr,
                      "project_dir": out.project_dir}))
        },
    },
    Function {
        name: "compose_down",
        kind: Kind::Compose,
        description: "Stop and remove compose project resources.",
        schema: || {
            json!({"type": "object", "properties": {
                "project_dir": {"type": "string", "description": "Directory returned by compose_up."},
                "compose_file": {"type": ["string", "null"], "default": null,
                                 "description": "Compose file relative to project_dir."},
                "remove_volumes": {"type": "boolean", "default": false,
                                   "description": "Also remove named volumes."}},
              "required": ["project_dir"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                project_dir: String,
                #[serde(default)]
                compose_file: Option<String>,
                #[serde(default)]
                remove_volumes: bool,
            }
            let a: A = args(p)?;
            let out = d.compose.down(&a.project_dir, a.compose_file.as_deref(), a.remove_volumes)?;
            Ok(json!({"status": "success", "stdout": out.stdout, "stderr": out.stderr}))
        },
    },
    Function {
        name: "list_managed_containers",
        kind: Kind::Read,
        description: "List containers labeled as managed by this driver.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            d.summaries(true, |s| s["managed_by_dcd"] == true)
        },
    },
];

impl Driver {
    /// The simulator has no compose CLI: it invents one `compose-<service>`
    /// container per service, as the Python simulator does.
    fn sim_compose_up(&self, spec: &ComposeSpec) -> Result<Value> {
        spec.check()?;
        let services = spec.services.clone().unwrap_or_else(|| vec!["app".into()]);
        let project_dir = spec.project_dir.clone().unwrap_or_else(|| "/sim/compose".into());
        for svc in &services {
            let name = format!("compose-{svc}");
            let body = json!({"Image": "sim/compose:latest", "Labels": crate::spec::managed_labels()});
            let id = self.engine.create_container(Some(&name), &body)?;
            self.engine.start_container(&id)?;
            self.state_observed(&self.summary_of(&id)?);
        }
        Ok(json!({"status": "success", "stdout": format!("started {}\n", services.join(" ")),
                  "stderr": "", "project_dir": project_dir}))
    }
}

/// Read a finished log and render it as the Python dcd does: one line per log
/// line, each starting with the engine's timestamp, both streams merged.
fn read_logs(engine: &dyn Engine, id: &str, opts: &LogOptions) -> Result<String> {
    let tty = engine.inspect_container(id)?["Config"]["Tty"] == true;
    let mut stream = engine.logs(id, opts)?;
    let mut demux = Demux::new(tty, opts.timestamps);
    let mut lines: std::collections::VecDeque<String> = Default::default();
    let mut size = 0usize;
    let mut omitted = 0usize;
    let mut push = |l: crate::engine::stream::Line| {
        let text = match l.ts {
            Some(ts) => format!("{ts} {}\n", l.text),
            None => format!("{}\n", l.text),
        };
        size += text.len();
        lines.push_back(text);
        while size > LOGS_MAX_BYTES {
            let Some(old) = lines.pop_front() else { break };
            size -= old.len();
            omitted += 1;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.body.read(&mut buf).map_err(|e| EngineError::Unreachable(e.to_string()))?;
        if n == 0 {
            break;
        }
        demux.push(&buf[..n], &mut push);
    }
    demux.finish(&mut push);
    let mut out = String::with_capacity(size + 64);
    if omitted > 0 {
        out.push_str(&format!("[dcd: {omitted} older lines omitted to fit the reply; use tail or since]\n"));
    }
    out.extend(lines);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_envelope() {
        let ev = Event::new(STATE_CHANGED, json!({"container_id": "abc", "previous_state": null}));
        assert_eq!(ev.name, STATE_CHANGED);
        let ev: Value = serde_json::from_slice(&ev.payload).unwrap();
        assert_eq!(ev["jsonrpc"], "2.0");
        assert_eq!(ev["method"], STATE_CHANGED);
        assert!(ev.get("id").is_none());
        let p = &ev["params"];
        assert_eq!(p["container_id"], "abc");
        assert!(p["previous_state"].is_null());
        let hex = |v: &Value, n: usize| {
            let s = v.as_str().unwrap();
            s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        assert!(hex(&p["event_id"], 8), "{p}");
        assert!(hex(&p["_trace_id"], 16), "{p}");
        let ts = p["ts"].as_str().unwrap();
        assert!(crate::time::parse_rfc3339(ts).is_some() && ts.ends_with('Z') && ts.len() == 20, "{ts}");
    }

    #[test]
    fn a_log_line_waits_for_room_until_stopped() {
        let (state, _keep) = crossbeam_channel::bounded(1);
        let (bulk, rx) = crossbeam_channel::bounded(1);
        let events = Events::new(state, bulk);
        let go = AtomicBool::new(false);
        assert!(events.emit_line(json!({"line": "1"}), &go));
        assert!(!events.emit(LOG_LINE, json!({"line": "2"})), "full: dropped without waiting");
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                rx.recv().unwrap();
            });
            assert!(events.emit_line(json!({"line": "3"}), &go), "waits until the transport takes one");
        });
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(!events.emit_line(json!({"line": "4"}), &stop));
        assert!(t.elapsed() < Duration::from_millis(100), "a stopped follow does not wait");
        assert_eq!(events.dropped.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn summary_shapes_inspect_data() {
        let s = summary(&json!({"Id": "0123456789abcdef", "Name": "/web", "Created": "t",
            "Config": {"Image": "img", "Labels": {MANAGED_LABEL: "true"}},
            "State": {"Status": "running"}, "NetworkSettings": {"Ports": null}}));
        assert_eq!(
            s,
            json!({"id": "0123456789ab", "name": "web", "image": "img", "status": "running",
            "state": "running", "labels": {MANAGED_LABEL: "true"}, "ports": {}, "created": "t",
            "managed_by_dcd": true, "endpoints": []})
        );
    }
}
