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

results=()
failed=0
for i in $(seq 1 "$RUNS"); do
  start=$(date +%s)
  set +e
  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 \
    "$BIN/python" -m pytest -q -p no:cacheprovider "$TIER" ${PYTEST_ARGS:-} >"$OUT/run-$i.log" 2>&1
  code=$?
  set -e
  secs=$(( $(date +%s) - start ))
  summary=$(grep -E '^[=]* ?[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s' "$OUT/run-$i.log" | tail -n 1)
  summary=${summary//=/}
  summary=$(echo "$summary" | sed 's/^ *//; s/ *$//')
  echo "run $i: exit $code in ${secs}s: $summary"
  [ "$code" = 0 ] || { failed=$((failed + 1)); tail -n 40 "$OUT/run-$i.log"; }
  results+=("{\"run\": $i, \"exit\": $code, \"seconds\": $secs, \"summary\": \"$summary\"}")
done

printf '\n| run | exit | seconds | pytest summary |\n| --- | --- | --- | --- |\n'
for r in "${results[@]}"; do
  "$BIN/python" -c 'import json,sys; r=json.loads(sys.argv[1]); print(f"| {r[\"run\"]} | {r[\"exit\"]} | {r[\"seconds\"]} | {r[\"summary\"]} |")' "$r"
done
{
  printf '{"cpu": "%s", "cores": %s, "stress_cpus": %s, "tier": "%s", "runs": [' "$cpu" "$(nproc)" "$CPUS" "$TIER"
  (IFS=,; printf '%s' "${results[*]}")
  printf ']}\n'
} >"$OUT/../test-stress.json"
echo "test-stress: $((RUNS - failed)) of $RUNS runs passed (logs in $OUT/, summary in .sentimentops/test-stress.json)"
[ "$failed" = 0 ]
