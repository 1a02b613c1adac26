// Least privilege in one remediated subscription: a custom role with exactly the ARM
// operations the app performs, and Security Admin only because the Microsoft.Security
// settings API demands it for the WDATP switches.
targetScope = 'subscription'

param environmentName string
param principalId string
param enableIntegration bool
param allowPlanChange bool

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
]
// Turning the paid plan on is granted only where the app is allowed to do it.
var actions = allowPlanChange ? concat(readAndInstall, ['Microsoft.Security/pricings/write']) : readAndInstall
var securityAdmin = 'fb1c8493-542b-48eb-b624-b4c8fea62acd'

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, environmentName, 'defender-coverage-remediator')
  properties: {
    roleName: 'Defender coverage remediator (${environmentName})'
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

resource settingsAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (enableIntegration) {
  name: guid(subscription().id, principalId, securityAdmin)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', securityAdmin)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
