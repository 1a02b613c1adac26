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
from tests.test_act import NO_WDATP, OTHER, READY, SUB, ubuntu
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


class Baselines:
    """Each subscription's baseline, in memory: what the table's chunks hold."""

    def __init__(self) -> None:
        self.stored: dict[str, dict] = {}
        self.writes: list[str] = []
        self.failed: dict[str, int] = {}  # installs Failed since success, by VM

    def read(self, subscription: str) -> dict:
        return dict(self.stored.get(subscription, {}))

    def read_all(self, subscription: str):
        return self.read(subscription), dict(self.failed), frozenset()

    def write(self, subscription: str, generation: str, records, replacing=None) -> None:
        self.stored[subscription] = {record.vm.lower(): record for record in records}
        self.writes.append(subscription)


class Audit:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.table = NoTable()
        self.rows: list = []
        self.baselines = Baselines()

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


def claim_unanswered(running, name: str) -> None:
    """The claims table does not answer for one VM: its reinstall cannot be claimed."""
    take = running.claims.take

    def unanswered(vm: str, holder: str) -> bool:
        if vm.endswith(f"/{name}"):
            raise TransientError("the claims table did not answer")
        return take(vm, holder)

    running.claims.take = unanswered


def test_a_machine_azure_did_not_answer_for_leaves_its_subscription_not_assessed():
    from remediation.classify import MDE_PUBLISHER
    from remediation.model import ExtensionFacts

    failed = ExtensionFacts("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", "Failed")
    machines = [ubuntu("vm0"), ubuntu("vm1", extensions=(failed,))]
    running, run = world(machines)
    claim_unanswered(running, "vm1")
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


# --- Rows for changes only; every night answerable (the log's promise) --------------------
def _mde(state: str = "Succeeded"):
    from remediation.classify import MDE_PUBLISHER
    from remediation.model import ExtensionFacts

    return ExtensionFacts("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", state)


def ready_world(machines):
    """A report-mode world whose subscription needs nothing: a VM's decision is its own."""
    running, _ = world(machines, mode="report")
    running.arm.postures[SUB] = READY
    return running


def night(running, machines, day: int, *, outage: bool = False, mode: str = "report"):
    """One sweep of SUB on 2026-12-<day> (report mode unless told): every record it made,
    and the run. ``outage``: the posture read gets no answer (nothing is assessed)."""
    started = datetime(2026, 12, day, 2, 0, tzinfo=UTC)
    run = Run(f"202612{day:02d}T020000Z-0000abcd", mode, "sweep", [SUB], 1, started)
    running.runs = Runs(run)
    running.arm.inventory = lambda subs, on_total=None: [
        f for f in machines if f.vm.subscription in subs
    ]
    posture = running.arm.posture

    def unanswered(subscription):
        raise TransientError("ARM did not answer")

    if outage:
        running.arm.posture = unanswered
    made: list = []
    message = sweep.BatchMessage(run.run_id, 0, (SUB,))
    try:
        sweep.run_batch(running, message, on_record=made.append)
    finally:
        running.arm.posture = posture
    return made, run


def test_a_steady_night_writes_no_row_and_a_change_writes_one():
    machines = [ubuntu(f"vm{n}") for n in range(3)]
    running = ready_world(machines)
    night(running, machines, 1)
    assert len(running.audit.rows) == 3  # the first night: no baseline, every machine
    assert running.audit.baselines.writes == [SUB]
    made, run = night(running, machines, 2)
    assert len(made) == 3
    assert len(running.audit.rows) == 3
    assert running.audit.baselines.writes == [SUB]  # nor the baseline
    assert run.summary["assessed"] == [SUB]
    assert run.summary["vms"] == 3
    machines[1] = ubuntu("vm1", extensions=(_mde(),))  # MDE arrived by other means
    night(running, machines, 3)
    latest = running.audit.rows[3:]
    assert [(r.vm.rsplit("/", 1)[1], r.decision) for r in latest] == [("vm1", "compliant")]
    assert running.audit.baselines.stored[SUB][machines[1].vm.id.lower()].decision == "compliant"


def test_a_machine_no_longer_listed_is_one_gone_row_and_leaves_the_baseline():
    machines = [ubuntu(f"vm{n}") for n in range(3)]
    running = ready_world(machines)
    night(running, machines, 1)
    night(running, machines[:2], 2)
    gone = running.audit.rows[3:]
    assert [(r.vm.rsplit("/", 1)[1], r.decision, r.outcome) for r in gone] == [
        ("vm2", "gone", "none")
    ]
    assert "no longer lists" in gone[0].reason
    assert set(running.audit.baselines.stored[SUB]) == {m.vm.id.lower() for m in machines[:2]}
    night(running, machines[:2], 3)
    assert len(running.audit.rows) == 4  # gone once, not every night after


def test_a_subscription_not_assessed_keeps_its_baseline_and_its_outage_rows():
    machines = [ubuntu(f"vm{n}") for n in range(2)]
    running = ready_world(machines)
    night(running, machines, 1)
    before = dict(running.audit.baselines.stored[SUB])
    _, run = night(running, [machines[0]], 2, outage=True)
    assert run.status == "failed"
    outage = running.audit.rows[2:]
    assert [r.outcome for r in outage] == ["unavailable"]  # an outage is a row, every time
    assert running.audit.baselines.stored[SUB] == before  # no gone, no unavailable state
    night(running, machines, 3)
    assert len(running.audit.rows) == 3  # back, unchanged from the last complete night


def _same(record, state) -> bool:
    from remediation.audit import state_of

    return state_of(record) == state_of(state)


@pytest.mark.parametrize("seed", range(12))
def test_a_change_is_never_lost_and_an_unchanged_machine_is_answerable_for_any_night(seed):
    """Random nights over a few machines: MDE comes and goes, machines appear and are
    deleted, some nights get no answer. Afterwards, for every night that assessed the
    subscription, each machine's history (its rows and the nights read back from the
    runs and its baseline) holds exactly what the sweep found that night; on every other
    night it has its outage row only; and every row written is still there."""
    import random

    from remediation.audit import Night, nights

    rng = random.Random(seed)
    names = [f"vm{n}" for n in range(5)]
    present = {name: rng.random() < 0.7 for name in names}
    protected = {name: rng.random() < 0.5 for name in names}
    running = ready_world([ubuntu("vm0")])
    truth: dict[str, dict[str, object]] = {name: {} for name in names}
    complete: list[Night] = []
    for day in range(1, 16):
        for name in names:
            if rng.random() < 0.2:
                present[name] = not present[name]
            if rng.random() < 0.3:
                protected[name] = not protected[name]
        machines = [
            ubuntu(name, extensions=(_mde(),) if protected[name] else ())
            for name in names
            if present[name]
        ]
        outage = rng.random() < 0.2
        made, run = night(running, machines, day, outage=outage)
        for record in made:
            truth[record.vm.rsplit("/", 1)[1]][run.run_id] = record
        if SUB in run.assessed:
            complete.append(Night(run.run_id, run.started, run.trigger))
    rows = running.audit.rows
    for name in names:
        vm = ubuntu(name).vm.id
        mine = [r for r in rows if r.vm == vm]
        baseline = running.audit.baselines.stored.get(SUB, {}).get(vm.lower())
        history = nights(mine, complete, baseline)
        by_run = {r.run_id: r for r in history}
        for each in complete:
            found = truth[name].get(each.run_id)
            if found is None:  # not listed that night: its gone row at most, nothing read back
                got = by_run.get(each.run_id)
                assert got is None or (got.decision == "gone" and got.unchanged_since is None)
            else:
                assert each.run_id in by_run, (name, each.run_id)
                assert _same(by_run[each.run_id], found)
        assert all(row in history for row in mine)  # no row is lost in the history
    assert len(rows) < sum(len(t) for t in truth.values())  # and nights did not write all


def test_an_unchanged_machine_of_a_subscription_not_assessed_completely_gets_its_row():
    machines = [ubuntu("vm0", extensions=(_mde(),)), ubuntu("vm1", extensions=(_mde("Failed"),))]
    running, _ = world(machines)  # enforce: vm1's reinstall is claimed, vm0 is compliant
    running.arm.postures[SUB] = READY
    night(running, machines, 1, mode="enforce")
    assert len(running.audit.rows) == 2
    claim_unanswered(running, "vm1")
    running.claims.holders.clear()
    _, run = night(running, machines, 2, mode="enforce")
    assert run.summary["assessed"] == []
    second = [(r.vm.rsplit("/", 1)[1], r.outcome) for r in running.audit.rows[2:]]
    # vm0 is unchanged, but the run cannot vouch for its subscription: its row is written.
    assert sorted(second) == [("vm0", "none"), ("vm1", "unavailable")]


def test_the_sweep_reads_failed_installs_with_the_baseline_not_per_machine():
    machines = [ubuntu(f"vm{n}", extensions=(_mde("Failed"),)) for n in range(3)]
    running = ready_world(machines)
    running.audit.baselines.failed = {machines[0].vm.id.lower(): 99}  # gave up on vm0

    def per_machine(vm):
        raise AssertionError("a table query per machine")

    running.audit.reinstalls_since_success = per_machine
    made, _ = night(running, machines, 1)
    decided = {r.vm.rsplit("/", 1)[1]: r.decision for r in made}
    assert decided == {"vm0": "error", "vm1": "install", "vm2": "install"}


def test_once_the_cap_is_spent_the_batch_stops_asking_for_more():
    machines = [ubuntu(f"vm{n}") for n in range(6)]
    running, run = world(machines, cap=3)  # the setting write and two installs
    asked = []
    reserve = running.runs.reserve

    def counted(*args):
        asked.append(args)
        return reserve(*args)

    running.runs.reserve = counted
    sweep_once(running, run)
    assert [r.outcome for r in running.audit.rows].count("queued") == 2
    assert len(asked) == 2  # one block, then one answer of "nothing left": no read per VM


def test_a_large_cap_is_taken_in_large_blocks():
    machines = [ubuntu(f"vm{n}") for n in range(120)]
    running, run = world(machines, mode="report", cap=100_000)
    asked = []
    reserve = running.runs.reserve

    def counted(*args):
        asked.append(args[1])
        return reserve(*args)

    running.runs.reserve = counted
    sweep_once(running, run)
    assert asked == [5000]  # a twentieth of the cap: one round trip, not one per 50 actions
    assert running.runs.used == 121  # the setting and 120 installs; the rest went back
