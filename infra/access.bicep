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

// The operations, shared with access-mg.bicep (tests/test_infra.py keeps them in step
// with what the app performs). Turning the paid plan on is granted only where the app is
// allowed to do it; the WDATP switches only with integration on, and through this role
// unless Security Admin is asked for (it would grant all of Microsoft.Security/*,
// pricings/write included). The test alert (opt-in): the detection test through Run
// Command, and Defender for Cloud's alerts to find (and optionally dismiss) its alert.
var actionSets = loadJsonContent('role-actions.json')
var planActions = allowPlanChange ? actionSets.plan : []
var settingsActions = (enableIntegration && !useSecurityAdmin) ? actionSets.settings : []
var testAlertActions = allowTestAlert ? actionSets.testAlert : []
var actions = concat(actionSets.readAndInstall, planActions, settingsActions, testAlertActions)
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
    description: 'Reads VMs and Arc machines, installs the MDE extension, reads and enables Defender for Servers.'
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
