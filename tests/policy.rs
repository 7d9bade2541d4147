//! The policy as a hostile client meets it: the daemon on the real engine over a loopback
//! nats-server, driven by the unmodified Python agent tools (tests/py/policy.py), which try every
//! host escape the advertised spec offers. Whatever the script reports, the docker CLI has the
//! last word on whether a container was created or touched.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{dcd_on_nats, docker, free_port, nats_server, Proc, READY};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// Removes on drop every container and volume whose name starts with the prefix, and a scratch
/// directory.
struct Cleanup {
    prefix: String,
    dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for kind in ["container", "volume"] {
            let all = if kind == "container" { "-aq" } else { "-q" };
            let filter = format!("name={}", self.prefix);
            for name in docker(&[kind, "ls", all, "--filter", &filter]).lines() {
                docker(&[kind, "rm", "-f", name]);
            }
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs policy.py `mode` against a fresh daemon started with `args`; the script must pass.
/// Containers it asks for are named `<prefix>-…`.
fn run(py: &Path, image: &str, prefix: &str, mode: &str, args: &[&str], extra: &[&str]) {
    let tenant = format!("{prefix}-t");
    let id = format!("dcd-{mode}");
    let port = free_port();
    let _nats = nats_server(port, &[]);
    let dcd = dcd_on_nats(&id, &tenant, port, args, &[]);
    dcd.expect_line(READY, Duration::from_secs(15));
    let mut cmd = common::python_on_nats(py, "policy.py", &tenant, port);
    cmd.args([mode, &id, image, prefix]).args(extra);
    let mut script = Proc::spawn(&format!("policy.py {mode}"), &mut cmd);
    let status = script.wait_exit(SCRIPT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "policy.py {mode} failed: {status:?} (its checks are above)");
}

/// The escape attempts (`<prefix>-esc-<n>`) left nothing behind on the engine.
fn assert_nothing_created(prefix: &str) {
    let filter = format!("name={prefix}-esc");
    let left = docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
    assert!(left.is_empty(), "containers were created by refused requests: {left}");
}

fn policy_file(dir: &Path, json: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("policy.json");
    std::fs::write(&path, json).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn default_policy_refuses_every_escape() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let prefix = common::unique("pol-esc");
    let _c = Cleanup { prefix: prefix.clone(), dir: None };
    run(&py, &image, &prefix, "escapes", &[], &[]);
    assert_nothing_created(&prefix);
}

#[test]
fn read_only_hides_and_refuses_mutations() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let prefix = common::unique("pol-ro");
    let _c = Cleanup { prefix: prefix.clone(), dir: None };
    run(&py, &image, &prefix, "read-only", &["--read-only"], &[]);
    assert_nothing_created(&prefix);
}

#[test]
fn exec_deny_hides_exec() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let prefix = common::unique("pol-noexec");
    let dir = std::env::temp_dir().join(&prefix);
    let _c = Cleanup { prefix: prefix.clone(), dir: Some(dir.clone()) };
    let file = policy_file(&dir, r#"{"exec": "deny"}"#);
    run(&py, &image, &prefix, "no-exec", &["--policy", &file], &[]);
}

#[test]
fn owned_only_leaves_foreign_containers_alone() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let prefix = common::unique("pol-own");
    let dir = std::env::temp_dir().join(&prefix);
    let _c = Cleanup { prefix: prefix.clone(), dir: Some(dir.clone()) };
    let foreign = format!("{prefix}-cli");
    let made = docker(&["run", "-d", "--name", &foreign, "--label", "dcd-test=1", &image, "sleep", "300"]);
    assert!(!made.is_empty(), "docker run {foreign} failed");
    let file = policy_file(&dir, r#"{"owned_only": true}"#);
    run(&py, &image, &prefix, "owned-only", &["--policy", &file], &["--container", &foreign]);
    let state = docker(&["inspect", "--format", "{{.Id}} {{.State.Running}}", &foreign]);
    assert_eq!(state, format!("{made} true"), "the CLI's container was stopped, replaced or removed");
}

#[test]
fn bind_prefixes_hold_against_symlinks_and_traversal() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let prefix = common::unique("pol-bind");
    let dir = std::env::temp_dir().join(&prefix);
    let _c = Cleanup { prefix: prefix.clone(), dir: Some(dir.clone()) };
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(allowed.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("allowed-sibling")).unwrap();
    std::os::unix::fs::symlink("/etc", allowed.join("link")).unwrap();
    let allowed = allowed.to_string_lossy().into_owned();
    let file = policy_file(&dir, &format!(r#"{{"bind_prefixes": ["{allowed}"]}}"#));
    run(&py, &image, &prefix, "binds", &["--policy", &file], &["--dir", &allowed]);
    assert_nothing_created(&prefix);
}
