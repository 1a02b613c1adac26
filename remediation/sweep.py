"""The drift sweep: every VM of every subscription in scope, through the same
decide/apply/audit pipeline as events, inventoried through Resource Graph.

A run is started by the timer, the HTTP API or the CLI. It locks its subscriptions
(a second run for one of them gets 409) for as long as it shows signs of life: every
batch beats the run's heartbeat, and a run silent for STALE_AFTER (its worker died) is
closed as failed by the next run that needs its subscriptions, or by hand with
``sweep --abandon RUN_ID``. It splits them into batches of
REMEDIATION_SWEEP_BATCH_SIZE, and each batch is one queue message (so many instances
share a large tenant) or, from the CLI, one loop. A batch streams its VMs from Resource
Graph, reads each subscription's posture once, applies subscription actions once per
subscription, queues installs, and stores its result; the batch that completes the run
writes the summary. Audit rows of a sweep have keys derived from the run and the VM,
so a batch that is retried rewrites the same rows instead of adding new ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from remediation import defender, metrics
from remediation.act import BatchActions, act
from remediation.audit import GONE, AuditRecord, changed, is_state, sweep_record_id
from remediation.classify import Protection, may_run_on_azure
from remediation.config import GUID, Mode
from remediation.doctor import events_check
from remediation.model import (
    Kind,
    Outcome,
    PermanentError,
    Posture,
    RecordOutcome,
    TransientError,
    Unparsed,
    Verification,
    VmFacts,
    covered,
    load_json,
    smbios_forms,
)
from remediation.policy import verify
from remediation.runs import (
    MAX_BODY,
    BatchResult,
    InvalidSweepRequest,
    Run,
    RunStatus,
    RunStore,
    SweepRequest,
    SweepRunning,
    parse_request,
)
from remediation.scope import Resolution, refresh
from remediation.service import (
    Assessment,
    Context,
    Services,
    assess,
    record_dropped,
    subscription_hint,
)

SCHEMA = "sweep-batch/1"
WRITE_EVERY = 1000  # a batch writes its records this many at a time (a page of inventory)
HEARTBEAT_EVERY = timedelta(minutes=1)
CAP_BLOCK = 50  # actions a batch takes from the run's cap at a time, at least
CAP_SHARES = 20  # and at least this share of the cap: 5,000 of a 100,000 cap, 2 round trips

log = logging.getLogger("remediation")


# --- Batch messages --------------------------------------------------------------------
@dataclass(frozen=True)
class BatchMessage:
    run_id: str
    batch: int
    subscriptions: tuple[str, ...]

    def to_text(self) -> str:
        return json.dumps(
            {
                "schema": SCHEMA,
                "run_id": self.run_id,
                "batch": self.batch,
                "subscriptions": list(self.subscriptions),
            }
        )

    @classmethod
    def parse(cls, text: bytes | str) -> BatchMessage:
        try:
            value = load_json(text, max_bytes=MAX_BODY)
            subscriptions = tuple(value["subscriptions"])
            valid = value.get("schema") == SCHEMA and all(
                isinstance(s, str) and GUID.match(s) for s in subscriptions
            )
            if valid:
                return cls(str(value["run_id"]), int(value["batch"]), subscriptions)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            pass
        raise ValueError("not a sweep batch message")


def batches_of(subscriptions: Sequence[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(subscriptions[i : i + size]) for i in range(0, len(subscriptions), size)] or [()]


# --- Starting, running ------------------------------------------------------------------
def start(services: Services, request: SweepRequest, send: Callable[[str], Any] | None) -> Run:
    """Resolve the scope, lock the subscriptions, record the run, and hand its batches to
    ``send`` (the sweep queue) -- or, with ``send=None``, leave them for the caller to run
    inline. Once the run holds its subscriptions: a record for each subscription that
    joined or left the scope, then the new scope stored (a run refused writes neither, and
    the next run finds the same changes)."""
    resolution = resolve_scope(services)
    request = dataclasses.replace(request, subscriptions=in_scope(request, resolution.scope.ids))
    batches = batches_of(request.subscriptions, services.settings.sweep_batch_size)
    uniform = _uniform_scale_sets(services, request.subscriptions)
    run = services.runs.new_run(request, len(batches), uniform=uniform)
    changes = resolution.records(run.run_id, services.settings)
    if changes:
        services.audit.write_many([_stable(record, run) for record in changes])
        for record in changes:
            log.info("scope: %s", record.log_line())
    if resolution.fresh:
        services.scopes.save(resolution.scope, resolution.stored)
    services.remember_scope(resolution.scope)
    if services.settings.mde_api:
        defender.read_for_run(services.audit.table, services.arm.defender_devices, run.run_id)
    if send is not None:
        for index, batch in enumerate(batches):
            send(BatchMessage(run.run_id, index, batch).to_text())
    return run


def resolve_scope(services: Services) -> Resolution:
    """A sweep starts: the scope afresh (names, groups, wiring), against the stored one.
    Writes nothing: ``start`` stores it once the run holds its subscriptions."""
    settings = services.settings
    return refresh(
        settings,
        services.scopes.load(),
        lambda: services.arm.subscription_containers(
            settings.management_groups, settings.subscriptions
        ),
        lambda subscription: events_check(services, subscription).ok,
    )


def in_scope(request: SweepRequest, scope: frozenset[str]) -> tuple[str, ...]:
    """The subscriptions a run sweeps: those asked for (each must be in scope), or all."""
    if not scope:
        raise InvalidSweepRequest(
            [
                "no subscription is in scope: check REMEDIATION_SUBSCRIPTIONS and "
                "REMEDIATION_MANAGEMENT_GROUPS (python -m remediation doctor)"
            ]
        )
    outside = [s for s in request.subscriptions if s not in scope]
    if outside:
        raise InvalidSweepRequest(
            [
                f"subscription {s} is not in scope (REMEDIATION_SUBSCRIPTIONS or "
                "REMEDIATION_MANAGEMENT_GROUPS)"
                for s in outside
            ]
        )
    return request.subscriptions or tuple(sorted(scope))


def _uniform_scale_sets(services: Services, subscriptions: Sequence[str]) -> tuple[int, int]:
    """(uniform scale sets, their instances) in the run's subscriptions: counted as "not
    covered by this app". Best effort: the sweep goes on without the count."""
    try:
        counts = services.arm.uniform_scale_sets(subscriptions)
    except (TransientError, PermanentError) as error:
        log.warning("uniform scale sets were not counted: %s", error)
        return (0, 0)
    return (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))


def run_batch(
    services: Services,
    message: BatchMessage,
    on_record: Callable[[AuditRecord], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Run | None:
    """Sweep one batch of subscriptions. Returns the run when this batch finished it."""
    store = services.runs
    run = store.get(message.run_id)
    if run is None:
        raise ValueError(f"unknown sweep run {message.run_id}")
    if run.status != RunStatus.RUNNING:  # closed as failed meanwhile: its subscriptions moved on
        log.warning("sweep %s is %s: batch %s skipped", run.run_id, run.status, message.batch)
        return None
    index = defender.load(services.audit.table, run.run_id, message.subscriptions)
    batch = _Batch(services, run, store, index)
    if not store.beat(run.run_id):
        return None
    last_beat = time.monotonic()
    batch.result.subscriptions = list(message.subscriptions)
    with services.arm.counter.counting() as used:
        readable = batch.read_postures(message.subscriptions)
        complete = False
        try:
            listed = services.arm.inventory(readable, on_total=on_total) if readable else ()
            for facts in batch.twins_last(listed):
                record = batch.handle(facts)
                if on_record is not None:
                    on_record(record)
                page = len(batch.records) >= WRITE_EVERY
                if page:  # memory stays flat however big
                    services.audit.write_many(batch.records)
                    batch.records.clear()
                # Before the next page, and at least every minute: is the run still ours?
                # (abandoned, or taken over: stop, take no more claims)
                if page or time.monotonic() - last_beat > HEARTBEAT_EVERY.total_seconds():
                    if not store.beat(run.run_id):
                        log.warning(
                            "sweep %s was closed: batch %s stops", run.run_id, message.batch
                        )
                        break
                    last_beat = time.monotonic()
            else:
                complete = True
        finally:
            store.give_back(run.run_id, batch.budget)
    batch.result.complete = complete
    for subscription, machines in batch.unanswered.items():  # not measured: not assessed
        batch.result.unreadable.setdefault(
            subscription, f"Azure did not answer for {machines} machines (outcome unavailable)"
        )
    batch.records += batch.unvouched() + batch.gone()
    services.audit.write_many(batch.records)  # the rows first: a change is never lost
    batch.save_baselines()
    batch.save_states(complete)
    batch.result.arm_requests, batch.result.graph_requests = used["arm"], used["graph"]
    return _finished(services, store.finish_batch(run, message.batch, batch.result))


def _finished(services: Services, run: Run | None) -> Run | None:
    """The batch that finished the run: notify, and apply the log's retention."""
    if run is None:
        return None
    with contextlib.suppress(Exception):  # a leftover copy costs storage only
        defender.forget(services.audit.table, run.run_id)
    if services.notifier is not None:
        services.notifier.sweep_completed(run.run_id, run.mode, run.summary)
    cutoff = datetime.now(UTC) - timedelta(days=services.settings.audit_retention_days)
    purged = services.audit.purge(cutoff)
    if purged:
        log.info("retention: %s records older than %s deleted", purged, cutoff.date())
    try:
        metrics.publish_run(run, lambda: services.runs.batch_results(run.run_id))
    except Exception as error:  # telemetry is best effort: the run is done and recorded
        log.warning("metrics: run=%s not published: %s", run.run_id, error)
    return run


def fail_batch(services: Services, message: BatchMessage, why: str) -> Run | None:
    """A batch that failed every try still counts, so the run finishes and says so."""
    store = services.runs
    run = store.get(message.run_id)
    if run is None:
        return None
    where = ", ".join(message.subscriptions)
    result = BatchResult(
        failed=f"batch {message.batch} ({where}): {why}", subscriptions=list(message.subscriptions)
    )
    return _finished(services, store.finish_batch(run, message.batch, result))


class _Batch:
    """One batch's VMs through assess -> act, with the run's cap and mode."""

    def __init__(
        self, services: Services, run: Run, store: RunStore, index: defender.DeviceIndex
    ) -> None:
        self.services = services
        self.run = run
        self.store = store
        self.index = index
        self.states: dict[str, dict[str, defender.State]] = {}  # per subscription, read once
        self.changes: dict[str, dict[str, defender.State | None]] = {}
        self.seen: dict[str, set[str]] = {}  # per subscription: the VMs the inventory listed
        self.turned: list[AuditRecord] = []  # turned not-seen or unhealthy: notify
        self.cap = services.settings.max_actions_per_sweep
        self.actions = BatchActions()  # subscription writes made (or reported) this batch
        self.down: dict[str, TransientError] = {}  # subscriptions whose posture got no answer
        self.postures: dict[str, Posture] = {}  # read once per subscription for the batch
        self.unanswered: Counter[str] = Counter()  # machines Azure did not answer for
        self.records: list[AuditRecord] = []  # rows to write: changes and actions only
        # Per subscription read: each machine's state as the sweep last saw it, and this
        # batch's changes to it (None: gone).
        self.baselines: dict[str, dict[str, AuditRecord]] = {}
        self.failed: dict[str, dict[str, int]] = {}  # installs Failed since success, per VM
        self.chunks: dict[str, frozenset[str]] = {}  # the baseline rows a write replaces
        self.moved: dict[str, dict[str, AuditRecord | None]] = {}
        self.quiet: dict[str, list[AuditRecord]] = {}  # unchanged: no row if assessed
        self.result = BatchResult()
        self.budget = 0  # actions taken from the run's cap, not yet used
        self.spent = False  # the run's cap had no action left when last asked
        trigger = "sweep" if run.trigger == "sweep" else run.trigger
        self.context = Context(services, trigger, run_id=run.run_id, mode=Mode(run.mode))

    def read_postures(self, subscriptions: Sequence[str]) -> list[str]:
        """Each subscription's plan and settings, read afresh (drift), before its machines:
        the subscriptions to inventory. One Azure does not know, or the identity cannot
        read, is recorded once with its fix and left out (its last complete figures
        stand). One whose read got no answer is remembered: its machines are recorded
        unavailable at once, not after a full retry each. The posture read is the batch's
        for all its machines (a long batch outlives the gateway's cache)."""
        readable = []
        for subscription in subscriptions:
            self.services.arm.forget_posture(subscription)
            try:
                self.postures[subscription] = self.services.arm.posture(subscription)
            except TransientError as error:
                self.down[subscription] = error
                self.result.unreadable[subscription] = f"Azure did not answer: {error}"
                readable.append(subscription)
            except PermanentError as error:
                self.result.unreadable[subscription] = str(error)
                self.records.append(_stable(self._unreadable(subscription, error), self.run))
            else:
                readable.append(subscription)
                baseline, failed, chunks = self.services.audit.baselines.read_all(subscription)
                self.baselines[subscription], self.failed[subscription] = baseline, failed
                self.chunks[subscription] = chunks
        return readable

    def _unparsed(self, machine: Unparsed) -> AuditRecord:
        """A machine whose id cannot be read: one record, nothing done to it."""
        self.result.errors += 1
        context = dataclasses.replace(self.context, vm=machine.resource_id[:400])
        reason = f"Azure listed a machine whose id this app cannot read: {machine.reason}"
        hint = "report it with the id: the machine is not assessed until the app reads it"
        record = context.record(Outcome.ERROR.value, reason, RecordOutcome.FAILED, hint=hint)
        record = _stable(record, self.run)
        _count(self.result, record)
        self.records.append(record)
        return record

    def _unreadable(self, subscription: str, error: PermanentError) -> AuditRecord:
        context = dataclasses.replace(self.context, subscription=subscription)
        hint = subscription_hint(error)
        reason = (
            f"Subscription {subscription} could not be read, so none of its machines was "
            f"assessed: {error}"
        )
        return context.record(Outcome.ERROR.value, reason, RecordOutcome.FAILED, hint=hint)

    @staticmethod
    def twins_last(machines: Iterable[VmFacts | Unparsed]) -> Iterator[VmFacts | Unparsed]:
        """Every machine; the Arc machines that may run on an Azure VM come last, with that
        VM when one of the batch's VMs has their SMBIOS id as its vmId (no request: the
        inventory has both). A twin in another batch's subscriptions is not seen here; the
        event path, which looks across the whole scope, is."""
        held: list[VmFacts] = []
        vm_ids: dict[str, str] = {}
        for facts in machines:
            if isinstance(facts, VmFacts) and facts.vm.kind is Kind.VM and facts.vm_id:
                vm_ids[facts.vm_id.lower()] = facts.vm.id
            if isinstance(facts, VmFacts) and may_run_on_azure(facts):
                held.append(facts)
            else:
                yield facts
        for facts in held:
            twins = [vm_ids[form] for form in smbios_forms(facts.vm_uuid) if form in vm_ids]
            yield dataclasses.replace(facts, azure_twin=min(twins)) if twins else facts

    def handle(self, facts: VmFacts | Unparsed) -> AuditRecord:
        if isinstance(facts, Unparsed):
            return self._unparsed(facts)
        context = self.context.for_vm(facts.vm)
        # Listed by the inventory, whatever happens next: its state is kept.
        self.seen.setdefault(facts.vm.subscription.lower(), set()).add(facts.vm.id.lower())
        assessment: Assessment | None = None
        turned = False
        try:
            down = self.down.get(facts.vm.subscription)
            if down is not None:  # its subscription's posture got no answer this batch
                raise TransientError(str(down))
            posture = self.postures.get(facts.vm.subscription)
            failed = self.failed.get(facts.vm.subscription, {}).get(facts.vm.id.lower(), 0)
            assessed = assess(
                self.services, facts, last_known=False, posture=posture, reinstalls=failed
            )
            assessment, turned = self._verify(assessed)
            record = self._act(context, assessment)
        except TransientError as error:
            self.result.unavailable += 1
            self.unanswered[facts.vm.subscription] += 1
            record = context.unavailable(error, "the next sweep checks this VM again.", assessment)
        except PermanentError as error:
            self.result.errors += 1
            reason = f"The sweep could not handle this VM: {error}"
            record = context.record(
                Outcome.ERROR.value, reason, RecordOutcome.FAILED, hint=error.hint
            )
        record = _stable(record, self.run)
        _count(self.result, record)
        subscription, key = facts.vm.subscription, facts.vm.id.lower()
        before = self.baselines.get(subscription, {}).get(key)
        if changed(before, record):
            self.records.append(record)
            if is_state(record):
                self.moved.setdefault(subscription, {})[key] = record
        else:  # its row, should the subscription not be assessed completely after all
            self.quiet.setdefault(subscription, []).append(record)
        if turned and record.eligible_running:
            self.turned.append(record)
        return record

    def unvouched(self) -> list[AuditRecord]:
        """The unchanged machines of the subscriptions this batch did not assess
        completely: the run cannot vouch for them, so each gets its row."""
        assessed = set(self.result.assessed)
        return [r for s, records in self.quiet.items() if s not in assessed for r in records]

    def gone(self) -> list[AuditRecord]:
        """A ``gone`` row for each machine of an assessed subscription's baseline that the
        inventory no longer listed (deleted, or moved to another subscription)."""
        records = []
        for subscription in self.result.assessed:
            listed = self.seen.get(subscription.lower(), set())
            for key, last in sorted(self.baselines.get(subscription, {}).items()):
                if key in listed:
                    continue
                context = dataclasses.replace(self.context, vm=last.vm, subscription=subscription)
                reason = (
                    "The sweep no longer lists this machine in its subscription: it was "
                    "deleted, or moved to another subscription."
                )
                record = context.record(GONE, reason, RecordOutcome.NONE, os=last.os)
                records.append(_stable(record, self.run))
                self.moved.setdefault(subscription, {})[key] = None
        return records

    def save_baselines(self) -> None:
        """Each assessed subscription's baseline, when this batch changed it. A
        subscription not assessed completely keeps its baseline: its next complete
        sweep compares with what was last measured whole."""
        for subscription in self.result.assessed:
            moved = self.moved.get(subscription)
            if not moved:
                continue
            states = self.baselines.get(subscription, {}) | moved
            kept = [state for _, state in sorted(states.items()) if state is not None]
            self.services.audit.baselines.write(
                subscription, self.run.run_id, kept, replacing=self.chunks.get(subscription)
            )

    def _verify(self, assessment: Assessment) -> tuple[Assessment, bool]:
        """Add what Defender for Endpoint sees of a VM whose extension is Succeeded, and
        keep its state: since when Succeeded (the grace period) and its last value.
        True when an eligible running VM turned not-seen or unhealthy (a notification)."""
        vm = assessment.vm
        now, grace = self.run.started, self.services.settings.verify_grace_hours
        if self.index.problem:  # off, or the list could not be read: no state kept
            verified = verify(
                vm, None, checked=self.index.problem, since=None, now=now, grace_hours=grace
            )
            return dataclasses.replace(assessment, verified=verified), False
        subscription, key = vm.vm.subscription.lower(), vm.vm.id.lower()
        if subscription not in self.states:
            self.states[subscription] = self.services.states.read(subscription)
        before = self.states[subscription].get(key)
        changes = self.changes.setdefault(subscription, {})
        if vm.protection in {Protection.ABSENT, Protection.FAILED}:
            if before is not None:  # removed or failed: a new install starts afresh
                changes[key] = None
            return assessment, False
        if vm.protection is not Protection.SUCCEEDED:  # an update under way: state kept
            return assessment, False
        since = before.since if before else now
        device = self.index.find(assessment.facts)
        verified = verify(vm, device, checked="", since=since, now=now, grace_hours=grace)
        assert verified is not None  # the extension is Succeeded
        if verified.value is Verification.UNCHECKED:  # stopped or excluded: state kept
            return dataclasses.replace(assessment, verified=verified), False
        changed = before is None or (before.verified.value, before.verified.hint) != (
            verified.value,
            verified.hint,
        )
        if changed:
            changes[key] = defender.State(since, verified, checked=now)
        turned = before is None or before.verified.value is not verified.value
        bad = verified.value in {Verification.NOT_SEEN, Verification.UNHEALTHY}
        return dataclasses.replace(assessment, verified=verified), turned and bad

    def save_states(self, complete: bool) -> None:
        """Write the states that changed (transactions of 100) and, after a complete
        inventory, drop those of VMs that are gone; then notify the VMs that turned
        not-seen or unhealthy."""
        if self.index.problem:
            return  # verification off, or the list unread: no state was kept or changed
        for subscription in sorted(set(self.states) | (set(self.seen) if complete else set())):
            changes = self.changes.setdefault(subscription, {})
            if complete:
                if subscription not in self.states:
                    self.states[subscription] = self.services.states.read(subscription)
                for gone in set(self.states[subscription]) - self.seen.get(subscription, set()):
                    changes[gone] = None
            if changes:
                self.services.states.write(subscription, changes)
        if self.services.notifier is not None:
            for record in self.turned:
                self.services.notifier.not_verified(record)

    def _take(self, actions: int) -> bool:
        """Spend from the batch's share of the cap, taking more in blocks (one table
        round trip per block, not per VM)."""
        if self.budget < actions and not self.spent:
            block = max(actions - self.budget, CAP_BLOCK, self.cap // CAP_SHARES)
            at_least = actions - self.budget
            taken = self.store.reserve(self.run.run_id, block, at_least, self.cap)
            self.budget += taken
            # Not even one action left: the cap is spent, and asking again for every
            # capped machine would cost a table read each.
            self.spent = taken == 0 and at_least == 1
        if self.budget < actions:
            return False
        self.budget -= actions
        return True

    def _act(self, context: Context, assessment: Assessment) -> AuditRecord:
        """The cap is the sweep's own: the actions this VM would take (a subscription
        write counts once per batch) come out of the run's cap first, in report mode too,
        so a report run shows what an enforce run would do."""
        decision = assessment.decision
        if decision.outcome is Outcome.INSTALL:
            wanted = len(decision.actions) - len(decision.subscription_actions)
            wanted += len(self.actions.new(assessment.facts.vm.subscription, decision))
            if not self._take(wanted):
                self.result.capped += 1
                reason = (
                    f"{decision.reason} Not acted on: the sweep reached its cap of {self.cap} "
                    "actions (REMEDIATION_MAX_ACTIONS_PER_SWEEP)."
                )
                hint = "raise REMEDIATION_MAX_ACTIONS_PER_SWEEP or run another sweep"
                return context.record(
                    Outcome.BLOCKED.value, reason, RecordOutcome.NONE, assessment, hint=hint
                )
            self.result.actions += wanted
            if not context.enforce:  # what enforce would write, written once per batch
                self.actions.note(assessment.facts.vm.subscription, decision)
        record = act(context, assessment, holder=self.run.run_id, batch=self.actions)
        if record.outcome == RecordOutcome.FAILED:
            self.result.errors += 1
        return record


def _stable(record: AuditRecord, run: Run) -> AuditRecord:
    """Sweep rows get the run's time and an id from (run, VM), or (run, subscription) for
    a scope change: a retried batch rewrites its rows rather than adding a second record."""
    about = record.vm or f"{record.decision}:{record.subscription}"
    record_id = sweep_record_id(run.run_id, about)
    return dataclasses.replace(record, time=run.started, record_id=record_id)


def _count(result: BatchResult, record: AuditRecord) -> None:
    result.vms += 1
    result.decisions[record.decision] += 1
    result.platforms[record.platform or "unknown"] += 1
    result.kinds[record.kind or "vm"] += 1
    if record.verification:
        result.verification[record.verification] += 1
    result.findings.update(record.findings)
    result.eligible_running += record.eligible_running
    result.covered += covered(record.decision, record.eligible_running)
    if record.vm:
        metrics.count(result.figures, record)


# --- Entry points: the timer, the HTTP API, the sweep queue ---------------------------
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def start_nightly(services: Services) -> Run:
    request = SweepRequest((), services.settings.mode, "sweep")  # the whole scope
    return start(services, request, services.sweeps.send_text)


def http_start(services: Services, body: bytes, status_base: str) -> tuple[int, dict[str, Any]]:
    """POST /api/sweep: 202 with the run, 400 with every problem, 409 with the running run."""
    try:
        request = parse_request(body, services.settings, trigger="http")
    except InvalidSweepRequest as error:
        return 400, {"errors": error.problems}
    try:
        run = start(services, request, services.sweeps.send_text)
    except SweepRunning as error:
        return 409, {"errors": [str(error)], "run_id": error.run_id}
    except InvalidSweepRequest as error:  # subscriptions out of scope: nothing started
        return 400, {"errors": error.problems}
    except TransientError as error:  # resolving the scope: Azure did not answer
        return 503, {"errors": [f"the scope could not be resolved: {error}"]}
    except PermanentError as error:  # e.g. a management group Azure does not know
        return 502, {"errors": [f"the scope could not be resolved: {error}"], "hint": error.hint}
    return 202, {
        "run_id": run.run_id,
        "status_url": f"{status_base.rstrip('/')}/{run.run_id}",
        "mode": run.mode,
        "subscriptions": run.subscriptions,
        "batches": run.batches,
    }


def http_status(services: Services, run_id: str) -> tuple[int, dict[str, Any]]:
    """GET /api/sweep/{runId}: progress, and the summary once the run is done."""
    if not RUN_ID.match(run_id):
        return 400, {"errors": ["not a sweep run id"]}
    store = services.runs
    run = store.get(run_id)
    if run is None:
        return 404, {"errors": [f"no sweep run {run_id}"]}
    value = run.to_json()
    value["batches_done"] = store.batches_done(run_id)
    return 200, value


def handle_batch(services: Services, text: bytes | str) -> Run | None:
    try:
        message = BatchMessage.parse(text)
    except ValueError as error:
        record_dropped(services, "sweep", "sweep batch", error)
        return None
    return run_batch(services, message)


def handle_batch_poison(services: Services, text: bytes | str) -> Run | None:
    try:
        message = BatchMessage.parse(text)
    except ValueError as error:
        record_dropped(services, "sweep", "sweep batch (poison queue)", error)
        return None
    return fail_batch(services, message, "the batch failed on every try (see the function's logs)")
