"""What the Functions host hands to functions, built from plain values, so tests and the
demo drive the real function objects of ``function_app.app`` as the host would."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import azure.functions as func
from azure.functions.queue import QueueMessage
from azure.storage.queue import QueueClient

log = logging.getLogger("localazure.host")
# The host's retry count comes from the app's host.json, as the Functions host reads it.
HOST_JSON = Path(__file__).resolve().parent.parent / "host.json"


class QueuePair(Protocol):
    """A queue and its poison queue, as the host pairs them (``<name>-poison``)."""

    queue: QueueClient
    poison: QueueClient


BASE_URL = "http://localhost:7071/api"  # where `func start` would serve the app


def event_message(event: dict[str, Any], dequeue_count: int = 1) -> func.QueueMessage:
    """An Event Grid event as on_vm_event receives it: Event Grid's StorageQueue
    destination puts one event per message, and the queue trigger hands over the decoded
    JSON (docs/deploy.md, "Events")."""
    return QueueMessage(
        id=str(event.get("id", "")),
        body=json.dumps(event).encode(),
        dequeue_count=dequeue_count,
    )


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    route: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> func.HttpRequest:
    return func.HttpRequest(
        method,
        f"{BASE_URL}/{path}",
        body=body,
        params=params or {},
        route_params=route or {},
        headers=headers or {},
    )


def max_dequeue_count() -> int:
    return int(json.loads(HOST_JSON.read_text())["extensions"]["queues"]["maxDequeueCount"])


def run_queue(
    queue: QueuePair,
    function: Callable[[QueueMessage], None],
    poison_function: Callable[[QueueMessage], None],
    concurrency: int = 8,
    visibility_seconds: int = 1,
    deadline_seconds: float = 600,
) -> int:
    """Messages of a queue through its trigger function, as the Functions host runs them
    (Microsoft Learn, functions-bindings-storage-queue-trigger, "Poison messages"): up to
    ``concurrency`` at once, a function that raises leaves its message to become visible
    again, and after host.json's maxDequeueCount tries the message moves to the poison
    queue, whose function then runs. Until both queues are empty; returns the messages."""
    tries = max_dequeue_count()

    def message(item: Any) -> QueueMessage:
        return QueueMessage(
            id=item.id, body=item.content.encode(), dequeue_count=item.dequeue_count
        )

    def run(item: Any) -> None:
        try:
            function(message(item))
        except Exception as error:  # the host's contract: any exception is a retry
            log.warning("queued message failed (try %s): %s", item.dequeue_count, error)
            if (item.dequeue_count or 1) >= tries:
                queue.poison.send_message(item.content)
                queue.queue.delete_message(item)
            return
        queue.queue.delete_message(item)

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
            for item in poisoned:
                poison_function(message(item))
                queue.poison.delete_message(item)
            handled += len(page) + len(poisoned)
            if not page and not poisoned:
                if queue.queue.get_queue_properties().approximate_message_count == 0:
                    return handled
                time.sleep(min(visibility_seconds, 0.2))
    raise TimeoutError(f"queued work was still running after {deadline_seconds} s")
