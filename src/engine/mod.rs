//! The Docker Engine, seen from the driver: one blocking interface with two
//! implementations, the real engine over HTTP (`docker`) and an in-memory
//! simulator (`sim`). Values that mirror Engine API JSON (container list and
//! inspect, image list) are passed through as `serde_json::Value`, so the sim
//! and the real engine are shaped alike and the driver shapes both the same way.

pub mod docker;
pub mod sim;
pub mod stream;

use std::fmt;
use std::io::Read;

use serde_json::Value;

/// What went wrong talking to the engine. Each variant is turned into a
/// JSON-RPC error message in exactly one place (`rpc`).
#[derive(Debug, Clone, PartialEq)]
pub enum EngineError {
    /// 404: no such container, image, network or exec.
    NotFound(String),
    /// 409: name in use, container running, container not running, ...
    Conflict(String),
    /// 400 and other 4xx: the engine refused what we sent.
    BadRequest(String),
    /// The socket or host did not answer (connect refused, reset, EOF).
    Unreachable(String),
    /// The engine answered too slowly for the call's deadline.
    Timeout(String),
    /// The engine speaks an API older than we support.
    TooOld(String),
    /// 5xx, or an error reported inside a 200 stream (pull `errorDetail`).
    Server(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::NotFound(m) => write!(f, "not found: {m}"),
            EngineError::Conflict(m) => write!(f, "conflict: {m}"),
            EngineError::BadRequest(m) => write!(f, "rejected by engine: {m}"),
            EngineError::Unreachable(m) => write!(f, "docker engine unreachable: {m}"),
            EngineError::Timeout(m) => write!(f, "docker engine timed out: {m}"),
            EngineError::TooOld(m) => write!(f, "docker engine too old: {m}"),
            EngineError::Server(m) => write!(f, "docker engine error: {m}"),
        }
    }
}

impl std::error::Error for EngineError {}

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
    /// Run `cmd` once (no TTY) and collect its output and exit code.
    fn exec(&self, id: &str, cmd: &[String], env: &[String], workdir: Option<&str>) -> Result<ExecOutput>;
    /// Pull `image` (a reference with optional tag or digest). Returns the
    /// status strings of the progress stream, in order.
    fn pull_image(&self, image: &str) -> Result<Vec<String>>;
    /// `GET /images/json` entries (Id, RepoTags, Size, Created as epoch int).
    fn list_images(&self) -> Result<Vec<Value>>;
    /// One stats sample (`GET /containers/{id}/stats?stream=false`).
    fn stats(&self, id: &str) -> Result<Value>;
    /// Networks or volumes, as the Engine API lists them.
    fn list_objects(&self, kind: Object) -> Result<Vec<Value>>;
    /// Create a network or volume from an Engine API body; returns what the
    /// engine answers (`{"Id"}` for a network, the volume for a volume).
    fn create_object(&self, kind: Object, body: &Value) -> Result<Value>;
    fn remove_object(&self, kind: Object, id: &str, force: bool) -> Result<()>;
    /// Attach container `id` to `network`.
    fn connect_network(&self, network: &str, id: &str) -> Result<()>;
    /// `DELETE /images/{name}`: what was untagged and deleted.
    fn remove_image(&self, reference: &str, force: bool) -> Result<Value>;
    /// `POST /images/prune` with Engine API `filters`.
    fn prune_images(&self, filters: &Value) -> Result<Value>;
    /// `GET /events` filtered to containers, as a JSON-lines stream, from
    /// `since` (Unix seconds) when given.
    fn events(&self, since: Option<f64>) -> Result<Stream>;
    /// Human description of where the engine is (`unix:///var/run/docker.sock`),
    /// or `None` for the simulator.
    fn host(&self) -> Option<String>;
}
