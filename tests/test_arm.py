"""Contract tests of the ARM gateway: real SDK clients, real azure-identity, real TLS,
against the local control plane on loopback."""

import base64

import pytest

from localazure import LocalAzure
from remediation.arm import ArmGateway
from remediation.facts import SWEEP_QUERY, facts_from_arm
from remediation.model import (
    ExtensionFacts,
    OperationInProgress,
    PermanentError,
    Power,
    ThrottledError,
    TransientError,
    VmFacts,
    VmNotRunning,
    VmRef,
)
from remediation.pipeline import build_credential
from tests.conftest import APP, READER, SUB, generated_estate, settings_for

VM_READ = "Microsoft.Compute/virtualMachines/read"
GRAPH = "Microsoft.ResourceGraph/resources/read"
EXT_WRITE = "Microsoft.Compute/virtualMachines/extensions/write"


def ref(name):
    return VmRef(SUB, "rg-web", name)


def gateway(plane, **overrides):
    return ArmGateway(settings_for(plane, **overrides))


def test_one_vm_read_is_one_request(plane):
    facts = gateway(plane).vm_facts(ref("ubuntu-1"))
    assert facts.vm == ref("ubuntu-1")
    assert (facts.publisher, facts.sku, facts.os_name, facts.power) == (
        "Canonical",
        "22_04-lts-gen2",
        "ubuntu",
        Power.RUNNING,
    )
    assert plane.log.count(VM_READ) == 1
    assert [item.principal for item in plane.log.arm()] == [APP.object_id]


def test_the_app_learns_its_own_object_id_from_its_token(plane):
    assert gateway(plane).principal_id == APP.object_id
    assert gateway(
        plane, REMEDIATION_PRINCIPAL_ID="0b1e5c7e-0000-4000-8000-00000000ffff"
    ).principal_id.endswith("ffff")


def test_a_missing_vm_is_a_permanent_not_found(plane):
    with pytest.raises(PermanentError) as caught:
        gateway(plane).vm_facts(ref("gone"))
    assert caught.value.status == 404


def test_throttling_is_retried_after_the_servers_wait(plane):
    plane.faults.add("GET", "/virtualMachines/ubuntu-1$", 429, count=1, **{"Retry-After": "1"})
    facts = gateway(plane).vm_facts(ref("ubuntu-1"))
    assert facts.vm.name == "ubuntu-1"
    refused, served = [item for item in plane.log.items() if item.operation == VM_READ]
    assert (refused.status, served.status) == (429, 200)
    assert served.time - refused.time >= 1.0  # the server's log: Retry-After was honoured


def test_a_retry_after_longer_than_the_budget_is_not_slept_through(plane):
    plane.faults.add("GET", "/virtualMachines/ubuntu-1$", 429, count=1, **{"Retry-After": "3600"})
    with pytest.raises(ThrottledError, match="3600 s"):
        gateway(plane).vm_facts(ref("ubuntu-1"))
    assert plane.log.count(VM_READ) == 1  # no retry: the queue comes back later


def test_server_errors_are_retried_within_bounds(plane):
    plane.faults.add("GET", "/virtualMachines/ubuntu-1$", 503, count=1000)
    with pytest.raises(TransientError):
        gateway(plane, REMEDIATION_RETRY_BUDGET_SECONDS="3").vm_facts(ref("ubuntu-1"))
    attempts = plane.log.count(VM_READ, status=503)
    assert 2 <= attempts <= 7


def test_a_dropped_connection_is_retried(plane):
    plane.faults.add("GET", "/virtualMachines/ubuntu-1$", 0, count=1)
    assert gateway(plane).vm_facts(ref("ubuntu-1")).vm.name == "ubuntu-1"
    assert plane.log.count(VM_READ) == 2


def test_unauthorised_is_permanent_and_says_what_to_check(plane):
    plane.faults.add("GET", "/virtualMachines/ubuntu-1$", 401, count=1)
    with pytest.raises(PermanentError) as caught:
        gateway(plane).vm_facts(ref("ubuntu-1"))
    assert "authentication failed" in str(caught.value)


def test_a_wrong_client_secret_is_permanent(plane, use_identity):
    wrong = type(APP)(APP.client_id, "wrong", APP.object_id)
    use_identity(plane, wrong)
    with pytest.raises(PermanentError, match="authentication failed"):
        gateway(plane).vm_facts(ref("ubuntu-1"))
    assert plane.log.count(VM_READ) == 0


def test_forbidden_settings_name_security_admin_and_the_scope(plane, use_identity):
    use_identity(plane, READER)
    with pytest.raises(PermanentError) as caught:
        gateway(plane).set_setting(SUB, "WDATP", True)
    assert caught.value.status == 403
    assert "Security Admin" in caught.value.hint
    assert f"/subscriptions/{SUB}" in caught.value.hint
    assert plane.estate.subscriptions[SUB].settings["WDATP"] is False


def test_posture_is_two_requests_and_cached(plane):
    arm = gateway(plane)
    first = arm.posture(SUB)
    assert (first.pricing_tier, first.wdatp, first.exclude_linux) == ("Free", False, True)
    assert arm.posture(SUB) == first
    assert len(plane.log.arm()) == 2
    arm.enable_plan(SUB, "P1")
    arm.set_setting(SUB, "WDATP", True)
    arm.set_setting(SUB, "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW", False)
    after = arm.posture(SUB)
    assert (after.pricing_tier, after.sub_plan, after.wdatp, after.exclude_linux) == (
        "Standard",
        "P1",
        True,
        False,
    )
    stored = plane.estate.subscriptions[SUB]
    assert (stored.pricing_tier, stored.sub_plan, stored.settings["WDATP"]) == (
        "Standard",
        "P1",
        True,
    )


def test_posture_expires_after_its_ttl(plane):
    now = [0.0]
    arm = ArmGateway(
        settings_for(plane, REMEDIATION_POSTURE_TTL_SECONDS="60"), clock=lambda: now[0]
    )
    arm.posture(SUB)
    now[0] = 59
    arm.posture(SUB)
    assert plane.log.count("Microsoft.Security/pricings/read") == 1
    now[0] = 61
    arm.posture(SUB)
    assert plane.log.count("Microsoft.Security/pricings/read") == 2


def test_the_onboarding_package_is_the_exact_base64_and_cached(plane):
    arm = gateway(plane)
    package = arm.onboarding_package(SUB, "MDE.Linux")
    assert package == plane.estate.subscriptions[SUB].onboarding_linux
    assert arm.onboarding_package(SUB, "MDE.Linux") == package
    assert (
        arm.onboarding_package(SUB, "MDE.Windows")
        == plane.estate.subscriptions[SUB].onboarding_windows
    )
    assert plane.log.count("Microsoft.Security/mdeOnboardings/read") == 1


@pytest.mark.parametrize(
    ("vm", "settings"), [("ubuntu-1", {}), ("win-1", {"vNextEnabled": "true"})]
)
def test_an_install_puts_what_the_builtin_policy_puts_and_succeeds(plane, vm, settings):
    arm = gateway(plane)
    facts = arm.vm_facts(ref(vm))
    extension = "MDE.Windows" if vm.startswith("win") else "MDE.Linux"
    package = arm.onboarding_package(SUB, extension)
    result = arm.install_extension(facts, extension, package)
    assert result.state == "Succeeded"
    [(path, body)] = plane.extension_puts
    assert path == f"{facts.vm.id}/extensions/{extension}"
    assert body == {
        "location": "westeurope",
        "properties": {
            "publisher": "Microsoft.Azure.AzureDefenderForServers",
            "type": extension,
            "typeHandlerVersion": "1.0",
            "autoUpgradeMinorVersion": True,
            "settings": {"azureResourceId": facts.vm.id, **settings},
            "protectedSettings": {"defenderForEndpointOnboardingScript": package},
        },
    }
    expected = plane.estate.subscriptions[SUB]
    expected_package = (
        expected.onboarding_windows if vm.startswith("win") else expected.onboarding_linux
    )
    sent = body["properties"]["protectedSettings"]["defenderForEndpointOnboardingScript"]
    assert base64.b64decode(sent) == base64.b64decode(expected_package)  # byte for byte
    assert plane.estate.vm(facts.vm.id).extensions[extension.lower()].state == "Succeeded"
    assert arm.vm_facts(ref(vm)).extensions == (
        ExtensionFacts(
            extension, "Microsoft.Azure.AzureDefenderForServers", extension, "Succeeded"
        ),
    )


def test_a_failed_install_reports_its_code(plane):
    arm = gateway(plane)
    facts = arm.vm_facts(ref("flatcar-1"))
    result = arm.install_extension(facts, "MDE.Linux", arm.onboarding_package(SUB, "MDE.Linux"))
    assert (result.state, result.extension) == ("Failed", "MDE.Linux")
    assert result.message.startswith(
        "VM has reported a failure when processing extension 'MDE.Linux' (publisher "
        "'Microsoft.Azure.AzureDefenderForServers' and type 'MDE.Linux'). Error message:"
    )
    assert "ProvisioningState/failed" not in result.message  # Azure puts the code elsewhere:
    failed = arm.vm_facts(ref("flatcar-1")).extensions[0]  # in the instance view
    assert (failed.state, failed.code) == ("Failed", 10)


def test_a_wrong_package_fails_onboarding(plane):
    arm = gateway(plane)
    facts = arm.vm_facts(ref("ubuntu-1"))
    result = arm.install_extension(facts, "MDE.Linux", base64.b64encode(b"someone else's").decode())
    assert result.state == "Failed"
    assert arm.vm_facts(ref("ubuntu-1")).extensions[0].code == 31


def test_an_install_on_a_deallocated_vm_is_refused(plane):
    arm = gateway(plane)
    facts = arm.vm_facts(ref("stopped-1"))
    with pytest.raises(VmNotRunning):
        arm.install_extension(facts, "MDE.Linux", arm.onboarding_package(SUB, "MDE.Linux"))


def test_an_install_that_outlasts_the_wait_is_in_progress_and_a_second_put_a_conflict(use_identity):
    from tests.conftest import small_estate

    with LocalAzure(small_estate(), lro_seconds=30) as slow:
        use_identity(slow)
        arm = gateway(slow, REMEDIATION_INSTALL_TIMEOUT_SECONDS="1")
        facts = arm.vm_facts(ref("ubuntu-1"))
        package = arm.onboarding_package(SUB, "MDE.Linux")
        assert arm.install_extension(facts, "MDE.Linux", package).state == "InProgress"
        with pytest.raises(OperationInProgress) as caught:
            arm.install_extension(facts, "MDE.Linux", package)
        assert caught.value.status == 409


def test_vm_level_pricing(plane):
    arm = gateway(plane)
    assert arm.vm_pricing(ref("ubuntu-1")) is None
    plane.estate.vm(ref("ubuntu-1").id).vm_pricing = "Free"
    assert arm.vm_pricing(ref("ubuntu-1")) == "Free"


def test_inventory_pages_through_resource_graph_one_request_per_thousand(use_identity):
    with LocalAzure(generated_estate(2500, 3)) as big:
        use_identity(big)
        arm = gateway(big)
        facts = list(arm.inventory(big.estate.subscriptions))
        assert len(facts) == 2500
        assert len({f.vm.key for f in facts}) == 2500
        assert big.log.count(GRAPH) == 3
        assert big.log.count(VM_READ) == 0
        # Resource Graph and ARM give equal facts, but for what only ARM's instance view
        # holds: the extension status codes and the guest agent's status.
        for graph_facts in facts[::97]:
            vm = big.estate.vm(graph_facts.vm.id)
            arm_facts = arm.vm_facts(graph_facts.vm)
            assert _without_codes(arm_facts) == graph_facts, vm.name


def _without_codes(facts: VmFacts) -> VmFacts:
    fields = {name: getattr(facts, name) for name in facts.__slots__}
    fields["agent_ready"] = None
    fields["extensions"] = tuple(
        ExtensionFacts(e.name, e.publisher, e.type, e.state) for e in facts.extensions
    )
    return VmFacts(**fields)


def test_inventory_waits_out_the_resource_graph_quota(plane):
    arm = gateway(plane)
    for _ in range(16):
        assert len(list(arm.inventory([SUB]))) == 4
    graph = [item for item in plane.log.items() if item.operation == GRAPH]
    assert [item.status for item in graph] == [200] * 15 + [429, 200]
    assert graph[-1].time - graph[-2].time >= 1.0  # it waited for the quota to reset


def test_the_sweep_query_is_the_one_the_plane_knows():
    from localazure.graph import SWEEP_QUERY as PLANE_QUERY
    from localazure.graph import normalise_query

    assert normalise_query(SWEEP_QUERY) == normalise_query(PLANE_QUERY)


def test_arm_facts_from_a_real_response_classify(plane):
    raw_vm = plane.estate.vm(ref("win-1").id)
    from localazure.compute import vm_json

    assert facts_from_arm(vm_json(raw_vm, True)).os_name == "Windows Server 2022 Datacenter"


def test_the_credential_disables_instance_discovery_for_a_private_authority(plane):
    settings = settings_for(plane)
    assert settings.disable_instance_discovery
    token = build_credential(settings).get_token(f"{plane.url}/.default")
    assert token.token.count(".") == 2


@pytest.mark.parametrize(
    ("code", "message", "kind", "status"),
    [
        ("OperationNotAllowed", "Cannot modify extensions in the VM when the VM is not running.", "VmNotRunning", 409),
        ("OperationNotAllowed", "Operation 'PUT' is not allowed on VM 'v' since another operation is in progress.", "OperationInProgress", 409),
        ("OperationNotAllowed", "Operation 'PUT' is not allowed on VM 'v' since VM has extension 'X' in failed state.", "BlockedByExtension", 409),
        ("OperationNotAllowed", "Operation 'PUT' is not allowed on VM 'v' since the VM is marked for deletion. You can only retry the Delete operation (or wait for an ongoing one to complete).", "PermanentError", 404),
        ("ScopeLocked", "The scope '/subscriptions/s/resourceGroups/rg' cannot perform write operation because following scope(s) are locked: '/subscriptions/s/resourceGroups/rg'.", "PermanentError", 409),
        ("Conflict", "The request conflicts with the current state.", "TransientError", 409),
    ],
    ids=["not running", "in progress", "blocked", "being deleted", "locked", "other"],
)  # fmt: skip
def test_compute_409s_are_told_apart(code, message, kind, status):
    from remediation.azure_errors import _conflict

    error = _conflict("installing MDE.Linux on v", code, "", message)
    assert (type(error).__name__, error.status) == (kind, status)


def test_one_handler_shares_one_deadline_across_its_calls():
    from remediation.arm import ArmGateway
    from remediation.pipeline import BoundedRetryPolicy

    policy = BoundedRetryPolicy(120)
    assert policy.budget == 120
    with ArmGateway.budget(10):
        assert 9 < policy.budget <= 10
    assert policy.budget == 120
