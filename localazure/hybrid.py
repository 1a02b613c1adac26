"""Microsoft.HybridCompute: Arc-enabled servers (GET machine), their extensions (list,
get, put, delete as long-running operations polled at ``operationstatus`` and read at
``operationresults``), and extension operations that wait, queued, while a machine is
disconnected.

Sources: azure-rest-api-specs specification/hybridcompute/resource-manager/
Microsoft.HybridCompute/HybridCompute (readme.md's stable tags; stable/2026-07-15/
openapi.json: Machines_Get, MachineExtensions_*; examples/machine/Machines_Get.json,
examples/extension/Extension_*.json); azure-powershell#12578 (a live 202 carrying
Azure-AsyncOperation .../locations/{loc}/operationstatus/{id} and Location
.../operationresults/{id}); learn.microsoft.com/azure/azure-arc/servers/overview (status
values, Expired) and .../disconnected-scenarios (queued extension operations).
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from localazure.compute import mde_outcome
from localazure.estate import MDE_PUBLISHER, Extension, Vm
from localazure.eventgrid import record_event
from localazure.machinery import (
    SUB,
    ArmError,
    Operation,
    Params,
    Query,
    Response,
    json_response,
    route,
    utc_now,
)

if TYPE_CHECKING:
    from localazure.server import LocalAzure

# azure-mgmt-hybridcompute 10.0.0's default (the app sends it for its raw reads too),
# and the stable tags of the spec's readme.md (package-2026-09-01 the newest).
HYBRID_API = "2026-07-15"
API_VERSIONS = {
    "hybridcompute": {
        "2026-09-01",
        HYBRID_API,
        "2025-01-13",
        "2024-07-10",
        "2022-12-27",
        "2022-11-10",
        "2022-03-10",
        "2021-05-20",
        "2020-08-02",
        "2019-12-12",
    }
}
MACHINE_TYPE = "Microsoft.HybridCompute/machines"
EXTENSION_TYPE = "Microsoft.HybridCompute/machines/extensions"
MACHINE_WRITE = f"{MACHINE_TYPE}/write"


# --- Resource representations ---------------------------------------------------------
def smbios_uuid(machine: Vm) -> str:
    """properties.vmUuid: "the Arc Machine's unique SMBIOS ID" (HybridCompute spec), as
    the agent reads it, upper case."""
    return (machine.smbios_uuid or str(uuid.uuid5(uuid.NAMESPACE_DNS, machine.vm_id))).upper()


def machine_json(machine: Vm, tenant: str) -> dict[str, Any]:
    """GET machine: the spec's Machines_Get example with the fields a real agent fills
    (an ``az connectedmachine show`` output: osName/osType lower-case, osSku the OS's own
    name, osVersion the kernel on Linux, cloudMetadata.provider "N/A" on premises)."""
    return {
        "id": machine.id,
        "name": machine.name,
        "type": MACHINE_TYPE,
        "location": machine.location,
        "tags": dict(machine.tags),
        "identity": {
            "type": "SystemAssigned",
            "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, machine.key)),
            "tenantId": tenant,
        },
        "properties": {
            "provisioningState": "Succeeded",
            "status": machine.arc_status,
            "lastStatusChange": machine.last_status_change,
            "agentVersion": machine.agent_version,
            "displayName": machine.name,
            "machineFqdn": f"{machine.name}.contoso.local",
            "osName": machine.os_name,
            "osType": machine.os_type.lower(),
            "osSku": machine.os_sku,
            "osVersion": machine.os_version,
            "osProfile": {"computerName": machine.name},
            "vmId": machine.vm_id,
            "vmUuid": smbios_uuid(machine),
            "cloudMetadata": {"provider": machine.cloud_provider},
            "detectedProperties": {
                "cloudprovider": machine.cloud_provider,
                "manufacturer": "Microsoft Corporation",
                "model": "Virtual Machine",
                "mssqldiscovered": "false",
            },
        },
    }


def instance_view(ext: Extension) -> dict[str, Any]:
    """An Arc extension's instanceView holds ONE status (not Compute's statuses[]);
    level "Information" as the spec's examples and live output show; an operation in
    flight has an empty status (the spec's LISTExtension example). Succeeded: code
    "success" and the message of a live MDE/AMA listing (azure-powershell#19400).
    Failed: code "failed", level "Error", and the handler's exit code in the message
    (the code and wording are unconfirmed: docs/fidelity.md)."""
    view: dict[str, Any] = {
        "name": ext.type,
        "type": ext.type,
        "typeHandlerVersion": ext.type_handler_version,
        "status": {},
    }
    if ext.state == "Succeeded":
        view["status"] = {
            "code": "success",
            "level": "Information",
            "displayStatus": "Provisioning succeeded",
            "message": "Extension Message: ExtensionOperation:enable. Status:Success",
            "time": utc_now(),
        }
    elif ext.state == "Failed":
        view["status"] = {
            "code": "failed",
            "level": "Error",
            "displayStatus": "Provisioning failed",
            "message": ext.message or _failure_message(ext.code, ""),
            "time": utc_now(),
        }
    return view


def extension_json(machine: Vm, ext: Extension) -> dict[str, Any]:
    """settings are returned, protectedSettings never (the spec marks them write-only)."""
    return {
        "id": f"{machine.id}/extensions/{ext.name}",
        "name": ext.name,
        "type": EXTENSION_TYPE,
        "location": machine.location,
        "properties": {
            "publisher": ext.publisher,
            "type": ext.type,
            "typeHandlerVersion": ext.type_handler_version,
            "autoUpgradeMinorVersion": ext.auto_upgrade_minor_version,
            "enableAutomaticUpgrade": True,
            "provisioningState": ext.state,
            "settings": ext.settings,
            "instanceView": instance_view(ext),
        },
    }


def _failure_message(code: int | None, reason: str) -> str:
    """The handler's status message with its exit code, as MDE.Linux words it on VMs
    ("exit code 10"); MDE.Windows the same way here (unconfirmed)."""
    reason = reason.removeprefix("Enable failed: ")
    prefix = f"exit code {code}: "
    reason = reason.removeprefix(prefix)
    return f"Extension Message: Enable failed: {prefix}{reason}"


# --- Machines ---------------------------------------------------------------------------
def _machine_id(p: Params) -> str:
    return f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}/providers/{MACHINE_TYPE}/{p['machine']}"


def _machine(plane: LocalAzure, p: Params) -> Vm:
    """The Arc machine, or 404 ResourceNotFound worded as ARM words it for a machine
    (microsoft/azure_arc#3255: "The Resource 'Microsoft.HybridCompute/machines/X' under
    resource group 'G' was not found.")."""
    machine = plane._vm(_machine_id(p))
    plane._in_flight(machine)  # let due operations land before answering
    return machine


def _get_machine(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    return json_response(200, machine_json(_machine(plane, p), plane.estate.tenant))


# --- Extensions -------------------------------------------------------------------------
def _list_extensions(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    machine = _machine(plane, p)
    items = list(machine.extensions.values())
    start = int(q.get("$skiptoken", "0") or 0)
    page = items[start : start + plane.list_page_size]
    value: dict[str, Any] = {"value": [extension_json(machine, ext) for ext in page]}
    if start + plane.list_page_size < len(items):
        path = urlsplit(machine.id).path
        value["nextLink"] = (
            f"{plane.url}{path}/extensions?api-version={q.get('api-version', HYBRID_API)}"
            f"&$skiptoken={start + plane.list_page_size}"
        )
    return json_response(200, value)


def _get_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    machine = _machine(plane, p)
    ext = machine.extensions.get(p["ext"].lower())
    if ext is None:
        raise ArmError(
            404,
            "ResourceNotFound",
            f"The Resource '{EXTENSION_TYPE}/{machine.name}/{p['ext']}' under resource group "
            f"'{machine.resource_group}' was not found.",
        )
    return json_response(200, extension_json(machine, ext))


def connected(machine: Vm) -> bool:
    return machine.arc_status == "Connected"


def _start(plane: LocalAzure, machine: Vm, finish: Any, error: Any = None) -> Operation:
    """An extension operation: it runs on a Connected machine; on any other it is queued
    ("These operations are queued on the service for up to 6 hours, and can only be
    executed when connectivity is restored": disconnected-scenarios) until
    ``plane.set_arc_status(id, "Connected")``."""
    operation = plane._start_operation(machine, finish, error)
    if not connected(machine):
        operation.done_at = math.inf
    return operation


def _operation_headers(
    plane: LocalAzure, machine: Vm, operation: Operation, api: str
) -> dict[str, str]:
    """Location and Retry-After: the spec's 202 headers (MachineExtensions_CreateOrUpdate,
    final-state-via: location), which azure-mgmt-hybridcompute 10.0.0 reads. With
    ``plane.arc_async_operation`` also Azure-AsyncOperation, as the live 202 of
    azure-powershell#12578 (2019) carried it: the app must handle both. Retry-After is
    the plane's operation time in whole seconds (0 in tests); Azure's value is unconfirmed."""
    base = (
        f"{plane.url}/subscriptions/{machine.subscription}/providers/Microsoft.HybridCompute"
        f"/locations/{machine.location}"
    )
    headers = {
        "Location": f"{base}/operationresults/{operation.id}?api-version={api}",
        "Retry-After": str(int(plane.lro_seconds)),
    }
    if plane.arc_async_operation:
        headers["Azure-AsyncOperation"] = f"{base}/operationstatus/{operation.id}?api-version={api}"
    return headers


def _put_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    machine = _machine(plane, p)
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise ArmError(
            400, "InvalidRequestContent", "The request content was invalid: properties is required."
        )
    if not body.get("location"):
        raise ArmError(
            400, "LocationRequired", "The location property is required for this definition."
        )
    properties = body["properties"]
    for name in ("publisher", "type"):
        if not properties.get(name):
            raise ArmError(
                400, "InvalidParameter", f"Required parameter '{name}' is missing (null)."
            )
    if plane._in_flight(machine):
        # As Compute answers a second PUT while one runs (compute.py); Arc's own answer
        # is unconfirmed (docs/fidelity.md).
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Operation 'PUT' is not allowed on machine '{machine.name}' since another "
            "operation is in progress.",
        )
    plane.extension_puts.append((f"{machine.id}/extensions/{p['ext']}", body))
    key = p["ext"].lower()
    existed = key in machine.extensions
    ext = Extension(
        name=machine.extensions[key].name if existed else p["ext"],
        publisher=properties["publisher"],
        type=properties["type"],
        type_handler_version=str(properties.get("typeHandlerVersion") or ""),
        state="Updating" if existed else "Creating",
        settings=properties.get("settings") or {},
        auto_upgrade_minor_version=bool(properties.get("autoUpgradeMinorVersion")),
    )
    code, message = None, ""
    if ext.publisher == MDE_PUBLISHER:
        code, message = mde_outcome(plane, machine, properties, properties.get("protectedSettings"))
        resource_id = str((ext.settings or {}).get("azureResourceId") or "")
        if code is None and resource_id.lower() != machine.key:
            # The built-in Arc policies set azureResourceId to the machine's id; another
            # value is the plane's own refusal (MDE.Linux code 2, invalid arguments).
            code, message = (
                2,
                f"invalid arguments: azureResourceId '{resource_id}' is not this machine",
            )
    if code is not None:
        message = _failure_message(code, message)
    machine.extensions[key] = ext
    resource_id = f"{machine.id}/extensions/{ext.name}"

    def finish() -> None:
        ext.state = "Succeeded" if code is None else "Failed"
        ext.code, ext.message = code, message
        record_event(
            plane,
            "Write",
            f"{EXTENSION_TYPE}/write",
            resource_id,
            who,
            "Success" if code is None else "Failure",
        )

    error = None
    if code is not None:
        error = {
            "code": "ExtensionOperationFailed",
            "message": f"The extension operation failed for extension '{ext.name}' "
            f"(publisher '{ext.publisher}', type '{ext.type}'): {message}",
        }
    operation = _start(plane, machine, finish, error)
    operation.result = ext  # what the Location URL answers with once done
    api = q.get("api-version", HYBRID_API)
    return Response(202, b"", _operation_headers(plane, machine, operation, api))


def _delete_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    machine = _machine(plane, p)
    key = p["ext"].lower()
    if key not in machine.extensions:
        return Response(204, b"", {})
    if plane._in_flight(machine):
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Operation 'DELETE' is not allowed on machine '{machine.name}' since another "
            "operation is in progress.",
        )
    machine.extensions[key].state = "Deleting"
    resource_id = f"{machine.id}/extensions/{machine.extensions[key].name}"

    def finish() -> None:
        machine.extensions.pop(key, None)
        record_event(plane, "Delete", f"{EXTENSION_TYPE}/delete", resource_id, who)

    operation = _start(plane, machine, finish)
    api = q.get("api-version", HYBRID_API)
    return Response(202, b"", _operation_headers(plane, machine, operation, api))


# --- Long-running operations ------------------------------------------------------------
def _operation(plane: LocalAzure, p: Params) -> Operation:
    operation = plane.operations.get(p["op"])
    if operation is None or operation.vm_key.split("/")[2] != p["sub"].lower():
        raise ArmError(404, "NotFound", "The operation was not found.")
    plane._advance(operation)
    return operation


def _operation_status(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """The Azure-AsyncOperation URL: {id, name, status, startTime[, endTime, error]}."""
    operation = _operation(plane, p)
    value: dict[str, Any] = {
        "id": f"/subscriptions/{p['sub']}/providers/Microsoft.HybridCompute/locations/"
        f"{p['loc']}/operationstatus/{operation.id}",
        "name": operation.id,
        "startTime": operation.started,
    }
    if not operation.finished:
        value["status"] = "InProgress"
    elif operation.error:
        value.update(status="Failed", endTime=utc_now(), error=operation.error)
    else:
        value.update(status="Succeeded", endTime=utc_now())
    return json_response(200, value)


def _operation_result(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    """The Location URL: 202 while the operation runs, then 200 with the extension
    (final-state-via: location, final-state-schema MachineExtension), 204 once a delete
    is done."""
    operation = _operation(plane, p)
    if not operation.finished:
        return Response(202, b"", {"Retry-After": str(int(plane.lro_seconds))})
    machine = plane.estate.vm(operation.vm_key)
    ext = operation.result
    if (
        machine is None
        or not isinstance(ext, Extension)
        or ext.name.lower() not in machine.extensions
    ):
        return Response(204, b"", {})
    return json_response(200, extension_json(machine, ext))


_MACHINE = (
    SUB
    + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.HybridCompute/machines/(?P<machine>[^/]+)"
)
_LOCATION = SUB + r"/providers/Microsoft\.HybridCompute/locations/(?P<loc>[^/]+)"

ROUTES = (
    route("GET", _MACHINE, _get_machine, "Microsoft.HybridCompute/machines/read", "hybridcompute"),
    route("GET", _MACHINE + r"/extensions", _list_extensions, "Microsoft.HybridCompute/machines/extensions/read", "hybridcompute"),
    route("GET", _MACHINE + r"/extensions/(?P<ext>[^/]+)", _get_extension, "Microsoft.HybridCompute/machines/extensions/read", "hybridcompute"),
    route("PUT", _MACHINE + r"/extensions/(?P<ext>[^/]+)", _put_extension, "Microsoft.HybridCompute/machines/extensions/write", "hybridcompute"),
    route("DELETE", _MACHINE + r"/extensions/(?P<ext>[^/]+)", _delete_extension, "Microsoft.HybridCompute/machines/extensions/delete", "hybridcompute"),
    route("GET", _LOCATION + r"/operationstatus/(?P<op>[^/]+)", _operation_status, "Microsoft.HybridCompute/locations/operationstatus/read", "hybridcompute"),
    route("GET", _LOCATION + r"/operationresults/(?P<op>[^/]+)", _operation_result, "Microsoft.HybridCompute/locations/operationresults/read", "hybridcompute"),
)  # fmt: skip
