import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remediation.events import Ignored, VmEvent, parse
from remediation.model import VmRef

SUB = "11111111-1111-1111-1111-111111111111"
OTHER_SUB = "99999999-9999-9999-9999-999999999999"
OURS = "0b1e5c7e-0000-4000-8000-00000000a11f"
VM_ID = (
    f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01"
)
SCOPE = frozenset({SUB})


def event_grid_write(resource_id=VM_ID, **data_overrides):
    """A ResourceWriteSuccess delivery as Event Grid documents it."""
    data = {
        "authorization": {
            "scope": resource_id,
            "action": "Microsoft.Compute/virtualMachines/write",
            "evidence": {
                "role": "Contributor",
                "roleAssignmentScope": f"/subscriptions/{SUB}",
                "roleAssignmentId": "0e2b5f9a3c1d4e6f8a7b9c0d1e2f3a4b",
                "roleDefinitionId": "b24988ac618042a0ab8820f7382dd24c",
                "principalId": "5c2f1a3b00004000800000000000beef",
                "principalType": "User",
            },
        },
        "claims": {
            "aud": "https://management.core.windows.net/",
            "iss": "https://sts.windows.net/72f988bf-0000-0000-0000-000000000000/",
            "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "http://schemas.microsoft.com/identity/claims/objectidentifier": (
                "5c2f1a3b-0000-4000-8000-00000000beef"
            ),
            "name": "Ops Person",
        },
        "correlationId": "7a1c9b2e-5c3d-4e6f-8a7b-9c0d1e2f3a4b",
        "httpRequest": {
            "clientRequestId": "c0ffee00-0000-0000-0000-000000000001",
            "clientIpAddress": "127.0.0.1",
            "method": "PUT",
            "url": f"https://management.azure.com{resource_id}?api-version=2026-04-01",
        },
        "resourceProvider": "Microsoft.Compute",
        "resourceUri": resource_id,
        "operationName": "Microsoft.Compute/virtualMachines/write",
        "status": "Succeeded",
        "subscriptionId": SUB,
        "tenantId": "72f988bf-0000-0000-0000-000000000000",
    }
    data.update(data_overrides)
    return {
        "id": "3f3c2a1e-9b8d-4c7e-a6f5-0123456789ab",
        "topic": f"/subscriptions/{SUB}",
        "subject": resource_id,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-11-28T10:00:00.1234567Z",
        "data": data,
        "dataVersion": "2",
        "metadataVersion": "1",
    }


def event_grid_start(resource_id=VM_ID):
    event = event_grid_write(
        resource_id, operationName="Microsoft.Compute/virtualMachines/start/action"
    )
    del event["data"]["httpRequest"]  # actions carry none
    event["eventType"] = "Microsoft.Resources.ResourceActionSuccess"
    return event


def cloud_event(event):
    """The same delivery in the CloudEvents 1.0 schema."""
    return {
        "specversion": "1.0",
        "id": event["id"],
        "source": event["topic"],
        "subject": event["subject"],
        "type": event["eventType"],
        "time": event["eventTime"],
        "datacontenttype": "application/json",
        "data": event["data"],
    }


@pytest.mark.parametrize("schema", [lambda e: e, cloud_event], ids=["eventgrid", "cloudevents"])
@pytest.mark.parametrize(
    ("make", "kind"), [(event_grid_write, "write"), (event_grid_start, "start")]
)
def test_vm_writes_and_starts_are_accepted_in_both_schemas(schema, make, kind):
    result = parse(schema(make()), SCOPE)
    assert isinstance(result, VmEvent)
    assert result.vm == VmRef(SUB, "rg-web", "web-01")
    assert result.kind == kind
    assert result.event_id == "3f3c2a1e-9b8d-4c7e-a6f5-0123456789ab"
    assert result.correlation_id == "7a1c9b2e-5c3d-4e6f-8a7b-9c0d1e2f3a4b"
    assert result.caller_object_id == "5c2f1a3b-0000-4000-8000-00000000beef"
    assert result.caller_app_id == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
    assert result.time == "2026-11-28T10:00:00.1234567Z"


def test_a_functions_event_grid_event_is_accepted():
    import azure.functions as func

    raw = event_grid_write()
    delivered = func.EventGridEvent(
        id=raw["id"],
        data=raw["data"],
        topic=raw["topic"],
        subject=raw["subject"],
        event_type=raw["eventType"],
        event_time=None,
        data_version=raw["dataVersion"],
    )
    result = parse(delivered, SCOPE)
    assert isinstance(result, VmEvent)
    assert result.vm.name == "web-01"


def test_the_caller_falls_back_to_the_authorization_evidence():
    event = event_grid_write()
    event["data"]["claims"] = {"appid": "x"}
    event["data"]["authorization"]["evidence"]["principalId"] = OURS.replace(
        "-", ""
    )  # as ARM writes it
    assert parse(event, SCOPE, own_principal_id=OURS) == Ignored(
        "caused by this app's own identity (loop guard)", event["id"], VM_ID, SUB
    )


def test_our_own_writes_are_ignored():
    event = event_grid_write()
    event["data"]["claims"]["http://schemas.microsoft.com/identity/claims/objectidentifier"] = (
        OURS.upper()
    )
    result = parse(event, SCOPE, own_principal_id=OURS)
    assert isinstance(result, Ignored)
    assert "loop guard" in result.reason
    assert isinstance(parse(event, SCOPE, own_principal_id=""), VmEvent)


def test_subscriptions_out_of_scope_are_ignored_with_the_subscription_named():
    result = parse(event_grid_write(), frozenset({OTHER_SUB}))
    assert isinstance(result, Ignored)
    assert result.reason == f"subscription {SUB} is not in REMEDIATION_SUBSCRIPTIONS"
    assert result.subscription == SUB


def _mutate(path, value):
    def mutate(event):
        target = event
        for key in path[:-1]:
            target = target[key]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return event

    return mutate


DELETE = object()
EXT_ID = VM_ID + "/extensions/MDE.Linux"
VM_PREFIX = (
    f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/"
)

# fmt: off
HOSTILE = {
    "extension write": (
        lambda e: _mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/extensions/write")(
            _mutate(("subject",), EXT_ID)(_mutate(("data", "resourceUri"), EXT_ID)(e))
        ),
        "an extension write never starts",
    ),
    "write failure": (_mutate(("eventType",), "Microsoft.Resources.ResourceWriteFailure"), "did not succeed"),
    "write cancel": (_mutate(("eventType",), "Microsoft.Resources.ResourceWriteCancel"), "did not succeed"),
    "delete": (_mutate(("eventType",), "Microsoft.Resources.ResourceDeleteSuccess"), "delete"),
    "storage event": (_mutate(("eventType",), "Microsoft.Storage.BlobCreated"), "not a VM write"),
    "other operation": (_mutate(("data", "operationName"), "Microsoft.Network/networkInterfaces/write"), "not a VM"),
    "deallocate action": (
        lambda e: _mutate(("eventType",), "Microsoft.Resources.ResourceActionSuccess")(
            _mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/deallocate/action")(e)
        ),
        "not a VM write or start",
    ),
    "start with write type": (
        _mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/start/action"),
        "not a VM write or start",
    ),
    "status failed": (_mutate(("data", "status"), "Failed"), "not Succeeded"),
    "no id": (_mutate(("id",), DELETE), "no id"),
    "data is a string": (_mutate(("data",), "{}"), "no data object"),
    "data is null": (_mutate(("data",), None), "no data object"),
    "subject and resourceUri differ": (
        _mutate(("data", "resourceUri"), VM_PREFIX + "web-02"),
        "different resources",
    ),
    "resourceUri missing": (_mutate(("data", "resourceUri"), DELETE), "different resources"),
    "dot-dot in subject": (
        lambda e: _mutate(("subject",), VM_PREFIX + "../web-01")(
            _mutate(("data", "resourceUri"), VM_PREFIX + "../web-01")(e)
        ),
        "not a valid VM id",
    ),
    "query string": (_mutate(("subject",), VM_ID + "?api-version=1"), "not a valid VM id"),
    "fragment": (_mutate(("subject",), VM_ID + "#x"), "not a valid VM id"),
    "percent-encoding": (_mutate(("subject",), VM_PREFIX + "web%2F01"), "not a valid VM id"),
    "whitespace": (_mutate(("subject",), VM_PREFIX + "web 01"), "not a valid VM id"),
    "trailing newline": (_mutate(("subject",), VM_ID + "\n"), "not a valid VM id"),
    "extra segment": (_mutate(("subject",), VM_ID + "/extra"), "not a valid VM id"),
    "not a GUID subscription": (
        _mutate(("subject",), VM_ID.replace(SUB, "my-subscription")),
        "not a valid VM id",
    ),
    "scale set instance": (
        _mutate(
            ("subject",),
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
            "virtualMachineScaleSets/ss/virtualMachines/0",
        ),
        "not a valid VM id",
    ),
    "very long name": (_mutate(("subject",), VM_PREFIX + "a" * 65), "not a valid VM id"),
    "subject not a string": (_mutate(("subject",), 12), "not a valid VM id"),
    "topic of another subscription": (_mutate(("topic",), f"/subscriptions/{OTHER_SUB}"), "topic"),
    "data subscription differs": (_mutate(("data", "subscriptionId"), OTHER_SUB), "subscriptionId"),
    "operation not a string": (_mutate(("data", "operationName"), ["x"]), "not a VM write"),
}
# fmt: on


@pytest.mark.parametrize("name", list(HOSTILE))
def test_malformed_and_hostile_events_are_ignored_with_a_reason(name):
    mutate, expected = HOSTILE[name]
    result = parse(mutate(copy.deepcopy(event_grid_write())), SCOPE)
    assert isinstance(result, Ignored), result
    assert expected in result.reason


@pytest.mark.parametrize("delivery", [None, 42, "text", [], [event_grid_write()], {}, {"id": "x"}])
def test_what_is_not_an_event_object_is_ignored(delivery):
    result = parse(delivery, SCOPE)
    assert isinstance(result, Ignored)
    assert "not an Event Grid or CloudEvents" in result.reason


def test_reasons_never_echo_unbounded_or_unprintable_input():
    event = event_grid_write()
    event["eventType"] = "X\x00\x1b[31m" + "y" * 5000
    result = parse(event, SCOPE)
    assert isinstance(result, Ignored)
    assert len(result.reason) < 400
    assert "\x1b" not in result.reason
    assert "\x00" not in result.reason


def test_case_differences_that_arm_ignores_are_accepted():
    event = event_grid_write(
        VM_ID.replace("resourceGroups", "resourcegroups").replace(
            "Microsoft.Compute", "microsoft.compute"
        )
    )
    event["data"]["operationName"] = "MICROSOFT.COMPUTE/virtualMachines/write"
    result = parse(event, SCOPE)
    assert isinstance(result, VmEvent)
    assert result.vm.id == VM_ID


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def _near_valid():
    """Valid envelopes with fields replaced by arbitrary JSON: reaches the deep checks."""
    keys = st.sampled_from(["id", "topic", "subject", "eventType", "eventTime", "data"])
    data_keys = st.sampled_from(
        ["resourceUri", "operationName", "status", "subscriptionId", "claims"]
    )
    return st.tuples(keys, json_values, data_keys, json_values, st.booleans())


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parsing_arbitrary_json_never_raises(value):
    result = parse(value, SCOPE)
    assert isinstance(result, Ignored | VmEvent)


@settings(max_examples=300, deadline=None)
@given(_near_valid())
def test_a_parsed_event_always_names_a_valid_vm_in_scope(change):
    key, value, data_key, data_value, cloud = change
    event = event_grid_write()
    event[key] = value
    if isinstance(event.get("data"), dict):
        event["data"][data_key] = data_value
    result = parse(cloud_event(event) if cloud else event, SCOPE)
    if isinstance(result, VmEvent):
        assert VmRef.parse(result.vm.id) == result.vm
        assert result.vm.subscription in SCOPE
