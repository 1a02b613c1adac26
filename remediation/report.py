"""The coverage report: one self-contained HTML page (no scripts, fonts or images from
anywhere) built from the remediation log: the latest sweep, what happened since, the
coverage trend of the last 30 days, and the items that need a human."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape

from remediation.audit import AuditRecord, Query
from remediation.service import Services
from remediation.sweep import Run, RunStore

CATEGORIES = {
    "compliant": "covered",
    "install": "to install",
    "defer": "deferred",
    "exclude": "excluded",
    "unsupported": "unsupported",
    "blocked": "blocked",
    "error": "error",
}
NEEDS_A_HUMAN = ("error", "blocked", "unsupported")


@dataclass
class Coverage:
    generated: datetime
    run: Run | None
    latest: dict[str, AuditRecord] = field(default_factory=dict)  # VM id -> its latest state
    trend: list[tuple[datetime, float]] = field(default_factory=list)

    def counts(self, by: str) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for record in self.latest.values():
            key = record.subscription if by == "subscription" else (record.platform or "unknown")
            table[key][CATEGORIES.get(record.decision, record.decision)] += 1
        return dict(sorted(table.items()))

    def human(self) -> list[AuditRecord]:
        order = {decision: index for index, decision in enumerate(NEEDS_A_HUMAN)}
        items = [r for r in self.latest.values() if r.decision in order]
        return sorted(items, key=lambda r: (order[r.decision], r.subscription, r.vm.lower()))


def gather(services: Services, now: datetime | None = None) -> Coverage:
    """The latest finished sweep, then every event and install since, VM by VM."""
    now = now or datetime.now(UTC)
    runs = RunStore(services.audit.table).runs_since(now - timedelta(days=30))
    done = [run for run in runs if run.status == "done"]
    coverage = Coverage(now, done[0] if done else None)
    coverage.trend = sorted(
        (run.started, float(run.summary.get("coverage_percent", 0))) for run in done
    )
    if coverage.run is None:
        return coverage
    since = coverage.run.started
    records: list[AuditRecord] = []
    token = ""
    while True:  # the run's rows, then what happened after it, oldest applied first
        page, token = services.audit.search(
            Query(since=since, until=now, limit=1000, continuation=token)
        )
        records += page
        if not token:
            break
    for record in sorted(records, key=lambda r: r.time):
        if not record.vm or record.decision == "ignored":
            continue
        if record.run_id != coverage.run.run_id and record.trigger not in {"event", "queue", "cli"}:
            continue  # another sweep's rows
        if record.trigger == "queue" and record.outcome in {"skipped", "deferred"}:
            continue  # the VM's state is what the sweep or an event said
        state = _covered(record) if record.outcome == "succeeded" else record
        coverage.latest[record.vm.lower()] = state
    return coverage


def _covered(record: AuditRecord) -> AuditRecord:
    from dataclasses import replace  # noqa: PLC0415

    return replace(record, decision="compliant", reason="MDE was installed and is Succeeded.")


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1b1b}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}td.text{text-align:left;max-width:50em}
.big{font-size:2.4em;font-weight:600}.muted{color:#666}
"""


def render(coverage: Coverage) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Defender for Endpoint coverage</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Defender for Endpoint coverage</h1>",
        f'<p class="muted">Generated {coverage.generated:%Y-%m-%d %H:%M} UTC',
    ]
    if coverage.run is None:
        parts += [
            ".</p><p>No sweep has finished yet: start one with POST /api/sweep.</p></body></html>"
        ]
        return "\n".join(parts)
    run = coverage.run
    eligible = int(run.summary.get("eligible_running", 0))
    covered = int(run.summary.get("covered", 0))
    parts += [
        f" from sweep {escape(run.run_id)} ({escape(run.mode)}) and the events since.</p>",
        f'<p><span class="big" id="coverage">{run.summary.get("coverage_percent", 0)}%</span> '
        f"of eligible running VMs were covered at the sweep ({covered} of {eligible}).</p>",
    ]
    for title, by in (("By subscription", "subscription"), ("By platform", "platform")):
        parts += [f"<h2>{title}</h2>", _table(coverage.counts(by), by)]
    parts += ["<h2>Coverage, last 30 days</h2>", _chart(coverage.trend)]
    human = coverage.human()
    parts += [f'<h2>Needs a human (<span id="human-count">{len(human)}</span>)</h2>']
    if human:
        parts.append(
            '<table id="human"><tr><th>VM</th><th>decision</th><th>platform</th><th>why</th><th>what to do</th></tr>'
        )
        for record in human:
            parts.append(
                f"<tr><td>{escape(record.vm)}</td><td>{escape(record.decision)}</td><td>{escape(record.platform)}</td>"
                f'<td class="text">{escape(record.reason)}</td><td class="text">{escape(record.hint)}</td></tr>'
            )
        parts.append("</table>")
    else:
        parts.append("<p>Nothing: every VM is covered, excluded or on its way.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(rows: dict[str, Counter[str]], by: str) -> str:
    columns = list(CATEGORIES.values())
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for key, counts in rows.items():
        cells = "".join(f'<td data-category="{escape(c)}">{counts.get(c, 0)}</td>' for c in columns)
        body.append(
            f'<tr data-{by}="{escape(key)}"><td>{escape(key)}</td>{cells}<td>{sum(counts.values())}</td></tr>'
        )
    return f'<table id="by-{by}"><tr><th>{by}</th>{head}<th>VMs</th></tr>{"".join(body)}</table>'


def _chart(points: list[tuple[datetime, float]]) -> str:
    """An inline SVG line: no script, no external asset."""
    if not points:
        return "<p>No finished sweep in the last 30 days.</p>"
    width, height, pad = 640, 200, 30
    start = points[0][0]
    span = max((points[-1][0] - start).total_seconds(), 1.0)

    def x(moment: datetime) -> float:
        return pad + (width - 2 * pad) * (moment - start).total_seconds() / span

    def y(value: float) -> float:
        return height - pad - (height - 2 * pad) * value / 100

    line = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in points)
    dots = "".join(
        f'<circle cx="{x(m):.1f}" cy="{y(v):.1f}" r="3"><title>{m:%Y-%m-%d %H:%M}: {v}%</title></circle>'
        for m, v in points
    )
    return (
        f'<svg id="trend" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="coverage over the last 30 days">'
        f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{y(100)}" x2="{width - pad}" y2="{y(100)}" stroke="#ddd"/>'
        f'<text x="2" y="{y(100) + 4}" font-size="10">100%</text><text x="2" y="{y(0) + 4}" font-size="10">0%</text>'
        f'<polyline fill="none" stroke="#0a64a4" stroke-width="2" points="{line}"/>{dots}</svg>'
    )
