{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "sip-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels selecting one component's pods: (dict "root" $ "name" "sip-redis"). */}}
{{- define "sip-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Every label of one component's objects: (dict "root" $ "name" "sip-redis"). */}}
{{- define "sip-operator.labels" -}}
{{ include "sip-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sip-operator
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sip-operator.serviceAccountName" -}}
{{- default (include "sip-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The namespaces the operator watches, one per line (empty with watch.allNamespaces). */}}
{{- define "sip-operator.watchNamespaces" -}}
{{- if not .Values.watch.allNamespaces -}}
{{- range (default (list .Release.Namespace) .Values.watch.namespaces | uniq) }}
{{ . }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The namespaces worker pods run in, one per line: each gets their NetworkPolicy and Secret. */}}
{{- define "sip-operator.workerNamespaces" -}}
{{- if .Values.watch.allNamespaces -}}
{{- range (default (list .Release.Namespace) .Values.watch.sessionNamespaces | uniq) }}
{{ . }}
{{- end -}}
{{- else -}}
{{- include "sip-operator.watchNamespaces" . -}}
{{- end -}}
{{- end -}}

{{/* "true" when kopf peering is on: more than one operator replica. */}}
{{- define "sip-operator.peering" -}}
{{- gt (int .Values.operator.replicas) 1 | ternary "true" "" -}}
{{- end -}}

{{/* The kopf peering object the operator replicas share (their --peering): named after the
release, so that another kopf operator's "default" peering neither pauses nor is paused by it. */}}
{{- define "sip-operator.peeringName" -}}
{{- include "sip-operator.fullname" . -}}
{{- end -}}

{{- define "sip-operator.redisName" -}}
{{- printf "%s-redis" (include "sip-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Redis URL the operator and the workers use; never holds the password. */}}
{{- define "sip-operator.redisUrl" -}}
{{- if .Values.redis.external.url -}}
{{- .Values.redis.external.url -}}
{{- else -}}
{{- printf "redis://%s.%s.svc:6379/0" (include "sip-operator.redisName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The configuration of the Redis the chart deploys. */}}
{{- define "sip-operator.redisConf" -}}
# Every status is appended to a stream: the append-only file on the PVC makes them durable.
appendonly yes
appendfsync {{ .Values.redis.appendfsync }}
dir /data
port 6379
include /etc/redis/auth/auth.conf
{{- end }}

{{/* The Secret holding the Redis password, empty when the external Redis has none. */}}
{{- define "sip-operator.redisSecretName" -}}
{{- if .Values.redis.external.url -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- include "sip-operator.redisName" . -}}
{{- end -}}
{{- end -}}

{{- define "sip-operator.redisSecretKey" -}}
{{- if .Values.redis.external.url -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- else -}}
password
{{- end -}}
{{- end -}}

{{/* Refuses values no schema can express: an RTP range that ends before it starts, a
monitor of a metrics port that is off, a scrape timeout longer than its interval. */}}
{{- define "sip-operator.checkValues" -}}
{{- if lt (int .Values.worker.rtpPortEnd) (int .Values.worker.rtpPortStart) -}}
{{- fail "worker.rtpPortEnd must not be below worker.rtpPortStart" -}}
{{- end -}}
{{- if and .Values.operator.metricsPort (eq (int .Values.operator.metricsPort) (int .Values.operator.livenessPort)) -}}
{{- fail "operator.metricsPort must differ from operator.livenessPort" -}}
{{- end -}}
{{- if and .Values.metrics.podMonitor.enabled (not .Values.worker.metricsPort) -}}
{{- fail "metrics.podMonitor.enabled needs worker.metricsPort (it is 0, metrics off)" -}}
{{- end -}}
{{- if and .Values.metrics.operatorMonitor.enabled (not .Values.operator.metricsPort) -}}
{{- fail "metrics.operatorMonitor.enabled needs operator.metricsPort (it is 0, metrics off)" -}}
{{- end -}}
{{- range $monitor := list "podMonitor" "operatorMonitor" }}
{{- $values := index $.Values.metrics $monitor }}
{{- if and $values.scrapeTimeout (gt (int64 (include "sip-operator.milliseconds" $values.scrapeTimeout)) (int64 (include "sip-operator.milliseconds" $values.interval))) }}
{{- fail (printf "metrics.%s.scrapeTimeout (%s) must not exceed its interval (%s)" $monitor $values.scrapeTimeout $values.interval) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A duration the schema admits (a number and ms, s, m or h) in milliseconds. */}}
{{- define "sip-operator.milliseconds" -}}
{{- $unit := regexFind "[a-z]+$" . -}}
{{- $perUnit := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- mul (regexFind "^[0-9]+" . | int64) (index $perUnit $unit) -}}
{{- end -}}

{{- define "sip-operator.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The container security context every container of the chart runs with. */}}
{{- define "sip-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}
