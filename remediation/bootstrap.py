"""Builds the real dependencies once per worker, from the environment.

Nothing here runs at import time: the first trigger pays for it (settings are checked
then, and every bad setting is reported at once), later ones reuse it. The ARM SDKs are
imported there too, not when the Functions host loads function_app: cold start matters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from remediation.audit import AuditLog
from remediation.config import Settings, load
from remediation.defender import States
from remediation.queues import Claims, WorkQueue
from remediation.runs import RunStore
from remediation.scope import ScopeStore
from remediation.service import Services
from remediation.signin import SignIn

# Connections kept per storage client: as many as threads share one (the log's parallel
# writes, the CLI's install drain), so that none is opened and dropped per request
# (urllib3 warns "Connection pool is full" then).
STORAGE_POOL = 32


def _transport() -> RequestsTransport:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=STORAGE_POOL)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=True)


def _queue(settings: Settings, name: str, credential: TokenCredential) -> QueueClient:
    # The Functions queue trigger reads base64 text.
    encode, decode = TextBase64EncodePolicy(), TextBase64DecodePolicy()
    if settings.storage_connection:
        return QueueClient.from_connection_string(
            settings.storage_connection,
            name,
            message_encode_policy=encode,
            message_decode_policy=decode,
            transport=_transport(),
        )
    return QueueClient(
        f"https://{settings.storage_account}.queue.{settings.storage_suffix}",
        name,
        credential=credential,
        message_encode_policy=encode,
        message_decode_policy=decode,
        transport=_transport(),
    )


def _tables(settings: Settings, credential: TokenCredential) -> TableServiceClient:
    if settings.storage_connection:
        return TableServiceClient.from_connection_string(
            settings.storage_connection, transport=_transport()
        )
    endpoint = f"https://{settings.storage_account}.table.{settings.storage_suffix}"
    return TableServiceClient(endpoint, credential=credential, transport=_transport())


def build(environ: Mapping[str, str], create: bool = True) -> Services:
    """The services for these settings: ARM gateway, audit table, queue, claims. With
    ``create``, the table and the queues are created if missing (the doctor, which only
    reads, builds without)."""
    from remediation.arm import ArmGateway  # noqa: PLC0415 - cold start
    from remediation.pipeline import build_credential  # noqa: PLC0415

    settings = load(environ)
    credential = build_credential(settings)
    table = _tables(settings, credential).get_table_client(settings.audit_table)
    notifier = None
    if settings.notify_endpoint:
        from remediation.notify import Notifier  # noqa: PLC0415 - optional, off by default

        notifier = Notifier(settings.notify_endpoint, settings.notify_key, credential)
    services = Services(
        settings=settings,
        arm=ArmGateway(settings, credential),
        audit=AuditLog(table, notifier.record if notifier else None),
        notifier=notifier,
        queue=WorkQueue(
            _queue(settings, settings.install_queue, credential),
            _queue(settings, settings.poison_queue, credential),
        ),
        claims=Claims(
            table,
            cooldown=timedelta(seconds=settings.install_cooldown_seconds),
            # The claim holds through an install's re-checks: the request's window, then
            # the install's own (check_later starts it afresh), the last re-check's
            # delay and wait, and a margin.
            lease=timedelta(minutes=2 * settings.recheck_minutes + 15)
            + timedelta(seconds=settings.recheck_seconds + settings.install_timeout_seconds),
        ),
        sweeps=WorkQueue(
            _queue(settings, settings.sweep_queue, credential),
            _queue(settings, settings.sweep_poison_queue, credential),
        ),
        tests=WorkQueue(
            _queue(settings, settings.test_alert_queue, credential),
            _queue(settings, settings.test_alert_poison_queue, credential),
        ),
        states=States(table),
        scopes=ScopeStore(table),
        runs=RunStore(table),
    )
    if create:
        services.audit.create()
        services.queue.create()
        services.sweeps.create()
        services.tests.create()
        # Event Grid writes to this one (Bicep creates it in Azure; this, locally).
        WorkQueue(
            _queue(settings, settings.event_queue, credential),
            _queue(settings, settings.event_poison_queue, credential),
        ).create()
    return services


@lru_cache(maxsize=1)
def services() -> Services:
    """The worker's services, built on first use from the process environment."""
    return build(os.environ)


@lru_cache(maxsize=1)
def page_gate() -> SignIn | None:
    """The pages' Entra token check, or None when they keep their function keys."""
    settings = services().settings
    if not settings.pages_sign_in:
        return None
    return SignIn(
        settings.authority_host or "https://login.microsoftonline.com",
        settings.pages_tenant,
        settings.pages_audience,
        settings.pages_allowed,
        json_fetcher,
    )


def json_fetcher(url: str) -> Any:
    """GET a JSON document through azure-core (its retries; the CA bundle from the
    environment, as every other client here): the tenant's metadata and keys. Raises
    OSError when it cannot, which the sign-in check answers with 503."""
    from azure.core import PipelineClient  # noqa: PLC0415 - only with sign-in on
    from azure.core.exceptions import AzureError  # noqa: PLC0415
    from azure.core.pipeline.policies import RetryPolicy  # noqa: PLC0415
    from azure.core.rest import HttpRequest  # noqa: PLC0415

    client: PipelineClient[Any, Any] = PipelineClient(
        base_url=url, policies=[RetryPolicy(total_retries=2, timeout=20)]
    )
    try:
        # Bounded: a page request waits on this read (signin.py holds its lock meanwhile).
        response = client.send_request(
            HttpRequest("GET", url), connection_timeout=5, read_timeout=10
        )
        response.raise_for_status()
        return json.loads(response.text())
    except (AzureError, ValueError) as error:
        raise OSError(f"GET {url}: {type(error).__name__}") from None
