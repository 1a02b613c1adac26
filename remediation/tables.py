"""The audit table's layout: which partitions it holds, who writes them, and the two
ways every writer uses it (transactions of up to 100 rows, ETag read-modify-write).

One table holds the remediation log and the app's bookkeeping, each in partitions of
its own (docs/decisions.md says why one table):

==================  ==============  ==================================================
partition           written by      holds
==================  ==============  ==================================================
log, vi-00..vi-31   audit.py        every record; the per-VM index (hash buckets)
base-<sub>          audit.py        machines' last sweep states; failed-install counts
v-<hash>, d-<day>   (older)         the previous versions' rows, read and purged
claim               queues.py       a VM's claim: one install in flight per VM
run, batch-<run>    runs.py         sweep runs and their batches' results
sweeplock           runs.py         a subscription's running sweep
scope               scope.py        the last resolution of the scope
mde-<run>           defender.py     a run's copy of Defender for Endpoint's devices
vstate-<sub>        defender.py     each VM's verification between sweeps
testalert(-vm)      testalert.py    test alerts and the VM each one holds
==================  ==============  ==================================================
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

TRANSACTION = 100  # Table Storage's largest transaction, within one partition
CLAIM_PARTITION = "claim"
RUN_PARTITION = "run"
LOCK_PARTITION = "sweeplock"
SCOPE_PARTITION = "scope"


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


def update_entity(
    table: TableClient,
    partition: str,
    row: str,
    change: Callable[[dict[str, Any]], bool],
    mode: UpdateMode = UpdateMode.MERGE,
) -> dict[str, Any] | None:
    """Read, change, write if nobody wrote meanwhile; on a lost race, read again.
    ``change`` edits the entity in place and returns False to write nothing. Returns the
    entity as written, or None when it does not exist or ``change`` declined."""
    while True:
        try:
            entity = table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        if not change(entity):
            return None
        if replace_if_unchanged(table, entity, entity.metadata["etag"], mode):
            return entity


def vm_key(vm: str) -> str:
    # Table keys cannot hold '/', so VM ids are hashed; ids are case-insensitive.
    return hashlib.sha256(vm.lower().encode()).hexdigest()[:40]


def vm_partition(vm: str) -> str:
    """``v-<hash>``: the previous version's VM partition (read for old rows), and the
    row key other partitions (claims, test-alert locks, states) use for a VM."""
    return "v-" + vm_key(vm)


def transactions(table: TableClient, operations: list[tuple[str, dict[str, Any]]]) -> None:
    """Operations of one partition, in transactions of up to 100."""
    for start in range(0, len(operations), TRANSACTION):
        table.submit_transaction(operations[start : start + TRANSACTION])
