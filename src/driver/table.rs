//! The function table: every function the device serves, in the order it
//! is advertised (the Python dcd's 17 first, then ours), and the dispatcher.

use serde_json::{json, Map, Value};

use super::base::{Driver, Function};
use super::{compose, containers, exec, images, jobs, logs, objects, status};
use crate::error::Error;
use crate::jobs::Reply;
use crate::policy::Kind;

const FUNCTIONS: &[&Function] = &[
    &status::GET_STATUS,
    &status::PING_DOCKER,
    &containers::LIST_CONTAINERS,
    &containers::GET_CONTAINER,
    &containers::PROVISION_CONTAINER,
    &containers::START_CONTAINER,
    &containers::STOP_CONTAINER,
    &containers::RESTART_CONTAINER,
    &containers::REMOVE_CONTAINER,
    &logs::CONTAINER_LOGS,
    &logs::STOP_CONTAINER_LOGS,
    &exec::EXEC_IN_CONTAINER,
    &images::PULL_IMAGE,
    &images::LIST_IMAGES,
    &compose::COMPOSE_UP,
    &compose::COMPOSE_DOWN,
    &containers::LIST_MANAGED_CONTAINERS,
    // Beyond the Python dcd: what fleet operators ask for.
    &compose::COMPOSE_PS,
    &compose::COMPOSE_LOGS,
    &containers::CONTAINER_STATS,
    &containers::DEPROVISION_MANAGED,
    &containers::REDEPLOY_CONTAINER,
    &objects::LIST_NETWORKS,
    &objects::CREATE_NETWORK,
    &objects::REMOVE_NETWORK,
    &objects::CONNECT_NETWORK,
    &objects::LIST_VOLUMES,
    &objects::CREATE_VOLUME,
    &objects::REMOVE_VOLUME,
    &images::REMOVE_IMAGE,
    &images::PRUNE_IMAGES,
    &jobs::GET_JOB,
    &jobs::LIST_JOBS,
    &jobs::CANCEL_JOB,
    &exec::EXEC_OPEN,
    &exec::EXEC_WRITE,
    &exec::EXEC_RESIZE,
    &exec::EXEC_READ,
    &exec::EXEC_CLOSE,
    &exec::EXEC_SESSIONS,
];

const DESCRIPTION: &str = "Device Connect driver for provisioning and controlling Docker containers. \
Exposes container CRUD, logs, exec, image pull, and compose up/down over the Device Connect mesh \
(D2D LAN or Portal-backed NATS). Use ``exec_in_container`` for one-shot commands, ``exec_open`` for an \
interactive session (a shell on a TTY), and follow logs via ``container_logs`` + events.";

impl Driver {
    /// Run `method` with keyword `params` (`_dc_meta` and `source_device`
    /// already removed): the policy's say on the function, then the row's
    /// parse, the ownership guard when it targets a container, and its
    /// handler. `reply` gets the outcome: at once from this thread, or later
    /// from a job's thread, so a long call never holds the caller's thread.
    pub fn call(&self, method: &str, params: Map<String, Value>, reply: Reply) {
        let Some(f) = FUNCTIONS.iter().find(|f| f.name == method) else { return reply(Err(Error::UnknownMethod)) };
        if !self.policy.serves(f.kind) {
            let how = match f.kind {
                _ if self.policy.read_only => "read_only is set",
                Kind::Exec => "allow with \"exec\": \"allow\"",
                _ => "allow with \"compose\": true",
            };
            return reply(Err(Error::Policy(format!("{method} is disabled on this host ({how})"))));
        }
        (f.run)(self, f, params, reply)
    }

    /// `capabilities` of presence and registration (spec §3.2).
    pub fn capabilities(&self) -> Value {
        let functions: Vec<Value> =
            FUNCTIONS.iter().filter(|f| self.policy.serves(f.kind)).map(|f| f.advertised()).collect();
        json!({
            "description": DESCRIPTION,
            "functions": functions,
            "events": crate::events::advertised(self.state.forwards_engine_events()),
            "labels": null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value of the type a param's schema advertises; for an object, one
    /// holding its required fields.
    fn sample(schema: &Value) -> Value {
        let ty = match &schema["type"] {
            Value::Array(types) => types.iter().find(|t| *t != "null").cloned().unwrap_or_default(),
            t => t.clone(),
        };
        match ty.as_str().unwrap_or_default() {
            "string" => json!("x"),
            "integer" => json!(1),
            "boolean" => json!(true),
            "array" => json!([sample(&schema["items"])]),
            "object" => {
                required(schema).into_iter().map(|r| (r.to_string(), sample(&schema["properties"][r]))).collect()
            }
            other => panic!("no sample for type {other:?} in {schema}"),
        }
    }

    fn required(schema: &Value) -> Vec<&str> {
        schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
    }

    /// What each function advertises is what its handler takes: the required
    /// params are required, every other param has an advertised default that
    /// is the handler's own default, and nothing else is accepted.
    #[test]
    fn schemas_and_arguments_agree() {
        for f in FUNCTIONS {
            let schema = f.parameters();
            let Value::Object(minimal) = sample(&schema) else { panic!("{}: params are not an object", f.name) };
            let parse = |m: &Map<String, Value>| (f.parse)(m.clone());
            let base = parse(&minimal).unwrap_or_else(|e| panic!("{}: {minimal:?} refused: {e}", f.name));
            for r in required(&schema) {
                let mut m = minimal.clone();
                m.remove(r);
                assert!(parse(&m).is_err(), "{}: {r} is advertised as required but is not", f.name);
            }
            for (k, p) in schema["properties"].as_object().into_iter().flatten() {
                if required(&schema).contains(&k.as_str()) {
                    continue;
                }
                let default = p.get("default").unwrap_or_else(|| panic!("{}.{k}: optional without a default", f.name));
                let mut m = minimal.clone();
                m.insert(k.clone(), default.clone());
                assert_eq!(
                    parse(&m).ok(),
                    Some(base.clone()),
                    "{}.{k}: the advertised default is not the handler's",
                    f.name
                );
            }
            let mut m = minimal.clone();
            m.insert("no_such_param".into(), json!(1));
            assert!(parse(&m).is_err(), "{}: an unknown param is accepted", f.name);
        }
    }

    /// Every presence and registration carries all of this, to every client,
    /// and a registry page carries 100 of them (issue 16): a budget, so that
    /// growing it is a decision: 25,645 bytes, engine_event included, when it
    /// was set (about 30,600 before issue 16).
    #[test]
    fn functions_and_events_stay_within_budget() {
        let functions: Vec<Value> = FUNCTIONS.iter().map(|f| f.advertised()).collect();
        let bytes = serde_json::to_vec(&json!([functions, crate::events::advertised(true)])).unwrap().len();
        assert!(bytes <= 26_000, "{bytes} bytes");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = FUNCTIONS.iter().map(|f| f.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), FUNCTIONS.len());
    }
}
