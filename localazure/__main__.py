"""Run the local control plane as a process: ``python -m localazure --generate 300``.

Prints the environment that points the app at it (as shell ``export`` lines), serves
until interrupted, and saves the estate on the way out when ``--save`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from pathlib import Path

from localazure.estate import Estate, Principal, generate
from localazure.server import LocalAzure

DEMO_APP = Principal(
    client_id="a0000000-0000-4000-8000-000000000001",
    secret="local-demo-secret",  # a secret of the local plane only, never a real one
    object_id="0b1e5c7e-0000-4000-8000-00000000a11f",
    name="remediator",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localazure", description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--estate", type=Path, help="load the estate from this JSON file")
    source.add_argument(
        "--generate",
        type=int,
        default=300,
        metavar="VMS",
        help="generate this many VMs (default 300)",
    )
    parser.add_argument(
        "--subscriptions", type=int, default=3, help="subscriptions to generate (default 3)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every ARM request"
    )
    parser.add_argument("--no-throttle", action="store_true", help="turn ARM's token buckets off")
    parser.add_argument("--save", type=Path, help="save the estate here on exit")
    args = parser.parse_args(argv)

    estate = (
        Estate.load(args.estate)
        if args.estate
        else generate(args.generate, args.subscriptions, args.seed)
    )
    if not estate.principals:
        estate.add_principal(DEMO_APP)
    app = next(iter(estate.principals.values()))
    plane = LocalAzure(estate, latency=args.latency, throttle=not args.no_throttle, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with plane:
        for name, value in plane.environment(app).items():
            print(f"export {name}={value}")
        print(f"export REMEDIATION_SUBSCRIPTIONS={','.join(estate.subscriptions)}")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    if args.save:
        estate.save(args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
