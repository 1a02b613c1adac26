"""Deployment against the local Azure: the postdeploy hook that wires Event Grid, the
rules Event Grid enforces on it, and the doctor an operator runs after `azd up`."""

import importlib.util
import json
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential

from localazure import LocalAzure, Subscription
from remediation import doctor
from tests.conftest import APP, READER, SUB, small_estate

ROOT = Path(__file__).resolve().parent.parent
OTHER = "22222222-2222-4222-8222-222222222222"
APP_ID = f"/subscriptions/{SUB}/resourceGroups/rg-dev/providers/Microsoft.Web/sites/func-dev"
FUNCTIONS = ["on_vm_event", "install_extension", "nightly_sweep"]


def hook():
    spec = importlib.util.spec_from_file_location(
        "wire_events", ROOT / "infra/hooks/wire_events.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def operator(plane):
    return ClientSecretCredential(
        plane.estate.tenant,
        APP.client_id,
        APP.secret,
        authority=plane.url,
        disable_instance_discovery=True,
    )


@pytest.fixture
def two_subscriptions(use_identity):
    estate = small_estate()
    estate.add_subscription(Subscription(OTHER))
    with LocalAzure(estate) as plane:
        use_identity(plane)
        yield plane


def wire(plane):
    return hook().wire(
        operator(plane), [SUB, OTHER], APP_ID, "rg-dev-events", plane.url, location="westeurope"
    )


def test_before_the_code_is_deployed_event_grid_refuses_the_subscription(two_subscriptions):
    with pytest.raises(HttpResponseError) as refused:
        wire(two_subscriptions)
    assert refused.value.status_code == 400
    assert refused.value.error.code == "Endpoint validation"
    assert "Destination endpoint not found." in refused.value.error.message


def test_after_the_deployment_every_subscription_is_wired_and_existing_topics_reused(
    two_subscriptions,
):
    plane = two_subscriptions
    plane.deploy_functions(APP_ID, FUNCTIONS)
    existing = f"/subscriptions/{OTHER}/resourceGroups/rg-ops/providers/Microsoft.EventGrid/systemTopics/ops-subscription-events"
    plane.system_topics[existing.lower()] = {
        "id": existing,
        "name": "ops-subscription-events",
        "type": "Microsoft.EventGrid/systemTopics",
        "location": "global",
        "properties": {
            "source": f"/subscriptions/{OTHER}",
            "topicType": "Microsoft.Resources.Subscriptions",
            "provisioningState": "Succeeded",
        },
    }
    legacy = f"{existing}/eventSubscriptions/vm-write-and-start"  # the first release's
    plane.event_subscriptions[legacy.lower()] = {
        "id": legacy,
        "name": "vm-write-and-start",
        "properties": {},
    }
    assert wire(plane) == [
        f"{SUB}: system topic remediator-subscription-events (created) -> on_vm_event",
        f"{OTHER}: system topic ops-subscription-events (reused) -> on_vm_event; removed the "
        "older vm-write-and-start",
    ]
    created = f"/subscriptions/{SUB}/resourceGroups/rg-dev-events/providers/Microsoft.EventGrid/systemTopics/remediator-subscription-events"
    assert plane.system_topics[created.lower()]["properties"]["source"] == f"/subscriptions/{SUB}"
    assert sorted(plane.event_subscriptions) == sorted(
        [
            f"{created}/eventSubscriptions/remediator-vm-events".lower(),
            f"{existing}/eventSubscriptions/remediator-vm-events".lower(),
        ]
    )
    properties = plane.event_subscriptions[
        f"{created}/eventSubscriptions/remediator-vm-events".lower()
    ]["properties"]
    assert properties["destination"] == {
        "endpointType": "AzureFunction",
        "properties": {
            "resourceId": f"{APP_ID}/functions/on_vm_event",
            "maxEventsPerBatch": 1,
            "preferredBatchSizeInKilobytes": 64,  # the SDK model's default
        },
    }
    assert properties["filter"]["includedEventTypes"] == [
        "Microsoft.Resources.ResourceActionSuccess",
        "Microsoft.Resources.ResourceWriteSuccess",
    ]
    assert properties["filter"]["advancedFilters"] == [
        {
            "operatorType": "StringIn",
            "key": "data.operationName",
            "values": [
                "Microsoft.Compute/virtualMachines/start/action",
                "Microsoft.Compute/virtualMachines/write",
                "Microsoft.HybridCompute/machines/write",
            ],
        }
    ]
    # Run again (a subscription added later): the same two topics, nothing new.
    wire(plane)
    assert len(plane.system_topics) == 2


def test_a_system_topic_lives_in_its_source_subscription_and_one_per_source(two_subscriptions):
    from azure.mgmt.eventgrid import EventGridManagementClient
    from azure.mgmt.eventgrid.models import SystemTopic

    plane = two_subscriptions
    client = EventGridManagementClient(
        operator(plane), SUB, base_url=plane.url, credential_scopes=[f"{plane.url}/.default"]
    )
    with pytest.raises(HttpResponseError) as elsewhere:
        client.system_topics.begin_create_or_update(
            "rg-dev-events",
            "other-subscription",
            SystemTopic(
                location="global",
                source=f"/subscriptions/{OTHER}",
                topic_type="Microsoft.Resources.Subscriptions",
            ),
        ).result()
    assert elsewhere.value.status_code == 400
    mine = SystemTopic(
        location="global",
        source=f"/subscriptions/{SUB}",
        topic_type="Microsoft.Resources.Subscriptions",
    )
    client.system_topics.begin_create_or_update("rg-dev-events", "first", mine).result()
    with pytest.raises(HttpResponseError) as second:
        client.system_topics.begin_create_or_update("rg-dev-events", "second", mine).result()
    assert second.value.status_code == 400
    assert "Only one system topic is allowed per source" in second.value.error.message


def doctor_rows(world):
    return {(c.scope, c.check): c for c in doctor.run(world.services)}


def deploy_and_wire(world):
    """What `azd up` does after provisioning: the code, then the hook for SUB."""
    world.plane.deploy_functions(APP_ID, FUNCTIONS)
    hook().wire(
        operator(world.plane),
        [SUB],
        APP_ID,
        "rg-dev-events",
        world.plane.url,
        location="westeurope",
    )


def test_the_doctor_finds_a_deployment_ready(world_factory):
    world = world_factory(
        small_estate(), WEBSITE_SITE_NAME="func-dev", REMEDIATION_ALLOW_PLAN_CHANGE="true"
    )
    deploy_and_wire(world)
    rows = doctor_rows(world)
    assert {key: row.ok for key, row in rows.items()} == {
        ("storage", "queues and table"): True,
        (SUB, "permissions"): True,
        (SUB, "events"): True,
        (SUB, "onboarding"): True,
    }
    assert rows[(SUB, "events")].detail.endswith(f"delivers to {APP_ID}/functions/on_vm_event")
    writes = [
        item
        for item in world.plane.log.arm()
        if item.method != "GET" and "ResourceGraph" not in item.operation
    ]
    assert [w.operation for w in writes] == [
        "Microsoft.Resources/subscriptions/resourceGroups/write",  # its events group
        "Microsoft.EventGrid/systemTopics/write",
        "Microsoft.EventGrid/systemTopics/eventSubscriptions/write",
    ]  # the hook's; the doctor wrote nothing


def test_the_doctor_names_what_a_deployment_lacks_and_how_to_fix_it(world_factory):
    world = world_factory(
        small_estate(),
        principal=READER,
        WEBSITE_SITE_NAME="func-dev",
        REMEDIATION_ALLOW_PLAN_CHANGE="true",
    )
    rows = doctor_rows(world)
    permissions = rows[(SUB, "permissions")]
    assert not permissions.ok
    assert permissions.detail == (
        "missing Microsoft.Security/pricings/write (REMEDIATION_ALLOW_PLAN_CHANGE), "
        "Microsoft.Security/settings/write (REMEDIATION_ENABLE_INTEGRATION=true)"
    )
    assert permissions.fix == (
        "run `azd provision` (infra/access.bicep grants them; for a subscription under "
        "REMEDIATION_MANAGEMENT_GROUPS, deploy infra/access-mg.bicep at its group), or turn "
        "the setting off"
    )
    events = rows[(SUB, "events")]
    assert (events.ok, events.detail, events.fix) == (
        False,
        "no Microsoft.Resources.Subscriptions system topic",
        "run `azd hooks run postdeploy` (infra/hooks/wire_events.py)",
    )
    assert rows[(SUB, "onboarding")].ok


def test_health_answers_503_until_the_app_can_do_its_job(world_factory):
    import function_app
    from localazure.host import http_request

    world = world_factory(small_estate(), WEBSITE_SITE_NAME="func-dev")
    response = function_app.health(http_request("GET", "health"))
    body = json.loads(response.get_body())
    assert (response.status_code, body["healthy"]) == (503, False)
    assert [c["check"] for c in body["checks"] if not c["ok"]] == ["events"]
    deploy_and_wire(world)
    response = function_app.health(http_request("GET", "health"))
    assert (response.status_code, json.loads(response.get_body())["healthy"]) == (200, True)


def test_the_doctor_command_creates_nothing_and_reports_missing_storage(world_factory, capsys):
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient

    from remediation.__main__ import main

    world = world_factory(small_estate(), WEBSITE_SITE_NAME="func-dev")
    out = __import__("io").StringIO()
    assert main(["doctor", "--json"], out=out) == 1
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["scope"] == "storage"
    assert (rows[0]["check"], rows[0]["ok"]) == ("queues and table", False)
    assert rows[0]["fix"].startswith("check AzureWebJobsStorage")
    queue = QueueClient.from_connection_string(
        world.environment["AzureWebJobsStorage"], world.environment["REMEDIATION_INSTALL_QUEUE"]
    )
    with pytest.raises(ResourceNotFoundError):
        queue.get_queue_properties()  # the doctor read; it did not create
