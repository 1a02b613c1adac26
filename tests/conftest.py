"""Shared fixtures: a local Azure control plane on loopback and settings that point at it."""

import pytest

from localazure import Estate, LocalAzure, Principal, Subscription, Vm, generate
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
)
SUB = "11111111-1111-4111-8111-111111111111"


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
