#!/usr/bin/env bash
# `make images-test` (opt-in, root, needs apt and PyPI): build the base and one CPU stage image (validate) with
# podman, then run the validate stage in the image on a tiny dataset with no network; the version stage in its image
# (DVC push to a mounted remote); then build the slim MLflow server image and check it serves /health and carries
# its commit.
# podman set-up and the Debian Python base: images/podman-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TAG=test
# shellcheck source=images/podman-env.sh
source "$REPO/images/podman-env.sh"

# The commit, as CI passes github.sha (.github/workflows/images.yml): .git is not in the build context.
GIT_SHA=$(git -C "$REPO" rev-parse HEAD) || { echo "images-test: $REPO is not a git checkout" >&2; exit 2; }

build() {  # build <dockerfile> <image> [build-arg ...]
  local file=$1 image=$2; shift 2
  local args=("${MOUNTS[@]}" --build-arg "GIT_SHA=$GIT_SHA")
  for a in "$@"; do args+=(--build-arg "$a"); done
  podman build --format docker --network=host --layers -f "$file" "${args[@]}" -t "$image" "$REPO"
}

build images/base.Dockerfile "localhost/sentimentops-base:$TAG" "PYTHON_IMAGE=$BASE_PY"
build images/validate.Dockerfile "localhost/sentimentops-validate:$TAG" "BASE_IMAGE=localhost/sentimentops-base:$TAG"

# A tiny dataset (the demo reviews shipped in the package), made on the host by the same CLI.
data=$WORK/run
rm -rf "$data" && mkdir -p "$data/out"
"$REPO/.venv/bin/sentimentops" ingest --source demo --sample-size 300 --test-size 80 --seed 1 --out "$data/dataset" >/dev/null
chmod -R a+rX "$data/dataset" && chmod a+rwx "$data/out"

echo "--- sentimentops --help in the validate image"
podman run --rm --network=none "localhost/sentimentops-validate:$TAG" --help
echo "--- validate stage in the image (no network, read-only root, non-root user)"
podman run --rm --network=none --read-only --tmpfs /tmp -e SENTIMENTOPS_PROFILE=local \
  -v "$data/dataset:/data:ro" -v "$data/out:/out" \
  "localhost/sentimentops-validate:$TAG" validate --dataset /data --out /out/validation
test -s "$data/out/validation/report.json"
uid=$(podman run --rm --network=none --entrypoint id "localhost/sentimentops-validate:$TAG" -u)
test "$uid" = 10001
echo "--- the commit the stage records as its git_sha (SENTIMENTOPS_GIT_SHA, from the GIT_SHA build argument)"
sha=$(podman run --rm --network=none --entrypoint python3 "localhost/sentimentops-validate:$TAG" \
  -c 'from sentimentops.steps.core.manifests import git_sha; print(git_sha())')
echo "$sha"
test "$sha" = "$GIT_SHA"
echo "--- version stage in its image: the committed .dvc/config (SENTIMENTOPS_DVC_CONFIG), a push, dvc-gs for gs://"
build images/version.Dockerfile "localhost/sentimentops-version:$TAG" "BASE_IMAGE=localhost/sentimentops-base:$TAG"
mkdir -p "$data/out/remote" && chmod a+rwx "$data/out/remote"
podman run --rm --network=none --read-only --tmpfs /tmp -e SENTIMENTOPS_PROFILE=local \
  -e SENTIMENTOPS_VERSION_REMOTE=/out/remote -v "$data/dataset:/data:ro" -v "$data/out:/out" \
  "localhost/sentimentops-version:$TAG" version --dataset /data --out /out/version
test -s "$data/out/version/dataset.dvc" && test -n "$(ls -A "$data/out/remote")"
podman run --rm --network=none --entrypoint python3 "localhost/sentimentops-version:$TAG" -c "import dvc_gs"
echo "--- the slim MLflow server image: builds without torch or sentimentops, serves /health, knows its commit"
build images/mlflow.Dockerfile "localhost/sentimentops-mlflow:$TAG" "PYTHON_IMAGE=$BASE_PY"
podman rm -f sentimentops-mlflow-test >/dev/null 2>&1 || true
podman run -d --name sentimentops-mlflow-test --network=none --read-only --tmpfs /tmp "localhost/sentimentops-mlflow:$TAG" \
  server --host 127.0.0.1 --port 5000 --workers 1 --backend-store-uri sqlite:////tmp/mlflow.db >/dev/null
trap 'podman rm -f sentimentops-mlflow-test >/dev/null 2>&1 || true' EXIT
health=""
for _ in $(seq 1 120); do  # the server's own loopback, from inside the container (no network)
  health=$(podman exec sentimentops-mlflow-test python3 -c '
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=5).read().decode())' 2>/dev/null) && break
  sleep 1
done
echo "mlflow /health: $health"
test "$health" = OK
test "$(podman exec sentimentops-mlflow-test printenv SENTIMENTOPS_GIT_SHA)" = "$GIT_SHA"
podman rm -f sentimentops-mlflow-test >/dev/null
echo "--- image sizes"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sentimentops' | sort
echo "images-test: OK"
