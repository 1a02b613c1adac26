"""`make demo`: the whole job on an embedded local Azure, no Azure account needed.

Starts Azurite and the local control plane with a seeded estate (300 VMs, Azure Arc-
enabled servers and scale sets over three subscriptions, two of them in scope through a
management group), wires their Event Grid as azd's postdeploy hook would, points the app
at them through its settings, and drives the real function objects of
``function_app.app`` as the Functions host would: Event Grid deliveries for a burst of VM
creations, Arc connections and VM starts, the queued installs, then a forced sweep, in
enforce mode, with the plan opt-in on for one subscription and off for another. Then
verification: what Defender for Endpoint's device list says of the covered VMs (one VM's
sensor never reports, one went Inactive), the harmless test alert run on one VM end to
end, and a fourth subscription joining the management group.

Coverage is measured before and after by report-mode sweeps (they change nothing); what
the app did is read from its remediation log without those measurements.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from localazure import LocalAzure, generate  # noqa: E402
from localazure.__main__ import DEMO_APP  # noqa: E402
from localazure.azurite import Azurite  # noqa: E402
from localazure.estate import (  # noqa: E402
    ARC_CATALOGUE,
    MDE_PUBLISHER,
    RHEL_92,
    TEST_ALERT_ROLE,
    UBUNTU_2204,
    WIN11_ENT,
    WS2022,
    Extension,
    Subscription,
    arc_machine,
)
from localazure.host import event_message, http_request, run_queue  # noqa: E402
from remediation.report import NEEDS_A_HUMAN  # noqa: E402 - in the order they are listed

console = Console(width=120)

# The remediation log's decisions (ops filter on these words), each with what it means.
DECISIONS = {
    "compliant": "MDE installed, plan and MDE integration on (running or not)",
    "install": "the app installs MDE (turning the plan on where allowed)",
    "defer": "later: VM not running, OS not known yet, or an install under way",
    "exclude": "left alone: opted out by tag, or part of a managed service",
    "unsupported": "an OS the MDE extension cannot onboard: needs a human",
    "blocked": "the app may not act (a setting, a Failed extension): needs a human",
    "error": "installs kept failing: needs a human",
    "undecided": "Azure did not answer (an outage): the next check decides",
}
# The same decisions as counted words: "1 already covered, 29 excluded".
COUNTED = {
    "compliant": "already covered",
    "install": "to install",
    "defer": "deferred",
    "exclude": "excluded",
    "error": "failed for good",
    "ignored": "ignored (not about a VM)",
}
SHOWN_PER_KIND = 4
# What a record's outcome says, when the app did something (outcome "none": its decision).
OUTCOMES = {
    "started": "install started from the event (the queue watches it)",
    "queued": "queued for install",
    "duplicate": "already queued (repeated deliveries)",
    "succeeded": "installed",
    "failed": "failed to install",
    "applied": "subscription changed",
    "reported": "would be installed (report mode)",
}


@dataclass
class Burst:
    """What the demo did to the estate, and the Event Grid deliveries it caused."""

    created: list[str] = field(default_factory=list)  # VM and Arc machine ids
    connected: int = 0  # of them, Arc machines

    @property
    def vms(self) -> int:
        return len(self.created) - self.connected

    started: list[str] = field(default_factory=list)  # VM ids, deallocated before
    creation_events: int = 0
    start_events: int = 0
    redelivered: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--vms", type=int, default=300)
    parser.add_argument("--subscriptions", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "demo")
    args = parser.parse_args(argv)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    app_log = args.out / "app.log"  # the operator log lines, as Application Insights gets them
    logging.basicConfig(
        filename=app_log,
        filemode="w",
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        force=True,
    )
    logging.getLogger("remediation").setLevel(logging.INFO)

    estate = generate(
        args.vms,
        args.subscriptions,
        args.seed,
        arc_machines=max(8, args.vms // 8),
        scale_sets=3,
        management_groups=True,
    )
    # In scope: the subscriptions under "Landing zones", and the platform one, listed.
    grouped = sorted(s.id for s in estate.subscriptions.values() if s.management_group)
    listed = [s.id for s in estate.subscriptions.values() if s.management_group == "mg-platform"]
    joining = _joining_subscription(estate, args.seed)  # at the root: out of scope for now
    estate.add_principal(DEMO_APP)
    # As deployed with allowTestAlert=true: Run Command and alert read/dismiss too.
    app_principal = estate.principals[DEMO_APP.client_id]
    app_principal.actions = [*app_principal.actions, *TEST_ALERT_ROLE]
    never, inactive = _unhealthy_sensors(estate, sorted(estate.subscriptions)[0])
    subscriptions = sorted(set(grouped) | set(listed) - {joining})
    ready, opted_in, not_opted = (estate.subscriptions[s] for s in subscriptions[:3])
    ready.pricing_tier, ready.sub_plan = "Standard", "P2"
    ready.settings = {
        "WDATP": True,
        "WDATP_UNIFIED_SOLUTION": True,
        "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": False,
    }
    for free in (opted_in, not_opted):  # Free today: the app may enable the first only
        free.pricing_tier, free.sub_plan = "Free", ""
        free.settings = {
            "WDATP": False,
            "WDATP_UNIFIED_SOLUTION": False,
            "WDATP_EXCLUDE_LINUX_PUBLIC_PREVIEW": True,
        }
    with (
        Azurite() as storage,
        LocalAzure(estate, latency=0.002, lro_seconds=0.3, test_alert_seconds=3.0) as azure,
    ):
        # The app's settings, as the Function App's app settings would hold them.
        os.environ.update(
            azure.environment(DEMO_APP)
            | {
                "AzureWebJobsStorage": storage.connection_string,
                "REMEDIATION_SUBSCRIPTIONS": ",".join(listed),
                "REMEDIATION_MANAGEMENT_GROUPS": "mg-landing-zones",
                "WEBSITE_SITE_NAME": "func-demo",
                "REMEDIATION_MODE": "enforce",
                "REMEDIATION_ALLOW_PLAN_CHANGE": opted_in.id,
                "REMEDIATION_MAX_ACTIONS_PER_SWEEP": "1000",
                "REMEDIATION_LRO_POLL_SECONDS": "0.2",
                "REMEDIATION_SWEEP_BATCH_SIZE": "1",
                "REMEDIATION_MDE_API": azure.url,  # Defender for Endpoint's API, locally
                "REMEDIATION_ALLOW_TEST_ALERT": "true",
                "REMEDIATION_RECHECK_SECONDS": "1",
            }
        )
        import function_app  # noqa: PLC0415 - after the settings, as the host loads it
        from remediation.bootstrap import services  # noqa: PLC0415

        _wire_events(azure, subscriptions)
        kinds = Counter(vm.kind for vm in estate.vms.values() if vm.subscription != joining)
        console.rule("[bold]Defender coverage remediator: demo on a local Azure")
        console.print(
            f"A local Azure control plane (a stand-in for Azure Resource Manager) at {azure.url} and Azurite (the "
            f"Azure Storage emulator) on 127.0.0.1 hold {kinds['vm']} VMs and {kinds['arc']} Azure "
            f"Arc-enabled servers in {len(subscriptions)} subscriptions: two under the management "
            "group Landing zones (REMEDIATION_MANAGEMENT_GROUPS), one listed "
            "(REMEDIATION_SUBSCRIPTIONS); Event Grid is wired as azd's postdeploy hook does. "
            "The app runs in enforce mode: it installs Microsoft Defender for Endpoint (MDE) on "
            "VMs and Arc machines itself."
        )
        plans_before = {s: _plan(estate.subscriptions[s]) for s in subscriptions}
        for subscription in subscriptions:
            if estate.subscriptions[subscription].pricing_tier == "Standard":
                may = ""
            elif subscription == opted_in.id:
                may = "; the app may turn the plan on (REMEDIATION_ALLOW_PLAN_CHANGE)"
            else:
                may = "; the app may not turn the plan on"
            label = estate.subscriptions[subscription].display_name
            console.print(
                f"  subscription {label} ({subscription}): {plans_before[subscription]}{may}"
            )

        seeded = _seed_history(services(), estate)
        console.print(
            f"  History: the app's earlier sweeps first saw MDE Succeeded on {seeded} VMs two "
            "days ago (seeded into its storage), so the 24 h grace for Defender for Endpoint "
            "to list them is over."
        )
        before = _coverage_sweep(function_app)
        console.print(
            f"\ncoverage before: [bold]{before['covered']} of {before['eligible_running']}[/] "
            f"eligible running VMs are covered ({before['coverage_percent']}%)"
        )
        console.print(
            "  eligible running = running, with an OS the MDE extension supports, not opted out "
            "and not run by a managed service;\n"
            "  covered = MDE installed and the subscription's Defender for Servers plan with MDE "
            "integration on.\n"
            f"  Measured by a report-mode sweep (run {before['run_id']}), which reads every VM "
            "and changes nothing."
        )

        burst = _burst(azure, subscriptions, args.seed)
        console.print(
            f"\n[bold]1. Event burst[/]: the demo creates {burst.vms} VMs, connects "
            f"{burst.connected} Arc-enabled servers and starts {len(burst.started)} deallocated "
            f"VMs; Event Grid delivers {len(burst.events)} events to the app's on_vm_event "
            "function"
        )
        console.print(
            f"   ({burst.creation_events} writes for the creations, "
            f"{(burst.creation_events - burst.connected) // max(burst.vms, 1)} per new VM and "
            "1 per Arc machine; "
            f"{burst.start_events} starts; {burst.redelivered} delivered twice, as Event Grid "
            "delivers at least once)"
        )
        for event in burst.events:
            function_app.on_vm_event(event_message(event))
        installs = _drain(function_app, services(), "install")
        console.print(f"   the install queue then ran {installs} install requests")

        console.print(
            "\n[bold]2. Forced sweep[/]: every VM and Arc machine of every subscription, in "
            "enforce mode (POST /api/sweep)"
        )
        response = function_app.forced_sweep(http_request("POST", "sweep", b"{}"))
        run = json.loads(response.get_body())
        console.print(
            f"   answered {response.status_code} Accepted: run {run['run_id']}, "
            f"{run['batches']} batches on the sweep queue (REMEDIATION_SWEEP_BATCH_SIZE="
            f"{os.environ['REMEDIATION_SWEEP_BATCH_SIZE']} subscription a batch)"
        )
        _drain(function_app, services(), "sweep")
        installs = _drain(function_app, services(), "install")
        status = json.loads(
            function_app.sweep_status(
                http_request("GET", f"sweep/{run['run_id']}", route={"runId": run["run_id"]})
            ).get_body()
        )
        console.print(
            f"   GET /api/sweep/{run['run_id']}: {status['status']}; "
            f"the install queue then ran {installs} install requests"
        )

        azure.drain_events()  # our own writes' events: the loop guard would ignore them
        after = _coverage_sweep(function_app)
        records = list(services().audit.since(datetime.now(UTC) - timedelta(hours=1)))
        newly_eligible = _eligible_running(services(), burst.created + burst.started)
        changes = [
            f"subscription {s}: was {plans_before[s]}, now {_plan(estate.subscriptions[s])}"
            for s in subscriptions
            if _plan(estate.subscriptions[s]) != plans_before[s]
        ]
        console.print(
            f"\ncoverage after: measured by another report-mode sweep (run {after['run_id']})"
        )
        _report(
            before,
            after,
            burst=burst,
            newly_eligible=newly_eligible,
            changes=changes,
            records=records,
            out=args.out,
        )
        _verification(function_app, after, never, inactive)
        _estate_grows(function_app, azure, joining)
        records = list(services().audit.since(datetime.now(UTC) - timedelta(hours=1)))
        log_file = args.out / "remediation-log.jsonl"  # again, with the test alert's record
        log_file.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
        page = args.out / "coverage.html"
        page.write_text(
            function_app.coverage_report(http_request("GET", "report")).get_body().decode()
        )
        console.print(f"\ncoverage report page (GET /api/report): {page}")
    console.print(
        f"\ndone in {time.monotonic() - started:.1f} s; Azurite and the local Azure are stopped"
    )
    return 0


def _joining_subscription(estate: Any, seed: int) -> str:
    """A fourth subscription, at the tenant's root (out of scope) for now, with a few VMs
    and Arc machines: step 5 moves it under the management group."""
    rng = random.Random(f"{seed}:joining")  # noqa: S311 - demo data
    subscription = estate.add_subscription(
        Subscription(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)), display_name="Contoso Online 01"
        )
    )
    for number in range(4):
        image = (UBUNTU_2204, WS2022)[number % 2]
        estate.add_vm(image.vm(subscription.id, "rg-online", f"online-{number:02d}"))
    for number, arc_image in enumerate(ARC_CATALOGUE[6:8]):  # Ubuntu 22.04 and 24.04
        estate.add_vm(arc_machine(arc_image, subscription.id, "rg-branch", f"branch-{number:02d}"))
    return str(subscription.id)


def _wire_events(azure: LocalAzure, subscriptions: list[str]) -> str:
    """What azd's postdeploy hook does after `azd up`: deliver each subscription's VM
    and Arc writes to the app's event queue (infra/hooks/wire_events.py, unchanged)."""
    import importlib.util  # noqa: PLC0415

    from azure.identity import ClientSecretCredential  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location(
        "wire_events", ROOT / "infra/hooks/wire_events.py"
    )
    assert spec is not None
    assert spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    # Azurite's account: the one the app's connection string names.
    storage_id = f"/subscriptions/{subscriptions[0]}/resourceGroups/rg-demo/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
    credential = ClientSecretCredential(
        azure.estate.tenant,
        DEMO_APP.client_id,
        DEMO_APP.secret,
        authority=azure.url,
        disable_instance_discovery=True,
    )
    queue = os.environ.get("REMEDIATION_EVENT_QUEUE", "vm-events")
    hook.wire(
        credential,
        subscriptions,
        storage_id,
        queue,
        "rg-demo-events",
        arm_endpoint=azure.url,
        location="westeurope",
    )
    return storage_id


def _estate_grows(function_app: Any, azure: LocalAzure, joining: str) -> None:
    """Step 5: a subscription moves under the management group; the next sweep covers
    it, says so in the log, and the report says its events are not wired yet."""
    name = azure.estate.subscriptions[joining].display_name
    console.print(
        f"\n[bold]5. The estate grows[/]: subscription {name} ({joining}) moves under the "
        "management group Landing zones (REMEDIATION_MANAGEMENT_GROUPS=mg-landing-zones)"
    )
    azure.move_subscription(joining, "mg-corp")
    response = function_app.forced_sweep(http_request("POST", "sweep", b'{"mode": "report"}'))
    run = json.loads(response.get_body())
    from remediation.bootstrap import services  # noqa: PLC0415

    _drain(function_app, services(), "sweep")
    records = [
        r
        for r in services().audit.since(datetime.now(UTC) - timedelta(hours=1))
        if r.run_id == run["run_id"]
    ]
    joined = [r for r in records if r.outcome == "joined"]
    for record in joined:
        console.print(f"   {record.decision}: {record.outcome}: {record.reason}", markup=False)
    machines = Counter(r.kind for r in records if r.vm and r.subscription == joining)
    console.print(
        f"   the sweep (run {run['run_id']}, report mode) read its {machines['vm']} VMs and "
        f"{machines['arc']} Arc machines with the rest;"
    )
    scope = services().scope()
    for subscription in sorted(scope.unwired):
        console.print(
            f"   not receiving events: {scope.label(subscription)}; the report names the "
            "command that wires it (infra/hooks/wire_events.py --subscriptions ...)",
            markup=False,
        )


def _unhealthy_sensors(estate: Any, subscription: str) -> tuple[str, str]:
    """Two covered Ubuntu VMs Defender for Endpoint does not vouch for: one whose sensor
    never reports (as with another tenant's onboarding package), one gone Inactive."""
    names = []
    for name, device in (("sensor-never", "never"), ("sensor-inactive", "inactive")):
        vm = UBUNTU_2204.vm(subscription, "rg-app", name, mde_device=device)
        vm.extensions["mde.linux"] = Extension("MDE.Linux", MDE_PUBLISHER, "MDE.Linux")
        estate.add_vm(vm)
        names.append(vm.id)
    return names[0], names[1]


def _seed_history(running: Any, estate: Any) -> int:
    """What the app's earlier sweeps would have stored: each VM with MDE Succeeded was
    first seen so two days ago."""
    from remediation.defender import State  # noqa: PLC0415
    from remediation.model import Verification, Verified  # noqa: PLC0415

    since = datetime.now(UTC) - timedelta(days=2)
    earlier = Verified(Verification.PENDING, "seen Succeeded by an earlier sweep")
    by_subscription: dict[str, dict[str, Any]] = {}
    for vm in estate.vms.values():
        if any(
            e.publisher == MDE_PUBLISHER and e.state == "Succeeded" for e in vm.extensions.values()
        ):
            by_subscription.setdefault(vm.subscription, {})[vm.id] = State(since, earlier)
    for subscription, states in by_subscription.items():
        running.states.write(subscription, states)
    return sum(len(states) for states in by_subscription.values())


def _verification(function_app: Any, after: dict[str, Any], never: str, inactive: str) -> None:
    """Step 3: what Defender for Endpoint says of the covered VMs, and a test alert."""
    from remediation.bootstrap import services  # noqa: PLC0415

    running = services()
    counts = after.get("verification", {})
    console.print(
        "\n[bold]3. Verification[/]: each sweep reads Defender for Endpoint's device list once "
        "(GET /api/machines) and checks every VM whose MDE extension is Succeeded:"
    )
    console.print(f"   {_counted(Counter(counts))}")
    records = {
        r.vm.lower(): r
        for r in running.audit.since(datetime.now(UTC) - timedelta(hours=1))
        if r.run_id == after["run_id"]
    }
    for vm in (never, inactive):
        record = records[vm.lower()]
        console.print(
            f"   {vm.rsplit('/', 1)[-1]}: [bold]{record.verification}[/]: "
            f"{record.verification_reason} Hint: {record.verification_hint}"
        )
    findings = after.get("findings", {}).get("no-monitoring-agent", 0)
    console.print(
        f"   {findings} running VMs have no monitoring agent (finding no-monitoring-agent): "
        "Defender for Cloud's antimalware alerts need one; the app only reports it"
    )
    target = next(
        r.vm
        for r in sorted(records.values(), key=lambda r: r.vm)
        if r.verification == "verified" and r.platform.startswith("ubuntu") and r.kind == "vm"
    )  # an Azure VM: the test runs through VM Run Command
    body = json.dumps({"vm": target}).encode()
    response = function_app.test_alert(http_request("POST", "test-alert", body))
    started = json.loads(response.get_body())
    console.print(
        f"\n[bold]4. Test alert[/] (REMEDIATION_ALLOW_TEST_ALERT=true): POST /api/test-alert on "
        f"{target.rsplit('/', 1)[-1]} answered {response.status_code}; the test-alert queue runs "
        "Microsoft's detection test through Run Command, then watches Defender for Cloud's alerts"
    )
    run_queue(running.tests, function_app.test_alert_step, function_app.test_alert_poison)
    test_id = started["test_id"]
    status = json.loads(
        function_app.test_alert_status(
            http_request("GET", f"test-alert/{test_id}", route={"testId": test_id})
        ).get_body()
    )
    result = status["result"] or {}
    console.print(
        f"   GET /api/test-alert/{test_id}: [bold]{status['status']}[/]: {result.get('reason', '')}"
    )


def _plan(subscription: Any) -> str:
    if subscription.pricing_tier == "Standard":
        plan = f"Defender for Servers {subscription.sub_plan or 'on'}"
    else:
        plan = "Defender for Servers off (Free)"
    integration = "on" if subscription.settings.get("WDATP") else "off"
    return f"{plan}, MDE integration {integration}"


def _coverage_sweep(function_app: Any) -> dict[str, Any]:
    """A report-mode sweep through the HTTP API: what coverage is, changing nothing.
    Its summary, with its run id."""
    from remediation.bootstrap import services  # noqa: PLC0415

    response = function_app.forced_sweep(http_request("POST", "sweep", b'{"mode": "report"}'))
    run = json.loads(response.get_body())
    _drain(function_app, services(), "sweep")
    status = function_app.sweep_status(
        http_request("GET", f"sweep/{run['run_id']}", route={"runId": run["run_id"]})
    )
    return dict(json.loads(status.get_body())["summary"]) | {"run_id": run["run_id"]}


def _burst(azure: LocalAzure, subscriptions: list[str], seed: int) -> Burst:
    """New VMs (each deployment raises two writes), starts of deallocated VMs, and
    Event Grid's at-least-once redeliveries."""
    rng = random.Random(seed)  # noqa: S311 - demo data
    images = [UBUNTU_2204, RHEL_92, WS2022, WIN11_ENT]
    burst = Burst()
    for number in range(12):
        vm = images[number % len(images)].vm(
            subscriptions[number % len(subscriptions)], "rg-new", f"new-{number:02d}"
        )
        writes = azure.create_vm(vm)
        burst.created.append(vm.id)
        burst.creation_events += len(writes)
        burst.events += writes
    for number, image in enumerate(ARC_CATALOGUE[1:3]):  # Windows Server 2022, 2019
        machine = arc_machine(
            image, subscriptions[number % len(subscriptions)], "rg-onprem", f"srv-new-{number:02d}"
        )
        writes = azure.create_machine(machine)
        burst.created.append(machine.id)
        burst.connected += 1
        burst.creation_events += len(writes)
        burst.events += writes
    sleeping = [
        vm for vm in azure.estate.vms.values() if vm.kind == "vm" and vm.power == "deallocated"
    ]
    for vm in rng.sample(sleeping, min(8, len(sleeping))):
        burst.events.append(azure.set_power(vm.id, "running"))
        burst.started.append(vm.id)
        burst.start_events += 1
    again = rng.sample(burst.events, len(burst.events) // 4)  # at-least-once delivery
    burst.redelivered = len(again)
    burst.events += again
    azure.drain_events()
    return burst


def _eligible_running(running: Any, vm_ids: list[str]) -> set[str]:
    """Which of these VMs count as eligible running now, by the app's own reading and
    classification (the sweep's rule: supported OS, not opted out, not managed, running)."""
    from remediation.classify import classify  # noqa: PLC0415
    from remediation.model import VmRef  # noqa: PLC0415

    tag = running.settings.exclude_tag
    return {
        vm_id.lower()
        for vm_id in vm_ids
        if classify(running.arm.vm_facts(VmRef.parse(vm_id)), tag).eligible_running
    }


def _drain(function_app: Any, running: Any, which: str) -> int:
    if which == "sweep":
        return run_queue(
            running.sweeps, function_app.sweep_batch, function_app.sweep_batch_poison, concurrency=2
        )
    return run_queue(running.queue, function_app.install_extension, function_app.install_poison)


def _counted(counts: Counter[str], words: dict[str, str] | None = None) -> str:
    """'83 blocked, 25 unsupported': largest first."""
    words = words or {}
    return ", ".join(f"{n} {words.get(k, k)}" for k, n in counts.most_common())


def _report(
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    burst: Burst,
    newly_eligible: set[str],
    changes: list[str],
    records: list[Any],
    out: Path,
) -> None:
    table = Table(title="coverage of eligible running VMs")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("coverage", f"{before['coverage_percent']}%", f"{after['coverage_percent']}%")
    table.add_row("covered VMs", str(before["covered"]), str(after["covered"]))
    table.add_row(
        "eligible running VMs", str(before["eligible_running"]), str(after["eligible_running"])
    )
    console.print(table)
    console.print(_eligible_change(before, after, burst, newly_eligible, records))
    console.print()

    table = Table(title="every VM by the app's decision (its remediation log's words)")
    table.add_column("decision")
    table.add_column("what it means")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    decisions = sorted(
        set(before["decisions"]) | set(after["decisions"]),
        key=lambda d: (list(DECISIONS).index(d) if d in DECISIONS else len(DECISIONS), d),
    )
    for decision in decisions:
        table.add_row(
            decision,
            DECISIONS.get(decision, ""),
            str(before["decisions"].get(decision, 0)),
            str(after["decisions"].get(decision, 0)),
        )
    table.add_row(
        "all VMs",
        "",
        str(sum(before["decisions"].values())),
        str(sum(after["decisions"].values())),
    )
    console.print(table)

    measurements = {before["run_id"], after["run_id"]}
    steps: dict[tuple[int, str, str], Counter[str]] = {}
    for record in records:
        if record.run_id in measurements:
            continue
        if record.trigger == "event":
            step = (1, "Event Grid (step 1)", "deliveries")
        elif record.trigger == "queue":
            step = (3, "install queue (steps 1 and 2)", "install requests")
        elif record.run_id:
            step = (2, f"forced sweep (step 2, run {record.run_id})", "VMs")
        else:
            step = (4, f"trigger {record.trigger}", "records")
        what = OUTCOMES.get(record.outcome) or COUNTED.get(record.decision, record.decision)
        steps.setdefault(step, Counter())[what] += 1
    console.print(
        "\n[bold]what the app did[/] (its remediation log, one record per decision; "
        "the demo's two measurement sweeps left out):"
    )
    for (_, step, unit), outcomes in sorted(steps.items()):
        console.print(f"  {step}, {sum(outcomes.values())} {unit}: {_counted(outcomes)}")
    for change in changes:
        console.print(f"  the app changed {change}")

    _needs_a_human(records, out)
    path = out / "remediation-log.jsonl"
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    console.print(
        f"\nremediation log of this run, measurement sweeps included (one JSON object a "
        f"record): {path}\noperator log lines (as Application Insights gets them): "
        f"{out / 'app.log'}"
    )


def _eligible_change(
    before: dict[str, Any],
    after: dict[str, Any],
    burst: Burst,
    newly_eligible: set[str],
    records: list[Any],
) -> str:
    """One line: why the number of eligible running VMs moved between the measurements."""
    change = after["eligible_running"] - before["eligible_running"]
    if change == 0 and not newly_eligible:
        return "The number of eligible running VMs did not change."
    touched = len(burst.created) + len(burst.started)
    latest = {r.vm.lower(): r.decision for r in sorted(records, key=lambda r: r.time) if r.vm}
    left_out = Counter(
        latest.get(vm.lower(), "unknown")
        for vm in burst.created + burst.started
        if vm.lower() not in newly_eligible
    )
    line = (
        f"Eligible running VMs went from {before['eligible_running']} to "
        f"{after['eligible_running']} ({change:+d}): in step 1 the demo created "
        f"{len(burst.created)} machines ({burst.vms} VMs, {burst.connected} Arc machines) and "
        f"started {len(burst.started)} deallocated ones; "
        f"{len(newly_eligible)} of those {touched} are eligible"
    )
    if left_out:
        line += f" (the other {sum(left_out.values())}: {_counted(left_out, COUNTED)})"
    other = change - len(newly_eligible)
    if other:
        line += f"; {other:+d} from other VMs whose state changed"
    return line + "."


def _needs_a_human(records: list[Any], out: Path) -> None:
    """Each VM's latest decision, where it is one the app cannot resolve alone."""
    latest = {}
    for record in sorted(records, key=lambda r: r.time):
        if record.vm:
            latest[record.vm.lower()] = record
    human = sorted(
        (r for r in latest.values() if r.decision in NEEDS_A_HUMAN),
        key=lambda r: (NEEDS_A_HUMAN.index(r.decision), r.vm.rsplit("/", 1)[-1]),
    )
    kinds = Counter(r.decision for r in human)
    console.print()
    if not human:
        console.print("no VM needs a human")
        return
    table = Table(title=f"{len(human)} VMs need a human: {_counted(kinds)}")
    for column in ("machine", "decision", "platform", "what to do"):
        table.add_column(column, overflow="fold")
    shown: Counter[str] = Counter()
    for record in human:
        if shown[record.decision] < SHOWN_PER_KIND:
            shown[record.decision] += 1
            table.add_row(
                record.vm.rsplit("/", 1)[-1],
                record.decision,
                record.platform,
                record.hint or record.reason,
            )
    console.print(table)
    path = out / "needs-a-human.jsonl"
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in human))
    count = sum(shown.values())
    console.print(
        f"{count} of {len(human)} shown (up to {SHOWN_PER_KIND} of each decision)"
        if count < len(human)
        else f"all {len(human)} shown",
        end="",
    )
    console.print(f"; all of them, one JSON record a VM: {path}")
    first, *more = (d for d in NEEDS_A_HUMAN if d in kinds)
    also = "".join(f", then --decision {d}" for d in more)
    console.print(f"in a deployment: python -m remediation log --decision {first}{also}")


if __name__ == "__main__":
    raise SystemExit(main())
