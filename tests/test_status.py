"""The status: what is uncovered right now, read from the local plane's Resource Graph,
counted by hand below, and read-only (no ARM write, no log row, no queue message)."""

import dataclasses
import io
from collections import Counter
from datetime import UTC, datetime

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient

from localazure import Extension, Subscription
from localazure.estate import UBUNTU_2204, mde_extension
from remediation import runs, status, sweep
from remediation.config import Mode, load
from tests.conftest import SUB
from tests.test_service import estate, new_vm

SUB2 = "22222222-2222-4222-8222-222222222222"
OUTSIDE = "33333333-3333-4333-8333-333333333333"
GRAPH = "Microsoft.ResourceGraph/resources/read"
WORDS = (
    "has MDE",
    "to install",
    "deferred",
    "excluded",
    "unsupported",
    "blocked",
    "error",
    "unavailable",
)


def two_subscriptions():
    """SUB has Defender for Servers and the integration on; SUB2 has neither, and the
    settings (report mode, no plan change) do not let the app turn them on."""
    labelled = estate("ready")
    covered = new_vm("covered-ws2022", "ws2022")
    covered.extensions["mde.windows"] = mde_extension(covered)
    failed = new_vm("failed-ubuntu")
    failed.extensions["mde.linux"] = mde_extension(failed, "Failed", 31)
    blocked = new_vm("blocked-ubuntu")
    blocked.extensions["oms"] = Extension(
        "OmsAgentForLinux",
        "Microsoft.EnterpriseCloud.Monitoring",
        "OmsAgentForLinux",
        state="Failed",
    )
    for vm in (
        covered,
        new_vm("plain-ubuntu"),
        failed,
        new_vm("asleep-ws2022", "ws2022", power="deallocated"),
        new_vm("desk-win11", "win11"),
        new_vm("tagged-ubuntu", tags={"defender-remediation-exclude": "yes"}),
        blocked,
    ):
        labelled.add_vm(vm)
    labelled.add_subscription(Subscription(SUB2))
    labelled.add_vm(UBUNTU_2204.vm(SUB2, "rg-other", "other-ubuntu"))
    return labelled


def categories(**counts):
    """Every category word, zero unless given (to_install=2 -> 'to install': 2)."""
    given = {word.replace("_", " "): count for word, count in counts.items()}
    return {word: given.get(word, 0) for word in WORDS}


# Written by hand from the estate above.
SUB_PLATFORMS = [
    {
        "platform": "ubuntu-22.04",
        "vms": 4,
        # plain and failed: to install; tagged: excluded; blocked: another Failed extension
        "categories": categories(to_install=2, excluded=1, blocked=1),
        "eligible_running": 3,
        "covered": 0,
        "coverage_percent": 0.0,
    },
    {
        "platform": "windows-client",
        "vms": 1,
        "categories": categories(unsupported=1),
        "eligible_running": 0,
        "covered": 0,
        "coverage_percent": None,  # nothing eligible: 0 of 0 is n/a
    },
    {
        "platform": "windows-server-2022",
        "vms": 2,
        "categories": categories(has_MDE=1, deferred=1),  # the deallocated one waits
        "eligible_running": 1,
        "covered": 1,
        "coverage_percent": 100.0,
    },
]
SUB2_PLATFORMS = [
    {
        "platform": "ubuntu-22.04",
        "vms": 1,
        # Defender for Servers is off, and REMEDIATION_ALLOW_PLAN_CHANGE is false
        "categories": categories(blocked=1),
        "eligible_running": 1,
        "covered": 0,
        "coverage_percent": 0.0,
    }
]


def by_subscription(value):
    return {item["subscription"]: item for item in value["subscriptions"]}


def test_the_status_counts_each_subscription_and_platform_as_labelled_by_hand(world_factory):
    world = world_factory(two_subscriptions())
    code, value = status.http_status(world.services, {})
    assert code == 200
    assert (value["mode"], value["complete"]) == ("report", True)
    subscriptions = by_subscription(value)
    assert list(subscriptions) == [SUB, SUB2]
    assert subscriptions[SUB]["platforms"] == SUB_PLATFORMS
    assert subscriptions[SUB2]["platforms"] == SUB2_PLATFORMS
    assert (
        subscriptions[SUB]["vms"],
        subscriptions[SUB]["eligible_running"],
        subscriptions[SUB]["covered"],
        subscriptions[SUB]["coverage_percent"],
    ) == (7, 4, 1, 25.0)
    assert subscriptions[SUB]["categories"] == categories(
        has_MDE=1, to_install=2, deferred=1, excluded=1, unsupported=1, blocked=1
    )
    # Over both: 8 VMs; eligible and running: plain, failed, blocked, the covered
    # Windows Server and SUB2's Ubuntu.
    assert (value["vms"], value["eligible_running"], value["covered"]) == (8, 5, 1)
    assert value["coverage_percent"] == 20.0
    human = [(item["vm"].rsplit("/", 1)[1], item["decision"]) for item in value["needs_a_human"]]
    assert human == [
        ("blocked-ubuntu", "blocked"),
        ("other-ubuntu", "blocked"),
        ("desk-win11", "unsupported"),
    ]
    blocked, no_plan, desk = value["needs_a_human"]
    assert "OmsAgentForLinux" in blocked["hint"]
    assert "REMEDIATION_ALLOW_PLAN_CHANGE" in no_plan["hint"]
    assert "Intune" in desk["hint"]
    assert (blocked["subscription"], blocked["platform"]) == (SUB, "ubuntu-22.04")


def test_one_subscription_can_be_asked_for(world_factory):
    world = world_factory(two_subscriptions())
    code, value = status.http_status(world.services, {"subscription": SUB2.upper()})
    assert code == 200
    assert [s["subscription"] for s in value["subscriptions"]] == [SUB2]
    assert value["subscriptions"][0]["platforms"] == SUB2_PLATFORMS
    assert [item["vm"].rsplit("/", 1)[1] for item in value["needs_a_human"]] == ["other-ubuntu"]


def table_state(world):
    """Every entity of the app's table (keys and ETags), and the storage account's
    tables and queues with their message counts."""
    connection = world.environment["AzureWebJobsStorage"]
    tables = TableServiceClient.from_connection_string(connection)
    queues = QueueServiceClient.from_connection_string(connection)
    table = tables.get_table_client(world.environment["REMEDIATION_AUDIT_TABLE"])
    entities = sorted(
        (e["PartitionKey"], e["RowKey"], e.metadata["etag"]) for e in table.list_entities()
    )
    names = sorted(t.name for t in tables.list_tables())
    install = world.environment["REMEDIATION_INSTALL_QUEUE"]
    sweeps = world.environment["REMEDIATION_SWEEP_QUEUE"]
    # other tests share the account: this world's queues only
    mine = {install, f"{install}-poison", sweeps, f"{sweeps}-poison"}
    messages = {
        q.name: queues.get_queue_client(q.name).get_queue_properties().approximate_message_count
        for q in queues.list_queues()
        if q.name in mine
    }
    return entities, names, messages


def test_the_status_writes_nothing_anywhere(world_factory):
    world = world_factory(two_subscriptions())
    services = world.services  # built (table and queues created) before anything is counted
    # A report sweep first: its run, its rows and a Failed extension's history are there
    # to be read (and, if the status wrote, to be changed).
    run = sweep.start(services, runs.SweepRequest((SUB, SUB2), Mode.REPORT, "cli"), None)
    sweep.run_batch(services, sweep.BatchMessage(run.run_id, 0, (SUB, SUB2)))
    before = table_state(world)
    entities, _, messages = before
    assert len(entities) >= 9  # a run, a batch result and 8 VM rows at least
    world.plane.log.clear()

    code, value = status.http_status(services, {})
    assert code == 200
    assert value["vms"] == 8

    assert table_state(world) == before
    assert messages[world.environment["REMEDIATION_INSTALL_QUEUE"]] == 0
    assert set(messages.values()) == {0}
    requests = world.plane.log.items()
    assert world.plane.log.count(GRAPH) == 1  # both subscriptions in one query
    not_reads = {
        (item.method, item.operation)
        for item in requests
        if item.method not in {"GET", "HEAD", "OPTIONS"}
    }
    assert not_reads <= {("POST", GRAPH), ("POST", "login/token")}
    # The report's trend is the finished runs: still just the sweep's.
    assert [r.run_id for r in runs.RunStore(services.audit.table).runs_since(run.started)] == [
        run.run_id
    ]


def test_a_subscription_that_cannot_be_read_is_reported_unavailable(world_factory):
    world = world_factory(two_subscriptions())
    pricings = rf"/subscriptions/{SUB2}/providers/Microsoft\.Security/pricings"
    world.plane.faults.add("GET", pricings, 403, count=100)
    code, value = status.http_status(world.services, {})
    assert code == 200
    assert value["complete"] is False
    subscriptions = by_subscription(value)
    assert subscriptions[SUB]["platforms"] == SUB_PLATFORMS
    unavailable = subscriptions[SUB2]
    assert unavailable["available"] is False
    assert "platforms" not in unavailable
    assert f"plan of subscription {SUB2}: forbidden (InjectedFault)" in unavailable["error"]
    assert unavailable["hint"]
    # The totals are those of what could be read.
    assert (value["vms"], value["eligible_running"], value["covered"]) == (7, 4, 1)


def test_a_failed_graph_query_is_tried_per_subscription(world_factory):
    world = world_factory(two_subscriptions())
    # The query for both fails, then SUB's alone; SUB2's alone succeeds.
    world.plane.faults.add("POST", r"Microsoft\.ResourceGraph/resources", 400, count=2)
    code, value = status.http_status(world.services, {})
    assert code == 200
    subscriptions = by_subscription(value)
    assert subscriptions[SUB]["available"] is False
    assert "querying Resource Graph: HTTP 400 InjectedFault" in subscriptions[SUB]["error"]
    assert subscriptions[SUB2]["platforms"] == SUB2_PLATFORMS
    # SUB's blocked and unsupported VMs were not counted: only SUB2's blocked one.
    assert [item["vm"].rsplit("/", 1)[1] for item in value["needs_a_human"]] == ["other-ubuntu"]
    assert world.plane.log.count(GRAPH) == 3


def test_before_the_first_sweep_a_missing_table_is_no_history_not_an_error(world_factory):
    world = world_factory(two_subscriptions())
    services = world.services
    services.audit.table.delete_table()  # failed-ubuntu's reinstalls are read from it
    code, value = status.http_status(services, {"subscription": SUB})
    assert code == 200
    assert value["complete"] is True
    [platforms] = [s["platforms"] for s in value["subscriptions"]]
    assert platforms == SUB_PLATFORMS  # counted as when the table is there, and empty
    assert [item for item in value["needs_a_human"] if item["decision"] == "error"] == []


def test_refused_parameters_reach_no_azure(world_factory):
    world = world_factory(two_subscriptions())
    code, value = status.http_status(world.services, {"subscription": "nope", "top": "5"})
    assert code == 400
    assert value == {
        "errors": [
            "unknown parameter 'top'",
            "subscription: not a subscription id: 'nope'",
        ]
    }
    assert world.plane.log.arm() == []


# --- parse_params: plain values -----------------------------------------------------------
SETTINGS = load(
    {
        "REMEDIATION_SUBSCRIPTIONS": f"{SUB},{SUB2}",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    }
)


@pytest.mark.parametrize(
    ("params", "chosen"),
    [
        ({}, [SUB, SUB2]),
        ({"subscription": SUB2}, [SUB2]),
        ({"subscription": SUB2.upper()}, [SUB2]),
        ({"subscription": f"{SUB2}, {SUB}"}, [SUB, SUB2]),
        ({"subscription": f"{SUB},{SUB}"}, [SUB]),
        ({"code": "the-function-key"}, [SUB, SUB2]),  # ?code= is the host's, not ours
    ],
)
def test_parse_params_chooses_subscriptions_in_scope(params, chosen):
    assert status.parse_params(params, SETTINGS.subscriptions) == chosen


@pytest.mark.parametrize(
    ("params", "problems"),
    [
        ({"subscriptions": SUB}, ["unknown parameter 'subscriptions'"]),
        ({"json": "1", "limit": "5"}, ["unknown parameter 'json'", "unknown parameter 'limit'"]),
        ({"subscription": ""}, ["subscription: not a subscription id: ''"]),
        ({"subscription": "all"}, ["subscription: not a subscription id: 'all'"]),
        ({"subscription": SUB + "\n"}, [f"subscription: not a subscription id: {SUB + chr(10)!r}"]),
        ({"subscription": SUB + "\t"}, [f"subscription: not a subscription id: {SUB + chr(9)!r}"]),
        ({"subscription": f"{{{SUB}}}"}, [f"subscription: not a subscription id: '{{{SUB}}}'"]),
        (
            {"subscription": OUTSIDE},
            [f"subscription: {OUTSIDE} is not in scope"],
        ),
        (
            {"subscription": f"{SUB},x", "vm": "y"},
            ["unknown parameter 'vm'", "subscription: not a subscription id: 'x'"],
        ),
        (
            {"subscription": ",".join([SUB] * 1001)},
            ["subscription: at most 1000 subscriptions"],
        ),
    ],
)
def test_parse_params_refuses_with_every_problem(params, problems):
    with pytest.raises(status.InvalidStatusRequest) as refused:
        status.parse_params(params, SETTINGS.subscriptions)
    assert refused.value.problems == problems


# --- render_table: a hand-built status ------------------------------------------------------
def hand_built(human: int) -> status.Status:
    linux = status.Tally(Counter({"has MDE": 3, "to install": 1}), eligible_running=4)
    linux.covered = 3
    return status.Status(
        generated=datetime(2026, 9, 14, 8, 30, tzinfo=UTC),
        mode="report",
        subscriptions=[
            status.SubscriptionStatus(SUB, {"ubuntu-22.04": linux}),
            status.SubscriptionStatus(SUB2, error="querying Resource Graph: HTTP 403", hint="x"),
        ],
        human=[
            status.HumanItem(
                f"/subscriptions/{SUB}/resourceGroups/rg-desk/providers/Microsoft.Compute/"
                f"virtualMachines/vm-{n:02d}",
                SUB,
                "windows-client",
                "unsupported",
                "[why]",
                "fix",
            )
            for n in range(human)
        ],
    )


def rendered(value: status.Status, width: int = 200, **options) -> str:
    out = io.StringIO()
    status.render_table(value, out, width=width, **options)
    return out.getvalue()


def cells(text: str, first: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(f"│ {first} ")]
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_the_table_has_the_categories_and_coverage_per_platform():
    text = rendered(hand_built(2))
    assert "75% of eligible running VMs (3 of 4), 4 VMs" in text
    # platform, the eight categories, VMs, coverage
    assert cells(text, "ubuntu-22.04") == [
        "ubuntu-22.04",
        *("3", "1", "0", "0", "0", "0", "0", "0"),
        "4",
        "75%",
    ]
    assert f"subscription {SUB2}: unavailable: querying Resource Graph: HTTP 403" in text
    assert "; 1 of 2 subscriptions unavailable" in text
    assert "Needs a human: all 2" in text
    assert cells(text, "vm-00") == [
        "vm-00",
        "rg-desk",
        SUB,
        "unsupported",
        "windows-client",
        "[why]",  # ARM's text is shown as it is, not read as rich markup
        "fix",
    ]


def test_the_table_shows_at_most_20_that_need_a_human_and_says_how_to_see_the_rest():
    text = rendered(hand_built(27))
    assert (
        "Needs a human: 20 of 27 shown (--all shows every one, --limit N that many, --json "
        "all of them)" in " ".join(text.split())
    )
    assert "vm-19" in text
    assert "vm-20" not in text


@pytest.mark.parametrize(
    ("shown", "last", "title"), [(None, "vm-26", "all 27"), (3, "vm-02", "3 of 27")]
)
def test_all_or_a_limit_of_those_that_need_a_human(shown, last, title):
    text = rendered(hand_built(27), shown=shown)
    assert f"Needs a human: {title}" in text
    assert last in text
    assert f"vm-{int(last[3:]) + 1:02d}" not in text


def test_at_80_columns_every_line_fits_and_the_columns_that_matter_stay():
    value = hand_built(3)
    value.human[0] = dataclasses.replace(
        value.human[0], reason="A long reason. " * 12, hint="A long hint. " * 8
    )
    text = rendered(value, width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    # Only the categories this subscription has: has MDE and to install.
    header = next(line for line in text.splitlines() if "platform" in line)
    assert "has MDE" in header
    assert "to install" in header
    assert "unsupported" not in header
    assert "blocked" not in header
    assert cells(text, "ubuntu-22.04") == ["ubuntu-22.04", "3", "1", "4", "75%"]
    # Needs a human: the VM, decision and platform, and the why and what to do, folded.
    assert cells(text, "vm-01") == ["vm-01", "unsupported", "windows-client", "[why]", "fix"]
    assert "rg-desk" not in text  # the resource group gives way first
    assert "A long hint." in text


def test_nothing_needs_a_human():
    assert "Needs a human: nothing." in rendered(hand_built(0))


def test_a_platform_with_nothing_eligible_shows_no_coverage_figure():
    value = hand_built(0)
    stopped = status.Tally(Counter({"blocked": 1}), eligible_running=0)
    value.subscriptions[0].platforms["windows-server-2022"] = stopped
    assert cells(rendered(value), "windows-server-2022")[-2:] == ["1", "n/a"]
    assert value.to_json()["subscriptions"][0]["platforms"][1]["coverage_percent"] is None


def test_a_bidi_override_in_a_reason_is_shown_escaped_in_the_table():
    value = hand_built(1)
    value.human[0] = dataclasses.replace(
        value.human[0], reason="owner \u202eexe.txt", hint="x\u2066y"
    )
    text = rendered(value)
    assert "\u202e" not in text
    assert "\u2066" not in text
    assert "owner \\u202eexe.txt" in text
    assert "x\\u2066y" in text


def test_a_reason_its_hint_and_findings_read_as_separate_sentences():
    from remediation.model import sentences

    assert sentences(
        "the extension ended Failed (code 51)",
        "Hint: onboard it with Intune",
        "",
        "Findings: no-monitoring-agent",
    ) == (
        "the extension ended Failed (code 51). Hint: onboard it with Intune. "
        "Findings: no-monitoring-agent."
    )
    assert sentences("Done.", "Really?", "Yes!") == "Done. Really? Yes!"
    assert sentences("", "") == ""
