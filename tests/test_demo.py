"""`make demo` from start to end, smaller: it must run, show coverage rise, and leave
no process behind."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_end_to_end_and_cleans_up(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--vms", "60", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "coverage before" in out
    assert "Forced sweep" in out
    assert "needs a human" in out
    assert "Azurite and the local Azure are stopped" in out
    log = (tmp_path / "remediation-log.jsonl").read_text().splitlines()
    assert len(log) > 60
    assert "decision=" in (tmp_path / "app.log").read_text()
    # An Azurite the demo left behind would be an orphan, adopted by init.
    processes = subprocess.run(
        ["ps", "-eo", "ppid=,args="], capture_output=True, text=True, check=True
    )
    orphans = [
        line
        for line in processes.stdout.splitlines()
        if "azurite" in line and line.split()[0] == "1"
    ]
    assert orphans == []
