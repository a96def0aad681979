#!/usr/bin/env bash
# The real-Krita suite N times in a row (default 5) in every prepared Krita version, while busy loops
# keep every core loaded: the suite must never flake. Prints one line per run and a summary.
#
#   bash bench/krita_e2e_under_load.sh [N] [pytest -k expression]
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
select="${2:-}"
busy=()
for _ in $(seq "$(nproc)"); do
    timeout 7200 sh -c 'while :; do :; done' &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
passed=0
for run in $(seq "$runs"); do
    started=$SECONDS
    if HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_krita_e2e.py ${select:+-k "$select"} \
        > "artifacts/under-load-$run.log" 2>&1; then
        passed=$((passed + 1))
    fi
    echo "run $run: $(tail -n 1 "artifacts/under-load-$run.log") ($((SECONDS - started)) s, $(nproc) busy loops)"
    rm -rf "artifacts/under-load-$run" && cp -r artifacts/krita-e2e "artifacts/under-load-$run"  # each run's logs
done
echo "$passed of $runs runs passed"
[ "$passed" -eq "$runs" ]
