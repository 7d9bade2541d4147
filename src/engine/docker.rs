//! The real engine: the Docker Engine API over HTTP/1.1 (ureq), on a unix
//! socket, plain TCP, or TCP with TLS.
//!
//! The engine and registries are reached as the Docker CLI and docker-py reach
//! them (`Options::from_env`): `DOCKER_TLS_VERIFY` with `DOCKER_CERT_PATH` for
//! a `tcp://` engine, `config.json` under `DOCKER_CONFIG` for registry
//! credentials (`auth`).
//!
//! Podman's Docker-compatible API (`podman system service`) is driven by the
//! same client. Where it differs, this module hides or names the difference:
//! its socket is found when Docker's is absent (`default_host`), its followed
//! streams send no headers until their first data (`stream`), its stats come
//! without a previous sample (`stats`), and what a rootless Podman on cgroup v1
//! or a host's rlimits make it refuse or ignore is refused with the limit named
//! (`Facts`, `explain`).
//!
//! Nothing is asked of the engine until the first call, so the daemon starts
//! while the engine is down. The API version is negotiated on the first call
//! that reaches the engine and again after the engine was unreachable, since
//! it may have come back as another version: from the ping's `Api-Version`
//! header on Docker, from `/version` and `/libpod/info` on Podman.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use ureq::config::Config;
use ureq::http::{Method, Request, Response, Uri};
use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, RustlsConnector, ShutdownHandle, Transport,
};
use ureq::{Agent, AsSendBody, Body};

use super::pull::Layers;
use super::stream::{Frames, JsonLines, Source};
use super::{
    Canceller, Credentials, Engine, EngineError, ExecCommand, ExecOutput, ExecSession, ExecSpec, LogOptions, Object,
    Result, Stream, Watch,
};
use crate::sync::lock;

pub mod auth;
#[cfg(test)]
mod fake;

/// The newest API version we speak; a newer engine is spoken to in this one.
const OUR_NEWEST: (u32, u32) = (1, 45);
/// The oldest API version whose JSON shapes we rely on.
const OUR_OLDEST: (u32, u32) = (1, 40);

const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Where `podman system service` listens by default: as root, and (under
/// `$XDG_RUNTIME_DIR`) as the user running it.
const PODMAN_ROOTFUL_SOCKET: &str = "/run/podman/podman.sock";
const PODMAN_USER_SOCKET: &str = "podman/podman.sock";
const DEFAULT_TCP_PORT: u16 = 2375;
const DEFAULT_TLS_PORT: u16 = 2376;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// `info` is our health check: an engine that takes longer is not healthy.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// A pull over a cellular link may take hours; a job's `cancel_job` ends it sooner.
const PULL_MAX: Duration = Duration::from_secs(6 * 3600);
/// The exec that kills another exec's processes.
const EXEC_KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variable that marks an exec's processes, so that they can
/// be found and signalled (`exec_signal`).
const EXEC_MARK: &str = "DCD_EXEC";
/// Added to a stop/restart grace period for the engine's own work.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// Reading a whole (non-follow) log is paced by the caller.
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a followed stream on Podman waits for its response headers before
/// it is handed out anyway: Podman sends none until the first event or log
/// line (containers/podman#23712). Its refusals (404, 400) come at once.
const HEADER_GRACE: Duration = Duration::from_millis(100);
/// Between the two samples of a stats call the engine did not sample twice
/// itself (Podman), as Docker spaces its own.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

const MAX_JSON_BODY: u64 = 64 << 20;
const MAX_ERROR_BODY: u64 = 64 << 10;
const MAX_EXEC_OUTPUT: usize = 16 << 20;

/// How the engine and registries are reached besides the engine's address,
/// read from the environment as the Docker CLI reads it.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `DOCKER_TLS_VERIFY` (any non-empty value): a `tcp://` engine is spoken
    /// to over TLS and must present a certificate for its host name that
    /// chains to `ca.pem`, as docker-py checks it. docker-py's other mode, TLS
    /// without verification when only `DOCKER_CERT_PATH` is set, is not offered.
    pub tls_verify: bool,
    /// `DOCKER_CERT_PATH`, default `~/.docker` under `tls_verify`: `ca.pem`,
    /// and `cert.pem` with `key.pem`, when present, as our client certificate.
    pub cert_path: Option<PathBuf>,
    /// `DOCKER_CONFIG`, default `~/.docker`: its `config.json` holds registry
    /// credentials (`auths`), read at each pull so a `docker login` counts at once.
    pub config_dir: Option<PathBuf>,
}

impl Options {
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Options {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        let home_docker = var("HOME").map(|h| Path::new(&h).join(".docker"));
        let tls_verify = var("DOCKER_TLS_VERIFY").is_some();
        let cert_path = var("DOCKER_CERT_PATH").map(PathBuf::from);
        Options {
            tls_verify,
            cert_path: if tls_verify { cert_path.or_else(|| home_docker.clone()) } else { cert_path },
            config_dir: var("DOCKER_CONFIG").map(PathBuf::from).or(home_docker),
        }
    }
}

/// What an exec printed, and why it ended before its process did, if it did.
struct ExecRun {
    exec_id: String,
    mark: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    cut: Option<EngineError>,
}

/// A Docker Engine reached over `unix://` or `tcp://`.
pub struct Docker {
    host: String,
    target: Target,
    agent: Agent,
    config_dir: Option<PathBuf>,
    /// The negotiated API version and what else the engine said of itself;
    /// `None` until the engine answers and again after it became unreachable.
    facts: Mutex<Option<Facts>>,
    /// Held while negotiating, so the calls of a start-up (or of a return)
    /// that all find no facts wait for one negotiation instead of each
    /// starting its own: Podman gathers its host's facts for `/version` and
    /// `/libpod/info` alike, a second's work each on a small board.
    negotiating: Mutex<()>,
    /// The versions the engine's ping named at the last negotiation, and the
    /// facts it brought: kept when the engine goes away (`facts` is not).
    last: Mutex<Option<(PingVersions, Facts)>>,
}

/// What an engine's `/_ping` says of its versions, in its headers: the API
/// version, and Podman's own (Docker sends none).
type PingVersions = (Option<String>, Option<String>);

/// What an engine says of itself at negotiation, for what depends on it.
#[derive(Debug, Clone, PartialEq)]
struct Facts {
    /// The API version both sides speak (`"1.41"`).
    api: String,
    /// Podman (`/version` names its component "Podman Engine"), not Docker.
    podman: bool,
    /// Podman run by an unprivileged user, from `/libpod/info` (Podman's
    /// compatible `/info` does not say).
    rootless: bool,
    /// The host's cgroups are v1: a rootless Podman then has no cgroup of its
    /// own, and ignores resource limits without a word.
    cgroup_v1: bool,
}

impl Facts {
    /// Rootless Podman on cgroup v1 cannot limit or measure a container.
    fn no_cgroups(&self) -> bool {
        self.podman && self.rootless && self.cgroup_v1
    }
}

#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    /// `http://host:port`, or `https://host:port` with the TLS to speak.
    Tcp(String, Option<TlsConfig>),
}

impl Target {
    fn base(&self) -> &str {
        match self {
            // The host part is only for the Host header; the connector
            // ignores it.
            Target::Unix(_) => "http://docker",
            Target::Tcp(base, _) => base,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Target::Tcp(_, Some(_)))
    }
}

impl Docker {
    /// `host` is a DOCKER_HOST value; `None` means `$DOCKER_HOST`, else the
    /// default unix socket. The rest comes from the environment
    /// (`Options::from_env`). Fails only for a host we cannot speak to at all
    /// or unusable TLS files, never because the engine is down.
    pub fn connect(host: Option<&str>) -> Result<Docker> {
        Docker::connect_with(host, &Options::from_env(&|k| std::env::var(k).ok()))
    }

    /// `connect` with the options given rather than read from the environment.
    pub fn connect_with(host: Option<&str>, opts: &Options) -> Result<Docker> {
        let host = match host {
            Some(h) => h.to_string(),
            None => std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| {
                let runtime_dir = std::env::var("XDG_RUNTIME_DIR").ok().filter(|d| !d.is_empty());
                default_host(&|p| p.exists(), runtime_dir.as_deref())
            }),
        };
        let mut target = parse_host(&host, opts.tls_verify)?;
        if let Target::Tcp(_, tls) = &mut target {
            match (&opts.cert_path, opts.tls_verify) {
                (Some(dir), true) => *tls = Some(engine_tls(dir)?),
                (None, true) => {
                    return Err(EngineError::Config(
                        "DOCKER_TLS_VERIFY is set, but neither DOCKER_CERT_PATH nor HOME says where ca.pem is".into(),
                    ))
                }
                (Some(_), false) => log::warn!(
                    "DOCKER_CERT_PATH is set without DOCKER_TLS_VERIFY: dcd speaks TLS to an engine only \
                     with verification, so {host} gets plain HTTP (set DOCKER_TLS_VERIFY=1 for TLS)"
                ),
                (None, false) => {}
            }
        }
        Ok(Docker {
            agent: new_agent(&target, Some(CALL_TIMEOUT), false),
            host,
            target,
            config_dir: opts.config_dir.clone(),
            facts: Mutex::new(None),
            negotiating: Mutex::new(()),
            last: Mutex::new(None),
        })
    }

    fn facts(&self) -> Result<Facts> {
        if let Some(f) = lock(&self.facts).clone() {
            return Ok(f);
        }
        let _one = lock(&self.negotiating);
        if let Some(f) = lock(&self.facts).clone() {
            return Ok(f);
        }
        // An engine that answers again after an outage is the one we knew when
        // its ping names the same versions: its facts stand. The ping costs the
        // engine nothing, while a negotiation costs Podman seconds under load,
        // and an engine that breaks every call (each forgets the facts) would
        // otherwise be negotiated with before each. A ping that fails for want
        // of the engine fails the call; an engine without one (none we know of)
        // is negotiated with.
        let pinged = match self.ping_versions() {
            Err(e @ (EngineError::Unreachable(_) | EngineError::Timeout(_))) => return Err(e),
            pinged => pinged.ok(),
        };
        // Only a ping that names the API version tells engines apart.
        let pinged = pinged.filter(|(api, _)| api.is_some());
        let last = lock(&self.last).clone();
        if let (Some(now), Some((then, facts))) = (&pinged, last) {
            if *now == then {
                *lock(&self.facts) = Some(facts.clone());
                return Ok(facts);
            }
        }
        // Docker's ping names its API version, and that is all Docker's facts need: no
        // `/version`, which dockerd answers by running runc and docker-init (its slowest call,
        // and at start-up the describe thread's `/version` and `/info` are under way beside it).
        let facts = match &pinged {
            Some((Some(api), None)) => {
                let facts = Facts { api: pick_version(api)?, podman: false, rootless: false, cgroup_v1: false };
                *lock(&self.facts) = Some(facts.clone());
                facts
            }
            _ => self.negotiate()?.0,
        };
        if let Some(now) = pinged {
            *lock(&self.last) = Some((now, facts.clone()));
        }
        Ok(facts)
    }

    /// `GET /_ping` (unversioned), and the versions its headers name.
    fn ping_versions(&self) -> Result<PingVersions> {
        let resp = self.send_to(&self.agent, Method::GET, "/_ping", None, None, Some(INFO_TIMEOUT))?;
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let versions = (header("api-version"), header("libpod-api-version"));
        // Read to the end ("OK"), so the connection goes back to the pool.
        resp.into_body().into_with_config().limit(1024).read_to_vec().map_err(|e| self.fail(e))?;
        Ok(versions)
    }

    fn api_version(&self) -> Result<String> {
        Ok(self.facts()?.api)
    }

    /// `GET /version` (unversioned), the API version both sides speak and,
    /// from Podman, `GET /libpod/info` for what its compatible API leaves out.
    fn negotiate(&self) -> Result<(Facts, Value)> {
        let resp = self.send_to(&self.agent, Method::GET, "/version", None, None, Some(INFO_TIMEOUT))?;
        let version = self.read_json(resp)?;
        let server = version["ApiVersion"]
            .as_str()
            .ok_or_else(|| EngineError::Server("engine did not report an API version".into()))?;
        let api = pick_version(server)?;
        let podman = podman_version(&version).is_some();
        let mut facts = Facts { api, podman, rootless: false, cgroup_v1: false };
        if podman {
            // Versioned by Podman's own API, whose oldest is 4.0.0.
            let resp = self.send_to(&self.agent, Method::GET, "/v4.0.0/libpod/info", None, None, Some(INFO_TIMEOUT))?;
            let host = self.read_json(resp)?["host"].take();
            facts.rootless = host["security"]["rootless"] == true;
            facts.cgroup_v1 = host["cgroupVersion"] == "v1";
        }
        *lock(&self.facts) = Some(facts.clone());
        Ok((facts, version))
    }

    /// A versioned call on the shared agent.
    fn send(&self, method: Method, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Response<Body>> {
        let api = self.api_version()?;
        let path = format!("/v{api}{path}");
        self.send_to(&self.agent, method, &path, None, body, Some(timeout))
    }

    fn call_json(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let resp = self.send(method, path, body, CALL_TIMEOUT)?;
        self.read_json(resp)
    }

    fn call_empty(&self, method: Method, path: &str, body: Option<&Value>, t: Duration) -> Result<()> {
        self.send(method, path, body, t).map(drop)
    }

    /// Sends a request, with one extra `header` if given, and turns a
    /// non-success status into an error. 304 counts as success: it is
    /// start/stop's "already started/stopped".
    fn send_to(
        &self,
        agent: &Agent,
        method: Method,
        path: &str,
        header: Option<(&str, &str)>,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response<Body>> {
        let uri = format!("{}{path}", self.target.base());
        let get = method == Method::GET;
        let mut req = Request::builder().method(method).uri(uri);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let sent = match body {
            Some(body) => {
                let bytes = serde_json::to_vec(body).expect("a Value always serializes");
                let req = req.header("Content-Type", "application/json").body(bytes);
                run(agent, req, timeout)
            }
            None if get => run(agent, req.body(()), timeout),
            // Without a body ureq sends a POST chunked, which the engine
            // takes for a (long removed) start body: send an empty one.
            None => run(agent, req.body(&[][..]), timeout),
        };
        checked(sent.map_err(|e| self.fail(e))?, path)
    }

    fn read_json(&self, resp: Response<Body>) -> Result<Value> {
        let bytes = resp.into_body().into_with_config().limit(MAX_JSON_BODY).read_to_vec().map_err(|e| self.fail(e))?;
        serde_json::from_slice(&bytes).map_err(|e| EngineError::Server(format!("engine sent invalid JSON: {e}")))
    }

    /// Maps a transport error, forgetting the API version if the engine is
    /// gone.
    fn fail(&self, e: ureq::Error) -> EngineError {
        let err = match e {
            ureq::Error::Timeout(t) => EngineError::Timeout(format!("{} ({t})", self.host)),
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                EngineError::Timeout(format!("{}: {e}", self.host))
            }
            // rustls reports a failed handshake or a bad record as invalid data.
            ureq::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData && self.target.is_tls() => {
                EngineError::Unreachable(format!("{}: TLS: {e}", self.host))
            }
            ureq::Error::Io(e) => EngineError::Unreachable(format!("{}: {e}", self.host)),
            ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_) => {
                EngineError::Unreachable(format!("{}: TLS: {e}", self.host))
            }
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
                EngineError::Unreachable(format!("{}: {e}", self.host))
            }
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => EngineError::BadRequest(e.to_string()),
            e => EngineError::Server(e.to_string()),
        };
        if matches!(err, EngineError::Unreachable(_)) {
            *lock(&self.facts) = None;
        }
        err
    }

    /// A GET whose body is handed out as a `Stream`, on its own agent so it
    /// neither holds up other calls nor outlives a `cancel`. Without a
    /// `timeout` (a follow) on Podman, whose headers wait for the first event
    /// or line, the request runs on a thread of its own until they come; after
    /// `HEADER_GRACE` the stream is handed out, if the engine still answers a
    /// ping (a hung one is not taken for a quiet one), and its first read waits.
    fn stream(&self, path: &str, timeout: Option<Duration>) -> Result<Stream> {
        let facts = self.facts()?;
        let path = format!("/v{}{path}", facts.api);
        let agent = new_agent(&self.target, timeout, facts.podman);
        let cancel = {
            let agent = agent.clone();
            Canceller::new(move || agent.clone().shutdown())
        };
        if timeout.is_some() || !facts.podman {
            let resp = self.send_to(&agent, Method::GET, &path, None, None, timeout)?;
            return Ok(Stream { body: Box::new(resp.into_body().into_reader()), cancel });
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let uri = format!("{}{path}", self.target.base());
        std::thread::Builder::new()
            .name("engine-stream".into())
            .spawn(move || {
                // Ends with the headers, or with an error once cancelled.
                let _ = tx.send(run(&agent, Request::get(uri).body(()), None));
            })
            .map_err(|e| EngineError::Server(format!("cannot start a thread for {path}: {e}")))?;
        let body: Box<dyn Read + Send> = match rx.recv_timeout(HEADER_GRACE) {
            Ok(sent) => Box::new(checked(sent.map_err(|e| self.fail(e))?, &path)?.into_body().into_reader()),
            Err(_) => {
                if let Err(e) = self.ping() {
                    cancel.cancel();
                    return Err(e);
                }
                Box::new(Headerless { pending: Some((rx, path)), body: None })
            }
        };
        Ok(Stream { body, cancel })
    }

    /// Create an exec of `command` in container `id`; `terminal` is the TTY
    /// flag and console size of an interactive one, which gets stdin. Its
    /// environment carries a fresh `EXEC_MARK`, by which `exec_signal` finds
    /// its processes. Returns the exec id and the mark.
    fn exec_create(
        &self,
        id: &str,
        command: &ExecCommand,
        terminal: Option<(bool, [u16; 2])>,
    ) -> Result<(String, String)> {
        let mark = crate::ids::random_hex(16);
        let mut env = command.env.clone();
        env.push(format!("{EXEC_MARK}={mark}"));
        let (tty, stdin) = terminal.map_or((false, false), |(tty, _)| (tty, true));
        let mut create = json!({"AttachStdin": stdin, "AttachStdout": true, "AttachStderr": true,
            "Tty": tty, "Cmd": command.cmd, "Env": env});
        if let Some((_, size)) = terminal {
            create["ConsoleSize"] = json!(size);
        }
        if let Some(dir) = &command.workdir {
            create["WorkingDir"] = json!(dir);
        }
        if let Some(user) = &command.user {
            create["User"] = json!(user);
        }
        let path = format!("/containers/{}/exec", container(id)?);
        let created = self.call_json(Method::POST, &path, Some(&create))?;
        let exec_id = created["Id"].as_str().ok_or_else(|| EngineError::Server("exec create returned no Id".into()))?;
        Ok((exec_id.to_string(), mark))
    }

    /// Create and start a one-shot exec, and read its output until it ends,
    /// `limit` passes or `watch` stops it (then `cut` says why). The start
    /// runs on a connection of its own, so that stopping it touches no other call.
    fn exec_run(&self, id: &str, command: &ExecCommand, limit: Duration, watch: &dyn Watch) -> Result<ExecRun> {
        let (exec_id, mark) = self.exec_create(id, command, None)?;
        let start = json!({ "Detach": false, "Tty": false });
        let facts = self.facts()?;
        let path = format!("/v{}/exec/{}/start", facts.api, segment(&exec_id)?);
        let agent = new_agent(&self.target, Some(limit), facts.podman);
        let resp = self.send_to(&agent, Method::POST, &path, None, Some(&start), Some(limit))?;
        let stopped = stopper(&agent, watch);
        let mut body = resp.into_body().into_reader();
        let mut run = ExecRun { exec_id, mark, stdout: Vec::new(), stderr: Vec::new(), cut: None };
        let mut truncated = false;
        let mut frames = Frames::new(false);
        let mut buf = vec![0; 32 << 10];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    run.cut = Some(self.fail(e.into()));
                    break;
                }
            };
            frames.push(&buf[..n], &mut |source, data, _| {
                let sink = match source {
                    Source::Stdout => &mut run.stdout,
                    Source::Stderr => &mut run.stderr,
                };
                let room = MAX_EXEC_OUTPUT - sink.len();
                truncated |= data.len() > room;
                sink.extend_from_slice(&data[..data.len().min(room)]);
            });
        }
        if truncated {
            log::warn!("exec output over {MAX_EXEC_OUTPUT} bytes per stream was dropped");
        }
        // A closed connection may read as a plain end.
        if stopped.load(Ordering::SeqCst) {
            run.cut.get_or_insert_with(|| EngineError::Unreachable(format!("exec {} was stopped", run.exec_id)));
        }
        Ok(run)
    }

    /// The socket to the engine for a connection we speak HTTP on ourselves
    /// (a hijacked exec). TLS is not offered: its stream would have to be
    /// read and written from two threads at once.
    fn raw_socket(&self) -> Result<Sock> {
        let unreachable = |e: io::Error| EngineError::Unreachable(format!("{}: {e}", self.host));
        match &self.target {
            Target::Unix(path) => UnixStream::connect(path).map(Sock::Unix).map_err(unreachable),
            Target::Tcp(base, None) => {
                let authority = base.trim_start_matches("http://");
                let addrs: Vec<SocketAddr> =
                    std::net::ToSocketAddrs::to_socket_addrs(authority).map_err(unreachable)?.collect();
                tcp_connect(&addrs, Some(CONNECT_TIMEOUT)).map(Sock::Tcp).map_err(unreachable)
            }
            Target::Tcp(_, Some(_)) => {
                Err(EngineError::BadRequest("interactive exec sessions are not offered over a TLS engine".into()))
            }
        }
    }
}

/// The bytes of a hijacked connection after its response headers.
struct Hijacked {
    early: Vec<u8>,
    sock: Arc<Sock>,
}

impl Read for Hijacked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(n);
        }
        self.sock.io().read(buf)
    }
}

struct HijackedInput(Arc<Sock>);

impl Write for HijackedInput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.io().write_all(buf).map(|()| buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How often a hijacked stream's read returns while nothing comes, and how
/// long a write to a process that does not read its input may block.
const SESSION_TICK: Duration = Duration::from_secs(1);
const SESSION_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Response headers longer than this are not the engine's.
const MAX_HEADERS: usize = 16 << 10;

/// Send `request` on `sock` and read the response headers; returns the bytes
/// that came after them, the start of the hijacked stream.
fn hijack(sock: &Sock, request: &[u8], path: &str) -> Result<Vec<u8>> {
    let lost = |e: io::Error| EngineError::Unreachable(format!("{path}: {e}"));
    sock.io().write_all(request).map_err(lost)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if got.len() > MAX_HEADERS {
            return Err(EngineError::Server(format!("{path}: response headers too long")));
        }
        match sock.io().read(&mut buf).map_err(lost)? {
            0 => return Err(lost(io::ErrorKind::UnexpectedEof.into())),
            n => got.extend_from_slice(&buf[..n]),
        }
    };
    let status: u16 = String::from_utf8_lossy(&got[..end]).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rest = got.split_off(end);
    match status {
        // Docker upgrades; an engine that ignores the upgrade answers 200 and hijacks all the same.
        101 | 200 => Ok(rest),
        // A refusal's body is a short JSON message, come with the headers.
        _ => Err(refusal(status, &String::from_utf8_lossy(&rest), path)),
    }
}

impl Engine for Docker {
    fn info(&self) -> Result<Value> {
        // `/version` (negotiated afresh: this is the health check) and `/info` are dockerd's two
        // slowest calls (each runs runc and docker-init for their versions: 6–20 ms here), so they
        // go together. `/info` cannot wait for the negotiation: it goes at the version last
        // negotiated, or at our oldest, as what we read of it is the same in each.
        let api =
            lock(&self.facts).as_ref().map_or_else(|| format!("{}.{}", OUR_OLDEST.0, OUR_OLDEST.1), |f| f.api.clone());
        let (negotiated, info) = std::thread::scope(|s| {
            let info = s.spawn(|| {
                let path = format!("/v{api}/info");
                self.send_to(&self.agent, Method::GET, &path, None, None, Some(INFO_TIMEOUT))
                    .and_then(|resp| self.read_json(resp))
            });
            // Under the lock if it is free: the calls that find no facts meanwhile (the state
            // thread's first list, at start-up) then take these rather than ask the engine a
            // second time. Not waiting for it: this asks `/version` afresh in any case, so
            // after another's negotiation it would only come later.
            let negotiated = {
                let _one = self.negotiating.try_lock();
                self.negotiate()
            };
            (negotiated, info.join())
        });
        let (facts, version) = negotiated?;
        let info = info.unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        let (engine, engine_version, rootless) = match podman_version(&version) {
            Some(v) => ("Podman", json!(v), facts.rootless),
            // Docker's rootless mode shows in its security options.
            None => {
                let options = info["SecurityOptions"].as_array().into_iter().flatten();
                ("Docker", version["Version"].clone(), options.into_iter().any(|o| o == "name=rootless"))
            }
        };
        Ok(json!({
            "docker_version": version["Version"],
            "api_version": facts.api,
            "os": version["Os"],
            "arch": version["Arch"],
            "containers": info["Containers"],
            "images": info["Images"],
            "server_version": info["ServerVersion"],
            "engine": engine,
            "engine_version": engine_version,
            "rootless": rootless,
        }))
    }

    fn ping(&self) -> Result<()> {
        // Unversioned, so it needs no negotiation and works whatever the
        // engine came back as.
        self.ping_versions().map(drop)
    }

    fn list_containers(&self, all: bool) -> Result<Vec<Value>> {
        let q = query(&[("all", flag(all))]);
        list(self.call_json(Method::GET, &format!("/containers/json{q}"), None)?)
    }

    fn inspect_container(&self, id: &str) -> Result<Value> {
        let path = format!("/containers/{}/json", container(id)?);
        self.call_json(Method::GET, &path, None)
    }

    fn create_container(&self, name: Option<&str>, body: &Value) -> Result<String> {
        if self.facts()?.no_cgroups() {
            let host = &body["HostConfig"];
            let limits: Vec<&str> = RESOURCE_LIMITS
                .iter()
                .filter(|(key, _)| {
                    host[*key].as_i64().is_some_and(|v| v != 0) || host[*key].as_f64().is_some_and(|v| v != 0.0)
                })
                .map(|(_, name)| *name)
                .collect();
            if !limits.is_empty() {
                return Err(EngineError::BadRequest(format!(
                    "{} cannot be applied: {NO_CGROUPS}, and would run the container without them",
                    limits.join(", ")
                )));
            }
        }
        let q = match name {
            Some(n) => query(&[("name", n)]),
            None => String::new(),
        };
        let created = self.call_json(Method::POST, &format!("/containers/create{q}"), Some(body))?;
        if let Some(warnings) = created["Warnings"].as_array().filter(|w| !w.is_empty()) {
            log::warn!("engine warnings creating container: {warnings:?}");
        }
        created["Id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| EngineError::Server("container create returned no Id".into()))
    }

    fn start_container(&self, id: &str) -> Result<()> {
        let path = format!("/containers/{}/start", container(id)?);
        self.call_empty(Method::POST, &path, None, CALL_TIMEOUT)
    }

    fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let path = format!("/containers/{}/stop{}", container(id)?, grace(timeout_s));
        self.call_empty(Method::POST, &path, None, grace_deadline(timeout_s))
    }

    fn restart_container(&self, id: &str, timeout_s: i64) -> Result<()> {
        let path = format!("/containers/{}/restart{}", container(id)?, grace(timeout_s));
        self.call_empty(Method::POST, &path, None, grace_deadline(timeout_s))
    }

    fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let q = query(&[("force", flag(force)), ("v", "0")]);
        let path = format!("/containers/{}{q}", container(id)?);
        self.call_empty(Method::DELETE, &path, None, CALL_TIMEOUT)
    }

    fn rename_container(&self, id: &str, name: &str) -> Result<()> {
        let path = format!("/containers/{}/rename{}", container(id)?, query(&[("name", name)]));
        self.call_empty(Method::POST, &path, None, CALL_TIMEOUT)
    }

    fn logs(&self, id: &str, opts: &LogOptions) -> Result<Stream> {
        let tail = opts.tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let mut q = vec![
            ("stdout", "1".to_string()),
            ("stderr", "1".to_string()),
            ("tail", tail),
            ("timestamps", flag(opts.timestamps).to_string()),
            ("follow", flag(opts.follow).to_string()),
        ];
        if let Some(since) = opts.since {
            q.push(("since", unix_time(since)));
        }
        let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path = format!("/containers/{}/logs{}", container(id)?, query(&q));
        self.stream(&path, (!opts.follow).then_some(LOG_READ_TIMEOUT))
    }

    fn exec(&self, id: &str, command: &ExecCommand, limit: Duration, watch: &dyn Watch) -> Result<ExecOutput> {
        let run = self.exec_run(id, command, limit, watch)?;
        let killed = match run.cut {
            None => false,
            // Cut off (its time ran out, or `watch` stopped it): the process
            // may still run, so it is killed, and what it printed is kept.
            Some(e) => {
                self.exec_signal(id, &run.mark, "KILL").map_err(|k| EngineError::Server(format!("{e}; then {k}")))?;
                true
            }
        };
        Ok(ExecOutput {
            exit_code: self.exec_exit_code(&run.exec_id)?,
            stdout: String::from_utf8_lossy(&run.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&run.stderr).into_owned(),
            killed,
        })
    }

    /// Created with the console size it starts with, and started on a
    /// connection of our own that the engine hijacks (`Upgrade: tcp`).
    fn exec_session(&self, id: &str, spec: &ExecSpec) -> Result<ExecSession> {
        let size = [spec.size.0, spec.size.1];
        let (exec_id, mark) = self.exec_create(id, &spec.command, Some((spec.tty, size)))?;
        let path = format!("/v{}/exec/{}/start", self.api_version()?, segment(&exec_id)?);
        let body = json!({"Detach": false, "Tty": spec.tty, "ConsoleSize": size}).to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: dcd/{}\r\nContent-Type: application/json\r\n\
             Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n{body}",
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        let sock = self.raw_socket()?;
        let timeouts =
            |read, write| sock.set_read_timeout(Some(read)).and_then(|()| sock.set_write_timeout(Some(write)));
        let unreachable = |e: io::Error| EngineError::Unreachable(format!("{}: {e}", self.host));
        timeouts(CALL_TIMEOUT, CALL_TIMEOUT).map_err(unreachable)?;
        let early = hijack(&sock, request.as_bytes(), &path)?;
        timeouts(SESSION_TICK, SESSION_WRITE_TIMEOUT).map_err(unreachable)?;
        let sock = Arc::new(sock);
        let (closer, half) = (sock.clone(), sock.clone());
        Ok(ExecSession {
            exec_id,
            mark,
            output: Box::new(Hijacked { early, sock: sock.clone() }),
            input: Box::new(HijackedInput(sock)),
            end_input: Canceller::new(move || half.close_write()),
            cancel: Canceller::new(move || closer.shutdown()),
        })
    }

    fn exec_resize(&self, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let q = query(&[("h", &rows.to_string()), ("w", &cols.to_string())]);
        self.call_empty(Method::POST, &format!("/exec/{}/resize{q}", segment(exec_id)?), None, CALL_TIMEOUT)
    }

    /// The engine has no call that signals an exec, and the PID its exec
    /// inspect reports is the host's, which means nothing in the container's
    /// PID namespace; so a second exec signals the processes from inside,
    /// found by the `EXEC_MARK` in their environment (the one the exec started
    /// and its children). It needs `sh`, `grep` and `kill` in the container.
    fn exec_signal(&self, id: &str, mark: &str, signal: &str) -> Result<()> {
        if signal.is_empty() || !signal.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(EngineError::BadRequest(format!("invalid signal {signal:?}")));
        }
        let script = format!(
            "for p in /proc/[0-9]*; do grep -qs {EXEC_MARK}={mark} $p/environ && kill -{signal} ${{p#/proc/}}; done; true"
        );
        let command = ExecCommand { cmd: vec!["sh".into(), "-c".into(), script], ..ExecCommand::default() };
        let run = self.exec_run(id, &command, EXEC_KILL_TIMEOUT, &())?;
        match (run.cut, self.exec_exit_code(&run.exec_id)?) {
            (None, 0) => Ok(()),
            (Some(e), _) => Err(EngineError::Server(format!("could not signal the process: {e}"))),
            (None, code) => Err(EngineError::Server(format!(
                "could not signal the process (exit {code}: {})",
                String::from_utf8_lossy(&run.stderr).trim()
            ))),
        }
    }

    /// `ExitCode` of a finished exec. The engine may close the output stream
    /// a moment before it records the exit code.
    fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        let path = format!("/exec/{}/json", segment(exec_id)?);
        for _ in 0..40 {
            let inspect = self.call_json(Method::GET, &path, None)?;
            if let (Some(code), false) = (inspect["ExitCode"].as_i64(), inspect["Running"] == true) {
                return Ok(code);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(EngineError::Server(format!("exec {exec_id} finished its output but reports no exit code")))
    }

    fn run_healthcheck(&self, id: &str) -> Result<()> {
        if !self.facts()?.podman {
            return Ok(());
        }
        // Podman's own API (`podman healthcheck run`), versioned by it; the
        // check's result lands in the container's health, as a timer's would.
        let path = format!("/v4.0.0/libpod/containers/{}/healthcheck", container(id)?);
        let resp = self.send_to(&self.agent, Method::GET, &path, None, None, Some(CALL_TIMEOUT))?;
        self.read_json(resp).map(drop)
    }

    fn pull_image(&self, image: &str, given: Option<&Credentials>) -> Result<Vec<String>> {
        self.pull_watched(image, given, &())
    }

    fn pull_watched(&self, image: &str, given: Option<&Credentials>, watch: &dyn Watch) -> Result<Vec<String>> {
        let (from, tag) = split_reference(image)?;
        let registry = auth::registry_key(from);
        let (creds, source) = auth::lookup(given, self.config_dir.as_deref(), &registry);
        let header = creds.map(|c| c.header(&registry));
        let facts = self.facts()?;
        let path = format!("/v{}/images/create{}", facts.api, query(&[("fromImage", from), ("tag", tag)]));
        // Its own connection, so that `watch` can close it (the engine then
        // abandons the pull) without touching any other call.
        let agent = new_agent(&self.target, Some(PULL_MAX), facts.podman);
        let resp = self
            .send_to(
                &agent,
                Method::POST,
                &path,
                header.as_deref().map(|h| ("X-Registry-Auth", h)),
                None,
                Some(PULL_MAX),
            )
            .map_err(|e| note_credentials(e, &source))?;
        let stopped = stopper(&agent, watch);
        let mut body = resp.into_body().into_reader();
        let mut lines = JsonLines::new();
        let mut layers = Layers::default();
        let mut statuses = Vec::new();
        let mut error = None;
        let mut collect = |v: Value| {
            let message = v["errorDetail"]["message"].as_str().or(v["error"].as_str());
            if let Some(m) = message {
                error.get_or_insert_with(|| m.to_string());
            } else if let Some(s) = v["status"].as_str() {
                statuses.push(s.to_string());
                if layers.take(&v) {
                    watch.pulled(&layers.progress());
                }
            }
        };
        let mut buf = vec![0; 16 << 10];
        loop {
            match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => lines.push(&buf[..n], &mut collect),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.fail(e.into())),
            }
        }
        lines.finish(&mut collect);
        // A closed connection may read as a plain end: that is no pull.
        if stopped.load(Ordering::SeqCst) {
            return Err(EngineError::Unreachable(format!("the pull of {image} was stopped")));
        }
        match error {
            Some(m) if is_not_found(&m) => Err(note_credentials(EngineError::NotFound(m), &source)),
            Some(m) => Err(note_credentials(EngineError::Server(m), &source)),
            None => Ok(statuses),
        }
    }

    fn list_images(&self) -> Result<Vec<Value>> {
        list(self.call_json(Method::GET, "/images/json", None)?)
    }

    fn inspect_image(&self, reference: &str) -> Result<Value> {
        self.call_json(Method::GET, &format!("/images/{}/json", segment(reference)?), None)
    }

    fn stats(&self, id: &str) -> Result<Value> {
        if self.facts()?.no_cgroups() {
            return Err(EngineError::BadRequest(format!("no stats: {NO_CGROUPS}")));
        }
        let path = format!("/containers/{}/stats{}", container(id)?, query(&[("stream", "0")]));
        let first = self.call_json(Method::GET, &path, None)?;
        // Docker samples twice itself; Podman sends one sample with an empty
        // previous one, which would read as 0 % CPU. Its streamed samples are
        // 5 s apart, so take a second one here.
        let started = first["cpu_stats"]["system_cpu_usage"].as_u64().is_some_and(|t| t > 0);
        if !started || first["precpu_stats"]["system_cpu_usage"].as_u64().is_some_and(|t| t > 0) {
            return Ok(first);
        }
        std::thread::sleep(STATS_INTERVAL);
        let mut second = self.call_json(Method::GET, &path, None)?;
        second["precpu_stats"] = first["cpu_stats"].clone();
        Ok(second)
    }

    fn list_objects(&self, kind: Object) -> Result<Vec<Value>> {
        match kind {
            Object::Network => list(self.call_json(Method::GET, "/networks", None)?),
            Object::Volume => {
                // An engine with no volumes says `"Volumes": null`.
                match self.call_json(Method::GET, "/volumes", None)?["Volumes"].take() {
                    Value::Null => Ok(Vec::new()),
                    v => list(v),
                }
            }
        }
    }

    fn create_object(&self, kind: Object, body: &Value) -> Result<Value> {
        let path = match kind {
            Object::Network => "/networks/create",
            Object::Volume => "/volumes/create",
        };
        self.call_json(Method::POST, path, Some(body))
    }

    fn inspect_object(&self, kind: Object, id: &str) -> Result<Value> {
        let path = match kind {
            Object::Network => format!("/networks/{}", segment(id)?),
            Object::Volume => format!("/volumes/{}", segment(id)?),
        };
        self.call_json(Method::GET, &path, None)
    }

    fn remove_object(&self, kind: Object, id: &str, force: bool) -> Result<()> {
        let path = match kind {
            Object::Network => format!("/networks/{}", segment(id)?),
            Object::Volume => format!("/volumes/{}{}", segment(id)?, query(&[("force", flag(force))])),
        };
        self.call_empty(Method::DELETE, &path, None, CALL_TIMEOUT)
    }

    fn connect_network(&self, network: &str, id: &str, aliases: &[String]) -> Result<()> {
        let path = format!("/networks/{}/connect", segment(network)?);
        let body = json!({"Container": id, "EndpointConfig": {"Aliases": aliases}});
        self.call_empty(Method::POST, &path, Some(&body), CALL_TIMEOUT)
    }

    fn remove_image(&self, reference: &str, force: bool) -> Result<Value> {
        let path = format!("/images/{}{}", segment(reference)?, query(&[("force", flag(force))]));
        self.call_json(Method::DELETE, &path, None)
    }

    fn prune_images(&self, filters: &Value) -> Result<Value> {
        let path = format!("/images/prune{}", query(&[("filters", &filters.to_string())]));
        let resp = self.send(Method::POST, &path, None, PULL_TIMEOUT)?;
        self.read_json(resp)
    }

    fn events(&self, since: Option<f64>) -> Result<Stream> {
        // Network events say which container joined or left a network.
        let filters = ("filters", r#"{"type":["container","network"]}"#);
        let since = since.map(unix_time);
        if !self.facts()?.podman {
            // Docker has subscribed the stream when it sends the headers, and
            // sends what it replays from `since` at once.
            let q: Vec<_> = [Some(filters), since.as_deref().map(|s| ("since", s))].into_iter().flatten().collect();
            return self.stream(&format!("/events{}", query(&q)), None);
        }
        // Podman sends no headers until an event, and subscribes by reading
        // its event log from where it is once it gets to the request, so what
        // happens in between would be lost: the stream asks for the events
        // from now on. And its stream follows its event log file and trails
        // it (an event came 40 to 220 ms after its time stamp, measured), a
        // replay too: later than the reconcile that waits for the replay to
        // go quiet. So what happened since `since` comes first, whole, from a
        // query that ends where the log ends (`stream=false`); the stream
        // starts before that query, and the follower drops what both bring.
        let from = unix_time(crate::time::now_epoch());
        let replayed = match &since {
            Some(s) => {
                let q = query(&[filters, ("since", s), ("stream", "false")]);
                let resp = self.send(Method::GET, &format!("/events{q}"), None, CALL_TIMEOUT)?;
                resp.into_body().into_with_config().limit(MAX_JSON_BODY).read_to_vec().map_err(|e| self.fail(e))?
            }
            None => Vec::new(),
        };
        let live = self.stream(&format!("/events{}", query(&[filters, ("since", &from)])), None)?;
        Ok(Stream { body: Box::new(io::Cursor::new(replayed).chain(live.body)), cancel: live.cancel })
    }

    fn host(&self) -> Option<String> {
        Some(self.host.clone())
    }
}

/// Hand `watch` the means to close `agent`'s connections; the flag says it did.
fn stopper(agent: &Agent, watch: &dyn Watch) -> Arc<AtomicBool> {
    let stopped = Arc::new(AtomicBool::new(false));
    let (flag, agent) = (stopped.clone(), agent.clone());
    watch.stoppable(Canceller::new(move || {
        flag.store(true, Ordering::SeqCst);
        agent.clone().shutdown();
    }));
    stopped
}

fn run(
    agent: &Agent,
    req: std::result::Result<Request<impl AsSendBody>, ureq::http::Error>,
    timeout: Option<Duration>,
) -> std::result::Result<Response<Body>, ureq::Error> {
    let req = agent.configure_request(req.map_err(ureq::Error::Http)?).timeout_global(timeout).build();
    agent.run(req)
}

/// A response with a non-success status as the error it stands for. 304
/// counts as success: it is start/stop's "already started/stopped".
fn checked(mut resp: Response<Body>, path: &str) -> Result<Response<Body>> {
    let status = resp.status().as_u16();
    if (200..300).contains(&status) || status == 304 {
        return Ok(resp);
    }
    let text =
        resp.body_mut().with_config().limit(MAX_ERROR_BODY).lossy_utf8(true).read_to_string().unwrap_or_default();
    Err(refusal(status, &text, path))
}

/// The error a refusing status and the body it came with stand for.
fn refusal(status: u16, text: &str, path: &str) -> EngineError {
    let message = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    let message = if message.is_empty() { format!("HTTP {status}") } else { explain(message) };
    match status {
        404 => EngineError::NotFound(message),
        409 => EngineError::Conflict(message),
        // Podman answers a request its container's state refuses (remove a
        // running one, exec in a stopped one) and a name in use with 500, not
        // Docker's 409.
        500 if PODMAN_CONFLICTS.iter().any(|c| message.ends_with(c)) => EngineError::Conflict(message),
        // And a container removed while it looked it up (its storage's
        // `ErrNoSuchCtr`) with 500 too, not 404.
        500 if message.ends_with(": no such container") => EngineError::NotFound(message),
        // And what it finds invalid (a bad name) with 500 too, not 400.
        500 if message.ends_with(": invalid argument") => EngineError::BadRequest(message),
        400..=499 => EngineError::BadRequest(message),
        500..=599 => EngineError::Server(message),
        // Redirects are not followed: the engine only sends one when the
        // path was rewritten (`..` in an id), i.e. for a bad id.
        _ => EngineError::BadRequest(format!("unexpected HTTP {status} for {path}")),
    }
}

/// How Podman's conflicts end (its errors `ErrCtrStateInvalid`, storage's
/// `ErrDuplicateName` and `ErrCtrExists`).
const PODMAN_CONFLICTS: &[&str] =
    &["container state improper", "that name is already in use", "container already exists"];

/// What a request on another thread comes back with.
type Sent = std::result::Result<Response<Body>, ureq::Error>;

/// The body of a Podman stream handed out before its headers came: the first
/// read waits for them.
struct Headerless {
    /// The request's outcome to come, and its path.
    pending: Option<(mpsc::Receiver<Sent>, String)>,
    body: Option<ureq::BodyReader<'static>>,
}

impl Read for Headerless {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((rx, path)) = self.pending.take() {
            let sent = rx.recv().map_err(|_| io::Error::other("the engine stream's request ended"))?;
            let resp = checked(sent.map_err(io::Error::other)?, &path).map_err(io::Error::other)?;
            self.body = Some(resp.into_body().into_reader());
        }
        match &mut self.body {
            Some(body) => body.read(buf),
            None => Err(io::Error::other("the engine stream failed before its headers")),
        }
    }
}

/// `podman`: a stream's headers may wait for its first data, so only a call
/// with a `timeout` waits for them with a deadline of its own.
fn new_agent(target: &Target, timeout: Option<Duration>, podman: bool) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .user_agent(concat!("dcd/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(timeout)
        // A Docker stream without an overall deadline still gets its headers
        // promptly (the engine sends them before any log line or event).
        .timeout_recv_response((timeout.is_none() && !podman).then_some(CALL_TIMEOUT))
        // ureq's 128 KiB defaults are zero-filled, so resident, per open
        // connection; engine headers and our request bodies are far smaller
        // (BENCHMARKS.md, idle RSS).
        .input_buffer_size(32 * 1024)
        .output_buffer_size(16 * 1024);
    match target {
        Target::Unix(path) => Agent::with_parts(config.build(), Dial::Unix(path.clone()), NoDns),
        Target::Tcp(_, tls) => {
            let config = match tls {
                Some(tls) => config.tls_config(tls.clone()),
                None => config,
            };
            Agent::with_parts(config.build(), Dial::Tcp.chain(RustlsConnector::default()), DefaultResolver::default())
        }
    }
}

/// The TLS for a `tcp://` engine from a `DOCKER_CERT_PATH` directory: only
/// `ca.pem` is trusted (no public roots); `cert.pem` and `key.pem` are sent
/// when both exist, as the Docker CLI does, so an engine that wants no client
/// certificate needs none.
fn engine_tls(dir: &Path) -> Result<TlsConfig> {
    let bad = |what: String| EngineError::Config(format!("DOCKER_TLS_VERIFY: {what}"));
    let read = |name: &str| match std::fs::read(dir.join(name)) {
        Ok(pem) => Ok(Some(pem)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(format!("cannot read {}: {e}", dir.join(name).display()))),
    };
    let certs = |name: &str, pem: &[u8]| {
        let certs: Vec<Certificate<'static>> = parse_pem(pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(bad(format!("no certificate in {}", dir.join(name).display())));
        }
        Ok(certs)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = read("ca.pem")?.ok_or_else(|| bad(format!("no {}", dir.join("ca.pem").display())))?;
    let client = match (read("cert.pem")?, read("key.pem")?) {
        (Some(cert), Some(key_pem)) => {
            let key =
                PrivateKey::from_pem(&key_pem).map_err(|e| bad(format!("{}: {e}", dir.join("key.pem").display())))?;
            let chain = certs("cert.pem", &cert)?;
            // ureq panics on a key rustls cannot use with its certificate: refuse it here.
            let der_chain = chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect();
            let der_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad(format!("key.pem: {e}")))?;
            CertifiedKey::from_der(der_chain, der_key, &provider)
                .map_err(|e| bad(format!("{} and key.pem: {e}", dir.join("cert.pem").display())))?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
        (None, None) => None,
        _ => return Err(bad(format!("{} has only one of cert.pem and key.pem", dir.display()))),
    };
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::from(certs("ca.pem", &ca)?))
        .client_cert(client)
        .unversioned_rustls_crypto_provider(provider)
        .build())
}

/// `tls` moves a `tcp://` host to `https://` and its default port to 2376,
/// as in docker-py.
fn parse_host(host: &str, tls: bool) -> Result<Target> {
    let unsupported =
        || EngineError::Config(format!("unsupported docker host {host:?} (use unix:///path or tcp://host:port)"));
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(unsupported());
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let authority = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .ok_or_else(unsupported)?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(unsupported());
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let (scheme, port) = if tls { ("https", DEFAULT_TLS_PORT) } else { ("http", DEFAULT_TCP_PORT) };
    let base = if has_port { format!("{scheme}://{authority}") } else { format!("{scheme}://{authority}:{port}") };
    base.parse::<Uri>().map_err(|_| unsupported())?;
    Ok(Target::Tcp(base, None))
}

/// The engine's address when neither `--docker-host` nor `DOCKER_HOST` names
/// one: Docker's socket, else a Podman socket that exists (the user's own,
/// then the rootful one), else Docker's, whose absence the first call reports.
fn default_host(exists: &dyn Fn(&Path) -> bool, runtime_dir: Option<&str>) -> String {
    let docker = Path::new(DOCKER_SOCKET);
    if !exists(docker) {
        let user = runtime_dir.map(|d| Path::new(d).join(PODMAN_USER_SOCKET));
        let found = user.into_iter().chain([PathBuf::from(PODMAN_ROOTFUL_SOCKET)]).find(|p| exists(p));
        if let Some(podman) = found {
            log::info!("no Docker socket at {DOCKER_SOCKET}; using Podman's at {}", podman.display());
            return format!("unix://{}", podman.display());
        }
    }
    format!("unix://{DOCKER_SOCKET}")
}

/// Podman's version, if `/version` comes from Podman.
fn podman_version(version: &Value) -> Option<&str> {
    let components = version["Components"].as_array()?;
    components.iter().find(|c| c["Name"] == "Podman Engine").and_then(|c| c["Version"].as_str())
}

/// Why rootless Podman on cgroup v1 can neither limit nor measure a container.
const NO_CGROUPS: &str = "rootless Podman on cgroup v1 has no cgroup per container (run Podman as root, \
                          or on cgroup v2 with the user's controllers delegated)";

/// The create body's resource limits (`HostConfig`) and their spec names.
const RESOURCE_LIMITS: &[(&str, &str)] = &[
    ("Memory", "mem_limit"),
    ("MemorySwap", "memswap_limit"),
    ("MemoryReservation", "mem_reservation"),
    ("NanoCpus", "cpus"),
    ("CpuShares", "cpu_shares"),
    ("CpuQuota", "cpu_quota"),
    ("PidsLimit", "pids_limit"),
    ("BlkioWeight", "blkio_weight"),
];

/// An engine's refusal with the limit behind it named, where the engine's
/// own words leave it out: the OCI runtime reports a container rlimit above
/// the host's hard limit by number (Podman's default `nofile` of 1048576 is
/// the usual one), and rootless Podman's network by the device it could not open.
fn explain(message: String) -> String {
    const RLIMITS: [&str; 16] = [
        "cpu",
        "fsize",
        "data",
        "stack",
        "core",
        "rss",
        "nproc",
        "nofile",
        "memlock",
        "as",
        "locks",
        "sigpending",
        "msgqueue",
        "nice",
        "rtprio",
        "rttime",
    ];
    let rlimit = message
        .split("error setting rlimit type ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok());
    if let Some(n) = rlimit {
        let name = RLIMITS.get(n).copied().unwrap_or("unknown");
        return format!(
            "{message} (the container's {name} ulimit is above this host's hard limit; Podman sets the ulimits \
             a container leaves out from default_ulimits in containers.conf, or at 1048576: set it in the spec's \
             ulimits, or lower Podman's default)"
        );
    }
    if message.contains("/dev/net/tun") {
        return format!(
            "{message} (rootless Podman's network, slirp4netns, needs /dev/net/tun readable and writable by its user)"
        );
    }
    if message.contains("container-init binary not found") {
        return format!(
            "{message} (`init: true` needs Podman's init binary: install catatonit, which podman only recommends, \
             or name another in init_path in containers.conf)"
        );
    }
    message
}

fn pick_version(server: &str) -> Result<String> {
    let parsed = server.split_once('.').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let theirs =
        parsed.ok_or_else(|| EngineError::Server(format!("engine reported an unreadable API version {server:?}")))?;
    if theirs < OUR_OLDEST {
        return Err(EngineError::TooOld(format!(
            "engine speaks API {server}, dcd needs at least {}.{}",
            OUR_OLDEST.0, OUR_OLDEST.1
        )));
    }
    let (major, minor) = theirs.min(OUR_NEWEST);
    Ok(format!("{major}.{minor}"))
}

/// Percent-encodes all but RFC 3986 unreserved characters, so a value can
/// neither end its path segment or query value nor start another.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An encoded path segment. `.` and `..` survive encoding (the server
/// decodes `%2E` too), so they are refused here.
fn segment(s: &str) -> Result<String> {
    if s.is_empty() || s == "." || s == ".." {
        return Err(EngineError::BadRequest(format!("invalid id {s:?}")));
    }
    Ok(encode(s))
}

/// A container id or name as a path segment. The list API spells names with
/// a leading '/', which the engine accepts elsewhere too.
fn container(id: &str) -> Result<String> {
    segment(id.strip_prefix('/').unwrap_or(id))
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        q.push(if i == 0 { '?' } else { '&' });
        q.push_str(k);
        q.push('=');
        q.push_str(&encode(v));
    }
    q
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// Unix seconds as the engine parses them (`seconds.nanoseconds`).
/// Whole microseconds, one early: an f64 epoch is only good to about 0.2 µs,
/// and rounding up would exclude the very line `since` names.
fn unix_time(t: f64) -> String {
    let micros = ((t.max(0.0) * 1e6).floor() as i64 - 1).max(0);
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn grace(timeout_s: i64) -> String {
    query(&[("t", &timeout_s.to_string())])
}

fn grace_deadline(timeout_s: i64) -> Duration {
    Duration::from_secs(timeout_s.max(0) as u64) + STOP_SLACK
}

fn list(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(EngineError::Server(format!("engine sent {other} where a list was expected"))),
    }
}

/// Splits an image reference into the `fromImage` and `tag` of a pull. The
/// tag is what follows the last ':' after the last '/' (before that it is a
/// registry port); a digest wins over a tag. An empty tag would make the
/// engine pull every tag, so the default is `latest`.
fn split_reference(image: &str) -> Result<(&str, &str)> {
    let bad = || EngineError::BadRequest(format!("invalid image reference {image:?}"));
    let (name, tag) = match image.split_once('@') {
        Some((name, digest)) => (split_tag(name).0, digest),
        None => match split_tag(image) {
            (name, Some(tag)) => (name, tag),
            (name, None) => (name, "latest"),
        },
    };
    if name.is_empty() || tag.is_empty() || image.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok((name, tag))
}

fn split_tag(name: &str) -> (&str, Option<&str>) {
    match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    }
}

/// Whether an error inside a pull stream means the image does not exist.
fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["not found", "manifest unknown", "does not exist"].iter().any(|s| m.contains(s))
}

/// Says which credentials a pull the registry refused was made with (never
/// the credentials themselves): the registry's message does not tell a wrong
/// password from a missing one, nor which file was read.
fn note_credentials(e: EngineError, source: &auth::Source) -> EngineError {
    let note = |m: String| {
        let lower = m.to_ascii_lowercase();
        let refused = ["unauthorized", "authentication required", "no basic auth credentials", "denied"]
            .iter()
            .any(|s| lower.contains(s));
        if refused {
            format!("{m} (pulled {source})")
        } else {
            m
        }
    };
    match e {
        EngineError::NotFound(m) => EngineError::NotFound(note(m)),
        EngineError::BadRequest(m) => EngineError::BadRequest(note(m)),
        EngineError::Server(m) => EngineError::Server(note(m)),
        e => e,
    }
}

/// Resolves every URI to a placeholder address: the unix connector ignores it.
#[derive(Debug)]
struct NoDns;

impl Resolver for NoDns {
    fn resolve(&self, _: &Uri, _: &Config, _: NextTimeout) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(SocketAddr::from(([127, 0, 0, 1], 0)));
        Ok(addrs)
    }
}

/// Opens the socket to the engine. TCP gets keepalive: a stream that waits
/// for news (events, a quiet log follow) would otherwise never notice an
/// engine host that vanished without closing the connection.
#[derive(Debug)]
enum Dial {
    Unix(PathBuf),
    Tcp,
}

/// Idle time before the first keepalive probe, the time between probes, and
/// how many go unanswered before the connection is dead: about a minute.
const KEEPALIVE: (libc::c_int, libc::c_int, libc::c_int) = (30, 10, 3);

impl<In: Transport> Connector<In> for Dial {
    type Out = SockTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _: Option<In>,
    ) -> std::result::Result<Option<SockTransport>, ureq::Error> {
        let sock = match self {
            Dial::Unix(path) => Sock::Unix(UnixStream::connect(path)?),
            Dial::Tcp => Sock::Tcp(tcp_connect(&details.addrs, details.timeout.not_zero().map(|t| *t))?),
        };
        let sock = Arc::new(sock);
        // Lets `Agent::shutdown` (a stream's cancel) wake a blocked read.
        (details.register_shutdown)(Arc::downgrade(&sock) as Weak<dyn ShutdownHandle>)?;
        let buffers = LazyBuffers::new(details.config.input_buffer_size(), details.config.output_buffer_size());
        Ok(Some(SockTransport { sock, buffers }))
    }
}

/// The first of `addrs` that answers, with keepalive on.
fn tcp_connect(addrs: &[SocketAddr], timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the engine host resolved to no address");
    for addr in addrs {
        let stream = match timeout {
            Some(t) => TcpStream::connect_timeout(addr, t),
            None => TcpStream::connect(addr),
        };
        match stream {
            Ok(s) => {
                s.set_nodelay(true)?;
                keepalive(&s)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn keepalive(s: &TcpStream) -> io::Result<()> {
    let (idle, interval, count) = KEEPALIVE;
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
    ] {
        // SAFETY: an int option on a socket we own, with its size.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[derive(Debug)]
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn io(&self) -> &dyn ReadWrite {
        match self {
            Sock::Unix(s) => s,
            Sock::Tcp(s) => s,
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.set_read_timeout(t),
            Sock::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.set_write_timeout(t),
            Sock::Tcp(s) => s.set_write_timeout(t),
        }
    }

    /// Our half of the connection is done: the engine closes the process's input.
    fn close_write(&self) {
        // Fails only if already shut down or closed.
        let _ = match self {
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }

    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Sock::Unix(s) => s.set_nonblocking(on),
            Sock::Tcp(s) => s.set_nonblocking(on),
        }
    }
}

/// What both socket kinds offer by shared reference.
trait ReadWrite {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
}

impl<T> ReadWrite for T
where
    for<'a> &'a T: Read + Write,
{
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut &*self, buf)
    }

    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(&mut &*self, buf)
    }
}

impl ShutdownHandle for Sock {
    fn shutdown(&self) {
        // Fails only if already shut down or closed.
        let _ = match self {
            Sock::Unix(s) => s.shutdown(Shutdown::Both),
            Sock::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

#[derive(Debug)]
struct SockTransport {
    sock: Arc<Sock>,
    buffers: LazyBuffers,
}

impl Transport for SockTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> std::result::Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        self.sock.set_write_timeout(io_timeout(timeout)?)?;
        let output = &self.buffers.output()[..amount];
        self.sock.io().write_all(output).map_err(|e| io_error(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> std::result::Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        self.sock.set_read_timeout(io_timeout(timeout)?)?;
        let input = self.buffers.input_append_buf();
        let n = loop {
            match self.sock.io().read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| io_error(e, timeout))?,
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // A pooled connection is reusable only if the engine has neither
        // closed it nor sent anything unasked.
        let s = &self.sock;
        if s.set_nonblocking(true).is_err() {
            return false;
        }
        let idle = matches!(s.io().read(&mut [0]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        idle && s.set_nonblocking(false).is_ok()
    }
}

/// The socket timeout for the next I/O; none left is a timeout error.
fn io_timeout(t: NextTimeout) -> std::result::Result<Option<Duration>, ureq::Error> {
    if t.after.is_zero() {
        return Err(ureq::Error::Timeout(t.reason));
    }
    Ok(t.not_zero().map(|d| *d))
}

fn io_error(e: io::Error, t: NextTimeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ureq::Error::Timeout(t.reason),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn tcp_connections_keep_alive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let s = tcp_connect(&[dead, listener.local_addr().unwrap()], Some(Duration::from_secs(1))).unwrap();
        let get = |level, name| {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: reads an int option of a socket we own into `v`.
            let r =
                unsafe { libc::getsockopt(s.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) };
            assert_eq!(r, 0);
            v
        };
        assert_eq!(get(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(
            (get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)),
            (KEEPALIVE.0, KEEPALIVE.1)
        );
        assert_eq!(get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT), KEEPALIVE.2);
        assert!(tcp_connect(&[], None).is_err());
    }

    #[test]
    fn references_split_into_image_and_tag() {
        fn ok(r: &str) -> (&str, &str) {
            split_reference(r).unwrap()
        }
        assert_eq!(ok("alpine"), ("alpine", "latest"));
        assert_eq!(ok("alpine:3.19"), ("alpine", "3.19"));
        assert_eq!(ok("host:5000/repo"), ("host:5000/repo", "latest"));
        assert_eq!(ok("host:5000/a/b:v1"), ("host:5000/a/b", "v1"));
        assert_eq!(ok("repo@sha256:abc"), ("repo", "sha256:abc"));
        assert_eq!(ok("h:1/repo:t@sha256:abc"), ("h:1/repo", "sha256:abc"));
        for bad in ["", "repo:", ":tag", "repo@", "a b"] {
            assert!(split_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_parse() {
        assert!(matches!(parse_host("unix:///var/run/docker.sock", true),
            Ok(Target::Unix(p)) if p == Path::new("/var/run/docker.sock")));
        let tcp = |h: &str, tls: bool| match parse_host(h, tls) {
            Ok(Target::Tcp(base, _)) => base,
            other => panic!("{h}: {other:?}"),
        };
        assert_eq!(tcp("tcp://127.0.0.1:2375", false), "http://127.0.0.1:2375");
        assert_eq!(tcp("tcp://docker", false), "http://docker:2375");
        assert_eq!(tcp("tcp://[::1]", false), "http://[::1]:2375");
        assert_eq!(tcp("tcp://[::1]:1234/", false), "http://[::1]:1234");
        assert_eq!(tcp("tcp://docker", true), "https://docker:2376");
        assert_eq!(tcp("tcp://docker:2375", true), "https://docker:2375");
        for bad in ["", "unix://", "ssh://host", "tcp://", "tcp://a/b", "/var/run/docker.sock"] {
            assert!(parse_host(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn options_come_from_the_environment_as_the_cli_reads_it() {
        let from = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Options::from_env(&move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        let o = from(&[("HOME", "/h")]);
        assert!(!o.tls_verify && o.cert_path.is_none());
        assert_eq!(o.config_dir.as_deref(), Some(Path::new("/h/.docker")));
        let o = from(&[("HOME", "/h"), ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CONFIG", "/c")]);
        assert!(o.tls_verify);
        assert_eq!(o.cert_path.as_deref(), Some(Path::new("/h/.docker")));
        assert_eq!(o.config_dir.as_deref(), Some(Path::new("/c")));
        let o = from(&[("DOCKER_TLS_VERIFY", ""), ("DOCKER_CERT_PATH", "/certs")]);
        assert!(!o.tls_verify && o.config_dir.is_none());
        assert_eq!(o.cert_path.as_deref(), Some(Path::new("/certs")));
    }

    #[test]
    fn tls_needs_a_ca_and_a_whole_client_pair() {
        let dir = std::env::temp_dir().join(format!("dcd-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let verify = Options { tls_verify: true, cert_path: Some(dir.clone()), config_dir: None };
        let err = |opts: &Options| match Docker::connect_with(Some("tcp://127.0.0.1:1"), opts) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connected"),
        };
        assert!(err(&verify).contains("ca.pem"));
        std::fs::write(dir.join("ca.pem"), "not a certificate").unwrap();
        assert!(err(&verify).contains("no certificate in"));
        std::fs::write(dir.join("cert.pem"), "").unwrap();
        assert!(err(&verify).contains("only one of cert.pem and key.pem"));
        let no_dir = Options { cert_path: None, ..verify.clone() };
        assert!(err(&no_dir).contains("DOCKER_CERT_PATH"));
        assert!(Docker::connect_with(Some("unix:///x.sock"), &verify).is_ok(), "TLS is for tcp:// only");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn podman_is_found_when_docker_is_absent() {
        let with = |present: &'static [&'static str], runtime_dir| {
            default_host(&|p: &Path| present.iter().any(|q| Path::new(q) == p), runtime_dir)
        };
        let user = Some("/run/user/1000");
        assert_eq!(with(&["/var/run/docker.sock", "/run/podman/podman.sock"], user), "unix:///var/run/docker.sock");
        assert_eq!(with(&["/run/podman/podman.sock"], None), "unix:///run/podman/podman.sock");
        let both = &["/run/user/1000/podman/podman.sock", "/run/podman/podman.sock"];
        assert_eq!(with(both, user), "unix:///run/user/1000/podman/podman.sock");
        assert_eq!(with(both, None), "unix:///run/podman/podman.sock");
        assert_eq!(with(&[], user), "unix:///var/run/docker.sock", "the first call says it is missing");
    }

    #[test]
    fn podman_limits_are_named() {
        let e = explain("runc create failed: error setting rlimit type 7: operation not permitted".into());
        assert!(e.contains("nofile ulimit is above this host's hard limit") && e.contains("default_ulimits"), "{e}");
        assert!(explain("error setting rlimit type 6: x".into()).contains("nproc ulimit"));
        let e = explain(r#"slirp4netns failed: "open(\"/dev/net/tun\"): Permission denied""#.into());
        assert!(e.contains("needs /dev/net/tun"), "{e}");
        let e = explain(
            "container create: container-init binary not found on the host: stat \
                         /usr/libexec/podman/catatonit: no such file or directory"
                .into(),
        );
        assert!(e.contains("install catatonit"), "{e}");
        assert_eq!(explain("no such container".into()), "no such container");
        let podman = json!({"Components": [{"Name": "Podman Engine", "Version": "4.3.1"}], "Version": "4.3.1"});
        assert_eq!(podman_version(&podman), Some("4.3.1"));
        assert_eq!(podman_version(&json!({"Components": [{"Name": "Engine", "Version": "28.0"}]})), None);
    }

    #[test]
    fn podman_500s_map_to_what_they_mean() {
        let podman = |m: &str| refusal(500, &json!({"message": m}).to_string(), "/containers/x/json");
        let gone = podman("container 9381f6 does not exist in database: no such container");
        assert!(matches!(gone, EngineError::NotFound(_)), "{gone:?}");
        let busy = podman("cannot remove container x as it is running - running or paused containers cannot be removed without force: container state improper");
        assert!(matches!(busy, EngineError::Conflict(_)), "{busy:?}");
        assert!(matches!(podman("boom"), EngineError::Server(_)));
    }

    #[test]
    fn versions_negotiate_down_and_refuse_old() {
        assert_eq!(pick_version("1.41").unwrap(), "1.41");
        assert_eq!(pick_version("1.51").unwrap(), "1.45");
        assert_eq!(pick_version("2.0").unwrap(), "1.45");
        assert!(matches!(pick_version("1.39"), Err(EngineError::TooOld(_))));
        assert!(matches!(pick_version("x"), Err(EngineError::Server(_))));
    }

    /// A fake engine that speaks API `api` and answers other paths with `answer`.
    fn fake(api: &'static str, answer: fn(&str) -> fake::Answer) -> (fake::FakeEngine, Docker) {
        let engine = fake::FakeEngine::start(fake::FakeEngine::socket_path(), move |path| match path {
            "/version" => (200, json!({"ApiVersion": api, "Version": "fake"}).to_string()),
            p => answer(p),
        });
        let docker = Docker::connect(Some(&engine.host())).unwrap();
        (engine, docker)
    }

    #[test]
    fn http_statuses_map_to_errors() {
        let (_fake, d) = fake("1.43", |path| {
            let id = path.trim_start_matches("/v1.43/containers/").split('/').next().unwrap();
            let message = |m: &str| json!({"message": m}).to_string();
            match id {
                "missing" => (404, message("No such container: missing")),
                "busy" => (409, message("container is running")),
                "bad" => (400, message("invalid reference format")),
                "teapot" => (418, String::new()),
                "broken" => (500, "boom\n".into()),
                "down" => (503, String::new()),
                "moved" => (302, String::new()),
                "garbled" => (200, "{not json".into()),
                "started" => (304, String::new()),
                _ => (200, json!({"Id": id}).to_string()),
            }
        });
        let inspect = |id: &str| d.inspect_container(id);
        assert_eq!(inspect("ok").unwrap(), json!({"Id": "ok"}));
        assert_eq!(inspect("missing"), Err(EngineError::NotFound("No such container: missing".into())));
        assert_eq!(inspect("busy"), Err(EngineError::Conflict("container is running".into())));
        assert_eq!(inspect("bad"), Err(EngineError::BadRequest("invalid reference format".into())));
        assert_eq!(inspect("teapot"), Err(EngineError::BadRequest("HTTP 418".into())), "other 4xx");
        assert_eq!(inspect("broken"), Err(EngineError::Server("boom".into())), "a message that is not JSON");
        assert_eq!(inspect("down"), Err(EngineError::Server("HTTP 503".into())));
        assert_eq!(
            inspect("moved"),
            Err(EngineError::BadRequest("unexpected HTTP 302 for /v1.43/containers/moved/json".into())),
            "redirects are not followed"
        );
        let garbled = inspect("garbled");
        assert!(
            matches!(&garbled, Err(EngineError::Server(m)) if m.starts_with("engine sent invalid JSON")),
            "{garbled:?}"
        );
        assert_eq!(d.start_container("started"), Ok(()), "304: already started");
        assert_eq!(d.start_container("busy"), Err(EngineError::Conflict("container is running".into())));
    }

    #[test]
    fn version_is_negotiated_lazily_and_again_after_outage() {
        let sock = fake::FakeEngine::socket_path();
        let d = Docker::connect(Some(&format!("unix://{}", sock.display()))).unwrap();
        let err = d.list_containers(false).unwrap_err();
        assert!(matches!(err, EngineError::Unreachable(_)), "{err:?}");

        let listing = |_: &str| (200, "[]".to_string());
        let version = |api: &'static str| {
            move |p: &str| match p {
                "/version" => (200, json!({"ApiVersion": api, "Version": "fake"}).to_string()),
                p => listing(p),
            }
        };
        let fake = fake::FakeEngine::start(sock.clone(), version("1.43"));
        d.list_containers(true).unwrap();
        d.list_images().unwrap();
        // A ping first: this one names no versions, so the facts come from `/version`.
        assert_eq!(fake.take(), ["/_ping", "/version", "/v1.43/containers/json?all=1", "/v1.43/images/json"]);
        drop(fake);

        let err = d.list_images().unwrap_err();
        assert!(matches!(err, EngineError::Unreachable(_)), "{err:?}");

        let fake = fake::FakeEngine::start(sock.clone(), version("1.39"));
        let err = d.list_images().unwrap_err();
        assert!(matches!(&err, EngineError::TooOld(m) if m.contains("1.39")), "{err:?}");
        drop(fake);

        let fake = fake::FakeEngine::start(sock.clone(), version("1.52"));
        d.list_images().unwrap();
        assert_eq!(fake.take(), ["/_ping", "/version", "/v1.45/images/json"], "a newer engine is spoken to in ours");
        d.list_images().unwrap();
        assert_eq!(fake.take(), ["/v1.45/images/json"], "negotiated once");
        drop(fake);

        let _fake = fake::FakeEngine::start(sock, |p| match p {
            "/version" => (200, json!({"Version": "fake"}).to_string()),
            p => (200, format!("unexpected {p}")),
        });
        // `info` negotiates each time: it is the health check.
        let err = d.info().unwrap_err();
        assert_eq!(err, EngineError::Server("engine did not report an API version".into()));
    }

    /// Docker's ping names its API version, and that is the negotiation. A ping that names
    /// Podman's version too leads to `/version` and `/libpod/info`; after an outage the same
    /// ping keeps what they said.
    #[test]
    fn the_ping_names_the_version() {
        let sock = fake::FakeEngine::socket_path();
        let d = Docker::connect(Some(&format!("unix://{}", sock.display()))).unwrap();
        let answer = |p: &str| match p {
            "/version" => {
                let podman = json!([{"Name": "Podman Engine", "Version": "4.3.1"}]);
                (200, json!({"ApiVersion": "1.41", "Version": "4.3.1", "Components": podman}).to_string())
            }
            "/v4.0.0/libpod/info" => {
                (200, json!({"host": {"security": {"rootless": true}, "cgroupVersion": "v2"}}).to_string())
            }
            _ => (200, "[]".to_string()),
        };
        let fake = fake::FakeEngine::pinging(sock.clone(), "Api-Version: 1.44\r\n", answer);
        d.list_images().unwrap();
        assert_eq!(fake.take(), ["/_ping", "/v1.44/images/json"], "Docker: no /version");
        drop(fake);

        let podman = "Api-Version: 1.41\r\nLibpod-Api-Version: 4.3.1\r\n";
        d.list_images().unwrap_err();
        let fake = fake::FakeEngine::pinging(sock.clone(), podman, answer);
        d.list_images().unwrap();
        assert_eq!(fake.take(), ["/_ping", "/version", "/v4.0.0/libpod/info", "/v1.41/images/json"]);
        assert!(lock(&d.facts).as_ref().is_some_and(|f| f.podman && f.rootless), "{:?}", lock(&d.facts));
        drop(fake);

        d.list_images().unwrap_err();
        let fake = fake::FakeEngine::pinging(sock, podman, answer);
        d.list_images().unwrap();
        assert_eq!(fake.take(), ["/_ping", "/v1.41/images/json"], "the same engine is back");
    }

    #[test]
    fn info_asks_the_version_and_the_info_together() {
        let sock = fake::FakeEngine::socket_path();
        let d = Docker::connect(Some(&format!("unix://{}", sock.display()))).unwrap();
        let fake = fake::FakeEngine::start(sock, |p| match p {
            "/version" => (200, json!({"ApiVersion": "1.43", "Version": "fake"}).to_string()),
            _ => (200, json!({"Containers": 2, "Images": 1, "ServerVersion": "fake"}).to_string()),
        });
        let asked = || {
            let mut paths = fake.take();
            paths.sort();
            paths
        };
        let info = d.info().unwrap();
        assert_eq!((&info["api_version"], &info["containers"]), (&json!("1.43"), &json!(2)), "{info}");
        assert_eq!(asked(), ["/v1.40/info", "/version"], "not negotiated yet: at our oldest version");
        d.info().unwrap();
        assert_eq!(asked(), ["/v1.43/info", "/version"], "at the version last negotiated");
    }

    #[test]
    fn values_cannot_escape_their_segment() {
        assert_eq!(encode("a/../b?c=d&e#f %"), "a%2F..%2Fb%3Fc%3Dd%26e%23f%20%25");
        assert_eq!(container("/web-1").unwrap(), "web-1");
        for bad in ["", ".", "..", "/.."] {
            assert!(container(bad).is_err(), "{bad:?}");
        }
        assert_eq!(query(&[("a", "1 2"), ("b", "{\"x\":[]}")]), "?a=1%202&b=%7B%22x%22%3A%5B%5D%7D");
    }
}
