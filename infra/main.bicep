// Shield in Azure: the Functions app (Flex Consumption, Node.js 22, one user-assigned identity),
// its Storage account (no shared keys), the Service Bus namespace with every queue the functions
// and agents use, Key Vault Premium (or an existing Managed HSM), an MAA provider (or a shared
// one), Application Insights without local authentication, and the identity of the agents.
// Every connection is identity-based; no key, connection string or password is in a setting.
// Role assignments are the least each principal needs; every built-in role is named beside its
// GUID. The Event Grid subscription for the vault's key events is made by the postdeploy hook
// (infra/hooks/postdeploy.sh): its endpoint, the `keyvault-events` function, exists only then.

targetScope = 'resourceGroup'

@description('azd environment name; resource names derive from it.')
@minLength(1)
@maxLength(40)
param environmentName string

@description('Region of every resource (Flex Consumption, MAA and Key Vault Premium must all be offered there).')
param location string = resourceGroup().location

@description('Object id of the person or pipeline that runs the deployment guide: gets Key Vault Crypto Officer and Secrets Officer to create the workload keys and the webhook secret. Empty: no operator roles.')
param operatorPrincipalId string = ''

@description('Name of an existing Managed HSM in this resource group. Empty: a Key Vault Premium vault is created. Managed HSM roles are local RBAC and are granted by infra/hooks/postprovision.sh.')
param managedHsmName string = ''

@description('An existing MAA endpoint (e.g. the shared regional https://sharedeus.eus.attest.azure.net). Empty: a dedicated attestation provider is created.')
param maaEndpoint string = ''

@description('Shield appraisal policy seed (JSON): SHIELD_APPRAISAL_POLICY. It seeds state at the first start only; later measurements arrive through the deployments webhook.')
param appraisalPolicy string

@description('Per-key lifecycle (JSON): SHIELD_KEY_LIFECYCLE.')
param keyLifecycle string = '{}'

@description('Key Vault secret holding the deployments webhook HMAC key: SHIELD_DEPLOY_HMAC_SECRET_NAME.')
param deployHmacSecretName string = 'shield-deploy-hmac'

@description('Delivery attempts before Service Bus dead-letters a request; also SHIELD_MAX_DELIVERY_COUNT, so the functions know the last attempt.')
@minValue(1)
@maxValue(100)
param maxDeliveryCount int = 10

@description('OIDC issuer URL of the AKS cluster (az aks show --query oidcIssuerProfile.issuerUrl). Empty: no federated credential for the agents yet.')
param aksOidcIssuerUrl string = ''

@description('Kubernetes namespace and service account of the agents (the workload identity subject).')
param agentNamespace string = 'default'
param agentServiceAccount string = 'shield-agent'

@description('Largest number of Flex Consumption instances.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = { 'azd-env-name': environmentName }
var useManagedHsm = !empty(managedHsmName)
var createMaa = empty(maaEndpoint)
var stateTableName = 'shield'
var deploymentContainerName = 'app-package-${take(token, 12)}'
var controlKeyName = 'shield-control'
// azd passes unset environment values as empty strings.
var agentNs = empty(agentNamespace) ? 'default' : agentNamespace
var agentSa = empty(agentServiceAccount) ? 'shield-agent' : agentServiceAccount

// Queue names as the code uses them (core/ports/bus.ts, functions/*.ts): test/infra checks them.
var requestsQueueName = 'attestation-requests'
var resultsQueueName = 'attestation-results'
var rotateKeyQueueName = 'rotate-key'
var policyUpdatesQueueName = 'policy-updates'

// ------------------------------------------------------------------------------------------
// Built-in roles (GUIDs from Azure's built-in role definitions)

var roles = {
  keyVaultCryptoServiceReleaseUser: '08bbd89e-9f13-488c-ac41-acfcb10c90ab' // Key Vault Crypto Service Release User
  keyVaultCryptoUser: '12338af0-0e69-4776-bea7-57ae8d297424' // Key Vault Crypto User
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User
  keyVaultCryptoOfficer: '14b46e9e-c2b7-41b4-b07b-48a6ebf60603' // Key Vault Crypto Officer
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7' // Key Vault Secrets Officer
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
}

// ------------------------------------------------------------------------------------------
// Identities

resource functionsIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-shield-func-${token}'
  location: location
  tags: tags
}

resource agentIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-shield-agent-${token}'
  location: location
  tags: tags
}

resource agentFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (!empty(aksOidcIssuerUrl)) {
  parent: agentIdentity
  name: 'aks-${agentNs}-${agentSa}'
  properties: {
    issuer: aksOidcIssuerUrl
    subject: 'system:serviceaccount:${agentNs}:${agentSa}'
    audiences: ['api://AzureADTokenExchange']
  }
}

// ------------------------------------------------------------------------------------------
// Storage: the Functions host (blob leases for timers, the deployment package) and Shield's
// state table. Shared-key access is off: everything signs in with Entra ID.

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stshield${take(token, 16)}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: { publicAccess: 'None' }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource stateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: stateTableName
}

// ------------------------------------------------------------------------------------------
// Service Bus (Standard: sessions need it). Local (SAS) authentication is off.

resource serviceBus 'Microsoft.ServiceBus/namespaces@2021-11-01' = {
  name: 'sb-shield-${token}'
  location: location
  tags: tags
  sku: { name: 'Standard', tier: 'Standard' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

// Agents → functions. A request is useless once its challenge (SHIELD_CHALLENGE_SECONDS, 300 s
// by default) has expired, so it lives 15 minutes; expired and too-often-delivered requests go
// to the dead-letter queue, where an operator can see why agents were not answered.
resource requestsQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: serviceBus
  name: requestsQueueName
  properties: {
    lockDuration: 'PT1M'
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: 'PT15M'
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    requiresSession: false
  }
}

// Functions → one agent: session id = agent id. A signed result outlives its JWS expiry
// (SHIELD_CONTROL_MESSAGE_TTL_SECONDS, 900 s) by nothing, so messages live 15 minutes and are
// dropped, not dead-lettered, when they expire: an agent that is gone will never read them.
// The agent holds its session and renews the lock itself (adapters/servicebus/bus.ts).
resource resultsQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: serviceBus
  name: resultsQueueName
  properties: {
    requiresSession: true
    lockDuration: 'PT5M'
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: 'PT15M'
    deadLetteringOnMessageExpiration: false
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
  }
}

// Rotation work: session id = key name, so one key's rotations run one at a time. A rotation
// that failed every delivery is dead-lettered and recorded; it never expires unseen.
resource rotateKeyQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: serviceBus
  name: rotateKeyQueueName
  properties: {
    requiresSession: true
    lockDuration: 'PT2M'
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: 'P7D'
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
  }
}

// Deployments webhook → policy-updates function. One update touches every releasable version of
// each key under a lease, so the lock is long; a policy update is never lost silently.
resource policyUpdatesQueue 'Microsoft.ServiceBus/namespaces/queues@2021-11-01' = {
  parent: serviceBus
  name: policyUpdatesQueueName
  properties: {
    requiresSession: false
    lockDuration: 'PT5M'
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: 'P7D'
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
  }
}

// ------------------------------------------------------------------------------------------
// Key Vault Premium (HSM-backed keys, RBAC, purge protection) or an existing Managed HSM.

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = if (!useManagedHsm) {
  name: 'kv-shield-${take(token, 13)}'
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'premium' }
    enableRbacAuthorization: true
    enablePurgeProtection: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    publicNetworkAccess: 'Enabled'
  }
}

resource managedHsm 'Microsoft.KeyVault/managedHSMs@2023-07-01' existing = if (useManagedHsm) {
  name: managedHsmName
}

// The control-plane signing key: non-exportable, used only through `sign`.
resource controlKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' = if (!useManagedHsm) {
  parent: vault
  name: controlKeyName
  properties: {
    kty: 'EC-HSM'
    curveName: 'P-256'
    keyOps: ['sign', 'verify']
    attributes: { enabled: true, exportable: false }
  }
}

resource controlKeyHsm 'Microsoft.KeyVault/managedHSMs/keys@2023-07-01' = if (useManagedHsm) {
  parent: managedHsm
  name: controlKeyName
  properties: {
    kty: 'EC-HSM'
    curveName: 'P-256'
    keyOps: ['sign', 'verify']
    attributes: { enabled: true, exportable: false }
  }
}

var keyVaultUrl = useManagedHsm ? managedHsm.properties.hsmUri : vault.properties.vaultUri
var keyStoreName = useManagedHsm ? managedHsmName : vault.name
var controlKeyId = useManagedHsm ? controlKeyHsm.properties.keyUriWithVersion : controlKey.properties.keyUriWithVersion

// ------------------------------------------------------------------------------------------
// Microsoft Azure Attestation

resource attestation 'Microsoft.Attestation/attestationProviders@2021-06-01' = if (createMaa) {
  name: 'maashield${take(token, 12)}'
  location: location
  tags: tags
  properties: {}
}

var maaUri = createMaa ? attestation.properties.attestUri : maaEndpoint

// ------------------------------------------------------------------------------------------
// Monitoring: Application Insights accepts only Entra ID-authenticated telemetry.

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-shield-${token}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-shield-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

// ------------------------------------------------------------------------------------------
// The Functions app: Flex Consumption, Node.js 22.

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-shield-${token}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { name: 'FC1', tier: 'FlexConsumption' }
  properties: { reserved: true }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-shield-${token}'
  location: location
  tags: union(tags, { 'azd-service-name': 'functions' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${functionsIdentity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: functionsIdentity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: { name: 'node', version: '22' }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
    }
  }
}

// Every setting the app reads (functions/composition/settings.ts) or the host and SDKs read;
// test/infra/cross-check.test.ts refuses any other name.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: union({
    // Functions host storage, identity-based
    AzureWebJobsStorage__accountName: storage.name
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: functionsIdentity.properties.clientId
    // Application Insights with Entra ID authentication only
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${functionsIdentity.properties.clientId};Authorization=AAD'
    // The Service Bus triggers and output binding (connection: ServiceBusConnection)
    ServiceBusConnection__fullyQualifiedNamespace: '${serviceBus.name}.servicebus.windows.net'
    ServiceBusConnection__credential: 'managedidentity'
    ServiceBusConnection__clientId: functionsIdentity.properties.clientId
    // DefaultAzureCredential in the app's own clients (Key Vault, Table Storage, Service Bus sender)
    AZURE_CLIENT_ID: functionsIdentity.properties.clientId
    // Shield
    SHIELD_MAA_ENDPOINT: maaUri
    SHIELD_KEYVAULT_URL: keyVaultUrl
    SHIELD_KEYVAULT_NAME: keyStoreName
    SHIELD_STATE_TABLE_ENDPOINT: storage.properties.primaryEndpoints.table
    SHIELD_STATE_TABLE: stateTableName
    SHIELD_STATE_CREATE_TABLE: 'false'
    SHIELD_BUS: 'servicebus'
    SHIELD_APPRAISAL_POLICY: appraisalPolicy
    SHIELD_MAX_DELIVERY_COUNT: string(maxDeliveryCount)
    SHIELD_CONTROL_KEY_ID: controlKeyId
    SHIELD_CONTROL_KEY_ALGORITHM: 'ES256'
    SHIELD_ROTATE_KEY_QUEUE: rotateKeyQueueName
    SHIELD_KEY_LIFECYCLE: keyLifecycle
  }, useManagedHsm ? {} : {
    // Managed HSM holds no secrets: there, pipelines authenticate with OIDC (SHIELD_DEPLOY_OIDC_*).
    SHIELD_DEPLOY_HMAC_SECRET_NAME: deployHmacSecretName
  })
}

// ------------------------------------------------------------------------------------------
// Role assignments: the functions

// Host storage: blob leases (timers) and the deployment package.
resource funcBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionsIdentity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner) // Storage Blob Data Owner
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Shield's state: on the one table only.
resource funcTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(stateTable.id, functionsIdentity.id, roles.storageTableDataContributor)
  scope: stateTable
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor) // Storage Table Data Contributor
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// attest: receives requests, sends results, challenges and key events.
resource funcReceiveRequests 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(requestsQueue.id, functionsIdentity.id, roles.serviceBusDataReceiver)
  scope: requestsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver) // Azure Service Bus Data Receiver
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource funcSendResults 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resultsQueue.id, functionsIdentity.id, roles.serviceBusDataSender)
  scope: resultsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender) // Azure Service Bus Data Sender
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// rotate: receives rotate-key; revocation, events and the schedule send to it.
resource funcReceiveRotations 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(rotateKeyQueue.id, functionsIdentity.id, roles.serviceBusDataReceiver)
  scope: rotateKeyQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver) // Azure Service Bus Data Receiver
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource funcSendRotations 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(rotateKeyQueue.id, functionsIdentity.id, roles.serviceBusDataSender)
  scope: rotateKeyQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender) // Azure Service Bus Data Sender
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// deployments sends policy updates; policy-updates receives them.
resource funcReceivePolicyUpdates 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(policyUpdatesQueue.id, functionsIdentity.id, roles.serviceBusDataReceiver)
  scope: policyUpdatesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver) // Azure Service Bus Data Receiver
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource funcSendPolicyUpdates 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(policyUpdatesQueue.id, functionsIdentity.id, roles.serviceBusDataSender)
  scope: policyUpdatesQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender) // Azure Service Bus Data Sender
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry with Entra ID.
resource funcMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionsIdentity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher) // Monitoring Metrics Publisher
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault: release (never Crypto Officer), sign with the control key only, read the webhook
// secret, and the key lifecycle (create versions, rotate, update release policies) through a
// custom role that has no delete, purge, import, backup, decrypt or export.
resource funcRelease 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useManagedHsm) {
  name: guid(vault.id, functionsIdentity.id, roles.keyVaultCryptoServiceReleaseUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoServiceReleaseUser) // Key Vault Crypto Service Release User
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource funcControlKeySign 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useManagedHsm) {
  name: guid(controlKey.id, functionsIdentity.id, roles.keyVaultCryptoUser)
  scope: controlKey
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoUser) // Key Vault Crypto User
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource funcSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useManagedHsm) {
  name: guid(vault.id, functionsIdentity.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser) // Key Vault Secrets User
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource keyLifecycleRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (!useManagedHsm) {
  name: guid(resourceGroup().id, 'shield-key-lifecycle')
  properties: {
    roleName: 'Shield key lifecycle (${resourceGroup().name})'
    description: 'Read keys, create and rotate versions, update attributes and release policies. No delete, purge, import, backup, cryptographic use or release.'
    type: 'CustomRole'
    assignableScopes: [resourceGroup().id]
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/keys/read'
          'Microsoft.KeyVault/vaults/keys/create/action'
          'Microsoft.KeyVault/vaults/keys/update/action'
          'Microsoft.KeyVault/vaults/keys/rotate/action'
        ]
        notDataActions: []
      }
    ]
  }
}

resource funcKeyLifecycle 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useManagedHsm) {
  name: guid(vault.id, functionsIdentity.id, 'shield-key-lifecycle')
  scope: vault
  properties: {
    roleDefinitionId: keyLifecycleRole.id // Shield key lifecycle (custom, defined above)
    principalId: functionsIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ------------------------------------------------------------------------------------------
// Role assignments: the agents send requests and receive on the results queue, nothing else.
// Service Bus authorizes per queue, not per session: any agent identity could accept another
// agent's session. That is why every control message is signed and bound to its agent id
// (core/control): a foreign agent can delay a message, never use it.

resource agentSendRequests 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(requestsQueue.id, agentIdentity.id, roles.serviceBusDataSender)
  scope: requestsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender) // Azure Service Bus Data Sender
    principalId: agentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource agentReceiveResults 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resultsQueue.id, agentIdentity.id, roles.serviceBusDataReceiver)
  scope: resultsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver) // Azure Service Bus Data Receiver
    principalId: agentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ------------------------------------------------------------------------------------------
// The operator (who follows docs/deploy.md): creates workload keys and the webhook secret.

resource operatorCryptoOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useManagedHsm && !empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultCryptoOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCryptoOfficer) // Key Vault Crypto Officer
    principalId: operatorPrincipalId
  }
}

resource operatorSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useManagedHsm && !empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer) // Key Vault Secrets Officer
    principalId: operatorPrincipalId
  }
}

// ------------------------------------------------------------------------------------------
// Outputs: azd stores each in the environment (`azd env get-value NAME`); the hooks, the chart
// values and docs/deploy.md read them by these names.

output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_LOCATION string = location
output AZURE_FUNCTION_APP_NAME string = functionApp.name
output AZURE_FUNCTION_APP_ID string = functionApp.id
output SHIELD_FUNCTIONS_URL string = 'https://${functionApp.properties.defaultHostName}'
output SHIELD_FUNCTIONS_PRINCIPAL_ID string = functionsIdentity.properties.principalId
output SHIELD_MAA_ENDPOINT string = maaUri
output SHIELD_KEYVAULT_URL string = keyVaultUrl
output SHIELD_KEYVAULT_NAME string = keyStoreName
output SHIELD_KEYVAULT_ID string = useManagedHsm ? managedHsm.id : vault.id
output SHIELD_USES_MANAGED_HSM bool = useManagedHsm
output SHIELD_CONTROL_KEY_ID string = controlKeyId
output SHIELD_CONTROL_KEY_NAME string = controlKeyName
output SHIELD_SERVICEBUS_NAMESPACE string = '${serviceBus.name}.servicebus.windows.net'
output SHIELD_AGENT_CLIENT_ID string = agentIdentity.properties.clientId
output SHIELD_AGENT_IDENTITY_ID string = agentIdentity.id
output SHIELD_AGENT_PRINCIPAL_ID string = agentIdentity.properties.principalId
output SHIELD_AGENT_IDENTITY_NAME string = agentIdentity.name
