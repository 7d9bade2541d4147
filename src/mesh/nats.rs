//! The NATS backend: async-nats on a current-thread tokio runtime that the
//! transport thread creates and owns. The crossbeam channels from the daemon
//! reach the runtime through one blocking bridge task; the protocol itself is
//! in `Core`, this file only moves bytes.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use async_nats::rustls::client::WebPkiServerVerifier;
use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use async_nats::rustls::{self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use async_nats::{Client, ConnectOptions, Message, ServerAddr, Subject};
use futures_core::Stream;
use tokio::sync::mpsc::{channel, unbounded_channel, Receiver, Sender, UnboundedReceiver, UnboundedSender};

use super::{
    jitter, Core, Event, Links, MeshConfig, Out, Publish, RequestError, Responder, Step, Sub, Tls, IDLE_WAIT,
    REGISTER_TIMEOUT,
};

/// The jitter window of the first reconnect attempt, and the largest one.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(8);

/// How long the farewell and queued messages get to reach the server.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the echo that says the subscriptions are in place may take ("mesh ready").
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
/// The client PINGs the server after this long without hearing from it, and
/// drops the connection at the third PING unanswered: a link that died without
/// a FIN (a radio gone, a NAT entry expired) is noticed within 3 × this, not
/// after the 3 minutes of async-nats's default. A PING is a few bytes.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Everything the async loop reacts to.
enum Msg {
    Event(Event),
    Publish(Publish),
    Stop,
    Up,
    Down,
    /// The server has confirmed our subscriptions.
    Ready,
    /// Any other client event, such as a failed connection attempt.
    Note(String),
    /// The echo of a confirmation marker (see `Unconfirmed`).
    Confirmed(u64),
    Incoming(Sub, Message),
    Reply(Subject, Vec<u8>),
    Registered(String, Result<Vec<u8>, String>),
}

/// Check the configuration on the caller's thread, so a bad URL or
/// unreadable key fails startup; return the transport thread's body.
pub(super) fn prepare(cfg: &MeshConfig) -> io::Result<impl FnOnce(Core, Links) + Send + 'static> {
    let servers = servers(cfg)?;
    let (tx, rx) = unbounded_channel();
    let events = tx.clone();
    // Until the first connection, the first attempt dials at once: start-up waits for no jitter.
    let ever_up = Arc::new(AtomicBool::new(false));
    let up = ever_up.clone();
    let options = options(cfg)?
        // Start even when the server is down, and never give up on it.
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(PING_EVERY)
        .reconnect_delay_callback(move |attempt| match (up.load(Ordering::Relaxed), attempt) {
            (false, 0 | 1) => Duration::ZERO,
            _ => reconnect_delay(attempt),
        })
        // Registration is the only request the device makes.
        .request_timeout(Some(REGISTER_TIMEOUT))
        .event_callback(move |event| {
            let tx = events.clone();
            if matches!(event, async_nats::Event::Connected) {
                ever_up.store(true, Ordering::Relaxed);
            }
            async move {
                match event {
                    async_nats::Event::Connected => drop(tx.send(Msg::Up)),
                    async_nats::Event::Disconnected => drop(tx.send(Msg::Down)),
                    other => drop(tx.send(Msg::Note(other.to_string()))),
                }
            }
        });
    Ok(move |core: Core, links: Links| {
        // The runtime's only extra thread is the bridge (a blocking task).
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().thread_name("mesh-bridge").build() {
            Ok(rt) => rt,
            Err(e) => return log::error!("mesh: cannot start the NATS runtime: {e}"),
        };
        rt.block_on(run(options, servers, core, links, tx, rx));
        rt.shutdown_timeout(Duration::from_millis(100));
    })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn servers(cfg: &MeshConfig) -> io::Result<Vec<ServerAddr>> {
    let servers = cfg
        .urls
        .iter()
        .map(|u| u.parse::<ServerAddr>().map_err(|e| invalid(format!("NATS URL {u}: {e}"))))
        .collect::<io::Result<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(invalid("NATS needs at least one server URL".into()));
    }
    Ok(servers)
}

/// Who we are to the server and how we prove it: the part the daemon and
/// the client share.
fn options(cfg: &MeshConfig) -> io::Result<ConnectOptions> {
    let mut o = ConnectOptions::new().name("dcd");
    match (&cfg.nats_jwt, &cfg.nats_seed) {
        (Some(jwt), Some(seed)) => {
            let key = Arc::new(nkeys::KeyPair::from_seed(seed).map_err(|e| invalid(format!("NATS nkey seed: {e}")))?);
            o = o.jwt(jwt.clone(), move |nonce| {
                let key = key.clone();
                async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
            });
        }
        (None, None) => {}
        _ => log::warn!("NATS: a JWT needs its nkey seed and the other way round; connecting without credentials"),
    }
    if cfg.urls.iter().any(|u| u.starts_with("tls://")) {
        o = o.require_tls(true);
    }
    with_tls(o, &cfg.tls, cfg.tls_skip_hostname)
}

/// Before reconnect attempt `n` (1, 2, …): a random wait below a window that doubles from
/// `RECONNECT_FIRST` up to `RECONNECT_MAX` ("full jitter"). The first attempt waits too, so a
/// fleet whose server went down does not dial the others, or the restarted one, all in the same
/// instant; async-nats's own default starts at zero and has no jitter. Each attempt tries one
/// of the configured servers (shuffled), so a device with several URLs reaches a live one in
/// about `RECONNECT_FIRST` plus twice that.
fn reconnect_delay(attempt: usize) -> Duration {
    let doublings = attempt.saturating_sub(1).min(8) as u32;
    jitter((RECONNECT_FIRST * (1 << doublings)).min(RECONNECT_MAX))
}

/// Inline PEM or the contents of a file; the file wins (spec §5.3).
fn pem(file: &Option<String>, inline: &Option<String>) -> io::Result<Option<Vec<u8>>> {
    match (file, inline) {
        (Some(path), _) => std::fs::read(path).map(Some).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}"))),
        (None, Some(text)) => Ok(Some(text.clone().into_bytes())),
        (None, None) => Ok(None),
    }
}

/// TLS from the configured CA and client key. With a CA we build the rustls
/// config ourselves, so hostname checks can be skipped as the SDK does.
fn with_tls(o: ConnectOptions, tls: &Tls, skip_hostname: bool) -> io::Result<ConnectOptions> {
    let bad = |what: &str, e: &dyn std::fmt::Display| invalid(format!("NATS TLS {what}: {e}"));
    let (cert, key) = (pem(&tls.cert_file, &tls.cert_pem)?, pem(&tls.key_file, &tls.key_pem)?);
    let Some(ca) = pem(&tls.ca_file, &tls.ca_pem)? else {
        // No CA of our own: async-nats trusts the system roots.
        return Ok(match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => o.add_client_certificate(c.into(), k.into()).require_tls(true),
            _ if cert.is_some() || key.is_some() => {
                log::warn!("NATS: an inline client certificate needs a CA as well; ignoring it");
                o
            }
            _ => o,
        });
    };
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.map_err(|e| bad("CA", &e))?).map_err(|e| bad("CA", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad("CA", &e))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("setup", &e))?;
    let builder = if skip_hostname {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
    } else {
        builder.with_webpki_verifier(verifier)
    };
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", &e))?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| bad("client key", &e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad("client certificate", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(o.tls_client_config(config).require_tls(true))
}

/// Verifies the server's chain against the CA but not the name it is for:
/// portal brokers' certificates need not carry the name clients dial (spec §5.4).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, so a name error means the chain is good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

async fn run(
    options: ConnectOptions,
    servers: Vec<ServerAddr>,
    core: Core,
    links: Links,
    tx: UnboundedSender<Msg>,
    mut rx: UnboundedReceiver<Msg>,
) {
    let (daemon_tx, mut daemon) = channel(BRIDGE_IN_FLIGHT);
    let bridge = tokio::task::spawn_blocking(move || bridge(links, &daemon_tx));
    if let Err(e) = serve(options, servers, core, &tx, &mut rx, &mut daemon).await {
        log::error!("mesh: {e}");
        while !matches!(daemon.recv().await, Some(Msg::Stop) | None) {}
    }
    drop(daemon);
    let _ = bridge.await;
}

/// Messages from the daemon the bridge may have handed to the runtime and the
/// mesh task not yet taken. When full, the bridge waits, and so the daemon's
/// own bounded queues fill: a flood waits (or is dropped and counted) there.
/// The runtime's other channel stays unbounded: worker threads put replies on
/// it and must never wait for the transport.
const BRIDGE_IN_FLIGHT: usize = 1024;

/// Forward the daemon's channels into the runtime until `stop`.
fn bridge(mut links: Links, tx: &Sender<Msg>) {
    let nothing = crossbeam_channel::never::<()>();
    loop {
        let msg = match links.next(&nothing, IDLE_WAIT) {
            Step::Event(ev) => Msg::Event(ev),
            Step::Publish(p) => Msg::Publish(p),
            Step::Stop => Msg::Stop,
            Step::Other(()) | Step::Idle => continue,
        };
        let stop = matches!(msg, Msg::Stop);
        if tx.blocking_send(msg).is_err() || stop {
            return;
        }
    }
}

async fn serve(
    options: ConnectOptions,
    servers: Vec<ServerAddr>,
    mut core: Core,
    tx: &UnboundedSender<Msg>,
    rx: &mut UnboundedReceiver<Msg>,
    daemon: &mut Receiver<Msg>,
) -> Result<(), String> {
    let client = options.connect(servers).await.map_err(|e| format!("NATS: {e}"))?;
    for (sub, subject) in core.subscriptions() {
        let mut messages = client.subscribe(subject.clone()).await.map_err(|e| format!("subscribe {subject}: {e}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)).await {
                if tx.send(Msg::Incoming(sub, m)).is_err() {
                    break;
                }
            }
        });
    }
    let mut unconfirmed = Unconfirmed::new(&client, tx).await?;
    // Reconnect attempts repeat the same error every few seconds: say it once.
    let mut last_note = String::new();
    loop {
        for out in core.due(Instant::now()) {
            unconfirmed.sent(&core, &out);
            send(&client, tx, out).await;
        }
        unconfirmed.mark(&client).await;
        let deadline = core.next_deadline(Instant::now());
        let msg = tokio::select! {
            m = rx.recv() => m,
            m = daemon.recv() => m,
            () = tokio::time::sleep_until(deadline.into()) => continue,
        };
        let now = Instant::now();
        match msg {
            None | Some(Msg::Stop) => break,
            Some(Msg::Event(ev)) => core.push_event(ev),
            Some(Msg::Publish(p)) => core.push_publish(p),
            Some(Msg::Up) => {
                last_note.clear();
                core.connected(now);
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    if echoed(&client).await {
                        let _ = tx.send(Msg::Ready);
                    }
                });
            }
            Some(Msg::Down) => {
                core.disconnected();
                core.requeue(unconfirmed.take());
            }
            Some(Msg::Confirmed(n)) => unconfirmed.confirmed(n),
            Some(Msg::Ready) => log::info!("mesh ready"),
            Some(Msg::Note(note)) => {
                if note != last_note {
                    log::warn!("NATS {}: {note} (is the broker address right, and is it up?)", core.address);
                    last_note = note;
                }
            }
            Some(Msg::Incoming(sub, m)) => {
                let reply = m.reply.map(|inbox| {
                    let tx = tx.clone();
                    Responder::new(Some(client.max_payload()), move |bytes| {
                        let _ = tx.send(Msg::Reply(inbox, bytes));
                    })
                });
                for out in core.on_message(sub, m.payload.to_vec(), reply) {
                    send(&client, tx, out).await;
                }
            }
            Some(Msg::Reply(inbox, bytes)) => {
                if let Err(e) = client.publish(inbox, bytes.into()).await {
                    log::warn!("reply not sent: {e}");
                }
            }
            Some(Msg::Registered(id, reply)) => core.on_registered(&id, reply, now),
        }
    }
    if let Some(out) = core.departure() {
        send(&client, tx, out).await;
    }
    if core.connected && tokio::time::timeout(FLUSH_TIMEOUT, client.flush()).await.is_err() {
        log::warn!("NATS: flush at shutdown timed out");
    }
    Ok(())
}

/// Events written since the server was last seen to have everything. NATS core has no
/// acknowledgement, and what a connection that died without a FIN held in its socket is gone
/// once the client reconnects: so after events go out, a marker goes to an inbox of our own,
/// and its echo confirms all before it. On a disconnect the unconfirmed events are queued
/// again: a state change or a log line may then arrive twice, but not never.
struct Unconfirmed {
    events: VecDeque<(String, Vec<u8>)>,
    /// Events confirmed or queued again so far: `events[0]` is event number `done`.
    done: u64,
    /// The marker on its way, if one is: the number of events it confirms.
    marker: Option<u64>,
    inbox: Subject,
}

impl Unconfirmed {
    async fn new(client: &Client, tx: &UnboundedSender<Msg>) -> Result<Self, String> {
        let inbox = Subject::from(client.new_inbox());
        let mut echoes = client.subscribe(inbox.clone()).await.map_err(|e| format!("subscribe {inbox}: {e}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = poll_fn(|cx| Pin::new(&mut echoes).poll_next(cx)).await {
                let n = std::str::from_utf8(&m.payload).ok().and_then(|n| n.parse().ok());
                if n.is_some_and(|n| tx.send(Msg::Confirmed(n)).is_err()) {
                    break;
                }
            }
        });
        Ok(Unconfirmed { events: VecDeque::new(), done: 0, marker: None, inbox })
    }

    fn sent(&mut self, core: &Core, out: &Out) {
        if let Out::Publish { subject, payload } = out {
            if core.is_event(subject) {
                self.events.push_back((subject.clone(), payload.clone()));
            }
        }
    }

    /// Send a marker for what went out, unless one is on its way (one per round trip).
    async fn mark(&mut self, client: &Client) {
        if self.marker.is_some() || self.events.is_empty() {
            return;
        }
        let n = self.done + self.events.len() as u64;
        if client.publish(self.inbox.clone(), n.to_string().into()).await.is_ok() {
            self.marker = Some(n);
        }
    }

    fn confirmed(&mut self, n: u64) {
        if self.marker == Some(n) {
            self.marker = None;
        }
        while self.done < n && self.events.pop_front().is_some() {
            self.done += 1;
        }
    }

    /// Everything unconfirmed, oldest first; a marker on its way is forgotten.
    fn take(&mut self) -> impl Iterator<Item = (String, Vec<u8>)> {
        self.marker = None;
        self.done += self.events.len() as u64;
        std::mem::take(&mut self.events).into_iter()
    }
}

/// Whether the server has taken every subscription made so far: it takes a connection's
/// commands in order, so a message to an inbox of our own, sent after them, comes back only
/// after they are in place. (async-nats' `flush` only writes them to the socket: a request from
/// another connection could still reach the server first and find no subscriber.)
async fn echoed(client: &Client) -> bool {
    let inbox = Subject::from(client.new_inbox());
    let Ok(mut echo) = client.subscribe(inbox.clone()).await else { return false };
    if client.publish(inbox, Vec::new().into()).await.is_err() {
        return false;
    }
    let back = poll_fn(|cx| Pin::new(&mut echo).poll_next(cx));
    let came = matches!(tokio::time::timeout(ECHO_TIMEOUT, back).await, Ok(Some(_)));
    let _ = echo.unsubscribe().await;
    came
}

async fn send(client: &Client, tx: &UnboundedSender<Msg>, out: Out) {
    match out {
        Out::Publish { subject, payload } => {
            if let Err(e) = client.publish(subject, payload.into()).await {
                log::warn!("publish failed: {e}");
            }
        }
        Out::Register { subject, payload, id } => {
            let (client, tx) = (client.clone(), tx.clone());
            tokio::spawn(async move {
                let reply = client.request(subject, payload.into()).await;
                let _ = tx.send(Msg::Registered(id, reply.map(|m| m.payload.to_vec()).map_err(|e| e.to_string())));
            });
        }
    }
}

/// How long a client waits for the server to accept its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A client's connection (`mesh::Session`). The runtime runs on a thread of
/// its own; each call blocks on its future from the caller's thread.
pub(super) struct Link {
    client: Client,
    rt: tokio::runtime::Handle,
    /// Ends the runtime's thread when the link goes.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Link {
    pub(super) fn open(cfg: &MeshConfig) -> io::Result<Link> {
        let servers = servers(cfg)?;
        let options = options(cfg)?.connection_timeout(CONNECT_TIMEOUT);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let rt = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("mesh".into()).spawn(move || {
            runtime.block_on(async move { drop(stopped.await) });
        })?;
        let client = rt.block_on(options.connect(servers)).map_err(|e| {
            io::Error::new(io::ErrorKind::ConnectionRefused, format!("NATS {}: {e}", cfg.urls.join(", ")))
        })?;
        Ok(Link { client, rt, _stop: stop })
    }

    pub(super) fn request(&self, subject: &str, payload: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, RequestError> {
        let request = async_nats::Request::new().payload(payload.into()).timeout(Some(timeout));
        match self.rt.block_on(self.client.send_request(subject.to_string(), request)) {
            Ok(m) => Ok(m.payload.to_vec()),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => RequestError::NoResponders,
                async_nats::RequestErrorKind::TimedOut => RequestError::TimedOut,
                _ => RequestError::Failed(e.to_string()),
            }),
        }
    }

    pub(super) fn publish(&self, subject: &str, payload: Vec<u8>) -> io::Result<()> {
        let publish = async {
            self.client.publish(subject.to_string(), payload.into()).await.map_err(io::Error::other)?;
            self.client.flush().await.map_err(io::Error::other)
        };
        self.rt.block_on(publish)
    }

    pub(super) fn subscribe(&self, subject: &str, tx: crossbeam_channel::Sender<super::Message>) -> io::Result<()> {
        let mut messages = self.rt.block_on(self.client.subscribe(subject.to_string())).map_err(io::Error::other)?;
        self.rt.spawn(async move {
            while let Some(m) = poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)).await {
                if tx.send(super::Message { subject: m.subject.to_string(), payload: m.payload.to_vec() }).is_err() {
                    break;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_are_spread_within_doubling_windows() {
        let waits = |attempt| (0..200).map(|_| reconnect_delay(attempt)).collect::<Vec<_>>();
        for (attempt, window) in [(1, 1), (2, 2), (3, 4), (4, 8), (40, 8)] {
            let w = waits(attempt);
            assert!(w.iter().all(|d| *d < Duration::from_secs(window)), "attempt {attempt}: {w:?}");
            // Spread over the window, not bunched at its start (fails with odds of 2^-200).
            assert!(w.iter().any(|d| *d >= Duration::from_secs(window) / 2), "attempt {attempt}: {w:?}");
        }
    }
}
