#!/usr/bin/env bash
# `make images-test` (opt-in, root, needs apt and PyPI): build the base and one CPU stage image (validate) with
# podman, then run the validate stage in the image on a tiny dataset with no network.
#
# No Docker engine and no image registry are reachable here (shared/STACK-NOTES.md), so the Python base is a
# Debian bookworm made by debootstrap and `podman import`ed (python3.11, like python:3.11-slim-bookworm that CI
# uses). podman runs with runc, the host network only for the builds' pip/apt, and --network=none to run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${SENTIMENTOPS_IMAGES_WORK:-/var/tmp/sentimentops-images}
BASE_PY=localhost/sentimentops-debian-python:bookworm
TAG=test
mkdir -p "$WORK"

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman debootstrap runc
fi

# STACK-NOTES: runc, small ulimits, no default (bridge) network.
export CONTAINERS_CONF=$WORK/containers.conf
cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

if ! podman image exists "$BASE_PY"; then
  rootfs=$WORK/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_PY"
  rm -rf "$rootfs"
fi

# Where the host reaches PyPI through a TLS-inspecting proxy, its CA bundle and a pip.conf naming it are mounted
# into the build steps (nothing lands in the image).
PIP_CONF=$WORK/pip.conf
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$PIP_CONF"
MOUNTS=(-v "$PIP_CONF:/etc/pip.conf:ro,Z")
[ -f /etc/ssl/certs/ca-certificates.crt ] && MOUNTS+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)

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
