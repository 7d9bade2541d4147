//! The simulator behind a counter of engine calls, for the in-process tests that must know
//! whether (and how often) the engine was asked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use dcd::engine::{
    sim::Sim, Credentials, Engine, ExecCommand, ExecOutput, LogOptions, Object, Result as EngineResult, Stream, Watch,
};

/// The simulator, counting the calls that would create something on the host, and every call.
pub struct Counting {
    pub sim: Sim,
    pub creates: AtomicUsize,
    pub pulls: AtomicUsize,
    /// Every call made, of any kind.
    pub calls: AtomicUsize,
}

impl Counting {
    pub fn new() -> Counting {
        Counting { sim: Sim::new(), creates: 0.into(), pulls: 0.into(), calls: 0.into() }
    }

    /// Every call made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Engine for Counting {
    fn info(&self) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.info()
    }
    fn ping(&self) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.ping()
    }
    fn list_containers(&self, all: bool) -> EngineResult<Vec<Value>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.list_containers(all)
    }
    fn inspect_container(&self, id: &str) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.inspect_container(id)
    }
    fn create_container(&self, name: Option<&str>, body: &Value) -> EngineResult<String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.sim.create_container(name, body)
    }
    fn start_container(&self, id: &str) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.start_container(id)
    }
    fn stop_container(&self, id: &str, timeout_s: i64) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.stop_container(id, timeout_s)
    }
    fn restart_container(&self, id: &str, timeout_s: i64) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.restart_container(id, timeout_s)
    }
    fn remove_container(&self, id: &str, force: bool) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.remove_container(id, force)
    }
    fn rename_container(&self, id: &str, name: &str) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.rename_container(id, name)
    }
    fn logs(&self, id: &str, opts: &LogOptions) -> EngineResult<Stream> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.logs(id, opts)
    }
    fn exec(&self, id: &str, command: &ExecCommand, limit: Duration, watch: &dyn Watch) -> EngineResult<ExecOutput> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.exec(id, command, limit, watch)
    }
    fn pull_image(&self, image: &str, auth: Option<&Credentials>) -> EngineResult<Vec<String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.pulls.fetch_add(1, Ordering::SeqCst);
        self.sim.pull_image(image, auth)
    }
    fn list_images(&self) -> EngineResult<Vec<Value>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.list_images()
    }
    fn inspect_image(&self, reference: &str) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.inspect_image(reference)
    }
    fn stats(&self, id: &str) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.stats(id)
    }
    fn list_objects(&self, kind: Object) -> EngineResult<Vec<Value>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.list_objects(kind)
    }
    fn create_object(&self, kind: Object, body: &Value) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.sim.create_object(kind, body)
    }
    fn inspect_object(&self, kind: Object, id: &str) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.inspect_object(kind, id)
    }
    fn remove_object(&self, kind: Object, id: &str, force: bool) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.remove_object(kind, id, force)
    }
    fn connect_network(&self, network: &str, id: &str, aliases: &[String]) -> EngineResult<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.connect_network(network, id, aliases)
    }
    fn remove_image(&self, reference: &str, force: bool) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.remove_image(reference, force)
    }
    fn prune_images(&self, filters: &Value) -> EngineResult<Value> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.prune_images(filters)
    }
    fn events(&self, since: Option<f64>) -> EngineResult<Stream> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.events(since)
    }
    fn host(&self) -> Option<String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sim.host()
    }
}
