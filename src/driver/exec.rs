//! Processes started in a container. Every row here is `Kind::Exec` with a
//! container target, so the dispatcher's guard checks the container against
//! the policy (`Policy::admit_exec`) before any exec instance is created.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{container_id_schema, Call, Driver, Function, Target};
use crate::error::Result;
use crate::policy::Kind;

pub const EXEC_IN_CONTAINER: Function = Function::new::<ExecInContainer>(
    "exec_in_container",
    Kind::Exec,
    Target::Container,
    "Run a command inside a running container.",
    || {
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
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecInContainer {
    container_id: String,
    #[serde(deserialize_with = "non_empty")]
    command: Vec<String>,
    #[serde(default)]
    environment: Option<BTreeMap<String, String>>,
    #[serde(default)]
    workdir: Option<String>,
}

/// Refused in the parse, so before the guard asks the engine about the container.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("command must not be empty"));
    }
    Ok(v)
}

impl Call for ExecInContainer {
    fn call(self, d: &Driver) -> Result<Value> {
        let env: Vec<String> =
            self.environment.unwrap_or_default().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let out = d.engine.exec(&self.container_id, &self.command, &env, self.workdir.as_deref())?;
        Ok(json!({
            "status": if out.exit_code == 0 { "success" } else { "error" },
            "exit_code": out.exit_code,
            "stdout": out.stdout,
            "stderr": out.stderr,
        }))
    }
}
