//! Log follows: one thread per followed container, each reading its own
//! engine stream and emitting one `container_log_line` per line. A follow ends
//! when the engine closes the stream (container gone or exited), on
//! `stop_container_logs`, or at shutdown; it removes itself from the table.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::json;

use crate::driver::{Events, LOG_LINE};
use crate::engine::stream::{Demux, Line};
use crate::engine::{Canceller, Engine, EngineError, LogOptions};

struct Follow {
    generation: u64,
    cancel: Canceller,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Table {
    next_generation: u64,
    follows: HashMap<String, Follow>,
}

pub struct Follows {
    engine: Arc<dyn Engine>,
    events: Events,
    table: Arc<Mutex<Table>>,
}

impl Follows {
    pub fn new(engine: Arc<dyn Engine>, events: Events) -> Self {
        Follows { engine, events, table: Arc::default() }
    }

    /// Start following `container_id` (the caller's string, used as the key
    /// and echoed in every event). Returns true when a follow already ran.
    pub fn start(&self, container_id: &str, opts: LogOptions) -> Result<bool, EngineError> {
        if lock(&self.table).follows.contains_key(container_id) {
            return Ok(true);
        }
        // The engine is asked outside the lock, so a slow engine holds up
        // neither get_status nor the other follows.
        let tty = self.engine.inspect_container(container_id)?["Config"]["Tty"] == true;
        let stream = self.engine.logs(container_id, &opts)?;
        let mut table = lock(&self.table);
        if table.follows.contains_key(container_id) {
            // A concurrent start of the same follow won.
            stream.cancel.cancel();
            return Ok(true);
        }
        table.next_generation += 1;
        let generation = table.next_generation;
        let key = container_id.to_string();
        let (events, shared) = (self.events.clone(), self.table.clone());
        let thread = std::thread::Builder::new()
            .name(format!("logs-{}", key.chars().take(8).collect::<String>()))
            .spawn({
                let key = key.clone();
                move || {
                    pump(&key, stream.body, tty, opts.timestamps, &events);
                    let mut t = lock(&shared);
                    if t.follows.get(&key).is_some_and(|f| f.generation == generation) {
                        t.follows.remove(&key);
                    }
                }
            })
            .map_err(|e| EngineError::Server(format!("cannot start log thread: {e}")))?;
        table.follows.insert(key, Follow { generation, cancel: stream.cancel, thread });
        Ok(false)
    }

    /// Stop the follow for `container_id`; false when none ran. Returns after
    /// its thread has ended.
    pub fn stop(&self, container_id: &str) -> bool {
        let follow = lock(&self.table).follows.remove(container_id);
        match follow {
            Some(f) => {
                f.cancel.cancel();
                let _ = f.thread.join();
                true
            }
            None => false,
        }
    }

    pub fn stop_all(&self) {
        let all: Vec<Follow> = lock(&self.table).follows.drain().map(|(_, f)| f).collect();
        for f in &all {
            f.cancel.cancel();
        }
        for f in all {
            let _ = f.thread.join();
        }
    }

    /// The container ids being followed, sorted.
    pub fn active(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.table).follows.keys().cloned().collect();
        v.sort();
        v
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read the stream to its end, one event per line.
fn pump(key: &str, mut body: Box<dyn Read + Send>, tty: bool, timestamps: bool, events: &Events) {
    let mut demux = Demux::new(tty, timestamps);
    let mut out = Emitter { key, events, dropped: 0 };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => demux.push(&buf[..n], &mut |l| out.line(l)),
            Err(e) => {
                log::debug!("log follow {key} ended: {e}");
                break;
            }
        }
    }
    demux.finish(&mut |l| out.line(l));
    // One last chance to tell the subscriber what it missed.
    out.notice();
    if out.dropped > 0 {
        log::warn!("log follow {key}: {} lines dropped at the end, unreported", out.dropped);
    }
}

/// Emits a follow's lines. Lines that do not fit the event queue are counted,
/// and the count is reported in a `stream: "dcd"` line as soon as the queue
/// has room again, so a chatty container neither grows memory nor stalls.
struct Emitter<'a> {
    key: &'a str,
    events: &'a Events,
    dropped: u64,
}

impl Emitter<'_> {
    fn line(&mut self, l: Line) {
        self.notice();
        let mut params = json!({"container_id": self.key, "line": l.text, "stream": l.source.as_str()});
        if let Some(ts) = l.ts {
            params["ts_engine"] = json!(ts);
        }
        if !self.events.emit(LOG_LINE, params) {
            self.dropped += 1;
        }
    }

    fn notice(&mut self) {
        let n = self.dropped;
        if n > 0
            && self.events.emit(
                LOG_LINE,
                json!({"container_id": self.key, "stream": "dcd",
                       "line": format!("dcd: {n} log lines dropped (event queue full)")}),
            )
        {
            log::warn!("log follow {}: {n} lines dropped", self.key);
            self.dropped = 0;
        }
    }
}
