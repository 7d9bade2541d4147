//! Compose, natively: dcd reads the Compose file itself (`file`), turns it
//! into the engine's create bodies (`plan`), checks every one of them with the
//! policy before anything is made, and drives the engine service by service
//! (`run`). Nothing here depends on the driver or the transport.

pub mod file;
pub mod plan;
pub mod run;
mod yaml;

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Value};

pub use run::{check, containers, down, project_for_dir, ps, Checked};

/// `ComposeProvisionSpec` (spec §7.5), plus what native compose adds.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    #[serde(default)]
    pub project_dir: Option<String>,
    #[serde(default)]
    pub compose_file: Option<String>,
    #[serde(default)]
    pub compose_yaml: Option<String>,
    #[serde(default)]
    pub services: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub detach: bool,
    #[serde(default)]
    pub pull: bool,
    /// Accepted for Python callers; there is no build (a warning says so).
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub remove_orphans: bool,
    /// The project name (compose's `-p`); else the file's `name:`; else the
    /// directory's name, or for inline YAML one derived from its text.
    #[serde(default)]
    pub project: Option<String>,
    /// Variables for `${VAR}` in the file (before a `.env` beside it).
    #[serde(default)]
    pub environment: HashMap<String, String>,
    #[serde(default)]
    pub profiles: Vec<String>,
    /// How long dependencies may take to become healthy or complete, in all.
    #[serde(default = "default_wait")]
    pub wait_timeout_s: u64,
}

fn yes() -> bool {
    true
}

fn default_wait() -> u64 {
    120
}

pub fn spec_schema() -> Value {
    // Described only where the name leaves something to say (issue 16: presence size).
    let opt_str = |d: &str| json!({"type": ["string", "null"], "default": null, "description": d});
    let flag = |d: bool, desc: &str| json!({"type": "boolean", "default": d, "description": desc});
    json!({"type": "object",
      "description": "ComposeProvisionSpec fields; compose_yaml or project_dir is required.",
      "properties": {
        "project_dir": opt_str("On the host, one the policy's compose_dirs allow."),
        "compose_file": opt_str("Relative to project_dir."),
        "compose_yaml": opt_str("The file's text."),
        "services": {"type": ["array", "null"], "items": {"type": "string"}, "default": null,
                     "description": "And what they depend on."},
        "detach": flag(true, "false: wait for the services to exit; return their exit codes."),
        "pull": {"type": "boolean", "default": false},
        "build": flag(false, "Not supported."),
        "remove_orphans": flag(false, "Of services no longer in the file."),
        "project": opt_str("Else the file's name, else the directory's."),
        "environment": {"type": "object", "additionalProperties": {"type": "string"}, "default": {},
                        "description": "For ${VAR} in the file; never the daemon's own."},
        "profiles": {"type": "array", "items": {"type": "string"}, "default": []},
        "wait_timeout_s": {"type": "integer", "default": 120,
                           "description": "For service_healthy / service_completed_successfully, in all."}},
      "required": []})
}
