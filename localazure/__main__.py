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

from localazure import defender
from localazure.azurite import ACCOUNT
from localazure.estate import TEST_ALERT_ROLE, Estate, Principal, Vm, generate
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

  # the README's local section: the test alert too, its alert 5 seconds after the test
  python -m localazure --generate 300 --arc-machines 20 --with-storage \
      --allow-test-alert --alert-seconds 5 --env-file build/local.env

  # keep an estate, with what the app changed in it, from one run to the next
  python -m localazure --generate 50 --seed 1 --save build/estate.json
  python -m localazure --estate build/estate.json --save build/estate.json --port 8443

The export lines go to stdout once the plane (and Azurite) answer, and to --env-file,
which is written whole at that moment and removed on exit. They also carry what the
deployment hook reads (REMEDIATOR_*: `python infra/hooks/wire_events.py` wires the
events, as `azd up` does) and LOCALAZURE_COVERED_VM, a running VM with MDE installed.
"""
EVENTS_GROUP = "rg-local-events"
EVENT_QUEUE = "vm-events"
MAX_ESTATE_DEPTH = 32  # as the app caps untrusted JSON (remediation.model.MAX_JSON_DEPTH)

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
    except RecursionError:
        raise argparse.ArgumentTypeError(
            f"{raw} is nested deeper than {MAX_ESTATE_DEPTH} levels: not an estate"
        ) from None
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{raw} is not JSON: {error}") from None
    if _depth(data) > MAX_ESTATE_DEPTH:
        raise argparse.ArgumentTypeError(
            f"{raw} is nested deeper than {MAX_ESTATE_DEPTH} levels: not an estate"
        )
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


def _depth(value: object) -> int:
    """How deeply JSON nests, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


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
    parser.add_argument(
        "--allow-test-alert",
        action="store_true",
        help="grant the app's principal Run Command and Defender for Cloud's alerts (as the "
        "deployment's allowTestAlert does) and export REMEDIATION_ALLOW_TEST_ALERT=true",
    )
    parser.add_argument(
        "--alert-seconds",
        type=_seconds,
        default=600.0,
        metavar="SECONDS",
        help="seconds from a detection test to its alert (default 600: Azure's 'about 10 minutes')",
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


OWNER = "# written by python -m localazure, pid "


def _claim_env_file(path: Path) -> None:
    """Refuse an env file another running local Azure wrote; replace one whose writer is
    gone (a kill -9 leaves it behind), saying so."""
    if not path.exists():
        return
    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError):
        first = []
    if not first or not first[0].startswith(OWNER):  # someone's own file: not ours to replace
        _fail(2, f"argument --env-file: {path} exists and was not written by python -m localazure")
    try:
        pid = int(first[0].removeprefix(OWNER).split()[0])
    except (ValueError, IndexError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        print(f"note: replacing {path}, left by pid {pid}, which is gone", file=sys.stderr)
        return
    except PermissionError:
        pass  # alive, another user's
    _fail(2, f"argument --env-file: {path} belongs to a local Azure still running (pid {pid})")


def _covered_vm(estate: Estate) -> Vm | None:
    """A running VM with MDE Succeeded and reporting to Defender for Endpoint, in an
    ordinary resource group and not opted out: what the README's test alert runs on."""
    return next(
        (
            vm
            for vm in sorted(estate.vms.values(), key=lambda vm: vm.key)
            if vm.kind == "vm"
            and vm.power == "running"
            and vm.resource_group.startswith("rg-")
            and not any("exclude" in key.lower() for key in vm.tags)
            and defender.healthy(vm)  # listed and reporting: its test raises an alert
            and any(
                ext.type.startswith("MDE.") and ext.state == "Succeeded"
                for ext in vm.extensions.values()
            )
        ),
        None,
    )


def _hook_environment(plane: LocalAzure, estate: Estate) -> dict[str, str]:
    """What azd gives infra/hooks/wire_events.py: its storage queue (Azurite's account),
    the subscriptions, the events group and the region."""
    first = next(iter(estate.subscriptions))
    storage = (
        f"/subscriptions/{first}/resourceGroups/rg-local/providers/"
        f"Microsoft.Storage/storageAccounts/{ACCOUNT}"
    )
    return {
        "REMEDIATOR_EVENT_STORAGE_ID": storage,
        "REMEDIATOR_EVENT_QUEUE": EVENT_QUEUE,
        "REMEDIATOR_SUBSCRIPTIONS": ",".join(estate.subscriptions),
        "REMEDIATOR_EVENTS_GROUP": EVENTS_GROUP,
        "REMEDIATOR_ARM_ENDPOINT": plane.url,
        "AZURE_LOCATION": "westeurope",
    }


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
    if args.allow_test_alert:
        app.actions = sorted({*app.actions, *TEST_ALERT_ROLE})
    if args.env_file:
        _claim_env_file(args.env_file)
    try:
        plane = LocalAzure(
            estate,
            latency=args.latency,
            throttle=not args.no_throttle,
            port=args.port,
            test_alert_seconds=args.alert_seconds,
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
            "REMEDIATION_SUBSCRIPTIONS": ",".join(estate.subscriptions),
            "REMEDIATION_EVENT_QUEUE": EVENT_QUEUE,
        }
        if connection_string is not None:
            environment["AzureWebJobsStorage"] = connection_string
        if args.allow_test_alert:
            # The test's steps re-check every few seconds here, not every two minutes.
            environment |= {
                "REMEDIATION_ALLOW_TEST_ALERT": "true",
                "REMEDIATION_RECHECK_SECONDS": "2",
            }
        environment |= _hook_environment(plane, estate)
        covered = _covered_vm(estate)
        if covered is not None:
            environment["LOCALAZURE_COVERED_VM"] = covered.id
        text = exports(environment) + ("" if connection_string else NO_STORAGE + "\n")
        pid = os.getpid()
        text = f"{OWNER}{pid}\n{text}"
        if args.env_file:
            _write_atomically(args.env_file, text)
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
