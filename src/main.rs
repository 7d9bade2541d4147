//! Wires the threads together: engine client, state thread, driver, request
//! workers and the mesh transport; then waits for SIGTERM/SIGINT.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::bounded;

use argh::FromArgs;
use dcd::config::{self, Config, Flags};
use dcd::driver::Driver;
use dcd::engine::{docker::Docker, sim::Sim, Engine};
use dcd::events::Events;
use dcd::mesh::{self, Inbound, Publish};
use dcd::notify::Notifier;
use dcd::serve::{describer, Workers};
use dcd::signals;
use dcd::state::State;
use dcd::watchdog::{self, Watch};

/// Orderly shutdown gets this long before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

fn main() {
    let mut flags = parse_flags();
    let cfg = match config::resolve(&flags, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dcd: {e}");
            std::process::exit(2);
        }
    };
    if let Some(command) = flags.command.take() {
        std::process::exit(dcd::client::run(command, &cfg.mesh));
    }
    init_logging();
    if let Err(e) = run(cfg) {
        eprintln!("dcd: {e}");
        std::process::exit(1);
    }
}

/// `argh::from_env`, with `exec -it` taken as docker takes it.
fn parse_flags() -> Flags {
    let args = dcd::client::docker_style(std::env::args().collect());
    let name = args.first().and_then(|a| a.rsplit('/').next()).unwrap_or("dcd").to_string();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    Flags::from_args(&[&name], &rest).unwrap_or_else(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            std::process::exit(0)
        }
        Err(()) => {
            eprintln!("{}\nRun {name} --help for more information.", early.output);
            std::process::exit(1)
        }
    })
}

fn init_logging() {
    let level = std::env::var("DCD_LOG_LEVEL").unwrap_or_else(|_| "info".into()).to_ascii_lowercase();
    let default = match level.as_str() {
        "warning" => "warn",
        "critical" | "fatal" => "error",
        other => other,
    };
    // zenoh logs through `tracing` and is not bridged; keep our own crate's level.
    // env_logger's own layout, `[2026-11-22T06:08:00Z INFO  dcd::serve] ...`, with our RFC3339
    // clock instead of its humantime feature (jiff, tens of KB of the binary).
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("RUST_LOG", format!("dcd={default}")))
        .format(|buf, r| {
            use std::io::Write;
            writeln!(buf, "[{} {:<5} {}] {}", dcd::time::now_rfc3339(), r.level(), r.target(), r.args())
        })
        .init();
}

fn run(cfg: Config) -> Result<(), String> {
    // First: no other thread may exist yet (see `mesh::prepare` and `heap::limit_arenas`).
    dcd::heap::limit_arenas();
    let transport = mesh::prepare(cfg.mesh.clone()).map_err(|e| e.to_string())?;
    let signals = signals::block(&[libc::SIGTERM, libc::SIGINT]);
    let engine: Arc<dyn Engine> = if cfg.simulate {
        Arc::new(Sim::new())
    } else {
        let docker = Docker::connect(cfg.docker_host.as_deref()).map_err(|e| e.to_string())?;
        // In a container, an engine socket that was never mounted is a deployment mistake, not an
        // engine that is down: say so rather than wait for it. Podman's socket counts (found as
        // outside a container, when Docker's is absent).
        let socket = docker.host().and_then(|h| h.strip_prefix("unix://").map(String::from));
        if cfg.in_container && cfg.docker_host.is_none() && socket.is_some_and(|s| !std::path::Path::new(&s).exists()) {
            return Err("no /var/run/docker.sock (nor Podman's /run/podman/podman.sock) in this container: \
                        mount one, or set DCD_SIM=1"
                .into());
        }
        Arc::new(docker)
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
    // The engine is first asked (the baseline, the status) while the mesh connects.
    let state = State::spawn(engine.clone(), cfg.state_poll_hz, events.clone(), cfg.forward);
    let driver = Driver::new(engine, cfg.simulate, cfg.state_poll_hz, state.handle(), events, cfg.policy);
    let driver = Arc::new(driver.with_exec_idle_timeout(cfg.exec_idle_timeout));

    let (inbound_tx, inbound_rx) = bounded::<Inbound>(256);
    let (publish_tx, publish_rx) = bounded::<Publish>(256);
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let engine_asked = Arc::new(AtomicBool::new(false));
    let describe = describer(driver.clone(), device_id.clone(), engine_asked.clone())?;
    let pulse = transport.pulse();
    let transport = transport
        .spawn(describe, inbound_tx, [state_rx, bulk_rx], publish_rx, stop_rx.clone())
        .map_err(|e| format!("cannot start the mesh thread: {e}"))?;
    // What a request does is news only after the baseline.
    state.baseline();
    let workers = Workers::start(cfg.workers, driver.clone(), &device_id, inbound_rx, publish_tx)?;
    let notifier = Notifier::new(cfg.notify_socket.as_deref());
    if let Some(n) = notifier {
        let watch = Watch { pulse, busy: workers.busy(), engine_asked };
        watchdog::start(n, cfg.watchdog, watch, stop_rx).map_err(|e| format!("cannot start the watchdog: {e}"))?;
    }

    let sig = signals::wait(&signals);
    log::info!("signal {sig}: shutting down");
    if let Some(n) = Notifier::new(cfg.notify_socket.as_deref()) {
        n.send("STOPPING=1");
    }
    std::thread::spawn(move || {
        let sig = signals::wait(&signals);
        log::warn!("second signal {sig}: exiting now");
        std::process::exit(130);
    });
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_GRACE);
        log::warn!("shutdown took longer than {SHUTDOWN_GRACE:?}: exiting");
        std::process::exit(1);
    });
    // Sessions and follows end first, while the transport still runs, so that
    // their last events (`exec_exit` with reason "shutdown") go out before it
    // departs; this takes about a second at most (the sessions' kill wait).
    driver.shutdown();
    // The transport departs and closes; its inbound sender goes with it, so
    // the workers finish what they hold and stop.
    drop(stop_tx);
    let _ = transport.join();
    workers.join();
    state.shutdown();
    Ok(())
}
