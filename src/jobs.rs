//! Jobs: work that may outlive the call that asked for it (a pull over a slow
//! link, a long exec, a redeploy). A request worker only dispatches: the work
//! runs on one of a few job threads, and the call's reply goes with it. The
//! caller hears the result when the job ends within the call's `wait`, else a
//! `pending` reply with the job's id when `wait` runs out; either way the job
//! runs on, reports `job_progress` and `job_finished`, and can be asked about
//! (`get`, `list`), joined and cancelled.
//!
//! Bounded: at most `MAX_LIVE` jobs run or wait for a thread, `MAX_THREADS`
//! run at once, `MAX_FINISHED` ended ones are kept. Nothing is persisted.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Map, Value};

use crate::engine::{Canceller, PullProgress, Watch};
use crate::error::{EngineError, Error, Result};
use crate::events::{Events, JOB_FINISHED, JOB_PROGRESS};
use crate::sync::lock;

/// Where a call's reply goes: the JSON-RPC layer turns it into bytes for the
/// caller. Called once, from whichever thread has the answer.
pub type Reply = Box<dyn FnOnce(Result<Body>) + Send>;

/// What a function answers: a value, or JSON text already written. A list
/// served from the state's view is the text of summaries encoded when they
/// changed, joined: building and encoding a value of 200 of them per call cost
/// far more than the call itself (BENCHMARKS.md).
#[derive(Debug)]
pub enum Body {
    Value(Value),
    /// Valid JSON, as serde_json wrote it.
    Json(String),
}

impl From<Value> for Body {
    fn from(v: Value) -> Body {
        Body::Value(v)
    }
}

impl Body {
    /// As a value, for a caller that adds to it (a broadcast's `async_reply`).
    pub fn into_value(self) -> Value {
        match self {
            Body::Value(v) => v,
            Body::Json(text) => serde_json::from_str(&text).unwrap_or_default(),
        }
    }
}

/// Jobs running or waiting for a thread; more are refused.
pub const MAX_LIVE: usize = 64;
/// Ended jobs kept for `get_job` and `list_jobs`; the oldest are forgotten.
pub const MAX_FINISHED: usize = 256;
/// Threads that run jobs; jobs beyond them wait in a queue. A job thread
/// mostly waits on the engine, so a few cost little; they exit when idle.
pub const MAX_THREADS: usize = 16;
/// How long a caller waits for a job's end by default: under the agent
/// tools' 30 s (spec §2.5), so the pending reply reaches them.
pub const DEFAULT_WAIT_S: u64 = 25;
/// The longest wait a caller may ask for.
pub const MAX_WAIT_S: u64 = 120;
/// At most one `job_progress` per job this often, besides phase changes.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// A finished job's record keeps its result up to this size; the callers
/// that waited got all of it.
const KEEP_RESULT: usize = 64 << 10;
/// How long `cancel_job` waits for the job to end, to say what was left done.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Success,
    Error,
    Cancelled,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Success => "success",
            State::Error => "error",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Running, State::Success, State::Error, State::Cancelled].into_iter().find(|st| st.as_str() == s)
    }
}

/// A job's work, run once on a job thread.
type Run = Box<dyn FnOnce(&Progress) -> Result<Value> + Send>;

/// What a function hands over to run as a job.
pub struct Work {
    target: String,
    container: Option<String>,
    phase: &'static str,
    announce: bool,
    join: bool,
    run: Run,
}

impl Work {
    /// `run` on `target` (an image, a container, a project), starting in
    /// `phase`. It is announced from its start (listed, with events).
    pub fn new(
        target: impl Into<String>,
        phase: &'static str,
        run: impl FnOnce(&Progress) -> Result<Value> + Send + 'static,
    ) -> Work {
        Work { target: target.into(), container: None, phase, announce: true, join: false, run: Box::new(run) }
    }

    /// Announced only if it outlives the caller's wait: quick work leaves no
    /// job behind.
    pub fn quiet(mut self) -> Work {
        self.announce = false;
        self
    }

    /// A call of the same function on the same target joins it while it runs.
    pub fn joinable(mut self) -> Work {
        self.join = true;
        self
    }

    /// It acts on this container: `get_job` and `cancel_job` check it as
    /// the call did (`owned_only`).
    pub fn on_container(mut self, id: impl Into<String>) -> Work {
        self.container = Some(id.into());
        self
    }
}

/// How a running job can be stopped right now.
enum Stop {
    /// The work looks at `Progress::cancelled` between its steps.
    Between,
    /// Closes what the work waits on (a pull's stream, an exec's process).
    Now(Canceller),
    /// Past the point where stopping would leave less harm than finishing.
    Never(&'static str),
}

/// What a waiting caller wants when the job ends or its wait runs out.
enum Answer {
    /// The function's result, or `pending`.
    Result,
    /// The job's record (`cancel_job`).
    Record,
}

struct Waiter {
    reply: Reply,
    deadline: Instant,
    answer: Answer,
}

struct Job {
    id: String,
    function: &'static str,
    target: String,
    container: Option<String>,
    params: Value,
    join: bool,
    /// Listed, and its events sent.
    announced: bool,
    queued: bool,
    phase: &'static str,
    progress: PullProgress,
    state: State,
    started: String,
    ended: Option<String>,
    outcome: Option<Result<Value>>,
    waiters: Vec<Waiter>,
    stop: Stop,
    cancel_requested: bool,
    last_event: Option<Instant>,
    /// Progress came that no event has carried yet.
    unsent: bool,
}

impl Job {
    fn progress_json(&self) -> Value {
        let p = &self.progress;
        let percent = (p.bytes_total > 0).then(|| (p.bytes_done * 1000 / p.bytes_total) as f64 / 10.0);
        let message = (!p.status.is_empty()).then(|| p.status.clone());
        json!({"phase": self.phase, "bytes_done": p.bytes_done, "bytes_total": p.bytes_total,
               "layers_done": p.layers_done, "layers_total": p.layers_total, "percent": percent,
               "message": message})
    }

    fn progress_event(&mut self) -> Value {
        self.last_event = Some(Instant::now());
        self.unsent = false;
        let mut e = self.progress_json();
        e["job_id"] = json!(self.id);
        e["function"] = json!(self.function);
        e["target"] = json!(self.target);
        e
    }

    /// What `get_job` (`full`: with the result) and `list_jobs` show.
    fn record(&self, full: bool) -> Value {
        let mut r = json!({"job_id": self.id, "function": self.function, "target": self.target,
            "params": self.params, "state": self.state.as_str(), "phase": self.phase, "queued": self.queued,
            "progress": self.progress_json(), "started": self.started, "ended": self.ended,
            "cancel_requested": self.cancel_requested});
        match &self.outcome {
            Some(Ok(v)) if full => r["result"] = v.clone(),
            Some(Err(e)) => r["error"] = json!(e.to_string()),
            _ => {}
        }
        r
    }

    fn pending(&self, queue_position: Option<usize>) -> Value {
        let mut p = json!({"status": "pending", "job_id": self.id, "function": self.function,
            "target": self.target, "progress": self.progress_json(), "queued": self.queued,
            "message": "still running: it goes on after this reply; job_progress and job_finished events \
                        follow it, get_job asks about it, cancel_job stops it"});
        if let Some(n) = queue_position {
            p["queue_position"] = json!(n);
        }
        p
    }
}

/// A reply to send or an event to emit once the lock is let go.
enum Out {
    Reply(Reply, Result<Value>),
    Event(&'static str, Value),
    Stop(Canceller),
}

#[derive(Default)]
struct Table {
    live: HashMap<String, Job>,
    finished: VecDeque<Job>,
    queue: VecDeque<(String, Run)>,
    threads: usize,
}

impl Table {
    fn find(&self, id: &str) -> Option<&Job> {
        self.live.get(id).or_else(|| self.finished.iter().find(|j| j.id == id))
    }

    fn queue_position(&self, id: &str) -> Option<usize> {
        self.queue.iter().position(|(q, _)| q == id).map(|n| n + 1)
    }
}

struct Shared {
    table: Mutex<Table>,
    events: Events,
}

impl Shared {
    fn send(&self, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Reply(reply, r) => reply(r.map(Body::Value)),
                Out::Event(name, params) => {
                    self.events.emit(name, params);
                }
                Out::Stop(c) => c.cancel(),
            }
        }
    }

    /// The job ended with `outcome`: tell whoever waits, and everyone listening.
    fn finish(&self, id: &str, outcome: Result<Value>) {
        let mut outs = Vec::new();
        {
            let mut t = lock(&self.table);
            let Some(mut job) = t.live.remove(id) else { return };
            job.state = match &outcome {
                Ok(_) => State::Success,
                Err(Error::Cancelled(_)) => State::Cancelled,
                Err(_) if job.cancel_requested => State::Cancelled,
                Err(_) => State::Error,
            };
            job.ended = Some(crate::time::now_rfc3339());
            job.queued = false;
            job.stop = Stop::Between;
            log::info!("job {} {} {}: {}", job.id, job.function, job.target, job.state.as_str());
            let waiters = std::mem::take(&mut job.waiters);
            job.outcome = Some(match &outcome {
                Ok(v) if serde_json::to_vec(v).map_or(0, |b| b.len()) > KEEP_RESULT => Ok(json!({
                    "status": v["status"],
                    "note": format!("the result was larger than {KEEP_RESULT} bytes: only the callers that waited got it")})),
                other => other.clone(),
            });
            let mut replies = Vec::new();
            for w in waiters {
                let r = match w.answer {
                    Answer::Result => outcome.clone(),
                    Answer::Record => Ok(json!({"status": "success", "job": job.record(false)})),
                };
                replies.push(Out::Reply(w.reply, r));
            }
            if job.announced {
                if job.unsent {
                    outs.push(Out::Event(JOB_PROGRESS, job.progress_event()));
                }
                let mut e = json!({"job_id": job.id, "function": job.function, "target": job.target,
                                   "status": job.state.as_str()});
                match &job.outcome {
                    Some(Ok(v)) => e["result"] = v.clone(),
                    Some(Err(err)) => e["error"] = json!(err.to_string()),
                    None => {}
                }
                outs.push(Out::Event(JOB_FINISHED, e));
                t.finished.push_back(job);
                while t.finished.len() > MAX_FINISHED {
                    t.finished.pop_front();
                }
            }
            // Events first: whoever the reply wakes finds job_finished already queued.
            outs.extend(replies);
        }
        self.send(outs);
    }

    /// Change a running job under the lock; its events are sent after.
    fn update(&self, id: &str, f: impl FnOnce(&mut Job, &mut Vec<Out>)) {
        let mut outs = Vec::new();
        if let Some(job) = lock(&self.table).live.get_mut(id) {
            f(job, &mut outs);
        }
        self.send(outs);
    }
}

/// The job registry and its threads.
pub struct Jobs {
    shared: Arc<Shared>,
    /// Wakes the timer thread when a wait with an earlier deadline begins.
    /// Dropping it ends that thread.
    wake: Sender<()>,
}

impl Jobs {
    pub fn new(events: Events) -> Jobs {
        let shared = Arc::new(Shared { table: Mutex::new(Table::default()), events });
        let (wake, woken) = bounded(1);
        let timer = shared.clone();
        // Without this thread no wait runs out; the daemon cannot serve jobs.
        std::thread::Builder::new()
            .name("jobs-timer".into())
            .spawn(move || run_timer(&timer, &woken))
            .expect("the jobs timer thread");
        Jobs { shared, wake }
    }

    /// Run `work` as a job of `function` called with `params` (its secrets
    /// already taken out), or join the running job of `function` on the same
    /// target when `work` is joinable. `reply` gets the job's result if it
    /// ends within `wait`, else a `pending` reply.
    pub fn start(&self, function: &'static str, params: Value, work: Work, wait: Duration, reply: Reply) {
        let deadline = Instant::now() + wait;
        let waiter = Waiter { reply, deadline, answer: Answer::Result };
        let mut t = lock(&self.shared.table);
        if work.join {
            if let Some(job) = t.live.values_mut().find(|j| j.join && j.function == function && j.target == work.target)
            {
                log::info!("job {} {} {}: joined", job.id, function, job.target);
                job.waiters.push(waiter);
                drop(t);
                let _ = self.wake.try_send(());
                return;
            }
        }
        if t.live.len() >= MAX_LIVE {
            drop(t);
            let e = Error::Busy(format!("{MAX_LIVE} jobs already run or wait; try again when one has ended"));
            return (waiter.reply)(Err(e));
        }
        let id = format!("job-{}", crate::ids::random_hex(12));
        log::info!("job {id} {function} {}: started", work.target);
        let mut job = Job {
            id: id.clone(),
            function,
            target: work.target,
            container: work.container,
            params,
            join: work.join,
            announced: work.announce,
            queued: true,
            phase: work.phase,
            progress: PullProgress::default(),
            state: State::Running,
            started: crate::time::now_rfc3339(),
            ended: None,
            outcome: None,
            waiters: vec![waiter],
            stop: Stop::Between,
            cancel_requested: false,
            last_event: None,
            unsent: false,
        };
        let event = job.announced.then(|| job.progress_event());
        t.live.insert(id.clone(), job);
        t.queue.push_back((id.clone(), work.run));
        let spawn = t.threads < MAX_THREADS;
        if spawn {
            t.threads += 1;
        }
        drop(t);
        if let Some(e) = event {
            self.shared.events.emit(JOB_PROGRESS, e);
        }
        let _ = self.wake.try_send(());
        if spawn {
            self.spawn_thread(&id);
        }
    }

    /// Start a job thread; it runs queued jobs until none is left.
    fn spawn_thread(&self, id: &str) {
        let shared = self.shared.clone();
        let started = std::thread::Builder::new().name("job".into()).spawn(move || run_jobs(&shared));
        if let Err(e) = started {
            let orphan = {
                let mut t = lock(&self.shared.table);
                t.threads -= 1;
                // With no thread left the queue would never move: fail this job.
                (t.threads == 0).then(|| t.queue.retain(|(q, _)| q != id)).is_some()
            };
            if orphan {
                self.shared.finish(id, Err(Error::Spawn(format!("job {id}: {e}"))));
            }
        }
    }

    /// A job's record (`full`: with its result), and the container it acts on.
    pub fn get(&self, id: &str, full: bool) -> Option<(Value, Option<String>)> {
        let t = lock(&self.shared.table);
        t.find(id).filter(|j| j.announced).map(|j| (j.record(full), j.container.clone()))
    }

    /// Announced jobs, newest first, in `state` if given.
    pub fn list(&self, state: Option<State>) -> Vec<Value> {
        let t = lock(&self.shared.table);
        let mut live: Vec<&Job> = t.live.values().collect();
        live.sort_by(|a, b| b.started.cmp(&a.started));
        live.into_iter()
            .chain(t.finished.iter().rev())
            .filter(|j| j.announced && state.is_none_or(|s| j.state == s))
            .map(|j| j.record(false))
            .collect()
    }

    /// Stop job `id`: its engine stream is closed or its process killed, or,
    /// between steps, it stops before the next. `reply` gets the job's record
    /// once it has ended (or after `CANCEL_WAIT`, still stopping).
    pub fn cancel(&self, id: &str, reply: Reply) {
        let mut outs = Vec::new();
        let mut dequeued = false;
        {
            let mut t = lock(&self.shared.table);
            let position = t.queue_position(id);
            let Some(job) = t.live.get_mut(id).filter(|j| j.announced) else {
                drop(t);
                return match self.get(id, false) {
                    Some((record, _)) => reply(Ok(json!({"status": "success", "job": record,
                                                         "message": "the job had already ended"})
                    .into())),
                    None => reply(Err(Error::Params(format!("no job {id}")))),
                };
            };
            if let Stop::Never(why) = job.stop {
                drop(t);
                let e = EngineError::Conflict(format!("job {id} cannot be cancelled now: {why}"));
                return reply(Err(e.into()));
            }
            log::info!("job {id} {} {}: cancel asked", job.function, job.target);
            job.cancel_requested = true;
            job.waiters.push(Waiter { reply, deadline: Instant::now() + CANCEL_WAIT, answer: Answer::Record });
            if let Stop::Now(c) = std::mem::replace(&mut job.stop, Stop::Between) {
                outs.push(Out::Stop(c));
            }
            if position.is_some() {
                t.queue.retain(|(q, _)| q != id);
                dequeued = true;
            }
        }
        let _ = self.wake.try_send(());
        self.shared.send(outs);
        if dequeued {
            self.shared.finish(id, Err(Error::Cancelled("it had not started; nothing was done".into())));
        }
    }
}

/// A job thread: run queued jobs until none is left, then end.
fn run_jobs(shared: &Arc<Shared>) {
    loop {
        let (id, run) = {
            let mut t = lock(&shared.table);
            let Some((id, run)) = t.queue.pop_front() else {
                t.threads -= 1;
                return;
            };
            (id, run)
        };
        let progress = Progress { shared: shared.clone(), id: id.clone() };
        shared.update(&id, |job, outs| {
            job.queued = false;
            if job.announced {
                outs.push(Out::Event(JOB_PROGRESS, job.progress_event()));
            }
        });
        let outcome = catch_unwind(AssertUnwindSafe(|| run(&progress)))
            .unwrap_or_else(|_| Err(Error::Spawn(format!("job {id} failed: the work panicked"))));
        shared.finish(&id, outcome);
    }
}

/// The timer: answers waits that ran out with `pending` (announcing a quiet
/// job then), and sleeps until the next deadline or a new wait.
fn run_timer(shared: &Shared, woken: &Receiver<()>) {
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut outs = Vec::new();
        {
            let mut t = lock(&shared.table);
            let positions: HashMap<String, usize> =
                t.queue.iter().enumerate().map(|(n, (id, _))| (id.clone(), n + 1)).collect();
            for job in t.live.values_mut() {
                let (due, keep): (Vec<Waiter>, Vec<Waiter>) = job.waiters.drain(..).partition(|w| w.deadline <= now);
                job.waiters = keep;
                for w in due {
                    let r = match w.answer {
                        Answer::Result => {
                            if !job.announced {
                                job.announced = true;
                                log::info!("job {} {} {}: outlived its wait", job.id, job.function, job.target);
                                outs.push(Out::Event(JOB_PROGRESS, job.progress_event()));
                            }
                            job.pending(positions.get(&job.id).copied())
                        }
                        Answer::Record => json!({"status": "success", "job": job.record(false),
                                                 "message": "cancel asked; the job is still stopping"}),
                    };
                    outs.push(Out::Reply(w.reply, Ok(r)));
                }
                for w in &job.waiters {
                    next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
                }
            }
        }
        shared.send(outs);
        let sleep = next.map_or(Duration::from_secs(3600), |n| n.saturating_duration_since(Instant::now()));
        match woken.recv_timeout(sleep) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A running job as its work sees it: where it reports its phase and
/// progress, and learns that it was cancelled.
pub struct Progress {
    shared: Arc<Shared>,
    id: String,
}

impl Progress {
    /// From here on the job cannot be cancelled, and `cancel_job` says `why`.
    pub fn unstoppable(&self, why: &'static str) {
        self.shared.update(&self.id, |job, _| job.stop = Stop::Never(why));
    }

    /// Between steps: `Err(Cancelled)` saying that `done` is what was done,
    /// if `cancel_job` asked for it.
    pub fn check(&self, done: &str) -> Result<()> {
        match self.cancelled() {
            true => Err(Error::Cancelled(done.to_string())),
            false => Ok(()),
        }
    }

    /// What a stopped pull left done, for its `Cancelled` error.
    pub fn pull_left(&self) -> String {
        let t = lock(&self.shared.table);
        let p = t.live.get(&self.id).map(|j| j.progress.clone()).unwrap_or_default();
        format!(
            "the pull was stopped after {} of {} layers and {} of {} bytes; the image was not pulled",
            p.layers_done, p.layers_total, p.bytes_done, p.bytes_total
        )
    }
}

impl Watch for Progress {
    fn stoppable(&self, stop: Canceller) {
        self.shared.update(&self.id, |job, outs| match job.stop {
            Stop::Never(_) => {}
            // Asked to stop before there was anything to stop.
            _ if job.cancel_requested => outs.push(Out::Stop(stop)),
            _ => job.stop = Stop::Now(stop),
        });
    }

    fn phase(&self, phase: &'static str) {
        self.shared.update(&self.id, |job, outs| {
            if !matches!(job.stop, Stop::Never(_)) {
                job.stop = Stop::Between;
            }
            if job.phase != phase {
                job.phase = phase;
                if job.announced {
                    outs.push(Out::Event(JOB_PROGRESS, job.progress_event()));
                }
            }
        });
    }

    fn cancelled(&self) -> bool {
        lock(&self.shared.table).live.get(&self.id).is_some_and(|j| j.cancel_requested)
    }

    fn pulled(&self, progress: &PullProgress) {
        self.shared.update(&self.id, |job, outs| {
            job.progress = progress.clone();
            job.unsent = true;
            let due = job.last_event.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
            if job.announced && due {
                outs.push(Out::Event(JOB_PROGRESS, job.progress_event()));
            }
        });
    }
}

/// A call's params as a job shows them: credentials (`auth`, and any key
/// naming a password, token or secret) left out, environment values hidden.
pub fn public_params(params: &Map<String, Value>) -> Value {
    fn clean(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| {
                        let k = k.to_ascii_lowercase();
                        k != "auth" && !["password", "token", "secret"].iter().any(|s| k.contains(s))
                    })
                    .map(|(k, v)| match (k.as_str(), v) {
                        ("environment", Value::Object(env)) => {
                            (k.clone(), env.keys().map(|name| (name.clone(), json!("<hidden>"))).collect())
                        }
                        _ => (k.clone(), clean(v)),
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(clean).collect()),
            other => other.clone(),
        }
    }
    clean(&Value::Object(params.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    fn jobs() -> (Jobs, Receiver<crate::events::Event>) {
        let (tx, rx) = unbounded();
        (Jobs::new(Events::new(tx.clone(), tx)), rx)
    }

    /// A reply that lands on a channel.
    fn reply() -> (Reply, Receiver<Result<Value>>) {
        let (tx, rx) = unbounded();
        (
            Box::new(move |r: Result<Body>| {
                let _ = tx.send(r.map(Body::into_value));
            }),
            rx,
        )
    }

    fn events(rx: &Receiver<crate::events::Event>, name: &str) -> Vec<Value> {
        rx.try_iter()
            .filter(|e| e.name == name)
            .map(|e| serde_json::from_slice::<Value>(&e.payload).unwrap()["params"].take())
            .collect()
    }

    /// Work that runs until `gate` closes.
    fn gated(gate: &Receiver<()>) -> Work {
        let gate = gate.clone();
        Work::new("img", "pulling", move |_| {
            let _ = gate.recv();
            Ok(json!({"status": "success"}))
        })
    }

    #[test]
    fn quick_work_answers_with_its_result_and_leaves_no_quiet_job() {
        let (jobs, ev) = jobs();
        let (r, rx) = reply();
        let work = Work::new("c1", "running", |_| Ok(json!({"status": "success", "n": 1}))).quiet();
        jobs.start("exec_in_container", json!({}), work, Duration::from_secs(5), r);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), json!({"status": "success", "n": 1}));
        std::thread::sleep(Duration::from_millis(50));
        assert!(jobs.list(None).is_empty());
        assert!(ev.try_iter().next().is_none(), "a quiet job that ended in time sends no events");
    }

    #[test]
    fn a_long_job_replies_pending_then_finishes_and_is_joined() {
        let (jobs, ev) = jobs();
        let (open, gate) = bounded::<()>(0);
        let (r, rx) = reply();
        jobs.start("pull_image", json!({"image": "img"}), gated(&gate).joinable(), Duration::ZERO, r);
        let pending = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(pending["status"], "pending");
        let id = pending["job_id"].as_str().unwrap().to_string();
        let (r2, rx2) = reply();
        jobs.start("pull_image", json!({"image": "img"}), gated(&gate).joinable(), Duration::from_secs(5), r2);
        assert_eq!(jobs.list(Some(State::Running)).len(), 1, "the second call joined");
        drop(open);
        assert_eq!(rx2.recv_timeout(Duration::from_secs(5)).unwrap().unwrap(), json!({"status": "success"}));
        std::thread::sleep(Duration::from_millis(50));
        let (record, _) = jobs.get(&id, true).unwrap();
        assert_eq!(
            (record["state"].clone(), record["result"].clone()),
            (json!("success"), json!({"status": "success"}))
        );
        let finished = events(&ev, JOB_FINISHED);
        assert_eq!(finished.len(), 1);
        assert_eq!(
            (finished[0]["job_id"].as_str(), finished[0]["status"].as_str()),
            (Some(id.as_str()), Some("success"))
        );
    }

    #[test]
    fn bounds_hold_for_a_hundred_jobs() {
        let (jobs, _ev) = jobs();
        let (open, gate) = bounded::<()>(0);
        let mut refused = 0;
        for i in 0..100 {
            let (r, rx) = reply();
            let work = Work::new(format!("img{i}"), "pulling", {
                let gate = gate.clone();
                move |_| {
                    let _ = gate.recv();
                    Ok(json!({}))
                }
            });
            jobs.start("pull_image", json!({}), work, Duration::ZERO, r);
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                // Beyond the threads a job waits, and the pending reply says so.
                Ok(p) => assert!(i < MAX_THREADS || (p["queued"] == true && p["queue_position"].is_u64()), "{i}: {p}"),
                Err(Error::Busy(_)) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 100 - MAX_LIVE);
        {
            let t = lock(&jobs.shared.table);
            assert_eq!((t.live.len(), t.threads, t.queue.len()), (MAX_LIVE, MAX_THREADS, MAX_LIVE - MAX_THREADS));
        }
        drop(open);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&jobs.shared.table).live.is_empty() {
            assert!(Instant::now() < deadline, "the gated jobs did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..300 {
            let (r, rx) = reply();
            let work = Work::new("x", "pulling", |_| Ok(json!({})));
            jobs.start("pull_image", json!({}), work, Duration::from_secs(5), r);
            rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&jobs.shared.table).threads > 0 {
            assert!(Instant::now() < deadline, "job threads did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = lock(&jobs.shared.table);
        assert_eq!((t.live.len(), t.finished.len()), (0, MAX_FINISHED));
    }

    #[test]
    fn cancel_stops_a_running_job_and_a_queued_one() {
        let (jobs, ev) = jobs();
        let (r, rx) = reply();
        let work = Work::new("img", "pulling", |p| {
            let (stop_tx, stop_rx) = bounded::<()>(1);
            p.stoppable(Canceller::new(move || {
                let _ = stop_tx.try_send(());
            }));
            stop_rx.recv_timeout(Duration::from_secs(10)).expect("stopped by cancel");
            Err(Error::Cancelled(p.pull_left()))
        });
        jobs.start("pull_image", json!({}), work, Duration::ZERO, r);
        let id = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap()["job_id"].as_str().unwrap().to_string();
        std::thread::sleep(Duration::from_millis(50));
        let (c, crx) = reply();
        jobs.cancel(&id, c);
        let done = crx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(done["job"]["state"], "cancelled", "{done}");
        assert!(done["job"]["error"].as_str().unwrap().contains("the pull was stopped"), "{done}");
        let finished = events(&ev, JOB_FINISHED);
        assert_eq!(finished[0]["status"], "cancelled");

        let (c, crx) = reply();
        jobs.cancel("job-nope", c);
        assert!(matches!(crx.recv().unwrap(), Err(Error::Params(_))));
    }

    #[test]
    fn progress_events_are_paced_and_the_last_is_sent() {
        let (jobs, ev) = jobs();
        let (r, rx) = reply();
        let work = Work::new("img", "pulling", |p| {
            for i in 1..=100u64 {
                p.pulled(&PullProgress { bytes_done: i, bytes_total: 100, ..PullProgress::default() });
            }
            p.phase("extracting");
            Ok(json!({}))
        });
        jobs.start("pull_image", json!({}), work, Duration::from_secs(5), r);
        rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let progress = events(&ev, JOB_PROGRESS);
        // queued, running, one paced update, the phase change.
        assert!(progress.len() <= 4, "{progress:?}");
        let last = progress.last().unwrap();
        assert_eq!((last["bytes_done"].as_u64(), last["percent"].as_f64()), (Some(100), Some(100.0)));
        assert_eq!(last["phase"], "extracting");
    }

    #[test]
    fn params_lose_their_secrets() {
        let p = json!({"image": "i", "auth": {"username": "u", "password": "p"},
                       "spec": {"environment": {"KEY": "v"}, "registry_password": "x"}});
        let Value::Object(p) = p else { unreachable!() };
        assert_eq!(public_params(&p), json!({"image": "i", "spec": {"environment": {"KEY": "<hidden>"}}}));
    }
}
