"""The remediation log, in Azure Table Storage: a record for every event, install and
change a sweep finds (``changed``), and each subscription's baseline, the machines' last
states (``Baselines``). A night that changed nothing is the run's: ``nights`` reads a
machine's record for it back from its last change (docs/operations.md, "What the log
promises").

Each record is stored twice, so both questions ops ask are one range query within one
partition, never a table scan:
- ``log``: "what happened since yesterday" (or in any window), newest first;
- ``vi-NN``, one of ``INDEX_BUCKETS`` partitions chosen by the hash of the VM id, with
  that hash leading the row key: "what happened to VM X", newest first, is one row-key
  range of one partition.
Row keys are inverted timestamps (after the VM's hash in ``vi-NN``), so a partition reads
newest first and a time window is one row-key range, paged by the service (1,000 rows or
five seconds a page). One log partition, not one a day: Table Storage may end a page at
every partition boundary ("Query Timeout and Pagination"), so a window over day
partitions could cost a request per day.

Why buckets and not a partition per VM: a sweep writes a row per VM, and Table Storage
takes transactions of up to 100 entities of one partition. With a partition per VM each
index row was a request of its own; with 32 buckets a batch of 1,000 VMs is about 32
transactions (BENCHMARKS.md measures it).

Older rows stay readable. The version before this one kept each VM's rows in
``v-<hash>`` (one partition per VM): VM queries read it after the bucket, and ``purge``
deletes there the VM rows of log rows without the ``index`` marker. The version before
that wrote the time rows under ``d-<yyyymmdd>``: still found through their VM partition
and deleted by ``purge``; time-window queries read the ``log`` partition only.
Every record also becomes one operator-readable log line (``vm="..." decision="..."``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import logging
import operator
import re
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceResponseError,
)
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from remediation.model import UNAVAILABLE, VmRef, classified, kind_of, visible
from remediation.tables import TRANSACTION, vm_key, vm_partition

log = logging.getLogger("remediation")

MAX_TICKS = 10**19  # inverted timestamps stay 19 digits until the year 2286
LOG_PARTITION = "log"  # every record, newest first (see above)
LEGACY_DAY_PREFIX = "d-"  # the previous version's day partitions, d-yyyymmdd
INDEX_PREFIX = "vi-"  # the VM index: vi-00 .. vi-31, the VM's hash leading the row key
INDEX_BUCKETS = 32  # a sweep batch's index rows fall in 32 partitions: ~32 transactions
INDEX_MARKER = "index"  # on rows written with the bucketed index (purge finds the VM row)
LOST_ANSWER_TRIES = 3  # a transaction whose answer was lost is sent this many times
MAX_PAGE = 1000  # Table Storage returns at most 1,000 entities a request
NAME_PAGES = 20  # pages a short-name lookup reads at most
LIST_FIELDS = ("actions", "findings")  # tuples, stored comma-joined
TRIGGERS = frozenset({"event", "queue", "sweep", "http", "cli"})
GONE = "gone"  # the decision of a machine a complete sweep of its subscription no longer lists
BASE_PREFIX = "base-"  # base-<subscription>: each machine's state as the last sweep saw it
BASE_HEAD = "head"  # which generation of a baseline is the current one, and its chunk count
BASE_CHUNK = 60_000  # bytes in one binary property (Table Storage: 64 KiB at most)
BASE_ROWS = 40  # chunk rows a transaction (40 x 80 KB in base64: under its 4 MiB)
FAILED_PREFIX = "failed-"  # failed-<vm hash> in base-<subscription>: installs Failed since success
QUIET = frozenset({"none", "reported"})  # outcomes that act on nothing


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
    eligible_running: bool = False  # counted in coverage (classify: Classification)
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
    # Verified protection (extension Succeeded only): verified, unhealthy, not-seen,
    # pending or unchecked, why, and what to check.
    verification: str = ""
    verification_reason: str = ""
    verification_hint: str = ""
    findings: tuple[str, ...] = ()  # informational: no-monitoring-agent
    test_alert: str = ""  # a test alert's result: verified, not-verified, failed
    subscription_name: str = ""  # its display name when the record was written
    time: datetime = field(default_factory=_now)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # A night on which the sweep wrote no row for the machine is read back as its state
    # then, the change it last recorded: that change's time (never stored).
    unchanged_since: datetime | None = None

    @property
    def kind(self) -> str:
        """ "vm" or "arc" for a machine's record; "" for an ignored delivery or a scope change."""
        return kind_of(self.vm)

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        value["kind"] = self.kind
        value["actions"] = list(self.actions)
        value["findings"] = list(self.findings)
        value["time"] = self.time.isoformat()
        since = self.unchanged_since
        value["unchanged_since"] = since.isoformat() if since else None
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> AuditRecord:
        """The record ``to_json`` wrote (a baseline's); keys it does not know are left."""
        values = {item.name: value[item.name] for item in fields(cls) if item.name in value}
        for name in LIST_FIELDS:
            values[name] = tuple(values.get(name) or ())
        values["time"] = datetime.fromisoformat(value["time"])
        since = values.get("unchanged_since")
        values["unchanged_since"] = datetime.fromisoformat(since) if since else None
        return cls(**values)

    def log_line(self) -> str:
        """logfmt, every value quoted: ``vm="..." sub="..." decision="..."``. A value
        cannot forge another key (a VM id with `` decision=compliant`` in it stays
        inside the vm value): ``"`` and ``\\`` are escaped, and line breaks too, so a
        record is one line."""
        parts = [
            ("vm", self.vm),
            ("sub", self.subscription),
            *([("sub_name", self.subscription_name)] if self.subscription_name else []),
            ("trigger", self.trigger),
            ("decision", self.decision),
            ("outcome", self.outcome),
            ("mode", self.mode),
        ]
        if self.platform:
            parts.append(("platform", self.platform))
        if self.actions:
            parts.append(("actions", ",".join(self.actions)))
        if self.install_code is not None:
            parts.append(("code", str(self.install_code)))
        if self.verification:
            parts.append(("verification", self.verification))
        if self.findings:
            parts.append(("findings", ",".join(self.findings)))
        if self.test_alert:
            parts.append(("test_alert", self.test_alert))
        parts.append(("reason", self.reason))
        if self.hint:
            parts.append(("hint", self.hint))
        return logfmt(parts)


# The columns of a stored row: every field but ``unchanged_since`` (read back, never stored).
STORED = tuple(item.name for item in fields(AuditRecord) if item.name != "unchanged_since")
# What a record says of the machine; the rest says when, how and by whom it was written.
BOOKKEEPING = frozenset(
    {
        "trigger",
        "event_id",
        "correlation_id",
        "run_id",
        "duration_ms",
        "subscription_name",
        "time",
        "record_id",
        "unchanged_since",
    }
)
STATE = tuple(item.name for item in fields(AuditRecord) if item.name not in BOOKKEEPING)
state_of: Callable[[AuditRecord], tuple[Any, ...]] = operator.attrgetter(*STATE)


def is_state(record: AuditRecord) -> bool:
    """Does the record say what the machine is and what it needs (a baseline holds it)?
    An outage, an error before any assessment or an id the app cannot read do not."""
    return classified(record) and record.outcome != UNAVAILABLE


def changed(before: AuditRecord | None, after: AuditRecord) -> bool:
    """Does a sweep write a row for this machine? When what it says of the machine differs
    from the baseline (or there is none), when it acted or failed to, and for whatever
    is not a state: every change and every action is a row; a night that changed
    nothing is the run's (it says which subscriptions it assessed completely)."""
    if not is_state(after) or after.outcome not in QUIET:
        return True
    return before is None or state_of(before) != state_of(after)


_LOGFMT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})


def logfmt(pairs: Sequence[tuple[str, str]]) -> str:
    """``key="value" ...``, every value quoted and escaped: one line no value can forge,
    and nothing invisible in it (line breaks, bidi overrides: model.visible)."""
    return " ".join(f'{key}="{visible(value.translate(_LOGFMT_ESCAPES))}"' for key, value in pairs)


def index_partition(vm: str) -> str:
    """The VM index bucket of a VM: ``vi-NN``, from its hash (stable across versions)."""
    return f"{INDEX_PREFIX}{int(vm_key(vm)[:8], 16) % INDEX_BUCKETS:02d}"


def vm_name(vm: str) -> str:
    """The VM's name (the id's last segment), lower-case: what ``vms_named`` matches."""
    return vm.rsplit("/", 1)[-1].lower()


def day_partition(moment: datetime) -> str:
    """The previous version's day partition (``d-yyyymmdd``): read by ``purge`` only."""
    return LEGACY_DAY_PREFIX + moment.astimezone(UTC).strftime("%Y%m%d")


def _inverted(moment: datetime) -> str:
    """The row-key prefix of a moment: newer sorts first. Moments before 1970 or after
    2286 are pinned to the ends, so any window, however wide, is a valid key range."""
    ticks = int(moment.timestamp() * 1_000_000)
    return f"{MAX_TICKS - min(max(ticks, 1), MAX_TICKS):019d}"


def _row_key(record: AuditRecord) -> str:
    return f"{_inverted(record.time)}-{record.record_id}"


def _window(since: datetime, until: datetime, prefix: str = "") -> dict[str, str]:
    """Row keys from ``until`` (newest, first) back to ``since`` (oldest, inclusive),
    after ``prefix`` (the VM's hash and "-" in an index bucket)."""
    return {"newest": prefix + _inverted(until), "oldest": prefix + _inverted(since) + "~"}


def _entity(record: AuditRecord, partition: str) -> dict[str, Any]:
    """The log row (``partition`` = ``log``) or the VM's index row (its ``vi-NN``)."""
    prefix = f"{vm_key(record.vm)}-" if partition.startswith(INDEX_PREFIX) else ""
    entity: dict[str, Any] = {
        "PartitionKey": partition,
        "RowKey": prefix + _row_key(record),
        INDEX_MARKER: INDEX_PREFIX,  # its VM row is in the bucketed index (purge)
    }
    for name in STORED:
        value = getattr(record, name)
        if name in LIST_FIELDS:
            value = ",".join(value)
        elif name == "install_code":
            value = -1 if value is None else value
        entity[name] = value
    entity["vm_name"] = vm_name(record.vm)  # for vms_named; not a field of the record
    return entity


def _record(entity: dict[str, Any]) -> AuditRecord:
    values: dict[str, Any] = {name: entity.get(name) for name in STORED}
    for name in LIST_FIELDS:
        values[name] = tuple(a for a in (values[name] or "").split(",") if a)
    code = values["install_code"]
    values["install_code"] = None if code is None or code == -1 else int(code)
    moment = values["time"]
    values["time"] = moment if isinstance(moment, datetime) else _now()
    if not values["record_id"]:  # an older row: its id ends its row key
        values["record_id"] = str(entity.get("RowKey", "")).rsplit("-", 1)[-1]
    defaults: dict[str, Any] = {
        "applied": False,
        "eligible_running": False,  # rows written before the field existed
        "duration_ms": 0,
        "install_code": None,
    }
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
    verification: str = ""
    finding: str = ""
    limit: int = 100
    continuation: str = ""
    # What parse_query changed in what was asked, for the caller to show (e.g. "since
    # clamped to the retention period of 400 days").
    notes: tuple[str, ...] = ()


_TOKEN_PARTITION = re.compile(rf"(?:v-[0-9a-f]{{40}}|{INDEX_PREFIX}\d\d|{LOG_PARTITION})\Z")
_TOKEN_ROW_KEY = re.compile(r"(?:[0-9a-f]{40}-)?\d{19}-[0-9a-f]{32}\Z")


def _encode_token(partition: str, row_key: str) -> str:
    return base64.urlsafe_b64encode(f"{partition}|{row_key}".encode()).decode()


def _decode_token(token: str, partitions: Sequence[tuple[str, str]]) -> tuple[int, str]:
    """Which of the query's partitions to resume in and the row key to resume after;
    (0, "") for a first page. A token from another query (another VM, or the previous
    version's day partitions) or a forged one is refused."""
    if not token:
        return 0, ""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the continuation token is not valid") from None
    token_partition, bar, row_key = text.partition("|")
    if not bar or not _TOKEN_PARTITION.match(token_partition) or not _TOKEN_ROW_KEY.match(row_key):
        raise ValueError("the continuation token is not valid")
    for index, (partition, prefix) in enumerate(partitions):
        hashed = len(row_key) > len("0" * 19 + "-" + "0" * 32)  # a VM's hash leads it
        if token_partition == partition and row_key.startswith(prefix) and hashed == bool(prefix):
            return index, row_key
    raise ValueError("the continuation token belongs to another query")


@dataclass(frozen=True, slots=True)
class Night:
    """A sweep run that assessed a subscription completely."""

    run_id: str
    started: datetime
    trigger: str = "sweep"


def sweep_record_id(run_id: str, about: str) -> str:
    """The id of a sweep's row: from the run and the VM (or what else it is about), so a
    retried batch rewrites its rows, and a night read back has the id its row would have."""
    return hashlib.sha256(f"{run_id}|{about.lower()}".encode()).hexdigest()[:32]


def nights(
    rows: Sequence[AuditRecord], complete: Sequence[Night], baseline: AuditRecord | None
) -> list[AuditRecord]:
    """One machine's rows, and a row read back for each run of ``complete`` (each assessed
    its subscription completely) that wrote none for it, newest first.

    Why that is its record: a complete run writes a row for every machine whose state
    changed, and a ``gone`` row for every machine it no longer lists. So a complete run
    without a row for the machine saw it unchanged: its state then is its last state
    before the run, from a complete run of its subscription (a partial run's changes may
    not be in the baseline), or the baseline once the run is at or after the baseline's
    own time (older rows may have passed the retention). Nothing is read back before the
    machine's first state, or after it was gone."""
    ids = {night.run_id for night in complete}
    written = {row.run_id for row in rows if row.run_id and row.trigger != "queue"}
    states = sorted(
        (
            row
            for row in rows
            if row.run_id in ids
            and row.trigger != "queue"
            and (is_state(row) or row.decision == GONE)
        ),
        key=lambda row: row.time,
    )
    found = list(rows)
    for night in complete:
        if night.run_id in written:
            continue
        prior = None
        if baseline is not None and baseline.time <= night.started:
            prior = baseline
        else:
            before = [state for state in states if state.time < night.started]
            prior = before[-1] if before else None
        if prior is None or prior.decision == GONE:
            continue
        found.append(
            replace(
                prior,
                trigger=night.trigger,
                run_id=night.run_id,
                event_id="",
                correlation_id="",
                duration_ms=0,
                time=night.started,
                record_id=sweep_record_id(night.run_id, prior.vm),
                unchanged_since=prior.unchanged_since or prior.time,
            )
        )
    return sorted(found, key=_row_key)


def _matches(record: AuditRecord, query: Query) -> bool:
    """The query's column filters, on a record in hand (a VM's rows are few)."""
    for name in ("decision", "subscription", "run_id", "verification"):
        wanted = getattr(query, name)
        if wanted and getattr(record, name) != wanted:
            return False
    return not query.finding or query.finding in record.findings


def _upserts(table: TableClient, rows: list[dict[str, Any]]) -> None:
    """One transaction of upserts, sent again if its answer was lost: azure-core retries
    a POST only when it could not connect, and a pooled connection the server had closed
    resets on the read. Upserts of the same rows: sending twice is harmless."""
    operations = [("upsert", row, {"mode": UpdateMode.REPLACE}) for row in rows]
    for attempt in range(1, LOST_ANSWER_TRIES + 1):
        try:
            table.submit_transaction(operations)
            return
        except ServiceResponseError:
            if attempt == LOST_ANSWER_TRIES:
                raise


class Baselines:
    """``base-<subscription>``: each machine's state as the sweep last saw it, the last
    state row of a complete sweep of its subscription (``is_state``). A batch compares its
    records with it to write rows only for changes, and the report counts from it.

    Stored as one zlib-compressed JSON list, cut into binary chunk rows of one
    generation (the run that wrote it), and a ``head`` row naming the generation and its
    chunk count: written chunks first, then the head, then the old chunks deleted, so a
    reader never sees half a baseline. One writer at a time: a subscription is held by
    one run (its lock), and a retried batch rewrites the same generation."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def read(self, subscription: str) -> dict[str, AuditRecord]:
        """Lower-case machine id -> its state; {} before the first complete sweep."""
        return self.read_all(subscription)[0]

    def read_all(
        self, subscription: str
    ) -> tuple[dict[str, AuditRecord], dict[str, int], frozenset[str]]:
        """The states; lower-case machine id -> MDE installs that ended Failed since the
        last that Succeeded (``count_install``); and the chunk rows there are (what a
        write replaces): one query for all three."""
        partition = BASE_PREFIX + subscription.lower()
        for _ in range(3):  # rewritten while read: read again
            try:
                entities = {
                    entity["RowKey"]: entity
                    for entity in self._table.query_entities(
                        "PartitionKey eq @pk", parameters={"pk": partition}
                    )
                }
            except ResourceNotFoundError:  # no table yet
                return {}, {}, frozenset()
            chunks = frozenset(
                key for key in entities if key != BASE_HEAD and not key.startswith(FAILED_PREFIX)
            )
            failed = {
                str(entity["vm"]).lower(): int(entity["failed"])
                for key, entity in entities.items()
                if key.startswith(FAILED_PREFIX)
            }
            head = entities.get(BASE_HEAD)
            if head is None:
                return {}, failed, chunks
            keys = [f"{head['generation']}-{n:05d}" for n in range(int(head["chunks"]))]
            if all(key in entities for key in keys):
                data = zlib.decompress(b"".join(bytes(entities[key]["data"]) for key in keys))
                records = map(AuditRecord.from_json, json.loads(data))
                return {record.vm.lower(): record for record in records}, failed, chunks
        raise RuntimeError(f"the baseline of {subscription} changed on every read")

    def write(
        self,
        subscription: str,
        generation: str,
        records: Sequence[AuditRecord],
        replacing: Iterable[str] | None = None,
    ) -> None:
        """The subscription's states as one new generation; the chunk rows it replaces are
        ``replacing`` (as ``read_all`` found them) or, if not given, read first."""
        partition = BASE_PREFIX + subscription.lower()
        text = json.dumps([record.to_json() for record in records], separators=(",", ":"))
        data = zlib.compress(text.encode())
        rows = [
            {
                "PartitionKey": partition,
                "RowKey": f"{generation}-{start // BASE_CHUNK:05d}",
                "data": data[start : start + BASE_CHUNK],
            }
            for start in range(0, len(data), BASE_CHUNK)
        ]
        if replacing is None:
            replacing = [
                entity["RowKey"]
                for entity in self._table.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"]
                )
            ]
        keep = {row["RowKey"] for row in rows} | {BASE_HEAD}
        old = sorted(
            key for key in replacing if key not in keep and not key.startswith(FAILED_PREFIX)
        )
        for start in range(0, len(rows), BASE_ROWS):
            _upserts(self._table, rows[start : start + BASE_ROWS])
        head = {"generation": generation, "chunks": len(rows), "machines": len(records)}
        _upserts(self._table, [{"PartitionKey": partition, "RowKey": BASE_HEAD} | head])
        for start in range(0, len(old), TRANSACTION):
            keys = old[start : start + TRANSACTION]
            try:  # the old generation: unread from now on; what stays, the next write lists
                self._table.submit_transaction(
                    [("delete", {"PartitionKey": partition, "RowKey": key}) for key in keys]
                )
            except AzureError as error:
                log.warning("baseline of %s: old chunks left for later (%s)", subscription, error)

    def failed_installs(self, vm: str) -> int:
        """MDE installs on the VM that ended Failed since the last that Succeeded."""
        partition = BASE_PREFIX + VmRef.parse(vm).subscription
        try:
            return int(self._table.get_entity(partition, FAILED_PREFIX + vm_key(vm))["failed"])
        except ResourceNotFoundError:
            return 0

    def count_install(self, record: AuditRecord) -> None:
        """An install that ended: Failed adds one to the VM's count, Succeeded clears it.
        One install per VM at a time (its claim), so a read and a write suffice."""
        partition = BASE_PREFIX + VmRef.parse(record.vm).subscription
        key = FAILED_PREFIX + vm_key(record.vm)
        if record.install_state == "Succeeded":
            with contextlib.suppress(ResourceNotFoundError):
                self._table.delete_entity(partition, key)
            return
        failed = self.failed_installs(record.vm) + 1
        entity = {"PartitionKey": partition, "RowKey": key, "vm": record.vm, "failed": failed}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)


class AuditLog:
    def __init__(
        self, table: TableClient, on_write: Callable[[AuditRecord], None] | None = None
    ) -> None:
        self._table = table
        self._on_write = on_write  # notifications
        self.baselines = Baselines(table)  # each machine's state as the sweep last saw it

    @property
    def table(self) -> TableClient:
        """The table, shared with the claims and the sweep's runs (other partitions)."""
        return self._table

    def create(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            self._table.create_table()

    def write(self, record: AuditRecord) -> AuditRecord:
        """Store the record under both keys (upserts: a retried write is harmless)."""
        for partition in (LOG_PARTITION, index_partition(record.vm)):
            self._table.upsert_entity(_entity(record, partition), mode=UpdateMode.REPLACE)
        if record.install_state in {"Failed", "Succeeded"} and kind_of(record.vm):
            self.baselines.count_install(record)
        # INFO, whatever the decision: one line per VM is the record, not an alert (the
        # CLI logs warnings only; Application Insights keeps Function.*.User at INFO).
        log.info(record.log_line())
        if self._on_write is not None:
            self._on_write(record)
        return record

    def write_many(self, records: Sequence[AuditRecord]) -> None:
        """A sweep's records: the log rows and the index rows in transactions of up to
        100 rows of one partition, the index buckets in parallel. Upserts: a batch
        retried after a failure rewrites the same rows (a sweep's ids are stable)."""
        by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in records:
            for partition in (LOG_PARTITION, index_partition(record.vm)):
                by_partition[partition].append(_entity(record, partition))
        transactions = [
            rows[start : start + TRANSACTION]
            for rows in by_partition.values()
            for start in range(0, len(rows), TRANSACTION)
        ]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._upsert_all, transactions))
        for record in records:
            log.info(record.log_line())

    def _upsert_all(self, rows: list[dict[str, Any]]) -> None:
        _upserts(self._table, rows)

    @staticmethod
    def _vm_partitions(vm: str) -> list[tuple[str, str]]:
        """Where a VM's rows are, newest first: its index bucket (row keys after its
        hash), then the previous version's partition of its own."""
        return [(index_partition(vm), f"{vm_key(vm)}-"), (vm_partition(vm), "")]

    def for_vm(self, vm: str, limit: int = 50) -> list[AuditRecord]:
        """Newest first. The index bucket first; the previous version's rows (all older)
        only if the bucket holds fewer than ``limit``."""
        records: list[AuditRecord] = []
        for partition, prefix in self._vm_partitions(vm):
            if len(records) >= limit:
                break
            condition = "PartitionKey eq @pk"
            parameters = {"pk": partition}
            if prefix:  # "-" < "." in key order: the range of this VM's rows
                condition += " and RowKey gt @first and RowKey lt @last"
                parameters |= {"first": prefix, "last": prefix[:-1] + "."}
            entities = self._table.query_entities(
                condition, parameters=parameters, results_per_page=limit - len(records)
            )
            for entity in entities:
                records.append(_record(entity))
                if len(records) >= limit:
                    break
        return records

    def since(self, moment: datetime, until: datetime | None = None) -> Iterator[AuditRecord]:
        """Every record from ``moment`` on, newest first: one range query, paged by the
        service."""
        entities = self._table.query_entities(
            "PartitionKey eq @pk and RowKey ge @newest and RowKey le @oldest",
            parameters={"pk": LOG_PARTITION} | _window(moment, until or _now()),
            results_per_page=MAX_PAGE,
        )
        yield from (_record(entity) for entity in entities)

    def search(
        self,
        query: Query,
        complete: Sequence[Night] = (),
        baseline: AuditRecord | None = None,
    ) -> tuple[list[AuditRecord], str]:
        """Records matching the query, newest first, at most ``query.limit``, and a
        continuation token for the next page: "" exactly when no further record matches.
        A window is one range query in the log's partition, read until one row past the
        limit: a single request unless the service ends a page early (1,000 rows, five
        seconds of scanning for a rare filter). A VM's is its rows, with a row read back
        for each night it had none (``nights``: the runs that assessed its subscription
        completely, ``complete``, and its ``baseline``)."""
        if query.vm:
            return self._search_vm(query, complete, baseline)
        partitions = [(LOG_PARTITION, "")]
        _, after = _decode_token(query.continuation, partitions)
        conditions = ["PartitionKey eq @pk", "RowKey ge @newest", "RowKey le @oldest"]
        parameters: dict[str, Any] = {"pk": LOG_PARTITION} | _window(query.since, query.until)
        if after:
            conditions.append("RowKey gt @after")
            parameters["after"] = after
        for name in ("decision", "subscription", "run_id", "verification"):
            if getattr(query, name):
                conditions.append(f"{name} eq @{name}")
                parameters[name] = getattr(query, name)
        if query.finding:  # one finding exists so far: the joined column equals it
            conditions.append("findings eq @finding")
            parameters["finding"] = query.finding
        entities = self._table.query_entities(
            " and ".join(conditions),
            parameters=parameters,
            results_per_page=min(query.limit + 1, MAX_PAGE),
        )
        records: list[AuditRecord] = []
        last = ""
        for entity in entities:
            if len(records) == query.limit:  # one more matches: there is a next page
                return records, _encode_token(LOG_PARTITION, last)
            records.append(_record(entity))
            last = entity["RowKey"]
        return records, ""

    def _search_vm(
        self, query: Query, complete: Sequence[Night], baseline: AuditRecord | None
    ) -> tuple[list[AuditRecord], str]:
        """A VM's page: all its rows (a machine has one a change, not one a night) and the
        nights read back, filtered, newest first; the token is the last one's key."""
        partitions = self._vm_partitions(query.vm)
        first, after = _decode_token(query.continuation, partitions)
        prefix = partitions[0][1]
        if first:  # a token into the previous version's partition: the same order
            after = prefix + after
        matching = [
            record
            for record in nights(self.rows_of(query.vm), complete, baseline)
            if query.since <= record.time <= query.until
            and prefix + _row_key(record) > after
            and _matches(record, query)
        ]
        page = matching[: query.limit]
        more = len(matching) > query.limit
        return page, _encode_token(partitions[0][0], prefix + _row_key(page[-1])) if more else ""

    def rows_of(self, vm: str) -> list[AuditRecord]:
        """Every stored row of one VM, newest first: its index bucket, then the previous
        version's partition of its own."""
        records: list[AuditRecord] = []
        for partition, prefix in self._vm_partitions(vm):
            condition = "PartitionKey eq @pk"
            parameters = {"pk": partition}
            if prefix:  # "-" < "." in key order: the range of this VM's rows
                condition += " and RowKey gt @first and RowKey lt @last"
                parameters |= {"first": prefix, "last": prefix[:-1] + "."}
            entities = self._table.query_entities(
                condition, parameters=parameters, results_per_page=MAX_PAGE
            )
            records += (_record(entity) for entity in entities)
        return records

    def vms_named(
        self,
        name: str,
        since: datetime,
        until: datetime,
        subscription: str = "",
        keep: Callable[[str], bool] = lambda vm: True,
    ) -> list[str]:
        """The distinct VM ids, newest first, whose name (the id's last segment) is
        ``name`` (any case) in records of the window. Pages are followed (Table Storage
        may end one after 5 s of scanning, even empty) until two ids are known (enough
        to say "ambiguous") or NAME_PAGES pages were read. Only ids ``keep`` accepts
        (the caller's scope) count."""
        conditions = [
            "PartitionKey eq @pk",
            "RowKey ge @newest",
            "RowKey le @oldest",
            "vm_name eq @name",
        ]
        parameters: dict[str, Any] = {"pk": LOG_PARTITION, "name": name.lower()}
        parameters |= _window(since, until)
        if subscription:
            conditions.append("subscription eq @subscription")
            parameters["subscription"] = subscription
        pages = self._table.query_entities(
            " and ".join(conditions),
            parameters=parameters,
            select=["vm"],
            results_per_page=MAX_PAGE,
        ).by_page()
        found: dict[str, str] = {}
        for page in itertools.islice(pages, NAME_PAGES):
            for entity in page:
                vm = entity.get("vm") or ""
                if keep(vm):
                    found.setdefault(vm.lower(), vm)
            if len(found) > 1:
                break
        return list(found.values())

    def purge(self, before: datetime) -> int:
        """Delete the records older than ``before``, both rows of each: the log's rows
        and the previous version's day rows (``d-yyyymmdd``, whole days before it), with
        their VM rows. Retention."""
        old = itertools.chain(
            self._table.query_entities(
                "PartitionKey eq @pk and RowKey gt @oldest",
                parameters={"pk": LOG_PARTITION, "oldest": _inverted(before) + "~"},
                select=["PartitionKey", "RowKey", "vm", INDEX_MARKER],
                results_per_page=MAX_PAGE,
            ),
            self._table.query_entities(
                "PartitionKey ge @first and PartitionKey lt @cutoff",
                parameters={"first": LEGACY_DAY_PREFIX, "cutoff": day_partition(before)},
                select=["PartitionKey", "RowKey", "vm"],
                results_per_page=MAX_PAGE,
            ),
        )
        deleted = 0
        by_vm: dict[str, list[str]] = defaultdict(list)
        by_time: dict[str, list[str]] = defaultdict(list)
        for entity in old:
            vm, key = entity.get("vm") or "", entity["RowKey"]
            by_time[entity["PartitionKey"]].append(key)
            if entity.get(INDEX_MARKER) == INDEX_PREFIX:
                by_vm[index_partition(vm)].append(f"{vm_key(vm)}-{key}")
            else:  # written by a previous version: its VM row is in the VM's own partition
                by_vm[vm_partition(vm)].append(key)
            deleted += 1
        # VM rows first: a time row is how an old VM row is found, so it goes last.
        for partition, keys in [*by_vm.items(), *by_time.items()]:
            for start in range(0, len(keys), TRANSACTION):
                self._delete(partition, keys[start : start + TRANSACTION])
        return deleted

    def _delete(self, partition: str, keys: list[str]) -> None:
        """One transaction; if it fails (a row already gone fails all of it), row by row."""
        try:
            self._table.submit_transaction(
                [("delete", {"PartitionKey": partition, "RowKey": key}) for key in keys]
            )
        except TableTransactionError:
            for key in keys:
                with contextlib.suppress(ResourceNotFoundError):
                    self._table.delete_entity(partition, key)

    def reinstalls_since_success(self, vm: str) -> int:
        """How many MDE installs on this VM failed since the last one that succeeded: one
        point read of the count installs keep (``Baselines.count_install``; a sweep reads
        its subscriptions' counts with their baselines). No table yet (before the first
        write, read-only callers create none) is no history, not an error."""
        try:
            return self.baselines.failed_installs(vm)
        except ResourceNotFoundError:
            return 0
