//! Events for the mesh: their names, the schemas we advertise for them, and
//! the two bounded queues that carry them to the transport thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use serde_json::{json, Map, Value};

use crate::ids::random_hex;

pub const STATE_CHANGED: &str = "container_state_changed";
pub const LOG_LINE: &str = "container_log_line";
/// Extension, opt-in: the engine's container events as they come.
pub const ENGINE_EVENT: &str = "engine_event";
/// Extension: how far a job got, at most twice a second per job.
pub const JOB_PROGRESS: &str = "job_progress";
/// Extension: a job ended.
pub const JOB_FINISHED: &str = "job_finished";
/// Extension: output of an interactive exec session, numbered per session.
pub const EXEC_OUTPUT: &str = "exec_output";
/// Extension: an interactive exec session ended.
pub const EXEC_EXIT: &str = "exec_exit";

/// An event for the mesh: its name (the last token of its subject) and the
/// whole JSON-RPC notification (spec §4.1). The emitting thread builds it, so
/// the transport thread only puts bytes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub payload: Vec<u8>,
}

impl Event {
    pub fn new(name: &'static str, params: Value) -> Event {
        let mut params = match params {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        params.insert("event_id".into(), json!(random_hex(8)));
        params.insert("ts".into(), json!(crate::time::now_rfc3339()));
        params.insert("_trace_id".into(), json!(random_hex(16)));
        let body = json!({"jsonrpc": "2.0", "method": name, "params": params});
        Event { name, payload: body.to_string().into_bytes() }
    }
}

/// How long a log follow waits for room in its queue before it drops lines.
/// The engine keeps the log, so waiting loses nothing; only a transport stuck
/// this long makes a follow drop (and say so).
const LOG_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting follow checks whether it was stopped.
const LOG_WAIT_SLICE: Duration = Duration::from_millis(20);

/// The sending side of the two bounded event queues to the transport: one
/// for state changes, one for the bulk (log lines, forwarded engine events),
/// so a chatty container can crowd out only bulk, never a
/// `container_state_changed`.
#[derive(Clone)]
pub struct Events {
    state: Sender<Event>,
    bulk: Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl Events {
    pub fn new(state: Sender<Event>, bulk: Sender<Event>) -> Self {
        Events { state, bulk, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queue an event without waiting; false when its queue is full and it
    /// was dropped. The state thread must never wait on the transport. A job's
    /// end is as rare and as awaited as a state change, so it shares that queue.
    pub fn emit(&self, name: &'static str, params: Value) -> bool {
        let queue = if matches!(name, STATE_CHANGED | JOB_FINISHED | EXEC_EXIT) { &self.state } else { &self.bulk };
        match queue.try_send(Event::new(name, params)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.count_drop();
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Queue a log line, waiting up to `LOG_WAIT` for room unless `stopped`
    /// is set; false when it was dropped.
    pub fn emit_line(&self, params: Value, stopped: &AtomicBool) -> bool {
        self.emit_waiting(LOG_LINE, params, stopped)
    }

    /// Queue a bulk event as `emit_line` queues a log line.
    pub fn emit_waiting(&self, name: &'static str, params: Value, stopped: &AtomicBool) -> bool {
        let mut ev = Event::new(name, params);
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            match self.bulk.send_timeout(ev, LOG_WAIT_SLICE) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => {
                    if stopped.load(Ordering::Relaxed) || Instant::now() >= deadline {
                        self.count_drop();
                        return false;
                    }
                    ev = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Events dropped so far, for tests to wait on.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn count_drop(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::warn!("event queue full: {n} events dropped so far");
        }
    }
}

/// The events of presence and registration (spec §3.2), with their payload
/// schemas. A field gets a description only where its name and type leave
/// something to say: every byte here goes to every client, often (issue 16).
pub fn advertised(engine_events: bool) -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    let plain = json!({"type": "string"});
    let mut events = json!([
        {"name": STATE_CHANGED, "description": "Emitted when a container transitions state.",
         "payload_schema": {"type": "object", "properties": {
             "container_id": string("12-character id."),
             "name": plain,
             "previous_state": {"type": ["string", "null"], "description": "null for a new container."},
             "state": string("New state; \"removed\" when gone."),
             "image": plain},
           "required": ["container_id", "name", "previous_state", "state", "image"]}},
        {"name": LOG_LINE,
         "description": "Emitted for each log line when ``container_logs`` is called with ``follow=true``.",
         "payload_schema": {"type": "object", "properties": {
             "container_id": string("As passed to container_logs."),
             "line": string("Without its newline."),
             "stream": {"type": "string", "default": "stdout",
                        "description": "stdout, stderr, or dcd: a notice that lines were dropped."},
             "ts_engine": string("The engine's RFC3339Nano time, when the follow asked for timestamps.")},
           "required": ["container_id", "line"]}},
        {"name": JOB_PROGRESS,
         "description": "How far a job (a long call answered with status \"pending\") got; at most twice a second \
                         per job, and always when its phase changes.",
         "payload_schema": {"type": "object", "properties": {
             "job_id": plain,
             "function": plain,
             "target": string("An image, a container or a project."),
             "phase": string("queued, pulling, creating, starting, running, stopping, ..."),
             "bytes_done": {"type": "integer", "description": "Pulls; else 0."},
             "bytes_total": {"type": "integer", "description": "As far as known yet."},
             "layers_done": {"type": "integer"},
             "layers_total": {"type": "integer", "description": "Seen so far."},
             "percent": {"type": ["number", "null"], "description": "null when unknown."},
             "message": {"type": ["string", "null"], "description": "The engine's latest status."}},
           "required": ["job_id", "function", "target", "phase", "bytes_done", "bytes_total", "layers_done",
                        "layers_total", "percent", "message"]}},
        {"name": JOB_FINISHED,
         "description": "A job ended: its result as the call would have returned it, or its error.",
         "payload_schema": {"type": "object", "properties": {
             "job_id": plain,
             "function": plain,
             "target": plain,
             "status": string("success, error or cancelled."),
             "result": {"type": "object"},
             "error": string("What went wrong, or what a cancelled job left done.")},
           "required": ["job_id", "function", "target", "status"]}},
        {"name": EXEC_OUTPUT,
         "description": "Output of an exec session (exec_open), in chunks of at most 16 KiB numbered from 1; \
                         a gap is read again with exec_read.",
         "payload_schema": {"type": "object", "properties": {
             "session_id": plain,
             "seq": {"type": "integer"},
             "stream": string("stdout or stderr; stdout with a TTY."),
             "data": string("UTF-8 text."),
             "data_b64": string("Base64, when not UTF-8.")},
           "required": ["session_id", "seq", "stream"]}},
        {"name": EXEC_EXIT, "description": "An exec session ended.",
         "payload_schema": {"type": "object", "properties": {
             "session_id": plain,
             "exit_code": {"type": ["integer", "null"], "description": "When known."},
             "reason": string("exited, closed, idle, container_gone or shutdown.")},
           "required": ["session_id", "exit_code", "reason"]}}
    ]);
    if engine_events {
        events.as_array_mut().expect("a list").push(json!(
            {"name": ENGINE_EVENT,
             "description": "The Docker Engine's container events as they come (create, start, die, exec_start, ...).",
             "payload_schema": {"type": "object", "properties": {
                 "type": string("\"container\"."),
                 "action": string("E.g. start, die, \"health_status: healthy\"."),
                 "id": string("Full container id."),
                 "name": plain,
                 "attributes": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Labels, image, name, exitCode, ..."},
                 "time_nano": {"type": "integer", "description": "Unix nanoseconds."}},
               "required": ["type", "action", "id", "name", "attributes"]}}));
    }
    // Spec §3.2: every EventDef carries `labels` and `tags`, even empty.
    for event in events.as_array_mut().expect("a list") {
        event["labels"] = Value::Null;
        event["tags"] = json!([]);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_envelope() {
        let ev = Event::new(STATE_CHANGED, json!({"container_id": "abc", "previous_state": null}));
        assert_eq!(ev.name, STATE_CHANGED);
        let ev: Value = serde_json::from_slice(&ev.payload).unwrap();
        assert_eq!(ev["jsonrpc"], "2.0");
        assert_eq!(ev["method"], STATE_CHANGED);
        assert!(ev.get("id").is_none());
        let p = &ev["params"];
        assert_eq!(p["container_id"], "abc");
        assert!(p["previous_state"].is_null());
        let hex = |v: &Value, n: usize| {
            let s = v.as_str().unwrap();
            s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        assert!(hex(&p["event_id"], 8), "{p}");
        assert!(hex(&p["_trace_id"], 16), "{p}");
        let ts = p["ts"].as_str().unwrap();
        assert!(crate::time::parse_rfc3339(ts).is_some() && ts.ends_with('Z') && ts.len() == 20, "{ts}");
    }

    #[test]
    fn a_log_line_waits_for_room_until_stopped() {
        let (state, _keep) = crossbeam_channel::bounded(1);
        let (bulk, rx) = crossbeam_channel::bounded(1);
        let events = Events::new(state, bulk);
        let go = AtomicBool::new(false);
        assert!(events.emit_line(json!({"line": "1"}), &go));
        assert!(!events.emit(LOG_LINE, json!({"line": "2"})), "full: dropped without waiting");
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                rx.recv().unwrap();
            });
            assert!(events.emit_line(json!({"line": "3"}), &go), "waits until the transport takes one");
        });
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(!events.emit_line(json!({"line": "4"}), &stop));
        // One slice at most, not LOG_WAIT; the margin is for a loaded machine.
        assert!(t.elapsed() < LOG_WAIT / 2, "a stopped follow does not wait for room");
        assert_eq!(events.dropped.load(Ordering::Relaxed), 2);
    }
}
