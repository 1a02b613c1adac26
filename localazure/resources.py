"""Microsoft.Resources: resource groups (the wiring hook's events group) and resource
provider registration, which Azure requires before a provider's resources are written.

Sources: azure-rest-api-specs specification/resources/resource-manager/
Microsoft.Resources/stable/2021-04-01/resources.json (ResourceGroups_CreateOrUpdate, _Get,
_Delete; Providers_Get, Providers_Register); "Resolve errors for resource provider
registration" (learn.microsoft.com/azure/azure-resource-manager/troubleshooting/
error-register-resource-provider): code MissingSubscriptionRegistration, "The
subscription is not registered to use namespace {namespace}", HTTP 409 (the status
azure-sdk-for-go's policy_register_rp.go keys on).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from localazure.machinery import SUB, ArmError, Params, Query, Response, json_response, route

if TYPE_CHECKING:
    from localazure.server import LocalAzure

# The hook's raw calls send 2021-04-01; Bicep's resource groups 2024-03-01.
API_VERSIONS = {"groups": {"2021-04-01", "2024-03-01"}}


def require_registered(plane: LocalAzure, subscription: str, namespace: str) -> None:
    """409 MissingSubscriptionRegistration for a write under a provider the subscription
    has not registered (the text as the troubleshooting page and live traces give it)."""
    if registration_state(plane, subscription, namespace) != "Registered":
        raise ArmError(
            409,
            "MissingSubscriptionRegistration",
            f"The subscription is not registered to use namespace '{namespace}'. See "
            "https://aka.ms/rps-not-found for how to register subscriptions.",
            target=namespace,
        )


def registration_state(plane: LocalAzure, subscription: str, namespace: str) -> str:
    known = plane.estate.subscriptions[subscription.lower()]
    state = known.providers.get(namespace.lower(), "Registered")
    if state == "Registering" and time.monotonic() >= known.registered_at.get(namespace.lower(), 0):
        known.providers.pop(namespace.lower())
        return "Registered"
    return state


def _get_provider(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    state = registration_state(plane, p["sub"], p["ns"])
    return json_response(
        200,
        {
            "id": f"/subscriptions/{p['sub']}/providers/{p['ns']}",
            "namespace": p["ns"],
            "registrationState": state,
            "registrationPolicy": "RegistrationRequired",
        },
    )


def _register(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """Registration takes a while (minutes in Azure): ``Registering`` for
    ``plane.registration_seconds``, then ``Registered``."""
    known = plane.estate.subscriptions[p["sub"].lower()]
    namespace = p["ns"].lower()
    if registration_state(plane, p["sub"], p["ns"]) != "Registered":
        known.providers[namespace] = "Registering"
        known.registered_at[namespace] = time.monotonic() + plane.registration_seconds
    return _get_provider(plane, p, q, body, who)


def _group_key(p: Params) -> str:
    return f"/subscriptions/{p['sub']}/resourcegroups/{p['rg']}".lower()


def _put_group(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """201 created, 200 when it exists in the same location; in another location, 409
    InvalidResourceGroupLocation "Invalid resource group location 'x'. The Resource group
    already exists in location 'y'." (Azure/azure-cli#22242)."""
    location = str((body or {}).get("location") or "")
    if not location:
        raise ArmError(
            400, "LocationRequired", "The location property is required for this definition."
        )
    existing = plane.resource_groups.get(_group_key(p))
    if existing is not None and existing["location"].lower() != location.lower():
        raise ArmError(
            409,
            "InvalidResourceGroupLocation",
            f"Invalid resource group location '{location}'. The Resource group already exists "
            f"in location '{existing['location']}'.",
        )
    group = {
        "id": f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}",
        "name": p["rg"],
        "type": "Microsoft.Resources/resourceGroups",
        "location": location,
        "tags": (body or {}).get("tags") or {},
        "properties": {"provisioningState": "Succeeded"},
    }
    plane.resource_groups[_group_key(p)] = group
    return json_response(200 if existing is not None else 201, group)


def _get_group(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    group = plane.resource_groups.get(_group_key(p))
    if group is None:
        raise ArmError(
            404, "ResourceGroupNotFound", f"Resource group '{p['rg']}' could not be found."
        )
    return json_response(200, group)


def _delete_group(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """202 with a Location to poll (the spec's long-running delete); everything in the
    group goes with it. A group that is not there: 404 ResourceGroupNotFound."""
    _get_group(plane, p, q, body, who)
    prefix = _group_key(p) + "/"
    plane.resource_groups.pop(_group_key(p))
    for store in (plane.system_topics, plane.event_subscriptions):
        for key in [key for key in store if key.startswith(prefix)]:
            del store[key]
    token = uuid.uuid4().hex
    location = (
        f"{plane.url}/subscriptions/{p['sub']}/operationresults/{token}?api-version=2021-04-01"
    )
    return Response(202, b"", {"Location": location, "Retry-After": "0"})


def _operation_result(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    return Response(200, b"", {})  # the delete above is done by the time it is polled


ROUTES = (
    route("GET", SUB + r"/providers/(?P<ns>[A-Za-z]+\.[A-Za-z.]+)", _get_provider, "Microsoft.Resources/subscriptions/providers/read", "groups"),
    route("POST", SUB + r"/providers/(?P<ns>[A-Za-z]+\.[A-Za-z.]+)/register", _register, "Microsoft.Resources/subscriptions/providers/register/action", "groups"),
    route("PUT", SUB + r"/resourcegroups/(?P<rg>[^/]+)", _put_group, "Microsoft.Resources/subscriptions/resourceGroups/write", "groups"),
    route("GET", SUB + r"/resourcegroups/(?P<rg>[^/]+)", _get_group, "Microsoft.Resources/subscriptions/resourceGroups/read", "groups"),
    route("DELETE", SUB + r"/resourcegroups/(?P<rg>[^/]+)", _delete_group, "Microsoft.Resources/subscriptions/resourceGroups/delete", "groups"),
    route("GET", SUB + r"/operationresults/(?P<op>[^/]+)", _operation_result, "Microsoft.Resources/subscriptions/operationresults/read", "groups"),
)  # fmt: skip
