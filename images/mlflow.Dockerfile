# syntax=docker/dockerfile:1
# The MLflow tracking server of the chart (charts/sentimentops/templates/mlflow.yaml): the version the steps use,
# the Postgres driver for the backend store and the GCS client for the artifact store.
# checkov:skip=CKV_DOCKER_7:BASE_IMAGE is the base built from this commit (tagged with its git SHA by images.yml, 0.1.0 by default); checkov cannot read through the ARG
ARG BASE_IMAGE=sentimentops-base:0.1.0
FROM ${BASE_IMAGE}

USER 0
WORKDIR /src
RUN pip install --no-cache-dir --constraint images/constraints.txt "/src[register]" psycopg2-binary==2.9.10 google-cloud-storage==2.19.0

# Health is judged by Kubernetes probes (chart) and step exit codes (Argo), not by Docker.
HEALTHCHECK NONE
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["mlflow"]
CMD ["server", "--help"]
