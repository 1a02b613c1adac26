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

@description('Management group ids: every enabled subscription under them is in scope too, resolved at each sweep. Their roles come from infra/access-mg.bicep, deployed per group (docs/deploy.md).')
param managementGroupIds array = []

@description('report (decide and log, change nothing) or enforce.')
@allowed(['report', 'enforce'])
param mode string = 'report'

@description('May the app turn Defender for Servers on (it costs money): true, false, or subscription ids.')
param allowPlanChange string = 'false'

@allowed(['P1', 'P2'])
param serversPlan string = 'P1'

@description('May the app turn on the WDATP integration settings (Microsoft.Security/settings/write).')
param enableIntegration bool = true

@description('Grant the built-in Security Admin role for the settings instead of the narrower custom role. Security Admin includes Microsoft.Security/*, so pricings/write too, whatever allowPlanChange says.')
param useSecurityAdmin bool = false

@description('Defender for Endpoint API base URL for verification (e.g. https://api.security.microsoft.com, or a regional host such as https://eu.api.security.microsoft.com); empty = off. The app identity then needs the WindowsDefenderATP Machine.Read.All app role (README, Verification).')
param mdeApi string = ''

@description('Allow the on-demand test alert: grants Run Command and alert read/dismiss in the custom role.')
param allowTestAlert bool = false

param excludeTag string = 'defender-remediation-exclude'
param maxActionsPerSweep int = 500
param sweepSchedule string = '0 0 2 * * *'

@description('Alert when a subscription\'s MDE coverage of eligible running VMs falls below this percentage (docs/monitoring.md).')
@minValue(1)
@maxValue(100)
param coverageThreshold int = 95

@description('Mail the coverage alert to this address; empty: the alert shows in the portal only.')
param alertEmail string = ''

@description('Entra tokens for GET /api/report, /api/remediations and /api/status: the pages\' app registration\'s client id. Empty (with reportReaderGroupId empty): function keys for every route.')
param signInClientId string = ''

@description('Entra tokens for the pages: the app role value, or the object id of the group, a token must hold.')
param reportReaderGroupId string = ''

var resourceGroupName = 'rg-${environmentName}'
// In each remediated subscription: a system topic must live in its source's subscription.
var eventsGroupName = 'rg-${environmentName}-events'

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
    signInClientId: signInClientId
    reportReaderGroupId: reportReaderGroupId
    settings: {
      REMEDIATION_MODE: mode
      REMEDIATION_SUBSCRIPTIONS: join(subscriptionIds, ',')
      REMEDIATION_MANAGEMENT_GROUPS: join(managementGroupIds, ',')
      REMEDIATION_ALLOW_PLAN_CHANGE: allowPlanChange
      REMEDIATION_SERVERS_PLAN: serversPlan
      REMEDIATION_ENABLE_INTEGRATION: string(enableIntegration)
      REMEDIATION_EXCLUDE_TAG: excludeTag
      REMEDIATION_MAX_ACTIONS_PER_SWEEP: string(maxActionsPerSweep)
      REMEDIATION_SWEEP_SCHEDULE: sweepSchedule
      REMEDIATION_ARM_ENDPOINT: environment().resourceManager
      REMEDIATION_MDE_API: mdeApi
      REMEDIATION_ALLOW_TEST_ALERT: string(allowTestAlert)
    }
  }
}

module monitoring 'monitoring.bicep' = {
  name: 'remediator-monitoring'
  scope: group
  params: {
    environmentName: environmentName
    location: location
    insightsName: app.outputs.insightsName
    coverageThreshold: coverageThreshold
    alertEmail: alertEmail
  }
}

module access 'access.bicep' = [for id in subscriptionIds: {
  name: 'remediator-access-${uniqueString(id)}'
  scope: subscription(id)
  params: {
    environmentName: environmentName
    location: location
    principalId: app.outputs.principalId
    enableIntegration: enableIntegration
    useSecurityAdmin: useSecurityAdmin
    allowPlanChange: allowPlanChange == 'true' || contains(toLower(allowPlanChange), toLower(id))
    allowTestAlert: allowTestAlert
  }
}]

output AZURE_FUNCTION_APP_NAME string = app.outputs.functionAppName
output AZURE_RESOURCE_GROUP string = group.name
output REMEDIATOR_PRINCIPAL_ID string = app.outputs.principalId
// For the postdeploy hook (infra/hooks/wire_events.py), which wires Event Grid once the
// code, and so the on_vm_event function, exists.
output AZURE_FUNCTION_APP_ID string = app.outputs.functionAppId
// Event Grid's StorageQueue destination: the app's storage account and its event queue.
output REMEDIATOR_EVENT_STORAGE_ID string = app.outputs.storageAccountId
output REMEDIATOR_EVENT_QUEUE string = app.outputs.eventQueue
output REMEDIATOR_SUBSCRIPTIONS string = join(subscriptionIds, ',')
output REMEDIATOR_EVENTS_GROUP string = eventsGroupName
output REMEDIATOR_ARM_ENDPOINT string = environment().resourceManager
