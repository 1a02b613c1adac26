"""The drift sweep end to end: Resource Graph inventory from the local plane, the
same decide/apply/audit pipeline as events, runs and batches in Azurite."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from localazure import Extension, Vm
from localazure.estate import MDE_PUBLISHER, mde_extension
from remediation import runs, sweep
from remediation.config import Mode
from tests.conftest import READER, SUB, function_bindings, generated_estate
from tests.test_service import ENFORCE, estate, new_vm

GRAPH = "Microsoft.ResourceGraph/resources/read"


def log_cli(*args):
    import io

    from remediation.__main__ import main

    out = io.StringIO()
    code = main(["log", *args], out=out)
    return code, out.getvalue()


def sweep_cli(*args):
    import io

    from remediation.__main__ import main

    out = io.StringIO()
    code = main(["sweep", *args], out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def big_estate():
    return generated_estate(2100, 3, seed=21)


def hand_labelled_estate():
    """A small estate whose decisions are written down by hand below."""
    labelled = estate("ready")
    gallery = (
        f"/subscriptions/{SUB}/resourceGroups/img/providers/Microsoft.Compute/galleries/g/images/i"
    )
    vms = {
        "plain-ubuntu": new_vm("plain-ubuntu"),
        "covered-ubuntu": new_vm("covered-ubuntu"),
        "failed-ubuntu": new_vm("failed-ubuntu"),
        "busy-ubuntu": new_vm("busy-ubuntu"),
        "blocked-ubuntu": new_vm("blocked-ubuntu"),
        "asleep-ws2022": new_vm("asleep-ws2022", "ws2022", power="deallocated"),
        "desk-win11": new_vm("desk-win11", "win11"),
        "fw-fortigate": new_vm("fw-fortigate", "fortigate"),
        "tagged-ubuntu": new_vm("tagged-ubuntu", tags={"defender-remediation-exclude": "yes"}),
        "mystery": Vm(SUB, "rg-app", "mystery", image={"id": gallery}, os_type="Linux"),
    }
    covered, failed, busy = vms["covered-ubuntu"], vms["failed-ubuntu"], vms["busy-ubuntu"]
    covered.extensions["mde.linux"] = mde_extension(covered)
    failed.extensions["mde.linux"] = mde_extension(failed, "Failed", 31)
    busy.extensions["mde.linux"] = Extension(
        "MDE.Linux", MDE_PUBLISHER, "MDE.Linux", state="Creating"
    )
    vms["blocked-ubuntu"].extensions["oms"] = Extension(
        "OmsAgentForLinux",
        "Microsoft.EnterpriseCloud.Monitoring",
        "OmsAgentForLinux",
        state="Failed",
    )
    for vm in vms.values():
        labelled.add_vm(vm)
    return labelled


HAND_LABELLED = {
    "plain-ubuntu": ("install", "reported"),
    "covered-ubuntu": ("compliant", "none"),
    "failed-ubuntu": ("install", "reported"),
    "busy-ubuntu": ("defer", "none"),
    "blocked-ubuntu": ("blocked", "none"),
    "asleep-ws2022": ("defer", "none"),
    "desk-win11": ("unsupported", "none"),
    "fw-fortigate": ("exclude", "none"),
    "tagged-ubuntu": ("exclude", "none"),
    "mystery": ("unsupported", "none"),
}


def test_a_report_sweep_decides_each_vm_as_labelled_by_hand_and_writes_nothing(world_factory):
    world = world_factory(hand_labelled_estate())
    code, output = sweep_cli("--json")
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines()]
    summary = lines.pop()
    decided = {line["vm"].rsplit("/", 1)[1]: (line["decision"], line["outcome"]) for line in lines}
    assert decided == HAND_LABELLED
    # Eligible and running: the five Ubuntu VMs that are not opted out; one is covered.
    assert (summary["eligible_running"], summary["covered"], summary["coverage_percent"]) == (
        5,
        1,
        20.0,
    )
    assert summary["decisions"] == {
        "blocked": 1,
        "compliant": 1,
        "defer": 2,
        "exclude": 2,
        "install": 2,
        "unsupported": 2,
    }
    assert world.writes() == []
    assert world.services.queue.queue.get_queue_properties().approximate_message_count == 0


def test_a_report_sweep_of_2100_vms_is_three_graph_pages_and_one_record_a_vm(
    world_factory, big_estate
):
    world = world_factory(
        big_estate, plane_options={"throttle": False}, REMEDIATION_MAX_ACTIONS_PER_SWEEP="100000"
    )
    code, output = sweep_cli("--json")
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines()]
    summary = lines.pop()
    assert summary["summary"] is True
    assert len(lines) == summary["vms"] == 2100
    assert sum(summary["decisions"].values()) == 2100
    assert {line["outcome"] for line in lines} <= {"reported", "none"}
    assert world.writes() == []
    assert world.services.queue.queue.get_queue_properties().approximate_message_count == 0
    # Inventory: one Resource Graph request per 1000 VMs (the batch's own count); when the
    # run starts, one for the scope's names and one for uniform scale sets.
    assert summary["graph_requests"] == 3
    assert world.plane.log.count(GRAPH) == 3 + 2
    assert world.plane.log.count("Microsoft.Compute/virtualMachines/read") == 0
    assert summary["arm_requests"] <= 2 * 3 + 3  # posture per subscription (+ a few)
    # One audit record per VM, keyed so that a rerun of the batch would not add rows.
    records = world.audit_records()
    assert len(records) == 2100
    assert len({r.vm.lower() for r in records}) == 2100
    assert {r.trigger for r in records} == {"cli"}


def test_an_enforce_sweep_installs_everything_it_queued(world_factory, big_estate):
    world = world_factory(
        big_estate,
        plane_options={"throttle": False, "lro_seconds": 0.01},
        REMEDIATION_MAX_ACTIONS_PER_SWEEP="100000",
        **ENFORCE,
    )
    code, output = sweep_cli("--json", "--wait")
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines()]
    summary = lines[-1]
    assert summary["summary"] is True
    queued = [line["vm"] for line in lines if line.get("outcome") == "queued"]
    assert len(queued) > 1000
    not_covered = [
        vm_id
        for vm_id in queued
        if not any(
            e.state == "Succeeded" and e.publisher == MDE_PUBLISHER
            for e in world.plane.estate.vm(vm_id).extensions.values()
        )
    ]
    assert not_covered == []
    for subscription in world.plane.estate.subscriptions.values():
        assert subscription.pricing_tier == "Standard"
        assert subscription.settings["WDATP"] is True
    # Subscription actions happen once per subscription, not once per VM.
    assert world.plane.log.count("Microsoft.Security/pricings/write") <= 3
    assert world.plane.log.count("Microsoft.Security/settings/write") <= 3 * 3
    installs = [line for line in lines if line.get("trigger") == "queue"]
    assert {line["outcome"] for line in installs} <= {"succeeded", "skipped", "deferred"}


def test_a_batch_run_twice_rewrites_its_rows(world_factory):
    world = world_factory(hand_labelled_estate())
    request = runs.SweepRequest((SUB,), Mode.REPORT, "cli")
    run = sweep.start(world.services, request, send=None)
    message = sweep.BatchMessage(run.run_id, 0, (SUB,))
    sweep.run_batch(world.services, message)
    first = sorted((r.vm, r.record_id) for r in world.audit_records())
    sweep.run_batch(world.services, message)  # the host retried the batch
    assert sorted((r.vm, r.record_id) for r in world.audit_records()) == first
    assert len(first) == len(HAND_LABELLED)


def test_a_steady_night_writes_no_machine_row_and_every_night_stays_answerable(world_factory):
    """The log's promise end to end: the second night writes no machine row and its run
    says it assessed the subscription; log --vm still has a record for that night (read
    back, unchanged since the first); a change and a deleted VM are rows the third
    night; the report counts every machine from the baselines."""
    from remediation import ops, report
    from remediation.audit import Query

    world = world_factory(hand_labelled_estate())
    request = runs.SweepRequest((SUB,), Mode.REPORT, "cli")

    def one_night():
        run = sweep.start(world.services, request, send=None)
        return sweep.run_batch(world.services, sweep.BatchMessage(run.run_id, 0, (SUB,)))

    first = one_night()
    assert len([r for r in world.audit_records() if r.run_id == first.run_id]) == len(HAND_LABELLED)
    second = one_night()
    assert [r for r in world.audit_records() if r.run_id == second.run_id] == []
    assert second.summary["assessed"] == [SUB]
    from remediation import metrics

    # The metrics come from the run's tallies of every machine, not from its (absent) rows.
    def figures(run):
        return metrics.run_figures(run, world.services.runs.batch_results(run.run_id))

    [second_figures] = figures(second)
    assert (second_figures.subscription, second_figures.vms) == (SUB, len(HAND_LABELLED))
    assert (second_figures.eligible_running, second_figures.covered) == (5, 1)
    assert second_figures.to_install == 2
    assert figures(first) == figures(second)
    vms = {vm.name: vm for vm in world.plane.estate.vms.values()}
    plain = vms["plain-ubuntu"].id
    window = {"since": first.started - timedelta(minutes=1), "until": datetime.now(UTC)}
    history, token = ops.search(world.services, Query(vm=plain, **window))
    assert token == ""
    assert [(r.run_id, r.decision, r.unchanged_since) for r in history] == [
        (second.run_id, "install", history[1].time),
        (first.run_id, "install", None),
    ]
    assert history[0].time == second.started
    # A short name with no row in the window is found among the machines the sweeps know.
    quiet = Query(since=second.started + timedelta(seconds=1), until=datetime.now(UTC))
    scope = world.services.scope().ids
    assert ops.resolve_vm(world.services.audit, "Plain-Ubuntu", quiet, scope) == [plain]
    code, shown = log_cli("--vm", "plain-ubuntu", "--since", "1h")
    assert code == 0
    assert "Unchanged since" in " ".join(shown.split())
    covered = vms["covered-ubuntu"]
    del covered.extensions["mde.linux"]  # lost its extension
    del world.plane.estate.vms[vms["plain-ubuntu"].id.lower()]  # deleted
    third = one_night()
    changed = {
        r.vm.rsplit("/", 1)[1]: r.decision
        for r in world.audit_records()
        if r.run_id == third.run_id
    }
    assert changed == {"covered-ubuntu": "install", "plain-ubuntu": "gone"}
    window["until"] = datetime.now(UTC)
    history, _ = ops.search(world.services, Query(vm=plain, **window))
    assert [r.decision for r in history] == ["gone", "install", "install"]
    coverage = report.gather(world.services)
    assert len(coverage.latest) == len(HAND_LABELLED) - 1
    assert coverage.latest[covered.id.lower()].decision == "install"


def test_a_second_sweep_finds_no_drift_after_enforcement(world_factory):
    world_factory(
        generated_estate(200, 2, seed=3), REMEDIATION_MAX_ACTIONS_PER_SWEEP="100000", **ENFORCE
    )
    sweep_cli("--json", "--wait")
    _code, output = sweep_cli("--json")
    summary = json.loads(output.splitlines()[-1])
    assert summary["actions"] == 0
    # What stays uncovered is what a human must mend: another extension in Failed state.
    assert summary["eligible_running"] - summary["covered"] == summary["decisions"]["blocked"] > 0
    assert summary["coverage_percent"] < 100.0


def test_drift_is_found_and_remediated(world_factory):
    world = world_factory(
        generated_estate(120, 1, seed=4),
        REMEDIATION_MAX_ACTIONS_PER_SWEEP="100000",
        REMEDIATION_INSTALL_COOLDOWN_SECONDS="0",
        **ENFORCE,
    )
    sweep_cli("--json", "--wait")
    subscription = next(iter(world.plane.estate.subscriptions.values()))
    subscription.settings["WDATP"] = False  # switched off by hand
    covered = [
        vm
        for vm in world.plane.estate.vms.values()
        if "mde.linux" in vm.extensions
        and vm.power == "running"
        and vm.image.get("publisher") == "Canonical"
    ]
    lost, broken = covered[0], covered[1]
    del lost.extensions["mde.linux"]  # a VM lost its extension
    broken.extensions["mde.linux"].state = "Failed"  # an extension went Failed
    _code, output = sweep_cli("--json", "--wait")
    lines = {
        json.loads(line).get("vm", ""): json.loads(line)
        for line in output.splitlines()
        if '"trigger": "cli"' in line
    }
    assert lines[lost.id]["actions"][-1] == "install:MDE.Linux"
    assert lines[broken.id]["actions"][-1] == "reinstall:MDE.Linux"
    assert subscription.settings["WDATP"] is True
    assert lost.extensions["mde.linux"].state == "Succeeded"
    assert broken.extensions["mde.linux"].state == "Succeeded"


def test_the_cap_limits_the_blast_radius(world_factory):
    world = world_factory(
        generated_estate(300, 2, seed=5), REMEDIATION_MAX_ACTIONS_PER_SWEEP="25", **ENFORCE
    )
    _code, output = sweep_cli("--json")
    lines = [json.loads(line) for line in output.splitlines()]
    summary = lines.pop()
    assert summary["actions"] <= 25
    assert summary["capped"] > 0
    capped = [line for line in lines if "cap of 25" in line["reason"]]
    assert len(capped) == summary["capped"]
    assert {line["decision"] for line in capped} == {"blocked"}
    queued = world.services.queue.queue.get_queue_properties().approximate_message_count
    assert queued <= 25


def test_the_cap_is_shared_by_batches_on_several_workers(world_factory):
    world = world_factory(
        generated_estate(300, 4, seed=6),
        REMEDIATION_MAX_ACTIONS_PER_SWEEP="30",
        REMEDIATION_SWEEP_BATCH_SIZE="1",
        **ENFORCE,
    )
    response = world.post("sweep")
    assert response.status_code == 202
    world.run_sweeps()
    run_id = json.loads(response.get_body())["run_id"]
    status = json.loads(world.get_status(run_id).get_body())
    assert status["status"] == "done"
    assert status["batches"] == status["batches_done"] == 4
    assert status["summary"]["actions"] <= 30
    assert status["summary"]["capped"] > 0


def test_forced_sweep_over_http_then_status(world_factory):
    world = world_factory(generated_estate(60, 2, seed=8))
    response = world.post(
        "sweep",
        json.dumps({"subscriptions": [next(iter(world.plane.estate.subscriptions))]}).encode(),
    )
    assert response.status_code == 202
    body = json.loads(response.get_body())
    assert body["status_url"] == f"http://localhost:7071/api/sweep/{body['run_id']}"
    assert body["mode"] == "report"
    running = json.loads(world.get_status(body["run_id"]).get_body())
    assert running["status"] == "running"
    world.run_sweeps()
    done = json.loads(world.get_status(body["run_id"]).get_body())
    assert done["status"] == "done"
    assert done["summary"]["vms"] == 30
    assert {r.trigger for r in world.audit_records()} == {"http"}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"subscriptions": []}', "non-empty list"),
        (b'{"subscriptions": "all"}', "non-empty list"),
        (b'{"subscriptions": ["nope"]}', "not a subscription id"),
        (
            b'{"subscriptions": ["99999999-9999-4999-8999-999999999999"]}',
            "is not in scope (REMEDIATION_SUBSCRIPTIONS or REMEDIATION_MANAGEMENT_GROUPS)",
        ),
        (b'{"mode": "enforce"}', "refused"),
        (b'{"mode": "yolo"}', "mode must be"),
        (b'{"mode": "report", "extra": 1}', "unknown fields"),
        (b"{" + b'"a":1,' * 20000 + b'"b":1}', "larger than"),
    ],
)
def test_malformed_bodies_get_400_and_start_nothing(world_factory, body, problem):
    world = world_factory(estate("ready"))
    response = world.post("sweep", body)
    assert response.status_code == 400
    errors = json.loads(response.get_body())["errors"]
    assert any(problem in error for error in errors), errors
    assert world.services.sweeps.queue.get_queue_properties().approximate_message_count == 0
    assert list(world.services.audit.table.query_entities("PartitionKey eq 'run'")) == []


def test_every_problem_is_listed_at_once(world_factory):
    world = world_factory(estate("ready"))
    response = world.post("sweep", b'{"subscriptions": ["nope", 3], "mode": "enforce", "x": 1}')
    assert len(json.loads(response.get_body())["errors"]) == 4


def test_a_concurrent_forced_sweep_gets_409_with_the_running_run(world_factory):
    world = world_factory(generated_estate(30, 2, seed=9))
    first = json.loads(world.post("sweep").get_body())
    second = world.post(
        "sweep", json.dumps({"subscriptions": [first["subscriptions"][1]]}).encode()
    )
    assert second.status_code == 409
    assert json.loads(second.get_body())["run_id"] == first["run_id"]
    world.run_sweeps()
    assert world.post("sweep").status_code == 202  # the finished run freed its subscriptions


def test_enforce_can_be_narrowed_to_report_over_http(world_factory):
    world = world_factory(
        generated_estate(40, 1, seed=10), REMEDIATION_MAX_ACTIONS_PER_SWEEP="100000", **ENFORCE
    )
    response = world.post("sweep", b'{"mode": "report"}')
    assert json.loads(response.get_body())["mode"] == "report"
    world.run_sweeps()
    assert world.writes() == []
    records = world.audit_records()
    assert len(records) == 40
    assert {(r.mode, r.outcome) for r in records if r.decision == "install"} == {
        ("report", "reported")
    }  # the log says what the run was, not what the app could have done


def test_the_status_of_an_unknown_or_odd_run_id(world_factory):
    world = world_factory(estate("ready"))
    assert world.get_status("20261129T010203Z-0123abcd").status_code == 404
    assert world.get_status("../../etc").status_code == 400


def test_the_nightly_timer_starts_a_run_of_every_subscription(world_factory):
    from azure.functions.timer import TimerRequest

    import function_app

    world = world_factory(generated_estate(50, 3, seed=12), REMEDIATION_SWEEP_BATCH_SIZE="2")
    function_app.nightly_sweep(TimerRequest())
    assert world.run_sweeps() == 2
    [run] = runs.RunStore(world.services.audit.table).runs_since(
        datetime.now(UTC) - timedelta(hours=1)
    )
    assert (run.status, run.trigger, run.summary["vms"]) == ("done", "sweep", 50)
    assert {r.trigger for r in world.audit_records()} == {"sweep"}


def test_a_batch_that_fails_every_try_still_finishes_the_run(world_factory):
    world = world_factory(generated_estate(20, 1, seed=13))
    world.plane.faults.add("POST", "ResourceGraph", 400, count=1000)
    response = json.loads(world.post("sweep").get_body())
    world.run_sweeps()
    status = json.loads(world.get_status(response["run_id"]).get_body())
    assert status["status"] == "failed"  # finished, and says it measured nothing
    assert status["summary"]["coverage_percent"] is None
    assert status["summary"]["assessed"] == []
    assert status["summary"]["failed_batches"]


def test_http_functions_use_function_keys():
    routes = {name: bindings[0] for name, bindings in function_bindings().items()}
    http = {name: binding for name, binding in routes.items() if binding["type"] == "httpTrigger"}
    expected = {
        "forced_sweep": ("POST", "sweep"),
        "sweep_status": ("GET", "sweep/{runId}"),
        "remediations": ("GET", "remediations"),
        "coverage_report": ("GET", "report"),
        "coverage_status": ("GET", "status"),
        "health": ("GET", "health"),
        "test_alert": ("POST", "test-alert"),
        "test_alert_status": ("GET", "test-alert/{testId}"),
    }
    assert {
        name: (next(m.value for m in b["methods"]), b["route"]) for name, b in http.items()
    } == expected
    assert {b["authLevel"].value for b in http.values()} == {"function"}
    assert routes["nightly_sweep"]["schedule"] == "%REMEDIATION_SWEEP_SCHEDULE%"
    assert routes["sweep_batch"]["queueName"] == "%REMEDIATION_SWEEP_QUEUE%"
    assert routes["test_alert_step"]["queueName"] == "%REMEDIATION_TEST_ALERT_QUEUE%"
    assert routes["test_alert_poison"]["queueName"] == "%REMEDIATION_TEST_ALERT_QUEUE%-poison"


def test_a_forbidden_subscription_change_in_a_sweep_is_blocked(world_factory):
    world = world_factory(estate(), principal=READER, **ENFORCE)
    world.plane.estate.add_vm(new_vm("s-1"))
    _code, output = sweep_cli("--json")
    [line, summary] = [json.loads(x) for x in output.splitlines()]
    assert line["decision"] == "blocked"
    assert "Security Admin" in line["hint"]
    assert summary["errors"] == 1


def test_the_cli_prints_a_summary_table_for_people(world_factory):
    world_factory(generated_estate(30, 1, seed=14))
    code, output = sweep_cli()
    assert code == 0
    assert "coverage of eligible running VMs" in output
    assert "ARM / Resource Graph requests" in output


def test_the_cli_refuses_an_out_of_scope_subscription(world_factory, capsys):
    world_factory(generated_estate(10, 1, seed=15))
    code, output = sweep_cli("--subscription", "99999999-9999-4999-8999-999999999999")
    assert code == 2
    assert output == ""
    assert (
        "is not in scope (REMEDIATION_SUBSCRIPTIONS or REMEDIATION_MANAGEMENT_GROUPS)"
        in capsys.readouterr().err
    )
