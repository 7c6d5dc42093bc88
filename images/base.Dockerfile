# syntax=docker/dockerfile:1
# The one base of every SentimentOps image: Python 3.11 (the version the suite runs on), a virtualenv at /opt/venv
# with the core package (typed config, manifests, the `sentimentops` CLI) and a non-root user 10001. Stage images
# add only their own extra (images/<stage>.Dockerfile), the training image CUDA torch (Dockerfile.train).
#   docker build -f images/base.Dockerfile -t sentimentops-base:0.1.0 .
# PYTHON_IMAGE: python:3.11-slim (Debian bookworm) in CI; `make images-test` passes a debootstrap-built bookworm.
# checkov:skip=CKV_DOCKER_7:the default PYTHON_IMAGE is a patch-pinned tag (python:3.11.14-slim-bookworm); checkov cannot read through the ARG
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    SENTIMENTOPS_PROFILE=gke \
    SENTIMENTOPS_DVC_CONFIG=/src/.dvc/config

RUN python3 -m venv /opt/venv \
    && groupadd --gid 10001 sentimentops \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin sentimentops

WORKDIR /src
COPY pyproject.toml README.md ./
COPY steps ./steps
COPY workflows ./workflows
# DVC's settings (analytics off; steps/core/snapshots.py): one committed file, found through SENTIMENTOPS_DVC_CONFIG.
COPY .dvc/config ./.dvc/config
COPY images/constraints.txt ./images/constraints.txt
# Build and install the core package only; /src stays so stage images can add `/src[<extra>]`.
RUN pip install --no-cache-dir --constraint images/constraints.txt /src

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
CMD ["--help"]
