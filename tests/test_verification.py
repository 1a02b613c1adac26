"""Verified protection: matching Defender for Endpoint's devices to VMs, the test
alert's input and output handling (plain values), then end to end on the local Azure."""

import itertools
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from remediation.defender import CHUNK_CHARS, DeviceIndex, _chunks, compact
from remediation.model import Device, TransientError, VmFacts, VmRef
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


class SnapshotTable:
    """The table calls a run's device snapshot makes and reads back, in memory."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict] = {}

    def submit_transaction(self, operations):
        for _, entity in operations:
            self.upsert_entity(entity)

    def upsert_entity(self, entity):
        self.rows[(entity["PartitionKey"], entity["RowKey"])] = dict(entity)

    def get_entity(self, partition, row):
        from azure.core.exceptions import ResourceNotFoundError

        if (partition, row) not in self.rows:
            raise ResourceNotFoundError("ResourceNotFound")
        return self.rows[(partition, row)]

    def query_entities(self, query_filter, parameters):
        assert query_filter == "PartitionKey eq @pk and RowKey gt @low and RowKey lt @high"
        return [
            entity
            for (pk, rk), entity in sorted(self.rows.items())
            if pk == parameters["pk"] and parameters["low"] < rk < parameters["high"]
        ]


def test_a_batch_loads_its_subscriptions_devices_and_those_of_no_known_subscription():
    from remediation import defender

    table = SnapshotTable()
    elsewhere = "99999999-9999-4999-8999-999999999999"
    devices = [
        raw_device(),  # this subscription, by resource id
        raw_device(resource=None, subscription=None, vm_id="BBBB", computerDnsName="by-vmid"),
        raw_device(
            resource=None, subscription=elsewhere, vm_id="CCCC", computerDnsName="elsewhere"
        ),
    ]
    assert defender.snapshot(table, "run-1", devices) == 3
    index = defender.load(table, "run-1", [SUB])
    assert index.problem == ""
    by_vm_id = VmFacts(vm=VmRef(SUB, "rg-app", "web-09"), vm_id="bbbb")
    assert index.find(by_vm_id).name == "by-vmid"  # the API named no subscription for it
    assert index.find(VmFacts(vm=VmRef(SUB, "rg-app", "web-08"), vm_id="cccc")) is None
    assert index.find(VmFacts(vm=VM)).name == "web-01"


def test_a_run_whose_device_list_failed_loads_its_problem():
    from remediation import defender

    table = SnapshotTable()
    defender.snapshot_failed(table, "run-1", "the list could not be read")
    assert defender.load(table, "run-1", [SUB]).problem == "the list could not be read"
    assert defender.load(table, "run-2", [SUB]).problem == defender.DeviceIndex().problem


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


# --- End to end on the local Azure ------------------------------------------------------
def _estate():
    from localazure.estate import MDE_PUBLISHER, Extension
    from tests.test_service import estate, new_vm

    world_estate = estate("ready")
    for name, image, device in [
        ("seen", "ubuntu", "active"),
        ("inactive", "ubuntu", "inactive"),
        ("never", "ubuntu", "never"),
        ("by-vmid", "ws2022", "vmid-only"),
        ("bare", "ubuntu", "active"),
    ]:
        vm = new_vm(name, image, mde_device=device)
        if name != "bare":
            kind = "MDE.Windows" if image == "ws2022" else "MDE.Linux"
            vm.extensions[kind.lower()] = Extension(kind, MDE_PUBLISHER, kind)
        world_estate.add_vm(vm)
    return world_estate


def _by_name(records):
    return {r.vm.rsplit("/", 1)[-1]: r for r in records if r.vm}


def _sweep(world, exit_code=0):
    from tests.test_sweep import sweep_cli

    code, output = sweep_cli("--json")
    assert code == exit_code, output
    lines = [json.loads(line) for line in output.splitlines()]
    return {r["vm"].rsplit("/", 1)[-1]: r for r in lines[:-1]}, lines[-1]


def set_env(world, monkeypatch, **values):
    """Settings that name the plane itself (known once it runs)."""
    from remediation import bootstrap

    for name, value in values.items():
        world.environment[name] = value
        monkeypatch.setenv(name, value)
    bootstrap.services.cache_clear()


def verify_world(world_factory, monkeypatch, **settings):
    world = world_factory(_estate(), **settings)
    set_env(world, monkeypatch, REMEDIATION_MDE_API=world.plane.url)
    return world


def test_a_sweep_verifies_each_succeeded_vm_against_defender_for_endpoint(
    world_factory, monkeypatch
):
    world = verify_world(world_factory, monkeypatch)
    records, summary = _sweep(world)
    assert {name: r["verification"] for name, r in records.items()} == {
        "seen": "verified",
        "inactive": "unhealthy",
        "never": "pending",  # first seen Succeeded now: within the grace period
        "by-vmid": "verified",  # matched by vmMetadata.vmId
        "bare": "",  # no extension: nothing to verify
    }
    assert "Inactive" in records["inactive"]["verification_reason"]
    assert "mdatp health" in records["inactive"]["verification_hint"]
    assert summary["verification"] == {"pending": 1, "unhealthy": 1, "verified": 2}
    # The device list is read once per run, whatever the batches, and its copy goes with it.
    assert world.plane.log.count("WindowsDefenderATP/machines/read") == 1
    table = world.services.audit.table
    assert list(table.query_entities("PartitionKey ge 'mde-' and PartitionKey lt 'mde.'")) == []
    # The CLI's summary table counts them too.
    from tests.test_sweep import sweep_cli

    code, output = sweep_cli()
    assert code == 0
    assert re.search(r"verification: verified\s+│\s+2", output), output
    assert re.search(r"finding: no-monitoring-agent\s+│\s+5", output), output


def test_past_the_grace_period_a_vm_never_seen_turns_not_seen_and_notifies_once(
    world_factory, monkeypatch
):
    from datetime import timedelta

    from remediation import bootstrap
    from remediation.defender import State

    world = verify_world(world_factory, monkeypatch)
    set_env(
        world,
        monkeypatch,
        REMEDIATION_NOTIFY_TOPIC_ENDPOINT=f"{world.plane.url}/api/events",
        REMEDIATION_NOTIFY_TOPIC_KEY=world.plane.topic_key,
    )
    records, _ = _sweep(world)
    assert records["never"]["verification"] == "pending"
    services = bootstrap.services()
    vm_id = records["never"]["vm"]
    sub = records["never"]["subscription"]
    state = services.states.get(vm_id, sub)
    old = state.since - timedelta(hours=25)
    services.states.write(sub, {vm_id: State(old, state.verified)})
    records, _summary = _sweep(world)
    assert records["never"]["verification"] == "not-seen"
    assert "onboarding package" in records["never"]["verification_hint"]
    assert records["seen"]["verification"] == "verified"
    _sweep(world)  # still not seen: no second notification
    turned = [e for e in world.plane.published if e["eventType"] == "Remediation.NotVerified"]
    # Each VM once, when it turned: "inactive" at the first sweep, "never" at the second.
    assert [(e["subject"].rsplit("/", 1)[-1], e["data"]["verification"]) for e in turned] == [
        ("inactive", "unhealthy"),
        ("never", "not-seen"),
    ]
    # Between sweeps, events read what the last sweep found from this state.
    found = services.states.get(vm_id, sub)
    assert found.verified.value.value == "not-seen"


def test_verification_off_or_refused_is_unchecked_and_says_why(world_factory, monkeypatch):
    from tests.conftest import APP

    world = world_factory(_estate())
    records, summary = _sweep(world)
    assert records["seen"]["verification"] == "unchecked"
    assert "REMEDIATION_MDE_API is empty" in records["seen"]["verification_reason"]
    assert world.plane.log.count("WindowsDefenderATP/machines/read") == 0
    # With the API on but no Machine.Read.All: still a full sweep, every VM unchecked.
    for principal in world.plane.estate.principals.values():
        if principal.client_id == APP.client_id:
            principal.app_roles = []
    set_env(world, monkeypatch, REMEDIATION_MDE_API=world.plane.url)
    records, summary = _sweep(world)
    assert {r["verification"] for r in records.values() if r["verification"]} == {"unchecked"}
    assert "Machine.Read.All" in records["seen"]["verification_reason"]
    assert summary["vms"] == 5


def test_many_devices_are_read_in_pages_of_ten_thousand_within_the_api_limits(
    world_factory, monkeypatch
):
    # One call per 10 s: the second page is refused with a Retry-After of up to 10 s,
    # within a retry budget of 20 s; reading a page takes far less than 10 s.
    world = verify_world(world_factory, monkeypatch, REMEDIATION_RETRY_BUDGET_SECONDS="20")
    world.plane.estate.other_devices = 10_500  # workstations: no vmMetadata
    world.plane.mde_limits = ((1, 10.0),)
    records, _ = _sweep(world)
    assert records["seen"]["verification"] == "verified"
    # by-vmid's device sorts 10,327th of 10,503 (ids are stable): only page 2 holds it.
    assert records["by-vmid"]["verification"] == "verified"
    reads = [
        i for i in world.plane.log.items() if i.operation == "WindowsDefenderATP/machines/read"
    ]
    assert [i.status for i in reads if i.status == 200] == [200, 200]  # two pages
    assert 429 in {i.status for i in reads}  # throttled, retried after Retry-After


def test_the_log_filters_on_verification_and_findings(world_factory, monkeypatch):
    world = verify_world(world_factory, monkeypatch)
    _sweep(world)
    body = json.loads(world.get("remediations", {"verification": "unhealthy"}).get_body())
    assert [r["vm"].rsplit("/", 1)[-1] for r in body["records"]] == ["inactive"]
    body = json.loads(world.get("remediations", {"finding": "no-monitoring-agent"}).get_body())
    assert len(body["records"]) == 5  # none of these VMs has a monitoring agent
    assert all(r["findings"] == ["no-monitoring-agent"] for r in body["records"])
    bad = world.get("remediations", {"verification": "maybe"})
    assert bad.status_code == 400


# --- The test alert, end to end ------------------------------------------------------------
TEST_ON = {"REMEDIATION_MODE": "enforce", "REMEDIATION_ALLOW_TEST_ALERT": "true"}


def grant_test_alert(world):
    """What the deployment's custom role adds with allowTestAlert=true."""
    from localazure.estate import TEST_ALERT_ROLE

    for principal in world.plane.estate.principals.values():
        principal.actions = [*principal.actions, *TEST_ALERT_ROLE]


def alert_cli(*args):
    import io

    from remediation.__main__ import main

    out = io.StringIO()
    return main(["test-alert", *args], out=out), out.getvalue()


def _table_rows(world):
    return sorted(
        (e["PartitionKey"], e["RowKey"]) for e in world.services.audit.table.list_entities()
    )


@pytest.mark.parametrize(
    ("settings", "vm", "words"),
    [
        ({"REMEDIATION_MODE": "enforce"}, "seen", "REMEDIATION_ALLOW_TEST_ALERT"),
        ({"REMEDIATION_ALLOW_TEST_ALERT": "true"}, "seen", "REMEDIATION_MODE is report"),
        (TEST_ON, "bare", "MDE.Linux is absent"),
        (TEST_ON, "stopped", "the VM is deallocated"),
        (TEST_ON, "excluded", "the VM is excluded"),
        (
            TEST_ON,
            "/subscriptions/22222222-2222-4222-8222-222222222222/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x",
            "its subscription is not in scope",
        ),
        (TEST_ON, "/subscriptions/x/../../virtualMachines/y", "not a virtual machine resource id"),
    ],
)
def test_a_refused_test_alert_says_why_and_writes_nothing(world_factory, settings, vm, words):
    from localazure.estate import MDE_PUBLISHER, Extension
    from tests.test_service import new_vm

    world_estate = _estate()
    for name, changes in [
        ("stopped", {"power": "deallocated"}),
        ("excluded", {"tags": {"defender-remediation-exclude": "true"}}),
    ]:
        extra = new_vm(name, **changes)
        extra.extensions["mde.linux"] = Extension("MDE.Linux", MDE_PUBLISHER, "MDE.Linux")
        world_estate.add_vm(extra)
    world = world_factory(world_estate, **settings)
    vm_id = vm if vm.startswith("/") else new_vm(vm).id
    world.services.audit.create()
    before = _table_rows(world)
    code, _ = alert_cli(vm_id)
    assert code == 2
    import function_app
    from localazure.host import http_request

    response = function_app.test_alert(
        http_request("POST", "test-alert", json.dumps({"vm": vm_id}).encode())
    )
    assert response.status_code == 400
    assert any(words in problem for problem in json.loads(response.get_body())["errors"])
    assert _table_rows(world) == before
    assert world.services.tests.queue.peek_messages() == []
    assert world.plane.run_commands == []


def test_a_test_alert_without_the_run_command_permission_fails_with_the_grant(world_factory):
    from tests.test_service import new_vm

    world_factory(_estate(), **TEST_ON)
    code, output = alert_cli("--wait", "--json", new_vm("seen").id)
    assert code == 1
    [record] = [json.loads(line) for line in output.splitlines()]
    assert record["test_alert"] == "failed"
    assert "Microsoft.Compute/virtualMachines/runCommand/action" in record["hint"]


def test_the_test_alert_runs_the_detection_test_and_finds_its_alert(world_factory):
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON, REMEDIATION_DISMISS_TEST_ALERTS="true")
    grant_test_alert(world)
    world.plane.test_alert_seconds = 0
    vm = world.plane.estate.vm(new_vm("seen").id)
    package = world.plane.estate.subscriptions[vm.subscription].onboarding_linux
    vm.run_command_output = f"downloaded; key={package}; sig=abc%2Bdef ok"
    code, output = alert_cli("--wait", "--json", vm.id)
    assert code == 0, output
    [record] = [json.loads(line) for line in output.splitlines()]
    assert (record["test_alert"], record["outcome"], record["trigger"]) == (
        "verified",
        "succeeded",
        "cli",
    )
    assert "EICAR" in record["reason"]
    assert "dismissed" in record["reason"]
    [(ran_on, body)] = world.plane.run_commands
    assert ran_on.lower() == vm.id.lower()
    assert body["commandId"] == "RunShellScript"
    assert any("eicar" in line for line in body["script"])
    assert [a["properties"]["status"] for a in world.plane.alerts] == ["Dismissed"]
    # The output is kept, scrubbed: no package, no signature, anywhere.
    from remediation import testalert

    [row] = world.services.audit.table.query_entities(f"PartitionKey eq '{testalert.PARTITION}'")
    stored = json.dumps(dict(row), default=str) + json.dumps(record)
    assert "ok" in json.loads(row["result"])["output"]["stdout"]
    assert package not in stored
    assert "abc%2Bdef" not in stored
    # The operations it used are the ones the deployment grants with allowTestAlert.
    used = {i.operation for i in world.plane.log.items() if i.status < 400}
    assert {
        "Microsoft.Compute/virtualMachines/runCommand/action",
        "Microsoft.Security/locations/alerts/read",
        "Microsoft.Security/locations/alerts/dismiss/action",
    } <= used


def test_a_test_alert_that_never_comes_is_not_verified_at_its_deadline(world_factory):
    from datetime import timedelta

    from remediation import testalert
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    vm_id = new_vm("inactive").id  # Succeeded, but its sensor does not report
    test = testalert.begin(world.services, vm_id, "cli")
    services = world.services
    [message] = services.tests.queue.receive_messages()
    services.tests.queue.delete_message(message)
    assert testalert.handle(services, message.content) is None  # ran the test; watching
    world.plane.settle(now=True)
    watch = json.dumps({"schema": testalert.SCHEMA, "test_id": test.test_id, "step": "watch"})
    before = services.tests.queue.get_queue_properties().approximate_message_count
    assert testalert.handle(services, watch) is None  # no alert yet: looks again later
    after = services.tests.queue.get_queue_properties().approximate_message_count
    assert after == before + 1  # the next look, a delayed message
    record = testalert.handle(services, watch, now=test.deadline + timedelta(seconds=1))
    assert (record.test_alert, record.outcome) == ("not-verified", "failed")
    assert "within 60 minutes" in record.reason
    assert "Defender portal" in record.hint
    assert world.plane.alerts == []
    assert testalert.handle(services, watch) is None  # ended: a late message does nothing
    code, _ = alert_cli(vm_id)  # the VM is free again
    assert code == 0


def test_the_report_shows_verified_coverage_and_the_last_test_alert_of_who_needs_a_human(
    world_factory, monkeypatch
):
    from datetime import timedelta

    from remediation import testalert
    from tests.test_service import new_vm

    world = verify_world(world_factory, monkeypatch)
    _sweep(world)
    set_env(world, monkeypatch, **TEST_ON)
    grant_test_alert(world)
    services = world.services
    test = testalert.begin(services, new_vm("inactive").id, "http")
    [message] = services.tests.queue.receive_messages()
    testalert.handle(services, message.content)
    watch = json.dumps({"schema": testalert.SCHEMA, "test_id": test.test_id, "step": "watch"})
    testalert.handle(services, watch, now=test.deadline + timedelta(seconds=1))
    html = world.get("report").get_body().decode()
    # 5 eligible running VMs; "seen" and "by-vmid" are onboarded and Active.
    assert '<span class="big" id="verified">40%</span>' in html
    assert '<span id="verified-count">2</span>' in html
    assert '<span class="big" id="coverage">80%</span>' in html  # 4 Succeeded of 5
    human = html[
        html.index('<table id="human">') : html.index("</table>", html.index('id="human"'))
    ]
    assert human.count("<tr>") == 2  # the header, and the unhealthy VM
    assert "virtualMachines/inactive" in human
    assert "health Inactive" in human
    assert "not-verified, <time" in human  # its last test alert
    assert "1 unhealthy" in html
    assert '<p id="no-monitoring-agent"><span>5</span> running VMs' in html


def test_between_sweeps_an_event_carries_the_last_sweeps_verification(world_factory, monkeypatch):
    from tests.test_service import new_vm

    world = verify_world(world_factory, monkeypatch)
    [before] = world.deliver(world.plane.set_power(new_vm("inactive").id, "running"))
    assert before.verification == "pending"  # no sweep has read the device list yet
    assert "next sweep" in before.verification_reason
    _, summary = _sweep(world)
    run = json.loads(world.get_status(summary["run_id"]).get_body())
    [after] = world.deliver(world.plane.set_power(new_vm("inactive").id, "running"))
    assert after.verification == "unhealthy"
    # Said with the time it was found: the sweep's start.
    swept = datetime.fromisoformat(run["started"])
    assert after.verification_reason.startswith(
        f"Found by the sweep of {swept:%Y-%m-%d %H:%M} UTC: "
    )
    assert "health Inactive" in after.verification_reason
    assert world.plane.log.count("WindowsDefenderATP/machines/read") == 1  # the sweep's only


def test_an_install_starts_the_grace_period(world_factory, monkeypatch):
    from tests.test_service import ENFORCE, new_vm

    world = verify_world(world_factory, monkeypatch, **ENFORCE)
    events = world.plane.create_vm(new_vm("fresh"))
    world.deliver(*events)
    world.run_queue()
    [installed] = [r for r in world.audit_records() if r.outcome == "succeeded"]
    assert installed.verification == "pending"
    state = world.services.states.get(installed.vm, installed.subscription)
    assert state.verified.value.value == "pending"
    assert abs((state.since - installed.time).total_seconds()) < 60


def test_a_second_test_on_a_running_test_is_409_and_the_status_route_follows_it(world_factory):
    import function_app
    from localazure.host import http_request
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    body = json.dumps({"vm": new_vm("seen").id}).encode()
    first = function_app.test_alert(http_request("POST", "test-alert", body))
    assert first.status_code == 202
    started = json.loads(first.get_body())
    assert started["status_url"].endswith(f"/test-alert/{started['test_id']}")
    second = function_app.test_alert(http_request("POST", "test-alert", body))
    assert second.status_code == 409
    assert started["test_id"] in json.loads(second.get_body())["errors"][0]

    def status(test_id):
        return function_app.test_alert_status(
            http_request("GET", f"test-alert/{test_id}", route={"testId": test_id})
        )

    shown = json.loads(status(started["test_id"]).get_body())
    assert (shown["status"], shown["vm"], shown["trigger"]) == (
        "running",
        new_vm("seen").id,
        "http",
    )
    assert status("20261129T000000Z-00000000").status_code == 404
    assert status("../x").status_code == 400


def test_a_test_step_that_fails_every_try_ends_the_test_as_failed(world_factory):
    from remediation import testalert
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    world.plane.faults.add("POST", "runCommand", 503, count=1000)
    services = world.services
    test = testalert.begin(services, new_vm("seen").id, "cli")
    run = json.dumps({"schema": testalert.SCHEMA, "test_id": test.test_id, "step": "run"})
    with pytest.raises(TransientError):
        testalert.handle(services, run)
    record = testalert.handle_poison(services, run)
    assert (record.test_alert, record.outcome) == ("failed", "failed")
    assert "gave up after every retry" in record.reason
    assert testalert.get(services, test.test_id).status == "failed"
    assert testalert.handle_poison(services, run) is None  # ended: nothing twice
    assert (
        list(services.audit.table.query_entities(f"PartitionKey eq '{testalert.LOCK_PARTITION}'"))
        == []
    )
    dropped = testalert.handle(services, "not json")  # one record, then dropped
    assert (dropped.decision, dropped.outcome) == ("error", "failed")
    assert "A malformed test-alert message was dropped" in dropped.reason


def test_a_test_alert_on_a_vm_azure_cannot_read_says_so_and_writes_nothing(world_factory):
    import function_app
    from localazure.host import http_request
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    world.services.audit.create()
    before = _table_rows(world)
    world.plane.faults.add("GET", "virtualMachines/seen$", 404, count=1)
    body = json.dumps({"vm": new_vm("seen").id}).encode()
    gone = function_app.test_alert(http_request("POST", "test-alert", body))
    assert gone.status_code == 400  # a 404: "does not exist"
    world.plane.faults.add("GET", "virtualMachines/seen$", 403, count=1)
    refused = function_app.test_alert(http_request("POST", "test-alert", body))
    assert refused.status_code == 502  # the app's identity may not: not the caller's fault
    errors = json.loads(refused.get_body())["errors"]
    assert "could not be read" in errors[0]
    assert "grant the app's identity" in errors[1]
    world.plane.faults.add("GET", "virtualMachines/seen$", 503, count=1000)
    unanswered = function_app.test_alert(http_request("POST", "test-alert", body))
    assert unanswered.status_code == 503  # Azure did not answer: try again later
    assert _table_rows(world) == before
    assert world.plane.run_commands == []


def test_the_windows_detection_test_is_microsofts_command_line_quoted_for_powershell():
    from remediation.testalert import SCRIPTS, WINDOWS_TEST_ARGS, OsFamily

    documented = (  # learn.microsoft.com/defender-endpoint/run-detection-test
        "powershell.exe -NoExit -ExecutionPolicy Bypass -WindowStyle Hidden "
        "$ErrorActionPreference = 'silentlycontinue';(New-Object System.Net.WebClient)"
        ".DownloadFile('http://127.0.0.1/1.exe', 'C:\\test-MDATP-test\\invoice.exe');"
        "Start-Process 'C:\\test-MDATP-test\\invoice.exe'"
    )
    [line] = [x for x in SCRIPTS[OsFamily.WINDOWS] if "-ArgumentList" in x]
    match = re.fullmatch(
        r"Start-Process (\S+) -WindowStyle Hidden -ArgumentList '((?:[^']|'')*)'", line
    )
    assert match, line  # one single-quoted literal: every inner quote doubled
    assert f"{match[1]} {match[2].replace(chr(39) * 2, chr(39))}" == documented
    assert WINDOWS_TEST_ARGS in documented


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_a_vm_listed_twice_matches_its_active_onboarded_device_seen_last(order):
    candidates = [
        raw_device(health="Inactive", lastSeen="2026-11-29T09:00:00Z", id="a" * 40),
        raw_device(health="Active", lastSeen="2026-11-29T00:00:00Z", id="e" * 40),
        raw_device(health="Active", lastSeen="2026-11-20T00:00:00Z", id="f" * 40),
        raw_device(
            health="Active",
            onboardingStatus="CanBeOnboarded",
            lastSeen="2026-11-29T10:00:00Z",
            id="c" * 40,
        ),
    ]
    index = DeviceIndex(problem="")
    for position in order:
        index.add(compact(candidates[position])[1])
    for facts in (VmFacts(vm=VM), VmFacts(vm=VmRef(SUB, "rg-app", "other"), vm_id=VM_GUID)):
        assert index.find(facts).device_id == "e" * 40


def test_scrub_also_takes_key_colon_value_forms():
    cleaned = scrub('{"accountKey": "abc123"} password: hunter2 keep /subscriptions/1/x')
    assert "abc123" not in cleaned
    assert "hunter2" not in cleaned
    assert cleaned.endswith("keep /subscriptions/1/x")


def test_a_redelivered_run_step_runs_the_test_once_and_keeps_watching(world_factory):
    from remediation import testalert
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    services = world.services
    test = testalert.begin(services, new_vm("seen").id, "cli")
    [message] = services.tests.queue.receive_messages()
    services.tests.queue.delete_message(message)
    later = test.started + timedelta(minutes=7)
    assert testalert.handle(services, message.content, now=later) is None
    assert testalert.handle(services, message.content, now=later) is None  # delivered again
    assert len(world.plane.run_commands) == 1
    ran = testalert.get(services, test.test_id)
    assert ran.deadline == later + timedelta(minutes=60)  # counted from the detection test
    watches = services.tests.queue.get_queue_properties().approximate_message_count
    assert watches == 2  # each delivery leaves a watch: the test goes on either way


def test_a_test_queued_before_it_was_turned_off_does_not_run(world_factory, monkeypatch):
    from remediation import testalert
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    test = testalert.begin(world.services, new_vm("seen").id, "cli")
    set_env(world, monkeypatch, REMEDIATION_MODE="report")
    run = json.dumps({"schema": testalert.SCHEMA, "test_id": test.test_id, "step": "run"})
    record = testalert.handle(world.services, run)
    assert (record.test_alert, record.mode) == ("failed", "report")
    assert "report mode" in record.reason
    assert world.plane.run_commands == []


def test_a_stopped_or_excluded_vm_is_unchecked_and_needs_no_human(world_factory, monkeypatch):
    from tests.test_service import new_vm

    world = verify_world(
        world_factory,
        monkeypatch,
        REMEDIATION_EXCLUDE_TAG="no-mde",
        REMEDIATION_NOTIFY_TOPIC_KEY="",
    )
    world.plane.estate.vm(new_vm("inactive").id).power = "deallocated"
    world.plane.estate.vm(new_vm("never").id).tags["no-mde"] = "true"
    records, _ = _sweep(world)
    assert records["inactive"]["verification"] == "unchecked"
    assert "deallocated" in records["inactive"]["verification_reason"]
    assert records["never"]["verification"] == "unchecked"
    assert "excluded" in records["never"]["verification_reason"]
    html = world.get("report").get_body().decode()
    assert '<span id="human-count">0</span>' in html


def test_states_of_vms_gone_are_dropped_and_those_azure_did_not_answer_for_kept(
    world_factory, monkeypatch
):
    from tests.test_service import new_vm

    world = verify_world(world_factory, monkeypatch)
    _sweep(world)
    services = world.services
    sub = new_vm("seen").subscription
    assert set(services.states.read(sub)) >= {new_vm("seen").id.lower(), new_vm("never").id.lower()}
    del world.plane.estate.vms[new_vm("never").id.lower()]  # deleted
    world.plane.faults.add(
        "GET", "pricings", 503, count=1000
    )  # posture unreadable: all unavailable
    records, _ = _sweep(world, exit_code=1)  # nothing measured: not a done run
    assert records["seen"]["outcome"] == "unavailable"
    kept = set(services.states.read(sub))
    assert new_vm("seen").id.lower() in kept  # listed, only unanswered: its grace goes on
    assert new_vm("never").id.lower() not in kept


def test_an_ended_test_whose_record_was_not_written_gets_it_on_the_next_delivery(world_factory):
    from remediation import testalert
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    services = world.services
    test = testalert.begin(services, new_vm("seen").id, "http")
    # A worker ended the row, then died before the record: the row says so.
    ended = testalert.get(services, test.test_id)
    entity = dict(services.audit.table.get_entity(testalert.PARTITION, test.test_id))
    entity.update(status="failed", result=json.dumps({"reason": "died", "hint": ""}))
    services.audit.table.update_entity(entity)
    run = json.dumps({"schema": testalert.SCHEMA, "test_id": ended.test_id, "step": "run"})
    first = testalert.handle(services, run)
    assert (first.test_alert, first.correlation_id) == ("failed", test.test_id)
    assert testalert.handle(services, run) is None  # recorded now: nothing more
    assert testalert.handle_poison(services, run) is None
    records = [r for r in world.audit_records() if r.correlation_id == test.test_id]
    assert len(records) == 1
    locks = services.audit.table.query_entities(f"PartitionKey eq '{testalert.LOCK_PARTITION}'")
    assert list(locks) == []
    assert world.plane.run_commands == []


def test_an_event_on_a_stopped_vm_says_unchecked_whatever_the_last_sweep_found(
    world_factory, monkeypatch
):
    from tests.test_service import new_vm

    world = verify_world(world_factory, monkeypatch)
    _sweep(world)
    from localazure.eventgrid import record_event

    vm_id = new_vm("inactive").id
    world.plane.estate.vm(vm_id).power = "deallocated"
    write = record_event(
        world.plane, "Write", "Microsoft.Compute/virtualMachines/write", vm_id, None
    )
    [stopped] = world.deliver(write)
    assert stopped.verification == "unchecked"
    assert "deallocated" in stopped.verification_reason


def test_a_test_whose_queue_lost_it_is_ended_when_the_vm_is_tested_again(world_factory):
    from remediation import testalert
    from tests.test_service import new_vm

    world = world_factory(_estate(), **TEST_ON)
    grant_test_alert(world)
    services = world.services
    lost = testalert.begin(services, new_vm("seen").id, "cli")
    services.tests.queue.clear_messages()  # its steps are gone
    again_at = lost.deadline + testalert.LOCK_MARGIN + timedelta(minutes=1)
    fresh = testalert.begin(services, new_vm("seen").id, "cli", now=again_at)
    assert testalert.get(services, lost.test_id).status == "failed"
    [record] = [r for r in world.audit_records() if r.correlation_id == lost.test_id]
    assert (record.test_alert, record.reason) == (
        "failed",
        "The test was lost: no step of it ran before its deadline.",
    )
    assert testalert.get(services, fresh.test_id).status == "running"
    locks = services.audit.table.query_entities(f"PartitionKey eq '{testalert.LOCK_PARTITION}'")
    assert [lock["test_id"] for lock in locks] == [fresh.test_id]  # the old test freed nothing
