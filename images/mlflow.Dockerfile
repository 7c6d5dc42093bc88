# syntax=docker/dockerfile:1
# The MLflow tracking server of the chart (charts/sentimentops templates/mlflow.yaml): standalone and slim, not built
# on sentimentops-base. It runs `mlflow server` only, so it installs MLflow (the version the steps log with: pinned
# once, by images/constraints.txt), the Postgres driver for the backend store (Cloud SQL through the Auth Proxy on
# GKE, the in-chart Postgres on kind) and the GCS client for the artifact store. No sentimentops package, no torch.
#   docker build -f images/mlflow.Dockerfile -t sentimentops-mlflow .
# PYTHON_IMAGE: python:3.11-slim (Debian bookworm) in CI; `make images-test` passes a debootstrap-built bookworm.
# checkov:skip=CKV_DOCKER_7:the default PYTHON_IMAGE is a patch-pinned tag (python:3.11.14-slim-bookworm); checkov cannot read through the ARG
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY images/constraints.txt ./constraints.txt
# mlflow and google-cloud-storage take their versions from the constraints (the suite's); psycopg2-binary is not in
# the suite's environment (tests use sqlite), so it is pinned here. The assertion keeps torch out for good.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --constraint constraints.txt mlflow google-cloud-storage psycopg2-binary==2.9.10 \
    && /opt/venv/bin/mlflow --version \
    && /opt/venv/bin/python -c "import psycopg2, google.cloud.storage" \
    && ! /opt/venv/bin/python -c "import torch" 2>/dev/null \
    && ! /opt/venv/bin/python -c "import sentimentops" 2>/dev/null \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/lib/python3*/site-packages/setuptools

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 sentimentops \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin sentimentops
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MLFLOW_DISABLE_TELEMETRY=true
# The commit this image is built from (images.yml passes github.sha; scripts/e2e/run.sh and the podman tests pass
# `git rev-parse HEAD`: .git is not in the build context). Declared last, so a new commit rebuilds only these layers.
ARG GIT_SHA=""
ENV SENTIMENTOPS_GIT_SHA=${GIT_SHA}
LABEL org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.source="https://github.com/sentimentops/sentimentops"
USER 10001:10001
WORKDIR /tmp
EXPOSE 5000
# Health is judged by Kubernetes probes (the chart's /health), not by Docker.
HEALTHCHECK NONE
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
