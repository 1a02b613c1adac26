"""The act step in the fast tier: plain in-memory stand-ins for the install queue, the
claims and the ARM gateway (the same methods the shell calls on the real ones), and real
decisions from the pure core. What is asserted is what Azure and the queue end up
holding, and the record ops read."""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from remediation import act
from remediation.classify import MDE_PUBLISHER
from remediation.config import Mode, load
from remediation.model import (
    BlockedByExtension,
    ExtensionFacts,
    InstallResult,
    Kind,
    OperationInProgress,
    PermanentError,
    Posture,
    Power,
    TransientError,
    VmFacts,
    VmNotRunning,
    VmRef,
    smbios_forms,
)
from remediation.queues import InstallRequest
from remediation.service import Context, Services, assess

SUB = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"
BASE = {
    "REMEDIATION_SUBSCRIPTIONS": f"{SUB},{OTHER}",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "REMEDIATION_RECHECK_SECONDS": "60",
    "REMEDIATION_RECHECK_MINUTES": "30",
}
READY = Posture(SUB, "Standard", "P1", wdatp=True, unified=True, exclude_linux=False)
NO_WDATP = dataclasses.replace(READY, wdatp=False)  # the integration is off: a setting to write
UBUNTU = ("Canonical", "0001-com-ubuntu-server-jammy", "22_04-lts-gen2")


def ubuntu(name: str = "vm1", subscription: str = SUB, **more) -> VmFacts:
    publisher, offer, sku = UBUNTU
    return VmFacts(
        vm=VmRef(subscription, "rg", name, more.pop("kind", Kind.VM)),
        os_type="Linux",
        publisher=publisher,
        offer=offer,
        sku=sku,
        agent_ready=more.pop("agent_ready", True),
        power=more.pop("power", Power.RUNNING),
        **more,
    )


def mde(state: str) -> ExtensionFacts:
    return ExtensionFacts("MDE.Linux", MDE_PUBLISHER, "MDE.Linux", state)


# --- The stand-ins ---------------------------------------------------------------------------
class Queue:
    def __init__(self, fails: bool = False) -> None:
        self.sent: list[tuple[InstallRequest, int]] = []
        self.fails = fails

    def send(self, request: InstallRequest, delay_seconds: int = 0) -> None:
        if self.fails:
            raise ConnectionError("the storage account did not answer")
        self.sent.append((request, delay_seconds))


class Claims:
    """One claim per VM, as queues.Claims keeps them (its table behaviour is tested
    against Azurite): held until finished, then for a cooldown."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}
        self.installing: dict[str, str] = {}
        self.finished: list[str] = []
        self.released: list[str] = []
        self.failures: dict[str, str] = {}

    def take(self, vm: str, holder: str) -> bool:
        if vm in self.holders:
            return False
        self.holders[vm] = holder
        return True

    def note_failure(self, vm: str, error: str) -> None:
        self.failures[vm] = error

    def last_failure(self, vm: str) -> str:
        return self.failures.get(vm, "")

    def release(self, vm: str, holder: str) -> None:
        if self.holders.get(vm) == holder:
            del self.holders[vm]
            self.installing.pop(vm, None)
            self.released.append(vm)

    def finish(self, vm: str) -> None:
        self.installing.pop(vm, None)
        self.finished.append(vm)

    def begin_install(self, vm: str, token: str) -> bool:
        mark = self.installing.setdefault(vm, token)
        return mark == token

    def end_install(self, vm: str, token: str) -> None:
        if self.installing.get(vm) == token:
            del self.installing[vm]


class Arm:
    """The gateway's methods the act step calls; what was written is kept."""

    def __init__(self, facts: VmFacts, posture: Posture = READY) -> None:
        self.facts = {facts.vm.id: facts}
        self.postures = {SUB: posture, OTHER: dataclasses.replace(posture, subscription=OTHER)}
        self.pricing: dict[str, str] = {}  # VM id -> its own pricing tier
        self.result = InstallResult("Succeeded")
        self.refusal: Exception | None = None
        self.puts: list[tuple[str, str, bool]] = []  # (vm, extension, waited)
        self.packages: list[str] = []  # what each PUT carried
        self.writes: list[tuple[str, str]] = []  # (subscription, what)
        self.setting_refusal: Exception | None = None
        self.twins: dict[str, str] = {}  # SMBIOS id form -> the Azure VM with it as vmId
        self.twin_lookups = 0

    principal = "00000000-0000-0000-0000-0000000000aa"  # the app's own object id
    outage: Exception | None = None  # what every read raises while ARM is down

    @property
    def principal_id(self) -> str:
        if self.outage is not None:
            raise self.outage
        return self.principal

    @staticmethod
    @contextlib.contextmanager
    def budget(seconds: float):
        yield

    def vm_facts(self, vm: VmRef) -> VmFacts:
        if self.outage is not None:
            raise self.outage
        return self.facts[vm.id]

    def posture(self, subscription: str) -> Posture:
        return self.postures[subscription]

    def azure_twin(self, subscriptions, vm_uuid: str) -> str:
        self.twin_lookups += 1
        return next((self.twins[f] for f in smbios_forms(vm_uuid) if f in self.twins), "")

    def vm_pricing(self, vm: VmRef) -> str | None:
        return self.pricing.get(vm.id)

    def onboarding_package(self, subscription: str, extension: str) -> str:
        return f"package:{subscription}:{extension}"

    def install_extension(self, facts: VmFacts, extension: str, package: str, *, wait=True):
        if self.refusal is not None:
            raise self.refusal
        self.puts.append((facts.vm.id, extension, wait))
        self.packages.append(package)
        return self.result if wait else InstallResult("InProgress", extension=extension)

    def enable_plan(self, subscription: str, plan: str) -> None:
        self.writes.append((subscription, f"plan {plan}"))

    def set_setting(self, subscription: str, name: str, enabled: bool) -> None:
        if self.setting_refusal is not None:
            raise self.setting_refusal
        self.writes.append((subscription, f"{name}={enabled}"))


class Audit:
    def __init__(self) -> None:
        self.written: list = []

    def reinstalls_since_success(self, vm: str) -> int:
        return 0

    def write(self, record):
        self.written.append(record)
        return record


class States:
    def __init__(self) -> None:
        self.written: list[str] = []

    def get(self, vm: str, subscription: str):
        return None

    def write(self, subscription: str, changes) -> None:
        self.written += list(changes)


class NoStoredScope:
    def load(self):
        return None


def services(facts: VmFacts, posture: Posture = READY, mode: str = "enforce", **settings):
    values = BASE | {"REMEDIATION_MODE": mode} | settings
    return Services(
        settings=load(values),
        arm=Arm(facts, posture),  # type: ignore[arg-type]
        audit=Audit(),  # type: ignore[arg-type]
        queue=Queue(),  # type: ignore[arg-type]
        claims=Claims(),  # type: ignore[arg-type]
        sweeps=None,  # type: ignore[arg-type]
        tests=None,  # type: ignore[arg-type]
        states=States(),  # type: ignore[arg-type]
        scopes=NoStoredScope(),  # type: ignore[arg-type]
        runs=None,  # type: ignore[arg-type]
    )


def event(running: Services, facts: VmFacts) -> Context:
    return Context(running, "event", event_id="e1").for_vm(facts.vm)


def assessed(running: Services, facts: VmFacts):
    return assess(running, facts)


# --- act: report mode ------------------------------------------------------------------------
def test_report_mode_records_what_enforce_would_do_and_writes_nothing():
    facts = ubuntu()
    running = services(facts, NO_WDATP, mode="report")
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert (record.decision, record.outcome, record.mode) == ("install", "reported", "report")
    assert record.actions == ("enable-setting:WDATP", "install:MDE.Linux")
    assert running.queue.sent == []
    assert running.claims.holders == {}
    assert running.arm.puts == []
    assert running.arm.writes == []


def test_a_report_sweep_in_an_enforce_app_writes_nothing_either():
    facts = ubuntu()
    running = services(facts, NO_WDATP, mode="enforce")
    context = dataclasses.replace(event(running, facts), trigger="sweep", mode=Mode.REPORT)
    batch = act.BatchActions()
    record = act.act(context, assessed(running, facts), holder="run", batch=batch)
    assert record.outcome == "reported"
    assert running.arm.writes == []
    assert running.queue.sent == []
    assert running.claims.holders == {}


def test_nothing_to_do_takes_no_claim():
    facts = ubuntu(extensions=(mde("Succeeded"),))
    running = services(facts)
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert (record.decision, record.outcome) == ("compliant", "none")
    assert running.claims.holders == {}
    assert running.queue.sent == []


# --- act: enforce, from an event ----------------------------------------------------------------
def test_an_event_starts_an_extension_only_install_and_queues_its_watch():
    facts = ubuntu()
    running = services(facts)
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert (record.outcome, record.applied) == ("started", True)
    assert running.arm.puts == [(facts.vm.id, "MDE.Linux", False)]
    assert running.claims.holders == {facts.vm.id: "h"}
    [(watch, delay)] = running.queue.sent
    assert watch.vm == facts.vm.id
    assert watch.install_started
    assert delay == 60


def test_an_event_with_a_setting_to_write_queues_the_whole_install():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert record.outcome == "queued"
    assert running.arm.puts == []
    assert running.arm.writes == []
    [(request, delay)] = running.queue.sent
    assert (request.vm, request.install_started, delay) == (facts.vm.id, "", 0)
    assert running.claims.holders == {facts.vm.id: "h"}


def test_a_machine_already_claimed_is_a_duplicate_and_nothing_is_sent():
    facts = ubuntu()
    running = services(facts)
    running.claims.take(facts.vm.id, "someone else")
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert record.outcome == "duplicate"
    assert "already queued" in record.reason
    assert running.queue.sent == []
    assert running.arm.puts == []


def test_a_send_that_fails_gives_the_claim_back_and_reports_an_outage():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    running.queue.fails = True
    with pytest.raises(TransientError, match="claim was given back"):
        act.act(event(running, facts), assessed(running, facts), holder="h")
    assert running.claims.holders == {}
    assert running.claims.released == [facts.vm.id]


def test_the_event_honours_the_vms_own_pricing_opt_out_before_any_put():
    facts = ubuntu()
    running = services(facts)
    running.arm.pricing[facts.vm.id] = "Free"
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert (record.decision, record.outcome) == ("exclude", "skipped")
    assert running.arm.puts == []
    assert running.queue.sent == []
    assert running.claims.finished == [facts.vm.id]


def test_a_put_the_event_cannot_start_goes_to_the_install_queue():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = OperationInProgress("another operation is running")
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert record.outcome == "queued"
    [(request, delay)] = running.queue.sent
    assert (request.install_started, delay) == ("", 0)
    running.arm.refusal = None  # the queued delivery may PUT: the event's mark is gone
    queued_record = act.install(
        queued(running, facts), assessed(running, facts), request, "queued-message"
    )
    assert queued_record.outcome == "succeeded"


def test_a_watch_that_cannot_be_queued_still_records_the_started_install():
    facts = ubuntu()
    running = services(facts)
    running.queue.fails = True
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert record.outcome == "started"
    assert "the watch could not be queued" in record.hint
    assert running.arm.puts == [(facts.vm.id, "MDE.Linux", False)]


def test_an_event_queues_a_recheck_of_an_install_in_progress_and_a_sweep_does_not():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert (record.decision, record.outcome) == ("defer", "queued")
    assert [delay for _, delay in running.queue.sent] == [60]
    swept = services(facts)
    context = dataclasses.replace(event(swept, facts), trigger="sweep")
    record = act.act(context, assessed(swept, facts), holder="run", batch=act.BatchActions())
    assert (record.decision, record.outcome) == ("defer", "none")
    assert swept.queue.sent == []


def test_an_outage_while_assessing_queues_a_retry_under_a_claim():
    facts = ubuntu()
    running = services(facts)
    record = act.queue_retry(event(running, facts), TransientError("ARM answered 503"))
    assert (record.decision, record.outcome) == ("defer", "queued")
    assert running.claims.holders == {facts.vm.id: "e1"}
    assert [r.vm for r, _ in running.queue.sent] == [facts.vm.id]


def test_an_outage_with_the_machine_already_claimed_is_recorded_unavailable():
    facts = ubuntu()
    running = services(facts)
    running.claims.take(facts.vm.id, "other")
    record = act.queue_retry(event(running, facts), TransientError("ARM answered 503"))
    assert (record.decision, record.outcome) == ("undecided", "unavailable")
    assert running.queue.sent == []


# --- act: enforce, from a sweep batch ---------------------------------------------------------
def test_a_batch_writes_a_subscription_setting_once_and_queues_each_install():
    first, second = ubuntu("vm1"), ubuntu("vm2")
    running = services(first, NO_WDATP)
    running.arm.facts[second.vm.id] = second
    batch = act.BatchActions()
    records = []
    for facts in (first, second):
        context = dataclasses.replace(event(running, facts), trigger="sweep")
        records.append(act.act(context, assessed(running, facts), holder="run", batch=batch))
    assert [r.outcome for r in records] == ["queued", "queued"]
    assert running.arm.writes == [(SUB, "WDATP=True")]
    assert [r.vm for r, _ in running.queue.sent] == [first.vm.id, second.vm.id]
    assert running.claims.holders == {first.vm.id: "run", second.vm.id: "run"}
    assert running.arm.puts == []  # the install queue PUTs


def test_a_refused_subscription_write_blocks_the_install_and_takes_no_claim():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    running.arm.setting_refusal = PermanentError("403 AuthorizationFailed", hint="Security Admin")
    context = dataclasses.replace(event(running, facts), trigger="sweep")
    record = act.act(context, assessed(running, facts), holder="run", batch=act.BatchActions())
    assert (record.decision, record.outcome) == ("blocked", "failed")
    assert record.hint == "Security Admin"
    assert running.claims.holders == {}
    assert running.queue.sent == []


def test_a_batch_whose_send_fails_gives_the_claim_back():
    facts = ubuntu()
    running = services(facts)
    running.queue.fails = True
    context = dataclasses.replace(event(running, facts), trigger="sweep")
    with pytest.raises(TransientError):
        act.act(context, assessed(running, facts), holder="run", batch=act.BatchActions())
    assert running.claims.holders == {}


# --- install: the install queue --------------------------------------------------------------
def request(facts: VmFacts, **more) -> InstallRequest:
    now = datetime.now(UTC).isoformat()
    return InstallRequest(vm=facts.vm.id, trigger="event", requested_at=now, **more)


def queued(running: Services, facts: VmFacts) -> Context:
    return Context(running, "queue").for_vm(facts.vm)


def test_the_queue_writes_the_settings_then_installs_and_records_success():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m1")
    assert (record.outcome, record.install_state) == ("succeeded", "Succeeded")
    assert running.arm.writes == [(SUB, "WDATP=True")]
    assert running.arm.puts == [(facts.vm.id, "MDE.Linux", True)]


def test_a_message_delivered_twice_puts_once():
    facts = ubuntu()
    running = services(facts)
    context, assessment = queued(running, facts), assessed(running, facts)
    first = act.install(context, assessment, request(facts), "message-1")
    again = act.install(context, assessment, request(facts), "message-1-copy")
    assert first.outcome == "succeeded"
    assert again.outcome == "duplicate"
    assert running.arm.puts == [(facts.vm.id, "MDE.Linux", True)]


def test_a_retry_of_the_same_message_may_put_again():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = TransientError("ARM answered 503")
    context, assessment = queued(running, facts), assessed(running, facts)
    with pytest.raises(TransientError):
        act.install(context, assessment, request(facts), "message-1")
    running.arm.refusal = None
    record = act.install(context, assessment, request(facts), "message-1")
    assert record.outcome == "succeeded"


def test_the_queue_in_report_mode_records_and_installs_nothing():
    facts = ubuntu()
    running = services(facts, NO_WDATP, mode="report")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert record.outcome == "reported"
    assert running.arm.writes == []
    assert running.arm.puts == []


def test_an_install_that_ends_failed_is_recorded_failed_with_its_hint():
    facts = ubuntu(kind=Kind.ARC)
    running = services(facts)
    running.arm.result = InstallResult("Failed", "MDE.Linux ended Failed", "MDE.Linux")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.decision, record.outcome, record.install_state) == ("error", "failed", "Failed")


def test_a_failed_operation_that_names_another_extension_is_blocked_by_it():
    facts = ubuntu()
    running = services(facts)
    running.arm.result = InstallResult("Failed", "VM has reported a failure", "CustomScript")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.decision, record.outcome) == ("blocked", "failed")
    assert "'CustomScript'" in record.reason
    assert "CustomScript" in record.hint


def test_compute_refusing_for_a_failed_extension_names_it():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = BlockedByExtension("refused", "OmsAgentForLinux")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.decision, record.outcome) == ("blocked", "failed")
    assert "'OmsAgentForLinux'" in record.hint


def test_a_stopped_vm_defers_and_frees_the_install_mark():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = VmNotRunning("Cannot modify extensions in the VM when it is not running")
    running.arm.facts[facts.vm.id] = dataclasses.replace(facts, power=Power.DEALLOCATED)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.outcome, record.reason) == (
        "deferred",
        "The VM is deallocated: MDE.Linux is installed when it next starts.",
    )
    assert running.claims.installing == {}


def test_an_install_still_running_is_checked_again_later_under_the_claim():
    facts = ubuntu()
    running = services(facts)
    running.arm.result = InstallResult("InProgress")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert record is None
    [(again, delay)] = running.queue.sent
    assert again.install_started
    assert delay == 60


def test_the_recheck_window_runs_from_the_install_not_the_request():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    long_ago = (datetime.now(UTC) - timedelta(minutes=45)).isoformat()
    just_now = datetime.now(UTC).isoformat()
    late = InstallRequest(facts.vm.id, "event", requested_at=long_ago, install_started=just_now)
    assert act.install(queued(running, facts), assessed(running, facts), late, "m") is None
    assert len(running.queue.sent) == 1
    gone = dataclasses.replace(late, install_started=long_ago)
    record = act.install(queued(running, facts), assessed(running, facts), gone, "m")
    assert (record.decision, record.outcome) == ("error", "failed")
    assert "still not Succeeded after 30 minutes" in record.reason


def test_a_refusal_other_than_stopped_or_busy_is_a_failure_with_a_hint():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = PermanentError("403 AuthorizationFailed", status=403, hint="the role")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.decision, record.outcome, record.hint) == ("blocked", "failed", "the role")


def test_the_watch_of_our_install_records_its_end():
    facts = ubuntu(extensions=(mde("Succeeded"),))
    running = services(facts)
    watch = request(facts, install_started=datetime.now(UTC).isoformat())
    record = act.install(queued(running, facts), assessed(running, facts), watch, "m")
    assert (record.decision, record.outcome) == ("install", "succeeded")
    assert running.arm.puts == []
    failed = ubuntu(extensions=(dataclasses.replace(mde("Failed"), code=31),))
    running = services(failed)
    record = act.install(queued(running, failed), assessed(running, failed), watch, "m")
    assert (record.outcome, record.install_code) == ("failed", 31)


# --- Every record the act step writes, field by field -----------------------------------------
def said(record) -> tuple:
    """What ops read of a record: decision, outcome, applied, install state and code."""
    return (
        record.decision,
        record.outcome,
        record.applied,
        record.install_state,
        record.install_code,
    )


UNIX_BLOCK = PermanentError("refused", status=400, hint="fix the request")


def test_the_queue_installs_with_the_subscriptions_own_package():
    facts = ubuntu()
    running = services(facts)
    act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert running.arm.packages == [f"package:{SUB}:MDE.Linux"]


def test_a_started_install_carries_the_subscriptions_package_too():
    facts = ubuntu()
    running = services(facts)
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert said(record) == ("install", "started", True, "", None)
    assert running.arm.packages == [f"package:{SUB}:MDE.Linux"]
    assert running.claims.installing == {facts.vm.id: "h"}  # the watch holds the mark


def test_a_queued_vm_that_needs_nothing_any_more_is_skipped():
    facts = ubuntu(extensions=(mde("Succeeded"),))
    running = services(facts)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == ("compliant", "skipped", False, "", None)
    assert record.reason == assessed(running, facts).decision.reason
    assert running.arm.puts == []


def test_a_queued_vm_that_stopped_meanwhile_is_deferred():
    facts = ubuntu(power=Power.DEALLOCATED)
    running = services(facts)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == ("defer", "deferred", False, "", None)
    assert running.arm.puts == []


def test_subscription_settings_alone_are_applied_without_a_put():
    facts = ubuntu(extensions=(mde("Succeeded"),))  # covered, but the integration is off
    running = services(facts, NO_WDATP)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == ("install", "applied", True, "", None)
    assert running.arm.writes == [(SUB, "WDATP=True")]
    assert running.arm.puts == []


def test_the_duplicate_delivery_says_why_in_the_record():
    facts = ubuntu()
    running = services(facts)
    running.claims.begin_install(facts.vm.id, "first")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert record.reason == (
        "MDE.Linux is absent on ubuntu-22.04. Another delivery of this install is running it."
    )


def test_a_succeeded_install_starts_the_grace_period_when_verification_is_on():
    facts = ubuntu()
    running = services(facts, REMEDIATION_MDE_API="https://api.security.microsoft.com")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == ("install", "succeeded", True, "Succeeded", None)
    assert (record.verification, record.verification_reason) == (
        "pending",
        "The extension was just installed; Defender for Endpoint may take up to 24 h to "
        "list the device.",
    )
    assert running.states.written == [facts.vm.id]


def test_a_succeeded_install_says_verification_is_off_when_it_is():
    facts = ubuntu()
    running = services(facts)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert record.verification == "unchecked"
    assert running.states.written == []


@pytest.mark.parametrize(
    ("refusal", "expected"),
    [
        (PermanentError("gone", status=404), ("ignored", "ignored", False, "", None)),
        (
            PermanentError("403 AuthorizationFailed", status=403),
            ("blocked", "failed", False, "", None),
        ),
        (UNIX_BLOCK, ("error", "failed", False, "", None)),
    ],
)
def test_each_refusal_of_the_put_has_its_record(refusal, expected):
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = refusal
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == expected
    if refusal.status != 404:
        assert record.reason == f"Installing MDE.Linux failed: {refusal}"
        assert record.hint == refusal.hint
    else:
        assert record.reason == "The VM no longer exists."


def test_busy_or_lagging_vms_are_checked_again_and_their_mark_freed():
    facts = ubuntu()
    for refusal in (OperationInProgress("in progress"), VmNotRunning("not running")):
        running = services(facts)  # Compute says not running; its view says running
        running.arm.refusal = refusal
        record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
        assert record is None
        [(again, delay)] = running.queue.sent
        assert (again.vm, again.install_started, delay) == (facts.vm.id, "", 60)
        assert running.claims.installing == {}


def test_a_refused_put_names_the_failed_extension_that_blocks_it():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = BlockedByExtension("VM has extension 'X' in failed state", "X")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == ("blocked", "failed", False, "absent", None)
    assert record.reason == (
        "MDE.Linux was not installed: extension 'X' is Failed, and Compute refuses new "
        "extensions until it is repaired or removed. MDE.Linux is absent. "
        "(VM has extension 'X' in failed state)"
    )
    assert (
        record.hint
        == "repair or remove the extension 'X' on the VM; the next sweep installs MDE.Linux then"
    )


def test_a_failed_operation_takes_its_code_from_the_vm_read_after_it():
    facts = ubuntu()
    running = services(facts)
    running.arm.result = InstallResult("Failed", "VM has reported a failure", "MDE.Linux")
    after = dataclasses.replace(facts, extensions=(dataclasses.replace(mde("Failed"), code=10),))
    running.arm.facts[facts.vm.id] = after
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record) == ("error", "failed", True, "Failed", 10)
    assert record.reason == "MDE.Linux ended Failed with code 10: VM has reported a failure"
    assert record.hint == "unsupported distribution: move to a supported one or onboard by hand"


def test_a_failed_operation_without_a_readable_vm_still_says_what_failed():
    facts = ubuntu()
    running = services(facts)
    running.arm.result = InstallResult("Failed", "boom", "MDE.Linux")
    assessment = assessed(running, facts)
    running.arm.outage = TransientError("ARM answered 503")  # the read after the PUT fails
    record = act.install(queued(running, facts), assessment, request(facts), "m")
    assert said(record) == ("error", "failed", True, "Failed", None)
    assert record.reason == "MDE.Linux ended Failed: boom"


def test_an_mde_extension_under_another_name_is_not_a_blocker():
    named = dataclasses.replace(mde("Failed"), name="MDEForLinux")
    facts = ubuntu(extensions=(named,))
    running = services(facts)
    running.arm.result = InstallResult("Failed", "boom", "MDEForLinux")
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert said(record)[:2] == ("error", "failed")


def test_the_watch_records_another_failed_extension_as_the_blocker():
    other = ExtensionFacts("CustomScript", "Microsoft.Azure.Extensions", "CustomScript", "Failed")
    facts = ubuntu(extensions=(other,))
    running = services(facts)
    watch = request(facts, install_started="2026-12-04T08:00:00+00:00")
    record = act.install(queued(running, facts), assessed(running, facts), watch, "m")
    assert said(record) == ("blocked", "failed", False, "absent", None)
    assert record.reason.startswith(
        "MDE.Linux was not installed: extension 'CustomScript' is Failed"
    )
    assert record.reason.endswith("(CustomScript is Failed)")


def test_the_watch_of_an_install_that_vanished_says_absent():
    facts = ubuntu()
    running = services(facts)
    watch = request(facts, install_started="2026-12-04T08:00:00+00:00")
    record = act.install(queued(running, facts), assessed(running, facts), watch, "m")
    assert said(record) == ("error", "failed", True, "absent", None)
    assert record.reason == (
        "MDE.Linux is absent after the install started at 2026-12-04T08:00:00+00:00."
    )


def test_the_watch_of_a_succeeded_install_says_since_when():
    facts = ubuntu(extensions=(mde("Succeeded"),))
    running = services(facts)
    watch = request(facts, install_started="2026-12-04T08:00:00+00:00")
    record = act.install(queued(running, facts), assessed(running, facts), watch, "m")
    assert said(record) == ("install", "succeeded", True, "Succeeded", None)
    assert record.reason == "MDE.Linux is Succeeded (installed from 2026-12-04T08:00:00+00:00)."


def test_a_recheck_within_its_window_keeps_the_request_and_records_nothing():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    first = request(facts)
    assert act.install(queued(running, facts), assessed(running, facts), first, "m") is None
    [(again, delay)] = running.queue.sent
    assert (again, delay) == (first, 60)


def test_a_recheck_of_a_request_with_no_time_starts_its_window_now():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    timeless = InstallRequest(vm=facts.vm.id, trigger="event")
    assert act.install(queued(running, facts), assessed(running, facts), timeless, "m") is None
    [(again, _)] = running.queue.sent
    assert datetime.fromisoformat(again.requested_at) > datetime.now(UTC) - timedelta(minutes=1)


def test_a_recheck_past_its_window_is_deferred_to_the_next_event_or_sweep():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    old = (datetime.now(UTC) - timedelta(minutes=31)).isoformat()
    late = InstallRequest(vm=facts.vm.id, trigger="event", requested_at=old)
    record = act.install(queued(running, facts), assessed(running, facts), late, "m")
    assert said(record) == ("defer", "deferred", False, "", None)
    assert record.reason.endswith(
        "Still so after 30 minutes of checks; the next event or sweep checks again."
    )
    assert running.queue.sent == []


def test_a_request_time_that_is_not_a_time_counts_from_now():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    odd = InstallRequest(vm=facts.vm.id, trigger="event", requested_at="yesterday")
    assert act.install(queued(running, facts), assessed(running, facts), odd, "m") is None
    naive = InstallRequest(vm=facts.vm.id, trigger="event", requested_at="2026-01-01T00:00:00")
    record = act.install(queued(running, facts), assessed(running, facts), naive, "m")
    assert record.outcome == "deferred"  # read as UTC, long past


def test_each_subscription_action_writes_what_it_names():
    facts = ubuntu()
    bare = Posture(SUB)  # no plan, no settings: the plan (allowed here) and both switches
    running = services(facts, bare, REMEDIATION_ALLOW_PLAN_CHANGE="true")
    decision = assessed(running, facts).decision
    act.apply_subscription_actions(running, decision, SUB)
    assert running.arm.writes == [
        (SUB, "plan P1"),
        (SUB, "WDATP=True"),
        (SUB, "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW=False"),
    ]


def test_a_report_sweep_notes_its_subscription_writes_once_per_batch():
    batch = act.BatchActions()
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    decision = assessed(running, facts).decision
    assert batch.new(SUB, decision) == ["enable-setting:WDATP"]
    batch.note(SUB, decision)
    assert batch.new(SUB, decision) == []
    assert batch.new(OTHER, decision) == ["enable-setting:WDATP"]


def test_an_outage_retry_is_held_under_the_run_or_a_fixed_name_without_an_event():
    facts = ubuntu()
    running = services(facts)
    context = dataclasses.replace(event(running, facts), event_id="", run_id="run-1")
    act.queue_retry(context, TransientError("down"))
    assert running.claims.holders == {facts.vm.id: "run-1"}
    running = services(facts)
    context = dataclasses.replace(event(running, facts), event_id="")
    record = act.queue_retry(context, TransientError("down"))
    assert running.claims.holders == {facts.vm.id: "retry"}
    assert record.reason == "ARM was unavailable (down); the install queue checks this VM again."
    assert [r.vm for r, _ in running.queue.sent] == [facts.vm.id]


def test_an_outage_in_report_mode_queues_nothing():
    facts = ubuntu()
    running = services(facts, mode="report")
    record = act.queue_retry(event(running, facts), TransientError("down"))
    assert said(record) == ("undecided", "unavailable", False, "", None)
    assert (
        record.reason
        == "Azure did not answer (down); the next event or sweep checks this VM again."
    )
    assert running.claims.holders == {}


def test_a_started_install_whose_vm_opted_out_says_skipped_with_the_opt_out():
    facts = ubuntu()
    running = services(facts)
    running.arm.pricing[facts.vm.id] = "Free"
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert said(record) == ("exclude", "skipped", False, "", None)
    assert "VM-level Defender for Servers pricing is Free" in record.reason


def test_an_event_in_report_mode_on_a_vm_to_recheck_records_none():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts, mode="report")
    record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert said(record) == ("defer", "none", False, "", None)
    assert running.queue.sent == []


def test_a_batch_whose_subscription_write_was_made_queues_without_writing_again():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    batch = act.BatchActions({SUB: {"enable-setting:WDATP"}})
    context = dataclasses.replace(event(running, facts), trigger="sweep")
    record = act.act(context, assessed(running, facts), holder="run", batch=batch)
    assert said(record) == ("install", "queued", True, "", None)
    assert running.arm.writes == []


def test_a_batch_with_only_subscription_writes_records_applied():
    facts = ubuntu(extensions=(mde("Succeeded"),))
    running = services(facts, NO_WDATP)
    context = dataclasses.replace(event(running, facts), trigger="sweep")
    record = act.act(context, assessed(running, facts), holder="run", batch=act.BatchActions())
    assert said(record) == ("install", "applied", True, "", None)
    assert running.claims.holders == {}
    assert running.queue.sent == []


# --- What the act step logs and says where no record is written yet ---------------------------
def test_a_recheck_logs_one_line_ops_can_query(caplog):
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    with caplog.at_level("INFO", logger="remediation"):
        act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    reason = assessed(running, facts).decision.reason
    assert caplog.messages == [
        f'vm="{facts.vm.id}" decision="defer" outcome="recheck" reason="{reason}"'
    ]


def test_a_put_the_event_cannot_start_logs_why_with_our_own_words_only(caplog):
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = OperationInProgress("another operation is in progress")
    with caplog.at_level("INFO", logger="remediation"):
        act.act(event(running, facts), assessed(running, facts), holder="h")
    assert caplog.messages == [
        f'vm="{facts.vm.id}" outcome="to-queue" reason="another operation is in progress"'
    ]
    caplog.clear()
    running = services(facts)
    running.arm.refusal = ValueError("a request body, with a secret in it")
    with caplog.at_level("INFO", logger="remediation"):
        act.act(event(running, facts), assessed(running, facts), holder="h")
    assert caplog.messages == [f'vm="{facts.vm.id}" outcome="to-queue" reason="ValueError"']


def test_a_watch_that_cannot_be_queued_is_logged_and_hinted(caplog):
    facts = ubuntu()
    running = services(facts)
    running.queue.fails = True
    with caplog.at_level("INFO", logger="remediation"):
        record = act.act(event(running, facts), assessed(running, facts), holder="h")
    assert said(record) == ("install", "started", True, "", None)
    assert record.hint == (
        "the watch could not be queued; the next sweep records how the install ended"
    )
    assert caplog.messages == [f'vm="{facts.vm.id}" outcome="unwatched" reason="ConnectionError"']


def test_a_failed_send_says_what_the_queue_did_and_what_became_of_the_claim():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    running.queue.fails = True
    with pytest.raises(TransientError) as raised:
        act.act(event(running, facts), assessed(running, facts), holder="h")
    assert str(raised.value) == (
        "the install queue did not take the request (ConnectionError); the claim was given back"
    )


def test_records_carry_the_machines_classification():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = PermanentError("refused", status=400)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.os, record.platform, record.eligible_running, record.actions) == (
        "linux",
        "ubuntu-22.04",
        True,
        ("install:MDE.Linux",),
    )


def test_a_refused_subscription_write_says_which_subscription_and_why():
    facts = ubuntu()
    running = services(facts, NO_WDATP)
    running.arm.setting_refusal = PermanentError("forbidden (AuthorizationFailed)", status=403)
    context = dataclasses.replace(event(running, facts), trigger="sweep")
    record = act.act(context, assessed(running, facts), holder="run", batch=act.BatchActions())
    assert record.reason == (f"Changing subscription {SUB} failed: forbidden (AuthorizationFailed)")
    assert record.platform == "ubuntu-22.04"


def test_the_watch_of_a_failed_install_gives_the_code_and_its_hint():
    facts = ubuntu(extensions=(dataclasses.replace(mde("Failed"), code=31),))
    running = services(facts)
    watch = request(facts, install_started="2026-12-04T08:00:00+00:00")
    record = act.install(queued(running, facts), assessed(running, facts), watch, "m")
    assert said(record) == ("error", "failed", True, "Failed", 31)
    assert record.reason == (
        "MDE.Linux is Failed with code 31 after the install started at 2026-12-04T08:00:00+00:00."
    )
    assert record.hint == "onboarding failed: check connectivity to the MDE service URLs"
    assert record.platform == "ubuntu-22.04"


def test_the_watch_of_a_succeeded_install_starts_the_grace_period():
    facts = ubuntu(extensions=(mde("Succeeded"),))
    running = services(facts, REMEDIATION_MDE_API="https://api.security.microsoft.com")
    watch = request(facts, install_started="2026-12-04T08:00:00+00:00")
    record = act.install(queued(running, facts), assessed(running, facts), watch, "m")
    assert (record.verification, record.platform) == ("pending", "ubuntu-22.04")
    assert running.states.written == [facts.vm.id]


def test_an_install_still_running_past_its_window_is_a_failure_with_a_hint():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    long_ago = (datetime.now(UTC) - timedelta(minutes=45)).isoformat()
    gone = InstallRequest(facts.vm.id, "event", requested_at=long_ago, install_started=long_ago)
    record = act.install(queued(running, facts), assessed(running, facts), gone, "m")
    assert said(record) == ("error", "failed", True, "", None)
    assert record.hint == (
        "check the extension's status on the VM in the portal; the next sweep checks it again"
    )
    assert record.platform == "ubuntu-22.04"


def test_a_request_time_with_an_offset_is_read_at_its_offset():
    facts = ubuntu(extensions=(mde("Creating"),))
    running = services(facts)
    paris = timezone(timedelta(hours=2))
    forty_ago = (datetime.now(UTC) - timedelta(minutes=40)).astimezone(paris).isoformat()
    late = InstallRequest(facts.vm.id, "event", requested_at=forty_ago)
    record = act.install(queued(running, facts), assessed(running, facts), late, "m")
    assert record.outcome == "deferred"  # 40 minutes ago, past the 30-minute window


def test_an_outage_retry_is_queued_at_once():
    facts = ubuntu()
    running = services(facts)
    act.queue_retry(event(running, facts), TransientError("down"))
    assert [delay for _, delay in running.queue.sent] == [0]


def test_a_failed_operation_naming_another_extension_uses_the_vm_as_read_after_it():
    facts = ubuntu()
    running = services(facts)
    running.arm.result = InstallResult("Failed", "VM has reported a failure", "CustomScript")
    after = dataclasses.replace(facts, extensions=(mde("Failed"),))
    running.arm.facts[facts.vm.id] = after
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert record.install_state == "failed"  # MDE.Linux as the VM shows it after the operation
    assert record.reason.endswith("MDE.Linux is failed. (VM has reported a failure)")
    assert record.platform == "ubuntu-22.04"


def test_a_vm_gone_before_its_put_is_ignored_not_failed():
    facts = ubuntu()
    running = services(facts)
    running.arm.refusal = PermanentError("not found", status=404)
    record = act.install(queued(running, facts), assessed(running, facts), request(facts), "m")
    assert (record.decision, record.outcome, record.hint) == ("ignored", "ignored", "")
