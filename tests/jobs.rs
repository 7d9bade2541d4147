//! Jobs through the mesh (issue 18): long calls answer `pending` before the caller's 30 s run out,
//! report `job_progress`, end with `job_finished`, can be joined and cancelled, and never starve
//! quick calls. The daemon runs on the real engine (one test on the simulator) on a loopback
//! nats-server and is called by the unmodified Python agent tools; events are read off NATS as
//! they go out. Slow pulls come from the loopback registry through `SlowProxy`, a rate-limited
//! TCP proxy: the test image is an image of busybox plus `SLOW_MIB` of random bytes, pushed once
//! per tag. Needs the engine, the test image, the registry, nats-server and the Python tools.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{docker, unique, MeshRig, SlowProxy};

/// Random bytes in each slow image: enough that a pull clearly outlasts `WAIT` at `RATE`.
const SLOW_MIB: u64 = 12;
/// The slow link: 12 MiB take about 6 s.
const RATE: u64 = 2 << 20;
/// The `wait` the tests give, so `pending` comes quickly.
const WAIT: f64 = 2.0;
/// How long any job here may take to end.
const JOB_END: Duration = Duration::from_secs(90);

/// The loopback registry (`DCD_TEST_REGISTRY`), if it answers.
fn registry() -> Option<String> {
    let reg = std::env::var("DCD_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let up = std::net::TcpStream::connect(&reg).is_ok();
    common::require(up, &format!("the loopback registry at {reg}")).then_some(reg)
}

/// Whether the registry holds `repo:tag`.
fn in_registry(reg: &str, repo: &str, tag: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(reg) else { return false };
    let accept = "application/vnd.docker.distribution.manifest.v2+json";
    let _ = write!(
        s,
        "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {reg}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// `dcd-test/slow-<tag>:v1` in the registry (busybox plus `SLOW_MIB` of random bytes, one
/// layer), pushed once; no local copy is left, so a pull must download it.
fn slow_image(reg: &str, tag: &str, test_image: &str) -> String {
    let repo = format!("dcd-test/slow-{tag}");
    if in_registry(reg, &repo, "v1") {
        return format!("{repo}:v1");
    }
    let dir = std::env::temp_dir().join(unique(&format!("slow-{tag}")));
    std::fs::create_dir_all(&dir).unwrap();
    let mut random = vec![0u8; (SLOW_MIB << 20) as usize];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut random).unwrap();
    std::fs::write(dir.join("random.bin"), &random).unwrap();
    let (box_name, pushed) = (unique(&format!("slowbox-{tag}")), format!("{reg}/{repo}:v1"));
    let script = format!(
        "set -e; docker create --name {box_name} {test_image} >/dev/null; \
         docker cp {dir}/random.bin {box_name}:/random.bin; \
         docker export {box_name} | docker import --change 'CMD [\"sleep\", \"3600\"]' - {pushed} >/dev/null; \
         docker rm {box_name} >/dev/null; docker push -q {pushed} >/dev/null; docker rmi {pushed} >/dev/null",
        dir = dir.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().expect("sh");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "building {pushed}: {}", String::from_utf8_lossy(&out.stderr));
    format!("{repo}:v1")
}

/// Removes every local copy of `repo` (under any registry address) now and on drop.
struct Forget(String);

impl Forget {
    fn new(repo: &str) -> Forget {
        let f = Forget(repo.split(':').next().unwrap().to_string());
        f.forget();
        f
    }

    fn forget(&self) {
        for image in docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines() {
            if image.contains(&self.0) {
                docker(&["rmi", "-f", image]);
            }
        }
    }
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.forget();
    }
}

fn present(image: &str) -> bool {
    common::docker_cli(&["image", "inspect", image]).output().is_ok_and(|o| o.status.success())
}

/// The daemon's events as they go out on NATS: (name, params, when received). Subscribed before
/// this returns.
fn listen(rig: &MeshRig) -> Receiver<(String, Value, Instant)> {
    let mut nats = common::Nats::connect(rig.port).expect("nats");
    nats.sub(&common::subject(&rig.tenant, &rig.id, "event.>")).unwrap();
    // The server takes a connection's messages in order: once this is answered, the SUB is in.
    let (_, ping) = common::rpc_request("get_status", json!({}));
    let cmd = common::subject(&rig.tenant, &rig.id, "cmd");
    assert!(nats.request(&cmd, &ping, Duration::from_secs(10)).unwrap().is_some(), "get_status over raw NATS");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        while let Ok(Some(m)) = nats.next(Instant::now() + Duration::from_secs(3600)) {
            let body: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            let name = body["method"].as_str().unwrap_or_default().to_string();
            if tx.send((name, body["params"].clone(), Instant::now())).is_err() {
                return;
            }
        }
    });
    rx
}

/// The `job_progress` events of job `id` until its `job_finished`, and that event with the time
/// it came.
fn until_finished(events: &Receiver<(String, Value, Instant)>, id: &str) -> (Vec<(Value, Instant)>, Value, Instant) {
    let deadline = Instant::now() + JOB_END;
    let mut progress = Vec::new();
    while let Ok((name, p, at)) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if p["job_id"] != id {
            continue;
        }
        match name.as_str() {
            "job_progress" => progress.push((p, at)),
            "job_finished" => return (progress, p, at),
            _ => {}
        }
    }
    panic!("no job_finished for {id} within {JOB_END:?}; progress: {progress:?}");
}

fn pending_id(r: &Value) -> String {
    assert_eq!(r["status"], "pending", "{r}");
    r["job_id"].as_str().expect("a job_id").to_string()
}

#[test]
fn slow_pull_is_pending_reports_progress_and_is_joined() {
    let Some((py, test_image)) = common::mesh_parts() else { return };
    let Some(reg) = registry() else { return };
    let repo = slow_image(&reg, "a", &test_image);
    let _forget = Forget::new(&repo);
    let proxy = SlowProxy::start(&reg, RATE, None);
    let rig = MeshRig::start(&py, &[], &[]);
    let events = listen(&rig);
    let image = format!("127.0.0.1:{}/{repo}", proxy.port);

    let t = Instant::now();
    let id = pending_id(&rig.ok("pull_image", json!({"image": image, "wait": WAIT})));
    assert!(t.elapsed() < Duration::from_secs(26), "pending took {:?}", t.elapsed());
    // Through the agent tools' own selectors: a function, then an event, of this device.
    for (scope, name) in [
        ("function", "get_job"),
        ("function", "list_jobs"),
        ("function", "cancel_job"),
        ("event", "job_progress"),
        ("event", "job_finished"),
    ] {
        let found = rig.discover(&format!("device({}).{scope}({name})", rig.id));
        assert_eq!(found["results"][0]["name"], name, "{scope} {name} is not advertised: {found}");
    }
    let again = rig.ok("pull_image", json!({"image": image, "wait": 0}));
    assert_eq!(pending_id(&again), id, "a second pull of the same reference joins the first");
    let listed = rig.ok("list_jobs", json!({"state": "running"}));
    assert_eq!(listed["count"], 1, "{listed}");

    let (progress, finished, finished_at) = until_finished(&events, &id);
    assert_eq!(finished["status"], "success", "{finished}");
    assert_eq!(finished["result"]["image"], image.as_str());
    let bytes: Vec<u64> = progress.iter().map(|(p, _)| p["bytes_done"].as_u64().unwrap()).collect();
    assert!(bytes.windows(2).all(|w| w[0] <= w[1]), "bytes_done falls: {bytes:?}");
    let (last, _) = progress.last().expect("progress events");
    assert!(last["bytes_total"].as_u64().unwrap() >= SLOW_MIB << 20, "{last}");
    assert_eq!(last["bytes_done"], last["bytes_total"], "{last}");
    assert!(bytes.iter().filter(|b| **b > 0 && **b < bytes[bytes.len() - 1]).count() >= 3, "{bytes:?}");
    assert!(present(&image), "{image} is not on the host after the pull");
    let job = rig.ok("get_job", json!({"job_id": id}));
    assert_eq!((job["job"]["state"].as_str(), job["job"]["function"].as_str()), (Some("success"), Some("pull_image")));

    // For bench/: the delay from the proxy's last byte to job_finished, and the event rate while
    // bytes flowed.
    let downloading: Vec<Instant> =
        progress.iter().filter(|(p, _)| p["bytes_done"].as_u64().is_some_and(|b| b > 0)).map(|(_, at)| *at).collect();
    let span = downloading.last().unwrap().duration_since(downloading[0]).as_secs_f64();
    let tail = finished_at.saturating_duration_since(proxy.last_byte().unwrap());
    eprintln!(
        "BENCH jobs: last proxy byte to job_finished {} ms; {:.2} job_progress events/s over {span:.1} s",
        tail.as_millis(),
        (downloading.len() as f64 - 1.0) / span.max(0.001)
    );
    assert!((downloading.len() as f64 - 1.0) / span.max(0.001) <= 2.5, "progress events come too often");
}

#[test]
fn cancelled_pull_closes_the_registry_connection() {
    let Some((py, test_image)) = common::mesh_parts() else { return };
    let Some(reg) = registry() else { return };
    let repo = slow_image(&reg, "b", &test_image);
    let _forget = Forget::new(&repo);
    let proxy = SlowProxy::start(&reg, RATE, None);
    let rig = MeshRig::start(&py, &[], &[]);
    let events = listen(&rig);
    let image = format!("127.0.0.1:{}/{repo}", proxy.port);

    let id = pending_id(&rig.ok("pull_image", json!({"image": image, "wait": 1})));
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.bytes() < 2 << 20 {
        assert!(Instant::now() < deadline, "the pull did not start through the proxy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = rig.ok("cancel_job", json!({"job_id": id}));
    assert_eq!(r["job"]["state"], "cancelled", "{r}");
    assert!(r["job"]["error"].as_str().unwrap().contains("the pull was stopped after"), "{r}");
    let (_, finished, _) = until_finished(&events, &id);
    assert_eq!(finished["status"], "cancelled", "{finished}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.abandoned() == 0 {
        assert!(Instant::now() < deadline, "the engine kept the registry connection open");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(proxy.bytes() < SLOW_MIB << 20, "the whole image went through after the cancel");
    assert!(!present(&image));
    assert_eq!(rig.ok("get_status", json!({}))["status"], "success", "the daemon keeps serving");
    let e = rig.err("cancel_job", json!({"job_id": "job-000000000000"}));
    assert!(e.contains("no job"), "{e}");
}

#[test]
fn cut_pull_ends_in_error_and_quick_pull_answers_as_before() {
    let Some((py, test_image)) = common::mesh_parts() else { return };
    let Some(reg) = registry() else { return };
    let repo = slow_image(&reg, "c", &test_image);
    let _forget = Forget::new(&repo);
    let proxy = SlowProxy::start(&reg, RATE, Some(SLOW_MIB << 19));
    let rig = MeshRig::start(&py, &[], &[]);
    let events = listen(&rig);

    let quick = format!("{reg}/dcd-test/busybox:latest");
    let r = rig.ok("pull_image", json!({"image": quick}));
    let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["image", "progress", "status"], "{r}");
    assert_eq!(r["status"], "success");
    docker(&["rmi", &quick]);

    let image = format!("127.0.0.1:{}/{repo}", proxy.port);
    let id = pending_id(&rig.ok("pull_image", json!({"image": image, "wait": 1})));
    let (_, finished, _) = until_finished(&events, &id);
    assert_eq!(finished["status"], "error", "{finished}");
    assert!(!finished["error"].as_str().unwrap_or_default().is_empty(), "{finished}");
    assert_eq!(rig.ok("get_job", json!({"job_id": id}))["job"]["state"], "error");
    assert!(!present(&image));
}

#[test]
fn provision_pulls_a_missing_image_unless_never() {
    let Some((py, test_image)) = common::mesh_parts() else { return };
    let Some(reg) = registry() else { return };
    let repo = slow_image(&reg, "d", &test_image);
    let _forget = Forget::new(&repo);
    let proxy = SlowProxy::start(&reg, 4 << 20, None);
    let rig = MeshRig::start(&py, &[], &[]);
    let events = listen(&rig);
    let names = [unique("prov-slow"), unique("prov-never")];
    let _cleanup = common::Cleanup(names.to_vec());

    let image = format!("127.0.0.1:{}/{repo}", proxy.port);
    let spec = json!({"image": image, "name": names[0]});
    let id = pending_id(&rig.ok("provision_container", json!({"spec": spec, "wait": 1})));
    let (progress, finished, _) = until_finished(&events, &id);
    let mut phases: Vec<&str> = progress.iter().map(|(p, _)| p["phase"].as_str().unwrap()).collect();
    phases.dedup();
    assert_eq!(phases, ["pulling", "creating", "starting"], "{progress:?}");
    assert_eq!(finished["status"], "success", "{finished}");
    assert_eq!(finished["result"]["container"]["state"], "running", "{finished}");
    // Present now: at once, and no job.
    let again = rig.ok("provision_container", json!({"spec": {"image": image, "name": names[0], "replace": true}}));
    assert_eq!(again["status"], "success", "{again}");

    let absent = format!("{reg}/dcd-test/absent:never");
    let e = rig.err("provision_container", json!({"spec": {"image": absent, "name": names[1], "pull": "never"}}));
    assert!(e.contains("pull is \"never\"") && e.to_ascii_lowercase().contains("no such image"), "{e}");
}

#[test]
fn compose_up_with_a_slow_pull_is_a_job_in_phases_and_cancels_cleanly() {
    let Some((py, test_image)) = common::mesh_parts() else { return };
    let Some(reg) = registry() else { return };
    let repo = slow_image(&reg, "f", &test_image);
    let _forget = Forget::new(&repo);
    let proxy = SlowProxy::start(&reg, RATE, None);
    let rig = MeshRig::start(&py, &[], &[]);
    let events = listen(&rig);
    let project = unique("cjob").replace('-', "");
    let _cleanup = common::ComposeCleanup(project.clone());
    let image = format!("127.0.0.1:{}/{repo}", proxy.port);
    // db must be healthy before app starts; both come from behind the slow link (pulled once).
    let yaml = format!(
        "services:\n  db:\n    image: {image}\n    init: true\n    healthcheck:\n      test: [CMD, 'true']\n      \
         interval: 1s\n      retries: 30\n  app:\n    image: {image}\n    init: true\n    command: [sleep, '600']\n    \
         depends_on:\n      db: {{condition: service_healthy}}\n"
    );
    let spec = json!({"compose_yaml": yaml, "project": project, "pull": true});

    let t = Instant::now();
    let id = pending_id(&rig.ok("compose_up", json!({"spec": spec, "wait": WAIT})));
    assert!(t.elapsed() < Duration::from_secs(26), "pending took {:?}", t.elapsed());
    let again = rig.ok("compose_up", json!({"spec": spec, "wait": 0}));
    assert_eq!(pending_id(&again), id, "a second compose_up of the project joins the first");
    let (progress, finished, _) = until_finished(&events, &id);
    assert_eq!(finished["status"], "success", "{finished}");
    let mut phases: Vec<&str> = progress.iter().map(|(p, _)| p["phase"].as_str().unwrap()).collect();
    phases.dedup();
    assert_eq!(phases, ["pulling", "creating", "starting", "waiting-healthy", "creating", "starting"], "{progress:?}");
    let pulling: Vec<u64> = progress
        .iter()
        .filter(|(p, _)| p["phase"] == "pulling")
        .map(|(p, _)| p["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(pulling.iter().filter(|b| **b > 0 && **b < SLOW_MIB << 20).count() >= 3, "{pulling:?}");
    let most = progress.iter().map(|(p, _)| p["bytes_done"].as_u64().unwrap()).max().unwrap();
    assert!(most >= SLOW_MIB << 20, "{progress:?}");
    let services = &finished["result"]["services"];
    for (n, s) in ["db", "app"].iter().enumerate() {
        assert_eq!(services[n]["service"], *s, "{finished}");
        assert_eq!(services[n]["action"], "created", "{finished}");
        assert_eq!(services[n]["containers"][0]["state"], "running", "{finished}");
    }
    assert_eq!(finished["result"]["waited"][0]["waited_for"], "db", "{finished}");
    rig.ok("compose_down", json!({"project": project, "volumes": true}));
    assert_eq!(common::compose_objects(&project), "");

    // Cancelled while it pulls: the pull stops, and nothing of the project is made.
    docker(&["rmi", &image]);
    let id = pending_id(&rig.ok("compose_up", json!({"spec": spec, "wait": 1})));
    let sent = proxy.bytes();
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.bytes() < sent + (2 << 20) {
        assert!(Instant::now() < deadline, "the second pull did not start through the proxy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = rig.ok("cancel_job", json!({"job_id": id}));
    assert_eq!(r["job"]["state"], "cancelled", "{r}");
    assert!(r["job"]["error"].as_str().unwrap().contains("nothing was created"), "{r}");
    let (_, finished, _) = until_finished(&events, &id);
    assert_eq!(finished["status"], "cancelled", "{finished}");
    assert_eq!(common::compose_objects(&project), "", "a cancelled compose_up left something");
    assert!(!present(&image));
}

/// `docker top` of a container: its processes' command lines.
fn processes(name: &str) -> String {
    docker(&["top", name, "-o", "pid,args"])
}

#[test]
fn long_execs_and_a_pull_do_not_starve_quick_calls() {
    let Some((py, test_image)) = common::mesh_parts() else { return };
    let Some(reg) = registry() else { return };
    let repo = slow_image(&reg, "e", &test_image);
    let _forget = Forget::new(&repo);
    let proxy = SlowProxy::start(&reg, 1 << 20, None);
    let rig = MeshRig::start(&py, &[], &[]);
    let name = unique("starve");
    let _cleanup = common::Cleanup(vec![name.clone()]);
    let spec = json!({"image": test_image, "name": name, "command": ["sleep", "600"]});
    assert_eq!(rig.ok("provision_container", json!({"spec": spec}))["container"]["state"], "running");

    let pull =
        pending_id(&rig.ok("pull_image", json!({"image": format!("127.0.0.1:{}/{repo}", proxy.port), "wait": 0})));
    // 16 execs from another caller, all at once.
    let mut nats = common::Nats::connect(rig.port).unwrap();
    let cmd = common::subject(&rig.tenant, &rig.id, "cmd");
    let mut inboxes: Vec<String> = (0..16)
        .map(|_| {
            let params = json!({"container_id": name, "command": ["sleep", "40"], "wait": 1});
            nats.send_request(&cmd, &common::rpc_request("exec_in_container", params).1).unwrap()
        })
        .collect();
    let mut execs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !inboxes.is_empty() {
        let m = nats.next(deadline).unwrap().expect("16 exec replies within 20 s");
        if let Some(i) = inboxes.iter().position(|b| *b == m.subject) {
            inboxes.remove(i);
            let reply: Value = serde_json::from_slice(&m.payload).unwrap();
            execs.push(pending_id(&reply["result"]));
        }
    }
    let mut took: Vec<Duration> = (0..100)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(rig.ok("get_status", json!({}))["status"], "success");
            t.elapsed()
        })
        .collect();
    took.sort();
    eprintln!("BENCH jobs: get_status beside 16 execs and a pull: p50 {:?}, p99 {:?}", took[50], took[98]);
    let running = rig.ok("list_jobs", json!({"state": "running"}));
    assert!(running["jobs"].to_string().contains(&pull), "the pull is no longer in flight: {running}");

    let before = processes(&name);
    assert_eq!(before.matches("sleep 40").count(), 15, "15 execs run, one waits for a thread: {before}");
    for id in &execs {
        let r = rig.ok("cancel_job", json!({"job_id": id}));
        assert_eq!(r["job"]["state"], "cancelled", "{r}");
    }
    let left = processes(&name);
    assert!(!left.contains("sleep 40"), "cancelled execs still run: {left}");

    let r = rig.ok("exec_in_container", json!({"container_id": name, "command": ["sleep", "30"], "timeout_s": 2}));
    assert_eq!((r["killed"].as_bool(), r["exit_code"].as_i64()), (Some(true), Some(137)), "{r}");
    let left = processes(&name);
    assert!(!left.contains("sleep 30"), "the timed-out exec still runs: {left}");
    let r = rig.ok("exec_in_container", json!({"container_id": name, "command": ["echo", "hi"]}));
    assert_eq!(r, json!({"status": "success", "exit_code": 0, "stdout": "hi\n", "stderr": ""}));
}

#[test]
fn a_hundred_jobs_stay_bounded_and_keep_secrets() {
    let Some(py) = common::python() else { return };
    if !common::nats_installed() {
        return;
    }
    let rig = MeshRig::start(&py, &["--sim"], &[]);
    let events = listen(&rig);
    let (_, rss_before) = common::threads_and_rss(rig.dcd.pid());
    let wrong = "Wr0ng-S3cret-for-the-log";
    let e = rig.err("pull_image", json!({"image": "sim/slow-x", "auth": {"username": "dcd", "password": wrong}}));
    assert!(!e.contains(wrong), "{e}");

    let mut nats = common::Nats::connect(rig.port).unwrap();
    let cmd = common::subject(&rig.tenant, &rig.id, "cmd");
    let (mut pending, mut busy) = (0, 0);
    for i in 0..100 {
        let params = json!({"image": format!("sim/slow-{i}"), "wait": 0,
                            "auth": {"username": "dcd", "password": "dcd-sim"}});
        let reply = nats.request(&cmd, &common::rpc_request("pull_image", params).1, Duration::from_secs(10)).unwrap();
        let reply: Value = serde_json::from_slice(&reply.expect("a reply")).unwrap();
        match reply["result"]["status"].as_str() {
            Some("pending") => pending += 1,
            _ if reply["error"]["message"].as_str().is_some_and(|m| m.contains("busy")) => busy += 1,
            _ => panic!("{reply}"),
        }
    }
    assert_eq!((pending, busy), (64, 36));
    let (threads, rss) = common::threads_and_rss(rig.dcd.pid());
    eprintln!("BENCH jobs: 64 live jobs: {threads} threads, RSS {rss} KiB (was {rss_before} KiB)");
    assert!(rss < rss_before + 32 * 1024, "RSS grew from {rss_before} to {rss} KiB");
    let listed = rig.ok("list_jobs", json!({}));
    assert_eq!(listed["count"], 65, "64 running and the failed pull");
    let one = rig.ok("get_job", json!({"job_id": listed["jobs"][0]["job_id"]}));
    for shown in [listed.to_string(), one.to_string()] {
        assert!(!shown.contains("dcd-sim") && !shown.contains(wrong), "a credential in a job: {shown}");
        assert!(!shown.contains("\"auth\""), "{shown}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let sent: Vec<Value> = events.try_iter().map(|(_, p, _)| p).collect();
    assert!(sent.iter().any(|p| p["job_id"].is_string()), "no job events");
    let sent = serde_json::to_string(&sent).unwrap();
    assert!(!sent.contains("dcd-sim") && !sent.contains(wrong), "a credential in an event");
    assert!(!rig.dcd.wait_line("dcd-sim", Duration::from_secs(1)), "a credential in the debug log");
    assert!(!rig.dcd.wait_line(wrong, Duration::from_millis(100)), "a credential in the debug log");
}

#[test]
fn a_broadcast_long_call_answers_pending_without_holding_its_thread() {
    let rig = common::Rig::new(std::sync::Arc::new(dcd::engine::sim::Sim::new()), true);
    let envelope = json!({"correlation_id": "br-1", "function": "pull_image",
                          "params": {"image": "sim/slow-broadcast", "wait": 0}});
    let b = dcd::rpc::broadcast("dev-1", envelope.to_string().as_bytes()).expect("a broadcast for us");
    let (tx, rx) = channel();
    let t = Instant::now();
    dcd::rpc::fire(&rig.driver, "dev-1", b, move |topic, payload| {
        let _ = tx.send((topic, serde_json::from_slice::<Value>(&payload).unwrap()));
    });
    let (topic, reply) = rx.recv_timeout(Duration::from_secs(5)).expect("an async_reply");
    assert!(t.elapsed() < Duration::from_secs(2), "the pending reply took {:?}", t.elapsed());
    assert_eq!(topic, "event.async_reply.br-1");
    assert_eq!(
        (reply["success"].as_bool(), reply["result"]["status"].as_str()),
        (Some(true), Some("pending")),
        "{reply}"
    );
    let id = reply["result"]["job_id"].as_str().unwrap();
    let job = rig.ok("get_job", json!({"job_id": id}));
    assert_eq!(job["job"]["state"], "running", "{job}");
    let done = rig.ok("cancel_job", json!({"job_id": id}));
    assert_eq!(done["job"]["state"], "cancelled", "{done}");
}

/// Under `owned_only`, a job names its container, and `get_job`/`cancel_job` check that container
/// as the call did. The policy is fixed, and a container's labels cannot change, so a job becomes
/// one the caller could not have started only when its name comes to mean a container dcd did not
/// make: here a provision's name, free when called, taken by a foreign container while it pulls.
#[test]
fn owned_only_refuses_a_job_whose_container_is_now_foreign() {
    use dcd::engine::Engine;
    let sim = std::sync::Arc::new(dcd::engine::sim::Sim::new());
    let policy = dcd::policy::Policy { owned_only: true, ..Default::default() };
    let rig = common::Rig::under(sim.clone(), true, 10_000, 2.0, policy);
    let spec = json!({"image": "sim/slow-own", "name": "own", "pull": "always"});
    let id = pending_id(&rig.ok("provision_container", json!({"spec": spec, "wait": 0})));
    sim.create_container(Some("own"), &json!({"Image": "sim/hello"})).expect("a foreign container");
    for method in ["get_job", "cancel_job"] {
        let e = rig.err(method, json!({"job_id": id}));
        assert!(e.starts_with("policy:") && e.contains("owned_only"), "{method}: {e}");
    }
    let running = rig.ok("list_jobs", json!({"state": "running"}));
    assert_eq!(running["jobs"][0]["job_id"], id.as_str(), "the refused cancel left the job running: {running}");
}
