//! Hostile input, in process: the JSON-RPC envelope, the engine stream decoders and the spec
//! bounds fed random and mutated data from a seeded xorshift generator (no fuzzing crates). Each
//! test prints its seed; `DCD_FUZZ_SEED=<n>` replays a run. Every loop is bounded in count.
//! The invariants are the coverage-guided fuzz targets' own (fuzz/checks.rs).

#[path = "../fuzz/checks.rs"]
mod checks;
mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use common::counting::Counting;
use dcd::engine::stream::{Line, MAX_LINE};
use dcd::rpc::{self, MAX_REQUEST_BYTES};

use checks::{assert_bounded, demux_lines as demux, depth, json_values as json_lines, short, DEVICE, MAX_DEPTH};

/// xorshift64*: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("DCD_FUZZ_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0x00dc_d5ee_d000_0007);
        eprintln!("{test}: seed {seed} (replay with DCD_FUZZ_SEED={seed})");
        // Zero is xorshift's fixed point.
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability 1/`n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Up to `max` random bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max + 1)).map(|_| self.next() as u8).collect()
    }

    /// Up to `max` pieces of text mixing ASCII, JSON-significant characters, multibyte UTF-8 and
    /// control characters.
    fn text(&mut self, max: usize) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "0", " ", "\"", "\\", "/", ".", "..", "?", "#", "%", "{", "]", "\n", "\u{0}", "é", "€", "😀",
            "\u{feff}",
        ];
        (0..self.below(max + 1)).map(|_| *self.pick(PIECES)).collect()
    }
}

/// The shared rig on a counting simulator, as `dcd --sim` runs it. Its event queue is small and
/// never read: a full queue makes the driver drop events, which is what a slow mesh causes.
struct Rig {
    rig: common::Rig,
    engine: Arc<Counting>,
}

impl std::ops::Deref for Rig {
    type Target = common::Rig;
    fn deref(&self) -> &common::Rig {
        &self.rig
    }
}

impl Rig {
    fn new() -> Rig {
        let engine = Arc::new(Counting::new());
        Rig { rig: common::Rig::with(engine.clone(), true, 64, 2.0), engine }
    }

    /// Every advertised function with its parameter schema.
    fn functions(&self) -> Vec<(String, Value)> {
        let caps = self.driver.capabilities();
        caps["functions"]
            .as_array()
            .expect("functions")
            .iter()
            .map(|f| (f["name"].as_str().expect("name").to_string(), f["parameters"].clone()))
            .collect()
    }

    /// Runs one payload through `rpc::handle` and checks the reply against the rules of spec
    /// §2.3–2.4; panics (with the payload) on a panic inside or a wrong reply.
    fn check(&self, known: &BTreeSet<String>, payload: &[u8], max_payload: Option<usize>) -> Option<Value> {
        let shown = || String::from_utf8_lossy(&payload[..payload.len().min(300)]).into_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        catch_unwind(AssertUnwindSafe(|| {
            rpc::handle(&self.driver, DEVICE, payload, max_payload, move |b| {
                let _ = tx.send(b);
            })
        }))
        .unwrap_or_else(|_| panic!("rpc::handle panicked on {} bytes: {}", payload.len(), shown()));
        // A silent request drops its sender unused.
        let reply = rx.recv_timeout(Duration::from_secs(30)).ok();
        checks::rpc_reply(known, payload, reply.as_deref())
    }
}

/// `levels` of alternating arrays and objects around `inner`.
fn nested(levels: usize, inner: Value) -> Value {
    (0..levels).fold(inner, |v, i| if i % 2 == 0 { json!([v]) } else { json!({"k": v}) })
}

/// A value of every JSON type, including the awkward ones (ids are echoed, so each must survive).
fn every_type(rng: &mut Rng) -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(-0.0),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(""),
        json!("d2d-3f9c0a1b2c4d"),
        json!(rng.text(40)),
        json!("x".repeat(20_000)),
        json!([]),
        json!([null, 1, "a", {"b": []}]),
        json!({}),
        json!({"nested": {"x": [1, 2, {"y": null}]}}),
        nested(30, json!("deep")),
    ]
}

/// Plausible values for a parameter schema: often valid, so calls get past argument parsing.
fn plausible(rng: &mut Rng, schema: &Value) -> Value {
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(t) => t.iter().filter_map(Value::as_str).collect(),
        _ => vec!["string"],
    };
    match *rng.pick(&types) {
        "null" => Value::Null,
        "boolean" => json!(rng.one_in(2)),
        "integer" => json!(*rng.pick(&[0i64, 1, 5, -1, 100])),
        "number" => json!(0.5),
        "array" => {
            let item = if schema["items"].is_object() { plausible(rng, &schema["items"]) } else { json!("x") };
            if rng.one_in(4) {
                json!([])
            } else {
                json!([item])
            }
        }
        "object" => {
            let mut m = Map::new();
            for (k, s) in schema["properties"].as_object().into_iter().flatten() {
                let required = schema["required"].as_array().is_some_and(|r| r.iter().any(|x| x == k.as_str()));
                if required || rng.one_in(4) {
                    m.insert(k.clone(), plausible(rng, s));
                }
            }
            Value::Object(m)
        }
        _ => json!(*rng.pick(&["sim/hello", "web", "fuzz-1", "compose-app", "", "nope-404", "2024-01-01T00:00:00Z"])),
    }
}

/// A random request: sometimes well formed, sometimes with any field missing or of any type.
fn random_request(rng: &mut Rng, functions: &[(String, Value)]) -> Value {
    let mut req = Map::new();
    if !rng.one_in(10) {
        req.insert("jsonrpc".into(), json!("2.0"));
    }
    if !rng.one_in(8) {
        let ids = every_type(rng);
        req.insert("id".into(), rng.pick(&ids).clone());
    }
    let (method, schema) = match rng.below(10) {
        0 => (json!("requestRegistration"), json!({})),
        1 => (json!(rng.text(12)), json!({})),
        2 => {
            let odd = every_type(rng);
            (rng.pick(&odd).clone(), json!({}))
        }
        3 => (Value::Null, json!({})),
        _ => {
            let (name, schema) = rng.pick(functions);
            let name = if rng.one_in(10) { format!("{name} ") } else { name.clone() };
            (json!(name), schema.clone())
        }
    };
    if !method.is_null() || rng.one_in(2) {
        req.insert("method".into(), method);
    }
    match rng.below(10) {
        0 => {}
        1 => {
            let odd = every_type(rng);
            req.insert("params".into(), rng.pick(&odd).clone());
        }
        _ => {
            let mut params = plausible(rng, &schema);
            if let Value::Object(p) = &mut params {
                if rng.one_in(4) {
                    let odd = every_type(rng);
                    p.insert("_dc_meta".into(), rng.pick(&odd).clone());
                }
                if rng.one_in(6) {
                    p.insert("source_device".into(), json!("robot-1"));
                }
                if rng.one_in(6) {
                    p.insert(rng.text(6), json!(1));
                }
            }
            req.insert("params".into(), params);
        }
    }
    Value::Object(req)
}

/// Byte-level damage: flips, cuts, insertions, duplications.
fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len());
        match rng.below(5) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b.truncate(at),
            2 => {
                let junk = rng.bytes(8);
                b.splice(at..at, junk);
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(b.len());
                let copy = b[at..end].to_vec();
                b.splice(at..at, copy);
            }
            _ => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                b.drain(at..end);
            }
        }
    }
    b
}

fn known(functions: &[(String, Value)]) -> BTreeSet<String> {
    functions.iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn rpc_envelope_survives_random_and_mutated_requests() {
    let mut rng = Rng::seeded("rpc_envelope");
    let rig = Rig::new();
    let functions = rig.functions();
    let known = known(&functions);
    assert!(known.len() >= 17, "every function is served in --sim with the default policy");
    let (mut replies, mut silent) = (0, 0);
    let mut count = |r: Option<Value>| if r.is_some() { replies += 1 } else { silent += 1 };
    for _ in 0..3000 {
        let req = random_request(&mut rng, &functions);
        let bytes = serde_json::to_vec(&req).unwrap();
        count(rig.check(&known, &bytes, None));
        count(rig.check(&known, &mutate(&mut rng, bytes.clone()), None));
        if rng.one_in(3) {
            let cut = rng.below(bytes.len());
            count(rig.check(&known, &bytes[..cut], None));
        }
    }
    for _ in 0..500 {
        count(rig.check(&known, &rng.bytes(600), None));
    }
    // Batches are never answered, whatever they hold.
    for _ in 0..50 {
        let batch: Vec<Value> = (0..1 + rng.below(3)).map(|_| random_request(&mut rng, &functions)).collect();
        assert!(rig.check(&known, &serde_json::to_vec(&batch).unwrap(), None).is_none());
    }
    eprintln!("rpc_envelope: {replies} replies, {silent} dropped");
    assert!(replies > 2000 && silent > 2000, "the generator reaches both outcomes");
}

#[test]
fn rpc_wrong_types_for_every_param_of_every_function() {
    let mut rng = Rng::seeded("rpc_wrong_types");
    let rig = Rig::new();
    let functions = rig.functions();
    let known = known(&functions);
    let odd = every_type(&mut rng);
    let mut calls = 0;
    for (name, schema) in &functions {
        let props = schema["properties"].as_object().cloned().unwrap_or_default();
        // One level into object params too (`spec`), where most of the surface is.
        let mut paths: Vec<Vec<String>> = props.keys().map(|k| vec![k.clone()]).collect();
        for (k, s) in &props {
            paths
                .extend(s["properties"].as_object().into_iter().flatten().map(|(sub, _)| vec![k.clone(), sub.clone()]));
        }
        for path in &paths {
            for wrong in &odd {
                let mut params = plausible(&mut rng, schema);
                match path.as_slice() {
                    [k] => params[k] = wrong.clone(),
                    [k, sub] => {
                        if !params[k].is_object() {
                            params[k] = json!({});
                        }
                        params[k][sub] = wrong.clone();
                    }
                    _ => unreachable!(),
                }
                let body = json!({"jsonrpc": "2.0", "id": calls, "method": name, "params": params});
                let r = rig.check(&known, &serde_json::to_vec(&body).unwrap(), None).expect("a reply");
                assert_ne!(r["error"]["code"], -32601, "{body}");
                calls += 1;
            }
        }
        for params in &odd {
            if !params.is_object() {
                let body = json!({"jsonrpc": "2.0", "id": "p", "method": name, "params": params});
                let r = rig.check(&known, &serde_json::to_vec(&body).unwrap(), None).expect("a reply");
                assert_eq!(r["error"]["code"], -32000, "non-object params are a -32000 error: {body}");
            }
        }
    }
    eprintln!("rpc_wrong_types: {calls} calls over {} functions", functions.len());
}

#[test]
fn rpc_ids_of_every_type_are_echoed_and_edges_are_dropped() {
    let mut rng = Rng::seeded("rpc_edges");
    let rig = Rig::new();
    let known = known(&rig.functions());
    for id in every_type(&mut rng) {
        for method in ["get_status", "no_such_method", "requestRegistration"] {
            let body = json!({"jsonrpc": "2.0", "id": id, "method": method});
            assert!(rig.check(&known, &serde_json::to_vec(&body).unwrap(), None).is_some(), "{body}");
        }
    }
    // Without an id nothing is sent, even for a method that would fail.
    for method in [json!("get_status"), json!("nope"), Value::Null] {
        assert!(rig.check(&known, &serde_json::to_vec(&json!({"method": method})).unwrap(), None).is_none());
    }
    // Nesting just inside and just beyond the limit, in params and in the id.
    for levels in [MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 5, 126] {
        for body in [
            json!({"id": 1, "method": "get_status", "params": {"x": nested(levels, json!(1))}}),
            json!({"id": nested(levels, json!(1)), "method": "get_status"}),
        ] {
            let r = rig.check(&known, body.to_string().as_bytes(), None);
            assert_eq!(r.is_some(), depth(&body) <= MAX_DEPTH, "{levels} levels");
        }
    }
    // Deeper than serde would recurse, built as text (a Value that deep would overflow the
    // stack of this test when dropped); and brackets inside strings, which do not nest.
    for levels in [500, 5000, 200_000] {
        let raw = format!(
            r#"{{"id":1,"method":"get_status","params":{{"x":{}1{}}}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        );
        assert!(rig.check(&known, raw.as_bytes(), None).is_none(), "{levels} levels");
        let unbalanced = format!(r#"{{"id":1,"method":"get_status","params":{}"#, "{\"k\":".repeat(levels));
        assert!(rig.check(&known, unbalanced.as_bytes(), None).is_none());
        let body = json!({"id": 1, "method": "get_container", "params": {"container_id": "[{".repeat(levels)}});
        assert!(rig.check(&known, body.to_string().as_bytes(), None).is_some(), "brackets in a string, {levels}");
    }
    // Huge strings on both sides of the 1 MiB request limit.
    for size in [
        MAX_REQUEST_BYTES - 200,
        MAX_REQUEST_BYTES - 60,
        MAX_REQUEST_BYTES,
        MAX_REQUEST_BYTES + 1,
        3 * MAX_REQUEST_BYTES,
    ] {
        let head = r#"{"jsonrpc":"2.0","id":7,"method":"get_container","params":{"container_id":""#;
        let tail = r#""}}"#;
        let filler = "n".repeat(size.saturating_sub(head.len() + tail.len()));
        let payload = format!("{head}{filler}{tail}");
        let r = rig.check(&known, payload.as_bytes(), None);
        assert_eq!(r.is_some(), payload.len() <= MAX_REQUEST_BYTES, "{} bytes", payload.len());
    }
    // A result larger than the transport carries becomes a -32000 error naming the limit.
    let body = json!({"jsonrpc": "2.0", "id": "big", "method": "list_images"}).to_string();
    let r = rig.check(&known, body.as_bytes(), Some(64)).expect("a reply");
    assert_eq!(r["error"]["code"], -32000);
    assert!(r["error"]["message"].as_str().unwrap().contains("max_payload"), "{r}");
}

/// A log stream as the engine sends it, roughly: frames of stdout and stderr holding lines with
/// timestamps, multibyte text and CRLF, sometimes with a damaged header or a hostile length.
fn log_stream(rng: &mut Rng, timestamps: bool) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..rng.below(40) {
        let mut payload = Vec::new();
        if timestamps && !rng.one_in(10) {
            payload.extend_from_slice(b"2024-05-01T10:00:00.123456789Z ");
        }
        payload.extend_from_slice(rng.text(200).as_bytes());
        if rng.one_in(3) {
            payload.extend_from_slice(&rng.bytes(20));
        }
        payload.extend_from_slice(if rng.one_in(4) { b"\r\n" } else { b"\n" });
        let kind = *rng.pick(&[0u8, 1, 1, 2, 3]);
        let mut len = (payload.len() as u32).to_be_bytes();
        if rng.one_in(30) {
            len = (rng.next() as u32).to_be_bytes();
        }
        s.extend_from_slice(&[kind, 0, 0, 0]);
        s.extend_from_slice(&len);
        if rng.one_in(40) {
            let at = s.len() - 1 - rng.below(8);
            s[at] = rng.next() as u8;
        }
        s.extend_from_slice(&payload);
    }
    s
}

fn random_chunks(rng: &mut Rng, max: usize) -> Vec<usize> {
    (0..1 + rng.below(16)).map(|_| 1 + rng.below(max)).collect()
}

#[test]
fn stream_decoders_survive_random_bytes_and_chunking() {
    let mut rng = Rng::seeded("stream_decoders");
    for round in 0..600 {
        let (tty, timestamps) = (rng.one_in(3), rng.one_in(2));
        let stream = match round % 3 {
            0 => rng.bytes(8192),
            _ => log_stream(&mut rng, timestamps),
        };
        let whole = demux(tty, timestamps, &stream, &[usize::MAX]);
        let chunks = random_chunks(&mut rng, 64);
        let chunked = demux(tty, timestamps, &stream, &chunks);
        let case = format!("round {round}, tty {tty}, timestamps {timestamps}, chunks {chunks:?}");
        assert_bounded(&whole, &stream, &case);
        assert_bounded(&chunked, &stream, &case);
        if let Some(i) = (0..whole.len().max(chunked.len())).find(|&i| whole.get(i) != chunked.get(i)) {
            panic!(
                "{case}: chunking changed line {i}: {:?} became {:?}",
                whole.get(i).map(short),
                chunked.get(i).map(short)
            );
        }

        let json = if round % 2 == 0 {
            rng.bytes(4096)
        } else {
            let values: Vec<Value> = (0..rng.below(20)).map(|i| json!({"status": rng.text(20), "i": i})).collect();
            let s = values.iter().map(Value::to_string).collect::<Vec<_>>().join("\n").into_bytes();
            mutate(&mut rng, s)
        };
        let whole = json_lines(&json, &[usize::MAX]);
        assert_eq!(json_lines(&json, &random_chunks(&mut rng, 32)), whole, "round {round}");
    }
}

#[test]
fn stream_decoders_bound_long_lines() {
    let mut rng = Rng::seeded("stream_long_lines");
    let long = 2 * MAX_LINE + 12_345;
    // One endless line of text, raw and in 16 KiB frames, in big random reads.
    let text: Vec<u8> = (0..long).map(|i| b"abcdefgh\xc3\xa9"[i % 10]).collect();
    let mut framed = Vec::new();
    for piece in text.chunks(16 * 1024) {
        framed.extend_from_slice(&[1, 0, 0, 0]);
        framed.extend_from_slice(&(piece.len() as u32).to_be_bytes());
        framed.extend_from_slice(piece);
    }
    for (tty, stream) in [(true, &text), (false, &framed)] {
        let lines = demux(tty, false, stream, &random_chunks(&mut rng, 200_000));
        assert_bounded(&lines, stream, "one long line");
        assert_eq!(lines.len(), 3, "split into MAX_LINE pieces");
        assert_eq!(lines.iter().map(|l| l.text.len()).sum::<usize>(), long, "no byte lost, no character split");
    }
    // Bytes that are not UTF-8 at all.
    let junk = vec![0xffu8; MAX_LINE + 10];
    assert_bounded(&demux(true, true, &junk, &random_chunks(&mut rng, 100_000)), &junk, "junk");
    // JSON lines: an overlong line is dropped whole and the next one still parses.
    let mut s = format!("{{\"a\":\"{}\"}}\n", "x".repeat(MAX_LINE)).into_bytes();
    s.extend_from_slice(b"{\"after\":1}\n{\"last\":true}");
    let values = json_lines(&s, &random_chunks(&mut rng, 100_000));
    assert_eq!(values, vec![json!({"after": 1}), json!({"last": true})]);
}

/// The smallest cases the random ones found: where a timestamp is expected (TTY logs with
/// timestamps, after each newline), text that reaches a newline before a space is a line, not
/// a timestamp; and text still pending as a possible timestamp when the stream ends is a line.
#[test]
fn stream_timestamps_never_swallow_lines() {
    let texts = |lines: Vec<Line>| lines.into_iter().map(|l| (l.ts, l.text)).collect::<Vec<_>>();
    let ts = |s: &str| Some(s.to_string());
    assert_eq!(
        texts(demux(true, true, b"t1 one\nabc\nt2 two\n", &[usize::MAX])),
        vec![(ts("t1"), "one".into()), (None, "abc".into()), (ts("t2"), "two".into())]
    );
    assert_eq!(
        texts(demux(true, true, b"t1 one\ntail", &[usize::MAX])),
        vec![(ts("t1"), "one".into()), (None, "tail".into())]
    );
}

/// `{key: value}` for a key held in a variable.
fn one(key: &str, value: Value) -> Value {
    Value::Object(Map::from_iter([(key.to_string(), value)]))
}

/// Spec fields provision_container must refuse, and what the error must name.
fn bad_specs(rig: &Rig) -> Vec<(Value, &'static str)> {
    let many = |n: usize| (0..n).map(|i| (format!("K{i}"), json!("v"))).collect::<Map<_, _>>();
    let long = "L".repeat(16 * 1024 + 1);
    let mut cases = vec![
        (json!({"environment": many(257)}), "environment has 257 entries"),
        (json!({"labels": many(257)}), "labels has 257 entries"),
        (json!({"ports": (0..257).map(|i| json!({"container_port": 1000 + i})).collect::<Vec<_>>()}), "ports has 257"),
        (
            json!({"volumes": (0..257).map(|i| json!({"source": format!("v{i}"), "target": "/v"})).collect::<Vec<_>>()}),
            "volumes has 257",
        ),
        (json!({"environment": {"K": long}}), "longer than"),
        (json!({"environment": one(&long, json!("v"))}), "longer than"),
        (json!({"labels": one(&long, json!("v"))}), "longer than"),
        (json!({"volumes": [{"source": long.clone(), "target": "/x"}]}), "longer than"),
        (json!({"volumes": [{"source": "v", "target": long}]}), "longer than"),
    ];
    for name in [
        "a/b", "../etc", "..", ".", "a?b", "a#b", "a%2fb", "%2e%2e", " web", "web ", "", "-x", ".x", "_x", "a\u{0}b",
        "a\nb", "wéb",
    ] {
        cases.push((json!({"name": name}), "spec.name"));
    }
    cases.push((json!({"name": "n".repeat(129)}), "spec.name"));
    for image in [
        "busybox?x=1",
        "busybox#frag",
        "../../info",
        "a/../b",
        "a/..",
        "a b",
        " busybox",
        "busybox\t",
        "",
        "-a",
        "/a",
        ":a",
        "@a",
        ".a",
        "a%2e%2e/b",
        "a\\b",
        "a\nb",
        "bügel",
        "a?fromImage=evil",
    ] {
        cases.push((json!({"image": image}), "spec.image"));
    }
    cases.push((json!({"image": "i".repeat(513)}), "spec.image"));
    // Fields that newer specs add are bounded like the old ones.
    let props = rig.functions().into_iter().find(|(n, _)| n == "provision_container").unwrap().1["properties"]["spec"]
        ["properties"]
        .clone();
    for (field, item) in [("devices", json!("/dev/null")), ("cap_add", json!("NET_ADMIN")), ("dns", json!("1.1.1.1"))] {
        if props.get(field).is_some() {
            cases.push((one(field, json!(vec![item; 257])), "257 entries"));
        }
    }
    cases
}

#[test]
fn spec_bounds_refuse_before_the_engine_is_asked() {
    let rig = Rig::new();
    let known = known(&rig.functions());
    for (i, (fields, want)) in bad_specs(&rig).into_iter().enumerate() {
        let mut spec = json!({"image": "sim/hello", "name": format!("bounds-{i}")});
        for (k, v) in fields.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "provision_container", "params": {"spec": spec}});
        let r = rig.check(&known, &serde_json::to_vec(&body).unwrap(), None).expect("a reply");
        let message = r["error"]["message"].as_str().unwrap_or_else(|| panic!("accepted: {fields}"));
        assert_eq!(r["error"]["code"], -32000);
        assert!(message.contains(want), "{want:?} not in {message:?}");
        assert_eq!(rig.engine.creates.load(Ordering::SeqCst), 0, "the engine was asked to create after {fields}");
    }
    for image in ["busybox?x=1", "../../info", "a b", "a#b", "", "%2e%2e"] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "pull_image", "params": {"image": image}});
        let r = rig.check(&known, &serde_json::to_vec(&body).unwrap(), None).expect("a reply");
        assert_eq!(r["error"]["code"], -32000, "{image:?}");
    }
    assert_eq!(rig.engine.pulls.load(Ordering::SeqCst), 0);
    // At the limits everything is accepted: the bounds are not off by one.
    let mut env = (0..255).map(|i| (format!("K{i}"), json!("v"))).collect::<Map<_, _>>();
    env.insert("BIG".into(), json!("v".repeat(16 * 1024)));
    let spec = json!({"image": "sim/hello", "name": "n".repeat(128), "environment": env});
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "provision_container", "params": {"spec": spec}});
    let r = rig.check(&known, &serde_json::to_vec(&body).unwrap(), None).expect("a reply");
    assert_eq!(r["result"]["status"], "success", "{}", r["error"]);
    assert_eq!(rig.engine.creates.load(Ordering::SeqCst), 1);
}
