"""The pipeline: gather facts -> decide (pure) -> apply -> audit. The imperative shell.

Every entry point (Event Grid, queue, poison queue, CLI) ends in exactly one audit
record. Two kinds of error reach the host: a TransientError from the queue handler
(the host retries, then moves the message to the poison queue), and nothing else:
permanent problems are audited with a hint and the function returns.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from remediation.audit import AuditLog, AuditRecord
from remediation.classify import Classification, Protection, classify
from remediation.config import Settings
from remediation.events import Ignored, parse
from remediation.model import (
    ActionKind,
    Decision,
    History,
    Outcome,
    PermanentError,
    RemediationError,
    TransientError,
    VmFacts,
    VmNotRunning,
    VmRef,
)
from remediation.policy import decide, failure_hint
from remediation.queues import BadMessage, Claims, InstallRequest, WorkQueue

if TYPE_CHECKING:  # the gateway imports azure.mgmt: keep it off this module's import
    from remediation.arm import ArmGateway
    from remediation.notify import Notifier


@dataclass
class Services:
    """What the pipeline needs, built once per worker by bootstrap.services()."""

    settings: Settings
    arm: ArmGateway
    audit: AuditLog
    queue: WorkQueue  # install requests
    claims: Claims
    sweeps: WorkQueue  # sweep batches
    notifier: Notifier | None = None


@dataclass(frozen=True)
class Assessment:
    facts: VmFacts
    vm: Classification
    decision: Decision


# --- Gather and decide -------------------------------------------------------------------
def assess(services: Services, facts: VmFacts) -> Assessment:
    """Classify and decide for facts already read; reads the (cached) posture and,
    for a Failed extension only, the VM's history from the audit log."""
    vm = classify(facts, services.settings.exclude_tag)
    posture = services.arm.posture(facts.vm.subscription)
    history = History()
    if vm.protection is Protection.FAILED:
        history = History(reinstalls=services.audit.reinstalls_since_success(facts.vm.id))
    return Assessment(facts, vm, decide(vm, posture, services.settings, history))


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
            extra.setdefault("actions", tuple(assessment.decision.action_names))
            extra.setdefault("hint", assessment.decision.hint)
        return AuditRecord(
            vm=self.vm,
            subscription=self.subscription,
            trigger=self.trigger,
            decision=decision,
            reason=reason,
            mode=self.services.settings.mode.value,
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

    def install_request(self) -> InstallRequest:
        return InstallRequest(
            vm=self.vm,
            trigger=self.trigger,
            event_id=self.event_id,
            correlation_id=self.correlation_id,
            run_id=self.run_id,
            requested_at=datetime.now(UTC).isoformat(),
        )


# --- Event Grid --------------------------------------------------------------------------------
def handle_event(services: Services, delivery: Any, trigger: str = "event") -> AuditRecord:
    """One Event Grid delivery -> exactly one audit record."""
    context = Context(services, trigger)
    settings = services.settings
    try:
        parsed = parse(delivery, settings.subscriptions, services.arm.principal_id)
    except RemediationError as error:  # cannot learn our own identity: say so, do nothing
        reason = f"The app cannot tell its own identity: {error}"
        return services.audit.write(context.record("error", reason, "failed", hint=error.hint))
    if isinstance(parsed, Ignored):
        context = dataclasses.replace(
            context, vm=parsed.subject, subscription=parsed.subscription, event_id=parsed.event_id
        )
        return services.audit.write(context.record("ignored", parsed.reason, "ignored"))
    context = dataclasses.replace(
        context.for_vm(parsed.vm), event_id=parsed.event_id, correlation_id=parsed.correlation_id
    )
    return services.audit.write(remediate(context, parsed.vm))


def remediate(context: Context, vm: VmRef) -> AuditRecord:
    """Re-read the VM, decide, and in enforce mode apply subscription actions and queue
    the install. Shared by events and the CLI (and the sweep)."""
    services = context.services
    try:
        facts = services.arm.vm_facts(vm)
        assessment = assess(services, facts)
    except PermanentError as error:
        return context.unreadable(error)
    except TransientError as error:
        return _requeue(context, error)

    decision = assessment.decision
    if not services.settings.enforce or decision.outcome is not Outcome.INSTALL:
        outcome = "reported" if decision.outcome is Outcome.INSTALL else "none"
        return context.decided(assessment, outcome)
    try:
        if any(a.kind is ActionKind.ENABLE_PLAN for a in decision.actions):
            assessment = assess_with_pricing(services, facts)  # never pay for an opted-out VM
            decision = assessment.decision
            if decision.outcome is not Outcome.INSTALL:
                return context.decided(assessment, "none")
        apply_subscription_actions(services, decision, vm.subscription)
    except PermanentError as error:
        reason = f"Changing subscription {vm.subscription} failed: {error}"
        return context.record(Outcome.BLOCKED.value, reason, "failed", assessment, hint=error.hint)
    except TransientError as error:
        return _requeue(context, error)

    if not _extension_action(decision):
        return context.decided(assessment, "applied", applied=True)
    if not services.claims.take(vm.id, holder=uuid.uuid4().hex):
        reason = f"{decision.reason} An install for this VM is already queued or ran recently."
        return context.decided(assessment, "duplicate", reason)
    services.queue.send(context.install_request())
    return context.decided(assessment, "queued", applied=True)


def _requeue(context: Context, error: TransientError) -> AuditRecord:
    """ARM is throttling or failing now: in enforce mode the queue retries the whole
    check later (bounded, then poison + audit); report mode writes nothing, so it
    records the miss and leaves the VM to the next sweep."""
    services = context.services
    if services.settings.enforce and services.claims.take(context.vm, holder=uuid.uuid4().hex):
        services.queue.send(context.install_request())
        reason = f"ARM was unavailable ({error}); the install queue checks this VM again."
        return context.record(Outcome.DEFER.value, reason, "queued")
    reason = f"ARM was unavailable ({error}); the next event or sweep checks this VM again."
    return context.record(Outcome.ERROR.value, reason, "failed")


# --- The install queue -----------------------------------------------------------------------
def handle_install(services: Services, text: str, dequeue_count: int = 1) -> AuditRecord:
    """Re-read and re-decide (the VM may have changed or stopped), then install and
    wait. Raises TransientError for the host to retry; audits everything else."""
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
        record = _install(context, vm)
    except TransientError as error:
        services.claims.note_failure(vm.id, f"try {dequeue_count}: {error}")
        raise
    services.claims.finish(vm.id)
    return services.audit.write(record)


def _install(context: Context, vm: VmRef) -> AuditRecord:
    services = context.services
    try:
        assessment = assess_with_pricing(services, services.arm.vm_facts(vm))
    except PermanentError as error:
        return context.unreadable(error)
    decision = assessment.decision
    if decision.outcome is Outcome.DEFER and assessment.vm.protection is Protection.IN_PROGRESS:
        # Most likely our own earlier try, cut off mid-operation: wait for it.
        raise TransientError(f"{assessment.vm.extension} is still being provisioned on {vm}")
    if decision.outcome is not Outcome.INSTALL:
        return context.decided(
            assessment, "deferred" if decision.outcome is Outcome.DEFER else "skipped"
        )
    if not services.settings.enforce:
        return context.decided(assessment, "reported")

    extension = assessment.vm.extension
    try:
        apply_subscription_actions(services, decision, vm.subscription)
        package = services.arm.onboarding_package(vm.subscription, extension)
        result = services.arm.install_extension(assessment.facts, extension, package)
    except VmNotRunning:
        reason = f"The VM stopped before {extension} was installed; its start event brings it back."
        return context.decided(assessment, "deferred", reason)
    except PermanentError as error:
        decided = Outcome.BLOCKED if error.status == 403 else Outcome.ERROR
        reason = f"Installing {extension} failed: {error}"
        return context.record(decided.value, reason, "failed", assessment, hint=error.hint)
    if result.state == "Succeeded":
        return context.decided(assessment, "succeeded", applied=True, install_state="Succeeded")
    code = f" with code {result.code}" if result.code is not None else ""
    return context.record(
        Outcome.ERROR.value,
        f"{extension} ended Failed{code}: {result.message}",
        "failed",
        assessment,
        applied=True,
        install_state="Failed",
        install_code=result.code,
        hint=failure_hint(result.code),
    )


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
