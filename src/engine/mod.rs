//! The Docker Engine, seen from the driver: one blocking interface with two
//! implementations, the real engine over HTTP (`docker`) and an in-memory
//! simulator (`sim`). Values that mirror Engine API JSON (container list and
//! inspect, image list) are passed through as `serde_json::Value`, so the sim
//! and the real engine are shaped alike and the driver shapes both the same way.

pub mod docker;
pub mod pull;
pub mod sim;
pub mod stream;

use std::fmt;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

pub use self::pull::PullProgress;
pub use crate::error::EngineError;

pub type Result<T> = std::result::Result<T, EngineError>;

/// Options for reading a container's log.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Number of lines from the end; `None` means all.
    pub tail: Option<u64>,
    /// Only lines at or after this time (Unix seconds).
    pub since: Option<f64>,
    /// Prefix each line with the engine's RFC3339Nano timestamp.
    pub timestamps: bool,
    /// Keep the stream open for new lines.
    pub follow: bool,
}

/// A long-lived byte stream (followed log, engine events). Reading blocks;
/// `cancel` makes a blocked read return (EOF or error) promptly from another
/// thread. Each stream owns its own connection, so it never blocks other calls.
pub struct Stream {
    pub body: Box<dyn Read + Send>,
    pub cancel: Canceller,
}

/// Ends a `Stream` from another thread.
#[derive(Clone)]
pub struct Canceller(std::sync::Arc<dyn Fn() + Send + Sync>);

impl Canceller {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Canceller(std::sync::Arc::new(f))
    }
    pub fn cancel(&self) {
        (self.0)()
    }
}

/// Output of a one-shot exec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    /// The process was killed before it ended: its time ran out or it was
    /// stopped. The output is what it printed until then.
    pub killed: bool,
}

/// What an exec runs in a container, one-shot (`Engine::exec`) or interactive.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecCommand {
    pub cmd: Vec<String>,
    /// `K=V` entries.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

/// An interactive exec: its command, and the terminal it starts with (`Engine::exec_session`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    pub command: ExecCommand,
    pub tty: bool,
    /// The console size it starts with (rows, cols), so no resize races it.
    pub size: (u16, u16),
}

/// An interactive exec on a connection of its own. `output` is raw bytes with
/// a TTY, else multiplexed frames (`stream::Frames`); a read may fail with
/// `TimedOut` or `WouldBlock` about once a second while nothing comes, so its
/// reader can look around (idle, stop). `cancel` closes the connection.
pub struct ExecSession {
    /// The engine's exec id: for resize and the exit code.
    pub exec_id: String,
    /// Marks its processes, so that `exec_signal` finds them.
    pub mark: String,
    pub output: Box<dyn Read + Send>,
    pub input: Box<dyn Write + Send>,
    /// Ends the process's input (its stdin reads EOF), as a pipe's end does.
    pub end_input: Canceller,
    pub cancel: Canceller,
}

/// Who watches long work on the engine (a pull, an exec, a compose project
/// coming up): it hears the work's phase and progress, and is handed the
/// means to stop it from another thread. A job's `Progress` is one, so work
/// below the job layer (compose) reports to a job through this alone.
pub trait Watch: Sync {
    /// The call holds its connection now; `stop` ends it from any thread (a
    /// pull's stream is closed, an exec's process killed).
    fn stoppable(&self, stop: Canceller);
    /// A pull's progress so far, summed over its layers.
    fn pulled(&self, _progress: &PullProgress) {}
    /// The work moved on to `phase` (`pulling`, `creating`, `starting`,
    /// `waiting-healthy`); whatever could stop the last phase is forgotten.
    fn phase(&self, _phase: &'static str) {}
    /// Whether it was asked to stop: work of several steps looks between them.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Nobody watches: the call runs to its end.
impl Watch for () {
    fn stoppable(&self, _: Canceller) {}
}

/// Registry credentials for one pull. A password must never reach a log
/// line or an error message, so there is no derived `Debug`.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The registry they are for; the image's registry when not given.
    pub server_address: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

/// Named engine objects managed alike: list, create, remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Network,
    Volume,
}

/// The blocking engine interface. Ids may be full ids, id prefixes or names
/// wherever the Engine API accepts them.
pub trait Engine: Send + Sync {
    /// `EngineInfo` of the spec (§7.2) without `connected`: docker_version,
    /// api_version, os, arch, containers, images, server_version.
    fn info(&self) -> Result<Value>;
    /// Whether the engine answers (`/_ping`): the cheap liveness check that
    /// presence repeats for as long as the daemon runs.
    fn ping(&self) -> Result<()>;
    /// `GET /containers/json` entries (Id, Names, Image, State, Labels, ...).
    fn list_containers(&self, all: bool) -> Result<Vec<Value>>;
    /// `GET /containers/{id}/json`.
    fn inspect_container(&self, id: &str) -> Result<Value>;
    /// `POST /containers/create`; `body` is the Engine API create body.
    /// Returns the new container's full id.
    fn create_container(&self, name: Option<&str>, body: &Value) -> Result<String>;
    fn start_container(&self, id: &str) -> Result<()>;
    fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()>;
    fn restart_container(&self, id: &str, timeout_s: i64) -> Result<()>;
    fn remove_container(&self, id: &str, force: bool) -> Result<()>;
    fn rename_container(&self, id: &str, name: &str) -> Result<()>;
    /// The raw log stream: multiplexed frames unless `tty`, in which case raw bytes.
    fn logs(&self, id: &str, opts: &LogOptions) -> Result<Stream>;
    /// Run `command` once (no TTY) and collect its output and exit code. It
    /// is killed at `limit` or when `watch` stops it; the output is then what
    /// it printed until that moment.
    fn exec(&self, id: &str, command: &ExecCommand, limit: Duration, watch: &dyn Watch) -> Result<ExecOutput>;
    /// Create and start an interactive exec in container `id` (stdin attached).
    fn exec_session(&self, id: &str, spec: &ExecSpec) -> Result<ExecSession> {
        let _ = (id, spec);
        Err(EngineError::BadRequest("this engine has no interactive exec".into()))
    }
    /// Set an exec's console size.
    fn exec_resize(&self, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let _ = (exec_id, rows, cols);
        Ok(())
    }
    /// Send `signal` (a name: HUP, KILL, ...) to the processes of the exec
    /// marked `mark` in container `id`.
    fn exec_signal(&self, id: &str, mark: &str, signal: &str) -> Result<()> {
        let _ = (id, mark, signal);
        Ok(())
    }
    /// The exit code of an exec whose output has ended.
    fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        let _ = exec_id;
        Err(EngineError::NotFound("no such exec".into()))
    }
    /// Run container `id`'s healthcheck once now, for whoever waits for its
    /// health. Docker runs healthchecks itself: nothing to do. Podman runs them
    /// from systemd timers, so on a host without systemd they never run and
    /// the container stays `starting`.
    fn run_healthcheck(&self, id: &str) -> Result<()> {
        let _ = id;
        Ok(())
    }
    /// Pull `image` (a reference with optional tag or digest), with `auth`
    /// when given, else the credentials the host holds for its registry.
    /// Returns the status strings of the progress stream, in order.
    fn pull_image(&self, image: &str, auth: Option<&Credentials>) -> Result<Vec<String>>;
    /// `pull_image`, telling `watch` how far it got and letting it stop the
    /// pull. An engine that cannot report progress just pulls.
    fn pull_watched(&self, image: &str, auth: Option<&Credentials>, watch: &dyn Watch) -> Result<Vec<String>> {
        let _ = watch;
        self.pull_image(image, auth)
    }
    /// `GET /images/json` entries (Id, RepoTags, Size, Created as epoch int).
    fn list_images(&self) -> Result<Vec<Value>>;
    /// `GET /images/{name}/json`: the image a reference names now (its `Id`).
    fn inspect_image(&self, reference: &str) -> Result<Value>;
    /// One stats sample (`GET /containers/{id}/stats?stream=false`).
    fn stats(&self, id: &str) -> Result<Value>;
    /// Networks or volumes, as the Engine API lists them.
    fn list_objects(&self, kind: Object) -> Result<Vec<Value>>;
    /// Create a network or volume from an Engine API body; returns what the
    /// engine answers (`{"Id"}` for a network, the volume for a volume).
    fn create_object(&self, kind: Object, body: &Value) -> Result<Value>;
    /// `GET /networks/{id}` or `GET /volumes/{name}`.
    fn inspect_object(&self, kind: Object, id: &str) -> Result<Value>;
    fn remove_object(&self, kind: Object, id: &str, force: bool) -> Result<()>;
    /// Attach container `id` to `network`, reachable there by `aliases` too.
    fn connect_network(&self, network: &str, id: &str, aliases: &[String]) -> Result<()>;
    /// `DELETE /images/{name}`: what was untagged and deleted.
    fn remove_image(&self, reference: &str, force: bool) -> Result<Value>;
    /// `POST /images/prune` with Engine API `filters`.
    fn prune_images(&self, filters: &Value) -> Result<Value>;
    /// `GET /events` filtered to containers and networks, as a JSON-lines stream, from
    /// `since` (Unix seconds) when given.
    fn events(&self, since: Option<f64>) -> Result<Stream>;
    /// Human description of where the engine is (`unix:///var/run/docker.sock`),
    /// or `None` for the simulator.
    fn host(&self) -> Option<String>;
}
