//! The client: `dcd <subcommand>` calls a device over the mesh, as the Python
//! agent tools do, with the same settings (`config` resolves them). One
//! session, blocking calls; terminal niceties only when stdout is one.

mod exec;
mod term;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argh::FromArgs;
use crossbeam_channel::{select, Receiver};
use serde_json::{json, Value};

use crate::ids::random_hex;
use crate::mesh::{self, MeshConfig, RequestError, Session};
use crate::time::now_epoch;

/// What a call waits for by default: the agent tools' 30 s (spec §2.5).
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long `devices` waits for a first answer, and for more after it.
const FIRST_PRESENCE: Duration = Duration::from_secs(3);
const MORE_PRESENCE: Duration = Duration::from_millis(300);

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Devices(Devices),
    Call(Call),
    Ps(Ps),
    Logs(Logs),
    Events(Events),
    Exec(Exec),
    Compose(Compose),
    Pull(Pull),
}

/// list the devices on the mesh (D2D presence or the registry)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "devices")]
pub struct Devices {
    /// print JSON, also to a terminal
    #[argh(switch)]
    json: bool,
}

/// call a function of a device and print its JSON result
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "call")]
pub struct Call {
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    function: String,
    /// the params, a JSON object (default {})
    #[argh(positional)]
    params: Option<String>,
    /// seconds to wait for the answer (default 30)
    #[argh(option, default = "30.0")]
    timeout: f64,
}

/// list a device's containers, like `docker ps`
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "ps")]
pub struct Ps {
    #[argh(positional)]
    device: String,
    /// all containers, not only running ones
    #[argh(switch, short = 'a')]
    all: bool,
    /// print JSON, also to a terminal
    #[argh(switch)]
    json: bool,
}

/// print a container's log; -f follows it until Ctrl-C
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "logs")]
pub struct Logs {
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    container: String,
    /// follow the log (container_log_line events)
    #[argh(switch, short = 'f')]
    follow: bool,
    /// only the last N lines (default all)
    #[argh(option)]
    tail: Option<i64>,
    /// only lines since this RFC3339 time
    #[argh(option)]
    since: Option<String>,
}

/// print a device's events as JSON lines until Ctrl-C
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "events")]
pub struct Events {
    #[argh(positional)]
    device: String,
}

/// run a command in a container; -it for a terminal (exit code: the command's)
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "exec")]
pub struct Exec {
    /// send stdin (always when stdin is not a terminal)
    #[argh(switch, short = 'i')]
    interactive: bool,
    /// a terminal: raw mode, window size, Ctrl-C to the process
    #[argh(switch, short = 't')]
    tty: bool,
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    container: String,
    /// the command (default /bin/sh)
    #[argh(positional, greedy)]
    cmd: Vec<String>,
}

/// compose up|down|ps a local compose file on a device; prints the JSON result
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "compose")]
pub struct Compose {
    /// up, down or ps
    #[argh(positional)]
    action: String,
    #[argh(positional)]
    device: String,
    /// the compose file, sent as compose_yaml
    #[argh(option, short = 'f')]
    file: String,
    /// project name (default: the file's name:, else its directory's)
    #[argh(option, short = 'p')]
    project: Option<String>,
}

/// pull an image on a device, with a progress bar
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pull")]
pub struct Pull {
    #[argh(positional)]
    device: String,
    #[argh(positional)]
    image: String,
    /// print JSON, also to a terminal
    #[argh(switch)]
    json: bool,
}

/// Why a command failed; each says what to do about it.
#[derive(Debug)]
pub enum Failure {
    /// No broker, router or peer to talk to.
    NoMesh(String),
    /// Nothing answers for the device.
    NoDevice {
        device: String,
        tenant: String,
    },
    /// No device at all answered discovery.
    NoDevices {
        tenant: String,
    },
    TimedOut(String),
    /// The device answered with a JSON-RPC error.
    Reply {
        code: i64,
        message: String,
    },
    /// A bad argument or an unreadable answer.
    Usage(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoMesh(e) => write!(
                f,
                "cannot reach the mesh: {e}\n  is the broker or router up? Set NATS_URL (with MESSAGING_BACKEND=nats) \
                 or ZENOH_CONNECT to where the device is"
            ),
            Failure::NoDevice { device, tenant } => write!(
                f,
                "no device {device:?} answers in tenant {tenant:?}\n  check the device id and TENANT \
                 (the device's --tenant); `dcd devices` lists the devices it finds"
            ),
            Failure::NoDevices { tenant } => write!(
                f,
                "no device found in tenant {tenant:?}\n  is a device running on this mesh, with the same TENANT \
                 and DEVICE_CONNECT_DISCOVERY_MODE?"
            ),
            Failure::TimedOut(what) => write!(f, "{what}: no answer in time (is the device busy or gone?)"),
            Failure::Reply { code, message } => write!(f, "{message} (error {code})"),
            Failure::Usage(e) => f.write_str(e),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// `exec -it` as docker spells it: argh takes one switch per dash.
pub fn docker_style(args: Vec<String>) -> Vec<String> {
    let Some(at) = args.iter().position(|a| a == "exec") else { return args };
    let mut out = args[..=at].to_vec();
    let mut rest = args[at + 1..].iter();
    for a in rest.by_ref() {
        match a.as_str() {
            "-it" | "-ti" => out.extend(["-i".into(), "-t".into()]),
            _ if a.starts_with('-') => out.push(a.clone()),
            _ => {
                out.push(a.clone());
                break;
            }
        }
    }
    out.extend(rest.cloned());
    out
}

/// Run `command`; the process's exit code. `Session::open` comes first: no
/// thread may exist before it.
pub fn run(command: Command, cfg: &MeshConfig) -> i32 {
    let signals = crate::signals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGWINCH]);
    let outcome = Session::open(cfg).map_err(|e| Failure::NoMesh(e.to_string())).and_then(|session| {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || while tx.send(crate::signals::wait(&signals)).is_ok() {})
            .map_err(|e| Failure::Usage(format!("cannot start a thread: {e}")))?;
        let client = Arc::new(Client { session, tenant: cfg.tenant.clone(), d2d: cfg.d2d, signals: rx });
        dispatch(&client, command)
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dcd: {e}");
            1
        }
    }
}

fn dispatch(c: &Arc<Client>, command: Command) -> Result<i32> {
    match command {
        Command::Devices(a) => devices(c, a.json),
        Command::Call(a) => {
            let params = match a.params.as_deref() {
                None => json!({}),
                Some(p) => serde_json::from_str(p).map_err(|e| Failure::Usage(format!("params {p:?}: {e}")))?,
            };
            let timeout =
                Duration::try_from_secs_f64(a.timeout).map_err(|e| Failure::Usage(format!("--timeout: {e}")))?;
            print_json(&c.call_for(&a.device, &a.function, params, timeout)?);
            Ok(0)
        }
        Command::Ps(a) => {
            let r = c.call(&a.device, "list_containers", json!({"all_containers": a.all}))?;
            if wants_json(a.json) {
                print_json(&r);
            } else {
                let rows = list(&r["containers"]).map(|k| {
                    let created = k["created"].as_str().unwrap_or_default();
                    [&k["id"], &k["image"], &k["state"], &json!(created.get(..19).unwrap_or(created)), &k["name"]]
                        .map(text)
                        .to_vec()
                });
                table(&["CONTAINER ID", "IMAGE", "STATE", "CREATED", "NAME"], rows);
            }
            Ok(0)
        }
        Command::Logs(a) => logs(c, a),
        Command::Events(a) => {
            let events = c.subscribe(&a.device, ">")?;
            let mut out = std::io::stdout();
            loop {
                select! {
                    recv(events) -> m => {
                        let Ok(m) = m else { return Ok(1) };
                        let _ = out.write_all(&m.payload).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
                    }
                    recv(c.signals) -> s => if s != Ok(libc::SIGWINCH) {
                        return Ok(128 + s.unwrap_or(libc::SIGINT));
                    },
                }
            }
        }
        Command::Exec(a) => exec::run(c, a),
        Command::Compose(a) => compose(c, a),
        Command::Pull(a) => pull(c, a),
    }
}

/// The session and what every command needs of the settings.
pub(crate) struct Client {
    session: Session,
    tenant: String,
    d2d: bool,
    /// SIGINT, SIGTERM, SIGHUP, SIGWINCH as they come.
    signals: Receiver<i32>,
}

impl Client {
    fn call(&self, device: &str, method: &str, params: Value) -> Result<Value> {
        self.call_for(device, method, params, TIMEOUT)
    }

    /// The `result` of `method` on `device`, or why there is none.
    fn call_for(&self, device: &str, method: &str, params: Value, timeout: Duration) -> Result<Value> {
        let subject = self.device_subject(device, "cmd")?;
        let body =
            json!({"jsonrpc": "2.0", "id": format!("cli-{}", random_hex(12)), "method": method, "params": params});
        let reply = match self.session.request(&subject, body.to_string().into_bytes(), timeout) {
            Ok(r) => r,
            Err(RequestError::NoResponders) => {
                return Err(Failure::NoDevice { device: device.into(), tenant: self.tenant.clone() })
            }
            Err(RequestError::TimedOut) => return Err(Failure::TimedOut(format!("{device} {method}"))),
            Err(RequestError::Failed(e)) => return Err(Failure::NoMesh(e)),
        };
        let mut reply: Value = serde_json::from_slice(&reply)
            .map_err(|e| Failure::Usage(format!("{device} answered {method} with something not JSON: {e}")))?;
        match reply.get("error") {
            Some(e) => Err(Failure::Reply {
                code: e["code"].as_i64().unwrap_or(0),
                message: e["message"].as_str().map_or_else(|| e.to_string(), String::from),
            }),
            None => Ok(reply["result"].take()),
        }
    }

    /// `device-connect.<tenant>.<device>.<tail>`, for a device id that is one token.
    fn device_subject(&self, device: &str, tail: &str) -> Result<String> {
        if device.is_empty() || device.contains(['.', '*', '>', '/', ' ']) {
            return Err(Failure::Usage(format!("{device:?} is not a device id")));
        }
        Ok(mesh::subject(&self.tenant, &format!("{device}.{tail}")))
    }

    /// The device's events named `name` (`>`: all of them), parsed.
    fn subscribe(&self, device: &str, name: &str) -> Result<Receiver<mesh::Message>> {
        let subject = self.device_subject(device, &format!("event.{name}"))?;
        self.session.subscribe(&subject).map_err(|e| Failure::NoMesh(e.to_string()))
    }
}

fn event_params(m: &mesh::Message) -> Value {
    serde_json::from_slice::<Value>(&m.payload).map(|mut v| v["params"].take()).unwrap_or_default()
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn is_terminal(fd: i32) -> bool {
    // SAFETY: isatty only looks at the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// JSON when asked for, or when stdout is not a terminal.
fn wants_json(forced: bool) -> bool {
    forced || !is_terminal(1)
}

/// One line: for a pipe, and for `jq` on a terminal.
fn print_json(v: &Value) {
    println!("{v}");
}

fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = std::iter::once(headers.iter().map(|h| h.to_string()).collect()).chain(rows).collect();
    let widths: Vec<usize> =
        (0..headers.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

fn devices(c: &Client, json_out: bool) -> Result<i32> {
    let mut found: Vec<Value> = Vec::new();
    if c.d2d {
        let presence =
            c.session.subscribe(&mesh::subject(&c.tenant, "*.presence")).map_err(|e| Failure::NoMesh(e.to_string()))?;
        let probe = json!({"probe": true, "ts": now_epoch()}).to_string().into_bytes();
        c.session
            .publish(&mesh::subject(&c.tenant, "discovery.probe"), probe)
            .map_err(|e| Failure::NoMesh(e.to_string()))?;
        let mut until = Instant::now() + FIRST_PRESENCE;
        while let Ok(m) = presence.recv_deadline(until) {
            let Ok(p) = serde_json::from_slice::<Value>(&m.payload) else { continue };
            let Some(id) = p["device_id"].as_str() else { continue };
            found.retain(|d| d["device_id"] != id);
            if p["departing"] != true {
                found.push(p);
            }
            until = Instant::now() + MORE_PRESENCE;
        }
    } else {
        // The registry (spec §6): pages of 100.
        let subject = mesh::subject(&c.tenant, "discovery");
        let mut offset = json!(0);
        while !offset.is_null() {
            let body = json!({"jsonrpc": "2.0", "id": format!("cli-{}", random_hex(12)),
                              "method": "discovery/listDevices", "params": {"offset": offset, "limit": 100}});
            let page = match c.session.request(&subject, body.to_string().into_bytes(), TIMEOUT) {
                Ok(r) => serde_json::from_slice::<Value>(&r).unwrap_or_default(),
                Err(RequestError::Failed(e)) => return Err(Failure::NoMesh(e)),
                Err(_) => {
                    return Err(Failure::Usage(format!(
                        "no registry answers in tenant {:?}: in infra mode devices register there \
                     (set DEVICE_CONNECT_DISCOVERY_MODE=d2d for devices that announce themselves)",
                        c.tenant
                    )))
                }
            };
            found.extend(list(&page["result"]["devices"]).cloned());
            offset = page["result"]["next_offset"].clone();
        }
    }
    if found.is_empty() {
        return Err(Failure::NoDevices { tenant: c.tenant.clone() });
    }
    found.sort_by(|a, b| text(&a["device_id"]).cmp(&text(&b["device_id"])));
    if wants_json(json_out) {
        for d in &found {
            print_json(d);
        }
    } else {
        let rows = found.iter().map(|d| {
            let status = &d["status"];
            let state = [&status["availability"], &status["state"]].into_iter().find(|s| s.is_string());
            vec![text(&d["device_id"]), text(&d["identity"]["device_type"]), state.map_or("unknown".into(), text)]
        });
        table(&["DEVICE", "TYPE", "STATUS"], rows);
    }
    Ok(0)
}

fn logs(c: &Client, a: Logs) -> Result<i32> {
    let mut params = json!({"container_id": a.container, "tail": a.tail.unwrap_or(-1), "timestamps": false});
    if let Some(since) = &a.since {
        params["since"] = json!(since);
    }
    if !a.follow {
        print!("{}", text(&c.call(&a.device, "container_logs", params)?["logs"]));
        return Ok(0);
    }
    let lines = c.subscribe(&a.device, crate::events::LOG_LINE)?;
    params["follow"] = json!(true);
    c.call(&a.device, "container_logs", params)?;
    let code = loop {
        select! {
            recv(lines) -> m => {
                let Ok(m) = m else { break 1 };
                let p = event_params(&m);
                if p["container_id"] != a.container.as_str() {
                    continue;
                }
                let line = text(&p["line"]);
                match p["stream"].as_str() {
                    Some("stderr" | "dcd") => eprintln!("{line}"),
                    _ => println!("{line}"),
                }
            }
            recv(c.signals) -> s => match s {
                Ok(libc::SIGWINCH) => {}
                s => break 128 + s.unwrap_or(libc::SIGINT),
            },
        }
    };
    c.call(&a.device, "stop_container_logs", json!({"container_id": a.container}))?;
    Ok(code)
}

fn compose(c: &Client, a: Compose) -> Result<i32> {
    let yaml = std::fs::read_to_string(&a.file).map_err(|e| Failure::Usage(format!("{}: {e}", a.file)))?;
    let project = a.project.clone().unwrap_or_else(|| project_name(&a.file, &yaml));
    let r = match a.action.as_str() {
        // Long: pulls and starts; the device answers when done.
        "up" => c.call_for(
            &a.device,
            "compose_up",
            json!({"spec": {"compose_yaml": yaml, "project": project}}),
            Duration::from_secs(600),
        )?,
        "down" => c.call(&a.device, "compose_down", json!({"project": project}))?,
        "ps" => c.call(&a.device, "compose_ps", json!({"project": project}))?,
        other => return Err(Failure::Usage(format!("compose {other}: expected up, down or ps"))),
    };
    print_json(&r);
    Ok(0)
}

/// compose's own rule: the file's top-level `name:`, else its directory's
/// name, lower-cased, with only the characters a project name may have.
fn project_name(file: &str, yaml: &str) -> String {
    let named = yaml.lines().find_map(|l| l.strip_prefix("name:")).map(|n| n.trim().trim_matches(['"', '\'']));
    let dir = std::path::Path::new(file)
        .canonicalize()
        .ok()
        .and_then(|p| Some(p.parent()?.file_name()?.to_string_lossy().into_owned()));
    let name = named.map(String::from).or(dir).unwrap_or_default().to_ascii_lowercase();
    name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).collect()
}

fn pull(c: &Client, a: Pull) -> Result<i32> {
    let progress = c.subscribe(&a.device, crate::events::JOB_PROGRESS)?;
    let finished = c.subscribe(&a.device, crate::events::JOB_FINISHED)?;
    let bar = !wants_json(a.json);
    let r = c.call(&a.device, "pull_image", json!({"image": a.image, "wait": 0}))?;
    let result = if r["status"] != "pending" {
        r
    } else {
        let job = r["job_id"].clone();
        let mine = |m: &mesh::Message| Some(event_params(m)).filter(|p| p["job_id"] == job);
        loop {
            select! {
                recv(progress) -> m => match m.ok().as_ref().and_then(mine) {
                    Some(p) if bar => draw_bar(&a.image, &p),
                    _ => {}
                },
                recv(finished) -> m => if let Some(p) = m.ok().as_ref().and_then(mine) {
                    break p;
                },
                recv(c.signals) -> s => if s != Ok(libc::SIGWINCH) {
                    c.call(&a.device, "cancel_job", json!({"job_id": job}))?;
                    eprintln!("\ndcd: pull cancelled");
                    return Ok(130);
                },
                // Events are at-most-once: now and then ask.
                default(Duration::from_secs(2)) => {
                    let j = c.call(&a.device, "get_job", json!({"job_id": job}))?;
                    if j["job"]["state"] != "running" {
                        let j = &j["job"];
                        let status = if j["state"] == "success" { "success" } else { "error" };
                        break json!({"status": status, "result": j["result"], "error": j["error"]});
                    }
                }
            }
        }
    };
    if bar {
        eprintln!();
    }
    let ok = result["status"] == "success";
    if !ok {
        eprintln!("dcd: pull {}: {}", a.image, text(&result["error"]));
    } else if bar {
        println!("{}: pulled", a.image);
    } else {
        print_json(&result);
    }
    Ok(if ok { 0 } else { 1 })
}

fn draw_bar(image: &str, p: &Value) {
    const WIDTH: usize = 30;
    let percent = p["percent"].as_f64();
    let filled = percent.map_or(0, |pc| (pc / 100.0 * WIDTH as f64) as usize).min(WIDTH);
    let mb = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1e6;
    let pc = percent.map_or("   ?".into(), |pc| format!("{pc:3.0}%"));
    eprint!(
        "\r{image}: {:<11} [{}{}] {pc} {:.1}/{:.1} MB\x1b[K",
        text(&p["phase"]),
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        mb("bytes_done"),
        mb("bytes_total")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exec_it_is_split_before_the_device_only() {
        assert_eq!(
            docker_style(args(&["dcd", "--tenant", "t", "exec", "-it", "dev", "c", "ls", "-it"])),
            args(&["dcd", "--tenant", "t", "exec", "-i", "-t", "dev", "c", "ls", "-it"])
        );
        assert_eq!(docker_style(args(&["dcd", "call", "d", "-it"])), args(&["dcd", "call", "d", "-it"]));
    }

    #[test]
    fn project_names_follow_compose() {
        assert_eq!(project_name("/nonexistent/x.yaml", "name: \"My_App\"\nservices: {}\n"), "my_app");
        let dir = std::env::temp_dir().join(format!("Web.Site-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("compose.yaml");
        std::fs::write(&file, "services: {}\n").unwrap();
        let name = project_name(file.to_str().unwrap(), "services: {}\n");
        assert_eq!(name, format!("website-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
