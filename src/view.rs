//! The containers as the reads (`list_containers`, `list_managed_containers`,
//! `get_container`) see them: each one's summary as its latest inspect showed
//! it. The state thread keeps it current (one inspect of a container whenever
//! an engine event concerns it, a full list and inspect after every
//! reconnect), and the driver puts what it has just changed, so a caller reads
//! its own writes. It is served only while the event stream is up and the view
//! was rebuilt since it connected; else the reads ask the engine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::ids::short_id;
use crate::labels::is_managed;
use crate::sync::lock;

/// Destroyed ids remembered, so stale news cannot bring them back. Ids are
/// never reused; this only has to outlast a replay (the engine keeps 256).
const GONE_KEEP: usize = 4096;

/// The states a list without `all` shows, as the engine's does: a paused or
/// restarting container is still up.
const UP: [&str; 3] = ["running", "paused", "restarting"];

/// The last `GONE_KEEP` ids of containers that were destroyed.
#[derive(Default)]
pub struct Gone {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Gone {
    pub fn insert(&mut self, id: String) {
        if !self.ids.insert(id.clone()) {
            return;
        }
        if self.order.len() == GONE_KEEP {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.order.push_back(id);
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

/// Taken before an inspect: of two answers, the one whose inspect started
/// later is kept, since it shows the container as it was then or later.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Ticket(u64);

struct Entry {
    ticket: Ticket,
    full_id: String,
    /// When it was created (Unix seconds): lists show the newest first.
    created: f64,
    summary: Value,
    /// `summary` encoded: a list joins these, so a read neither copies nor
    /// encodes the values (most of its cost at 200 containers).
    text: Arc<str>,
}

#[derive(Default)]
struct Inner {
    current: bool,
    next: u64,
    /// By short id.
    containers: HashMap<String, Entry>,
    gone: Gone,
}

impl Inner {
    /// The short id `key` names, as the engine resolves it: a full id, a
    /// name, or else an id prefix that only one container has.
    fn resolve(&self, key: &str) -> Option<String> {
        if key.is_empty() {
            return None;
        }
        let name = key.strip_prefix('/').unwrap_or(key);
        let exact = self.containers.iter().find(|(_, e)| e.full_id == key || e.summary["name"] == name);
        if let Some((id, _)) = exact {
            return Some(id.clone());
        }
        let mut prefixed = self.containers.iter().filter(|(_, e)| e.full_id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some((id, _)), None) => Some(id.clone()),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct View(Mutex<Inner>);

impl View {
    pub fn ticket(&self) -> Ticket {
        let mut v = lock(&self.0);
        v.next += 1;
        Ticket(v.next)
    }

    /// Keep the summary of `inspect` (taken with `ticket`), unless an inspect
    /// started later has already been kept or the container is gone; the
    /// summary either way.
    pub fn put(&self, ticket: Ticket, inspect: &Value) -> Value {
        let s = summary(inspect);
        let text: Arc<str> = s.to_string().into();
        let full_id = inspect["Id"].as_str().unwrap_or_default();
        let id = short_id(full_id).to_string();
        let mut v = lock(&self.0);
        if id.is_empty() || v.gone.contains(&id) || v.containers.get(&id).is_some_and(|e| e.ticket > ticket) {
            return s;
        }
        let created = s["created"].as_str().and_then(crate::time::parse_rfc3339).unwrap_or_default();
        v.containers.insert(id, Entry { ticket, full_id: full_id.to_string(), created, summary: s.clone(), text });
        s
    }

    /// The container `key` (an id, a name or a prefix) was destroyed.
    pub fn remove(&self, key: &str) {
        let mut v = lock(&self.0);
        let id = v.resolve(key).unwrap_or_else(|| short_id(key).to_string());
        v.containers.remove(&id);
        v.gone.insert(id);
    }

    /// After a full list taken with `ticket` that showed only `listed` (short
    /// ids): forget the others, unless an inspect started after the list.
    pub fn keep_listed(&self, ticket: Ticket, listed: &HashSet<String>) {
        let mut v = lock(&self.0);
        let vanished: Vec<String> = v
            .containers
            .iter()
            .filter(|(id, e)| e.ticket < ticket && !listed.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            v.containers.remove(&id);
            v.gone.insert(id);
        }
    }

    /// Whether it is served (the state thread's say).
    pub fn set_current(&self, current: bool) {
        lock(&self.0).current = current;
    }

    /// Every container (`all`) or those that are up, that `keep` keeps,
    /// newest first, each summary as JSON text; `None` while the view is not
    /// current.
    pub fn list(&self, all: bool, keep: impl Fn(&Value) -> bool) -> Option<Vec<Arc<str>>> {
        let v = lock(&self.0);
        if !v.current {
            return None;
        }
        let mut up: Vec<&Entry> = v
            .containers
            .values()
            .filter(|e| (all || UP.iter().any(|s| e.summary["state"] == *s)) && keep(&e.summary))
            .collect();
        up.sort_by(|a, b| b.created.total_cmp(&a.created).then_with(|| a.full_id.cmp(&b.full_id)));
        Some(up.into_iter().map(|e| e.text.clone()).collect())
    }

    /// The container `key` names; `None` when the view is not current or does
    /// not know it (the engine answers then, with its own error).
    pub fn find(&self, key: &str) -> Option<Value> {
        let v = lock(&self.0);
        if !v.current {
            return None;
        }
        v.resolve(key).map(|id| v.containers[&id].summary.clone())
    }
}

/// `ContainerSummary` (spec §7.2) from inspect data.
pub fn summary(i: &Value) -> Value {
    let id = i["Id"].as_str().unwrap_or_default();
    let labels = match &i["Config"]["Labels"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let ports = match &i["NetworkSettings"]["Ports"] {
        Value::Object(m) => Value::Object(m.clone()),
        _ => json!({}),
    };
    let state = i["State"]["Status"].clone();
    let endpoints = endpoints(&ports, &i["NetworkSettings"]["Networks"]);
    json!({
        "endpoints": endpoints,
        "id": short_id(id),
        "name": i["Name"].as_str().unwrap_or_default().trim_start_matches('/'),
        "image": i["Config"]["Image"],
        "status": state,
        "state": state,
        "managed_by_dcd": is_managed(&labels),
        "labels": labels,
        "ports": ports,
        "created": i["Created"],
    })
}

/// Extension: for each exposed port, the addresses it is reached at from
/// the container's networks and from the host.
fn endpoints(ports: &Value, networks: &Value) -> Value {
    let ips: Vec<&str> = networks
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|n| n["IPAddress"].as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    let list: Vec<Value> = ports
        .as_object()
        .into_iter()
        .flatten()
        .map(|(key, bindings)| {
            let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
            let scheme = if proto == "udp" { "udp" } else { "tcp" };
            let host: Vec<String> = bindings
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| {
                    let hp = b["HostPort"].as_str().filter(|p| !p.is_empty())?;
                    let ip = b["HostIp"].as_str().filter(|ip| !ip.is_empty() && *ip != "0.0.0.0" && *ip != "::").unwrap_or("localhost");
                    Some(format!("{scheme}://{ip}:{hp}"))
                })
                .collect();
            json!({"port": key, "network_urls": ips.iter().map(|ip| format!("{scheme}://{ip}:{port}")).collect::<Vec<_>>(),
                   "host_urls": host})
        })
        .collect();
    Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::MANAGED_LABEL;

    #[test]
    fn summary_shapes_inspect_data() {
        let s = summary(&json!({"Id": "0123456789abcdef", "Name": "/web", "Created": "t",
            "Config": {"Image": "img", "Labels": {MANAGED_LABEL: "true"}},
            "State": {"Status": "running"}, "NetworkSettings": {"Ports": null}}));
        assert_eq!(
            s,
            json!({"id": "0123456789ab", "name": "web", "image": "img", "status": "running",
            "state": "running", "labels": {MANAGED_LABEL: "true"}, "ports": {}, "created": "t",
            "managed_by_dcd": true, "endpoints": []})
        );
    }

    fn inspect(id: &str, name: &str, state: &str, created: &str) -> Value {
        json!({"Id": id, "Name": format!("/{name}"), "Created": created, "Config": {"Image": "img"},
               "State": {"Status": state}})
    }

    const A: &str = "aaaaaaaaaaaa0000";
    const B: &str = "aaaaaaaaaaab1111";

    #[test]
    fn it_is_served_only_when_current() {
        let v = View::default();
        v.put(v.ticket(), &inspect(A, "a", "running", "2026-01-01T00:00:00Z"));
        assert_eq!(v.list(true, |_| true), None);
        assert_eq!(v.find("a"), None);
        v.set_current(true);
        assert_eq!(v.list(true, |_| true).map(|l| l.len()), Some(1));
        let listed: Value = serde_json::from_str(&v.list(true, |_| true).unwrap()[0]).unwrap();
        assert_eq!(listed, v.find("a").unwrap(), "a list shows the summary as it is found");
        assert_eq!(v.find("a").map(|s| s["id"].clone()), Some(json!("aaaaaaaaaaaa")));
    }

    #[test]
    fn the_later_inspect_wins_and_the_gone_stay_gone() {
        let v = View::default();
        v.set_current(true);
        let (early, late) = (v.ticket(), v.ticket());
        v.put(late, &inspect(A, "a", "exited", "2026-01-01T00:00:00Z"));
        v.put(early, &inspect(A, "a", "running", "2026-01-01T00:00:00Z"));
        assert_eq!(v.find(A).unwrap()["state"], "exited", "an inspect started earlier tells less");
        v.remove("a");
        v.put(v.ticket(), &inspect(A, "a", "running", "2026-01-01T00:00:00Z"));
        assert_eq!(v.find(A), None, "a destroyed container does not come back");
    }

    #[test]
    fn keys_resolve_as_the_engine_does_and_lists_are_newest_first() {
        let v = View::default();
        v.set_current(true);
        v.put(v.ticket(), &inspect(A, "a", "exited", "2026-01-01T00:00:00.5Z"));
        v.put(v.ticket(), &inspect(B, "b", "paused", "2026-01-01T00:00:00.25Z"));
        assert_eq!(v.find("/b").unwrap()["id"], "aaaaaaaaaaab", "by name");
        assert_eq!(v.find(B).unwrap()["name"], "b", "by full id");
        assert_eq!(v.find("aaaaaaaaaaaa0").unwrap()["name"], "a", "by a unique prefix");
        assert_eq!(v.find("aaaa"), None, "an ambiguous prefix is the engine's to refuse");
        let names = |all| {
            let list = v.list(all, |_| true).unwrap();
            list.iter().map(|s| serde_json::from_str::<Value>(s).unwrap()["name"].take()).collect::<Vec<_>>()
        };
        assert_eq!(names(true), ["a", "b"]);
        assert_eq!(names(false), ["b"], "paused is up; exited is not");
        // A list taken before `late` that missed A forgets it; B, put after the list started, stays.
        let list = v.ticket();
        v.put(v.ticket(), &inspect(B, "b", "running", "2026-01-01T00:00:00.25Z"));
        v.keep_listed(list, &HashSet::new());
        assert_eq!(names(true), ["b"]);
    }
}
