"""Shared fixtures: a local Azure control plane on loopback and settings that point at it."""

import functools

import pytest

from localazure import Estate, LocalAzure, Principal, Subscription, Vm, generate
from localazure.estate import REMEDIATOR_ROLE
from remediation.config import Settings, load

APP = Principal(
    client_id="a0000000-0000-4000-8000-000000000001",
    secret="app-secret-not-a-real-one",
    object_id="0b1e5c7e-0000-4000-8000-00000000a11f",
    name="remediator",
)
READER = Principal(
    client_id="a0000000-0000-4000-8000-000000000002",
    secret="reader-secret",
    object_id="0b1e5c7e-0000-4000-8000-0000000000b2",
    name="no-security-admin",
    security_admin=False,
    # The custom role without its Microsoft.Security writes: a deployment without them.
    actions=[
        action
        for action in REMEDIATOR_ROLE
        if not (action.startswith("Microsoft.Security/") and action.endswith("/write"))
    ],
)
SUB = "11111111-1111-4111-8111-111111111111"


# The integration tier: what starts Azurite or the local Azure, or runs a tool or a
# browser. `make unit` runs the rest, in random order; `make test` runs both.
INTEGRATION_FIXTURES = frozenset({"azurite", "plane", "use_identity", "world_factory"})
INTEGRATION_MODULES = frozenset({"test_infra.py", "test_demo.py", "test_reliability.py"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            item.path.name in INTEGRATION_MODULES
        ):
            item.add_marker(pytest.mark.integration)


@functools.cache
def function_bindings() -> dict:
    """Each function's bindings as the host indexes them. Cached: azure-functions lets
    an app object list its functions once."""
    import function_app

    return {
        f.get_function_name(): f.get_bindings_dict()["bindings"]
        for f in function_app.app.get_functions()
    }


def small_estate() -> Estate:
    estate = Estate()
    estate.add_principal(Principal(**vars(APP)))
    estate.add_principal(Principal(**vars(READER)))
    estate.add_subscription(Subscription(SUB))
    estate.add_vm(
        Vm(
            SUB,
            "rg-web",
            "ubuntu-1",
            image={
                "publisher": "Canonical",
                "offer": "0001-com-ubuntu-server-jammy",
                "sku": "22_04-lts-gen2",
                "version": "latest",
            },
            os_name="ubuntu",
            os_version="22.04",
        )
    )
    estate.add_vm(
        Vm(
            SUB,
            "rg-web",
            "win-1",
            os_type="Windows",
            image={
                "publisher": "MicrosoftWindowsServer",
                "offer": "WindowsServer",
                "sku": "2022-datacenter-azure-edition",
                "version": "latest",
            },
            os_name="Windows Server 2022 Datacenter",
            os_version="10.0.20348.1",
        )
    )
    estate.add_vm(
        Vm(
            SUB,
            "rg-web",
            "flatcar-1",
            image={
                "publisher": "kinvolk",
                "offer": "flatcar-container-linux-free",
                "sku": "stable-gen2",
                "version": "latest",
            },
            os_name="flatcar",
            os_version="3815.2.0",
            mde_failure=10,
        )
    )
    estate.add_vm(
        Vm(
            SUB,
            "rg-web",
            "stopped-1",
            image={
                "publisher": "Canonical",
                "offer": "ubuntu-24_04-lts",
                "sku": "server",
                "version": "latest",
            },
            os_name="ubuntu",
            os_version="24.04",
            power="deallocated",
        )
    )
    return estate


def generated_estate(vms: int, subscriptions: int, seed: int = 7) -> Estate:
    estate = generate(vms, subscriptions, seed)
    estate.add_principal(Principal(**vars(APP)))
    estate.add_principal(Principal(**vars(READER)))
    return estate


def settings_for(plane: LocalAzure, subscriptions=None, **overrides: str) -> Settings:
    values = {
        "REMEDIATION_SUBSCRIPTIONS": ",".join(subscriptions or plane.estate.subscriptions),
        "REMEDIATION_ARM_ENDPOINT": plane.url,
        "AZURE_AUTHORITY_HOST": plane.url,
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "REMEDIATION_LRO_POLL_SECONDS": "0.02",
        "REMEDIATION_RETRY_BUDGET_SECONDS": "10",
    }
    return load(values | overrides)


@pytest.fixture
def use_identity(monkeypatch):
    """Point azure-identity and requests at a plane, as a deployment's settings would."""

    def use(plane: LocalAzure, principal: Principal = APP) -> None:
        for name, value in plane.environment(principal).items():
            monkeypatch.setenv(name, value)

    return use


@pytest.fixture
def plane(use_identity):
    with LocalAzure(small_estate()) as running:
        use_identity(running)
        yield running


# --- Azurite: real Azure Storage on loopback ------------------------------------------
@pytest.fixture(scope="session")
def azurite():
    """Azurite's queue and table services, from node_modules (make test installs it)."""
    from localazure.azurite import Azurite

    try:
        emulator = Azurite().start()
    except (FileNotFoundError, RuntimeError) as error:
        pytest.fail(str(error))
    yield emulator.connection_string
    emulator.stop()


class World:
    """The app wired as in production, against the local plane and Azurite: the
    environment the Functions host would give it, and the real function objects."""

    def __init__(self, plane: LocalAzure, environment: dict[str, str]) -> None:
        self.plane = plane
        self.environment = environment

    @property
    def services(self):
        from remediation import bootstrap

        return bootstrap.services()

    def worker(self):
        """A second, independent worker: its own clients, caches and token."""
        from remediation import bootstrap

        return bootstrap.build(self.environment)

    def deliver(self, *events) -> list:
        """Event Grid deliveries through the real on_vm_event function."""
        import function_app
        from localazure.host import event_message

        records = []
        for event in events:
            before = len(self.audit_records())
            function_app.on_vm_event(event_message(event))
            records += self.audit_records()[: len(self.audit_records()) - before]
        return records

    def run_queue(self, visibility_seconds: int = 1) -> int:
        """Run queued installs through the real queue functions, as the host would."""
        import function_app
        from localazure.host import run_queue

        return run_queue(
            self.services.queue,
            function_app.install_extension,
            function_app.install_poison,
            visibility_seconds=visibility_seconds,
        )

    def run_sweeps(self) -> int:
        """Run queued sweep batches through the real sweep_batch functions."""
        import function_app
        from localazure.host import run_queue

        return run_queue(
            self.services.sweeps,
            function_app.sweep_batch,
            function_app.sweep_batch_poison,
            concurrency=2,
        )

    def post(self, route: str, body: bytes = b""):
        import function_app
        from localazure.host import http_request

        return function_app.forced_sweep(http_request("POST", route, body))

    def get(self, route: str, params=None, headers=None):
        import function_app
        from localazure.host import http_request

        return {
            "remediations": function_app.remediations,
            "report": function_app.coverage_report,
            "status": function_app.coverage_status,
        }[route](http_request("GET", route, params=params, headers=headers))

    def get_status(self, run_id: str):
        import function_app
        from localazure.host import http_request

        return function_app.sweep_status(
            http_request("GET", f"sweep/{run_id}", route={"runId": run_id})
        )

    def audit_records(self):
        from datetime import UTC, datetime, timedelta

        return list(self.services.audit.since(datetime.now(UTC) - timedelta(hours=1)))

    def extension_puts(self) -> int:
        return self.plane.log.count("Microsoft.Compute/virtualMachines/extensions/write")

    def writes(self) -> list:
        return [
            item
            for item in self.plane.log.arm()
            if item.method in {"PUT", "POST", "DELETE", "PATCH"}
            and "ResourceGraph" not in item.operation
        ]


@pytest.fixture
def world_factory(azurite, monkeypatch):
    """Build a World over an estate, with settings as app settings (env) as the host does."""
    import uuid

    from remediation import bootstrap

    planes = []

    def make(
        estate: Estate, principal: Principal = APP, plane_options=None, **settings: str
    ) -> World:
        plane = LocalAzure(estate, **(plane_options or {})).start()
        planes.append(plane)
        suffix = uuid.uuid4().hex[:10]
        environment = (
            plane.environment(principal)
            | {
                "AzureWebJobsStorage": azurite,
                "REMEDIATION_SUBSCRIPTIONS": ",".join(estate.subscriptions),
                "REMEDIATION_INSTALL_QUEUE": f"installs-{suffix}",
                "REMEDIATION_EVENT_QUEUE": f"events-{suffix}",
                "REMEDIATION_SWEEP_QUEUE": f"sweeps-{suffix}",
                "REMEDIATION_TEST_ALERT_QUEUE": f"tests-{suffix}",
                "REMEDIATION_AUDIT_TABLE": f"audit{suffix}",
                "REMEDIATION_LRO_POLL_SECONDS": "0.02",
                "REMEDIATION_RETRY_BUDGET_SECONDS": "3",
                "REMEDIATION_RECHECK_SECONDS": "1",
            }
            | settings
        )
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        bootstrap.services.cache_clear()
        bootstrap.page_gate.cache_clear()
        return World(plane, environment)

    yield make
    bootstrap.services.cache_clear()
    bootstrap.page_gate.cache_clear()
    for plane in planes:
        plane.stop()
