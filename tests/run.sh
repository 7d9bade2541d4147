#!/usr/bin/env bash
# THE test command: bash tests/run.sh   (run as root; CI runs it through .ci/run)
#
#  1. tests/setup.sh           - packages, Docker Engine, test image, loopback registry, Python venv,
#                                Rust musl targets (idempotent, fast when already done)
#  2. cargo build --release
#  3. cargo test               - unit and integration tests (debug build); they read the env below;
#                                the real-engine ones again on rootful and rootless Podman
#  4. tests/deploy.sh          - compose.yaml, systemd unit, install.sh checks
#  5. cross/build-aarch64.sh   - static aarch64 binary without Docker
#  6. cross/smoke-qemu.sh      - that binary under qemu, one RPC from the Python agent tools
#  7. bench/run.sh --quick     - only if bench/run.sh exists and is executable
#
# Contract with the tests (exported here):
#   DCD_PYVENV         venv holding device-connect-agent-tools / device-connect-edge 0.2.5
#   DCD_TEST_PYTHON    $DCD_PYVENV/bin/python
#   DCD_TEST_IMAGE     dcd-test/busybox:latest (local image; /bin/sh + busybox applets, CMD /bin/sh)
#   DCD_TEST_REGISTRY  127.0.0.1:5000 (holds dcd-test/busybox:latest; no local tag of that name)
#   DCD_BIN            target/release/dcd (integration tests also get CARGO_BIN_EXE_dcd)
#
# A test whose parts are missing skips (outside CI) and is listed at the end: "N tests skipped: ...".
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==== run.sh: %s ====\n' "$*"; }

step "setup"
bash tests/setup.sh

export DCD_PYVENV=${DCD_PYVENV:-${HOME:-/root}/.cache/dcd-pyvenv}
export DCD_TEST_IMAGE=dcd-test/busybox:latest
export DCD_TEST_REGISTRY=127.0.0.1:5000
export DCD_TEST_PYTHON=$DCD_PYVENV/bin/python
export DCD_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/dcd

# A fresh clone gains nothing from incremental caches, and they cost disk (a CI machine ran out).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step "cargo build --release"
cargo build --release

step "cargo test"
# Each test that skips for want of a part records itself here (tests/common/mod.rs, `require`).
SKIPS=${CARGO_TARGET_DIR:-$ROOT/target}/test-skips.txt
rm -f "$SKIPS"
skip_summary() {
    if [ -s "$SKIPS" ]; then
        printf '\n==== run.sh: %s tests skipped: %s ====\n' "$(cut -f1 "$SKIPS" | sort -u | wc -l)" \
            "$(sort -u "$SKIPS" | awk -F'\t' '{printf "%s%s (%s)", (NR > 1 ? ", " : ""), $1, $2}')"
    fi
}
trap skip_summary EXIT
cargo test -- --test-threads=2
# `require` already fails a test under CI; this catches a skip that went around it.
if [ -n "${CI:-}" ] && [ -s "$SKIPS" ]; then
    echo "run.sh: tests skipped under CI" >&2
    exit 1
fi

# The real-engine suites again on Podman (tests/common `podman_host` starts its API service as a
# board does): all of them on rootful Podman, and on rootless a set that provisions, starts,
# stops, follows logs, execs (once and in a session), pulls as a job with progress, brings a
# compose project up and down, and hears state events.
step "cargo test on rootful Podman"
DCD_TEST_ENGINE=podman cargo test --test engine_real --test driver --test events --test fleet \
    --test compose --test exec_session --test jobs -- --test-threads=2

step "cargo test on rootless Podman"
DCD_TEST_ENGINE=podman-rootless cargo test --test engine_real --test driver --test compose \
    --test exec_session --test jobs -- --test-threads=2 \
    create_with_options start_stop_restart_remove exec_collects follow_logs events_show_a_start \
    real_lifecycle_logs_exec_and_listing real_follow_emits_lines_and_stops real_provision_maps_every_spec_field \
    three_services_up_update_and_down an_agent_drives_a_shell slow_pull_is_pending_reports_progress

step "deploy checks"
bash tests/deploy.sh

step "aarch64 cross build"
bash cross/build-aarch64.sh

step "aarch64 smoke test under qemu"
bash cross/smoke-qemu.sh

if [ -x bench/run.sh ]; then
    step "benchmark (quick)"
    bench/run.sh --quick
fi

step "all steps passed"
