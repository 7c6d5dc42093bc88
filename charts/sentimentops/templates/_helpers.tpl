{{/* Common labels: every object says what it is part of and which release made it. */}}
{{- define "sentimentops.labels" -}}
app.kubernetes.io/name: sentimentops
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "sentimentops.image" -}}
{{ .root.Values.image.registry }}/sentimentops-{{ .name }}:{{ .root.Values.image.tag }}
{{- end }}

{{- define "sentimentops.mlflowUri" -}}
{{- if .Values.mlflow.enabled -}}
http://mlflow.{{ .Release.Namespace }}.svc.cluster.local:5000
{{- else -}}
{{ required "mlflow.externalUri is required when mlflow.enabled is false" .Values.mlflow.externalUri }}
{{- end }}
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

{{/* Where the drift monitor posts persistent drift: the value, else the EventSource service this chart installs. */}}
{{- define "sentimentops.driftWebhookUrl" -}}
{{- if .Values.drift.webhookUrl -}}
{{ .Values.drift.webhookUrl }}
{{- else if and .Values.workflows.enabled (has "EventSource" .Values.workflows.kinds) -}}
http://sentiment-retrain-eventsource-svc.{{ .Release.Namespace }}.svc:12000/retrain
{{- end -}}
{{- end }}
