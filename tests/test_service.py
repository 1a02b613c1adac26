"""The event path end to end: Event Grid deliveries through the real function objects
of function_app.app, the install queue through Azurite, ARM through the local plane."""

import json
import threading
import time

import pytest

from localazure import Estate, Principal, Subscription, Vm
from localazure.estate import FORTIGATE, UBUNTU_2204, WIN11_ENT, WS2012R2, WS2022, mde_extension
from remediation import handlers
from remediation.queues import InstallRequest
from tests.conftest import APP, READER, SUB

ENFORCE = {"REMEDIATION_MODE": "enforce", "REMEDIATION_ALLOW_PLAN_CHANGE": "true"}
IMAGES = {
    "ubuntu": UBUNTU_2204,
    "ws2022": WS2022,
    "ws2012r2": WS2012R2,
    "win11": WIN11_ENT,
    "fortigate": FORTIGATE,
}


def estate(posture="bare", principals=(APP, READER)) -> Estate:
    result = Estate()
    for principal in principals:
        result.add_principal(Principal(**vars(principal)))
    subscription = Subscription(SUB)
    if posture == "ready":
        subscription.pricing_tier, subscription.sub_plan = "Standard", "P1"
        subscription.settings = {
            "WDATP": True,
            "WDATP_UNIFIED_SOLUTION": True,
            "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": False,
        }
    result.add_subscription(subscription)
    return result


def new_vm(name, image="ubuntu", **changes) -> Vm:
    return IMAGES[image].vm(SUB, "rg-app", name, **changes)


def mde_state(world, name):
    vm = world.plane.estate.vm(new_vm(name).id)
    extension = vm.extensions.get("mde.linux") or vm.extensions.get("mde.windows")
    return extension.state if extension else None


@pytest.mark.parametrize(
    ("image", "extension"), [("ubuntu", "MDE.Linux"), ("ws2022", "MDE.Windows")]
)
def test_a_created_vm_is_covered_end_to_end(world_factory, image, extension):
    world = world_factory(estate(), **ENFORCE)
    events = world.plane.create_vm(new_vm("app-1", image))
    records = world.deliver(*events)
    assert [r.outcome for r in records] == ["queued", "duplicate"]  # one deployment, two writes
    first = records[0]
    assert first.decision == "install"
    assert f"install:{extension}" in first.actions
    assert "enable-plan:P1" in first.actions
    assert "enable-setting:WDATP" in first.actions
    subscription = world.plane.estate.subscriptions[SUB]
    # The event only reads and queues (Event Grid waits 30 s); the queue writes.
    assert world.plane.log.count(method="PUT") == 0
    world.run_queue()
    assert (subscription.pricing_tier, subscription.sub_plan, subscription.settings["WDATP"]) == (
        "Standard",
        "P1",
        True,
    )
    assert mde_state(world, "app-1") == "Succeeded"
    assert world.extension_puts() == 1
    [installed] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert (installed.outcome, installed.install_state, installed.applied) == (
        "succeeded",
        "Succeeded",
        True,
    )
    assert installed.event_id == first.event_id
    history = world.services.audit.for_vm(new_vm("app-1").id)
    assert [r.outcome for r in history] == ["succeeded", "duplicate", "queued"]  # newest first


def test_with_the_posture_ready_the_event_function_puts_and_the_queue_watches(world_factory):
    world = world_factory(estate("ready"), plane_options={"lro_seconds": 1.5}, **ENFORCE)
    events = world.plane.create_vm(new_vm("fast-1"))
    records = world.deliver(*events)
    assert [(r.decision, r.outcome, r.applied) for r in records] == [
        ("install", "started", True),
        ("defer", "duplicate", False),  # the second write sees our install in progress
    ]
    # The PUT left from the event function, which did not wait for it (no operation poll).
    assert world.extension_puts() == 1
    assert mde_state(world, "fast-1") in {"Creating", "InProgress"}
    assert not [i for i in world.plane.log.items() if "/operations/" in i.path.lower()]
    world.run_queue()  # the watch message, delayed REMEDIATION_RECHECK_SECONDS
    assert mde_state(world, "fast-1") == "Succeeded"
    assert world.extension_puts() == 1  # the watch never PUTs again
    history = world.services.audit.for_vm(new_vm("fast-1").id)
    assert [(r.trigger, r.outcome) for r in history] == [
        ("queue", "succeeded"),
        ("event", "duplicate"),
        ("event", "started"),
    ]
    assert history[0].event_id == records[0].event_id  # the watch closes the event's story
    assert history[0].install_state == "Succeeded"


def test_the_watch_names_an_extension_that_went_failed_while_ours_ran(world_factory):
    from localazure.estate import Extension

    world = world_factory(estate("ready"), plane_options={"lro_seconds": 1.5}, **ENFORCE)
    vm = new_vm("blocked-later", mde_failure=10)
    [first, _] = world.deliver(*world.plane.create_vm(vm))
    assert first.outcome == "started"
    # While the install runs, another extension on the VM goes Failed.
    world.plane.estate.vm(vm.id).extensions["omsagentforlinux"] = Extension(
        "OmsAgentForLinux",
        "Microsoft.EnterpriseCloud.Monitoring",
        "OmsAgentForLinux",
        state="Failed",
    )
    world.run_queue()
    [watched] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert (watched.decision, watched.outcome) == ("blocked", "failed")
    assert "extension 'OmsAgentForLinux' is Failed" in watched.reason
    assert "repair or remove the extension 'OmsAgentForLinux'" in watched.hint
    assert world.extension_puts() == 1


def test_windows_server_2012_r2_gets_the_unified_solution_setting(world_factory):
    world = world_factory(estate(), **ENFORCE)
    [record, _] = world.deliver(*world.plane.create_vm(new_vm("legacy-1", "ws2012r2")))
    assert "enable-setting:WDATP_UNIFIED_SOLUTION" in record.actions
    world.run_queue()
    assert world.plane.estate.subscriptions[SUB].settings["WDATP_UNIFIED_SOLUTION"] is True
    assert mde_state(world, "legacy-1") == "Succeeded"


def test_single_session_windows_is_unsupported_and_never_touched(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    [record, _] = world.deliver(*world.plane.create_vm(new_vm("desk-1", "win11")))
    assert (record.decision, record.outcome, record.platform) == (
        "unsupported",
        "none",
        "windows-client",
    )
    assert "Intune" in record.hint
    world.run_queue()
    assert world.extension_puts() == 0


@pytest.mark.parametrize(
    ("vm", "mentions"),
    [
        (new_vm("fw-1", "fortigate"), "Fortinet"),
        (new_vm("opt-1", tags={"defender-remediation-exclude": "true"}), "opted out"),
        (new_vm("node-1", resource_group="MC_rg_aks_westeurope"), "AKS"),
    ],
)
def test_appliances_managed_and_opted_out_vms_are_excluded(world_factory, vm, mentions):
    world = world_factory(estate("ready"), **ENFORCE)
    [record, _] = world.deliver(*world.plane.create_vm(vm))
    assert record.decision == "exclude"
    assert mentions in record.reason
    assert world.writes() == []


def test_vm_level_pricing_free_is_honoured_before_any_install(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    [record, duplicate] = world.deliver(*world.plane.create_vm(new_vm("free-1", vm_pricing="Free")))
    # Before it starts an install the event function reads the VM's pricing: Free opts out.
    assert (record.decision, record.outcome) == ("exclude", "skipped")
    assert "Free" in record.reason
    vm_pricing = "/virtualmachines/free-1/providers/microsoft.security/pricings/"
    assert any(vm_pricing in item.path.lower() for item in world.plane.log.items())
    assert duplicate.outcome == "duplicate"  # the claim's cooldown, as after a queued skip
    assert world.run_queue() == 0  # nothing queued
    assert world.extension_puts() == 0


def test_a_deallocated_vm_is_deferred_then_its_start_installs(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    vm = new_vm("sleepy-1", power="deallocated")
    [record, _] = world.deliver(*world.plane.create_vm(vm))
    assert (record.decision, record.outcome) == ("defer", "none")
    assert world.writes() == []
    [started] = world.deliver(world.plane.set_power(vm.id, "running"))
    assert (started.decision, started.outcome) == ("install", "started")
    world.run_queue()
    assert mde_state(world, "sleepy-1") == "Succeeded"


def test_twenty_duplicate_events_on_two_workers_install_once(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    [event, _] = world.plane.create_vm(new_vm("burst-1"))
    workers = [world.worker(), world.worker()]
    records, lock = [], threading.Lock()

    def deliver(worker):
        for _ in range(10):
            record = handlers.handle_event(worker, json.loads(json.dumps(event)))
            with lock:
                records.append(record)

    threads = [threading.Thread(target=deliver, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.outcome for r in records).count("started") == 1
    assert len(records) == 20
    assert world.extension_puts() == 1  # issued by the event function that won the claim
    world.run_queue()
    assert world.extension_puts() == 1
    assert mde_state(world, "burst-1") == "Succeeded"


def test_events_our_own_writes_cause_start_nothing(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    created = world.plane.create_vm(new_vm("loop-1"))
    world.deliver(*created)
    world.run_queue()
    delivered = {event["id"] for event in created}  # the deployment's own events
    ours = [e for e in world.plane.drain_events() if e["id"] not in delivered]
    assert any(e["data"]["operationName"].endswith("extensions/write") for e in ours)
    puts_before = world.extension_puts()
    records = world.deliver(*ours)
    assert {r.decision for r in records} == {"ignored"}
    world.run_queue()
    assert world.extension_puts() == puts_before


def test_a_vm_write_by_our_own_identity_is_ignored(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    [record, _] = world.deliver(*world.plane.create_vm(new_vm("self-1"), caller=APP))
    assert (record.decision, record.outcome) == ("ignored", "ignored")
    assert "loop guard" in record.reason
    assert world.plane.log.count("Microsoft.Compute/virtualMachines/read") == 0


def test_report_mode_writes_nothing_in_any_scenario(world_factory):
    world = world_factory(estate(), REMEDIATION_MODE="report", REMEDIATION_ALLOW_PLAN_CHANGE="true")
    events = []
    for name, image, changes in [
        ("r-linux", "ubuntu", {}),
        ("r-win", "ws2022", {}),
        ("r-2012", "ws2012r2", {}),
        ("r-desk", "win11", {}),
        ("r-fw", "fortigate", {}),
        ("r-off", "ubuntu", {"power": "deallocated"}),
    ]:
        events += world.plane.create_vm(new_vm(name, image, **changes))
    events.append(world.plane.set_power(new_vm("r-off").id, "running"))
    records = world.deliver(*events)
    assert len(records) == len(events)
    assert all(not r.applied for r in records)
    assert {r.outcome for r in records} <= {"reported", "none", "ignored"}
    assert "reported" in {r.outcome for r in records}
    assert world.run_queue() == 0
    assert world.writes() == []


def test_forbidden_settings_are_blocked_naming_security_admin(world_factory):
    world = world_factory(estate(), principal=READER, **ENFORCE)
    [record, _] = world.deliver(*world.plane.create_vm(new_vm("guarded-1")))
    assert (record.decision, record.outcome) == ("install", "queued")
    assert world.run_queue() == 1
    [refused] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert (refused.decision, refused.outcome) == ("blocked", "failed")
    assert "Security Admin" in refused.hint
    assert world.extension_puts() == 0


def test_a_429_storm_ends_installed_with_nothing_lost(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    vm = new_vm("storm-1")
    events = world.plane.create_vm(vm)
    # A 1 ms retry-after keeps the storm fast; honouring a real wait is test_arm.py's.
    world.plane.faults.add(
        "GET", "/virtualMachines/storm-1$", 429, count=8, **{"x-ms-retry-after-ms": "1"}
    )
    world.plane.faults.add(
        "PUT", "/extensions/MDE.Linux$", 429, count=8, **{"x-ms-retry-after-ms": "1"}
    )
    records = world.deliver(*events)
    assert len(records) == 2
    world.run_queue()
    assert mde_state(world, "storm-1") == "Succeeded"
    assert world.plane.log.count(status=429) >= 8
    outcomes = [r.outcome for r in world.audit_records()]
    assert "succeeded" in outcomes
    assert "poisoned" not in outcomes


def test_exhausted_retries_reach_the_poison_queue_and_the_audit(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    # A 1 ms retry-after: the retries happen at once instead of in real backoff.
    world.plane.faults.add(
        "PUT", "/extensions/MDE.Linux$", 503, count=10_000, **{"x-ms-retry-after-ms": "1"}
    )
    [first, _] = world.deliver(*world.plane.create_vm(new_vm("doomed-1")))
    # The event function's PUT failed every retry: the install queue takes it over.
    assert (first.decision, first.outcome) == ("install", "queued")
    world.run_queue()
    [poisoned] = [r for r in world.audit_records() if r.outcome == "poisoned"]
    assert poisoned.decision == "error"
    assert "503" in poisoned.reason
    assert mde_state(world, "doomed-1") is None


def test_a_failed_install_is_audited_with_its_code_and_hint(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    vm = new_vm("odd-1", mde_failure=10)
    world.deliver(*world.plane.create_vm(vm))
    world.run_queue()
    [install] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert (install.decision, install.outcome, install.install_code) == ("error", "failed", 10)
    assert "unsupported distribution" in install.hint


def test_an_installer_that_died_mid_operation_is_safe_to_run_again(world_factory):
    world = world_factory(estate("ready"), plane_options={"lro_seconds": 1.5}, **ENFORCE)
    vm = new_vm("crash-1")
    world.plane.create_vm(vm)
    world.services.queue.send(InstallRequest(vm=vm.id, trigger="cli"))  # a queued install
    message = world.services.queue.queue.receive_messages(visibility_timeout=1).next()
    # The first installer PUT the extension, then died before it could wait or audit.
    facts = world.services.arm.vm_facts(
        __import__("remediation.model", fromlist=["VmRef"]).VmRef.parse(vm.id)
    )
    package = world.services.arm.onboarding_package(SUB, "MDE.Linux")
    compute = world.services.arm._compute_client(SUB)
    from azure.mgmt.compute.models import VirtualMachineExtension, VirtualMachineExtensionProperties

    compute.virtual_machine_extensions.begin_create_or_update(
        "rg-app", "crash-1", "MDE.Linux",
        VirtualMachineExtension(location=facts.location, properties=VirtualMachineExtensionProperties(
            publisher="Microsoft.Azure.AzureDefenderForServers", type="MDE.Linux", type_handler_version="1.0",
            settings={"azureResourceId": vm.id}, protected_settings={"defenderForEndpointOnboardingScript": package})),
    )  # fmt: skip
    assert message.dequeue_count == 1
    world.run_queue(visibility_seconds=1)
    assert mde_state(world, "crash-1") == "Succeeded"
    [install] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert install.decision == "compliant"
    assert world.extension_puts() == 1  # the retry re-read the VM instead of a second PUT


def test_malformed_queue_messages_are_audited_not_retried(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    for text in [
        "not json",
        "{}",
        json.dumps({"schema": "mde-install/9", "vm": "x"}),
        json.dumps({"schema": "mde-install/1", "vm": "/subscriptions/x/../y"}),
    ]:
        world.services.queue.queue.send_message(text)
    world.run_queue()
    records = world.audit_records()
    assert len(records) == 4
    assert {r.decision for r in records} == {"error"}
    assert world.writes() == []


def test_existing_failed_mde_is_reinstalled_a_bounded_number_of_times(world_factory):
    world = world_factory(
        estate("ready"),
        REMEDIATION_MAX_REINSTALLS="1",
        REMEDIATION_INSTALL_COOLDOWN_SECONDS="0",
        **ENFORCE,
    )
    vm = new_vm("flaky-1", mde_failure=31)
    vm.extensions["mde.linux"] = mde_extension(vm, "Failed", 31)
    world.plane.create_vm(vm)
    start = world.plane.set_power(vm.id, "running")
    [first] = world.deliver(start)
    assert first.actions == ("reinstall:MDE.Linux",)
    world.run_queue()
    [second] = world.deliver(start)
    assert (second.decision, second.outcome) == ("error", "none")
    assert "code 31" in second.reason
    assert world.extension_puts() == 1


def test_the_queue_honours_report_mode_too(world_factory):
    from remediation.queues import InstallRequest

    world = world_factory(estate("ready"), REMEDIATION_MODE="report")
    world.plane.create_vm(new_vm("queued-1"))
    world.services.queue.send(InstallRequest(vm=new_vm("queued-1").id, trigger="cli"))
    world.run_queue()
    [record] = world.audit_records()
    assert (record.decision, record.outcome, record.applied) == ("install", "reported", False)
    assert world.writes() == []


def test_queue_messages_never_carry_the_onboarding_package(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    world.deliver(*world.plane.create_vm(new_vm("secret-1")))  # PUT, then a watch message
    world.deliver(*world.plane.create_vm(new_vm("secret-2", "ws2022")))
    world.services.queue.send(InstallRequest(vm=new_vm("secret-3").id, trigger="cli"))
    world.plane.create_vm(new_vm("secret-3"))
    subscription = world.plane.estate.subscriptions[SUB]
    packages = [subscription.onboarding_linux, subscription.onboarding_windows]
    # Read every message, the delayed watch messages too, and put them back.
    texts = [m.content for m in world.services.queue.queue.receive_messages(visibility_timeout=1)]
    deadline = time.monotonic() + 10
    while len(texts) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        more = world.services.queue.queue.receive_messages(visibility_timeout=1)
        texts += [m.content for m in more if m.content not in texts]
    assert len(texts) == 3
    assert all(package not in text for text in texts for package in packages)
    world.run_queue()
    records = [json.dumps(r.to_json()) for r in world.audit_records()]
    assert all(package not in record for record in records for package in packages)


def test_enforcing_on_linux_includes_linux_and_reads_the_vm_pricing_before_paying(world_factory):
    world = world_factory(estate(), **ENFORCE)
    vm = new_vm("penguin-1")
    world.deliver(*world.plane.create_vm(vm))
    world.run_queue()
    settings = world.plane.estate.subscriptions[SUB].settings
    # WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW is inverted: false means Linux is included.
    assert (settings["WDATP"], settings["WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW"]) == (True, False)
    pricing = [
        (item.method, item.path)
        for item in world.plane.log.items()
        if item.operation.startswith("Microsoft.Security/pricings/")
    ]
    vm_scope = f"{vm.id}/providers/Microsoft.Security/pricings/VirtualMachines"
    first_write = next(i for i, (method, _) in enumerate(pricing) if method == "PUT")
    assert ("GET", vm_scope) in pricing[:first_write]  # the VM's own opt-out was read first
    assert mde_state(world, "penguin-1") == "Succeeded"
