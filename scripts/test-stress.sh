#!/usr/bin/env bash
# make test-stress: the integration tier, STRESS_RUNS times in a row, while stress-ng keeps STRESS_CPUS workers
# busy. A race between a test and the processes it waits for shows here first: every wait must be for the
# condition it depends on, and a loaded machine only makes the conditions arrive later.
#
# Prints one line per run and a summary table, writes .sentimentops/test-stress.json, and exits non-zero if any
# run failed. stress-ng runs in its own process group and is stopped on every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${STRESS_RUNS:-3}
CPUS=${STRESS_CPUS:-2}
BIN=${BIN:-.venv/bin}
TIER=${STRESS_TIER:-tests/integration}
OUT=.sentimentops/test-stress
mkdir -p "$OUT"

command -v stress-ng >/dev/null || { echo "stress-ng not found (make test-stress installs it)" >&2; exit 2; }
cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)
echo "test-stress: $TIER x $RUNS with stress-ng --cpu $CPUS on $(nproc) cores ($cpu)"

setsid stress-ng --cpu "$CPUS" --cpu-method matrixprod --timeout "${STRESS_MAX_SECONDS:-14400}" --quiet &
STRESS_PID=$!
cleanup() { kill -TERM -- "-$STRESS_PID" 2>/dev/null || true; wait "$STRESS_PID" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

rows="$OUT/runs.tsv"
: >"$rows"
failed=0
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s)
  set +e
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 \
    "$BIN/python" -m pytest -q -p no:cacheprovider "$TIER" ${PYTEST_ARGS:-} >"$OUT/run-$i.log" 2>&1
  code=$?
  set -e
  secs=$(( $(date +%s) - start ))
  # pytest's closing line, without its `=` padding
  summary=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$OUT/run-$i.log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  echo "run $i: exit $code in ${secs}s: $summary"
  [ "$code" = 0 ] || { failed=$((failed + 1)); tail -n 40 "$OUT/run-$i.log"; }
  printf '%s\t%s\t%s\t%s\n' "$i" "$code" "$secs" "$summary" >>"$rows"
done

printf '\n| run | exit | seconds | pytest summary |\n| --- | --- | --- | --- |\n'
while IFS=$'\t' read -r run code secs summary; do
  echo "| $run | $code | $secs | $summary |"
done <"$rows"
"$BIN/python" - "$rows" "$cpu" "$(nproc)" "$CPUS" "$TIER" >.sentimentops/test-stress.json <<'PY'
import json, sys
rows, cpu, cores, stress_cpus, tier = sys.argv[1:]
runs = [dict(zip(("run", "exit", "seconds", "summary"), line.rstrip("\n").split("\t"))) for line in open(rows)]
for run in runs:
    run.update(run=int(run["run"]), exit=int(run["exit"]), seconds=int(run["seconds"]))
print(json.dumps({"cpu": cpu, "cores": int(cores), "stress_cpus": int(stress_cpus), "tier": tier, "runs": runs},
                 indent=2))
PY
echo "test-stress: $((RUNS - failed)) of $RUNS runs passed (logs in $OUT/, summary in .sentimentops/test-stress.json)"
[ "$failed" = 0 ]
