"""Can the deployed app do its job? One row per check, for the storage it uses and for
each subscription in scope: its effective permissions against what the settings need,
its Event Grid wiring to this app's ``on_vm_event``, and its onboarding packages. Reads
only; every failed row says what to do. ``python -m remediation doctor`` and
``GET /api/health`` run it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

from remediation.classify import MDE_LINUX, MDE_WINDOWS
from remediation.config import Settings
from remediation.model import RemediationError
from remediation.service import Services, subscription_hint

# What every deployment needs, whatever its settings (infra/access.bicep grants them).
ALWAYS = {
    "Microsoft.Compute/virtualMachines/read": "reading VMs",
    "Microsoft.Compute/virtualMachines/extensions/read": "reading extensions",
    "Microsoft.Compute/virtualMachines/extensions/write": "installing MDE",
    "Microsoft.Compute/locations/operations/read": "following installs",
    "Microsoft.HybridCompute/machines/read": "reading Arc machines",
    "Microsoft.HybridCompute/machines/extensions/read": "reading Arc extensions",
    "Microsoft.HybridCompute/machines/extensions/write": "installing MDE on Arc machines",
    "Microsoft.ResourceGraph/resources/read": "the sweep's inventory",
    "Microsoft.Resources/subscriptions/read": "the subscriptions' names and groups",
    "Microsoft.Security/pricings/read": "reading the Defender plan",
    "Microsoft.Security/settings/read": "reading the MDE integration",
    "Microsoft.Security/mdeOnboardings/read": "reading the onboarding packages",
}


@dataclass(frozen=True)
class Check:
    scope: str  # "storage" or a subscription id
    check: str
    ok: bool
    detail: str  # what was found
    fix: str = ""  # the command or setting that fixes it, when not ok

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def needed(settings: Settings, subscription: str) -> dict[str, str]:
    """Action -> why, for what these settings let the app do in this subscription."""
    actions = dict(ALWAYS)
    if settings.enable_integration:
        actions["Microsoft.Security/settings/write"] = "REMEDIATION_ENABLE_INTEGRATION=true"
    if settings.plan_change_allowed(subscription):
        actions["Microsoft.Security/pricings/write"] = "REMEDIATION_ALLOW_PLAN_CHANGE"
    return actions


def allowed(action: str, grants: Iterable[tuple[list[str], list[str]]]) -> bool:
    """ARM's rule: some assignment's actions cover it and that assignment's notActions
    do not (wildcards, any case)."""

    def covers(patterns: list[str]) -> bool:
        return any(fnmatchcase(action.lower(), pattern.lower()) for pattern in patterns)

    return any(covers(actions) and not covers(not_actions) for actions, not_actions in grants)


def run(services: Services) -> list[Check]:
    checks = [_storage(services)]
    for subscription in sorted(services.scope().ids):
        for name, check in (
            ("permissions", _permissions),
            ("events", events_check),
            ("onboarding", _onboarding),
        ):
            try:
                checks.append(check(services, subscription))
            except RemediationError as error:
                fix = subscription_hint(error) if name == "permissions" else error.hint
                checks.append(Check(subscription, name, False, str(error), fix or "see the detail"))
    return checks


def _storage(services: Services) -> Check:
    try:
        next(
            iter(services.audit.table.query_entities("PartitionKey eq 'none'", results_per_page=1)),
            None,
        )
        for queue in (services.queue, services.sweeps):
            queue.queue.get_queue_properties()
            queue.poison.get_queue_properties()
    except Exception as error:  # any storage failure is the finding itself
        return Check(
            "storage",
            "queues and table",
            False,
            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}",
            "check AzureWebJobsStorage and the identity's Storage Queue Data Contributor and "
            "Storage Table Data Contributor roles",
        )
    return Check(
        "storage", "queues and table", True, "the install and sweep queues and the log table answer"
    )


def _permissions(services: Services, subscription: str) -> Check:
    grants = services.arm.permissions(subscription)
    missing = {
        action: why
        for action, why in needed(services.settings, subscription).items()
        if not allowed(action, grants)
    }
    if not missing:
        return Check(subscription, "permissions", True, "every action the settings need is granted")
    detail = "missing " + ", ".join(f"{action} ({why})" for action, why in sorted(missing.items()))
    return Check(
        subscription,
        "permissions",
        False,
        detail,
        "run `azd provision` (infra/access.bicep grants them; for a subscription under "
        "REMEDIATION_MANAGEMENT_GROUPS, deploy infra/access-mg.bicep at its group), or turn "
        "the setting off",
    )


def events_check(services: Services, subscription: str) -> Check:
    """Event Grid delivers the subscription's VM events to this app's event queue: a
    StorageQueue destination naming REMEDIATION_EVENT_QUEUE in the app's own storage
    account (when the doctor knows the account's name)."""
    settings = services.settings
    wiring = services.arm.event_wiring(subscription)
    fix = "run `azd hooks run postdeploy` (infra/hooks/wire_events.py)"
    if not wiring:
        return Check(
            subscription, "events", False, "no Microsoft.Resources.Subscriptions system topic", fix
        )
    account = storage_account_name(settings)
    queue = f"/queueservices/default/queues/{settings.event_queue}"
    for topic, destinations in wiring:
        for destination in destinations:
            path = destination.lower()
            if path.endswith(queue) and (
                not account or path.removesuffix(queue).endswith(f"/storageaccounts/{account}")
            ):
                where = destination.split("/queueServices/")[0].rsplit("/", 1)[-1]
                detail = (
                    f"system topic {topic.rsplit('/', 1)[-1]} delivers to queue "
                    f"{settings.event_queue} of storage account {where}"
                )
                return Check(subscription, "events", True, detail)
    target = f"queue {settings.event_queue}" + (f" of storage account {account}" if account else "")
    topics = ", ".join(topic for topic, _ in wiring)
    return Check(
        subscription, "events", False, f"{topics}: no event subscription delivers to {target}", fix
    )


def storage_account_name(settings: Settings) -> str:
    """The app's storage account: the identity-based setting's, or the connection
    string's AccountName (the emulator's is devstoreaccount1); "" if neither says."""
    if settings.storage_account:
        return settings.storage_account.lower()
    parts = dict(
        part.split("=", 1) for part in settings.storage_connection.split(";") if "=" in part
    )
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        return "devstoreaccount1"
    return parts.get("AccountName", "").lower()


def _onboarding(services: Services, subscription: str) -> Check:
    for extension in (MDE_WINDOWS, MDE_LINUX):
        services.arm.onboarding_package(subscription, extension)  # never printed
    return Check(subscription, "onboarding", True, "the Windows and Linux packages are readable")


def http_health(services: Services) -> tuple[int, dict[str, Any]]:
    """GET /api/health: 200 when every check passes, else 503; the rows either way."""
    checks = run(services)
    healthy = all(check.ok for check in checks)
    return (200 if healthy else 503), {"healthy": healthy, "checks": [c.to_json() for c in checks]}
