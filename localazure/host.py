"""What the Functions host hands to functions, built from plain values, so tests and the
demo drive the real function objects of ``function_app.app`` as the host would."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import azure.functions as func
from azure.functions.queue import QueueMessage

from remediation.queues import WorkQueue, drain

BASE_URL = "http://localhost:7071/api"  # where `func start` would serve the app


def event_grid_event(event: dict[str, Any]) -> func.EventGridEvent:
    """An Event Grid schema event as the Event Grid trigger receives it."""
    return func.EventGridEvent(
        id=event["id"],
        data=event["data"],
        topic=event["topic"],
        subject=event["subject"],
        event_type=event["eventType"],
        event_time=datetime.fromisoformat(event["eventTime"].replace("Z", "+00:00")),
        data_version=event["dataVersion"],
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


def run_queue(
    queue: WorkQueue,
    function: Callable[[QueueMessage], None],
    poison_function: Callable[[QueueMessage], None],
    concurrency: int = 8,
    visibility_seconds: int = 1,
) -> int:
    """Messages of a queue through its trigger function, retried and poisoned as the host
    does (host.json maxDequeueCount), until the queue is empty."""
    return drain(
        queue,
        lambda text, count: function(QueueMessage(body=text.encode(), dequeue_count=count)),
        lambda text: poison_function(QueueMessage(body=text.encode(), dequeue_count=1)),
        concurrency=concurrency,
        visibility_seconds=visibility_seconds,
    )
