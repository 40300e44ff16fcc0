{{/*
Names, labels and images shared by the templates. Objects are <prefix>-agent and <prefix>-aggregator (the
kustomize base's names by default), so a Helm install and a kustomize install are the same objects.
*/}}

{{- define "cni-metrics.prefix" -}}
{{- default (default "cni-metrics" .Values.nameOverride) .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end }}

{{- define "cni-metrics.agent" -}}
{{- include "cni-metrics.prefix" . }}-agent
{{- end }}

{{- define "cni-metrics.aggregator" -}}
{{- include "cni-metrics.prefix" . }}-aggregator
{{- end }}

{{/* Upstream's rule for its ServiceAccount (name, else the fullname), then ours. */}}
{{- define "cni-metrics.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (default (include "cni-metrics.aggregator" .) .Values.fullnameOverride) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end }}

{{/* Helm's own labels, on every object and pod (the kustomize render carries all the others too). */}}
{{- define "cni-metrics.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Labels of an object that belongs to no one component (the certificates). */}}
{{- define "cni-metrics.partLabels" -}}
app.kubernetes.io/part-of: cni-metrics
{{ include "cni-metrics.helmLabels" . }}
{{- end }}

{{/* Metadata labels of an object: pass (list $ "component-name"). */}}
{{- define "cni-metrics.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/part-of: cni-metrics
{{ include "cni-metrics.helmLabels" $root }}
{{- end }}

{{/*
Upstream's image coordinates name upstream's image (Amazon's EKS registry, tags v1.x.y of its helper), which
does not hold ours: "cni-metrics.upstreamImage" is "true" when the values carry them.
*/}}
{{- define "cni-metrics.upstreamAccounts" -}}
602401143452 800184023465 558608220178 918309763551 961992271922 900889452093 877085696533 590381155156 151742754352 013241004608
{{- end }}

{{- define "cni-metrics.upstreamAccount" -}}
{{- if and .Values.image.account (has (toString .Values.image.account) (splitList " " (include "cni-metrics.upstreamAccounts" .))) }}true{{ end -}}
{{- end }}

{{- define "cni-metrics.upstreamTag" -}}
{{- if regexMatch "^v1\\.[0-9]+\\.[0-9]+" (toString .Values.image.tag) }}true{{ end -}}
{{- end }}

{{/* An image: pass (list $ "agent"|"aggregator" override). */}}
{{- define "cni-metrics.image" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $override := index . 2 -}}
{{- $image := $root.Values.image -}}
{{- if $override -}}
{{- $override -}}
{{- else -}}
{{- $registry := $image.registry -}}
{{- if and $image.account (not (include "cni-metrics.upstreamAccount" $root)) -}}
{{- if not $image.region -}}
{{- fail "image.region is required with image.account (the registry is <account>.dkr.ecr.<region>.<domain>)" -}}
{{- end -}}
{{- $registry = printf "%v.dkr.ecr.%s.%s" $image.account $image.region $image.domain -}}
{{- end -}}
{{- $tag := $image.tag | toString -}}
{{- if or (not $tag) (include "cni-metrics.upstreamTag" $root) -}}
{{- $tag = $root.Chart.AppVersion -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s/cni-metrics-%s@%s" (trimSuffix "/" $registry) $component $image.digest -}}
{{- else -}}
{{- printf "%s/cni-metrics-%s:%s" (trimSuffix "/" $registry) $component $tag -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Keys of the top-level `env` that belong to the agent (upstream's poll interval) or to both. */}}
{{- define "cni-metrics.agentEnvKeys" -}}
METRIC_UPDATE_INTERVAL
{{- end }}

{{/* The aggregator's settings: `env` without the agent's keys, plus the values that are settings. */}}
{{- define "cni-metrics.aggregatorEnv" -}}
{{- $env := dict -}}
{{- range $key, $value := .Values.env -}}
{{- if ne $key "METRIC_UPDATE_INTERVAL" -}}
{{- $_ := set $env $key (toString $value) -}}
{{- end -}}
{{- end -}}
{{- if .Values.subnets.enabled -}}
{{- $_ := set $env "SUBNET_METRICS" "true" -}}
{{- $_ := set $env "SUBNET_DISCOVERY" (toString .Values.subnets.discovery) -}}
{{- $_ := set $env "SUBNET_REFRESH" (toString .Values.subnets.refresh) -}}
{{- $_ := set $env "SUBNET_LOW_THRESHOLD" (toString .Values.subnets.lowThreshold) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end }}

{{- define "cni-metrics.aggregatorUrl" -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" .Values.tls.enabled) (include "cni-metrics.aggregator" .) .Release.Namespace .Values.aggregator.grpcPort -}}
{{- end }}

{{- define "cni-metrics.aggregatorTlsSecret" -}}
{{- default (printf "%s-tls" (include "cni-metrics.aggregator" .)) .Values.tls.aggregatorSecret -}}
{{- end }}

{{- define "cni-metrics.agentTlsSecret" -}}
{{- default (printf "%s-tls" (include "cni-metrics.agent" .)) .Values.tls.agentSecret -}}
{{- end }}

{{/*
checkov (an IaC security scanner) finds these checks failed on purpose; each is skipped with its reason, in the
manifest itself. The kustomize base carries the same annotations.
*/}}
{{- define "cni-metrics.commonScannerSkips" -}}
checkov.io/skip1: CKV_K8S_11=No CPU limit on purpose, CFS throttling would delay scrapes and flushes; the request reserves CPU and memory is limited
checkov.io/skip2: CKV_K8S_15=IfNotPresent on purpose, release tags are immutable and Always would make every restart depend on the registry
{{- if not .Values.image.digest }}
checkov.io/skip3: CKV_K8S_43=Tagged by default (one multi-arch index per release); set image.digest to pin by digest
{{- end }}
{{- end }}

{{- define "cni-metrics.agentScannerSkips" -}}
{{ include "cni-metrics.commonScannerSkips" . }}
checkov.io/skip4: CKV_K8S_19=hostNetwork is required, ipamd serves its metrics and introspection on the node's loopback only
checkov.io/skip5: CKV_K8S_25=CHOWN only in the init container that hands the hostPath state directory to user 65534 and exits
checkov.io/skip6: CKV2_K8S_6=NetworkPolicy does not apply to hostNetwork pods; the agent serves only /metrics, /healthz and /readyz
{{- end }}

{{- define "cni-metrics.aggregatorScannerSkips" -}}
{{ include "cni-metrics.commonScannerSkips" . }}
checkov.io/skip4: CKV_K8S_38=The aggregator's token reads the cluster's public token-signing keys to verify agents (AGENT_AUTH is token)
{{- end }}
