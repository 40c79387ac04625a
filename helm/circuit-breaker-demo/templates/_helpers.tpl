{{/*
The name of one of the release's objects, from its component name (product-service,
api-gateway-v2-breaker, ...). The release named like the chart (make deploy's) uses the
component names as they are; any other release prefixes them with its own name, so two
releases share a namespace without sharing an object.
dict: root, name
*/}}
{{- define "cbd.objectName" -}}
{{- if eq .root.Release.Name .root.Chart.Name -}}
{{ .name }}
{{- else -}}
{{ printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" }}
{{- end -}}
{{- end }}

{{/* The ConfigMap api-gateway-v2 watches and breaker-controller writes. */}}
{{- define "cbd.configMapName" -}}
{{ .Values.gatewayV2.configMapName | default (include "cbd.objectName" (dict "root" . "name" "api-gateway-v2-breaker")) }}
{{- end }}

{{/* The Secret holding recommendations' admin token (key `token`): the user's, or the chart's. */}}
{{/*
recommendations' admin token: the one given, else the one this release's Secret already holds
(kept across upgrades), else a new random one. `helm template` sees no Secret: a new one each time.
*/}}
{{- define "cbd.adminToken" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "cbd.adminSecretName" .) -}}
{{- if .Values.recommendations.adminToken -}}
{{ .Values.recommendations.adminToken }}
{{- else if and $secret $secret.data (index $secret.data "token") -}}
{{ index $secret.data "token" | b64dec }}
{{- else -}}
{{ randAlphaNum 32 }}
{{- end -}}
{{- end -}}

{{- define "cbd.adminSecretName" -}}
{{ .Values.recommendations.existingSecret | default (include "cbd.objectName" (dict "root" . "name" "recommendations-admin")) }}
{{- end }}

{{/* Labels that pick one component's pods of this release. dict: root, name */}}
{{- define "cbd.selectorLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/name: {{ .name }}
{{- end }}

{{/* The standard labels, on every object. */}}
{{- define "cbd.labels" -}}
app.kubernetes.io/part-of: circuit-breaker-demo
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "cbd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The restricted Pod Security profile, for every container. */}}
{{- define "cbd.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/*
A Deployment and its Service for one of the binaries.
dict: root, name, port, component, replicas, resources, env (list), serviceAccount (optional,
a component name like name), podLabels (optional, added to the pods' labels)
*/}}
{{- define "cbd.workload" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cbd.objectName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cbd.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ .name }}
    app.kubernetes.io/component: {{ .component }}
spec:
  replicas: {{ .replicas }}
  selector:
    matchLabels:
      {{- include "cbd.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "cbd.labels" $root | nindent 8 }}
        app.kubernetes.io/name: {{ .name }}
        app.kubernetes.io/component: {{ .component }}
        {{- with .podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- if .serviceAccount }}
      serviceAccountName: {{ include "cbd.objectName" (dict "root" $root "name" .serviceAccount) }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if gt (int .replicas) 1 }}
      # Replicas as even over the nodes as can be (maxSkew 1, a hard rule): one node lost or
      # drained takes one replica, not all. Nodes that refuse the pod (tainted: the control
      # plane, a cordoned node) do not count, so a one-node cluster still runs them all; a node
      # short of room leaves a replica Pending rather than doubled up on another.
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          nodeTaintsPolicy: Honor
          # Counted within one revision: in a rollout the new pods spread among themselves,
          # not around the old ones that are about to go.
          matchLabelKeys: [pod-template-hash]
          labelSelector:
            matchLabels:
              {{- include "cbd.selectorLabels" . | nindent 14 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        seccompProfile:
          type: RuntimeDefault
      # The preStop sleep, then the server's graceful shutdown, then 5 s to exit: a pod is never
      # killed in the middle of either.
      terminationGracePeriodSeconds: {{ add $v.shutdownDelaySeconds $v.shutdownTimeoutSeconds 5 }}
      containers:
        - name: {{ .name }}
          image: {{ include "cbd.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/usr/local/bin/{{ .name }}"]
          env:
            - name: PORT
              value: {{ .port | quote }}
            - name: BIND_ADDR
              value: "0.0.0.0"
            - name: LOG_FORMAT
              value: {{ $root.Values.logFormat | quote }}
            - name: SHUTDOWN_TIMEOUT
              value: "{{ $v.shutdownTimeoutSeconds }}s"
            {{- with .statusPort }}
            - name: STATUS_PORT
              value: {{ . | quote }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ .port }}
            {{- with .statusPort }}
            # The whole /circuit-status and its long polls, for the controller only
            # (networkpolicy.yaml); no Service: the controller asks each pod.
            - name: status
              containerPort: {{ . }}
            {{- end }}
          {{- with $root.Values.shutdownDelaySeconds }}
          lifecycle:
            preStop:
              sleep: {seconds: {{ . }}}
          {{- end }}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: 5
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 10
            failureThreshold: 3
          resources:
            {{- toYaml .resources | nindent 12 }}
          {{- include "cbd.containerSecurity" $root | nindent 10 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "cbd.objectName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "cbd.labels" $root | nindent 4 }}
    app.kubernetes.io/name: {{ .name }}
spec:
  selector:
    {{- include "cbd.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .port }}
      targetPort: http
{{- end }}
