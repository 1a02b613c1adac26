"""The event and install-queue handlers in the fast tier, with test_act's in-memory
stand-ins: one record per delivery, the claim finished or kept, outages never lost."""

from __future__ import annotations

import dataclasses
import json

import pytest

from remediation import handlers
from remediation.model import TransientError
from remediation.queues import InstallRequest
from tests.test_act import SUB, ubuntu
from tests.test_act import services as fake_services


def delivery(facts, event_id="e-1", operation="Microsoft.Compute/virtualMachines/write"):
    """An Event Grid schema event as the trigger hands it over, for one VM."""
    return {
        "id": event_id,
        "topic": f"/subscriptions/{SUB}",
        "subject": facts.vm.id,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-12-04T08:00:00Z",
        "dataVersion": "2",
        "metadataVersion": "1",
        "data": {
            "operationName": operation,
            "resourceUri": facts.vm.id,
            "subscriptionId": SUB,
            "status": "Succeeded",
            "authorization": {"evidence": {"principalId": "someone-else"}},
            "claims": {"http://schemas.microsoft.com/identity/claims/objectidentifier": "x"},
        },
    }


def test_an_event_is_one_record_and_starts_the_install():
    facts = ubuntu()
    running = fake_services(facts)
    record = handlers.handle_event(running, delivery(facts))
    assert (record.vm, record.event_id, record.outcome) == (facts.vm.id, "e-1", "started")
    assert running.audit.written == [record]


def test_the_token_authority_down_loses_no_event_the_install_queue_takes_it():
    facts = ubuntu()
    running = fake_services(facts)
    running.arm.outage = TransientError("the token authority did not answer (503)")
    record = handlers.handle_event(running, delivery(facts))
    assert (record.vm, record.event_id) == (facts.vm.id, "e-1")
    assert (record.decision, record.outcome) == ("defer", "queued")
    [(request, _)] = running.queue.sent
    assert request.vm == facts.vm.id
    assert running.claims.holders == {facts.vm.id: "e-1"}


def test_in_report_mode_an_outage_is_recorded_unavailable_with_its_machine():
    facts = ubuntu()
    running = fake_services(facts, mode="report")
    running.arm.outage = TransientError("ARM answered 503")
    record = handlers.handle_event(running, delivery(facts))
    assert (record.vm, record.event_id) == (facts.vm.id, "e-1")
    assert (record.decision, record.outcome) == ("undecided", "unavailable")
    assert running.queue.sent == []


def test_an_outage_with_the_install_queue_down_fails_the_delivery_for_a_redelivery():
    facts = ubuntu()
    running = fake_services(facts)
    running.arm.outage = TransientError("ARM answered 503")
    running.queue.fails = True
    with pytest.raises(TransientError):
        handlers.handle_event(running, delivery(facts))
    assert running.claims.holders == {}  # given back: the redelivery can take it
    assert running.audit.written == []


def test_an_arc_event_asks_for_a_twin_only_when_the_agent_did_not_say_where_it_runs():
    from remediation.model import VmRef

    arc_id = f"/subscriptions/{SUB}/resourceGroups/rg-onprem/providers/Microsoft.HybridCompute/machines/srv"
    twin = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web"
    facts = dataclasses.replace(
        ubuntu(),
        vm=VmRef.parse(arc_id),
        cloud_provider="N/A",
        vm_uuid="090556DA-D4FA-764F-A9F1-63614EDA019A",
    )
    running = fake_services(facts)
    running.arm.twins["da560509-fad4-4f76-a9f1-63614eda019a"] = twin
    event = delivery(facts, operation="Microsoft.HybridCompute/machines/write")
    record = handlers.handle_event(running, event)
    assert (record.decision, record.outcome) == ("exclude", "none")
    assert record.reason.endswith(f"its SMBIOS id is the vmId of {twin}.")
    assert running.arm.puts == []
    assert running.arm.twin_lookups == 1
    # An AWS machine says where it runs: no lookup, and it is installed.
    aws = dataclasses.replace(facts, cloud_provider="AWS")
    running = fake_services(aws)
    running.arm.twins["da560509-fad4-4f76-a9f1-63614eda019a"] = twin
    assert (
        handlers.handle_event(
            running, delivery(aws, operation="Microsoft.HybridCompute/machines/write")
        ).outcome
        == "started"
    )
    assert running.arm.twin_lookups == 0


# --- The event queue: what Event Grid's StorageQueue destination puts there ----------------
def test_a_queued_event_is_handled_as_the_event_it_holds():
    facts = ubuntu()
    running = fake_services(facts)
    [record] = handlers.handle_queued_event(running, json.dumps(delivery(facts)).encode())
    assert (record.vm, record.event_id, record.outcome) == (facts.vm.id, "e-1", "started")


def test_a_queued_event_with_a_byte_order_mark_is_read():
    facts = ubuntu()
    running = fake_services(facts)
    body = b"\xef\xbb\xbf" + json.dumps(delivery(facts)).encode()
    [record] = handlers.handle_queued_event(running, body)
    assert record.outcome == "started"


def test_an_array_of_one_event_is_that_event_and_a_longer_one_is_refused_whole():
    facts = ubuntu()
    running = fake_services(facts)
    [record] = handlers.handle_queued_event(running, json.dumps([delivery(facts, "e-1")]))
    assert (record.event_id, record.outcome) == ("e-1", "started")
    running = fake_services(facts)
    body = json.dumps([delivery(facts, "e-1"), delivery(facts, "e-2")])
    [record] = handlers.handle_queued_event(running, body)
    assert (record.decision, record.outcome) == ("ignored", "ignored")
    assert record.reason == (
        "the event message holds 2 events; Event Grid puts one in each (send each event as "
        "its own message)"
    )
    assert running.queue.sent == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "the event message is not valid JSON: not JSON"),
        (b"\xff\xfe", "the event message is not valid JSON: not UTF-8 text"),
        (b"[]", "the event message holds 0 events"),
        (b"[" * 200 + b"]" * 200, "the event message is not valid JSON: nested deeper than"),
    ],
)
def test_a_message_that_holds_no_event_is_one_ignored_record_and_acts_on_nothing(body, why):
    facts = ubuntu()
    running = fake_services(facts)
    [record] = handlers.handle_queued_event(running, body)
    assert (record.decision, record.outcome) == ("ignored", "ignored")
    assert record.reason.startswith(why)
    assert running.queue.sent == []
    assert running.audit.written == [record]


def test_an_event_that_failed_every_try_is_recorded_poisoned_with_its_machine():
    facts = ubuntu()
    running = fake_services(facts)
    [record] = handlers.handle_event_poison(running, json.dumps(delivery(facts, "e-9")))
    assert (record.vm, record.event_id, record.outcome) == (facts.vm.id, "e-9", "poisoned")
    assert "failed every try" in record.reason
    assert record.hint
    assert running.queue.sent == []


def test_a_poisoned_message_that_is_not_an_event_is_still_one_record():
    running = fake_services(ubuntu())
    [record] = handlers.handle_event_poison(running, b"{oops")
    assert record.outcome == "poisoned"
    assert record.reason.startswith("A malformed event message reached the poison queue")


def message(facts, **more) -> str:
    return InstallRequest(vm=facts.vm.id, trigger="event", **more).to_text()


def test_a_queued_install_that_ends_frees_the_claim_for_the_cooldown():
    facts = ubuntu()
    running = fake_services(facts)
    running.claims.take(facts.vm.id, "h")
    record = handlers.handle_install(running, message(facts), 1, "m-1")
    assert record.outcome == "succeeded"
    assert running.claims.finished == [facts.vm.id]


def test_a_second_delivery_of_one_message_neither_puts_nor_frees_the_claim():
    facts = ubuntu()
    running = fake_services(facts)
    running.claims.begin_install(facts.vm.id, "m-1")  # the first delivery is installing
    record = handlers.handle_install(running, message(facts), 1, "m-1-again")
    assert record.outcome == "duplicate"
    assert running.arm.puts == []
    assert running.claims.finished == []


def test_a_transient_failure_is_noted_for_the_poison_record_and_retried():
    facts = ubuntu()
    running = fake_services(facts)
    running.arm.refusal = TransientError("ARM answered 503")
    with pytest.raises(TransientError):
        handlers.handle_install(running, message(facts), 2, "m-1")
    assert running.claims.failures == {facts.vm.id: "try 2: ARM answered 503"}
    assert running.claims.finished == []
    record = handlers.handle_poison(running, message(facts, run_id="run-1"))
    assert (record.decision, record.outcome, record.run_id) == ("error", "poisoned", "run-1")
    assert "try 2: ARM answered 503" in record.reason
    assert running.claims.finished == [facts.vm.id]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8 text"),
        (("[" * 5000 + "]" * 5000).encode(), "nested deeper than 32 levels"),
        (b"{}", "unknown message schema"),
        (json.dumps({"schema": "mde-install/1", "vm": "/subscriptions/x"}).encode(), "valid VM id"),
    ],
)
def test_a_malformed_install_message_is_one_record_and_dropped(body, why):
    running = fake_services(ubuntu())
    record = handlers.handle_install(running, body, 1, "m-1")
    assert (record.decision, record.outcome) == ("error", "failed")
    assert why in record.reason
    poisoned = handlers.handle_poison(running, body)
    assert (poisoned.decision, poisoned.outcome) == ("error", "poisoned")
    assert running.audit.written == [record, poisoned]  # one record each, then dropped
