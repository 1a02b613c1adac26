"""Azure's answers as they really come (docs/fidelity.md), end to end: Event Grid
deliveries and the install queue through the real function objects, ARM through the
local plane, the queue and the log through Azurite."""

import requests

from localazure import Extension, Principal, Vm
from localazure.compute import COMPUTE_API
from localazure.estate import MDE_PUBLISHER
from tests.conftest import APP, SUB
from tests.test_service import ENFORCE, estate, mde_state, new_vm

EXTENSION_WRITE = "Microsoft.Compute/virtualMachines/extensions/write"
DEFENDER_FOR_CLOUD = Principal(
    client_id="a0000000-0000-4000-8000-0000000000dc",
    secret="mdc-secret-not-a-real-one",
    object_id="0b1e5c7e-0000-4000-8000-0000000000dc",
    name="defender-for-cloud",
)


def queue_records(world):
    return [r for r in world.audit_records() if r.trigger == "queue"]


def put_as(world, principal, vm, name, body):
    """A PUT by someone else (Defender for Cloud, an operator), straight to ARM."""
    from tests.test_localazure import token

    session = requests.Session()
    session.verify = world.plane.ca_path
    session.headers["Authorization"] = f"Bearer {token(world.plane, principal)}"
    answer = session.put(
        f"{world.plane.url}{vm.id}/extensions/{name}",
        params={"api-version": COMPUTE_API},
        json=body,
    )
    assert answer.ok, answer.text
    return answer


def mde_body(world, vm):
    return {
        "location": vm.location,
        "properties": {
            "publisher": MDE_PUBLISHER,
            "type": "MDE.Linux",
            "typeHandlerVersion": "1.0",
            "settings": {"azureResourceId": vm.id},
            "protectedSettings": {
                "defenderForEndpointOnboardingScript": world.plane.estate.subscriptions[
                    SUB
                ].onboarding_linux
            },
        },
    }


def test_a_failed_install_takes_its_code_from_the_instance_view(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    world.deliver(*world.plane.create_vm(new_vm("odd-1", mde_failure=10)))
    world.run_queue()
    [install] = queue_records(world)
    assert (install.decision, install.outcome, install.install_state, install.install_code) == (
        "error",
        "failed",
        "Failed",
        10,
    )
    assert install.hint == "unsupported distribution: move to a supported one or onboard by hand"
    # The event function PUT it; the queue's watch read the end from the instance view.
    assert install.reason.startswith("MDE.Linux is Failed with code 10 after the install started")


def test_another_failed_extension_blocks_the_install_and_the_record_names_it(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    vm = new_vm("blocked-1")
    vm.extensions["omsagentforlinux"] = Extension(
        "OmsAgentForLinux",
        "Microsoft.EnterpriseCloud.Monitoring",
        "OmsAgentForLinux",
        state="Failed",
    )
    [first, _] = world.deliver(*world.plane.create_vm(vm))
    assert (first.decision, first.outcome) == ("blocked", "none")
    assert first.reason == (
        "MDE.Linux cannot be installed: Compute refuses new extensions while "
        "OmsAgentForLinux is Failed on the VM."
    )
    assert first.hint == (
        "repair or remove OmsAgentForLinux on the VM; the next sweep installs MDE.Linux then"
    )
    assert world.run_queue() == 0
    assert world.plane.log.count(EXTENSION_WRITE) == 0


def test_an_extension_that_fails_between_the_read_and_the_put_is_named(world_factory):
    """Compute's own 409 ("... since VM has extension 'X' in failed state"), for an
    extension that went Failed after the VM was read."""
    from remediation.model import BlockedByExtension, VmRef

    world = world_factory(estate("ready"), **ENFORCE)
    vm = new_vm("late-1")
    world.plane.create_vm(vm)
    arm = world.services.arm
    facts = arm.vm_facts(VmRef.parse(vm.id))
    vm.extensions["customscript"] = Extension(
        "CustomScript", "Microsoft.Azure.Extensions", "CustomScript", state="Failed"
    )
    try:
        arm.install_extension(facts, "MDE.Linux", arm.onboarding_package(SUB, "MDE.Linux"))
    except BlockedByExtension as error:
        assert (error.extension, error.status) == ("CustomScript", 409)
        assert error.hint == (
            "repair or remove the Failed extension 'CustomScript' on the VM; the next sweep "
            "installs MDE then"
        )
    else:
        raise AssertionError("the install was not refused")


def test_mde_under_another_name_is_reinstalled_under_that_name(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    vm = new_vm("renamed-1")
    vm.extensions["mdelinuxbypolicy"] = Extension(
        "MDELinuxByPolicy", MDE_PUBLISHER, "MDE.Linux", state="Failed", code=31
    )
    [queued, _] = world.deliver(*world.plane.create_vm(vm))
    assert queued.actions == ("reinstall:MDE.Linux",)
    world.run_queue()
    [put] = [r for r in world.plane.log.items() if r.method == "PUT"]
    assert (put.path.rsplit("/", 1)[1], put.status) == ("MDELinuxByPolicy", 200)
    assert world.plane.log.count(EXTENSION_WRITE, status=400) == 0
    assert world.plane.estate.vm(vm.id).extensions["mdelinuxbypolicy"].state == "Succeeded"
    [install] = queue_records(world)
    assert (install.outcome, install.install_state) == ("succeeded", "Succeeded")


def test_an_extension_of_defender_for_clouds_in_progress_is_rechecked_never_installed_twice(
    world_factory,
):
    plane_estate = estate("ready")
    plane_estate.add_principal(Principal(**vars(DEFENDER_FOR_CLOUD)))
    world = world_factory(plane_estate, plane_options={"lro_seconds": 2}, **ENFORCE)
    vm = new_vm("raced-1")
    world.plane.create_vm(vm)
    put_as(world, DEFENDER_FOR_CLOUD, vm, "MDE.Linux", mde_body(world, vm))
    start = world.plane.set_power(vm.id, "running")
    [event] = world.deliver(start)
    assert (event.decision, event.outcome) == ("defer", "queued")
    assert event.reason == (
        "An MDE.Linux operation is in progress (this app's or Defender for Cloud's); it is "
        "checked again when it has had time to finish."
    )
    world.run_queue()
    [check] = queue_records(world)
    assert check.decision == "compliant"
    assert world.plane.log.count(EXTENSION_WRITE, principal=APP.object_id) == 0
    assert mde_state(world, "raced-1") == "Succeeded"


def test_another_operation_in_progress_is_a_recheck_not_stopped_and_one_install(world_factory):
    plane_estate = estate("ready")
    plane_estate.add_principal(Principal(**vars(DEFENDER_FOR_CLOUD)))
    world = world_factory(plane_estate, plane_options={"lro_seconds": 2}, **ENFORCE)
    vm = new_vm("busy-1")
    events = world.plane.create_vm(vm)
    script = {
        "location": vm.location,
        "properties": {
            "publisher": "Microsoft.Azure.Extensions",
            "type": "CustomScript",
            "typeHandlerVersion": "2.1",
            "settings": {},
        },
    }
    put_as(world, DEFENDER_FOR_CLOUD, vm, "CustomScript", script)  # holds the VM for 2 s
    world.deliver(*events)
    world.run_queue()
    ours = [
        r
        for r in world.plane.log.items()
        if r.operation == EXTENSION_WRITE and r.principal == APP.object_id
    ]
    # Refused while the other operation runs, checked again, then installed once.
    assert {r.status for r in ours[:-1]} == {409}
    assert [r.status for r in ours].count(201) == 1
    records = queue_records(world)
    assert [(r.decision, r.outcome) for r in records] == [("install", "succeeded")]
    assert all("stopped" not in r.reason for r in world.audit_records())


def test_a_new_vm_whose_guest_agent_is_not_ready_is_rechecked_then_installed(world_factory):
    world = world_factory(estate("ready"), plane_options={"agent_report_seconds": 2}, **ENFORCE)
    gallery = f"/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/ubuntu"
    vm = Vm(
        SUB,
        "rg-app",
        "gallery-1",
        image={"id": gallery},
        os_name="ubuntu",
        os_version="22.04",
    )
    [first, _] = world.deliver(*world.plane.create_vm(vm))
    assert (first.decision, first.outcome, first.platform) == ("defer", "queued", "linux-unknown")
    assert first.reason == (
        "The OS is not known yet: the guest agent is Not Ready (a new VM's agent reports "
        "within minutes)."
    )
    world.run_queue()
    [install] = queue_records(world)
    assert (install.decision, install.outcome, install.platform) == (
        "install",
        "succeeded",
        "ubuntu-22.04",
    )
    assert world.extension_puts() == 1


def test_an_install_that_outlasts_the_wait_is_checked_again_not_retried_or_poisoned(
    world_factory,
):
    world = world_factory(
        estate("ready"),
        plane_options={"lro_seconds": 3},
        REMEDIATION_INSTALL_TIMEOUT_SECONDS="1",
        **ENFORCE,
    )
    world.deliver(*world.plane.create_vm(new_vm("slow-1")))
    world.run_queue()
    [install] = queue_records(world)
    assert (install.decision, install.outcome, install.install_state, install.applied) == (
        "install",
        "succeeded",
        "Succeeded",
        True,
    )
    assert install.reason.startswith("MDE.Linux is Succeeded (installed from 20")
    assert world.extension_puts() == 1
    assert "poisoned" not in {r.outcome for r in world.audit_records()}


def test_on_vm_event_gives_up_within_its_budget_and_a_redelivery_writes_nothing(world_factory):
    world = world_factory(estate(), REMEDIATION_EVENT_BUDGET_SECONDS="1", **ENFORCE)
    vm = new_vm("throttled-1")
    [event, _] = world.plane.create_vm(vm)
    world.plane.faults.add(
        "GET", "/virtualMachines/throttled-1$", 429, count=1, **{"Retry-After": "60"}
    )
    [first] = world.deliver(event)
    assert (first.decision, first.outcome) == ("defer", "queued")
    assert "ARM asked to wait 60 s, more than the 1 s retry budget" in first.reason
    assert world.plane.log.count(status=429) == 1  # it did not sleep through Retry-After
    [again] = world.deliver(event)  # Event Grid delivers the same event again
    assert (again.decision, again.outcome) == ("install", "duplicate")
    assert world.writes() == []  # the event path never writes: the queue does
    world.run_queue()
    assert mde_state(world, "throttled-1") == "Succeeded"
    assert world.plane.log.count("Microsoft.Security/pricings/write") == 1


def test_a_sweep_right_after_an_install_does_not_install_again(world_factory):
    world = world_factory(estate("ready"), plane_options={"graph_lag_seconds": 3600}, **ENFORCE)
    world.plane.create_vm(new_vm("swept-1"))
    for _ in range(2):  # the second sweep still sees the Resource Graph copy without MDE
        assert world.post("sweep").status_code == 202
        world.run_sweeps()
        world.run_queue()
    assert world.extension_puts() == 1
    swept = [r for r in world.audit_records() if r.trigger == "http"]  # POST /api/sweep
    assert sorted(r.outcome for r in swept) == ["duplicate", "queued"]


def test_an_install_started_late_in_the_window_gets_a_window_of_its_own(world_factory):
    from datetime import UTC, datetime, timedelta

    from remediation.queues import InstallRequest

    world = world_factory(
        estate("ready"),
        plane_options={"lro_seconds": 2},
        REMEDIATION_INSTALL_TIMEOUT_SECONDS="1",
        **ENFORCE,
    )
    vm = new_vm("late-start-1")
    world.plane.create_vm(vm)
    # First asked for 61 minutes ago (a guest agent that took its time, a backlog).
    asked = (datetime.now(UTC) - timedelta(minutes=61)).isoformat()
    world.services.queue.send(InstallRequest(vm=vm.id, trigger="event", requested_at=asked))
    world.run_queue()
    [install] = queue_records(world)
    assert (install.decision, install.outcome, install.install_state) == (
        "install",
        "succeeded",
        "Succeeded",
    )
