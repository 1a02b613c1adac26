"""The coverage report: one self-contained HTML page (no scripts, fonts or images from
anywhere) built from the remediation log.

What the page shows, and the choices behind it:
- The estate is every subscription in scope (REMEDIATION_SUBSCRIPTIONS and those under
  REMEDIATION_MANAGEMENT_GROUPS), shown with its display name, and grouped by management
  group when the scope is given by groups. Each is shown
  as of the start of the latest finished sweep that covered it, plus every event and
  install since; a partial sweep (``sweep --subscription X``) moves only X's "as of".
  A subscription that no finished sweep of the last 30 days covered is shown as "not
  swept yet" and is not counted.
- The headline is the whole estate's latest state: eligible running VMs covered, each
  VM counted as its latest record says (``eligible_running``, the sweep's own test:
  ``Classification.eligible_running``). Rows written before that field existed count as
  not eligible until the next sweep rewrites them.
- The trend has one point per full-scope sweep of the last 30 days, not one line per
  subscription: a run's summary holds its numbers for all its subscriptions together,
  so only a run that covered the whole scope is comparable with the next. A run is
  full-scope when the nightly timer started it (it always sweeps the whole scope of its
  time) or when it covered every subscription in scope now.
- Next to extension coverage, "verified by Defender for Endpoint": eligible running VMs
  whose latest record is covered and ``verification`` verified (README, Verification).
  VMs Defender for Endpoint does not see (``not-seen``) or sees unhealthy need a human,
  and "Needs a human" shows each VM's last test alert.
- Machines are Azure VMs and Arc machines ("kind"). What the app does not cover is said
  too: subscriptions not receiving events (joined through a group, not wired yet) and
  uniform scale sets, whose instances take extensions from the scale set's model.
- The page sends nothing and loads nothing; ``HEADERS`` are the response headers any
  server of it sends (a CSP that allows only its own stylesheet, by hash).
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html import escape

from remediation.audit import GONE, AuditRecord, Query
from remediation.model import classified, coverage_percent, covered, percent_text
from remediation.runs import Run, RunStatus
from remediation.scope import WIRE_COMMAND, Scope
from remediation.service import Services

WINDOW = timedelta(days=30)
HUMAN_ROWS = 200  # rows of "Needs a human" on the page; the rest are counted
CATEGORIES = {
    "compliant": "has MDE",  # the extension is Succeeded, running or not: not "covered"
    "install": "to install",
    "defer": "deferred",
    "exclude": "excluded",
    "unsupported": "unsupported",
    "blocked": "blocked",
    "error": "error",
    "undecided": "unavailable",  # Azure did not answer: an outage, the next check decides
}
NEEDS_A_HUMAN = ("error", "blocked", "unsupported")  # decisions
NOT_VERIFIED = ("not-seen", "unhealthy")  # verifications of covered VMs


@dataclass(frozen=True)
class Point:
    """One full-scope sweep on the trend."""

    started: datetime
    percent: float
    covered: int
    eligible: int
    run_id: str


@dataclass
class Coverage:
    generated: datetime
    scope: tuple[str, ...]  # the subscriptions in scope, sorted
    as_of: dict[str, Run] = field(default_factory=dict)  # subscription -> its latest sweep
    latest: dict[str, AuditRecord] = field(default_factory=dict)  # VM id -> its latest state
    trend: list[Point] = field(default_factory=list)
    tests: dict[str, AuditRecord] = field(default_factory=dict)  # VM id -> its last test alert
    names: Scope = field(default_factory=Scope)  # display names, groups, wiring
    uniform: tuple[int, int] = (0, 0)  # uniform scale sets, instances: the last full sweep's
    incomplete: Run | None = None  # the latest run, when it did not assess everything

    @property
    def not_swept(self) -> list[str]:
        return [s for s in self.scope if s not in self.as_of]

    def counts(self, by: str) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for record in self.latest.values():
            table[_key(record, by)][CATEGORIES.get(record.decision, record.decision)] += 1
        return dict(sorted(table.items()))

    def headline(self, subscription: str = "") -> tuple[int, int]:
        """(covered, eligible running) over the estate, or one subscription."""
        records = [
            r for r in self.latest.values() if not subscription or r.subscription == subscription
        ]
        eligible = [r for r in records if r.eligible_running]
        return sum(covered(r.decision, r.eligible_running) for r in eligible), len(eligible)

    def verified(self, subscription: str = "") -> tuple[int, int]:
        """(verified by Defender for Endpoint, eligible running), like ``headline``."""
        records = [
            r
            for r in self.latest.values()
            if r.eligible_running and (not subscription or r.subscription == subscription)
        ]
        return sum(_verified(r) for r in records), len(records)

    def verified_by(self, by: str) -> dict[str, int]:
        table: Counter[str] = Counter()
        for r in self.latest.values():
            table[_key(r, by)] += _verified(r)
        return dict(table)

    @property
    def verifying(self) -> bool:
        """Did the sweeps shown read Defender for Endpoint's device list?"""
        return any(r.verification not in {"", "unchecked"} for r in self.latest.values())

    def human(self) -> list[AuditRecord]:
        order = {need: index for index, need in enumerate(NEEDS_A_HUMAN + NOT_VERIFIED)}
        items = [r for r in self.latest.values() if need(r)]
        return sorted(items, key=lambda r: (order[need(r)], r.subscription, r.vm.lower()))


def _key(record: AuditRecord, by: str) -> str:
    if by == "subscription":
        return record.subscription
    if by == "kind":
        return record.kind or "vm"
    return record.platform or "unknown"


def _verified(record: AuditRecord) -> bool:
    """Counted as verified: eligible running, covered, and seen onboarded and Active."""
    return covered(record.decision, record.eligible_running) and (record.verification == "verified")


def need(record: AuditRecord) -> str:
    """Why a VM needs a human: its decision, or, covered and eligible running, what
    Defender for Endpoint says of it."""
    if record.decision in NEEDS_A_HUMAN:
        return record.decision
    counted = covered(record.decision, record.eligible_running)
    return record.verification if counted and record.verification in NOT_VERIFIED else ""


# --- Gathering: the shell -------------------------------------------------------------
def gather(services: Services, now: datetime | None = None) -> Coverage:
    """The runs of the last 30 days, then each swept subscription's records since its
    latest finished sweep, VM by VM."""
    now = now or datetime.now(UTC)
    names = services.scope()
    scope = tuple(sorted(names.ids))
    runs = services.runs.runs_since(now - WINDOW)
    finished = sorted((r for r in runs if r.status != RunStatus.RUNNING), key=lambda r: r.started)
    done = [run for run in finished if run.status == RunStatus.DONE]
    full = [run for run in done if full_scope(run, scope)]
    coverage = Coverage(
        now,
        scope,
        latest_sweeps(finished, scope),
        trend=trend(done, scope),
        names=names,
        uniform=full[-1].uniform if full else (0, 0),
        incomplete=finished[-1] if finished and finished[-1].status != RunStatus.DONE else None,
    )
    if coverage.as_of:
        oldest = min(run.started for run in coverage.as_of.values())
        records = _records(services, oldest, now)
        baselines = [
            state
            for subscription in coverage.as_of
            for state in services.audit.baselines.read(subscription).values()
        ]
        coverage.latest = latest_state(records, coverage.as_of, baselines)
        coverage.tests = last_tests(records)
    return coverage


def _records(services: Services, since: datetime, until: datetime) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    token = ""
    while True:
        page, token = services.audit.search(
            Query(since=since, until=until, limit=1000, continuation=token)
        )
        records += page
        if not token:
            return records


# --- Deciding what the page shows: pure ------------------------------------------------
def latest_sweeps(finished: Sequence[Run], scope: Sequence[str]) -> dict[str, Run]:
    """Each subscription in scope -> the finished run that assessed it completely last
    (by start). A partial run counts for the subscriptions it assessed: the others keep
    the figures of the run before, with that run's time."""
    latest: dict[str, Run] = {}
    for run in sorted(finished, key=lambda run: run.started):
        for subscription in run.assessed:
            if subscription in scope:
                latest[subscription] = run
    return latest


def full_scope(run: Run, scope: Sequence[str]) -> bool:
    return run.trigger == "sweep" or {s.lower() for s in run.subscriptions} >= set(scope)


def trend(done: Sequence[Run], scope: Sequence[str]) -> list[Point]:
    """One point per full-scope run that measured something: a run with no eligible
    running VM (0 of 0) has no figure to plot, never 100%."""
    points = []
    for run in done:
        percent = run.summary.get("coverage_percent")
        if full_scope(run, scope) and isinstance(percent, int | float):
            points.append(
                Point(
                    run.started,
                    float(percent),
                    int(run.summary.get("covered", 0)),
                    int(run.summary.get("eligible_running", 0)),
                    run.run_id,
                )
            )
    return sorted(points, key=lambda point: point.started)


def latest_state(
    records: Iterable[AuditRecord],
    as_of: dict[str, Run],
    baselines: Iterable[AuditRecord] = (),
) -> dict[str, AuditRecord]:
    """VM id -> its latest state: its state as the sweeps last saw it (its baseline: a
    sweep writes a row only when that changes), then the rows of its subscription's
    latest sweep and the events and installs since, oldest applied first. Rows of other
    sweeps, of subscriptions out of scope or never swept, and anything older are left
    out; a machine that sweep found gone is gone."""
    latest: dict[str, AuditRecord] = {}
    for state in baselines:
        if state.subscription.lower() in as_of:
            latest[state.vm.lower()] = state
    for record in sorted(records, key=lambda r: r.time):
        run = as_of.get(record.subscription.lower())
        if run is None or not record.vm or record.decision == "ignored" or record.test_alert:
            continue  # a test alert's record says nothing new of the VM's coverage
        if record.time < run.started:
            continue
        if record.run_id and record.trigger != "queue" and record.run_id != run.run_id:
            continue  # another sweep's row (a sweep's rows carry its run id; installs too)
        if record.trigger == "queue" and record.outcome in {"skipped", "deferred"}:
            continue  # the VM's state is what the sweep or an event said
        if record.decision == GONE:
            latest.pop(record.vm.lower(), None)
            continue
        if not classified(record) and record.vm.lower() in latest:
            continue  # an outage or a poisoned install decided nothing: the last state stands
        state = _covered(record) if record.outcome == "succeeded" else record
        latest[record.vm.lower()] = state
    return latest


def last_tests(records: Iterable[AuditRecord]) -> dict[str, AuditRecord]:
    """VM id -> the record that ended its latest test alert."""
    tests: dict[str, AuditRecord] = {}
    for record in sorted(records, key=lambda r: r.time):
        if record.test_alert and record.vm:
            tests[record.vm.lower()] = record
    return tests


def _covered(record: AuditRecord) -> AuditRecord:
    return replace(record, decision="compliant", reason="MDE was installed and is Succeeded.")


# --- The page ---------------------------------------------------------------------------
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#1b1b1b}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
.num,td[data-category],td[data-coverage],td[data-verified]{text-align:right}
#human{width:100%}td.text{overflow-wrap:anywhere}.id{color:#666;font-size:.85em}
td.machine{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}svg{max-width:100%;height:auto}
code,p,li{overflow-wrap:anywhere}
td.none{color:#666;font-style:italic}
.big{font-size:2.4em;font-weight:600}.muted{color:#666}
code{background:#f3f3f3;padding:0 .2em}
.warn{border-left:4px solid #b35900;padding:0 1em;background:#fff6ec}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _when(moment: datetime) -> str:
    return f'<time datetime="{moment.isoformat()}">{moment:%Y-%m-%d %H:%M}</time> UTC'


def _percent(value: float | None) -> str:
    return percent_text(value)


def render(coverage: Coverage, human_rows: int = HUMAN_ROWS) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Defender for Endpoint coverage</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Defender for Endpoint coverage</h1>",
        f'<p class="muted">Generated {_when(coverage.generated)}',
    ]
    if not coverage.as_of:
        parts += [
            ".</p><p>No sweep has assessed a subscription yet: start one with "
            "<code>python -m remediation sweep</code> or POST /api/sweep.</p>",
            *_incomplete(coverage),
            "</body></html>",
        ]
        return "\n".join(parts)
    covered, eligible = coverage.headline()
    swept = len(coverage.scope) - len(coverage.not_swept)
    parts += [
        " from each subscription's latest finished sweep and the events since.</p>",
        f'<p><span class="big" id="coverage">{_percent(coverage_percent(covered, eligible))}</span> '
        f'of eligible running VMs are covered (<span id="covered">{covered}</span> of '
        f'<span id="eligible">{eligible}</span>) in the {swept} swept subscription'
        f"{'' if swept == 1 else 's'} of {len(coverage.scope)} in scope.</p>",
        *_incomplete(coverage),
    ]
    if coverage.verifying:
        seen, _ = coverage.verified()
        parts.append(
            f'<p><span class="big" id="verified">{_percent(coverage_percent(seen, eligible))}'
            f'</span> verified by Defender for Endpoint (<span id="verified-count">{seen}'
            "</span> of them onboarded and Active in its device list).</p>"
        )
    else:
        parts.append(
            '<p id="verification-off" class="muted">Not verified by Defender for Endpoint: '
            "set REMEDIATION_MDE_API to check each covered VM against its device list.</p>"
        )
    agentless = sum("no-monitoring-agent" in r.findings for r in coverage.latest.values())
    if agentless:
        parts.append(
            f'<p id="no-monitoring-agent"><span>{agentless}</span> running VMs have no monitoring '
            "agent (Azure Monitor Agent or Log Analytics agent), which Defender for Cloud's "
            "antimalware alerts need: <code>python -m remediation log --finding "
            "no-monitoring-agent</code>.</p>"
        )
    if coverage.not_swept:
        parts.append(
            f'<p id="not-swept">Not swept yet, so not counted: {len(coverage.not_swept)} '
            "subscription(s) (no finished sweep covered them in the last 30 days).</p>"
        )

    def verified(by: str) -> dict[str, int] | None:
        return coverage.verified_by(by) if coverage.verifying else None

    parts += ["<h2>By subscription</h2>", _subscriptions(coverage)]
    parts += [
        "<h2>By kind</h2>",
        _table(coverage.counts("kind"), "kind", verified("kind")),
        "<h2>By platform</h2>",
        _table(coverage.counts("platform"), "platform", verified("platform")),
    ]
    parts += _not_covered(coverage)
    parts += [
        "<h2>Coverage of full sweeps, last 30 days</h2>",
        _chart(coverage.trend, coverage.generated),
    ]
    parts += _human(coverage, human_rows)
    parts.append("</body></html>")
    return "\n".join(parts)


def _subscriptions(coverage: Coverage) -> str:
    columns = list(CATEGORIES.values())
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    counts = coverage.counts("subscription")
    verified = coverage.verified_by("subscription")
    body = []
    group = None
    grouping = any(coverage.names.group_of(s)[0] for s in coverage.scope)
    for subscription in _grouped(coverage):
        here = coverage.names.group_of(subscription)
        if grouping and here != group:
            group = here
            title = f"{here[1]} ({here[0]})" if here[0] else "Listed in REMEDIATION_SUBSCRIPTIONS"
            body.append(
                f'<tr class="group" data-group="{escape(here[0])}"><th colspan="{len(columns) + 5}">'
                f"{escape(title)}</th></tr>"
            )
        run = coverage.as_of.get(subscription)
        label = escape(coverage.names.label(subscription))
        key = f'<tr data-subscription="{escape(subscription)}"><td>{label}</td>'
        if run is None:
            body.append(
                f'{key}<td class="none" colspan="{len(columns) + 4}">not swept yet</td></tr>'
            )
            continue
        row = counts.get(subscription, Counter())
        cells = "".join(f'<td data-category="{escape(c)}">{row.get(c, 0)}</td>' for c in columns)
        share = _percent(coverage_percent(*coverage.headline(subscription)))
        seen = _percent(coverage_percent(*coverage.verified(subscription)))
        if not coverage.verifying:
            seen = "off"  # REMEDIATION_MDE_API is empty: nothing was checked, no figure
        body.append(
            f'{key}<td title="sweep {escape(run.run_id)}">{_when(run.started)}</td>{cells}'
            f'<td class="num">{sum(row.values())}</td><td data-coverage>{share}</td>'
            f'<td data-verified="{verified.get(subscription, 0)}">{seen}</td></tr>'
        )
    return (
        f'<div class="scroll"><table id="by-subscription"><tr><th>subscription</th><th>as of</th>'
        f'{head}<th class="num">VMs</th><th class="num">coverage</th>'
        f'<th class="num">verified by MDE</th></tr>{"".join(body)}</table></div>'
    )


def _incomplete(coverage: Coverage) -> list[str]:
    """The latest run, when it did not assess everything: what it missed and why. The
    subscriptions it missed keep the figures of their last complete sweep."""
    run = coverage.incomplete
    if run is None:
        return []
    missed = [
        f"<li>subscription {escape(coverage.names.label(sid))}: {escape(why)}</li>"
        for sid, why in sorted((run.summary.get("unreadable") or {}).items())
    ]
    missed += [f"<li>{escape(str(why))}</li>" for why in run.summary.get("failed_batches") or []]
    if run.summary.get("abandoned"):
        missed.append(f"<li>closed: {escape(str(run.summary['abandoned']))}</li>")
    return [
        f'<div id="incomplete" class="warn"><p>The latest sweep, {escape(run.run_id)} of '
        f"{_when(run.started)}, is <strong>{escape(run.status)}</strong>: it did not assess "
        "every subscription. Those it missed show their last complete figures, with the "
        "time of the sweep they come from.</p>",
        f"<ul>{''.join(missed)}</ul></div>",
    ]


def _grouped(coverage: Coverage) -> list[str]:
    """The subscriptions in scope, by management group (listed ones first), then by name."""
    names = coverage.names
    return sorted(
        coverage.scope,
        key=lambda s: (
            names.group_of(s)[1].lower(),
            names.group_of(s)[0],
            names.name(s).lower(),
            s,
        ),
    )


def _not_covered(coverage: Coverage) -> list[str]:
    """What this app does not reach, and what covers it instead."""
    parts = []
    unwired = sorted(coverage.names.unwired & set(coverage.scope))
    if unwired:
        items = "".join(
            f"<li>{escape(coverage.names.label(s))}: <code>"
            f"{escape(WIRE_COMMAND.format(subscription=s))}</code></li>"
            for s in unwired
        )
        parts += [
            f'<h2>Not receiving events (<span id="unwired-count">{len(unwired)}</span>)</h2>',
            "<p>These subscriptions joined the scope through a management group, but no Event "
            "Grid subscription delivers their VM and Arc writes to this app yet: the nightly "
            "sweep covers them, new machines wait for it. Wire each with:</p>",
            f'<ul id="unwired">{items}</ul>',
        ]
    scale_sets, instances = coverage.uniform
    if scale_sets:
        parts += [
            "<h2>Not covered by this app</h2>",
            f'<p id="uniform-scale-sets"><span>{instances}</span> instances of {scale_sets} '
            "uniform scale set(s). Their instances take extensions from the scale set's model, "
            "which this app does not change, and Defender for Cloud does not deploy MDE to "
            "them automatically: add MDE.Windows or MDE.Linux to each scale set's model (or "
            "assign Azure Policy's MDE definitions for scale sets), then upgrade the "
            "instances.</p>",
        ]
    return parts


def _table(rows: dict[str, Counter[str]], by: str, verified: dict[str, int] | None) -> str:
    """Counts by kind or platform; ``verified`` None when verification is off."""
    columns = list(CATEGORIES.values())
    head = "".join(f'<th class="num">{escape(c)}</th>' for c in columns)
    body = []
    for key, counts in rows.items():
        cells = "".join(f'<td data-category="{escape(c)}">{counts.get(c, 0)}</td>' for c in columns)
        seen = "off" if verified is None else str(verified.get(key, 0))
        body.append(
            f'<tr data-{by}="{escape(key)}"><td>{escape(key)}</td>{cells}'
            f'<td class="num">{sum(counts.values())}</td>'
            f'<td data-verified="{seen}">{seen}</td></tr>'
        )
    return (
        f'<div class="scroll"><table id="by-{by}"><tr><th>{by}</th>{head}<th class="num">VMs</th>'
        f'<th class="num">verified by MDE</th></tr>{"".join(body)}</table></div>'
    )


def _human(coverage: Coverage, limit: int) -> list[str]:
    human = coverage.human()
    parts = [f'<h2>Needs a human (<span id="human-count">{len(human)}</span>)</h2>']
    if not human:
        return [*parts, "<p>Nothing: every VM is covered, excluded or on its way.</p>"]
    by_need = Counter(need(r) for r in human)
    needs = [n for n in NEEDS_A_HUMAN + NOT_VERIFIED if by_need[n]]
    parts.append("<p>" + ", ".join(f"{by_need[n]} {n}" for n in needs) + "</p>")
    if len(human) > limit:
        oldest = min(run.started for run in coverage.as_of.values())
        days = max(1, math.ceil((coverage.generated - oldest) / timedelta(days=1)))
        commands = "".join(
            f"<li><code>python -m remediation log --{f} {n} --since {days}d --limit 1000"
            f"</code> or <code>GET /api/remediations?{f}={n}&amp;since={days}d</code> "
            "(paged)</li>"
            for n in needs
            for f in ["decision" if n in NEEDS_A_HUMAN else "verification"]
        )
        parts.append(
            f'<p id="human-shown">{limit} of {len(human)} shown. To see all, read the log '
            f"(every record since the oldest sweep shown, newest first; a VM can appear more "
            f"than once):</p><ul>{commands}</ul>"
        )
    parts.append(
        '<div class="scroll"><table id="human"><tr><th>machine</th><th>kind</th><th>decision</th>'
        "<th>platform</th><th>why</th><th>what to do</th><th>last test alert</th></tr>"
    )
    for record in human[:limit]:
        why, what = record.reason, record.hint
        if need(record) in NOT_VERIFIED:
            why, what = record.verification_reason, record.verification_hint
        test = coverage.tests.get(record.vm.lower())
        tested = f"{escape(test.test_alert)}, {_when(test.time)}" if test else "none"
        name, group = _name_and_group(record.vm)
        parts.append(
            # The name; the whole id on hover, the resource group on a line below it.
            f'<tr><td class="machine" title="{escape(record.vm)}">{escape(name)}'
            f'<div class="id">{escape(group)}</div></td><td>{escape(record.kind)}</td>'
            f"<td>{escape(need(record))}</td><td>{escape(record.platform)}</td>"
            f'<td class="text">{escape(why)}</td><td class="text">{escape(what)}</td>'
            f'<td class="text" data-test-alert>{tested}</td></tr>'
        )
    parts.append("</table></div>")
    return parts


def _name_and_group(machine_id: str) -> tuple[str, str]:
    """A machine's name and resource group, from its id; an id that is not one: itself."""
    parts = machine_id.split("/")
    if len(parts) >= 9 and parts[3].lower() == "resourcegroups":
        return parts[-1], parts[4]
    return machine_id, ""


def _chart(points: list[Point], generated: datetime) -> str:
    """An inline SVG over the last 30 days: dates below, 0/50/100% at the side, each
    sweep's numbers in its point's <title> (shown on hover). No script, no asset."""
    if not points:
        return "<p>No full sweep finished in the last 30 days.</p>"
    width, height = 640, 220
    left, right, top, bottom = 44, 36, 10, 34
    start = generated - WINDOW

    def x(moment: datetime) -> float:
        share = (moment - start) / WINDOW
        return left + (width - left - right) * min(max(share, 0.0), 1.0)

    def y(value: float) -> float:
        return top + (height - top - bottom) * (1 - value / 100)

    axes = []
    for level in (0, 50, 100):
        axes.append(
            f'<line x1="{left}" y1="{y(level):.1f}" x2="{width - right}" y2="{y(level):.1f}" '
            f'stroke="{"#999" if level == 0 else "#ddd"}"/>'
            f'<text class="y-label" x="{left - 6}" y="{y(level) + 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#444">{level}%</text>'
        )
    for day in range(0, WINDOW.days + 1, 5):
        moment = start + timedelta(days=day)
        axes.append(
            f'<line x1="{x(moment):.1f}" y1="{y(0):.1f}" x2="{x(moment):.1f}" '
            f'y2="{y(0) + 4:.1f}" stroke="#999"/>'
            f'<text class="x-label" x="{x(moment):.1f}" y="{y(0) + 18:.1f}" '
            f'text-anchor="middle" font-size="11" fill="#444">{moment:%Y-%m-%d}</text>'
        )
    line = " ".join(f"{x(p.started):.1f},{y(p.percent):.1f}" for p in points)
    dots = "".join(
        f'<circle cx="{x(p.started):.1f}" cy="{y(p.percent):.1f}" r="4" fill="#0a64a4">'
        f"<title>{p.started:%Y-%m-%d %H:%M} UTC: {_percent(p.percent)} "
        f"({p.covered} of {p.eligible} eligible running VMs covered), sweep {escape(p.run_id)}"
        "</title></circle>"
        for p in points
    )
    return (
        f'<svg id="trend" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="coverage of full sweeps over the last 30 days">{"".join(axes)}'
        f'<polyline fill="none" stroke="#0a64a4" stroke-width="2" points="{line}"/>{dots}</svg>'
    )
