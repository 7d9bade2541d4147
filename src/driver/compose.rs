//! Compose projects: `compose_up` and `compose_down` of the Python dcd.

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{Call, Driver, Function, Target};
use crate::compose::{Compose, ComposeSpec};
use crate::error::Result;
use crate::labels::managed_labels;
use crate::policy::Kind;

pub const COMPOSE_UP: Function = Function::new::<ComposeUp>(
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

impl Call for ComposeUp {
    fn call(self, d: &Driver) -> Result<Value> {
        if d.simulate {
            return sim_compose_up(d, &self.spec);
        }
        let out = Compose::new(d.simulate).up(&self.spec)?;
        Ok(json!({"status": "success", "stdout": out.stdout, "stderr": out.stderr,
                  "project_dir": out.project_dir}))
    }
}

/// The simulator has no compose CLI: it invents one `compose-<service>`
/// container per service, as the Python simulator does.
fn sim_compose_up(d: &Driver, spec: &ComposeSpec) -> Result<Value> {
    spec.check()?;
    let services = spec.services.clone().unwrap_or_else(|| vec!["app".into()]);
    let project_dir = spec.project_dir.clone().unwrap_or_else(|| "/sim/compose".into());
    for svc in &services {
        let name = format!("compose-{svc}");
        let body = json!({"Image": "sim/compose:latest", "Labels": managed_labels()});
        let id = d.engine.create_container(Some(&name), &body)?;
        d.engine.start_container(&id)?;
        d.observe(&id)?;
    }
    Ok(json!({"status": "success", "stdout": format!("started {}\n", services.join(" ")),
              "stderr": "", "project_dir": project_dir}))
}

pub const COMPOSE_DOWN: Function = Function::new::<ComposeDown>(
    "compose_down",
    Kind::Compose,
    Target::Host,
    "Stop and remove compose project resources.",
    || {
        json!({"type": "object", "properties": {
            "project_dir": {"type": "string", "description": "Directory returned by compose_up."},
            "compose_file": {"type": ["string", "null"], "default": null,
                             "description": "Compose file relative to project_dir."},
            "remove_volumes": {"type": "boolean", "default": false,
                               "description": "Also remove named volumes."}},
          "required": ["project_dir"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ComposeDown {
    project_dir: String,
    #[serde(default)]
    compose_file: Option<String>,
    #[serde(default)]
    remove_volumes: bool,
}

impl Call for ComposeDown {
    fn call(self, d: &Driver) -> Result<Value> {
        let out =
            Compose::new(d.simulate).down(&self.project_dir, self.compose_file.as_deref(), self.remove_volumes)?;
        Ok(json!({"status": "success", "stdout": out.stdout, "stderr": out.stderr}))
    }
}
