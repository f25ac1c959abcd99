{{/*
Names and labels.
*/}}
{{- define "shield-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shield-agent.fullname" -}}
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

{{- define "shield-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shield-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shield-agent.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shield-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "shield-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shield-agent.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "shield-agent.image" -}}
{{- printf "%s:%s" (required (printf "%s.image.repository is required" .what) .image.repository) (required (printf "%s.image.tag is required" .what) .image.tag) -}}
{{- end -}}

{{/*
The key API as the application sees it: loopback only.
*/}}
{{- define "shield-agent.apiUrl" -}}
{{- printf "http://127.0.0.1:%v" .Values.agent.port -}}
{{- end -}}

{{/*
Exec probe: the agent's image is distroless (no shell, no curl), so its own Node.js runtime asks
the key API on loopback. The kubelet cannot reach a loopback listener, so an httpGet probe is not
possible; kata's genpolicy admits exactly the probe commands of the pod spec. With a key API
token every route but /healthz needs it, so the probe reads the token file the agent reads.
*/}}
{{- define "shield-agent.probeCommand" -}}
- {{ .node }}
- -e
- {{ printf "const f=process.env.SHIELD_KEY_API_TOKEN_FILE,h=f?{authorization:'Bearer '+require('fs').readFileSync(f,'utf8').trim()}:{};require('http').get({host:'127.0.0.1',port:%v,path:'%s',headers:h,timeout:3000},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1)).on('timeout',()=>process.exit(1))" .port .path | quote }}
{{- end -}}

{{/*
The agent's environment (agent/config.ts names every variable). Used by the sidecar; in the SGX
variant only the names the Gramine manifest passes through are set (see sgx.yaml).
*/}}
{{- define "shield-agent.agentEnv" -}}
- name: SHIELD_AGENT_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: SHIELD_WORKLOAD
  value: {{ .Values.workload | quote }}
- name: SHIELD_KEYS
  value: {{ if not .Values.agent.keys }}{{ fail "agent.keys needs at least one key name" }}{{ end }}{{ join "," .Values.agent.keys | quote }}
- name: SHIELD_TEE
  value: {{ .Values.agent.tee | quote }}
- name: SHIELD_LISTEN
  value: {{ printf "127.0.0.1:%v" .Values.agent.port | quote }}
- name: SHIELD_BUS
  value: servicebus
- name: SHIELD_SERVICEBUS_NAMESPACE
  value: {{ required "agent.serviceBusNamespace is required" .Values.agent.serviceBusNamespace | quote }}
- name: SHIELD_KEYVAULT_URL
  value: {{ required "agent.keyVaultUrl is required" .Values.agent.keyVaultUrl | quote }}
- name: SHIELD_RELEASE_SIGNER_HOST
  value: {{ required "agent.releaseSignerHost is required" .Values.agent.releaseSignerHost | quote }}
- name: SHIELD_CONTROL_KEYS_FILE
  value: /etc/shield/control-keys.json
- name: SHIELD_SERVE_KEYS
  value: {{ .Values.agent.serveKeys | quote }}
- name: SHIELD_REATTEST_SECONDS
  value: {{ .Values.agent.reattestSeconds | quote }}
- name: SHIELD_LOG_LEVEL
  value: {{ .Values.agent.logLevel | quote }}
{{- if .Values.agent.minDecryptionVersions }}
- name: SHIELD_MIN_DECRYPTION_VERSIONS
  value: {{ .Values.agent.minDecryptionVersions | quote }}
{{- end }}
{{- if .Values.agent.keyApiToken.existingSecret }}
- name: SHIELD_KEY_API_TOKEN_FILE
  value: {{ printf "%s/token" .Values.agent.keyApiToken.mountPath | quote }}
{{- end }}
{{- if .Values.agent.keyFiles.enabled }}
- name: SHIELD_KEY_DIR
  value: {{ .Values.agent.keyFiles.mountPath | quote }}
{{- end }}
{{- if .Values.attestationSidecar.enabled }}
- name: SHIELD_SIDECAR_URL
  value: {{ printf "http://127.0.0.1:%v" .Values.attestationSidecar.port | quote }}
{{- end }}
{{- with .Values.agent.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
What the application needs to reach the agent.
*/}}
{{- define "shield-agent.appEnv" -}}
- name: SHIELD_API_URL
  value: {{ include "shield-agent.apiUrl" . | quote }}
{{- if .Values.agent.keyApiToken.existingSecret }}
- name: SHIELD_KEY_API_TOKEN_FILE
  value: {{ printf "%s/token" .Values.agent.keyApiToken.mountPath | quote }}
{{- end }}
{{- with .Values.app.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "shield-agent.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}
