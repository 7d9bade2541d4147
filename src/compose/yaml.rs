//! YAML text to a JSON value for the Compose file: granit-parser's events
//! built into a `serde_json::Value` within budgets, with merge keys (`<<`)
//! and Compose's `${VAR}` interpolation from the caller's variables only.
//!
//! Plain scalars are typed by the YAML 1.2 core schema; quoted and block
//! scalars are strings. Mapping keys are scalars taken as written (never
//! interpolated); a duplicate key is an error.

use std::collections::HashMap;
use std::fmt;

use granit_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Collections nested deeper than this are refused.
pub const MAX_DEPTH: usize = 32;
/// At most this many aliases (`*name`) in one file, and as many anchors.
pub const MAX_ALIASES: usize = 1_000;
/// The largest compose file (inline or on disk) and `.env` / `env_file` read.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// At most this many nodes built, counting what anchors keep and aliases copy.
pub const MAX_NODES: usize = 100_000;
/// At most this many bytes of scalar text built (after interpolation),
/// counting what anchors keep and aliases copy.
pub const MAX_TEXT_BYTES: usize = 4 * MAX_FILE_BYTES;
/// `${A:-${B:-${C}}}` nests at most this deep.
const MAX_INTERPOLATION_DEPTH: usize = 8;

/// What went wrong and where (line 1-based, column 1-based).
#[derive(Debug)]
pub struct Error {
    pub msg: String,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at line {} column {}", self.msg, self.line, self.col)
    }
}

fn at(span: &Span, msg: impl Into<String>) -> Error {
    Error { msg: msg.into(), line: span.start.line(), col: span.start.col() + 1 }
}

/// One YAML document as JSON. Empty text is `null`.
pub fn to_json(text: &str, vars: &HashMap<String, String>) -> Result<Value, Error> {
    // The parser's own nesting limits sit above ours, so ours speaks first.
    let options = granit_parser::options! {
        flow_nesting_limit: 2 * MAX_DEPTH,
        block_nesting_limit: 2 * MAX_DEPTH,
    };
    let mut b = Builder { vars, stack: Vec::new(), anchors: Vec::new(), root: None, nodes: 0, bytes: 0, aliases: 0 };
    let mut documents = 0;
    for next in Parser::new_from_str_with_options(text, options) {
        let (event, span) =
            next.map_err(|e| Error { msg: e.info(), line: e.marker().line(), col: e.marker().col() + 1 })?;
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(at(&span, "a compose file is one YAML document, this is a second"));
                }
            }
            Event::Scalar(text, style, anchor, tag) => b.scalar(&text, style, anchor, tag.as_deref(), &span)?,
            Event::SequenceStart(_, anchor, tag) => b.open(false, anchor, tag.as_deref(), &span)?,
            Event::MappingStart(_, anchor, tag) => b.open(true, anchor, tag.as_deref(), &span)?,
            Event::SequenceEnd | Event::MappingEnd => b.close(&span)?,
            Event::Alias(id) => b.alias(id, &span)?,
            _ => {}
        }
    }
    Ok(b.root.unwrap_or(Value::Null))
}

enum Key {
    /// `<<`: the value's mappings are merged under the explicit keys.
    Merge,
    Named(String, Span),
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        nodes: usize,
        bytes: usize,
    },
    Map {
        map: Map<String, Value>,
        /// Mappings from `<<`, earlier ones first; explicit keys win over all.
        merges: Vec<Map<String, Value>>,
        /// The key waiting for its value; `None` while a key is due.
        key: Option<Key>,
        anchor: usize,
        nodes: usize,
        bytes: usize,
    },
}

/// A finished anchored node and what copying it costs.
struct Anchored {
    value: Value,
    nodes: usize,
    bytes: usize,
}

struct Builder<'v> {
    vars: &'v HashMap<String, String>,
    stack: Vec<Frame>,
    /// By the parser's anchor id; at most `MAX_ALIASES`, so a scan is cheap.
    anchors: Vec<(usize, Anchored)>,
    root: Option<Value>,
    nodes: usize,
    bytes: usize,
    aliases: usize,
}

impl Builder<'_> {
    fn key_due(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn charge(&mut self, nodes: usize, bytes: usize, span: &Span) -> Result<(), Error> {
        self.nodes += nodes;
        self.bytes += bytes;
        if self.nodes > MAX_NODES {
            return Err(at(
                span,
                format!("more than {MAX_NODES} nodes, counting anchor and alias copies (node budget)"),
            ));
        }
        if self.bytes > MAX_TEXT_BYTES {
            return Err(at(
                span,
                format!("more than {MAX_TEXT_BYTES} bytes of text, counting anchor and alias copies (size budget)"),
            ));
        }
        Ok(())
    }

    fn open(&mut self, mapping: bool, anchor: usize, tag: Option<&Tag>, span: &Span) -> Result<(), Error> {
        if self.key_due() {
            return Err(at(span, "a mapping key must be a scalar"));
        }
        if let Some(t) = tag {
            if t.core_suffix().is_none() {
                return Err(at(span, format!("tag {:?} is not supported", shown(t))));
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(at(span, format!("collections nested more than {MAX_DEPTH} deep (recursion limit)")));
        }
        let (nodes, bytes) = (self.nodes, self.bytes);
        self.charge(1, 0, span)?;
        self.stack.push(if mapping {
            Frame::Map { map: Map::new(), merges: Vec::new(), key: None, anchor, nodes, bytes }
        } else {
            Frame::Seq { items: Vec::new(), anchor, nodes, bytes }
        });
        Ok(())
    }

    fn close(&mut self, span: &Span) -> Result<(), Error> {
        let (value, anchor, nodes, bytes) = match self.stack.pop() {
            Some(Frame::Seq { items, anchor, nodes, bytes }) => (Value::Array(items), anchor, nodes, bytes),
            Some(Frame::Map { mut map, merges, anchor, nodes, bytes, .. }) => {
                for merged in merges {
                    for (k, v) in merged {
                        map.entry(k).or_insert(v);
                    }
                }
                (Value::Object(map), anchor, nodes, bytes)
            }
            None => return Err(at(span, "a collection ends that never started")),
        };
        if anchor != 0 {
            self.anchor(anchor, &value, self.nodes - nodes, self.bytes - bytes, span)?;
        }
        self.add(value, span)
    }

    fn scalar(
        &mut self,
        text: &str,
        style: ScalarStyle,
        anchor: usize,
        tag: Option<&Tag>,
        span: &Span,
    ) -> Result<(), Error> {
        let as_string = match tag {
            None => false,
            // The non-specific tag `!`: a string.
            Some(t) if shown(t) == "!" => true,
            Some(t) => match t.core_suffix() {
                Some("str") => true,
                Some("null" | "bool" | "int" | "float") => false,
                _ => return Err(at(span, format!("tag {:?} is not supported", shown(t)))),
            },
        };
        if self.key_due() {
            self.charge(1, text.len(), span)?;
            if anchor != 0 {
                self.anchor(anchor, &Value::String(text.to_string()), 1, text.len(), span)?;
            }
            let key = if style == ScalarStyle::Plain && text == "<<" {
                Key::Merge
            } else {
                Key::Named(text.to_string(), *span)
            };
            return self.set_key(key);
        }
        let plain = style == ScalarStyle::Plain && !as_string;
        let value = if plain && is_null(text) {
            Value::Null
        } else {
            let limit = MAX_TEXT_BYTES.saturating_sub(self.bytes);
            let s = if text.contains('$') {
                interpolate(text, self.vars, limit, 0).map_err(|msg| at(span, msg))?
            } else {
                text.to_string()
            };
            match plain.then(|| typed(&s)).flatten() {
                Some(v) => v,
                None => Value::String(s),
            }
        };
        let bytes = match &value {
            Value::String(s) => s.len(),
            _ => 0,
        };
        self.charge(1, bytes, span)?;
        if anchor != 0 {
            self.anchor(anchor, &value, 1, bytes, span)?;
        }
        self.add(value, span)
    }

    /// Keep a copy of an anchored node for its aliases. The copy is charged
    /// too: nested anchors would otherwise copy the same nodes again and again.
    fn anchor(&mut self, id: usize, value: &Value, nodes: usize, bytes: usize, span: &Span) -> Result<(), Error> {
        self.charge(nodes, bytes, span)?;
        if self.anchors.len() >= MAX_ALIASES {
            return Err(at(span, format!("more than {MAX_ALIASES} anchors (alias budget)")));
        }
        self.anchors.push((id, Anchored { value: value.clone(), nodes, bytes }));
        Ok(())
    }

    fn alias(&mut self, id: usize, span: &Span) -> Result<(), Error> {
        self.aliases += 1;
        if self.aliases > MAX_ALIASES {
            return Err(at(span, format!("more than {MAX_ALIASES} aliases (alias budget)")));
        }
        let Some(i) = self.anchors.iter().rposition(|(a, _)| *a == id) else {
            return Err(at(span, "an alias inside the node it names"));
        };
        let (nodes, bytes) = (self.anchors[i].1.nodes, self.anchors[i].1.bytes);
        self.charge(nodes, bytes, span)?;
        let value = self.anchors[i].1.value.clone();
        if self.key_due() {
            let key = match value {
                Value::String(s) => s,
                v @ (Value::Number(_) | Value::Bool(_) | Value::Null) => v.to_string(),
                _ => return Err(at(span, "a mapping key must be a scalar")),
            };
            return self.set_key(Key::Named(key, *span));
        }
        self.add(value, span)
    }

    fn set_key(&mut self, k: Key) -> Result<(), Error> {
        if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
            *key = Some(k);
        }
        Ok(())
    }

    /// A finished value into its parent: the root, a sequence item, or a mapping value.
    fn add(&mut self, value: Value, span: &Span) -> Result<(), Error> {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, merges, key, .. }) => match key.take() {
                None => return Err(at(span, "a mapping key must be a scalar")),
                Some(Key::Merge) => match value {
                    Value::Object(m) => merges.push(m),
                    Value::Array(list) => {
                        for v in list {
                            let Value::Object(m) = v else {
                                return Err(at(span, "<< merges a mapping or a list of mappings"));
                            };
                            merges.push(m);
                        }
                    }
                    _ => return Err(at(span, "<< merges a mapping or a list of mappings")),
                },
                Some(Key::Named(k, kspan)) => {
                    if map.contains_key(&k) {
                        return Err(at(&kspan, format!("duplicate key {k:?}")));
                    }
                    map.insert(k, value);
                }
            },
        }
        Ok(())
    }
}

fn shown(t: &Tag) -> String {
    format!("{}{}", t.original_handle(), t.suffix())
}

fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

/// A plain scalar's core-schema type, if it is not a string: bool, int
/// (decimal, `0o`, `0x`) or float. Numbers JSON cannot hold (`.inf`, `.nan`,
/// integers beyond 64 bits) stay strings.
fn typed(s: &str) -> Option<Value> {
    match s {
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let digits = |t: &str, radix: u32| !t.is_empty() && t.chars().all(|c| c.is_digit(radix));
    if let Some(h) = s.strip_prefix("0x") {
        return digits(h, 16).then(|| u64::from_str_radix(h, 16).ok()).flatten().map(Value::from);
    }
    if let Some(o) = s.strip_prefix("0o") {
        return digits(o, 8).then(|| u64::from_str_radix(o, 8).ok()).flatten().map(Value::from);
    }
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits(unsigned, 10) {
        return if negative {
            s.parse::<i64>().ok().map(Value::from)
        } else {
            unsigned.parse::<u64>().ok().map(Value::from)
        };
    }
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac, 10),
        Some((int, frac)) => digits(int, 10) && frac.chars().all(|c| c.is_ascii_digit()),
        None => digits(mantissa, 10),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e), 10));
    if !(mantissa_ok && exponent_ok) {
        return None;
    }
    s.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)
}

fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first().is_none_or(|c| !(c.is_ascii_alphabetic() || *c == b'_')) {
        return 0;
    }
    b.iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count()
}

/// Compose's interpolation of one scalar, from `vars` only: `$$`, `$VAR`,
/// `${VAR}`, and `${VAR` followed by `:-` / `-` (default), `:+` / `+`
/// (alternative), `:?` / `?` (required, with a message) and `}`. The text
/// after an operator is interpolated in turn. An unset variable is empty.
/// The result is at most `limit` bytes.
fn interpolate(s: &str, vars: &HashMap<String, String>, limit: usize, depth: usize) -> Result<String, String> {
    if depth > MAX_INTERPOLATION_DEPTH {
        return Err(format!("interpolation nested more than {MAX_INTERPOLATION_DEPTH} deep"));
    }
    let too_long = || format!("interpolated text over {limit} bytes (size budget)");
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let invalid = || format!("invalid interpolation {:?}", &rest[i..]);
            let n = name_len(body);
            if n == 0 {
                return Err(invalid());
            }
            let (name, ops) = body.split_at(n);
            let value = vars.get(name).map(String::as_str);
            if let Some(r) = ops.strip_prefix('}') {
                out.push_str(value.unwrap_or_default());
                rest = r;
            } else {
                let op = [":-", ":+", ":?", "-", "+", "?"]
                    .into_iter()
                    .find(|op| ops.starts_with(*op))
                    .ok_or_else(invalid)?;
                let text_and_rest = &ops[op.len()..];
                let close = closing_brace(text_and_rest).ok_or_else(invalid)?;
                let text = &text_and_rest[..close];
                rest = &text_and_rest[close + 1..];
                // With ':' an empty value counts as unset.
                let set = if op.starts_with(':') { value.is_some_and(|v| !v.is_empty()) } else { value.is_some() };
                let left = limit.saturating_sub(out.len());
                match (op.as_bytes()[op.len() - 1], set) {
                    (b'-', false) | (b'+', true) => out.push_str(&interpolate(text, vars, left, depth + 1)?),
                    (b'+', false) => {}
                    (b'?', false) => {
                        let msg = interpolate(text, vars, left, depth + 1)?;
                        let what = if value.is_some() { "is empty" } else { "is not set" };
                        return Err(if msg.is_empty() {
                            format!("required variable {name} {what}")
                        } else {
                            format!("required variable {name} {what}: {msg}")
                        });
                    }
                    _ => out.push_str(value.unwrap_or_default()),
                }
            }
        } else if name_len(after) > 0 {
            let (name, r) = after.split_at(name_len(after));
            out.push_str(vars.get(name).map(String::as_str).unwrap_or_default());
            rest = r;
        } else {
            out.push('$');
            rest = after;
        }
        if out.len() > limit {
            return Err(too_long());
        }
    }
    out.push_str(rest);
    if out.len() > limit {
        return Err(too_long());
    }
    Ok(out)
}

/// The `}` closing a `${` whose operator text starts `s`, braces balanced.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn parse(text: &str) -> Result<Value, String> {
        to_json(text, &HashMap::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let doc = parse(
            "a: [null, ~, Null, true, True, FALSE, 12, -3, +4, 0o17, 0x1F, 1.5, -.5, 1e3, .inf, -.Inf, .nan, 99999999999999999999999, yes, 0b1, 1_000, 012, 0x, 1e, .]\n",
        )
        .unwrap();
        assert_eq!(
            doc["a"],
            json!([
                null,
                null,
                null,
                true,
                true,
                false,
                12,
                -3,
                4,
                15,
                31,
                1.5,
                -0.5,
                1000.0,
                ".inf",
                "-.Inf",
                ".nan",
                "99999999999999999999999",
                "yes",
                "0b1",
                "1_000",
                12,
                "0x",
                "1e",
                "."
            ])
        );
        let doc = parse("a: ['12', \"true\", \"\", 'null', !!str 7, ! 8, !!int 9]\nb: |\n  3\nc:\n").unwrap();
        assert_eq!(doc, json!({"a": ["12", "true", "", "null", "7", "8", 9], "b": "3\n", "c": null}));
        assert_eq!(parse("").unwrap(), Value::Null);
        assert_eq!(parse("1: a\ntrue: b\n~: c\n").unwrap(), json!({"1": "a", "true": "b", "~": "c"}));
        assert!(parse("a: !reset x\n").unwrap_err().contains("not supported"));
        assert!(parse("? [a]\n: b\n").unwrap_err().contains("key must be a scalar"));
        assert!(parse("a: 1\n---\nb: 2\n").unwrap_err().contains("one YAML document"));
    }

    #[test]
    fn merge_keys_explicit_first_then_in_order() {
        let doc = parse(
            "x: &x {a: 1, b: 1, c: 1}\ny: &y {b: 2, c: 2, d: 2}\nm:\n  c: own\n  <<: [*x, *y]\nn:\n  <<: *y\n  d: own\n'<<': literal\n",
        )
        .unwrap();
        assert_eq!(doc["m"], json!({"a": 1, "b": 1, "c": "own", "d": 2}));
        assert_eq!(doc["n"], json!({"b": 2, "c": 2, "d": "own"}));
        assert_eq!(doc["<<"], "literal", "only a plain << merges");
        assert!(parse("a:\n  <<: 3\n").unwrap_err().contains("<< merges"));
        assert!(parse("a:\n  <<: [{x: 1}, 2]\n").unwrap_err().contains("<< merges"));
        let e = parse("a: 1\nb:\n  k: 1\n  k: 2\n").unwrap_err();
        assert_eq!(e, "duplicate key \"k\" at line 4 column 3");
    }

    #[test]
    fn aliases_copy_within_budgets() {
        let doc = parse("a: &s text\nb: *s\nc: &l [1, {k: *s}]\nd: *l\n&k key: v\n*k : w\n").unwrap_err();
        assert!(doc.contains("duplicate key"), "{doc}");
        let doc = parse("a: &s text\nb: *s\nc: &l [1, {k: *s}]\nd: *l\n").unwrap();
        assert_eq!(doc["d"], json!([1, {"k": "text"}]));
        let many: String = std::iter::once("a: &a x\nb: [".to_string())
            .chain((0..=MAX_ALIASES).map(|_| "*a,".to_string()))
            .chain(std::iter::once("]\n".to_string()))
            .collect();
        assert!(parse(&many).unwrap_err().contains("alias budget"));
        let anchors: String = (0..=MAX_ALIASES).map(|i| format!("k{i}: &a{i} x\n")).collect();
        assert!(parse(&anchors).unwrap_err().contains("anchors (alias budget)"));
        let laughs = "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n";
        let e = parse(laughs).unwrap_err();
        assert!(e.contains("node budget") && e.contains("line 5"), "{e}");
        let wide = format!("a: &a \"{}\"\nb: [{}]\n", "x".repeat(100_000), "*a,".repeat(50));
        assert!(parse(&wide).unwrap_err().contains("size budget"));
        assert!(parse("a: &a [*a]\n").is_err());
        // Nested anchors each keep a copy: charged, so 32 of them cannot copy 100,000 nodes 32 times.
        let nested = format!("{}&n [{}]{}", "&n [".repeat(3), "x,".repeat(40_000), "]".repeat(3));
        assert!(parse(&nested.replace("&n ", "")).is_ok());
        assert!(parse(&nested).unwrap_err().contains("node budget"));
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep).unwrap_err().contains("recursion limit"));
    }

    #[test]
    fn interpolation_forms() {
        let v = vars(&[("A", "a"), ("E", ""), ("N", "3"), ("T", "true")]);
        let i = |s: &str| interpolate(s, &v, 1 << 20, 0);
        assert_eq!(i("$$A $$$A ${A}$A-$Ax $ x$").unwrap(), "$A $a aa- $ x$");
        assert_eq!(i("${E:-d} ${E-d} ${U:-d} ${U-d}").unwrap(), "d  d d");
        assert_eq!(i("${A:+alt} ${E:+alt} ${E+alt} ${U+alt}|").unwrap(), "alt  alt |");
        assert_eq!(i("${U:-${A}-{x}} ${U:-${U2:-$$}}").unwrap(), "a-{x} $");
        assert_eq!(i("${E?m}|${A:?m}").unwrap(), "|a");
        assert_eq!(i("${U:?set U please}").unwrap_err(), "required variable U is not set: set U please");
        assert_eq!(i("${E:?}").unwrap_err(), "required variable E is empty");
        assert_eq!(i("${U?need ${A}}").unwrap_err(), "required variable U is not set: need a");
        assert!(i("${").unwrap_err().contains("invalid interpolation"));
        assert!(i("${A").unwrap_err().contains("invalid interpolation"));
        assert!(i("${A:-x").unwrap_err().contains("invalid interpolation"));
        assert!(i("${1}").unwrap_err().contains("invalid interpolation"));
        assert!(interpolate("${A}${A}${A}", &v, 2, 0).unwrap_err().contains("size budget"));
        // Values, not keys; typed after interpolation, null only as written.
        let doc = to_json("$A: $A\nn: ${N}\nt: $T\ne: ${E}\nq: '${N}'\nd: $$\n", &v).unwrap();
        assert_eq!(doc, json!({"$A": "a", "n": 3, "t": true, "e": "", "q": "3", "d": "$"}));
    }
}
