// The sweep's metrics (remediation/metrics.py) put to use: an alert when a subscription's
// MDE coverage drops below a threshold, and a workbook of coverage per subscription over
// time, VMs to install, blocked, errors and sweep duration (docs/monitoring.md).
//
// Both query the customMetrics table of Application Insights, not the metric store:
// OpenTelemetry metrics land in customMetrics with every attribute in customDimensions,
// while the metric store keeps them without dimensions unless "custom metric dimensions"
// is turned on (extra cost, a portal switch), so a metric alert could not split by
// subscription (Microsoft Learn, "Metrics in Application Insights",
// azure-monitor/app/metrics-overview#custom-metrics-dimensions-and-preaggregation).
// The alert is therefore a log search alert (Microsoft.Insights/scheduledQueryRules).
param location string
param environmentName string

@description('The Application Insights component the app sends its telemetry to.')
param insightsName string

@description('Alert when a subscription\'s coverage of eligible running VMs falls below this percentage.')
@minValue(1)
@maxValue(100)
param coverageThreshold int

@description('Where the alert is mailed; empty: the alert shows in the portal only.')
param alertEmail string

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: insightsName
}

// The newest coverage of each subscription within the window (a sweep a night; a forced
// sweep of one subscription replaces only that subscription's value).
var coverageQuery = '''
customMetrics
| where name == "remediation.coverage_percent"
| extend subscription = tostring(customDimensions.subscription)
| summarize arg_max(timestamp, value) by subscription
'''

resource mail 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${environmentName}-coverage'
  location: 'global'
  properties: {
    groupShortName: 'mdecoverage'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource coverageAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${environmentName}-coverage'
  location: location
  properties: {
    displayName: 'MDE coverage below ${coverageThreshold}% (${environmentName})'
    description: 'A subscription\'s coverage of eligible running VMs (remediation.coverage_percent, newest sweep in the last two days) is below ${coverageThreshold}%. Read GET /api/report and the remediation log for the VMs to install, blocked and in error.'
    severity: 2
    enabled: true
    scopes: [insights.id]
    evaluationFrequency: 'PT1H'
    windowSize: 'P2D'
    criteria: {
      allOf: [
        {
          query: coverageQuery
          timeAggregation: 'Minimum'
          metricMeasureColumn: 'value'
          dimensions: [
            { name: 'subscription', operator: 'Include', values: ['*'] }
          ]
          operator: 'LessThan'
          threshold: coverageThreshold
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    autoMitigate: true
    actions: { actionGroups: empty(alertEmail) ? [] : [mail.id] }
  }
}

// Workbook queries, one per tile, on the names remediation/metrics.py emits.
var coverageOverTime = '''
customMetrics
| where name == "remediation.coverage_percent"
| extend subscription = tostring(customDimensions.subscription)
| summarize coverage = min(value) by subscription, bin(timestamp, 1d)
| render timechart
'''
var latestPerSubscription = '''
customMetrics
| where name in ("remediation.coverage_percent", "remediation.vms", "remediation.eligible_running", "remediation.covered", "remediation.to_install", "remediation.blocked", "remediation.errors", "remediation.install_failures")
| extend subscription = tostring(customDimensions.subscription)
| summarize arg_max(timestamp, value) by subscription, name
| summarize sweep = max(timestamp),
    coverage = take_anyif(value, name == "remediation.coverage_percent"),
    vms = take_anyif(value, name == "remediation.vms"),
    eligible = take_anyif(value, name == "remediation.eligible_running"),
    covered = take_anyif(value, name == "remediation.covered"),
    to_install = take_anyif(value, name == "remediation.to_install"),
    blocked = take_anyif(value, name == "remediation.blocked"),
    errors = take_anyif(value, name == "remediation.errors"),
    install_failures = take_anyif(value, name == "remediation.install_failures")
    by subscription
| order by coverage asc
'''
var workOverTime = '''
customMetrics
| where name in ("remediation.to_install", "remediation.blocked", "remediation.errors", "remediation.install_failures")
| extend subscription = tostring(customDimensions.subscription)
| summarize value = max(value) by name, subscription, bin(timestamp, 1d)
| summarize vms = sum(value) by name, timestamp
| render timechart
'''
var sweepDuration = '''
customMetrics
| where name == "remediation.sweep_duration"
| extend mode = tostring(customDimensions.mode), run = tostring(customDimensions.run_id)
| project timestamp, seconds = value / valueCount, mode, run
| render timechart
'''

var tiles = [
  { name: 'coverage', title: 'Coverage of eligible running VMs per subscription (%)', query: coverageOverTime, visualization: 'timechart' }
  { name: 'latest', title: 'Newest sweep per subscription', query: latestPerSubscription, visualization: 'table' }
  { name: 'work', title: 'To install, blocked, errors and Failed MDE extensions, all subscriptions', query: workOverTime, visualization: 'timechart' }
  { name: 'duration', title: 'Sweep duration (seconds)', query: sweepDuration, visualization: 'timechart' }
]

// Workbook content: the gallery template format (version Notebook/1.0, KqlItem/1.0 query
// items, resourceType microsoft.insights/components), as in Microsoft's
// Application-Insights-Workbooks repository and the Microsoft.Insights/workbooks reference.
var intro = [
  {
    type: 1
    name: 'intro'
    content: { json: '## Defender for Endpoint coverage\nFrom the sweep\'s metrics (docs/monitoring.md). The coverage alert fires below ${coverageThreshold}%.' }
  }
]
var queryItems = [for tile in tiles: {
  type: 3
  name: tile.name
  content: {
    version: 'KqlItem/1.0'
    query: tile.query
    size: 0
    title: tile.title
    timeContext: { durationMs: 2592000000 } // 30 days
    queryType: 0
    resourceType: 'microsoft.insights/components'
    visualization: tile.visualization
  }
}]
var workbook = {
  version: 'Notebook/1.0'
  items: concat(intro, queryItems)
  fallbackResourceIds: [insights.id]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource coverageWorkbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, environmentName, 'coverage-workbook')
  location: location
  kind: 'shared'
  properties: {
    displayName: 'MDE coverage (${environmentName})'
    category: 'workbook'
    sourceId: insights.id
    serializedData: string(workbook)
  }
}

output alertRuleId string = coverageAlert.id
output workbookId string = coverageWorkbook.id
