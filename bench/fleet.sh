#!/usr/bin/env bash
# The fleet benchmark (issue 16): N sim devices on a 3-server NATS cluster with a leaf node, in D2D
# and infra mode, "before" (a binary built from an older commit) beside "after" (this tree), in
# one run. Not part of CI (tests/cluster.rs has the 20-device smoke). See BENCHMARKS.md "Fleet".
#
#   bash bench/fleet.sh                         # sizes 50,100,200; before = main's merge base
#   DCD_FLEET_SIZES=50,100,200,500 DCD_FLEET_BEFORE=<commit> bash bench/fleet.sh
#   DCD_FLEET_BEFORE_BIN=/path/to/dcd bash bench/fleet.sh   # an already built "before"
#   DCD_FLEET_BEFORE=none bash bench/fleet.sh   # "after" only
#
# Other environment: DCD_FLEET_MODES (d2d,infra), DCD_FLEET_IDLE (seconds measured idle, 15),
# DCD_FLEET_MAX_PAYLOAD (the servers' max_payload, 8MB as in the reference deployment; 1MB is
# nats-server's default, under which a registry page of 100 dcd devices does not fit),
# DEVICE_CONNECT_LIST_PAGE_SIZE (passed to the agent tools), DCD_PYVENV (tests/setup.sh's venv).
# Runs niced; results also in target/bench/fleet.json.
# Needs nats-server and the venv (tests/setup.sh). Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PYVENV=${DCD_PYVENV:-$HOME/.cache/dcd-pyvenv}
command -v nats-server >/dev/null || { echo "fleet: no nats-server (tests/setup.sh installs it)" >&2; exit 1; }
[ -x "$PYVENV/bin/python" ] || { echo "fleet: no venv at $PYVENV (tests/setup.sh makes it)" >&2; exit 1; }

nice -n 10 cargo build --release
BINS=(--bin "after=$TARGET/release/dcd")

BEFORE=${DCD_FLEET_BEFORE:-$(git merge-base HEAD main 2>/dev/null || echo none)}
if [ -n "${DCD_FLEET_BEFORE_BIN:-}" ]; then
    BINS=(--bin "before=$DCD_FLEET_BEFORE_BIN" "${BINS[@]}")
elif [ "$BEFORE" != none ]; then
    # Built in a worktree of its own, sharing this target dir's dependencies.
    WT=$TARGET/fleet-before-src
    git worktree remove --force "$WT" 2>/dev/null || true
    git worktree add --detach "$WT" "$BEFORE" >&2
    (cd "$WT" && CARGO_TARGET_DIR=$TARGET/fleet-before nice -n 10 cargo build --release)
    git worktree remove --force "$WT"
    BINS=(--bin "before=$TARGET/fleet-before/release/dcd" "${BINS[@]}")
fi

mkdir -p "$TARGET/bench"
exec nice -n 10 "$PYVENV/bin/python" bench/fleet.py "${BINS[@]}" \
    --sizes "${DCD_FLEET_SIZES:-50,100,200}" --modes "${DCD_FLEET_MODES:-d2d,infra}" \
    --idle "${DCD_FLEET_IDLE:-15}" --json-out "$TARGET/bench/fleet.json"
