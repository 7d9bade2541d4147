//! Registry credentials for pulls, found where the Docker CLI finds them (the
//! `auths` of `config.json`) and sent as it sends them (`X-Registry-Auth`).
//!
//! A password must never reach a log line or an error message: `Credentials`
//! has no derived `Debug`, and every message here names a field or a file,
//! never a value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::encoding::{base64_decode, base64_encode, URL_SAFE};
pub use crate::engine::Credentials;

/// The `auths` key of Docker Hub (the CLI's `IndexServer`).
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

impl Credentials {
    /// The `auth` parameter of `pull_image`: null, or an object with
    /// `username`, `password` and optionally `serveraddress`.
    pub fn from_param(v: &Value) -> Result<Option<Credentials>, String> {
        let fields = match v {
            Value::Null => return Ok(None),
            Value::Object(fields) => fields,
            _ => return Err("auth must be an object {username, password, serveraddress?} or null".into()),
        };
        if let Some(k) = fields.keys().find(|k| !["username", "password", "serveraddress"].contains(&k.as_str())) {
            return Err(format!("auth has an unknown field {k:?} (username, password, serveraddress)"));
        }
        let text = |name: &str, required: bool| match fields.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            None | Some(Value::Null) if !required => Ok(None),
            _ => Err(format!("auth.{name} must be a non-empty string")),
        };
        Ok(Some(Credentials {
            username: text("username", true)?.unwrap_or_default(),
            password: text("password", true)?.unwrap_or_default(),
            server_address: text("serveraddress", false)?,
        }))
    }

    /// The `X-Registry-Auth` value for a pull from `registry`: base64url (with
    /// padding) of the JSON the CLI sends.
    pub(super) fn header(&self, registry: &str) -> String {
        let server = self.server_address.as_deref().unwrap_or(registry);
        let body = json!({"username": self.username, "password": self.password, "serveraddress": server});
        base64_encode(body.to_string().as_bytes(), URL_SAFE)
    }
}

/// Where the credentials of a pull came from, for error messages.
pub(super) enum Source {
    Given,
    File(PathBuf),
    /// None found, in this file if there was one to look in.
    Missing(Option<PathBuf>),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Given => f.write_str("with the credentials given in `auth`"),
            Source::File(p) => write!(f, "with credentials from {}", p.display()),
            Source::Missing(Some(p)) => write!(f, "without credentials: none for this registry in {}", p.display()),
            Source::Missing(None) => f.write_str("without credentials: neither DOCKER_CONFIG nor HOME is set"),
        }
    }
}

/// The credentials for a pull from `registry` (an `auths` key): those `given`
/// with the call, else those `config_dir/config.json` holds for it.
pub(super) fn lookup(
    given: Option<&Credentials>,
    config_dir: Option<&Path>,
    registry: &str,
) -> (Option<Credentials>, Source) {
    if let Some(c) = given {
        return (Some(c.clone()), Source::Given);
    }
    let Some(path) = config_dir.map(|d| d.join("config.json")) else { return (None, Source::Missing(None)) };
    match from_config(&path, registry) {
        Some(c) => (Some(c), Source::File(path)),
        None => (None, Source::Missing(Some(path))),
    }
}

/// The `auths` key for an image name (no tag): its registry host as the
/// reference names it, or Docker Hub's key. The first path component is a
/// registry when it has a '.' or ':', is `localhost`, or has upper case
/// (as in the CLI's reference parser).
pub(super) fn registry_key(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _))
            if (first.contains(['.', ':']) || first == "localhost" || first != first.to_ascii_lowercase())
                && !matches!(first, "docker.io" | "index.docker.io") =>
        {
            first.to_string()
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// The host of an `auths` key, which may be a URL (`https://host/v1/`).
fn key_host(key: &str) -> &str {
    let rest = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// The entry of `path`'s `auths` for `registry`: its exact key, else one
/// naming the same host. Problems are logged (by file and field, not value)
/// and mean no credentials.
fn from_config(path: &Path, registry: &str) -> Option<Credentials> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("cannot read {}: {e}; pulling without credentials", path.display());
            return None;
        }
    };
    let config: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("{} is not JSON ({e}); pulling without credentials", path.display());
            return None;
        }
    };
    let auths = config["auths"].as_object()?;
    let (key, entry) =
        auths.get_key_value(registry).or_else(|| auths.iter().find(|(k, _)| key_host(k) == key_host(registry)))?;
    let field = |name: &str| entry[name].as_str().filter(|s| !s.is_empty());
    let (username, password) = match field("auth") {
        Some(encoded) => {
            let pair = base64_decode(encoded)
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())));
            match pair {
                Some(pair) => pair,
                None => {
                    log::warn!(
                        "{}: auths.{key:?}.auth is not base64 of user:password; pulling without credentials",
                        path.display()
                    );
                    return None;
                }
            }
        }
        None => (field("username")?.to_string(), field("password")?.to_string()),
    };
    Some(Credentials { username, password, server_address: Some(key.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_their_registry_as_the_cli_does() {
        for (name, key) in [
            ("busybox", DOCKER_HUB),
            ("library/busybox", DOCKER_HUB),
            ("docker.io/library/busybox", DOCKER_HUB),
            ("index.docker.io/me/app", DOCKER_HUB),
            ("me/app", DOCKER_HUB),
            ("127.0.0.1:5001/dcd-test/busybox", "127.0.0.1:5001"),
            ("ghcr.io/o/r", "ghcr.io"),
            ("localhost/app", "localhost"),
            ("Registry/app", "Registry"),
        ] {
            assert_eq!(registry_key(name), key, "{name}");
        }
        assert_eq!(key_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(key_host("http://127.0.0.1:5001"), "127.0.0.1:5001");
    }

    #[test]
    fn config_entries_by_key_or_host_in_either_form() {
        let dir = std::env::temp_dir().join(format!("dcd-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {
                "127.0.0.1:5001": {"auth": "dXNlcjpwYTpzcw=="},
                "https://ghcr.io/v2/": {"username": "u2", "password": "p2"},
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M"},
                "broken.example": {"auth": "!!"},
                "empty.example": {}
            }, "credsStore": "pass"}"#,
        )
        .unwrap();
        let get = |registry: &str| from_config(&path, registry).map(|c| (c.username, c.password, c.server_address));
        let owned = |u: &str, p: &str, s: &str| Some((u.to_string(), p.to_string(), Some(s.to_string())));
        assert_eq!(get("127.0.0.1:5001"), owned("user", "pa:ss", "127.0.0.1:5001"));
        assert_eq!(get("ghcr.io"), owned("u2", "p2", "https://ghcr.io/v2/"));
        assert_eq!(get(DOCKER_HUB), owned("hub", "hubpass", DOCKER_HUB));
        for none in ["127.0.0.1:5002", "broken.example", "empty.example"] {
            assert_eq!(get(none), None, "{none}");
        }
        assert!(from_config(&dir.join("absent.json"), "x").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_header_is_the_cli_json_in_base64url() {
        let c = Credentials { username: "u".into(), password: "p?>".into(), server_address: None };
        let decoded = base64_decode(&c.header("127.0.0.1:5001")).unwrap();
        let v: Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(v, json!({"username": "u", "password": "p?>", "serveraddress": "127.0.0.1:5001"}));
        assert!(!c.header("r").contains(['+', '/']));
        assert!(!format!("{c:?}").contains("p?>"));
    }

    #[test]
    fn the_auth_param_is_checked_without_echoing_values() {
        let ok = Credentials::from_param(&json!({"username": "u", "password": "secret", "serveraddress": "r:1"}));
        assert_eq!(ok.unwrap().unwrap().server_address.as_deref(), Some("r:1"));
        assert_eq!(Credentials::from_param(&Value::Null), Ok(None));
        for bad in [
            json!("u:secret"),
            json!({"username": "u"}),
            json!({"username": "u", "password": 7}),
            json!({"username": "u", "password": "secret", "token": "secret"}),
        ] {
            let e = Credentials::from_param(&bad).unwrap_err();
            assert!(!e.contains("secret") && !e.contains('7'), "{e}");
        }
    }

    #[test]
    fn given_credentials_win_over_the_config_file() {
        let c = Credentials { username: "u".into(), password: "p".into(), server_address: None };
        assert_eq!(lookup(Some(&c), Some(Path::new("/nonexistent")), "r").0, Some(c));
        assert!(lookup(None, None, "r").0.is_none());
    }
}
