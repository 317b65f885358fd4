{{/* Names, labels, images and the chart-generated TLS material. */}}

{{- define "wsgauge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wsgauge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wsgauge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "wsgauge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wsgauge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include "wsgauge.selectorLabels" (list . "operator") */}}
{{- define "wsgauge.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "wsgauge.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "wsgauge.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "wsgauge.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "wsgauge.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "wsgauge.operatorImage" -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.operator.repository (include "wsgauge.tag" .) }}
{{- end }}

{{- define "wsgauge.injectorImage" -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.injector.repository (include "wsgauge.tag" .) }}
{{- end }}

{{- define "wsgauge.sidecarImage" -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.injector.sidecar.repository (include "wsgauge.tag" .) }}
{{- end }}

{{- define "wsgauge.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "wsgauge.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wsgauge.metricsService" -}}
{{- printf "%s-metrics-api" (include "wsgauge.fullname" .) }}
{{- end }}

{{- define "wsgauge.injectorService" -}}
{{- printf "%s-injector" (include "wsgauge.fullname" .) }}
{{- end }}

{{- define "wsgauge.metricsTlsSecret" -}}
{{- printf "%s-metrics-api-tls" (include "wsgauge.fullname" .) }}
{{- end }}

{{- define "wsgauge.injectorTlsSecret" -}}
{{- printf "%s-injector-tls" (include "wsgauge.fullname" .) }}
{{- end }}

{{- define "wsgauge.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{- define "wsgauge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "wsgauge.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The chart-generated TLS material (tls.mode=helm), computed once per render and shared by every
template: a CA and one serving certificate per Service. Existing Secrets are reused (lookup), so an
upgrade does not rotate the certificates; they are regenerated when a Secret is missing.
Returns YAML: {ca, metrics: {crt, key}, injector: {crt, key}}, base64-encoded PEM (as stored
in the Secrets, so that reused values are byte-for-byte the same).
*/}}
{{- define "wsgauge.generatedTls" -}}
{{- if not (hasKey .Values "__wsgaugeTls") }}
{{- $ns := .Release.Namespace }}
{{- $result := dict }}
{{- $existing := dict }}
{{- $reuse := true }}
{{- $cas := list }}
{{- range $part, $on := dict "metrics" .Values.metricsApi.enabled "injector" .Values.injector.enabled }}
{{- if $on }}
{{- $name := ternary (include "wsgauge.metricsTlsSecret" $) (include "wsgauge.injectorTlsSecret" $) (eq $part "metrics") }}
{{- $secret := lookup "v1" "Secret" $ns $name }}
{{- $data := dict }}
{{- if $secret }}{{ $data = $secret.data | default dict }}{{ end }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- $_ := set $existing $part $data }}
{{- $cas = append $cas (index $data "ca.crt") }}
{{- else }}
{{- $reuse = false }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $reuse $cas (eq (len (uniq $cas)) 1) }}
{{- $_ := set $result "ca" (first $cas) }}
{{- range $part, $data := $existing }}
{{- $_ := set $result $part (dict "crt" (index $data "tls.crt") "key" (index $data "tls.key")) }}
{{- end }}
{{- else }}
{{- $days := int .Values.tls.validityDays }}
{{- $ca := genCA (printf "%s-ca" (include "wsgauge.fullname" .)) $days }}
{{- $m := include "wsgauge.metricsService" . }}
{{- $i := include "wsgauge.injectorService" . }}
{{- $mHosts := list $m (printf "%s.%s" $m $ns) (printf "%s.%s.svc" $m $ns) (printf "%s.%s.svc.cluster.local" $m $ns) "localhost" }}
{{- $iHosts := list $i (printf "%s.%s" $i $ns) (printf "%s.%s.svc" $i $ns) (printf "%s.%s.svc.cluster.local" $i $ns) "localhost" }}
{{- $mCert := genSignedCert (printf "%s.%s.svc" $m $ns) (list "127.0.0.1") $mHosts $days $ca }}
{{- $iCert := genSignedCert (printf "%s.%s.svc" $i $ns) (list "127.0.0.1") $iHosts $days $ca }}
{{- $_ := set $result "ca" ($ca.Cert | b64enc) }}
{{- $_ := set $result "metrics" (dict "crt" ($mCert.Cert | b64enc) "key" ($mCert.Key | b64enc)) }}
{{- $_ := set $result "injector" (dict "crt" ($iCert.Cert | b64enc) "key" ($iCert.Key | b64enc)) }}
{{- end }}
{{- $_ := set .Values "__wsgaugeTls" $result }}
{{- end }}
{{- toYaml (index .Values "__wsgaugeTls") }}
{{- end }}
