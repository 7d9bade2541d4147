//! Processes started in a container. Every row here is `Kind::Exec` with a
//! container target, so the dispatcher's guard checks the container against
//! the policy (`Policy::admit_exec`) before any exec instance is created.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::base::{container_id_schema, Driver, Function, Long, Start, Target};
use crate::engine::Watch;
use crate::error::{Error, Result};
use crate::jobs::Work;
use crate::policy::Kind;

/// The default and the longest `timeout_s` of an exec.
const DEFAULT_TIMEOUT_S: u64 = 60;
const MAX_TIMEOUT_S: u64 = 3600;

pub const EXEC_IN_CONTAINER: Function = Function::job::<ExecInContainer>(
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
                        "description": "Working directory inside the container."},
            "timeout_s": {"type": "integer", "default": DEFAULT_TIMEOUT_S, "minimum": 1, "maximum": MAX_TIMEOUT_S,
                          "description": format!("Kill the process (and those it started) after this many seconds \
                              (at most {MAX_TIMEOUT_S}); the reply then says killed, with the output so far.")}},
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
    #[serde(default = "default_timeout")]
    timeout_s: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_S
}

/// Refused in the parse, so before the guard asks the engine about the container.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("command must not be empty"));
    }
    Ok(v)
}

/// A quiet job: it shows as a job only once it outlives the caller's wait.
impl Long for ExecInContainer {
    fn start(self, d: &Driver) -> Result<Start> {
        let env: Vec<String> =
            self.environment.unwrap_or_default().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let limit = Duration::from_secs(self.timeout_s.clamp(1, MAX_TIMEOUT_S));
        let engine = d.engine.clone();
        let id = self.container_id;
        let work = Work::new(id.clone(), "running", move |p| {
            let out = engine.exec_watched(&id, &self.command, &env, self.workdir.as_deref(), limit, p)?;
            if out.killed && p.cancelled() {
                return Err(Error::Cancelled(format!(
                    "the process was killed (exit code {}) after printing {} bytes",
                    out.exit_code,
                    out.stdout.len() + out.stderr.len()
                )));
            }
            let mut r = json!({
                "status": if out.exit_code == 0 { "success" } else { "error" },
                "exit_code": out.exit_code,
                "stdout": out.stdout,
                "stderr": out.stderr,
            });
            if out.killed {
                r["status"] = json!("error");
                r["killed"] = json!(true);
                r["message"] = json!(format!(
                    "killed after timeout_s ({} s); the output is what it printed until then",
                    limit.as_secs()
                ));
            }
            Ok(r)
        });
        Ok(Start::Job(work.quiet()))
    }
}
