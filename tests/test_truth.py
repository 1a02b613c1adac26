"""Never a false green: each fault, injected into the local Azure or Azurite, and what ops
then see (the sweep's exit code and summary, `status --json`, the report, the audit
rows). One row per fault; docs/reliability.md has the same table in words.

| fault                                   | what ops see                                         |
|-----------------------------------------|------------------------------------------------------|
| a subscription Azure does not know      | sweep exit 1, coverage null, its error row and fix   |
| a subscription the identity can't read  | run partial, the others' figures, the 403 and fix    |
| a batch that fails every try            | run failed; the report keeps the last real figure    |
| Microsoft.Security answering 503        | its VMs unavailable at once, coverage null           |
| every install failing (--wait)          | exit 1, the poisoned installs counted as failed      |
| the token authority answering 503       | the event queued for a retry, then installed         |
| a queue message delivered twice         | one PUT, one install record and one duplicate        |
| a resource group named in Unicode       | the VM assessed like any other                       |
| status before the first sweep           | exit 0, complete, no error rows                      |
| a closed pipe                           | a quiet stop: 141, or the command's own exit code    |
| --wait after a Ctrl-C'd run             | the earlier run's installs counted as installed      |
| storage that does not answer            | one line with its fix, exit 1; doctor's storage row  |
"""

from __future__ import annotations

import json

import pytest

from localazure import Subscription
from remediation.queues import InstallRequest
from tests.test_operator import cli
from tests.test_service import ENFORCE, IMAGES, estate, new_vm

UNKNOWN = "00000000-0000-4000-8000-000000000000"
FORBIDDEN = "44444444-4444-4444-8444-444444444444"
GRAPH = r"/providers/Microsoft\.ResourceGraph/resources$"


def with_vms(world, *names: str) -> None:
    for name in names:
        world.plane.create_vm(new_vm(name))


def summary_of(output: str) -> dict:
    return next(line for line in map(json.loads, output.splitlines()) if line.get("summary"))


def status_json() -> tuple[int, dict]:
    code, output = cli("status", "--json")
    return code, json.loads(output)


def test_a_subscription_azure_does_not_know_is_never_100_percent(world_factory):
    world = world_factory(estate("ready"), REMEDIATION_SUBSCRIPTIONS=UNKNOWN)
    code, output = cli("sweep", "--json")
    summary = summary_of(output)
    assert code == 1
    assert (summary["status"], summary["coverage_percent"], summary["vms"]) == ("failed", None, 0)
    assert list(summary["unreadable"]) == [UNKNOWN]
    [row] = world.audit_records()
    assert (row.subscription, row.decision, row.outcome) == (UNKNOWN, "error", "failed")
    assert "SubscriptionNotFound" in row.reason
    assert "check the id in REMEDIATION_SUBSCRIPTIONS" in row.hint
    code, value = status_json()
    assert (code, value["coverage_percent"], value["complete"]) == (1, None, False)
    page = world.get("report").get_body().decode()
    page = page.split("</style>", 1)[1]  # what the page says, not its stylesheet's widths
    assert "100%" not in page
    assert "every VM is covered" not in page
    assert 'id="incomplete"' in page
    code, output = cli("doctor", "--json")
    checks = {(c["scope"], c["check"]): c for c in map(json.loads, output.splitlines())}
    assert code == 1
    assert checks[(UNKNOWN, "permissions")]["ok"] is False


def test_a_subscription_the_identity_cannot_read_leaves_the_run_partial(world_factory):
    forbidden = estate("ready")
    forbidden.add_subscription(Subscription(FORBIDDEN, no_access=True))
    world = world_factory(forbidden)
    with_vms(world, "app-1", "app-2")
    world.plane.estate.add_vm(IMAGES["ubuntu"].vm(FORBIDDEN, "rg", "hidden-1"))
    code, output = cli("sweep", "--json")
    summary = summary_of(output)
    assert code == 1
    assert summary["status"] == "partial"
    assert (summary["assessed"], list(summary["unreadable"])) == (
        [s for s in sorted(world.plane.estate.subscriptions) if s != FORBIDDEN],
        [FORBIDDEN],
    )
    assert "AuthorizationFailed" in summary["unreadable"][FORBIDDEN]
    assert summary["eligible_running"] == 2  # only what was read is counted
    assert not [r for r in world.audit_records() if r.vm.endswith("hidden-1")]


def test_a_failed_batch_keeps_the_last_real_figure_and_says_so(world_factory):
    world = world_factory(estate("ready"))
    with_vms(world, "app-1", "app-2", "app-3")
    code, output = cli("sweep", "--json")
    first = summary_of(output)
    assert (code, first["status"]) == (0, "done")
    before = world.get("report").get_body().decode()
    world.plane.faults.add("POST", GRAPH, 503, count=10_000, **{"x-ms-retry-after-ms": "1"})
    started = json.loads(world.post("sweep").get_body())
    world.run_sweeps()  # every try fails: the batch reaches the poison queue
    run = json.loads(world.get_status(started["run_id"]).get_body())
    assert run["status"] == "failed"
    assert run["summary"]["coverage_percent"] is None
    assert run["summary"]["failed_batches"]
    page = world.get("report").get_body().decode()
    headline = 'id="coverage">'
    assert page.split(headline)[1][:12] == before.split(headline)[1][:12]
    assert 'id="incomplete"' in page
    assert started["run_id"] in page.split('id="incomplete"')[1]


def test_a_security_provider_outage_makes_vms_unavailable_at_once(world_factory):
    world = world_factory(estate("ready"), REMEDIATION_RETRY_BUDGET_SECONDS="2")
    with_vms(world, *(f"app-{n}" for n in range(6)))
    world.plane.faults.add(
        "GET", r"/pricings/VirtualMachines$", 503, count=10_000, **{"x-ms-retry-after-ms": "1"}
    )
    reads_before = world.plane.log.count(status=503)
    code, output = cli("sweep", "--json")
    summary = summary_of(output)
    assert code == 1
    assert (summary["status"], summary["coverage_percent"]) == ("failed", None)
    assert summary["unavailable"] == 6
    records = [r for r in world.audit_records() if r.vm]
    assert {(r.decision, r.outcome) for r in records} == {("undecided", "unavailable")}
    failed_reads = world.plane.log.count(status=503) - reads_before
    assert failed_reads <= 8  # one read's retries for the batch, not one read per VM


def test_every_install_failing_counts_as_failed_and_exits_1(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    with_vms(world, "doomed-1", "doomed-2")
    world.plane.faults.add(
        "PUT", "/extensions/MDE.Linux$", 503, count=10_000, **{"x-ms-retry-after-ms": "1"}
    )
    code, output = cli("sweep", "--json", "--wait")
    summary = summary_of(output)
    poisoned = [r for r in world.audit_records() if r.outcome == "poisoned"]
    assert code == 1
    assert len(poisoned) == 2
    assert summary["after_installs"]["failed"] == 2
    assert summary["after_installs"]["installed"] == 0


def test_the_token_authority_down_loses_no_event(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    events = world.plane.create_vm(new_vm("late-1"))
    world.plane.faults.add("POST", r"/oauth2/v2\.0/token$", 503, count=10_000)
    from remediation import bootstrap

    bootstrap.services.cache_clear()  # a fresh worker: no token cached yet
    [first, *_] = world.deliver(events[0])
    assert (first.vm.rsplit("/", 1)[1], first.outcome) == ("late-1", "queued")
    assert "token authority" in first.reason
    world.plane.faults.rules.clear()  # Entra is back
    bootstrap.services.cache_clear()  # MSAL keeps a 5xx for 5 s (its throttle cache)
    world.run_queue()
    outcomes = [r.outcome for r in world.audit_records() if r.vm.endswith("late-1")]
    assert "succeeded" in outcomes


def test_a_queue_message_delivered_twice_puts_once(world_factory):
    world = world_factory(estate("ready"), **ENFORCE)
    with_vms(world, "twice-1")
    vm = new_vm("twice-1").id
    world.services.claims.take(vm, holder="sweep")
    request = InstallRequest(vm=vm, trigger="sweep")
    world.services.queue.send(request)
    world.services.queue.send(request)  # the storage SDK sent it again after an outage
    world.run_queue()
    outcomes = sorted(r.outcome for r in world.audit_records() if r.vm == vm)
    assert world.extension_puts() == 1
    assert outcomes in (["duplicate", "succeeded"], ["skipped", "succeeded"])


def test_a_resource_group_named_in_any_script_is_swept(world_factory):
    world = world_factory(estate("ready"))
    subscription = next(iter(world.plane.estate.subscriptions))
    world.plane.create_vm(IMAGES["ubuntu"].vm(subscription, "rg-ünïcödé-日本", "intl-1"))
    code, _ = cli("sweep", "--json")
    assert code == 0
    [row] = [r for r in world.audit_records() if r.vm.endswith("intl-1")]
    assert "/resourceGroups/rg-ünïcödé-日本/" in row.vm
    assert row.decision == "install"


def test_status_before_the_first_sweep_is_complete_with_no_error_rows(world_factory):
    world = world_factory(estate("ready"))
    with_vms(world, "fresh-1")
    failed = new_vm("fresh-2")
    from localazure.estate import mde_extension

    failed.extensions["mde.linux"] = mde_extension(failed, "Failed", 31)
    world.plane.create_vm(failed)  # its history is read: there is no table yet
    code, value = status_json()
    assert (code, value["complete"]) == (0, True)
    assert value["categories"]["error"] == 0
    assert value["needs_a_human"] == []


@pytest.mark.parametrize(
    "command", [["doctor", "--json"], ["log", "--json"], ["status"], ["sweep", "--json"]]
)
def test_a_closed_pipe_stops_quietly(world_factory, command):
    import os
    import subprocess
    import sys

    world = world_factory(estate("ready"))
    with_vms(world, "piped-1")
    cli("sweep")
    run = f"{sys.executable} -m remediation {' '.join(command)}"

    def exit_code(shell: str) -> tuple[int, str]:
        done = subprocess.run(
            ["bash", "-c", shell],
            check=False,
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return int(done.stdout.strip().rsplit("=", 1)[1]), done.stderr

    whole, _ = exit_code(f"{run} >/dev/null; echo rc=$?")
    piped, errors = exit_code(f"{run} | head -c 1 >/dev/null; echo rc=${{PIPESTATUS[0]}}")
    assert "Traceback" not in errors
    assert errors == ""
    assert piped in {whole, 141}  # its own answer, or the quiet stop of a closed pipe


def test_wait_counts_the_installs_an_earlier_run_queued(world_factory):
    """After a Ctrl-C'd run, its queued installs are the ones that run: the next sweep
    finds those VMs claimed (duplicate), and its --wait counts their success."""
    world = world_factory(estate("ready"), **ENFORCE)
    with_vms(world, "left-1", "left-2")
    for name in ("left-1", "left-2"):  # what the interrupted run left behind
        vm = new_vm(name).id
        world.services.claims.take(vm, holder="20261204T010000Z-0000dead")
        world.services.queue.send(InstallRequest(vm=vm, trigger="cli", run_id="earlier"))
    code, output = cli("sweep", "--json", "--wait")
    summary = summary_of(output)
    assert code == 0
    assert {
        r["vm"].rsplit("/", 1)[1]: r["outcome"]
        for r in map(json.loads, output.splitlines())
        if r.get("trigger") == "cli"
    } == {"left-1": "duplicate", "left-2": "duplicate"}
    assert summary["after_installs"]["installed"] == 2
    assert summary["after_installs"]["coverage_percent"] == 100.0


def process(env: dict, *args: str):
    """The CLI as its own process, as an operator runs it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "remediation", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_storage_that_does_not_answer_is_one_line_with_its_fix(world_factory, monkeypatch):
    import os

    world_factory(estate("ready"))
    unreachable = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1"
    )
    env = os.environ | {"AzureWebJobsStorage": unreachable}
    done = process(env, "sweep")
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1
    assert len(errors) == 1
    assert "check AzureWebJobsStorage" in errors[0]
    # status reads Azure, not storage: it still answers, and says once what it could not read
    done = process(env, "status", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["complete"] is True
    assert done.stderr.splitlines() == [
        "WARNING the stored scope could not be read (ServiceRequestError)"
    ]
    doctor = process(env, "doctor", "--json")
    rows = [json.loads(line) for line in doctor.stdout.splitlines()]
    assert doctor.returncode == 1
    assert [(r["scope"], r["ok"]) for r in rows if r["check"] == "queues and table"] == [
        ("storage", False)
    ]
