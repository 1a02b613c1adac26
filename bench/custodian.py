"""Cloud Custodian against the local control plane, side by side with the app (issue 15).

`measure_custodian(variables, subscriptions)` runs Custodian's pull-mode policy
`bench/custodian-policy.yml` (running VMs without a Succeeded MDE.Windows or MDE.Linux
extension) once per subscription, one after the other, one `custodian run` process each.
That is c7n-org with C7N_ORG_PARALLEL=1 (its default pool is the CPU count times 4
workers), except that a c7n-org worker keeps its interpreter from one account to the
next: here every subscription pays its interpreter start, its imports and its token, and
the wall time counts them (`custodian_s` is the part inside Custodian's run).

Custodian lives in its own virtual environment, `.venv-bench`, made once from the exact
pins of `bench/requirements-custodian.txt` (c7n 0.9.53, c7n-azure 0.7.52): never in the
app's requirements. Each process is this file run by that venv's interpreter
(`--child`), which before Custodian starts:

- points msrestazure's public cloud (c7n-azure's endpoints when no other cloud is named)
  at the plane: ARM, the token authority and the token audience are its loopback URL;
- turns off MSAL's instance discovery (c7n-azure builds its ClientSecretCredential
  without it, and would ask login.microsoftonline.com about an unknown authority);
- wraps requests' `HTTPAdapter.send`, through which azure-core and MSAL send everything:
  it counts each request (retries included: each is a send) and refuses any host but
  127.0.0.1, so nothing can reach Azure; a refusal fails the measurement.

Only the standard library is imported at the top: the same file runs in both venvs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-bench"
STAMP = VENV / ".installed"
REQUIREMENTS = ROOT / "bench" / "requirements-custodian.txt"
POLICY = ROOT / "bench" / "custodian-policy.yml"
POLICY_NAME = "vms-without-mde"
LOOPBACK = "127.0.0.1"


# --- The bench venv ----------------------------------------------------------------------
def _python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> Path:
    """`.venv-bench` with the pinned Custodian, made once (again when the pins change)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest and _python().exists():
        return _python()
    base = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    subprocess.run([base, "-m", "venv", "--clear", str(VENV)], check=True)
    # Kept out of git by itself: the repository's .gitignore knows .venv/ and .venv-tools/.
    (VENV / ".gitignore").write_text("*\n")
    subprocess.run(
        [
            str(_python()),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
    )
    STAMP.write_text(digest + "\n")
    return _python()


# --- The measurement (the app's venv) ------------------------------------------------------
def _loopback(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname != LOOPBACK:
        raise ValueError(f"{what} must be the local plane on https://{LOOPBACK}, not {url!r}")
    return url.rstrip("/")


def child_environment(variables: dict[str, str], subscription: str) -> dict[str, str]:
    """What one `custodian run` sees: the plane's service principal (c7n-azure reads
    AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_SUBSCRIPTION_ID), the
    plane's CA for requests and ssl, and nothing else of Azure's."""
    arm = _loopback(variables["REMEDIATION_ARM_ENDPOINT"], "the ARM endpoint")
    authority = _loopback(variables["AZURE_AUTHORITY_HOST"], "the authority host")
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    environment = {name: os.environ[name] for name in keep if name in os.environ}
    dead_proxy = f"http://{LOOPBACK}:9"  # anything not loopback that ignores the guard fails
    return environment | {
        "AZURE_TENANT_ID": variables["AZURE_TENANT_ID"],
        "AZURE_CLIENT_ID": variables["AZURE_CLIENT_ID"],
        "AZURE_CLIENT_SECRET": variables["AZURE_CLIENT_SECRET"],
        "AZURE_SUBSCRIPTION_ID": subscription,
        "AZURE_AUTHORITY_HOST": authority,
        "REQUESTS_CA_BUNDLE": variables["REQUESTS_CA_BUNDLE"],
        "SSL_CERT_FILE": variables["REQUESTS_CA_BUNDLE"],
        "BENCH_CUSTODIAN_ARM": arm,
        "BENCH_CUSTODIAN_AUTHORITY": authority,
        "HTTPS_PROXY": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        "NO_PROXY": f"{LOOPBACK},localhost",
        "AWS_EC2_METADATA_DISABLED": "true",  # c7n imports boto3; it never asks IMDS
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def measure_custodian(variables: dict[str, str], subscriptions: list[str]) -> dict[str, Any]:
    """Custodian's policy over `subscriptions`, one process each, in order.

    Returns wall_s (all processes, interpreter starts included), requests (HTTP requests
    to ARM counted inside Custodian, retries included; token requests apart in
    token_requests), flagged (sorted lower-case VM ids), vms_flagged, peak_rss_mb (the
    highest VmHWM of the processes), and what Custodian asked: api_versions, statuses
    (``"200": n`` per status code), routes (requests per operation shape)."""
    python = ensure_venv()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="custodian-") as scratch:
        started = time.monotonic()
        for subscription in subscriptions:
            out = Path(scratch) / subscription
            begun = time.monotonic()
            result = subprocess.run(
                [str(python), str(Path(__file__).resolve()), "--child", str(out)],
                cwd=scratch,
                env=child_environment(variables, subscription),
                capture_output=True,
                text=True,
                check=False,
            )
            lines = result.stdout.strip().splitlines()
            run = dict(json.loads(lines[-1])) if lines else {"refused": []}
            if run["refused"]:  # refused, never sent: the measurement is void
                raise RuntimeError(f"Custodian tried to leave the plane: {run['refused'][:5]}")
            if result.returncode != 0:
                raise RuntimeError(
                    f"custodian run for {subscription} failed ({result.returncode}): "
                    f"{result.stderr[-3000:]}"
                )
            run["process_s"] = time.monotonic() - begun
            runs.append(run)
        wall = time.monotonic() - started
    flagged = sorted({vm for run in runs for vm in run["flagged"]})
    statuses: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    for run in runs:
        statuses.update(run["statuses"])
        routes.update(run["routes"])
    return {
        "wall_s": round(wall, 1),
        "requests": sum(run["requests"] for run in runs),
        "flagged": flagged,
        "vms_flagged": len(flagged),
        "peak_rss_mb": round(max((run["peak_rss_mb"] for run in runs), default=0.0), 1),
        "token_requests": sum(run["token_requests"] for run in runs),
        "processes": len(runs),
        "custodian_s": round(sum(run["run_s"] for run in runs), 1),  # inside c7n's run
        "api_versions": sorted({v for run in runs for v in run["api_versions"]}),
        "statuses": dict(sorted(statuses.items())),
        "routes": dict(sorted(routes.items())),
    }


# --- One `custodian run` (the bench venv) ---------------------------------------------------
_SHAPES = (
    (re.compile(r"/subscriptions/[^/]+", re.I), "/subscriptions/{s}"),
    (re.compile(r"/resourceGroups/[^/]+", re.I), "/resourceGroups/{g}"),
    (re.compile(r"/virtualMachines/[^/]+", re.I), "/virtualMachines/{vm}"),
    (re.compile(r"/extensions/[^/]+", re.I), "/extensions/{x}"),
)


def _shape(method: str, url: str) -> str:
    parts = urlsplit(url)
    path = parts.path
    for pattern, name in _SHAPES:
        path = pattern.sub(name, path)
    expand = parse_qs(parts.query).get("$expand")
    return f"{method} {path}" + (f"?$expand={expand[0]}" if expand else "")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(out: str) -> int:  # pragma: no cover - runs in .venv-bench
    arm = os.environ["BENCH_CUSTODIAN_ARM"]
    authority = os.environ["BENCH_CUSTODIAN_AUTHORITY"]
    counts: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    routes: Counter[str] = Counter()
    versions: set[str] = set()
    refused: list[str] = []

    import requests
    from requests.adapters import HTTPAdapter

    send = HTTPAdapter.send

    def counted(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url)
        if parts.hostname != LOOPBACK:
            refused.append(f"{request.method} {request.url}")
            raise requests.exceptions.ConnectionError(f"bench: {parts.hostname} is not the plane")
        token = "/oauth2/" in parts.path or "/.well-known/" in parts.path
        counts["token" if token else "arm"] += 1
        if not token:
            routes[_shape(request.method, request.url)] += 1
            versions.update(parse_qs(parts.query).get("api-version", ["(none)"]))
        response = send(self, request, *args, **kwargs)
        if not token:
            statuses[str(response.status_code)] += 1
        return response

    HTTPAdapter.send = counted  # type: ignore[method-assign]

    # c7n-azure takes its endpoints from msrestazure's public cloud (no cloud named):
    # every URL of it becomes the plane's, so whatever Custodian would call stays local.
    from msrestazure.azure_cloud import AZURE_PUBLIC_CLOUD

    endpoints = AZURE_PUBLIC_CLOUD.endpoints
    for name, value in list(vars(endpoints).items()):
        if isinstance(value, str) and value.startswith("https://"):
            setattr(endpoints, name, arm + "/")
    endpoints.resource_manager = arm + "/"
    endpoints.active_directory_resource_id = arm + "/"  # the token's audience
    endpoints.active_directory = authority

    import c7n_azure.session
    from azure.identity import ClientSecretCredential

    class PlaneCredential(ClientSecretCredential):
        """c7n-azure's credential with instance discovery off, as the app's."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("disable_instance_discovery", True)
            super().__init__(*args, **kwargs)

    c7n_azure.session.ClientSecretCredential = PlaneCredential

    from c7n import cli

    sys.argv = ["custodian", "run", "--output-dir", out, str(POLICY)]
    started = time.monotonic()
    code: Any = 0
    try:
        cli.main()
    except SystemExit as exit_:
        code = exit_.code
    run_s = time.monotonic() - started
    found = Path(out) / POLICY_NAME / "resources.json"
    # `custodian run` logs a policy's error and carries on; no resources.json then.
    resources = json.loads(found.read_text()) if found.exists() and not refused else None
    print(
        json.dumps(
            {
                "requests": counts["arm"],
                "token_requests": counts["token"],
                "flagged": sorted(r["id"].lower() for r in resources or []),
                "api_versions": sorted(versions),
                "statuses": dict(statuses),
                "routes": dict(routes),
                "refused": refused,
                "run_s": run_s,
                "peak_rss_mb": _peak_rss_mb(),
            }
        ),
        flush=True,
    )
    return 0 if code in (0, None) and resources is not None else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        raise SystemExit(child(sys.argv[2]))
    raise SystemExit("usage: measure_custodian() from bench/run.py; --child OUT is its own")
