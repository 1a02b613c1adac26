"""`make demo` from start to end, smaller: it must run, show coverage rise, leave no
process behind, and read well to someone who has never seen the code. The numbers it
prints are checked against its remediation log, read here independently."""

import json
import re
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDS_A_HUMAN = {"error", "blocked", "unsupported"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the demo: (what it printed, the remediation log it wrote)."""
    out_dir = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--vms", "60", "--out", str(out_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (out_dir / "remediation-log.jsonl").read_text().splitlines()
    return result.stdout, [json.loads(line) for line in lines], out_dir


def sweeps_in_order(log):
    """Run ids of the sweeps in the log, oldest first: a sweep's own records carry its
    start (the installs it queued carry its id too, with their own times)."""
    started = {
        r["run_id"]: datetime.fromisoformat(r["time"])
        for r in log
        if r["run_id"] and r["trigger"] != "queue"
    }
    return sorted(started, key=started.get)


def paragraph(out, heading):
    """The lines from the one starting with ``heading`` to the next blank line."""
    text = out[out.index(heading) :]
    return text.split("\n\n", 1)[0]


def test_the_demo_runs_end_to_end_and_cleans_up(demo):
    out, log, out_dir = demo
    assert "coverage before" in out
    assert "Forced sweep" in out
    assert "a human" in out
    assert "Azurite and the local Azure are stopped" in out
    assert len(log) > 60
    assert "decision=" in (out_dir / "app.log").read_text()
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


def test_the_output_holds_no_python_reprs(demo):
    out, _, _ = demo
    for repr_ in ("Counter(", "{'", "('", "None", "[]", "dict_"):
        assert repr_ not in out


def test_the_vms_that_need_a_human_are_counted_and_the_rest_pointed_to(demo):
    out, log, _ = demo
    latest = {}
    join = sweeps_in_order(log)[3]  # step 5, after the table was printed
    for record in sorted(log, key=lambda r: datetime.fromisoformat(r["time"])):
        if record["run_id"] == join:
            continue
        latest[record["vm"].lower()] = record["decision"]
    kinds = Counter(d for d in latest.values() if d in NEEDS_A_HUMAN)
    total = sum(kinds.values())
    assert total > 8  # enough that the table cannot show them all

    rows = [
        line
        for line in out.splitlines()
        if re.match(r"│ \S+ +│ (blocked|unsupported|error) ", line)
    ]
    assert f"{len(rows)} of {total} shown" in out
    heading = re.search(r"(\d+) VMs need a human: (.*)", out)
    assert heading is not None
    assert int(heading[1]) == total
    assert Counter({kind: int(n) for n, kind in re.findall(r"(\d+) (\w+)", heading[2])}) == kinds
    assert "python -m remediation log --decision" in out


def test_what_the_app_did_leaves_out_the_demos_measurement_sweeps(demo):
    out, log, _ = demo
    # The demo measures with a sweep before anything happens and another after steps 1
    # and 2; step 5's sweep comes last.
    runs = sweeps_in_order(log)
    assert len(runs) == 4
    measurements = {runs[0], runs[2]}
    # Steps 1 and 2; the test alert of step 4 and the sweep of step 5 are shown on their own.
    acted = [r for r in log if r["run_id"] not in measurements | {runs[3]} and not r["test_alert"]]

    section = paragraph(out, "what the app did")
    counted = sorted(
        (unit, int(number))
        for number, unit in re.findall(
            r"\n  .+?, (\d+) (deliveries|install requests|VMs):", section
        )
    )
    assert counted == [
        ("VMs", sum(r["run_id"] == runs[1] and r["trigger"] != "queue" for r in acted)),
        ("deliveries", sum(r["trigger"] == "event" for r in acted)),
        ("install requests", sum(r["trigger"] == "queue" for r in acted)),
    ]
    assert sum(number for _, number in counted) == len(acted)
    assert "report mode" not in section  # the measurements' "would install" is not an act


def test_the_change_in_eligible_running_vms_is_explained(demo):
    out, log, _ = demo
    runs = sweeps_in_order(log)
    measured_before = {r["vm"].lower() for r in log if r["run_id"] == runs[0]}
    last = {r["vm"].lower(): r["decision"] for r in log if r["run_id"] == runs[2]}
    created = set(last) - measured_before
    # The other VMs the event burst was about: deallocated ones the demo started.
    started = {r["vm"].lower() for r in log if r["trigger"] == "event"} - created
    # Running now, so eligible unless the OS is unsupported or the VM is left alone.
    not_eligible = sum(last[vm] in {"unsupported", "exclude"} for vm in created | started)

    words = " ".join(out.split())  # as printed, without the console's line breaks
    line = re.search(r"Eligible running VMs went from (\d+) to (\d+) \(([+-]\d+)\): [^.]*\.", words)
    assert line is not None
    before, after, change = int(line[1]), int(line[2]), int(line[3])
    assert change == after - before
    table_row = re.search(r"eligible running VMs +│ +(\d+) │ +(\d+) │", out)
    assert table_row is not None
    assert (int(table_row[1]), int(table_row[2])) == (before, after)
    explained = line[0]
    arc = sum("/microsoft.hybridcompute/" in vm for vm in created)
    assert arc == 2  # two Arc machines connected in the burst
    assert (
        f"created {len(created)} machines ({len(created) - arc} VMs, {arc} Arc machines) and "
        f"started {len(started)} deallocated ones"
    ) in explained
    touched = len(created) + len(started)
    assert f"{touched - not_eligible} of those {touched} are eligible" in explained
    assert change == touched - not_eligible  # nothing else moved, so nothing else is said
    assert "other VMs" not in explained


def test_the_demo_verifies_coverage_with_defender_for_endpoint_and_runs_a_test_alert(demo):
    out, log, _ = demo
    step = paragraph(out, "3. Verification")
    # The demo made one covered VM's sensor never report and another go Inactive; each is
    # explained with what to check.
    flat = step.replace("\n", " ")
    assert re.search(r": not-seen: MDE\.Linux has been Succeeded since \S+ \S+ UTC, longer", flat)
    assert "onboarding package" in step
    assert re.search(
        r": unhealthy: Defender for Endpoint lists device \S+ with health Inactive",
        step.replace("\n", " "),
    )
    # The counts it prints are the last measurement sweep's, read from the log.
    last = sweeps_in_order(log)[2]  # the measurement after steps 1 and 2
    counted = Counter(r["verification"] for r in log if r["run_id"] == last and r["verification"])
    shown = dict(
        (word, int(n))
        for n, word in re.findall(r"(\d+) (verified|not-seen|unhealthy|pending|unchecked)", step)
    )
    assert shown == dict(counted)
    test = paragraph(out, "4. Test alert")
    assert "answered 202" in test
    assert re.search(r": verified: Test alert \"[^\"]*EICAR", test.replace("\n", ""))
    [ended] = [r for r in log if r["test_alert"]]
    assert (ended["test_alert"], ended["outcome"], ended["trigger"]) == (
        "verified",
        "succeeded",
        "http",
    )


def test_a_subscription_joins_the_management_group_and_is_swept_and_named(demo):
    out, log, out_dir = demo
    step = " ".join(paragraph(out, "5. The estate grows").split())
    join = sweeps_in_order(log)[3]
    [joined] = [r for r in log if r["run_id"] == join and r["decision"] == "scope"]
    assert (joined["outcome"], joined["subscription_name"]) == ("joined", "Contoso Online 01")
    assert f"scope: joined: {joined['reason']}" in step
    swept = Counter(
        r["kind"]
        for r in log
        if r["run_id"] == join and r["subscription"] == joined["subscription"]
    )
    assert f"read its {swept['vm']} VMs and {swept['arc']} Arc machines" in step
    assert swept["arc"] > 0
    assert f"not receiving events: Contoso Online 01 ({joined['subscription']})" in step
    page = (out_dir / "coverage.html").read_text()
    assert f"--subscriptions {joined['subscription']}" in page
    assert 'data-group="mg-landing-zones"' in page
    # Arc machines were covered like VMs: the event burst connected two, the sweeps the rest.
    installed = [r for r in log if r["trigger"] == "queue" and r["outcome"] == "succeeded"]
    assert {r["kind"] for r in installed} == {"vm", "arc"}
