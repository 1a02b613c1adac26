"""Microsoft.Security: the VirtualMachines pricing at subscription, VM and Arc machine scope, the
``WDATP*`` data-export settings, ``mdeOnboardings``, and Defender for Cloud's alerts (list,
get, dismiss; the detection tests' alerts); writes the caller's roles do not grant are 403
(authorization.py), as are alert reads and dismissals."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from localazure.authorization import require
from localazure.estate import SECURITY_SETTINGS, Vm
from localazure.machinery import (
    SUB,
    ArmError,
    Params,
    Query,
    Response,
    json_response,
    route,
    with_method,
)

if TYPE_CHECKING:
    from localazure.server import LocalAzure

API_VERSIONS = {
    "pricings": {"2024-01-01"},
    "settings": {"2022-05-01"},
    "mdeOnboardings": {"2021-10-01-preview"},
    "alerts": {"2022-01-01"},
}


def _subscription(plane: LocalAzure, sub: str) -> Any:
    subscription = plane.estate.subscriptions.get(sub.lower())
    if subscription is None:
        raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
    return subscription


# --- Pricings ---------------------------------------------------------------------------
def _scope_subscription(scope: str) -> str:
    return scope.split("/")[2].lower()


def _pricing_json(
    scope: str, tier: str, sub_plan: str, inherited: str | None = None
) -> dict[str, Any]:
    properties: dict[str, Any] = {"pricingTier": tier, "freeTrialRemainingTime": "PT0S"}
    if sub_plan:
        properties["subPlan"] = sub_plan
    if inherited:
        properties.update(inherited="True", inheritedFrom=inherited)
    return {
        "id": f"{scope}/providers/Microsoft.Security/pricings/VirtualMachines",
        "name": "VirtualMachines",
        "type": "Microsoft.Security/pricings",
        "properties": properties,
    }


def _pricing(plane: LocalAzure, p: Params, q: Query, body: Any, who: str, method: str) -> Response:
    scope = "/" + p["scope"].strip("/")
    if p["name"].lower() != "virtualmachines":
        raise ArmError(404, "NotFound", f"pricing {p['name']} is not served by this plane")
    subscription = plane.estate.subscriptions.get(_scope_subscription(scope))
    if subscription is None:
        raise ArmError(404, "SubscriptionNotFound", "The subscription could not be found.")
    # Resource level: a VM or an Arc machine ("Supported resources are: VirtualMachines,
    # VMSS and ARC Machines", Pricings - Update, 2024-01-01; the built-in policy
    # "Configure Azure Defender for Servers to be enabled (with 'P1' subplan) for all
    # resources (resource level)" covers Microsoft.HybridCompute/machines).
    vm_scope = "/providers/" in scope.lower()
    vm = plane._vm(scope) if vm_scope else None
    if method == "PUT":
        require(plane, who, "Microsoft.Security/pricings/write", scope)
        tier = ((body or {}).get("properties") or {}).get("pricingTier")
        plan = ((body or {}).get("properties") or {}).get("subPlan") or ""
        if tier not in {"Free", "Standard"}:
            raise ArmError(400, "InvalidInputJson", "pricingTier must be Free or Standard")
        if vm is not None:
            if tier == "Standard" and plan not in {"", "P1"}:
                raise ArmError(
                    400, "InvalidInputJson", "resource-level pricing accepts only P1 or Free"
                )
            vm.vm_pricing = tier
        else:
            if tier == "Standard" and plan not in {"P1", "P2"}:
                raise ArmError(400, "InvalidInputJson", "subPlan must be P1 or P2")
            subscription.pricing_tier, subscription.sub_plan = (
                tier,
                plan if tier == "Standard" else "",
            )
    elif method == "DELETE":
        require(plane, who, "Microsoft.Security/pricings/delete", scope)
        if vm is None:
            raise ArmError(400, "InvalidInputJson", "only resource-level pricing can be deleted")
        vm.vm_pricing = None
        return Response(204, b"", {})
    if vm is not None and vm.vm_pricing is not None:
        return json_response(
            200, _pricing_json(scope, vm.vm_pricing, "P1" if vm.vm_pricing == "Standard" else "")
        )
    inherited = f"/subscriptions/{subscription.id}" if vm is not None else None
    return json_response(
        200, _pricing_json(scope, subscription.pricing_tier, subscription.sub_plan, inherited)
    )


# --- Settings ---------------------------------------------------------------------------
def _setting_json(subscription: str, name: str, enabled: bool) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription}/providers/Microsoft.Security/settings/{name}",
        "name": name,
        "type": "Microsoft.Security/settings",
        "kind": "DataExportSettings",
        "properties": {"enabled": enabled},
    }


def _settings_list(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    subscription = _subscription(plane, p["sub"])
    return json_response(
        200,
        {
            "value": [
                _setting_json(subscription.id, name, subscription.settings[name])
                for name in SECURITY_SETTINGS
            ]
        },
    )


def _setting(plane: LocalAzure, p: Params, q: Query, body: Any, who: str, method: str) -> Response:
    subscription = _subscription(plane, p["sub"])
    name = next((n for n in SECURITY_SETTINGS if n.lower() == p["name"].lower()), None)
    if name is None:
        raise ArmError(404, "NotFound", f"setting {p['name']} is not served by this plane")
    if method == "PUT":
        scope = f"/subscriptions/{subscription.id}"
        require(plane, who, "Microsoft.Security/settings/write", scope)
        if not isinstance(body, dict) or body.get("kind") != "DataExportSettings":
            raise ArmError(400, "InvalidInputJson", "kind must be DataExportSettings")
        enabled = (body.get("properties") or {}).get("enabled")
        if not isinstance(enabled, bool):
            raise ArmError(400, "InvalidInputJson", "properties.enabled must be a boolean")
        subscription.settings[name] = enabled
    return json_response(200, _setting_json(subscription.id, name, subscription.settings[name]))


# --- MDE onboarding packages ------------------------------------------------------------
def _onboarding_json(subscription: Any) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription.id}/providers/Microsoft.Security/mdeOnboardings/default",
        "name": "default",
        "type": "Microsoft.Security/mdeOnboardings",
        "properties": {
            "onboardingPackageWindows": subscription.onboarding_windows,
            "onboardingPackageLinux": subscription.onboarding_linux,
        },
    }


def _onboardings(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    subscription = _subscription(plane, p["sub"])
    if p.get("name"):
        if p["name"].lower() != "default":
            raise ArmError(404, "NotFound", "only 'default' exists")
        return json_response(200, _onboarding_json(subscription))
    return json_response(200, {"value": [_onboarding_json(subscription)]})


# --- Alerts -------------------------------------------------------------------------------
# azure-rest-api-specs specification/security/resource-manager/Microsoft.Security/stable/
# 2022-01-01/alerts.json (Alerts_List, Alerts_ListByResourceGroup,
# Alerts_GetResourceGroupLevel, Alerts_UpdateResourceGroupLevelStateToDismiss) and its
# examples GetAlertsResourceGroup_example.json, UpdateAlertResourceGroupLocation_dismiss_
# example.json. RBAC operations: learn.microsoft.com/azure/role-based-access-control/
# permissions/security (Microsoft.Security/locations/alerts/read, …/dismiss/action).
ALERTS_READ = "Microsoft.Security/locations/alerts/read"
ALERTS_DISMISS = "Microsoft.Security/locations/alerts/dismiss/action"
_ALERTS_API = "2022-01-01"
# .NET's DateTime.MaxValue.Ticks: a systemAlertId starts with it minus the alert's ticks,
# which is why the spec's examples (2020) start 2518… (unconfirmed: inferred from them).
_MAX_TICKS = 3155378975999999999
_EPOCH_TICKS = 621355968000000000
# The display names are from third-party samples, not Microsoft's documentation
# (unconfirmed, docs/fidelity.md).
_TEST_ALERTS = {
    "Windows": (
        "WindowsDefenderAtp_TestAlert",
        "[Test Alert] Suspicious Powershell commandline",
        "This is a test alert, raised by the Microsoft Defender for Endpoint detection "
        "test: a PowerShell command line downloaded and started C:\\test-MDATP-test\\invoice.exe.",
    ),
    "Linux": (
        "WindowsDefenderAtp_EICAR",
        "'EICAR_Test_File' malware was prevented",
        "The EICAR anti-malware test file was detected and prevented by Microsoft Defender "
        "for Endpoint.",
    ),
}


def _system_alert_id(moment: datetime) -> str:
    ticks = _EPOCH_TICKS + int(moment.timestamp() * 10_000_000)
    return f"{_MAX_TICKS - ticks}_{str(uuid.uuid4()).upper()}"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def test_alert(vm: Vm, moment: datetime) -> dict[str, Any]:
    """The Defender for Cloud alert a VM's detection test raises."""
    alert_type, display, description = _TEST_ALERTS[
        "Windows" if vm.os_type == "Windows" else "Linux"
    ]
    name = _system_alert_id(moment)
    scope = f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}"
    started = moment - timedelta(minutes=1)
    return {
        "id": f"{scope}/providers/Microsoft.Security/locations/{vm.location}/alerts/{name}",
        "name": name,
        "type": "Microsoft.Security/Locations/alerts",
        "properties": {
            "version": _ALERTS_API,
            "alertType": alert_type,
            "systemAlertId": name,
            "productComponentName": "Servers",
            "alertDisplayName": display,
            "description": description,
            "severity": "Informational",
            "intent": "Execution",
            "startTimeUtc": _stamp(started),
            "endTimeUtc": _stamp(started),
            "resourceIdentifiers": [{"type": "AzureResource", "azureResourceId": vm.id}],
            "remediationSteps": ["No further action is needed: this is a test alert."],
            "vendorName": "Microsoft",
            "status": "Active",
            "extendedLinks": [],
            "alertUri": "https://portal.azure.com/#blade/Microsoft_Azure_Security/AlertBlade/"
            f"alertId/{name}/subscriptionId/{vm.subscription}/resourceGroup/"
            f"{vm.resource_group}/referencedFrom/alertDeepLink/location/{vm.location}",
            "timeGeneratedUtc": _stamp(moment),
            "productName": "Microsoft Defender for Endpoint",
            "processingEndTimeUtc": _stamp(moment),
            "entities": [],
            "isIncident": False,
            "extendedProperties": {},
            "compromisedEntity": vm.name,
        },
    }


def schedule_test_alert(plane: LocalAzure, vm: Vm) -> None:
    """A detection test ran on an onboarded, healthy VM: its alert is raised
    ``plane.test_alert_seconds`` later ("about 10 minutes": learn.microsoft.com/azure/
    defender-for-cloud/alert-validation)."""
    due = time.monotonic() + plane.test_alert_seconds
    plane.pending_alerts.append((due, test_alert(vm, datetime.now(UTC))))


def raise_due_alerts(plane: LocalAzure, everything: bool = False) -> None:
    with plane.lock:
        now = time.monotonic()
        due = [alert for at, alert in plane.pending_alerts if everything or at <= now]
        plane.pending_alerts = [
            (at, alert) for at, alert in plane.pending_alerts if not (everything or at <= now)
        ]
        plane.alerts.extend(due)


def _alerts_page(plane: LocalAzure, items: list[dict[str, Any]], q: Query, path: str) -> Response:
    start = int(q.get("$skiptoken", "0") or 0)
    page = items[start : start + plane.list_page_size]
    value: dict[str, Any] = {"value": page}
    if start + plane.list_page_size < len(items):
        value["nextLink"] = (
            f"{plane.url}{path}?api-version={_ALERTS_API}&$skiptoken={start + plane.list_page_size}"
        )
    return json_response(200, value)


def _list_alerts(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    subscription = _subscription(plane, p["sub"])
    scope = f"/subscriptions/{subscription.id}"
    if p.get("rg"):
        scope += f"/resourceGroups/{p['rg']}"
    require(plane, who, ALERTS_READ, scope)
    plane._advance_all()
    raise_due_alerts(plane)
    prefix = scope.lower() + "/"
    items = [alert for alert in plane.alerts if alert["id"].lower().startswith(prefix)]
    return _alerts_page(plane, items, q, f"{scope}/providers/Microsoft.Security/alerts")


def _alert(plane: LocalAzure, p: Params) -> dict[str, Any]:
    alert_id = (
        f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/providers/Microsoft.Security"
        f"/locations/{p['loc']}/alerts/{p['name']}"
    ).lower()
    for alert in plane.alerts:
        if alert["id"].lower() == alert_id:
            return alert
    raise ArmError(404, "NotFound", f"Alert '{p['name']}' was not found.")


def _get_alert(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    _subscription(plane, p["sub"])
    require(plane, who, ALERTS_READ, f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}")
    plane._advance_all()
    raise_due_alerts(plane)
    return json_response(200, _alert(plane, p))


def _dismiss_alert(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    _subscription(plane, p["sub"])
    require(plane, who, ALERTS_DISMISS, f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}")
    raise_due_alerts(plane)
    _alert(plane, p)["properties"]["status"] = "Dismissed"
    return Response(204, b"", {})


_RG = SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_ALERT = _RG + r"/providers/Microsoft\.Security/locations/(?P<loc>[^/]+)/alerts/(?P<name>[^/]+)"

_SCOPE = r"/(?P<scope>subscriptions/[^/]+(?:/resourceGroups/[^/]+/providers/(?:Microsoft\.Compute/virtualMachines|Microsoft\.HybridCompute/machines)/[^/]+)?)"

ROUTES = (
    route("GET", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", with_method(_pricing, "GET"), "Microsoft.Security/pricings/read", "pricings"),
    route("PUT", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", with_method(_pricing, "PUT"), "Microsoft.Security/pricings/write", "pricings"),
    route("DELETE", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", with_method(_pricing, "DELETE"), "Microsoft.Security/pricings/delete", "pricings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/settings", _settings_list, "Microsoft.Security/settings/read", "settings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/settings/(?P<name>[^/]+)", with_method(_setting, "GET"), "Microsoft.Security/settings/read", "settings"),
    route("PUT", SUB + r"/providers/Microsoft\.Security/settings/(?P<name>[^/]+)", with_method(_setting, "PUT"), "Microsoft.Security/settings/write", "settings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/mdeOnboardings", _onboardings, "Microsoft.Security/mdeOnboardings/read", "mdeOnboardings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/mdeOnboardings/(?P<name>[^/]+)", _onboardings, "Microsoft.Security/mdeOnboardings/read", "mdeOnboardings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/alerts", _list_alerts, ALERTS_READ, "alerts"),
    route("GET", _RG + r"/providers/Microsoft\.Security/alerts", _list_alerts, ALERTS_READ, "alerts"),
    route("GET", _ALERT, _get_alert, ALERTS_READ, "alerts"),
    route("POST", _ALERT + r"/dismiss", _dismiss_alert, ALERTS_DISMISS, "alerts"),
)  # fmt: skip
