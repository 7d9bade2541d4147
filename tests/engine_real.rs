//! `Docker` (the real engine client) against the real engine (the Docker
//! Engine at /var/run/docker.sock, or Podman: `common::engine_kind`); version
//! negotiation and status mapping are unit tests on a fake engine
//! (src/engine/docker.rs). Needs the image
//! dcd-test/busybox:latest and the registry on 127.0.0.1:5000 that
//! `tests/setup.sh` provides. Without them the engine tests are skipped,
//! unless `CI` is set, where they fail.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dcd::engine::docker::Docker;
use dcd::engine::stream::{Demux, JsonLines, Line, Source};
use dcd::engine::{Engine, EngineError, ExecCommand, LogOptions, Stream};
use serde_json::{json, Value};

const IMAGE: &str = "dcd-test/busybox:latest";
const REGISTRY: &str = "127.0.0.1:5000";
const REGISTRY_IMAGE: &str = "127.0.0.1:5000/dcd-test/busybox:latest";
/// Time a one-shot exec here may take before the engine client kills it.
const EXEC_LIMIT: Duration = Duration::from_secs(60);

/// Whether an image list entry is `reference`; Podman lists local images
/// under `localhost/`.
fn tagged(image: &Value, reference: &str) -> bool {
    let localhost = format!("localhost/{reference}");
    image["RepoTags"].as_array().is_some_and(|t| t.iter().any(|t| t == reference || *t == localhost.as_str()))
}

/// The engine with the test image, or `None` when the test must be skipped.
fn engine() -> Option<Docker> {
    let host = common::engine_host()?;
    let d = Docker::connect(Some(&host)).unwrap();
    if let Err(e) = d.info() {
        common::require(false, &format!("an engine on {host} ({e})"));
        return None;
    }
    let has_image = d.list_images().unwrap().iter().any(|i| tagged(i, IMAGE));
    common::require(has_image, &format!("image {IMAGE} on {host}")).then_some(d)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Containers made by one test, force-removed when it ends (even by panic).
struct Made<'a> {
    d: &'a Docker,
    ids: Vec<String>,
}

impl<'a> Made<'a> {
    fn new(d: &'a Docker) -> Self {
        Made { d, ids: Vec::new() }
    }

    /// A container named `dcd-test-<pid>-<tag>` running `cmd`, with `extra`
    /// merged into the create body.
    fn create(&mut self, tag: &str, cmd: &[&str], extra: Value) -> String {
        let mut body = json!({"Image": IMAGE, "Cmd": cmd, "Labels": {"dcd-test": "1"}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let id = self.d.create_container(Some(&name(tag)), &body).unwrap();
        self.ids.push(id.clone());
        id
    }

    fn run(&mut self, tag: &str, cmd: &[&str]) -> String {
        let id = self.create(tag, cmd, json!({}));
        self.d.start_container(&id).unwrap();
        id
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.d.remove_container(id, true);
        }
    }
}

fn name(tag: &str) -> String {
    format!("dcd-test-{}-{tag}", std::process::id())
}

fn state(d: &Docker, id: &str) -> String {
    d.inspect_container(id).unwrap()["State"]["Status"].as_str().unwrap().to_string()
}

fn wait_exited(d: &Docker, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(d, id) != "exited" {
        assert!(Instant::now() < deadline, "container {id} did not exit");
        thread::sleep(Duration::from_millis(50));
    }
}

fn read_lines(mut s: Stream, timestamps: bool) -> Vec<Line> {
    let mut demux = Demux::new(false, timestamps);
    let mut lines = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let n = s.body.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        demux.push(&buf[..n], &mut |l| lines.push(l));
    }
    demux.finish(&mut |l| lines.push(l));
    lines
}

/// The texts from `source`, with long ones abbreviated to `<len × first char>`
/// so a failing assertion stays readable.
fn texts(lines: &[Line], source: Source) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.source == source)
        .map(|l| match l.text.chars().next() {
            Some(c) if l.text.len() > 100 && l.text.chars().all(|x| x == c) => {
                format!("<{} × {c}>", l.text.len())
            }
            _ => l.text.clone(),
        })
        .collect()
}

fn logs(d: &Docker, id: &str, opts: LogOptions) -> Vec<Line> {
    read_lines(d.logs(id, &opts).unwrap(), opts.timestamps)
}

#[test]
fn info_and_list_images() {
    let Some(d) = engine() else { return };
    for _ in 0..3 {
        d.ping().expect("the engine answers /_ping, on one pooled connection after another");
    }
    let info = d.info().unwrap();
    for key in ["docker_version", "api_version", "os", "arch", "server_version"] {
        assert!(info[key].is_string(), "{key} in {info}");
    }
    assert!(info["containers"].is_u64() && info["images"].is_u64(), "{info}");
    let api = info["api_version"].as_str().unwrap();
    let minor: u32 = api.strip_prefix("1.").unwrap().parse().unwrap();
    assert!((40..=45).contains(&minor), "{api}");
    assert_eq!(d.host(), common::engine_host());
    let kind = common::engine_kind();
    let engine = if kind.podman() { "Podman" } else { "Docker" };
    assert_eq!(
        (&info["engine"], &info["rootless"]),
        (&json!(engine), &json!(kind == common::EngineKind::PodmanRootless))
    );
    assert!(info["engine_version"].as_str().is_some_and(|v| v.starts_with(char::is_numeric)), "{info}");

    let images = d.list_images().unwrap();
    let ours = images.iter().find(|i| tagged(i, IMAGE)).unwrap();
    assert!(ours["Id"].as_str().unwrap().starts_with("sha256:"));
    assert!(ours["Size"].is_u64() && ours["Created"].is_i64());
}

#[test]
fn create_with_options_then_inspect() {
    let Some(d) = engine() else { return };
    let mut made = Made::new(&d);
    let dir = std::env::temp_dir().join(name("bind"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "from the host\n").unwrap();
    let bind = format!("{}:/data:ro", dir.display());
    let mut body = json!({
        "Env": ["GREETING=hi there"],
        "Labels": {"dcd-test": "1", "deviceconnect.dev/managed": "true"},
        "ExposedPorts": {"80/tcp": {}},
        "HostConfig": {
            "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            "Binds": [bind],
            "RestartPolicy": {"Name": "unless-stopped"},
            "Memory": 64 << 20,
        },
    });
    let limits = !common::podman_without_cgroups();
    if !limits {
        body["Image"] = json!(IMAGE);
        let err = d.create_container(Some(&name("opts")), &body).unwrap_err();
        let refused = "mem_limit cannot be applied: rootless Podman on cgroup v1 has no cgroup per container";
        assert!(matches!(&err, EngineError::BadRequest(m) if m.starts_with(refused)), "{err:?}");
        body["HostConfig"]["Memory"].take();
    }
    let id = made.create("opts", &["sleep", "1000"], body);
    assert_eq!(id.len(), 64, "full id: {id}");

    let c = d.inspect_container(&name("opts")).unwrap();
    assert_eq!(c["Id"], json!(id));
    assert_eq!(c["Name"], json!(format!("/{}", name("opts"))));
    assert_eq!(c["State"]["Status"], "created");
    assert!(c["Config"]["Image"] == IMAGE || c["Config"]["Image"] == format!("localhost/{IMAGE}"), "{c}");
    assert!(c["Config"]["Env"].as_array().unwrap().contains(&json!("GREETING=hi there")));
    assert_eq!(c["Config"]["Labels"]["deviceconnect.dev/managed"], "true");
    // Podman adds the propagation it applied: ",rprivate,rbind".
    let binds = c["HostConfig"]["Binds"].as_array().unwrap();
    assert!(binds.len() == 1 && binds[0].as_str().unwrap().starts_with(&bind), "{binds:?}");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(c["HostConfig"]["Memory"], json!(if limits { 64 << 20 } else { 0 }));
    assert_eq!(c["HostConfig"]["PortBindings"]["80/tcp"][0]["HostIp"], "127.0.0.1");

    // Prefixes and the list API's "/name" spelling work as ids too.
    assert_eq!(d.inspect_container(&id[..12]).unwrap()["Id"], json!(id));
    let slash_name = format!("/{}", name("opts"));
    assert_eq!(d.inspect_container(&slash_name).unwrap()["Id"], json!(id));

    d.start_container(&id).unwrap();
    let c = d.inspect_container(&id).unwrap();
    let port = &c["NetworkSettings"]["Ports"]["80/tcp"][0];
    assert_eq!(port["HostIp"], "127.0.0.1");
    assert!(port["HostPort"].as_str().unwrap().parse::<u16>().unwrap() > 0, "{port}");
    let cat = ExecCommand { cmd: vec!["cat".into(), "/data/hello.txt".into()], ..ExecCommand::default() };
    let out = d.exec(&id, &cat, EXEC_LIMIT, &()).unwrap();
    assert_eq!(out.stdout, "from the host\n");

    let listed = d.list_containers(false).unwrap();
    assert!(listed.iter().any(|c| c["Id"] == json!(id)));

    let dup = d.create_container(Some(&name("opts")), &json!({"Image": IMAGE}));
    assert!(matches!(dup, Err(EngineError::Conflict(_))), "{dup:?}");
    let bad = d.create_container(Some("bad?name=../x"), &json!({"Image": IMAGE, "Labels": {"dcd-test": "1"}}));
    assert!(matches!(bad, Err(EngineError::BadRequest(_))), "{bad:?}");
    let missing = d.create_container(None, &json!({"Image": "dcd-test/absent:nope"}));
    assert!(matches!(missing, Err(EngineError::NotFound(_))), "{missing:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn start_stop_restart_remove() {
    let Some(d) = engine() else { return };
    let mut made = Made::new(&d);
    let id = made.create("life", &["sleep", "1000"], json!({}));
    d.start_container(&id).unwrap();
    d.start_container(&id).unwrap(); // 304: already started
    assert_eq!(state(&d, &id), "running");
    assert!(d.list_containers(false).unwrap().iter().any(|c| c["Id"] == json!(id)));

    let err = d.remove_container(&id, false).unwrap_err();
    assert!(matches!(err, EngineError::Conflict(_)), "{err:?}");

    d.stop_container(&id, 1).unwrap();
    assert_eq!(state(&d, &id), "exited");
    d.stop_container(&id, 1).unwrap(); // 304: already stopped
    assert!(!d.list_containers(false).unwrap().iter().any(|c| c["Id"] == json!(id)));
    assert!(d.list_containers(true).unwrap().iter().any(|c| c["Id"] == json!(id)));

    d.restart_container(&id, 1).unwrap();
    assert_eq!(state(&d, &id), "running");

    d.remove_container(&id, true).unwrap();
    let gone = d.inspect_container(&id).unwrap_err();
    assert!(matches!(gone, EngineError::NotFound(_)), "{gone:?}");
    let again = d.remove_container(&id, true).unwrap_err();
    assert!(matches!(again, EngineError::NotFound(_)), "{again:?}");
}

#[test]
fn logs_split_streams_tail_since_and_long_lines() {
    let Some(d) = engine() else { return };
    let mut made = Made::new(&d);
    let script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; \
                  printf '\\303\\251t\\303\\251\\r\\n'; \
                  head -c 65536 /dev/zero | tr '\\0' a; echo; \
                  sleep 2; echo late";
    let id = made.run("logs", &["sh", "-c", script]);
    thread::sleep(Duration::from_secs(1));
    let middle = now();
    wait_exited(&d, &id);

    let all = logs(&d, &id, LogOptions::default());
    // The engine logs the 64 KiB line as 16 KiB pieces: they come back whole.
    assert_eq!(texts(&all, Source::Stdout), ["out1", "out2", "out3", "été", "<65536 × a>", "late"]);
    assert_eq!(texts(&all, Source::Stderr), ["err1", "err2", "err3"]);
    assert!(all.iter().all(|l| l.ts.is_none()));

    let stamped = logs(&d, &id, LogOptions { timestamps: true, ..Default::default() });
    for source in [Source::Stdout, Source::Stderr] {
        let (with, without) = (texts(&stamped, source), texts(&all, source));
        assert_eq!(with, without, "timestamps stripped, long line joined");
    }
    for l in &stamped {
        let ts = l.ts.as_deref().unwrap();
        assert!(ts.starts_with("20") && ts.ends_with('Z') && ts.contains('T'), "{ts}");
    }

    // The engine counts log entries, not lines: a long line is several.
    let tail = logs(&d, &id, LogOptions { tail: Some(1), ..Default::default() });
    assert_eq!(texts(&tail, Source::Stdout), ["late"]);
    assert!(texts(&tail, Source::Stderr).is_empty());

    let since = logs(&d, &id, LogOptions { since: Some(middle), ..Default::default() });
    assert_eq!(texts(&since, Source::Stdout), ["late"]);
    assert!(texts(&since, Source::Stderr).is_empty());

    let err = d.logs("dcd-test-no-such-container", &LogOptions::default());
    assert!(matches!(err, Err(EngineError::NotFound(_))));
}

/// Reads a followed log on a thread; returns the lines as they come and a
/// signal when the read ends.
fn follow(s: Stream) -> (mpsc::Receiver<Line>, mpsc::Receiver<()>) {
    let (lines_tx, lines) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let mut body = s.body;
    thread::spawn(move || {
        let mut demux = Demux::new(false, false);
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = body.read(&mut buf) {
            demux.push(&buf[..n], &mut |l| {
                let _ = lines_tx.send(l);
            });
        }
        let _ = done_tx.send(());
    });
    (lines, done)
}

fn assert_cancel_is_prompt(cancel: impl FnOnce(), done: &mpsc::Receiver<()>) {
    assert!(done.recv_timeout(Duration::from_millis(300)).is_err(), "read blocks");
    let t = Instant::now();
    cancel();
    done.recv_timeout(Duration::from_secs(5)).expect("read ended");
    let took = t.elapsed();
    assert!(took < Duration::from_millis(100), "cancel took {took:?}");
}

#[test]
fn follow_logs_and_cancel() {
    let Some(d) = engine() else { return };
    let mut made = Made::new(&d);
    let follow_opts = LogOptions { follow: true, ..Default::default() };

    let silent = made.run("silent", &["sleep", "1000"]);
    let stream = d.logs(&silent, &follow_opts).unwrap();
    let cancel = stream.cancel.clone();
    let (_, done) = follow(stream);
    // Other calls go on while a follow blocks.
    d.list_containers(false).unwrap();
    assert_cancel_is_prompt(|| cancel.cancel(), &done);

    let chatty = made.run("chatty", &["sh", "-c", "echo first; sleep 1; echo second; sleep 1000"]);
    let stream = d.logs(&chatty, &follow_opts).unwrap();
    let cancel = stream.cancel.clone();
    let (lines, done) = follow(stream);
    for want in ["first", "second"] {
        let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((line.source, line.text.as_str()), (Source::Stdout, want));
    }
    assert_cancel_is_prompt(|| cancel.cancel(), &done);
    cancel.cancel(); // again: harmless

    // A follow ends by itself when the container exits.
    let brief = made.run("brief", &["sh", "-c", "sleep 1; echo bye"]);
    let (lines, done) = follow(d.logs(&brief, &follow_opts).unwrap());
    assert_eq!(lines.recv_timeout(Duration::from_secs(10)).unwrap().text, "bye");
    done.recv_timeout(Duration::from_secs(10)).expect("stream ends at exit");
}

#[test]
fn exec_collects_output_and_exit_code() {
    let Some(d) = engine() else { return };
    let mut made = Made::new(&d);
    let id = made.run("exec", &["sleep", "1000"]);
    let sh =
        |script: &str| ExecCommand { cmd: vec!["sh".into(), "-c".into(), script.into()], ..ExecCommand::default() };

    let out = d.exec(&id, &sh("echo out; echo err >&2; echo more; exit 3"), EXEC_LIMIT, &()).unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout, "out\nmore\n");
    assert_eq!(out.stderr, "err\n");

    let in_tmp =
        ExecCommand { env: vec!["FOO=bar baz".into()], workdir: Some("/tmp".into()), ..sh("echo \"$FOO\"; pwd") };
    let out = d.exec(&id, &in_tmp, EXEC_LIMIT, &()).unwrap();
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "bar baz\n/tmp\n"));

    let out = d.exec(&id, &sh("head -c 200000 /dev/zero | tr '\\0' x"), EXEC_LIMIT, &()).unwrap();
    assert_eq!(out.stdout.len(), 200000);

    d.stop_container(&id, 0).unwrap();
    let err = d.exec(&id, &sh("true"), EXEC_LIMIT, &()).unwrap_err();
    match err {
        // Podman: "can only create exec sessions on running containers".
        EngineError::Conflict(m) => assert!(m.contains("not running") || m.contains("on running containers"), "{m}"),
        other => panic!("{other:?}"),
    }
    let err = d.exec("dcd-test-no-such-container", &sh("true"), EXEC_LIMIT, &()).unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err:?}");
}

fn remove_image(reference: &str) {
    common::docker(&["rmi", reference]);
}

#[test]
fn pull_from_local_registry() {
    let Some(d) = engine() else { return };
    if !common::require(TcpStream::connect(REGISTRY).is_ok(), &format!("a registry on {REGISTRY}")) {
        return;
    }
    remove_image(REGISTRY_IMAGE);
    let progress = d.pull_image(REGISTRY_IMAGE, None).unwrap();
    let pulled = d.list_images().unwrap().into_iter().find(|i| tagged(i, REGISTRY_IMAGE));
    let again = d.pull_image(REGISTRY_IMAGE, None).unwrap();
    // Docker ends a pull's progress with its outcome and the digest; Podman's compatible API
    // reports only the layers, and each pull alike.
    let podman = common::engine_kind().podman();
    let digest = if podman {
        let digests = pulled.as_ref().map(|i| i["RepoDigests"].clone()).unwrap_or_default();
        let digest = digests.as_array().into_iter().flatten().filter_map(Value::as_str).find_map(|d| d.split_once('@'));
        digest.map(|(_, d)| d.to_string()).unwrap_or_else(|| panic!("no digest in {digests}"))
    } else {
        progress.iter().find_map(|s| s.strip_prefix("Digest: ")).expect("a digest in the progress").to_string()
    };
    let by_digest = format!("127.0.0.1:5000/dcd-test/busybox@{digest}");
    let pinned = d.pull_image(&by_digest, None);
    remove_image(REGISTRY_IMAGE);
    remove_image(&by_digest);
    assert!(pulled.is_some(), "pulled image is listed");
    let (first, next) = if podman {
        ("Download complete", "Download complete")
    } else {
        ("Status: Downloaded newer image", "Status: Image is up to date")
    };
    assert!(progress.iter().any(|s| s.starts_with(first)), "{progress:?}");
    assert!(again.iter().any(|s| s.starts_with(next)), "{again:?}");
    assert!(pinned.is_ok(), "{pinned:?}");

    let err = d.pull_image("127.0.0.1:5000/dcd-test/absent:latest", None).unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err:?}");
}

#[test]
fn pull_from_nowhere_fails_clearly() {
    let Some(d) = engine() else { return };
    let err = d.pull_image("127.0.0.1:1/nope:latest", None).unwrap_err();
    match &err {
        EngineError::Server(m) | EngineError::NotFound(m) => {
            assert!(m.contains("127.0.0.1:1"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let err = d.pull_image("nope:", None).unwrap_err();
    assert!(matches!(err, EngineError::BadRequest(_)), "{err:?}");
}

#[test]
fn events_show_a_start() {
    let Some(d) = engine() else { return };
    let mut made = Made::new(&d);
    let stream = d.events(Some(now() - 1.0)).unwrap();
    let cancel = stream.cancel.clone();
    let (events_tx, events) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    let mut body = stream.body;
    thread::spawn(move || {
        let mut lines = JsonLines::new();
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = body.read(&mut buf) {
            lines.push(&buf[..n], &mut |v| {
                let _ = events_tx.send(v);
            });
        }
        let _ = done_tx.send(());
    });

    let id = made.run("events", &["sleep", "1000"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = events.recv_timeout(left).expect("a start event");
        // The stream carries network events too: they refresh the view of a container.
        assert!(matches!(ev["Type"].as_str(), Some("container" | "network")), "{ev}");
        if ev["Action"] == "start" && ev["Actor"]["ID"] == json!(id) {
            assert_eq!(ev["Actor"]["Attributes"]["dcd-test"], "1");
            break;
        }
    }
    assert_cancel_is_prompt(|| cancel.cancel(), &done);
}

#[test]
fn unknown_and_hostile_ids_stay_in_their_segment() {
    let Some(d) = engine() else { return };
    let err = d.inspect_container("dcd-test-no-such-container").unwrap_err();
    assert!(matches!(err, EngineError::NotFound(_)), "{err:?}");
    for id in [
        "",
        ".",
        "..",
        "../info",
        "../../version",
        "x/../../info",
        "x?all=1",
        "x#y",
        "%2e%2e",
        "json?x=",
        "a b",
        "..%2Finfo",
    ] {
        for result in [
            d.inspect_container(id).map(drop),
            d.start_container(id),
            d.remove_container(id, true),
            d.logs(id, &LogOptions::default()).map(drop),
        ] {
            assert!(matches!(result, Err(EngineError::NotFound(_) | EngineError::BadRequest(_))), "{id:?}: {result:?}");
        }
    }
}

#[test]
fn unreachable_hosts_fail_calls_not_construction() {
    for host in ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"] {
        let d = Docker::connect(Some(host)).unwrap();
        assert_eq!(d.host().as_deref(), Some(host));
        let err = d.info().unwrap_err();
        assert!(matches!(err, EngineError::Unreachable(_)), "{host}: {err:?}");
        assert!(matches!(d.ping(), Err(EngineError::Unreachable(_))), "{host}");
        let err = d.events(None).err().unwrap();
        assert!(matches!(err, EngineError::Unreachable(_)), "{host}: {err:?}");
    }
    assert!(Docker::connect(Some("ssh://example")).is_err());
}
