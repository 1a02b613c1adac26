"""The in-memory estate of the local control plane: subscriptions (and the management
groups above them), VMs and Arc-enabled servers, scale sets, extensions, Defender plans
and settings, principals. Loadable from and savable to JSON.

Each VM also carries what only Azure would know: how an MDE install on it ends
(``mde_failure``), e.g. code 51 on single-session Windows, 10 on an unsupported distro.
The generator's image catalogue says this independently of the app's classifier.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MDE_PUBLISHER = "Microsoft.Azure.AzureDefenderForServers"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
# The deployment's custom role, as infra/access.bicep grants it with integration and
# plan changes allowed.
REMEDIATOR_ROLE = (
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Compute/virtualMachines/extensions/read",
    "Microsoft.Compute/virtualMachines/extensions/write",
    "Microsoft.Compute/locations/operations/read",
    "Microsoft.HybridCompute/machines/read",
    "Microsoft.HybridCompute/machines/extensions/read",
    "Microsoft.HybridCompute/machines/extensions/write",
    # An Arc extension PUT is polled at .../locations/{loc}/operationstatus/{id}
    # (Azure-AsyncOperation) and read at .../operationresults/{id} (Location): the
    # resource-provider operations reference lists a read action for each
    # (learn.microsoft.com/azure/role-based-access-control/permissions/hybrid-multicloud).
    "Microsoft.HybridCompute/locations/operationstatus/read",
    "Microsoft.HybridCompute/locations/operationresults/read",
    "Microsoft.ResourceGraph/resources/read",
    # Resource Graph lists a subscription's resourcecontainers row (its name, its
    # management groups) only to who may read the subscription (graph.py).
    "Microsoft.Resources/subscriptions/read",
    "Microsoft.Security/pricings/read",
    "Microsoft.Security/pricings/write",
    "Microsoft.Security/settings/read",
    "Microsoft.Security/settings/write",
    "Microsoft.Security/mdeOnboardings/read",
    "Microsoft.EventGrid/systemTopics/read",
    "Microsoft.EventGrid/systemTopics/eventSubscriptions/read",
    "Microsoft.Authorization/permissions/read",
)
# What the optional test-alert verification needs besides the custom role: Run Command,
# and reading and dismissing Defender for Cloud's alerts. The operation names are those of
# Azure's resource-provider operations reference (learn.microsoft.com/azure/
# role-based-access-control/permissions/compute and .../permissions/security; the Run
# Command article's "Limiting access to Run Command" names runCommand/action too).
TEST_ALERT_ROLE = (
    "Microsoft.Compute/virtualMachines/runCommand/action",
    "Microsoft.Security/locations/alerts/read",
    "Microsoft.Security/locations/alerts/dismiss/action",
)
# How Defender for Endpoint sees a VM once its MDE extension has Succeeded (defender.py):
# listed with resourceId, listed with vmId only, listed Inactive, or never listed.
MDE_DEVICE_STATES = ("active", "vmid-only", "inactive", "never")
SECURITY_SETTINGS = ("WDATP", "WDATP_UNIFIED_SOLUTION", "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW")


@dataclass
class Extension:
    name: str
    publisher: str
    type: str
    type_handler_version: str = "1.0"
    state: str = "Succeeded"  # provisioningState
    code: int | None = None  # failure code shown in the instance view
    message: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    auto_upgrade_minor_version: bool = True


@dataclass
class Vm:
    subscription: str
    resource_group: str
    name: str
    location: str = "westeurope"
    os_type: str = "Linux"
    image: dict[str, str] = field(default_factory=dict)  # the imageReference
    license_type: str = ""
    os_name: str = ""  # what the guest agent reports while running
    os_version: str = ""
    power: str = "running"
    tags: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Extension] = field(default_factory=dict)  # by lower-case name
    vm_pricing: str | None = None  # VM-level Defender pricing tier
    mde_failure: int | None = None  # how an MDE install on this VM ends; None = Succeeded
    agent_ready_at: float = 0.0  # epoch seconds when the guest agent first reports (new VMs)
    vm_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    # How Defender for Endpoint lists the VM once its MDE extension is Succeeded: "active",
    # "vmid-only" (vmMetadata.resourceId null), "inactive" (healthStatus Inactive) or
    # "never" (not listed: a foreign package's tenant, a stopped sensor, a proxy).
    mde_device: str = "active"
    # What a Run Command script prints here (stdout); None: empty stdout and stderr.
    run_command_output: str | None = None
    # "vm": Microsoft.Compute/virtualMachines; "arc": an Arc-enabled server,
    # Microsoft.HybridCompute/machines. An Arc machine has no image and no power state;
    # its agent reports status, osName ("windows"/"linux", kept in os_name), osSku (the
    # OS's own name) and osVersion (the Windows build, or the Linux kernel).
    kind: str = "vm"
    arc_status: str = "Connected"  # Connected | Disconnected | Expired | Error
    last_status_change: str = "2026-01-15T08:00:00.0000000Z"
    os_sku: str = ""
    cloud_provider: str = "N/A"  # properties.cloudMetadata.provider
    # An Arc machine's SMBIOS id (properties.vmUuid); "" = one derived from its vm_id. An
    # Arc agent on an Azure VM reports that VM's vmId here (in either byte order).
    smbios_uuid: str = ""
    agent_version: str = "1.48.02881.1941"
    # A flexible scale set's member: the scale set's id (properties.virtualMachineScaleSet).
    scale_set: str = ""

    @property
    def id(self) -> str:
        provider = (
            "Microsoft.HybridCompute/machines"
            if self.kind == "arc"
            else "Microsoft.Compute/virtualMachines"
        )
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{provider}/{self.name}"
        )

    @property
    def key(self) -> str:
        return self.id.lower()


@dataclass
class Subscription:
    id: str
    pricing_tier: str = "Free"
    sub_plan: str = ""
    settings: dict[str, bool] = field(
        default_factory=lambda: {
            "WDATP": False,
            "WDATP_UNIFIED_SOLUTION": False,
            "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": True,
        }
    )
    # Onboarding packages, base64 as the API returns them. Opaque bytes, never logged.
    onboarding_windows: str = ""
    onboarding_linux: str = ""
    display_name: str = ""  # "" until added: then "Subscription <first 8 of the id>"
    management_group: str = ""  # its parent management group's id; "" = the tenant root
    state: str = "Enabled"  # Enabled | Warned | PastDue | Disabled | Deleted
    # The app's identity holds no role here: ARM answers 403 AuthorizationFailed for
    # anything under it, and Resource Graph leaves it out (docs/fidelity.md).
    no_access: bool = False
    # Resource providers not (yet) registered here, by lower-case namespace:
    # "NotRegistered" or "Registering" (resources.py); absent = Registered.
    providers: dict[str, str] = field(default_factory=dict)
    registered_at: dict[str, float] = field(default_factory=dict)  # when Registering ends


@dataclass
class ManagementGroup:
    id: str  # the group's id (its "name" in ARM), not its display name
    display_name: str
    parent: str = ""  # the parent group's id; "" = the tenant root group


@dataclass
class ScaleSet:
    subscription: str
    resource_group: str
    name: str
    orchestration_mode: str = "Uniform"  # Uniform | Flexible | "" (absent on old ones)
    capacity: int = 2  # sku.capacity
    location: str = "westeurope"

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{self.name}"
        )


@dataclass
class Principal:
    client_id: str
    secret: str
    object_id: str
    name: str = ""
    security_admin: bool = True  # may write Microsoft.Security pricings and settings
    # What its role assignments grant besides Security Admin: by default the custom role
    # infra/access.bicep deploys (tests/test_infra.py keeps the two equal).
    actions: list[str] = field(default_factory=lambda: list(REMEDIATOR_ROLE))
    # The WindowsDefenderATP application permissions granted (admin-consented) to it: the
    # ``roles`` claim of its tokens for https://api.securitycenter.microsoft.com.
    app_roles: list[str] = field(default_factory=lambda: ["Machine.Read.All"])
    # App roles assigned to it on other app registrations, by their client id: the
    # ``roles`` claim of its tokens for that API (the pages' registration, for example).
    api_roles: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Estate:
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)  # by lower-case id
    principals: dict[str, Principal] = field(default_factory=dict)  # by client id
    tenant: str = TENANT
    # Devices in Defender for Endpoint's inventory that are not Azure VMs (workstations,
    # on-premises servers): listed by GET /api/machines without vmMetadata.
    other_devices: int = 0
    management_groups: dict[str, ManagementGroup] = field(default_factory=dict)  # by lower id
    scale_sets: list[ScaleSet] = field(default_factory=list)

    def add_subscription(self, subscription: Subscription) -> Subscription:
        if not subscription.display_name:
            subscription.display_name = f"Subscription {subscription.id[:8]}"
        if not subscription.onboarding_windows:
            subscription.onboarding_windows = _package("windows", subscription.id)
        if not subscription.onboarding_linux:
            subscription.onboarding_linux = _package("linux", subscription.id)
        self.subscriptions[subscription.id.lower()] = subscription
        return subscription

    def add_vm(self, vm: Vm) -> Vm:
        self.vms[vm.key] = vm
        return vm

    def add_principal(self, principal: Principal) -> Principal:
        self.principals[principal.client_id] = principal
        return principal

    def add_management_group(self, group: ManagementGroup) -> ManagementGroup:
        self.management_groups[group.id.lower()] = group
        return group

    def add_scale_set(self, scale_set: ScaleSet) -> ScaleSet:
        self.scale_sets.append(scale_set)
        return scale_set

    # --- Management groups ----------------------------------------------------------------
    # Every tenant has one root management group, "Tenant Root Group", whose id is the
    # tenant id (learn.microsoft.com/azure/governance/management-groups/overview, "Root
    # management group for each directory").
    def root_group(self) -> ManagementGroup:
        return self.management_groups.get(
            self.tenant.lower(), ManagementGroup(self.tenant, "Tenant Root Group")
        )

    def group(self, group_id: str) -> ManagementGroup | None:
        if group_id.lower() == self.tenant.lower():
            return self.root_group()
        return self.management_groups.get(group_id.lower())

    def ancestors(self, subscription: Subscription) -> list[ManagementGroup]:
        """The subscription's management groups, parent first, the root group last."""
        chain: list[ManagementGroup] = []
        current = self.group(subscription.management_group or self.tenant)
        while current is not None and current not in chain:
            chain.append(current)
            if current.id.lower() == self.tenant.lower():
                break
            current = self.group(current.parent or self.tenant)
        return chain

    def subscriptions_under(self, group_id: str) -> list[Subscription]:
        """Every subscription anywhere below the group (the root: all of them)."""
        wanted = group_id.lower()
        return [
            s
            for s in self.subscriptions.values()
            if any(g.id.lower() == wanted for g in self.ancestors(s))
        ]

    def vm(self, resource_id: str) -> Vm | None:
        return self.vms.get(resource_id.lower())

    def vms_in(self, subscription: str, kinds: tuple[str, ...] = ("vm",)) -> list[Vm]:
        """The subscription's VMs (and Arc machines, with ``kinds=("vm", "arc")``)."""
        subscription = subscription.lower()
        return sorted(
            (
                vm
                for vm in self.vms.values()
                if vm.subscription.lower() == subscription and vm.kind in kinds
            ),
            key=lambda vm: vm.key,
        )

    # --- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "other_devices": self.other_devices,
            "subscriptions": [asdict(s) for s in self.subscriptions.values()],
            "principals": [asdict(p) for p in self.principals.values()],
            "vms": [asdict(vm) for vm in self.vms.values()],
            "management_groups": [asdict(g) for g in self.management_groups.values()],
            "scale_sets": [asdict(s) for s in self.scale_sets],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Estate:
        estate = cls(tenant=data.get("tenant", TENANT), other_devices=data.get("other_devices", 0))
        for item in data.get("subscriptions", []):
            estate.add_subscription(Subscription(**item))
        for item in data.get("principals", []):
            estate.add_principal(Principal(**item))
        for item in data.get("vms", []):
            extensions = {
                key: Extension(**value) for key, value in item.pop("extensions", {}).items()
            }
            estate.add_vm(Vm(**item, extensions=extensions))
        for item in data.get("management_groups", []):
            estate.add_management_group(ManagementGroup(**item))
        for item in data.get("scale_sets", []):
            estate.add_scale_set(ScaleSet(**item))
        return estate

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> Estate:
        return cls.from_json(json.loads(path.read_text()))


def _package(os_name: str, subscription: str) -> str:
    """A stand-in onboarding package: binary bytes (like the real zip/script) as base64."""
    seed = random.Random(f"{os_name}:{subscription}")  # test data, not crypto
    body = bytes(seed.randrange(256) for _ in range(96))
    return base64.b64encode(b"MDE-ONBOARDING-" + os_name.encode() + b"\x00\xff" + body).decode()


def mde_extension(vm: Vm, state: str = "Succeeded", code: int | None = None) -> Extension:
    type_ = "MDE.Windows" if vm.os_type == "Windows" else "MDE.Linux"
    settings: dict[str, Any] = {"azureResourceId": vm.id}
    if type_ == "MDE.Windows":
        settings["vNextEnabled"] = "true"
    return Extension(type_, MDE_PUBLISHER, type_, state=state, code=code, settings=settings)


# --- The seeded estate generator ------------------------------------------------------
@dataclass(frozen=True)
class Image:
    """One image of the catalogue and what Azure does with MDE on it."""

    weight: int
    os_type: str
    reference: tuple[str, str, str]  # publisher, offer, sku; ("", "", "") for gallery/custom
    os_name: str
    os_version: str
    license_type: str = ""
    mde_failure: int | None = None  # how MDE installs end here; None = Succeeded
    resource_group: str = ""  # a forced group name (managed services)

    def vm(self, subscription: str, group: str, name: str, **changes: Any) -> Vm:
        """A running VM of this image, as a deployment would create it."""
        vm = Vm(
            subscription,
            self.resource_group or group,
            name,
            os_type=self.os_type,
            image=_reference(self, subscription),
            license_type=self.license_type,
            os_name=self.os_name,
            os_version=self.os_version,
            mde_failure=self.mde_failure,
        )
        for key, value in changes.items():
            setattr(vm, key, value)
        return vm


UBUNTU_2204 = Image(
    12, "Linux", ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"), "ubuntu", "22.04"
)
RHEL_92 = Image(3, "Linux", ("RedHat", "RHEL", "9_2"), "redhat", "9.2")
WS2022 = Image(
    10,
    "Windows",
    ("MicrosoftWindowsServer", "WindowsServer", "2022-datacenter-azure-edition"),
    "Windows Server 2022 Datacenter Azure Edition",
    "10.0.20348.2113",
)
WS2012R2 = Image(
    2,
    "Windows",
    ("MicrosoftWindowsServer", "WindowsServer", "2012-R2-Datacenter"),
    "Windows Server 2012 R2 Datacenter",
    "6.3.9600.21620",
)
WIN11_ENT = Image(
    2,
    "Windows",
    ("MicrosoftWindowsDesktop", "windows-11", "win11-23h2-ent"),
    "Windows 11 Enterprise",
    "10.0.22631",
    license_type="Windows_Client",
    mde_failure=51,
)
FORTIGATE = Image(1, "Linux", ("fortinet", "fortinet_fortigate-vm_v5", "fortinet_fg-vm"), "", "")

CATALOGUE: tuple[Image, ...] = (
    WS2022,
    Image(8, "Windows", ("MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter"), "Windows Server 2019 Datacenter", "10.0.17763.5329"),
    Image(4, "Windows", ("MicrosoftWindowsServer", "WindowsServer", "2016-Datacenter"), "Windows Server 2016 Datacenter", "10.0.14393.6452"),
    WS2012R2,
    Image(1, "Windows", ("MicrosoftWindowsServer", "WindowsServer", "2008-R2-SP1"), "Windows Server 2008 R2 Datacenter", "6.1.7601", mde_failure=11),
    Image(2, "Windows", ("MicrosoftWindowsServer", "WindowsServer", "2025-datacenter-azure-edition"), "Windows Server 2025 Datacenter Azure Edition", "10.0.26100.1"),
    Image(3, "Windows", ("MicrosoftSQLServer", "sql2019-ws2022", "enterprise"), "Windows Server 2022 Datacenter", "10.0.20348.2113"),
    Image(3, "Windows", ("MicrosoftWindowsDesktop", "windows-11", "win11-23h2-avd"), "Windows 11 Enterprise multi-session", "10.0.22631", license_type="Windows_Client"),
    WIN11_ENT,
    Image(1, "Windows", ("", "", ""), "Windows Server 2019 Datacenter", "10.0.17763.5329"),
    UBUNTU_2204,
    Image(5, "Linux", ("Canonical", "ubuntu-24_04-lts", "server"), "ubuntu", "24.04"),
    Image(4, "Linux", ("Canonical", "0001-com-ubuntu-server-focal", "20_04-lts"), "ubuntu", "20.04"),
    Image(1, "Linux", ("Canonical", "0001-com-ubuntu-server-mantic", "23_10"), "ubuntu", "23.10", mde_failure=11),
    Image(5, "Linux", ("RedHat", "RHEL", "8_6"), "redhat", "8.6"),
    RHEL_92,
    Image(2, "Linux", ("OpenLogic", "CentOS", "7_9"), "centos", "7.9.2009"),
    Image(3, "Linux", ("Debian", "debian-12", "12-gen2"), "debian", "12"),
    Image(2, "Linux", ("SUSE", "sles-15-sp5", "gen2"), "sles", "15.5"),
    Image(2, "Linux", ("almalinux", "almalinux-x86_64", "9-gen2"), "almalinux", "9.2"),
    Image(1, "Linux", ("resf", "rockylinux-x86_64", "8_6"), "rocky", "8.6", mde_failure=11),
    Image(2, "Linux", ("Oracle", "Oracle-Linux", "ol89-lvm-gen2"), "oracle", "8.9"),
    Image(1, "Linux", ("MicrosoftCBLMariner", "cbl-mariner", "cbl-mariner-2-gen2"), "mariner", "2.0"),
    Image(2, "Linux", ("", "", ""), "ubuntu", "22.04"),
    Image(1, "Linux", ("", "", ""), "amzn", "2023"),
    Image(1, "Linux", ("", "", ""), "opensuse-leap", "15.5", mde_failure=10),
    Image(1, "Linux", ("", "", ""), "", ""),  # a custom image whose agent never reported
    Image(1, "Linux", ("kinvolk", "flatcar-container-linux-free", "stable-gen2"), "flatcar", "3815.2.0", mde_failure=10),
    FORTIGATE,
    Image(1, "Linux", ("AzureDatabricks", "databricks", "databricksworker"), "ubuntu", "22.04", resource_group="databricks-rg-analytics"),
    Image(1, "Linux", ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2"), "ubuntu", "22.04", resource_group="MC_rg-aks_cluster_westeurope"),
)  # fmt: skip

_GROUPS = ("rg-web", "rg-data", "rg-batch", "rg-shared", "rg-legacy")
_LOCATIONS = ("westeurope", "northeurope", "eastus2", "swedencentral")


def generate(
    vms: int,
    subscriptions: int,
    seed: int = 7,
    *,
    arc_machines: int = 0,
    scale_sets: int = 0,
    management_groups: bool = False,
) -> Estate:
    """A realistic estate: the catalogue's mix of images, power states, MDE extensions
    (some Failed), other extensions, opt-out tags, and subscriptions whose Defender plan
    and settings are in various states. The same seed gives the same estate.

    ``arc_machines`` Arc-enabled servers (arc-00000...), ``scale_sets`` scale sets (with
    two or three member VMs fx-00000... for each Flexible one) and, with
    ``management_groups``, a management-group hierarchy come from generators seeded apart:
    the VMs and subscriptions of (vms, subscriptions, seed) are the same with or without
    them.

    Of the VMs whose MDE extension Succeeded, Defender for Endpoint never lists about one
    in twelve and lists another one in twelve as Inactive; one in forty is listed by vmId
    only. These come from a second generator seeded apart, so the rest of the estate is
    what it was before they were modelled."""
    rng = random.Random(seed)  # test data, not crypto
    estate = Estate()
    subs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(subscriptions)]
    for index, sub in enumerate(subs):
        posture = index % 4
        estate.add_subscription(
            Subscription(
                sub,
                pricing_tier="Standard" if posture in {0, 1} else "Free",
                sub_plan="P2" if posture == 0 else ("P1" if posture == 1 else ""),
                settings={
                    "WDATP": posture in {0, 1},
                    "WDATP_UNIFIED_SOLUTION": posture == 0,
                    "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": posture != 0,
                },
            )
        )
    weights = [image.weight for image in CATALOGUE]
    for number in range(vms):
        image = rng.choices(CATALOGUE, weights)[0]
        sub = subs[number % subscriptions]
        group = image.resource_group or rng.choice(_GROUPS)
        vm = Vm(
            subscription=sub,
            resource_group=group,
            name=f"vm-{number:05d}",
            location=rng.choice(_LOCATIONS),
            os_type=image.os_type,
            image=_reference(image, sub),
            license_type=image.license_type,
            os_name=image.os_name,
            os_version=image.os_version,
            power=rng.choices(["running", "deallocated", "stopped"], [85, 12, 3])[0],
            tags={"env": rng.choice(["prod", "dev", "test"])},
            mde_failure=image.mde_failure,
            vm_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
        roll = rng.random()
        if roll < 0.25:
            vm.extensions["mde." + vm.os_type.lower()] = mde_extension(vm)
        elif roll < 0.30:
            code = 31 if vm.os_type == "Linux" else 1
            vm.extensions["mde." + vm.os_type.lower()] = mde_extension(vm, "Failed", code)
        if rng.random() < 0.2:
            monitor = (
                "AzureMonitorWindowsAgent" if vm.os_type == "Windows" else "AzureMonitorLinuxAgent"
            )
            state = "Failed" if rng.random() < 0.1 else "Succeeded"
            vm.extensions[monitor.lower()] = Extension(
                monitor, "Microsoft.Azure.Monitor", monitor, state=state
            )
        if rng.random() < 0.03:
            vm.tags["defender-remediation-exclude"] = "true"
        elif rng.random() < 0.01:
            vm.tags["ExcludeMdeAutoProvisioning"] = "true"
        estate.add_vm(vm)
    _device_states(estate, seed)
    if management_groups:
        _management_groups(estate)
    if arc_machines and subs:
        _arc_machines(estate, arc_machines, seed)
    if scale_sets and subs:
        _scale_sets(estate, scale_sets, seed)
    return estate


def _device_states(estate: Estate, seed: int) -> None:
    """Defender for Endpoint's view of the VMs that have a Succeeded MDE extension."""
    onboarded = [
        vm
        for vm in estate.vms.values()
        if any(
            e.publisher == MDE_PUBLISHER and e.state == "Succeeded" for e in vm.extensions.values()
        )
    ]
    rng = random.Random(f"{seed}:mde-devices")  # test data, not crypto
    rng.shuffle(onboarded)
    for index, vm in enumerate(onboarded):
        if index % 40 == 5:
            vm.mde_device = "vmid-only"
        elif index % 12 == 3:
            vm.mde_device = "never"
        elif index % 12 == 7:
            vm.mde_device = "inactive"


def _reference(image: Image, subscription: str) -> dict[str, str]:
    publisher, offer, sku = image.reference
    if publisher:
        return {"publisher": publisher, "offer": offer, "sku": sku, "version": "latest"}
    gallery = (
        f"/subscriptions/{subscription}/resourceGroups/rg-images/providers/Microsoft.Compute"
        f"/galleries/golden/images/{image.os_type.lower()}-base/versions/1.0.0"
    )
    return {"id": gallery}


# --- Management groups, Arc machines, scale sets (each from its own generator) ----------
# A landing-zone hierarchy in the shape of Microsoft's Cloud Adoption Framework
# (platform and landing zones under the root; corp under landing zones).
MANAGEMENT_GROUPS = (
    ("mg-platform", "Platform", ""),
    ("mg-landing-zones", "Landing zones", ""),
    ("mg-corp", "Corp", "mg-landing-zones"),
)
# Where the n-th subscription goes (its group, its display name's word); "" = the root.
_PLACEMENT = (
    ("mg-corp", "Corp"),
    ("mg-platform", "Platform"),
    ("mg-corp", "Corp"),
    ("mg-landing-zones", "Online"),
    ("", "Sandbox"),
)


def _management_groups(estate: Estate) -> None:
    for group_id, name, parent in MANAGEMENT_GROUPS:
        estate.add_management_group(ManagementGroup(group_id, name, parent))
    counts: dict[str, int] = {}
    for index, subscription in enumerate(estate.subscriptions.values()):
        group, word = _PLACEMENT[index % len(_PLACEMENT)]
        counts[word] = counts.get(word, 0) + 1
        subscription.management_group = group
        subscription.display_name = f"Contoso {word} {counts[word]:02d}"


@dataclass(frozen=True)
class ArcImage:
    """An OS an Arc-enabled server runs, as its agent reports it, and how MDE installs
    end there. osSku strings: "Ubuntu 24.04.3 LTS" with kernel "6.8.0-87-generic" (an
    ``az connectedmachine show`` output), "Windows Server 2025 Standard"/"10.0.26100.4946",
    "Windows Server 2019 Standard", "Windows Server 2012 R2 Standard" (Resource Graph rows
    in public test fixtures); the RHEL and SLES strings follow the built-in policies'
    ``osSku like 'Red Hat Enterprise Linux 8.*'``/``'SUSE Linux Enterprise Server 15*'``
    and the distributions' own names (unconfirmed as Arc output, docs/fidelity.md)."""

    weight: int
    os_type: str
    os_sku: str
    os_version: str
    mde_failure: int | None = None


ARC_CATALOGUE: tuple[ArcImage, ...] = (
    ArcImage(4, "Windows", "Windows Server 2025 Standard", "10.0.26100.4946"),
    ArcImage(10, "Windows", "Windows Server 2022 Datacenter", "10.0.20348.2113"),
    ArcImage(8, "Windows", "Windows Server 2019 Standard", "10.0.17763.5329"),
    ArcImage(5, "Windows", "Windows Server 2016 Datacenter", "10.0.14393.6452"),
    ArcImage(4, "Windows", "Windows Server 2012 R2 Standard", "6.3.9600.21620"),
    # Windows Server 2012 (not R2) is not onboardable: like 2008 R2 among the VM images.
    ArcImage(1, "Windows", "Windows Server 2012 Standard", "6.2.9200.24523", mde_failure=11),
    ArcImage(8, "Linux", "Ubuntu 22.04.3 LTS", "5.15.0-91-generic"),
    ArcImage(5, "Linux", "Ubuntu 24.04.3 LTS", "6.8.0-87-generic"),
    ArcImage(4, "Linux", "Red Hat Enterprise Linux 8.9 (Ootpa)", "4.18.0-513.5.1.el8_9.x86_64"),
    ArcImage(3, "Linux", "Red Hat Enterprise Linux 9.2 (Plow)", "5.14.0-284.11.1.el9_2.x86_64"),
    ArcImage(2, "Linux", "SUSE Linux Enterprise Server 15 SP5", "5.14.21-150500.55.39-default"),
    ArcImage(1, "Linux", "Slackware 15.0", "5.15.19", mde_failure=10),  # an unknown distro
)
_ARC_GROUPS = ("rg-arc-datacenter", "rg-arc-branches", "rg-arc-factory")


def arc_machine(image: ArcImage, subscription: str, group: str, name: str, **changes: Any) -> Vm:
    """A Connected Arc-enabled server running this OS, as ``azcmagent connect`` makes it."""
    machine = Vm(
        subscription,
        group,
        name,
        kind="arc",
        os_type=image.os_type,
        os_name=image.os_type.lower(),
        os_sku=image.os_sku,
        os_version=image.os_version,
        mde_failure=image.mde_failure,
    )
    for key, value in changes.items():
        setattr(machine, key, value)
    return machine


def _arc_machines(estate: Estate, count: int, seed: int) -> None:
    """About 80% Connected, 12% Disconnected, 5% Expired, a few Error; a few in AWS or
    GCP; one in sixty an Arc agent on an Azure VM (cloudMetadata.provider "Azure":
    unconfirmed, docs/fidelity.md); a quarter with MDE Succeeded, a few Failed."""
    rng = random.Random(f"{seed}:arc-machines")  # test data, not crypto
    subs = [s.id for s in estate.subscriptions.values()]
    weights = [image.weight for image in ARC_CATALOGUE]
    for number in range(count):
        image = rng.choices(ARC_CATALOGUE, weights)[0]
        machine = arc_machine(
            image,
            subs[number % len(subs)],
            rng.choice(_ARC_GROUPS),
            f"arc-{number:05d}",
            location=rng.choice(_LOCATIONS),
            arc_status=rng.choices(
                ["Connected", "Disconnected", "Expired", "Error"], [80, 12, 5, 3]
            )[0],
            tags={"env": rng.choice(["prod", "dev", "test"]), "site": rng.choice(["hq", "dc2"])},
            vm_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
        roll = rng.random()
        if number % 60 == 59:
            machine.cloud_provider = "Azure"
        elif roll < 0.02:
            machine.cloud_provider = rng.choice(["AWS", "GCP"])
        roll = rng.random()
        if roll < 0.25:
            machine.extensions["mde." + machine.os_type.lower()] = mde_extension(machine)
        elif roll < 0.28:
            code = 31 if machine.os_type == "Linux" else 1
            machine.extensions["mde." + machine.os_type.lower()] = mde_extension(
                machine, "Failed", code
            )
        estate.add_vm(machine)


def _scale_sets(estate: Estate, count: int, seed: int) -> None:
    """Mostly Uniform scale sets of 2-20 instances, every fourth one Flexible with two or
    three member VMs (standard VMs: fx-00000...), and the third one an old scale set
    without orchestrationMode."""
    rng = random.Random(f"{seed}:scale-sets")  # test data, not crypto
    subs = [s.id for s in estate.subscriptions.values()]
    weights = [image.weight for image in CATALOGUE]
    members = 0
    for number in range(count):
        mode = "Flexible" if number % 4 == 1 else ("" if number == 2 else "Uniform")
        scale_set = ScaleSet(
            subs[number % len(subs)],
            rng.choice(_GROUPS),
            f"vmss-{number:05d}",
            orchestration_mode=mode,
            capacity=rng.randint(2, 20),
            location=rng.choice(_LOCATIONS),
        )
        if mode == "Flexible":
            scale_set.capacity = rng.randint(2, 3)
            for _ in range(scale_set.capacity):
                image = rng.choices(CATALOGUE, weights)[0]
                estate.add_vm(
                    image.vm(
                        scale_set.subscription,
                        scale_set.resource_group,
                        f"fx-{members:05d}",
                        resource_group=scale_set.resource_group,
                        location=scale_set.location,
                        scale_set=scale_set.id,
                        tags={"env": "prod"},
                        vm_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    )
                )
                members += 1
        estate.add_scale_set(scale_set)
