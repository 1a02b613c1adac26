"""The coverage report: numbers that match the remediation log, and a page that needs
nothing from anywhere else."""

import json
import re
from collections import Counter
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

from localazure import Estate, Principal, Subscription
from localazure.estate import UBUNTU_2204, WIN11_ENT, mde_extension
from remediation.audit import AuditRecord
from remediation.runs import Run
from tests.conftest import APP, READER, generated_estate
from tests.test_service import ENFORCE

# The report's columns by decision, written out here rather than read from report.py.
CATEGORIES = {
    "compliant": "has MDE",
    "install": "to install",
    "defer": "deferred",
    "exclude": "excluded",
    "unsupported": "unsupported",
    "blocked": "blocked",
    "error": "error",
}


class Page(HTMLParser):
    """Collects the table cells by row key and every attribute that could load something."""

    def __init__(self):
        super().__init__()
        self.rows, self.row, self.external, self.tags = {}, None, [], Counter()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        values = dict(attrs)
        for name in ("src", "href"):
            if name in values:
                self.external.append(values[name])
        if tag == "tr" and any(k.startswith("data-") for k in values):
            self.row = next(v for k, v in values.items() if k.startswith("data-"))
            self.rows[self.row] = {}
        if tag == "td" and "data-category" in values and self.row:
            self._category = values["data-category"]
        else:
            self._category = None

    def handle_data(self, data):
        if getattr(self, "_category", None) and self.row:
            self.rows[self.row][self._category] = int(data)
            self._category = None


def test_the_report_matches_the_log_and_is_self_contained(world_factory, tmp_path):
    world = world_factory(
        generated_estate(120, 2, seed=31), REMEDIATION_MAX_ACTIONS_PER_SWEEP="30", **ENFORCE
    )
    world.post("sweep")
    world.run_sweeps()
    world.run_queue()
    response = world.get("report")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_body().decode()
    page = Page()
    page.feed(html)
    assert page.external == []  # no scripts, styles, fonts or images from anywhere
    assert page.tags["script"] == 0
    assert page.tags["svg"] == 1  # the trend chart, inline

    # The numbers: recompute each VM's latest state from the log itself.
    records = sorted(world.audit_records(), key=lambda r: r.time)
    latest = {}
    for record in records:
        if record.trigger == "http":
            latest[record.vm.lower()] = record.decision
        elif record.trigger == "queue" and record.outcome == "succeeded":
            latest[record.vm.lower()] = "compliant"
    expected = Counter()
    for vm, decision in latest.items():
        subscription = vm.split("/")[2]
        expected[(subscription, CATEGORIES[decision])] += 1
    shown = Counter(
        {
            (sub, category): count
            for sub, cells in page.rows.items()
            if sub.count("-") == 4
            for category, count in cells.items()
            if count
        }
    )
    assert shown == expected
    human = [r for r in latest.values() if r in {"blocked", "error", "unsupported"}]
    assert f'<span id="human-count">{len(human)}</span>' in html
    assert "REMEDIATION_MAX_ACTIONS_PER_SWEEP" in html  # the cap's hint is shown


def test_the_report_before_any_sweep_says_so(world_factory):
    world = world_factory(generated_estate(5, 1, seed=32))
    html = world.get("report").get_body().decode()
    assert "No sweep has assessed a subscription yet" in html


def test_the_report_command_writes_the_page(world_factory, tmp_path):
    import io

    from remediation.__main__ import main

    world = world_factory(generated_estate(20, 1, seed=33))
    world.post("sweep")
    world.run_sweeps()
    path = tmp_path / "coverage.html"
    out = io.StringIO()
    assert main(["report", "--html", str(path)], out=out) == 0
    assert "20 VMs" in out.getvalue()
    html = path.read_text()
    summary = json.loads(
        world.get_status(json.loads(world.post("sweep").get_body())["run_id"]).get_body()
    )
    assert re.search(r'id="coverage">([\d.]+)%', html)
    assert summary["status"] == "running"  # a new run, while the report shows the finished one


def serve(body: bytes, headers: dict):
    """The page from a loopback HTTP server that sends ``headers``, as the app would."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_report_renders_under_its_headers_in_a_real_headless_browser(world_factory, tmp_path):
    import shutil

    from playwright.sync_api import sync_playwright

    from remediation.report import HEADERS

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make test` installs it"
    world = world_factory(
        generated_estate(80, 2, seed=34), REMEDIATION_MAX_ACTIONS_PER_SWEEP="20", **ENFORCE
    )
    world.post("sweep")
    world.run_sweeps()
    world.run_queue()
    body = world.get("report").get_body()
    (tmp_path / "coverage.html").write_bytes(body)
    latest = {}
    for record in sorted(world.audit_records(), key=lambda r: r.time):
        if record.trigger == "http":
            latest[record.vm.lower()] = record.decision
        elif record.trigger == "queue" and record.outcome == "succeeded":
            latest[record.vm.lower()] = "compliant"
    server = serve(body, HEADERS)
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page()
            problems, requests = [], []
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            response = page.goto(url)
            assert (
                response.headers["content-security-policy"] == (HEADERS["Content-Security-Policy"])
            )
            assert page.title() == "Defender for Endpoint coverage"
            # The stylesheet applies under the CSP: 2.4em of 14px, bold; a 2em margin.
            style = page.eval_on_selector(
                "#coverage", "e => [getComputedStyle(e).fontSize, getComputedStyle(e).fontWeight]"
            )
            assert style == ["33.6px", "600"]
            assert page.eval_on_selector("body", "e => getComputedStyle(e).marginLeft") == "28px"
            assert page.locator("#trend").is_visible()
            labels = page.locator("#trend text.y-label")
            assert labels.all_text_contents() == ["0%", "50%", "100%"]
            dates = page.locator("#trend text.x-label")
            assert dates.count() == 7
            for label in [*labels.all(), *dates.all()]:
                assert label.is_visible()
            # The numbers on screen equal the log's, platform by platform.
            shown = Counter()
            for row in page.locator("#by-platform tr[data-platform]").all():
                for cell in row.locator("td[data-category]").all():
                    shown[cell.get_attribute("data-category")] += int(cell.inner_text())
            assert shown == Counter(CATEGORIES[d] for d in latest.values())
            assert int(page.locator("#human-count").inner_text()) == sum(
                d in {"blocked", "error", "unsupported"} for d in latest.values()
            )
            artefacts = Path(__file__).resolve().parent.parent / "build" / "test-artifacts"
            artefacts.mkdir(parents=True, exist_ok=True)
            # A laptop: the whole "Needs a human" table fits, its last column included.
            page.set_viewport_size({"width": 1280, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280
            last = page.eval_on_selector(
                "#human th:last-child", "e => e.getBoundingClientRect().right"
            )
            assert last <= 1280 - 28  # inside the page's margin
            first = page.locator("#human td.machine").first
            machine = first.get_attribute("title")
            assert machine.startswith("/subscriptions/")  # the whole id, on hover
            assert first.inner_text().splitlines()[0] == machine.rsplit("/", 1)[1]  # the name
            lines = first.evaluate(
                "e => { const r = document.createRange(); r.selectNodeContents(e.firstChild);"
                " return r.getClientRects().length; }"
            )
            assert lines == 1  # the name is not broken across lines
            align = "e => getComputedStyle(e).textAlign"
            assert page.eval_on_selector("#human td.text", align) == "left"
            assert page.eval_on_selector("#by-platform td[data-category]", align) == "right"
            assert page.eval_on_selector("#by-platform th.num", align) == "right"
            assert page.eval_on_selector("#by-platform td:first-child", align) == "left"
            page.screenshot(path=str(artefacts / "report-1280x800.png"), full_page=True)
            # A phone: the page does not overflow; wide tables scroll in their own box.
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            assert page.eval_on_selector("#human", "e => e.closest('.scroll') !== null")
            page.screenshot(path=str(artefacts / "report-390.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert problems == []  # a CSP violation is a console error
    assert requests == [url]  # nothing fetched from anywhere


# --- The estate's latest state, subscription by subscription -----------------------------
A = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
B = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
C = "cccccccc-cccc-4ccc-8ccc-cccccccccccc"


def three_subscriptions() -> Estate:
    """Plan and integration on everywhere; what a sweep finds is written by hand:
    A: 2 covered, 1 to install (2 of 3 eligible running VMs covered);
    B: 1 covered, 2 to install, 1 deallocated (1 of 3);
    C: 2 covered, 1 Windows 11 desktop, unsupported (2 of 2). The estate: 5 of 8."""
    estate = Estate()
    for principal in (APP, READER):
        estate.add_principal(Principal(**vars(principal)))
    vms = {
        A: [("a-covered-1", True), ("a-covered-2", True), ("a-bare", False)],
        B: [("b-covered", True), ("b-bare-1", False), ("b-bare-2", False), ("b-asleep", False)],
        C: [("c-covered-1", True), ("c-covered-2", True), ("c-desk", False)],
    }
    for subscription, names in vms.items():
        ready = estate.add_subscription(Subscription(subscription, "Standard", "P1"))
        ready.settings = {
            "WDATP": True,
            "WDATP_UNIFIED_SOLUTION": True,
            "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": False,
        }
        for name, covered in names:
            image = WIN11_ENT if name == "c-desk" else UBUNTU_2204
            power = "deallocated" if name == "b-asleep" else "running"
            vm = estate.add_vm(image.vm(subscription, "rg-app", name, power=power))
            if covered:
                vm.extensions["mde.linux"] = mde_extension(vm)
    return estate


def vm_id(subscription: str, name: str) -> str:
    return (
        f"/subscriptions/{subscription}/resourceGroups/rg-app"
        f"/providers/Microsoft.Compute/virtualMachines/{name}"
    )


def sweep(*subscriptions: str) -> str:
    """`python -m remediation sweep [--subscription X ...]`; returns the run id."""
    import io

    from remediation.__main__ import main

    out = io.StringIO()
    arguments = [item for s in subscriptions for item in ("--subscription", s)]
    assert main(["sweep", "--json", *arguments], out=out) == 0
    return json.loads(out.getvalue().splitlines()[-1])["run_id"]


def started(world, run_id: str) -> str:
    return json.loads(world.get_status(run_id).get_body())["started"]


class Subscriptions(HTMLParser):
    """The by-subscription table: each row's cell texts; a <time> cell reads as its
    datetime attribute (the exact moment, not the minute shown)."""

    def __init__(self):
        super().__init__()
        self.rows, self.row, self.inside, self.timed = {}, None, False, False

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "table":
            self.inside = values.get("id") == "by-subscription"
        elif tag == "tr" and self.inside and "data-subscription" in values:
            self.row = self.rows.setdefault(values["data-subscription"], [])
        elif tag == "td" and self.row is not None:
            self.row.append("")
            self.timed = False
        elif tag == "time" and self.row is not None:
            self.row[-1], self.timed = values["datetime"], True

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside, self.row = False, None

    def handle_data(self, data):
        if self.row and not self.timed:
            self.row[-1] += data


def label(subscription: str) -> str:
    return f"Subscription {subscription[:8]} ({subscription})"


def subscription_rows(html: str) -> dict:
    parser = Subscriptions()
    parser.feed(html)
    return parser.rows


def swept_fully_then_partly(world_factory):
    """A full sweep; then an event in B (b-bare-1 got MDE), and MDE on a-bare, found by a
    sweep of A alone."""
    world = world_factory(three_subscriptions())
    full = sweep()
    world.plane.estate.vm(vm_id(B, "b-bare-1")).extensions["mde.linux"] = mde_extension(
        world.plane.estate.vm(vm_id(B, "b-bare-1"))
    )
    [event] = world.deliver(world.plane.set_power(vm_id(B, "b-bare-1"), "running"))
    assert event.decision == "compliant"
    world.plane.estate.vm(vm_id(A, "a-bare")).extensions["mde.linux"] = mde_extension(
        world.plane.estate.vm(vm_id(A, "a-bare"))
    )
    partial = sweep(A)
    return world, world.get("report").get_body().decode(), full, partial


def test_after_a_partial_sweep_the_report_shows_every_subscription_as_of_its_latest_sweep(
    world_factory,
):
    world, html, full, partial = swept_fully_then_partly(world_factory)
    # subscription, as of, has MDE, to install, deferred, excluded, unsupported, blocked,
    # error, unavailable, VMs, coverage, verified by MDE ("off" here: nothing was checked)
    # Each named as Resource Graph names it (the plane: "Subscription <first 8>").
    assert subscription_rows(html) == {
        A: [
            label(A),
            started(world, partial),
            "3",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "0",
            "3",
            "100%",
            "off",
        ],
        B: [
            label(B),
            started(world, full),
            "2",
            "1",
            "1",
            "0",
            "0",
            "0",
            "0",
            "0",
            "4",
            "66.67%",
            "off",
        ],
        C: [
            label(C),
            started(world, full),
            "2",
            "0",
            "0",
            "0",
            "1",
            "0",
            "0",
            "0",
            "3",
            "100%",
            "off",
        ],
    }
    assert 'id="verification-off"' in html
    # The headline is the estate's: A 3 of 3, B 2 of 3 (the event since its sweep), C 2 of 2.
    assert '<span class="big" id="coverage">87.5%</span>' in html
    assert '<span id="covered">7</span> of <span id="eligible">8</span>' in html
    assert 'id="not-swept"' not in html


def test_a_subscription_no_sweep_has_covered_is_shown_as_not_swept_yet(world_factory):
    world = world_factory(three_subscriptions())
    partial = sweep(A)
    html = world.get("report").get_body().decode()
    rows = subscription_rows(html)
    assert rows[A][:2] == [label(A), started(world, partial)]
    # The partial sweep resolved the whole scope: every subscription is named.
    assert rows[B] == [label(B), "not swept yet"]
    assert rows[C] == [label(C), "not swept yet"]
    # Only what was swept is counted: A's 2 of 3.
    assert '<span class="big" id="coverage">66.67%</span>' in html
    assert '<span id="covered">2</span> of <span id="eligible">3</span>' in html
    assert "Not swept yet, so not counted: 2 subscription(s)" in html


def test_the_trend_shows_full_sweeps_only(world_factory):
    _, html, full, partial = swept_fully_then_partly(world_factory)
    titles = re.findall(r"<circle [^>]*><title>([^<]*)</title></circle>", html)
    assert len(titles) == 1
    assert titles[0].endswith(f": 62.5% (5 of 8 eligible running VMs covered), sweep {full}")
    assert partial not in " ".join(titles)


def test_the_trend_has_dates_and_coverage_levels_on_its_axes_and_numbers_on_hover():
    from remediation.report import Coverage, Point, render

    run = Run("20260510T020000Z-0000000a", "report", "sweep", [A], 1, moment(10, 2))
    coverage = Coverage(
        generated=moment(14, 12),
        scope=(A,),
        as_of={A: run},
        trend=[
            Point(moment(2, 2), 71.0, 71, 100, "20260502T020000Z-00000001"),
            Point(moment(10, 2), 80.5, 161, 200, "20260510T020000Z-0000000a"),
        ],
    )
    html = render(coverage)
    svg = html[html.index('<svg id="trend"') : html.index("</svg>")]
    assert re.findall(r'class="y-label"[^>]*>([^<]*)<', svg) == ["0%", "50%", "100%"]
    # Every five days of the 30 up to the page's own time.
    assert re.findall(r'class="x-label"[^>]*>([^<]*)<', svg) == [
        "2026-04-14",
        "2026-04-19",
        "2026-04-24",
        "2026-04-29",
        "2026-05-04",
        "2026-05-09",
        "2026-05-14",
    ]
    assert re.findall(r"<title>([^<]*)</title>", svg) == [
        "2026-05-02 02:00 UTC: 71% (71 of 100 eligible running VMs covered), "
        "sweep 20260502T020000Z-00000001",
        "2026-05-10 02:00 UTC: 80.5% (161 of 200 eligible running VMs covered), "
        "sweep 20260510T020000Z-0000000a",
    ]
    assert "<script" not in html


def moment(day: int, hour: int) -> datetime:
    return datetime(2026, 5, day, hour, tzinfo=UTC)


def test_a_long_needs_a_human_list_shows_some_rows_and_says_how_to_see_all():
    from remediation.report import Coverage, render

    run = Run("20260512T020000Z-0000000b", "report", "sweep", [A], 1, moment(12, 2))
    latest = {}
    for index in range(5):
        vm = vm_id(A, f"vm-{index}").lower()
        latest[vm] = AuditRecord(
            vm, A, "sweep", "blocked", "needs the plan", "report", "none", platform="ubuntu-22.04"
        )
    latest["error-vm"] = AuditRecord(
        vm_id(A, "error-vm"), A, "sweep", "error", "Failed", "report", "none", platform="rhel-9.2"
    )
    html = render(Coverage(moment(14, 12), (A,), {A: run}, latest), human_rows=3)
    assert '<span id="human-count">6</span>' in html
    assert "1 error, 5 blocked" in html
    assert "3 of 6 shown" in html
    table = html[
        html.index('<table id="human">') : html.index("</table>", html.index('id="human"'))
    ]
    assert table.count("<tr>") == 4  # the header and three VMs: the error first
    assert "error-vm" in table
    # The log from the oldest sweep shown (3 days back, rounded up), one command a decision.
    assert "python -m remediation log --decision error --since 3d --limit 1000" in html
    assert "python -m remediation log --decision blocked --since 3d --limit 1000" in html
    assert "--decision unsupported" not in html
    # A short list: every row, no note.
    html = render(Coverage(moment(14, 12), (A,), {A: run}, latest))
    assert "shown" not in html


def test_a_record_that_says_nothing_of_the_vm_never_replaces_its_sweep_row():
    from datetime import timedelta

    from remediation.report import Coverage, latest_state

    sub = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
    run = Run(
        "20261204T020000Z-00000001",
        "enforce",
        "sweep",
        [sub],
        1,
        datetime(2026, 12, 4, 2, tzinfo=UTC),
        status="done",
    )

    def row(name, decision, outcome, minutes=0, **more):
        return AuditRecord(
            vm=f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}",
            subscription=sub,
            trigger=more.pop("trigger", "sweep"),
            decision=decision,
            reason="",
            mode="enforce",
            outcome=outcome,
            run_id=more.pop("run_id", run.run_id),
            time=run.started + timedelta(minutes=minutes),
            **more,
        )

    records = [
        row("vm1", "compliant", "none", eligible_running=True, platform="ubuntu-22.04"),
        row("vm2", "install", "queued", eligible_running=True, platform="ubuntu-22.04"),
        row("vm2", "error", "poisoned", 30, trigger="queue", run_id=""),
        row("vm1", "defer", "queued", 40, trigger="event", run_id=""),  # an outage's retry
    ]
    coverage = Coverage(run.started, (sub,), {sub: run})
    coverage.latest = latest_state(records, coverage.as_of)
    assert coverage.headline() == (1, 2)  # 50%, not 1 of 1
