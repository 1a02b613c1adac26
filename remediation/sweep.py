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
import hashlib
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from remediation import defender
from remediation.act import BatchActions, act
from remediation.audit import AuditRecord, Query
from remediation.classify import Protection
from remediation.config import GUID, Mode, Settings
from remediation.doctor import events_check
from remediation.model import (
    InvalidJson,
    Outcome,
    PermanentError,
    RecordOutcome,
    TransientError,
    Verification,
    VmFacts,
    coverage_percent,
    load_json,
)
from remediation.policy import verify
from remediation.scope import Resolution, refresh
from remediation.service import Assessment, Context, Services, assess, record_dropped
from remediation.tables import LOCK_PARTITION, RUN_PARTITION, replace_if_unchanged

SCHEMA = "sweep-batch/1"
# A run that beat no heartbeat for this long is taken for dead. Longer than the queue's
# visibility timeout (a batch on a worker that died becomes visible again after it)
# and than the gap between two beats of a working batch (HEARTBEAT_EVERY).
STALE_AFTER = timedelta(minutes=30)
WRITE_EVERY = 1000  # a batch writes its records this many at a time (a page of inventory)
HEARTBEAT_EVERY = timedelta(minutes=1)
MAX_BODY = 64 * 1024
CAP_BLOCK = 50  # actions a batch takes from the run's cap at a time

log = logging.getLogger("remediation")


class InvalidSweepRequest(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SweepRunning(RuntimeError):
    def __init__(self, run_id: str, subscription: str) -> None:
        super().__init__(f"a sweep ({run_id}) is already running for subscription {subscription}")
        self.run_id = run_id
        self.subscription = subscription


@dataclass(frozen=True)
class SweepRequest:
    subscriptions: tuple[str, ...]  # () = the whole scope, as resolved when the run starts
    mode: Mode
    trigger: str  # sweep (timer), http, cli


def parse_request(body: bytes, settings: Settings, trigger: str = "http") -> SweepRequest:
    """Validate a forced sweep's body strictly; every problem is listed. The body can
    narrow the scope and make the run more conservative, never widen or escalate (the
    subscriptions asked for are checked against the scope when the run starts)."""
    problems: list[str] = []
    value: Any = {}
    if body.strip():
        try:
            value = load_json(body, max_bytes=MAX_BODY)
        except InvalidJson as error:
            raise InvalidSweepRequest([f"the body is {error}"]) from None
    if not isinstance(value, dict):
        raise InvalidSweepRequest(["the body must be a JSON object"])
    unknown = sorted(set(value) - {"subscriptions", "mode"})
    if unknown:
        problems.append(f"unknown fields: {', '.join(repr(k)[:60] for k in unknown[:10])}")
    subscriptions: list[str] = []  # the whole scope
    if "subscriptions" in value:
        given = value["subscriptions"]
        if not isinstance(given, list) or not given:
            problems.append("subscriptions must be a non-empty list of subscription ids")
        else:
            chosen = []
            for item in given[:1000]:
                if not isinstance(item, str) or not GUID.match(item):
                    problems.append(f"not a subscription id: {json.dumps(item)[:60]}")
                else:
                    chosen.append(item.lower())
            if len(given) > 1000:
                problems.append("at most 1000 subscriptions")
            subscriptions = sorted(set(chosen))
    mode = settings.mode
    if "mode" in value:
        if value["mode"] not in {"report", "enforce"}:
            problems.append("mode must be 'report' or 'enforce'")
        elif value["mode"] == "enforce" and not settings.enforce:
            problems.append("mode 'enforce' is refused: REMEDIATION_MODE is report")
        else:
            mode = Mode(value["mode"])
    if problems:
        raise InvalidSweepRequest(problems)
    return SweepRequest(tuple(subscriptions), mode, trigger)


# --- Runs, batches, locks: entities in the audit table --------------------------------
@dataclass
class Run:
    run_id: str
    mode: str
    trigger: str
    subscriptions: list[str]
    batches: int
    started: datetime
    status: str = "running"  # running, done, failed (abandoned: interrupted or silent)
    finished: datetime | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    heartbeat: datetime | None = None
    # Uniform scale sets in its subscriptions and their instances, counted when it started.
    uniform: tuple[int, int] = (0, 0)

    def stale(self, now: datetime) -> bool:
        """Running, and silent for longer than any working batch stays silent."""
        last = self.heartbeat or self.started
        return self.status == "running" and now - last > STALE_AFTER

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["started"] = self.started.isoformat()
        value["finished"] = self.finished.isoformat() if self.finished else None
        value["heartbeat"] = self.heartbeat.isoformat() if self.heartbeat else None
        return value


@dataclass
class BatchResult:
    vms: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    platforms: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)  # vm, arc
    eligible_running: int = 0
    covered: int = 0
    actions: int = 0  # actions taken (enforce) or planned (report)
    capped: int = 0  # VMs blocked by the cap
    errors: int = 0
    unavailable: int = 0  # VMs Azure did not answer for (an outage, not an error)
    verification: Counter[str] = field(default_factory=Counter)  # Succeeded VMs only
    findings: Counter[str] = field(default_factory=Counter)
    arm_requests: int = 0
    graph_requests: int = 0
    failed: str = ""  # why the batch gave up, for a poisoned batch


class RunStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def new_run(
        self,
        request: SweepRequest,
        batches: int,
        now: datetime | None = None,
        uniform: tuple[int, int] = (0, 0),
    ) -> Run:
        started = now or datetime.now(UTC)
        run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
        run = Run(
            run_id,
            request.mode.value,
            request.trigger,
            list(request.subscriptions),
            batches,
            started,
            uniform=uniform,
        )
        self._lock(run)
        try:
            self._record_run(run)
        except BaseException:
            for subscription in run.subscriptions:
                self._release_lock(subscription, run.run_id)
            raise
        return run

    def _record_run(self, run: Run) -> None:
        self._table.create_entity(
            {
                "PartitionKey": RUN_PARTITION,
                "RowKey": run.run_id,
                "mode": run.mode,
                "trigger": run.trigger,
                "subscriptions": ",".join(run.subscriptions),
                "batches": run.batches,
                "started": run.started,
                "heartbeat": run.started,
                "status": "running",
                "actions_used": 0,
                "summary": "{}",
                "uniform_scale_sets": run.uniform[0],
                "uniform_instances": run.uniform[1],
            }
        )

    def _lock(self, run: Run) -> None:
        taken: list[str] = []
        try:
            for subscription in run.subscriptions:
                self._take_lock(subscription, run)
                taken.append(subscription)
        except BaseException:  # refused, or storage failed, or Ctrl-C: leave no lock behind
            for subscription in taken:
                self._release_lock(subscription, run.run_id)
            raise

    def _take_lock(self, subscription: str, run: Run) -> None:
        entity = {
            "PartitionKey": LOCK_PARTITION,
            "RowKey": subscription,
            "run_id": run.run_id,
            "taken": run.started,
        }
        with contextlib.suppress(ResourceExistsError):
            self._table.create_entity(entity)
            return
        with contextlib.suppress(ResourceNotFoundError):
            current = self._table.get_entity(LOCK_PARTITION, subscription)
            holder = self.get(str(current["run_id"]))
            taken = current.get("taken") or run.started - STALE_AFTER - STALE_AFTER
            if holder is None and run.started - taken <= STALE_AFTER:
                # its run is being recorded (runs lock first, then write their row)
                raise SweepRunning(str(current["run_id"]), subscription)
            if holder is not None and holder.stale(run.started):
                last = f"{holder.heartbeat or holder.started:%Y-%m-%d %H:%M:%S} UTC"
                why = f"no sign of life since {last}; {run.run_id} took over"
                self.abandon(holder.run_id, why)  # which frees this lock too
            elif holder is not None and holder.status == "running":
                raise SweepRunning(holder.run_id, subscription)
            elif replace_if_unchanged(self._table, entity, current.metadata["etag"]):
                return  # a finished run's lock, left behind
        try:  # the lock was freed meanwhile: take it, unless another run was quicker
            self._table.create_entity(entity)
        except ResourceExistsError:
            current = self._table.get_entity(LOCK_PARTITION, subscription)
            raise SweepRunning(str(current["run_id"]), subscription) from None

    def _release_lock(self, subscription: str, run_id: str) -> None:
        # gone, or replaced meanwhile by a run that took over: not ours to delete
        with contextlib.suppress(ResourceNotFoundError, ResourceModifiedError):
            current = self._table.get_entity(LOCK_PARTITION, subscription)
            if current["run_id"] == run_id:
                self._table.delete_entity(
                    LOCK_PARTITION,
                    subscription,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )

    def get(self, run_id: str) -> Run | None:
        try:
            entity = self._table.get_entity(RUN_PARTITION, run_id)
        except ResourceNotFoundError:
            return None
        return Run(
            run_id=run_id,
            mode=entity["mode"],
            trigger=entity["trigger"],
            subscriptions=[s for s in entity["subscriptions"].split(",") if s],
            batches=int(entity["batches"]),
            started=entity["started"],
            status=entity["status"],
            finished=entity.get("finished"),
            summary=json.loads(entity.get("summary") or "{}"),
            heartbeat=entity.get("heartbeat"),
            uniform=(
                int(entity.get("uniform_scale_sets") or 0),
                int(entity.get("uniform_instances") or 0),
            ),
        )

    def beat(self, run_id: str, now: datetime | None = None) -> bool:
        """A sign of life from a batch at work. False, and no beat, when the run was
        closed meanwhile (abandoned, or taken over): the batch should stop."""
        while True:  # other batches beat too: on a lost race, read again
            try:
                entity = self._table.get_entity(RUN_PARTITION, run_id)
            except ResourceNotFoundError:
                return False
            if entity["status"] != "running":
                return False
            entity["heartbeat"] = now or _utcnow()
            # ETag-conditional: a beat never reopens a run closed since it was read.
            if replace_if_unchanged(self._table, entity, entity.metadata["etag"], UpdateMode.MERGE):
                return True

    def abandon(self, run_id: str, why: str) -> Run | None:
        """Close a running run as failed and free its subscriptions. Returns the run as
        closed, or None when it is unknown or already finished (nothing to do)."""
        while True:
            try:
                entity = self._table.get_entity(RUN_PARTITION, run_id)
            except ResourceNotFoundError:
                return None
            if entity["status"] != "running":
                return None
            finished = _utcnow()
            summary = {"abandoned": why[:500]}
            entity.update(status="failed", finished=finished, summary=json.dumps(summary))
            if replace_if_unchanged(self._table, entity, entity.metadata["etag"]):
                break
        for subscription in filter(None, entity["subscriptions"].split(",")):
            self._release_lock(subscription, run_id)
        with contextlib.suppress(Exception):  # its copy of the device list, if any
            defender.forget(self._table, run_id)
        log.warning("sweep %s closed as failed: %s", run_id, why)
        return self.get(run_id)

    def runs_since(self, moment: datetime) -> list[Run]:
        """Runs started since ``moment``, newest first (a few a day: one small partition)."""
        runs = [
            run
            for entity in self._table.query_entities(
                "PartitionKey eq @pk and RowKey ge @since",
                parameters={"pk": RUN_PARTITION, "since": moment.strftime("%Y%m%dT%H%M%SZ")},
            )
            if (run := self.get(entity["RowKey"])) is not None
        ]
        return sorted(runs, key=lambda run: run.run_id, reverse=True)

    def batches_done(self, run_id: str) -> int:
        partition = f"batch-{run_id}"
        return sum(
            1
            for _ in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"]
            )
        )

    def reserve(self, run_id: str, wanted: int, at_least: int, cap: int) -> int:
        """Take up to ``wanted`` (and at least ``at_least``, else nothing) actions from
        the run's cap. ETag concurrency: batches on several instances share one budget."""
        return self._add_used(
            run_id, lambda used: min(wanted, cap - used) if cap - used >= at_least else 0
        )

    def give_back(self, run_id: str, unused: int) -> None:
        if unused:
            self._add_used(run_id, lambda used: -min(unused, used))

    def _add_used(self, run_id: str, change: Callable[[int], int]) -> int:
        while True:
            entity = self._table.get_entity(RUN_PARTITION, run_id)
            used = int(entity.get("actions_used") or 0)
            delta = change(used)
            if delta == 0:
                return 0
            entity["actions_used"] = used + delta
            if replace_if_unchanged(self._table, entity, entity.metadata["etag"], UpdateMode.MERGE):
                return delta
            # another batch changed it first: read again

    def finish_batch(self, run: Run, batch: int, result: BatchResult) -> Run | None:
        """Store a batch's result (idempotent); the batch that completes the run writes
        its summary and frees its subscriptions. Returns the finished run, if this did."""
        partition = f"batch-{run.run_id}"
        self._table.upsert_entity(
            {"PartitionKey": partition, "RowKey": f"{batch:05d}", "result": _result_json(result)},
            mode=UpdateMode.REPLACE,
        )
        results = [
            _result_from_json(entity["result"])
            for entity in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": partition}
            )
        ]
        if len(results) < run.batches:
            return None
        while True:  # a heartbeat may change the row between the read and the write
            entity = self._table.get_entity(RUN_PARTITION, run.run_id)
            if entity["status"] != "running":
                return None  # another batch finished it, or it was closed as failed
            finished = datetime.now(UTC)
            summary = summarize(results, run.started, finished, run.uniform)
            entity.update(status="done", finished=finished, summary=json.dumps(summary))
            if replace_if_unchanged(self._table, entity, entity.metadata["etag"]):
                break
        for subscription in run.subscriptions:
            self._release_lock(subscription, run.run_id)
        run.status, run.finished, run.summary = "done", finished, summary
        return run


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _result_json(result: BatchResult) -> str:
    # Not asdict(): it rebuilds a Counter from (key, value) pairs and counts the pairs.
    return json.dumps({item.name: getattr(result, item.name) for item in fields(result)})


def _result_from_json(text: str) -> BatchResult:
    value = json.loads(text)
    for name in ("decisions", "platforms", "kinds", "verification", "findings"):
        value[name] = Counter(value.get(name) or {})
    return BatchResult(**value)


def summarize(
    results: Sequence[BatchResult],
    started: datetime,
    finished: datetime,
    uniform: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    decisions: Counter[str] = Counter()
    platforms: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    verification: Counter[str] = Counter()
    findings: Counter[str] = Counter()
    for result in results:
        decisions.update(result.decisions)
        platforms.update(result.platforms)
        kinds.update(result.kinds)
        verification.update(result.verification)
        findings.update(result.findings)
    eligible = sum(r.eligible_running for r in results)
    covered = sum(r.covered for r in results)
    return {
        "vms": sum(r.vms for r in results),
        "decisions": dict(sorted(decisions.items())),
        "platforms": dict(sorted(platforms.items())),
        "kinds": dict(sorted(kinds.items())),
        "eligible_running": eligible,
        "covered": covered,
        "coverage_percent": coverage_percent(covered, eligible),
        "actions": sum(r.actions for r in results),
        "capped": sum(r.capped for r in results),
        "errors": sum(r.errors for r in results),
        "unavailable": sum(r.unavailable for r in results),
        "verification": dict(sorted(verification.items())),
        "findings": dict(sorted(findings.items())),
        "failed_batches": [r.failed for r in results if r.failed],
        "arm_requests": sum(r.arm_requests for r in results),
        "graph_requests": sum(r.graph_requests for r in results),
        "duration_seconds": round((finished - started).total_seconds(), 3),
        # Not this app's to change: instances of uniform scale sets (the report's hint).
        "uniform_scale_sets": uniform[0],
        "uniform_instances": uniform[1],
    }


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
    run = RunStore(services.audit.table).new_run(request, len(batches), uniform=uniform)
    changes = resolution.records(run.run_id, services.settings)
    if changes:
        services.audit.write_many([_stable(record, run) for record in changes])
        for record in changes:
            log.info("scope: %s", record.log_line())
    if resolution.fresh:
        services.scopes.save(resolution.scope, resolution.stored)
    services.remember_scope(resolution.scope)
    if services.settings.mde_api:
        read_devices(services, run.run_id)
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


def read_devices(services: Services, run_id: str) -> None:
    """Defender for Endpoint's device list, read once per run and kept with it for its
    batches. Reading it is best effort: if it fails, the run's VMs are "unchecked", and
    their records say why."""
    table = services.audit.table
    try:
        count = defender.snapshot(table, run_id, services.arm.defender_devices())
        log.info("sweep %s: %s Azure VM devices read from Defender for Endpoint", run_id, count)
    except Exception as error:
        hint = getattr(error, "hint", "")
        why = f"Defender for Endpoint's device list could not be read: {error}"
        log.warning("sweep %s: %s", run_id, why)
        with contextlib.suppress(Exception):
            defender.snapshot_failed(table, run_id, why + (f" Check: {hint}" if hint else ""))


def run_batch(
    services: Services,
    message: BatchMessage,
    on_record: Callable[[AuditRecord], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Run | None:
    """Sweep one batch of subscriptions. Returns the run when this batch finished it."""
    store = RunStore(services.audit.table)
    run = store.get(message.run_id)
    if run is None:
        raise ValueError(f"unknown sweep run {message.run_id}")
    if run.status != "running":  # closed as failed meanwhile: its subscriptions moved on
        log.warning("sweep %s is %s: batch %s skipped", run.run_id, run.status, message.batch)
        return None
    index = defender.load(services.audit.table, run.run_id, message.subscriptions)
    batch = _Batch(services, run, store, index)
    if not store.beat(run.run_id):
        return None
    last_beat = time.monotonic()
    with services.arm.counter.counting() as used:
        for subscription in message.subscriptions:  # drift: read the posture afresh
            services.arm.forget_posture(subscription)
        complete = False
        try:
            for facts in services.arm.inventory(message.subscriptions, on_total=on_total):
                record = batch.handle(facts)
                if on_record is not None:
                    on_record(record)
                if len(batch.records) >= WRITE_EVERY:  # memory stays flat however big
                    services.audit.write_many(batch.records)
                    batch.records.clear()
                if time.monotonic() - last_beat > HEARTBEAT_EVERY.total_seconds():
                    if not store.beat(run.run_id):
                        log.warning(
                            "sweep %s was closed: batch %s stops", run.run_id, message.batch
                        )
                        break
                    last_beat = time.monotonic()
            else:
                complete = True
        finally:
            store.give_back(run.run_id, batch.budget)  # what this batch took but did not use
    services.audit.write_many(batch.records)
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
        _publish_metrics(services, run)
    except Exception as error:  # telemetry is best effort: the run is done and recorded
        log.warning("metrics: run=%s not published: %s", run.run_id, error)
    return run


def _publish_metrics(services: Services, run: Run) -> None:
    """Per-subscription figures to Azure Monitor, where Application Insights is set up
    (only then are the run's rows read back)."""
    from remediation import metrics  # noqa: PLC0415 - cold start: OpenTelemetry is heavy

    if not metrics.enabled():
        return
    records: list[AuditRecord] = []
    token = ""
    while True:  # a sweep's rows all carry the run's start time: one narrow window
        query = Query(run.started, run.started, run_id=run.run_id, limit=1000, continuation=token)
        page, token = services.audit.search(query)
        records += page
        if not token:
            break
    duration = float(run.summary.get("duration_seconds", 0))
    figures = metrics.figures_from_records(records)
    metrics.publish(figures, run_id=run.run_id, mode=run.mode, duration_seconds=duration)


def fail_batch(services: Services, message: BatchMessage, why: str) -> Run | None:
    """A batch that failed every try still counts, so the run finishes and says so."""
    store = RunStore(services.audit.table)
    run = store.get(message.run_id)
    if run is None:
        return None
    where = ", ".join(message.subscriptions)
    result = BatchResult(errors=1, failed=f"batch {message.batch} ({where}): {why}")
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
        self.records: list[AuditRecord] = []
        self.result = BatchResult()
        self.budget = 0  # actions taken from the run's cap, not yet used
        trigger = "sweep" if run.trigger == "sweep" else run.trigger
        self.context = Context(services, trigger, run_id=run.run_id, mode=Mode(run.mode))

    def handle(self, facts: VmFacts) -> AuditRecord:
        context = self.context.for_vm(facts.vm)
        # Listed by the inventory, whatever happens next: its state is kept.
        self.seen.setdefault(facts.vm.subscription.lower(), set()).add(facts.vm.id.lower())
        assessment: Assessment | None = None
        turned = False
        try:
            assessment, turned = self._verify(assess(self.services, facts, last_known=False))
            record = self._act(context, assessment)
        except TransientError as error:
            self.result.unavailable += 1
            record = context.unavailable(error, "the next sweep checks this VM again.", assessment)
        except PermanentError as error:
            self.result.errors += 1
            reason = f"The sweep could not handle this VM: {error}"
            record = context.record(
                Outcome.ERROR.value, reason, RecordOutcome.FAILED, hint=error.hint
            )
        record = _stable(record, self.run)
        _count(self.result, assessment, record)
        self.records.append(record)
        if turned and record.eligible_running:
            self.turned.append(record)
        return record

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
        if self.budget < actions:
            block = max(actions - self.budget, CAP_BLOCK)
            self.budget += self.store.reserve(
                self.run.run_id, block, actions - self.budget, self.cap
            )
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
    about = record.vm.lower() or f"scope:{record.subscription}"
    digest = hashlib.sha256(f"{run.run_id}|{about}".encode()).hexdigest()[:32]
    return dataclasses.replace(record, time=run.started, record_id=digest)


def _count(result: BatchResult, assessment: Assessment | None, record: AuditRecord) -> None:
    result.vms += 1
    result.decisions[record.decision] += 1
    result.platforms[record.platform or "unknown"] += 1
    result.kinds[record.kind or "vm"] += 1
    if record.verification:
        result.verification[record.verification] += 1
    result.findings.update(record.findings)
    if assessment is None:
        return
    if assessment.vm.eligible_running:
        result.eligible_running += 1
        if assessment.decision.outcome is Outcome.COMPLIANT:
            result.covered += 1


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
    store = RunStore(services.audit.table)
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
