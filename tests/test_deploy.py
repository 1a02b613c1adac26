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


STORAGE_ID = f"/subscriptions/{SUB}/resourceGroups/rg-dev/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
QUEUE = "vm-events"
QUEUE_SCOPE = f"{STORAGE_ID}/queueServices/default/queues/{QUEUE}"
QUEUE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"  # Storage Queue Data Message Sender
OURS = "remediator-vm-events-devstoreaccount1"  # this deployment's event subscription


def wire(plane, endpoint=None, subscriptions=(SUB, OTHER)):
    return hook().wire(
        operator(plane),
        list(subscriptions),
        STORAGE_ID,
        QUEUE,
        "rg-dev-events",
        arm_endpoint=endpoint or plane.url,
        location="westeurope",
        poll_seconds=0.05,
    )


def test_every_subscription_delivers_to_the_event_queue_with_its_topics_identity(
    two_subscriptions,
):
    plane = two_subscriptions
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
    }  # someone else's, without an identity
    legacy = f"{existing}/eventSubscriptions/vm-write-and-start"  # the first release's
    function = f"/subscriptions/{SUB}/resourceGroups/rg-dev/providers/Microsoft.Web/sites/func-dev/functions/on_vm_event"
    plane.event_subscriptions[legacy.lower()] = {
        "id": legacy,
        "name": "vm-write-and-start",
        "properties": {
            "destination": {"endpointType": "AzureFunction", "properties": {"resourceId": function}}
        },
    }
    alerts = f"{existing}/eventSubscriptions/ops-alerts"  # another team's, on the same topic
    plane.event_subscriptions[alerts.lower()] = {
        "id": alerts,
        "name": "ops-alerts",
        "properties": {"destination": {"endpointType": "WebHook", "properties": {}}},
    }
    assert wire(plane) == [
        f"{SUB}: system topic remediator-subscription-events (created) -> queue {QUEUE}",
        f"{OTHER}: system topic ops-subscription-events (reused, identity added) -> queue "
        f"{QUEUE}; removed the older vm-write-and-start",
    ]
    created = f"/subscriptions/{SUB}/resourceGroups/rg-dev-events/providers/Microsoft.EventGrid/systemTopics/remediator-subscription-events"
    topics = {key: plane.system_topics[key.lower()] for key in (created, existing)}
    assert topics[created]["properties"]["source"] == f"/subscriptions/{SUB}"
    assert sorted(plane.event_subscriptions) == sorted(
        [
            f"{created}/eventSubscriptions/{OURS}".lower(),
            f"{existing}/eventSubscriptions/{OURS}".lower(),
            alerts.lower(),  # not this app's: left alone
        ]
    )
    properties = plane.event_subscriptions[f"{created}/eventSubscriptions/{OURS}".lower()][
        "properties"
    ]
    assert "destination" not in properties
    assert properties["deliveryWithResourceIdentity"] == {
        "identity": {"type": "SystemAssigned"},
        "destination": {
            "endpointType": "StorageQueue",
            "properties": {
                "resourceId": STORAGE_ID,
                "queueName": QUEUE,
                "queueMessageTimeToLiveInSeconds": 604800,
            },
        },
    }
    assert properties["eventDeliverySchema"] == "EventGridSchema"
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
    # Each topic's identity may send to the one queue, and only that.
    grants = sorted(
        (
            a["properties"]["scope"],
            a["properties"]["principalId"],
            a["properties"]["roleDefinitionId"],
        )
        for a in plane.role_assignments.values()
    )
    role = f"/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{QUEUE_SENDER}"
    assert grants == sorted(
        (QUEUE_SCOPE, topic["identity"]["principalId"], role) for topic in topics.values()
    )
    # Run again (a subscription added later): the same topics and grants, nothing new.
    wire(plane)
    assert len(plane.system_topics) == 2
    assert len(plane.role_assignments) == 2


def test_the_endpoint_bicep_gives_with_its_trailing_slash_builds_no_double_slash(
    two_subscriptions,
):
    """environment().resourceManager is "https://management.azure.com/" in the public
    cloud and has no slash in US Gov: both reach the same paths."""
    plane = two_subscriptions
    wire(plane, endpoint=plane.url + "/", subscriptions=[SUB])
    paths = [item.path for item in plane.log.arm()]
    assert paths
    assert not [path for path in paths if "//" in path]
    assert plane.log.count("Microsoft.Resources/subscriptions/resourceGroups/write") == 1


def test_an_unregistered_event_grid_provider_is_registered_and_waited_for(two_subscriptions):
    plane = two_subscriptions
    plane.estate.subscriptions[OTHER].providers["microsoft.eventgrid"] = "NotRegistered"
    plane.registration_seconds = 0.2
    lines = wire(plane)
    assert lines[0].startswith(f"{SUB}: system topic")  # registered already: nothing said
    assert lines[1].startswith(f"{OTHER}: registered Microsoft.EventGrid; system topic")
    assert plane.log.count("Microsoft.Resources/subscriptions/providers/register/action") == 1


def test_without_registration_event_grid_refuses_the_topic_as_azure_does(two_subscriptions):
    plane = two_subscriptions
    plane.estate.subscriptions[SUB].providers["microsoft.eventgrid"] = "NotRegistered"
    with pytest.raises(HttpResponseError) as refused:
        put_topic(plane, "t", SUB)
    assert refused.value.status_code == 409
    assert refused.value.error.code == "MissingSubscriptionRegistration"


def put_topic(plane, name: str, source_subscription: str) -> None:
    """A system topic PUT through azure-mgmt-eventgrid, in SUB's rg-dev-events."""
    from azure.mgmt.eventgrid import EventGridManagementClient
    from azure.mgmt.eventgrid.models import SystemTopic

    client = EventGridManagementClient(
        operator(plane), SUB, base_url=plane.url, credential_scopes=[f"{plane.url}/.default"]
    )
    client.system_topics.begin_create_or_update(
        "rg-dev-events",
        name,
        SystemTopic(
            location="global",
            source=f"/subscriptions/{source_subscription}",
            topic_type="Microsoft.Resources.Subscriptions",
        ),
    ).result()


def test_a_registration_that_never_ends_stops_the_hook_with_what_to_do(two_subscriptions):
    plane = two_subscriptions
    plane.estate.subscriptions[OTHER].providers["microsoft.eventgrid"] = "NotRegistered"
    plane.registration_seconds = 3600
    arm = hook().Arm(operator(plane), plane.url)
    waits = []
    with pytest.raises(SystemExit) as stopped:
        hook().ensure_registered(arm, OTHER, wait_seconds=10, poll_seconds=5, sleep=waits.append)
    assert waits == [5, 5]
    assert "still Registering" in str(stopped.value)
    assert "az provider register --namespace Microsoft.EventGrid" in str(stopped.value)


@pytest.mark.parametrize(
    ("destination", "why"),
    [
        ({"resourceId": STORAGE_ID, "queueName": "Bad_Queue"}, "Invalid storage queue name"),
        ({"resourceId": f"/subscriptions/{SUB}/x", "queueName": QUEUE}, "Invalid storage account"),
        (
            {"resourceId": STORAGE_ID, "queueName": QUEUE, "queueMessageTimeToLiveInSeconds": 0},
            "cannot be zero or negative",
        ),
    ],
)
def test_event_grid_refuses_a_storage_queue_destination_it_cannot_use(
    two_subscriptions, destination, why
):
    plane = two_subscriptions
    wire(plane, subscriptions=[SUB])
    topic = f"/subscriptions/{SUB}/resourceGroups/rg-dev-events/providers/Microsoft.EventGrid/systemTopics/remediator-subscription-events"
    arm = hook().Arm(operator(plane), plane.url)
    body = {
        "properties": {"destination": {"endpointType": "StorageQueue", "properties": destination}}
    }
    response = arm.send("PUT", f"{topic}/eventSubscriptions/bad", "2025-02-15", body)
    assert response.status_code == 400
    assert why in response.json()["error"]["message"]


def test_delivery_with_an_identity_the_topic_lacks_is_refused(two_subscriptions):
    plane = two_subscriptions
    topic = (
        f"/subscriptions/{SUB}/resourceGroups/rg-x/providers/Microsoft.EventGrid/systemTopics/plain"
    )
    arm = hook().Arm(operator(plane), plane.url)
    plain = {
        "location": "global",
        "properties": {
            "source": f"/subscriptions/{SUB}",
            "topicType": "Microsoft.Resources.Subscriptions",
        },
    }
    assert arm.send("PUT", topic, "2025-02-15", plain).status_code == 201
    body = {"properties": hook().event_subscription(STORAGE_ID, QUEUE).serialize()["properties"]}
    response = arm.send("PUT", f"{topic}/eventSubscriptions/x", "2025-02-15", body)
    assert response.status_code == 400
    assert "identity" in response.json()["error"]["message"]


def remove(plane, principal, endpoint=None, environment="dev", storage=STORAGE_ID):
    return hook().remove(
        operator(plane),
        [SUB, OTHER],
        environment,
        principal,
        f"rg-{environment}-events",
        storage_id=storage,
        queue=QUEUE,
        arm_endpoint=endpoint or plane.url,
    )


def test_remove_leaves_nothing_of_the_deployment_behind(two_subscriptions):
    """azd down deletes resource groups; the postdown hook takes what it leaves: the event
    subscriptions, the events groups (with the topics made there), the app's role
    assignments and the custom roles. Someone else's topic stays."""
    from localazure.authorization import deploy_access

    plane = two_subscriptions
    principal = "0b1e5c7e-0000-4000-8000-0000000000f1"
    for subscription in (SUB, OTHER):
        deploy_access(plane, "dev", principal, subscription)
    shared = f"/subscriptions/{OTHER}/resourceGroups/rg-ops/providers/Microsoft.EventGrid/systemTopics/ops"
    plane.system_topics[shared.lower()] = {
        "id": shared,
        "name": "ops",
        "type": "Microsoft.EventGrid/systemTopics",
        "location": "global",
        "identity": {
            "type": "SystemAssigned",
            "principalId": "0b1e5c7e-0000-4000-8000-0000000000f2",
        },
        "properties": {
            "source": f"/subscriptions/{OTHER}",
            "topicType": "Microsoft.Resources.Subscriptions",
        },
    }
    others = f"{shared}/eventSubscriptions/ops-alerts"
    plane.event_subscriptions[others.lower()] = {
        "id": others,
        "name": "ops-alerts",
        "properties": {},
    }
    wire(plane)
    assert len(plane.event_subscriptions) == 3
    # The group access.bicep made keeps its tags: the hook did not PUT it again.
    assert plane.resource_groups[f"/subscriptions/{SUB}/resourcegroups/rg-dev-events"]["tags"] == {
        "azd-env-name": "dev"
    }
    [app_role] = [
        a["name"]
        for a in plane.role_assignments.values()
        if a["properties"]["scope"] == f"/subscriptions/{SUB}"
    ]
    lines = remove(plane, principal, endpoint=plane.url + "/")
    assert lines[0] == (
        f"{SUB}: removed event subscription {OURS}, resource group rg-dev-events, "
        f"role assignment {app_role}, custom role "
        f"'Defender coverage remediator (dev, {SUB})'"
    )
    assert plane.event_subscriptions == {others.lower(): plane.event_subscriptions[others.lower()]}
    assert list(plane.system_topics) == [shared.lower()]
    assert plane.resource_groups == {}
    assert [a["properties"]["scope"] for a in plane.role_assignments.values()] == [QUEUE_SCOPE] * 2
    assert plane.role_definitions == {}
    # Again: nothing left to remove, and nothing fails.
    assert remove(plane, principal) == [
        f"{SUB}: removed nothing",
        f"{OTHER}: removed nothing",
    ]


def test_a_system_topic_lives_in_its_source_subscription_and_one_per_source(two_subscriptions):
    plane = two_subscriptions
    with pytest.raises(HttpResponseError) as elsewhere:
        put_topic(plane, "other-subscription", OTHER)
    assert elsewhere.value.status_code == 400
    put_topic(plane, "first", SUB)
    with pytest.raises(HttpResponseError) as second:
        put_topic(plane, "second", SUB)
    assert second.value.status_code == 400
    assert "Only one system topic is allowed per source" in second.value.error.message


def doctor_rows(world):
    return {(c.scope, c.check): c for c in doctor.run(world.services)}


def deploy_and_wire(world):
    """What `azd up` does after provisioning: the hook for SUB."""
    hook().wire(
        operator(world.plane),
        [SUB],
        STORAGE_ID,
        world.environment.get("REMEDIATION_EVENT_QUEUE", QUEUE),
        "rg-dev-events",
        arm_endpoint=world.plane.url,
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
    queue = world.environment["REMEDIATION_EVENT_QUEUE"]
    assert rows[(SUB, "events")].detail == (
        f"system topic remediator-subscription-events delivers to queue {queue} of storage "
        "account devstoreaccount1"
    )
    writes = [
        item
        for item in world.plane.log.arm()
        if item.method != "GET" and "ResourceGraph" not in item.operation
    ]
    assert [w.operation for w in writes] == [
        "Microsoft.Resources/subscriptions/resourceGroups/write",  # its events group
        "Microsoft.EventGrid/systemTopics/write",
        "Microsoft.Authorization/roleAssignments/write",  # the topic may send to the queue
        "Microsoft.EventGrid/systemTopics/eventSubscriptions/write",
    ]  # the hook's; the doctor wrote nothing


def test_the_doctor_does_not_take_another_queue_or_account_for_the_apps(world_factory):
    world = world_factory(small_estate(), WEBSITE_SITE_NAME="func-dev")
    elsewhere = STORAGE_ID.replace("devstoreaccount1", "stsomeoneelse")
    for storage, queue in ((STORAGE_ID, "other-queue"), (elsewhere, QUEUE)):
        world.plane.event_subscriptions.clear()
        hook().wire(
            operator(world.plane),
            [SUB],
            storage,
            queue,
            "rg-dev-events",
            arm_endpoint=world.plane.url,
            location="westeurope",
        )
        events = doctor_rows(world)[(SUB, "events")]
        assert not events.ok, (storage, queue)
        assert events.detail.endswith(
            f"no event subscription delivers to queue "
            f"{world.environment['REMEDIATION_EVENT_QUEUE']} of storage account devstoreaccount1"
        )


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


def test_two_deployments_share_a_topic_and_removing_one_leaves_the_other_wired(
    two_subscriptions,
):
    """One system topic per subscription: a second environment (its own storage account)
    reuses the first one's topic and adds its own event subscription beside it. Removing
    the first keeps the group while the topic still delivers to the second."""
    from localazure.authorization import deploy_access

    plane = two_subscriptions
    first, second = "0b1e5c7e-0000-4000-8000-0000000000f1", "0b1e5c7e-0000-4000-8000-0000000000f3"
    deploy_access(plane, "dev", first, SUB)
    deploy_access(plane, "prod", second, SUB)
    prod_storage = STORAGE_ID.replace("devstoreaccount1", "stprod0001")
    wire(plane, subscriptions=[SUB])
    hook().wire(
        operator(plane),
        [SUB],
        prod_storage,
        QUEUE,
        "rg-prod-events",
        arm_endpoint=plane.url,
        location="westeurope",
    )
    topic = f"/subscriptions/{SUB}/resourceGroups/rg-dev-events/providers/Microsoft.EventGrid/systemTopics/remediator-subscription-events"
    assert sorted(key.rsplit("/", 1)[1] for key in plane.event_subscriptions) == [
        OURS,
        "remediator-vm-events-stprod0001",
    ]
    lines = hook().remove(
        operator(plane),
        [SUB],
        "dev",
        first,
        "rg-dev-events",
        storage_id=STORAGE_ID,
        queue=QUEUE,
        arm_endpoint=plane.url,
    )
    assert lines[0].startswith(
        f"{SUB}: removed event subscription {OURS}, nothing of resource group rg-dev-events: "
        "its topic still delivers to remediator-subscription-events/remediator-vm-events-stprod0001"
    )
    assert topic.lower() in plane.system_topics  # prod's events still flow
    assert list(plane.event_subscriptions) == [
        f"{topic}/eventSubscriptions/remediator-vm-events-stprod0001".lower()
    ]
