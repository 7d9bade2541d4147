//! An in-memory engine for `--sim`: containers with Engine-API-shaped inspect
//! data, logs that print a few lines, exec that echoes, and an events stream,
//! so every RPC and both events work with no Docker on the machine.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::{json, Value};

use crate::sync::lock;

use super::{
    Canceller, Credentials, Engine, EngineError, ExecCommand, ExecOutput, ExecSession, ExecSpec, LogOptions, Object,
    PullProgress, Result, Stream, Watch,
};

/// The one account the simulated registry knows (username, password). Pulls
/// without credentials are public; pulls with any other credentials fail.
pub const SIM_ACCOUNT: (&str, &str) = ("dcd", "dcd-sim");

/// Images under this prefix pull slowly (`SLOW_PULL`), to show a pull's
/// progress and let it be cancelled; all others pull at once.
pub const SLOW_PREFIX: &str = "sim/slow";
/// How long a slow simulated pull takes.
pub const SLOW_PULL: Duration = Duration::from_secs(5);
/// The simulated layers of every pull, and their size.
const SIM_LAYERS: u64 = 2;
const SIM_LAYER_BYTES: u64 = 4 << 20;
const DAY: Duration = Duration::from_secs(86_400);
/// How often a simulated wait looks whether it was stopped.
const SIM_TICK: Duration = Duration::from_millis(50);

#[derive(Default)]
struct World {
    containers: BTreeMap<String, Value>,
    images: Vec<String>,
    /// Networks and volumes by name, as the engine lists them.
    objects: BTreeMap<(u8, String), Value>,
    subscribers: Vec<Sender<Vec<u8>>>,
}

#[derive(Default)]
pub struct Sim {
    world: Mutex<World>,
    /// Exit codes of the interactive execs that ended with `exit N`, by exec id.
    exits: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl Sim {
    pub fn new() -> Self {
        let sim = Sim::default();
        sim.world().images.push("sim/hello:latest".into());
        sim
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        lock(&self.world)
    }
}

impl World {
    /// Find by full id, id prefix or name, as the engine does.
    fn find(&self, key: &str) -> Result<String> {
        if key.is_empty() {
            return Err(EngineError::NotFound("container name or id is empty".into()));
        }
        // As the engine resolves: a full id, then a name, then an id prefix
        // that names one container. Names first, or a short name ("a") finds
        // whichever container's random id happens to begin with it.
        if self.containers.contains_key(key) {
            return Ok(key.to_string());
        }
        let name = format!("/{key}");
        if let Some((id, _)) = self.containers.iter().find(|(_, c)| c["Name"] == name.as_str()) {
            return Ok(id.clone());
        }
        let mut prefixed = self.containers.keys().filter(|id| id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some(id), None) => Ok(id.clone()),
            (Some(_), Some(_)) => Err(EngineError::NotFound(format!("multiple IDs found with provided prefix: {key}"))),
            (None, _) => Err(EngineError::NotFound(format!("No such container: {key}"))),
        }
    }

    fn set_state(&mut self, id: &str, state: &str, action: &str) {
        let c = self.containers.get_mut(id).expect("id from find");
        c["State"]["Status"] = json!(state);
        c["State"]["Running"] = json!(state == "running");
        self.announce(id, action);
    }

    /// Publish container event `action`, as the engine does.
    fn announce(&mut self, id: &str, action: &str) {
        let c = &self.containers[id];
        let ev = json!({"Type": "container", "Action": action, "timeNano": now_nano(),
            "Actor": {"ID": id, "Attributes": {"name": c["Name"].as_str().unwrap_or("/").trim_start_matches('/'),
                                                 "image": c["Config"]["Image"]}}});
        self.publish(ev);
    }

    fn publish(&mut self, ev: Value) {
        let mut line = ev.to_string().into_bytes();
        line.push(b'\n');
        self.subscribers.retain(|s| s.send(line.clone()).is_ok());
    }
}

/// Sleep `d`, or until `watch` stops it: false when stopped.
fn sleep_watched(d: Duration, watch: &dyn Watch) -> bool {
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    watch.stoppable(Canceller::new(move || flag.store(true, Ordering::Relaxed)));
    let end = Instant::now() + d;
    while !stopped.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(SIM_TICK));
    }
    false
}

fn now_nano() -> i64 {
    (crate::time::now_epoch() * 1e9) as i64
}

/// A blocking reader over chunks from a channel. An empty chunk, or every
/// sender gone, is the end of the stream.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    /// Keeps a follow open until cancelled, as a quiet container does.
    _open: Option<Sender<Vec<u8>>>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.pending = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// A stream fed through the returned sender; cancelling it queues the end.
fn channel_stream(keep_open: bool) -> (Sender<Vec<u8>>, Stream) {
    let (tx, rx) = unbounded::<Vec<u8>>();
    let end = tx.clone();
    let stream = Stream {
        body: Box::new(ChannelReader { rx, pending: Vec::new(), _open: keep_open.then(|| tx.clone()) }),
        cancel: Canceller::new(move || {
            let _ = end.send(Vec::new());
        }),
    };
    (tx, stream)
}

/// One multiplexed frame of the Engine's log format (`stream` 1 is stdout, 2 stderr).
fn frame(stream: u8, text: &str) -> Vec<u8> {
    let mut f = vec![stream, 0, 0, 0];
    f.extend_from_slice(&(text.len() as u32).to_be_bytes());
    f.extend_from_slice(text.as_bytes());
    f
}

/// A simulated interactive exec: a shell that only echoes, as a terminal
/// echoes what is typed; a line `exit [N]` ends it with code N. An empty
/// message on its channel is the end of its input or of the connection.
struct SimShell {
    rx: Receiver<Vec<u8>>,
    tty: bool,
    line: Vec<u8>,
    pending: Vec<u8>,
    ended: bool,
    exec_id: String,
    exits: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl Read for SimShell {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.ended {
                return Ok(0);
            }
            let typed = match self.rx.recv_timeout(SIM_TICK * 20) {
                Ok(b) if !b.is_empty() => b,
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(0),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => return Err(io::ErrorKind::TimedOut.into()),
            };
            for &c in &typed {
                if c != b'\n' {
                    self.line.push(c);
                    continue;
                }
                let line = String::from_utf8_lossy(&self.line).trim().to_string();
                if let Some(code) = line.strip_prefix("exit").filter(|r| r.is_empty() || r.starts_with(' ')) {
                    lock(&self.exits).insert(self.exec_id.clone(), code.trim().parse().unwrap_or(0));
                    self.ended = true;
                }
                self.line.clear();
            }
            self.pending = if self.tty { typed } else { frame(1, &String::from_utf8_lossy(&typed)) };
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

struct SimInput(Sender<Vec<u8>>);

impl Write for SimInput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            self.0.send(buf.to_vec()).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Engine for Sim {
    fn info(&self) -> Result<Value> {
        let w = self.world();
        Ok(json!({"docker_version": "sim-0.1.0", "api_version": "1.45", "os": "simulated",
                  "arch": "arm64", "containers": w.containers.len(), "images": w.images.len()}))
    }

    fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn list_containers(&self, all: bool) -> Result<Vec<Value>> {
        let w = self.world();
        Ok(w.containers
            .iter()
            .filter(|(_, c)| all || c["State"]["Status"] == "running")
            .map(|(id, c)| {
                json!({"Id": id, "Names": [c["Name"]], "Image": c["Config"]["Image"],
                       "State": c["State"]["Status"], "Labels": c["Config"]["Labels"]})
            })
            .collect())
    }

    fn inspect_container(&self, id: &str) -> Result<Value> {
        let w = self.world();
        let id = w.find(id)?;
        Ok(w.containers[&id].clone())
    }

    fn create_container(&self, name: Option<&str>, body: &Value) -> Result<String> {
        let mut w = self.world();
        let id = format!("{}{}", crate::ids::random_hex(32), crate::ids::random_hex(32));
        let name = name.map(String::from).unwrap_or_else(|| format!("dcd-{}", &id[..12]));
        if w.containers.values().any(|c| c["Name"] == format!("/{name}").as_str()) {
            return Err(EngineError::Conflict(format!("the container name \"/{name}\" is already in use")));
        }
        let image = body["Image"].as_str().unwrap_or_default();
        if image.is_empty() {
            return Err(EngineError::BadRequest("image is required".into()));
        }
        let mut networks = serde_json::Map::new();
        for (net, endpoint) in body["NetworkingConfig"]["EndpointsConfig"].as_object().into_iter().flatten() {
            if !w.objects.contains_key(&(Object::Network as u8, net.clone())) {
                return Err(EngineError::NotFound(format!("network {net} not found")));
            }
            networks.insert(net.clone(), json!({"Aliases": endpoint["Aliases"], "IPAddress": ""}));
        }
        let created = crate::time::now_rfc3339().replace('Z', "+00:00");
        w.containers.insert(
            id.clone(),
            json!({"Id": id, "Name": format!("/{name}"), "Created": created,
                   "Config": {"Image": image, "Labels": body["Labels"], "Tty": false, "Cmd": body["Cmd"],
                              "Env": body["Env"], "Healthcheck": body["Healthcheck"]},
                   "State": {"Status": "created", "Running": false, "ExitCode": 0},
                   "HostConfig": body["HostConfig"], "NetworkSettings": {"Ports": {}, "Networks": networks}}),
        );
        w.set_state(&id, "created", "create");
        Ok(id)
    }

    fn start_container(&self, id: &str) -> Result<()> {
        let mut w = self.world();
        let id = w.find(id)?;
        if w.containers[&id]["State"]["Status"] != "running" {
            w.set_state(&id, "running", "start");
            let c = w.containers.get_mut(&id).expect("id from find");
            // A healthcheck passes at once; `true` and `false` exit at once, as one-shot jobs do.
            let test = &c["Config"]["Healthcheck"]["Test"];
            if test.is_array() && test[0] != "NONE" {
                c["State"]["Health"] = json!({"Status": "healthy"});
            }
            let exit = match c["Config"]["Cmd"][0].as_str() {
                Some("true") => Some(0),
                Some("false") => Some(1),
                _ => None,
            };
            if let Some(code) = exit {
                c["State"]["ExitCode"] = json!(code);
                w.set_state(&id, "exited", "die");
            }
        }
        Ok(())
    }

    fn stop_container(&self, id: &str, _timeout_s: i64) -> Result<()> {
        let mut w = self.world();
        let id = w.find(id)?;
        if w.containers[&id]["State"]["Status"] == "running" {
            w.set_state(&id, "exited", "die");
        }
        Ok(())
    }

    fn restart_container(&self, id: &str, _timeout_s: i64) -> Result<()> {
        let mut w = self.world();
        let id = w.find(id)?;
        w.set_state(&id, "running", "restart");
        Ok(())
    }

    fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let mut w = self.world();
        let id = w.find(id)?;
        if w.containers[&id]["State"]["Status"] == "running" && !force {
            return Err(EngineError::Conflict(format!(
                "cannot remove container {}: container is running: stop the container before removing or force remove",
                &id[..12]
            )));
        }
        w.set_state(&id, "removing", "destroy");
        w.containers.remove(&id);
        Ok(())
    }

    fn rename_container(&self, id: &str, name: &str) -> Result<()> {
        let mut w = self.world();
        let id = w.find(id)?;
        if w.containers.values().any(|c| c["Name"] == format!("/{name}").as_str()) {
            return Err(EngineError::Conflict(format!("the container name \"/{name}\" is already in use")));
        }
        w.containers.get_mut(&id).expect("id from find")["Name"] = json!(format!("/{name}"));
        w.announce(&id, "rename");
        Ok(())
    }

    fn logs(&self, id: &str, opts: &LogOptions) -> Result<Stream> {
        let name = {
            let w = self.world();
            let id = w.find(id)?;
            w.containers[&id]["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string()
        };
        let (tx, stream) = channel_stream(opts.follow);
        let lines = 3u64.min(opts.tail.unwrap_or(3));
        let ts = crate::time::now_rfc3339();
        for i in 0..lines {
            let text = format!("simulated log line {} from {name}\n", i + 1);
            // The third line on stderr, so followers see both streams as from a real container.
            let stream = if i == 2 { 2 } else { 1 };
            let _ = tx.send(frame(stream, &if opts.timestamps { format!("{ts} {text}") } else { text }));
        }
        if !opts.follow {
            let _ = tx.send(Vec::new());
        }
        Ok(stream)
    }

    /// Echoes the command; `sleep N` sleeps, until `limit` or a stop.
    fn exec(&self, id: &str, command: &ExecCommand, limit: Duration, watch: &dyn Watch) -> Result<ExecOutput> {
        let cmd = command.cmd.as_slice();
        {
            let w = self.world();
            let id = w.find(id)?;
            if w.containers[&id]["State"]["Status"] != "running" {
                return Err(EngineError::Conflict(format!("container {} is not running", &id[..12])));
            }
        }
        let stdout = format!("simulated: {}\n", cmd.join(" "));
        let sleep = match cmd {
            // At most a day: a simulated sleep need not be longer.
            [c, n] if c == "sleep" => {
                n.parse().ok().and_then(|n| Duration::try_from_secs_f64(n).ok()).map(|d| d.min(DAY))
            }
            _ => None,
        };
        if let Some(d) = sleep {
            if !sleep_watched(d.min(limit), watch) || d > limit {
                return Ok(ExecOutput { exit_code: 137, stdout, stderr: String::new(), killed: true });
            }
        }
        let exit_code = if cmd.first().map(String::as_str) == Some("false") { 1 } else { 0 };
        Ok(ExecOutput { exit_code, stdout, stderr: String::new(), killed: false })
    }

    fn exec_session(&self, id: &str, spec: &ExecSpec) -> Result<ExecSession> {
        {
            let w = self.world();
            let id = w.find(id)?;
            if w.containers[&id]["State"]["Status"] != "running" {
                return Err(EngineError::Conflict(format!("container {} is not running", &id[..12])));
            }
        }
        let (tx, rx) = unbounded();
        let exec_id = crate::ids::random_hex(32);
        let shell = SimShell {
            rx,
            tty: spec.tty,
            line: Vec::new(),
            pending: Vec::new(),
            ended: false,
            exec_id: exec_id.clone(),
            exits: self.exits.clone(),
        };
        let (closer, eof) = (tx.clone(), tx.clone());
        Ok(ExecSession {
            exec_id,
            mark: String::new(),
            output: Box::new(shell),
            input: Box::new(SimInput(tx)),
            end_input: Canceller::new(move || drop(eof.send(Vec::new()))),
            cancel: Canceller::new(move || drop(closer.send(Vec::new()))),
        })
    }

    fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        lock(&self.exits)
            .get(exec_id)
            .copied()
            .ok_or_else(|| EngineError::NotFound(format!("no exit code for {exec_id}")))
    }

    fn pull_image(&self, image: &str, auth: Option<&Credentials>) -> Result<Vec<String>> {
        self.pull_watched(image, auth, &())
    }

    /// Two layers of 4 MiB each, reported in steps; at once, or over
    /// `SLOW_PULL` for an image under `SLOW_PREFIX`.
    fn pull_watched(&self, image: &str, auth: Option<&Credentials>, watch: &dyn Watch) -> Result<Vec<String>> {
        if auth.is_some_and(|c| (c.username.as_str(), c.password.as_str()) != SIM_ACCOUNT) {
            // As a registry answers a wrong login, so that credentials are checked in --sim too.
            return Err(EngineError::Server(format!(
                "Get \"https://sim-registry/v2/\": unauthorized: incorrect username or password (pulling {image})"
            )));
        }
        const STEPS: u64 = 20;
        let slow = image.starts_with(SLOW_PREFIX);
        let total = SIM_LAYERS * SIM_LAYER_BYTES;
        for step in 1..=STEPS {
            if slow && !sleep_watched(SLOW_PULL / STEPS as u32, watch) {
                return Err(EngineError::Unreachable(format!("the pull of {image} was stopped")));
            }
            let bytes_done = total * step / STEPS;
            watch.pulled(&PullProgress {
                bytes_done,
                bytes_total: total,
                layers_done: bytes_done / SIM_LAYER_BYTES,
                layers_total: SIM_LAYERS,
                status: "Downloading".into(),
            });
        }
        let mut w = self.world();
        let full = if image.rsplit('/').next().is_some_and(|l| l.contains(':')) {
            image.to_string()
        } else {
            format!("{image}:latest")
        };
        if !w.images.contains(&full) {
            w.images.push(full.clone());
        }
        Ok(vec![format!("Pulling from {image}"), format!("Status: Downloaded newer image for {full}")])
    }

    fn list_images(&self) -> Result<Vec<Value>> {
        let w = self.world();
        Ok(w.images
            .iter()
            .enumerate()
            .map(|(i, tag)| json!({"Id": format!("sha256:{:064x}", i + 1), "RepoTags": [tag], "Size": 1_048_576, "Created": 1_767_225_600}))
            .collect())
    }

    fn inspect_image(&self, reference: &str) -> Result<Value> {
        let w = self.world();
        match w.images.iter().position(|i| i == reference) {
            Some(i) => Ok(json!({"Id": format!("sha256:{:064x}", i + 1), "RepoTags": [reference]})),
            None => Err(EngineError::NotFound(format!("No such image: {reference}"))),
        }
    }

    fn stats(&self, id: &str) -> Result<Value> {
        let w = self.world();
        let id = w.find(id)?;
        let running = w.containers[&id]["State"]["Status"] == "running";
        let cpu = |total: u64, system: u64| json!({"cpu_usage": {"total_usage": total}, "system_cpu_usage": system, "online_cpus": 4});
        Ok(json!({
            "cpu_stats": if running { cpu(2_000_000, 40_000_000) } else { cpu(0, 0) },
            "precpu_stats": if running { cpu(1_000_000, 20_000_000) } else { cpu(0, 0) },
            "memory_stats": {"usage": if running { 8 << 20 } else { 0 }, "limit": 1u64 << 30, "stats": {}},
            "networks": {"eth0": {"rx_bytes": 1024, "tx_bytes": 512}},
            "blkio_stats": {"io_service_bytes_recursive": []},
            "pids_stats": {"current": u32::from(running)},
        }))
    }

    fn list_objects(&self, kind: Object) -> Result<Vec<Value>> {
        Ok(self.world().objects.iter().filter(|((k, _), _)| *k == kind as u8).map(|(_, v)| v.clone()).collect())
    }

    fn create_object(&self, kind: Object, body: &Value) -> Result<Value> {
        let name = body["Name"].as_str().unwrap_or_default().to_string();
        let mut w = self.world();
        if w.objects.contains_key(&(kind as u8, name.clone())) {
            return Err(EngineError::Conflict(format!("{name} already exists")));
        }
        let id = crate::ids::random_hex(64);
        let mut v = json!({"Id": id, "Name": name, "Labels": body["Labels"], "Driver": body["Driver"].as_str().unwrap_or("local")});
        if kind == Object::Volume {
            v["Options"] = body["DriverOpts"].clone();
        }
        w.objects.insert((kind as u8, name), v.clone());
        Ok(v)
    }

    fn inspect_object(&self, kind: Object, id: &str) -> Result<Value> {
        let w = self.world();
        let found = w.objects.iter().find(|((k, n), v)| *k == kind as u8 && (n == id || v["Id"] == id));
        found.map(|(_, v)| v.clone()).ok_or_else(|| EngineError::NotFound(format!("no such {kind:?}: {id}")))
    }

    fn remove_object(&self, kind: Object, id: &str, _force: bool) -> Result<()> {
        let mut w = self.world();
        let key =
            w.objects.iter().find(|((k, n), v)| *k == kind as u8 && (n == id || v["Id"] == id)).map(|(k, _)| k.clone());
        match key {
            Some(k) => {
                w.objects.remove(&k);
                Ok(())
            }
            None => Err(EngineError::NotFound(format!("no such {kind:?}: {id}"))),
        }
    }

    fn connect_network(&self, network: &str, id: &str, aliases: &[String]) -> Result<()> {
        let mut w = self.world();
        let id = w.find(id)?;
        if !w.objects.contains_key(&(Object::Network as u8, network.to_string())) {
            return Err(EngineError::NotFound(format!("network {network} not found")));
        }
        let c = w.containers.get_mut(&id).expect("id from find");
        c["NetworkSettings"]["Networks"][network] = json!({"Aliases": aliases, "IPAddress": ""});
        let ev = json!({"Type": "network", "Action": "connect", "timeNano": now_nano(),
            "Actor": {"ID": network, "Attributes": {"container": id, "name": network}}});
        w.publish(ev);
        Ok(())
    }

    fn remove_image(&self, reference: &str, _force: bool) -> Result<Value> {
        let mut w = self.world();
        let before = w.images.len();
        w.images.retain(|i| i != reference);
        match w.images.len() < before {
            true => Ok(json!([{"Untagged": reference}])),
            false => Err(EngineError::NotFound(format!("No such image: {reference}"))),
        }
    }

    fn prune_images(&self, _filters: &Value) -> Result<Value> {
        Ok(json!({"ImagesDeleted": null, "SpaceReclaimed": 0}))
    }

    fn events(&self, _since: Option<f64>) -> Result<Stream> {
        let (tx, stream) = channel_stream(false);
        self.world().subscribers.push(tx);
        Ok(stream)
    }

    fn host(&self) -> Option<String> {
        None
    }
}

/// For unit tests: the simulator with streams a test scripts in place of its own, and an event
/// stream that can be cut and restored.
#[cfg(test)]
pub(crate) mod scripted {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    pub(crate) struct Scripted {
        pub sim: Sim,
        /// Handed out by `logs`, oldest first; the simulator's own when none is left.
        logs: Mutex<VecDeque<Stream>>,
        /// `events` fails while this is false, as for an engine that is down.
        events_up: AtomicBool,
        /// The event streams handed out, so `cut_events` can end them.
        event_streams: Mutex<Vec<Canceller>>,
    }

    impl Scripted {
        pub fn new() -> Scripted {
            let events_up = AtomicBool::new(true);
            Scripted { sim: Sim::new(), logs: Mutex::default(), events_up, event_streams: Mutex::default() }
        }

        /// A log stream for the next `logs` call, fed through the sender: a chunk of bytes at a
        /// time, an empty chunk for the end. It also ends when cancelled.
        pub fn script_log(&self) -> Sender<Vec<u8>> {
            let (tx, stream) = channel_stream(false);
            lock(&self.logs).push_back(stream);
            tx
        }

        /// End every event stream, and refuse new ones until `restore_events`.
        pub fn cut_events(&self) {
            self.events_up.store(false, Ordering::SeqCst);
            for c in lock(&self.event_streams).drain(..) {
                c.cancel();
            }
        }

        pub fn restore_events(&self) {
            self.events_up.store(true, Ordering::SeqCst);
        }

        /// How many event streams were handed out since the last cut.
        pub fn event_streams(&self) -> usize {
            lock(&self.event_streams).len()
        }
    }

    /// One frame of the engine's multiplexed log format: `stream` 1 is stdout, 2 stderr.
    pub(crate) fn log_frame(stream: u8, text: &str) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(text.len() as u32).to_be_bytes());
        f.extend_from_slice(text.as_bytes());
        f
    }

    impl Engine for Scripted {
        fn logs(&self, id: &str, opts: &LogOptions) -> Result<Stream> {
            self.sim.inspect_container(id)?;
            match lock(&self.logs).pop_front() {
                Some(s) => Ok(s),
                None => self.sim.logs(id, opts),
            }
        }

        fn events(&self, since: Option<f64>) -> Result<Stream> {
            if !self.events_up.load(Ordering::SeqCst) {
                return Err(EngineError::Unreachable("scripted: events are cut".into()));
            }
            let s = self.sim.events(since)?;
            lock(&self.event_streams).push(s.cancel.clone());
            Ok(s)
        }

        // The rest is the simulator's.
        fn info(&self) -> Result<Value> {
            self.sim.info()
        }
        fn ping(&self) -> Result<()> {
            self.sim.ping()
        }
        fn list_containers(&self, all: bool) -> Result<Vec<Value>> {
            self.sim.list_containers(all)
        }
        fn inspect_container(&self, id: &str) -> Result<Value> {
            self.sim.inspect_container(id)
        }
        fn create_container(&self, name: Option<&str>, body: &Value) -> Result<String> {
            self.sim.create_container(name, body)
        }
        fn start_container(&self, id: &str) -> Result<()> {
            self.sim.start_container(id)
        }
        fn stop_container(&self, id: &str, timeout_s: i64) -> Result<()> {
            self.sim.stop_container(id, timeout_s)
        }
        fn restart_container(&self, id: &str, timeout_s: i64) -> Result<()> {
            self.sim.restart_container(id, timeout_s)
        }
        fn remove_container(&self, id: &str, force: bool) -> Result<()> {
            self.sim.remove_container(id, force)
        }
        fn rename_container(&self, id: &str, name: &str) -> Result<()> {
            self.sim.rename_container(id, name)
        }
        fn exec(&self, id: &str, command: &ExecCommand, limit: Duration, watch: &dyn Watch) -> Result<ExecOutput> {
            self.sim.exec(id, command, limit, watch)
        }
        fn pull_image(&self, image: &str, auth: Option<&Credentials>) -> Result<Vec<String>> {
            self.sim.pull_image(image, auth)
        }
        fn list_images(&self) -> Result<Vec<Value>> {
            self.sim.list_images()
        }
        fn inspect_image(&self, reference: &str) -> Result<Value> {
            self.sim.inspect_image(reference)
        }
        fn stats(&self, id: &str) -> Result<Value> {
            self.sim.stats(id)
        }
        fn list_objects(&self, kind: Object) -> Result<Vec<Value>> {
            self.sim.list_objects(kind)
        }
        fn create_object(&self, kind: Object, body: &Value) -> Result<Value> {
            self.sim.create_object(kind, body)
        }
        fn inspect_object(&self, kind: Object, id: &str) -> Result<Value> {
            self.sim.inspect_object(kind, id)
        }
        fn remove_object(&self, kind: Object, id: &str, force: bool) -> Result<()> {
            self.sim.remove_object(kind, id, force)
        }
        fn connect_network(&self, network: &str, id: &str, aliases: &[String]) -> Result<()> {
            self.sim.connect_network(network, id, aliases)
        }
        fn remove_image(&self, reference: &str, force: bool) -> Result<Value> {
            self.sim.remove_image(reference, force)
        }
        fn prune_images(&self, filters: &Value) -> Result<Value> {
            self.sim.prune_images(filters)
        }
        fn host(&self) -> Option<String> {
            self.sim.host()
        }
    }
}
