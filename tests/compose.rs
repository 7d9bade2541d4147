//! Native compose on the real engine, called by the unmodified Python agent tools over a loopback
//! nats-server (tests/py/serve.py), with the default policy: a three-service project comes up in
//! dependency order, stays put when nothing changed, recreates only what changed, is seen by
//! Debian's docker-compose, and goes down; every refusal and every hostile input leaves nothing
//! with the project's label. The docker CLI has the last word on what exists.

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use common::{docker, docker_ok, free_port, MeshRig};

/// The 17 functions of the Python dcd's contract test.
const PYTHON_FUNCTIONS: &[&str] = &[
    "get_status",
    "ping_docker",
    "list_containers",
    "get_container",
    "provision_container",
    "start_container",
    "stop_container",
    "restart_container",
    "remove_container",
    "container_logs",
    "stop_container_logs",
    "exec_in_container",
    "pull_image",
    "list_images",
    "compose_up",
    "compose_down",
    "list_managed_containers",
];

/// Removes on drop everything labelled with the project, and a scratch directory.
struct Cleanup {
    _project: common::ComposeCleanup,
    dir: Option<PathBuf>,
}

impl Cleanup {
    fn new(project: &str, dir: Option<PathBuf>) -> Cleanup {
        Cleanup { _project: common::ComposeCleanup(project.to_string()), dir }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The three-service project, shared with bench/bench.py; `three_env` fills its variables.
const THREE_SERVICES: &str = include_str!("data/three-services.yaml");

fn three_env(image: &str, port: u16, greeting: &str) -> [(&'static str, String); 3] {
    [("IMAGE", image.to_string()), ("PORT", port.to_string()), ("GREETING", greeting.to_string())]
}

/// `GET /` on 127.0.0.1:`port`, retried while the server is still starting (up does not wait for it).
fn http_get(port: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut out = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = write!(s, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let _ = s.read_to_string(&mut out);
        }
        if out.contains("200") || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Container ids by service from an up result.
fn ids(up: &Value) -> Vec<(String, String, String)> {
    up["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["containers"].as_array().unwrap().iter().map(|c| {
                (
                    s["service"].as_str().unwrap().to_string(),
                    c["id"].as_str().unwrap().to_string(),
                    s["action"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

#[test]
fn three_services_up_update_and_down() {
    let Some((rig, image)) = common::real_mesh_rig() else { return };
    let project = common::unique("cmp").replace('-', "");
    let dir = std::env::temp_dir().join(&project);
    let _c = Cleanup::new(&project, Some(dir.clone()));
    let port = free_port();
    let spec = |greeting: &str| {
        let environment: serde_json::Map<_, _> =
            three_env(&image, port, greeting).into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        json!({"spec": {"compose_yaml": THREE_SERVICES, "project": project, "environment": environment}})
    };

    let up = rig.ok("compose_up", spec("hello"));
    assert_eq!(up["status"], "success", "{up}");
    let first = ids(&up);
    let order: Vec<&str> = first.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(order, ["init", "api", "web"], "depends_on order: {up}");
    assert!(first.iter().all(|(_, _, a)| a == "created"), "{up}");
    assert_eq!(up["waited"].as_array().map(Vec::len), Some(2), "two bounded waits reported: {up}");
    assert!(http_get(port).contains("web"), "web on 127.0.0.1:{port}");
    let web = format!("{project}-web-1");
    let from_web = docker(&["exec", &web, "wget", "-q", "-O", "-", "http://backend:8080/"]);
    assert_eq!(from_web, "api-hello-ready", "web reaches api by its alias; init filled the volume first");
    assert_eq!(docker(&["exec", &web, "wget", "-q", "-O", "-", "http://api:8080/"]), "api-hello-ready");

    // Debian's docker-compose (v1) finds the project by its labels.
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(&file, THREE_SERVICES).unwrap();
    let cli = common::docker_compose_cli(&["-p", &project, "-f", &file.to_string_lossy(), "ps"])
        .envs(three_env(&image, port, "hello"))
        .output()
        .expect("docker-compose");
    let listed = String::from_utf8_lossy(&cli.stdout);
    for s in ["init", "api", "web"] {
        assert!(listed.contains(&format!("{project}-{s}-1")), "docker-compose ps lists {s}: {listed}");
    }

    let again = rig.ok("compose_up", spec("hello"));
    let second = ids(&again);
    assert_eq!(
        second.iter().map(|(s, id, _)| (s, id)).collect::<Vec<_>>(),
        first.iter().map(|(s, id, _)| (s, id)).collect::<Vec<_>>(),
        "same containers: {again}"
    );
    assert!(second.iter().all(|(s, _, a)| a == "unchanged" || (s == "init" && a == "started")), "{again}");

    let changed = rig.ok("compose_up", spec("bonjour"));
    for ((s, old, _), (_, new, action)) in first.iter().zip(ids(&changed)) {
        match s.as_str() {
            "api" => assert!(old != &new && action == "recreated", "api recreated: {changed}"),
            _ => assert_eq!(old, &new, "{s} left alone: {changed}"),
        }
    }
    assert_eq!(docker(&["exec", &web, "wget", "-q", "-O", "-", "http://backend:8080/"]), "api-bonjour-ready");

    let ps = rig.ok("compose_ps", json!({"project": project}));
    assert_eq!(ps["count"], 3, "{ps}");
    let all = rig.ok("compose_ps", json!({}));
    assert!(all["projects"].as_array().unwrap().iter().any(|p| p["project"] == project.as_str() && p["services"] == 3));
    let logs = rig.ok("compose_logs", json!({"project": project, "services": ["init"]}));
    assert_eq!(logs["containers"], json!([format!("{project}-init-1")]), "{logs}");

    let down = rig.ok("compose_down", json!({"project_dir": up["project_dir"]}));
    assert_eq!(down["status"], "success", "{down}");
    let label = format!("label=com.docker.compose.project={project}");
    assert_eq!(docker(&["ps", "-aq", "--filter", &label]), "", "containers removed");
    assert_eq!(docker(&["network", "ls", "-q", "--filter", &label]), "", "networks removed");
    assert_ne!(docker(&["volume", "ls", "-q", "--filter", &label]), "", "volumes kept without volumes: true");
    rig.ok("compose_down", json!({"project": project, "volumes": true}));
    assert_eq!(common::compose_objects(&project), "", "volumes removed too");
    rig.ok("compose_down", json!({"project": project}));
}

#[test]
fn refusals_and_hostile_input_create_nothing() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let project = common::unique("cmpbad").replace('-', "");
    let allowed = std::env::temp_dir().join(format!("{project}-dirs"));
    let _c = Cleanup::new(&project, Some(allowed.clone()));
    let app = allowed.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let policy = allowed.join("policy.json");
    std::fs::write(&policy, json!({"compose_dirs": [app]}).to_string()).unwrap();
    let rig = MeshRig::start(&py, &["--policy", &policy.to_string_lossy()], &[]);

    let found = rig.discover(&format!("device({})", rig.id));
    let advertised = found.to_string();
    for f in PYTHON_FUNCTIONS {
        assert!(advertised.contains(&format!("\"{f}\"")), "{f} advertised: {found}");
    }

    let svc = |extra: &str| format!("services:\n  bad:\n    image: {image}\n{extra}");
    let refusals = [
        (svc("    volumes: ['/etc:/host-etc']\n"), "bind mount of /etc"),
        (svc("    privileged: true\n"), "privileged"),
        (svc("    network_mode: host\n"), "network mode host"),
        (svc("    cap_add: [SYS_ADMIN]\n"), "cap_add SYS_ADMIN"),
        (svc("    pid: host\n"), "pid mode host"),
        (svc("    devices: ['/dev/mem:/dev/mem']\n"), "device /dev/mem"),
        (svc("    group_add: ['0']\n"), "group_add 0"),
        (
            format!(
                "{}volumes:\n  root:\n    driver_opts: {{type: none, o: bind, device: /}}\n",
                svc("    volumes: ['root:/r']\n")
            ),
            "bind mount of /",
        ),
    ];
    // A healthy service ahead of the refused one: nothing at all may be created.
    let ok_first = format!("services:\n  fine:\n    image: {image}\n    command: [sleep, '30']\n");
    for (yaml, want) in refusals {
        let yaml = yaml.replacen("services:\n", &ok_first, 1);
        let e = rig.err("compose_up", json!({"spec": {"compose_yaml": yaml, "project": project}}));
        assert!(e.starts_with("policy:") && e.contains(want), "{want}: {e}");
        assert!(e.contains("service bad") || e.contains("volume root"), "names the service: {e}");
        assert_eq!(common::compose_objects(&project), "", "refused {want:?} left something behind");
    }

    let laughs = "x-a: &a [x,x,x,x,x,x,x,x,x,x]\nx-b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nx-c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nx-d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\nx-e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nx-f: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\nservices: {}\n";
    let inline = [
        (format!("services:\n  a:\n    image: {image}\n    command: [\n"), "compose file"),
        (laughs.to_string(), "budget"),
        (format!("x: {}{}\nservices: {{}}\n", "[".repeat(10_000), "]".repeat(10_000)), "recursion"),
        (format!("services:\n  a: {{image: {image}}}\n  a: {{image: {image}}}\n"), "duplicate"),
        (
            format!("services:\n  a: {{image: {image}, depends_on: [b]}}\n  b: {{image: {image}, depends_on: [a]}}\n"),
            "cycle",
        ),
        (format!("services:\n  a: {{image: {image}, depends_on: [nope]}}\n"), "nope"),
        ("services:\n  a: {image: \"${IMAGE:?set IMAGE}\"}\n".to_string(), "set IMAGE"),
        (format!("name: Not_Valid\nservices:\n  a: {{image: {image}}}\n"), "project name"),
        (format!("services:\n  a: {{image: {image}, secrets: [s]}}\n"), "service a: key \"secrets\""),
    ];
    for (yaml, want) in inline {
        let spec = if yaml.starts_with("name:") {
            json!({"compose_yaml": yaml})
        } else {
            json!({"compose_yaml": yaml, "project": project})
        };
        let e = rig.err("compose_up", json!({"spec": spec}));
        assert!(e.contains(want), "{want}: {e}");
        assert_eq!(common::compose_objects(&project), "", "{want:?} left something behind");
    }

    // Files on the host: only inside compose_dirs, never quoted back.
    std::fs::write(app.join("compose.yaml"), format!("x: \"{}\"\n", "a".repeat(10 << 20))).unwrap();
    let e = rig.err("compose_up", json!({"spec": {"project_dir": app, "project": project}}));
    assert!(e.contains("larger than"), "10 MB file: {e}");
    std::fs::write(app.join("compose.yaml"), "root:$6$not-for-you:19000:0:99999:7:::\n  x: [\n").unwrap();
    let e = rig.err("compose_up", json!({"spec": {"project_dir": app, "project": project}}));
    assert!(!e.contains("not-for-you"), "host file content quoted: {e}");
    std::fs::write(allowed.join("secret.env"), "TOKEN=not-for-you\n").unwrap();
    std::fs::write(app.join("compose.yaml"), format!("services:\n  a: {{image: {image}, env_file: ../secret.env}}\n"))
        .unwrap();
    let e = rig.err("compose_up", json!({"spec": {"project_dir": app, "project": project}}));
    assert!(e.contains("env_file") && e.contains(".."), "{e}");
    for dir in ["/etc".to_string(), format!("{}/../..", app.display()), allowed.display().to_string()] {
        let e = rig.err("compose_up", json!({"spec": {"project_dir": dir, "project": project}}));
        assert!(e.starts_with("policy:") && e.contains("project_dir"), "{dir}: {e}");
    }
    assert_eq!(common::compose_objects(&project), "");
}

#[test]
fn a_new_image_under_the_same_tag_recreates_the_service() {
    let Some((rig, image)) = common::real_mesh_rig() else { return };
    let project = common::unique("cmpimg").replace('-', "");
    let _c = Cleanup::new(&project, None);
    let tag = format!("dcd-test/{project}:v1");
    docker(&["tag", &image, &tag]);
    let yaml = format!(
        "services:\n  a:\n    image: {tag}\n    init: true\n    command: [sleep, '600']\n  b:\n    image: {image}\n    \
         init: true\n    command: [sleep, '600']\n"
    );
    let spec = json!({"spec": {"compose_yaml": yaml, "project": project}});
    let first = ids(&rig.ok("compose_up", spec.clone()));
    // Another image under the same tag, as a pull of a moved tag brings (exported and imported:
    // Podman's compatible API refuses the docker CLI's commit).
    let maker = format!("{project}-maker");
    docker_ok(&["run", "--name", &maker, &image, "touch", "/new"]);
    let moved =
        format!("set -e; docker export {maker} | docker import - {tag} >/dev/null; docker rm -f {maker} >/dev/null");
    let out = common::engine_cli("sh", &["-c", &moved]).output().expect("sh");
    assert!(out.status.success(), "a new image under {tag}: {}", String::from_utf8_lossy(&out.stderr));
    let second = rig.ok("compose_up", spec);
    for ((s, old, _), (_, new, action)) in first.iter().zip(ids(&second)) {
        match s.as_str() {
            "a" => assert!(old != &new && action == "recreated", "a recreated: {second}"),
            _ => assert!(old == &new && action == "unchanged", "b left alone: {second}"),
        }
    }
    rig.ok("compose_down", json!({"project": project}));
    docker(&["rmi", "-f", &tag]);
}

#[test]
fn owned_only_leaves_a_project_of_the_compose_cli_alone() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let project = common::unique("cmpcli").replace('-', "");
    let dir = std::env::temp_dir().join(&project);
    let _c = Cleanup::new(&project, Some(dir.clone()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = format!("services:\n  a:\n    image: {image}\n    init: true\n    command: [sleep, '600']\n");
    std::fs::write(dir.join("compose.yaml"), &yaml).unwrap();
    let cli =
        common::docker_compose_cli(&["-p", &project, "-f", &dir.join("compose.yaml").to_string_lossy(), "up", "-d"])
            .output()
            .expect("docker-compose");
    assert!(cli.status.success(), "docker-compose up: {}", String::from_utf8_lossy(&cli.stderr));
    let made = common::compose_objects(&project);
    assert_ne!(made, "");
    let policy = dir.join("policy.json");
    std::fs::write(&policy, r#"{"owned_only": true}"#).unwrap();
    let rig = MeshRig::start(&py, &["--policy", &policy.to_string_lossy()], &[]);
    let e = rig.err("compose_down", json!({"project": project}));
    assert!(e.starts_with("policy:") && e.contains("owned_only") && e.contains(&format!("{project}_a_1")), "{e}");
    let e = rig.err("compose_up", json!({"spec": {"compose_yaml": yaml, "project": project}}));
    assert!(e.starts_with("policy:") && e.contains("owned_only"), "{e}");
    assert_eq!(common::compose_objects(&project), made, "the CLI's project was touched");
}
