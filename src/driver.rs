//! The `docker_host` driver: the 17 RPCs of the Python dcd (spec §7), each one
//! a row in `FUNCTIONS` that holds its name, its advertised description and
//! parameter schema, and its handler, so what is advertised cannot drift from
//! what is served.

use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::compose::{Compose, ComposeSpec};
use crate::engine::stream::Demux;
use crate::engine::{Engine, EngineError, LogOptions};
use crate::logs::Follows;
use crate::policy::{ExecRule, Kind, Policy};
use crate::state::StateHandle;

pub const MANAGED_LABEL: &str = "deviceconnect.dev/managed";
pub const DRIVER_LABEL: &str = "deviceconnect.dev/driver";

/// How long a cached `EngineInfo` answers `get_status` and presence before the
/// engine is asked again.
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

/// An event for the mesh: its name and params, before the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub params: Value,
}

/// The sending side of the bounded event queue to the transport. Never
/// blocks: when the queue is full the event is dropped and counted, so a
/// chatty container cannot grow memory or stall an engine reader.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    pub fn new(tx: Sender<Event>) -> Self {
        Events { tx, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queue an event; false when it was dropped.
    pub fn emit(&self, name: &'static str, params: Value) -> bool {
        match self.tx.try_send(Event { name, params }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!("event queue full: {n} events dropped so far");
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

pub struct Driver {
    engine: Arc<dyn Engine>,
    simulate: bool,
    state_poll_hz: f64,
    state: StateHandle,
    follows: Follows,
    compose: Compose,
    policy: Policy,
    info: Mutex<Option<(Instant, Value)>>,
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
            info: Mutex::new(None),
        }
    }

    /// Run `method` with keyword `params` (`_dc_meta` and `source_device`
    /// already removed).
    pub fn call(&self, method: &str, params: Map<String, Value>) -> Result<Value> {
        let f = FUNCTIONS.iter().find(|f| f.name == method).ok_or(Error::UnknownMethod)?;
        if !self.policy.serves(f.kind, self.simulate) {
            return Err(Error::Policy(format!("{method} is disabled on this host ({})", match f.kind {
                Kind::Exec => "allow with \"exec\": \"allow\"",
                Kind::Compose => "allow with \"compose\": true",
                _ => "read_only is set",
            })));
        }
        (f.call)(self, params)
    }

    /// `capabilities` of presence and registration (spec §3.2).
    pub fn capabilities(&self) -> Value {
        let functions: Vec<Value> = FUNCTIONS
            .iter()
            .filter(|f| self.policy.serves(f.kind, self.simulate))
            .map(|f| {
                json!({"name": f.name, "description": f.description,
                       "parameters": (f.schema)(), "labels": null, "tags": []})
            })
            .collect();
        json!({
            "description": DESCRIPTION,
            "functions": functions,
            "events": events_advertised(),
            "labels": null,
        })
    }

    /// `identity` of presence and registration (spec §7.1).
    pub fn identity(&self, device_id: &str) -> Value {
        let model = if self.simulate {
            format!("simulated ({device_id})")
        } else {
            format!("Docker Engine ({device_id})")
        };
        json!({"device_type": "docker_host", "manufacturer": "Docker", "model": model,
               "description": "Docker host \u{2014} provision and control containers via Device Connect"})
    }

    /// `status` of presence and registration: "idle" while the engine answers,
    /// "offline" with `error_state` when it does not.
    pub fn status(&self) -> Value {
        let info = self.engine_info(false);
        let mut s = json!({"ts": crate::time::now_rfc3339(), "availability": "idle",
                           "busy_score": 0.0, "online": true});
        if info["connected"] != true {
            s["availability"] = json!("offline");
            s["error_state"] = info["error"].clone();
        }
        s
    }

    /// Stop every log follow (shutdown).
    pub fn shutdown(&self) {
        self.follows.stop_all();
    }

    /// `EngineInfo` plus `connected`, from the cache unless stale or `refresh`.
    fn engine_info(&self, refresh: bool) -> Value {
        let mut cache = self.info.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = cache.as_ref() {
            if !refresh && at.elapsed() < INFO_TTL {
                return v.clone();
            }
        }
        let v = match self.engine.info() {
            Ok(mut v) => {
                v["connected"] = json!(true);
                if self.simulate {
                    v["simulated"] = json!(true);
                }
                v
            }
            Err(e) => json!({"connected": false, "error": e.to_string()}),
        };
        *cache = Some((Instant::now(), v.clone()));
        v
    }

    /// Refuse to touch a container the policy keeps us away from: with
    /// `owned_only`, any container without our managed label; for exec with
    /// `exec: managed`, likewise.
    fn guard(&self, id: &str, kind: Kind) -> Result<()> {
        let managed_only = self.policy.owned_only || (kind == Kind::Exec && self.policy.exec == ExecRule::Managed);
        if managed_only && self.engine.inspect_container(id)?["Config"]["Labels"][MANAGED_LABEL] != "true" {
            return Err(Error::Policy(format!("container {id} is not managed by dcd (owned_only)")));
        }
        Ok(())
    }

    fn summary_of(&self, id: &str) -> Result<Value> {
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
fn args<T: DeserializeOwned>(params: Map<String, Value>) -> Result<T> {
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
    json!({
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

const DESCRIPTION: &str = "Device Connect driver for provisioning and controlling Docker containers. \
Exposes container CRUD, logs, exec, image pull, and compose up/down over the Device Connect mesh \
(D2D LAN or Portal-backed NATS). Interactive attach/TTY sessions are out of scope; use \
``exec_in_container`` for one-shot commands or follow logs via ``container_logs`` + events.";

pub const STATE_CHANGED: &str = "container_state_changed";
pub const LOG_LINE: &str = "container_log_line";

fn events_advertised() -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    json!([
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
                        "description": "\"stdout\" or \"stderr\"; \"dcd\" for a notice that lines were dropped."}},
           "required": ["container_id", "line"]},
         "labels": null, "tags": []}
    ])
}

struct Function {
    name: &'static str,
    kind: Kind,
    description: &'static str,
    schema: fn() -> Value,
    call: fn(&Driver, Map<String, Value>) -> Result<Value>,
}

fn no_params() -> Value {
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

fn id_only_schema() -> Value {
    json!({"type": "object", "properties": {"container_id": container_id_schema()},
           "required": ["container_id"]})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArgs {
    container_id: String,
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

const FUNCTIONS: &[Function] = &[
    Function {
        name: "get_status",
        kind: Kind::Read,
        description: "Return driver and Docker Engine connectivity status.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            let docker = d.engine_info(false);
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
            let mut info = d.engine_info(true);
            if info["connected"] != true {
                return Err(Error::Engine(EngineError::Unreachable(
                    info["error"].as_str().unwrap_or("no answer").to_string(),
                )));
            }
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
                                   "description": "Include stopped containers when true."}},
              "required": []})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                #[serde(default)]
                all_containers: bool,
            }
            let a: A = args(p)?;
            d.summaries(a.all_containers, |_| true)
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
        schema: || {
            json!({"type": "object", "properties": {"spec": spec_schema()}, "required": ["spec"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                spec: ContainerSpec,
            }
            let a: A = args(p)?;
            let body = a.spec.create_body()?;
            d.policy.check_create(&body).map_err(Error::Policy)?;
            let id = d.engine.create_container(a.spec.name.as_deref(), &body)?;
            d.state.observed(&summary(&d.engine.inspect_container(&id)?));
            d.engine.start_container(&id)?;
            let container = d.summary_of(&id)?;
            d.state.observed(&container);
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
                           "description": "When true, emit ``container_log_line`` events until ``stop_container_logs`` is called."}},
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
            }
            fn hundred() -> i64 {
                100
            }
            let a: A = args(p)?;
            d.guard(&a.container_id, Kind::Read)?;
            let since = match a.since.as_deref() {
                None | Some("") => None,
                Some(s) => Some(crate::time::parse_rfc3339(s).ok_or_else(|| {
                    Error::Params(format!("since: {s:?} is not an RFC3339 timestamp"))
                })?),
            };
            let opts = LogOptions {
                // Negative means all lines, as the engine's "all".
                tail: u64::try_from(a.tail).ok(),
                since,
                timestamps: !a.follow,
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
                "image": {"type": "string", "description": "Image reference, e.g. alpine:3.20."}},
              "required": ["image"]})
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                image: String,
            }
            let a: A = args(p)?;
            if !valid_image(&a.image) {
                return Err(Error::Params(format!("image {:?} is not an image reference", a.image)));
            }
            let mut progress = d.engine.pull_image(&a.image)?;
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
            let body = json!({"Image": "sim/compose:latest", "Labels": managed_labels()});
            let id = self.engine.create_container(Some(&name), &body)?;
            self.engine.start_container(&id)?;
            self.state.observed(&self.summary_of(&id)?);
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

fn managed_labels() -> Value {
    json!({MANAGED_LABEL: "true", DRIVER_LABEL: "dcd"})
}

/// A string or a list of strings (`command`, `entrypoint`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Args {
    One(String),
    Many(Vec<String>),
}

impl Args {
    /// The Engine API wants a list: a single string runs through `/bin/sh -c`
    /// as docker-py and the CLI do for shell-form commands.
    fn to_engine(&self) -> Vec<String> {
        match self {
            Args::One(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Args::Many(v) => v.clone(),
        }
    }
}

/// An int or a string (`container_port`, `host_port`, `mem_limit`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum IntOrStr {
    Int(u64),
    Str(String),
}

impl IntOrStr {
    fn text(&self) -> String {
        match self {
            IntOrStr::Int(n) => n.to_string(),
            IntOrStr::Str(s) => s.clone(),
        }
    }
}

#[derive(Deserialize, Debug)]
struct PortSpec {
    container_port: IntOrStr,
    #[serde(default)]
    host_port: Option<IntOrStr>,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "tcp".into()
}

#[derive(Deserialize, Debug)]
struct VolumeSpec {
    source: String,
    target: String,
    #[serde(default)]
    read_only: bool,
}

fn yes() -> bool {
    true
}

/// `ContainerProvisionSpec` (spec §7.4). Unknown keys are ignored, as in Python.
#[derive(Deserialize, Debug)]
struct ContainerSpec {
    image: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    command: Option<Args>,
    #[serde(default)]
    entrypoint: Option<Args>,
    #[serde(default)]
    environment: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    labels: Map<String, Value>,
    #[serde(default)]
    ports: Vec<PortSpec>,
    #[serde(default)]
    volumes: Vec<VolumeSpec>,
    #[serde(default)]
    network: Option<String>,
    // `detach` is accepted and ignored: the container is started either way, as in Python.
    #[serde(default)]
    auto_remove: bool,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    mem_limit: Option<IntOrStr>,
    #[serde(default)]
    cpu_quota: Option<i64>,
    #[serde(default = "yes")]
    device_connect_labels: bool,
}

impl ContainerSpec {
    /// The Engine API create body: the mapping Python intended (spec §7.4, §7.8).
    fn create_body(&self) -> Result<Value> {
        self.check_bounds()?;
        let mut labels = Map::new();
        for (k, v) in &self.labels {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            labels.insert(k.clone(), Value::String(v));
        }
        if self.device_connect_labels {
            if let Value::Object(m) = managed_labels() {
                labels.extend(m);
            }
        }
        let mut exposed = Map::new();
        let mut bindings = Map::new();
        for p in &self.ports {
            let cport = p.container_port.text();
            if cport.parse::<u16>().is_err() {
                return Err(Error::Params(format!("ports: container_port {cport:?} is not a port number")));
            }
            if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(Error::Params(format!("ports: protocol {:?} is not tcp, udp or sctp", p.protocol)));
            }
            let key = format!("{cport}/{}", p.protocol);
            exposed.insert(key.clone(), json!({}));
            let binding = match &p.host_port {
                Some(h) => {
                    let h = h.text();
                    if h.parse::<u16>().is_err() {
                        return Err(Error::Params(format!("ports: host_port {h:?} is not a port number")));
                    }
                    json!({"HostPort": h})
                }
                None => json!({}),
            };
            if let Value::Array(list) = bindings.entry(key).or_insert_with(|| json!([])) {
                list.push(binding);
            }
        }
        let binds: Vec<String> = self
            .volumes
            .iter()
            .map(|v| format!("{}:{}:{}", v.source, v.target, if v.read_only { "ro" } else { "rw" }))
            .collect();
        let mut host = json!({
            "Binds": binds,
            "PortBindings": bindings,
            "AutoRemove": self.auto_remove,
        });
        if let Some(policy) = &self.restart_policy {
            if !matches!(policy.as_str(), "no" | "always" | "unless-stopped" | "on-failure") {
                return Err(Error::Params(format!(
                    "restart_policy {policy:?} is not one of no, always, unless-stopped, on-failure"
                )));
            }
            host["RestartPolicy"] = json!({"Name": policy});
        }
        if let Some(m) = &self.mem_limit {
            host["Memory"] = json!(parse_size(&m.text())
                .ok_or_else(|| Error::Params(format!("mem_limit {:?} is not a size like 512m or 1g", m.text())))?);
        }
        if let Some(q) = self.cpu_quota {
            host["CpuQuota"] = json!(q);
        }
        let mut body = json!({
            "Image": self.image,
            "Env": self.environment.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "Labels": labels,
            "ExposedPorts": exposed,
            "HostConfig": host,
        });
        if let Some(c) = &self.command {
            body["Cmd"] = json!(c.to_engine());
        }
        if let Some(e) = &self.entrypoint {
            body["Entrypoint"] = json!(match e {
                Args::One(s) => vec![s.clone()],
                Args::Many(v) => v.clone(),
            });
        }
        if let Some(net) = &self.network {
            body["HostConfig"]["NetworkMode"] = json!(net);
            body["NetworkingConfig"] = json!({"EndpointsConfig": {net: {}}});
        }
        Ok(body)
    }
}

/// Bounds on what one spec may ask for, so a hostile request cannot make us
/// build an unbounded body.
const MAX_ENTRIES: usize = 256;
const MAX_STRING: usize = 16 * 1024;

impl ContainerSpec {
    fn check_bounds(&self) -> Result<()> {
        if !valid_image(&self.image) {
            return Err(Error::Params(format!("spec.image {:?} is not an image reference", self.image)));
        }
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return Err(Error::Params(format!(
                    "spec.name {name:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]* (at most 128 characters)"
                )));
            }
        }
        let counts = [
            ("environment", self.environment.len()),
            ("labels", self.labels.len()),
            ("ports", self.ports.len()),
            ("volumes", self.volumes.len()),
        ];
        if let Some((field, n)) = counts.iter().find(|(_, n)| *n > MAX_ENTRIES) {
            return Err(Error::Params(format!("spec.{field} has {n} entries, more than {MAX_ENTRIES}")));
        }
        let strings = self
            .environment
            .iter()
            .flat_map(|(k, v)| [k, v])
            .chain(self.labels.keys())
            .chain(self.volumes.iter().flat_map(|v| [&v.source, &v.target]));
        if strings.into_iter().any(|s| s.len() > MAX_STRING) {
            return Err(Error::Params(format!("spec holds a string longer than {MAX_STRING} bytes")));
        }
        Ok(())
    }
}

/// Docker's container name rule.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A plausible image reference: registry/repo:tag@digest characters only,
/// nothing that could reach into a URL's path or query.
fn valid_image(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= 512
        && !image.starts_with(['-', '/', ':', '@', '.'])
        && image.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'/' | b':' | b'@'))
        && !image.contains("..")
}

/// docker-py's size strings: plain bytes, or a number with b, k, m or g.
fn parse_size(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'b') => (&s[..i], 1),
        (i, 'k') => (&s[..i], 1 << 10),
        (i, 'm') => (&s[..i], 1 << 20),
        (i, 'g') => (&s[..i], 1 << 30),
        _ => (s.as_str(), 1),
    };
    num.parse::<i64>().ok().filter(|n| *n >= 0)?.checked_mul(mult)
}

fn spec_schema() -> Value {
    let str_or_list = json!({"type": ["string", "array", "null"], "items": {"type": "string"}, "default": null});
    let int_or_str = json!({"type": ["integer", "string"]});
    json!({"type": "object",
      "description": "Fields matching ContainerProvisionSpec (image, name, ports, \u{2026}).",
      "properties": {
        "image": {"type": "string", "description": "Image reference."},
        "name": {"type": ["string", "null"], "default": null},
        "command": str_or_list, "entrypoint": str_or_list,
        "environment": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
        "ports": {"type": "array", "default": [], "items": {"type": "object", "properties": {
            "container_port": int_or_str,
            "host_port": {"type": ["integer", "string", "null"], "default": null},
            "protocol": {"type": "string", "default": "tcp"}}, "required": ["container_port"]}},
        "volumes": {"type": "array", "default": [], "items": {"type": "object", "properties": {
            "source": {"type": "string"}, "target": {"type": "string"},
            "read_only": {"type": "boolean", "default": false}}, "required": ["source", "target"]}},
        "network": {"type": ["string", "null"], "default": null},
        "detach": {"type": "boolean", "default": true},
        "auto_remove": {"type": "boolean", "default": false},
        "restart_policy": {"type": ["string", "null"], "enum": ["no", "always", "unless-stopped", "on-failure", null], "default": null},
        "mem_limit": {"type": ["string", "integer", "null"], "default": null, "description": "512m, 1g or bytes."},
        "cpu_quota": {"type": ["integer", "null"], "default": null},
        "device_connect_labels": {"type": "boolean", "default": true}},
      "required": ["image"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> Result<Value> {
        serde_json::from_value::<ContainerSpec>(v).map_err(|e| Error::Params(e.to_string()))?.create_body()
    }

    #[test]
    fn sizes_parse_like_docker_py() {
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("2048k"), Some(2048 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("12x"), None);
        assert_eq!(parse_size("-1"), None);
    }

    #[test]
    fn spec_maps_every_field() {
        let b = spec(json!({"image": "a", "command": "echo hi", "environment": {"A": "1"},
            "ports": [{"container_port": 80, "host_port": "8080"}, {"container_port": "53", "protocol": "udp"}],
            "volumes": [{"source": "data", "target": "/d", "read_only": true}],
            "network": "n1", "restart_policy": "always", "mem_limit": "512m", "cpu_quota": 50000,
            "labels": {"x": "y"}, "auto_remove": false, "unknown_key": 1}))
        .unwrap();
        assert_eq!(b["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(b["Env"], json!(["A=1"]));
        assert_eq!(b["HostConfig"]["PortBindings"]["80/tcp"], json!([{"HostPort": "8080"}]));
        assert_eq!(b["HostConfig"]["PortBindings"]["53/udp"], json!([{}]));
        assert_eq!(b["HostConfig"]["Binds"], json!(["data:/d:ro"]));
        assert_eq!(b["HostConfig"]["RestartPolicy"]["Name"], "always");
        assert_eq!(b["HostConfig"]["Memory"], 512 << 20);
        assert_eq!(b["HostConfig"]["CpuQuota"], 50000);
        assert_eq!(b["HostConfig"]["NetworkMode"], "n1");
        assert_eq!(b["Labels"][MANAGED_LABEL], "true");
        assert_eq!(b["Labels"]["x"], "y");
    }

    #[test]
    fn spec_rejects_bad_values() {
        for bad in [
            json!({"name": "x"}),
            json!({"image": 5}),
            json!({"image": ""}),
            json!({"image": "../../info?x=1"}),
            json!({"image": "a", "name": "../x"}),
            json!({"image": "a", "name": "a?b"}),
            json!({"image": "a", "environment": (0..300).map(|i| (format!("K{i}"), json!("v"))).collect::<Map<_, _>>()}),
            json!({"image": "a", "ports": [{"container_port": "http"}]}),
            json!({"image": "a", "restart_policy": "sometimes"}),
            json!({"image": "a", "mem_limit": "lots"}),
        ] {
            assert!(matches!(spec(bad.clone()), Err(Error::Params(_))), "{bad}");
        }
    }

    #[test]
    fn summary_shapes_inspect_data() {
        let s = summary(&json!({"Id": "0123456789abcdef", "Name": "/web", "Created": "t",
            "Config": {"Image": "img", "Labels": {MANAGED_LABEL: "true"}},
            "State": {"Status": "running"}, "NetworkSettings": {"Ports": null}}));
        assert_eq!(s, json!({"id": "0123456789ab", "name": "web", "image": "img", "status": "running",
            "state": "running", "labels": {MANAGED_LABEL: "true"}, "ports": {}, "created": "t",
            "managed_by_dcd": true}));
    }
}
