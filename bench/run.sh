#!/usr/bin/env bash
# Benchmark dcd as a whole process: the release binary, over a loopback NATS server (and a
# loopback Zenoh session), against the real Docker Engine, with every figure set against the
# same work done directly. See BENCHMARKS.md for the figures and what they mean.
#
#   bash bench/run.sh              # full run: builds the static musl variants for the size table,
#                                  # then every measurement (about 10 minutes; keep the machine quiet)
#   bash bench/run.sh --quick      # under 60 s: start-up, RSS/threads, get_status p50, 10 s idle CPU;
#                                  # exits 1 only on a > 2x regression against bench/baseline.json
#   bash bench/run.sh --no-build   # full run, sizes of whatever binaries already exist
#   bash bench/run.sh --quick --musl  # the quick figures of the static musl build (the deployed
#                                  # form; built into target/bench-all if missing) instead of gnu
#
# Other options are passed to bench/bench.py (--rounds N, --json-out FILE, --bin PATH,
# --only exec for the exec session figures alone, --startup-against BIN for the start-up of two
# binaries, 25 starts each, interleaved).
# Environment: DCD_PYVENV (the venv from tests/setup.sh, default ~/.cache/dcd-pyvenv),
# DCD_BENCH_BIN (binary to measure, default target/release/dcd), DOCKER_HOST (unix:// only).
#
# Needs: docker (engine + CLI) with the image dcd-test/busybox:latest, nats-server, the venv with
# nats-py and eclipse-zenoh (tests/setup.sh provides all of them). Without them it skips (exit 0),
# or fails when CI is set. Everything listens on 127.0.0.1 only; containers carry the labels
# dcd-bench=1 and dcd-bench-run=<run id> and are removed on exit, whatever happens.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

QUICK=0
BUILD=1
MUSL=0
PASS=()
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1; PASS+=("$a") ;;
        --no-build) BUILD=0 ;;
        --musl) MUSL=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) PASS+=("$a") ;;
    esac
done

log() { printf 'bench: %s\n' "$*" >&2; }
skip() {
    if [ -n "${CI:-}" ]; then printf 'bench: FAILED (CI): %s\n' "$*"; exit 1; fi
    printf 'bench: SKIP: %s\n' "$*"; exit 0
}

PYVENV=${DCD_PYVENV:-$HOME/.cache/dcd-pyvenv}
PY=$PYVENV/bin/python
MUSL_BIN=$ROOT/target/bench-all/x86_64-unknown-linux-musl/release/dcd
if [ "$MUSL" = 1 ]; then BIN=${DCD_BENCH_BIN:-$MUSL_BIN}; else BIN=${DCD_BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/dcd}; fi
LOGROOT=$ROOT/target/bench/logs
mkdir -p "$LOGROOT"

command -v docker >/dev/null || skip "no docker CLI"
command -v nats-server >/dev/null || skip "no nats-server (tests/setup.sh installs it)"
[ -x "$PY" ] || skip "no python venv at $PYVENV (tests/setup.sh creates it)"
"$PY" -c 'import nats, zenoh' 2>/dev/null || skip "nats-py / eclipse-zenoh not importable in $PYVENV"
docker info >/dev/null 2>&1 || skip "the Docker Engine does not answer"

# A run id that is also the tenant prefix and the container label: [A-Za-z0-9] only.
RUN_ID=bench$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
# one directory per run (daemon, nats-server and build logs): concurrent runs do not mix
LOGDIR=$LOGROOT/$RUN_ID
mkdir -p "$LOGDIR"
# keep the logs of the last 5 runs
ls -1dt "$LOGROOT"/bench* 2>/dev/null | tail -n +6 | while read -r old; do rm -rf -- "$old"; done
NATS_PID=
PY_PID=
PIDFILE=$LOGDIR/$RUN_ID.pids

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PY_PID" 2>/dev/null || true
    fi
    # daemons bench.py started and could not stop (it was killed): only those whose command line
    # names this run's tenant, so a reused pid is never hit
    if [ -f "$PIDFILE" ]; then
        local pid
        while read -r pid; do
            if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--tenant $RUN_ID"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$PIDFILE"
        rm -f "$PIDFILE"
    fi
    if [ -n "$NATS_PID" ] && kill -0 "$NATS_PID" 2>/dev/null; then
        kill "$NATS_PID" 2>/dev/null || true
        wait "$NATS_PID" 2>/dev/null || true
    fi
    # bench.py removes its containers itself; this catches a kill of bench.py.
    local ids
    ids=$(docker ps -aq --filter "label=dcd-bench-run=$RUN_ID" 2>/dev/null || true)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        docker rm -f $ids >/dev/null 2>&1 || true
        log "removed leftover containers of run $RUN_ID"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# builds
# ---------------------------------------------------------------------------------------------
build_musl() {  # build_musl TARGET_DIR cargo-args...
    local tdir=$1; shift
    local target=x86_64-unknown-linux-musl
    local shim=$tdir/$target/musl-shim
    mkdir -p "$shim"
    # zenoh's libloading passes -ldl; musl has dlopen in libc.a and no libdl.a (as cross/build-aarch64.sh)
    [ -s "$shim/libdl.a" ] || { rm -f "$shim/libdl.a"; ar rcs "$shim/libdl.a"; }
    log "cargo build --release --target $target --target-dir ${tdir#"$ROOT"/} $* (log: ${LOGDIR#"$ROOT"/}/build-$(basename "$tdir").log)"
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=yes -L native=$shim" \
    CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-gcc} \
    AR_x86_64_unknown_linux_musl=${AR_x86_64_unknown_linux_musl:-ar} \
        cargo build --release --target "$target" --target-dir "$tdir" "$@" \
        >"$LOGDIR/build-$(basename "$tdir").log" 2>&1 \
        || { tail -n 20 "$LOGDIR/build-$(basename "$tdir").log" >&2; log "musl build in $tdir failed (size left out)"; }
}

if [ -z "${DCD_BENCH_BIN:-}" ] && [ "$MUSL" = 1 ]; then
    if [ ! -x "$BIN" ] || { [ "$QUICK" = 0 ] && [ "$BUILD" = 1 ]; }; then build_musl "$ROOT/target/bench-all"; fi
elif [ -z "${DCD_BENCH_BIN:-}" ]; then
    if [ ! -x "$BIN" ] || { [ "$QUICK" = 0 ] && [ "$BUILD" = 1 ]; }; then
        log "cargo build --release"
        cargo build --release >"$LOGDIR/build-release.log" 2>&1 \
            || { tail -n 30 "$LOGDIR/build-release.log" >&2; skip "cargo build --release failed"; }
    fi
fi
[ -x "$BIN" ] || skip "no binary at $BIN"

if [ "$QUICK" = 0 ] && [ "$BUILD" = 1 ]; then
    build_musl "$ROOT/target/bench-all"
    build_musl "$ROOT/target/bench-nats" --no-default-features --features nats
    build_musl "$ROOT/target/bench-zenoh" --no-default-features --features zenoh
fi

# ---------------------------------------------------------------------------------------------
# loopback nats-server
# ---------------------------------------------------------------------------------------------
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# its own session, so a signal meant for this script's process group cannot take it down mid-run
setsid nats-server -a 127.0.0.1 -p "$PORT" >"$LOGDIR/nats-server.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    kill -0 "$NATS_PID" 2>/dev/null || { cat "$LOGDIR/nats-server.log" >&2; skip "nats-server did not start"; }
    sleep 0.05
done

# In the background, so that a signal to this script runs the cleanup at once.
"$PY" "$ROOT/bench/bench.py" --nats-url "nats://127.0.0.1:$PORT" --run-id "$RUN_ID" --bin "$BIN" \
    --logdir "$LOGDIR" --pidfile "$PIDFILE" "${PASS[@]}" &
PY_PID=$!
set +e
wait "$PY_PID"
rc=$?
set -e
PY_PID=
if [ "$rc" = 3 ]; then skip "bench.py could not set up (see above)"; fi
exit "$rc"
