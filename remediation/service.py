"""The pipeline: gather facts -> decide (pure) -> apply -> audit. The imperative shell.

Every entry point (Event Grid, queue, poison queue, CLI) ends in exactly one audit
record. Two kinds of error reach the host: a TransientError from the queue handler
(the host retries, then moves the message to the poison queue), and nothing else:
permanent problems are audited with a hint and the function returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceNotFoundError

from remediation.audit import AuditLog, AuditRecord, logfmt
from remediation.classify import MDE_PUBLISHER, Classification, Protection, classify
from remediation.config import Settings
from remediation.defender import OFF, TRANSACTION, State, States
from remediation.events import Ignored, parse
from remediation.model import (
    UNAVAILABLE,
    UNDECIDED,
    ActionKind,
    BlockedByExtension,
    Decision,
    History,
    OperationInProgress,
    Outcome,
    PermanentError,
    Power,
    RemediationError,
    TransientError,
    Verification,
    Verified,
    VmFacts,
    VmNotRunning,
    VmRef,
)
from remediation.policy import decide, failure_hint, not_checkable
from remediation.queues import BadMessage, Claims, InstallRequest, WorkQueue
from remediation.scope import (
    Resolution,
    Scope,
    Subscription,
    listed,
    reconcile,
    refresh,
    resolve,
)

if TYPE_CHECKING:  # the gateway imports azure.mgmt: keep it off this module's import
    from azure.data.tables import TableClient

    from remediation.arm import ArmGateway, InstallResult
    from remediation.notify import Notifier

log = logging.getLogger("remediation")
# How long a worker trusts its copy of the scope: a subscription that joins a management
# group reaches the event path of other workers within this long after the sweep.
SCOPE_TTL_SECONDS = 300.0


@dataclass
class Services:
    """What the pipeline needs, built once per worker by bootstrap.services()."""

    settings: Settings
    arm: ArmGateway
    audit: AuditLog
    queue: WorkQueue  # install requests
    claims: Claims
    sweeps: WorkQueue  # sweep batches
    tests: WorkQueue  # test alerts: run the test, then watch for its alert
    states: States  # each VM's verification between sweeps
    notifier: Notifier | None = None
    _scope: tuple[float, Scope] | None = field(default=None, repr=False)

    def scope(self) -> Scope:
        """The subscriptions in scope with their names: the last sweep's resolution (kept
        in the audit table) under today's settings, cached per worker. Before the first
        sweep: the listed subscriptions, and those under the groups as Resource Graph
        lists them now (nothing is stored, and names come with the first sweep)."""
        now = time.monotonic()
        if self._scope is not None and now - self._scope[0] < SCOPE_TTL_SECONDS:
            return self._scope[1]
        settings = self.settings
        stored = ScopeStore(self.audit.table).load()
        if stored is not None:
            scope = reconcile(stored, settings)
        elif settings.management_groups:
            try:
                rows = self.arm.subscription_containers(settings.management_groups)
                scope = resolve(settings, rows, datetime.now(UTC))
            except RemediationError as error:
                log.warning("the management groups could not be resolved: %s", error)
                scope = listed(settings)
        else:
            scope = listed(settings)
        self._scope = (now, scope)
        return scope

    def resolve_scope(self) -> Resolution:
        """A sweep starts: the scope afresh (names, groups, wiring), against the stored
        one. Writes nothing: ``keep_scope`` stores it once the run holds its subscriptions."""
        from remediation.doctor import events_check  # noqa: PLC0415 - doctor imports this

        settings = self.settings
        return refresh(
            settings,
            ScopeStore(self.audit.table).load(),
            lambda: self.arm.subscription_containers(
                settings.management_groups, settings.subscriptions
            ),
            lambda subscription: events_check(self, subscription).ok,
        )

    def keep_scope(self, resolution: Resolution) -> None:
        if resolution.fresh:
            ScopeStore(self.audit.table).save(resolution.scope, resolution.stored)
        self._scope = (time.monotonic(), resolution.scope)


@dataclass(frozen=True)
class Assessment:
    facts: VmFacts
    vm: Classification
    decision: Decision
    verified: Verified | None = None  # for a Succeeded extension only


# --- The scope's copy in the audit table: a row per subscription (a long scope outgrows one
# entity), then the time of the resolution -------------------------------------------------
SCOPE_PARTITION = "scope"
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
        for start in range(0, len(operations), TRANSACTION):
            self._table.submit_transaction(operations[start : start + TRANSACTION])
        self._table.upsert_entity(
            {"PartitionKey": SCOPE_PARTITION, "RowKey": META_ROW, "resolved": scope.resolved}
        )


# --- Gather and decide -------------------------------------------------------------------
def assess(services: Services, facts: VmFacts, last_known: bool = True) -> Assessment:
    """Classify and decide for facts already read; reads the (cached) posture and,
    for a Failed extension only, the VM's history from the audit log. For a Succeeded
    extension, ``last_known`` adds the verification the last sweep made (one read; the
    sweep, which reads Defender for Endpoint's list, makes its own)."""
    vm = classify(facts, services.settings.exclude_tag)
    posture = services.arm.posture(facts.vm.subscription)
    history = History()
    if vm.protection is Protection.FAILED:
        history = History(reinstalls=services.audit.reinstalls_since_success(facts.vm.id))
    decision = decide(vm, posture, services.settings, history)
    verified = None
    if last_known and vm.protection is Protection.SUCCEEDED:
        verified = not_checkable(vm) or last_verification(services, facts.vm)
    return Assessment(facts, vm, decision, verified)


def last_verification(services: Services, vm: VmRef) -> Verified:
    """Between sweeps: what the last one found, or "pending" for a VM it has not seen."""
    if not services.settings.mde_api:
        return Verified(Verification.UNCHECKED, OFF)
    state = services.states.get(vm.id, vm.subscription)
    if state is None:
        return Verified(
            Verification.PENDING,
            "Defender for Endpoint's device list is checked by the next sweep.",
        )
    found, when = state.verified, state.checked or state.since
    said = f"Found by the sweep of {when:%Y-%m-%d %H:%M} UTC: {found.reason}"
    return Verified(found.value, said, found.hint)


def just_installed(services: Services, vm: VmRef) -> Verified:
    """Our install Succeeded: the grace period for Defender for Endpoint starts now."""
    if not services.settings.mde_api:
        return Verified(Verification.UNCHECKED, OFF)
    verified = Verified(
        Verification.PENDING,
        "The extension was just installed; Defender for Endpoint may take up to "
        f"{services.settings.verify_grace_hours} h to list the device.",
    )
    now = datetime.now(UTC)
    services.states.write(vm.subscription, {vm.id: State(now, verified, checked=now)})
    return verified


def verification_fields(verified: Verified | None) -> dict[str, str]:
    if verified is None:
        return {}
    return {
        "verification": verified.value.value,
        "verification_reason": verified.reason,
        "verification_hint": verified.hint,
    }


def assess_with_pricing(services: Services, facts: VmFacts) -> Assessment:
    """Before anything is written for a VM, honour its VM-level pricing opt-out (one
    more read, paid only when there is something to do)."""
    assessment = assess(services, facts)
    if assessment.decision.outcome is Outcome.INSTALL:
        priced = dataclasses.replace(facts, vm_pricing=services.arm.vm_pricing(facts.vm))
        assessment = assess(services, priced)
    return assessment


def apply_subscription_actions(services: Services, decision: Decision, subscription: str) -> None:
    for action in decision.actions:
        if action.kind is ActionKind.ENABLE_PLAN:
            services.arm.enable_plan(subscription, action.target)
        elif action.kind is ActionKind.ENABLE_SETTING:
            services.arm.set_setting(subscription, action.target, True)
        elif action.kind is ActionKind.INCLUDE_LINUX:
            services.arm.set_setting(subscription, action.target, False)


def _extension_action(decision: Decision) -> bool:
    return any(a.kind in {ActionKind.INSTALL, ActionKind.REINSTALL} for a in decision.actions)


# --- Records ---------------------------------------------------------------------------------
@dataclass
class Context:
    """Who asked about which VM, and when: what every audit record of one run shares."""

    services: Services
    trigger: str
    vm: str = ""
    subscription: str = ""
    event_id: str = ""
    correlation_id: str = ""
    run_id: str = ""
    started: float = field(default_factory=time.monotonic)
    mode: str = ""  # a sweep's own mode (report can be asked for in enforce); else the app's

    def for_vm(self, vm: VmRef) -> Context:
        return dataclasses.replace(self, vm=vm.id, subscription=vm.subscription)

    def record(
        self,
        decision: str,
        reason: str,
        outcome: str,
        assessment: Assessment | None = None,
        **extra: Any,
    ) -> AuditRecord:
        if assessment is not None:
            extra.setdefault("os", assessment.vm.os.value)
            extra.setdefault("platform", assessment.vm.platform)
            extra.setdefault("eligible_running", assessment.vm.eligible_running)
            extra.setdefault("actions", tuple(assessment.decision.action_names))
            extra.setdefault("hint", assessment.decision.hint)
            extra.setdefault("findings", assessment.vm.findings)
            for name, value in verification_fields(assessment.verified).items():
                extra.setdefault(name, value)
        if self.subscription:
            extra.setdefault("subscription_name", self.services.scope().name(self.subscription))
        return AuditRecord(
            vm=self.vm,
            subscription=self.subscription,
            trigger=self.trigger,
            decision=decision,
            reason=reason,
            mode=self.mode or self.services.settings.mode.value,
            outcome=outcome,
            event_id=self.event_id,
            correlation_id=self.correlation_id,
            run_id=self.run_id,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            **extra,
        )

    def decided(
        self, assessment: Assessment, outcome: str, reason: str = "", **extra: Any
    ) -> AuditRecord:
        decision = assessment.decision
        return self.record(
            decision.outcome.value, reason or decision.reason, outcome, assessment, **extra
        )

    def unreadable(self, error: PermanentError) -> AuditRecord:
        if error.status == 404:
            return self.record("ignored", "The VM no longer exists.", "ignored")
        reason = f"Reading the VM failed: {error}"
        return self.record("error", reason, "failed", hint=error.hint)

    def unavailable(
        self, error: TransientError, then: str, assessment: Assessment | None = None
    ) -> AuditRecord:
        """ARM or the token authority did not answer: an outage, recorded as such with the
        decision made before it (or none), never as the VM's fault."""
        decision = assessment.decision.outcome.value if assessment else UNDECIDED
        reason = f"Azure did not answer ({error}); {then}"
        hint = "nothing to do on the VM; if it lasts, check ARM's status and the app's network"
        return self.record(decision, reason, UNAVAILABLE, assessment, hint=hint)

    def install_request(self) -> InstallRequest:
        """What the install queue needs to act on this VM later; it never holds a secret."""
        return InstallRequest(
            vm=self.vm,
            trigger=self.trigger,
            event_id=self.event_id,
            correlation_id=self.correlation_id,
            run_id=self.run_id,
            requested_at=_now(),
        )


# --- Event Grid --------------------------------------------------------------------------------
def handle_event(services: Services, delivery: Any, trigger: str = "event") -> AuditRecord:
    """One Event Grid delivery -> exactly one audit record. Event Grid waits 30 s for
    the answer and then delivers again, so ARM calls give up after
    REMEDIATION_EVENT_BUDGET_SECONDS. An install that needs only the extension is
    started here (the PUT, not its wait) and the install queue watches it: the queue's
    polling would otherwise add seconds (BENCHMARKS.md). Subscription settings, and
    anything the PUT could not start, go to the install queue."""
    context = Context(services, trigger)
    settings = services.settings
    with services.arm.budget(settings.event_budget_seconds):
        try:
            parsed = parse(delivery, services.scope().ids, services.arm.principal_id)
        except TransientError as error:
            record = context.unavailable(error, "the next event or sweep checks this VM again.")
            return services.audit.write(record)
        except RemediationError as error:  # cannot learn our own identity: say so, do nothing
            reason = f"The app cannot tell its own identity: {error}"
            return services.audit.write(context.record("error", reason, "failed", hint=error.hint))
        if isinstance(parsed, Ignored):
            context = dataclasses.replace(
                context,
                vm=parsed.subject,
                subscription=parsed.subscription,
                event_id=parsed.event_id,
            )
            return services.audit.write(context.record("ignored", parsed.reason, "ignored"))
        context = dataclasses.replace(
            context.for_vm(parsed.vm),
            event_id=parsed.event_id,
            correlation_id=parsed.correlation_id,
        )
        return services.audit.write(remediate(context, parsed.vm))


def remediate(context: Context, vm: VmRef) -> AuditRecord:
    """Re-read the VM and decide; in enforce mode, queue what is to be done (an install,
    subscription settings, or a re-check soon). Shared by events and the CLI. A claim
    per VM makes a duplicate or redelivered event a no-op."""
    services = context.services
    try:
        facts = services.arm.vm_facts(vm)
        assessment = assess(services, facts)
    except PermanentError as error:
        return context.unreadable(error)
    except TransientError as error:
        return _requeue(context, error)

    decision = assessment.decision
    act = decision.outcome is Outcome.INSTALL or decision.recheck
    if not services.settings.enforce or not act:
        outcome = "reported" if decision.outcome is Outcome.INSTALL else "none"
        return context.decided(assessment, outcome)
    if not services.claims.take(vm.id, holder=uuid.uuid4().hex):
        reason = (
            f"{decision.reason} An install or check for this VM is already queued or ran recently."
        )
        return context.decided(assessment, "duplicate", reason)
    if context.trigger == "event" and _extension_only(decision):
        started = _start_install(context, assessment)
        if started is not None:
            return started
    delay = services.settings.recheck_seconds if decision.recheck else 0
    services.queue.send(context.install_request(), delay)
    return context.decided(assessment, "queued", applied=decision.outcome is Outcome.INSTALL)


def _extension_only(decision: Decision) -> bool:
    """An install with nothing to write on the subscription (no plan, no setting)."""
    return (
        decision.outcome is Outcome.INSTALL
        and not decision.recheck
        and bool(decision.actions)
        and all(a.kind in {ActionKind.INSTALL, ActionKind.REINSTALL} for a in decision.actions)
    )


def _start_install(context: Context, assessment: Assessment) -> AuditRecord | None:
    """From the event function: the VM's pricing opt-out read, the PUT issued (not
    waited for), and a delayed queue message that watches it to its end and writes the
    final record, holding the claim until then. None when the PUT did not start (ARM
    refused, throttled past the budget, the VM busy or stopped, a table read failed):
    the install queue then takes the whole install as before, with its retries and its
    answers to each case, and releases the claim."""
    services, facts = context.services, assessment.facts
    vm = facts.vm
    try:
        priced = assess(
            services, dataclasses.replace(facts, vm_pricing=services.arm.vm_pricing(vm))
        )
        if priced.decision.outcome is not Outcome.INSTALL:  # the VM's own pricing opt-out
            services.claims.finish(vm.id)
            return context.decided(priced, "skipped")
        extension = priced.vm.extension
        package = services.arm.onboarding_package(vm.subscription, extension)
        services.arm.install_extension(priced.facts, extension, package, wait=False)
    except Exception as error:  # nothing was installed: the queue's install does it all
        # Our own errors' text is safe to log; another's may quote a request: its type only.
        why = str(error) if isinstance(error, RemediationError) else type(error).__name__
        log.info(logfmt([("vm", vm.id), ("outcome", "to-queue"), ("reason", why)]))
        return None
    watch = dataclasses.replace(context.install_request(), install_started=_now())
    try:
        services.queue.send(watch, services.settings.recheck_seconds)
    except Exception as error:  # the install goes on in Azure; the claim's lease ends it
        why = type(error).__name__
        log.warning(logfmt([("vm", vm.id), ("outcome", "unwatched"), ("reason", why)]))
        hint = "the watch could not be queued; the next sweep records how the install ended"
        return context.decided(priced, "started", applied=True, hint=hint)
    return context.decided(priced, "started", applied=True)


def _requeue(context: Context, error: TransientError) -> AuditRecord:
    """ARM is throttling or failing now: in enforce mode the queue retries the whole
    check later (bounded, then poison + audit); report mode writes nothing, so it
    records the miss and leaves the VM to the next sweep."""
    services = context.services
    if services.settings.enforce and services.claims.take(context.vm, holder=uuid.uuid4().hex):
        services.queue.send(context.install_request())
        reason = f"ARM was unavailable ({error}); the install queue checks this VM again."
        return context.record(Outcome.DEFER.value, reason, "queued")
    return context.unavailable(error, "the next event or sweep checks this VM again.")


# --- The install queue -----------------------------------------------------------------------
def handle_install(services: Services, text: str, dequeue_count: int = 1) -> AuditRecord | None:
    """Re-read and re-decide (the VM may have changed or stopped), then apply and
    install. Raises TransientError for the host to retry; audits everything else.
    Returns None when the work goes on in a delayed re-check (an install still running,
    a guest agent not ready yet): that message writes the record, and the claim holds."""
    context = Context(services, "queue")
    try:
        request = InstallRequest.parse(text)
    except BadMessage as error:
        reason = f"A malformed install message was dropped: {error}."
        return services.audit.write(context.record(Outcome.ERROR.value, reason, "failed"))
    vm = VmRef.parse(request.vm)
    context = dataclasses.replace(
        context.for_vm(vm),
        event_id=request.event_id,
        correlation_id=request.correlation_id,
        run_id=request.run_id,
    )
    try:
        record = _install(context, vm, request)
    except TransientError as error:
        services.claims.note_failure(vm.id, f"try {dequeue_count}: {error}")
        raise
    if record is None:
        return None
    services.claims.finish(vm.id)
    return services.audit.write(record)


def _install(context: Context, vm: VmRef, request: InstallRequest) -> AuditRecord | None:
    services = context.services
    try:
        assessment = assess_with_pricing(services, services.arm.vm_facts(vm))
    except PermanentError as error:
        return context.unreadable(error)
    decision = assessment.decision
    if decision.recheck:  # in progress (ours or Defender for Cloud's), or agent not ready
        return _check_later(context, request, assessment)
    if request.install_started:  # a re-check of our own install
        return _install_outcome(context, request, assessment)
    if decision.outcome is not Outcome.INSTALL:
        return context.decided(
            assessment, "deferred" if decision.outcome is Outcome.DEFER else "skipped"
        )
    if not services.settings.enforce:
        return context.decided(assessment, "reported")

    extension = assessment.vm.extension
    try:
        apply_subscription_actions(services, decision, vm.subscription)
        if not _extension_action(decision):
            return context.decided(assessment, "applied", applied=True)
        package = services.arm.onboarding_package(vm.subscription, extension)
        result = services.arm.install_extension(assessment.facts, extension, package)
    except VmNotRunning:
        try:
            power = services.arm.vm_facts(vm).power
        except PermanentError as error:
            return context.unreadable(error)
        if power is Power.RUNNING:  # Compute's view lags: not "stopped", check again
            return _check_later(context, request, assessment)
        reason = f"The VM is {power}: {extension} is installed when it next starts."
        return context.decided(assessment, "deferred", reason)
    except OperationInProgress:  # another operation (Defender for Cloud's?) holds the VM
        return _check_later(context, request, assessment)
    except BlockedByExtension as error:
        return _blocked_by(context, assessment, error.extension, str(error))
    except PermanentError as error:
        if error.status == 404:  # deleted, or being deleted, meanwhile
            return context.unreadable(error)
        decided = Outcome.BLOCKED if error.status == 403 else Outcome.ERROR
        reason = f"Installing {extension} failed: {error}"
        return context.record(decided.value, reason, "failed", assessment, hint=error.hint)
    if result.state == "InProgress":
        started = dataclasses.replace(request, install_started=_now())
        return _check_later(context, started, assessment)
    if result.state == "Succeeded":
        return context.decided(
            assessment,
            "succeeded",
            applied=True,
            install_state="Succeeded",
            **verification_fields(just_installed(services, vm)),
        )
    return _failed_install(context, assessment, result)


def _failed_install(context: Context, assessment: Assessment, result: InstallResult) -> AuditRecord:
    """The operation failed. Its message has no exit code (that is in the VM's
    instance view), and it may name another extension whose Failed state blocks ours."""
    extension = assessment.vm.extension
    try:
        services = context.services
        after = classify(services.arm.vm_facts(assessment.facts.vm), services.settings.exclude_tag)
    except RemediationError:
        after = assessment.vm  # the record still says what failed, without the code
    if result.extension and not _is_mde_name(assessment, result.extension):
        return _blocked_by(context, assessment, result.extension, result.message, after)
    code = after.failure_code
    with_code = f" with code {code}" if code is not None else ""
    return context.record(
        Outcome.ERROR.value,
        f"{extension} ended Failed{with_code}: {result.message}",
        "failed",
        assessment,
        applied=True,
        install_state="Failed",
        install_code=code,
        hint=failure_hint(code),
    )


def _is_mde_name(assessment: Assessment, name: str) -> bool:
    mde = {
        ext.name.lower()
        for ext in assessment.facts.extensions
        if ext.publisher.lower() == MDE_PUBLISHER.lower()
    }
    return name.lower() in mde | {assessment.vm.extension.lower()}


def _blocked_by(
    context: Context,
    assessment: Assessment,
    blocker: str,
    message: str,
    after: Classification | None = None,
) -> AuditRecord:
    extension = assessment.vm.extension
    state = (after or assessment.vm).protection.value
    return context.record(
        Outcome.BLOCKED.value,
        f"{extension} was not installed: extension '{blocker}' is Failed, and Compute "
        f"refuses new extensions until it is repaired or removed. {extension} is {state}. "
        f"({message})",
        "failed",
        assessment,
        install_state=state,
        hint=f"repair or remove the extension '{blocker}' on the VM; the next sweep "
        f"installs {extension} then",
    )


def _install_outcome(
    context: Context, request: InstallRequest, assessment: Assessment
) -> AuditRecord:
    """A re-check after our install was accepted: what the instance view says now."""
    vm = assessment.vm
    if vm.protection is Protection.SUCCEEDED:
        reason = f"{vm.extension} is Succeeded (installed from {request.install_started})."
        return context.record(
            Outcome.INSTALL.value,
            reason,
            "succeeded",
            assessment,
            applied=True,
            install_state="Succeeded",
            **verification_fields(just_installed(context.services, vm.vm)),
        )
    if vm.failed_extensions:  # another extension went Failed and Compute refused ours
        blocker = vm.failed_extensions[0]
        return _blocked_by(context, assessment, blocker, f"{blocker} is Failed")
    code = vm.failure_code
    with_code = f" with code {code}" if code is not None else ""
    state = "Failed" if vm.protection is Protection.FAILED else "absent"
    return context.record(
        Outcome.ERROR.value,
        f"{vm.extension} is {state}{with_code} after the install started at "
        f"{request.install_started}.",
        "failed",
        assessment,
        applied=True,
        install_state=state,
        install_code=code,
        hint=failure_hint(code),
    )


def _check_later(
    context: Context, request: InstallRequest, assessment: Assessment
) -> AuditRecord | None:
    """Look again in REMEDIATION_RECHECK_SECONDS (a queue message with a visibility
    delay), until REMEDIATION_RECHECK_MINUTES after the first request; then record
    what is still true. Never a second install while one is in progress."""
    settings = context.services.settings
    now = datetime.now(UTC)
    # The window runs from the request, and afresh from our install once it started: a
    # slow guest agent must not leave an install no time of its own.
    first = _parse_time(request.install_started or request.requested_at) or now
    window = timedelta(minutes=settings.recheck_minutes)
    if now < first + window:
        again = dataclasses.replace(request, requested_at=request.requested_at or _now())
        context.services.queue.send(again, settings.recheck_seconds)
        reason = assessment.decision.reason
        pairs = [("vm", context.vm), ("decision", "defer"), ("outcome", "recheck")]
        log.info(logfmt([*pairs, ("reason", reason)]))  # the KQL in docs/operations.md reads it
        return None
    waited = f"after {settings.recheck_minutes} minutes of checks"
    if request.install_started:
        return context.record(
            Outcome.ERROR.value,
            f"{assessment.vm.extension} is still not Succeeded {waited}: "
            f"{assessment.decision.reason}",
            "failed",
            assessment,
            applied=True,
            hint="check the extension's status on the VM in the portal; the next sweep "
            "checks it again",
        )
    return context.decided(
        assessment,
        "deferred",
        f"{assessment.decision.reason} Still so {waited}; the next event or sweep checks again.",
    )


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def handle_poison(services: Services, text: str) -> AuditRecord:
    """A message that failed every try: audit it with its last failure, drop nothing."""
    context = Context(services, "queue")
    try:
        request = InstallRequest.parse(text)
    except BadMessage as error:
        reason = f"A malformed message reached the poison queue: {error}."
        return services.audit.write(context.record(Outcome.ERROR.value, reason, "poisoned"))
    vm = VmRef.parse(request.vm)
    context = dataclasses.replace(
        context.for_vm(vm), event_id=request.event_id, correlation_id=request.correlation_id
    )
    last = services.claims.last_failure(vm.id) or "unknown"
    services.claims.finish(vm.id)
    return services.audit.write(
        context.record(
            Outcome.ERROR.value,
            f"The install gave up after every retry; the last failure: {last}",
            "poisoned",
            hint="the next event or the nightly sweep tries again; if ARM keeps refusing, "
            "check the app's quota and roles",
        )
    )
