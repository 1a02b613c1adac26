"""Sweep runs in the audit table: the run records, the locks on their subscriptions, the
heartbeats that tell a working run from a dead one, the shared cap, and the results of
their batches (the batch that completes a run writes its summary).

A run locks its subscriptions (a second run for one of them gets SweepRunning) for as
long as it shows signs of life: every batch beats the run's heartbeat, and a run silent
for STALE_AFTER (its worker died) is closed as failed by the next run that needs its
subscriptions, or by hand with ``sweep --abandon RUN_ID``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode

from remediation import defender
from remediation.config import GUID, Mode, Settings
from remediation.model import InvalidJson, coverage_percent, load_json
from remediation.tables import (
    LOCK_PARTITION,
    RUN_PARTITION,
    replace_if_unchanged,
    update_entity,
)

log = logging.getLogger("remediation")

# A run that beat no heartbeat for this long is taken for dead. Longer than the queue's
# visibility timeout (a batch on a worker that died becomes visible again after it)
# and than the gap between two beats of a working batch (HEARTBEAT_EVERY).
STALE_AFTER = timedelta(minutes=30)
MAX_BODY = 64 * 1024  # a forced sweep's body, and a batch message


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


# --- Runs, batches, locks: entities in the audit table --------------------------------
class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"  # every subscription assessed
    PARTIAL = "partial"  # some not: a batch failed, or a subscription could not be read
    FAILED = "failed"  # none assessed, or closed (abandoned: interrupted or silent)


class InvalidSweepRequest(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


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


@dataclass
class Run:
    run_id: str
    mode: str
    trigger: str
    subscriptions: list[str]
    batches: int
    started: datetime
    status: str = RunStatus.RUNNING  # what was not assessed keeps its last complete figures
    finished: datetime | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    heartbeat: datetime | None = None
    # Uniform scale sets in its subscriptions and their instances, counted when it started.
    uniform: tuple[int, int] = (0, 0)

    def stale(self, now: datetime) -> bool:
        """Running, and silent for longer than any working batch stays silent."""
        last = self.heartbeat or self.started
        return self.status == RunStatus.RUNNING and now - last > STALE_AFTER

    @property
    def assessed(self) -> frozenset[str]:
        """The subscriptions this run assessed completely: only their figures are its own.
        A run of the previous version says nothing: done then meant all of them."""
        listed = self.summary.get("assessed")
        if isinstance(listed, list):
            return frozenset(str(s).lower() for s in listed)
        done = self.status == RunStatus.DONE
        return frozenset(s.lower() for s in self.subscriptions) if done else frozenset()

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
    subscriptions: list[str] = field(default_factory=list)  # the batch's
    complete: bool = False  # every machine of its readable subscriptions was assessed
    unreadable: dict[str, str] = field(default_factory=dict)  # subscription -> why
    # Per subscription, every machine's figures (metrics.count): the metrics' source.
    # Kept in the batch's row only (the run's summary would outgrow its property).
    figures: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def assessed(self) -> list[str]:
        """The subscriptions this batch assessed completely."""
        return [s for s in self.subscriptions if self.complete and s not in self.unreadable]


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
                "status": RunStatus.RUNNING.value,
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
            elif holder is not None and holder.status == RunStatus.RUNNING:
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
        return _run(entity)

    def beat(self, run_id: str, now: datetime | None = None) -> bool:
        """A sign of life from a batch at work. False, and no beat, when the run was
        closed meanwhile (abandoned, or taken over): the batch should stop. ETag-checked:
        a beat never reopens a run closed since it was read."""

        def alive(entity: dict[str, Any]) -> bool:
            entity["heartbeat"] = now or _utcnow()
            return bool(entity["status"] == RunStatus.RUNNING)

        return update_entity(self._table, RUN_PARTITION, run_id, alive) is not None

    def abandon(self, run_id: str, why: str) -> Run | None:
        """Close a running run as failed and free its subscriptions. Returns the run as
        closed, or None when it is unknown or already finished (nothing to do)."""

        def close(entity: dict[str, Any]) -> bool:
            summary = {"abandoned": why[:500]}
            entity.update(
                status=RunStatus.FAILED.value, finished=_utcnow(), summary=json.dumps(summary)
            )
            return True

        entity = update_entity(self._table, RUN_PARTITION, run_id, _while_running(close))
        if entity is None:
            return None
        for subscription in filter(None, entity["subscriptions"].split(",")):
            self._release_lock(subscription, run_id)
        with contextlib.suppress(Exception):  # its copy of the device list, if any
            defender.forget(self._table, run_id)
        log.warning("sweep %s closed as failed: %s", run_id, why)
        return self.get(run_id)

    def runs_since(self, moment: datetime) -> list[Run]:
        """Runs started since ``moment``, newest first (a few a day: one small partition)."""
        runs = [
            _run(entity)
            for entity in self._table.query_entities(
                "PartitionKey eq @pk and RowKey ge @since",
                parameters={"pk": RUN_PARTITION, "since": moment.strftime("%Y%m%dT%H%M%SZ")},
            )
        ]
        return sorted(runs, key=lambda run: run.run_id, reverse=True)

    def batch_results(self, run_id: str) -> list[BatchResult]:
        """The results its batches stored (each holds its subscriptions' figures: kept
        there, not in the run's summary, whose one string property holds 32K characters)."""
        return [
            _result_from_json(entity["result"])
            for entity in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": f"batch-{run_id}"}
            )
        ]

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
        """Change the run's used actions by ``change(used)``, ETag-checked: batches on
        several instances share one cap. Returns the change made."""
        made = 0

        def add(entity: dict[str, Any]) -> bool:
            nonlocal made
            used = int(entity.get("actions_used") or 0)
            made = change(used)
            entity["actions_used"] = used + made
            return made != 0

        return made if update_entity(self._table, RUN_PARTITION, run_id, add) else 0

    def finish_batch(self, run: Run, batch: int, result: BatchResult) -> Run | None:
        """Store a batch's result (idempotent); the batch that completes the run writes
        its summary and frees its subscriptions. Returns the finished run, if this did."""
        partition = f"batch-{run.run_id}"
        self._table.upsert_entity(
            {"PartitionKey": partition, "RowKey": f"{batch:05d}", "result": _result_json(result)},
            mode=UpdateMode.REPLACE,
        )
        results = self.batch_results(run.run_id)
        if len(results) < run.batches:
            return None

        def close(entity: dict[str, Any]) -> bool:
            finished = datetime.now(UTC)
            summary = summarize(results, run.started, finished, run.uniform)
            status = closing_status(summary, run.subscriptions)
            entity.update(status=status, finished=finished, summary=json.dumps(summary))
            return True

        # Another batch may have finished it, or it was closed as failed: then not ours.
        entity = update_entity(self._table, RUN_PARTITION, run.run_id, _while_running(close))
        if entity is None:
            return None
        for subscription in run.subscriptions:
            self._release_lock(subscription, run.run_id)
        run.status, run.finished = entity["status"], entity["finished"]
        run.summary = json.loads(entity["summary"])
        return run


def _run(entity: dict[str, Any]) -> Run:
    return Run(
        run_id=entity["RowKey"],
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


def _while_running(change: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    """``change``, for a run still running only (a closed run is never reopened)."""
    return lambda entity: entity["status"] == RunStatus.RUNNING and change(entity)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _result_json(result: BatchResult) -> str:
    # Not asdict(): it rebuilds a Counter from (key, value) pairs and counts the pairs.
    return json.dumps({item.name: getattr(result, item.name) for item in fields(result)})


def _result_from_json(text: str) -> BatchResult:
    value = json.loads(text)
    for name in ("decisions", "platforms", "kinds", "verification", "findings"):
        value[name] = Counter(value.get(name) or {})
    known = {item.name for item in fields(BatchResult)}
    return BatchResult(**{name: item for name, item in value.items() if name in known})


def closing_status(summary: dict[str, Any], subscriptions: Sequence[str]) -> RunStatus:
    """done when every subscription was assessed, failed when none was, else partial."""
    assessed = set(summary.get("assessed") or ())
    if assessed >= set(subscriptions):
        return RunStatus.DONE
    return RunStatus.PARTIAL if assessed else RunStatus.FAILED


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
    unreadable: dict[str, str] = {}
    for result in results:
        unreadable.update(result.unreadable)
    return {
        "assessed": sorted({s for r in results for s in r.assessed}),
        "unreadable": dict(sorted(unreadable.items())),
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
