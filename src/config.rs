//! Configuration: command-line flags over environment over credentials file
//! over defaults, resolved once at start-up into a `Config` (spec §5, §7.7).

use std::path::{Path, PathBuf};
use std::time::Duration;

use argh::FromArgs;
use serde_json::Value;

use crate::mesh::{Backend, MeshConfig, Tls};
use crate::policy::Policy;
use crate::state::Forward;

/// dcd: the Docker host for the Device Connect mesh.
///
/// With no flags it joins a Zenoh D2D mesh as a peer (multicast scouting on)
/// and drives the local Docker Engine. Every flag has an environment variable
/// (see README); flags win. With a command it is a client of a device,
/// configured by the same flags and environment as the Python agent tools.
#[derive(FromArgs, Debug, Default)]
pub struct Flags {
    /// device id (env DEVICE_ID, DCD_DEVICE_ID; default docker-host-1)
    #[argh(option)]
    pub device_id: Option<String>,
    /// tenant (env TENANT, DCD_TENANT; default "default")
    #[argh(option)]
    pub tenant: Option<String>,
    /// use the in-memory simulated engine (env DCD_SIM, DCD_SIMULATE)
    #[argh(switch)]
    pub sim: bool,
    /// engine address, unix:///path or tcp://host:port (env DOCKER_HOST)
    #[argh(option)]
    pub docker_host: Option<String>,
    /// fallback state poll rate in Hz, 0 turns polling off (env DCD_STATE_POLL_HZ; default 2)
    #[argh(option)]
    pub state_poll_hz: Option<f64>,
    /// nats or zenoh (env MESSAGING_BACKEND; default inferred from the URL)
    #[argh(option)]
    pub messaging_backend: Option<String>,
    /// broker, router or listening-peer URL, repeatable (env MESSAGING_URLS, NATS_URL, ZENOH_CONNECT)
    #[argh(option)]
    pub messaging_url: Vec<String>,
    /// NATS .creds or .creds.json file (env MESSAGING_CREDENTIALS_FILE, NATS_CREDENTIALS_FILE)
    #[argh(option)]
    pub nats_credentials_file: Option<String>,
    /// portal mode: NATS with portal credentials, infra discovery (env DEVICE_CONNECT_PORTAL, DCD_PORTAL)
    #[argh(switch)]
    pub portal: bool,
    /// portal credentials file (env PORTAL_CREDENTIALS_FILE)
    #[argh(option)]
    pub portal_credentials: Option<String>,
    /// glob for portal credentials (env PORTAL_CREDENTIALS_GLOB; default *.creds.json)
    #[argh(option)]
    pub portal_credentials_glob: Option<String>,
    /// directory searched for portal credentials (env PORTAL_CREDENTIALS_DIR; default ~/.config/device-connect)
    #[argh(option)]
    pub portal_credentials_dir: Option<String>,
    /// skip the NATS credential checks (env DEVICE_CONNECT_ALLOW_INSECURE)
    #[argh(switch)]
    pub allow_insecure: bool,
    /// d2d (or p2p) or infra (env DEVICE_CONNECT_DISCOVERY_MODE)
    #[argh(option)]
    pub discovery_mode: Option<String>,
    /// zenoh multicast scouting, true or false (env DCD_ZENOH_MULTICAST; default true)
    #[argh(option)]
    pub zenoh_multicast: Option<bool>,
    /// worker threads for requests (env DCD_WORKERS; default 4)
    #[argh(option)]
    pub workers: Option<usize>,
    /// policy file, JSON (env DCD_POLICY; default: deny every host escape)
    #[argh(option)]
    pub policy: Option<String>,
    /// serve only the functions that change nothing (env DCD_READ_ONLY)
    #[argh(switch)]
    pub read_only: bool,
    /// emit the engine's container events as `engine_event` (env DCD_FORWARD_ENGINE_EVENTS)
    #[argh(switch)]
    pub forward_engine_events: bool,
    /// close an exec session after this many seconds without input or reads (env DCD_EXEC_IDLE_TIMEOUT; default 600)
    #[argh(option)]
    pub exec_idle_timeout: Option<u64>,
    /// with a command, dcd is a client of a device on the mesh
    #[argh(subcommand)]
    pub command: Option<crate::client::Command>,
}

/// The resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub simulate: bool,
    pub docker_host: Option<String>,
    pub state_poll_hz: f64,
    pub workers: usize,
    /// Running inside the container image: refuse to start without the socket.
    pub in_container: bool,
    pub policy: Policy,
    /// Which engine events go out as `engine_event`: only our own containers'
    /// under `owned_only`.
    pub forward: Forward,
    pub mesh: MeshConfig,
    /// systemd's notification socket (`NOTIFY_SOCKET`), when run as `Type=notify`.
    pub notify_socket: Option<String>,
    /// systemd's watchdog interval (`WATCHDOG_USEC`), when it is for us.
    pub watchdog: Option<Duration>,
    /// How long an exec session may go without input or reads.
    pub exec_idle_timeout: Duration,
}

/// Where values come from besides flags; a closure so tests can pass a map.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn first(env: Env, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()))
}

fn truthy(v: Option<String>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// What a credentials file holds (spec §5.3).
#[derive(Debug, Default)]
pub struct Creds {
    pub device_id: Option<String>,
    pub tenant: Option<String>,
    pub urls: Vec<String>,
    pub jwt: Option<String>,
    pub seed: Option<String>,
    pub tls: Tls,
}

pub fn resolve(flags: &Flags, env: Env) -> Result<Config, String> {
    let portal = flags.portal || truthy(first(env, &["DEVICE_CONNECT_PORTAL", "DCD_PORTAL"]));
    let insecure = flags.allow_insecure || truthy(env("DEVICE_CONNECT_ALLOW_INSECURE"));
    let mut backend_name = flags.messaging_backend.clone().or_else(|| env("MESSAGING_BACKEND"));
    if portal && backend_name.is_none() {
        backend_name = Some("nats".into());
    }

    let creds_path = flags
        .nats_credentials_file
        .clone()
        .or_else(|| flags.portal_credentials.clone())
        .or_else(|| first(env, &["MESSAGING_CREDENTIALS_FILE", "NATS_CREDENTIALS_FILE", "PORTAL_CREDENTIALS_FILE"]))
        .map(PathBuf::from)
        .or_else(|| portal.then(|| newest_portal_creds(flags, env)).flatten());
    if portal && creds_path.is_none() {
        return Err(
            "portal mode needs credentials: --portal-credentials FILE or a *.creds.json in the credentials dir".into(),
        );
    }
    let creds = match &creds_path {
        Some(p) => read_creds(p, backend_name.as_deref())?,
        None => Creds::default(),
    };

    let mut urls: Vec<String> = if !flags.messaging_url.is_empty() {
        flags.messaging_url.clone()
    } else if let Some(v) = first(env, &["MESSAGING_URLS", "NATS_URL"]) {
        split_list(&v)
    } else if let Some(v) = env("ZENOH_CONNECT").filter(|v| !v.is_empty()) {
        backend_name.get_or_insert_with(|| "zenoh".into());
        split_list(&v)
    } else {
        creds.urls.clone()
    };
    if portal && urls.is_empty() {
        urls.push("nats://portal.deviceconnect.dev:4222".into());
    }
    let backend = match backend_name.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("nats") => Backend::Nats,
        Some("zenoh") => Backend::Zenoh,
        Some(other) => return Err(format!("messaging backend {other:?} is not supported (nats or zenoh)")),
        None => match urls.first() {
            Some(u) if u.starts_with("nats://") || u.starts_with("tls://") => Backend::Nats,
            _ => Backend::Zenoh,
        },
    };
    if backend == Backend::Zenoh {
        urls = urls.iter().filter_map(|u| zenoh_endpoint(u)).collect();
    }

    let discovery = flags.discovery_mode.clone().or_else(|| env("DEVICE_CONNECT_DISCOVERY_MODE"));
    // No URL forces D2D; with URLs only an explicit d2d/p2p does (spec §3.1).
    let d2d = urls.is_empty() || discovery.is_some_and(|m| matches!(m.to_ascii_lowercase().as_str(), "d2d" | "p2p"));

    let device_id = flags
        .device_id
        .clone()
        .or_else(|| first(env, &["DEVICE_ID", "DCD_DEVICE_ID"]))
        .or_else(|| creds.device_id.clone())
        .unwrap_or_else(|| "docker-host-1".into());
    validate_device_id(&device_id)?;
    if let (Some(explicit), Some(from_creds)) = (&flags.device_id, &creds.device_id) {
        if explicit != from_creds && !insecure {
            return Err(format!(
                "device id {explicit:?} differs from the credentials' {from_creds:?} (set DEVICE_CONNECT_ALLOW_INSECURE=true to override)"
            ));
        }
    }
    let mut tenant =
        flags.tenant.clone().or_else(|| first(env, &["TENANT", "DCD_TENANT"])).unwrap_or_else(|| "default".into());
    if tenant == "default" {
        if let Some(t) = &creds.tenant {
            tenant = t.clone();
        }
    }
    if tenant.is_empty() || !tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("tenant {tenant:?} must be letters, digits, '-' or '_'"));
    }

    let mut tls = creds.tls.clone();
    let tls_env = |suffix: &str| first(env, &[&format!("MESSAGING_TLS_{suffix}"), &format!("NATS_TLS_{suffix}")]);
    tls.ca_file = tls_env("CA_FILE").or(tls.ca_file);
    tls.cert_file = tls_env("CERT_FILE").or(tls.cert_file);
    tls.key_file = tls_env("KEY_FILE").or(tls.key_file);
    let nats_jwt = env("NATS_JWT").or(creds.jwt);
    let nats_seed = env("NATS_NKEY_SEED").or(creds.seed);
    // The device runtime's start-up checks (spec §5.3); the agent tools, like our client, make none.
    if backend == Backend::Nats && !insecure && flags.command.is_none() {
        if nats_jwt.is_none() || nats_seed.is_none() {
            return Err("NATS needs a user JWT and nkey seed (credentials file, or NATS_JWT and NATS_NKEY_SEED); \
                        set DEVICE_CONNECT_ALLOW_INSECURE=true for an open server"
                .into());
        }
        if urls.iter().any(|u| u.starts_with("tls://")) && tls.ca_file.is_none() {
            return Err("a tls:// NATS URL needs a CA file (MESSAGING_TLS_CA_FILE)".into());
        }
    }

    let state_poll_hz = match flags.state_poll_hz.filter(|h| *h != 0.0) {
        Some(h) => h,
        None => match env("DCD_STATE_POLL_HZ") {
            Some(v) => v.parse().map_err(|_| format!("DCD_STATE_POLL_HZ {v:?} is not a number"))?,
            None => 2.0,
        },
    };
    if !state_poll_hz.is_finite() || state_poll_hz < 0.0 {
        return Err(format!("state poll rate {state_poll_hz} must be 0 or more"));
    }
    let workers = match flags.workers {
        Some(n) => n,
        None => env("DCD_WORKERS").and_then(|v| v.parse().ok()).unwrap_or(4),
    }
    .clamp(1, 64);

    let zenoh_multicast = match flags.zenoh_multicast {
        Some(b) => b,
        None => env("DCD_ZENOH_MULTICAST").is_none_or(|v| truthy(Some(v))),
    };
    let mut policy = match flags.policy.clone().or_else(|| env("DCD_POLICY")) {
        Some(path) => Policy::load(Path::new(&path))?,
        None => Policy::default(),
    };
    policy.read_only |= flags.read_only || truthy(env("DCD_READ_ONLY"));
    let forward = match flags.forward_engine_events || truthy(env("DCD_FORWARD_ENGINE_EVENTS")) {
        false => Forward::Off,
        true if policy.owned_only => Forward::Managed,
        true => Forward::All,
    };
    let exec_idle_timeout = match flags.exec_idle_timeout {
        Some(s) => s,
        None => match env("DCD_EXEC_IDLE_TIMEOUT") {
            Some(v) => v.parse().map_err(|_| format!("DCD_EXEC_IDLE_TIMEOUT {v:?} is not a number of seconds"))?,
            None => crate::sessions::DEFAULT_IDLE.as_secs(),
        },
    };
    if exec_idle_timeout == 0 {
        return Err("the exec idle timeout must be at least 1 second".into());
    }
    Ok(Config {
        exec_idle_timeout: Duration::from_secs(exec_idle_timeout),
        forward,
        policy,
        simulate: flags.sim || truthy(first(env, &["DCD_SIM", "DCD_SIMULATE"])),
        docker_host: flags.docker_host.clone().or_else(|| env("DOCKER_HOST")),
        state_poll_hz,
        workers,
        in_container: truthy(env("DCD_CONTAINER")),
        notify_socket: env("NOTIFY_SOCKET"),
        watchdog: crate::notify::watchdog_interval(env("WATCHDOG_USEC").as_deref(), env("WATCHDOG_PID").as_deref()),
        mesh: MeshConfig {
            backend,
            device_id,
            tenant,
            urls,
            d2d,
            zenoh_listen: env("ZENOH_LISTEN").map(|v| split_list(&v)).unwrap_or_default(),
            zenoh_multicast,
            zenoh_gossip_multihop: truthy(env("ZENOH_GOSSIP_MULTIHOP")),
            nats_jwt,
            nats_seed,
            tls,
            tls_skip_hostname: true,
            ttl: Duration::from_secs(15),
            test_wedge_after: env("DCD_TEST_WEDGE_TRANSPORT_S")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| *s >= 0.0)
                .map(Duration::from_secs_f64),
        },
    })
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Zenoh endpoint from a URL (spec §5.2); `None` for the bare peer form.
fn zenoh_endpoint(url: &str) -> Option<String> {
    let hostport = |rest: &str| {
        let rest = rest.trim_end_matches('/');
        let (h, p) = rest.rsplit_once(':').unwrap_or((rest, ""));
        let h = if h.is_empty() { "localhost" } else { h };
        let p = if p.is_empty() { "7447" } else { p };
        format!("{h}:{p}")
    };
    if let Some(rest) = url.strip_prefix("zenoh+tls://") {
        return Some(format!("tls/{}", hostport(rest)));
    }
    if let Some(rest) = url.strip_prefix("zenoh://") {
        return (!rest.trim_matches('/').is_empty()).then(|| format!("tcp/{}", hostport(rest)));
    }
    if ["tcp/", "tls/", "udp/"].iter().any(|p| url.starts_with(p)) {
        return Some(url.to_string());
    }
    Some(format!("tcp/{url}"))
}

/// The SDK's id rule, minus dots: a dotted id spans several subject tokens
/// and no single-token wildcard would match it (spec §1.2).
fn validate_device_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "device id {id:?} must start with a letter or digit and contain only letters, digits, '_' or '-' \
             (dots would split it across subject tokens)"
        ))
    }
}

fn newest_portal_creds(flags: &Flags, env: Env) -> Option<PathBuf> {
    let dir = flags
        .portal_credentials_dir
        .clone()
        .or_else(|| env("PORTAL_CREDENTIALS_DIR"))
        .unwrap_or_else(|| format!("{}/.config/device-connect", env("HOME").unwrap_or_default()));
    let glob = flags
        .portal_credentials_glob
        .clone()
        .or_else(|| env("PORTAL_CREDENTIALS_GLOB"))
        .unwrap_or_else(|| "*.creds.json".into());
    let (prefix, suffix) = glob.split_once('*').unwrap_or((glob.as_str(), ""));
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix)))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

fn read_creds(path: &Path, backend: Option<&str>) -> Result<Creds, String> {
    let json_sibling = PathBuf::from(format!("{}.json", path.display()));
    let path = if path.extension().is_some_and(|e| e == "creds") && json_sibling.exists() {
        json_sibling.as_path()
    } else {
        path
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("credentials {}: {e}", path.display()))?;
    parse_creds(&text, backend).map_err(|e| format!("credentials {}: {e}", path.display()))
}

/// The text of a credentials file: an nsc `.creds` file or portal JSON. Public for the fuzz
/// targets (fuzz/checks.rs), which feed it any text.
pub fn parse_creds(text: &str, backend: Option<&str>) -> Result<Creds, String> {
    if !text.trim_start().starts_with('{') {
        return Ok(Creds {
            jwt: nsc_block(text, "-----BEGIN NATS USER JWT-----"),
            seed: nsc_block(text, "-----BEGIN USER NKEY SEED-----"),
            ..Creds::default()
        });
    }
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let s = |v: &Value| v.as_str().map(String::from);
    let section_name = match backend {
        Some(b) => b.to_string(),
        None if v.get("zenoh").is_some() => "zenoh".into(),
        None => "nats".into(),
    };
    let section = v.get(&section_name).cloned().unwrap_or(Value::Null);
    let tls = &section["tls"];
    Ok(Creds {
        device_id: s(&v["device_id"]),
        tenant: s(&v["tenant"]),
        urls: section["urls"].as_array().map(|a| a.iter().filter_map(s).collect()).unwrap_or_default(),
        jwt: s(&section["jwt"]).or_else(|| s(&v["jwt"])),
        seed: s(&section["nkey_seed"]).or_else(|| s(&v["nkey_seed"])),
        tls: Tls {
            ca_file: s(&tls["ca_file"]),
            cert_file: s(&tls["cert_file"]),
            key_file: s(&tls["key_file"]),
            ca_pem: s(&tls["ca_pem"]),
            cert_pem: s(&tls["cert_pem"]),
            key_pem: s(&tls["key_pem"]),
        },
    })
}

/// The text after `begin` up to the closing dashes line of an nsc `.creds` file; `None` for an
/// empty block, whose next line is a dashes line (the fuzzer found the END or next BEGIN line
/// read as the value).
fn nsc_block(text: &str, begin: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != begin).skip(1);
    let line = lines.find(|l| !l.trim().is_empty() && !l.starts_with('*'))?.trim();
    (!line.starts_with("---")).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let flags = Flags::from_args(&["dcd"], args).map_err(|e| e.output)?;
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve(&flags, &|k| env.get(k).cloned())
    }

    #[test]
    fn default_is_a_zenoh_d2d_peer_with_multicast() {
        let c = cfg(&[], &[]).unwrap();
        assert_eq!(c.mesh.backend, Backend::Zenoh);
        assert!(c.mesh.d2d && c.mesh.zenoh_multicast && c.mesh.urls.is_empty());
        assert_eq!((c.mesh.device_id.as_str(), c.mesh.tenant.as_str()), ("docker-host-1", "default"));
        assert_eq!(c.state_poll_hz, 2.0);
    }

    #[test]
    fn flags_beat_env_and_first_env_wins() {
        let c = cfg(&["--device-id", "a"], &[("DEVICE_ID", "b"), ("TENANT", "t1"), ("DCD_TENANT", "t2")]).unwrap();
        assert_eq!((c.mesh.device_id.as_str(), c.mesh.tenant.as_str()), ("a", "t1"));
    }

    #[test]
    fn nats_url_infers_backend_and_infra_mode() {
        let env = [("NATS_URL", "nats://127.0.0.1:4222"), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")];
        let c = cfg(&[], &env).unwrap();
        assert_eq!(c.mesh.backend, Backend::Nats);
        assert!(!c.mesh.d2d);
        let c = cfg(&["--discovery-mode", "P2P"], &env).unwrap();
        assert!(c.mesh.d2d);
    }

    #[test]
    fn nats_without_credentials_is_refused_unless_insecure() {
        assert!(cfg(&[], &[("NATS_URL", "nats://h:4222")]).unwrap_err().contains("JWT"));
    }

    #[test]
    fn zenoh_urls_are_converted() {
        assert_eq!(zenoh_endpoint("zenoh://"), None);
        assert_eq!(zenoh_endpoint("zenoh://r:7448").as_deref(), Some("tcp/r:7448"));
        assert_eq!(zenoh_endpoint("zenoh+tls://r").as_deref(), Some("tls/r:7447"));
        assert_eq!(zenoh_endpoint("tcp/1.2.3.4:7447").as_deref(), Some("tcp/1.2.3.4:7447"));
        assert_eq!(zenoh_endpoint("h:1").as_deref(), Some("tcp/h:1"));
        let c = cfg(&[], &[("ZENOH_CONNECT", "tcp/127.0.0.1:7447")]).unwrap();
        assert_eq!((c.mesh.backend, c.mesh.d2d), (Backend::Zenoh, false));
    }

    #[test]
    fn engine_events_are_forwarded_on_request_and_under_the_policy() {
        assert_eq!(cfg(&[], &[]).unwrap().forward, Forward::Off);
        assert_eq!(cfg(&["--forward-engine-events"], &[]).unwrap().forward, Forward::All);
        assert_eq!(cfg(&[], &[("DCD_FORWARD_ENGINE_EVENTS", "1")]).unwrap().forward, Forward::All);
        let dir = std::env::temp_dir().join(format!("dcd-cfg-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = dir.join("policy.json");
        std::fs::write(&policy, r#"{"owned_only": true}"#).unwrap();
        let c = cfg(&["--forward-engine-events", "--policy", policy.to_str().unwrap()], &[]).unwrap();
        assert_eq!(c.forward, Forward::Managed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dotted_ids_and_odd_tenants_are_rejected() {
        assert!(cfg(&["--device-id", "a.b"], &[]).unwrap_err().contains("dots"));
        assert!(cfg(&["--tenant", "a.b"], &[]).is_err());
        assert!(cfg(&["--messaging-backend", "mqtt"], &[]).is_err());
    }

    #[test]
    fn multicast_switch_and_poll_rate() {
        let c = cfg(&["--zenoh-multicast", "false", "--state-poll-hz", "0"], &[("DCD_STATE_POLL_HZ", "4")]).unwrap();
        assert!(!c.mesh.zenoh_multicast);
        assert_eq!(c.state_poll_hz, 4.0, "flag 0 means not given, as in Python");
        assert!(!cfg(&[], &[("DCD_ZENOH_MULTICAST", "false")]).unwrap().mesh.zenoh_multicast);
    }

    #[test]
    fn nsc_creds_and_portal_json_are_read() {
        let dir = std::env::temp_dir().join(format!("dcd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let nsc = dir.join("u.creds");
        std::fs::write(&nsc, "-----BEGIN NATS USER JWT-----\neyJ.abc\n------END NATS USER JWT------\n\n* note\n\n-----BEGIN USER NKEY SEED-----\nSUAXYZ\n------END USER NKEY SEED------\n").unwrap();
        let c = read_creds(&nsc, Some("nats")).unwrap();
        assert_eq!((c.jwt.as_deref(), c.seed.as_deref()), (Some("eyJ.abc"), Some("SUAXYZ")));
        let empty = parse_creds("-----BEGIN NATS USER JWT-----\n------END NATS USER JWT------\n", None).unwrap();
        assert_eq!(empty.jwt, None, "an empty block holds no JWT, not its END line");
        let portal = dir.join("p.creds.json");
        std::fs::write(&portal, r#"{"device_id":"pi-7","tenant":"acme","nats":{"urls":["nats://p:4222"],"jwt":"J","nkey_seed":"S","tls":{"ca_file":"/ca.pem"}}}"#).unwrap();
        let dir_s = dir.to_string_lossy().to_string();
        let c = cfg(&["--portal", "--portal-credentials-dir", &dir_s], &[]).unwrap();
        assert_eq!((c.mesh.device_id.as_str(), c.mesh.tenant.as_str()), ("pi-7", "acme"));
        assert_eq!((c.mesh.backend, c.mesh.d2d), (Backend::Nats, false));
        assert_eq!(c.mesh.urls, vec!["nats://p:4222"]);
        assert_eq!(c.mesh.tls.ca_file.as_deref(), Some("/ca.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
