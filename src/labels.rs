//! The labels that mark what dcd made, read by the policy (`owned_only`,
//! `exec: managed`), the state thread and the functions that list or remove
//! what is ours.

use serde_json::{json, Map, Value};

pub const MANAGED_LABEL: &str = "deviceconnect.dev/managed";
pub const DRIVER_LABEL: &str = "deviceconnect.dev/driver";

pub fn managed_labels() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(MANAGED_LABEL.into(), json!("true"));
    m.insert(DRIVER_LABEL.into(), json!("dcd"));
    m
}

/// Whether an object's `Labels` (container, network or volume) mark it as ours.
pub fn is_managed(labels: &Value) -> bool {
    labels[MANAGED_LABEL] == "true"
}
