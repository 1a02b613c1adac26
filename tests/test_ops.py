"""Reading the remediation log: GET /api/remediations and `python -m remediation log`."""

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from remediation.audit import AuditRecord
from remediation.config import load
from remediation.ops import InvalidQuery, moment, parse_query
from tests.conftest import SUB
from tests.test_service import ENFORCE, estate, new_vm

OTHER = "99999999-9999-4999-8999-999999999999"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SETTINGS = load(
    {"REMEDIATION_SUBSCRIPTIONS": SUB, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("30m", NOW - timedelta(minutes=30)),
        ("2026-11-01T00:00:00Z", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
    ],
)
def test_times_are_relative_or_iso(text, expected):
    assert moment(text, NOW) == expected


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"since": "yesterday"}, "since: not a time"),
        ({"since": "1h", "until": "2h"}, "since is after until"),
        ({"vm": "/subscriptions/x/../y"}, "vm: not a virtual machine"),
        (
            {
                "vm": f"/subscriptions/{OTHER}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/v"
            },
            "not in REMEDIATION_SUBSCRIPTIONS",
        ),
        ({"subscription": OTHER}, "not in REMEDIATION_SUBSCRIPTIONS"),
        ({"subscription": "all"}, "not a subscription id"),
        ({"decision": "yes"}, "decision: one of"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "²"}, "limit: a whole number from 1 to 1000"),  # a digit to isdigit()
        ({"limit": "٣"}, "limit: a whole number from 1 to 1000"),
        ({"select": "*"}, "unknown filter"),
    ],
)
def test_bad_filters_are_refused_by_name(params, problem):
    with pytest.raises(InvalidQuery) as caught:
        parse_query(params, SETTINGS, NOW)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def _records(world, count, **changes):
    vm = new_vm("log-1").id
    base = {
        "vm": vm,
        "subscription": SUB,
        "trigger": "event",
        "decision": "install",
        "reason": "r",
        "mode": "enforce",
        "outcome": "queued",
    }
    now = datetime.now(UTC)
    for index in range(count):
        world.services.audit.write(
            AuditRecord(
                **base | changes | {"time": now - timedelta(minutes=index), "reason": f"r{index}"}
            )
        )


def test_the_log_over_http_filters_and_pages_newest_first(world_factory):
    world = world_factory(estate("ready"))
    _records(world, 5)
    _records(world, 3, vm=new_vm("log-2").id, decision="blocked")
    first = world.get("remediations", {"limit": "3"})
    assert first.status_code == 200
    page = json.loads(first.get_body())
    assert [r["reason"] for r in page["records"]] == ["r0", "r0", "r1"]
    seen = [r["reason"] + r["vm"][-1] for r in page["records"]]
    token = page["continuation"]
    while token:
        page = json.loads(
            world.get("remediations", {"limit": "3", "continuation": token}).get_body()
        )
        seen += [r["reason"] + r["vm"][-1] for r in page["records"]]
        token = page["continuation"]
    assert len(seen) == len(set(seen)) == 8
    blocked = json.loads(world.get("remediations", {"decision": "blocked"}).get_body())["records"]
    assert {r["vm"] for r in blocked} == {new_vm("log-2").id}
    one = json.loads(world.get("remediations", {"vm": new_vm("log-1").id, "limit": "2"}).get_body())
    assert [r["reason"] for r in one["records"]] == ["r0", "r1"]
    assert one["continuation"]


def test_bad_queries_over_http_get_400_with_every_problem(world_factory):
    world = world_factory(estate("ready"))
    response = world.get("remediations", {"limit": "x", "decision": "maybe", "since": "soon"})
    assert response.status_code == 400
    assert len(json.loads(response.get_body())["errors"]) == 3
    forged = world.get("remediations", {"continuation": "Zm9yZ2Vk"})
    assert forged.status_code == 400


def test_the_log_command_prints_a_table_or_json(world_factory):
    from remediation.__main__ import main

    world = world_factory(estate("ready"), **ENFORCE)
    world.deliver(*world.plane.create_vm(new_vm("cli-log-1")))
    out = io.StringIO()
    assert main(["log", "--json", "--vm", new_vm("cli-log-1").id], out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["outcome"] for line in lines] == ["duplicate", "queued"]
    out = io.StringIO()
    assert main(["log", "--since", "1h"], out=out) == 0
    assert "cli-log-1" in out.getvalue()
    assert "queued" in out.getvalue()
