//! Compose projects: `compose_up` and `compose_down` of the Python dcd, and
//! `compose_ps` / `compose_logs`. The rows only parse and hand over to
//! `crate::compose`, which reads the file and drives the engine.

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{Call, Driver, Function, Long, Start, Target};
use crate::compose::ComposeSpec;
use crate::engine::LogOptions;
use crate::error::{Error, Result};
use crate::jobs::Work;
use crate::policy::Kind;

pub const COMPOSE_UP: Function = Function::job::<ComposeUp>(
    "compose_up",
    Kind::Compose,
    Target::Host,
    "Start services with docker compose up.",
    || json!({"type": "object", "properties": {"spec": crate::compose::spec_schema()}, "required": ["spec"]}),
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ComposeUp {
    spec: ComposeSpec,
}

impl Driver {
    /// Which project a call means: by name, or by the directory it came from.
    fn project_of(&self, project: Option<String>, dir: Option<&str>) -> Result<String> {
        match (project, dir) {
            (Some(p), _) => Ok(p),
            (None, Some(dir)) => crate::compose::project_for_dir(self.engine.as_ref(), dir),
            (None, None) => Err(Error::Params("project or project_dir is required".into())),
        }
    }
}

/// Checked at once (file, policy); the project is brought up by a job, which
/// a second call for the same project joins. Quiet unless it pulls: a quick
/// `compose_up` leaves no job behind.
impl Long for ComposeUp {
    fn start(self, d: &Driver) -> Result<Start> {
        let checked = crate::compose::check(d.engine.as_ref(), &d.policy, &self.spec)?;
        let reach = d.reach();
        let pulls = checked.pulls();
        let project = checked.project().to_string();
        let work = Work::new(project, if pulls { "pulling" } else { "creating" }, move |p| {
            checked.up(reach.engine.as_ref(), p, &|id| reach.observe_quietly(id))
        })
        .joinable();
        Ok(Start::Job(if pulls { work } else { work.quiet() }))
    }
}

fn project_props() -> Value {
    json!({
        "project_dir": {"type": ["string", "null"], "default": null,
                        "description": "As given to compose_up."},
        "project": {"type": ["string", "null"], "default": null, "description": "Instead of project_dir."}})
}

pub const COMPOSE_DOWN: Function = Function::new::<ComposeDown>(
    "compose_down",
    Kind::Compose,
    Target::Host,
    "Stop and remove compose project resources.",
    || {
        let mut props = project_props();
        props["compose_file"] = json!({"type": ["string", "null"], "default": null,
            "description": "Ignored: the project is found by its labels."});
        props["remove_volumes"] = json!({"type": "boolean", "default": false, "description": "Also named volumes."});
        props["volumes"] = json!({"type": "boolean", "default": false, "description": "Same as remove_volumes."});
        json!({"type": "object", "properties": props, "required": []})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ComposeDown {
    #[serde(default)]
    project_dir: Option<String>,
    #[serde(default)]
    project: Option<String>,
    // Python's compose_down takes it; the project is found by its labels either way.
    #[serde(default, rename = "compose_file")]
    _compose_file: Option<String>,
    #[serde(default)]
    remove_volumes: bool,
    #[serde(default)]
    volumes: bool,
}

impl Call for ComposeDown {
    fn call(self, d: &Driver) -> Result<Value> {
        let project = d.project_of(self.project, self.project_dir.as_deref())?;
        let volumes = self.remove_volumes || self.volumes;
        let reach = d.reach();
        crate::compose::down(d.engine.as_ref(), &d.policy, &project, volumes, &|id| reach.observe_quietly(id))
    }
}

pub const COMPOSE_PS: Function = Function::new::<ComposePs>(
    "compose_ps",
    Kind::Read,
    Target::Host,
    "List a compose project's services and containers, or every project on this host.",
    || json!({"type": "object", "properties": project_props(), "required": []}),
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ComposePs {
    #[serde(default)]
    project_dir: Option<String>,
    #[serde(default)]
    project: Option<String>,
}

impl Call for ComposePs {
    fn call(self, d: &Driver) -> Result<Value> {
        if self.project.is_none() && self.project_dir.is_none() {
            return crate::compose::ps(d.engine.as_ref(), None);
        }
        let project = d.project_of(self.project, self.project_dir.as_deref())?;
        crate::compose::ps(d.engine.as_ref(), Some(&project))
    }
}

pub const COMPOSE_LOGS: Function = Function::new::<ComposeLogs>(
    "compose_logs",
    Kind::Read,
    Target::Host,
    "Fetch a compose project's logs, or follow them via ``container_log_line`` events.",
    || {
        let mut props = project_props();
        props["services"] = json!({"type": ["array", "null"], "items": {"type": "string"}, "default": null});
        props["tail"] = json!({"type": "integer", "default": 100, "description": "Lines per container."});
        props["follow"] = json!({"type": "boolean", "default": false,
            "description": "container_log_line events (container_id: its name) until stop_container_logs."});
        json!({"type": "object", "properties": props, "required": []})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ComposeLogs {
    #[serde(default)]
    project_dir: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    services: Option<Vec<String>>,
    #[serde(default = "hundred")]
    tail: i64,
    #[serde(default)]
    follow: bool,
}

fn hundred() -> i64 {
    100
}

impl Call for ComposeLogs {
    fn call(self, d: &Driver) -> Result<Value> {
        let project = d.project_of(self.project, self.project_dir.as_deref())?;
        let found = crate::compose::containers(d.engine.as_ref(), &project, &self.services.unwrap_or_default())?;
        let opts = LogOptions {
            tail: u64::try_from(self.tail).ok(),
            since: None,
            timestamps: !self.follow,
            follow: self.follow,
        };
        let names: Vec<&String> = found.iter().map(|(_, n)| n).collect();
        if self.follow {
            for (_, name) in &found {
                d.follows.start(name, opts.clone())?;
            }
            return Ok(json!({"status": "success", "project": project, "streaming": true, "containers": names}));
        }
        // Each line prefixed with its container, as `docker compose logs` prints them.
        let mut logs = String::new();
        for (id, name) in &found {
            for line in crate::logs::read(d.engine.as_ref(), id, &opts)?.lines() {
                logs.push_str(&format!("{name}  | {line}\n"));
            }
        }
        Ok(json!({"status": "success", "project": project, "containers": names, "logs": logs}))
    }
}
