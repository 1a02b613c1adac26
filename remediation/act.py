"""The act step: the one way from a decision to Azure, whichever trigger asked.

The event function, the install queue and the sweep batch assess a machine, then call
this module. It alone sends to the install queue and PUTs the MDE extension, so report
mode, the claim, the release on failure and the record's outcome are written once:

- ``act``: what to do now about a decision. Report mode writes nothing and records what
  enforce would do. Enforce takes the machine's claim (one install in flight per machine),
  then starts the install (an event's extension-only install) or queues it; if the send
  fails the claim is given back at once, so a redelivery or the next sweep can act.
- ``install``: the install queue's work: the subscription writes, then the PUT under the
  claim's install mark (a message delivered twice PUTs once) and its wait, each result
  one record.
- ``check_later``: a delayed queue message that looks again (an install under way, a
  guest agent not ready), within REMEDIATION_RECHECK_MINUTES.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from remediation.audit import AuditRecord, logfmt
from remediation.classify import MDE_PUBLISHER, Classification, Protection, classify
from remediation.model import (
    ActionKind,
    BlockedByExtension,
    Decision,
    InstallResult,
    OperationInProgress,
    Outcome,
    PermanentError,
    Power,
    RecordOutcome,
    RemediationError,
    TransientError,
    VmNotRunning,
)
from remediation.policy import failure_hint
from remediation.queues import InstallRequest
from remediation.service import (
    Assessment,
    Context,
    Services,
    assess,
    just_installed,
    verification_fields,
)

log = logging.getLogger("remediation")


@dataclass
class BatchActions:
    """A sweep batch's own part of acting: its subscription writes (plan, integration
    settings) are made once per subscription, here, not once per machine."""

    applied: dict[str, set[str]] = field(default_factory=dict)  # subscription -> actions

    def new(self, subscription: str, decision: Decision) -> list[str]:
        done = self.applied.get(subscription, set())
        return [str(a) for a in decision.subscription_actions if str(a) not in done]

    def note(self, subscription: str, decision: Decision) -> None:
        self.applied.setdefault(subscription, set()).update(self.new(subscription, decision))


def act(
    context: Context, assessment: Assessment, *, holder: str, batch: BatchActions | None = None
) -> AuditRecord:
    """A decision -> Azure -> one record. From an event (no ``batch``): a decision to
    look again soon is queued as a delayed re-check, an install that needs only the
    extension is started here, anything else goes to the install queue. From a sweep
    ``batch``: its subscription writes are made here (once each), its installs are
    queued, and a re-check is left to the next sweep."""
    decision = assessment.decision
    recheck = decision.recheck and batch is None
    if decision.outcome is not Outcome.INSTALL and not recheck:
        return context.decided(assessment, RecordOutcome.NONE)
    if not context.enforce:
        reported = RecordOutcome.REPORTED if decision.outcome is Outcome.INSTALL else "none"
        return context.decided(assessment, RecordOutcome(reported))
    vm = assessment.facts.vm
    if batch is not None:
        failed = _subscription_writes(context, assessment, batch)
        if failed is not None:
            return failed
        if not decision.installs_extension:
            return context.decided(assessment, RecordOutcome.APPLIED, applied=True)
    if not context.services.claims.take(vm.id, holder=holder):
        reason = (
            f"{decision.reason} An install or check for this VM is already queued or ran recently."
        )
        return context.decided(assessment, RecordOutcome.DUPLICATE, reason)
    if batch is None and _extension_only(decision):
        started = _start(context, assessment, holder)
        if started is not None:
            return started
    delay = context.services.settings.recheck_seconds if recheck else 0
    _send(context, context.install_request(), delay, release=holder)
    return context.decided(
        assessment, RecordOutcome.QUEUED, applied=decision.outcome is Outcome.INSTALL
    )


def queue_retry(context: Context, error: TransientError) -> AuditRecord:
    """Azure did not answer while assessing: in enforce mode the install queue checks the
    machine again (bounded retries, then poison and a record); report mode writes
    nothing, so it records the outage and leaves the machine to the next sweep."""
    holder = context.event_id or context.run_id or "retry"
    if context.enforce and context.services.claims.take(context.vm, holder=holder):
        _send(context, context.install_request(), 0, release=holder)
        reason = f"ARM was unavailable ({error}); the install queue checks this VM again."
        return context.record(Outcome.DEFER.value, reason, RecordOutcome.QUEUED)
    return context.unavailable(error, "the next event or sweep checks this VM again.")


def _send(context: Context, request: InstallRequest, delay: int, *, release: str) -> None:
    """Queue the request; if the queue does not take it, give the claim back (else the
    machine stays held, unprotected, for the claim's lease) and report an outage."""
    services = context.services
    try:
        services.queue.send(request, delay)
    except Exception as error:
        with contextlib.suppress(Exception):  # storage may be down for the claim too
            services.claims.release(context.vm, release)
        raise TransientError(
            f"the install queue did not take the request ({type(error).__name__}); "
            "the claim was given back"
        ) from error


def _subscription_writes(
    context: Context, assessment: Assessment, batch: BatchActions
) -> AuditRecord | None:
    """The sweep's subscription writes not yet made this batch; a record if one failed."""
    subscription = assessment.facts.vm.subscription
    new = batch.new(subscription, assessment.decision)
    if not new:
        return None
    try:
        apply_subscription_actions(context.services, assessment.decision, subscription)
    except PermanentError as error:
        reason = f"Changing subscription {subscription} failed: {error}"
        return context.record(
            Outcome.BLOCKED.value, reason, RecordOutcome.FAILED, assessment, hint=error.hint
        )
    batch.note(subscription, assessment.decision)
    return None


def apply_subscription_actions(services: Services, decision: Decision, subscription: str) -> None:
    for action in decision.subscription_actions:
        if action.kind is ActionKind.ENABLE_PLAN:
            services.arm.enable_plan(subscription, action.target)
        elif action.kind is ActionKind.ENABLE_SETTING:
            services.arm.set_setting(subscription, action.target, True)
        elif action.kind is ActionKind.INCLUDE_LINUX:
            services.arm.set_setting(subscription, action.target, False)


def _extension_only(decision: Decision) -> bool:
    """An install with nothing to write on the subscription (no plan, no setting)."""
    return (
        decision.outcome is Outcome.INSTALL
        and not decision.recheck
        and decision.installs_extension
        and not decision.subscription_actions
    )


def priced(services: Services, assessment: Assessment) -> Assessment:
    """Before anything is written for a machine, honour its VM-level pricing opt-out
    (one more read, paid only when there is something to do)."""
    if assessment.decision.outcome is not Outcome.INSTALL:
        return assessment
    facts = assessment.facts
    return assess(
        services, dataclasses.replace(facts, vm_pricing=services.arm.vm_pricing(facts.vm))
    )


def _start(context: Context, assessment: Assessment, holder: str) -> AuditRecord | None:
    """From the event function: the machine's pricing opt-out read, the PUT issued (not
    waited for), and a delayed queue message that watches it to its end and writes the
    final record, holding the claim until then. None when the PUT did not start (ARM
    refused, throttled past the budget, the VM busy or stopped, a table read failed):
    the install queue then takes the whole install, with its retries and its answers to
    each case."""
    services, vm = context.services, assessment.facts.vm
    try:
        assessment = priced(services, assessment)
        if assessment.decision.outcome is not Outcome.INSTALL:  # the VM's own opt-out
            services.claims.finish(vm.id)
            return context.decided(assessment, RecordOutcome.SKIPPED)
        if not services.claims.begin_install(vm.id, holder):
            return None  # not ours to PUT (never seen: the claim was just taken)
        extension = assessment.vm.extension
        package = services.arm.onboarding_package(vm.subscription, extension)
        services.arm.install_extension(assessment.facts, extension, package, wait=False)
    except Exception as error:  # nothing was installed: the queue's install does it all
        services.claims.end_install(vm.id, holder)  # so the queued delivery may PUT
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
        return context.decided(assessment, RecordOutcome.STARTED, applied=True, hint=hint)
    return context.decided(assessment, RecordOutcome.STARTED, applied=True)


# --- The install queue -------------------------------------------------------------------
def install(
    context: Context, assessment: Assessment, request: InstallRequest, token: str
) -> AuditRecord | None:
    """A queued request, re-assessed: write the subscription settings, then PUT the
    extension and wait for it. ``token`` names this delivery (the queue message's id,
    the same on every retry): the claim's install mark lets one delivery PUT, so a
    message the queue delivered twice installs once. None when a delayed re-check
    goes on (the claim holds)."""
    services, vm = context.services, assessment.facts.vm
    decision = assessment.decision
    if decision.recheck:  # in progress (ours or Defender for Cloud's), or agent not ready
        return check_later(context, request, assessment)
    if request.install_started:  # a re-check of our own install
        return _install_outcome(context, request, assessment)
    if decision.outcome is not Outcome.INSTALL:
        outcome = RecordOutcome.DEFERRED if decision.outcome is Outcome.DEFER else "skipped"
        return context.decided(assessment, RecordOutcome(outcome))
    if not context.enforce:
        return context.decided(assessment, RecordOutcome.REPORTED)
    extension = assessment.vm.extension
    try:
        apply_subscription_actions(services, decision, vm.subscription)
        if not decision.installs_extension:
            return context.decided(assessment, RecordOutcome.APPLIED, applied=True)
        if not services.claims.begin_install(vm.id, token):
            reason = f"{decision.reason} Another delivery of this install is running it."
            return context.decided(assessment, RecordOutcome.DUPLICATE, reason)
        package = services.arm.onboarding_package(vm.subscription, extension)
        result = services.arm.install_extension(assessment.facts, extension, package)
    except VmNotRunning:
        services.claims.end_install(vm.id, token)
        try:
            power = services.arm.vm_facts(vm).power
        except PermanentError as error:
            return context.unreadable(error)
        if power is Power.RUNNING:  # Compute's view lags: not "stopped", check again
            return check_later(context, request, assessment)
        reason = f"The VM is {power}: {extension} is installed when it next starts."
        return context.decided(assessment, RecordOutcome.DEFERRED, reason)
    except OperationInProgress:  # another operation (Defender for Cloud's?) holds the VM
        services.claims.end_install(vm.id, token)
        return check_later(context, request, assessment)
    except BlockedByExtension as error:
        return _blocked_by(context, assessment, error.extension, str(error))
    except PermanentError as error:
        if error.status == 404:  # deleted, or being deleted, meanwhile
            return context.unreadable(error)
        decided = Outcome.BLOCKED if error.status == 403 else Outcome.ERROR
        reason = f"Installing {extension} failed: {error}"
        return context.record(
            decided.value, reason, RecordOutcome.FAILED, assessment, hint=error.hint
        )
    if result.state == "InProgress":
        started = dataclasses.replace(request, install_started=_now())
        return check_later(context, started, assessment)
    if result.state == "Succeeded":
        return context.decided(
            assessment,
            RecordOutcome.SUCCEEDED,
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
        RecordOutcome.FAILED,
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
        RecordOutcome.FAILED,
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
            RecordOutcome.SUCCEEDED,
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
        RecordOutcome.FAILED,
        assessment,
        applied=True,
        install_state=state,
        install_code=code,
        hint=failure_hint(code),
    )


def check_later(
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
            RecordOutcome.FAILED,
            assessment,
            applied=True,
            hint="check the extension's status on the VM in the portal; the next sweep "
            "checks it again",
        )
    return context.decided(
        assessment,
        RecordOutcome.DEFERRED,
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
