//! The Zenoh backend: zenoh's blocking API on the transport thread. Zenoh
//! callbacks only forward into a crossbeam channel; the thread selects over
//! it and the daemon's channels. The protocol itself is in `Core`.

use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::{json, Map, Value};
use zenoh::handlers::CallbackDrop;
use zenoh::query::{Query, Reply};
use zenoh::sample::Sample;
use zenoh::{Session, Wait};

use super::{
    zenoh_key, Core, Links, MeshConfig, Message, Out, RequestError, Responder, Step, Sub, Tls, REGISTER_TIMEOUT,
};
use crate::encoding::{base64_encode, STANDARD};

/// Zenoh's internal runtimes, unless the user set `ZENOH_RUNTIME` (zenoh
/// reads it once, when it first starts). Receive, transmit and accept share
/// the application runtime: two threads instead of six (measured), `net`
/// staying apart because zenoh blocks on it from the other runtimes.
const RUNTIME: &str =
    "(app: (worker_threads: 1), acc: (handover: app), rx: (handover: app), tx: (handover: app), net: (worker_threads: 1))";
/// How often a client checks that it still has a session to a router or peer.
const LINK_CHECK: Duration = Duration::from_secs(1);
/// How long to wait before trying to open a session again.
const REOPEN: Duration = Duration::from_secs(5);

enum Msg {
    Sample(Sub, Sample),
    Query(Query),
    Registered(String, Result<Vec<u8>, String>),
}

/// Check the configuration on the caller's thread, size zenoh's runtime (the
/// caller has no other thread yet: `mesh::prepare`); return the transport
/// thread's body.
pub(super) fn prepare(cfg: &MeshConfig) -> io::Result<impl FnOnce(Core, Links) + Send + 'static> {
    let json = session_json(cfg);
    let config = zenoh::Config::from_json5(&json.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("zenoh config: {e}")))?;
    size_runtime();
    let client = !cfg.urls.is_empty();
    Ok(move |core: Core, links: Links| run(config, client, core, links))
}

/// Size zenoh's runtimes (`RUNTIME`); only while the process has no other thread.
fn size_runtime() {
    if std::env::var_os("ZENOH_RUNTIME").is_none() {
        std::env::set_var("ZENOH_RUNTIME", RUNTIME);
    }
}

/// The session configuration of spec §5.5 (and TLS of §5.4).
fn session_json(cfg: &MeshConfig) -> Value {
    let autoconnect = json!({"router": ["peer", "router"], "peer": ["router", "peer"]});
    let mut c = if cfg.urls.is_empty() {
        json!({
            "mode": "peer",
            "scouting": {
                "multicast": {"enabled": cfg.zenoh_multicast, "autoconnect": autoconnect},
                "gossip": {"enabled": true, "multihop": cfg.zenoh_gossip_multihop, "autoconnect": autoconnect},
            },
        })
    } else {
        // A client talks to its endpoints only (routers, so their ACLs see all traffic, or a
        // listening peer, spec §5.5).
        json!({
            "mode": "client",
            "connect": {
                "endpoints": cfg.urls,
                "exit_on_failure": false,
                "retry": {"period_init_ms": 1000, "period_max_ms": 5000, "period_increase_factor": 2.0},
            },
            "scouting": {"multicast": {"enabled": false}, "gossip": {"enabled": false}},
        })
    };
    if !cfg.zenoh_listen.is_empty() {
        c["listen"] = json!({"endpoints": cfg.zenoh_listen});
    }
    let tls = tls_json(&cfg.tls);
    if !tls.is_empty() {
        c["transport"] = json!({"link": {"tls": tls}});
    }
    c
}

/// Paths go in as they are, inline PEM base64-encoded; paths win.
fn tls_json(tls: &Tls) -> Map<String, Value> {
    let mut m = Map::new();
    for (file, pem, key) in [
        (&tls.ca_file, &tls.ca_pem, "root_ca_certificate"),
        (&tls.cert_file, &tls.cert_pem, "connect_certificate"),
        (&tls.key_file, &tls.key_pem, "connect_private_key"),
    ] {
        match (file, pem) {
            (Some(path), _) => drop(m.insert(key.into(), json!(path))),
            (None, Some(pem)) => {
                drop(m.insert(format!("{key}_base64"), json!(base64_encode(pem.as_bytes(), STANDARD))))
            }
            (None, None) => {}
        }
    }
    let has = |k: &str| m.contains_key(k) || m.contains_key(&format!("{k}_base64"));
    if has("connect_certificate") && has("connect_private_key") {
        m.insert("enable_mtls".into(), json!(true));
    }
    m
}

fn run(config: zenoh::Config, client: bool, mut core: Core, mut links: Links) {
    let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
    // A client cannot open its session before an endpoint answers; keep trying.
    let mut attempts = 0u32;
    let session = loop {
        match zenoh::open(config.clone()).wait() {
            Ok(s) => break s,
            Err(e) if attempts == 0 => {
                log::warn!("mesh: cannot open the zenoh session ({e}); retrying every {}s", REOPEN.as_secs())
            }
            Err(e) => log::debug!("mesh: zenoh session attempt {attempts}: {e}"),
        }
        attempts += 1;
        let until = Instant::now() + REOPEN;
        while Instant::now() < until {
            match links.next(&rx, until.saturating_duration_since(Instant::now())) {
                Step::Stop => return,
                Step::Event(ev) => core.push_event(ev),
                Step::Publish(p) => core.push_publish(p),
                Step::Other(_) | Step::Idle => {}
            }
        }
    };
    // Dropping these would undeclare them: keep them for the session's life.
    let declared = match declare(&session, &core, &tx) {
        Ok(d) => d,
        Err(e) => {
            log::error!("mesh: {e}");
            while !matches!(links.next(&rx, super::IDLE_WAIT), Step::Stop) {}
            return;
        }
    };
    log::info!("mesh ready");
    if !client {
        core.connected(Instant::now());
    }
    let mut next_check = Instant::now();
    loop {
        let now = Instant::now();
        // A client is only as connected as its session to an endpoint. Checked again right
        // before anything goes out, so what is queued in the second after a link drops waits
        // for the next session instead of going to none.
        if client && (now >= next_check || core.next_deadline(now) <= now) {
            next_check = now + LINK_CHECK;
            if linked(&session) {
                core.connected(now);
            } else {
                core.disconnected();
            }
        }
        for out in core.due(now) {
            send(&session, &tx, out);
        }
        let mut deadline = core.next_deadline(now);
        if client {
            deadline = deadline.min(next_check);
        }
        let now = Instant::now();
        match links.next(&rx, deadline.saturating_duration_since(now)) {
            Step::Stop => break,
            Step::Event(ev) => core.push_event(ev),
            Step::Publish(p) => core.push_publish(p),
            Step::Other(Msg::Sample(sub, sample)) => {
                for out in core.on_message(sub, sample.payload().to_bytes().into_owned(), None) {
                    send(&session, &tx, out);
                }
            }
            Step::Other(Msg::Query(query)) => {
                let payload = query.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
                // The Query moves into the reply and is dropped right after it,
                // which finalizes the query for clients in client mode (spec §2.7).
                let reply = Responder::new(None, move |bytes| {
                    if let Err(e) = query.reply(query.key_expr().clone(), bytes).wait() {
                        log::warn!("reply not sent: {e}");
                    }
                });
                core.on_message(Sub::Cmd, payload, Some(reply));
            }
            Step::Other(Msg::Registered(id, reply)) => core.on_registered(&id, reply, now),
            Step::Idle => {}
        }
    }
    if let Some(out) = core.departure() {
        send(&session, &tx, out);
    }
    drop(declared);
    if let Err(e) = session.close().wait() {
        log::warn!("zenoh: close: {e}");
    }
}

/// Whether a client has a session to a router or to a peer: its endpoint may be either (spec
/// §5.5), and a client never connects to another client.
fn linked(session: &Session) -> bool {
    let info = session.info();
    info.routers_zid().wait().next().is_some() || info.peers_zid().wait().next().is_some()
}

/// Subscribers on every subscription, and a queryable on `cmd` as well,
/// since clients `get` it (spec §2.7).
fn declare(session: &Session, core: &Core, tx: &Sender<Msg>) -> Result<Vec<Box<dyn Send>>, String> {
    let mut declared: Vec<Box<dyn Send>> = Vec::new();
    for (sub, subject) in core.subscriptions() {
        let key = zenoh_key(&subject);
        let t = tx.clone();
        let subscriber = session
            .declare_subscriber(key.clone())
            .callback(move |s| drop(t.send(Msg::Sample(sub, s))))
            .wait()
            .map_err(|e| format!("subscribe {key}: {e}"))?;
        declared.push(Box::new(subscriber));
        if sub == Sub::Cmd {
            let t = tx.clone();
            let queryable = session
                .declare_queryable(key.clone())
                .complete(true)
                .callback(move |q| drop(t.send(Msg::Query(q))))
                .wait()
                .map_err(|e| format!("queryable {key}: {e}"))?;
            declared.push(Box::new(queryable));
        }
    }
    Ok(declared)
}

fn send(session: &Session, tx: &Sender<Msg>, out: Out) {
    match out {
        Out::Publish { subject, payload } => {
            if let Err(e) = session.put(zenoh_key(&subject), payload).wait() {
                log::warn!("publish failed: {e}");
            }
        }
        Out::Register { subject, payload, id } => {
            let (t, done, last) = (tx.clone(), tx.clone(), id.clone());
            // Zenoh drops the handler when the query ends; if no reply came
            // first, that is the failure Core retries on.
            let handler = CallbackDrop {
                callback: move |reply: Reply| {
                    let r = match reply.result() {
                        Ok(sample) => Ok(sample.payload().to_bytes().into_owned()),
                        Err(e) => Err(format!("error reply: {}", String::from_utf8_lossy(&e.payload().to_bytes()))),
                    };
                    let _ = t.send(Msg::Registered(id.clone(), r));
                },
                drop: move || {
                    let _ = done.send(Msg::Registered(last.clone(), Err("no reply".into())));
                },
            };
            let get = session.get(zenoh_key(&subject)).payload(payload).timeout(REGISTER_TIMEOUT).with(handler).wait();
            if let Err(e) = get {
                log::warn!("registration request not sent: {e}");
            }
        }
    }
}

/// How long a scouting client looks for the device before it says nobody answers.
const SCOUT_WAIT: Duration = Duration::from_secs(3);

/// A client's session (`mesh::Session`): zenoh's blocking API as it is.
pub(super) struct Link {
    session: Session,
    /// Undeclared when dropped: kept for the session's life.
    subscribers: std::sync::Mutex<Vec<zenoh::pubsub::Subscriber<()>>>,
    /// A peer that finds others by scouting: the device may not be found yet.
    scouting: bool,
    opened: Instant,
}

impl Link {
    pub(super) fn open(cfg: &MeshConfig) -> io::Result<Link> {
        size_runtime();
        let mut json = session_json(cfg);
        if !cfg.urls.is_empty() {
            // A client waits for no router: the user is there to be told.
            json["connect"]["exit_on_failure"] = json!(true);
        }
        let bad = |e: zenoh::Error| io::Error::new(io::ErrorKind::ConnectionRefused, format!("zenoh: {e}"));
        let config = zenoh::Config::from_json5(&json.to_string()).map_err(bad)?;
        let session = zenoh::open(config).wait().map_err(bad)?;
        Ok(Link { session, subscribers: Default::default(), scouting: cfg.urls.is_empty(), opened: Instant::now() })
    }

    pub(super) fn request(&self, subject: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RequestError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let replies = self
                .session
                .get(zenoh_key(subject))
                .payload(payload.clone())
                .timeout(left)
                .wait()
                .map_err(|e| RequestError::Failed(e.to_string()))?;
            if let Ok(reply) = replies.recv() {
                return match reply.result() {
                    Ok(sample) => Ok(sample.payload().to_bytes().into_owned()),
                    Err(e) => Err(RequestError::Failed(String::from_utf8_lossy(&e.payload().to_bytes()).into())),
                };
            }
            // The query ended without a reply: nobody there, or (a scouting
            // peer) nobody found yet.
            if Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(RequestError::TimedOut);
            }
            if !self.scouting || self.opened.elapsed() > SCOUT_WAIT {
                return Err(RequestError::NoResponders);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(super) fn publish(&self, subject: &str, payload: Vec<u8>) -> io::Result<()> {
        self.session.put(zenoh_key(subject), payload).wait().map_err(|e| io::Error::other(e.to_string()))
    }

    pub(super) fn subscribe(&self, subject: &str, tx: Sender<Message>) -> io::Result<()> {
        let subscriber = self
            .session
            .declare_subscriber(zenoh_key(subject))
            .callback(move |s| {
                let subject = s.key_expr().as_str().replace('/', ".");
                drop(tx.send(Message { subject, payload: s.payload().to_bytes().into_owned() }))
            })
            .wait()
            .map_err(|e| io::Error::other(e.to_string()))?;
        crate::sync::lock(&self.subscribers).push(subscriber);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(config: Value) -> Session {
        zenoh::open(zenoh::Config::from_json5(&config.to_string()).unwrap()).wait().unwrap()
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "not {what} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The device as a client of a listening peer, then of a router (spec §5.5): linked as long
    /// as that endpoint is there. Loopback only, no scouting.
    #[test]
    fn a_client_is_linked_to_a_peer_or_a_router() {
        for mode in ["peer", "router"] {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let endpoint = format!("tcp/127.0.0.1:{port}");
            let off = json!({"multicast": {"enabled": false}, "gossip": {"enabled": false}});
            let server = open(json!({"mode": mode, "listen": {"endpoints": [endpoint]}, "scouting": off}));
            let cfg = MeshConfig {
                backend: super::super::Backend::Zenoh,
                urls: vec![endpoint],
                ..super::super::tests::cfg(true)
            };
            let client = open(session_json(&cfg));
            wait_until(&format!("linked to a {mode}"), || linked(&client));
            server.close().wait().unwrap();
            wait_until(&format!("unlinked from a closed {mode}"), || !linked(&client));
            client.close().wait().unwrap();
        }
    }

    #[test]
    fn tls_keys_follow_the_sdk() {
        let tls = Tls {
            ca_file: Some("/ca.pem".into()),
            cert_pem: Some("C".into()),
            key_file: Some("/k.pem".into()),
            ..Tls::default()
        };
        let m = tls_json(&tls);
        assert_eq!(m["root_ca_certificate"], "/ca.pem");
        assert_eq!(m["connect_certificate_base64"], "Qw==");
        assert_eq!(m["connect_private_key"], "/k.pem");
        assert_eq!(m["enable_mtls"], true);
        assert!(tls_json(&Tls::default()).is_empty());
    }
}
