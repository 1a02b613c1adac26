"""A sweep's figures as Azure Monitor metrics, one set per subscription, through
OpenTelemetry and the Azure Monitor exporter (docs/monitoring.md).

Metrics are published only where ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set (or a
reader is given, as tests do): without it nothing is created and nothing is sent.
OpenTelemetry is imported inside ``publish`` only, so importing this module costs the
cold start nothing (STYLE.md rule 9).

Where the numbers land: every OpenTelemetry metric the exporter sends is stored in the
``customMetrics`` table of Application Insights with its attributes in
``customDimensions``; the metric store gets a copy without dimensions unless "custom
metric dimensions" is turned on (Microsoft Learn, "Metrics in Application Insights",
azure-monitor/app/metrics-overview, "Custom metrics dimensions and preaggregation").
The alert and the workbook in infra/monitoring.bicep therefore query ``customMetrics``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from remediation.model import classified, coverage_percent, covered

if TYPE_CHECKING:  # pragma: no cover - types only; the imports happen in publish()
    from opentelemetry.sdk.metrics.export import MetricReader

    from remediation.audit import AuditRecord
    from remediation.runs import BatchResult, Run

log = logging.getLogger("remediation")

CONNECTION_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
SERVICE_NAME = "defender-coverage-remediator"  # becomes the cloud role name
METER = "remediation"

# Per subscription, from each sweep: gauges (a level at the sweep, not an increment).
COVERAGE = "remediation.coverage_percent"
VMS = "remediation.vms"
ELIGIBLE_RUNNING = "remediation.eligible_running"
COVERED = "remediation.covered"
TO_INSTALL = "remediation.to_install"
BLOCKED = "remediation.blocked"
ERRORS = "remediation.errors"
INSTALL_FAILURES = "remediation.install_failures"
# Per run: a histogram (a distribution over runs; Azure Monitor keeps sum, count, min, max).
SWEEP_DURATION = "remediation.sweep_duration"

GAUGES: Mapping[str, tuple[str, str, str]] = {
    # name: (SubscriptionFigures field, unit, description)
    COVERAGE: ("coverage_percent", "%", "Eligible running VMs decided compliant, in percent"),
    VMS: ("vms", "{vm}", "VMs the sweep looked at"),
    ELIGIBLE_RUNNING: ("eligible_running", "{vm}", "VMs that should run MDE now"),
    COVERED: ("covered", "{vm}", "Eligible running VMs decided compliant"),
    TO_INSTALL: ("to_install", "{vm}", "VMs the sweep decided to install MDE on"),
    BLOCKED: ("blocked", "{vm}", "VMs blocked by settings, the cap or a Failed extension"),
    ERRORS: ("errors", "{vm}", "VMs whose decision is error"),
    INSTALL_FAILURES: ("install_failures", "{vm}", "VMs whose MDE extension is Failed"),
}
NAMES: tuple[str, ...] = (*GAUGES, SWEEP_DURATION)


@dataclass(frozen=True, slots=True)
class SubscriptionFigures:
    """One subscription's figures from one sweep."""

    subscription: str
    vms: int = 0
    eligible_running: int = 0
    covered: int = 0
    to_install: int = 0
    blocked: int = 0
    errors: int = 0
    install_failures: int = 0

    @property
    def coverage_percent(self) -> float | None:
        return coverage_percent(self.covered, self.eligible_running)


def figures_from_records(records: Iterable[AuditRecord]) -> list[SubscriptionFigures]:
    """Per-subscription figures from the audit records of one run, sorted by subscription.

    Each VM counts once, with its latest record (should records of later installs be
    passed too, they replace the sweep's row). Coverage is the run summary's: covered
    among the records marked ``eligible_running``; to install, blocked and errors count
    every VM with that decision.
    """
    latest: dict[str, AuditRecord] = {}
    for record in records:
        if not record.vm or record.decision == "ignored":
            continue
        key = record.vm.lower()
        if key in latest and not classified(record) and classified(latest[key]):
            continue  # a poisoned install or an outage says nothing of what the VM is
        if key not in latest or record.time >= latest[key].time:
            latest[key] = record
    tallies: dict[str, dict[str, int]] = {}
    for record in latest.values():
        count(tallies, record)
    return figures_of(tallies)


def count(tallies: dict[str, dict[str, int]], record: AuditRecord) -> None:
    """Add one machine's record to its subscription's tally (a sweep counts each once)."""
    tally = tallies.setdefault(record.subscription.lower(), dict.fromkeys(_FIELDS, 0))
    tally["vms"] += 1
    tally["eligible_running"] += record.eligible_running
    tally["covered"] += covered(record.decision, record.eligible_running)
    column = _COLUMN.get(record.decision)
    if column is not None:
        tally[column] += 1
    if _mde_failed(record):
        tally["install_failures"] += 1


def figures_of(tallies: Mapping[str, Mapping[str, int]]) -> list[SubscriptionFigures]:
    """The tallies as figures, sorted by subscription (a run's summary keeps its tallies)."""
    return [
        SubscriptionFigures(subscription, **{name: int(tally.get(name, 0)) for name in _FIELDS})
        for subscription, tally in sorted(tallies.items())
    ]


_FIELDS = (
    "vms",
    "eligible_running",
    "covered",
    "to_install",
    "blocked",
    "errors",
    "install_failures",
)
_COLUMN = {"install": "to_install", "blocked": "blocked", "error": "errors"}


def _mde_failed(record: AuditRecord) -> bool:
    """The record shows a Failed MDE extension: an install that ended Failed, a planned
    reinstall (the extension was found Failed), or the policy giving up after
    REMEDIATION_MAX_REINSTALLS (its only 'error' decision, outcome 'none')."""
    return (
        record.install_state == "Failed"
        or any(action.startswith("reinstall:") for action in record.actions)
        or (record.decision == "error" and record.outcome == "none")
    )


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this app sends metrics: Application Insights is set up for it."""
    return bool((os.environ if environ is None else environ).get(CONNECTION_SETTING, "").strip())


def publish(
    figures: Sequence[SubscriptionFigures],
    *,
    run_id: str,
    mode: str,
    duration_seconds: float,
    reader: MetricReader | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Record one sweep's figures: one gauge value per metric and subscription
    (attributes ``subscription``, ``mode``, ``run_id``) and the run's duration
    (attributes ``mode``, ``run_id``). Returns whether anything was recorded.

    With ``reader`` the caller owns the reader (tests pass an InMemoryMetricReader).
    Without it the Azure Monitor exporter is used when the connection string is set,
    and is flushed and shut down before this returns; with Entra-only ingestion the
    exporter builds its ManagedIdentityCredential from
    ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD`` (the exporter's
    README, "credential"). Telemetry is best effort: a failure is logged, never raised,
    so it cannot fail the sweep batch that finished the run (the audit table and the
    run's summary remain the record).
    """
    environ = os.environ if environ is None else environ
    connection = environ.get(CONNECTION_SETTING, "").strip()
    if reader is None and not connection:
        return False
    try:
        _record(figures, run_id, mode, duration_seconds, reader=reader, connection=connection)
    except Exception as error:  # best effort, see the docstring
        log.warning("metrics: run=%s not published: %s", run_id, error)
        return False
    return True


def _record(
    figures: Sequence[SubscriptionFigures],
    run_id: str,
    mode: str,
    duration_seconds: float,
    *,
    reader: MetricReader | None,
    connection: str,
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - cold start
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    owned = reader is None
    if reader is None:
        reader = _exporting_reader(connection)
    # A provider of our own, not the global one: nothing else in the worker is touched,
    # and shutting it down flushes exactly this sweep's points.
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": SERVICE_NAME}),
        shutdown_on_exit=False,
    )
    try:
        meter = provider.get_meter(METER)
        for name, (field, unit, description) in GAUGES.items():
            gauge = meter.create_gauge(name, unit=unit, description=description)
            for figure in figures:
                value = getattr(figure, field)
                if value is None:  # 0 of 0: nothing was measured, so no point (never 100)
                    continue
                attributes = {"subscription": figure.subscription, "mode": mode, "run_id": run_id}
                gauge.set(value, attributes=attributes)
        duration = meter.create_histogram(
            SWEEP_DURATION, unit="s", description="How long a sweep run took, start to finish"
        )
        duration.record(duration_seconds, attributes={"mode": mode, "run_id": run_id})
    finally:
        if owned:
            provider.shutdown()  # exports once, then stops the exporter's thread


def _exporting_reader(connection: str) -> MetricReader:
    from azure.monitor.opentelemetry.exporter import (  # noqa: PLC0415 - cold start
        AzureMonitorMetricExporter,
    )
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        PeriodicExportingMetricReader,
    )

    exporter = AzureMonitorMetricExporter(connection_string=connection)
    # No periodic export: publish() shuts the provider down, which exports once.
    return PeriodicExportingMetricReader(exporter, export_interval_millis=24 * 3600 * 1000)


def publish_run(run: Run, results: Callable[[], Iterable[BatchResult]]) -> None:
    """A finished run's per-subscription figures to Azure Monitor, where Application
    Insights is set up (only then are its batches' results read): from the tallies its
    batches kept of every machine (the log has rows for changes only). Only what the run
    measured: a subscription it could not assess emits nothing."""
    if not enabled():
        return
    duration = float(run.summary.get("duration_seconds", 0))
    figures = run_figures(run, results())
    publish(figures, run_id=run.run_id, mode=run.mode, duration_seconds=duration)


def run_figures(run: Run, results: Iterable[BatchResult]) -> list[SubscriptionFigures]:
    """The figures of the subscriptions a finished run assessed, from its batches."""
    tallies = {s: t for result in results for s, t in result.figures.items()}
    return [f for f in figures_of(tallies) if f.subscription in run.assessed]
