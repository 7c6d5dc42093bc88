#!/usr/bin/env bash
# `make image-test` (opt-in, root, needs apt and PyPI): build Dockerfile.serve with podman, start the predictor in
# it over a tiny registered-layout model folder (read-only root, non-root, --network=none), call
# /v2/health/ready and a V1 + V2 prediction from inside the container's own loopback, check that /health and the
# image's OCI label report the commit it was built from (the GIT_SHA build argument), stop it with SIGTERM
# (drain, exit 0), and print the image size.
# podman set-up and the Debian Python base: images/podman-env.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
IMAGE=localhost/sentimentops-serve:test
NAME=sentimentops-serve-test
# shellcheck source=images/podman-env.sh
source "$REPO/images/podman-env.sh"

# The commit, as CI passes github.sha (.github/workflows/images.yml): .git is not in the build context.
GIT_SHA=$(git -C "$REPO" rev-parse HEAD) || { echo "image-test: $REPO is not a git checkout" >&2; exit 2; }
podman build --network=host --layers -f Dockerfile.serve "${MOUNTS[@]}" --build-arg "PYTHON_IMAGE=$BASE_PY" \
  --build-arg "GIT_SHA=$GIT_SHA" -t "$IMAGE" "$REPO"
revision=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.revision"}}' "$IMAGE")
echo "label org.opencontainers.image.revision: $revision"
test "$revision" = "$GIT_SHA"

model=$WORK/serve-model
if [ ! -f "$model/artifacts/onnx/model.onnx" ]; then
  HF_HUB_OFFLINE=1 "$REPO/.venv/bin/python" benchmarks/serve/make_model.py --kind tiny --eval-rows 100 \
    --out "$model" >/dev/null
fi
chmod -R a+rX "$model"

podman rm -f "$NAME" >/dev/null 2>&1 || true
podman run -d --name "$NAME" --network=none --read-only --tmpfs /tmp -v "$model:/mnt/models:ro" \
  -e SENTIMENTOPS_MODEL_VERSION=7 "$IMAGE" >/dev/null
trap 'podman rm -f "$NAME" >/dev/null 2>&1 || true' EXIT

call() {  # call PATH [JSON]: an HTTP call to the predictor from inside the container (its own loopback)
  podman exec "$NAME" python3 -c '
import json, sys, urllib.request, urllib.error
path, body = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
req = urllib.request.Request("http://127.0.0.1:8080" + path, data=body.encode() if body else None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
except OSError as e:
    print(0, e)' "$@"
}

echo "--- waiting for /v2/health/ready"
for _ in $(seq 1 120); do
  out=$(call /v2/health/ready || true)
  [[ $out == 200* ]] && break
  sleep 1
done
echo "$out"
[[ $out == 200* ]] || { podman logs "$NAME" | tail -30; exit 1; }
v1=$(call /v1/models/sentiment:predict '{"instances": ["a wonderful film", {"text": "dull and far too long"}]}')
echo "V1: $v1"
[[ $v1 == 200*'"model_version":"7"'* ]]
v2=$(call /v2/models/sentiment/infer \
  '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great acting"]}]}')
echo "V2: $v2"
[[ $v2 == 200*'"probability"'* ]]
bad=$(call /predict '{"instances": [""]}')
echo "bad input: $bad"
[[ $bad == 400* ]]
backend=$(call /health)
echo "health: $backend"
[[ $backend == *'"backend":"onnx-'* ]]
# The served code's commit, exactly the one built (never `unknown`): the last link of a prediction's lineage.
[[ $backend == *"\"git_sha\":\"$GIT_SHA\""* ]] || { echo "health does not report git_sha $GIT_SHA" >&2; exit 1; }
uid=$(podman exec "$NAME" id -u)
test "$uid" = 10001
! podman run --rm --network=none --entrypoint python3 "$IMAGE" -c "import torch" 2>/dev/null
echo "--- SIGTERM: drain and exit"
podman stop -t 30 "$NAME" >/dev/null
code=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
echo "exit code after SIGTERM: $code"
test "$code" = 0
echo "--- image size"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"
echo "image-test: OK"
