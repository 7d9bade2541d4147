//! The threads between the mesh and the driver: request workers, the
//! scheduler that holds broadcasts until their `fire_at`, and the describe
//! thread that keeps what the transport announces up to date.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use serde_json::Value;

use crate::driver::Driver;
use crate::heap;
use crate::mesh::{Describe, Inbound, Publish};
use crate::rpc::{self, Broadcast};
use crate::sync::lock;

/// How often what the transport announces is brought up to date.
const DESCRIBE_EVERY: Duration = Duration::from_secs(1);
/// A worker that served calls and then none for this long gives free memory back.
const QUIET: Duration = Duration::from_secs(2);
/// Broadcasts held for a later `fire_at` at once; more are not answered. The two channels
/// carry them boxed: a channel writes all its slots when it is made, so each is resident at
/// `SCHEDULED_MAX` times its item (112 and 96 KiB with a `Broadcast` inline, 32 and 16 boxed).
const SCHEDULED_MAX: usize = 1024;

/// The request workers and the broadcast scheduler. They stop when the
/// transport drops its side of `inbound`.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    busy: Busy,
}

/// When each worker took the call it is on (milliseconds after `since`, plus
/// one; 0 while idle), so the watchdog can tell a pool wedged on calls that
/// never return from one that is merely busy.
#[derive(Clone)]
pub struct Busy {
    since: Instant,
    workers: Arc<[AtomicU64]>,
}

impl Busy {
    fn new(n: usize) -> Busy {
        Busy { since: Instant::now(), workers: (0..n).map(|_| AtomicU64::new(0)).collect() }
    }

    fn set(&self, i: usize, busy: bool) {
        let v = if busy { self.since.elapsed().as_millis() as u64 + 1 } else { 0 };
        self.workers[i].store(v, Ordering::Relaxed);
    }

    /// Whether every worker has been on its current call for longer than `limit`.
    pub fn all_stuck(&self, limit: Duration) -> bool {
        let now = self.since.elapsed().as_millis() as u64 + 1;
        let limit = limit.as_millis() as u64;
        !self.workers.is_empty()
            && self.workers.iter().all(|w| {
                let at = w.load(Ordering::Relaxed);
                at != 0 && now.saturating_sub(at) > limit
            })
    }
}

impl Workers {
    pub fn start(
        n: usize,
        driver: Arc<Driver>,
        device_id: &str,
        inbound: Receiver<Inbound>,
        publish: Sender<Publish>,
    ) -> Result<Workers, String> {
        let (later_tx, later_rx) = bounded::<(Instant, Box<Broadcast>)>(SCHEDULED_MAX);
        let (due_tx, due_rx) = bounded::<Box<Broadcast>>(SCHEDULED_MAX);
        let mut threads = vec![spawn("schedule", move || schedule(&later_rx, &due_tx))?];
        let busy = Busy::new(n);
        for i in 0..n {
            let w = Worker {
                index: i,
                busy: busy.clone(),
                driver: driver.clone(),
                device_id: device_id.to_string(),
                inbound: inbound.clone(),
                due: due_rx.clone(),
                later: later_tx.clone(),
                publish: publish.clone(),
            };
            threads.push(spawn(&format!("worker-{i}"), move || w.run())?);
        }
        Ok(Workers { threads, busy })
    }

    /// What each worker is doing, for the watchdog.
    pub fn busy(&self) -> Busy {
        self.busy.clone()
    }

    /// Wait for every worker and the scheduler to finish.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| format!("cannot start {name}: {e}"))
}

struct Worker {
    index: usize,
    busy: Busy,
    driver: Arc<Driver>,
    device_id: String,
    inbound: Receiver<Inbound>,
    /// Scheduled broadcasts whose time has come.
    due: Receiver<Box<Broadcast>>,
    later: Sender<(Instant, Box<Broadcast>)>,
    publish: Sender<Publish>,
}

impl Worker {
    fn run(&self) {
        // Whether this worker served anything since it last gave memory back.
        let mut served = false;
        loop {
            select! {
                recv(self.inbound) -> msg => {
                    self.busy.set(self.index, true);
                    let more = self.take(msg);
                    self.busy.set(self.index, false);
                    if !more {
                        return;
                    }
                    served = true;
                }
                recv(self.due) -> b => if let Ok(b) = b {
                    self.busy.set(self.index, true);
                    self.fire(*b);
                    self.busy.set(self.index, false);
                    served = true;
                },
                // A burst of calls leaves free memory that the allocator would keep (src/heap.rs).
                default(QUIET) => if std::mem::take(&mut served) {
                    heap::give_back();
                },
            }
        }
    }

    /// Serve one message from the mesh; false when the transport has gone.
    fn take(&self, msg: Result<Inbound, crossbeam_channel::RecvError>) -> bool {
        match msg {
            Ok(Inbound::Request { payload, reply }) => {
                let max = reply.max_payload;
                rpc::handle(&self.driver, &self.device_id, &payload, max, move |bytes| reply.send(bytes));
            }
            Ok(Inbound::Broadcast { payload }) => {
                if let Some(b) = rpc::broadcast(&self.device_id, &payload) {
                    self.fire_or_schedule(b);
                }
            }
            Err(_) => return false,
        }
        true
    }

    fn fire_or_schedule(&self, b: Broadcast) {
        match b.delay {
            Some(delay) => {
                if self.later.try_send((Instant::now() + delay, Box::new(b))).is_err() {
                    log::warn!("{SCHEDULED_MAX} broadcasts already wait for their fire_at; not answering one more");
                }
            }
            None => self.fire(b),
        }
    }

    fn fire(&self, b: Broadcast) {
        let publish = self.publish.clone();
        rpc::fire(&self.driver, &self.device_id, b, move |topic, payload| {
            let _ = publish.send(Publish { topic, payload });
        });
    }
}

/// Hold broadcasts until their time, then hand them to whichever worker is
/// free. Ends when every worker has gone.
fn schedule(later: &Receiver<(Instant, Box<Broadcast>)>, due: &Sender<Box<Broadcast>>) {
    // Ordered by time; the sequence number keeps the heap from comparing broadcasts.
    let mut held: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut items = std::collections::HashMap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, n))) = held.peek().copied() {
            if at > now {
                break;
            }
            held.pop();
            if let Some(b) = items.remove(&n) {
                let _ = due.try_send(b);
            }
        }
        let wait = held.peek().map_or(Duration::from_secs(3600), |Reverse((at, _))| at.saturating_duration_since(now));
        select! {
            recv(later) -> m => match m {
                Ok((at, b)) => {
                    seq += 1;
                    held.push(Reverse((at, seq)));
                    items.insert(seq, b);
                }
                Err(_) => return,
            },
            default(wait) => {}
        }
    }
}

/// What the transport thread announces (presence, registration). It must never wait for the
/// engine: a hung engine would otherwise silence presence, heartbeats and every request for the
/// engine's call timeout, again and again. So a thread of its own asks the driver, and the
/// transport reads its latest answer. Its first announcement waits for the first answer, only
/// briefly; the engine is asked while the mesh connects.
/// `asked` is set once the engine has answered, or been found offline, for the first time.
pub fn describer(driver: Arc<Driver>, id: String, asked: Arc<AtomicBool>) -> Result<Describe, String> {
    let (first_tx, first_rx) = bounded(1);
    let status = Arc::new(Mutex::new(rpc::status_pending()));
    let latest = status.clone();
    let asking = driver.clone();
    spawn("describe", move || {
        let refresh = || {
            let fresh = asking.status();
            *lock(&latest) = fresh;
            asked.store(true, Ordering::Relaxed);
            let _ = first_tx.try_send(());
        };
        refresh();
        // What get_status reports takes the engine's two slowest calls: asked now, while the
        // mesh connects, the first caller finds it ready, or in flight.
        asking.prefetch_info();
        loop {
            std::thread::sleep(DESCRIBE_EVERY);
            refresh();
        }
    })?;
    // Capabilities and identity never change while the daemon runs: built once, and only for
    // the first announcement, in the transport thread once it is connected, so that building
    // them does not delay the transport's start. Only the status is refreshed.
    let base = OnceLock::new();
    let first = AtomicBool::new(true);
    Ok(Arc::new(move || {
        if first.swap(false, Ordering::Relaxed) {
            let _ = first_rx.recv_timeout(DESCRIBE_EVERY);
        }
        let status = lock(&status).clone();
        let base = base.get_or_init(|| rpc::with_status(&driver, &id, Value::Null));
        let mut body = base.clone();
        body["status"] = status;
        body
    }))
}
