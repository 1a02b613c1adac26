// The Function App and what it needs in its resource group.
param environmentName string
param location string
@description('REMEDIATION_* app settings.')
param settings object

@description('Entra tokens for GET /api/report, /api/remediations and /api/status: the pages\' app registration\'s client id (the tokens\' audience); empty: function keys for every route.')
param signInClientId string = ''

@description('Entra tokens for the pages: the app role value, or the object id of the group, a token must hold; empty: function keys.')
param reportReaderGroupId string = ''

// Sign-in only with both: half a configuration would either let the whole tenant in or
// lock everyone out. The app checks the tokens itself (remediation/signin.py): App Service
// authentication (authsettingsV2) does not guard a Flex Consumption app (docs/deploy.md).
var pagesSignIn = !empty(signInClientId) && !empty(reportReaderGroupId)

var token = toLower(uniqueString(resourceGroup().id, environmentName))
var deploymentContainer = 'app-package'
// The queues the functions read (%REMEDIATION_*_QUEUE% in function_app.py): the host
// resolves each binding expression from an app setting, so each is set here.
var queues = {
  REMEDIATION_EVENT_QUEUE: 'vm-events'
  REMEDIATION_INSTALL_QUEUE: 'mde-installs'
  REMEDIATION_SWEEP_QUEUE: 'sweep-batches'
  REMEDIATION_TEST_ALERT_QUEUE: 'mde-test-alerts'
}
// Event Grid's system topics write each VM event to this queue with their own identity
// (infra/hooks/wire_events.py assigns them Storage Queue Data Message Sender on it).
var eventQueue = queues.REMEDIATION_EVENT_QUEUE
var roles = {
  blobOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  queueContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  tableContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  metricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_43:The name is 'st' + uniqueString(): 15 lowercase letters and digits, valid; checkov cannot evaluate it.
  // checkov:skip=CKV_AZURE_206:ZRS is replicated across zones; the data (queues, the remediation log) does not need geo-replication.
  // checkov:skip=CKV_AZURE_35:Flex Consumption without VNet integration reaches its storage over the public endpoint; shared keys are off and only Entra ID auth works.
  name: 'st${token}'
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_ZRS' }
  properties: {
    allowSharedKeyAccess: false // identity-based AzureWebJobsStorage only
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
  resource blobs 'blobServices' = {
    name: 'default'
    properties: {
      deleteRetentionPolicy: { enabled: true, days: 7 }
    }
    resource package 'containers' = { name: deploymentContainer }
  }
  resource queueService 'queueServices' = {
    name: 'default'
    resource events 'queues' = { name: eventQueue }
  }
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${token}'
  location: location
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 90
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${token}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Flex Consumption scales per event; zone redundancy is a deployment choice for regions that offer it.
  name: 'plan-${token}'
  location: location
  kind: 'functionapp'
  sku: { tier: 'FlexConsumption', name: 'FC1' }
  properties: { reserved: true }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222:Event Grid delivers to the function over its public endpoint; HTTP functions need a function key.
  // checkov:skip=CKV_AZURE_17:Event Grid presents no client certificate; HTTP functions are protected by function keys.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero; a standing instance would cost money for a nightly job.
  // checkov:skip=CKV_AZURE_213:A Function App without a health endpoint; the host's own health is monitored by the platform.
  name: 'func-${token}'
  location: location
  kind: 'functionapp,linux'
  tags: { 'azd-service-name': 'api' }
  identity: { type: 'SystemAssigned' }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainer}'
          authentication: { type: 'SystemAssignedIdentity' }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: 40
        instanceMemoryMB: 2048
      }
      runtime: { name: 'python', version: '3.11' }
    }
  }
  resource config 'config' = {
    // checkov:skip=CKV_AZURE_63:Application Insights receives the logs; App Service HTTP logs do not apply to Flex Consumption.
    // checkov:skip=CKV_AZURE_65:Detailed error pages do not apply to a Function App; errors go to Application Insights.
    // checkov:skip=CKV_AZURE_66:Failed request tracing does not apply to Flex Consumption; requests go to Application Insights.
    // checkov:skip=CKV_AZURE_80:A Python app: no .NET Framework version.
    // checkov:skip=CKV_AZURE_13:App Service Authentication does not guard a Flex Consumption app; the app checks Entra tokens for its pages itself (REMEDIATION_PAGES_*) and every other route keeps its function key.
    // checkov:skip=CKV_AZURE_88:Flex Consumption deploys from a blob container, not Azure Files.
    // checkov:skip=CKV_AZURE_222:See the site: the public endpoint serves Event Grid.
    name: 'appsettings'
    properties: union(settings, queues, {
      AzureWebJobsStorage__accountName: storage.name
      AzureWebJobsStorage__credential: 'managedidentity'
      APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
    }, pagesSignIn ? {
      REMEDIATION_PAGES_SIGN_IN: 'entra'
      REMEDIATION_PAGES_TENANT: tenant().tenantId
      REMEDIATION_PAGES_AUDIENCE: signInClientId
      REMEDIATION_PAGES_ALLOWED: reportReaderGroupId
      // The tenant's keys are read from this cloud's login endpoint (sovereign clouds too).
      AZURE_AUTHORITY_HOST: environment().authentication.loginEndpoint
    } : {})
  }
}

resource storageRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in items(roles): if (role.key != 'metricsPublisher') {
  name: guid(storage.id, site.id, role.value)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.value)
    principalId: site.identity.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource telemetryRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, site.id, roles.metricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.metricsPublisher)
    principalId: site.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output functionAppName string = site.name
output insightsName string = insights.name
output functionAppId string = site.id
output storageAccountId string = storage.id
output eventQueue string = eventQueue
output principalId string = site.identity.principalId
