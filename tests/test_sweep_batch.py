"""A sweep batch in the fast tier: the sweep's own part (its cap, its reading of each
subscription before its machines, the run's closing status) over test_act's in-memory
stand-ins and an in-memory run store with the RunStore methods a batch calls."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from azure.core.exceptions import ResourceNotFoundError

from remediation import sweep
from remediation.model import PermanentError, TransientError, VmFacts, VmRef
from remediation.pipeline import RequestCounter
from remediation.runs import BatchResult, Run, closing_status, summarize
from tests.test_act import NO_WDATP, OTHER, SUB, ubuntu
from tests.test_act import services as fake_services

STARTED = datetime(2026, 12, 4, 2, 0, tzinfo=UTC)


class Runs:
    """The run store as a batch uses it: one run, its cap shared through ``used``."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.used = 0
        self.given_back = 0
        self.results: dict[int, BatchResult] = {}

    def get(self, run_id: str) -> Run | None:
        return self.run if run_id == self.run.run_id else None

    def beat(self, run_id: str) -> bool:
        return self.run.status == "running"

    def reserve(self, run_id: str, wanted: int, at_least: int, cap: int) -> int:
        taken = min(wanted, cap - self.used) if cap - self.used >= at_least else 0
        self.used += taken
        return taken

    def give_back(self, run_id: str, unused: int) -> None:
        self.used -= unused
        self.given_back += unused

    def finish_batch(self, run: Run, batch: int, result: BatchResult) -> Run | None:
        self.results[batch] = result
        if len(self.results) < run.batches:
            return None
        summary = summarize(list(self.results.values()), run.started, STARTED)
        run.status, run.summary = closing_status(summary, run.subscriptions), summary
        return run


class NoTable:
    """The audit table before verification ever ran: no device snapshot for the run."""

    def get_entity(self, *args, **kwargs):
        raise ResourceNotFoundError("TableNotFound")


class Audit:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.table = NoTable()
        self.rows: list = []

    def reinstalls_since_success(self, vm: str) -> int:
        return 0

    def write_many(self, records) -> None:
        self.rows += records

    def purge(self, before) -> int:
        return 0


def world(machines, *, mode="enforce", cap=100, subscriptions=(SUB,), **settings):
    running = fake_services(machines[0], NO_WDATP, mode=mode, **settings)
    running.settings = dataclasses.replace(running.settings, max_actions_per_sweep=cap)
    for facts in machines[1:]:
        running.arm.facts[facts.vm.id] = facts
    running.arm.counter = RequestCounter()
    running.arm.forget_posture = lambda subscription: None
    running.arm.inventory = lambda subs, on_total=None: [
        f for f in machines if f.vm.subscription in subs
    ]
    running.audit = Audit(running.audit)
    running.states.read = lambda subscription: {}
    run = Run("20261204T020000Z-0000abcd", mode, "sweep", list(subscriptions), 1, STARTED)
    running.runs = Runs(run)
    return running, run


def sweep_once(running, run):
    message = sweep.BatchMessage(run.run_id, 0, tuple(run.subscriptions))
    return sweep.run_batch(running, message)


def test_the_cap_holds_back_the_rest_and_the_unused_reservation_is_given_back():
    machines = [ubuntu(f"vm{n}") for n in range(3)]
    running, run = world(machines, cap=3)  # the setting write, then two installs
    done = sweep_once(running, run)
    outcomes = [(r.vm.rsplit("/", 1)[1], r.outcome) for r in running.audit.rows]
    assert outcomes == [("vm0", "queued"), ("vm1", "queued"), ("vm2", "none")]
    assert "reached its cap of 3" in running.audit.rows[2].reason
    assert (done.summary["actions"], done.summary["capped"]) == (3, 1)
    assert running.runs.used == 3  # what the batch reserved beyond its use went back


def test_a_report_sweep_counts_against_the_cap_what_enforce_would_do():
    machines = [ubuntu(f"vm{n}") for n in range(2)]
    running, run = world(machines, mode="report", cap=100)
    done = sweep_once(running, run)
    assert [r.outcome for r in running.audit.rows] == ["reported", "reported"]
    assert done.summary["actions"] == 3  # one setting for the subscription, two installs
    assert running.runs.used == 3
    assert running.runs.given_back == 47  # the cap is taken 50 at a time: the rest went back


def test_a_subscription_azure_does_not_know_is_one_record_and_no_figure():
    machines = [ubuntu("vm0")]
    running, run = world(machines, subscriptions=(SUB, OTHER))
    posture = running.arm.posture

    def refuse_other(subscription):
        if subscription == OTHER:
            raise PermanentError("reading the plan: not found (SubscriptionNotFound)", status=404)
        return posture(subscription)

    running.arm.posture = refuse_other
    done = sweep_once(running, run)
    [unknown] = [r for r in running.audit.rows if r.subscription == OTHER]
    assert (unknown.vm, unknown.decision, unknown.outcome) == ("", "error", "failed")
    assert "check the id in REMEDIATION_SUBSCRIPTIONS" in unknown.hint
    assert done.status == "partial"
    assert done.summary["assessed"] == [SUB]
    assert list(done.summary["unreadable"]) == [OTHER]


def test_only_unknown_subscriptions_is_a_failed_run_with_no_percentage():
    running, run = world([ubuntu("vm0", subscription=OTHER)], subscriptions=(OTHER,))
    running.arm.posture = lambda subscription: (_ for _ in ()).throw(
        PermanentError("forbidden (AuthorizationFailed)", status=403, hint="grant Reader")
    )
    done = sweep_once(running, run)
    assert done.status == "failed"
    assert (done.summary["eligible_running"], done.summary["coverage_percent"]) == (0, None)
    assert [r.hint for r in running.audit.rows] == ["grant Reader"]


def test_a_posture_that_gets_no_answer_makes_the_machines_unavailable_at_once():
    machines = [ubuntu(f"vm{n}") for n in range(3)]
    running, run = world(machines)
    calls = []

    def down(subscription):
        calls.append(subscription)
        raise TransientError("HTTP 503 from Microsoft.Security")

    running.arm.posture = down
    done = sweep_once(running, run)
    assert calls == [SUB]  # read once for the batch, not once per machine
    assert [(r.decision, r.outcome) for r in running.audit.rows] == [
        ("undecided", "unavailable")
    ] * 3
    assert done.status == "failed"  # nothing measured: no figure, never 100%
    assert done.summary["coverage_percent"] is None


def test_a_batch_that_failed_every_try_leaves_the_run_failed_not_done():
    running, run = world([ubuntu("vm0")])
    message = sweep.BatchMessage(run.run_id, 0, (SUB,))
    done = sweep.fail_batch(running, message, "Resource Graph answered 503 on every try")
    assert done.status == "failed"
    assert done.summary["coverage_percent"] is None
    assert done.summary["failed_batches"] == [
        f"batch 0 ({SUB}): Resource Graph answered 503 on every try"
    ]


def test_closing_status_follows_what_was_assessed():
    assert closing_status({"assessed": [SUB, OTHER]}, [SUB, OTHER]) == "done"
    assert closing_status({"assessed": [SUB]}, [SUB, OTHER]) == "partial"
    assert closing_status({"assessed": []}, [SUB, OTHER]) == "failed"


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe not utf-8", ("[" * 5000 + "]" * 5000).encode(), b'{"schema": "other"}'],
)
def test_a_malformed_batch_message_is_one_record_in_both_queue_functions(body):
    running, _ = world([ubuntu("vm0")])
    running.audit.write = running.audit.rows.append
    assert sweep.handle_batch(running, body) is None
    assert sweep.handle_batch_poison(running, body) is None
    assert [(r.decision, r.outcome) for r in running.audit.rows] == [("error", "failed")] * 2
    assert all("malformed sweep batch" in r.reason for r in running.audit.rows)


def test_a_machine_azure_did_not_answer_for_leaves_its_subscription_not_assessed():
    from remediation.classify import MDE_PUBLISHER
    from remediation.model import ExtensionFacts

    failed = ExtensionFacts("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", "Failed")
    machines = [ubuntu("vm0"), ubuntu("vm1", extensions=(failed,))]
    running, run = world(machines)

    def history_unreadable(vm):  # the failed one's history is read from the log
        raise TransientError("the log's table did not answer")

    running.audit.reinstalls_since_success = history_unreadable
    done = sweep_once(running, run)
    assert [r.outcome for r in running.audit.rows] == ["queued", "unavailable"]
    assert done.status == "failed"  # its only subscription was not measured completely
    assert done.summary["unreadable"] == {
        SUB: "Azure did not answer for 1 machines (outcome unavailable)"
    }


def test_the_batch_reads_each_posture_once_for_all_its_machines():
    machines = [ubuntu(f"vm{n}") for n in range(4)]
    running, run = world(machines)
    reads = []
    posture = running.arm.posture

    def counted(subscription):
        reads.append(subscription)
        return posture(subscription)

    running.arm.posture = counted
    sweep_once(running, run)
    assert reads == [SUB]


# --- Arc machines on Azure VMs: found from the batch's own inventory ----------------------
ARC = f"/subscriptions/{SUB}/resourceGroups/rg-onprem/providers/Microsoft.HybridCompute/machines"


def _arc(name: str, provider: str = "N/A", vm_uuid: str = "") -> VmFacts:
    return VmFacts(
        vm=VmRef.parse(f"{ARC}/{name}"), os_type="Linux", cloud_provider=provider, vm_uuid=vm_uuid
    )


def test_arc_machines_that_may_be_azure_vms_come_last_with_their_twin_in_either_byte_order():
    vm = dataclasses.replace(ubuntu(), vm_id="DA560509-FAD4-4F76-A9F1-63614EDA019A")
    swapped = _arc("a-swapped", vm_uuid="090556DA-D4FA-764F-A9F1-63614EDA019A")
    same = _arc("b-same", vm_uuid="da560509-fad4-4f76-a9f1-63614eda019a")
    alone = _arc("c-alone", vm_uuid="11111111-2222-4333-8444-555555555555")
    aws = _arc("d-aws", provider="AWS", vm_uuid="090556DA-D4FA-764F-A9F1-63614EDA019A")
    listed = [swapped, same, vm, alone, aws]
    out = list(sweep._Batch.twins_last(listed))
    assert [f.vm.name for f in out] == [vm.vm.name, "d-aws", "a-swapped", "b-same", "c-alone"]
    twins = {f.vm.name: f.azure_twin for f in out}
    assert twins == {
        vm.vm.name: "",
        "d-aws": "",
        "a-swapped": vm.vm.id,
        "b-same": vm.vm.id,
        "c-alone": "",
    }
    assert len(out) == len(listed)  # nothing lost, nothing twice
