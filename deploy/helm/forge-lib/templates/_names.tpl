{{/* Names, labels, image and switches shared by every Forge chart. */}}

{{/* "forge-gateway" for release "forge" (the umbrella) and for release "forge-gateway" alike. */}}
{{- define "forge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (.Chart.Name | trimPrefix "forge-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "forge.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "forge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{ include "forge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.component }}
app.kubernetes.io/part-of: forge
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The umbrella's `global` block, or an empty one when the chart is installed alone. */}}
{{- define "forge.global" -}}
{{- toYaml (.Values.global | default dict) -}}
{{- end -}}

{{/* "true" when a feature is on in this chart's values or in the umbrella's `global`. */}}
{{- define "forge.on" -}}
{{- $global := fromYaml (include "forge.global" .root) -}}
{{- $local := index .root.Values .feature | default dict -}}
{{- $shared := index $global .feature | default dict -}}
{{- if or $local.enabled $shared.enabled }}true{{ end -}}
{{- end -}}

{{- define "forge.image" -}}
{{- $global := fromYaml (include "forge.global" .) -}}
{{- $shared := $global.image | default dict -}}
{{- $registry := $shared.registry | default .Values.image.registry -}}
{{- $tag := .Values.image.tag | default $shared.tag | default .Chart.AppVersion -}}
{{- $ref := printf "%s/%s:%s" $registry .Values.image.name $tag -}}
{{- with .Values.image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{- define "forge.pullPolicy" -}}
{{- $global := fromYaml (include "forge.global" .) -}}
{{- .Values.image.pullPolicy | default ($global.image | default dict).pullPolicy | default "IfNotPresent" -}}
{{- end -}}

{{/*
FORGE_* settings: this chart's config with the umbrella's global.config on top (one place for the
shared addresses); a per-service exception goes in the chart's extraEnv, which wins over both.
*/}}
{{- define "forge.config" -}}
{{- $global := fromYaml (include "forge.global" .) -}}
{{- $config := merge (deepCopy ($global.config | default dict)) (deepCopy (.Values.config | default dict)) -}}
{{- /* A setting listed in secretEnv comes from its Secret only (e.g. a NATS URL with a password). */ -}}
{{- range .Values.secretEnv -}}
{{- $_ := unset $config .name -}}
{{- end -}}
{{- if .Values.service.enabled -}}
{{- $_ := set $config "FORGE_HOST" "0.0.0.0" -}}
{{- $_ := set $config "FORGE_PORT" (toString .Values.service.port) -}}
{{- end -}}
{{- if eq (.Values.executor | default "nats") "argo" -}}
{{/* The Argo executor (pipeline only, docs/argo.md). */}}
{{- $argo := .Values.argo -}}
{{- $_ := set $config "FORGE_EXECUTOR" "argo" -}}
{{- $_ := set $config "FORGE_ARGO_SERVER_URL" $argo.serverUrl -}}
{{- $_ := set $config "FORGE_ARGO_NAMESPACE" ($argo.namespace | default .Release.Namespace) -}}
{{- $_ := set $config "FORGE_ARGO_VERIFY_TLS" (toString $argo.verifyTls) -}}
{{- $shared := $global.image | default dict -}}
{{- $worker := printf "%s/forge-worker:%s" ($shared.registry | default .Values.image.registry) (.Values.image.tag | default $shared.tag | default .Chart.AppVersion) -}}
{{- $_ := set $config "FORGE_ARGO_IMAGE" ($argo.image | default $worker) -}}
{{- $_ := set $config "FORGE_ARGO_COMMAND" $argo.command -}}
{{- $_ := set $config "FORGE_ARGO_ENV_SECRET" $argo.envSecret -}}
{{- $_ := set $config "FORGE_ARGO_POLL_INTERVAL" $argo.pollInterval -}}
{{- $_ := set $config "FORGE_ARGO_DEADLINE_GRACE" $argo.deadlineGrace -}}
{{- $_ := set $config "FORGE_ARGO_TOKEN_FILE" "/var/run/secrets/forge/argo/token" -}}
{{- if $argo.rbac.create -}}
{{- $_ := set $config "FORGE_ARGO_SERVICE_ACCOUNT" (printf "%s-jobs" (include "forge.fullname" .)) -}}
{{- end -}}
{{- end -}}
{{- if (.Values.migration | default dict).enabled -}}
{{/* The migration Job migrates before the pods roll: replicas must not race at start. */}}
{{- $_ := set $config "FORGE_MIGRATE_ON_START" "false" -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Credentials: every one comes from an existing Secret (secretEnv), never from values. */}}
{{- define "forge.secretEnv" -}}
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      optional: {{ .optional | default false }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "forge.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: http
periodSeconds: {{ .probe.periodSeconds | default 10 }}
timeoutSeconds: {{ .probe.timeoutSeconds | default 2 }}
failureThreshold: {{ .probe.failureThreshold | default 3 }}
{{- end -}}
