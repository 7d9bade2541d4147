//! Readiness and liveness for systemd (`Type=notify`, `WatchdogSec=`): the
//! daemon says `READY=1` once the mesh is connected and the engine has
//! answered or been found offline, and pings the watchdog only while its own
//! liveness check holds, so systemd restarts a wedged daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::mesh::Pulse;
use crate::notify::Notifier;
use crate::serve::Busy;

/// The transport thread goes round its loop at least every 5 s (`mesh`);
/// this long without a turn means it is wedged.
const TRANSPORT_STALL: Duration = Duration::from_secs(12);
/// Every request worker on one call for this long means the pool is wedged:
/// longer than any engine call's own deadline, including a pull.
const WORKERS_STUCK: Duration = Duration::from_secs(600);
/// How often readiness is looked for before it is reached.
const READY_POLL: Duration = Duration::from_millis(50);

/// What the watchdog watches.
pub struct Watch {
    pub pulse: Pulse,
    pub busy: Busy,
    /// Set once the engine has answered, or been found offline.
    pub engine_asked: Arc<AtomicBool>,
}

impl Watch {
    /// Why the daemon is not live, or `None` when it is.
    fn trouble(&self) -> Option<String> {
        let since = self.pulse.since_turn();
        if since > TRANSPORT_STALL {
            return Some(format!("the transport thread has not turned over for {}s", since.as_secs()));
        }
        if self.busy.all_stuck(WORKERS_STUCK) {
            return Some(format!("every request worker has been on one call for over {}s", WORKERS_STUCK.as_secs()));
        }
        None
    }
}

/// Start the thread that tells systemd; it ends when `stop` disconnects.
pub fn start(
    notifier: Notifier,
    interval: Option<Duration>,
    watch: Watch,
    stop: Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("watchdog".into()).spawn(move || {
        while !(watch.pulse.connected() && watch.engine_asked.load(Ordering::Relaxed)) {
            if stop.recv_timeout(READY_POLL).is_err_and(|e| e.is_disconnected()) {
                return;
            }
        }
        notifier.send("READY=1");
        log::info!("told systemd we are ready");
        let Some(interval) = interval else { return };
        // Half the interval, as sd_watchdog_enabled(3) advises.
        let every = interval / 2;
        let mut wedged = false;
        loop {
            match watch.trouble() {
                None => {
                    notifier.send("WATCHDOG=1");
                    wedged = false;
                }
                Some(why) if !wedged => {
                    log::error!("not pinging the systemd watchdog: {why}");
                    wedged = true;
                }
                Some(_) => {}
            }
            if stop.recv_timeout(every).is_err_and(|e| e.is_disconnected()) {
                return;
            }
        }
    })
}
