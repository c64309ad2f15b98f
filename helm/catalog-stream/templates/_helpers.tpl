{{/* Names, labels and the pieces every workload shares. */}}

{{- define "catalog-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "catalog-stream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "catalog-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of one component's objects: "<fullname>-<component>". Call with (list $ "component"). */}}
{{- define "catalog-stream.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "catalog-stream.fullname" $root | trunc 40 | trimSuffix "-") (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "catalog-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "catalog-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "catalog-stream.labels" -}}
helm.sh/chart: {{ include "catalog-stream.chart" . }}
{{ include "catalog-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: catalog-stream
{{- end -}}

{{/* Call with (list $ "component"). */}}
{{- define "catalog-stream.componentSelectorLabels" -}}
{{ include "catalog-stream.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "catalog-stream.componentLabels" -}}
{{ include "catalog-stream.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "catalog-stream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "catalog-stream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "catalog-stream.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "catalog-stream.configMapName" -}}
{{- include "catalog-stream.componentName" (list . "config") -}}
{{- end -}}

{{/* Dead-letter topic of a source topic. Call with (list $ "topic"). */}}
{{- define "catalog-stream.dlq" -}}
{{- printf "%s%s" (index . 1) (index . 0).Values.topology.topics.deadLetterSuffix -}}
{{- end -}}

{{/* The image pipeline's replica cap: autoscaling.maxReplicas, else the partition count. */}}
{{- define "catalog-stream.maxReplicas" -}}
{{- if gt (int .Values.autoscaling.maxReplicas) 0 -}}
{{- .Values.autoscaling.maxReplicas -}}
{{- else -}}
{{- .Values.kafka.partitions -}}
{{- end -}}
{{- end -}}

{{/* Whether the Prometheus Operator objects are rendered. */}}
{{- define "catalog-stream.monitoring" -}}
{{- if and .Values.monitoring.enabled (or .Values.monitoring.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
true
{{- end -}}
{{- end -}}

{{/* The Kafka Connect cluster's name (Strimzi names its pods and service account after it). */}}
{{- define "catalog-stream.connectName" -}}
{{- default (include "catalog-stream.componentName" (list . "connect")) .Values.cdc.debezium.connectName -}}
{{- end -}}

{{/*
Environment variables with credentials, from existing Secrets only. Call with
(list $ "mongodb" "s3" "registry") naming the credentials the component needs.
*/}}
{{- define "catalog-stream.credentialEnv" -}}
{{- $root := index . 0 -}}
{{- $needs := rest . -}}
{{- if has "mongodb" $needs }}
- name: MONGODB_URI
  valueFrom:
    secretKeyRef:
      name: {{ required "mongodb.existingSecret is required" $root.Values.mongodb.existingSecret }}
      key: {{ $root.Values.mongodb.uriKey }}
{{- end }}
{{- if and (has "s3" $needs) $root.Values.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.s3.existingSecret }}
      key: {{ $root.Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.s3.existingSecret }}
      key: {{ $root.Values.s3.secretAccessKeyKey }}
{{- end }}
{{- if and (has "registry" $needs) $root.Values.schemaRegistry.existingSecret }}
- name: SCHEMA_REGISTRY_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.schemaRegistry.existingSecret }}
      key: {{ $root.Values.schemaRegistry.usernameKey }}
- name: SCHEMA_REGISTRY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.schemaRegistry.existingSecret }}
      key: {{ $root.Values.schemaRegistry.passwordKey }}
{{- end }}
{{- end -}}

{{/*
One service's Deployment. Call with a dict:
  root: $, component: "image-pipeline", subcommand: "image-pipeline", values: .Values.imagePipeline,
  replicas: int, autoscaled: bool (leave replicas to the autoscaler), credentials: list, state: bool,
  recreate: bool (stop the old pod before starting the new one: a single reader)
*/}}
{{- define "catalog-stream.deployment" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $component := .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "catalog-stream.componentName" (list $root $component) }}
  labels:
    {{- include "catalog-stream.componentLabels" (list $root $component) | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "catalog-stream.componentSelectorLabels" (list $root $component) | nindent 6 }}
  strategy:
    {{- if .recreate }}
    type: Recreate
    {{- else }}
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "catalog-stream.componentSelectorLabels" (list $root $component) | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "catalog-stream.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: 60
      containers:
        - name: {{ $component }}
          image: {{ include "catalog-stream.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            - {{ .subcommand | quote }}
            - --config
            - /etc/catalog-stream/config.yaml
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
          env:
            - name: RUST_LOG
              value: {{ $root.Values.logLevel | quote }}
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- if .state }}
            # Announced to the image pipeline's consumer group: the instance holding a
            # product's state is reachable there (GET /api/v1/pipeline/products/{id}/state).
            - name: POD_IP
              valueFrom:
                fieldRef:
                  fieldPath: status.podIP
            - name: CATALOG_ADVERTISED_ADDRESS
              value: "$(POD_IP):8080"
            {{- end }}
            {{- with (include "catalog-stream.credentialEnv" (prepend .credentials $root) | trim) }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $root.Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: config
              mountPath: /etc/catalog-stream
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- if .state }}
            - name: state
              mountPath: /var/lib/catalog-stream
            {{- end }}
      volumes:
        - name: config
          configMap:
            name: {{ include "catalog-stream.configMapName" $root }}
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if .state }}
        - name: state
          emptyDir:
            sizeLimit: {{ $v.state.sizeLimit }}
        {{- end }}
      {{- with $root.Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* One service's Service. Call with (list $ "component" .Values.<component>.service). */}}
{{- define "catalog-stream.service" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $svc := index . 2 -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "catalog-stream.componentName" (list $root $component) }}
  labels:
    {{- include "catalog-stream.componentLabels" (list $root $component) | nindent 4 }}
spec:
  type: {{ $svc.type }}
  selector:
    {{- include "catalog-stream.componentSelectorLabels" (list $root $component) | nindent 4 }}
  ports:
    - name: http
      port: {{ $svc.port }}
      targetPort: http
      protocol: TCP
{{- end -}}
