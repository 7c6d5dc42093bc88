#!/usr/bin/env bash
# `make images-test` (opt-in, root, needs apt and PyPI): build the base and one CPU stage image (validate) with
# podman, then run the validate stage in the image on a tiny dataset with no network.
# podman set-up and the Debian Python base: images/podman-env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TAG=test
# shellcheck source=images/podman-env.sh
source "$REPO/images/podman-env.sh"

build() {  # build <dockerfile> <image> [build-arg ...]
  local file=$1 image=$2; shift 2
  local args=("${MOUNTS[@]}")
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
echo "--- image sizes"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'sentimentops' | sort
echo "images-test: OK"
