"""The operators' command line: ``python -m remediation <command>``.

It runs the same handlers as the Function App, in-process, with the same settings
(from the environment), so report mode and every other setting apply here too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from remediation.audit import AuditRecord
from remediation.config import SettingsError


def _print(record: AuditRecord, as_json: bool, out: TextIO) -> None:
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
    from remediation.queues import drain  # noqa: PLC0415

    try:
        deliveries = _deliveries(args.file)
    except (OSError, ValueError) as error:
        print(f"error: cannot read Event Grid JSON from {args.file}: {error}", file=sys.stderr)
        return 2
    running = services()
    for delivery in deliveries:
        _print(service.handle_event(running, delivery, trigger="cli"), args.json, out)
    if args.wait:
        drain(
            running.queue,
            lambda text, count: _print(
                service.handle_install(running, text, count), args.json, out
            ),
            lambda text: _print(service.handle_poison(running, text), args.json, out),
        )
    return 0


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
