//! What can go wrong, as types: `EngineError` for the engine, `Error` for a
//! call. `rpc` turns each into a JSON-RPC error in one place.

use std::fmt;

/// What went wrong talking to the engine.
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
    /// How to reach the engine is mis-configured (a bad docker host, TLS files
    /// that cannot be read); no connection was tried.
    Config(String),
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
            EngineError::Config(m) => write!(f, "docker engine configuration: {m}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Why a call failed. `Clone`, because a job's outcome goes to every caller
/// that joined it.
#[derive(Debug, Clone)]
pub enum Error {
    /// No such function (JSON-RPC -32601).
    UnknownMethod,
    /// Unknown, missing or mistyped parameter.
    Params(String),
    /// The engine refused or could not be reached.
    Engine(EngineError),
    /// A compose file or project that cannot be brought up as asked.
    Compose(String),
    /// The operator's policy refuses the call.
    Policy(String),
    /// The reply is larger than the transport can carry.
    TooLarge { bytes: usize, max: usize },
    /// The daemon could not start a thread for the work (out of resources).
    Spawn(String),
    /// The job was cancelled (`cancel_job`); the message says what was left done.
    Cancelled(String),
    /// The daemon already runs as many jobs as it holds.
    Busy(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownMethod => f.write_str("unknown method"),
            Error::Params(m) => write!(f, "invalid params: {m}"),
            Error::Engine(e) => e.fmt(f),
            Error::Compose(m) => write!(f, "compose: {m}"),
            Error::Policy(m) => write!(f, "policy: {m}"),
            Error::TooLarge { bytes, max } => {
                write!(f, "reply of {bytes} bytes exceeds the server's max_payload of {max} bytes")
            }
            Error::Spawn(m) => write!(f, "cannot start a thread: {m}"),
            Error::Cancelled(m) => write!(f, "cancelled: {m}"),
            Error::Busy(m) => write!(f, "busy: {m}"),
        }
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        Error::Engine(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;
