"""The whole estate end to end: Arc machines (events, installs, deferrals, the sweep),
management-group scope (a subscription joins and leaves), display names in the log and
the report, flexible and uniform scale sets. The real function objects, the real SDKs
against the local plane, Azurite for storage."""

import dataclasses
import io
import json

import pytest

from localazure import Estate, Principal, Subscription
from localazure.estate import (
    ARC_CATALOGUE,
    UBUNTU_2204,
    ManagementGroup,
    ScaleSet,
    arc_machine,
    mde_extension,
)
from tests.conftest import APP, SUB

ENFORCE = {"REMEDIATION_MODE": "enforce"}
SUB2 = "22222222-2222-4222-8222-222222222222"
SUB3 = "33333333-3333-4333-8333-333333333333"
UBUNTU_ARC = next(image for image in ARC_CATALOGUE if image.os_sku.startswith("Ubuntu 22.04"))
WS2022_ARC = next(image for image in ARC_CATALOGUE if "2022" in image.os_sku)
WS2016_ARC = next(image for image in ARC_CATALOGUE if "2016" in image.os_sku)


def ready(subscription: Subscription) -> Subscription:
    subscription.pricing_tier, subscription.sub_plan = "Standard", "P1"
    subscription.settings = {
        "WDATP": True,
        "WDATP_UNIFIED_SOLUTION": True,
        "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": False,
    }
    return subscription


def estate(*subscriptions: Subscription) -> Estate:
    result = Estate()
    result.add_principal(Principal(**vars(APP)))
    for subscription in subscriptions or (Subscription(SUB, display_name="Contoso Prod"),):
        result.add_subscription(ready(subscription))
    return result


def arc(name, image=UBUNTU_ARC, subscription=SUB, **changes):
    return arc_machine(image, subscription, "rg-onprem", name, **changes)


def by_vm(records, name):
    return [r for r in records if r.vm.endswith(f"/{name}")]


# --- Arc machines -----------------------------------------------------------------------
def _byte_swapped(vm_id: str) -> str:
    """The SMBIOS form of a vmId: its first three groups byte-reversed, upper case, as
    dmidecode prints it ("Accessing and Using Azure VM Unique ID")."""
    groups = vm_id.split("-")
    for index in range(3):
        pairs = [groups[index][i : i + 2] for i in range(0, len(groups[index]), 2)]
        groups[index] = "".join(reversed(pairs))
    return "-".join(groups).upper()


def test_an_arc_agent_on_an_azure_vm_that_cannot_say_so_is_found_by_its_smbios_id(
    world_factory,
):
    """cloudMetadata.provider says "N/A" when the agent cannot reach IMDS (Microsoft's own
    test setup blocks it); its vmUuid is still the Azure VM's vmId. Both the sweep and the
    event leave it alone, and the VM itself is covered as a VM."""
    world = world_factory(estate(), **ENFORCE)
    plane = world.plane
    vm = plane.estate.add_vm(UBUNTU_2204.vm(SUB, "rg-app", "web-07"))
    hidden = arc("srv-hidden", smbios_uuid=_byte_swapped(vm.vm_id))
    plane.estate.add_vm(hidden)
    plane.estate.add_vm(arc("srv-plain"))  # an on-premises server: its own SMBIOS id
    response = world.post("sweep")
    world.run_sweeps()
    records = {r.vm.rsplit("/", 1)[-1]: r for r in world.audit_records() if r.trigger == "http"}
    assert {name: (r.decision, r.outcome) for name, r in records.items()} == {
        "web-07": ("install", "queued"),
        "srv-hidden": ("exclude", "none"),
        "srv-plain": ("install", "queued"),
    }
    assert records["srv-hidden"].reason.endswith(f"its SMBIOS id is the vmId of {vm.id}.")
    run_id = json.loads(response.get_body())["run_id"]
    summary = json.loads(world.get_status(run_id).get_body())["summary"]
    assert summary["graph_requests"] == 1  # the batch's own inventory told it: no lookup

    # The agent reconnects: its event re-reads it and asks Resource Graph across the scope.
    before = plane.log.count("Microsoft.ResourceGraph/resources/read")
    [event] = plane.create_vm(dataclasses.replace(hidden, name="srv-hidden-2"))
    [record] = world.deliver(event)
    assert (record.decision, record.outcome) == ("exclude", "none")
    assert record.reason.endswith(f"its SMBIOS id is the vmId of {vm.id}.")
    assert plane.log.count("Microsoft.ResourceGraph/resources/read") == before + 1
    assert (
        "mde.linux"
        not in plane.estate.vm(hidden.id.replace("srv-hidden", "srv-hidden-2")).extensions
    )


@pytest.mark.parametrize(
    ("image", "platform"),
    [(WS2022_ARC, "windows-server-2022"), (WS2016_ARC, "windows-server-2016")],
    ids=["2022", "2016 (unified solution)"],
)
def test_a_connected_arc_machine_is_classified_and_installed_through_hybridcompute(
    world_factory, image, platform
):
    world = world_factory(estate(), **ENFORCE)
    sweep(world)  # the first sweep learns the subscriptions' names
    machine = arc("srv-01", image)
    [record] = world.deliver(*world.plane.create_machine(machine))
    assert (record.kind, record.decision, record.outcome) == ("arc", "install", "started")
    assert (record.platform, record.actions) == (platform, ("install:MDE.Windows",))
    assert record.subscription_name == "Contoso Prod"
    world.run_queue()
    extension = world.plane.estate.vm(machine.id).extensions["mde.windows"]
    assert (extension.state, extension.publisher, extension.type) == (
        "Succeeded",
        "Microsoft.Azure.AzureDefenderForServers",
        "MDE.Windows",
    )
    # What the built-in "Deploy MDE on Windows Arc machines" policy sends.
    assert extension.settings == {"azureResourceId": machine.id, "vNextEnabled": "true"}
    assert world.plane.log.count("Microsoft.HybridCompute/machines/extensions/write") == 1
    assert world.extension_puts() == 0  # not through Compute's API
    [installed] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert (installed.kind, installed.outcome, installed.install_state) == (
        "arc",
        "succeeded",
        "Succeeded",
    )


@pytest.mark.parametrize("async_header", [False, True], ids=["location", "azure-asyncoperation"])
def test_a_failed_arc_install_names_its_exit_code_and_what_to_do(world_factory, async_header):
    world = world_factory(estate(), **ENFORCE)
    # The spec's 202 carries Location only; an older live trace, Azure-AsyncOperation too.
    world.plane.arc_async_operation = async_header
    machine = arc("srv-bad", mde_failure=31)
    world.deliver(*world.plane.create_machine(machine))
    world.run_queue()
    [installed] = [r for r in world.audit_records() if r.trigger == "queue"]
    assert (installed.outcome, installed.install_code) == ("failed", 31)
    assert "onboarding failed" in installed.hint


def test_a_disconnected_arc_machine_waits_and_is_installed_once_it_reconnects(world_factory):
    world = world_factory(estate(), **ENFORCE)
    machine = arc("srv-away", arc_status="Disconnected")
    [deferred] = world.deliver(*world.plane.create_machine(machine))
    assert (deferred.decision, deferred.outcome) == ("defer", "none")
    assert deferred.reason == (
        "The Arc machine is disconnected, not Connected; MDE.Linux is installed when it reconnects."
    )
    assert world.run_queue() == 0  # nothing was queued: no PUT to sit queued for 6 hours
    assert world.plane.log.count("Microsoft.HybridCompute/machines/extensions/write") == 0
    # Its heartbeats resume: no ARM write, so no event; the next sweep sees it Connected.
    world.plane.drain_events()
    world.plane.set_arc_status(machine.id, "Connected")
    assert world.plane.drain_events() == []
    sweep(world)
    [back] = [r for r in world.audit_records() if r.trigger == "http"]
    assert (back.decision, back.outcome) == ("install", "queued")
    world.run_queue()
    assert world.plane.estate.vm(machine.id).extensions["mde.linux"].state == "Succeeded"


def test_an_arc_write_event_that_names_a_vm_is_ignored(world_factory):
    world = world_factory(estate(), **ENFORCE)
    machine = world.plane.estate.add_vm(arc("srv-02"))
    event = world.plane.create_machine(arc("srv-03"))[0]
    forged = json.loads(json.dumps(event).replace("machines/srv-03", "machines/srv-02"))
    forged["data"]["resourceUri"] = forged["subject"].replace(
        "Microsoft.HybridCompute/machines", "Microsoft.Compute/virtualMachines"
    )
    [record] = world.deliver(forged)
    assert (record.decision, record.reason) == (
        "ignored",
        "the subject and data.resourceUri name different resources",
    )
    assert machine.extensions == {}


def test_the_sweep_covers_vms_and_arc_machines_in_one_inventory(world_factory):
    world = world_factory(estate(), **ENFORCE)
    plane = world.plane
    vm = plane.estate.add_vm(UBUNTU_2204.vm(SUB, "rg-app", "web-01"))
    covered = arc("srv-ok")
    covered.extensions["mde.linux"] = mde_extension(covered)
    for machine in (
        arc("srv-new"),
        covered,
        arc("srv-off", arc_status="Expired"),
        arc("srv-on-azure", cloud_provider="Azure"),
    ):
        plane.estate.add_vm(machine)
    response = world.post("sweep")
    assert response.status_code == 202
    world.run_sweeps()
    records = {r.vm.rsplit("/", 1)[-1]: r for r in world.audit_records() if r.trigger == "http"}
    assert {name: (r.kind, r.decision, r.outcome) for name, r in records.items()} == {
        "web-01": ("vm", "install", "queued"),
        "srv-new": ("arc", "install", "queued"),
        "srv-ok": ("arc", "compliant", "none"),
        "srv-off": ("arc", "defer", "none"),
        "srv-on-azure": ("arc", "exclude", "none"),
    }
    assert "Arc agent on an Azure VM" in records["srv-on-azure"].reason
    run_id = json.loads(response.get_body())["run_id"]
    summary = json.loads(world.get_status(run_id).get_body())["summary"]
    assert summary["kinds"] == {"arc": 4, "vm": 1}
    assert (summary["eligible_running"], summary["covered"]) == (3, 1)
    assert summary["graph_requests"] == 1  # one inventory page for both kinds
    world.run_queue()
    assert vm.extensions["mde.linux"].state == "Succeeded"
    assert plane.estate.vm(arc("srv-new").id).extensions["mde.linux"].state == "Succeeded"


def test_the_remediator_role_suffices_for_arc_and_arc_operations_stay_inside_it(world_factory):
    from localazure.estate import REMEDIATOR_ROLE

    world = world_factory(estate(), **ENFORCE)
    world.deliver(*world.plane.create_machine(arc("srv-04")))
    world.run_queue()
    used = {item.operation for item in world.plane.log.arm() if "HybridCompute" in item.operation}
    assert "Microsoft.HybridCompute/machines/extensions/write" in used
    assert used <= set(REMEDIATOR_ROLE)
    assert not [item for item in world.plane.log.arm() if item.status == 403]


# --- Scale sets -----------------------------------------------------------------------------
def test_a_flexible_scale_set_vm_is_classified_and_installed_like_any_vm(world_factory):
    # The install takes 3 s here, so the second write's event sees it running (no race).
    world = world_factory(estate(), plane_options={"lro_seconds": 3}, **ENFORCE)
    scale_set = world.plane.estate.add_scale_set(
        ScaleSet(SUB, "rg-app", "vmss-web", orchestration_mode="Flexible", capacity=2)
    )
    member = UBUNTU_2204.vm(SUB, "rg-app", "vmss-web_1a2b3c4d", scale_set=scale_set.id)
    records = world.deliver(*world.plane.create_vm(member))
    first = records[0]
    assert (first.kind, first.decision, first.outcome) == ("vm", "install", "started")
    # The second write's event finds our install in progress and the claim held.
    assert (records[1].decision, records[1].outcome) == ("defer", "duplicate")
    world.run_queue()
    assert member.extensions["mde.linux"].state == "Succeeded"
    assert world.extension_puts() == 1


def test_uniform_scale_sets_are_counted_as_not_covered_by_this_app(world_factory):
    world = world_factory(estate(), **ENFORCE)
    for name, mode, capacity in (
        ("vmss-batch", "Uniform", 12),
        ("vmss-old", "", 3),  # no orchestrationMode: an old, uniform one
        ("vmss-flex", "Flexible", 5),
    ):
        world.plane.estate.add_scale_set(ScaleSet(SUB, "rg-app", name, mode, capacity))
    response = world.post("sweep")
    world.run_sweeps()
    run_id = json.loads(response.get_body())["run_id"]
    summary = json.loads(world.get_status(run_id).get_body())["summary"]
    assert (summary["uniform_scale_sets"], summary["uniform_instances"]) == (2, 15)
    page = world.get("report").get_body().decode()
    assert '<p id="uniform-scale-sets"><span>15</span> instances of 2 uniform scale set' in page
    assert "add MDE.Windows or MDE.Linux to each scale set" in page


# --- Management groups ----------------------------------------------------------------------
def groups_estate() -> Estate:
    """Root -> Landing zones -> Corp (SUB2, SUB3 once moved); Platform (SUB)."""
    result = estate(
        Subscription(SUB, display_name="Platform Identity", management_group="mg-platform"),
        Subscription(SUB2, display_name="Contoso Corp 01", management_group="mg-corp"),
        Subscription(SUB3, display_name="Contoso Corp 02", management_group="mg-sandbox"),
    )
    for group in (
        ManagementGroup("mg-platform", "Platform"),
        ManagementGroup("mg-landing-zones", "Landing zones"),
        ManagementGroup("mg-corp", "Corp", parent="mg-landing-zones"),
        ManagementGroup("mg-sandbox", "Sandbox"),
    ):
        result.add_management_group(group)
    for subscription in (SUB, SUB2, SUB3):
        result.add_vm(UBUNTU_2204.vm(subscription, "rg-app", f"web-{subscription[:2]}"))
    return result


def sweep(world) -> dict:
    response = world.post("sweep")
    assert response.status_code == 202, response.get_body()
    world.run_sweeps()
    return json.loads(response.get_body())


def test_a_subscription_joins_and_leaves_the_scope_of_a_management_group(world_factory):
    world = world_factory(
        groups_estate(),
        REMEDIATION_SUBSCRIPTIONS="",
        REMEDIATION_MANAGEMENT_GROUPS="mg-landing-zones",
        **ENFORCE,
    )
    plane = world.plane
    first = sweep(world)
    assert first["subscriptions"] == [SUB2]  # under Corp, below Landing zones
    swept = {r.vm.rsplit("/", 1)[-1] for r in world.audit_records() if r.run_id == first["run_id"]}
    assert swept == {"web-22"}
    # Not in scope: its events are ignored, and say why.
    outside = UBUNTU_2204.vm(SUB3, "rg-app", "new-33")
    [ignored] = world.deliver(plane.create_vm(outside)[0])
    assert ignored.reason == (
        f"subscription {SUB3} is not in scope (REMEDIATION_SUBSCRIPTIONS or "
        "REMEDIATION_MANAGEMENT_GROUPS)"
    )

    plane.move_subscription(SUB3, "mg-corp")  # joins
    second = sweep(world)
    assert second["subscriptions"] == [SUB2, SUB3]
    [joined] = [r for r in world.audit_records() if r.decision == "scope"]
    assert (joined.subscription, joined.subscription_name, joined.outcome, joined.run_id) == (
        SUB3,
        "Contoso Corp 02",
        "joined",
        second["run_id"],
    )
    assert joined.reason == (
        "Subscription Contoso Corp 02 joined the scope through management group Landing "
        "zones (mg-landing-zones): sweeps cover it from now on."
    )
    swept = {r.vm.rsplit("/", 1)[-1] for r in world.audit_records() if r.run_id == second["run_id"]}
    assert swept == {"web-22", "web-33", "new-33", ""}  # "": the scope record
    # Events from it are taken now, on this worker at once and on a fresh one from the table.
    [taken] = world.deliver(plane.create_vm(UBUNTU_2204.vm(SUB3, "rg-app", "new-34"))[0])
    assert (taken.decision, taken.outcome) == ("install", "started")
    assert SUB3 in world.worker().scope()
    # Nothing delivers its events yet: the report says so, with the command that wires it.
    page = world.get("report").get_body().decode()
    assert '<h2>Not receiving events (<span id="unwired-count">2</span>)</h2>' in page
    assert f"--subscriptions {SUB3}" in page

    plane.move_subscription(SUB2, "mg-platform")  # leaves
    third = sweep(world)
    assert third["subscriptions"] == [SUB3]
    [left] = [r for r in world.audit_records() if r.outcome == "left"]
    assert (left.subscription, left.subscription_name) == (SUB2, "Contoso Corp 01")
    assert "left the scope" in left.reason
    [dropped] = world.deliver(plane.create_vm(UBUNTU_2204.vm(SUB2, "rg-app", "new-22"))[0])
    assert dropped.decision == "ignored"


def test_an_unknown_management_group_stops_the_sweep_with_the_azure_error(world_factory):
    world = world_factory(
        groups_estate(),
        REMEDIATION_SUBSCRIPTIONS="",
        REMEDIATION_MANAGEMENT_GROUPS="mg-typo",
        **ENFORCE,
    )
    response = world.post("sweep")
    assert response.status_code == 502, response.get_body()
    answer = json.loads(response.get_body())
    [error] = answer["errors"]
    assert "BadRequest: ManagementGroupsContainInvalidIds" in error
    assert "(REMEDIATION_MANAGEMENT_GROUPS: mg-typo)" in error
    assert answer["hint"].startswith("give management group ids, not display names")
    assert world.audit_records() == []
    assert not [item for item in world.plane.log.arm() if item.method == "PUT"]


def test_without_subscription_read_resource_graph_names_no_subscription(world_factory):
    from localazure.estate import REMEDIATOR_ROLE

    blind = Principal(
        **(
            vars(APP)
            | {"actions": [a for a in REMEDIATOR_ROLE if not a.startswith("Microsoft.Resources/")]}
        )
    )
    groups = groups_estate()
    groups.principals.clear()
    groups.add_principal(blind)
    world = world_factory(
        groups, blind, REMEDIATION_SUBSCRIPTIONS="", REMEDIATION_MANAGEMENT_GROUPS="mg-corp"
    )
    response = world.post("sweep")
    assert response.status_code == 400
    assert json.loads(response.get_body())["errors"] == [
        "no subscription is in scope: check REMEDIATION_SUBSCRIPTIONS and "
        "REMEDIATION_MANAGEMENT_GROUPS (python -m remediation doctor)"
    ]
    assert world.audit_records() == []


def test_names_and_groups_in_the_report_and_the_log(world_factory, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # a wide terminal: the log table has every column
    world = world_factory(
        groups_estate(),
        REMEDIATION_SUBSCRIPTIONS=SUB,
        REMEDIATION_MANAGEMENT_GROUPS="mg-corp",
    )
    sweep(world)
    page = world.get("report").get_body().decode()
    # Grouped: Corp's subscriptions under its heading, the listed one under its own.
    assert page.index('data-group="mg-corp"') < page.index(f'data-subscription="{SUB2}"')
    assert page.index('data-group=""') < page.index(f'data-subscription="{SUB}"')
    assert f"<td>Contoso Corp 01 ({SUB2})</td>" in page
    assert f"<td>Platform Identity ({SUB})</td>" in page
    assert '<table id="by-kind">' in page
    records = [r for r in world.audit_records() if r.vm]
    assert {r.subscription: r.subscription_name for r in records} == {
        SUB: "Platform Identity",
        SUB2: "Contoso Corp 01",
    }
    logged = json.loads(world.get("remediations", {"since": "1h"}).get_body())["records"]
    assert {r["subscription_name"] for r in logged} == {"Platform Identity", "Contoso Corp 01"}
    assert {r["kind"] for r in logged} == {"vm"}
    from remediation.__main__ import main

    out = io.StringIO()
    assert main(["log", "--since", "1h"], out) == 0
    table = out.getvalue()
    assert "Platform Identity" in table
    assert "Contoso Corp 01" in table


# --- What it costs (README, "What the app costs ARM") ------------------------------------------
def test_what_an_arc_machine_and_the_scope_cost_in_requests(world_factory):
    from remediation.model import VmRef

    world = world_factory(
        groups_estate(), REMEDIATION_SUBSCRIPTIONS=SUB, REMEDIATION_MANAGEMENT_GROUPS="mg-corp"
    )
    machine = world.plane.estate.add_vm(arc("srv-05", subscription=SUB2))
    services = world.services
    before = len(world.plane.log.arm())
    services.arm.vm_facts(VmRef.parse(machine.id))
    read = [item.operation for item in world.plane.log.arm()[before:]]
    assert read == [
        "Microsoft.HybridCompute/machines/read",
        "Microsoft.HybridCompute/machines/extensions/read",
    ]
    before = len(world.plane.log.arm())
    sweep(world)
    graph = [
        item
        for item in world.plane.log.arm()[before:]
        if item.operation.startswith("Microsoft.ResourceGraph")
    ]
    # The scope: one query for the groups, one for the listed subscriptions; the uniform
    # scale sets: one; the inventory of VMs and Arc machines: one per batch and 1000.
    assert len(graph) == 4
    wiring = [
        item
        for item in world.plane.log.arm()[before:]
        if item.operation.startswith("Microsoft.EventGrid")
    ]
    assert len(wiring) == 1  # the one group subscription, first resolved: no topic to list further
