"""Resource Graph: the app's query shapes (the sweep's VMs and Arc machines, the baseline,
the subscriptions of a scope, the uniform scale-set summary; any other is a 400), scoped
by ``subscriptions`` or ``managementGroups``, pages of up to 1000 rows with
``$skipToken``, and the user quota the router applies to them."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections import deque
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from localazure.authorization import granted
from localazure.compute import agent_view, power_status
from localazure.estate import Estate, Subscription, Vm
from localazure.hybrid import smbios_uuid
from localazure.machinery import ArmError, Params, Query, Response, json_response, route

if TYPE_CHECKING:
    from localazure.server import LocalAzure

API_VERSIONS = {"graph": {"2021-03-01", "2022-10-01", "2024-04-01"}}
SUBSCRIPTION_READ = "Microsoft.Resources/subscriptions/read"
GRAPH_QUOTA = (15, 5.0)  # queries per window, window seconds, per principal
GRAPH_MAX_PAGE = 1000

# The Resource Graph query shapes this plane answers, whitespace-normalised. Kept here
# on purpose rather than imported from the app: a changed query must fail loudly (400)
# until someone teaches the plane what the real service would return for it.
SWEEP_QUERY = """
resources
| where type in~ ('microsoft.compute/virtualmachines', 'microsoft.hybridcompute/machines')
| extend machineKey = tolower(id)
| join kind=leftouter (
    resources
    | where type in~ ('microsoft.compute/virtualmachines/extensions',
        'microsoft.hybridcompute/machines/extensions')
    | extend machineKey = tolower(substring(id, 0, indexof(id, '/extensions/')))
    | summarize extensions = make_list(pack('name', name, 'publisher', properties.publisher,
        'type', properties.type, 'provisioningState', properties.provisioningState)) by machineKey
  ) on machineKey
| project id, location, tags,
    imageReference = properties.storageProfile.imageReference,
    osType = tostring(properties.storageProfile.osDisk.osType),
    licenseType = tostring(properties.licenseType),
    vmId = tostring(properties.vmId),
    instanceView = properties.extended.instanceView,
    status = tostring(properties.status),
    osName = tostring(properties.osName),
    osSku = tostring(properties.osSku),
    osVersion = tostring(properties.osVersion),
    arcOsType = tostring(properties.osType),
    cloudProvider = tostring(properties.cloudMetadata.provider),
    vmUuid = tostring(properties.vmUuid),
    extensions
| order by id asc
"""
BASELINE_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| project id
| order by id asc
"""
# The subscriptions of a scope (the request's subscriptions or managementGroups) with
# display name, state and management-group chain, from the resourcecontainers table.
CONTAINERS_QUERY = """
resourcecontainers
| where type =~ 'microsoft.resources/subscriptions'
| project subscriptionId, name, state = tostring(properties.state),
    managementGroups = properties.managementGroupAncestorsChain
| order by subscriptionId asc
"""
# Per subscription, its scale sets that are not Flexible and their instances.
SCALE_SETS_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachinescalesets'
| where tostring(properties.orchestrationMode) !~ 'Flexible'
| summarize scaleSets = count(), instances = sum(toint(sku.capacity)) by subscriptionId
| order by subscriptionId asc
"""

# The Azure VMs with given vmIds: the app asks it with an Arc machine's SMBIOS id (both
# byte orders). KQL's "in" compares case-sensitively, hence the tolower() on both sides.
TWIN_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| where tolower(tostring(properties.vmId)) in ({ids})
| project id
"""
_TWIN = re.compile(
    re.escape(" ".join(TWIN_QUERY.split())).replace(
        re.escape("{ids}"), r"(?P<ids>'[0-9a-f-]{36}'(?:, '[0-9a-f-]{36}')*)"
    )
)
QUERIES = (SWEEP_QUERY, BASELINE_QUERY, CONTAINERS_QUERY, SCALE_SETS_QUERY)


def normalise_query(query: str) -> str:
    return " ".join(query.split())


def _extensions(vm: Vm) -> list[dict[str, Any]]:
    return [
        {
            "name": ext.name,
            "publisher": ext.publisher,
            "type": ext.type,
            "provisioningState": ext.state,
        }
        for ext in vm.extensions.values()
    ]


# The sweep's Arc columns: tostring() of a property a VM does not have is "" (and of an
# Arc machine's missing storageProfile, likewise), projections of missing objects null.
_ARC_COLUMNS = ("status", "osName", "osSku", "osVersion", "arcOsType", "cloudProvider", "vmUuid")


def graph_row(vm: Vm) -> dict[str, Any]:
    """The sweep query's row for a VM or an Arc machine, as Resource Graph projects it.
    Arc machines and their extensions are in the resources table (Resource Graph's
    sample "List all extensions installed on an Azure Arc-enabled server")."""
    if vm.kind == "arc":
        return {
            "id": vm.id,
            "location": vm.location,
            "tags": dict(vm.tags),
            "imageReference": None,
            "osType": "",
            "licenseType": "",
            "vmId": vm.vm_id,
            "instanceView": None,
            "status": vm.arc_status,
            "osName": vm.os_name,
            "osSku": vm.os_sku,
            "osVersion": vm.os_version,
            "arcOsType": vm.os_type.lower(),
            "cloudProvider": vm.cloud_provider,
            "vmUuid": smbios_uuid(vm),
            "extensions": _extensions(vm),
        }
    view = agent_view(vm)
    view["powerState"] = power_status(vm)
    row: dict[str, Any] = {
        "id": vm.id,
        "location": vm.location,
        "tags": dict(vm.tags),
        "imageReference": dict(vm.image),
        "osType": vm.os_type,
        "licenseType": vm.license_type,
        "vmId": vm.vm_id,
        "instanceView": view,
        **dict.fromkeys(_ARC_COLUMNS, ""),
        "extensions": _extensions(vm),
    }
    return row


def container_row(estate: Estate, subscription: Subscription) -> dict[str, Any]:
    """A subscription's resourcecontainers row as the query projects it: ``name`` is the
    display name, ``managementGroups`` its ancestors {name: id, displayName}, parent
    first, the tenant root group last (Resource Graph's management-group samples take
    [0] as the parent; ARM's $expand=ancestors lists them in that order:
    Azure/azure-rest-api-specs#15935)."""
    return {
        "subscriptionId": subscription.id,
        "name": subscription.display_name,
        "state": subscription.state,
        "managementGroups": [
            {"name": group.id, "displayName": group.display_name}
            for group in estate.ancestors(subscription)
        ],
    }


def user_quota(plane: LocalAzure, principal: str) -> dict[str, str]:
    """Take one query from the principal's quota: its headers, or a 429 when used up."""
    limit, window = GRAPH_QUOTA
    now = time.monotonic()
    with plane.lock:
        calls = plane._graph_calls.setdefault(principal, deque())
        while calls and now - calls[0] >= window:
            calls.popleft()
        resets = window - (now - calls[0]) if calls else window
        stamp = time.strftime("%H:%M:%S", time.gmtime(math.ceil(resets)))
        if len(calls) >= limit:
            raise ArmError(
                429,
                "RateLimiting",
                "Please provide below info when asking for support: the user quota of "
                f"{limit} queries per {window:.0f} seconds is used up.",
                {"x-ms-user-quota-remaining": "0", "x-ms-user-quota-resets-after": stamp},
            )
        calls.append(now)
        return {
            "x-ms-user-quota-remaining": str(limit - len(calls)),
            "x-ms-user-quota-resets-after": stamp,
        }


def _scope(plane: LocalAzure, body: dict[str, Any]) -> list[Subscription]:
    """The subscriptions a request covers: those listed that exist, or every one below
    the management groups. "managementGroups can't be used at the same time as
    subscriptions" (Resource Graph's query-language docs, "Query scope"); an id that is
    not a management group is 400 BadRequest with a ManagementGroupsContainInvalidIds
    detail (rubrikinc/rubrik-sizing-scripts#87). A request with neither would query the
    caller's whole tenant: this plane refuses it (400)."""
    subscriptions = body.get("subscriptions")
    groups = body.get("managementGroups")
    if subscriptions and groups:
        raise ArmError(
            400,
            "BadRequest",
            "Please provide below info when asking for support: the request names both "
            "subscriptions and managementGroups; use one of them.",
        )
    estate = plane.estate
    if groups:
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ArmError(400, "BadRequest", "managementGroups must be a list of ids")
        invalid = [g for g in groups if estate.group(g) is None]
        if invalid:
            given = ", ".join(invalid)
            raise ArmError(
                400,
                "BadRequest",
                "Please provide below info when asking for support: the request's "
                "management groups are not valid.",
                details=[
                    {
                        "code": "ManagementGroupsContainInvalidIds",
                        "message": f"The provided management groups must be valid. Given: '{given}'.",
                    }
                ],
            )
        found = {s.id.lower(): s for g in groups for s in estate.subscriptions_under(g)}
        return [s for s in found.values() if not s.no_access]
    if not isinstance(subscriptions, list) or not subscriptions:
        raise ArmError(400, "BadRequest", "subscriptions or managementGroups is required")
    wanted = {str(s).lower() for s in subscriptions}
    # "the query results are returned for the subscriptions the user has access to ...
    # without any indication that the result may be partial. If there are no
    # subscriptions in the subscription list that the user has appropriate rights to,
    # the response is a 403" (Resource Graph overview, "Permissions in Azure Resource
    # Graph"; the body as Azure/azure-sdk-for-java#29924 quotes it).
    readable = [s for key, s in estate.subscriptions.items() if key in wanted and not s.no_access]
    if not readable:
        raise ArmError(
            403,
            "AccessDenied",
            "Please provide below info when asking for support: the caller has access to "
            "none of the request's subscriptions.",
            details=[
                {
                    "code": "AccessDenied",
                    "message": "Access is denied to the requested resource. The user might "
                    "not have enough permission.",
                }
            ],
        )
    return readable


def _scale_set_rows(plane: LocalAzure, subscriptions: list[Subscription]) -> list[dict[str, Any]]:
    """summarize ... by subscriptionId: a row only for subscriptions that have one. An old
    scale set without orchestrationMode passes ``!~ 'Flexible'`` (tostring of a missing
    property is "")."""
    rows = []
    for subscription in subscriptions:
        uniform = [
            s
            for s in plane.estate.scale_sets
            if s.subscription.lower() == subscription.id.lower()
            and s.orchestration_mode.lower() != "flexible"
        ]
        if uniform:
            rows.append(
                {
                    "subscriptionId": subscription.id,
                    "scaleSets": len(uniform),
                    "instances": sum(s.capacity for s in uniform),
                }
            )
    return rows


def _graph(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ArmError(400, "BadRequest", "query is required")
    shape = normalise_query(body["query"])
    known = {normalise_query(known) for known in QUERIES}
    twin = _TWIN.fullmatch(shape)
    if shape not in known and twin is None:
        raise ArmError(400, "InvalidQuery", "this query shape is not supported by the local plane")
    subscriptions = sorted(_scope(plane, body), key=lambda s: s.id.lower())
    options = body.get("options") or {}
    if options.get("resultFormat", "objectArray") != "objectArray":
        raise ArmError(400, "BadRequest", "only resultFormat objectArray is supported")
    top = options.get("$top", 100)
    if not isinstance(top, int) or not 1 <= top <= GRAPH_MAX_PAGE:
        raise ArmError(400, "BadRequest", f"$top must be between 1 and {GRAPH_MAX_PAGE}")
    scope = sorted(s.id.lower() for s in subscriptions)
    fingerprint = hashlib.sha256(json.dumps([shape, scope]).encode()).hexdigest()[:16]
    offset = int(options.get("$skip", 0) or 0)
    if options.get("$skipToken"):
        try:
            token = json.loads(base64.b64decode(options["$skipToken"]))
            assert token["q"] == fingerprint
            offset = int(token["o"])
        except (ValueError, KeyError, AssertionError, TypeError):
            raise ArmError(
                400, "BadRequest", "the $skipToken is not valid for this query"
            ) from None
    rows: list[Any]
    project: Callable[[Any], dict[str, Any]]
    if shape == normalise_query(SWEEP_QUERY):
        rows = sorted(
            (vm for s in subscriptions for vm in plane.estate.vms_in(s.id, ("vm", "arc"))),
            key=lambda vm: vm.key,
        )
        project = lambda vm: _lagging_row(plane, vm)  # noqa: E731
    elif shape == normalise_query(BASELINE_QUERY):
        rows = sorted(
            (vm for s in subscriptions for vm in plane.estate.vms_in(s.id)),
            key=lambda vm: vm.key,
        )
        project = lambda vm: {"id": vm.id}  # noqa: E731
    elif twin is not None:
        wanted = set(re.findall(r"'([0-9a-f-]{36})'", twin["ids"]))
        rows = sorted(
            (
                vm
                for s in subscriptions
                for vm in plane.estate.vms_in(s.id)
                if vm.vm_id.lower() in wanted
            ),
            key=lambda vm: vm.key,
        )
        project = lambda vm: {"id": vm.id}  # noqa: E731
    elif shape == normalise_query(CONTAINERS_QUERY):
        # Resource Graph returns only what the caller may read ("Resource Graph ... returns
        # resources the user has at least read access to": the Resource Graph overview's
        # permissions section): a subscription's row needs Microsoft.Resources/
        # subscriptions/read (Reader at a group grants it down the hierarchy).
        reader = any(
            fnmatchcase(SUBSCRIPTION_READ.lower(), pattern.lower())
            for pattern in granted(plane._principal_by_oid(who))
        )
        rows = subscriptions if reader else []
        project = lambda s: container_row(plane.estate, s)  # noqa: E731
    else:
        rows = _scale_set_rows(plane, subscriptions)
        project = dict
    page = rows[offset : offset + top]
    value: dict[str, Any] = {
        "totalRecords": len(rows),
        "count": len(page),
        "resultTruncated": "false",
        "facets": [],
        "data": [project(row) for row in page],
    }
    if offset + top < len(rows):
        value["$skipToken"] = base64.b64encode(
            json.dumps({"q": fingerprint, "o": offset + top}).encode()
        ).decode()
    return json_response(200, value)


def _lagging_row(plane: LocalAzure, vm: Vm) -> dict[str, Any]:
    """Resource Graph learns of ARM changes by notification, "95% ... within 1 minute"
    (MicrosoftDocs/azure-docs#19879; Azure/azure-dev#540: "There is no upper bound"):
    a VM's or Arc machine's row is a copy at most ``graph_lag_seconds`` old, not ARM's
    live state."""
    now = time.monotonic()
    copy = plane.graph_copies.get(vm.key)
    if copy is None or now - copy[0] >= plane.graph_lag_seconds:
        copy = (now, graph_row(vm))
        plane.graph_copies[vm.key] = copy
    return copy[1]


ROUTES = (
    route("POST", r"/providers/Microsoft\.ResourceGraph/resources", _graph, "Microsoft.ResourceGraph/resources/read", "graph"),
)  # fmt: skip
