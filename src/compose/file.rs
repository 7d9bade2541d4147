//! The Compose file: read within bounds, interpolated from the caller's
//! variables only, checked key by key, and turned into typed services,
//! networks and volumes. Nothing here touches the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::yaml::MAX_FILE_BYTES;

/// At most this many services, networks or volumes in one project.
const MAX_OBJECTS: usize = 256;
/// At most this many containers in one project (replicas summed).
const MAX_CONTAINERS: u32 = 256;

/// Service keys we read. Anything else is refused by name, so a file never
/// means more than we do.
const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "labels",
    "restart",
    "container_name",
    "hostname",
    "user",
    "working_dir",
    "depends_on",
    "healthcheck",
    "networks",
    "network_mode",
    "cap_add",
    "cap_drop",
    "devices",
    "privileged",
    "security_opt",
    "read_only",
    "tmpfs",
    "ulimits",
    "logging",
    "extra_hosts",
    "dns",
    "shm_size",
    "mem_limit",
    "cpus",
    "deploy",
    "scale",
    "init",
    "stop_signal",
    "stop_grace_period",
    "pid",
    "ipc",
    "sysctls",
    "group_add",
    "profiles",
];
const TOP_KEYS: &[&str] = &["version", "name", "services", "networks", "volumes"];

type Result<T> = std::result::Result<T, String>;

/// Where the file came from: text read from the host is never quoted in an
/// error, since a caller could point us at a file it cannot read itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Inline,
    Host,
}

/// A parsed, checked project.
#[derive(Debug)]
pub struct Project {
    pub name: String,
    pub services: BTreeMap<String, Service>,
    pub networks: BTreeMap<String, Network>,
    pub volumes: BTreeMap<String, Volume>,
    /// Keys ignored as compose ignores them (`build` next to `image`).
    pub warnings: Vec<String>,
}

/// A string, number or boolean of the file, as text.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Scalar(s)),
            v @ (Value::Number(_) | Value::Bool(_)) => Ok(Scalar(v.to_string())),
            _ => Err(serde::de::Error::custom("expected a string, number or boolean")),
        }
    }
}

/// `"a b"` or `["a", "b"]`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StrOrList {
    One(String),
    Many(Vec<String>),
}

impl StrOrList {
    pub fn list(&self) -> Vec<String> {
        match self {
            StrOrList::One(s) => vec![s.clone()],
            StrOrList::Many(v) => v.clone(),
        }
    }
}

/// `{K: V}` (V may be null) or `["K=V", "K"]`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum MapOrList {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

impl MapOrList {
    /// Pairs in file order for a list, key order for a map; `sep` splits list entries.
    pub fn pairs(&self, sep: char) -> Vec<(String, Option<String>)> {
        match self {
            MapOrList::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.as_ref().map(|s| s.0.clone()))).collect(),
            MapOrList::List(l) => l
                .iter()
                .map(|e| match e.split_once(sep) {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (e.clone(), None),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Port {
    Short(Scalar),
    Long {
        target: Scalar,
        #[serde(default)]
        published: Option<Scalar>,
        #[serde(default)]
        host_ip: Option<String>,
        #[serde(default)]
        protocol: Option<String>,
        #[serde(default)]
        mode: Option<String>,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        app_protocol: Option<String>,
    },
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Mount {
    Short(String),
    Long(LongMount),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct LongMount {
    pub r#type: String,
    #[serde(default)]
    pub source: Option<String>,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub volume: Option<VolumeOpts>,
    #[serde(default)]
    pub bind: Option<BindOpts>,
    #[serde(default)]
    pub tmpfs: Option<TmpfsOpts>,
    #[serde(default)]
    pub consistency: Option<String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeOpts {
    pub nocopy: bool,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BindOpts {
    pub propagation: Option<String>,
    pub create_host_path: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TmpfsOpts {
    pub size: Option<Scalar>,
    pub mode: Option<Scalar>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    #[default]
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::ServiceStarted => "service_started",
            Condition::ServiceHealthy => "service_healthy",
            Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    #[serde(default)]
    pub condition: Condition,
    #[serde(default)]
    pub restart: bool,
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, Dependency>),
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Healthcheck {
    pub test: Option<StrOrList>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub disable: bool,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Attachment {
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    pub priority: Option<i64>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum ServiceNetworks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<Attachment>>),
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: BTreeMap<String, Scalar>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
struct Deploy {
    replicas: Option<u32>,
    resources: Option<Resources>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
struct Resources {
    limits: Option<Limits>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub memory: Option<Scalar>,
    pub cpus: Option<Scalar>,
    pub pids: Option<i64>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum EnvFile {
    Path(String),
    Long {
        path: String,
        #[serde(default = "yes")]
        required: bool,
    },
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum EnvFiles {
    One(String),
    Many(Vec<EnvFile>),
}

/// One service as the file states it (after `x-` keys and `build` are dropped).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
struct RawService {
    image: Option<String>,
    command: Option<StrOrList>,
    entrypoint: Option<StrOrList>,
    environment: Option<MapOrList>,
    env_file: Option<EnvFiles>,
    ports: Vec<Port>,
    expose: Vec<Scalar>,
    volumes: Vec<Mount>,
    labels: Option<MapOrList>,
    restart: Option<String>,
    container_name: Option<String>,
    hostname: Option<String>,
    user: Option<Scalar>,
    working_dir: Option<String>,
    depends_on: Option<DependsOn>,
    healthcheck: Option<Healthcheck>,
    networks: Option<ServiceNetworks>,
    network_mode: Option<String>,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    devices: Vec<String>,
    privileged: bool,
    security_opt: Vec<String>,
    read_only: bool,
    tmpfs: Option<StrOrList>,
    ulimits: Option<Value>,
    logging: Option<Logging>,
    extra_hosts: Option<MapOrList>,
    dns: Option<StrOrList>,
    shm_size: Option<Scalar>,
    mem_limit: Option<Scalar>,
    cpus: Option<Scalar>,
    deploy: Option<Deploy>,
    scale: Option<u32>,
    init: Option<bool>,
    stop_signal: Option<String>,
    stop_grace_period: Option<String>,
    pid: Option<String>,
    ipc: Option<String>,
    sysctls: Option<MapOrList>,
    group_add: Vec<Scalar>,
    profiles: Vec<String>,
}

/// A service, normalised: every either-or of the file resolved to one form.
#[derive(Debug, Clone)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// Resolved: env files first, then `environment`; keys without a value
    /// taken from the caller's variables or dropped.
    pub environment: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    pub expose: Vec<String>,
    pub volumes: Vec<Mount>,
    pub labels: BTreeMap<String, String>,
    pub restart: Option<String>,
    pub container_name: Option<String>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub depends_on: BTreeMap<String, Dependency>,
    pub healthcheck: Option<Healthcheck>,
    /// Networks by their key in the file, with aliases; empty with `network_mode`.
    pub networks: BTreeMap<String, Attachment>,
    pub network_mode: Option<String>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub devices: Vec<String>,
    pub privileged: bool,
    pub security_opt: Vec<String>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub ulimits: Option<Value>,
    pub logging: Option<Logging>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub shm_size: Option<String>,
    pub mem_limit: Option<String>,
    pub cpus: Option<String>,
    pub pids_limit: Option<i64>,
    pub replicas: u32,
    pub init: Option<bool>,
    pub stop_signal: Option<String>,
    pub stop_grace_period: Option<String>,
    pub pid: Option<String>,
    pub ipc: Option<String>,
    pub sysctls: BTreeMap<String, String>,
    pub group_add: Vec<String>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, Scalar>,
    pub internal: bool,
    pub attachable: bool,
    pub external: bool,
    pub name: Option<String>,
    pub labels: Option<MapOrList>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Volume {
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, Scalar>,
    pub external: bool,
    pub name: Option<String>,
    pub labels: Option<MapOrList>,
}

/// What a file may read besides itself: its directory (for `env_file` and
/// relative binds), and the caller's variables.
pub struct Context<'a> {
    pub origin: Origin,
    /// The project directory on the host, when the file came from one.
    pub dir: Option<&'a Path>,
    pub variables: &'a HashMap<String, String>,
    /// Active profiles (services without `profiles` are always active).
    pub profiles: &'a [String],
    /// The project name given by the caller; else `name:`; else `default_name`.
    pub project: Option<&'a str>,
    pub default_name: &'a str,
}

impl<'a> Context<'a> {
    /// A file given inline, with no profiles and no project name asked for.
    pub fn inline(variables: &'a HashMap<String, String>, default_name: &'a str) -> Context<'a> {
        Context { origin: Origin::Inline, dir: None, variables, profiles: &[], project: None, default_name }
    }
}

/// Parse YAML text into a JSON value within our budgets (see `yaml`),
/// interpolating `${VAR}` forms from `variables` only.
pub fn parse_yaml(text: &str, variables: &HashMap<String, String>, origin: Origin) -> Result<Value> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!("the compose file has {} bytes, more than {MAX_FILE_BYTES}", text.len()));
    }
    super::yaml::to_json(text, variables).map_err(|e| match origin {
        Origin::Inline => format!("compose file: {e}"),
        Origin::Host => format!("compose file: {}", redact(&e.to_string())),
    })
}

/// A message about host file content with every quoted part left out.
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut quote: Option<char> = None;
    for c in msg.chars() {
        match quote {
            // `x' is a quote too (the YAML parser's unexpected character).
            Some(q) if c == q || (q == '`' && c == '\'') => {
                out.push('…');
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if matches!(c, '"' | '`' | '\'') => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

/// Compose's rule for project names.
pub fn valid_project(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// The name compose derives from a directory: lowercase, only `[a-z0-9_-]`,
/// no leading `_` or `-`.
pub fn project_from_dir(dir: &str) -> String {
    let base = Path::new(dir).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_ascii_lowercase();
    base.chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        .collect::<String>()
        .trim_start_matches(['_', '-'])
        .to_string()
}

fn valid_service(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn typed<T: DeserializeOwned>(v: Value, what: &str, origin: Origin) -> Result<T> {
    serde_json::from_value(v).map_err(|e| match origin {
        Origin::Inline => format!("{what}: {e}"),
        Origin::Host => format!("{what}: {}", redact(&e.to_string())),
    })
}

/// Check and type a parsed file.
pub fn project(doc: Value, cx: &Context) -> Result<Project> {
    let Value::Object(mut top) = doc else {
        return Err("a compose file is a mapping with a services key".into());
    };
    top.retain(|k, _| !k.starts_with("x-"));
    if let Some(k) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
        return Err(format!("top-level key {k:?} is not supported"));
    }
    let name = match (cx.project, top.get("name")) {
        (Some(p), _) => p.to_string(),
        (None, Some(Value::String(n))) => n.clone(),
        (None, Some(_)) => return Err("name must be a string".into()),
        (None, None) => cx.default_name.to_string(),
    };
    if !valid_project(&name) {
        return Err(format!(
            "project name {name:?} must be lowercase letters, digits, '_' or '-', starting with a letter or digit"
        ));
    }
    let mut warnings = Vec::new();
    let services = match top.remove("services") {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => Map::new(),
        Some(_) => return Err("services must be a mapping".into()),
    };
    let networks: BTreeMap<String, Network> = objects(top.remove("networks"), "network", cx.origin)?;
    let volumes: BTreeMap<String, Volume> = objects(top.remove("volumes"), "volume", cx.origin)?;
    if services.len() > MAX_OBJECTS {
        return Err(format!("{} services, more than {MAX_OBJECTS}", services.len()));
    }
    let mut out = BTreeMap::new();
    for (svc, body) in services {
        if !valid_service(&svc) {
            return Err(format!("service name {svc:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"));
        }
        let Value::Object(mut body) = body else {
            return Err(format!("service {svc}: must be a mapping"));
        };
        body.retain(|k, _| !k.starts_with("x-"));
        if let Some(k) = body.keys().find(|k| !SERVICE_KEYS.contains(&k.as_str())) {
            return Err(format!("service {svc}: key {k:?} is not supported"));
        }
        if body.remove("build").is_some() {
            if !body.contains_key("image") {
                return Err(format!("service {svc}: build is not supported; give an image"));
            }
            warnings.push(format!("service {svc}: build ignored, the image is used as it is"));
        }
        let raw: RawService = typed(Value::Object(body), &format!("service {svc}"), cx.origin)?;
        let active = raw.profiles.is_empty() || raw.profiles.iter().any(|p| cx.profiles.contains(p));
        if active {
            let s = normalise(raw, cx).map_err(|e| format!("service {svc}: {e}"))?;
            out.insert(svc, s);
        }
    }
    let p = Project { name, services: out, networks, volumes, warnings };
    check_references(&p)?;
    Ok(p)
}

fn objects<T: DeserializeOwned + Default>(v: Option<Value>, what: &str, origin: Origin) -> Result<BTreeMap<String, T>> {
    let m = match v {
        Some(Value::Object(m)) => m,
        Some(Value::Null) | None => return Ok(BTreeMap::new()),
        Some(_) => return Err(format!("{what}s must be a mapping")),
    };
    if m.len() > MAX_OBJECTS {
        return Err(format!("{} {what}s, more than {MAX_OBJECTS}", m.len()));
    }
    let mut out = BTreeMap::new();
    for (k, v) in m {
        if !valid_service(&k) {
            return Err(format!("{what} name {k:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"));
        }
        let v = match v {
            Value::Null => T::default(),
            Value::Object(mut o) => {
                o.retain(|k, _| !k.starts_with("x-"));
                typed(Value::Object(o), &format!("{what} {k}"), origin)?
            }
            _ => return Err(format!("{what} {k}: must be a mapping")),
        };
        out.insert(k, v);
    }
    Ok(out)
}

fn normalise(raw: RawService, cx: &Context) -> Result<Service> {
    let image = raw.image.ok_or("image is required (build is not supported)")?;
    let mut environment = BTreeMap::new();
    let files = match raw.env_file {
        None => Vec::new(),
        Some(EnvFiles::One(p)) => vec![(p, true)],
        Some(EnvFiles::Many(l)) => l
            .into_iter()
            .map(|f| match f {
                EnvFile::Path(p) => (p, true),
                EnvFile::Long { path, required } => (path, required),
            })
            .collect(),
    };
    for (path, required) in files {
        let dir = cx.dir.ok_or("env_file needs a project_dir (an inline compose_yaml has no directory)")?;
        let full = inside(dir, &path).map_err(|e| format!("env_file {path:?}: {e}"))?;
        match read_bounded(&full) {
            Ok(text) => environment.extend(dotenv(&text).map_err(|e| format!("env_file {path:?}: {e}"))?),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("env_file {path:?}: {}", io_reason(&e))),
        }
    }
    for (k, v) in raw.environment.map(|e| e.pairs('=')).unwrap_or_default() {
        // A key without a value comes from the caller's variables, never from ours.
        match v.or_else(|| cx.variables.get(&k).cloned()) {
            Some(v) => environment.insert(k, v),
            None => environment.remove(&k),
        };
    }
    let depends_on = match raw.depends_on {
        None => BTreeMap::new(),
        Some(DependsOn::List(l)) => l
            .into_iter()
            .map(|s| (s, Dependency { condition: Condition::ServiceStarted, restart: false, required: true }))
            .collect(),
        Some(DependsOn::Map(m)) => m,
    };
    if raw.network_mode.is_some() && raw.networks.is_some() {
        return Err("network_mode and networks cannot both be set".into());
    }
    let networks = match raw.networks {
        None if raw.network_mode.is_none() => BTreeMap::from([("default".to_string(), Attachment::default())]),
        None => BTreeMap::new(),
        Some(ServiceNetworks::List(l)) => l.into_iter().map(|n| (n, Attachment::default())).collect(),
        Some(ServiceNetworks::Map(m)) => m.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect(),
    };
    let deploy = raw.deploy.unwrap_or_default();
    let limits = deploy.resources.and_then(|r| r.limits).unwrap_or_default();
    let replicas = raw.scale.or(deploy.replicas).unwrap_or(1);
    if replicas > MAX_CONTAINERS {
        return Err(format!("{replicas} replicas, more than {MAX_CONTAINERS}"));
    }
    if replicas > 1 && raw.container_name.is_some() {
        return Err("container_name cannot be used with more than one replica".into());
    }
    Ok(Service {
        image,
        command: raw.command.map(shell_words).transpose()?,
        entrypoint: raw.entrypoint.map(shell_words).transpose()?,
        environment,
        ports: raw.ports,
        expose: raw.expose.into_iter().map(|s| s.0).collect(),
        volumes: raw.volumes,
        labels: raw
            .labels
            .map(|l| l.pairs('='))
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        restart: raw.restart,
        container_name: raw.container_name,
        hostname: raw.hostname,
        user: raw.user.map(|u| u.0),
        working_dir: raw.working_dir,
        depends_on,
        healthcheck: raw.healthcheck,
        networks,
        network_mode: raw.network_mode,
        cap_add: raw.cap_add,
        cap_drop: raw.cap_drop,
        devices: raw.devices,
        privileged: raw.privileged,
        security_opt: raw.security_opt,
        read_only: raw.read_only,
        tmpfs: raw.tmpfs.map(|t| t.list()).unwrap_or_default(),
        ulimits: raw.ulimits,
        logging: raw.logging,
        extra_hosts: raw
            .extra_hosts
            .map(|h| match h {
                MapOrList::Map(m) => {
                    m.into_iter().map(|(k, v)| format!("{k}:{}", v.map(|s| s.0).unwrap_or_default())).collect()
                }
                // Compose accepts host=ip as well as the engine's host:ip.
                MapOrList::List(l) => l.into_iter().map(|e| e.replacen('=', ":", 1)).collect(),
            })
            .unwrap_or_default(),
        dns: raw.dns.map(|d| d.list()).unwrap_or_default(),
        shm_size: raw.shm_size.map(|s| s.0),
        mem_limit: limits.memory.or(raw.mem_limit).map(|s| s.0),
        cpus: limits.cpus.or(raw.cpus).map(|s| s.0),
        pids_limit: limits.pids,
        replicas,
        init: raw.init,
        stop_signal: raw.stop_signal,
        stop_grace_period: raw.stop_grace_period,
        pid: raw.pid,
        ipc: raw.ipc,
        sysctls: raw
            .sysctls
            .map(|s| s.pairs('='))
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        group_add: raw.group_add.into_iter().map(|g| g.0).collect(),
    })
}

/// Every name a service refers to exists, and `depends_on` has no cycle.
fn check_references(p: &Project) -> Result<()> {
    for (name, s) in &p.services {
        for dep in s.depends_on.keys() {
            if !p.services.contains_key(dep) && s.depends_on[dep].required {
                return Err(format!("service {name} depends on {dep}, which is not a service of the project"));
            }
        }
        for net in s.networks.keys() {
            if net != "default" && !p.networks.contains_key(net) {
                return Err(format!("service {name} uses network {net}, which is not declared under networks"));
            }
        }
        if let Some(other) = s.network_mode.as_deref().and_then(|m| m.strip_prefix("service:")) {
            if !p.services.contains_key(other) {
                return Err(format!("service {name}: network_mode names service {other}, which is not in the project"));
            }
        }
    }
    order(p, &p.services.keys().cloned().collect::<Vec<_>>()).map(|_| ())
}

/// `wanted` and everything they depend on, dependencies first. A cycle is an error.
pub fn order(p: &Project, wanted: &[String]) -> Result<Vec<String>> {
    fn visit(p: &Project, s: &str, stack: &mut Vec<String>, out: &mut Vec<String>) -> Result<()> {
        if out.iter().any(|o| o == s) {
            return Ok(());
        }
        if let Some(i) = stack.iter().position(|o| o == s) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(s.to_string());
            return Err(format!("depends_on has a cycle: {}", cycle.join(" -> ")));
        }
        let svc = p.services.get(s).ok_or_else(|| format!("no service {s} in the project"))?;
        stack.push(s.to_string());
        let mut deps: Vec<&String> = svc.depends_on.keys().filter(|d| p.services.contains_key(*d)).collect();
        if let Some(other) = svc.network_mode.as_deref().and_then(|m| m.strip_prefix("service:")) {
            deps.push(p.services.get_key_value(other).map(|(k, _)| k).ok_or("network_mode service missing")?);
        }
        for d in deps {
            visit(p, d, stack, out)?;
        }
        stack.pop();
        out.push(s.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    for s in wanted {
        visit(p, s, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// Compose splits a string `command` / `entrypoint` like a shell does, without running one.
fn shell_words(c: StrOrList) -> Result<Vec<String>> {
    let s = match c {
        StrOrList::Many(v) => return Ok(v),
        StrOrList::One(s) => s,
    };
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("command has an unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("command ends in a backslash".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("command has an unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next().ok_or("command ends in a backslash")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// `rel` inside `dir`: relative, without `..`, and still inside once symlinks
/// are followed.
pub fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir | Component::Prefix(_))) {
        return Err("must be a path inside project_dir, without ..".into());
    }
    let full = dir.join(p);
    match full.canonicalize() {
        Ok(real) if !real.starts_with(dir) => Err("leads out of project_dir through a symlink".into()),
        _ => Ok(full),
    }
}

/// A host file of at most `MAX_FILE_BYTES`.
pub fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut buf)?;
    if buf.len() > MAX_FILE_BYTES {
        return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("more than {MAX_FILE_BYTES} bytes")));
    }
    String::from_utf8(buf).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// An I/O error's kind, never the OS's text with the path in it.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::FileTooLarge => format!("larger than {MAX_FILE_BYTES} bytes"),
        std::io::ErrorKind::InvalidData => "not UTF-8 text".into(),
        k => format!("cannot be read ({k})"),
    }
}

/// A `.env` / `env_file`: `KEY=VALUE` lines, `#` comments, `export ` allowed,
/// values optionally in single or double quotes. Errors name the line only.
pub fn dotenv(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {} is not KEY=VALUE", i + 1));
        };
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
            return Err(format!("line {} has an invalid variable name", i + 1));
        }
        let v = v.trim();
        let v = match (v.chars().next(), v.len()) {
            (Some(q @ ('"' | '\'')), n) if n >= 2 && v.ends_with(q) => &v[1..n - 1],
            _ => v.split(" #").next().unwrap_or_default().trim_end(),
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load(yaml: &str, v: &HashMap<String, String>) -> Result<Project> {
        project(parse_yaml(yaml, v, Origin::Inline)?, &Context::inline(v, "p"))
    }

    #[test]
    fn interpolation_uses_only_the_callers_variables() {
        std::env::set_var("DCD_TEST_SECRET_FROM_ENV", "leak");
        let v = vars(&[("TAG", "1.2"), ("EMPTY", "")]);
        let p = load(
            "services:\n  a:\n    image: \"img:${TAG}\"\n    environment:\n      X: ${EMPTY:-dflt}\n      Y: ${EMPTY-dflt}\n      Z: ${NOPE:-z}\n      D: $$HOME\n      S: \"${DCD_TEST_SECRET_FROM_ENV}\"\n",
            &v,
        )
        .unwrap();
        let a = &p.services["a"];
        assert_eq!(a.image, "img:1.2");
        assert_eq!(a.environment["X"], "dflt");
        assert_eq!(a.environment["Y"], "");
        assert_eq!(a.environment["Z"], "z");
        assert_eq!(a.environment["D"], "$HOME");
        assert_eq!(a.environment["S"], "", "the process environment is never read");
        let e = load("services:\n  a:\n    image: ${IMG:?set IMG please}\n", &v).unwrap_err();
        assert!(e.contains("IMG") && e.contains("set IMG please"), "{e}");
    }

    #[test]
    fn merge_keys_extensions_and_profiles() {
        let yaml = "x-common: &common\n  image: img\n  restart: always\nservices:\n  a:\n    <<: *common\n    x-note: hi\n  b:\n    <<: *common\n    profiles: [debug]\n";
        let p = load(yaml, &HashMap::new()).unwrap();
        assert_eq!(p.services.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.services["a"].restart.as_deref(), Some("always"));
        let doc = parse_yaml(yaml, &HashMap::new(), Origin::Inline).unwrap();
        let (debug, vars) = (["debug".to_string()], HashMap::new());
        let cx = Context { profiles: &debug, ..Context::inline(&vars, "p") };
        assert_eq!(project(doc, &cx).unwrap().services.len(), 2);
    }

    #[test]
    fn unsupported_keys_name_key_and_service() {
        for (yaml, want) in [
            ("services:\n  web:\n    image: i\n    secrets: [s]\n", "service web: key \"secrets\""),
            ("services:\n  web:\n    build: .\n", "service web: build is not supported"),
            ("services:\n  web:\n    image: i\n    extends: {service: x}\n", "service web: key \"extends\""),
            ("services:\n  web:\n    image: i\n    develop: {}\n", "key \"develop\""),
            ("include: [a.yaml]\nservices: {}\n", "top-level key \"include\""),
            ("configs: {}\nservices: {}\n", "top-level key \"configs\""),
            ("services:\n  web:\n    image: i\n    deploy: {placement: {}}\n", "service web"),
            ("services:\n  a: {image: i, depends_on: [b]}\n  b: {image: i, depends_on: [a]}\n", "cycle"),
            ("services:\n  a: {image: i, depends_on: [zz]}\n", "depends on zz"),
            ("services:\n  a: {image: i, networks: [nope]}\n", "network nope"),
            ("name: Bad_Name\nservices: {}\n", "project name"),
            ("services:\n  a: {image: i}\n  a: {image: j}\n", "uplicate"),
            ("services:\n  a: {image: i, env_file: .env}\n", "env_file needs a project_dir"),
            ("- just\n- a list\n", "mapping"),
            ("services: [\n", "compose file"),
        ] {
            let e = load(yaml, &HashMap::new()).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let p = load("services:\n  web:\n    image: i\n    build: .\n", &HashMap::new()).unwrap();
        assert!(p.warnings[0].contains("build ignored"));
    }

    #[test]
    fn hostile_yaml_stays_within_budget() {
        let laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
        assert!(parse_yaml(laughs, &HashMap::new(), Origin::Inline).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_yaml(&deep, &HashMap::new(), Origin::Inline).is_err());
        let block_deep: String = (0..10_000).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert!(parse_yaml(&block_deep, &HashMap::new(), Origin::Inline).is_err());
        let big = format!("x: \"{}\"\n", "a".repeat(10 << 20));
        assert!(parse_yaml(&big, &HashMap::new(), Origin::Inline).unwrap_err().contains("more than"));
    }

    #[test]
    fn host_file_errors_do_not_quote_content() {
        let e = parse_yaml("root:$6$secret:19000:0:99999:7:::\n  bad: [", &HashMap::new(), Origin::Host).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        let e = parse_yaml("a: @secret\n", &HashMap::new(), Origin::Host).unwrap_err();
        assert_eq!(e, "compose file: unexpected character: `…' at line 1 column 4");
        let e = parse_yaml("a: 1\nsecret: 1\nsecret: 2\n", &HashMap::new(), Origin::Host).unwrap_err();
        assert_eq!(e, "compose file: duplicate key \"…\" at line 3 column 1");
        let doc = parse_yaml("\"root:$6$secret::\"\n", &HashMap::new(), Origin::Host).unwrap();
        let vars = HashMap::new();
        let cx = Context { origin: Origin::Host, ..Context::inline(&vars, "p") };
        let e = project(doc, &cx).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        let doc =
            parse_yaml("services:\n  a:\n    image: i\n    privileged: \"secret\"\n", &HashMap::new(), Origin::Host)
                .unwrap();
        let e = project(doc, &cx).unwrap_err();
        assert!(e.contains("service a") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn shapes_normalise() {
        let p = load(
            "services:\n  a:\n    image: i\n    command: echo 'a b' \"c\\\"d\"\n    environment: [A=1, B]\n    labels: [x=y]\n    depends_on:\n      b: {condition: service_healthy}\n    networks:\n      n: {aliases: [api]}\n    deploy: {replicas: 2, resources: {limits: {memory: 64m, cpus: '0.5', pids: 10}}}\n  b: {image: i}\nnetworks:\n  n: {}\n",
            &vars(&[("B", "from-caller")]),
        )
        .unwrap();
        let a = &p.services["a"];
        assert_eq!(a.command.as_deref().unwrap(), ["echo", "a b", "c\"d"]);
        assert_eq!(a.environment["B"], "from-caller");
        assert_eq!(a.labels["x"], "y");
        assert_eq!(a.depends_on["b"].condition, Condition::ServiceHealthy);
        assert_eq!(a.networks["n"].aliases, ["api"]);
        assert_eq!((a.replicas, a.mem_limit.as_deref(), a.pids_limit), (2, Some("64m"), Some(10)));
        assert!(p.services["b"].networks.contains_key("default"));
        assert_eq!(order(&p, &["a".into()]).unwrap(), ["b", "a"]);
    }

    #[test]
    fn dotenv_and_paths() {
        let e = dotenv("# c\nA=1\nexport B=\"two words\"\nC='x' \nD=v # note\n").unwrap();
        assert_eq!(e, [("A", "1"), ("B", "two words"), ("C", "x"), ("D", "v")].map(|(k, v)| (k.into(), v.into())));
        assert!(dotenv("root:x:0:0").unwrap_err().contains("line 1"));
        let dir = Path::new("/tmp");
        assert!(inside(dir, "../etc/passwd").is_err());
        assert!(inside(dir, "/etc/passwd").is_err());
        assert!(inside(dir, "a/b.env").is_ok());
        assert_eq!(project_from_dir("/srv/My_App"), "my_app");
        assert!(valid_project("a-b_1") && !valid_project("-a") && !valid_project("A"));
    }
}
