#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 600 s each), two at a
# time, keeping the corpus in fuzz/corpus/<target>. Crashes land in
# fuzz/artifacts/<target>; the script fails if any target found one.
#
#   fuzz/run.sh            # 10 minutes per target
#   fuzz/run.sh 60         # 1 minute per target
#   fuzz/run.sh 60 key_file config
#
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
mkdir -p fuzz/logs
failed=0
run() {
    local target="$1"
    mkdir -p "fuzz/corpus/$target"
    # -rss_limit_mb catches allocation blow-ups; -timeout catches hangs.
    if cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 \
        >"fuzz/logs/$target.log" 2>&1; then
        echo "$target: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' "fuzz/logs/$target.log" | tail -1 | awk '{print $2}') runs)"
    else
        echo "$target: FOUND A PROBLEM, see fuzz/logs/$target.log and fuzz/artifacts/$target"
        return 1
    fi
}
pids=()
for target in "${targets[@]}"; do
    run "$target" &
    pids+=("$!")
    if [ ${#pids[@]} -ge 2 ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
exit "$failed"
