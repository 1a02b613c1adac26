"""Install messages, per-VM claims and the drain loop, on real Azure Storage (Azurite)."""

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from remediation.queues import (
    MAX_DEQUEUE,
    SCHEMA,
    BadMessage,
    Claims,
    InstallRequest,
    WorkQueue,
    drain,
)

VM = "/subscriptions/11111111-1111-4111-8111-111111111111/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"


def test_the_drain_loop_and_host_json_agree_on_max_dequeue():
    host = json.loads((Path(__file__).parent.parent / "host.json").read_text())
    assert host["extensions"]["queues"]["maxDequeueCount"] == MAX_DEQUEUE


def test_a_request_round_trips_and_is_versioned():
    request = InstallRequest(
        vm=VM,
        trigger="event",
        event_id="e1",
        correlation_id="c1",
        requested_at="2026-11-29T00:00:00Z",
    )
    text = request.to_text()
    assert json.loads(text)["schema"] == SCHEMA
    assert InstallRequest.parse(text) == request


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "null",
        "{",
        json.dumps({"vm": VM}),
        json.dumps({"schema": "mde-install/2", "vm": VM}),
        json.dumps({"schema": SCHEMA, "vm": VM + "/../x"}),
        json.dumps({"schema": SCHEMA, "vm": VM, "trigger": 5}),
    ],
)
def test_malformed_messages_are_refused(text):
    with pytest.raises(BadMessage):
        InstallRequest.parse(text)


def test_unknown_extra_fields_are_ignored_for_forward_compatibility():
    text = json.dumps({"schema": SCHEMA, "vm": VM, "trigger": "sweep", "priority": "high"})
    assert InstallRequest.parse(text).trigger == "sweep"


@pytest.fixture
def storage(azurite):
    suffix = uuid.uuid4().hex[:10]
    table = TableServiceClient.from_connection_string(azurite).create_table(f"claims{suffix}")
    codec = {
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": TextBase64DecodePolicy(),
    }
    queue = WorkQueue(
        QueueClient.from_connection_string(azurite, f"q-{suffix}", **codec),
        QueueClient.from_connection_string(azurite, f"q-{suffix}-poison", **codec),
    )
    queue.create()
    return table, queue


def test_a_claim_is_taken_once_until_it_expires(storage):
    table, _ = storage
    claims = Claims(table, cooldown=timedelta(minutes=15))
    now = datetime.now(UTC)
    assert claims.take(VM, "a", now)
    assert not claims.take(VM, "b", now)
    assert not claims.take(VM.upper(), "b", now)  # the same VM
    assert claims.take(VM, "c", now + timedelta(hours=2))  # the lease ran out


def test_a_claim_lasts_an_hour_at_least_and_as_long_as_the_lease_asked_for(storage):
    table, _ = storage
    now = datetime.now(UTC)
    claims = Claims(table, cooldown=timedelta(minutes=15))
    assert claims.take(VM, "a", now)
    assert not claims.take(VM, "b", now + timedelta(minutes=59))
    assert claims.take(VM, "c", now + timedelta(minutes=61))
    other = VM + "b"
    longer = Claims(table, cooldown=timedelta(minutes=15), lease=timedelta(minutes=75))
    assert longer.take(other, "a", now)
    assert not longer.take(other, "b", now + timedelta(minutes=74))  # re-checks still run
    assert longer.take(other, "c", now + timedelta(minutes=76))
    shorter = Claims(table, cooldown=timedelta(0), lease=timedelta(minutes=5))
    third = VM + "c"
    assert shorter.take(third, "a", now)
    assert not shorter.take(third, "b", now + timedelta(minutes=30))  # never under an hour


def test_a_claim_row_left_by_a_noted_failure_alone_is_free(storage):
    table, _ = storage
    claims = Claims(table, cooldown=timedelta(minutes=15))
    claims.note_failure(VM, "try 1: the queue kept a message whose claim was given back")
    assert claims.take(VM, "a")
    assert not claims.take(VM, "b")


def test_a_finished_claim_holds_for_the_cooldown_only(storage):
    table, _ = storage
    claims = Claims(table, cooldown=timedelta(minutes=15))
    now = datetime.now(UTC)
    claims.take(VM, "a", now)
    claims.finish(VM, now)
    assert not claims.take(VM, "b", now + timedelta(minutes=14))
    assert claims.take(VM, "b", now + timedelta(minutes=16))


def test_last_failure_is_kept_for_the_poison_handler(storage):
    table, _ = storage
    claims = Claims(table, cooldown=timedelta(0))
    assert claims.last_failure(VM) == ""
    claims.take(VM, "a")
    claims.note_failure(VM, "HTTP 503")
    assert claims.last_failure(VM) == "HTTP 503"
    assert not claims.take(VM, "b")  # noting a failure keeps the lease


def test_messages_are_base64_on_the_wire(storage, azurite):
    _, queue = storage
    queue.send(InstallRequest(vm=VM, trigger="cli"))
    raw = QueueClient.from_connection_string(azurite, queue.queue.queue_name)
    [message] = list(raw.peek_messages())
    assert json.loads(base64.b64decode(message.content))["vm"] == VM


def test_drain_retries_then_poisons_like_the_host(storage):
    _, queue = storage
    queue.send(InstallRequest(vm=VM, trigger="cli"))
    queue.send(InstallRequest(vm=VM.replace("vm1", "vm2"), trigger="cli"))
    tries, poisoned = [], []

    def handle(text, count, message_id):
        tries.append((InstallRequest.parse(text).vm[-3:], count))
        if InstallRequest.parse(text).vm.endswith("vm1"):
            raise RuntimeError("ARM said no")

    handled = drain(
        queue,
        handle,
        lambda text: poisoned.append(InstallRequest.parse(text).vm[-3:]),
        max_dequeue=3,
        visibility_seconds=1,
    )
    assert [count for vm, count in tries if vm == "vm1"] == [1, 2, 3]
    assert [count for vm, count in tries if vm == "vm2"] == [1]
    assert poisoned == ["vm1"]
    assert handled == 5
    assert queue.queue.get_queue_properties().approximate_message_count == 0
