//! Networks and volumes: list, create (labelled as ours), remove, and
//! attaching a container to a network.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::base::{container_id_schema, no_params, object_schema, Call, Driver, Function, Target};
use crate::engine::Object;
use crate::error::{Error, Result};
use crate::ids::{name_error, valid_name};
use crate::labels::{is_managed, managed_labels};
use crate::policy::Kind;

fn labels_schema() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}, "default": {},
           "description": "Besides the managed labels."})
}

fn create_schema() -> Value {
    object_schema(
        json!({"name": {"type": "string"},
               "driver": {"type": ["string", "null"], "default": null},
               "labels": labels_schema()}),
        &["name"],
    )
}

fn remove_schema() -> Value {
    object_schema(
        json!({"name": {"type": "string", "description": "Or id."},
               "force": {"type": "boolean", "default": false}}),
        &["name"],
    )
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    #[serde(default)]
    driver: Option<String>,
    #[serde(default)]
    labels: Map<String, Value>,
}

impl Create {
    fn body(&self) -> Result<Value> {
        if !valid_name(&self.name) {
            return Err(Error::Params(name_error("name", &self.name)));
        }
        let mut labels = self.labels.clone();
        labels.extend(managed_labels());
        let mut body = json!({"Name": self.name, "Labels": labels});
        if let Some(d) = &self.driver {
            body["Driver"] = json!(d);
        }
        Ok(body)
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Remove {
    name: String,
    #[serde(default)]
    force: bool,
}

fn list(d: &Driver, kind: Object, key: &str) -> Result<Value> {
    let items: Vec<Value> = d
        .engine
        .list_objects(kind)?
        .into_iter()
        .map(|o| {
            let labels = if o["Labels"].is_object() { o["Labels"].clone() } else { json!({}) };
            json!({"id": o["Id"].as_str().or(o["Name"].as_str()), "name": o["Name"], "driver": o["Driver"],
                   "managed_by_dcd": is_managed(&labels), "labels": labels})
        })
        .collect();
    Ok(json!({"status": "success", "count": items.len(), key: items}))
}

pub const LIST_NETWORKS: Function = Function::new::<ListNetworks>(
    "list_networks",
    Kind::Read,
    Target::Host,
    "List networks on this Docker host.",
    no_params,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListNetworks {}

impl Call for ListNetworks {
    fn call(self, d: &Driver) -> Result<Value> {
        list(d, Object::Network, "networks")
    }
}

pub const CREATE_NETWORK: Function = Function::new::<CreateNetwork>(
    "create_network",
    Kind::Mutate,
    Target::Host,
    "Create a network (labelled as managed by dcd).",
    create_schema,
);

#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct CreateNetwork(Create);

impl Call for CreateNetwork {
    fn call(self, d: &Driver) -> Result<Value> {
        let r = d.engine.create_object(Object::Network, &self.0.body()?)?;
        Ok(json!({"status": "success", "name": self.0.name, "id": r["Id"]}))
    }
}

pub const REMOVE_NETWORK: Function =
    Function::new::<RemoveNetwork>("remove_network", Kind::Mutate, Target::Host, "Remove a network.", || {
        remove_schema()
    });

#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct RemoveNetwork(Remove);

impl Call for RemoveNetwork {
    fn call(self, d: &Driver) -> Result<Value> {
        d.engine.remove_object(Object::Network, &self.0.name, self.0.force)?;
        Ok(json!({"status": "success", "name": self.0.name}))
    }
}

pub const CONNECT_NETWORK: Function = Function::new::<ConnectNetwork>(
    "connect_network",
    Kind::Mutate,
    Target::Container,
    "Attach a container to a network.",
    || {
        object_schema(
            json!({"network": {"type": "string", "description": "Name or id."}, "container_id": container_id_schema()}),
            &["network", "container_id"],
        )
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ConnectNetwork {
    network: String,
    container_id: String,
}

impl Call for ConnectNetwork {
    fn call(self, d: &Driver) -> Result<Value> {
        if self.network == "host" {
            return Err(Error::Policy("attaching to the host network is not allowed".into()));
        }
        d.engine.connect_network(&self.network, &self.container_id, &[])?;
        d.observe(&self.container_id)?;
        Ok(json!({"status": "success", "network": self.network, "container_id": self.container_id}))
    }
}

pub const LIST_VOLUMES: Function = Function::new::<ListVolumes>(
    "list_volumes",
    Kind::Read,
    Target::Host,
    "List volumes on this Docker host.",
    no_params,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListVolumes {}

impl Call for ListVolumes {
    fn call(self, d: &Driver) -> Result<Value> {
        list(d, Object::Volume, "volumes")
    }
}

pub const CREATE_VOLUME: Function = Function::new::<CreateVolume>(
    "create_volume",
    Kind::Mutate,
    Target::Host,
    "Create a named volume (labelled as managed by dcd).",
    create_schema,
);

#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct CreateVolume(Create);

impl Call for CreateVolume {
    fn call(self, d: &Driver) -> Result<Value> {
        d.engine.create_object(Object::Volume, &self.0.body()?)?;
        Ok(json!({"status": "success", "name": self.0.name}))
    }
}

pub const REMOVE_VOLUME: Function =
    Function::new::<RemoveVolume>("remove_volume", Kind::Mutate, Target::Host, "Remove a named volume.", || {
        remove_schema()
    });

#[derive(Deserialize, Debug)]
#[serde(transparent)]
struct RemoveVolume(Remove);

impl Call for RemoveVolume {
    fn call(self, d: &Driver) -> Result<Value> {
        d.engine.remove_object(Object::Volume, &self.0.name, self.0.force)?;
        Ok(json!({"status": "success", "name": self.0.name}))
    }
}
