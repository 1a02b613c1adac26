"""Reading the remediation log: GET /api/remediations and `python -m remediation log`."""

import base64
import io
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableServiceClient

from remediation.audit import AuditLog, AuditRecord
from remediation.config import load
from remediation.ops import InvalidQuery, moment, parse_query, resolve_vm
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


YEAR_1 = datetime(1, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("99999d", datetime(1753, 2, 14, 12, 0, tzinfo=UTC)),
        ("99999999d", YEAR_1),  # no OverflowError: as far back as a time goes
        ("9" * 5000 + "m", YEAR_1),  # more digits than int() reads
        ("0001-01-01", YEAR_1),
        ("0001-01-01T00:00:00+01:00", YEAR_1),  # before year 1 in UTC
        ("9999-12-31T23:59:59-01:00", datetime.max.replace(tzinfo=UTC)),
        ("2026-11-01T01:00:00+01:00", datetime(2026, 11, 1, tzinfo=UTC)),
    ],
)
def test_times_out_of_range_are_pinned_not_raised(text, expected):
    assert moment(text, NOW) == expected


@pytest.mark.parametrize("since", ["1900-01-01", "99999999d", "0001-01-01T00:00:00+01:00", "401d"])
def test_since_is_clamped_to_the_retention_period_and_says_so(since):
    query = parse_query({"since": since}, SETTINGS, NOW, scope=SETTINGS.subscriptions)
    assert query.since == datetime(2025, 10, 25, 12, 0, tzinfo=UTC)  # NOW - 400 days
    assert query.until == NOW
    assert query.notes == ("since clamped to the retention period of 400 days",)


def test_a_window_within_the_retention_period_is_kept_as_asked():
    query = parse_query(
        {"since": "400d", "until": "1d"}, SETTINGS, NOW, scope=SETTINGS.subscriptions
    )
    assert (query.since, query.until, query.notes) == (
        datetime(2025, 10, 25, 12, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        (),
    )


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"since": "yesterday"}, "since: not a time"),
        ({"since": "1h", "until": "2h"}, "since is after until"),
        (
            {"since": "2030-01-01"},
            "since (2030-01-01 00:00 UTC) is in the future: until defaults to now "
            "(2026-11-29 12:00 UTC)",
        ),
        ({"vm": "/subscriptions/x/../y"}, "vm: not a VM or Arc machine"),
        (
            {
                "vm": f"/subscriptions/{OTHER}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/v"
            },
            "its subscription is not in scope",
        ),
        ({"subscription": OTHER}, "not in scope"),
        ({"subscription": "all"}, "not a subscription id"),
        ({"decision": "yes"}, "decision: one of"),
        ({"limit": "0"}, "limit"),
        ({"limit": "5000"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "²"}, "limit: a whole number from 1 to 1000"),  # a digit to isdigit()
        ({"limit": "٣"}, "limit: a whole number from 1 to 1000"),
        ({"limit": "1" * 5000}, "limit: a whole number from 1 to 1000"),
        ({"since": "24h\n"}, "since: not a time"),
        ({"since": "٣d"}, "since: not a time"),  # ASCII digits only
        ({"since": "1900-01-01", "until": "1901-01-01"}, "until: before the retention period"),
        ({"select": "*"}, "unknown filter"),
    ],
)
def test_bad_filters_are_refused_by_name(params, problem):
    with pytest.raises(InvalidQuery) as caught:
        parse_query(params, SETTINGS, NOW, scope=SETTINGS.subscriptions)
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


def test_every_refusal_over_http_has_one_shape(world_factory):
    world = world_factory(estate("ready"))
    _records(world, 2)
    vm_page = json.loads(
        world.get("remediations", {"vm": new_vm("log-1").id, "limit": "1"}).get_body()
    )
    legacy = base64.urlsafe_b64encode(f"d-20261129|{'1' * 19}-{'a' * 32}".encode()).decode()
    refusals = {
        "limit of 5,000 digits": ({"limit": "9" * 5000}, "limit: a whole number from 1 to 1000"),
        "Unicode digits": ({"limit": "٣"}, "limit: a whole number from 1 to 1000"),
        "forged token": ({"continuation": "Zm9yZ2Vk"}, "the continuation token is not valid"),
        "a day token of the previous version": (
            {"continuation": legacy},
            "the continuation token is not valid",
        ),
        "another query's token": (
            {"continuation": vm_page["continuation"]},
            "the continuation token belongs to another query",
        ),
        "a window older than retention": (
            {"since": "1900-01-01", "until": "1901-01-01"},
            "until: before the retention period of 400 days "
            "(REMEDIATION_AUDIT_RETENTION_DAYS): nothing that old is kept",
        ),
    }
    for name, (params, error) in refusals.items():
        response = world.get("remediations", params)
        assert response.status_code == 400, name
        assert json.loads(response.get_body()) == {"errors": [error]}, name


def test_http_says_when_since_was_clamped_and_when_more_records_exist(world_factory):
    world = world_factory(estate("ready"))
    _records(world, 3)
    clamped = json.loads(
        world.get("remediations", {"since": "1900-01-01", "limit": "3"}).get_body()
    )
    assert [r["reason"] for r in clamped["records"]] == ["r0", "r1", "r2"]
    assert clamped["continuation"] is None  # exactly 3 match: nothing more
    assert clamped["notes"] == ["since clamped to the retention period of 400 days"]
    first = json.loads(world.get("remediations", {"limit": "2"}).get_body())
    assert (len(first["records"]), first["notes"]) == (2, [])
    assert first["continuation"]


def test_a_short_vm_name_resolves_to_the_ids_it_names_in_scope(azurite):
    table = TableServiceClient.from_connection_string(azurite).get_table_client(
        f"ops{uuid.uuid4().hex[:10]}"
    )
    audit = AuditLog(table)
    audit.create()
    now = datetime.now(UTC)
    web = new_vm("web-01").id
    namesake = web.replace("/resourceGroups/", "/resourceGroups/other-")
    elsewhere = web.replace(SUB, OTHER)
    for vm in (web, namesake, elsewhere, new_vm("web-011").id):
        audit.write(
            AuditRecord(
                vm=vm,
                subscription=vm.split("/")[2],
                trigger="sweep",
                decision="compliant",
                reason="r",
                mode="report",
                outcome="none",
                time=now - timedelta(minutes=len(vm) % 7),
            )
        )
    window = parse_query({"since": "1h"}, SETTINGS, now, scope=SETTINGS.subscriptions)
    assert sorted(resolve_vm(audit, "WEB-01", window, SETTINGS.subscriptions)) == sorted(
        [web, namesake]
    )
    only_sub = parse_query(
        {"since": "1h", "subscription": SUB}, SETTINGS, now, scope=SETTINGS.subscriptions
    )
    assert len(resolve_vm(audit, "web-011", only_sub, SETTINGS.subscriptions)) == 1
    assert resolve_vm(audit, "web-02", window, SETTINGS.subscriptions) == []
    earlier = parse_query(
        {"since": "3h", "until": "2h"}, SETTINGS, now, scope=SETTINGS.subscriptions
    )
    assert resolve_vm(audit, "web-01", earlier, SETTINGS.subscriptions) == []
    with pytest.raises(InvalidQuery) as caught:
        resolve_vm(audit, "web 01/..", window, SETTINGS.subscriptions)
    assert caught.value.problems == ["vm: not a virtual machine name or resource id"]


def test_the_log_command_prints_a_table_or_json(world_factory):
    from remediation.__main__ import main

    # The install takes 3 s: the second write's event finds it running (duplicate), no race.
    world = world_factory(estate("ready"), plane_options={"lro_seconds": 3}, **ENFORCE)
    world.deliver(*world.plane.create_vm(new_vm("cli-log-1")))
    out = io.StringIO()
    assert main(["log", "--json", "--vm", new_vm("cli-log-1").id], out=out) == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["outcome"] for line in lines] == ["duplicate", "started"]
    out = io.StringIO()
    assert main(["log", "--since", "1h"], out=out) == 0
    assert "cli-log-1" in out.getvalue()
    assert "started" in out.getvalue()
