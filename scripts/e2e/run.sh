#!/usr/bin/env bash
# `make e2e`: the whole loop on a kind cluster, the way it runs on GKE.
#   1. kind cluster (scripts/e2e/kind.yaml): its one node labelled as GKE's gpu-pool, with a fake nvidia.com/gpu
#   2. the platform from charts/platform/versions.yaml, release by release and at the versions terraform installs on
#      GKE (kind-only value overrides: scripts/e2e/platform/<release>.yaml); Argo's quick-start MinIO as the artifact
#      store, at the Argo CLI's version
#   3. every image the rendered templates and the chart use (scripts/e2e/plan.py images: derived, not listed here),
#      built with this commit as GIT_SHA and loaded into kind
#   4. charts/sentimentops with scripts/e2e/values-kind.yaml (no model exists yet: the InferenceService comes in 6)
#   5. a training submitted from the WorkflowTemplate sentiment-training (rollout=skip: nothing serves yet), Succeeded
#   6. the chart upgraded with the InferenceService serving that version; Ready; V1 and V2 answered
#   7. a second training, promoted through the canary (shortened soak) under steady load; the new version served
#   8. a drift POST to the EventSource's webhook starts a workflow from sentiment-training (Argo Events)
# E2E_DRY_RUN=1 (or --plan) prints every command instead of running it: no cluster, no network
# (tests/contract/test_e2e_plan.py checks that plan). Needs: docker (or podman), kind, kubectl, helm, argo at the
# versions.yaml `tools` versions, curl, internet access (charts, upstream images, the Hugging Face hub).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=scripts/e2e
DRY=${E2E_DRY_RUN:-0}
[ "${1:-}" = --plan ] && DRY=1
PY=${E2E_PYTHON:-.venv/bin/python}
CLUSTER=${E2E_CLUSTER:-sentimentops}
NS=sentimentops            # the release namespace (charts/sentimentops renders into it)
TAG=e2e
REG=localhost/sentimentops # images are loaded into the node, never pulled: values-kind.yaml says the same
WORK=/tmp/sentimentops-e2e # kind.yaml mounts it into the node at /srv/sentimentops (the DVC remote lives there)
LOGS=$WORK/logs
TEMPLATE=sentiment-training
ISVC=sentiment
# Argo's quick-start MinIO and its Secret (accesskey/secretkey); values-kind.yaml addresses it by FQDN
# (minio.argo.svc.cluster.local): the short name `minio` does not resolve from the release namespace.
MINIO_NS=argo
# The data, under the gke profile the template defaults to: IMDB from the hub (as on GKE), sampled so that every
# split holds the 100 rows validate needs (steps/validate/checks.py min_rows): train 280, validation 120 (0.3 of the
# 400 sampled), test 120. The demo reviews cannot: without a test split ingest holds out 20% of 400 = 80 test rows.
DATA=(source=hf:stanfordnlp/imdb sample-size=400 val-fraction=0.3 test-size=120 max-length=64 epochs=1 batch-size=16)
# The canary, its soak shortened from 30m/1m; load.py sends 10 requests/s meanwhile, CANARY_PERCENT of them to the
# canary: 120 canary requests over the soak, against the analysis' minimum of 20 (steps/rollout/policy.py).
CANARY_PERCENT=10 SOAK=2m INTERVAL=20s
ENGINE=${CONTAINER_ENGINE:-$(command -v docker >/dev/null && echo docker || echo podman)}

log() { printf '\n=== %s\n' "$*"; }
quoted() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }
# Every command that touches the cluster, the network or the container engine goes through run/capture/background:
# printed (`+ cmd`), and run unless this is a dry run.
run() { printf '+ %s\n' "$(quoted "$@")"; [ "$DRY" = 1 ] || "$@"; }
capture() { # capture VAR cmd...: VAR=$(cmd); a dry run prints it and sets VAR to <VAR>
  local var=$1; shift
  printf '+ %s=$(%s)\n' "$var" "$(quoted "$@")"
  if [ "$DRY" = 1 ]; then printf -v "$var" '<%s>' "$var"; else printf -v "$var" '%s' "$("$@")"; fi
}
background() { # background NAME cmd...: started, its output in $LOGS/NAME.log, stopped on exit
  local name=$1; shift
  printf '+ %s &\n' "$(quoted "$@")"
  [ "$DRY" = 1 ] && return 0
  "$@" >"$LOGS/$name.log" 2>&1 &
  PIDS+=("$!")
}
missing() { # missing KIND NAME [NAMESPACE]: true when the object does not exist yet (always, in a dry run)
  [ "$DRY" = 1 ] || ! kubectl get "$1" "$2" ${3:+--namespace "$3"} >/dev/null 2>&1
}
plan() { "$PY" "$HERE/plan.py" "$@"; } # repository facts: offline, in both modes
fail() { echo "e2e: $*" >&2; exit 1; }
expect() { # expect WHAT ACTUAL WANTED
  [ "$DRY" = 1 ] && return 0
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
  echo "ok: $1 = $3"
}

PIDS=()
on_exit() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$rc" != 0 ] && [ "$DRY" != 1 ]; then # what CI uploads (e2e.yml): enough to see which step failed and why
    kubectl get nodes,pods,events -A -o wide >"$LOGS/cluster.txt" 2>&1 || true
    kubectl -n "$NS" get workflows,inferenceservices,eventsources,sensors,eventbus -o yaml >"$LOGS/objects.yaml" 2>&1 || true
    argo -n "$NS" list >"$LOGS/workflows.txt" 2>&1 || true
    for pod in $(kubectl -n "$NS" get pods -o name 2>/dev/null); do
      kubectl -n "$NS" logs "$pod" --all-containers --prefix >"$LOGS/${pod#pod/}.log" 2>&1 || true
    done
    echo "e2e: FAILED (rc $rc); logs in $LOGS; delete with: kind delete cluster --name $CLUSTER" >&2
  fi
}
trap on_exit EXIT

[ -x "$PY" ] || PY=python3
if [ "$DRY" != 1 ]; then
  for tool in kind kubectl helm argo curl "$ENGINE"; do
    command -v "$tool" >/dev/null || { echo "e2e: $tool is required" >&2; exit 2; }
  done
  [ "$ENGINE" = podman ] && export KIND_EXPERIMENTAL_PROVIDER=podman
  mkdir -p "$LOGS" "$WORK/dvc-remote"
  chmod 1777 "$WORK/dvc-remote" # the steps run as uid 10001 (images/*.Dockerfile USER)
  # The webhook's bearer token: a file handed to the chart (--set-file), never a command-line argument.
  # curl reads the Authorization header from a file (-H @file): the token never appears in a process list.
  "$PY" -c 'import os, secrets, sys
if not os.path.exists(sys.argv[1]):
    token = secrets.token_hex(16)
    open(sys.argv[1], "w").write(token)
    open(sys.argv[2], "w").write(f"Authorization: Bearer {token}\n")' "$WORK/retrain-token" "$WORK/retrain-header"
fi
# Read before anything runs: a repository that cannot say what to install stops the run here (exit 2).
RELEASES=$(plan releases)
IMAGES=$(plan images)
ARGO_VERSION=$(plan tool argo)
CANARY=$(plan canary-name)
FIRST=("${DATA[@]}" seed=42 profile=gke reason=e2e-first rollout=skip)
SECOND=("${DATA[@]}" seed=7 profile=gke reason=e2e-canary rollout=canary rollout-canary-percent=$CANARY_PERCENT
  rollout-soak=$SOAK rollout-interval=$INTERVAL)
plan check-params "$TEMPLATE" "${FIRST[@]%%=*}" "${SECOND[@]%%=*}"
params() { local p; for p in "$@"; do printf -- '-p\n%s\n' "$p"; done; }
mapfile -t FIRST_ARGS < <(params "${FIRST[@]}")
mapfile -t SECOND_ARGS < <(params "${SECOND[@]}")

log "1. kind cluster $CLUSTER"
if [ "$DRY" = 1 ] || ! kind get clusters | grep -qx "$CLUSTER"; then
  run kind create cluster --name "$CLUSTER" --config "$HERE/kind.yaml" --wait 5m
fi
capture NODE kubectl get nodes -o 'jsonpath={.items[0].metadata.name}'
run kubectl label node "$NODE" cloud.google.com/gke-nodepool=gpu-pool --overwrite
# Kubernetes' "advertise extended resources for a node": the train step's nvidia.com/gpu request schedules; torch runs
# on the CPU (the kind image is built with the CPU wheel, step 3).
run kubectl patch node "$NODE" --subresource=status --type=json \
  -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]'

log "2. the platform (charts/platform/versions.yaml)"
while IFS=$'\t' read -r name namespace repo chart version values; do
  args=(helm upgrade --install "$name" "$chart" --namespace "$namespace" --create-namespace)
  [ "$repo" = - ] || args+=(--repo "$repo")
  # A chart of this repository (charts/platform/<chart>) is unversioned: it takes the version as a value.
  case $chart in charts/*) args+=(--set-string "version=$version") ;; *) args+=(--version "$version") ;; esac
  for file in $values; do args+=(-f "$file"); done
  run "${args[@]}" --wait --timeout 15m
done <<<"$RELEASES"
missing namespace "$MINIO_NS" && run kubectl create namespace "$MINIO_NS"
run kubectl apply -n "$MINIO_NS" -k "https://github.com/argoproj/argo-workflows/manifests/quick-start/base/minio?ref=$ARGO_VERSION"
run kubectl -n "$MINIO_NS" rollout status deploy/minio --timeout=5m

log "3. images -> kind"
# The commit every image is built from, as CI passes github.sha (.github/workflows/images.yml): the images bake it in
# as SENTIMENTOPS_GIT_SHA, the steps record it as their git_sha (.git is not in the build context).
capture GIT_SHA git rev-parse HEAD
while IFS=$'\t' read -r image dockerfile; do
  args=("$ENGINE" build -f "$dockerfile" -t "$REG/sentimentops-$image:$TAG" --build-arg "BASE_IMAGE=$REG/sentimentops-base:$TAG"
    --build-arg "GIT_SHA=$GIT_SHA")
  # No GPU on kind: the train image gets the CPU torch wheel (Dockerfile.train's TORCH_INDEX_URL).
  [ "$image" = train ] && args+=(--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)
  run "${args[@]}" .
  [ "$image" = base ] && continue # only built upon, never run
  if [ "$ENGINE" = podman ]; then
    run podman save "$REG/sentimentops-$image:$TAG" -o "$WORK/$image.tar"
    run kind load image-archive "$WORK/$image.tar" --name "$CLUSTER"
  else
    run kind load docker-image "$REG/sentimentops-$image:$TAG" --name "$CLUSTER"
  fi
done <<<"$IMAGES"

log "4. the chart (no model yet: without inferenceService.storageUri it renders no InferenceService)"
missing namespace "$NS" && run kubectl create namespace "$NS"
# The artifact repository's credentials (values-kind.yaml: Secret my-minio-cred) beside the workflows that use them.
run kubectl apply -n "$NS" -f "https://raw.githubusercontent.com/argoproj/argo-workflows/$ARGO_VERSION/manifests/quick-start/base/minio/my-minio-cred-secret.yaml"
# MLflow's database Secrets (the runbook's operator step); kept on a re-run: Postgres keeps its first password.
if missing secret sentimentops-mlflow-db "$NS"; then
  capture PG_PASSWORD "$PY" -c 'import secrets; print(secrets.token_hex(16))'
  run kubectl -n "$NS" create secret generic sentimentops-postgres --from-literal=username=mlflow \
    --from-literal=password="$PG_PASSWORD"
  run kubectl -n "$NS" create secret generic sentimentops-mlflow-db \
    --from-literal=uri="postgresql://mlflow:$PG_PASSWORD@mlflow-postgres:5432/mlflow"
fi
CHART_ARGS=(sentimentops charts/sentimentops --namespace "$NS" -f "$HERE/values-kind.yaml"
  --set-file "secrets.retrainWebhook.token=$WORK/retrain-token" --wait --timeout 10m)
run helm upgrade --install "${CHART_ARGS[@]}"
run kubectl -n "$NS" get workflowtemplate "$TEMPLATE" sentiment-rollout
run kubectl -n "$NS" wait --for=condition=Deployed eventbus/default eventsource/sentiment-retrain sensor/sentiment-retrain \
  --timeout=5m

succeeded() { # succeeded WORKFLOW: waited for, and its phase Succeeded
  run argo -n "$NS" wait "$1"
  capture PHASE kubectl -n "$NS" get workflow "$1" -o 'jsonpath={.status.phase}'
  expect "workflow $1" "$PHASE" Succeeded
}
# The registered version an alias points at and its storage_uri tag (register records the URI KServe reads), asked
# of the MLflow server from inside its own pod (the mlflow image has the client; no port-forward).
MLFLOW_Q='import sys, mlflow; v = mlflow.MlflowClient("http://127.0.0.1:5000").get_model_version_by_alias("sentiment", sys.argv[1]); print(v.version if sys.argv[2] == "version" else v.tags.get("storage_uri", ""))'

log "5. training from the WorkflowTemplate $TEMPLATE"
capture WF1 argo -n "$NS" submit --from "workflowtemplate/$TEMPLATE" -o name "${FIRST_ARGS[@]}"
succeeded "$WF1"
capture V1 kubectl -n "$NS" exec deploy/mlflow -- python -c "$MLFLOW_Q" challenger version
capture URI1 kubectl -n "$NS" exec deploy/mlflow -- python -c "$MLFLOW_Q" challenger storage_uri

log "6. the InferenceService serves version $V1"
run helm upgrade --install "${CHART_ARGS[@]}" --set-string "inferenceService.storageUri=$URI1" \
  --set-string "inferenceService.modelVersion=$V1"
run kubectl -n "$NS" wait --for=condition=Ready "isvc/$ISVC" --timeout=10m
background port-forward kubectl -n "$NS" port-forward "svc/$ISVC-predictor" 18080:80
run sleep 5
V1_URL=http://127.0.0.1:18080/v1/models/$ISVC:predict
capture ANSWER1 curl -fsS -H 'Content-Type: application/json' "$V1_URL" \
  -d '{"instances": ["A wonderful, moving film.", "Dull and far too long."]}'
capture ANSWER2 curl -fsS -H 'Content-Type: application/json' "http://127.0.0.1:18080/v2/models/$ISVC/infer" \
  -d '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["Great acting."]}]}'
if [ "$DRY" != 1 ]; then
  "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); assert len(d["predictions"]) == 2, d' "$ANSWER1"
  "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); assert d["outputs"], d' "$ANSWER2"
  echo "ok: V1 $ANSWER1"; echo "ok: V2 $ANSWER2"
fi

log "7. a second training, promoted through the canary"
# In the cluster users are the load the analysis judges; here a pod sends it (scripts/e2e/load.py, mounted from a
# ConfigMap) until it is deleted, and splits it between the stable and the canary Service (load.py says why).
STABLE_URL=http://$ISVC-predictor.$NS.svc.cluster.local/v1/models/$ISVC:predict
CANARY_URL=http://$ISVC-$CANARY-predictor.$NS.svc.cluster.local/v1/models/$ISVC:predict
LOAD_POD='{"spec": {"volumes": [{"name": "load", "configMap": {"name": "e2e-load"}}], "containers": [{"name": "e2e-load", "image": "'"$REG/sentimentops-rollout:$TAG"'", "command": ["python", "/e2e/load.py", "'"$STABLE_URL"'", "'"$CANARY_URL"'", "'"$CANARY_PERCENT"'", "10", "0"], "volumeMounts": [{"name": "load", "mountPath": "/e2e"}]}]}}'
missing configmap e2e-load "$NS" && run kubectl -n "$NS" create configmap e2e-load --from-file="$HERE/load.py"
run kubectl -n "$NS" run e2e-load --restart=Never --image="$REG/sentimentops-rollout:$TAG" --overrides="$LOAD_POD"
capture WF2 argo -n "$NS" submit --from "workflowtemplate/$TEMPLATE" -o name "${SECOND_ARGS[@]}"
succeeded "$WF2"
run kubectl -n "$NS" logs e2e-load
run kubectl -n "$NS" delete pod e2e-load --wait=false
capture PHASE kubectl -n "$NS" get isvc "$ISVC" -o 'jsonpath={.metadata.annotations.sentimentops\.io/rollout-phase}'
expect "rollout phase" "$PHASE" promoted
capture V2 kubectl -n "$NS" get isvc "$ISVC" -o 'jsonpath={.metadata.annotations.sentimentops\.io/rollout-candidate-version}'
[ "$DRY" = 1 ] || [ "$V2" != "$V1" ] || fail "the canary promoted version $V2, the version already served"
capture CHAMPION kubectl -n "$NS" exec deploy/mlflow -- python -c "$MLFLOW_Q" champion version
expect "champion after the canary" "$CHAMPION" "$V2"
capture URI2 kubectl -n "$NS" exec deploy/mlflow -- python -c "$MLFLOW_Q" champion storage_uri
capture SERVED_URI kubectl -n "$NS" get isvc "$ISVC" -o 'jsonpath={.spec.predictor.model.storageUri}'
expect "storageUri served" "$SERVED_URI" "$URI2"
run kubectl -n "$NS" wait --for=condition=Ready "isvc/$ISVC" --timeout=10m
# The predictor answering now is the promoted version (each prediction carries its model_version).
background port-forward-promoted kubectl -n "$NS" port-forward "svc/$ISVC-predictor" 18081:80
run sleep 5
capture ANSWER3 curl -fsS -H 'Content-Type: application/json' "http://127.0.0.1:18081/v1/models/$ISVC:predict" \
  -d '{"instances": ["A wonderful, moving film."]}'
[ "$DRY" = 1 ] || "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); v = d["predictions"][0]["model_version"]
assert v == sys.argv[2], f"served model_version {v}, promoted {sys.argv[2]}"' "$ANSWER3" "$V2"

log "8. a drift POST starts a training workflow (Argo Events)"
REASON="drift: e2e $(date +%s)"
background eventsource kubectl -n "$NS" port-forward svc/sentiment-retrain-eventsource-svc 12000:12000
run sleep 5
run curl -fsS -X POST http://127.0.0.1:12000/retrain -H 'Content-Type: application/json' \
  -H "@$WORK/retrain-header" -d "{\"reason\": \"$REASON\"}"
# The Sensor's workflow: from the template, with the POSTed reason as its `reason` parameter.
STARTED=
for _ in $(seq 60); do
  capture STARTED kubectl -n "$NS" get workflows -o \
    "jsonpath={range .items[?(@.spec.workflowTemplateRef.name==\"$TEMPLATE\")]}{.metadata.name} {.spec.arguments.parameters[?(@.name==\"reason\")].value}{\"\\n\"}{end}"
  [ "$DRY" = 1 ] && break
  STARTED=$(grep -F "$REASON" <<<"$STARTED" | cut -d' ' -f1 || true)
  [ -n "$STARTED" ] && break
  sleep 5
done
[ "$DRY" = 1 ] || [ -n "$STARTED" ] || fail "no workflow from $TEMPLATE with reason '$REASON' within 5 minutes"
# It would train on the whole dataset: proven started, it is stopped (its exit handler still runs).
run argo -n "$NS" stop "$STARTED"

if [ "$DRY" = 1 ]; then echo; echo "e2e: plan complete (dry run: nothing above was run)"; exit 0; fi
echo; echo "e2e: OK (delete with: kind delete cluster --name $CLUSTER)"
