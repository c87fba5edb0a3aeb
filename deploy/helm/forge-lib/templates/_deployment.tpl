{{- define "forge.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "forge.fullname" . }}
  labels:
    {{- include "forge.labels" . | nindent 4 }}
spec:
  {{- if not (or .Values.autoscaling.enabled (.Values.keda | default dict).enabled) }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "forge.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "forge.labels" . | nindent 8 }}
      annotations:
        checksum/config: {{ include "forge.configmap" . | sha256sum }}
        {{- if and .Values.metrics.enabled .Values.service.enabled }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .Values.service.port | quote }}
        prometheus.io/path: {{ .Values.metrics.path | quote }}
        {{- end }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "forge.podCommon" . | trim | nindent 6 }}
      {{- $argo := eq (.Values.executor | default "nats") "argo" }}
      {{- if and $argo (not .Values.serviceAccountName) .Values.argo.rbac.create }}
      # The Argo executor: this ServiceAccount may submit, read and stop workflows (argo-rbac.yaml).
      serviceAccountName: {{ include "forge.fullname" . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      {{- if .Values.topologySpread.enabled }}
      # Replicas spread over zones and nodes: losing one takes out at most one replica each.
      topologySpreadConstraints:
        {{- range .Values.topologySpread.topologyKeys }}
        - maxSkew: {{ $.Values.topologySpread.maxSkew }}
          topologyKey: {{ . }}
          whenUnsatisfiable: {{ $.Values.topologySpread.whenUnsatisfiable }}
          labelSelector:
            matchLabels:
              {{- include "forge.selectorLabels" $ | nindent 14 }}
        {{- end }}
      {{- end }}
      containers:
        - name: {{ .Values.component }}
          image: {{ include "forge.image" . | quote }}
          imagePullPolicy: {{ include "forge.pullPolicy" . }}
          {{- with .Values.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "forge.fullname" . }}
            {{- with .Values.existingSecret }}
            - secretRef:
                name: {{ . }}
            {{- end }}
          {{- $env := include "forge.secretEnv" . | trim }}
          {{- if $env }}
          env:
            {{- $env | nindent 12 }}
          {{- end }}
          {{- if .Values.service.enabled }}
          ports:
            - name: http
              containerPort: {{ .Values.service.port }}
              protocol: TCP
          {{- end }}
          {{- if .Values.probes.enabled }}
          startupProbe:
            {{- include "forge.httpProbe" (dict "probe" .Values.probes.startup) | nindent 12 }}
          livenessProbe:
            {{- include "forge.httpProbe" (dict "probe" .Values.probes.liveness) | nindent 12 }}
          readinessProbe:
            {{- include "forge.httpProbe" (dict "probe" .Values.probes.readiness) | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- range .Values.dataVolumes }}
            - name: {{ .name }}
              mountPath: {{ .mountPath }}
            {{- end }}
            {{- range (.Values.fileVolumes | default list) }}
            - name: {{ .name }}
              mountPath: {{ .mountPath }}
              readOnly: true
            {{- end }}
            {{- if $argo }}
            - name: argo-token
              mountPath: /var/run/secrets/forge/argo
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        {{- if $argo }}
        # The Argo server (--auth-mode=client) takes the pod's ServiceAccount token, rotated by
        # the kubelet (FORGE_ARGO_TOKEN_FILE is re-read for every request).
        - name: argo-token
          projected:
            sources:
              - serviceAccountToken:
                  path: token
                  expirationSeconds: 3600
        {{- end }}
        {{- range (.Values.fileVolumes | default list) }}
        - name: {{ .name }}
          {{- if .secret }}
          secret:
            secretName: {{ .secret }}
          {{- else }}
          configMap:
            name: {{ .configMap }}
          {{- end }}
        {{- end }}
        {{- range .Values.dataVolumes }}
        - name: {{ .name }}
          {{- if .persistentVolumeClaim }}
          persistentVolumeClaim:
            claimName: {{ .persistentVolumeClaim }}
          {{- else }}
          emptyDir:
            {{- with .sizeLimit }}
            sizeLimit: {{ . }}
            {{- end }}
          {{- end }}
        {{- end }}
{{- end -}}

{{/* Pod-level settings shared by the Deployment and the migration Job. */}}
{{- define "forge.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.serviceAccountName }}
serviceAccountName: {{ .Values.serviceAccountName }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
`forge-<service> migrate` before the new pods roll out (pre-install and pre-upgrade hook). A hook
runs before the release's ConfigMap exists, so the settings are inlined as env here.
*/}}
{{- define "forge.migrationJob" -}}
{{- if (.Values.migration | default dict).enabled }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "forge.fullname" . }}-migrate
  labels:
    {{- include "forge.labels" . | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "-5"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ .Values.migration.backoffLimit }}
  activeDeadlineSeconds: {{ .Values.migration.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: 3600
  template:
    metadata:
      labels:
        {{- /* Not the Deployment's selector labels: the Service and the PDB must not pick it up. */}}
        app.kubernetes.io/name: {{ .Chart.Name }}-migrate
        app.kubernetes.io/instance: {{ .Release.Name }}
        app.kubernetes.io/component: {{ .Values.component }}-migrate
        app.kubernetes.io/part-of: forge
    spec:
      {{- include "forge.podCommon" . | trim | nindent 6 }}
      restartPolicy: Never
      containers:
        - name: migrate
          image: {{ include "forge.image" . | quote }}
          imagePullPolicy: {{ include "forge.pullPolicy" . }}
          args: [migrate]
          {{- with .Values.existingSecret }}
          envFrom:
            - secretRef:
                name: {{ . }}
          {{- end }}
          env:
            {{- range $name, $value := fromYaml (include "forge.config" .) }}
            - name: {{ $name }}
              value: {{ $value | toString | quote }}
            {{- end }}
            {{- include "forge.secretEnv" . | trim | nindent 12 }}
          resources:
            {{- toYaml .Values.migration.resources | nindent 12 }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir: {}
{{- end }}
{{- end -}}
