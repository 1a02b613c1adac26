"""The remediation log on real Table Storage (Azurite)."""

import base64
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from azure.data.tables import TableClient, TableServiceClient

from remediation.audit import AuditLog, AuditRecord, Query, index_partition
from remediation.tables import vm_partition

VM = "/subscriptions/11111111-1111-4111-8111-111111111111/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
OTHER = VM[:-1] + "2"


@pytest.fixture
def audit(azurite):
    table = TableServiceClient.from_connection_string(azurite).get_table_client(
        f"audit{uuid.uuid4().hex[:10]}"
    )
    log = AuditLog(table)
    log.create()
    log.create()  # idempotent
    return log, table


class Requests:
    """Counts the requests a TableClient sends: its raw_request_hook (azure-core's
    CustomHookPolicy), on a client the test builds. No patching."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request) -> None:
        self.urls.append(request.http_request.url)

    def __len__(self) -> int:
        return len(self.urls)

    def __bool__(self) -> bool:  # the policy calls a hook only if it is truthy
        return True

    def clear(self) -> None:
        self.urls.clear()


@pytest.fixture
def counted(azurite):
    requests = Requests()
    table = TableClient.from_connection_string(
        azurite, f"audit{uuid.uuid4().hex[:10]}", raw_request_hook=requests
    )
    log = AuditLog(table)
    log.create()
    requests.clear()
    return log, table, requests


def record(vm=VM, when=None, **changes):
    values = {
        "vm": vm,
        "subscription": "11111111-1111-4111-8111-111111111111",
        "trigger": "event",
        "decision": "install",
        "reason": "MDE.Linux is absent on ubuntu-22.04.",
        "mode": "enforce",
        "outcome": "queued",
    }
    values |= changes
    if when:
        values["time"] = when
    return AuditRecord(**values)


def test_a_record_round_trips_with_every_field(audit):
    log, _ = audit
    written = log.write(
        record(
            actions=("enable-setting:WDATP", "install:MDE.Linux"),
            applied=True,
            platform="ubuntu-22.04",
            os="linux",
            install_code=10,
            install_state="Failed",
            hint="h",
            event_id="e",
            correlation_id="c",
            run_id="r",
            duration_ms=12,
        )
    )
    [read] = log.for_vm(VM)
    assert read == written


def test_each_record_is_stored_under_the_vm_and_the_log(audit):
    log, table = audit
    log.write(record())
    partitions = sorted(entity["PartitionKey"] for entity in table.list_entities())
    assert partitions == sorted([index_partition(VM), "log"])
    assert re.fullmatch(r"vi-\d\d", index_partition(VM))  # one of a bounded set of buckets


def test_vm_history_is_newest_first_and_only_that_vm(audit):
    log, _ = audit
    now = datetime.now(UTC)
    for minutes in (30, 10, 20):
        log.write(record(when=now - timedelta(minutes=minutes), reason=f"{minutes}"))
    log.write(record(vm=OTHER))
    assert [r.reason for r in log.for_vm(VM)] == ["10", "20", "30"]
    assert [r.reason for r in log.for_vm(VM, limit=2)] == ["10", "20"]
    assert log.for_vm(VM.upper())[0].reason == "10"  # ARM ids are case-insensitive


def test_since_reads_only_the_window_across_days(audit):
    log, _ = audit
    now = datetime.now(UTC)
    for hours in (1, 23, 25, 49):
        log.write(record(when=now - timedelta(hours=hours), reason=f"{hours}h"))
    recent = [r.reason for r in log.since(now - timedelta(hours=24))]
    assert recent == ["1h", "23h"]
    assert [
        r.reason for r in log.since(now - timedelta(hours=48), until=now - timedelta(hours=2))
    ] == ["23h", "25h"]


def test_reinstalls_are_counted_since_the_last_success(audit):
    log, _ = audit
    now = datetime.now(UTC)
    states = ["Failed", "Succeeded", "Failed", "", "Failed"]  # oldest first
    for index, state in enumerate(states):
        log.write(record(when=now - timedelta(minutes=10 - index), install_state=state))
    assert log.reinstalls_since_success(VM) == 2
    assert log.reinstalls_since_success(OTHER) == 0


def test_every_record_is_one_operator_log_line_at_info(audit, caplog):
    log, _ = audit
    with caplog.at_level(logging.INFO, logger="remediation"):
        log.write(record(decision="blocked", outcome="failed", hint="set X=true"))
    [line] = caplog.records
    assert line.levelno == logging.INFO  # a record per VM, not an alert
    assert line.getMessage().startswith(f'vm="{VM}" sub="')
    assert 'decision="blocked"' in line.getMessage()
    assert 'hint="set X=true"' in line.getMessage()


def test_a_sweeps_records_are_logged_at_info_and_written_in_transactions_of_100(counted, caplog):
    log, table, requests = counted
    now = datetime.now(UTC)
    records = [
        record(
            vm=f"{VM[:-1]}{index}",
            when=now - timedelta(days=index % 3, seconds=index),
            decision=("blocked", "error", "compliant")[index % 3],
        )
        for index in range(250)
    ]
    with caplog.at_level(logging.INFO, logger="remediation"):
        log.write_many(records)
    sent = list(requests.urls)
    ours = [line.levelno for line in caplog.records if line.name == "remediation"]
    assert ours == [logging.INFO] * 250
    # Every row went in a transaction: none was written alone.
    assert all(url.endswith("$batch") for url in sent)
    stored: dict[str, int] = {}
    for entity in table.list_entities():
        stored[entity["PartitionKey"]] = stored.get(entity["PartitionKey"], 0) + 1
    assert stored.pop("log") == 250
    assert sum(stored.values()) == 250  # one index row per record, in a few buckets
    assert len(stored) <= 32
    full = 3 + sum(-(-rows // 100) for rows in stored.values())  # log: 100 + 100 + 50
    assert len(sent) == full
    found, token = log.search(Query(since=now - timedelta(days=3), until=now, limit=1000))
    assert (len(found), token) == (250, "")


# logfmt as an operator's tool (or Kusto's parse-kv with quote and escape) reads it.
PAIR = re.compile(r'([a-z]+)="((?:[^"\\]|\\.)*)"(?: |\Z)')


def parse_logfmt(line: str) -> dict[str, str]:
    pairs = PAIR.findall(line)
    assert "".join(f'{k}="{v}" ' for k, v in pairs) == line + " ", "not logfmt"
    unescape = {"n": "\n", "r": "\r"}
    return {
        key: re.sub(r"\\(.)", lambda m: unescape.get(m[1], m[1]), value) for key, value in pairs
    }


def test_the_log_line_is_logfmt_that_a_value_cannot_forge():
    forged = VM.replace("/rg/", "/rg x decision=compliant outcome=succeeded/")
    reason = 'Say "no" to C:\\temp\nand then decision=compliant'
    line = record(
        vm=forged, decision="blocked", outcome="none", reason=reason, install_code=10
    ).log_line()
    assert "\n" not in line  # one record, one line
    assert parse_logfmt(line) == {
        "vm": forged,
        "sub": "11111111-1111-4111-8111-111111111111",
        "trigger": "event",
        "decision": "blocked",
        "outcome": "none",
        "mode": "enforce",
        "code": "10",
        "reason": reason,
    }


def test_nothing_invisible_reaches_the_log_line():
    """A tag value with U+202E (right-to-left override) would reverse the rest of the line
    on an operator's screen; a U+2028 would break it. Each is written as its escape."""
    reason = "tag owner=\u202etxt.exe\u202c is set; next\u2028line\u200b; zero\x00"
    line = record(reason=reason).log_line()
    assert "\u202e" not in line
    assert "\u2028" not in line
    assert "\u200b" not in line
    assert "\x00" not in line
    assert (
        'reason="tag owner=\\u202etxt.exe\\u202c is set; next\\u2028line\\u200b; zero\\u0000"'
        in line
    )
    # Letters of any script are not escaped.
    assert 'reason="Échec: 日本語"' in record(reason="Échec: 日本語").log_line()


def test_any_window_is_one_request_newest_first_across_days(counted):
    log, _, requests = counted
    now = datetime.now(UTC)
    year = Query(since=now - timedelta(days=400), until=now, limit=100)
    assert log.search(year) == ([], "")
    assert len(requests) == 1  # the previous version: one query a day, 401
    for day in (2, 0, 1):
        for minute in range(5):
            log.write(
                record(when=now - timedelta(days=day, minutes=minute), reason=f"{day}{minute}")
            )
    newest_first = [f"{day}{minute}" for day in range(3) for minute in range(5)]
    requests.clear()
    found, token = log.search(year)
    assert ([r.reason for r in found], token) == (newest_first, "")
    assert len(requests) == 1
    requests.clear()
    assert [r.reason for r in log.since(now - timedelta(days=400))] == newest_first
    assert len(requests) == 1
    # the window's edges are exact, across days
    inner = Query(since=now - timedelta(days=1, minutes=3), until=now - timedelta(minutes=2))
    assert [r.reason for r in log.search(inner)[0]] == ["02", "03", "04", "10", "11", "12", "13"]


def test_pages_resume_mid_range_across_days_and_end_exactly(counted):
    log, _, requests = counted
    now = datetime.now(UTC)
    for day in range(3):
        for minute in range(5):
            log.write(
                record(when=now - timedelta(days=day, minutes=minute), reason=f"{day}{minute}")
            )
    pages, token = [], ""
    requests.clear()
    while True:
        found, token = log.search(
            Query(since=now - timedelta(days=30), until=now, limit=5, continuation=token)
        )
        pages.append([r.reason for r in found])
        if not token:
            break
    assert pages == [
        ["00", "01", "02", "03", "04"],
        ["10", "11", "12", "13", "14"],
        ["20", "21", "22", "23", "24"],
    ]
    assert len(requests) == 3  # one a page; the last says there is no more
    blocked = Query(since=now - timedelta(days=30), until=now, decision="blocked")
    assert log.search(blocked) == ([], "")


def test_a_continuation_token_of_another_query_is_refused(audit):
    log, _ = audit
    now = datetime.now(UTC)
    for minute in range(3):
        log.write(record(when=now - timedelta(minutes=minute)))
    window = {"since": now - timedelta(days=1), "until": now, "limit": 1}
    _, vm_token = log.search(Query(**window, vm=VM))
    assert vm_token
    with pytest.raises(ValueError, match="another query"):
        log.search(Query(**window, continuation=vm_token))
    with pytest.raises(ValueError, match="another query"):
        log.search(Query(**window, vm=OTHER, continuation=vm_token))
    # Forged from a real one: the same bucket, another VM's hash; or no hash at all.
    partition, _, row_key = base64.urlsafe_b64decode(vm_token).decode().partition("|")
    assert partition == index_partition(VM)
    forged = f"{partition}|{'0' * 40}{row_key[40:]}"  # the same bucket, another VM's hash
    with pytest.raises(ValueError, match="another query"):
        log.search(
            Query(**window, vm=VM, continuation=base64.urlsafe_b64encode(forged.encode()).decode())
        )
    bare = f"{partition}|{row_key[41:]}"  # a bucket row key without a VM hash
    with pytest.raises(ValueError, match="another query"):
        log.search(
            Query(**window, vm=VM, continuation=base64.urlsafe_b64encode(bare.encode()).decode())
        )
    legacy = base64.urlsafe_b64encode(f"d-20260101|{'1' * 19}-{'a' * 32}".encode()).decode()
    with pytest.raises(ValueError, match="not valid"):
        log.search(Query(**window, continuation=legacy))


def _previous_version_row(vm, when, reason):
    """A record as the previous version stored it: the log row and a row in the VM's own
    partition (v-<hash>), the same row key, no index marker."""
    key = f"{10**19 - int(when.timestamp() * 1_000_000):019d}-{uuid.uuid4().hex}"
    row = {
        "RowKey": key,
        "vm": vm,
        "subscription": "11111111-1111-4111-8111-111111111111",
        "trigger": "sweep",
        "decision": "compliant",
        "reason": reason,
        "mode": "report",
        "outcome": "none",
        "time": when,
    }
    return [row | {"PartitionKey": "log"}, row | {"PartitionKey": vm_partition(vm)}]


def test_a_vms_rows_of_the_previous_version_are_read_after_the_new_ones(audit):
    log, table = audit
    now = datetime.now(UTC)
    for hours in (30, 20):
        for row in _previous_version_row(VM, now - timedelta(hours=hours), f"old {hours}h"):
            table.upsert_entity(row)
    for hours in (2, 1):
        log.write(record(when=now - timedelta(hours=hours), reason=f"new {hours}h"))
    log.write(record(vm=OTHER, when=now, reason="other vm"))
    newest_first = ["new 1h", "new 2h", "old 20h", "old 30h"]
    assert [r.reason for r in log.for_vm(VM)] == newest_first
    assert [r.reason for r in log.for_vm(VM, limit=3)] == newest_first[:3]
    assert [r.reason for r in log.for_vm(VM, limit=1)] == newest_first[:1]
    # Search by VM pages through both layouts, one record a page, and ends exactly.
    pages, token = [], ""
    while True:
        found, token = log.search(
            Query(since=now - timedelta(days=2), until=now, vm=VM, limit=1, continuation=token)
        )
        pages += [r.reason for r in found]
        if not token:
            break
    assert pages == newest_first
    found, token = log.search(Query(since=now - timedelta(hours=25), until=now, vm=VM))
    assert ([r.reason for r in found], token) == (newest_first[:3], "")
    # Retention deletes both rows of each, wherever the VM row is.
    assert log.purge(now - timedelta(hours=10)) == 2
    left = sorted(e["reason"] for e in table.list_entities())
    assert left == sorted(["new 1h", "new 1h", "new 2h", "new 2h", "other vm", "other vm"])


def test_vms_are_found_by_name_in_one_request(counted):
    log, _, requests = counted
    now = datetime.now(UTC)
    web = VM.replace("vm1", "web-01")
    namesake = web.replace("/rg/", "/rg-b/").replace("web-01", "WEB-01")
    log.write(record(vm=web, when=now - timedelta(hours=3)))
    log.write(record(vm=web, when=now - timedelta(hours=2)))
    log.write(record(vm=namesake, when=now - timedelta(hours=1)))
    log.write(record(vm=web + "0", when=now - timedelta(hours=1)))
    log.write(record(vm=web.replace("/rg/", "/rg-old/"), when=now - timedelta(days=3)))
    requests.clear()
    assert log.vms_named("Web-01", now - timedelta(days=1), now) == [namesake, web]
    assert len(requests) == 1
    other = "22222222-2222-4222-8222-222222222222"
    assert log.vms_named("web-01", now - timedelta(days=1), now, subscription=other) == []
    assert log.vms_named("web-02", now - timedelta(days=1), now) == []


def test_purge_deletes_both_rows_of_old_records_in_both_layouts(audit):
    log, table = audit
    now = datetime.now(UTC)
    log.write(record(when=now - timedelta(days=500), reason="old"))
    kept = log.write(record(when=now - timedelta(days=10), reason="kept"))
    # A record of the previous version: its rows under d-yyyymmdd and under the VM.
    legacy = {
        "RowKey": f"{10**19 - int((now - timedelta(days=450)).timestamp() * 1_000_000):019d}-{'b' * 32}",
        "vm": OTHER,
        "subscription": "11111111-1111-4111-8111-111111111111",
        "trigger": "sweep",
        "decision": "compliant",
        "reason": "legacy",
        "mode": "report",
        "outcome": "none",
        "time": now - timedelta(days=450),
    }
    day = (now - timedelta(days=450)).strftime("d-%Y%m%d")
    table.upsert_entity(legacy | {"PartitionKey": day})
    table.upsert_entity(legacy | {"PartitionKey": vm_partition(OTHER)})
    assert [r.reason for r in log.for_vm(OTHER)] == ["legacy"]  # VM queries read both
    assert log.purge(now - timedelta(days=400)) == 2
    left = sorted((e["PartitionKey"], e["reason"]) for e in table.list_entities())
    assert left == sorted([("log", "kept"), (index_partition(VM), "kept")])
    assert log.for_vm(VM) == [kept]


def test_purge_deletes_the_rest_when_one_row_is_already_gone(audit):
    log, table = audit
    now = datetime.now(UTC)
    log.write(record(when=now - timedelta(days=500), reason="gone"))
    for index in range(3):
        log.write(record(when=now - timedelta(days=500, minutes=index + 1), reason=f"old{index}"))
    kept = log.write(record(when=now - timedelta(days=1), reason="kept"))
    # One VM row lost (a write that stored the log row, then failed): its transaction fails.
    [lost] = [
        e for e in table.list_entities() if e["reason"] == "gone" and e["PartitionKey"] != "log"
    ]
    table.delete_entity(lost["PartitionKey"], lost["RowKey"])
    assert log.purge(now - timedelta(days=400)) == 4
    assert sorted(e["reason"] for e in table.list_entities()) == ["kept", "kept"]
    assert log.for_vm(VM) == [kept]


# What handle-event --json and sweep --json promise for every decision (issue 4).
PROMISED_FIELDS = {
    "vm",
    "subscription",
    "os",
    "platform",
    "decision",
    "reason",
    "actions",
    "applied",
    "mode",
    "outcome",
}


def test_json_form_has_the_fields_the_cli_promises():
    value = record(os="linux", platform="ubuntu-22.04").to_json()
    assert set(value) >= PROMISED_FIELDS
    assert isinstance(value["actions"], list)


def losing_table(azurite, losses: int):
    """A table client whose first ``losses`` transactions lose their answer (a
    connection reset on the read), and the list of those lost."""
    from azure.core.exceptions import ServiceResponseError

    lost: list[str] = []

    def lose(request) -> None:
        if request.http_request.url.endswith("$batch") and len(lost) < losses:
            lost.append(request.http_request.url)
            raise ServiceResponseError("Connection aborted: Connection reset by peer")

    table = TableClient.from_connection_string(
        azurite, f"audit{uuid.uuid4().hex[:10]}", raw_request_hook=lose
    )
    return table, lost


def test_a_transaction_whose_answer_was_lost_is_sent_again(azurite):
    table, lost = losing_table(azurite, losses=1)
    log = AuditLog(table)
    log.create()
    log.write_many([record(vm=OTHER, reason="kept")])
    assert len(lost) == 1
    assert sorted(e["reason"] for e in table.list_entities()) == ["kept", "kept"]


def test_a_transaction_lost_on_every_try_fails_the_write_loudly_after_three(azurite):
    from azure.core.exceptions import ServiceResponseError

    table, lost = losing_table(azurite, losses=10_000)
    log = AuditLog(table)
    log.create()
    with pytest.raises(ServiceResponseError):  # the sweep batch fails and is retried
        log.write_many([record(vm=OTHER, reason="never silently dropped")])
    assert len(lost) == 2 * 3  # the log row and the index row, three sends each


# --- Rows for changes; nights read back (pure) -------------------------------------------
NIGHT_1 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def _state(day: int, decision: str = "install", run: str = "", **more) -> AuditRecord:
    values = dict(
        vm=VM,
        subscription="11111111-1111-4111-8111-111111111111",
        trigger="sweep",
        decision=decision,
        reason=f"decided {decision}",
        mode="report",
        outcome="reported" if decision == "install" else "none",
        platform="ubuntu-22.04",
        eligible_running=True,
        run_id=run or f"night-{day}",
        time=NIGHT_1 + timedelta(days=day - 1),
        record_id=f"{day:032x}",
    )
    return AuditRecord(**(values | more))


def test_a_row_is_written_for_a_change_an_action_or_what_is_not_a_state():
    from remediation.audit import changed

    before = _state(1)
    assert not changed(before, _state(2))  # the same state, another night: no row
    assert changed(None, _state(2))  # no baseline yet
    assert changed(before, _state(2, "compliant"))
    assert changed(before, _state(2, reason="another reason"))
    assert changed(before, _state(2, verification="not-seen"))
    assert changed(before, _state(2, install_state="Failed"))
    assert changed(before, _state(2, eligible_running=False))  # stopped: the figure moves
    assert changed(before, _state(2, outcome="queued"))  # acted on: always a row
    assert changed(before, _state(2, outcome="failed"))
    assert changed(before, _state(2, outcome="unavailable"))  # an outage: always a row
    assert changed(before, _state(2, platform=""))  # an error before any assessment
    # What says when and how it was written is not a change.
    same = _state(2, trigger="cli", correlation_id="c", duration_ms=9, subscription_name="Prod")
    assert not changed(before, same)


def test_a_night_without_a_row_reads_back_the_last_state_before_it():
    from remediation.audit import Night, nights

    runs = [Night(f"night-{day}", NIGHT_1 + timedelta(days=day - 1)) for day in range(1, 6)]
    rows = [_state(1), _state(3, "compliant")]  # nights 2, 4, 5 changed nothing
    history = nights(rows, runs, baseline=None)
    day = timedelta(days=1)
    assert [(r.run_id, r.decision, r.unchanged_since) for r in history] == [
        ("night-5", "compliant", NIGHT_1 + 2 * day),
        ("night-4", "compliant", NIGHT_1 + 2 * day),
        ("night-3", "compliant", None),
        ("night-2", "install", NIGHT_1),
        ("night-1", "install", None),
    ]
    assert history[0].time == NIGHT_1 + timedelta(days=4)


def test_nights_follow_only_complete_runs_and_stop_at_gone():
    from remediation.audit import Night, nights

    runs = [Night(f"night-{day}", NIGHT_1 + timedelta(days=day - 1)) for day in (1, 3, 4)]
    rows = [
        _state(1),
        _state(2, "compliant"),  # a run that did not assess the subscription: not a state
        _state(3, "gone", outcome="none", platform=""),
    ]
    history = nights(rows, runs, baseline=None)
    read_back = [(r.run_id, r.decision) for r in history if r.unchanged_since]
    assert read_back == []  # night 3 has its gone row; night 4 has nothing to say
    history = nights(rows[:2], runs, baseline=None)
    assert [(r.run_id, r.decision) for r in history if r.unchanged_since] == [
        ("night-4", "install"),  # from night 1 (complete), not night 2 (partial)
        ("night-3", "install"),
    ]


def test_the_baseline_answers_nights_whose_rows_passed_the_retention():
    from remediation.audit import Night, nights

    runs = [Night("night-9", NIGHT_1 + timedelta(days=8))]
    history = nights([], runs, baseline=_state(2, "compliant"))
    assert [(r.run_id, r.decision, r.unchanged_since) for r in history] == [
        ("night-9", "compliant", NIGHT_1 + timedelta(days=1))
    ]
    assert nights([], runs, baseline=_state(10, "compliant")) == []  # newer than the night


def test_a_record_round_trips_through_json():
    record = _state(1, actions=("install-mde",), findings=("no-monitoring-agent",))
    assert AuditRecord.from_json(record.to_json()) == record


# --- Baselines on real Table Storage ------------------------------------------------------
def test_a_baseline_is_replaced_whole_in_chunks_and_keeps_the_failed_install_counts(audit):
    import random
    import string

    from remediation.audit import BASE_PREFIX

    log, table = audit
    sub = "11111111-1111-4111-8111-111111111111"
    rng = random.Random(5)

    def machine(n: int, reason_chars: int = 40) -> AuditRecord:
        noise = "".join(rng.choice(string.ascii_letters) for _ in range(reason_chars))
        return _state(1, vm=f"{VM[:-3]}vm-{n:05d}", reason=noise)

    big = [machine(n, 400) for n in range(600)]  # random text: several 60 KB chunks
    log.baselines.write(sub, "gen-1", big)
    states, failed, chunks = log.baselines.read_all(sub)
    assert len(chunks) > 1
    assert [states[r.vm.lower()] for r in big] == big
    assert failed == {}
    # Installs count per VM, in the same partition, and survive a new generation.
    log.write(_state(2, vm=big[0].vm, install_state="Failed", outcome="failed"))
    log.write(_state(3, vm=big[0].vm, install_state="Failed", outcome="failed"))
    log.write(_state(3, vm=big[1].vm, install_state="Failed", outcome="failed"))
    log.write(_state(4, vm=big[1].vm, install_state="Succeeded", outcome="succeeded"))
    small = big[:3]
    log.baselines.write(sub, "gen-2", small, replacing=chunks)
    states, failed, chunks = log.baselines.read_all(sub)
    assert list(states.values()) == small
    assert failed == {big[0].vm.lower(): 2}
    assert log.reinstalls_since_success(big[0].vm) == 2
    assert log.reinstalls_since_success(big[1].vm) == 0
    rows = [e["RowKey"] for e in table.query_entities(f"PartitionKey eq '{BASE_PREFIX}{sub}'")]
    assert sorted(r for r in rows if r.startswith("gen-")) == sorted(chunks) == ["gen-2-00000"]
    assert log.baselines.read_all("22222222-2222-4222-8222-222222222222") == ({}, {}, frozenset())
