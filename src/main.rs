//! Wires the threads together: engine client, state thread, driver, request
//! workers and the mesh transport; then waits for SIGTERM/SIGINT.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};

use dcd::config::{self, Config, Flags};
use dcd::driver::{Driver, Events};
use dcd::engine::{docker::Docker, sim::Sim, Engine};
use dcd::mesh::{self, Inbound, Publish};
use dcd::rpc;
use dcd::state::State;

/// Orderly shutdown gets this long before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How often what the transport announces is brought up to date.
const DESCRIBE_EVERY: Duration = Duration::from_secs(1);

fn main() {
    let flags: Flags = argh::from_env();
    init_logging();
    let cfg = match config::resolve(&flags, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dcd: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("dcd: {e}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let level = std::env::var("DCD_LOG_LEVEL").unwrap_or_else(|_| "info".into()).to_ascii_lowercase();
    let default = match level.as_str() {
        "warning" => "warn",
        "critical" | "fatal" => "error",
        other => other,
    };
    // zenoh logs through `tracing` and is not bridged; keep our own crate's level.
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("RUST_LOG", format!("dcd={default}"))).init();
}

fn run(cfg: Config) -> Result<(), String> {
    // First: no other thread may exist yet (see `mesh::prepare`).
    let transport = mesh::prepare(cfg.mesh.clone()).map_err(|e| e.to_string())?;
    let signals = block_signals();
    let engine: Arc<dyn Engine> = if cfg.simulate {
        Arc::new(Sim::new())
    } else {
        if cfg.in_container && cfg.docker_host.is_none() && !std::path::Path::new("/var/run/docker.sock").exists() {
            return Err("no /var/run/docker.sock in this container: mount it, or set DCD_SIM=1".into());
        }
        Arc::new(Docker::connect(cfg.docker_host.as_deref()).map_err(|e| e.to_string())?)
    };
    let device_id = cfg.mesh.device_id.clone();
    log::info!(
        "dcd {} as {device_id} in tenant {} ({:?}, {}), engine {}",
        env!("CARGO_PKG_VERSION"),
        cfg.mesh.tenant,
        cfg.mesh.backend,
        if cfg.mesh.d2d { "d2d" } else { "infra" },
        engine.host().unwrap_or_else(|| "simulated".into())
    );

    let (state_tx, state_rx) = bounded(1024);
    let (bulk_tx, bulk_rx) = bounded(1024);
    let events = Events::new(state_tx, bulk_tx);
    let state = State::start(engine.clone(), cfg.state_poll_hz, events.clone(), cfg.forward);
    let driver = Arc::new(Driver::new(engine, cfg.simulate, cfg.state_poll_hz, state.handle(), events, cfg.policy));

    let (inbound_tx, inbound_rx) = bounded::<Inbound>(256);
    let (publish_tx, publish_rx) = bounded::<Publish>(256);
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let describe = describer(driver.clone(), device_id.clone())?;
    let transport = transport
        .spawn(describe, inbound_tx, [state_rx, bulk_rx], publish_rx, stop_rx)
        .map_err(|e| format!("cannot start the mesh thread: {e}"))?;
    let workers: Vec<_> = (0..cfg.workers)
        .map(|i| {
            let (driver, rx, publish, id) = (driver.clone(), inbound_rx.clone(), publish_tx.clone(), device_id.clone());
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&driver, &id, &rx, &publish))
                .map_err(|e| format!("cannot start a worker: {e}"))
        })
        .collect::<Result<_, _>>()?;
    drop((inbound_rx, publish_tx));

    let sig = wait_signal(&signals);
    log::info!("signal {sig}: shutting down");
    std::thread::spawn(move || {
        let sig = wait_signal(&signals);
        log::warn!("second signal {sig}: exiting now");
        std::process::exit(130);
    });
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_GRACE);
        log::warn!("shutdown took longer than {SHUTDOWN_GRACE:?}: exiting");
        std::process::exit(1);
    });
    // The transport departs and closes; its inbound sender goes with it, so
    // the workers finish what they hold and stop.
    drop(stop_tx);
    let _ = transport.join();
    driver.shutdown();
    for w in workers {
        let _ = w.join();
    }
    state.shutdown();
    Ok(())
}

/// What the transport thread announces (presence, registration). It must never wait for the
/// engine: a hung engine would otherwise silence presence, heartbeats and every request for the
/// engine's call timeout, again and again. So a thread of its own asks the driver, and the
/// transport reads its latest answer. Start-up waits for the first answer only briefly.
fn describer(driver: Arc<Driver>, id: String) -> Result<mesh::Describe, String> {
    // Capabilities and identity never change while the daemon runs: built once. Only the status
    // is refreshed, and the whole body is put together only when the transport sends it.
    let base = rpc::registration_pending(&driver, &id);
    let (first_tx, first_rx) = bounded(1);
    let status = Arc::new(Mutex::new(base["status"].clone()));
    let latest = status.clone();
    std::thread::Builder::new()
        .name("describe".into())
        .spawn(move || loop {
            let fresh = driver.status();
            *latest.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            let _ = first_tx.try_send(());
            std::thread::sleep(DESCRIBE_EVERY);
        })
        .map_err(|e| format!("cannot start the describe thread: {e}"))?;
    let _ = first_rx.recv_timeout(DESCRIBE_EVERY);
    Ok(Arc::new(move || {
        let mut body = base.clone();
        body["status"] = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        body
    }))
}

/// A worker: run requests and broadcasts until the transport goes away.
fn work(driver: &Driver, device_id: &str, rx: &Receiver<Inbound>, publish: &Sender<Publish>) {
    for msg in rx {
        match msg {
            Inbound::Request { payload, reply } => {
                if let Some(bytes) = rpc::handle(driver, device_id, &payload, reply.max_payload) {
                    reply.send(bytes);
                }
            }
            Inbound::Broadcast { payload } => {
                if let Some((topic, payload)) = rpc::broadcast(driver, device_id, &payload) {
                    let _ = publish.send(Publish { topic, payload });
                }
            }
        }
    }
}

/// Block SIGTERM and SIGINT in every thread (spawned threads inherit the
/// mask), so they are only ever taken by `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` was initialised by `block_signals`.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
