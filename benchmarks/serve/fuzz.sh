#!/usr/bin/env bash
# The 2-minute schemathesis run (`make serve-fuzz`): serve a tiny registered-layout model on 127.0.0.1 and let
# schemathesis generate valid and invalid requests from the predictor's OpenAPI for 120 s; any 5xx fails the run.
# The test suite runs a shorter bounded pass (tests/integration/test_serve_http.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${SENTIMENTOPS_FUZZ_WORK:-.sentimentops/fuzz}
PORT=${PORT:-18731}
export HF_HUB_OFFLINE=1
mkdir -p "$WORK"
[ -f "$WORK/model/artifacts/onnx/model.onnx" ] || \
  .venv/bin/python benchmarks/serve/make_model.py --kind tiny --eval-rows 100 --out "$WORK/model" >/dev/null
.venv/bin/sentimentops serve --model-dir "$WORK/model" --port "$PORT" > "$WORK/serve.log" 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fs "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
  sleep 1
done
.venv/bin/schemathesis run "http://127.0.0.1:$PORT/openapi.json" --checks not_a_server_error \
  --max-time 120 --max-examples 100000 --seed 2026 --request-timeout 30 --report-dir "$WORK/report"
curl -fs "http://127.0.0.1:$PORT/v2/health/ready"
echo
grep -E '^sentiment_requests_total' <(curl -fs "http://127.0.0.1:$PORT/metrics")
if curl -fs "http://127.0.0.1:$PORT/metrics" | grep -E '^sentiment_requests_total\{[^}]*status="5[0-9][0-9]"'; then
  echo "serve-fuzz: 5xx answers counted"; exit 1
fi
echo "serve-fuzz: OK (no 5xx)"
