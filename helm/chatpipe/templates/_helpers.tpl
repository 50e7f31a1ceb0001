{{/*
Names, labels, and the pieces every role's pod shares. The role templates call these with
(dict "root" $ "role" "ingest") unless noted.
*/}}

{{- define "chatpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A role's object name: <fullname>-<role>. */}}
{{- define "chatpipe.roleName" -}}
{{- printf "%s-%s" (include "chatpipe.fullname" .root) .role | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chatpipe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "chatpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chatpipe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a role's objects (root, role). */}}
{{- define "chatpipe.roleLabels" -}}
{{ include "chatpipe.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/* Selector labels of a role's pods (root, role). */}}
{{- define "chatpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatpipe.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "chatpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chatpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "chatpipe.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* HOST:PORT a role binds (root, port). */}}
{{- define "chatpipe.listen" -}}
{{- printf "%s:%d" .root.Values.listenAddress (int .port) }}
{{- end }}

{{/*
A value as an environment variable string: whole numbers without exponent (Helm reads
YAML numbers as float64, and 2097152 would otherwise print as 2.097152e+06).
*/}}
{{- define "chatpipe.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (float64 (int64 .)) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "bool" . }}
{{- ternary "true" "false" . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/*
Environment variable of each key of <role>.config: the real flags' env names (checked
against `chatpipe <role> --help` by helm/tests). Unknown keys are refused by the schema.
*/}}
{{- define "chatpipe.configEnvNames" -}}
ingest:
  maxBatch: CHATPIPE_INGEST_MAX_BATCH
  maxBodyBytes: CHATPIPE_INGEST_MAX_BODY_BYTES
  maxClockSkew: CHATPIPE_INGEST_MAX_CLOCK_SKEW
  linger: CHATPIPE_INGEST_LINGER
  produceTimeout: CHATPIPE_INGEST_PRODUCE_TIMEOUT
  maxInflightRequests: CHATPIPE_INGEST_MAX_INFLIGHT_REQUESTS
  rateLimitPerSecond: CHATPIPE_INGEST_RATE_LIMIT_PER_SECOND
  rateLimitBurst: CHATPIPE_INGEST_RATE_LIMIT_BURST
  readTimeout: CHATPIPE_INGEST_READ_TIMEOUT
  drainTimeout: CHATPIPE_INGEST_DRAIN_TIMEOUT
  maxErrors: CHATPIPE_INGEST_MAX_ERRORS
processor:
  groupId: CHATPIPE_PROCESSOR_GROUP
  blockedSenders: CHATPIPE_BLOCKED_SENDERS
  allowedKinds: CHATPIPE_ALLOWED_KINDS
  maxBodyBytes: CHATPIPE_MAX_BODY_BYTES
  dedupeHorizon: CHATPIPE_DEDUPE_HORIZON
  compressMinBytes: CHATPIPE_COMPRESS_MIN_BYTES
  fanoutMaxMembers: CHATPIPE_FANOUT_MAX_MEMBERS
  window: CHATPIPE_WINDOW
  grace: CHATPIPE_GRACE
  correctionHorizon: CHATPIPE_CORRECTION_HORIZON
  idleTimeout: CHATPIPE_IDLE_TIMEOUT
  batchEvents: CHATPIPE_BATCH_EVENTS
  batchLinger: CHATPIPE_BATCH_LINGER
  drainTimeout: CHATPIPE_DRAIN_TIMEOUT
  producerLingerMs: CHATPIPE_PRODUCER_LINGER_MS
sink:
  groupId: CHATPIPE_SINK_GROUP_ID
  hbaseConnections: CHATPIPE_HBASE_CONNECTIONS
  batchRows: CHATPIPE_SINK_BATCH_ROWS
  batchBytes: CHATPIPE_SINK_BATCH_BYTES
  flushInterval: CHATPIPE_SINK_FLUSH_INTERVAL
  maxInFlight: CHATPIPE_SINK_MAX_IN_FLIGHT
  retryBackoff: CHATPIPE_SINK_RETRY_BACKOFF
  retryMaxBackoff: CHATPIPE_SINK_RETRY_MAX_BACKOFF
  maxRetries: CHATPIPE_SINK_MAX_RETRIES
  drainTimeout: CHATPIPE_SINK_DRAIN_TIMEOUT
  createTables: CHATPIPE_SINK_CREATE_TABLES
serve:
  hbaseConnections: CHATPIPE_SERVE_HBASE_CONNECTIONS
  noPush: CHATPIPE_SERVE_NO_PUSH
  rateLimitPerSecond: CHATPIPE_SERVE_RATE_LIMIT_PER_SECOND
  rateLimitBurst: CHATPIPE_SERVE_RATE_LIMIT_BURST
  maxInflightRequests: CHATPIPE_SERVE_MAX_INFLIGHT_REQUESTS
  fanoutMaxMembers: CHATPIPE_SERVE_FANOUT_MAX_MEMBERS
  previewChars: CHATPIPE_SERVE_PREVIEW_CHARS
  inboxCacheTtl: CHATPIPE_SERVE_INBOX_CACHE_TTL
  pushRetentionEvents: CHATPIPE_SERVE_PUSH_RETENTION_EVENTS
  maxPushClients: CHATPIPE_SERVE_MAX_PUSH_CLIENTS
  pushKeepalive: CHATPIPE_SERVE_PUSH_KEEPALIVE
  drainTimeout: CHATPIPE_SERVE_DRAIN_TIMEOUT
{{- end }}

{{/* The `<role>.config` keys as ConfigMap data lines (root, role); empty values are left out. */}}
{{- define "chatpipe.configEnv" -}}
{{- $names := get (include "chatpipe.configEnvNames" . | fromYaml) .role }}
{{- $config := get (get .root.Values .role) "config" }}
{{- range $key := keys $config | sortAlpha }}
{{- $value := get $config $key }}
{{- $env := get $names $key }}
{{- if not $env }}
{{- fail (printf "%s.config.%s is not a setting of chatpipe %s" $.role $key $.role) }}
{{- end }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{ $env }}: {{ include "chatpipe.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* ConfigMap data every role shares (root). */}}
{{- define "chatpipe.commonEnv" -}}
CHATPIPE_LOG: {{ .Values.log.level | quote }}
CHATPIPE_LOG_FORMAT: {{ .Values.log.format | quote }}
CHATPIPE_KAFKA_BROKERS: {{ required "kafka.brokers is required" .Values.kafka.brokers | quote }}
CHATPIPE_KAFKA_CLIENT_ID: {{ .Values.kafka.clientId | quote }}
{{- end }}

{{/* ConfigMap data of the HBase connection (root). */}}
{{- define "chatpipe.hbaseEnv" -}}
CHATPIPE_HBASE_THRIFT: {{ required "hbase.thrift is required" .Values.hbase.thrift | quote }}
CHATPIPE_THRIFT_TRANSPORT: {{ ternary "framed" "buffered" .Values.hbase.framed | quote }}
CHATPIPE_THRIFT_PROTOCOL: {{ ternary "compact" "binary" .Values.hbase.compact | quote }}
CHATPIPE_HBASE_TIMEOUT: {{ .Values.hbase.timeout | quote }}
{{- end }}

{{/* Whether a librdkafka property holds secret material (mirrors common/src/kafka.rs
is_secret_key; file locations and URLs are not secrets). */}}
{{- define "chatpipe.isSecretKafkaKey" -}}
{{- if and (regexMatch "(?i)(password|secret|jaas|ssl\\.key|oauthbearer\\.config|token|credential)" .) (not (regexMatch "\\.(location|url)$" .)) }}true{{ end }}
{{- end }}

{{- define "chatpipe.kafkaTlsCaDir" -}}/etc/chatpipe/kafka-ca{{- end }}
{{- define "chatpipe.kafkaTlsClientDir" -}}/etc/chatpipe/kafka-client{{- end }}

{{/*
The role's `CHATPIPE_KAFKA_OPTIONS` lines (root, role): non-secret options as they are,
secret ones as `$(VAR)` references to env vars filled from Secrets (Kubernetes expands
them), so no secret value is ever written into a manifest or ConfigMap.
*/}}
{{- define "chatpipe.kafkaOptionLines" -}}
{{- $k := .root.Values.kafka }}
{{- $opts := merge (deepCopy (default dict (get (get .root.Values .role) "kafkaOptions"))) (deepCopy $k.options) }}
{{- $lines := list }}
{{- range $key := keys $opts | sortAlpha }}
{{- $value := include "chatpipe.envValue" (get $opts $key) }}
{{- if include "chatpipe.isSecretKafkaKey" $key }}
{{- fail (printf "Kafka option %q looks secret: put it in kafka.secretOptions (read from a Secret), not in plain values" $key) }}
{{- end }}
{{- if or (contains "\n" $value) (contains "\n" $key) }}
{{- fail (printf "Kafka option %q: keys and values cannot contain newlines" $key) }}
{{- end }}
{{- $lines = append $lines (printf "%s=%s" $key $value) }}
{{- end }}
{{- if $k.tls.caSecret }}
{{- $lines = append $lines (printf "ssl.ca.location=%s/%s" (include "chatpipe.kafkaTlsCaDir" .) $k.tls.caKey) }}
{{- end }}
{{- if $k.tls.clientCertSecret }}
{{- $lines = append $lines (printf "ssl.certificate.location=%s/tls.crt" (include "chatpipe.kafkaTlsClientDir" .)) }}
{{- $lines = append $lines (printf "ssl.key.location=%s/tls.key" (include "chatpipe.kafkaTlsClientDir" .)) }}
{{- end }}
{{- if $k.sasl.enabled }}
{{- $lines = append $lines (printf "security.protocol=%s" $k.sasl.securityProtocol) }}
{{- $lines = append $lines (printf "sasl.mechanism=%s" $k.sasl.mechanism) }}
{{- $lines = append $lines "sasl.username=$(KAFKA_SASL_USERNAME)" }}
{{- $lines = append $lines "sasl.password=$(KAFKA_SASL_PASSWORD)" }}
{{- end }}
{{- range $i, $o := $k.secretOptions }}
{{- $lines = append $lines (printf "%s=$(KAFKA_SECRET_OPTION_%d)" $o.property $i) }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}

{{/* The env entries of the Kafka connection (root, role): secrets, then the options. */}}
{{- define "chatpipe.kafkaEnv" -}}
{{- $k := .root.Values.kafka }}
{{- if $k.sasl.enabled }}
{{- if not $k.sasl.existingSecret }}
{{- fail "kafka.sasl.enabled needs kafka.sasl.existingSecret (a Secret with the SASL username and password)" }}
{{- end }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.usernameKey }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.passwordKey }}
{{- end }}
{{- range $i, $o := $k.secretOptions }}
- name: KAFKA_SECRET_OPTION_{{ $i }}
  valueFrom:
    secretKeyRef:
      name: {{ $o.secretName }}
      key: {{ $o.secretKey }}
{{- end }}
{{- $lines := include "chatpipe.kafkaOptionLines" . }}
{{- if $lines }}
- name: CHATPIPE_KAFKA_OPTIONS
  value: {{ $lines | quote }}
{{- end }}
{{- end }}

{{/* Volumes of the Kafka TLS material (root). */}}
{{- define "chatpipe.kafkaVolumes" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caKey }}
        path: {{ .Values.kafka.tls.caKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}

{{- define "chatpipe.kafkaVolumeMounts" -}}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: {{ include "chatpipe.kafkaTlsCaDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: {{ include "chatpipe.kafkaTlsClientDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Liveness and readiness probes on the metrics port (role values). */}}
{{- define "chatpipe.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  {{- toYaml .probes.liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  {{- toYaml .probes.readiness | nindent 2 }}
{{- end }}

{{/* Scheduling fields of a pod spec (root, role). */}}
{{- define "chatpipe.scheduling" -}}
{{- $v := get .root.Values .role }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
{{- range $v.topologySpreadConstraints }}
  - {{- toYaml (merge (deepCopy .) (dict "labelSelector" (dict "matchLabels" (include "chatpipe.selectorLabels" $ | fromYaml)))) | nindent 4 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod metadata (root, role, config: the rendered ConfigMap for its checksum). */}}
{{- define "chatpipe.podMetadata" -}}
{{- $v := get .root.Values .role }}
metadata:
  labels:
    {{- include "chatpipe.selectorLabels" . | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ .config | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The ServiceAccount, security context and image pull secrets of a pod (root). */}}
{{- define "chatpipe.podCommon" -}}
serviceAccountName: {{ include "chatpipe.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* PromQL label matchers of the alerts (root). */}}
{{- define "chatpipe.alertSelector" -}}
{{- default (printf "namespace=%q" .Release.Namespace) .Values.prometheusRule.selector }}
{{- end }}

{{- define "chatpipe.apiKeysDir" -}}/etc/chatpipe/api-keys{{- end }}
{{- define "chatpipe.stateDir" -}}/var/lib/chatpipe/processor{{- end }}

{{/* The non-secret settings of a role, as ConfigMap data (root, role). */}}
{{- define "chatpipe.roleConfigData" -}}
{{- $v := .root.Values }}
{{- include "chatpipe.commonEnv" .root }}
{{- if eq .role "ingest" }}
CHATPIPE_INGEST_LISTEN: {{ include "chatpipe.listen" (dict "root" .root "port" $v.ingest.port) | quote }}
CHATPIPE_INGEST_METRICS_LISTEN: {{ include "chatpipe.listen" (dict "root" .root "port" $v.ingest.metricsPort) | quote }}
CHATPIPE_INGEST_EVENTS_TOPIC: {{ $v.topics.events | quote }}
CHATPIPE_INGEST_EVENTS_PARTITIONS: {{ include "chatpipe.envValue" $v.topics.eventsPartitions | quote }}
{{- if $v.ingest.insecureNoAuth }}
CHATPIPE_INGEST_INSECURE_NO_AUTH: "true"
{{- else }}
CHATPIPE_INGEST_API_KEYS_FILE: {{ printf "%s/%s" (include "chatpipe.apiKeysDir" .) $v.ingest.apiKeys.key | quote }}
{{- end }}
{{- else if eq .role "processor" }}
CHATPIPE_METRICS_LISTEN: {{ include "chatpipe.listen" (dict "root" .root "port" $v.processor.metricsPort) | quote }}
CHATPIPE_STATE_DIR: {{ include "chatpipe.stateDir" . | quote }}
CHATPIPE_EVENTS_TOPIC: {{ $v.topics.events | quote }}
CHATPIPE_ROWS_TOPIC: {{ $v.topics.rows | quote }}
CHATPIPE_AGG_SESSION_TOPIC: {{ $v.topics.aggSession | quote }}
CHATPIPE_AGG_GLOBAL_TOPIC: {{ $v.topics.aggGlobal | quote }}
CHATPIPE_UNREAD_TOPIC: {{ $v.topics.unread | quote }}
CHATPIPE_CHANGELOG_TOPIC: {{ $v.topics.changelog | quote }}
CHATPIPE_PARTIALS_TOPIC: {{ $v.topics.partials | quote }}
CHATPIPE_DLQ_TOPIC: {{ $v.topics.dlq | quote }}
CHATPIPE_EVENTS_PARTITIONS: {{ include "chatpipe.envValue" $v.topics.eventsPartitions | quote }}
CHATPIPE_OUTPUT_PARTITIONS: {{ include "chatpipe.envValue" $v.topics.outputPartitions | quote }}
{{- else if eq .role "sink" }}
{{- include "chatpipe.hbaseEnv" .root | nindent 0 }}
CHATPIPE_SINK_METRICS_LISTEN: {{ include "chatpipe.listen" (dict "root" .root "port" $v.sink.metricsPort) | quote }}
CHATPIPE_SINK_ROWS_TOPIC: {{ $v.topics.rows | quote }}
CHATPIPE_SINK_DLQ_TOPIC: {{ $v.topics.dlq | quote }}
CHATPIPE_SINK_TOPIC_PARTITIONS: {{ include "chatpipe.envValue" $v.topics.outputPartitions | quote }}
{{- else if eq .role "serve" }}
{{- include "chatpipe.hbaseEnv" .root | nindent 0 }}
CHATPIPE_SERVE_LISTEN: {{ include "chatpipe.listen" (dict "root" .root "port" $v.serve.port) | quote }}
CHATPIPE_SERVE_METRICS_LISTEN: {{ include "chatpipe.listen" (dict "root" .root "port" $v.serve.metricsPort) | quote }}
CHATPIPE_SERVE_ROWS_TOPIC: {{ $v.topics.rows | quote }}
{{- if $v.serve.insecureNoAuth }}
CHATPIPE_SERVE_INSECURE_NO_AUTH: "true"
{{- else }}
CHATPIPE_SERVE_API_KEYS_FILE: {{ printf "%s/%s" (include "chatpipe.apiKeysDir" .) $v.serve.apiKeys.key | quote }}
{{- end }}
{{- end }}
{{- include "chatpipe.configEnv" . }}
{{- end }}

{{/* The container of a role (root, role, args: the subcommand words). */}}
{{- define "chatpipe.container" -}}
{{- $v := get .root.Values .role }}
- name: {{ .role }}
  image: {{ include "chatpipe.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    {{- toYaml .root.Values.image.command | nindent 4 }}
  args:
    {{- toYaml (concat .args $v.extraArgs) | nindent 4 }}
  envFrom:
    - configMapRef:
        name: {{ include "chatpipe.roleName" . }}
  {{- $env := include "chatpipe.kafkaEnv" . }}
  {{- $static := and (has .role (list "processor" "sink")) $v.staticMembership }}
  {{- if or $env $v.extraEnv $static }}
  env:
    {{- if $static }}
    # static group membership: group.instance.id = the pod name (stable in a StatefulSet)
    - name: CHATPIPE_GROUP_INSTANCE_ID
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- end }}
    {{- with $env }}
    {{- . | trim | nindent 4 }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  ports:
    {{- if has .role (list "ingest" "serve") }}
    - name: http
      containerPort: {{ $v.port }}
      protocol: TCP
    {{- end }}
    - name: metrics
      containerPort: {{ $v.metricsPort }}
      protocol: TCP
  {{- include "chatpipe.probes" $v | trim | nindent 2 }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if has .role (list "ingest" "serve") }}
    {{- if not $v.insecureNoAuth }}
    - name: api-keys
      mountPath: {{ include "chatpipe.apiKeysDir" . }}
      readOnly: true
    {{- end }}
    {{- else if eq .role "processor" }}
    - name: state
      mountPath: {{ include "chatpipe.stateDir" . }}
    {{- end }}
    {{- with (include "chatpipe.kafkaVolumeMounts" .root | trim) }}{{ . | nindent 4 }}{{ end }}
{{- end }}
