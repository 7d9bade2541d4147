//! Jobs, as callers see them: `get_job`, `list_jobs`, `cancel_job`. The jobs
//! themselves are started by the long functions (`Function::job`).

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{object_schema, Answer, Call, Driver, Function, Target};
use crate::error::{Error, Result};
use crate::jobs::{Reply, State, MAX_FINISHED, MAX_LIVE};
use crate::policy::Kind;

fn job_id_schema() -> Value {
    object_schema(json!({"job_id": {"type": "string", "description": "From a pending reply."}}), &["job_id"])
}

pub const GET_JOB: Function = Function::new::<GetJob>(
    "get_job",
    Kind::Read,
    Target::Host,
    "A job's state (running, success, error, cancelled), phase, progress, times, and its result or error.",
    job_id_schema,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct GetJob {
    job_id: String,
}

impl Call for GetJob {
    fn call(self, d: &Driver) -> Result<Value> {
        let (job, container) = d.jobs.get(&self.job_id, true).ok_or_else(|| no_job(&self.job_id))?;
        d.may_see(container.as_deref())?;
        Ok(json!({"status": "success", "job": job}))
    }
}

fn no_job(id: &str) -> Error {
    Error::Params(format!("no job {id} (finished jobs are kept until {MAX_FINISHED} newer ones have ended)"))
}

pub const LIST_JOBS: Function = Function::new::<ListJobs>(
    "list_jobs",
    Kind::Read,
    Target::Host,
    "Jobs running and recently ended, newest first, without their results (get_job has them).",
    || {
        object_schema(
            json!({"state": {"type": ["string", "null"], "default": null,
                             "enum": ["running", "success", "error", "cancelled", null],
                             "description": format!("At most {MAX_LIVE} run; the last {MAX_FINISHED} ended are kept.")}}),
            &[],
        )
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListJobs {
    #[serde(default)]
    state: Option<String>,
}

impl Call for ListJobs {
    fn call(self, d: &Driver) -> Result<Value> {
        let state = match self.state.as_deref() {
            None => None,
            Some(s) => Some(State::parse(s).ok_or_else(|| {
                Error::Params(format!("state {s:?} is not one of running, success, error, cancelled"))
            })?),
        };
        let jobs = d.jobs.list(state);
        Ok(json!({"status": "success", "count": jobs.len(), "jobs": jobs}))
    }
}

pub const CANCEL_JOB: Function = Function::replying::<CancelJob>(
    "cancel_job",
    Kind::Mutate,
    Target::Host,
    "Stop a running job: a pull's engine stream is closed, an exec's process killed, other work stops before \
     its next step. Answers with the job once it has ended, saying what was left done.",
    job_id_schema,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CancelJob {
    job_id: String,
}

impl Answer for CancelJob {
    fn answer(self, d: &Driver, reply: Reply) {
        let seen = d.jobs.get(&self.job_id, false).ok_or_else(|| no_job(&self.job_id));
        match seen.and_then(|(_, container)| d.may_see(container.as_deref())) {
            Ok(()) => d.jobs.cancel(&self.job_id, reply),
            Err(e) => reply(Err(e)),
        }
    }
}
