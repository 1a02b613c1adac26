"""Resource Graph: the sweep's and the baseline's query shapes (any other is a 400), pages
of up to 1000 rows with ``$skipToken``, and the user quota the router applies to them."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from localazure.compute import agent_view, power_status
from localazure.estate import Vm
from localazure.machinery import ArmError, Params, Query, Response, json_response, route

if TYPE_CHECKING:
    from localazure.server import LocalAzure

API_VERSIONS = {"graph": {"2021-03-01", "2022-10-01", "2024-04-01"}}
GRAPH_QUOTA = (15, 5.0)  # queries per window, window seconds, per principal
GRAPH_MAX_PAGE = 1000

# The Resource Graph query shapes this plane answers, whitespace-normalised. Kept here
# on purpose rather than imported from the app: a changed query must fail loudly (400)
# until someone teaches the plane what the real service would return for it.
SWEEP_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| extend vmKey = tolower(id)
| join kind=leftouter (
    resources
    | where type =~ 'microsoft.compute/virtualmachines/extensions'
    | extend vmKey = tolower(substring(id, 0, indexof(id, '/extensions/')))
    | summarize extensions = make_list(pack('name', name, 'publisher', properties.publisher,
        'type', properties.type, 'provisioningState', properties.provisioningState)) by vmKey
  ) on vmKey
| project id, location, tags,
    imageReference = properties.storageProfile.imageReference,
    osType = tostring(properties.storageProfile.osDisk.osType),
    licenseType = tostring(properties.licenseType),
    vmId = tostring(properties.vmId),
    instanceView = properties.extended.instanceView,
    extensions
| order by id asc
"""
BASELINE_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| project id
| order by id asc
"""


def normalise_query(query: str) -> str:
    return " ".join(query.split())


def graph_row(vm: Vm) -> dict[str, Any]:
    """The sweep query's row for a VM, as Resource Graph would project it."""
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
        "extensions": [
            {
                "name": ext.name,
                "publisher": ext.publisher,
                "type": ext.type,
                "provisioningState": ext.state,
            }
            for ext in vm.extensions.values()
        ],
    }
    return row


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


def _graph(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ArmError(400, "BadRequest", "query is required")
    subscriptions = body.get("subscriptions")
    if not isinstance(subscriptions, list) or not subscriptions:
        raise ArmError(400, "BadRequest", "subscriptions must be a non-empty list")
    shape = normalise_query(body["query"])
    project: Callable[[Vm], dict[str, Any]]
    if shape == normalise_query(SWEEP_QUERY):
        project = lambda vm: _lagging_row(plane, vm)  # noqa: E731
    elif shape == normalise_query(BASELINE_QUERY):
        project = lambda vm: {"id": vm.id}  # noqa: E731
    else:
        raise ArmError(400, "InvalidQuery", "this query shape is not supported by the local plane")
    options = body.get("options") or {}
    if options.get("resultFormat", "objectArray") != "objectArray":
        raise ArmError(400, "BadRequest", "only resultFormat objectArray is supported")
    top = options.get("$top", 100)
    if not isinstance(top, int) or not 1 <= top <= GRAPH_MAX_PAGE:
        raise ArmError(400, "BadRequest", f"$top must be between 1 and {GRAPH_MAX_PAGE}")
    fingerprint = hashlib.sha256(json.dumps([shape, sorted(subscriptions)]).encode()).hexdigest()[
        :16
    ]
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
    vms = sorted(
        (vm for sub in subscriptions for vm in plane.estate.vms_in(str(sub))),
        key=lambda vm: vm.key,
    )
    page = vms[offset : offset + top]
    value: dict[str, Any] = {
        "totalRecords": len(vms),
        "count": len(page),
        "resultTruncated": "false",
        "facets": [],
        "data": [project(vm) for vm in page],
    }
    if offset + top < len(vms):
        value["$skipToken"] = base64.b64encode(
            json.dumps({"q": fingerprint, "o": offset + top}).encode()
        ).decode()
    return json_response(200, value)


def _lagging_row(plane: LocalAzure, vm: Vm) -> dict[str, Any]:
    """Resource Graph learns of ARM changes by notification, "95% ... within 1 minute"
    (MicrosoftDocs/azure-docs#19879; Azure/azure-dev#540: "There is no upper bound"):
    a VM's row is a copy at most ``graph_lag_seconds`` old, not ARM's live state."""
    now = time.monotonic()
    copy = plane.graph_copies.get(vm.key)
    if copy is None or now - copy[0] >= plane.graph_lag_seconds:
        copy = (now, graph_row(vm))
        plane.graph_copies[vm.key] = copy
    return copy[1]


ROUTES = (
    route("POST", r"/providers/Microsoft\.ResourceGraph/resources", _graph, "Microsoft.ResourceGraph/resources/read", "graph"),
)  # fmt: skip
