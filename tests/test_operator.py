"""The operator's day: sweeps that never stay stuck, input that never traces back, and
records that tell an outage from a fault. Each test drives the CLI or the HTTP API as
an operator would, against the local Azure and Azurite."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from localazure.estate import Estate, Principal
from remediation import runs, sweep, tables
from remediation.config import Mode
from remediation.model import MAX_JSON_DEPTH, InvalidJson, load_json
from tests.conftest import generated_estate
from tests.test_service import ENFORCE, estate, new_vm

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> tuple[int, str]:
    from remediation.__main__ import main

    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


def locks(world) -> list[dict]:
    return list(
        world.services.audit.table.query_entities(f"PartitionKey eq '{tables.LOCK_PARTITION}'")
    )


def run_of(world, run_id: str) -> runs.Run:
    run = runs.RunStore(world.services.audit.table).get(run_id)
    assert run is not None
    return run


# --- Untrusted JSON, as plain values ------------------------------------------------------
def test_json_nested_past_the_cap_is_refused():
    with pytest.raises(InvalidJson, match=f"deeper than {MAX_JSON_DEPTH}"):
        load_json("[" * 100_000, max_bytes=10**6)
    with pytest.raises(InvalidJson, match="deeper than 3"):
        load_json('{"a": [[{"b": 1}]]}', max_bytes=100, max_depth=3)


def test_json_exactly_at_the_cap_and_brackets_inside_strings_are_fine():
    assert load_json("[[[1]]]", max_bytes=100, max_depth=3) == [[[1]]]
    assert load_json('{"a": "[[[[{{{{", "b": "\\"[["}', max_bytes=100, max_depth=1) == {
        "a": "[[[[{{{{",
        "b": '"[[',
    }


def test_json_over_the_size_cap_or_not_utf8_or_not_json_is_refused():
    with pytest.raises(InvalidJson, match="larger than 10 bytes"):
        load_json(b"[1, 2, 3, 4, 5]", max_bytes=10)
    assert load_json(b"[1, 2, 3]", max_bytes=9) == [1, 2, 3]
    with pytest.raises(InvalidJson, match="not UTF-8"):
        load_json(b"\xff\xfe", max_bytes=10)
    with pytest.raises(InvalidJson, match="not JSON"):
        load_json("[1,", max_bytes=10)


# --- Sweeps never stay stuck ----------------------------------------------------------------
def test_a_cli_sweep_that_loses_azure_frees_its_subscriptions_and_says_so(world_factory, capsys):
    world = world_factory(generated_estate(20, 2, seed=31), REMEDIATION_RETRY_BUDGET_SECONDS="1")
    world.plane.stop()  # ARM and the token authority stop answering
    code, _ = cli("sweep")
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "failed and was closed" in err
    assert "Traceback" not in err
    found = runs.RunStore(world.services.audit.table).runs_since(
        datetime.now(UTC) - timedelta(hours=1)
    )
    assert [run.status for run in found] == ["failed"]
    assert "the CLI sweep stopped" in found[0].summary["abandoned"]
    assert locks(world) == []
    assert world.post("sweep").status_code == 202  # the nightly run or an operator is not refused


@pytest.mark.integration
def test_ctrl_c_during_a_cli_sweep_closes_the_run_and_frees_its_subscriptions(world_factory):
    # Three Resource Graph pages of 1,000, each 0.5 s away: the first page's machines are
    # decided in milliseconds, and the signal comes while the next page is on its way.
    world = world_factory(generated_estate(2100, 1, seed=32), plane_options={"latency": 0.5})
    process = subprocess.Popen(  # a real terminal's Ctrl-C is SIGINT to the process
        [sys.executable, "-m", "remediation", "sweep", "--json"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal has it, whatever disposition this process passes on
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    first = process.stdout.readline()  # the first page's machines decided
    assert json.loads(first)["vm"]
    assert process.poll() is None  # still running
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    found = runs.RunStore(world.services.audit.table).runs_since(
        datetime.now(UTC) - timedelta(hours=1)
    )
    assert [(run.status, run.summary.get("abandoned")) for run in found] == [
        ("failed", "the CLI sweep stopped: interrupted")
    ]
    assert locks(world) == []


def test_a_run_silent_past_the_limit_is_closed_and_taken_over(world_factory):
    world = world_factory(generated_estate(20, 2, seed=33))
    store = runs.RunStore(world.services.audit.table)
    request = runs.SweepRequest(tuple(world.services.settings.subscriptions), Mode.REPORT, "sweep")
    silent_since = datetime.now(UTC) - runs.STALE_AFTER - timedelta(minutes=1)
    dead = store.new_run(request, 1, now=silent_since)  # its worker died: no beat since
    response = world.post("sweep")
    assert response.status_code == 202
    closed = run_of(world, dead.run_id)
    assert closed.status == "failed"
    assert "no sign of life since" in closed.summary["abandoned"]
    assert json.loads(response.get_body())["run_id"] in closed.summary["abandoned"]
    assert {lock["run_id"] for lock in locks(world)} == {json.loads(response.get_body())["run_id"]}


def test_a_run_that_beats_its_heartbeat_keeps_its_subscriptions(world_factory):
    world = world_factory(generated_estate(20, 2, seed=34))
    store = runs.RunStore(world.services.audit.table)
    request = runs.SweepRequest(tuple(world.services.settings.subscriptions), Mode.REPORT, "sweep")
    old = store.new_run(request, 1, now=datetime.now(UTC) - timedelta(hours=5))
    store.beat(old.run_id)  # started long ago, but a batch is at work now
    response = world.post("sweep")
    assert response.status_code == 409
    assert json.loads(response.get_body()) == {
        "errors": [
            f"a sweep ({old.run_id}) is already running for subscription "
            f"{sorted(world.services.settings.subscriptions)[0]}"
        ],
        "run_id": old.run_id,
    }
    assert run_of(world, old.run_id).status == "running"


def test_sweep_abandon_closes_a_run_by_hand_and_its_batches_then_do_nothing(world_factory):
    world = world_factory(generated_estate(20, 2, seed=35))
    run_id = json.loads(world.post("sweep").get_body())["run_id"]
    assert world.post("sweep").status_code == 409
    code, output = cli("sweep", "--abandon", run_id)
    assert (code, output) == (0, f"sweep {run_id} closed as failed; its subscriptions are free\n")
    assert run_of(world, run_id).status == "failed"
    assert locks(world) == []
    world.run_sweeps()  # the abandoned run's queued batch arrives late
    assert [r for r in world.audit_records() if r.run_id == run_id] == []
    assert run_of(world, run_id).status == "failed"
    assert world.post("sweep").status_code == 202


@pytest.mark.parametrize(
    ("run_id", "error"),
    [("20261129T010203Z-0123abcd", "no running sweep"), ("../x", "not a sweep run id")],
)
def test_sweep_abandon_of_an_unknown_or_odd_run_is_an_error(world_factory, capsys, run_id, error):
    world_factory(generated_estate(10, 1, seed=36))
    assert cli("sweep", "--abandon", run_id) == (2, "")
    assert error in capsys.readouterr().err


# --- Input that never traces back ----------------------------------------------------------
def test_a_deeply_nested_sweep_body_is_a_400(world_factory):
    world = world_factory(estate("ready"))
    response = world.post("sweep", b"[" * 60_000)
    assert response.status_code == 400
    assert json.loads(response.get_body()) == {
        "errors": [f"the body is nested deeper than {MAX_JSON_DEPTH} levels"]
    }


def test_a_null_subscription_is_named_as_json_not_as_python(world_factory):
    world = world_factory(estate("ready"))
    response = world.post("sweep", b'{"subscriptions": [null, 7]}')
    assert json.loads(response.get_body())["errors"] == [
        "not a subscription id: null",
        "not a subscription id: 7",
    ]


def test_an_unknown_run_is_a_404_in_the_same_error_shape(world_factory):
    world = world_factory(estate("ready"))
    response = world.get_status("20261129T010203Z-0123abcd")
    assert (response.status_code, json.loads(response.get_body())) == (
        404,
        {"errors": ["no sweep run 20261129T010203Z-0123abcd"]},
    )


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("[" * 100_000, "nested deeper than"),
        ("42", "it is not an event"),
        ('"text"', "it is not an event"),
        ("{}", "it is not an event"),
        ("[]", "holds no event"),
        ('[{"id": "a"}, 3]', "item 1 is not an event"),
        ("{not json", "not JSON"),
    ],
)
def test_handle_event_refuses_input_that_holds_no_event(
    world_factory, tmp_path, capsys, content, error
):
    world = world_factory(estate("ready"))
    path = tmp_path / "events.json"
    path.write_text(content)
    assert cli("handle-event", str(path)) == (2, "")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert error in err
    assert "Traceback" not in err
    assert world.audit_records() == []


def test_handle_event_refuses_input_larger_than_an_event_grid_delivery(
    world_factory, tmp_path, capsys
):
    world = world_factory(estate("ready"))
    one = world.plane.create_vm(new_vm("big-1"))[0]
    path = tmp_path / "events.json"
    path.write_text(json.dumps([one] * 2000))  # about 2 MB
    assert path.stat().st_size > 1024 * 1024
    assert cli("handle-event", str(path)) == (2, "")
    assert "larger than 1,048,576 bytes" in capsys.readouterr().err
    assert world.audit_records() == []


def test_handle_event_handles_a_repeated_event_once(world_factory, tmp_path, capsys):
    world = world_factory(estate("ready"))
    event = world.plane.create_vm(new_vm("repeat-1"))[0]
    path = tmp_path / "events.json"
    path.write_text(json.dumps([event] * 50))
    code, output = cli("handle-event", "--json", str(path))
    assert code == 0
    assert len(output.splitlines()) == 1
    assert len(world.audit_records()) == 1
    assert "49 repeated deliveries" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["missing/dir/page.html", ".", "/dev/full"])
def test_report_to_a_path_that_cannot_be_written_is_one_line_and_exit_2(
    world_factory, tmp_path, capsys, target
):
    world_factory(estate("ready"))
    path = target if target.startswith("/") else str(tmp_path / target)
    assert cli("report", "--html", path) == (2, "")
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {path}: ")
    assert err.count("\n") == 1


def test_report_to_stdout(world_factory):
    world_factory(estate("ready"))
    code, output = cli("report", "--html", "-")
    assert code == 0
    assert output.startswith("<!DOCTYPE html>")
    assert output.rstrip().endswith("</html>")


# --- Honest records --------------------------------------------------------------------------
def test_an_event_while_azure_does_not_answer_is_unavailable_not_an_error(world_factory):
    world = world_factory(estate("ready"), REMEDIATION_RETRY_BUDGET_SECONDS="1")
    event = world.plane.create_vm(new_vm("outage-1"))[0]
    world.plane.faults.add("GET", "/virtualMachines/outage-1$", 503, count=1000)
    (record,) = world.deliver(event)
    assert (record.decision, record.outcome) == ("undecided", "unavailable")
    assert "Azure did not answer" in record.reason
    assert world.services.queue.queue.get_queue_properties().approximate_message_count == 0
    code, output = cli("log", "--decision", "undecided", "--json")
    assert code == 0
    assert [json.loads(line)["vm"] for line in output.splitlines()] == [record.vm]


def test_an_event_while_the_token_authority_does_not_answer_is_unavailable(world_factory):
    world = world_factory(estate("ready"), REMEDIATION_RETRY_BUDGET_SECONDS="1")
    event = world.plane.create_vm(new_vm("outage-2"))[0]
    world.plane.stop()  # the token endpoint and ARM with it
    (record,) = world.deliver(event)
    assert (record.decision, record.outcome) == ("undecided", "unavailable")
    assert "the token authority did not answer" in record.reason


def test_a_wrong_client_secret_stays_an_error_not_an_outage(world_factory):
    world = world_factory(estate("ready"), AZURE_CLIENT_SECRET="not-the-secret")
    (record,) = world.deliver(world.plane.create_vm(new_vm("secret-1"))[0])
    assert (record.decision, record.outcome) == ("error", "failed")
    assert "authentication failed" in record.reason


def test_a_sweep_while_a_subscription_posture_does_not_answer_records_unavailable(
    world_factory,
):
    world = world_factory(generated_estate(12, 1, seed=37), REMEDIATION_RETRY_BUDGET_SECONDS="1")
    world.plane.faults.add("GET", "/providers/Microsoft.Security/pricings", 503, count=10_000)
    code, output = cli("sweep", "--json")
    assert code == 1  # nothing was measured: not a done run
    *lines, summary = [json.loads(line) for line in output.splitlines()]
    assert {(line["decision"], line["outcome"]) for line in lines} == {("undecided", "unavailable")}
    assert (summary["unavailable"], summary["errors"], summary["vms"]) == (12, 0, 12)
    assert (summary["status"], summary["coverage_percent"]) == ("failed", None)


def test_sweep_wait_gives_coverage_before_and_after_its_installs(world_factory):
    world_factory(generated_estate(30, 1, seed=38), **ENFORCE)
    code, output = cli("sweep", "--json", "--wait")
    assert code == 0
    summary = json.loads(output.splitlines()[-1])
    lines = [json.loads(line) for line in output.splitlines()[:-1]]
    installed = [line for line in lines if line["outcome"] == "succeeded"]
    after = summary["after_installs"]
    assert after["installed"] == len({line["vm"] for line in installed}) > 0
    assert after["covered"] == summary["covered"] + after["installed"]
    assert after["coverage_percent"] > summary["coverage_percent"]


# --- The pages: headers, status, sign-in ------------------------------------------------------
def test_the_report_page_is_served_with_its_security_headers(world_factory):
    from remediation import report

    world = world_factory(estate("ready"))
    response = world.get("report")
    assert response.status_code == 200
    assert report.HEADERS["Content-Security-Policy"].startswith("default-src 'none'")
    for name, value in report.HEADERS.items():
        assert response.headers.get(name) == value, name


def test_status_over_http_counts_the_estate_and_refuses_a_bad_filter(world_factory):
    world = world_factory(generated_estate(25, 2, seed=39))
    response = world.get("status")
    assert response.status_code == 200
    assert json.loads(response.get_body())["vms"] == 25
    bad = world.get("status", params={"subscription": "nope"})
    assert bad.status_code == 400
    assert json.loads(bad.get_body())["errors"]
    assert world.audit_records() == []


@pytest.fixture
def signed_in_pages(monkeypatch):
    """The Function App as deployed with Entra sign-in for the pages (read at import)."""
    import importlib

    import function_app
    from remediation import bootstrap

    monkeypatch.setenv("REMEDIATION_PAGES_SIGN_IN", "entra")
    bootstrap.page_gate.cache_clear()
    yield importlib.reload(function_app)
    monkeypatch.delenv("REMEDIATION_PAGES_SIGN_IN")
    bootstrap.page_gate.cache_clear()
    importlib.reload(function_app)


PAGES_CLIENT = "c0ffee00-0000-4000-8000-0000000000a9"  # the pages' app registration
PAGE_READER = Principal(
    client_id="a0000000-0000-4000-8000-0000000000c1",
    secret="page-reader-secret",
    object_id="0b1e5c7e-0000-4000-8000-0000000000c1",
    name="page-reader",
    api_roles={PAGES_CLIENT: ["Remediation.Read"]},
)
NO_ROLE = Principal(
    client_id="a0000000-0000-4000-8000-0000000000c2",
    secret="no-role-secret",
    object_id="0b1e5c7e-0000-4000-8000-0000000000c2",
    name="no-page-role",
)


def _page_token(plane, principal, resource=f"api://{PAGES_CLIENT}", tenant=None) -> str:
    """A token from the plane's token endpoint, through azure-identity as a script gets it."""
    from azure.identity import ClientSecretCredential

    credential = ClientSecretCredential(
        tenant or plane.estate.tenant,
        principal.client_id,
        principal.secret,
        authority=plane.url,
        disable_instance_discovery=True,
    )
    return credential.get_token(f"{resource}/.default").token


def test_with_sign_in_the_pages_take_only_a_valid_entra_token(world_factory, signed_in_pages):
    """Flex Consumption does not enforce App Service authentication (docs/deploy.md): the
    app checks the token itself, and a header anyone can send opens nothing."""
    world = world_factory(
        _with(estate("ready"), PAGE_READER, NO_ROLE),
        REMEDIATION_PAGES_SIGN_IN="entra",
        REMEDIATION_PAGES_TENANT=_tenant(),
        REMEDIATION_PAGES_AUDIENCE=PAGES_CLIENT,
        REMEDIATION_PAGES_ALLOWED="Remediation.Read",
    )
    plane = world.plane
    levels = {
        name: function.get_bindings()[0].auth_level
        for name, function in (
            (f.get_function_name(), f) for f in signed_in_pages.app.get_functions()
        )
        if function.get_bindings()[0].type == "httpTrigger"
    }
    anonymous = {name for name, level in levels.items() if level.value == "anonymous"}
    assert anonymous == {"remediations", "coverage_report", "coverage_status"}

    good = _page_token(plane, PAGE_READER)
    now = int(time.time())
    claims = jwt.decode(good, options={"verify_signature": False})
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "no header": {},
        "a bare principal header": {"X-MS-CLIENT-PRINCIPAL-ID": " "},
        "a principal header and its name": {
            "X-MS-CLIENT-PRINCIPAL-ID": PAGE_READER.object_id,
            "X-MS-CLIENT-PRINCIPAL-NAME": "admin@contoso.com",
        },
        "a forged signature": _bearer(plane.sign(claims, key=forged_key)),
        "an expired token": _bearer(plane.sign(claims | {"exp": now - 120, "nbf": now - 3720})),
        "another audience (ARM)": _bearer(_page_token(plane, PAGE_READER, plane.url)),
        "another tenant": _bearer(_page_token(plane, PAGE_READER, tenant=OTHER_TENANT)),
    }
    for route in ("report", "remediations", "status"):
        for what, headers in refused.items():
            response = world.get(route, headers=headers)
            assert response.status_code == 401, (route, what)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), (route, what)
            assert json.loads(response.get_body())["errors"], (route, what)
        no_role = world.get(route, headers=_bearer(_page_token(plane, NO_ROLE)))
        assert no_role.status_code == 403, route
        assert world.get(route, headers=_bearer(good)).status_code == 200, route
    # The keys were read once for the whole run of requests.
    assert plane.log.count("login/keys") == 1


def test_a_v1_token_for_the_pages_is_refused_with_the_registration_fix(
    world_factory, signed_in_pages
):
    world = world_factory(
        _with(estate("ready"), PAGE_READER),
        REMEDIATION_PAGES_SIGN_IN="entra",
        REMEDIATION_PAGES_TENANT=_tenant(),
        REMEDIATION_PAGES_AUDIENCE=PAGES_CLIENT,
        REMEDIATION_PAGES_ALLOWED="Remediation.Read",
    )
    world.plane.api_token_version = 1
    response = world.get("status", headers=_bearer(_page_token(world.plane, PAGE_READER)))
    assert response.status_code == 401
    assert "requestedAccessTokenVersion" in json.loads(response.get_body())["errors"][0]


OTHER_TENANT = "f8cdef31-a31e-4b4a-93e4-5f571e91255a"


def _tenant() -> str:
    return Estate().tenant


def _with(world_estate, *principals):
    for principal in principals:
        world_estate.add_principal(Principal(**vars(principal)))
    return world_estate


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_cli_sweep_with_installs_leaves_the_terminal_to_its_summary(world_factory, caplog):
    world_factory(generated_estate(80, 2, seed=40), **ENFORCE)
    caplog.set_level("INFO")
    code, output = cli("sweep", "--wait")
    assert code == 0
    loud = [r for r in caplog.records if r.levelname in {"WARNING", "ERROR"}]
    assert [f"{r.name}: {r.getMessage()}" for r in loud] == []  # no pool, no per-VM warnings
    per_vm = [r for r in caplog.records if r.name == "remediation" and "vm=" in r.getMessage()]
    assert len(per_vm) >= 80  # the per-VM lines are there, at INFO, for Application Insights
    assert "vm=" not in output
    assert "coverage after the installs it waited for" in output
    flat = " ".join(output.split())
    # The sweep's own time, the wait for the installs, and the whole, each said apart.
    assert re.search(r"time: the sweep │ \d+\.?\d* s", flat)
    waited = re.search(r"time: waiting for installs │ (\d+\.?\d*) s", flat)
    total = re.search(r"time: in all │ (\d+\.?\d*) s", flat)
    assert waited is not None
    assert total is not None
    assert float(total[1]) >= float(waited[1]) > 0


class Terminal(io.StringIO):
    """What a person's terminal is to the CLI: a TTY."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_wait_for_installs_shows_a_progress_bar(world_factory, monkeypatch):
    from remediation.__main__ import main

    monkeypatch.setenv("COLUMNS", "100")
    world_factory(generated_estate(30, 1, seed=42), **ENFORCE)
    screen = Terminal()
    assert main(["sweep", "--wait"], out=screen) == 0
    shown = screen.getvalue()
    assert "sweeping" in shown  # the sweep's own bar, then
    assert "waiting for the installs" in shown  # the installs' bar, drawn to the same screen
    assert "coverage after the installs it waited for" in shown


# --- The log from the command line: names, pages, notes ---------------------------------------
def _logged(world, *names: str) -> None:
    for name in names:
        world.deliver(world.plane.create_vm(new_vm(name))[0])


def test_log_takes_a_unique_short_name_and_says_which_vm_it_matched(world_factory, capsys):
    world = world_factory(estate("ready"))
    _logged(world, "web-01", "web-02")
    code, output = cli("log", "--json", "--vm", "WEB-01")
    assert code == 0
    assert {json.loads(line)["vm"] for line in output.splitlines()} == {new_vm("web-01").id}
    assert f"note: WEB-01 is {new_vm('web-01').id}" in capsys.readouterr().err


def test_log_refuses_a_name_not_in_the_window(world_factory, capsys):
    world = world_factory(estate("ready"))
    _logged(world, "web-01")
    assert cli("log", "--vm", "web-03") == (2, "")
    assert "no VM named 'web-03' in the log since" in capsys.readouterr().err


def test_log_says_when_more_records_match_and_pages_on(world_factory, capsys):
    world = world_factory(estate("ready"))
    _logged(world, "page-1", "page-2", "page-3")
    code, output = cli("log", "--json", "--limit", "2")
    *records, last = [json.loads(line) for line in output.splitlines()]
    assert (code, len(records)) == (0, 2)
    token = last["continuation"]
    code, output = cli("log", "--json", "--limit", "2", "--continuation", token)
    rest = [json.loads(line) for line in output.splitlines()]
    assert "continuation" not in rest[-1]  # the last page says nothing more
    names = {r["vm"].rsplit("/", 1)[1] for r in records + rest}
    assert names == {"page-1", "page-2", "page-3"}
    assert len(records + rest) == 3
    code, _ = cli("log", "--limit", "1")
    assert "more records match: add --continuation" in capsys.readouterr().err


def test_log_clamps_a_window_older_than_retention_and_says_so(world_factory, capsys):
    world = world_factory(estate("ready"), REMEDIATION_AUDIT_RETENTION_DAYS="30")
    _logged(world, "old-1")
    code, output = cli("log", "--since", "99999d", "--json")
    assert code == 0
    assert len(output.splitlines()) == 1
    assert "note: since clamped to the retention period of 30 days" in capsys.readouterr().err


def test_the_log_over_http_accepts_the_function_key_in_the_query(world_factory):
    world = world_factory(estate("ready"))
    response = world.get("remediations", params={"code": "the-function-key", "limit": "5"})
    assert response.status_code == 200


def test_the_summary_table_has_no_empty_header_row(world_factory):
    world_factory(generated_estate(15, 1, seed=41))
    code, output = cli("sweep")
    assert code == 0
    lines = output.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┌"))
    assert "decision:" in lines[top + 1]  # the first row is data, not a blank header


def test_handle_event_prints_a_blocked_decision_once(world_factory, tmp_path, capsys, caplog):
    world = world_factory(estate("bare"))  # the plan is off and may not be turned on
    caplog.set_level("INFO")
    path = tmp_path / "event.json"
    path.write_text(json.dumps(world.plane.create_vm(new_vm("blocked-1"))[0]))
    code, output = cli("handle-event", str(path))
    assert code == 0
    assert output.count("blocked-1") == 1
    assert 'decision="blocked"' in output
    assert capsys.readouterr().err == ""
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


# --- Metrics from a finished sweep --------------------------------------------------------------
@pytest.fixture
def ingestion():
    """Application Insights' ingestion endpoint, on loopback: what the exporter sends."""
    from tests.ingestion import serve

    server, received, connection = serve()
    yield connection, received
    server.shutdown()


def test_a_finished_sweep_publishes_its_figures_per_subscription(world_factory, ingestion):
    connection, received = ingestion
    estate_ = generated_estate(24, 2, seed=42)
    world_factory(
        estate_,
        APPLICATIONINSIGHTS_CONNECTION_STRING=connection,
        # the exporter's own usage telemetry goes to a Microsoft host (statsbeat) and, on
        # a timer, to the app's endpoint (SDK stats): both off, nothing outlives the test
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
        APPLICATIONINSIGHTS_SDKSTATS_DISABLED="true",
    )
    code, output = cli("sweep", "--json")
    assert code == 0
    summary = json.loads(output.splitlines()[-1])
    sent: dict[tuple[str, str], float] = {}
    for item in received:
        base = item["data"]["baseData"]
        [metric] = base["metrics"]
        sent[(metric["name"], base["properties"].get("subscription", ""))] = metric["value"]
    per_subscription = {s: 0 for s in estate_.subscriptions}
    for vm in estate_.vms.values():
        per_subscription[vm.subscription] += 1
    assert {
        subscription: sent[("remediation.vms", subscription)] for subscription in per_subscription
    } == per_subscription
    eligible = sum(sent[("remediation.eligible_running", s)] for s in per_subscription)
    covered = sum(sent[("remediation.covered", s)] for s in per_subscription)
    assert (eligible, covered) == (summary["eligible_running"], summary["covered"])
    assert sent[("remediation.sweep_duration", "")] == summary["duration_seconds"]


def test_every_command_and_option_says_what_it_does_and_the_readme_shows_its_usage(
    monkeypatch,
):
    import argparse

    from remediation.__main__ import parser

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps usage lines at the terminal width
    root = parser()
    [commands] = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    readme = (ROOT / "README.md").read_text()
    assert set(commands.choices) == {
        "handle-event",
        "sweep",
        "status",
        "log",
        "report",
        "test-alert",
        "doctor",
    }
    for name, command in commands.choices.items():
        assert command.description, name
        assert "examples:\n  python -m remediation " + name in command.epilog, name
        assert all(action.help for action in command._actions), name
        assert command.format_usage().strip() in readme, name


def test_an_outage_leaves_the_reports_last_known_state_of_a_vm(world_factory):
    from remediation import report

    world = world_factory(estate("ready"), REMEDIATION_RETRY_BUDGET_SECONDS="1")
    event = world.plane.create_vm(new_vm("known-1"))[0]
    assert cli("sweep", "--json")[0] == 0
    world.plane.faults.add("GET", "/virtualMachines/known-1$", 503, count=1000)
    (record,) = world.deliver(event)
    assert record.outcome == "unavailable"
    latest = report.gather(world.services).latest[new_vm("known-1").id.lower()]
    assert (latest.decision, latest.trigger) == ("install", "cli")


def test_a_working_batch_beats_and_stops_once_its_run_is_closed(world_factory, monkeypatch):
    world = world_factory(generated_estate(30, 1, seed=43))
    monkeypatch.setattr(sweep, "HEARTBEAT_EVERY", timedelta(0))  # a beat after every VM
    services = world.services
    store = runs.RunStore(services.audit.table)
    request = runs.SweepRequest(tuple(services.settings.subscriptions), Mode.REPORT, "cli")
    run = sweep.start(services, request, send=None)
    beats = []

    def on_record(record):
        beats.append(store.get(run.run_id).heartbeat)
        if len(beats) == 5:
            store.abandon(run.run_id, "closed by hand mid-batch")

    message = sweep.BatchMessage(run.run_id, 0, request.subscriptions)
    assert sweep.run_batch(services, message, on_record) is None  # it did not finish the run
    assert beats[1] > beats[0] > run.started  # signs of life while it works
    assert len(beats) == 5  # the beat right after the fifth VM found the run closed: stop
    assert run_of(world, run.run_id).status == "failed"


def test_batches_beating_at_once_all_keep_working(world_factory):
    from concurrent.futures import ThreadPoolExecutor

    world = world_factory(generated_estate(10, 1, seed=44))
    services = world.services
    store = runs.RunStore(services.audit.table)
    request = runs.SweepRequest(tuple(services.settings.subscriptions), Mode.REPORT, "cli")
    run = sweep.start(services, request, send=None)
    with ThreadPoolExecutor(8) as pool:  # eight batches on eight workers, beating together
        beats = list(pool.map(lambda _: store.beat(run.run_id), range(160)))
    assert beats.count(False) == 0  # a lost race is no reason to stop
    assert run_of(world, run.run_id).status == "running"


def test_a_cli_sweep_whose_run_is_closed_from_elsewhere_says_so(world_factory, monkeypatch, capsys):
    import threading
    import time

    world = world_factory(generated_estate(40, 1, seed=45), plane_options={"latency": 0.05})
    monkeypatch.setattr(sweep, "HEARTBEAT_EVERY", timedelta(0))  # a beat after every VM
    store = runs.RunStore(world.services.audit.table)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(cli=cli("sweep")))
    worker.start()
    started: list = []
    for _ in range(600):  # until the run has started beating, at most about a minute
        started = store.runs_since(datetime.now(UTC) - timedelta(hours=1))
        if started and started[0].heartbeat and started[0].heartbeat > started[0].started:
            break
        time.sleep(0.1)
    assert store.abandon(started[0].run_id, "closed from another terminal") is not None
    worker.join(timeout=120)
    assert result["cli"] == (1, "")
    assert f"error: sweep {started[0].run_id} was closed while it ran" in capsys.readouterr().err
    assert locks(world) == []


def test_a_bad_client_secret_is_one_warning_line_with_its_fix(world_factory):
    """azure-identity warns with a block of lines each time a token cannot be had; a
    command over three subscriptions used to print it three times."""
    world_factory(generated_estate(6, 3, seed=41), AZURE_CLIENT_SECRET="not-the-secret")
    done = subprocess.run(
        [sys.executable, "-m", "remediation", "status"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 1  # no subscription could be read
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert warnings == [
        "WARNING azure-identity: no token: EnvironmentCredential: Authentication failed: "
        "AADSTS7000215: Invalid client secret provided.; check AZURE_TENANT_ID, "
        "AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or the managed identity) and "
        "AZURE_AUTHORITY_HOST"
    ]
    assert "3 of 3 subscriptions unavailable" in " ".join(done.stdout.split())


def test_the_identity_warning_filter_keeps_other_warnings():
    import logging

    from remediation.__main__ import OneIdentityWarning

    keep = OneIdentityWarning()

    def record(name, message, level=logging.WARNING):
        return logging.LogRecord(name, level, __file__, 1, message, None, None)

    block = (
        "DefaultAzureCredential failed.\nAttempted credentials:\n\tEnvironmentCredential: bad\u202e"
    )
    first = record("azure.identity._credentials.chained", block)
    assert keep.filter(first) is True
    assert first.getMessage() == (
        f"azure-identity: no token: EnvironmentCredential: bad\\u202e; {OneIdentityWarning.FIX}"
    )
    assert keep.filter(record("azure.identity._credentials.chained", block)) is False
    assert keep.filter(record("azure.identity", "debug detail", logging.INFO)) is True
    assert keep.filter(record("remediation", "a warning of ours")) is True


def test_the_log_table_fits_80_columns_and_counts_in_words(world_factory, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    world = world_factory(estate("ready"))
    _logged(world, "narrow-1")
    code, output = cli("log", "--since", "1h")
    assert code == 0
    assert max(len(line) for line in output.splitlines()) <= 80
    assert "(1 record)" in output
    header = next(line for line in output.splitlines() if "machine" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == [
        "time",
        "machine",
        "decision",
        "outcome",
        "reason / hint",
    ]
    monkeypatch.setenv("COLUMNS", "160")
    code, output = cli("log", "--since", "1h")
    header = next(line for line in output.splitlines() if "machine" in line)
    assert "subscription" in header
    assert "platform" in header


def test_the_same_event_handled_in_three_runs_is_three_records_and_one_install(
    world_factory, tmp_path
):
    """The guarantee the README states: within one input a repeated id is handled once;
    across runs each delivery gets its own record, and the claim keeps the install single."""
    world = world_factory(estate("ready"), **ENFORCE)
    [event, *_] = world.plane.create_vm(new_vm("thrice"))
    path = tmp_path / "event.json"
    path.write_text(json.dumps([event, event]))  # repeated within the input: handled once
    outcomes = []
    for _ in range(3):
        code, output = cli("handle-event", "--json", str(path))
        assert code == 0
        outcomes += [json.loads(line)["outcome"] for line in output.splitlines()]
    assert outcomes[0] == "started"
    assert len(outcomes) == 3
    assert set(outcomes[1:]) <= {"duplicate", "none"}  # in flight, or already Succeeded
    assert world.extension_puts() == 1


def test_an_event_file_with_a_byte_order_mark_is_read_as_powershell_writes_it(
    world_factory, tmp_path
):
    world = world_factory(estate("ready"))
    [event, *_] = world.plane.create_vm(new_vm("bom-1"))
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event), encoding="utf-8-sig")  # Out-File's UTF8 on Windows
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    code, output = cli("handle-event", "--json", str(path))
    assert code == 0
    [record] = [json.loads(line) for line in output.splitlines()]
    assert record["vm"].endswith("/bom-1")
