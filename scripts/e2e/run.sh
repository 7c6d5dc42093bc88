#!/usr/bin/env bash
# `make e2e`: the whole system on a kind cluster, end to end.
#   1. kind cluster (scripts/e2e/kind.yaml), the node labelled as the GKE gpu-pool with a fake nvidia.com/gpu
#   2. cert-manager, KServe (RawDeployment), Argo Workflows (+ MinIO artifact repository), kube-prometheus-stack
#   3. images built from images/ and Dockerfile.train/.serve, loaded into kind
#   4. charts/sentimentops with scripts/e2e/values-kind.yaml
#   5. `argo submit --from workflowtemplate/sentiment-training-v0-1-0` on the demo reviews, waited for
#   6. the InferenceService `sentiment` becomes Ready and answers a V1 and a V2 request
# Needs: docker (or podman: KIND_EXPERIMENTAL_PROVIDER=podman), kind, kubectl, helm, argo; internet access.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/e2e
CLUSTER=${E2E_CLUSTER:-sentimentops}
NS=sentimentops
TAG=e2e
REG=localhost/sentimentops
ARGO_VERSION=${ARGO_VERSION:-v4.1.2}
KSERVE_VERSION=${KSERVE_VERSION:-v0.20.0}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.16.2}
KPS_VERSION=${KPS_VERSION:-66.3.1}
ENGINE=${CONTAINER_ENGINE:-$(command -v docker >/dev/null && echo docker || echo podman)}
VERSION=$(python3 -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
TEMPLATE="sentiment-training-v${VERSION//./-}"

for tool in kind kubectl helm argo "$ENGINE"; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
done
[ "$ENGINE" = podman ] && export KIND_EXPERIMENTAL_PROVIDER=podman
log() { printf '\n=== %s\n' "$*"; }

log "1. kind cluster $CLUSTER"
mkdir -p /tmp/sentimentops-e2e
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config "$HERE/kind.yaml" --wait 5m
NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
kubectl label node "$NODE" cloud.google.com/gke-nodepool=gpu-pool --overwrite
kubectl patch node "$NODE" --subresource=status --type=json \
  -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]'

log "2. cert-manager, KServe (RawDeployment), Argo Workflows, kube-prometheus-stack"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy/cert-manager-webhook --timeout=5m
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=5m
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"
kubectl -n kserve patch configmap inferenceservice-config --type=merge \
  -p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"RawDeployment\"}"}}'
kubectl create namespace argo --dry-run=client -o yaml | kubectl apply -f -
kubectl -n argo apply -f "https://github.com/argoproj/argo-workflows/releases/download/$ARGO_VERSION/quick-start-minimal.yaml"
kubectl -n argo patch configmap workflow-controller-configmap --type=merge \
  -p "{\"data\":{\"workflowDefaults\":$(python3 -c 'import json,sys,yaml;print(json.dumps(yaml.dump(yaml.safe_load(open(sys.argv[1]))["workflowDefaults"])))' "$HERE/workflow-defaults.yaml")}}"
kubectl -n argo rollout restart deploy/workflow-controller
kubectl -n argo rollout status deploy/workflow-controller --timeout=5m
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack --version "$KPS_VERSION" \
  -n monitoring --create-namespace --wait --timeout 10m \
  --set grafana.sidecar.dashboards.searchNamespace=ALL

log "3. images -> kind"
build() { "$ENGINE" build -f "$1" --build-arg "BASE_IMAGE=$REG/sentimentops-base:$TAG" "${@:3}" -t "$REG/sentimentops-$2:$TAG" .; }
build images/base.Dockerfile base
for stage in ingest validate version evaluate register mlflow; do build "images/$stage.Dockerfile" "$stage"; done
build Dockerfile.train train --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
build Dockerfile.serve serve
for image in ingest validate version train evaluate register serve mlflow; do
  if [ "$ENGINE" = podman ]; then
    "$ENGINE" save "$REG/sentimentops-$image:$TAG" -o "/tmp/sentimentops-e2e/$image.tar"
    kind load image-archive "/tmp/sentimentops-e2e/$image.tar" --name "$CLUSTER"
  else
    kind load docker-image "$REG/sentimentops-$image:$TAG" --name "$CLUSTER"
  fi
done

log "4. the chart"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
# Argo's quick-start MinIO credentials, for the artifact repository the controller points workflows at.
kubectl -n argo get secret my-minio-cred -o json | python3 -c 'import json,sys;d=json.load(sys.stdin);m=d["metadata"];d["metadata"]={"name":m["name"]};print(json.dumps(d))' \
  | kubectl -n "$NS" apply -f -
PG_PASSWORD=$(python3 -c 'import secrets;print(secrets.token_hex(16))')
kubectl -n "$NS" create secret generic sentimentops-postgres --from-literal=username=mlflow \
  --from-literal=password="$PG_PASSWORD" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" create secret generic sentimentops-mlflow-db \
  --from-literal=uri="postgresql://mlflow:$PG_PASSWORD@mlflow-postgres:5432/mlflow" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install sentimentops charts/sentimentops -n "$NS" -f "$HERE/values-kind.yaml" --wait --timeout 10m \
  --set inferenceService.enabled=false
kubectl -n "$NS" get workflowtemplate "$TEMPLATE"

log "5. training workflow on the demo reviews"
argo submit -n "$NS" --from "workflowtemplate/$TEMPLATE" --serviceaccount sentimentops-training --wait --log \
  -p source=demo -p sample-size=300 -p test-size=80 -p epochs=1 -p max-length=64 -p batch-size=16 \
  -p base-model=distilbert-base-uncased -p profile=gke -p reason="e2e" \
  -p image-registry="$REG" -p image-tag="$TAG"
argo list -n "$NS" --completed | grep -q Succeeded

log "6. the InferenceService answers"
helm upgrade sentimentops charts/sentimentops -n "$NS" -f "$HERE/values-kind.yaml" --wait --timeout 10m
kubectl -n "$NS" wait --for=condition=Ready isvc/sentiment --timeout=10m
kubectl -n "$NS" port-forward svc/sentiment-predictor 18080:80 >/tmp/sentimentops-e2e/port-forward.log 2>&1 &
PF=$!
trap 'kill $PF 2>/dev/null || true' EXIT
sleep 3
curl -fsS -H 'Content-Type: application/json' http://127.0.0.1:18080/v1/models/sentiment:predict \
  -d '{"instances": ["A wonderful, moving film.", "Dull and far too long."]}' | tee /tmp/sentimentops-e2e/v1.json
curl -fsS -H 'Content-Type: application/json' http://127.0.0.1:18080/v2/models/sentiment/infer \
  -d '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Great acting."]}]}' \
  | tee /tmp/sentimentops-e2e/v2.json
python3 -c 'import json;d=json.load(open("/tmp/sentimentops-e2e/v1.json"));assert len(d["predictions"])==2, d'
echo; echo "e2e: OK (delete with: kind delete cluster --name $CLUSTER)"
