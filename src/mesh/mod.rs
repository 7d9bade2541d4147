//! The Device Connect mesh: one transport thread owns the session (NATS or
//! Zenoh), publishes events, heartbeats and presence, registers with the
//! registry in infra mode, and hands incoming requests to the workers. The
//! rest of the daemon sees only the types below and never knows which
//! backend is in use.

use std::time::Duration;

use serde_json::Value;

/// Which messaging backend carries the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nats,
    Zenoh,
}

/// TLS material. Paths win over inline PEM (spec §5.3).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

/// Everything the transport needs, resolved by `config` (flags > env > creds).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub backend: Backend,
    pub device_id: String,
    pub tenant: String,
    /// NATS URLs, or Zenoh endpoints already converted (`tcp/h:p`, spec §5.2).
    /// Empty for Zenoh means a D2D peer with scouting.
    pub urls: Vec<String>,
    /// D2D discovery (presence) instead of the registry.
    pub d2d: bool,
    /// Zenoh: listen endpoints (`ZENOH_LISTEN`).
    pub zenoh_listen: Vec<String>,
    /// Zenoh: multicast scouting (on by default, as in the SDK).
    pub zenoh_multicast: bool,
    /// Zenoh: `scouting.gossip.multihop`.
    pub zenoh_gossip_multihop: bool,
    /// NATS user JWT and nkey seed (decentralised auth).
    pub nats_jwt: Option<String>,
    pub nats_seed: Option<String>,
    pub tls: Tls,
    /// NATS: verify the server certificate's chain but not its hostname (as the SDK does).
    pub tls_skip_hostname: bool,
    /// Lease the registry keeps; heartbeats go every ttl/3.
    pub ttl: Duration,
}

/// The registration params of this device (spec §3.6): `device_id`,
/// `device_ttl`, `capabilities`, `identity`, `status` with a fresh `ts`.
/// Presence is built from the same object. Called by the transport thread.
pub type Describe = std::sync::Arc<dyn Fn() -> Value + Send + Sync>;

/// A message from the mesh for the workers.
pub enum Inbound {
    /// A JSON-RPC request on `<id>.cmd`; answer through `reply`.
    Request { payload: Vec<u8>, reply: Responder },
    /// A broadcast envelope (spec §4.3); results go out as events.
    Broadcast { payload: Vec<u8> },
}

/// Where a reply goes. NATS: published to the reply inbox by the transport
/// thread. Zenoh: answered on the query by the worker, and the query dropped
/// right after, so clients in client mode get it at once (spec §2.7).
pub struct Responder {
    send: Box<dyn FnOnce(Vec<u8>) + Send>,
    /// The largest payload the server accepts (NATS `max_payload`), if limited.
    pub max_payload: Option<usize>,
}

impl Responder {
    pub fn new(max_payload: Option<usize>, send: impl FnOnce(Vec<u8>) + Send + 'static) -> Self {
        Responder { send: Box::new(send), max_payload }
    }

    pub fn send(self, payload: Vec<u8>) {
        (self.send)(payload)
    }
}

/// Something for the transport thread to publish as it is, on a subject
/// relative to the device (`event.async_reply.<cid>` becomes
/// `device-connect.<tenant>.<device_id>.event.async_reply.<cid>`).
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}
