"""A local Azure control plane on 127.0.0.1 over HTTPS: the token endpoint and the ARM
operations the remediator uses, with ARM's paging, long-running operations, throttling,
errors and Event Grid events. Runs in a thread (tests) or as ``python -m localazure``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import random
import re
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import trustme

from localazure.estate import MDE_PUBLISHER, SECURITY_SETTINGS, Estate, Extension, Principal, Vm

COMPUTE_API = "2026-04-01"
API_VERSIONS = {
    "compute": {COMPUTE_API},
    "pricings": {"2024-01-01"},
    "settings": {"2022-05-01"},
    "mdeOnboardings": {"2021-10-01-preview"},
    "graph": {"2021-03-01", "2022-10-01", "2024-04-01"},
    "topic": {"2018-01-01"},
}
READS = (250, 25.0)  # ARM bucket per subscription and principal: capacity, refill per second
WRITES = (200, 10.0)
GRAPH_QUOTA = (15, 5.0)  # Resource Graph: queries per window, window seconds, per principal
GRAPH_MAX_PAGE = 1000
OBJECT_ID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"

# The Resource Graph query shapes this plane answers, whitespace-normalised. Kept here
# on purpose rather than imported from the app: a changed query must fail loudly (400)
# until someone teaches the plane what the real service would return for it.
SWEEP_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| extend vmKey = tolower(id)
| join kind=leftouter (
    resources
    | where type =~ 'microsoft.compute/virtualmachines/extensions'
    | extend vmKey = tolower(substring(id, 0, indexof(id, '/extensions/')))
    | summarize extensions = make_list(pack('name', name, 'publisher', properties.publisher,
        'type', properties.type, 'provisioningState', properties.provisioningState)) by vmKey
  ) on vmKey
| project id, location, tags,
    imageReference = properties.storageProfile.imageReference,
    osType = tostring(properties.storageProfile.osDisk.osType),
    licenseType = tostring(properties.licenseType),
    instanceView = properties.extended.instanceView,
    extensions
| order by id asc
"""
BASELINE_QUERY = """
resources
| where type =~ 'microsoft.compute/virtualmachines'
| project id
| order by id asc
"""


def normalise_query(query: str) -> str:
    return " ".join(query.split())


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# --- Realism knobs --------------------------------------------------------------------
@dataclass
class FaultRule:
    """Answer ``status`` to requests whose method and path match, ``count`` times;
    status 0 drops the connection unanswered."""

    method: str
    path: str  # a regular expression searched in the path
    status: int
    count: int = 1
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Faults:
    error_rate: float = 0.0  # share of ARM requests answered 500 or 503
    drop_rate: float = 0.0  # share of ARM requests whose connection is closed unanswered
    rules: list[FaultRule] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # fault injection, not crypto
        self._lock = threading.Lock()

    def add(self, method: str, path: str, status: int, count: int = 1, **headers: str) -> None:
        with self._lock:
            self.rules.append(FaultRule(method.upper(), path, status, count, headers))

    def pick(self, method: str, path: str) -> FaultRule | str | None:
        with self._lock:
            for rule in self.rules:
                if rule.count > 0 and rule.method == method and re.search(rule.path, path, re.I):
                    rule.count -= 1
                    return rule
            roll = self._rng.random()
            if roll < self.drop_rate:
                return "drop"
            if roll < self.drop_rate + self.error_rate:
                return FaultRule(method, path, self._rng.choice([500, 503]))
        return None


class TokenBucket:
    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity, self.rate = capacity, rate
        self.tokens, self.stamp = capacity, time.monotonic()

    def take(self) -> tuple[bool, int, float]:
        """(granted, tokens left, seconds until one token is back)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True, int(self.tokens), 0.0
        return False, 0, (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class LoggedRequest:
    time: float
    method: str
    path: str
    operation: str  # an RBAC-style operation name, e.g. Microsoft.Compute/virtualMachines/read
    principal: str  # object id, "" before authentication
    subscription: str
    status: int
    code: str = ""  # the ARM error code of a refusal, "InjectedFault" for injected ones


class RequestLog:
    def __init__(self) -> None:
        self._items: list[LoggedRequest] = []
        self._lock = threading.Lock()

    def add(self, item: LoggedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def count(
        self,
        operation: str | None = None,
        *,
        principal: str | None = None,
        status: int | None = None,
        method: str | None = None,
    ) -> int:
        return sum(
            1
            for item in self.items()
            if (operation is None or item.operation == operation)
            and (principal is None or item.principal == principal)
            and (status is None or item.status == status)
            and (method is None or item.method == method)
        )

    def arm(self) -> list[LoggedRequest]:
        """ARM and Resource Graph requests: what counts against Azure's limits."""
        return [item for item in self.items() if item.operation.startswith("Microsoft.")]

    def by_operation(self) -> Counter[str]:
        return Counter(item.operation for item in self.arm())


@dataclass
class Operation:
    """A long-running operation: done at ``done_at``, then ``finish`` applies it."""

    id: str
    vm_key: str
    done_at: float
    finish: Callable[[], None]
    error: dict[str, str] | None = None
    started: str = ""
    finished: bool = False


# --- The plane ------------------------------------------------------------------------
class LocalAzure:
    """Start with ``with LocalAzure(estate) as azure:``; point the app at ``azure.url``,
    ``azure.authority`` and ``azure.ca_path``."""

    def __init__(
        self,
        estate: Estate,
        *,
        latency: float = 0.0,
        throttle: bool = True,
        lro_seconds: float = 0.05,
        list_page_size: int = 50,
        reads: tuple[int, float] = READS,
        writes: tuple[int, float] = WRITES,
        faults: Faults | None = None,
        port: int = 0,
        state_dir: Path | None = None,
    ) -> None:
        self.estate = estate
        self.latency = latency
        self.throttle = throttle
        self.lro_seconds = lro_seconds
        self.list_page_size = list_page_size
        self.reads, self.writes = reads, writes
        self.faults = faults or Faults()
        self.log = RequestLog()
        self.lock = threading.RLock()
        self.operations: dict[str, Operation] = {}
        self.events: list[dict[str, Any]] = []
        # Whole PUT bodies as received, protected settings included, for contract tests.
        self.extension_puts: list[tuple[str, dict[str, Any]]] = []
        # An Event Grid custom topic at {url}/api/events, for the app's notifications.
        self.topic_key = base64.b64encode(uuid.uuid4().bytes).decode()
        self.published: list[dict[str, Any]] = []
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._graph_calls: dict[str, deque[float]] = {}
        self._signing_key = uuid.uuid4().hex
        self._dir = state_dir or Path(tempfile.mkdtemp(prefix="localazure-"))
        self._ca = trustme.CA()
        self.ca_path = str(self._dir / "localazure-ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_path)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._server.plane = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    authority = url  # the token endpoint lives on the same host

    def start(self) -> LocalAzure:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalAzure:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environment(self, principal: Principal) -> dict[str, str]:
        """The variables that point azure-identity and the app at this plane."""
        return {
            "AZURE_AUTHORITY_HOST": self.url,
            "AZURE_TENANT_ID": self.estate.tenant,
            "AZURE_CLIENT_ID": principal.client_id,
            "AZURE_CLIENT_SECRET": principal.secret,
            "REQUESTS_CA_BUNDLE": self.ca_path,
            "REMEDIATION_ARM_ENDPOINT": self.url,
        }

    # --- Changes made from outside ARM's API (portal users, deployments) --------------
    def create_vm(self, vm: Vm, caller: Principal | None = None) -> list[dict[str, Any]]:
        """Add a VM as a deployment would; return the events ARM raises for it."""
        with self.lock:
            self.estate.add_vm(vm)
            # One deployment raises several writes: create, then the OS disk attach.
            first = self._event("Write", "Microsoft.Compute/virtualMachines/write", vm.id, caller)
            second = self._event("Write", "Microsoft.Compute/virtualMachines/write", vm.id, caller)
            return [first, second]

    def set_power(self, vm_id: str, power: str, caller: Principal | None = None) -> dict[str, Any]:
        with self.lock:
            vm = self._vm(vm_id)
            vm.power = power
            action = "start" if power == "running" else "deallocate"
            return self._event(
                "Action", f"Microsoft.Compute/virtualMachines/{action}/action", vm.id, caller
            )

    def drain_events(self) -> list[dict[str, Any]]:
        with self.lock:
            events, self.events = self.events, []
            return events

    def settle(self) -> None:
        """Finish every long-running operation that is due."""
        with self.lock:
            for operation in list(self.operations.values()):
                self._advance(operation)

    # --- Request handling ---------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Any, body: bytes) -> _Response:
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}
        for route in ROUTES:
            if route.method != method:
                continue
            match = route.pattern.match(path)
            if match is None:
                continue
            return self._dispatch(route, match.groupdict(), method, path, query, headers, body)
        return _json(404, _error("NotFound", f"no route for {method} {path}"))

    def _dispatch(
        self,
        route: Route,
        params: dict[str, str],
        method: str,
        path: str,
        query: dict[str, str],
        headers: Any,
        body: bytes,
    ) -> _Response:
        subscription = params.get("sub", "").lower()
        principal = ""
        status = 500
        code = ""
        try:
            if route.api == "topic":
                if headers.get("aeg-sas-key") != self.topic_key:
                    raise ArmError(
                        401, "Unauthorized", "the aeg-sas-key header is missing or wrong"
                    )
                self._check_api_version(route.api, query)
            elif route.api:
                principal = self._authenticate(headers).object_id
                self._check_api_version(route.api, query)
                if self.latency:
                    time.sleep(self.latency)
                fault = self.faults.pick(method, path)
                if fault == "drop" or (isinstance(fault, FaultRule) and fault.status == 0):
                    status = 0
                    return _Response(0, b"", {})
                if isinstance(fault, FaultRule):
                    raise ArmError(fault.status, "InjectedFault", "injected fault", fault.headers)
                limits = self._limit(route, subscription, principal)
            else:
                limits = {}
            payload = json.loads(body) if body else None
            with self.lock:
                response = route.handler(self, params, query, payload, principal)
            response.headers.update(limits)
            status = response.status
            return response
        except ArmError as error:
            status, code = error.status, error.code
            return _json(error.status, _error(error.code, error.message), error.headers)
        except json.JSONDecodeError:
            status = 400
            return _json(400, _error("InvalidRequestContent", "the body is not JSON"))
        finally:
            self.log.add(
                LoggedRequest(
                    time.time(),
                    method,
                    path,
                    route.operation,
                    principal,
                    subscription,
                    status,
                    code,
                )
            )

    def _authenticate(self, headers: Any) -> Principal:
        auth = headers.get("Authorization", "")
        challenge = {"WWW-Authenticate": f'Bearer authorization_uri="{self.url}"'}
        if not auth.startswith("Bearer "):
            raise ArmError(401, "AuthenticationFailed", "no bearer token", challenge)
        try:
            claims = jwt.decode(
                auth[7:], self._signing_key, algorithms=["HS256"], audience=self._audiences()
            )
        except jwt.PyJWTError as error:
            raise ArmError(401, "InvalidAuthenticationToken", str(error), challenge) from None
        for principal in self.estate.principals.values():
            if principal.object_id == claims.get("oid"):
                return principal
        raise ArmError(401, "InvalidAuthenticationToken", "unknown principal", challenge)

    def _audiences(self) -> list[str]:
        return [
            self.url,
            self.url + "/",
            "https://management.azure.com",
            "https://management.azure.com/",
        ]

    @staticmethod
    def _check_api_version(api: str, query: dict[str, str]) -> None:
        version = query.get("api-version", "")
        if version not in API_VERSIONS[api]:
            supported = ", ".join(sorted(API_VERSIONS[api]))
            raise ArmError(
                400,
                "NoRegisteredProviderFound" if version else "MissingApiVersionParameter",
                f"api-version '{version}' is not supported; the supported versions are "
                f"'{supported}'.",
            )

    def _limit(self, route: Route, subscription: str, principal: str) -> dict[str, str]:
        if route.api == "graph":
            return self._graph_quota(principal)
        if not self.throttle or not subscription:
            return {}
        kind = "reads" if route.method == "GET" else "writes"
        capacity, rate = self.reads if kind == "reads" else self.writes
        with self.lock:
            bucket = self._buckets.setdefault(
                (subscription, principal, kind), TokenBucket(capacity, rate)
            )
            granted, left, wait = bucket.take()
        header = f"x-ms-ratelimit-remaining-subscription-{kind}"
        if not granted:
            raise ArmError(
                429,
                "TooManyRequests",
                f"The request is throttled: the subscription's {kind} bucket is empty.",
                {"Retry-After": str(max(1, math.ceil(wait))), header: "0"},
            )
        return {header: str(left)}

    def _graph_quota(self, principal: str) -> dict[str, str]:
        limit, window = GRAPH_QUOTA
        now = time.monotonic()
        with self.lock:
            calls = self._graph_calls.setdefault(principal, deque())
            while calls and now - calls[0] >= window:
                calls.popleft()
            resets = window - (now - calls[0]) if calls else window
            stamp = time.strftime("%H:%M:%S", time.gmtime(math.ceil(resets)))
            if len(calls) >= limit:
                raise ArmError(
                    429,
                    "RateLimiting",
                    "Please provide below info when asking for support: the user quota of "
                    f"{limit} queries per {window:.0f} seconds is used up.",
                    {"x-ms-user-quota-remaining": "0", "x-ms-user-quota-resets-after": stamp},
                )
            calls.append(now)
            return {
                "x-ms-user-quota-remaining": str(limit - len(calls)),
                "x-ms-user-quota-resets-after": stamp,
            }

    # --- Helpers --------------------------------------------------------------------------
    def _vm(self, vm_id: str) -> Vm:
        vm = self.estate.vm(vm_id)
        if vm is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/{vm_id.rsplit('/', 1)[-1]}' "
                "was not found.",
            )
        return vm

    def _principal_by_oid(self, object_id: str) -> Principal | None:
        return next((p for p in self.estate.principals.values() if p.object_id == object_id), None)

    def _require_security_admin(self, principal: str, action: str, scope: str) -> None:
        found = self._principal_by_oid(principal)
        if found is None or not found.security_admin:
            raise ArmError(
                403,
                "AuthorizationFailed",
                f"The client '{found.client_id if found else principal}' with object id "
                f"'{principal}' does not have authorization to perform action '{action}' "
                f"over scope '{scope}' or the scope is invalid.",
            )

    def _event(
        self,
        kind: str,
        operation: str,
        resource_id: str,
        caller: Principal | str | None,
        outcome: str = "Success",
    ) -> dict[str, Any]:
        """Record the Event Grid event ARM raises for a write or action, and return it."""
        principal = self._principal_by_oid(caller) if isinstance(caller, str) else caller
        object_id = principal.object_id if principal else "5c2f1a3b-0000-4000-8000-00000000beef"
        app_id = principal.client_id if principal else "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
        subscription = resource_id.split("/")[2]
        event = {
            "id": str(uuid.uuid4()),
            "topic": f"/subscriptions/{subscription}",
            "subject": resource_id,
            "eventType": f"Microsoft.Resources.Resource{kind}{outcome}",
            "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "dataVersion": "2",
            "metadataVersion": "1",
            "data": {
                "authorization": {
                    "scope": resource_id,
                    "action": operation,
                    "evidence": {
                        "role": "Contributor",
                        "principalId": object_id.replace("-", ""),
                        "principalType": "ServicePrincipal" if principal else "User",
                    },
                },
                "claims": {
                    "aud": self.url,
                    "iss": f"{self.url}/{self.estate.tenant}/",
                    "appid": app_id,
                    OBJECT_ID_CLAIM: object_id,
                },
                "correlationId": str(uuid.uuid4()),
                "resourceProvider": operation.split("/", 1)[0],
                "resourceUri": resource_id,
                "operationName": operation,
                "status": "Succeeded" if outcome == "Success" else "Failed",
                "subscriptionId": subscription,
                "tenantId": self.estate.tenant,
            },
        }
        self.events.append(event)
        return event

    def _start_operation(
        self, vm: Vm, finish: Callable[[], None], error: dict[str, str] | None = None
    ) -> Operation:
        operation = Operation(
            id=str(uuid.uuid4()),
            vm_key=vm.key,
            done_at=time.monotonic() + self.lro_seconds,
            finish=finish,
            error=error,
            started=_now(),
        )
        self.operations[operation.id] = operation
        return operation

    def _advance(self, operation: Operation) -> None:
        if not operation.finished and time.monotonic() >= operation.done_at:
            operation.finished = True
            operation.finish()

    def _in_flight(self, vm: Vm) -> bool:
        for operation in self.operations.values():
            self._advance(operation)
            if operation.vm_key == vm.key and not operation.finished:
                return True
        return False

    def _operation_headers(self, vm: Vm, operation: Operation) -> dict[str, str]:
        url = (
            f"{self.url}/subscriptions/{vm.subscription}/providers/Microsoft.Compute/locations/"
            f"{vm.location}/operations/{operation.id}?api-version={COMPUTE_API}"
        )
        return {"Azure-AsyncOperation": url}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str]


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(
        status,
        json.dumps(value).encode(),
        {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


# --- Resource representations -------------------------------------------------------
def extension_json(vm: Vm, ext: Extension) -> dict[str, Any]:
    return {
        "id": f"{vm.id}/extensions/{ext.name}",
        "name": ext.name,
        "type": "Microsoft.Compute/virtualMachines/extensions",
        "location": vm.location,
        "properties": {
            "publisher": ext.publisher,
            "type": ext.type,
            "typeHandlerVersion": ext.type_handler_version,
            "autoUpgradeMinorVersion": ext.auto_upgrade_minor_version,
            "settings": ext.settings,
            "provisioningState": ext.state,
        },
    }


def _agent_view(vm: Vm) -> dict[str, Any]:
    """What the guest agent has reported: nothing while the VM is not running."""
    view: dict[str, Any] = {"computerName": vm.name[:15]}
    if vm.power == "running" and vm.os_name:
        view["osName"] = vm.os_name
        view["osVersion"] = vm.os_version
    return view


def _power_status(vm: Vm) -> dict[str, str]:
    display = {"running": "VM running", "deallocated": "VM deallocated", "stopped": "VM stopped"}
    return {
        "code": f"PowerState/{vm.power}",
        "level": "Info",
        "displayStatus": display.get(vm.power, vm.power),
    }


def vm_json(vm: Vm, instance_view: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "vmId": vm.vm_id,
        "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
        "storageProfile": {
            "imageReference": dict(vm.image),
            "osDisk": {
                "osType": vm.os_type,
                "name": f"{vm.name}-osdisk",
                "createOption": "FromImage",
                "caching": "ReadWrite",
                "managedDisk": {"storageAccountType": "Premium_LRS"},
            },
            "dataDisks": [],
        },
        "osProfile": {"computerName": vm.name[:15], "adminUsername": "azureuser"},
        "networkProfile": {
            "networkInterfaces": [
                {
                    "id": f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}"
                    f"/providers/Microsoft.Network/networkInterfaces/{vm.name}-nic"
                }
            ]
        },
        "provisioningState": "Succeeded",
        "timeCreated": "2026-01-15T08:00:00Z",
    }
    if vm.license_type:
        properties["licenseType"] = vm.license_type
    if instance_view:
        view = _agent_view(vm)
        view["statuses"] = [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
            },
            _power_status(vm),
        ]
        view["extensions"] = [
            {
                "name": ext.name,
                "type": f"{ext.publisher}.{ext.type}",
                "typeHandlerVersion": ext.type_handler_version,
                "statuses": [
                    {
                        "code": f"ProvisioningState/{ext.state.lower()}"
                        + (
                            f"/{ext.code}" if ext.state == "Failed" and ext.code is not None else ""
                        ),
                        "level": "Error" if ext.state == "Failed" else "Info",
                        "displayStatus": f"Provisioning {ext.state.lower()}",
                        "message": ext.message,
                    }
                ],
            }
            for ext in vm.extensions.values()
            if ext.state in {"Succeeded", "Failed"}
        ]
        properties["instanceView"] = view
    return {
        "id": vm.id,
        "name": vm.name,
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
        "tags": dict(vm.tags),
        "properties": properties,
        "resources": [extension_json(vm, ext) for ext in vm.extensions.values()],
    }


def graph_row(vm: Vm) -> dict[str, Any]:
    """The sweep query's row for a VM, as Resource Graph would project it."""
    view = _agent_view(vm)
    view["powerState"] = _power_status(vm)
    row: dict[str, Any] = {
        "id": vm.id,
        "location": vm.location,
        "tags": dict(vm.tags),
        "imageReference": dict(vm.image),
        "osType": vm.os_type,
        "licenseType": vm.license_type,
        "instanceView": view,
        "extensions": [
            {
                "name": ext.name,
                "publisher": ext.publisher,
                "type": ext.type,
                "provisioningState": ext.state,
            }
            for ext in vm.extensions.values()
        ],
    }
    return row


# --- Route handlers ---------------------------------------------------------------------
Params = dict[str, str]
Query = dict[str, str]
Handler = Callable[[LocalAzure, Params, Query, Any, str], _Response]


def _oidc(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    base = f"{plane.url}/{p['tenant']}"
    return _json(
        200,
        {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "EU",
        },
    )


def _token(plane: LocalAzure, p: Params, q: Query, form: Any, who: str) -> _Response:
    client_id = (form or {}).get("client_id", "")
    principal = plane.estate.principals.get(client_id)
    if principal is None or form.get("client_secret") != principal.secret:
        return _json(
            401,
            {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided.",
            },
        )
    scope = form.get("scope", "")
    audience = scope.split(" ")[0].removesuffix("/.default")
    now = int(time.time())
    token = jwt.encode(
        {
            "aud": audience,
            "iss": f"{plane.url}/{p['tenant']}/",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "oid": principal.object_id,
            "appid": principal.client_id,
            "tid": p["tenant"],
            "sub": principal.object_id,
        },
        plane._signing_key,
        algorithm="HS256",
    )
    return _json(
        200,
        {"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token},
    )


def _vm_id(p: Params) -> str:
    return (
        f"/subscriptions/{p['sub']}/resourceGroups/{p['rg']}"
        f"/providers/Microsoft.Compute/virtualMachines/{p['vm']}"
    )


def _get_vm(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)  # let due operations land before answering
    return _json(200, vm_json(vm, q.get("$expand", "").lower() == "instanceview"))


def _instance_view(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)
    return _json(200, vm_json(vm, True)["properties"]["instanceView"])


def _list_vms(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vms = plane.estate.vms_in(p["sub"])
    if p.get("rg"):
        vms = [vm for vm in vms if vm.resource_group.lower() == p["rg"].lower()]
    start = int(q.get("$skiptoken", "0") or 0)
    page = vms[start : start + plane.list_page_size]
    value: dict[str, Any] = {"value": [vm_json(vm, False) for vm in page]}
    if start + plane.list_page_size < len(vms):
        path = urlsplit(f"/subscriptions/{p['sub']}").path
        if p.get("rg"):
            path += f"/resourceGroups/{p['rg']}"
        value["nextLink"] = (
            f"{plane.url}{path}/providers/Microsoft.Compute/virtualMachines"
            f"?api-version={COMPUTE_API}&$skiptoken={start + plane.list_page_size}"
        )
    return _json(200, value)


def _vm_action(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    action = p["action"].lower()
    target = {"start": "running", "deallocate": "deallocated", "poweroff": "stopped"}[action]
    name = {"start": "start", "deallocate": "deallocate", "poweroff": "powerOff"}[action]

    def finish() -> None:
        vm.power = target
        plane._event("Action", f"Microsoft.Compute/virtualMachines/{name}/action", vm.id, who)

    operation = plane._start_operation(vm, finish)
    headers = plane._operation_headers(vm, operation)
    headers["Location"] = headers["Azure-AsyncOperation"]
    return _Response(202, b"", headers)


def _get_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)
    ext = vm.extensions.get(p["ext"].lower())
    if ext is None:
        raise ArmError(404, "NotFound", "The entity was not found in this Azure location.")
    return _json(200, extension_json(vm, ext))


def _list_extensions(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    plane._in_flight(vm)
    return _json(200, {"value": [extension_json(vm, ext) for ext in vm.extensions.values()]})


def _mde_outcome(
    plane: LocalAzure, vm: Vm, properties: dict[str, Any], protected: Any
) -> tuple[int | None, str]:
    """How an MDE install on this VM ends: (None, "") or (code, message)."""
    subscription = plane.estate.subscriptions[vm.subscription.lower()]
    type_ = properties.get("type", "")
    script = (protected or {}).get("defenderForEndpointOnboardingScript", "")
    expected = (
        subscription.onboarding_windows if type_ == "MDE.Windows" else subscription.onboarding_linux
    )
    if not script:
        return 30, "Enable failed: the onboarding script (protectedSettings) is missing or empty"
    if script != expected:
        return 31, "Enable failed: onboarding failed, the onboarding package is not this tenant's"
    if (type_ == "MDE.Windows") != (vm.os_type == "Windows"):
        return 10, f"Enable failed: {type_} cannot run on a {vm.os_type} machine"
    if vm.mde_failure is not None:
        messages = {
            51: "Onboarding to MDE via Microsoft Defender for Cloud for this operating system is not supported",
            10: "Enable failed: exit code 10: unsupported distro",
            11: "Enable failed: exit code 11: unsupported version",
        }
        return vm.mde_failure, messages.get(
            vm.mde_failure, f"Enable failed: exit code {vm.mde_failure}"
        )
    return None, ""


def _put_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    if not isinstance(body, dict) or not isinstance(body.get("properties"), dict):
        raise ArmError(
            400, "InvalidRequestContent", "The request content was invalid: properties is required."
        )
    if not body.get("location"):
        raise ArmError(
            400, "LocationRequired", "The location property is required for this definition."
        )
    properties = body["properties"]
    for name in ("publisher", "type", "typeHandlerVersion"):
        if not properties.get(name):
            raise ArmError(
                400, "InvalidParameter", f"Required parameter '{name}' is missing (null)."
            )
    if vm.power != "running":
        raise ArmError(
            409,
            "OperationNotAllowed",
            "Cannot modify extensions in the VM when the VM is not running.",
        )
    if plane._in_flight(vm):
        raise ArmError(
            409,
            "Conflict",
            "Operation 'PUT' is not allowed on VM extensions since the VM is marked for "
            "another extension operation in progress.",
        )
    plane.extension_puts.append((f"{vm.id}/extensions/{p['ext']}", body))
    key = p["ext"].lower()
    ext = Extension(
        name=p["ext"],
        publisher=properties["publisher"],
        type=properties["type"],
        type_handler_version=properties["typeHandlerVersion"],
        state="Creating",
        settings=properties.get("settings") or {},
        auto_upgrade_minor_version=bool(properties.get("autoUpgradeMinorVersion")),
    )
    code, message = (None, "")
    if ext.publisher == MDE_PUBLISHER:
        code, message = _mde_outcome(plane, vm, properties, properties.get("protectedSettings"))
    existed = key in vm.extensions
    vm.extensions[key] = ext
    resource_id = f"{vm.id}/extensions/{ext.name}"

    def finish() -> None:
        ext.state = "Succeeded" if code is None else "Failed"
        ext.code, ext.message = code, message
        outcome = "Success" if code is None else "Failure"
        plane._event(
            "Write", "Microsoft.Compute/virtualMachines/extensions/write", resource_id, who, outcome
        )

    error = None
    if code is not None:
        error = {
            "code": "VMExtensionProvisioningError",
            "message": f"VM has reported a failure when processing extension '{ext.name}' "
            f"(publisher '{ext.publisher}' and type '{ext.type}'). Error code: "
            f"ProvisioningState/failed/{code}. Error message: {message}.",
        }
    operation = plane._start_operation(vm, finish, error)
    return _json(
        200 if existed else 201, extension_json(vm, ext), plane._operation_headers(vm, operation)
    )


def _delete_extension(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    vm = plane._vm(_vm_id(p))
    key = p["ext"].lower()
    if key not in vm.extensions:
        return _Response(204, b"", {})
    if plane._in_flight(vm):
        raise ArmError(409, "Conflict", "Another extension operation is in progress on the VM.")
    vm.extensions[key].state = "Deleting"
    resource_id = f"{vm.id}/extensions/{vm.extensions[key].name}"

    def finish() -> None:
        vm.extensions.pop(key, None)
        plane._event(
            "Delete", "Microsoft.Compute/virtualMachines/extensions/delete", resource_id, who
        )

    operation = plane._start_operation(vm, finish)
    return _Response(202, b"", plane._operation_headers(vm, operation))


def _operation_status(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    operation = plane.operations.get(p["op"])
    if operation is None:
        raise ArmError(404, "NotFound", "The operation was not found.")
    plane._advance(operation)
    value: dict[str, Any] = {"name": operation.id, "startTime": operation.started}
    if not operation.finished:
        value["status"] = "InProgress"
    elif operation.error:
        value.update(status="Failed", endTime=_now(), error=operation.error)
    else:
        value.update(status="Succeeded", endTime=_now())
    return _json(200, value)


def _scope_subscription(scope: str) -> str:
    return scope.split("/")[2].lower()


def _pricing_json(
    scope: str, tier: str, sub_plan: str, inherited: str | None = None
) -> dict[str, Any]:
    properties: dict[str, Any] = {"pricingTier": tier, "freeTrialRemainingTime": "PT0S"}
    if sub_plan:
        properties["subPlan"] = sub_plan
    if inherited:
        properties.update(inherited="True", inheritedFrom=inherited)
    return {
        "id": f"{scope}/providers/Microsoft.Security/pricings/VirtualMachines",
        "name": "VirtualMachines",
        "type": "Microsoft.Security/pricings",
        "properties": properties,
    }


def _pricing(plane: LocalAzure, p: Params, q: Query, body: Any, who: str, method: str) -> _Response:
    scope = "/" + p["scope"].strip("/")
    if p["name"].lower() != "virtualmachines":
        raise ArmError(404, "NotFound", f"pricing {p['name']} is not served by this plane")
    subscription = plane.estate.subscriptions.get(_scope_subscription(scope))
    if subscription is None:
        raise ArmError(404, "SubscriptionNotFound", "The subscription could not be found.")
    vm_scope = "/virtualmachines/" in scope.lower()
    vm = plane._vm(scope) if vm_scope else None
    if method == "PUT":
        plane._require_security_admin(who, "Microsoft.Security/pricings/write", scope)
        tier = ((body or {}).get("properties") or {}).get("pricingTier")
        plan = ((body or {}).get("properties") or {}).get("subPlan") or ""
        if tier not in {"Free", "Standard"}:
            raise ArmError(400, "InvalidInputJson", "pricingTier must be Free or Standard")
        if vm is not None:
            if tier == "Standard" and plan not in {"", "P1"}:
                raise ArmError(
                    400, "InvalidInputJson", "resource-level pricing accepts only P1 or Free"
                )
            vm.vm_pricing = tier
        else:
            if tier == "Standard" and plan not in {"P1", "P2"}:
                raise ArmError(400, "InvalidInputJson", "subPlan must be P1 or P2")
            subscription.pricing_tier, subscription.sub_plan = (
                tier,
                plan if tier == "Standard" else "",
            )
    elif method == "DELETE":
        plane._require_security_admin(who, "Microsoft.Security/pricings/delete", scope)
        if vm is None:
            raise ArmError(400, "InvalidInputJson", "only resource-level pricing can be deleted")
        vm.vm_pricing = None
        return _Response(204, b"", {})
    if vm is not None and vm.vm_pricing is not None:
        return _json(
            200, _pricing_json(scope, vm.vm_pricing, "P1" if vm.vm_pricing == "Standard" else "")
        )
    inherited = f"/subscriptions/{subscription.id}" if vm is not None else None
    return _json(
        200, _pricing_json(scope, subscription.pricing_tier, subscription.sub_plan, inherited)
    )


def _setting_json(subscription: str, name: str, enabled: bool) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription}/providers/Microsoft.Security/settings/{name}",
        "name": name,
        "type": "Microsoft.Security/settings",
        "kind": "DataExportSettings",
        "properties": {"enabled": enabled},
    }


def _subscription(plane: LocalAzure, sub: str) -> Any:
    subscription = plane.estate.subscriptions.get(sub.lower())
    if subscription is None:
        raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
    return subscription


def _settings_list(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    subscription = _subscription(plane, p["sub"])
    return _json(
        200,
        {
            "value": [
                _setting_json(subscription.id, name, subscription.settings[name])
                for name in SECURITY_SETTINGS
            ]
        },
    )


def _setting(plane: LocalAzure, p: Params, q: Query, body: Any, who: str, method: str) -> _Response:
    subscription = _subscription(plane, p["sub"])
    name = next((n for n in SECURITY_SETTINGS if n.lower() == p["name"].lower()), None)
    if name is None:
        raise ArmError(404, "NotFound", f"setting {p['name']} is not served by this plane")
    if method == "PUT":
        scope = f"/subscriptions/{subscription.id}"
        plane._require_security_admin(who, "Microsoft.Security/settings/write", scope)
        if not isinstance(body, dict) or body.get("kind") != "DataExportSettings":
            raise ArmError(400, "InvalidInputJson", "kind must be DataExportSettings")
        enabled = (body.get("properties") or {}).get("enabled")
        if not isinstance(enabled, bool):
            raise ArmError(400, "InvalidInputJson", "properties.enabled must be a boolean")
        subscription.settings[name] = enabled
    return _json(200, _setting_json(subscription.id, name, subscription.settings[name]))


def _onboarding_json(subscription: Any) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription.id}/providers/Microsoft.Security/mdeOnboardings/default",
        "name": "default",
        "type": "Microsoft.Security/mdeOnboardings",
        "properties": {
            "onboardingPackageWindows": subscription.onboarding_windows,
            "onboardingPackageLinux": subscription.onboarding_linux,
        },
    }


def _onboardings(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    subscription = _subscription(plane, p["sub"])
    if p.get("name"):
        if p["name"].lower() != "default":
            raise ArmError(404, "NotFound", "only 'default' exists")
        return _json(200, _onboarding_json(subscription))
    return _json(200, {"value": [_onboarding_json(subscription)]})


def _topic(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    """An Event Grid custom topic: checks the key header and the schema, keeps the events."""
    required = {"id", "subject", "eventType", "eventTime", "data", "dataVersion"}
    if not isinstance(body, list) or not body:
        raise ArmError(400, "BadRequest", "the body must be a JSON array of events")
    for event in body:
        if not isinstance(event, dict) or not required <= set(event):
            raise ArmError(
                400, "BadRequest", f"an event lacks {sorted(required - set(event or {}))}"
            )
    plane.published.extend(body)
    return _Response(200, b"", {})


def _graph(plane: LocalAzure, p: Params, q: Query, body: Any, who: str) -> _Response:
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise ArmError(400, "BadRequest", "query is required")
    subscriptions = body.get("subscriptions")
    if not isinstance(subscriptions, list) or not subscriptions:
        raise ArmError(400, "BadRequest", "subscriptions must be a non-empty list")
    shape = normalise_query(body["query"])
    project: Callable[[Vm], dict[str, Any]]
    if shape == normalise_query(SWEEP_QUERY):
        project = graph_row
    elif shape == normalise_query(BASELINE_QUERY):
        project = lambda vm: {"id": vm.id}  # noqa: E731
    else:
        raise ArmError(400, "InvalidQuery", "this query shape is not supported by the local plane")
    options = body.get("options") or {}
    if options.get("resultFormat", "objectArray") != "objectArray":
        raise ArmError(400, "BadRequest", "only resultFormat objectArray is supported")
    top = options.get("$top", 100)
    if not isinstance(top, int) or not 1 <= top <= GRAPH_MAX_PAGE:
        raise ArmError(400, "BadRequest", f"$top must be between 1 and {GRAPH_MAX_PAGE}")
    fingerprint = hashlib.sha256(json.dumps([shape, sorted(subscriptions)]).encode()).hexdigest()[
        :16
    ]
    offset = int(options.get("$skip", 0) or 0)
    if options.get("$skipToken"):
        try:
            token = json.loads(base64.b64decode(options["$skipToken"]))
            assert token["q"] == fingerprint
            offset = int(token["o"])
        except (ValueError, KeyError, AssertionError, TypeError):
            raise ArmError(
                400, "BadRequest", "the $skipToken is not valid for this query"
            ) from None
    vms = sorted(
        (vm for sub in subscriptions for vm in plane.estate.vms_in(str(sub))),
        key=lambda vm: vm.key,
    )
    page = vms[offset : offset + top]
    value: dict[str, Any] = {
        "totalRecords": len(vms),
        "count": len(page),
        "resultTruncated": "false",
        "facets": [],
        "data": [project(vm) for vm in page],
    }
    if offset + top < len(vms):
        value["$skipToken"] = base64.b64encode(
            json.dumps({"q": fingerprint, "o": offset + top}).encode()
        ).decode()
    return _json(200, value)


# --- Routing ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    operation: str
    api: str  # which api-version family applies; "" for the token endpoint


_VM = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/virtualMachines/(?P<vm>[^/]+)"
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_SCOPE = r"/(?P<scope>subscriptions/[^/]+(?:/resourceGroups/[^/]+/providers/Microsoft\.Compute/virtualMachines/[^/]+)?)"


def _route(
    method: str, pattern: str, handler: Handler, operation: str = "", api: str = ""
) -> Route:
    return Route(method, re.compile(f"^{pattern}$", re.IGNORECASE), handler, operation, api)


def _with_method(handler: Callable[..., _Response], method: str) -> Handler:
    return lambda plane, p, q, body, who: handler(plane, p, q, body, who, method)


ROUTES: tuple[Route, ...] = (
    _route("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", _oidc, "login/metadata"),
    _route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", _token, "login/token"),
    _route("GET", _VM, _get_vm, "Microsoft.Compute/virtualMachines/read", "compute"),
    _route("GET", _VM + r"/instanceView", _instance_view, "Microsoft.Compute/virtualMachines/instanceView/read", "compute"),
    _route("GET", _SUB + r"/providers/Microsoft\.Compute/virtualMachines", _list_vms, "Microsoft.Compute/virtualMachines/read", "compute"),
    _route("GET", _SUB + r"/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/virtualMachines", _list_vms, "Microsoft.Compute/virtualMachines/read", "compute"),
    _route("POST", _VM + r"/(?P<action>start|deallocate|powerOff)", _vm_action, "Microsoft.Compute/virtualMachines/action", "compute"),
    _route("GET", _VM + r"/extensions", _list_extensions, "Microsoft.Compute/virtualMachines/extensions/read", "compute"),
    _route("GET", _VM + r"/extensions/(?P<ext>[^/]+)", _get_extension, "Microsoft.Compute/virtualMachines/extensions/read", "compute"),
    _route("PUT", _VM + r"/extensions/(?P<ext>[^/]+)", _put_extension, "Microsoft.Compute/virtualMachines/extensions/write", "compute"),
    _route("DELETE", _VM + r"/extensions/(?P<ext>[^/]+)", _delete_extension, "Microsoft.Compute/virtualMachines/extensions/delete", "compute"),
    _route("GET", _SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/operations/(?P<op>[^/]+)", _operation_status, "Microsoft.Compute/locations/operations/read", "compute"),
    _route("GET", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", _with_method(_pricing, "GET"), "Microsoft.Security/pricings/read", "pricings"),
    _route("PUT", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", _with_method(_pricing, "PUT"), "Microsoft.Security/pricings/write", "pricings"),
    _route("DELETE", _SCOPE + r"/providers/Microsoft\.Security/pricings/(?P<name>[^/]+)", _with_method(_pricing, "DELETE"), "Microsoft.Security/pricings/delete", "pricings"),
    _route("GET", _SUB + r"/providers/Microsoft\.Security/settings", _settings_list, "Microsoft.Security/settings/read", "settings"),
    _route("GET", _SUB + r"/providers/Microsoft\.Security/settings/(?P<name>[^/]+)", _with_method(_setting, "GET"), "Microsoft.Security/settings/read", "settings"),
    _route("PUT", _SUB + r"/providers/Microsoft\.Security/settings/(?P<name>[^/]+)", _with_method(_setting, "PUT"), "Microsoft.Security/settings/write", "settings"),
    _route("GET", _SUB + r"/providers/Microsoft\.Security/mdeOnboardings", _onboardings, "Microsoft.Security/mdeOnboardings/read", "mdeOnboardings"),
    _route("GET", _SUB + r"/providers/Microsoft\.Security/mdeOnboardings/(?P<name>[^/]+)", _onboardings, "Microsoft.Security/mdeOnboardings/read", "mdeOnboardings"),
    _route("POST", r"/providers/Microsoft\.ResourceGraph/resources", _graph, "Microsoft.ResourceGraph/resources/read", "graph"),
    _route("POST", r"/api/events", _topic, "eventgrid/publish", "topic"),
)  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the plane keeps its own request log; nothing goes to stderr

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = raw
        if self.path.split("?")[0].endswith("/oauth2/v2.0/token"):
            form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
            body = json.dumps(form).encode()
        response = self.server.plane.handle(self.command, self.path, self.headers, body)
        if response.status == 0:  # an injected dropped connection
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve
