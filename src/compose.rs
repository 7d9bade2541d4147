//! `compose_up` / `compose_down` through the host's compose CLI: the v2 plugin
//! (`docker compose`) when present, else `docker-compose` (v1). Inline YAML goes
//! to a private temp dir that `compose_down` removes.

use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::Error;

const UP_TIMEOUT: Duration = Duration::from_secs(600);
const DOWN_TIMEOUT: Duration = Duration::from_secs(300);
/// Temp dirs for inline YAML are named with this prefix; `compose_down` only
/// deletes directories that carry it.
const TEMP_PREFIX: &str = "dcd-compose-";

/// `ComposeProvisionSpec` (spec §7.5).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    #[serde(default)]
    pub project_dir: Option<String>,
    #[serde(default)]
    pub compose_file: Option<String>,
    #[serde(default)]
    pub compose_yaml: Option<String>,
    #[serde(default)]
    pub services: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub detach: bool,
    #[serde(default)]
    pub pull: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub remove_orphans: bool,
}

fn yes() -> bool {
    true
}

impl ComposeSpec {
    pub fn check(&self) -> Result<(), Error> {
        if self.compose_yaml.is_none() && self.project_dir.is_none() {
            return Err(Error::Params("compose_up requires project_dir or compose_yaml".into()));
        }
        Ok(())
    }
}

pub fn spec_schema() -> Value {
    let opt_str = json!({"type": ["string", "null"], "default": null});
    let flag = |d: bool| json!({"type": "boolean", "default": d});
    json!({"type": "object",
      "description": "Fields matching ComposeProvisionSpec; compose_yaml or project_dir is required.",
      "properties": {
        "project_dir": opt_str, "compose_file": opt_str,
        "compose_yaml": {"type": ["string", "null"], "default": null, "description": "Inline compose file."},
        "services": {"type": ["array", "null"], "items": {"type": "string"}, "default": null},
        "detach": flag(true), "pull": flag(false), "build": flag(false), "remove_orphans": flag(false)},
      "required": []})
}

pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub project_dir: String,
}

/// The compose CLI found on this host, looked up on each call so that
/// installing it later needs no restart.
pub struct Compose {
    simulate: bool,
}

impl Compose {
    pub fn new(simulate: bool) -> Self {
        Compose { simulate }
    }

    pub fn up(&self, spec: &ComposeSpec) -> Result<Output, Error> {
        spec.check()?;
        let dir = match (&spec.compose_yaml, &spec.project_dir) {
            (Some(yaml), _) => write_temp_project(yaml)?,
            (None, dir) => PathBuf::from(dir.as_deref().unwrap_or_default()),
        };
        let mut args: Vec<String> = Vec::new();
        if spec.compose_yaml.is_none() {
            if let Some(f) = &spec.compose_file {
                args.extend(["-f".into(), f.clone()]);
            }
        }
        args.push("up".into());
        if spec.detach {
            args.push("-d".into());
        }
        if spec.pull {
            // Compose v2 wants a value; v1 had no --pull on `up` at all.
            args.extend(["--pull".into(), "always".into()]);
        }
        if spec.build {
            args.push("--build".into());
        }
        if spec.remove_orphans {
            args.push("--remove-orphans".into());
        }
        if let Some(services) = &spec.services {
            if let Some(bad) = services.iter().find(|s| s.starts_with('-')) {
                return Err(Error::Params(format!("services: {bad:?} is not a service name")));
            }
            args.extend(services.iter().cloned());
        }
        let (stdout, stderr) = self.run(&dir, &args, UP_TIMEOUT)?;
        let project_dir = dir.canonicalize().unwrap_or(dir).to_string_lossy().into_owned();
        Ok(Output { stdout, stderr, project_dir })
    }

    pub fn down(&self, project_dir: &str, file: Option<&str>, volumes: bool) -> Result<Output, Error> {
        let dir = PathBuf::from(project_dir);
        if self.simulate {
            return Ok(Output { stdout: String::new(), stderr: String::new(), project_dir: project_dir.into() });
        }
        let mut args: Vec<String> = Vec::new();
        if let Some(f) = file {
            args.extend(["-f".into(), f.into()]);
        }
        args.push("down".into());
        if volumes {
            args.push("-v".into());
        }
        let (stdout, stderr) = self.run(&dir, &args, DOWN_TIMEOUT)?;
        if is_our_temp_dir(&dir) {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                log::warn!("compose_down: could not remove {}: {e}", dir.display());
            }
        }
        Ok(Output { stdout, stderr, project_dir: project_dir.into() })
    }

    fn run(&self, dir: &Path, args: &[String], limit: Duration) -> Result<(String, String), Error> {
        if !dir.is_dir() {
            return Err(Error::Params(format!("project_dir {} is not a directory", dir.display())));
        }
        let mut cmd = cli()?;
        cmd.args(args).current_dir(dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::Compose(format!("cannot run compose: {e}")))?;
        // Drain both pipes on their own threads so a chatty CLI cannot block on a full pipe.
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if start.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Compose(format!("timed out after {}s", limit.as_secs())));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(Error::Compose(e.to_string())),
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Compose(if stderr.trim().is_empty() { status.to_string() } else { stderr }));
        }
        Ok((stdout, stderr))
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// `docker compose` (v2 plugin) if it answers, else `docker-compose` (v1).
fn cli() -> Result<Command, Error> {
    let works = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if works(Command::new("docker").args(["compose", "version"])) {
        let mut c = Command::new("docker");
        c.arg("compose");
        return Ok(c);
    }
    if works(Command::new("docker-compose").arg("version")) {
        return Ok(Command::new("docker-compose"));
    }
    Err(Error::Compose(
        "no compose CLI on this host: install the docker compose plugin or docker-compose \
         (in the container image, mount a static compose binary at /usr/local/bin/docker-compose)"
            .into(),
    ))
}

fn write_temp_project(yaml: &str) -> Result<PathBuf, Error> {
    let io = |e: std::io::Error| Error::Compose(format!("cannot write compose project: {e}"));
    let dir = std::env::temp_dir().join(format!("{TEMP_PREFIX}{}", crate::ids::random_hex(12)));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io)?;
    std::fs::write(dir.join("compose.yaml"), yaml).map_err(io)?;
    Ok(dir)
}

fn is_our_temp_dir(dir: &Path) -> bool {
    dir.parent() == Some(std::env::temp_dir().as_path())
        && dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(TEMP_PREFIX))
}
