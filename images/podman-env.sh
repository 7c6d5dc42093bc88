#!/usr/bin/env bash
# Sourced by images/podman-test.sh (`make images-test`) and steps/serve/image_test.sh (`make image-test`): podman
# set up as these machines allow, and the Debian Python base both image tests build on.
#
# No Docker engine and no image registry are reachable here (shared/STACK-NOTES.md), so the Python base is a
# Debian bookworm made by debootstrap and `podman import`ed (python3.11, like python:3.11-slim-bookworm that CI
# uses). podman runs with runc, the host network only for the builds' pip/apt, and --network=none to run.
# Expects REPO to be set; defines WORK, BASE_PY, CONTAINERS_CONF and MOUNTS (the build-time pip mounts).
WORK=${SENTIMENTOPS_IMAGES_WORK:-/var/tmp/sentimentops-images}
BASE_PY=localhost/sentimentops-debian-python:bookworm
mkdir -p "$WORK"

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
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
