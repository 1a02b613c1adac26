"""The remediation log on real Table Storage (Azurite)."""

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from remediation.audit import AuditLog, AuditRecord, day_partition, vm_partition

VM = "/subscriptions/11111111-1111-4111-8111-111111111111/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
OTHER = VM[:-1] + "2"


@pytest.fixture
def audit(azurite):
    table = TableServiceClient.from_connection_string(azurite).get_table_client(
        f"audit{uuid.uuid4().hex[:10]}"
    )
    log = AuditLog(table)
    log.create()
    log.create()  # idempotent
    return log, table


def record(vm=VM, when=None, **changes):
    values = {
        "vm": vm,
        "subscription": "11111111-1111-4111-8111-111111111111",
        "trigger": "event",
        "decision": "install",
        "reason": "MDE.Linux is absent on ubuntu-22.04.",
        "mode": "enforce",
        "outcome": "queued",
    }
    values |= changes
    if when:
        values["time"] = when
    return AuditRecord(**values)


def test_a_record_round_trips_with_every_field(audit):
    log, _ = audit
    written = log.write(
        record(
            actions=("enable-setting:WDATP", "install:MDE.Linux"),
            applied=True,
            platform="ubuntu-22.04",
            os="linux",
            install_code=10,
            install_state="Failed",
            hint="h",
            event_id="e",
            correlation_id="c",
            run_id="r",
            duration_ms=12,
        )
    )
    [read] = log.for_vm(VM)
    assert read == written


def test_each_record_is_stored_under_the_vm_and_the_day(audit):
    log, table = audit
    written = log.write(record())
    partitions = sorted(entity["PartitionKey"] for entity in table.list_entities())
    assert partitions == sorted([vm_partition(VM), day_partition(written.time)])


def test_vm_history_is_newest_first_and_only_that_vm(audit):
    log, _ = audit
    now = datetime.now(UTC)
    for minutes in (30, 10, 20):
        log.write(record(when=now - timedelta(minutes=minutes), reason=f"{minutes}"))
    log.write(record(vm=OTHER))
    assert [r.reason for r in log.for_vm(VM)] == ["10", "20", "30"]
    assert [r.reason for r in log.for_vm(VM, limit=2)] == ["10", "20"]
    assert log.for_vm(VM.upper())[0].reason == "10"  # ARM ids are case-insensitive


def test_since_reads_only_the_window_across_days(audit):
    log, _ = audit
    now = datetime.now(UTC)
    for hours in (1, 23, 25, 49):
        log.write(record(when=now - timedelta(hours=hours), reason=f"{hours}h"))
    recent = [r.reason for r in log.since(now - timedelta(hours=24))]
    assert recent == ["1h", "23h"]
    assert [
        r.reason for r in log.since(now - timedelta(hours=48), until=now - timedelta(hours=2))
    ] == ["23h", "25h"]


def test_reinstalls_are_counted_since_the_last_success(audit):
    log, _ = audit
    now = datetime.now(UTC)
    states = ["Failed", "Succeeded", "Failed", "", "Failed"]  # oldest first
    for index, state in enumerate(states):
        log.write(record(when=now - timedelta(minutes=10 - index), install_state=state))
    assert log.reinstalls_since_success(VM) == 2
    assert log.reinstalls_since_success(OTHER) == 0


def test_every_record_is_one_operator_log_line(audit, caplog):
    log, _ = audit
    with caplog.at_level(logging.INFO, logger="remediation"):
        log.write(record(decision="blocked", outcome="failed", hint="set X=true"))
    [line] = caplog.records
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(f"vm={VM} sub=")
    assert "decision=blocked" in line.getMessage()
    assert "hint='set X=true'" in line.getMessage()


# What handle-event --json and sweep --json promise for every decision (issue 4).
PROMISED_FIELDS = {
    "vm",
    "subscription",
    "os",
    "platform",
    "decision",
    "reason",
    "actions",
    "applied",
    "mode",
    "outcome",
}


def test_json_form_has_the_fields_the_cli_promises():
    value = record(os="linux", platform="ubuntu-22.04").to_json()
    assert set(value) >= PROMISED_FIELDS
    assert isinstance(value["actions"], list)
