"""Defender for Endpoint's device inventory: ``GET /api/machines`` on the plane's host, as
the WindowsDefenderATP API answers it (its own audience and application roles, its own
rate limits, ``$top``/``$skip`` paging, 404 on an empty inventory).

Sources: learn.microsoft.com/defender-endpoint/api/get-machines (paging, limits, 404),
…/api/machine (the machine entity), …/api/common-errors (error bodies, 429 with
Retry-After), …/api/exposed-apis-create-app-webapp (the audience and Machine.Read.All).
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jwt

from localazure.estate import MDE_PUBLISHER, Principal, Vm
from localazure.machinery import ArmError, Params, Query, Response, json_response, route

if TYPE_CHECKING:
    from localazure.server import LocalAzure

# The WindowsDefenderATP application's resource: tokens are asked for
# "https://api.securitycenter.microsoft.com/.default" whatever the regional API host
# (exposed-apis-create-app-webapp; MicrosoftDocs/microsoft-365-docs#9246).
MDE_AUDIENCE = "https://api.securitycenter.microsoft.com"
READ_ROLES = ("Machine.Read.All", "Machine.ReadWrite.All")
# "Rate limitations for this API are 100 calls per minute and 1,500 calls per hour."
MDE_LIMITS: tuple[tuple[int, float], ...] = ((100, 60.0), (1500, 3600.0))
MAX_TOP = 10_000  # "$top with max value of 10,000"; "Maximum page size is 10,000."
MDE_TYPES = ("MDE.Windows", "MDE.Linux")
_BASE = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)  # when the estate's devices were first seen


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ArmError:
    """Defender for Endpoint's error body: code, message and a correlation ``target``."""
    return ArmError(status, code, message, headers, target=str(uuid.uuid4()))


# --- Authentication, application roles, rate limits ------------------------------------
def authenticate(plane: LocalAzure, headers: Any) -> tuple[Principal, list[str]]:
    """The caller and the application roles of its token. Only tokens for the
    WindowsDefenderATP audience are accepted: an ARM token is 401 here."""
    auth = headers.get("Authorization", "")
    unauthorized = "Unauthorized (invalid or expired authorization header)."
    if not auth.startswith("Bearer "):
        raise _error(401, "Unauthorized", unauthorized)
    try:
        claims = plane.read_token(auth[7:], [MDE_AUDIENCE])
    except jwt.PyJWTError:
        raise _error(401, "Unauthorized", unauthorized) from None
    principal = plane._principal_by_oid(str(claims.get("oid", "")))
    if principal is None:
        raise _error(401, "Unauthorized", unauthorized)
    roles = claims.get("roles") or []
    return principal, [str(role) for role in roles]


def authorize(roles: list[str]) -> None:
    """403 unless the token has Machine.Read.All or Machine.ReadWrite.All, worded as the
    API words it (Azure/Azure-Sentinel#7924; Azure/Azure-Sentinel#14672)."""
    if any(role in READ_ROLES for role in roles):
        return
    raise _error(
        403,
        "Forbidden",
        f"Missing application roles. API required roles: {','.join(READ_ROLES)}, "
        f"application roles: {','.join(roles)}.",
    )


def limit(plane: LocalAzure, principal: str) -> dict[str, str]:
    """The API's call limits per caller (``plane.mde_limits``: calls per window seconds,
    sliding windows): past one, 429 TooManyRequests with Retry-After in seconds
    (common-errors, "Throttling")."""
    now = time.monotonic()
    with plane.lock:
        calls = plane._mde_calls.setdefault(principal, deque())
        longest = max((window for _, window in plane.mde_limits), default=0.0)
        while calls and now - calls[0] >= longest:
            calls.popleft()
        for allowed, window in plane.mde_limits:
            recent = [stamp for stamp in calls if now - stamp < window]
            if len(recent) >= allowed:
                wait = recent[-allowed] + window - now
                raise _error(
                    429,
                    "TooManyRequests",
                    "Response represents reaching quota limit either by number of requests "
                    f"or by CPU: {allowed} calls per {window:g} seconds.",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        calls.append(now)
    return {}


# --- The inventory -------------------------------------------------------------------
def device_id(seed: str) -> str:
    """A machine id: 40 hex characters, as the machine entity's examples show."""
    return hashlib.sha1(seed.lower().encode()).hexdigest()  # an identifier, not security


def onboarded_extension(vm: Vm) -> bool:
    return any(
        ext.publisher == MDE_PUBLISHER and ext.type in MDE_TYPES and ext.state == "Succeeded"
        for ext in vm.extensions.values()
    )


def listed(vm: Vm) -> bool:
    """Whether Defender for Endpoint lists the VM: its MDE extension Succeeded and the
    sensor reports to this tenant."""
    return onboarded_extension(vm) and vm.mde_device != "never"


def healthy(vm: Vm) -> bool:
    """Onboarded, listed and reporting: what a detection test needs to raise an alert."""
    return onboarded_extension(vm) and vm.mde_device in {"active", "vmid-only"}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


def _os_platform(vm: Vm) -> str:
    """osPlatform as the machine entity spells it: WindowsServer2022, Windows11, Linux."""
    if vm.os_type != "Windows":
        return "Linux"
    # An Arc machine's os_name is "windows"; its OS's own name is the osSku.
    name = (vm.os_sku if vm.kind == "arc" else vm.os_name).replace("Microsoft ", "")
    for client in ("Windows 11", "Windows 10"):
        if name.startswith(client):
            return client.replace(" ", "")
    if name.startswith("Windows Server"):
        words = name.split()
        year = words[2] if len(words) > 2 else ""
        release = "R2" if len(words) > 3 and words[3] == "R2" else ""
        return f"WindowsServer{year}{release}"
    return "Windows"


def _arc_provider(vm: Vm) -> str | None:
    return None if vm.cloud_provider in {"", "N/A"} else vm.cloud_provider


def vm_device(vm: Vm, now: datetime) -> dict[str, Any]:
    inactive = vm.mde_device == "inactive"
    # Inactive: no signal for more than 7 days (learn.microsoft.com/defender-endpoint/
    # fix-unhealthy-sensors); an active device reported within the last day.
    last_seen = now - (timedelta(days=9) if inactive else timedelta(hours=1))
    return {
        "id": device_id(vm.id),
        "computerDnsName": vm.name.lower(),
        "firstSeen": _iso(_BASE),
        "lastSeen": _iso(last_seen),
        "osPlatform": _os_platform(vm),
        "version": vm.os_version,
        "osArchitecture": "64-bit",
        "healthStatus": "Inactive" if inactive else "Active",
        "onboardingStatus": "Onboarded",
        "riskScore": "None",
        "exposureLevel": "Low",
        "aadDeviceId": None,
        "machineTags": [],
        # The shape of Graph's security vmMetadata type; whether /api/machines carries it
        # is unconfirmed by the machine entity's documentation (docs/fidelity.md).
        "vmMetadata": {
            "vmId": vm.vm_id,
            # An Arc machine's: its own cloudMetadata.provider, none on premises
            # (unconfirmed, docs/fidelity.md).
            "cloudProvider": "Azure" if vm.kind != "arc" else _arc_provider(vm),
            "resourceId": None if vm.mde_device == "vmid-only" else vm.id,
            "subscriptionId": vm.subscription,
        },
    }


def other_device(number: int, now: datetime) -> dict[str, Any]:
    """A workstation: onboarded, active, not an Azure VM (no vmMetadata)."""
    name = f"ws-{number:05d}.contoso.local"
    return {
        "id": device_id(f"device:{name}"),
        "computerDnsName": name,
        "firstSeen": _iso(_BASE),
        "lastSeen": _iso(now - timedelta(hours=2)),
        "osPlatform": "Windows11",
        "version": "23H2",
        "osArchitecture": "64-bit",
        "healthStatus": "Active",
        "onboardingStatus": "Onboarded",
        "riskScore": "Low",
        "exposureLevel": "Medium",
        "aadDeviceId": str(uuid.UUID(device_id(name)[:32])),
        "machineTags": [],
        "vmMetadata": None,
    }


def devices(plane: LocalAzure) -> list[dict[str, Any]]:
    """The whole inventory in a stable order (by device id)."""
    plane._advance_all()  # an install that has just finished is onboarded
    now = datetime.now(UTC)
    items = [vm_device(vm, now) for vm in plane.estate.vms.values() if listed(vm)]
    items += [other_device(number, now) for number in range(plane.estate.other_devices)]
    return sorted(items, key=lambda item: str(item["id"]))


def _int(query: Query, name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _error(400, "ODataError", f"Invalid OData URI query: {name}={raw}") from None
    if value < 0:
        raise _error(400, "ODataError", f"Invalid OData URI query: {name}={raw}")
    return value


def _machines(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> Response:
    top = _int(q, "$top", MAX_TOP)
    skip = _int(q, "$skip", 0)
    if top > MAX_TOP:
        # The limit is documented; the exact refusal is unconfirmed (docs/fidelity.md).
        raise _error(400, "BadRequest", f"$top must not exceed {MAX_TOP}; received {top}.")
    inventory = devices(plane)
    if not inventory:
        # "If there are no recent machines, you see 404 Not Found." (get-machines)
        raise _error(404, "NotFound", "No recent machines were found.")
    return json_response(
        200,
        {
            "@odata.context": f"{plane.url}/api/$metadata#Machines",
            # No @odata.nextLink: pages are asked for by $top/$skip; the nextLink the API
            # sometimes sends is unreliable (MicrosoftDocs/microsoft-365-docs#8316, #8489).
            "value": inventory[skip : skip + top],
        },
    )


ROUTES = (
    route("GET", r"/api/machines", _machines, "WindowsDefenderATP/machines/read", "mde"),
)  # fmt: skip
