"""python -m localazure as an operator runs it: a bad option is one line and exit 2, and
with --with-storage the lines it prints are all the app's command line needs."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

# Every test runs the command as a process (about half a second of start-up each, some
# start the local Azure and Azurite): the integration tier, not `make unit`.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
# Hang guards only (the old code served forever on some bad options); nothing is timed.
GUARD = 120


def localazure(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localazure", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def estate_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "estate.json"
    path.write_text(text)
    return str(path)


# (what is wrong, the arguments given a scratch directory, the option the error names)
BAD = [
    ("no subscription", lambda tmp: ["--subscriptions", "0"], "--subscriptions"),
    ("negative subscriptions", lambda tmp: ["--subscriptions", "-1"], "--subscriptions"),
    ("negative VMs", lambda tmp: ["--generate", "-5"], "--generate"),
    ("negative Arc machines", lambda tmp: ["--arc-machines", "-1"], "--arc-machines"),
    ("scale sets not a number", lambda tmp: ["--scale-sets", "some"], "--scale-sets"),
    (
        "Arc machines with an estate",
        lambda tmp: [
            "--estate",
            estate_file(tmp, '{"subscriptions": [{"id": "s"}]}'),
            "--arc-machines",
            "2",
        ],
        "--arc-machines",
    ),
    ("VMs not a number", lambda tmp: ["--generate", "many"], "--generate"),
    ("missing estate", lambda tmp: ["--estate", str(tmp / "missing.json")], "--estate"),
    ("estate is a directory", lambda tmp: ["--estate", str(tmp)], "--estate"),
    ("estate not JSON", lambda tmp: ["--estate", estate_file(tmp, "vms: 3\n")], "--estate"),
    ("estate a JSON list", lambda tmp: ["--estate", estate_file(tmp, "[1, 2]")], "--estate"),
    (
        "estate VM with unknown fields",
        lambda tmp: ["--estate", estate_file(tmp, '{"vms": [{"colour": "red"}]}')],
        "--estate",
    ),
    ("estate without subscriptions", lambda tmp: ["--estate", estate_file(tmp, "{}")], "--estate"),
    ("port above 65535", lambda tmp: ["--port", "65536"], "--port"),
    ("negative port", lambda tmp: ["--port", "-1"], "--port"),
    ("negative latency", lambda tmp: ["--latency", "-0.5"], "--latency"),
    ("latency not a number", lambda tmp: ["--latency", "nan"], "--latency"),
    ("infinite latency", lambda tmp: ["--latency", "inf"], "--latency"),
    ("save into a directory", lambda tmp: ["--save", str(tmp)], "--save"),
    ("env file a directory", lambda tmp: ["--env-file", str(tmp)], "--env-file"),
    (
        "both an estate and a generated one",
        lambda tmp: ["--generate", "5", "--estate", estate_file(tmp, "{}")],
        "--",
    ),
    (
        "subscriptions with a loaded estate",
        lambda tmp: [
            "--estate",
            estate_file(tmp, '{"subscriptions": [{"id": "11111111-1111-4111-8111-111111111111"}]}'),
            "--subscriptions",
            "2",
        ],
        "--subscriptions",
    ),
]


@pytest.mark.parametrize(("case", "arguments", "option"), BAD, ids=[case for case, _, _ in BAD])
def test_a_bad_option_is_one_error_line_and_exit_2(tmp_path, case, arguments, option):
    result = localazure(*arguments(tmp_path))

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: argument {option}"), line
    assert result.stdout == ""


def test_a_port_in_use_is_an_error_naming_the_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = localazure("--generate", "1", "--port", str(port))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: argument --port: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_every_option_says_what_it_does_and_the_help_shows_examples():
    from localazure.__main__ import parser

    options = [action for action in parser()._actions if action.option_strings]
    assert {option.option_strings[-1] for option in options} >= {
        "--estate",
        "--generate",
        "--subscriptions",
        "--seed",
        "--arc-machines",
        "--scale-sets",
        "--management-groups",
        "--port",
        "--latency",
        "--no-throttle",
        "--with-storage",
        "--env-file",
        "--save",
    }
    assert all(option.help for option in options)
    result = localazure("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "python -m localazure --generate 300 --with-storage --env-file build/local.env" in (
        result.stdout
    )
    assert ". build/local.env && python -m remediation sweep --mode report" in result.stdout


# --- Serving: real processes, Azurite included ----------------------------------------
class Serving:
    """python -m localazure running, its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localazure", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ready(self) -> str:
        """What it printed up to its ready line."""
        seen = []
        while (line := self._lines.get(timeout=GUARD)) is not None:
            if line.startswith("# ready"):
                return "".join(seen)
            seen.append(line)
        self.process.wait(timeout=GUARD)
        assert self.process.stderr is not None
        pytest.fail(f"localazure ended before it was ready: {self.process.stderr.read()}")

    def stop(self, number: signal.Signals) -> int:
        self.process.send_signal(number)
        return self.process.wait(timeout=GUARD)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def exported(text: str) -> dict[str, str]:
    """The export lines as a shell reads them (values are shell-quoted)."""
    names = {}
    for line in text.splitlines():
        if line.startswith("export "):
            _, assignment = shlex.split(line)
            name, value = assignment.split("=", 1)
            names[name] = value
    return names


def closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_with_storage_the_exports_are_all_a_report_sweep_needs_and_sigterm_stops_azurite(
    tmp_path,
):
    env_file = tmp_path / "build" / "local.env"
    served = Serving(
        "--generate", "12", "--subscriptions", "2", "--with-storage", "--env-file", str(env_file)
    )
    try:
        printed = served.ready()
        assert env_file.read_text() == printed
        names = exported(printed)
        subscriptions = names["REMEDIATION_SUBSCRIPTIONS"].split(",")
        assert len(subscriptions) == 2
        assert names["AzureWebJobsStorage"].startswith("DefaultEndpointsProtocol=http;")

        # A shell that sources the file and nothing else of this test's environment.
        sweep = subprocess.run(
            [
                "/bin/sh",
                "-c",
                '. "$1" && exec "$2" -m remediation sweep --mode report --json',
                "sh",
                str(env_file),
                sys.executable,
            ],
            cwd=ROOT,
            env={"PATH": os.defpath, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=GUARD,
            check=False,
        )
        assert sweep.returncode == 0, sweep.stderr
        *decisions, summary = [json.loads(line) for line in sweep.stdout.splitlines()]
        assert sorted(record["vm"].rsplit("/", 1)[1] for record in decisions) == [
            f"vm-{number:05d}" for number in range(12)
        ]
        assert {record["subscription"] for record in decisions} == set(subscriptions)
        assert summary["summary"] is True
        assert summary["mode"] == "report"
        assert summary["vms"] == 12

        storage_ports = [
            int(port)
            for port in re.findall(
                r"Endpoint=http://127\.0\.0\.1:(\d+)/", names["AzureWebJobsStorage"]
            )
        ]
        plane_port = int(names["REMEDIATION_ARM_ENDPOINT"].rsplit(":", 1)[1])
        assert len(storage_ports) == 3
        assert not any(closed(port) for port in [*storage_ports, plane_port])

        assert served.stop(signal.SIGTERM) == 0
    finally:
        served.kill()
    assert all(closed(port) for port in [*storage_ports, plane_port])
    assert not env_file.exists()


def test_without_storage_it_says_so_and_ctrl_c_stops_it_and_saves(tmp_path):
    saved = tmp_path / "estate.json"
    served = Serving("--generate", "0", "--subscriptions", "2", "--save", str(saved))
    try:
        printed = served.ready()
        names = exported(printed)
        assert "AzureWebJobsStorage" not in names
        assert "# AzureWebJobsStorage is not set: run with --with-storage" in printed
        assert len(names["REMEDIATION_SUBSCRIPTIONS"].split(",")) == 2
        plane_port = int(names["REMEDIATION_ARM_ENDPOINT"].rsplit(":", 1)[1])

        assert served.stop(signal.SIGINT) == 0
    finally:
        served.kill()
    assert closed(plane_port)
    estate = json.loads(saved.read_text())
    assert len(estate["subscriptions"]) == 2
    assert estate["vms"] == []


def test_it_generates_arc_machines_scale_sets_and_management_groups(tmp_path):
    saved = tmp_path / "estate.json"
    served = Serving(
        "--generate", "0", "--subscriptions", "2", "--arc-machines", "3", "--scale-sets", "2",
        "--management-groups", "--save", str(saved),
    )  # fmt: skip
    try:
        served.ready()
        assert served.stop(signal.SIGTERM) == 0
    finally:
        served.kill()
    estate = json.loads(saved.read_text())
    assert sorted(vm["name"] for vm in estate["vms"] if vm["kind"] == "arc") == [
        "arc-00000",
        "arc-00001",
        "arc-00002",
    ]
    assert [s["name"] for s in estate["scale_sets"]] == ["vmss-00000", "vmss-00001"]
    assert {g["id"] for g in estate["management_groups"]} == {
        "mg-platform",
        "mg-landing-zones",
        "mg-corp",
    }


# --- The README's local section, word for word --------------------------------------------
def _readme_block(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    after = readme[readme.index(f"<!-- local:{marker} -->") :]
    return after.split("```\n", 2)[1]


def test_the_readme_local_section_runs_word_for_word(tmp_path):
    """The two blocks of "The local Azure as a process", as a reader types them: every
    command exits 0 (status and doctor included: all OK), the events are the shipped
    examples, and the test alert is verified."""
    serve = _readme_block("serve").strip()
    use = _readme_block("use")
    env_file = ROOT / "build" / "local.env"
    assert "--env-file build/local.env" in serve
    served = subprocess.Popen(
        serve,
        shell=True,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        for _ in range(GUARD * 10):
            if env_file.exists() or served.poll() is not None:
                break
            threading.Event().wait(0.1)
        assert env_file.exists(), served.stderr.read() if served.stderr else ""
        ran = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", use],
            cwd=ROOT,
            env={"PATH": os.defpath, "HOME": str(tmp_path), "COLUMNS": "100"},
            capture_output=True,
            text=True,
            timeout=GUARD * 5,
            check=False,
        )
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        out = ran.stdout
        assert "MISSING" not in out
        assert out.count(" OK ") >= 10  # storage, then permissions, events, onboarding x 3
        assert out.count('trigger="cli"') >= 6  # one record per example event, at least
        assert 'test_alert="verified"' in out
        assert (ROOT / "build" / "report.html").exists()
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=GUARD)
    assert not env_file.exists()


def test_killed_outright_it_leaves_no_azurite_and_the_next_start_replaces_its_env_file(
    tmp_path,
):
    env_file = tmp_path / "local.env"
    served = Serving("--generate", "3", "--with-storage", "--env-file", str(env_file))
    try:
        names = exported(served.ready())
        ports = [
            int(port)
            for port in re.findall(
                r"Endpoint=http://127\.0\.0\.1:(\d+)/", names["AzureWebJobsStorage"]
            )
        ]
        assert not any(closed(port) for port in ports)
        served.process.kill()  # SIGKILL: no handler runs
        served.process.wait(timeout=GUARD)
        for _ in range(GUARD * 10):  # the kernel sends Azurite SIGTERM (PR_SET_PDEATHSIG)
            if all(closed(port) for port in ports):
                break
            threading.Event().wait(0.1)
        assert all(closed(port) for port in ports)
        assert env_file.exists()  # nothing removed it
    finally:
        served.kill()
    again = Serving("--generate", "3", "--env-file", str(env_file))
    try:
        again.ready()
        assert env_file.read_text().startswith(
            f"# written by python -m localazure, pid {again.process.pid}\n"
        )
        # A second one on the same file, while this one runs, is refused.
        refused = localazure("--generate", "3", "--env-file", str(env_file))
        assert refused.returncode == 2
        assert refused.stderr == (
            f"error: argument --env-file: {env_file} belongs to a local Azure still running "
            f"(pid {again.process.pid})\n"
        )
        assert again.stop(signal.SIGTERM) == 0
    finally:
        again.kill()


def test_an_estate_nested_past_the_cap_is_refused_not_a_traceback(tmp_path):
    for text in ("[" * 100_000 + "]" * 100_000, '{"vms": ' + "[" * 40 + "]" * 40 + "}"):
        result = localazure("--estate", estate_file(tmp_path, text))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith("error: argument --estate: ")
        assert "nested deeper than 32 levels" in result.stderr


def test_an_env_file_it_did_not_write_is_not_overwritten(tmp_path):
    mine = tmp_path / ".env"
    mine.write_text("export SECRET_OF_MINE=1\n")
    result = localazure("--generate", "1", "--env-file", str(mine))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: argument --env-file: {mine} exists and was not written by python -m localazure\n"
    )
    assert mine.read_text() == "export SECRET_OF_MINE=1\n"
