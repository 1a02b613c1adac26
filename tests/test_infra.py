"""The deployment templates: checked by checkov, and kept in step with the code."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from remediation.events import ACCEPTED

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


def _bicep(name: str) -> str:
    return (INFRA / name).read_text()


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason(tmp_path):
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed: `make test` installs it into .venv-tools")
    command = [
        str(CHECKOV),
        "-d",
        str(INFRA),
        "--framework",
        "bicep",
        "--skip-download",
        "--output",
        "json",
        "--quiet",
    ]
    # No network for checkov: it would otherwise fetch guidelines from a vendor's API.
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "-rn", "true"], check=False).returncode == 0
    ):
        command = ["unshare", "-rn", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = {
        key: sum(r["summary"][key] for r in reports) for key in ("passed", "failed", "skipped")
    }
    assert summary["failed"] == 0, [
        c["check_id"] for r in reports for c in r["results"]["failed_checks"]
    ]
    assert summary["passed"] >= 20
    for skip in re.findall(
        r"checkov:skip=(CKV_\w+):?(.*)", "".join(p.read_text() for p in INFRA.glob("*.bicep"))
    ):
        assert len(skip[1].strip()) > 20, f"{skip[0]} is suppressed without a reason"


def test_event_grid_filters_equal_what_the_app_accepts():
    events = _bicep("events.bicep")
    types = set(re.findall(r"'(Microsoft\.Resources\.Resource\w+)'", events))
    operations = set(re.findall(r"'(Microsoft\.Compute/virtualMachines/[\w/]+)'", events))
    assert types == {event_type for event_type, _ in ACCEPTED}
    assert operations == {operation for _, operation in ACCEPTED}
    assert "key: 'data.operationName'" in events


def test_the_app_settings_default_to_safe_values():
    main = _bicep("main.bicep")
    assert "param mode string = 'report'" in main
    assert "param allowPlanChange string = 'false'" in main
    app = _bicep("app.bicep")
    assert "allowSharedKeyAccess: false" in app
    assert "AzureWebJobsStorage__accountName" in app
    assert "runtime: { name: 'python', version: '3.11' }" in app
    assert "type: 'SystemAssigned'" in app


def test_the_custom_role_holds_the_operations_the_app_performs():
    access = _bicep("access.bicep")
    granted = set(re.findall(r"'(Microsoft\.\w+/[\w/]+)'", access))
    # What the gateway calls (the request log names these operations; see test_arm.py).
    performed = {
        "Microsoft.Compute/virtualMachines/read",
        "Microsoft.Compute/virtualMachines/extensions/read",
        "Microsoft.Compute/virtualMachines/extensions/write",
        "Microsoft.Compute/locations/operations/read",
        "Microsoft.ResourceGraph/resources/read",
        "Microsoft.Security/pricings/read",
        "Microsoft.Security/pricings/write",
        "Microsoft.Security/settings/read",
        "Microsoft.Security/mdeOnboardings/read",
    }
    assert granted - {"Microsoft.Authorization/roleDefinitions"} == performed
    assert "fb1c8493-542b-48eb-b624-b4c8fea62acd" in access  # Security Admin, for settings writes
    assert "if (enableIntegration)" in access
