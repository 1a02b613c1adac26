"""Notifications to an Event Grid custom topic (the local plane's, on loopback HTTPS),
and the remediation log's retention."""

import json
import logging
from datetime import UTC, datetime, timedelta

from remediation.audit import AuditRecord
from tests.conftest import SUB, generated_estate
from tests.test_service import ENFORCE, estate, new_vm


def test_failures_blocks_and_sweeps_are_published_with_the_key_and_no_secrets(
    world_factory, monkeypatch
):
    from remediation import bootstrap

    world = world_factory(estate("ready"), **ENFORCE)
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", f"{world.plane.url}/api/events")
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_KEY", world.plane.topic_key)
    bootstrap.services.cache_clear()
    world.deliver(*world.plane.create_vm(new_vm("fails-1", mde_failure=10)))
    world.run_queue()
    world.post("sweep")
    world.run_sweeps()
    types = [event["eventType"] for event in world.plane.published]
    assert types.count("Remediation.InstallFailed") == 1
    assert types.count("Remediation.SweepCompleted") == 1
    failed = next(e for e in world.plane.published if e["eventType"] == "Remediation.InstallFailed")
    assert failed["subject"] == new_vm("fails-1").id
    assert failed["data"]["code"] == 10
    assert failed["dataVersion"] == "1.0"
    text = json.dumps(world.plane.published)
    assert world.plane.estate.subscriptions[SUB].onboarding_linux not in text
    assert world.plane.topic_key not in text
    sweep = next(e for e in world.plane.published if e["eventType"] == "Remediation.SweepCompleted")
    assert sweep["data"]["vms"] == 1


def test_a_blocked_event_is_published(world_factory, monkeypatch):
    from remediation import bootstrap
    from tests.conftest import READER

    world = world_factory(estate(), principal=READER, **ENFORCE)
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", f"{world.plane.url}/api/events")
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_KEY", world.plane.topic_key)
    bootstrap.services.cache_clear()
    world.deliver(*world.plane.create_vm(new_vm("blocked-1")))
    assert world.plane.published == []  # the event only queues; the queue is refused
    world.run_queue()
    assert {e["eventType"] for e in world.plane.published} == {"Remediation.Blocked"}


def test_a_topic_that_refuses_never_stops_a_remediation(world_factory, monkeypatch, caplog):
    from remediation import bootstrap

    world = world_factory(estate("ready"), **ENFORCE)
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", f"{world.plane.url}/api/events")
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_KEY", "d3JvbmcK")
    bootstrap.services.cache_clear()
    with caplog.at_level(logging.WARNING, logger="remediation"):
        world.deliver(*world.plane.create_vm(new_vm("fails-2", mde_failure=10)))
        world.run_queue()
    assert world.plane.published == []
    assert any("was not published" in r.getMessage() for r in caplog.records)
    assert "d3JvbmcK" not in caplog.text
    assert [r.outcome for r in world.audit_records() if r.trigger == "queue"] == ["failed"]


def test_retention_purges_old_records_when_a_sweep_finishes(world_factory):
    world = world_factory(generated_estate(5, 1, seed=41), REMEDIATION_AUDIT_RETENTION_DAYS="30")
    vm = next(iter(world.plane.estate.vms.values())).id
    base = {
        "vm": vm,
        "subscription": vm.split("/")[2],
        "trigger": "event",
        "decision": "install",
        "reason": "old",
        "mode": "report",
        "outcome": "reported",
    }
    now = datetime.now(UTC)
    for days in (45, 31, 29):
        world.services.audit.write(
            AuditRecord(**base | {"time": now - timedelta(days=days), "reason": f"{days}d"})
        )
    world.post("sweep")
    world.run_sweeps()
    reasons = [r.reason for r in world.services.audit.for_vm(vm)]
    assert "29d" in reasons
    assert "31d" not in reasons
    assert "45d" not in reasons
    assert [
        r.reason
        for r in world.services.audit.since(now - timedelta(days=60))
        if r.reason.endswith("d")
    ] == ["29d"]
