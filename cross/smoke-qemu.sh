#!/usr/bin/env bash
# Smoke test of the aarch64 build: run target/aarch64-unknown-linux-musl/release/dcd under
# qemu-aarch64-static in --sim mode against a loopback nats-server, and make one RPC round trip
# (get_status) with the unmodified Python agent tools (tests/py/call.py), as in wire spec 6.1.
#
#   bash cross/smoke-qemu.sh            # builds the binary first if it is missing
#
# Env: DCD_AARCH64_BIN (binary, default target/aarch64-unknown-linux-musl/release/dcd),
#      DCD_TEST_PYTHON (python with device-connect-agent-tools 0.2.5; default
#      ${DCD_PYVENV:-$HOME/.cache/dcd-pyvenv}/bin/python), DCD_SMOKE_TIMEOUT (s, default 60).
# Everything listens on 127.0.0.1 only; the tenant is unique per run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf 'smoke-qemu: %s\n' "$*"; }
die() { printf 'smoke-qemu: FAIL: %s\n' "$*" >&2; exit 1; }

BIN=${DCD_AARCH64_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/aarch64-unknown-linux-musl/release/dcd}
PYVENV=${DCD_PYVENV:-${HOME:-/root}/.cache/dcd-pyvenv}
PY=${DCD_TEST_PYTHON:-$PYVENV/bin/python}
TIMEOUT=${DCD_SMOKE_TIMEOUT:-60}

command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static not found (run tests/setup.sh)"
command -v nats-server >/dev/null || die "nats-server not found (run tests/setup.sh)"
[ -x "$PY" ] || die "python $PY not found (run tests/setup.sh)"
if [ ! -x "$BIN" ]; then
    log "$BIN missing: building it"
    bash cross/build-aarch64.sh
fi

WORK=$(mktemp -d /tmp/dcd-smoke-qemu.XXXXXX)
NATS_PID=
DEV_PID=
cleanup() {
    local rc=$?
    if [ -n "$DEV_PID" ]; then kill "$DEV_PID" 2>/dev/null || true; fi
    if [ -n "$NATS_PID" ]; then kill "$NATS_PID" 2>/dev/null || true; fi
    if [ -n "$DEV_PID" ]; then wait "$DEV_PID" 2>/dev/null || true; fi
    if [ -n "$NATS_PID" ]; then wait "$NATS_PID" 2>/dev/null || true; fi
    if [ "$rc" != 0 ]; then
        echo "---- dcd (qemu) log ----" >&2
        tail -n 60 "$WORK/dcd.log" >&2 2>/dev/null || true
        echo "---- nats-server log ----" >&2
        tail -n 20 "$WORK/nats.log" >&2 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

NATS_PORT=$(free_port)
MON_PORT=$(free_port)
TENANT="smoke-$(date +%s)-$$"
DEVICE_ID=qemu-smoke-1
NATS_URL="nats://127.0.0.1:$NATS_PORT"

nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$MON_PORT" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 1 50); do
    curl -fsS --max-time 1 "http://127.0.0.1:$MON_PORT/varz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS --max-time 1 "http://127.0.0.1:$MON_PORT/varz" >/dev/null 2>&1 || die "nats-server did not start"
log "nats-server on 127.0.0.1:$NATS_PORT (monitor :$MON_PORT), tenant $TENANT"

# The device: flags as in wire spec 7.7; no inherited messaging/Docker env.
env -u DEVICE_ID -u DCD_DEVICE_ID -u TENANT -u DCD_TENANT -u MESSAGING_BACKEND -u MESSAGING_URLS \
    -u NATS_URL -u NATS_URLS -u ZENOH_CONNECT -u ZENOH_LISTEN -u DOCKER_HOST \
    -u MESSAGING_CREDENTIALS_FILE -u NATS_CREDENTIALS_FILE -u PORTAL_CREDENTIALS_FILE \
    -u DEVICE_CONNECT_PORTAL -u DCD_PORTAL -u DCD_CONTAINER \
    DEVICE_CONNECT_ALLOW_INSECURE=true DCD_LOG_LEVEL="${DCD_LOG_LEVEL:-info}" \
    qemu-aarch64-static "$BIN" --sim --device-id "$DEVICE_ID" --tenant "$TENANT" \
        --messaging-backend nats --messaging-url "$NATS_URL" --discovery-mode d2d \
    >"$WORK/dcd.log" 2>&1 &
DEV_PID=$!
log "dcd (aarch64, qemu) started, pid $DEV_PID"

# Ready when the device has subscribed to its command subject.
CMD_SUBJECT="device-connect.$TENANT.$DEVICE_ID.cmd"
ready=0
for _ in $(seq 1 "$((TIMEOUT * 2))"); do
    kill -0 "$DEV_PID" 2>/dev/null || die "dcd exited early"
    subs=$(curl -fsS --max-time 2 "http://127.0.0.1:$MON_PORT/subsz?subs=1" 2>/dev/null || true)
    case "$subs" in
        *"\"$CMD_SUBJECT\""*) ready=1; break ;;
    esac
    sleep 0.5
done
[ "$ready" = 1 ] || die "dcd did not subscribe to $CMD_SUBJECT within ${TIMEOUT} s"
log "dcd subscribed to $CMD_SUBJECT"

out=$(env -u ZENOH_CONNECT -u MESSAGING_URLS -u NATS_URLS -u MESSAGING_CREDENTIALS_FILE -u NATS_CREDENTIALS_FILE \
        MESSAGING_BACKEND=nats NATS_URL="$NATS_URL" DEVICE_CONNECT_DISCOVERY_MODE=d2d TENANT="$TENANT" \
        timeout "$TIMEOUT" "$PY" tests/py/call.py "$DEVICE_ID" get_status '{}') \
    || die "get_status via the Python agent tools failed"
log "get_status -> $out"

printf '%s' "$out" | "$PY" -c '
import json, sys
r = json.load(sys.stdin)
assert r.get("status") == "success", r
assert r.get("device_type") == "docker_host", r
assert r.get("simulate") is True, r
' || die "unexpected get_status result"

log "PASS: aarch64 dcd under qemu answered get_status over NATS"
