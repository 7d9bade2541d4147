//! Up, down and ps against the engine. `check` checks the whole project with
//! the policy before anything is created; `Checked::up` then creates networks
//! and volumes, then the services in `depends_on` order, level by level (the
//! services of a level side by side), waiting (bounded) for health or
//! completion where the file asks for it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::file::{self, Condition, Context, Origin, Project};
use super::plan::{self, Where, HASH, NUMBER, ONEOFF, PROJECT, SERVICE, WORKING_DIR};
use super::ComposeSpec;
use crate::engine::{Engine, EngineError, Object, Watch};
use crate::error::Error;
use crate::labels::is_managed;
use crate::policy::Policy;

type Result<T> = std::result::Result<T, Error>;

/// The files compose looks for in a project directory, in its order.
const DEFAULT_FILES: &[&str] = &["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"];
/// Where an inline project "lives", for compose's labels and `compose_down(project_dir=...)`.
const INLINE_DIR: &str = "/dcd/compose";
/// How long a container gets to stop before it is killed.
const STOP_TIMEOUT_S: i64 = 10;
/// How long `detach: false` waits for the services to exit.
const ATTACHED_LIMIT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(200);
/// A healthcheck's interval when it names none (the Engine API's default).
const HEALTH_INTERVAL: Duration = Duration::from_secs(30);

struct Loaded {
    project: Project,
    working_dir: String,
    config_files: String,
    dir: Option<std::path::PathBuf>,
}

fn load(policy: &Policy, spec: &ComposeSpec) -> Result<Loaded> {
    let compose = Error::Compose;
    if let Some(yaml) = &spec.compose_yaml {
        let doc = file::parse_yaml(yaml, &spec.environment, Origin::Inline).map_err(compose)?;
        let default_name = format!("dcd-{}", &plan::fnv_hex(yaml)[..12]);
        let cx = Context {
            profiles: &spec.profiles,
            project: spec.project.as_deref(),
            ..Context::inline(&spec.environment, &default_name)
        };
        let project = file::project(doc, &cx).map_err(compose)?;
        let working_dir = format!("{INLINE_DIR}/{}", project.name);
        return Ok(Loaded { project, working_dir, config_files: "compose.yaml".into(), dir: None });
    }
    let Some(dir) = &spec.project_dir else {
        return Err(Error::Params("compose_up requires project_dir or compose_yaml".into()));
    };
    let real = policy.check_compose_dir(dir).map_err(Error::Policy)?;
    let rel = match &spec.compose_file {
        Some(f) => f.clone(),
        None => DEFAULT_FILES
            .iter()
            .find(|f| real.join(f).is_file())
            .ok_or_else(|| Error::Compose(format!("no compose.yaml (or .yml, docker-compose.*) in {dir}")))?
            .to_string(),
    };
    let path = file::inside(&real, &rel).map_err(|e| Error::Compose(format!("compose_file {rel:?}: {e}")))?;
    let text = file::read_bounded(&path)
        .map_err(|e| Error::Compose(format!("compose_file {rel:?}: {}", file::io_reason(&e))))?;
    // The caller's variables win over the .env beside the file, as the shell's do for compose.
    let mut variables = HashMap::new();
    match file::read_bounded(&real.join(".env")) {
        Ok(env) => variables.extend(file::dotenv(&env).map_err(|e| Error::Compose(format!(".env: {e}")))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Compose(format!(".env: {}", file::io_reason(&e)))),
    }
    variables.extend(spec.environment.clone());
    let doc = file::parse_yaml(&text, &variables, Origin::Host).map_err(compose)?;
    let default_name = file::project_from_dir(&real.to_string_lossy());
    let cx = Context {
        origin: Origin::Host,
        dir: Some(&real),
        variables: &variables,
        profiles: &spec.profiles,
        project: spec.project.as_deref(),
        default_name: &default_name,
    };
    let project = file::project(doc, &cx).map_err(compose)?;
    let working_dir = real.to_string_lossy().into_owned();
    Ok(Loaded { project, working_dir, config_files: path.to_string_lossy().into_owned(), dir: Some(real) })
}

/// What a service's containers are, by replica number.
fn existing(engine: &dyn Engine, project: &str) -> Result<Vec<Value>> {
    Ok(engine
        .list_containers(true)?
        .into_iter()
        .filter(|c| c["Labels"][PROJECT] == project && c["Labels"][ONEOFF] != "True")
        .collect())
}

fn name_of(c: &Value) -> String {
    c["Names"][0].as_str().unwrap_or_default().trim_start_matches('/').to_string()
}

/// A project read, planned and passed by the policy, with nothing made yet:
/// `check` fails at once on the caller's thread, `Checked::up` does the long
/// part (on a job's).
pub struct Checked {
    project: Project,
    plan: plan::Plan,
    order: Vec<String>,
    warnings: Vec<String>,
    working_dir: String,
    pull: bool,
    detach: bool,
    remove_orphans: bool,
    wait: Duration,
}

/// Read the project and check all of it with the policy (see the module doc).
pub fn check(engine: &dyn Engine, policy: &Policy, spec: &ComposeSpec) -> Result<Checked> {
    let loaded = load(policy, spec)?;
    let p = &loaded.project;
    let at = Where { dir: loaded.dir.as_deref(), working_dir: &loaded.working_dir, config_files: &loaded.config_files };
    let plan = plan::plan(p, &at).map_err(Error::Compose)?;
    let wanted: Vec<String> = match &spec.services {
        Some(s) if !s.is_empty() => {
            if let Some(bad) = s.iter().find(|s| !p.services.contains_key(*s)) {
                return Err(Error::Params(format!("services: {bad:?} is not a service of project {}", p.name)));
            }
            s.clone()
        }
        _ => p.services.keys().cloned().collect(),
    };
    let order = file::order(p, &wanted).map_err(Error::Compose)?;
    let mut warnings = p.warnings.clone();
    if spec.build {
        warnings.push("build: there is no build here; images are used as they are".into());
    }

    // The whole project passes the policy before anything is made.
    refuse_foreign(engine, policy, &p.name)?;
    let nets = engine.list_objects(Object::Network)?;
    let vols = engine.list_objects(Object::Volume)?;
    let find = |list: &[Value], name: &str| list.iter().find(|o| o["Name"] == name).cloned();
    let refuse = |what: String| move |e: String| Error::Policy(format!("{what}: {e}"));
    for n in &plan.networks {
        match (&n.body, find(&nets, &n.name)) {
            (Some(b), _) => policy.check_network(b).map_err(refuse(format!("network {}", n.key)))?,
            (None, None) => return Err(Error::Compose(format!("external network {} does not exist", n.name))),
            (None, Some(_)) => {}
        }
    }
    for v in &plan.volumes {
        // An existing volume is checked for what it is, not for what the file says.
        let (driver, opts) = match (find(&vols, &v.name), &v.body) {
            (Some(e), _) => (e["Driver"].clone(), e["Options"].clone()),
            (None, Some(b)) => (b["Driver"].clone(), b["DriverOpts"].clone()),
            (None, None) => return Err(Error::Compose(format!("external volume {} does not exist", v.name))),
        };
        policy.check_volume(&v.name, &driver, &opts).map_err(refuse(format!("volume {}", v.key)))?;
    }
    for s in &order {
        // As provision_container: the body, then the existing named volumes it mounts.
        policy.admit_create(engine, &plan.services[s].body).map_err(|e| match e {
            Error::Policy(m) => Error::Policy(format!("service {s}: {m}")),
            other => other,
        })?;
    }
    Ok(Checked {
        project: loaded.project,
        plan,
        order,
        warnings,
        working_dir: loaded.working_dir,
        pull: spec.pull,
        detach: spec.detach,
        remove_orphans: spec.remove_orphans,
        wait: Duration::from_secs(spec.wait_timeout_s),
    })
}

/// Under `owned_only`, a project with a container dcd did not make (one the
/// compose CLI brought up) is not ours to change: refused whole, before
/// anything is touched, rather than half converged.
fn refuse_foreign(engine: &dyn Engine, policy: &Policy, project: &str) -> Result<()> {
    if !policy.owned_only {
        return Ok(());
    }
    let foreign: Vec<String> = engine
        .list_containers(true)?
        .iter()
        .filter(|c| c["Labels"][PROJECT] == project && !is_managed(&c["Labels"]))
        .map(name_of)
        .collect();
    match foreign.is_empty() {
        true => Ok(()),
        false => Err(Error::Policy(format!(
            "project {project} has containers not managed by dcd (owned_only): {}",
            foreign.join(", ")
        ))),
    }
}

/// At most this many services of one dependency level are created or started at once.
const SIDE_BY_SIDE: usize = 8;

/// One container of a service, as `up` left it.
struct Made {
    id: String,
    name: String,
    action: &'static str,
}

impl Checked {
    pub fn project(&self) -> &str {
        &self.project.name
    }

    /// Whether `up` pulls first (then it is worth a job's progress events).
    pub fn pulls(&self) -> bool {
        self.pull
    }

    /// Bring the project up. `watch` hears the phases (`pulling`, `creating`,
    /// `starting`, `waiting-healthy`) and the pulls' progress, and may stop
    /// the work: a pull at once, the rest between dependency levels, never
    /// between a container's create and its start. `observe` is told of
    /// every container created, started or removed.
    pub fn up(self, engine: &dyn Engine, watch: &dyn Watch, observe: &(dyn Fn(&str) + Sync)) -> Result<Value> {
        let p = &self.project;
        let plan = &self.plan;
        let mut out = Outcome::default();
        if self.pull {
            self.pull_images(engine, watch)?;
        }
        watch.phase("creating");
        out.stop_if_cancelled(watch, "before anything was created")?;
        let nets = engine.list_objects(Object::Network)?;
        let vols = engine.list_objects(Object::Volume)?;
        for n in &plan.networks {
            let found = nets.iter().find(|o| o["Name"] == n.name.as_str());
            match (&n.body, found) {
                (Some(_), Some(e)) if e["Labels"][PROJECT] != p.name.as_str() => {
                    return Err(Error::Compose(format!(
                        "network {} exists but is not part of project {} (declare it external: true)",
                        n.name, p.name
                    )))
                }
                (Some(b), None) => {
                    engine.create_object(Object::Network, b)?;
                    out.objects.push(json!({"network": n.name, "action": "created"}));
                }
                _ => {}
            }
        }
        for v in &plan.volumes {
            if let (Some(b), None) = (&v.body, vols.iter().find(|o| o["Name"] == v.name.as_str())) {
                engine.create_object(Object::Volume, b)?;
                out.objects.push(json!({"volume": v.name, "action": "created"}));
            }
        }

        let current = existing(engine, &p.name)?;
        let images = image_ids(engine, plan, &self.order);
        let deadline = Instant::now() + self.wait;
        let mut ids: HashMap<String, Vec<String>> = HashMap::new();
        for level in self.levels() {
            let waits: Vec<(&String, &String, Condition)> = level
                .iter()
                .flat_map(|s| p.services[s].depends_on.iter().map(move |(dep, d)| (s, dep, d.condition)))
                .filter(|(_, dep, c)| *c != Condition::ServiceStarted && ids.contains_key(*dep))
                .collect();
            if !waits.is_empty() {
                watch.phase("waiting-healthy");
            }
            // A level waits for all its dependencies before any of it is made: simpler than
            // a thread per service waiting for its own, and it costs only the slowest wait.
            for (s, dep, cond) in waits {
                let started = Instant::now();
                wait_for(engine, dep, &ids[dep], cond, deadline, watch).map_err(|e| out.left(e))?;
                out.waited.push(json!({"service": s, "waited_for": dep, "condition": cond.as_str(),
                                       "seconds": started.elapsed().as_secs_f64()}));
            }
            out.stop_if_cancelled(watch, &format!("before service {}", level.join(", ")))?;
            watch.phase("creating");
            let made = side_by_side(&level, |s| {
                let sp = &plan.services[s];
                let mine: Vec<&Value> = current.iter().filter(|c| c["Labels"][SERVICE] == s).collect();
                let image = sp.body["Image"].as_str().and_then(|i| images.get(i)).and_then(Option::as_deref);
                let mut made = Vec::new();
                for n in 1..=sp.replicas {
                    let old = mine.iter().find(|c| c["Labels"][NUMBER] == n.to_string().as_str());
                    let (id, action) = converge(engine, &p.name, sp, n, old.copied(), image, &ids, observe)?;
                    made.push(Made { id, name: sp.container_name(&p.name, n), action });
                }
                for extra in mine.iter().filter(|c| {
                    c["Labels"][NUMBER].as_str().and_then(|n| n.parse::<u32>().ok()).is_none_or(|n| n > sp.replicas)
                }) {
                    remove(engine, extra, observe)?;
                }
                Ok(made)
            });
            let made = out.record(&level, made)?;
            watch.phase("starting");
            let started = side_by_side(&level, |s| {
                for m in made.iter().filter(|(service, _)| service == s).flat_map(|(_, m)| m) {
                    if m.action != "unchanged" {
                        engine.start_container(&m.id)?;
                        observe(&m.id);
                    }
                }
                Ok(())
            });
            started.into_iter().collect::<Result<Vec<()>>>().map_err(|e| out.left(e))?;
            for (s, list) in made {
                ids.insert(s.clone(), list.iter().map(|m| m.id.clone()).collect());
                let containers: Vec<Value> = list
                    .iter()
                    .map(|m| json!({"id": &m.id[..12.min(m.id.len())], "name": m.name, "action": m.action}))
                    .collect();
                out.services.push((s, containers));
            }
        }
        if self.remove_orphans {
            for c in
                current.iter().filter(|c| !c["Labels"][SERVICE].as_str().is_some_and(|s| p.services.contains_key(s)))
            {
                out.lines.push(format!("Container {} Removed (orphan)", name_of(c)));
                remove(engine, c, observe)?;
            }
        }
        let exit_codes = if self.detach { None } else { Some(wait_exit(engine, &ids, watch)?) };
        let services: Vec<Value> = out
            .services
            .iter()
            .map(|(s, cs)| {
                let mut v = json!({"service": s, "action": service_action(cs), "containers": cs});
                for c in v["containers"].as_array_mut().into_iter().flatten() {
                    if let Ok(i) = engine.inspect_container(c["id"].as_str().unwrap_or_default()) {
                        c["state"] = i["State"]["Status"].clone();
                    }
                }
                if let Some(codes) = &exit_codes {
                    v["exit_codes"] = json!(codes.get(s));
                }
                v
            })
            .collect();
        let mut r = json!({
            "status": "success", "project": p.name, "project_dir": self.working_dir,
            "stdout": out.lines.join("\n"), "stderr": self.warnings.join("\n"), "warnings": self.warnings,
            "services": services, "created": out.objects, "waited": out.waited,
        });
        if let Some(codes) = exit_codes {
            r["exit_codes"] = json!(codes);
        }
        Ok(r)
    }

    /// Pull every image of the services being brought up, telling `watch`.
    fn pull_images(&self, engine: &dyn Engine, watch: &dyn Watch) -> Result<()> {
        watch.phase("pulling");
        let mut images: Vec<&str> =
            self.order.iter().filter_map(|s| self.plan.services[s].body["Image"].as_str()).collect();
        images.sort_unstable();
        images.dedup();
        for (n, image) in images.iter().enumerate() {
            if let Err(e) = engine.pull_watched(image, None, watch) {
                return Err(match watch.cancelled() {
                    true => Error::Cancelled(format!(
                        "the pull of {image} was stopped ({n} of {} images pulled); nothing was created",
                        images.len()
                    )),
                    false => e.into(),
                });
            }
            if watch.cancelled() {
                return Err(Error::Cancelled(format!(
                    "stopped after pulling {} of {} images; nothing was created",
                    n + 1,
                    images.len()
                )));
            }
        }
        Ok(())
    }

    /// The services in `depends_on` order, grouped into levels: a service's
    /// level is one past the deepest of what it depends on (or joins), so
    /// the services of a level can be made side by side.
    fn levels(&self) -> Vec<Vec<String>> {
        let mut depth: HashMap<&str, usize> = HashMap::new();
        let mut levels: Vec<Vec<String>> = Vec::new();
        for s in &self.order {
            let deps = self.project.services[s].depends_on.keys().map(String::as_str);
            let joins = self.plan.services[s].joins.iter().map(|(_, other)| other.as_str());
            let d = deps.chain(joins).filter_map(|dep| depth.get(dep)).map(|d| d + 1).max().unwrap_or(0);
            depth.insert(s, d);
            if levels.len() <= d {
                levels.resize(d + 1, Vec::new());
            }
            levels[d].push(s.clone());
        }
        levels
    }
}

/// The id each image of the services has now, to tell when a pull brought a
/// new one; `None` for an image not on the host.
fn image_ids(engine: &dyn Engine, plan: &plan::Plan, order: &[String]) -> HashMap<String, Option<String>> {
    let mut ids = HashMap::new();
    for image in order.iter().filter_map(|s| plan.services[s].body["Image"].as_str()) {
        if !ids.contains_key(image) {
            let id = engine.inspect_image(image).ok().and_then(|i| i["Id"].as_str().map(String::from));
            ids.insert(image.to_string(), id);
        }
    }
    ids
}

/// `f` for each service of a level, side by side (a few at a time); the
/// results in the level's order.
fn side_by_side<T: Send>(level: &[String], f: impl Fn(&str) -> Result<T> + Sync) -> Vec<Result<T>> {
    if level.len() == 1 {
        return vec![f(&level[0])];
    }
    let mut all = Vec::new();
    for chunk in level.chunks(SIDE_BY_SIDE) {
        std::thread::scope(|scope| {
            let running: Vec<_> = chunk.iter().map(|s| scope.spawn(|| f(s))).collect();
            for r in running {
                all.push(r.join().unwrap_or_else(|_| Err(Error::Compose("a service's create panicked".into()))));
            }
        });
    }
    all
}

#[derive(Default)]
struct Outcome {
    lines: Vec<String>,
    objects: Vec<Value>,
    waited: Vec<Value>,
    services: Vec<(String, Vec<Value>)>,
}

impl Outcome {
    /// What was done so far, for a stopped or failed `up` to say what it left.
    fn done(&self) -> String {
        let mut done: Vec<String> = self
            .objects
            .iter()
            .map(|o| match o["network"].as_str() {
                Some(n) => format!("network {n} created"),
                None => format!("volume {} created", o["volume"].as_str().unwrap_or_default()),
            })
            .collect();
        done.extend(self.lines.iter().cloned());
        match done.is_empty() {
            true => "nothing was created".into(),
            false => format!("left as it was: {}", done.join("; ")),
        }
    }

    /// `Err(Cancelled)`, saying what was left, if the watcher asked to stop.
    fn stop_if_cancelled(&self, watch: &dyn Watch, when: &str) -> Result<()> {
        match watch.cancelled() {
            true => Err(Error::Cancelled(format!("stopped {when}; {}", self.done()))),
            false => Ok(()),
        }
    }

    /// A wait or start stopped by the watcher says what it left; other errors pass as they are.
    fn left(&self, e: Error) -> Error {
        match e {
            Error::Cancelled(m) => Error::Cancelled(format!("{m}; {}", self.done())),
            other => other,
        }
    }

    /// Note what a level's creates did; the first failure, once all have ended.
    fn record(&mut self, level: &[String], made: Vec<Result<Vec<Made>>>) -> Result<Vec<(String, Vec<Made>)>> {
        let mut ok = Vec::new();
        let mut failed = None;
        for (s, r) in level.iter().zip(made) {
            match r {
                Ok(list) => {
                    for m in &list {
                        self.lines.push(format!("Container {} {}", m.name, m.action));
                    }
                    ok.push((s.clone(), list));
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(ok), Err)
    }
}

fn service_action(containers: &[Value]) -> &'static str {
    for a in ["recreated", "created", "started"] {
        if containers.iter().any(|c| c["action"] == a) {
            return a;
        }
    }
    "unchanged"
}

/// One replica to where the plan wants it, but not started: left alone when
/// its hash and image match (`started` if it must be started), else made anew
/// (`created`, `recreated`); the old one goes only once the new one exists.
#[allow(clippy::too_many_arguments)]
fn converge(
    engine: &dyn Engine,
    project: &str,
    sp: &plan::ServicePlan,
    n: u32,
    old: Option<&Value>,
    image: Option<&str>,
    ids: &HashMap<String, Vec<String>>,
    observe: &(dyn Fn(&str) + Sync),
) -> Result<(String, &'static str)> {
    let name = sp.container_name(project, n);
    // Compose recreates a container whose image changed under its tag (a pull
    // brought a new one), though its configuration did not.
    let same_image = |o: &Value| match (o["ImageID"].as_str(), image) {
        (Some(had), Some(now)) => had == now,
        _ => true,
    };
    if let Some(old) = old.filter(|o| o["Labels"][HASH] == sp.hash.as_str() && same_image(o)) {
        let id = old["Id"].as_str().unwrap_or_default().to_string();
        return Ok((id, if old["State"] == "running" { "unchanged" } else { "started" }));
    }
    let mut body = sp.body_for(n);
    for (field, other) in &sp.joins {
        let target = ids.get(other).and_then(|v| v.first()).ok_or_else(|| {
            Error::Compose(format!("service {}: {field} names service {other}, which is not being started", sp.name))
        })?;
        body["HostConfig"][*field] = json!(format!("container:{target}"));
    }
    let old_id = old.and_then(|o| o["Id"].as_str()).map(String::from);
    if let Some(old_id) = &old_id {
        engine.stop_container(old_id, STOP_TIMEOUT_S)?;
        engine.rename_container(old_id, &format!("{}_{name}", &old_id[..12.min(old_id.len())]))?;
    }
    let id = match engine.create_container(Some(&name), &body) {
        Ok(id) => id,
        Err(e) => {
            // Put the old one back as it was.
            if let Some(old_id) = &old_id {
                let _ = engine.rename_container(old_id, &name);
                let _ = engine.start_container(old_id);
            }
            return Err(e.into());
        }
    };
    observe(&id);
    if let Some(old_id) = &old_id {
        engine.remove_container(old_id, true)?;
        observe(old_id);
    }
    for (net, aliases) in &sp.more_networks {
        engine.connect_network(net, &id, aliases)?;
    }
    Ok((id, if old_id.is_some() { "recreated" } else { "created" }))
}

fn remove(engine: &dyn Engine, c: &Value, observe: &dyn Fn(&str)) -> Result<()> {
    let id = c["Id"].as_str().unwrap_or_default();
    match engine.remove_container(id, true) {
        Ok(()) | Err(EngineError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    observe(id);
    Ok(())
}

/// Wait until every container of `service` meets `cond`, or the deadline, or
/// the watcher asks to stop.
fn wait_for(
    engine: &dyn Engine,
    service: &str,
    ids: &[String],
    cond: Condition,
    deadline: Instant,
    watch: &dyn Watch,
) -> Result<()> {
    if cond == Condition::ServiceStarted {
        return Ok(());
    }
    for id in ids {
        let mut check_at = None;
        loop {
            let i = engine.inspect_container(id)?;
            let state = &i["State"];
            match cond {
                Condition::ServiceHealthy => match state["Health"]["Status"].as_str() {
                    Some("healthy") => break,
                    Some("unhealthy") => return Err(Error::Compose(format!("service {service} is unhealthy"))),
                    None => return Err(Error::Compose(format!("service {service} has no healthcheck to wait for"))),
                    _ if state["Status"] == "exited" || state["Status"] == "dead" => {
                        return Err(Error::Compose(format!("service {service} exited before it was healthy")))
                    }
                    _ => {
                        // The engine may not run the check by itself (Podman without
                        // systemd): run it at the check's own interval while waiting.
                        let interval = i["Config"]["Healthcheck"]["Interval"]
                            .as_u64()
                            .filter(|n| *n > 0)
                            .map_or(HEALTH_INTERVAL, Duration::from_nanos);
                        let at = *check_at.get_or_insert_with(|| Instant::now() + interval);
                        if Instant::now() >= at {
                            if let Err(e) = engine.run_healthcheck(id) {
                                log::debug!("compose: healthcheck of {service}: {e}");
                            }
                            check_at = Some(Instant::now() + interval);
                        }
                    }
                },
                _ => {
                    if state["Status"] == "exited" || state["Status"] == "dead" {
                        match state["ExitCode"].as_i64() {
                            Some(0) => break,
                            code => {
                                return Err(Error::Compose(format!(
                                    "service {service} did not complete successfully: exit code {}",
                                    code.unwrap_or(-1)
                                )))
                            }
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Compose(format!(
                    "service {service} did not reach {} within wait_timeout_s",
                    cond.as_str()
                )));
            }
            if watch.cancelled() {
                return Err(Error::Cancelled(format!("stopped waiting for {service} to reach {}", cond.as_str())));
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// `detach: false`: wait until every container exits; exit codes by service.
fn wait_exit(
    engine: &dyn Engine,
    ids: &HashMap<String, Vec<String>>,
    watch: &dyn Watch,
) -> Result<BTreeMap<String, Vec<i64>>> {
    let deadline = Instant::now() + ATTACHED_LIMIT;
    let mut codes = BTreeMap::new();
    for (s, list) in ids {
        for id in list {
            loop {
                let i = engine.inspect_container(id)?;
                if matches!(i["State"]["Status"].as_str(), Some("exited" | "dead")) {
                    codes.entry(s.clone()).or_insert_with(Vec::new).push(i["State"]["ExitCode"].as_i64().unwrap_or(-1));
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error::Compose(format!("service {s} still runs after {}s", ATTACHED_LIMIT.as_secs())));
                }
                if watch.cancelled() {
                    return Err(Error::Cancelled("stopped waiting for the services to exit; they run on".into()));
                }
                std::thread::sleep(POLL);
            }
        }
    }
    Ok(codes)
}

/// The project a `project_dir` names: from the labels of its containers
/// (compose's or ours), else as compose derives it from the directory.
pub fn project_for_dir(engine: &dyn Engine, dir: &str) -> Result<String> {
    let dir = dir.trim_end_matches('/');
    let by_label = engine
        .list_containers(true)?
        .into_iter()
        .find(|c| c["Labels"][WORKING_DIR] == dir)
        .and_then(|c| c["Labels"][PROJECT].as_str().map(String::from));
    Ok(by_label.unwrap_or_else(|| file::project_from_dir(dir)))
}

/// Remove a project's containers, networks and (with `volumes`) volumes. A
/// project already gone is success.
pub fn down(
    engine: &dyn Engine,
    policy: &Policy,
    project: &str,
    volumes: bool,
    observe: &dyn Fn(&str),
) -> Result<Value> {
    if !file::valid_project(project) {
        return Err(Error::Params(format!("project {project:?} is not a compose project name")));
    }
    refuse_foreign(engine, policy, project)?;
    let mut lines = Vec::new();
    let all: Vec<Value> =
        engine.list_containers(true)?.into_iter().filter(|c| c["Labels"][PROJECT] == project).collect();
    // Stopped side by side: each may take the whole stop timeout.
    std::thread::scope(|scope| {
        for c in &all {
            if c["State"] == "running" {
                scope.spawn(|| engine.stop_container(c["Id"].as_str().unwrap_or_default(), STOP_TIMEOUT_S));
            }
        }
    });
    for c in &all {
        remove(engine, c, observe)?;
        lines.push(format!("Container {} Removed", name_of(c)));
    }
    let mut kinds = vec![(Object::Network, "Network")];
    if volumes {
        kinds.push((Object::Volume, "Volume"));
    }
    for (kind, what) in kinds {
        for o in engine.list_objects(kind)?.into_iter().filter(|o| o["Labels"][PROJECT] == project) {
            let name = o["Name"].as_str().unwrap_or_default();
            match engine.remove_object(kind, name, false) {
                Ok(()) | Err(EngineError::NotFound(_)) => lines.push(format!("{what} {name} Removed")),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(
        json!({"status": "success", "project": project, "stdout": lines.join("\n"), "stderr": "", "removed": lines.len()}),
    )
}

/// Per project: its services, containers by state, and its working dir.
type ProjectTally<'a> = (Vec<&'a str>, BTreeMap<&'a str, u32>, &'a Value);

/// One project's services and containers, or every project on the host.
pub fn ps(engine: &dyn Engine, project: Option<&str>) -> Result<Value> {
    let all: Vec<Value> =
        engine.list_containers(true)?.into_iter().filter(|c| c["Labels"][PROJECT].is_string()).collect();
    let Some(project) = project else {
        let mut projects: BTreeMap<&str, ProjectTally> = BTreeMap::new();
        for c in &all {
            let e = projects
                .entry(c["Labels"][PROJECT].as_str().unwrap_or_default())
                .or_insert_with(|| (Vec::new(), BTreeMap::new(), &c["Labels"][WORKING_DIR]));
            let svc = c["Labels"][SERVICE].as_str().unwrap_or_default();
            if !e.0.contains(&svc) {
                e.0.push(svc);
            }
            *e.1.entry(c["State"].as_str().unwrap_or("unknown")).or_default() += 1;
        }
        let list: Vec<Value> = projects
            .into_iter()
            .map(|(p, (svcs, states, dir))| {
                json!({"project": p, "services": svcs.len(), "containers": states.values().sum::<u32>(),
                       "states": states, "project_dir": dir})
            })
            .collect();
        return Ok(json!({"status": "success", "count": list.len(), "projects": list}));
    };
    let mut services: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for c in all.iter().filter(|c| c["Labels"][PROJECT] == project) {
        let id = c["Id"].as_str().unwrap_or_default();
        services.entry(c["Labels"][SERVICE].as_str().unwrap_or_default()).or_default().push(json!({
            "id": &id[..12.min(id.len())], "name": name_of(c), "state": c["State"], "status": c["Status"],
            "number": c["Labels"][NUMBER], "image": c["Image"]}));
    }
    let list: Vec<Value> = services.into_iter().map(|(s, cs)| json!({"service": s, "containers": cs})).collect();
    Ok(json!({"status": "success", "project": project, "count": list.len(), "services": list}))
}

/// A project's containers (id and name), limited to `services` when given, for logs.
pub fn containers(engine: &dyn Engine, project: &str, services: &[String]) -> Result<Vec<(String, String)>> {
    Ok(existing(engine, project)?
        .iter()
        .filter(|c| {
            services.is_empty() || c["Labels"][SERVICE].as_str().is_some_and(|s| services.iter().any(|w| w == s))
        })
        .map(|c| (c["Id"].as_str().unwrap_or_default().to_string(), name_of(c)))
        .collect())
}
