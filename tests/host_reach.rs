//! What already exists must not get around the policy: containers made with the docker CLI that
//! reach the host cannot be exec'd into, and a named volume that is really a host bind cannot be
//! mounted, unless the policy allows what they reach. Real engine, the daemon on a loopback
//! nats-server, called by the unmodified Python agent tools; the docker CLI has the last word.

mod common;

use std::path::Path;

use serde_json::json;

use common::{docker, unique, MeshRig};

/// Removes on drop the containers and volumes it names, and a scratch directory.
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            docker(&["rm", "-f", c]);
        }
        for v in &self.volumes {
            docker(&["volume", "rm", "-f", v]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The daemon with the policy `json` (none for the default).
fn rig(py: &Path, dir: &Path, json: Option<&str>) -> MeshRig {
    match json {
        None => MeshRig::start(py, &[], &[]),
        Some(json) => {
            let file = dir.join(format!("policy-{}.json", json.len()));
            std::fs::write(&file, json).unwrap();
            MeshRig::start(py, &["--policy", file.to_str().unwrap()], &[])
        }
    }
}

fn exec(rig: &MeshRig, container: &str) -> Result<serde_json::Value, String> {
    match rig.call("exec_in_container", json!({"container_id": container, "command": ["true"]})) {
        Ok(v) => Ok(v),
        Err(e) => Err(e["message"].as_str().unwrap_or_default().to_string()),
    }
}

/// The exec instances the engine has made in `container`: none means nothing was started.
fn exec_ids(container: &str) -> String {
    docker(&["inspect", "--format", "{{json .ExecIDs}}", container])
}

#[test]
fn existing_host_reach_is_checked_before_exec_and_mount() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let prefix = unique("reach");
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let etc_volume = format!("{prefix}-etc");
    let plain_volume = format!("{prefix}-plain");
    let reaching: Vec<(String, Vec<&str>, &str)> = vec![
        (format!("{prefix}-root"), vec!["-v", "/:/host:ro"], "bind mount of /"),
        (format!("{prefix}-pid"), vec!["--pid", "host"], "pid mode host"),
        (format!("{prefix}-sock"), vec!["-v", "/var/run/docker.sock:/var/run/docker.sock"], "docker.sock"),
        (format!("{prefix}-cap"), vec!["--cap-add", "SYS_ADMIN"], "SYS_ADMIN is not allowed"),
        (format!("{prefix}-net"), vec!["--network", "host"], "network mode host"),
    ];
    let plain = format!("{prefix}-plain");
    let mut c =
        Cleanup { containers: vec![plain.clone()], volumes: vec![etc_volume.clone(), plain_volume.clone()], dir };
    c.containers.extend(reaching.iter().map(|(n, _, _)| n.clone()));
    for (name, flags, _) in &reaching {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(flags);
        args.extend([image.as_str(), "sleep", "300"]);
        assert!(!docker(&args).is_empty(), "docker run {name} failed");
    }
    assert!(!docker(&["run", "-d", "--name", &plain, &image, "sleep", "300"]).is_empty());
    let made =
        docker(&["volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", "device=/etc", &etc_volume]);
    assert_eq!(made, etc_volume);
    let provision = |rig: &MeshRig, name: &str, volume: &str| {
        let spec = json!({"image": image, "name": name, "command": ["sleep", "300"], "labels": {"dcd-test": "1"},
                          "volumes": [{"source": volume, "target": "/x", "read_only": true}]});
        rig.call("provision_container", json!({"spec": spec}))
    };

    // The default policy: every host-reaching container is refused, by name, rule and field,
    // before the engine makes an exec instance; a plain one still works.
    let strict = rig(&py, &c.dir, None);
    for (name, _, rule) in &reaching {
        let e = exec(&strict, name).unwrap_err();
        assert!(
            e.contains(&format!("container {name} reaches the host")) && e.contains(rule) && e.contains("allow with"),
            "{name}: {e}"
        );
        assert_eq!(exec_ids(name), "null", "{name}: an exec instance was created");
    }
    assert_eq!(exec(&strict, &plain).unwrap()["exit_code"], 0);
    let refused = format!("{prefix}-v-etc");
    c.containers.push(refused.clone());
    let e = provision(&strict, &refused, &etc_volume).unwrap_err();
    assert!(e["message"].as_str().unwrap().contains(&format!("volume {etc_volume} binds /etc")), "{e}");
    assert!(docker(&["ps", "-a", "-q", "--filter", &format!("name={refused}")]).is_empty(), "created anyway");
    let with_plain = format!("{prefix}-v-plain");
    c.containers.push(with_plain.clone());
    provision(&strict, &with_plain, &plain_volume).expect("a plain named volume mounts");
    drop(strict);

    // The matching fields allow exactly what they name.
    let loose = rig(&py, &c.dir, Some(r#"{"host_namespaces": true, "bind_prefixes": ["/etc"]}"#));
    assert_eq!(exec(&loose, &format!("{prefix}-net")).unwrap()["exit_code"], 0);
    assert_eq!(exec(&loose, &format!("{prefix}-pid")).unwrap()["exit_code"], 0);
    assert!(exec(&loose, &format!("{prefix}-root")).is_err(), "/ is not /etc");
    let allowed = format!("{prefix}-v-etc-ok");
    c.containers.push(allowed.clone());
    provision(&loose, &allowed, &etc_volume).expect("bind_prefixes lists /etc exactly");
    drop(loose);

    // "exec": "any" is the one way back to exec anywhere.
    let any = rig(&py, &c.dir, Some(r#"{"exec": "any"}"#));
    for (name, _, _) in &reaching {
        assert_eq!(exec(&any, name).unwrap()["exit_code"], 0, "{name}");
    }
}
