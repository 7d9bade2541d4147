//! `pull_image` from a registry that wants a password: credentials from a `config.json` (as
//! `docker login` writes it, and in the username/password form) and from the `auth` parameter,
//! which wins, in process and through the mesh; wrong and missing credentials fail with a message
//! that names where the credentials came from and never holds the password. Each test runs its
//! own Debian `docker-registry` with htpasswd (bcrypt) auth on a free loopback port, with storage,
//! htpasswd and the docker CLI's config in a temporary directory. Needs docker-registry, htpasswd,
//! the engine and the test image: skipped without them, failed under `CI`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use common::{MeshRig, Proc, Rig};
use dcd::engine::docker::{Docker, Options};
use dcd::engine::{Engine, EngineError};

const USER: &str = "dcd-puller";
const PASSWORD: &str = "Corr3ct-h0rse:battery";
const WRONG: &str = "Wr0ng-staple";
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry on 127.0.0.1:`port` holding `image` (the test image, pushed with the right
/// credentials; no local tag left). Killed, its image untagged and its directory removed on drop.
struct Registry {
    dir: PathBuf,
    image: String,
    registry: Option<Proc>,
}

impl Registry {
    fn start(tag: &str) -> Option<Registry> {
        let htpasswd = Command::new("htpasswd").args(["-nbB", "a", "b"]).output().is_ok_and(|o| o.status.success());
        if !common::require(Path::new(REGISTRY_BIN).exists(), "docker-registry (Debian package docker-registry)")
            || !common::require(htpasswd, "htpasswd (Debian package apache2-utils)")
        {
            return None;
        }
        common::engine()?;
        let test_image = common::test_image()?;

        let dir = std::env::temp_dir().join(format!("dcd-registry-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let out = Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]).output().expect("htpasswd");
        assert!(out.status.success(), "htpasswd: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.join("htpasswd"), &out.stdout).unwrap();
        let port = common::free_port();
        let config = [
            "version: 0.1".to_string(),
            "log: {level: warn}".into(),
            format!("storage: {{filesystem: {{rootdirectory: {}}}}}", dir.join("storage").display()),
            format!("http: {{addr: 127.0.0.1:{port}, secret: dcd-test}}"),
            format!("auth: {{htpasswd: {{realm: dcd-test, path: {}}}}}", dir.join("htpasswd").display()),
        ];
        std::fs::write(dir.join("config.yml"), config.join("\n")).unwrap();
        let registry = Proc::spawn(
            &format!("registry:{port}"),
            Command::new(REGISTRY_BIN).arg("serve").arg(dir.join("config.yml")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = Registry { image: format!("127.0.0.1:{port}/dcd-test/busybox:latest"), dir, registry: Some(registry) };

        // The docker CLI pushes with its own config dir, so the host's stays untouched.
        let cli = |args: &[&str], stdin: Option<&str>| {
            let mut cmd = Command::new("docker");
            cmd.arg("--config").arg(r.dir.join("cli")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
            cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
            let mut child = cmd.spawn().expect("docker CLI");
            if let Some(text) = stdin {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            }
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        cli(&["login", "-u", USER, "--password-stdin", &format!("127.0.0.1:{port}")], Some(PASSWORD));
        cli(&["tag", &test_image, &r.image], None);
        cli(&["push", &r.image], None);
        cli(&["rmi", &r.image], None);
        Some(r)
    }

    fn registry(&self) -> &str {
        self.image.split('/').next().unwrap()
    }

    /// A DOCKER_CONFIG directory holding `config` as config.json.
    fn config_dir(&self, name: &str, config: serde_json::Value) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        dir
    }

    /// What `docker login` wrote: the `auth` (base64) form.
    fn cli_config(&self) -> PathBuf {
        self.dir.join("cli")
    }

    fn engine(&self, config_dir: Option<PathBuf>) -> Docker {
        let opts = Options { config_dir, ..Options::default() };
        Docker::connect_with(Some("unix:///var/run/docker.sock"), &opts).unwrap()
    }

    fn pulled(&self) -> bool {
        let ok =
            Command::new("docker").args(["image", "inspect", &self.image]).output().is_ok_and(|o| o.status.success());
        if ok {
            common::docker(&["rmi", &self.image]);
        }
        ok
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        common::docker(&["rmi", &self.image]);
        drop(self.registry.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A refused pull's message, checked for being an error rather than a panic, and for not
/// holding either password.
fn refused(r: std::result::Result<Vec<String>, EngineError>) -> String {
    let e = r.expect_err("the pull succeeded").to_string();
    assert!(!e.contains(PASSWORD) && !e.contains(WRONG), "{e}");
    e
}

#[test]
fn credentials_from_config_json_in_either_form() {
    let Some(r) = Registry::start("config") else { return };
    let d = r.engine(Some(r.cli_config()));
    d.pull_image(&r.image, None).unwrap();
    assert!(r.pulled());

    let plain = json!({"auths": {format!("http://{}", r.registry()): {"username": USER, "password": PASSWORD}}});
    let d = r.engine(Some(r.config_dir("plain", plain)));
    d.pull_image(&r.image, None).unwrap();
    assert!(r.pulled());
}

#[test]
fn wrong_and_missing_credentials_fail_clearly() {
    let Some(r) = Registry::start("refused") else { return };
    let wrong = r.config_dir("wrong", json!({"auths": {r.registry(): {"username": USER, "password": WRONG}}}));
    let e = refused(r.engine(Some(wrong.clone())).pull_image(&r.image, None));
    assert!(e.contains("unauthorized") && e.contains(&wrong.join("config.json").display().to_string()), "{e}");

    let other = r.config_dir("other", json!({"auths": {"127.0.0.1:1": {"username": USER, "password": PASSWORD}}}));
    let e = refused(r.engine(Some(other.clone())).pull_image(&r.image, None));
    assert!(e.contains("without credentials") && e.contains(&other.display().to_string()), "{e}");
    let e = refused(r.engine(None).pull_image(&r.image, None));
    assert!(e.contains("without credentials"), "{e}");
    assert!(!r.pulled());
}

#[test]
fn the_auth_parameter_overrides_config_json() {
    let Some(r) = Registry::start("param") else { return };
    let wrong = r.config_dir("wrong", json!({"auths": {r.registry(): {"username": USER, "password": WRONG}}}));
    let rig = Rig::new(Arc::new(r.engine(Some(wrong))), false);

    let p = rig.ok("pull_image", json!({"image": r.image, "auth": {"username": USER, "password": PASSWORD}}));
    assert_eq!(p["status"], "success");
    assert!(r.pulled());
    let with_server = json!({"username": USER, "password": PASSWORD, "serveraddress": r.registry()});
    rig.ok("pull_image", json!({"image": r.image, "auth": with_server}));
    assert!(r.pulled());

    let e = rig.err("pull_image", json!({"image": r.image, "auth": {"username": USER, "password": WRONG}}));
    assert!(e.contains("unauthorized") && e.contains("given in `auth`") && !e.contains(WRONG), "{e}");
    // Without `auth`, the wrong config.json applies again.
    let e = rig.err("pull_image", json!({"image": r.image}));
    assert!(e.contains("config.json"), "{e}");
    for bad in
        [json!(format!("{USER}:{PASSWORD}")), json!({"username": USER, "password": 1}), json!({"user": PASSWORD})]
    {
        let e = rig.err("pull_image", json!({"image": r.image, "auth": bad}));
        assert!(e.starts_with("invalid params: auth") && !e.contains(PASSWORD), "{e}");
    }
    assert!(!r.pulled());
}

#[test]
fn the_auth_parameter_through_the_mesh() {
    let Some((py, _)) = common::mesh_parts() else { return };
    let Some(r) = Registry::start("mesh") else { return };
    // A wrong config.json on the host: only the parameter can make the pull succeed.
    let wrong = r.config_dir("wrong", json!({"auths": {r.registry(): {"username": USER, "password": WRONG}}}));
    let rig = MeshRig::start(&py, &[], &[("DOCKER_CONFIG", wrong.to_str().unwrap())]);

    let p = rig.ok("pull_image", json!({"image": r.image, "auth": {"username": USER, "password": PASSWORD}}));
    assert_eq!(p["status"], "success");
    assert!(r.pulled());
    let e = rig.err("pull_image", json!({"image": r.image, "auth": {"username": USER, "password": WRONG}}));
    assert!(e.contains("unauthorized") && e.contains("given in `auth`"), "{e}");
    assert!(!e.contains(WRONG) && !e.contains(PASSWORD), "{e}");
    assert!(!r.pulled());
}
