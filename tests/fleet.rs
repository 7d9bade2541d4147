//! The functions beyond the Python dcd, against the real engine.

mod common;

use std::time::Duration;

use serde_json::json;

use common::Cleanup;

#[test]
fn stats_redeploy_replace_and_endpoints() {
    let Some((rig, image)) = common::real_rig() else { return };
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

    std::thread::sleep(Duration::from_millis(1200));
    let st = rig.ok("container_stats", json!({"container_id": name}));
    assert!(st["memory_usage"].as_u64().unwrap() > 0 && st["pids"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["cpu_percent"].as_f64().unwrap() >= 0.0);
    assert!(rig.err("container_stats", json!({"container_id": "nope-404"})).contains("not found"));

    let r = rig.ok("redeploy_container", json!({"container_id": name, "environment": {"B": "3"}}));
    assert_eq!(r["replaced"], second["id"]);
    let inspect: serde_json::Value = serde_json::from_str(&common::docker(&["inspect", &name])).unwrap();
    let env = inspect[0]["Config"]["Env"].as_array().unwrap();
    assert!(env.contains(&json!("A=1")) && env.contains(&json!("B=3")), "{env:?}");
    assert_eq!(inspect[0]["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"], "127.0.0.1");
    assert_eq!(inspect[0]["State"]["Status"], "running");
    assert_eq!(common::docker(&["ps", "-aq", "--filter", &format!("name={name}-dcd-old")]), "", "old one removed");

    let by_label = rig.ok("list_containers", json!({"label": "dcd-test=1", "state": "running"}));
    assert!(by_label["containers"].as_array().unwrap().iter().any(|c| c["name"] == name.as_str()));
    let none = rig.ok("list_containers", json!({"label": "dcd-test=1", "state": "paused"}));
    assert!(!none["containers"].as_array().unwrap().iter().any(|c| c["name"] == name.as_str()));
}

#[test]
fn networks_volumes_and_images() {
    let Some((rig, image)) = common::real_rig() else { return };
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
    let inspect: serde_json::Value = serde_json::from_str(&common::docker(&["inspect", &name])).unwrap();
    assert!(inspect[0]["NetworkSettings"]["Networks"].get(&net).is_some());
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
    let Some((rig, image)) = common::real_rig() else { return };
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
    let r = rig.ok("deprovision_managed", json!({"label": label}));
    assert_eq!(r["count"], 2, "{r}");
    assert_eq!(common::docker(&["ps", "-aq", "--filter", &format!("name={a}")]), "");
    assert_eq!(rig.ok("deprovision_managed", json!({"label": label}))["count"], 0, "nothing left is success");
}
