//! Log follows: one thread per followed container, each reading its own
//! engine stream and emitting one `container_log_line` per line. A follow ends
//! when the engine closes the stream (container gone or exited), on
//! `stop_container_logs`, or at shutdown; it removes itself from the table.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::json;

use crate::engine::stream::{Demux, Line};
use crate::engine::{Canceller, Engine, EngineError, LogOptions};
use crate::error::{Error, Result};
use crate::events::{Events, LOG_LINE};
use crate::sync::lock;

/// A one-shot read returns at most this much text (the newest part), so a
/// reply stays under the NATS server's default 1 MiB `max_payload`.
const READ_MAX_BYTES: usize = 768 * 1024;

struct Follow {
    generation: u64,
    /// Set before `cancel`, so a follow waiting for room in the event queue
    /// gives up at once instead of after `LOG_WAIT`.
    stopped: Arc<AtomicBool>,
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
    pub fn start(&self, container_id: &str, opts: LogOptions) -> Result<bool> {
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
        let stopped = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("logs-{}", key.chars().take(8).collect::<String>()))
            .spawn({
                let (key, stopped) = (key.clone(), stopped.clone());
                move || {
                    let out = Emitter { key: &key, events: &events, stopped: &stopped, dropped: 0 };
                    pump(stream.body, tty, opts.timestamps, out);
                    let mut t = lock(&shared);
                    if t.follows.get(&key).is_some_and(|f| f.generation == generation) {
                        t.follows.remove(&key);
                    }
                }
            })
            .map_err(|e| Error::Spawn(format!("log follow of {key}: {e}")))?;
        table.follows.insert(key, Follow { generation, stopped, cancel: stream.cancel, thread });
        Ok(false)
    }

    /// Stop the follow for `container_id`; false when none ran. Returns after
    /// its thread has ended.
    pub fn stop(&self, container_id: &str) -> bool {
        let follow = lock(&self.table).follows.remove(container_id);
        match follow {
            Some(f) => {
                f.stopped.store(true, Ordering::Relaxed);
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
            f.stopped.store(true, Ordering::Relaxed);
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

/// Read a finished log and render it as the Python dcd does: one line per log
/// line, each starting with the engine's timestamp when asked, both streams
/// merged; only the newest `READ_MAX_BYTES`, with a note of what was left out.
pub fn read(engine: &dyn Engine, id: &str, opts: &LogOptions) -> Result<String> {
    let tty = engine.inspect_container(id)?["Config"]["Tty"] == true;
    let mut stream = engine.logs(id, opts)?;
    let mut demux = Demux::new(tty, opts.timestamps);
    let mut lines: std::collections::VecDeque<String> = Default::default();
    let mut size = 0usize;
    let mut omitted = 0usize;
    let mut push = |l: Line| {
        let text = match l.ts {
            Some(ts) => format!("{ts} {}\n", l.text),
            None => format!("{}\n", l.text),
        };
        size += text.len();
        lines.push_back(text);
        while size > READ_MAX_BYTES {
            let Some(old) = lines.pop_front() else { break };
            size -= old.len();
            omitted += 1;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.body.read(&mut buf).map_err(|e| EngineError::Unreachable(e.to_string()))?;
        if n == 0 {
            break;
        }
        demux.push(&buf[..n], &mut push);
    }
    demux.finish(&mut push);
    let mut out = String::with_capacity(size + 64);
    if omitted > 0 {
        out.push_str(&format!("[dcd: {omitted} older lines omitted to fit the reply; use tail or since]\n"));
    }
    out.extend(lines);
    Ok(out)
}

/// Read the stream to its end, one event per line.
fn pump(mut body: Box<dyn Read + Send>, tty: bool, timestamps: bool, mut out: Emitter) {
    let mut demux = Demux::new(tty, timestamps);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => demux.push(&buf[..n], &mut |l| out.line(l)),
            Err(e) => {
                log::debug!("log follow {} ended: {e}", out.key);
                break;
            }
        }
    }
    demux.finish(&mut |l| out.line(l));
    out.finish();
}

/// Emits a follow's lines. A line waits for room in the event queue (the
/// engine keeps the log meanwhile, so a burst is delivered late, not lost).
/// Only when the transport is stuck does a follow drop lines: it counts them
/// without waiting until the queue has room again, then reports the count in
/// a `stream: "dcd"` line, so a stuck mesh neither grows memory nor stalls
/// the follow for long.
struct Emitter<'a> {
    key: &'a str,
    events: &'a Events,
    stopped: &'a AtomicBool,
    dropped: u64,
}

impl Emitter<'_> {
    fn line(&mut self, l: Line) {
        self.notice(false);
        let mut params = json!({"container_id": self.key, "line": l.text, "stream": l.source.as_str()});
        if let Some(ts) = l.ts {
            params["ts_engine"] = json!(ts);
        }
        let sent = if self.dropped == 0 {
            self.events.emit_line(params, self.stopped)
        } else {
            self.events.emit(LOG_LINE, params)
        };
        if !sent {
            self.dropped += 1;
        }
    }

    /// Report the lines dropped so far, if any; `wait` for room to do it.
    fn notice(&mut self, wait: bool) {
        let n = self.dropped;
        if n == 0 {
            return;
        }
        let params = json!({"container_id": self.key, "stream": "dcd",
                            "line": format!("dcd: {n} log lines dropped (event queue full)")});
        let sent = if wait { self.events.emit_line(params, self.stopped) } else { self.events.emit(LOG_LINE, params) };
        if sent {
            log::warn!("log follow {}: {n} lines dropped", self.key);
            self.dropped = 0;
        }
    }

    /// The stream ended: the last chance to tell the subscriber what it
    /// missed. Nothing to tell when the follow was stopped on purpose.
    fn finish(mut self) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        self.notice(true);
        if self.dropped > 0 {
            log::warn!("log follow {}: {} lines dropped at the end, unreported", self.key, self.dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crossbeam_channel::{bounded, Receiver};
    use serde_json::Value;

    use super::*;
    use crate::engine::sim::scripted::{log_frame, Scripted};
    use crate::events::Event;

    const OUT: u8 = 1;
    const ERR: u8 = 2;

    /// A scripted engine with one container, `c`, and follows on it emitting into a bulk queue
    /// of `queue` slots.
    fn rig(queue: usize) -> (Arc<Scripted>, Follows, Events, Receiver<Event>) {
        let engine = Arc::new(Scripted::new());
        engine.sim.create_container(Some("c"), &json!({"Image": "img:1"})).unwrap();
        let (state, _) = bounded(1);
        let (bulk, rx) = bounded(queue);
        let events = Events::new(state, bulk);
        (engine.clone(), Follows::new(engine, events.clone()), events, rx)
    }

    /// `(stream, line)` of a log line event, checking it names its container.
    fn line(e: &Event) -> (String, String) {
        let body: Value = serde_json::from_slice(&e.payload).unwrap();
        let p = &body["params"];
        assert_eq!((e.name, &p["container_id"]), (LOG_LINE, &json!("c")), "{p}");
        (p["stream"].as_str().unwrap().into(), p["line"].as_str().unwrap().into())
    }

    fn lines(rx: &Receiver<Event>) -> Vec<(String, String)> {
        rx.try_iter().map(|e| line(&e)).collect()
    }

    /// Wait until `f` holds, for at most 5 s.
    fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "not within 5 s: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn pair(stream: &str, line: &str) -> (String, String) {
        (stream.into(), line.into())
    }

    #[test]
    fn a_follow_emits_both_streams_and_ends_with_its_log() {
        let (engine, follows, _, rx) = rig(100);
        let log = engine.script_log();
        assert!(!follows.start("c", LogOptions { follow: true, ..Default::default() }).unwrap());
        assert!(follows.start("c", LogOptions::default()).unwrap(), "one follow per key");
        assert_eq!(follows.active(), ["c"]);
        // A line may be cut across frames and reads.
        for chunk in [log_frame(OUT, "out-1\nout"), log_frame(ERR, "err-1\n"), log_frame(OUT, "-2\n")] {
            log.send(chunk).unwrap();
        }
        log.send(Vec::new()).unwrap();
        until("the follow ends with its log", || follows.active().is_empty());
        assert_eq!(lines(&rx), [pair("stdout", "out-1"), pair("stderr", "err-1"), pair("stdout", "out-2")]);
    }

    #[test]
    fn stop_is_prompt_even_while_the_queue_is_full() {
        let (engine, follows, _, rx) = rig(1);
        let log = engine.script_log();
        follows.start("c", LogOptions { follow: true, ..Default::default() }).unwrap();
        // The second line waits for room that never comes (for up to `LOG_WAIT`, 2 s).
        log.send([log_frame(OUT, "1\n"), log_frame(OUT, "2\n")].concat()).unwrap();
        until("the first line is queued", || rx.is_full());
        let t = Instant::now();
        assert!(follows.stop("c"));
        assert!(t.elapsed() < Duration::from_millis(500), "stop took {:?}", t.elapsed());
        assert_eq!(follows.active(), Vec::<String>::new());
        assert!(!follows.stop("c"), "nothing left to stop");
        assert_eq!(lines(&rx), [pair("stdout", "1")], "a stopped follow reports no drops");
    }

    #[test]
    fn a_full_queue_makes_the_follow_drop_then_report_the_count() {
        let (engine, follows, events, rx) = rig(2);
        let log = engine.script_log();
        follows.start("c", LogOptions { follow: true, ..Default::default() }).unwrap();
        let burst: Vec<u8> = (1..=10).flat_map(|n| log_frame(OUT, &format!("{n}\n"))).collect();
        log.send(burst).unwrap();
        // Two fit; the third waits `LOG_WAIT` and is dropped, the rest are dropped at once, each
        // after a notice of the drops so far that found no room either: 8 lines and 7 notices.
        until("the burst dropped", || events.dropped() == 15);
        assert_eq!(lines(&rx), [pair("stdout", "1"), pair("stdout", "2")]);
        // Room again: the next line is preceded by the count of those dropped.
        log.send(log_frame(ERR, "11\n")).unwrap();
        log.send(Vec::new()).unwrap();
        until("the follow ends", || follows.active().is_empty());
        let notice = "dcd: 8 log lines dropped (event queue full)";
        assert_eq!(lines(&rx), [pair("dcd", notice), pair("stderr", "11")]);
    }

    #[test]
    fn read_keeps_the_newest_lines_within_the_byte_cap() {
        let (engine, _, _, _) = rig(1);
        // 1000 lines of 1 KiB with their newline, on alternate streams: 768 fit the cap.
        let text = |n: usize| format!("{n:05} {}", "x".repeat(1017));
        let log = engine.script_log();
        for n in 1..=1000 {
            log.send(log_frame(if n % 2 == 0 { ERR } else { OUT }, &format!("{}\n", text(n)))).unwrap();
        }
        log.send(Vec::new()).unwrap();
        let out = read(&*engine, "c", &LogOptions::default()).unwrap();
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got[0], "[dcd: 232 older lines omitted to fit the reply; use tail or since]");
        assert_eq!(got.len(), 1 + 768);
        assert_eq!(got[1], text(233), "the oldest kept");
        assert_eq!(got[768], text(1000), "the newest");
        assert!(out.len() - got[0].len() - 1 <= READ_MAX_BYTES);

        // A log within the cap comes whole, without a note.
        let log = engine.script_log();
        log.send([log_frame(OUT, "a\n"), log_frame(ERR, "b\n")].concat()).unwrap();
        log.send(Vec::new()).unwrap();
        assert_eq!(read(&*engine, "c", &LogOptions::default()).unwrap(), "a\nb\n");
    }
}
