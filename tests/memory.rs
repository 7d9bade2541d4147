//! The memory ceiling of deploy/dcd.service, tested: the daemon runs in a transient memory
//! cgroup of 32 MiB that this test creates, under a log flood followed four times and eight
//! callers, and must stay alive and answering with no OOM kill. cgroup v2 (`memory.max`) where
//! the unified hierarchy has the memory controller, else cgroup v1 (`memory.limit_in_bytes`).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{Nats, Proc};

const CEILING: u64 = 32 << 20;

/// A memory cgroup of its own with `CEILING`, removed on drop (once its process is gone).
struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    fn create() -> Option<Cgroup> {
        let name = common::unique("mem");
        let unified = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let (dir, v2) = if unified.split_whitespace().any(|c| c == "memory") {
            (PathBuf::from("/sys/fs/cgroup").join(name), true)
        } else {
            (PathBuf::from("/sys/fs/cgroup/memory").join(name), false)
        };
        if !common::require(std::fs::create_dir(&dir).is_ok(), "root and a writable memory cgroup hierarchy") {
            return None;
        }
        let cg = Cgroup { dir, v2 };
        if v2 {
            cg.write("memory.max", CEILING);
            // Swap would let it live above the ceiling.
            cg.write("memory.swap.max", 0);
        } else {
            cg.write("memory.limit_in_bytes", CEILING);
            if cg.dir.join("memory.memsw.limit_in_bytes").exists() {
                cg.write("memory.memsw.limit_in_bytes", CEILING);
            }
        }
        Some(cg)
    }

    fn write(&self, file: &str, value: u64) {
        std::fs::write(self.dir.join(file), value.to_string())
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", self.dir.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_else(|e| panic!("{}/{file}: {e}", self.dir.display()))
    }

    /// The `oom_kill` count (v2 memory.events, v1 memory.oom_control).
    fn oom_kills(&self) -> u64 {
        let text = self.read(if self.v2 { "memory.events" } else { "memory.oom_control" });
        let field = text.lines().find_map(|l| l.strip_prefix("oom_kill "));
        field.and_then(|v| v.trim().parse().ok()).expect("an oom_kill count")
    }

    /// The most the cgroup has used, bytes.
    fn peak(&self) -> u64 {
        let text = self.read(if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" });
        text.trim().parse().expect("a byte count")
    }

    /// `cgroup.procs`, for the daemon to join before it execs.
    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn daemon_lives_within_32_mib_under_a_log_flood() {
    let Some((engine, image)) = common::real_engine() else { return };
    drop(engine);
    if !common::nats_installed() {
        return;
    }
    let Some(cg) = Cgroup::create() else { return };
    let floods: Vec<String> = (0..4).map(|k| common::unique(&format!("flood{k}"))).collect();
    let _cleanup = common::Cleanup(floods.clone());
    // About 5,000 lines a second each, 80 bytes a line.
    let script = "while true; do seq 1 500 | sed 's/^/flood line of some eighty bytes, as an application log says things: /'; sleep 0.1; done";
    for name in &floods {
        common::docker_ok(&["run", "-d", "--name", name, "--label", "dcd-test=1", &image, "sh", "-c", script]);
    }

    let (tenant, id, port) = (common::unique("memory"), "dcd-memory".to_string(), common::free_port());
    let _nats = common::nats_server(port, &[]);
    let host = common::engine_host().unwrap_or_default();
    // The daemon joins the cgroup before it execs, so all it ever uses is charged there.
    let mut cmd = common::command("sh", None);
    cmd.args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
        .arg(cg.procs())
        .arg(env!("CARGO_BIN_EXE_dcd"))
        .args(["--tenant", &tenant, "--device-id", &id])
        .envs([
            ("NATS_URL", format!("nats://127.0.0.1:{port}")),
            ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d".into()),
            ("DEVICE_CONNECT_ALLOW_INSECURE", "true".into()),
            ("DOCKER_HOST", host),
            ("RUST_LOG", "dcd=warn,dcd::mesh=info".into()),
        ]);
    let mut dcd = Proc::spawn("dcd", &mut cmd);
    dcd.expect_line(common::READY, Duration::from_secs(20));
    let pid = dcd.pid().to_string();
    assert!(cg.read("cgroup.procs").lines().any(|p| p == pid), "dcd is not in {}", cg.dir.display());

    // One subscriber takes the flood, so the server carries it rather than dropping it at once.
    let lines = Arc::new(AtomicU64::new(0));
    let subscriber = {
        let (lines, subject) = (lines.clone(), common::subject(&tenant, &id, "event.container_log_line"));
        let mut client = Nats::connect(port).unwrap();
        client.sub(&subject).unwrap();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                if let Ok(Some(_)) = client.next(Instant::now() + Duration::from_millis(200)) {
                    lines.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let cmd_subject = common::subject(&tenant, &id, "cmd");
    let call = |client: &mut Nats, method: &str, params: Value| -> Value {
        let (rid, payload) = common::rpc_request(method, params);
        let bytes = client
            .request(&cmd_subject, &payload, Duration::from_secs(20))
            .expect("NATS")
            .unwrap_or_else(|| panic!("no reply to {method} within 20 s"));
        let v: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(v["id"], rid.as_str());
        v
    };
    let mut client = Nats::connect(port).unwrap();
    for name in &floods {
        let v = call(&mut client, "container_logs", json!({"container_id": name, "follow": true}));
        assert!(v.get("result").is_some(), "follow {name}: {v}");
    }

    let until = Instant::now() + Duration::from_secs(20);
    let callers: Vec<_> = (0..8)
        .map(|k| {
            let (floods, call_subject) = (floods.clone(), cmd_subject.clone());
            std::thread::spawn(move || {
                let mut client = Nats::connect(port).unwrap();
                let mut calls = 0u64;
                while Instant::now() < until {
                    let name = &floods[(calls as usize + k) % floods.len()];
                    let (method, params) = match (calls + k as u64) % 4 {
                        0 => ("get_status", json!({})),
                        1 => ("list_containers", json!({"all_containers": true})),
                        2 => ("get_container", json!({"container_id": name})),
                        _ => ("container_logs", json!({"container_id": name, "tail": 200})),
                    };
                    let (rid, payload) = common::rpc_request(method, params);
                    let bytes = client.request(&call_subject, &payload, Duration::from_secs(20)).expect("NATS");
                    let bytes = bytes.unwrap_or_else(|| panic!("caller {k}: no reply to {method} within 20 s"));
                    let v: Value = serde_json::from_slice(&bytes).expect("JSON");
                    assert_eq!(v["id"], rid.as_str());
                    assert!(v.get("result").is_some(), "caller {k}: {method}: {v}");
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut rss_peak = 0;
    while Instant::now() < until {
        assert!(dcd.running(), "dcd died under the flood (oom_kill {})", cg.oom_kills());
        rss_peak = rss_peak.max(common::threads_and_rss(dcd.pid()).1);
        std::thread::sleep(Duration::from_secs(1));
    }
    let calls: u64 = callers.into_iter().map(|c| c.join().expect("a caller failed")).sum();
    subscriber.join().unwrap();
    assert!(dcd.running(), "dcd died under the flood");
    let v = call(&mut client, "get_status", json!({}));
    assert!(v.get("result").is_some(), "{v}");
    let (oom, peak) = (cg.oom_kills(), cg.peak());
    eprintln!(
        "MEMORY: {calls} calls by 8 callers and {} log lines of 4 follows in 20 s; cgroup peak {:.1} MiB of {} MiB \
         (cgroup v{}), dcd RSS peak {:.1} MiB, oom_kill {oom}",
        lines.load(Ordering::Relaxed),
        peak as f64 / (1 << 20) as f64,
        CEILING >> 20,
        if cg.v2 { 2 } else { 1 },
        rss_peak as f64 / 1024.0
    );
    assert_eq!(oom, 0, "the kernel killed a process of the cgroup");
    assert!(lines.load(Ordering::Relaxed) > 0, "no log line got through");
    drop(dcd);
}
