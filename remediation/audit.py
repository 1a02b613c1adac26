"""The remediation log: one record per decision, skips included, in Azure Table Storage.

Each record is stored twice, under two partition keys, so both questions ops ask are
one partition query, never a table scan:
- ``v-<hash of the VM id>``: "what happened to VM X", newest first;
- ``d-<yyyymmdd>``: "what happened in the last 24 hours", a partition a day.
Row keys are inverted timestamps, so a partition reads newest first.
Every record also becomes one operator-readable log line (``vm=... decision=...``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

log = logging.getLogger("remediation")

MAX_TICKS = 10**19  # inverted timestamps stay 19 digits until the year 2286
TRIGGERS = frozenset({"event", "queue", "sweep", "http", "cli"})


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One decision about one VM (or one ignored delivery), as ops read it."""

    vm: str
    subscription: str
    trigger: str  # event, queue, sweep, http, cli
    decision: str  # the policy's vocabulary, or "ignored" for deliveries not about a VM
    reason: str
    mode: str  # report or enforce
    outcome: str  # what happened: reported, queued, applied, succeeded, failed, ...
    applied: bool = False
    os: str = ""
    platform: str = ""
    actions: tuple[str, ...] = ()
    hint: str = ""
    event_id: str = ""
    correlation_id: str = ""
    run_id: str = ""
    install_state: str = ""
    install_code: int | None = None
    duration_ms: int = 0
    time: datetime = field(default_factory=_now)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["actions"] = list(self.actions)
        value["time"] = self.time.isoformat()
        return value

    def log_line(self) -> str:
        parts = [
            f"vm={self.vm}",
            f"sub={self.subscription}",
            f"trigger={self.trigger}",
            f"decision={self.decision}",
            f"outcome={self.outcome}",
            f"mode={self.mode}",
        ]
        if self.platform:
            parts.append(f"platform={self.platform}")
        if self.actions:
            parts.append(f"actions={','.join(self.actions)}")
        if self.install_code is not None:
            parts.append(f"code={self.install_code}")
        parts.append(f"reason={self.reason!r}")
        if self.hint:
            parts.append(f"hint={self.hint!r}")
        return " ".join(parts)


def replace_if_unchanged(
    table: TableClient,
    entity: dict[str, Any],
    etag: str | None,
    mode: UpdateMode = UpdateMode.REPLACE,
) -> bool:
    """Optimistic concurrency: write only if nobody changed the entity since we read it
    (its ETag). False when another writer got there first, or deleted it."""
    try:
        table.update_entity(
            entity, mode=mode, etag=etag, match_condition=MatchConditions.IfNotModified
        )
        return True
    except (ResourceModifiedError, ResourceNotFoundError):
        return False


def vm_partition(vm: str) -> str:
    # Table keys cannot hold '/', so VM ids are hashed; ids are case-insensitive.
    return "v-" + hashlib.sha256(vm.lower().encode()).hexdigest()[:40]


def day_partition(moment: datetime) -> str:
    return "d-" + moment.astimezone(UTC).strftime("%Y%m%d")


def _row_key(record: AuditRecord) -> str:
    ticks = int(record.time.timestamp() * 1_000_000)
    return f"{MAX_TICKS - ticks:019d}-{record.record_id}"


def _entity(record: AuditRecord, partition: str) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": partition, "RowKey": _row_key(record)}
    for item in fields(record):
        value = getattr(record, item.name)
        if item.name == "actions":
            value = ",".join(value)
        elif item.name == "install_code":
            value = -1 if value is None else value
        entity[item.name] = value
    return entity


def _record(entity: dict[str, Any]) -> AuditRecord:
    values: dict[str, Any] = {item.name: entity.get(item.name) for item in fields(AuditRecord)}
    values["actions"] = tuple(a for a in (values["actions"] or "").split(",") if a)
    code = values["install_code"]
    values["install_code"] = None if code is None or code == -1 else int(code)
    moment = values["time"]
    values["time"] = moment if isinstance(moment, datetime) else _now()
    defaults: dict[str, Any] = {"applied": False, "duration_ms": 0, "install_code": None}
    for key, value in values.items():
        if value is None:
            values[key] = defaults.get(key, "")
    return AuditRecord(**values)


@dataclass(frozen=True, slots=True)
class Query:
    since: datetime
    until: datetime
    vm: str = ""
    subscription: str = ""
    decision: str = ""
    run_id: str = ""
    limit: int = 100
    continuation: str = ""


def _encode_token(partition: str, row_key: str) -> str:
    return base64.urlsafe_b64encode(f"{partition}|{row_key}".encode()).decode()


def _decode_token(token: str) -> tuple[str, str, str]:
    """(partition, '|', row key), or empty strings; a forged token resumes nowhere."""
    if not token:
        return "", "", ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the continuation token is not valid") from None
    partition, bar, row_key = text.partition("|")
    if (
        not bar
        or not re.fullmatch(r"[vd]-[0-9a-f]{8,40}", partition)
        or not re.fullmatch(r"\d{19}-[0-9a-f]{32}", row_key)
    ):
        raise ValueError("the continuation token is not valid")
    return partition, bar, row_key


class AuditLog:
    def __init__(
        self, table: TableClient, on_write: Callable[[AuditRecord], None] | None = None
    ) -> None:
        self._table = table
        self._on_write = on_write  # notifications

    @property
    def table(self) -> TableClient:
        """The table, shared with the claims and the sweep's runs (other partitions)."""
        return self._table

    def create(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def write(self, record: AuditRecord) -> AuditRecord:
        """Store the record under both keys (upserts: a retried write is harmless)."""
        for partition in (day_partition(record.time), vm_partition(record.vm)):
            self._table.upsert_entity(_entity(record, partition), mode=UpdateMode.REPLACE)
        level = logging.WARNING if record.decision in {"error", "blocked"} else logging.INFO
        log.log(level, record.log_line())
        if self._on_write is not None:
            self._on_write(record)
        return record

    def write_many(self, records: Sequence[AuditRecord]) -> None:
        """A sweep's records: day rows in transactions of 100, VM rows in parallel."""
        by_day: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            partition = day_partition(record.time)
            by_day[partition].append(_entity(record, partition))
        for entities in by_day.values():
            for start in range(0, len(entities), 100):
                self._table.submit_transaction(
                    [
                        ("upsert", entity, {"mode": UpdateMode.REPLACE})
                        for entity in entities[start : start + 100]
                    ]
                )
        with ThreadPoolExecutor(max_workers=32) as pool:  # one row per VM partition
            list(
                pool.map(
                    lambda record: self._table.upsert_entity(
                        _entity(record, vm_partition(record.vm)), mode=UpdateMode.REPLACE
                    ),
                    records,
                )
            )
        for record in records:
            level = logging.WARNING if record.decision in {"error", "blocked"} else logging.INFO
            log.log(level, record.log_line())

    def for_vm(self, vm: str, limit: int = 50) -> list[AuditRecord]:
        """Newest first."""
        entities = self._table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": vm_partition(vm)}, results_per_page=limit
        )
        records = []
        for entity in entities:
            records.append(_record(entity))
            if len(records) >= limit:
                break
        return records

    def since(self, moment: datetime, until: datetime | None = None) -> Iterator[AuditRecord]:
        """Every record from ``moment`` on, newest first, one partition query a day."""
        end = until or _now()
        day = end
        newest_key = f"{MAX_TICKS - int(end.timestamp() * 1_000_000):019d}"
        oldest_key = f"{MAX_TICKS - int(moment.timestamp() * 1_000_000):019d}~"
        while day_partition(day) >= day_partition(moment):
            yield from (
                _record(entity)
                for entity in self._table.query_entities(
                    "PartitionKey eq @pk and RowKey ge @newest and RowKey le @oldest",
                    parameters={
                        "pk": day_partition(day),
                        "newest": newest_key,
                        "oldest": oldest_key,
                    },
                )
            )
            day -= timedelta(days=1)

    def search(self, query: Query) -> tuple[list[AuditRecord], str]:
        """Records matching the query, newest first, at most ``query.limit``, and a
        continuation token for the next page ("" when there is none). A VM's records are
        one partition; otherwise one partition a day, from ``until`` back to ``since``."""
        if query.vm:
            partitions = [vm_partition(query.vm)]
        else:
            partitions, day = [], query.until
            while day_partition(day) >= day_partition(query.since):
                partitions.append(day_partition(day))
                day -= timedelta(days=1)
        resume_partition, _, resume_key = _decode_token(query.continuation)
        if resume_partition:
            partitions = (
                partitions[partitions.index(resume_partition) :]
                if resume_partition in partitions
                else []
            )
        conditions = ["PartitionKey eq @pk", "RowKey ge @newest", "RowKey le @oldest"]
        parameters: dict[str, Any] = {
            "newest": f"{MAX_TICKS - int(query.until.timestamp() * 1_000_000):019d}",
            "oldest": f"{MAX_TICKS - int(query.since.timestamp() * 1_000_000):019d}~",
        }
        for name in ("decision", "subscription", "run_id"):
            if getattr(query, name):
                conditions.append(f"{name} eq @{name}")
                parameters[name] = getattr(query, name)
        records: list[AuditRecord] = []
        last_key = ""
        for partition in partitions:
            after = resume_key if partition == resume_partition else ""
            filter_ = " and ".join([*conditions, "RowKey gt @after"] if after else conditions)
            entities = self._table.query_entities(
                filter_,
                parameters=parameters | {"pk": partition, "after": after},
                results_per_page=query.limit,
            )
            for entity in entities:
                if len(records) == query.limit:
                    return records, _encode_token(partition, last_key)
                records.append(_record(entity))
                last_key = entity["RowKey"]
        return records, ""

    def purge(self, before: datetime) -> int:
        """Delete the records older than ``before`` (both rows of each): retention."""
        old = self._table.query_entities(
            "PartitionKey ge @first and PartitionKey lt @cutoff",
            parameters={"first": "d-", "cutoff": day_partition(before)},
            select=["PartitionKey", "RowKey", "vm"],
        )
        deleted = 0
        by_partition: dict[str, list[str]] = defaultdict(list)
        for entity in old:
            by_partition[entity["PartitionKey"]].append(entity["RowKey"])
            by_partition[vm_partition(entity.get("vm") or "")].append(entity["RowKey"])
            deleted += 1
        for partition, keys in by_partition.items():
            for start in range(0, len(keys), 100):
                operations = [
                    ("delete", {"PartitionKey": partition, "RowKey": key})
                    for key in keys[start : start + 100]
                ]
                with contextlib.suppress(TableTransactionError):  # a row already gone
                    self._table.submit_transaction(operations)
        return deleted

    def reinstalls_since_success(self, vm: str) -> int:
        """How many MDE installs on this VM failed since the last one that succeeded."""
        failures = 0
        for record in self.for_vm(vm, limit=50):
            if record.install_state == "Succeeded":
                break
            if record.install_state == "Failed":
                failures += 1
        return failures
