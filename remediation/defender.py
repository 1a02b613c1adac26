"""Verified protection: Defender for Endpoint's device inventory, read once per sweep run
and kept with the run, and each VM's verification between sweeps.

- The device list is read when a run starts (``snapshot``): one request per 10,000
  devices. It is kept in the audit table under ``mde-<run id>``, one row per subscription
  (in chunks), so every batch of the run, on any instance, reads only its subscriptions'
  devices and the API is called once per run, whatever the number of batches.
- ``vstate-<subscription>`` keeps, per VM, since when its extension has been Succeeded
  (the grace period counts from then) and its last verification (to notify only when it
  turns ``not-seen`` or ``unhealthy``, and to answer the event path). One partition per
  subscription: a batch reads it in one query and writes what changed in transactions
  of 100.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from azure.core import PipelineClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.policies import (
    BearerTokenCredentialPolicy,
    ContentDecodePolicy,
    HeadersPolicy,
    UserAgentPolicy,
)
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient

from remediation.azure_errors import translate, translated
from remediation.model import MACHINE_ID, Device, Verification, Verified, VmFacts
from remediation.tables import TRANSACTION, vm_partition

log = logging.getLogger("remediation")

SNAPSHOT_PREFIX = "mde-"
STATE_PREFIX = "vstate-"
SUMMARY_ROW = "summary"
UNKNOWN_SUBSCRIPTION = "_"  # devices whose subscription the API does not say
CHUNK_CHARS = 30_000  # a string property holds 64 KiB of UTF-16: 32K characters
OFF = "Verification is off (REMEDIATION_MDE_API is empty)."


@dataclass
class DeviceIndex:
    """The devices of some subscriptions, by the VM's resource id and by its vmId."""

    by_resource: dict[str, Device] = field(default_factory=dict)
    by_vm_id: dict[str, Device] = field(default_factory=dict)
    problem: str = OFF  # "" when the list was read; else why every VM is "unchecked"

    def find(self, facts: VmFacts) -> Device | None:
        """Match by ``vmMetadata.resourceId``, then by ``vmMetadata.vmId``."""
        device = self.by_resource.get(facts.vm.id.lower())
        if device is None and facts.vm_id:
            device = self.by_vm_id.get(facts.vm_id.lower())
        return device

    def add(self, row: Sequence[str]) -> None:
        """Keep, per VM, its best device: a VM onboarded again is listed twice, the old
        device Inactive and the new one Active; else the one seen last."""
        resource, vm_id, *rest = row
        device = Device(*rest)
        for table, key in ((self.by_resource, resource), (self.by_vm_id, vm_id)):
            if key and (key not in table or _rank(device) > _rank(table[key])):
                table[key] = device


def _rank(device: Device) -> tuple[bool, bool, str]:
    active = device.health.lower() == "active"
    return active, device.onboarding.lower() == "onboarded", device.last_seen


def compact(raw: Any) -> tuple[str, list[str]] | None:
    """(subscription, [resource id, vmId, device id, name, health, onboarding, last seen])
    of an Azure VM's device; None for any other device (no vmMetadata)."""
    if not isinstance(raw, dict):
        return None
    meta = raw.get("vmMetadata")
    if not isinstance(meta, dict):
        return None
    resource = str(meta.get("resourceId") or "").lower()
    vm_id = str(meta.get("vmId") or "").lower()
    if not resource and not vm_id:
        return None
    subscription = str(meta.get("subscriptionId") or "").lower()
    match = MACHINE_ID.fullmatch(resource) if resource else None
    if not subscription:
        subscription = match["sub"].lower() if match else UNKNOWN_SUBSCRIPTION
    fields = ("id", "computerDnsName", "healthStatus", "onboardingStatus", "lastSeen")
    return subscription, [resource, vm_id, *(str(raw.get(name) or "") for name in fields)]


def snapshot(table: TableClient, run_id: str, devices: Iterable[Any]) -> int:
    """Keep the Azure VMs' devices of the list with the run; returns how many."""
    by_subscription: dict[str, list[list[str]]] = {}
    for raw in devices:
        item = compact(raw)
        if item is not None:
            by_subscription.setdefault(item[0], []).append(item[1])
    partition = SNAPSHOT_PREFIX + run_id
    entities: list[dict[str, Any]] = []
    for subscription, rows in by_subscription.items():
        for index, chunk in enumerate(_chunks(rows)):
            entities.append(
                {
                    "PartitionKey": partition,
                    "RowKey": f"{subscription}-{index:05d}",
                    "devices": chunk,
                }
            )
    count = sum(len(rows) for rows in by_subscription.values())
    entities.append({"PartitionKey": partition, "RowKey": SUMMARY_ROW, "devices_read": count})
    _transact(table, [("upsert", entity) for entity in entities])
    return count


def read_for_run(table: TableClient, devices: Callable[[], Iterable[Any]], run_id: str) -> None:
    """Defender for Endpoint's device list, read once per run and kept with it for its
    batches. Best effort: if it fails, the run's VMs are "unchecked", and their records
    say why."""
    try:
        count = snapshot(table, run_id, devices())
        log.info("sweep %s: %s Azure VM devices read from Defender for Endpoint", run_id, count)
    except Exception as error:
        hint = getattr(error, "hint", "")
        why = f"Defender for Endpoint's device list could not be read: {error}"
        log.warning("sweep %s: %s", run_id, why)
        with contextlib.suppress(Exception):
            snapshot_failed(table, run_id, why + (f" Check: {hint}" if hint else ""))


def snapshot_failed(table: TableClient, run_id: str, why: str) -> None:
    """The list could not be read: the run's VMs are "unchecked", and say why."""
    table.upsert_entity(
        {"PartitionKey": SNAPSHOT_PREFIX + run_id, "RowKey": SUMMARY_ROW, "problem": why[:2000]}
    )


def load(table: TableClient, run_id: str, subscriptions: Iterable[str]) -> DeviceIndex:
    """The run's devices of these subscriptions (and those of no known subscription)."""
    partition = SNAPSHOT_PREFIX + run_id
    try:
        summary = table.get_entity(partition, SUMMARY_ROW)
    except ResourceNotFoundError:
        return DeviceIndex()  # verification was off when the run started
    if summary.get("problem"):
        return DeviceIndex(problem=str(summary["problem"]))
    index = DeviceIndex(problem="")
    for subscription in [*subscriptions, UNKNOWN_SUBSCRIPTION]:
        for entity in table.query_entities(
            "PartitionKey eq @pk and RowKey gt @low and RowKey lt @high",
            parameters={"pk": partition, "low": f"{subscription}-", "high": f"{subscription}-~"},
        ):
            for row in json.loads(entity["devices"]):
                index.add(row)
    return index


def forget(table: TableClient, run_id: str) -> None:
    """The run is over: its copy of the device list goes."""
    partition = SNAPSHOT_PREFIX + run_id
    keys = [
        e["RowKey"]
        for e in table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": partition}, select=["RowKey"]
        )
    ]
    _transact(table, [("delete", {"PartitionKey": partition, "RowKey": key}) for key in keys])


def _chunks(rows: list[list[str]]) -> Iterator[str]:
    """The rows as JSON arrays of at most CHUNK_CHARS characters each."""
    texts: list[str] = []
    size = 1  # "[" ... "]": one bracket here, the other stands in for the last comma
    for row in rows:
        text = json.dumps(row, separators=(",", ":"))
        if texts and size + len(text) + 1 > CHUNK_CHARS:
            yield "[" + ",".join(texts) + "]"
            texts, size = [], 1
        texts.append(text)
        size += len(text) + 1
    if texts:
        yield "[" + ",".join(texts) + "]"


def _transact(table: TableClient, operations: list[tuple[str, dict[str, Any]]]) -> None:
    """Operations on one partition, 100 to a transaction."""
    for start in range(0, len(operations), TRANSACTION):
        table.submit_transaction(operations[start : start + TRANSACTION])


# --- Each VM's verification between sweeps ---------------------------------------------
@dataclass(frozen=True, slots=True)
class State:
    since: datetime  # when the extension was first seen Succeeded (or installed)
    verified: Verified
    checked: datetime | None = None  # when this value was found


class States:
    """``vstate-<subscription>``: one row per VM whose extension is Succeeded."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def read(self, subscription: str) -> dict[str, State]:
        """Every VM's state in one subscription, by lower-case VM id (one query); none
        before the table exists."""
        with contextlib.suppress(ResourceNotFoundError):
            return {
                str(entity["vm"]).lower(): _state(entity)
                for entity in self._table.query_entities(
                    "PartitionKey eq @pk", parameters={"pk": STATE_PREFIX + subscription.lower()}
                )
            }
        return {}

    def get(self, vm: str, subscription: str) -> State | None:
        try:
            entity = self._table.get_entity(STATE_PREFIX + subscription.lower(), _key(vm))
        except ResourceNotFoundError:
            return None
        return _state(entity)

    def write(self, subscription: str, changes: dict[str, State | None]) -> None:
        """Upsert the changed states and delete those set to None (one partition)."""
        partition = STATE_PREFIX + subscription.lower()
        operations: list[tuple[str, dict[str, Any]]] = []
        for vm, state in sorted(changes.items()):
            key = {"PartitionKey": partition, "RowKey": _key(vm)}
            if state is None:
                operations.append(("delete", key))
                continue
            entity = key | {
                "vm": vm,
                "since": state.since,
                "verification": state.verified.value.value,
                "checked": state.checked or state.since,
                "reason": state.verified.reason,
                "hint": state.verified.hint,
            }
            operations.append(("upsert", entity))
        try:
            _transact(self._table, operations)
        except Exception as error:
            log.warning(
                "verification states of %s: batch failed (%s); row by row", subscription, error
            )
            for operation, entity in operations:
                with contextlib.suppress(ResourceNotFoundError):
                    if operation == "delete":
                        self._table.delete_entity(
                            str(entity["PartitionKey"]), str(entity["RowKey"])
                        )
                    else:
                        self._table.upsert_entity(entity)


def _key(vm: str) -> str:
    return vm_partition(vm)[2:]


def _state(entity: dict[str, Any]) -> State:
    return State(
        since=entity["since"],
        checked=entity.get("checked"),
        verified=Verified(
            Verification(entity["verification"]),
            str(entity.get("reason") or ""),
            str(entity.get("hint") or ""),
        ),
    )


# --- Defender for Endpoint's API --------------------------------------------------------
# Defender for Endpoint's API: the WindowsDefenderATP app's audience for every regional
# host (exposed-apis-create-app-webapp docs; MicrosoftDocs/microsoft-365-docs#9246), pages
# of at most 10,000 devices paged with $top/$skip (get-machines docs; the nextLink it
# sometimes sends is unreliable: MicrosoftDocs/microsoft-365-docs#8316, #8489).
# The base URL is a setting: https://api.security.microsoft.com is the documented one
# (exposed-apis-list: "The service base URI is: https://api.security.microsoft.com"), with
# regional hosts us/eu/uk/au/swa/ina.api.security.microsoft.com; the older
# api.securitycenter.microsoft.com still answers. The token's resource stays the legacy
# one: "Some Microsoft Defender for Endpoint APIs continue to require access tokens issued
# for the legacy resource https://api.securitycenter.microsoft.com" (run-api-via-python).
MDE_SCOPE = "https://api.securitycenter.microsoft.com/.default"
MDE_PAGE = 10_000


class DeviceApi:
    """Defender for Endpoint's API through a plain azure-core pipeline: the worker's
    credential (for the API's own audience), the gateway's retries that honour
    Retry-After, and its request counter."""

    def __init__(
        self, base_url: str, credential: TokenCredential, retry: Any, counter: Any
    ) -> None:
        self._base = base_url
        self._client: PipelineClient[Any, Any] = PipelineClient(
            base_url=base_url,
            policies=[
                HeadersPolicy(),
                UserAgentPolicy("defender-coverage-remediator"),
                ContentDecodePolicy(),
                retry,
                BearerTokenCredentialPolicy(credential, MDE_SCOPE),
                counter,
            ],
        )

    def devices(self) -> Iterator[dict[str, Any]]:
        """Every device of Defender for Endpoint's inventory (GET /api/machines), a page
        of 10,000 at a time: one request per 10,000 devices, far inside the API's 100
        calls a minute and 1,500 an hour; a 429 is retried after its Retry-After."""
        what = "reading Defender for Endpoint's device list"
        skip = 0
        while True:
            request = HttpRequest("GET", f"{self._base}/api/machines?$top={MDE_PAGE}&$skip={skip}")
            response = translated(what, partial(self._client.send_request, request))
            if response.status_code == 404 and skip == 0:
                return  # "404 Not Found if no recent machines" (get-machines docs)
            try:
                response.raise_for_status()
            except HttpResponseError as error:
                raise translate(error, what) from None
            page = response.json().get("value") or []
            yield from page
            if len(page) < MDE_PAGE:
                return
            skip += len(page)
