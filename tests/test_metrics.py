"""Sweep metrics: figures from a run's audit records, read back through OpenTelemetry's
InMemoryMetricReader, and what the Azure Monitor exporter sends (to a loopback server)."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from remediation import metrics
from remediation.audit import AuditRecord
from remediation.metrics import SubscriptionFigures

ROOT = Path(__file__).resolve().parent.parent
SUB_A = "11111111-1111-1111-1111-111111111111"
SUB_B = "22222222-2222-2222-2222-222222222222"
START = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)

# The names as docs/monitoring.md and the workbook spell them, written out by hand.
EXPECTED_NAMES = {
    "remediation.coverage_percent",
    "remediation.vms",
    "remediation.eligible_running",
    "remediation.covered",
    "remediation.to_install",
    "remediation.blocked",
    "remediation.errors",
    "remediation.install_failures",
    "remediation.sweep_duration",
}


def _vm(subscription: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/rg/providers/"
        f"Microsoft.Compute/virtualMachines/{name}"
    )


def _record(
    subscription, name, decision, outcome="none", eligible=False, minutes=0, **extra
) -> AuditRecord:
    extra.setdefault("eligible_running", eligible)
    return AuditRecord(
        vm=_vm(subscription, name),
        subscription=subscription,
        trigger=extra.pop("trigger", "sweep"),
        decision=decision,
        reason="",
        mode="enforce",
        outcome=outcome,
        run_id="20260301T020000Z-abcdef12",
        time=START + timedelta(minutes=minutes),
        **extra,
    )


def _points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict, object]]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[tuple[dict, object]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [
                    (dict(point.attributes or {}), point) for point in metric.data.data_points
                ]
    return found


# --- Figures from a run's records ---------------------------------------------------------
def test_each_decision_lands_in_its_column_and_each_vm_counts_once():
    records = [
        _record(SUB_A, "web-01", "compliant", eligible_running=True),
        _record(SUB_A, "web-02", "compliant", eligible_running=True),
        _record(SUB_A, "web-03", "install", "queued", True, actions=("install:MDE.Linux",)),
        _record(SUB_A, "web-04", "install", "queued", True, actions=("reinstall:MDE.Linux",)),
        _record(SUB_A, "web-05", "blocked", eligible_running=True),
        _record(SUB_A, "web-06", "error", "none", True),  # Failed after the reinstalls allowed
        _record(SUB_A, "web-07", "error", "failed"),  # the sweep could not read it
        _record(SUB_A, "web-08", "defer"),
        _record(SUB_A, "web-09", "exclude"),
        _record(SUB_A, "web-10", "unsupported"),
        _record(SUB_A, "", "ignored", "ignored"),
        # defer: a stopped VM, not counted in coverage (eligible_running False).
        # web-03's queued install, later, ended Failed: its latest record counts.
        _record(
            SUB_A,
            "WEB-03",
            "error",
            "failed",
            minutes=30,
            eligible_running=True,
            trigger="queue",
            install_state="Failed",
            install_code=4,
        ),
        _record(SUB_B, "db-01", "install", "reported", True, actions=("install:MDE.Windows",)),
    ]
    assert metrics.figures_from_records(records) == [
        SubscriptionFigures(
            SUB_A,
            vms=10,
            eligible_running=6,  # web-01 to web-06, as their records say
            covered=2,
            to_install=1,
            blocked=1,
            errors=3,
            install_failures=3,
        ),
        SubscriptionFigures(
            SUB_B,
            vms=1,
            eligible_running=1,
            covered=0,
            to_install=1,
            blocked=0,
            errors=0,
            install_failures=0,
        ),
    ]


def test_an_older_record_does_not_replace_a_newer_one():
    newer = _record(SUB_A, "web-01", "compliant", eligible=True, minutes=10)
    older = _record(SUB_A, "web-01", "install", "queued", eligible=True, minutes=0)
    assert metrics.figures_from_records([newer, older]) == [
        SubscriptionFigures(SUB_A, vms=1, eligible_running=1, covered=1)
    ]


def test_coverage_is_covered_over_eligible_and_none_when_nothing_is_eligible():
    assert SubscriptionFigures(SUB_A, eligible_running=3, covered=2).coverage_percent == 66.67
    assert SubscriptionFigures(SUB_A, eligible_running=4, covered=4).coverage_percent == 100.0
    assert SubscriptionFigures(SUB_A, vms=5).coverage_percent is None  # 0 of 0 is n/a


# --- Publishing ---------------------------------------------------------------------------
def test_a_subscription_with_nothing_eligible_emits_no_coverage_point_never_100():
    reader = InMemoryMetricReader()
    figures = [SubscriptionFigures(SUB_A, vms=3), SubscriptionFigures(SUB_B, 2, 2, 1)]
    metrics.publish(figures, run_id="r", mode="report", duration_seconds=1, reader=reader)
    data = reader.get_metrics_data()
    assert data is not None
    coverage = [
        (dict(point.attributes)["subscription"], point.value)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "remediation.coverage_percent"
        for point in metric.data.data_points
    ]
    assert coverage == [(SUB_B, 50.0)]


def test_the_names_are_the_documented_ones():
    assert set(metrics.NAMES) == EXPECTED_NAMES
    assert len(metrics.NAMES) == len(EXPECTED_NAMES)


def test_published_gauges_carry_each_subscriptions_values_and_attributes():
    reader = InMemoryMetricReader()
    figures = [
        SubscriptionFigures(SUB_A, 12, 10, 9, 1, 0, 0, 1),
        SubscriptionFigures(SUB_B, 4, 2, 1, 0, 1, 1, 0),
    ]
    published = metrics.publish(
        figures, run_id="run-1", mode="report", duration_seconds=42.5, reader=reader
    )
    assert published is True
    points = _points(reader)
    assert set(points) == EXPECTED_NAMES
    expected = {
        "remediation.coverage_percent": {SUB_A: 90.0, SUB_B: 50.0},
        "remediation.vms": {SUB_A: 12, SUB_B: 4},
        "remediation.eligible_running": {SUB_A: 10, SUB_B: 2},
        "remediation.covered": {SUB_A: 9, SUB_B: 1},
        "remediation.to_install": {SUB_A: 1, SUB_B: 0},
        "remediation.blocked": {SUB_A: 0, SUB_B: 1},
        "remediation.errors": {SUB_A: 0, SUB_B: 1},
        "remediation.install_failures": {SUB_A: 1, SUB_B: 0},
    }
    for name, values in expected.items():
        seen = {attributes["subscription"]: point.value for attributes, point in points[name]}
        assert seen == values, name
        for attributes, _ in points[name]:
            assert attributes == {
                "subscription": attributes["subscription"],
                "mode": "report",
                "run_id": "run-1",
            }


def test_the_sweep_duration_is_one_histogram_point_per_run():
    reader = InMemoryMetricReader()
    metrics.publish(
        [SubscriptionFigures(SUB_A)],
        run_id="run-2",
        mode="enforce",
        duration_seconds=61.25,
        reader=reader,
    )
    [(attributes, point)] = _points(reader)["remediation.sweep_duration"]
    assert attributes == {"mode": "enforce", "run_id": "run-2"}
    assert (point.count, point.sum, point.min, point.max) == (1, 61.25, 61.25, 61.25)


def test_units_are_percent_for_coverage_and_seconds_for_the_duration():
    reader = InMemoryMetricReader()
    figures = [SubscriptionFigures(SUB_A, vms=1, eligible_running=1, covered=1)]
    metrics.publish(figures, run_id="r", mode="report", duration_seconds=1, reader=reader)
    data = reader.get_metrics_data()
    assert data is not None
    units = {
        metric.name: metric.unit
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert units["remediation.coverage_percent"] == "%"
    assert units["remediation.sweep_duration"] == "s"
    assert units["remediation.to_install"] == "{vm}"


def test_a_failure_to_publish_is_logged_not_raised(caplog):
    reader = InMemoryMetricReader()
    MeterProvider(metric_readers=[reader], shutdown_on_exit=False)  # the reader is taken
    with caplog.at_level(logging.WARNING, logger="remediation"):
        published = metrics.publish(
            [SubscriptionFigures(SUB_A)],
            run_id="run-3",
            mode="report",
            duration_seconds=1,
            reader=reader,
        )
    assert published is False
    assert "metrics: run=run-3 not published" in caplog.text


def _python(script: str, env: dict[str, str], isolate: bool = False) -> str:
    """Run a script in a fresh interpreter (module state and sys.modules of its own);
    with ``isolate``, in a network namespace of its own where only loopback exists."""
    command = [sys.executable, "-c", textwrap.dedent(script)]
    if (
        isolate
        and shutil.which("unshare")
        and shutil.which("ip")
        and subprocess.run(["unshare", "-rn", "true"], check=False).returncode == 0
    ):
        command = ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _environment(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("APPLICATIONINSIGHTS_")}
    return keep | {"PYTHONPATH": str(ROOT)} | extra


def test_importing_the_module_or_publishing_without_a_connection_string_loads_no_telemetry():
    out = _python(
        """
        import json, sys
        from remediation import metrics
        loaded_on_import = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor")))
        published = metrics.publish(
            [metrics.SubscriptionFigures("s")], run_id="r", mode="report",
            duration_seconds=1, environ={},
        )
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "azure.monitor")))
        print(json.dumps({"on_import": loaded_on_import, "published": published, "after": loaded}))
        """,
        _environment(),
    )
    assert json.loads(out) == {"on_import": [], "published": False, "after": []}


LOOPBACK_INGESTION = """
    import json

    from tests.ingestion import serve

    server, received, connection = serve()

    from remediation import metrics

    published = metrics.publish(
        [metrics.SubscriptionFigures("SUB", vms=3, eligible_running=2, covered=1, to_install=1)],
        run_id="run-9", mode="enforce", duration_seconds=7.5,
        environ={"APPLICATIONINSIGHTS_CONNECTION_STRING": connection},
    )
    print(json.dumps({"published": published, "received": received}))
"""


def test_the_exporter_sends_each_metric_with_its_dimensions_to_the_ingestion_endpoint():
    # Statsbeat (the exporter's own usage telemetry) goes to a Microsoft host: off here,
    # and where the machine allows it the script runs with no network but loopback.
    out = json.loads(
        _python(
            LOOPBACK_INGESTION,
            _environment(APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true"),
            isolate=True,
        )
    )
    assert out["published"] is True
    sent = {}
    for item in out["received"]:
        base = item["data"]["baseData"]
        [metric] = base["metrics"]
        sent[metric["name"]] = (metric["value"], base["properties"])
    assert set(sent) == EXPECTED_NAMES
    assert sent["remediation.coverage_percent"] == (
        50.0,
        {"subscription": "SUB", "mode": "enforce", "run_id": "run-9"},
    )
    assert sent["remediation.to_install"][0] == 1
    assert sent["remediation.sweep_duration"] == (7.5, {"mode": "enforce", "run_id": "run-9"})
    roles = {item["tags"]["ai.cloud.role"] for item in out["received"]}
    assert roles == {"defender-coverage-remediator"}


def test_a_poisoned_install_after_the_sweep_does_not_drop_its_vm_from_the_figure():
    records = [
        _record(SUB_A, "vm1", "compliant", eligible=True, platform="ubuntu-22.04"),
        _record(SUB_A, "vm2", "install", "queued", eligible=True, platform="ubuntu-22.04"),
        # every retry failed: a record with no classification, later than the sweep's
        _record(SUB_A, "vm2", "error", "poisoned", minutes=30, trigger="queue"),
    ]
    [figures] = metrics.figures_from_records(records)
    assert (figures.covered, figures.eligible_running, figures.coverage_percent) == (1, 2, 50.0)
