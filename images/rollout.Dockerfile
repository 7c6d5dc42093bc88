# syntax=docker/dockerfile:1
# The rollout steps (docs/rollout.md): the base plus the `rollout` extra of pyproject.toml, nothing else.
#   docker build -f images/rollout.Dockerfile --build-arg BASE_IMAGE=<registry>/sentimentops-base:<tag> -t sentimentops-rollout .
# checkov:skip=CKV_DOCKER_7:BASE_IMAGE is the base built from this commit (tagged with its git SHA by images.yml, 0.1.0 by default); checkov cannot read through the ARG
ARG BASE_IMAGE=sentimentops-base:0.1.0
FROM ${BASE_IMAGE}

USER 0
WORKDIR /src
RUN pip install --no-cache-dir --constraint images/constraints.txt "/src[rollout]"

# The commit this image is built from (images.yml passes github.sha; scripts/e2e/run.sh and the podman tests pass
# `git rev-parse HEAD`: .git is not in the build context). Steps record it as their git_sha
# (steps/core/manifests.py; empty = unknown). Declared last, so a new commit rebuilds only these layers.
ARG GIT_SHA=""
ENV SENTIMENTOPS_GIT_SHA=${GIT_SHA}
LABEL org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.source="https://github.com/sentimentops/sentimentops"
# Health is judged by Kubernetes probes (chart) and step exit codes (Argo), not by Docker.
HEALTHCHECK NONE
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["sentimentops"]
CMD ["rollout", "--help"]
