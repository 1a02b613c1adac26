"""The operators' command line: ``python -m remediation <command>``.

It runs the same handlers as the Function App, in-process, with the same settings
(from the environment), so report mode and every other setting apply here too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from remediation.audit import AuditRecord
from remediation.config import SettingsError

if TYPE_CHECKING:
    from remediation.service import Services


def _print(record: AuditRecord | None, as_json: bool, out: TextIO) -> None:
    if record is None:  # the install goes on in a delayed re-check, which prints later
        return
    if as_json:
        out.write(json.dumps(record.to_json()) + "\n")
    else:
        out.write(record.log_line() + "\n")
    out.flush()


def _deliveries(source: str) -> list[Any]:
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()  # noqa: SIM115
    value = json.loads(text)
    return value if isinstance(value, list) else [value]


def handle_event(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import service  # noqa: PLC0415 - keep --help fast
    from remediation.bootstrap import services  # noqa: PLC0415

    try:
        deliveries = _deliveries(args.file)
    except (OSError, ValueError) as error:
        print(f"error: cannot read Event Grid JSON from {args.file}: {error}", file=sys.stderr)
        return 2
    running = services()
    for delivery in deliveries:
        _print(service.handle_event(running, delivery, trigger="cli"), args.json, out)
    if args.wait:
        _run_installs(running, args.json, out)
    return 0


def _run_installs(running: Services, as_json: bool, out: TextIO) -> None:
    """--wait: run the queued installs here, as the host would, for up to 10 minutes."""
    from remediation import service  # noqa: PLC0415
    from remediation.queues import drain  # noqa: PLC0415

    try:
        drain(
            running.queue,
            lambda text, count: _print(service.handle_install(running, text, count), as_json, out),
            lambda text: _print(service.handle_poison(running, text), as_json, out),
        )
    except TimeoutError:
        print(
            "note: installs are still being checked after 10 minutes; their re-checks stay "
            "on the install queue for the app (or the next --wait)",
            file=sys.stderr,
        )


def run_sweep(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import sweep  # noqa: PLC0415 - keep --help fast
    from remediation.bootstrap import services  # noqa: PLC0415

    running = services()
    body: dict[str, Any] = {}
    if args.subscription:
        body["subscriptions"] = args.subscription
    if args.mode:
        body["mode"] = args.mode
    try:
        request = sweep.parse_request(json.dumps(body).encode(), running.settings, trigger="cli")
        run = sweep.start(running, request, send=None)
    except sweep.InvalidSweepRequest as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except sweep.SweepRunning as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    finished = _sweep_batches(running, run, args.json, out)
    if args.wait:
        _run_installs(running, args.json, out)
    summary = {"summary": True, "run_id": run.run_id, "mode": run.mode, **finished.summary}
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        _summary_table(summary, out)
    return 0


def _sweep_batches(running: Any, run: Any, as_json: bool, out: TextIO) -> Any:
    from rich.progress import Progress  # noqa: PLC0415 - only the terminal needs it

    from remediation import sweep  # noqa: PLC0415

    batches = sweep.batches_of(run.subscriptions, running.settings.sweep_batch_size)
    show = not as_json and out.isatty()
    finished = None
    with Progress(disable=not show, transient=True) as progress:
        task = progress.add_task("sweeping", total=None)
        for index, subscriptions in enumerate(batches):
            message = sweep.BatchMessage(run.run_id, index, subscriptions)

            def on_record(record: AuditRecord) -> None:
                progress.advance(task)
                if as_json:
                    _print(record, True, out)

            def on_total(total: int) -> None:
                done = progress.tasks[0].completed
                progress.update(task, total=done + total)

            finished = sweep.run_batch(running, message, on_record, on_total) or finished
    return finished


def _summary_table(summary: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"sweep {summary['run_id']} ({summary['mode']})")
    table.add_column("")
    table.add_column("", justify="right")
    for decision, count in summary["decisions"].items():
        table.add_row(decision, str(count))
    table.add_section()
    table.add_row("VMs", str(summary["vms"]))
    table.add_row("coverage of eligible running VMs", f"{summary['coverage_percent']}%")
    table.add_row("actions", str(summary["actions"]))
    table.add_row("blocked by the cap", str(summary["capped"]))
    table.add_row("errors", str(summary["errors"]))
    table.add_row(
        "ARM / Resource Graph requests", f"{summary['arm_requests']} / {summary['graph_requests']}"
    )
    table.add_row("duration", f"{summary['duration_seconds']} s")
    Console(file=out).print(table)


def show_log(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import ops  # noqa: PLC0415
    from remediation.bootstrap import services  # noqa: PLC0415

    running = services()
    params = {"since": args.since, "limit": str(args.limit)}
    params |= {
        name: value for name in ("vm", "decision", "subscription") if (value := getattr(args, name))
    }
    try:
        query = ops.parse_query(params, running.settings)
    except ops.InvalidQuery as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    records, _ = running.audit.search(query)
    if args.json:
        for record in records:
            _print(record, True, out)
        return 0
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(
        title=f"remediation log since {query.since:%Y-%m-%d %H:%M} UTC ({len(records)} records)"
    )
    for column in ("time", "VM", "trigger", "decision", "outcome", "platform", "reason / hint"):
        table.add_column(column, overflow="fold")
    for record in records:
        name = record.vm.rsplit("/", 1)[-1] if record.vm else "-"
        text = record.reason + (f" Hint: {record.hint}" if record.hint else "")
        table.add_row(
            f"{record.time:%m-%d %H:%M:%S}",
            name,
            record.trigger,
            record.decision,
            record.outcome,
            record.platform,
            text,
        )
    Console(file=out, width=160).print(table)
    return 0


def write_report(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import report  # noqa: PLC0415
    from remediation.bootstrap import services  # noqa: PLC0415

    coverage = report.gather(services())
    with open(args.html, "w", encoding="utf-8") as page:
        page.write(report.render(coverage))
    needs = len(coverage.human())
    out.write(f"coverage report: {args.html} ({len(coverage.latest)} VMs, {needs} need a human)\n")
    return 0


def run_doctor(args: argparse.Namespace, out: TextIO) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from remediation import bootstrap, doctor  # noqa: PLC0415 - keep --help fast

    checks = doctor.run(bootstrap.build(os.environ, create=False))  # reads only
    if args.json:
        for check in checks:
            out.write(json.dumps(check.to_json()) + "\n")
    else:
        table = Table("scope", "check", "", "found", "fix", box=None, pad_edge=False)
        for check in checks:
            table.add_row(
                check.scope, check.check, "OK" if check.ok else "MISSING", check.detail, check.fix
            )
        Console(file=out, width=200, soft_wrap=True).print(table)
    return 0 if all(check.ok for check in checks) else 1


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m remediation", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    event = commands.add_parser(
        "handle-event", help="run the Event Grid handler on events from a file or stdin"
    )
    event.add_argument(
        "file", metavar="FILE|-", help="Event Grid or CloudEvents JSON: one event or an array"
    )
    event.add_argument("--json", action="store_true", help="one JSON object per decision")
    event.add_argument("--wait", action="store_true", help="also run the installs it queued")
    event.set_defaults(run=handle_event)
    sweep = commands.add_parser("sweep", help="sweep every VM in scope now, in-process")
    sweep.add_argument(
        "--subscription", action="append", metavar="ID", help="only this subscription (repeatable)"
    )
    sweep.add_argument(
        "--mode",
        choices=["report", "enforce"],
        help="report can be asked for in enforce mode, never the reverse",
    )
    sweep.add_argument(
        "--json", action="store_true", help="one JSON object per VM, then a summary object"
    )
    sweep.add_argument("--wait", action="store_true", help="also run the installs it queued")
    sweep.set_defaults(run=run_sweep)
    log = commands.add_parser("log", help="read the remediation log, newest first")
    log.add_argument(
        "--since", default="24h", help="24h, 7d, 30m or an ISO 8601 time (default 24h)"
    )
    log.add_argument("--vm", help="one VM's resource id")
    log.add_argument("--subscription", help="one subscription id")
    log.add_argument(
        "--decision",
        help="compliant, install, defer, exclude, unsupported, blocked, error, ignored",
    )
    log.add_argument("--limit", type=int, default=200)
    log.add_argument("--json", action="store_true", help="one JSON object per record")
    log.set_defaults(run=show_log)
    html = commands.add_parser("report", help="write the coverage report as one HTML page")
    html.add_argument("--html", required=True, metavar="FILE")
    html.set_defaults(run=write_report)
    doctor = commands.add_parser(
        "doctor", help="check, read-only, that the deployed app can do its job (exit 1 if not)"
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object per check")
    doctor.set_defaults(run=run_doctor)
    return root


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        return int(args.run(args, out))
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
