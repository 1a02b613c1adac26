"""The local plane's Arc-enabled servers, management groups and scale sets, through the
real SDK clients (azure-mgmt-hybridcompute, azure-mgmt-resourcegraph) and on the wire."""

from __future__ import annotations

import hashlib
import json

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.mgmt.hybridcompute import HybridComputeManagementClient
from azure.mgmt.resourcegraph import ResourceGraphClient
from azure.mgmt.resourcegraph.models import QueryRequest, QueryRequestOptions

from localazure import Estate, LocalAzure, Subscription, generate
from localazure.estate import (
    ARC_CATALOGUE,
    MDE_PUBLISHER,
    REMEDIATOR_ROLE,
    ManagementGroup,
    ScaleSet,
    arc_machine,
)
from localazure.graph import CONTAINERS_QUERY, SCALE_SETS_QUERY, SWEEP_QUERY
from localazure.hybrid import HYBRID_API
from remediation.events import VmEvent, parse
from tests.conftest import APP, SUB, small_estate

UBUNTU = next(image for image in ARC_CATALOGUE if image.os_sku == "Ubuntu 22.04.3 LTS")
WS2022 = next(image for image in ARC_CATALOGUE if image.os_sku == "Windows Server 2022 Datacenter")
SLACKWARE = next(image for image in ARC_CATALOGUE if image.os_sku == "Slackware 15.0")
SUB2 = "22222222-2222-4222-8222-222222222222"
SUB3 = "33333333-3333-4333-8333-333333333333"
GROUP = "rg-arc"
ARC = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.HybridCompute/machines"


def arc_estate() -> Estate:
    """The small estate plus four Arc machines, three subscriptions in management groups
    (SUB under Corp, SUB2 under Platform, SUB3 at the root) and three scale sets."""
    estate = small_estate()
    estate.subscriptions[SUB.lower()].display_name = "Contoso Corp 01"
    estate.subscriptions[SUB.lower()].management_group = "mg-corp"
    estate.add_subscription(
        Subscription(SUB2, display_name="Platform", management_group="mg-platform")
    )
    estate.add_subscription(Subscription(SUB3, display_name="Sandbox", state="Disabled"))
    estate.add_management_group(ManagementGroup("mg-platform", "Platform"))
    estate.add_management_group(ManagementGroup("mg-landing-zones", "Landing zones"))
    estate.add_management_group(ManagementGroup("mg-corp", "Corp", "mg-landing-zones"))
    estate.add_vm(
        arc_machine(UBUNTU, SUB, GROUP, "arc-ubuntu", vm_id="5d39b8be-0000-4000-8000-000000000001")
    )
    estate.add_vm(arc_machine(WS2022, SUB, GROUP, "arc-win"))
    estate.add_vm(arc_machine(SLACKWARE, SUB, GROUP, "arc-slackware"))
    estate.add_vm(
        arc_machine(UBUNTU, SUB, GROUP, "arc-away", arc_status="Disconnected", cloud_provider="AWS")
    )
    estate.add_scale_set(ScaleSet(SUB, "rg-web", "vmss-uniform", "Uniform", 12))
    estate.add_scale_set(ScaleSet(SUB, "rg-web", "vmss-old", "", 3))
    estate.add_scale_set(ScaleSet(SUB, "rg-web", "vmss-flex", "Flexible", 2))
    return estate  # fmt: skip


@pytest.fixture
def arc_plane(use_identity):
    with LocalAzure(arc_estate()) as running:
        use_identity(running)
        yield running


def credential(plane: LocalAzure) -> ClientSecretCredential:
    return ClientSecretCredential(
        plane.estate.tenant,
        APP.client_id,
        APP.secret,
        authority=plane.url,
        disable_instance_discovery=True,
        connection_verify=plane.ca_path,
    )


def hybrid(plane: LocalAzure) -> HybridComputeManagementClient:
    return HybridComputeManagementClient(
        credential(plane), SUB, base_url=plane.url, credential_scopes=[f"{plane.url}/.default"]
    )


def graph_client(plane: LocalAzure) -> ResourceGraphClient:
    return ResourceGraphClient(
        credential(plane), base_url=plane.url, credential_scopes=[f"{plane.url}/.default"]
    )


def raw(plane: LocalAzure) -> requests.Session:
    session = requests.Session()
    session.verify = plane.ca_path
    token = credential(plane).get_token(f"{plane.url}/.default").token
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def mde_body(plane: LocalAzure, machine: str, linux: bool = True) -> dict:
    """What the built-in "Deploy MDE on Arc machines" policies send (azure-policy)."""
    subscription = plane.estate.subscriptions[SUB.lower()]
    settings = {"azureResourceId": f"{ARC}/{machine}"}
    if not linux:
        settings["vNextEnabled"] = "true"
    package = subscription.onboarding_linux if linux else subscription.onboarding_windows
    return {
        "location": "westeurope",
        "properties": {
            "publisher": MDE_PUBLISHER,
            "type": "MDE.Linux" if linux else "MDE.Windows",
            "typeHandlerVersion": "1.0",
            "autoUpgradeMinorVersion": True,
            "settings": settings,
            "protectedSettings": {"defenderForEndpointOnboardingScript": package},
        },
    }


def install(plane: LocalAzure, machine: str, linux: bool = True):
    return hybrid(plane).machine_extensions.begin_create_or_update(
        GROUP,
        machine,
        "MDE.Linux" if linux else "MDE.Windows",
        mde_body(plane, machine, linux),
        polling_interval=0.01,
    )


# --- Machines -------------------------------------------------------------------------
def test_a_machine_reads_as_arm_shows_an_arc_server(arc_plane):
    answer = raw(arc_plane).get(
        f"{arc_plane.url}{ARC}/arc-ubuntu", params={"api-version": HYBRID_API}
    )
    assert answer.status_code == 200
    machine = answer.json()
    assert (machine["id"], machine["type"]) == (
        f"{ARC}/arc-ubuntu",
        "Microsoft.HybridCompute/machines",
    )
    properties = machine["properties"]
    assert {key: properties[key] for key in ("status", "osName", "osType", "osSku", "osVersion", "vmId", "provisioningState")} == {
        "status": "Connected",
        "osName": "linux",
        "osType": "linux",
        "osSku": "Ubuntu 22.04.3 LTS",
        "osVersion": "5.15.0-91-generic",
        "vmId": "5d39b8be-0000-4000-8000-000000000001",
        "provisioningState": "Succeeded",
    }  # fmt: skip
    assert properties["cloudMetadata"] == {"provider": "N/A"}
    sdk = hybrid(arc_plane).machines.get(GROUP, "arc-away")
    assert (sdk.properties.status, sdk.properties.cloud_metadata.provider) == (
        "Disconnected",
        "AWS",
    )


def test_a_machine_is_not_a_vm_and_a_vm_is_not_a_machine(arc_plane):
    session = raw(arc_plane)
    as_vm = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Compute/virtualMachines/arc-ubuntu"
    vm_as_machine = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.HybridCompute/machines/ubuntu-1"
    assert (
        session.get(arc_plane.url + as_vm, params={"api-version": "2026-04-01"}).status_code == 404
    )
    missing = session.get(arc_plane.url + vm_as_machine, params={"api-version": HYBRID_API})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ResourceNotFound"
    assert "Microsoft.HybridCompute/machines/ubuntu-1' under resource group 'rg-web'" in (
        missing.json()["error"]["message"]
    )  # fmt: skip


@pytest.mark.parametrize("version", ["2026-07-15", "2026-09-01", "2025-01-13", "2024-07-10"])
def test_the_stable_api_versions_answer(arc_plane, version):
    answer = raw(arc_plane).get(f"{arc_plane.url}{ARC}/arc-win", params={"api-version": version})
    assert answer.status_code == 200


def test_a_compute_api_version_is_refused_here(arc_plane):
    answer = raw(arc_plane).get(
        f"{arc_plane.url}{ARC}/arc-win", params={"api-version": "2026-04-01"}
    )
    assert answer.status_code == 400


# --- Extensions -------------------------------------------------------------------------
def test_an_install_on_a_connected_machine_succeeds_through_the_sdk(arc_plane):
    extension = install(arc_plane, "arc-ubuntu").result()
    assert extension.properties.provisioning_state == "Succeeded"
    assert extension.properties.instance_view.status.level == "Information"
    assert extension.type == "Microsoft.HybridCompute/machines/extensions"
    put = arc_plane.extension_puts[-1][1]
    assert put["properties"]["settings"]["azureResourceId"] == f"{ARC}/arc-ubuntu"
    windows = install(arc_plane, "arc-win", linux=False).result()
    assert windows.properties.provisioning_state == "Succeeded"


def test_a_failing_install_ends_failed_with_the_exit_code_in_the_instance_view(arc_plane):
    # Location polling (the spec's): the operation ends with the extension, Failed.
    ended = install(arc_plane, "arc-slackware").result()
    assert ended.properties.provisioning_state == "Failed"
    arc_plane.arc_async_operation = True  # with the status URL too, the SDK raises
    with pytest.raises(HttpResponseError):
        install(arc_plane, "arc-slackware").result()
    listed = (
        raw(arc_plane)
        .get(f"{arc_plane.url}{ARC}/arc-slackware/extensions", params={"api-version": HYBRID_API})
        .json()["value"]
    )
    assert [e["properties"]["provisioningState"] for e in listed] == ["Failed"]
    status = listed[0]["properties"]["instanceView"]["status"]
    assert status["level"] == "Error"
    assert "exit code 10" in status["message"]
    assert "protectedSettings" not in listed[0]["properties"]


def test_a_foreign_onboarding_package_fails_as_on_a_vm(arc_plane):
    body = mde_body(arc_plane, "arc-ubuntu")
    body["properties"]["protectedSettings"]["defenderForEndpointOnboardingScript"] = "Zm9yZWlnbg=="
    poller = hybrid(arc_plane).machine_extensions.begin_create_or_update(
        GROUP, "arc-ubuntu", "MDE.Linux", body, polling_interval=0.01
    )
    assert poller.result().properties.provisioning_state == "Failed"
    ext = hybrid(arc_plane).machine_extensions.get(GROUP, "arc-ubuntu", "MDE.Linux")
    assert "exit code 31" in ext.properties.instance_view.status.message


def test_an_install_on_a_disconnected_machine_waits_queued_until_it_reconnects(arc_plane):
    poller = install(arc_plane, "arc-away")
    poller.wait(0.3)
    assert not poller.done()
    arc_plane.settle(now=True)  # its time has not come: the machine has not
    ext = hybrid(arc_plane).machine_extensions.get(GROUP, "arc-away", "MDE.Linux")
    assert ext.properties.provisioning_state == "Creating"
    assert ext.properties.instance_view.status == {}
    again = raw(arc_plane).put(
        f"{arc_plane.url}{ARC}/arc-away/extensions/MDE.Linux",
        params={"api-version": HYBRID_API},
        json=mde_body(arc_plane, "arc-away"),
    )
    assert again.status_code == 409
    arc_plane.set_arc_status(f"{ARC}/arc-away", "Connected")
    assert poller.result().properties.provisioning_state == "Succeeded"


def test_a_put_answers_202_with_location_and_retry_after_as_the_spec_says(arc_plane):
    answer = raw(arc_plane).put(
        f"{arc_plane.url}{ARC}/arc-ubuntu/extensions/MDE.Linux",
        params={"api-version": HYBRID_API},
        json=mde_body(arc_plane, "arc-ubuntu"),
    )
    assert answer.status_code == 202
    assert "Azure-AsyncOperation" not in answer.headers
    assert "/operationresults/" in answer.headers["Location"]
    assert answer.headers["Retry-After"].isdigit()


def test_a_put_answers_with_both_operation_urls_as_the_older_trace_shows(arc_plane):
    arc_plane.arc_async_operation = True
    arc_plane.lro_seconds = 30  # still running when read below, however slow the machine
    session = raw(arc_plane)
    answer = session.put(
        f"{arc_plane.url}{ARC}/arc-ubuntu/extensions/MDE.Linux",
        params={"api-version": HYBRID_API},
        json=mde_body(arc_plane, "arc-ubuntu"),
    )
    assert answer.status_code == 202
    status_url, result_url = answer.headers["Azure-AsyncOperation"], answer.headers["Location"]
    prefix = f"{arc_plane.url}/subscriptions/{SUB}/providers/Microsoft.HybridCompute/locations/westeurope/"
    assert status_url.startswith(prefix + "operationstatus/")
    assert result_url.startswith(prefix + "operationresults/")
    assert "api-version=2026-07-15" in status_url
    assert answer.headers["Retry-After"].isdigit()
    assert session.get(status_url).json()["status"] == "InProgress"
    assert session.get(result_url).status_code == 202
    arc_plane.settle(now=True)
    assert session.get(status_url).json()["status"] == "Succeeded"
    done = session.get(result_url)
    assert (done.status_code, done.json()["properties"]["provisioningState"]) == (200, "Succeeded")


def test_the_extension_list_pages_with_next_links(arc_plane):
    install(arc_plane, "arc-ubuntu").result()
    monitor = mde_body(arc_plane, "arc-ubuntu")
    monitor["properties"].update(publisher="Microsoft.Azure.Monitor", type="AzureMonitorLinuxAgent")
    hybrid(arc_plane).machine_extensions.begin_create_or_update(
        GROUP, "arc-ubuntu", "AzureMonitorLinuxAgent", monitor, polling_interval=0.01
    ).result()
    arc_plane.list_page_size = 1
    names = [e.name for e in hybrid(arc_plane).machine_extensions.list(GROUP, "arc-ubuntu")]
    assert names == ["MDE.Linux", "AzureMonitorLinuxAgent"]
    assert (
        arc_plane.log.count("Microsoft.HybridCompute/machines/extensions/read", method="GET") >= 2
    )


def test_an_arc_install_needs_only_what_the_remediator_role_grants(arc_plane):
    arc_plane.log.clear()
    install(arc_plane, "arc-ubuntu").result()
    used = {item.operation for item in arc_plane.log.arm()}
    assert used <= set(REMEDIATOR_ROLE)
    assert "Microsoft.HybridCompute/locations/operationresults/read" in used
    arc_plane.arc_async_operation = True
    install(arc_plane, "arc-ubuntu").result()  # again, as an update
    used = {item.operation for item in arc_plane.log.arm()}
    assert used <= set(REMEDIATOR_ROLE)
    assert "Microsoft.HybridCompute/locations/operationstatus/read" in used


def test_resource_level_pricing_applies_to_an_arc_machine(arc_plane):
    session = raw(arc_plane)
    path = f"{arc_plane.url}{ARC}/arc-win/providers/Microsoft.Security/pricings/VirtualMachines"
    version = {"api-version": "2024-01-01"}
    assert session.get(path, params=version).json()["properties"]["inherited"] == "True"
    free = session.put(path, params=version, json={"properties": {"pricingTier": "Free"}})
    assert free.status_code == 200
    assert session.get(path, params=version).json()["properties"]["pricingTier"] == "Free"
    assert session.delete(path, params=version).status_code == 204


# --- Events -----------------------------------------------------------------------------
def test_a_connected_machine_raises_a_machines_write_the_app_reads(arc_plane):
    machine = arc_machine(UBUNTU, SUB, GROUP, "arc-new")
    [event] = arc_plane.create_machine(machine)
    assert event["eventType"] == "Microsoft.Resources.ResourceWriteSuccess"
    assert event["data"]["operationName"] == "Microsoft.HybridCompute/machines/write"
    assert (event["subject"], event["topic"]) == (f"{ARC}/arc-new", f"/subscriptions/{SUB}")
    parsed = parse(event, frozenset({SUB}))
    assert isinstance(parsed, VmEvent)
    arc_plane.drain_events()
    arc_plane.set_arc_status(f"{ARC}/arc-away", "Connected")
    assert arc_plane.estate.vm(f"{ARC}/arc-away").arc_status == "Connected"
    assert arc_plane.drain_events() == []  # heartbeats resuming are no ARM write


def test_an_arc_extension_install_raises_an_extensions_write(arc_plane):
    arc_plane.drain_events()
    install(arc_plane, "arc-ubuntu").result()
    [event] = arc_plane.drain_events()
    assert event["data"]["operationName"] == "Microsoft.HybridCompute/machines/extensions/write"
    assert event["subject"] == f"{ARC}/arc-ubuntu/extensions/MDE.Linux"


# --- Resource Graph -------------------------------------------------------------------
def query(plane: LocalAzure, text: str, **scope):
    request = QueryRequest(
        query=text, options=QueryRequestOptions(top=1000, result_format="objectArray"), **scope
    )
    return graph_client(plane).resources(request)


def test_the_sweep_lists_vms_and_arc_machines_in_id_order(arc_plane):
    rows = query(arc_plane, SWEEP_QUERY, subscriptions=[SUB]).data
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids, key=str.lower)
    assert len(ids) == 8  # four VMs, four Arc machines
    away = next(row for row in rows if row["id"].endswith("/arc-away"))
    assert {key: away[key] for key in ("status", "osName", "osSku", "osVersion", "arcOsType", "cloudProvider", "osType", "imageReference", "instanceView")} == {
        "status": "Disconnected",
        "osName": "linux",
        "osSku": "Ubuntu 22.04.3 LTS",
        "osVersion": "5.15.0-91-generic",
        "arcOsType": "linux",
        "cloudProvider": "AWS",
        "osType": "",
        "imageReference": None,
        "instanceView": None,
    }  # fmt: skip


def test_the_sweep_shows_an_arc_extension_once_graph_catches_up(arc_plane):
    install(arc_plane, "arc-win", linux=False).result()
    rows = query(arc_plane, SWEEP_QUERY, subscriptions=[SUB]).data
    win = next(row for row in rows if row["id"].endswith("/arc-win"))
    assert win["extensions"] == [
        {
            "name": "MDE.Windows",
            "publisher": MDE_PUBLISHER,
            "type": "MDE.Windows",
            "provisioningState": "Succeeded",
        }
    ]


def test_containers_below_a_management_group_carry_their_chain(arc_plane):
    rows = query(arc_plane, CONTAINERS_QUERY, management_groups=["mg-landing-zones"]).data
    tenant = arc_plane.estate.tenant
    assert rows == [
        {
            "subscriptionId": SUB,
            "name": "Contoso Corp 01",
            "state": "Enabled",
            "managementGroups": [
                {"name": "mg-corp", "displayName": "Corp"},
                {"name": "mg-landing-zones", "displayName": "Landing zones"},
                {"name": tenant, "displayName": "Tenant Root Group"},
            ],
        }
    ]
    everything = query(arc_plane, CONTAINERS_QUERY, management_groups=[tenant]).data
    assert [row["subscriptionId"] for row in everything] == [SUB, SUB2, SUB3]
    assert everything[2]["state"] == "Disabled"
    assert everything[2]["managementGroups"] == [
        {"name": tenant, "displayName": "Tenant Root Group"}
    ]


def test_containers_of_listed_subscriptions_are_those_that_exist(arc_plane):
    unknown = "99999999-9999-4999-8999-999999999999"
    rows = query(arc_plane, CONTAINERS_QUERY, subscriptions=[SUB3, unknown, SUB2]).data
    assert [(row["subscriptionId"], row["name"]) for row in rows] == [
        (SUB2, "Platform"),
        (SUB3, "Sandbox"),
    ]


def test_a_moved_subscription_shows_its_new_chain(arc_plane):
    arc_plane.move_subscription(SUB3, "mg-platform")
    rows = query(arc_plane, CONTAINERS_QUERY, management_groups=["mg-platform"]).data
    assert [row["subscriptionId"] for row in rows] == [SUB2, SUB3]
    with pytest.raises(KeyError):
        arc_plane.move_subscription(SUB3, "mg-missing")


def test_both_scopes_at_once_are_400(arc_plane):
    with pytest.raises(HttpResponseError) as refused:
        query(arc_plane, CONTAINERS_QUERY, subscriptions=[SUB], management_groups=["mg-corp"])
    assert refused.value.status_code == 400


def test_an_unknown_management_group_is_400_naming_invalid_ids(arc_plane):
    with pytest.raises(HttpResponseError) as refused:
        query(arc_plane, CONTAINERS_QUERY, management_groups=["Tenant Root Group"])
    assert refused.value.status_code == 400
    body = json.loads(refused.value.response.text())
    assert body["error"]["code"] == "BadRequest"
    assert body["error"]["details"][0]["code"] == "ManagementGroupsContainInvalidIds"
    assert "Given: 'Tenant Root Group'" in body["error"]["details"][0]["message"]


def test_the_scale_set_summary_counts_uniform_and_unmoded_ones(arc_plane):
    rows = query(arc_plane, SCALE_SETS_QUERY, subscriptions=[SUB, SUB2]).data
    assert rows == [{"subscriptionId": SUB, "scaleSets": 2, "instances": 15}]


def test_the_sweep_by_management_group_covers_the_subscriptions_below(arc_plane):
    rows = query(arc_plane, SWEEP_QUERY, management_groups=["mg-platform"]).data
    assert rows == []  # SUB2 holds nothing
    assert len(query(arc_plane, SWEEP_QUERY, management_groups=["mg-corp"]).data) == 8


# --- Scale sets and the generator -------------------------------------------------------
def test_a_flexible_members_vm_names_its_scale_set(use_identity):
    estate = generate(0, 1, 7, scale_sets=2)
    estate.add_principal(APP)
    members = [vm for vm in estate.vms.values() if vm.scale_set]
    assert members
    assert all(vm.name.startswith("fx-") for vm in members)
    member = members[0]
    with LocalAzure(estate) as plane:
        use_identity(plane)
        got = raw(plane).get(plane.url + member.id, params={"api-version": "2026-04-01"}).json()
    assert got["properties"]["virtualMachineScaleSet"] == {"id": member.scale_set}
    assert "/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-00001" in member.scale_set


def vm_digest(estate: Estate) -> str:
    """The fields every VM had before Arc machines were modelled, hashed."""
    fields = ("subscription", "resource_group", "name", "location", "os_type", "image",
              "license_type", "os_name", "os_version", "power", "tags", "vm_pricing",
              "mde_failure", "vm_id", "mde_device")  # fmt: skip
    vms = [
        [getattr(vm, f) for f in fields]
        + [[(e.name, e.publisher, e.type, e.state, e.code) for e in vm.extensions.values()]]
        for vm in sorted(estate.vms.values(), key=lambda vm: vm.key)
        if vm.kind == "vm" and not vm.scale_set
    ]
    return hashlib.sha256(json.dumps(vms, sort_keys=True).encode()).hexdigest()


# generate(60, 3, 7) as the generator made it before Arc machines, scale sets and
# management groups existed (computed with the estate module of commit 0667fd2).
BEFORE_ARC = "353ef594d3b0bcc9675059dd5c156ba260202297d5fd35ce9d8bf515e7ff7e37"


def test_the_generator_keeps_its_vms_whatever_is_added():
    plain = generate(60, 3, 7)
    extended = generate(60, 3, 7, arc_machines=40, scale_sets=8, management_groups=True)
    assert vm_digest(plain) == vm_digest(extended) == BEFORE_ARC
    assert [s.id for s in plain.subscriptions.values()] == [
        s.id for s in extended.subscriptions.values()
    ]


def test_the_generator_mixes_arc_states_providers_and_operating_systems():
    estate = generate(0, 3, 7, arc_machines=240)
    machines = [vm for vm in estate.vms.values() if vm.kind == "arc"]
    assert len(machines) == 240
    assert {vm.name for vm in machines} >= {"arc-00000", "arc-00239"}
    states = {
        status: sum(vm.arc_status == status for vm in machines)
        for status in ("Connected", "Disconnected", "Expired", "Error")
    }
    assert states["Connected"] > 150
    assert states["Disconnected"] > 10
    assert states["Expired"] > 3
    assert states["Error"] > 0
    assert sum(vm.cloud_provider == "Azure" for vm in machines) == 4  # one in sixty
    assert {vm.os_type for vm in machines} == {"Windows", "Linux"}
    assert any(vm.mde_failure == 11 for vm in machines)  # Windows Server 2012
    assert all(vm.id.startswith(f"/subscriptions/{vm.subscription}/resourceGroups/") and "/Microsoft.HybridCompute/machines/" in vm.id for vm in machines)  # fmt: skip
    assert generate(0, 3, 7, arc_machines=240).to_json() == estate.to_json()


def test_management_groups_place_every_subscription_with_a_display_name():
    estate = generate(0, 5, 7, management_groups=True)
    placed = [(s.management_group, s.display_name) for s in estate.subscriptions.values()]
    assert placed == [
        ("mg-corp", "Contoso Corp 01"),
        ("mg-platform", "Contoso Platform 01"),
        ("mg-corp", "Contoso Corp 02"),
        ("mg-landing-zones", "Contoso Online 01"),
        ("", "Contoso Sandbox 01"),
    ]
    assert [
        g.display_name for g in estate.ancestors(next(iter(estate.subscriptions.values())))
    ] == [
        "Corp",
        "Landing zones",
        "Tenant Root Group",
    ]


def test_the_new_fields_round_trip_and_older_json_still_loads():
    estate = generate(10, 2, 7, arc_machines=5, scale_sets=3, management_groups=True)
    again = Estate.from_json(json.loads(json.dumps(estate.to_json())))
    assert again.to_json() == estate.to_json()
    old = estate.to_json()
    for key in ("management_groups", "scale_sets"):
        del old[key]
    for item in old["subscriptions"]:
        for key in ("display_name", "management_group", "state"):
            del item[key]
    old["vms"] = [
        {k: v for k, v in vm.items() if k not in {"kind", "arc_status", "os_sku", "cloud_provider", "agent_version", "scale_set", "last_status_change"}}
        for vm in old["vms"]
        if vm["kind"] == "vm"
    ]  # fmt: skip
    loaded = Estate.from_json(old)
    assert {vm.kind for vm in loaded.vms.values()} == {"vm"}
    assert [s.state for s in loaded.subscriptions.values()] == ["Enabled", "Enabled"]
    assert loaded.management_groups == {}
    assert loaded.scale_sets == []


def test_an_onboarded_arc_machine_is_a_defender_for_endpoint_device(arc_plane):
    from localazure.defender import devices

    install(arc_plane, "arc-win", linux=False).result()
    [device] = devices(arc_plane)
    assert device["osPlatform"] == "WindowsServer2022"
    assert device["vmMetadata"]["resourceId"] == f"{ARC}/arc-win"
    assert device["vmMetadata"]["cloudProvider"] is None  # on premises
