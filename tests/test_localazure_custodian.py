"""The plane serves Cloud Custodian (`make bench`, bench/custodian.py) with the same
handlers as the app: c7n-azure 0.7.52 pins azure-mgmt-compute 34.1.0, which sends Compute
api-version 2024-11-01 (docs/fidelity.md). On the wire, as test_localazure.py looks."""

from __future__ import annotations

import pytest
import requests

from localazure import Extension, LocalAzure
from localazure.compute import COMPUTE_API
from localazure.estate import mde_extension
from tests.conftest import SUB, small_estate
from tests.test_localazure import token

CUSTODIAN_API = "2024-11-01"  # azure-mgmt-compute 34.1.0's virtual_machines and extensions
VMS = f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines"
GROUP_VMS = (
    f"/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines"
)


def estate():
    """The small estate (ubuntu-1, win-1, flatcar-1 running; stopped-1 deallocated) with
    MDE Succeeded on win-1, MDE Failed (code 10) and a monitor agent on flatcar-1."""
    small = small_estate()
    win = small.vm(f"{GROUP_VMS}/win-1")
    flatcar = small.vm(f"{GROUP_VMS}/flatcar-1")
    win.extensions["mde.windows"] = mde_extension(win)
    flatcar.extensions["mde.linux"] = mde_extension(flatcar, "Failed", 10)
    flatcar.extensions["azuremonitorlinuxagent"] = Extension(
        "AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor", "AzureMonitorLinuxAgent"
    )
    return small


@pytest.fixture
def custodian_plane(use_identity):
    with LocalAzure(estate(), list_page_size=3) as running:
        use_identity(running)
        yield running


def session(plane: LocalAzure) -> requests.Session:
    raw = requests.Session()
    raw.verify = plane.ca_path
    raw.headers["Authorization"] = f"Bearer {token(plane)}"
    return raw


def read(raw: requests.Session, plane: LocalAzure, path: str, version: str, **params: str):
    response = raw.get(plane.url + path, params={"api-version": version} | params)
    assert response.status_code == 200, response.text
    return response.json()


def everything(raw: requests.Session, plane: LocalAzure, path: str, version: str) -> list:
    """A list followed through its nextLinks as given."""
    page = read(raw, plane, path, version)
    items = list(page["value"])
    while page.get("nextLink"):
        response = raw.get(page["nextLink"])
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["value"]
    return items


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (f"{GROUP_VMS}/win-1", {"$expand": "instanceview"}),  # what c7n's instance-view sends
        (f"{GROUP_VMS}/flatcar-1", {"$expand": "instanceView"}),
        (f"{GROUP_VMS}/stopped-1", {}),
        (f"{GROUP_VMS}/flatcar-1/instanceView", {}),
        (f"{GROUP_VMS}/win-1/extensions", {}),  # what c7n's vm-extensions sends
        (f"{GROUP_VMS}/flatcar-1/extensions", {}),
        (f"{GROUP_VMS}/win-1/extensions/MDE.Windows", {}),
    ],
)
def test_the_older_version_answers_as_the_current_one(custodian_plane, path, params):
    raw = session(custodian_plane)
    older = read(raw, custodian_plane, path, CUSTODIAN_API, **params)
    assert older == read(raw, custodian_plane, path, COMPUTE_API, **params)


def test_what_custodians_policy_reads_at_the_older_version(custodian_plane):
    raw = session(custodian_plane)
    win = read(
        raw, custodian_plane, f"{GROUP_VMS}/win-1", CUSTODIAN_API, **{"$expand": "instanceview"}
    )
    codes = [status["code"] for status in win["properties"]["instanceView"]["statuses"]]
    assert codes == ["ProvisioningState/succeeded", "PowerState/running"]
    stopped = read(raw, custodian_plane, f"{GROUP_VMS}/stopped-1/instanceView", CUSTODIAN_API)
    assert "PowerState/deallocated" in [status["code"] for status in stopped["statuses"]]
    extensions = read(raw, custodian_plane, f"{GROUP_VMS}/flatcar-1/extensions", CUSTODIAN_API)
    assert sorted(
        (
            e["properties"]["publisher"],
            e["properties"]["type"],
            e["properties"]["provisioningState"],
        )
        for e in extensions["value"]
    ) == [
        ("Microsoft.Azure.AzureDefenderForServers", "MDE.Linux", "Failed"),
        ("Microsoft.Azure.Monitor", "AzureMonitorLinuxAgent", "Succeeded"),
    ]
    mde = read(raw, custodian_plane, f"{GROUP_VMS}/win-1/extensions", CUSTODIAN_API)["value"]
    assert [(e["name"], e["properties"]["provisioningState"]) for e in mde] == [
        ("MDE.Windows", "Succeeded")
    ]


@pytest.mark.parametrize("path", [VMS, GROUP_VMS])
def test_a_next_link_keeps_the_version_asked_for(custodian_plane, path):
    raw = session(custodian_plane)
    first = read(raw, custodian_plane, path, CUSTODIAN_API)
    assert "api-version=2024-11-01" in first["nextLink"]
    assert first["nextLink"].startswith(custodian_plane.url + "/subscriptions/")
    older = everything(raw, custodian_plane, path, CUSTODIAN_API)
    assert sorted(vm["name"] for vm in older) == ["flatcar-1", "stopped-1", "ubuntu-1", "win-1"]
    assert older == everything(raw, custodian_plane, path, COMPUTE_API)
    assert "api-version=2026-04-01" in read(raw, custodian_plane, path, COMPUTE_API)["nextLink"]


def test_a_version_between_them_is_still_refused(custodian_plane):
    response = session(custodian_plane).get(
        custodian_plane.url + VMS, params={"api-version": "2024-07-01"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "NoRegisteredProviderFound"
