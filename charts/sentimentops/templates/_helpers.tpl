{{/* Common labels: every object says what it is part of and which release made it. */}}
{{- define "sentimentops.labels" -}}
app.kubernetes.io/name: sentimentops
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion (the package version the release workflow tags). */}}
{{- define "sentimentops.imageTag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "sentimentops.image" -}}
{{ .root.Values.image.registry }}/sentimentops-{{ .name }}:{{ include "sentimentops.imageTag" .root }}
{{- end }}

{{- /* The Host headers the in-chart MLflow server accepts: the Service's names as pods call it (the tracking URI the
workflows get is the first), and loopback. */ -}}
{{- define "sentimentops.mlflowAllowedHosts" -}}
{{- $ns := .Release.Namespace -}}
mlflow.{{ $ns }}.svc.cluster.local:5000,mlflow.{{ $ns }}.svc:5000,mlflow.{{ $ns }}:5000,mlflow:5000,localhost:*,127.0.0.1:*
{{- end }}

{{- define "sentimentops.mlflowUri" -}}
{{- if .Values.mlflow.enabled -}}
http://mlflow.{{ .Release.Namespace }}.svc.cluster.local:5000
{{- else -}}
{{ required "mlflow.externalUri is required when mlflow.enabled is false" .Values.mlflow.externalUri }}
{{- end }}
{{- end }}

{{/*
Where a registered model's files are, as KServe's storage initializer reads them: register maps the version's
`mlflow-artifacts:/<path>` download URI onto this root (tag `storage_uri`; the rollout reads it). A gs:// artifacts
destination is used as it is. A local one is the MLflow server's PVC `mlflow-artifacts` mounted at that path, so a
file at <destination>/<path> is pvc://mlflow-artifacts/<path> (KServe's pvc:// storage URI). Empty with an external
MLflow server: the storage URI is then the download URI itself.
*/}}
{{- define "sentimentops.modelStorageRoot" -}}
{{- $dest := .Values.mlflow.artifactsDestination -}}
{{- if hasPrefix "gs://" $dest -}}
{{ $dest }}
{{- else if .Values.mlflow.enabled -}}
pvc://mlflow-artifacts
{{- end -}}
{{- end }}

{{/* Restricted pod security: non-root, no privilege escalation, no capabilities, read-only root, seccomp. */}}
{{- define "sentimentops.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "sentimentops.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The Secret holding the retraining webhook's bearer token (key `token`). */}}
{{- define "sentimentops.retrainWebhookSecret" -}}
{{ .Values.secrets.retrainWebhook.existingSecret | default "sentiment-retrain-webhook" }}
{{- end }}

{{/* The Secret holding the Slack incoming-webhook URL (key `webhook-url`). */}}
{{- define "sentimentops.slackSecret" -}}
{{ .Values.secrets.alertmanagerSlack.existingSecret | default "sentiment-alertmanager-slack" }}
{{- end }}

{{/*
The Argo documents `sentimentops render` wrote into files/workflows (one YAML document per file, or several
separated by `---`), parsed: a list of maps, in file order. Every consumer (workflows.yaml, rbac.yaml, NOTES.txt)
reads them through this one definition. Returned as YAML (`{docs: [...]}`) because include returns text.
*/}}
{{- define "sentimentops.argoDocuments" -}}
{{- $docs := list }}
{{- range $path, $_ := .Files.Glob "files/workflows/*.yaml" }}
{{- range $text := regexSplit "(?m)^---\\s*$" ($.Files.Get $path) -1 }}
{{- $doc := fromYaml $text }}
{{- if hasKey $doc "Error" }}
{{- fail (printf "%s is not valid YAML: %s" $path $doc.Error) }}
{{- end }}
{{- if $doc }}
{{- $docs = append $docs (dict "path" $path "doc" $doc) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "docs" $docs) }}
{{- end }}

{{/* Is a kind of Argo document rendered (workflows.enabled and listed in workflows.kinds)? "true" or "". */}}
{{- define "sentimentops.argoKind" -}}
{{- if and .root.Values.workflows.enabled (has .kind .root.Values.workflows.kinds) }}true{{ end }}
{{- end }}

{{/*
Walk a parsed document and rename, in place, the service accounts and secrets `sentimentops render` writes under
their default names (contract: the rendered YAML carries the defaults, the chart maps them to values):
every `serviceAccountName: <default>` (workflow spec, each template, the Sensor's pod template, a submitted
Workflow), every `secretKeyRef.name` and every EventSource `authSecret.name`. Names not in the tables stay.
*/}}
{{- define "sentimentops.renameRefs" -}}
{{- $node := .node }}
{{- if kindIs "map" $node }}
{{- range $key, $value := $node }}
{{- if and (eq $key "serviceAccountName") (kindIs "string" $value) }}
{{- if hasKey $.accounts $value }}
{{- $_ := set $node $key (get $.accounts $value) }}
{{- end }}
{{- else if and (has $key (list "secretKeyRef" "authSecret")) (kindIs "map" $value) }}
{{- if and (kindIs "string" $value.name) (hasKey $.secrets (toString $value.name)) }}
{{- $_ := set $value "name" (get $.secrets $value.name) }}
{{- end }}
{{- else }}
{{- include "sentimentops.renameRefs" (dict "node" $value "accounts" $.accounts "secrets" $.secrets) }}
{{- end }}
{{- end }}
{{- else if kindIs "slice" $node }}
{{- range $item := $node }}
{{- include "sentimentops.renameRefs" (dict "node" $item "accounts" $.accounts "secrets" $.secrets) }}
{{- end }}
{{- end }}
{{- end }}
