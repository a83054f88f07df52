{{/*
The chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "streamq.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: the release name, with the chart name
appended unless the release name already contains it. Truncated to 63
characters because some Kubernetes name fields are DNS labels.
*/}}
{{- define "streamq.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "streamq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "streamq.labels" -}}
helm.sh/chart: {{ include "streamq.chart" . }}
{{ include "streamq.selectorLabels" . }}
app.kubernetes.io/version: {{ include "streamq.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels the Deployment and the Service select the operator pods by. They must
never change between upgrades: a Deployment's selector is immutable.
*/}}
{{- define "streamq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator version: the image tag if set, else the chart's appVersion.
*/}}
{{- define "streamq.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator image reference.
*/}}
{{- define "streamq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The name of the ServiceAccount the operator runs as.
*/}}
{{- define "streamq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
