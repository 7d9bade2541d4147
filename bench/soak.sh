#!/usr/bin/env bash
# The long soak and repeated cuts (issue 20), too long for CI: tests/faults.rs run with bench knobs.
#
#   bash bench/soak.sh               # 10 min soak with 20 engine cuts, 20 NATS restarts, 10 member kills
#   bash bench/soak.sh --release     # the same on the release profile (a long first build)
#
#   * long_soak_real_engine: 8 callers mixing every function (follows, jobs, compose) on the real
#     engine through the relay, a flipper stopping/starting/killing their containers behind the
#     daemon's back, DCD_SOAK_CUTS (20) engine cuts of 3 s; RSS and threads every 10 s
#     ("SOAK t=..." lines). Fails on a lost reply, or RSS or threads > 10 % over the baseline.
#   * nats_server_restarts: 20 restarts of the NATS server under the daemon (also in CI).
#   * nats_member_killed_ten_times (tests/cluster.rs): a sim device listing the three members of
#     a NATS cluster; the member it is on is killed 10 times, and how long until it answers again
#     through another member is printed per kill ("KILL ..." lines).
#
# Environment: DCD_SOAK_SECS (600), DCD_SOAK_CUTS (20), MALLOC_ARENA_MAX (passed on to the daemon
# when set, to compare allocator settings; src/heap.rs), and what tests/run.sh's tests need
# (tests/setup.sh). Runs under `nice -n 10`; the output goes to stdout and target/soak.log.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PROFILE=()
[ "${1:-}" = --release ] && PROFILE=(--release)
export DCD_SOAK_SECS=${DCD_SOAK_SECS:-600} DCD_SOAK_CUTS=${DCD_SOAK_CUTS:-20}
mkdir -p target
{
    nice -n 10 cargo test "${PROFILE[@]}" --test faults -- --ignored --exact long_soak_real_engine --nocapture
    nice -n 10 cargo test "${PROFILE[@]}" --test faults -- --exact nats_server_restarts --nocapture
    nice -n 10 cargo test "${PROFILE[@]}" --test cluster -- --ignored --exact nats_member_killed_ten_times --nocapture
} 2>&1 | tee target/soak.log | grep -E '^(SOAK|KILL|test |[0-9]+ restarts)|panicked|FAILED' || true
grep -q 'test result: FAILED\|panicked' target/soak.log && { echo "soak: FAILED (target/soak.log)"; exit 1; }
echo "soak: passed (target/soak.log)"
