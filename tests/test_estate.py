"""The whole estate, pure: Arc machines (ids, facts, classification, decisions, events)
and the scope (listed subscriptions, management groups, names, joins and leaves).
Plain values only; the end-to-end tests are in test_estate_e2e.py."""

import dataclasses
from datetime import UTC, datetime

import pytest

from remediation.audit import AuditRecord
from remediation.classify import (
    ARC_ON_AZURE,
    MDE_PUBLISHER,
    OsFamily,
    Protection,
    Support,
    classify,
    may_run_on_azure,
)
from remediation.config import load
from remediation.events import Ignored, VmEvent, parse
from remediation.facts import facts_from_arc, facts_from_graph, twin_query
from remediation.model import (
    History,
    InvalidResourceId,
    Kind,
    Outcome,
    Posture,
    Power,
    VmRef,
    kind_of,
    smbios_forms,
)
from remediation.policy import decide, not_checkable
from remediation.scope import (
    Scope,
    Subscription,
    changes,
    joined_record,
    left_record,
    listed,
    reconcile,
    refresh,
    resolve,
)

SUB = "11111111-1111-1111-1111-111111111111"
SUB2 = "22222222-2222-2222-2222-222222222222"
SUB3 = "33333333-3333-3333-3333-333333333333"
TAG = "defender-remediation-exclude"
ARC_ID = f"/subscriptions/{SUB}/resourceGroups/rg-onprem/providers/Microsoft.HybridCompute/machines/srv-01"
VM_ID = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
SETTINGS = load(
    {"REMEDIATION_SUBSCRIPTIONS": SUB, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
)
READY = Posture(SUB, "Standard", "P1", wdatp=True, unified=True, exclude_linux=False)


# --- Ids ---------------------------------------------------------------------------------
def test_an_arc_id_parses_to_an_arc_machine_and_prints_back_in_arms_casing():
    ref = VmRef.parse(ARC_ID.lower().replace("microsoft.hybridcompute", "MICROSOFT.HybridCompute"))
    assert (ref.subscription, ref.resource_group, ref.name, ref.kind) == (
        SUB,
        "rg-onprem",
        "srv-01",
        Kind.ARC,
    )
    assert ref.id.endswith("/providers/Microsoft.HybridCompute/machines/srv-01")
    assert (ref.noun, VmRef.parse(VM_ID).noun) == ("Arc machine", "VM")
    assert (kind_of(ARC_ID), kind_of(VM_ID), kind_of("/subscriptions/x")) == ("arc", "vm", "")


@pytest.mark.parametrize(
    "bad",
    [
        ARC_ID + "/extensions/MDE.Linux",  # a child resource
        ARC_ID.replace("srv-01", "a" * 55),  # Arc names are 1-54 characters
        ARC_ID.replace("srv-01", "srv-"),  # cannot end in a hyphen
        ARC_ID.replace("machines", "machine"),
        ARC_ID.replace("Microsoft.HybridCompute", "Microsoft.HybridCompute2"),
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.AzureStackHCI/virtualMachineInstances/default",
    ],
)
def test_odd_arc_ids_are_refused(bad):
    with pytest.raises(InvalidResourceId):
        VmRef.parse(bad)


@pytest.mark.parametrize(
    "group",
    [
        "rg-ünïcödé-日本",
        "Ресурсы",
        "rg_(prod).v2",
        "ǅ",
        "x" * 90,
        "٣٤",
    ],  # letters, digits of any script
)
def test_resource_groups_take_the_letters_and_digits_azure_takes(group):
    vm_id = f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/vm1"
    assert VmRef.parse(vm_id).resource_group == group
    assert VmRef.parse(vm_id).id == vm_id


@pytest.mark.parametrize(
    "group",
    ["rg.", "x" * 91, "rg name", "rg%20x", "rg\u202ex", "rg²", "rg☃", "rg#1", ""],
)
def test_resource_groups_refuse_what_azure_refuses(group):
    vm_id = f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/vm1"
    with pytest.raises(InvalidResourceId):
        VmRef.parse(vm_id)


@pytest.mark.parametrize(
    "fixed",
    [
        ("subscriptions", "\u017fubscriptions"),
        ("Microsoft.Compute", "Micro\u017foft.Compute"),
        ("virtualMachines", "v\u0131rtualMachines"),
    ],
)
def test_the_fixed_words_of_an_id_do_not_fold_from_other_letters(fixed):
    plain, folded = fixed
    vm_id = (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
    )
    with pytest.raises(InvalidResourceId):
        VmRef.parse(vm_id.replace(plain, folded, 1))


def test_a_machine_name_stays_ascii_even_under_case_folding():
    kelvin = (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/\u212a"
    )
    with pytest.raises(InvalidResourceId):
        VmRef.parse(kelvin)  # the Kelvin sign folds to 'k' in Unicode matching, not in ARM


def test_the_longest_arc_name_is_accepted():
    assert VmRef.parse(ARC_ID.replace("srv-01", "a" * 54)).name == "a" * 54


# --- Facts: Resource Graph row and ARM GET give the same machine -------------------------
def arc_row(**changes):
    """A sweep-query row of an Arc machine (the Arc columns; VM columns empty)."""
    row = {
        "id": ARC_ID,
        "location": "westeurope",
        "tags": {"site": "paris"},
        "imageReference": None,
        "osType": "",
        "licenseType": "",
        "vmId": "b7a1f3c2-0000-4000-8000-00000000a001",
        "instanceView": None,
        "status": "Connected",
        "osName": "linux",
        "osSku": "Ubuntu 22.04.3 LTS",
        "osVersion": "5.15.0-91-generic",
        "arcOsType": "linux",
        "cloudProvider": "N/A",
        "vmUuid": "090556DA-D4FA-764F-A9F1-63614EDA019A",
        "extensions": [
            {
                "name": "AzureMonitorLinuxAgent",
                "publisher": "Microsoft.Azure.Monitor",
                "type": "AzureMonitorLinuxAgent",
                "provisioningState": "Succeeded",
            }
        ],
    }
    return row | changes


def arc_machine(**properties):
    """The same machine as GET .../machines/srv-01 returns it, and its extension list."""
    machine = {
        "id": ARC_ID,
        "name": "srv-01",
        "type": "Microsoft.HybridCompute/machines",
        "location": "westeurope",
        "tags": {"site": "paris"},
        "properties": {
            "status": "Connected",
            "osName": "linux",
            "osSku": "Ubuntu 22.04.3 LTS",
            "osVersion": "5.15.0-91-generic",
            "osType": "linux",
            "vmId": "b7a1f3c2-0000-4000-8000-00000000a001",
            "vmUuid": "090556DA-D4FA-764F-A9F1-63614EDA019A",
            "cloudMetadata": {"provider": "N/A"},
            "provisioningState": "Succeeded",
        }
        | properties,
    }
    extensions = [
        {
            "id": f"{ARC_ID}/extensions/AzureMonitorLinuxAgent",
            "name": "AzureMonitorLinuxAgent",
            "properties": {
                "publisher": "Microsoft.Azure.Monitor",
                "type": "AzureMonitorLinuxAgent",
                "provisioningState": "Succeeded",
                "instanceView": {"status": {"code": "0", "level": "Information"}},
            },
        }
    ]
    return machine, extensions


def test_an_arc_machine_reads_the_same_from_resource_graph_and_from_arm():
    from_graph = facts_from_graph(arc_row())
    from_arm = facts_from_arc(*arc_machine())
    assert from_graph == from_arm
    assert (from_arm.os_type, from_arm.os_name, from_arm.os_version) == (
        "Linux",
        "Ubuntu",
        "22.04",  # the distro's version from osSku, not the kernel's
    )
    assert (from_arm.power, from_arm.vm_id, from_arm.cloud_provider, from_arm.vm_uuid) == (
        Power.RUNNING,
        "b7a1f3c2-0000-4000-8000-00000000a001",
        "N/A",
        "090556DA-D4FA-764F-A9F1-63614EDA019A",
    )
    assert from_arm.tags == {"site": "paris"}


def test_a_failed_arc_extension_carries_its_exit_code_from_its_single_status():
    machine, _ = arc_machine()
    extensions = [
        {
            "name": "MDE.Linux",
            "properties": {
                "publisher": MDE_PUBLISHER,
                "type": "MDE.Linux",
                "provisioningState": "Failed",
                "instanceView": {
                    "status": {
                        "code": "failed",
                        "level": "Error",
                        "message": "Extension Message: Enable failed: exit code 31: onboarding failed",
                    }
                },
            },
        }
    ]
    facts = facts_from_arc(machine, extensions)
    result = classify(facts, TAG)
    assert (result.protection, result.failure_code) == (Protection.FAILED, 31)


# (case, osName, osSku, osVersion, os family, platform, support)
# fmt: off
ARC_OS = [
    ("ws2025", "windows", "Windows Server 2025 Standard", "10.0.26100.4946", OsFamily.WINDOWS, "windows-server-2025", Support.SUPPORTED),
    ("ws2022", "windows", "Windows Server 2022 Datacenter", "10.0.20348.2113", OsFamily.WINDOWS, "windows-server-2022", Support.SUPPORTED),
    ("ws2016", "windows", "Windows Server 2016 Standard", "10.0.14393.6452", OsFamily.WINDOWS, "windows-server-2016", Support.UNIFIED),
    ("ws2012 r2", "windows", "Windows Server 2012 R2 Standard", "6.3.9600", OsFamily.WINDOWS, "windows-server-2012-r2", Support.UNIFIED),
    ("ws2012", "windows", "Windows Server 2012 Datacenter", "6.2.9200", OsFamily.WINDOWS, "windows-server-2012", Support.UNSUPPORTED),
    ("build only", "windows", "", "10.0.17763.5329", OsFamily.WINDOWS, "windows-server-2019", Support.SUPPORTED),
    ("windows 10", "windows", "Windows 10 Enterprise", "10.0.19045", OsFamily.WINDOWS, "windows-client", Support.UNSUPPORTED),
    ("ubuntu 24.04", "linux", "Ubuntu 24.04.3 LTS", "6.8.0-87-generic", OsFamily.LINUX, "ubuntu-24.04", Support.SUPPORTED),
    ("ubuntu 23.10", "linux", "Ubuntu 23.10", "6.5.0-9-generic", OsFamily.LINUX, "ubuntu-23.10", Support.UNSUPPORTED),
    ("rhel 8.9", "linux", "Red Hat Enterprise Linux 8.9 (Ootpa)", "4.18.0-513.el8.x86_64", OsFamily.LINUX, "rhel-8.9", Support.SUPPORTED),
    ("sles 15 sp5", "linux", "SUSE Linux Enterprise Server 15 SP5", "5.14.21", OsFamily.LINUX, "sles-15", Support.SUPPORTED),
    ("an unlisted distro", "linux", "Gentoo Linux 2.14", "6.6.13", OsFamily.LINUX, "gentoo-linux-2.14", Support.UNSUPPORTED),
    ("linux, no sku yet", "linux", "", "5.15.0", OsFamily.LINUX, "linux-unknown", Support.UNKNOWN),
    ("nothing reported", "", "", "", OsFamily.UNKNOWN, "unknown", Support.UNKNOWN),
]
# fmt: on


@pytest.mark.parametrize(
    ("os_name", "sku", "version", "family", "platform", "support"),
    [case[1:] for case in ARC_OS],
    ids=[case[0] for case in ARC_OS],
)
def test_the_os_matrix_decides_for_arc_from_the_agents_report(
    os_name, sku, version, family, platform, support
):
    row = arc_row(osName=os_name, arcOsType=os_name, osSku=sku, osVersion=version)
    result = classify(facts_from_graph(row), TAG)
    assert (result.os, result.platform, result.support) == (family, platform, support)
    assert result.extension == {"windows": "MDE.Windows", "linux": "MDE.Linux"}.get(os_name, "")


@pytest.mark.parametrize(
    ("status", "power"),
    [
        ("Connected", Power.RUNNING),
        ("Disconnected", Power.DISCONNECTED),
        ("Expired", Power.EXPIRED),
        ("Error", Power.UNKNOWN),
        ("AwaitingConnection", Power.UNKNOWN),
    ],
)
def test_the_arc_status_is_the_machines_power(status, power):
    assert facts_from_graph(arc_row(status=status)).power is power


# --- Decisions -----------------------------------------------------------------------------
def decision_for(row):
    return decide(classify(facts_from_graph(row), TAG), READY, SETTINGS, History())


def test_a_connected_arc_machine_without_mde_gets_the_install():
    decision = decision_for(arc_row())
    assert (decision.outcome, decision.action_names) == (Outcome.INSTALL, ["install:MDE.Linux"])


@pytest.mark.parametrize("status", ["Disconnected", "Expired"])
def test_an_arc_machine_that_is_not_connected_is_deferred_until_it_reconnects(status):
    decision = decision_for(arc_row(status=status))
    assert decision.outcome is Outcome.DEFER
    assert decision.reason == (
        f"The Arc machine is {status.lower()}, not Connected; MDE.Linux is installed when it "
        "reconnects."
    )
    assert "azcmagent" in decision.hint
    assert decision.recheck is False  # a reconnect (its write event) or the sweep: not a timer


def test_a_vm_that_is_not_running_keeps_its_own_words():
    vm = dataclasses.replace(classify(facts_from_graph(arc_row()), TAG), vm=VmRef.parse(VM_ID))
    stopped = dataclasses.replace(vm, power=Power.DEALLOCATED)
    decision = decide(stopped, READY, SETTINGS, History())
    assert decision.reason == "The VM is deallocated; MDE.Linux is installed when it next starts."
    assert decision.hint == ""


def test_a_disconnected_arc_machine_is_not_checked_against_defender_for_endpoint():
    covered = arc_row(
        status="Disconnected",
        extensions=[
            {
                "name": "MDE.Linux",
                "publisher": MDE_PUBLISHER,
                "type": "MDE.Linux",
                "provisioningState": "Succeeded",
            }
        ],
    )
    verified = not_checkable(classify(facts_from_graph(covered), TAG))
    assert verified is not None
    assert verified.reason == (
        "The Arc machine is disconnected: Defender for Endpoint hears from it again once it "
        "reconnects."
    )


@pytest.mark.parametrize(
    ("provider", "outcome"),
    [
        ("Azure", Outcome.EXCLUDE),
        ("azure", Outcome.EXCLUDE),
        ("AWS", Outcome.INSTALL),
        ("N/A", Outcome.INSTALL),
    ],
)
def test_an_arc_agent_on_an_azure_vm_is_left_alone(provider, outcome):
    decision = decision_for(arc_row(cloudProvider=provider))
    assert decision.outcome is outcome
    if outcome is Outcome.EXCLUDE:
        assert decision.reason == f"Not ours to touch: {ARC_ON_AZURE}."


# "Accessing and Using Azure VM Unique ID": dmidecode shows 090556DA-D4FA-764F-A9F1-
# 63614EDA019A for the VM whose vmId is DA560509-FAD4-4F76-A9F1-63614EDA019A.
SMBIOS_AS_READ = "090556DA-D4FA-764F-A9F1-63614EDA019A"
VM_ID_OF_IT = "da560509-fad4-4f76-a9f1-63614eda019a"


def test_an_smbios_id_reads_in_both_byte_orders_as_the_vm_id_page_shows():
    assert smbios_forms(SMBIOS_AS_READ) == {SMBIOS_AS_READ.lower(), VM_ID_OF_IT}
    assert smbios_forms(VM_ID_OF_IT) == {SMBIOS_AS_READ.lower(), VM_ID_OF_IT}
    for not_an_id in ("", "N/A", "090556DA-D4FA-764F-A9F1", "090556DA-D4FA-764F-A9F1-63614EDA019Z"):
        assert smbios_forms(not_an_id) == frozenset(), not_an_id


@pytest.mark.parametrize(
    ("provider", "vm_uuid", "may"),
    [
        ("N/A", SMBIOS_AS_READ, True),  # the agent could not reach IMDS: ask the id
        ("", SMBIOS_AS_READ, True),
        ("Azure", SMBIOS_AS_READ, False),  # it says so itself
        ("AWS", SMBIOS_AS_READ, False),
        ("GCP", SMBIOS_AS_READ, False),
        ("N/A", "", False),  # nothing to ask with
        ("N/A", "not-a-guid", False),
    ],
)
def test_which_arc_machines_may_run_on_an_azure_vm(provider, vm_uuid, may):
    facts = facts_from_graph(arc_row(cloudProvider=provider, vmUuid=vm_uuid))
    assert may_run_on_azure(facts) is may
    as_vm = dataclasses.replace(facts, vm=VmRef.parse(VM_ID))
    assert may_run_on_azure(as_vm) is False


def test_an_arc_machine_whose_smbios_id_is_an_azure_vms_is_left_alone():
    twin = (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01"
    )
    facts = facts_from_graph(arc_row(cloudProvider="N/A", vmUuid=SMBIOS_AS_READ))
    twinned = dataclasses.replace(facts, azure_twin=twin)
    decision = decide(classify(twinned, TAG), READY, SETTINGS, History())
    assert decision.outcome is Outcome.EXCLUDE
    assert decision.reason == (
        f"Not ours to touch: {ARC_ON_AZURE}; its SMBIOS id is the vmId of {twin}."
    )
    assert decide(classify(facts, TAG), READY, SETTINGS, History()).outcome is Outcome.INSTALL


def test_the_twin_query_takes_guids_only():
    query = twin_query(smbios_forms(SMBIOS_AS_READ))
    assert f"('{SMBIOS_AS_READ.lower()}', '{VM_ID_OF_IT}')" in query
    for bad in ([], ["x') or true or ('"], [VM_ID_OF_IT, "' or 1==1"]):
        with pytest.raises(ValueError, match=r"^twin_query takes GUIDs only$"):
            twin_query(bad)


def test_a_vm_is_never_taken_for_an_arc_agent_on_azure():
    facts = dataclasses.replace(facts_from_graph(arc_row()), vm=VmRef.parse(VM_ID))
    assert classify(dataclasses.replace(facts, cloud_provider="Azure"), TAG).managed == ""


def test_the_opt_out_tag_holds_for_arc_machines_too():
    decision = decision_for(arc_row(tags={TAG: "yes"}))
    assert (decision.outcome, decision.reason) == (
        Outcome.EXCLUDE,
        f"The Arc machine is opted out (tag {TAG}=yes).",
    )


# --- Events --------------------------------------------------------------------------------
def arc_write(subject=ARC_ID, operation="Microsoft.HybridCompute/machines/write"):
    return {
        "id": "e-arc-1",
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "subject": subject,
        "topic": f"/subscriptions/{SUB}",
        "eventTime": "2026-11-29T01:00:00Z",
        "data": {
            "operationName": operation,
            "resourceUri": subject,
            "subscriptionId": SUB,
            "status": "Succeeded",
            "correlationId": "c-1",
            "claims": {"oid": "aaaaaaaa-0000-0000-0000-000000000001"},
        },
    }


def test_an_arc_write_is_accepted():
    event = parse(arc_write(), frozenset({SUB}))
    assert isinstance(event, VmEvent)
    assert (event.vm, event.kind) == (VmRef.parse(ARC_ID), "write")


@pytest.mark.parametrize(
    ("subject", "operation", "reason"),
    [
        (
            VM_ID,
            "Microsoft.HybridCompute/machines/write",
            "operation 'Microsoft.HybridCompute/machines/write' is not about a VM",
        ),
        (
            ARC_ID,
            "Microsoft.Compute/virtualMachines/write",
            "operation 'Microsoft.Compute/virtualMachines/write' is not about an Arc machine",
        ),
        (
            ARC_ID + "/extensions/MDE.Linux",
            "Microsoft.HybridCompute/machines/extensions/write",
            "an extension write never starts a remediation (ours, MDC's or anyone's)",
        ),
    ],
)
def test_an_event_whose_operation_and_subject_disagree_is_ignored(subject, operation, reason):
    result = parse(arc_write(subject, operation), frozenset({SUB}))
    assert isinstance(result, Ignored)
    assert result.reason == reason


# --- The scope -----------------------------------------------------------------------------
GROUPS = load(
    {
        "REMEDIATION_SUBSCRIPTIONS": SUB,
        "REMEDIATION_MANAGEMENT_GROUPS": "mg-corp",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
)


def container(sid, name, *chain, state="Enabled"):
    return {
        "subscriptionId": sid,
        "name": name,
        "state": state,
        "managementGroups": [{"name": g, "displayName": g.upper()} for g in chain],
    }


def test_the_scope_is_the_listed_subscriptions_and_the_enabled_ones_under_the_groups():
    rows = [
        container(SUB, "Listed one", "mg-platform", "root"),
        container(SUB2, "Corp 01", "mg-corp", "mg-landing-zones", "root"),
        container(SUB3, "Corp 02 (disabled)", "mg-corp", "root", state="Disabled"),
        container("44444444-4444-4444-4444-444444444444", "Sandbox", "mg-sandbox", "root"),
    ]
    scope = resolve(GROUPS, rows, NOW)
    assert scope.ids == {SUB, SUB2}
    assert scope.subscriptions[SUB2] == Subscription(SUB2, "Corp 01", "mg-corp", "MG-CORP")
    assert scope.group_of(SUB) == ("", "")  # listed: in scope whatever its group
    assert (scope.label(SUB2), scope.resolved) == (f"Corp 01 ({SUB2})", NOW)


def test_a_group_deeper_in_the_chain_brings_its_subscriptions_in_too():
    rows = [container(SUB2, "Deep", "mg-team", "mg-corp", "root")]
    assert resolve(GROUPS, rows, NOW).group_of(SUB2) == ("mg-corp", "MG-CORP")


def test_a_listed_subscription_resource_graph_does_not_show_stays_in_scope_unnamed():
    scope = resolve(GROUPS, [], NOW)
    assert scope.ids == {SUB}
    assert (scope.name(SUB), scope.label(SUB)) == ("", SUB)


def test_joined_and_left_compare_two_resolutions():
    before = resolve(GROUPS, [container(SUB3, "Old", "mg-corp")], NOW)
    after = resolve(GROUPS, [container(SUB2, "New", "mg-corp")], NOW)
    joined, left = changes(before, after)
    assert [s.id for s in joined] == [SUB2]
    assert [s.id for s in left] == [SUB3]


def test_the_stored_scope_follows_todays_settings():
    stored = Scope(
        {
            SUB: Subscription(SUB, "Listed one"),
            SUB2: Subscription(SUB2, "Corp 01", "mg-corp", "Corp"),
            SUB3: Subscription(SUB3, "Was listed"),
        },
        NOW,
        frozenset({SUB2}),
    )
    now_listed_only = load(
        {
            "REMEDIATION_SUBSCRIPTIONS": f"{SUB},{SUB2}",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    scope = reconcile(stored, now_listed_only)
    assert scope.ids == {SUB, SUB2}  # SUB3 is no longer listed
    assert scope.subscriptions[SUB2] == Subscription(SUB2, "Corp 01")  # listed now: no group
    assert reconcile(stored, GROUPS).ids == {SUB, SUB2}
    assert reconcile(stored, GROUPS).unwired == {SUB2}
    assert listed(GROUPS).ids == {SUB}


def stored_scope(*subscriptions, unwired=()):
    return Scope({s.id: s for s in subscriptions}, NOW, frozenset(unwired))


def test_a_first_resolution_records_nothing_and_checks_every_group_subscriptions_wiring():
    checked = []

    def wired(sid):
        checked.append(sid)
        return sid != SUB2

    rows = [container(SUB, "Listed", "root"), container(SUB2, "Corp 01", "mg-corp")]
    resolution = refresh(GROUPS, None, lambda: rows, wired)
    assert (resolution.fresh, resolution.scope.ids, resolution.scope.unwired) == (
        True,
        {SUB, SUB2},
        {SUB2},
    )
    assert checked == [SUB2]  # listed subscriptions are wired by the deployment
    assert resolution.records("run-1", GROUPS) == []


def test_a_resolution_records_who_joined_and_left_and_rechecks_the_unwired():
    stored = stored_scope(
        Subscription(SUB, "Listed"),
        Subscription(SUB2, "Corp 01", "mg-corp", "Corp"),
        unwired=[SUB2],
    )
    checked = []
    rows = [container(SUB, "Listed"), container(SUB3, "Corp 02", "mg-corp")]
    resolution = refresh(GROUPS, stored, lambda: rows, lambda s: checked.append(s) or True)
    assert checked == [SUB3]  # SUB2 left: not checked again
    assert resolution.scope.unwired == frozenset()
    records = resolution.records("run-2", GROUPS)
    assert [(r.subscription, r.outcome, r.decision, r.run_id) for r in records] == [
        (SUB3, "joined", "scope", "run-2"),
        (SUB2, "left", "scope", "run-2"),
    ]
    assert records[0].subscription_name == "Corp 02"
    assert records[1].reason.startswith(
        "Subscription Corp 01 left the scope (it is no longer under mg-corp"
    )


def test_a_group_dropped_from_the_settings_is_recorded_as_left():
    stored = stored_scope(
        Subscription(SUB, "Listed"), Subscription(SUB2, "Corp 01", "mg-corp", "Corp")
    )
    resolution = refresh(SETTINGS, stored, lambda: [container(SUB, "Listed")], lambda s: True)
    [left] = resolution.records("run-3", SETTINGS)
    assert (left.subscription, left.outcome) == (SUB2, "left")
    assert "it is no longer listed" in left.reason


def test_when_resource_graph_fails_the_stored_scope_stands_or_the_error_is_raised():
    from remediation.model import TransientError

    def down():
        raise TransientError("HTTP 503")

    stored = stored_scope(
        Subscription(SUB, "Listed"), Subscription(SUB2, "Corp 01", "mg-corp", "Corp")
    )
    kept = refresh(GROUPS, stored, down, lambda s: True)
    assert (kept.fresh, kept.scope.ids, kept.records("r", GROUPS)) == (False, {SUB, SUB2}, [])
    with pytest.raises(TransientError):
        refresh(GROUPS, None, down, lambda s: True)  # groups, nothing known: cannot start
    assert refresh(SETTINGS, None, down, lambda s: True).scope.ids == {SUB}


def test_an_answer_without_any_group_subscription_is_not_everyone_leaving():
    stored = stored_scope(
        Subscription(SUB, "Listed"), Subscription(SUB2, "Corp 01", "mg-corp", "Corp")
    )
    resolution = refresh(GROUPS, stored, lambda: [container(SUB, "Listed")], lambda s: True)
    assert (resolution.fresh, resolution.scope.ids) == (False, {SUB, SUB2})
    assert resolution.records("r", GROUPS) == []


def test_a_scope_knows_its_members_in_any_case():
    scope = resolve(GROUPS, [container(SUB2, "Corp 01", "mg-corp")], NOW)
    assert SUB2 in scope
    assert SUB2.upper() in scope
    assert 7 not in scope


# --- What mutation testing asked for: every field and every branch pinned ------------------
def test_the_arc_os_comes_from_ostype_first_then_from_the_name():
    # (osType, osName, osSku, osVersion) -> (os_type, os_name, os_version) classify reads
    cases = [
        (("windows", "", "", "10.0.17763.5329"), ("Windows", "", "10.0.17763.5329")),
        (("", "windows", "", "10.0.17763.5329"), ("Windows", "", "10.0.17763.5329")),
        (
            ("", "", "Windows Server 2022 Datacenter", "x"),
            ("Windows", "Windows Server 2022 Datacenter", "x"),
        ),
        (("", "", "Ubuntu 22.04.3 LTS", "5.15"), ("Linux", "Ubuntu", "22.04")),
        (("", "Ubuntu 20.04", "", "5.4.0"), ("Linux", "Ubuntu", "20.04")),  # no osSku: osName
        (("linux", "linux", "Gentoo", "6.6"), ("Linux", "Gentoo", "")),  # no version in the name
        (("", "", "", "6.6"), ("", "", "6.6")),
    ]
    for (os_type, os_name, os_sku, os_version), expected in cases:
        row = arc_row(arcOsType=os_type, osName=os_name, osSku=os_sku, osVersion=os_version)
        facts = facts_from_graph(row)
        assert (facts.os_type, facts.os_name, facts.os_version) == expected, row
        machine, extensions = arc_machine(
            osType=os_type, osName=os_name, osSku=os_sku, osVersion=os_version
        )
        arm = facts_from_arc(machine, extensions)
        assert (arm.os_type, arm.os_name, arm.os_version) == expected, machine


def test_a_windows_arc_machine_reads_the_same_from_both_readers():
    row = arc_row(
        location="eastus2",
        arcOsType="windows",
        osName="windows",
        osSku="",
        osVersion="10.0.20348.2113",
    )
    machine, extensions = arc_machine(
        osType="windows", osName="windows", osSku="", osVersion="10.0.20348.2113"
    )
    machine["location"] = "eastus2"
    from_graph, from_arm = facts_from_graph(row), facts_from_arc(machine, extensions)
    assert from_graph == from_arm
    assert (from_arm.location, from_arm.os_type) == ("eastus2", "Windows")
    assert classify(from_arm, TAG).platform == "windows-server-2022"


def test_arc_extensions_are_read_whatever_else_the_list_holds():
    machine, _ = arc_machine()

    def ext(name, state="Succeeded", message=""):
        return {
            "name": name,
            "properties": {
                "publisher": "P",
                "type": name,
                "provisioningState": state,
                "instanceView": {"status": {"code": "0", "message": message}},
            },
        }

    listed = [
        "not an extension",
        ext("zeta"),
        ext("Alpha", message="exit code 31"),  # Succeeded: its message names no failure
        ext("beta", "Failed", "Enable failed: exit code 5"),
        ext("gamma", "Failed"),  # no message: no code
    ]
    facts = facts_from_arc(machine, listed)
    assert [(e.name, e.state, e.code) for e in facts.extensions] == [
        ("Alpha", "Succeeded", None),
        ("beta", "Failed", 5),
        ("gamma", "Failed", None),
        ("zeta", "Succeeded", None),
    ]
    assert facts_from_arc(machine, None).extensions == ()
    assert facts_from_arc(machine, {"value": listed}).extensions == ()


def test_a_stopped_vm_is_not_checked_in_a_vms_words():
    vm = dataclasses.replace(
        classify(facts_from_graph(arc_row()), TAG),
        vm=VmRef.parse(VM_ID),
        power=Power.DEALLOCATED,
        protection=Protection.SUCCEEDED,
    )
    verified = not_checkable(vm)
    assert verified is not None
    assert verified.reason == (
        "The VM is deallocated: Defender for Endpoint hears from it again once it runs."
    )


def test_the_records_of_a_join_and_a_leave_say_everything_ops_need():
    settings = GROUPS
    joined = joined_record(Subscription(SUB2, "Corp 01", "mg-corp", "Corp"), "run-7", settings)
    listed_one = joined_record(Subscription(SUB3), "run-7", settings)
    left = left_record(Subscription(SUB3, "Old"), "run-7", settings)
    assert joined.to_json() | {"time": "", "record_id": ""} == AuditRecord(
        vm="",
        subscription=SUB2,
        subscription_name="Corp 01",
        trigger="sweep",
        decision="scope",
        reason="Subscription Corp 01 joined the scope through management group Corp (mg-corp): "
        "sweeps cover it from now on.",
        mode="report",
        outcome="joined",
        run_id="run-7",
    ).to_json() | {"time": "", "record_id": ""}
    assert listed_one.reason == (
        f"Subscription {SUB3} joined the scope through the settings: sweeps cover it from now on."
    )
    assert left.to_json() | {"time": "", "record_id": ""} == AuditRecord(
        vm="",
        subscription=SUB3,
        subscription_name="Old",
        trigger="sweep",
        decision="scope",
        reason="Subscription Old left the scope (it is no longer under mg-corp, or is disabled): "
        "nothing in it is remediated any more.",
        mode="report",
        outcome="left",
        run_id="run-7",
        hint="its Event Grid wiring still delivers events, which are now ignored: remove the "
        "event subscription if the subscription left for good",
    ).to_json() | {"time": "", "record_id": ""}
    two_groups = load(
        {
            "REMEDIATION_MANAGEMENT_GROUPS": "b-group,a-group",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    assert (
        "it is no longer under a-group, b-group,"
        in left_record(Subscription(SUB3), "r", two_groups).reason
    )


def test_resolve_reads_every_row_it_can_and_skips_the_rest():
    rows = [
        {"name": "no id"},
        container(SUB.upper(), "Listed, upper-case id"),
        container(SUB3, "Disabled", "mg-corp", state="Disabled"),
        {
            "subscriptionId": SUB2,
            "name": "Odd chain",
            "managementGroups": ["mg-corp", {"name": "mg-corp", "displayName": ""}],
        },
        container("44444444-4444-4444-4444-444444444444", "No chain") | {"managementGroups": None},
    ]
    scope = resolve(GROUPS, rows, NOW)
    assert dict(scope.subscriptions) == {
        SUB: Subscription(SUB, "Listed, upper-case id"),
        SUB2: Subscription(SUB2, "Odd chain", "mg-corp", "mg-corp"),  # no display name: its id
    }
    assert listed(GROUPS).subscriptions == {SUB: Subscription(SUB)}


def test_reconcile_keeps_names_and_the_time_of_the_resolution():
    stored = Scope({SUB: Subscription(SUB, "Listed")}, NOW, frozenset())
    both = load(
        {
            "REMEDIATION_SUBSCRIPTIONS": f"{SUB},{SUB2}",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    scope = reconcile(stored, both)
    assert dict(scope.subscriptions) == {SUB: Subscription(SUB, "Listed"), SUB2: Subscription(SUB2)}
    assert scope.resolved == NOW


def test_refresh_warns_in_words_an_operator_can_act_on(caplog):
    from remediation.model import PermanentError

    stored = stored_scope(
        Subscription(SUB, "Listed"), Subscription(SUB2, "Corp 01", "mg-corp", "Corp")
    )

    def down():
        raise PermanentError("HTTP 400 BadRequest")

    def unreadable(sid):
        raise PermanentError("forbidden")

    with caplog.at_level("WARNING", logger="remediation"):
        kept = refresh(GROUPS, stored, down, lambda s: True)
        empty = refresh(GROUPS, stored, lambda: [container(SUB, "Listed")], lambda s: True)
        unknown = refresh(GROUPS, None, lambda: [container(SUB3, "New", "mg-corp")], unreadable)
    assert (kept.stored, empty.stored) == (stored, stored)
    assert unknown.scope.unwired == {SUB3}  # wiring unknown: listed as not receiving events
    assert [r.getMessage() for r in caplog.records] == [
        "the scope could not be resolved (HTTP 400 BadRequest): the last known scope stands",
        "Resource Graph listed no subscription under mg-corp: the last known scope stands "
        "(check the app's Reader role at each group)",
        f"subscription {SUB3}: its Event Grid wiring could not be read: forbidden",
    ]
    fresh = refresh(
        GROUPS, stored, lambda: [container(SUB2, "Corp 01", "mg-corp")], lambda s: False
    )
    assert fresh.scope.resolved is not None
    assert fresh.scope.resolved > NOW


MIXED = "abcdef00-0000-4000-8000-00000000abcd"  # letters: its case can differ


def test_a_scope_answers_for_an_id_in_any_case_and_for_unknown_ones():
    rows = [container(MIXED.upper(), "Mixed", "mg-corp")]
    scope = resolve(GROUPS, rows, NOW)
    assert MIXED in scope.ids
    assert MIXED.upper() in scope
    assert scope.name(MIXED.upper()) == "Mixed"
    assert scope.group_of(MIXED.upper()) == ("mg-corp", "MG-CORP")
    assert (scope.name(SUB3), scope.group_of(SUB3), scope.label(SUB3)) == ("", ("", ""), SUB3)
    assert scope.subscriptions[SUB] == Subscription(SUB)  # listed, not shown: still in scope


def test_a_chain_entry_that_is_not_an_object_matches_no_group():
    odd = load(
        {
            "REMEDIATION_MANAGEMENT_GROUPS": "xxxx",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    rows = [{"subscriptionId": SUB2, "name": "Odd", "managementGroups": ["mg-corp", 7]}]
    assert resolve(odd, rows, NOW).ids == frozenset()


def test_a_wired_group_subscription_already_known_is_not_checked_again(caplog):
    two = load(
        {
            "REMEDIATION_MANAGEMENT_GROUPS": "mg-corp,mg-b",
            "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        }
    )
    stored = stored_scope(Subscription(SUB2, "Corp 01", "mg-corp", "Corp"))
    checked = []
    rows = [container(SUB2, "Corp 01", "mg-corp"), container(SUB3, "B", "mg-b")]
    refresh(two, stored, lambda: rows, lambda s: checked.append(s) or True)
    assert checked == [SUB3]
    with caplog.at_level("WARNING", logger="remediation"):
        refresh(two, stored, lambda: [], lambda s: True)
    assert "under mg-b, mg-corp:" in caplog.records[0].getMessage()


def test_arc_extensions_sort_by_name_in_any_case():
    machine, _ = arc_machine()
    listed = [
        {
            "name": name,
            "properties": {"publisher": "P", "type": "T", "provisioningState": "Succeeded"},
        }
        for name in ("a", "_x")
    ]
    assert [e.name for e in facts_from_arc(machine, listed).extensions] == ["_x", "a"]


# --- The stored scope, over an in-memory table with the methods ScopeStore calls -------------
class MemoryTable:
    """Entities by (partition, row); answers the one filter ScopeStore sends."""

    def __init__(self, exists: bool = True) -> None:
        self.rows: dict[tuple[str, str], dict] = {}
        self.exists = exists
        self.transactions: list[list] = []

    def query_entities(self, query_filter, parameters):
        from azure.core.exceptions import ResourceNotFoundError

        if not self.exists:
            raise ResourceNotFoundError("TableNotFound")
        assert query_filter == "PartitionKey eq @pk"
        return [e for (pk, _), e in sorted(self.rows.items()) if pk == parameters["pk"]]

    def submit_transaction(self, operations):
        self.transactions.append(operations)
        for kind, entity in operations:
            key = (entity["PartitionKey"], entity["RowKey"])
            if kind == "delete":
                self.rows.pop(key, None)
            else:
                self.rows[key] = dict(entity)

    def upsert_entity(self, entity):
        self.rows[(entity["PartitionKey"], entity["RowKey"])] = dict(entity)


def test_a_stored_scope_reads_back_as_it_was_saved():
    from remediation.scope import ScopeStore

    table = MemoryTable()
    store = ScopeStore(table)
    assert store.load() is None  # before the first sweep
    scope = Scope(
        {
            SUB: Subscription(SUB, "Prod", "mg-corp", "Corp"),
            SUB2: Subscription(SUB2, "Dev"),
            "33333333-3333-3333-3333-333333333333": Subscription(
                "33333333-3333-3333-3333-333333333333"  # no name known yet
            ),
        },
        datetime(2026, 12, 4, 2, 0, tzinfo=UTC),
        frozenset({SUB2}),
    )
    store.save(scope, None)
    assert store.load() == scope
    assert table.rows[("scope", "~resolved")]["resolved"] == scope.resolved


def test_a_subscription_that_left_is_deleted_and_the_time_written_last():
    from remediation.scope import ScopeStore

    table = MemoryTable()
    store = ScopeStore(table)
    before = Scope(
        {SUB: Subscription(SUB), SUB2: Subscription(SUB2)}, datetime(2026, 1, 1, tzinfo=UTC)
    )
    store.save(before, None)
    after = Scope({SUB: Subscription(SUB, "Prod")}, datetime(2026, 1, 2, tzinfo=UTC))
    store.save(after, before)
    assert store.load() == after
    assert [kind for kind, _ in table.transactions[-1]] == ["upsert", "delete"]
    assert ("scope", SUB2) not in table.rows


def test_a_half_written_scope_or_a_missing_table_is_no_stored_scope():
    from remediation.scope import ScopeStore

    table = MemoryTable()
    table.rows[("scope", SUB)] = {"PartitionKey": "scope", "RowKey": SUB, "name": "Prod"}
    assert ScopeStore(table).load() is None  # no time row: not complete
    assert ScopeStore(MemoryTable(exists=False)).load() is None
