"""What every service of the local plane shares: ARM's error, fault injection, token
buckets, the request log, long-running operations, responses and routes."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localazure.server import LocalAzure


class ArmError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        inner: str = "",
        target: str = "",
        details: list[dict[str, str]] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.inner = inner  # Compute's error.innererror.internalErrorCode, when it sends one
        # Defender for Endpoint's error.target: a correlation id per error response
        # (learn.microsoft.com/defender-endpoint/api/common-errors, "Correlation request ID").
        self.target = target
        self.details = details or []  # error.details[]: {code, message} (Resource Graph's)


# --- Realism knobs --------------------------------------------------------------------
@dataclass
class FaultRule:
    """Answer ``status`` to requests whose method and path match, ``count`` times;
    status 0 drops the connection unanswered."""

    method: str
    path: str  # a regular expression searched in the path
    status: int
    count: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Faults:
    error_rate: float = 0.0  # share of ARM requests answered 500 or 503
    drop_rate: float = 0.0  # share of ARM requests whose connection is closed unanswered
    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # fault injection, not crypto
        self._lock = threading.Lock()

    def add(self, method: str, path: str, status: int, count: int = 1, **headers: str) -> None:
        with self._lock:
            self.rules.append(FaultRule(method.upper(), path, status, count, headers))

    def pick(self, method: str, path: str) -> FaultRule | str | None:
        with self._lock:
            for rule in self.rules:
                if rule.count > 0 and rule.method == method and re.search(rule.path, path, re.I):
                    rule.count -= 1
                    return rule
            roll = self._rng.random()
            if roll < self.drop_rate:
                return "drop"
            if roll < self.drop_rate + self.error_rate:
                return FaultRule(method, path, self._rng.choice([500, 503]))
        return None


class TokenBucket:
    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.stamp = capacity, time.monotonic()

    def take(self) -> tuple[bool, int, float]:
        """(granted, tokens left, seconds until one token is back)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True, int(self.tokens), 0.0
        return False, 0, (1 - self.tokens) / self.rate


# --- The request log --------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedRequest:
    time: float
    method: str
    path: str
    operation: str  # an RBAC-style operation name, e.g. Microsoft.Compute/virtualMachines/read
    principal: str  # object id, "" before authentication
    subscription: str
    status: int
    code: str = ""  # the ARM error code of a refusal, "InjectedFault" for injected ones


class RequestLog:
    def __init__(self) -> None:
        self._items: list[LoggedRequest] = []
        self._lock = threading.Lock()

    def add(self, item: LoggedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def count(
        self,
        operation: str | None = None,
        *,
        principal: str | None = None,
        status: int | None = None,
        method: str | None = None,
    ) -> int:
        return sum(
            1
            for item in self.items()
            if (operation is None or item.operation == operation)
            and (principal is None or item.principal == principal)
            and (status is None or item.status == status)
            and (method is None or item.method == method)
        )

    def arm(self) -> list[LoggedRequest]:
        """ARM and Resource Graph requests: what counts against Azure's limits."""
        return [item for item in self.items() if item.operation.startswith("Microsoft.")]

    def by_operation(self) -> Counter[str]:
        return Counter(item.operation for item in self.arm())


# --- Long-running operations ------------------------------------------------------------
@dataclass
class Operation:
    """A long-running operation: done at ``done_at``, then ``finish`` applies it."""

    id: str
    vm_key: str
    done_at: float
    finish: Callable[[], None]
    error: dict[str, str] | None = None
    started: str = ""
    finished: bool = False
    kind: str = ""  # "runCommand" for Run Command; "" for extension and VM operations
    # What a Location-polled operation answers with once done (Run Command's result).
    result: Any = None


def utc_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# --- Responses --------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]


def error_body(
    code: str,
    message: str,
    inner: str = "",
    target: str = "",
    details: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"internalErrorCode": inner}
    if target:
        error["target"] = target
    if details:
        error["details"] = details
    return {"error": error}


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        json.dumps(value).encode(),
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


# --- Routes -----------------------------------------------------------------------------
Params = dict[str, str]
Query = dict[str, str]
Handler = Callable[["LocalAzure", Params, Query, Any, str], Response]

SUB = r"/subscriptions/(?P<sub>[^/]+)"


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    operation: str
    api: str  # which api-version family applies; "" for the token endpoint


def route(method: str, pattern: str, handler: Handler, operation: str = "", api: str = "") -> Route:
    return Route(method, re.compile(f"^{pattern}$", re.IGNORECASE), handler, operation, api)


def with_method(handler: Callable[..., Response], method: str) -> Handler:
    return lambda plane, p, q, body, who: handler(plane, p, q, body, who, method)
