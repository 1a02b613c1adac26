"""Verified protection: matching Defender for Endpoint's devices to VMs, the test
alert's input and output handling (plain values), then end to end on the local Azure."""

import json
from datetime import UTC, datetime

import pytest

from remediation.defender import CHUNK_CHARS, DeviceIndex, _chunks, compact
from remediation.model import Device, VmFacts, VmRef
from remediation.testalert import Refused, _is_test_alert, parse_body, scrub

SUB = "11111111-1111-1111-1111-111111111111"
VM = VmRef(SUB, "rg-app", "web-01")
VM_GUID = "0f0e0d0c-0000-4000-8000-000000000007"


def raw_device(resource=VM.id, vm_id=VM_GUID, subscription=SUB, health="Active", **more):
    meta = {"vmId": vm_id, "cloudProvider": "Azure", "resourceId": resource}
    if subscription is not None:
        meta["subscriptionId"] = subscription
    return {
        "id": "d" * 40,
        "computerDnsName": "web-01",
        "healthStatus": health,
        "onboardingStatus": "Onboarded",
        "lastSeen": "2026-11-29T10:00:00Z",
        "vmMetadata": meta,
        **more,
    }


def test_a_device_is_kept_by_subscription_with_its_ids_lower_case():
    assert compact(raw_device(resource=VM.id.upper(), vm_id=VM_GUID.upper())) == (
        SUB,
        [VM.id.lower(), VM_GUID, "d" * 40, "web-01", "Active", "Onboarded", "2026-11-29T10:00:00Z"],
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "x", "vmMetadata": None},  # a workstation: not an Azure VM
        {"id": "x"},
        {"id": "x", "vmMetadata": {"cloudProvider": "Azure"}},  # no id to match
        "not an object",
        None,
    ],
)
def test_devices_that_name_no_vm_are_left_out(raw):
    assert compact(raw) is None


def test_the_subscription_comes_from_the_resource_id_when_the_api_does_not_say():
    assert compact(raw_device(subscription=None))[0] == SUB
    assert compact(raw_device(resource=None, subscription=None))[0] == "_"


def test_devices_match_by_resource_id_then_by_vm_id():
    index = DeviceIndex(problem="")
    index.add(compact(raw_device())[1])
    index.add(compact(raw_device(resource=None, vm_id="AAAA", health="Inactive"))[1])
    facts = VmFacts(vm=VM, vm_id="something-else")
    assert index.find(facts) == Device(
        "d" * 40, "web-01", "Active", "Onboarded", "2026-11-29T10:00:00Z"
    )
    other = VmFacts(vm=VmRef(SUB, "rg-app", "web-02"), vm_id="aaaa")
    assert index.find(other).health == "Inactive"
    assert index.find(VmFacts(vm=VmRef(SUB, "rg-app", "web-03"))) is None  # no vmId: no match


def test_chunks_hold_every_row_once_and_stay_under_the_property_limit():
    rows = [
        [f"/subscriptions/{SUB}/x/{i}", str(i), "d" * 40, "n", "Active", "Onboarded", ""]
        for i in range(2000)
    ]
    chunks = list(_chunks(rows))
    assert len(chunks) > 1
    assert all(len(chunk) <= CHUNK_CHARS for chunk in chunks)
    assert [row for chunk in chunks for row in json.loads(chunk)] == rows


def test_scrub_removes_what_looks_secret_and_keeps_the_tail():
    package = "UEsDBBQAAAAIA" + "Q" * 60
    sas = "https://st.blob.core.windows.net/c/b?sv=2022-11-02&sig=abcDEF%2Bxyz&se=2026"
    token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwcyJ9.c2lnbmF0dXJlLXZhbHVl"
    text = f"start {package} then {sas} and {token} password=hunter2 end"
    cleaned = scrub(text)
    for secret in (package, "abcDEF", token, "hunter2", "2022-11-02"):
        assert secret not in cleaned
    assert cleaned.startswith("start [redacted] then")
    assert cleaned.endswith(" end")
    assert scrub("start " + "ok. " * 300) == ("ok. " * 300)[-1000:]  # the last 1,000


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "the body is"),
        (b"[1]", "must be a JSON object"),
        (b"{}", "vm: required"),
        (b'{"vm": 3}', "vm: required"),
        (b'{"vm": "x", "mode": "enforce"}', "unknown fields: 'mode'"),
        (b"{" * 5000, "the body is"),
    ],
)
def test_a_bad_test_alert_body_is_refused_with_the_reason(body, problem):
    with pytest.raises(Refused) as refused:
        parse_body(body)
    assert refused.value.status == 400
    assert any(problem in item for item in refused.value.problems), refused.value.problems


def test_a_good_body_names_the_vm():
    assert parse_body(json.dumps({"vm": VM.id}).encode()) == VM.id


def alert(
    name="[Test Alert] Suspicious Powershell commandline",
    resource=VM.id,
    when="2026-11-29T12:10:00Z",
):
    return {
        "id": f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Security/locations/westeurope/alerts/1",
        "properties": {
            "alertDisplayName": name,
            "timeGeneratedUtc": when,
            "resourceIdentifiers": [{"type": "AzureResource", "azureResourceId": resource}],
        },
    }


SINCE = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("candidate", "marker", "matches"),
    [
        (alert(), "[test alert]", True),
        (alert(resource=VM.id.upper()), "[test alert]", True),
        (alert(name="'EICAR_Test_File' malware was prevented"), "eicar", True),
        (alert(name="Antimalware Action Taken"), "[test alert]", False),
        (alert(resource=VmRef(SUB, "rg-app", "web-02").id), "[test alert]", False),
        (alert(when="2026-11-29T11:59:59Z"), "[test alert]", False),  # before the test
        (alert(when="not a time"), "[test alert]", False),
        ({"id": "x"}, "[test alert]", False),
    ],
)
def test_the_test_alert_is_the_vms_named_alert_since_the_test(candidate, marker, matches):
    assert _is_test_alert(candidate, VM, marker, SINCE) is matches
