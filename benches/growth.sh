#!/usr/bin/env bash
# How a node's costs per object grow with the repository: the benchmark's corpus
# section (one node, a 3-node region and git http-backend behind nginx, same run) at
# three sizes of the generated history, then a plot of the costs per object.
#
#   bash benches/growth.sh            # writes target/growth/*.txt and benches/growth.svg
#
# Needs what `cargo bench --bench git_http` needs (nginx and fcgiwrap for the
# baseline). The largest size takes a few minutes to generate the first time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$here/target/growth"
mkdir -p "$out"
for shape in "3000 500 60" "10000 2000 200" "50000 5000 1000"; do
    read -r commits files tags <<<"$shape"
    echo "corpus: $commits commits, $files files, $tags tags" >&2
    BENCH_ONLY=corpus BENCH_COMMITS=$commits BENCH_FILES=$files BENCH_TAGS=$tags \
        cargo bench --bench git_http 2>/dev/null | tee "$out/c$commits.txt" >&2
done
python3 "$here/benches/growth_plot.py" "$out"/c*.txt > "$here/benches/growth.svg"
echo "wrote benches/growth.svg" >&2
