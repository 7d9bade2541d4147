//! tests/py/events.py as a client that both calls a device and hears its events, the way the
//! unmodified Python agent tools do (tests/topology.rs, tests/cluster.rs).

use std::io::Write;
use std::path::Path;
use std::process::ChildStdin;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{script_command, Netns, Proc};

/// The test image (tests/setup.sh builds it).
pub const IMAGE: &str = "dcd-test/busybox:latest";
/// How long a client waits for what a device should do promptly.
pub const WAIT: Duration = Duration::from_secs(20);

/// tests/py/events.py as the client: it calls the device (one request a line on its stdin) and
/// prints what the agent tools receive from it, state changes, log lines and heartbeats.
pub struct Client {
    proc: Proc,
    stdin: ChildStdin,
    /// Every JSON line so far, so a wait finds what came while waiting for something else.
    seen: Vec<Value>,
    requests: u64,
}

impl Client {
    pub fn start(ns: Option<&Netns>, py: &Path, id: &str, env: &[(&str, &str)]) -> Client {
        let args = [
            id,
            "--selector",
            "event(container_state_changed)",
            "--selector",
            "event(container_log_line)",
            "--heartbeat",
        ];
        let (proc, stdin) = Proc::spawn_piped("events.py", &mut script_command(ns, py, "events.py", &args, env));
        Client { proc, stdin, seen: Vec::new(), requests: 0 }
    }

    /// Discovered the device (presence or the registry) and had its `get_status` answered.
    pub fn ready(&mut self) {
        self.wait("discovery of the device", WAIT * 2, |m| m["ready"] == true);
    }

    /// The first line matching `f`, seen before or within `within`.
    pub fn wait(&mut self, what: &str, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(m) = self.seen.iter().find(|m| f(m)) {
            return m.clone();
        }
        let deadline = Instant::now() + within;
        while let Some(line) = self.proc.next_line(deadline) {
            let Ok(m) = serde_json::from_str::<Value>(&line) else { continue };
            self.seen.push(m.clone());
            if f(&m) {
                return m;
            }
        }
        panic!("{}: no {what} within {within:?}", self.proc.name);
    }

    /// The result of `method`, which must succeed.
    pub fn ok(&mut self, method: &str, params: Value) -> Value {
        self.requests += 1;
        let id = self.requests;
        writeln!(self.stdin, "{}", json!({"id": id, "method": method, "params": params})).expect("events.py's stdin");
        let reply = self.wait(&format!("reply to {method}"), Duration::from_secs(40), |m| m["id"] == id);
        match reply.get("result") {
            Some(r) if r["status"] == "success" => r.clone(),
            _ => panic!("{method} {params}: {reply}"),
        }
    }

    /// A container made and started through the device; its id.
    pub fn provision(&mut self, name: &str, command: &[&str]) -> String {
        let spec = json!({"image": IMAGE, "name": name, "command": command});
        let r = self.ok("provision_container", json!({"spec": spec}));
        r["container"]["id"].as_str().expect("a container id").to_string()
    }

    pub fn heartbeat(&mut self, id: &str) {
        self.wait("heartbeat", WAIT, |m| {
            m["device_id"] == id && m["_subject"].as_str().is_some_and(|s| s.ends_with("heartbeat"))
        });
    }

    pub fn state(&mut self, cid: &str, state: &str) {
        self.wait(&format!("{cid} {state}"), WAIT, |m| {
            m["method"] == "container_state_changed"
                && m["params"]["container_id"] == cid
                && m["params"]["state"] == state
        });
    }

    pub fn transition(&mut self, cid: &str, from: &str, to: &str) {
        self.wait(&format!("{cid} {from} -> {to}"), WAIT, |m| {
            let p = &m["params"];
            m["method"] == "container_state_changed"
                && p["container_id"] == cid
                && p["previous_state"] == from
                && p["state"] == to
        });
    }
}
