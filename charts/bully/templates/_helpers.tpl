{{/*
Expand the name of the chart.
*/}}
{{- define "bully.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS
naming spec). If the release name contains the chart name it is used as the full name.
*/}}
{{- define "bully.fullname" -}}
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

{{/*
Chart name and version, as used by the chart label.
*/}}
{{- define "bully.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "bully.labels" -}}
helm.sh/chart: {{ include "bully.chart" . }}
{{ include "bully.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bully
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "bully.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bully.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of one component: include "bully.componentSelectorLabels" (list . "server")
*/}}
{{- define "bully.componentSelectorLabels" -}}
{{ include "bully.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Labels of one component's resources: include "bully.componentLabels" (list . "server")
*/}}
{{- define "bully.componentLabels" -}}
{{ include "bully.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Name of the controller's ServiceAccount.
*/}}
{{- define "bully.serviceAccountName" -}}
{{- if .Values.controller.serviceAccount.create }}
{{- default (printf "%s-controller" (include "bully.fullname" .)) .Values.controller.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.controller.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Lease the controller replicas elect their leader on.
*/}}
{{- define "bully.controllerLeaseName" -}}
{{- printf "%s-controller" (include "bully.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Whether a monitoring.coreos.com/v1 object is rendered: include "bully.monitoringOn" (list . value "Kind")
gives "true" when value is true, or "auto" and the cluster serves the kind.
*/}}
{{- define "bully.monitoringOn" -}}
{{- $ctx := index . 0 }}
{{- $value := toString (index . 1) }}
{{- if or (eq $value "true") (and (eq $value "auto") ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" (index . 2)))) }}true{{ end }}
{{- end }}

{{/*
Namespace of the monitoring objects.
*/}}
{{- define "bully.monitoringNamespace" -}}
{{- default .Release.Namespace .Values.monitoring.namespace }}
{{- end }}

{{/*
The bully image (all three binaries).
*/}}
{{- define "bully.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Headless Service of the servers: peer discovery (every pod's A record) and stable pod DNS.
*/}}
{{- define "bully.headlessName" -}}
{{- printf "%s-headless" (include "bully.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
NAME:PORT the servers resolve to find their peers.
*/}}
{{- define "bully.peerDns" -}}
{{- printf "%s.%s.svc.%s:%d" (include "bully.headlessName" .) .Release.Namespace .Values.clusterDomain (int .Values.server.peerPort) }}
{{- end }}

{{/*
host:port of the client Service (the coordinator).
*/}}
{{- define "bully.clientAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "bully.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.server.service.port) }}
{{- end }}

{{/*
Secret holding the bearer token (key `token`).
*/}}
{{- define "bully.tokenSecretName" -}}
{{- default (printf "%s-token" (include "bully.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/*
Where the token file is mounted.
*/}}
{{- define "bully.tokenDir" -}}
/var/run/secrets/bully
{{- end }}

{{/*
Token volume, volumeMount and env var, for pods that talk to the servers.
*/}}
{{- define "bully.tokenVolume" -}}
{{- if .Values.auth.enabled -}}
- name: token
  secret:
    secretName: {{ include "bully.tokenSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "bully.tokenVolumeMount" -}}
{{- if .Values.auth.enabled -}}
- name: token
  mountPath: {{ include "bully.tokenDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "bully.tokenEnv" -}}
{{- if .Values.auth.enabled -}}
- name: BULLY_TOKEN_FILE
  value: {{ include "bully.tokenDir" . }}/token
{{- end }}
{{- end }}

{{/*
TLS: the Secret (keys tls.crt, tls.key and ca.crt, as cert-manager writes them), where it is
mounted, and the DNS name every server's certificate carries (servers are dialled by pod IP,
so clients and peers verify this name rather than the address).
*/}}
{{- define "bully.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "bully.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "bully.tlsDir" -}}
/var/run/secrets/bully-tls
{{- end }}

{{- define "bully.tlsServerName" -}}
{{- default (printf "%s.%s.svc.%s" (include "bully.fullname" .) .Release.Namespace .Values.clusterDomain) .Values.tls.serverName }}
{{- end }}

{{/*
The servers' TLS flags.
*/}}
{{- define "bully.tlsServerArgs" -}}
{{- if .Values.tls.enabled -}}
- --tls-cert-file={{ include "bully.tlsDir" . }}/tls.crt
- --tls-key-file={{ include "bully.tlsDir" . }}/tls.key
- --tls-client-ca-file={{ include "bully.tlsDir" . }}/ca.crt
- --tls-server-name={{ include "bully.tlsServerName" . }}
{{- end }}
{{- end }}

{{/*
The servers' TLS volume: the whole Secret as a directory, never through subPath, so the kubelet
swaps rotated files in place and the servers reload them.
*/}}
{{- define "bully.tlsServerVolume" -}}
{{- if .Values.tls.enabled -}}
- name: tls
  secret:
    secretName: {{ include "bully.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "bully.tlsServerVolumeMount" -}}
{{- if .Values.tls.enabled -}}
- name: tls
  mountPath: {{ include "bully.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
CA volume, volumeMount and env vars, for pods that talk to the servers: only ca.crt of the
Secret (clients must not see the servers' key), again without subPath.
*/}}
{{- define "bully.tlsCaVolume" -}}
{{- if .Values.tls.enabled -}}
- name: tls-ca
  secret:
    secretName: {{ include "bully.tlsSecretName" . }}
    defaultMode: 0444
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "bully.tlsCaVolumeMount" -}}
{{- if .Values.tls.enabled -}}
- name: tls-ca
  mountPath: {{ include "bully.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "bully.tlsClientEnv" -}}
{{- if .Values.tls.enabled -}}
- name: BULLY_CA_FILE
  value: {{ include "bully.tlsDir" . }}/ca.crt
- name: BULLY_TLS_SERVER_NAME
  value: {{ include "bully.tlsServerName" . | quote }}
{{- end }}
{{- end }}

{{/*
MongoDB names.
*/}}
{{- define "bully.mongodbName" -}}
{{- printf "%s-mongodb" (include "bully.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bully.mongodbHeadlessName" -}}
{{- printf "%s-mongodb-headless" (include "bully.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The SecantusDB store (secantus.enabled).
*/}}
{{- define "bully.secantusName" -}}
{{- printf "%s-secantus" (include "bully.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
host:port of every member of the chart's replica set, comma-separated.
*/}}
{{- define "bully.mongodbHosts" -}}
{{- $hosts := list }}
{{- range $i := until (int .Values.mongodb.replicas) }}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc.%s:%d" (include "bully.mongodbName" $) $i (include "bully.mongodbHeadlessName" $) $.Release.Namespace $.Values.clusterDomain (int $.Values.mongodb.port)) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/*
Secret holding the MongoDB connection string (key `uri`).
*/}}
{{- define "bully.mongodbSecretName" -}}
{{- default (printf "%s-mongodb-uri" (include "bully.fullname" .)) .Values.mongodb.existingSecret }}
{{- end }}

{{/*
The connection string the chart stores.
*/}}
{{- define "bully.mongodbUri" -}}
{{- if .Values.secantus.enabled }}
{{- printf "mongodb://%s.%s.svc.%s:%d/?directConnection=true" (include "bully.secantusName" .) .Release.Namespace .Values.clusterDomain (int .Values.secantus.port) }}
{{- else if .Values.mongodb.enabled }}
{{- printf "mongodb://%s/?replicaSet=%s" (include "bully.mongodbHosts" .) .Values.mongodb.replicaSetName }}
{{- else }}
{{- required "mongodb.uri (or mongodb.existingSecret) is required when mongodb.enabled is false" .Values.mongodb.uri }}
{{- end }}
{{- end }}

{{/*
PodDisruptionBudget API version: policy/v1 where served (1.21+), else policy/v1beta1.
The version check also covers `helm template --kube-version`, whose API list is static.
*/}}
{{- define "bully.pdbApiVersion" -}}
{{- if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version) }}
{{- "policy/v1" }}
{{- else }}
{{- "policy/v1beta1" }}
{{- end }}
{{- end }}
