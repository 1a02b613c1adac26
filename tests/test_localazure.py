"""Tests of the local control plane itself: it must behave like the Azure it stands for."""

import json

import pytest
import requests
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient

from localazure import Estate, Extension, Faults, LocalAzure, generate
from localazure.compute import COMPUTE_API
from localazure.graph import BASELINE_QUERY, SWEEP_QUERY
from remediation.events import Ignored, VmEvent, parse
from tests.conftest import APP, SUB, generated_estate, small_estate

VM_PATH = f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/ubuntu-1"


def token(plane, principal=APP):
    credential = ClientSecretCredential(
        plane.estate.tenant,
        principal.client_id,
        principal.secret,
        authority=plane.url,
        disable_instance_discovery=True,
        connection_verify=plane.ca_path,
    )
    return credential.get_token(f"{plane.url}/.default").token


class Client:
    """Plain HTTPS calls with a bearer token, to see the wire as ARM shows it."""

    def __init__(self, plane, principal=APP):
        self.plane = plane
        self.session = requests.Session()
        self.session.verify = plane.ca_path
        self.session.headers["Authorization"] = f"Bearer {token(plane, principal)}"

    def get(self, path, **params):
        return self.session.get(self.plane.url + path, params={"api-version": COMPUTE_API} | params)

    def put(self, path, body, **params):
        return self.session.put(
            self.plane.url + path, params={"api-version": COMPUTE_API} | params, json=body
        )

    def post(self, path, body, **params):
        return self.session.post(self.plane.url + path, params=params, json=body)


def test_it_listens_on_loopback_only(plane):
    assert plane.url.startswith("https://127.0.0.1:")


def test_arm_without_a_token_is_401(plane):
    response = requests.get(
        plane.url + VM_PATH, params={"api-version": COMPUTE_API}, verify=plane.ca_path
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_forged_token_is_401(plane):
    session = requests.Session()
    forged = token(plane)[:-4] + "AAAA"
    response = session.get(
        plane.url + VM_PATH,
        params={"api-version": COMPUTE_API},
        headers={"Authorization": f"Bearer {forged}"},
        verify=plane.ca_path,
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("version", "code"),
    [("2099-01-01", "NoRegisteredProviderFound"), ("", "MissingApiVersionParameter")],
)
def test_an_unknown_api_version_is_400(plane, version, code):
    response = Client(plane).get(VM_PATH, **{"api-version": version})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_vm_get_with_and_without_instance_view(plane):
    client = Client(plane)
    plain = client.get(VM_PATH).json()
    assert "instanceView" not in plain["properties"]
    expanded = client.get(VM_PATH, **{"$expand": "instanceView"}).json()
    statuses = [status["code"] for status in expanded["properties"]["instanceView"]["statuses"]]
    assert "PowerState/running" in statuses
    assert expanded["properties"]["instanceView"]["osName"] == "ubuntu"


def test_list_all_pages_with_next_links_through_the_sdk(use_identity):
    with LocalAzure(generated_estate(120, 1), list_page_size=50) as plane:
        use_identity(plane)
        sub = next(iter(plane.estate.subscriptions))
        credential = ClientSecretCredential(
            plane.estate.tenant,
            APP.client_id,
            APP.secret,
            authority=plane.url,
            disable_instance_discovery=True,
        )
        compute = ComputeManagementClient(
            credential, sub, base_url=plane.url, credential_scopes=[f"{plane.url}/.default"]
        )
        names = [vm.name for vm in compute.virtual_machines.list_all()]
        assert len(names) == len(set(names)) == 120
        assert plane.log.count("Microsoft.Compute/virtualMachines/read") == 3


def test_read_buckets_throttle_with_retry_after_and_remaining_headers(use_identity):
    with LocalAzure(small_estate(), reads=(3, 0.5)) as plane:
        use_identity(plane)
        client = Client(plane)
        answers = [client.get(VM_PATH) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["x-ms-ratelimit-remaining-subscription-reads"] == "2"
        assert int(answers[3].headers["Retry-After"]) >= 1


def test_write_buckets_are_separate_from_reads(use_identity):
    with LocalAzure(small_estate(), reads=(1, 0.1), writes=(5, 1.0)) as plane:
        use_identity(plane)
        client = Client(plane)
        assert client.get(VM_PATH).status_code == 200
        assert client.get(VM_PATH).status_code == 429
        body = {"kind": "DataExportSettings", "properties": {"enabled": True}}
        response = client.put(
            f"/subscriptions/{SUB}/providers/Microsoft.Security/settings/WDATP",
            body,
            **{"api-version": "2022-05-01"},
        )
        assert response.status_code == 200
        assert "x-ms-ratelimit-remaining-subscription-writes" in response.headers


def test_extension_put_is_a_long_running_operation(use_identity):
    with LocalAzure(small_estate(), lro_seconds=0.3) as plane:
        use_identity(plane)
        client = Client(plane)
        body = {
            "location": "westeurope",
            "properties": {
                "publisher": "Microsoft.Azure.AzureDefenderForServers",
                "type": "MDE.Linux",
                "typeHandlerVersion": "1.0",
                "protectedSettings": {
                    "defenderForEndpointOnboardingScript": plane.estate.subscriptions[
                        SUB
                    ].onboarding_linux
                },
            },
        }
        created = client.put(VM_PATH + "/extensions/MDE.Linux", body)
        assert created.status_code == 201
        assert created.json()["properties"]["provisioningState"] == "Creating"
        status_url = created.headers["Azure-AsyncOperation"]
        assert "api-version=" in status_url
        first = client.session.get(status_url).json()
        assert first["status"] == "InProgress"
        again = client.put(VM_PATH + "/extensions/MDE.Linux", body)
        assert again.status_code == 409  # another extension operation is in flight
        plane.settle(now=True)  # the operation's time has passed
        assert client.session.get(status_url).json()["status"] == "Succeeded"
        assert (
            client.get(VM_PATH + "/extensions/MDE.Linux").json()["properties"]["provisioningState"]
            == "Succeeded"
        )


def test_a_failing_extension_operation_carries_the_error(plane):
    client = Client(plane)
    flatcar = VM_PATH.replace("ubuntu-1", "flatcar-1")
    body = {
        "location": "westeurope",
        "properties": {
            "publisher": "Microsoft.Azure.AzureDefenderForServers",
            "type": "MDE.Linux",
            "typeHandlerVersion": "1.0",
            "protectedSettings": {
                "defenderForEndpointOnboardingScript": plane.estate.subscriptions[
                    SUB
                ].onboarding_linux
            },
        },
    }
    created = client.put(flatcar + "/extensions/MDE.Linux", body)
    plane.settle(now=True)
    status = client.session.get(created.headers["Azure-AsyncOperation"]).json()
    assert status["status"] == "Failed"
    assert status["error"] == {
        "code": "VMExtensionProvisioningError",
        "message": "VM has reported a failure when processing extension 'MDE.Linux' "
        "(publisher 'Microsoft.Azure.AzureDefenderForServers' and type 'MDE.Linux'). Error "
        "message: 'Enable failed: exit code 10: unsupported distro'. More information on "
        "troubleshooting is available at https://aka.ms/vmextensionlinuxtroubleshoot. ",
    }
    # The status code is not in the operation's error: only in the instance view.
    view = client.get(flatcar, **{"$expand": "instanceView"}).json()["properties"]["instanceView"]
    assert view["extensions"][0]["statuses"][0]["code"] == "ProvisioningState/failed/10"


def _mde_body(plane, type_="MDE.Linux"):
    return {
        "location": "westeurope",
        "properties": {
            "publisher": "Microsoft.Azure.AzureDefenderForServers",
            "type": type_,
            "typeHandlerVersion": "1.0",
            "protectedSettings": {
                "defenderForEndpointOnboardingScript": plane.estate.subscriptions[
                    SUB
                ].onboarding_linux
            },
        },
    }


def test_another_failed_extension_blocks_a_new_one_with_409_naming_it(plane):
    vm = plane.estate.vm(VM_PATH)
    vm.extensions["omsagentforlinux"] = Extension(
        "OmsAgentForLinux",
        "Microsoft.EnterpriseCloud.Monitoring",
        "OmsAgentForLinux",
        state="Failed",
    )
    answer = Client(plane).put(VM_PATH + "/extensions/MDE.Linux", _mde_body(plane))
    assert answer.status_code == 409
    assert answer.json() == {
        "error": {
            "code": "OperationNotAllowed",
            "message": "Operation 'PUT' is not allowed on VM 'ubuntu-1' since VM has extension "
            "'OmsAgentForLinux' in failed state.",
        }
    }


def test_one_extension_per_handler_a_second_name_is_400(plane):
    vm = plane.estate.vm(VM_PATH)
    vm.extensions["mde-by-policy"] = Extension(
        "mde-by-policy", "Microsoft.Azure.AzureDefenderForServers", "MDE.Linux"
    )
    answer = Client(plane).put(VM_PATH + "/extensions/MDE.Linux", _mde_body(plane))
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "BadRequest",
            "message": "Multiple VMExtensions per handler not supported for OS type 'Linux'. "
            "VMExtension 'mde-by-policy' with handler "
            "'Microsoft.Azure.AzureDefenderForServers.MDE.Linux' already added or specified "
            "in input.",
            "innererror": {"internalErrorCode": "MultipleExtensionsPerHandlerNotAllowed"},
        }
    }
    # Under the name it already has, the same handler is taken.
    assert Client(plane).put(VM_PATH + "/extensions/mde-by-policy", _mde_body(plane)).ok


def test_409s_say_which_conflict_it_is(use_identity):
    with LocalAzure(small_estate(), lro_seconds=30) as slow:
        use_identity(slow)
        client = Client(slow)
        assert client.put(VM_PATH + "/extensions/MDE.Linux", _mde_body(slow)).status_code == 201
        busy = client.put(VM_PATH + "/extensions/MDE.Linux", _mde_body(slow))
        assert (busy.status_code, busy.json()["error"]) == (
            409,
            {
                "code": "OperationNotAllowed",
                "message": "Operation 'PUT' is not allowed on VM 'ubuntu-1' since another "
                "operation is in progress.",
            },
        )
        slow.estate.vm(VM_PATH).power = "deallocated"
        stopped = client.put(VM_PATH + "/extensions/MDE.Linux", _mde_body(slow))
        assert (stopped.status_code, stopped.json()["error"]) == (
            409,
            {
                "code": "OperationNotAllowed",
                "message": "Cannot modify extensions in the VM when the VM is not running.",
                "innererror": {"internalErrorCode": "CannotModifyExtensionsWhenVMNotRunning"},
            },
        )


def test_a_new_vms_guest_agent_reports_late(use_identity):
    from localazure import Vm

    with LocalAzure(small_estate(), agent_report_seconds=3600) as plane:
        use_identity(plane)
        plane.create_vm(Vm(SUB, "rg-web", "fresh-1", os_name="ubuntu", os_version="22.04"))
        fresh = VM_PATH.replace("ubuntu-1", "fresh-1")
        view = Client(plane).get(fresh, **{"$expand": "instanceView"}).json()
        view = view["properties"]["instanceView"]
        assert "osName" not in view
        assert "osVersion" not in view
        assert view["vmAgent"] == {
            "vmAgentVersion": "Unknown",
            "statuses": [
                {
                    "code": "ProvisioningState/Unavailable",
                    "level": "Warning",
                    "displayStatus": "Not Ready",
                    "message": "VM Agent is unresponsive.",
                }
            ],
        }
        plane.estate.vm(fresh).agent_ready_at = 0.0  # minutes later
        view = Client(plane).get(fresh, **{"$expand": "instanceView"}).json()
        view = view["properties"]["instanceView"]
        assert (view["osName"], view["vmAgent"]["statuses"][0]["displayStatus"]) == (
            "ubuntu",
            "Ready",
        )


def test_resource_graph_lags_behind_arm(use_identity):
    query = {"subscriptions": [SUB], "query": SWEEP_QUERY, "options": {"$top": 1000}}
    with LocalAzure(small_estate(), graph_lag_seconds=3600) as plane:
        use_identity(plane)
        client = Client(plane)

        def extensions_of_ubuntu():
            rows = client.post(
                "/providers/Microsoft.ResourceGraph/resources",
                query,
                **{"api-version": "2021-03-01"},
            ).json()["data"]
            return next(row["extensions"] for row in rows if row["id"].endswith("/ubuntu-1"))

        assert extensions_of_ubuntu() == []
        assert client.put(VM_PATH + "/extensions/MDE.Linux", _mde_body(plane)).status_code == 201
        assert client.get(VM_PATH + "/extensions/MDE.Linux").ok  # ARM knows at once
        assert extensions_of_ubuntu() == []  # Resource Graph does not, yet
        plane.graph_copies.clear()  # the lag has passed
        assert [e["name"] for e in extensions_of_ubuntu()] == ["MDE.Linux"]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda body: body.pop("location"), 400),
        (lambda body: body["properties"].pop("publisher"), 400),
        (lambda body: body.update(properties="x"), 400),
    ],
)
def test_a_malformed_extension_put_is_400(plane, change, status):
    body = {
        "location": "westeurope",
        "properties": {"publisher": "P", "type": "T", "typeHandlerVersion": "1.0"},
    }
    change(body)
    assert Client(plane).put(VM_PATH + "/extensions/x", body).status_code == status


def test_security_writes_need_security_admin(plane):
    from tests.conftest import READER

    body = {"kind": "DataExportSettings", "properties": {"enabled": True}}
    path = f"/subscriptions/{SUB}/providers/Microsoft.Security/settings/WDATP"
    denied = Client(plane, READER).put(path, body, **{"api-version": "2022-05-01"})
    assert denied.status_code == 403
    assert "Microsoft.Security/settings/write" in denied.json()["error"]["message"]
    wrong_kind = Client(plane).put(
        path, {"properties": {"enabled": True}}, **{"api-version": "2022-05-01"}
    )
    assert wrong_kind.status_code == 400


def test_vm_level_pricing_accepts_only_p1_or_free_and_delete_inherits(plane):
    client = Client(plane)
    path = VM_PATH + "/providers/Microsoft.Security/pricings/VirtualMachines"
    version = {"api-version": "2024-01-01"}
    assert client.get(path, **version).json()["properties"]["inherited"] == "True"
    p2 = client.put(path, {"properties": {"pricingTier": "Standard", "subPlan": "P2"}}, **version)
    assert p2.status_code == 400
    assert client.put(path, {"properties": {"pricingTier": "Free"}}, **version).status_code == 200
    assert client.get(path, **version).json()["properties"]["pricingTier"] == "Free"
    assert client.session.delete(plane.url + path, params=version).status_code == 204
    assert "inherited" in client.get(path, **version).json()["properties"]


def graph(client, query=SWEEP_QUERY, subscriptions=(SUB,), **options):
    body = {
        "subscriptions": list(subscriptions),
        "query": query,
        "options": {"resultFormat": "objectArray"} | options,
    }
    return client.post(
        "/providers/Microsoft.ResourceGraph/resources", body, **{"api-version": "2021-03-01"}
    )


def test_resource_graph_pages_with_skip_tokens(use_identity):
    with LocalAzure(generated_estate(2300, 2)) as plane:
        use_identity(plane)
        client = Client(plane)
        subs = list(plane.estate.subscriptions)
        seen, token_ = [], None
        while True:
            page = graph(
                client,
                subscriptions=subs,
                **{"$top": 1000, **({"$skipToken": token_} if token_ else {})},
            ).json()
            seen += [row["id"] for row in page["data"]]
            token_ = page.get("$skipToken")
            if not token_:
                break
        assert len(seen) == len(set(seen)) == 2300
        assert seen == sorted(seen, key=str.lower)
        assert page["totalRecords"] == 2300
        row = graph(client, subscriptions=subs, **{"$top": 1}).json()["data"][0]
        assert set(row) == {
            "id",
            "location",
            "tags",
            "imageReference",
            "osType",
            "licenseType",
            "vmId",
            "instanceView",
            "status",
            "osName",
            "osSku",
            "osVersion",
            "arcOsType",
            "cloudProvider",
            "vmUuid",
            "extensions",
        }
        # A VM has none of the Arc properties: tostring() of a missing one is "".
        arc_columns = ("status", "osSku", "arcOsType", "cloudProvider", "vmUuid")
        assert [row[c] for c in arc_columns] == [""] * 5


@pytest.mark.parametrize(
    ("query", "options"),
    [
        ("resources | take 5", {}),
        ("Resources | summarize count()", {}),
        (SWEEP_QUERY, {"$top": 5000}),
        (SWEEP_QUERY, {"$skipToken": "bm90LWEtdG9rZW4="}),
        (SWEEP_QUERY, {"resultFormat": "table"}),
    ],
)
def test_resource_graph_refuses_what_it_does_not_know(plane, query, options):
    response = graph(Client(plane), query, **options)
    assert response.status_code == 400


def test_resource_graph_baseline_query_lists_ids(plane):
    rows = graph(Client(plane), BASELINE_QUERY).json()["data"]
    assert rows == [{"id": vm.id} for vm in plane.estate.vms_in(SUB)]


def test_resource_graph_user_quota(plane):
    client = Client(plane)
    answers = [graph(client) for _ in range(16)]
    assert [a.status_code for a in answers[:15]] == [200] * 15
    assert answers[14].headers["x-ms-user-quota-remaining"] == "0"
    assert answers[15].status_code == 429
    assert answers[15].headers["x-ms-user-quota-resets-after"].startswith("00:00:0")


def test_fault_injection_by_rate_and_by_rule(use_identity):
    with LocalAzure(small_estate(), faults=Faults(error_rate=1.0, seed=3)) as plane:
        use_identity(plane)
        assert Client(plane).get(VM_PATH).status_code in {500, 503}
    with LocalAzure(small_estate(), faults=Faults(drop_rate=1.0)) as plane:
        use_identity(plane)
        with pytest.raises(requests.ConnectionError):
            Client(plane).get(VM_PATH)
    with LocalAzure(small_estate()) as plane:
        use_identity(plane)
        plane.faults.add("GET", "ubuntu-1$", 500, count=2)
        client = Client(plane)
        assert [client.get(VM_PATH).status_code for _ in range(3)] == [500, 500, 200]


def test_events_for_writes_and_actions_parse_as_the_app_expects(plane):
    client = Client(plane)
    plane.drain_events()
    stopped = VM_PATH.replace("ubuntu-1", "stopped-1")
    started = client.post(stopped + "/start", None, **{"api-version": COMPUTE_API})
    assert started.status_code == 202
    plane.settle(now=True)
    [event] = plane.drain_events()
    assert event["eventType"] == "Microsoft.Resources.ResourceActionSuccess"
    assert event["data"]["operationName"] == "Microsoft.Compute/virtualMachines/start/action"
    parsed = parse(event, frozenset({SUB}))
    assert isinstance(parsed, VmEvent)
    assert parsed.kind == "start"
    assert parsed.caller_object_id == APP.object_id
    # The same event, seen by an app whose identity caused it, is the loop guard's case.
    assert isinstance(parse(event, frozenset({SUB}), own_principal_id=APP.object_id), Ignored)
    assert plane.estate.vm(stopped).power == "running"


def test_created_vms_raise_several_writes(plane):
    from localazure import Vm

    events = plane.create_vm(Vm(SUB, "rg-new", "fresh-1", os_name="ubuntu", os_version="22.04"))
    assert len(events) == 2
    assert {parse(e, frozenset({SUB})).kind for e in events} == {"write"}


def test_estate_round_trips_through_json(tmp_path):
    estate = generate(50, 3, seed=11)
    path = tmp_path / "estate.json"
    estate.save(path)
    loaded = Estate.load(path)
    assert loaded.to_json() == estate.to_json()
    assert json.loads(path.read_text())["vms"][0]["name"].startswith("vm-")


def test_the_generator_is_seeded_and_realistic():
    first, second = generate(600, 3, seed=5), generate(600, 3, seed=5)
    assert first.to_json() == second.to_json()
    vms = list(first.vms.values())
    powers = {vm.power for vm in vms}
    assert {"running", "deallocated"} <= powers
    assert any(vm.image.get("id") for vm in vms)  # gallery images
    assert any(vm.os_type == "Windows" for vm in vms)
    assert any(vm.os_type == "Linux" for vm in vms)
    states = {ext.state for vm in vms for ext in vm.extensions.values()}
    assert {"Succeeded", "Failed"} <= states
    assert any("defender-remediation-exclude" in vm.tags for vm in vms)
    assert any(vm.resource_group.startswith("MC_") for vm in vms)
    tiers = {(s.pricing_tier, s.settings["WDATP"]) for s in first.subscriptions.values()}
    assert len(tiers) >= 2


def test_it_runs_as_a_process_and_saves_its_estate(tmp_path):
    import os
    import subprocess
    import sys

    saved = tmp_path / "estate.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localazure",
            "--generate",
            "12",
            "--subscriptions",
            "2",
            "--save",
            str(saved),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": os.getcwd()},
    )
    try:
        lines = []
        while not (line := process.stdout.readline()).startswith("# ready"):
            lines.append(line)
        exports = dict(
            line.removeprefix("export ").strip().split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert exports["REMEDIATION_ARM_ENDPOINT"].startswith("https://127.0.0.1:")
        metadata = requests.get(
            f"{exports['AZURE_AUTHORITY_HOST']}/{exports['AZURE_TENANT_ID']}/v2.0/.well-known/openid-configuration",
            verify=exports["REQUESTS_CA_BUNDLE"],
            timeout=10,
        )
        assert metadata.json()["token_endpoint"].endswith("/oauth2/v2.0/token")
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert len(Estate.load(saved).vms) == 12


def test_extension_delete_and_deallocate_are_long_running(plane):
    client = Client(plane)
    plane.estate.vm(VM_PATH).extensions["custom"] = Extension(
        "custom", "Microsoft.Azure.Extensions", "CustomScript"
    )
    deleted = client.session.delete(
        plane.url + VM_PATH + "/extensions/custom", params={"api-version": COMPUTE_API}
    )
    assert deleted.status_code == 202
    deallocating = client.post(VM_PATH + "/deallocate", None, **{"api-version": COMPUTE_API})
    assert deallocating.status_code == 202
    plane.settle(now=True)
    assert "custom" not in plane.estate.vm(VM_PATH).extensions
    assert plane.estate.vm(VM_PATH).power == "deallocated"
    operations = [e["data"]["operationName"] for e in plane.drain_events()]
    assert "Microsoft.Compute/virtualMachines/extensions/delete" in operations
