// Least privilege at a management group (REMEDIATION_MANAGEMENT_GROUPS): the same custom
// role as access.bicep, defined and assigned at the group, so every subscription under it,
// today's and those that join later, inherits it. Deployed on its own, once per group,
// after `azd provision` (docs/deploy.md, "Management groups"):
//   az deployment mg create --management-group-id <group> --location <region> \
//     --template-file infra/access-mg.bicep --parameters environmentName=<env> \
//     principalId=$(azd env get-value REMEDIATOR_PRINCIPAL_ID)
// A subscription-scoped deployment (main.bicep) cannot reach a management group without a
// tenant-scoped step, which few deployers may run (Bicep "deploy to management group").
targetScope = 'managementGroup'

param environmentName string
param principalId string
param enableIntegration bool = true
param useSecurityAdmin bool = false
@description('May the app turn Defender for Servers on (it costs money) in every subscription under the group.')
param allowPlanChange bool = false
param allowTestAlert bool = false

var actionSets = loadJsonContent('role-actions.json')
var planActions = allowPlanChange ? actionSets.plan : []
var settingsActions = (enableIntegration && !useSecurityAdmin) ? actionSets.settings : []
var testAlertActions = allowTestAlert ? actionSets.testAlert : []
var actions = concat(actionSets.readAndInstall, planActions, settingsActions, testAlertActions)
var securityAdmin = 'fb1c8493-542b-48eb-b624-b4c8fea62acd'

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(managementGroup().id, environmentName, 'defender-coverage-remediator')
  properties: {
    // Role names are unique in the tenant; a custom role may name one management group
    // in its assignable scopes (custom-roles docs).
    roleName: 'Defender coverage remediator (${environmentName}, ${managementGroup().name})'
    description: 'Reads VMs and Arc machines, installs the MDE extension, reads and enables Defender for Servers.'
    type: 'CustomRole'
    assignableScopes: [managementGroup().id]
    permissions: [{ actions: actions, notActions: [] }]
  }
}

resource remediator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(managementGroup().id, principalId, role.id)
  properties: {
    roleDefinitionId: role.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Built-in roles at a management group: tenantResourceId, not subscriptionResourceId.
resource settingsAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableIntegration && useSecurityAdmin) {
  name: guid(managementGroup().id, principalId, securityAdmin)
  properties: {
    roleDefinitionId: tenantResourceId('Microsoft.Authorization/roleDefinitions', securityAdmin)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
