"""What is uncovered right now, straight from Resource Graph: per subscription and
platform, how many VMs are covered, to install, deferred, excluded, unsupported,
blocked or in error, the coverage of eligible running VMs, and the VMs that need a
human. ``python -m remediation status`` and ``GET /api/status`` run it.

It only reads: each subscription's Defender posture (afresh), the inventory through
the sweep's Resource Graph query, and, for a Failed MDE extension, the VM's history in
the remediation log. No lock, no run record, no log row, no queue message, no ARM
write: it is safe in any mode and leaves the report's trend alone. A subscription that
cannot be read is reported as unavailable, with the error, and the others still count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from azure.core.exceptions import AzureError

from remediation.classify import classify
from remediation.config import GUID
from remediation.model import (
    UNDECIDED,
    InvalidResourceId,
    Outcome,
    RemediationError,
    TransientError,
    Unparsed,
    VmFacts,
    VmRef,
    coverage_percent,
    covered,
    percent_text,
    sentences,
    visible,
)
from remediation.ops import FUNCTION_KEY
from remediation.report import CATEGORIES, NEEDS_A_HUMAN
from remediation.service import Services, assess, subscription_hint

PARAMETERS = frozenset({"subscription"})
MAX_SUBSCRIPTIONS = 1000
SHOWN = 20  # "needs a human" rows in the table; the JSON has them all


class InvalidStatusRequest(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# --- The result --------------------------------------------------------------------------
@dataclass
class Tally:
    """VMs of one subscription and platform (or a total), by category."""

    categories: Counter[str] = field(default_factory=Counter)  # CATEGORIES words
    eligible_running: int = 0
    covered: int = 0

    @property
    def vms(self) -> int:
        return sum(self.categories.values())

    @property
    def coverage_percent(self) -> float | None:
        return coverage_percent(self.covered, self.eligible_running)

    def add(self, other: Tally) -> None:
        self.categories.update(other.categories)
        self.eligible_running += other.eligible_running
        self.covered += other.covered

    def to_json(self) -> dict[str, Any]:
        return {
            "vms": self.vms,
            "categories": {word: self.categories.get(word, 0) for word in CATEGORIES.values()},
            "eligible_running": self.eligible_running,
            "covered": self.covered,
            "coverage_percent": self.coverage_percent,
        }


@dataclass(frozen=True)
class HumanItem:
    """A VM a human must look at: blocked, unsupported, or in error."""

    vm: str
    subscription: str
    platform: str
    decision: str
    reason: str
    hint: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SubscriptionStatus:
    subscription: str
    platforms: dict[str, Tally] = field(default_factory=dict)  # platform -> its tally
    error: str = ""  # why the subscription could not be read; "" when it was
    hint: str = ""
    name: str = ""  # display name, when known

    @property
    def label(self) -> str:
        return f"{self.name} ({self.subscription})" if self.name else self.subscription

    @property
    def available(self) -> bool:
        return not self.error

    @property
    def total(self) -> Tally:
        total = Tally()
        for tally in self.platforms.values():
            total.add(tally)
        return total

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {
            "subscription": self.subscription,
            "name": self.name,
            "available": self.available,
            "error": self.error,
            "hint": self.hint,
        }
        if not self.available:
            return value
        return value | {
            **self.total.to_json(),
            "platforms": [
                {"platform": platform, **tally.to_json()}
                for platform, tally in sorted(self.platforms.items())
            ],
        }


@dataclass
class Status:
    generated: datetime
    mode: str
    subscriptions: list[SubscriptionStatus]
    human: list[HumanItem]  # ordered as the report orders them
    unassessed: int = 0  # VMs that could not be assessed: the status is not complete

    @property
    def total(self) -> Tally:
        total = Tally()
        for subscription in self.subscriptions:
            total.add(subscription.total)
        return total

    @property
    def unavailable(self) -> list[SubscriptionStatus]:
        return [s for s in self.subscriptions if not s.available]

    @property
    def complete(self) -> bool:
        """Every subscription read, and every VM in it assessed (none unanswered, none
        that could not be assessed)."""
        unanswered = self.total.categories.get(CATEGORIES[UNDECIDED], 0)
        return not self.unavailable and not unanswered and not self.unassessed

    def to_json(self) -> dict[str, Any]:
        return {
            "generated": self.generated.isoformat(),
            "mode": self.mode,
            "complete": self.complete,
            **self.total.to_json(),
            "subscriptions": [s.to_json() for s in self.subscriptions],
            "needs_a_human": [item.to_json() for item in self.human],
        }


# --- Gathering ---------------------------------------------------------------------------
class _Gathered:
    """What one or more subscriptions' inventory came to, kept apart until the whole
    query stream succeeded (a failed stream counts nothing)."""

    def __init__(self) -> None:
        self.platforms: dict[str, dict[str, Tally]] = {}  # subscription -> platform -> tally
        self.human: list[HumanItem] = []
        self.unassessed = 0  # VMs the status could not assess (kept out of the coverage)

    def count(self, services: Services, facts: VmFacts | Unparsed) -> None:
        if isinstance(facts, Unparsed):  # one machine not assessed, not the whole status
            self.unassessed += 1
            reason = f"Azure listed a machine whose id this app cannot read: {facts.reason}"
            hint = "report it with the id: the machine is not assessed until the app reads it"
            error = Outcome.ERROR.value
            self.human.append(HumanItem(facts.shown, "", "unknown", error, reason, hint))
            return
        subscription = facts.vm.subscription
        try:
            assessment = assess(services, facts, last_known=False)  # read-only: no log reads
        except TransientError:  # Azure did not answer: an outage, as the sweep records it
            platform = classify(facts, services.settings.exclude_tag).platform or "unknown"
            self._tally(subscription, platform).categories[CATEGORIES[UNDECIDED]] += 1
            return
        except (RemediationError, AzureError) as error:  # e.g. the log's history unreadable
            # An error, kept out of the coverage: a human should look.
            hint = getattr(error, "hint", "") or "run the status again; the sweep reads it too"
            platform = classify(facts, services.settings.exclude_tag).platform or "unknown"
            self._tally(subscription, platform).categories[CATEGORIES[Outcome.ERROR.value]] += 1
            reason = f"The status could not assess this VM: {error}"
            self.unassessed += 1
            self.human.append(
                HumanItem(facts.vm.id, subscription, platform, Outcome.ERROR.value, reason, hint)
            )
            return
        vm, decision = assessment.vm, assessment.decision
        tally = self._tally(subscription, vm.platform or "unknown")
        tally.categories[CATEGORIES[decision.outcome.value]] += 1
        tally.eligible_running += vm.eligible_running
        tally.covered += covered(decision.outcome, vm.eligible_running)
        if decision.outcome.value in NEEDS_A_HUMAN:
            self.human.append(
                HumanItem(
                    facts.vm.id,
                    subscription,
                    vm.platform or "unknown",
                    decision.outcome.value,
                    decision.reason,
                    decision.hint,
                )
            )

    def _tally(self, subscription: str, platform: str) -> Tally:
        return self.platforms.setdefault(subscription, {}).setdefault(platform, Tally())


def gather(
    services: Services, subscriptions: Sequence[str] | None = None, now: datetime | None = None
) -> Status:
    """The coverage now of ``subscriptions`` (all in scope by default), read-only."""
    settings = services.settings
    chosen = services.scope().ids if subscriptions is None else subscriptions
    scope = sorted({s.lower() for s in chosen})
    names = services.scope()
    results = {s: SubscriptionStatus(s, name=names.name(s)) for s in scope}
    readable = []
    for subscription in scope:  # the posture afresh: the plan may have changed since
        services.arm.forget_posture(subscription)
        try:
            services.arm.posture(subscription)
        except RemediationError as error:
            _unavailable(results[subscription], error)
        else:
            readable.append(subscription)
    human: list[HumanItem] = []
    unassessed = 0
    size = max(1, settings.sweep_batch_size)
    for start in range(0, len(readable), size):
        batch = readable[start : start + size]
        for gathered in _inventory(services, batch, results):
            for subscription, platforms in gathered.platforms.items():
                if subscription in results:  # Resource Graph answers for what was asked
                    results[subscription].platforms.update(platforms)
            human += gathered.human
            unassessed += gathered.unassessed
    order = {decision: index for index, decision in enumerate(NEEDS_A_HUMAN)}
    human.sort(key=lambda item: (order[item.decision], item.subscription, item.vm.lower()))
    return Status(
        generated=now or datetime.now(UTC),
        mode=settings.mode.value,
        subscriptions=list(results.values()),
        human=human,
        unassessed=unassessed,
    )


def _inventory(
    services: Services, batch: list[str], results: Mapping[str, SubscriptionStatus]
) -> Iterable[_Gathered]:
    """One query stream for the batch, as the sweep does; when it fails, one stream per
    subscription, so that only the subscriptions that fail alone are unavailable."""
    gathered = _Gathered()
    try:
        for facts in services.arm.inventory(batch):
            gathered.count(services, facts)
    except RemediationError as error:
        if len(batch) == 1:
            _unavailable(results[batch[0]], error)
            return []
        return [g for subscription in batch for g in _inventory(services, [subscription], results)]
    return [gathered]


def _unavailable(result: SubscriptionStatus, error: RemediationError) -> None:
    result.error = str(error)
    result.hint = subscription_hint(error)


# --- HTTP ----------------------------------------------------------------------------------
def parse_params(params: Mapping[str, str], scope: frozenset[str]) -> list[str]:
    """The subscriptions asked for (``subscription``: one id or a comma-separated list;
    every subscription in scope without it). Strict: unknown parameters, ids that are
    not subscription ids and subscriptions out of scope are refused, every one listed."""
    problems = [
        f"unknown parameter {name[:40]!r}"
        for name in sorted(set(params) - PARAMETERS - FUNCTION_KEY)
    ]
    chosen: list[str] = []
    if "subscription" in params:
        given = [item.strip(" ") for item in params["subscription"].split(",")]
        if len(given) > MAX_SUBSCRIPTIONS:
            problems.append(f"subscription: at most {MAX_SUBSCRIPTIONS} subscriptions")
            given = given[:MAX_SUBSCRIPTIONS]
        for item in given:
            if not GUID.match(item):
                problems.append(f"subscription: not a subscription id: {item[:60]!r}")
            elif item.lower() not in scope:
                problems.append(f"subscription: {item} is not in scope")
            else:
                chosen.append(item.lower())
    if problems:
        raise InvalidStatusRequest(problems)
    return sorted(set(chosen) or scope)


def http_status(services: Services, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """GET /api/status: 200 with the coverage now, or 400 with every problem."""
    try:
        subscriptions = parse_params(params, services.scope().ids)
    except InvalidStatusRequest as error:
        return 400, {"errors": error.problems}
    return 200, gather(services, subscriptions).to_json()


# --- The terminal ------------------------------------------------------------------------
def terminal(out: TextIO, **options: Any) -> Any:
    """A Rich console on ``out`` that lets a closed pipe (``| head``) reach the CLI as
    BrokenPipeError, for its quiet exit: Rich's own answer is SystemExit(1), which a
    script would read as a failure."""
    from rich.console import Console  # noqa: PLC0415 - only the terminal needs it

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return PipeConsole(file=out, **options)


WIDE = 120  # from this many columns on, tables show every column


def render_table(
    status: Status, out: TextIO, shown: int | None = SHOWN, width: int | None = None
) -> None:
    """A table per subscription (a row per platform), then what needs a human (``shown``
    of them; None: all). Fits the terminal: a category no platform of a subscription has
    is left out of its table, and under WIDE columns the "needs a human" table drops the
    resource group and subscription columns (the VM's table names them) first."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415 - ARM's text is not rich markup

    console = terminal(out, width=width) if width else terminal(out)
    wide = console.width >= WIDE
    total = status.total
    headline = (
        f"Coverage now ({status.mode} mode, {status.generated:%Y-%m-%d %H:%M} UTC): "
        f"{percent_text(total.coverage_percent)} of eligible running VMs "
        f"({total.covered} of {total.eligible_running}), {plural(total.vms, 'VM')}"
    )
    if status.unavailable:
        headline += (
            f"; {len(status.unavailable)} of {len(status.subscriptions)} subscriptions unavailable"
        )
    console.print(Text(headline))
    for subscription in status.subscriptions:
        if not subscription.available:
            console.print(
                Text(
                    visible(
                        sentences(
                            f"subscription {subscription.label}: unavailable: {subscription.error}",
                            f"Hint: {subscription.hint}" if subscription.hint else "",
                        )
                    )
                )
            )
            continue
        words = [
            word
            for word in CATEGORIES.values()
            if wide or subscription.total.categories.get(word, 0)
        ]
        table = Table(title=Text(visible(f"subscription {subscription.label}")))
        table.add_column("platform", overflow="fold")
        for word in (*words, "VMs", "coverage"):
            table.add_column(word, justify="right")
        rows = sorted(subscription.platforms.items())
        for platform, tally in [*rows, ("all", subscription.total)]:
            if platform == "all":
                table.add_section()
            table.add_row(
                Text(visible(platform)),
                *(str(tally.categories.get(word, 0)) for word in words),
                str(tally.vms),
                # nothing eligible: no coverage to speak of ("100%" would read as all good)
                percent_text(tally.coverage_percent),
            )
        console.print(table)
    human = status.human
    if not human:
        console.print("Needs a human: nothing.")
        return
    listed = human if shown is None else human[:shown]
    if len(listed) == len(human):
        title = f"Needs a human: all {len(human)}"
    else:
        title = (
            f"Needs a human: {len(listed)} of {len(human)} shown "
            "(--all shows every one, --limit N that many, --json all of them)"
        )
    table = Table(title=Text(title), show_lines=not wide)
    columns = ["VM", "resource group", "subscription", "decision", "platform"]
    if not wide:
        columns = ["VM", "decision", "platform"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for column in ("why", "what to do"):
        table.add_column(column, overflow="fold", ratio=1)
    for item in listed:
        name, group = _name_and_group(item.vm)
        cells = {
            "VM": name,
            "resource group": group,
            "subscription": item.subscription,
            "decision": item.decision,
            "platform": item.platform,
        }
        texts = (*(cells[c] for c in columns), item.reason, item.hint)
        table.add_row(*(Text(visible(text)) for text in texts))
    console.print(table)


def plural(count: int, noun: str) -> str:
    """'1 VM', '2 VMs': the count and the noun as a reader says them."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _name_and_group(vm_id: str) -> tuple[str, str]:
    try:
        vm = VmRef.parse(vm_id)
    except InvalidResourceId:
        return vm_id, ""
    return vm.name, vm.resource_group
