"""The install queue, the per-VM claims that keep installs single, and a drain loop
that runs queued installs in-process the way the Functions host would (for the CLI).

Queue messages are versioned JSON, base64-encoded as the Functions queue trigger
expects. They name a VM and never carry an onboarding package or any other secret.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, UpdateMode
from azure.storage.queue import QueueClient, QueueMessage

from remediation.model import InvalidJson, InvalidResourceId, VmRef, load_json
from remediation.tables import CLAIM_PARTITION, replace_if_unchanged, vm_partition

log = logging.getLogger("remediation")

SCHEMA = "mde-install/1"
MAX_MESSAGE = 64 * 1024  # Azure Queue Storage's largest message
MAX_DEQUEUE = 5  # host.json extensions.queues.maxDequeueCount; a test keeps them equal
CLAIM_LEASE = timedelta(hours=1)  # how long a queued install holds its VM, at least


class BadMessage(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class InstallRequest:
    vm: str
    trigger: str  # what asked: event, sweep, http, cli
    event_id: str = ""
    correlation_id: str = ""
    run_id: str = ""
    requested_at: str = ""  # when the first request was made: re-checks end a window after
    install_started: str = ""  # when our install was accepted, for its re-checks

    def to_text(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def parse(cls, body: bytes | str) -> InstallRequest:
        """A queued message, as untrusted input: any bytes (not UTF-8, nested deep, too
        large) give a BadMessage, never another exception."""
        try:
            value = load_json(body, max_bytes=MAX_MESSAGE)
        except InvalidJson as error:
            raise BadMessage(f"the message is {error}") from None
        if not isinstance(value, dict):
            raise BadMessage("the message is not a JSON object")
        if value.get("schema") != SCHEMA:
            raise BadMessage(f"unknown message schema {str(value.get('schema'))[:40]!r}")
        try:
            VmRef.parse(str(value.get("vm")))
        except InvalidResourceId:
            raise BadMessage("the message does not name a valid VM id") from None
        known = {name: value[name] for name in cls.__slots__ if name in value}
        if not all(isinstance(item, str) for item in known.values()):
            raise BadMessage("the message has fields that are not strings")
        return cls(**known)


class WorkQueue:
    """A queue and its poison queue, as the Functions host pairs them."""

    def __init__(self, queue: QueueClient, poison: QueueClient) -> None:
        self.queue = queue
        self.poison = poison

    def create(self) -> None:
        for client in (self.queue, self.poison):
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()

    def send(self, request: InstallRequest, delay_seconds: int = 0) -> None:
        """Queue a request; a delay keeps the message invisible that long (a re-check)."""
        self.queue.send_message(request.to_text(), visibility_timeout=delay_seconds or None)

    def send_text(self, text: str) -> None:
        self.queue.send_message(text)


class Claims:
    """At most one install in flight per VM: an entity per VM, taken with ETag
    concurrency. A claim lasts for the lease while an install is queued or running,
    then for the cooldown once it ended, so a burst of events installs once."""

    def __init__(
        self, table: TableClient, cooldown: timedelta, lease: timedelta = CLAIM_LEASE
    ) -> None:
        self._table = table
        self._cooldown = cooldown
        self._lease = max(lease, CLAIM_LEASE)  # outlasts an install's re-checks

    def take(self, vm: str, holder: str, now: datetime | None = None) -> bool:
        moment = now or datetime.now(UTC)
        entity = {
            "PartitionKey": CLAIM_PARTITION,
            "RowKey": vm_partition(vm),
            "vm": vm,
            "holder": holder,
            "expires": moment + self._lease,
            "last_error": "",
        }
        try:
            self._table.create_entity(entity)
            return True
        except ResourceExistsError:
            pass
        try:
            current = self._table.get_entity(CLAIM_PARTITION, vm_partition(vm))
        except ResourceNotFoundError:
            return self.take(vm, holder, now)  # released between our two calls
        expires = current.get("expires")  # note_failure may have made a row without one
        if expires is not None and expires > moment:
            return False
        return replace_if_unchanged(self._table, entity, current.metadata["etag"])

    def finish(self, vm: str, now: datetime | None = None) -> None:
        """The install ended (either way): hold the VM for the cooldown only."""
        moment = now or datetime.now(UTC)
        self._table.upsert_entity(
            {
                "PartitionKey": CLAIM_PARTITION,
                "RowKey": vm_partition(vm),
                "vm": vm,
                "holder": "",
                "expires": moment + self._cooldown,
                "last_error": "",
            },
            mode=UpdateMode.REPLACE,
        )

    def release(self, vm: str, holder: str) -> None:
        """Give the claim back at once, if it is still this holder's: the request it was
        taken for never reached the queue, so nothing holds the VM any more."""
        with contextlib.suppress(ResourceNotFoundError, ResourceModifiedError):
            current = self._table.get_entity(CLAIM_PARTITION, vm_partition(vm))
            if current.get("holder") == holder:
                self._table.delete_entity(
                    CLAIM_PARTITION,
                    vm_partition(vm),
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )

    def begin_install(self, vm: str, token: str) -> bool:
        """Mark the claim with the delivery about to PUT the extension. False when another
        delivery's mark is there: the queue delivered a message twice, and only one PUTs.
        The same token (a retry of the same message) may PUT again."""
        try:
            current = self._table.get_entity(CLAIM_PARTITION, vm_partition(vm))
        except ResourceNotFoundError:  # its claim ended (poisoned, finished): a fresh one
            entity: dict[str, Any] = {
                "PartitionKey": CLAIM_PARTITION,
                "RowKey": vm_partition(vm),
                "vm": vm,
                "holder": token,
                "expires": datetime.now(UTC) + self._lease,
                "installing": token,
                "last_error": "",
            }
            try:
                self._table.create_entity(entity)
                return True
            except ResourceExistsError:
                return self.begin_install(vm, token)
        mark = str(current.get("installing") or "")
        if mark:
            return mark == token
        current["installing"] = token
        if replace_if_unchanged(self._table, current, current.metadata["etag"], UpdateMode.MERGE):
            return True
        return self.begin_install(vm, token)  # changed meanwhile: look again

    def end_install(self, vm: str, token: str) -> None:
        """Azure refused the PUT (the VM stopped or busy): the mark goes, so that the
        re-check that follows may PUT."""
        with contextlib.suppress(ResourceNotFoundError):
            current = self._table.get_entity(CLAIM_PARTITION, vm_partition(vm))
            if current.get("installing") == token:
                current["installing"] = ""
                replace_if_unchanged(
                    self._table, current, current.metadata["etag"], UpdateMode.MERGE
                )

    def note_failure(self, vm: str, error: str) -> None:
        """Remember why the last try failed, for the poison handler's audit record."""
        self._table.upsert_entity(
            {
                "PartitionKey": CLAIM_PARTITION,
                "RowKey": vm_partition(vm),
                "vm": vm,
                "last_error": error[:2000],
            },
            mode=UpdateMode.MERGE,
        )

    def last_failure(self, vm: str) -> str:
        try:
            return str(
                self._table.get_entity(CLAIM_PARTITION, vm_partition(vm)).get("last_error") or ""
            )
        except ResourceNotFoundError:
            return ""


Handler = Callable[[str, int, str], Any]  # (message text, its try, its id)


def drain(
    queue: WorkQueue,
    handle: Handler,
    handle_poison: Callable[[str], Any],
    *,
    max_dequeue: int = MAX_DEQUEUE,
    visibility_seconds: int = 1,
    deadline_seconds: float = 600,
    concurrency: int = 8,
) -> int:
    """Run queued messages until both queues are empty, as the Functions host would:
    up to ``concurrency`` at once (host.json batchSize), a failed message becomes
    visible again, and after ``max_dequeue`` tries it moves to the poison queue, whose
    handler then runs. Returns the messages handled."""

    def run(message: QueueMessage) -> None:
        tries = message.dequeue_count or 1
        try:
            handle(message.content, tries, message.id)
        except Exception as error:  # the host's contract: any exception is a retry
            log.warning("queued message failed (try %s): %s", tries, error)
            if tries >= max_dequeue:
                queue.poison.send_message(message.content)
                queue.queue.delete_message(message)
            return
        queue.queue.delete_message(message)

    handled = 0
    stop_at = time.monotonic() + deadline_seconds
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while time.monotonic() < stop_at:
            page = list(
                queue.queue.receive_messages(
                    visibility_timeout=max(visibility_seconds, 1), max_messages=concurrency
                )
            )
            poisoned = list(queue.poison.receive_messages(visibility_timeout=30, max_messages=16))
            list(pool.map(run, page))
            for message in poisoned:
                handle_poison(message.content)
                queue.poison.delete_message(message)
            handled += len(page) + len(poisoned)
            if not page and not poisoned:
                if queue.queue.get_queue_properties().approximate_message_count == 0:
                    return handled
                time.sleep(min(visibility_seconds, 0.2))
    raise TimeoutError(f"queued work was still running after {deadline_seconds} s")
