// A confidential container group on Azure Container Instances (SEV-SNP): the application and the
// Shield agent as a sidecar. The group runs under the confidential-container policy that
// `az confcom acipolicygen` generates from this template (parameter ccePolicy, base64 Rego);
// its sha256 is the group's hostdata, the measurement the key release policy names. The agent
// signs in to Service Bus with the agents' user-assigned identity (SHIELD_AGENT_IDENTITY_ID),
// which may send attestation requests and receive on the results queue only.
// docs/deploy.md, chapter "ACI", shows the commands.

@description('Container group name.')
param name string = 'shield-aci'

param location string = resourceGroup().location

@description('The base64 confidential-container policy from az confcom acipolicygen --print-policy. Empty only while generating it.')
param ccePolicy string = ''

@description('The application image, e.g. <registry>.azurecr.io/shield-orders-example:<tag>.')
param appImage string

@description('Environment of the application (name/value objects).')
param appEnvironment array = []

@description('The port the application serves on the group\'s IP.')
param appPort int = 8080

@description('The agent image, built from agent/Dockerfile.')
param agentImage string

@description('Key API port on loopback (SHIELD_LISTEN=127.0.0.1:<port>), never exposed.')
param agentPort int = 8280

@description('Comma-separated Key Vault key names (SHIELD_KEYS).')
param keys string

@description('SHIELD_WORKLOAD')
param workload string = 'default'

@description('SHIELD_SERVICEBUS_NAMESPACE (azd env get-value SHIELD_SERVICEBUS_NAMESPACE).')
param serviceBusNamespace string

@description('SHIELD_KEYVAULT_URL (azd env get-value SHIELD_KEYVAULT_URL).')
param keyVaultUrl string

@description('The vault host the release-response signer certificate names.')
param releaseSignerHost string

@description('The control-plane public keys (JWK set JSON).')
param controlKeysJson string

@description('Resource id of the agents\' identity (azd env get-value SHIELD_AGENT_IDENTITY_ID).')
param agentIdentityId string

@description('Client id of that identity (azd env get-value SHIELD_AGENT_CLIENT_ID).')
param agentClientId string

@description('false: no key material leaves the agent (the application uses the encryption API).')
param serveKeys bool = true

@description('Bearer token the key API requires (at least 32 characters; openssl rand -base64 48).')
@secure()
param keyApiToken string

resource group 'Microsoft.ContainerInstance/containerGroups@2023-05-01' = {
  name: name
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${agentIdentityId}': {} }
  }
  properties: {
    sku: 'Confidential'
    confidentialComputeProperties: {
      ccePolicy: ccePolicy
    }
    osType: 'Linux'
    restartPolicy: 'Always'
    ipAddress: {
      type: 'Public'
      ports: [{ protocol: 'TCP', port: appPort }]
    }
    containers: [
      {
        name: 'app'
        properties: {
          image: appImage
          ports: [{ protocol: 'TCP', port: appPort }]
          environmentVariables: concat(appEnvironment, [
            { name: 'SHIELD_API_URL', value: 'http://127.0.0.1:${agentPort}' }
            { name: 'SHIELD_KEY_API_TOKEN_FILE', value: '/run/shield/token' }
          ])
          resources: { requests: { cpu: 1, memoryInGB: 1 } }
          volumeMounts: [{ name: 'key-api-token', mountPath: '/run/shield', readOnly: true }]
        }
      }
      {
        name: 'shield-agent'
        properties: {
          image: agentImage
          // No ports: the key API is on the group's loopback only.
          ports: []
          environmentVariables: [
            { name: 'SHIELD_AGENT_ID', value: name }
            { name: 'SHIELD_WORKLOAD', value: workload }
            { name: 'SHIELD_KEYS', value: keys }
            { name: 'SHIELD_TEE', value: 'auto' }
            { name: 'SHIELD_LISTEN', value: '127.0.0.1:${agentPort}' }
            { name: 'SHIELD_BUS', value: 'servicebus' }
            { name: 'SHIELD_SERVICEBUS_NAMESPACE', value: serviceBusNamespace }
            { name: 'SHIELD_KEYVAULT_URL', value: keyVaultUrl }
            { name: 'SHIELD_RELEASE_SIGNER_HOST', value: releaseSignerHost }
            { name: 'SHIELD_CONTROL_KEYS_FILE', value: '/etc/shield/control-keys.json' }
            { name: 'SHIELD_KEY_API_TOKEN_FILE', value: '/run/shield/token' }
            { name: 'SHIELD_SERVE_KEYS', value: string(serveKeys) }
            // DefaultAzureCredential picks the user-assigned identity by its client id.
            { name: 'AZURE_CLIENT_ID', value: agentClientId }
          ]
          resources: { requests: { cpu: json('0.5'), memoryInGB: json('0.5') } }
          volumeMounts: [
            { name: 'control-keys', mountPath: '/etc/shield', readOnly: true }
            { name: 'key-api-token', mountPath: '/run/shield', readOnly: true }
          ]
        }
      }
    ]
    volumes: [
      {
        name: 'control-keys'
        secret: { 'control-keys.json': base64(controlKeysJson) }
      }
      {
        name: 'key-api-token'
        secret: { token: base64(keyApiToken) }
      }
    ]
  }
}

output SHIELD_ACI_IP string = group.properties.ipAddress.ip
output SHIELD_ACI_NAME string = group.name
