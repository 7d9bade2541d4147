//! The fuzz targets' invariants, one function per target taking any bytes. The libFuzzer
//! targets (fuzz/fuzz_targets/*.rs, nightly) and the stable corpus replay (tests/fuzz_corpus.rs)
//! both include this one file with `#[path]`, so a check exists once and every corpus file,
//! crash reproducers included, is checked on stable in CI. Each check asserts what must hold
//! of the output, not only that nothing panicked.

// Each fuzz target uses one check; the replay uses them all.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Map, Value};

use dcd::compose::file::{self, Context, Origin};
use dcd::compose::plan::{self, Where};
use dcd::engine::stream::{Demux, JsonLines, Line, Source, MAX_LINE};
use dcd::policy::Policy;
use dcd::rpc::{self, MAX_REQUEST_BYTES};

/// A target's check: any bytes in, a panic on a broken invariant.
pub type Check = fn(&[u8]);

/// Every target by its name (the directory of its corpus under fuzz/corpus/).
pub const TARGETS: &[(&str, Check)] = &[
    ("rpc", rpc),
    ("spec", spec),
    ("compose", compose),
    ("demux", demux),
    ("json_lines", json_lines),
    ("config", config),
    ("creds", creds),
];

pub const DEVICE: &str = "fuzz-host";
/// How deep `rpc` lets JSON nest before dropping it unread.
pub const MAX_DEPTH: usize = 64;

// ---------------------------------------------------------------------------------------------
// rpc::handle

/// One driver for the whole run: on the simulated engine, `read_only`, so no input changes what
/// the next one sees (no container, job or follow is left behind) and memory stays flat. The
/// mutating functions' parameters are fuzzed through `spec` and `compose`.
fn driver() -> &'static (dcd::driver::Driver, std::collections::BTreeSet<String>) {
    static RIG: OnceLock<(dcd::driver::Driver, std::collections::BTreeSet<String>)> = OnceLock::new();
    RIG.get_or_init(|| {
        use dcd::events::Events;
        use dcd::state::{Forward, State};
        let engine: std::sync::Arc<dyn dcd::engine::Engine> = std::sync::Arc::new(dcd::engine::sim::Sim::new());
        // Nobody reads the events: a full queue drops them, as a stuck mesh makes it.
        let (tx, rx) = crossbeam_channel::bounded(16);
        std::mem::forget(rx);
        let events = Events::new(tx.clone(), tx);
        let state = State::start(engine.clone(), 0.0, events.clone(), Forward::Off);
        // The functions refused under `read_only` are still known: asked for, they fail with
        // -32000, not -32601. The table under the default policy names them all.
        let all =
            dcd::driver::Driver::new(engine.clone(), true, 0.0, state.handle(), events.clone(), Policy::default());
        let known = known_functions(&all);
        let policy = Policy { read_only: true, ..Policy::default() };
        let driver = dcd::driver::Driver::new(engine, true, 0.0, state.handle(), events, policy);
        // The state thread lives as long as the process.
        std::mem::forget(state);
        (driver, known)
    })
}

/// The names of the functions the driver advertises.
pub fn known_functions(driver: &dcd::driver::Driver) -> std::collections::BTreeSet<String> {
    let caps = driver.capabilities();
    let functions = caps["functions"].as_array().expect("functions");
    functions.iter().map(|f| f["name"].as_str().expect("name").to_string()).collect()
}

/// Any bytes as a request: the reply is valid JSON-RPC echoing the request's id, or nothing for
/// what must stay unanswered.
pub fn rpc(data: &[u8]) {
    let (driver, known) = driver();
    let (tx, rx) = std::sync::mpsc::channel();
    rpc::handle(driver, DEVICE, data, None, move |b| {
        let _ = tx.send(b);
    });
    // A silent request drops its sender unused, so this returns at once.
    let reply = rx.recv_timeout(Duration::from_secs(30)).ok();
    rpc_reply(known, data, reply.as_deref());
}

/// Checks `reply` to `payload` against the rules of spec §2.3–2.4 and returns it parsed;
/// panics, naming the payload, on a wrong reply or a missing or unexpected one.
pub fn rpc_reply(known: &std::collections::BTreeSet<String>, payload: &[u8], reply: Option<&[u8]>) -> Option<Value> {
    let shown = || String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned();
    let request = expected_request(payload);
    let (Some(req), Some(bytes)) = (&request, reply) else {
        assert_eq!(
            request.is_some(),
            reply.is_some(),
            "reply {:?} for {}",
            reply.map(String::from_utf8_lossy),
            shown()
        );
        return None;
    };
    let r: Value = serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("reply is not JSON ({e}) for {}", shown()));
    let obj = r.as_object().unwrap_or_else(|| panic!("reply is not an object: {r}"));
    assert!(same_id(&obj["id"], &req["id"]), "id {} not echoed for {}", obj["id"], shown());
    assert_eq!(r["jsonrpc"], "2.0");
    assert_eq!(obj.len(), 3, "reply has exactly jsonrpc, id and result or error: {r}");
    let method = match req.get("method") {
        Some(Value::String(m)) => m.clone(),
        None | Some(Value::Null) => "None".into(),
        Some(other) => other.to_string(),
    };
    if let Some(err) = obj.get("error") {
        let (code, message) = (err["code"].as_i64(), err["message"].as_str().unwrap_or_default());
        assert_eq!(err.as_object().map(Map::len), Some(2), "error holds only code and message: {r}");
        let object_params = matches!(req.get("params"), None | Some(Value::Object(_)));
        match code {
            Some(-32601) => {
                assert!(!known.contains(&method) && method != "requestRegistration", "-32601 for a known method: {r}");
                assert_eq!(message, format!("Unknown method: {method}"));
            }
            Some(-32000) => {
                assert!(
                    known.contains(&method) || !object_params,
                    "-32000 for unknown method {method:?} with object params: {r}"
                );
                assert!(message.starts_with(&format!("Error invoking {method}: ")), "{message}");
            }
            _ => panic!("error code {code:?} for {}: {r}", shown()),
        }
    } else {
        assert!(obj.contains_key("result"), "{r}");
        assert!(
            known.contains(&method) || method == "requestRegistration",
            "a result for unknown method {method:?}: {r}"
        );
        if method == "requestRegistration" {
            assert_eq!(r["result"]["device_id"], DEVICE);
        }
    }
    Some(r)
}

/// The request object `rpc::handle` must answer, or `None` when it must stay silent: too large,
/// not JSON, not an object (a batch), nested too deep, or without an `id`.
pub fn expected_request(payload: &[u8]) -> Option<Map<String, Value>> {
    if payload.len() > MAX_REQUEST_BYTES {
        return None;
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) if depth(&Value::Object(m.clone())) <= MAX_DEPTH && m.contains_key("id") => Some(m),
        _ => None,
    }
}

/// Ids are echoed as parsed. serde_json (without `float_roundtrip`) may read a number with more
/// digits than an f64 holds one ulp off, and the echo is then parsed again, so such numbers are
/// compared to within a few ulps; everything else must be identical.
pub fn same_id(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= x.abs().max(y.abs()) * 4.0 * f64::EPSILON
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_id(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_id(v, w)))
        }
        _ => a == b,
    }
}

pub fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Provisioning spec and compose: what the policy accepts

/// The host-config fields a create body may hold. The policy judges the risky ones; the rest
/// are limits and plumbing. A field outside this list is one the policy never looked at, so a
/// body carrying it is a finding even when accepted (e.g. `VolumesFrom` would mount another
/// container's binds).
const HOST_FIELDS: &[&str] = &[
    "Binds",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "Memory",
    "CpuQuota",
    "NanoCpus",
    "Privileged",
    "CapAdd",
    "CapDrop",
    "SecurityOpt",
    "Dns",
    "ExtraHosts",
    "Ulimits",
    "LogConfig",
    "ShmSize",
    "ReadonlyRootfs",
    "Tmpfs",
    "Devices",
    "PidsLimit",
    "NetworkMode",
    "Mounts",
    "GroupAdd",
    "Sysctls",
    "Init",
    "PidMode",
    "IpcMode",
];

/// What, in a create body the default (deny-all) policy accepted, reaches beyond the container;
/// `None` when nothing does. Written from the policy's documented rules (README "Policy"), not
/// from its code, so a gap in either shows as a disagreement.
pub fn refused_field(body: &Value) -> Option<String> {
    let host = &body["HostConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().map(|s| s.as_str().map_or_else(|| s.to_string(), String::from)).collect()
    };
    if let Some(h) = host.as_object() {
        if let Some(k) = h.keys().find(|k| !HOST_FIELDS.contains(&k.as_str())) {
            return Some(format!("HostConfig.{k}, a field the policy does not judge"));
        }
    }
    if host["Privileged"] == true {
        return Some("Privileged".into());
    }
    for field in ["CapAdd", "GroupAdd", "Devices", "DeviceCgroupRules"] {
        if host[field].as_array().is_some_and(|a| !a.is_empty()) {
            return Some(format!("{field} {}", host[field]));
        }
    }
    if host["Sysctls"].as_object().is_some_and(|m| !m.is_empty()) {
        return Some(format!("Sysctls {}", host["Sysctls"]));
    }
    for bind in strings(&host["Binds"]) {
        // Only a named volume is allowed: a path (or anything with a slash) is the host's.
        let source = bind.split(':').next().unwrap_or_default();
        if source.is_empty() || source.contains('/') || source.starts_with('.') {
            return Some(format!("bind {bind}"));
        }
    }
    for m in host["Mounts"].as_array().into_iter().flatten() {
        if m["Type"] != "volume" && m["Type"] != "tmpfs" {
            return Some(format!("mount {m}"));
        }
    }
    for field in ["NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"] {
        let mode = host[field].as_str().unwrap_or_default();
        if mode == "host" || mode.starts_with("container:") {
            return Some(format!("{field} {mode}"));
        }
    }
    for opt in strings(&host["SecurityOpt"]) {
        let o = opt.to_ascii_lowercase().replace(' ', "");
        let keeps =
            o.starts_with("no-new-privileges") && !o.ends_with("false") && !o.contains("=f") && !o.contains(":f")
                || ["seccomp=default", "seccomp:default", "apparmor=docker-default", "apparmor:docker-default"]
                    .contains(&o.as_str());
        if !keeps {
            return Some(format!("security_opt {opt}"));
        }
    }
    None
}

/// A provisioning spec (JSON) to a create body, with the policy check: a body the default
/// policy accepts holds no refused field, and the body is the same when made twice.
pub fn spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<dcd::spec::ContainerSpec>(data) else { return };
    let Ok(body) = spec.create_body() else { return };
    assert_eq!(spec.create_body().ok().as_ref(), Some(&body), "create_body is deterministic");
    if Policy::default().check_create(&body).is_ok() {
        if let Some(f) = refused_field(&body) {
            panic!("the policy accepted {f} in {body}");
        }
    }
}

/// A compose file, parsed, checked, ordered and planned: every planned network and container
/// body the default policy accepts holds no refused field, and the start order puts each
/// service after what it depends on, once.
pub fn compose(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let vars = HashMap::from([("FUZZ".to_string(), "v".to_string())]);
    let Ok(doc) = file::parse_yaml(text, &vars, Origin::Inline) else { return };
    let Ok(p) = file::project(doc, &Context::inline(&vars, "fuzz")) else { return };
    let all: Vec<String> = p.services.keys().cloned().collect();
    if let Ok(order) = file::order(&p, &all) {
        assert_eq!(order.len(), all.len(), "each service once: {order:?} of {all:?}");
        for (i, s) in order.iter().enumerate() {
            for dep in p.services[s].depends_on.keys() {
                let at = order.iter().position(|o| o == dep);
                assert!(at.is_some_and(|at| at < i), "{dep} starts before {s}: {order:?}");
            }
        }
    }
    let at = Where { dir: None, working_dir: "/fuzz", config_files: "/fuzz/compose.yaml" };
    let Ok(plan) = plan::plan(&p, &at) else { return };
    let policy = Policy::default();
    for n in plan.networks.iter().filter_map(|n| n.body.as_ref()) {
        if policy.check_network(n).is_ok() {
            let driver = n["Driver"].as_str().unwrap_or("bridge");
            assert!(driver == "bridge" || driver.is_empty(), "the policy accepted network driver {driver}: {n}");
            assert!(n["Options"].as_object().is_none_or(Map::is_empty), "the policy accepted driver options: {n}");
        }
    }
    for s in plan.services.values() {
        let body = s.body_for(1);
        if policy.check_create(&body).is_ok() {
            if let Some(f) = refused_field(&body) {
                panic!("the policy accepted {f} in service {}: {body}", s.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Stream decoders

/// Splits `stream` into pieces whose sizes cycle through `chunks`.
fn pieces<'a>(stream: &'a [u8], chunks: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    for &c in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(c.clamp(1, rest.len()));
        out.push(now);
        rest = later;
    }
    out
}

pub fn demux_lines(tty: bool, timestamps: bool, stream: &[u8], chunks: &[usize]) -> Vec<Line> {
    let mut d = Demux::new(tty, timestamps);
    let mut lines = Vec::new();
    for p in pieces(stream, chunks) {
        d.push(p, &mut |l| lines.push(l));
    }
    d.finish(&mut |l| lines.push(l));
    lines
}

pub fn json_values(stream: &[u8], chunks: &[usize]) -> Vec<Value> {
    let mut j = JsonLines::new();
    let mut out = Vec::new();
    for p in pieces(stream, chunks) {
        j.push(p, &mut |v| out.push(v));
    }
    j.finish(&mut |v| out.push(v));
    out
}

/// The fuzz input for a decoder: a head of `n` bytes choosing chunk sizes (1..=256 each),
/// then the stream.
fn split_head(data: &[u8], n: usize) -> (Vec<usize>, &[u8]) {
    let n = n.min(data.len());
    let chunks = data[..n].iter().map(|&b| b as usize + 1).collect();
    (chunks, &data[n..])
}

/// A decoded line is one line, and never holds more than `MAX_LINE` bytes of input.
/// `from_utf8_lossy` may widen each invalid byte to U+FFFD (three bytes), so text that was not
/// UTF-8 may be up to three times that; text that was UTF-8 must fit exactly.
pub fn assert_bounded(lines: &[Line], input: &[u8], case: &str) {
    let total: usize = lines.iter().map(|l| l.text.len() + l.ts.as_ref().map_or(0, String::len)).sum();
    assert!(total <= 3 * input.len(), "{case}: {total} bytes out of {} in", input.len());
    for l in lines {
        assert!(!l.text.contains('\n'), "{case}: a line holds a newline: {}", short(l));
        let limit = if l.text.contains('\u{fffd}') { 3 * MAX_LINE } else { MAX_LINE };
        assert!(l.text.len() <= limit, "{case}: a line of {} bytes", l.text.len());
        assert!(l.ts.as_ref().is_none_or(|t| t.len() <= 3 * 64), "{case}: {}", short(l));
    }
}

/// A line for a failure message: its lengths, its newline if any, and its first characters.
pub fn short(l: &Line) -> String {
    let head: String = l.text.chars().take(40).collect();
    let ts = l.ts.as_ref().map(String::len);
    format!(
        "{:?} line of {} bytes (timestamp {ts:?} bytes, newline at {:?}): {head:?}…",
        l.source,
        l.text.len(),
        l.text.find('\n')
    )
}

/// The lines of one stream's text as the decoder must cut them: at each '\n', one '\r' before
/// it dropped; an unterminated last line kept.
fn model_lines(text: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let last = lines.pop().unwrap_or_default();
    for l in &mut lines {
        if l.last() == Some(&b'\r') {
            l.pop();
        }
    }
    if !last.is_empty() {
        lines.push(last);
    }
    lines
}

/// The stdout and stderr text of a well-formed multiplexed stream without timestamps, or
/// `None` when a header is not one (the decoder then reads the rest as raw text).
fn model_frames(mut s: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while !s.is_empty() {
        if s.len() < 8 || s[0] > 3 || s[1..4] != [0, 0, 0] {
            return None;
        }
        let len = u32::from_be_bytes([s[4], s[5], s[6], s[7]]) as usize;
        let payload = &s[8..(8 + len).min(s.len())];
        if s[0] <= 1 { &mut out } else { &mut err }.extend_from_slice(payload);
        s = &s[8 + payload.len()..];
    }
    Some((out, err))
}

/// The log demultiplexer: any chunking gives the same lines as one read, lines are bounded,
/// and where the input is plain (UTF-8, under `MAX_LINE`, no timestamps) every byte of it is
/// in the lines: none lost, none added.
pub fn demux(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (tty, timestamps) = (mode & 1 == 1, mode & 2 == 2);
    let (chunks, stream) = split_head(rest, 3);
    let whole = demux_lines(tty, timestamps, stream, &[usize::MAX]);
    let chunked = demux_lines(tty, timestamps, stream, &chunks);
    let case = format!("tty {tty}, timestamps {timestamps}, chunks {chunks:?}");
    assert_bounded(&whole, stream, &case);
    assert_eq!(whole, chunked, "{case}: chunking changed the lines");
    if timestamps || stream.len() > MAX_LINE {
        return;
    }
    let (out, err) = if tty {
        (stream.to_vec(), Vec::new())
    } else {
        let Some(texts) = model_frames(stream) else { return };
        texts
    };
    if std::str::from_utf8(&out).is_err() || std::str::from_utf8(&err).is_err() {
        return;
    }
    for (source, text) in [(Source::Stdout, out), (Source::Stderr, err)] {
        let got: Vec<&[u8]> = whole.iter().filter(|l| l.source == source).map(|l| l.text.as_bytes()).collect();
        let want = model_lines(&text);
        assert_eq!(got, want.iter().map(Vec::as_slice).collect::<Vec<_>>(), "{case}: {source:?} lines");
    }
}

/// The JSON-lines decoder: any chunking gives the same values as one read, and these are
/// exactly the lines (each under `MAX_LINE`) that parse on their own.
pub fn json_lines(data: &[u8]) {
    let (chunks, stream) = split_head(data, 2);
    let whole = json_values(stream, &[usize::MAX]);
    assert_eq!(json_values(stream, &chunks), whole, "chunks {chunks:?}");
    let want: Vec<Value> = stream
        .split(|&b| b == b'\n')
        .filter(|l| l.len() <= MAX_LINE)
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    assert_eq!(whole, want);
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Flags and environment as text: a line `--flag value` or `--switch` is a flag, `KEY=VALUE` a
/// variable. Whatever resolves is a configuration the daemon can run with: a valid device id
/// and tenant, workers and poll rate in range, NATS credentials unless insecure; and resolving
/// it again gives the same.
pub fn config(data: &[u8]) {
    use dcd::config::{resolve, Flags};
    use dcd::mesh::Backend;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut args: Vec<&str> = Vec::new();
    let mut env: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Some(flag) = line.strip_prefix("--") {
            let (name, value) = flag.split_once(' ').map_or((flag, None), |(n, v)| (n, Some(v)));
            args.push(&line[..2 + name.len()]);
            args.extend(value);
        } else if let Some((k, v)) = line.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let Ok(mut flags) = <Flags as argh::FromArgs>::from_args(&["dcd"], &args) else { return };
    // Files are the creds target's business: none is read here, so a run depends on its input only.
    flags.policy = None;
    flags.nats_credentials_file = None;
    flags.portal_credentials = None;
    flags.portal_credentials_dir = Some("/nonexistent-dcd-fuzz".into());
    env.retain(|k, _| !k.contains("CREDENTIALS") && k != "DCD_POLICY" && !k.contains("FILE"));
    let lookup = |k: &str| env.get(k).cloned();
    let Ok(c) = resolve(&flags, &lookup) else { return };
    let id = &c.mesh.device_id;
    assert!(
        !id.is_empty()
            && id.len() <= 255
            && id.as_bytes()[0].is_ascii_alphanumeric()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "device id {id:?}"
    );
    let t = &c.mesh.tenant;
    assert!(!t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "tenant {t:?}");
    assert!((1..=64).contains(&c.workers), "workers {}", c.workers);
    assert!(c.state_poll_hz.is_finite() && c.state_poll_hz >= 0.0, "poll {}", c.state_poll_hz);
    let insecure = flags.allow_insecure
        || env
            .get("DEVICE_CONNECT_ALLOW_INSECURE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
    // The daemon needs credentials on NATS; the client (a command) may connect without them.
    if c.mesh.backend == Backend::Nats && !insecure && flags.command.is_none() {
        assert!(c.mesh.nats_jwt.is_some() && c.mesh.nats_seed.is_some(), "NATS without credentials: {c:?}");
    }
    assert!(c.mesh.d2d || !c.mesh.urls.is_empty(), "infra mode needs a URL: {c:?}");
    assert_eq!(resolve(&flags, &lookup).as_ref(), Ok(&c), "resolve is deterministic");
}

/// A credentials file's text, as `nats` and as `zenoh`: what is read is what the file says.
/// From JSON, each field is the file's string; from an nsc file, the JWT and seed are single
/// trimmed lines of the file, never a comment.
pub fn creds(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for backend in [None, Some("nats"), Some("zenoh")] {
        let parsed = dcd::config::parse_creds(text, backend);
        if !text.trim_start().starts_with('{') {
            let c = parsed.expect("nsc text always reads");
            assert!(c.device_id.is_none() && c.tenant.is_none() && c.urls.is_empty());
            for v in [&c.jwt, &c.seed].into_iter().flatten() {
                assert!(!v.is_empty() && v.trim() == v && !v.starts_with("---"), "{v:?} is a value, not a marker");
                assert!(text.lines().any(|l| l.trim() == v && !l.starts_with('*')), "{v:?} is a line of the file");
            }
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            assert!(parsed.is_err(), "JSON that does not parse is refused");
            continue;
        };
        let c = parsed.expect("JSON that parses is read");
        assert_eq!(c.device_id.as_deref(), v["device_id"].as_str());
        assert_eq!(c.tenant.as_deref(), v["tenant"].as_str());
        let section = backend.unwrap_or(if v.get("zenoh").is_some() { "zenoh" } else { "nats" });
        let want_urls: Vec<&str> =
            v[section]["urls"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(c.urls, want_urls);
        assert_eq!(c.jwt.as_deref(), v[section]["jwt"].as_str().or(v["jwt"].as_str()));
        assert_eq!(c.tls.ca_file.as_deref(), v[section]["tls"]["ca_file"].as_str());
    }
}
