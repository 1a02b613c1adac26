"""The operators' command line: ``python -m remediation <command>``.

It runs the same handlers as the Function App, in-process, with the same settings
(from the environment), so report mode and every other setting apply here too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from azure.core.exceptions import AzureError

from remediation.audit import AuditRecord
from remediation.config import SettingsError
from remediation.model import (
    FAILED_OUTCOMES,
    RecordOutcome,
    RemediationError,
    coverage_percent,
    load_json,
    percent_text,
    sentences,
    visible,
)

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


# Event Grid's own limit for one delivery (an array of events): 1 MB
# (https://learn.microsoft.com/azure/event-grid/event-schema).
MAX_EVENT_INPUT = 1024 * 1024


def _deliveries(source: str) -> list[dict[str, Any]]:
    """The events of a file (or stdin), strictly: JSON of at most MAX_EVENT_INPUT bytes,
    one event object or an array of them, each with an id. Raises ValueError."""
    if source == "-":
        data = getattr(sys.stdin, "buffer", sys.stdin).read(MAX_EVENT_INPUT + 1)
    else:
        with open(source, "rb") as file:
            data = file.read(MAX_EVENT_INPUT + 1)  # no more: a 50 MB file is refused, not read
    value = load_json(data, max_bytes=MAX_EVENT_INPUT)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("it holds no event (an empty array)")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("id"):
            where = f"item {index}" if isinstance(value, list) else "it"
            raise ValueError(
                f"{where} is not an event: an Event Grid or CloudEvents object with an id, "
                f"got {json.dumps(item)[:60]}"
            )
    return items


def _unique(deliveries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The first delivery of each event id (Event Grid redelivers; a replayed file may
    repeat one), and how many repeats were skipped."""
    seen: set[str] = set()
    unique = []
    for delivery in deliveries:
        key = str(delivery["id"])
        if key not in seen:
            seen.add(key)
            unique.append(delivery)
    return unique, len(deliveries) - len(unique)


def handle_event(args: argparse.Namespace, out: TextIO) -> int:
    from remediation.bootstrap import services  # noqa: PLC0415
    from remediation.config import load  # noqa: PLC0415

    load(os.environ)  # bad settings are named first, before the input is read
    try:
        deliveries, repeats = _unique(_deliveries(args.file))
    except (OSError, ValueError) as error:
        print(f"error: cannot read events from {args.file}: {error}", file=sys.stderr)
        return 2
    if repeats:
        print(f"note: {repeats} repeated deliveries of the same event ids skipped", file=sys.stderr)
    from remediation import handlers  # noqa: PLC0415

    running = services()
    for delivery in deliveries:
        _print(handlers.handle_event(running, delivery, trigger="cli"), args.json, out)
    if args.wait:
        _run_installs(running, args.json, out)
    return 0


def _run_installs(
    running: Services, as_json: bool, out: TextIO, quiet: bool = False
) -> list[AuditRecord]:
    """--wait: run the queued installs here, as the host would, for up to 10 minutes.
    Returns the records they wrote; prints them too, unless ``quiet``. On a terminal a
    progress bar counts the installs that ended (a re-check writes no record until its
    install ends) against those queued when the wait began."""
    from rich.progress import Progress  # noqa: PLC0415 - only the terminal needs it

    from remediation import handlers  # noqa: PLC0415
    from remediation.queues import drain  # noqa: PLC0415

    records: list[AuditRecord] = []
    queued = running.queue.queue.get_queue_properties().approximate_message_count or 0
    from remediation.status import terminal  # noqa: PLC0415

    shown = not as_json and out.isatty()
    with Progress(console=terminal(out), disable=not shown, transient=True) as progress:
        task = progress.add_task("waiting for the installs", total=queued or None)

        def show(record: AuditRecord | None) -> None:
            if record is not None:
                records.append(record)
                progress.advance(task)
            if not quiet:
                _print(record, as_json, out)

        try:
            drain(
                running.queue,
                lambda text, count, message_id: show(
                    handlers.handle_install(running, text, count, message_id)
                ),
                lambda text: show(handlers.handle_poison(running, text)),
            )
        except TimeoutError:
            _still_running()
    return records


def _still_running() -> None:
    print(
        "note: installs are still being checked after 10 minutes; their re-checks stay "
        "on the install queue for the app (or the next --wait)",
        file=sys.stderr,
    )


def run_sweep(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import runs, sweep  # noqa: PLC0415 - keep --help fast
    from remediation.bootstrap import services  # noqa: PLC0415

    started = time.monotonic()
    running = services()
    if args.abandon:
        if args.subscription or args.mode or args.wait or args.json:
            print("error: --abandon takes no other option", file=sys.stderr)
            return 2
        return _abandon(running, args.abandon, out)
    body: dict[str, Any] = {}
    if args.subscription:
        body["subscriptions"] = args.subscription
    if args.mode:
        body["mode"] = args.mode
    try:
        request = runs.parse_request(json.dumps(body).encode(), running.settings, trigger="cli")
        run = sweep.start(running, request, send=None)
    except runs.InvalidSweepRequest as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except runs.SweepRunning as error:
        print(
            f"error: {error}; if its worker died: sweep --abandon {error.run_id}", file=sys.stderr
        )
        return 3
    except RemediationError as error:  # the scope could not be resolved: nothing started
        hint = f"Hint: {error.hint}" if error.hint else ""
        print(
            "error: " + sentences(f"the scope could not be resolved: {error}", hint),
            file=sys.stderr,
        )
        return 2
    try:
        finished = _sweep_batches(running, run, args.json, out)
    except BaseException as error:  # Ctrl-C, or Azure unreachable: free the subscriptions
        why = "interrupted" if isinstance(error, KeyboardInterrupt) else _safe(error)
        try:
            running.runs.abandon(run.run_id, f"the CLI sweep stopped: {why}")
        except Exception as closing:  # storage is gone too: the run goes stale, then is closed
            print(
                f"error: sweep {run.run_id} could not be closed: {_safe(closing)}", file=sys.stderr
            )
        if not isinstance(error, Exception) or isinstance(error, BrokenPipeError):
            raise  # Ctrl-C, or the reader of --json left (main stops quietly)
        print(f"error: sweep {run.run_id} failed and was closed: {why}", file=sys.stderr)
        return 1
    if finished is None:  # every batch found the run closed: abandoned or taken over
        print(f"error: sweep {run.run_id} was closed while it ran", file=sys.stderr)
        return 1
    summary = {"summary": True, "run_id": run.run_id, "mode": run.mode, **finished.summary}
    summary["status"] = finished.status
    if args.wait:
        waited_from = time.monotonic()
        summary["after_installs"] = _after_installs(
            # the terminal gets the summary; --json gets every record
            finished.summary,
            _run_installs(running, args.json, out, quiet=not args.json),
            finished.subscriptions,
        )
        summary["after_installs"]["wait_seconds"] = round(time.monotonic() - waited_from, 1)
    summary["total_seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        out.write(json.dumps(summary) + "\n")
    else:
        _summary_table(summary, out)
    return _sweep_exit(summary)


def _sweep_exit(summary: dict[str, Any]) -> int:
    """0 when every subscription was assessed and no waited install failed; else 1, with
    each reason on stderr (the figures of what was not assessed are not this run's)."""
    from remediation.runs import RunStatus  # noqa: PLC0415 - keep --help fast

    problems = [
        f"subscription {sid} was not assessed: {why}"
        for sid, why in (summary.get("unreadable") or {}).items()
    ]
    problems += [f"{why}" for why in summary.get("failed_batches") or []]
    failed = (summary.get("after_installs") or {}).get("failed", 0)
    if failed:
        problems.append(
            f"{failed} of the installs it waited for failed (python -m remediation log)"
        )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or summary.get("status") != RunStatus.DONE else 0


def _safe(error: BaseException) -> str:
    """An exception's first line, without URL query strings (a SAS signature hides there)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return re.sub(r"\?[^\s'\")]*", "?…", text)[:300]


def _abandon(running: Services, run_id: str, out: TextIO) -> int:
    from remediation import sweep  # noqa: PLC0415

    if not sweep.RUN_ID.match(run_id):
        print(f"error: not a sweep run id: {run_id[:60]!r}", file=sys.stderr)
        return 2
    closed = running.runs.abandon(run_id, "abandoned by hand (CLI)")
    if closed is None:
        print(f"error: no running sweep {run_id} (unknown, or already finished)", file=sys.stderr)
        return 2
    out.write(f"sweep {run_id} closed as failed; its subscriptions are free\n")
    return 0


def _after_installs(
    summary: dict[str, Any], records: list[AuditRecord], subscriptions: list[str]
) -> dict[str, Any]:
    """Coverage once the queued installs ran (--wait): the sweep's own figure is taken
    when it decides, before any install. Every install that ended during the wait in the
    run's subscriptions counts, whichever run queued it (after a Ctrl-C'd run, this one
    finds its VMs claimed, and the earlier run's installs are the ones that run)."""
    scope = {s.lower() for s in summary.get("assessed", subscriptions)}  # measured ones only
    mine = {r.vm.lower(): r for r in records if r.vm and r.subscription.lower() in scope}
    installed = sum(1 for r in mine.values() if r.outcome == RecordOutcome.SUCCEEDED)
    failed = sum(1 for r in mine.values() if r.outcome in FAILED_OUTCOMES)
    eligible = int(summary.get("eligible_running", 0))
    covered = min(int(summary.get("covered", 0)) + installed, eligible)
    percent = coverage_percent(covered, eligible)
    return {
        "installed": installed,
        "failed": failed,
        "covered": covered,
        "coverage_percent": percent,
    }


def _sweep_batches(running: Any, run: Any, as_json: bool, out: TextIO) -> Any:
    from rich.progress import Progress  # noqa: PLC0415 - only the terminal needs it

    from remediation import sweep  # noqa: PLC0415

    batches = sweep.batches_of(run.subscriptions, running.settings.sweep_batch_size)
    from remediation.status import terminal  # noqa: PLC0415

    show = not as_json and out.isatty()
    finished = None
    with Progress(console=terminal(out), disable=not show, transient=True) as progress:
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
    from rich.table import Table  # noqa: PLC0415

    from remediation.status import terminal  # noqa: PLC0415 - keep --help fast

    table = Table(title=f"sweep {summary['run_id']} ({summary['mode']})", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for decision, count in summary["decisions"].items():
        table.add_row(f"decision: {decision}", str(count))
    table.add_section()
    table.add_row("machines", str(summary["vms"]))
    for kind, count in (summary.get("kinds") or {}).items():
        table.add_row(f"kind: {kind}", str(count))
    if summary.get("uniform_scale_sets"):
        table.add_row(
            "not covered by this app: uniform scale set instances",
            f"{summary['uniform_instances']} (in {summary['uniform_scale_sets']} scale sets)",
        )
    table.add_row(
        "coverage of eligible running VMs, at decision time",
        f"{percent_text(summary['coverage_percent'])} "
        f"({summary['covered']} of {summary['eligible_running']})",
    )
    after = summary.get("after_installs")
    if after:
        table.add_row(
            "coverage after the installs it waited for",
            f"{percent_text(after['coverage_percent'])} ({after['installed']} installed, "
            f"{after['failed']} failed)",
        )
    table.add_row("actions", str(summary["actions"]))
    table.add_row("blocked by the cap", str(summary["capped"]))
    table.add_row("errors", str(summary["errors"]))
    table.add_row("Azure did not answer (unavailable)", str(summary.get("unavailable", 0)))
    for value, count in (summary.get("verification") or {}).items():
        table.add_row(f"verification: {value}", str(count))
    for finding, count in (summary.get("findings") or {}).items():
        table.add_row(f"finding: {finding}", str(count))
    table.add_row(
        "ARM / Resource Graph requests", f"{summary['arm_requests']} / {summary['graph_requests']}"
    )
    # The sweep reads and decides; the installs it queued take minutes on their own.
    table.add_row("time: the sweep", f"{summary['duration_seconds']} s")
    if after:
        table.add_row("time: waiting for installs", f"{after['wait_seconds']} s")
    table.add_row("time: in all", f"{summary['total_seconds']} s")
    terminal(out).print(table)


def show_log(args: argparse.Namespace, out: TextIO) -> int:
    import dataclasses  # noqa: PLC0415

    from remediation import ops  # noqa: PLC0415
    from remediation.bootstrap import services  # noqa: PLC0415

    running = services()
    params = {"since": args.since, "limit": str(args.limit)}
    params |= {
        name: value
        for name in ("decision", "subscription", "verification", "finding", "continuation")
        if (value := getattr(args, name))
    }
    by_name = bool(args.vm) and not args.vm.startswith("/")
    if args.vm and not by_name:
        params["vm"] = args.vm
    try:
        query = ops.parse_query(params, running.settings, scope=running.scope().ids)
        if by_name:
            query = dataclasses.replace(query, vm=_one_vm(running, args.vm, query))
        records, token = ops.search(running, query)
    except ops.InvalidQuery as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except ValueError as error:  # a forged or stale continuation token
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in query.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        for record in records:
            _print(record, True, out)
        if token:
            out.write(json.dumps({"continuation": token}) + "\n")
        return 0
    _log_table(records, query, out)
    if token:
        print(
            f"more records match: add --continuation {token} for the next {len(records)}",
            file=sys.stderr,
        )
    return 0


def _one_vm(running: Services, name: str, query: Any) -> str:
    """The VM a short name means: the only one of that name in the log's window."""
    from remediation import ops  # noqa: PLC0415

    ids = ops.resolve_vm(running.audit, name, query, running.scope().ids)
    if not ids:
        raise ops.InvalidQuery(
            [f"vm: no VM named {name!r} in the log since {query.since:%Y-%m-%d %H:%M} UTC"]
        )
    if len(ids) > 1:
        raise ops.InvalidQuery(
            [f"vm: {len(ids)} VMs are named {name!r}; give one's resource id:", *ids]
        )
    print(f"note: {name} is {ids[0]}", file=sys.stderr)
    return ids[0]


def _log_table(records: list[AuditRecord], query: Any, out: TextIO) -> None:
    """The records as a table that fits the terminal: under status.WIDE columns, the kind,
    subscription, trigger and platform give way to the reason."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from remediation.status import WIDE, plural, terminal  # noqa: PLC0415 - keep --help fast

    console = terminal(out)
    wide = console.width >= WIDE
    table = Table(
        title=Text(
            f"remediation log since {query.since:%Y-%m-%d %H:%M} UTC "
            f"({plural(len(records), 'record')})"
        ),
        show_lines=not wide,
    )
    columns = ["time", "machine", "kind", "subscription", "trigger", "decision", "outcome"]
    columns += ["platform"]
    if not wide:
        columns = ["time", "machine", "decision", "outcome"]
    for column in columns:
        table.add_column(column, overflow="fold")
    table.add_column("reason / hint", overflow="fold", ratio=1)
    for record in records:
        since = record.unchanged_since
        text = sentences(
            f"Unchanged since {since:%Y-%m-%d %H:%M} UTC." if since else "",
            record.reason,
            f"Hint: {record.hint}" if record.hint else "",
            f"Verification: {record.verification}: {record.verification_reason}"
            if record.verification
            else "",
            f"Hint: {record.verification_hint}" if record.verification_hint else "",
            f"Findings: {', '.join(record.findings)}" if record.findings else "",
        )
        cells = {
            "time": f"{record.time:%m-%d %H:%M:%S}",
            "machine": record.vm.rsplit("/", 1)[-1] if record.vm else "-",
            "kind": record.kind,
            "subscription": record.subscription_name or record.subscription[:8],
            "trigger": record.trigger,
            "decision": record.decision,
            "outcome": record.outcome,
            "platform": record.platform,
        }
        # plain Text: reasons quote ARM, never markup
        table.add_row(*(Text(visible(cells[column])) for column in columns), Text(visible(text)))
    console.print(table)


def run_test_alert(args: argparse.Namespace, out: TextIO) -> int:
    """Exit 0 verified (or queued, without --wait), 1 not verified or failed, 2 refused,
    3 a test is already running on the VM."""
    from remediation import testalert  # noqa: PLC0415
    from remediation.arm import RUN_COMMAND_WAIT  # noqa: PLC0415
    from remediation.bootstrap import services  # noqa: PLC0415
    from remediation.queues import drain  # noqa: PLC0415

    running = services()
    try:
        test = testalert.begin(running, args.vm, "cli")
    except testalert.Refused as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 3 if error.status == 409 else 2
    except RemediationError as error:  # ARM did not answer, or refused to read the VM
        print(f"error: the VM could not be read: {error}", file=sys.stderr)
        return 1
    if not args.wait:
        if args.json:
            out.write(json.dumps(test.to_json()) + "\n")
        else:
            print(
                f"test alert {test.test_id} queued for {test.vm}: the app's test-alert queue "
                f"runs it; `python -m remediation log --vm {test.vm}` shows its result",
                file=out,
            )
        return 0
    minutes = running.settings.test_alert_timeout_minutes
    print(f"test alert {test.test_id}: waiting up to {minutes} minutes", file=sys.stderr)
    ended: list[AuditRecord] = []

    def keep(record: AuditRecord | None) -> None:
        if record is not None and record.correlation_id == test.test_id:
            ended.append(record)

    try:
        drain(
            running.tests,
            lambda text, count, message_id: keep(testalert.handle(running, text)),
            lambda text: keep(testalert.handle_poison(running, text)),
            deadline_seconds=minutes * 60 + 600,
            # A step holds its message while Run Command runs (up to RUN_COMMAND_WAIT):
            # it must not become visible to a second thread meanwhile.
            visibility_seconds=int(RUN_COMMAND_WAIT) + 60,
        )
    except TimeoutError:
        print(
            f"note: test {test.test_id} is still running; the app's queue goes on", file=sys.stderr
        )
    for record in ended[-1:]:  # one record a test (a repeated step rewrites the same)
        _print(record, args.json, out)
    final = testalert.get(running, test.test_id)  # the app's worker may have ended it
    if not ended and final is not None:
        if args.json:
            out.write(json.dumps(final.to_json()) + "\n")
        else:
            print(f"test alert {final.test_id}: {final.status}", file=out)
    return 0 if final is not None and final.status == "verified" else 1


def write_report(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import report  # noqa: PLC0415
    from remediation.bootstrap import services  # noqa: PLC0415

    coverage = report.gather(services())
    page = report.render(coverage)
    if args.html == "-":
        out.write(page)
        return 0
    try:
        with open(args.html, "w", encoding="utf-8") as file:
            file.write(page)
    except OSError as error:  # a missing folder, a directory, a full disk, no permission
        print(f"error: cannot write {args.html}: {error.strerror or error}", file=sys.stderr)
        return 2
    needs = len(coverage.human())
    out.write(f"coverage report: {args.html} ({len(coverage.latest)} VMs, {needs} need a human)\n")
    return 0


def show_status(args: argparse.Namespace, out: TextIO) -> int:
    from remediation import bootstrap, status  # noqa: PLC0415 - keep --help fast

    running = bootstrap.build(os.environ, create=False)  # reads only: creates nothing
    params = {"subscription": ",".join(args.subscription)} if args.subscription else {}
    try:
        chosen = status.parse_params(params, running.scope().ids)
    except status.InvalidStatusRequest as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    result = status.gather(running, chosen)
    if args.json:
        out.write(json.dumps(result.to_json()) + "\n")
    else:
        limit = None if args.all else (args.limit or status.SHOWN)
        status.render_table(result, out, shown=limit)
    return 0 if result.complete else 1


def run_doctor(args: argparse.Namespace, out: TextIO) -> int:
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    from remediation import bootstrap, doctor  # noqa: PLC0415 - keep --help fast
    from remediation.status import terminal  # noqa: PLC0415 - keep --help fast

    checks = doctor.run(bootstrap.build(os.environ, create=False))  # reads only
    if args.json:
        for check in checks:
            out.write(json.dumps(check.to_json()) + "\n")
    else:
        table = Table(box=None, pad_edge=False)
        table.add_column("scope", no_wrap=True)  # a subscription id reads whole
        table.add_column("check", no_wrap=True)
        table.add_column("status")
        table.add_column("found", overflow="fold", ratio=1)
        table.add_column("fix", overflow="fold", ratio=1)
        for check in checks:
            cells = (check.scope, check.check, "OK" if check.ok else "MISSING")
            table.add_row(*(Text(visible(cell)) for cell in (*cells, check.detail, check.fix)))
        terminal(out).print(table)
    return 0 if all(check.ok for check in checks) else 1


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: must be 1 or more")
    return value


def _command(
    commands: Any, name: str, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    return commands.add_parser(  # type: ignore[no-any-return]
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m remediation",
        description=__doc__,
        epilog="Settings come from the environment (see README, Settings). "
        "Exit codes: 0 done, 1 failed, 2 bad input or settings, 3 a sweep is already running.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _handle_event_command(commands)
    _sweep_command(commands)
    _log_command(commands)
    _status_command(commands)
    _report_command(commands)
    _test_alert_command(commands)
    _doctor_command(commands)
    return root


def _handle_event_command(commands: Any) -> None:
    event = _command(
        commands,
        "handle-event",
        "run the Event Grid handler on events from a file or stdin",
        "Decide for each event as the on_vm_event function would: re-read the VM, decide, "
        "and (in enforce mode) queue its install. One record per event, printed and written "
        "to the remediation log. Repeated event ids are handled once.",
        [
            "python -m remediation handle-event event.json",
            "az eventgrid ... | python -m remediation handle-event --json -",
            "python -m remediation handle-event --wait burst.json   # and run the installs",
        ],
    )
    event.add_argument(
        "file",
        metavar="FILE|-",
        help=f"Event Grid or CloudEvents JSON, one event or an array, at most "
        f"{MAX_EVENT_INPUT // 1024} KiB; - reads stdin",
    )
    event.add_argument("--json", action="store_true", help="print one JSON object per decision")
    event.add_argument(
        "--wait", action="store_true", help="also run the installs it queued, here, and print them"
    )
    event.set_defaults(run=handle_event)


def _sweep_command(commands: Any) -> None:
    sweep = _command(
        commands,
        "sweep",
        "sweep every VM in scope now, in-process",
        "Sweep the subscriptions in scope as the nightly timer would, in this process, with "
        "a progress bar and a summary. The run locks its subscriptions; Ctrl-C closes it and "
        "frees them. A run whose worker died is closed by the next run after 30 minutes of "
        "silence, or at once with --abandon.",
        [
            "python -m remediation sweep",
            "python -m remediation sweep --subscription 11111111-2222-4333-8444-555555555555",
            "python -m remediation sweep --mode report --json > sweep.jsonl",
            "python -m remediation sweep --wait      # and run the installs it queued",
            "python -m remediation sweep --abandon 20261129T020000Z-1a2b3c4d",
        ],
    )
    sweep.add_argument(
        "--subscription",
        action="append",
        metavar="ID",
        help="only this subscription, which must be in scope (repeatable)",
    )
    sweep.add_argument(
        "--mode",
        choices=["report", "enforce"],
        help="report can be asked for in enforce mode, never the reverse",
    )
    sweep.add_argument(
        "--json", action="store_true", help="print one JSON object per VM, then a summary object"
    )
    sweep.add_argument(
        "--wait",
        action="store_true",
        help="also run the installs it queued, and give coverage after them",
    )
    sweep.add_argument(
        "--abandon",
        metavar="RUN_ID",
        help="close a running sweep as failed and free its subscriptions (sweeps nothing)",
    )
    sweep.set_defaults(run=run_sweep)


def _log_command(commands: Any) -> None:
    log = _command(
        commands,
        "log",
        "read the remediation log, newest first",
        "Print the remediation log: one row per decision, newest first, with the reason and "
        "what to do. Filters combine. The window is bounded by the log's retention.",
        [
            "python -m remediation log",
            "python -m remediation log --since 7d --decision blocked",
            "python -m remediation log --verification not-seen",
            "python -m remediation log --vm web-01          # a VM name, if unique",
            "python -m remediation log --json --limit 1000 > log.jsonl",
        ],
    )
    log.add_argument(
        "--since", default="24h", help="30m, 24h, 7d or an ISO 8601 time (default: 24h)"
    )
    log.add_argument("--vm", metavar="ID|NAME", help="one VM: its resource id, or its name")
    log.add_argument("--subscription", metavar="ID", help="one subscription id")
    log.add_argument(
        "--decision",
        help="one of compliant, install, defer, exclude, unsupported, blocked, error, "
        "undecided, ignored",
    )
    log.add_argument(
        "--verification",
        help="one of verified, unhealthy, not-seen, pending, unchecked "
        "(what Defender for Endpoint sees of VMs whose extension is Succeeded)",
    )
    log.add_argument("--finding", help="an informational finding: no-monitoring-agent")
    log.add_argument(
        "--limit", type=int, default=200, help="at most this many records (1-1000, default 200)"
    )
    log.add_argument(
        "--continuation",
        metavar="TOKEN",
        help="the next page: the token the previous page printed (same filters)",
    )
    log.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per record, then {"continuation": ...} if more match',
    )
    log.set_defaults(run=show_log)


def _status_command(commands: Any) -> None:
    now = _command(
        commands,
        "status",
        "what is uncovered right now, read-only, straight from Resource Graph",
        "Classify every VM in scope now and count, per subscription and platform: has MDE, "
        "to install, deferred, excluded, unsupported, blocked; then the VMs that need a "
        "human. Takes no lock, writes no log row, changes nothing in Azure: the first thing "
        "to run after deploying in report mode. Exit 1 when a subscription or a VM could not "
        "be read.",
        [
            "python -m remediation status",
            "python -m remediation status --subscription 11111111-2222-4333-8444-555555555555",
            "python -m remediation status --json | jq .coverage_percent",
        ],
    )
    now.add_argument(
        "--subscription",
        action="append",
        metavar="ID",
        help="only this subscription, which must be in scope (repeatable)",
    )
    shown = now.add_mutually_exclusive_group()
    shown.add_argument(
        "--limit",
        type=_positive,
        default=None,
        metavar="N",
        help="show at most N of the VMs that need a human (default 20)",
    )
    shown.add_argument("--all", action="store_true", help="show every VM that needs a human")
    now.add_argument("--json", action="store_true", help="print one JSON object (every VM)")
    now.set_defaults(run=show_status)


def _report_command(commands: Any) -> None:
    html = _command(
        commands,
        "report",
        "write the coverage report as one HTML page",
        "Write the coverage report (the page GET /api/report serves): coverage by "
        "subscription and platform, its trend, and the VMs that need a human.",
        [
            "python -m remediation report --html coverage.html",
            "python -m remediation report --html - | less",
        ],
    )
    html.add_argument(
        "--html", required=True, metavar="FILE|-", help="the file to write; - writes to stdout"
    )
    html.set_defaults(run=write_report)


def _test_alert_command(commands: Any) -> None:
    alert = _command(
        commands,
        "test-alert",
        "prove a VM reports to Defender: run the harmless MDE test alert (opt-in)",
        "Run Microsoft's documented detection test on one VM through Run Command, then watch "
        "Defender for Cloud's alerts until the test alert appears (or "
        "REMEDIATION_TEST_ALERT_TIMEOUT_MINUTES pass). Refused unless "
        "REMEDIATION_ALLOW_TEST_ALERT=true and REMEDIATION_MODE=enforce, and for a VM out of "
        "scope, excluded, not running or without a Succeeded MDE extension. Exit 0 verified "
        "(or queued), 1 not verified or failed, 2 refused, 3 a test already runs on the VM.",
        [
            "python -m remediation test-alert /subscriptions/.../virtualMachines/web-01",
            'python -m remediation test-alert --wait "$VM_ID"',
        ],
    )
    alert.add_argument("vm", metavar="VM_ID", help="the VM's resource id")
    alert.add_argument(
        "--wait",
        action="store_true",
        help="run the test here and wait for its alert (else the app's queue runs it)",
    )
    alert.add_argument("--json", action="store_true", help="print JSON")
    alert.set_defaults(run=run_test_alert)


def _doctor_command(commands: Any) -> None:
    doctor = _command(
        commands,
        "doctor",
        "check, read-only, that the deployed app can do its job (exit 1 if not)",
        "Check storage, the app's effective permissions in each subscription, the event "
        "wiring and the onboarding packages, reading only. Exit 1 when a check fails.",
        ["python -m remediation doctor", "python -m remediation doctor --json"],
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object per check")
    doctor.set_defaults(run=run_doctor)


class OneIdentityWarning(logging.Filter):
    """azure-identity warns with a block of lines each time a token cannot be had, which a
    command may ask for several times: the first becomes one line with the fix, the rest
    are dropped. Its reason (the first credential's error) is kept; nothing else is."""

    FIX = (
        "check AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or the managed "
        "identity) and AZURE_AUTHORITY_HOST"
    )

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("azure.identity") or record.levelno < logging.WARNING:
            return True
        if self.said:
            return False
        self.said = True
        lines = [line.strip() for line in record.getMessage().splitlines() if line.strip()]
        why = next((line for line in lines if ": " in line and "Credential" in line), lines[0])
        record.msg, record.args = f"azure-identity: no token: {visible(why)}; {self.FIX}", None
        return True


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, OneIdentityWarning) for f in handler.filters):
            handler.addFilter(OneIdentityWarning())
    try:
        return int(args.run(args, out))
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head -1`: the reader left; stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's own flush must not fail
        return 141  # 128 + SIGPIPE, what a shell shows for a tool stopped by a closed pipe
    except AzureError as error:  # storage unreachable or refusing: one line and its fix
        first = (str(error).splitlines() or [""])[0][:300]
        print(
            f"error: Azure Storage: {type(error).__name__}: {first}; check AzureWebJobsStorage "
            "and the identity's storage roles (python -m remediation doctor)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
