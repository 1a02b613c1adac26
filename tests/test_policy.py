import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from remediation.classify import Classification, OsFamily, Protection, Support
from remediation.config import load
from remediation.model import Device, History, Outcome, Posture, Power, Verification, VmRef
from remediation.policy import decide, failure_hint, verify

SUB = "11111111-1111-1111-1111-111111111111"
BASE_SETTINGS = {
    "REMEDIATION_SUBSCRIPTIONS": SUB,
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}
SETTINGS = load(BASE_SETTINGS)
PLAN_ALLOWED = load(
    BASE_SETTINGS | {"REMEDIATION_ALLOW_PLAN_CHANGE": "true", "REMEDIATION_SERVERS_PLAN": "P2"}
)
NO_INTEGRATION = load(BASE_SETTINGS | {"REMEDIATION_ENABLE_INTEGRATION": "false"})

READY = Posture(SUB, "Standard", "P1", wdatp=True, unified=True, exclude_linux=False)
NO_PLAN = dataclasses.replace(READY, pricing_tier="Free", sub_plan="")
NO_WDATP = dataclasses.replace(READY, wdatp=False)
NO_UNIFIED = dataclasses.replace(READY, unified=False)
LINUX_EXCLUDED = dataclasses.replace(READY, exclude_linux=True)
BARE = Posture(SUB)


def vm(platform="ubuntu-22.04", os=OsFamily.LINUX, support=Support.SUPPORTED, **changes):
    base = Classification(
        vm=VmRef(SUB, "rg", "vm1"),
        os=os,
        platform=platform,
        support=support,
        support_note="",
        builtin_av=False,
        managed="",
        power=Power.RUNNING,
        agent_ready=True,
        protection=Protection.ABSENT,
        extension={OsFamily.WINDOWS: "MDE.Windows", OsFamily.LINUX: "MDE.Linux"}.get(os, ""),
        failure_code=None,
        failed_extensions=(),
        opt_out="",
    )
    return dataclasses.replace(base, **changes)


def windows(platform="windows-server-2022", support=Support.SUPPORTED, **changes):
    return vm(platform, OsFamily.WINDOWS, support, **changes)


# (case, classification, posture, settings, history, decision, actions)
# fmt: off
TABLE = [
    ("covered and ready", vm(protection=Protection.SUCCEEDED), READY, SETTINGS, History(), Outcome.COMPLIANT, []),
    ("covered while deallocated", vm(protection=Protection.SUCCEEDED, power=Power.DEALLOCATED), READY, SETTINGS, History(), Outcome.COMPLIANT, []),
    ("absent linux", vm(), READY, SETTINGS, History(), Outcome.INSTALL, ["install:MDE.Linux"]),
    ("absent windows 2022", windows(), READY, SETTINGS, History(), Outcome.INSTALL, ["install:MDE.Windows"]),
    ("absent 2012 r2 without unified", windows("windows-server-2012-r2", Support.UNIFIED), NO_UNIFIED, SETTINGS, History(), Outcome.INSTALL, ["enable-setting:WDATP_UNIFIED_SOLUTION", "install:MDE.Windows"]),
    ("absent 2016 with unified", windows("windows-server-2016", Support.UNIFIED), READY, SETTINGS, History(), Outcome.INSTALL, ["install:MDE.Windows"]),
    ("unified not asked for 2022", windows(), NO_UNIFIED, SETTINGS, History(), Outcome.INSTALL, ["install:MDE.Windows"]),
    ("linux excluded", vm(), LINUX_EXCLUDED, SETTINGS, History(), Outcome.INSTALL, ["include-linux:WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW", "install:MDE.Linux"]),
    ("linux inclusion not asked for windows", windows(), LINUX_EXCLUDED, SETTINGS, History(), Outcome.INSTALL, ["install:MDE.Windows"]),
    ("integration off", vm(), NO_WDATP, SETTINGS, History(), Outcome.INSTALL, ["enable-setting:WDATP", "install:MDE.Linux"]),
    ("bare subscription, plan allowed", vm(), BARE, PLAN_ALLOWED, History(), Outcome.INSTALL, ["enable-plan:P2", "enable-setting:WDATP", "include-linux:WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW", "install:MDE.Linux"]),
    ("plan off, not allowed", vm(), NO_PLAN, SETTINGS, History(), Outcome.BLOCKED, []),
    ("integration off, not allowed", vm(), NO_WDATP, NO_INTEGRATION, History(), Outcome.BLOCKED, []),
    ("covered but plan off, allowed", vm(protection=Protection.SUCCEEDED), NO_PLAN, PLAN_ALLOWED, History(), Outcome.INSTALL, ["enable-plan:P2"]),
    ("covered but plan off, not allowed", vm(protection=Protection.SUCCEEDED), NO_PLAN, SETTINGS, History(), Outcome.BLOCKED, []),
    ("covered, integration off", vm(protection=Protection.SUCCEEDED), NO_WDATP, SETTINGS, History(), Outcome.INSTALL, ["enable-setting:WDATP"]),
    ("covered, linux excluded needs nothing", vm(protection=Protection.SUCCEEDED), LINUX_EXCLUDED, SETTINGS, History(), Outcome.COMPLIANT, []),
    ("failed, first time", vm(protection=Protection.FAILED, failure_code=31), READY, SETTINGS, History(), Outcome.INSTALL, ["reinstall:MDE.Linux"]),
    ("failed, under the bound", vm(protection=Protection.FAILED), READY, SETTINGS, History(reinstalls=1), Outcome.INSTALL, ["reinstall:MDE.Linux"]),
    ("absent ignores the reinstall history", vm(), READY, SETTINGS, History(reinstalls=5), Outcome.INSTALL, ["install:MDE.Linux"]),
    ("failed, bound reached", vm(protection=Protection.FAILED, failure_code=4), READY, SETTINGS, History(reinstalls=2), Outcome.ERROR, []),
    ("in progress", vm(protection=Protection.IN_PROGRESS), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("deallocated", vm(power=Power.DEALLOCATED), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("stopped", windows(power=Power.STOPPED), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("starting", vm(power=Power.STARTING), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("power unknown", vm(power=Power.UNKNOWN), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("opted out", vm(opt_out="tag x=true"), BARE, SETTINGS, History(), Outcome.EXCLUDE, []),
    ("managed", vm(managed="an AKS node"), READY, SETTINGS, History(), Outcome.EXCLUDE, []),
    ("opt-out wins over unsupported", windows("windows-client", Support.UNSUPPORTED, opt_out="tag"), READY, SETTINGS, History(), Outcome.EXCLUDE, []),
    ("single-session windows", windows("windows-client", Support.UNSUPPORTED, support_note="use Intune"), READY, SETTINGS, History(), Outcome.UNSUPPORTED, []),
    ("unsupported wins over blocked", vm("fedora-39", support=Support.UNSUPPORTED, support_note="x"), NO_PLAN, SETTINGS, History(), Outcome.UNSUPPORTED, []),
    ("unknown os, running", vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, support_note="check agent"), READY, SETTINGS, History(), Outcome.UNSUPPORTED, []),
    ("unknown os, agent not ready", vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, agent_ready=False), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("unknown os, agent state unknown", vm("linux-unknown", OsFamily.LINUX, Support.UNKNOWN, agent_ready=None), READY, SETTINGS, History(), Outcome.UNSUPPORTED, []),
    ("unknown os, stopped, agent not ready", vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, power=Power.STOPPED, agent_ready=False), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("unknown os, deallocated", vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, power=Power.DEALLOCATED), READY, SETTINGS, History(), Outcome.DEFER, []),
    ("blocked wins over deallocated", vm(power=Power.DEALLOCATED), NO_PLAN, SETTINGS, History(), Outcome.BLOCKED, []),
]
# fmt: on


@pytest.mark.parametrize(
    ("classification", "posture", "settings", "history", "outcome", "actions"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decision_table(classification, posture, settings, history, outcome, actions):
    decision = decide(classification, posture, settings, history)
    assert decision.outcome is outcome
    assert decision.action_names == actions
    assert decision.reason.endswith(".")


def test_every_outcome_and_every_action_is_exercised():
    decisions = [decide(*row[1:5]) for row in TABLE]
    assert {d.outcome for d in decisions} == set(Outcome)
    kinds = {a.split(":")[0] for d in decisions for a in d.action_names}
    assert kinds == {"enable-plan", "enable-setting", "include-linux", "install", "reinstall"}


def test_blocked_names_the_setting_that_unblocks_it():
    plan = decide(vm(), NO_PLAN, SETTINGS, History())
    assert "enable-plan:P1" in plan.reason
    assert "REMEDIATION_ALLOW_PLAN_CHANGE=true" in plan.hint
    integration = decide(vm(), BARE, NO_INTEGRATION, History())
    assert (
        "REMEDIATION_ALLOW_PLAN_CHANGE=true and REMEDIATION_ENABLE_INTEGRATION=true"
        in integration.hint
    )


def test_an_error_carries_the_code_and_its_hint():
    decision = decide(
        vm(protection=Protection.FAILED, failure_code=4), READY, SETTINGS, History(reinstalls=2)
    )
    assert decision.reason == "MDE.Linux is Failed with code 4 after 2 reinstalls."
    assert decision.hint == (
        "no internet connectivity: allow the MDE URLs and packages.microsoft.com "
        "through the firewall or proxy"
    )


def test_plan_change_can_be_allowed_per_subscription():
    other = "22222222-2222-4222-8222-222222222222"
    only_other = load(
        BASE_SETTINGS
        | {"REMEDIATION_SUBSCRIPTIONS": f"{SUB},{other}", "REMEDIATION_ALLOW_PLAN_CHANGE": other}
    )
    blocked = decide(vm(), NO_PLAN, only_other, History())
    assert blocked.outcome is Outcome.BLOCKED
    assert f"REMEDIATION_ALLOW_PLAN_CHANGE to include {SUB}" in blocked.hint
    allowed = decide(vm(), dataclasses.replace(NO_PLAN, subscription=other), only_other, History())
    assert allowed.action_names[0] == "enable-plan:P1"


def test_the_reinstall_bound_follows_the_setting():
    strict = load(BASE_SETTINGS | {"REMEDIATION_MAX_REINSTALLS": "0"})
    assert (
        decide(vm(protection=Protection.FAILED), READY, strict, History()).outcome is Outcome.ERROR
    )


def test_a_failed_extension_elsewhere_blocks_the_install_after_power_is_checked():
    blocked = decide(vm(failed_extensions=("OmsAgentForLinux",)), READY, SETTINGS, History())
    assert (blocked.outcome, blocked.reason, blocked.hint, blocked.actions) == (
        Outcome.BLOCKED,
        "MDE.Linux cannot be installed: Compute refuses new extensions while "
        "OmsAgentForLinux is Failed on the VM.",
        "repair or remove OmsAgentForLinux on the VM; the next sweep installs MDE.Linux then",
        (),
    )
    asleep = vm(failed_extensions=("OmsAgentForLinux",), power=Power.DEALLOCATED)
    assert decide(asleep, READY, SETTINGS, History()).outcome is Outcome.DEFER
    covered = vm(failed_extensions=("OmsAgentForLinux",), protection=Protection.SUCCEEDED)
    assert decide(covered, READY, SETTINGS, History()).outcome is Outcome.COMPLIANT


def test_unsupported_says_what_to_do_instead():
    decision = decide(
        windows("windows-client", Support.UNSUPPORTED, support_note="use Intune"),
        READY,
        SETTINGS,
        History(),
    )
    assert decision.hint == "use Intune"


# (failure code, what a human should do about it)
# fmt: off
HINTS = [
    (None, "read the extension's status message in the portal or its logs on the VM"),
    (1, "internal error in the extension: retry once; if it persists, collect the extension logs and open a support case"),
    (2, "invalid arguments: the onboarding package was rejected; check mdeOnboardings"),
    (3, "insufficient privileges on the machine: check that the agent runs as root"),
    (4, "no internet connectivity: allow the MDE URLs and packages.microsoft.com through the firewall or proxy"),
    (5, "another app uses fanotify: remove or reconfigure the conflicting antimalware"),
    (10, "unsupported distribution: move to a supported one or onboard by hand"),
    (11, "unsupported OS version: upgrade to a supported version"),
    (12, "the machine lacks disk space or memory for MDE: free at least 2 GB"),
    (20, "MDE is not installed: check the package manager's logs on the machine"),
    (21, "installation failed: check the package manager's logs on the machine"),
    (23, "a dependency failed to install: check the package repositories"),
    (24, "the package repository could not be set up: allow packages.microsoft.com"),
    (30, "the onboarding blob was not found: check the mdeOnboardings package"),
    (31, "onboarding failed: check connectivity to the MDE service URLs"),
    (51, "this Windows edition cannot be onboarded through the extension: use Intune or Group Policy"),
    (52, "no Python interpreter on the machine: install python3, then let the sweep retry"),
    (999, "unknown extension error code 999: read its logs"),
    (0, "unknown extension error code 0: read its logs"),
]
# fmt: on


@pytest.mark.parametrize(("code", "hint"), HINTS, ids=[str(code) for code, _ in HINTS])
def test_each_failure_code_has_its_hint(code, hint):
    assert failure_hint(code) == hint


# (case, classification, the reason, re-checked soon)
# fmt: off
DEFERRALS = [
    ("agent not ready", vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, agent_ready=False),
     "The OS is not known yet: the guest agent is Not Ready (a new VM's agent reports within minutes).", True),
    ("in progress", vm(protection=Protection.IN_PROGRESS),
     "An MDE.Linux operation is in progress (this app's or Defender for Cloud's); it is checked again when it has had time to finish.", True),
    ("stopped, OS unknown", vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, power=Power.STOPPED, agent_ready=False),
     "The OS is not known yet and the VM is stopped; its guest agent reports the OS once it runs.", False),
    ("deallocated", vm(power=Power.DEALLOCATED),
     "The VM is deallocated; MDE.Linux is installed when it next starts.", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("classification", "reason", "recheck"),
    [row[1:] for row in DEFERRALS],
    ids=[row[0] for row in DEFERRALS],
)
def test_deferrals_say_why_and_whether_they_are_checked_again_soon(classification, reason, recheck):
    decision = decide(classification, READY, SETTINGS, History())
    assert (decision.outcome, decision.reason, decision.recheck) == (Outcome.DEFER, reason, recheck)


UNKNOWN_OS = vm("unknown", OsFamily.UNKNOWN, Support.UNKNOWN, support_note="check the agent")
FAILED_TWICE = History(reinstalls=2)
NO_CODE = "read the extension's status message in the portal or its logs on the VM"
CODE_4 = (
    "no internet connectivity: allow the MDE URLs and packages.microsoft.com through the "
    "firewall or proxy"
)
SET_PLAN = (
    "set REMEDIATION_ALLOW_PLAN_CHANGE=true, or make the change yourself in Defender for Cloud"
)

# Every rule's words: (case, classification, posture, settings, history, outcome, reason, hint)
# fmt: off
WORDS = [
    ("opted out", vm(opt_out="tag x=true"), READY, SETTINGS, History(), Outcome.EXCLUDE,
     "The VM is opted out (tag x=true).", ""),
    ("managed", vm(managed="an AKS node"), READY, SETTINGS, History(), Outcome.EXCLUDE,
     "Not ours to touch: an AKS node.", ""),
    ("unsupported", windows("windows-client", Support.UNSUPPORTED, support_note="use Intune"), READY, SETTINGS, History(), Outcome.UNSUPPORTED,
     "windows-client cannot be onboarded through the MDE extension.", "use Intune"),
    ("unknown os, running", UNKNOWN_OS, READY, SETTINGS, History(), Outcome.UNSUPPORTED,
     "The OS of this VM cannot be identified (unknown).", "check the agent"),
    ("unknown os comes before blocked", UNKNOWN_OS, NO_PLAN, SETTINGS, History(), Outcome.UNSUPPORTED,
     "The OS of this VM cannot be identified (unknown).", "check the agent"),
    ("unknown os, agent not ready", dataclasses.replace(UNKNOWN_OS, agent_ready=False), READY, SETTINGS, History(), Outcome.DEFER,
     "The OS is not known yet: the guest agent is Not Ready (a new VM's agent reports within minutes).", ""),
    ("unknown os, stopped", dataclasses.replace(UNKNOWN_OS, power=Power.STOPPED), READY, SETTINGS, History(), Outcome.DEFER,
     "The OS is not known yet and the VM is stopped; its guest agent reports the OS once it runs.", ""),
    ("unknown os while deallocated comes before blocked", dataclasses.replace(UNKNOWN_OS, power=Power.DEALLOCATED), NO_PLAN, SETTINGS, History(), Outcome.DEFER,
     "The OS is not known yet and the VM is deallocated; its guest agent reports the OS once it runs.", ""),
    ("blocked on the plan", vm(), NO_PLAN, SETTINGS, History(), Outcome.BLOCKED,
     f"Subscription {SUB} needs enable-plan:P1, which settings do not allow.", SET_PLAN),
    ("blocked on everything", vm(), BARE, NO_INTEGRATION, History(), Outcome.BLOCKED,
     f"Subscription {SUB} needs enable-plan:P1, enable-setting:WDATP, "
     "include-linux:WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW, which settings do not allow.",
     "set REMEDIATION_ALLOW_PLAN_CHANGE=true and REMEDIATION_ENABLE_INTEGRATION=true, "
     "or make the change yourself in Defender for Cloud"),
    ("blocked comes before not running", vm(power=Power.DEALLOCATED), NO_PLAN, SETTINGS, History(), Outcome.BLOCKED,
     f"Subscription {SUB} needs enable-plan:P1, which settings do not allow.", SET_PLAN),
    ("compliant", vm(protection=Protection.SUCCEEDED), READY, SETTINGS, History(), Outcome.COMPLIANT,
     "MDE.Linux is Succeeded and Defender for Servers with MDE integration is on.", ""),
    ("covered, subscription lacks two things", vm(protection=Protection.SUCCEEDED), BARE, PLAN_ALLOWED, History(), Outcome.INSTALL,
     "MDE.Linux is installed but the subscription lacks enable-plan:P2, enable-setting:WDATP.", ""),
    ("in progress", vm(protection=Protection.IN_PROGRESS), READY, SETTINGS, History(), Outcome.DEFER,
     "An MDE.Linux operation is in progress (this app's or Defender for Cloud's); "
     "it is checked again when it has had time to finish.", ""),
    ("failed too often, with a code", vm(protection=Protection.FAILED, failure_code=4), READY, SETTINGS, FAILED_TWICE, Outcome.ERROR,
     "MDE.Linux is Failed with code 4 after 2 reinstalls.", CODE_4),
    ("failed too often, no code", vm(protection=Protection.FAILED), READY, SETTINGS, FAILED_TWICE, Outcome.ERROR,
     "MDE.Linux is Failed after 2 reinstalls.", NO_CODE),
    ("failed too often comes before not running", vm(protection=Protection.FAILED, power=Power.DEALLOCATED), READY, SETTINGS, FAILED_TWICE, Outcome.ERROR,
     "MDE.Linux is Failed after 2 reinstalls.", NO_CODE),
    ("edition refused (51)", windows(protection=Protection.FAILED, failure_code=51), READY, SETTINGS, FAILED_TWICE, Outcome.ERROR,
     "MDE.Windows is Failed with code 51 after 2 reinstalls.",
     "this Windows edition cannot be onboarded through the extension: use Intune or Group Policy"),
    ("deallocated", vm(power=Power.DEALLOCATED), READY, SETTINGS, History(), Outcome.DEFER,
     "The VM is deallocated; MDE.Linux is installed when it next starts.", ""),
    ("absent", vm(), READY, SETTINGS, History(), Outcome.INSTALL,
     "MDE.Linux is absent on ubuntu-22.04.", ""),
    ("absent, whatever the reinstall history", vm(), READY, SETTINGS, History(reinstalls=5), Outcome.INSTALL,
     "MDE.Linux is absent on ubuntu-22.04.", ""),
    ("failed, with a code", vm(protection=Protection.FAILED, failure_code=31), READY, SETTINGS, History(), Outcome.INSTALL,
     "MDE.Linux is Failed (code 31) on ubuntu-22.04.", ""),
    ("failed, no code", vm(protection=Protection.FAILED), READY, SETTINGS, History(reinstalls=1), Outcome.INSTALL,
     "MDE.Linux is Failed on ubuntu-22.04.", ""),
    ("absent, other extensions failed", vm(failed_extensions=("CustomScript", "OmsAgentForLinux")), READY, SETTINGS, History(), Outcome.BLOCKED,
     "MDE.Linux cannot be installed: Compute refuses new extensions while "
     "CustomScript, OmsAgentForLinux is Failed on the VM.",
     "repair or remove CustomScript, OmsAgentForLinux on the VM; the next sweep installs MDE.Linux then"),
]
# fmt: on


@pytest.mark.parametrize(
    ("classification", "posture", "settings", "history", "outcome", "reason", "hint"),
    [row[1:] for row in WORDS],
    ids=[row[0] for row in WORDS],
)
def test_every_rule_says_what_it_decided_and_why(
    classification, posture, settings, history, outcome, reason, hint
):
    decision = decide(classification, posture, settings, history)
    assert (decision.outcome, decision.reason, decision.hint) == (outcome, reason, hint)


# --- Verification: what Defender for Endpoint sees of a Succeeded extension --------------
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SUCCEEDED = vm(protection=Protection.SUCCEEDED)


def device(health="Active", onboarding="Onboarded", name="vm1.contoso.com"):
    return Device("a" * 40, name, health, onboarding, "2026-11-29T10:00:00Z")


def check(classification=SUCCEEDED, found=None, *, checked="", since=None, grace=24):
    return verify(classification, found, checked=checked, since=since, now=NOW, grace_hours=grace)


@pytest.mark.parametrize(
    "protection", [Protection.ABSENT, Protection.FAILED, Protection.IN_PROGRESS]
)
def test_only_a_succeeded_extension_is_verified(protection):
    assert check(vm(protection=protection), device()) is None
    assert check(vm(protection=protection), None, checked="off") is None


# (case, device, since, grace, value, words in the reason, words in the hint)
# fmt: off
VERIFY_TABLE = [
    ("onboarded and active", device(), None, 24, Verification.VERIFIED, ["vm1.contoso.com", "onboarded and Active"], []),
    ("case of the states", device("active", "onboarded"), None, 24, Verification.VERIFIED, ["onboarded and Active"], []),
    ("no name: the device id", device(name=""), None, 24, Verification.VERIFIED, ["a" * 40], []),
    ("inactive", device("Inactive"), None, 24, Verification.UNHEALTHY, ["health Inactive", "onboarding status Onboarded"], ["stopped reporting", "mdatp health"]),
    ("impaired", device("ImpairedCommunication"), None, 24, Verification.UNHEALTHY, ["ImpairedCommunication"], ["service URLs"]),
    ("no sensor data", device("NoSensorData"), None, 24, Verification.UNHEALTHY, ["NoSensorData"], ["offboarded"]),
    ("both", device("NoSensorDataImpairedCommunication"), None, 24, Verification.UNHEALTHY, ["NoSensorDataImpairedCommunication"], ["no data and no connection"]),
    ("unknown health", device(""), None, 24, Verification.UNHEALTHY, ["health Unknown"], ["Defender portal"]),
    ("active, not onboarded", device("Active", "CanBeOnboarded"), None, 24, Verification.UNHEALTHY, ["onboarding status CanBeOnboarded"], ["onboarding status is CanBeOnboarded"]),
    ("active, no onboarding status", device("Active", ""), None, 24, Verification.UNHEALTHY, ["onboarding status Unknown"], ["onboarding status is Unknown"]),
    ("not seen, first sweep", None, None, 24, Verification.PENDING, ["since 2026-11-29 12:00 UTC", "24 h"], []),
    ("not seen, within grace", None, NOW - timedelta(hours=23), 24, Verification.PENDING, ["since 2026-11-28 13:00 UTC", "REMEDIATION_VERIFY_GRACE_HOURS) to list the device."], []),
    ("not seen, exactly at grace", None, NOW - timedelta(hours=24), 24, Verification.PENDING, ["since 2026-11-28 12:00 UTC", "24 h"], []),
    ("not seen, past grace", None, NOW - timedelta(hours=25), 24, Verification.NOT_SEEN, ["since 2026-11-28 11:00 UTC", "24 h grace", "lists no device for this VM."], ["onboarding package", "mdatp health", "proxy"]),
    ("not seen, seconds past grace", None, NOW - timedelta(hours=24, seconds=10), 24, Verification.NOT_SEEN, ["since 2026-11-28 11:59 UTC", "24 h grace"], ["onboarding package"]),
    ("not seen, short grace", None, NOW - timedelta(hours=2), 1, Verification.NOT_SEEN, ["since 2026-11-29 10:00 UTC", "1 h grace"], ["onboarding package"]),
    ("since in the future", None, NOW + timedelta(hours=5), 1, Verification.PENDING, ["since 2026-11-29 12:00 UTC"], []),
]
# fmt: on


@pytest.mark.parametrize(
    ("case", "found", "since", "grace", "value", "reason", "hint"),
    VERIFY_TABLE,
    ids=[row[0] for row in VERIFY_TABLE],
)
def test_verification(case, found, since, grace, value, reason, hint):
    result = check(SUCCEEDED, found, since=since, grace=grace)
    assert result.value is value
    assert all(words in result.reason for words in reason), result.reason
    assert all(words in result.hint for words in hint), result.hint
    if not hint:
        assert result.hint == ""


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"power": Power.DEALLOCATED}, "The VM is deallocated: Defender for Endpoint hears"),
        ({"power": Power.STOPPED}, "The VM is stopped"),
        ({"opt_out": "tag x=true"}, "Not verified: tag x=true (excluded)."),
        ({"managed": "in an AKS node resource group"}, "in an AKS node resource group (excluded)"),
    ],
)
def test_a_stopped_or_excluded_vm_is_unchecked_whatever_the_device(changes, words):
    for found in (None, device(), device("Inactive")):
        result = check(
            vm(protection=Protection.SUCCEEDED, **changes), found, since=NOW - timedelta(days=9)
        )
        assert result.value is Verification.UNCHECKED
        assert words in result.reason
        assert result.hint == ""


def test_verification_off_or_unreadable_is_unchecked_whatever_the_device():
    for found in (None, device(), device("Inactive")):
        result = check(SUCCEEDED, found, checked="the list could not be read: 403")
        assert (result.value, result.reason, result.hint) == (
            Verification.UNCHECKED,
            "the list could not be read: 403",
            "",
        )
