"""`make demo`: the whole job on an embedded local Azure, no Azure account needed.

Starts Azurite and the local control plane with a seeded estate (300 VMs over three
subscriptions), points the app at them through its settings, and drives the real
function objects of ``function_app.app`` as the Functions host would: Event Grid
deliveries for a burst of VM creations and starts, the queued installs, then a forced
sweep, in enforce mode, with the plan opt-in on for one subscription and off for another.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localazure import LocalAzure, generate  # noqa: E402
from localazure.__main__ import DEMO_APP  # noqa: E402
from localazure.azurite import Azurite  # noqa: E402
from localazure.estate import RHEL_92, UBUNTU_2204, WIN11_ENT, WS2022  # noqa: E402
from localazure.host import event_grid_event, http_request, run_queue  # noqa: E402

console = Console(width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--vms", type=int, default=300)
    parser.add_argument("--subscriptions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "demo")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    app_log = args.out / "app.log"  # the operator log lines, as Application Insights gets them
    logging.basicConfig(
        filename=app_log,
        filemode="w",
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        force=True,
    )
    logging.getLogger("remediation").setLevel(logging.INFO)

    estate = generate(args.vms, args.subscriptions, args.seed)
    estate.add_principal(DEMO_APP)
    subscriptions = sorted(estate.subscriptions)
    ready, opted_in, not_opted = (estate.subscriptions[s] for s in subscriptions[:3])
    ready.pricing_tier, ready.sub_plan = "Standard", "P2"
    ready.settings = {
        "WDATP": True,
        "WDATP_UNIFIED_SOLUTION": True,
        "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": False,
    }
    for free in (opted_in, not_opted):  # Free today: the app may enable the first only
        free.pricing_tier, free.sub_plan = "Free", ""
        free.settings = {
            "WDATP": False,
            "WDATP_UNIFIED_SOLUTION": False,
            "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": True,
        }
    with Azurite() as storage, LocalAzure(estate, latency=0.002, lro_seconds=0.3) as azure:
        # The app's settings, as the Function App's app settings would hold them.
        os.environ.update(
            azure.environment(DEMO_APP)
            | {
                "AzureWebJobsStorage": storage.connection_string,
                "REMEDIATION_SUBSCRIPTIONS": ",".join(subscriptions),
                "REMEDIATION_MODE": "enforce",
                "REMEDIATION_ALLOW_PLAN_CHANGE": opted_in.id,
                "REMEDIATION_MAX_ACTIONS_PER_SWEEP": "1000",
                "REMEDIATION_LRO_POLL_SECONDS": "0.2",
                "REMEDIATION_SWEEP_BATCH_SIZE": "1",
            }
        )
        import function_app  # noqa: PLC0415 - after the settings, as the host loads it
        from remediation.bootstrap import services  # noqa: PLC0415

        console.rule("[bold]Defender coverage remediator: demo on a local Azure")
        console.print(
            f"local Azure at {azure.url}, Azurite on 127.0.0.1, {args.vms} VMs, {len(subscriptions)} subscriptions"
        )
        for subscription in subscriptions:
            sub = estate.subscriptions[subscription]
            plan = f"{sub.pricing_tier} {sub.sub_plan}".strip()
            may = "yes" if subscription == opted_in.id else "no"
            console.print(
                f"  {subscription}: plan {plan}, WDATP {'on' if sub.settings['WDATP'] else 'off'}, app may enable plan: {may}"
            )

        before = _coverage_sweep(function_app, azure)
        console.print(
            f"\ncoverage before: [bold]{before['coverage_percent']}%[/] of {before['eligible_running']} eligible running VMs"
        )

        events = _burst(azure, subscriptions, args.seed)
        console.print(
            f"\n[bold]1. Event Grid[/]: {len(events)} deliveries (creations, starts, duplicates)"
        )
        for event in events:
            function_app.on_vm_event(event_grid_event(event))
        installs = _drain(function_app, services(), "install")
        console.print(f"   installs run from the queue: {installs}")

        console.print("\n[bold]2. Forced sweep[/] (POST /api/sweep, enforce)")
        response = function_app.forced_sweep(http_request("POST", "sweep", b"{}"))
        run = json.loads(response.get_body())
        console.print(f"   {response.status_code} run {run['run_id']}, {run['batches']} batches")
        _drain(function_app, services(), "sweep")
        installs = _drain(function_app, services(), "install")
        status = json.loads(
            function_app.sweep_status(
                http_request("GET", f"sweep/{run['run_id']}", route={"runId": run["run_id"]})
            ).get_body()
        )
        console.print(f"   status {status['status']}; installs run from the queue: {installs}")

        azure.drain_events()  # our own writes' events: the loop guard would ignore them
        after = _coverage_sweep(function_app, azure)
        records = list(services().audit.since(datetime.now(UTC) - timedelta(hours=1)))
        _report(before, after, records, args.out)
        page = args.out / "coverage.html"
        page.write_text(
            function_app.coverage_report(http_request("GET", "report")).get_body().decode()
        )
        console.print(f"coverage report (GET /api/report): {page}")
    console.print(
        f"\ndone in {time.monotonic() - started:.1f} s; Azurite and the local Azure are stopped"
    )
    return 0


def _coverage_sweep(function_app: Any, azure: LocalAzure) -> dict[str, Any]:
    """A report-mode sweep through the HTTP API: what coverage is, changing nothing."""
    from remediation.bootstrap import services  # noqa: PLC0415

    response = function_app.forced_sweep(http_request("POST", "sweep", b'{"mode": "report"}'))
    run = json.loads(response.get_body())
    _drain(function_app, services(), "sweep")
    status = function_app.sweep_status(
        http_request("GET", f"sweep/{run['run_id']}", route={"runId": run["run_id"]})
    )
    return dict(json.loads(status.get_body())["summary"])


def _burst(azure: LocalAzure, subscriptions: list[str], seed: int) -> list[dict[str, Any]]:
    """New VMs (each deployment raises two writes), starts of deallocated VMs, and
    Event Grid's at-least-once redeliveries."""
    rng = random.Random(seed)  # noqa: S311 - demo data
    images = [UBUNTU_2204, RHEL_92, WS2022, WIN11_ENT]
    events: list[dict[str, Any]] = []
    for number in range(12):
        vm = images[number % len(images)].vm(
            subscriptions[number % len(subscriptions)], "rg-new", f"new-{number:02d}"
        )
        events += azure.create_vm(vm)
    sleeping = [vm for vm in azure.estate.vms.values() if vm.power == "deallocated"]
    for vm in rng.sample(sleeping, min(8, len(sleeping))):
        events.append(azure.set_power(vm.id, "running"))
    events += rng.sample(events, len(events) // 4)  # at-least-once delivery
    azure.drain_events()
    return events


def _drain(function_app: Any, running: Any, which: str) -> int:
    if which == "sweep":
        return run_queue(
            running.sweeps, function_app.sweep_batch, function_app.sweep_batch_poison, concurrency=2
        )
    return run_queue(running.queue, function_app.install_extension, function_app.install_poison)


def _report(before: dict[str, Any], after: dict[str, Any], records: list[Any], out: Path) -> None:
    table = Table(title="coverage of eligible running VMs")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("coverage", f"{before['coverage_percent']}%", f"{after['coverage_percent']}%")
    table.add_row(
        "covered / eligible running",
        f"{before['covered']} / {before['eligible_running']}",
        f"{after['covered']} / {after['eligible_running']}",
    )
    for decision in sorted(set(before["decisions"]) | set(after["decisions"])):
        table.add_row(
            decision,
            str(before["decisions"].get(decision, 0)),
            str(after["decisions"].get(decision, 0)),
        )
    console.print(table)

    acted = [r for r in records if r.trigger in {"event", "queue", "http"}]
    outcomes = Counter((r.trigger, r.outcome) for r in acted)
    console.print("\n[bold]what the app did[/] (remediation log, by trigger and outcome):")
    for (trigger, outcome), count in sorted(outcomes.items()):
        console.print(f"  {trigger:6} {outcome:10} {count}")

    latest = {}
    for record in sorted(records, key=lambda r: r.time):
        if record.vm:
            latest[record.vm.lower()] = record
    order = {"error": 0, "blocked": 1, "unsupported": 2}
    human = sorted(
        (r for r in latest.values() if r.decision in order), key=lambda r: (order[r.decision], r.vm)
    )
    table = Table(title=f"needs a human: {len(human)} VMs ({Counter(r.decision for r in human)})")
    for column in ("VM", "decision", "platform", "what to do"):
        table.add_column(column, overflow="fold")
    shown = {decision: 0 for decision in order}
    for record in human:
        if shown[record.decision] < 4:  # a few of each kind
            shown[record.decision] += 1
            table.add_row(
                record.vm.rsplit("/", 1)[-1],
                record.decision,
                record.platform,
                record.hint or record.reason,
            )
    console.print(table)
    path = out / "remediation-log.jsonl"
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    console.print(f"\nremediation log of this run: {path}\noperator log lines: {out / 'app.log'}")


if __name__ == "__main__":
    raise SystemExit(main())
