//! The functions beyond the Python dcd and the extended provisioning spec, against the real
//! engine, through the mesh: the unmodified Python agent tools call our daemon over a loopback
//! nats-server (`common::MeshRig`), and the docker CLI checks what the engine was asked to do.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{Cleanup, MeshRig};

/// The functions beyond the Python dcd, which an agent only finds out how to call from what the
/// device advertises.
const FLEET_FUNCTIONS: &[&str] = &[
    "container_stats",
    "deprovision_managed",
    "redeploy_container",
    "list_networks",
    "create_network",
    "remove_network",
    "connect_network",
    "list_volumes",
    "create_volume",
    "remove_volume",
    "remove_image",
    "prune_images",
];

/// The provisioning spec fields beyond the Python dcd's (issue #8).
const EXTENDED_SPEC: &[&str] = &[
    "replace",
    "user",
    "working_dir",
    "hostname",
    "privileged",
    "cap_add",
    "cap_drop",
    "security_opt",
    "dns",
    "extra_hosts",
    "ulimits",
    "log_config",
    "healthcheck",
    "shm_size",
    "read_only",
    "tmpfs",
    "devices",
    "pids_limit",
    "cpus",
];

/// The engine's own view of a container.
fn inspect(name: &str) -> Value {
    let mut all: Value = serde_json::from_str(&common::docker(&["inspect", name])).unwrap();
    all[0].take()
}

#[test]
fn stats_redeploy_replace_and_endpoints() {
    let Some((rig, image)) = common::real_mesh_rig() else { return };
    let name = common::unique("fleet");
    let _c = Cleanup(vec![name.clone()]);
    let spec = json!({"image": image, "name": name, "command": ["sleep", "300"], "labels": {"dcd-test": "1"},
                      "environment": {"A": "1", "B": "2"}, "ports": ["127.0.0.1::8080"]});
    let first = rig.ok("provision_container", json!({"spec": spec}))["container"].clone();
    let e = &first["endpoints"][0];
    assert_eq!(e["port"], "8080/tcp");
    assert!(e["host_urls"][0].as_str().unwrap().starts_with("tcp://127.0.0.1:"), "{e}");
    assert!(e["network_urls"][0].as_str().unwrap().ends_with(":8080"), "{e}");
    assert!(rig.err("provision_container", json!({"spec": spec})).contains("conflict"));
    let mut again = spec.clone();
    again["replace"] = json!(true);
    let second = rig.ok("provision_container", json!({"spec": again}))["container"].clone();
    assert_ne!(second["id"], first["id"], "replace made a new container");

    // The engine samples a new container's usage after a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = rig.ok("container_stats", json!({"container_id": name}));
        if st["memory_usage"].as_u64().unwrap() > 0 && st["pids"].as_u64().unwrap() >= 1 {
            break st;
        }
        assert!(Instant::now() < deadline, "no usage within 20 s: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st["cpu_percent"].as_f64().unwrap() >= 0.0);
    assert!(rig.err("container_stats", json!({"container_id": "nope-404"})).contains("not found"));

    let r = rig.ok("redeploy_container", json!({"container_id": name, "environment": {"B": "3"}}));
    assert_eq!(r["replaced"], second["id"]);
    let c = inspect(&name);
    let env = c["Config"]["Env"].as_array().unwrap();
    assert!(env.contains(&json!("A=1")) && env.contains(&json!("B=3")), "{env:?}");
    assert_eq!(c["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"], "127.0.0.1");
    assert_eq!(c["State"]["Status"], "running");
    assert_eq!(common::docker(&["ps", "-aq", "--filter", &format!("name={name}-dcd-old")]), "", "old one removed");

    let by_label = rig.ok("list_containers", json!({"label": "dcd-test=1", "state": "running"}));
    assert!(by_label["containers"].as_array().unwrap().iter().any(|c| c["name"] == name.as_str()));
    let none = rig.ok("list_containers", json!({"label": "dcd-test=1", "state": "paused"}));
    assert!(!none["containers"].as_array().unwrap().iter().any(|c| c["name"] == name.as_str()));
}

#[test]
fn networks_volumes_and_images() {
    let Some((rig, image)) = common::real_mesh_rig() else { return };
    let net = common::unique("fnet");
    let vol = common::unique("fvol");
    let name = common::unique("fnetc");
    let _c = Cleanup(vec![name.clone()]);
    rig.ok("create_network", json!({"name": net, "labels": {"dcd-test": "1"}}));
    let nets = rig.ok("list_networks", json!({}));
    assert!(nets["networks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == net.as_str() && n["managed_by_dcd"] == true));
    rig.ok(
        "provision_container",
        json!({"spec": {"image": image, "name": name, "command": ["sleep", "300"], "labels": {"dcd-test": "1"}}}),
    );
    rig.ok("connect_network", json!({"network": net, "container_id": name}));
    assert!(inspect(&name)["NetworkSettings"]["Networks"].get(&net).is_some());
    assert!(rig.err("connect_network", json!({"network": "host", "container_id": name})).contains("policy"));
    rig.ok("remove_container", json!({"container_id": name, "force": true}));
    rig.ok("remove_network", json!({"name": net}));
    assert!(rig.err("remove_network", json!({"name": net})).contains("not found"));

    rig.ok("create_volume", json!({"name": vol}));
    assert!(rig.ok("list_volumes", json!({}))["volumes"].as_array().unwrap().iter().any(|v| v["name"] == vol.as_str()));
    rig.ok("remove_volume", json!({"name": vol}));
    assert!(!rig.ok("list_volumes", json!({}))["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == vol.as_str()));

    let tag = format!("dcd-test/fleet-tag:{}", std::process::id());
    common::docker(&["tag", &image, &tag]);
    let r = rig.ok("remove_image", json!({"image": tag}));
    assert!(r["deleted"].to_string().contains("Untagged"), "{r}");
    assert!(rig.err("remove_image", json!({"image": tag})).contains("not found"));
    let p = rig.ok("prune_images", json!({"until": "1h"}));
    assert!(p["deleted"].as_u64().is_some());
    assert!(rig.err("prune_images", json!({"until": "1h&x=y"})).contains("until"));
}

#[test]
fn deprovision_converges() {
    let Some((rig, image)) = common::real_mesh_rig() else { return };
    let (a, b) = (common::unique("dep-a"), common::unique("dep-b"));
    let _c = Cleanup(vec![a.clone(), b.clone()]);
    // Only this test's containers: other tests run beside it on the same engine.
    let label = format!("dcd-test-run={}", std::process::id());
    for n in [&a, &b] {
        rig.ok(
            "provision_container",
            json!({"spec": {"image": image, "name": n, "command": ["sleep", "300"],
            "labels": {"dcd-test": "1", "dcd-test-run": std::process::id().to_string()}}}),
        );
    }
    // "key" means "has the label", as in list_containers (it once meant "equals the empty string").
    let key = format!("dcd-test-key-{}", std::process::id());
    let c = common::unique("dep-c");
    let _c2 = Cleanup(vec![c.clone()]);
    rig.ok(
        "provision_container",
        json!({"spec": {"image": image, "name": c, "command": ["sleep", "300"], "labels": {key.clone(): "any"}}}),
    );
    let r = rig.ok("deprovision_managed", json!({"label": key}));
    assert_eq!(r["count"], 1, "{r}");
    assert_eq!(common::docker(&["ps", "-aq", "--filter", &format!("name={c}")]), "");
    let r = rig.ok("deprovision_managed", json!({"label": label}));
    assert_eq!(r["count"], 2, "{r}");
    assert_eq!(common::docker(&["ps", "-aq", "--filter", &format!("name={a}")]), "");
    assert_eq!(rig.ok("deprovision_managed", json!({"label": label}))["count"], 0, "nothing left is success");
}

#[test]
fn extended_spec_fields_reach_the_engine() {
    let Some((py, image)) = common::mesh_parts() else { return };
    // One capability allowed, so a refusal of another shows the allow-list is per capability.
    let policy = std::env::temp_dir().join(format!("{}.json", common::unique("spec-policy")));
    std::fs::write(&policy, r#"{"cap_add": ["NET_ADMIN"]}"#).unwrap();
    let rig = MeshRig::start(&py, &["--policy", policy.to_str().unwrap()], &[]);
    // The daemon reads it once, at startup.
    std::fs::remove_file(&policy).unwrap();

    // One function a selector: the agent tools leave the schemas out of longer answers.
    let parameters = |function: &str| {
        let found = rig.discover(&format!("device({}).function({function})", rig.id));
        assert_eq!(found["results"][0]["name"], function, "{found}");
        found["results"][0]["parameters"].clone()
    };
    for function in FLEET_FUNCTIONS {
        let p = parameters(function);
        let described = |k: &Value| k.as_str().is_some_and(|k| p["properties"].get(k).is_some());
        let required = p["required"].as_array().is_some_and(|r| r.iter().all(described));
        assert!(p["type"] == "object" && p["properties"].is_object() && required, "{function}: {p}");
    }
    let provision = parameters("provision_container");
    let spec = &provision["properties"]["spec"];
    let missing: Vec<_> = EXTENDED_SPEC.iter().filter(|f| spec["properties"].get(**f).is_none()).collect();
    assert!(missing.is_empty(), "not advertised: {missing:?} in {spec}");

    let (name, big) = (common::unique("spec"), common::unique("spec-1g"));
    let refused: Vec<String> = (0..4).map(|i| common::unique(&format!("spec-refused-{i}"))).collect();
    let _c = Cleanup([name.clone(), big.clone()].into_iter().chain(refused.clone()).collect());
    let (mut p1, mut p2) = (common::free_port(), common::free_port());
    let spec = json!({"image": image, "name": name, "command": ["sleep", "300"], "labels": {"dcd-test": "1"},
        "user": "1000:1000", "working_dir": "/tmp", "hostname": "mesh-host",
        "cap_add": ["NET_ADMIN"], "cap_drop": ["MKNOD"], "dns": ["127.0.0.1"],
        "extra_hosts": {"db.mesh": "10.0.0.2"}, "ulimits": {"nofile": {"soft": 1024, "hard": 2048}},
        "log_config": {"type": "json-file", "config": {"max-size": "7m"}},
        "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "timeout": "2s", "retries": 3,
                        "start_period": "500ms"},
        "shm_size": "2048k", "mem_limit": "512m", "read_only": true, "tmpfs": {"/run": "size=8m"},
        "pids_limit": 64, "cpus": 0.5,
        // Loopback only: the two-part "8080:80" form would publish on every interface.
        "ports": [format!("127.0.0.1:{p1}:80/tcp"), format!("127.0.0.1:{p2}:81")]});
    let podman = common::engine_kind().podman();
    let mut spec = spec;
    if podman {
        // Podman gives a container the ulimits its spec leaves out at 1048576, above this host's
        // nproc hard limit: refused, with the limit named; with nproc named it runs.
        let e = rig.err("provision_container", json!({"spec": spec}));
        assert!(e.contains("rlimit type 6") && e.contains("nproc ulimit is above this host's hard limit"), "{e}");
        common::docker(&["rm", "-f", &name]);
        spec["ulimits"]["nproc"] = json!({"soft": 4096, "hard": 4096});
        // The refused container's ports are not free again at once.
        (p1, p2) = (common::free_port(), common::free_port());
        spec["ports"] = json!([format!("127.0.0.1:{p1}:80/tcp"), format!("127.0.0.1:{p2}:81")]);
    }
    rig.ok("provision_container", json!({"spec": spec}));
    let c = inspect(&name);
    assert_eq!(c["State"]["Status"], "running", "{}", c["State"]);
    let (cfg, host) = (&c["Config"], &c["HostConfig"]);
    assert_eq!(
        [&cfg["User"], &cfg["WorkingDir"], &cfg["Hostname"]],
        [&json!("1000:1000"), &json!("/tmp"), &json!("mesh-host")]
    );
    assert_eq!(host["CapAdd"], json!(["NET_ADMIN"]));
    assert_eq!(host["CapDrop"], json!(["MKNOD"]));
    assert_eq!(host["Dns"], json!(["127.0.0.1"]));
    assert_eq!(host["ExtraHosts"], json!(["db.mesh:10.0.0.2"]));
    let ulimits = if podman {
        // In the kernel's names.
        json!([{"Name": "RLIMIT_NOFILE", "Soft": 1024, "Hard": 2048}, {"Name": "RLIMIT_NPROC", "Soft": 4096, "Hard": 4096}])
    } else {
        json!([{"Name": "nofile", "Soft": 1024, "Hard": 2048}])
    };
    assert_eq!(host["Ulimits"], ulimits);
    // Not the engine's default (10m here), and the engine's other options are kept. Podman's
    // inspect shows no log options.
    let max_size = if podman { Value::Null } else { json!("7m") };
    assert_eq!(
        (&host["LogConfig"]["Type"], &host["LogConfig"]["Config"]["max-size"]),
        (&json!("json-file"), &max_size)
    );
    assert_eq!(
        cfg["Healthcheck"],
        json!({"Test": ["CMD", "true"], "Interval": 1_000_000_000u64, "Timeout": 2_000_000_000u64,
               "StartPeriod": 500_000_000u64, "Retries": 3})
    );
    assert_eq!(host["ShmSize"], 2048 * 1024);
    assert_eq!(host["Memory"], 512 * 1024 * 1024);
    assert_eq!(host["ReadonlyRootfs"], true);
    // Podman adds the options it applied, and /tmp and /var/tmp to a read-only container.
    let run = host["Tmpfs"]["/run"].as_str().unwrap_or_default();
    assert!(run == "size=8m" || (podman && run.starts_with("size=8m,")), "{}", host["Tmpfs"]);
    assert_eq!(host["PidsLimit"], 64);
    assert_eq!(host["NanoCpus"], 500_000_000);
    for (port, host_port) in [("80/tcp", p1), ("81/tcp", p2)] {
        assert_eq!(host["PortBindings"][port], json!([{"HostIp": "127.0.0.1", "HostPort": host_port.to_string()}]));
    }

    let spec = json!({"image": image, "name": big, "command": ["sleep", "300"], "labels": {"dcd-test": "1"},
                      "mem_limit": "1g"});
    rig.ok("provision_container", json!({"spec": spec}));
    assert_eq!(inspect(&big)["HostConfig"]["Memory"], 1u64 << 30);
    let attempts = [
        (json!({"mem_limit": "lots"}), "invalid params: mem_limit \"lots\" is not a size"),
        (json!({"cap_add": ["NET_ADMIN", "SYS_ADMIN"]}), "policy: cap_add SYS_ADMIN is not allowed"),
        (json!({"devices": ["/dev/mem"]}), "policy: device /dev/mem is not allowed"),
        (json!({"privileged": true}), "policy: privileged containers are not allowed"),
    ];
    for ((mut spec, words), name) in attempts.into_iter().zip(&refused) {
        spec["image"] = json!(image);
        spec["name"] = json!(name);
        let e = rig.err("provision_container", json!({"spec": spec}));
        assert!(e.starts_with(words), "{spec}: {e}");
        assert_eq!(common::docker(&["ps", "-aq", "--filter", &format!("name={name}")]), "", "{name} was created");
    }
}
