//! JSON-RPC on the mesh (spec §2.3, §4.3): turns a request payload into a
//! reply payload, and a broadcast envelope into an `async_reply`. This is the
//! one place where driver errors become JSON-RPC error codes and messages.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::driver::Driver;
use crate::error::Error;
use crate::jobs::{Body, Reply};

/// Requests larger than this are dropped unread (spec: bad input is dropped).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Deeper JSON than this is dropped before it reaches serde's recursion.
const MAX_DEPTH: usize = 64;
/// How far ahead a broadcast may schedule itself with `fire_at`.
const MAX_FIRE_DELAY: Duration = Duration::from_secs(60);

/// The registration params of this device (spec §3.6), also the body of a
/// `requestRegistration` result and the base of presence.
pub fn registration(driver: &Driver, device_id: &str) -> Value {
    with_status(driver, device_id, driver.status())
}

/// The registration's `status` before the engine has answered (`registration` asks it, and may wait).
pub fn status_pending() -> Value {
    json!({"ts": crate::time::now_rfc3339(), "availability": "offline", "busy_score": 0.0,
           "online": true, "error_state": "the engine has not answered yet"})
}

/// The registration params with the given `status`.
pub fn with_status(driver: &Driver, device_id: &str, status: Value) -> Value {
    json!({
        "device_id": device_id,
        "device_ttl": 15,
        "capabilities": driver.capabilities(),
        "identity": driver.identity(device_id),
        "status": status,
    })
}

/// Handle one request: its reply goes to `send`, from this thread or, for a
/// function that runs as a job, later from the job's thread, so the caller's
/// thread never waits for long work. Nothing is sent, and `send` is dropped,
/// for malformed JSON, a request without `id` or a batch, as the Python
/// device does. `max_payload` is the largest reply the transport can carry; a
/// bigger result becomes a -32000 error reply.
pub fn handle(
    driver: &Driver,
    device_id: &str,
    payload: &[u8],
    max_payload: Option<usize>,
    send: impl FnOnce(Vec<u8>) + Send + 'static,
) {
    if payload.len() > MAX_REQUEST_BYTES || too_deep(payload) {
        log::warn!("dropped a request of {} bytes: too large or too deeply nested", payload.len());
        return;
    }
    let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(payload) else {
        return;
    };
    let Some(id) = req.remove("id") else { return };
    let method = match req.get("method") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => "None".to_string(),
        Some(other) => other.to_string(),
    };
    let name = method.clone();
    let reply: Reply = Box::new(move |outcome| {
        let bytes = match outcome {
            Ok(Body::Value(result)) => serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": id, "result": result})),
            Ok(Body::Json(result)) => text_reply(&id, &result),
            Err(e) => serde_json::to_vec(&error_reply(&id, &name, &e)),
        };
        let Ok(bytes) = bytes else { return };
        let bytes = match max_payload {
            Some(max) if bytes.len() > max => {
                let e = Error::TooLarge { bytes: bytes.len(), max };
                let Ok(b) = serde_json::to_vec(&error_reply(&id, &name, &e)) else { return };
                b
            }
            _ => bytes,
        };
        send(bytes)
    });
    if method == "requestRegistration" {
        return reply(Ok(registration(driver, device_id).into()));
    }
    match req.remove("params") {
        None => call(driver, &method, Map::new(), reply),
        Some(Value::Object(p)) => call(driver, &method, p, reply),
        Some(_) => reply(Err(Error::Params("params must be an object of named arguments".into()))),
    }
}

/// Strip the reserved params and run the driver. The caller from `_dc_meta`
/// is kept for the log only.
fn call(driver: &Driver, method: &str, mut params: Map<String, Value>, reply: Reply) {
    let meta = params.remove("_dc_meta");
    let direct = params.remove("source_device");
    let caller = meta
        .as_ref()
        .and_then(|m| m.get("source_device"))
        .or(direct.as_ref())
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string();
    log::debug!("rpc {method} from {caller}");
    let name = method.to_string();
    driver.call(
        method,
        params,
        Box::new(move |r| {
            if let Err(e) = &r {
                log::info!("rpc {name} from {caller} failed: {e}");
            }
            reply(r)
        }),
    )
}

/// A success reply around a result that is JSON text already, joined
/// rather than parsed and encoded again.
fn text_reply(id: &Value, result: &str) -> serde_json::Result<Vec<u8>> {
    let id = serde_json::to_vec(id)?;
    let mut b = Vec::with_capacity(id.len() + result.len() + 40);
    b.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    b.extend_from_slice(&id);
    b.extend_from_slice(br#","result":"#);
    b.extend_from_slice(result.as_bytes());
    b.push(b'}');
    Ok(b)
}

fn error_reply(id: &Value, method: &str, e: &Error) -> Value {
    let (code, message) = match e {
        Error::UnknownMethod => (-32601, format!("Unknown method: {method}")),
        other => (-32000, format!("Error invoking {method}: {other}")),
    };
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A broadcast envelope (spec §4.3) this device answers, checked.
#[derive(Debug)]
pub struct Broadcast {
    cid: String,
    function: String,
    params: Map<String, Value>,
    /// How long until its `fire_at`, when that is still ahead.
    pub delay: Option<Duration>,
}

/// Parse a broadcast envelope, or `None` when this device must stay silent
/// (not targeted, a `where` predicate, too late, too far ahead, malformed).
/// A broadcast to fire later is returned with its `delay`: the caller
/// schedules it, so no worker sleeps for it.
pub fn broadcast(device_id: &str, payload: &[u8]) -> Option<Broadcast> {
    if payload.len() > MAX_REQUEST_BYTES || too_deep(payload) {
        return None;
    }
    let Ok(Value::Object(env)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    let cid = env.get("correlation_id")?.as_str()?;
    let function = env.get("function")?.as_str()?;
    if !cid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    if let Some(Value::Array(targets)) = env.get("targets") {
        if !targets.is_empty() && !targets.iter().any(|t| t == device_id) {
            return None;
        }
    }
    if env.get("where").is_some_and(|w| !w.is_null()) {
        // No CEL engine here: fail closed, as a Python device without [predicate] does.
        log::info!("broadcast {cid}: `where` predicates are not supported; not answering");
        return None;
    }
    let mut delay = None;
    if let Some(fire_at) = env.get("fire_at").and_then(Value::as_f64) {
        let wait = fire_at - crate::time::now_epoch();
        let on_late = env.get("on_late").and_then(Value::as_str).unwrap_or("skip");
        if wait < 0.0 && on_late == "skip" {
            return None;
        }
        if wait > MAX_FIRE_DELAY.as_secs_f64() {
            log::info!("broadcast {cid}: fire_at is {wait:.0}s ahead, more than we hold; not answering");
            return None;
        }
        delay = (wait > 0.0).then(|| Duration::from_secs_f64(wait));
    }
    let params = match env.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return None,
    };
    Some(Broadcast { cid: cid.to_string(), function: function.to_string(), params, delay })
}

/// Run a broadcast now. Its `async_reply` goes to `publish` (topic relative
/// to the device, payload) when the function has answered: at once, or from
/// a job's thread, as for a request.
pub fn fire(driver: &Driver, device_id: &str, b: Broadcast, publish: impl FnOnce(String, Vec<u8>) + Send + 'static) {
    let Broadcast { cid, function, params, .. } = b;
    let fired = crate::time::now_epoch();
    let mut reply = json!({"correlation_id": cid, "device_id": device_id, "actually_fired_at": fired});
    let topic = format!("event.async_reply.{cid}");
    let name = function.clone();
    let answer: Reply = Box::new(move |outcome| {
        match outcome {
            Ok(result) => {
                reply["success"] = json!(true);
                reply["result"] = result.into_value();
            }
            Err(e) => {
                let message = match e {
                    Error::UnknownMethod => format!("unknown function: {name}"),
                    other => other.to_string(),
                };
                reply["success"] = json!(false);
                reply["error"] = json!({"code": "invoke_failed", "message": message});
            }
        }
        if let Ok(payload) = serde_json::to_vec(&reply) {
            publish(topic, payload)
        }
    });
    call(driver, &function, params, answer)
}

/// True when the JSON nests deeper than `MAX_DEPTH` (a cheap byte scan that
/// ignores brackets inside strings).
fn too_deep(payload: &[u8]) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in payload {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_given_as_text_replies_as_its_value_would() {
        let id = json!(7);
        let result = json!({"containers": [{"id": "a\"b", "labels": {}}], "count": 1, "status": "success"});
        let reply: Value = serde_json::from_slice(&text_reply(&id, &result.to_string()).unwrap()).unwrap();
        assert_eq!(reply, json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }
}
