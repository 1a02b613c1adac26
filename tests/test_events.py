import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remediation.events import Ignored, VmEvent, parse
from remediation.model import Kind, VmRef, load_json

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


def test_an_object_that_is_not_a_mapping_is_not_an_event():
    delivered = SimpleNamespace(event_type="Microsoft.Resources.ResourceWriteSuccess", id="x")
    assert parse(delivered, SCOPE) == Ignored(
        "the delivery is not an Event Grid or CloudEvents JSON object"
    )


def test_the_caller_falls_back_to_the_authorization_evidence():
    event = event_grid_write()
    event["data"]["claims"] = {"appid": "x"}
    event["data"]["authorization"]["evidence"]["principalId"] = OURS.replace(
        "-", ""
    )  # as ARM writes it
    assert parse(event, SCOPE, own_principal_id=OURS) == Ignored(
        "caused by this app's own identity (loop guard)", event["id"], VM_ID, SUB
    )


@pytest.mark.parametrize("claims", ["no claims", None, "claims", ["oid"]])
def test_without_a_claims_object_the_caller_comes_from_the_evidence(claims):
    event = event_grid_write()
    if claims == "no claims":
        del event["data"]["claims"]
    else:
        event["data"]["claims"] = claims
    result = parse(event, SCOPE)
    assert isinstance(result, VmEvent)
    assert (result.caller_object_id, result.caller_app_id) == (
        "5c2f1a3b00004000800000000000beef",
        "",
    )


def test_the_loop_guard_reads_the_oid_claim_alone():
    event = event_grid_write()
    event["data"]["claims"] = {"oid": OURS}
    del event["data"]["authorization"]
    assert parse(event, SCOPE, own_principal_id=OURS) == Ignored(
        "caused by this app's own identity (loop guard)", event["id"], VM_ID, SUB
    )


def test_someone_elses_write_passes_the_loop_guard():
    result = parse(event_grid_write(), SCOPE, own_principal_id=OURS)
    assert isinstance(result, VmEvent)
    assert result.caller_object_id == "5c2f1a3b-0000-4000-8000-00000000beef"


@pytest.mark.parametrize("caller", ["", "xxxx", OURS])
def test_without_our_principal_id_no_caller_is_taken_for_us(caller):
    event = event_grid_write()
    event["data"]["claims"] = {"oid": caller}
    del event["data"]["authorization"]
    result = parse(event, SCOPE)
    assert isinstance(result, VmEvent)
    assert result.caller_object_id == caller


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
    assert parse(event_grid_write(), frozenset({OTHER_SUB})) == Ignored(
        f"subscription {SUB} is not in scope (REMEDIATION_SUBSCRIPTIONS or "
        "REMEDIATION_MANAGEMENT_GROUPS)",
        "3f3c2a1e-9b8d-4c7e-a6f5-0123456789ab",
        VM_ID,
        SUB,
    )


@pytest.mark.parametrize("status", ["Succeeded", "succeeded", "SUCCEEDED"])
def test_the_status_succeeded_is_accepted_in_any_case(status):
    assert isinstance(parse(event_grid_write(status=status), SCOPE), VmEvent)


HEX_SUB = "abcdef01-2345-4678-9abc-def012345678"
HEX_VM_ID = VM_ID.replace(SUB, HEX_SUB)


def test_subscription_ids_in_the_envelope_and_data_are_read_in_any_case():
    event = event_grid_write(HEX_VM_ID, subscriptionId=HEX_SUB.upper())
    event["topic"] = f"/SUBSCRIPTIONS/{HEX_SUB.upper()}/"
    result = parse(event, frozenset({HEX_SUB}))
    assert isinstance(result, VmEvent)
    assert result.vm == VmRef(HEX_SUB, "rg-web", "web-01")


def test_a_cloud_event_from_another_subscription_is_ignored_as_forged():
    event = cloud_event(event_grid_write())
    event["source"] = f"/subscriptions/{OTHER_SUB}"
    assert parse(event, SCOPE) == Ignored(
        "the topic is not the VM's subscription", "3f3c2a1e-9b8d-4c7e-a6f5-0123456789ab", VM_ID
    )


@pytest.mark.parametrize("source", ["no source", "", None])
def test_a_cloud_event_without_a_source_is_ignored(source):
    event = cloud_event(event_grid_write())
    if source == "no source":
        del event["source"]
    else:
        event["source"] = source
    assert parse(event, SCOPE) == Ignored(
        "the event names no topic (source)", "3f3c2a1e-9b8d-4c7e-a6f5-0123456789ab", VM_ID
    )


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


def _not_vm(subject):
    return f"the subject is not a valid VM or Arc machine id: {subject!r}"


EXTENSION = "an extension write never starts a remediation (ours, MDC's or anyone's)"
SCALE_SET_VM = (
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/"
    "virtualMachineScaleSets/ss/virtualMachines/0"
)

# (the change to a valid delivery, the whole reason it is ignored)
# fmt: off
HOSTILE = {
    "extension write": (
        lambda e: _mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/extensions/write")(
            _mutate(("subject",), EXT_ID)(_mutate(("data", "resourceUri"), EXT_ID)(e))
        ),
        EXTENSION,
    ),
    "extension write in capitals": (
        _mutate(("data", "operationName"), "MICROSOFT.COMPUTE/VIRTUALMACHINES/EXTENSIONS/WRITE"),
        EXTENSION,
    ),
    "extension delete": (_mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/extensions/delete"), EXTENSION),
    "write failure": (
        _mutate(("eventType",), "Microsoft.Resources.ResourceWriteFailure"),
        "the operation did not succeed ('Microsoft.Resources.ResourceWriteFailure')",
    ),
    "write cancel": (
        _mutate(("eventType",), "Microsoft.Resources.ResourceWriteCancel"),
        "the operation did not succeed ('Microsoft.Resources.ResourceWriteCancel')",
    ),
    "delete": (_mutate(("eventType",), "Microsoft.Resources.ResourceDeleteSuccess"), "a delete needs no remediation"),
    "storage event": (
        _mutate(("eventType",), "Microsoft.Storage.BlobCreated"),
        "event type 'Microsoft.Storage.BlobCreated' is not a VM write or start, or an Arc write",
    ),
    "other operation": (
        _mutate(("data", "operationName"), "Microsoft.Network/networkInterfaces/write"),
        "operation 'Microsoft.Network/networkInterfaces/write' is not a VM write or start, or an Arc write",
    ),
    "deallocate action": (
        lambda e: _mutate(("eventType",), "Microsoft.Resources.ResourceActionSuccess")(
            _mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/deallocate/action")(e)
        ),
        "operation 'Microsoft.Compute/virtualMachines/deallocate/action' is not a VM write or start, or an Arc write",
    ),
    "start with write type": (
        _mutate(("data", "operationName"), "Microsoft.Compute/virtualMachines/start/action"),
        "operation 'Microsoft.Compute/virtualMachines/start/action' is not a VM write or start, or an Arc write",
    ),
    "status failed": (_mutate(("data", "status"), "Failed"), "the operation's status is 'Failed', not Succeeded"),
    "no id": (_mutate(("id",), DELETE), "the event has no id"),
    "data is a string": (_mutate(("data",), "{}"), "the event has no data object"),
    "data is null": (_mutate(("data",), None), "the event has no data object"),
    "subject and resourceUri differ": (
        _mutate(("data", "resourceUri"), VM_PREFIX + "web-02"),
        "the subject and data.resourceUri name different resources",
    ),
    "resourceUri missing": (
        _mutate(("data", "resourceUri"), DELETE),
        "the subject and data.resourceUri name different resources",
    ),
    "dot-dot in subject": (
        lambda e: _mutate(("subject",), VM_PREFIX + "../web-01")(
            _mutate(("data", "resourceUri"), VM_PREFIX + "../web-01")(e)
        ),
        _not_vm(VM_PREFIX + "../web-01"),
    ),
    "query string": (_mutate(("subject",), VM_ID + "?api-version=1"), _not_vm(VM_ID + "?api-version=1")),
    "fragment": (_mutate(("subject",), VM_ID + "#x"), _not_vm(VM_ID + "#x")),
    "percent-encoding": (_mutate(("subject",), VM_PREFIX + "web%2F01"), _not_vm(VM_PREFIX + "web%2F01")),
    "whitespace": (_mutate(("subject",), VM_PREFIX + "web 01"), _not_vm(VM_PREFIX + "web 01")),
    "trailing newline": (_mutate(("subject",), VM_ID + "\n"), _not_vm(VM_ID + "?")),
    "extra segment": (_mutate(("subject",), VM_ID + "/extra"), _not_vm(VM_ID + "/extra")),
    "not a GUID subscription": (
        _mutate(("subject",), VM_ID.replace(SUB, "my-subscription")),
        _not_vm(VM_ID.replace(SUB, "my-subscription")),
    ),
    "scale set instance": (_mutate(("subject",), SCALE_SET_VM), _not_vm(SCALE_SET_VM)),
    "very long name": (_mutate(("subject",), VM_PREFIX + "a" * 65), _not_vm(VM_PREFIX + "a" * 65)),
    "subject not a string": (_mutate(("subject",), 12), _not_vm("")),
    "topic of another subscription": (
        _mutate(("topic",), f"/subscriptions/{OTHER_SUB}"),
        "the topic is not the VM's subscription",
    ),
    "topic of a resource group": (
        _mutate(("topic",), f"/subscriptions/{SUB}/resourceGroups/rg-web"),
        "the topic is not the VM's subscription",
    ),
    "no topic": (_mutate(("topic",), DELETE), "the event names no topic (source)"),
    "empty topic": (_mutate(("topic",), ""), "the event names no topic (source)"),
    "topic not a string": (_mutate(("topic",), {"subscription": SUB}), "the event names no topic (source)"),
    "data subscription differs": (
        _mutate(("data", "subscriptionId"), OTHER_SUB),
        "data.subscriptionId does not match the VM's subscription",
    ),
    "operation not a string": (_mutate(("data", "operationName"), ["x"]), "operation '' is not a VM write or start, or an Arc write"),
}
# fmt: on


@pytest.mark.parametrize("name", list(HOSTILE))
def test_malformed_and_hostile_events_are_ignored_with_a_reason(name):
    mutate, reason = HOSTILE[name]
    result = parse(mutate(copy.deepcopy(event_grid_write())), SCOPE)
    assert isinstance(result, Ignored), result
    assert result.reason == reason


def test_an_ignored_event_keeps_its_id_and_subject_clipped_and_printable():
    event = event_grid_write()
    event["id"] = "id\x07" + "i" * 400
    event["subject"] = VM_ID + "\n"
    event["data"]["resourceUri"] = VM_ID + "\n"
    assert parse(event, SCOPE) == Ignored(_not_vm(VM_ID + "?"), "id?" + "i" * 297, VM_ID + "?")


@pytest.mark.parametrize("delivery", [None, 42, "text", [], [event_grid_write()], {}, {"id": "x"}])
def test_what_is_not_an_event_object_is_ignored(delivery):
    assert parse(delivery, SCOPE) == Ignored(
        "the delivery is not an Event Grid or CloudEvents JSON object"
    )


def test_reasons_never_echo_unbounded_or_unprintable_input():
    event = event_grid_write()
    event["eventType"] = "X\x00\x1b[31m" + "y" * 5000
    assert parse(event, SCOPE).reason == (
        "event type 'X??[31m" + "y" * 293 + "' is not a VM write or start, or an Arc write"
    )


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


# --- The shipped examples (examples/events/), as the README uses them ----------------------
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "events").glob("*.json"))


def test_each_kind_of_event_ships_in_both_schemas():
    assert [path.name for path in EXAMPLES] == [
        f"{kind}.{schema}.json"
        for kind in ("arc-write", "vm-start", "vm-write")
        for schema in ("cloudevents", "eventgrid")
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_is_an_event_about_a_machine_of_the_readme_estate(path):
    from localazure.estate import generate

    estate = generate(300, 3, 7, arc_machines=20)  # the README's local section
    delivery = load_json(path.read_bytes(), max_bytes=1 << 20)
    event = parse(delivery, frozenset(estate.subscriptions))
    assert isinstance(event, VmEvent), event
    assert estate.vm(event.vm.id) is not None
    expected = {"vm-write": Kind.VM, "vm-start": Kind.VM, "arc-write": Kind.ARC}
    assert event.vm.kind is expected[path.name.split(".")[0]]
    twin = path.with_name(
        path.name.replace("eventgrid", "X")
        .replace("cloudevents", "eventgrid")
        .replace("X", "cloudevents")
    )
    other = parse(load_json(twin.read_bytes(), max_bytes=1 << 20), frozenset(estate.subscriptions))
    assert other == event  # both schemas say the same
