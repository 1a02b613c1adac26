"""The harmless test alert, on demand (opt-in): proof that Defender for Endpoint on a VM
reports to Defender for Cloud, the last step of Defender for Cloud's own onboarding
guidance ("Validate alerts", learn.microsoft.com/azure/defender-for-cloud/alert-validation).

``begin`` refuses, writing nothing, unless REMEDIATION_ALLOW_TEST_ALERT is true and the
app enforces (the test runs a command on the VM: report mode runs nothing), and unless
the VM is in scope, not excluded, running and its MDE extension Succeeded. It then
records the test and queues it. The test-alert queue runs it in two steps:
- ``run``: Microsoft's documented detection test through VM Run Command (PowerShell on
  Windows, the EICAR test file on Linux);
- ``watch``: Defender for Cloud's alerts in the VM's resource group, from delayed queue
  messages every REMEDIATION_RECHECK_SECONDS, until the test alert shows up or
  REMEDIATION_TEST_ALERT_TIMEOUT_MINUTES pass.
The test ends in one remediation-log record: ``test_alert`` verified (alert id, name,
minutes from the command to the alert), not-verified (what to check) or failed (the
Run Command's output, trimmed and scrubbed of anything secret-looking).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from remediation.audit import AuditRecord
from remediation.classify import OsFamily, Protection, classify
from remediation.model import (
    InvalidJson,
    InvalidResourceId,
    Kind,
    Outcome,
    PermanentError,
    Power,
    RecordOutcome,
    RemediationError,
    TransientError,
    VmNotRunning,
    VmRef,
    load_json,
)
from remediation.service import Context, Services, record_dropped
from remediation.tables import replace_if_unchanged, vm_partition

log = logging.getLogger("remediation")

SCHEMA = "mde-test-alert/1"
PARTITION = "testalert"
LOCK_PARTITION = "testalert-vm"
TEST_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
MAX_BODY = 4 * 1024
OUTPUT_CHARS = 1000  # of the Run Command's output kept in the record
CLOCK_SKEW = timedelta(minutes=5)  # an alert stamped a little before the command still counts
# A test holds its VM until it ends, or until its deadline (which moves to the detection
# test's time plus the timeout once it ran) and this margin: a queue that lost it.
LOCK_MARGIN = timedelta(minutes=15)

# Microsoft's detection tests. Windows: the documented command line (run-detection-test
# and alert-validation docs), "powershell.exe <ARGS>", started by Start-Process so that
# its "-NoExit" does not hold Run Command for its 90 minutes; ARGS goes in a single-quoted
# PowerShell string, its own quotes doubled. Linux: the documented EICAR download.
WINDOWS_TEST_ARGS = (
    "-NoExit -ExecutionPolicy Bypass -WindowStyle Hidden "
    "$ErrorActionPreference = 'silentlycontinue';(New-Object System.Net.WebClient)"
    ".DownloadFile('http://127.0.0.1/1.exe', 'C:\\test-MDATP-test\\invoice.exe');"
    "Start-Process 'C:\\test-MDATP-test\\invoice.exe'"
)


def _quoted(text: str) -> str:
    """A PowerShell single-quoted string literal: quotes doubled, nothing expanded."""
    return "'" + text.replace("'", "''") + "'"


SCRIPTS = {
    OsFamily.WINDOWS: [
        "New-Item -ItemType Directory -Force -Path 'C:\\test-MDATP-test' | Out-Null",
        "Start-Process powershell.exe -WindowStyle Hidden -ArgumentList "
        + _quoted(WINDOWS_TEST_ARGS),
        "Write-Output 'detection test started'",
    ],
    OsFamily.LINUX: [
        "curl -sS -o /tmp/eicar.com.txt https://secure.eicar.org/eicar.com.txt "
        "|| echo 'the EICAR test file could not be downloaded'",
        "mdatp health --field real_time_protection_enabled 2>&1 || true",
    ],
}
# How the test alert is named in Defender for Cloud (matched case-insensitively in the
# display name): Windows "[Test Alert] Suspicious Powershell commandline"; Linux, MDE's
# EICAR detection ("'EICAR_Test_File' malware was prevented"). Both are seen in public
# alert samples, not in Microsoft's docs (docs/fidelity.md).
ALERT_MARKERS = {OsFamily.WINDOWS: "[test alert]", OsFamily.LINUX: "eicar"}
CHECK = (
    "check the device in the Defender portal (is it Active?), that the VM reaches the MDE "
    "service URLs, that Defender for Servers and the MDE integration are on for the "
    "subscription, and that real-time protection is on; then run the test again"
)
# What may never reach a record: tokens, SAS signatures, keys, long base64 (a package).
_SECRETS = re.compile(
    r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]*"  # a JWT
    r"|\b(?:sig|se|sv|skoid|key|password|pwd|secret|token)=[^\s&\"']+"  # SAS / key=value
    r"|[\"']?\b(?:\w*key|password|pwd|secret|token)[\"']?\s*:\s*[\"']?[^\s&\"',;}]+"  # key: v
    r"|[A-Za-z0-9+/]{40,}={0,2}",  # base64 runs (onboarding packages, keys)
    re.IGNORECASE,
)


class Refused(ValueError):
    """A test that must not run: every problem, and the HTTP status (400, or 409 when a
    test is already running on the VM)."""

    def __init__(self, problems: list[str], status: int = 400) -> None:
        super().__init__("; ".join(problems))
        self.problems, self.status = problems, status


@dataclass(frozen=True)
class Test:
    test_id: str
    vm: str
    os: str
    trigger: str
    status: str  # running, verified, not-verified, failed
    started: datetime
    deadline: datetime
    command_at: datetime | None = None
    result: dict[str, Any] | None = None
    recorded: bool = False  # its one record is written (set after the record)
    etag: str = field(default="", compare=False)  # of the row as read: steps change it in turn

    def to_json(self) -> dict[str, Any]:
        return {
            "test_id": self.test_id,
            "vm": self.vm,
            "os": self.os,
            "trigger": self.trigger,
            "status": self.status,
            "started": self.started.isoformat(),
            "deadline": self.deadline.isoformat(),
            "command_at": self.command_at.isoformat() if self.command_at else None,
            "result": self.result,
        }


def scrub(text: str) -> str:
    """The output's tail, with anything secret-looking replaced."""
    return _SECRETS.sub("[redacted]", text)[-OUTPUT_CHARS:]


def parse_body(body: bytes) -> str:
    """POST /api/test-alert's body: {"vm": "<id>"}; returns the VM id."""
    try:
        value = load_json(body, max_bytes=MAX_BODY)
    except InvalidJson as error:
        raise Refused([f"the body is {error}"]) from None
    if not isinstance(value, dict):
        raise Refused(['the body must be a JSON object: {"vm": "<VM resource id>"}'])
    unknown = sorted(set(value) - {"vm"})
    problems = (
        [f"unknown fields: {', '.join(repr(k)[:60] for k in unknown[:10])}"] if unknown else []
    )
    if not isinstance(value.get("vm"), str):
        problems.append("vm: required, a VM resource id")
    if problems:
        raise Refused(problems)
    return str(value["vm"])


# --- Starting ---------------------------------------------------------------------------
def begin(services: Services, vm_id: str, trigger: str, now: datetime | None = None) -> Test:
    """Check everything, then record and queue the test. Raises Refused, writing nothing."""
    settings = services.settings
    problems = []
    if not settings.allow_test_alert:
        problems.append(
            "the test alert is off: set REMEDIATION_ALLOW_TEST_ALERT=true (it runs "
            "Microsoft's harmless detection test on the VM)"
        )
    if not settings.enforce:
        problems.append("REMEDIATION_MODE is report: the test runs a command on the VM")
    try:
        vm = VmRef.parse(vm_id)
    except InvalidResourceId:
        raise Refused([*problems, "vm: not a virtual machine resource id"]) from None
    if vm.kind is Kind.ARC:
        problems.append(
            "vm: the test alert runs on Azure VMs only (it uses VM Run Command; Arc machines "
            "have their own Run Command API, not used here)"
        )
    if vm.subscription not in services.scope():
        problems.append("vm: its subscription is not in scope")
    if problems:
        raise Refused(problems)
    try:
        facts = services.arm.vm_facts(vm)
    except RemediationError as error:
        if error.status == 404:
            raise Refused([f"vm: {vm} does not exist"]) from None
        raise
    found = classify(facts, settings.exclude_tag)
    if found.opt_out or found.managed:
        problems.append(f"the VM is excluded: {found.opt_out or found.managed}")
    if found.os is OsFamily.UNKNOWN:
        problems.append("the VM's operating system is unknown: no detection test applies")
    if found.power is not Power.RUNNING:
        problems.append(f"the VM is {found.power}: Run Command needs it running")
    if found.protection is not Protection.SUCCEEDED:
        problems.append(
            f"{found.extension or 'MDE'} is {found.protection} on the VM, not Succeeded"
        )
    if problems:
        raise Refused(problems)
    started = now or datetime.now(UTC)
    test = Test(
        test_id=started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8],
        vm=vm.id,
        os=found.os.value,
        trigger=trigger,
        status="running",
        started=started,
        # Until the detection test runs (then from it): the queue may hold the run step.
        deadline=started + timedelta(minutes=settings.test_alert_timeout_minutes),
    )
    _lock(services, test)
    try:
        services.audit.table.create_entity(_entity(test))
        services.tests.send_text(_message(test.test_id, "run"))
    except BaseException:  # storage failed: leave no half-started test holding the VM
        with contextlib.suppress(Exception):
            services.audit.table.delete_entity(PARTITION, test.test_id)
        with contextlib.suppress(Exception):
            _unlock(services, test)
        raise
    return test


def _lock(services: Services, test: Test) -> None:
    """One test at a time per VM: an entity per VM until the test ends (or its deadline)."""
    table = services.audit.table
    entity = {
        "PartitionKey": LOCK_PARTITION,
        "RowKey": vm_partition(test.vm),
        "test_id": test.test_id,
        "expires": test.deadline + LOCK_MARGIN,
    }
    try:
        table.create_entity(entity)
        return
    except ResourceExistsError:
        pass
    current = table.get_entity(LOCK_PARTITION, vm_partition(test.vm))
    if current["expires"] > test.started:
        raise Refused([f"a test alert ({current['test_id']}) is already running on this VM"], 409)
    if not replace_if_unchanged(table, entity, current.metadata["etag"]):
        raise Refused(["another test alert took this VM a moment ago"], 409)
    _end_lost(services, str(current["test_id"]))


def _end_lost(services: Services, test_id: str) -> None:
    """A test whose lock expired while it still says running lost its queue messages
    (a queue cleared by hand, say): end it, so it too has its one record."""
    lost = get(services, test_id)
    if lost is not None and lost.status == "running":
        with contextlib.suppress(RemediationError):
            reason = "The test was lost: no step of it ran before its deadline."
            _end(services, lost, "failed", reason, "run the test again")


def _extend_lock(services: Services, test: Test) -> None:
    """The deadline moved to the detection test's time: the VM stays held until then."""
    with contextlib.suppress(ResourceNotFoundError):
        current = services.audit.table.get_entity(LOCK_PARTITION, vm_partition(test.vm))
        if current["test_id"] == test.test_id:
            current["expires"] = test.deadline + LOCK_MARGIN
            replace_if_unchanged(services.audit.table, current, current.metadata["etag"])


def _unlock(services: Services, test: Test) -> None:
    """Free the VM, if this test still holds it (never a lock another test took since)."""
    with contextlib.suppress(ResourceNotFoundError, ResourceModifiedError):
        current = services.audit.table.get_entity(LOCK_PARTITION, vm_partition(test.vm))
        if current["test_id"] == test.test_id:
            services.audit.table.delete_entity(
                LOCK_PARTITION,
                vm_partition(test.vm),
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )


# --- Storing ----------------------------------------------------------------------------
def _entity(test: Test) -> dict[str, Any]:
    return {
        "PartitionKey": PARTITION,
        "RowKey": test.test_id,
        "vm": test.vm,
        "os": test.os,
        "trigger": test.trigger,
        "status": test.status,
        "started": test.started,
        "deadline": test.deadline,
        "command_at": test.command_at,
        "result": json.dumps(test.result) if test.result is not None else "",
        "recorded": test.recorded,
    }


def get(services: Services, test_id: str) -> Test | None:
    try:
        entity = services.audit.table.get_entity(PARTITION, test_id)
    except ResourceNotFoundError:
        return None
    return Test(
        test_id=test_id,
        vm=entity["vm"],
        os=entity["os"],
        trigger=entity["trigger"],
        status=entity["status"],
        started=entity["started"],
        deadline=entity["deadline"],
        command_at=entity.get("command_at"),
        result=json.loads(entity["result"]) if entity.get("result") else None,
        recorded=bool(entity.get("recorded")),
        etag=str(entity.metadata["etag"]),
    )


def _save(services: Services, test: Test) -> bool:
    """Write the test's row if nobody changed it since it was read (its ETag): steps of
    one test (a redelivery, the poison handler) never overwrite each other."""
    return replace_if_unchanged(services.audit.table, _entity(test), test.etag)


def _message(test_id: str, step: str) -> str:
    return json.dumps({"schema": SCHEMA, "test_id": test_id, "step": step})


# --- The queue: run, then watch ----------------------------------------------------------
def handle(
    services: Services, text: bytes | str, now: datetime | None = None
) -> AuditRecord | None:
    """One step of a test. Raises TransientError for the host to retry; returns the
    record once the test ended, None while it goes on."""
    try:
        value = load_json(text, max_bytes=MAX_BODY)
        test_id, step = str(value["test_id"]), str(value["step"])
        if (
            value.get("schema") != SCHEMA
            or not TEST_ID.match(test_id)
            or step not in {"run", "watch"}
        ):
            raise ValueError(step)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return record_dropped(services, "queue", "test-alert", error)
    test = get(services, test_id)
    if test is None:
        return None
    if test.status != "running":  # ended: a repeated delivery, or a record still to write
        return None if test.recorded else _record(services, test)
    settings = services.settings
    if not settings.allow_test_alert or not settings.enforce:  # changed since it was queued
        why = (
            "REMEDIATION_ALLOW_TEST_ALERT is off"
            if settings.enforce
            else "the app is in report mode"
        )
        done = "Stopped watching" if test.command_at else "Not run"
        return _end(services, test, "failed", f"{done}: {why} since the test was queued.", "")
    now = now or datetime.now(UTC)
    if step == "run":
        return _run(services, test, now)
    return _watch(services, test, now)


def _run(services: Services, test: Test, now: datetime) -> AuditRecord | None:
    if test.command_at is not None:  # a repeated delivery: the test ran; keep watching
        _watch_later(services, test, now)
        return None
    vm = VmRef.parse(test.vm)
    family = OsFamily(test.os)
    try:
        output = services.arm.run_command(vm, family is OsFamily.WINDOWS, SCRIPTS[family])
    except VmNotRunning as error:
        reason = f"The VM stopped before the test ran: {scrub(str(error))}"
        return _end(services, test, "failed", reason, CHECK)
    except TransientError:
        raise  # the host retries; the poison handler ends the test
    except PermanentError as error:
        reason = f"Run Command refused the detection test: {scrub(str(error))}"
        return _end(services, test, "failed", reason, error.hint or CHECK)
    stdout, stderr = output if output is not None else ("(still running)", "")
    ran = {"stdout": scrub(stdout), "stderr": scrub(stderr)}
    timeout = timedelta(minutes=services.settings.test_alert_timeout_minutes)
    test = _replace(test, command_at=now, deadline=now + timeout, result={"output": ran})
    if not _save(services, test):
        # Another step changed the row meanwhile, or a retried write of ours was applied:
        # read it again and go on from what it says.
        current = get(services, test.test_id)
        if current is None or current.command_at is None:
            raise TransientError(f"test alert {test.test_id} changed meanwhile: retrying")
        if current.status != "running":
            return None if current.recorded else _record(services, current)
        test = current
    _extend_lock(services, test)
    _watch_later(services, test, now)
    return None


def _watch_later(services: Services, test: Test, now: datetime) -> None:
    remaining = int((test.deadline - now).total_seconds()) + 1
    delay = max(1, min(services.settings.recheck_seconds, remaining))
    services.tests.queue.send_message(_message(test.test_id, "watch"), visibility_timeout=delay)


def _watch(services: Services, test: Test, now: datetime) -> AuditRecord | None:
    vm = VmRef.parse(test.vm)
    since = (test.command_at or test.started) - CLOCK_SKEW
    marker = ALERT_MARKERS[OsFamily(test.os)]
    try:
        alerts = services.arm.security_alerts(vm)
    except TransientError:
        raise  # the host retries; the poison handler ends the test
    except PermanentError as error:
        reason = f"Defender for Cloud's alerts could not be read: {scrub(str(error))}"
        return _end(services, test, "failed", reason, error.hint or CHECK)
    alert = next((a for a in alerts if _is_test_alert(a, vm, marker, since)), None)
    if alert is not None:
        return _verified(services, test, vm, alert)
    if now >= test.deadline:
        minutes = services.settings.test_alert_timeout_minutes
        reason = (
            f"No test alert reached Defender for Cloud within {minutes} minutes of the "
            "detection test."
        )
        return _end(services, test, "not-verified", reason, CHECK)
    _watch_later(services, test, now)
    return None


def _is_test_alert(alert: dict[str, Any], vm: VmRef, marker: str, since: datetime) -> bool:
    properties = alert.get("properties") or {}
    name = str(properties.get("alertDisplayName") or "").lower()
    ids = {
        str(item.get("azureResourceId") or "").lower()
        for item in properties.get("resourceIdentifiers") or []
        if isinstance(item, dict)
    }
    when = _time(properties.get("timeGeneratedUtc"))
    return marker in name and vm.id.lower() in ids and when is not None and when >= since


def _verified(
    services: Services, test: Test, vm: VmRef, alert: dict[str, Any]
) -> AuditRecord | None:
    properties = alert.get("properties") or {}
    name = str(properties.get("alertDisplayName") or "")
    when = _time(properties.get("timeGeneratedUtc")) or datetime.now(UTC)
    minutes = max(0.0, (when - (test.command_at or test.started)).total_seconds() / 60)
    reason = (
        f'Test alert "{name}" ({alert.get("id")}) reached Defender for Cloud {minutes:.1f} '
        "minutes after the detection test."
    )
    result = {"alert_id": alert.get("id"), "alert_name": name, "minutes": round(minutes, 1)}
    if services.settings.dismiss_test_alerts:
        try:
            services.arm.dismiss_alert(vm, str(alert.get("id")))
            reason += " It was dismissed (REMEDIATION_DISMISS_TEST_ALERTS)."
            result["dismissed"] = True
        except RemediationError as error:
            reason += f" Dismissing it failed: {scrub(str(error))}"
            result["dismissed"] = False
    return _end(services, test, "verified", reason, "", extra=result)


def _end(
    services: Services,
    test: Test,
    status: str,
    reason: str,
    hint: str,
    *,
    extra: dict[str, Any] | None = None,
) -> AuditRecord | None:
    """End the test once: its row moves from running to ``status`` under its ETag, so of
    two steps ending it (a redelivery, the poison handler) one wins; then the row as read
    back gets its one record (a repeat rewrites the same rows). None once recorded."""
    result = (test.result or {}) | (extra or {}) | {"reason": reason, "hint": hint}
    # Whether this write wins or not (another step ended it, or a retried write of ours
    # was applied), the row read back says what to do.
    _save(services, _replace(test, status=status, result=result))
    current = get(services, test.test_id)
    if current is None or current.status == "running":
        raise TransientError(f"test alert {test.test_id} changed meanwhile: retrying")
    return None if current.recorded else _record(services, current)


def _record(services: Services, test: Test) -> AuditRecord:
    """The ended test's record. Its id and time derive from the test, so writing it again
    (a retry after a failure between the row and the record) rewrites the same rows."""
    result = test.result or {}
    reason, hint = str(result.get("reason") or ""), str(result.get("hint") or "")
    output = result.get("output") or {}
    if test.status == "failed" and output:
        reason += f" Output: {output.get('stdout', '')} {output.get('stderr', '')}".rstrip()
    vm = VmRef.parse(test.vm)
    context = Context(services, test.trigger, correlation_id=test.test_id).for_vm(vm)
    record = context.record(
        Outcome.COMPLIANT.value,
        reason,
        RecordOutcome.SUCCEEDED if test.status == "verified" else RecordOutcome.FAILED,
        hint=hint,
        test_alert=test.status,
        applied=True,
    )
    digest = hashlib.sha256(f"test-alert|{test.test_id}".encode()).hexdigest()[:32]
    record = services.audit.write(dataclasses.replace(record, time=test.started, record_id=digest))
    # The write above rewrites the same rows whoever repeats it; of those who get here,
    # the one that marks the row recorded (its ETag) frees the VM and notifies.
    marked = replace_if_unchanged(
        services.audit.table,
        {"PartitionKey": PARTITION, "RowKey": test.test_id, "recorded": True},
        test.etag,
        UpdateMode.MERGE,
    )
    if marked:
        with contextlib.suppress(Exception):  # the lock expires anyway
            _unlock(services, test)
        if services.notifier is not None:
            services.notifier.test_alert(record)
    return record


def handle_poison(services: Services, text: bytes | str) -> AuditRecord | None:
    """A step that failed every try: the test ends as failed, with a record."""
    try:
        test = get(services, str(load_json(text, max_bytes=MAX_BODY)["test_id"]))
    except (ValueError, KeyError, TypeError) as error:
        return record_dropped(services, "queue", "test-alert (poison queue)", error)
    if test is None:
        return None
    if test.status != "running":
        return None if test.recorded else _record(services, test)
    reason = "The test gave up after every retry: Azure kept failing (see the function's logs)."
    return _end(services, test, "failed", reason, "run the test again later")


def _replace(test: Test, **changes: Any) -> Test:
    return dataclasses.replace(test, **changes)


def _time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- HTTP ----------------------------------------------------------------------------------
def http_start(services: Services, body: bytes, status_base: str) -> tuple[int, dict[str, Any]]:
    """POST /api/test-alert {"vm": id}: 202 with a status URL; 400 or 409, writing nothing."""
    try:
        test = begin(services, parse_body(body), "http")
    except Refused as error:
        return error.status, {"errors": error.problems}
    except TransientError as error:  # ARM did not answer: try again later
        return 503, {"errors": [f"the VM could not be read: {error}"]}
    except RemediationError as error:  # ARM refused (the app's permissions): not the caller's
        return 502, {"errors": [f"the VM could not be read: {error}", *filter(None, [error.hint])]}
    return 202, {
        "test_id": test.test_id,
        "status_url": f"{status_base.rstrip('/')}/{test.test_id}",
        "vm": test.vm,
        "deadline": test.deadline.isoformat(),
    }


def http_status(services: Services, test_id: str) -> tuple[int, dict[str, Any]]:
    """GET /api/test-alert/{testId}: the test, and its result once it ended."""
    if not TEST_ID.match(test_id):
        return 400, {"errors": ["not a test id"]}
    test = get(services, test_id)
    if test is None:
        return 404, {"errors": [f"no test alert {test_id}"]}
    return 200, test.to_json()
