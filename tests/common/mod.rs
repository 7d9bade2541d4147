//! Shared by the integration tests: the rule that a missing real part fails
//! under CI and skips elsewhere, and the real engine and test image.
#![allow(dead_code)] // each test crate uses its own subset

use std::process::Command;
use std::sync::Arc;

use dcd::engine::{docker::Docker, Engine};

/// `false` (skip) when `ok` is false outside CI; a failure under CI.
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required under CI (run tests/setup.sh)");
        }
        eprintln!("SKIP: {what} is not available (run tests/setup.sh)");
    }
    ok
}

/// The real engine, if it answers (see `require`).
pub fn engine() -> Option<Arc<dyn Engine>> {
    let d = Docker::connect(None).ok()?;
    let ok = d.info().is_ok();
    require(ok, "a Docker Engine on DOCKER_HOST or /var/run/docker.sock").then(|| Arc::new(d) as Arc<dyn Engine>)
}

/// The busybox test image made by tests/setup.sh.
pub fn test_image() -> Option<String> {
    let image = std::env::var("DCD_TEST_IMAGE").unwrap_or_else(|_| "dcd-test/busybox:latest".into());
    let ok = Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    require(ok, &format!("the test image {image}")).then_some(image)
}

/// A name unique to this process and `tag`, for things a test creates.
pub fn unique(tag: &str) -> String {
    format!("dcd-test-{tag}-{}", std::process::id())
}

/// `docker` CLI output (the engine's own view, to check ours against).
pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().expect("docker CLI");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
