"""Compute: VM get/list (``nextLink`` paging), instance views, start/deallocate/powerOff,
extension get/put/delete as long-running operations (MDE's failure codes), Run Command
(a Location-polled long-running action), and the operation status they are polled at."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from localazure import defender, security
from localazure.authorization import require
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

COMPUTE_API = "2026-04-01"
# 2024-11-01: what azure-mgmt-compute 34.1.0 (c7n-azure 0.7.52's pin; Cloud Custodian in
# `make bench`, bench/custodian.py) sends for virtual_machines and
# virtual_machine_extensions. The stable version of azure-rest-api-specs
# specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01/
# (virtualMachine.json: VirtualMachines_ListAll, _Get with $expand=instanceView,
# _InstanceView, VirtualMachineExtensions_List), answered by the same handlers: the
# properties these read are in both versions. A list's nextLink carries the version
# asked for, as live ones do (Azure/azure-rest-api-specs#13843: 2020-06-01 in, 2020-06-01
# in the nextLink; Azure/azure-xplat-cli#2961: 2016-03-30 likewise).
COMPUTE_API_2024 = "2024-11-01"
API_VERSIONS = {"compute": {COMPUTE_API, COMPUTE_API_2024}}


# --- Resource representations -------------------------------------------------------
def extension_json(vm: Vm, ext: Extension) -> dict[str, Any]:
    return {
        "id": f"{vm.id}/extensions/{ext.name}",
        "name": ext.name,
        "type": "Microsoft.Compute/virtualMachines/extensions",
        "location": vm.location,
        "properties": {
            "publisher": ext.publisher,
            "type": ext.type,
            "typeHandlerVersion": ext.type_handler_version,
            "autoUpgradeMinorVersion": ext.auto_upgrade_minor_version,
            "settings": ext.settings,
            "provisioningState": ext.state,
        },
    }


def agent_reported(vm: Vm) -> bool:
    """A new VM's guest agent reports within minutes of the VM starting."""
    return vm.power == "running" and time.time() >= vm.agent_ready_at


def agent_view(vm: Vm) -> dict[str, Any]:
    """What the guest agent has reported: nothing while the VM is not running, or before
    a new VM's agent first reports (no osName/osVersion at all, not empty strings)."""
    view: dict[str, Any] = {"computerName": vm.name[:15]}
    if agent_reported(vm) and vm.os_name:
        view["osName"] = vm.os_name
        view["osVersion"] = vm.os_version
    return view


def vm_agent(vm: Vm) -> dict[str, Any]:
    """instanceView.vmAgent. Not reported yet: version 'Unknown' and a 'Not Ready' status,
    as captured from real VMs (ansible azure_rm_virtualmachine's example output)."""
    if agent_reported(vm):
        return {
            "vmAgentVersion": "2.13.1.1",
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Ready",
                    "message": "Guest Agent is running",
                }
            ],
        }
    return {
        "vmAgentVersion": "Unknown",
        "statuses": [
            {
                "code": "ProvisioningState/Unavailable",
                "level": "Warning",
                "displayStatus": "Not Ready",
                "message": "VM Agent is unresponsive.",
            }
        ],
    }


def power_status(vm: Vm) -> dict[str, str]:
    display = {"running": "VM running", "deallocated": "VM deallocated", "stopped": "VM stopped"}
    return {
        "code": f"PowerState/{vm.power}",
        "level": "Info",
        "displayStatus": display.get(vm.power, vm.power),
    }


def vm_json(vm: Vm, instance_view: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "vmId": vm.vm_id,
        "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
        "storageProfile": {
            "imageReference": dict(vm.image),
            "osDisk": {
                "osType": vm.os_type,
                "name": f"{vm.name}-osdisk",
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {"storageAccountType": "Premium_LRS"},
            },
            "dataDisks": [],
        },
        "osProfile": {"computerName": vm.name[:15], "adminUsername": "azureuser"},
        "networkProfile": {
            "networkInterfaces": [
                {
                    "id": f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}"
                    f"/providers/Microsoft.Network/networkInterfaces/{vm.name}-nic"
                }
            ]
        },
        "provisioningState": "Succeeded",
        "timeCreated": "2026-01-15T08:00:00Z",
    }
    if vm.license_type:
        properties["licenseType"] = vm.license_type
    if vm.scale_set:
        # A Flexible scale set's member is a standard VM that names its scale set
        # (learn.microsoft.com/azure/virtual-machine-scale-sets/
        # virtual-machine-scale-sets-orchestration-modes; Resource Graph's
        # properties.virtualMachineScaleSet.id in its Flexible sample).
        properties["virtualMachineScaleSet"] = {"id": vm.scale_set}
    if instance_view:
        view = agent_view(vm)
        if vm.power == "running":
            view["vmAgent"] = vm_agent(vm)
        view["statuses"] = [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
            },
            power_status(vm),
        ]
        view["extensions"] = [
            {
                "name": ext.name,
                "type": f"{ext.publisher}.{ext.type}",
                "typeHandlerVersion": ext.type_handler_version,
                "statuses": [
                    {
                        "code": f"ProvisioningState/{ext.state.lower()}"
                        + (
                            f"/{ext.code}" if ext.state == "Failed" and ext.code is not None else ""
                        ),
                        "level": "Error" if ext.state == "Failed" else "Info",
                        "displayStatus": f"Provisioning {ext.state.lower()}",
                        "message": ext.message,
                    }
                ],
            }
            for ext in vm.extensions.values()
            if ext.state in {"Succeeded", "Failed"}
        ]
        properties["instanceView"] = view
    return {
        "id": vm.id,
        "name": vm.name,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
        "tags": dict(vm.tags),
        "properties": properties,
        "resources": [extension_json(vm, ext) for ext in vm.extensions.values()],
    }


def _operation_headers(plane: LocalAzure, vm: Vm, operation: Operation) -> dict[str, str]:
    url = (
        f"{plane.url}/subscriptions/{vm.subscription}/providers/Microsoft.Compute/locations/"
        f"{vm.location}/operations/{operation.id}?api-version={COMPUTE_API}"
    )
    return {"Azure-AsyncOperation": url}


# --- Virtual machines -------------------------------------------------------------------
def _vm_id(p: Params) -> str:
    return (
        f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}"
        f"/providers/Microsoft.Compute/virtualMachines/{p['vm']}"
    )


def _get_vm(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)  # let due operations land before answering
    return json_response(200, vm_json(vm, q.get("$expand", "").lower() == "instanceview"))


def _instance_view(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)
    return json_response(200, vm_json(vm, True)["properties"]["instanceView"])


def _list_vms(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vms = plane.estate.vms_in(p["sub"])
    if p.get("rg"):
        vms = [vm for vm in vms if vm.resource_group.lower() == p["rg"].lower()]
    start = int(q.get("$skiptoken", "0") or 0)
    page = vms[start : start + plane.list_page_size]
    value: dict[str, Any] = {"value": [vm_json(vm, False) for vm in page]}
    if start + plane.list_page_size < len(vms):
        path = urlsplit(f"/subscriptions/{p['sub']}").path
        if p.get("rg"):
            path += f"/resourceGroups/{p['rg']}"
        value["nextLink"] = (
            f"{plane.url}{path}/providers/Microsoft.Compute/virtualMachines"
            f"?api-version={q.get('api-version') or COMPUTE_API}"
            f"&$skiptoken={start + plane.list_page_size}"
        )
    return json_response(200, value)


def _vm_action(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    action = p["action"].lower()
    target = {"start": "running", "deallocate": "deallocated", "poweroff": "stopped"}[action]
    name = {"start": "start", "deallocate": "deallocate", "poweroff": "powerOff"}[action]

    def finish() -> None:
        vm.power = target
        record_event(
            plane, "Action", f"Microsoft.Compute/virtualMachines/{name}/action", vm.id, who
        )

    operation = plane._start_operation(vm, finish)
    headers = _operation_headers(plane, vm, operation)
    headers["Location"] = headers["Azure-AsyncOperation"]
    return Response(202, b"", headers)


# --- Extensions -------------------------------------------------------------------------
def _get_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)
    ext = vm.extensions.get(p["ext"].lower())
    if ext is None:
        raise ArmError(404, "NotFound", "The entity was not found in this Azure location.")
    return json_response(200, extension_json(vm, ext))


def _list_extensions(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)
    return json_response(
        200, {"value": [extension_json(vm, ext) for ext in vm.extensions.values()]}
    )


def mde_outcome(
    plane: LocalAzure, vm: Vm, properties: dict[str, Any], protected: Any
) -> tuple[int | None, str]:
    """How an MDE install on this VM ends: (None, "") or (code, message)."""
    subscription = plane.estate.subscriptions[vm.subscription.lower()]
    type_ = properties.get("type", "")
    script = (protected or {}).get("defenderForEndpointOnboardingScript", "")
    expected = (
        subscription.onboarding_windows if type_ == "MDE.Windows" else subscription.onboarding_linux
    )
    if not script:
        return 30, "Enable failed: the onboarding script (protectedSettings) is missing or empty"
    if script != expected:
        return 31, "Enable failed: onboarding failed, the onboarding package is not this tenant's"
    if (type_ == "MDE.Windows") != (vm.os_type == "Windows"):
        return 10, f"Enable failed: {type_} cannot run on a {vm.os_type} machine"
    if vm.mde_failure is not None:
        messages = {
            51: "Onboarding to MDE via Microsoft Defender for Cloud for this operating system is not supported",
            10: "Enable failed: exit code 10: unsupported distro",
            11: "Enable failed: exit code 11: unsupported version",
        }
        return vm.mde_failure, messages.get(
            vm.mde_failure, f"Enable failed: exit code {vm.mde_failure}"
        )
    return None, ""


def _put_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise ArmError(
            400, "InvalidRequestContent", "The request content was invalid: properties is required."
        )
    if not body.get("location"):
        raise ArmError(
            400, "LocationRequired", "The location property is required for this definition."
        )
    properties = body["properties"]
    for name in ("publisher", "type", "typeHandlerVersion"):
        if not properties.get(name):
            raise ArmError(
                400, "InvalidParameter", f"Required parameter '{name}' is missing (null)."
            )
    # Compute's answers below: the Compute error-code reference
    # (learn.microsoft.com/troubleshoot/azure/virtual-machines/windows/error-messages) and
    # the shapes seen in its reset-rdp article (innererror.internalErrorCode).
    if vm.power != "running":
        raise ArmError(
            409,
            "OperationNotAllowed",
            "Cannot modify extensions in the VM when the VM is not running.",
            inner="CannotModifyExtensionsWhenVMNotRunning",
        )
    if plane._in_flight(vm):
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Operation 'PUT' is not allowed on VM '{vm.name}' since another operation is "
            "in progress.",
        )
    key = p["ext"].lower()
    handler = f"{properties['publisher']}.{properties['type']}".lower()
    for other in vm.extensions.values():
        if other.name.lower() != key and f"{other.publisher}.{other.type}".lower() == handler:
            raise ArmError(
                400,
                "BadRequest",
                f"Multiple VMExtensions per handler not supported for OS type '{vm.os_type}'. "
                f"VMExtension '{other.name}' with handler '{other.publisher}.{other.type}' "
                "already added or specified in input.",
                inner="MultipleExtensionsPerHandlerNotAllowed",
            )
    # "If there's an existing extension with a failed provisioning state, any other new
    # extension fails to install" (features-windows docs, troubleshooting).
    blocker = next(
        (e for e in vm.extensions.values() if e.state == "Failed" and e.name.lower() != key),
        None,
    )
    if blocker is not None:
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Operation 'PUT' is not allowed on VM '{vm.name}' since VM has extension "
            f"'{blocker.name}' in failed state.",
        )
    plane.extension_puts.append((f"{vm.id}/extensions/{p['ext']}", body))
    ext = Extension(
        name=p["ext"],
        publisher=properties["publisher"],
        type=properties["type"],
        type_handler_version=properties["typeHandlerVersion"],
        state="Creating",
        settings=properties.get("settings") or {},
        auto_upgrade_minor_version=bool(properties.get("autoUpgradeMinorVersion")),
    )
    code, message = (None, "")
    if ext.publisher == MDE_PUBLISHER:
        code, message = mde_outcome(plane, vm, properties, properties.get("protectedSettings"))
    existed = key in vm.extensions
    vm.extensions[key] = ext
    resource_id = f"{vm.id}/extensions/{ext.name}"

    def finish() -> None:
        ext.state = "Succeeded" if code is None else "Failed"
        ext.code, ext.message = code, message
        outcome = "Success" if code is None else "Failure"
        record_event(
            plane,
            "Write",
            "Microsoft.Compute/virtualMachines/extensions/write",
            resource_id,
            who,
            outcome,
        )

    error = None
    if code is not None:
        # The operation's error names the extension but not its status code: that is
        # only in the instance view (kubernetes-sigs/cluster-api-provider-azure#5367).
        troubleshoot = "windows" if ext.type == "MDE.Windows" else "linux"
        error = {
            "code": "VMExtensionProvisioningError",
            "message": f"VM has reported a failure when processing extension '{ext.name}' "
            f"(publisher '{ext.publisher}' and type '{ext.type}'). Error message: "
            f"'{message}'. More information on troubleshooting is available at "
            f"https://aka.ms/vmextension{troubleshoot}troubleshoot. ",
        }
    operation = plane._start_operation(vm, finish, error)
    return json_response(
        200 if existed else 201,
        extension_json(vm, ext),
        _operation_headers(plane, vm, operation),
    )


def _delete_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    key = p["ext"].lower()
    if key not in vm.extensions:
        return Response(204, b"", {})
    if plane._in_flight(vm):
        raise ArmError(409, "Conflict", "Another extension operation is in progress on the VM.")
    vm.extensions[key].state = "Deleting"
    resource_id = f"{vm.id}/extensions/{vm.extensions[key].name}"

    def finish() -> None:
        vm.extensions.pop(key, None)
        record_event(
            plane, "Delete", "Microsoft.Compute/virtualMachines/extensions/delete", resource_id, who
        )

    operation = plane._start_operation(vm, finish)
    return Response(202, b"", _operation_headers(plane, vm, operation))


# --- Run Command ------------------------------------------------------------------------
# POST {vm}/runCommand: azure-rest-api-specs specification/compute/resource-manager/
# Microsoft.Compute/ComputeRP/stable/2024-11-01/runCommand.json (VirtualMachines_RunCommand,
# x-ms-long-running-operation with final-state-via: location) and its example
# examples/runCommandExamples/VirtualMachineRunCommand.json: 202 with a Location under
# .../locations/{loc}/operations/{id} carrying monitor=true, polled until 200 with the
# RunCommandResult (Azure/azure-cli#32286 shows the same header from the live service).
RUN_COMMAND_ACTION = "Microsoft.Compute/virtualMachines/runCommand/action"
SCRIPT_COMMANDS = {"Windows": "RunPowerShellScript", "Linux": "RunShellScript"}
# "The output is limited to the last 4,096 bytes." (learn.microsoft.com/azure/
# virtual-machines/windows/run-command and …/linux/run-command, "Restrictions")
OUTPUT_LIMIT = 4096


def _tail(text: str) -> str:
    return text.encode()[-OUTPUT_LIMIT:].decode(errors="ignore")


def run_command_result(vm: Vm, stdout: str, stderr: str = "") -> dict[str, Any]:
    """RunCommandResult. Windows: one status each for StdOut and StdErr (the spec's
    example). Linux: the handler's single status, "Enable succeeded: " then
    "\\n[stdout]\\n…\\n[stderr]\\n…" (Azure/run-command-extension-linux; the outputs
    shown in Azure/azure-cli#14425 and #25948)."""
    stdout, stderr = _tail(stdout), _tail(stderr)
    if vm.os_type == "Windows":
        return {
            "value": [
                {
                    "code": "ComponentStatus/StdOut/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": stdout,
                },
                {
                    "code": "ComponentStatus/StdErr/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": stderr,
                },
            ]
        }
    return {
        "value": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "message": f"Enable succeeded: \n[stdout]\n{stdout}\n[stderr]\n{stderr}",
            }
        ]
    }


def detection_test(vm: Vm, script: list[str]) -> bool:
    """Microsoft's documented detection test for the VM's OS: the PowerShell that drops
    C:\\test-MDATP-test\\invoice.exe (learn.microsoft.com/defender-endpoint/
    run-detection-test; defender-for-cloud/alert-validation), or on Linux the EICAR test
    file (alert-validation: curl -O https://secure.eicar.org/eicar.com.txt)."""
    text = "\n".join(script).lower()
    if vm.os_type == "Windows":
        return "test-mdatp-test" in text
    return "eicar" in text


def _running_command(plane: LocalAzure, vm: Vm) -> bool:
    plane._in_flight(vm)  # lets due operations finish first
    return any(
        op.vm_key == vm.key and op.kind == "runCommand" and not op.finished
        for op in plane.operations.values()
    )


def _run_command(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    vm = plane._vm(_vm_id(p))
    require(plane, who, RUN_COMMAND_ACTION, vm.id)
    if not isinstance(body, dict) or not body.get("commandId"):
        raise ArmError(400, "InvalidParameter", "Required parameter 'commandId' is missing (null).")
    command = str(body["commandId"])
    script = body.get("script") or []
    if not isinstance(script, list) or not all(isinstance(line, str) for line in script):
        raise ArmError(400, "InvalidRequestContent", "The request content was invalid: script.")
    if command != SCRIPT_COMMANDS.get(vm.os_type):
        # The refusal's exact code and text are unconfirmed (docs/fidelity.md).
        raise ArmError(
            400,
            "InvalidParameter",
            f"The command '{command}' is not supported for OS type '{vm.os_type}'.",
        )
    if vm.power != "running":
        # Text: the Compute error-code reference (articles/virtual-machines/
        # error-messages.md); the 409 status is unconfirmed.
        raise ArmError(
            409,
            "OperationNotAllowed",
            "The operation requires the VM to be running (or set to run).",
        )
    if _running_command(plane, vm):
        # MicrosoftDocs/azure-docs#43356; Azure/azure-cli#32305.
        raise ArmError(
            409,
            "Conflict",
            "Run command extension execution is in progress. Please wait for completion "
            "before invoking a run command.",
        )
    if plane._in_flight(vm):
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Operation 'runCommand' is not allowed on VM '{vm.name}' since another "
            "operation is in progress.",
        )
    plane.run_commands.append((vm.id, body))

    def finish() -> None:
        operation.result = run_command_result(vm, vm.run_command_output or "")
        if vm.power == "running" and detection_test(vm, script) and defender.healthy(vm):
            security.schedule_test_alert(plane, vm)

    operation = plane._start_operation(vm, finish, kind="runCommand")
    location = (
        f"{plane.url}/subscriptions/{vm.subscription}/providers/Microsoft.Compute/locations/"
        f"{vm.location}/operations/{operation.id}?monitor=true&api-version={COMPUTE_API}"
    )
    return Response(202, b"", {"Location": location})


# --- Long-running operations ------------------------------------------------------------
def _operation_status(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    operation = plane.operations.get(p["op"])
    if operation is None:
        raise ArmError(404, "NotFound", "The operation was not found.")
    plane._advance(operation)
    if q.get("monitor", "").lower() == "true":
        # The Location (monitor) form: 202 while running, then the final result.
        if not operation.finished:
            return Response(202, b"", {})
        if operation.result is not None:
            return json_response(200, operation.result)
        return Response(200, b"", {})
    value: dict[str, Any] = {"name": operation.id, "startTime": operation.started}
    if not operation.finished:
        value["status"] = "InProgress"
    elif operation.error:
        value.update(status="Failed", endTime=utc_now(), error=operation.error)
    else:
        value.update(status="Succeeded", endTime=utc_now())
    return json_response(200, value)


_VM = (
    SUB
    + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/virtualMachines/(?P<vm>[^/]+)"
)

ROUTES = (
    route("GET", _VM, _get_vm, "Microsoft.Compute/virtualMachines/read", "compute"),
    route("GET", _VM + r"/instanceView", _instance_view, "Microsoft.Compute/virtualMachines/instanceView/read", "compute"),
    route("GET", SUB + r"/providers/Microsoft\.Compute/virtualMachines", _list_vms, "Microsoft.Compute/virtualMachines/read", "compute"),
    route("GET", SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/virtualMachines", _list_vms, "Microsoft.Compute/virtualMachines/read", "compute"),
    route("POST", _VM + r"/(?P<action>start|deallocate|powerOff)", _vm_action, "Microsoft.Compute/virtualMachines/action", "compute"),
    route("GET", _VM + r"/extensions", _list_extensions, "Microsoft.Compute/virtualMachines/extensions/read", "compute"),
    route("GET", _VM + r"/extensions/(?P<ext>[^/]+)", _get_extension, "Microsoft.Compute/virtualMachines/extensions/read", "compute"),
    route("PUT", _VM + r"/extensions/(?P<ext>[^/]+)", _put_extension, "Microsoft.Compute/virtualMachines/extensions/write", "compute"),
    route("DELETE", _VM + r"/extensions/(?P<ext>[^/]+)", _delete_extension, "Microsoft.Compute/virtualMachines/extensions/delete", "compute"),
    route("POST", _VM + r"/runCommand", _run_command, RUN_COMMAND_ACTION, "compute"),
    route("GET", SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)", _operation_status, "Microsoft.Compute/locations/operations/read", "compute"),
)  # fmt: skip
