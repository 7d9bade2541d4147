//! Images: pull, list, remove, prune.

use serde::Deserialize;
use serde_json::{json, Value};

use super::base::{no_params, object_schema, Call, Driver, Function, Long, Start, Target};
use crate::engine::{Credentials, Engine, Watch};
use crate::error::{Error, Result};
use crate::ids::{check_image, short_id};
use crate::jobs::{Progress, Work};
use crate::policy::Kind;

pub const PULL_IMAGE: Function =
    Function::job::<PullImage>("pull_image", Kind::Mutate, Target::Host, "Pull an image from a registry.", || {
        json!({"type": "object", "properties": {
            "image": {"type": "string", "description": "e.g. alpine:3.20."},
            "auth": {"type": ["object", "null"], "default": null,
                     "description": "Instead of the host's docker config.json. Never logged.",
                     "properties": {"username": {"type": "string"}, "password": {"type": "string"},
                                    "serveraddress": {"type": "string"}},
                     "required": ["username", "password"], "additionalProperties": false}},
          "required": ["image"]})
    });

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PullImage {
    image: String,
    /// Checked by `Credentials::from_param`, whose messages never quote a
    /// value (serde's would).
    #[serde(default)]
    auth: Secret,
}

/// A param that must never be shown, not even in a debug print.
#[derive(Deserialize, Default)]
#[serde(transparent)]
struct Secret(Value);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_null() { "None" } else { "<secret>" })
    }
}

/// A job; a second call for the same reference joins the running one.
impl Long for PullImage {
    fn start(self, d: &Driver) -> Result<Start> {
        let creds: Option<Credentials> = Credentials::from_param(&self.auth.0).map_err(Error::Params)?;
        check_image("image", &self.image).map_err(Error::Params)?;
        let engine = d.engine.clone();
        let work = Work::new(self.image.clone(), "pulling", move |p| {
            let mut progress = pull(engine.as_ref(), &self.image, creds.as_ref(), p)?;
            let keep = progress.len().saturating_sub(5);
            progress.drain(..keep);
            Ok(json!({"status": "success", "image": self.image, "progress": progress}))
        });
        Ok(Start::Job(work.joinable()))
    }
}

/// Pull `image` in job `p`, reporting its progress; a cancelled pull says
/// how far it got.
pub(super) fn pull(engine: &dyn Engine, image: &str, creds: Option<&Credentials>, p: &Progress) -> Result<Vec<String>> {
    engine
        .pull_watched(image, creds, p)
        .map_err(|e| if p.cancelled() { Error::Cancelled(p.pull_left()) } else { e.into() })
}

pub const LIST_IMAGES: Function = Function::new::<ListImages>(
    "list_images",
    Kind::Read,
    Target::Host,
    "List images available on this host.",
    no_params,
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ListImages {}

impl Call for ListImages {
    fn call(self, d: &Driver) -> Result<Value> {
        let images: Vec<Value> = d
            .engine
            .list_images()?
            .iter()
            .map(|i| {
                let id = i["Id"].as_str().unwrap_or_default();
                let digest = id.strip_prefix("sha256:").unwrap_or(id);
                let created = i["Created"].as_i64().map(crate::time::format_rfc3339);
                json!({"id": format!("sha256:{}", short_id(digest)),
                       "tags": match &i["RepoTags"] { Value::Array(t) => Value::Array(t.clone()), _ => json!([]) },
                       "size": i["Size"], "created": created})
            })
            .collect();
        Ok(json!({"status": "success", "count": images.len(), "images": images}))
    }
}

pub const REMOVE_IMAGE: Function =
    Function::new::<RemoveImage>("remove_image", Kind::Mutate, Target::Host, "Remove an image.", || {
        object_schema(
            json!({"image": {"type": "string", "description": "Reference or id."},
                   "force": {"type": "boolean", "default": false}}),
            &["image"],
        )
    });

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RemoveImage {
    image: String,
    #[serde(default)]
    force: bool,
}

impl Call for RemoveImage {
    fn call(self, d: &Driver) -> Result<Value> {
        check_image("image", &self.image).map_err(Error::Params)?;
        let deleted = d.engine.remove_image(&self.image, self.force)?;
        Ok(json!({"status": "success", "image": self.image, "deleted": deleted}))
    }
}

pub const PRUNE_IMAGES: Function = Function::new::<PruneImages>(
    "prune_images",
    Kind::Mutate,
    Target::Host,
    "Remove dangling images, or with all=true every unused image, optionally only those older than `until`.",
    || {
        object_schema(
            json!({"all": {"type": "boolean", "default": false, "description": "Also unused tagged ones."},
                   "until": {"type": ["string", "null"], "default": null,
                             "description": "Older than this, e.g. 24h, or an RFC3339 time."}}),
            &[],
        )
    },
);

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PruneImages {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    until: Option<String>,
}

impl Call for PruneImages {
    fn call(self, d: &Driver) -> Result<Value> {
        let mut filters = json!({"dangling": [if self.all { "false" } else { "true" }]});
        if let Some(u) = &self.until {
            if u.is_empty() || !u.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'+')) {
                return Err(Error::Params(format!("until {u:?} is not a duration or timestamp")));
            }
            filters["until"] = json!([u]);
        }
        let r = d.engine.prune_images(&filters)?;
        let deleted = r["ImagesDeleted"].as_array().map_or(0, Vec::len);
        Ok(json!({"status": "success", "deleted": deleted, "space_reclaimed": r["SpaceReclaimed"]}))
    }
}
