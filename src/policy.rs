//! What callers on the mesh may do to this host. Whoever reaches the device
//! can otherwise mount `/` into a privileged container and own the board, so
//! everything that widens a container's reach is denied unless the operator
//! allows it, field by field. The check reads the Engine API create body we
//! are about to send, not the spec it came from, so no spec field can slip
//! past it.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{Engine, EngineError, Object};
use crate::error::Error;

/// Host paths never bind-mounted unless listed exactly in `bind_prefixes`,
/// even when a listed prefix covers them.
const SENSITIVE: &[&str] = &[
    "/",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/var/run",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
    "/root",
];

/// `security_opt` values that keep or tighten the default confinement. Any other may weaken it:
/// an unconfined or custom seccomp or AppArmor profile, an SELinux label such as `type:spc_t`,
/// unmasked system paths.
const KEEPS_CONFINEMENT: &[&str] = &[
    "no-new-privileges",
    "no-new-privileges=true",
    "no-new-privileges:true",
    "seccomp=default",
    "seccomp:default",
    "apparmor=docker-default",
    "apparmor:docker-default",
];

/// Which containers a process may be started in (`exec_in_container`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecRule {
    /// Any container the policy would have allowed to be created: exec into a
    /// container that reaches the host is a shell on the host.
    #[default]
    Allow,
    /// Only containers carrying our managed label, and within the policy.
    Managed,
    Deny,
    /// Any container at all, however much of the host it reaches. Unsafe: the
    /// one explicit way back to exec without the check.
    Any,
}

/// The operator's policy (`--policy FILE`, JSON). Every field is optional;
/// what is absent keeps the safe default.
#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Serve only the functions that change nothing.
    #[serde(default)]
    pub read_only: bool,
    /// Act only on containers carrying `deviceconnect.dev/managed=true`.
    #[serde(default)]
    pub owned_only: bool,
    #[serde(default)]
    pub exec: ExecRule,
    /// compose_up/compose_down/compose_ps/compose_logs; on unless `false`.
    /// Every container, network and volume of a project passes the checks below.
    #[serde(default)]
    pub compose: Option<bool>,
    /// Host directories a `project_dir` may name (files there are read on a
    /// caller's word); empty: only inline `compose_yaml`.
    #[serde(default)]
    pub compose_dirs: Vec<String>,
    #[serde(default)]
    pub privileged: bool,
    /// Capabilities `cap_add` may name.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Host path prefixes bind mounts may come from.
    #[serde(default)]
    pub bind_prefixes: Vec<String>,
    /// Host network, PID, IPC, UTS, user and cgroup namespaces.
    #[serde(default)]
    pub host_namespaces: bool,
    /// Host devices that may be passed in; a trailing `*` matches any suffix.
    #[serde(default)]
    pub devices: Vec<String>,
    /// `security_opt` entries beyond those that keep the default confinement.
    #[serde(default)]
    pub weaken_security: bool,
    /// Volume drivers besides `local` whose volumes may be mounted: a plugin can
    /// reach anything, so none is allowed unless listed.
    #[serde(default)]
    pub volume_drivers: Vec<String>,
    /// Supplementary groups `group_add` may name (a group can open host devices and sockets).
    #[serde(default)]
    pub group_add: Vec<String>,
    /// Kernel parameters `sysctls` may set; a trailing `*` matches any suffix.
    #[serde(default)]
    pub sysctls: Vec<String>,
    /// Image reference prefixes allowed (`127.0.0.1:5000/`, `library/alpine`);
    /// empty allows every image.
    #[serde(default)]
    pub images: Vec<String>,
}

/// How a function touches the host, for `read_only`, `exec` and `compose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Mutate,
    Exec,
    Compose,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("policy {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("policy {}: {e}", path.display()))
    }

    /// Whether a function of this kind is served (and advertised) at all.
    pub fn serves(&self, kind: Kind) -> bool {
        match kind {
            Kind::Read => true,
            _ if self.read_only => false,
            Kind::Mutate => true,
            Kind::Exec => self.exec != ExecRule::Deny,
            Kind::Compose => self.compose.unwrap_or(true),
        }
    }

    /// Refuse a container create body that reaches beyond what is allowed.
    /// This reads only the body; `admit_create` also looks at the named
    /// volumes it mounts.
    pub fn check_create(&self, body: &Value) -> Result<(), String> {
        let image = body["Image"].as_str().unwrap_or_default();
        if !self.images.is_empty() && !self.images.iter().any(|p| image.starts_with(p.as_str())) {
            return Err(format!("image {image} is not allowed (allow with \"images\": [\"<prefix>\"])"));
        }
        self.check_host(&body["HostConfig"])
    }

    /// The whole check before a create: the body, then every existing named
    /// volume it mounts for what that volume really is. Run it just before the
    /// create: a volume changed between the two is the window that remains.
    pub fn admit_create(&self, engine: &dyn Engine, body: &Value) -> Result<(), Error> {
        self.check_create(body).map_err(Error::Policy)?;
        let host = &body["HostConfig"];
        let binds = strings(&host["Binds"]).into_iter().map(|b| b.split(':').next().unwrap_or_default());
        let mounts = host["Mounts"].as_array().into_iter().flatten().filter(|m| m["Type"] == "volume");
        for name in binds.filter(|s| volume_name(s)).chain(mounts.filter_map(|m| m["Source"].as_str())) {
            match engine.inspect_object(Object::Volume, name) {
                Ok(v) => self.check_volume(name, &v["Driver"], &v["Options"]).map_err(Error::Policy)?,
                // Created plain by the engine on first use.
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Refuse to start a process in a container the policy would not have
    /// let us create: its host config and mounts, as the engine reports them,
    /// get the create check, and its named volumes are looked at as for a
    /// create. The image list is not applied: it is not a reach into the host.
    pub fn admit_exec(&self, engine: &dyn Engine, inspect: &Value) -> Result<(), Error> {
        if self.exec == ExecRule::Any {
            return Ok(());
        }
        let name = inspect["Name"].as_str().unwrap_or_default().trim_start_matches('/');
        let refuse = |e: String| {
            Error::Policy(format!(
                "container {name} reaches the host, and exec is refused where a create would be: {e}"
            ))
        };
        let mut host = inspect["HostConfig"].clone();
        if let Some(h) = host.as_object_mut() {
            // The engine's own default on cgroup v1 hosts, not a choice of whoever made it.
            h.remove("CgroupnsMode");
            h.remove("Binds");
            // The resolved mounts below cover both `Binds` and `Mounts`.
            h.insert("Mounts".into(), Value::Array(Vec::new()));
            // The engine adds `label=disable` itself to a container in the host's PID or IPC
            // namespace, or privileged; those are judged by their own rules.
            let is = |k: &str, v: Value| h.get(k) == Some(&v);
            let shares_host =
                is("PidMode", json!("host")) || is("IpcMode", json!("host")) || is("Privileged", json!(true));
            if let (true, Some(Value::Array(opts))) = (shares_host, h.get_mut("SecurityOpt")) {
                opts.retain(|o| o != "label=disable");
            }
        }
        let mounts = inspect["Mounts"].as_array().cloned().unwrap_or_default();
        host["Mounts"] = mounts
            .iter()
            .filter(|m| m["Type"] == "bind")
            .map(|m| json!({"Type": "bind", "Source": m["Source"]}))
            .collect();
        self.check_host(&host).map_err(refuse)?;
        for m in mounts.iter().filter(|m| m["Type"] == "volume") {
            let Some(vol) = m["Name"].as_str() else { continue };
            match engine.inspect_object(Object::Volume, vol) {
                Ok(v) => self.check_volume(vol, &v["Driver"], &v["Options"]).map_err(refuse)?,
                // Removed since: nothing of it is mounted any more.
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// A volume is what its driver and options make it: a `local` volume with
    /// a bind option is a bind mount of its `device`; another driver's volume
    /// can be anything, so it needs the driver listed in `volume_drivers`.
    pub fn check_volume(&self, name: &str, driver: &Value, options: &Value) -> Result<(), String> {
        let driver = driver.as_str().filter(|d| !d.is_empty()).unwrap_or("local");
        if driver != "local" {
            if self.volume_drivers.iter().any(|d| d == driver) {
                return Ok(());
            }
            return Err(format!(
                "volume {name} uses the driver {driver} (allow with \"volume_drivers\": [\"{driver}\"])"
            ));
        }
        let o = options["o"].as_str().unwrap_or_default();
        let device = options["device"].as_str().unwrap_or_default();
        if o.split(',').any(|opt| matches!(opt.trim(), "bind" | "rbind")) {
            if !device.starts_with('/') {
                return Err(format!("volume {name} binds {device:?}, which is not an absolute host path"));
            }
            return self.check_bind(device).map_err(|e| format!("volume {name} binds {device}: {e}"));
        }
        // `type: ext4, device: /dev/sda1`: the volume mounts a disk of the host.
        if device.starts_with('/') {
            if Path::new(device).components().any(|c| c == Component::ParentDir) {
                return Err(format!("volume {name} mounts {device}: the path must be without .."));
            }
            if !self.devices.iter().any(|p| glob_match(p, device)) {
                return Err(format!(
                    "volume {name} mounts the host's {device} (allow with \"devices\": [\"{device}\"])"
                ));
            }
        }
        Ok(())
    }

    fn check_host(&self, host: &Value) -> Result<(), String> {
        if host["Privileged"] == true && !self.privileged {
            return Err("privileged containers are not allowed (allow with \"privileged\": true)".into());
        }
        for cap in strings(&host["CapAdd"]) {
            let bare = cap.trim_start_matches("CAP_").to_ascii_uppercase();
            if !self.cap_add.iter().any(|a| a.trim_start_matches("CAP_").eq_ignore_ascii_case(&bare)) {
                return Err(format!("cap_add {cap} is not allowed (allow with \"cap_add\": [\"{bare}\"])"));
            }
        }
        for bind in strings(&host["Binds"]) {
            let source = bind.split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                self.check_bind(source)?;
            } else if !volume_name(source) {
                // The engine would refuse it today; the policy does not rely on that.
                return Err(format!(
                    "bind mount of {source} is not allowed: a source is a volume name or an absolute path"
                ));
            }
        }
        for m in host["Mounts"].as_array().into_iter().flatten() {
            if m["Type"] == "bind" || m["Type"].is_null() {
                self.check_bind(m["Source"].as_str().unwrap_or_default())?;
            }
        }
        if !self.host_namespaces {
            for (field, name) in [
                ("NetworkMode", "network"),
                ("PidMode", "pid"),
                ("IpcMode", "ipc"),
                ("UTSMode", "uts"),
                ("UsernsMode", "userns"),
                ("CgroupnsMode", "cgroupns"),
            ] {
                let mode = host[field].as_str().unwrap_or_default();
                if mode == "host" || mode.starts_with("container:") {
                    return Err(format!("{name} mode {mode} is not allowed (allow with \"host_namespaces\": true)"));
                }
            }
        }
        for d in host["Devices"].as_array().into_iter().flatten() {
            let path = d["PathOnHost"].as_str().unwrap_or_default();
            // A `..` would climb out of a pattern's directory ("/dev/serial/*" to /dev/mem).
            if !path.starts_with('/') || Path::new(path).components().any(|c| c == Component::ParentDir) {
                return Err(format!("device {path} is not allowed: the path must be absolute, without .."));
            }
            if !self.devices.iter().any(|p| glob_match(p, path)) {
                return Err(format!("device {path} is not allowed (allow with \"devices\": [\"{path}\"])"));
            }
        }
        if !strings(&host["DeviceCgroupRules"]).is_empty() && self.devices.is_empty() {
            return Err("device cgroup rules are not allowed (allow devices first)".into());
        }
        for g in strings(&host["GroupAdd"]) {
            if !self.group_add.iter().any(|a| a == g) {
                return Err(format!("group_add {g} is not allowed (allow with \"group_add\": [\"{g}\"])"));
            }
        }
        for k in host["Sysctls"].as_object().into_iter().flat_map(|m| m.keys()) {
            if !self.sysctls.iter().any(|p| glob_match(p, k)) {
                return Err(format!("sysctl {k} is not allowed (allow with \"sysctls\": [\"{k}\"])"));
            }
        }
        if !self.weaken_security {
            for opt in strings(&host["SecurityOpt"]) {
                let o = opt.to_ascii_lowercase().replace(' ', "");
                if !KEEPS_CONFINEMENT.contains(&o.as_str()) {
                    return Err(format!("security_opt {opt} is not allowed (allow with \"weaken_security\": true)"));
                }
            }
        }
        Ok(())
    }

    /// A network create body: a bridge of its own is a private network; any
    /// other driver (macvlan, ipvlan, ...) or driver option reaches the host's
    /// interfaces, as the host network does.
    pub fn check_network(&self, body: &Value) -> Result<(), String> {
        let name = body["Name"].as_str().unwrap_or_default();
        let driver = body["Driver"].as_str().filter(|d| !d.is_empty()).unwrap_or("bridge");
        let opts = body["Options"].as_object().is_some_and(|o| !o.is_empty());
        if (driver != "bridge" || opts) && !self.host_namespaces {
            return Err(format!(
                "network {name} with driver {driver}{} is not allowed (allow with \"host_namespaces\": true)",
                if opts { " and driver options" } else { "" }
            ));
        }
        Ok(())
    }

    /// A `project_dir` a caller names: absolute, without `..`, and inside
    /// one of `compose_dirs` once symlinks are followed. Returns the real path.
    pub fn check_compose_dir(&self, dir: &str) -> Result<PathBuf, String> {
        let p = Path::new(dir);
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            return Err(format!("project_dir {dir} must be an absolute path without .."));
        }
        let real =
            std::fs::canonicalize(p).map_err(|_| format!("project_dir {dir} is not a directory on this host"))?;
        if self.compose_dirs.iter().any(|d| std::fs::canonicalize(d).is_ok_and(|d| real.starts_with(d))) {
            return Ok(real);
        }
        Err(format!("project_dir {dir} is not allowed (allow with \"compose_dirs\": [\"<dir>\"]; inline compose_yaml needs none)"))
    }

    fn check_bind(&self, source: &str) -> Result<(), String> {
        // Where `..` leads depends on the symlinks before it, and the engine creates a missing
        // source through them: "<allowed>/link/../x" can make and mount a directory in /etc.
        if Path::new(source).components().any(|c| c == Component::ParentDir) {
            let shown = fold(source);
            let shown = shown.display();
            return Err(format!(
                "bind mount of {shown} ({source}) is not allowed: write the path without .. (allow with \"bind_prefixes\": [\"{shown}\"])"
            ));
        }
        let path = resolve(source);
        let covers = |prefix: &String| {
            let prefix = resolve(prefix);
            path.starts_with(&prefix)
                // Listing "/" or "/var" must not open /etc or the engine's socket:
                // a prefix covers a sensitive path only from inside it.
                && SENSITIVE.iter().map(Path::new).filter(|s| path.starts_with(s)).all(|s| prefix.starts_with(s))
        };
        if self.bind_prefixes.iter().any(covers) {
            return Ok(());
        }
        let shown = path.display();
        Err(format!("bind mount of {shown} is not allowed (allow with \"bind_prefixes\": [\"{shown}\"])"))
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// The path a bind source (absolute, without `..`) really names on this host: symlinks in the
/// part that exists followed, since the engine creates the rest through them.
fn resolve(source: &str) -> PathBuf {
    let parts: Vec<_> = Path::new(source).components().filter(|c| matches!(c, Component::Normal(_))).collect();
    for n in (0..=parts.len()).rev() {
        let existing: PathBuf = std::iter::once(Component::RootDir).chain(parts[..n].iter().copied()).collect();
        if let Ok(real) = std::fs::canonicalize(&existing) {
            return parts[n..].iter().fold(real, |p, c| p.join(c));
        }
    }
    fold(source)
}

/// `..` folded without looking at the filesystem.
fn fold(source: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(source).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The engine's rule for local volume names.
fn volume_name(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn glob_match(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(host: Value) -> Value {
        json!({"Image": "img", "HostConfig": host})
    }

    #[test]
    fn default_refuses_every_escape() {
        let p = Policy::default();
        for (host, want) in [
            (json!({"Privileged": true}), "privileged"),
            (json!({"CapAdd": ["SYS_ADMIN"]}), "cap_add SYS_ADMIN"),
            (json!({"Binds": ["/:/host"]}), "bind mount of /"),
            (json!({"Binds": ["/etc:/x:ro"]}), "bind mount of /etc"),
            (json!({"Binds": ["/srv/../etc:/x"]}), "bind mount of /etc"),
            (json!({"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}), "docker.sock"),
            (json!({"Binds": ["/home/pi:/x"]}), "bind mount of /home/pi"),
            (json!({"Binds": ["/var/lib/docker/volumes:/v"]}), "bind mount of /var/lib/docker"),
            (json!({"Mounts": [{"Type": "bind", "Source": "/proc", "Target": "/p"}]}), "bind mount of /proc"),
            (json!({"NetworkMode": "host"}), "network mode host"),
            (json!({"PidMode": "host"}), "pid mode host"),
            (json!({"IpcMode": "host"}), "ipc"),
            (json!({"UTSMode": "host"}), "uts"),
            (json!({"UsernsMode": "host"}), "userns"),
            (json!({"CgroupnsMode": "host"}), "cgroupns"),
            (json!({"Devices": [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]}), "device /dev/mem"),
            (json!({"SecurityOpt": ["seccomp=unconfined"]}), "security_opt"),
            (json!({"SecurityOpt": ["apparmor:unconfined"]}), "security_opt"),
            (json!({"SecurityOpt": ["label=type:spc_t"]}), "security_opt label=type:spc_t"),
            (json!({"SecurityOpt": ["apparmor=my-lax-profile"]}), "security_opt"),
            (json!({"SecurityOpt": ["systempaths=unconfined"]}), "security_opt"),
            (json!({"GroupAdd": ["docker"]}), "group_add docker"),
            (json!({"Sysctls": {"net.ipv4.ip_forward": "1"}}), "sysctl net.ipv4.ip_forward"),
        ] {
            let e = p.check_create(&body(host.clone())).unwrap_err();
            assert!(e.contains(want) && e.contains("allow with"), "{host}: {e}");
        }
    }

    #[test]
    fn paths_that_only_the_engine_would_refuse_are_refused() {
        let p: Policy = serde_json::from_value(json!({"devices": ["/dev/null*"]})).unwrap();
        for (host, want) in [
            (json!({"Binds": ["../../etc:/x"]}), "volume name or an absolute path"),
            (json!({"Binds": ["./etc:/x"]}), "volume name or an absolute path"),
            (json!({"Binds": ["~/.ssh:/x"]}), "volume name or an absolute path"),
            (json!({"Binds": [":/x"]}), "volume name or an absolute path"),
            (json!({"Devices": [{"PathOnHost": "/dev/null/../mem"}]}), "without .."),
            (json!({"Devices": [{"PathOnHost": "dev/null"}]}), "must be absolute"),
        ] {
            let e = p.check_create(&body(host.clone())).unwrap_err();
            assert!(e.contains(want), "{host}: {e}");
        }
        assert_eq!(p.check_create(&body(json!({"Devices": [{"PathOnHost": "/dev/null"}]}))), Ok(()));
    }

    #[test]
    fn symlinks_and_dotdot_cannot_leave_an_allowed_prefix() {
        let dir = std::env::temp_dir().join(format!("dcd-policy-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let _ = std::fs::remove_file(dir.join("link"));
        std::os::unix::fs::symlink("/etc", dir.join("link")).unwrap();
        let d = dir.display();
        let p: Policy = serde_json::from_value(json!({"bind_prefixes": [d.to_string()]})).unwrap();
        let check = |src: String| p.check_create(&body(json!({"Binds": [format!("{src}:/x")]})));
        assert_eq!(check(format!("{d}/data")), Ok(()));
        assert_eq!(check(format!("{d}/data/new/deeper")), Ok(()), "a missing path inside is created inside");
        for (src, want) in [
            (format!("{d}/link"), "bind mount of /etc "),
            (format!("{d}/link/not-there-yet"), "bind mount of /etc/not-there-yet"),
            (format!("{d}/link/../sudoers.d"), "without .."),
            (format!("{d}/data/../data"), "without .."),
        ] {
            let e = check(src.clone()).unwrap_err();
            assert!(e.contains(want), "{src}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_allows_plain_containers_and_named_volumes() {
        let p = Policy::default();
        let ok = body(
            json!({"Binds": ["data:/data:rw"], "NetworkMode": "bridge", "CapAdd": [], "SecurityOpt": ["no-new-privileges"]}),
        );
        assert_eq!(p.check_create(&ok), Ok(()));
    }

    #[test]
    fn allowances_are_field_by_field() {
        let p: Policy = serde_json::from_value(json!({"bind_prefixes": ["/srv/data"], "cap_add": ["NET_ADMIN"],
            "devices": ["/dev/i2c-*"], "images": ["127.0.0.1:5000/"]}))
        .unwrap();
        let allowed = json!({"Image": "127.0.0.1:5000/app", "HostConfig": {"Binds": ["/srv/data/a:/a"], "CapAdd": ["CAP_NET_ADMIN"],
            "Devices": [{"PathOnHost": "/dev/i2c-1"}]}});
        assert_eq!(p.check_create(&allowed), Ok(()));
        assert!(p.check_create(&json!({"Image": "evil/app"})).unwrap_err().contains("image evil/app"));
        assert!(p.check_create(&body(json!({"Binds": ["/srv/database:/a"]}))).is_err(), "prefix is by path component");
        assert!(p.check_create(&body(json!({"Binds": ["/srv/data/../../etc:/a"]}))).is_err());
        let root: Policy = serde_json::from_value(json!({"bind_prefixes": ["/"]})).unwrap();
        assert!(root.check_create(&body(json!({"Binds": ["/etc:/e"]}))).is_err(), "a / prefix does not cover /etc");
        assert_eq!(root.check_create(&body(json!({"Binds": ["/:/host"]}))), Ok(()), "listed exactly");
    }

    /// A container as the engine's inspect reports it, made with `host` and `mounts`.
    fn inspected(host: Value, mounts: Value) -> Value {
        json!({"Name": "/c1", "HostConfig": host, "Mounts": mounts})
    }

    fn sim_with_volume(name: &str, driver: &str, opts: Value) -> crate::engine::sim::Sim {
        let sim = crate::engine::sim::Sim::new();
        sim.create_object(Object::Volume, &json!({"Name": name, "Driver": driver, "DriverOpts": opts})).unwrap();
        sim
    }

    #[test]
    fn exec_is_checked_against_what_the_container_reaches() {
        let sim = sim_with_volume("etc", "local", json!({"type": "none", "o": "bind", "device": "/etc"}));
        let p = Policy::default();
        let bind = |src: &str| json!([{"Type": "bind", "Source": src, "Destination": "/x"}]);
        for (host, mounts, want) in [
            (json!({"Privileged": true}), json!([]), "privileged"),
            (json!({"CapAdd": ["SYS_ADMIN"]}), json!([]), "cap_add SYS_ADMIN"),
            (json!({"NetworkMode": "host"}), json!([]), "network mode host"),
            (json!({"PidMode": "host"}), json!([]), "pid mode host"),
            (json!({"IpcMode": "host"}), json!([]), "ipc mode host"),
            (json!({"UTSMode": "host"}), json!([]), "uts mode host"),
            (json!({"UsernsMode": "host"}), json!([]), "userns mode host"),
            (
                json!({"Devices": [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]}),
                json!([]),
                "device /dev/mem",
            ),
            (json!({"SecurityOpt": ["apparmor=unconfined"]}), json!([]), "security_opt"),
            // Mounts as resolved by the engine, whether they came from Binds or Mounts.
            (json!({"Binds": ["/:/host:ro"]}), bind("/"), "bind mount of / "),
            (json!({}), bind("/var/run/docker.sock"), "run/docker.sock is not allowed"),
            (json!({}), json!([{"Type": "volume", "Name": "etc", "Destination": "/x"}]), "volume etc binds /etc"),
        ] {
            let e = p.admit_exec(&sim, &inspected(host.clone(), mounts)).unwrap_err().to_string();
            assert!(
                e.contains("container c1 reaches the host") && e.contains(want) && e.contains("allow with"),
                "{host}: {e}"
            );
        }
        let plain = inspected(
            json!({"NetworkMode": "bridge", "CgroupnsMode": "host", "IpcMode": "private", "Binds": ["data:/data"]}),
            json!([{"Type": "volume", "Name": "data", "Destination": "/data"}, {"Type": "tmpfs", "Destination": "/t"}]),
        );
        assert!(p.admit_exec(&sim, &plain).is_ok(), "the engine's defaults and plain volumes are no reach");
        let netns: Policy = serde_json::from_value(json!({"host_namespaces": true})).unwrap();
        assert!(netns.admit_exec(&sim, &inspected(json!({"NetworkMode": "host"}), json!([]))).is_ok());
        let pid = json!({"PidMode": "host", "SecurityOpt": ["label=disable"]});
        assert!(netns.admit_exec(&sim, &inspected(pid, json!([]))).is_ok(), "the engine's own label=disable");
        let asked = json!({"SecurityOpt": ["label=disable"]});
        assert!(netns.admit_exec(&sim, &inspected(asked, json!([]))).is_err(), "asked for without a host namespace");
        let any: Policy = serde_json::from_value(json!({"exec": "any"})).unwrap();
        assert!(any.admit_exec(&sim, &inspected(json!({"Privileged": true}), bind("/"))).is_ok());
    }

    #[test]
    fn named_volumes_are_what_their_options_make_them() {
        let p = Policy::default();
        let etc = json!({"type": "none", "o": "bind", "device": "/etc"});
        assert!(p
            .check_volume("v", &json!("local"), &etc)
            .unwrap_err()
            .contains("volume v binds /etc: bind mount of /etc"));
        let rbind = json!({"o": "rbind,ro", "device": "/"});
        assert!(p.check_volume("v", &json!("local"), &rbind).is_err());
        assert!(p.check_volume("v", &json!("local"), &json!({"o": "bind", "device": "etc"})).is_err(), "relative");
        assert!(p
            .check_volume("v", &json!("local"), &json!({"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}))
            .is_ok());
        let disk = json!({"type": "ext4", "device": "/dev/sda1"});
        let e = p.check_volume("v", &json!("local"), &disk).unwrap_err();
        assert!(e.contains("mounts the host's /dev/sda1") && e.contains("\"devices\""), "{e}");
        let disks: Policy = serde_json::from_value(json!({"devices": ["/dev/sda*"]})).unwrap();
        assert!(disks.check_volume("v", &json!("local"), &disk).is_ok());
        let nfs = json!({"type": "nfs", "o": "addr=10.0.0.2,rw", "device": ":/export"});
        assert!(p.check_volume("v", &json!("local"), &nfs).is_ok(), "a remote share is not the host");
        assert!(p.check_volume("v", &json!(null), &json!(null)).is_ok(), "a plain volume");
        let e = p.check_volume("v", &json!("rexray"), &json!(null)).unwrap_err();
        assert!(e.contains("driver rexray") && e.contains("volume_drivers"), "{e}");
        let listed: Policy =
            serde_json::from_value(json!({"volume_drivers": ["rexray"], "bind_prefixes": ["/etc"]})).unwrap();
        assert!(listed.check_volume("v", &json!("rexray"), &json!(null)).is_ok());
        assert!(listed.check_volume("v", &json!("local"), &etc).is_ok(), "listed exactly");
    }

    #[test]
    fn a_create_looks_at_the_named_volumes_it_mounts() {
        let sim = sim_with_volume("etc", "local", json!({"type": "none", "o": "bind", "device": "/etc"}));
        let p = Policy::default();
        let by_bind = json!({"Image": "i", "HostConfig": {"Binds": ["etc:/x:ro"]}});
        let by_mount =
            json!({"Image": "i", "HostConfig": {"Mounts": [{"Type": "volume", "Source": "etc", "Target": "/x"}]}});
        for body in [by_bind, by_mount] {
            let e = p.admit_create(&sim, &body).unwrap_err().to_string();
            assert!(e.contains("volume etc binds /etc"), "{body}: {e}");
        }
        let fresh = json!({"Image": "i", "HostConfig": {"Binds": ["not-there-yet:/x"]}});
        assert!(p.admit_create(&sim, &fresh).is_ok(), "a volume that does not exist is created plain");
    }

    #[test]
    fn volumes_networks_and_compose_dirs() {
        let p = Policy::default();
        let bind = |dev: &str| json!({"type": "none", "o": "bind", "device": dev});
        assert!(p.check_volume("v", &json!("local"), &bind("/etc")).unwrap_err().contains("bind mount of /etc"));
        assert!(p.check_volume("v", &json!("local"), &bind("/")).unwrap_err().contains("bind mount of /"));
        assert!(p.check_volume("v", &json!("sshfs"), &json!({})).unwrap_err().contains("volume_drivers"));
        assert_eq!(p.check_volume("v", &json!("local"), &json!({"type": "tmpfs", "device": "tmpfs"})), Ok(()));
        assert_eq!(p.check_network(&json!({"Name": "n", "Driver": "bridge", "Options": {}})), Ok(()));
        assert!(p.check_network(&json!({"Name": "n", "Driver": "macvlan"})).unwrap_err().contains("host_namespaces"));
        assert!(p.check_compose_dir("/tmp").unwrap_err().contains("compose_dirs"));
        let tmp = std::env::temp_dir().canonicalize().unwrap();
        let allowed = Policy { compose_dirs: vec![tmp.display().to_string()], ..Policy::default() };
        assert_eq!(allowed.check_compose_dir(&tmp.display().to_string()), Ok(tmp.clone()));
        assert!(allowed.check_compose_dir(&format!("{}/../etc", tmp.display())).unwrap_err().contains(".."));
        assert!(allowed.check_compose_dir("/etc").is_err());
    }

    #[test]
    fn kinds_follow_read_only_exec_and_compose() {
        let p = Policy::default();
        assert!(p.serves(Kind::Mutate) && p.serves(Kind::Exec) && p.serves(Kind::Compose));
        let no_compose = Policy { compose: Some(false), ..Policy::default() };
        assert!(!no_compose.serves(Kind::Compose));
        let ro = Policy { read_only: true, ..Policy::default() };
        assert!(
            ro.serves(Kind::Read) && !ro.serves(Kind::Mutate) && !ro.serves(Kind::Exec) && !ro.serves(Kind::Compose)
        );
        let no_exec = Policy { exec: ExecRule::Deny, ..Policy::default() };
        assert!(!no_exec.serves(Kind::Exec));
        assert!(Policy { exec: ExecRule::Any, ..Policy::default() }.serves(Kind::Exec));
        assert!(serde_json::from_str::<Policy>(r#"{"priviledged": true}"#).is_err(), "typos are refused");
    }
}
