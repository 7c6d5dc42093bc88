#!/usr/bin/env bash
# Sourced by images/podman-test.sh (`make images-test`) and steps/serve/image_test.sh (`make image-test`): podman
# set up as these machines allow, and the Debian Python base both image tests build on.
#
# No Docker engine and no image registry are reachable here (docs/measurements.md), so the Python base is a
# Debian bookworm made by debootstrap and `podman import`ed (python3.11, like python:3.11-slim-bookworm that CI
# uses). podman runs with runc, the host network only for the builds' pip/apt, and --network=none to run.
# Expects REPO to be set; defines WORK, BASE_PY, CONTAINERS_CONF and MOUNTS (the build-time pip mounts).
# The Debian mirror debootstrap uses: $DEBIAN_MIRROR, else the one this host's apt uses, else deb.debian.org.
WORK=${SENTIMENTOPS_IMAGES_WORK:-/var/tmp/sentimentops-images}
BASE_PY=localhost/sentimentops-debian-python:bookworm
mkdir -p "$WORK"

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman debootstrap runc
fi

# runc, small ulimits, no default (bridge) network (docs/measurements.md, Containers and cluster).
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

# The mirror for `debootstrap <suite>`: $DEBIAN_MIRROR if set, else the one this host's own apt already reaches (a
# network that allows only a local mirror or a caching proxy still builds), else the public default. deb822 files
# (/etc/apt/sources.list.d/*.sources, Debian 12's default) first, then one-line `deb URL suite ...` lists. A source
# naming the suite itself wins; next, a Debian archive (a URL ending in /debian) for another release, since every
# full mirror carries bookworm too; never -security or -updates (they hold no base system). Prints the URL.
# APT_ETC (default /etc/apt) is for tests: `APT_ETC=/tmp/fake debian_mirror bookworm`.
debian_mirror() {
  local suite=${1:-bookworm} etc=${APT_ETC:-/etc/apt} url
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "${DEBIAN_MIRROR%/}"
    return
  fi
  url=$(
    {
      # deb822: stanzas split by blank lines, case-insensitive keys, `Enabled: no` turns one off.
      for f in "$etc"/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" '
          function flush(   n, u, i, s, ns) {
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no" && uris != "") {
              sub(/^[ \t]+/, "", uris); sub(/^[ \t]+/, "", suites)
              n = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
              for (i = 1; i <= ns; i++) {
                if (s[i] == suite) { print 1, u[1]; break }
                if (s[i] !~ /[-\/]/ && u[1] ~ /\/debian\/?$/) { print 2, u[1]; break }
              }
            }
            types = suites = uris = enabled = ""; key = ""
          }
          /^[ \t]*#/ { next }
          /^[ \t]*$/ { flush(); next }
          /^[ \t]/ { if (key == "uris") uris = uris " " $0; else if (key == "suites") suites = suites " " $0; next }
          {
            key = tolower($0); sub(/:.*/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t\r]+$/, "", val)
            if (key == "types") types = val; else if (key == "uris") uris = val
            else if (key == "suites") suites = val; else if (key == "enabled") enabled = tolower(val)
          }
          END { flush() }' "$f"
      done
      # one-line format: deb [options] URL suite component...
      for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '
          $1 == "deb" && NF >= 3 {
            if ($3 == suite) print 1, $2
            else if ($3 !~ /[-\/]/ && $2 ~ /\/debian\/?$/) print 2, $2
          }'
      done
    } | awk '$2 ~ /^(https?|file):/' | sort -s -k1,1n | awk 'NR == 1 { print $2 }'
  )
  url=${url:-http://deb.debian.org/debian}
  echo "${url%/}"
}

if ! podman image exists "$BASE_PY"; then
  rootfs=$WORK/rootfs
  rm -rf "$rootfs"
  mirror=$(debian_mirror bookworm)
  echo "debootstrap bookworm from $mirror" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$mirror"
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
