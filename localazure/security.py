"""Microsoft.Security: the VirtualMachines pricing at subscription and VM scope, the
``WDATP*`` data-export settings and ``mdeOnboardings``; writes the caller's roles do not grant are 403 (authorization.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from localazure.authorization import require
from localazure.estate import SECURITY_SETTINGS
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
    vm_scope = "/virtualmachines/" in scope.lower()
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


_SCOPE = r"/(?P<scope>subscriptions/[^/]+(?:/resourceGroups/[^/]+/providers/Microsoft\.Compute/virtualMachines/[^/]+)?)"

ROUTES = (
    route("GET", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", with_method(_pricing, "GET"), "Microsoft.Security/pricings/read", "pricings"),
    route("PUT", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", with_method(_pricing, "PUT"), "Microsoft.Security/pricings/write", "pricings"),
    route("DELETE", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", with_method(_pricing, "DELETE"), "Microsoft.Security/pricings/delete", "pricings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/settings", _settings_list, "Microsoft.Security/settings/read", "settings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/settings/(?P<name>[^/]+)", with_method(_setting, "GET"), "Microsoft.Security/settings/read", "settings"),
    route("PUT", SUB + r"/providers/Microsoft\.Security/settings/(?P<name>[^/]+)", with_method(_setting, "PUT"), "Microsoft.Security/settings/write", "settings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/mdeOnboardings", _onboardings, "Microsoft.Security/mdeOnboardings/read", "mdeOnboardings"),
    route("GET", SUB + r"/providers/Microsoft\.Security/mdeOnboardings/(?P<name>[^/]+)", _onboardings, "Microsoft.Security/mdeOnboardings/read", "mdeOnboardings"),
)  # fmt: skip
