"""What every trigger shares: the services a worker builds once, the assessment of one
machine (classify and decide, the pure core, on facts read from Azure), and the context
that turns a decision into one audit record.

The act step (act.py) takes an assessment to Azure; the handlers (handlers.py) and the
sweep gather the facts, call it, and write the record.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError

from remediation.audit import AuditLog, AuditRecord
from remediation.classify import Classification, Protection, classify, may_run_on_azure
from remediation.config import Mode, Settings
from remediation.defender import OFF, State, States
from remediation.model import (
    UNDECIDED,
    Decision,
    History,
    PermanentError,
    Posture,
    RecordOutcome,
    RemediationError,
    TransientError,
    Verification,
    Verified,
    VmFacts,
    VmRef,
)
from remediation.policy import decide, not_checkable
from remediation.queues import Claims, InstallRequest, WorkQueue
from remediation.runs import RunStore
from remediation.scope import Scope, ScopeStore, listed, reconcile, resolve

if TYPE_CHECKING:  # the gateway imports azure.mgmt: keep it off this module's import
    from remediation.arm import ArmGateway
    from remediation.notify import Notifier

log = logging.getLogger("remediation")
# How long a worker trusts its copy of the scope: a subscription that joins a management
# group reaches the event path of other workers within this long after the sweep.
SCOPE_TTL_SECONDS = 300.0


@dataclass
class Services:
    """What the pipeline needs, built once per worker by bootstrap.services()."""

    settings: Settings
    arm: ArmGateway
    audit: AuditLog
    queue: WorkQueue  # install requests
    claims: Claims
    sweeps: WorkQueue  # sweep batches
    tests: WorkQueue  # test alerts: run the test, then watch for its alert
    states: States  # each VM's verification between sweeps
    scopes: ScopeStore  # the last sweep's resolution of the scope
    runs: RunStore  # sweep runs, their locks and their batches' results
    notifier: Notifier | None = None
    _scope: tuple[float, Scope] | None = field(default=None, repr=False)

    def scope(self) -> Scope:
        """The subscriptions in scope with their names: the last sweep's resolution (kept
        in the audit table) under today's settings, cached per worker. Before the first
        sweep: the listed subscriptions, and those under the groups as Resource Graph
        lists them now (nothing is stored, and names come with the first sweep)."""
        now = time.monotonic()
        if self._scope is not None and now - self._scope[0] < SCOPE_TTL_SECONDS:
            return self._scope[1]
        settings = self.settings
        try:
            stored = self.scopes.load()
        except AzureError as error:  # storage is down: the settings still give the scope
            log.warning("the stored scope could not be read (%s)", type(error).__name__)
            stored = None
        if stored is not None:
            scope = reconcile(stored, settings)
        elif settings.management_groups:
            try:
                rows = self.arm.subscription_containers(settings.management_groups)
                scope = resolve(settings, rows, datetime.now(UTC))
            except RemediationError as error:
                log.warning("the management groups could not be resolved: %s", error)
                scope = listed(settings)
        else:
            scope = listed(settings)
        self.remember_scope(scope)
        return scope

    def remember_scope(self, scope: Scope) -> None:
        """A sweep resolved the scope afresh: this worker uses it from now on."""
        self._scope = (time.monotonic(), scope)


@dataclass(frozen=True)
class Assessment:
    facts: VmFacts
    vm: Classification
    decision: Decision
    verified: Verified | None = None  # for a Succeeded extension only


# --- Gather and decide -------------------------------------------------------------------
def assess(
    services: Services,
    facts: VmFacts,
    last_known: bool = True,
    posture: Posture | None = None,
    reinstalls: int | None = None,
) -> Assessment:
    """Classify and decide for facts already read; reads the (cached) posture unless it
    is given (a sweep batch reads it once for all its machines) and, for a Failed
    extension only, its failed installs since the last success (unless given: a sweep
    batch reads its subscriptions' counts with their baselines). For a Succeeded extension,
    ``last_known`` adds the verification the last sweep made (one read; the sweep, which
    reads Defender for Endpoint's list, makes its own)."""
    vm = classify(facts, services.settings.exclude_tag)
    posture = posture or services.arm.posture(facts.vm.subscription)
    history = History()
    if vm.protection is Protection.FAILED:
        if reinstalls is None:
            reinstalls = services.audit.reinstalls_since_success(facts.vm.id)
        history = History(reinstalls=reinstalls)
    decision = decide(vm, posture, services.settings, history)
    verified = None
    if last_known and vm.protection is Protection.SUCCEEDED:
        verified = not_checkable(vm) or last_verification(services, facts.vm)
    return Assessment(facts, vm, decision, verified)


def last_verification(services: Services, vm: VmRef) -> Verified:
    """Between sweeps: what the last one found, or "pending" for a VM it has not seen."""
    if not services.settings.mde_api:
        return Verified(Verification.UNCHECKED, OFF)
    state = services.states.get(vm.id, vm.subscription)
    if state is None:
        return Verified(
            Verification.PENDING,
            "Defender for Endpoint's device list is checked by the next sweep.",
        )
    found, when = state.verified, state.checked or state.since
    said = f"Found by the sweep of {when:%Y-%m-%d %H:%M} UTC: {found.reason}"
    return Verified(found.value, said, found.hint)


def just_installed(services: Services, vm: VmRef) -> Verified:
    """Our install Succeeded: the grace period for Defender for Endpoint starts now."""
    if not services.settings.mde_api:
        return Verified(Verification.UNCHECKED, OFF)
    verified = Verified(
        Verification.PENDING,
        "The extension was just installed; Defender for Endpoint may take up to "
        f"{services.settings.verify_grace_hours} h to list the device.",
    )
    now = datetime.now(UTC)
    services.states.write(vm.subscription, {vm.id: State(now, verified, checked=now)})
    return verified


def verification_fields(verified: Verified | None) -> dict[str, str]:
    if verified is None:
        return {}
    return {
        "verification": verified.value.value,
        "verification_reason": verified.reason,
        "verification_hint": verified.hint,
    }


# --- Records ---------------------------------------------------------------------------------
@dataclass
class Context:
    """Who asked about which VM, and when: what every audit record of one run shares."""

    services: Services
    trigger: str
    vm: str = ""
    subscription: str = ""
    event_id: str = ""
    correlation_id: str = ""
    run_id: str = ""
    started: float = field(default_factory=time.monotonic)
    mode: Mode | None = None  # a sweep's own (it may ask for report in enforce); else the app's

    def __post_init__(self) -> None:
        if self.mode is None:
            self.mode = self.services.settings.mode

    @property
    def enforce(self) -> bool:
        """The one place that says whether this run writes to Azure."""
        return self.mode is Mode.ENFORCE

    def for_vm(self, vm: VmRef) -> Context:
        return dataclasses.replace(self, vm=vm.id, subscription=vm.subscription)

    def record(
        self,
        decision: str,
        reason: str,
        outcome: str,
        assessment: Assessment | None = None,
        **extra: Any,
    ) -> AuditRecord:
        if assessment is not None:
            extra.setdefault("os", assessment.vm.os.value)
            extra.setdefault("platform", assessment.vm.platform)
            extra.setdefault("eligible_running", assessment.vm.eligible_running)
            extra.setdefault("actions", tuple(assessment.decision.action_names))
            extra.setdefault("hint", assessment.decision.hint)
            extra.setdefault("findings", assessment.vm.findings)
            for name, value in verification_fields(assessment.verified).items():
                extra.setdefault(name, value)
        if self.subscription:
            extra.setdefault("subscription_name", self.services.scope().name(self.subscription))
        return AuditRecord(
            vm=self.vm,
            subscription=self.subscription,
            trigger=self.trigger,
            decision=decision,
            reason=reason,
            mode=str(self.mode),
            outcome=outcome,
            event_id=self.event_id,
            correlation_id=self.correlation_id,
            run_id=self.run_id,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            **extra,
        )

    def decided(
        self, assessment: Assessment, outcome: str, reason: str = "", **extra: Any
    ) -> AuditRecord:
        decision = assessment.decision
        return self.record(
            decision.outcome.value, reason or decision.reason, outcome, assessment, **extra
        )

    def unreadable(self, error: PermanentError) -> AuditRecord:
        if error.status == 404:
            return self.record("ignored", "The VM no longer exists.", RecordOutcome.IGNORED)
        reason = f"Reading the VM failed: {error}"
        return self.record("error", reason, RecordOutcome.FAILED, hint=error.hint)

    def unavailable(
        self, error: TransientError, then: str, assessment: Assessment | None = None
    ) -> AuditRecord:
        """ARM or the token authority did not answer: an outage, recorded as such with the
        decision made before it (or none), never as the VM's fault."""
        decision = assessment.decision.outcome.value if assessment else UNDECIDED
        reason = f"Azure did not answer ({error}); {then}"
        hint = "nothing to do on the VM; if it lasts, check ARM's status and the app's network"
        return self.record(decision, reason, RecordOutcome.UNAVAILABLE, assessment, hint=hint)

    def install_request(self) -> InstallRequest:
        """What the install queue needs to act on this VM later; it never holds a secret."""
        return InstallRequest(
            vm=self.vm,
            trigger=self.trigger,
            event_id=self.event_id,
            correlation_id=self.correlation_id,
            run_id=self.run_id,
            requested_at=datetime.now(UTC).isoformat(),
        )


def record_dropped(services: Services, trigger: str, what: str, error: Exception) -> AuditRecord:
    """A queue message that is not ours to read (not UTF-8, not JSON, nested too deep,
    another schema): one record, then the message is dropped (retrying cannot fix it)."""
    reason = f"A malformed {what} message was dropped: {error}."
    record = Context(services, trigger).record("error", reason, RecordOutcome.FAILED)
    return services.audit.write(record)


def subscription_hint(error: RemediationError) -> str:
    """What to do about a subscription that could not be read."""
    if error.status == 404:  # SubscriptionNotFound: ARM's answer for an id it does not know
        return (
            "check the id in REMEDIATION_SUBSCRIPTIONS: Azure does not know this subscription "
            "(a typo, one of another tenant, or one deleted)"
        )
    return error.hint or "check the app's roles in this subscription: python -m remediation doctor"


def with_twin(services: Services, facts: VmFacts) -> VmFacts:
    """An Arc machine that may run on an Azure VM, with that VM found by its SMBIOS id
    (one Resource Graph request over the scope); any other machine as it is."""
    if not may_run_on_azure(facts):
        return facts
    twin = services.arm.azure_twin(services.scope().ids, facts.vm_uuid)
    return dataclasses.replace(facts, azure_twin=twin) if twin else facts
