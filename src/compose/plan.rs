//! A checked project turned into what the engine is sent: network and volume
//! create bodies, and per service the same container create body that
//! `provision_container` builds (through `ContainerSpec`), with compose's
//! names, labels and a hash of the configuration.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};

use super::file::{Mount, Port, Project, Service};
use crate::spec::ContainerSpec;

pub const PROJECT: &str = "com.docker.compose.project";
pub const SERVICE: &str = "com.docker.compose.service";
pub const NUMBER: &str = "com.docker.compose.container-number";
pub const ONEOFF: &str = "com.docker.compose.oneoff";
pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
pub const NETWORK: &str = "com.docker.compose.network";
pub const VOLUME: &str = "com.docker.compose.volume";
pub const DEPENDS_ON: &str = "com.docker.compose.depends_on";
pub const HASH: &str = "com.docker.compose.config-hash";

type Result<T> = std::result::Result<T, String>;

/// A network or volume of the project.
#[derive(Debug, Clone)]
pub struct Object {
    /// The key in the file.
    pub key: String,
    /// The engine's name.
    pub name: String,
    /// `None` for an external one: it must exist, and is never created or removed.
    pub body: Option<Value>,
}

/// One service, ready to create.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub name: String,
    pub replicas: u32,
    pub container_name: Option<String>,
    /// The create body without the per-container labels (number, hash).
    pub body: Value,
    /// Networks joined after create (the engine takes one at create), with aliases.
    pub more_networks: Vec<(String, Vec<String>)>,
    pub hash: String,
    /// `service:<name>` references in network_mode, pid and ipc, resolved to a
    /// container of that service at create time.
    pub joins: Vec<(&'static str, String)>,
}

impl ServicePlan {
    pub fn container_name(&self, project: &str, n: u32) -> String {
        self.container_name.clone().unwrap_or_else(|| format!("{project}-{}-{n}", self.name))
    }

    /// The body for replica `n`.
    pub fn body_for(&self, n: u32) -> Value {
        let mut b = self.body.clone();
        b["Labels"][NUMBER] = json!(n.to_string());
        b["Labels"][HASH] = json!(self.hash);
        b
    }
}

pub struct Plan {
    pub networks: Vec<Object>,
    pub volumes: Vec<Object>,
    pub services: BTreeMap<String, ServicePlan>,
}

/// Where the project lives, for compose's labels and relative paths.
pub struct Where<'a> {
    /// The real project directory on the host, when there is one.
    pub dir: Option<&'a Path>,
    /// What the labels (and `compose_down(project_dir=...)`) call it.
    pub working_dir: &'a str,
    pub config_files: &'a str,
}

pub fn plan(p: &Project, at: &Where) -> Result<Plan> {
    let mut networks = Vec::new();
    let used_default = p.services.values().any(|s| s.networks.contains_key("default"));
    let mut declared = p.networks.clone();
    if used_default {
        declared.entry("default".into()).or_default();
    }
    for (key, n) in &declared {
        let name = n.name.clone().unwrap_or_else(|| format!("{}_{key}", p.name));
        let body = (!n.external).then(|| {
            let mut labels = labels_of(n.labels.as_ref());
            labels.insert(PROJECT.into(), json!(p.name));
            labels.insert(NETWORK.into(), json!(key));
            labels.extend(crate::labels::managed_labels());
            json!({"Name": name, "Driver": n.driver.as_deref().unwrap_or("bridge"), "Internal": n.internal,
                   "Attachable": n.attachable, "CheckDuplicate": true, "Labels": labels,
                   "Options": n.driver_opts.iter().map(|(k, v)| (k.clone(), json!(v.0))).collect::<Map<_, _>>()})
        });
        networks.push(Object { key: key.clone(), name, body });
    }
    let mut volumes = Vec::new();
    for (key, v) in &p.volumes {
        let name = v.name.clone().unwrap_or_else(|| format!("{}_{key}", p.name));
        let body = (!v.external).then(|| {
            let mut labels = labels_of(v.labels.as_ref());
            labels.insert(PROJECT.into(), json!(p.name));
            labels.insert(VOLUME.into(), json!(key));
            labels.extend(crate::labels::managed_labels());
            json!({"Name": name, "Driver": v.driver.as_deref().unwrap_or("local"), "Labels": labels,
                   "DriverOpts": v.driver_opts.iter().map(|(k, v)| (k.clone(), json!(v.0))).collect::<Map<_, _>>()})
        });
        volumes.push(Object { key: key.clone(), name, body });
    }
    let mut services = BTreeMap::new();
    for (name, s) in &p.services {
        let sp = service(p, name, s, at, &networks, &volumes).map_err(|e| format!("service {name}: {e}"))?;
        services.insert(name.clone(), sp);
    }
    Ok(Plan { networks, volumes, services })
}

fn labels_of(l: Option<&super::file::MapOrList>) -> Map<String, Value> {
    l.map(|l| l.pairs('=')).unwrap_or_default().into_iter().map(|(k, v)| (k, json!(v.unwrap_or_default()))).collect()
}

fn service(p: &Project, name: &str, s: &Service, at: &Where, nets: &[Object], vols: &[Object]) -> Result<ServicePlan> {
    let mut labels: Map<String, Value> = s.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut binds = Vec::new();
    let mut tmpfs: Vec<String> = s.tmpfs.clone();
    let mut mounts = Vec::new();
    for m in &s.volumes {
        match mount(m, at.dir, vols)? {
            Mounted::Bind(source, target, ro) => {
                binds.push(json!({"source": source, "target": target, "read_only": ro}))
            }
            Mounted::Tmpfs(t) => tmpfs.push(t),
            Mounted::Anonymous(target) => mounts.push(json!({"Type": "volume", "Target": target})),
        }
    }
    let mut joins = Vec::new();
    let mut resolve_mode = |field: &'static str, mode: &Option<String>| -> Option<String> {
        let mode = mode.as_ref()?;
        match mode.strip_prefix("service:") {
            Some(other) => {
                joins.push((field, other.to_string()));
                // What the policy sees until create time: another container's namespace.
                Some(format!("container:{}-{other}-1", p.name))
            }
            None => Some(mode.clone()),
        }
    };
    let network_mode = resolve_mode("NetworkMode", &s.network_mode);
    let pid = resolve_mode("PidMode", &s.pid);
    let ipc = resolve_mode("IpcMode", &s.ipc);
    // The first network at create time (the engine takes only one there), by priority then name.
    let mut attached: Vec<(&String, &super::file::Attachment)> = s.networks.iter().collect();
    attached.sort_by_key(|(k, a)| (std::cmp::Reverse(a.priority.unwrap_or(0)), (*k).clone()));
    let net_name = |key: &str| {
        nets.iter().find(|n| n.key == key).map(|n| n.name.clone()).ok_or(format!("network {key} is not declared"))
    };
    let mut first_net = None;
    let mut more_networks = Vec::new();
    for (key, a) in &attached {
        let mut aliases = vec![name.to_string()];
        aliases.extend(a.aliases.iter().cloned());
        if a.ipv4_address.is_some() {
            return Err("ipv4_address is not supported".into());
        }
        let full = net_name(key)?;
        if first_net.is_none() {
            first_net = Some((full, aliases));
        } else {
            more_networks.push((full, aliases));
        }
    }
    let restart = s.restart.as_deref().map(|r| r.split_once(':').map_or((r, None), |(n, c)| (n, Some(c))));
    let mut spec = json!({
        "image": s.image,
        "environment": s.environment,
        "labels": labels.clone(),
        "ports": s.ports.iter().map(port).collect::<Result<Vec<_>>>()?,
        "volumes": binds,
        "privileged": s.privileged,
        "cap_add": s.cap_add,
        "cap_drop": s.cap_drop,
        "security_opt": s.security_opt,
        "dns": s.dns,
        "read_only": s.read_only,
        "devices": s.devices,
        "extra_hosts": s.extra_hosts,
    });
    let mut set = |k: &str, v: Value| {
        if !v.is_null() {
            spec[k] = v;
        }
    };
    set("command", json!(s.command));
    set("entrypoint", json!(s.entrypoint));
    set("restart_policy", json!(restart.map(|r| r.0)));
    set("mem_limit", json!(s.mem_limit.as_deref().map(size)));
    set("shm_size", json!(s.shm_size.as_deref().map(size)));
    if let Some(c) = &s.cpus {
        set("cpus", json!(c.parse::<f64>().map_err(|_| format!("cpus {c:?} is not a number"))?));
    }
    set("pids_limit", json!(s.pids_limit));
    set("user", json!(s.user));
    set("working_dir", json!(s.working_dir));
    set("hostname", json!(s.hostname));
    set("ulimits", s.ulimits.clone().unwrap_or(Value::Null));
    if !tmpfs.is_empty() {
        set("tmpfs", json!(tmpfs));
    }
    if let Some(l) = &s.logging {
        let options: BTreeMap<&String, &String> = l.options.iter().map(|(k, v)| (k, &v.0)).collect();
        set("log_config", json!({"type": l.driver.as_deref().unwrap_or("json-file"), "config": options}));
    }
    if let Some(h) = &s.healthcheck {
        let test = match (&h.test, h.disable) {
            (_, true) => json!(["NONE"]),
            (Some(super::file::StrOrList::One(t)), _) => json!(t),
            (Some(super::file::StrOrList::Many(t)), _) => json!(t),
            (None, false) => return Err("healthcheck needs test (or disable: true)".into()),
        };
        let mut hc = json!({"test": test});
        for (k, v) in [("interval", &h.interval), ("timeout", &h.timeout), ("start_period", &h.start_period)] {
            if let Some(d) = v {
                hc[k] = json!(crate::time::duration_ns(d)
                    .ok_or(format!("healthcheck {k} {d:?} is not a duration like 30s or 1m30s"))?);
            }
        }
        if let Some(r) = h.retries {
            hc["retries"] = json!(r);
        }
        set("healthcheck", hc);
    }
    if let Some(mode) = &network_mode {
        set("network", json!(mode));
    } else if let Some((full, _)) = &first_net {
        set("network", json!(full));
    }
    let spec: ContainerSpec = serde_json::from_value(spec).map_err(|e| e.to_string())?;
    let mut body = spec.create_body().map_err(|e| e.to_string())?;
    // What the container spec has no words for.
    let host = &mut body["HostConfig"];
    if let (Some((_, Some(count))), Some(_)) = (restart, &s.restart) {
        let n: i64 = count.parse().map_err(|_| format!("restart {:?} is not on-failure[:count]", s.restart))?;
        host["RestartPolicy"]["MaximumRetryCount"] = json!(n);
    }
    if !mounts.is_empty() {
        host["Mounts"] = json!(mounts);
    }
    if !s.group_add.is_empty() {
        host["GroupAdd"] = json!(s.group_add);
    }
    if !s.sysctls.is_empty() {
        host["Sysctls"] = json!(s.sysctls);
    }
    if let Some(i) = s.init {
        host["Init"] = json!(i);
    }
    if let Some(p) = pid {
        host["PidMode"] = json!(p);
    }
    if let Some(i) = ipc {
        host["IpcMode"] = json!(i);
    }
    for e in &s.expose {
        let key = if e.contains('/') { e.clone() } else { format!("{e}/tcp") };
        body["ExposedPorts"][key] = json!({});
    }
    if let Some(sig) = &s.stop_signal {
        body["StopSignal"] = json!(sig);
    }
    if let Some(g) = &s.stop_grace_period {
        let ns = crate::time::duration_ns(g)
            .ok_or(format!("stop_grace_period {g:?} is not a duration like 10s or 1m30s"))?;
        body["StopTimeout"] = json!(ns / 1_000_000_000);
    }
    if let (None, Some((full, aliases))) = (&network_mode, &first_net) {
        body["NetworkingConfig"] = json!({"EndpointsConfig": {full: {"Aliases": aliases}}});
    }
    // The hash covers all that makes the container what it is, and none of
    // compose's bookkeeping labels, so moving the file does not recreate.
    let hash = fnv_hex(&json!([body, more_networks]).to_string());
    labels = body["Labels"].as_object().cloned().unwrap_or_default();
    labels.insert(PROJECT.into(), json!(p.name));
    labels.insert(SERVICE.into(), json!(name));
    labels.insert(ONEOFF.into(), json!("False"));
    labels.insert(WORKING_DIR.into(), json!(at.working_dir));
    labels.insert(CONFIG_FILES.into(), json!(at.config_files));
    let deps: Vec<String> =
        s.depends_on.iter().map(|(d, dep)| format!("{d}:{}:{}", dep.condition.as_str(), dep.restart)).collect();
    labels.insert(DEPENDS_ON.into(), json!(deps.join(",")));
    body["Labels"] = Value::Object(labels);
    Ok(ServicePlan {
        name: name.to_string(),
        replicas: s.replicas,
        container_name: s.container_name.clone(),
        body,
        more_networks,
        hash,
        joins,
    })
}

enum Mounted {
    /// Source (host path or volume name), target, read-only.
    Bind(String, String, bool),
    Tmpfs(String),
    Anonymous(String),
}

fn mount(m: &Mount, dir: Option<&Path>, vols: &[Object]) -> Result<Mounted> {
    let (kind, source, target, ro) = match m {
        Mount::Short(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => return Ok(Mounted::Anonymous(t.to_string())),
                [s, t] => (*s, *t, ""),
                [s, t, m] => (*s, *t, *m),
                _ => return Err(format!("volume {s:?} is not source:target[:mode]")),
            };
            let mut ro = false;
            for o in mode.split(',').filter(|o| !o.is_empty()) {
                match o {
                    "ro" => ro = true,
                    "rw" => ro = false,
                    other => return Err(format!("volume mode {other:?} is not supported (ro or rw)")),
                }
            }
            let kind = if source.starts_with(['/', '.', '~']) { "bind" } else { "volume" };
            (kind, source.to_string(), target.to_string(), ro)
        }
        Mount::Long(l) => match l.r#type.as_str() {
            "tmpfs" => {
                let mut opts = Vec::new();
                if let Some(t) = &l.tmpfs {
                    if let Some(s) = &t.size {
                        opts.push(format!("size={}", size(&s.0)));
                    }
                    if let Some(m) = &t.mode {
                        opts.push(format!("mode={}", m.0));
                    }
                }
                return Ok(Mounted::Tmpfs(if opts.is_empty() {
                    l.target.clone()
                } else {
                    format!("{}:{}", l.target, opts.join(","))
                }));
            }
            "volume" if l.source.is_none() => return Ok(Mounted::Anonymous(l.target.clone())),
            k @ ("bind" | "volume") => (k, l.source.clone().unwrap_or_default(), l.target.clone(), l.read_only),
            other => return Err(format!("volume type {other:?} is not supported (volume, bind or tmpfs)")),
        },
    };
    if !target.starts_with('/') {
        return Err(format!("volume target {target:?} must be an absolute path"));
    }
    if kind == "volume" {
        let v =
            vols.iter().find(|v| v.key == source).ok_or(format!("volume {source} is not declared under volumes"))?;
        return Ok(Mounted::Bind(v.name.clone(), target, ro));
    }
    let host = if source.starts_with('/') {
        PathBuf::from(&source)
    } else {
        let dir = dir.ok_or(format!("bind {source:?} is relative, and an inline compose_yaml has no directory"))?;
        if source.starts_with('~') {
            return Err(format!("bind {source:?}: ~ is not expanded"));
        }
        dir.join(&source)
    };
    Ok(Mounted::Bind(clean(&host), target, ro))
}

/// `.` parts dropped; `..` kept, for the policy to refuse.
fn clean(p: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => out.push(".."),
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

fn port(p: &Port) -> Result<Value> {
    Ok(match p {
        Port::Short(s) => {
            if s.0.contains('-') {
                return Err(format!("port range {:?} is not supported", s.0));
            }
            json!(s.0)
        }
        Port::Long { target, published, host_ip, protocol, .. } => json!({
            "container_port": target.0, "host_port": published.as_ref().map(|p| &p.0),
            "host_ip": host_ip, "protocol": protocol}),
    })
}

/// Compose's sizes (`64m`, `1gb`, `512M`, bytes) as the container spec reads them.
fn size(s: &str) -> String {
    let l = s.trim().to_ascii_lowercase();
    match l.strip_suffix('b') {
        Some(n) if n.ends_with(['k', 'm', 'g']) => n.to_string(),
        _ => l,
    }
}

/// FNV-1a, 64 bits, as hex: stable across builds (std's hasher is not), and
/// enough to tell a changed configuration from an unchanged one.
pub fn fnv_hex(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::file::{parse_yaml, project, Context, Origin};
    use std::collections::HashMap;

    fn planned(yaml: &str) -> Result<Plan> {
        let vars = HashMap::new();
        let p = project(parse_yaml(yaml, &vars, Origin::Inline)?, &Context::inline(&vars, "proj"))?;
        plan(&p, &Where { dir: None, working_dir: "/dcd/compose/proj", config_files: "compose.yaml" })
    }

    const APP: &str = "services:
  web:
    image: img
    command: httpd -f -p 80
    ports: ['127.0.0.1:8080:80']
    depends_on: {api: {condition: service_healthy}}
    volumes: [data:/data:ro]
    restart: on-failure:3
    stop_grace_period: 1m30s
    init: true
    expose: [81]
  api:
    image: img
    networks: {back: {aliases: [backend]}, default: {}}
    healthcheck: {test: [CMD, 'true'], interval: 1s}
    tmpfs: [/run]
    group_add: ['20']
volumes:
  data: {}
networks:
  back: {internal: true}
";

    #[test]
    fn names_labels_and_bodies() {
        let p = planned(APP).unwrap();
        let nets: Vec<&str> = p.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nets, ["proj_back", "proj_default"]);
        assert_eq!(p.networks[0].body.as_ref().unwrap()["Labels"][NETWORK], "back");
        assert_eq!(p.volumes[0].name, "proj_data");
        let web = &p.services["web"];
        assert_eq!(web.container_name("proj", 1), "proj-web-1");
        let b = web.body_for(1);
        assert_eq!(b["Cmd"], json!(["httpd", "-f", "-p", "80"]));
        assert_eq!(b["HostConfig"]["Binds"], json!(["proj_data:/data:ro"]));
        assert_eq!(b["HostConfig"]["PortBindings"]["80/tcp"], json!([{"HostPort": "8080", "HostIp": "127.0.0.1"}]));
        assert_eq!(b["HostConfig"]["RestartPolicy"], json!({"Name": "on-failure", "MaximumRetryCount": 3}));
        assert_eq!((b["StopTimeout"].clone(), b["HostConfig"]["Init"].clone()), (json!(90), json!(true)));
        assert_eq!(b["ExposedPorts"]["81/tcp"], json!({}));
        assert_eq!(b["HostConfig"]["NetworkMode"], "proj_default");
        assert_eq!(b["NetworkingConfig"]["EndpointsConfig"]["proj_default"]["Aliases"], json!(["web"]));
        let l = &b["Labels"];
        assert_eq!(
            (l[PROJECT].as_str(), l[SERVICE].as_str(), l[NUMBER].as_str()),
            (Some("proj"), Some("web"), Some("1"))
        );
        assert_eq!((l[ONEOFF].as_str(), l[DEPENDS_ON].as_str()), (Some("False"), Some("api:service_healthy:false")));
        assert_eq!(l[crate::labels::MANAGED_LABEL], "true");
        let api = &p.services["api"];
        assert_eq!(api.body["NetworkingConfig"]["EndpointsConfig"]["proj_back"]["Aliases"], json!(["api", "backend"]));
        assert_eq!(api.more_networks, [("proj_default".to_string(), vec!["api".to_string()])]);
        assert_eq!(api.body["Healthcheck"], json!({"Test": ["CMD", "true"], "Interval": 1_000_000_000i64}));
        assert_eq!(api.body["HostConfig"]["GroupAdd"], json!(["20"]));
        assert_eq!(api.body["HostConfig"]["Tmpfs"], json!({"/run": ""}));
    }

    #[test]
    fn the_hash_follows_the_configuration_only() {
        let a = planned(APP).unwrap();
        let b = planned(&APP.replace("httpd -f -p 80", "httpd -f -p 81")).unwrap();
        assert_ne!(a.services["web"].hash, b.services["web"].hash);
        assert_eq!(a.services["api"].hash, b.services["api"].hash);
        assert_eq!(a.services["web"].hash, planned(APP).unwrap().services["web"].hash);
    }

    #[test]
    fn bad_mounts_and_values() {
        for (yaml, want) in [
            ("services: {a: {image: i, volumes: ['nope:/x']}}", "volume nope is not declared"),
            ("services: {a: {image: i, volumes: ['./x:/x']}}", "inline compose_yaml has no directory"),
            ("services: {a: {image: i, volumes: ['/x:rel']}}", "absolute"),
            ("services: {a: {image: i, ports: ['8000-8001:80']}}", "port range"),
            ("services: {a: {image: i, stop_grace_period: soon}}", "stop_grace_period"),
            ("services: {a: {image: '../../x'}}", "image"),
        ] {
            let e = planned(yaml).err().unwrap_or_default();
            assert!(e.contains(want) && e.contains("service a"), "{yaml}: {e}");
        }
        assert_eq!(size("1GB"), "1g");
    }
}
