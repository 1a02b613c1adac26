"""What ops ask of the remediation log, over HTTP and the command line: the log itself
(filtered, newest first, paged) and the coverage report."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from remediation.audit import AuditLog, AuditRecord, Night, Query
from remediation.classify import FINDINGS
from remediation.config import GUID, Settings
from remediation.model import (
    SCOPE_CHANGE,
    UNDECIDED,
    InvalidResourceId,
    Outcome,
    Verification,
    VmRef,
)
from remediation.service import Services

DECISIONS = frozenset({outcome.value for outcome in Outcome} | {"ignored", SCOPE_CHANGE, UNDECIDED})
FILTERS = frozenset(
    {
        "vm",
        "subscription",
        "decision",
        "verification",
        "finding",
        "since",
        "until",
        "limit",
        "continuation",
    }
)
VERIFICATIONS = frozenset(value.value for value in Verification)
# Azure Functions takes a function key as ?code=...; the host checks it, and the worker
# still sees it among the parameters: it is no unknown parameter.
FUNCTION_KEY = frozenset({"code"})
MAX_LIMIT = 1000
# ASCII digits only (\d also takes '٣'); any count of them: a huge one means "as far
# back as possible", which parse_query clamps to the retention period.
_RELATIVE = re.compile(r"([0-9]+)([mhd])\Z")
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)
# A machine name as model.MACHINE_ID reads it: 1-64 letters, digits, '_', '.', '-'.
_VM_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?\Z")


class InvalidQuery(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def moment(text: str, now: datetime) -> datetime:
    """'24h', '7d', '30m' before now, or an ISO 8601 time (UTC when it names no zone),
    in UTC. A time before year 1 (``99999999d``) is EARLIEST, never an OverflowError."""
    match = _RELATIVE.match(text)
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match[2]]
        if len(match[1]) > 12:  # more minutes than there are since year 1
            return EARLIEST
        try:
            return now - timedelta(**{unit: int(match[1])})
        except OverflowError:
            return EARLIEST
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text[:40]!r} (use 24h, 7d or an ISO 8601 time)") from None
    if not value.tzinfo:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        return EARLIEST if value.year == 1 else LATEST


def parse_query(  # noqa: PLR0915 - one check a filter
    params: Mapping[str, str],
    settings: Settings,
    now: datetime | None = None,
    *,
    scope: frozenset[str],
) -> Query:
    """Strictly: unknown filters, bad values and anything outside the scope (the
    subscriptions in it) are refused, every problem listed."""
    now = now or datetime.now(UTC)
    unknown = sorted(set(params) - FILTERS - FUNCTION_KEY)
    problems = [f"unknown filter {name[:40]!r}" for name in unknown]
    values: dict[str, Any] = {"since": now - timedelta(hours=24), "until": now}
    for name in ("since", "until"):
        if params.get(name):
            try:
                values[name] = moment(params[name], now)
            except ValueError as error:
                problems.append(f"{name}: {error}")
    notes: list[str] = []
    if values["since"] > values["until"]:
        if params.get("until"):
            problems.append("since is after until")
        else:  # the reader set no until: say what it was
            problems.append(
                f"since ({values['since']:%Y-%m-%d %H:%M} UTC) is in the future: until "
                f"defaults to now ({now:%Y-%m-%d %H:%M} UTC)"
            )
    else:
        # Nothing older is kept, and a wider window would only cost reading.
        days = settings.audit_retention_days
        earliest = now - timedelta(days=days)
        if values["until"] < earliest:
            problems.append(
                f"until: before the retention period of {days} days "
                "(REMEDIATION_AUDIT_RETENTION_DAYS): nothing that old is kept"
            )
        elif values["since"] < earliest:
            values["since"] = earliest
            notes.append(f"since clamped to the retention period of {days} days")
    if params.get("vm"):
        try:
            vm = VmRef.parse(params["vm"])
            if vm.subscription not in scope:
                problems.append("vm: its subscription is not in scope")
            values["vm"] = vm.id
        except InvalidResourceId:
            problems.append("vm: not a VM or Arc machine resource id")
    subscription = params.get("subscription", "")
    if subscription:
        if not GUID.match(subscription):
            problems.append("subscription: not a subscription id")
        elif subscription.lower() not in scope:
            problems.append("subscription: not in scope")
        values["subscription"] = subscription.lower()
    decision = params.get("decision", "")
    if decision:
        if decision not in DECISIONS:
            problems.append(f"decision: one of {', '.join(sorted(DECISIONS))}")
        values["decision"] = decision
    verification = params.get("verification", "")
    if verification:
        if verification not in VERIFICATIONS:
            problems.append(f"verification: one of {', '.join(sorted(VERIFICATIONS))}")
        values["verification"] = verification
    finding = params.get("finding", "")
    if finding:
        if finding not in FINDINGS:
            problems.append(f"finding: one of {', '.join(FINDINGS)}")
        values["finding"] = finding
    limit = params.get("limit", "100")
    # ASCII digits only: str.isdigit() also takes '²', which int() refuses.
    if not re.fullmatch(r"[0-9]{1,6}", limit) or not 1 <= int(limit) <= MAX_LIMIT:
        problems.append(f"limit: a whole number from 1 to {MAX_LIMIT}")
    else:
        values["limit"] = int(limit)
    values["continuation"] = params.get("continuation", "")[:500]
    if problems:
        raise InvalidQuery(problems)
    return Query(**values, notes=tuple(notes))


def resolve_vm(audit: AuditLog, name: str, query: Query, scope: frozenset[str]) -> list[str]:
    """The full ids of the VMs named ``name`` (any case) in the log over the query's
    window (and subscription, if it names one), newest first, in scope only; if the
    window has no row of that name (a machine unchanged for long writes none), the
    machines the sweeps know now (the baselines). One id: the VM meant; several: ask
    which; none: not known. Raises InvalidQuery for what is not a VM name."""
    if not _VM_NAME.match(name):
        raise InvalidQuery(["vm: not a virtual machine name or resource id"])

    def in_scope(vm: str) -> bool:
        try:
            return VmRef.parse(vm).subscription in scope
        except InvalidResourceId:
            return False

    found = audit.vms_named(name, query.since, query.until, query.subscription, keep=in_scope)
    if found:
        return found
    wanted = name.lower()
    for subscription in [query.subscription] if query.subscription else sorted(scope):
        for key, state in audit.baselines.read(subscription).items():
            if key.rsplit("/", 1)[-1] == wanted:
                found.append(state.vm)
        if len(found) > 1:
            break
    return found


def search(services: Services, query: Query) -> tuple[list[AuditRecord], str]:
    """The log's answer to a query. A window: its rows (changes and actions). A VM: its
    rows, and for each sweep that assessed its subscription completely and wrote no row
    for it, its state then read back (``audit.nights``): one record a night, as before
    the log wrote only changes."""
    if not query.vm:
        return services.audit.search(query)
    subscription = VmRef.parse(query.vm).subscription
    runs = services.runs.runs_since(
        datetime.now(UTC) - timedelta(days=services.settings.audit_retention_days)
    )
    complete = [
        Night(run.run_id, run.started, run.trigger) for run in runs if subscription in run.assessed
    ]
    baseline = services.audit.baselines.read(subscription).get(query.vm.lower())
    return services.audit.search(query, complete, baseline)


def http_remediations(services: Services, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """GET /api/remediations: the log, newest first, filtered and paged."""
    try:
        query = parse_query(params, services.settings, scope=services.scope().ids)
        records, token = search(services, query)
    except InvalidQuery as error:
        return 400, {"errors": error.problems}
    except ValueError as error:  # a forged or stale continuation token
        return 400, {"errors": [str(error)]}
    scope = services.scope()
    scoped = [r for r in records if not r.subscription or r.subscription in scope]
    # continuation: non-null exactly when more records match than this page holds.
    return 200, {
        "records": [r.to_json() for r in scoped],
        "continuation": token or None,
        "notes": list(query.notes),
    }
