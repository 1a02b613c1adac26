"""VM facts -> classification. Pure: the OS matrix (shared/FACTS.md, "Which machines are
eligible", and the Learn pages it cites) lives here as data, with the rules that read it.
The facts come from facts.py's readers of ARM and Resource Graph JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from remediation.model import ExtensionFacts, Kind, Power, VmFacts, VmRef, smbios_forms

MDE_PUBLISHER = "Microsoft.Azure.AzureDefenderForServers"
MDE_WINDOWS = "MDE.Windows"
MDE_LINUX = "MDE.Linux"
OPT_OUT_TAG = "ExcludeMdeAutoProvisioning"  # honoured as MDC's own opt-out convention
# Monitoring agents: the Azure Monitor Agent, or the retired Log Analytics agent
# (publisher, type). Defender for Cloud's antimalware alerts need one of them.
MONITORING_AGENTS = frozenset(
    {
        ("microsoft.azure.monitor", "azuremonitorwindowsagent"),
        ("microsoft.azure.monitor", "azuremonitorlinuxagent"),
        ("microsoft.enterprisecloud.monitoring", "microsoftmonitoringagent"),
        ("microsoft.enterprisecloud.monitoring", "omsagentforlinux"),
    }
)
NO_MONITORING_AGENT = "no-monitoring-agent"
FINDINGS = (NO_MONITORING_AGENT,)


class OsFamily(StrEnum):
    WINDOWS = "windows"
    LINUX = "linux"
    UNKNOWN = "unknown"


class Support(StrEnum):
    SUPPORTED = "supported"
    UNIFIED = "unified-solution"  # needs WDATP_UNIFIED_SOLUTION on the subscription
    UNSUPPORTED = "unsupported"
    UNKNOWN = "unknown"


class Protection(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    IN_PROGRESS = "in-progress"
    ABSENT = "absent"


# --- The Windows matrix: one row a version ------------------------------------------
# version: (support, Defender Antivirus built in, what to do when unsupported)
WINDOWS_SERVER: dict[str, tuple[Support, bool, str]] = {
    "2025": (Support.SUPPORTED, True, ""),
    "2022": (Support.SUPPORTED, True, ""),
    "2019": (Support.SUPPORTED, True, ""),
    "2016": (Support.UNIFIED, True, ""),
    "2012-r2": (Support.UNIFIED, False, ""),
    "2012": (
        Support.UNSUPPORTED,
        False,
        "Windows Server 2012 (not R2) cannot be onboarded to MDE: upgrade the OS",
    ),
    "2008-r2": (
        Support.UNSUPPORTED,
        False,
        "Windows Server 2008 R2 SP1 cannot be onboarded through the extension: onboard "
        "it with the Defender deployment tool, or upgrade the OS",
    ),
}
WINDOWS_CLIENT_NOTE = (
    "single-session Windows 10/11 cannot be onboarded through the MDE.Windows extension "
    "(it fails with code 51): onboard it with Intune or Group Policy"
)
# Build numbers the guest agent reports, for images that carry no marketplace name.
WINDOWS_SERVER_BUILDS = {
    "6.1": "2008-r2",
    "6.2": "2012",
    "6.3": "2012-r2",
    "10.0.14393": "2016",
    "10.0.17763": "2019",
    "10.0.20348": "2022",
    "10.0.26100": "2025",
}

# --- The Linux matrix: one row a distro, major version and architecture set ----------
# Every row cites the line of the page it comes from, verbatim: "Prerequisites for
# Microsoft Defender for Endpoint on Linux", LINUX_SOURCE below. "Distributions and
# versions that aren't explicitly listed above are unsupported": a version with no row is
# unsupported, which costs nothing, where an install on it fails after minutes.
# (distro, major, lowest minor, highest minor, architectures, the page's line). A
# marketplace image that names no minor (RHEL "8-lvm", Rocky "9-base") is the newest
# minor of its major. docs/os-matrix.md holds the page's table and its history;
# tests/test_classify.py checks each row against its line and the README against the rows.
LINUX_SOURCE = (
    "https://learn.microsoft.com/en-us/defender-endpoint/mde-linux-prerequisites, "
    "ms.date 2026-09-14 (published from MicrosoftDocs/defender-docs-pr, live)"
)
X64 = frozenset({"x64"})
ARM64 = frozenset({"arm64"})
BOTH = X64 | ARM64
ANY = 99  # no upper bound on the minor version


class LinuxRow(NamedTuple):
    distro: str
    major: int
    lowest_minor: int
    highest_minor: int
    arches: frozenset[str]
    cite: str  # the page's table row, verbatim


# The page writes its ranges with en dashes: kept verbatim.
_PAGE = {
    "rhel": "| Red Hat Enterprise Linux | 7.2+, 8.x, 9.x, 10.x | 8.x, 9.x, 10.x |",
    "centos": "| CentOS | 7.2+, 8.x | - |",
    "centos-stream": "| CentOS Stream | 8.x, 9.x, 10.x | 8.x, 9.x, 10.x |",
    "oracle": "| Oracle Linux | 7.2+, 8.x, 9.x, 10.x | 8.x, 9.x, 10.x |",
    "ubuntu": (
        "| Ubuntu LTS | 16.04, 18.04, 20.04, 22.04, 24.04, 26.04 | 20.04, 22.04, 24.04, 26.04 |"
    ),
    "debian": "| Debian | 9–13 | 11, 12, 13 |",  # noqa: RUF001
    "sles": "| SUSE Linux Enterprise Server | 12.x, 15.x, 16.x | 15 (SP5, SP6), 16.x |",
    "opensuse": "| openSUSE Leap | 15.6, 16.x | 15.6, 16.x |",
    "amazon-linux": (
        "| Amazon Linux | 2, 2023 | 2 (Support retiring 31 October 2026. See notice below.)2023 |"
    ),
    "fedora": "| Fedora | 33–44 | 40–44 |",  # noqa: RUF001
    "rocky": "| Rocky Linux | 8.7+, 9.2+, 10.x | 8.7+, 9.2+, 10.x |",
    "alma": "| Alma Linux | 8.4+, 9.2+, 10.x | 8.4+, 9.2+, 10.x |",
    "mariner": "| Mariner | 2 | 2 |",
}


LINUX_MATRIX: tuple[LinuxRow, ...] = (
    LinuxRow("rhel", 7, 2, ANY, X64, _PAGE["rhel"]),
    LinuxRow("rhel", 8, 0, ANY, BOTH, _PAGE["rhel"]),
    LinuxRow("rhel", 9, 0, ANY, BOTH, _PAGE["rhel"]),
    LinuxRow("rhel", 10, 0, ANY, BOTH, _PAGE["rhel"]),
    LinuxRow("centos", 7, 2, ANY, X64, _PAGE["centos"]),
    LinuxRow("centos", 8, 0, ANY, X64, _PAGE["centos"]),
    # CentOS 9 and 10 exist only as Stream; the guest agent reports Stream as "centos".
    LinuxRow("centos", 9, 0, ANY, BOTH, _PAGE["centos-stream"]),
    LinuxRow("centos", 10, 0, ANY, BOTH, _PAGE["centos-stream"]),
    LinuxRow("centos-stream", 8, 0, ANY, BOTH, _PAGE["centos-stream"]),
    LinuxRow("centos-stream", 9, 0, ANY, BOTH, _PAGE["centos-stream"]),
    LinuxRow("centos-stream", 10, 0, ANY, BOTH, _PAGE["centos-stream"]),
    LinuxRow("oracle", 7, 2, ANY, X64, _PAGE["oracle"]),
    LinuxRow("oracle", 8, 0, ANY, BOTH, _PAGE["oracle"]),
    LinuxRow("oracle", 9, 0, ANY, BOTH, _PAGE["oracle"]),
    LinuxRow("oracle", 10, 0, ANY, BOTH, _PAGE["oracle"]),
    LinuxRow("ubuntu", 16, 4, 4, X64, _PAGE["ubuntu"]),
    LinuxRow("ubuntu", 18, 4, 4, X64, _PAGE["ubuntu"]),
    LinuxRow("ubuntu", 20, 4, 4, BOTH, _PAGE["ubuntu"]),
    LinuxRow("ubuntu", 22, 4, 4, BOTH, _PAGE["ubuntu"]),
    LinuxRow("ubuntu", 24, 4, 4, BOTH, _PAGE["ubuntu"]),
    LinuxRow("ubuntu", 26, 4, 4, BOTH, _PAGE["ubuntu"]),
    LinuxRow("debian", 9, 0, ANY, X64, _PAGE["debian"]),
    LinuxRow("debian", 10, 0, ANY, X64, _PAGE["debian"]),
    LinuxRow("debian", 11, 0, ANY, BOTH, _PAGE["debian"]),
    LinuxRow("debian", 12, 0, ANY, BOTH, _PAGE["debian"]),
    LinuxRow("debian", 13, 0, ANY, BOTH, _PAGE["debian"]),
    LinuxRow("sles", 12, 0, ANY, X64, _PAGE["sles"]),
    LinuxRow("sles", 15, 0, ANY, X64, _PAGE["sles"]),
    LinuxRow("sles", 15, 5, 6, ARM64, _PAGE["sles"]),  # arm64: SP5 and SP6 only
    LinuxRow("sles", 16, 0, ANY, BOTH, _PAGE["sles"]),
    LinuxRow("opensuse", 15, 6, 6, BOTH, _PAGE["opensuse"]),
    LinuxRow("opensuse", 16, 0, ANY, BOTH, _PAGE["opensuse"]),
    # Amazon Linux 2 on arm64: support ended on 31 October 2026 (the page's notice).
    LinuxRow("amazon-linux", 2, 0, ANY, X64, _PAGE["amazon-linux"]),
    LinuxRow("amazon-linux", 2023, 0, ANY, BOTH, _PAGE["amazon-linux"]),
    *(LinuxRow("fedora", major, 0, ANY, X64, _PAGE["fedora"]) for major in range(33, 40)),
    *(LinuxRow("fedora", major, 0, ANY, BOTH, _PAGE["fedora"]) for major in range(40, 45)),
    LinuxRow("rocky", 8, 7, ANY, BOTH, _PAGE["rocky"]),
    LinuxRow("rocky", 9, 2, ANY, BOTH, _PAGE["rocky"]),
    LinuxRow("rocky", 10, 0, ANY, BOTH, _PAGE["rocky"]),
    LinuxRow("alma", 8, 4, ANY, BOTH, _PAGE["alma"]),
    LinuxRow("alma", 9, 2, ANY, BOTH, _PAGE["alma"]),
    LinuxRow("alma", 10, 0, ANY, BOTH, _PAGE["alma"]),
    LinuxRow("mariner", 2, 0, ANY, BOTH, _PAGE["mariner"]),
)
# Distros whose extension needs python3 on the machine (it exits 52 otherwise).
NEEDS_PYTHON3 = (("rhel", 8), ("ubuntu", 20), ("ubuntu", 22), ("ubuntu", 24), ("ubuntu", 26))

# Publisher, offer or guest-agent OS name -> distro, first match wins.
DISTRO_NAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), distro)
    for pattern, distro in (
        (r"ubuntu|canonical", "ubuntu"),
        (r"red ?hat|rhel", "rhel"),
        (r"centos.?stream", "centos-stream"),
        (r"centos|openlogic", "centos"),
        (r"oracle|^ol$", "oracle"),
        (r"debian", "debian"),
        (r"opensuse", "opensuse"),
        (r"^sles|suse linux enterprise|^suse$", "sles"),
        (r"amzn|amazon", "amazon-linux"),
        (r"fedora", "fedora"),
        (r"rocky|^resf$", "rocky"),
        (r"alma", "alma"),
        (r"mariner", "mariner"),
        (r"flatcar|kinvolk", "flatcar"),
    )
)

# --- Not ours to touch: managed services and network appliances ---------------------
MANAGED_PUBLISHERS: dict[str, str] = {
    "azuredatabricks": "an Azure Databricks cluster node",
    "azureopenshift": "an Azure Red Hat OpenShift node",
    "microsoft-aks": "an AKS node",
    "aks": "an AKS node",
    "fortinet": "a Fortinet network appliance",
    "paloaltonetworks": "a Palo Alto Networks appliance",
    "checkpoint": "a Check Point appliance",
    "barracudanetworks": "a Barracuda appliance",
    "cisco": "a Cisco appliance",
    "f5-networks": "an F5 appliance",
    "citrix": "a Citrix appliance",
    "sophos": "a Sophos appliance",
    "juniper-networks": "a Juniper appliance",
    "vmware-inc": "a VMware appliance",
}
MANAGED_GROUPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^mc_", re.IGNORECASE), "in an AKS node resource group"),
    (re.compile(r"^databricks-rg-", re.IGNORECASE), "in a Databricks managed group"),
)


@dataclass(frozen=True, slots=True)
class Classification:
    vm: VmRef
    os: OsFamily
    platform: str  # windows-server-2022, windows-client, ubuntu-22.04, rhel-8.6, unknown
    support: Support
    support_note: str  # why unsupported and what to do instead, or a caveat
    builtin_av: bool  # Defender Antivirus ships with the OS
    managed: str  # why the VM belongs to a managed service or appliance, or ""
    power: Power
    agent_ready: bool | None  # the guest agent reported Ready (True), Not Ready (False)
    protection: Protection
    extension: str  # MDE.Windows or MDE.Linux, "" when the OS is unknown
    failure_code: int | None  # of a Failed MDE extension, when the instance view says
    failed_extensions: tuple[str, ...]  # other extensions in Failed state
    opt_out: str  # why the VM is opted out, or ""
    findings: tuple[str, ...] = ()  # informational, never acted on: FINDINGS

    @property
    def eligible_running(self) -> bool:
        """Counted in coverage: a supported OS, neither opted out nor managed, running."""
        return (
            self.support in {Support.SUPPORTED, Support.UNIFIED}
            and not self.opt_out
            and not self.managed
            and self.power is Power.RUNNING
        )


def classify(facts: VmFacts, exclude_tag: str) -> Classification:
    os_family, platform, support, note, builtin_av = _operating_system(facts)
    extension = {OsFamily.WINDOWS: MDE_WINDOWS, OsFamily.LINUX: MDE_LINUX}.get(os_family, "")
    protection, code = _protection(facts.extensions, extension)
    failed = tuple(
        sorted(
            ext.name
            for ext in facts.extensions
            if ext.state.lower() == "failed" and not _is_mde(ext)
        )
    )
    managed = _managed(facts)
    return Classification(
        vm=facts.vm,
        os=os_family,
        platform=platform,
        support=support,
        support_note=note,
        builtin_av=builtin_av,
        managed=managed,
        power=facts.power,
        agent_ready=facts.agent_ready,
        protection=protection,
        extension=extension,
        failure_code=code,
        failed_extensions=failed,
        opt_out=_opt_out(facts, exclude_tag),
        findings=_findings(facts, managed),
    )


def _findings(facts: VmFacts, managed: str) -> tuple[str, ...]:
    """A running VM of ours with neither monitoring agent: Defender for Cloud's
    antimalware alerts ("Antimalware Action Taken") will not reach it."""
    if facts.power is not Power.RUNNING or managed:
        return ()
    agents = {(ext.publisher.lower(), ext.type.lower()) for ext in facts.extensions}
    return () if agents & MONITORING_AGENTS else (NO_MONITORING_AGENT,)


# --- Operating system ------------------------------------------------------------------
_OsResult = tuple[OsFamily, str, Support, str, bool]


def _operating_system(facts: VmFacts) -> _OsResult:
    publisher = facts.publisher.lower()
    os_type = facts.os_type.lower()
    client_license = facts.license_type.lower() == "windows_client"
    agent_name = facts.os_name.lower()

    if publisher == "microsoftwindowsdesktop" or client_license or _is_client_name(agent_name):
        return _windows_client(facts)
    if publisher in {"microsoftwindowsserver", "microsoftsqlserver"}:
        version = _server_version_from_image(facts.offer, facts.sku)
        if version:
            return _windows_server(version)
    if agent_name.startswith("windows server") or (os_type == "windows" and facts.os_version):
        version = _server_version_from_agent(facts.os_name, facts.os_version)
        if version:
            return _windows_server(version)
    if publisher and os_type != "windows":
        linux = _linux_from_image(facts.publisher, facts.offer, facts.sku)
        if linux is not None:
            return linux
    if os_type == "linux" or (agent_name and not agent_name.startswith("windows")):
        if facts.os_name:
            return _linux(_distro(facts.os_name), *_version(facts.os_version))
        return (OsFamily.LINUX, "linux-unknown", Support.UNKNOWN, _UNKNOWN_NOTE, False)
    if os_type == "windows":
        return (OsFamily.WINDOWS, "windows-unknown", Support.UNKNOWN, _UNKNOWN_NOTE, False)
    return (OsFamily.UNKNOWN, "unknown", Support.UNKNOWN, _UNKNOWN_NOTE, False)


_UNKNOWN_NOTE = (
    "the image names no OS and the guest agent has not reported one: start the VM and "
    "check its guest agent, or onboard it by hand"
)


def _is_client_name(agent_name: str) -> bool:
    return bool(re.match(r"windows (7|8|10|11)\b", agent_name))


def _windows_client(facts: VmFacts) -> _OsResult:
    text = " ".join((facts.offer, facts.sku, facts.os_name)).lower()
    if re.search(r"windows 7|win7|windows-7", text):
        note = (
            "Windows 7 cannot be onboarded through the extension: onboard SP1 with the "
            "Defender deployment tool, or upgrade it"
        )
        return (OsFamily.WINDOWS, "windows-client", Support.UNSUPPORTED, note, False)
    if re.search(r"avd|evd|multi-session|multisession", text):
        return (OsFamily.WINDOWS, "windows-client-multisession", Support.SUPPORTED, "", True)
    return (OsFamily.WINDOWS, "windows-client", Support.UNSUPPORTED, WINDOWS_CLIENT_NOTE, True)


def _windows_server(version: str) -> _OsResult:
    support, builtin_av, note = WINDOWS_SERVER[version]
    return (OsFamily.WINDOWS, f"windows-server-{version}", support, note, builtin_av)


def _server_version_from_image(offer: str, sku: str) -> str | None:
    # SQL Server images name their OS in the offer ("sql2019-ws2022"); Windows Server
    # images in the sku ("2022-datacenter-azure-edition", "2012-R2-Datacenter").
    match = re.search(r"ws(20\d\d)(r2)?", offer, re.IGNORECASE) or re.match(
        r"^(?:\[smalldisk\]\s*)?(20\d\d)(-r2)?", sku, re.IGNORECASE
    )
    if match is None:
        return None
    version = match[1] + ("-r2" if match[2] else "")
    return version if version in WINDOWS_SERVER else None


def _server_version_from_agent(os_name: str, os_version: str) -> str | None:
    match = re.search(r"windows server (20\d\d)( r2)?", os_name, re.IGNORECASE)
    if match:
        version = match[1] + ("-r2" if match[2] else "")
        return version if version in WINDOWS_SERVER else None
    for build, version in WINDOWS_SERVER_BUILDS.items():
        if os_version == build or os_version.startswith(build + "."):
            return version
    return None


def _linux_from_image(publisher: str, offer: str, sku: str) -> _OsResult | None:
    # The offer names the distro more precisely than the publisher (SUSE publishes
    # both SLES and openSUSE Leap).
    distro = _known_distro(offer) or _known_distro(publisher)
    if not distro:
        return None
    text = f"{offer} {sku}".lower()
    arch = "arm64" if "arm64" in text or "aarch64" in text else "x64"
    return _linux(distro, *_marketplace_version(distro, offer, sku), arch=arch)


def _marketplace_version(distro: str, offer: str, sku: str) -> tuple[int | None, int | None]:
    # Architecture and generation markers are not versions, and separate what they part.
    offer, sku = (
        re.sub(r"x86_64|arm64|aarch64|gen[12]", " ", text.lower()) for text in (offer, sku)
    )
    if distro == "ubuntu":
        match = re.search(r"(\d{2})[._](\d{2})", sku) or re.search(r"(\d{2})[._](\d{2})", offer)
        return (int(match[1]), int(match[2])) if match else (None, None)
    if distro in {"sles", "opensuse"}:
        # "sles-15-sp5", "sles-sap-12-sp5", "opensuse-leap-15-6"
        match = re.search(r"(?:sles|leap)(?:-[a-z]+)*-(\d{2})(?:-(?:sp)?(\d))?", offer)
        if match:
            return int(match[1]), int(match[2]) if match[2] else 0
        return (None, None)
    if distro in _GLUED_DISTROS:
        # RHEL "8_6", "86-gen2", "810-gen2", "8-lvm-gen2", "10-lvm-gen2", "7.9",
        # "rhel-lvm87"; Oracle "ol89-lvm-gen2"; CentOS "7_9"; Alma "8_7-gen2"; Rocky
        # "9-base": the major may be glued to its minor. Else the offer ("rockylinux-9").
        for text in (sku, offer):
            version = _glued_version(distro, text)
            if version is not None:
                return version
        return (None, None)
    # Debian "11-gen2", Amazon "2023", Mariner "cbl-mariner-2-gen2", Azure Linux
    # "azure-linux-3-gen2": a plain major, maybe dotted. Else the offer.
    for text in (sku, offer):
        match = _PLAIN_VERSION.search(text)
        if match:
            return int(match[1]), int(match[2]) if match[2] else None
    return (None, None)


_GLUED_DISTROS = frozenset({"rhel", "oracle", "centos", "centos-stream", "alma", "rocky"})
_PLAIN_VERSION = re.compile(r"(?<!\d)(\d{1,4})(?:[._](\d{1,2}))?(?=\D|$)")
_DIGITS = re.compile(r"(?<!\d)(\d{1,4})(?:[._-](\d{1,2}))?(?=\D|$)")


def _glued_version(distro: str, text: str) -> tuple[int, int | None] | None:
    """'86' -> 8.6, '810' -> 8.10, '10' -> 10, '100' -> 10.0, '7_9' -> 7.9: of the ways
    to cut the digits, the first whose major is one the matrix knows for the distro
    (two-digit majors first); else two digits just above the known majors (up to five
    more) are a newer major ('11'); else one digit, an older release glued ('69')."""
    match = _DIGITS.search(text)
    if match is None:
        return None
    digits, separated = match[1], match[2]
    if separated is not None or len(digits) == 1:
        return int(digits), int(separated) if separated is not None else None
    majors = {row.major for row in LINUX_MATRIX if row.distro == distro}
    for cut in (2, 1):
        if int(digits[:cut]) in majors:
            return int(digits[:cut]), int(digits[cut:]) if digits[cut:] else None
    if len(digits) == 2 and max(majors) < int(digits) <= max(majors) + 5:
        return int(digits), None  # a major newer than the matrix knows ("11-lvm")
    return int(digits[:1]), int(digits[1:])


def _known_distro(name: str) -> str:
    for pattern, distro in DISTRO_NAMES:
        if pattern.search(name):
            return distro
    return ""


def _distro(name: str) -> str:
    """A distro name from the guest agent; an unknown one is kept, slugified."""
    return _known_distro(name) or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _version(text: str) -> tuple[int | None, int | None]:
    match = re.match(r"^\s*(\d+)(?:\.(\d+))?", text)
    if match is None:
        return (None, None)
    return int(match[1]), int(match[2]) if match[2] else None


def _linux(distro: str, major: int | None, minor: int | None, arch: str = "x64") -> _OsResult:
    suffix = "-arm64" if arch == "arm64" else ""
    if not distro:
        return (OsFamily.LINUX, "linux-unknown", Support.UNKNOWN, _UNKNOWN_NOTE, False)
    if major is None:
        platform = distro + suffix
    elif minor is None:
        platform = f"{distro}-{major}{suffix}"
    elif distro == "ubuntu":
        platform = f"ubuntu-{major}.{minor:02d}{suffix}"
    else:
        platform = f"{distro}-{major}.{minor}{suffix}"
    if all(row.distro != distro for row in LINUX_MATRIX):
        note = f"{distro} is not a distribution MDE for Linux supports: onboard it by hand"
        return (OsFamily.LINUX, platform, Support.UNSUPPORTED, note, False)
    if major is None:
        note = f"cannot tell which {distro} version this is: check the guest agent"
        return (OsFamily.LINUX, platform, Support.UNKNOWN, note, False)
    for row_distro, row_major, low, high, arches, _ in LINUX_MATRIX:
        in_range = minor is None or low <= minor <= high
        if row_distro == distro and row_major == major and in_range and arch in arches:
            needs_python = (distro, major) in NEEDS_PYTHON3
            note = "the extension needs python3 on the machine" if needs_python else ""
            return (OsFamily.LINUX, platform, Support.SUPPORTED, note, False)
    note = (
        f"{platform} is not on MDE for Linux's list of supported distributions and "
        "architectures: move to a supported version, or onboard it by hand if Microsoft "
        "supports it otherwise"
    )
    return (OsFamily.LINUX, platform, Support.UNSUPPORTED, note, False)


# --- Protection, managed services, opt-outs ------------------------------------------
def _is_mde(ext: ExtensionFacts) -> bool:
    return ext.publisher.lower() == MDE_PUBLISHER.lower() and ext.type.lower() in {
        MDE_WINDOWS.lower(),
        MDE_LINUX.lower(),
    }


def _protection(
    extensions: tuple[ExtensionFacts, ...], wanted: str
) -> tuple[Protection, int | None]:
    mde = [ext for ext in extensions if _is_mde(ext)]
    if wanted:
        mde = [ext for ext in mde if ext.type.lower() == wanted.lower()] or mde
    if not mde:
        return Protection.ABSENT, None
    state = mde[0].state.lower()
    if state == "succeeded":
        return Protection.SUCCEEDED, None
    if state in {"failed", "canceled"}:
        return Protection.FAILED, mde[0].code
    return Protection.IN_PROGRESS, None


ARC_ON_AZURE = (
    "an Arc agent on an Azure VM (Azure blocks Arc there: the VM itself is covered as an Azure VM)"
)


def may_run_on_azure(facts: VmFacts) -> bool:
    """An Arc machine whose agent did not say where it runs (provider "N/A", empty, or a
    value other than a known cloud's) and has an SMBIOS id: it may be an Azure VM, which
    its id can tell (azure_twin). AWS and GCP machines say so themselves."""
    return (
        facts.vm.kind is Kind.ARC
        and facts.cloud_provider.lower() not in {"azure", "aws", "gcp"}
        and bool(smbios_forms(facts.vm_uuid))
    )


def _managed(facts: VmFacts) -> str:
    if facts.vm.kind is Kind.ARC and facts.cloud_provider.lower() == "azure":
        return ARC_ON_AZURE
    if facts.vm.kind is Kind.ARC and facts.azure_twin:
        # cloudMetadata.provider may not say "Azure" (the agent could not reach IMDS);
        # its SMBIOS id is still the Azure VM's vmId.
        return f"{ARC_ON_AZURE}; its SMBIOS id is the vmId of {facts.azure_twin}"
    publisher = facts.publisher.lower()
    if publisher in MANAGED_PUBLISHERS:
        return f"the image ({facts.publisher}) makes it {MANAGED_PUBLISHERS[publisher]}"
    if "firewall" in facts.offer.lower():
        return f"the image offer {facts.offer} is a firewall appliance"
    for pattern, why in MANAGED_GROUPS:
        if pattern.search(facts.vm.resource_group):
            return f"it is {why} ({facts.vm.resource_group})"
    return ""


def _opt_out(facts: VmFacts, exclude_tag: str) -> str:
    tags = {key.lower(): str(value) for key, value in facts.tags.items()}
    value = tags.get(exclude_tag.lower()) if exclude_tag else None
    if value is not None and value.strip().lower() != "false":
        return f"tag {exclude_tag}={value}"
    if tags.get(OPT_OUT_TAG.lower(), "").strip().lower() == "true":
        return f"tag {OPT_OUT_TAG}=true"
    if facts.vm_pricing is not None and facts.vm_pricing.lower() == "free":
        return "VM-level Defender for Servers pricing is Free"
    return ""
