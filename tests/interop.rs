//! Interop with the unmodified Python tools (device-connect-agent-tools and -edge 0.2.5) over a
//! real nats-server and real Zenoh sessions (wire spec §6.1). The daemon runs with `--sim`.
//! Everything stays on loopback. The Zenoh peer topologies (listening peer, multicast) are rows
//! of tests/topology.rs. Needs what tests/setup.sh provides (nats-server, the venv, openssl):
//! without them the tests skip, under CI they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nkeys::KeyPair;

use common::{expect_success, free_port, nats_installed, nats_server, python, script, stop_daemon, Proc, READY};

const IMAGE: &str = "dcd-test/busybox:latest";

/// Names no other test or run shares (tenants keep concurrent tests apart).
fn names(tag: &str) -> (String, String) {
    (format!("it-{tag}-{}", std::process::id()), format!("dcd-{tag}"))
}

/// The daemon in `--sim` mode, configured by `env` only.
fn daemon(id: &str, tenant: &str, env: &[(&str, &str)]) -> Proc {
    common::dcd(None, id, tenant, &["--sim"], env)
}

fn interop(py: &Path, id: &str, extra: &[&str], env: &[(&str, &str)]) {
    let mut args = vec![id, IMAGE];
    args.extend_from_slice(extra);
    expect_success(&mut script(None, py, "interop.py", &args, env));
}

/// The daemon as a D2D device on a nats-server of its own, ready, and the venv Python.
struct D2d {
    py: PathBuf,
    tenant: String,
    id: String,
    url: String,
    dcd: Proc,
    _nats: Proc,
}

impl D2d {
    fn start(tag: &str) -> Option<D2d> {
        let (Some(py), true) = (python(), nats_installed()) else {
            return None;
        };
        let (tenant, id) = names(tag);
        let port = free_port();
        let nats = nats_server(port, &[]);
        let url = format!("nats://127.0.0.1:{port}");
        let dcd = daemon(
            &id,
            &tenant,
            &[("NATS_URL", &url), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")],
        );
        dcd.expect_line(READY, Duration::from_secs(15));
        Some(D2d { py, tenant, id, url, dcd, _nats: nats })
    }
}

#[test]
fn nats_d2d_sim() {
    let Some(D2d { _nats, py, tenant, id, url, mut dcd }) = D2d::start("nats-d2d") else {
        return;
    };
    let client = [
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", &url),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", &tenant),
    ];
    interop(&py, &id, &[], &client);
    stop_daemon(&mut dcd);
}

/// A JWT as nsc writes them (header, claims, Ed25519 signature of the first two by `issuer`, all
/// base64url without padding).
fn jwt(issuer: &KeyPair, subject: &str, nats: serde_json::Value) -> String {
    let b64 = |data: &[u8]| {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let iat = dcd::time::now_epoch() as u64;
    let claims = serde_json::json!({"jti": dcd::ids::random_hex(32).to_uppercase(), "iat": iat,
                                    "iss": issuer.public_key(), "sub": subject, "name": subject, "nats": nats});
    let signed = format!("{}.{}", b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#), b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64(&signature))
}

/// Decentralised JWT authentication, as a Portal's NATS runs it: nats-server in operator mode with
/// one account, the device signing in with a portal `.creds.json` (JWT and nkey seed, no
/// ALLOW_INSECURE), the Python client with an nsc `.creds` file of another user of the account.
#[test]
fn nats_jwt_sign_in() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-jwt");
    let dir = std::env::temp_dir().join(common::unique("jwt"));
    std::fs::create_dir_all(&dir).unwrap();
    let (operator, account) = (KeyPair::new_operator(), KeyPair::new_account());
    let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                                       "wildcards": true, "conn": -1, "leaf": -1});
    let user = || {
        let u = KeyPair::new_user();
        let claims = serde_json::json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1});
        (jwt(&account, &u.public_key(), claims), u.seed().unwrap())
    };
    let conf = dir.join("server.conf");
    let config = format!(
        "operator: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n}}\n",
        jwt(&operator, &operator.public_key(), serde_json::json!({"type": "operator", "version": 2})),
        account.public_key(),
        jwt(
            &operator,
            &account.public_key(),
            serde_json::json!({"type": "account", "version": 2, "limits": unlimited})
        )
    );
    std::fs::write(&conf, config).unwrap();
    let port = free_port();
    let _nats = nats_server(port, &["-c", conf.to_str().unwrap()]);
    let url = format!("nats://127.0.0.1:{port}");
    let refused = common::Nats::connect(port).err().map(|e| e.to_string());
    assert!(refused.as_ref().is_some_and(|e| e.contains("Authorization")), "{refused:?}");

    let (device_jwt, device_seed) = user();
    let device_creds = dir.join("device.creds.json");
    let portal = serde_json::json!({"device_id": id, "tenant": tenant, "auth_type": "jwt",
                                    "nats": {"urls": [url], "jwt": device_jwt, "nkey_seed": device_seed}});
    std::fs::write(&device_creds, portal.to_string()).unwrap();
    let mut dcd = daemon(
        &id,
        &tenant,
        &[("MESSAGING_CREDENTIALS_FILE", device_creds.to_str().unwrap()), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d")],
    );
    dcd.expect_line(READY, Duration::from_secs(15));

    let (client_jwt, client_seed) = user();
    let client_creds = dir.join("client.creds");
    std::fs::write(
        &client_creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{client_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{client_seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let client = [
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", &url),
        ("MESSAGING_CREDENTIALS_FILE", client_creds.to_str().unwrap()),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", &tenant),
    ];
    interop(&py, &id, &[], &client);
    stop_daemon(&mut dcd);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nats_infra_sim() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-infra");
    let port = free_port();
    let mut nats = nats_server(port, &[]);
    let url = format!("nats://127.0.0.1:{port}");
    let registry = script(None, &py, "registry.py", &["nats", &url, &tenant], &[]);
    registry.expect_line("registry ready", Duration::from_secs(15));
    // No discovery mode with a URL: infra, registration instead of presence (§3.1).
    let mut dcd = daemon(&id, &tenant, &[("NATS_URL", &url), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")]);
    dcd.expect_line(READY, Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(10));
    let client = [("MESSAGING_BACKEND", "nats"), ("NATS_URL", &url), ("TENANT", &tenant)];
    interop(&py, &id, &[], &client);

    // After the server comes back the device registers again.
    drop(nats);
    nats = nats_server(port, &[]);
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(20));
    drop(nats);
    stop_daemon(&mut dcd);
}

#[test]
fn zenoh_infra_sim() {
    let Some(py) = python() else { return };
    let (tenant, id) = names("zenoh-infra");
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    // The device is a client of a router that is not there yet: it keeps trying.
    let mut dcd = daemon(&id, &tenant, &[("ZENOH_CONNECT", &endpoint)]);
    assert!(!dcd.wait_line(READY, Duration::from_secs(1)), "ready without a router");
    // The stand-in registry runs the router.
    let mut registry = script(None, &py, "registry.py", &["zenoh", &endpoint, &tenant], &[]);
    registry.expect_line("registry ready", Duration::from_secs(15));
    dcd.expect_line(READY, Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(10));
    let client = [("MESSAGING_BACKEND", "zenoh"), ("ZENOH_CONNECT", &endpoint), ("TENANT", &tenant)];
    interop(&py, &id, &[], &client);

    // A new router (and registry): the device reconnects and registers again.
    drop(registry);
    dcd.expect_line("mesh connection lost", Duration::from_secs(5));
    registry = script(None, &py, "registry.py", &["zenoh", &endpoint, &tenant], &[]);
    registry.expect_line("registry ready", Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(20));
    interop(&py, &id, &["--quick"], &client);
    stop_daemon(&mut dcd);
}

#[test]
fn nats_reconnect() {
    let (Some(py), true) = (python(), nats_installed()) else {
        return;
    };
    let (tenant, id) = names("nats-reconnect");
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let client = [
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", &url),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", &tenant),
    ];
    // The daemon starts while the server is down and waits for it.
    let mut dcd = daemon(
        &id,
        &tenant,
        &[("NATS_URL", &url), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"), ("DEVICE_CONNECT_ALLOW_INSECURE", "true")],
    );
    assert!(!dcd.wait_line(READY, Duration::from_secs(2)), "ready without a server");
    assert!(dcd.child.try_wait().unwrap().is_none(), "dcd gave up without a server");
    let nats = nats_server(port, &[]);
    dcd.expect_line(READY, Duration::from_secs(15));
    interop(&py, &id, &["--quick"], &client);

    drop(nats);
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    let _nats = nats_server(port, &[]);
    dcd.expect_line(READY, Duration::from_secs(15));
    interop(&py, &id, &["--quick"], &client);
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(20), "answering again took {took:?}");
    eprintln!("answering again {took:?} after the server restart");
    stop_daemon(&mut dcd);
}

#[test]
fn nats_wire_rules() {
    let Some(D2d { _nats, py, tenant, id, url, mut dcd }) = D2d::start("nats-wire") else {
        return;
    };
    let mut wire = script(None, &py, "wire.py", &[&url, &tenant, &id], &[]);
    wire.expect_line("await-departure", common::SCRIPT_TIMEOUT);
    stop_daemon(&mut dcd);
    expect_success(&mut wire);
}

/// In a fresh directory: a CA (ca.pem), a server certificate from it for a name that is not the
/// one dialled (server.pem) and one for 127.0.0.1 (local.pem), and a second CA (other.pem).
fn tls_material(tag: &str) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("dcd-it-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("server.cnf"), "subjectAltName=DNS:not-this-host\n").expect("server.cnf");
    std::fs::write(dir.join("local.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("local.cnf");
    let new_key = "req -newkey rsa:2048 -nodes -days 2";
    let sign = "x509 -req -days 2 -CA ca.pem -CAkey ca.key -CAcreateserial";
    let steps = [
        format!("{new_key} -x509 -keyout ca.key -out ca.pem -subj /CN=dcd-test-ca"),
        format!("{new_key} -x509 -keyout other.key -out other.pem -subj /CN=other-ca"),
        format!("{new_key} -keyout server.key -out server.csr -subj /CN=not-this-host"),
        format!("{sign} -in server.csr -out server.pem -extfile server.cnf"),
        format!("{new_key} -keyout local.key -out local.csr -subj /CN=localhost"),
        format!("{sign} -in local.csr -out local.pem -extfile local.cnf"),
    ];
    for step in steps {
        let ok =
            Command::new("openssl").args(step.split(' ')).current_dir(&dir).output().is_ok_and(|o| o.status.success());
        if !common::require(ok, "openssl (to make test certificates)") {
            return None;
        }
    }
    Some(dir)
}

#[test]
fn nats_tls_chain_only() {
    let (Some(py), true) = (python(), nats_installed()) else { return };
    let Some(dir) = tls_material("tls") else { return };
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (ca, other) = (file("ca.pem"), file("other.pem"));
    let (tenant, id) = names("nats-tls");
    let port = free_port();
    let _nats = nats_server(port, &["--tls", "--tlscert", &file("server.pem"), "--tlskey", &file("server.key")]);
    let url = format!("tls://127.0.0.1:{port}");
    // The certificate names another host: accepted, as the SDK checks the chain only (§5.4).
    let good = [
        ("NATS_URL", url.as_str()),
        ("MESSAGING_TLS_CA_FILE", ca.as_str()),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("DEVICE_CONNECT_ALLOW_INSECURE", "true"),
    ];
    let mut dcd = daemon(&id, &tenant, &good);
    dcd.expect_line(READY, Duration::from_secs(15));
    let client = [
        ("MESSAGING_BACKEND", "nats"),
        ("NATS_URL", url.as_str()),
        ("MESSAGING_TLS_CA_FILE", ca.as_str()),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
        ("TENANT", tenant.as_str()),
    ];
    interop(&py, &id, &["--quick"], &client);
    stop_daemon(&mut dcd);
    // A chain from another CA is not.
    let mut bad = good;
    bad[1].1 = other.as_str();
    let untrusting = daemon("dcd-nats-tls-other", &tenant, &bad);
    assert!(!untrusting.wait_line(READY, Duration::from_secs(3)), "connected through an untrusted certificate");
    let _ = std::fs::remove_dir_all(&dir);
}

/// NATS that requires client certificates (mTLS): the device and the Python client present
/// `MESSAGING_TLS_CERT_FILE` and `_KEY_FILE` and are served; a device without them is turned away.
#[test]
fn nats_mtls_client_certificates() {
    let (Some(py), true) = (python(), nats_installed()) else { return };
    let Some(dir) = tls_material("mtls") else { return };
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (ca, cert, key) = (file("ca.pem"), file("local.pem"), file("local.key"));
    let (tenant, id) = names("nats-mtls");
    let port = free_port();
    let _nats = nats_server(port, &["--tlsverify", "--tlscert", &cert, "--tlskey", &key, "--tlscacert", &ca]);
    let url = format!("tls://127.0.0.1:{port}");
    let tls = [
        ("NATS_URL", url.as_str()),
        ("MESSAGING_TLS_CA_FILE", ca.as_str()),
        ("MESSAGING_TLS_CERT_FILE", cert.as_str()),
        ("MESSAGING_TLS_KEY_FILE", key.as_str()),
        ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
    ];
    let mut dcd = daemon(&id, &tenant, &[&tls[..], &[("DEVICE_CONNECT_ALLOW_INSECURE", "true")]].concat());
    dcd.expect_line(READY, Duration::from_secs(15));
    let client = [&tls[..], &[("MESSAGING_BACKEND", "nats"), ("TENANT", tenant.as_str())]].concat();
    interop(&py, &id, &["--quick"], &client);
    stop_daemon(&mut dcd);
    let without = [tls[0], tls[1], tls[4], ("DEVICE_CONNECT_ALLOW_INSECURE", "true")];
    let anonymous = daemon("dcd-nats-mtls-none", &tenant, &without);
    assert!(!anonymous.wait_line(READY, Duration::from_secs(3)), "served without a client certificate");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zenoh_tls_infra() {
    let Some(py) = python() else { return };
    let Some(dir) = tls_material("ztls") else { return };
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (ca, cert, key) = (file("ca.pem"), file("local.pem"), file("local.key"));
    let (tenant, id) = names("zenoh-tls");
    let endpoint = format!("tls/127.0.0.1:{}", free_port());
    let router_env = [("ROUTER_TLS_CERT", cert.as_str()), ("ROUTER_TLS_KEY", &key), ("MESSAGING_TLS_CA_FILE", &ca)];
    let registry = script(None, &py, "registry.py", &["zenoh", &endpoint, &tenant], &router_env);
    registry.expect_line("registry ready", Duration::from_secs(15));
    // Zenoh checks the router's name as well as its chain (§5.4).
    let mut dcd = daemon(&id, &tenant, &[("ZENOH_CONNECT", &endpoint), ("MESSAGING_TLS_CA_FILE", &ca)]);
    dcd.expect_line(READY, Duration::from_secs(15));
    registry.expect_line(&format!("\"registered\": \"{id}\""), Duration::from_secs(10));
    let client = [
        ("MESSAGING_BACKEND", "zenoh"),
        ("ZENOH_CONNECT", &endpoint),
        ("MESSAGING_TLS_CA_FILE", &ca),
        ("TENANT", &tenant),
    ];
    interop(&py, &id, &["--quick"], &client);
    stop_daemon(&mut dcd);
    let _ = std::fs::remove_dir_all(&dir);
}
