//! Containers: list, inspect, provision, the lifecycle, removal, stats and
//! redeploy.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::base::{
    container_id_schema, id_only_schema, no_params, object_schema, Answer, Call, Driver, Function, Long, Reach, Start,
    Target,
};
use super::images::pull;
use crate::engine::{EngineError, Watch};
use crate::error::{Error, Result};
use crate::ids::{check_image, random_hex, short_id};
use crate::jobs::{Reply, Work};
use crate::labels::is_managed;
use crate::policy::Kind;
use crate::spec::{ContainerSpec, Pull};

/// A stop or restart with a grace period up to this (the default) runs on the
/// request worker; a longer one becomes a (quiet) job.
const QUICK_STOP_S: i64 = 10;

/// A `label` filter: `"key"` matches a container that has the label,
/// `"key=value"` one whose label has that value.
struct LabelFilter<'a> {
    key: &'a str,
    value: Option<&'a str>,
}

impl<'a> LabelFilter<'a> {
    fn parse(label: &'a str) -> Self {
        match label.split_once('=') {
            Some((key, value)) => LabelFilter { key, value: Some(value) },
            None => LabelFilter { key: label, value: None },
        }
    }

    fn matches(&self, labels: &Value) -> bool {
        match self.value {
            Some(v) => labels[self.key] == v,
            None => labels.get(self.key).is_some(),
        }
    }
}

pub const LIST_CONTAINERS: Function = Function::replying::<ListContainers>(
    "list_containers",
    Kind::Read,
    Target::Host,
    "List containers on this Docker host.",
    || {
        json!({"type": "object", "properties": {
            "all_containers": {"type": "boolean", "default": false,
                               "description": "Also stopped ones."},
            "label": {"type": ["string", "null"], "default": null,
                      "description": "\"key\" or \"key=value\"."},
            "state": {"type": ["string", "null"], "default": null,
                      "description": "running, exited, ..."}},
          "required": []})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListContainers {
    #[serde(default)]
    all_containers: bool,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

impl Answer for ListContainers {
    fn answer(self, d: &Driver, reply: Reply) {
        // A state filter other than running implies looking at all containers.
        let all = self.all_containers || self.state.as_deref().is_some_and(|s| s != "running");
        let label = self.label.as_deref().map(LabelFilter::parse);
        reply(d.summaries(all, |c| {
            self.state.as_deref().is_none_or(|s| c["state"] == s)
                && label.as_ref().is_none_or(|l| l.matches(&c["labels"]))
        }))
    }
}

pub const GET_CONTAINER: Function = Function::new::<GetContainer>(
    "get_container",
    Kind::Read,
    // Reads no more than `list_containers` shows of every container.
    Target::Host,
    "Inspect a single container by ID or name.",
    id_only_schema,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct GetContainer {
    container_id: String,
}

impl Call for GetContainer {
    fn call(self, d: &Driver) -> Result<Value> {
        Ok(json!({"status": "success", "container": d.summary_of(&self.container_id)?}))
    }
}

pub const PROVISION_CONTAINER: Function = Function::job::<ProvisionContainer>(
    "provision_container",
    Kind::Mutate,
    Target::Host,
    "Create (provision) a container from a JSON specification.",
    || json!({"type": "object", "properties": {"spec": crate::spec::schema()}, "required": ["spec"]}),
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ProvisionContainer {
    spec: ContainerSpec,
}

/// At once when the image is here (or `pull: never`); a job when it must be
/// pulled first.
impl Long for ProvisionContainer {
    fn start(self, d: &Driver) -> Result<Start> {
        let spec = self.spec;
        let body = spec.create_body()?;
        d.policy.admit_create(d.engine.as_ref(), &body)?;
        if let (true, Some(name)) = (spec.replace, &spec.name) {
            d.guard_if_exists(name, Kind::Mutate)?;
            match d.engine.remove_container(name, true) {
                Ok(()) | Err(EngineError::NotFound(_)) => d.removed(name),
                Err(e) => return Err(e.into()),
            }
        }
        let image = body["Image"].as_str().unwrap_or_default().to_string();
        if spec.pull != Pull::Always {
            match d.engine.create_container(spec.name.as_deref(), &body) {
                Ok(id) => return Ok(Start::Done(started(&d.reach(), &id)?)),
                Err(EngineError::NotFound(m)) if is_missing_image(&m) && spec.pull == Pull::Missing => {}
                Err(EngineError::NotFound(m)) if is_missing_image(&m) => {
                    return Err(EngineError::NotFound(format!(
                        "{m}: pull is \"never\" (pull the image first, or provision with pull \"missing\")"
                    ))
                    .into())
                }
                Err(e) => return Err(e.into()),
            }
        }
        let reach = d.reach();
        let name = spec.name.clone();
        let work = Work::new(name.clone().unwrap_or_else(|| image.clone()), "pulling", move |p| {
            pull(reach.engine.as_ref(), &image, None, p)?;
            p.check("the image was pulled; no container was created")?;
            p.phase("creating");
            p.unstoppable("it is creating and starting the container");
            let id = reach.engine.create_container(name.as_deref(), &body)?;
            p.phase("starting");
            started(&reach, &id)
        });
        Ok(Start::Job(match &spec.name {
            Some(n) => work.on_container(n),
            None => work,
        }))
    }
}

/// Whether a create failed for want of its image (Docker: "No such image",
/// Podman: "image not known").
fn is_missing_image(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("no such image") || m.contains("image not known")
}

/// Start container `id`, just created, and say so.
fn started(r: &Reach, id: &str) -> Result<Value> {
    r.observe(id)?;
    r.engine.start_container(id)?;
    Ok(json!({"status": "success", "container": r.observe(id)?}))
}

fn id_and_timeout_schema() -> Value {
    json!({"type": "object", "properties": {
        "container_id": container_id_schema(),
        "timeout_s": {"type": "integer", "default": 10, "description": "Before it is killed."}},
      "required": ["container_id"]})
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct IdTimeout {
    container_id: String,
    #[serde(default = "ten")]
    timeout_s: i64,
}

fn ten() -> i64 {
    10
}

pub const START_CONTAINER: Function = Function::new::<StartContainer>(
    "start_container",
    Kind::Mutate,
    Target::Container,
    "Start a stopped container.",
    id_only_schema,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StartContainer {
    container_id: String,
}

impl Call for StartContainer {
    fn call(self, d: &Driver) -> Result<Value> {
        d.engine.start_container(&self.container_id)?;
        Ok(json!({"status": "success", "container": d.observe(&self.container_id)?}))
    }
}

pub const STOP_CONTAINER: Function = Function::job::<StopContainer>(
    "stop_container",
    Kind::Mutate,
    Target::Container,
    "Stop a running container.",
    id_and_timeout_schema,
);

#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct StopContainer(IdTimeout);

impl Long for StopContainer {
    fn start(self, d: &Driver) -> Result<Start> {
        let a = self.0;
        a.lifecycle(d, "stopping", |e, id, t| e.stop_container(id, t))
    }
}

impl IdTimeout {
    /// Run `act` (a stop or restart) with its grace period: on this thread
    /// up to `QUICK_STOP_S`, else in a quiet job, since the engine answers
    /// only when the container has gone down.
    fn lifecycle(
        self,
        d: &Driver,
        phase: &'static str,
        act: fn(&dyn crate::engine::Engine, &str, i64) -> std::result::Result<(), EngineError>,
    ) -> Result<Start> {
        let reach = d.reach();
        let (id, timeout_s) = (self.container_id.clone(), self.timeout_s);
        let run = move || -> Result<Value> {
            act(reach.engine.as_ref(), &id, timeout_s)?;
            Ok(json!({"status": "success", "container": reach.observe(&id)?}))
        };
        if timeout_s <= QUICK_STOP_S {
            return Ok(Start::Done(run()?));
        }
        Ok(Start::Job(
            Work::new(self.container_id, phase, move |p| {
                p.unstoppable("the engine finishes a stop it has begun");
                run()
            })
            .quiet(),
        ))
    }
}

pub const RESTART_CONTAINER: Function = Function::job::<RestartContainer>(
    "restart_container",
    Kind::Mutate,
    Target::Container,
    "Restart a container.",
    id_and_timeout_schema,
);

#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct RestartContainer(IdTimeout);

impl Long for RestartContainer {
    fn start(self, d: &Driver) -> Result<Start> {
        let a = self.0;
        a.lifecycle(d, "restarting", |e, id, t| e.restart_container(id, t))
    }
}

pub const REMOVE_CONTAINER: Function = Function::new::<RemoveContainer>(
    "remove_container",
    Kind::Mutate,
    Target::Container,
    "Remove a container.",
    || {
        json!({"type": "object", "properties": {
            "container_id": container_id_schema(),
            "force": {"type": "boolean", "default": false,
                      "description": "Kill it if running."}},
          "required": ["container_id"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RemoveContainer {
    container_id: String,
    #[serde(default)]
    force: bool,
}

impl Call for RemoveContainer {
    fn call(self, d: &Driver) -> Result<Value> {
        d.engine.remove_container(&self.container_id, self.force)?;
        d.removed(&self.container_id);
        Ok(json!({"status": "success", "container_id": self.container_id, "force": self.force}))
    }
}

pub const LIST_MANAGED_CONTAINERS: Function = Function::replying::<ListManaged>(
    "list_managed_containers",
    Kind::Read,
    Target::Host,
    "List containers labeled as managed by this driver.",
    no_params,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListManaged {}

impl Answer for ListManaged {
    fn answer(self, d: &Driver, reply: Reply) {
        reply(d.summaries(true, |s| s["managed_by_dcd"] == true))
    }
}

pub const CONTAINER_STATS: Function = Function::new::<ContainerStats>(
    "container_stats",
    Kind::Read,
    Target::Container,
    "One resource sample of a container: CPU %, memory, network, block I/O, pids.",
    id_only_schema,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ContainerStats {
    container_id: String,
}

impl Call for ContainerStats {
    fn call(self, d: &Driver) -> Result<Value> {
        let mut r = stats_summary(&d.engine.stats(&self.container_id)?);
        r["status"] = json!("success");
        r["container_id"] = json!(self.container_id);
        Ok(r)
    }
}

pub const DEPROVISION_MANAGED: Function = Function::new::<DeprovisionManaged>(
    "deprovision_managed",
    Kind::Mutate,
    Target::Host,
    "Remove every container managed by dcd (optionally only those with a label); converges (already gone is success).",
    || {
        object_schema(
            json!({"label": {"type": ["string", "null"], "default": null,
                             "description": "\"key=value\"."}}),
            &[],
        )
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DeprovisionManaged {
    #[serde(default)]
    label: Option<String>,
}

impl Call for DeprovisionManaged {
    fn call(self, d: &Driver) -> Result<Value> {
        let label = self.label.as_deref().map(LabelFilter::parse);
        let mut removed = Vec::new();
        for c in d.engine.list_containers(true)? {
            let labels = &c["Labels"];
            if !is_managed(labels) || label.as_ref().is_some_and(|l| !l.matches(labels)) {
                continue;
            }
            let id = c["Id"].as_str().unwrap_or_default();
            match d.engine.remove_container(id, true) {
                Ok(()) | Err(EngineError::NotFound(_)) => {
                    d.removed(id);
                    removed.push(json!(short_id(id)))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(json!({"status": "success", "removed": removed, "count": removed.len()}))
    }
}

pub const REDEPLOY_CONTAINER: Function = Function::job::<RedeployContainer>(
    "redeploy_container",
    Kind::Mutate,
    Target::Container,
    "Recreate a container with a new image and/or environment, keeping its name, network, ports, volumes and labels.",
    || {
        object_schema(
            json!({"container_id": container_id_schema(),
                   "image": {"type": ["string", "null"], "default": null, "description": "null: the current one."},
                   "environment": {"type": "object", "additionalProperties": {"type": "string"}, "default": {},
                                   "description": "Set or override."},
                   "pull": {"type": "boolean", "default": false}}),
            &["container_id"],
        )
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RedeployContainer {
    container_id: String,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    environment: Map<String, Value>,
    #[serde(default)]
    pull: bool,
}

/// A job; quiet unless it pulls.
impl Long for RedeployContainer {
    fn start(self, d: &Driver) -> Result<Start> {
        if let Some(i) = &self.image {
            check_image("image", i).map_err(Error::Params)?;
        }
        let old = d.engine.inspect_container(&self.container_id)?;
        let body = recreate_body(&old, self.image.as_deref(), &self.environment);
        d.policy.admit_create(d.engine.as_ref(), &body)?;
        let reach = d.reach();
        let pulls = self.pull;
        let work = Work::new(self.container_id, if pulls { "pulling" } else { "creating" }, move |p| {
            if let (true, Some(image)) = (pulls, body["Image"].as_str()) {
                pull(reach.engine.as_ref(), image, None, p)?;
                p.check("the image was pulled; the container was not touched")?;
            }
            p.phase("creating");
            p.unstoppable("it is replacing the container");
            replace(&reach, &old, &body, p)
        });
        Ok(Start::Job(if pulls { work } else { work.quiet() }))
    }
}

/// Put a container made from `body` in the place of `old`.
fn replace(r: &Reach, old: &Value, body: &Value, p: &crate::jobs::Progress) -> Result<Value> {
    let name = old["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string();
    let old_id = old["Id"].as_str().unwrap_or_default().to_string();
    // The new container needs the name: park the old one under another
    // name, and put it back if the new one cannot be created.
    let parked = format!("{name}-dcd-old-{}", random_hex(6));
    r.engine.rename_container(&old_id, &parked)?;
    let id = match r.engine.create_container(Some(&name), body) {
        Ok(id) => id,
        Err(e) => {
            if let Err(back) = r.engine.rename_container(&old_id, &name) {
                log::error!("redeploy {name}: could not restore the old container's name: {back}");
            }
            return Err(e.into());
        }
    };
    r.engine.remove_container(&old_id, true)?;
    r.removed(&old_id);
    p.phase("starting");
    r.engine.start_container(&id)?;
    let container = r.observe(&id)?;
    Ok(json!({"status": "success", "container": container, "replaced": short_id(&old_id)}))
}

/// `container_stats` the way the docker CLI computes them (cli/command/container/stats_helpers.go).
fn stats_summary(s: &Value) -> Value {
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let (cpu, pre) = (&s["cpu_stats"], &s["precpu_stats"]);
    let cpu_delta = u(&cpu["cpu_usage"]["total_usage"]).saturating_sub(u(&pre["cpu_usage"]["total_usage"]));
    let system_delta = u(&cpu["system_cpu_usage"]).saturating_sub(u(&pre["system_cpu_usage"]));
    let online = match u(&cpu["online_cpus"]) {
        0 => cpu["cpu_usage"]["percpu_usage"].as_array().map_or(1, |a| a.len().max(1) as u64),
        n => n,
    };
    // A container that just (re)started has no previous sample: report zero.
    let cpu_percent = if cpu_delta > 0 && system_delta > 0 && u(&pre["system_cpu_usage"]) > 0 {
        cpu_delta as f64 / system_delta as f64 * online as f64 * 100.0
    } else {
        0.0
    };
    let mem = &s["memory_stats"];
    let usage = u(&mem["usage"]);
    // cgroup v1 reports page cache as total_inactive_file, v2 as inactive_file.
    let cache = [&mem["stats"]["total_inactive_file"], &mem["stats"]["inactive_file"]]
        .into_iter()
        .find_map(Value::as_u64)
        .filter(|c| *c < usage)
        .unwrap_or(0);
    let used = usage - cache;
    let limit = u(&mem["limit"]);
    let (mut rx, mut tx) = (0, 0);
    for n in s["networks"].as_object().into_iter().flat_map(|m| m.values()) {
        rx += u(&n["rx_bytes"]);
        tx += u(&n["tx_bytes"]);
    }
    let (mut read, mut write) = (0, 0);
    for e in s["blkio_stats"]["io_service_bytes_recursive"].as_array().into_iter().flatten() {
        match e["op"].as_str().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => read += u(&e["value"]),
            Some("write") => write += u(&e["value"]),
            _ => {}
        }
    }
    json!({
        "cpu_percent": (cpu_percent * 100.0).round() / 100.0,
        "memory_usage": used,
        "memory_limit": limit,
        "memory_percent": if limit > 0 { (used as f64 / limit as f64 * 10_000.0).round() / 100.0 } else { 0.0 },
        "network_rx_bytes": rx,
        "network_tx_bytes": tx,
        "block_read_bytes": read,
        "block_write_bytes": write,
        "pids": u(&s["pids_stats"]["current"]),
    })
}

/// The create body that makes a container like `inspect` again, with a new
/// image and environment overrides.
fn recreate_body(inspect: &Value, image: Option<&str>, env: &Map<String, Value>) -> Value {
    let config = &inspect["Config"];
    let mut vars: Vec<String> = config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|kv| !env.contains_key(kv.split('=').next().unwrap_or_default()))
        .map(String::from)
        .collect();
    vars.extend(env.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), String::from))));
    let mut body = json!({
        "Image": image.map_or_else(|| config["Image"].clone(), |i| json!(i)),
        "Cmd": config["Cmd"], "Entrypoint": config["Entrypoint"], "Env": vars,
        "Labels": config["Labels"], "ExposedPorts": config["ExposedPorts"],
        "User": config["User"], "WorkingDir": config["WorkingDir"], "Healthcheck": config["Healthcheck"],
        "HostConfig": inspect["HostConfig"],
    });
    // The engine's own default on cgroup v1 hosts; asking for it explicitly
    // would read as a host namespace to the policy.
    if let Some(h) = body["HostConfig"].as_object_mut() {
        h.remove("CgroupnsMode");
    }
    let networks = inspect["NetworkSettings"]["Networks"].as_object();
    let mode = inspect["HostConfig"]["NetworkMode"].as_str().unwrap_or_default();
    if let Some(net) = networks.and_then(|n| n.keys().find(|k| *k == mode)) {
        body["NetworkingConfig"] = json!({"EndpointsConfig": {net: {}}});
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_like_the_docker_cli() {
        let s = json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
            "memory_stats": {"usage": 1000, "limit": 4000, "stats": {"total_inactive_file": 200}},
            "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
            "blkio_stats": {"io_service_bytes_recursive": [{"op": "Read", "value": 5}, {"op": "write", "value": 7}]},
            "pids_stats": {"current": 3}});
        assert_eq!(
            stats_summary(&s),
            json!({"cpu_percent": 40.0, "memory_usage": 800, "memory_limit": 4000,
            "memory_percent": 20.0, "network_rx_bytes": 11, "network_tx_bytes": 22, "block_read_bytes": 5,
            "block_write_bytes": 7, "pids": 3})
        );
    }

    #[test]
    fn fresh_container_stats_are_zero() {
        let s = json!({"cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000},
                       "precpu_stats": {"cpu_usage": {}}, "memory_stats": {}});
        let r = stats_summary(&s);
        assert_eq!((r["cpu_percent"].as_f64(), r["memory_percent"].as_f64()), (Some(0.0), Some(0.0)));
    }

    #[test]
    fn recreate_keeps_the_container_and_overrides_env() {
        let old = json!({"Config": {"Image": "a:1", "Env": ["A=1", "B=2"], "Labels": {"x": "y"}, "Cmd": ["sleep"]},
                         "HostConfig": {"NetworkMode": "n1", "Binds": ["v:/v"]},
                         "NetworkSettings": {"Networks": {"n1": {}}}});
        let env: Map<String, Value> = serde_json::from_value(json!({"B": "3"})).unwrap();
        let b = recreate_body(&old, Some("a:2"), &env);
        assert_eq!(b["Image"], "a:2");
        assert_eq!(b["Env"], json!(["A=1", "B=3"]));
        assert_eq!(b["HostConfig"]["Binds"], json!(["v:/v"]));
        assert_eq!(b["NetworkingConfig"]["EndpointsConfig"]["n1"], json!({}));
        assert_eq!(b["Labels"]["x"], "y");
    }
}
