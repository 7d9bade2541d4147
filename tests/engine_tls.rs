//! `Docker` reaching an engine over TLS as docker-py does with `DOCKER_TLS_VERIFY` and
//! `DOCKER_CERT_PATH`: the real engine behind `socat`, a TLS terminator on loopback that demands a
//! client certificate from the test CA; and the daemon so configured, called through the mesh.
//! Certificates are made with `openssl` in a temporary directory. Needs openssl, socat, the engine
//! and the test image: skipped without them, failed under `CI`.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use common::{MeshRig, Proc};
use dcd::engine::docker::{Docker, Options};
use dcd::engine::{Engine, EngineError, LogOptions};

const SOCKET: &str = "/var/run/docker.sock";

/// A test PKI in a temporary directory, removed on drop: CA `ca` with a server certificate for
/// 127.0.0.1 and localhost (`server`), one for another name only (`misnamed`), and a client
/// certificate (`client`); CA `other` with a server certificate for the right names (`stranger`).
/// `client/` and `ca-only/` are DOCKER_CERT_PATH directories.
struct Pki(PathBuf);

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("dcd-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki(dir);
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for ca in ["ca", "other"] {
            pki.openssl(&format!("req -x509 {ec} -days 2 -subj /CN=dcd-test-{ca} -keyout {ca}-key.pem -out {ca}.pem"));
        }
        let names = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
        for (name, ca, ext) in [
            ("server", "ca", names),
            ("misnamed", "ca", "subjectAltName=DNS:elsewhere.invalid\nextendedKeyUsage=serverAuth\n"),
            ("stranger", "other", names),
            ("client", "ca", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(pki.path(&format!("{name}.ext")), ext).unwrap();
            pki.openssl(&format!("req {ec} -subj /CN={name} -keyout {name}-key.pem -out {name}.csr"));
            pki.openssl(&format!(
                "x509 -req -days 2 -in {name}.csr -CA {ca}.pem -CAkey {ca}-key.pem -CAcreateserial \
                 -extfile {name}.ext -out {name}.pem"
            ));
        }
        for (dir, files) in [
            ("client", &[("ca.pem", "ca.pem"), ("client.pem", "cert.pem"), ("client-key.pem", "key.pem")][..]),
            ("ca-only", &[("ca.pem", "ca.pem")][..]),
        ] {
            std::fs::create_dir_all(pki.path(dir)).unwrap();
            for (from, to) in files {
                std::fs::copy(pki.path(from), pki.path(dir).join(to)).unwrap();
            }
        }
        pki
    }

    /// `openssl` with `args` (split at spaces) in the PKI directory.
    fn openssl(&self, args: &str) {
        let out = Command::new("openssl").args(args.split_whitespace()).current_dir(&self.0).output().expect("openssl");
        assert!(out.status.success(), "openssl {args}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Options as DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=`dir` give them.
    fn verify_with(&self, dir: &str) -> Options {
        Options { tls_verify: true, cert_path: Some(self.path(dir)), config_dir: None }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// socat on 127.0.0.1:`port` presenting `cert` and demanding a client certificate from the test
/// CA, forwarding to the engine's socket. Killed on drop.
fn terminator(pki: &Pki, cert: &str) -> (Proc, u16) {
    let port = common::free_port();
    let listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
        pki.path(&format!("{cert}.pem")).display(),
        pki.path(&format!("{cert}-key.pem")).display(),
        pki.path("ca.pem").display()
    );
    let p =
        Proc::spawn(&format!("socat:{port}"), Command::new("socat").arg(listen).arg(format!("UNIX-CONNECT:{SOCKET}")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(port) {
        assert!(Instant::now() < deadline, "socat did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, port)
}

/// Whether something listens on 127.0.0.1:`port`, asked of the kernel rather than by connecting
/// (a bare connection would be a failed handshake in socat's log).
fn listening(port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/tcp").unwrap_or_default().lines().any(|l| {
        l.split_whitespace().nth(1).is_some_and(|local| format!("{local} ").ends_with(&hex))
            && l.split_whitespace().nth(3) == Some("0A")
    })
}

/// openssl, socat, the engine on its socket and the test image, or `None` to skip.
fn ready() -> Option<String> {
    let tool = |name: &str, arg: &str| Command::new(name).arg(arg).output().is_ok_and(|o| o.status.success());
    if !common::require(tool("openssl", "version"), "openssl") || !common::require(tool("socat", "-V"), "socat") {
        return None;
    }
    let engine = Docker::connect(Some(&format!("unix://{SOCKET}"))).is_ok_and(|d| d.info().is_ok());
    if !common::require(engine, &format!("a Docker Engine on {SOCKET}")) {
        return None;
    }
    common::test_image()
}

fn refusal(d: &Docker) -> String {
    match d.info() {
        Err(e @ EngineError::Unreachable(_)) => e.to_string(),
        other => panic!("expected the engine to be unreachable, got {other:?}"),
    }
}

#[test]
fn verified_tls_with_a_client_certificate_serves_calls_and_streams() {
    let Some(image) = ready() else { return };
    let pki = Pki::new("ok");
    let (_socat, port) = terminator(&pki, "server");
    for host in [format!("tcp://127.0.0.1:{port}"), format!("tcp://localhost:{port}")] {
        let d = Docker::connect_with(Some(&host), &pki.verify_with("client")).unwrap();
        let info = d.info().unwrap_or_else(|e| panic!("{host}: {e}"));
        assert!(info["api_version"].as_str().is_some_and(|v| v.starts_with("1.")), "{info}");
    }

    let d = Docker::connect_with(Some(&format!("tcp://127.0.0.1:{port}")), &pki.verify_with("client")).unwrap();
    let name = common::unique("tls");
    let body = json!({"Image": image, "Cmd": ["sh", "-c", "echo over-tls; sleep 30"], "Labels": {"dcd-test": "1"}});
    let id = d.create_container(Some(&name), &body).unwrap();
    let _cleanup = common::Cleanup(vec![id.clone()]);
    d.start_container(&id).unwrap();
    assert_eq!(d.inspect_container(&name).unwrap()["State"]["Status"], "running");
    // A log is a stream on its own connection, so it exercises a second TLS agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut text = Vec::new();
        d.logs(&id, &LogOptions::default()).unwrap().body.read_to_end(&mut text).unwrap();
        if String::from_utf8_lossy(&text).contains("over-tls") {
            break;
        }
        assert!(Instant::now() < deadline, "no log line over TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.stop_container(&id, 1).unwrap();
    assert_eq!(d.inspect_container(&id).unwrap()["State"]["Status"], "exited");
    d.remove_container(&id, false).unwrap();
    assert!(matches!(d.inspect_container(&id), Err(EngineError::NotFound(_))));
}

#[test]
fn a_client_without_a_certificate_is_refused_clearly() {
    if ready().is_none() {
        return;
    }
    let pki = Pki::new("nocert");
    let (_socat, port) = terminator(&pki, "server");
    let d = Docker::connect_with(Some(&format!("tcp://127.0.0.1:{port}")), &pki.verify_with("ca-only")).unwrap();
    let e = refusal(&d);
    assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("TLS"), "{e}");

    // No TLS at all: the terminator hangs up on the plain HTTP request.
    let plain = Docker::connect_with(Some(&format!("tcp://127.0.0.1:{port}")), &Options::default()).unwrap();
    assert!(matches!(plain.info(), Err(EngineError::Unreachable(_))));
}

/// The refusal of a verifying client to a terminator serving the `tag` server certificate.
fn refusal_by_terminator(tag: &str) -> String {
    let pki = Pki::new(tag);
    let (_socat, port) = terminator(&pki, tag);
    let d = Docker::connect_with(Some(&format!("tcp://127.0.0.1:{port}")), &pki.verify_with("client")).unwrap();
    refusal(&d)
}

#[test]
fn a_server_certificate_from_another_ca_is_refused() {
    if ready().is_none() {
        return;
    }
    let e = refusal_by_terminator("stranger");
    assert!(e.contains("TLS") && e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn a_server_certificate_for_another_name_is_refused() {
    if ready().is_none() {
        return;
    }
    let e = refusal_by_terminator("misnamed");
    assert!(e.contains("TLS") && e.contains("not valid for name \"127.0.0.1\""), "{e}");
}

#[test]
fn a_key_that_is_not_the_certificates_fails_at_connect() {
    if ready().is_none() {
        return;
    }
    let pki = Pki::new("mismatch");
    std::fs::copy(pki.path("server-key.pem"), pki.path("client/key.pem")).unwrap();
    let e = Docker::connect_with(Some("tcp://127.0.0.1:2376"), &pki.verify_with("client")).err().expect("connected");
    assert!(e.to_string().contains("key.pem"), "{e}");
}

#[test]
fn the_daemon_over_verified_tls_answers_the_mesh() {
    let Some(image) = ready() else { return };
    let Some((py, _)) = common::mesh_parts() else { return };
    let pki = Pki::new("mesh");
    let (_socat, port) = terminator(&pki, "server");
    let name = common::unique("tls-mesh");
    let _cleanup = common::Cleanup(vec![name.clone()]);
    // Made by the CLI on the socket, so the daemon can only list it by reaching the same engine.
    assert!(!common::docker(&["create", "--name", &name, "--label", "dcd-test=1", &image]).is_empty());
    let host = format!("tcp://127.0.0.1:{port}");
    let certs = pki.path("client");
    let env =
        [("DOCKER_HOST", host.as_str()), ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", certs.to_str().unwrap())];
    let rig = MeshRig::start(&py, &[], &env);

    let s = rig.ok("get_status", json!({}));
    assert!(s["connected"] == true && s["docker_host"] == host.as_str(), "{s}");
    let l = rig.ok("list_containers", json!({"all_containers": true}));
    assert!(l["containers"].as_array().unwrap().iter().any(|c| c["name"] == name.as_str()), "{l}");
}
