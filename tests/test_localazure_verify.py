"""The local Azure's verification surfaces, on the wire and through the real SDKs: Defender
for Endpoint's device inventory (GET /api/machines), Run Command, and Defender for Cloud's
alerts. Each behaviour's source is in docs/fidelity.md."""

import hashlib
import time

import jwt
import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.security import SecurityCenter

from localazure import Estate, LocalAzure, Principal, Vm, generate
from localazure.compute import COMPUTE_API
from localazure.defender import MDE_AUDIENCE
from localazure.estate import REMEDIATOR_ROLE, TEST_ALERT_ROLE, mde_extension
from tests.conftest import APP, READER, SUB, small_estate

MDE_SCOPE = f"{MDE_AUDIENCE}/.default"
RG = "rg-web"
TESTER = Principal(
    client_id="a0000000-0000-4000-8000-000000000003",
    secret="tester-secret",
    object_id="0b1e5c7e-0000-4000-8000-0000000000c3",
    name="remediator-with-test-alerts",
    actions=[*REMEDIATOR_ROLE, *TEST_ALERT_ROLE],
)
ALERTS_ONLY = Principal(
    client_id="a0000000-0000-4000-8000-000000000004",
    secret="alerts-secret",
    object_id="0b1e5c7e-0000-4000-8000-0000000000d4",
    name="alert-reader",
    app_roles=["Alert.ReadWrite.All"],
)
NO_ROLES = Principal(
    client_id="a0000000-0000-4000-8000-000000000005",
    secret="none-secret",
    object_id="0b1e5c7e-0000-4000-8000-0000000000e5",
    name="no-app-roles",
    app_roles=[],
)
WINDOWS_TEST = (
    "powershell.exe -NoExit -ExecutionPolicy Bypass -WindowStyle Hidden "
    "$ErrorActionPreference = 'silentlycontinue';(New-Object System.Net.WebClient)."
    "DownloadFile('http://127.0.0.1/1.exe', 'C:\\test-MDATP-test\\invoice.exe');"
    "Start-Process 'C:\\test-MDATP-test\\invoice.exe'"
)
LINUX_TEST = "curl -O https://secure.eicar.org/eicar.com.txt"


def vm_path(name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}"


def linux(name: str, **changes) -> Vm:
    return Vm(SUB, RG, name, os_name="ubuntu", os_version="22.04", **changes)


def verify_estate() -> Estate:
    """small_estate's VMs, ubuntu-1 and win-1 onboarded and healthy, plus one VM for each
    other way Defender for Endpoint can see an onboarded VM."""
    estate = small_estate()
    for principal in (TESTER, ALERTS_ONLY, NO_ROLES):
        estate.add_principal(Principal(**vars(principal)))
    for vm in (estate.vm(vm_path("ubuntu-1")), estate.vm(vm_path("win-1"))):
        vm.extensions[f"mde.{vm.os_type.lower()}"] = mde_extension(vm)
    for name, state in (("never-1", "never"), ("inactive-1", "inactive"), ("vmid-1", "vmid-only")):
        vm = estate.add_vm(linux(name, mde_device=state))
        vm.extensions["mde.linux"] = mde_extension(vm)
    failed = estate.add_vm(linux("failed-1"))
    failed.extensions["mde.linux"] = mde_extension(failed, "Failed", 31)
    return estate


def credential(plane: LocalAzure, principal: Principal) -> ClientSecretCredential:
    return ClientSecretCredential(
        plane.estate.tenant,
        principal.client_id,
        principal.secret,
        authority=plane.url,
        disable_instance_discovery=True,
        connection_verify=plane.ca_path,
    )


def token(plane: LocalAzure, principal: Principal = APP, scope: str = MDE_SCOPE) -> str:
    return credential(plane, principal).get_token(scope).token


def machines(plane: LocalAzure, bearer: str | None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return requests.get(
        f"{plane.url}/api/machines",
        params=params,
        headers=headers,
        verify=plane.ca_path,
        timeout=30,
    )


def arm(plane: LocalAzure, method: str, path: str, principal=APP, body=None, **params):
    return requests.request(
        method,
        plane.url + path,
        params={"api-version": COMPUTE_API} | params,
        json=body,
        headers={"Authorization": f"Bearer {token(plane, principal, f'{plane.url}/.default')}"},
        verify=plane.ca_path,
        timeout=30,
    )


@pytest.fixture
def verify_plane(use_identity):
    with LocalAzure(verify_estate()) as running:
        use_identity(running, TESTER)
        yield running


def compute_client(plane: LocalAzure, principal: Principal = TESTER) -> ComputeManagementClient:
    return ComputeManagementClient(
        credential(plane, principal),
        SUB,
        base_url=plane.url,
        credential_scopes=[f"{plane.url}/.default"],
    )


def security_client(plane: LocalAzure, principal: Principal = TESTER) -> SecurityCenter:
    return SecurityCenter(
        credential(plane, principal),
        SUB,
        base_url=plane.url,
        credential_scopes=[f"{plane.url}/.default"],
    )


def run(plane: LocalAzure, name: str, *script: str, principal: Principal = TESTER):
    vm = plane.estate.vm(vm_path(name))
    command = "RunPowerShellScript" if vm.os_type == "Windows" else "RunShellScript"
    poller = compute_client(plane, principal).virtual_machines.begin_run_command(
        RG, name, {"commandId": command, "script": list(script)}, polling_interval=0.02
    )
    return poller.result()


# --- Tokens and the audience ------------------------------------------------------------
def test_mde_tokens_carry_the_app_roles_and_arm_tokens_do_not(verify_plane):
    mde = jwt.decode(token(verify_plane), options={"verify_signature": False})
    assert (mde["aud"], mde["roles"]) == (MDE_AUDIENCE, ["Machine.Read.All"])
    management = jwt.decode(
        token(verify_plane, scope=f"{verify_plane.url}/.default"),
        options={"verify_signature": False},
    )
    assert "roles" not in management


def test_the_mde_audience_is_enforced_both_ways(verify_plane):
    arm_token = token(verify_plane, scope=f"{verify_plane.url}/.default")
    refused = machines(verify_plane, arm_token)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "Unauthorized"
    assert machines(verify_plane, None).status_code == 401
    mde_token = token(verify_plane)
    assert machines(verify_plane, mde_token).status_code == 200
    vm = requests.get(
        verify_plane.url + vm_path("ubuntu-1"),
        params={"api-version": COMPUTE_API},
        headers={"Authorization": f"Bearer {mde_token}"},
        verify=verify_plane.ca_path,
        timeout=30,
    )
    assert vm.status_code == 401
    assert vm.json()["error"]["code"] == "InvalidAuthenticationToken"


@pytest.mark.parametrize(
    ("principal", "roles"), [(ALERTS_ONLY, "Alert.ReadWrite.All"), (NO_ROLES, "")]
)
def test_without_a_machine_role_it_is_403_naming_the_roles(verify_plane, principal, roles):
    answer = machines(verify_plane, token(verify_plane, principal))
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert (error["code"], error["message"]) == (
        "Forbidden",
        "Missing application roles. API required roles: Machine.Read.All,Machine.ReadWrite.All, "
        f"application roles: {roles}.",
    )
    assert len(error["target"]) == 36  # a correlation id
    assert verify_plane.log.count("WindowsDefenderATP/machines/read", status=403) == 1


# --- The inventory ---------------------------------------------------------------------
def test_devices_for_each_way_defender_for_endpoint_sees_a_vm(verify_plane):
    answer = machines(verify_plane, token(verify_plane))
    body = answer.json()
    assert body["@odata.context"] == f"{verify_plane.url}/api/$metadata#Machines"
    assert "@odata.nextLink" not in body
    by_name = {device["computerDnsName"]: device for device in body["value"]}
    # never-1 is never listed; failed-1's extension failed; the others have none.
    assert set(by_name) == {"ubuntu-1", "win-1", "inactive-1", "vmid-1"}
    ubuntu, win = by_name["ubuntu-1"], by_name["win-1"]
    vm = verify_plane.estate.vm(vm_path("ubuntu-1"))
    assert ubuntu["id"] == hashlib.sha1(vm.id.lower().encode()).hexdigest()
    assert (ubuntu["healthStatus"], ubuntu["onboardingStatus"], ubuntu["osPlatform"]) == (
        "Active",
        "Onboarded",
        "Linux",
    )
    assert ubuntu["vmMetadata"] == {
        "vmId": vm.vm_id,
        "cloudProvider": "Azure",
        "resourceId": vm.id,
        "subscriptionId": SUB,
    }
    assert win["osPlatform"] == "WindowsServer2022"
    assert by_name["inactive-1"]["healthStatus"] == "Inactive"
    assert by_name["inactive-1"]["lastSeen"] < ubuntu["lastSeen"]
    vmid = by_name["vmid-1"]["vmMetadata"]
    assert vmid["resourceId"] is None
    assert vmid["vmId"] == verify_plane.estate.vm(vm_path("vmid-1")).vm_id
    ids = [device["id"] for device in body["value"]]
    assert ids == sorted(ids)
    assert all(len(i) == 40 and int(i, 16) >= 0 for i in ids)


def test_an_install_through_the_plane_is_listed_once_it_succeeds(use_identity):
    estate = small_estate()
    with LocalAzure(estate, lro_seconds=30) as plane:
        use_identity(plane)
        assert machines(plane, token(plane)).status_code == 404  # nothing onboarded yet
        body = {
            "location": "westeurope",
            "properties": {
                "publisher": "Microsoft.Azure.AzureDefenderForServers",
                "type": "MDE.Linux",
                "typeHandlerVersion": "1.0",
                "protectedSettings": {
                    "defenderForEndpointOnboardingScript": estate.subscriptions[
                        SUB
                    ].onboarding_linux
                },
            },
        }
        put = arm(plane, "PUT", vm_path("ubuntu-1") + "/extensions/MDE.Linux", body=body)
        assert put.status_code == 201
        assert machines(plane, token(plane)).status_code == 404  # still Creating
        plane.settle(now=True)
        listed = machines(plane, token(plane)).json()["value"]
        assert [device["computerDnsName"] for device in listed] == ["ubuntu-1"]


def test_an_empty_inventory_is_404(plane):
    answer = machines(plane, token(plane))
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NotFound"


def test_pages_of_top_and_skip_over_workstations_and_vms(use_identity):
    estate = verify_estate()
    estate.other_devices = 10_500
    with LocalAzure(estate) as plane:
        use_identity(plane)
        bearer = token(plane)
        first = machines(plane, bearer, **{"$top": 10000, "$skip": 0}).json()
        second = machines(plane, bearer, **{"$top": 10000, "$skip": 10000}).json()
        assert (len(first["value"]), len(second["value"])) == (10_000, 504)
        assert "@odata.nextLink" not in first
        ids = [d["id"] for d in first["value"] + second["value"]]
        assert len(set(ids)) == 10_504
        assert ids == sorted(ids)
        workstations = [d for d in first["value"] + second["value"] if d["vmMetadata"] is None]
        assert len(workstations) == 10_500
        default = machines(plane, bearer).json()
        assert [d["id"] for d in default["value"]] == ids[:10_000]  # $top defaults to 10,000
        too_many = machines(plane, bearer, **{"$top": 10001})
        assert too_many.status_code == 400
        assert too_many.json()["error"]["code"] == "BadRequest"
        assert machines(plane, bearer, **{"$skip": 20000}).json()["value"] == []


def test_past_the_call_limit_it_is_429_with_retry_after(verify_plane):
    verify_plane.mde_limits = ((2, 30.0),)  # wide: three calls always fall in one window
    bearer = token(verify_plane, TESTER)
    answers = [machines(verify_plane, bearer) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"]["code"] == "TooManyRequests"
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 30
    assert machines(verify_plane, token(verify_plane, APP)).status_code == 200  # per caller
    verify_plane.mde_limits = ((2, 0.5),)  # the window passes: calls are granted again
    time.sleep(0.6)
    assert machines(verify_plane, bearer).status_code == 200


def test_faults_latency_and_the_request_log_apply_to_it(verify_plane):
    verify_plane.faults.add("GET", "^/api/machines$", 503)
    bearer = token(verify_plane, TESTER)
    assert machines(verify_plane, bearer).status_code == 503
    assert machines(verify_plane, bearer).status_code == 200
    logged = [i for i in verify_plane.log.items() if i.path == "/api/machines"]
    assert [(i.operation, i.status, i.code) for i in logged] == [
        ("WindowsDefenderATP/machines/read", 503, "InjectedFault"),
        ("WindowsDefenderATP/machines/read", 200, ""),
    ]
    assert logged[0].principal == TESTER.object_id
    assert not [i for i in verify_plane.log.arm() if i.path == "/api/machines"]
    verify_plane.latency = 0.3
    started = time.monotonic()
    assert machines(verify_plane, bearer).status_code == 200
    assert time.monotonic() - started >= 0.3


# --- Run Command -----------------------------------------------------------------------
def test_run_command_completes_through_the_sdk_with_stdout(use_identity):
    with LocalAzure(verify_estate(), lro_seconds=0.2) as plane:
        use_identity(plane, TESTER)
        plane.estate.vm(vm_path("win-1")).run_command_output = "Windows says hello"
        result = run(plane, "win-1", "Write-Output hello")
        assert [(s.code, s.message) for s in result.value] == [
            ("ComponentStatus/StdOut/succeeded", "Windows says hello"),
            ("ComponentStatus/StdErr/succeeded", ""),
        ]
        plane.estate.vm(vm_path("ubuntu-1")).run_command_output = "x" * 5000 + "END"
        [status] = run(plane, "ubuntu-1", "echo hi").value
        assert status.code == "ProvisioningState/succeeded"
        stdout = status.message.removeprefix("Enable succeeded: \n[stdout]\n")
        assert stdout == "x" * 4093 + "END" + "\n[stderr]\n"  # the last 4,096 bytes
        assert plane.run_commands == [
            (
                vm_path("win-1"),
                {"commandId": "RunPowerShellScript", "script": ["Write-Output hello"]},
            ),
            (vm_path("ubuntu-1"), {"commandId": "RunShellScript", "script": ["echo hi"]}),
        ]
        assert plane.log.count("Microsoft.Compute/virtualMachines/runCommand/action") == 2
        # Polled at the Location (monitor) URL, at least once while running.
        polls = [i for i in plane.log.items() if i.operation.endswith("operations/read")]
        assert len(polls) >= 2


def test_run_command_answers_202_with_only_a_location(verify_plane):
    body = {"commandId": "RunShellScript", "script": ["echo hi"]}
    started = arm(verify_plane, "POST", vm_path("ubuntu-1") + "/runCommand", TESTER, body)
    assert started.status_code == 202
    assert "Azure-AsyncOperation" not in started.headers
    location = started.headers["Location"]
    assert "/providers/Microsoft.Compute/locations/westeurope/operations/" in location
    assert "monitor=true" in location
    assert f"api-version={COMPUTE_API}" in location


def test_run_command_refusals(use_identity):
    with LocalAzure(verify_estate(), lro_seconds=30) as plane:
        use_identity(plane, TESTER)
        body = {"commandId": "RunShellScript", "script": ["sleep 60"]}
        path = vm_path("ubuntu-1") + "/runCommand"
        assert arm(plane, "POST", path, TESTER, body).status_code == 202
        busy = arm(plane, "POST", path, TESTER, body)
        assert (busy.status_code, busy.json()["error"]) == (
            409,
            {
                "code": "Conflict",
                "message": "Run command extension execution is in progress. Please wait for "
                "completion before invoking a run command.",
            },
        )
        stopped = arm(plane, "POST", vm_path("stopped-1") + "/runCommand", TESTER, body)
        assert (stopped.status_code, stopped.json()["error"]) == (
            409,
            {
                "code": "OperationNotAllowed",
                "message": "The operation requires the VM to be running (or set to run).",
            },
        )
        wrong = arm(plane, "POST", vm_path("win-1") + "/runCommand", TESTER, body)
        assert wrong.status_code == 400
        missing = arm(plane, "POST", vm_path("win-1") + "/runCommand", TESTER, {"script": []})
        assert missing.status_code == 400
        denied = arm(plane, "POST", vm_path("win-1") + "/runCommand", APP, body)
        assert denied.status_code == 403
        assert "virtualMachines/runCommand/action" in denied.json()["error"]["message"]
        assert len(plane.run_commands) == 1


def test_the_sdk_raises_on_a_stopped_vm(verify_plane):
    with pytest.raises(HttpResponseError) as raised:
        run(verify_plane, "stopped-1", "echo hi")
    assert raised.value.status_code == 409


# --- Test alerts -----------------------------------------------------------------------
def test_the_detection_test_alerts_only_for_onboarded_healthy_vms(verify_plane):
    for name in ("ubuntu-1", "never-1", "inactive-1", "vmid-1", "flatcar-1", "failed-1"):
        run(verify_plane, name, LINUX_TEST)
    run(verify_plane, "win-1", WINDOWS_TEST)
    run(verify_plane, "win-1", "Get-Date")  # not a detection test
    security = security_client(verify_plane)
    assert list(security.alerts.list()) == []  # due in about 10 minutes
    assert len(verify_plane.pending_alerts) == 3
    verify_plane.settle(now=True)
    alerts = list(security.alerts.list())
    raised = {a.compromised_entity: a for a in alerts}
    assert set(raised) == {"ubuntu-1", "win-1", "vmid-1"}
    win = raised["win-1"]
    assert win.alert_display_name == "[Test Alert] Suspicious Powershell commandline"
    assert raised["ubuntu-1"].alert_display_name == "'EICAR_Test_File' malware was prevented"
    assert (win.status, win.severity, win.product_name) == (
        "Active",
        "Informational",
        "Microsoft Defender for Endpoint",
    )
    assert win.resource_identifiers[0].azure_resource_id == vm_path("win-1")
    assert win.id == (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Security/locations/"
        f"westeurope/alerts/{win.name}"
    )
    assert win.name == win.system_alert_id


def test_a_test_alert_waits_for_its_time(use_identity):
    # An hour away, so the first look cannot race the clock (a 0.3 s timer did on a
    # loaded machine); settle(now=True) is its time passing.
    with LocalAzure(verify_estate(), test_alert_seconds=3600) as plane:
        use_identity(plane, TESTER)
        run(plane, "ubuntu-1", LINUX_TEST)
        security = security_client(plane)
        plane.settle()  # what is due now: nothing, its hour has not passed
        assert list(security.alerts.list()) == []
        plane.settle(now=True)
        assert [a.compromised_entity for a in security.alerts.list()] == ["ubuntu-1"]


def test_dismissing_an_alert_is_204_and_dismissed(verify_plane):
    run(verify_plane, "ubuntu-1", LINUX_TEST)
    verify_plane.settle(now=True)
    security = security_client(verify_plane)
    [alert] = security.alerts.list_by_resource_group(RG)
    dismiss = arm(
        verify_plane,
        "POST",
        alert.id + "/dismiss",
        TESTER,
        **{"api-version": "2022-01-01"},
    )
    assert dismiss.status_code == 204
    again = security.alerts.get_resource_group_level(RG, "westeurope", alert.name)
    assert again.status == "Dismissed"
    security.alerts.update_resource_group_level_state_to_dismiss(RG, "westeurope", alert.name)
    assert verify_plane.log.count("Microsoft.Security/locations/alerts/dismiss/action") == 2
    with pytest.raises(HttpResponseError) as missing:
        security.alerts.get_resource_group_level(RG, "westeurope", "2516_NOT-AN-ALERT")
    assert missing.value.status_code == 404


def test_alert_reads_and_dismissals_need_their_permissions(verify_plane):
    run(verify_plane, "ubuntu-1", LINUX_TEST)
    verify_plane.settle(now=True)
    [alert] = verify_plane.alerts
    read = arm(
        verify_plane,
        "GET",
        f"/subscriptions/{SUB}/providers/Microsoft.Security/alerts",
        READER,
        **{"api-version": "2022-01-01"},
    )
    assert read.status_code == 403
    assert "Microsoft.Security/locations/alerts/read" in read.json()["error"]["message"]
    dismiss = arm(
        verify_plane, "POST", alert["id"] + "/dismiss", READER, **{"api-version": "2022-01-01"}
    )
    assert dismiss.status_code == 403
    assert alert["properties"]["status"] == "Active"


def test_alert_lists_page_with_next_links(use_identity):
    estate = verify_estate()
    for number in range(4):
        vm = estate.add_vm(linux(f"extra-{number}"))
        vm.extensions["mde.linux"] = mde_extension(vm)
    with LocalAzure(estate, list_page_size=2) as plane:
        use_identity(plane, TESTER)
        for name in ("ubuntu-1", "vmid-1", *(f"extra-{n}" for n in range(4))):
            run(plane, name, LINUX_TEST)
        plane.settle(now=True)
        first = arm(
            plane,
            "GET",
            f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Security/alerts",
            TESTER,
            **{"api-version": "2022-01-01"},
        ).json()
        assert len(first["value"]) == 2
        assert "api-version=2022-01-01" in first["nextLink"]
        security = security_client(plane)
        names = [a.compromised_entity for a in security.alerts.list()]
        assert sorted(names) == sorted(["ubuntu-1", "vmid-1", *(f"extra-{n}" for n in range(4))])
        by_group = list(security.alerts.list_by_resource_group(RG))
        assert len(by_group) == 6
        assert list(security.alerts.list_by_resource_group("rg-other")) == []
        assert plane.log.count("Microsoft.Security/locations/alerts/read") == 1 + 3 + 3 + 1


# --- The estate ------------------------------------------------------------------------
def test_the_new_estate_fields_round_trip_and_are_generated(tmp_path):
    estate = generate(600, 3, seed=5)
    estate.other_devices = 42
    next(iter(estate.vms.values())).run_command_output = "out"
    path = tmp_path / "estate.json"
    estate.save(path)
    loaded = Estate.load(path)
    assert loaded.to_json() == estate.to_json()
    assert loaded.other_devices == 42
    onboarded = [
        vm
        for vm in loaded.vms.values()
        if any(
            e.publisher == "Microsoft.Azure.AzureDefenderForServers" and e.state == "Succeeded"
            for e in vm.extensions.values()
        )
    ]
    states = {vm.mde_device for vm in onboarded}
    assert states == {"active", "vmid-only", "inactive", "never"}
    assert 1 <= sum(vm.mde_device == "vmid-only" for vm in onboarded) <= 5
    assert {vm.mde_device for vm in loaded.vms.values() if vm not in onboarded} == {"active"}
    monitored = [
        vm
        for vm in loaded.vms.values()
        if any(e.publisher == "Microsoft.Azure.Monitor" for e in vm.extensions.values())
    ]
    assert 0 < len(monitored) < len(loaded.vms)
    older = {key: value for key, value in vars(APP).items() if key != "app_roles"}
    principal = next(iter(Estate.from_json({"principals": [older]}).principals.values()))
    assert principal.app_roles == ["Machine.Read.All"]
