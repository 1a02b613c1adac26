"""The Function App as the host sees it: the functions, their bindings, and the CLI."""

import importlib
import io
import json
import os

from azure.functions.decorators.core import BindingDirection

import function_app
from tests.conftest import SUB, function_bindings
from tests.test_audit import PROMISED_FIELDS
from tests.test_service import ENFORCE, estate, new_vm


def test_the_app_declares_the_event_path_functions_and_bindings():
    """Events arrive through Event Grid's StorageQueue destination (docs/deploy.md): a
    queue trigger, with its poison queue read too; no Event Grid trigger is left."""
    bindings = function_bindings()
    for name, queue in (
        ("on_vm_event", "%REMEDIATION_EVENT_QUEUE%"),
        ("on_vm_event_poison", "%REMEDIATION_EVENT_QUEUE%-poison"),
    ):
        assert bindings[name] == [
            {
                "direction": BindingDirection.IN,
                "type": "queueTrigger",
                "name": "message",
                "queueName": queue,
                "connection": "AzureWebJobsStorage",
            }
        ], name
    kinds = {binding["type"] for each in bindings.values() for binding in each}
    assert "eventGridTrigger" not in kinds
    install = bindings["install_extension"][0]
    assert (install["type"], install["queueName"], install["connection"]) == (
        "queueTrigger",
        "%REMEDIATION_INSTALL_QUEUE%",
        "AzureWebJobsStorage",
    )
    assert bindings["install_poison"][0]["queueName"] == "%REMEDIATION_INSTALL_QUEUE%-poison"


class RecordingEnviron(dict):
    """os.environ that remembers every name asked for, however it is asked."""

    def __init__(self, values):
        super().__init__(values)
        self.asked = []

    def get(self, name, default=None):
        self.asked.append(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.asked.append(name)
        return super().__getitem__(name)

    def __contains__(self, name):
        self.asked.append(name)
        return super().__contains__(name)


def test_importing_the_app_reads_no_settings_and_declares_every_function(monkeypatch):
    environ = RecordingEnviron(
        {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("REMEDIATION_", "AZURE_", "AzureWebJobs"))
        }
    )
    monkeypatch.setattr(os, "environ", environ)
    importlib.reload(function_app)
    # One setting only: the pages' auth level is fixed when the host indexes the app.
    # A bad value there falls back to function keys; load() names it at the first call.
    assert environ.asked == ["REMEDIATION_PAGES_SIGN_IN"]
    # An app object lists its functions once (azure-functions): list this one's, then
    # leave a fresh one behind for the other tests, whatever order they run in.
    declared = function_app.app.get_functions()
    importlib.reload(function_app)
    assert sorted(f.get_function_name() for f in declared) == [
        "coverage_report",
        "coverage_status",
        "forced_sweep",
        "health",
        "install_extension",
        "install_poison",
        "nightly_sweep",
        "on_vm_event",
        "on_vm_event_poison",
        "remediations",
        "sweep_batch",
        "sweep_batch_poison",
        "sweep_status",
        "test_alert",
        "test_alert_poison",
        "test_alert_status",
        "test_alert_step",
    ]


def test_the_host_indexes_the_app_without_loading_the_pipeline():
    """Cold start: the SDKs load on a trigger's first call, not when the host indexes."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import function_app, sys; print(sorted(m for m in sys.modules if m.startswith(('azure.mgmt', 'azure.data', 'azure.storage', 'azure.identity', 'remediation'))))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"


def cli(*args, stdin=""):
    import sys

    from remediation.__main__ import main

    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(args), out=out)
    finally:
        sys.stdin = old
    return code, out.getvalue()


def test_cli_handle_event_prints_one_json_decision_per_line_and_waits_for_installs(
    world_factory, tmp_path
):
    world = world_factory(estate("ready"), **ENFORCE)
    events = world.plane.create_vm(new_vm("cli-1")) + world.plane.create_vm(
        new_vm("cli-2", "win11")
    )
    path = tmp_path / "events.json"
    path.write_text(json.dumps(events))
    code, output = cli("handle-event", "--json", "--wait", str(path))
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines()]
    # The second write's event finds the install the first one started either still
    # running (its claim: duplicate) or already Succeeded (compliant: none); never a PUT.
    if lines[1]["outcome"] == "none":
        assert lines[1]["decision"] == "compliant"
        lines[1]["outcome"] = "duplicate"
    assert [(line["vm"].rsplit("/", 1)[1], line["trigger"], line["outcome"]) for line in lines] == [
        ("cli-1", "cli", "started"),  # an event from the CLI acts as Event Grid's does
        ("cli-1", "cli", "duplicate"),
        ("cli-2", "cli", "none"),
        ("cli-2", "cli", "none"),
        ("cli-1", "queue", "succeeded"),
    ]
    assert all(set(line) >= PROMISED_FIELDS for line in lines)
    assert lines[2]["os"] == "windows"
    assert lines[2]["decision"] == "unsupported"
    assert world.plane.estate.vm(new_vm("cli-1").id).extensions["mde.linux"].state == "Succeeded"
    assert world.extension_puts() == 1


def test_cli_reads_stdin_and_one_event(world_factory):
    world = world_factory(estate("ready"))
    [event, _] = world.plane.create_vm(new_vm("cli-3"))
    code, output = cli("handle-event", "-", stdin=json.dumps(event))
    assert code == 0
    assert 'decision="install"' in output
    assert 'outcome="reported"' in output  # report mode is the default, here too
    assert world.writes() == []


def test_cli_refuses_what_is_not_json_without_side_effects(world_factory, tmp_path, capsys):
    world = world_factory(estate("ready"), **ENFORCE)
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    code, output = cli("handle-event", str(path))
    assert code == 2
    assert output == ""
    assert "cannot read events from" in capsys.readouterr().err
    assert world.audit_records() == []


def test_cli_reports_every_bad_setting_at_once(monkeypatch, capsys):
    from remediation import bootstrap

    monkeypatch.setenv("REMEDIATION_MODE", "sometimes")
    monkeypatch.setenv("REMEDIATION_SUBSCRIPTIONS", "nope")
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    bootstrap.services.cache_clear()
    code, _ = cli("handle-event", "-", stdin="{}")
    bootstrap.services.cache_clear()
    assert code == 2
    err = capsys.readouterr().err
    assert "REMEDIATION_MODE" in err
    assert "REMEDIATION_SUBSCRIPTIONS" in err
    assert SUB not in err
