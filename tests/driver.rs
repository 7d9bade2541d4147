//! The 17 RPCs through the in-process dispatcher, against the real engine
//! and against `--sim`, plus the bad inputs of the foundation issue.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{Cleanup, Rig};
use dcd::engine::sim::Sim;
use dcd::error::Error;

#[test]
fn sim_serves_every_rpc() {
    let rig = Rig::new(Arc::new(Sim::new()), true);
    let st = rig.ok("get_status", json!({}));
    assert_eq!((st["connected"].clone(), st["simulate"].clone()), (json!(true), json!(true)));
    assert_eq!(rig.ok("ping_docker", json!({}))["simulated"], true);
    let c = rig.ok("provision_container", json!({"spec": {"image": "sim/hello", "name": "web"}}))["container"].clone();
    assert_eq!(
        (c["name"].as_str(), c["state"].as_str(), c["managed_by_dcd"].as_bool()),
        (Some("web"), Some("running"), Some(true))
    );
    let e = rig.event("state", |e| common::params(e)["previous_state"].is_null() && common::params(e)["name"] == "web");
    assert_eq!(common::params(&e)["container_id"], c["id"]);
    assert_eq!(rig.ok("list_containers", json!({}))["count"], 1);
    assert_eq!(rig.ok("get_container", json!({"container_id": "web"}))["container"]["id"], c["id"]);
    assert_eq!(rig.ok("stop_container", json!({"container_id": "web"}))["container"]["state"], "exited");
    assert_eq!(rig.ok("list_containers", json!({}))["count"], 0);
    assert_eq!(rig.ok("list_containers", json!({"all_containers": true}))["count"], 1);
    assert_eq!(rig.ok("start_container", json!({"container_id": "web"}))["container"]["state"], "running");
    assert_eq!(
        rig.ok("restart_container", json!({"container_id": "web", "timeout_s": 1}))["container"]["state"],
        "running"
    );
    assert!(rig.ok("container_logs", json!({"container_id": "web"}))["logs"]
        .as_str()
        .unwrap()
        .contains("simulated log line"));
    let f = rig.ok("container_logs", json!({"container_id": "web", "follow": true}));
    assert_eq!(f["streaming"], true);
    assert_eq!(rig.ok("container_logs", json!({"container_id": "web", "follow": true}))["already_following"], true);
    rig.event("log line", |e| e.name == "container_log_line" && common::params(e)["container_id"] == "web");
    assert_eq!(rig.ok("get_status", json!({}))["log_follow_active"], json!(["web"]));
    assert_eq!(rig.ok("stop_container_logs", json!({"container_id": "web"}))["stopped"], true);
    assert_eq!(rig.ok("stop_container_logs", json!({"container_id": "web"}))["stopped"], false);
    let x = rig.ok("exec_in_container", json!({"container_id": "web", "command": ["false"]}));
    assert_eq!((x["status"].as_str(), x["exit_code"].as_i64()), (Some("error"), Some(1)));
    assert_eq!(rig.ok("pull_image", json!({"image": "sim/new:1"}))["image"], "sim/new:1");
    assert!(rig.ok("list_images", json!({}))["images"].as_array().unwrap().iter().any(|i| i["tags"][0] == "sim/new:1"));
    // The sim runs the native compose path: real services, a healthcheck that passes, a one-shot job.
    let yaml = "services:\n  api: {image: sim/hello, healthcheck: {test: [CMD, ok]}, depends_on: {job: {condition: service_completed_successfully}}}\n  job: {image: sim/hello, command: [\"true\"]}\n  web: {image: sim/hello, depends_on: {api: {condition: service_healthy}}}\n";
    let up = rig.ok("compose_up", json!({"spec": {"compose_yaml": yaml, "project": "app"}}));
    assert_eq!(
        (up["status"].as_str(), up["project_dir"].as_str()),
        (Some("success"), Some("/dcd/compose/app")),
        "{up}"
    );
    assert_eq!(
        up["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect::<Vec<_>>(),
        ["job", "api", "web"]
    );
    assert_eq!(rig.ok("list_managed_containers", json!({}))["count"], 4);
    assert_eq!(
        rig.ok("get_container", json!({"container_id": "app-web-1"}))["container"]["labels"]
            ["com.docker.compose.service"],
        "web"
    );
    assert_eq!(rig.ok("compose_ps", json!({"project": "app"}))["count"], 3);
    rig.ok("compose_down", json!({"project_dir": up["project_dir"]}));
    assert_eq!(rig.ok("list_managed_containers", json!({}))["count"], 1);
    assert!(rig.err("remove_container", json!({"container_id": "web"})).contains("running"));
    rig.ok("remove_container", json!({"container_id": "web", "force": true}));
    rig.event("removed", |e| common::params(e)["state"] == "removed" && common::params(e)["name"] == "web");
    bad_inputs(&rig);
}

/// The bad inputs of the foundation issue; each is a typed error with a
/// message naming what is wrong.
fn bad_inputs(rig: &Rig) {
    assert!(matches!(rig.call("no_such_method", json!({})), Err(Error::UnknownMethod)));
    assert!(rig.err("list_containers", json!({"bogus": 1})).contains("unknown field `bogus`"));
    assert!(rig.err("get_container", json!({})).contains("missing field `container_id`"));
    assert!(rig.err("get_container", json!({"container_id": 42})).contains("invalid type"));
    assert!(rig.err("provision_container", json!({"spec": "x"})).contains("invalid type"));
    assert!(rig.err("provision_container", json!({"spec": {"name": "x"}})).contains("missing field `image`"));
    assert!(rig.err("get_container", json!({"container_id": "nope-does-not-exist"})).contains("not found"));
    assert!(rig.err("container_logs", json!({"container_id": "x", "since": "yesterday"})).contains("RFC3339"));
    assert!(rig.err("exec_in_container", json!({"container_id": "x", "command": []})).contains("empty"));
    assert!(rig.err("compose_up", json!({"spec": {}})).contains("project_dir or compose_yaml"));
    assert!(rig
        .err("compose_up", json!({"spec": {"compose_yaml": "services: {}", "services": ["api"]}}))
        .contains("\"api\""));
    assert!(rig.err("compose_down", json!({})).contains("project or project_dir"));
    for method in ["get_container", "start_container", "stop_container", "remove_container", "container_logs"] {
        assert!(matches!(rig.call(method, json!({"container_id": "nope-404"})), Err(Error::Engine(_))), "{method}");
    }
}

fn real() -> Option<(Rig, String)> {
    common::real_rig()
}

#[test]
fn real_provision_maps_every_spec_field() {
    let Some((rig, image)) = real() else { return };
    let name = common::unique("spec");
    let net = common::unique("net");
    let vol = common::unique("vol");
    let _c = Cleanup(vec![name.clone()]);
    common::docker(&["network", "create", "--label", "dcd-test=1", &net]);
    let mut spec = json!({"image": image, "name": name, "command": ["sleep", "300"],
        "environment": {"GREETING": "hi there"}, "labels": {"dcd-test": "1"},
        "ports": [{"container_port": 8080, "host_port": null}, {"container_port": "53", "protocol": "udp"}],
        "volumes": [{"source": vol, "target": "/data", "read_only": true}],
        "network": net, "restart_policy": "on-failure", "mem_limit": "64m", "cpu_quota": 50000});
    let limits = !common::podman_without_cgroups();
    if !limits {
        let e = rig.err("provision_container", json!({"spec": spec}));
        let refused =
            "mem_limit, cpu_quota cannot be applied: rootless Podman on cgroup v1 has no cgroup per container";
        assert!(e.contains(refused), "{e}");
        for limit in ["mem_limit", "cpu_quota"] {
            spec.as_object_mut().unwrap().remove(limit);
        }
    }
    let c = rig.ok("provision_container", json!({"spec": spec}))["container"].clone();
    assert_eq!(c["state"], "running", "re-inspected after start");
    assert_eq!(c["name"], name.as_str());
    assert_eq!(c["managed_by_dcd"], true);
    assert!(c["ports"]["8080/tcp"][0]["HostPort"].as_str().is_some_and(|p| !p.is_empty()), "{c}");
    let inspect: Value = serde_json::from_str(&common::docker(&["inspect", &name])).unwrap();
    let i = &inspect[0];
    assert!(i["Config"]["Env"].as_array().unwrap().contains(&json!("GREETING=hi there")));
    assert_eq!(i["Config"]["Cmd"], json!(["sleep", "300"]));
    assert_eq!(i["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(i["HostConfig"]["Memory"], if limits { 64 << 20 } else { 0 });
    assert_eq!(i["HostConfig"]["CpuQuota"], if limits { 50000 } else { 0 });
    // Podman reports the mode ("bridge"), not the network's name.
    let mode = if common::engine_kind().podman() { "bridge" } else { net.as_str() };
    assert_eq!(i["HostConfig"]["NetworkMode"], mode);
    assert!(i["NetworkSettings"]["Networks"].get(&net).is_some());
    // Podman adds the options it applied (",rprivate,nosuid,nodev,rbind").
    let binds = i["HostConfig"]["Binds"].as_array().unwrap();
    assert!(binds.len() == 1 && binds[0].as_str().unwrap().starts_with(&format!("{vol}:/data:ro")), "{binds:?}");
    assert_eq!(i["Config"]["Labels"]["deviceconnect.dev/driver"], "dcd");
    assert!(i["Config"]["ExposedPorts"].get("53/udp").is_some());
    rig.event("provision", |e| {
        common::params(e)["name"] == name.as_str() && common::params(e)["previous_state"].is_null()
    });
    rig.ok("remove_container", json!({"container_id": name, "force": true}));
    common::docker(&["volume", "rm", &vol]);
    common::docker(&["network", "rm", &net]);
}

#[test]
fn real_lifecycle_logs_exec_and_listing() {
    let Some((rig, image)) = real() else { return };
    let name = common::unique("life");
    let _c = Cleanup(vec![name.clone()]);
    let script = "echo out-1; echo err-1 >&2; echo out-2; sleep 2; echo late; exec sleep 300";
    let c = rig.ok(
        "provision_container",
        json!({"spec": {"image": image, "name": name, "command": ["sh", "-c", script], "labels": {"dcd-test": "1"}}}),
    )["container"]
        .clone();
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 12);
    assert_eq!(rig.ok("get_container", json!({"container_id": &id[..6]}))["container"]["name"], name.as_str());
    assert_eq!(rig.ok("get_container", json!({"container_id": name}))["container"]["id"], id.as_str());
    let listed = rig.ok("list_containers", json!({}));
    assert!(listed["containers"].as_array().unwrap().iter().any(|c| c["id"] == id.as_str()));
    assert!(rig.ok("list_managed_containers", json!({}))["containers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == id.as_str()));
    // The script prints "late" after two seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs = rig.ok("container_logs", json!({"container_id": name}))["logs"].as_str().unwrap().to_string();
        if logs.lines().any(|l| l.ends_with("late")) {
            break logs;
        }
        assert!(Instant::now() < deadline, "no \"late\" within 20 s: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for want in ["out-1", "err-1", "out-2", "late"] {
        assert!(logs.lines().any(|l| l.ends_with(want)), "{want} missing from {logs:?}");
    }
    assert!(logs.lines().all(|l| dcd::time::parse_rfc3339(l.split(' ').next().unwrap()).is_some()), "{logs}");
    let tail = rig.ok("container_logs", json!({"container_id": name, "tail": 1}))["logs"].as_str().unwrap().to_string();
    assert_eq!(tail.lines().count(), 1);
    assert!(tail.ends_with("late\n"), "{tail}");
    let late_ts = logs.lines().find(|l| l.ends_with("late")).unwrap().split(' ').next().unwrap().to_string();
    let since =
        rig.ok("container_logs", json!({"container_id": name, "since": late_ts}))["logs"].as_str().unwrap().to_string();
    assert!(since.contains("late") && !since.contains("out-1"), "{since}");

    let x = rig.ok(
        "exec_in_container",
        json!({"container_id": name,
        "command": ["sh", "-c", "echo to-out; echo to-err >&2; echo $FOO; pwd; exit 3"],
        "environment": {"FOO": "bar"}, "workdir": "/tmp"}),
    );
    assert_eq!((x["status"].as_str(), x["exit_code"].as_i64()), (Some("error"), Some(3)));
    assert_eq!(x["stdout"], "to-out\nbar\n/tmp\n");
    assert_eq!(x["stderr"], "to-err\n");
    assert_eq!(rig.ok("exec_in_container", json!({"container_id": name, "command": ["true"]}))["status"], "success");

    assert_eq!(rig.ok("stop_container", json!({"container_id": name, "timeout_s": 1}))["container"]["state"], "exited");
    rig.event("stop", |e| common::params(e)["container_id"] == id.as_str() && common::params(e)["state"] == "exited");
    assert!(rig.err("exec_in_container", json!({"container_id": name, "command": ["true"]})).contains("conflict"));
    assert_eq!(rig.ok("start_container", json!({"container_id": name}))["container"]["state"], "running");
    assert_eq!(
        rig.ok("restart_container", json!({"container_id": name, "timeout_s": 1}))["container"]["state"],
        "running"
    );
    let e = rig.err("remove_container", json!({"container_id": name}));
    assert!(e.contains("running") || e.contains("stop"), "{e}");
    let r = rig.ok("remove_container", json!({"container_id": name, "force": true}));
    assert_eq!((r["container_id"].as_str(), r["force"].as_bool()), (Some(name.as_str()), Some(true)));
    rig.event("removed", |e| {
        common::params(e)["container_id"] == id.as_str() && common::params(e)["state"] == "removed"
    });
    bad_inputs(&rig);
}

#[test]
fn real_follow_emits_lines_and_stops() {
    let Some((rig, image)) = real() else { return };
    let name = common::unique("follow");
    let _c = Cleanup(vec![name.clone()]);
    rig.ok(
        "provision_container",
        json!({"spec": {"image": image, "name": name, "labels": {"dcd-test": "1"},
        "command": ["sh", "-c", "echo first; echo oops >&2; sleep 300"]}}),
    );
    let follow = json!({"container_id": name, "follow": true, "timestamps": true});
    assert_eq!(rig.ok("container_logs", follow)["streaming"], true);
    let e = rig.event("stderr line", |e| e.name == "container_log_line" && common::params(e)["line"] == "oops");
    let p = common::params(&e);
    assert_eq!(p["stream"], "stderr");
    let ts = p["ts_engine"].as_str().unwrap_or_else(|| panic!("timestamps: true gives ts_engine: {p}"));
    assert!(dcd::time::parse_rfc3339(ts).is_some_and(|t| (t - dcd::time::now_epoch()).abs() < 60.0), "{ts}");
    // A one-shot read: the engine's timestamp prefix unless asked not to.
    let read = |timestamps: bool| {
        let r = rig.ok("container_logs", json!({"container_id": name, "timestamps": timestamps}));
        r["logs"].as_str().unwrap().to_string()
    };
    // The engine may give the two streams' lines in either order.
    let mut plain: Vec<String> = read(false).lines().map(String::from).collect();
    plain.sort();
    assert_eq!(plain, ["first", "oops"]);
    let stamped = read(true);
    assert_eq!(stamped.lines().count(), 2, "{stamped}");
    assert!(stamped.lines().all(|l| l.split_once(' ').is_some_and(|(ts, _)| dcd::time::parse_rfc3339(ts).is_some())));
    let started = Instant::now();
    assert_eq!(rig.ok("stop_container_logs", json!({"container_id": name}))["stopped"], true);
    assert!(started.elapsed() < Duration::from_millis(500), "stop took {:?}", started.elapsed());
    assert_eq!(rig.ok("get_status", json!({}))["log_follow_active"], json!([]));
}

#[test]
fn real_images_pull_and_failure() {
    let Some((rig, _image)) = real() else { return };
    let registry = std::env::var("DCD_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let reachable = std::net::TcpStream::connect_timeout(&registry.parse().unwrap(), Duration::from_secs(1)).is_ok();
    if common::require(reachable, &format!("a local registry on {registry}")) {
        let reference = format!("{registry}/dcd-test/busybox:latest");
        common::docker(&["rmi", &reference]);
        let p = rig.ok("pull_image", json!({"image": reference}));
        assert!(!p["progress"].as_array().unwrap().is_empty() && p["progress"].as_array().unwrap().len() <= 5, "{p}");
        let images = rig.ok("list_images", json!({}));
        assert!(images["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["tags"].as_array().unwrap().contains(&json!(reference))));
        assert!(images["images"][0]["id"].as_str().unwrap().len() == "sha256:".len() + 12);
        common::docker(&["rmi", &reference]);
    }
    let e = rig.err("pull_image", json!({"image": "127.0.0.1:1/nope/never:latest"}));
    assert!(e.contains("127.0.0.1:1"), "{e}");
}
