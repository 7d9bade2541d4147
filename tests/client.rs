//! The client in the binary (`dcd devices|call|ps|logs|events|pull|compose`), against a `--sim`
//! device on a loopback nats-server and on Zenoh; and `dcd exec` against the real engine, in a
//! terminal under tmux (NATS, then once over Zenoh) and through a pipe.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{command, dcd, docker_ok, free_port, nats_installed, nats_server, require, unique, Proc, READY};

/// A device and the settings a client needs to reach it.
struct Rig {
    id: String,
    env: Vec<(String, String)>,
    device: Proc,
    _nats: Option<Proc>,
}

impl Rig {
    /// The device (`args`: `--sim` or the real engine) as a D2D device on a nats-server of its own.
    fn nats(tag: &str, args: &[&str]) -> Option<Rig> {
        if !nats_installed() {
            return None;
        }
        let port = free_port();
        let server = nats_server(port, &[]);
        let url = format!("nats://127.0.0.1:{port}");
        let (id, tenant) = (format!("cli-{tag}"), unique(tag));
        let env = [("NATS_URL", url.as_str()), ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d")];
        let device = common::dcd_on_nats(&id, &tenant, port, args, &[]);
        let client = [&env[..], &[("MESSAGING_BACKEND", "nats"), ("TENANT", &tenant)]].concat();
        Some(Rig::ready(id, &client, device, Some(server)))
    }

    /// The device as a Zenoh D2D peer listening on loopback (no scouting); the client dials it.
    fn zenoh(tag: &str, args: &[&str]) -> Rig {
        let endpoint = format!("tcp/127.0.0.1:{}", free_port());
        let (id, tenant) = (format!("cli-{tag}"), unique(tag));
        let host = common::engine_kind().podman().then(common::engine_host).flatten();
        let mut env = vec![("ZENOH_LISTEN", endpoint.as_str()), ("DCD_ZENOH_MULTICAST", "false")];
        env.extend(host.iter().map(|h| ("DOCKER_HOST", h.as_str())));
        let device = dcd(None, &id, &tenant, args, &env);
        let client = [
            ("MESSAGING_BACKEND", "zenoh"),
            ("ZENOH_CONNECT", endpoint.as_str()),
            ("DEVICE_CONNECT_DISCOVERY_MODE", "d2d"),
            ("TENANT", &tenant),
        ];
        Rig::ready(id, &client, device, None)
    }

    fn ready(id: String, env: &[(&str, &str)], device: Proc, nats: Option<Proc>) -> Rig {
        device.expect_line(READY, Duration::from_secs(20));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Rig { id, env, device, _nats: nats }
    }

    /// `dcd ARGS` as a client of this device, with nothing from our environment but PATH.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command(env!("CARGO_BIN_EXE_dcd"), None);
        c.envs(self.env.iter().map(|(k, v)| (k, v))).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("dcd runs")
    }

    /// `dcd ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "dcd {args:?}: {:?}\nstdout: {out}\nstderr: {err}", o.status);
        out.into_owned()
    }

    /// `dcd ARGS`, which must fail with exit code 1; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "dcd {args:?}: stdout {:?} stderr {err}", o.stdout);
        err
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        Proc::spawn(name, &mut self.cmd(args))
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {text}"))
}

/// Everything a client does with a simulated device, on one transport.
fn client_commands(rig: &Rig) {
    let id = rig.id.as_str();
    // Discovery over presence: JSON lines to a pipe.
    let devices = rig.ok(&["devices"]);
    let found: Vec<Value> = devices.lines().map(json).collect();
    assert!(found.iter().any(|d| d["device_id"] == id && d["identity"]["device_type"] == "docker_host"), "{devices}");

    assert_eq!(json(&rig.ok(&["call", id, "get_status"]))["status"], "success");

    // Events: a provision shows as container_state_changed on `dcd events`. Its subscription has
    // no ready signal, so provision until one is seen.
    let events = rig.spawn("dcd events", &["events", id]);
    let seen = (0..20).any(|i| {
        let spec = format!(r#"{{"spec": {{"image": "sim/hello:latest", "name": "web-{i}"}}}}"#);
        rig.ok(&["call", id, "provision_container", &spec]);
        events.wait_line("\"container_state_changed\"", Duration::from_secs(1))
    });
    assert!(seen, "no container_state_changed on dcd events");
    drop(events);

    let ps = json(&rig.ok(&["ps", id, "-a"]));
    assert!(ps["containers"].as_array().unwrap().iter().any(|c| c["name"] == "web-0"), "{ps}");

    // logs -f: the seed lines come as events; Ctrl-C stops the follow on the device.
    let mut logs = rig.spawn("dcd logs", &["logs", id, "web-0", "-f"]);
    logs.expect_line("simulated log line 1 from web-0", Duration::from_secs(15));
    logs.signal(libc::SIGINT);
    assert_eq!(logs.wait_exit(Duration::from_secs(10)).and_then(|s| s.code()), Some(130));
    let stop = json(&rig.ok(&["call", id, "stop_container_logs", r#"{"container_id": "web-0"}"#]));
    assert_eq!(stop["stopped"], false, "the client stopped its follow: {stop}");
    assert!(rig.ok(&["logs", id, "web-0", "--tail", "2"]).contains("simulated log line 2 from web-0"));

    // Errors: an error reply, an unknown device, a wrong tenant.
    assert!(rig.fails(&["call", id, "no_such_function"]).contains("Unknown method"));
    assert!(rig.fails(&["call", id, "get_container", r#"{"container_id": "nope"}"#]).contains("nope"));
    assert!(rig.fails(&["call", "no-such-device", "get_status"]).contains("no device \"no-such-device\""));
    let mut other = rig.cmd(&["call", id, "get_status"]);
    let o = other.env("TENANT", "another-tenant").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in tenant \"another-tenant\""));
    assert_eq!(rig.run(&["call", id, "get_status", "{not json"]).status.code(), Some(1));
}

#[test]
fn client_over_nats() {
    let Some(rig) = Rig::nats("nats", &["--sim"]) else { return };
    client_commands(&rig);
    // A pull that takes a while: job_progress to a job_finished, the result as JSON to a pipe.
    let pulled = json(&rig.ok(&["pull", &rig.id, "sim/slow/app:1"]));
    assert_eq!(pulled["status"], "success", "{pulled}");
    // Compose: the local file goes as compose_yaml; down finds the project by the same name.
    let dir = std::env::temp_dir().join(unique("compose"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("compose.yaml");
    std::fs::write(&file, "name: clitest\nservices:\n  web:\n    image: sim/hello:latest\n").unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(json(&rig.ok(&["compose", "up", &rig.id, "-f", file]))["status"], "success");
    let ps = json(&rig.ok(&["compose", "ps", &rig.id, "-f", file]));
    assert_eq!((&ps["project"], &ps["count"]), (&Value::from("clitest"), &Value::from(1)), "{ps}");
    assert_eq!(json(&rig.ok(&["compose", "down", &rig.id, "-f", file]))["status"], "success");
    std::fs::remove_dir_all(&dir).unwrap();
    drop(rig.device);
}

#[test]
fn client_over_zenoh() {
    let rig = Rig::zenoh("zenoh", &["--sim"]);
    client_commands(&rig);
}

/// No broker, router or peer: a quick failure that says so.
#[test]
fn client_without_a_mesh() {
    let port = free_port().to_string();
    for env in [
        [("MESSAGING_BACKEND", "nats"), ("NATS_URL", &format!("nats://127.0.0.1:{port}"))],
        [("MESSAGING_BACKEND", "zenoh"), ("ZENOH_CONNECT", &format!("tcp/127.0.0.1:{port}"))],
    ] {
        let t0 = Instant::now();
        let o = command(env!("CARGO_BIN_EXE_dcd"), None).envs(env).args(["call", "d", "get_status"]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{env:?}: {err}");
        assert!(err.contains("cannot reach the mesh"), "{env:?}: {err}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{env:?}: took {:?}", t0.elapsed());
    }
}

/// A container of the test image that sleeps, for exec sessions; removed on drop.
fn sleeper(tag: &str) -> Option<(String, common::Cleanup)> {
    let image = common::test_image()?;
    let name = unique(tag);
    docker_ok(&["run", "-d", "--name", &name, &image, "sleep", "3600"]);
    Some((name.clone(), common::Cleanup(vec![name])))
}

/// A tmux server of its own, with one session running `cmd` in an 80x24 window; killed on drop.
struct Tmux(String);

impl Tmux {
    fn start(tag: &str, cmd: &str) -> Option<Tmux> {
        let installed = Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success());
        if !require(installed, "tmux") {
            return None;
        }
        let t = Tmux(unique(tag));
        t.tmux(&["new-session", "-d", "-s", "s", "-x", "80", "-y", "24", cmd]);
        t.tmux(&["set-option", "-g", "window-size", "manual"]);
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let o = Command::new("tmux").args(["-L", &self.0]).args(args).output().expect("tmux");
        assert!(o.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Type `keys` (tmux key names, e.g. "Enter", "C-c").
    fn keys(&self, keys: &[&str]) {
        self.tmux(&[&["send-keys", "-t", "s"][..], keys].concat());
    }

    fn shows(&self, what: &str) -> bool {
        self.tmux(&["capture-pane", "-p", "-t", "s"]).contains(what)
    }

    /// Wait until the screen shows `what`; the screen.
    fn expect(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.tmux(&["capture-pane", "-p", "-t", "s"]);
            if screen.contains(what) {
                return screen;
            }
            assert!(Instant::now() < deadline, "the screen never showed {what:?}:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.0, "kill-server"]).output();
    }
}

/// `dcd exec -it` in a real terminal: a command, a resize, a full-screen program, Ctrl-C to the
/// process, and `exit 3` as dcd's exit code with the terminal restored.
fn terminal_session(rig: &Rig, container: &str) {
    let env: Vec<String> = rig.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let dcd = format!("env {} {} exec -it {} {container} sh", env.join(" "), env!("CARGO_BIN_EXE_dcd"), rig.id);
    // After dcd: its exit code, and whether the terminal is cooked again.
    let shell = format!("{dcd}; echo EXIT=$?; stty -a | grep -o -- '-*icanon' | sed 's/^/MODE=/'; sleep 600");
    let Some(t) = Tmux::start(&format!("tmux-{}", rig.id), &shell) else { return };
    t.expect("/ #");
    t.keys(&["echo hello-$((6*7))", "Enter"]);
    t.expect("hello-42");
    // The window size at open, and after a resize (SIGWINCH). As the device's session table has
    // it: this machine's containers refuse TIOCGWINSZ on their ptys, so `stty size` fails even
    // under `docker exec -it`.
    let size = || {
        let sessions = json(&rig.ok(&["call", &rig.id, "exec_sessions"]));
        let s = &sessions["sessions"][0];
        (s["rows"].as_u64(), s["cols"].as_u64())
    };
    assert_eq!(size(), (Some(24), Some(80)));
    t.tmux(&["resize-window", "-t", "s", "-x", "100", "-y", "30"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while size() != (Some(30), Some(100)) {
        assert!(Instant::now() < deadline, "the resize did not reach the session: {:?}", size());
        std::thread::sleep(Duration::from_millis(100));
    }
    t.keys(&["clear; vi /tmp/cli-test", "Enter"]);
    t.expect("\n~\n~\n");
    t.keys(&["i", "typed-in-vi"]);
    t.expect("typed-in-vi");
    // A lone Escape: vi waits a moment for the rest of a key sequence.
    t.keys(&["Escape"]);
    std::thread::sleep(Duration::from_millis(500));
    t.keys(&[":q!", "Enter"]);
    // Keys typed while busybox's line editor starts again (it asks the terminal where the
    // cursor is) can be taken as the answer: type the check until the shell runs it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !t.shows("back-from-2") {
        assert!(Instant::now() < deadline, "no shell after vi");
        t.keys(&["C-u", "echo back-from-$((1+1))", "Enter"]);
        std::thread::sleep(Duration::from_millis(500));
    }
    t.keys(&["sleep 30", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    t.keys(&["C-c"]);
    t.keys(&["echo after-ctrl-c", "Enter"]);
    t.expect("after-ctrl-c");
    assert!(t0.elapsed() < Duration::from_secs(20), "Ctrl-C did not interrupt sleep");
    t.keys(&["exit 3", "Enter"]);
    let screen = t.expect("MODE=");
    assert!(screen.contains("EXIT=3"), "{screen}");
    assert!(screen.contains("MODE=icanon") && !screen.contains("MODE=-icanon"), "terminal not restored:\n{screen}");
}

#[test]
fn exec_in_a_terminal_over_nats() {
    let Some((container, _gone)) = sleeper("exec-tty") else { return };
    let Some(rig) = Rig::nats("exec-tty", &[]) else { return };
    terminal_session(&rig, &container);
    // Through a pipe, without a terminal: the output, and the process's exit code.
    let mut child = rig.cmd(&["exec", &rig.id, &container, "sh"]);
    let (mut p, mut stdin) = Proc::spawn_piped("dcd exec", &mut child);
    use std::io::Write;
    stdin.write_all(b"echo piped-$((6*7))\nexit 5\n").unwrap();
    drop(stdin);
    p.expect_line("piped-42", Duration::from_secs(20));
    assert_eq!(p.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(5));
}

#[test]
fn exec_in_a_terminal_over_zenoh() {
    let Some((container, _gone)) = sleeper("exec-tty-z") else { return };
    let rig = Rig::zenoh("exec-tty-z", &[]);
    terminal_session(&rig, &container);
}
