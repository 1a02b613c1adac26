"""The event function's and the install queue's handlers: parse what arrived, re-read the
machine from ARM, assess it, hand it to the act step, and write exactly one record.

Two kinds of error reach the host: a TransientError (the event and install queues retry
it, then move the message to their poison queue, whose function records it), and
nothing else: permanent problems are recorded with a hint and the function returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from typing import Any

from remediation import act
from remediation.audit import AuditRecord
from remediation.events import Ignored, parse
from remediation.model import (
    InvalidJson,
    Outcome,
    PermanentError,
    RecordOutcome,
    RemediationError,
    TransientError,
    VmRef,
    load_json,
)
from remediation.queues import BadMessage, InstallRequest
from remediation.service import Context, Services, assess, with_twin

log = logging.getLogger("remediation")


def handle_event(services: Services, delivery: Any, trigger: str = "event") -> AuditRecord:
    """One event -> exactly one audit record. ARM calls give up after
    REMEDIATION_EVENT_BUDGET_SECONDS. An outage is never the machine's fault, and never
    loses the event: the install queue checks the machine again, or, when even that queue
    cannot take it, the function fails and the event queue hands the event over again
    (then its poison queue's function records it)."""
    context = Context(services, trigger)
    settings = services.settings
    with services.arm.budget(settings.event_budget_seconds):
        scope = services.scope().ids
        parsed = parse(delivery, scope)  # what it is about, before any call to Azure
        if isinstance(parsed, Ignored):
            context = dataclasses.replace(
                context,
                vm=parsed.subject,
                subscription=parsed.subscription,
                event_id=parsed.event_id,
            )
            return services.audit.write(
                context.record("ignored", parsed.reason, RecordOutcome.IGNORED)
            )
        context = dataclasses.replace(
            context.for_vm(parsed.vm),
            event_id=parsed.event_id,
            correlation_id=parsed.correlation_id,
        )
        return services.audit.write(_remediate(context, delivery, scope, parsed.vm))


def _remediate(context: Context, delivery: Any, scope: frozenset[str], vm: VmRef) -> AuditRecord:
    services = context.services
    try:
        own = parse(delivery, scope, services.arm.principal_id)
    except TransientError as error:
        return act.queue_retry(context, error)
    except RemediationError as error:  # cannot learn our own identity: say so, do nothing
        reason = f"The app cannot tell its own identity: {error}"
        return context.record("error", reason, RecordOutcome.FAILED, hint=error.hint)
    if isinstance(own, Ignored):  # our own writes raise events too: not ours to act on
        return context.record("ignored", own.reason, RecordOutcome.IGNORED)
    try:
        assessment = assess(services, with_twin(services, services.arm.vm_facts(vm)))
        return act.act(context, assessment, holder=uuid.uuid4().hex)
    except PermanentError as error:
        return context.unreadable(error)
    except TransientError as error:
        return act.queue_retry(context, error)


# --- The event queue: Event Grid's StorageQueue destination ----------------------------------
MAX_EVENT_BYTES = 1024 * 1024  # Event Grid's limit for one event


def handle_queued_event(services: Services, body: bytes | str) -> list[AuditRecord]:
    """One queue message from Event Grid: one event (a JSON array is taken event by
    event). Each ends in exactly one record; a message that is not JSON is recorded as
    ignored. Raises what handle_event raises: the queue retries, then the poison queue."""
    deliveries = _events_in(body)
    if isinstance(deliveries, str):
        context = Context(services, "event")
        return [services.audit.write(context.record("ignored", deliveries, RecordOutcome.IGNORED))]
    return [handle_event(services, delivery) for delivery in deliveries]


def handle_event_poison(services: Services, body: bytes | str) -> list[AuditRecord]:
    """An event message that failed every try: one record per event, saying so."""
    deliveries = _events_in(body)
    context = Context(services, "event")
    if isinstance(deliveries, str):
        reason = f"A malformed event message reached the poison queue: {deliveries}"
        return [services.audit.write(context.record("ignored", reason, RecordOutcome.POISONED))]
    try:
        scope = services.scope().ids
    except Exception:  # the record matters more than the scope's names
        scope = services.settings.subscriptions
    records = []
    for delivery in deliveries:
        parsed = parse(delivery, scope)
        about = (
            dataclasses.replace(context, vm=parsed.subject, subscription=parsed.subscription)
            if isinstance(parsed, Ignored)
            else context.for_vm(parsed.vm)
        )
        record = dataclasses.replace(about, event_id=parsed.event_id).record(
            Outcome.ERROR.value,
            "The event failed every try (Azure or storage did not answer)",
            RecordOutcome.POISONED,
            hint="the next event or the nightly sweep looks at the machine again",
        )
        records.append(services.audit.write(record))
    return records


def _events_in(body: bytes | str) -> list[Any] | str:
    """The event of one message, or why there is none. Event Grid puts one event in each
    message; an array of one is taken too. A longer array is refused whole, with its
    reason: a retry of the message would handle again the events that had succeeded."""
    try:
        value = load_json(body, max_bytes=MAX_EVENT_BYTES)
    except InvalidJson as error:
        return f"the event message is not valid JSON: {error}"
    if isinstance(value, list):
        if len(value) != 1:
            return (
                f"the event message holds {len(value)} events; Event Grid puts one in each "
                "(send each event as its own message)"
            )
        return value
    return [value]


# --- The install queue -----------------------------------------------------------------------
def handle_install(
    services: Services, body: bytes | str, dequeue_count: int, message_id: str
) -> AuditRecord | None:
    """Re-read and re-decide (the VM may have changed or stopped), then act: the
    subscription writes and the install. Raises TransientError for the host to retry;
    records everything else. Returns None when the work goes on in a delayed re-check
    (an install still running, a guest agent not ready): that message writes the
    record, and the claim holds. ``message_id`` is the queue message's id, the same on
    each retry of one message: it keeps a message delivered twice to one install."""
    parsed = _queued(services, body, "A malformed install message was dropped")
    if isinstance(parsed, AuditRecord):
        return parsed
    context, request = parsed
    vm = VmRef.parse(request.vm)
    try:
        try:
            facts = with_twin(services, services.arm.vm_facts(vm))
            assessment = act.priced(services, assess(services, facts))
        except PermanentError as error:
            record: AuditRecord | None = context.unreadable(error)
        else:
            record = act.install(context, assessment, request, message_id)
    except Exception as error:  # the host retries; the poison record says why it failed
        why = str(error) if isinstance(error, RemediationError) else type(error).__name__
        with contextlib.suppress(Exception):  # storage may be what failed
            services.claims.note_failure(vm.id, f"try {dequeue_count}: {why}")
        raise
    if record is None:
        return None
    written = services.audit.write(record)  # first: a failed write keeps the claim held
    if record.outcome != RecordOutcome.DUPLICATE:  # another delivery holds the claim
        services.claims.finish(vm.id)
    return written


def handle_poison(services: Services, body: bytes | str) -> AuditRecord:
    """A message that failed every try: record it with its last failure, drop nothing."""
    parsed = _queued(
        services, body, "A malformed message reached the poison queue", RecordOutcome.POISONED
    )
    if isinstance(parsed, AuditRecord):
        return parsed
    context, request = parsed
    vm = VmRef.parse(request.vm)
    last = services.claims.last_failure(vm.id) or "unknown"
    services.claims.finish(vm.id)
    return services.audit.write(
        context.record(
            Outcome.ERROR.value,
            f"The install gave up after every retry; the last failure: {last}",
            RecordOutcome.POISONED,
            hint="the next event or the nightly sweep tries again; if ARM keeps refusing, "
            "check the app's quota and roles",
        )
    )


def _queued(
    services: Services,
    body: bytes | str,
    dropped: str,
    outcome: RecordOutcome = RecordOutcome.FAILED,
) -> tuple[Context, InstallRequest] | AuditRecord:
    """A queued install request and the context its record shares with the request that
    queued it; or, for a message that is not one, its record (written: it is dropped)."""
    context = Context(services, "queue")
    try:
        request = InstallRequest.parse(body)
    except BadMessage as error:
        record = context.record(Outcome.ERROR.value, f"{dropped}: {error}.", outcome)
        return services.audit.write(record)
    context = dataclasses.replace(
        context.for_vm(VmRef.parse(request.vm)),
        event_id=request.event_id,
        correlation_id=request.correlation_id,
        run_id=request.run_id,
    )
    return context, request
