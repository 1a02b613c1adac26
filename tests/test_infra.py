"""The deployment templates: checked by checkov, and kept in step with the code."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


def _bicep(name: str) -> str:
    return (INFRA / name).read_text()


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason(tmp_path):
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed: `make test` installs it into .venv-tools")
    command = [
        str(CHECKOV),
        "-d",
        str(INFRA),
        "--framework",
        "bicep",
        "--skip-download",
        "--output",
        "json",
        "--quiet",
    ]
    # No network for checkov: it would otherwise fetch guidelines from a vendor's API.
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], check=False).returncode == 0
    ):
        command = ["unshare", "-rn", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = {
        key: sum(r["summary"][key] for r in reports) for key in ("passed", "failed", "skipped")
    }
    assert summary["failed"] == 0, [
        c["check_id"] for r in reports for c in r["results"]["failed_checks"]
    ]
    assert summary["passed"] >= 20
    for skip in re.findall(
        r"checkov:skip=(CKV_\w+):?(.*)", "".join(p.read_text() for p in INFRA.glob("*.bicep"))
    ):
        assert len(skip[1].strip()) > 20, f"{skip[0]} is suppressed without a reason"


def test_the_app_settings_default_to_safe_values():
    main = _bicep("main.bicep")
    assert "param mode string = 'report'" in main
    assert "param allowPlanChange string = 'false'" in main
    app = _bicep("app.bicep")
    assert "allowSharedKeyAccess: false" in app
    assert "AzureWebJobsStorage__accountName" in app
    assert "runtime: { name: 'python', version: '3.11' }" in app
    assert "type: 'SystemAssigned'" in app


def test_the_custom_role_holds_the_operations_the_app_performs():
    from localazure.estate import REMEDIATOR_ROLE

    sets = json.loads((INFRA / "role-actions.json").read_text())
    # What the gateway and the doctor call (the request log names these operations; see
    # test_arm.py, test_deploy.py and test_estate_e2e.py), written out by hand.
    performed = {
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Compute/virtualMachines/extensions/read",
        "Microsoft.Compute/virtualMachines/extensions/write",
        "Microsoft.Compute/locations/operations/read",
        "Microsoft.HybridCompute/machines/read",
        "Microsoft.HybridCompute/machines/extensions/read",
        "Microsoft.HybridCompute/machines/extensions/write",
        "Microsoft.HybridCompute/locations/operationstatus/read",
        "Microsoft.HybridCompute/locations/operationresults/read",
        "Microsoft.ResourceGraph/resources/read",
        "Microsoft.Resources/subscriptions/read",
        "Microsoft.Security/pricings/read",
        "Microsoft.Security/settings/read",
        "Microsoft.Security/mdeOnboardings/read",
        "Microsoft.EventGrid/systemTopics/read",
        "Microsoft.EventGrid/systemTopics/eventSubscriptions/read",
        "Microsoft.Authorization/permissions/read",
    }
    assert set(sets["readAndInstall"]) == performed
    assert sets["plan"] == ["Microsoft.Security/pricings/write"]
    assert sets["settings"] == ["Microsoft.Security/settings/write"]
    # Only with allowTestAlert: what the test alert calls (test_verification.py reads the
    # operations from the request log).
    assert set(sets["testAlert"]) == {
        "Microsoft.Compute/virtualMachines/runCommand/action",
        "Microsoft.Security/locations/alerts/read",
        "Microsoft.Security/locations/alerts/dismiss/action",
    }
    # the local plane's principals hold the role with plan and settings changes allowed
    assert set(REMEDIATOR_ROLE) == performed | set(sets["plan"]) | set(sets["settings"])
    for template in ("access.bicep", "access-mg.bicep"):  # one list, both scopes
        text = _bicep(template)
        assert "loadJsonContent('role-actions.json')" in text
        assert not re.findall(r"'(Microsoft\.\w+/[\w/]+/(?:read|write|action))'", text)
        assert "allowTestAlert ? actionSets.testAlert : []" in text


# --- The deployment rules, on the parsed templates (pycep, checkov's Bicep parser) ------
def parsed() -> dict:
    """Every template as pycep parses it (in the tools venv, where checkov brings it)."""
    python = ROOT / ".venv-tools" / "bin" / "python"
    if not python.exists():
        pytest.fail("the tools venv is missing: `make test` installs it into .venv-tools")
    script = (
        "import json, sys; from pathlib import Path; from pycep import BicepParser; "
        "print(json.dumps({p.name: BicepParser().parse(file_path=p) "
        "for p in sorted(Path(sys.argv[1]).glob('*.bicep'))}, default=str))"
    )
    result = subprocess.run(
        [str(python), "-c", script, str(INFRA)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def templates():
    return parsed()


def _resources(templates):
    for name, template in templates.items():
        for symbol, resource in (template.get("resources") or {}).items():
            yield name, symbol, resource


def test_no_template_points_an_event_subscription_at_code_not_deployed_yet(templates):
    # Event Grid validates a function destination when the subscription is written and
    # azd provisions before it deploys: the postdeploy hook wires events instead.
    types = {resource["type"] for _, _, resource in _resources(templates)}
    assert not {t for t in types if t.startswith("Microsoft.EventGrid/")}, types
    text = json.dumps(templates)
    assert "AzureFunction" not in text
    assert "/functions/" not in text


def test_system_topics_live_in_their_source_subscription(templates):
    topics = [
        (name, resource)
        for name, _, resource in _resources(templates)
        if resource["type"] == "Microsoft.EventGrid/systemTopics"
    ]
    for name, resource in topics:  # none today: the hook creates or reuses them
        assert templates[name]["globals"]["scope"]["value"] in {"subscription", "resourceGroup"}
        source = resource["config"]["properties"]["source"]
        assert "subscription().id" in json.dumps(source) or "subscription()" in json.dumps(source)
    hook = (INFRA / "hooks" / "wire_events.py").read_text()
    assert 'source = f"/subscriptions/{subscription}"' in hook
    assert "EventGridManagementClient(\n            credential,\n            subscription," in hook


def test_custom_role_names_are_unique_in_the_tenant(templates):
    roles = [
        (name, resource)
        for name, _, resource in _resources(templates)
        if resource["type"] == "Microsoft.Authorization/roleDefinitions"
    ]
    assert roles
    scopes = {
        "subscription": "${subscription().subscriptionId}",
        "managementGroup": "${managementGroup().name}",
    }
    for name, resource in roles:
        scope = templates[name]["globals"]["scope"]["value"]
        role_name = resource["config"]["properties"]["roleName"]
        assert scopes[scope] in role_name, role_name
        assert "${environmentName}" in role_name, role_name
    assert {templates[name]["globals"]["scope"]["value"] for name, _ in roles} == set(scopes)


@pytest.mark.parametrize("template", ["access.bicep", "access-mg.bicep"])
def test_security_admin_only_where_asked_and_settings_write_only_with_integration(
    templates, template
):
    access = templates[template]
    assignment = access["resources"]["settingsAdmin"]["config"]
    assert assignment["condition"] == {
        "operator": {
            "type": "and",
            "operands": {"operand_1": "enableIntegration", "operand_2": "useSecurityAdmin"},
        }
    }
    assert access["variables"]["securityAdmin"]["value"] == "fb1c8493-542b-48eb-b624-b4c8fea62acd"
    text = _bicep(template)
    assert "(enableIntegration && !useSecurityAdmin) ? actionSets.settings : []" in text
    assert "allowPlanChange ? actionSets.plan : []" in text
    assert templates["main.bicep"]["parameters"]["useSecurityAdmin"]["default"] is False


def test_the_hook_gets_what_it_reads_from_the_deployment(templates):
    outputs = set(templates["main.bicep"]["outputs"])
    hook = (INFRA / "hooks" / "wire_events.py").read_text()
    read = set(re.findall(r'"((?:AZURE|REMEDIATOR)_[A-Z_]+)"', hook))
    assert read == {
        "REMEDIATOR_EVENT_STORAGE_ID",
        "REMEDIATOR_EVENT_QUEUE",
        "REMEDIATOR_SUBSCRIPTIONS",
        "REMEDIATOR_EVENTS_GROUP",
        "REMEDIATOR_ARM_ENDPOINT",
        "REMEDIATOR_PRINCIPAL_ID",
        "AZURE_LOCATION",  # azd's own: the environment's region
        "AZURE_ENV_NAME",  # azd's own: the environment's name
        "AZURE_AUTHORITY_HOST",  # azure-identity's: set only for a private authority
    }
    assert read - {"AZURE_LOCATION", "AZURE_ENV_NAME", "AZURE_AUTHORITY_HOST"} <= outputs
    # The hook's events group is the one access.bicep creates and the remove step deletes.
    assert "var eventsGroupName = 'rg-${environmentName}-events'" in _bicep("main.bicep")
    assert "name: 'rg-${environmentName}-events'" in _bicep("access.bicep")
    assert "tags: { 'azd-env-name': environmentName }" in _bicep("access.bicep")
    assert (
        "roleName: 'Defender coverage remediator (${environmentName}, ${subscription().subscriptionId})'"
        in _bicep("access.bicep")
    )
    assert 'ROLE_NAME = "Defender coverage remediator ({environment}, {subscription})"' in hook
    azure_yaml = (ROOT / "azure.yaml").read_text()
    hooks = azure_yaml[azure_yaml.index("hooks:") :]
    assert "postdeploy:" in hooks
    assert "postdown:" in hooks
    assert hooks.count("infra/hooks/wire_events.py") == 4  # posix and windows, each
    assert hooks.count("infra/hooks/wire_events.py --remove") == 2


def test_storage_endpoints_come_from_the_cloud_not_a_literal():
    for template in INFRA.glob("*.bicep"):
        assert "core.windows.net" not in template.read_text(), template.name


# --- Monitoring: the coverage alert and the workbook (infra/monitoring.bicep) -------------
def _of_type(templates, type_: str) -> list[tuple[str, str, dict]]:
    return [
        (name, symbol, resource)
        for name, symbol, resource in _resources(templates)
        if resource["type"] == type_
    ]


def _kql(template: dict, variable: str) -> str:
    value = template["variables"][variable]["value"]
    assert isinstance(value, str), variable
    return value


def test_the_coverage_alert_is_a_log_alert_on_the_coverage_metric_below_a_parameter(templates):
    from remediation import metrics

    [(name, _, rule)] = _of_type(templates, "Microsoft.Insights/scheduledQueryRules")
    assert name == "monitoring.bicep"
    properties = rule["config"]["properties"]
    [criterion] = properties["criteria"]["allOf"]
    assert criterion["operator"] == "LessThan"
    assert criterion["threshold"] == "coverageThreshold"  # the parameter, not a literal
    assert criterion["dimensions"] == [
        {"name": "subscription", "operator": "Include", "values": ["*"]}
    ]
    query = _kql(templates[name], criterion["query"])
    assert f'name == "{metrics.COVERAGE}"' in query
    assert "customDimensions.subscription" in query
    assert "insights" in json.dumps(properties["scopes"])  # the app's Application Insights
    # The threshold reaches the rule from main.bicep, 95 unless the deployment says.
    main = templates["main.bicep"]
    assert main["parameters"]["coverageThreshold"]["default"] == 95
    assert main["modules"]["monitoring"]["config"]["params"]["coverageThreshold"] == (
        "coverageThreshold"
    )
    assert templates[name]["parameters"]["coverageThreshold"]["default"] is None
    # The exporter finds its ingestion endpoint and its Entra credential in the settings.
    app = _bicep("app.bicep")
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING: insights.properties.ConnectionString" in app
    assert "APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'" in app


def test_the_workbook_queries_every_metric_the_code_emits_and_no_other(templates):
    from remediation import metrics

    [(name, _, workbook)] = _of_type(templates, "Microsoft.Insights/workbooks")
    assert name == "monitoring.bicep"
    template = templates[name]
    assert workbook["config"]["properties"]["serializedData"] == {
        "function": {"type": "string", "parameters": {"value_to_convert": "workbook"}}
    }
    content = template["variables"]["workbook"]["value"]
    assert content["version"] == "Notebook/1.0"
    assert "queryItems" in json.dumps(content["items"])
    tiles = template["variables"]["tiles"]["value"]
    queries = {tile["name"]: _kql(template, tile["query"]) for tile in tiles}
    assert set(queries) == {"coverage", "latest", "work", "duration"}
    text = "\n".join(queries.values())
    for metric in metrics.NAMES:
        assert f'"{metric}"' in text, f"no workbook tile reads {metric}"
    assert set(re.findall(r'"(remediation\.\w+)"', text)) == set(metrics.NAMES)
    assert f'"{metrics.COVERAGE}"' in queries["coverage"]
    assert f'"{metrics.SWEEP_DURATION}"' in queries["duration"]
    for metric in (metrics.TO_INSTALL, metrics.BLOCKED, metrics.ERRORS):
        assert f'"{metric}"' in queries["work"]


# --- Entra tokens for the human pages (REMEDIATION_PAGES_* in infra/app.bicep) -------------
# The app checks the tokens itself; every other HTTP route keeps its function key.
HUMAN_PAGES = {"report", "remediations", "status"}


def test_sign_in_is_configured_only_when_both_parameters_are_set(templates):
    app = _bicep("app.bicep")
    assert "var pagesSignIn = !empty(signInClientId) && !empty(reportReaderGroupId)" in app
    # The four settings the pages read are set under that one condition, and only then.
    settings = app[
        app.index("pagesSignIn ? {") : app.index("} : {})", app.index("pagesSignIn ? {"))
    ]
    assert "REMEDIATION_PAGES_SIGN_IN: 'entra'" in settings
    assert "REMEDIATION_PAGES_TENANT: tenant().tenantId" in settings
    assert "REMEDIATION_PAGES_AUDIENCE: signInClientId" in settings
    assert "REMEDIATION_PAGES_ALLOWED: reportReaderGroupId" in settings
    assert len(re.findall(r"^\s*REMEDIATION_PAGES_\w+:", app, re.M)) == 4
    for template in ("main.bicep", "app.bicep"):
        parameters = templates[template]["parameters"]
        assert parameters["signInClientId"]["default"] == "", template
        assert parameters["reportReaderGroupId"]["default"] == "", template
    params = templates["main.bicep"]["modules"]["app"]["config"]["params"]
    assert params["signInClientId"] == "signInClientId"
    assert params["reportReaderGroupId"] == "reportReaderGroupId"


def test_no_app_service_authentication_is_deployed_to_stand_in_for_the_apps_own_check(templates):
    """Flex Consumption: "EasyAuth isn't currently supported. Unauthenticated callers
    currently aren't blocked" (docs/deploy.md). A template that turned it on would read as
    protection it is not."""
    for name, template in templates.items():
        for resource in template["resources"].values():
            config = resource.get("config", {})
            assert "authsettings" not in json.dumps(config.get("config", {})).lower(), name
    assert "authsettingsV2'" not in _bicep("app.bicep")


def test_only_the_human_pages_may_skip_the_function_key(templates):
    from tests.conftest import function_bindings

    routes = {
        binding["route"]: binding.get("authLevel")
        for bindings in function_bindings().values()
        for binding in bindings
        if binding.get("type") == "httpTrigger"
    }
    assert set(routes) >= HUMAN_PAGES
    for route, level in routes.items():
        if route not in HUMAN_PAGES:
            assert str(level).upper() == "FUNCTION", route


def test_every_setting_a_binding_names_is_an_app_setting_of_the_deployment():
    """The host resolves %NAME% in a binding from the app's settings, and a function whose
    expression does not resolve does not run: each one must be deployed."""
    from tests.conftest import function_bindings

    named = {
        name
        for bindings in function_bindings().values()
        for binding in bindings
        for value in binding.values()
        if isinstance(value, str)
        for name in re.findall(r"%(\w+)%", value)
    }
    assert "REMEDIATION_EVENT_QUEUE" in named
    main, app = _bicep("main.bicep"), _bicep("app.bicep")
    settings = main[
        main.index("    settings: {") : main.index("    }", main.index("    settings: {"))
    ]
    queues = app[app.index("var queues = {") : app.index("}", app.index("var queues = {"))]
    deployed = set(re.findall(r"^\s*(\w+):", settings + "\n" + queues, re.M))
    assert named <= deployed, named - deployed
    assert "properties: union(settings, queues," in app
