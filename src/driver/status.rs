//! The host itself: whether the engine answers, what it is, and what this
//! device says of itself in presence and registration.

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{no_params, Call, Driver, Function, Target};
use crate::engine::EngineError;
use crate::error::Result;
use crate::policy::Kind;
use crate::sync::lock;

impl Driver {
    /// `identity` of presence and registration (spec §7.1).
    pub fn identity(&self, device_id: &str) -> Value {
        let model =
            if self.simulate { format!("simulated ({device_id})") } else { format!("Docker Engine ({device_id})") };
        json!({"device_type": "docker_host", "manufacturer": "Docker", "model": model,
               "description": "Docker host \u{2014} provision and control containers via Device Connect"})
    }

    /// `status` of presence and registration: "idle" while the engine answers,
    /// "offline" with `error_state` when it does not. Asked every few seconds
    /// for as long as the daemon runs, so it only pings the engine.
    pub fn status(&self) -> Value {
        let alive = self.alive.get(false, || self.engine.ping().map_err(|e| e.to_string()));
        self.note_engine(&alive);
        let mut s = json!({"ts": crate::time::now_rfc3339(), "availability": "idle",
                           "busy_score": 0.0, "online": true});
        if let Err(e) = alive {
            s["availability"] = json!("offline");
            s["error_state"] = json!(e);
        }
        s
    }

    /// Log each change of whether the engine answers, once, with what to check.
    fn note_engine(&self, alive: &std::result::Result<(), String>) {
        let up = alive.is_ok();
        let before = lock(&self.engine_up).replace(up);
        if before == Some(up) {
            return;
        }
        let host = self.engine.host().unwrap_or_else(|| "the simulator".into());
        match alive {
            Err(e) => log::warn!("engine at {host} does not answer: {e} ({})", engine_hint(e)),
            Ok(()) if before.is_some() => log::info!("engine at {host} answers again"),
            Ok(()) => log::debug!("engine at {host} answers"),
        }
    }

    /// Ask the engine now for what `get_status` reports (at start-up, so that the first caller
    /// does not wait for the engine's slowest calls; one that comes meanwhile waits for this).
    pub fn prefetch_info(&self) {
        let _ = self.cached_info(false);
    }

    fn cached_info(&self, refresh: bool) -> std::result::Result<Value, EngineError> {
        self.info.get(refresh, || {
            self.engine.info().map(|mut v| {
                v["connected"] = json!(true);
                if self.simulate {
                    v["simulated"] = json!(true);
                }
                v
            })
        })
    }
}

/// What an operator should check, from how the engine failed.
fn engine_hint(e: &str) -> &'static str {
    if e.contains("os error 2") || e.contains("No such file") {
        "is Docker (or Podman) running, and is its socket mounted into this container?"
    } else if e.contains("os error 13") || e.contains("ermission denied") {
        "is this user in the docker group, or allowed on the socket?"
    } else if e.contains("os error 111") || e.contains("refused") {
        "is the engine running and listening at this address?"
    } else {
        "is the engine running, and is this its address?"
    }
}

pub const GET_STATUS: Function = Function::new::<GetStatus>(
    "get_status",
    Kind::Read,
    Target::Host,
    "Return driver and Docker Engine connectivity status.",
    no_params,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct GetStatus {}

impl Call for GetStatus {
    fn call(self, d: &Driver) -> Result<Value> {
        // `EngineInfo` plus `connected` (and `error` when not), from the cache unless stale.
        let docker = match d.cached_info(false) {
            Ok(v) => v,
            Err(e) => json!({"connected": false, "error": e.to_string()}),
        };
        Ok(json!({
            "status": "success",
            "connected": docker["connected"],
            "device_type": "docker_host",
            "simulate": d.simulate,
            "docker_host": d.engine.host(),
            "state_poll_hz": d.state_poll_hz,
            "log_follow_active": d.follows.active(),
            "docker": docker,
        }))
    }
}

pub const PING_DOCKER: Function = Function::new::<PingDocker>(
    "ping_docker",
    Kind::Read,
    Target::Host,
    "Ping the Docker Engine and refresh cached engine metadata.",
    no_params,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PingDocker {}

impl Call for PingDocker {
    fn call(self, d: &Driver) -> Result<Value> {
        let mut info = d.cached_info(true)?;
        info["status"] = json!("success");
        Ok(info)
    }
}
