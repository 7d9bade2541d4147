#!/usr/bin/env bash
# Coverage-guided fuzzing campaign (README "Fuzzing"): every cargo-fuzz target in turn, one job
# each, at the lowest priority.
#   bench/fuzz.sh runs 10000000        # each target to 10 million executions
#   bench/fuzz.sh seconds 600          # each target for 10 minutes
#   bench/fuzz.sh runs 1000000 demux   # only the named targets
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). New inputs go to fuzz/target/corpus/<target>, seeded from the
# committed fuzz/corpus/<target>; crashes to fuzz/artifacts/<target>. The last lines of each
# target's log (executions, cov, ft, rss) go to fuzz/target/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
mode=${1:?runs N | seconds N}
amount=${2:?how many}
shift 2
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(rpc spec compose demux json_lines config creds)
case $mode in
  runs) limit=(-runs="$amount") ;;
  seconds) limit=(-max_total_time="$amount") ;;
  *) echo "mode is runs or seconds, not $mode" >&2; exit 2 ;;
esac
# In process (one job, one worker): the log is this target's own and the run stops at the limit.
# Release with debug assertions; no sanitizer: the library has no unsafe code, and ASan would
# cost 2-3x the executions for nothing to find.
cargo +nightly fuzz build -O -s none
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p target/logs
failed=0
for t in "${targets[@]}"; do
  mkdir -p "target/corpus/$t" "artifacts/$t"
  # Memory stays bounded: libFuzzer fails a run over 512 MiB of RSS or a single malloc over 256 MiB.
  nice -n 19 "$bin/$t" "target/corpus/$t" "corpus/$t" "${limit[@]}" \
    -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=30 -max_len=8192 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"target/logs/$t.log" 2>&1 \
    || { echo "$t: FAILED, see fuzz/target/logs/$t.log and fuzz/artifacts/$t/"; failed=1; continue; }
  echo "$t: $(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "target/logs/$t.log" | tail -1)"
done
exit "$failed"
