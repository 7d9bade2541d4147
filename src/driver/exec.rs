//! Processes started in a container: one-shot (`exec_in_container`) and
//! interactive sessions (`exec_open` and the rows after it, kept by
//! `sessions`). Every row here is `Kind::Exec`; those that start a process
//! target a container, so the dispatcher's guard checks it against the policy
//! (`Policy::admit_exec`) before any exec instance is created. The other
//! session rows act on a session opened that way.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{container_id_schema, Answer, Call, Driver, Function, Long, Start, Target};
use crate::encoding::base64_decode;
use crate::engine::{ExecCommand, ExecSpec, Watch};
use crate::error::{Error, Result};
use crate::jobs::{Body, Reply, Work};
use crate::policy::Kind;
use crate::sessions::MAX_WAIT_MS;

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
                        "description": "e.g. [\"ls\", \"-l\"]."},
            "environment": {"type": ["object", "null"], "additionalProperties": {"type": "string"},
                            "default": null},
            "workdir": {"type": ["string", "null"], "default": null},
            "timeout_s": {"type": "integer", "default": DEFAULT_TIMEOUT_S, "minimum": 1, "maximum": MAX_TIMEOUT_S,
                          "description": "Then the process (and those it started) is killed; the reply says so, with the output so far."}},
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
        let command = ExecCommand { cmd: self.command, env, user: None, workdir: self.workdir };
        let engine = d.engine.clone();
        let id = self.container_id;
        let work = Work::new(id.clone(), "running", move |p| {
            let out = engine.exec(&id, &command, limit, p)?;
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

/// The shell a session runs when `cmd` is not given.
fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into()]
}

fn yes() -> bool {
    true
}

fn default_rows() -> u16 {
    24
}

fn default_cols() -> u16 {
    80
}

fn default_signal() -> String {
    "HUP".into()
}

fn session_id_schema() -> Value {
    json!({"type": "string", "description": "From exec_open."})
}

pub const EXEC_OPEN: Function = Function::new::<ExecOpen>(
    "exec_open",
    Kind::Exec,
    Target::Container,
    "Open an interactive session (a shell on a TTY, by default) in a running container. Send input with \
     exec_write, read output with exec_read (or exec_output events), end it with exec_close.",
    || {
        json!({"type": "object", "properties": {
            "container_id": container_id_schema(),
            "cmd": {"type": ["array", "string"], "items": {"type": "string"}, "default": default_shell(),
                    "description": "A string is split at whitespace."},
            "tty": {"type": "boolean", "default": true,
                    "description": "false: no terminal, stdout and stderr apart."},
            "rows": {"type": "integer", "default": default_rows(), "minimum": 1, "maximum": 65535},
            "cols": {"type": "integer", "default": default_cols(), "minimum": 1, "maximum": 65535},
            "env": {"type": ["object", "array", "null"], "default": null,
                    "description": "{\"K\": \"V\"} or [\"K=V\"]."},
            "user": {"type": ["string", "null"], "default": null, "description": "user[:group]"},
            "working_dir": {"type": ["string", "null"], "default": null}},
          "required": ["container_id"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Words {
    List(Vec<String>),
    Line(String),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum EnvVars {
    Map(BTreeMap<String, String>),
    List(Vec<String>),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecOpen {
    container_id: String,
    #[serde(default = "default_shell", deserialize_with = "words")]
    cmd: Vec<String>,
    #[serde(default = "yes")]
    tty: bool,
    #[serde(default = "default_rows")]
    rows: u16,
    #[serde(default = "default_cols")]
    cols: u16,
    #[serde(default)]
    env: Option<EnvVars>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
}

fn words<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let v = match Words::deserialize(d)? {
        Words::List(v) => v,
        Words::Line(s) => s.split_whitespace().map(str::to_string).collect(),
    };
    if v.is_empty() {
        return Err(serde::de::Error::custom("cmd must not be empty"));
    }
    Ok(v)
}

impl Call for ExecOpen {
    fn call(self, d: &Driver) -> Result<Value> {
        if self.rows == 0 || self.cols == 0 {
            return Err(Error::Params("rows and cols must be at least 1".into()));
        }
        let env = match self.env {
            None => Vec::new(),
            Some(EnvVars::List(v)) => v,
            Some(EnvVars::Map(m)) => m.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        };
        let spec = ExecSpec {
            command: ExecCommand { cmd: self.cmd, env, user: self.user, workdir: self.working_dir },
            tty: self.tty,
            size: (self.rows, self.cols),
        };
        d.sessions.open(&self.container_id, spec)
    }
}

pub const EXEC_WRITE: Function = Function::new::<ExecWrite>(
    "exec_write",
    Kind::Exec,
    Target::Host,
    "Send input to an exec session: text in data, or bytes in data_b64 (e.g. \"\\u0003\" is Ctrl-C on a TTY); \
     eof ends the process's input, as the end of a pipe does.",
    || {
        json!({"type": "object", "properties": {
            "session_id": session_id_schema(),
            "data": {"type": ["string", "null"], "default": null},
            "data_b64": {"type": ["string", "null"], "default": null},
            "eof": {"type": "boolean", "default": false}},
          "required": ["session_id"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecWrite {
    session_id: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    data_b64: Option<String>,
    #[serde(default)]
    eof: bool,
}

impl Call for ExecWrite {
    fn call(self, d: &Driver) -> Result<Value> {
        let bytes = match (self.data, self.data_b64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => {
                base64_decode(&b64).ok_or_else(|| Error::Params("data_b64 is not valid base64".into()))?
            }
            (None, None) if self.eof => Vec::new(),
            _ => return Err(Error::Params("give exactly one of data and data_b64 (or only eof)".into())),
        };
        d.sessions.write(&self.session_id, &bytes, self.eof)
    }
}

pub const EXEC_RESIZE: Function = Function::new::<ExecResize>(
    "exec_resize",
    Kind::Exec,
    Target::Host,
    "Set the terminal size of an exec session.",
    || {
        json!({"type": "object", "properties": {
            "session_id": session_id_schema(),
            "rows": {"type": "integer", "minimum": 1, "maximum": 65535},
            "cols": {"type": "integer", "minimum": 1, "maximum": 65535}},
          "required": ["session_id", "rows", "cols"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecResize {
    session_id: String,
    rows: u16,
    cols: u16,
}

impl Call for ExecResize {
    fn call(self, d: &Driver) -> Result<Value> {
        d.sessions.resize(&self.session_id, self.rows, self.cols)
    }
}

pub const EXEC_READ: Function = Function::replying::<ExecRead>(
    "exec_read",
    Kind::Exec,
    Target::Host,
    "Read an exec session's output after chunk after_seq, waiting up to wait_ms for some. Returns {chunks: \
     [{seq, stream, data | data_b64}], next_seq, exit_code}: next_seq is the next after_seq, which also \
     acknowledges (at 256 KiB unacknowledged the process waits); exit_code is set once all is read.",
    || {
        json!({"type": "object", "properties": {
            "session_id": session_id_schema(),
            "after_seq": {"type": "integer", "default": 0, "minimum": 0,
                          "description": "Last chunk had; 0: from the start."},
            "wait_ms": {"type": "integer", "default": 0, "minimum": 0, "maximum": MAX_WAIT_MS,
                        "description": "When there is no output yet."}},
          "required": ["session_id"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecRead {
    session_id: String,
    #[serde(default)]
    after_seq: u64,
    #[serde(default)]
    wait_ms: u64,
}

impl Answer for ExecRead {
    fn answer(self, d: &Driver, reply: Reply) {
        let wait = Duration::from_millis(self.wait_ms.min(MAX_WAIT_MS));
        d.sessions.read(&self.session_id, self.after_seq, wait, Box::new(|r| reply(r.map(Body::Value))))
    }
}

pub const EXEC_CLOSE: Function = Function::new::<ExecClose>(
    "exec_close",
    Kind::Exec,
    Target::Host,
    "End an exec session: signal its process (HUP by default; e.g. KILL), close it, and return its exit code.",
    || {
        json!({"type": "object", "properties": {
            "session_id": session_id_schema(),
            "signal": {"type": "string", "default": default_signal(), "description": "HUP, TERM, KILL, ..."}},
          "required": ["session_id"]})
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecClose {
    session_id: String,
    #[serde(default = "default_signal")]
    signal: String,
}

impl Call for ExecClose {
    fn call(self, d: &Driver) -> Result<Value> {
        let signal = self.signal.trim_start_matches("SIG");
        d.sessions.close(&self.session_id, signal)
    }
}

pub const EXEC_SESSIONS: Function = Function::new::<ExecSessions>(
    "exec_sessions",
    Kind::Exec,
    Target::Host,
    "List the open exec sessions.",
    || json!({"type": "object", "properties": {}}),
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ExecSessions {}

impl Call for ExecSessions {
    fn call(self, d: &Driver) -> Result<Value> {
        Ok(d.sessions.list())
    }
}
