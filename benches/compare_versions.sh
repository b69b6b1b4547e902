#!/usr/bin/env bash
# Run the region-cost, sampler-cost and accuracy benches of two checkouts alternately.
#
#   benches/compare_versions.sh BEFORE_DIR AFTER_DIR [PAIRS] [OUT_DIR]
#
# Each checkout runs its own copy of the bench scripts with its own .venv (built with
# `maturin develop --release`). For every pair and every bench, BEFORE runs, then AFTER (the
# reverse with FIRST=after), so the two halves of a pair see about the same load on a shared
# machine. Each run's output goes to OUT_DIR/<pair>-<bench>-<before|after>.txt, headed by the load
# average (uptime) when it started and followed by its wall time. The benches also write their
# own tables into each checkout's benches/results/.
#
# Environment: BENCHES (default "overhead sampler_cost accuracy"), FIRST=after to run AFTER first
# in each pair (to check that the order within a pair does not decide the result), START (number
# of the first pair, default 1, to add pairs to an OUT_DIR).
set -euo pipefail

before=$(cd "${1:?BEFORE_DIR}" && pwd)
after=$(cd "${2:?AFTER_DIR}" && pwd)
pairs=${3:-3}
out=${4:-bench-pairs}
benches=${BENCHES:-overhead sampler_cost accuracy}
first=${FIRST:-before}
start=${START:-1}
sides="before after"
[ "$first" = after ] && sides="after before"
mkdir -p "$out"

run_one() {
    local dir=$1 bench=$2 file=$3 t0 t1
    [ -x "$dir/.venv/bin/python" ] || { echo "compare: no $dir/.venv" >&2; exit 1; }
    {
        echo "# $(git -C "$dir" rev-parse --short HEAD) $bench"
        echo "# uptime: $(uptime)"
    } >"$file"
    t0=$(date +%s)
    (cd "$dir" && .venv/bin/python "benches/bench_$bench.py") >>"$file" 2>&1
    t1=$(date +%s)
    echo "# wall: $((t1 - t0)) s; uptime after: $(uptime)" >>"$file"
}

for ((p = start; p < start + pairs; p++)); do
    for bench in $benches; do
        for side in $sides; do
            dir=$before
            [ "$side" = after ] && dir=$after
            echo "pair $p $bench $side: $(uptime)"
            run_one "$dir" "$bench" "$out/$p-$bench-$side.txt"
        done
    done
done
