//! A container's log: read once, or followed as `container_log_line` events.

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{container_id_schema, id_only_schema, Call, Driver, Function, Target};
use crate::engine::LogOptions;
use crate::error::{Error, Result};
use crate::policy::Kind;

pub const CONTAINER_LOGS: Function = Function::new::<ContainerLogs>(
    "container_logs",
    Kind::Read,
    Target::Container,
    "Fetch container logs, or start streaming via ``container_log_line`` events.",
    || {
        json!({"type": "object", "properties": {
            "container_id": container_id_schema(),
            "tail": {"type": "integer", "default": 100,
                     "description": "Lines to return, or to seed a follow with."},
            "since": {"type": ["string", "null"], "default": null,
                      "description": "RFC3339 time of the first line."},
            "follow": {"type": "boolean", "default": false,
                       "description": "Emit container_log_line events until stop_container_logs."},
            "timestamps": {"type": ["boolean", "null"], "default": null,
                           "description": "Engine times: a prefix on returned lines (null: yes), ts_engine on follow events (null: no)."}},
          "required": ["container_id"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ContainerLogs {
    container_id: String,
    #[serde(default = "hundred")]
    tail: i64,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    timestamps: Option<bool>,
}

fn hundred() -> i64 {
    100
}

impl Call for ContainerLogs {
    fn call(self, d: &Driver) -> Result<Value> {
        let since = match self.since.as_deref() {
            None | Some("") => None,
            Some(s) => Some(
                crate::time::parse_rfc3339(s)
                    .ok_or_else(|| Error::Params(format!("since: {s:?} is not an RFC3339 timestamp")))?,
            ),
        };
        let opts = LogOptions {
            // Negative means all lines, as the engine's "all".
            tail: u64::try_from(self.tail).ok(),
            since,
            timestamps: self.timestamps.unwrap_or(!self.follow),
            follow: self.follow,
        };
        if self.follow {
            let already = d.follows.start(&self.container_id, opts)?;
            let mut r = json!({"status": "success", "streaming": true, "container_id": self.container_id});
            if already {
                r["already_following"] = json!(true);
            }
            return Ok(r);
        }
        let logs = crate::logs::read(d.engine.as_ref(), &self.container_id, &opts)?;
        Ok(json!({"status": "success", "container_id": self.container_id, "logs": logs}))
    }
}

pub const STOP_CONTAINER_LOGS: Function = Function::new::<StopContainerLogs>(
    "stop_container_logs",
    Kind::Read,
    // Stops only what a caller started; reaches into no container.
    Target::Host,
    "Stop a log follow stream started by ``container_logs(..., follow=true)``.",
    id_only_schema,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct StopContainerLogs {
    container_id: String,
}

impl Call for StopContainerLogs {
    fn call(self, d: &Driver) -> Result<Value> {
        let stopped = d.follows.stop(&self.container_id);
        Ok(json!({"status": "success", "container_id": self.container_id, "stopped": stopped}))
    }
}
