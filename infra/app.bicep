// The Function App and what it needs in its resource group.
param environmentName string
param location string
@description('REMEDIATION_* app settings.')
param settings object

@description('Entra sign-in for GET /api/report, /api/remediations and /api/status: the app registration\'s client id; empty: no sign-in (function keys for every route).')
param signInClientId string = ''

@description('Entra sign-in: the object id of the group whose members may read the pages; empty: no sign-in.')
param reportReaderGroupId string = ''

// Sign-in only with both: half a configuration would either let the whole tenant in or
// lock everyone out.
var pagesSignIn = !empty(signInClientId) && !empty(reportReaderGroupId)

var token = toLower(uniqueString(resourceGroup().id, environmentName))
var deploymentContainer = 'app-package'
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
    // checkov:skip=CKV_AZURE_13:App Service Authentication is optional and covers the human pages only (pagesAuth below, with signInClientId and reportReaderGroupId); Event Grid and the sweep API keep function keys.
    // checkov:skip=CKV_AZURE_88:Flex Consumption deploys from a blob container, not Azure Files.
    // checkov:skip=CKV_AZURE_222:See the site: the public endpoint serves Event Grid.
    name: 'appsettings'
    properties: union(settings, {
      AzureWebJobsStorage__accountName: storage.name
      AzureWebJobsStorage__credential: 'managedidentity'
      APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
    }, pagesSignIn ? { REMEDIATION_PAGES_SIGN_IN: 'entra' } : {})
  }
}

// App Service authentication (Easy Auth) in front of the human pages. Every path needs a
// signed-in member of reportReaderGroupId except the automation paths, which keep their
// function keys: Event Grid's webhook, the sweep API, the health check, the host's admin
// API. Sources (Microsoft Learn and MicrosoftDocs/azure-docs):
// - requireAuthentication + unauthenticatedClientAction: globalValidation in the
//   Microsoft.Web/sites/config 'authsettingsV2' reference; excludedPaths are "paths for
//   which unauthenticated flow would not be redirected to the login page".
// - excludedPaths match a path as written, not as a prefix; a trailing /* covers what is
//   below it (Microsoft's answer in MicrosoftDocs/azure-docs issue 86514), so both the
//   route and its /* are listed.
// - allowedPrincipals.groups: the AllowedPrincipals schema ("the list of the allowed
//   groups"); the built-in authorization policy answers 403 to a principal that fails it
//   (configure-authentication-provider-aad, "Use a built-in authorization policy"). It
//   reads the token's groups claim: the app registration must emit it
//   (groupMembershipClaims), see docs/monitoring.md.
// - No client secret: App Service then uses the implicit flow and gets an ID token, which
//   is all sign-in needs (configure-authentication-provider-aad, "Client Secret").
resource pagesAuth 'Microsoft.Web/sites/config@2024-04-01' = if (pagesSignIn) {
  // checkov reads every sites/config as the site's configuration; this one is only the
  // authentication settings, and the site's own checks are answered on 'appsettings'.
  // checkov:skip=CKV_AZURE_13:This is the App Service Authentication configuration itself (authsettingsV2); checkov looks for the v1 'authsettings' shape.
  // checkov:skip=CKV_AZURE_63:Authentication settings only; HTTP logs do not apply to Flex Consumption (see appsettings).
  // checkov:skip=CKV_AZURE_65:Authentication settings only; detailed error pages do not apply to a Function App (see appsettings).
  // checkov:skip=CKV_AZURE_66:Authentication settings only; failed request tracing does not apply to Flex Consumption (see appsettings).
  // checkov:skip=CKV_AZURE_80:Authentication settings only; a Python app has no .NET Framework version.
  // checkov:skip=CKV_AZURE_88:Authentication settings only; Flex Consumption deploys from a blob container, not Azure Files.
  // checkov:skip=CKV_AZURE_222:Authentication settings only; the public endpoint serves Event Grid (see the site).
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: { enabled: true }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/runtime/webhooks/eventgrid'
        '/runtime/webhooks/eventgrid/*'
        '/api/sweep'
        '/api/sweep/*'
        '/api/test-alert'
        '/api/test-alert/*'
        '/api/health'
        '/admin/*'
      ]
    }
    httpSettings: { requireHttps: true }
    login: { tokenStore: { enabled: false } }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: signInClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [signInClientId]
          defaultAuthorizationPolicy: {
            allowedPrincipals: { groups: [reportReaderGroupId] }
          }
        }
      }
    }
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
// For the app registration's Web redirect URI (docs/monitoring.md).
output signInRedirectUri string = 'https://${site.properties.defaultHostName}/.auth/login/aad/callback'
output functionAppId string = site.id
output principalId string = site.identity.principalId
