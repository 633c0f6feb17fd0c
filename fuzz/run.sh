#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) on the stable toolchain
# (cargo-fuzz, libFuzzer, --sanitizer none; overflow checks on), from seeds made from
# real git traffic (seeds.sh) plus what earlier runs kept in fuzz/corpus/. Prints each
# target's executions per second and coverage; fails on the first crash, leaving the
# input in fuzz/artifacts/<target>/ (reproduce, in fuzz/: cargo fuzz run --sanitizer none
# <target> <file>). A found crash becomes a regression test next to the code.
#
#   bash fuzz/run.sh            # a minute per target
#   bash fuzz/run.sh 3600       # an hour per target
#   bash fuzz/run.sh 60 pktline # one target
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
seconds="${1:-60}"
shift || true
cd "$here"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
bash seeds.sh
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --sanitizer none --release
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    if ! cargo fuzz run --sanitizer none --release "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -max_len=262144 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $t found a crash: see fuzz/artifacts/$t/"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
    summary+=("$(printf '%-16s %10s runs %8s exec/s  cov %6s  ft %6s' "$t" "$runs" "$rate" "$cov" "$ft")")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} passed, 0 failed"
