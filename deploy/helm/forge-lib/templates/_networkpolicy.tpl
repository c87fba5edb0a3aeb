{{/*
Only what the service needs: its HTTP port from the Forge components that call it, the ingress
controller (gateway) and Prometheus; out to DNS, the Forge components it calls and the external
dependencies listed in networkPolicy.egress (Postgres, NATS, S3, Keycloak, GitHub, ...).
*/}}
{{- define "forge.networkPolicy" -}}
{{- if include "forge.on" (dict "root" . "feature" "networkPolicy") }}
{{- $np := .Values.networkPolicy }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "forge.selectorLabels" . | nindent 6 }}
  policyTypes: [Ingress, Egress]
  ingress:
    {{- if .Values.service.enabled }}
    {{- $peers := list }}
    {{- range $np.allowFrom }}
    {{- $peers = append $peers (dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/part-of" "forge" "app.kubernetes.io/component" .))) }}
    {{- end }}
    {{- $peers = concat $peers ($np.extraIngressFrom | default list) }}
    {{- if .Values.metrics.enabled }}
    {{- $peers = concat $peers ($np.metricsFrom | default list) }}
    {{- end }}
    {{- if $peers }}
    - from:
        {{- toYaml $peers | nindent 8 }}
      ports:
        - port: http
          protocol: TCP
    {{- end }}
    {{- end }}
  egress:
    - ports:
        - {port: 53, protocol: UDP}
        - {port: 53, protocol: TCP}
    {{- if $np.allowAllEgress }}
    - {}
    {{- else }}
    {{- range $np.callsTo }}
    - to:
        - podSelector:
            matchLabels:
              app.kubernetes.io/part-of: forge
              app.kubernetes.io/component: {{ . }}
      ports:
        - {port: {{ $.Values.service.port }}, protocol: TCP}
    {{- end }}
    {{- with $np.egress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "forge.notes" -}}
{{ include "forge.fullname" . }} ({{ .Values.component }}) is installed in namespace {{ .Release.Namespace }}.

  kubectl -n {{ .Release.Namespace }} rollout status deployment/{{ include "forge.fullname" . }}
{{- if .Values.service.enabled }}
  kubectl -n {{ .Release.Namespace }} port-forward service/{{ include "forge.fullname" . }} 8000:{{ .Values.service.port }}
  curl http://127.0.0.1:8000/readyz
{{- end }}
{{- if (.Values.migration | default dict).enabled }}

Migrations ran in the pre-install/pre-upgrade Job {{ include "forge.fullname" . }}-migrate
(FORGE_MIGRATE_ON_START=false in the pods). Its logs: kubectl -n {{ .Release.Namespace }} logs job/{{ include "forge.fullname" . }}-migrate
{{- end }}
{{- range .Values.secretEnv }}
{{- if not .optional }}
Needs Secret {{ .secretName }} (key {{ .key }}) for {{ .name }}.
{{- end }}
{{- end }}
Settings reference: docs/operations.md.
{{- end -}}
