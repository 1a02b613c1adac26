"""The coverage report: numbers that match the remediation log, and a page that needs
nothing from anywhere else."""

import json
import re
from collections import Counter
from html.parser import HTMLParser

from tests.conftest import generated_estate
from tests.test_service import ENFORCE

# The report's columns by decision, written out here rather than read from report.py.
CATEGORIES = {
    "compliant": "covered",
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
    assert "No sweep has finished yet" in html


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


def test_the_report_renders_in_a_real_headless_browser(world_factory, tmp_path):
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is missing: `make test` installs it"
    world = world_factory(
        generated_estate(80, 2, seed=34), REMEDIATION_MAX_ACTIONS_PER_SWEEP="20", **ENFORCE
    )
    world.post("sweep")
    world.run_sweeps()
    world.run_queue()
    path = tmp_path / "coverage.html"
    path.write_text(world.get("report").get_body().decode())
    latest = {}
    for record in sorted(world.audit_records(), key=lambda r: r.time):
        if record.trigger == "http":
            latest[record.vm.lower()] = record.decision
        elif record.trigger == "queue" and record.outcome == "succeeded":
            latest[record.vm.lower()] = "compliant"
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
        page.goto(path.as_uri())
        assert page.title() == "Defender for Endpoint coverage"
        assert page.locator("#trend").is_visible()
        # The numbers on screen equal the log's, platform by platform.
        shown = Counter()
        for row in page.locator("#by-platform tr[data-platform]").all():
            for cell in row.locator("td[data-category]").all():
                shown[cell.get_attribute("data-category")] += int(cell.inner_text())
        assert shown == Counter(CATEGORIES[d] for d in latest.values())
        assert int(page.locator("#human-count").inner_text()) == sum(
            d in {"blocked", "error", "unsupported"} for d in latest.values()
        )
        page.screenshot(path=str(tmp_path / "coverage.png"), full_page=True)
        browser.close()
    assert problems == []
    assert requests == [path.as_uri()]  # nothing fetched from anywhere
