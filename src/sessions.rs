//! Interactive exec sessions (`exec_open` and the rest): one thread per
//! session reads the process's output from its engine connection into a
//! bounded ring of numbered chunks, and publishes each chunk as an
//! `exec_output` event as it comes.
//!
//! Flow control: output leaves the ring only once a caller acknowledged it,
//! by passing an `after_seq` at or past it to `exec_read`. When the ring holds
//! `RING_BYTES` of unacknowledged output, the thread stops reading from the
//! engine, so the process blocks on its output as on a terminal nobody reads:
//! nothing is dropped, and a lost event (core NATS is at-most-once) can
//! always be read again. A client that follows the events acknowledges with
//! `exec_read` too, now and then.
//!
//! A session ends when its process exits, on `exec_close`, after `idle` with
//! neither input nor reads, when its container goes, and at shutdown; each
//! end closes the engine connection, ends the thread, and says why in an
//! `exec_exit` event. An ended session keeps its output for `exec_read` until
//! it idles out or its slot is needed.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::encoding::{base64_encode, STANDARD};
use crate::engine::stream::{Frames, Source};
use crate::engine::{Canceller, Engine, EngineError, ExecSpec};
use crate::error::{Error, Result};
use crate::events::{Events, EXEC_EXIT, EXEC_OUTPUT};
use crate::ids::random_hex;
use crate::sync::lock;

/// Sessions open at once (running, or ended with output still to read).
pub const MAX_SESSIONS: usize = 16;
/// Unacknowledged output a session holds before its process is made to wait.
pub const RING_BYTES: usize = 256 << 10;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);
/// The longest `wait_ms` of an `exec_read`.
pub const MAX_WAIT_MS: u64 = 25_000;
/// The largest chunk: one engine read.
const CHUNK_BYTES: usize = 16 << 10;
/// What a chunk costs the ring besides its bytes, so that a stream of tiny
/// chunks (keystroke echoes) is bounded in memory too.
const CHUNK_COST: usize = 64;
/// An `exec_read` reply carries at most this much encoded output, well under
/// the mesh's 1 MiB messages (JSON escapes can make text six times longer).
const READ_BUDGET: usize = 512 << 10;
/// How often a session blocked by flow control looks whether it idled out.
const TICK: Duration = Duration::from_secs(1);
/// How long `exec_close` gives a signalled process to exit on its own.
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// How long shutdown waits for the sessions' processes to be killed.
const SHUTDOWN_KILL_WAIT: Duration = Duration::from_secs(1);
/// How long a session whose process was killed waits for the engine to say
/// whether its container went too.
const CONTAINER_END_WAIT: Duration = Duration::from_secs(2);
/// `exec_read`s waiting for output at once; more are answered at once.
const MAX_WAITING_READS: usize = 64;

/// Why a session ended (`exec_exit`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Exited,
    Closed,
    Idle,
    ContainerGone,
    Shutdown,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Exited => "exited",
            Reason::Closed => "closed",
            Reason::Idle => "idle",
            Reason::ContainerGone => "container_gone",
            Reason::Shutdown => "shutdown",
        }
    }
}

struct Chunk {
    seq: u64,
    source: Source,
    data: Vec<u8>,
}

/// A session's output, numbered from 1. Acknowledged chunks stay while
/// there is room, so an event lost just now can still be read.
#[derive(Default)]
pub struct Ring {
    chunks: VecDeque<Chunk>,
    /// The cost of all chunks held, and of those not yet acknowledged.
    held: usize,
    unacked: usize,
    acked: u64,
    last: u64,
}

fn cost(c: &Chunk) -> usize {
    c.data.len() + CHUNK_COST
}

impl Ring {
    /// Whether the thread must stop reading from the engine.
    pub fn full(&self) -> bool {
        self.unacked >= RING_BYTES
    }

    pub fn push(&mut self, source: Source, data: Vec<u8>) -> u64 {
        self.last += 1;
        let c = Chunk { seq: self.last, source, data };
        self.held += cost(&c);
        self.unacked += cost(&c);
        self.chunks.push_back(c);
        self.evict();
        self.last
    }

    /// A caller has everything up to `seq`.
    pub fn ack(&mut self, seq: u64) {
        let seq = seq.min(self.last);
        if seq <= self.acked {
            return;
        }
        let newly: usize = self.chunks.iter().filter(|c| c.seq > self.acked && c.seq <= seq).map(cost).sum();
        self.unacked -= newly;
        self.acked = seq;
        self.evict();
    }

    fn evict(&mut self) {
        while self.held > RING_BYTES {
            match self.chunks.front() {
                Some(c) if c.seq <= self.acked => {
                    self.held -= cost(c);
                    self.chunks.pop_front();
                }
                _ => break,
            }
        }
    }

    /// The chunks after `seq`, as far as `budget` encoded bytes go (at least
    /// one), and whether they reach the newest.
    fn after(&self, seq: u64, mut budget: usize) -> (Vec<Value>, bool) {
        let mut out = Vec::new();
        for c in self.chunks.iter().filter(|c| c.seq > seq) {
            let v = chunk_json(c.seq, c.source, &c.data);
            let size = v.to_string().len();
            if size > budget && !out.is_empty() {
                return (out, false);
            }
            budget = budget.saturating_sub(size);
            out.push(v);
        }
        (out, true)
    }

    /// The oldest seq still held, when output after `seq` is no longer.
    fn lost_after(&self, seq: u64) -> Option<u64> {
        let first = self.chunks.front().map_or(self.last + 1, |c| c.seq);
        (seq + 1 < first && seq < self.last).then_some(first)
    }
}

/// `{seq, stream, data | data_b64}`: text when the bytes are UTF-8.
fn chunk_json(seq: u64, source: Source, data: &[u8]) -> Value {
    let mut v = json!({"seq": seq, "stream": source.as_str()});
    match std::str::from_utf8(data) {
        Ok(text) => v["data"] = json!(text),
        Err(_) => v["data_b64"] = json!(base64_encode(data, STANDARD)),
    }
    v
}

/// What the session thread and the callers share, under one lock.
#[derive(Default)]
struct Out {
    ring: Ring,
    /// Set to end the session thread (shutdown, a close that would not wait).
    stop: Option<Reason>,
    /// `exec_close` is under way: however the process ends, it was closed.
    closing: bool,
    /// Why it ended, and the process's exit code when known.
    end: Option<(Reason, Option<i64>)>,
}

struct Session {
    id: String,
    container: String,
    cmd: Vec<String>,
    tty: bool,
    opened_at: String,
    exec_id: String,
    mark: String,
    size: Mutex<(u16, u16)>,
    input: Mutex<Box<dyn Write + Send>>,
    end_input: Canceller,
    cancel: Canceller,
    out: Mutex<Out>,
    changed: Condvar,
    /// Input, a read or a resize: what keeps a session from idling out.
    used: Mutex<Instant>,
    /// Set with `Out::stop`, for the event queue's wait.
    stopped: AtomicBool,
    /// `exec_read`s waiting for output: a session being waited on is not idle.
    readers: AtomicUsize,
}

impl Session {
    fn touch(&self) {
        *lock(&self.used) = Instant::now();
    }

    fn idle(&self) -> Duration {
        if self.readers.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        lock(&self.used).elapsed()
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        lock(&self.out)
    }

    fn stop(&self, why: Reason) {
        self.out().stop.get_or_insert(why);
        self.stopped.store(true, Ordering::Relaxed);
        self.cancel.cancel();
    }

    /// Wait on `changed` until `done` or `deadline`.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&Out) -> bool) -> MutexGuard<'_, Out> {
        let mut out = self.out();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            out = self.changed.wait_timeout(out, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        out
    }

    fn summary(&self) -> Value {
        let (rows, cols) = *lock(&self.size);
        let exit_code = self.out().end.and_then(|(_, code)| code);
        json!({"session_id": self.id, "container_id": self.container, "cmd": self.cmd, "tty": self.tty,
               "rows": rows, "cols": cols, "opened_at": self.opened_at, "idle_s": self.idle().as_secs(),
               "exit_code": exit_code})
    }
}

struct Entry {
    session: Arc<Session>,
    thread: Option<JoinHandle<()>>,
}

type Table = Arc<Mutex<HashMap<String, Entry>>>;

pub struct Sessions {
    engine: Arc<dyn Engine>,
    events: Events,
    idle: Duration,
    table: Table,
    waiting: Arc<AtomicUsize>,
    /// Set at shutdown: `open` refuses.
    shut: AtomicBool,
}

impl Sessions {
    pub fn new(engine: Arc<dyn Engine>, events: Events, idle: Duration) -> Self {
        Sessions { engine, events, idle, table: Arc::default(), waiting: Arc::default(), shut: AtomicBool::new(false) }
    }

    pub fn set_idle_timeout(&mut self, idle: Duration) {
        self.idle = idle;
    }

    fn get(&self, id: &str) -> Result<Arc<Session>> {
        let table = lock(&self.table);
        let s = table.get(id).map(|e| e.session.clone());
        s.ok_or_else(|| Error::Params(format!("no such exec session: {id}")))
    }

    /// Ended sessions that idled out go; a full table makes room by the
    /// oldest ended one. Refuses when all slots hold running sessions.
    fn make_room(&self) -> Result<()> {
        let mut table = lock(&self.table);
        let ended = |e: &Entry| e.session.out().end.is_some();
        table.retain(|_, e| !(ended(e) && e.session.idle() > self.idle));
        if table.len() < MAX_SESSIONS {
            return Ok(());
        }
        let oldest = table.iter().filter(|(_, e)| ended(e)).max_by_key(|(_, e)| e.session.idle());
        match oldest.map(|(id, _)| id.clone()) {
            Some(id) => {
                table.remove(&id);
                Ok(())
            }
            None => Err(Error::Busy(format!(
                "{MAX_SESSIONS} exec sessions are open, the most this host keeps; close one with exec_close"
            ))),
        }
    }

    pub fn open(&self, container: &str, spec: ExecSpec) -> Result<Value> {
        self.make_room()?;
        let engine_session = self.engine.exec_session(container, &spec)?;
        let session = Arc::new(Session {
            id: random_hex(16),
            container: container.to_string(),
            cmd: spec.command.cmd,
            tty: spec.tty,
            opened_at: crate::time::now_rfc3339(),
            exec_id: engine_session.exec_id,
            mark: engine_session.mark,
            size: Mutex::new(spec.size),
            input: Mutex::new(engine_session.input),
            end_input: engine_session.end_input,
            cancel: engine_session.cancel,
            out: Mutex::default(),
            changed: Condvar::new(),
            used: Mutex::new(Instant::now()),
            stopped: AtomicBool::new(false),
            readers: AtomicUsize::new(0),
        });
        let mut table = lock(&self.table);
        // Another open took the last slot meanwhile.
        let refused = if self.shut.load(Ordering::Relaxed) {
            Some("the daemon is shutting down".to_string())
        } else if table.len() >= MAX_SESSIONS {
            Some(format!("{MAX_SESSIONS} exec sessions are open, the most this host keeps"))
        } else {
            None
        };
        if let Some(why) = refused {
            drop(table);
            // Its process has started, and on a TTY it would outlive its connection.
            session.cancel.cancel();
            if let Err(e) = self.engine.exec_signal(container, &session.mark, "KILL") {
                log::warn!("exec session {} refused: {e}", session.id);
            }
            return Err(Error::Busy(why));
        }
        let (s, engine, events, idle, shared) =
            (session.clone(), self.engine.clone(), self.events.clone(), self.idle, self.table.clone());
        let output = engine_session.output;
        let thread = std::thread::Builder::new()
            .name(format!("exec-{}", &session.id[..8]))
            .spawn(move || {
                let why = pump(&s, output, &events, idle);
                finish(&s, why, engine.as_ref(), &events);
                // Ended by itself or by idling: nobody else removes it.
                if why == Reason::Idle {
                    lock(&shared).remove(&s.id);
                }
            })
            .map_err(|e| {
                session.cancel.cancel();
                Error::Spawn(format!("exec session: {e}"))
            })?;
        table.insert(session.id.clone(), Entry { session: session.clone(), thread: Some(thread) });
        let (rows, cols) = spec.size;
        Ok(json!({"session_id": session.id, "container_id": container, "tty": spec.tty, "rows": rows,
                  "cols": cols, "idle_timeout_s": self.idle.as_secs()}))
    }

    /// Send `data` to the process; `eof` then ends its input.
    pub fn write(&self, id: &str, data: &[u8], eof: bool) -> Result<Value> {
        let s = self.get(id)?;
        s.touch();
        if let Some((why, _)) = s.out().end {
            return Err(Error::Params(format!("exec session {id} has ended ({})", why.as_str())));
        }
        lock(&s.input).write_all(data).map_err(|e| {
            let what = if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut {
                "the process does not read its input"
            } else {
                "the connection to the process is gone"
            };
            Error::Engine(EngineError::Unreachable(format!("exec session {id}: {what}: {e}")))
        })?;
        if eof {
            s.end_input.cancel();
        }
        Ok(json!({"written": data.len()}))
    }

    pub fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<Value> {
        let s = self.get(id)?;
        s.touch();
        self.engine.exec_resize(&s.exec_id, rows, cols)?;
        *lock(&s.size) = (rows, cols);
        Ok(json!({"rows": rows, "cols": cols}))
    }

    /// The output after `after`, waiting up to `wait` for some; `reply` gets
    /// it, from this thread when there is no need to wait, else from a thread
    /// of its own, so a waiting read holds no request worker.
    pub fn read(&self, id: &str, after: u64, wait: Duration, reply: Box<dyn FnOnce(Result<Value>) + Send>) {
        let s = match self.get(id) {
            Ok(s) => s,
            Err(e) => return reply(Err(e)),
        };
        s.touch();
        {
            let mut out = s.out();
            out.ring.ack(after);
            s.changed.notify_all();
            let ready = out.ring.last > after || out.end.is_some();
            if ready || wait.is_zero() || self.waiting.load(Ordering::Relaxed) >= MAX_WAITING_READS {
                return reply(Ok(read_reply(&out, after)));
            }
        }
        let waiting = self.waiting.clone();
        waiting.fetch_add(1, Ordering::Relaxed);
        s.readers.fetch_add(1, Ordering::Relaxed);
        let session = s.clone();
        let spawned = std::thread::Builder::new().name("exec-read".into()).spawn(move || {
            let deadline = Instant::now() + wait;
            let out = s.wait_until(deadline, |o| o.ring.last > after || o.end.is_some());
            let r = read_reply(&out, after);
            drop(out);
            s.touch();
            s.readers.fetch_sub(1, Ordering::Relaxed);
            waiting.fetch_sub(1, Ordering::Relaxed);
            reply(Ok(r));
        });
        if let Err(e) = spawned {
            // The closure, and `reply` with it, is gone: the caller's call times out.
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            session.readers.fetch_sub(1, Ordering::Relaxed);
            log::warn!("exec_read could not wait: {e}");
        }
    }

    /// Signal the process (default HUP), give it `CLOSE_WAIT` to exit, then
    /// close its connection; the session is gone after.
    pub fn close(&self, id: &str, signal: &str) -> Result<Value> {
        let s = self.get(id)?;
        if s.out().end.is_none() {
            s.out().closing = true;
            if let Err(e) = self.engine.exec_signal(&s.container, &s.mark, signal) {
                log::warn!("exec session {id}: {e}");
            }
            drop(s.wait_until(Instant::now() + CLOSE_WAIT, |o| o.end.is_some()));
            s.stop(Reason::Closed);
        }
        let entry = lock(&self.table).remove(id);
        if let Some(t) = entry.and_then(|e| e.thread) {
            let _ = t.join();
        }
        let exit_code = s.out().end.and_then(|(_, code)| code);
        Ok(json!({"session_id": id, "exit_code": exit_code}))
    }

    pub fn list(&self) -> Value {
        let mut all: Vec<Value> = lock(&self.table).values().map(|e| e.session.summary()).collect();
        all.sort_by(|a, b| a["opened_at"].as_str().cmp(&b["opened_at"].as_str()));
        json!({"sessions": all})
    }

    /// End every session and wait for their threads (daemon shutdown). A
    /// process on a TTY outlives its closed connection, so each is killed
    /// first, all at once, for at most `SHUTDOWN_KILL_WAIT`.
    pub fn shutdown(&self) {
        let all: Vec<Entry> = {
            let mut table = lock(&self.table);
            // Requests are still served while the sessions end: no new one.
            self.shut.store(true, Ordering::Relaxed);
            table.drain().map(|(_, e)| e).collect()
        };
        // Said before the kills, so that a process killed here ends its
        // session as shut down, not as exited.
        for e in &all {
            e.session.out().stop.get_or_insert(Reason::Shutdown);
        }
        let (done, killed) = crossbeam_channel::unbounded();
        for e in all.iter().filter(|e| e.session.out().end.is_none()) {
            let (engine, s, done) = (self.engine.clone(), e.session.clone(), done.clone());
            let kill = move || {
                if let Err(err) = engine.exec_signal(&s.container, &s.mark, "KILL") {
                    log::warn!("exec session {}: {err}", s.id);
                }
                let _ = done.send(());
            };
            if let Err(err) = std::thread::Builder::new().name("exec-kill".into()).spawn(kill) {
                log::warn!("exec session {}: cannot kill its process: {err}", e.session.id);
            }
        }
        drop(done);
        let deadline = Instant::now() + SHUTDOWN_KILL_WAIT;
        while killed.recv_deadline(deadline).is_ok() {}
        for e in &all {
            e.session.stop(Reason::Shutdown);
        }
        for e in all {
            if let Some(t) = e.thread {
                let _ = t.join();
            }
        }
    }
}

/// `exec_read`'s answer: the exit code only once the reply reaches the end.
fn read_reply(out: &Out, after: u64) -> Value {
    let (chunks, whole) = out.ring.after(after, READ_BUDGET);
    let next = chunks.last().and_then(|c| c["seq"].as_u64()).unwrap_or(after.min(out.ring.last));
    let exit_code = if whole { out.end.and_then(|(_, code)| code) } else { None };
    let mut r = Map::new();
    r.insert("chunks".into(), Value::Array(chunks));
    r.insert("next_seq".into(), json!(next));
    r.insert("exit_code".into(), json!(exit_code));
    if let Some(first) = out.ring.lost_after(after) {
        r.insert("lost_before".into(), json!(first));
    }
    Value::Object(r)
}

/// Read the process's output into the ring and the events until it ends or
/// the session is stopped; returns why it ended.
fn pump(s: &Session, mut output: Box<dyn Read + Send>, events: &Events, idle: Duration) -> Reason {
    let mut frames = Frames::new(s.tty);
    let mut buf = vec![0; CHUNK_BYTES];
    loop {
        {
            let mut out = s.out();
            loop {
                if let Some(why) = out.stop {
                    return why;
                }
                if s.idle() > idle {
                    return Reason::Idle;
                }
                if !out.ring.full() {
                    break;
                }
                out = s.changed.wait_timeout(out, TICK).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        // A stopped session's connection reads as ended: the stop says why.
        let ended = || s.out().stop.unwrap_or(Reason::Exited);
        match output.read(&mut buf) {
            Ok(0) => return ended(),
            Ok(n) => frames.push(&buf[..n], &mut |source, data, _| {
                let seq = {
                    let mut out = s.out();
                    let seq = out.ring.push(source, data.to_vec());
                    s.changed.notify_all();
                    seq
                };
                let mut ev = chunk_json(seq, source, data);
                ev["session_id"] = json!(s.id);
                events.emit_waiting(EXEC_OUTPUT, ev, &s.stopped);
            }),
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            // The connection broke: what the engine says of the exec and the
            // container tells why.
            Err(_) => return ended(),
        }
    }
}

/// Close the connection, learn the exit code, record the end and say so.
fn finish(s: &Session, why: Reason, engine: &dyn Engine, events: &Events) {
    s.cancel.cancel();
    let (mut why, mut code) = (why, None);
    match why {
        Reason::Exited | Reason::Closed => {
            code = engine.exec_exit_code(&s.exec_id).ok();
            // A killed container's exec may be recorded as ended before the
            // container is: a process killed by a signal that nobody here sent
            // makes the container worth asking about again, briefly.
            let killed = code.is_some_and(|c| c > 128) && !s.out().closing;
            let deadline = Instant::now() + if killed { CONTAINER_END_WAIT } else { Duration::ZERO };
            loop {
                let running = engine.inspect_container(&s.container).map(|i| i["State"]["Running"] == true);
                if matches!(running, Ok(false) | Err(EngineError::NotFound(_))) {
                    why = Reason::ContainerGone;
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Its connection is closed, but a process that does not read its
        // input would run on.
        Reason::Idle => {
            if let Err(e) = engine.exec_signal(&s.container, &s.mark, "KILL") {
                log::warn!("exec session {} idled out: {e}", s.id);
            }
        }
        Reason::ContainerGone | Reason::Shutdown => {}
    }
    let mut out = s.out();
    if out.closing && why != Reason::ContainerGone {
        why = Reason::Closed;
    }
    out.end = Some((why, code));
    s.changed.notify_all();
    drop(out);
    log::info!("exec session {} in {} ended: {} (exit code {code:?})", s.id, s.container, why.as_str());
    events.emit(EXEC_EXIT, json!({"session_id": s.id, "exit_code": code, "reason": why.as_str()}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_holds_unacknowledged_output_and_frees_what_was_read() {
        let mut r = Ring::default();
        let piece = vec![b'x'; CHUNK_BYTES];
        let mut n = 0;
        while !r.full() {
            n = r.push(Source::Stdout, piece.clone());
        }
        assert_eq!(n as usize, RING_BYTES.div_ceil(CHUNK_BYTES + CHUNK_COST));
        assert_eq!(r.chunks.len() as u64, n, "nothing unacknowledged is dropped");
        assert_eq!(r.lost_after(0), None);
        let (all, whole) = r.after(0, usize::MAX);
        assert!(
            whole
                && all.len() as u64 == n
                && all[0]["seq"] == 1
                && all[0]["data"].as_str().unwrap().len() == CHUNK_BYTES
        );
        let (some, whole) = r.after(0, 3 * CHUNK_BYTES);
        assert!(!whole && some.len() == 2, "a reply stays within its budget");
        r.ack(2);
        assert!(!r.full(), "two chunks read make room");
        r.push(Source::Stderr, vec![0xff, 0]);
        assert_eq!(r.chunks.len() as u64, n, "acknowledged chunk 1 went to make room; chunk 2 stays while it fits");
        assert_eq!(r.lost_after(0), Some(2), "re-reading from the start: chunk 1 is gone");
        let (tail, _) = r.after(n, usize::MAX);
        assert_eq!(tail, vec![json!({"seq": n + 1, "stream": "stderr", "data_b64": "/wA="})]);
        r.ack(u64::MAX);
        assert!(r.unacked == 0 && r.acked == n + 1, "an ack past the end stops at the end");
        while !r.full() {
            r.push(Source::Stdout, vec![b'k']);
        }
        assert!(r.chunks.len() < RING_BYTES / CHUNK_COST, "tiny chunks are bounded too ({} held)", r.chunks.len());
    }
}
