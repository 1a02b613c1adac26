// Least privilege in one remediated subscription: a custom role with exactly the ARM
// operations the app performs (and the doctor reads), and the resource group where the
// postdeploy hook creates the subscription's Event Grid system topic if it has none.
targetScope = 'subscription'

param environmentName string
param location string
param principalId string
param enableIntegration bool
param useSecurityAdmin bool
param allowPlanChange bool
param allowTestAlert bool

// Keep in step with the app: tests compare this list with the operations the code
// performs against the local control plane.
var readAndInstall = [
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/extensions/read'
  'Microsoft.Compute/virtualMachines/extensions/write'
  'Microsoft.Compute/locations/operations/read'
  'Microsoft.ResourceGraph/resources/read'
  'Microsoft.Security/pricings/read'
  'Microsoft.Security/settings/read'
  'Microsoft.Security/mdeOnboardings/read'
  'Microsoft.EventGrid/systemTopics/read'
  'Microsoft.EventGrid/systemTopics/eventSubscriptions/read'
  'Microsoft.Authorization/permissions/read'
]
// Turning the paid plan on is granted only where the app is allowed to do it; the WDATP
// switches only with integration on, and through this role unless Security Admin is
// asked for (it would grant all of Microsoft.Security/*, pricings/write included).
var planActions = allowPlanChange ? ['Microsoft.Security/pricings/write'] : []
var settingsActions = (enableIntegration && !useSecurityAdmin) ? ['Microsoft.Security/settings/write'] : []
// The test alert (opt-in): the detection test through Run Command, and Defender for
// Cloud's alerts to find (and optionally dismiss) its alert.
var testAlertActions = allowTestAlert ? [
  'Microsoft.Compute/virtualMachines/runCommand/action'
  'Microsoft.Security/locations/alerts/read'
  'Microsoft.Security/locations/alerts/dismiss/action'
] : []
var actions = concat(readAndInstall, planActions, settingsActions, testAlertActions)
var securityAdmin = 'fb1c8493-542b-48eb-b624-b4c8fea62acd'

resource eventsGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}-events'
  location: location
  tags: { 'azd-env-name': environmentName }
}

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, environmentName, 'defender-coverage-remediator')
  properties: {
    // Role names are unique in the tenant (custom-roles docs): one role per subscription.
    roleName: 'Defender coverage remediator (${environmentName}, ${subscription().subscriptionId})'
    description: 'Reads VMs, installs the MDE extension, reads and enables Defender for Servers.'
    type: 'CustomRole'
    assignableScopes: [subscription().id]
    permissions: [{ actions: actions, notActions: [] }]
  }
}

resource remediator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, role.id)
  properties: {
    roleDefinitionId: role.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource settingsAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableIntegration && useSecurityAdmin) {
  name: guid(subscription().id, principalId, securityAdmin)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', securityAdmin)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
