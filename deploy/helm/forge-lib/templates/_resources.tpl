{{/* The objects every Forge chart renders; each chart's templates/ include them by name. */}}

{{- define "forge.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
data:
  {{- range $name, $value := fromYaml (include "forge.config" .) }}
  {{ $name }}: {{ $value | toString | quote }}
  {{- end }}
{{- end -}}

{{- define "forge.service" -}}
{{- if .Values.service.enabled }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
spec:
  type: {{ .Values.service.type }}
  selector:
    {{- include "forge.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .Values.service.port }}
      targetPort: http
      protocol: TCP
{{- end }}
{{- end -}}

{{- define "forge.pdb" -}}
{{- if .Values.podDisruptionBudget.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "forge.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* CPU-based HPA; the worker scales with KEDA instead when keda.enabled. */}}
{{- define "forge.hpa" -}}
{{- if and .Values.autoscaling.enabled (not (.Values.keda | default dict).enabled) }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "forge.fullname" . }}
  minReplicas: {{ .Values.autoscaling.minReplicas }}
  maxReplicas: {{ .Values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .Values.autoscaling.targetCPUUtilizationPercentage }}
{{- end }}
{{- end -}}

{{/* Prometheus Operator scrape target (the pods keep their prometheus.io/* annotations too). */}}
{{- define "forge.serviceMonitor" -}}
{{- if and (include "forge.on" (dict "root" . "feature" "serviceMonitor")) .Values.service.enabled .Values.metrics.enabled }}
{{- $sm := .Values.serviceMonitor | default dict }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "forge.selectorLabels" . | nindent 6 }}
  namespaceSelector:
    matchNames: [{{ .Release.Namespace | quote }}]
  endpoints:
    - port: http
      path: {{ .Values.metrics.path }}
      interval: {{ $sm.interval | default "30s" }}
      scrapeTimeout: {{ $sm.scrapeTimeout | default "10s" }}
{{- end }}
{{- end -}}
