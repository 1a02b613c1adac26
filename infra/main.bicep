// The Defender coverage remediator: a Function App (Flex Consumption, Python 3.11) with a
// system-assigned identity, identity-based storage, Application Insights, and, for every
// subscription it remediates, least-privilege roles and an Event Grid subscription.
targetScope = 'subscription'

@description('A short name for this deployment (azd environment name).')
@minLength(3)
@maxLength(20)
param environmentName string

@description('Region of the Function App and its storage.')
param location string = deployment().location

@description('Subscriptions to keep covered; the first is where the app runs.')
param subscriptionIds array = [subscription().subscriptionId]

@description('report (decide and log, change nothing) or enforce.')
@allowed(['report', 'enforce'])
param mode string = 'report'

@description('May the app turn Defender for Servers on (it costs money): true, false, or subscription ids.')
param allowPlanChange string = 'false'

@allowed(['P1', 'P2'])
param serversPlan string = 'P1'

@description('May the app turn on the WDATP integration settings (needs Security Admin).')
param enableIntegration bool = true

param excludeTag string = 'defender-remediation-exclude'
param maxActionsPerSweep int = 500
param sweepSchedule string = '0 0 2 * * *'

var resourceGroupName = 'rg-${environmentName}'

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: resourceGroupName
  location: location
  tags: { 'azd-env-name': environmentName }
}

module app 'app.bicep' = {
  name: 'remediator-app'
  scope: group
  params: {
    environmentName: environmentName
    location: location
    settings: {
      REMEDIATION_MODE: mode
      REMEDIATION_SUBSCRIPTIONS: join(subscriptionIds, ',')
      REMEDIATION_ALLOW_PLAN_CHANGE: allowPlanChange
      REMEDIATION_SERVERS_PLAN: serversPlan
      REMEDIATION_ENABLE_INTEGRATION: string(enableIntegration)
      REMEDIATION_EXCLUDE_TAG: excludeTag
      REMEDIATION_MAX_ACTIONS_PER_SWEEP: string(maxActionsPerSweep)
      REMEDIATION_SWEEP_SCHEDULE: sweepSchedule
      REMEDIATION_ARM_ENDPOINT: environment().resourceManager
    }
  }
}

module access 'access.bicep' = [for id in subscriptionIds: {
  name: 'remediator-access-${uniqueString(id)}'
  scope: subscription(id)
  params: {
    environmentName: environmentName
    principalId: app.outputs.principalId
    enableIntegration: enableIntegration
    allowPlanChange: allowPlanChange == 'true' || contains(toLower(allowPlanChange), toLower(id))
  }
}]

module events 'events.bicep' = [for (id, index) in subscriptionIds: {
  name: 'remediator-events-${uniqueString(id)}'
  scope: group
  params: {
    subscriptionId: id
    index: index
    functionAppId: app.outputs.functionAppId
    storageAccountId: app.outputs.storageAccountId
    deadLetterContainer: app.outputs.deadLetterContainer
  }
}]

output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output AZURE_RESOURCE_GROUP string = group.name
output REMEDIATOR_PRINCIPAL_ID string = app.outputs.principalId
