"""Azure's JSON -> VmFacts. Pure: the readers of a VM as ARM returns it, of a row of the
sweep's Resource Graph query (kept here, beside the reader of its rows), and of an Arc
machine, all building the same VmFacts for classify.py.

One difference is inherent: Resource Graph has no extension instance view, so a Failed
extension's error code is known only from ARM (``ExtensionFacts.code``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from remediation.model import (
    ExtensionFacts,
    Kind,
    Power,
    VmFacts,
    VmRef,
    as_text,
    dig,
    smbios_forms,
)

# The sweep's inventory: every VM and Arc machine with its extensions, one row each, in id
# order so that $skipToken paging works. Both machine types and both extension types are in
# the resources table (Resource Graph's Arc sample queries: "List all extensions installed
# on an Azure Arc-enabled server"). Resource Graph has no extension instance view, so a
# Failed extension's error code comes from ARM when an install re-reads the machine.
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
# The Azure VMs whose vmId is one of a few SMBIOS ids (an Arc machine's, both byte
# orders): twin_query() fills the list with GUIDs it checked, nothing else.
TWIN_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| where tolower(tostring(properties.vmId)) in ({ids})
| project id
"""


def twin_query(forms: Iterable[str]) -> str:
    """TWIN_QUERY for these ids; only GUIDs (smbios_forms' output) reach the text."""
    ids = sorted(forms)
    if not ids or not all(smbios_forms(value) for value in ids):
        raise ValueError("twin_query takes GUIDs only")
    return TWIN_QUERY.format(ids=", ".join(f"'{value}'" for value in ids))


# The subscriptions of a scope with their display names and management groups: the
# resourcecontainers table ("name" is the display name; properties.managementGroupAncestorsChain
# lists {name, displayName} from the parent up: Resource Graph's management-group samples).
CONTAINERS_QUERY = """
resourcecontainers
| where type =~ 'microsoft.resources/subscriptions'
| project subscriptionId, name, state = tostring(properties.state),
    managementGroups = properties.managementGroupAncestorsChain
| order by subscriptionId asc
"""
# Uniform scale sets: their instances take extensions from the scale set's model, not this
# app's. An old scale set may carry no orchestrationMode: it is Uniform.
SCALE_SETS_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachinescalesets'
| where tostring(properties.orchestrationMode) !~ 'Flexible'
| summarize scaleSets = count(), instances = sum(toint(sku.capacity)) by subscriptionId
| order by subscriptionId asc
"""


# --- Readers: ARM and Resource Graph give equal facts --------------------------------
def _power(code: Any) -> Power:
    if isinstance(code, str) and code.lower().startswith("powerstate/"):
        try:
            return Power(code.split("/", 1)[1].lower())
        except ValueError:
            return Power.UNKNOWN
    return Power.UNKNOWN


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): str(item) for key, item in value.items()}


def _image(reference: Any, os_type: Any, license_type: Any) -> dict[str, str]:
    image_id = (
        as_text(dig(reference, "id"))
        or as_text(dig(reference, "sharedGalleryImageId"))
        or as_text(dig(reference, "communityGalleryImageId"))
    )
    return {
        "publisher": as_text(dig(reference, "publisher")),
        "offer": as_text(dig(reference, "offer")),
        "sku": as_text(dig(reference, "sku")),
        "image_id": image_id,
        "os_type": as_text(os_type),
        "license_type": as_text(license_type),
    }


def _failure_code(statuses: Any) -> int | None:
    """'ProvisioningState/failed/51' or an MDE.Linux message 'exit code 10' -> code."""
    for status in statuses if isinstance(statuses, list) else []:
        code = as_text(dig(status, "code"))
        match = re.match(r"^ProvisioningState/failed/(\d+)$", code, re.IGNORECASE)
        if match:
            return int(match[1])
        message = as_text(dig(status, "message"))
        match = re.search(r"exit(?:ed with)? code:? ?(\d+)", message, re.IGNORECASE)
        if match:
            return int(match[1])
    return None


def _agent_ready(agent: Any) -> bool | None:
    """instanceView.vmAgent: 'Ready', or 'Not Ready' until a new VM's agent reports."""
    for status in dig(agent, "statuses") or []:
        shown = as_text(dig(status, "displayStatus")).strip().lower()
        if shown in {"ready", "not ready"}:
            return shown == "ready"
    return None


def facts_from_arm(vm: Mapping[str, Any], vm_pricing: str | None = None) -> VmFacts:
    """A VM as ARM returns it for GET ...?$expand=instanceView (REST JSON)."""
    properties = vm.get("properties") or {}
    view = dig(properties, "instanceView") or {}
    codes = {
        as_text(dig(ext, "name")).lower(): _failure_code(dig(ext, "statuses"))
        for ext in (dig(view, "extensions") or [])
    }
    extensions = tuple(
        ExtensionFacts(
            name=as_text(ext.get("name")),
            publisher=as_text(dig(ext, "properties", "publisher")),
            type=as_text(dig(ext, "properties", "type")),
            state=as_text(dig(ext, "properties", "provisioningState")),
            code=codes.get(as_text(ext.get("name")).lower())
            if as_text(dig(ext, "properties", "provisioningState")).lower() == "failed"
            else None,
        )
        for ext in (vm.get("resources") or [])
        if isinstance(ext, Mapping)
    )
    power = next(
        (
            _power(status.get("code"))
            for status in (dig(view, "statuses") or [])
            if isinstance(status, Mapping)
            and as_text(status.get("code")).lower().startswith("powerstate/")
        ),
        Power.UNKNOWN,
    )
    return VmFacts(
        vm=VmRef.parse(as_text(vm.get("id"))),
        location=as_text(vm.get("location")),
        **_image(
            dig(properties, "storageProfile", "imageReference"),
            dig(properties, "storageProfile", "osDisk", "osType"),
            dig(properties, "licenseType"),
        ),
        os_name=as_text(dig(view, "osName")),
        os_version=as_text(dig(view, "osVersion")),
        agent_ready=_agent_ready(dig(view, "vmAgent")),
        power=power,
        tags=_tags(vm.get("tags")),
        extensions=tuple(sorted(extensions, key=lambda ext: ext.name.lower())),
        vm_pricing=vm_pricing,
        vm_id=as_text(dig(properties, "vmId")),
    )


def facts_from_graph(row: Mapping[str, Any]) -> VmFacts:
    """A row of the sweep's Resource Graph query (SWEEP_QUERY above): a VM, or an Arc
    machine (its own columns: status, osName, osSku, osVersion, arcOsType, cloudProvider)."""
    vm = VmRef.parse(as_text(row.get("id")))
    if vm.kind is Kind.ARC:
        return _arc_facts(vm, row, row.get("extensions") or [], flat=True)
    view = row.get("instanceView") or {}
    extensions = tuple(
        ExtensionFacts(
            name=as_text(ext.get("name")),
            publisher=as_text(ext.get("publisher")),
            type=as_text(ext.get("type")),
            state=as_text(ext.get("provisioningState")),
        )
        for ext in (row.get("extensions") or [])
        if isinstance(ext, Mapping)
    )
    return VmFacts(
        vm=vm,
        location=as_text(row.get("location")),
        **_image(row.get("imageReference"), row.get("osType"), row.get("licenseType")),
        os_name=as_text(dig(view, "osName")),
        os_version=as_text(dig(view, "osVersion")),
        agent_ready=None,  # Resource Graph has no guest agent status
        power=_power(dig(view, "powerState", "code")),
        tags=_tags(row.get("tags")),
        extensions=tuple(sorted(extensions, key=lambda ext: ext.name.lower())),
        vm_id=as_text(row.get("vmId")),
    )


# --- Arc-enabled servers: no image, no power state; the agent reports the OS -------------
# Microsoft.HybridCompute/machines (azure-rest-api-specs, hybridcompute stable 2024-07-10,
# Machines_Get example): properties.status Connected | Disconnected | Error | Expired,
# osName "windows" | "linux", osSku the OS's own name ("Windows Server 2022 Datacenter",
# "Ubuntu 22.04.3 LTS"), osVersion the Windows build or the Linux kernel.
ARC_POWER = {
    "connected": Power.RUNNING,
    "disconnected": Power.DISCONNECTED,
    "expired": Power.EXPIRED,
}


def _arc_os(os_type: str, os_name: str, os_sku: str, os_version: str) -> tuple[str, str, str]:
    """(os_type, os_name, os_version) as classify reads them, from what the Arc agent
    reports: osType decides the family (else the OS's name), osSku names the OS. A Linux
    osVersion is the kernel's, so the distro's version comes from its name."""
    name = os_sku or ("" if os_name.lower() in {"windows", "linux"} else os_name)
    family = (os_type or os_name).strip().lower()
    if family not in {"windows", "linux"}:
        family = "windows" if name.lower().startswith("windows") else "linux" if name else ""
    if family == "windows":
        return ("Windows", name, os_version)
    if family == "linux":
        # "Red Hat Enterprise Linux 8.9 (Ootpa)": the distro's name, then its version.
        match = re.search(r"\b(\d+(?:\.\d+)?)", name)
        distro = name[: match.start()].strip() if match and match.start() else name
        return ("Linux", distro, match[1] if match else "")
    return ("", name, os_version)


def _arc_facts(vm: VmRef, source: Mapping[str, Any], extensions: Any, *, flat: bool) -> VmFacts:
    """An Arc machine from a Resource Graph row (``flat``: projected columns) or from
    its ARM GET (properties) with its extensions listed (GET .../extensions)."""
    properties = source.get("properties") or {}

    def get(column: str, path: str) -> str:
        return as_text(source.get(column) if flat else dig(properties, *path.split(".")))

    status = get("status", "status").lower()
    os_type, os_name, os_version = _arc_os(
        get("arcOsType", "osType"),
        get("osName", "osName"),
        get("osSku", "osSku"),
        get("osVersion", "osVersion"),
    )
    return VmFacts(
        vm=vm,
        location=as_text(source.get("location")),
        os_type=os_type,
        os_name=os_name,
        os_version=os_version,
        power=ARC_POWER.get(status, Power.UNKNOWN),
        tags=_tags(source.get("tags")),
        extensions=_arc_extensions(extensions, flat),
        vm_id=get("vmId", "vmId"),
        cloud_provider=get("cloudProvider", "cloudMetadata.provider"),
        vm_uuid=get("vmUuid", "vmUuid"),
    )


def _arc_extensions(items: Any, flat: bool) -> tuple[ExtensionFacts, ...]:
    extensions = []
    for ext in items if isinstance(items, list) else []:
        if not isinstance(ext, Mapping):
            continue
        properties = ext if flat else (ext.get("properties") or {})
        state = as_text(properties.get("provisioningState"))
        # An Arc extension's instance view holds one status: its message carries the
        # handler's exit code, as on VMs ("... exit code 10").
        view = dig(properties, "instanceView", "status")
        code = _failure_code([view]) if state.lower() == "failed" and view else None
        extensions.append(
            ExtensionFacts(
                name=as_text(ext.get("name")),
                publisher=as_text(properties.get("publisher")),
                type=as_text(properties.get("type")),
                state=state,
                code=code,
            )
        )
    return tuple(sorted(extensions, key=lambda ext: ext.name.lower()))


def facts_from_arc(machine: Mapping[str, Any], extensions: Any) -> VmFacts:
    """An Arc machine as ARM returns it (GET machine, GET its extensions' list)."""
    return _arc_facts(VmRef.parse(as_text(machine.get("id"))), machine, extensions, flat=False)


# --- Run Command (the test alert's detection test) -----------------------------------
def run_output(statuses: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """(stdout, stderr) of a Run Command result. Windows answers one status per stream
    (``ComponentStatus/StdOut/succeeded``, ``.../StdErr/...``: the spec's example); Linux
    one ``ProvisioningState/...`` status whose message holds ``[stdout]`` and ``[stderr]``
    sections (Azure/run-command-extension-linux; Azure/azure-cli#14425)."""
    out, err = [], []
    for code, message in statuses:
        if "/stderr/" in code.lower():
            err.append(message)
        elif "[stdout]" in message:
            rest = message.partition("[stdout]")[2]
            stdout, _, stderr = rest.partition("[stderr]")
            out.append(stdout.strip("\n"))
            err.append(stderr.strip("\n"))
        else:
            out.append(message)
    return "\n".join(filter(None, out)), "\n".join(filter(None, err))
