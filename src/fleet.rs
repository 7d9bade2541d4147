//! Functions beyond the Python dcd that fleet operators ask for: resource
//! stats, convergent deprovisioning, redeploy by recreate, networks, volumes
//! and image housekeeping. Same table shape as the driver's own functions,
//! under the same policy.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::driver::{args, id_only_schema, no_params, Driver, Error, Function, IdArgs, NoArgs, MANAGED_LABEL};
use crate::engine::{EngineError, Object};
use crate::policy::Kind;

type Result<T> = std::result::Result<T, Error>;

fn object_schema(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn labels_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}, "default": {},
           "description": "Extra labels; the managed labels are added."})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateArgs {
    name: String,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    labels: Map<String, Value>,
}

impl CreateArgs {
    fn body(&self) -> Result<Value> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(Error::Params(format!("name {:?} must be letters, digits, '_', '.' or '-'", self.name)));
        }
        let mut labels = self.labels.clone();
        labels.extend(crate::spec::managed_labels());
        let mut body = json!({"Name": self.name, "Labels": labels});
        if let Some(d) = &self.driver {
            body["Driver"] = json!(d);
        }
        Ok(body)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveArgs {
    name: String,
    #[serde(default)]
    force: bool,
}

fn create_schema(what: &str) -> Value {
    object_schema(
        json!({"name": {"type": "string", "description": format!("{what} name.")},
               "driver": {"type": ["string", "null"], "default": null},
               "labels": labels_schema()}),
        &["name"],
    )
}

fn remove_schema(what: &str) -> Value {
    object_schema(
        json!({"name": {"type": "string", "description": format!("{what} name or id.")},
               "force": {"type": "boolean", "default": false}}),
        &["name"],
    )
}

fn list_objects(d: &Driver, kind: Object, key: &str) -> Result<Value> {
    let items: Vec<Value> = d
        .engine
        .list_objects(kind)?
        .into_iter()
        .map(|o| {
            let labels = if o["Labels"].is_object() { o["Labels"].clone() } else { json!({}) };
            json!({"id": o["Id"].as_str().or(o["Name"].as_str()), "name": o["Name"], "driver": o["Driver"],
                   "managed_by_dcd": labels[MANAGED_LABEL] == "true", "labels": labels})
        })
        .collect();
    Ok(json!({"status": "success", "count": items.len(), key: items}))
}

/// `container_stats` the way the docker CLI computes them (cli/command/container/stats_helpers.go).
pub fn stats_summary(s: &Value) -> Value {
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

pub(crate) const FUNCTIONS: &[Function] = &[
    Function {
        name: "container_stats",
        kind: Kind::Read,
        description: "One resource sample of a container: CPU %, memory, network, block I/O, pids.",
        schema: id_only_schema,
        call: |d, p| {
            let a: IdArgs = args(p)?;
            d.guard(&a.container_id, Kind::Read)?;
            let mut r = stats_summary(&d.engine.stats(&a.container_id)?);
            r["status"] = json!("success");
            r["container_id"] = json!(a.container_id);
            Ok(r)
        },
    },
    Function {
        name: "deprovision_managed",
        kind: Kind::Mutate,
        description: "Remove every container managed by dcd (optionally only those with a label); converges (already gone is success).",
        schema: || {
            object_schema(
                json!({"label": {"type": ["string", "null"], "default": null,
                                 "description": "Only containers with this label, \"key=value\"."}}),
                &[],
            )
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                #[serde(default)]
                label: Option<String>,
            }
            let a: A = args(p)?;
            let (key, value) = match a.label.as_deref().map(|l| l.split_once('=').unwrap_or((l, ""))) {
                Some((k, v)) => (Some(k), v),
                None => (None, ""),
            };
            let mut removed = Vec::new();
            for c in d.engine.list_containers(true)? {
                let labels = &c["Labels"];
                if labels[MANAGED_LABEL] != "true" || key.is_some_and(|k| labels[k] != value) {
                    continue;
                }
                let id = c["Id"].as_str().unwrap_or_default();
                match d.engine.remove_container(id, true) {
                    Ok(()) | Err(EngineError::NotFound(_)) => removed.push(json!(id.get(..12).unwrap_or(id))),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(json!({"status": "success", "removed": removed, "count": removed.len()}))
        },
    },
    Function {
        name: "redeploy_container",
        kind: Kind::Mutate,
        description: "Recreate a container with a new image and/or environment, keeping its name, network, ports, volumes and labels.",
        schema: || {
            object_schema(
                json!({"container_id": {"type": "string", "description": "Container ID or name."},
                       "image": {"type": ["string", "null"], "default": null, "description": "New image; default the current one."},
                       "environment": {"type": "object", "additionalProperties": {"type": "string"}, "default": {},
                                       "description": "Variables to set or override."},
                       "pull": {"type": "boolean", "default": false, "description": "Pull the image first."}}),
                &["container_id"],
            )
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                container_id: String,
                #[serde(default)]
                image: Option<String>,
                #[serde(default)]
                environment: Map<String, Value>,
                #[serde(default)]
                pull: bool,
            }
            let a: A = args(p)?;
            if let Some(i) = &a.image {
                if !crate::spec::valid_image(i) {
                    return Err(Error::Params(format!("image {i:?} is not an image reference")));
                }
            }
            d.guard(&a.container_id, Kind::Mutate)?;
            let old = d.engine.inspect_container(&a.container_id)?;
            let body = recreate_body(&old, a.image.as_deref(), &a.environment);
            d.policy.check_create(&body).map_err(Error::Policy)?;
            if let (true, Some(image)) = (a.pull, body["Image"].as_str()) {
                d.engine.pull_image(image)?;
            }
            let name = old["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string();
            let old_id = old["Id"].as_str().unwrap_or_default().to_string();
            // The new container needs the name: park the old one under another
            // name, and put it back if the new one cannot be created.
            let parked = format!("{name}-dcd-old-{}", crate::rpc::random_hex(6));
            d.engine.rename_container(&old_id, &parked)?;
            let id = match d.engine.create_container(Some(&name), &body) {
                Ok(id) => id,
                Err(e) => {
                    if let Err(back) = d.engine.rename_container(&old_id, &name) {
                        log::error!("redeploy {name}: could not restore the old container's name: {back}");
                    }
                    return Err(e.into());
                }
            };
            d.engine.remove_container(&old_id, true)?;
            d.engine.start_container(&id)?;
            let container = d.summary_of(&id)?;
            d.state_observed(&container);
            Ok(json!({"status": "success", "container": container, "replaced": old_id.get(..12).unwrap_or(&old_id)}))
        },
    },
    Function {
        name: "list_networks",
        kind: Kind::Read,
        description: "List networks on this Docker host.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            list_objects(d, Object::Network, "networks")
        },
    },
    Function {
        name: "create_network",
        kind: Kind::Mutate,
        description: "Create a network (labelled as managed by dcd).",
        schema: || create_schema("Network"),
        call: |d, p| {
            let a: CreateArgs = args(p)?;
            let r = d.engine.create_object(Object::Network, &a.body()?)?;
            Ok(json!({"status": "success", "name": a.name, "id": r["Id"]}))
        },
    },
    Function {
        name: "remove_network",
        kind: Kind::Mutate,
        description: "Remove a network.",
        schema: || remove_schema("Network"),
        call: |d, p| {
            let a: RemoveArgs = args(p)?;
            d.engine.remove_object(Object::Network, &a.name, a.force)?;
            Ok(json!({"status": "success", "name": a.name}))
        },
    },
    Function {
        name: "connect_network",
        kind: Kind::Mutate,
        description: "Attach a container to a network.",
        schema: || {
            object_schema(
                json!({"network": {"type": "string", "description": "Network name or id."},
                       "container_id": {"type": "string", "description": "Container ID or name."}}),
                &["network", "container_id"],
            )
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                network: String,
                container_id: String,
            }
            let a: A = args(p)?;
            d.guard(&a.container_id, Kind::Mutate)?;
            if matches!(a.network.as_str(), "host") {
                return Err(Error::Policy("attaching to the host network is not allowed".into()));
            }
            d.engine.connect_network(&a.network, &a.container_id)?;
            Ok(json!({"status": "success", "network": a.network, "container_id": a.container_id}))
        },
    },
    Function {
        name: "list_volumes",
        kind: Kind::Read,
        description: "List volumes on this Docker host.",
        schema: no_params,
        call: |d, p| {
            let NoArgs {} = args(p)?;
            list_objects(d, Object::Volume, "volumes")
        },
    },
    Function {
        name: "create_volume",
        kind: Kind::Mutate,
        description: "Create a named volume (labelled as managed by dcd).",
        schema: || create_schema("Volume"),
        call: |d, p| {
            let a: CreateArgs = args(p)?;
            d.engine.create_object(Object::Volume, &a.body()?)?;
            Ok(json!({"status": "success", "name": a.name}))
        },
    },
    Function {
        name: "remove_volume",
        kind: Kind::Mutate,
        description: "Remove a named volume.",
        schema: || remove_schema("Volume"),
        call: |d, p| {
            let a: RemoveArgs = args(p)?;
            d.engine.remove_object(Object::Volume, &a.name, a.force)?;
            Ok(json!({"status": "success", "name": a.name}))
        },
    },
    Function {
        name: "remove_image",
        kind: Kind::Mutate,
        description: "Remove an image.",
        schema: || {
            object_schema(
                json!({"image": {"type": "string", "description": "Image reference or id."},
                       "force": {"type": "boolean", "default": false}}),
                &["image"],
            )
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                image: String,
                #[serde(default)]
                force: bool,
            }
            let a: A = args(p)?;
            if !crate::spec::valid_image(&a.image) {
                return Err(Error::Params(format!("image {:?} is not an image reference", a.image)));
            }
            let deleted = d.engine.remove_image(&a.image, a.force)?;
            Ok(json!({"status": "success", "image": a.image, "deleted": deleted}))
        },
    },
    Function {
        name: "prune_images",
        kind: Kind::Mutate,
        description: "Remove dangling images, or with all=true every unused image, optionally only those older than `until`.",
        schema: || {
            object_schema(
                json!({"all": {"type": "boolean", "default": false, "description": "Also unused tagged images."},
                       "until": {"type": ["string", "null"], "default": null,
                                 "description": "Only images created before this age, e.g. 24h, or an RFC3339 time."}}),
                &[],
            )
        },
        call: |d, p| {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct A {
                #[serde(default)]
                all: bool,
                #[serde(default)]
                until: Option<String>,
            }
            let a: A = args(p)?;
            let mut filters = json!({"dangling": [if a.all { "false" } else { "true" }]});
            if let Some(u) = &a.until {
                if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'+')) {
                    return Err(Error::Params(format!("until {u:?} is not a duration or timestamp")));
                }
                filters["until"] = json!([u]);
            }
            let r = d.engine.prune_images(&filters)?;
            let deleted = r["ImagesDeleted"].as_array().map_or(0, Vec::len);
            Ok(json!({"status": "success", "deleted": deleted, "space_reclaimed": r["SpaceReclaimed"]}))
        },
    },
];

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
