"""The values that flow through the pipeline: plain, frozen, free of I/O.

event or sweep row -> VmFacts -> Classification (classify.py) -> Decision (policy.py)
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

# ARM's grammar for the ids we accept, strictly: a GUID subscription; a resource group of
# 1-90 characters, each a letter or digit of any script (.NET's Char.IsLetterOrDigit:
# Unicode categories Lu, Ll, Lt, Lm, Lo, Nd) or '-', '_', '.', '(', ')', not ending in a
# period (Microsoft Learn, resource-name-rules, Microsoft.Resources/resourcegroups; the
# spec's pattern ^[-\w\._\(\)]+$, maxLength 90, in azure-rest-api-specs resources.json);
# a machine name of ASCII letters, digits, '_', '.', '-' starting with a letter or digit
# and not ending in '.' or '-': 1-64 for a VM, 1-54 for an Arc machine (the same page for
# Microsoft.Compute; HybridCompute.json's machineName pattern). Anything else (a '..',
# '%', '?', '#', whitespace, extra segments, another resource type) is not a machine id.
_GUID = r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?"
_ARC_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,52}[A-Za-z0-9_])?"
MACHINE_ID = re.compile(
    rf"/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<group>[^/]{{1,90}})/providers/"
    rf"(?:Microsoft\.Compute/virtualMachines/(?P<name>{_NAME})"
    rf"|Microsoft\.HybridCompute/machines/(?P<arc>{_ARC_NAME}))",
    # ASCII case folding: a long s or a dotless i must not pass for 's' or 'i' in the words
    # ([^/] still takes any letter of a group's name, which resource_group_ok checks).
    re.IGNORECASE | re.ASCII,
)
_GROUP_LETTERS = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})


def resource_group_ok(name: str) -> bool:
    """A resource group name Azure accepts (see MACHINE_ID's comment)."""
    return (
        0 < len(name) <= 90
        and not name.endswith(".")
        and all(c in "-_.()" or unicodedata.category(c) in _GROUP_LETTERS for c in name)
    )


class Kind(StrEnum):
    """What a machine is: an Azure VM, or an Azure Arc-enabled server."""

    VM = "vm"
    ARC = "arc"


PROVIDERS = {
    Kind.VM: "Microsoft.Compute/virtualMachines",
    Kind.ARC: "Microsoft.HybridCompute/machines",
}


class InvalidResourceId(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class VmRef:
    """A machine's identity (a VM, or an Arc machine). ARM ids are case-insensitive:
    compare and key on ``key``."""

    subscription: str
    resource_group: str
    name: str
    kind: Kind = Kind.VM

    @classmethod
    def parse(cls, resource_id: str) -> VmRef:
        match = MACHINE_ID.fullmatch(resource_id) if isinstance(resource_id, str) else None
        if match is None or ".." in resource_id or not resource_group_ok(match["group"]):
            raise InvalidResourceId(
                f"not a virtual machine or Arc machine id: {_shorten(resource_id)}"
            )
        if match["arc"] is not None:
            return cls(match["sub"].lower(), match["group"], match["arc"], Kind.ARC)
        return cls(match["sub"].lower(), match["group"], match["name"])

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDERS[self.kind]}/{self.name}"
        )

    @property
    def key(self) -> str:
        return self.id.lower()

    @property
    def noun(self) -> str:
        """How the log names it: "VM" or "Arc machine"."""
        return "Arc machine" if self.kind is Kind.ARC else "VM"

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A machine Azure listed whose id this app cannot read: recorded, never acted on."""

    resource_id: str
    reason: str

    @property
    def shown(self) -> str:
        return _shorten(self.resource_id, 300)


def kind_of(resource_id: str) -> str:
    """ "vm", "arc", or "" for what is not a machine id (an ignored delivery's subject)."""
    try:
        return VmRef.parse(resource_id).kind.value
    except InvalidResourceId:
        return ""


def _shorten(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def dig(value: Any, *path: str) -> Any:
    """value[path[0]][path[1]]... of untrusted JSON, or None where the shape differs."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def as_text(value: Any) -> str:
    """A JSON value as text when it is text, else ''."""
    return value if isinstance(value, str) else ""


class Power(StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DEALLOCATING = "deallocating"
    DEALLOCATED = "deallocated"
    # An Arc machine's agent status (properties.status) other than Connected.
    DISCONNECTED = "disconnected"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ExtensionFacts:
    name: str
    publisher: str
    type: str
    state: str  # provisioningState as ARM reports it: Succeeded, Failed, Creating, ...
    code: int | None = None  # failure code, known only from the VM's instance view


@dataclass(frozen=True, slots=True)
class VmFacts:
    """What ARM (GET with instanceView) or Resource Graph tells about one VM."""

    vm: VmRef
    location: str = ""
    os_type: str = ""  # "Windows", "Linux" or "" when ARM does not say
    publisher: str = ""
    offer: str = ""
    sku: str = ""
    image_id: str = ""  # gallery or custom image; marketplace images have none
    license_type: str = ""
    os_name: str = ""  # the guest agent's report; updates slowly, absent when stopped
    os_version: str = ""
    agent_ready: bool | None = None  # the guest agent's status; None where unknown (Graph)
    power: Power = Power.UNKNOWN
    tags: Mapping[str, str] = field(default_factory=dict)
    extensions: tuple[ExtensionFacts, ...] = ()
    vm_pricing: str | None = None  # VM-level Defender pricing tier, when read
    vm_id: str = ""  # ARM's properties.vmId (a GUID): how Defender for Endpoint may know it
    # An Arc machine's cloudMetadata.provider ("Azure", "AWS", "GCP", "N/A"): "Azure"
    # is an Arc agent on an Azure VM, which Azure blocks and this app leaves alone.
    cloud_provider: str = ""
    # An Arc machine's vmUuid, "the Arc Machine's unique SMBIOS ID" (HybridCompute spec).
    vm_uuid: str = ""
    # The Azure VM whose vmId is this Arc machine's SMBIOS id: the same machine, found
    # even when the agent cannot reach IMDS to say "Azure" (set by the shell).
    azure_twin: str = ""


@dataclass(frozen=True, slots=True)
class Posture:
    """A subscription's Defender for Servers plan and MDE integration settings."""

    subscription: str
    pricing_tier: str = "Free"  # "Free" or "Standard"
    sub_plan: str = ""  # "P1" or "P2" when Standard
    wdatp: bool = False
    unified: bool = False
    exclude_linux: bool = True  # WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW: true = Linux left out

    @property
    def plan_on(self) -> bool:
        return self.pricing_tier == "Standard"


@dataclass(frozen=True, slots=True)
class History:
    """What earlier runs did to this VM, read from the audit log."""

    reinstalls: int = 0  # MDE reinstalls already attempted after a Failed extension


@dataclass(frozen=True, slots=True)
class Device:
    """A machine as Defender for Endpoint's device inventory lists it (GET /api/machines)."""

    device_id: str
    name: str = ""  # computerDnsName
    health: str = ""  # healthStatus: Active, Inactive, ImpairedCommunication, NoSensorData, ...
    onboarding: str = ""  # onboardingStatus: Onboarded, CanBeOnboarded, Unsupported, ...
    last_seen: str = ""


class Verification(StrEnum):
    """Does Defender for Endpoint see a VM whose MDE extension is Succeeded?"""

    VERIFIED = "verified"  # seen, onboarded, Active
    UNHEALTHY = "unhealthy"  # seen, with another health or onboarding status
    NOT_SEEN = "not-seen"  # not seen, past the grace period
    PENDING = "pending"  # not seen, within the grace period
    UNCHECKED = "unchecked"  # verification is off, or the device list could not be read


@dataclass(frozen=True, slots=True)
class Verified:
    value: Verification
    reason: str
    hint: str = ""


class Outcome(StrEnum):
    """The public decision vocabulary: operators filter the remediation log on it."""

    COMPLIANT = "compliant"
    INSTALL = "install"
    DEFER = "defer"
    EXCLUDE = "exclude"
    UNSUPPORTED = "unsupported"
    BLOCKED = "blocked"
    ERROR = "error"


class RecordOutcome(StrEnum):
    """What happened after a decision: the remediation log's ``outcome`` column."""

    NONE = "none"  # nothing to do (compliant, excluded, ...) or held back by the cap
    REPORTED = "reported"  # report mode: what enforce would have done, not done
    QUEUED = "queued"  # the install queue has it (the VM's claim is held)
    STARTED = "started"  # the extension PUT was accepted; a queued watch records its end
    DUPLICATE = "duplicate"  # the VM's claim is held by another install or check
    APPLIED = "applied"  # subscription settings written, no extension to install
    SUCCEEDED = "succeeded"  # the extension is Succeeded after our install
    SKIPPED = "skipped"  # the install queue found nothing to do any more
    DEFERRED = "deferred"  # not now (stopped, agent not ready): the next event or sweep
    FAILED = "failed"  # Azure refused, or the install ended Failed: the hint says what to do
    POISONED = "poisoned"  # every retry failed: the message left the queue, recorded here
    IGNORED = "ignored"  # not about a machine of ours (a delivery, or a VM deleted)
    UNAVAILABLE = "unavailable"  # Azure did not answer: an outage, not the VM's fault


# What ops count as a failure: Azure refused, the install ended Failed, or every retry failed.
FAILED_OUTCOMES = frozenset({RecordOutcome.FAILED, RecordOutcome.POISONED})

# The log's decision when none could be made (ARM or the token authority did not answer):
# an outage, not a fault of the VM (that is "error"). Its outcome is "unavailable".
UNDECIDED = "undecided"
UNAVAILABLE = RecordOutcome.UNAVAILABLE
# The log's decision for a subscription that joined or left the scope (scope.py).
SCOPE_CHANGE = "scope"


class ActionKind(StrEnum):
    ENABLE_PLAN = "enable-plan"
    ENABLE_SETTING = "enable-setting"
    INCLUDE_LINUX = "include-linux"
    INSTALL = "install"
    REINSTALL = "reinstall"


SUBSCRIPTION_ACTIONS = frozenset(
    {ActionKind.ENABLE_PLAN, ActionKind.ENABLE_SETTING, ActionKind.INCLUDE_LINUX}
)
EXTENSION_ACTIONS = frozenset({ActionKind.INSTALL, ActionKind.REINSTALL})


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    target: str  # P1/P2, a setting name, or an extension type

    @property
    def on_subscription(self) -> bool:
        return self.kind in SUBSCRIPTION_ACTIONS

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"

    @classmethod
    def parse(cls, text: str) -> Action:
        kind, _, target = text.partition(":")
        return cls(ActionKind(kind), target)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str
    actions: tuple[Action, ...] = ()
    hint: str = ""  # what a human should do, for blocked/error/unsupported
    recheck: bool = False  # a defer the shell checks again soon (a delayed queue message)

    @property
    def action_names(self) -> list[str]:
        return [str(action) for action in self.actions]

    @property
    def installs_extension(self) -> bool:
        """Does acting on this decision PUT the MDE extension (an install or reinstall)?"""
        return any(a.kind in EXTENSION_ACTIONS for a in self.actions)

    @property
    def subscription_actions(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.on_subscription)


@dataclass(frozen=True, slots=True)
class InstallResult:
    state: str  # Succeeded, Failed, or InProgress (still running when the wait ended)
    message: str = ""
    extension: str = ""  # the extension the failure names: ours, or one that blocks it


class RemediationError(Exception):
    """An error the pipeline knows how to handle; its text is safe to audit and log."""

    def __init__(self, message: str, *, hint: str = "", status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.hint = hint
        self.status = status
        self.code = code


class TransientError(RemediationError):
    """Worth retrying later: throttling, server errors, conflicts, lost connections."""


class ThrottledError(TransientError):
    """ARM asked for a longer wait than the retry budget allows."""


class PermanentError(RemediationError):
    """Retrying will not help: a human must act (the hint says how)."""


class VmNotRunning(PermanentError):
    """ARM refused an extension change because the VM is not running."""


class OperationInProgress(TransientError):
    """Compute refused a change because another operation on the VM is still running
    (ours, Defender for Cloud's, anyone's): check again later, never install twice."""


class BlockedByExtension(PermanentError):
    """Compute refused an extension change because another extension is Failed."""

    def __init__(self, message: str, extension: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.extension = extension


def covered(decision: str, eligible_running: bool) -> bool:
    """The one definition of "covered", for the sweep summary, status, the report and the
    metrics: an eligible machine, running, whose MDE extension is Succeeded (the policy
    decides "compliant" for exactly that). A stopped machine with the extension is not
    counted either way: it is not in the percentage's denominator."""
    return eligible_running and decision == Outcome.COMPLIANT


class Classified(Protocol):
    @property
    def decision(self) -> str: ...
    @property
    def platform(self) -> str: ...


def classified(record: Classified) -> bool:
    """Does the record say what the machine is? An outage (``undecided``), a poisoned
    install or a retry queued before any assessment carries no platform: it must never
    take the place of a record that does (the machine would drop out of the coverage)."""
    return bool(record.platform) and record.decision != UNDECIDED


def coverage_percent(covered: int, eligible: int) -> float | None:
    """Covered of eligible running machines, in percent to two decimals; None ("n/a")
    when none was measured: 0 of 0 is never 100."""
    return round(100.0 * covered / eligible, 2) if eligible else None


def percent_text(value: float | None) -> str:
    """How a coverage figure reads on a screen or a page: "n/a" for what was not measured."""
    return "n/a" if value is None else f"{value:g}%"


# --- Untrusted JSON ----------------------------------------------------------------------------
MAX_JSON_DEPTH = 32  # an Event Grid event nests about 6 deep; a sweep body 2


class InvalidJson(ValueError):
    """Input that is not JSON we accept; the message is safe to show and names the limit."""


def load_json(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for untrusted input: a size cap checked first, then a nesting cap.
    Both passes are linear: json's C scanner raises RecursionError (not ValueError)
    somewhere near a thousand levels, and what it parses is walked without recursion."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise InvalidJson(f"larger than {max_bytes:,} bytes")
    try:
        # utf-8-sig: a byte-order mark, as PowerShell writes files, is not the JSON's.
        value = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InvalidJson("not UTF-8 text") from None
    except RecursionError:
        raise InvalidJson(f"nested deeper than {max_depth} levels") from None
    except ValueError as error:
        raise InvalidJson(f"not JSON ({error})") from None
    if _depth(value) > max_depth:
        raise InvalidJson(f"nested deeper than {max_depth} levels")
    return value


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def smbios_forms(value: str) -> frozenset[str]:
    """An SMBIOS UUID in both byte orders, lower case: Azure's vmId "is encoded and stored
    in all Azure IaaS VMs SMBIOS" (Compute spec), and its first three groups read
    byte-swapped through dmidecode ("Accessing and Using Azure VM Unique ID": 090556DA-
    D4FA-764F-... is DA560509-FAD4-4F76-...). Empty for anything that is not a GUID."""
    text = value.strip().lower()
    if not re.fullmatch(_GUID, text, re.ASCII):
        return frozenset()
    first, second, third, rest = text[:8], text[9:13], text[14:18], text[18:]

    def swap(group: str) -> str:
        return "".join(reversed([group[i : i + 2] for i in range(0, len(group), 2)]))

    return frozenset({text, f"{swap(first)}-{swap(second)}-{swap(third)}{rest}"})


# Characters that change how a line reads without being seen: controls (Cc), format
# characters (Cf: the bidi overrides U+202A-U+202E and isolates U+2066-U+2069, zero-width
# joiners), line and paragraph separators (Zl, Zp), unassigned code points (Cn). A tag
# value with U+202E would otherwise reverse the rest of a log line or a table cell.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cn", "Cs"})


def visible(text: str) -> str:
    """``text`` with every invisible or reordering character written as ``\\uXXXX`` (or
    ``\\n``, ``\\r``, ``\\t``): what an operator reads is what the value holds."""
    if text.isprintable():  # Python's printable excludes every category above: the fast path
        return text
    if all(unicodedata.category(c) not in _INVISIBLE for c in text):
        return text
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(
        named.get(c) or (f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}")
        if unicodedata.category(c) in _INVISIBLE
        else c
        for c in text
    )


def sentences(*parts: str) -> str:
    """The non-empty parts as sentences, each ending with a stop, one space between: a
    reason that ends in ")" and the hint after it read as two sentences, not one."""
    return " ".join(
        part if part.endswith((".", "!", "?")) else f"{part}." for part in parts if part
    )
