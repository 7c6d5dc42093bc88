# syntax=docker/dockerfile:1
# The rollout steps (docs/rollout.md): the base plus the `rollout` extra of pyproject.toml, nothing else.
#   docker build -f images/rollout.Dockerfile --build-arg BASE_IMAGE=<registry>/sentimentops-base:<tag> -t sentimentops-rollout .
# checkov:skip=CKV_DOCKER_7:BASE_IMAGE is the base built from this commit (tagged with its git SHA by images.yml, 0.1.0 by default); checkov cannot read through the ARG
ARG BASE_IMAGE=sentimentops-base:0.1.0
FROM ${BASE_IMAGE}

USER 0
WORKDIR /src
RUN pip install --no-cache-dir --constraint images/constraints.txt "/src[rollout]"

# Health is judged by Kubernetes probes (chart) and step exit codes (Argo), not by Docker.
HEALTHCHECK NONE
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["sentimentops"]
CMD ["rollout", "--help"]
