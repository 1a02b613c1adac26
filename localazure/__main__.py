"""Run the local control plane as a process: ``python -m localazure --generate 300``.

Prints the environment that points the app at it (as shell ``export`` lines), serves
until interrupted (Ctrl-C or SIGTERM), and saves the estate on the way out when
``--save`` is given. With ``--with-storage`` it also runs Azurite, so that the printed
lines are all ``python -m remediation`` needs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import NoReturn

from localazure.estate import Estate, Principal, generate
from localazure.server import LocalAzure

DEMO_APP = Principal(
    client_id="a0000000-0000-4000-8000-000000000001",
    secret="local-demo-secret",  # a secret of the local plane only, never a real one
    object_id="0b1e5c7e-0000-4000-8000-00000000a11f",
    name="remediator",
)

EPILOG = """\
examples:
  # one terminal serves (Ctrl-C stops it, and Azurite with it) ...
  python -m localazure --generate 300 --with-storage --env-file build/local.env
  # ... another uses it
  . build/local.env && python -m remediation sweep --mode report

  # Arc-enabled servers, scale sets and management groups besides the VMs
  python -m localazure --generate 300 --arc-machines 60 --scale-sets 8 --management-groups

  # keep an estate, with what the app changed in it, from one run to the next
  python -m localazure --generate 50 --seed 1 --save build/estate.json
  python -m localazure --estate build/estate.json --save build/estate.json --port 8443

The export lines go to stdout once the plane (and Azurite) answer, and to --env-file,
which is written whole at that moment and removed on exit.
"""

NO_STORAGE = (
    "# AzureWebJobsStorage is not set: run with --with-storage, or export "
    "AzureWebJobsStorage='<a storage connection string>' yourself (quoted: it holds ;)"
)


class _Parser(argparse.ArgumentParser):
    """argparse, with each usage error on one line: ``error: argument --x: why``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {' '.join(message.split())}\n")


# --- Argument types: each refuses a bad value with a message that says why ----------
def _whole(minimum: int, maximum: int | None = None, what: str = "") -> Callable[[str], int]:
    def convert(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"{value} is {what or 'out of range'}: {bounds}")
        return value

    return convert


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{raw} must be a finite number of seconds, 0 or more")
    return value


def _estate(raw: str) -> Estate:
    path = Path(raw)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise argparse.ArgumentTypeError(f"cannot read {raw}: {reason}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{raw} is not JSON: {error}") from None
    try:
        if not isinstance(data, dict):
            raise TypeError("an estate is a JSON object")
        estate = Estate.from_json(data)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise argparse.ArgumentTypeError(
            f"{raw} is not an estate (as --save writes one): {error}"
        ) from None
    if not estate.subscriptions:
        raise argparse.ArgumentTypeError(f"{raw} holds no subscription: the app needs one")
    return estate


def _new_file(raw: str) -> Path:
    """A file this process writes, in a directory made if missing (build/ is not in git)."""
    path = Path(raw)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{raw} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(
            f"cannot make the directory {path.parent}: {error.strerror or error}"
        ) from None
    return path


def parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m localazure",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--estate",
        type=_estate,
        metavar="FILE",
        help="load the estate from this JSON file (one --save wrote) instead of generating one",
    )
    source.add_argument(
        "--generate",
        type=_whole(0),
        default=300,
        metavar="VMS",
        help="generate an estate of this many VMs (default 300; 0: subscriptions without VMs)",
    )
    parser.add_argument(
        "--subscriptions",
        type=_whole(1),
        metavar="N",
        help="spread the generated VMs over this many subscriptions (default 3)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed of the generator: the same seed gives the same estate (default 7)",
    )
    parser.add_argument(
        "--arc-machines",
        type=_whole(0),
        metavar="N",
        help="also generate this many Arc-enabled servers (Microsoft.HybridCompute; default 0)",
    )
    parser.add_argument(
        "--scale-sets",
        type=_whole(0),
        metavar="N",
        help="also generate this many scale sets, the Flexible ones with member VMs (default 0)",
    )
    parser.add_argument(
        "--management-groups",
        action="store_true",
        help="place the generated subscriptions in a management-group hierarchy",
    )
    parser.add_argument(
        "--port",
        type=_whole(0, 65535, "not a port"),
        default=0,
        help="port of the control plane on 127.0.0.1 (default 0: any free one)",
    )
    parser.add_argument(
        "--latency",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="seconds added to every ARM request (default 0)",
    )
    parser.add_argument(
        "--no-throttle",
        action="store_true",
        help="turn ARM's token buckets off (no 429s, however fast the app calls)",
    )
    parser.add_argument(
        "--with-storage",
        action="store_true",
        help="also run Azurite (from node_modules) on 127.0.0.1 and export its "
        "connection string as AzureWebJobsStorage; stopped on exit",
    )
    parser.add_argument(
        "--env-file",
        type=_new_file,
        metavar="FILE",
        help="also write the export lines to this file once everything answers; "
        "removed on exit (source it: . FILE)",
    )
    parser.add_argument(
        "--save", type=_new_file, metavar="FILE", help="save the estate to this file on exit"
    )
    return parser


def exports(environment: Mapping[str, str]) -> str:
    """The environment as shell lines to source or eval, every value quoted."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())


@contextlib.contextmanager
def _storage(wanted: bool) -> Iterator[str | None]:
    """Azurite's connection string while it runs, or None without --with-storage."""
    if not wanted:
        yield None
        return
    from localazure.azurite import Azurite  # noqa: PLC0415 - only with --with-storage

    try:
        azurite = Azurite()
    except FileNotFoundError as error:
        _fail(2, f"argument --with-storage: {error}")
    try:
        azurite.start()
    except RuntimeError as error:
        _fail(1, f"argument --with-storage: {error}")
    try:
        yield azurite.connection_string
    finally:
        azurite.stop()


def _fail(code: int, message: str) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(code)


def _write_atomically(path: Path, text: str) -> None:
    """Whole or not at all: whoever waits for the file never reads half of it."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    arguments = parser()
    args = arguments.parse_args(argv)
    if args.estate is not None:
        for name in ("subscriptions", "seed", "arc_machines", "scale_sets"):
            if getattr(args, name) is not None:
                option = name.replace("_", "-")
                arguments.error(f"argument --{option}: not allowed with argument --estate")
        if args.management_groups:
            arguments.error("argument --management-groups: not allowed with argument --estate")
        estate = args.estate
    else:
        estate = generate(
            args.generate,
            3 if args.subscriptions is None else args.subscriptions,
            7 if args.seed is None else args.seed,
            arc_machines=args.arc_machines or 0,
            scale_sets=args.scale_sets or 0,
            management_groups=args.management_groups,
        )
    if not estate.principals:
        estate.add_principal(DEMO_APP)
    app = next(iter(estate.principals.values()))
    try:
        plane = LocalAzure(
            estate, latency=args.latency, throttle=not args.no_throttle, port=args.port
        )
    except OSError as error:
        arguments.error(
            f"argument --port: cannot listen on 127.0.0.1:{args.port}: {error.strerror or error}"
        )

    # Ctrl-C and SIGTERM both end the wait below, so that Azurite is always stopped.
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    with plane, _storage(args.with_storage) as connection_string:
        environment = plane.environment(app) | {
            "REMEDIATION_SUBSCRIPTIONS": ",".join(estate.subscriptions)
        }
        if connection_string is not None:
            environment["AzureWebJobsStorage"] = connection_string
        text = exports(environment) + ("" if connection_string else NO_STORAGE + "\n")
        if args.env_file:
            _write_atomically(args.env_file, text)
        pid = os.getpid()
        sys.stdout.write(f"{text}# ready: serving until interrupted (Ctrl-C, or kill {pid})\n")
        sys.stdout.flush()
        try:
            stop.wait()
        finally:
            if args.env_file:
                with contextlib.suppress(FileNotFoundError):
                    args.env_file.unlink()
    if args.save:
        try:
            estate.save(args.save)
        except OSError as error:
            _fail(1, f"argument --save: cannot write {args.save}: {error.strerror or error}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
