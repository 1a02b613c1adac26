"""Reliability and security: secrets never leave the pipeline, the role equals what the
code does, and under injected faults nothing is lost and nothing is done twice."""

import json
import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from localazure import Faults, Subscription
from localazure.compute import vm_json
from localazure.estate import ARC_CATALOGUE, arc_machine
from remediation.classify import Support, classify
from remediation.config import load
from remediation.facts import facts_from_arm
from remediation.model import Power
from tests.conftest import APP, SUB, generated_estate
from tests.test_service import ENFORCE, estate, new_vm

ROOT = Path(__file__).resolve().parent.parent


def _scenario(world):
    """Events, queued installs, an enforce sweep, the report: the whole job."""
    events = []
    for name, image in [
        ("s-linux", "ubuntu"),
        ("s-win", "ws2022"),
        ("s-2012", "ws2012r2"),
        ("s-desk", "win11"),
    ]:
        events += world.plane.create_vm(new_vm(name, image))
    world.deliver(*events)
    world.run_queue()
    world.post("sweep")
    world.run_sweeps()
    world.run_queue()
    return world.get("report").get_body().decode()


def test_packages_keys_and_tokens_appear_nowhere(world_factory, monkeypatch, caplog):
    from remediation import bootstrap

    world = world_factory(generated_estate(60, 2, seed=51), **ENFORCE)
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_ENDPOINT", f"{world.plane.url}/api/events")
    monkeypatch.setenv("REMEDIATION_NOTIFY_TOPIC_KEY", world.plane.topic_key)
    bootstrap.services.cache_clear()
    world.plane.estate.add_subscription(Subscription(SUB))
    for number, image in enumerate(ARC_CATALOGUE[:8]):  # Arc installs carry packages too
        world.plane.estate.add_vm(arc_machine(image, SUB, "rg-arc", f"arc-{number}"))
    monkeypatch.setenv("REMEDIATION_SUBSCRIPTIONS", ",".join(world.plane.estate.subscriptions))
    bootstrap.services.cache_clear()
    messages = []
    original = world.services.queue.queue.send_message
    monkeypatch.setattr(
        world.services.queue.queue,
        "send_message",
        lambda text, **kw: (messages.append(text), original(text, **kw))[1],
    )
    with caplog.at_level(logging.DEBUG):
        report = _scenario(world)
        token = world.services.arm._token()
    secrets = {
        "client secret": APP.secret,
        "topic key": world.plane.topic_key,
        "access token": token,
        "token signature": token.rsplit(".", 1)[1],
    }
    for subscription in world.plane.estate.subscriptions.values():
        secrets[f"windows package {subscription.id}"] = subscription.onboarding_windows
        secrets[f"linux package {subscription.id}"] = subscription.onboarding_linux
    secrets["decoded package"] = "MDE-ONBOARDING-"
    rows = json.dumps([dict(e) for e in world.services.audit.table.list_entities()], default=str)
    places = {
        "log records": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
        ),
        "audit rows": rows,
        "queue messages": "\n".join(messages),
        "report": report,
        "notifications": json.dumps(world.plane.published),
        "settings repr": repr(world.services.settings),
    }
    assert messages, "the scenario queued installs"
    assert world.plane.log.count("Microsoft.HybridCompute/machines/extensions/write") >= 4
    assert len(caplog.records) > 100
    leaks = [
        (secret, place)
        for secret, value in secrets.items()
        for place, text in places.items()
        if value in text
    ]
    assert leaks == []


def test_the_custom_role_equals_what_the_app_does(world_factory):
    world = world_factory(
        estate(), REMEDIATION_ALLOW_PLAN_CHANGE="true", REMEDIATION_MODE="enforce"
    )
    _scenario(world)
    world.deliver(
        *world.plane.create_vm(new_vm("s-free", vm_pricing="Free"))
    )  # the VM-level pricing read
    world.run_queue()
    # Arc machines: installs followed through Location (the spec), then Azure-AsyncOperation:
    # queued installs, which wait for the operation (an event's PUT does not poll it).
    from remediation.queues import InstallRequest

    for name, async_header in (("s-arc", False), ("s-arc-2", True)):
        world.plane.arc_async_operation = async_header
        machine = arc_machine(ARC_CATALOGUE[6], SUB, "rg-arc", name)
        world.plane.create_machine(machine)
        world.services.queue.send(InstallRequest(vm=machine.id, trigger="cli"))
        world.run_queue()
    _test_alert(world)  # what allowTestAlert adds: Run Command, alert read and dismiss
    performed = {
        item.operation
        for item in world.plane.log.arm()
        if item.principal == APP.object_id and item.status < 400
    }
    sets = json.loads((ROOT / "infra" / "role-actions.json").read_text())
    granted = {
        action
        for name in ("readAndInstall", "plan", "settings", "testAlert")
        for action in sets[name]
        # the doctor's Event Grid and permission reads are test_deploy.py's; Resource
        # Graph checks subscriptions/read itself (test_estate_e2e.py)
        if not action.startswith(("Microsoft.EventGrid/", "Microsoft.Authorization/"))
        and action != "Microsoft.Resources/subscriptions/read"
    }
    # The custom role grants the settings writes too (enableIntegration, the default).
    assert performed == granted


def _test_alert(world):
    """A test alert run to its end with dismissal, as deployed with allowTestAlert=true."""
    from localazure.estate import TEST_ALERT_ROLE
    from localazure.host import run_queue
    from remediation import testalert

    for principal in world.plane.estate.principals.values():
        principal.actions = [*principal.actions, *TEST_ALERT_ROLE]
    world.plane.test_alert_seconds = 0
    for name, value in {
        "REMEDIATION_ALLOW_TEST_ALERT": "true",
        "REMEDIATION_DISMISS_TEST_ALERTS": "true",
    }.items():
        world.environment[name] = value
    services = world.worker()
    vm = next(
        vm
        for vm in world.plane.estate.vms.values()
        if vm.power == "running"
        and vm.mde_device == "active"
        and any(e.type == "MDE.Linux" and e.state == "Succeeded" for e in vm.extensions.values())
    )
    test = testalert.begin(services, vm.id, "cli")
    run_queue(
        services.tests,
        lambda message: testalert.handle(services, message.get_body().decode()),
        lambda message: testalert.handle_poison(services, message.get_body().decode()),
    )
    assert testalert.get(services, test.test_id).status == "verified"


def _eligible(plane, settings):
    for vm in plane.estate.vms.values():
        c = classify(facts_from_arm(vm_json(vm, True)), settings.exclude_tag)
        if (
            c.support in {Support.SUPPORTED, Support.UNIFIED}
            and c.power is Power.RUNNING
            and not c.opt_out
            and not c.managed
        ):
            yield vm


@pytest.mark.chaos
def test_under_faults_nothing_is_lost_and_nothing_is_done_twice(world_factory):
    size = int(os.environ.get("CHAOS_VMS", "150"))
    faults = Faults(error_rate=0.10, drop_rate=0.05, seed=7)
    world = world_factory(
        generated_estate(size, 2, seed=52),
        plane_options={"faults": faults, "writes": (30, 5.0), "lro_seconds": 0.05},
        REMEDIATION_MAX_ACTIONS_PER_SWEEP="100000",
        REMEDIATION_RETRY_BUDGET_SECONDS="5",
        REMEDIATION_INSTALL_COOLDOWN_SECONDS="0",
        **ENFORCE,
    )
    settings = load(world.environment)
    faults.add("PUT", "/extensions/MDE\\.", 409, count=size // 10)  # conflicts on installs
    events = []
    subscriptions = sorted(world.plane.estate.subscriptions)
    for index in range(size // 5):
        vm = new_vm(f"chaos-{index:03d}", "ubuntu" if index % 2 else "ws2022")
        vm.subscription = subscriptions[index % 2]
        events += world.plane.create_vm(vm)
    sleeping = [vm for vm in world.plane.estate.vms.values() if vm.power == "deallocated"][:10]
    events += [world.plane.set_power(vm.id, "running") for vm in sleeping]
    delivered = world.deliver(*events)
    assert len(delivered) == len(events)  # one record per delivery
    world.run_queue()
    rounds = 0
    while True:  # sweeps find what faults left behind; each VM is assessed once a run
        rounds += 1
        response = json.loads(world.post("sweep").get_body())
        world.run_sweeps()
        world.run_queue()
        rows = [
            r
            for r in world.audit_records()
            if r.run_id == response["run_id"] and r.trigger == "http"
        ]
        assert len(rows) == len({r.vm.lower() for r in rows})  # a row a change, once
        done = world.services.runs.get(response["run_id"])
        assert done.summary["vms"] == len(world.plane.estate.vms)
        # Each VM's record of this run: its row, or, in a subscription the run assessed
        # completely, its unchanged state (the baseline): never neither.
        states = {
            vm: state
            for subscription in done.summary["assessed"]
            for vm, state in world.services.audit.baselines.read(subscription).items()
        } | {r.vm.lower(): r for r in rows}
        assert set(states) == set(world.plane.estate.vms)
        if all(state.decision != "install" for state in states.values()) or rounds == 4:
            break
    missing = [
        vm.name
        for vm in _eligible(world.plane, settings)
        if not any(
            e.state == "Succeeded" and e.type.startswith("MDE.") for e in vm.extensions.values()
        )
    ]
    injected = Counter(
        item.status for item in world.plane.log.items() if item.code == "InjectedFault"
    )
    in_flight = [item for item in world.plane.log.items() if item.code == "Conflict"]
    print(
        f"\nchaos: {size} VMs, {len(events)} events, {rounds} sweeps, injected {dict(injected)}, dropped connections {world.plane.log.count(status=0)}, throttled {world.plane.log.count(status=429)}"
    )
    assert missing == []
    assert in_flight == []  # never a second PUT while one was in flight for a VM
    assert injected[500] + injected[503] > 0
    terminal = {
        "ignored",
        "none",
        "reported",
        "applied",
        "queued",
        "started",  # an event's PUT; its watch writes the install's own record
        "unavailable",  # ARM did not answer and no claim could be taken
        "duplicate",
        "succeeded",
        "failed",
        "deferred",
        "skipped",
        "poisoned",
    }
    assert {r.outcome for r in world.audit_records()} <= terminal
