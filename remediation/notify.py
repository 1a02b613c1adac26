"""Notifications (optional, off unless REMEDIATION_NOTIFY_TOPIC_ENDPOINT is set): compact
events on an Event Grid custom topic, for the alerting ops already have.

- ``Remediation.InstallFailed``: an install ended Failed, or gave up after every retry;
- ``Remediation.Blocked``: an event or install could not proceed (settings, permissions);
- ``Remediation.SweepCompleted``: a sweep run finished, with its summary;
- ``Remediation.NotVerified``: a sweep found that a VM turned ``not-seen`` or
  ``unhealthy`` (its extension is Succeeded, Defender for Endpoint disagrees);
- ``Remediation.TestAlert``: a test alert ended (verified, not-verified or failed).

Sweeps report their blocked VMs in SweepCompleted's counts rather than one event each.
Payloads carry ids, decisions, codes and hints: never a package, key or token. A failed
publish is logged and dropped: notifications must never stop a remediation.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.core.credentials import AzureKeyCredential, TokenCredential
from azure.core.exceptions import AzureError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

from remediation.audit import AuditRecord
from remediation.model import FAILED_OUTCOMES

log = logging.getLogger("remediation")
DATA_VERSION = "1.0"


class Notifier:
    def __init__(self, endpoint: str, key: str, credential: TokenCredential) -> None:
        auth: AzureKeyCredential | TokenCredential = AzureKeyCredential(key) if key else credential
        self._client = EventGridPublisherClient(endpoint, auth, retry_total=3)

    def record(self, record: AuditRecord) -> None:
        """Publish what an audit record calls for, if anything."""
        if (
            record.trigger == "queue"
            and record.outcome in FAILED_OUTCOMES
            and record.decision == "error"
        ):
            self._publish("Remediation.InstallFailed", record.vm, _compact(record))
        elif record.decision == "blocked" and record.trigger in {"event", "queue", "cli"}:
            self._publish("Remediation.Blocked", record.vm, _compact(record))

    def not_verified(self, record: AuditRecord) -> None:
        data = _compact(record) | {
            "verification": record.verification,
            "verificationReason": record.verification_reason[:500],
            "verificationHint": record.verification_hint[:500],
        }
        self._publish("Remediation.NotVerified", record.vm, data)

    def test_alert(self, record: AuditRecord) -> None:
        self._publish(
            "Remediation.TestAlert", record.vm, _compact(record) | {"testAlert": record.test_alert}
        )

    def sweep_completed(self, run_id: str, mode: str, summary: dict[str, Any]) -> None:
        data = {"runId": run_id, "mode": mode} | {
            key: summary.get(key)
            for key in (
                "vms",
                "decisions",
                "coverage_percent",
                "eligible_running",
                "covered",
                "actions",
                "capped",
                "errors",
                "verification",
                "findings",
                "duration_seconds",
            )
        }
        self._publish("Remediation.SweepCompleted", f"/sweeps/{run_id}", data)

    def _publish(self, event_type: str, subject: str, data: dict[str, Any]) -> None:
        event = EventGridEvent(
            subject=subject or "/", event_type=event_type, data=data, data_version=DATA_VERSION
        )
        try:
            self._client.send([event])
        except AzureError as error:
            log.warning(
                "notification %s for %s was not published: %s",
                event_type,
                subject,
                type(error).__name__,
            )


def _compact(record: AuditRecord) -> dict[str, Any]:
    return {
        "vm": record.vm,
        "kind": record.kind,
        "subscription": record.subscription,
        "subscriptionName": record.subscription_name,
        "decision": record.decision,
        "outcome": record.outcome,
        "platform": record.platform,
        "reason": record.reason[:500],
        "hint": record.hint[:500],
        "code": record.install_code,
        "trigger": record.trigger,
        "time": record.time.isoformat(),
    }
