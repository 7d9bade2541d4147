//! Interactive exec sessions (`exec_open` and the rest): on the simulator in-process, and on
//! the real engine through a loopback nats-server, called by the unmodified Python agent tools
//! (tests/py/serve.py) as an LLM agent would call them, one step at a time.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{docker, docker_ok, subject, threads_and_rss, unique, Cleanup, MeshRig, Nats, Rig};
use dcd::engine::sim::Sim;

/// Reads a session the way an agent does: `exec_read` from the last chunk it has, waiting a
/// little for more, keeping everything in order.
struct Reader<'a> {
    call: &'a dyn Fn(&str, Value) -> Value,
    session: String,
    after: u64,
    text: String,
    exit_code: Value,
}

impl<'a> Reader<'a> {
    fn new(call: &'a dyn Fn(&str, Value) -> Value, session: &str) -> Self {
        Reader { call, session: session.to_string(), after: 0, text: String::new(), exit_code: Value::Null }
    }

    /// One `exec_read`; the bytes it brought.
    fn read(&mut self, wait_ms: u64) -> usize {
        let r =
            (self.call)("exec_read", json!({"session_id": self.session, "after_seq": self.after, "wait_ms": wait_ms}));
        assert!(r.get("lost_before").is_none(), "output was lost: {r}");
        let mut n = 0;
        for c in r["chunks"].as_array().expect("chunks") {
            let seq = c["seq"].as_u64().unwrap();
            assert_eq!(seq, self.after + 1, "chunks come in order, without gaps: {c}");
            self.after = seq;
            let data = c["data"].as_str().unwrap_or_else(|| panic!("text output comes as data: {c}"));
            n += data.len();
            self.text.push_str(data);
        }
        assert_eq!(r["next_seq"], self.after);
        self.exit_code = r["exit_code"].clone();
        n
    }

    /// Read until the output holds `needle` (after what it held before).
    fn until(&mut self, needle: &str) {
        let from = self.text.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.text[from..].contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in the session's output: {:?}", &self.text[from..]);
            self.read(2000);
        }
    }

    fn until_exit(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.exit_code.is_null() {
            assert!(Instant::now() < deadline, "the process did not exit: {:?}", self.text);
            self.read(2000);
        }
        self.exit_code.clone()
    }
}

#[test]
fn simulated_sessions_echo_exit_and_are_limited() {
    let rig = Rig::new(Arc::new(Sim::new()), true);
    let c = rig.ok("provision_container", json!({"spec": {"image": "sim/hello", "name": "shell"}}))["container"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let call = |m: &str, p: Value| rig.ok(m, p);
    let open = rig.ok("exec_open", json!({"container_id": c, "rows": 30, "cols": 100}));
    assert_eq!(
        (open["tty"].clone(), open["rows"].clone(), open["idle_timeout_s"].clone()),
        (json!(true), json!(30), json!(600))
    );
    let id = open["session_id"].as_str().unwrap().to_string();
    let mut r = Reader::new(&call, &id);
    rig.ok("exec_write", json!({"session_id": id, "data": "hello\n"}));
    r.until("hello\n");
    assert_eq!(rig.ok("exec_write", json!({"session_id": id, "data_b64": "aGkK"})), json!({"written": 3}));
    r.until("hi");
    assert!(rig.err("exec_write", json!({"session_id": id})).contains("exactly one of data and data_b64"));
    assert_eq!(
        rig.ok("exec_resize", json!({"session_id": id, "rows": 40, "cols": 120})),
        json!({"rows": 40, "cols": 120})
    );
    let listed = rig.ok("exec_sessions", json!({}));
    assert_eq!(listed["sessions"][0]["rows"], 40);
    rig.ok("exec_write", json!({"session_id": id, "data": "exit 5\n"}));
    assert_eq!(r.until_exit(), 5);
    let ev = rig.event("exec_exit", |e| e.name == "exec_exit");
    assert_eq!(common::params(&ev)["reason"], "exited");

    // The limit counts running sessions; an ended one gives its slot up.
    let ids: Vec<String> = (0..16)
        .map(|_| rig.ok("exec_open", json!({"container_id": c}))["session_id"].as_str().unwrap().into())
        .collect();
    assert!(rig.err("exec_open", json!({"container_id": c})).contains("16 exec sessions are open"));
    assert_eq!(rig.ok("exec_close", json!({"session_id": ids[0]}))["session_id"], ids[0].as_str());
    rig.ok("exec_open", json!({"container_id": c}));
    assert!(rig.err("exec_read", json!({"session_id": ids[0]})).contains("no such exec session"));
}

/// The sessions' shells in container `c`.
fn shells(c: &str) -> usize {
    docker(&["exec", c, "ps", "-o", "args"]).lines().filter(|l| matches!(l.trim(), "sh" | "/bin/sh")).count()
}

/// The daemon's threads, once they are back to `expected` (within 10 s).
fn threads_settle(rig: &MeshRig, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, _) = threads_and_rss(rig.dcd.pid());
        if now <= expected || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The next exec_exit event of `session`.
fn exec_exit(nats: &mut Nats, session: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    while let Some(m) = nats.next(deadline).unwrap() {
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.ends_with(".event.exec_exit") && body["params"]["session_id"] == session {
            return body["params"].clone();
        }
    }
    panic!("no exec_exit of {session} within {within:?}");
}

/// Wait for the state event that says container `name` runs.
fn running(nats: &mut Nats, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Some(m) = nats.next(deadline).unwrap() {
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.ends_with(".event.container_state_changed")
            && body["params"]["name"] == name
            && body["params"]["state"] == "running"
        {
            return;
        }
    }
    panic!("no state event said {name} runs");
}

fn start_container(image: &str, name: &str) {
    docker_ok(&["run", "-d", "--name", name, "--label", "dcd-test=1", image, "sleep", "600"]);
}

/// An agent's loop: three commands in one shell, outputs read in order; the events carry the
/// same output; then every way a session ends frees its thread and connection: exit, idle,
/// the container killed, and the daemon stopped with sessions open.
#[test]
fn an_agent_drives_a_shell_and_every_end_cleans_up() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let (c, other) = (unique("exs-a"), unique("exs-b"));
    let _cleanup = Cleanup(vec![c.clone(), other.clone()]);
    let mut rig = MeshRig::start(&py, &["--exec-idle-timeout", "4"], &[]);
    let mut nats = Nats::connect(rig.port).unwrap();
    nats.sub(&subject(&rig.tenant, &rig.id, "event.>")).unwrap();
    // Started once the daemon follows the engine's events: with the first of them its event
    // stream is fully open (on Podman, the thread that waits for the stream's headers ends).
    rig.ok("exec_sessions", json!({}));
    start_container(&image, &c);
    start_container(&image, &other);
    running(&mut nats, &other);
    // A first call, so that the threads that serve calls are all there.
    rig.ok("exec_sessions", json!({}));
    let (threads, _) = threads_and_rss(rig.dcd.pid());

    let call = |m: &str, p: Value| rig.ok(m, p);
    let open = rig.ok("exec_open", json!({"container_id": c, "cmd": "sh", "rows": 30, "cols": 100}));
    let id = open["session_id"].as_str().unwrap().to_string();
    let mut r = Reader::new(&call, &id);
    rig.ok("exec_write", json!({"session_id": id, "data": "echo m1-$((6*7))\n"}));
    r.until("m1-42");
    rig.ok("exec_write", json!({"session_id": id, "data": "X=m2; echo $X-$((2+3))\n"}));
    r.until("m2-5");
    // (The test image's static busybox cannot read a terminal's size, so `stty size` is no check.)
    rig.ok("exec_resize", json!({"session_id": id, "rows": 40, "cols": 120}));
    assert_eq!(rig.ok("exec_sessions", json!({}))["sessions"][0]["cols"], 120);
    rig.ok("exec_write", json!({"session_id": id, "data": "cd /tmp && pwd\n"}));
    r.until("/tmp\r\n");
    let at = |s: &str| r.text.find(s).unwrap_or_else(|| panic!("no {s:?} in {:?}", r.text));
    assert!(at("m1-42") < at("m2-5") && at("m2-5") < at("/tmp\r\n"), "{:?}", r.text);
    rig.ok("exec_write", json!({"session_id": id, "data": "exit 3\n"}));
    assert_eq!(r.until_exit(), 3);
    let end = exec_exit(&mut nats, &id, Duration::from_secs(10));
    assert_eq!((end["exit_code"].clone(), end["reason"].clone()), (json!(3), json!("exited")));
    assert_eq!(threads_settle(&rig, threads), threads, "an exited session's thread is gone");

    // Idle: neither input nor reads for 4 s.
    let idle = rig.ok("exec_open", json!({"container_id": c}))["session_id"].as_str().unwrap().to_string();
    let end = exec_exit(&mut nats, &idle, Duration::from_secs(15));
    assert_eq!(end["reason"], "idle");
    assert!(rig.err("exec_read", json!({"session_id": idle})).contains("no such exec session"));
    assert_eq!(threads_settle(&rig, threads), threads, "an idle session's thread is gone");
    assert_eq!(shells(&c), 0, "the idle shell was killed");

    // The container killed under an open session.
    let doomed = rig.ok("exec_open", json!({"container_id": other}))["session_id"].as_str().unwrap().to_string();
    docker_ok(&["kill", &other]);
    let end = exec_exit(&mut nats, &doomed, Duration::from_secs(15));
    assert_eq!(end["reason"], "container_gone");
    assert_eq!(threads_settle(&rig, threads), threads, "the dead container's session thread is gone");

    // The daemon stopped with sessions open: it exits at once, says so of each session before
    // it leaves the mesh, and the shells go with their connections.
    let open: Vec<String> = (0..3)
        .map(|_| rig.ok("exec_open", json!({"container_id": c}))["session_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shells(&c), 3);
    assert!(threads_and_rss(rig.dcd.pid()).0 >= threads + 3);
    common::stop_daemon(&mut rig.dcd);
    let mut ended = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ended.len() < open.len() {
        let Some(m) = nats.next(deadline).unwrap() else { panic!("exec_exit of only {ended:?} of {open:?}") };
        let body: Value = serde_json::from_slice(&m.payload).unwrap();
        if m.subject.ends_with(".event.exec_exit") {
            ended.insert(body["params"]["session_id"].as_str().unwrap().to_string(), body["params"]["reason"].clone());
        }
    }
    assert!(open.iter().all(|id| ended[id] == "shutdown"), "{ended:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while shells(&c) > 0 {
        assert!(Instant::now() < deadline, "the shells outlived the daemon's connections");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn policy_rig(py: &Path, dir: &Path, policy: &str) -> MeshRig {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("policy.json");
    std::fs::write(&file, policy).unwrap();
    MeshRig::start(py, &["--policy", file.to_str().unwrap()], &[])
}

#[test]
fn policy_governs_exec_open() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let (foreign, managed) = (unique("exs-foreign"), unique("exs-managed"));
    let _cleanup = Cleanup(vec![foreign.clone(), managed.clone()]);
    start_container(&image, &foreign);
    let dir = std::env::temp_dir().join(unique("exs-policy"));

    let rig = policy_rig(&py, &dir, r#"{"exec": "deny"}"#);
    let e = rig.err("exec_open", json!({"container_id": foreign}));
    assert!(e.contains("exec_open is disabled on this host"), "{e}");
    drop(rig);

    let rig = policy_rig(&py, &dir, r#"{"exec": "managed"}"#);
    let spec = json!({"image": image, "name": managed, "command": ["sleep", "600"]});
    rig.ok("provision_container", json!({"spec": spec}));
    let e = rig.err("exec_open", json!({"container_id": foreign}));
    assert!(e.contains("is not managed by dcd"), "{e}");
    let id = rig.ok("exec_open", json!({"container_id": managed, "tty": false}))["session_id"].clone();
    // 137 when the KILL lands within exec_close's wait; on a loaded machine the closed input
    // may end the shell first (0). Either way the session is over and gone.
    let code = rig.ok("exec_close", json!({"session_id": id, "signal": "KILL"}))["exit_code"].clone();
    assert!(code == 137 || code == 0, "{code}");
    assert!(rig.err("exec_read", json!({"session_id": id})).contains("no such exec session"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes of output pushed through a session with a slow reader: 50 MB, or
/// `DCD_TEST_EXEC_FLOW_MB`.
fn flow_lines() -> u64 {
    let mb: u64 = std::env::var("DCD_TEST_EXEC_FLOW_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    // `seq 1 N` prints about 7.8 bytes a line around a few million.
    mb * 1_000_000 * 10 / 78
}

/// The reader pauses, and the process waits: nothing is lost, and the daemon holds no more
/// than its ring of it.
#[test]
fn flow_control_loses_nothing_and_bounds_memory() {
    let Some((py, image)) = common::mesh_parts() else { return };
    let c = unique("exs-flow");
    let _cleanup = Cleanup(vec![c.clone()]);
    start_container(&image, &c);
    let rig = MeshRig::start(&py, &[], &[]);
    rig.ok("exec_sessions", json!({}));
    let (_, rss_before) = threads_and_rss(rig.dcd.pid());
    let lines = flow_lines();
    let cmd = json!(["seq", "1", lines.to_string()]);
    let id = rig.ok("exec_open", json!({"container_id": c, "cmd": cmd, "tty": false}))["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let call = |m: &str, p: Value| rig.ok(m, p);
    let mut r = Reader::new(&call, &id);
    // Nobody reads for a while: the process fills the ring and waits.
    std::thread::sleep(Duration::from_secs(2));
    let first = r.read(0);
    // The ring, and the one engine read that found it not yet full.
    assert!(first > 0 && first <= (256 + 16) << 10, "{first} bytes went out before anyone read");
    let started = Instant::now();
    let (mut expected, mut checked, mut next) = (String::new(), 0usize, 1u64);
    let mut rss_max = 0;
    let mut reads = 0u64;
    while r.exit_code.is_null() {
        r.read(2000);
        reads += 1;
        // Compare as it comes, so memory stays small here too.
        while expected.len() < r.text.len() && next <= lines {
            expected.push_str(&format!("{next}\n"));
            next += 1;
        }
        let n = r.text.len().min(expected.len());
        assert!(r.text[..n] == expected[..n], "output differs from what seq printed after {} bytes", checked);
        checked += n;
        r.text.drain(..n);
        expected.drain(..n);
        if reads % 16 == 0 {
            rss_max = rss_max.max(threads_and_rss(rig.dcd.pid()).1);
            // A slow reader.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(r.exit_code, 0);
    assert!(r.text.is_empty() && expected.is_empty() && next == lines + 1, "output ended early after {checked} bytes");
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "flow: {checked} bytes in {reads} reads, {secs:.1} s ({:.1} MB/s); daemon RSS {rss_before} KiB before, \
         at most {rss_max} KiB during",
        checked as f64 / secs / 1e6
    );
    assert!(rss_max < rss_before + 24 * 1024, "the daemon's RSS grew from {rss_before} to {rss_max} KiB");
}
