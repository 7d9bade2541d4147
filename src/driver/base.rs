//! What every function of the driver shares: the `Driver` (the engine, the
//! policy, the state and log handles), the row type of the function table,
//! and the shapes replies are built from.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::engine::{Engine, EngineError};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::jobs::{public_params, Body, Jobs, Reply, Work, DEFAULT_WAIT_S, MAX_WAIT_S};
use crate::labels::is_managed;
use crate::logs::Follows;
use crate::policy::{ExecRule, Kind, Policy};
use crate::sessions::{Sessions, DEFAULT_IDLE};
use crate::state::{Seen, StateHandle};
use crate::sync::lock;
use crate::view::summary;

/// How long a cached `EngineInfo` (`get_status`), or whether the engine
/// answers at all (presence), is reused before the engine is asked again.
const INFO_TTL: Duration = Duration::from_secs(5);

/// An answer of the engine, reused for `INFO_TTL`. The answer's lock is not held while the
/// engine is asked. One caller asks at a time: one that comes while another asks waits for that
/// answer rather than asking again (so the first `get_status` takes the start-up prefetch's).
/// With a hung engine, each caller still waits at most the one call in flight and its own.
pub(super) struct Cached<T> {
    answer: Mutex<Option<(Instant, T)>>,
    asking: Mutex<()>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached { answer: Mutex::new(None), asking: Mutex::new(()) }
    }
}

impl<T: Clone> Cached<T> {
    /// The cached answer unless it is stale or `refresh`; else a new one.
    pub(super) fn get(&self, refresh: bool, ask: impl FnOnce() -> T) -> T {
        let called = Instant::now();
        let answer = |fresh: &dyn Fn(Instant) -> bool| {
            lock(&self.answer).as_ref().filter(|(at, _)| fresh(*at)).map(|(_, v)| v.clone())
        };
        if !refresh {
            if let Some(v) = answer(&|at| at.elapsed() < INFO_TTL) {
                return v;
            }
        }
        let _asking = lock(&self.asking);
        // An answer that came while this caller waited its turn is as fresh as its own would be.
        if let Some(v) = answer(&|at| at >= called) {
            return v;
        }
        let v = ask();
        *lock(&self.answer) = Some((Instant::now(), v.clone()));
        v
    }
}

pub struct Driver {
    pub(super) engine: Arc<dyn Engine>,
    pub(super) simulate: bool,
    pub(super) state_poll_hz: f64,
    pub(super) state: StateHandle,
    pub(super) follows: Follows,
    pub(super) policy: Policy,
    pub(super) info: Cached<std::result::Result<Value, EngineError>>,
    pub(super) alive: Cached<std::result::Result<(), String>>,
    /// Whether the engine answered when last asked, so that only the changes are logged.
    pub(super) engine_up: Mutex<Option<bool>>,
    pub(super) jobs: Jobs,
    pub(super) sessions: Sessions,
}

/// What a job's work needs of the driver, owned, so that it runs on a job
/// thread after the call that started it has returned.
#[derive(Clone)]
pub(super) struct Reach {
    pub(super) engine: Arc<dyn Engine>,
    state: StateHandle,
}

impl Reach {
    /// The container's summary now, after telling the state thread what we
    /// just did to it, and putting it in the view (so the caller reads its
    /// own write); one that is gone leaves the view.
    pub(super) fn observe(&self, id: &str) -> Result<Value> {
        let view = self.state.view();
        let ticket = view.ticket();
        let inspect = match self.engine.inspect_container(id) {
            Ok(i) => i,
            Err(e) => {
                if let EngineError::NotFound(_) = e {
                    view.remove(id);
                }
                return Err(e.into());
            }
        };
        self.state.observed(Seen::from_inspect(&inspect));
        Ok(view.put(ticket, &inspect))
    }

    /// Container `id` (an id or a name) was just removed: it leaves the view.
    pub(super) fn removed(&self, id: &str) {
        self.state.view().remove(id);
    }

    /// `observe`, for work that goes on whatever it finds (compose): a
    /// container already gone is left to the state poll.
    pub(super) fn observe_quietly(&self, id: &str) {
        if let Err(e) = self.observe(id) {
            log::debug!("{id} not observed: {e}");
        }
    }
}

impl Driver {
    pub fn new(
        engine: Arc<dyn Engine>,
        simulate: bool,
        state_poll_hz: f64,
        state: StateHandle,
        events: Events,
        policy: Policy,
    ) -> Self {
        Driver {
            policy,
            jobs: Jobs::new(events.clone()),
            sessions: Sessions::new(engine.clone(), events.clone(), DEFAULT_IDLE),
            follows: Follows::new(engine.clone(), events),
            engine,
            simulate,
            state_poll_hz,
            state,
            info: Cached::default(),
            alive: Cached::default(),
            engine_up: Mutex::new(None),
        }
    }

    /// Exec sessions idle out after `idle` without input or reads.
    pub fn with_exec_idle_timeout(mut self, idle: Duration) -> Self {
        self.sessions.set_idle_timeout(idle);
        self
    }

    /// Stop every log follow and exec session (shutdown).
    pub fn shutdown(&self) {
        self.follows.stop_all();
        self.sessions.shutdown();
    }

    /// Refuse to touch a container the policy keeps us away from: with
    /// `owned_only` (or `exec: managed` for exec), any container without our
    /// managed label; for exec, also any container the policy would not have
    /// let us create (`Policy::admit_exec`).
    fn guard(&self, id: &str, kind: Kind) -> Result<()> {
        let exec = kind == Kind::Exec;
        let managed_only = self.policy.owned_only || (exec && self.policy.exec == ExecRule::Managed);
        if !managed_only && !exec {
            return Ok(());
        }
        let inspect = self.engine.inspect_container(id)?;
        if managed_only && !is_managed(&inspect["Config"]["Labels"]) {
            return Err(Error::Policy(format!("container {id} is not managed by dcd (owned_only)")));
        }
        if exec {
            self.policy.admit_exec(self.engine.as_ref(), &inspect)?;
        }
        Ok(())
    }

    /// `guard` for a container named by something other than a row's
    /// `container_id` (a spec's `name`); a container that does not exist is no
    /// reason to refuse.
    pub(super) fn guard_if_exists(&self, id: &str, kind: Kind) -> Result<()> {
        match self.guard(id, kind) {
            Ok(()) | Err(Error::Engine(EngineError::NotFound(_))) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn reach(&self) -> Reach {
        Reach { engine: self.engine.clone(), state: self.state.clone() }
    }

    pub(super) fn observe(&self, id: &str) -> Result<Value> {
        self.reach().observe(id)
    }

    pub(super) fn removed(&self, id: &str) {
        self.reach().removed(id)
    }

    /// Refuse a job's record to a caller who could not have started it: under
    /// `owned_only`, a job on a container we do not manage.
    pub(super) fn may_see(&self, container: Option<&str>) -> Result<()> {
        container.map_or(Ok(()), |c| self.guard_if_exists(c, Kind::Read))
    }

    /// From the view while it is current, else from the engine.
    pub(super) fn summary_of(&self, id: &str) -> Result<Value> {
        match self.state.view().find(id) {
            Some(s) => Ok(s),
            None => Ok(summary(&self.engine.inspect_container(id)?)),
        }
    }

    /// From the view while it is current (its summaries' text joined), else
    /// a list and an inspect of each.
    pub(super) fn summaries(&self, all: bool, keep: impl Fn(&Value) -> bool) -> Result<Body> {
        if let Some(texts) = self.state.view().list(all, &keep) {
            let mut json = String::with_capacity(texts.iter().map(|t| t.len() + 1).sum::<usize>() + 48);
            json.push_str(r#"{"containers":["#);
            for (i, t) in texts.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(t);
            }
            json.push_str(&format!(r#"],"count":{},"status":"success"}}"#, texts.len()));
            return Ok(Body::Json(json));
        }
        let mut containers = Vec::new();
        for c in self.engine.list_containers(all)? {
            let Some(id) = c["Id"].as_str() else { continue };
            match self.engine.inspect_container(id) {
                Ok(i) => {
                    let s = summary(&i);
                    if keep(&s) {
                        containers.push(s);
                    }
                }
                // Removed between list and inspect: it is simply gone.
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(json!({"status": "success", "count": containers.len(), "containers": containers}).into())
    }
}

/// Whether a function acts on one container named by its `container_id`
/// param: then the dispatcher runs the ownership guard (`owned_only`, and the
/// exec checks) before the handler, once, for every such row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Host,
    Container,
}

/// A function's arguments, parsed from the keyword params, and what it does
/// with them. Unknown, missing and mistyped params all fail in the parse,
/// with serde's message naming the field.
pub trait Call: DeserializeOwned + Debug {
    fn call(self, d: &Driver) -> Result<Value>;
}

/// A function whose work may take longer than its caller waits (a pull, an
/// exec, a redeploy): it answers at once, or hands over the `Work` of a job
/// whose result the caller gets if it ends within the call's `wait`, else a
/// `pending` reply. Checks that can fail at once (params, policy, a missing
/// container) run in `start`, on the request worker; the long part runs in
/// the `Work`, on a job thread.
pub trait Long: DeserializeOwned + Debug {
    fn start(self, d: &Driver) -> Result<Start>;
}

/// What `Long::start` found.
pub enum Start {
    /// The result, right away.
    Done(Value),
    /// The work to run as a job.
    Job(Work),
}

/// A function that answers through `reply` itself, now or later from another
/// thread (`cancel_job`, which answers once the job has ended).
pub trait Answer: DeserializeOwned + Debug {
    fn answer(self, d: &Driver, reply: Reply);
}

/// A row of the function table.
pub struct Function {
    pub name: &'static str,
    pub kind: Kind,
    pub target: Target,
    pub description: &'static str,
    schema: fn() -> Value,
    /// It runs as a job and takes `wait`.
    long: bool,
    pub(super) run: fn(&Driver, &Function, Map<String, Value>, Reply),
    /// The params as the handler would take them, for the table's tests.
    #[cfg(test)]
    pub(super) parse: fn(Map<String, Value>) -> Result<String>,
}

impl Function {
    pub const fn new<A: Call>(
        name: &'static str,
        kind: Kind,
        target: Target,
        description: &'static str,
        schema: fn() -> Value,
    ) -> Function {
        Function {
            name,
            kind,
            target,
            description,
            schema,
            long: false,
            run: |d, f, params, reply| reply(checked::<A>(d, f, params).and_then(|a| a.call(d)).map(Body::Value)),
            #[cfg(test)]
            parse: |p| args::<A>(p).map(|a| format!("{a:?}")),
        }
    }

    /// A row whose handler may hand its work to a job (`Long`); it takes
    /// `wait` besides the params of `schema`.
    pub const fn job<A: Long>(
        name: &'static str,
        kind: Kind,
        target: Target,
        description: &'static str,
        schema: fn() -> Value,
    ) -> Function {
        Function {
            name,
            kind,
            target,
            description,
            schema,
            long: true,
            run: run_long::<A>,
            #[cfg(test)]
            parse: |mut p| {
                take_wait(&mut p)?;
                args::<A>(p).map(|a| format!("{a:?}"))
            },
        }
    }

    /// A row whose handler answers through the reply itself (`Answer`).
    pub const fn replying<A: Answer>(
        name: &'static str,
        kind: Kind,
        target: Target,
        description: &'static str,
        schema: fn() -> Value,
    ) -> Function {
        Function {
            name,
            kind,
            target,
            description,
            schema,
            long: false,
            run: |d, f, params, reply| match checked::<A>(d, f, params) {
                Ok(a) => a.answer(d, reply),
                Err(e) => reply(Err(e)),
            },
            #[cfg(test)]
            parse: |p| args::<A>(p).map(|a| format!("{a:?}")),
        }
    }

    /// The function's entry in `capabilities.functions`: all five keys, as
    /// spec §3.2 says they always are.
    pub(super) fn advertised(&self) -> Value {
        json!({"name": self.name, "description": self.description, "parameters": self.parameters(),
               "labels": null, "tags": []})
    }

    /// The advertised parameter schema.
    pub fn parameters(&self) -> Value {
        let mut schema = (self.schema)();
        if self.long {
            schema["properties"]["wait"] = json!({"type": "number", "default": DEFAULT_WAIT_S, "minimum": 0,
                "maximum": MAX_WAIT_S,
                "description": "Seconds to wait for the result; longer work answers {\"status\": \"pending\", \
                    \"job_id\"} and goes on as a job (get_job, job_finished)."});
        }
        schema
    }
}

/// The params parsed, and the container guarded when the row targets one.
fn checked<A: DeserializeOwned>(d: &Driver, f: &Function, params: Map<String, Value>) -> Result<A> {
    let target = container_of(f, &params);
    let a: A = args(params)?;
    if let Some(id) = target {
        d.guard(&id, f.kind)?;
    }
    Ok(a)
}

/// The container a row targets.
fn container_of(f: &Function, params: &Map<String, Value>) -> Option<String> {
    match f.target {
        Target::Container => params.get("container_id").and_then(Value::as_str).map(String::from),
        Target::Host => None,
    }
}

fn run_long<A: Long>(d: &Driver, f: &Function, mut params: Map<String, Value>, reply: Reply) {
    let container = container_of(f, &params);
    let started = take_wait(&mut params).and_then(|wait| {
        let public = public_params(&params);
        Ok((wait, public, checked::<A>(d, f, params)?.start(d)?))
    });
    match started {
        Err(e) => reply(Err(e)),
        Ok((_, _, Start::Done(v))) => reply(Ok(v.into())),
        Ok((wait, public, Start::Job(work))) => {
            let work = match container {
                Some(id) => work.on_container(id),
                None => work,
            };
            d.jobs.start(f.name, public, work, wait, reply)
        }
    }
}

/// Take `wait` (seconds) out of a job row's params: default `DEFAULT_WAIT_S`,
/// at most `MAX_WAIT_S`.
fn take_wait(params: &mut Map<String, Value>) -> Result<Duration> {
    let secs = match params.remove("wait") {
        None | Some(Value::Null) => DEFAULT_WAIT_S as f64,
        Some(v) => v.as_f64().filter(|s| *s >= 0.0).ok_or_else(|| {
            Error::Params(format!("wait must be a number of seconds from 0 to {MAX_WAIT_S}, not {v}"))
        })?,
    };
    Ok(Duration::from_secs_f64(secs.min(MAX_WAIT_S as f64)))
}

/// Parse keyword params into a handler's argument struct.
pub(super) fn args<T: DeserializeOwned>(params: Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(params)).map_err(|e| Error::Params(e.to_string()))
}

pub(super) fn no_params() -> Value {
    json!({"type": "object", "properties": {}, "required": []})
}

pub(super) fn container_id_schema() -> Value {
    json!({"type": "string", "description": "Container ID or name."})
}

pub(super) fn id_only_schema() -> Value {
    json!({"type": "object", "properties": {"container_id": container_id_schema()},
           "required": ["container_id"]})
}

pub(super) fn object_schema(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_that_comes_while_another_asks_takes_that_answer() {
        let cached = Cached::default();
        let (asking_tx, asking_rx) = crossbeam_channel::bounded(0);
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                cached.get(false, || {
                    asking_tx.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    1
                })
            });
            asking_rx.recv().unwrap();
            assert_eq!(cached.get(false, || 2), 1, "asked again instead of waiting for the answer in flight");
            assert_eq!(first.join().unwrap(), 1);
        });
        assert_eq!(cached.get(false, || 3), 1, "fresh: not asked");
        assert_eq!(cached.get(true, || 4), 4, "a refresh asks");
        assert_eq!(cached.get(false, || 5), 4);
    }
}
