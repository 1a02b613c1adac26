"""Classification + subscription posture + settings + history -> Decision. Pure.

The rules run in order and the first that applies decides (see ``RULES``): opt-outs
and managed VMs first, then what the OS allows, then what the subscription lacks and
whether settings let us fix it, then the VM's own extension and power state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from remediation.classify import Classification, OsFamily, Protection, Support
from remediation.config import Settings
from remediation.model import (
    Action,
    ActionKind,
    Decision,
    Device,
    History,
    Kind,
    Outcome,
    Posture,
    Power,
    Verification,
    Verified,
)

WDATP = "WDATP"
WDATP_UNIFIED = "WDATP_UNIFIED_SOLUTION"
WDATP_EXCLUDE_LINUX = "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW"

# What an MDE extension failure code means and what a human should do about it.
FAILURE_HINTS: dict[int, str] = {
    1: "internal error in the extension: retry once; if it persists, collect the "
    "extension logs and open a support case",
    2: "invalid arguments: the onboarding package was rejected; check mdeOnboardings",
    3: "insufficient privileges on the machine: check that the agent runs as root",
    4: "no internet connectivity: allow the MDE URLs and packages.microsoft.com "
    "through the firewall or proxy",
    5: "another app uses fanotify: remove or reconfigure the conflicting antimalware",
    10: "unsupported distribution: move to a supported one or onboard by hand",
    11: "unsupported OS version: upgrade to a supported version",
    12: "the machine lacks disk space or memory for MDE: free at least 2 GB",
    20: "MDE is not installed: check the package manager's logs on the machine",
    21: "installation failed: check the package manager's logs on the machine",
    23: "a dependency failed to install: check the package repositories",
    24: "the package repository could not be set up: allow packages.microsoft.com",
    30: "the onboarding blob was not found: check the mdeOnboardings package",
    31: "onboarding failed: check connectivity to the MDE service URLs",
    51: "this Windows edition cannot be onboarded through the extension: use Intune "
    "or Group Policy",
    52: "no Python interpreter on the machine: install python3, then let the sweep retry",
}


def failure_hint(code: int | None) -> str:
    if code is None:
        return "read the extension's status message in the portal or its logs on the VM"
    return FAILURE_HINTS.get(code, f"unknown extension error code {code}: read its logs")


@dataclass(frozen=True, slots=True)
class Situation:
    vm: Classification
    posture: Posture
    settings: Settings
    history: History

    @property
    def extension_action(self) -> Action | None:
        if self.vm.protection is Protection.ABSENT:
            return Action(ActionKind.INSTALL, self.vm.extension)
        if self.vm.protection is Protection.FAILED:
            return Action(ActionKind.REINSTALL, self.vm.extension)
        return None

    @property
    def subscription_gaps(self) -> list[tuple[Action, bool, str]]:
        """(action, allowed by settings, the setting change that allows it) for each gap."""
        gaps = []
        settings, posture = self.settings, self.posture
        integration = (settings.enable_integration, "REMEDIATION_ENABLE_INTEGRATION=true")
        if not posture.plan_on:
            plan = Action(ActionKind.ENABLE_PLAN, settings.servers_plan)
            allowed = settings.plan_change_allowed(posture.subscription)
            how = "REMEDIATION_ALLOW_PLAN_CHANGE=true"
            if isinstance(settings.allow_plan_change, frozenset):
                how = f"REMEDIATION_ALLOW_PLAN_CHANGE to include {posture.subscription}"
            gaps.append((plan, allowed, how))
        if not posture.wdatp:
            gaps.append((Action(ActionKind.ENABLE_SETTING, WDATP), *integration))
        # The unified and Linux switches only matter for what gets deployed.
        if self.extension_action is not None:
            if self.vm.support is Support.UNIFIED and not posture.unified:
                gaps.append((Action(ActionKind.ENABLE_SETTING, WDATP_UNIFIED), *integration))
            if self.vm.os is OsFamily.LINUX and posture.exclude_linux:
                gaps.append((Action(ActionKind.INCLUDE_LINUX, WDATP_EXCLUDE_LINUX), *integration))
        return gaps


def _opted_out(s: Situation) -> Decision | None:
    if s.vm.opt_out:
        return Decision(Outcome.EXCLUDE, f"The {s.vm.vm.noun} is opted out ({s.vm.opt_out}).")
    return None


def _managed(s: Situation) -> Decision | None:
    if s.vm.managed:
        return Decision(Outcome.EXCLUDE, f"Not ours to touch: {s.vm.managed}.")
    return None


def _unsupported(s: Situation) -> Decision | None:
    if s.vm.support is Support.UNSUPPORTED:
        return Decision(
            Outcome.UNSUPPORTED,
            f"{s.vm.platform} cannot be onboarded through the MDE extension.",
            hint=s.vm.support_note,
        )
    return None


def _unknown_os(s: Situation) -> Decision | None:
    if s.vm.support is not Support.UNKNOWN:
        return None
    if s.vm.power is not Power.RUNNING:
        return Decision(
            Outcome.DEFER,
            f"The OS is not known yet and the VM is {s.vm.power}; "
            "its guest agent reports the OS once it runs.",
        )
    if s.vm.agent_ready is False:
        return Decision(
            Outcome.DEFER,
            "The OS is not known yet: the guest agent is Not Ready (a new VM's agent "
            "reports within minutes).",
            recheck=True,
        )
    return Decision(
        Outcome.UNSUPPORTED,
        f"The OS of this VM cannot be identified ({s.vm.platform}).",
        hint=s.vm.support_note,
    )


def _blocked(s: Situation) -> Decision | None:
    refused = [(action, setting) for action, allowed, setting in s.subscription_gaps if not allowed]
    if not refused:
        return None
    needs = ", ".join(str(action) for action, _ in refused)
    settings = " and ".join(sorted({setting for _, setting in refused}))
    return Decision(
        Outcome.BLOCKED,
        f"Subscription {s.vm.vm.subscription} needs {needs}, which settings do not allow.",
        hint=f"set {settings}, or make the change yourself in Defender for Cloud",
    )


def _covered(s: Situation) -> Decision | None:
    if s.vm.protection is not Protection.SUCCEEDED:
        return None
    gaps = [action for action, _, _ in s.subscription_gaps]
    if gaps:
        return Decision(
            Outcome.INSTALL,
            f"{s.vm.extension} is installed but the subscription lacks "
            f"{', '.join(str(a) for a in gaps)}.",
            tuple(gaps),
        )
    return Decision(
        Outcome.COMPLIANT,
        f"{s.vm.extension} is Succeeded and Defender for Servers with MDE integration is on.",
    )


def _in_progress(s: Situation) -> Decision | None:
    if s.vm.protection is Protection.IN_PROGRESS:
        return Decision(
            Outcome.DEFER,
            f"An {s.vm.extension} operation is in progress (this app's or Defender for "
            "Cloud's); it is checked again when it has had time to finish.",
            recheck=True,
        )
    return None


def _failed_too_often(s: Situation) -> Decision | None:
    if s.vm.protection is not Protection.FAILED:
        return None
    if s.history.reinstalls < s.settings.max_reinstalls:
        return None
    code = "" if s.vm.failure_code is None else f" with code {s.vm.failure_code}"
    return Decision(
        Outcome.ERROR,
        f"{s.vm.extension} is Failed{code} after {s.history.reinstalls} reinstalls.",
        hint=failure_hint(s.vm.failure_code),
    )


ARC_AGENT_HINT = (
    "check the Connected Machine agent on the machine (`azcmagent show`); an Expired "
    "machine must be connected again (`azcmagent connect`)"
)


def _not_running(s: Situation) -> Decision | None:
    if s.vm.power is Power.RUNNING:
        return None
    if s.vm.vm.kind is Kind.ARC:
        return Decision(
            Outcome.DEFER,
            f"The Arc machine is {s.vm.power}, not Connected; {s.vm.extension} is installed "
            "when it reconnects.",
            hint=ARC_AGENT_HINT,
        )
    return Decision(
        Outcome.DEFER,
        f"The VM is {s.vm.power}; {s.vm.extension} is installed when it next starts.",
    )


def _blocked_by_failed_extension(s: Situation) -> Decision | None:
    """Compute refuses new extensions while another one is Failed (features-windows
    docs: "any other new extension fails to install"): say so instead of trying."""
    if not s.vm.failed_extensions:
        return None
    names = ", ".join(s.vm.failed_extensions)
    return Decision(
        Outcome.BLOCKED,
        f"{s.vm.extension} cannot be installed: Compute refuses new extensions while "
        f"{names} is Failed on the VM.",
        hint=f"repair or remove {names} on the VM; the next sweep installs {s.vm.extension} then",
    )


def _install(s: Situation) -> Decision | None:
    extension = s.extension_action
    assert extension is not None  # every other protection state was decided above
    actions = (*(action for action, _, _ in s.subscription_gaps), extension)
    why = "is absent" if extension.kind is ActionKind.INSTALL else "is Failed"
    code = s.vm.failure_code
    if code is not None:
        why += f" (code {code})"
    return Decision(Outcome.INSTALL, f"{s.vm.extension} {why} on {s.vm.platform}.", actions)


Rule = Callable[[Situation], Decision | None]
RULES: tuple[Rule, ...] = (
    _opted_out,
    _managed,
    _unsupported,
    _unknown_os,
    _blocked,
    _covered,
    _in_progress,
    _failed_too_often,
    _not_running,
    _blocked_by_failed_extension,
    _install,
)


def decide(vm: Classification, posture: Posture, settings: Settings, history: History) -> Decision:
    situation = Situation(vm, posture, settings, history)
    for rule in RULES:
        decision = rule(situation)
        if decision is not None:
            return decision
    raise AssertionError("the last rule always decides")  # pragma: no cover


# --- Verification: does Defender for Endpoint see a VM whose extension is Succeeded? ----
# Hints per health status (Defender for Endpoint's "device health status" docs and its
# troubleshooting pages for onboarding and connectivity).
SENSOR = "the sensor service (Windows: `sc query sense`; Linux: `mdatp health`)"
MDE_URLS = "the proxy or firewall lets the Defender for Endpoint service URLs through"
HEALTH_HINTS: dict[str, str] = {
    "inactive": "the device stopped reporting (7 days or more): check that the VM runs "
    f"and {SENSOR} runs",
    "impairedcommunication": f"the sensor cannot reach the service: check that {MDE_URLS}",
    "nosensordata": f"the sensor sends no data: check {SENSOR} and that the device was "
    "not offboarded",
    "nosensordataimpairedcommunication": f"no data and no connection: check {SENSOR} and "
    f"that {MDE_URLS}",
}
NOT_SEEN_HINT = (
    "check that the onboarding package is this tenant's (the extension used the "
    f"subscription's mdeOnboardings package), that {SENSOR} runs, and that {MDE_URLS}"
)


def not_checkable(vm: Classification) -> Verified | None:
    """A stopped VM (its sensor reports nothing: no alarm) or an excluded one."""
    if vm.power is not Power.RUNNING:
        again = "it reconnects" if vm.vm.kind is Kind.ARC else "it runs"
        return Verified(
            Verification.UNCHECKED,
            f"The {vm.vm.noun} is {vm.power}: Defender for Endpoint hears from it again "
            f"once {again}.",
        )
    if vm.opt_out or vm.managed:
        return Verified(
            Verification.UNCHECKED, f"Not verified: {vm.opt_out or vm.managed} (excluded)."
        )
    return None


def verify(
    vm: Classification,
    device: Device | None,
    *,
    checked: str,
    since: datetime | None,
    now: datetime,
    grace_hours: int,
) -> Verified | None:
    """The verification of a VM: None unless its MDE extension is Succeeded.
    ``checked`` is "" when the device list was read, else why it was not (verification
    off, or the API refused); ``since`` is when the extension was first seen Succeeded."""
    if vm.protection is not Protection.SUCCEEDED:
        return None
    unverifiable = not_checkable(vm)
    if unverifiable is not None:
        return unverifiable
    if checked:
        return Verified(Verification.UNCHECKED, checked)
    if device is not None:
        seen = f"Defender for Endpoint lists device {device.name or device.device_id}"
        health, onboarding = device.health or "Unknown", device.onboarding or "Unknown"
        if health.lower() == "active" and onboarding.lower() == "onboarded":
            return Verified(Verification.VERIFIED, f"{seen}: onboarded and Active.")
        hint = HEALTH_HINTS.get(
            health.lower(), f"check the device in the Defender portal ({SENSOR})"
        )
        if onboarding.lower() != "onboarded":
            hint = f"onboarding status is {onboarding}: run the extension again or onboard by hand"
        return Verified(
            Verification.UNHEALTHY,
            f"{seen} with health {health} and onboarding status {onboarding}.",
            hint,
        )
    start = min(since or now, now)  # a clock ahead of ours is not a future install
    hours = (now - start).total_seconds() / 3600
    if hours > grace_hours:
        return Verified(
            Verification.NOT_SEEN,
            f"{vm.extension} has been Succeeded since {start:%Y-%m-%d %H:%M} UTC, longer "
            f"than the {grace_hours} h grace, and Defender for Endpoint lists no device for "
            "this VM.",
            NOT_SEEN_HINT,
        )
    return Verified(
        Verification.PENDING,
        f"{vm.extension} has been Succeeded since {start:%Y-%m-%d %H:%M} UTC; Defender for "
        f"Endpoint may take up to {grace_hours} h (REMEDIATION_VERIFY_GRACE_HOURS) to list "
        "the device.",
    )
