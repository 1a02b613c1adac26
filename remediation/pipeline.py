"""The azure-core pipeline policies every client of the gateway shares: a retry that
honours Retry-After (and Resource Graph's quota header) within a budget, a deadline
shared by one handler's calls, and a counter of the requests sent (the real cost: ARM's
and Resource Graph's throttling limits); and the credential they all sign in with."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ServiceRequestTimeoutError, ServiceResponseTimeoutError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import RetryPolicy, SansIOHTTPPolicy
from azure.identity import DefaultAzureCredential

from remediation.config import Settings
from remediation.model import PermanentError, ThrottledError, TransientError

_DEADLINE: ContextVar[float | None] = ContextVar("deadline", default=None)


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Within this block, this thread's ARM calls, retries included, share one
    deadline ``seconds`` away: each gets what the ones before it left."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class RequestCounter(SansIOHTTPPolicy[Any, Any]):
    """Counts the HTTP requests sent (retries included): ``total`` for the worker, and
    per thread inside ``counting()``: what a sweep batch spent of ARM's and Resource
    Graph's limits."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.total: Counter[str] = Counter()

    def on_request(self, request: PipelineRequest[Any]) -> None:
        url = request.http_request.url
        kind = "arm"
        if "/providers/Microsoft.ResourceGraph/" in url:
            kind = "graph"
        elif "/api/machines" in url:
            kind = "mde"  # Defender for Endpoint's API: its own limits, not ARM's
        with self._lock:
            self.total[kind] += 1
        for counter in getattr(self._local, "counters", ()):
            counter[kind] += 1

    @contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        counter: Counter[str] = Counter()
        stack = self._local.__dict__.setdefault("counters", [])
        stack.append(counter)
        try:
            yield counter
        finally:
            stack.remove(counter)


class BoundedRetryPolicy(RetryPolicy[Any, Any]):
    """azure-core's retry, honouring Retry-After and Resource Graph's quota header, but
    never waiting longer than the budget: a long Retry-After becomes a ThrottledError
    so the queue retries later instead of the function timing out asleep."""

    def __init__(self, budget: float, **kwargs: Any) -> None:
        super().__init__(timeout=budget, **kwargs)
        self._budget = budget

    @property
    def budget(self) -> float:
        """The worker's budget, or what is left of a handler's deadline (ArmGateway.budget)."""
        deadline = _DEADLINE.get()
        if deadline is None:
            return self._budget
        return min(self._budget, max(0.1, deadline - time.monotonic()))

    def configure_retries(self, options: dict[str, Any]) -> dict[str, Any]:
        options.setdefault("timeout", self.budget)
        return super().configure_retries(options)

    def increment(self, settings: dict[str, Any], response: Any = None, error: Any = None) -> bool:
        if isinstance(response, PipelineResponse):  # remember the last answer for the error
            status = response.http_response.status_code
            response.context["last_answer"] = f"HTTP {status} {response.http_response.reason}"
        elif error is not None and response is not None:
            response.context["last_answer"] = type(error).__name__
        return super().increment(settings, response=response, error=error)

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        try:
            return super().send(request)
        except (ServiceRequestTimeoutError, ServiceResponseTimeoutError):
            last = request.context.get("last_answer", "no answer")
            raise TransientError(
                f"gave up after the {self.budget:.0f} s retry budget; the last answer was {last}"
            ) from None

    def get_retry_after(self, response: PipelineResponse[Any, Any]) -> float | None:
        wait = super().get_retry_after(response)
        if wait is None:
            wait = _quota_reset(response.http_response.headers.get("x-ms-user-quota-resets-after"))
        if wait is not None and wait > self.budget:
            raise ThrottledError(
                f"ARM asked to wait {wait:.0f} s, more than the {self.budget:.0f} s retry "
                "budget: retrying later"
            )
        return wait


def _quota_reset(value: str | None) -> float | None:
    """Resource Graph's 'x-ms-user-quota-resets-after: hh:mm:ss' in seconds."""
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2})(?:\.\d+)?", value or "")
    if match is None:
        return None
    hours, minutes, seconds = (int(part) for part in match.groups())
    return float(max(1, hours * 3600 + minutes * 60 + seconds))


def build_credential(settings: Settings) -> TokenCredential:
    """DefaultAzureCredential limited to what runs unattended: environment (service
    principal), workload identity and managed identity. Developer-machine credentials
    (CLI, PowerShell, VS Code, browser) are excluded so nothing spawns or prompts."""
    kwargs: dict[str, Any] = {}
    if settings.authority_host:
        kwargs["authority"] = settings.authority_host
    if settings.disable_instance_discovery:
        kwargs["disable_instance_discovery"] = True
    return DefaultAzureCredential(
        exclude_cli_credential=True,
        exclude_developer_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_interactive_browser_credential=True,
        **kwargs,
    )


def token_object_id(token: str) -> str:
    """The 'oid' claim of a JWT access token. Read, not verified: ARM verifies it."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["oid"]).lower()
    except (IndexError, ValueError, KeyError, TypeError):
        raise PermanentError(
            "cannot read the app's object id from its token",
            hint="set REMEDIATION_PRINCIPAL_ID to the identity's object id",
        ) from None
