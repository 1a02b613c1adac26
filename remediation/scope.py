"""The subscriptions in scope, with the names people know them by.

Listed subscriptions (REMEDIATION_SUBSCRIPTIONS) are always in scope; so is every enabled
subscription under a listed management group (REMEDIATION_MANAGEMENT_GROUPS). Every sweep
resolves the scope afresh through Resource Graph's ``resourcecontainers`` (display names
and management-group chains), says in the remediation log which subscriptions joined or
left, and keeps it in the audit table (partition ``scope``, a row per subscription) for the
event path and the other workers, which cache it for five minutes. Before the first sweep,
a worker resolves the groups for itself and stores nothing.

A subscription that joins through a group needs its Event Grid wiring: the app's role
only reads Event Grid, so the sweep checks the wiring (the doctor's check) and the report
lists a subscription that is not wired as "not receiving events", with the command that
wires it. The nightly sweep covers it meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError

from remediation.audit import AuditRecord
from remediation.config import Settings
from remediation.model import SCOPE_CHANGE, RemediationError, as_text
from remediation.tables import SCOPE_PARTITION, transactions

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("remediation")

# Subscription states (resourcecontainers properties.state): a Disabled subscription
# refuses writes and a Deleted one everything (Azure's subscription-states docs).
INACTIVE_STATES = frozenset({"disabled", "deleted"})
# How to wire subscriptions (comma-separated) from the deployment's azd environment.
WIRE_COMMAND = (
    'eval "$(azd env get-values)" && .venv-hooks/bin/python infra/hooks/wire_events.py '
    "--subscriptions {subscription}"
)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str  # lower-case
    name: str = ""  # display name, "" until Resource Graph has told it
    group: str = ""  # the listed management group it is in scope through; "" when listed
    group_name: str = ""


@dataclass(frozen=True)
class Scope:
    subscriptions: Mapping[str, Subscription] = field(default_factory=dict)  # by id
    resolved: datetime | None = None  # when Resource Graph last answered
    unwired: frozenset[str] = frozenset()  # in scope through a group, receiving no events

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.subscriptions)

    def __contains__(self, subscription: object) -> bool:
        return isinstance(subscription, str) and subscription.lower() in self.subscriptions

    def name(self, subscription: str) -> str:
        found = self.subscriptions.get(subscription.lower())
        return found.name if found else ""

    def label(self, subscription: str) -> str:
        """ "Contoso Prod (1111...)", or the bare id while the name is unknown."""
        name = self.name(subscription)
        return f"{name} ({subscription})" if name else subscription

    def group_of(self, subscription: str) -> tuple[str, str]:
        """(management group id, its display name), or ("", "") for a listed one."""
        found = self.subscriptions.get(subscription.lower())
        return (found.group, found.group_name) if found else ("", "")


# --- Pure: settings + what Resource Graph lists -> the scope ----------------------------
def listed(settings: Settings) -> Scope:
    """The listed subscriptions alone, names unknown: the scope before any resolution."""
    return Scope({s: Subscription(s) for s in sorted(settings.subscriptions)})


def resolve(settings: Settings, rows: Iterable[Mapping[str, Any]], now: datetime) -> Scope:
    """The scope from resourcecontainers rows (subscriptionId, name, state,
    managementGroups: [{name, displayName}] from the parent up)."""
    found: dict[str, Subscription] = {}
    for row in rows:
        sid = as_text(row.get("subscriptionId")).lower()
        if not sid:
            continue
        name = as_text(row.get("name"))
        if sid in settings.subscriptions:
            found[sid] = Subscription(sid, name)
            continue
        if as_text(row.get("state")).lower() in INACTIVE_STATES:
            continue
        chain = row.get("managementGroups")
        for group in chain if isinstance(chain, list) else []:
            group_id = as_text(group.get("name") if isinstance(group, Mapping) else "").lower()
            if group_id in settings.management_groups:
                group_name = as_text(group.get("displayName")) or group_id
                found[sid] = Subscription(sid, name, group_id, group_name)
                break
    for sid in settings.subscriptions - found.keys():  # listed, but not (yet) visible
        found[sid] = Subscription(sid)
    return Scope(dict(sorted(found.items())), now)


def reconcile(stored: Scope, settings: Settings) -> Scope:
    """The stored scope under today's settings (they may have changed since it was
    resolved): listed subscriptions are in; group ones only while their group is listed."""
    kept = {
        sid: sub
        for sid, sub in stored.subscriptions.items()
        if (sub.group and sub.group in settings.management_groups) or sid in settings.subscriptions
    }
    for sid in settings.subscriptions:
        sub = kept.get(sid) or Subscription(sid)  # a listed one in the store is kept
        kept[sid] = replace(sub, group="", group_name="")
    return Scope(dict(sorted(kept.items())), stored.resolved, stored.unwired & kept.keys())


def changes(before: Scope, after: Scope) -> tuple[list[Subscription], list[Subscription]]:
    """(joined, left), each sorted by id."""
    joined = [after.subscriptions[s] for s in sorted(after.ids - before.ids)]
    left = [before.subscriptions[s] for s in sorted(before.ids - after.ids)]
    return joined, left


def joined_record(sub: Subscription, run_id: str, settings: Settings) -> AuditRecord:
    how = f"management group {sub.group_name} ({sub.group})" if sub.group else "the settings"
    return AuditRecord(
        vm="",
        subscription=sub.id,
        subscription_name=sub.name,
        trigger="sweep",
        decision=SCOPE_CHANGE,
        reason=f"Subscription {sub.name or sub.id} joined the scope through {how}: "
        "sweeps cover it from now on.",
        mode=settings.mode.value,
        outcome="joined",
        run_id=run_id,
    )


def left_record(sub: Subscription, run_id: str, settings: Settings) -> AuditRecord:
    where = (
        f"is no longer under {', '.join(sorted(settings.management_groups))}"
        if settings.management_groups
        else "is no longer listed"
    )
    return AuditRecord(
        vm="",
        subscription=sub.id,
        subscription_name=sub.name,
        trigger="sweep",
        decision=SCOPE_CHANGE,
        reason=f"Subscription {sub.name or sub.id} left the scope (it {where}, or is "
        "disabled): nothing in it is remediated any more.",
        mode=settings.mode.value,
        outcome="left",
        run_id=run_id,
        hint="its Event Grid wiring still delivers events, which are now ignored: remove "
        "the event subscription if the subscription left for good",
    )


@dataclass(frozen=True)
class Resolution:
    """What a sweep found when it started: the scope, the stored one it replaces (None
    before the first), and whether it is new (resolved now) or the stored one standing."""

    scope: Scope
    stored: Scope | None
    fresh: bool

    def records(self, run_id: str, settings: Settings) -> list[AuditRecord]:
        """A record per subscription that joined or left since the stored scope."""
        if not self.fresh or self.stored is None:
            return []  # nothing new, or nothing to compare with
        joined, left = changes(self.stored, self.scope)
        return [joined_record(s, run_id, settings) for s in joined] + [
            left_record(s, run_id, settings) for s in left
        ]


def refresh(
    settings: Settings,
    stored: Scope | None,
    containers: Callable[[], list[dict[str, Any]]],
    wired: Callable[[str], bool],
) -> Resolution:
    """Resolve the scope and check the wiring of the group subscriptions that are new
    (and of those still unwired). Writes nothing: the sweep stores it once its run holds
    its subscriptions. If Resource Graph does not answer, the stored scope stands (with
    none stored, the listed subscriptions alone; with groups set, the error is raised).
    An answer that lists no subscription under the groups while some were there is taken
    for a lost Reader role, not for every subscription leaving: the stored scope stands."""
    before = reconcile(stored, settings) if stored else listed(settings)
    try:
        after = resolve(settings, containers(), datetime.now(UTC))
    except RemediationError as error:
        if stored is None and settings.management_groups:
            raise
        log.warning("the scope could not be resolved (%s): the last known scope stands", error)
        return Resolution(before, stored, fresh=False)
    had_groups = any(sub.group for sub in before.subscriptions.values())
    if had_groups and not any(sub.group for sub in after.subscriptions.values()):
        log.warning(
            "Resource Graph listed no subscription under %s: the last known scope stands "
            "(check the app's Reader role at each group)",
            ", ".join(sorted(settings.management_groups)),
        )
        return Resolution(before, stored, fresh=False)
    new = after.ids - (stored.ids if stored else frozenset())
    to_check = {sid for sid in new if after.subscriptions[sid].group} | (before.unwired & after.ids)
    unwired = set()
    for sid in sorted(to_check):
        try:
            if not wired(sid):
                unwired.add(sid)
        except RemediationError as error:  # cannot tell: say so rather than hide it
            log.warning("subscription %s: its Event Grid wiring could not be read: %s", sid, error)
            unwired.add(sid)
    return Resolution(replace(after, unwired=frozenset(unwired)), stored, fresh=True)


# --- The scope's copy in the audit table: a row per subscription (a long scope outgrows one
# entity), then the time of the resolution -------------------------------------------------
META_ROW = "~resolved"  # sorts after every subscription id


class ScopeStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def load(self) -> Scope | None:
        """The last resolution a sweep stored, or None before the first (or if the table
        does not exist yet: a read-only caller creates nothing)."""
        rows = {}
        try:
            for entity in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": SCOPE_PARTITION}
            ):
                rows[str(entity["RowKey"])] = entity
        except ResourceNotFoundError:
            return None
        meta = rows.pop(META_ROW, None)
        if meta is None:
            return None
        subscriptions = {
            key: Subscription(
                key,
                str(row.get("name") or ""),
                str(row.get("group") or ""),
                str(row.get("group_name") or ""),
            )
            for key, row in sorted(rows.items())
        }
        unwired = frozenset(key for key, row in rows.items() if row.get("unwired"))
        return Scope(subscriptions, meta.get("resolved"), unwired)

    def save(self, scope: Scope, previous: Scope | None) -> None:
        """Upsert the scope's rows, delete those of subscriptions that left, then the
        resolution's time (last: a load never sees a half-written scope as complete)."""
        operations: list[tuple[str, dict[str, Any]]] = [
            (
                "upsert",
                {
                    "PartitionKey": SCOPE_PARTITION,
                    "RowKey": sub.id,
                    "name": sub.name,
                    "group": sub.group,
                    "group_name": sub.group_name,
                    "unwired": sub.id in scope.unwired,
                },
            )
            for sub in scope.subscriptions.values()
        ]
        gone = (previous.ids if previous else frozenset()) - scope.ids
        operations += [
            ("delete", {"PartitionKey": SCOPE_PARTITION, "RowKey": sid}) for sid in sorted(gone)
        ]
        transactions(self._table, operations)
        self._table.upsert_entity(
            {"PartitionKey": SCOPE_PARTITION, "RowKey": META_ROW, "resolved": scope.resolved}
        )
