//! The provisioning spec (`provision_container.spec`) and its mapping to the
//! Engine API create body: the fields of the Python dcd (spec §7.4), applied
//! as Python meant them to be (§7.8), plus the docker-py host-config
//! vocabulary fleet users ask for. Unknown keys are ignored, as in Python.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::ids::{check_image, name_error, valid_name};
use crate::labels::managed_labels;

/// Bounds on what one spec may ask for, so a hostile request cannot make us
/// build an unbounded body.
const MAX_ENTRIES: usize = 256;
const MAX_STRING: usize = 16 * 1024;

fn bad(msg: String) -> Error {
    Error::Params(msg)
}

/// A string or a list of strings (`command`, `entrypoint`, `dns`, healthcheck `test`).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Args {
    One(String),
    Many(Vec<String>),
}

/// An int or a string (ports, sizes, durations).
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

/// A port as an object, or in the docker CLI's form (`"8080:80/tcp"`,
/// `"127.0.0.1:8080:80"`, `"80"`).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum PortEntry {
    Text(String),
    Spec {
        container_port: IntOrStr,
        #[serde(default)]
        host_port: Option<IntOrStr>,
        #[serde(default)]
        host_ip: Option<String>,
        #[serde(default)]
        protocol: Option<String>,
    },
}

/// One published port, normalised.
struct Port {
    container: String,
    protocol: String,
    host: Option<String>,
    host_ip: Option<String>,
}

impl PortEntry {
    fn normalise(&self) -> Result<Port> {
        let port = match self {
            PortEntry::Spec { container_port, host_port, host_ip, protocol } => Port {
                container: container_port.text(),
                protocol: protocol.clone().unwrap_or_else(|| "tcp".into()),
                host: host_port.as_ref().map(IntOrStr::text),
                host_ip: host_ip.clone(),
            },
            PortEntry::Text(s) => {
                let (ports, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
                let parts: Vec<&str> = ports.split(':').collect();
                let nonempty = |p: &str| (!p.is_empty()).then(|| p.to_string());
                let (host_ip, host, container) = match parts.as_slice() {
                    [c] => (None, None, c),
                    [h, c] => (None, nonempty(h), c),
                    [ip, h, c] => (nonempty(ip), nonempty(h), c),
                    _ => return Err(bad(format!("ports: {s:?} is not [ip:][host:]container[/proto]"))),
                };
                Port { container: container.to_string(), protocol: protocol.into(), host, host_ip }
            }
        };
        if port.container.parse::<u16>().is_err() {
            return Err(bad(format!("ports: container port {:?} is not a port number", port.container)));
        }
        if let Some(h) = &port.host {
            if h.parse::<u16>().is_err() {
                return Err(bad(format!("ports: host port {h:?} is not a port number")));
            }
        }
        if let Some(ip) = &port.host_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad(format!("ports: host ip {ip:?} is not an IP address")));
            }
        }
        if !matches!(port.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad(format!("ports: protocol {:?} is not tcp, udp or sctp", port.protocol)));
        }
        Ok(port)
    }
}

#[derive(Deserialize, Debug)]
struct VolumeSpec {
    source: String,
    target: String,
    #[serde(default)]
    read_only: bool,
}

/// `{"name": ..., "soft": n, "hard": n}`, or in a map `{"nofile": n}` /
/// `{"nofile": {"soft": n, "hard": n}}`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Ulimits {
    List(Vec<Ulimit>),
    Map(BTreeMap<String, UlimitValue>),
}

#[derive(Deserialize, Debug)]
struct Ulimit {
    name: String,
    soft: i64,
    #[serde(default)]
    hard: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum UlimitValue {
    Both(i64),
    Pair { soft: i64, hard: i64 },
}

/// `["host:ip"]` or `{"host": "ip"}`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum HostList {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

/// `["/run", "/tmp:size=64m"]` or `{"/tmp": "size=64m"}`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Tmpfs {
    List(Vec<String>),
    Map(BTreeMap<String, String>),
}

/// `"/dev/i2c-1[:/dev/i2c-1[:rwm]]"` or an object.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Device {
    Text(String),
    Spec {
        path_on_host: String,
        #[serde(default)]
        path_in_container: Option<String>,
        #[serde(default)]
        cgroup_permissions: Option<String>,
    },
}

#[derive(Deserialize, Debug)]
struct LogConfig {
    #[serde(alias = "driver")]
    r#type: String,
    #[serde(default, alias = "options")]
    config: BTreeMap<String, String>,
}

#[derive(Deserialize, Debug)]
struct Healthcheck {
    test: Args,
    #[serde(default)]
    interval: Option<IntOrStr>,
    #[serde(default)]
    timeout: Option<IntOrStr>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    start_period: Option<IntOrStr>,
}

/// `ContainerProvisionSpec`.
#[derive(Deserialize, Debug)]
pub struct ContainerSpec {
    image: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Remove an existing container of the same name first (idempotent provisioning).
    #[serde(default)]
    pub replace: bool,
    /// When to pull the image, as `docker run --pull` says it.
    #[serde(default)]
    pub pull: Pull,
    #[serde(default)]
    command: Option<Args>,
    #[serde(default)]
    entrypoint: Option<Args>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    labels: Map<String, Value>,
    #[serde(default)]
    ports: Vec<PortEntry>,
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
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    privileged: bool,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
    #[serde(default)]
    security_opt: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    extra_hosts: Option<HostList>,
    #[serde(default)]
    ulimits: Option<Ulimits>,
    #[serde(default)]
    log_config: Option<LogConfig>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    shm_size: Option<IntOrStr>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    tmpfs: Option<Tmpfs>,
    #[serde(default)]
    devices: Vec<Device>,
    #[serde(default)]
    pids_limit: Option<i64>,
    #[serde(default)]
    cpus: Option<f64>,
}

fn yes() -> bool {
    true
}

/// When `provision_container` pulls its image.
#[derive(Deserialize, Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// When the host does not have it (`docker run`'s default).
    #[default]
    Missing,
    /// Every time, for the registry's newest.
    Always,
    /// Never: a missing image fails.
    Never,
}

impl ContainerSpec {
    /// The Engine API create body.
    pub fn create_body(&self) -> Result<Value> {
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
            labels.extend(managed_labels());
        }
        let mut exposed = Map::new();
        let mut bindings = Map::new();
        for p in &self.ports {
            let p = p.normalise()?;
            let key = format!("{}/{}", p.container, p.protocol);
            exposed.insert(key.clone(), json!({}));
            let mut binding = Map::new();
            if let Some(h) = p.host {
                binding.insert("HostPort".into(), json!(h));
            }
            if let Some(ip) = p.host_ip {
                binding.insert("HostIp".into(), json!(ip));
            }
            if let Value::Array(list) = bindings.entry(key).or_insert_with(|| json!([])) {
                list.push(Value::Object(binding));
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
            "Privileged": self.privileged,
            "ReadonlyRootfs": self.read_only,
            "CapAdd": self.cap_add,
            "CapDrop": self.cap_drop,
            "SecurityOpt": self.security_opt,
            "Dns": self.dns,
        });
        if let Some(policy) = &self.restart_policy {
            if !matches!(policy.as_str(), "no" | "always" | "unless-stopped" | "on-failure") {
                return Err(bad(format!(
                    "restart_policy {policy:?} is not one of no, always, unless-stopped, on-failure"
                )));
            }
            host["RestartPolicy"] = json!({"Name": policy});
        }
        if let Some(m) = &self.mem_limit {
            host["Memory"] = json!(size("mem_limit", m)?);
        }
        if let Some(m) = &self.shm_size {
            host["ShmSize"] = json!(size("shm_size", m)?);
        }
        if let Some(q) = self.cpu_quota {
            host["CpuQuota"] = json!(q);
        }
        if let Some(c) = self.cpus {
            if !(c > 0.0 && c <= 1024.0) {
                return Err(bad(format!("cpus {c} must be between 0 and 1024")));
            }
            host["NanoCpus"] = json!((c * 1e9) as i64);
        }
        if let Some(p) = self.pids_limit {
            host["PidsLimit"] = json!(p);
        }
        if let Some(h) = &self.extra_hosts {
            host["ExtraHosts"] = json!(match h {
                HostList::List(l) => l.clone(),
                HostList::Map(m) => m.iter().map(|(k, v)| format!("{k}:{v}")).collect(),
            });
        }
        if let Some(u) = &self.ulimits {
            host["Ulimits"] = json!(match u {
                Ulimits::List(l) => l
                    .iter()
                    .map(|u| json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard.unwrap_or(u.soft)}))
                    .collect::<Vec<_>>(),
                Ulimits::Map(m) => m
                    .iter()
                    .map(|(name, v)| match v {
                        UlimitValue::Both(n) => json!({"Name": name, "Soft": n, "Hard": n}),
                        UlimitValue::Pair { soft, hard } => json!({"Name": name, "Soft": soft, "Hard": hard}),
                    })
                    .collect(),
            });
        }
        if let Some(l) = &self.log_config {
            host["LogConfig"] = json!({"Type": l.r#type, "Config": l.config});
        }
        if let Some(t) = &self.tmpfs {
            host["Tmpfs"] = json!(match t {
                Tmpfs::Map(m) => m.clone(),
                Tmpfs::List(l) => l
                    .iter()
                    .map(|e| {
                        let (path, opts) = e.split_once(':').unwrap_or((e, ""));
                        (path.to_string(), opts.to_string())
                    })
                    .collect(),
            });
        }
        if !self.devices.is_empty() {
            host["Devices"] = json!(self.devices.iter().map(device).collect::<Vec<_>>());
        }
        let mut body = json!({
            "Image": self.image,
            "Env": self.environment.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "Labels": labels,
            "ExposedPorts": exposed,
            "HostConfig": host,
        });
        if let Some(c) = &self.command {
            body["Cmd"] = json!(match c {
                // A single string runs through the shell, as docker-py and the CLI do.
                Args::One(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
                Args::Many(v) => v.clone(),
            });
        }
        if let Some(e) = &self.entrypoint {
            body["Entrypoint"] = json!(match e {
                Args::One(s) => vec![s.clone()],
                Args::Many(v) => v.clone(),
            });
        }
        for (field, value) in [("User", &self.user), ("WorkingDir", &self.working_dir), ("Hostname", &self.hostname)] {
            if let Some(v) = value {
                body[field] = json!(v);
            }
        }
        if let Some(h) = &self.healthcheck {
            let test = match &h.test {
                Args::One(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                Args::Many(v) => v.clone(),
            };
            let mut hc = json!({"Test": test});
            for (field, value) in [("Interval", &h.interval), ("Timeout", &h.timeout), ("StartPeriod", &h.start_period)]
            {
                if let Some(v) = value {
                    hc[field] = json!(duration_ns(field, v)?);
                }
            }
            if let Some(r) = h.retries {
                hc["Retries"] = json!(r);
            }
            body["Healthcheck"] = hc;
        }
        if let Some(net) = &self.network {
            body["HostConfig"]["NetworkMode"] = json!(net);
            if !matches!(net.as_str(), "host" | "none" | "bridge") && !net.starts_with("container:") {
                body["NetworkingConfig"] = json!({"EndpointsConfig": {net: {}}});
            }
        }
        Ok(body)
    }

    fn check_bounds(&self) -> Result<()> {
        check_image("spec.image", &self.image).map_err(bad)?;
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return Err(bad(name_error("spec.name", name)));
            }
        }
        let counts = [
            ("environment", self.environment.len()),
            ("labels", self.labels.len()),
            ("ports", self.ports.len()),
            ("volumes", self.volumes.len()),
            ("devices", self.devices.len()),
            ("cap_add", self.cap_add.len()),
            ("dns", self.dns.len()),
        ];
        if let Some((field, n)) = counts.iter().find(|(_, n)| *n > MAX_ENTRIES) {
            return Err(bad(format!("spec.{field} has {n} entries, more than {MAX_ENTRIES}")));
        }
        let too_long = self
            .environment
            .iter()
            .flat_map(|(k, v)| [k, v])
            .chain(self.labels.keys())
            .chain(self.volumes.iter().flat_map(|v| [&v.source, &v.target]))
            .any(|s| s.len() > MAX_STRING);
        if too_long {
            return Err(bad(format!("spec holds a string longer than {MAX_STRING} bytes")));
        }
        Ok(())
    }
}

fn device(d: &Device) -> Value {
    let (host, container, perms) = match d {
        Device::Text(s) => {
            let mut parts = s.splitn(3, ':');
            let host = parts.next().unwrap_or_default().to_string();
            let container = parts.next().map(String::from);
            let perms = parts.next().map(String::from);
            (host, container, perms)
        }
        Device::Spec { path_on_host, path_in_container, cgroup_permissions } => {
            (path_on_host.clone(), path_in_container.clone(), cgroup_permissions.clone())
        }
    };
    json!({"PathOnHost": host, "PathInContainer": container.unwrap_or_else(|| host.clone()),
           "CgroupPermissions": perms.unwrap_or_else(|| "rwm".into())})
}

fn size(field: &str, v: &IntOrStr) -> Result<i64> {
    parse_size(&v.text()).ok_or_else(|| bad(format!("{field} {:?} is not a size like 512m, 1g or 2048k", v.text())))
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

/// Nanoseconds from an int (already ns, as the Engine API takes) or a Go-style
/// duration string (`500ms`, `30s`, `1m`, `2h`).
fn duration_ns(field: &str, v: &IntOrStr) -> Result<i64> {
    let err = || bad(format!("healthcheck {field} {:?} is not a duration like 30s or 500ms", v.text()));
    match v {
        IntOrStr::Int(n) => i64::try_from(*n).map_err(|_| err()),
        IntOrStr::Str(s) => crate::time::duration_ns(s).ok_or_else(err),
    }
}

pub fn schema() -> Value {
    let str_or_list = json!({"type": ["string", "array", "null"], "items": {"type": "string"}, "default": null});
    // Described only where the name leaves something to say (issue 16: presence size).
    let opt_str = json!({"type": ["string", "null"], "default": null});
    let strings = json!({"type": "array", "items": {"type": "string"}, "default": []});
    let described = |v: &Value, d: &str| {
        let mut v = v.clone();
        v["description"] = d.into();
        v
    };
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}, "default": {}});
    let flag = |d: &str| json!({"type": "boolean", "default": false, "description": d});
    json!({"type": "object",
      "description": "ContainerProvisionSpec fields.",
      "properties": {
        "image": {"type": "string"},
        "name": opt_str,
        "replace": flag("Remove an existing container of this name first."),
        "pull": {"type": "string", "enum": ["missing", "always", "never"], "default": "missing",
                 "description": "missing: when the host lacks it; never: a missing image fails. A pull \
                                 longer than wait makes a job."},
        "command": str_or_list, "entrypoint": str_or_list,
        "environment": string_map, "labels": string_map,
        "ports": {"type": "array", "default": [],
                  "description": "Objects, or strings like \"8080:80/tcp\", \"127.0.0.1:8080:80\".",
                  "items": {"type": ["object", "string"], "properties": {
                      "container_port": {"type": ["integer", "string"]},
                      "host_port": {"type": ["integer", "string", "null"], "default": null},
                      "host_ip": {"type": ["string", "null"], "default": null},
                      "protocol": {"type": "string", "default": "tcp"}}, "required": ["container_port"]}},
        "volumes": {"type": "array", "default": [], "items": {"type": "object", "properties": {
            "source": {"type": "string", "description": "Volume name, or host path (subject to policy)."},
            "target": {"type": "string"},
            "read_only": {"type": "boolean", "default": false}}, "required": ["source", "target"]}},
        "network": opt_str,
        "detach": {"type": "boolean", "default": true},
        "auto_remove": flag("Remove it when it exits."),
        "restart_policy": {"type": ["string", "null"], "enum": ["no", "always", "unless-stopped", "on-failure", null], "default": null},
        "mem_limit": {"type": ["string", "integer", "null"], "default": null, "description": "512m, 1g, 2048k or bytes."},
        "cpu_quota": {"type": ["integer", "null"], "default": null},
        "cpus": {"type": ["number", "null"], "default": null, "description": "e.g. 0.5."},
        "device_connect_labels": {"type": "boolean", "default": true},
        "user": described(&opt_str, "name or uid[:gid]."),
        "working_dir": opt_str,
        "hostname": opt_str,
        "privileged": flag("Subject to policy."),
        "cap_add": described(&strings, "Subject to policy."),
        "cap_drop": strings,
        "security_opt": described(&strings, "Subject to policy."),
        "dns": strings,
        "extra_hosts": {"type": ["object", "array", "null"], "default": null, "description": "{\"host\": \"ip\"} or [\"host:ip\"]."},
        "ulimits": {"type": ["object", "array", "null"], "default": null, "description": "{\"nofile\": 1024} or [{\"name\", \"soft\", \"hard\"}]."},
        "log_config": {"type": ["object", "null"], "default": null, "description": "{\"type\": \"json-file\", \"config\": {\"max-size\": \"10m\"}}."},
        "healthcheck": {"type": ["object", "null"], "default": null, "description": "{\"test\": [\"CMD\", ...], \"interval\": \"30s\", \"timeout\", \"retries\", \"start_period\"}."},
        "shm_size": {"type": ["string", "integer", "null"], "default": null},
        "read_only": flag("Read-only root filesystem."),
        "tmpfs": {"type": ["object", "array", "null"], "default": null, "description": "{\"/tmp\": \"size=64m\"} or [\"/run\"]."},
        "devices": {"type": "array", "default": [], "items": {"type": ["string", "object"]}, "description": "\"/dev/i2c-1[:/dev/i2c-1[:rwm]]\" (subject to policy)."},
        "pids_limit": {"type": ["integer", "null"], "default": null}},
      "required": ["image"]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::MANAGED_LABEL;

    fn body(v: Value) -> Result<Value> {
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
    fn python_fields_map_as_intended() {
        let b = body(json!({"image": "a", "command": "echo hi", "environment": {"A": "1"},
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
    fn docker_py_vocabulary_maps() {
        let b = body(json!({"image": "a", "ports": ["8080:80/tcp", "127.0.0.1:9000:90", "7000"],
            "user": "1000:1000", "working_dir": "/w", "hostname": "h", "cap_add": ["NET_ADMIN"], "cap_drop": ["ALL"],
            "dns": ["1.1.1.1"], "extra_hosts": {"db": "10.0.0.2"}, "ulimits": {"nofile": {"soft": 1024, "hard": 2048}},
            "log_config": {"driver": "json-file", "options": {"max-size": "10m"}},
            "healthcheck": {"test": "true", "interval": "30s", "timeout": 5_000_000_000u64, "retries": 3},
            "shm_size": "64m", "read_only": true, "tmpfs": ["/run:size=8m"], "devices": ["/dev/i2c-1"],
            "pids_limit": 100, "cpus": 0.5}))
        .unwrap();
        let h = &b["HostConfig"];
        assert_eq!(h["PortBindings"]["80/tcp"], json!([{"HostPort": "8080"}]));
        assert_eq!(h["PortBindings"]["90/tcp"], json!([{"HostPort": "9000", "HostIp": "127.0.0.1"}]));
        assert_eq!(h["PortBindings"]["7000/tcp"], json!([{}]));
        assert_eq!(
            (b["User"].as_str(), b["WorkingDir"].as_str(), b["Hostname"].as_str()),
            (Some("1000:1000"), Some("/w"), Some("h"))
        );
        assert_eq!((h["CapAdd"].clone(), h["CapDrop"].clone()), (json!(["NET_ADMIN"]), json!(["ALL"])));
        assert_eq!(h["ExtraHosts"], json!(["db:10.0.0.2"]));
        assert_eq!(h["Ulimits"], json!([{"Name": "nofile", "Soft": 1024, "Hard": 2048}]));
        assert_eq!(h["LogConfig"], json!({"Type": "json-file", "Config": {"max-size": "10m"}}));
        assert_eq!(
            b["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "true"], "Interval": 30_000_000_000i64, "Timeout": 5_000_000_000i64, "Retries": 3})
        );
        assert_eq!((h["ShmSize"].clone(), h["ReadonlyRootfs"].clone()), (json!(64 << 20), json!(true)));
        assert_eq!(h["Tmpfs"], json!({"/run": "size=8m"}));
        assert_eq!(
            h["Devices"],
            json!([{"PathOnHost": "/dev/i2c-1", "PathInContainer": "/dev/i2c-1", "CgroupPermissions": "rwm"}])
        );
        assert_eq!((h["PidsLimit"].clone(), h["NanoCpus"].clone()), (json!(100), json!(500_000_000)));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            json!({"name": "x"}),
            json!({"image": 5}),
            json!({"image": ""}),
            json!({"image": "../../info?x=1"}),
            json!({"image": "a", "name": "../x"}),
            json!({"image": "a", "name": "a?b"}),
            json!({"image": "a", "environment": (0..300).map(|i| (format!("K{i}"), json!("v"))).collect::<Map<_, _>>()}),
            json!({"image": "a", "ports": [{"container_port": "http"}]}),
            json!({"image": "a", "ports": ["1:2:3:4"]}),
            json!({"image": "a", "ports": ["nope:80"]}),
            json!({"image": "a", "restart_policy": "sometimes"}),
            json!({"image": "a", "mem_limit": "lots"}),
            json!({"image": "a", "cpus": -1.0}),
            json!({"image": "a", "healthcheck": {"test": "x", "interval": "soon"}}),
        ] {
            assert!(matches!(body(bad.clone()), Err(Error::Params(_))), "{bad}");
        }
    }
}
