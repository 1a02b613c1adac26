"""One Event Grid delivery -> VmEvent or Ignored(reason). Pure, and never raises.

Accepts the Event Grid schema and CloudEvents 1.0, as the JSON object Event Grid puts on
the event queue. An event is only a hint: the
service re-reads the VM from ARM before deciding anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from remediation.model import InvalidResourceId, Kind, VmRef, as_text, dig

WRITE_SUCCESS = "Microsoft.Resources.ResourceWriteSuccess"
ACTION_SUCCESS = "Microsoft.Resources.ResourceActionSuccess"
VM_WRITE = "Microsoft.Compute/virtualMachines/write"
VM_START = "Microsoft.Compute/virtualMachines/start/action"
EXTENSION_WRITE = "Microsoft.Compute/virtualMachines/extensions/write"
# An Arc machine connected, reconnected or changed: the agent's PUT of the machine
# resource (Arc's resource provider operations; subscription events carry it as a
# ResourceWriteSuccess like any ARM write).
ARC_WRITE = "Microsoft.HybridCompute/machines/write"

# What we subscribe to: the deployment's Event Grid filters must equal this.
# (event type, operation) -> (what happened, the kind of machine the subject must be)
ACCEPTED: dict[tuple[str, str], tuple[str, Kind]] = {
    (WRITE_SUCCESS, VM_WRITE): ("write", Kind.VM),
    (ACTION_SUCCESS, VM_START): ("start", Kind.VM),
    (WRITE_SUCCESS, ARC_WRITE): ("write", Kind.ARC),
}
OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"
_MAX_ECHO = 300  # how much of a hostile field an Ignored reason may repeat


@dataclass(frozen=True, slots=True)
class VmEvent:
    vm: VmRef
    kind: str  # "write" or "start"
    event_id: str
    correlation_id: str
    caller_object_id: str
    caller_app_id: str
    time: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str
    event_id: str = ""
    subject: str = ""
    subscription: str = ""


def parse(
    delivery: Any, subscriptions: frozenset[str], own_principal_id: str = ""
) -> VmEvent | Ignored:
    """Never raises: whatever arrives ends as a VmEvent or an Ignored with a reason."""
    envelope = _envelope(delivery)
    if envelope is None:
        return Ignored("the delivery is not an Event Grid or CloudEvents JSON object")
    event_id, event_type, subject, topic, time, data = envelope
    ignored = _ignorer(event_id, subject)

    if not event_id:
        return ignored("the event has no id")
    if not isinstance(data, Mapping):
        return ignored("the event has no data object")
    operation = as_text(data.get("operationName"))
    accepted = ACCEPTED.get((event_type, operation)) or _case_insensitive(event_type, operation)
    if accepted is None:
        return ignored(_why_not_accepted(event_type, operation))
    kind, machine = accepted
    status = as_text(data.get("status"))
    if status and status.lower() != "succeeded":
        return ignored(f"the operation's status is {_echo(status)}, not Succeeded")

    try:
        vm = VmRef.parse(subject)
    except InvalidResourceId:
        return ignored(f"the subject is not a valid VM or Arc machine id: {_echo(subject)}")
    if vm.kind is not machine:
        article = "an" if vm.kind is Kind.ARC else "a"
        return ignored(f"operation {_echo(operation)} is not about {article} {vm.noun}")
    resource_uri = as_text(data.get("resourceUri"))
    if resource_uri.lower() != vm.id.lower():
        return ignored("the subject and data.resourceUri name different resources")
    sub_in_data = as_text(data.get("subscriptionId")).lower()
    if sub_in_data and sub_in_data != vm.subscription:
        return ignored("data.subscriptionId does not match the VM's subscription")
    # Event Grid always sets topic and CloudEvents 1.0 requires source: an event without
    # one did not come from the VM's subscription's system topic.
    if not topic:
        return ignored("the event names no topic (source)")
    if topic.lower().rstrip("/") != f"/subscriptions/{vm.subscription}":
        return ignored("the topic is not the VM's subscription")
    if vm.subscription not in subscriptions:
        return Ignored(
            f"subscription {vm.subscription} is not in scope (REMEDIATION_SUBSCRIPTIONS or "
            "REMEDIATION_MANAGEMENT_GROUPS)",
            _clip(event_id),
            vm.id,
            vm.subscription,
        )

    claims = dig(data, "claims")
    if not isinstance(claims, Mapping):
        claims = {}
    evidence = dig(data, "authorization", "evidence")
    object_id = (
        as_text(claims.get(OBJECT_ID_CLAIM))
        or as_text(claims.get("oid"))
        or as_text(dig(evidence, "principalId"))
    ).lower()
    # Claims carry the object id with dashes, authorization evidence without.
    if own_principal_id and object_id.replace("-", "") == own_principal_id.lower().replace("-", ""):
        return Ignored(
            "caused by this app's own identity (loop guard)",
            _clip(event_id),
            vm.id,
            vm.subscription,
        )
    return VmEvent(
        vm=vm,
        kind=kind,
        event_id=_clip(event_id),
        correlation_id=_clip(as_text(data.get("correlationId"))),
        caller_object_id=_clip(object_id),
        caller_app_id=_clip(as_text(claims.get("appid"))),
        time=_clip(time),
    )


_Envelope = tuple[str, str, str, str, str, Any]


def _envelope(delivery: Any) -> _Envelope | None:
    """(id, type, subject, topic, time, data) from either schema, or None."""
    if not isinstance(delivery, Mapping):
        return None
    if "specversion" in delivery:  # CloudEvents 1.0
        return (
            as_text(delivery.get("id")),
            as_text(delivery.get("type")),
            as_text(delivery.get("subject")),
            as_text(delivery.get("source")),
            as_text(delivery.get("time")),
            delivery.get("data"),
        )
    if "eventType" in delivery:
        return (
            as_text(delivery.get("id")),
            as_text(delivery.get("eventType")),
            as_text(delivery.get("subject")),
            as_text(delivery.get("topic")),
            as_text(delivery.get("eventTime")),
            delivery.get("data"),
        )
    return None


def _case_insensitive(event_type: str, operation: str) -> tuple[str, Kind] | None:
    for (accepted_type, accepted_operation), accepted in ACCEPTED.items():
        if event_type.lower() == accepted_type.lower() and (
            operation.lower() == accepted_operation.lower()
        ):
            return accepted
    return None


def _why_not_accepted(event_type: str, operation: str) -> str:
    lowered = operation.lower()
    if lowered == EXTENSION_WRITE.lower() or "/extensions/" in lowered:
        return "an extension write never starts a remediation (ours, MDC's or anyone's)"
    if event_type.endswith(("Failure", "Cancel")):
        return f"the operation did not succeed ({_echo(event_type)})"
    if event_type.startswith("Microsoft.Resources.ResourceDelete"):
        return "a delete needs no remediation"
    if event_type not in {WRITE_SUCCESS, ACTION_SUCCESS}:
        return f"event type {_echo(event_type)} is not a VM write or start, or an Arc write"
    return f"operation {_echo(operation)} is not a VM write or start, or an Arc write"


def _ignorer(event_id: str, subject: str) -> Callable[[str], Ignored]:
    def ignored(reason: str) -> Ignored:
        return Ignored(reason, _clip(event_id), _clip(subject))

    return ignored


def _clip(value: str) -> str:
    """Untrusted text kept for the audit: bounded and printable."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:_MAX_ECHO])


def _echo(value: str) -> str:
    return repr(_clip(value))
